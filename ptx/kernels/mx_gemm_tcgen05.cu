// targets: sm_100a
// harness: not emulated (tcgen05: tensor memory and the block-scaled FP4 MMA)
//
// The MX GEMM on Blackwell's block-scaled FP4 tensor cores (tcgen05.mma kind::mxf4, sm_100a):
//
//   C[m, n] = bf16(alpha * sum_j 2^(eA[m, j] + eB[n, j]) * sum_{k in block j} qA[m, k] qB[n, k])
//   (or C = bf16(C + alpha * ...) with accumulate)
//
// the same operands, launch shape and epilogue as mx_gemm_int8 (mx_gemm.cu): A [M, K] and B
// [N, K] K-major MXFP4 (packed E2M1 codes, element 2i in the low nibble of byte i, row r at
// r * K/2; one E8M0 scale per 32 elements, row r's at r * K/32). Here the tensor core applies
// the scales itself: each instruction is a 128 x 128 x 64 MMA (two MX blocks of K) whose A and
// B come from shared memory and whose UE8M0 scale factors come from tensor memory.
//
// NOT RUN ON HARDWARE until a test on a B200 says otherwise (tests/tests/gpu_mx_tcgen05.rs,
// MXGPT_TEST_DEVICE=cuda on a compute-capability-10.x GPU, compares it bit for bit with
// mx_gemm_int8). ptxas 13.0 assembles it for sm_100a; everything else is as read in the PTX ISA
// 9.0 and CUTLASS: the descriptor bit layouts, the core-matrix layout of the operand tiles, the
// scale-factor layout in tensor memory, the nibble order of packed E2M1, and the numerics (the
// tensor core's internal summation, what it does with a NaN scale 0xFF) are all unverified.
//
// Kernel:
//   mx_gemm_tcgen05(bf16* C, const uint8_t* a_codes, const uint8_t* a_scales,
//                   const uint8_t* b_codes, const uint8_t* b_scales, int M, int N, int K,
//                   float alpha, int accumulate)
//   block 128 (4 warps = one warpgroup), grid (ceil(M / 128), ceil(N / 128)); K % 32 == 0; code
//   arrays 16-byte aligned; C [M, N] row-major, not overlapping any input. (The parameter list is
//   mx_gemm_int8's; the launcher is gpt/src/cuda/kernels/mx_tcgen05.rs.)
//
// Work split, kept simple rather than fast (no pipelining, no TMA): one CTA per 128 x 128 tile
// of C, K in steps of 64 (one MMA each). Per step every thread stages row `tid` of A and of B:
//   - its two 16-byte MX blocks of codes, copied as they are (K-major packed E2M1 is what
//     kind::mxf4 reads), into a 4 KiB tile per operand in the canonical K-major no-swizzle
//     layout: 8 rows x 16 bytes form a 128-byte core matrix; within an 8-row group the two
//     16-byte K chunks are MXT_LBO apart, 8-row groups are MXT_SBO apart:
//       byte(row, kbyte) = (row / 8) * SBO + (kbyte / 16) * LBO + (row % 8) * 16 + kbyte % 16
//     (element k of the step is nibble k % 2 of kbyte = k / 2);
//   - its two scale bytes, into a 512-byte scale tile per operand as the 32-lane broadcast copy
//     wants them: row r's word (bytes = blocks 0, 1, then 2 pad bytes) at byte
//       (r % 32) * 16 + (r / 32) * 4,
//     so that tcgen05.cp.32x128b.warpx4 puts row r's scales in column (SF base + r / 32), bytes
//     0 and 1, of lane r % 32 of every 32-lane quarter: the scale-factor layout CUTLASS uses for
//     M = 128 (cute tmem_sf_frg; the ISA's figure of it is not in the text we could read).
// Rows past M / N and the missing second block of a K % 64 == 32 tail get zero codes and the
// scale byte 127 (2^0: never NaN, so 0 * scale = 0). Then fence.proxy.async, a barrier, and
// thread 0 copies the two scale tiles into tensor memory, issues the MMA (D = A*B on the first
// step, D += A*B after) and commits to an mbarrier that every thread waits on before the tiles
// are overwritten. Tensor memory: 256 columns (D in 0..127, scale_A at 128..131, scale_B at
// 132..135), allocated and freed by warp 0. Epilogue: warp w reads lanes 32w..32w+31 (rows) of D,
// 8 columns per tcgen05.ld, and writes C = bf16(alpha * acc) or bf16(C + alpha * acc) as the
// integer path does (__fmul_rn, __fadd_rn).
//
// The descriptors are literals below, encoded by the Rust functions of mx_tcgen05.rs
// (instr_desc_mxf4, SmemDesc): gpu_mx_tcgen05.rs reads this file and checks each #define
// against them, and checks the layout formulas above against the ISA's canonical layout.
//
// Exactness against mx_gemm_int8: products of E2M1 values times power-of-two scales are exact;
// the integer path rounds to f32 after every 32-K block, the tensor core after every 64-K
// instruction (and its internal summation is not documented). The two agree bit for bit
// whenever no partial sum needs rounding, e.g. when each output's block-scale products span few
// binades, as in the test's operands; that is what the hardware test checks. A NaN scale (0xFF)
// makes the integer path's whole output row NaN; what the tensor core does with it is unknown
// (the test has such a block).
//
// Cost: 2 M N K FLOPs. Each CTA reads 128 (K/2 + K/32) bytes of A and as many of B (136 K bytes
// per tile, 241 FLOP per byte at the tile level) and writes 2 x 128 x 128 bytes of C (reads them
// too with accumulate). B200 datasheet rates: dense FP4 tensor cores 9 PFLOP/s, HBM3e 8 TB/s,
// 148 SMs; 512 TMEM columns per SM, so two of these CTAs (256 columns each) hold TMEM at once.
// Roofline: the ridge is 9e15 / 8e12 = 1125 FLOP/byte, so with every operand byte from DRAM the
// 128 x 128 tile caps it at 8 TB/s x 241 = 1.9 PFLOP/s (L2 reuse of A and B raises that). This
// kernel will not get near either bound: a 64-K step loads its tiles, then waits for its MMA
// (~35 ns of one SM's tensor-core time against ~1 us of global-load latency), nothing overlaps
// inside a CTA, so expect ~2 TFLOP/s per CTA, ~0.6 PFLOP/s with two CTAs on each of 148 SMs:
// well under a tenth of the FP4 peak (estimated, not measured). It is the correctness reference
// for a pipelined (TMA, multi-stage, warp-specialized) version.
#include "ptx_ops.cuh"

