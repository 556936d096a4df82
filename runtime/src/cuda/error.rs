//! CUDA errors that say which call failed, on what, and why.

use std::fmt;

/// A failed driver call: `context` names the call and its subject (kernel, grid, buffer size...),
/// `code` is the raw CUresult.
#[derive(Clone, Debug)]
pub struct CudaError {
    pub context: String,
    pub code: u32,
}

pub type Result<T> = std::result::Result<T, CudaError>;

impl CudaError {
    pub fn new(context: impl Into<String>, code: u32) -> Self {
        CudaError {
            context: context.into(),
            code,
        }
    }
}

/// `Ok(())` for CUDA_SUCCESS, else an error carrying `context` (built only on failure).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub fn check(code: u32, context: impl FnOnce() -> String) -> Result<()> {
    if code == 0 {
        Ok(())
    } else {
        Err(CudaError::new(context(), code))
    }
}

/// Symbolic name of a CUresult. Our own table, not cuGetErrorName: that call itself fails
/// against the stub library or a broken driver, which is exactly when the name matters most.
pub fn error_name(code: u32) -> &'static str {
    match code {
        0 => "CUDA_SUCCESS",
        1 => "CUDA_ERROR_INVALID_VALUE",
        2 => "CUDA_ERROR_OUT_OF_MEMORY",
        3 => "CUDA_ERROR_NOT_INITIALIZED",
        4 => "CUDA_ERROR_DEINITIALIZED",
        34 => "CUDA_ERROR_STUB_LIBRARY",
        35 => "CUDA_ERROR_INSUFFICIENT_DRIVER",
        36 => "CUDA_ERROR_CALL_REQUIRES_NEWER_DRIVER",
        46 => "CUDA_ERROR_DEVICES_UNAVAILABLE",
        100 => "CUDA_ERROR_NO_DEVICE",
        101 => "CUDA_ERROR_INVALID_DEVICE",
        200 => "CUDA_ERROR_INVALID_IMAGE",
        201 => "CUDA_ERROR_INVALID_CONTEXT",
        209 => "CUDA_ERROR_NO_BINARY_FOR_GPU",
        218 => "CUDA_ERROR_INVALID_PTX",
        221 => "CUDA_ERROR_JIT_COMPILER_NOT_FOUND",
        222 => "CUDA_ERROR_UNSUPPORTED_PTX_VERSION",
        400 => "CUDA_ERROR_INVALID_HANDLE",
        500 => "CUDA_ERROR_NOT_FOUND",
        600 => "CUDA_ERROR_NOT_READY",
        700 => "CUDA_ERROR_ILLEGAL_ADDRESS",
        701 => "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES",
        702 => "CUDA_ERROR_LAUNCH_TIMEOUT",
        715 => "CUDA_ERROR_ILLEGAL_INSTRUCTION",
        716 => "CUDA_ERROR_MISALIGNED_ADDRESS",
        719 => "CUDA_ERROR_LAUNCH_FAILED",
        900 => "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED",
        901 => "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED",
        999 => "CUDA_ERROR_UNKNOWN",
        _ => "CUDA_ERROR_(unlisted)",
    }
}

/// What to do about the errors a user can fix; `None` for the rest.
pub fn hint(code: u32) -> Option<&'static str> {
    match code {
        34 => Some(
            "the process loaded the link-time stub libcuda, not the NVIDIA driver's: no driver on this machine, or the stub directory is on LD_LIBRARY_PATH",
        ),
        35 => Some("the NVIDIA driver is older than this program needs (driver 580 / CUDA 13.0)"),
        100 => Some("no CUDA-capable GPU is visible (check nvidia-smi and CUDA_VISIBLE_DEVICES)"),
        2 => Some("out of GPU memory: lower the batch size or sequence length"),
        222 => Some("the driver's JIT rejects this PTX ISA version: update the driver or build with the CUDA 13.0 toolchain"),
        _ => None,
    }
}

/// The driver's own description, when the driver can give one.
#[cfg(feature = "cuda")]
fn driver_description(code: u32) -> Option<String> {
    use super::sys;
    use std::ffi::CStr;
    let mut text: *const std::os::raw::c_char = std::ptr::null();
    // SAFETY: out-pointer to a static string owned by the driver; checked for null below.
    let status = unsafe { sys::cuGetErrorString(code, &mut text) };
    if status != sys::SUCCESS || text.is_null() {
        return None;
    }
    // SAFETY: the driver returns a NUL-terminated static string.
    Some(
        unsafe { CStr::from_ptr(text) }
            .to_string_lossy()
            .into_owned(),
    )
}

#[cfg(not(feature = "cuda"))]
fn driver_description(_code: u32) -> Option<String> {
    None
}

impl fmt::Display for CudaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} ({})",
            self.context,
            error_name(self.code),
            self.code
        )?;
        if let Some(d) = driver_description(self.code) {
            write!(f, ": {d}")?;
        }
        if let Some(h) = hint(self.code) {
            write!(f, "; {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for CudaError {}
