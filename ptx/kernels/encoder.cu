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
// Cost (GPT-2 124M, B*T = 8*1024 = 8192, C = 768): forward reads 2 * 2 B and writes 2 B per
// output element: 6 * 6.3M = 38 MB, ~13 us at the ~3.0 TB/s measured H100 copy bandwidth; 1 add
// per element, so purely memory-bound. Backward reads dout twice (12.6 MB each) plus the touched
// rows of dwte/dwpe (read + write): ~60 MB, ~20 us at roofline. Scalar 2-byte accesses keep the
// code plain; vectorising to 16-byte loads (needs C % 8 == 0) is the first speed-up to try.
#include "common.cuh"

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
