//! CUDA events for timing work on the stream.

use super::error::{check, Result};
use super::{sys, Gpu};
use cust_raw::CUevent;

/// A timing event. Record two on the stream around some work, then `elapsed_ms`.
pub struct Event {
    raw: CUevent,
}

impl Gpu {
    pub fn event(&self) -> Result<Event> {
        let mut raw: CUevent = std::ptr::null_mut();
        // SAFETY: valid out-pointer; flags 0 = default (timing enabled).
        check(unsafe { sys::cuEventCreate(&mut raw, 0) }, || {
            "cuEventCreate".into()
        })?;
        Ok(Event { raw })
    }

    /// Enqueues `event` on the Gpu's stream.
    pub fn record(&self, event: &Event) -> Result<()> {
        // SAFETY: event and stream belong to this context.
        check(
            unsafe { sys::cuEventRecord(event.raw, self.stream()) },
            || "cuEventRecord".into(),
        )
    }
}

impl Event {
    /// Milliseconds from `start` to `self`, waiting for `self` to complete.
    pub fn elapsed_ms(&self, start: &Event) -> Result<f32> {
        let mut ms = 0f32;
        // SAFETY: both events were created and recorded by a Gpu.
        unsafe {
            check(sys::cuEventSynchronize(self.raw), || {
                "cuEventSynchronize (timed work failed?)".into()
            })?;
            check(
                sys::cuEventElapsedTime(&mut ms, start.raw, self.raw),
                || "cuEventElapsedTime".into(),
            )?;
        }
        Ok(ms)
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: created by cuEventCreate.
        unsafe { sys::cuEventDestroy_v2(self.raw) };
    }
}
