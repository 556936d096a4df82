// The host execution harness: runs CUDA-C kernels on the CPU with the GPU's programming model
// (see mxh.h for the model and the errors it reports). Fibers, the per-block scheduler, block
// barriers, warp rendezvous, cp.async groups, guarded device memory, fault capture, and the C
// entry points the Rust side calls.
#include "mxh.h"

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include <sys/mman.h>
#include <unistd.h>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace mxh {

__thread ThreadView* tls_thread = nullptr;
__thread BlockView* tls_block = nullptr;

// ------------------------------------------------------------------------------------------
// Fibers. On x86-64 a context switch saves the six callee-saved registers and the SSE/x87
// control words on the old stack and swaps stack pointers (~20 instructions); elsewhere ucontext.

#if defined(__x86_64__)
extern "C" void mxh_fiber_switch(void** save_sp, void* load_sp);
asm(R"(
    .text
    .globl mxh_fiber_switch
    .hidden mxh_fiber_switch
    .type mxh_fiber_switch,@function
mxh_fiber_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size mxh_fiber_switch, .-mxh_fiber_switch
)");
struct Context {
    void* sp = nullptr;
};
static void switch_context(Context& from, Context& to) { mxh_fiber_switch(&from.sp, to.sp); }
static void make_context(Context& c, void* stack_lo, size_t size, void (*entry)()) {
    uintptr_t top = ((uintptr_t)stack_lo + size) & ~(uintptr_t)15;
    uintptr_t* sp = (uintptr_t*)top;
    *--sp = 0;                  // return address of entry (it never returns)
    *--sp = (uintptr_t)entry;   // where the first switch "returns" to (16-byte aligned slot)
    for (int i = 0; i < 6; i++) *--sp = 0;  // rbp rbx r12-r15
    --sp;
    ((uint32_t*)sp)[0] = 0x1F80;  // MXCSR: default rounding, exceptions masked
    ((uint16_t*)sp)[2] = 0x037F;  // x87 control word default
    c.sp = sp;
}
#else
struct Context {
    ucontext_t uc;
};
static void switch_context(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
static void make_context(Context& c, void* stack_lo, size_t size, void (*entry)()) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = stack_lo;
    c.uc.uc_stack.ss_size = size;
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, entry, 0);
}
#endif

constexpr size_t FIBER_STACK = 128 * 1024;
constexpr unsigned MAX_THREADS = 1024;

enum class State { Runnable, WaitBarrier, WaitWarp, Exited, Failed };

struct CopyEntry {
    unsigned char* dst;
    unsigned bytes;
    unsigned group;
    unsigned char data[16];
};

struct Thread : ThreadView {
    Context ctx;
    State state = State::Runnable;
    const char* wait_op = nullptr;  // what it waits at, for deadlock reports
    const char* wait_file = nullptr;
    int wait_line = 0;
    unsigned wait_mask = 0;
    std::vector<CopyEntry> copies;  // cp.async entries not yet written
    unsigned committed = 0;         // cp.async groups committed so far
};

// A rendezvous in flight in one warp: the lanes of `mask`, `arrived` of them so far.
struct Rendezvous {
    unsigned mask = 0, arrived = 0;
    const char* op = nullptr;
    const char* file = nullptr;
    int line = 0;
};

struct Warp {
    Collective slots;  // per-lane in/out buffers, shared by disjoint rendezvous
    Rendezvous open[WARP];
    int num_open = 0;
    unsigned exited = 0;  // lanes that have exited (or never existed: partial last warp)
};

struct Block : BlockView {
    unsigned nthreads = 0, live = 0, exited = 0;
    Thread* first_exited = nullptr;
    unsigned bar_arrived = 0;
    const char* bar_file = nullptr;
    int bar_line = 0;
    int bar_acc = 0, bar_result = 0, bar_op = -1;
    std::string error;
};

// Everything one OS thread needs to run grids: the scheduler context, fiber stacks, threads.
struct Runner {
    Context sched;
    std::vector<unsigned char*> stacks;
    std::vector<Thread> threads;
    std::vector<Warp> warps;
    Block block;
    Thread* current = nullptr;
    void (*body)(void*) = nullptr;
    void* body_ctx = nullptr;
    const char* kernel = "";
    bool in_kernel = false;
    unsigned schedule = 0;
    uint64_t rng = 0;
};
static __thread Runner* tls_runner = nullptr;

