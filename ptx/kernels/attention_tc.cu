// targets: sm_90a sm_80
//
// Causal multi-head self-attention on the BF16 tensor cores (mma.sync m16n8k16, FlashAttention-2
// style): forward, and a deterministic backward that recomputes the probabilities from the
// saved log-sum-exp. The same operation, layouts and definitions as attention.cu (which stays
// beside this file as the readable FP32 CUDA-core reference); semantics =
// gpt/src/cpu/ops.rs attention_forward / attention_backward. Head sizes 64 and 128 (template
// parameter HS); the launcher (gpt/src/cuda/kernels/attention.rs) sends the others to
// attention.cu.
//
// Layouts (bf16 storage; f32 accumulation, softmax and lse):
//   qkv  [B, T, 3C]   q | k | v; head h is channels h*HS .. (h+1)*HS of each third, C = NH * HS
//   out  [B, T, C]    head h at channels h*HS ..
//   lse  [B, NH, T]   f32: lse_i = log(sum_{j<=i} exp(s_ij)) of the SCALED scores
//                     s_ij = (q_i . k_j) / sqrt(HS), natural log (exactly attention.cu's)
//   dout [B, T, C], dqkv [B, T, 3C] (overwritten: every element is written)
//   dsum [B, NH, T]   f32 D_i = dout_i . out_i, computed by attention.cu's attention_backward_dsum
//
// What is rounded to bf16 that the f32 reference keeps in f32 (the only numerical difference
// besides summation order; tests/tests/gpu_attention.rs derives its tolerances from it):
//   forward   P (the unnormalized probabilities exp(s - m)) before P V. The row sum l and lse
//             use the f32 P, so lse is as accurate as attention.cu's.
//   backward  P before dV += P^T dO, dS before dK += dS^T Q and dQ += dS K.
// Q, K, V and dO are bf16 already, so Q K^T and dO V^T are exact products summed in f32.
//
// The work split. A block is 4 warps and owns 64 "rows" of one (b, h): queries in the forward
// and dq kernels, keys in dkdv; warp w owns rows 16w .. 16w + 15, which is the M = 16 of every
// mma it issues. The block streams the other side ("columns") in tiles of 64 through shared
// memory; rows and columns are both aligned to 64, so a query block sees key tiles 0 .. its own
// index: every tile before the diagonal is entirely visible (no mask), the diagonal tile is the
// only one masked, and tiles above it are never loaded (causal tile skipping). Inside the
// diagonal tile a warp also skips the 16-column chunks that lie entirely above its rows
// (backward kernels).
//
// Forward (attention_tc_forward_hsN), per key tile of 64, per warp (16 queries):
//   S = Q K^T          16 x 64 f32: HS/16 k-steps x 8 n-tiles of mma; Q's A fragments are held
//                      in registers for the whole kernel (loaded once by ldmatrix), K's B
//                      fragments come from shared memory by ldmatrix (non-transposed: the K tile
//                      is stored [key][channel], which is B = K^T's "col" layout).
//   online softmax     per row: thread (g, t) of the warp (g = lane / 4, t = lane % 4) holds
//                      rows g and g + 8, columns 8n + 2t, 8n + 2t + 1 of every n-tile; the tile
//                      max is that thread's max, then reduced over the 4 lanes of the quad by
//                      two __shfl_xor_sync (1, 2). m_new = max(m, tile max), alpha =
//                      exp(m - m_new), P = exp(s - m_new), l = l alpha + (this thread's sum of
//                      P), O *= alpha. l stays per thread and is reduced over the quad once,
//                      at the end (fixed butterfly order).
//   O += P V           P never leaves registers: the S accumulators of n-tiles 2kk and 2kk+1
//                      (keys 16kk .. 16kk + 15), packed to bf16 pairs, ARE the A fragment of the
//                      k-step kk of P V (rows g / g + 8, columns 2t.. / 2t+8..), see atc_pack_a.
//                      V's B fragments by ldmatrix.trans (V is stored [key][channel] and the
//                      mma wants B[k = key][n = channel]).
//   epilogue           out = O / l, lse = m + log(l) (quad-reduced l).
//   Pipeline: K and V tiles are separate cp.async groups in one buffer each; the next K tile
//   loads while this tile's softmax and P V run, the next V tile while the next Q K^T runs
//   (FlashAttention-2's order; 4 barriers per tile).
// Backward, after attention.cu's attention_backward_dsum (D_i) — every matrix product an mma:
//   attention_tc_backward_dkdv_hsN   per block of 64 keys (K's A fragments in registers, V in
//       shared memory for the whole kernel: with V in registers too, HS 128 needs 255
//       registers and spills on sm_80), loops over the query tiles that can see them (from
//       the block's own diagonal to T; tiles of QT = 64 queries at HS 64, 32 at HS 128 to stay
//       under 48 KiB), and inside a tile over chunks of 16 queries, per warp (its 16 keys x 16
//       queries, one k-step of the products below):
//         S^T  = K Q^T       (B from the Q tile, ldmatrix)
//         dP^T = V dO^T      (A from the V rows, B from the dO tile, ldmatrix)
//         P^T = exp(S^T scale - lse_i), dS^T = P^T (dP^T - D_i) scale    (f32, masked)
//         dV += P^T dO       (A = packed P^T accumulators, B from dO by ldmatrix.trans)
//         dK += dS^T Q       (A = packed dS^T accumulators, B from Q by ldmatrix.trans)
//   attention_tc_backward_dq_hsN     per block of 64 queries (Q and dO fragments in registers),
//       loops over the key tiles before them, inside a tile over chunks of 16 keys, per warp:
//         S = Q K^T, dP = dO V^T, P = exp(S scale - lse_i), dS = P (dP - D_i) scale,
//         dQ += dS K         (A = packed dS, B from the K tile by ldmatrix.trans)
//   Both: one cp.async stage (load, wait, barrier, compute, barrier); a second stage (which
//   fits in 48 KiB at HS 64 only) is the next step for speed.
// Determinism: every output element (out, lse, dq, dk, dv) is owned by one thread of one warp
// that adds its terms in a fixed order (tiles in order, chunks in order, mma by mma); no
// atomics, no inter-block reduction: bitwise identical run to run. (Inside an mma the hardware
// sums in its own fixed order.)
//
// Shared memory (static, rows padded by 8 bf16 = 16 B: row strides 144 B (HS 64) and 272 B
// (HS 128) are odd multiples of 16 B, so the 8 row addresses of every ldmatrix 8x8 matrix hit
// 8 different 16-byte bank groups: conflict-free, as in gemm.cu). Loaded by cp.async 16 B
// chunks, rows >= T zero-filled:
//   forward  K tile + V tile, 64 x (HS+8) each: 18 KiB (HS 64), 34 KiB (HS 128); the block's Q
//            rows are staged in the V half first, moved to registers, then overwritten.
//   dkdv     the block's V (64 rows) + Q tile + dO tile (QT rows each; the block's K is staged
//            there first) + lse and D of the tile: 27.5 KiB (HS 64), 34.3 KiB (HS 128).
//   dq       K tile + V tile (Q and dO staged there first): as the forward.
// Registers (ptxas, no spills; HS 64 / HS 128): sm_90a forward 128 / 211, dkdv 159 / 242,
// dq 128 / 225; sm_80 forward 128 / 226, dkdv 154 / 239, dq 145 / 226. With 64K registers per
// SM that is 4 blocks of 4 warps per SM at 128, 3 at ~160, 2 (8 warps) above 200.
//
// Kernels (grid (ceil(T/64), NH, B), block 128, no dynamic shared memory), N = 64 or 128:
//   attention_tc_forward_hsN(bf16* out, float* lse, const bf16* qkv, int T, int NH)
//       blockIdx.x = 0 takes the LAST 64 queries (the most key tiles) so long blocks start first.
//   attention_tc_backward_dkdv_hsN(bf16* dqkv, const bf16* dout, const bf16* qkv,
//                                  const float* lse, const float* dsum, int T, int NH)
//       writes the dk and dv thirds; blockIdx.x = 0 is keys 0..63 (the longest loop), first.
//   attention_tc_backward_dq_hsN(same parameters)   writes the dq third; last block first.
//   Boundary: any T >= 1. Rows and columns >= T are zero-filled in shared memory and masked
//   (probability 0); nothing is written for rows >= T.
//   Alignment: qkv and dout 16-byte aligned (cp.async 16 B; C = NH*HS is a multiple of 64, so
//   every row chunk is then aligned); out and dqkv 4-byte aligned (bf16 pair stores). Checked
//   by the launcher. No output may overlap an input (as attention.cu).
//
// Cost at GPT-2 124M (B = 8, T = 1024, NH = 12, HS = 64, C = 768), H100 SXM (~990 TFLOP/s dense
// BF16 tensor, ~3.0 TB/s HBM: balance ~330 FLOP/B):
//   forward  useful FLOPs 4 B NH T^2 HS / 2 = 12.9 GFLOP; executed (whole diagonal tiles,
//            136 of 64x64 per (b, h) instead of 128) 13.7 GFLOP -> 13.9 us at peak.
//            HBM: qkv 37.7 MB read, out 12.6 MB + lse 0.4 MB written: ~51 MB -> 17 us.
//            AI ~270 FLOP/B: at the ideal, balanced (a little memory-bound). L2: every query
//            block re-reads the K and V tiles before it, 96 x 136 x 16 KiB = 214 MB.
//   backward D pass ~25 MB of reads; dkdv 8 HS and dq 6 HS FLOPs per visible (i, j): 14 HS x
//            B NH T^2 / 2 = 45 GFLOP (+ ~1.5%: 16x16 chunks on the diagonal) -> ~46 us at
//            peak; HBM ~102 MB (qkv, out, dout, lse, D, dqkv) -> 34 us: compute-bound. The
//            4 HS FLOPs of S and dP computed in both kernels are the price of having no
//            atomics (a fused backward with atomic dq does 10 HS).
//   mma.sync reaches well under Hopper's wgmma peak (FlashAttention-2, the same algorithm on
//   mma.sync, measures ~35-50% of it on H100), the backward kernels have one pipeline
//   stage, and all use expf (not exp2f with the scale folded in): expect ~30-60 us forward and
//   ~100-200 us backward, versus >= 215 us and >= 750 us for attention.cu at the f32
//   CUDA-core peak.
//   A wgmma/TMA (FlashAttention-3 style) kernel is the later, faster step.
//
// NOT RUN ON A GPU. Checked on the host execution harness (ptx/host: ldmatrix and mma.sync
// twins written from the PTX ISA, every schedule in tests/tests/gpu_schedules.rs) against the
// CPU reference (tests/tests/gpu_attention.rs), and assembled by ptxas for sm_90a and sm_80
// without spills (tools/cuda/check-kernels.sh). Speed is unmeasured.
#include "ptx_ops.cuh"

