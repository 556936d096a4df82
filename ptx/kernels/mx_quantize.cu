// targets: sm_90a sm_80
//
// MXFP4 quantization of one GEMM operand, fused: read BF16, random Hadamard transform along K
// (optional), per-32 amax, E8M0 scale, round to E2M1 (RTN or SR), write the operand K-major.
// Bit for bit the CPU's gpt::mx (quantize.rs, hadamard.rs, philox.rs; docs/numerics.md):
// same f32 operations in the same order, the same Philox streams and counters.
//
// The operand. `src` is a row-major bf16 matrix [R, C]. Quantization runs along K:
//   rowwise:  output row r < R, k < K = C:   x(r, k) = src[r * C + k]   (dgrad's dY)
//   colwise:  output row r < C, k < K = R:   x(r, k) = src[k * C + r]   (dgrad's W; wgrad's dY
//             and X, which are quantized along the tokens)
// Both produce the same K-major result: element (r, k) at r * K + k, and MX block j of row r is
// k in [32 j, 32 j + 32). The colwise case transposes through shared memory on the way: no
// separate transpose pass. SR draws element (r, k)'s word at counter r * K + k of `sr_stream`.
//
// Per element, exactly as the CPU:
//   RHT (g > 0): for each g-segment of a row, x <- H_g (s .* x) / sqrt(g): multiply by the sign
//     (exact), butterflies h = 1, 2, ..., g/2 ((a, b) -> (a + b, a - b)), then one multiply
//     by the f32 constant 1/sqrt(g). Sign j of a segment = bit 31 of word j of `sign_stream`.
//   Block (32 elements): any NaN/Inf -> scale 0xFF, codes 0 (the step reports it);
//     amax = 0 -> scale byte 0, codes 0; else e = floor(log2 amax) - 2 from the exponent bits,
//     clamped to [-127, 127], scale byte e + 127, and per element
//       RTN: a = |x 2^-e|, code = nearest of 0 .5 1 1.5 2 3 4 6, ties to even, > 6 -> 6;
//       SR:  a = |x (0.75 2^-e)| (< 6), up with probability (a - lo) / (hi - lo) against the
//            uniform of the element's Philox word.
//     The code's bit 3 is x's sign bit.
//
// Outputs (either or both may be NULL):
//   codes   [rows_out, K/2] bytes: element 2i in the low nibble of byte i (Blackwell's layout)
//   scales  [rows_out, K/32] E8M0 bytes
//   deq     [rows_out, K] bf16: code value x 2^e (without SR's 4/3: the GEMM applies 16/9 once);
//           exact in bf16 for every e a finite f32 block produces; NaN for a non-finite block
//   telemetry: double partials[5 * gridDim.x * gridDim.y], this block's
//           (sum (Q(x) - x)^2, sum x^2 over finite blocks, clipped elements, non-finite blocks,
//           underflows), Q(x) including SR's 4/3, as the CPU's MxTelemetry (mx.cuh,
//           MX_TELEMETRY_FIELDS); mx_telemetry_accumulate sums them.
//
// Work split: a block of 256 threads (8 warps) owns a tile of 32 output rows x 256 k. It loads
// the tile into shared memory with 16-byte loads (rowwise: along k; colwise: along r, i.e. along
// the rows of src, transposed on the store), then each warp quantizes 4 of the rows: lane l
// holds k = 8l .. 8l + 7 (one 16-byte shared load), so a g-segment (g <= 256) spans g/8 lanes
// and the RHT's butterflies with h >= 8 are warp shuffles (__shfl_xor by h/8); an MX block is 4
// lanes, whose amax is two more shuffles. Grid (ceil(K / 256), ceil(rows_out / 32)).
// Requires K % 32 == 0, K % g == 0 (g in 16..256), C % 8 == 0, src 16-byte aligned
// (the launcher checks).
//
// Cost per element: read 2 B, write 0.5 B + 1/32 B (codes, scales) or 2 B (deq): 2.5-4 B.
// FLOPs are a few dozen per element (log2 g butterflies, 10-round Philox per 4 elements for
// SR): on an H100 (~3.0 TB/s, ~60 TFLOP/s f32) a 124M wgrad operand of 8192 x 3072 (25M
// elements) moves 63-100 MB: 21-33 us at bandwidth, and the Philox work (~2.5 G integer ops)
// stays below that. Memory-bound; the goal is >= 80% of the measured copy bandwidth.
#include "mx.cuh"

#define MXQ_ROWS 32     // output rows per block
#define MXQ_K 256       // k per block (one warp row: 32 lanes x 8)
#define MXQ_THREADS 256
#define MXQ_PAD 8       // bf16 of padding per shared row (16 B: rows stay 16-byte aligned)