static std::string thread_name(const Block& b, const Thread* t) {
    char buf[160];
    snprintf(buf, sizeof buf, "block (%u,%u,%u) thread (%u,%u,%u) [warp %u lane %u]", b.block_idx.x,
             b.block_idx.y, b.block_idx.z, t->thread_idx.x, t->thread_idx.y, t->thread_idx.z,
             t->warp, t->lane);
    return buf;
}

static const char* base_name(const char* path) {
    const char* s = strrchr(path, '/');
    return s ? s + 1 : path;
}

// Hands control back to the scheduler; returns when this fiber is scheduled again.
static void yield_to_scheduler() {
    Runner* r = tls_runner;
    Thread* t = r->current;
    switch_context(t->ctx, r->sched);
}

[[noreturn]] static void fail_with(std::string msg) {
    Runner* r = tls_runner;
    if (!r || !r->current) {
        fprintf(stderr, "mxgpt host harness: %s (outside a kernel)\n", msg.c_str());
        abort();
    }
    if (r->block.error.empty()) r->block.error = msg;
    r->current->state = State::Failed;
    yield_to_scheduler();
    abort();  // a failed fiber is never resumed
}

void fail(const char* file, int line, const char* fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    Runner* r = tls_runner;
    std::string msg = r && r->current ? thread_name(r->block, r->current) + ": " : "";
    msg += buf;
    if (file) {
        char at[300];
        snprintf(at, sizeof at, " (at %s:%d)", base_name(file), line);
        msg += at;
    }
    fail_with(msg);
}

// ------------------------------------------------------------------------------------------
// cp.async groups

static void retire_copies(Thread* t, unsigned below_group) {
    auto& v = t->copies;
    size_t keep = 0;
    for (size_t i = 0; i < v.size(); i++) {
        if (v[i].group < below_group) {
            memcpy(v[i].dst, v[i].data, v[i].bytes);
        } else {
            v[keep++] = v[i];
        }
    }
    v.resize(keep);
}

void cp_async(void* dst, const void* src, unsigned bytes, unsigned src_bytes, const char* file,
              int line) {
    Thread* t = tls_runner->current;
    if (bytes != 4 && bytes != 8 && bytes != 16)
        fail(file, line, "cp.async of %u bytes (4, 8 or 16 allowed)", bytes);
    if (src_bytes > bytes) fail(file, line, "cp.async src-size %u > cp-size %u", src_bytes, bytes);
    if ((uintptr_t)dst % bytes != 0 || (src_bytes > 0 && (uintptr_t)src % bytes != 0))
        fail(file, line, "cp.async of %u bytes: misaligned address (dst %p, src %p)", bytes, dst,
             src);
    // When a copy lands is the hardware's choice, anywhere from issue to the wait that retires
    // its group. The in-order schedule lands copies as late as allowed, the reverse schedule as
    // early as possible, the random one picks per copy: a missing wait shows under the first, a
    // stage overwritten while other warps still read it under the second.
    Runner* r = tls_runner;
    bool eager = r->schedule == 1;
    if (r->schedule == 2) {
        r->rng ^= r->rng >> 12;
        r->rng ^= r->rng << 25;
        r->rng ^= r->rng >> 27;
        eager = (r->rng * 0x2545F4914F6CDD1Dull) >> 63;
    }
    if (eager) {
        unsigned char tmp[16] = {0};
        if (src_bytes > 0) memcpy(tmp, src, src_bytes);
        memcpy(dst, tmp, bytes);
        return;
    }
    CopyEntry e;
    e.dst = (unsigned char*)dst;
    e.bytes = bytes;
    e.group = t->committed;  // the open group
    memset(e.data, 0, sizeof e.data);
    if (src_bytes > 0) memcpy(e.data, src, src_bytes);  // the source is read at issue
    t->copies.push_back(e);
}

void cp_async_commit() { tls_runner->current->committed++; }

void cp_async_wait(int pending) {
    Thread* t = tls_runner->current;
    unsigned below = t->committed >= (unsigned)pending ? t->committed - pending : 0;
    retire_copies(t, below);
}

// ------------------------------------------------------------------------------------------
// Block barrier

