//! CPU parallelism: a persistent worker pool that hands out chunks of work dynamically.
//!
//! `threads() - 1` workers are started on first use and sleep on a condition variable between
//! jobs; the calling thread works too. A job is `0..n` cut into up to `CHUNKS_PER_THREAD` chunks
//! per thread (each at least `min_items_per_thread` items), claimed one at a time from a shared
//! counter, so a thread that the OS (or a neighbour's compiler) slows down just claims fewer
//! chunks instead of holding up the join, as a static split would. Which thread runs a chunk
//! never changes what the chunk computes: callers keep every output element in one chunk, so
//! results do not depend on the thread count or the schedule. A call made while the pool is
//! busy (a nested call, or another thread's job, as under `cargo test`) runs on scoped threads
//! with the same chunking instead of waiting.

use std::cell::Cell;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};

/// Number of worker threads: `MXGPT_THREADS` if set (>= 1), else the machine's parallelism.
pub fn threads() -> usize {
    static THREADS: OnceLock<usize> = OnceLock::new();
    *THREADS.get_or_init(|| {
        if let Ok(v) = std::env::var("MXGPT_THREADS") {
            if let Ok(n) = v.trim().parse::<usize>() {
                if n >= 1 {
                    return n;
                }
            }
        }
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    })
}

/// Chunks per thread: enough to balance a busy machine, few enough that per-chunk setup (packing,
/// scratch buffers) stays small.
const CHUNKS_PER_THREAD: usize = 4;

/// Splits `0..n` into chunks of at least `min_items_per_thread` items (the last may be shorter)
/// and runs `f` on each, in parallel over the pool. Returns when all are done.
pub fn parallel_for<F>(n: usize, min_items_per_thread: usize, f: F)
where
    F: Fn(Range<usize>) + Sync,
{
    let chunks = chunk_ranges(n, min_items_per_thread.max(1), max_chunks());
    match chunks.len() {
        0 => {}
        1 => f(0..n),
        len => run(len, &|i| f(chunks[i].clone())),
    }
}

/// Like `parallel_for`, but hands each chunk the mutable sub-slice of `out` that its range of
/// rows owns (`row_len` elements per row), so chunks write disjoint memory.
pub fn parallel_rows_mut<T, F>(out: &mut [T], row_len: usize, min_rows_per_thread: usize, f: F)
where
    T: Send,
    F: Fn(Range<usize>, &mut [T]) + Sync,
{
    assert!(
        row_len > 0 && out.len() % row_len == 0,
        "parallel_rows_mut: ragged rows"
    );
    let rows = out.len() / row_len;
    let chunks = chunk_ranges(rows, min_rows_per_thread.max(1), max_chunks());
    match chunks.len() {
        0 => {}
        1 => f(0..rows, out),
        len => {
            let base = SendPtr(out.as_mut_ptr());
            run(len, &|i| {
                let r = chunks[i].clone();
                // SAFETY: the chunks are disjoint row ranges inside `out`, and each chunk index
                // is run exactly once, so no two live slices overlap.
                let mine = unsafe {
                    std::slice::from_raw_parts_mut(
                        base.get().add(r.start * row_len),
                        r.len() * row_len,
                    )
                };
                f(r, mine)
            });
        }
    }
}

fn max_chunks() -> usize {
    let t = threads();
    if t <= 1 {
        1
    } else {
        t * CHUNKS_PER_THREAD
    }
}

struct SendPtr<T>(*mut T);
unsafe impl<T: Send> Send for SendPtr<T> {}
unsafe impl<T: Send> Sync for SendPtr<T> {}
impl<T> SendPtr<T> {
    fn get(&self) -> *mut T {
        self.0
    }
}

/// A job as the workers see it: the chunk body with its lifetime erased, and the chunk count.
#[derive(Clone, Copy)]
struct Job {
    f: *const (dyn Fn(usize) + Sync),
    chunks: usize,
}
unsafe impl Send for Job {}

struct Pool {
    /// The current job and its generation (workers sleep until the generation changes).
    job: Mutex<(u64, Option<Job>)>,
    wake: Condvar,
    /// (generation << 32) | next unclaimed chunk: claims of a stale generation fail, so a late
    /// worker can never run an old job's body on a new job's chunk.
    claim: AtomicU64,
    done: AtomicUsize,
    /// A chunk of the current job panicked on a worker.
    panicked: AtomicBool,
    /// One job at a time; callers that find it taken use scoped threads.
    busy: Mutex<()>,
}

thread_local! {
    static IN_POOL_WORKER: Cell<bool> = const { Cell::new(false) };
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<&'static Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let p: &'static Pool = Box::leak(Box::new(Pool {
            job: Mutex::new((0, None)),
            wake: Condvar::new(),
            claim: AtomicU64::new(0),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            busy: Mutex::new(()),
        }));
        for i in 1..threads() {
            std::thread::Builder::new()
                .name(format!("mxgpt-cpu-{i}"))
                .spawn(move || worker(p))
                .expect("starting a CPU pool worker");
        }
        p
    })
}

/// Claims the next chunk of generation `gen`, or None when it has none left (or is over).
fn claim(p: &Pool, gen: u64, chunks: usize) -> Option<usize> {
    let mut c = p.claim.load(Ordering::Acquire);
    loop {
        let idx = (c & 0xFFFF_FFFF) as usize;
        if c >> 32 != gen & 0xFFFF_FFFF || idx >= chunks {
            return None;
        }
        match p
            .claim
            .compare_exchange_weak(c, c + 1, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => return Some(idx),
            Err(now) => c = now,
        }
    }
}

