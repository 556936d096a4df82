// Shared helpers for the CUDA-C kernels: bf16 <-> f32, the stochastic-rounding hash, warp sums.
// Included by the .cu files; not a module of its own (build.rs compiles only *.cu / *.ptx).
//
// The same sources also compile for the host execution harness (ptx/host, MXGPT_HOST_HARNESS
// defined), which runs them on the CPU in CI: there cuda_host.cuh supplies the programming model
// (threads, barriers, shuffles, bf16) that nvcc and <cuda_bf16.h> supply on the device. Inline
// PTX lives only in ptx_ops.cuh, each instruction beside its host twin.
#pragma once
#ifdef MXGPT_HOST_HARNESS
#include "cuda_host.cuh"
#else
#include <cuda_bf16.h>
#include <stdint.h>
#define MXH_DYNAMIC_SMEM(T, name) extern __shared__ __align__(16) unsigned char name##_bytes[]; \
    T* name = reinterpret_cast<T*>(name##_bytes)
#endif

typedef __nv_bfloat16 bf16;

__device__ __forceinline__ float to_f32(bf16 x) { return __bfloat162float(x); }
// Round to nearest even (NaN stays NaN).
__device__ __forceinline__ bf16 to_bf16(float x) { return __float2bfloat16_rn(x); }

// Counter-based random bits for stochastic rounding: splitmix64's finalizer applied to
// index + seed * golden-ratio constant; the high 32 bits. Pure function of (seed, index), so a
// CPU reference reproduces it exactly and results do not depend on launch geometry.
__device__ __forceinline__ uint32_t sr_hash(uint32_t seed, uint64_t index) {
    uint64_t z = index + (uint64_t)seed * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (uint32_t)(z >> 32);
}

// f32 -> bf16 with stochastic rounding: add 16 random bits below the bf16 mantissa, truncate.
// Rounds up with probability equal to the discarded fraction. Non-finite values round normally.
__device__ __forceinline__ bf16 to_bf16_stochastic(float x, uint32_t random) {
    uint32_t bits = __float_as_uint(x);
    if ((bits & 0x7F800000u) == 0x7F800000u) return to_bf16(x);  // inf / NaN
    bits = (bits + (random & 0xFFFFu)) & 0xFFFF0000u;
    return __ushort_as_bfloat16((unsigned short)(bits >> 16));
}

// Sum over the 32 lanes of a warp, the same butterfly order every time (deterministic).
__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, offset);
    return v;
}
