// targets: sm_90a sm_80
//
// AdamW on FP32 master weights, writing BF16 parameters with stochastic rounding.
//
// For each i in [offset, offset + n) of the flat parameter buffer (t = step, from 1):
//   g       = grads[i] * grad_scale                         (grad_scale: clip factor, or 1)
//   m[i]    = beta1 m[i] + (1 - beta1) g
//   v[i]    = beta2 v[i] + (1 - beta2) g^2
//   master -= lr * ( (m[i] / c1) / (sqrt(v[i] / c2) + eps) + weight_decay * master )
//   params[i] = bf16_stochastic(master[i], sr_hash(seed, i))
// with c1 = 1 - beta1^t and c2 = 1 - beta2^t computed on the host (llm.c's form).
//
// Weight decay per tensor range: the host launches this kernel once per contiguous range of the
// parameter buffer that shares a decay setting (llm.c layout: matrices decayed, biases and
// layernorm gains not), passing weight_decay = 0 for the others. Pointers are the BASE pointers
// of the whole buffers; the kernel touches only [offset, offset + n).
//
// Stochastic rounding: sr_hash (common.cuh) is splitmix64's finalizer of
// index + seed * 0x9E3779B97F4A7C15, high 32 bits; its low 16 bits are added below the bf16
// mantissa before truncation. The index is the global index i, so the rounding does not depend
// on launch geometry or range split. The host should pass a fresh seed each step (e.g. a hash of
// run seed and step), otherwise the same element rounds the same way every step.
//
// Parameters:
//   adamw_update(bf16* params, float* master, const bf16* grads, float* m, float* v,
//                size_t offset, size_t n, float lr, float beta1, float beta2,
//                float beta1_correction, float beta2_correction, float eps, float weight_decay,
//                float grad_scale, unsigned int seed)
//   block 256, grid ceil(n / 256).
//
// Cost per parameter: read grad (2 B), master/m/v (12 B), write master/m/v (12 B) and param
// (2 B): 28 B, ~20 FLOP. GPT-2 124M: 124M * 28 B = 3.5 GB, ~1.2 ms at the ~3.0 TB/s measured
// H100 copy bandwidth. Memory-bound.
#include "common.cuh"

extern "C" __global__ void adamw_update(bf16* params, float* master, const bf16* grads, float* m,
                                        float* v, size_t offset, size_t n, float lr, float beta1,
                                        float beta2, float beta1_correction,
                                        float beta2_correction, float eps, float weight_decay,
                                        float grad_scale, unsigned int seed) {
    size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    size_t i = offset + j;
    float g = to_f32(grads[i]) * grad_scale;
    float mi = beta1 * m[i] + (1.0f - beta1) * g;
    float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    float mhat = mi / beta1_correction;
    float vhat = vi / beta2_correction;
    float w = master[i];
    w -= lr * (mhat / (sqrtf(vhat) + eps) + weight_decay * w);
    master[i] = w;
    params[i] = to_bf16_stochastic(w, sr_hash(seed, (uint64_t)i));
}
