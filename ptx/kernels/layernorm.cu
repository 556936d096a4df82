// targets: sm_90a sm_80
//
// LayerNorm over the last dimension: forward, fused residual-add + forward, and a
// deterministic backward that accumulates. Semantics = gpt/src/cpu/ops.rs layernorm_forward,
// residual_layernorm_forward and layernorm_backward (eps = 1e-5, biased variance, two-pass).
//
// Forward, per row x[0..C) (f32 math on bf16 values):
//   mean = sum(x) / C
//   var  = sum((x - mean)^2) / C            (second pass over the row, not E[x^2] - mean^2)
//   rstd = 1 / sqrt(var + 1e-5)
//   out  = (x - mean) * rstd * w + b        (rounded to bf16; mean and rstd stored as f32)
// Residual forward: res_out = bf16(res_in + delta) is stored first, then the row that is
// normalised is res_out AS STORED (the bf16 values), so forward and backward (which reads
// res_out as its `inp`) see the same numbers.
// Backward, per row, with norm = (x - mean) * rstd and dnorm = w * dout:
//   dinp += rstd * (dnorm - mean_C(dnorm) - norm * mean_C(dnorm * norm))
//   dw   += sum over rows of dout * norm
//   db   += sum over rows of dout
//
// Kernels and geometry (N rows, C channels; any N >= 1, any C >= 1, no upper limit on C):
//   layernorm_forward(bf16* out, float* mean, float* rstd, const bf16* inp, const bf16* w,
//                     const bf16* b, int N, int C)
//   residual_layernorm_forward(bf16* res_out, bf16* ln_out, float* mean, float* rstd,
//                     const bf16* res_in, const bf16* delta, const bf16* w, const bf16* b,
//                     int N, int C)
//       block 256 = 8 warps, one warp per row (8 rows per block), grid ceil(N / 8). The warp
//       walks its row three times (sum, squared deviations, output); lane l takes elements
//       l*V, l*V + 32V, ... with V = 8 (16-byte loads) when C % 8 == 0 and every pointer is
//       16-byte aligned, else V = 1 (2-byte loads). Passes 2 and 3 re-read the row (1.5 KB at
//       C = 768), which comes from L1/L2, not HBM. Row sums: per-lane partial sums in a fixed
//       order, then the fixed warp butterfly (warp_sum): deterministic.
//       Aliasing: out may alias inp; res_out may alias res_in (in-place residual) or delta;
//       ln_out, mean and rstd must not alias anything else. Every element is read and written
//       by the same thread, which is what makes the allowed aliasing safe.
//   layernorm_backward_dinp(bf16* dinp, float* partials, const bf16* dout, const bf16* inp,
//                     const bf16* w, const float* mean, const float* rstd, int N, int C)
//       block 256, grid ceil(N / 32): block k owns rows [32k, 32k + 32).
//       Phase A: warp j computes the two row means of rows 32k + j, +8, +16, +24 (dout, inp, w
//       read along the row, 16-byte loads when C % 8 == 0 and aligned, as in the forward),
//       kept in shared memory. Phase B: thread t owns columns t, t + 256,
//       ... of the block's rows and walks the rows in order: writes dinp (read-modify-write, one
//       bf16 rounding) and sums dout * norm and dout over its 32 rows in registers, then stores
//       partials[k][c] (dw part) and partials[k][C + c] (db part). A column belongs to one thread,
//       so no atomics and a fixed row order. Phase B re-reads dout and inp (from L2).
//   layernorm_backward_dweight(bf16* dw, bf16* db, const float* partials, int num_partials, int C)
//       block (32, 8), grid ceil(2C / 32): virtual column j < 2C (j < C: dw[j], else db[j - C]).
//       Thread (x, y) sums partials y, y + 8, y + 16, ... of column j in order; thread y == 0 then
//       adds the 8 sums in y order and does dw[j] = bf16(dw[j] + total) (f32 math, one rounding).
//       The result depends only on the data, N and C (never on the device): deterministic.
//       partials holds num_partials * 2C floats (num_partials = ceil(N / 32)).
//       Aliasing: dinp, dw, db must not alias any input (pointers are __restrict__).
//
// Vectorized variants (the kernels above stay as the readable reference):
//   layernorm_forward_vec{NV}(same arguments as layernorm_forward)
//   residual_layernorm_forward_vec{NV}(same arguments as residual_layernorm_forward)
//       NV in {1, 2, 4, 8}: C <= 256 NV. One warp per row, 8 rows per 256-thread block, grid
//       ceil(N / 8), as the reference; lane l holds elements (l + 32 j) * 8 .. + 7 for j < NV in
//       registers as packed bf16 (4 registers per 8 values), read from HBM once with 16-byte
//       loads (residual: res_in and delta read, the bf16 sum stored once to res_out and kept),
//       so passes 2 and 3 work from registers instead of re-reading the row. Same per-lane
//       order of the sums as the reference's 16-byte path, so the same bits.
//   layernorm_backward_dinp_vec(same arguments as layernorm_backward_dinp), then the reference
//       layernorm_backward_dweight: block 256, grid ceil(N / 32), 32 rows per block as the
//       reference (same scratch). Phase A is the reference's (warp per row, 16-byte loads, the
//       two row means in shared memory). Phase B walks the columns 8 at a time: with V = C / 8
//       vector columns, thread t owns vector column t % V of row group g = t / V and walks rows
//       g, g + G, g + 2G, ... of the block (G = 256 / V groups when V <= 128, else G = 1 and
//       thread t owns vector columns t, t + 256, ...), with 16-byte loads of dout, inp and dinp
//       and a 16-byte store of dinp, accumulating dw and db for its 8 columns in registers.
//       With G > 1 the groups' sums go to shared memory and group 0 adds them in group order;
//       the block's partial sums are stored with 16-byte f32 stores. No atomics, fixed orders:
//       bit-identical across runs. dinp is bitwise the reference's; dw/db sum the rows of a
//       block in a different (fixed) order when G > 1.
//   All need C % 8 == 0 and 16-byte aligned pointers (bf16 operands and the partials): the
//   launcher checks, and otherwise runs the reference kernels.
//
// Cost at GPT-2 124M (N = B*T = 8192, C = 768, 6.3M elements):
//   forward:           reads 2 B + writes 2 B per element = 25 MB   -> 7.5 us at 3.35 TB/s
//                      (H100 SXM), 5.2 us at 4.8 TB/s (H200)
//   residual forward:  reads 4 B + writes 4 B per element = 50 MB   -> 15 us / 10.5 us
//   backward:          reads dout, inp (4 B) + read/write dinp (4 B) = 50 MB -> 15 us / 10.5 us,
//                      plus partials 256 x 1536 x 4 B = 1.6 MB written and read back
//                      (L2-resident); phase B re-reads dout and inp from L2 (a block's 32 rows
//                      are 96 KB).
//   FLOPs: ~8 per element forward, ~15 backward (~0.1 GFLOP): at ~67 f32 TFLOP/s that is ~2 us,
//   so every kernel here is memory-bound (arithmetic intensity ~1-2 FLOP/B vs the H100 balance
//   point of ~20 FLOP/B). Target: >= 80% of measured copy bandwidth. What keeps the references
//   below it: three passes over the row from L1 in the forward (3x the load instructions), and
//   in the backward the column walk's 2-byte accesses (one per element per row, 8x the vec
//   kernel's). A warp of the forward vec kernels has a whole row (1.5 KB at C = 768) in flight
//   at once. Harness-tested, ptxas-assembled, not timed.
#include "common.cuh"
#include "vec.cuh"