static void release_barrier(Block& b, std::vector<Thread>& threads) {
    b.bar_result = b.bar_acc;
    b.bar_arrived = 0;
    for (unsigned i = 0; i < b.nthreads; i++)
        if (threads[i].state == State::WaitBarrier) threads[i].state = State::Runnable;
}

static int barrier(int pred, int op, const char* file, int line) {
    Runner* r = tls_runner;
    Block& b = r->block;
    Thread* t = r->current;
    if (b.exited > 0) {
        fail(file, line,
             "__syncthreads after %u thread(s) of the block exited (first: thread (%u,%u,%u)): "
             "a barrier in divergent code, undefined on the GPU",
             b.exited, b.first_exited->thread_idx.x, b.first_exited->thread_idx.y,
             b.first_exited->thread_idx.z);
    }
    if (b.bar_arrived == 0) {
        b.bar_file = file;
        b.bar_line = line;
        b.bar_op = op;
        b.bar_acc = op == 1 ? 1 : 0;
    } else if (b.bar_line != line || b.bar_op != op ||
               (b.bar_file != file && strcmp(b.bar_file, file) != 0)) {
        fail(file, line,
             "reached a different barrier than %u other thread(s), which wait at %s:%d "
             "(divergent __syncthreads)",
             b.bar_arrived, base_name(b.bar_file), b.bar_line);
    }
    if (op == 0) b.bar_acc += pred != 0;
    if (op == 1) b.bar_acc = b.bar_acc && pred;
    if (op == 2) b.bar_acc = b.bar_acc || pred;
    b.bar_arrived++;
    if (b.bar_arrived == b.nthreads) {
        release_barrier(b, r->threads);
    } else {
        t->state = State::WaitBarrier;
        t->wait_op = "__syncthreads";
        t->wait_file = file;
        t->wait_line = line;
        yield_to_scheduler();
    }
    return b.bar_result;
}

void syncthreads(const char* file, int line) { barrier(0, -1, file, line); }

int syncthreads_reduce(int pred, int op, const char* file, int line) {
    return barrier(pred, op, file, line);
}

// ------------------------------------------------------------------------------------------
// Warp collectives

void collective(unsigned mask, const char* op, const char* file, int line, const void* in,
                unsigned in_bytes, void* out, unsigned out_bytes, CollectiveFn fn) {
    Runner* r = tls_runner;
    Thread* t = r->current;
    Warp& w = r->warps[t->warp];
    const unsigned bit = 1u << t->lane;
    const bool is_syncwarp = op[0] == '_' && strcmp(op, "__syncwarp") == 0;
    if (!(mask & bit)) fail(file, line, "%s: the calling lane is not in mask 0x%08x", op, mask);
    if (mask & w.exited)
        fail(file, line, "%s: mask 0x%08x names lane(s) 0x%08x that have exited or do not exist",
             op, mask, mask & w.exited);
    if (in_bytes > EXCHANGE_BYTES || out_bytes > EXCHANGE_BYTES)
        fail(file, line, "%s: %u/%u bytes exchanged per lane (harness limit %d)", op, in_bytes,
             out_bytes, EXCHANGE_BYTES);
    // Join the open rendezvous with this mask, or open one; a mask that overlaps another open
    // rendezvous means lanes of one warp sit in different collectives.
    Rendezvous* rv = nullptr;
    for (int i = 0; i < w.num_open; i++) {
        Rendezvous& o = w.open[i];
        if (o.mask == mask) {
            rv = &o;
        } else if (o.mask & mask) {
            fail(file, line,
                 "%s with mask 0x%08x while lanes 0x%08x wait in %s with mask 0x%08x at %s:%d "
                 "(divergent warp collectives)",
                 op, mask, o.arrived, o.op, o.mask, base_name(o.file), o.line);
        }
    }
    if (!rv) {
        rv = &w.open[w.num_open++];
        rv->mask = mask;
        rv->arrived = 0;
        rv->op = op;
        rv->file = file;
        rv->line = line;
    } else if ((rv->op != op && strcmp(rv->op, op) != 0) ||
               (!is_syncwarp &&
                (rv->line != line || (rv->file != file && strcmp(rv->file, file) != 0)))) {
        fail(file, line,
             "reached %s while lanes 0x%08x of its mask wait in %s at %s:%d (divergent warp "
             "collectives)",
             op, rv->arrived, rv->op, base_name(rv->file), rv->line);
    }
    if (in_bytes) memcpy(w.slots.lane[t->lane].in, in, in_bytes);
    rv->arrived |= bit;
    if (rv->arrived == rv->mask) {
        // Last to arrive: compute every lane's result, close the rendezvous, wake the others.
        w.slots.mask = mask;
        if (fn) fn(w.slots);
        for (unsigned l = 0; l < (unsigned)WARP; l++) {
            if ((mask >> l) & 1 && l != t->lane) {
                Thread& o = r->threads[t->warp * WARP + l];
                o.state = State::Runnable;
            }
        }
        *rv = w.open[--w.num_open];
    } else {
        t->state = State::WaitWarp;
        t->wait_op = op;
        t->wait_file = file;
        t->wait_line = line;
        t->wait_mask = mask;
        yield_to_scheduler();
    }
    if (out_bytes) memcpy(out, w.slots.lane[t->lane].out, out_bytes);
}

