//! The host execution harness as a device (feature `harness`): memory is guarded host memory,
//! launches run the host-compiled kernels (ptx::harness), events read the clock.
//!
//! Streams: each stream is a queue. By default (`StreamOrder::Eager`) every operation runs
//! when it is enqueued, so the queues stay empty and the harness is synchronous. The other
//! orders hold one side's work back until something forces it, as a GPU may run it late:
//! a wait on one of its events (`Gpu::wait_event`, `Event::synchronize`), a copy to or from the
//! host on that stream, `synchronize`, or freeing memory. Work that reads a buffer before the
//! stream that writes it was made to wait (or writes one that another stream still reads)
//! then gives different bits, as it may on a GPU. `MXGPT_HARNESS_STREAMS` picks the order:
//! - `eager` (default): everything runs at once, in enqueue order;
//! - `main-late`: the main stream (0) runs only when forced, the other streams at once: finds
//!   a second stream that reads before waiting for the main stream's event;
//! - `side-late`: the other streams run only when forced: finds the main stream using a
//!   second stream's results without waiting for its event.

use super::error::{CudaError, Result};
use super::event::{Event, EventInner, HostEvent, RunUntil};
use super::graph::{Graph, GraphInner, HostNode};
use super::{Device, DeviceKind, DeviceProps, Kernel, LaunchConfig, Schedule};
use ptx::harness;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::ffi::c_void;
use std::rc::{Rc, Weak};

/// When the harness runs each stream's work (module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamOrder {
    Eager,
    MainLate,
    SideLate,
}

impl StreamOrder {
    /// `MXGPT_HARNESS_STREAMS`: `eager` (or unset), `main-late` or `side-late`.
    pub fn from_env() -> std::result::Result<StreamOrder, String> {
        match std::env::var("MXGPT_HARNESS_STREAMS").as_deref() {
            Err(_) | Ok("eager") => Ok(StreamOrder::Eager),
            Ok("main-late") => Ok(StreamOrder::MainLate),
            Ok("side-late") => Ok(StreamOrder::SideLate),
            Ok(o) => Err(format!(
                "MXGPT_HARNESS_STREAMS={o}: expected eager, main-late or side-late"
            )),
        }
    }

    /// Whether stream `s` runs its work only when forced.
    fn holds_back(self, s: usize) -> bool {
        match self {
            StreamOrder::Eager => false,
            StreamOrder::MainLate => s == 0,
            StreamOrder::SideLate => s != 0,
        }
    }
}

/// One queued operation of a stream.
enum Op {
    Node(HostNode),
    /// From pageable host memory: the bytes were taken when the copy was enqueued.
    ToDevice {
        dst: u64,
        data: Vec<u8>,
    },
    /// Into pinned host memory, written when the stream reaches it.
    ToHost {
        dst: *mut u8,
        src: u64,
        bytes: usize,
    },
    Record(Rc<HostEvent>),
    /// Wait until the event has run this many records.
    Wait(Rc<HostEvent>, u64),
}

/// The streams' queues and what runs them.
pub(crate) struct Streams {
    schedule: Schedule,
    order: StreamOrder,
    queues: RefCell<Vec<VecDeque<Op>>>,
    /// Streams being run now: reaching one again is a cycle of waits (a deadlock on a GPU).
    running: RefCell<Vec<bool>>,
    /// A failure of work run where no error could be returned (a free): the next operation
    /// reports it, as a GPU reports an asynchronous fault at the next call.
    deferred_error: RefCell<Option<CudaError>>,
}

thread_local! {
    /// The harness devices of this thread: freeing memory first runs their queued work (as
    /// cuMemFree waits for the device), since that work may still use the memory.
    static LIVE: RefCell<Vec<Weak<Streams>>> = const { RefCell::new(Vec::new()) };
}

pub(crate) struct HostDevice {
    props: DeviceProps,
    streams: Rc<Streams>,
    current: Cell<usize>,
    /// While capturing (graph.rs): the operations recorded so far.
    capture: RefCell<Option<Vec<HostNode>>>,
}

/// Error code for a kernel the harness stopped (CUDA_ERROR_LAUNCH_FAILED).
const LAUNCH_FAILED: u32 = 719;