#define LN_EPS 1e-5f
#define LN_FWD_WARPS 8    // rows per forward block
#define LN_BWD_ROWS 32    // rows per backward block (layernorm_backward_dinp)
#define LN_BWD_THREADS 256

// V consecutive bf16 values <-> V floats. V = 8 is one 16-byte access (p must be 16-B aligned).
template <int V>
__device__ __forceinline__ void load_row(float (&f)[V], const bf16* p) {
    if constexpr (V == 8) {
        uint4 raw = *reinterpret_cast<const uint4*>(p);
        const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
        for (int k = 0; k < 4; k++) {
            float2 t = __bfloat1622float2(h[k]);
            f[2 * k] = t.x;
            f[2 * k + 1] = t.y;
        }
    } else {
#pragma unroll
        for (int k = 0; k < V; k++) f[k] = to_f32(p[k]);
    }
}

template <int V>
__device__ __forceinline__ void store_row(bf16* p, const float (&f)[V]) {
    if constexpr (V == 8) {
        uint4 raw;
        __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&raw);
#pragma unroll
        for (int k = 0; k < 4; k++) h[k] = __floats2bfloat162_rn(f[2 * k], f[2 * k + 1]);
        *reinterpret_cast<uint4*>(p) = raw;
    } else {
#pragma unroll
        for (int k = 0; k < V; k++) p[k] = to_bf16(f[k]);
    }
}

