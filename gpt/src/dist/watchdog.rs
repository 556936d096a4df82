//! The hung-rank watchdog. MPI notices a rank that dies, not one that is alive but stuck
//! (stopped, in an endless loop, waiting on a device that never answers): the other ranks would
//! wait in their next collective forever. `Watched` times every collective of a transport, and a
//! thread of its own ends this process with a clear message once one has waited longer than the
//! limit; the launcher (mpirun) then ends every rank, the stuck one included.
//!
//! Ending the process at any moment is safe for checkpoints: a checkpoint counts only once rank
//! 0 has written its model file, after every rank wrote its shard (see `trainer::save_state`).
//!
//! The limit must exceed the longest time one rank may legitimately wait for the others: rank 0
//! alone evaluates, samples and writes the model file while the others wait in their next
//! collective. Hence the generous default (`--collective-timeout`).

use super::{Shards, Transport};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The exit status of a rank whose watchdog fired (mpirun reports it, then ends the others).
pub const HUNG_EXIT: i32 = 3;

/// What the watchdog does when a collective waited too long; the default prints and exits.
pub type OnExpiry = Box<dyn FnOnce(String) + Send>;

/// A transport whose collectives are timed by a watchdog thread.
pub struct Watched<'a> {
    inner: &'a dyn Transport,
    watch: Arc<Watch>,
}

