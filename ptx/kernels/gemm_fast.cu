// targets: sm_90a sm_80
//
// The fast BF16 tensor-core GEMM (mma.sync) for the three matmuls of a linear layer: the same
// forms and the same results as gemm.cu (the readable reference, which keeps the operand-form
// table this file uses: forward K-major x K-major, backward_input K-major x N-major,
// backward_weight M-major x N-major), with a deeper pipeline, bigger warp tiles, a swizzled
// shared-memory layout, a grouped block order, a deterministic split-K and fused epilogues.
//
// What it computes. C[M,N] = sum_k A[m,k] B[k,n] in FP32, then per element
//   v = alpha acc (+ bias[n]) (+ old C)           (alpha = 1 except the MX path's 16/9)
//   pre = bf16(v)
//   C = pre, or, with gelu_pre (dgrad with the GELU backward folded in),
//   C = bf16(f32(pre) * gelu'(gelu_pre[m,n]))      (gelu.cu's gelu_backward of the bf16 dgrad)
//   gelu_out = bf16(gelu(f32(pre)))                (optional, forward only)
// and, for backward_weight with bias_partials, the bias gradient's per-256-row column sums of
// dout (the `partials` of gemm.cu's bias_backward_partials, same order: see "Fused bias").
//
// Work split. One block of 256 threads (8 warps) computes a 128 x 256 tile of C (BM x BN);
// warps are arranged 2 (M) x 4 (N), each owning a 64 x 64 sub-tile: 4 x 8 mma.m16n8k16
// accumulators, 128 f32 registers per thread. K is walked in steps of BK = 32 through a
// 4-stage cp.async ring: at step kt the block waits for stage kt (cp.async.wait_group 2), passes
// ONE barrier (which also proves every warp finished step kt-1, so its stage is free), issues
// the copies for step kt+3 into that freed stage, then computes on stage kt. Per 16-wide k
// sub-step a warp loads its A fragments with 4 ldmatrix.x4 and its B fragments with 4
// ldmatrix.x4 (.trans for an operand whose M or N is contiguous) and issues 32 mma.
// Shared memory: 4 stages x (128 + 256) x 32 bf16 = 96 KiB, dynamic (opt-in above 48 KiB); 1
// block per SM (the registers of 256 threads at ~200 each allow no second one).
//
// Block order. blockIdx.x is a linear tile index, mapped to (tile row, tile column) in groups
// of 8 tile rows: consecutive blocks walk 8 tile rows for each tile column before moving on, so
// the blocks resident at one time share 8 A row-panels and a few B column-panels in L2.
// blockIdx.y is the split-K index.
//
// Shared-memory layouts (swizzled, no padding; 16-byte chunks of 8 bf16 are permuted by XOR so
// that the 8 row addresses of every ldmatrix 8x8 matrix, and the 16-byte cp.async writes of a
// warp, fall in 8 different 16-byte bank groups):
//   K-major operand   [EXT rows (m or n)][32 k], 64-byte rows: element (mn, k) in chunk
//                     (k/8) ^ ((mn/2) & 3) of row mn. Rows 2r and 2r+1 share a 128-byte line;
//                     the XOR spreads rows 0..7 of a matrix over its 8 chunk positions.
//   MN-major operand  [32 k rows][EXT mn], 256- or 512-byte rows: element (mn, k) in chunk
//                     (mn/8) ^ (k & 7) of row k (only the low 3 bits of the chunk change).
// ldmatrix is given the swizzled row address per lane, so the registers hold exactly the mma
// fragments, as in gemm.cu.
//
// Split-K (deterministic). With partials != NULL, block (tile, s) covers k in
// [s * k_per_split, min(K, (s+1) * k_per_split)) -- k_per_split a multiple of 256 -- and writes
// its raw f32 tile to partials[s][M][N]; gemm_fast_reduce then sums the splits in order
// s = 0, 1, ..., S-1 (acc = p0; acc += p1; ...) and runs the same epilogue code. No atomics:
// the bits depend on S and the data only. S = 1 gives exactly the unsplit bits (acc = p0). A
// different S reassociates the f32 sum: the results differ by a few f32 ulps of sum |a b|
// before the one rounding to bf16 (bounded, not bit-identical). The launcher picks S from the
// shape only (gemm.rs: a cost model of a nominal H100), never from the GPU it runs on.
//
// Fused bias gradient (backward_weight only; A = dout, M-major: A[m, k] = dout[k * oc + m]).
// The blocks of tile column 0 also sum A's columns over k: thread x < 128 (warps 0-3) owns
// column m0 + x and 8 running sums y = 0..7; within each 32-row stage it adds rows y, y+8,
// y+16, y+24 to sum y, and at the end of every 256-row chunk (and of the split) writes
// ((((0 + s0) + s1) ...) + s7) to bias_partials[chunk * M + m] and restarts. That is
// gemm.cu's bias_backward_partials to the bit (there thread y sums rows y, y+8, ... of the
// chunk in order, then the 8 sums in y order; the zero rows past `rows` add +0, an identity
// for sums that start at +0), so gemm.cu's bias_backward_finish then gives the unfused dbias
// bit for bit, and the separate pass over dout [rows, oc] disappears. Split boundaries are
// multiples of 256 rows, so every chunk lies in one split.
//
// Edges. M any; N and K as the vec path of gemm.cu: the contiguous dimension of every operand
// a multiple of 8, every pointer 16-byte aligned, and N % 8 == 0 (the epilogue moves 8
// columns at a time). Out-of-range chunks are zero-filled (cp.async with source size 0);
// rows / column groups outside C are never stored.
//
// Same bits as gemm.cu without split-K: both walk k in 32-steps with zero-filled tails and
// chain one mma per 16 k into the same f32 accumulators in increasing k order, and the
// epilogue is the same expression sequence. tests/tests/gpu_gemm.rs checks this bit for bit on
// the harness (the harness compiles without FMA contraction; nvcc may contract the epilogue's
// a*b+c into an FMA, which it is expected to do identically in both files: a GPU run must
// confirm).
//
// Parameters (one list for the three forms; pointers may be NULL where marked):
//   gemm_fast_{kk,kn,nn}(bf16* C, bf16* gelu_out?, const bf16* A, const bf16* B,
//                        const bf16* bias?, const bf16* gelu_pre?, float* partials?,
//                        float* bias_partials?, int M, int N, int K, int k_per_split,
//                        float alpha, int accumulate)
//     kk: A, B K-major (forward, kmajor); kn: A K-major, B N-major (backward_input);
//     nn: A M-major, B N-major (backward_weight; the only one that accepts bias_partials).
//     block 256, grid (ceil(M/128) * ceil(N/256), S), 98304 B dynamic shared memory.
//     With partials (S >= 1 splits): only partials (and bias_partials) are written.
//   gemm_fast_reduce(bf16* C, bf16* gelu_out?, const float* partials, const bf16* bias?,
//                    const bf16* gelu_pre?, int M, int N, int splits, float alpha,
//                    int accumulate)
//     block 256, grid ceil(M * N / 8 / 256): one thread per 8 consecutive columns.
//   Outputs must not alias inputs (the launcher checks).
//
// Cost at GPT-2 124M (rows = B*T = 8192, C = 768; FLOPs = 2 M N K; bytes = operands read once,
// C written once, + C read for wgrad, + gelu_out for fc forward; tiles of 128 x 256; S = the
// split the launcher picks). Ceilings (H100 SXM): 990 TFLOP/s dense BF16 is wgmma's; mma.sync
// (this kernel) practically reaches ~60-70% of it, ~600-690 TFLOP/s. HBM 3.35 TB/s (H200:
// 4.8 TB/s). Time columns: FLOPs at 600 TFLOP/s, bytes at 3.35 TB/s.
//
//   GEMM                   M      N      K      GFLOP   MB     tiles  S   t@600TF  t@3.35TB/s
//   fwd qkv               8192   2304    768    29.0    53.9    576   1    48 us    16 us
//   fwd attproj           8192    768    768     9.7    26.3    192   1    16 us     8 us
//   fwd fc (+gelu_out)    8192   3072    768    38.7   118.0    768   1    64 us    35 us
//   fwd fcproj            8192    768   3072    38.7    67.6    192   1    64 us    20 us
//   fwd lm_head           8192  50304    768   633.0   914.0  12608   1  1055 us   273 us
//   dgrad qkv/attproj/fc  8192    768  2304/768/3072  (as their forward)   192   1
//   dgrad fcproj          8192   3072    768    38.7    67.6    768   1    64 us    20 us
//   dgrad lm_head         8192    768  50304   633.0   914.0    192   2  1055 us   273 us
//   wgrad qkv             2304    768   8192    29.0    57.4     54   2    48 us    17 us
//   wgrad attproj          768    768   8192     9.7    27.5     18   7    16 us     8 us
//   wgrad fc / fcproj     3072    768   8192    38.7    72.4     72   3    64 us    22 us
//   wgrad lm_head        50304    768   8192   633.0   991.3   1179   1  1055 us   296 us
//
// Every shape is compute-bound (arithmetic intensity 330-700 FLOP/B against a balance point of
// ~180-200 FLOP/B at mma.sync rates). Inside the kernel each 32-step moves 24 KiB from L2 into
// shared memory for 2.1 MFLOP (85 FLOP/B of L2 traffic, vs 64 for a 128 x 128 tile: at
// ~600 TFLOP/s the SMs pull ~7 TB/s from L2, which is why the tile is 128 x 256), and each warp
// reads 4 KiB of shared memory per 32 mma (32 FLOP/B, within the 128 B/clk/SM of ldmatrix).
// What limits it: (1) mma.sync itself (no wgmma / TMA: the Hopper path is a later issue);
// (2) wave quantization at 1 block per SM: 192 tiles on 132 SMs is 1.45 waves (73% of the SMs
// busy on average) for every N = 768 forward and dgrad; split-K does not pay there (its f32
// partials cost 8 S M N bytes) except for the LM-head dgrad (K = 50304); (3) the split-K
// reduce pass for wgrad (S M N f32 written and read, 16.5 MB for attproj with S = 7, mostly
// L2-resident); (4) the epilogue goes through shared memory (two 64-row halves of f32) so
// that C is stored in whole 512-byte rows, 16 B per thread.
//
// NOT RUN ON A GPU. Harness-tested (tests/tests/gpu_gemm.rs, gpu_schedules.rs) and assembled
// by ptxas for every target above; no timing has been taken.
#include "ptx_ops.cuh"

