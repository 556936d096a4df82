// targets: sm_90a sm_80
//
// BF16 tensor-core GEMM (mma.sync) for the three matmuls of a linear layer, and the bias gradient.
//
// One GEMM, C[M,N] = sum_k A[m,k] B[k,n], FP32 accumulation, one rounding to bf16 at the end.
// The three forms of a linear layer (rows = tokens, ic = input channels, oc = output channels;
// every matrix row-major bf16) differ only in which dimension of each operand is contiguous:
//
//   form              C                 A[m,k]                  B[k,n]                 M     N   K
//   forward           out[rows,oc]      inp[m*ic + k]   (K-maj)  w[n*ic + k]   (K-maj)  rows  oc  ic
//   backward_input    dinp[rows,ic]     dout[m*oc + k]  (K-maj)  w[k*ic + n]   (N-maj)  rows  ic  oc
//   backward_weight   dw[oc,ic] (+=)    dout[k*oc + m]  (M-maj)  inp[k*ic + n] (N-maj)  oc    ic  rows
//
//   kmajor (MXFP4):   C[M,N] = alpha A[M,K] . B[N,K]^T, or C += that; both operands K-major
//                     (the dequantized MXFP4 operands of mx_quantize.cu; alpha = 16/9 for SR)
//   forward:          out = inp . w^T + bias            (overwrite; bias optional)
//                     gelu_out = gelu(bf16(out))        (optional; out keeps the pre-activation,
//                                                        gelu is taken of the ROUNDED value, the
//                                                        one the backward pass will read)
//   backward_input:   dinp = dout . w                   (overwrite)
//   backward_weight:  dw = bf16(dw + dout^T . inp)      (accumulate: old value added in f32)
//   bias_backward:    dbias = bf16(dbias + sum over rows of dout)   (accumulate, deterministic)
//   gelu(x) = 0.5 x (1 + tanhf(sqrt(2/pi) (x + 0.044715 x^3)))  (GPT-2's tanh form, as gelu.cu)
//
// Work split (GEMM). One block of 256 threads (8 warps) computes a 128 x 128 tile of C:
// blockIdx.x = tile row (M / 128), blockIdx.y = tile column (N / 128). It walks K in steps of
// 32: each step copies the 128x32 slice of A and the 32x128 slice of B into shared memory, then
// every warp multiplies its own 64 x 32 sub-tile (warps arranged 2 x 4 over the 128 x 128 tile):
// per 16-wide k step 4 ldmatrix.x4 give the A fragments of four 16-row strips, 2 ldmatrix.x4 give
// the B fragments of four 8-column strips, and 16 mma.sync.m16n8k16 (bf16 x bf16 -> f32) update
// the 4 x 4 x 4 = 64 f32 accumulators each thread holds. Two shared-memory stages: while the
// warps compute on stage s, the copies for the next k step fill stage s^1 (cp.async, 16 B per
// instruction, on the vector path). Shared memory per block: 2 stages x (A tile + B tile),
// at most 2 x 2 x 10240 B = 40 KiB, static (no opt-in needed).
//
// Shared-memory layouts. An operand whose K is contiguous in global memory (K-major) is stored
// [128 rows][32 + 8 pad] (80 B rows); one whose M or N is contiguous (MN-major) is stored
// [32 k rows][128 + 8 pad] (272 B rows). Both copy 16-byte chunks straight from global memory,
// and in both the 8 row addresses one ldmatrix 8x8 matrix reads fall in 8 different 16-byte bank
// groups (80 and 272 B strides are odd multiples of 16 B modulo 128 B), so ldmatrix is
// conflict-free. K-major operands use ldmatrix, MN-major ones ldmatrix.trans, which transposes
// the 8x8 matrix on the way into registers; either way the registers hold exactly the mma
// fragment layout (A: row-major 16x16, B: "col" 16x8), so one kernel template serves all forms.
//
// Edges: any M, N, K >= 1. Out-of-range elements of a tile are zero-filled (cp.async with
// source size 0, or an explicit zero on the scalar path): zeros along K add nothing, and rows /
// columns beyond M / N are never stored. Two instantiations per form:
//   *_vec     16-byte cp.async path. Requires ic % 8 == 0, oc % 8 == 0 and every pointer 16-byte
//             aligned (the launcher checks and picks): then a 16-byte chunk along a contiguous
//             dimension is either wholly inside or wholly outside the matrix. Epilogue stores
//             bf16 pairs.
//   *_scalar  element-wise guarded loads and stores, any shape and alignment (2-byte).
// Determinism: each output element is one thread's fixed sequence of mma's over k; no atomics.
// Accumulation order inside an mma instruction is the hardware's, fixed for a given GPU.
//
// Parameters (device pointers; ints are the shapes above, each >= 1):
//   matmul_forward_{vec,scalar}(bf16* out, bf16* gelu_out, const bf16* inp, const bf16* w,
//                               const bf16* bias, int rows, int ic, int oc)
//       bias and gelu_out may be NULL.
//   matmul_backward_input_{vec,scalar}(bf16* dinp, const bf16* dout, const bf16* w,
//                                      int rows, int ic, int oc)
//   matmul_backward_weight_{vec,scalar}(bf16* dw, const bf16* dout, const bf16* inp,
//                                       int rows, int ic, int oc)
//       all: block 256, grid (ceil(M/128), ceil(N/128)), no dynamic shared memory.
//       Outputs must not alias any input.
//   matmul_kmajor_{vec,scalar}(bf16* C, const bf16* A, const bf16* B, int M, int N, int K,
//                              float alpha, int accumulate)
//       the forward form's tile loop with C = bf16(alpha acc (+ C)); vec needs K % 8 == 0,
//       N % 8 == 0 and 16-byte aligned pointers, like the other forms.
//   bias_backward_partials(float* partials, const bf16* dout, int rows, int oc)
//       block (32, 8), grid (ceil(oc/32), ceil(rows/256)); partials has ceil(rows/256) * oc
//       floats: partials[chunk*oc + c] = sum of dout[r, c] over the 256-row chunk, thread y
//       taking rows y, y+8, ... in order, then the 8 partial sums added in y order.
//   bias_backward_finish(bf16* dbias, const float* partials, int num_chunks, int oc)
//       block 256, grid ceil(oc/256): dbias[c] = bf16(dbias[c] + sum of chunks in chunk order).
//       The result depends only on the data (the chunking is fixed), not on the GPU.
//
// Cost at GPT-2 124M (M = B*T = 8192 tokens, C = 768), FLOPs = 2 M N K, bytes = each operand
// read once + C written once (+ read once for dw, + gelu_out for fc), AI = FLOPs / bytes.
// H100 roofline: ~990 TFLOP/s dense bf16 tensor, ~3.0 TB/s -> balance point ~330 FLOP/B.
//
//   layer (ic -> oc)        GFLOP   fwd MB  AI   dgrad MB  AI   wgrad MB  AI   t@990TF  t@3TB/s
//   qkv      768 -> 2304     29.0    53.9  538     53.9  538     57.4  505    29 us    18-19 us
//   attproj  768 -> 768       9.7    26.3  367     26.3  367     27.5  351    10 us     9 us
//   fc       768 -> 3072     38.7   118.0  328     67.6  572     72.4  534    39 us    23-39 us
//   fcproj  3072 -> 768      38.7    67.6  572     67.6  572     72.4  534    39 us    23-24 us
//   lm_head  768 -> 50304   633.0   914.0  693    914.0  693    991.3  639   639 us   305-330 us
//
// Every shape is compute-bound at the ideal (AI above ~330 FLOP/B; fc forward with its gelu
// output sits right at the balance point). A step is 3 x 2.02 TFLOP (12 layers + lm_head) =
// 6.1 TFLOP, 6.1 ms at 990 TFLOP/s. This kernel will not reach that: mma.sync (the sm_80
// instruction) runs at well under half of Hopper's wgmma peak, the pipeline is only two stages
// deep and the epilogue stores 4-byte pairs. Inside the kernel each k step moves 16 KiB through
// shared memory for 1 MFLOP (64 FLOP/B of L2 traffic per block). Correct first; a wgmma/TMA
// GEMM is a later issue.
//
// NOT YET RUN ON A GPU. The tile / fragment index math was checked only off-GPU, by replaying
// it in a host script that models ldmatrix(.trans) and mma.m16n8k16 fragments as the PTX ISA
// specifies them (all three forms, both paths, ragged shapes: exact on integer data).
#include "ptx_ops.cuh"

