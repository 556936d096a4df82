// targets: sm_90a sm_80
//
// Glue: f32 <-> bf16 casts and a bf16 transpose.
//
//   cast_f32_to_bf16   out[i] = bf16_rn(in[i])         (round to nearest even; NaN stays NaN)
//   cast_bf16_to_f32   out[i] = f32(in[i])             (exact)
//   transpose_bf16     out[z, c, r] = in[z, r, c]      for z < batch, r < rows, c < cols
//
// Transpose split: 32x32 tiles through shared memory (33-column padding, so the column read
// hits 32 different banks); a 32x8 thread block covers a tile in 4 row steps; blockIdx.z is the
// batch index. Both the global read (along c) and the global write (along r) are coalesced.
// Edges: any rows/cols work, threads outside the matrix do nothing.
//
// Parameters (device pointers):
//   cast_f32_to_bf16(bf16* out, const float* in, size_t n)   block 256, grid ceil(n / 256)
//   cast_bf16_to_f32(float* out, const bf16* in, size_t n)   block 256, grid ceil(n / 256)
//   transpose_bf16(bf16* out, const bf16* in, int rows, int cols)
//       block (32, 8), grid (ceil(cols / 32), ceil(rows / 32), batch); out must not alias in.
//
// Vectorized casts (same results, bit for bit: the conversions are exact or RNE either way):
//   cast_f32_to_bf16_vec(bf16* out, const float* in, size_t n)
//   cast_bf16_to_f32_vec(float* out, const bf16* in, size_t n)
//       block 256, grid ceil(ceil(n / 8) / 256): one thread per 8 elements, one 16-byte bf16
//       access and two 16-byte f32 accesses (vec.cuh); the thread whose 8-vector crosses n
//       converts the 1..7-element tail with scalar accesses. Both pointers must be 16-byte
//       aligned (the launcher checks, else it runs the scalar kernels).
//
// Cost: casts move 6 B per element, transpose 4 B per element; no arithmetic. Roofline (H100
// SXM 3.35 TB/s, H200 4.8 TB/s): a 124M-element cast moves 746 MB: 223 us / 155 us. The scalar
// casts issue one 2-byte and one 4-byte access per element; the vec kernels one 16-byte bf16
// access and two 16-byte f32 accesses per 8 elements (32-48 KB in flight per SM at full
// occupancy), so their limit is HBM bandwidth; target >= 80% of the measured copy bandwidth.
// A 768 x 50257 bf16 transpose (77 MB moved) takes ~23 us at 3.35 TB/s.
// Harness-tested, ptxas-assembled, not timed.
#include "common.cuh"
#include "vec.cuh"

extern "C" __global__ void cast_f32_to_bf16(bf16* out, const float* in, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = to_bf16(in[i]);
}

extern "C" __global__ void cast_bf16_to_f32(float* out, const bf16* in, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = to_f32(in[i]);
}

extern "C" __global__ void __launch_bounds__(256)
cast_f32_to_bf16_vec(bf16* out, const float* in, size_t n) {
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i + 8 <= n) {
        float f[8];
        load_f32x8(f, in + i);
        store_bf16x8(out + i, f);
    } else {
        for (; i < n; i++) out[i] = to_bf16(in[i]);
    }
}

extern "C" __global__ void __launch_bounds__(256)
cast_bf16_to_f32_vec(float* out, const bf16* in, size_t n) {
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i + 8 <= n) {
        float f[8];
        load_bf16x8(f, in + i);
        store_f32x8(out + i, f);
    } else {
        for (; i < n; i++) out[i] = to_f32(in[i]);  // tail: < 8 elements
    }
}

extern "C" __global__ void __launch_bounds__(256)
transpose_bf16(bf16* out, const bf16* in, int rows, int cols) {
    __shared__ bf16 tile[32][33];
    size_t plane = (size_t)rows * cols;
    const bf16* src = in + blockIdx.z * plane;
    bf16* dst = out + blockIdx.z * plane;
    int c = blockIdx.x * 32 + threadIdx.x;
    int r0 = blockIdx.y * 32;
    for (int k = threadIdx.y; k < 32; k += 8) {
        int r = r0 + k;
        if (r < rows && c < cols) tile[k][threadIdx.x] = src[(size_t)r * cols + c];
    }
    __syncthreads();
    // Now thread x walks the rows of the input tile = the columns of the output row.
    int r = r0 + threadIdx.x;
    int c0 = blockIdx.x * 32;
    for (int k = threadIdx.y; k < 32; k += 8) {
        int cc = c0 + k;
        if (cc < cols && r < rows) dst[(size_t)cc * rows + r] = tile[threadIdx.x][k];
    }
}
