// targets: sm_90a sm_80
//
// The data-parallel gradient sum (gpt/src/cuda/dist.rs): this rank's ZeRO-1 shard of the
// gradients, summed over the ranks in rank order by our own code, never by NCCL's reductions
// (whose order depends on the algorithm and topology), so N ranks reproduce themselves bit for
// bit on any interconnect.
//
//   rank_order_sum_bf16(bf16* out, const bf16* parts, size_t n, int ranks)
//     out[i] = bf16_rn( (((f32 p_0[i] + f32 p_1[i]) + f32 p_2[i]) + ...) ),  p_r = parts + r * n
//   block 256, grid ceil(n / 256): one thread per element, f32 accumulation, one rounding.
//   out must not overlap parts (the caller sums a staging buffer into the gradient shard).
//
// Cost per element: ranks x 2 B read + 2 B written, ranks - 1 adds: ~0.25 FLOP/B, memory-bound.
// Roofline (124M, 2 ranks: shard n = 62M, 374 MB moved): 112 us at H100 SXM's 3.35 TB/s, 78 us
// at H200's 4.8 TB/s; small next to moving the shards between GPUs (NVLink ~450 GB/s one way:
// ~280 us for 124 MB). 2-byte accesses keep it off the copy ceiling (like gelu's reference
// kernel); a 16-byte variant is the obvious next step if it ever shows in a profile.
// Harness-tested, ptxas-assembled, not run on a GPU.
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256)
rank_order_sum_bf16(bf16* out, const bf16* parts, size_t n, int ranks) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float s = to_f32(parts[i]);
    for (int r = 1; r < ranks; r++) s += to_f32(parts[(size_t)r * n + i]);
    out[i] = to_bf16(s);
}