#define MXT_BM 128
#define MXT_BN 128
#define MXT_BK 64        // K per MMA (kind::mxf4, dense): two MX blocks
#define MXT_THREADS 128  // one thread per tile row; 4 warps = the warpgroup that reads TMEM

// The operand tile's core-matrix strides (bytes) and its size.
#define MXT_LBO 128  // leading-dimension byte offset: the next 16-byte K chunk of a row group
#define MXT_SBO 256  // stride-dimension byte offset: the next 8-row group
#define MXT_TILE_BYTES (MXT_BM / 8 * MXT_SBO)

// Instruction descriptor (kind::mxf4): E2M1 x E2M1, UE8M0 scales, M = 128, N = 128, K-major,
// scale-factor byte ids 0 (bytes 0 and 1 of each scale word). = instr_desc_mxf4(128, 128, 0, 0).
#define MXT_IDESC 0x08A00480u
// Shared-memory descriptors without their start address: version 1 (bit 46), no swizzle, base
// offset 0; the operand tiles with LBO = 128 and SBO = 256, the scale tiles with SBO = 128 (one
// core matrix per 8 rows; LBO unused by a 128-bit-wide copy, 0).
#define MXT_AB_DESC 0x0000401000080000ull
#define MXT_SF_DESC 0x0000400800000000ull

// Tensor memory: columns allocated, and where D and the scale factors live.
#define MXT_TMEM_COLS 256
#define MXT_D_COL 0
#define MXT_SFA_COL 128
#define MXT_SFB_COL 132

// Scale byte of a row past the edge or a block past K: 127 = 2^0 (codes there are zero).
#define MXT_PAD_SCALE 127u

// Byte of (row, kbyte) in an operand tile (see the header).
__device__ __forceinline__ int mxt_operand_offset(int row, int kbyte) {
    return (row / 8) * MXT_SBO + (kbyte / 16) * MXT_LBO + (row % 8) * 16 + kbyte % 16;
}

// Word of row r in a scale tile: byte (r % 32) * 16 + (r / 32) * 4.
__device__ __forceinline__ int mxt_sf_word(int row) { return (row % 32) * 4 + row / 32; }

// A descriptor template with the start address of `smem` filled in: bits 0..13 hold
// (address & 0x3FFFF) >> 4.
__device__ __forceinline__ uint64_t mxt_desc(uint64_t base, const void* smem) {
    const uint32_t addr = (uint32_t)__cvta_generic_to_shared(smem);
    return base | (uint64_t)((addr & 0x3FFFFu) >> 4);
}