__device__ __forceinline__ bool aligned16(const void* p) {
    return ((uintptr_t)p & 15) == 0;
}

// One row, one warp. RESIDUAL: x = bf16(res_in + delta) is written to res_out in pass 1 and
// read back from there (the same lane reads exactly the elements it wrote). V: see header; the
// caller guarantees C % V == 0 and alignment when V == 8.
template <int V, bool RESIDUAL>
__device__ __forceinline__ void layernorm_row(bf16* out, float* mean, float* rstd, bf16* res_out,
                                              const bf16* res_in, const bf16* delta,
                                              const bf16* inp, const bf16* w, const bf16* b,
                                              int row, int C, int lane) {
    size_t base = (size_t)row * C;
    const bf16* x = RESIDUAL ? res_out + base : inp + base;

    // Pass 1: sum (and, fused, the residual add).
    float sum = 0.0f;
    for (int i = lane * V; i < C; i += 32 * V) {
        float v[V];
        if constexpr (RESIDUAL) {
            float a[V], d[V];
            load_row<V>(a, res_in + base + i);
            load_row<V>(d, delta + base + i);
#pragma unroll
            for (int k = 0; k < V; k++) v[k] = to_f32(to_bf16(a[k] + d[k]));  // as stored
            store_row<V>(res_out + base + i, v);  // exact: v is bf16-representable
        } else {
            load_row<V>(v, x + i);
        }
#pragma unroll
        for (int k = 0; k < V; k++) sum += v[k];
    }
    float m = warp_sum(sum) / (float)C;

    // Pass 2: variance about the mean.
    float sq = 0.0f;
    for (int i = lane * V; i < C; i += 32 * V) {
        float v[V];
        load_row<V>(v, x + i);
#pragma unroll
        for (int k = 0; k < V; k++) {
            float dv = v[k] - m;
            sq += dv * dv;
        }
    }
    float var = warp_sum(sq) / (float)C;
    float s = 1.0f / sqrtf(var + LN_EPS);

    // Pass 3: normalise, scale, shift.
    for (int i = lane * V; i < C; i += 32 * V) {
        float v[V], wv[V], bv[V], o[V];
        load_row<V>(v, x + i);
        load_row<V>(wv, w + i);
        load_row<V>(bv, b + i);
#pragma unroll
        for (int k = 0; k < V; k++) o[k] = (v[k] - m) * s * wv[k] + bv[k];
        store_row<V>(out + base + i, o);
    }
    if (lane == 0) {
        mean[row] = m;
        rstd[row] = s;
    }
}

