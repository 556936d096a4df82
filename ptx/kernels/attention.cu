// targets: sm_90a sm_80
//
// Causal multi-head self-attention, flash style (online softmax over key tiles; the T x T
// score matrix never exists in memory): forward, and a deterministic backward that recomputes
// the probabilities from the saved log-sum-exp. Semantics = gpt/src/cpu/ops.rs
// attention_forward / attention_backward.
//
// Layouts (bf16 storage, f32 math and accumulation everywhere):
//   qkv  [B, T, 3C]   q | k | v; head h is channels h*HS .. (h+1)*HS of each third, C = NH * HS
//   out  [B, T, C]    head h at channels h*HS ..
//   lse  [B, NH, T]   f32
//   dout [B, T, C], dqkv [B, T, 3C] (overwritten: every element is written)
//
// Forward, per (b, h) and query i < T, with scale = 1 / sqrt(HS):
//   s_ij  = scale * (q_i . k_j)                          for keys j <= i (causal)
//   lse_i = log(sum_{j<=i} exp(s_ij))                     natural log, of the SCALED scores
//   P_ij  = exp(s_ij - lse_i)
//   out_i = sum_{j<=i} P_ij v_j
// computed in one pass over key tiles with the online softmax: per query a running max m, a
// running sum l of exp(s - m) and an unnormalized accumulator o; a new tile with max m' > m
// rescales l and o by alpha = exp(m - m'). At the end out = o / l and lse = m + log(l).
//
// Backward (dO = dout), with D_i = dO_i . out_i (= sum_j P_ij dP_ij, the softmax correction):
//   dP_ij = dO_i . v_j
//   dS_ij = P_ij * (dP_ij - D_i) * scale        (scale folded in: d s_ij / d(q_i . k_j))
//   dq_i  = sum_{j<=i} dS_ij k_j
//   dk_j  = sum_{i>=j} dS_ij q_i
//   dv_j  = sum_{i>=j} P_ij dO_i
// P is recomputed from q, k and lse (exp(s - lse)), never stored. Three kernels, so that every
// output element has exactly one owner summing in a fixed order (no float atomics: bitwise
// deterministic run to run and independent of the device):
//   attention_backward_dsum   D_i for every row (f32, into the caller's scratch)
//   attention_backward_dkdv   per block of 16 keys, loops over the query tiles after them
//   attention_backward_dq     per block of 16 queries, loops over the key tiles before them
// Both of the last two recompute s and dP (the price of having no atomics: 14 T^2 HS FLOPs per
// (b, h) executed instead of the 10 of a fused backward with atomic dq).
//
// The work split (the same shape in the forward, dq and dkdv kernels). A block is 4 warps and
// owns 16 "rows" of one (b, h): queries in the forward and dq kernels, keys in dkdv. Each warp
// owns 4 of those rows. The block streams the other side in tiles of 32 "columns" (keys, or
// queries in dkdv) through shared memory. Per tile, each warp does:
//   phase 1 (scores): lane c takes column c of the tile and computes its dot products with the
//           warp's 4 rows: the column's vector is read by that lane alone (bf16 in shared memory,
//           rows padded by one 4-byte word so the 32 lanes hit 32 different banks), the rows'
//           vectors are read by all lanes at the same address (f32, a broadcast).
//   phase 2 (softmax / dS): per row, elementwise on the lane's value; the forward's tile max
//           and the final row sums are warp butterflies (fixed order).
//   phase 3 (accumulate): lanes switch to owning pairs of output channels (lane owns channel
//           pairs lane, lane + 32, ... < HS/2) and walk the tile's 32 columns in order, getting
//           each column's P or dS from its lane by __shfl_sync: o[row][pair] += P * v[col][pair].
// HS is a template parameter (HS/2 pairs per lane: 16 -> 8 lanes busy in phase 3, 64 and 128 ->
// all 32), instantiated for HS in {16, 32, 64, 96, 128}: kernels attention_forward_hs<HS>,
// attention_backward_dkdv_hs<HS>, attention_backward_dq_hs<HS>.
//
// Kernels (grid (ceil(T/16), NH, B), block 128, static shared memory only):
//   attention_forward_hsN(bf16* out, float* lse, const bf16* qkv, int T, int NH)
//       Query blocks are visited last-first (blockIdx.x = 0 takes the LAST 16 queries, which
//       see the most keys), so the long blocks start first and the short ones fill the tail.
//   attention_backward_dsum(float* dsum, const bf16* dout, const bf16* out, int T, int NH,
//                           int HS, int rows)      rows = B*NH*T; one warp per row,
//       block 256 (8 rows), grid ceil(rows / 8). dsum layout [B, NH, T] like lse.
//   attention_backward_dkdv_hsN(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
//                               const float* dsum, int T, int NH)   writes the dk, dv thirds
//       Key block k0 loops over query tiles starting at query k0 (earlier queries cannot see
//       these keys). blockIdx.x = 0 is keys 0..15, the longest loop, again first.
//   attention_backward_dq_hsN(same parameters)   writes the dq third
//   Boundary handling: rows and columns >= T are loaded as zeros and masked out (probability 0);
//   nothing is written for rows >= T. Any T >= 1.
//   Aliasing: no output may overlap any input. In particular dqkv must not be qkv: within one
//   launch, a block's dq (or dk, dv) rows are the q (or k, v) rows other blocks are still
//   reading. The launcher checks this.
//   Alignment: global accesses are bf16 pairs (4 bytes), so qkv/out/dout/dqkv must be 4-byte
//   aligned (HS is even, so every pair is); the launcher checks this.
// Shared memory at HS = 128: forward 24.3 KiB (q 16x128 f32, k and v 32x130 bf16); dq and dkdv
// 32.3 KiB each. All under the 48 KiB static limit, so no opt-in.
//
// Cost at GPT-2 124M (B = 8, T = 1024, NH = 12, HS = 64, C = 768), H100:
//   forward FLOPs 4 * B*NH * T^2 * HS / 2 (causal half of QK^T and PV) = 12.9 GFLOP.
//     HBM: read qkv 37.7 MB, write out 12.6 MB + lse 0.4 MB = ~51 MB -> 17 us at ~3.0 TB/s.
//     L2: each 16-query block re-reads the K and V before it: B*NH * (T/16) * (T/2) * HS * 4 B
//     = 0.8 GB per forward, from L2.
//     Arithmetic intensity ~250 FLOP/B: compute-bound. This version runs on the CUDA cores in
//     f32 (~60 TFLOP/s peak -> >= 215 us), and phase 1 issues ~5 shared loads per 8 FMAs, so
//     expect a good fraction below that peak; the same FLOPs on the BF16 tensor cores
//     (~990 TFLOP/s) would take ~13 us. A tensor-core (mma.sync / wgmma) version is the later,
//     faster kernel; this one is the readable reference.
//   backward ~2.5x the forward's FLOPs for a fused backward (32 GFLOP); these kernels execute
//     3.5x (45 GFLOP: s and dP are computed in both dkdv and dq) -> >= 750 us at f32 peak.
//     HBM: read qkv 37.7 MB, out and dout 25.2 MB, lse 0.4 MB, write dqkv 37.7 MB, D 0.4 MB
//     written and read twice: ~102 MB -> 34 us. Compute-bound likewise.
#include "common.cuh"

