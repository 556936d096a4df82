//! The real GPU (feature `cuda`): the driver API through `sys`.
//!
//! cust 0.3.2 itself is not used: its `DeviceCopy` cannot be implemented for half 2's `bf16`
//! (cust_core depends on half 1.x and both trait and type are foreign here), and a launch
//! wrapper that reports grid, block and smem needs the raw call anyway. cust_raw supplies the
//! handle types and the link line.

use super::error::{check, CudaError, Result};
use super::event::{Event, EventInner};
use super::graph::{Graph, GraphInner};
use super::{sys, Device, DeviceKind, DeviceProps, Kernel, LaunchConfig};
use cust_raw::{
    CUcontext, CUdevice, CUevent, CUfunction, CUgraph, CUgraphExec, CUmodule, CUstream,
};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::os::raw::{c_char, c_int};

pub(crate) struct CudaDevice {
    device: CUdevice,
    ctx: CUcontext,
    /// Stream 0 is the device's main stream; `Device::new_stream` adds more (blocking streams,
    /// all destroyed with the device).
    streams: RefCell<Vec<CUstream>>,
    /// The stream launches, copies, memsets and event records go to (`Gpu::on_stream`).
    current: Cell<usize>,
    props: DeviceProps,
    modules: RefCell<HashMap<String, CUmodule>>,
}

impl CudaDevice {
    /// Initializes the driver and opens device `ordinal` (its primary context, one stream).
    pub(crate) fn open(ordinal: usize) -> Result<CudaDevice> {
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
            Ok(CudaDevice {
                device,
                ctx,
                streams: RefCell::new(vec![stream]),
                current: Cell::new(0),
                props,
                modules: RefCell::new(HashMap::new()),
            })
        }
    }

    /// The stream work is enqueued on now.
    fn stream(&self) -> CUstream {
        self.streams.borrow()[self.current.get()]
    }

    fn sync_stream(&self, stream: CUstream, what: &str) -> Result<()> {
        // SAFETY: our streams are valid for the device's lifetime.
        check(unsafe { sys::cuStreamSynchronize(stream) }, || {
            format!("cuStreamSynchronize after {what} (an earlier asynchronous launch or copy failed; rerun with MXGPT_CUDA_SYNC=1 to find it)")
        })
    }

    #[allow(dead_code)]
    pub(crate) fn context(&self) -> CUcontext {
        self.ctx
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
                format!(
                    "no embedded kernel module '{module}' (modules: {:?})",
                    super::module_names()
                )
            } else {
                format!(
                    "module '{module}' has no build for {} (compute capability {major}.{minor}); built for {known:?}",
                    self.props.name
                )
            };
            CudaError::new(msg, 209)
        })?;
        // A cubin (SASS for exactly this chip) when there is one: no JIT, and the code that runs
        // is the code ptxas checked. Otherwise the PTX, compiled by the driver's JIT.
        let (image, what) = match ptx::image_for(variant, major, minor) {
            (cubin, true) => (cubin.to_vec(), format!("{} cubin", variant.target)),
            (text, false) => {
                let mut t = text.to_vec();
                t.push(0); // the driver reads PTX as a C string
                (t, format!("{} PTX", variant.target))
            }
        };
        let mut log = vec![0u8; 16 * 1024];
        let mut options = [
            sys::JIT_ERROR_LOG_BUFFER,
            sys::JIT_ERROR_LOG_BUFFER_SIZE_BYTES,
        ];
        let mut values = [log.as_mut_ptr().cast(), log.len() as *mut c_void];
        let mut cu_module: CUmodule = std::ptr::null_mut();
        // SAFETY: a cubin or NUL-terminated PTX image, option arrays of equal length, log
        // buffer outlives the call.
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
                "loading module '{module}' ({what}) on {}: JIT log: {}",
                self.props.name,
                String::from_utf8_lossy(&log[..end]).trim()
            )
        })?;
        self.modules
            .borrow_mut()
            .insert(module.to_string(), cu_module);
        Ok(cu_module)
    }
}

impl Device for CudaDevice {
    fn kind(&self) -> DeviceKind {
        DeviceKind::Cuda
    }

    fn props(&self) -> &DeviceProps {
        &self.props
    }

    fn memory_info(&self) -> Result<(usize, usize)> {
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: valid out-pointers, context current.
        check(
            unsafe { sys::cuMemGetInfo_v2(&mut free, &mut total) },
            || "cuMemGetInfo".into(),
        )?;
        Ok((free, total))
    }

    fn synchronize(&self, what: &str) -> Result<()> {
        let streams = self.streams.borrow().clone();
        streams.iter().try_for_each(|&s| self.sync_stream(s, what))
    }

    fn synchronize_current(&self, what: &str) -> Result<()> {
        self.sync_stream(self.stream(), what)
    }

