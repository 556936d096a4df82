// FP8 E4M3 building blocks shared by the FP8 forward kernels (fp8.cu, fp8_gemm.cu) and the NVFP4
// quantizer (nvfp4_quantize.cu, whose block scales are E4M3): the exact twins of
// gpt/src/mx/fp8.rs (docs/numerics.md section 8).
//
// E4M3 ("E4M3FN"): sign, 4 exponent bits (bias 7), 3 mantissa bits; 448 is the largest finite
// value; 0x7F / 0xFF are NaN; no infinity. Everything here is integer or exact power-of-two
// arithmetic, so a GPU byte equals the CPU's bit for bit.
//
// Conversions f32 -> E4M3 come in two spellings:
//   e4m3_from_f32_sw  the rule of section 8 written out on the float's bits (fp8.rs's
//                     e4m3_from_f32, line by line): what devices without the conversion
//                     instruction (sm_80) run;
//   cvt_e4m3x2_f32    (ptx_ops.cuh) the instruction cvt.rn.satfinite.e4m3x2.f32 on sm_89+, with
//                     a host twin written from the PTX ISA; both are tested against the CPU
//                     (tests/tests/gpu_fp8.rs, through fp8.cu's fp8_convert_check).
#pragma once
#include "common.cuh"

#define E4M3_MAX 448.0f
#define E4M3_NAN 0x7Fu  // the canonical NaN byte (a non-finite NVFP4 block's scale)

// f32 -> E4M3, round to nearest even, saturating: NaN -> 0x7F; |x| >= 448 (inf included) ->
// +-448; below 2^-6, |x| 2^9 (exact) rounded to an integer, ties to even (8 is the smallest
// normal, whose bits are 8); else the mantissa rounded to 3 bits, ties to even, a carry moving
// to the next binade, 480 saturating to 448. The sign bit is kept, also for zero.
__device__ __forceinline__ uint32_t e4m3_from_f32_sw(float x) {
    if (isnan(x)) return E4M3_NAN;
    const uint32_t bits = __float_as_uint(x);
    const uint32_t sign = (bits >> 24) & 0x80u;
    const float a = fabsf(x);
    if (a >= E4M3_MAX) return sign | 0x7Eu;
    if (a < 0.015625f) {  // 2^-6: the subnormal range, multiples of 2^-9
        return sign | (uint32_t)__float2int_rn(__fmul_rn(a, 512.0f));
    }
    int e = (int)((bits >> 23) & 0xFFu) - 127;  // -6 ..= 8
    const uint32_t m = bits & 0x7FFFFFu;
    uint32_t q = m >> 20;
    const uint32_t rest = m & 0xFFFFFu;
    if (rest > 0x80000u || (rest == 0x80000u && (q & 1u))) q++;
    if (q == 8) {
        q = 0;
        e++;
    }
    if (e > 8 || (e == 8 && q == 7)) return sign | 0x7Eu;  // 480 would be the NaN pattern
    return sign | ((uint32_t)(e + 7) << 3) | q;
}

// E4M3 -> f32 (exact): NaN for 0x7F / 0xFF, m 2^-9 for exponent field 0, (1 + m/8) 2^(E-7).
__device__ __forceinline__ float e4m3_to_f32(uint32_t byte) {
    const uint32_t e = (byte >> 3) & 0xFu, m = byte & 7u;
    const uint32_t sign = (byte & 0x80u) << 24;
    if (e == 15 && m == 7) return __uint_as_float(0x7FC00000u);
    if (e == 0) return __uint_as_float(sign | __float_as_uint(__fmul_rn((float)m, 0.001953125f)));
    return __uint_as_float(sign | ((e - 7 + 127) << 23) | (m << 20));
}

// The FP8 tensor scale 448 / amax (fp8.rs tensor_scale): 1 for amax 0, the largest f32 where
// the quotient overflows. amax finite and >= 0.
__device__ __forceinline__ float fp8_scale_of_amax(float amax) {
    if (amax == 0.0f) return 1.0f;
    const float s = __fdiv_rn(E4M3_MAX, amax);
    return isfinite(s) ? s : 3.40282346638528859812e+38f;
}

// The NVFP4 tensor scale (6 * 448) / amax (nvfp4.rs tensor_scale), the same rules.
__device__ __forceinline__ float nvfp4_scale_of_amax(float amax) {
    if (amax == 0.0f) return 1.0f;
    const float s = __fdiv_rn(2688.0f, amax);
    return isfinite(s) ? s : 3.40282346638528859812e+38f;
}

// max |x| over the finite values, one more element (NaN and inf ignored, as fp8.rs amax).
__device__ __forceinline__ float amax_finite(float m, float x) {
    return isfinite(x) ? fmaxf(m, fabsf(x)) : m;
}