extern "C" __global__ void __launch_bounds__(256)
layernorm_forward(bf16* out, float* mean, float* rstd, const bf16* inp, const bf16* w,
                  const bf16* b, int N, int C) {
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int row = blockIdx.x * LN_FWD_WARPS + warp;
    if (row >= N) return;  // whole warp: no barriers in this kernel
    bool vec = (C % 8 == 0) && aligned16(out) && aligned16(inp) && aligned16(w) && aligned16(b);
    if (vec)
        layernorm_row<8, false>(out, mean, rstd, nullptr, nullptr, nullptr, inp, w, b, row, C, lane);
    else
        layernorm_row<1, false>(out, mean, rstd, nullptr, nullptr, nullptr, inp, w, b, row, C, lane);
}

extern "C" __global__ void __launch_bounds__(256)
residual_layernorm_forward(bf16* res_out, bf16* ln_out, float* mean, float* rstd,
                           const bf16* res_in, const bf16* delta, const bf16* w, const bf16* b,
                           int N, int C) {
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int row = blockIdx.x * LN_FWD_WARPS + warp;
    if (row >= N) return;
    bool vec = (C % 8 == 0) && aligned16(res_out) && aligned16(ln_out) && aligned16(res_in) &&
               aligned16(delta) && aligned16(w) && aligned16(b);
    if (vec)
        layernorm_row<8, true>(ln_out, mean, rstd, res_out, res_in, delta, nullptr, w, b, row, C,
                               lane);
    else
        layernorm_row<1, true>(ln_out, mean, rstd, res_out, res_in, delta, nullptr, w, b, row, C,
                               lane);
}

// One lane's share of a row's sums of dnorm and dnorm * norm (x: dnorm, y: dnorm * norm).
template <int V>
__device__ __forceinline__ float2 ln_bwd_row_sums(const bf16* dout, const bf16* inp,
                                                  const bf16* w, float m, float s, int C,
                                                  int lane) {
    float a = 0.0f, an = 0.0f;
    for (int i = lane * V; i < C; i += 32 * V) {
        float xv[V], dv[V], wv[V];
        load_row<V>(xv, inp + i);
        load_row<V>(dv, dout + i);
        load_row<V>(wv, w + i);
#pragma unroll
        for (int k = 0; k < V; k++) {
            float norm = (xv[k] - m) * s;
            float dnorm = wv[k] * dv[k];
            a += dnorm;
            an += dnorm * norm;
        }
    }
    return make_float2(a, an);
}

extern "C" __global__ void __launch_bounds__(LN_BWD_THREADS)
layernorm_backward_dinp(bf16* __restrict__ dinp, float* __restrict__ partials,
                        const bf16* __restrict__ dout, const bf16* __restrict__ inp,
                        const bf16* __restrict__ w, const float* __restrict__ mean,
                        const float* __restrict__ rstd, int N, int C) {
    __shared__ float s_mean[LN_BWD_ROWS], s_rstd[LN_BWD_ROWS];
    __shared__ float s_dnorm_mean[LN_BWD_ROWS], s_dnorm_norm_mean[LN_BWD_ROWS];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int row0 = blockIdx.x * LN_BWD_ROWS;
    int rows = min(LN_BWD_ROWS, N - row0);  // >= 1: grid = ceil(N / 32)

    // Phase A: per-row means of dnorm and dnorm * norm (one warp per row); 16-byte loads when
    // C % 8 == 0 and dout, inp, w are 16-byte aligned (this phase reads dout and inp from HBM).
    bool vec = (C % 8 == 0) && aligned16(dout) && aligned16(inp) && aligned16(w);
    for (int r = warp; r < rows; r += LN_BWD_THREADS / 32) {
        size_t base = (size_t)(row0 + r) * C;
        float m = mean[row0 + r], s = rstd[row0 + r];
        float2 sums = vec ? ln_bwd_row_sums<8>(dout + base, inp + base, w, m, s, C, lane)
                          : ln_bwd_row_sums<1>(dout + base, inp + base, w, m, s, C, lane);
        float a = warp_sum(sums.x);
        float an = warp_sum(sums.y);
        if (lane == 0) {
            s_mean[r] = m;
            s_rstd[r] = s;
            s_dnorm_mean[r] = a / (float)C;
            s_dnorm_norm_mean[r] = an / (float)C;
        }
    }
    __syncthreads();

    // Phase B: column-owner pass over the block's rows, in row order.
    float* part_w = partials + (size_t)blockIdx.x * 2 * C;
    float* part_b = part_w + C;
    for (int c = threadIdx.x; c < C; c += LN_BWD_THREADS) {
        float wc = to_f32(w[c]);
        float acc_w = 0.0f, acc_b = 0.0f;
#pragma unroll 4
        for (int r = 0; r < rows; r++) {
            size_t idx = (size_t)(row0 + r) * C + c;
            float d = to_f32(dout[idx]);
            float s = s_rstd[r];
            float norm = (to_f32(inp[idx]) - s_mean[r]) * s;
            float dnorm = wc * d;
            float g = s * (dnorm - s_dnorm_mean[r] - norm * s_dnorm_norm_mean[r]);
            dinp[idx] = to_bf16(to_f32(dinp[idx]) + g);
            acc_w += d * norm;
            acc_b += d;
        }
        part_w[c] = acc_w;
        part_b[c] = acc_b;
    }
}

