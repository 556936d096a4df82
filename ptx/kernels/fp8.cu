// targets: sm_90a sm_89 sm_80
//
// The FP8 forward's operand kernels (docs/numerics.md sections 8 and 9): per-tensor amax, the
// tensor scale (current or delayed), and E4M3 quantization, bit for bit gpt/src/mx/fp8.rs
// (amax, tensor_scale, Fp8State::scale, quantize / quantize_to_f32). The GEMM that reads the
// quantized operands is fp8_gemm.cu.
//
// Kernels:
//   fp8_amax_partials(float* partials, const bf16* x, long long n, int vec)
//       block 256, grid G = amax_partials_len(n) (at most 1024): partials[b] = max |x| over the
//       finite elements block b visits (grid-stride, 8 elements per 16-byte load when `vec`:
//       x 16-byte aligned; a scalar tail). Max is exact: the result does not depend on G.
//   fp8_amax_finish(float* rec, const float* partials, int n, float* history, int h, int slot,
//                   unsigned long long* calls)
//       one block of 256: amax = max of the n partials; rec[0] = amax and rec[1] = the scale:
//         h == 0 (current scaling): 448 / amax (1 for amax 0, the largest f32 on overflow);
//         h > 0 (delayed: history = this tensor's ring of h amaxes, zeros empty): the same of
//           the ring's maximum, or of amax while the ring is empty; then a training call
//           records amax into its slot: slot >= 0, chosen by the caller (the plain path), or,
//           with calls non-NULL (slot -1), slot = calls[0] % h from the tensor's call count on
//           the device, which is then incremented: a replayed CUDA graph records into the slot
//           of each replay's call, not the one of the capture. Neither: not recorded.
//       Exactly Fp8State::scale: the window is read before this call is recorded.
//   fp8_quantize_e4m3(uint8_t* out, const bf16* x, long long n, const float* rec)
//       out[i] = E4M3(x[i] * rec[1]): one f32 multiply, then cvt.rn.satfinite.e4m3x2.f32 (sm_89+;
//       fp8.cuh's bit-exact software conversion on sm_80). Block 256, grid-stride, pairs.
//   fp8_quantize_bf16(bf16* out, const bf16* x, long long n, const float* rec)
//       out[i] = the value of that E4M3 byte as bf16 (exact: 4 significant bits, exponents
//       2^-9 .. 2^8): the operand of fp8_gemm.cu's fallback GEMM on GPUs without FP8 mma.
//   fp8_stats_partials(double* partials, const bf16* x, long long n, const float* rec)
//       the telemetry of quantizing x with scale rec[1] (docs/numerics.md section 7), in
//       mx_quantize.cu's layout (mx.cuh, MX_TELEMETRY_FIELDS per block), over the finite x:
//       sum (q / s - x)^2 and sum x^2 in f64, saturated elements (|x s| > 464), 0 (no blocks
//       here), non-zero x flushed to zero; q = E4M3(x s) exactly as fp8_quantize_e4m3 forms it.
//       Block 256, grid FP8_STATS_BLOCKS (256, fixed: the sums depend on it); thread k of block
//       b visits i = b*256 + k stepping by 256 * 256; fixed butterfly, warps in order.
//       mx_telemetry_accumulate (mx_quantize.cu) sums the blocks. Training calls only; reads
//       2 B per element once more (plain, 2-byte loads).
//   fp8_convert_check(uint8_t* hw, uint8_t* sw, const float* x, int n)
//       a test kernel: hw[i] through cvt_e4m3x2_f32, sw[i] through e4m3_from_f32_sw, so both
//       conversions are compared with the CPU on arbitrary f32 (tests/tests/gpu_fp8.rs).
//
// Cost: amax reads 2 B per element, quantize reads 2 B and writes 1 B (e4m3) or 2 B (bf16): per
// FP8 GEMM call 5 B per operand element on top of the GEMM's own 1 B. Memory-bound: at GPT-2
// 124M (8192 x 768 activations, 768 x 3072 weights) the operand passes move ~31-126 MB per
// linear, 10-42 us on an H100 at ~3 TB/s, against 10-39 us for the GEMM itself at its ideal:
// current scaling doubles the cost of a small linear's forward unless fused (a later issue).
#include "fp8.cuh"
#include "mx.cuh"
#include "ptx_ops.cuh"

#define FP8_THREADS 256
#define FP8_MAX_BLOCKS 1024

__device__ __forceinline__ float block_max(float v, float* sm) {
    for (int m = 16; m > 0; m /= 2) v = fmaxf(v, __shfl_xor_sync(0xFFFFFFFFu, v, m));
    if (threadIdx.x % 32 == 0) sm[threadIdx.x / 32] = v;
    __syncthreads();
    float r = 0.0f;
    for (int w = 0; w < FP8_THREADS / 32; w++) r = fmaxf(r, sm[w]);
    return r;
}