#define GEMM_BM 128  // tile rows (M)
#define GEMM_BN 128  // tile columns (N); the shared-memory layouts below assume BM == BN
#define GEMM_BK 32   // k per pipeline stage
#define GEMM_PAD 8   // bf16 of padding per shared-memory row (16 B: keeps ldmatrix conflict-free)
#define GEMM_THREADS 256

#define BIAS_CHUNK_ROWS 256

#define GELU_SCALE 0.7978845608028654f  // sqrt(2/pi)

static_assert(GEMM_BM == GEMM_BN, "one tile shape serves both operands");

// Shared-memory tile of one operand for one k step (see the header).
//   K-major:  [BM rows (m or n)][BK + PAD]   element (mn, k) at mn * LD + k
//   MN-major: [BK rows (k)][BM + PAD]        element (mn, k) at k * LD + mn
template <bool KMAJOR>
struct Tile {
    static constexpr int LD = KMAJOR ? GEMM_BK + GEMM_PAD : GEMM_BM + GEMM_PAD;
    static constexpr int ELEMS = KMAJOR ? GEMM_BM * LD : GEMM_BK * LD;
};

// Copies the k-slice [k0, k0 + BK) of rows [mn0, mn0 + BM) of one operand into shared tile s,
// zero outside [0, MN) x [0, K). Global layout: K-major element (mn, k) at g[mn * K + k],
// MN-major at g[k * MN + mn] (the leading dimension is always K resp. MN in the three forms).
template <bool KMAJOR, bool VEC>
__device__ __forceinline__ void load_tile(bf16* s, const bf16* g, int MN, int K, int mn0, int k0) {
    constexpr int LD = Tile<KMAJOR>::LD;
    if constexpr (VEC) {
        // BM x BK = 4096 elements = 512 chunks of 8 contiguous bf16 (16 B), 2 per thread.
        // K % 8 == 0 (K-major) or MN % 8 == 0 (MN-major) and a 16-byte aligned base make every
        // chunk aligned and wholly inside or wholly outside the matrix.
#pragma unroll
        for (int i = 0; i < (GEMM_BM * GEMM_BK / 8) / GEMM_THREADS; i++) {
            int chunk = threadIdx.x + i * GEMM_THREADS;
            int mn, k;  // tile coordinates of the chunk's first element
            if (KMAJOR) {
                mn = chunk / (GEMM_BK / 8);
                k = (chunk % (GEMM_BK / 8)) * 8;
            } else {
                k = chunk / (GEMM_BM / 8);
                mn = (chunk % (GEMM_BM / 8)) * 8;
            }
            int gmn = mn0 + mn, gk = k0 + k;
            bool inside = gmn < MN && gk < K;
            const bf16* src = g;  // any valid address when nothing is read
            if (inside) src = KMAJOR ? g + (size_t)gmn * K + gk : g + (size_t)gk * MN + gmn;
            bf16* dst = KMAJOR ? s + mn * LD + k : s + k * LD + mn;
            cp_async_16(dst, src, inside ? 16 : 0);
        }
    } else {
        // Element by element, 16 per thread; consecutive threads walk the contiguous dimension.
#pragma unroll 4
        for (int i = 0; i < (GEMM_BM * GEMM_BK) / GEMM_THREADS; i++) {
            int e = threadIdx.x + i * GEMM_THREADS;
            int mn, k;
            if (KMAJOR) {
                mn = e / GEMM_BK;
                k = e % GEMM_BK;
            } else {
                k = e / GEMM_BM;
                mn = e % GEMM_BM;
            }
            int gmn = mn0 + mn, gk = k0 + k;
            bf16 v = __ushort_as_bfloat16((unsigned short)0);
            if (gmn < MN && gk < K) v = KMAJOR ? g[(size_t)gmn * K + gk] : g[(size_t)gk * MN + gmn];
            if (KMAJOR) s[mn * LD + k] = v;
            else s[k * LD + mn] = v;
        }
    }
}