    fn new_stream(&self) -> Result<usize> {
        let mut stream: CUstream = std::ptr::null_mut();
        // SAFETY: valid out-pointer, context current. Flags 0: blocking, like the main stream.
        check(unsafe { sys::cuStreamCreate(&mut stream, 0) }, || {
            "cuStreamCreate (a second stream)".into()
        })?;
        let mut streams = self.streams.borrow_mut();
        streams.push(stream);
        Ok(streams.len() - 1)
    }

    fn set_stream(&self, index: usize) {
        assert!(
            index < self.streams.borrow().len(),
            "stream {index} of this device"
        );
        self.current.set(index);
    }

    fn raw_stream(&self) -> *mut c_void {
        self.stream().cast()
    }

    fn wait_event(&self, event: &Event) -> Result<()> {
        match &event.inner {
            // SAFETY: event and stream belong to this context; flags must be 0.
            EventInner::Cuda(e) => check(
                unsafe { sys::cuStreamWaitEvent(self.stream(), e.0, 0) },
                || "cuStreamWaitEvent".into(),
            ),
            EventInner::Host(_) => Err(CudaError::new("a wait on a harness event on a GPU", 1)),
        }
    }

    fn alloc(&self, bytes: usize, what: &dyn Fn() -> String) -> Result<u64> {
        let mut ptr = 0u64;
        // SAFETY: valid out-pointer; context current.
        check(unsafe { sys::cuMemAlloc_v2(&mut ptr, bytes) }, what)?;
        Ok(ptr)
    }

    fn free_fn(&self) -> unsafe fn(u64) {
        unsafe fn free(p: u64) {
            // The error (only possible after a sticky fault, already reported) is ignored.
            sys::cuMemFree_v2(p);
        }
        free
    }

    unsafe fn copy_to_device(&self, dst: u64, src: *const u8, bytes: usize) -> Result<()> {
        check(
            sys::cuMemcpyHtoDAsync_v2(dst, src.cast(), bytes, self.stream()),
            || format!("copy of {bytes} B host -> device"),
        )?;
        // The host slice is borrowed only for this call: wait for the copy.
        self.synchronize_current("copy host -> device")
    }

    unsafe fn copy_to_device_async(&self, dst: u64, src: *const u8, bytes: usize) -> Result<()> {
        // From pageable memory the driver stages the bytes (or waits) before returning, so the
        // caller may reuse `src` at once; the stream is not synchronized. (Pinned staging would
        // make the copy itself asynchronous: not done.)
        check(
            sys::cuMemcpyHtoDAsync_v2(dst, src.cast(), bytes, self.stream()),
            || format!("asynchronous copy of {bytes} B host -> device"),
        )
    }

    unsafe fn copy_to_host(&self, dst: *mut u8, src: u64, bytes: usize) -> Result<()> {
        check(
            sys::cuMemcpyDtoHAsync_v2(dst.cast(), src, bytes, self.stream()),
            || format!("copy of {bytes} B device -> host"),
        )?;
        self.synchronize_current("copy device -> host")
    }

    unsafe fn copy_to_host_async(&self, dst: *mut u8, src: u64, bytes: usize) -> Result<()> {
        check(
            sys::cuMemcpyDtoHAsync_v2(dst.cast(), src, bytes, self.stream()),
            || format!("asynchronous copy of {bytes} B device -> pinned host memory"),
        )
    }

    fn alloc_host(&self, bytes: usize) -> Result<*mut u8> {
        let mut p: *mut c_void = std::ptr::null_mut();
        // SAFETY: valid out-pointer; context current. Flags 0: portable to this context only.
        check(unsafe { sys::cuMemHostAlloc(&mut p, bytes, 0) }, || {
            format!("cuMemHostAlloc of {bytes} B (pinned host memory)")
        })?;
        Ok(p.cast())
    }

    fn free_host_fn(&self) -> unsafe fn(*mut u8) {
        unsafe fn free(p: *mut u8) {
            // As cuMemFree: an error only follows a sticky fault, already reported.
            sys::cuMemFreeHost(p.cast());
        }
        free
    }

    unsafe fn copy_device(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        check(
            sys::cuMemcpyDtoDAsync_v2(dst, src, bytes, self.stream()),
            || format!("copy of {bytes} B device -> device"),
        )
    }

    unsafe fn memset(&self, dst: u64, byte: u8, bytes: usize) -> Result<()> {
        check(
            sys::cuMemsetD8Async(dst, byte, bytes, self.stream()),
            || format!("memset of {bytes} B"),
        )
    }

    fn function(&self, module: &str, kernel: &str) -> Result<u64> {
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
        Ok(func as u64)
    }

