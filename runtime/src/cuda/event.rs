//! Events: timing work on a stream, waiting on the host for one point of a stream (pinned.rs),
//! and ordering one stream after a point of another (`Gpu::wait_event`).

use super::error::Result;
use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};

/// An event. Record two on a stream around some work, then `elapsed_ms`; or record one and let
/// another stream (`Gpu::wait_event`) or the host (`synchronize`) wait for it.
pub struct Event {
    pub(crate) inner: EventInner,
}

pub(crate) enum EventInner {
    /// A CUevent (as a raw pointer value), destroyed on drop.
    #[cfg(feature = "cuda")]
    Cuda(super::driver::RawEvent),
    #[cfg_attr(not(feature = "harness"), allow(dead_code))]
    Host(Rc<HostEvent>),
}

/// A harness event. Its records run when their stream reaches them (harness.rs may hold a
/// stream's work back to find missing waits), so it counts records enqueued and records run.
#[cfg_attr(not(feature = "harness"), allow(dead_code))]
#[derive(Default)]
pub(crate) struct HostEvent {
    /// The clock when the last record ran.
    pub(crate) time: Cell<Option<std::time::Instant>>,
    pub(crate) enqueued: Cell<u64>,
    pub(crate) done: Cell<u64>,
    /// The stream of the last record.
    pub(crate) stream: Cell<usize>,
    /// The streams that run the records (set at the first record).
    pub(crate) runner: RefCell<Option<Weak<dyn RunUntil>>>,
}

/// What can run a stream's queued work up to one of an event's records (harness.rs).
pub(crate) trait RunUntil {
    /// Runs stream `stream`'s queued work until `event` has run `generation` records.
    fn run_until(&self, stream: usize, event: &HostEvent, generation: u64) -> Result<()>;
}

impl HostEvent {
    /// Runs what the event's last record (as of now) waits for.
    pub(crate) fn complete(&self) -> Result<()> {
        let generation = self.enqueued.get();
        if self.done.get() >= generation {
            return Ok(());
        }
        let runner = self.runner.borrow().as_ref().and_then(Weak::upgrade);
        match runner {
            Some(r) => r.run_until(self.stream.get(), self, generation),
            None => Err(super::CudaError::new(
                "an event whose device is gone waited for",
                600,
            )),
        }
    }
}

impl Event {
    /// Waits until the work queued before the event's last record has run (not what was queued
    /// after it).
    pub fn synchronize(&self) -> Result<()> {
        match &self.inner {
            #[cfg(feature = "cuda")]
            EventInner::Cuda(e) => e.synchronize(),
            EventInner::Host(e) => {
                if e.enqueued.get() == 0 {
                    return Err(super::CudaError::new(
                        "synchronize on an event never recorded",
                        600,
                    ));
                }
                e.complete()
            }
        }
    }

    /// Milliseconds from `start` to `self`, waiting for `self` to complete.
    pub fn elapsed_ms(&self, start: &Event) -> Result<f32> {
        match (&self.inner, &start.inner) {
            #[cfg(feature = "cuda")]
            (EventInner::Cuda(end), EventInner::Cuda(start)) => end.elapsed_ms(start),
            (EventInner::Host(end), EventInner::Host(start)) => {
                if end.enqueued.get() > 0 {
                    end.complete()?;
                }
                match (start.time.get(), end.time.get()) {
                    (Some(s), Some(e)) => Ok(e.saturating_duration_since(s).as_secs_f32() * 1e3),
                    _ => Err(super::CudaError::new(
                        "elapsed_ms of an event never recorded",
                        600,
                    )),
                }
            }
            #[allow(unreachable_patterns)]
            _ => Err(super::CudaError::new(
                "elapsed_ms between events of different devices",
                1,
            )),
        }
    }
}