// A fragment (rows mb..mb+15, k kb..kb+15) from tile s: the four 8x8 matrices are
// (m 0-7, k 0-7), (m 8-15, k 0-7), (m 0-7, k 8-15), (m 8-15, k 8-15) -> a[0..3].
template <bool KMAJOR>
__device__ __forceinline__ void load_frag_a(uint32_t a[4], const bf16* s, int mb, int kb, int lane) {
    constexpr int LD = Tile<KMAJOR>::LD;
    int mat = lane >> 3, r = lane & 7;
    if (KMAJOR) {  // rows of the 8x8 matrices are m
        ldmatrix_x4(a, s + (mb + r + 8 * (mat & 1)) * LD + kb + 8 * (mat >> 1));
    } else {  // rows are k: transpose on load
        ldmatrix_x4_trans(a, s + (kb + r + 8 * (mat >> 1)) * LD + mb + 8 * (mat & 1));
    }
}

// B fragments of two 8-column strips (n nb..nb+7 -> b[0], b[1]; nb+8..nb+15 -> b[2], b[3]),
// k kb..kb+15: matrices (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15).
template <bool KMAJOR>
__device__ __forceinline__ void load_frag_b(uint32_t b[4], const bf16* s, int nb, int kb, int lane) {
    constexpr int LD = Tile<KMAJOR>::LD;
    int mat = lane >> 3, r = lane & 7;
    if (KMAJOR) {  // rows of the 8x8 matrices are n: lane i gets B[k = 2t..][n = g] directly
        ldmatrix_x4(b, s + (nb + r + 8 * (mat >> 1)) * LD + kb + 8 * (mat & 1));
    } else {  // rows are k: transpose on load
        ldmatrix_x4_trans(b, s + (kb + r + 8 * (mat & 1)) * LD + nb + 8 * (mat >> 1));
    }
}

