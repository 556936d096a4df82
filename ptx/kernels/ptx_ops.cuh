// Every inline-PTX instruction the kernels use, one small function each, and beside it its host
// twin: what the instruction computes, written from the PTX ISA's instruction semantics and
// fragment-layout tables, for the host harness (MXGPT_HOST_HARNESS). The kernels call only these
// functions, never `asm` directly, so every instruction they use is both documented here and
// executed in CI.
//
// The twins are deliberately written from the ISA text, not from how the kernels use the
// instructions: a kernel that gets a fragment index wrong computes the wrong product here too.
// Warp-wide instructions (.sync.aligned) are harness rendezvous of the full warp: every lane
// deposits its operands, the last lane to arrive computes all 32 lanes' results at once (as the
// hardware reads all operands at one instant), then each lane takes its own.
//
// Notation of the ISA's fragment tables, used throughout: lane l of the warp,
//   groupID g = l >> 2,  threadID_in_group t = l % 4.
// A register holding several narrow elements holds element 0 in its lowest bits.
#pragma once
#include "common.cuh"

#ifdef MXGPT_HOST_HARNESS
#define MXH_SITE const char *file = __builtin_FILE(), int line = __builtin_LINE()
#else
#define MXH_SITE int = 0
#endif

// ---------------------------------------------------------------------------------------------
// cp.async.cg.shared.global [dst], [src], 16, src_bytes   (sm_80+)
//
// Starts a 16-byte copy global -> shared that completes asynchronously: src_bytes bytes are
// read from src and the remaining 16 - src_bytes bytes of dst are zero-filled (src_bytes = 0
// reads nothing; src must still be a valid address). Both addresses 16-byte aligned. The copy
// joins the thread's current group; cp.async.commit_group closes the group;
// cp.async.wait_group N waits until at most N of the thread's committed groups are pending.
// Completion makes the data visible to the issuing thread only: other threads need a barrier
// after their own wait.
//
// Host twin: the source is read at issue, the destination written when a wait retires the group
// (so a kernel that reads shared memory before waiting sees the old contents, as it may on a GPU).
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, int src_bytes, MXH_SITE) {
#ifdef MXGPT_HOST_HARNESS
    mxh::cp_async(smem, gmem, 16, (unsigned)src_bytes, file, line);
#else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(
                     (uint32_t)__cvta_generic_to_shared(smem)),
                 "l"(__cvta_generic_to_global(gmem)), "r"(src_bytes)
                 : "memory");
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#ifdef MXGPT_HOST_HARNESS
    mxh::cp_async_commit();
#else
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Waits until at most PENDING committed groups of this thread are still in flight.
template <int PENDING>
__device__ __forceinline__ void cp_async_wait() {
#ifdef MXGPT_HOST_HARNESS
    MXH_FENCE();
    mxh::cp_async_wait(PENDING);
    MXH_FENCE();
#else
    asm volatile("cp.async.wait_group %0;\n" ::"n"(PENDING) : "memory");
#endif
}

// ---------------------------------------------------------------------------------------------
// ldmatrix.sync.aligned.m8n8.x4{.trans}.shared.b16 {r0, r1, r2, r3}, [p]   (sm_75+)
//
// The warp loads four 8x8 matrices of 16-bit elements from shared memory. Lanes 8j .. 8j+7 give
// the addresses of rows 0..7 of matrix j (each row: 8 contiguous elements, 16 bytes, 16-byte
// aligned). Register r[j] of lane l receives two elements of matrix j, M_j[row][col] (element
// col of the row whose address lane 8j + row gave):
//   without .trans:  low half M_j[g][2t],   high half M_j[g][2t + 1]
//   with .trans:     low half M_j[2t][g],   high half M_j[2t + 1][g]
// (.trans delivers the transposed matrix: lane l holds column g instead of row g.)
#ifdef MXGPT_HOST_HARNESS
namespace mxh {
struct LdmatrixIn {
    const unsigned short* row;
};
template <bool TRANS>
inline void ldmatrix_x4_compute(Collective& c) {
    const unsigned short* rows[32];
    for (unsigned l = 0; l < 32; l++) memcpy(&rows[l], c.lane[l].in, sizeof rows[l]);
    for (unsigned l = 0; l < 32; l++) {
        const unsigned g = l >> 2, t = l % 4;
        uint32_t r[4];
        for (unsigned j = 0; j < 4; j++) {
            unsigned short lo, hi;
            if (!TRANS) {
                lo = rows[8 * j + g][2 * t];
                hi = rows[8 * j + g][2 * t + 1];
            } else {
                lo = rows[8 * j + 2 * t][g];
                hi = rows[8 * j + 2 * t + 1][g];
            }
            r[j] = (uint32_t)lo | ((uint32_t)hi << 16);
        }
        memcpy(c.lane[l].out, r, sizeof r);
    }
}
template <bool TRANS>
inline void ldmatrix_x4(uint32_t r[4], const void* p, const char* file, int line) {
    if ((uintptr_t)p % 16 != 0)
        fail(file, line, "ldmatrix: row address %p is not 16-byte aligned", p);
    LdmatrixIn in{(const unsigned short*)p};
    MXH_FENCE();
    collective(0xFFFFFFFFu, TRANS ? "ldmatrix.x4.trans" : "ldmatrix.x4", file, line, &in, sizeof in,
               r, 16, ldmatrix_x4_compute<TRANS>);
    MXH_FENCE();
}
}  // namespace mxh
#endif