template <bool COLWISE, bool SR>
__device__ __forceinline__ void mx_quantize_impl(const bf16* __restrict__ src, int R, int C,
                                                 uint8_t* codes, uint8_t* scales, bf16* deq,
                                                 double* partials, uint64_t seed,
                                                 uint64_t sr_stream, uint64_t sign_stream, int g) {
    __shared__ __align__(16) bf16 tile[MXQ_ROWS][MXQ_K + MXQ_PAD];
    __shared__ float signs[MXQ_K];
    __shared__ double part[MXQ_THREADS / 32][MX_TELEMETRY_FIELDS];

    const int rows_out = COLWISE ? C : R, K = COLWISE ? R : C;
    const int k0 = blockIdx.x * MXQ_K, r0 = blockIdx.y * MXQ_ROWS;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;

    // The g random signs of this GEMM (the same for every segment and both operands).
    if (g > 0 && tid < g) {
        const uint4 w = philox_quad(seed, sign_stream, (uint64_t)(tid >> 2));
        signs[tid] = (uint4_word(w, tid & 3) >> 31) ? -1.0f : 1.0f;
    }
    // The tile: tile[r][k] = x(r0 + r, k0 + k), zero outside the operand.
    for (int i = tid; i < MXQ_ROWS * MXQ_K / 8; i += MXQ_THREADS) {
        uint4 v = make_uint4(0, 0, 0, 0);
        if (!COLWISE) {
            const int r = i / (MXQ_K / 8), kc = (i % (MXQ_K / 8)) * 8;
            if (r0 + r < rows_out && k0 + kc < K)
                v = *reinterpret_cast<const uint4*>(src + (size_t)(r0 + r) * C + k0 + kc);
            *reinterpret_cast<uint4*>(&tile[r][kc]) = v;
        } else {
            const int k = i / (MXQ_ROWS / 8), rc = (i % (MXQ_ROWS / 8)) * 8;
            if (k0 + k < K && r0 + rc < rows_out)
                v = *reinterpret_cast<const uint4*>(src + (size_t)(k0 + k) * C + r0 + rc);
            const bf16* e = reinterpret_cast<const bf16*>(&v);
#pragma unroll
            for (int j = 0; j < 8; j++) tile[rc + j][k] = e[j];
        }
    }
    __syncthreads();

    const float rht_scale = g > 0 ? (float)(1.0 / sqrt((double)g)) : 1.0f;
    double sq_err_sum = 0.0, sq_x_sum = 0.0, nonfinite_sum = 0.0;
    // Clipped elements (bits 0-15) and underflows (bits 16-31) of this thread: at most 8 per row
    // and 4 rows, so neither field overflows; one register instead of two doubles.
    uint32_t counts = 0;
    for (int rr = warp; rr < MXQ_ROWS; rr += MXQ_THREADS / 32) {
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
#pragma unroll
            for (int v = 0; v < 8; v++) x[v] = __fmul_rn(x[v], signs[(8 * lane + v) % g]);
            // Butterflies inside the lane (h = 1, 2, 4), then across lanes (h = 8 .. g/2).
#pragma unroll
            for (int h = 1; h < 8; h *= 2) {
                if (h >= g) break;
#pragma unroll
                for (int v = 0; v < 8; v++) {
                    if (v & h) continue;
                    const float a = x[v], b = x[v + h];
                    x[v] = __fadd_rn(a, b);
                    x[v + h] = __fsub_rn(a, b);
                }
            }
            for (int h = 8; h < g; h *= 2) {
                const bool upper = (lane & (h / 8)) != 0;  // holds the b of each pair
#pragma unroll
                for (int v = 0; v < 8; v++) {
                    const float other = __shfl_xor_sync(0xFFFFFFFFu, x[v], h / 8);
                    x[v] = upper ? __fsub_rn(other, x[v]) : __fadd_rn(x[v], other);
                }
            }
#pragma unroll
            for (int v = 0; v < 8; v++) x[v] = __fmul_rn(x[v], rht_scale);
        }

        // The block's amax and finiteness over its 4 lanes.
        float amax = 0.0f;
        bool finite = true;
#pragma unroll
        for (int v = 0; v < 8; v++) {
            finite = finite && isfinite(x[v]);
            amax = fmaxf(amax, fabsf(x[v]));
        }
#pragma unroll
        for (int m = 1; m < 4; m *= 2) {
            amax = fmaxf(amax, __shfl_xor_sync(0xFFFFFFFFu, amax, m));
            finite = __shfl_xor_sync(0xFFFFFFFFu, (int)finite, m) && finite;
        }

        // Random words of this lane's 8 elements: element index i = row * K + k, two quads.
        uint32_t words[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        if (SR) {
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
        bool zero_block = false;
        float deq_v[8];
        float block_err = 0.0f, block_sq = 0.0f;
        uint32_t row_counts = 0;
        if (!finite) {
            scale_byte = MX_SCALE_NAN;
#pragma unroll
            for (int v = 0; v < 8; v++) deq_v[v] = __int_as_float(0x7FC00000);
        } else if (amax == 0.0f) {
            scale_byte = 0;
            zero_block = true;
#pragma unroll
            for (int v = 0; v < 8; v++) deq_v[v] = 0.0f;
        } else {
            const int e = min(max(floor_log2(amax) - 2, -127), 127);
            scale_byte = (uint32_t)(e + 127);
            const float unit = exp2i(-e);                          // exact for e in [-127, 127]
            const float mult = SR ? __fmul_rn(0.75f, unit) : unit;  // exact too
            const float deq_unit = SR ? (4.0f / 3.0f) : 1.0f;
            const float scale = exp2i(e);
#pragma unroll
            for (int v = 0; v < 8; v++) {
                const float a = fabsf(__fmul_rn(x[v], mult));
                uint32_t mag;
                if (SR) {
                    mag = sr_code(a, uniform24(words[v]));
                } else {
                    row_counts += (uint32_t)(a > 6.0f);
                    mag = rtn_code(a);
                }
                const uint32_t sign = __float_as_uint(x[v]) >> 31;
                packed |= ((sign << 3) | mag) << (4 * v);
                row_counts += (uint32_t)(mag == 0 && x[v] != 0.0f) << 16;
                const float q = e2m1_magnitude(mag);
                deq_v[v] = __fmul_rn(sign ? -q : q, scale);
                // Telemetry in units of 2^e, as the CPU (|x| 2^-e < 8: no overflow).
                const float xs = fabsf(__fmul_rn(x[v], unit));
                const float d = __fsub_rn(__fmul_rn(q, deq_unit), xs);
                block_err = __fmaf_rn(d, d, block_err);
                block_sq = __fmaf_rn(xs, xs, block_sq);
            }
        }
        if (active) {
            const size_t at = (size_t)row * K + k;
            if (codes) *reinterpret_cast<uint32_t*>(codes + at / 2) = packed;
            if (scales && lane % 4 == 0) scales[at / MX_BLOCK] = (uint8_t)scale_byte;
            if (deq) {
                uint4 out;
                __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&out);
#pragma unroll
                for (int p = 0; p < 4; p++) h[p] = __floats2bfloat162_rn(deq_v[2 * p], deq_v[2 * p + 1]);
                *reinterpret_cast<uint4*>(deq + at) = out;
            }
            if (partials && scale_byte != MX_SCALE_NAN && !zero_block) {
                const double four_e = ldexp(1.0, 2 * ((int)scale_byte - 127));
                sq_err_sum += (double)block_err * four_e;
                sq_x_sum += (double)block_sq * four_e;
            }
            counts += row_counts;
            if (lane % 4 == 0 && scale_byte == MX_SCALE_NAN) nonfinite_sum += 1.0;
        }
    }
    if (!partials) return;  // kernel-uniform
    double t[MX_TELEMETRY_FIELDS] = {sq_err_sum, sq_x_sum, (double)(counts & 0xFFFFu),
                                     nonfinite_sum, (double)(counts >> 16)};
    telemetry_block_store<MXQ_THREADS / 32>(t, part, partials);
}

