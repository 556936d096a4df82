// targets: sm_100a
// harness: not emulated (tcgen05: tensor memory and the block-scaled NVFP4 MMA)
//
// The NVFP4 GEMM on Blackwell's block-scaled FP4 tensor cores (tcgen05.mma kind::mxf4nvf4
// .block_scale.scale_vec::4X, sm_100a):
//
//   C[m, n] = bf16( (sum_j sA[m, j] sB[n, j] sum_{k in block j} qA[m, k] qB[n, k]) / (encA encB) )
//   (or C = bf16(C + ...) with accumulate)
//
// the operands and parameters of nvfp4_gemm_mma (nvfp4_gemm.cu): A [M, K] and B [N, K] K-major
// NVFP4 (packed E2M1 codes, element 2i in the low nibble of byte i; one E4M3 scale byte per 16
// elements; the tensor scale s_enc in enc[1]). The tensor core applies the block scales itself:
// each instruction is a 128 x 128 x 64 MMA (four NVFP4 blocks of K) whose A and B come from
// shared memory and whose four UE4M3 scale factors per row come from tensor memory; the
// epilogue divides by the f32 product of the two tensor scales, as the reference does.
//
// ASSEMBLED ONLY: ptxas 13.0 accepts it for sm_100a; it has never run, not on hardware and not
// on the host harness (which does not emulate tcgen05), and nothing selects it: the backend
// refuses `--mx-gemm tcgen05` for NVFP4 and the launcher refuses any device that is not
// compute capability 10.x. It is mx_gemm_tcgen05.cu (itself unverified on hardware) with three
// changes, each as read in the PTX ISA 9.0 and not observed on a GPU:
//   - `.kind::mxf4nvf4 ... .scale_vec::4X`: one scale factor per 16 elements of K, four per row
//     per instruction, read as bytes 0..3 of the row's 32-bit scale-factor column (the 2X form
//     of kind::mxf4 reads bytes 0 and 1 of it: so the scale tile and its tcgen05.cp are
//     unchanged, with all four bytes used);
//   - the instruction descriptor's bit 23 ("scale matrix type") 0 = UE4M3 instead of 1 = UE8M0;
//     the scale-factor ids 0 (4X uses the whole word): NVT_IDESC below, checked against
//     gpt::cuda::kernels::mx_tcgen05::Mxf4InstrDesc by tests/tests/gpu_nvfp4.rs;
//   - the epilogue: C = bf16(acc / (encA * encB)) (or C + that), __fdiv_rn and __fmul_rn as the
//     exact path; scale bytes of padding (rows past M / N, the blocks of a K % 64 == 32 tail)
//     are 0x38 (E4M3 1.0: never NaN, so their zero codes contribute exactly 0).
// Exactness against nvfp4_gemm_mma: the products (E2M1 x E2M1 x E4M3 x E4M3, at most 2 x 2 x 4 x
// 4 significant bits) are exact; the exact path rounds to f32 after every 16-K block, the
// tensor core after every 64-K instruction (its internal summation is not documented), so the
// two agree bit for bit only where no partial sum needs rounding; what the tensor core makes of
// a NaN scale (0x7F) is unknown. A hardware test belongs beside gpu_mx_tcgen05.rs's once a
// B200 is available.
//
// Kernel:
//   nvfp4_gemm_tcgen05(bf16* C, const uint8_t* a_codes, const uint8_t* a_scales,
//                      const float* a_enc, const uint8_t* b_codes, const uint8_t* b_scales,
//                      const float* b_enc, int M, int N, int K, int accumulate)
//   block 128 (one warpgroup), grid (ceil(M / 128), ceil(N / 128)); K % 32 == 0; code arrays
//   16-byte aligned (gpt/src/cuda/kernels/nvfp4.rs, kernel Tcgen05).
//
// Work split: mx_gemm_tcgen05.cu's, unchanged (one CTA per 128 x 128 tile, K in steps of 64,
// every thread stages row `tid` of A and of B: two 16-byte code chunks into the canonical K-major
// no-swizzle core-matrix layout, and one scale word; thread 0 copies the scale tiles to tensor
// memory, issues the MMA and commits to an mbarrier all threads wait on; the epilogue reads D
// with tcgen05.ld, 8 columns at a time).
//
// Cost: 2 M N K FLOPs; each CTA reads 128 (K/2 + K/16) bytes of A and as many of B (144 K bytes
// per tile, ~228 FLOP per byte at the tile level) and writes 2 x 128 x 128 bytes of C. B200
// rates: dense NVFP4 ~9 PFLOP/s (the same as MXFP4), HBM3e 8 TB/s; ridge ~1125 FLOP/byte, so
// from DRAM the tile caps it at ~1.8 PFLOP/s; this unpipelined version (as its MXFP4 twin)
// should reach well under a tenth of the FP4 peak (estimated, never measured).
#include "ptx_ops.cuh"