__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* smem_row, MXH_SITE) {
#ifdef MXGPT_HOST_HARNESS
    mxh::ldmatrix_x4<false>(r, smem_row, file, line);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"((uint32_t)__cvta_generic_to_shared(smem_row))
                 : "memory");
#endif
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void* smem_row, MXH_SITE) {
#ifdef MXGPT_HOST_HARNESS
    mxh::ldmatrix_x4<true>(r, smem_row, file, line);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"((uint32_t)__cvta_generic_to_shared(smem_row))
                 : "memory");
#endif
}

// ---------------------------------------------------------------------------------------------
// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {d0..d3}, {a0..a3}, {b0, b1}, {c0..c3}
// (sm_80+)
//
// D = A B + C with A 16x16 bf16 (row), B 16x8 bf16 (col), C and D 16x8 f32. Fragments (PTX ISA
// "Matrix Fragments for mma.m16n8k16 with floating point type"), element i of each:
//   A: 8 bf16 a0..a7 in a[0..3] (a[i/2], a0 low):
//        row = g       for i in {0, 1, 4, 5},  g + 8 otherwise
//        col = 2t + (i & 1)       for i < 4,   2t + (i & 1) + 8 for i >= 4
//   B: 4 bf16 b0..b3 in b0, b1:
//        row = 2t + (i & 1)       for i < 2,   2t + (i & 1) + 8 for i >= 2;   col = g
//   C, D: 4 f32 c0..c3:
//        row = g for i < 2, g + 8 otherwise;   col = 2t + (i & 1)
// Products of two bf16 are exact in f32. The order and internal precision of the hardware's
// sum is not specified; the twin sums the 16 products and c exactly (in double, exact for
// bf16 products of ordinary magnitude) and rounds once to f32: an ideal tensor core.
#ifdef MXGPT_HOST_HARNESS
namespace mxh {
struct MmaBf16In {
    uint32_t a[4], b[2];
    float c[4];
};
inline float bf16_half(uint32_t reg, unsigned half) { return bf16_to_f32((reg >> (16 * half)) & 0xFFFF); }
inline void mma_bf16_16816_compute(Collective& c) {
    float A[16][16], B[16][8], C[16][8];
    for (unsigned l = 0; l < 32; l++) {
        MmaBf16In in;
        memcpy(&in, c.lane[l].in, sizeof in);
        const unsigned g = l >> 2, t = l % 4;
        for (unsigned i = 0; i < 8; i++) {
            unsigned row = (i < 2 || (i >= 4 && i < 6)) ? g : g + 8;
            unsigned col = 2 * t + (i & 1) + (i >= 4 ? 8 : 0);
            A[row][col] = bf16_half(in.a[i / 2], i % 2);
        }
        for (unsigned i = 0; i < 4; i++) {
            unsigned row = 2 * t + (i & 1) + (i >= 2 ? 8 : 0);
            B[row][g] = bf16_half(in.b[i / 2], i % 2);
        }
        for (unsigned i = 0; i < 4; i++) C[i < 2 ? g : g + 8][2 * t + (i & 1)] = in.c[i];
    }
    float D[16][8];
    for (unsigned row = 0; row < 16; row++) {
        // Each element: c + sum over k in order, in double; the 8 columns are independent sums
        // (written column-inner so the compiler can vectorize them).
        double acc[8];
        for (unsigned col = 0; col < 8; col++) acc[col] = C[row][col];
        for (unsigned k = 0; k < 16; k++) {
            // bf16 x bf16 has at most 16 significant bits: exact as an f32 product.
            for (unsigned col = 0; col < 8; col++) acc[col] += (double)(A[row][k] * B[k][col]);
        }
        for (unsigned col = 0; col < 8; col++) D[row][col] = (float)acc[col];
    }
    for (unsigned l = 0; l < 32; l++) {
        const unsigned g = l >> 2, t = l % 4;
        float d[4];
        for (unsigned i = 0; i < 4; i++) d[i] = D[i < 2 ? g : g + 8][2 * t + (i & 1)];
        memcpy(c.lane[l].out, d, sizeof d);
    }
}
}  // namespace mxh
#endif