__device__ __forceinline__ float gelu_f32(float x) {
    float th = tanhf(GELU_SCALE * (x + 0.044715f * x * x * x));
    return 0.5f * x * (1.0f + th);
}

// The whole GEMM for one 128 x 128 tile of C = A . B (see the header). C is [M, N] row-major.
// Epilogue per element: v = alpha acc (+ bias[n]) (+ old C); C = bf16(v); gelu_out =
// bf16(gelu(C)). alpha = 1 (exact) except for the MX path's 16/9.
template <bool A_KMAJOR, bool B_KMAJOR, bool VEC>
__device__ __forceinline__ void gemm_tile(bf16* C, bf16* gelu_out, const bf16* A, const bf16* B,
                                          const bf16* bias, bool accumulate, float alpha, int M,
                                          int N, int K) {
    __shared__ __align__(16) bf16 sA[2][Tile<A_KMAJOR>::ELEMS];
    __shared__ __align__(16) bf16 sB[2][Tile<B_KMAJOR>::ELEMS];

    const int m0 = blockIdx.x * GEMM_BM, n0 = blockIdx.y * GEMM_BN;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int wm = (warp >> 2) * 64;  // warp's sub-tile: rows wm..wm+63, columns wn..wn+31
    const int wn = (warp & 3) * 32;

    float acc[4][4][4];  // [16-row strip][8-column strip][mma accumulator register]
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int r = 0; r < 4; r++) acc[i][j][r] = 0.0f;

    const int num_k = (K + GEMM_BK - 1) / GEMM_BK;
    load_tile<A_KMAJOR, VEC>(sA[0], A, M, K, m0, 0);
    load_tile<B_KMAJOR, VEC>(sB[0], B, N, K, n0, 0);
    cp_async_commit();
    for (int kt = 0; kt < num_k; kt++) {
        const int cur = kt & 1;
        // Prefetch step kt+1 into the other stage (free: the barrier at the end of step kt-1).
        if (kt + 1 < num_k) {
            load_tile<A_KMAJOR, VEC>(sA[cur ^ 1], A, M, K, m0, (kt + 1) * GEMM_BK);
            load_tile<B_KMAJOR, VEC>(sB[cur ^ 1], B, N, K, n0, (kt + 1) * GEMM_BK);
        }
        cp_async_commit();   // (possibly empty) group for step kt+1
        cp_async_wait<1>();  // this thread's copies for step kt have landed
        __syncthreads();     // ... and everyone else's (also orders the scalar path's stores)
#pragma unroll
        for (int kb = 0; kb < GEMM_BK; kb += 16) {
            uint32_t a[4][4], b[2][4];
#pragma unroll
            for (int i = 0; i < 4; i++) load_frag_a<A_KMAJOR>(a[i], sA[cur], wm + 16 * i, kb, lane);
#pragma unroll
            for (int j = 0; j < 2; j++) load_frag_b<B_KMAJOR>(b[j], sB[cur], wn + 16 * j, kb, lane);
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++)
                    mma_bf16_16816(acc[i][j], a[i], b[j >> 1][2 * (j & 1)],
                                   b[j >> 1][2 * (j & 1) + 1]);
        }
        __syncthreads();  // stage cur is overwritten by the prefetch of step kt+2
    }

    // Epilogue: thread (g, t) holds C rows g and g+8 of each strip, columns 2t and 2t+1.
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int i = 0; i < 4; i++) {
#pragma unroll
        for (int j = 0; j < 4; j++) {
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int row = m0 + wm + 16 * i + g + 8 * h;
                const int col = n0 + wn + 8 * j + 2 * t;
                if (row >= M) continue;
                float v0 = acc[i][j][2 * h] * alpha, v1 = acc[i][j][2 * h + 1] * alpha;
                const size_t idx = (size_t)row * N + col;
                if (VEC) {
                    // N % 8 == 0 and col even: col < N implies col + 1 < N; 4-byte aligned pairs.
                    if (col >= N) continue;
                    if (bias) {
                        float2 bb = __bfloat1622float2(*(const __nv_bfloat162*)(bias + col));
                        v0 += bb.x;
                        v1 += bb.y;
                    }
                    if (accumulate) {
                        float2 old = __bfloat1622float2(*(const __nv_bfloat162*)(C + idx));
                        v0 += old.x;
                        v1 += old.y;
                    }
                    __nv_bfloat162 pre = __floats2bfloat162_rn(v0, v1);
                    *(__nv_bfloat162*)(C + idx) = pre;
                    if (gelu_out) {
                        float2 p = __bfloat1622float2(pre);
                        *(__nv_bfloat162*)(gelu_out + idx) =
                            __floats2bfloat162_rn(gelu_f32(p.x), gelu_f32(p.y));
                    }
                } else {
#pragma unroll
                    for (int e = 0; e < 2; e++) {
                        if (col + e >= N) continue;
                        float v = e ? v1 : v0;
                        if (bias) v += to_f32(bias[col + e]);
                        if (accumulate) v += to_f32(C[idx + e]);
                        bf16 pre = to_bf16(v);
                        C[idx + e] = pre;
                        if (gelu_out) gelu_out[idx + e] = to_bf16(gelu_f32(to_f32(pre)));
                    }
                }
            }
        }
    }
}

