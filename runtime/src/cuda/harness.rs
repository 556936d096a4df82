//! The host execution harness as a device (feature `harness`): memory is guarded host memory,
//! launches run the host-compiled kernels synchronously (ptx::harness), events read the clock.

use super::error::{CudaError, Result};
use super::event::{Event, EventInner};
use super::graph::{Graph, GraphInner, HostNode};
use super::{Device, DeviceKind, DeviceProps, Kernel, LaunchConfig, Schedule};
use ptx::harness;
use std::cell::RefCell;
use std::ffi::c_void;

pub(crate) struct HostDevice {
    props: DeviceProps,
    schedule: Schedule,
    /// While capturing (graph.rs): the operations recorded so far.
    capture: RefCell<Option<Vec<HostNode>>>,
}

/// Error code for a kernel the harness stopped (CUDA_ERROR_LAUNCH_FAILED).
const LAUNCH_FAILED: u32 = 719;

impl HostDevice {
    pub(crate) fn new(schedule: Schedule) -> HostDevice {
        let (_, total) = meminfo();
        HostDevice {
            schedule,
            capture: RefCell::new(None),
            props: DeviceProps {
                ordinal: 0,
                name: format!("host harness ({schedule:?} schedule; H100 model)"),
                sm_count: 132,
                compute_capability: (9, 0),
                total_memory: total,
                l2_bytes: 50 << 20,
                clock_khz: 1_980_000,
                max_threads_per_block: 1024,
                max_grid: (2_147_483_647, 65_535, 65_535),
                smem_per_block: 48 * 1024,
                smem_per_block_optin: 227 * 1024,
                driver_version: 0,
            },
        }
    }
}

/// (available, total) bytes of host memory from /proc/meminfo (0, 0 if unreadable).
fn meminfo() -> (usize, usize) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| -> usize {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse::<usize>().ok())
            .map_or(0, |kib| kib * 1024)
    };
    (field("MemAvailable:"), field("MemTotal:"))
}

impl Device for HostDevice {
    fn kind(&self) -> DeviceKind {
        DeviceKind::Harness
    }

    fn props(&self) -> &DeviceProps {
        &self.props
    }

    fn memory_info(&self) -> Result<(usize, usize)> {
        Ok(meminfo())
    }

    fn synchronize(&self, _what: &str) -> Result<()> {
        Ok(()) // every launch and copy completes before it returns
    }

    fn alloc(&self, bytes: usize, what: &dyn Fn() -> String) -> Result<u64> {
        harness::alloc(bytes)
            .map(|p| p as u64)
            .ok_or_else(|| CudaError::new(what(), 2))
    }

    fn free_fn(&self) -> unsafe fn(u64) {
        unsafe fn free(p: u64) {
            harness::free(p as *mut u8);
        }
        free
    }

    unsafe fn copy_to_device(&self, dst: u64, src: *const u8, bytes: usize) -> Result<()> {
        std::ptr::copy_nonoverlapping(src, dst as *mut u8, bytes);
        Ok(())
    }

    unsafe fn copy_to_device_async(&self, dst: u64, src: *const u8, bytes: usize) -> Result<()> {
        self.copy_to_device(dst, src, bytes) // the harness's stream is always idle
    }

    unsafe fn copy_to_host(&self, dst: *mut u8, src: u64, bytes: usize) -> Result<()> {
        std::ptr::copy_nonoverlapping(src as *const u8, dst, bytes);
        Ok(())
    }

    unsafe fn copy_to_host_async(&self, dst: *mut u8, src: u64, bytes: usize) -> Result<()> {
        self.copy_to_host(dst, src, bytes) // the harness's stream is always idle
    }

    fn alloc_host(&self, bytes: usize) -> Result<*mut u8> {
        harness::alloc(bytes)
            .ok_or_else(|| CudaError::new(format!("pinned host allocation of {bytes} B failed"), 2))
    }

    fn free_host_fn(&self) -> unsafe fn(*mut u8) {
        unsafe fn free(p: *mut u8) {
            harness::free(p);
        }
        free
    }

    unsafe fn copy_device(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        if let Some(nodes) = self.capture.borrow_mut().as_mut() {
            nodes.push(HostNode::Copy { dst, src, bytes });
            return Ok(());
        }
        std::ptr::copy(src as *const u8, dst as *mut u8, bytes);
        Ok(())
    }

    unsafe fn memset(&self, dst: u64, byte: u8, bytes: usize) -> Result<()> {
        if let Some(nodes) = self.capture.borrow_mut().as_mut() {
            nodes.push(HostNode::Memset { dst, byte, bytes });
            return Ok(());
        }
        std::ptr::write_bytes(dst as *mut u8, byte, bytes);
        Ok(())
    }