// d += a . b (C and D are the same registers).
__device__ __forceinline__ void mma_bf16_16816(float d[4], const uint32_t a[4], uint32_t b0,
                                               uint32_t b1, MXH_SITE) {
#ifdef MXGPT_HOST_HARNESS
    mxh::MmaBf16In in;
    memcpy(in.a, a, sizeof in.a);
    in.b[0] = b0;
    in.b[1] = b1;
    memcpy(in.c, d, sizeof in.c);
    mxh::collective(0xFFFFFFFFu, "mma.m16n8k16.bf16", file, line, &in, sizeof in, d, 16,
                    mxh::mma_bf16_16816_compute);
#else
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// ---------------------------------------------------------------------------------------------
// mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {d0..d3}, {a0..a3}, {b0, b1}, {c0..c3}
// (sm_80+)
//
// D = A B + C with A 16x32 s8 (row), B 32x8 s8 (col), C and D 16x8 s32; exact integer
// arithmetic (wrapping modulo 2^32 without .satfinite). Fragments (PTX ISA "Matrix Fragments
// for mma.m16n8k32", .s8), element i of each:
//   A: 16 s8 a0..a15 in a[0..3] (a[i/4], byte i % 4, a0 in the low byte):
//        row = g for i in 0..3 and 8..11,  g + 8 otherwise
//        col = 4t + (i & 3) for i < 8,     4t + (i & 3) + 16 for i >= 8
//   B: 8 s8 b0..b7 in b0, b1:
//        row = 4t + (i & 3) for i < 4,     4t + (i & 3) + 16 for i >= 4;   col = g
//   C, D: as for m16n8k16 (row g / g + 8, col 2t + (i & 1)).
// One instruction is exactly one 32-element MX block along K, which is how the integer MX
// GEMM uses it.
#ifdef MXGPT_HOST_HARNESS
namespace mxh {
struct MmaS8In {
    uint32_t a[4], b[2];
    int32_t c[4];
};
inline int s8_byte(uint32_t reg, unsigned byte) { return (int)(int8_t)((reg >> (8 * byte)) & 0xFF); }
inline void mma_s8_16832_compute(Collective& c) {
    int A[16][32], B[32][8], C[16][8];
    for (unsigned l = 0; l < 32; l++) {
        MmaS8In in;
        memcpy(&in, c.lane[l].in, sizeof in);
        const unsigned g = l >> 2, t = l % 4;
        for (unsigned i = 0; i < 16; i++) {
            unsigned row = (i < 4 || (i >= 8 && i < 12)) ? g : g + 8;
            unsigned col = 4 * t + (i & 3) + (i >= 8 ? 16 : 0);
            A[row][col] = s8_byte(in.a[i / 4], i % 4);
        }
        for (unsigned i = 0; i < 8; i++) {
            unsigned row = 4 * t + (i & 3) + (i >= 4 ? 16 : 0);
            B[row][g] = s8_byte(in.b[i / 4], i % 4);
        }
        for (unsigned i = 0; i < 4; i++) C[i < 2 ? g : g + 8][2 * t + (i & 1)] = in.c[i];
    }
    for (unsigned l = 0; l < 32; l++) {
        const unsigned g = l >> 2, t = l % 4;
        int32_t d[4];
        for (unsigned i = 0; i < 4; i++) {
            unsigned row = i < 2 ? g : g + 8, col = 2 * t + (i & 1);
            int64_t s = C[row][col];
            for (unsigned k = 0; k < 32; k++) s += (int64_t)A[row][k] * B[k][col];
            d[i] = (int32_t)(uint32_t)(uint64_t)s;  // wraps modulo 2^32
        }
        memcpy(c.lane[l].out, d, sizeof d);
    }
}
}  // namespace mxh
#endif

// d += a . b over one k32 step.
__device__ __forceinline__ void mma_s8_16832(int32_t d[4], const uint32_t a[4], uint32_t b0,
                                             uint32_t b1, MXH_SITE) {
#ifdef MXGPT_HOST_HARNESS
    mxh::MmaS8In in;
    memcpy(in.a, a, sizeof in.a);
    in.b[0] = b0;
    in.b[1] = b1;
    memcpy(in.c, d, sizeof in.c);
    mxh::collective(0xFFFFFFFFu, "mma.m16n8k32.s8", file, line, &in, sizeof in, d, 16,
                    mxh::mma_s8_16832_compute);
#else
    asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// =============================================================================================
// Blackwell (sm_100a): tcgen05 (tensor memory and the block-scaled FP4 MMA) and the mbarrier and
// proxy fences around it. Used by mx_gemm_tcgen05.cu only.
//
// NOT RUN ON HARDWARE. The spellings below are the ones ptxas 13.0 accepts for sm_100a (PTX ISA
// 9.0); what each instruction does is as read in the PTX ISA, section "Tensorcore 5th Generation
// Family Instructions", and has not been observed on a GPU.
//
// None of these is emulated by the host harness: the module that uses them says
// `// harness: not emulated (...)`, so the harness lists its kernel but never runs it, and every
// host twin below stops the launch with an error naming the call site. The twins exist so that
// the kernel still compiles for the host with the rest. Every kernel includes this file, for
// sm_80 and sm_90a too: only a build for sm_100a (nvcc defines __CUDA_ARCH_FEAT_SM100_ALL for
// exactly that target) emits tcgen05; elsewhere the wrappers trap. The mbarrier and fence forms
// used here (try_wait.parity, fence.proxy.async, fence.mbarrier_init) need sm_90 or later.
//
// Tensor memory (TMEM): 128 lanes x 512 columns of 32-bit cells per CTA. An address is 32 bits:
// lane in bits 31..16, column in bits 15..0. Warp w of a warpgroup reaches lanes 32w..32w+31
// only (tcgen05.ld/st). Columns are allocated by one whole warp, 32..512 at a time, a power of
// two, and must all be freed before the CTA exits.
// =============================================================================================
#if !defined(MXGPT_HOST_HARNESS) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 1000 && \
    defined(__CUDA_ARCH_FEAT_SM100_ALL)
#define MXGPT_TCGEN05 1
#else
#define MXGPT_TCGEN05 0
#endif
#if !defined(MXGPT_HOST_HARNESS) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define MXGPT_MBARRIER 1
#else
#define MXGPT_MBARRIER 0
#endif

// tcgen05.alloc.cta_group::1.sync.aligned.shared::cta.b32 [slot], ncols
// tcgen05.relinquish_alloc_permit.cta_group::1.sync.aligned
//
// Warp-wide (every lane, same ncols). alloc blocks until ncols columns (power of two, 32..512)
// of this CTA's tensor memory are free, then writes the address of the first one (lane 0) into
// the shared word `slot` (a weak store: a barrier makes it visible to the other warps).
// relinquish: this CTA gives up the right to allocate (a later alloc from it is illegal).
__device__ __forceinline__ void tcgen05_alloc(uint32_t* slot, uint32_t ncols, MXH_SITE) {
#ifdef MXGPT_HOST_HARNESS
    (void)slot;
    (void)ncols;
    mxh::fail(file, line, "tcgen05.alloc is not emulated by the host harness");
#elif MXGPT_TCGEN05
    asm volatile("tcgen05.alloc.cta_group::1.sync.aligned.shared::cta.b32 [%0], %1;\n" ::"r"(
                     (uint32_t)__cvta_generic_to_shared(slot)),
                 "r"(ncols)
                 : "memory");
#else
    __trap();
#endif
}

__device__ __forceinline__ void tcgen05_relinquish_alloc_permit(MXH_SITE) {
#ifdef MXGPT_HOST_HARNESS
    mxh::fail(file, line, "tcgen05.relinquish_alloc_permit is not emulated by the host harness");
#elif MXGPT_TCGEN05
    asm volatile("tcgen05.relinquish_alloc_permit.cta_group::1.sync.aligned;\n" ::: "memory");
#else
    __trap();
#endif
}

// tcgen05.dealloc.cta_group::1.sync.aligned.b32 taddr, ncols
// Warp-wide: frees what alloc returned (same ncols).
__device__ __forceinline__ void tcgen05_dealloc(uint32_t taddr, uint32_t ncols, MXH_SITE) {
#ifdef MXGPT_HOST_HARNESS
    (void)taddr;
    (void)ncols;
    mxh::fail(file, line, "tcgen05.dealloc is not emulated by the host harness");
#elif MXGPT_TCGEN05
    asm volatile("tcgen05.dealloc.cta_group::1.sync.aligned.b32 %0, %1;\n" ::"r"(taddr), "r"(ncols)
                 : "memory");
#else
    __trap();
#endif
}

// tcgen05.fence::before_thread_sync / tcgen05.fence::after_thread_sync
//
// The asynchronous tcgen05 operations (mma, cp, ld, st) are ordered across threads only through
// these: a thread's tcgen05 work before `before_thread_sync` is ordered before its following
// barrier / mbarrier arrive; a thread's tcgen05 work after `after_thread_sync` is ordered after
// its preceding barrier / mbarrier wait. (tcgen05.commit implies the "before" fence.)
__device__ __forceinline__ void tcgen05_fence_before_thread_sync(MXH_SITE) {
#ifdef MXGPT_HOST_HARNESS
    mxh::fail(file, line, "tcgen05.fence is not emulated by the host harness");
#elif MXGPT_TCGEN05
    asm volatile("tcgen05.fence::before_thread_sync;\n" ::: "memory");
#else
    __trap();
#endif
}

__device__ __forceinline__ void tcgen05_fence_after_thread_sync(MXH_SITE) {
#ifdef MXGPT_HOST_HARNESS
    mxh::fail(file, line, "tcgen05.fence is not emulated by the host harness");
#elif MXGPT_TCGEN05
    asm volatile("tcgen05.fence::after_thread_sync;\n" ::: "memory");
#else
    __trap();
#endif
}

// tcgen05.cp.cta_group::1.32x128b.warpx4 [taddr], sdesc
//
// One thread starts an asynchronous copy shared memory -> tensor memory of 32 rows x 128 bits,
// broadcast to all four 32-lane quarters: source row r (0..31) lands in lanes r, 32 + r, 64 + r
// and 96 + r, columns taddr .. taddr + 3 (its four 32-bit words in order). The source is
// described by a shared-memory matrix descriptor in the K-major, no-swizzle form: rows are
// 16 bytes, rows 8g .. 8g + 7 contiguous (a "core matrix"), core matrix g at start + g * SBO.
// Ordered before a later tcgen05.mma of the same thread (a pipelined pair); its completion is
// tracked by tcgen05.commit.
__device__ __forceinline__ void tcgen05_cp_32x128b_warpx4(uint32_t taddr, uint64_t sdesc,
                                                          MXH_SITE) {
#ifdef MXGPT_HOST_HARNESS
    (void)taddr;
    (void)sdesc;
    mxh::fail(file, line, "tcgen05.cp is not emulated by the host harness");
#elif MXGPT_TCGEN05
    asm volatile("tcgen05.cp.cta_group::1.32x128b.warpx4 [%0], %1;\n" ::"r"(taddr), "l"(sdesc)
                 : "memory");
#else
    __trap();
#endif
}

// tcgen05.mma.cta_group::1.kind::mxf4.block_scale.scale_vec::2X
//     [d_taddr], adesc, bdesc, idesc, [sfa_taddr], [sfb_taddr], p        (p = accumulate != 0)
//
// One thread starts the asynchronous block-scaled MMA D (+)= (A * scale_A) (B * scale_B):
// A M x 64 and B 64 x N packed E2M1 (two per byte) in shared memory, described by the matrix
// descriptors adesc / bdesc; scale_A (M x 2) and scale_B (2 x N) UE8M0 bytes in tensor memory at
// sfa_taddr / sfb_taddr (one scale per 32 elements of K); D M x N f32 in tensor memory at d_taddr
// (row i in lane i, column j in column d_taddr + j for M = 128). p false: D = A*B, the old D is
// not read. idesc (32 bits) gives the types, M, N and the scale-factor byte ids. Completion is
// observed only through tcgen05.commit; mma after mma with the same D runs in issue order.
// (.scale_vec::2X is the sm_100a spelling from PTX 8.6; PTX 8.8 also names it .block32.)
__device__ __forceinline__ void tcgen05_mma_mxf4(uint32_t d_taddr, uint64_t adesc, uint64_t bdesc,
                                                 uint32_t idesc, uint32_t sfa_taddr,
                                                 uint32_t sfb_taddr, int accumulate, MXH_SITE) {
#ifdef MXGPT_HOST_HARNESS
    (void)d_taddr;
    (void)adesc;
    (void)bdesc;
    (void)idesc;
    (void)sfa_taddr;
    (void)sfb_taddr;
    (void)accumulate;
    mxh::fail(file, line, "tcgen05.mma is not emulated by the host harness");
#elif MXGPT_TCGEN05
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %6, 0;\n"
        "tcgen05.mma.cta_group::1.kind::mxf4.block_scale.scale_vec::2X "
        "[%0], %1, %2, %3, [%4], [%5], p;\n"
        "}\n" ::"r"(d_taddr),
        "l"(adesc), "l"(bdesc), "r"(idesc), "r"(sfa_taddr), "r"(sfb_taddr), "r"(accumulate)
        : "memory");
#else
    __trap();
#endif
}

// tcgen05.commit.cta_group::1.mbarrier::arrive::one.shared::cluster.b64 [bar]
//
// Makes the mbarrier `bar` (this CTA's shared memory) receive one arrive when every tcgen05.mma /
// tcgen05.cp this thread issued before it has completed (their shared-memory reads included).
__device__ __forceinline__ void tcgen05_commit(uint64_t* bar, MXH_SITE) {
#ifdef MXGPT_HOST_HARNESS
    (void)bar;
    mxh::fail(file, line, "tcgen05.commit is not emulated by the host harness");
#elif MXGPT_TCGEN05
    asm volatile(
        "tcgen05.commit.cta_group::1.mbarrier::arrive::one.shared::cluster.b64 [%0];\n" ::"r"(
            (uint32_t)__cvta_generic_to_shared(bar))
        : "memory");
#else
    __trap();
#endif
}

// tcgen05.ld.sync.aligned.32x32b.x8.b32 {r0..r7}, [taddr]
// tcgen05.wait::ld.sync.aligned
//
// Warp-wide, every lane the same taddr (lane field = 32 x this warp's index in its warpgroup):
// lane l receives the 8 consecutive 32-bit cells of tensor-memory lane (taddr's lane + l),
// columns taddr .. taddr + 7, in r[0..7]. Asynchronous: the registers are valid only after
// tcgen05.wait::ld, which therefore takes them as in-out operands (so the compiler cannot move
// a use of them above the wait).
__device__ __forceinline__ void tcgen05_ld_32x32b_x8(uint32_t r[8], uint32_t taddr, MXH_SITE) {
#ifdef MXGPT_HOST_HARNESS
    (void)r;
    (void)taddr;
    mxh::fail(file, line, "tcgen05.ld is not emulated by the host harness");
#elif MXGPT_TCGEN05
    asm volatile("tcgen05.ld.sync.aligned.32x32b.x8.b32 {%0, %1, %2, %3, %4, %5, %6, %7}, [%8];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]), "=r"(r[4]), "=r"(r[5]),
                   "=r"(r[6]), "=r"(r[7])
                 : "r"(taddr)
                 : "memory");
#else
    (void)taddr;
    for (int i = 0; i < 8; i++) r[i] = 0;
    __trap();
#endif
}

__device__ __forceinline__ void tcgen05_wait_ld(uint32_t r[8], MXH_SITE) {
#ifdef MXGPT_HOST_HARNESS
    (void)r;
    mxh::fail(file, line, "tcgen05.wait is not emulated by the host harness");
#elif MXGPT_TCGEN05
    asm volatile("tcgen05.wait::ld.sync.aligned;\n"
                 : "+r"(r[0]), "+r"(r[1]), "+r"(r[2]), "+r"(r[3]), "+r"(r[4]), "+r"(r[5]),
                   "+r"(r[6]), "+r"(r[7])
                 :
                 : "memory");
#else
    (void)r;
    __trap();
#endif
}

// mbarrier.init.shared::cta.b64 [bar], count          (sm_90+ here)
// fence.mbarrier_init.release.cluster
// mbarrier.try_wait.parity.shared::cta.b64 p, [bar], parity
//
// A shared-memory barrier object: init sets the expected arrival count of each phase (phases
// start at 0); the init fence makes the initialization visible to the asynchronous arrivals
// (tcgen05.commit) before any use. try_wait.parity is true once the phase with that parity has
// completed (it may suspend the thread for a while first); loop until true.
__device__ __forceinline__ void mbarrier_init(uint64_t* bar, uint32_t count, MXH_SITE) {
#ifdef MXGPT_HOST_HARNESS
    (void)bar;
    (void)count;
    mxh::fail(file, line, "mbarrier.init is not emulated by the host harness");
#elif MXGPT_MBARRIER
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(
                     (uint32_t)__cvta_generic_to_shared(bar)),
                 "r"(count)
                 : "memory");
#else
    __trap();
#endif
}

