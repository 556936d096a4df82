//! Typed device buffers and copies.

use super::error::{CudaError, Result};
use super::{Gpu, KernelArg};
use std::ffi::c_void;
use std::marker::PhantomData;

/// Element types that may be copied bytewise between host and device.
///
/// # Safety
/// Plain data: no padding, no pointers, every bit pattern the device writes is a valid value.
pub unsafe trait DeviceElem: Copy + 'static {
    const NAME: &'static str;
}
macro_rules! elems {
    ($($t:ty => $n:literal),*) => {$(
        // SAFETY: primitive numeric types (and half's repr(transparent) u16 wrappers).
        unsafe impl DeviceElem for $t { const NAME: &'static str = $n; }
    )*};
}
elems!(f32 => "f32", f64 => "f64", half::bf16 => "bf16", half::f16 => "f16", u8 => "u8",
       i8 => "i8", u16 => "u16", i16 => "i16", u32 => "u32", i32 => "i32", u64 => "u64", i64 => "i64");

/// `len` elements of `T` in device memory, freed on drop. Belongs to the `Gpu` that made it and
/// must be dropped before it.
pub struct DeviceBuffer<T: DeviceElem> {
    ptr: u64,
    len: usize,
    free: unsafe fn(u64),
    _marker: PhantomData<*mut T>,
}

impl<T: DeviceElem> DeviceBuffer<T> {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn bytes(&self) -> usize {
        self.len * std::mem::size_of::<T>()
    }
    /// The device address, for kernels that take pointers into the middle of a buffer.
    pub fn device_ptr(&self) -> u64 {
        self.ptr
    }
}

// SAFETY: passes the 64-bit device address, which is what a `T*` kernel parameter expects.
unsafe impl<T: DeviceElem> KernelArg for DeviceBuffer<T> {
    fn as_kernel_param(&self) -> *mut c_void {
        &self.ptr as *const u64 as *mut c_void
    }
    fn param_size(&self) -> usize {
        8
    }
}

impl<T: DeviceElem> Drop for DeviceBuffer<T> {
    fn drop(&mut self) {
        if self.ptr != 0 {
            // SAFETY: allocated by the device whose free function this is.
            unsafe { (self.free)(self.ptr) };
        }
    }
}

fn size_check(a: usize, b: usize, what: &str, tname: &str) -> Result<()> {
    if a != b {
        return Err(CudaError::new(
            format!("{what}: device buffer has {a} {tname}, host slice {b}"),
            1,
        ));
    }
    Ok(())
}

impl Gpu {
    /// Uninitialized device memory for `len` elements. Out of memory names the request and what
    /// is free.
    pub fn alloc<T: DeviceElem>(&self, len: usize) -> Result<DeviceBuffer<T>> {
        let bytes = len.checked_mul(std::mem::size_of::<T>()).ok_or_else(|| {
            CudaError::new(
                format!("allocation of {len} x {} overflows usize", T::NAME),
                2,
            )
        })?;
        self.refuse_in_capture(&format!("allocation of {len} x {}", T::NAME))?;
        let ptr = if bytes > 0 {
            let what = || {
                let free = self
                    .memory_info()
                    .map(|(f, t)| format!("{:.2} GiB free of {:.2} GiB", gib(f), gib(t)));
                format!(
                    "allocation of {len} x {} ({:.3} GiB) on {}: {}",
                    T::NAME,
                    gib(bytes),
                    self.props().name,
                    free.unwrap_or_else(|e| format!("free memory unknown ({e})"))
                )
            };
            let p = self.dev.alloc(bytes, &what)?;
            self.allocated.set(self.allocated.get() + bytes);
            p
        } else {
            0
        };
        Ok(DeviceBuffer {
            ptr,
            len,
            free: self.dev.free_fn(),
            _marker: PhantomData,
        })
    }

    /// A device copy of `host`.
    pub fn upload<T: DeviceElem>(&self, host: &[T]) -> Result<DeviceBuffer<T>> {
        let buf = self.alloc::<T>(host.len())?;
        self.copy_to_device(host, &buf)?;
        Ok(buf)
    }

    /// Copies `host` into `dst` (same length) and waits for the copy.
    pub fn copy_to_device<T: DeviceElem>(&self, host: &[T], dst: &DeviceBuffer<T>) -> Result<()> {
        size_check(dst.len, host.len(), "copy_to_device", T::NAME)?;
        self.copy_to_device_at(host, dst, 0)
    }

    /// Copies `host` into elements `[offset, offset + host.len())` of `dst` and waits.
    pub fn copy_to_device_at<T: DeviceElem>(
        &self,
        host: &[T],
        dst: &DeviceBuffer<T>,
        offset: usize,
    ) -> Result<()> {
        range_check::<T>(dst.len, offset, host.len(), "copy_to_device_at")?;
        self.refuse_in_capture("a copy host -> device")?;
        if host.is_empty() {
            return Ok(());
        }
        let at = dst.ptr + (offset * std::mem::size_of::<T>()) as u64;
        // SAFETY: range checked; the copy completes before this returns.
        unsafe {
            self.dev
                .copy_to_device(at, host.as_ptr().cast(), std::mem::size_of_val(host))
        }
    }

    /// Enqueues a copy of `host` into `dst` (same length) without waiting for the stream: the
    /// copy lands in stream order, after the work queued before it. `host` may be changed as
    /// soon as this returns (the driver stages pageable memory). Not capturable.
    pub fn copy_to_device_async<T: DeviceElem>(
        &self,
        host: &[T],
        dst: &DeviceBuffer<T>,
    ) -> Result<()> {
        size_check(dst.len, host.len(), "copy_to_device_async", T::NAME)?;
        self.refuse_in_capture("a copy host -> device")?;
        if host.is_empty() {
            return Ok(());
        }
        // SAFETY: equal lengths checked; the driver reads `host` before returning.
        unsafe {
            self.dev.copy_to_device_async(
                dst.ptr,
                host.as_ptr().cast(),
                std::mem::size_of_val(host),
            )
        }
    }

    /// Waits for queued work, then copies `src` into `host` (same length).
    pub fn copy_to_host<T: DeviceElem>(&self, src: &DeviceBuffer<T>, host: &mut [T]) -> Result<()> {
        size_check(src.len, host.len(), "copy_to_host", T::NAME)?;
        self.copy_to_host_at(src, 0, host)
    }

    /// Waits for queued work, then copies elements `[offset, offset + host.len())` of `src`
    /// into `host`.
    pub fn copy_to_host_at<T: DeviceElem>(
        &self,
        src: &DeviceBuffer<T>,
        offset: usize,
        host: &mut [T],
    ) -> Result<()> {
        range_check::<T>(src.len, offset, host.len(), "copy_to_host_at")?;
        self.refuse_in_capture("a copy device -> host")?;
        if host.is_empty() {
            return Ok(());
        }
        let at = src.ptr + (offset * std::mem::size_of::<T>()) as u64;
        // SAFETY: range checked; every DeviceElem bit pattern is valid.
        unsafe {
            self.dev
                .copy_to_host(host.as_mut_ptr().cast(), at, std::mem::size_of_val(host))
        }
    }

    /// `src` as a new host vector.
    pub fn download<T: DeviceElem + Default>(&self, src: &DeviceBuffer<T>) -> Result<Vec<T>> {
        let mut v = vec![T::default(); src.len];
        self.copy_to_host(src, &mut v)?;
        Ok(v)
    }

    /// Stream-ordered device-to-device copy of equal-length buffers.
    pub fn copy_device<T: DeviceElem>(
        &self,
        src: &DeviceBuffer<T>,
        dst: &DeviceBuffer<T>,
    ) -> Result<()> {
        size_check(dst.len, src.len, "copy_device", T::NAME)?;
        if src.bytes() == 0 {
            return Ok(());
        }
        // SAFETY: both buffers live and of equal size.
        unsafe { self.dev.copy_device(dst.ptr, src.ptr, src.bytes()) }
    }

    /// Stream-ordered copy of `len` elements from `src[src_offset..]` to `dst[dst_offset..]`
    /// (the spans must not overlap if `src` and `dst` are one buffer).
    pub fn copy_device_at<T: DeviceElem>(
        &self,
        src: &DeviceBuffer<T>,
        src_offset: usize,
        dst: &DeviceBuffer<T>,
        dst_offset: usize,
        len: usize,
    ) -> Result<()> {
        range_check::<T>(src.len, src_offset, len, "copy_device_at (source)")?;
        range_check::<T>(dst.len, dst_offset, len, "copy_device_at (destination)")?;
        if len == 0 {
            return Ok(());
        }
        let size = std::mem::size_of::<T>();
        // SAFETY: both spans checked against their live buffers.
        unsafe {
            self.dev.copy_device(
                dst.ptr + (dst_offset * size) as u64,
                src.ptr + (src_offset * size) as u64,
                len * size,
            )
        }
    }

    /// Sets every byte of `buf` to `byte` (stream-ordered). 0xFF poisons f32/bf16 with NaN,
    /// which tests use to catch elements a kernel forgot to write.
    pub fn fill_bytes<T: DeviceElem>(&self, buf: &DeviceBuffer<T>, byte: u8) -> Result<()> {
        self.fill_bytes_range(buf, 0, buf.len, byte)
    }

    /// Sets every byte of elements `[offset, offset + len)` of `buf` to `byte` (stream-ordered).
    pub fn fill_bytes_range<T: DeviceElem>(
        &self,
        buf: &DeviceBuffer<T>,
        offset: usize,
        len: usize,
        byte: u8,
    ) -> Result<()> {
        range_check::<T>(buf.len, offset, len, "fill_bytes_range")?;
        if len == 0 {
            return Ok(());
        }
        let size = std::mem::size_of::<T>();
        // SAFETY: writes exactly the checked range.
        unsafe {
            self.dev
                .memset(buf.ptr + (offset * size) as u64, byte, len * size)
        }
    }
}

fn range_check<T: DeviceElem>(buf_len: usize, offset: usize, len: usize, what: &str) -> Result<()> {
    if offset.checked_add(len).is_none_or(|end| end > buf_len) {
        return Err(CudaError::new(
            format!("{what}: elements [{offset}, {offset}+{len}) outside a device buffer of {buf_len} {}", T::NAME),
            1,
        ));
    }
    Ok(())
}

pub(crate) fn gib(bytes: usize) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}
