//! Events for timing work on the stream, and for waiting for one point of it (pinned.rs).

use super::error::Result;

/// A timing event. Record two on the stream around some work, then `elapsed_ms`.
pub struct Event {
    pub(crate) inner: EventInner,
}

pub(crate) enum EventInner {
    /// A CUevent (as a raw pointer value), destroyed on drop.
    #[cfg(feature = "cuda")]
    Cuda(super::driver::RawEvent),
    /// The harness runs launches synchronously, so the wall clock at `record` is the event.
    #[cfg_attr(not(feature = "harness"), allow(dead_code))]
    Host(std::cell::Cell<Option<std::time::Instant>>),
}

impl Event {
    /// Waits until the work queued before the event's last record has run (not what was queued
    /// after it). On the harness that work is done already.
    pub fn synchronize(&self) -> Result<()> {
        match &self.inner {
            #[cfg(feature = "cuda")]
            EventInner::Cuda(e) => e.synchronize(),
            EventInner::Host(t) => match t.get() {
                Some(_) => Ok(()),
                None => Err(super::CudaError::new(
                    "synchronize on an event never recorded",
                    600,
                )),
            },
        }
    }

    /// Milliseconds from `start` to `self`, waiting for `self` to complete.
    pub fn elapsed_ms(&self, start: &Event) -> Result<f32> {
        match (&self.inner, &start.inner) {
            #[cfg(feature = "cuda")]
            (EventInner::Cuda(end), EventInner::Cuda(start)) => end.elapsed_ms(start),
            (EventInner::Host(end), EventInner::Host(start)) => match (start.get(), end.get()) {
                (Some(s), Some(e)) => Ok(e.saturating_duration_since(s).as_secs_f32() * 1e3),
                _ => Err(super::CudaError::new(
                    "elapsed_ms of an event never recorded",
                    600,
                )),
            },
            #[allow(unreachable_patterns)]
            _ => Err(super::CudaError::new(
                "elapsed_ms between events of different devices",
                1,
            )),
        }
    }
}
