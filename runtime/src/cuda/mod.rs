//! The device layer: one GPU (or the host execution harness standing in for one), its main
//! stream and any others (`create_stream` / `on_stream`, ordered by events: `record`,
//! `wait_event`), kernels loaded by name on first use, typed device buffers, checked launches.
//!
//! Two devices stand behind the same `Gpu` API, each behind a cargo feature:
//! - `cuda`: a real GPU through the driver API (`driver.rs`, over cust_raw's types and link
//!   line, with our own declarations of the calls in `sys.rs`). The kernels run as compiled by
//!   nvcc/ptxas and embedded by the ptx crate.
//! - `harness`: the host execution harness (`harness.rs`, over `ptx::harness`): the same kernel
//!   sources compiled for the CPU and run with the GPU's programming model. `Gpu::harness()`
//!   opens it; the GPU tests use it on machines without a GPU, so every launcher and kernel runs
//!   in CI. It is slow (a CPU core emulating a warp) and meant for small test shapes.
//!
//! Without either feature this module still builds (the CUDA backend's code compiles
//! everywhere), and `Gpu::new` says that the build has no GPU support.
//!
//! Threading: a `Gpu` is not `Send`; use it from the thread that created it (a CUDA context is
//! current on that thread). Launches are asynchronous on a GPU; on the harness they run when
//! their stream's queue runs (at once by default, harness.rs); copies to or from the host wait
//! for the work queued on their stream. `MXGPT_CUDA_SYNC=1` synchronizes after every launch
//! so that an asynchronous fault is reported against the kernel that caused it.
//!
//! Stream capture (`begin_capture` / `end_capture` / `launch_graph`, graph.rs): CUDA graphs on a
//! GPU, a recorded list of launches with their arguments copied by value on the harness.
//!
//! The real-driver path has not run on a GPU unless perf/ holds a GPU run of this commit.

mod error;
mod event;
mod graph;
mod launch;
mod memory;
mod pinned;

#[cfg(feature = "cuda")]
mod driver;
#[cfg(feature = "cuda")]
pub mod ext;
#[cfg(feature = "cuda")]
mod sys;

#[cfg(feature = "harness")]
mod harness;
#[cfg(feature = "harness")]
pub use harness::StreamOrder;
#[cfg(feature = "harness")]
pub use ptx::harness::Schedule;

#[cfg(test)]
mod tests;

pub use error::{error_name, CudaError, Result};
pub use event::Event;
pub use graph::{Graph, CAPTURE_UNSUPPORTED};
/// The `half` crate this layer uses for `bf16` / `f16` buffers.
pub use half;
pub use launch::{KernelArg, LaunchConfig};
pub use memory::{DeviceBuffer, DeviceElem};
pub use pinned::PinnedBuffer;
/// The embedded kernels (and `ptx::host`, CPU mirrors of their bit-level helpers).
pub use ptx;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::c_void;

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
    /// The driver's CUfunction, or the harness's kernel index.
    handle: u64,
    name: String,
}

impl Kernel {
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The raw handle: a `CUfunction` on a GPU, a kernel index on the harness.
    pub fn raw(&self) -> u64 {
        self.handle
    }
}

/// Which device a `Gpu` drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    Cuda,
    Harness,
}

