// 16-byte vector accesses for the memory-bound kernels' fast variants (the `*_vec` kernels of
// encoder.cu, gelu.cu, cast.cu, layernorm.cu, adamw.cu, global_norm.cu): 8 bf16 or 4 f32 per
// load/store, which nvcc emits as one LDG.E.128 / STG.E.128 when the pointer is 16-byte aligned.
// Included by the .cu files; not a module (build.rs compiles only *.cu).
//
// Alignment: every pointer passed here must be 16-byte aligned. On a GPU a misaligned 16-byte
// access faults (misaligned address); x86 would silently accept it, so on the host harness every
// access here checks its address and stops the launch with an error naming the call site. The
// launchers (gpt/src/cuda/kernels) check base-pointer alignment and shapes before choosing a
// `*_vec` kernel, and the kernels index vectors only at multiples of 8 bf16 / 4 f32.
//
// Rounding: the bf16 packs round to nearest even (NaN stays NaN), exactly as to_bf16 in
// common.cuh, so a vector kernel that does the same f32 arithmetic as its scalar reference
// writes the same bits.
#pragma once
#include "common.cuh"

#ifdef MXGPT_HOST_HARNESS
#define VEC_SITE const char *file = __builtin_FILE(), int line = __builtin_LINE()
#define VEC_CHECK(p) vec_check_aligned16((const void*)(p), file, line)
inline void vec_check_aligned16(const void* p, const char* file, int line) {
    if (((uintptr_t)p & 15) != 0)
        mxh::fail(file, line, "16-byte vector access at %p is not 16-byte aligned", p);
}
#else
#define VEC_SITE int = 0
#define VEC_CHECK(p) ((void)0)
#endif

// Raw 16 bytes.
__device__ __forceinline__ uint4 ld16(const void* p, VEC_SITE) {
    VEC_CHECK(p);
    return *reinterpret_cast<const uint4*>(p);
}
__device__ __forceinline__ void st16(void* p, uint4 v, VEC_SITE) {
    VEC_CHECK(p);
    *reinterpret_cast<uint4*>(p) = v;
}

// 8 bf16 in a uint4 (element 0 in the low half of .x) <-> 8 floats.
__device__ __forceinline__ void unpack_bf16x8(float (&f)[8], uint4 raw) {
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
    for (int k = 0; k < 4; k++) {
        float2 t = __bfloat1622float2(h[k]);
        f[2 * k] = t.x;
        f[2 * k + 1] = t.y;
    }
}
__device__ __forceinline__ uint4 pack_bf16x8(const float (&f)[8]) {
    uint4 raw;
    __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&raw);
#pragma unroll
    for (int k = 0; k < 4; k++) h[k] = __floats2bfloat162_rn(f[2 * k], f[2 * k + 1]);
    return raw;
}

__device__ __forceinline__ void load_bf16x8(float (&f)[8], const bf16* p, VEC_SITE) {
    VEC_CHECK(p);
    unpack_bf16x8(f, *reinterpret_cast<const uint4*>(p));
}
__device__ __forceinline__ void store_bf16x8(bf16* p, const float (&f)[8], VEC_SITE) {
    VEC_CHECK(p);
    *reinterpret_cast<uint4*>(p) = pack_bf16x8(f);
}

// 8 consecutive f32 (two 16-byte accesses).
__device__ __forceinline__ void load_f32x8(float (&f)[8], const float* p, VEC_SITE) {
    VEC_CHECK(p);
    float4 a = reinterpret_cast<const float4*>(p)[0];
    float4 b = reinterpret_cast<const float4*>(p)[1];
    f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w;
    f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
}
__device__ __forceinline__ void store_f32x8(float* p, const float (&f)[8], VEC_SITE) {
    VEC_CHECK(p);
    reinterpret_cast<float4*>(p)[0] = make_float4(f[0], f[1], f[2], f[3]);
    reinterpret_cast<float4*>(p)[1] = make_float4(f[4], f[5], f[6], f[7]);
}
