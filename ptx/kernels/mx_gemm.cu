// targets: sm_90a sm_80
//
// The MX GEMM on the integer path (MXFP4 operands as int8 on the tensor cores), exact:
//
//   C[m, n] (+)= alpha * sum_j 2^(eA[m, j] + eB[n, j] - 2) * sum_{k in block j} (2 qA[m, k]) (2 qB[n, k])
//
// A [M, K] and B [N, K] are quantized K-major operands (mx_quantize.cu): packed E2M1 codes,
// two per byte, and one E8M0 scale per 32 elements. Codes times two are the integers 0, +-1,
// +-2, +-3, +-4, +-6, +-8, +-12: exactly int8, so one mma.sync.m16n8k32.s32.s8.s8 is exactly
// one MX block's integer dot (|dot| <= 32 * 144 = 4608, far inside int32). After each block the
// int32 partial is promoted to f32 and added with its power-of-two scale:
//   acc = acc + (float)dot * (scale(eA) * scale(eB - 2))       (f32, two roundings that are
//                                                               exact: scale products are
//                                                               powers of two)
// in block order j = 0, 1, ..., so every output is BIT-IDENTICAL to the CPU's integer reference
// (gpt::mx::gemm::mx_gemm_int_reference), then C = bf16(alpha * acc) or
// bf16(C + alpha * acc) (alpha = 16/9 for the SR modes, 1 for RTN). The "emulated integer path"
// of the design: the cross-check of the faster paths, and readable.
//
// Kernel:
//   mx_gemm_int8(bf16* C, const uint8_t* a_codes, const uint8_t* a_scales,
//                const uint8_t* b_codes, const uint8_t* b_scales, int M, int N, int K,
//                float alpha, int accumulate)
//   block 256 (8 warps), grid (ceil(M / 128), ceil(N / 128)); K % 32 == 0; code arrays 16-byte
//   aligned; C [M, N] row-major, not overlapping any input.
//
// Work split (the tile shape of gemm.cu): a block computes a 128 x 128 tile of C; each warp a
// 64 x 32 sub-tile (warps 2 x 4), 4 x 4 mma tiles of 16 x 8. K advances 64 codes (two MX blocks)
// per stage: the packed codes of the next stage are copied with cp.async (16 bytes = one MX
// block of one row) while this stage is unpacked in shared memory to int8 (2q), with the scales
// beside it; then per MX block each warp loads its A and B fragments with ldmatrix (an int8 K-major
// tile read as 16-bit pairs gives exactly the m16n8k32 .s8 fragments: lane (g, t) receives bytes
// 4t .. 4t + 3 of row g), runs 16 mma into fresh int32 partials and promotes them.
//
// Cost: 2 M N K "FLOPs" of int8 tensor-core work plus, per 32 K, 64 promotions (a multiply and an
// add) per thread on the CUDA cores: the promotions (2 f32 ops per output per block, against 64
// tensor-core ops) and the unpack pass bound it well below the int8 peak. Bytes: each operand
// 0.53 B per element read once per tile row/column. The bf16 path (dequantized operands through
// gemm.cu) is the fast route on Hopper; this one is the exact reference on the GPU.
#include "mx.cuh"
#include "ptx_ops.cuh"

#define MXG_BM 128
#define MXG_BN 128
#define MXG_BK 64                   // codes per stage: two MX blocks
#define MXG_PACKED (MXG_BK / 2)     // packed bytes per row per stage
#define MXG_LD (MXG_BK + 16)        // int8 row stride: 80 B, 16-byte aligned, conflict-free ldmatrix
#define MXG_THREADS 256

extern "C" __global__ void __launch_bounds__(MXG_THREADS)
mx_gemm_int8(bf16* C, const uint8_t* a_codes, const uint8_t* a_scales, const uint8_t* b_codes,
             const uint8_t* b_scales, int M, int N, int K, float alpha, int accumulate) {
    __shared__ __align__(16) uint8_t packed[2][2][MXG_BM][MXG_PACKED];  // [stage][A/B][row][byte]
    __shared__ __align__(16) int8_t q[2][MXG_BM][MXG_LD];               // [A/B][row][k]: 2 x code
    __shared__ float scale[2][MXG_BM][2];  // [A/B][row][block]; B's carries the -2 of the formula

    const int m0 = blockIdx.x * MXG_BM, n0 = blockIdx.y * MXG_BN;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int wm = (warp >> 2) * 64, wn = (warp & 3) * 32;
    const int kb = K / 32;              // MX blocks per row
    const int stages = (K + MXG_BK - 1) / MXG_BK;
    const size_t row_bytes = (size_t)K / 2;

    // Thread t copies 16 packed bytes (one MX block) of row t / 2 of A and of B per stage.
    auto load_stage = [&](int stage, int s) {
        const int r = tid / 2, half = tid % 2;
        const int blk = 2 * s + half;  // MX block index along K
#pragma unroll
        for (int op = 0; op < 2; op++) {
            const int row = (op == 0 ? m0 : n0) + r, rows = op == 0 ? M : N;
            const uint8_t* base = op == 0 ? a_codes : b_codes;
            const bool inside = row < rows && blk < kb;
            const uint8_t* src = inside ? base + row * row_bytes + (size_t)blk * 16 : base;
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
        // (element 2i in the low nibble), and fetches that row's scale of this MX block.
        {
            const int r = tid / 2, half = tid % 2, blk = 2 * s + half;
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
                // Rows past the edge have zero codes; scale byte 0 keeps their products 0.
                const uint32_t byte = (row < rows && blk < kb) ? sc[(size_t)row * kb + blk] : 0u;
                scale[op][r][half] = scale_f32(byte, op == 0 ? 0 : -2);
            }
        }
        __syncthreads();  // the int8 tile and scales are complete

        const int blocks_here = min(2, kb - 2 * s);
        for (int jb = 0; jb < blocks_here; jb++) {
            uint32_t a[4][4], b[2][4];
            const int mat = lane >> 3, r8 = lane & 7;
#pragma unroll
            for (int i = 0; i < 4; i++)
                ldmatrix_x4(a[i], &q[0][wm + 16 * i + r8 + 8 * (mat & 1)][32 * jb + 16 * (mat >> 1)]);
#pragma unroll
            for (int j = 0; j < 2; j++)
                ldmatrix_x4(b[j], &q[1][wn + 16 * j + r8 + 8 * (mat >> 1)][32 * jb + 16 * (mat & 1)]);
            const int g = lane >> 2, t = lane & 3;
#pragma unroll
            for (int i = 0; i < 4; i++) {
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    int32_t dot[4] = {0, 0, 0, 0};
                    mma_s8_16832(dot, a[i], b[j >> 1][2 * (j & 1)], b[j >> 1][2 * (j & 1) + 1]);
                    // Promote: this thread's elements are rows g, g + 8 and columns 2t, 2t + 1.
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const int row = wm + 16 * i + g + 8 * (e >> 1), col = wn + 8 * j + 2 * t + (e & 1);
                        const float sc = __fmul_rn(scale[0][row][jb], scale[1][col][jb]);
                        acc[i][j][e] = __fadd_rn(acc[i][j][e], __fmul_rn((float)dot[e], sc));
                    }
                }
            }
        }
        __syncthreads();  // the tile, the scales and stage cur are overwritten next
    }

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
                float v = __fmul_rn(acc[i][j][e], alpha);
                bf16* c = C + (size_t)row * N + col;
                if (accumulate) v = __fadd_rn(to_f32(*c), v);
                *c = to_bf16(v);
            }
}