extern "C" __global__ void __launch_bounds__(256)
layernorm_backward_dweight(bf16* __restrict__ dw, bf16* __restrict__ db,
                           const float* __restrict__ partials, int num_partials, int C) {
    __shared__ float s_sum[8][33];
    int j = blockIdx.x * 32 + threadIdx.x;  // virtual column in [0, 2C)
    int two_c = 2 * C;
    float acc = 0.0f;
    if (j < two_c) {
        for (int p = threadIdx.y; p < num_partials; p += 8) acc += partials[(size_t)p * two_c + j];
    }
    s_sum[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && j < two_c) {
        float total = 0.0f;
#pragma unroll
        for (int y = 0; y < 8; y++) total += s_sum[y][threadIdx.x];
        bf16* dst = j < C ? dw + j : db + (j - C);
        *dst = to_bf16(to_f32(*dst) + total);
    }
}

// ---------------------------------------------------------------------------------------------
// Vectorized variants.

// One row, one warp, the row in registers. NV: vectors of 8 per lane (C <= 256 NV, C % 8 == 0).
template <int NV, bool RESIDUAL>
__device__ __forceinline__ void layernorm_row_vec(bf16* out, float* mean, float* rstd,
                                                  bf16* res_out, const bf16* res_in,
                                                  const bf16* delta, const bf16* inp,
                                                  const bf16* w, const bf16* b, int row, int C,
                                                  int lane) {
    size_t base = (size_t)row * C;
    uint4 xr[NV];  // the row as stored, packed bf16

    // Pass 1: load (residual: add and store), sum.
    float sum = 0.0f;
#pragma unroll
    for (int j = 0; j < NV; j++) {
        int i = (lane + 32 * j) * 8;
        if (i < C) {
            float v[8];
            if constexpr (RESIDUAL) {
                float a[8], d[8];
                load_bf16x8(a, res_in + base + i);
                load_bf16x8(d, delta + base + i);
#pragma unroll
                for (int k = 0; k < 8; k++) v[k] = a[k] + d[k];
                xr[j] = pack_bf16x8(v);  // bf16(res_in + delta), RNE: what res_out holds
                st16(res_out + base + i, xr[j]);
            } else {
                xr[j] = ld16(inp + base + i);
            }
            unpack_bf16x8(v, xr[j]);
#pragma unroll
            for (int k = 0; k < 8; k++) sum += v[k];
        }
    }
    float m = warp_sum(sum) / (float)C;

    // Pass 2: variance about the mean, from registers.
    float sq = 0.0f;
#pragma unroll
    for (int j = 0; j < NV; j++) {
        int i = (lane + 32 * j) * 8;
        if (i < C) {
            float v[8];
            unpack_bf16x8(v, xr[j]);
#pragma unroll
            for (int k = 0; k < 8; k++) {
                float dv = v[k] - m;
                sq += dv * dv;
            }
        }
    }
    float var = warp_sum(sq) / (float)C;
    float s = 1.0f / sqrtf(var + LN_EPS);

    // Pass 3: normalise, scale, shift.
#pragma unroll
    for (int j = 0; j < NV; j++) {
        int i = (lane + 32 * j) * 8;
        if (i < C) {
            float v[8], wv[8], bv[8], o[8];
            unpack_bf16x8(v, xr[j]);
            load_bf16x8(wv, w + i);
            load_bf16x8(bv, b + i);
#pragma unroll
            for (int k = 0; k < 8; k++) o[k] = (v[k] - m) * s * wv[k] + bv[k];
            store_bf16x8(out + base + i, o);
        }
    }
    if (lane == 0) {
        mean[row] = m;
        rstd[row] = s;
    }
}

