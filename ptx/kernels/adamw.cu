// targets: sm_90a sm_80
//
// AdamW on FP32 master weights, writing BF16 parameters with stochastic rounding.
//
// For each i in [offset, offset + n) of the flat parameter buffer (t = step, from 1):
//   g       = grads[i] * grad_scale                         (grad_scale: clip factor, or 1)
//   m[i]    = beta1 m[i] + (1 - beta1) g
//   v[i]    = beta2 v[i] + (1 - beta2) g^2
//   master -= lr * ( (m[i] / c1) / (sqrt(v[i] / c2) + eps) + weight_decay * master )
//   params[i] = bf16_stochastic(master[i], sr_hash(seed, index_base + i))
// with c1 = 1 - beta1^t and c2 = 1 - beta2^t computed on the host (llm.c's form). Both kernels
// below run exactly this per element (adamw_element), so they write the same bits.
//
// Stochastic rounding: sr_hash (common.cuh) is splitmix64's finalizer of
// index + seed * 0x9E3779B97F4A7C15, high 32 bits; its low 16 bits are added below the bf16
// mantissa before truncation. The index is index_base + i: i is the element's index in the
// buffers passed, index_base the global index of their element 0 (0 for whole buffers; a ZeRO-1
// rank, whose master/m/v hold only its shard, passes the shard's start). So the rounding keys on
// the element's place in the model, not on launch geometry, range split or sharding: a shard's
// update writes the bits of the same slice of the full update. The host should pass a fresh
// seed each step (e.g. a hash of run seed and step), else an element rounds alike every step.
//
// adamw_update (reference): one contiguous range per launch, one thread per element, scalar
//   accesses. Weight decay per range: the host launches it once per parameter tensor (llm.c
//   layout: matrices decayed, biases and layernorm gains not), passing weight_decay = 0 for the
//   others. Pointers are the BASE pointers of the whole buffers; the kernel touches only
//   [offset, offset + n).
//     adamw_update(bf16* params, float* master, const bf16* grads, float* m, float* v,
//                  unsigned long long index_base, size_t offset, size_t n, float lr,
//                  float beta1, float beta2, float beta1_correction, float beta2_correction,
//                  float eps, float weight_decay, float grad_scale, unsigned int seed)
//     block 256, grid ceil(n / 256).
//
// adamw_update_multi: every parameter in ONE launch. The ranges come as a table passed by value
//   (AdamwTable: up to ADAMW_MAX_SEGMENTS sorted, disjoint [start, end) ranges of the flat
//   buffers and a bit per range: decayed or not; the host merges neighbouring tensors with the
//   same setting, so GPT-2's 16 tensors are 10 ranges). One thread per aligned 8-vector
//   [8q, 8q + 8) of the buffers, over the vectors that meet a range: it finds its range in the
//   table (a scan of <= 16 entries in parameter memory), and if all 8 elements lie in ranges
//   (possibly two neighbouring ones with different decay) it moves them with 16-byte accesses
//   (vec.cuh: grads 1, master/m/v 2 each, params 1), else (a range's first or last vector, or a
//   gap) it updates the elements that lie in a range one by one. The element update is the
//   reference's, weight_decay applied as `weight_decay` or 0 per element, so the results are
//   bitwise those of one adamw_update launch per range. Base pointers 16-byte aligned (the
//   launcher checks, and otherwise runs adamw_update per range).
//     adamw_update_multi(bf16* params, float* master, const bf16* grads, float* m, float* v,
//                        unsigned long long index_base, const AdamwTable table, float lr,
//                        float beta1, float beta2, float beta1_correction,
//                        float beta2_correction, float eps, float weight_decay,
//                        float grad_scale, unsigned int seed)
//     block 256, grid ceil((ceil(end / 8) - floor(start / 8)) / 256) over the table's span.
//
// adamw_update_multi_dev: adamw_update_multi with the step's scalars read from device memory
//   (StepParams, step.cuh, written by the host before the step; the clip factor from
//   StepState, written by step_finish from the norm on the device), so that the optimizer step
//   needs no host round trip and a captured CUDA graph stays valid as lr, t and the seed change.
//   Skips the update when StepState::halted is set (a non-finite loss or norm).
//     adamw_update_multi_dev(bf16* params, float* master, const bf16* grads, float* m, float* v,
//                            unsigned long long index_base, const AdamwTable table,
//                            const StepParams* p, const StepState* st)
//     geometry as adamw_update_multi.
//
// Cost per parameter: read grad (2 B), master/m/v (12 B), write master/m/v (12 B) and param
// (2 B): 28 B, ~20 FLOP plus the hash (~10 integer ops): memory-bound. GPT-2 124M (124.4M
// parameters): 3.48 GB, 1.04 ms at the H100 SXM's 3.35 TB/s, 0.73 ms at the H200's 4.8 TB/s.
// The per-range reference launches 16 grids (one per tensor, the small ones a few blocks each,
// each paying launch latency and a tail) with 4-byte and 2-byte accesses; the multi-tensor
// kernel is one grid with 7 16-byte loads (112 B) in flight per thread. Target: >= 80% of the
// measured copy bandwidth. Harness-tested, ptxas-assembled, not timed.
#include "common.cuh"
#include "step.cuh"
#include "vec.cuh"

#define ADAMW_MAX_SEGMENTS 16

