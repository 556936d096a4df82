//! CUDA driver-API layer: one GPU context and stream, embedded kernels loaded on first use,
//! typed device buffers, checked launches, events.
//!
//! Built on cust_raw (types and link line) with our own declarations of the calls we make
//! (`sys`, raw status codes). cust 0.3.2 itself builds with today's rustc, but it is not used:
//! its `DeviceCopy` cannot be implemented for half 2's `bf16` (cust_core depends on half 1.x and
//! both trait and type are foreign here), and a launch wrapper that reports grid, block and smem
//! needs the raw call anyway.
//!
//! Threading: a `Gpu` makes its context current on the thread that creates it and is not
//! `Send`; use it from that thread. Launches are asynchronous on the Gpu's stream; copies to the
//! host synchronize the stream. Set `MXGPT_CUDA_SYNC=1` to synchronize after every launch so that
//! an asynchronous fault is reported against the kernel that caused it.
//!
//! NOT VERIFIED ON A GPU: this code was compiled against a stub libcuda only. The no-driver error
//! path is tested (against the stub); everything that needs a device is unrun.

mod error;
mod event;
pub mod ext;
mod launch;
mod memory;
mod sys;
#[cfg(test)]
mod tests;

pub use error::{error_name, CudaError, Result};
pub use event::Event;
/// The `half` crate this layer uses for `bf16` / `f16` buffers.
pub use half;
pub use launch::{KernelArg, LaunchConfig};
pub use memory::{DeviceBuffer, DeviceElem};
/// The embedded kernels (and `ptx::host`, CPU mirrors of their bit-level helpers).
pub use ptx;

use cust_raw::{CUcontext, CUdevice, CUfunction, CUmodule, CUstream};
use error::check;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CString;
use std::os::raw::{c_char, c_int};

/// What the kernels and the OOM messages need to know about the device.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceProps {
    pub ordinal: i32,
    pub name: String,
    pub sm_count: u32,
    pub compute_capability: (u32, u32),
    pub total_memory: usize,
    pub l2_bytes: u32,
    pub clock_khz: u32,
    pub max_threads_per_block: u32,
    pub max_grid: (u32, u32, u32),
    /// Static + dynamic shared memory a block may use without opting in.
    pub smem_per_block: u32,
    /// With `cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)` (227 KiB on H100).
    pub smem_per_block_optin: u32,
    pub driver_version: i32,
}

/// A kernel function handle plus the name used in error messages (`module::kernel`).
#[derive(Clone, Debug)]
pub struct Kernel {
    func: CUfunction,
    name: String,
}

impl Kernel {
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn raw(&self) -> CUfunction {
        self.func
    }
}

/// One device: its primary context, one stream, and the loaded-module cache.
pub struct Gpu {
    device: CUdevice,
    ctx: CUcontext,
    stream: CUstream,
    props: DeviceProps,
    modules: RefCell<HashMap<String, CUmodule>>,
    kernels: RefCell<HashMap<(String, String), Kernel>>,
    sync_each_launch: bool,
}

impl Gpu {
    /// Initializes the driver and opens device `ordinal`. Errors say plainly when there is no
    /// driver (stub libcuda), no device, or too old a driver.
    pub fn new(ordinal: usize) -> Result<Gpu> {
        // SAFETY: plain driver calls with valid out-pointers; each status is checked.
        unsafe {
            check(sys::cuInit(0), || {
                "cuInit (loading the NVIDIA driver)".into()
            })?;
            let mut driver_version = 0;
            check(sys::cuDriverGetVersion(&mut driver_version), || {
                "cuDriverGetVersion".into()
            })?;
            let mut count: c_int = 0;
            check(sys::cuDeviceGetCount(&mut count), || {
                "cuDeviceGetCount".into()
            })?;
            if count <= 0 {
                return Err(CudaError::new("cuDeviceGetCount returned 0 devices", 100));
            }
            if ordinal >= count as usize {
                return Err(CudaError::new(
                    format!("GPU {ordinal} requested but only {count} visible"),
                    101,
                ));
            }
            let mut device: CUdevice = 0;
            check(sys::cuDeviceGet(&mut device, ordinal as c_int), || {
                format!("cuDeviceGet({ordinal})")
            })?;
            let props = query_props(device, ordinal as i32, driver_version)?;
            let mut ctx: CUcontext = std::ptr::null_mut();
            check(sys::cuDevicePrimaryCtxRetain(&mut ctx, device), || {
                format!("cuDevicePrimaryCtxRetain on GPU {ordinal} ({})", props.name)
            })?;
            let release = |e: CudaError| {
                sys::cuDevicePrimaryCtxRelease_v2(device);
                e
            };
            check(sys::cuCtxSetCurrent(ctx), || "cuCtxSetCurrent".into()).map_err(release)?;
            let mut stream: CUstream = std::ptr::null_mut();
            // Flags 0: a blocking stream, ordered with the legacy default stream.
            check(sys::cuStreamCreate(&mut stream, 0), || {
                "cuStreamCreate".into()
            })
            .map_err(release)?;
            Ok(Gpu {
                device,
                ctx,
                stream,
                props,
                modules: RefCell::new(HashMap::new()),
                kernels: RefCell::new(HashMap::new()),
                sync_each_launch: std::env::var("MXGPT_CUDA_SYNC").is_ok_and(|v| v == "1"),
            })
        }
    }