#define LN_FWD_VEC_KERNELS(NV)                                                                    \
    extern "C" __global__ void __launch_bounds__(256)                                            \
    layernorm_forward_vec##NV(bf16* out, float* mean, float* rstd, const bf16* inp,              \
                              const bf16* w, const bf16* b, int N, int C) {                      \
        int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;                                    \
        int row = blockIdx.x * LN_FWD_WARPS + warp;                                              \
        if (row >= N) return;                                                                    \
        layernorm_row_vec<NV, false>(out, mean, rstd, nullptr, nullptr, nullptr, inp, w, b, row, \
                                     C, lane);                                                   \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(256) residual_layernorm_forward_vec##NV(        \
        bf16* res_out, bf16* ln_out, float* mean, float* rstd, const bf16* res_in,               \
        const bf16* delta, const bf16* w, const bf16* b, int N, int C) {                         \
        int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;                                    \
        int row = blockIdx.x * LN_FWD_WARPS + warp;                                              \
        if (row >= N) return;                                                                    \
        layernorm_row_vec<NV, true>(ln_out, mean, rstd, res_out, res_in, delta, nullptr, w, b,   \
                                    row, C, lane);                                               \
    }

LN_FWD_VEC_KERNELS(1)
LN_FWD_VEC_KERNELS(2)
LN_FWD_VEC_KERNELS(4)
LN_FWD_VEC_KERNELS(8)

// Phase B of the vec backward for one vector column (channels c .. c + 7): rows r0, r0 + step,
// ... < rows of the block, in order. Writes dinp; adds the column's dw / db terms to aw / ab.
__device__ __forceinline__ void ln_bwd_column_vec(bf16* __restrict__ dinp,
                                                  const bf16* __restrict__ dout,
                                                  const bf16* __restrict__ inp,
                                                  const float (&wv)[8], const float* s_mean,
                                                  const float* s_rstd, const float* s_dm,
                                                  const float* s_dnm, int row0, int r0, int step,
                                                  int rows, int C, int c, float (&aw)[8],
                                                  float (&ab)[8]) {
#pragma unroll 4
    for (int r = r0; r < rows; r += step) {
        size_t idx = (size_t)(row0 + r) * C + c;
        float d[8], x[8], di[8];
        load_bf16x8(d, dout + idx);
        load_bf16x8(x, inp + idx);
        load_bf16x8(di, dinp + idx);
        float s = s_rstd[r], m = s_mean[r], dm = s_dm[r], dnm = s_dnm[r];
#pragma unroll
        for (int k = 0; k < 8; k++) {
            float norm = (x[k] - m) * s;
            float dnorm = wv[k] * d[k];
            float g = s * (dnorm - dm - norm * dnm);
            di[k] = di[k] + g;
            aw[k] += d[k] * norm;
            ab[k] += d[k];
        }
        store_bf16x8(dinp + idx, di);
    }
}