// ------------------------------------------------------------------------------------------
// Threads and blocks

static void thread_exit(Runner* r, Thread* t) {
    Block& b = r->block;
    retire_copies(t, ~0u);  // outstanding cp.async copies land eventually
    Warp& w = r->warps[t->warp];
    for (int i = 0; i < w.num_open; i++) {
        if (w.open[i].mask & (1u << t->lane)) {
            fail(nullptr, 0,
                 "exited while lanes 0x%08x wait for it in %s (mask 0x%08x) at %s:%d", w.open[i].arrived,
                 w.open[i].op, w.open[i].mask, base_name(w.open[i].file), w.open[i].line);
        }
    }
    if (b.bar_arrived > 0) {
        fail(nullptr, 0, "exited while %u thread(s) wait at __syncthreads at %s:%d", b.bar_arrived,
             base_name(b.bar_file), b.bar_line);
    }
    w.exited |= 1u << t->lane;
    if (b.exited++ == 0) b.first_exited = t;
    b.live--;
    t->state = State::Exited;
}

static void fiber_entry() {
    Runner* r = tls_runner;
    r->body(r->body_ctx);
    thread_exit(r, r->current);
    switch_context(r->current->ctx, r->sched);
    abort();
}

static unsigned char* new_stack() {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    void* p = mmap(nullptr, FIBER_STACK + page, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
        fprintf(stderr, "mxgpt host harness: cannot map a fiber stack (%s)\n", strerror(errno));
        abort();
    }
    mprotect(p, page, PROT_NONE);  // guard: a stack overflow faults instead of corrupting
    return (unsigned char*)p + page;
}

static void install_fault_handler();

static Runner* runner() {
    if (!tls_runner) {
        tls_runner = new Runner();  // one per OS thread, kept for the thread's life
        // The fault handler needs an alternate stack (a fiber that overflows its stack cannot
        // run it). Rust gives its threads one; other threads get ours.
        stack_t ss;
        if (sigaltstack(nullptr, &ss) == 0 && (ss.ss_flags & SS_DISABLE)) {
            stack_t mine;
            mine.ss_size = 64 * 1024;
            mine.ss_sp = malloc(mine.ss_size);
            mine.ss_flags = 0;
            sigaltstack(&mine, nullptr);
        }
        install_fault_handler();
    }
    return tls_runner;
}

// Order in which the scheduler offers threads a turn in one round (schedules 0 and 2).
static void round_order(std::vector<unsigned>& order, unsigned n, unsigned schedule,
                        uint64_t& rng) {
    order.resize(n);
    for (unsigned i = 0; i < n; i++) order[i] = i;
    if (schedule == 2) {
        for (unsigned i = n; i > 1; i--) {
            rng ^= rng >> 12;
            rng ^= rng << 25;
            rng ^= rng >> 27;
            unsigned j = (unsigned)((rng * 0x2545F4914F6CDD1Dull) >> 33) % i;
            std::swap(order[i - 1], order[j]);
        }
    }
}