impl HostDevice {
    pub(crate) fn new(schedule: Schedule, order: StreamOrder) -> HostDevice {
        let (_, total) = meminfo();
        let streams = Rc::new(Streams {
            schedule,
            order,
            queues: RefCell::new(vec![VecDeque::new()]),
            running: RefCell::new(vec![false]),
            deferred_error: RefCell::new(None),
        });
        LIVE.with(|l| {
            let mut l = l.borrow_mut();
            l.retain(|w| w.strong_count() > 0);
            l.push(Rc::downgrade(&streams));
        });
        HostDevice {
            streams,
            current: Cell::new(0),
            capture: RefCell::new(None),
            props: DeviceProps {
                ordinal: 0,
                name: format!(
                    "host harness ({schedule:?} schedule, {order:?} streams; H100 model)"
                ),
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
        self.streams.run_all()
    }

    fn synchronize_current(&self, _what: &str) -> Result<()> {
        self.streams.run(self.current.get())
    }

    fn new_stream(&self) -> Result<usize> {
        self.streams.queues.borrow_mut().push(VecDeque::new());
        self.streams.running.borrow_mut().push(false);
        Ok(self.streams.queues.borrow().len() - 1)
    }

    fn set_stream(&self, index: usize) {
        assert!(
            index < self.streams.queues.borrow().len(),
            "stream {index} of this device"
        );
        self.current.set(index);
    }

    fn raw_stream(&self) -> *mut c_void {
        std::ptr::null_mut()
    }

    fn wait_event(&self, event: &Event) -> Result<()> {
        #[allow(irrefutable_let_patterns)] // without the `cuda` feature there is one kind
        let EventInner::Host(e) = &event.inner
        else {
            return Err(CudaError::new("a wait on a GPU event on the harness", 1));
        };
        // CUDA: the wait is for the record last enqueued before it (none: no wait).
        self.enqueue(Op::Wait(e.clone(), e.enqueued.get()))
    }

    fn alloc(&self, bytes: usize, what: &dyn Fn() -> String) -> Result<u64> {
        harness::alloc(bytes)
            .map(|p| p as u64)
            .ok_or_else(|| CudaError::new(what(), 2))
    }

    fn free_fn(&self) -> unsafe fn(u64) {
        unsafe fn free(p: u64) {
            run_live_queues();
            harness::free(p as *mut u8);
        }
        free
    }

    unsafe fn copy_to_device(&self, dst: u64, src: *const u8, bytes: usize) -> Result<()> {
        // Stream-ordered, and the host slice is borrowed only for this call.
        self.streams.run(self.current.get())?;
        std::ptr::copy_nonoverlapping(src, dst as *mut u8, bytes);
        Ok(())
    }

    unsafe fn copy_to_device_async(&self, dst: u64, src: *const u8, bytes: usize) -> Result<()> {
        let data = std::slice::from_raw_parts(src, bytes).to_vec();
        self.enqueue(Op::ToDevice { dst, data })
    }

    unsafe fn copy_to_host(&self, dst: *mut u8, src: u64, bytes: usize) -> Result<()> {
        self.streams.run(self.current.get())?;
        std::ptr::copy_nonoverlapping(src as *const u8, dst, bytes);
        Ok(())
    }

    unsafe fn copy_to_host_async(&self, dst: *mut u8, src: u64, bytes: usize) -> Result<()> {
        self.enqueue(Op::ToHost { dst, src, bytes })
    }

    fn alloc_host(&self, bytes: usize) -> Result<*mut u8> {
        harness::alloc(bytes)
            .ok_or_else(|| CudaError::new(format!("pinned host allocation of {bytes} B failed"), 2))
    }

    fn free_host_fn(&self) -> unsafe fn(*mut u8) {
        unsafe fn free(p: *mut u8) {
            run_live_queues();
            harness::free(p);
        }
        free
    }

    unsafe fn copy_device(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        self.capture_or_enqueue(HostNode::Copy { dst, src, bytes })
    }

    unsafe fn memset(&self, dst: u64, byte: u8, bytes: usize) -> Result<()> {
        self.capture_or_enqueue(HostNode::Memset { dst, byte, bytes })
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
        // By value, as a CUDA launch (and cuStreamBeginCapture's kernel node) takes them: the
        // bytes each argument pointer points at now.
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
        self.capture_or_enqueue(HostNode::Launch {
            kernel: kernel.clone(),
            cfg,
            args,
            sizes: sizes.to_vec(),
        })
    }

    fn new_event(&self) -> Result<Event> {
        Ok(Event {
            inner: EventInner::Host(Rc::new(HostEvent::default())),
        })
    }

    fn record(&self, event: &Event) -> Result<()> {
        #[allow(irrefutable_let_patterns)] // without the `cuda` feature there is one kind
        let EventInner::Host(e) = &event.inner
        else {
            return Err(CudaError::new("record of a GPU event on the harness", 1));
        };
        e.enqueued.set(e.enqueued.get() + 1);
        e.stream.set(self.current.get());
        let runner: Rc<dyn RunUntil> = self.streams.clone();
        *e.runner.borrow_mut() = Some(Rc::downgrade(&runner));
        self.enqueue(Op::Record(e.clone()))
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
        // The graph's contract (graph.rs): its buffers are alive at the same addresses.
        nodes
            .iter()
            .try_for_each(|n| self.enqueue(Op::Node(n.clone())))
    }
}

impl Drop for HostDevice {
    fn drop(&mut self) {
        // As a GPU's context waits for its streams when it is destroyed.
        if let Err(e) = self.streams.run_all() {
            eprintln!("harness: queued work run as the device closed failed: {e}");
        }
    }
}

/// Runs the queued work of every harness device of this thread (before memory is freed).
fn run_live_queues() {
    let live: Vec<Rc<Streams>> =
        LIVE.with(|l| l.borrow().iter().filter_map(Weak::upgrade).collect());
    for s in live {
        if let Err(e) = s.run_all() {
            // A free cannot fail: the next operation on the device reports it.
            s.deferred_error.borrow_mut().get_or_insert(e);
        }
    }
}

impl HostDevice {
    /// Records the operation while capturing, else queues it on the current stream.
    fn capture_or_enqueue(&self, node: HostNode) -> Result<()> {
        if let Some(nodes) = self.capture.borrow_mut().as_mut() {
            nodes.push(node);
            return Ok(());
        }
        self.enqueue(Op::Node(node))
    }

    /// Queues `op` on the current stream and runs the stream unless the order holds it back.
    fn enqueue(&self, op: Op) -> Result<()> {
        self.streams.take_deferred_error()?;
        let s = self.current.get();
        self.streams.queues.borrow_mut()[s].push_back(op);
        if self.streams.order.holds_back(s) {
            return Ok(());
        }
        self.streams.run(s)
    }
}

impl RunUntil for Streams {
    fn run_until(&self, stream: usize, event: &HostEvent, generation: u64) -> Result<()> {
        self.run_while(stream, &|| event.done.get() < generation)?;
        if event.done.get() < generation {
            return Err(CudaError::new(
                "a wait on an event whose record is not queued on its stream",
                600,
            ));
        }
        Ok(())
    }
}

impl Streams {
    fn take_deferred_error(&self) -> Result<()> {
        match self.deferred_error.borrow_mut().take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Runs all of stream `s`'s queued work.
    fn run(&self, s: usize) -> Result<()> {
        self.take_deferred_error()?;
        self.run_while(s, &|| true)
    }

    fn run_all(&self) -> Result<()> {
        let n = self.queues.borrow().len();
        (0..n).try_for_each(|s| self.run(s))
    }

    /// Runs stream `s`'s operations in order while `more()` holds and there are any.
    fn run_while(&self, s: usize, more: &dyn Fn() -> bool) -> Result<()> {
        if self.running.borrow()[s] {
            return Err(CudaError::new(
                format!("stream {s} waits, through events, for its own later work: a cycle of stream waits (a deadlock on a GPU)"),
                LAUNCH_FAILED,
            ));
        }
        self.running.borrow_mut()[s] = true;
        let result = (|| {
            while more() {
                let Some(op) = self.queues.borrow_mut()[s].pop_front() else {
                    return Ok(());
                };
                self.execute(op)?;
            }
            Ok(())
        })();
        self.running.borrow_mut()[s] = false;
        result
    }

    fn execute(&self, op: Op) -> Result<()> {
        // SAFETY: each operation was valid when enqueued, and memory is freed only after the
        // queues ran (run_live_queues).
        unsafe {
            match op {
                Op::Node(HostNode::Launch {
                    kernel,
                    cfg,
                    args,
                    sizes,
                }) => {
                    let mut params: Vec<*mut c_void> =
                        args.iter().map(|a| a.as_ptr() as *mut c_void).collect();
                    self.launch_now(&kernel, cfg, &mut params, &sizes)
                }
                Op::Node(HostNode::Memset { dst, byte, bytes }) => {
                    std::ptr::write_bytes(dst as *mut u8, byte, bytes);
                    Ok(())
                }
                Op::Node(HostNode::Copy { dst, src, bytes }) => {
                    std::ptr::copy(src as *const u8, dst as *mut u8, bytes);
                    Ok(())
                }
                Op::ToDevice { dst, data } => {
                    std::ptr::copy_nonoverlapping(data.as_ptr(), dst as *mut u8, data.len());
                    Ok(())
                }
                Op::ToHost { dst, src, bytes } => {
                    std::ptr::copy_nonoverlapping(src as *const u8, dst, bytes);
                    Ok(())
                }
                Op::Record(e) => {
                    e.time.set(Some(std::time::Instant::now()));
                    e.done.set(e.done.get() + 1);
                    Ok(())
                }
                Op::Wait(e, generation) => {
                    if e.done.get() >= generation {
                        return Ok(());
                    }
                    self.run_until(e.stream.get(), &e, generation)
                }
            }
        }
    }

    /// Runs one launch now.
    unsafe fn launch_now(
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