#define ATT_WARPS 4                               // warps per block
#define ATT_ROWS 4                                // rows each warp owns
#define ATT_BLOCK_ROWS (ATT_WARPS * ATT_ROWS)     // 16 rows per block
#define ATT_TILE 32                               // columns per streamed tile (one per lane)
#define ATT_THREADS (ATT_WARPS * 32)              // 128
#define ATT_DSUM_WARPS 8                          // rows per attention_backward_dsum block
#define FULL_MASK 0xFFFFFFFFu

// Max over the 32 lanes (butterfly; max is exact, so any order gives the same result).
__device__ __forceinline__ float warp_max(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, offset));
    return v;
}

__device__ __forceinline__ __nv_bfloat162 load_pair(const bf16* p) {
    return *reinterpret_cast<const __nv_bfloat162*>(p);
}

// Two consecutive values of a shared-memory row as f32 (p 8-byte aligned for float, 4 for bf16).
__device__ __forceinline__ float2 pair_f32(const float* p) { return *reinterpret_cast<const float2*>(p); }
__device__ __forceinline__ float2 pair_f32(const bf16* p) { return __bfloat1622float2(load_pair(p)); }

__device__ __forceinline__ void store_pair(float* p, __nv_bfloat162 v) {
    *reinterpret_cast<float2*>(p) = __bfloat1622float2(v);
}
__device__ __forceinline__ void store_pair(bf16* p, __nv_bfloat162 v) {
    *reinterpret_cast<__nv_bfloat162*>(p) = v;
}

