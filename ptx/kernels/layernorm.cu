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
// Cost at GPT-2 124M (N = B*T = 8192, C = 768, 6.3M elements), H100 roofline ~3.0 TB/s:
//   forward:           reads 2 B + writes 2 B per element = 25 MB   -> ~8 us
//   residual forward:  reads 4 B + writes 4 B per element = 50 MB   -> ~17 us
//   backward:          reads dout, inp (4 B) + read/write dinp (4 B) = 50 MB -> ~17 us, plus
//                      partials 256 x 1536 x 4 B = 1.6 MB written and read back (L2-resident).
//   FLOPs: ~8 per element forward, ~15 backward (~0.1 GFLOP): at ~60 f32 TFLOP/s that is ~2 us,
//   so every kernel here is memory-bound (arithmetic intensity ~1-2 FLOP/B vs the H100 balance
//   point of ~20 FLOP/B).
#include "common.cuh"

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