static std::string deadlock_report(Runner* r) {
    Block& b = r->block;
    std::string s = "deadlock: no thread can proceed. Waiting:";
    int shown = 0;
    for (unsigned i = 0; i < b.nthreads && shown < 8; i++) {
        Thread& t = r->threads[i];
        if (t.state != State::WaitBarrier && t.state != State::WaitWarp) continue;
        char buf[300];
        snprintf(buf, sizeof buf, " thread (%u,%u,%u) in %s mask 0x%08x at %s:%d;",
                 t.thread_idx.x, t.thread_idx.y, t.thread_idx.z, t.wait_op,
                 t.state == State::WaitWarp ? t.wait_mask : 0u, base_name(t.wait_file),
                 t.wait_line);
        s += buf;
        shown++;
    }
    return s;
}

int run_grid(const LaunchRequest& req, void (*body)(void*), void* ctx) {
    Runner* r = runner();
    if (r->in_kernel) {
        snprintf(req.err, req.err_len, "%s: launched from inside a kernel", req.kernel);
        return 1;
    }
    const unsigned n = req.block.x * req.block.y * req.block.z;
    if (n == 0 || n > MAX_THREADS || req.grid.x == 0 || req.grid.y == 0 || req.grid.z == 0) {
        snprintf(req.err, req.err_len, "%s: bad geometry grid (%u,%u,%u) block (%u,%u,%u)",
                 req.kernel, req.grid.x, req.grid.y, req.grid.z, req.block.x, req.block.y,
                 req.block.z);
        return 1;
    }
    while (r->stacks.size() < n) r->stacks.push_back(new_stack());
    r->threads.assign(n, Thread());
    const unsigned nwarps = (n + WARP - 1) / WARP;
    r->warps.assign(nwarps, Warp());
    std::vector<unsigned char> dyn(req.dynamic_smem_bytes + 16);
    unsigned char* dyn_aligned = (unsigned char*)(((uintptr_t)dyn.data() + 15) & ~(uintptr_t)15);
    r->body = body;
    r->body_ctx = ctx;
    r->kernel = req.kernel;
    std::vector<unsigned> order;
    uint64_t rng = req.seed * 0x9E3779B97F4A7C15ull + 0xD1B54A32D192ED03ull;
    r->schedule = req.schedule;
    r->rng = rng ^ 0x5851F42D4C957F2Dull;
    int status = 0;
    r->in_kernel = true;
    for (unsigned bz = 0; bz < req.grid.z && status == 0; bz++)
        for (unsigned by = 0; by < req.grid.y && status == 0; by++)
            for (unsigned bx = 0; bx < req.grid.x && status == 0; bx++) {
                Block& b = r->block;
                b.block_idx = {bx, by, bz};
                b.block_dim = req.block;
                b.grid_dim = req.grid;
                b.dynamic_smem = dyn_aligned;
                b.dynamic_smem_bytes = req.dynamic_smem_bytes;
                // Dynamic shared memory starts each block as 0xFF bytes (NaN for f32 / bf16):
                // reading what no thread wrote shows up in the results.
                memset(dyn_aligned, 0xFF, req.dynamic_smem_bytes);
                b.nthreads = n;
                b.live = n;
                b.exited = 0;
                b.first_exited = nullptr;
                b.bar_arrived = 0;
                b.error.clear();
                for (unsigned w = 0; w < nwarps; w++) {
                    r->warps[w].num_open = 0;
                    unsigned lanes = std::min<unsigned>(WARP, n - w * WARP);
                    r->warps[w].exited = lanes == WARP ? 0u : ~((1u << lanes) - 1);
                }
                for (unsigned i = 0; i < n; i++) {
                    Thread& t = r->threads[i];
                    t.thread_idx = {i % req.block.x, (i / req.block.x) % req.block.y,
                                    i / (req.block.x * req.block.y)};
                    t.linear = i;
                    t.lane = i % WARP;
                    t.warp = i / WARP;
                    t.state = State::Runnable;
                    t.copies.clear();
                    t.committed = 0;
                    make_context(t.ctx, r->stacks[i], FIBER_STACK, fiber_entry);
                }
                tls_block = &b;
                auto run = [&](Thread& t) {
                    r->current = &t;
                    tls_thread = &t;
                    switch_context(r->sched, t.ctx);
                };
                while (b.live > 0 && b.error.empty()) {
                    bool progressed = false;
                    if (req.schedule == 1) {
                        // Warp by warp, last warp first: each runs as far as it can (to a block
                        // barrier) before the next starts, so warps drift as far apart as the
                        // barriers allow.
                        for (unsigned w = nwarps; w-- > 0 && b.error.empty();) {
                            for (bool again = true; again && b.error.empty();) {
                                again = false;
                                unsigned lo = w * WARP, hi = std::min(n, lo + WARP);
                                for (unsigned i = hi; i-- > lo && b.error.empty();) {
                                    if (r->threads[i].state != State::Runnable) continue;
                                    run(r->threads[i]);
                                    progressed = again = true;
                                }
                            }
                        }
                    } else {
                        round_order(order, n, req.schedule, rng);
                        for (unsigned k = 0; k < n && b.error.empty(); k++) {
                            Thread& t = r->threads[order[k]];
                            if (t.state != State::Runnable) continue;
                            run(t);
                            progressed = true;
                        }
                    }
                    if (!progressed && b.error.empty()) b.error = deadlock_report(r);
                }
                r->current = nullptr;
                tls_thread = nullptr;
                tls_block = nullptr;
                if (!b.error.empty()) {
                    snprintf(req.err, req.err_len, "%s: %s", req.kernel, b.error.c_str());
                    status = 1;
                }
            }
    r->in_kernel = false;
    return status;
}

