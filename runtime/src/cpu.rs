//! CPU parallelism: scoped std threads over contiguous chunks of work.
//!
//! No pool, no global state: each call spawns `threads()` scoped workers and joins them. A spawn
//! costs a few microseconds, which is noise next to the ops we split (matmuls, attention over a
//! batch), and small ops stay on the calling thread via `min_items_per_thread`.

use std::ops::Range;
use std::sync::OnceLock;

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

/// Splits `0..n` into at most `threads()` contiguous ranges of at least `min_items_per_thread`
/// items (the last may be shorter) and runs `f` on each, in parallel. Returns when all are done.
pub fn parallel_for<F>(n: usize, min_items_per_thread: usize, f: F)
where
    F: Fn(Range<usize>) + Sync,
{
    let chunks = chunk_ranges(n, min_items_per_thread.max(1), threads());
    if chunks.len() <= 1 {
        if n > 0 {
            f(0..n);
        }
        return;
    }
    std::thread::scope(|s| {
        let (first, rest) = chunks.split_first().unwrap();
        for r in rest {
            let r = r.clone();
            let f = &f;
            s.spawn(move || f(r));
        }
        f(first.clone());
    });
}

/// Like `parallel_for`, but hands each worker the mutable sub-slice of `out` that its range of
/// rows owns (`row_len` elements per row), so workers write disjoint memory without `unsafe`.
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
    let chunks = chunk_ranges(rows, min_rows_per_thread.max(1), threads());
    if chunks.len() <= 1 {
        if rows > 0 {
            f(0..rows, out);
        }
        return;
    }
    std::thread::scope(|s| {
        let mut rest = out;
        let mut handles = Vec::new();
        for (i, r) in chunks.iter().enumerate() {
            let (mine, tail) = rest.split_at_mut((r.end - r.start) * row_len);
            rest = tail;
            let r = r.clone();
            let f = &f;
            if i + 1 == chunks.len() {
                f(r, mine);
            } else {
                handles.push(s.spawn(move || f(r, mine)));
            }
        }
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
}