    fn function(&self, module: &str, kernel: &str) -> Result<u64> {
        harness::find(module, kernel).map(|i| i as u64).ok_or_else(|| {
            let known = harness::kernels().iter().any(|k| k.module == module);
            CudaError::new(
                if known {
                    format!("kernel '{kernel}' not found in module '{module}' (is it declared extern \"C\"?)")
                } else {
                    format!("no kernel module '{module}' in the host harness")
                },
                500,
            )
        })
    }

    fn set_max_dynamic_smem(&self, _kernel: &Kernel, _bytes: u32) -> Result<()> {
        Ok(()) // checked against the modelled limit by Gpu
    }

    unsafe fn launch(
        &self,
        kernel: &Kernel,
        cfg: LaunchConfig,
        params: &mut [*mut c_void],
        sizes: &[u32],
    ) -> Result<()> {
        if let Some(nodes) = self.capture.borrow_mut().as_mut() {
            // By value, as cuStreamBeginCapture records kernel nodes: the bytes each argument
            // pointer points at now.
            let args = params
                .iter()
                .zip(sizes)
                .map(|(&p, &n)| {
                    let mut words = vec![0u64; (n as usize).div_ceil(8)];
                    std::ptr::copy_nonoverlapping(
                        p as *const u8,
                        words.as_mut_ptr().cast::<u8>(),
                        n as usize,
                    );
                    words
                })
                .collect();
            nodes.push(HostNode::Launch {
                kernel: kernel.clone(),
                cfg,
                args,
                sizes: sizes.to_vec(),
            });
            return Ok(());
        }
        self.run(kernel, cfg, params, sizes)
    }

    fn new_event(&self) -> Result<Event> {
        Ok(Event {
            inner: EventInner::Host(std::cell::Cell::new(None)),
        })
    }

    fn record(&self, event: &Event) -> Result<()> {
        match &event.inner {
            EventInner::Host(t) => {
                t.set(Some(std::time::Instant::now()));
                Ok(())
            }
            #[allow(unreachable_patterns)]
            _ => Err(CudaError::new("record of a GPU event on the harness", 1)),
        }
    }

    fn begin_capture(&self) -> Result<()> {
        *self.capture.borrow_mut() = Some(Vec::new());
        Ok(())
    }

    fn end_capture(&self) -> Result<GraphInner> {
        let nodes = self.capture.borrow_mut().take().ok_or_else(|| {
            CudaError::new(
                "end_capture without begin_capture",
                super::graph::CAPTURE_UNSUPPORTED,
            )
        })?;
        Ok(GraphInner::Host(nodes))
    }

    fn launch_graph(&self, graph: &Graph) -> Result<()> {
        #[allow(irrefutable_let_patterns)] // without the `cuda` feature there is one kind
        let GraphInner::Host(nodes) = &graph.inner
        else {
            return Err(CudaError::new("launch of a GPU graph on the harness", 1));
        };
        for node in nodes {
            // SAFETY: the recorded operations were valid when captured, and the graph's
            // contract (graph.rs) is that its buffers are still alive at the same addresses.
            unsafe {
                match node {
                    HostNode::Launch {
                        kernel,
                        cfg,
                        args,
                        sizes,
                    } => {
                        let mut params: Vec<*mut c_void> =
                            args.iter().map(|a| a.as_ptr() as *mut c_void).collect();
                        self.run(kernel, *cfg, &mut params, sizes)?;
                    }
                    HostNode::Memset { dst, byte, bytes } => {
                        std::ptr::write_bytes(*dst as *mut u8, *byte, *bytes)
                    }
                    HostNode::Copy { dst, src, bytes } => {
                        std::ptr::copy(*src as *const u8, *dst as *mut u8, *bytes)
                    }
                }
            }
        }
        Ok(())
    }
}

impl HostDevice {
    /// Runs one launch now.
    unsafe fn run(
        &self,
        kernel: &Kernel,
        cfg: LaunchConfig,
        params: &mut [*mut c_void],
        sizes: &[u32],
    ) -> Result<()> {
        harness::launch(
            kernel.raw() as usize,
            cfg.grid,
            cfg.block,
            cfg.smem_bytes,
            params,
            sizes,
            self.schedule,
        )
        .map_err(|e| {
            CudaError::new(
                format!("launch of {} with {cfg}: {e}", kernel.name()),
                LAUNCH_FAILED,
            )
        })
    }
}
