// The CUDA programming model as ptx/kernels/*.cu use it, for compiling those kernels with a
// host C++ compiler (g++/clang++, C++17) and running them in the host harness (mxh.h).
// common.cuh includes this instead of <cuda_bf16.h> when MXGPT_HOST_HARNESS is defined.
//
// What maps to what:
//   __global__/__device__/__forceinline__  plain (inline) functions
//   __shared__                              thread_local: storage with static duration per OS
//                                           thread; the harness runs one block at a time per
//                                           OS thread, so it is exactly "one copy per block".
//                                           (Like the GPU, it is not cleared between blocks.)
//   extern __shared__ T name[]              use MXH_DYNAMIC_SMEM(T, name) in kernels instead:
//                                           the block's dynamic shared memory, which the harness
//                                           fills with 0xFF bytes at the start of every block
//   threadIdx, blockIdx, blockDim, gridDim  the running fiber's / block's values
//   __syncthreads, __shfl_*_sync, ...       harness barriers and warp rendezvous (mxh.h)
//   bf16 (__nv_bfloat16) and conversions    bit-exact: round to nearest even, NaN -> 0x7FFF
//                                           (the canonical NaN cvt.rn.bf16.f32 produces)
//
// Math functions: the host libm. Where results can differ from the GPU's:
//   expf, exp2f, tanhf: CUDA documents up to 2 ulp of error (without -use_fast_math); glibc's
//   are within 1 ulp. logf: 1 ulp on both. sqrtf, division, fmaf and every basic operation:
//   IEEE correctly rounded on both. Contraction: nvcc fuses a*b+c into an FMA by default; the
//   host build compiles with -ffp-contract=off, so an unfused a*b+c differs from the GPU's
//   fused result by up to 1 ulp of the product. Kernel tests therefore compare against the CPU
//   backend with tolerances of many ulps (documented in each test), never bit for bit, except
//   where a kernel's arithmetic is exact by construction (casts, the MXFP4 quantizer, the
//   integer GEMM), which must match bit for bit on both.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <type_traits>

#include "mxh.h"

// ---- keywords ----
#ifndef MXGPT_HOST_SCAN  // build.rs preprocesses with these left as tokens to find the kernels
#define __global__
#define __launch_bounds__(...)
#endif
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __shared__ thread_local
#define __constant__
#define __align__(n) __attribute__((aligned(n)))
#define __grid_constant__

#define MXH_DYNAMIC_SMEM(T, name) T* name = reinterpret_cast<T*>(::mxh::tls_block->dynamic_smem)

// ---- built-in variables ----
#define threadIdx (::mxh::tls_thread->thread_idx)
#define blockIdx (::mxh::tls_block->block_idx)
#define blockDim (::mxh::tls_block->block_dim)
#define gridDim (::mxh::tls_block->grid_dim)
constexpr int warpSize = 32;

// A compiler barrier around every harness synchronization: the kernel's shared variables are
// thread_local statics the compiler might otherwise keep in registers across the call.
#define MXH_FENCE() asm volatile("" ::: "memory")

// ---- vector types (alignment as in CUDA's vector_types.h) ----
struct __attribute__((aligned(8))) float2 {
    float x, y;
};
struct __attribute__((aligned(16))) float4 {
    float x, y, z, w;
};
struct __attribute__((aligned(8))) int2 {
    int x, y;
};
struct __attribute__((aligned(16))) int4 {
    int x, y, z, w;
};
struct __attribute__((aligned(8))) uint2 {
    unsigned int x, y;
};
struct __attribute__((aligned(16))) uint4 {
    unsigned int x, y, z, w;
};
struct __attribute__((aligned(4))) ushort2 {
    unsigned short x, y;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

// ---- reinterpretation and integer intrinsics ----
inline unsigned int __float_as_uint(float x) {
    unsigned int u;
    memcpy(&u, &x, 4);
    return u;
}
inline float __uint_as_float(unsigned int u) {
    float x;
    memcpy(&x, &u, 4);
    return x;
}
inline int __float_as_int(float x) { return (int)__float_as_uint(x); }
inline float __int_as_float(int i) { return __uint_as_float((unsigned)i); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline unsigned __brev(unsigned x) {
    unsigned r = 0;
    for (int i = 0; i < 32; i++) r |= ((x >> i) & 1u) << (31 - i);
    return r;
}
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((uint64_t)a * b) >> 32); }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
// PTX prmt (default mode): byte i of the result is byte s[4i+3:4i] & 7 of {y, x}.
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
    uint64_t v = ((uint64_t)y << 32) | x;
    unsigned r = 0;
    for (int i = 0; i < 4; i++) r |= (unsigned)((v >> (8 * ((s >> (4 * i)) & 7))) & 0xFF) << (8 * i);
    return r;
}