// The ranges of one multi-tensor launch; must match AdamwTable in gpt/src/cuda/kernels/adamw.rs
// (repr(C): 16 + 16 u64, then two u32: 264 bytes).
struct AdamwTable {
    unsigned long long start[ADAMW_MAX_SEGMENTS];
    unsigned long long end[ADAMW_MAX_SEGMENTS];
    unsigned int count;       // 1..ADAMW_MAX_SEGMENTS ranges, sorted, disjoint, non-empty
    unsigned int decay_mask;  // bit s: range s is decayed
};

// One element; returns the new master weight (m, v, master updated through the references).
__device__ __forceinline__ float adamw_element(float grad, float& mi, float& vi, float w,
                                               float lr, float beta1, float beta2,
                                               float beta1_correction, float beta2_correction,
                                               float eps, float weight_decay, float grad_scale) {
    float g = grad * grad_scale;
    mi = beta1 * mi + (1.0f - beta1) * g;
    vi = beta2 * vi + (1.0f - beta2) * g * g;
    float mhat = mi / beta1_correction;
    float vhat = vi / beta2_correction;
    w -= lr * (mhat / (sqrtf(vhat) + eps) + weight_decay * w);
    return w;
}

extern "C" __global__ void adamw_update(bf16* params, float* master, const bf16* grads, float* m,
                                        float* v, unsigned long long index_base, size_t offset,
                                        size_t n, float lr, float beta1, float beta2,
                                        float beta1_correction, float beta2_correction,
                                        float eps, float weight_decay, float grad_scale,
                                        unsigned int seed) {
    size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    size_t i = offset + j;
    float mi = m[i], vi = v[i];
    float w = adamw_element(to_f32(grads[i]), mi, vi, master[i], lr, beta1, beta2,
                            beta1_correction, beta2_correction, eps, weight_decay, grad_scale);
    m[i] = mi;
    v[i] = vi;
    master[i] = w;
    params[i] = to_bf16_stochastic(w, sr_hash(seed, index_base + i));
}

// The multi-tensor update of the 8-vector this thread owns (adamw_update_multi's body, shared
// with adamw_update_multi_dev so that both write the same bits).
__device__ __forceinline__ void adamw_multi_vector(bf16* params, float* master, const bf16* grads,
                                                   float* m, float* v,
                                                   unsigned long long index_base,
                                                   const AdamwTable& table, float lr,
                                                   float beta1, float beta2,
                                                   float beta1_correction, float beta2_correction,
                                                   float eps, float weight_decay, float grad_scale,
                                                   unsigned int seed) {
    const int count = (int)table.count;
    size_t q = table.start[0] / 8 + (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t i0 = q * 8;
    if (i0 >= table.end[count - 1]) return;
    // The first range that ends after i0, then per element: inside a range, and its decay.
    int s = 0;
    while (s < count - 1 && table.end[s] <= i0) s++;
    float wd[8];
    bool in[8];
    bool full = true;
#pragma unroll
    for (int k = 0; k < 8; k++) {
        size_t i = i0 + k;
        while (s < count - 1 && table.end[s] <= i) s++;
        in[k] = i >= table.start[s] && i < table.end[s];
        wd[k] = ((table.decay_mask >> s) & 1u) ? weight_decay : 0.0f;
        full = full && in[k];
    }
    if (full) {
        float g[8], mi[8], vi[8], w[8];
        load_bf16x8(g, grads + i0);
        load_f32x8(mi, m + i0);
        load_f32x8(vi, v + i0);
        load_f32x8(w, master + i0);
        uint4 p;
        unsigned short* ph = reinterpret_cast<unsigned short*>(&p);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            w[k] = adamw_element(g[k], mi[k], vi[k], w[k], lr, beta1, beta2, beta1_correction,
                                 beta2_correction, eps, wd[k], grad_scale);
            uint32_t r = sr_hash(seed, index_base + i0 + k);
            ph[k] = __bfloat16_as_ushort(to_bf16_stochastic(w[k], r));
        }
        store_f32x8(m + i0, mi);
        store_f32x8(v + i0, vi);
        store_f32x8(master + i0, w);
        st16(params + i0, p);
    } else {
        for (int k = 0; k < 8; k++) {
            if (!in[k]) continue;
            size_t i = i0 + k;
            float mi = m[i], vi = v[i];
            float w = adamw_element(to_f32(grads[i]), mi, vi, master[i], lr, beta1, beta2,
                                    beta1_correction, beta2_correction, eps, wd[k], grad_scale);
            m[i] = mi;
            v[i] = vi;
            master[i] = w;
            params[i] = to_bf16_stochastic(w, sr_hash(seed, index_base + i));
        }
    }
}

extern "C" __global__ void __launch_bounds__(256)
adamw_update_multi(bf16* params, float* master, const bf16* grads, float* m, float* v,
                   unsigned long long index_base, const __grid_constant__ AdamwTable table,
                   float lr, float beta1, float beta2, float beta1_correction,
                   float beta2_correction, float eps, float weight_decay, float grad_scale,
                   unsigned int seed) {
    adamw_multi_vector(params, master, grads, m, v, index_base, table, lr, beta1, beta2,
                       beta1_correction, beta2_correction, eps, weight_decay, grad_scale, seed);
}

extern "C" __global__ void __launch_bounds__(256)
adamw_update_multi_dev(bf16* params, float* master, const bf16* grads, float* m, float* v,
                       unsigned long long index_base, const __grid_constant__ AdamwTable table,
                       const StepParams* p, const StepState* st) {
    if (st->halted) return;  // a non-finite loss or norm: no update (step.cu)
    adamw_multi_vector(params, master, grads, m, v, index_base, table, p->lr, p->beta1, p->beta2,
                       p->beta1_correction, p->beta2_correction, p->eps, p->weight_decay,
                       st->grad_scale, p->seed);
}
