// targets: sm_90a sm_80
//
// GELU, tanh approximation (GPT-2's), elementwise over n values.
//
//   forward   out[i] = 0.5 x (1 + tanh(s (x + 0.044715 x^3))),   s = sqrt(2/pi), x = inp[i]
//   backward  dinp[i] = dout[i] * gelu'(x),
//             gelu'(x) = 0.5 (1 + th) + 0.5 x (1 - th^2) s (1 + 3 * 0.044715 x^2),  th = tanh(...)
//
// bf16 storage, f32 math (tanhf, not the fast-math approximation). One thread per element.
//
// Parameters (device pointers, n elements each; out/dinp may alias inp/dout):
//   gelu_forward(bf16* out, const bf16* inp, size_t n)                   block 256, grid ceil(n/256)
//   gelu_backward(bf16* dinp, const bf16* inp, const bf16* dout, size_t n)  same geometry
//   dinp is overwritten (not accumulated), as llm.c does.
//
// Cost (GPT-2 124M MLP activation, B*T = 8192, 4C = 3072: n = 25.2M): forward moves 4 B per
// element (100 MB, ~34 us at ~3.0 TB/s measured H100 copy bandwidth) for ~20 FLOP including
// tanh: 5 FLOP/B, far below H100's ~20 FLOP/B f32 balance point, so memory-bound. Backward moves
// 6 B per element (150 MB, ~50 us).
#include "common.cuh"

#define GELU_SCALE 0.7978845608028654f  // sqrt(2/pi)

extern "C" __global__ void gelu_forward(bf16* out, const bf16* inp, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float x = to_f32(inp[i]);
    float th = tanhf(GELU_SCALE * (x + 0.044715f * x * x * x));
    out[i] = to_bf16(0.5f * x * (1.0f + th));
}

extern "C" __global__ void gelu_backward(bf16* dinp, const bf16* inp, const bf16* dout, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float x = to_f32(inp[i]);
    float th = tanhf(GELU_SCALE * (x + 0.044715f * x * x * x));
    float dth = (1.0f - th * th) * GELU_SCALE * (1.0f + 3.0f * 0.044715f * x * x);
    float grad = 0.5f * (1.0f + th) + 0.5f * x * dth;
    dinp[i] = to_bf16(to_f32(dout[i]) * grad);
}