    fn set_max_dynamic_smem(&self, kernel: &Kernel, bytes: u32) -> Result<()> {
        // SAFETY: valid function handle from our context.
        check(
            unsafe {
                sys::cuFuncSetAttribute(
                    kernel.handle as CUfunction,
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

    unsafe fn launch(
        &self,
        kernel: &Kernel,
        cfg: LaunchConfig,
        params: &mut [*mut c_void],
        _sizes: &[u32],
    ) -> Result<()> {
        let status = sys::cuLaunchKernel(
            kernel.handle as CUfunction,
            cfg.grid.0,
            cfg.grid.1,
            cfg.grid.2,
            cfg.block.0,
            cfg.block.1,
            cfg.block.2,
            cfg.smem_bytes,
            self.stream(),
            params.as_mut_ptr(),
            std::ptr::null_mut(),
        );
        check(status, || format!("launch of {} with {cfg}", kernel.name))
    }

    fn new_event(&self) -> Result<Event> {
        let mut raw: CUevent = std::ptr::null_mut();
        // SAFETY: valid out-pointer; flags 0 = default (timing enabled).
        check(unsafe { sys::cuEventCreate(&mut raw, 0) }, || {
            "cuEventCreate".into()
        })?;
        Ok(Event {
            inner: EventInner::Cuda(RawEvent(raw)),
        })
    }

    fn record(&self, event: &Event) -> Result<()> {
        match &event.inner {
            // SAFETY: event and stream belong to this context.
            EventInner::Cuda(e) => check(unsafe { sys::cuEventRecord(e.0, self.stream()) }, || {
                "cuEventRecord".into()
            }),
            EventInner::Host(_) => Err(CudaError::new("record of a harness event on a GPU", 1)),
        }
    }

    fn begin_capture(&self) -> Result<()> {
        // SAFETY: our stream; global mode makes unsafe calls during the capture errors.
        check(
            unsafe { sys::cuStreamBeginCapture_v2(self.stream(), sys::STREAM_CAPTURE_MODE_GLOBAL) },
            || "cuStreamBeginCapture".into(),
        )
    }

    fn end_capture(&self) -> Result<GraphInner> {
        let mut graph: CUgraph = std::ptr::null_mut();
        // SAFETY: our stream, valid out-pointers; the graph is destroyed if instantiation fails.
        unsafe {
            check(sys::cuStreamEndCapture(self.stream(), &mut graph), || {
                "cuStreamEndCapture (an operation during the capture failed or was not capturable)"
                    .into()
            })?;
            let mut exec: CUgraphExec = std::ptr::null_mut();
            if let Err(e) = check(
                sys::cuGraphInstantiateWithFlags(&mut exec, graph, 0),
                || "cuGraphInstantiateWithFlags".into(),
            ) {
                sys::cuGraphDestroy(graph);
                return Err(e);
            }
            Ok(GraphInner::Cuda(RawGraph { graph, exec }))
        }
    }

    fn launch_graph(&self, graph: &Graph) -> Result<()> {
        match &graph.inner {
            // SAFETY: an instantiated graph of this context, launched on our stream.
            GraphInner::Cuda(g) => {
                check(unsafe { sys::cuGraphLaunch(g.exec, self.stream()) }, || {
                    format!("cuGraphLaunch ({} kernels)", graph.launches())
                })
            }
            GraphInner::Host(_) => Err(CudaError::new("launch of a harness graph on a GPU", 1)),
        }
    }
}

/// An instantiated CUDA graph and the graph it came from, destroyed on drop.
pub(crate) struct RawGraph {
    graph: CUgraph,
    exec: CUgraphExec,
}

impl Drop for RawGraph {
    fn drop(&mut self) {
        // SAFETY: created by end_capture; errors at teardown are ignored.
        unsafe {
            sys::cuGraphExecDestroy(self.exec);
            sys::cuGraphDestroy(self.graph);
        }
    }
}

impl Drop for CudaDevice {
    fn drop(&mut self) {
        // SAFETY: handles were created by this device; errors at teardown are ignored on purpose
        // (nothing useful can be done, and a sticky fault was already reported).
        unsafe {
            let streams = self.streams.borrow().clone();
            for &s in &streams {
                sys::cuStreamSynchronize(s);
            }
            for (_, m) in self.modules.borrow_mut().drain() {
                sys::cuModuleUnload(m);
            }
            for s in streams {
                sys::cuStreamDestroy_v2(s);
            }
            sys::cuDevicePrimaryCtxRelease_v2(self.device);
        }
    }
}

/// A CUevent, destroyed on drop.
pub(crate) struct RawEvent(CUevent);

impl RawEvent {
    pub(crate) fn synchronize(&self) -> Result<()> {
        // SAFETY: created by cuEventCreate.
        check(unsafe { sys::cuEventSynchronize(self.0) }, || {
            "cuEventSynchronize (the work before the event failed?)".into()
        })
    }

    pub(crate) fn elapsed_ms(&self, start: &RawEvent) -> Result<f32> {
        let mut ms = 0f32;
        // SAFETY: both events were created and recorded by a CudaDevice.
        unsafe {
            check(sys::cuEventSynchronize(self.0), || {
                "cuEventSynchronize (timed work failed?)".into()
            })?;
            check(sys::cuEventElapsedTime(&mut ms, start.0, self.0), || {
                "cuEventElapsedTime".into()
            })?;
        }
        Ok(ms)
    }
}

impl Drop for RawEvent {
    fn drop(&mut self) {
        // SAFETY: created by cuEventCreate.
        unsafe { sys::cuEventDestroy_v2(self.0) };
    }
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
