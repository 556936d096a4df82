//! The host execution harness (feature `harness`): every kernel of ptx/kernels compiled for the
//! CPU and run with the GPU's programming model (ptx/host/mxh.h), so kernel logic is tested on
//! machines without a GPU. `runtime::cuda::Gpu::harness()` puts a device API on top of this;
//! most code should use that instead of these raw calls.

use std::ffi::{c_char, c_void, CStr};
use std::sync::OnceLock;

#[repr(C)]
struct RawKernelInfo {
    module: *const c_char,
    name: *const c_char,
    signature: *const c_char,
    num_params: u32,
    param_sizes: *const u32,
    not_emulated: *const c_char,
}

#[repr(C)]
struct RawOptions {
    schedule: u32,
    seed: u64,
}

extern "C" {
    fn mxh_kernel_count() -> u32;
    fn mxh_kernel(i: u32) -> *const RawKernelInfo;
    fn mxh_launch(
        kernel_index: u32,
        grid: *const u32,
        block: *const u32,
        dynamic_smem_bytes: u32,
        params: *mut *mut c_void,
        param_sizes: *const u32,
        num_params: u32,
        options: *const RawOptions,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
    fn mxh_alloc(bytes: usize) -> *mut c_void;
    fn mxh_free(p: *mut c_void);
}

/// One kernel the harness knows.
#[derive(Clone, Debug)]
pub struct KernelInfo {
    /// The source file's stem (`gemm` for ptx/kernels/gemm.cu; `selftest` for the harness's own).
    pub module: &'static str,
    pub name: &'static str,
    /// The C++ parameter list, e.g. `(bf16*, const bf16*, int)`.
    pub signature: &'static str,
    /// Size in bytes of each parameter.
    pub param_sizes: &'static [u32],
    /// Why the harness cannot run it (an instruction it does not emulate), if so.
    pub not_emulated: Option<&'static str>,
}

fn cstr(p: *const c_char) -> &'static str {
    // SAFETY: the harness's strings are static (literals or function-local statics).
    unsafe { CStr::from_ptr(p) }.to_str().unwrap_or("?")
}

/// Every kernel compiled into the harness, in module order.
pub fn kernels() -> &'static [KernelInfo] {
    static TABLE: OnceLock<Vec<KernelInfo>> = OnceLock::new();
    TABLE.get_or_init(|| {
        // SAFETY: indices below the count give valid static records.
        unsafe {
            (0..mxh_kernel_count())
                .map(|i| {
                    let r = &*mxh_kernel(i);
                    KernelInfo {
                        module: cstr(r.module),
                        name: cstr(r.name),
                        signature: cstr(r.signature),
                        param_sizes: std::slice::from_raw_parts(
                            r.param_sizes,
                            r.num_params as usize,
                        ),
                        not_emulated: (!r.not_emulated.is_null()).then(|| cstr(r.not_emulated)),
                    }
                })
                .collect()
        }
    })
}

/// Index of `module::name` in `kernels()`.
pub fn find(module: &str, name: &str) -> Option<usize> {
    kernels()
        .iter()
        .position(|k| k.module == module && k.name == name)
}

/// In which order the harness lets a block's threads run between synchronization points, and
/// when asynchronous copies land (see ptx/host/mxh.h): a kernel whose result depends on it has
/// a race.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// Threads in order, round after round, so warps advance in lockstep (the default);
    /// cp.async copies land at the wait that retires them.
    InOrder,
    /// Warp by warp from the last, each warp (lanes from the last) running to its next block
    /// barrier before the next starts: warps drift as far apart as the barriers allow;
    /// cp.async copies land at issue.
    Reverse,
    /// A fresh random order every round, and a random landing time per copy, from this seed.
    Random(u64),
}

/// Runs kernel `index` on grid x block threads, synchronously. `params[i]` points at the value
/// of parameter i (as for `cuLaunchKernel`), whose size is `sizes[i]`; the harness checks the
/// count and sizes against the kernel's signature.
///
/// # Safety
/// Pointer parameters must point at harness memory (`alloc`) large enough for what the kernel
/// touches with this geometry; a read or write past the end of a buffer is caught (the error
/// names it) but others corrupt memory.
pub unsafe fn launch(
    index: usize,
    grid: (u32, u32, u32),
    block: (u32, u32, u32),
    dynamic_smem_bytes: u32,
    params: &mut [*mut c_void],
    sizes: &[u32],
    schedule: Schedule,
) -> Result<(), String> {
    assert_eq!(params.len(), sizes.len());
    let (schedule, seed) = match schedule {
        Schedule::InOrder => (0, 0),
        Schedule::Reverse => (1, 0),
        Schedule::Random(s) => (2, s),
    };
    let opts = RawOptions { schedule, seed };
    let g = [grid.0, grid.1, grid.2];
    let b = [block.0, block.1, block.2];
    let mut err = vec![0u8; 4096];
    let rc = mxh_launch(
        index as u32,
        g.as_ptr(),
        b.as_ptr(),
        dynamic_smem_bytes,
        params.as_mut_ptr(),
        sizes.as_ptr(),
        params.len() as u32,
        &opts,
        err.as_mut_ptr().cast(),
        err.len(),
    );
    if rc == 0 {
        return Ok(());
    }
    let end = err.iter().position(|&c| c == 0).unwrap_or(err.len());
    Err(String::from_utf8_lossy(&err[..end]).into_owned())
}

/// `bytes` of harness device memory (0xFF-filled; its end abuts a guard page), or None if the
/// system has none left. Zero bytes gives a null pointer.
pub fn alloc(bytes: usize) -> Option<*mut u8> {
    if bytes == 0 {
        return Some(std::ptr::null_mut());
    }
    // SAFETY: plain allocation call.
    let p = unsafe { mxh_alloc(bytes) };
    (!p.is_null()).then_some(p.cast())
}

/// Frees memory from `alloc` (null is ignored).
///
/// # Safety
/// `p` must come from `alloc` and not be used afterwards.
pub unsafe fn free(p: *mut u8) {
    mxh_free(p.cast());
}