// ------------------------------------------------------------------------------------------
// Device memory with guard pages, and fault capture

struct Allocation {
    uintptr_t data;
    size_t bytes;
    unsigned char* map;
    size_t map_len;
};
static std::mutex g_alloc_mutex;
static std::map<uintptr_t, Allocation> g_allocs;  // by data address

static std::string describe_address(uintptr_t a) {
    std::lock_guard<std::mutex> lock(g_alloc_mutex);
    char buf[200];
    for (auto& kv : g_allocs) {
        const Allocation& al = kv.second;
        uintptr_t map_lo = (uintptr_t)al.map, map_hi = map_lo + al.map_len;
        if (a >= map_lo && a < map_hi) {
            if (a >= al.data + al.bytes)
                snprintf(buf, sizeof buf, "%zu bytes past the end of a %zu-byte device buffer",
                         (size_t)(a - al.data - al.bytes), al.bytes);
            else if (a < al.data)
                snprintf(buf, sizeof buf, "%zu bytes before the start of a %zu-byte device buffer",
                         (size_t)(al.data - a), al.bytes);
            else
                snprintf(buf, sizeof buf, "inside a %zu-byte device buffer", al.bytes);
            return buf;
        }
    }
    return "not in any device buffer";
}

static struct sigaction g_old_segv, g_old_bus;

static void on_fault(int sig, siginfo_t* si, void* uc) {
    Runner* r = tls_runner;
    if (r && r->in_kernel && r->current) {
        char buf[400];
        uintptr_t a = (uintptr_t)si->si_addr;
        snprintf(buf, sizeof buf, "invalid memory access (%s) at address %p: %s",
                 sig == SIGSEGV ? "SIGSEGV" : "SIGBUS", si->si_addr,
                 a ? describe_address(a).c_str()
                   : "address unknown (a misaligned vector access, or a fiber stack overflow)");
        if (r->block.error.empty()) r->block.error = thread_name(r->block, r->current) + ": " + buf;
        r->current->state = State::Failed;
        // Leave the faulting fiber for good: back to the scheduler, which reports the error.
        switch_context(r->current->ctx, r->sched);
    }
    struct sigaction* old = sig == SIGSEGV ? &g_old_segv : &g_old_bus;
    if (old->sa_flags & SA_SIGINFO) {
        old->sa_sigaction(sig, si, uc);
    } else if (old->sa_handler == SIG_DFL || old->sa_handler == SIG_IGN) {
        signal(sig, SIG_DFL);  // returning re-executes the access: the default action
    } else {
        old->sa_handler(sig);
    }
}

static void install_fault_handler() {
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_fault;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGSEGV, &sa, &g_old_segv);
        sigaction(SIGBUS, &sa, &g_old_bus);
    });
}

}  // namespace mxh

// ------------------------------------------------------------------------------------------
// C entry points

using namespace mxh;

