// targets: sm_90a sm_80
//
// The measured quantization noise of one 4-bit backward GEMM (docs/numerics.md section 7), on
// the steps where `--mx-telemetry-every` asks for it: q = the GEMM's 4-bit product and e = the
// same product from the unquantized bf16 operands, both bf16 [n]; the site's noise-to-gradient
// ratio is then sqrt(sum (q - e)^2 / sum e^2).
//
//   mx_noise_partials(double* partials, const bf16* q, const bf16* e, size_t n)
//       block 256, grid MX_NOISE_BLOCKS (= 256, fixed: the sums depend on it). Thread k of block
//       b visits i = b*256 + k, then steps by 256 * 256, adding (q - e)^2 and e^2 in f64 in that
//       order; the block reduces with the fixed warp butterfly and its 8 warp sums in order:
//       partials[2 b] = the block's sum of (q - e)^2, partials[2 b + 1] = its sum of e^2.
//   mx_noise_accumulate(double* total, double* site, const double* partials, int blocks)
//       block 32, grid 1: s0 = sum over j of partials[2 j], s1 = sum of partials[2 j + 1], j in
//       order; total[0] += s0, total[1] += s1, and the same into site (the accumulators keep a
//       whole step's sums: the step's and this GEMM site's).
//
// Deterministic: no atomics, a fixed grid. Cost: 4 B read and 6 FLOP per element: memory-bound
// (124M's largest product, 8192 x 3072, reads 100 MB: about 35 us at an H100's ~3 TB/s); it
// runs on measurement steps only, so it stays the plain version (2-byte loads).
#include "common.cuh"

#define MX_NOISE_THREADS 256

extern "C" __global__ void __launch_bounds__(MX_NOISE_THREADS)
    mx_noise_partials(double* partials, const bf16* q, const bf16* e, size_t n) {
    __shared__ double warp_sums[MX_NOISE_THREADS / 32][2];
    double noise = 0.0, exact = 0.0;
    const size_t stride = (size_t)gridDim.x * MX_NOISE_THREADS;
    for (size_t i = (size_t)blockIdx.x * MX_NOISE_THREADS + threadIdx.x; i < n; i += stride) {
        const double qv = (double)to_f32(q[i]), ev = (double)to_f32(e[i]);
        noise += (qv - ev) * (qv - ev);
        exact += ev * ev;
    }
    for (int m = 16; m > 0; m /= 2) {
        noise += __shfl_xor_sync(0xFFFFFFFFu, noise, m);
        exact += __shfl_xor_sync(0xFFFFFFFFu, exact, m);
    }
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) {
        warp_sums[warp][0] = noise;
        warp_sums[warp][1] = exact;
    }
    __syncthreads();
    if (threadIdx.x < 2) {
        double s = 0.0;
        for (int w = 0; w < MX_NOISE_THREADS / 32; w++) s += warp_sums[w][threadIdx.x];
        partials[2 * blockIdx.x + threadIdx.x] = s;
    }
}

extern "C" __global__ void mx_noise_accumulate(double* total, double* site,
                                               const double* partials, int blocks) {
    const int i = threadIdx.x;
    if (i >= 2) return;
    double s = 0.0;
    for (int j = 0; j < blocks; j++) s += partials[2 * j + i];
    total[i] += s;
    site[i] += s;
}
