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