extern "C" void* mxh_alloc(size_t bytes) {
    if (bytes == 0) return nullptr;
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    const size_t rounded = (bytes + 15) & ~(size_t)15;
    const size_t data_pages = (rounded + page - 1) / page;
    const size_t len = (data_pages + 2) * page;
    void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (p == MAP_FAILED) return nullptr;
    unsigned char* map = (unsigned char*)p;
    mprotect(map, page, PROT_NONE);
    mprotect(map + (data_pages + 1) * page, page, PROT_NONE);
    unsigned char* data = map + (data_pages + 1) * page - rounded;
    // Fresh device memory holds garbage on a GPU; here 0xFF bytes (NaN as f32 and bf16), so a
    // kernel that reads what nobody wrote shows it.
    memset(data, 0xFF, rounded);
    std::lock_guard<std::mutex> lock(g_alloc_mutex);
    g_allocs[(uintptr_t)data] = Allocation{(uintptr_t)data, bytes, map, len};
    return data;
}

extern "C" void mxh_free(void* p) {
    if (!p) return;
    Allocation al;
    {
        std::lock_guard<std::mutex> lock(g_alloc_mutex);
        auto it = g_allocs.find((uintptr_t)p);
        if (it == g_allocs.end()) {
            fprintf(stderr, "mxgpt host harness: mxh_free(%p) of an unknown pointer\n", p);
            abort();
        }
        al = it->second;
        g_allocs.erase(it);
    }
    munmap(al.map, al.map_len);
}

// ------------------------------------------------------------------------------------------
// The kernel table (modules listed by the generated registry.cpp) and the launch entry point.

#include "mxh_launch.h"

typedef const mxh::KernelEntry* (*ModuleTable)(unsigned* count);
extern "C" const ModuleTable mxh_modules[];
extern "C" const unsigned mxh_num_modules;

static const std::vector<const KernelEntry*>& kernel_table() {
    static const std::vector<const KernelEntry*> table = [] {
        std::vector<const KernelEntry*> v;
        for (unsigned m = 0; m < mxh_num_modules; m++) {
            unsigned n = 0;
            const KernelEntry* e = mxh_modules[m](&n);
            for (unsigned i = 0; i < n; i++) v.push_back(&e[i]);
        }
        return v;
    }();
    return table;
}

extern "C" unsigned mxh_kernel_count(void) { return (unsigned)kernel_table().size(); }

extern "C" const mxh_kernel_info* mxh_kernel(unsigned i) {
    const auto& t = kernel_table();
    return i < t.size() ? &t[i]->info : nullptr;
}

extern "C" int mxh_launch(unsigned kernel_index, const unsigned grid[3], const unsigned block[3],
                          unsigned dynamic_smem_bytes, void** params, const unsigned* param_sizes,
                          unsigned num_params, const mxh_options* options, char* err,
                          size_t err_len) {
    const auto& t = kernel_table();
    if (kernel_index >= t.size()) {
        snprintf(err, err_len, "no kernel #%u in the harness (%zu kernels)", kernel_index, t.size());
        return 1;
    }
    const KernelEntry& k = *t[kernel_index];
    std::string name = std::string(k.info.module) + "::" + k.info.name;
    if (k.info.not_emulated) {
        snprintf(err, err_len, "%s uses %s, which the host harness does not emulate", name.c_str(),
                 k.info.not_emulated);
        return 1;
    }
    if (num_params != k.info.num_params) {
        snprintf(err, err_len, "%s%s takes %u parameters, the launch passed %u", name.c_str(),
                 k.info.signature, k.info.num_params, num_params);
        return 1;
    }
    for (unsigned i = 0; i < num_params; i++) {
        if (param_sizes[i] != k.info.param_sizes[i]) {
            snprintf(err, err_len,
                     "%s%s: parameter %u is %u bytes, the launch passed a %u-byte value",
                     name.c_str(), k.info.signature, i, k.info.param_sizes[i], param_sizes[i]);
            return 1;
        }
    }
    LaunchRequest req;
    req.kernel = name.c_str();
    req.grid = {grid[0], grid[1], grid[2]};
    req.block = {block[0], block[1], block[2]};
    req.dynamic_smem_bytes = dynamic_smem_bytes;
    req.schedule = options ? options->schedule : 0;
    req.seed = options ? options->seed : 0;
    req.err = err;
    req.err_len = err_len;
    return k.launch(req, params);
}