fn worker(p: &'static Pool) {
    IN_POOL_WORKER.with(|w| w.set(true));
    let mut seen = 0u64;
    loop {
        let (gen, job) = {
            let mut st = p.job.lock().unwrap();
            while st.0 == seen {
                st = p.wake.wait(st).unwrap();
            }
            (st.0, st.1)
        };
        seen = gen;
        let Some(job) = job else { continue };
        while let Some(i) = claim(p, gen, job.chunks) {
            // SAFETY: the caller keeps `f` alive until `done` reaches `chunks`, and this chunk
            // is not counted done before the call returns. A panic is passed to the caller.
            let r =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe { (*job.f)(i) }));
            if r.is_err() {
                p.panicked.store(true, Ordering::Release);
            }
            p.done.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// Runs `f(0..chunks)` (each index once) on the pool, the caller included; returns when done.
fn run(chunks: usize, f: &(dyn Fn(usize) + Sync)) {
    let nested = IN_POOL_WORKER.with(|w| w.get());
    let guard = if nested || threads() <= 1 {
        None
    } else {
        pool().busy.try_lock().ok()
    };
    let Some(_guard) = guard else {
        return run_scoped(chunks, f);
    };
    let p = pool();
    let gen = {
        let mut st = p.job.lock().unwrap();
        let gen = st.0 + 1;
        p.done.store(0, Ordering::Release);
        p.panicked.store(false, Ordering::Release);
        p.claim.store((gen & 0xFFFF_FFFF) << 32, Ordering::Release);
        // SAFETY (lifetime erasure): workers call `f` only for chunks claimed in this
        // generation, all of which finish before this function returns (the wait below).
        let f: *const (dyn Fn(usize) + Sync + '_) = f;
        let f: *const (dyn Fn(usize) + Sync + 'static) = unsafe { std::mem::transmute(f) };
        *st = (gen, Some(Job { f, chunks }));
        gen
    };
    p.wake.notify_all();
    // The caller's own panic is held until the workers are done with `f`.
    let mut own_panic = None;
    while let Some(i) = claim(p, gen, chunks) {
        if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(i))) {
            own_panic = Some(e);
        }
        p.done.fetch_add(1, Ordering::AcqRel);
    }
    let mut spins = 0u32;
    while p.done.load(Ordering::Acquire) < chunks {
        spins += 1;
        if spins < 64 {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
    if let Some(e) = own_panic {
        std::panic::resume_unwind(e);
    }
    if p.panicked.load(Ordering::Acquire) {
        panic!("a CPU pool worker panicked in a parallel chunk");
    }
}

/// The pool's schedule on scoped threads, for calls that find the pool busy.
fn run_scoped(chunks: usize, f: &(dyn Fn(usize) + Sync)) {
    let next = AtomicUsize::new(0);
    let body = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= chunks {
            break;
        }
        f(i);
    };
    let helpers = threads().min(chunks).saturating_sub(1);
    std::thread::scope(|s| {
        for _ in 0..helpers {
            s.spawn(body);
        }
        body();
    });
}

fn chunk_ranges(n: usize, min_items: usize, max_chunks: usize) -> Vec<Range<usize>> {
    if n == 0 {
        return Vec::new();
    }
    let chunks = (n / min_items).clamp(1, max_chunks.max(1));
    let base = n / chunks;
    let extra = n % chunks;
    let mut out = Vec::with_capacity(chunks);
    let mut start = 0;
    for i in 0..chunks {
        let len = base + usize::from(i < extra);
        out.push(start..start + len);
        start += len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn chunks_cover_exactly_once() {
        for n in [0, 1, 7, 100, 1001] {
            for min in [1, 3, 64] {
                for t in [1, 2, 5] {
                    let ch = chunk_ranges(n, min, t);
                    let mut next = 0;
                    for r in &ch {
                        assert_eq!(r.start, next);
                        assert!(r.end > r.start);
                        next = r.end;
                    }
                    assert_eq!(next, n);
                    assert!(ch.len() <= t);
                }
            }
        }
    }

    #[test]
    fn parallel_for_visits_every_item_once() {
        let hits: Vec<AtomicUsize> = (0..1000).map(|_| AtomicUsize::new(0)).collect();
        parallel_for(1000, 10, |r| {
            for i in r {
                hits[i].fetch_add(1, Ordering::Relaxed);
            }
        });
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
    }

    #[test]
    fn parallel_rows_mut_writes_own_rows() {
        let mut out = vec![0usize; 37 * 3];
        parallel_rows_mut(&mut out, 3, 1, |rows, chunk| {
            for (i, r) in rows.enumerate() {
                for j in 0..3 {
                    chunk[i * 3 + j] = r * 10 + j;
                }
            }
        });
        for r in 0..37 {
            for j in 0..3 {
                assert_eq!(out[r * 3 + j], r * 10 + j);
            }
        }
    }

    #[test]
    fn nested_and_concurrent_calls_complete() {
        // Calls from several threads at once (one gets the pool, the others scoped threads) and
        // a parallel call inside a chunk (runs nested): every item exactly once, many times over.
        std::thread::scope(|s| {
            for t in 0..3 {
                s.spawn(move || {
                    for round in 0..200 {
                        let n = 50 + (round * 7 + t) % 300;
                        let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                        parallel_for(n, 3, |r| {
                            for i in r {
                                hits[i].fetch_add(1, Ordering::Relaxed);
                            }
                            parallel_for(4, 1, |_| {});
                        });
                        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
                    }
                });
            }
        });
    }
}
