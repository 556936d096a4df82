// targets: sm_90a sm_80
//
// Fused classifier: softmax + cross-entropy loss (+ the logits gradient, in place), one row at a
// time, never storing probabilities. Semantics = gpt/src/cpu/ops.rs `classifier`.
//
// Per row r (x = logits[r, 0..Vp) as f32, t = targets[r], V real vocabulary <= Vp padded):
//   M    = max(x[0..V)),  S = sum over j < V of e^(x[j] - M)
//   loss = M + ln(S) - x[t]                                       -> losses[r] (f32)
//   with write_dlogits != 0 (dloss = s, the weight of this row's loss, e.g. 1 / (B*T)):
//     logits[r, j] = bf16( e^(x[j] - M) * (s / S) - (j == t ? s : 0) )   for j < V
//     logits[r, j] = 0                                                    for V <= j < Vp
//   i.e. s * (softmax - onehot(t)); the padding columns get exactly 0.
//
// Targets are assumed valid (0 <= t < V): the backend checks them on the host when it uploads
// them. As a cheap guard, an out-of-range target gives loss = NaN and no -s term (no
// out-of-bounds read), so a bad target shows up as a NaN loss instead of memory corruption.
//
// Kernel:
//   classifier_forward_backward(bf16* logits, float* losses, const int* targets, int Vp, int V,
//                               float dloss, int write_dlogits)
//   block 1024 threads, grid N (one block per row; N <= 2^31 - 1).
// Work split: pass 1 (online softmax statistics): thread k walks elements k*W, k*W + 1024W, ...
//   (W = 8: 16-byte loads when Vp % 8 == 0 and logits is 16-byte aligned, else W = 1), keeping
//   a running (m, s) with s = sum e^(x - m): per load it takes the max of its W values, rescales
//   s once if the max grew, then adds the W exponentials. The 1024 (m, s) pairs are merged with
//   (m, s) + (m', s') = (M, s e^(m - M) + s' e^(m' - M)), M = max(m, m'): first a xor butterfly
//   inside each warp (the merge is commutative, so every lane ends with bitwise the same pair),
//   then warp 0 merges the 32 warp pairs (one per lane) with the same butterfly and publishes
//   the result through shared memory. Fixed order everywhere: deterministic. Pass 2 (only with write_dlogits): the same threads re-read the
//   row (L2/L1-resident: 100 KB at Vp = 50304) and overwrite it with the gradient, 0 over the
//   padding. x[t] is read by thread 0 before the barrier that precedes any write.
// Exponentials: e^(x - M) = exp2f(x * log2(e) - M * log2(e)) (one FMA + MUFU.EX2, ~2 ulp);
//   relative error ~1e-6 at |x| ~ 50, far below the bf16 output rounding (2^-9).
// NaN logits make the loss NaN (they poison S); +inf logits give NaN too, and so can -inf ones
// (-inf - -inf) when a thread's first value is -inf: logits are assumed finite.
//
// Cost at GPT-2 124M (N = B*T = 8192, Vp = 50304, V = 50257: 412M logits), H100 ~3.0 TB/s:
//   loss only:      reads 2 B per logit = 824 MB                    -> ~0.27 ms
//   with dlogits:   reads 2 B + writes 2 B per logit from HBM (pass 2's re-read hits L2: at
//                   most 132 SMs x 2 blocks x 100 KB = 26 MB of rows in flight) = 1.65 GB
//                   -> ~0.55 ms
//   FLOPs: ~5 per logit and pass (FMA, max, EX2, add, scale) ~ 4 GFLOP -> ~0.07 ms at ~60 f32
//   TFLOP/s (MUFU.EX2 at 16/clk/SM: 0.8G exps ~ 0.2 ms): memory-bound, with the exponentials
//   the next limit.
#include "common.cuh"

#define CLS_THREADS 1024
#define LOG2E 1.4426950408889634f

template <int W>
__device__ __forceinline__ void load_w(float (&f)[W], const bf16* p) {
    if constexpr (W == 8) {
        uint4 raw = *reinterpret_cast<const uint4*>(p);
        const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
        for (int k = 0; k < 4; k++) {
            float2 t = __bfloat1622float2(h[k]);
            f[2 * k] = t.x;
            f[2 * k + 1] = t.y;
        }
    } else {
        f[0] = to_f32(p[0]);
    }
}

template <int W>
__device__ __forceinline__ void store_w(bf16* p, const float (&f)[W]) {
    if constexpr (W == 8) {
        uint4 raw;
        __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&raw);
#pragma unroll
        for (int k = 0; k < 4; k++) h[k] = __floats2bfloat162_rn(f[2 * k], f[2 * k + 1]);
        *reinterpret_cast<uint4*>(p) = raw;
    } else {
        p[0] = to_bf16(f[0]);
    }
}

