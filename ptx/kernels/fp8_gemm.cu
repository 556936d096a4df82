// targets: sm_90a sm_89 sm_80
//
// The FP8 forward GEMM of a linear layer (docs/numerics.md section 9):
//
//   out[r, o] = bf16( acc[r, o] / (s_x s_W) + bias[o] ),   acc = sum_k xq[r, k] wq[o, k]  (FP32)
//   gelu_out  = bf16( gelu(out) )                            (optional, from the ROUNDED out)
//
// xq [rows, ic] and wq [oc, ic] are the E4M3 operands of fp8.cu (x * s_x and W * s_W rounded to
// E4M3), both K-major; s_x = sx[1] and s_W = sw[1] are read from the device (the two-float
// records fp8_amax_finish writes), so no scale ever visits the host. The epilogue is fp8.rs's
// linear_forward_f32: the f32 product of the two scales, one division, then the bias added in
// f32; gelu as gemm.cu's (GPT-2's tanh form, of the bf16-rounded pre-activation).
//
// Two kernels, one tile loop:
//   fp8_gemm_e4m3(bf16* out, bf16* gelu_out, const uint8_t* xq, const uint8_t* wq,
//                 const bf16* bias, const float* sx, const float* sw, int rows, int ic, int oc)
//       mma.sync.m16n8k32.f32.e4m3.e4m3 (compute capability 8.9+; traps on sm_80 builds, where
//       the launcher never picks it). Each instruction runs with C = 0 and its 16 x 8 result is
//       added to FP32 accumulators on the CUDA cores: the hardware's own adding of 32 products
//       is not specified to keep 24 bits (FP8 tensor cores are reported to keep fewer), so it
//       is given at most 32 products at a time.
//   fp8_gemm_bf16(bf16* out, bf16* gelu_out, const bf16* xq, const bf16* wq, const bf16* bias,
//                 const float* sx, const float* sw, int rows, int ic, int oc)
//       the plain fallback for every GPU: the E4M3 values held exactly in bf16 (fp8.cu's
//       fp8_quantize_bf16) through mma.sync.m16n8k16 bf16 with FP32 accumulation.
//   Both: block 256, grid (ceil(rows / 128), ceil(oc / 128)); ic % 16 == 0, xq and wq 16-byte
//   aligned; bias and gelu_out may be NULL; out may not overlap an input.
// Products of two E4M3 values are exact in f32 (4 x 4 significant bits), so both compute the
// exact sum up to FP32 summation order: |acc - exact| <= K 2^-24 sum_k |xq wq| (x (1 + 2^-24)
// per promotion), the bound gpu_fp8.rs checks against the CPU.
//
// Work split (gemm.cu's and mx_gemm.cu's): a block computes a 128 x 128 tile of out, each of the
// 8 warps 64 x 32 (warps 2 x 4), 4 x 4 mma tiles of 16 x 8. K advances 64 BYTES per stage (64
// E4M3 elements, or 32 bf16) through two shared-memory stages filled with cp.async (16 bytes per
// copy, zero-filled past the matrix). Both element types use the same shared layout, rows of
// 64 + 16 bytes, and the same ldmatrix.x4 addresses: a 16 x 32-byte slab read as 8 x 8 16-bit
// matrices gives exactly the A and B fragments of m16n8k32 for 8-bit elements and of m16n8k16
// for bf16 (lane (g, t) holds bytes 4t .. 4t + 3 of rows g and g + 8, then of bytes 16..31), so
// one template serves both; per stage each warp runs 2 k-steps of 16 mma.
//
// Cost: 2 rows oc ic FLOPs; bytes: xq and wq read once per tile row / column (1 B per element
// for e4m3, 2 B for the fallback) and out written once (2 B, and 2 B more for gelu_out). On an
// H100 (~1980 TFLOP/s dense FP8, ~3 TB/s) the GPT-2 124M forward linears (8192 tokens) have
// arithmetic intensity 600-1000 FLOP/B with FP8 operands, above the ~660 FLOP/B ridge for most:
// compute-bound at the ideal, 5-20 us each. This kernel uses mma.sync (the sm_89 instruction,
// well under Hopper's wgmma FP8 rate), a two-stage pipeline and CUDA-core promotions after
// every instruction: expect it near the BF16 mma.sync GEMM's speed, not FP8's peak. A wgmma
// version is later work.
#include "fp8.cuh"
#include "ptx_ops.cuh"

#define F8G_BM 128
#define F8G_BN 128
#define F8G_BK 64                 // bytes of K per stage
#define F8G_LD (F8G_BK + 16)      // shared row stride: 80 B, 16-byte aligned, conflict-free ldmatrix
#define F8G_THREADS 256
#define F8G_GELU_SCALE 0.7978845608028654f  // sqrt(2/pi)