// ---- integer atomics: the harness runs a grid's blocks one after another on the launching
// thread and a block's threads as fibers that switch only at barriers and warp collectives, so a
// plain read-modify-write is atomic. (Which thread's update lands first follows the schedule, as
// on a GPU it follows the hardware: kernels must not depend on it.)
inline int atomicAdd(int* p, int v) {
    int old = *p;
    *p = old + v;
    return old;
}
inline unsigned atomicAdd(unsigned* p, unsigned v) {
    unsigned old = *p;
    *p = old + v;
    return old;
}

// ---- min / max as CUDA overloads them (integers of mixed types promote; floats: fminf) ----
template <typename A, typename B>
inline typename std::common_type<A, B>::type min(A a, B b) {
    typedef typename std::common_type<A, B>::type T;
    return (T)a < (T)b ? (T)a : (T)b;
}
template <typename A, typename B>
inline typename std::common_type<A, B>::type max(A a, B b) {
    typedef typename std::common_type<A, B>::type T;
    return (T)a < (T)b ? (T)b : (T)a;
}
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }

// ---- classification (CUDA has them unqualified) ----
using std::isfinite;
using std::isinf;
using std::isnan;

// ---- float intrinsics: explicit rounding (never contracted) ----
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __fsqrt_rn(float a) { return sqrtf(a); }
inline float rsqrtf(float a) { return 1.0f / sqrtf(a); }
inline float __saturatef(float a) { return a != a ? 0.0f : fminf(fmaxf(a, 0.0f), 1.0f); }
inline float __expf(float a) { return expf(a); }
inline float __logf(float a) { return logf(a); }
inline float __fdividef(float a, float b) { return a / b; }
inline int __float2int_rn(float a) { return (int)nearbyintf(a); }
inline int __float2int_rz(float a) { return (int)a; }
inline int __float2int_rd(float a) { return (int)floorf(a); }
inline float __int2float_rn(int a) { return (float)a; }
inline float __uint2float_rn(unsigned a) { return (float)a; }

// ---- bf16 ----
namespace mxh {
inline unsigned short f32_to_bf16_rn(float f) {
    unsigned u = __float_as_uint(f);
    if ((u & 0x7F800000u) == 0x7F800000u && (u & 0x007FFFFFu)) return 0x7FFF;  // NaN
    u += 0x7FFFu + ((u >> 16) & 1u);  // round to nearest, ties to even (inf stays inf)
    return (unsigned short)(u >> 16);
}
inline float bf16_to_f32(unsigned short h) { return __uint_as_float((unsigned)h << 16); }
}  // namespace mxh

struct __nv_bfloat16 {
    unsigned short __x;
    __nv_bfloat16() = default;
    __nv_bfloat16(float f) : __x(mxh::f32_to_bf16_rn(f)) {}
    operator float() const { return mxh::bf16_to_f32(__x); }
};
struct __attribute__((aligned(4))) __nv_bfloat162 {
    __nv_bfloat16 x, y;
};
inline float __bfloat162float(__nv_bfloat16 h) { return mxh::bf16_to_f32(h.__x); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    __nv_bfloat16 h;
    h.__x = mxh::f32_to_bf16_rn(f);
    return h;
}
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) {
    __nv_bfloat16 h;
    h.__x = u;
    return h;
}
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) {
    return {__float2bfloat16_rn(a), __float2bfloat16_rn(b)};
}
inline __nv_bfloat162 __float22bfloat162_rn(float2 f) { return __floats2bfloat162_rn(f.x, f.y); }
inline float2 __bfloat1622float2(__nv_bfloat162 h) {
    return {__bfloat162float(h.x), __bfloat162float(h.y)};
}
inline float __low2float(__nv_bfloat162 h) { return __bfloat162float(h.x); }
inline float __high2float(__nv_bfloat162 h) { return __bfloat162float(h.y); }
inline __nv_bfloat162 __halves2bfloat162(__nv_bfloat16 a, __nv_bfloat16 b) { return {a, b}; }

// ---- address spaces ----
// On the GPU these give the 32-bit shared-window offset; on the host a "shared address" is the
// pointer itself (ptx_ops.cuh takes generic pointers and converts only on the device).
inline size_t __cvta_generic_to_shared(const void* p) { return (size_t)p; }
inline size_t __cvta_generic_to_global(const void* p) { return (size_t)p; }
template <typename T>
inline T __ldg(const T* p) {
    return *p;
}

// ---- block synchronization ----
inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    MXH_FENCE();
    mxh::syncthreads(file, line);
    MXH_FENCE();
}
inline int __syncthreads_count(int pred, const char* file = __builtin_FILE(),
                               int line = __builtin_LINE()) {
    MXH_FENCE();
    int r = mxh::syncthreads_reduce(pred, 0, file, line);
    MXH_FENCE();
    return r;
}
inline int __syncthreads_and(int pred, const char* file = __builtin_FILE(),
                             int line = __builtin_LINE()) {
    MXH_FENCE();
    int r = mxh::syncthreads_reduce(pred, 1, file, line);
    MXH_FENCE();
    return r;
}
inline int __syncthreads_or(int pred, const char* file = __builtin_FILE(),
                            int line = __builtin_LINE()) {
    MXH_FENCE();
    int r = mxh::syncthreads_reduce(pred, 2, file, line);
    MXH_FENCE();
    return r;
}
// One OS thread runs the whole block, so every memory operation is already ordered.
inline void __threadfence_block() { MXH_FENCE(); }
inline void __threadfence() { MXH_FENCE(); }