__device__ __forceinline__ void fence_mbarrier_init(MXH_SITE) {
#ifdef MXGPT_HOST_HARNESS
    mxh::fail(file, line, "fence.mbarrier_init is not emulated by the host harness");
#elif MXGPT_MBARRIER
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#else
    __trap();
#endif
}

__device__ __forceinline__ bool mbarrier_try_wait_parity(uint64_t* bar, uint32_t parity, MXH_SITE) {
#ifdef MXGPT_HOST_HARNESS
    (void)bar;
    (void)parity;
    mxh::fail(file, line, "mbarrier.try_wait is not emulated by the host harness");
#elif MXGPT_MBARRIER
    uint32_t done;
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.b32 %0, 1, 0, p;\n"
        "}\n"
        : "=r"(done)
        : "r"((uint32_t)__cvta_generic_to_shared(bar)), "r"(parity)
        : "memory");
    return done != 0;
#else
    (void)bar;
    (void)parity;
    __trap();
    return true;
#endif
}

// fence.proxy.async.shared::cta
//
// tcgen05.mma and tcgen05.cp read shared memory through the async proxy: a thread's ordinary
// st.shared must be followed by this fence (then a barrier) before an MMA / copy issued after
// the barrier may read what it wrote.
__device__ __forceinline__ void fence_proxy_async_shared(MXH_SITE) {
#ifdef MXGPT_HOST_HARNESS
    mxh::fail(file, line, "fence.proxy.async is not emulated by the host harness");
#elif MXGPT_MBARRIER
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#else
    __trap();
#endif
}