// s * e^(m - M): the contribution of a partial pair (m, s) rebased to max M >= m. A pair that
// saw no element has m = -inf and s = 0 and contributes 0 (avoids -inf - -inf = NaN).
__device__ __forceinline__ float rebase(float s, float m, float M) {
    return m == -INFINITY ? 0.0f : s * exp2f((m - M) * LOG2E);
}

// Merge (m2, s2) into (m, s). Commutative bit for bit: fmaxf and one float add of two terms.
__device__ __forceinline__ void merge(float& m, float& s, float m2, float s2) {
    float M = fmaxf(m, m2);
    s = rebase(s, m, M) + rebase(s2, m2, M);
    m = M;
}

// Butterfly merge over the 32 lanes; every lane ends with bitwise the same pair (merge is
// commutative), and the order is fixed: deterministic.
__device__ __forceinline__ void warp_merge(float& m, float& s) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        float m2 = __shfl_xor_sync(0xFFFFFFFFu, m, offset);
        float s2 = __shfl_xor_sync(0xFFFFFFFFu, s, offset);
        merge(m, s, m2, s2);
    }
}

static_assert(CLS_THREADS == 32 * 32, "the cross-warp merge gives warp 0 one lane per warp");

template <int W>
__device__ __forceinline__ void classifier_row(bf16* row, float* loss_out, int target, int Vp,
                                               int V, float dloss, int write_dlogits) {
    __shared__ float s_m[CLS_THREADS / 32], s_s[CLS_THREADS / 32];
    int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    bool target_ok = target >= 0 && target < V;
    if (!target_ok) target = -1;  // matches no column below
    float x_target = 0.0f;
    if (tid == 0 && target_ok) x_target = to_f32(row[target]);  // before any write to the row

    // Pass 1: online max / sum of exponentials.
    float m = -INFINITY, s = 0.0f;
    for (int j = tid * W; j < V; j += CLS_THREADS * W) {
        float x[W];
        load_w<W>(x, row + j);  // in bounds: j + W <= Vp (Vp % W == 0)
        float vmax = -INFINITY;
#pragma unroll
        for (int k = 0; k < W; k++)
            if (j + k < V) vmax = fmaxf(vmax, x[k]);
        if (vmax > m) {
            s *= exp2f((m - vmax) * LOG2E);  // m = -inf: s = 0 * 0 = 0
            m = vmax;
        }
        float mk = m * LOG2E;
#pragma unroll
        for (int k = 0; k < W; k++)
            if (j + k < V) s += exp2f(fmaf(x[k], LOG2E, -mk));
    }
    warp_merge(m, s);
    if (lane == 0) {
        s_m[warp] = m;
        s_s[warp] = s;
    }
    __syncthreads();
    // Warp 0 merges the 32 warp pairs (one per lane) with the same butterfly and publishes the
    // row's (M, S) in slot 0 (only lane 0 reads slot 0, before it writes it; the other warps
    // read it after the barrier).
    if (warp == 0) {
        m = s_m[lane];
        s = s_s[lane];
        warp_merge(m, s);
        if (lane == 0) {
            s_m[0] = m;
            s_s[0] = s;
        }
    }
    __syncthreads();
    m = s_m[0];
    s = s_s[0];
    if (tid == 0) *loss_out = target_ok ? m + logf(s) - x_target : __int_as_float(0x7FC00000);
    if (!write_dlogits) return;

    // Pass 2: overwrite the row with dloss * (softmax - onehot(target)), 0 over the padding.
    float scale = dloss / s;
    float mk = m * LOG2E;
    for (int j = tid * W; j < Vp; j += CLS_THREADS * W) {
        float x[W];
        load_w<W>(x, row + j);
#pragma unroll
        for (int k = 0; k < W; k++) {
            int jk = j + k;
            float g = jk < V ? exp2f(fmaf(x[k], LOG2E, -mk)) * scale : 0.0f;
            if (jk == target) g -= dloss;
            x[k] = g;
        }
        store_w<W>(row + j, x);
    }
}

extern "C" __global__ void __launch_bounds__(CLS_THREADS)
classifier_forward_backward(bf16* logits, float* losses, const int* targets, int Vp, int V,
                            float dloss, int write_dlogits) {
    bf16* row = logits + (size_t)blockIdx.x * Vp;
    int target = targets[blockIdx.x];
    if (Vp % 8 == 0 && ((uintptr_t)logits & 15) == 0)
        classifier_row<8>(row, losses + blockIdx.x, target, Vp, V, dloss, write_dlogits);
    else
        classifier_row<1>(row, losses + blockIdx.x, target, Vp, V, dloss, write_dlogits);
}
