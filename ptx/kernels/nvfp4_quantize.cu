// targets: sm_90a sm_80
//
// NVFP4 quantization of one GEMM operand (docs/numerics.md section 10), bit for bit the CPU's
// gpt::mx::nvfp4::quantize_rows (with hadamard.rs and philox.rs for the recipe's transform and
// stochastic rounding): E2M1 elements in blocks of 16 along K, an E4M3 scale per block, and one
// FP32 scale per tensor, s_enc = 2688 / amax. The tensor scale needs the amax of the whole
// operand before any block can be rounded, so it is three launches, all on the device (no host
// round trip, deterministic: max is exact in any order):
//
//   1. nvfp4_amax_{rowwise,colwise}: per tile, max |x| over the finite elements of the operand
//      as it will be quantized (after the transform, if any) -> amax_partials[tile];
//   2. nvfp4_tensor_scale: one block reduces the partials -> enc[0] = amax, enc[1] = s_enc
//      (2688 / amax; 1 for amax 0; the largest f32 where the quotient overflows);
//   3. nvfp4_quantize_{rowwise,colwise}_{rtn,sr}: reads enc[1] and writes codes and scales.
//
// The operand. `src` is a row-major bf16 matrix [R, C]; K-major output as in mx_quantize.cu:
//   rowwise:  output row r < R, k < K = C:   x(r, k) = src[r * C + k]   (dgrad's dY)
//   colwise:  output row r < C, k < K = R:   x(r, k) = src[k * C + r]   (dgrad's W; wgrad's dY
//             and X, quantized along the tokens)
// g = 16 applies the recipe's RHT to every 16-segment of a row first: multiply by the fixed
// signs (word j of `sign_stream`, bit 31: negative), butterflies h = 1, 2, 4, 8 ((a, b) ->
// (a + b, a - b)), then one multiply by 0.25 (= 1/sqrt(16), exact); g = 0: no transform.
//
// Per block of 16 (quantize_block in nvfp4.rs, the same f32 operations in the same order):
//   any NaN/Inf -> scale byte 0x7F, codes 0, counted non-finite;
//   amax_b = max |x|; t = (amax_b / 6) * s_enc (a division, then a multiply); the scale byte is
//   E4M3(t) (cvt.rn.satfinite.e4m3x2, section 8) with value s_b; s_b = 0 -> codes 0;
//   else r = s_enc / s_b and per element a = |x * r|:
//     RTN: nearest of 0 .5 1 1.5 2 3 4 6, ties to the even code, > 5 -> 6 (a > 6 counted clipped)
//     SR:  a >= 6 -> 6 (a > 6 counted clipped), else up from the grid point below with
//          probability (a - lo) / (hi - lo) against the uniform of the element's Philox word
//          (element (r, k) uses word r * K + k of `sr_stream`, as MXFP4).
//   The code's bit 3 is x's sign bit.
//
// Outputs (quantize kernels): codes [rows, K/2] (element 2i in the low nibble of byte i),
// scales [rows, K/16] E4M3 bytes, and optional telemetry partials double[5 * tiles]: this
// tile's (sum (Q(x) - x)^2, sum x^2 over finite blocks, clipped, non-finite blocks, underflows;
// mx.cuh's MX_TELEMETRY_FIELDS), Q(x) =
// code * s_b / s_enc, in the layout of mx_quantize.cu, so mx_telemetry_accumulate sums both.
// The squares are computed in double per element as the CPU does, and summed in a different
// order: equal to rounding.
//
// Work split (mx_quantize.cu's): a block of 256 threads owns a tile of 32 output rows x 256 k,
// loaded into shared memory with 16-byte loads (colwise: along src's rows, transposed on the
// store). Each warp takes 4 of the rows; lane l holds k = 8l .. 8l + 7, so an NVFP4 block is a
// lane pair and a 16-segment of the RHT too (its h = 8 butterfly is one __shfl_xor by 1). Grid
// (ceil(K / 256), ceil(rows / 32)), the same for all three passes. Requires K % 16 == 0,
// C % 8 == 0, src 16-byte aligned (the launcher checks).
//
// Cost per element: pass 1 reads 2 B; pass 3 reads 2 B and writes 0.5 + 1/16 B: 4.6 B in all,
// against 2.5 B for MXFP4's single pass (the tensor scale is the price of a second read). The
// arithmetic (a division per block, a few dozen f32 and integer operations per element, one
// Philox call per 4 elements under SR) stays under the memory time on an H100 (~3 TB/s, ~60
// TFLOP/s f32): a 124M wgrad operand of 8192 x 3072 (25M elements) moves ~116 MB, ~39 us at
// bandwidth. Memory-bound.
#include "mx.cuh"
#include "ptx_ops.cuh"