/// What one device implementation provides. Addresses are 64-bit device pointers (host
/// pointers on the harness); `free` is a plain function so that buffers can free themselves.
pub(crate) trait Device {
    fn kind(&self) -> DeviceKind;
    fn props(&self) -> &DeviceProps;
    fn memory_info(&self) -> Result<(usize, usize)>;
    /// Waits for the work queued on every stream.
    fn synchronize(&self, what: &str) -> Result<()>;
    /// Waits for the work queued on the current stream.
    fn synchronize_current(&self, what: &str) -> Result<()>;
    /// A new stream; returns its index (0 is the main stream).
    fn new_stream(&self) -> Result<usize>;
    /// Sends what is enqueued from now on to stream `index`.
    fn set_stream(&self, index: usize);
    /// The current stream's CUstream (null on the harness), for libraries that take one (NCCL).
    fn raw_stream(&self) -> *mut c_void;
    /// The current stream waits (on the device) for the work before `event`'s last record.
    fn wait_event(&self, event: &Event) -> Result<()>;
    /// `bytes` > 0 of uninitialized memory; `what` describes the request for errors.
    fn alloc(&self, bytes: usize, what: &dyn Fn() -> String) -> Result<u64>;
    fn free_fn(&self) -> unsafe fn(u64);
    /// # Safety: `src` valid for `bytes`; `dst` a live device range of `bytes`.
    unsafe fn copy_to_device(&self, dst: u64, src: *const u8, bytes: usize) -> Result<()>;
    /// Enqueues the copy without waiting for it; `src` may be reused when this returns.
    /// # Safety: as `copy_to_device`.
    unsafe fn copy_to_device_async(&self, dst: u64, src: *const u8, bytes: usize) -> Result<()>;
    /// # Safety: `dst` valid for `bytes`; `src` a live device range.
    unsafe fn copy_to_host(&self, dst: *mut u8, src: u64, bytes: usize) -> Result<()>;
    /// Enqueues the copy without waiting: `dst` (pinned, pinned.rs) is written when the stream
    /// reaches it. # Safety: `dst` valid for `bytes` until then; `src` a live device range.
    unsafe fn copy_to_host_async(&self, dst: *mut u8, src: u64, bytes: usize) -> Result<()>;
    /// `bytes` > 0 of page-locked host memory (pinned.rs).
    fn alloc_host(&self, bytes: usize) -> Result<*mut u8>;
    fn free_host_fn(&self) -> unsafe fn(*mut u8);
    /// # Safety: both live device ranges of `bytes`.
    unsafe fn copy_device(&self, dst: u64, src: u64, bytes: usize) -> Result<()>;
    /// # Safety: a live device range of `bytes`.
    unsafe fn memset(&self, dst: u64, byte: u8, bytes: usize) -> Result<()>;
    fn function(&self, module: &str, kernel: &str) -> Result<u64>;
    fn set_max_dynamic_smem(&self, kernel: &Kernel, bytes: u32) -> Result<()>;
    /// # Safety: as `Gpu::launch`.
    unsafe fn launch(
        &self,
        kernel: &Kernel,
        cfg: LaunchConfig,
        params: &mut [*mut c_void],
        sizes: &[u32],
    ) -> Result<()>;
    fn new_event(&self) -> Result<Event>;
    fn record(&self, event: &Event) -> Result<()>;
    /// Stream capture (graph.rs): while capturing, `launch`, `memset` and `copy_device`
    /// record instead of running; `Gpu` refuses the rest before they get here.
    fn begin_capture(&self) -> Result<()>;
    fn end_capture(&self) -> Result<graph::GraphInner>;
    fn launch_graph(&self, graph: &Graph) -> Result<()>;
}

/// One device: a GPU's primary context and stream, or the host harness; the kernel cache.
pub struct Gpu {
    dev: Box<dyn Device>,
    kernels: RefCell<HashMap<(String, String), Kernel>>,
    sync_each_launch: bool,
    /// Stream capture in progress (graph.rs), and the launches it recorded.
    capturing: Cell<bool>,
    captured_launches: Cell<usize>,
    /// Bytes handed out by `alloc` so far (frees not subtracted): what a constructor allocated.
    allocated: Cell<usize>,
    /// The stream work goes to (`on_stream`); 0 is the main stream.
    stream: Cell<usize>,
}

/// A stream of a `Gpu` other than its main one (`Gpu::create_stream`), used through
/// `Gpu::on_stream`.
#[derive(Debug)]
pub struct Stream(usize);