#define NVT_BM 128
#define NVT_BN 128
#define NVT_BK 64        // K per MMA (kind::mxf4nvf4, dense): four NVFP4 blocks
#define NVT_THREADS 128  // one thread per tile row; 4 warps = the warpgroup that reads TMEM

// The operand tile's core-matrix strides (bytes) and its size (mx_gemm_tcgen05.cu's).
#define NVT_LBO 128
#define NVT_SBO 256
#define NVT_TILE_BYTES (NVT_BM / 8 * NVT_SBO)

// Instruction descriptor (kind::mxf4nvf4): E2M1 x E2M1, UE4M3 scales (bit 23 clear), M = 128,
// N = 128, K-major, scale-factor ids 0 (4X reads all four bytes of each scale word).
// = Mxf4InstrDesc { scale_ue8m0: false, ..Mxf4InstrDesc::dense(128, 128, 0, 0) }.encode().
#define NVT_IDESC 0x08200480u
// Shared-memory descriptors without their start address (mx_gemm_tcgen05.cu's MXT_AB_DESC and
// MXT_SF_DESC: operand_desc(0) and sf_desc(0)).
#define NVT_AB_DESC 0x0000401000080000ull
#define NVT_SF_DESC 0x0000400800000000ull

// Tensor memory: columns allocated, and where D and the scale factors live.
#define NVT_TMEM_COLS 256
#define NVT_D_COL 0
#define NVT_SFA_COL 128
#define NVT_SFB_COL 132

// Scale byte of padding: E4M3 1.0 (codes there are zero).
#define NVT_PAD_SCALE 0x38u

// Byte of (row, kbyte) in an operand tile: 8-row groups SBO apart, 16-byte K chunks LBO apart.
__device__ __forceinline__ int nvt_operand_offset(int row, int kbyte) {
    return (row / 8) * NVT_SBO + (kbyte / 16) * NVT_LBO + (row % 8) * 16 + kbyte % 16;
}

// Word of row r in a scale tile: byte (r % 32) * 16 + (r / 32) * 4.
__device__ __forceinline__ int nvt_sf_word(int row) { return (row % 32) * 4 + row / 32; }

// A descriptor template with the start address of `smem` filled in.
__device__ __forceinline__ uint64_t nvt_desc(uint64_t base, const void* smem) {
    const uint32_t addr = (uint32_t)__cvta_generic_to_shared(smem);
    return base | (uint64_t)((addr & 0x3FFFFu) >> 4);
}

