// targets: sm_90a sm_80
//
// Encoder: token + position embedding, forward and deterministic backward.
//
//   forward   out[b,t,c] = wte[tok[b,t], c] + wpe[t, c]            (bf16 in, f32 add, bf16 out)
//   backward  dwte[v,c] += sum over (b,t) with tok[b,t] == v of dout[b,t,c]
//             dwpe[t,c] += sum over b of dout[b,t,c]
//
// Determinism: no float atomics. dwpe: one thread per (t,c) adds its B terms in b order. dwte:
// the host groups positions by token (a stable counting sort of the B*T token ids it already has
// on the CPU) into CSR form: uniq[u] = token id, starts[u]..starts[u+1] index into positions[],
// which lists b*T+t ascending within each token. One thread per (u,c) adds its terms in that
// order. Same inputs -> bit-identical gradients on every run and every launch geometry.
//
// Parameters (all pointers are device pointers; tensors row-major, contiguous):
//   encoder_forward(bf16* out[B*T*C], const int* tok[B*T], const bf16* wte[V*C],
//                   const bf16* wpe[maxT*C], int B, int T, int C)
//       block 256, grid ceil(B*T*C / 256). Token ids must be in [0, V): not checked here.
//   encoder_backward_wpe(bf16* dwpe[maxT*C], const bf16* dout[B*T*C], int B, int T, int C)
//       block 256, grid ceil(T*C / 256). Accumulates into dwpe (gradient accumulation).
//   encoder_backward_wte(bf16* dwte[V*C], const bf16* dout[B*T*C], const int* uniq[nu],
//                        const int* starts[nu+1], const int* positions[B*T], int nu, int C)
//       block 256, grid (ceil(C / 256), nu). Accumulates into dwte rows of the used tokens only.
//       nu <= 65535 (grid.y limit): always true for GPT-2, whose vocabulary is 50257.
//
// Vectorized variants (same sums in the same order, so the same bits as the kernels above):
//   encoder_forward_vec(same arguments)      block 256, grid ceil(B*T*C / 8 / 256): one thread
//       per 8 channels of one (b, t): one 16-byte load of wte and of wpe, one 16-byte store.
//   encoder_backward_wpe_vec(same arguments) block 256, grid ceil(T*C / 8 / 256): one thread per
//       8 channels of one t, 16-byte loads of dout for b = 0..B-1 in order, 16-byte RMW of dwpe.
//   encoder_backward_wte_vec(same arguments) block (min(256, 32 * ceil(C / 256)), 1),
//       grid (ceil(C / 8 / blockDim.x), nu): one thread per 8 channels of one token row; the
//       positions' dout rows are read 16 bytes per lane (a warp reads 512 contiguous bytes).
//   All three need C % 8 == 0 and every bf16 pointer 16-byte aligned (the launcher checks both
//   and otherwise runs the scalar kernels).
//
// Cost (GPT-2 124M, B*T = 8*1024 = 8192, C = 768): forward reads 2 * 2 B and writes 2 B per
// output element: 6 * 6.3M = 38 MB; 1 add per element, so purely memory-bound: 11 us at the
// H100 SXM's 3.35 TB/s, 8 us at the H200's 4.8 TB/s (wte rows of repeated tokens may hit L2,
// so the HBM bytes can be fewer). Backward reads dout twice (12.6 MB each) plus the touched
// rows of dwte/dwpe (read + write): ~60 MB, ~18 us / 13 us at roofline. The scalar kernels
// issue 2-byte accesses (8x the memory instructions of the vec kernels); the vec kernels keep
// one 16-byte load per input in flight per thread, and the wte kernel's loop over a token's
// positions is unrolled by 4 so that several dout loads are in flight. What limits the wte
// backward is the spread of positions per token (most tokens of a batch occur a few times, so
// each block is short); target >= 80% of measured copy bandwidth for the forward and the wpe
// backward. Harness-tested, ptxas-assembled, not timed.
#include "common.cuh"
#include "vec.cuh"