    pub fn props(&self) -> &DeviceProps {
        &self.props
    }

    pub fn stream(&self) -> CUstream {
        self.stream
    }

    pub fn context(&self) -> CUcontext {
        self.ctx
    }

    /// Free and total device memory in bytes.
    pub fn memory_info(&self) -> Result<(usize, usize)> {
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: valid out-pointers, context current.
        check(
            unsafe { sys::cuMemGetInfo_v2(&mut free, &mut total) },
            || "cuMemGetInfo".into(),
        )?;
        Ok((free, total))
    }

    /// Waits for all work queued on the stream; `what` names the work in the error.
    pub fn synchronize(&self, what: &str) -> Result<()> {
        // SAFETY: our stream is valid for the Gpu's lifetime.
        check(unsafe { sys::cuStreamSynchronize(self.stream) }, || {
            format!("cuStreamSynchronize after {what} (an earlier asynchronous launch or copy failed; rerun with MXGPT_CUDA_SYNC=1 to find it)")
        })
    }

    /// The kernel `kernel` of embedded module `module` (ptx/kernels/<module>.cu). The module's
    /// PTX variant for this device is JIT-loaded on first use; handles are cached.
    pub fn kernel(&self, module: &str, kernel: &str) -> Result<Kernel> {
        let key = (module.to_string(), kernel.to_string());
        if let Some(k) = self.kernels.borrow().get(&key) {
            return Ok(k.clone());
        }
        let cu_module = self.load_module(module)?;
        let cname = CString::new(kernel)
            .map_err(|_| CudaError::new(format!("kernel name {kernel:?} contains NUL"), 1))?;
        let mut func: CUfunction = std::ptr::null_mut();
        // SAFETY: module loaded in our context, NUL-terminated name, valid out-pointer.
        check(
            unsafe { sys::cuModuleGetFunction(&mut func, cu_module, cname.as_ptr()) },
            || {
                format!("kernel '{kernel}' not found in module '{module}' (is it declared extern \"C\"?)")
            },
        )?;
        let k = Kernel {
            func,
            name: format!("{module}::{kernel}"),
        };
        self.kernels.borrow_mut().insert(key, k.clone());
        Ok(k)
    }

    fn load_module(&self, module: &str) -> Result<CUmodule> {
        if let Some(m) = self.modules.borrow().get(module) {
            return Ok(*m);
        }
        let (major, minor) = self.props.compute_capability;
        let variant = ptx::select_variant(module, major, minor).ok_or_else(|| {
            let known: Vec<String> = ptx::VARIANTS
                .iter()
                .filter(|v| v.module == module)
                .map(|v| v.target.to_string())
                .collect();
            let msg = if known.is_empty() {
                format!("no embedded PTX module '{module}' (modules: {:?})", module_names())
            } else {
                format!(
                    "module '{module}' has no PTX for {} (compute capability {major}.{minor}); built for {known:?}",
                    self.props.name
                )
            };
            CudaError::new(msg, 209)
        })?;
        let image = CString::new(variant.ptx)
            .map_err(|_| CudaError::new(format!("PTX of '{module}' contains NUL"), 218))?;
        let mut log = vec![0u8; 16 * 1024];
        let mut options = [
            sys::JIT_ERROR_LOG_BUFFER,
            sys::JIT_ERROR_LOG_BUFFER_SIZE_BYTES,
        ];
        let mut values = [log.as_mut_ptr().cast(), log.len() as *mut std::ffi::c_void];
        let mut cu_module: CUmodule = std::ptr::null_mut();
        // SAFETY: NUL-terminated PTX image, option arrays of equal length, log buffer outlives
        // the call.
        let status = unsafe {
            sys::cuModuleLoadDataEx(
                &mut cu_module,
                image.as_ptr().cast(),
                options.len() as u32,
                options.as_mut_ptr(),
                values.as_mut_ptr(),
            )
        };
        check(status, || {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            format!(
                "loading module '{module}' ({} PTX) on {}: JIT log: {}",
                variant.target,
                self.props.name,
                String::from_utf8_lossy(&log[..end]).trim()
            )
        })?;
        self.modules
            .borrow_mut()
            .insert(module.to_string(), cu_module);
        Ok(cu_module)
    }

    /// Allows `kernel` to use `bytes` of dynamic shared memory (needed above 48 KiB).
    pub fn set_max_dynamic_smem(&self, kernel: &Kernel, bytes: u32) -> Result<()> {
        if bytes > self.props.smem_per_block_optin {
            return Err(CudaError::new(
                format!(
                    "{}: {bytes} B dynamic shared memory requested, {} allows {} B",
                    kernel.name, self.props.name, self.props.smem_per_block_optin
                ),
                1,
            ));
        }
        // SAFETY: valid function handle from our context.
        check(
            unsafe {
                sys::cuFuncSetAttribute(
                    kernel.func,
                    sys::FUNC_ATTR_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    bytes as c_int,
                )
            },
            || {
                format!(
                    "cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES = {bytes}) on {}",
                    kernel.name
                )
            },
        )
    }