#define ATC_WARPS 4
#define ATC_THREADS (ATC_WARPS * 32)   // 128
#define ATC_ROWS (ATC_WARPS * 16)      // rows per block: 16 per warp (the mma's M)
#define ATC_TILE 64                    // streamed columns per tile
#define ATC_CHUNK 16                   // columns per chunk in the backward kernels (one k-step)
#define ATC_PAD 8                      // bf16 of padding per shared-memory row (16 B)
#define ATC_FULL_MASK 0xFFFFFFFFu

static_assert(ATC_ROWS == ATC_TILE, "rows and tiles are both aligned to 64 (causal tile skipping)");

// Copies rows [t0, t0 + ROWS) (HS channels each) of one head into shared memory with row
// stride LD: row t at g + t * stride (g points at the head's first channel of row 0). Rows >= T
// are zero-filled (cp.async with source size 0). 16-byte chunks; the caller commits and waits.
template <int HS, int ROWS>
__device__ __forceinline__ void atc_load_rows(bf16* s, const bf16* g, size_t stride, int t0, int T) {
    constexpr int LD = HS + ATC_PAD;
    constexpr int CPR = HS / 8;  // 16-byte chunks per row
    static_assert((ROWS * CPR) % ATC_THREADS == 0, "whole chunks per thread");
#pragma unroll
    for (int i = 0; i < ROWS * CPR / ATC_THREADS; i++) {
        const int c = threadIdx.x + i * ATC_THREADS;
        const int r = c / CPR, k = (c % CPR) * 8;
        const int t = t0 + r;
        const bool inside = t < T;
        const bf16* src = inside ? g + (size_t)t * stride + k : g;  // any valid address if not
        cp_async_16(s + r * LD + k, src, inside ? 16 : 0);
    }
}