extern "C" __global__ void __launch_bounds__(MXT_THREADS)
mx_gemm_tcgen05(bf16* C, const uint8_t* a_codes, const uint8_t* a_scales, const uint8_t* b_codes,
                const uint8_t* b_scales, int M, int N, int K, float alpha, int accumulate) {
    __shared__ __align__(128) uint8_t tile[2][MXT_TILE_BYTES];  // [A/B]: codes of one K step
    __shared__ __align__(16) uint32_t sf[2][MXT_BM];            // [A/B]: scale words (cp layout)
    __shared__ __align__(8) uint64_t mma_done;                   // mbarrier: the MMA of a step
    __shared__ uint32_t tmem_slot;                               // tcgen05.alloc writes here

    const int m0 = blockIdx.x * MXT_BM, n0 = blockIdx.y * MXT_BN;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int kb = K / 32;  // MX blocks per row
    const int steps = (K + MXT_BK - 1) / MXT_BK;
    const size_t row_bytes = (size_t)K / 2;

    if (warp == 0) {
        tcgen05_alloc(&tmem_slot, MXT_TMEM_COLS);
        tcgen05_relinquish_alloc_permit();
    }
    if (tid == 0) {
        mbarrier_init(&mma_done, 1);
        fence_mbarrier_init();
    }
    tcgen05_fence_before_thread_sync();
    __syncthreads();  // the TMEM address and the initialized mbarrier are visible
    tcgen05_fence_after_thread_sync();
    const uint32_t tmem = tmem_slot;

    const uint64_t a_desc = mxt_desc(MXT_AB_DESC, tile[0]), b_desc = mxt_desc(MXT_AB_DESC, tile[1]);
    const uint64_t sfa_desc = mxt_desc(MXT_SF_DESC, sf[0]), sfb_desc = mxt_desc(MXT_SF_DESC, sf[1]);

    for (int s = 0; s < steps; s++) {
        // Stage row `tid` of A and of B: two 16-byte MX blocks of codes and their two scales.
#pragma unroll
        for (int op = 0; op < 2; op++) {
            const int row = (op == 0 ? m0 : n0) + tid, rows = op == 0 ? M : N;
            const uint8_t* codes = op == 0 ? a_codes : b_codes;
            const uint8_t* scales = op == 0 ? a_scales : b_scales;
            uint32_t word = MXT_PAD_SCALE * 0x01010101u;
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int blk = 2 * s + h;
                uint4 v = make_uint4(0u, 0u, 0u, 0u);
                if (row < rows && blk < kb) {
                    v = *reinterpret_cast<const uint4*>(codes + (size_t)row * row_bytes +
                                                        (size_t)blk * 16);
                    const uint32_t e = scales[(size_t)row * kb + blk];
                    word = (word & ~(0xFFu << (8 * h))) | (e << (8 * h));
                }
                *reinterpret_cast<uint4*>(&tile[op][mxt_operand_offset(tid, 16 * h)]) = v;
            }
            sf[op][mxt_sf_word(tid)] = word;
        }
        fence_proxy_async_shared();  // this thread's tile writes, visible to the tensor core
        __syncthreads();             // ... and every thread's

        if (tid == 0) {
            tcgen05_fence_after_thread_sync();
            tcgen05_cp_32x128b_warpx4(tmem + MXT_SFA_COL, sfa_desc);
            tcgen05_cp_32x128b_warpx4(tmem + MXT_SFB_COL, sfb_desc);
            tcgen05_mma_mxf4(tmem + MXT_D_COL, a_desc, b_desc, MXT_IDESC, tmem + MXT_SFA_COL,
                             tmem + MXT_SFB_COL, s > 0);
            tcgen05_commit(&mma_done);  // arrives when the copies and the MMA have completed
        }
        // Step s completes phase s of the barrier; nobody overwrites the tiles before it has.
        while (!mbarrier_try_wait_parity(&mma_done, (uint32_t)s & 1u)) {
        }
    }
    tcgen05_fence_after_thread_sync();  // D is complete: order the tcgen05.ld after the wait

    // Epilogue: lane l of warp w holds row 32w + l of the tile, 8 columns per load.
    const int row = m0 + 32 * warp + lane;
    const uint32_t taddr = tmem + ((uint32_t)(32 * warp) << 16) + MXT_D_COL;
#pragma unroll 1
    for (int c = 0; c < MXT_BN / 8; c++) {
        uint32_t r[8];
        tcgen05_ld_32x32b_x8(r, taddr + 8 * c);  // warp-wide: every lane, every row
        tcgen05_wait_ld(r);
        if (row >= M) continue;
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const int col = n0 + 8 * c + j;
            if (col >= N) continue;
            float v = __fmul_rn(__uint_as_float(r[j]), alpha);
            bf16* out = C + (size_t)row * N + col;
            if (accumulate) v = __fadd_rn(to_f32(*out), v);
            *out = to_bf16(v);
        }
    }

    tcgen05_fence_before_thread_sync();
    __syncthreads();  // every warp's tcgen05.ld has completed
    if (warp == 0) {
        tcgen05_fence_after_thread_sync();
        tcgen05_dealloc(tmem, MXT_TMEM_COLS);
    }
}