impl Gpu {
    #[cfg_attr(not(any(feature = "cuda", feature = "harness")), allow(dead_code))]
    fn with(dev: Box<dyn Device>) -> Gpu {
        Gpu {
            dev,
            kernels: RefCell::new(HashMap::new()),
            sync_each_launch: std::env::var("MXGPT_CUDA_SYNC").is_ok_and(|v| v == "1"),
            capturing: Cell::new(false),
            captured_launches: Cell::new(0),
            allocated: Cell::new(0),
            stream: Cell::new(0),
        }
    }

    /// GPU `ordinal` through the NVIDIA driver. Errors say plainly when there is no driver
    /// (stub libcuda), no device, too old a driver, or no GPU support in this build.
    ///
    /// With the `harness` feature built in, `MXGPT_CUDA_HARNESS=1` opens the host execution
    /// harness instead (in order schedule): how tests run the trainer's `--device cuda` on
    /// machines without a GPU.
    pub fn new(ordinal: usize) -> Result<Gpu> {
        #[cfg(feature = "harness")]
        if std::env::var("MXGPT_CUDA_HARNESS").is_ok_and(|v| v == "1") {
            return Ok(Gpu::harness(Schedule::InOrder));
        }
        #[cfg(feature = "cuda")]
        {
            Ok(Gpu::with(Box::new(driver::CudaDevice::open(ordinal)?)))
        }
        #[cfg(not(feature = "cuda"))]
        {
            Err(CudaError::new(
                format!("GPU {ordinal}: this build has no GPU support (it was built without the `cuda` feature; tools/cuda/bundle.sh builds one that has)"),
                3,
            ))
        }
    }

    /// The host execution harness as a device (feature `harness`): kernels run on the CPU in
    /// the given thread schedule. Its properties model an H100 (132 SMs, compute capability
    /// 9.0, 227 KiB of opt-in shared memory), so launchers choose the geometry they would there.
    /// Its streams run in the order `MXGPT_HARNESS_STREAMS` names (harness.rs; eager if
    /// unset).
    #[cfg(feature = "harness")]
    pub fn harness(schedule: Schedule) -> Gpu {
        let order = StreamOrder::from_env().unwrap_or_else(|e| panic!("{e}"));
        Gpu::harness_ordered(schedule, order)
    }

    /// The harness with its streams run in `order` (harness.rs).
    #[cfg(feature = "harness")]
    pub fn harness_ordered(schedule: Schedule, order: StreamOrder) -> Gpu {
        Gpu::with(Box::new(harness::HostDevice::new(schedule, order)))
    }

    pub fn kind(&self) -> DeviceKind {
        self.dev.kind()
    }

    pub fn props(&self) -> &DeviceProps {
        self.dev.props()
    }

    /// Free and total device memory in bytes.
    pub fn memory_info(&self) -> Result<(usize, usize)> {
        self.dev.memory_info()
    }

    /// Bytes allocated through this `Gpu` since it was opened, frees not subtracted (tests compare
    /// what a backend allocates with its memory estimate).
    pub fn bytes_allocated(&self) -> usize {
        self.allocated.get()
    }

    /// Waits for all work queued on every stream; `what` names the work in the error.
    pub fn synchronize(&self, what: &str) -> Result<()> {
        self.refuse_in_capture(&format!("synchronize ({what})"))?;
        self.dev.synchronize(what)
    }

    /// Waits for the work queued on the current stream only (`on_stream`).
    pub fn synchronize_stream(&self, what: &str) -> Result<()> {
        self.refuse_in_capture(&format!("synchronize ({what})"))?;
        self.dev.synchronize_current(what)
    }

    /// The kernel `kernel` of module `module` (ptx/kernels/<module>.cu), loaded on first use
    /// (on a GPU, the module's build for this device); handles are cached.
    pub fn kernel(&self, module: &str, kernel: &str) -> Result<Kernel> {
        let key = (module.to_string(), kernel.to_string());
        if let Some(k) = self.kernels.borrow().get(&key) {
            return Ok(k.clone());
        }
        let k = Kernel {
            handle: self.dev.function(module, kernel)?,
            name: format!("{module}::{kernel}"),
        };
        self.kernels.borrow_mut().insert(key, k.clone());
        Ok(k)
    }

