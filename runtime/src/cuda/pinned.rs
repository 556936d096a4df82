//! Page-locked ("pinned") host buffers for copies that do not block the host.
//!
//! A copy between pageable host memory and the device is staged by the driver, which either
//! waits or copies twice; from pinned memory (cuMemHostAlloc) the DMA engine reads or writes
//! the host buffer itself, when the stream reaches the copy, so `cuMemcpy*Async` returns at
//! once. The price: the host must not touch the buffer until that copy has run. Here that is
//! enforced by the type: every asynchronous copy into or out of a `PinnedBuffer` records an
//! event after it, and the only way to the host bytes (`host`) waits for that event first. A
//! caller that wants no wait at all keeps two or more buffers and alternates (gpt's CUDA
//! backend stages each micro batch's tokens that way).
//!
//! On the harness a pinned buffer is plain host memory (guarded like device memory) and the
//! copies complete before they return, so the wait is free; the ownership rule is the same.
//!
//! Not run on a GPU yet: the driver path is compiled against the stub driver only.

use super::error::{CudaError, Result};
use super::memory::DeviceElem;
use super::{DeviceBuffer, Event, Gpu};
use std::marker::PhantomData;

/// `len` elements of `T` in page-locked host memory, with the event of the last asynchronous
/// copy that uses it. Belongs to the `Gpu` that made it and must be dropped before it.
pub struct PinnedBuffer<T: DeviceElem> {
    ptr: *mut u8,
    len: usize,
    free: unsafe fn(*mut u8),
    /// Recorded after the last copy that reads or writes the buffer; `pending` until waited.
    event: Option<Event>,
    pending: bool,
    _marker: PhantomData<*mut T>,
}

impl<T: DeviceElem> PinnedBuffer<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether an asynchronous copy may still use the buffer (no wait has seen it finish).
    pub fn is_pending(&self) -> bool {
        self.pending
    }

    /// Waits until no queued copy uses the buffer (only that copy: later work on the stream is
    /// not waited for).
    pub fn wait(&mut self) -> Result<()> {
        if self.pending {
            self.event
                .as_ref()
                .expect("a pending copy recorded its event")
                .synchronize()?;
            self.pending = false;
        }
        Ok(())
    }

    /// The host's view of the buffer, after `wait`.
    pub fn host(&mut self) -> Result<&mut [T]> {
        self.wait()?;
        // SAFETY: `len` elements allocated for T; no copy uses them any more (waited above);
        // the exclusive borrow keeps new copies out while the slice lives.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.ptr.cast::<T>(), self.len) })
    }

    fn bytes(&self) -> usize {
        self.len * std::mem::size_of::<T>()
    }
}

impl<T: DeviceElem> Drop for PinnedBuffer<T> {
    fn drop(&mut self) {
        // A copy still running must not land in (or read) freed memory. An error here has
        // already been reported by the device (a sticky fault): free anyway.
        let _ = self.wait();
        // SAFETY: allocated by the device whose free function this is.
        unsafe { (self.free)(self.ptr) };
    }
}

impl Gpu {
    /// A pinned host buffer of `len` elements, zeroed. Not capturable (an allocation).
    pub fn alloc_pinned<T: DeviceElem>(&self, len: usize) -> Result<PinnedBuffer<T>> {
        self.refuse_in_capture("a pinned host allocation")?;
        let bytes = (len * std::mem::size_of::<T>()).max(1);
        let ptr = self.dev.alloc_host(bytes)?;
        // SAFETY: `bytes` just allocated.
        unsafe { std::ptr::write_bytes(ptr, 0, bytes) };
        Ok(PinnedBuffer {
            ptr,
            len,
            free: self.dev.free_host_fn(),
            event: None,
            pending: false,
            _marker: PhantomData,
        })
    }

    /// Records the buffer's event after the copy just enqueued.
    fn mark_in_flight<T: DeviceElem>(&self, buf: &mut PinnedBuffer<T>) -> Result<()> {
        if buf.event.is_none() {
            buf.event = Some(self.event()?);
        }
        self.record(buf.event.as_ref().expect("created above"))?;
        buf.pending = true;
        Ok(())
    }

    /// Enqueues a copy of all of `src` into `dst[offset..offset + src.len()]` and returns
    /// without waiting: the host may write `src` again only through `PinnedBuffer::host`, which
    /// waits for this copy. Not capturable.
    pub fn copy_pinned_to_device_async<T: DeviceElem>(
        &self,
        src: &mut PinnedBuffer<T>,
        dst: &DeviceBuffer<T>,
        offset: usize,
    ) -> Result<()> {
        self.refuse_in_capture("a copy host -> device")?;
        let at = span(dst, offset, src.len, "copy_pinned_to_device_async")?;
        if src.len > 0 {
            // SAFETY: `at` is a live device range of src.bytes(); src stays allocated until the
            // event recorded below has passed (Drop and `host` wait for it).
            unsafe { self.dev.copy_to_device_async(at, src.ptr, src.bytes())? };
        }
        self.mark_in_flight(src)
    }

    /// Enqueues a copy of `src[offset..offset + dst.len()]` into `dst` and returns without
    /// waiting; `PinnedBuffer::host` waits for it (and for nothing queued after it). Not
    /// capturable.
    pub fn copy_to_pinned_async<T: DeviceElem>(
        &self,
        src: &DeviceBuffer<T>,
        offset: usize,
        dst: &mut PinnedBuffer<T>,
    ) -> Result<()> {
        self.refuse_in_capture("a copy device -> host")?;
        let at = span(src, offset, dst.len, "copy_to_pinned_async")?;
        if dst.len > 0 {
            // SAFETY: as above, the other way round.
            unsafe { self.dev.copy_to_host_async(dst.ptr, at, dst.bytes())? };
        }
        self.mark_in_flight(dst)
    }
}

/// The device address of `buf[offset..offset + len]`, or an error naming `what`.
fn span<T: DeviceElem>(
    buf: &DeviceBuffer<T>,
    offset: usize,
    len: usize,
    what: &str,
) -> Result<u64> {
    if offset.checked_add(len).is_none_or(|end| end > buf.len()) {
        return Err(CudaError::new(
            format!(
                "{what}: elements {offset}..{} of a device buffer of {} {}",
                offset.saturating_add(len),
                buf.len(),
                T::NAME
            ),
            1,
        ));
    }
    Ok(buf.device_ptr() + (offset * std::mem::size_of::<T>()) as u64)
}
