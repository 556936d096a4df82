// targets: sm_90a sm_80
//
// The NVFP4 GEMM (docs/numerics.md sections 10 and 11) on the integer path, exact:
//
//   C[m, n] (+)= (sum over blocks j in order of (sA[m, j] sB[n, j]) dot_j) / (encA encB)
//   dot_j = sum_{k in block j} qA[m, k] qB[n, k]          (16 elements per block)
//
// A [M, K] and B [N, K] are quantized K-major NVFP4 operands (nvfp4_quantize.cu): packed E2M1
// codes (element 2i in the low nibble of byte i), one E4M3 scale byte per 16 elements, and the
// tensor scale s_enc in enc[1] of each operand's two-float record (enc[0] is its amax).
//
// Why it is exact. Codes times two are the integers 0, +-1, +-2, +-3, +-4, +-6, +-8, +-12, so one
// mma.sync.m16n8k16.s32.s8.s8 is exactly 4 dot_j (|4 dot_j| <= 16 * 144 = 2304). After each
// block the int32 is promoted: acc = acc + (float)(4 dot_j) * (sA * (sB / 4)). The scale product
// of two E4M3 values has at most 8 significant bits and lies in [2^-20, 448^2 / 4]: exact in f32
// (as is sB / 4); times an integer of at most 12 bits it is exact again. So each term added
// equals the reference's s_j * dot_j exactly, the terms are added in block order j = 0, 1, ...
// with the same f32 rounding, and the division by the f32 product encA * encB is the
// reference's: C is BIT-IDENTICAL to gpt::mx::nvfp4::nvfp4_gemm_reference before the output's
// bf16 rounding, C = bf16(v) or bf16(C + v). (Why not dequantize to bf16 and use the BF16 GEMM,
// as the MXFP4 bf16 path does: q * s_b is exact in bf16 (at most 6 significant bits), but the
// division by the tensor scales is not, and folding it into alpha needs the scales on the host;
// with it applied once at the end, that path would agree only to FP32 summation order. This one
// is exact and keeps everything on the device.) A non-finite block's scale byte 0x7F decodes to
// NaN and makes its output row (or column) NaN, as on the CPU.
//
// Kernels (same parameters):
//   nvfp4_gemm_mma(bf16* C, const uint8_t* a_codes, const uint8_t* a_scales, const float* a_enc,
//                  const uint8_t* b_codes, const uint8_t* b_scales, const float* b_enc,
//                  int M, int N, int K, int accumulate)
//       block 256 (8 warps), grid (ceil(M / 128), ceil(N / 128)); K % 32 == 0, code arrays
//       16-byte aligned.
//   nvfp4_gemm_plain(same)
//       the reference loop as written, one thread per output: block 256, grid (M, ceil(N / 256));
//       any K % 16 == 0 (the launcher's choice when K % 32 != 0, and the tests' cross-check).
//
// Work split of nvfp4_gemm_mma (mx_gemm.cu's): a block computes a 128 x 128 tile of C, each warp
// 64 x 32 (warps 2 x 4), 4 x 4 mma tiles of 16 x 8. K advances 64 codes (four NVFP4 blocks) per
// stage: the packed codes of the next stage are copied with cp.async while this one is unpacked
// in shared memory to int8 (2q), with the decoded scales beside it; then per pair of blocks each
// warp loads its A fragments (ldmatrix.x4: rows 0-7 / 8-15 of both blocks) and B fragments
// (ldmatrix.x4: two 8-column strips of both blocks): an int8 K-major tile read as 16-bit pairs
// gives exactly the m16n8k16 .s8 fragments (lane (g, t) receives bytes 4t .. 4t + 3 of row g),
// runs 16 mma per block into fresh int32 partials and promotes them.
//
// Cost: 2 M N K int8 tensor-core operations plus, per 16 K, one promotion (a multiply and an
// add, and the scale product) per output on the CUDA cores: 3 f32 operations against 32
// tensor-core operations, so the promotions bound it (on an H100, ~60 TFLOP/s f32 against
// ~2 POP/s int8: ~2.5x below the int8 peak, about the BF16 mma.sync GEMM's speed). Bytes: each
// operand 0.56 B per element, read once per tile row / column. The reference on the GPU, and
// the path NVFP4 runs on Hopper; Blackwell's block-scaled MMA (nvfp4_gemm_tcgen05.cu) is the
// fast route there, once it has run on hardware.
#include "fp8.cuh"
#include "mx.cuh"
#include "ptx_ops.cuh"