// =============================================================================================
// FP8 (E4M3) and NVFP4 instructions: the conversion and the mma forms of the FP8 forward
// (fp8.cu, fp8_gemm.cu) and the NVFP4 GEMM (nvfp4_gemm.cu), then the Blackwell block-scaled
// NVFP4 MMA (nvfp4_gemm_tcgen05.cu, not emulated).
// =============================================================================================
#include "fp8.cuh"

#if !defined(MXGPT_HOST_HARNESS) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
#define MXGPT_FP8_INSTR 1
#else
#define MXGPT_FP8_INSTR 0
#endif

// ---------------------------------------------------------------------------------------------
// cvt.rn.satfinite.e4m3x2.f32 d, a, b   (sm_89+, PTX 7.8)
//
// Converts the two f32 a and b to E4M3 and packs them into the 16-bit d: the value converted
// from a in the upper byte (bits 15..8), from b in the lower byte. .rn: round to nearest, ties
// to even; .satfinite (required for the f8x2 types): a result beyond the largest finite value
// (448), infinities included, becomes +-448 with the input's sign; a NaN input gives the NaN
// byte (0x7F here: which sign the hardware gives a NaN is not stated in what we could read; the
// kernels never feed it one where the sign would matter, see nvfp4_quantize.cu). Inputs below
// half the smallest subnormal (2^-10) round to a zero of the input's sign.
//
// Host twin: from those words alone, on values rather than bits (independent of fp8.cuh's
// e4m3_from_f32_sw, which the sm_80 build runs instead of the instruction): the E4M3 values of
// |x|'s binade are multiples of 2^(max(floor(log2 |x|), -6) - 3); round |x| to the nearest
// multiple (ties to the even multiple, whose code is the even one), clamp at 448, then encode.
#ifdef MXGPT_HOST_HARNESS
namespace mxh {
inline uint32_t e4m3_rn_satfinite(float x) {
    if (x != x) return 0x7Fu;
    const uint32_t sign = std::signbit(x) ? 0x80u : 0u;
    const double a = std::fabs((double)x);
    if (a == 0.0) return sign;
    int e;
    std::frexp(a, &e);                     // a = f 2^e, f in [0.5, 1): floor(log2 a) = e - 1
    const int binade = e - 1 < -6 ? -6 : e - 1;
    const double quantum = std::ldexp(1.0, binade - 3);
    double q = std::nearbyint(a / quantum) * quantum;  // the current rounding mode: to nearest even
    if (!(q <= 448.0)) q = 448.0;                      // satfinite (inf too)
    if (q < std::ldexp(1.0, -6)) return sign | (uint32_t)(q * 512.0);
    std::frexp(q, &e);
    const uint32_t m = (uint32_t)(q / std::ldexp(1.0, e - 1) * 8.0) - 8u;
    return sign | ((uint32_t)(e - 1 + 7) << 3) | m;
}
}  // namespace mxh
#endif