extern "C" __global__ void encoder_forward(bf16* out, const int* tok, const bf16* wte,
                                           const bf16* wpe, int B, int T, int C) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t total = (size_t)B * T * C;
    if (idx >= total) return;
    size_t bt = idx / C;
    int c = (int)(idx - bt * C);
    int t = (int)(bt % T);
    int token = tok[bt];
    out[idx] = to_bf16(to_f32(wte[(size_t)token * C + c]) + to_f32(wpe[(size_t)t * C + c]));
}

extern "C" __global__ void encoder_backward_wpe(bf16* dwpe, const bf16* dout, int B, int T, int C) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)T * C) return;
    float acc = 0.0f;
    for (int b = 0; b < B; b++) acc += to_f32(dout[(size_t)b * T * C + idx]);
    dwpe[idx] = to_bf16(to_f32(dwpe[idx]) + acc);
}

extern "C" __global__ void encoder_backward_wte(bf16* dwte, const bf16* dout, const int* uniq,
                                                const int* starts, const int* positions, int nu,
                                                int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    int u = blockIdx.y;
    if (c >= C || u >= nu) return;
    float acc = 0.0f;
    for (int k = starts[u]; k < starts[u + 1]; k++) acc += to_f32(dout[(size_t)positions[k] * C + c]);
    size_t dst = (size_t)uniq[u] * C + c;
    dwte[dst] = to_bf16(to_f32(dwte[dst]) + acc);
}

extern "C" __global__ void __launch_bounds__(256)
encoder_forward_vec(bf16* out, const int* tok, const bf16* wte, const bf16* wpe, int B, int T,
                    int C) {
    size_t idx = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    size_t total = (size_t)B * T * C;
    if (idx >= total) return;  // C % 8 == 0: a vector never crosses a row or the end
    size_t bt = idx / C;
    int c = (int)(idx - bt * C);
    int t = (int)(bt % T);
    int token = tok[bt];
    float a[8], p[8];
    load_bf16x8(a, wte + (size_t)token * C + c);
    load_bf16x8(p, wpe + (size_t)t * C + c);
#pragma unroll
    for (int k = 0; k < 8; k++) a[k] = a[k] + p[k];
    store_bf16x8(out + idx, a);
}

extern "C" __global__ void __launch_bounds__(256)
encoder_backward_wpe_vec(bf16* dwpe, const bf16* dout, int B, int T, int C) {
    size_t idx = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (idx >= (size_t)T * C) return;
    float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    for (int b = 0; b < B; b++) {
        float d[8];
        load_bf16x8(d, dout + (size_t)b * T * C + idx);
#pragma unroll
        for (int k = 0; k < 8; k++) acc[k] += d[k];
    }
    float g[8];
    load_bf16x8(g, dwpe + idx);
#pragma unroll
    for (int k = 0; k < 8; k++) g[k] = g[k] + acc[k];
    store_bf16x8(dwpe + idx, g);
}

extern "C" __global__ void __launch_bounds__(256)
encoder_backward_wte_vec(bf16* dwte, const bf16* dout, const int* uniq, const int* starts,
                         const int* positions, int nu, int C) {
    int c = (blockIdx.x * blockDim.x + threadIdx.x) * 8;
    int u = blockIdx.y;
    if (c >= C || u >= nu) return;
    float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    int end = starts[u + 1];
#pragma unroll 4
    for (int k = starts[u]; k < end; k++) {
        float d[8];
        load_bf16x8(d, dout + (size_t)positions[k] * C + c);
#pragma unroll
        for (int j = 0; j < 8; j++) acc[j] += d[j];
    }
    bf16* dst = dwte + (size_t)uniq[u] * C + c;
    float g[8];
    load_bf16x8(g, dst);
#pragma unroll
    for (int j = 0; j < 8; j++) g[j] = g[j] + acc[j];
    store_bf16x8(dst, g);
}
