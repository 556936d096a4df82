// MXFP4 building blocks shared by the MX kernels, each the exact twin of its CPU definition in
// gpt/src/mx (docs/numerics.md is the contract): the counter-based generator, the E2M1 grid,
// E8M0 scales. Everything here is exact integer or power-of-two arithmetic, written with
// explicitly rounded intrinsics (__fmul_rn, __fadd_rn) so that nvcc never contracts it into an
// FMA: a GPU code or scale byte must equal the CPU's bit for bit.
#pragma once
#include "common.cuh"

#define MX_BLOCK 32        // elements per MX block (one E8M0 scale)
#define MX_SCALE_NAN 0xFF  // the E8M0 byte of a block that held NaN or Inf

// ---- Philox4x32-10 (Salmon et al., SC 2011), as gpt/src/mx/philox.rs ----
// key = (seed lo, seed hi); element i of stream s: counter = (i >> 2 lo, i >> 34, s lo, s hi),
// word i & 3 of the output.
__device__ __forceinline__ uint4 philox4x32_10(uint4 c, uint32_t k0, uint32_t k1) {
    const uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
#pragma unroll
    for (int round = 0; round < 10; round++) {
        if (round > 0) {
            k0 += W0;
            k1 += W1;
        }
        const uint32_t hi0 = __umulhi(M0, c.x), lo0 = M0 * c.x;
        const uint32_t hi1 = __umulhi(M1, c.z), lo1 = M1 * c.z;
        c = make_uint4(hi1 ^ c.y ^ k0, lo1, hi0 ^ c.w ^ k1, lo0);
    }
    return c;
}

// The four words of elements 4 quad .. 4 quad + 3 of `stream` under `seed`.
__device__ __forceinline__ uint4 philox_quad(uint64_t seed, uint64_t stream, uint64_t quad) {
    return philox4x32_10(make_uint4((uint32_t)quad, (uint32_t)(quad >> 32), (uint32_t)stream,
                                    (uint32_t)(stream >> 32)),
                         (uint32_t)seed, (uint32_t)(seed >> 32));
}

__device__ __forceinline__ uint32_t uint4_word(uint4 w, int i) {
    return i == 0 ? w.x : i == 1 ? w.y : i == 2 ? w.z : w.w;
}

// The SR uniform of a word: its top 24 bits times 2^-24 (exact).
__device__ __forceinline__ float uniform24(uint32_t word) {
    return __fmul_rn((float)(word >> 8), 5.9604644775390625e-8f);
}

// ---- E8M0 and powers of two ----
// 2^p for p in [-149, 127], exact (subnormal below -126), from the bits.
__device__ __forceinline__ float exp2i(int p) {
    return p >= -126 ? __uint_as_float((uint32_t)(p + 127) << 23) : __uint_as_float(1u << (p + 149));
}

// floor(log2 |a|) of a finite non-zero f32, from its bits (subnormals included).
__device__ __forceinline__ int floor_log2(float a) {
    const uint32_t bits = __float_as_uint(a) & 0x7FFFFFFFu;
    const int exp = (int)(bits >> 23);
    return exp > 0 ? exp - 127 : (31 - __clz((int)(bits & 0x7FFFFFu))) - 149;
}

// 2^(byte - 127 + shift) as f32: NaN for a NaN block, 0 below 2^-149, inf above 2^127
// (gemm.rs scale_f32).
__device__ __forceinline__ float scale_f32(uint32_t byte, int shift) {
    if (byte == MX_SCALE_NAN) return __int_as_float(0x7FC00000);
    const int p = (int)byte - 127 + shift;
    return p < -149 ? 0.0f : p > 127 ? __int_as_float(0x7F800000) : exp2i(p);
}

// ---- E2M1 ----
// Magnitude codes 0..7 are 0, 0.5, 1, 1.5, 2, 3, 4, 6; bit 3 is the sign.
__device__ __forceinline__ float e2m1_magnitude(uint32_t mag) {
    return mag < 4 ? 0.5f * (float)mag : mag == 4 ? 2.0f : mag == 5 ? 3.0f : mag == 6 ? 4.0f : 6.0f;
}

// Round-to-nearest-even magnitude code of a = |y| (0 <= a, finite): the number of thresholds
// passed, strict where a tie goes down to an even code (quantize.rs rtn_code).
__device__ __forceinline__ uint32_t rtn_code(float a) {
    return (a > 0.25f) + (a >= 0.75f) + (a > 1.25f) + (a >= 1.75f) + (a > 2.5f) + (a >= 3.5f) +
           (a > 5.0f);
}

// Stochastic-rounding magnitude code of a = |y| (0 <= a < 6) for the uniform u in [0, 1): up
// from the grid point below a with probability (a - lo) / (hi - lo) (quantize.rs sr_code; the
// gaps 0.5, 1, 2 are powers of two, so the division is an exact multiply).
__device__ __forceinline__ uint32_t sr_code(float a, float u) {
    const uint32_t lo = (a >= 0.5f) + (a >= 1.0f) + (a >= 1.5f) + (a >= 2.0f) + (a >= 3.0f) +
                        (a >= 4.0f) + (a >= 6.0f);
    if (lo == 7) return 7;
    const float inv_gap = lo < 4 ? 2.0f : lo < 6 ? 1.0f : 0.5f;
    return u < __fmul_rn(__fsub_rn(a, e2m1_magnitude(lo)), inv_gap) ? lo + 1 : lo;
}

// 2 x the value of a 4-bit code as an integer in [-12, 12] (the integer GEMM's operand).
__device__ __forceinline__ int e2m1_times_two(uint32_t code) {
    const int mag = (int)(code & 7);
    const int v = mag < 5 ? mag : mag == 5 ? 6 : mag == 6 ? 8 : 12;
    return (code & 8) ? -v : v;
}

// ---- Quantizer telemetry (mx_quantize.cu, nvfp4_quantize.cu) ----
// Per quantize block (CUDA block) of the grid, MX_TELEMETRY_FIELDS doubles: sum (Q(x) - x)^2 and
// sum x^2 over finite blocks, clipped elements, non-finite blocks, and underflows (non-zero x of
// a finite block whose code has a zero magnitude), as the CPU's MxTelemetry.
#define MX_TELEMETRY_FIELDS 5

// This CUDA block's telemetry t (one set per thread) into partials: warp sums by a fixed
// butterfly, then threads 0..4 add the WARPS warp sums in order. Every thread of the block calls
// it (it holds a barrier); `part` is the block's shared scratch.
template <int WARPS>
__device__ __forceinline__ void telemetry_block_store(double (&t)[MX_TELEMETRY_FIELDS],
                                                      double (*part)[MX_TELEMETRY_FIELDS],
                                                      double* partials) {
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
#pragma unroll
    for (int i = 0; i < MX_TELEMETRY_FIELDS; i++)
        for (int m = 16; m > 0; m /= 2) t[i] += __shfl_xor_sync(0xFFFFFFFFu, t[i], m);
    if (lane == 0)
        for (int i = 0; i < MX_TELEMETRY_FIELDS; i++) part[warp][i] = t[i];
    __syncthreads();
    if (tid < MX_TELEMETRY_FIELDS) {
        double sum = 0.0;
        for (int w = 0; w < WARPS; w++) sum += part[w][tid];
        partials[MX_TELEMETRY_FIELDS * ((size_t)blockIdx.y * gridDim.x + blockIdx.x) + tid] = sum;
    }
}