__device__ __forceinline__ float fp8_gelu(float x) {
    float th = tanhf(F8G_GELU_SCALE * (x + 0.044715f * x * x * x));
    return 0.5f * x * (1.0f + th);
}

template <bool E4M3>
__device__ __forceinline__ void fp8_gemm_tile(bf16* out, bf16* gelu_out, const uint8_t* A,
                                              const uint8_t* B, const bf16* bias, const float* sx,
                                              const float* sw, int M, int N, int K) {
    __shared__ __align__(16) uint8_t sA[2][F8G_BM][F8G_LD];
    __shared__ __align__(16) uint8_t sB[2][F8G_BN][F8G_LD];

    const int m0 = blockIdx.x * F8G_BM, n0 = blockIdx.y * F8G_BN;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int wm = (warp >> 2) * 64, wn = (warp & 3) * 32;
    const size_t row_bytes = E4M3 ? (size_t)K : 2 * (size_t)K;
    const int stages = (int)((row_bytes + F8G_BK - 1) / F8G_BK);

    // 128 rows x 4 chunks of 16 bytes per operand: 2 copies of A and 2 of B per thread.
    auto load_stage = [&](int stage, int s) {
#pragma unroll
        for (int i = 0; i < 2; i++) {
            const int chunk = tid + i * F8G_THREADS, r = chunk / 4, c = (chunk % 4) * 16;
            const size_t kb = (size_t)s * F8G_BK + c;
#pragma unroll
            for (int op = 0; op < 2; op++) {
                const int row = (op == 0 ? m0 : n0) + r, rows = op == 0 ? M : N;
                const uint8_t* base = op == 0 ? A : B;
                const bool inside = row < rows && kb < row_bytes;
                const uint8_t* src = inside ? base + (size_t)row * row_bytes + kb : base;
                cp_async_16(op == 0 ? &sA[stage][r][c] : &sB[stage][r][c], src, inside ? 16 : 0);
            }
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
        cp_async_wait<1>();  // this thread's copies for stage s have landed
        __syncthreads();  // stage s has landed for every thread

        const int mat = lane >> 3, r8 = lane & 7;
#pragma unroll
        for (int ks = 0; ks < 2; ks++) {
            uint32_t a[4][4], b[2][4];
#pragma unroll
            for (int i = 0; i < 4; i++)
                ldmatrix_x4(a[i], &sA[cur][wm + 16 * i + r8 + 8 * (mat & 1)][32 * ks + 16 * (mat >> 1)]);
#pragma unroll
            for (int j = 0; j < 2; j++)
                ldmatrix_x4(b[j], &sB[cur][wn + 16 * j + r8 + 8 * (mat >> 1)][32 * ks + 16 * (mat & 1)]);
#pragma unroll
            for (int i = 0; i < 4; i++) {
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    const uint32_t b0 = b[j >> 1][2 * (j & 1)], b1 = b[j >> 1][2 * (j & 1) + 1];
                    if (E4M3) {
                        float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                        mma_e4m3_16832(d, a[i], b0, b1);
#pragma unroll
                        for (int e = 0; e < 4; e++) acc[i][j][e] = __fadd_rn(acc[i][j][e], d[e]);
                    } else {
                        mma_bf16_16816(acc[i][j], a[i], b0, b1);
                    }
                }
            }
        }
        __syncthreads();  // stage cur is overwritten by the prefetch of step s + 2
    }

    const float scale = __fmul_rn(sx[1], sw[1]);
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
                float v = __fdiv_rn(acc[i][j][e], scale);
                if (bias) v = __fadd_rn(v, to_f32(bias[col]));
                const size_t idx = (size_t)row * N + col;
                const bf16 pre = to_bf16(v);
                out[idx] = pre;
                if (gelu_out) gelu_out[idx] = to_bf16(fp8_gelu(to_f32(pre)));
            }
}

extern "C" __global__ void __launch_bounds__(F8G_THREADS)
fp8_gemm_e4m3(bf16* out, bf16* gelu_out, const uint8_t* xq, const uint8_t* wq, const bf16* bias,
              const float* sx, const float* sw, int rows, int ic, int oc) {
    fp8_gemm_tile<true>(out, gelu_out, xq, wq, bias, sx, sw, rows, oc, ic);
}

extern "C" __global__ void __launch_bounds__(F8G_THREADS)
fp8_gemm_bf16(bf16* out, bf16* gelu_out, const bf16* xq, const bf16* wq, const bf16* bias,
              const float* sx, const float* sw, int rows, int ic, int oc) {
    fp8_gemm_tile<false>(out, gelu_out, reinterpret_cast<const uint8_t*>(xq),
                         reinterpret_cast<const uint8_t*>(wq), bias, sx, sw, rows, oc, ic);
}
