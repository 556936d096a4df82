// The host execution harness: the runtime interface that the kernel-side header (cuda_host.cuh)
// and the PTX twins (ptx_ops.cuh) call into. Implemented in harness.cpp.
//
// The model it implements (what a GPU guarantees and no more, so that kernels that are correct
// here are correct there, and racy kernels show it):
// - The blocks of a grid run one after another on the launching OS thread.
// - The threads of a block run concurrently as fibers (one stack each) on that OS thread. A fiber
//   runs until it blocks: at a block barrier, at a warp collective (shuffle, ballot, ldmatrix,
//   mma, ...), or when it exits. Which runnable fiber goes next is the *schedule*: in thread
//   order round after round (warps advance in lockstep, one collective per round); warp by warp
//   in reverse, each warp running to its next block barrier before the next warp starts (warps
//   as far apart as the barriers allow); or a seeded random order per round. It also decides when an
//   asynchronous copy (cp.async) lands: as late as allowed (in order), at once (reverse), or
//   either, per copy (random). A missing barrier or wait, or a race on shared memory, gives
//   schedule-dependent results; the tests run kernels under several schedules and require
//   identical outputs.
// - Warp collectives are rendezvous of the lanes named in the mask. The last lane to arrive
//   computes the result for every lane from the values all lanes deposited (so an instruction
//   reads all its inputs at one instant, as the hardware does), then all continue.
// - Undefined behaviour the hardware would let pass silently is an error with a message naming
//   the block, the thread and the source line: a lane missing from a collective's mask, an
//   exited lane named in a mask, lanes of one warp in different collectives, a thread that exits
//   while others wait at __syncthreads, barriers at different source lines, a deadlock, an
//   invalid memory access (device buffers end at a guard page), misaligned cp.async/ldmatrix.
#pragma once
#include <cstddef>
#include <cstdint>

// CUDA's built-in index types (the kernels only read .x/.y/.z).
struct uint3 {
    unsigned int x, y, z;
};
typedef uint3 dim3;

namespace mxh {

constexpr int WARP = 32;
constexpr int EXCHANGE_BYTES = 64;  // per lane and direction, enough for an mma's fragments

// One lane's share of a warp collective: what it deposited and what it gets back.
struct LaneSlot {
    alignas(16) unsigned char in[EXCHANGE_BYTES];
    alignas(16) unsigned char out[EXCHANGE_BYTES];
};

// What the compute step of a collective sees: the participating lanes and their slots.
struct Collective {
    unsigned mask;  // lanes taking part (bit l = lane l)
    LaneSlot lane[WARP];
};
typedef void (*CollectiveFn)(Collective& c);

// The parts of a thread that the kernel-side macros read (threadIdx, the lane).
struct ThreadView {
    uint3 thread_idx;
    unsigned linear;  // x + y*bx + z*bx*by
    unsigned lane, warp;
};
// The parts of a block that the kernel-side macros read.
struct BlockView {
    uint3 block_idx, block_dim, grid_dim;
    unsigned char* dynamic_smem;
    unsigned dynamic_smem_bytes;
};

// The running thread and block (C-style TLS: no wrapper calls on access).
extern __thread ThreadView* tls_thread;
extern __thread BlockView* tls_block;

// Block barrier (__syncthreads); `file`/`line` identify the call site.
void syncthreads(const char* file, int line);
// Block barrier that also reduces a predicate: 0 count, 1 and, 2 or.
int syncthreads_reduce(int pred, int op, const char* file, int line);

// A warp collective: deposit `in` (in_bytes), wait for every lane of `mask`; the last lane runs
// `fn` over all slots; copy `out_bytes` of this lane's result into `out`. `op` names the
// instruction in error messages and must match across the participating lanes.
void collective(unsigned mask, const char* op, const char* file, int line, const void* in,
                unsigned in_bytes, void* out, unsigned out_bytes, CollectiveFn fn);

// cp.async twin: queue a copy of `bytes` bytes (src_bytes of them read from src, the rest zero)
// into the thread's open group; the write to `dst` happens when a wait retires the group.
void cp_async(void* dst, const void* src, unsigned bytes, unsigned src_bytes, const char* file,
              int line);
void cp_async_commit();
// Retire all committed groups but the newest `pending`.
void cp_async_wait(int pending);

// Stop the launch with an error naming the current block and thread. Never returns.
[[noreturn]] void fail(const char* file, int line, const char* fmt, ...)
    __attribute__((format(printf, 3, 4)));

// ---- kernel registration (used by the generated per-module files; see mxh_launch.h) ----

// One launch request, as the C entry point received it.
struct LaunchRequest {
    const char* kernel;  // "module::name", for messages
    dim3 grid, block;
    unsigned dynamic_smem_bytes;
    unsigned schedule;
    uint64_t seed;
    char* err;
    size_t err_len;
};

// Runs `body(ctx)` as every thread of every block of the grid. 0, or 1 with r.err filled.
int run_grid(const LaunchRequest& r, void (*body)(void*), void* ctx);

}  // namespace mxh

// ---- C interface for the Rust side (ptx::harness) ----
extern "C" {

struct mxh_kernel_info {
    const char* module;
    const char* name;
    const char* signature;     // e.g. "(bf16*, const bf16*, int, int)"
    unsigned num_params;
    const unsigned* param_sizes;
    const char* not_emulated;  // NULL, or why the harness cannot run it (e.g. "tcgen05")
};

// Launch options: 0 = threads in order, 1 = reverse, 2 = random order per round (seed).
struct mxh_options {
    unsigned schedule;
    uint64_t seed;
};

unsigned mxh_kernel_count(void);
const struct mxh_kernel_info* mxh_kernel(unsigned i);

// Runs a whole grid synchronously. Returns 0, or 1 with a message in err.
int mxh_launch(unsigned kernel_index, const unsigned grid[3], const unsigned block[3],
               unsigned dynamic_smem_bytes, void** params, const unsigned* param_sizes,
               unsigned num_params, const struct mxh_options* options, char* err,
               size_t err_len);

// Device memory: page-backed, the data ending just before an inaccessible guard page (and the
// first byte 16-byte aligned), so a read or write past the end faults and is reported.
void* mxh_alloc(size_t bytes);
void mxh_free(void* p);
}