    /// Launches `kernel` on the Gpu's stream after validating the geometry; errors name the
    /// kernel, grid, block, shared memory and the CUDA error.
    ///
    /// # Safety
    /// `args` must match the kernel's parameter list in number, order and type (the PTX
    /// signature is not checked), and every buffer must be large enough for what the kernel
    /// touches with this geometry.
    pub unsafe fn launch(
        &self,
        kernel: &Kernel,
        cfg: LaunchConfig,
        args: &[&dyn KernelArg],
    ) -> Result<()> {
        cfg.validate(&self.props)
            .map_err(|e| CudaError::new(format!("launch of {}: {e}", kernel.name), 1))?;
        let mut params: Vec<*mut std::ffi::c_void> =
            args.iter().map(|a| a.as_kernel_param()).collect();
        let status = sys::cuLaunchKernel(
            kernel.func,
            cfg.grid.0,
            cfg.grid.1,
            cfg.grid.2,
            cfg.block.0,
            cfg.block.1,
            cfg.block.2,
            cfg.smem_bytes,
            self.stream,
            params.as_mut_ptr(),
            std::ptr::null_mut(),
        );
        check(status, || format!("launch of {} with {cfg}", kernel.name))?;
        if self.sync_each_launch {
            check(sys::cuStreamSynchronize(self.stream), || {
                format!("{} with {cfg} (MXGPT_CUDA_SYNC)", kernel.name)
            })?;
        }
        Ok(())
    }
}

impl Drop for Gpu {
    fn drop(&mut self) {
        // SAFETY: handles were created by this Gpu; errors at teardown are ignored on purpose
        // (nothing useful can be done, and a sticky fault was already reported).
        unsafe {
            sys::cuStreamSynchronize(self.stream);
            for (_, m) in self.modules.borrow_mut().drain() {
                sys::cuModuleUnload(m);
            }
            sys::cuStreamDestroy_v2(self.stream);
            sys::cuDevicePrimaryCtxRelease_v2(self.device);
        }
    }
}

/// Names of the embedded kernel modules (empty without the `cuda` feature of the ptx crate).
pub fn module_names() -> Vec<&'static str> {
    ptx::MODULES.iter().map(|(name, _)| *name).collect()
}

unsafe fn query_props(device: CUdevice, ordinal: i32, driver_version: i32) -> Result<DeviceProps> {
    let mut name = [0 as c_char; 256];
    check(
        sys::cuDeviceGetName(name.as_mut_ptr(), name.len() as c_int, device),
        || "cuDeviceGetName".into(),
    )?;
    let name = std::ffi::CStr::from_ptr(name.as_ptr())
        .to_string_lossy()
        .into_owned();
    let attr = |a: c_int, what: &str| -> Result<u32> {
        let mut v: c_int = 0;
        check(sys::cuDeviceGetAttribute(&mut v, a, device), || {
            format!("cuDeviceGetAttribute({what})")
        })?;
        Ok(v.max(0) as u32)
    };
    let mut total_memory = 0usize;
    check(sys::cuDeviceTotalMem_v2(&mut total_memory, device), || {
        "cuDeviceTotalMem".into()
    })?;
    Ok(DeviceProps {
        ordinal,
        sm_count: attr(sys::ATTR_MULTIPROCESSOR_COUNT, "MULTIPROCESSOR_COUNT")?,
        compute_capability: (
            attr(
                sys::ATTR_COMPUTE_CAPABILITY_MAJOR,
                "COMPUTE_CAPABILITY_MAJOR",
            )?,
            attr(
                sys::ATTR_COMPUTE_CAPABILITY_MINOR,
                "COMPUTE_CAPABILITY_MINOR",
            )?,
        ),
        total_memory,
        l2_bytes: attr(sys::ATTR_L2_CACHE_SIZE, "L2_CACHE_SIZE")?,
        clock_khz: attr(sys::ATTR_CLOCK_RATE_KHZ, "CLOCK_RATE")?,
        max_threads_per_block: attr(sys::ATTR_MAX_THREADS_PER_BLOCK, "MAX_THREADS_PER_BLOCK")?,
        max_grid: (
            attr(sys::ATTR_MAX_GRID_DIM_X, "MAX_GRID_DIM_X")?,
            attr(sys::ATTR_MAX_GRID_DIM_Y, "MAX_GRID_DIM_Y")?,
            attr(sys::ATTR_MAX_GRID_DIM_Z, "MAX_GRID_DIM_Z")?,
        ),
        smem_per_block: attr(
            sys::ATTR_MAX_SHARED_MEMORY_PER_BLOCK,
            "MAX_SHARED_MEMORY_PER_BLOCK",
        )?,
        smem_per_block_optin: attr(
            sys::ATTR_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            "MAX_SHARED_MEMORY_PER_BLOCK_OPTIN",
        )?,
        driver_version,
        name,
    })
}