#define NVG_BM 128
#define NVG_BN 128
#define NVG_BK 64                  // codes per stage: four NVFP4 blocks
#define NVG_PACKED (NVG_BK / 2)    // packed bytes per row per stage
#define NVG_LD (NVG_BK + 16)       // int8 row stride: 80 B, 16-byte aligned, conflict-free ldmatrix
#define NVG_THREADS 256

extern "C" __global__ void __launch_bounds__(NVG_THREADS)
nvfp4_gemm_mma(bf16* C, const uint8_t* a_codes, const uint8_t* a_scales, const float* a_enc,
               const uint8_t* b_codes, const uint8_t* b_scales, const float* b_enc, int M, int N,
               int K, int accumulate) {
    __shared__ __align__(16) uint8_t packed[2][2][NVG_BM][NVG_PACKED];  // [stage][A/B][row][byte]
    __shared__ __align__(16) int8_t q[2][NVG_BM][NVG_LD];               // [A/B][row][k]: 2 x code
    __shared__ float scale[2][NVG_BM][4];  // [A/B][row][block of the stage]; B's carries the 1/4

    const int m0 = blockIdx.x * NVG_BM, n0 = blockIdx.y * NVG_BN;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int wm = (warp >> 2) * 64, wn = (warp & 3) * 32;
    const int kb = K / 16;  // NVFP4 blocks per row
    const int stages = (K + NVG_BK - 1) / NVG_BK;
    const size_t row_bytes = (size_t)K / 2;

    // Thread t copies 16 packed bytes (two NVFP4 blocks) of row t / 2 of A and of B per stage.
    auto load_stage = [&](int stage, int s) {
        const int r = tid / 2, half = tid % 2;
        const int pair = 2 * s + half;  // index of the 32-code chunk along K
#pragma unroll
        for (int op = 0; op < 2; op++) {
            const int row = (op == 0 ? m0 : n0) + r, rows = op == 0 ? M : N;
            const uint8_t* base = op == 0 ? a_codes : b_codes;
            const bool inside = row < rows && 2 * pair < kb;
            const uint8_t* src = inside ? base + row * row_bytes + (size_t)pair * 16 : base;
            cp_async_16(&packed[stage][op][r][16 * half], src, inside ? 16 : 0);
        }
    };

    float acc[4][4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[i][j][e] = 0.0f;

    load_stage(0, 0);
    cp_async_commit();
    for (int s = 0; s < stages; s++) {
        const int cur = s & 1;
        if (s + 1 < stages) load_stage(cur ^ 1, s + 1);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();  // stage s's codes have landed for every thread

        // Unpack: thread t turns row t / 2's 16 packed bytes of A and of B into 32 int8 each
        // (element 2i in the low nibble), and decodes that row's two scales of them.
        {
            const int r = tid / 2, half = tid % 2;
#pragma unroll
            for (int op = 0; op < 2; op++) {
                const uint4 raw = *reinterpret_cast<const uint4*>(&packed[cur][op][r][16 * half]);
                const uint8_t* b = reinterpret_cast<const uint8_t*>(&raw);
                uint32_t words[8];
#pragma unroll
                for (int w = 0; w < 8; w++) {
                    uint32_t v = 0;
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const uint32_t byte = b[2 * w + e / 2];
                        const uint32_t code = (e % 2) ? byte >> 4 : byte & 0xF;
                        v |= ((uint32_t)e2m1_times_two(code) & 0xFFu) << (8 * e);
                    }
                    words[w] = v;
                }
                uint4* dst = reinterpret_cast<uint4*>(&q[op][r][32 * half]);
                dst[0] = make_uint4(words[0], words[1], words[2], words[3]);
                dst[1] = make_uint4(words[4], words[5], words[6], words[7]);
                const int row = (op == 0 ? m0 : n0) + r, rows = op == 0 ? M : N;
                const uint8_t* sc = op == 0 ? a_scales : b_scales;
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    const int blk = 4 * s + 2 * half + h;
                    // Rows and blocks past the edge have zero codes; scale 0 keeps them 0.
                    const float v =
                        (row < rows && blk < kb) ? e4m3_to_f32(sc[(size_t)row * kb + blk]) : 0.0f;
                    scale[op][r][2 * half + h] = op == 0 ? v : __fmul_rn(v, 0.25f);
                }
            }
        }
        __syncthreads();  // the int8 tile and scales are complete

        const int blocks_here = min(4, kb - 4 * s);
        const int mat = lane >> 3, r8 = lane & 7;
        const int g = lane >> 2, t = lane & 3;
        for (int p = 0; 2 * p < blocks_here; p++) {
            // a[i]: {rows 0-7, rows 8-15} of block 2p, then of block 2p + 1.
            // b[jj]: strip 2jj of blocks 2p, 2p + 1, then strip 2jj + 1 of both.
            uint32_t a[4][4], b[2][4];
#pragma unroll
            for (int i = 0; i < 4; i++)
                ldmatrix_x4(a[i], &q[0][wm + 16 * i + r8 + 8 * (mat & 1)][32 * p + 16 * (mat >> 1)]);
#pragma unroll
            for (int jj = 0; jj < 2; jj++)
                ldmatrix_x4(b[jj], &q[1][wn + 16 * jj + r8 + 8 * (mat >> 1)][32 * p + 16 * (mat & 1)]);
            for (int h = 0; h < 2 && 2 * p + h < blocks_here; h++) {
                const int jb = 2 * p + h;
#pragma unroll
                for (int i = 0; i < 4; i++) {
#pragma unroll
                    for (int j = 0; j < 4; j++) {
                        int32_t dot[4] = {0, 0, 0, 0};
                        mma_s8_16816(dot, a[i][2 * h], a[i][2 * h + 1], b[j >> 1][2 * (j & 1) + h]);
                        // Promote: this thread's elements are rows g, g + 8, columns 2t, 2t + 1.
#pragma unroll
                        for (int e = 0; e < 4; e++) {
                            const int row = wm + 16 * i + g + 8 * (e >> 1);
                            const int col = wn + 8 * j + 2 * t + (e & 1);
                            const float sc = __fmul_rn(scale[0][row][jb], scale[1][col][jb]);
                            acc[i][j][e] = __fadd_rn(acc[i][j][e], __fmul_rn((float)dot[e], sc));
                        }
                    }
                }
            }
        }
        __syncthreads();  // the tile, the scales and stage cur are overwritten next
    }

    const float enc = __fmul_rn(a_enc[1], b_enc[1]);
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int row = m0 + wm + 16 * i + g + 8 * (e >> 1);
                const int col = n0 + wn + 8 * j + 2 * t + (e & 1);
                if (row >= M || col >= N) continue;
                float v = __fdiv_rn(acc[i][j][e], enc);
                bf16* c = C + (size_t)row * N + col;
                if (accumulate) v = __fadd_rn(to_f32(*c), v);
                *c = to_bf16(v);
            }
}