// (256, 2): at most 128 registers, so two blocks per SM; without the minimum, ptxas for sm_80
// picked 64-80 registers and spilled.
extern "C" __global__ void __launch_bounds__(LN_BWD_THREADS, 2)
layernorm_backward_dinp_vec(bf16* __restrict__ dinp, float* __restrict__ partials,
                            const bf16* __restrict__ dout, const bf16* __restrict__ inp,
                            const bf16* __restrict__ w, const float* __restrict__ mean,
                            const float* __restrict__ rstd, int N, int C) {
    __shared__ float s_mean[LN_BWD_ROWS], s_rstd[LN_BWD_ROWS];
    __shared__ float s_dnorm_mean[LN_BWD_ROWS], s_dnorm_norm_mean[LN_BWD_ROWS];
    __shared__ __align__(16) float s_acc[LN_BWD_THREADS][16];  // row groups' (dw, db) sums
    int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    int row0 = blockIdx.x * LN_BWD_ROWS;
    int rows = min(LN_BWD_ROWS, N - row0);

    // Phase A (as the reference's 16-byte path): the two row means, one warp per row.
    for (int r = warp; r < rows; r += LN_BWD_THREADS / 32) {
        size_t base = (size_t)(row0 + r) * C;
        float m = mean[row0 + r], s = rstd[row0 + r];
        float2 sums = ln_bwd_row_sums<8>(dout + base, inp + base, w, m, s, C, lane);
        float a = warp_sum(sums.x);
        float an = warp_sum(sums.y);
        if (lane == 0) {
            s_mean[r] = m;
            s_rstd[r] = s;
            s_dnorm_mean[r] = a / (float)C;
            s_dnorm_norm_mean[r] = an / (float)C;
        }
    }
    __syncthreads();

    // Phase B: vector columns x row groups.
    float* part_w = partials + (size_t)blockIdx.x * 2 * C;
    float* part_b = part_w + C;
    int V = C / 8;
    int G = V > LN_BWD_THREADS / 2 ? 1 : LN_BWD_THREADS / V;  // uniform over the block
    if (G == 1) {
        for (int cv = tid; cv < V; cv += LN_BWD_THREADS) {
            int c = cv * 8;
            float wv[8], aw[8], ab[8];
            load_bf16x8(wv, w + c);
#pragma unroll
            for (int k = 0; k < 8; k++) aw[k] = ab[k] = 0.0f;
            ln_bwd_column_vec(dinp, dout, inp, wv, s_mean, s_rstd, s_dnorm_mean,
                              s_dnorm_norm_mean, row0, 0, 1, rows, C, c, aw, ab);
            store_f32x8(part_w + c, aw);
            store_f32x8(part_b + c, ab);
        }
    } else {
        int g = tid / V, cv = tid - g * V, c = cv * 8;
        float aw[8], ab[8];
#pragma unroll
        for (int k = 0; k < 8; k++) aw[k] = ab[k] = 0.0f;
        if (g < G) {
            float wv[8];
            load_bf16x8(wv, w + c);
            ln_bwd_column_vec(dinp, dout, inp, wv, s_mean, s_rstd, s_dnorm_mean,
                              s_dnorm_norm_mean, row0, g, G, rows, C, c, aw, ab);
            store_f32x8(&s_acc[tid][0], aw);
            store_f32x8(&s_acc[tid][8], ab);
        }
        __syncthreads();
        if (g == 0) {
            // Group 0 adds groups 1 .. G-1 to its own sums, in group order.
            for (int gg = 1; gg < G; gg++) {
                float ow[8], ob[8];
                load_f32x8(ow, &s_acc[gg * V + cv][0]);
                load_f32x8(ob, &s_acc[gg * V + cv][8]);
#pragma unroll
                for (int k = 0; k < 8; k++) {
                    aw[k] += ow[k];
                    ab[k] += ob[k];
                }
            }
            store_f32x8(part_w + c, aw);
            store_f32x8(part_b + c, ab);
        }
    }
}