// (a << 8) | b as E4M3 bytes.
__device__ __forceinline__ uint32_t cvt_e4m3x2_f32(float a, float b) {
#ifdef MXGPT_HOST_HARNESS
    return (mxh::e4m3_rn_satfinite(a) << 8) | mxh::e4m3_rn_satfinite(b);
#elif MXGPT_FP8_INSTR
    unsigned short d;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;\n" : "=h"(d) : "f"(a), "f"(b));
    return (uint32_t)d;
#else
    return (e4m3_from_f32_sw(a) << 8) | e4m3_from_f32_sw(b);
#endif
}

// ---------------------------------------------------------------------------------------------
// mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32 {d0..d3}, {a0, a1}, {b0}, {c0..c3}
// (sm_80+)
//
// D = A B + C with A 16x16 s8 (row), B 16x8 s8 (col), C and D 16x8 s32; exact integer
// arithmetic (wrapping modulo 2^32 without .satfinite). Fragments (PTX ISA "Matrix Fragments
// for mma.m16n8k16 with integer type"), element i of each:
//   A: 8 s8 a0..a7 in a[0..1] (a[i/4], byte i % 4, a0 in the low byte):
//        row = g for i < 4,  g + 8 for i >= 4;   col = 4t + (i & 3)
//   B: 4 s8 b0..b3 in b0:  row = 4t + i;  col = g
//   C, D: as for m16n8k16 bf16 (row g for i < 2, g + 8 otherwise; col 2t + (i & 1)).
// One instruction is exactly one 16-element NVFP4 block along K (nvfp4_gemm.cu).
#ifdef MXGPT_HOST_HARNESS
namespace mxh {
struct MmaS8k16In {
    uint32_t a[2], b;
    int32_t c[4];
};
inline void mma_s8_16816_compute(Collective& c) {
    int A[16][16], B[16][8], C[16][8];
    for (unsigned l = 0; l < 32; l++) {
        MmaS8k16In in;
        memcpy(&in, c.lane[l].in, sizeof in);
        const unsigned g = l >> 2, t = l % 4;
        for (unsigned i = 0; i < 8; i++) A[i < 4 ? g : g + 8][4 * t + (i & 3)] = s8_byte(in.a[i / 4], i % 4);
        for (unsigned i = 0; i < 4; i++) B[4 * t + i][g] = s8_byte(in.b, i);
        for (unsigned i = 0; i < 4; i++) C[i < 2 ? g : g + 8][2 * t + (i & 1)] = in.c[i];
    }
    for (unsigned l = 0; l < 32; l++) {
        const unsigned g = l >> 2, t = l % 4;
        int32_t d[4];
        for (unsigned i = 0; i < 4; i++) {
            const unsigned row = i < 2 ? g : g + 8, col = 2 * t + (i & 1);
            int64_t s = C[row][col];
            for (unsigned k = 0; k < 16; k++) s += (int64_t)A[row][k] * B[k][col];
            d[i] = (int32_t)(uint32_t)(uint64_t)s;  // wraps modulo 2^32
        }
        memcpy(c.lane[l].out, d, sizeof d);
    }
}
}  // namespace mxh
#endif