// ---- warp intrinsics (CUDA C Programming Guide, "Warp Shuffle Functions", "Warp Vote") ----
namespace mxh {
struct ShflIn {
    uint64_t value;
    unsigned src;  // the lane this lane reads, already resolved for the width/mode
};
// Lane l gets the value of its source lane; a source outside the mask is undefined: 0xFF bytes.
inline void shfl_compute(Collective& c) {
    for (unsigned l = 0; l < 32; l++) {
        if (!((c.mask >> l) & 1)) continue;
        ShflIn in;
        memcpy(&in, c.lane[l].in, sizeof in);
        uint64_t v = ~0ull;
        if ((c.mask >> in.src) & 1) memcpy(&v, c.lane[in.src].in, sizeof v);
        memcpy(c.lane[l].out, &v, sizeof v);
    }
}
template <typename T>
inline T shfl(unsigned mask, T var, unsigned src, const char* op, const char* file, int line) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of <= 8 bytes");
    ShflIn in{0, src};
    memcpy(&in.value, &var, sizeof(T));
    uint64_t out;
    MXH_FENCE();
    collective(mask, op, file, line, &in, sizeof in, &out, sizeof out, shfl_compute);
    MXH_FENCE();
    T r;
    memcpy(&r, &out, sizeof(T));
    return r;
}
inline unsigned lane_id() { return tls_thread->lane; }
// Lanes of a width-sized segment: [base, base + width).
inline unsigned segment_base(int width) { return lane_id() & ~(unsigned)(width - 1); }

struct VoteIn {
    int pred;
};
inline void vote_compute(Collective& c) {
    unsigned ballot = 0;
    for (unsigned l = 0; l < 32; l++) {
        if (!((c.mask >> l) & 1)) continue;
        VoteIn in;
        memcpy(&in, c.lane[l].in, sizeof in);
        if (in.pred) ballot |= 1u << l;
    }
    for (unsigned l = 0; l < 32; l++)
        if ((c.mask >> l) & 1) memcpy(c.lane[l].out, &ballot, sizeof ballot);
}
inline unsigned vote(unsigned mask, int pred, const char* op, const char* file, int line) {
    VoteIn in{pred};
    unsigned ballot;
    MXH_FENCE();
    collective(mask, op, file, line, &in, sizeof in, &ballot, sizeof ballot, vote_compute);
    MXH_FENCE();
    return ballot;
}
}  // namespace mxh

template <typename T>
inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32,
                     const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    unsigned src = mxh::segment_base(width) + ((unsigned)src_lane & (unsigned)(width - 1));
    return mxh::shfl(mask, var, src, "__shfl_sync", file, line);
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32,
                         const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    unsigned me = mxh::lane_id(), base = mxh::segment_base(width);
    unsigned src = me ^ (unsigned)lane_mask;
    if (src < base || src >= base + (unsigned)width) src = me;  // outside the segment: own value
    return mxh::shfl(mask, var, src, "__shfl_xor_sync", file, line);
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32,
                        const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    unsigned me = mxh::lane_id(), base = mxh::segment_base(width);
    unsigned src = me - base >= delta ? me - delta : me;
    return mxh::shfl(mask, var, src, "__shfl_up_sync", file, line);
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32,
                          const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    unsigned me = mxh::lane_id(), base = mxh::segment_base(width);
    unsigned src = me + delta < base + (unsigned)width ? me + delta : me;
    return mxh::shfl(mask, var, src, "__shfl_down_sync", file, line);
}
inline unsigned __ballot_sync(unsigned mask, int pred, const char* file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
    return mxh::vote(mask, pred, "__ballot_sync", file, line);
}
inline int __any_sync(unsigned mask, int pred, const char* file = __builtin_FILE(),
                      int line = __builtin_LINE()) {
    return mxh::vote(mask, pred, "__any_sync", file, line) != 0;
}
inline int __all_sync(unsigned mask, int pred, const char* file = __builtin_FILE(),
                      int line = __builtin_LINE()) {
    return mxh::vote(mask, pred, "__all_sync", file, line) == mask;
}
inline void __syncwarp(unsigned mask = 0xFFFFFFFFu, const char* file = __builtin_FILE(),
                       int line = __builtin_LINE()) {
    MXH_FENCE();
    mxh::collective(mask, "__syncwarp", file, line, nullptr, 0, nullptr, 0, nullptr);
    MXH_FENCE();
}