// ---- the three forms (M, N, K and operand roles as in the header table) ----

#define GEMM_FORMS(SUFFIX, VEC)                                                                  \
    extern "C" __global__ void __launch_bounds__(GEMM_THREADS)                                   \
        matmul_forward_##SUFFIX(bf16* out, bf16* gelu_out, const bf16* inp, const bf16* w,       \
                                const bf16* bias, int rows, int ic, int oc) {                    \
        gemm_tile<true, true, VEC>(out, gelu_out, inp, w, bias, false, 1.0f, rows, oc, ic);      \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(GEMM_THREADS)                                   \
        matmul_backward_input_##SUFFIX(bf16* dinp, const bf16* dout, const bf16* w, int rows,    \
                                       int ic, int oc) {                                         \
        gemm_tile<true, false, VEC>(dinp, nullptr, dout, w, nullptr, false, 1.0f, rows, ic, oc); \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(GEMM_THREADS)                                   \
        matmul_backward_weight_##SUFFIX(bf16* dw, const bf16* dout, const bf16* inp, int rows,   \
                                        int ic, int oc) {                                        \
        gemm_tile<false, false, VEC>(dw, nullptr, dout, inp, nullptr, true, 1.0f, oc, ic, rows); \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(GEMM_THREADS)                                   \
        matmul_kmajor_##SUFFIX(bf16* C, const bf16* A, const bf16* B, int M, int N, int K,      \
                               float alpha, int accumulate) {                                    \
        gemm_tile<true, true, VEC>(C, nullptr, A, B, nullptr, accumulate != 0, alpha, M, N, K);  \
    }

GEMM_FORMS(vec, true)
GEMM_FORMS(scalar, false)

// ---- bias gradient: two deterministic passes ----

extern "C" __global__ void __launch_bounds__(256)
bias_backward_partials(float* partials, const bf16* dout, int rows, int oc) {
    __shared__ float sums[8][33];
    const int c = blockIdx.x * 32 + threadIdx.x;
    const int r0 = blockIdx.y * BIAS_CHUNK_ROWS;
    const int r1 = min(rows, r0 + BIAS_CHUNK_ROWS);
    float acc = 0.0f;
    if (c < oc) {
        for (int r = r0 + threadIdx.y; r < r1; r += 8) acc += to_f32(dout[(size_t)r * oc + c]);
    }
    sums[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < oc) {
        float s = 0.0f;
#pragma unroll
        for (int y = 0; y < 8; y++) s += sums[y][threadIdx.x];
        partials[(size_t)blockIdx.y * oc + c] = s;
    }
}

extern "C" __global__ void __launch_bounds__(256)
bias_backward_finish(bf16* dbias, const float* partials, int num_chunks, int oc) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= oc) return;
    float s = 0.0f;
    for (int i = 0; i < num_chunks; i++) s += partials[(size_t)i * oc + c];
    dbias[c] = to_bf16(to_f32(dbias[c]) + s);
}
