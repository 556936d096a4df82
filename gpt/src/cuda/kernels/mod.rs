//! Typed, checked launchers for the kernels of ptx/kernels: one Rust function per kernel (or
//! per multi-kernel operation), taking device pointers and shapes. Each launcher checks every
//! pointer's length against the shapes before launching, so a wrong call is an error naming the
//! kernel and the operand instead of an out-of-bounds access on the device. The backend and the
//! GPU tests (tests/tests/gpu_*.rs) both go through these, so the tests exercise the exact
//! launch geometry training uses.

use runtime::cuda::{CudaError, DeviceBuffer, DeviceElem, KernelArg, Result};
use std::ffi::c_void;
use std::marker::PhantomData;

pub mod adamw;
pub mod attention;
pub mod cast;
pub mod classifier;
pub mod dp_sum;
pub mod encoder;
pub mod fp8;
pub mod gelu;
pub mod gemm;
pub mod global_norm;
pub mod layernorm;
pub mod membound;
pub mod mx;
pub mod mx_tcgen05;
pub mod nvfp4;
pub mod step;

/// A span of `len` elements of type `T` in device memory, borrowed from a `DeviceBuffer` (so it
/// cannot outlive it). Passed to kernels as a `T*`. Aliasing between spans is not tracked:
/// launchers document which operands may alias.
#[derive(Debug)]
pub struct Ptr<'a, T> {
    addr: u64,
    len: usize,
    _buf: PhantomData<&'a [T]>,
}

impl<T> Clone for Ptr<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Ptr<'_, T> {}

impl<'a, T: DeviceElem> Ptr<'a, T> {
    /// The whole buffer.
    pub fn of(buf: &'a DeviceBuffer<T>) -> Self {
        Ptr {
            addr: buf.device_ptr(),
            len: buf.len(),
            _buf: PhantomData,
        }
    }

    /// Elements `[offset, offset + len)` of this span; panics if that is not inside it (a bug
    /// in the caller's layout arithmetic, not a user error).
    pub fn slice(self, offset: usize, len: usize) -> Self {
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.len),
            "device span [{offset}, {offset}+{len}) outside a span of {} {}",
            self.len,
            T::NAME
        );
        Ptr {
            addr: self.addr + (offset * std::mem::size_of::<T>()) as u64,
            len,
            _buf: PhantomData,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn addr(&self) -> u64 {
        self.addr
    }
}

// SAFETY: passes the 64-bit device address, which is what a `T*` kernel parameter expects.
unsafe impl<T> KernelArg for Ptr<'_, T> {
    fn as_kernel_param(&self) -> *mut c_void {
        &self.addr as *const u64 as *mut c_void
    }
    fn param_size(&self) -> usize {
        8
    }
}

/// Error unless operand `what` of `kernel` holds at least `need` elements.
pub fn check_len<T: DeviceElem>(
    kernel: &str,
    what: &str,
    p: &Ptr<'_, T>,
    need: usize,
) -> Result<()> {
    if p.len() < need {
        return Err(CudaError::new(
            format!(
                "{kernel}: operand {what} holds {} {} but the shapes need {need}",
                p.len(),
                T::NAME
            ),
            1,
        ));
    }
    Ok(())
}

/// Error unless a shape argument fits the kernel's `int` parameter and is positive.
pub fn check_dim(kernel: &str, what: &str, v: usize) -> Result<i32> {
    if v == 0 || v > i32::MAX as usize {
        return Err(CudaError::new(
            format!("{kernel}: {what} = {v} must be in 1..=2^31-1"),
            1,
        ));
    }
    Ok(v as i32)
}

/// The bytes an operation touches in one operand: (name, first byte, one past the last).
pub type Span = (&'static str, u64, u64);

/// The byte span of the first `len` elements of `p`, named for error messages.
pub fn span<T: DeviceElem>(name: &'static str, p: &Ptr<T>, len: usize) -> Span {
    (
        name,
        p.addr(),
        p.addr() + (len * std::mem::size_of::<T>()) as u64,
    )
}

/// Error if two outputs overlap or an output overlaps an input: other blocks still read the
/// inputs while a block writes its part, so any overlap is a race or wrong results (a layout bug
/// in the caller). Inputs may overlap each other.
pub fn check_disjoint(kernel: &str, outputs: &[Span], inputs: &[Span]) -> Result<()> {
    for (i, a) in outputs.iter().enumerate() {
        for b in outputs[i + 1..].iter().chain(inputs) {
            if a.1 < b.2 && b.1 < a.2 {
                return Err(CudaError::new(
                    format!("{kernel}: operand {} overlaps operand {}", a.0, b.0),
                    1,
                ));
            }
        }
    }
    Ok(())
}