// Copies the HS channels of rows [t0, t0 + ROWS) of one head into shared memory: row t starts at
// src + t * row_stride (src already points at the head's first channel of row 0); destination
// row r starts at dst + r * DST_STRIDE (f32 or bf16). Rows >= T are stored as zeros. All 128
// threads take part: consecutive threads take consecutive pairs of a row (coalesced 4-byte loads).
template <int HS, int ROWS, int DST_STRIDE, typename Dst>
__device__ __forceinline__ void load_tile(Dst* dst, const bf16* src, size_t row_stride, int t0, int T) {
    constexpr int NP = HS / 2;
    for (int idx = threadIdx.x; idx < ROWS * NP; idx += ATT_THREADS) {
        const int r = idx / NP, p = idx % NP;
        const int t = t0 + r;
        __nv_bfloat162 v = __floats2bfloat162_rn(0.0f, 0.0f);
        if (t < T) v = load_pair(src + (size_t)t * row_stride + 2 * p);
        store_pair(dst + r * DST_STRIDE + 2 * p, v);
    }
}

// ---------------------------------------------------------------------------------------------
// Forward

template <int HS>
__device__ __forceinline__ void attention_forward_impl(bf16* out, float* lse, const bf16* qkv, int T, int NH) {
    constexpr int NP = HS / 2;                 // channel pairs per row
    constexpr int SLOTS = (NP + 31) / 32;      // channel pairs per lane in phase 3
    constexpr int PAD = HS + 2;                // padded bf16 row: HS/2 + 1 words, odd -> no conflicts
    __shared__ __align__(16) float q_s[ATT_BLOCK_ROWS][HS];   // the block's queries (broadcast reads)
    __shared__ __align__(16) bf16 k_s[ATT_TILE][PAD];         // key tile: lane c reads row c
    __shared__ __align__(16) bf16 v_s[ATT_TILE][PAD];         // value tile: read by channel pairs

    const int C = NH * HS;
    const size_t C3 = 3 * (size_t)C;
    const int b = blockIdx.z, h = blockIdx.y;
    const int q0 = (gridDim.x - 1 - blockIdx.x) * ATT_BLOCK_ROWS;  // last query block first
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int row0 = warp * ATT_ROWS;                              // warp's first row in q_s
    const float scale = 1.0f / sqrtf((float)HS);                   // as the CPU: 1 / sqrt(hs)
    const bf16* q_g = qkv + (size_t)b * T * C3 + h * HS;
    const bf16* k_g = q_g + C;
    const bf16* v_g = q_g + 2 * C;

    load_tile<HS, ATT_BLOCK_ROWS, HS>(&q_s[0][0], q_g, C3, q0, T);  // visible after the first sync

    float m[ATT_ROWS], l[ATT_ROWS], o[ATT_ROWS][SLOTS][2];
#pragma unroll
    for (int r = 0; r < ATT_ROWS; r++) {
        m[r] = -INFINITY;  // running max of the scaled scores (warp-uniform)
        l[r] = 0.0f;       // this lane's part of the running sum of exp(s - m)
#pragma unroll
        for (int sl = 0; sl < SLOTS; sl++) o[r][sl][0] = o[r][sl][1] = 0.0f;
    }

    // Keys 0 .. last are visible to some query of this block.
    const int last = min(q0 + ATT_BLOCK_ROWS, T) - 1;
    for (int k0 = 0; k0 <= last; k0 += ATT_TILE) {
        __syncthreads();  // the previous tile is no longer being read
        load_tile<HS, ATT_TILE, PAD>(&k_s[0][0], k_g, C3, k0, T);
        load_tile<HS, ATT_TILE, PAD>(&v_s[0][0], v_g, C3, k0, T);
        __syncthreads();

        // Phase 1: lane c scores key j = k0 + c against the warp's 4 queries.
        const int j = k0 + lane;
        float s[ATT_ROWS];
#pragma unroll
        for (int r = 0; r < ATT_ROWS; r++) s[r] = 0.0f;
#pragma unroll 8
        for (int p = 0; p < NP; p++) {
            const float2 kv = pair_f32(&k_s[lane][2 * p]);
#pragma unroll
            for (int r = 0; r < ATT_ROWS; r++) {
                const float2 qv = pair_f32(&q_s[row0 + r][2 * p]);
                s[r] = fmaf(qv.x, kv.x, s[r]);
                s[r] = fmaf(qv.y, kv.y, s[r]);
            }
        }

        // Phase 2: online softmax. Key 0 is visible to every row (also to rows >= T, whose
        // results are discarded), so after the first tile m is finite and m - m_new never is
        // -inf - -inf; a later tile that a row cannot see at all gives m_new = m, alpha = 1, p = 0.
        float pr[ATT_ROWS];
#pragma unroll
        for (int r = 0; r < ATT_ROWS; r++) {
            const int i = q0 + row0 + r;
            const bool visible = j <= i && j < T;
            const float sc = visible ? s[r] * scale : -INFINITY;
            const float m_new = fmaxf(m[r], warp_max(sc));
            const float alpha = expf(m[r] - m_new);  // 0 on the first tile (m = -inf)
            pr[r] = expf(sc - m_new);                // 0 where masked
            l[r] = l[r] * alpha + pr[r];
            m[r] = m_new;
#pragma unroll
            for (int sl = 0; sl < SLOTS; sl++) {
                o[r][sl][0] *= alpha;
                o[r][sl][1] *= alpha;
            }
        }

        // Phase 3: o += P V. Lane owns channel pairs lane + 32 sl; key c's probabilities come
        // from lane c. Keys past `last` have P = 0 for every row of the block: skip them.
        const int tile_keys = min(ATT_TILE, last + 1 - k0);
#pragma unroll 4
        for (int c = 0; c < tile_keys; c++) {
            float pc[ATT_ROWS];
#pragma unroll
            for (int r = 0; r < ATT_ROWS; r++) pc[r] = __shfl_sync(FULL_MASK, pr[r], c);
#pragma unroll
            for (int sl = 0; sl < SLOTS; sl++) {
                const int pp = lane + 32 * sl;
                if (pp < NP) {
                    const float2 vv = pair_f32(&v_s[c][2 * pp]);
#pragma unroll
                    for (int r = 0; r < ATT_ROWS; r++) {
                        o[r][sl][0] = fmaf(pc[r], vv.x, o[r][sl][0]);
                        o[r][sl][1] = fmaf(pc[r], vv.y, o[r][sl][1]);
                    }
                }
            }
        }
    }

    // Epilogue: out = o / l, lse = m + log(l), for the rows < T.
    bf16* out_g = out + (size_t)b * T * C + h * HS;
    float* lse_g = lse + ((size_t)b * NH + h) * T;
#pragma unroll
    for (int r = 0; r < ATT_ROWS; r++) {
        const int i = q0 + row0 + r;
        const float l_sum = warp_sum(l[r]);  // all lanes take part, also for rows >= T
        if (i < T) {
            const float inv = 1.0f / l_sum;
#pragma unroll
            for (int sl = 0; sl < SLOTS; sl++) {
                const int pp = lane + 32 * sl;
                if (pp < NP) {
                    *reinterpret_cast<__nv_bfloat162*>(out_g + (size_t)i * C + 2 * pp) =
                        __floats2bfloat162_rn(o[r][sl][0] * inv, o[r][sl][1] * inv);
                }
            }
            if (lane == 0) lse_g[i] = m[r] + logf(l_sum);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Backward

extern "C" __global__ void __launch_bounds__(ATT_DSUM_WARPS * 32)
attention_backward_dsum(float* dsum, const bf16* dout, const bf16* out, int T, int NH, int HS, int rows) {
    // Row w = (b * NH + h) * T + t (the lse layout); one warp per row, lanes over channel pairs.
    const size_t w = (size_t)blockIdx.x * ATT_DSUM_WARPS + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (w >= (size_t)rows) return;  // whole warps leave together; no block barrier follows
    const int t = (int)(w % T), bh = (int)(w / T);
    const int h = bh % NH, b = bh / NH;
    const size_t base = ((size_t)b * T + t) * ((size_t)NH * HS) + (size_t)h * HS;
    float acc = 0.0f;
    for (int p = lane; p < HS / 2; p += 32) {
        const float2 d = __bfloat1622float2(load_pair(dout + base + 2 * p));
        const float2 o = __bfloat1622float2(load_pair(out + base + 2 * p));
        acc = fmaf(d.x, o.x, acc);
        acc = fmaf(d.y, o.y, acc);
    }
    acc = warp_sum(acc);
    if (lane == 0) dsum[w] = acc;
}

// dk, dv for 16 keys per block; the block streams the query tiles that can see them.
template <int HS>
__device__ __forceinline__ void attention_backward_dkdv_impl(bf16* dqkv, const bf16* dout, const bf16* qkv,
                                                             const float* lse, const float* dsum, int T, int NH) {
    constexpr int NP = HS / 2, SLOTS = (NP + 31) / 32, PAD = HS + 2;
    __shared__ __align__(16) float k_s[ATT_BLOCK_ROWS][HS];  // the block's keys (broadcast)
    __shared__ __align__(16) float v_s[ATT_BLOCK_ROWS][HS];  // the block's values (broadcast)
    __shared__ __align__(16) bf16 q_s[ATT_TILE][PAD];        // query tile: lane c reads row c
    __shared__ __align__(16) bf16 do_s[ATT_TILE][PAD];       // dout tile: likewise

    const int C = NH * HS;
    const size_t C3 = 3 * (size_t)C;
    const int b = blockIdx.z, h = blockIdx.y;
    const int k0 = blockIdx.x * ATT_BLOCK_ROWS;  // first key; block 0 has the longest loop
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int row0 = warp * ATT_ROWS;
    const float scale = 1.0f / sqrtf((float)HS);
    const bf16* q_g = qkv + (size_t)b * T * C3 + h * HS;
    const bf16* k_g = q_g + C;
    const bf16* v_g = q_g + 2 * C;
    const bf16* do_g = dout + (size_t)b * T * C + h * HS;
    const float* lse_g = lse + ((size_t)b * NH + h) * T;
    const float* dsum_g = dsum + ((size_t)b * NH + h) * T;

    load_tile<HS, ATT_BLOCK_ROWS, HS>(&k_s[0][0], k_g, C3, k0, T);
    load_tile<HS, ATT_BLOCK_ROWS, HS>(&v_s[0][0], v_g, C3, k0, T);

    float dk[ATT_ROWS][SLOTS][2], dv[ATT_ROWS][SLOTS][2];
#pragma unroll
    for (int r = 0; r < ATT_ROWS; r++)
#pragma unroll
        for (int sl = 0; sl < SLOTS; sl++) dk[r][sl][0] = dk[r][sl][1] = dv[r][sl][0] = dv[r][sl][1] = 0.0f;

    // Queries before k0 see none of these keys: start the query tiles at k0 (tiles need not
    // be aligned to 32).
    for (int qs = k0; qs < T; qs += ATT_TILE) {
        __syncthreads();
        load_tile<HS, ATT_TILE, PAD>(&q_s[0][0], q_g, C3, qs, T);
        load_tile<HS, ATT_TILE, PAD>(&do_s[0][0], do_g, (size_t)C, qs, T);
        __syncthreads();

        // Phase 1: lane c takes query i = qs + c: s = q_i . k_j and dP = dO_i . v_j for the
        // warp's 4 keys j.
        const int i = qs + lane;
        const float lse_i = i < T ? lse_g[i] : 0.0f;
        const float d_i = i < T ? dsum_g[i] : 0.0f;
        float s[ATT_ROWS], dp[ATT_ROWS];
#pragma unroll
        for (int r = 0; r < ATT_ROWS; r++) s[r] = dp[r] = 0.0f;
#pragma unroll 8
        for (int p = 0; p < NP; p++) {
            const float2 qv = pair_f32(&q_s[lane][2 * p]);
            const float2 dov = pair_f32(&do_s[lane][2 * p]);
#pragma unroll
            for (int r = 0; r < ATT_ROWS; r++) {
                const float2 kv = pair_f32(&k_s[row0 + r][2 * p]);
                const float2 vv = pair_f32(&v_s[row0 + r][2 * p]);
                s[r] = fmaf(qv.x, kv.x, s[r]);
                s[r] = fmaf(qv.y, kv.y, s[r]);
                dp[r] = fmaf(dov.x, vv.x, dp[r]);
                dp[r] = fmaf(dov.y, vv.y, dp[r]);
            }
        }

        // Phase 2: P and dS (0 where key j > query i or i >= T; j <= i < T implies j < T).
        float pr[ATT_ROWS], ds[ATT_ROWS];
#pragma unroll
        for (int r = 0; r < ATT_ROWS; r++) {
            const int j = k0 + row0 + r;
            const bool visible = j <= i && i < T;
            pr[r] = visible ? expf(s[r] * scale - lse_i) : 0.0f;
            ds[r] = pr[r] * (dp[r] - d_i) * scale;
        }

        // Phase 3: dv_j += P_ij dO_i, dk_j += dS_ij q_i over the tile's queries in order; lane
        // owns channel pairs. Queries >= T contribute nothing: stop there.
        const int tile_queries = min(ATT_TILE, T - qs);
#pragma unroll 4
        for (int c = 0; c < tile_queries; c++) {
            float pc[ATT_ROWS], dsc[ATT_ROWS];
#pragma unroll
            for (int r = 0; r < ATT_ROWS; r++) {
                pc[r] = __shfl_sync(FULL_MASK, pr[r], c);
                dsc[r] = __shfl_sync(FULL_MASK, ds[r], c);
            }
#pragma unroll
            for (int sl = 0; sl < SLOTS; sl++) {
                const int pp = lane + 32 * sl;
                if (pp < NP) {
                    const float2 qv = pair_f32(&q_s[c][2 * pp]);
                    const float2 dov = pair_f32(&do_s[c][2 * pp]);
#pragma unroll
                    for (int r = 0; r < ATT_ROWS; r++) {
                        dv[r][sl][0] = fmaf(pc[r], dov.x, dv[r][sl][0]);
                        dv[r][sl][1] = fmaf(pc[r], dov.y, dv[r][sl][1]);
                        dk[r][sl][0] = fmaf(dsc[r], qv.x, dk[r][sl][0]);
                        dk[r][sl][1] = fmaf(dsc[r], qv.y, dk[r][sl][1]);
                    }
                }
            }
        }
    }

    // Write the dk and dv thirds of dqkv for the keys < T.
    bf16* dk_g = dqkv + (size_t)b * T * C3 + C + h * HS;
    bf16* dv_g = dk_g + C;
#pragma unroll
    for (int r = 0; r < ATT_ROWS; r++) {
        const int j = k0 + row0 + r;
        if (j >= T) continue;
#pragma unroll
        for (int sl = 0; sl < SLOTS; sl++) {
            const int pp = lane + 32 * sl;
            if (pp < NP) {
                *reinterpret_cast<__nv_bfloat162*>(dk_g + (size_t)j * C3 + 2 * pp) =
                    __floats2bfloat162_rn(dk[r][sl][0], dk[r][sl][1]);
                *reinterpret_cast<__nv_bfloat162*>(dv_g + (size_t)j * C3 + 2 * pp) =
                    __floats2bfloat162_rn(dv[r][sl][0], dv[r][sl][1]);
            }
        }
    }
}

// dq for 16 queries per block; the block streams the key tiles they can see (like the forward).
template <int HS>
__device__ __forceinline__ void attention_backward_dq_impl(bf16* dqkv, const bf16* dout, const bf16* qkv,
                                                           const float* lse, const float* dsum, int T, int NH) {
    constexpr int NP = HS / 2, SLOTS = (NP + 31) / 32, PAD = HS + 2;
    __shared__ __align__(16) float q_s[ATT_BLOCK_ROWS][HS];   // the block's queries (broadcast)
    __shared__ __align__(16) float do_s[ATT_BLOCK_ROWS][HS];  // the block's dout rows (broadcast)
    __shared__ __align__(16) bf16 k_s[ATT_TILE][PAD];         // key tile: lane c reads row c,
                                                              // phase 3 reads it by channel pairs
    __shared__ __align__(16) bf16 v_s[ATT_TILE][PAD];         // value tile: lane c reads row c

    const int C = NH * HS;
    const size_t C3 = 3 * (size_t)C;
    const int b = blockIdx.z, h = blockIdx.y;
    const int q0 = (gridDim.x - 1 - blockIdx.x) * ATT_BLOCK_ROWS;  // last query block first
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int row0 = warp * ATT_ROWS;
    const float scale = 1.0f / sqrtf((float)HS);
    const bf16* q_g = qkv + (size_t)b * T * C3 + h * HS;
    const bf16* k_g = q_g + C;
    const bf16* v_g = q_g + 2 * C;
    const bf16* do_g = dout + (size_t)b * T * C + h * HS;
    const float* lse_g = lse + ((size_t)b * NH + h) * T;
    const float* dsum_g = dsum + ((size_t)b * NH + h) * T;

    load_tile<HS, ATT_BLOCK_ROWS, HS>(&q_s[0][0], q_g, C3, q0, T);
    load_tile<HS, ATT_BLOCK_ROWS, HS>(&do_s[0][0], do_g, (size_t)C, q0, T);

    // Per row: lse and D (warp-uniform; the same address in every lane is one broadcast load).
    float lse_r[ATT_ROWS], d_r[ATT_ROWS], dq[ATT_ROWS][SLOTS][2];
#pragma unroll
    for (int r = 0; r < ATT_ROWS; r++) {
        const int i = q0 + row0 + r;
        lse_r[r] = i < T ? lse_g[i] : 0.0f;
        d_r[r] = i < T ? dsum_g[i] : 0.0f;
#pragma unroll
        for (int sl = 0; sl < SLOTS; sl++) dq[r][sl][0] = dq[r][sl][1] = 0.0f;
    }

    const int last = min(q0 + ATT_BLOCK_ROWS, T) - 1;
    for (int k0 = 0; k0 <= last; k0 += ATT_TILE) {
        __syncthreads();
        load_tile<HS, ATT_TILE, PAD>(&k_s[0][0], k_g, C3, k0, T);
        load_tile<HS, ATT_TILE, PAD>(&v_s[0][0], v_g, C3, k0, T);
        __syncthreads();

        // Phase 1: lane c takes key j = k0 + c: s = q_i . k_j, dP = dO_i . v_j for the warp's
        // 4 queries (same arithmetic, in the same order, as the forward's and dkdv's scores).
        const int j = k0 + lane;
        float s[ATT_ROWS], dp[ATT_ROWS];
#pragma unroll
        for (int r = 0; r < ATT_ROWS; r++) s[r] = dp[r] = 0.0f;
#pragma unroll 8
        for (int p = 0; p < NP; p++) {
            const float2 kv = pair_f32(&k_s[lane][2 * p]);
            const float2 vv = pair_f32(&v_s[lane][2 * p]);
#pragma unroll
            for (int r = 0; r < ATT_ROWS; r++) {
                const float2 qv = pair_f32(&q_s[row0 + r][2 * p]);
                const float2 dov = pair_f32(&do_s[row0 + r][2 * p]);
                s[r] = fmaf(qv.x, kv.x, s[r]);
                s[r] = fmaf(qv.y, kv.y, s[r]);
                dp[r] = fmaf(dov.x, vv.x, dp[r]);
                dp[r] = fmaf(dov.y, vv.y, dp[r]);
            }
        }

        // Phase 2: dS (0 where j > i or i >= T).
        float ds[ATT_ROWS];
#pragma unroll
        for (int r = 0; r < ATT_ROWS; r++) {
            const int i = q0 + row0 + r;
            const bool visible = j <= i && i < T;
            const float pr = visible ? expf(s[r] * scale - lse_r[r]) : 0.0f;
            ds[r] = pr * (dp[r] - d_r[r]) * scale;
        }

        // Phase 3: dq_i += dS_ij k_j over the tile's keys in order; lane owns channel pairs.
        const int tile_keys = min(ATT_TILE, last + 1 - k0);
#pragma unroll 4
        for (int c = 0; c < tile_keys; c++) {
            float dsc[ATT_ROWS];
#pragma unroll
            for (int r = 0; r < ATT_ROWS; r++) dsc[r] = __shfl_sync(FULL_MASK, ds[r], c);
#pragma unroll
            for (int sl = 0; sl < SLOTS; sl++) {
                const int pp = lane + 32 * sl;
                if (pp < NP) {
                    const float2 kv = pair_f32(&k_s[c][2 * pp]);
#pragma unroll
                    for (int r = 0; r < ATT_ROWS; r++) {
                        dq[r][sl][0] = fmaf(dsc[r], kv.x, dq[r][sl][0]);
                        dq[r][sl][1] = fmaf(dsc[r], kv.y, dq[r][sl][1]);
                    }
                }
            }
        }
    }

    bf16* dq_g = dqkv + (size_t)b * T * C3 + h * HS;
#pragma unroll
    for (int r = 0; r < ATT_ROWS; r++) {
        const int i = q0 + row0 + r;
        if (i >= T) continue;
#pragma unroll
        for (int sl = 0; sl < SLOTS; sl++) {
            const int pp = lane + 32 * sl;
            if (pp < NP) {
                *reinterpret_cast<__nv_bfloat162*>(dq_g + (size_t)i * C3 + 2 * pp) =
                    __floats2bfloat162_rn(dq[r][sl][0], dq[r][sl][1]);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The extern "C" entry points, one set per supported head size.

#define ATTENTION_KERNELS(HS)                                                                      \
    extern "C" __global__ void __launch_bounds__(ATT_THREADS)                                     \
        attention_forward_hs##HS(bf16* out, float* lse, const bf16* qkv, int T, int NH) {          \
        attention_forward_impl<HS>(out, lse, qkv, T, NH);                                          \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(ATT_THREADS) attention_backward_dkdv_hs##HS(     \
        bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse, const float* dsum, int T, \
        int NH) {                                                                                  \
        attention_backward_dkdv_impl<HS>(dqkv, dout, qkv, lse, dsum, T, NH);                       \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(ATT_THREADS) attention_backward_dq_hs##HS(       \
        bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse, const float* dsum, int T, \
        int NH) {                                                                                  \
        attention_backward_dq_impl<HS>(dqkv, dout, qkv, lse, dsum, T, NH);                         \
    }

ATTENTION_KERNELS(16)
ATTENTION_KERNELS(32)
ATTENTION_KERNELS(64)
ATTENTION_KERNELS(96)
ATTENTION_KERNELS(128)