struct Watch {
    /// The collective in progress and when it started (None: none is).
    busy: Mutex<Option<(&'static str, Instant)>>,
    /// The training step this rank is on (for the message); u64::MAX: not training yet.
    step: AtomicU64,
}

impl<'a> Watched<'a> {
    /// Watches `inner`'s collectives: one that waits `limit` or longer calls `on_expiry` (once)
    /// with a message naming this rank, the collective, the step and the limit. The thread ends
    /// when the `Watched` is dropped.
    pub fn new(inner: &'a dyn Transport, limit: Duration, on_expiry: OnExpiry) -> Watched<'a> {
        let watch = Arc::new(Watch {
            busy: Mutex::new(None),
            step: AtomicU64::new(u64::MAX),
        });
        let weak = Arc::downgrade(&watch);
        let (rank, size) = (inner.rank(), inner.size());
        // Fine enough to end within ~5% past the limit, coarse enough to cost nothing.
        let tick = (limit / 20).clamp(Duration::from_millis(10), Duration::from_secs(1));
        std::thread::Builder::new()
            .name("collective-watchdog".into())
            .spawn(move || loop {
                std::thread::sleep(tick);
                let Some(w) = weak.upgrade() else { return };
                let busy = *w.busy.lock().unwrap_or_else(|e| e.into_inner());
                let Some((what, since)) = busy else { continue };
                let waited = since.elapsed();
                if waited >= limit {
                    let step = match w.step.load(Ordering::Relaxed) {
                        u64::MAX => "before training".to_string(),
                        s => format!("at step {}", s + 1),
                    };
                    on_expiry(format!(
                        "rank {rank} of {size}: {what} waited {:.1} s for the other ranks {step} (--collective-timeout {}): another rank is stuck (stopped, hung, or far slower than this one); ending the job. The newest complete checkpoint stays valid: rerun with --resume auto",
                        waited.as_secs_f64(),
                        limit.as_secs_f64()
                    ));
                    return;
                }
            })
            .expect("a thread for the collective watchdog");
        Watched { inner, watch }
    }

    /// As `new`, ending this process (status `HUNG_EXIT`) after printing the message to stderr.
    pub fn exiting(inner: &'a dyn Transport, limit: Duration) -> Watched<'a> {
        Watched::new(
            inner,
            limit,
            Box::new(|msg| {
                eprintln!("error: {msg}");
                // _exit: the main thread is blocked inside MPI; no destructor or MPI_Finalize
                // may run. mpirun sees a rank end with an error and ends the others.
                unsafe { libc::_exit(HUNG_EXIT) }
            }),
        )
    }

    /// The step the training loop is on (0-based), for the message.
    pub fn set_step(&self, step: u64) {
        self.watch.step.store(step, Ordering::Relaxed);
    }

    fn timed<T>(&self, what: &'static str, f: impl FnOnce() -> T) -> T {
        self.set_busy(Some((what, Instant::now())));
        let r = f();
        self.set_busy(None);
        r
    }

    fn set_busy(&self, v: Option<(&'static str, Instant)>) {
        *self.watch.busy.lock().unwrap_or_else(|e| e.into_inner()) = v;
    }
}

impl Transport for Watched<'_> {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn size(&self) -> usize {
        self.inner.size()
    }
    fn reduce_scatter_sum(
        &self,
        send: &[f32],
        shards: &Shards,
        out: &mut [f32],
    ) -> Result<(), String> {
        self.timed("the gradient reduce-scatter", || {
            self.inner.reduce_scatter_sum(send, shards, out)
        })
    }
    fn exchange(&self, send: &[f32], shards: &Shards, recv: &mut [f32]) -> Result<(), String> {
        self.timed("the gradient exchange", || {
            self.inner.exchange(send, shards, recv)
        })
    }
    fn exchange_counts(
        &self,
        send: &[f32],
        send_counts: &[usize],
        recv: &mut [f32],
        recv_counts: &[usize],
    ) -> Result<(), String> {
        self.timed("a gradient bucket's exchange", || {
            self.inner
                .exchange_counts(send, send_counts, recv, recv_counts)
        })
    }
    fn all_gather(&self, buf: &mut [f32], shards: &Shards) -> Result<(), String> {
        self.timed("the parameter all-gather", || {
            self.inner.all_gather(buf, shards)
        })
    }
    fn gather(
        &self,
        mine: &[f32],
        shards: &Shards,
        root: usize,
        buf: &mut [f32],
    ) -> Result<(), String> {
        self.timed("a gather", || self.inner.gather(mine, shards, root, buf))
    }
    fn all_gather_f64(&self, x: f64) -> Result<Vec<f64>, String> {
        self.timed("an all-gather of scalars", || self.inner.all_gather_f64(x))
    }
    fn broadcast(&self, buf: &mut [u8], root: usize) -> Result<(), String> {
        self.timed("a broadcast", || self.inner.broadcast(buf, root))
    }
    fn barrier(&self) -> Result<(), String> {
        self.timed("a barrier", || self.inner.barrier())
    }
    fn watched(
        &self,
        what: &'static str,
        f: &mut dyn FnMut() -> Result<(), String>,
    ) -> Result<(), String> {
        self.timed(what, f)
    }
    fn abort(&self, code: i32) -> ! {
        self.inner.abort(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::Local;
    use std::sync::mpsc;

    /// A transport whose barrier takes `delay` (a peer that arrives late, or never).
    struct Slow {
        delay: Duration,
    }
    impl Transport for Slow {
        fn rank(&self) -> usize {
            1
        }
        fn size(&self) -> usize {
            2
        }
        fn reduce_scatter_sum(&self, s: &[f32], sh: &Shards, o: &mut [f32]) -> Result<(), String> {
            // This rank's shard of its own values (the peer contributes nothing).
            o.copy_from_slice(&s[sh.range(self.rank())]);
            Ok(())
        }
        fn exchange(&self, s: &[f32], sh: &Shards, r: &mut [f32]) -> Result<(), String> {
            Local.exchange(s, sh, r)
        }
        fn all_gather(&self, b: &mut [f32], s: &Shards) -> Result<(), String> {
            Local.all_gather(b, s)
        }
        fn all_gather_f64(&self, x: f64) -> Result<Vec<f64>, String> {
            Ok(vec![x, x])
        }
        fn broadcast(&self, _: &mut [u8], _: usize) -> Result<(), String> {
            Ok(())
        }
        fn barrier(&self) -> Result<(), String> {
            std::thread::sleep(self.delay);
            Ok(())
        }
        fn abort(&self, _: i32) -> ! {
            unreachable!()
        }
    }

    fn watch(t: &dyn Transport, limit_ms: u64) -> (Watched<'_>, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel();
        let w = Watched::new(
            t,
            Duration::from_millis(limit_ms),
            Box::new(move |m| tx.send(m).unwrap()),
        );
        (w, rx)
    }

    #[test]
    fn a_collective_that_waits_past_the_limit_fires_once_with_a_clear_message() {
        let slow = Slow {
            delay: Duration::from_millis(600),
        };
        let (w, rx) = watch(&slow, 150);
        w.set_step(6);
        let t = Instant::now();
        w.barrier().unwrap();
        let msg = rx
            .try_recv()
            .expect("the watchdog fired during the barrier");
        assert!(t.elapsed() >= Duration::from_millis(150));
        for want in [
            "rank 1 of 2",
            "a barrier",
            "at step 7",
            "--collective-timeout 0.15",
        ] {
            assert!(msg.contains(want), "{want:?} missing from: {msg}");
        }
        std::thread::sleep(Duration::from_millis(300));
        assert!(rx.try_recv().is_err(), "fired twice");
    }

    #[test]
    fn a_device_collective_run_through_watched_is_timed_too() {
        let (w, rx) = watch(&Local, 100);
        w.watched("the NCCL gradient exchange", &mut || {
            std::thread::sleep(Duration::from_millis(400));
            Ok(())
        })
        .unwrap();
        let msg = rx.try_recv().expect("the watchdog fired");
        assert!(msg.contains("the NCCL gradient exchange"), "{msg}");
    }

    #[test]
    fn quick_collectives_and_idle_time_never_fire() {
        let quick = Slow {
            delay: Duration::from_millis(20),
        };
        let (w, rx) = watch(&quick, 150);
        // Many quick collectives adding up past the limit, then idle time (computing) past it.
        for _ in 0..15 {
            w.barrier().unwrap();
            let mut b = vec![1.0f32; 4];
            w.all_reduce_sum(&mut b).unwrap();
            assert_eq!(b, vec![1.0; 4]);
        }
        std::thread::sleep(Duration::from_millis(400));
        assert!(rx.try_recv().is_err(), "fired without a long collective");
    }
}