    /// Allows `kernel` to use `bytes` of dynamic shared memory (needed above 48 KiB).
    pub fn set_max_dynamic_smem(&self, kernel: &Kernel, bytes: u32) -> Result<()> {
        let p = self.props();
        if bytes > p.smem_per_block_optin {
            return Err(CudaError::new(
                format!(
                    "{}: {bytes} B dynamic shared memory requested, {} allows {} B",
                    kernel.name, p.name, p.smem_per_block_optin
                ),
                1,
            ));
        }
        self.dev.set_max_dynamic_smem(kernel, bytes)
    }

    /// Launches `kernel` on the Gpu's stream after validating the geometry; errors name the
    /// kernel, grid, block, shared memory and the cause.
    ///
    /// # Safety
    /// `args` must match the kernel's parameter list in number, order and type (the harness
    /// checks count and sizes; a GPU checks nothing), and every buffer must be large enough for
    /// what the kernel touches with this geometry.
    pub unsafe fn launch(
        &self,
        kernel: &Kernel,
        cfg: LaunchConfig,
        args: &[&dyn KernelArg],
    ) -> Result<()> {
        cfg.validate(self.props())
            .map_err(|e| CudaError::new(format!("launch of {}: {e}", kernel.name), 1))?;
        let mut params: Vec<*mut c_void> = args.iter().map(|a| a.as_kernel_param()).collect();
        let sizes: Vec<u32> = args.iter().map(|a| a.param_size() as u32).collect();
        self.dev.launch(kernel, cfg, &mut params, &sizes)?;
        if self.capturing.get() {
            self.captured_launches.set(self.captured_launches.get() + 1);
        } else if self.sync_each_launch {
            self.dev
                .synchronize(&format!("{} with {cfg} (MXGPT_CUDA_SYNC)", kernel.name))?;
        }
        Ok(())
    }

    /// A second stream (up to any number): work on different streams may run concurrently,
    /// ordered only by events (`record` on one, `wait_event` on the other). Streams live as
    /// long as the `Gpu`.
    pub fn create_stream(&self) -> Result<Stream> {
        self.refuse_in_capture("a stream creation")?;
        Ok(Stream(self.dev.new_stream()?))
    }

    /// Runs `f` with every launch, copy, memset and event record it enqueues going to `stream`
    /// (the main stream again afterwards, also if `f` fails). Copies to or from the host inside
    /// `f` wait for `stream` only.
    pub fn on_stream<R>(&self, stream: &Stream, f: impl FnOnce() -> R) -> R {
        let before = self.stream.replace(stream.0);
        self.dev.set_stream(stream.0);
        struct Restore<'a>(&'a Gpu, usize);
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                self.0.stream.set(self.1);
                self.0.dev.set_stream(self.1);
            }
        }
        let _restore = Restore(self, before);
        f()
    }

    /// The current stream (as a CUstream; null on the harness) for a library that enqueues its
    /// own work (NCCL).
    pub fn raw_stream(&self) -> *mut c_void {
        self.dev.raw_stream()
    }

    /// The current stream waits, on the device and without blocking the host, until the work
    /// enqueued before `event`'s last `record` has run. An event never recorded is complete.
    pub fn wait_event(&self, event: &Event) -> Result<()> {
        self.refuse_in_capture("a wait on an event")?;
        self.dev.wait_event(event)
    }

    /// A timing event.
    pub fn event(&self) -> Result<Event> {
        self.dev.new_event()
    }

    /// Enqueues `event` on the current stream.
    pub fn record(&self, event: &Event) -> Result<()> {
        self.refuse_in_capture("an event record")?;
        self.dev.record(event)
    }
}

/// Names of the kernel modules embedded for the GPU (empty without the `cuda` feature).
pub fn module_names() -> Vec<&'static str> {
    ptx::MODULES.iter().map(|(name, _)| *name).collect()
}