#define NVQ_ROWS 32     // output rows per tile
#define NVQ_K 256       // k per tile (one warp row: 32 lanes x 8)
#define NVQ_THREADS 256
#define NVQ_PAD 8       // bf16 of padding per shared row (16 B)
#define NVQ_BLOCK 16    // elements per NVFP4 block: a lane pair

enum { NVQ_AMAX = 0, NVQ_RTN = 1, NVQ_SR = 2 };

template <bool COLWISE, int MODE>
__device__ __forceinline__ void nvfp4_impl(const bf16* __restrict__ src, int R, int C,
                                           float* amax_partials, const float* enc,
                                           uint8_t* codes, uint8_t* scales, double* partials,
                                           uint64_t seed, uint64_t sr_stream,
                                           uint64_t sign_stream, int g) {
    __shared__ __align__(16) bf16 tile[NVQ_ROWS][NVQ_K + NVQ_PAD];
    __shared__ float signs[NVQ_BLOCK];
    __shared__ double part[NVQ_THREADS / 32][MX_TELEMETRY_FIELDS];
    __shared__ float warp_amax[NVQ_THREADS / 32];

    const int rows_out = COLWISE ? C : R, K = COLWISE ? R : C;
    const int k0 = blockIdx.x * NVQ_K, r0 = blockIdx.y * NVQ_ROWS;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;

    if (g > 0 && tid < NVQ_BLOCK) {
        const uint4 w = philox_quad(seed, sign_stream, (uint64_t)(tid >> 2));
        signs[tid] = (uint4_word(w, tid & 3) >> 31) ? -1.0f : 1.0f;
    }
    for (int i = tid; i < NVQ_ROWS * NVQ_K / 8; i += NVQ_THREADS) {
        uint4 v = make_uint4(0, 0, 0, 0);
        if (!COLWISE) {
            const int r = i / (NVQ_K / 8), kc = (i % (NVQ_K / 8)) * 8;
            if (r0 + r < rows_out && k0 + kc < K)
                v = *reinterpret_cast<const uint4*>(src + (size_t)(r0 + r) * C + k0 + kc);
            *reinterpret_cast<uint4*>(&tile[r][kc]) = v;
        } else {
            const int k = i / (NVQ_ROWS / 8), rc = (i % (NVQ_ROWS / 8)) * 8;
            if (k0 + k < K && r0 + rc < rows_out)
                v = *reinterpret_cast<const uint4*>(src + (size_t)(k0 + k) * C + r0 + rc);
            const bf16* e = reinterpret_cast<const bf16*>(&v);
#pragma unroll
            for (int j = 0; j < 8; j++) tile[rc + j][k] = e[j];
        }
    }
    __syncthreads();

    const float s_enc = MODE == NVQ_AMAX ? 1.0f : enc[1];
    float tile_amax = 0.0f;
    double sq_err_sum = 0.0, sq_x_sum = 0.0, nonfinite_sum = 0.0;
    // Clipped elements (bits 0-15) and underflows (bits 16-31) of this thread: at most 8 per row
    // and 4 rows, so neither field overflows; one register instead of two doubles.
    uint32_t counts = 0;
    for (int rr = warp; rr < NVQ_ROWS; rr += NVQ_THREADS / 32) {
        const int row = r0 + rr;
        if (row >= rows_out) break;  // warp-uniform
        const int k = k0 + 8 * lane;
        const bool active = k < K;
        float x[8];
        {
            const uint4 raw = *reinterpret_cast<const uint4*>(&tile[rr][8 * lane]);
            const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
            for (int p = 0; p < 4; p++) {
                const float2 f = __bfloat1622float2(h[p]);
                x[2 * p] = f.x;
                x[2 * p + 1] = f.y;
            }
        }
        if (g > 0) {
            // The 16-point RHT (hadamard.rs rht_row): signs, butterflies h = 1, 2, 4 in the lane,
            // h = 8 across the lane pair, then the exact 1/4.
#pragma unroll
            for (int v = 0; v < 8; v++) x[v] = __fmul_rn(x[v], signs[(8 * lane + v) % NVQ_BLOCK]);
#pragma unroll
            for (int h = 1; h < 8; h *= 2) {
#pragma unroll
                for (int v = 0; v < 8; v++) {
                    if (v & h) continue;
                    const float a = x[v], b = x[v + h];
                    x[v] = __fadd_rn(a, b);
                    x[v + h] = __fsub_rn(a, b);
                }
            }
            const bool upper = (lane & 1) != 0;  // holds the b of each h = 8 pair
#pragma unroll
            for (int v = 0; v < 8; v++) {
                const float other = __shfl_xor_sync(0xFFFFFFFFu, x[v], 1);
                x[v] = upper ? __fsub_rn(other, x[v]) : __fadd_rn(x[v], other);
            }
#pragma unroll
            for (int v = 0; v < 8; v++) x[v] = __fmul_rn(x[v], 0.25f);
        }

        if (MODE == NVQ_AMAX) {
            // Lanes past K hold the tile's zero padding: they add nothing.
#pragma unroll
            for (int v = 0; v < 8; v++) tile_amax = amax_finite(tile_amax, x[v]);
            continue;
        }

        // The block's amax and finiteness over its lane pair.
        float amax = 0.0f;
        bool finite = true;
#pragma unroll
        for (int v = 0; v < 8; v++) {
            finite = finite && isfinite(x[v]);
            amax = fmaxf(amax, fabsf(x[v]));
        }
        amax = fmaxf(amax, __shfl_xor_sync(0xFFFFFFFFu, amax, 1));
        finite = __shfl_xor_sync(0xFFFFFFFFu, (int)finite, 1) && finite;

        uint32_t words[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        if (MODE == NVQ_SR) {
            const uint64_t i0 = (uint64_t)row * (uint64_t)K + (uint64_t)k;
#pragma unroll
            for (int q = 0; q < 2; q++) {
                const uint4 w = philox_quad(seed, sr_stream, (i0 >> 2) + q);
                words[4 * q] = w.x;
                words[4 * q + 1] = w.y;
                words[4 * q + 2] = w.z;
                words[4 * q + 3] = w.w;
            }
        }

        uint32_t packed = 0, scale_byte;
        double block_err = 0.0, block_sq = 0.0;
        uint32_t row_counts = 0;
        if (!finite) {
            scale_byte = E4M3_NAN;
        } else {
            const float t = __fmul_rn(__fdiv_rn(amax, 6.0f), s_enc);
            scale_byte = cvt_e4m3x2_f32(0.0f, t) & 0xFFu;  // t >= 0: never NaN here
            const float s_b = e4m3_to_f32(scale_byte);
            if (s_b == 0.0f) {
#pragma unroll
                for (int v = 0; v < 8; v++) {
                    block_sq += (double)x[v] * (double)x[v];
                    row_counts += (uint32_t)(x[v] != 0.0f) << 16;  // every code is zero
                }
                block_err = block_sq;
            } else {
                const float r = __fdiv_rn(s_enc, s_b);
                const double deq = (double)s_b / (double)s_enc;
#pragma unroll
                for (int v = 0; v < 8; v++) {
                    const float a = fabsf(__fmul_rn(x[v], r));
                    row_counts += (uint32_t)(a > 6.0f);
                    uint32_t mag;
                    if (MODE == NVQ_SR) mag = a >= 6.0f ? 7u : sr_code(a, uniform24(words[v]));
                    else mag = rtn_code(a);
                    const uint32_t sign = __float_as_uint(x[v]) >> 31;
                    packed |= ((sign << 3) | mag) << (4 * v);
                    row_counts += (uint32_t)(mag == 0 && x[v] != 0.0f) << 16;
                    const double d = (double)e2m1_magnitude(mag) * deq - fabs((double)x[v]);
                    block_err += d * d;
                    block_sq += (double)x[v] * (double)x[v];
                }
            }
        }
        if (active) {
            const size_t at = (size_t)row * K + k;
            *reinterpret_cast<uint32_t*>(codes + at / 2) = packed;
            if (lane % 2 == 0) scales[at / NVQ_BLOCK] = (uint8_t)scale_byte;
            if (scale_byte != E4M3_NAN) {
                sq_err_sum += block_err;
                sq_x_sum += block_sq;
            }
            counts += row_counts;
            if (lane % 2 == 0 && scale_byte == E4M3_NAN) nonfinite_sum += 1.0;
        }
    }

    if (MODE == NVQ_AMAX) {
        // This tile's amax: warp butterflies, then warp 0's thread 0 over the 8 warps.
        for (int m = 16; m > 0; m /= 2)
            tile_amax = fmaxf(tile_amax, __shfl_xor_sync(0xFFFFFFFFu, tile_amax, m));
        if (lane == 0) warp_amax[warp] = tile_amax;
        __syncthreads();
        if (tid == 0) {
            float m = 0.0f;
            for (int w = 0; w < NVQ_THREADS / 32; w++) m = fmaxf(m, warp_amax[w]);
            amax_partials[(size_t)blockIdx.y * gridDim.x + blockIdx.x] = m;
        }
        return;
    }
    if (!partials) return;  // kernel-uniform
    double t[MX_TELEMETRY_FIELDS] = {sq_err_sum, sq_x_sum, (double)(counts & 0xFFFFu),
                                     nonfinite_sum, (double)(counts >> 16)};
    telemetry_block_store<NVQ_THREADS / 32>(t, part, partials);
}

#define NVFP4_AMAX_KERNEL(NAME, COLWISE)                                                         \
    extern "C" __global__ void __launch_bounds__(NVQ_THREADS)                                    \
        NAME(const bf16* src, int R, int C, float* amax_partials, uint64_t seed,                 \
             uint64_t sign_stream, int g) {                                                      \
        nvfp4_impl<COLWISE, NVQ_AMAX>(src, R, C, amax_partials, nullptr, nullptr, nullptr,       \
                                      nullptr, seed, 0, sign_stream, g);                         \
    }

// `sr_base`, `sign_base` (either may be NULL): device words added to the streams, as in
// mx_quantize.cu (the step and micro-batch bits of a replayed CUDA graph).

#define NVFP4_QUANTIZE_KERNEL(NAME, COLWISE, MODE)                                               \
    extern "C" __global__ void __launch_bounds__(NVQ_THREADS)                                    \
        NAME(const bf16* src, int R, int C, const float* enc, uint8_t* codes, uint8_t* scales,  \
             double* partials, uint64_t seed, uint64_t sr_stream, uint64_t sign_stream, int g,   \
             const uint64_t* sr_base, const uint64_t* sign_base) {                               \
        nvfp4_impl<COLWISE, MODE>(src, R, C, nullptr, enc, codes, scales, partials, seed,        \
                                  sr_stream + (sr_base ? *sr_base : 0),                          \
                                  sign_stream + (sign_base ? *sign_base : 0), g);                \
    }

NVFP4_AMAX_KERNEL(nvfp4_amax_rowwise, false)
NVFP4_AMAX_KERNEL(nvfp4_amax_colwise, true)
NVFP4_QUANTIZE_KERNEL(nvfp4_quantize_rowwise_rtn, false, NVQ_RTN)
NVFP4_QUANTIZE_KERNEL(nvfp4_quantize_rowwise_sr, false, NVQ_SR)
NVFP4_QUANTIZE_KERNEL(nvfp4_quantize_colwise_rtn, true, NVQ_RTN)
NVFP4_QUANTIZE_KERNEL(nvfp4_quantize_colwise_sr, true, NVQ_SR)

// enc[0] = max of partials[0 .. n), enc[1] = 2688 / enc[0] (nvfp4_scale_of_amax in fp8.cuh): one block of
// 256 threads, strided maxima, then a fixed tree (max is exact: any order gives the same bits).
extern "C" __global__ void __launch_bounds__(256)
nvfp4_tensor_scale(float* enc, const float* amax_partials, int n) {
    __shared__ float m[256];
    float v = 0.0f;
    for (int i = threadIdx.x; i < n; i += 256) v = fmaxf(v, amax_partials[i]);
    m[threadIdx.x] = v;
    __syncthreads();
    for (int s = 128; s > 0; s /= 2) {
        if ((int)threadIdx.x < s) m[threadIdx.x] = fmaxf(m[threadIdx.x], m[threadIdx.x + s]);
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        enc[0] = m[0];
        enc[1] = nvfp4_scale_of_amax(m[0]);
    }
}