// d += a . b over one k16 step.
__device__ __forceinline__ void mma_s8_16816(int32_t d[4], uint32_t a0, uint32_t a1, uint32_t b,
                                             MXH_SITE) {
#ifdef MXGPT_HOST_HARNESS
    mxh::MmaS8k16In in;
    in.a[0] = a0;
    in.a[1] = a1;
    in.b = b;
    memcpy(in.c, d, sizeof in.c);
    mxh::collective(0xFFFFFFFFu, "mma.m16n8k16.s8", file, line, &in, sizeof in, d, 16,
                    mxh::mma_s8_16816_compute);
#else
    asm("mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32 "
        "{%0, %1, %2, %3}, {%4, %5}, {%6}, {%0, %1, %2, %3};\n"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
        : "r"(a0), "r"(a1), "r"(b));
#endif
}

// ---------------------------------------------------------------------------------------------
// mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {d0..d3}, {a0..a3}, {b0, b1}, {c0..c3}
// (sm_89+, PTX 8.4)
//
// D = A B + C with A 16x32 E4M3 (row), B 32x8 E4M3 (col), C and D 16x8 f32. The fragments are
// those of m16n8k32 with 8-bit elements (the .s8 table above, which the ISA gives for .e4m3 and
// .e5m2 too): A 16 bytes in a[0..3], row g for i in 0..3 and 8..11 (g + 8 otherwise), col
// 4t + (i & 3) (+ 16 for i >= 8); B 8 bytes in b0, b1, row 4t + (i & 3) (+ 16 for i >= 4),
// col g; C, D row g / g + 8, col 2t + (i & 1). A product of two E4M3 values is exact in f32.
// How precisely the hardware adds the 32 products and C is not specified (FP8 tensor cores are
// reported to keep fewer than 24 bits while adding), which is why fp8_gemm.cu passes C = 0 and
// adds each instruction's result to its own f32 accumulators. The twin sums the products and c
// exactly (double: products of E4M3 span 2^-18..2^18) and rounds once: an ideal tensor core.
// On sm_80 builds the wrapper traps; the launcher never selects it below compute capability 8.9.
#ifdef MXGPT_HOST_HARNESS
namespace mxh {
// The value of an E4M3 byte, from the format's definition (OCP FP8 "E4M3FN").
inline double e4m3_value(unsigned byte) {
    const unsigned e = (byte >> 3) & 15, m = byte & 7;
    if (e == 15 && m == 7) return NAN;
    const double v = e == 0 ? std::ldexp((double)m, -9) : std::ldexp(8.0 + m, (int)e - 10);
    return (byte & 0x80) ? -v : v;
}
struct MmaE4m3In {
    uint32_t a[4], b[2];
    float c[4];
};
inline void mma_e4m3_16832_compute(Collective& c) {
    double A[16][32], B[32][8], C[16][8];
    for (unsigned l = 0; l < 32; l++) {
        MmaE4m3In in;
        memcpy(&in, c.lane[l].in, sizeof in);
        const unsigned g = l >> 2, t = l % 4;
        for (unsigned i = 0; i < 16; i++) {
            const unsigned row = (i < 4 || (i >= 8 && i < 12)) ? g : g + 8;
            const unsigned col = 4 * t + (i & 3) + (i >= 8 ? 16 : 0);
            A[row][col] = e4m3_value((in.a[i / 4] >> (8 * (i % 4))) & 0xFF);
        }
        for (unsigned i = 0; i < 8; i++) {
            const unsigned row = 4 * t + (i & 3) + (i >= 4 ? 16 : 0);
            B[row][g] = e4m3_value((in.b[i / 4] >> (8 * (i % 4))) & 0xFF);
        }
        for (unsigned i = 0; i < 4; i++) C[i < 2 ? g : g + 8][2 * t + (i & 1)] = in.c[i];
    }
    for (unsigned l = 0; l < 32; l++) {
        const unsigned g = l >> 2, t = l % 4;
        float d[4];
        for (unsigned i = 0; i < 4; i++) {
            const unsigned row = i < 2 ? g : g + 8, col = 2 * t + (i & 1);
            double s = C[row][col];
            for (unsigned k = 0; k < 32; k++) s += A[row][k] * B[k][col];
            d[i] = (float)s;
        }
        memcpy(c.lane[l].out, d, sizeof d);
    }
}
}  // namespace mxh
#endif