// The reference as written (nvfp4.rs nvfp4_gemm_reference): thread (m, n) adds the blocks in
// order, each block's dot in f32 (exact: multiples of 1/4 below 577) times the f32 product of
// the two scales, then one division by encA * encB.
extern "C" __global__ void __launch_bounds__(256)
nvfp4_gemm_plain(bf16* C, const uint8_t* a_codes, const uint8_t* a_scales, const float* a_enc,
                 const uint8_t* b_codes, const uint8_t* b_scales, const float* b_enc, int M,
                 int N, int K, int accumulate) {
    const int n = blockIdx.y * 256 + threadIdx.x, m = blockIdx.x;
    if (n >= N || m >= M) return;
    const int kb = K / 16;
    const uint8_t* ar = a_codes + (size_t)m * (K / 2);
    const uint8_t* br = b_codes + (size_t)n * (K / 2);
    float acc = 0.0f;
    for (int j = 0; j < kb; j++) {
        float dot = 0.0f;
        for (int kk = 16 * j; kk < 16 * j + 16; kk++) {
            const uint32_t ca = (ar[kk / 2] >> (4 * (kk % 2))) & 0xF;
            const uint32_t cb = (br[kk / 2] >> (4 * (kk % 2))) & 0xF;
            const float va = (ca & 8) ? -e2m1_magnitude(ca & 7) : e2m1_magnitude(ca & 7);
            const float vb = (cb & 8) ? -e2m1_magnitude(cb & 7) : e2m1_magnitude(cb & 7);
            dot = __fadd_rn(dot, __fmul_rn(va, vb));
        }
        const float s = __fmul_rn(e4m3_to_f32(a_scales[(size_t)m * kb + j]),
                                  e4m3_to_f32(b_scales[(size_t)n * kb + j]));
        acc = __fadd_rn(acc, __fmul_rn(s, dot));
    }
    float v = __fdiv_rn(acc, __fmul_rn(a_enc[1], b_enc[1]));
    bf16* c = C + (size_t)m * N + n;
    if (accumulate) v = __fadd_rn(to_f32(*c), v);
    *c = to_bf16(v);
}