#define FG_BM 128            // tile rows (M)
#define FG_BN 256            // tile columns (N)
#define FG_BK 32             // k per pipeline stage
#define FG_STAGES 4          // cp.async ring depth
#define FG_THREADS 256       // 8 warps: 2 (M) x 4 (N) of 64 x 64
#define FG_GROUP_M 8         // tile rows per group of the block order
#define FG_CHUNK_ROWS 256    // bias-gradient chunk (gemm.cu's BIAS_CHUNK_ROWS) = split-K unit
#define FG_GELU_SCALE 0.7978845608028654f  // sqrt(2/pi)

constexpr int FG_A_ELEMS = FG_BM * FG_BK;               // 4096 bf16, 8 KiB
constexpr int FG_B_ELEMS = FG_BN * FG_BK;               // 8192 bf16, 16 KiB
constexpr int FG_STAGE_ELEMS = FG_A_ELEMS + FG_B_ELEMS;
constexpr int FG_SMEM_BYTES = FG_STAGES * FG_STAGE_ELEMS * 2;  // 98304
static_assert(FG_SMEM_BYTES >= (FG_BM / 2) * FG_BN * 4, "a 64-row f32 half tile fits the ring");
static_assert(FG_CHUNK_ROWS == 8 * FG_BK, "the bias sums close a chunk every 8 steps");