// `sr_base`, `sign_base` (either may be NULL): device words added to `sr_stream` /
// `sign_stream`, so that a CUDA graph captured once replays with the step and micro-batch bits
// of the stream that the host writes there before each replay (gpt/src/cuda/step.rs); the
// stream's other bits come by value.
#define MX_QUANTIZE_KERNEL(NAME, COLWISE, SR)                                                      \
    extern "C" __global__ void __launch_bounds__(MXQ_THREADS)                                      \
        NAME(const bf16* src, int R, int C, uint8_t* codes, uint8_t* scales, bf16* deq,            \
             double* partials, uint64_t seed, uint64_t sr_stream, uint64_t sign_stream, int g,     \
             const uint64_t* sr_base, const uint64_t* sign_base) {                                 \
        mx_quantize_impl<COLWISE, SR>(src, R, C, codes, scales, deq, partials, seed,               \
                                      sr_stream + (sr_base ? *sr_base : 0),                        \
                                      sign_stream + (sign_base ? *sign_base : 0), g);              \
    }

MX_QUANTIZE_KERNEL(mx_quantize_rowwise_rtn, false, false)
MX_QUANTIZE_KERNEL(mx_quantize_rowwise_sr, false, true)
MX_QUANTIZE_KERNEL(mx_quantize_colwise_rtn, true, false)
MX_QUANTIZE_KERNEL(mx_quantize_colwise_sr, true, true)

// acc[i] += sum of partials[5 j + i] over j in order (i < 5), and the same sum into site[i]
// when site is not NULL: one block of 5 threads. The persistent accumulators collect the
// telemetry on the device (the step's total, and per backward-GEMM site); the host reads them
// once per step or per logging interval.
extern "C" __global__ void mx_telemetry_accumulate(double* acc, double* site,
                                                   const double* partials, int n) {
    const int i = threadIdx.x;
    if (i >= MX_TELEMETRY_FIELDS) return;
    double s = 0.0;
    for (int j = 0; j < n; j++) s += partials[MX_TELEMETRY_FIELDS * (size_t)j + i];
    acc[i] += s;
    if (site) site[i] += s;
}
