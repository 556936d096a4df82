// targets: sm_90a sm_80
//
// GELU, tanh approximation (GPT-2's), elementwise over n values.
//
//   forward   out[i] = 0.5 x (1 + tanh(s (x + 0.044715 x^3))),   s = sqrt(2/pi), x = inp[i]
//   backward  dinp[i] = dout[i] * gelu'(x),
//             gelu'(x) = 0.5 (1 + th) + 0.5 x (1 - th^2) s (1 + 3 * 0.044715 x^2),  th = tanh(...)
//
// bf16 storage, f32 math (tanhf, not the fast-math approximation). Two implementations of each
// direction, with the same per-element arithmetic (gelu_value / gelu_grad below), so they write
// the same bits:
//
//   gelu_forward / gelu_backward            (reference) one thread per element, 2-byte accesses.
//   gelu_forward_vec / gelu_backward_vec    one thread per 8 elements: 16-byte loads and stores
//       (vec.cuh). Requires every pointer 16-byte aligned (the launcher checks it and otherwise
//       runs the reference); any n: the thread whose 8-vector crosses n handles the 1..7-element
//       tail with 2-byte accesses.
//
// Parameters (device pointers, n elements each; out/dinp may alias inp/dout: each element, or
// each 8-vector, is read and then written by the same thread):
//   gelu_forward(bf16* out, const bf16* inp, size_t n)                   block 256, grid ceil(n/256)
//   gelu_backward(bf16* dinp, const bf16* inp, const bf16* dout, size_t n)  same geometry
//   gelu_forward_vec / gelu_backward_vec: same arguments, block 256, grid ceil(ceil(n/8) / 256)
//   dinp is overwritten (not accumulated), as llm.c does.
//
// Cost (GPT-2 124M MLP activation, B*T = 8192, 4C = 3072: n = 25.2M): forward moves 4 B per
// element (100 MB), backward 6 B (150 MB); ~20 FLOP per element including tanhf (a few MUFU
// ops + ~15 FMA-pipe ops): 5 (forward) / 3.3 (backward) FLOP/B, far below the f32 balance point
// (H100 SXM ~67 TFLOP/s / 3.35 TB/s = 20 FLOP/B), so memory-bound.
// Roofline: forward 100 MB / 3.35 TB/s = 30 us on H100 SXM, 21 us on H200 (4.8 TB/s); backward
// 45 us / 31 us. Target: >= 80% of the measured device-to-device copy bandwidth (tools/bench
// `copy_gbps`). The reference's 2-byte accesses need 8x the load/store instructions of the vec
// kernels (one 16-byte access per 8 elements), which is what keeps it off that target; the vec
// kernel keeps one 16-byte load (forward) or two (backward) in flight per thread, 32-64 KB per
// SM at full occupancy, above the ~18 KB per SM that 3.35 TB/s x ~0.7 us latency / 132 SMs
// needs. Harness-tested, ptxas-assembled, not timed.
#include "common.cuh"
#include "vec.cuh"

#define GELU_SCALE 0.7978845608028654f  // sqrt(2/pi)

__device__ __forceinline__ float gelu_value(float x) {
    float th = tanhf(GELU_SCALE * (x + 0.044715f * x * x * x));
    return 0.5f * x * (1.0f + th);
}

// dout * gelu'(x)
__device__ __forceinline__ float gelu_grad(float x, float dout) {
    float th = tanhf(GELU_SCALE * (x + 0.044715f * x * x * x));
    float dth = (1.0f - th * th) * GELU_SCALE * (1.0f + 3.0f * 0.044715f * x * x);
    float grad = 0.5f * (1.0f + th) + 0.5f * x * dth;
    return dout * grad;
}

extern "C" __global__ void gelu_forward(bf16* out, const bf16* inp, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    out[i] = to_bf16(gelu_value(to_f32(inp[i])));
}

extern "C" __global__ void gelu_backward(bf16* dinp, const bf16* inp, const bf16* dout, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    dinp[i] = to_bf16(gelu_grad(to_f32(inp[i]), to_f32(dout[i])));
}

extern "C" __global__ void __launch_bounds__(256)
gelu_forward_vec(bf16* out, const bf16* inp, size_t n) {
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i + 8 <= n) {
        float x[8];
        load_bf16x8(x, inp + i);
#pragma unroll
        for (int k = 0; k < 8; k++) x[k] = gelu_value(x[k]);
        store_bf16x8(out + i, x);
    } else {
        for (; i < n; i++) out[i] = to_bf16(gelu_value(to_f32(inp[i])));  // tail: < 8 elements
    }
}

extern "C" __global__ void __launch_bounds__(256)
gelu_backward_vec(bf16* dinp, const bf16* inp, const bf16* dout, size_t n) {
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i + 8 <= n) {
        float x[8], d[8];
        load_bf16x8(x, inp + i);
        load_bf16x8(d, dout + i);
#pragma unroll
        for (int k = 0; k < 8; k++) d[k] = gelu_grad(x[k], d[k]);
        store_bf16x8(dinp + i, d);
    } else {
        for (; i < n; i++) dinp[i] = to_bf16(gelu_grad(to_f32(inp[i]), to_f32(dout[i])));  // tail
    }
}