// Offset (in bf16) of element (mn, k) in a swizzled stage tile of EXT rows/columns (header).
template <bool KMAJOR, int EXT>
__device__ __forceinline__ int fg_off(int mn, int k) {
    if (KMAJOR) return mn * FG_BK + ((((k >> 3) ^ (mn >> 1)) & 3) << 3) + (k & 7);
    const int c = mn >> 3;
    return k * EXT + (((c & ~7) | ((c ^ k) & 7)) << 3) + (mn & 7);
}

// Issues the cp.async copies of the k-slice [k0, k0 + 32) of rows / columns [mn0, mn0 + EXT)
// of one operand into stage tile s, zero outside [0, MN) x [0, kend). Global layout: K-major
// element (mn, k) at g[mn * K + k], MN-major at g[k * MN + mn].
template <bool KMAJOR, int EXT>
__device__ __forceinline__ void fg_load(bf16* s, const bf16* g, int MN, int K, int mn0, int k0,
                                        int kend) {
    constexpr int CHUNKS = EXT * FG_BK / 8;
    static_assert(CHUNKS % FG_THREADS == 0, "whole chunks per thread");
#pragma unroll
    for (int i = 0; i < CHUNKS / FG_THREADS; i++) {
        const int chunk = threadIdx.x + i * FG_THREADS;
        int mn, k;
        if (KMAJOR) {
            mn = chunk >> 2;
            k = (chunk & 3) * 8;
        } else {
            k = chunk / (EXT / 8);
            mn = (chunk % (EXT / 8)) * 8;
        }
        const int gmn = mn0 + mn, gk = k0 + k;
        const bool inside = gmn < MN && gk < kend;
        const bf16* src = g;  // any valid address when nothing is read
        if (inside) src = KMAJOR ? g + (size_t)gmn * K + gk : g + (size_t)gk * MN + gmn;
        cp_async_16(s + fg_off<KMAJOR, EXT>(mn, k), src, inside ? 16 : 0);
    }
}