extern "C" __global__ void __launch_bounds__(FP8_THREADS)
fp8_amax_partials(float* partials, const bf16* x, long long n, int vec) {
    __shared__ float sm[FP8_THREADS / 32];
    const long long stride = (long long)gridDim.x * FP8_THREADS;
    const long long first = (long long)blockIdx.x * FP8_THREADS + threadIdx.x;
    float m = 0.0f;
    long long done = 0;
    if (vec) {
        const long long chunks = n / 8;
        for (long long c = first; c < chunks; c += stride) {
            const uint4 raw = reinterpret_cast<const uint4*>(x)[c];
            const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
            for (int p = 0; p < 4; p++) {
                const float2 f = __bfloat1622float2(h[p]);
                m = amax_finite(amax_finite(m, f.x), f.y);
            }
        }
        done = chunks * 8;
    }
    for (long long i = done + first; i < n; i += stride) m = amax_finite(m, to_f32(x[i]));
    m = block_max(m, sm);
    if (threadIdx.x == 0) partials[blockIdx.x] = m;
}

extern "C" __global__ void __launch_bounds__(FP8_THREADS)
fp8_amax_finish(float* rec, const float* partials, int n, float* history, int h, int slot,
                unsigned long long* calls) {
    __shared__ float sm[FP8_THREADS / 32];
    float m = 0.0f;
    for (int i = threadIdx.x; i < n; i += FP8_THREADS) m = fmaxf(m, partials[i]);
    const float amax = block_max(m, sm);
    if (threadIdx.x != 0) return;
    float basis = amax;
    if (h > 0) {
        float w = 0.0f;
        for (int i = 0; i < h; i++) w = fmaxf(w, history[i]);
        if (w > 0.0f) basis = w;
        if (slot < 0 && calls != nullptr) {
            slot = (int)(calls[0] % (unsigned long long)h);
            calls[0] += 1;
        }
        if (slot >= 0) history[slot] = amax;
    }
    rec[0] = amax;
    rec[1] = fp8_scale_of_amax(basis);
}

extern "C" __global__ void __launch_bounds__(FP8_THREADS)
fp8_quantize_e4m3(uint8_t* out, const bf16* x, long long n, const float* rec) {
    const float s = rec[1];
    const long long stride = (long long)gridDim.x * FP8_THREADS;
    for (long long p = (long long)blockIdx.x * FP8_THREADS + threadIdx.x; 2 * p < n; p += stride) {
        const float a = __fmul_rn(to_f32(x[2 * p]), s);
        const float b = 2 * p + 1 < n ? __fmul_rn(to_f32(x[2 * p + 1]), s) : 0.0f;
        const uint32_t pair = cvt_e4m3x2_f32(b, a);  // a in the low byte
        out[2 * p] = (uint8_t)(pair & 0xFF);
        if (2 * p + 1 < n) out[2 * p + 1] = (uint8_t)(pair >> 8);
    }
}

extern "C" __global__ void __launch_bounds__(FP8_THREADS)
fp8_quantize_bf16(bf16* out, const bf16* x, long long n, const float* rec) {
    const float s = rec[1];
    const long long stride = (long long)gridDim.x * FP8_THREADS;
    for (long long p = (long long)blockIdx.x * FP8_THREADS + threadIdx.x; 2 * p < n; p += stride) {
        const float a = __fmul_rn(to_f32(x[2 * p]), s);
        const float b = 2 * p + 1 < n ? __fmul_rn(to_f32(x[2 * p + 1]), s) : 0.0f;
        const uint32_t pair = cvt_e4m3x2_f32(b, a);
        out[2 * p] = to_bf16(e4m3_to_f32(pair & 0xFF));
        if (2 * p + 1 < n) out[2 * p + 1] = to_bf16(e4m3_to_f32(pair >> 8));
    }
}

extern "C" __global__ void __launch_bounds__(FP8_THREADS)
fp8_stats_partials(double* partials, const bf16* x, long long n, const float* rec) {
    __shared__ double part[FP8_THREADS / 32][MX_TELEMETRY_FIELDS];
    const float s = rec[1];
    const double inv = 1.0 / (double)s;
    double sq_err = 0.0, sq_x = 0.0, saturated = 0.0, flushed = 0.0;
    const long long stride = (long long)gridDim.x * FP8_THREADS;
    for (long long i = (long long)blockIdx.x * FP8_THREADS + threadIdx.x; i < n; i += stride) {
        const float v = to_f32(x[i]);
        if (!isfinite(v)) continue;
        const float scaled = __fmul_rn(v, s);
        const float q = e4m3_to_f32(cvt_e4m3x2_f32(0.0f, scaled) & 0xFF);
        saturated += fabsf(scaled) > 464.0f ? 1.0 : 0.0;
        flushed += (v != 0.0f && q == 0.0f) ? 1.0 : 0.0;
        const double err = (double)q * inv - (double)v;
        sq_err += err * err;
        sq_x += (double)v * (double)v;
    }
    double t[MX_TELEMETRY_FIELDS] = {sq_err, sq_x, saturated, 0.0, flushed};
    telemetry_block_store<FP8_THREADS / 32>(t, part, partials);
}

extern "C" __global__ void __launch_bounds__(FP8_THREADS)
fp8_convert_check(uint8_t* hw, uint8_t* sw, const float* x, int n) {
    const int i = blockIdx.x * FP8_THREADS + threadIdx.x;
    if (i >= n) return;
    hw[i] = (uint8_t)(cvt_e4m3x2_f32(0.0f, x[i]) & 0xFF);
    sw[i] = (uint8_t)e4m3_from_f32_sw(x[i]);
}