extern "C" __global__ void __launch_bounds__(NVT_THREADS)
nvfp4_gemm_tcgen05(bf16* C, const uint8_t* a_codes, const uint8_t* a_scales, const float* a_enc,
                   const uint8_t* b_codes, const uint8_t* b_scales, const float* b_enc, int M,
                   int N, int K, int accumulate) {
    __shared__ __align__(128) uint8_t tile[2][NVT_TILE_BYTES];  // [A/B]: codes of one K step
    __shared__ __align__(16) uint32_t sf[2][NVT_BM];            // [A/B]: scale words (cp layout)
    __shared__ __align__(8) uint64_t mma_done;                   // mbarrier: the MMA of a step
    __shared__ uint32_t tmem_slot;                               // tcgen05.alloc writes here

    const int m0 = blockIdx.x * NVT_BM, n0 = blockIdx.y * NVT_BN;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int kb = K / 16;     // NVFP4 blocks per row
    const int chunks = K / 32;  // 16-byte code chunks per row
    const int steps = (K + NVT_BK - 1) / NVT_BK;
    const size_t row_bytes = (size_t)K / 2;

    if (warp == 0) {
        tcgen05_alloc(&tmem_slot, NVT_TMEM_COLS);
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

    const uint64_t a_desc = nvt_desc(NVT_AB_DESC, tile[0]), b_desc = nvt_desc(NVT_AB_DESC, tile[1]);
    const uint64_t sfa_desc = nvt_desc(NVT_SF_DESC, sf[0]), sfb_desc = nvt_desc(NVT_SF_DESC, sf[1]);

    for (int s = 0; s < steps; s++) {
        // Stage row `tid` of A and of B: two 16-byte code chunks and their four scale bytes.
#pragma unroll
        for (int op = 0; op < 2; op++) {
            const int row = (op == 0 ? m0 : n0) + tid, rows = op == 0 ? M : N;
            const uint8_t* codes = op == 0 ? a_codes : b_codes;
            const uint8_t* scales = op == 0 ? a_scales : b_scales;
            uint32_t word = NVT_PAD_SCALE * 0x01010101u;
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int chunk = 2 * s + h;
                uint4 v = make_uint4(0u, 0u, 0u, 0u);
                if (row < rows && chunk < chunks) {
                    v = *reinterpret_cast<const uint4*>(codes + (size_t)row * row_bytes +
                                                        (size_t)chunk * 16);
#pragma unroll
                    for (int b = 0; b < 2; b++) {
                        const int blk = 2 * chunk + b;  // < kb
                        const uint32_t e = scales[(size_t)row * kb + blk];
                        const int at = 2 * h + b;       // byte of the word
                        word = (word & ~(0xFFu << (8 * at))) | (e << (8 * at));
                    }
                }
                *reinterpret_cast<uint4*>(&tile[op][nvt_operand_offset(tid, 16 * h)]) = v;
            }
            sf[op][nvt_sf_word(tid)] = word;
        }
        fence_proxy_async_shared();  // this thread's tile writes, visible to the tensor core
        __syncthreads();             // ... and every thread's

        if (tid == 0) {
            tcgen05_fence_after_thread_sync();
            tcgen05_cp_32x128b_warpx4(tmem + NVT_SFA_COL, sfa_desc);
            tcgen05_cp_32x128b_warpx4(tmem + NVT_SFB_COL, sfb_desc);
            tcgen05_mma_mxf4nvf4(tmem + NVT_D_COL, a_desc, b_desc, NVT_IDESC, tmem + NVT_SFA_COL,
                                 tmem + NVT_SFB_COL, s > 0);
            tcgen05_commit(&mma_done);  // arrives when the copies and the MMA have completed
        }
        // Step s completes phase s of the barrier; nobody overwrites the tiles before it has.
        while (!mbarrier_try_wait_parity(&mma_done, (uint32_t)s & 1u)) {
        }
    }
    tcgen05_fence_after_thread_sync();  // D is complete: order the tcgen05.ld after the wait

    // Epilogue: lane l of warp w holds row 32w + l of the tile, 8 columns per load.
    const float enc = __fmul_rn(a_enc[1], b_enc[1]);
    const int row = m0 + 32 * warp + lane;
    const uint32_t taddr = tmem + ((uint32_t)(32 * warp) << 16) + NVT_D_COL;
#pragma unroll 1
    for (int c = 0; c < NVT_BN / 8; c++) {
        uint32_t r[8];
        tcgen05_ld_32x32b_x8(r, taddr + 8 * c);  // warp-wide: every lane, every row
        tcgen05_wait_ld(r);
        if (row >= M) continue;
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const int col = n0 + 8 * c + j;
            if (col >= N) continue;
            float v = __fdiv_rn(__uint_as_float(r[j]), enc);
            bf16* out = C + (size_t)row * N + col;
            if (accumulate) v = __fadd_rn(to_f32(*out), v);
            *out = to_bf16(v);
        }
    }

    tcgen05_fence_before_thread_sync();
    __syncthreads();  // every warp's tcgen05.ld has completed
    if (warp == 0) {
        tcgen05_fence_after_thread_sync();
        tcgen05_dealloc(tmem, NVT_TMEM_COLS);
    }
}