// A fragment (rows mb..mb+15, k kb..kb+15): matrices (m 0-7, k 0-7), (m 8-15, k 0-7),
// (m 0-7, k 8-15), (m 8-15, k 8-15) -> a[0..3], as in gemm.cu.
template <bool KMAJOR>
__device__ __forceinline__ void fg_frag_a(uint32_t a[4], const bf16* s, int mb, int kb, int lane) {
    const int mat = lane >> 3, r = lane & 7;
    if (KMAJOR) ldmatrix_x4(a, s + fg_off<true, FG_BM>(mb + r + 8 * (mat & 1), kb + 8 * (mat >> 1)));
    else ldmatrix_x4_trans(a, s + fg_off<false, FG_BM>(mb + 8 * (mat & 1), kb + r + 8 * (mat >> 1)));
}

// B fragments of the 8-column strips nb..nb+7 (b[0], b[1]) and nb+8..nb+15 (b[2], b[3]).
template <bool KMAJOR>
__device__ __forceinline__ void fg_frag_b(uint32_t b[4], const bf16* s, int nb, int kb, int lane) {
    const int mat = lane >> 3, r = lane & 7;
    if (KMAJOR) ldmatrix_x4(b, s + fg_off<true, FG_BN>(nb + r + 8 * (mat >> 1), kb + 8 * (mat & 1)));
    else ldmatrix_x4_trans(b, s + fg_off<false, FG_BN>(nb + 8 * (mat >> 1), kb + r + 8 * (mat & 1)));
}

__device__ __forceinline__ float fg_gelu(float x) {
    float th = tanhf(FG_GELU_SCALE * (x + 0.044715f * x * x * x));
    return 0.5f * x * (1.0f + th);
}