// d += a . b over one k32 step of E4M3.
__device__ __forceinline__ void mma_e4m3_16832(float d[4], const uint32_t a[4], uint32_t b0,
                                               uint32_t b1, MXH_SITE) {
#ifdef MXGPT_HOST_HARNESS
    mxh::MmaE4m3In in;
    memcpy(in.a, a, sizeof in.a);
    in.b[0] = b0;
    in.b[1] = b1;
    memcpy(in.c, d, sizeof in.c);
    mxh::collective(0xFFFFFFFFu, "mma.m16n8k32.e4m3", file, line, &in, sizeof in, d, 16,
                    mxh::mma_e4m3_16832_compute);
#elif MXGPT_FP8_INSTR
    asm("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    (void)d;
    (void)a;
    (void)b0;
    (void)b1;
    __trap();
#endif
}

// ---------------------------------------------------------------------------------------------
// tcgen05.mma.cta_group::1.kind::mxf4nvf4.block_scale.scale_vec::4X
//     [d_taddr], adesc, bdesc, idesc, [sfa_taddr], [sfb_taddr], p        (p = accumulate != 0)
//
// As tcgen05_mma_mxf4 above, with NVFP4's blocks: A M x 64 and B 64 x N packed E2M1, and FOUR
// scale factors per row per instruction (one per 16 elements of K, .scale_vec::4X), read from
// tensor memory as bytes 0..3 of one 32-bit column per row; their type (UE4M3 or UE8M0) is
// the instruction descriptor's bit 23 (0: UE4M3, NVFP4). NOT RUN ON HARDWARE and not emulated
// (nvfp4_gemm_tcgen05.cu); ptxas 13.0 accepts the spelling for sm_100a.
__device__ __forceinline__ void tcgen05_mma_mxf4nvf4(uint32_t d_taddr, uint64_t adesc,
                                                     uint64_t bdesc, uint32_t idesc,
                                                     uint32_t sfa_taddr, uint32_t sfb_taddr,
                                                     int accumulate, MXH_SITE) {
#ifdef MXGPT_HOST_HARNESS
    (void)d_taddr;
    (void)adesc;
    (void)bdesc;
    (void)idesc;
    (void)sfa_taddr;
    (void)sfb_taddr;
    (void)accumulate;
    mxh::fail(file, line, "tcgen05.mma is not emulated by the host harness");
#elif MXGPT_TCGEN05
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %6, 0;\n"
        "tcgen05.mma.cta_group::1.kind::mxf4nvf4.block_scale.scale_vec::4X "
        "[%0], %1, %2, %3, [%4], [%5], p;\n"
        "}\n" ::"r"(d_taddr),
        "l"(adesc), "l"(bdesc), "r"(idesc), "r"(sfa_taddr), "r"(sfb_taddr), "r"(accumulate)
        : "memory");
#else
    __trap();
#endif
}