// A fragment (rows mb..mb+15, k kb..kb+15) of a tile stored [row][k] (k contiguous): the four
// 8x8 matrices are (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15,
// k 8-15) -> a[0..3] (gemm.cu's load_frag_a, K-major).
template <int LD>
__device__ __forceinline__ void atc_frag_a(uint32_t a[4], const bf16* s, int mb, int kb, int lane) {
    const int mat = lane >> 3, r = lane & 7;
    ldmatrix_x4(a, s + (mb + r + 8 * (mat & 1)) * LD + kb + 8 * (mat >> 1));
}

// B fragments of two 8-column n-tiles (nb..nb+7 -> b[0], b[1]; nb+8..nb+15 -> b[2], b[3]),
// k kb..kb+15, from a tile stored [n][k] (k contiguous): B[k][n] = s[n][k]. Matrices (n 0-7,
// k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15) (gemm.cu's load_frag_b, K-major).
template <int LD>
__device__ __forceinline__ void atc_frag_b_nk(uint32_t b[4], const bf16* s, int nb, int kb, int lane) {
    const int mat = lane >> 3, r = lane & 7;
    ldmatrix_x4(b, s + (nb + r + 8 * (mat >> 1)) * LD + kb + 8 * (mat & 1));
}

// The same two n-tiles from a tile stored [k][n] (n contiguous): B[k][n] = s[k][n], transposed
// on load (gemm.cu's load_frag_b, MN-major).
template <int LD>
__device__ __forceinline__ void atc_frag_b_kn(uint32_t b[4], const bf16* s, int nb, int kb, int lane) {
    const int mat = lane >> 3, r = lane & 7;
    ldmatrix_x4_trans(b, s + (kb + r + 8 * (mat & 1)) * LD + nb + 8 * (mat >> 1));
}