// gelu'(x), written as gelu.cu's gelu_backward computes it.
__device__ __forceinline__ float fg_gelu_grad(float x) {
    float th = tanhf(FG_GELU_SCALE * (x + 0.044715f * x * x * x));
    float dth = (1.0f - th * th) * FG_GELU_SCALE * (1.0f + 3.0f * 0.044715f * x * x);
    return 0.5f * (1.0f + th) + 0.5f * x * dth;
}

// The epilogue of 8 consecutive columns col..col+7 of one row (element index idx = row*N+col),
// from their raw f32 sums: the same expression sequence as gemm.cu's vec epilogue.
__device__ __forceinline__ void fg_epilogue8(const float sum[8], size_t idx, int col, bf16* C,
                                             bf16* gelu_out, const bf16* bias,
                                             const bf16* gelu_pre, float alpha, int accumulate) {
    float v[8];
#pragma unroll
    for (int e = 0; e < 8; e++) v[e] = sum[e] * alpha;
    __align__(16) bf16 t[8];
    if (bias) {
        *(uint4*)t = *(const uint4*)(bias + col);
#pragma unroll
        for (int e = 0; e < 8; e++) v[e] += to_f32(t[e]);
    }
    if (accumulate) {
        *(uint4*)t = *(const uint4*)(C + idx);
#pragma unroll
        for (int e = 0; e < 8; e++) v[e] += to_f32(t[e]);
    }
    __align__(16) bf16 pre[8];
#pragma unroll
    for (int e = 0; e < 8; e++) pre[e] = to_bf16(v[e]);
    if (gelu_pre) {
        *(uint4*)t = *(const uint4*)(gelu_pre + idx);
        __align__(16) bf16 d[8];
#pragma unroll
        for (int e = 0; e < 8; e++) d[e] = to_bf16(to_f32(pre[e]) * fg_gelu_grad(to_f32(t[e])));
        *(uint4*)(C + idx) = *(const uint4*)d;
    } else {
        *(uint4*)(C + idx) = *(const uint4*)pre;
    }
    if (gelu_out) {
#pragma unroll
        for (int e = 0; e < 8; e++) t[e] = to_bf16(fg_gelu(to_f32(pre[e])));
        *(uint4*)(gelu_out + idx) = *(const uint4*)t;
    }
}

