// Kernels with deliberate bugs, and their correct twins, for the host harness's own tests
// (tests/tests/harness.rs): each bug class the harness claims to catch has a kernel here that
// commits it. Compiled only into the harness (never for a GPU).
#include "ptx_ops.cuh"

// Rotate a block's values through shared memory: out[i] = in[(i + 1) % n]. With `barrier`
// false the read of a neighbour's slot races with its write: the result depends on the order
// in which threads run.
extern "C" __global__ void rotate(float* out, const float* in, int barrier) {
    __shared__ float s[256];
    unsigned i = threadIdx.x, n = blockDim.x;
    s[i] = in[blockIdx.x * n + i];
    if (barrier) __syncthreads();
    out[blockIdx.x * n + i] = s[(i + 1) % n];
}

// Every thread writes its index to one slot (a write-write race), then all read it.
extern "C" __global__ void last_writer(int* out) {
    __shared__ int s;
    s = threadIdx.x;
    __syncthreads();
    out[threadIdx.x] = s;
}

// The first half of the block skips the barrier.
extern "C" __global__ void divergent_barrier(int* out) {
    if (threadIdx.x < blockDim.x / 2) __syncthreads();
    out[threadIdx.x] = 1;
}

// Threads past n leave before a barrier the others reach.
extern "C" __global__ void exit_before_barrier(int* out, int n) {
    if ((int)threadIdx.x >= n) return;
    __syncthreads();
    out[threadIdx.x] = 1;
}

// Lanes shuffle with a mask: `mask` must include the calling lane and no exited lane.
extern "C" __global__ void shuffle_masked(int* out, unsigned mask, int exit_odd) {
    unsigned lane = threadIdx.x % 32;
    if (exit_odd && (lane & 1)) return;
    out[threadIdx.x] = __shfl_sync(mask, (int)threadIdx.x, 0);
}

// Reads in[0 .. n + over): over = 1 reads one element past the end.
extern "C" __global__ void copy_over(float* out, const float* in, int n, int over) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = in[i + over];
}

// Lane 0 waits for lane 1 in __syncwarp while lane 1 waits at __syncthreads.
extern "C" __global__ void deadlock(int* out) {
    if (threadIdx.x == 0) __syncwarp(0x3);
    else __syncthreads();
    out[threadIdx.x] = 1;
}

// Stages a tile with cp.async and reads it back; `wait` = 0 skips the wait (reads stale data).
extern "C" __global__ void cp_async_stage(float* out, const float* in, int wait) {
    __shared__ __align__(16) float s[4 * 32];
    unsigned i = threadIdx.x;  // one warp, 32 threads x 16 bytes
    cp_async_16(&s[4 * i], &in[4 * i], 16);
    cp_async_commit();
    if (wait) cp_async_wait<0>();
    __syncthreads();
    for (int k = 0; k < 4; k++) out[4 * i + k] = s[4 * ((i + 1) % 32) + k];
}

// One warp computes C[16x8] = A[16x16] B[16x8] (A row-major, B stored as B^T row-major, i.e.
// "col"), loading fragments straight from global memory by the PTX ISA table. `bug` = 1 swaps
// the rows of a1/a3 (a wrong fragment index).
extern "C" __global__ void mma_tile(float* c, const bf16* a, const bf16* bt, int bug) {
    unsigned l = threadIdx.x, g = l >> 2, t = l % 4;
    uint32_t af[4], bf[2];
    for (int r = 0; r < 4; r++) {
        unsigned row = (r & 1) ? g + 8 : g;  // a[0]: rows g, a[1]: g + 8, a[2]: g, a[3]: g + 8
        if (bug && (r & 1)) row = g;
        unsigned col = 2 * t + (r >= 2 ? 8 : 0);
        bf16 lo = a[row * 16 + col], hi = a[row * 16 + col + 1];
        af[r] = (uint32_t)__bfloat16_as_ushort(lo) | ((uint32_t)__bfloat16_as_ushort(hi) << 16);
    }
    for (int r = 0; r < 2; r++) {
        unsigned k = 2 * t + (r ? 8 : 0);
        bf16 lo = bt[g * 16 + k], hi = bt[g * 16 + k + 1];
        bf[r] = (uint32_t)__bfloat16_as_ushort(lo) | ((uint32_t)__bfloat16_as_ushort(hi) << 16);
    }
    float d[4] = {0, 0, 0, 0};
    mma_bf16_16816(d, af, bf[0], bf[1]);
    for (int i = 0; i < 4; i++) c[(i < 2 ? g : g + 8) * 8 + 2 * t + (i & 1)] = d[i];
}

// Dynamic shared memory is 0xFF-filled at block start: a thread that reads a slot nobody wrote
// sees NaN. `skip` leaves slot 0 unwritten.
extern "C" __global__ void dynamic_smem(float* out, int skip) {
    MXH_DYNAMIC_SMEM(float, s);
    if (!(skip && threadIdx.x == 0)) s[threadIdx.x] = (float)threadIdx.x;
    __syncthreads();
    out[threadIdx.x] = s[(threadIdx.x + 1) % blockDim.x] + s[threadIdx.x];
}