// Two f32 as one register of two bf16 (RNE), lo in the low half (element order of a fragment).
__device__ __forceinline__ uint32_t atc_pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
}

// The A fragment (16 rows x 16 k) made of the accumulators of two adjacent 8-column n-tiles
// c0 (k 0-7) and c1 (k 8-15) of a 16 x 8 mma result: accumulator element e of thread (g, t) is
// row g + 8 (e >> 1), column 2t + (e & 1); A register r holds row g + 8 (r & 1), columns
// 2t, 2t+1 (+ 8 for r >= 2). So a[0] = c0 row g, a[1] = c0 row g+8, a[2] = c1 row g,
// a[3] = c1 row g+8: no data moves between threads.
__device__ __forceinline__ void atc_pack_a(uint32_t a[4], const float c0[4], const float c1[4]) {
    a[0] = atc_pack(c0[0], c0[1]);
    a[1] = atc_pack(c0[2], c0[3]);
    a[2] = atc_pack(c1[0], c1[1]);
    a[3] = atc_pack(c1[2], c1[3]);
}

// Stores a warp's 16 x HS f32 accumulators (n-tile dn: columns 8dn + 2t, 2t+1 of rows r0 + g and
// r0 + 8 + g) as bf16 pairs, times mul[0] / mul[1] for the two rows; rows >= T are skipped.
template <int HS>
__device__ __forceinline__ void atc_store_rows(bf16* g, size_t stride, const float acc[HS / 8][4], int r0,
                                               int T, const float mul[2], int lane) {
    const int gq = lane >> 2, t = lane & 3;
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int row = r0 + gq + 8 * h;
        if (row >= T) continue;
#pragma unroll
        for (int dn = 0; dn < HS / 8; dn++) {
            *reinterpret_cast<__nv_bfloat162*>(g + (size_t)row * stride + 8 * dn + 2 * t) =
                __floats2bfloat162_rn(acc[dn][2 * h] * mul[h], acc[dn][2 * h + 1] * mul[h]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Forward

template <int HS>
__device__ __forceinline__ void atc_forward_impl(bf16* out, float* lse, const bf16* qkv, int T, int NH) {
    constexpr int LD = HS + ATC_PAD;
    constexpr int KS = HS / 16;        // k-steps of Q K^T
    constexpr int NT = ATC_TILE / 8;   // 8-key n-tiles of S (8)
    constexpr int DT = HS / 8;         // 8-channel n-tiles of O
    __shared__ __align__(16) bf16 smem[2 * ATC_TILE * LD];
    bf16* k_s = smem;                  // [key][channel]; holds the block's Q rows first
    bf16* v_s = smem + ATC_TILE * LD;  // [key][channel]

    const int C = NH * HS;
    const size_t C3 = 3 * (size_t)C;
    const int b = blockIdx.z, h = blockIdx.y;
    const int qblk = gridDim.x - 1 - blockIdx.x;  // last query block first
    const int q0 = qblk * ATC_ROWS;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int gq = lane >> 2, t = lane & 3;
    const int r0 = q0 + 16 * warp;               // the warp's first query
    const float scale = 1.0f / sqrtf((float)HS);  // as the CPU: 1 / sqrt(hs)
    const bf16* q_g = qkv + (size_t)b * T * C3 + h * HS;
    const bf16* k_g = q_g + C;
    const bf16* v_g = q_g + 2 * C;

    // Q is staged in the V half (then moved to A fragments in registers for the whole kernel)
    // while the first K tile loads into the K half; then the first V tile.
    atc_load_rows<HS, ATC_ROWS>(v_s, q_g, C3, q0, T);
    cp_async_commit();   // group: Q
    atc_load_rows<HS, ATC_TILE>(k_s, k_g, C3, 0, T);
    cp_async_commit();   // group: K tile 0
    cp_async_wait<1>();  // this thread's Q copies have landed (K tile 0 may still be in flight)
    __syncthreads();
    uint32_t qf[KS][4];
#pragma unroll
    for (int ks = 0; ks < KS; ks++) atc_frag_a<LD>(qf[ks], v_s, 16 * warp, 16 * ks, lane);
    __syncthreads();  // every warp has its Q: the V half is free
    atc_load_rows<HS, ATC_TILE>(v_s, v_g, C3, 0, T);
    cp_async_commit();  // group: V tile 0

    float o[DT][4];
#pragma unroll
    for (int dn = 0; dn < DT; dn++) o[dn][0] = o[dn][1] = o[dn][2] = o[dn][3] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY};  // running max of rows gq, gq + 8 (quad-uniform)
    float l[2] = {0.0f, 0.0f};            // this thread's part of the running sums

    // Key tiles 0 .. qblk: the last one is the diagonal tile (the only one masked). Pipeline
    // (FlashAttention-2's): the next K tile loads while this tile's softmax and P V run, the
    // next V tile while the next Q K^T runs. Groups retire in commit order, so wait<1> always
    // means "all but the newest group": the K or V tile about to be read.
    for (int kt = 0; kt <= qblk; kt++) {
        const int k0 = kt * ATC_TILE;
        const bool diag = kt == qblk;
        cp_async_wait<1>();  // K tile kt has landed (V tile kt may still be in flight)
        __syncthreads();

        // S = Q K^T (16 x 64 per warp). Warps whose rows are all >= T (in the last block)
        // compute too, on zero rows of Q: finite and never stored (skipping them would cost
        // more registers than it saves).
        float s[NT][4];
#pragma unroll
        for (int n = 0; n < NT; n++) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < KS; ks++) {
#pragma unroll
            for (int np = 0; np < NT / 2; np++) {
                uint32_t bk[4];
                atc_frag_b_nk<LD>(bk, k_s, 16 * np, 16 * ks, lane);
                mma_bf16_16816(s[2 * np], qf[ks], bk[0], bk[1]);
                mma_bf16_16816(s[2 * np + 1], qf[ks], bk[2], bk[3]);
            }
        }
        __syncthreads();  // every warp is done with K tile kt
        if (!diag) atc_load_rows<HS, ATC_TILE>(k_s, k_g, C3, k0 + ATC_TILE, T);
        cp_async_commit();  // group: K tile kt + 1 (empty after the last tile)

        // Scale; mask the diagonal tile (key > query; keys >= T only occur in a diagonal
        // tile, where they are > every query < T). Rows >= T see key 0 like every row, so
        // after the first tile every m is finite and m - m_new is never -inf - -inf.
        float tmax[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int n = 0; n < NT; n++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float v = s[n][e] * scale;
                if (diag) {
                    const int key = k0 + 8 * n + 2 * t + (e & 1);
                    const int query = r0 + gq + 8 * (e >> 1);
                    if (key > query) v = -INFINITY;
                }
                s[n][e] = v;
                tmax[e >> 1] = fmaxf(tmax[e >> 1], v);
            }
        }
        float alpha[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            tmax[r] = fmaxf(tmax[r], __shfl_xor_sync(ATC_FULL_MASK, tmax[r], 1));
            tmax[r] = fmaxf(tmax[r], __shfl_xor_sync(ATC_FULL_MASK, tmax[r], 2));
            const float m_new = fmaxf(m[r], tmax[r]);
            alpha[r] = expf(m[r] - m_new);  // 0 on the first tile (m = -inf)
            m[r] = m_new;
        }
        float psum[2] = {0.0f, 0.0f};
#pragma unroll
        for (int n = 0; n < NT; n++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const float p = expf(s[n][e] - m[e >> 1]);  // 0 where masked
                s[n][e] = p;
                psum[e >> 1] += p;
            }
        }
#pragma unroll
        for (int r = 0; r < 2; r++) l[r] = l[r] * alpha[r] + psum[r];
#pragma unroll
        for (int dn = 0; dn < DT; dn++) {
            o[dn][0] *= alpha[0];
            o[dn][1] *= alpha[0];
            o[dn][2] *= alpha[1];
            o[dn][3] *= alpha[1];
        }

        cp_async_wait<1>();  // V tile kt has landed (K tile kt + 1 may still be in flight)
        __syncthreads();
        // O += P V: P straight from the S accumulators (bf16), V by ldmatrix.trans.
#pragma unroll
        for (int kk = 0; kk < ATC_TILE / 16; kk++) {
            uint32_t pa[4];
            atc_pack_a(pa, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
            for (int dp = 0; dp < DT / 2; dp++) {
                uint32_t bv[4];
                atc_frag_b_kn<LD>(bv, v_s, 16 * dp, 16 * kk, lane);
                mma_bf16_16816(o[2 * dp], pa, bv[0], bv[1]);
                mma_bf16_16816(o[2 * dp + 1], pa, bv[2], bv[3]);
            }
        }
        if (!diag) {
            __syncthreads();  // every warp is done with V tile kt
            atc_load_rows<HS, ATC_TILE>(v_s, v_g, C3, k0 + ATC_TILE, T);
        }
        cp_async_commit();  // group: V tile kt + 1 (empty after the last tile)
    }

    // Epilogue: l over the quad, out = O / l, lse = m + log(l); rows >= T are not written.
    float inv[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        l[r] += __shfl_xor_sync(ATC_FULL_MASK, l[r], 1);
        l[r] += __shfl_xor_sync(ATC_FULL_MASK, l[r], 2);
        inv[r] = 1.0f / l[r];
    }
    atc_store_rows<HS>(out + (size_t)b * T * C + h * HS, (size_t)C, o, r0, T, inv, lane);
    if (t == 0) {
        float* lse_g = lse + ((size_t)b * NH + h) * T;
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const int row = r0 + gq + 8 * r;
            if (row < T) lse_g[row] = m[r] + logf(l[r]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Backward: dk, dv per block of 64 keys (K in registers, V in shared memory; query tiles of QT
// rows: see the header).

template <int HS, int QT>
__device__ __forceinline__ void atc_dkdv_impl(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                                              const float* dsum, int T, int NH) {
    constexpr int LD = HS + ATC_PAD;
    constexpr int KS = HS / 16;
    constexpr int DT = HS / 8;
    static_assert(QT % ATC_CHUNK == 0 && ATC_TILE % QT == 0, "query tiles of whole chunks, aligned to 64");
    static_assert(2 * QT >= ATC_ROWS, "the K staging fits in the Q and dO tiles");
    __shared__ __align__(16) bf16 smem[(ATC_ROWS + 2 * QT) * LD];
    __shared__ float lse_s[QT], d_s[QT];
    bf16* v_s = smem;                   // [key][channel]: the block's values, for the whole kernel
    bf16* q_s = smem + ATC_ROWS * LD;   // [query][channel]; holds the block's K rows first
    bf16* do_s = q_s + QT * LD;         // [query][channel]

    const int C = NH * HS;
    const size_t C3 = 3 * (size_t)C;
    const int b = blockIdx.z, h = blockIdx.y;
    const int kblk = blockIdx.x;  // keys 0..63 (the longest loop) first
    const int k0 = kblk * ATC_ROWS;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int gq = lane >> 2, t = lane & 3;
    const int r0 = k0 + 16 * warp;  // the warp's first key
    const float scale = 1.0f / sqrtf((float)HS);
    const bf16* q_g = qkv + (size_t)b * T * C3 + h * HS;
    const bf16* k_g = q_g + C;
    const bf16* v_g = q_g + 2 * C;
    const bf16* do_g = dout + (size_t)b * T * C + h * HS;
    const float* lse_g = lse + ((size_t)b * NH + h) * T;
    const float* dsum_g = dsum + ((size_t)b * NH + h) * T;

    // The block's K (staged in the Q/dO tiles, then A fragments in registers) and V.
    atc_load_rows<HS, ATC_ROWS>(q_s, k_g, C3, k0, T);
    atc_load_rows<HS, ATC_ROWS>(v_s, v_g, C3, k0, T);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    uint32_t kf[KS][4];
#pragma unroll
    for (int ks = 0; ks < KS; ks++) atc_frag_a<LD>(kf[ks], q_s, 16 * warp, 16 * ks, lane);

    float dk[DT][4], dv[DT][4];
#pragma unroll
    for (int dn = 0; dn < DT; dn++)
#pragma unroll
        for (int e = 0; e < 4; e++) dk[dn][e] = dv[dn][e] = 0.0f;

    // Query tiles from the diagonal (queries before k0 see none of these keys) to T.
    for (int qs = k0; qs < T; qs += QT) {
        __syncthreads();  // every warp is done with the previous tile (or with the K staging)
        atc_load_rows<HS, QT>(q_s, q_g, C3, qs, T);
        atc_load_rows<HS, QT>(do_s, do_g, (size_t)C, qs, T);
        if (threadIdx.x < QT) {
            const int i = qs + threadIdx.x;
            lse_s[threadIdx.x] = i < T ? lse_g[i] : 0.0f;
            d_s[threadIdx.x] = i < T ? dsum_g[i] : 0.0f;
        }
        cp_async_commit();
        cp_async_wait<0>();
        __syncthreads();

        for (int c = 0; c < QT / ATC_CHUNK; c++) {
            const int qc = qs + ATC_CHUNK * c;  // the chunk's first query
            // Warp-uniform exits (whole warps skip their collectives together): queries past the
            // end, keys past the end, queries all before the warp's keys.
            if (qc >= T || r0 >= T) break;
            if (qc + ATC_CHUNK - 1 < r0) continue;  // every query before every key of the warp
            const bool masked = qc < r0 + 16 || qc + ATC_CHUNK > T;

            // S^T = K Q^T and dP^T = V dO^T: 16 keys x 16 queries.
            float st[2][4], dpt[2][4];
#pragma unroll
            for (int n = 0; n < 2; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) st[n][e] = dpt[n][e] = 0.0f;
#pragma unroll
            for (int ks = 0; ks < KS; ks++) {
                uint32_t bq[4], bo[4], va[4];
                atc_frag_b_nk<LD>(bq, q_s, ATC_CHUNK * c, 16 * ks, lane);
                atc_frag_b_nk<LD>(bo, do_s, ATC_CHUNK * c, 16 * ks, lane);
                atc_frag_a<LD>(va, v_s, 16 * warp, 16 * ks, lane);
                mma_bf16_16816(st[0], kf[ks], bq[0], bq[1]);
                mma_bf16_16816(st[1], kf[ks], bq[2], bq[3]);
                mma_bf16_16816(dpt[0], va, bo[0], bo[1]);
                mma_bf16_16816(dpt[1], va, bo[2], bo[3]);
            }

            // P^T and dS^T (element e of n-tile n: key r0 + g + 8 (e >> 1), query
            // qc + 8n + 2t + (e & 1)); 0 where the key is after the query or the query >= T.
#pragma unroll
            for (int n = 0; n < 2; n++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int col = ATC_CHUNK * c + 8 * n + 2 * t + (e & 1);  // query in the tile
                    const int i = qs + col, j = r0 + gq + 8 * (e >> 1);
                    const bool visible = !masked || (j <= i && i < T);
                    const float p = visible ? expf(st[n][e] * scale - lse_s[col]) : 0.0f;
                    st[n][e] = p;
                    dpt[n][e] = p * (dpt[n][e] - d_s[col]) * scale;
                }
            }

            // dV += P^T dO, dK += dS^T Q (k = the chunk's 16 queries).
            uint32_t pa[4], dsa[4];
            atc_pack_a(pa, st[0], st[1]);
            atc_pack_a(dsa, dpt[0], dpt[1]);
#pragma unroll
            for (int dp = 0; dp < DT / 2; dp++) {
                uint32_t bo[4], bq[4];
                atc_frag_b_kn<LD>(bo, do_s, 16 * dp, ATC_CHUNK * c, lane);
                atc_frag_b_kn<LD>(bq, q_s, 16 * dp, ATC_CHUNK * c, lane);
                mma_bf16_16816(dv[2 * dp], pa, bo[0], bo[1]);
                mma_bf16_16816(dv[2 * dp + 1], pa, bo[2], bo[3]);
                mma_bf16_16816(dk[2 * dp], dsa, bq[0], bq[1]);
                mma_bf16_16816(dk[2 * dp + 1], dsa, bq[2], bq[3]);
            }
        }
    }

    const float one[2] = {1.0f, 1.0f};
    bf16* dk_g = dqkv + (size_t)b * T * C3 + C + h * HS;
    atc_store_rows<HS>(dk_g, C3, dk, r0, T, one, lane);
    atc_store_rows<HS>(dk_g + C, C3, dv, r0, T, one, lane);
}

// ---------------------------------------------------------------------------------------------
// Backward: dq per block of 64 queries.

template <int HS>
__device__ __forceinline__ void atc_dq_impl(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                                            const float* dsum, int T, int NH) {
    constexpr int LD = HS + ATC_PAD;
    constexpr int KS = HS / 16;
    constexpr int DT = HS / 8;
    __shared__ __align__(16) bf16 smem[2 * ATC_TILE * LD];
    bf16* k_s = smem;                  // [key][channel]; holds the block's Q rows first
    bf16* v_s = smem + ATC_TILE * LD;  // [key][channel]; holds the block's dO rows first

    const int C = NH * HS;
    const size_t C3 = 3 * (size_t)C;
    const int b = blockIdx.z, h = blockIdx.y;
    const int qblk = gridDim.x - 1 - blockIdx.x;  // last query block first
    const int q0 = qblk * ATC_ROWS;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int gq = lane >> 2, t = lane & 3;
    const int r0 = q0 + 16 * warp;  // the warp's first query
    const float scale = 1.0f / sqrtf((float)HS);
    const bf16* q_g = qkv + (size_t)b * T * C3 + h * HS;
    const bf16* k_g = q_g + C;
    const bf16* v_g = q_g + 2 * C;
    const bf16* do_g = dout + (size_t)b * T * C + h * HS;
    const float* lse_g = lse + ((size_t)b * NH + h) * T;
    const float* dsum_g = dsum + ((size_t)b * NH + h) * T;

    atc_load_rows<HS, ATC_ROWS>(k_s, q_g, C3, q0, T);
    atc_load_rows<HS, ATC_ROWS>(v_s, do_g, (size_t)C, q0, T);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    uint32_t qf[KS][4], dof[KS][4];
#pragma unroll
    for (int ks = 0; ks < KS; ks++) {
        atc_frag_a<LD>(qf[ks], k_s, 16 * warp, 16 * ks, lane);
        atc_frag_a<LD>(dof[ks], v_s, 16 * warp, 16 * ks, lane);
    }
    float lse_r[2], d_r[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int i = r0 + gq + 8 * r;
        lse_r[r] = i < T ? lse_g[i] : 0.0f;
        d_r[r] = i < T ? dsum_g[i] : 0.0f;
    }

    float dq[DT][4];
#pragma unroll
    for (int dn = 0; dn < DT; dn++) dq[dn][0] = dq[dn][1] = dq[dn][2] = dq[dn][3] = 0.0f;

    for (int kt = 0; kt <= qblk; kt++) {
        const int k0 = kt * ATC_TILE;
        __syncthreads();  // every warp is done with the previous tile (or with the Q/dO staging)
        atc_load_rows<HS, ATC_TILE>(k_s, k_g, C3, k0, T);
        atc_load_rows<HS, ATC_TILE>(v_s, v_g, C3, k0, T);
        cp_async_commit();
        cp_async_wait<0>();
        __syncthreads();

        for (int c = 0; c < ATC_TILE / ATC_CHUNK; c++) {
            const int kc = k0 + ATC_CHUNK * c;  // the chunk's first key
            // Warp-uniform exits: the warp's queries are past the end, or every key from here on
            // is after every query of the warp.
            if (r0 >= T || kc > r0 + 15) break;
            const bool masked = kc + ATC_CHUNK - 1 > r0 || r0 + 16 > T;

            // S = Q K^T and dP = dO V^T: 16 queries x 16 keys.
            float s[2][4], dp[2][4];
#pragma unroll
            for (int n = 0; n < 2; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) s[n][e] = dp[n][e] = 0.0f;
#pragma unroll
            for (int ks = 0; ks < KS; ks++) {
                uint32_t bk[4], bv[4];
                atc_frag_b_nk<LD>(bk, k_s, ATC_CHUNK * c, 16 * ks, lane);
                atc_frag_b_nk<LD>(bv, v_s, ATC_CHUNK * c, 16 * ks, lane);
                mma_bf16_16816(s[0], qf[ks], bk[0], bk[1]);
                mma_bf16_16816(s[1], qf[ks], bk[2], bk[3]);
                mma_bf16_16816(dp[0], dof[ks], bv[0], bv[1]);
                mma_bf16_16816(dp[1], dof[ks], bv[2], bv[3]);
            }

            // dS (element e of n-tile n: query r0 + g + 8 (e >> 1), key kc + 8n + 2t + (e & 1)).
#pragma unroll
            for (int n = 0; n < 2; n++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int i = r0 + gq + 8 * (e >> 1), j = kc + 8 * n + 2 * t + (e & 1);
                    const bool visible = !masked || (j <= i && i < T);
                    const float p = visible ? expf(s[n][e] * scale - lse_r[e >> 1]) : 0.0f;
                    dp[n][e] = p * (dp[n][e] - d_r[e >> 1]) * scale;
                }
            }

            // dQ += dS K (k = the chunk's 16 keys; K by ldmatrix.trans).
            uint32_t dsa[4];
            atc_pack_a(dsa, dp[0], dp[1]);
#pragma unroll
            for (int dn2 = 0; dn2 < DT / 2; dn2++) {
                uint32_t bk[4];
                atc_frag_b_kn<LD>(bk, k_s, 16 * dn2, ATC_CHUNK * c, lane);
                mma_bf16_16816(dq[2 * dn2], dsa, bk[0], bk[1]);
                mma_bf16_16816(dq[2 * dn2 + 1], dsa, bk[2], bk[3]);
            }
        }
    }

    const float one[2] = {1.0f, 1.0f};
    atc_store_rows<HS>(dqkv + (size_t)b * T * C3 + h * HS, C3, dq, r0, T, one, lane);
}

// ---------------------------------------------------------------------------------------------
// The extern "C" entry points, one set per supported head size.

#define ATTENTION_TC_KERNELS(HS)                                                                   \
    extern "C" __global__ void __launch_bounds__(ATC_THREADS)                                     \
        attention_tc_forward_hs##HS(bf16* out, float* lse, const bf16* qkv, int T, int NH) {       \
        atc_forward_impl<HS>(out, lse, qkv, T, NH);                                                \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(ATC_THREADS) attention_tc_backward_dkdv_hs##HS(  \
        bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse, const float* dsum, int T, \
        int NH) {                                                                                  \
        atc_dkdv_impl<HS, (HS > 64 ? 32 : 64)>(dqkv, dout, qkv, lse, dsum, T, NH);                                    \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(ATC_THREADS) attention_tc_backward_dq_hs##HS(    \
        bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse, const float* dsum, int T, \
        int NH) {                                                                                  \
        atc_dq_impl<HS>(dqkv, dout, qkv, lse, dsum, T, NH);                                        \
    }

ATTENTION_TC_KERNELS(64)
ATTENTION_TC_KERNELS(128)