template <bool A_KMAJOR, bool B_KMAJOR>
__device__ __forceinline__ void fg_gemm(bf16* C, bf16* gelu_out, const bf16* A, const bf16* B,
                                        const bf16* bias, const bf16* gelu_pre, float* partials,
                                        float* bias_partials, int M, int N, int K, int kps,
                                        float alpha, int accumulate) {
    MXH_DYNAMIC_SMEM(bf16, smem);

    // Grouped block order (header): linear tile index -> (tm, tn).
    const int tiles_m = (M + FG_BM - 1) / FG_BM, tiles_n = (N + FG_BN - 1) / FG_BN;
    const int per_group = FG_GROUP_M * tiles_n;
    const int t = blockIdx.x;
    const int first_m = (t / per_group) * FG_GROUP_M;
    const int gsize = min(tiles_m - first_m, FG_GROUP_M);
    const int tm = first_m + (t % per_group) % gsize;
    const int tn = (t % per_group) / gsize;
    const int m0 = tm * FG_BM, n0 = tn * FG_BN;
    // This block's split of K.
    const int kbeg = blockIdx.y * kps;
    const int kend = min(K, kbeg + kps);
    const int nk = (kend - kbeg + FG_BK - 1) / FG_BK;

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int wm = (warp >> 2) * 64, wn = (warp & 3) * 64;

    float acc[4][8][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 8; j++)
#pragma unroll
            for (int r = 0; r < 4; r++) acc[i][j][r] = 0.0f;

    // Prologue: stages 0..STAGES-2 in flight, one commit group each (possibly empty).
#pragma unroll
    for (int s = 0; s < FG_STAGES - 1; s++) {
        if (s < nk) {
            bf16* st = smem + s * FG_STAGE_ELEMS;
            fg_load<A_KMAJOR, FG_BM>(st, A, M, K, m0, kbeg + s * FG_BK, kend);
            fg_load<B_KMAJOR, FG_BN>(st + FG_A_ELEMS, B, N, K, n0, kbeg + s * FG_BK, kend);
        }
        cp_async_commit();
    }

    // Fused bias gradient: warps 0-3 of the blocks of tile column 0 (warp-uniform).
    const bool bias_sums = !A_KMAJOR && bias_partials != nullptr && tn == 0 && warp < 4;
    float ysum[8];
#pragma unroll
    for (int y = 0; y < 8; y++) ysum[y] = 0.0f;

    for (int kt = 0; kt < nk; kt++) {
        cp_async_wait<FG_STAGES - 2>();  // this thread's copies for step kt have landed
        __syncthreads();  // everyone's have; and every warp is done with step kt-1's stage
        {
            const int pf = kt + FG_STAGES - 1;  // refill the stage step kt-1 used
            if (pf < nk) {
                bf16* st = smem + (pf % FG_STAGES) * FG_STAGE_ELEMS;
                fg_load<A_KMAJOR, FG_BM>(st, A, M, K, m0, kbeg + pf * FG_BK, kend);
                fg_load<B_KMAJOR, FG_BN>(st + FG_A_ELEMS, B, N, K, n0, kbeg + pf * FG_BK, kend);
            }
            cp_async_commit();  // (possibly empty) group, so the wait count stays uniform
        }
        const bf16* sA = smem + (kt % FG_STAGES) * FG_STAGE_ELEMS;
        const bf16* sB = sA + FG_A_ELEMS;
#pragma unroll
        for (int kb = 0; kb < FG_BK; kb += 16) {
            uint32_t a[4][4], b[4][4];
#pragma unroll
            for (int i = 0; i < 4; i++) fg_frag_a<A_KMAJOR>(a[i], sA, wm + 16 * i, kb, lane);
#pragma unroll
            for (int j = 0; j < 4; j++) fg_frag_b<B_KMAJOR>(b[j], sB, wn + 16 * j, kb, lane);
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 8; j++)
                    mma_bf16_16816(acc[i][j], a[i], b[j >> 1][2 * (j & 1)],
                                   b[j >> 1][2 * (j & 1) + 1]);
        }
        if (bias_sums) {
            // Column x = threadIdx.x of the stage's A tile (k rows kk = 0..31): row kk joins sum
            // kk & 7, rows in increasing order (header, "Fused bias gradient").
#pragma unroll
            for (int kk = 0; kk < FG_BK; kk++)
                ysum[kk & 7] += to_f32(sA[fg_off<false, FG_BM>(threadIdx.x, kk)]);
            if ((kt & 7) == 7 || kt == nk - 1) {
                float s = 0.0f;
#pragma unroll
                for (int y = 0; y < 8; y++) {
                    s += ysum[y];
                    ysum[y] = 0.0f;
                }
                const int col = m0 + threadIdx.x;
                const int chunk = kbeg / FG_CHUNK_ROWS + (kt >> 3);
                if (col < M) bias_partials[(size_t)chunk * M + col] = s;
            }
        }
    }

    // Epilogue through shared memory, one 64-row half of the tile at a time: the warps of that
    // half store their f32 accumulators (float2 per fragment pair, 16-byte chunks XOR-swizzled
    // by row), then every warp takes whole rows, lane q columns 8q..8q+7.
    cp_async_wait<0>();  // only empty groups remain; retire them
    __syncthreads();     // every warp is done reading the ring
    float* stage = reinterpret_cast<float*>(smem);
    const int g = lane >> 2, tq = lane & 3;
#pragma unroll
    for (int h = 0; h < 2; h++) {
        if ((warp >> 2) == h) {
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 8; j++)
#pragma unroll
                    for (int hh = 0; hh < 2; hh++) {
                        const int r = 16 * i + g + 8 * hh;  // row within the half
                        const int c = wn + 8 * j + 2 * tq;  // column within the tile
                        float* p = stage + r * FG_BN + ((((c >> 2) ^ r) & 7) | ((c >> 2) & ~7)) * 4 +
                                   (c & 3);
                        *(float2*)p = make_float2(acc[i][j][2 * hh], acc[i][j][2 * hh + 1]);
                    }
        }
        __syncthreads();
#pragma unroll 1
        for (int p = 0; p < 8; p++) {
            const int r = warp + 8 * p;
            const int row = m0 + 64 * h + r;
            const int col = n0 + 8 * lane;
            // Chunks 2q and 2q+1 of the row, the odd one first in lanes with bit 2 set, so that
            // each load of the warp touches every bank group equally often.
            const int first = 2 * lane + ((lane >> 2) & 1), second = first ^ 1;
            const float4 x = *(const float4*)(stage + r * FG_BN + (((first ^ r) & 7) | (first & ~7)) * 4);
            const float4 y = *(const float4*)(stage + r * FG_BN + (((second ^ r) & 7) | (second & ~7)) * 4);
            const float4 lo = (first & 1) ? y : x, hi = (first & 1) ? x : y;
            if (row < M && col < N) {
                const size_t idx = (size_t)row * N + col;
                if (partials) {
                    float* dst = partials + (size_t)blockIdx.y * M * N + idx;
                    *(float4*)dst = lo;
                    *(float4*)(dst + 4) = hi;
                } else {
                    const float sum[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
                    fg_epilogue8(sum, idx, col, C, gelu_out, bias, gelu_pre, alpha, accumulate);
                }
            }
        }
        if (h == 0) __syncthreads();  // the second half overwrites the staging area
    }
}

#define FG_KERNEL(NAME, A_KMAJOR, B_KMAJOR)                                                        \
    extern "C" __global__ void __launch_bounds__(FG_THREADS, 1)                                   \
        NAME(bf16* C, bf16* gelu_out, const bf16* A, const bf16* B, const bf16* bias,             \
             const bf16* gelu_pre, float* partials, float* bias_partials, int M, int N, int K,    \
             int k_per_split, float alpha, int accumulate) {                                      \
        fg_gemm<A_KMAJOR, B_KMAJOR>(C, gelu_out, A, B, bias, gelu_pre, partials, bias_partials,   \
                                    M, N, K, k_per_split, alpha, accumulate);                     \
    }

FG_KERNEL(gemm_fast_kk, true, true)    // forward, kmajor
FG_KERNEL(gemm_fast_kn, true, false)   // backward_input
FG_KERNEL(gemm_fast_nn, false, false)  // backward_weight

// Split-K reduction: sum the S partial tiles in split order, then the epilogue.
extern "C" __global__ void __launch_bounds__(256)
gemm_fast_reduce(bf16* C, bf16* gelu_out, const float* partials, const bf16* bias,
                 const bf16* gelu_pre, int M, int N, int splits, float alpha, int accumulate) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)M * (N / 8)) return;
    const size_t idx = i * 8, plane = (size_t)M * N;
    const int col = (int)(idx % (size_t)N);
    float4 lo = *(const float4*)(partials + idx), hi = *(const float4*)(partials + idx + 4);
    for (int s = 1; s < splits; s++) {
        const float4 a = *(const float4*)(partials + s * plane + idx);
        const float4 b = *(const float4*)(partials + s * plane + idx + 4);
        lo.x += a.x;
        lo.y += a.y;
        lo.z += a.z;
        lo.w += a.w;
        hi.x += b.x;
        hi.y += b.y;
        hi.z += b.z;
        hi.w += b.w;
    }
    const float sum[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
    fg_epilogue8(sum, idx, col, C, gelu_out, bias, gelu_pre, alpha, accumulate);
}
