//! Stream capture and replay: CUDA graphs.
//!
//! `Gpu::begin_capture` puts the stream in capture mode: from then on launches, memsets and
//! device-to-device copies are RECORDED, not run, until `Gpu::end_capture` returns them as a
//! [`Graph`]; `Gpu::launch_graph` replays the recording on the stream (any number of times).
//! As with CUDA graphs, a kernel's arguments are captured BY VALUE at capture time: a scalar
//! that changes between replays (a learning rate, a step count, a seed) must be read by the
//! kernel from device memory that the host updates between launches, and every buffer the graph
//! touches must outlive it at the same address.
//!
//! What cannot be captured is an error while capturing, on both devices: allocations, copies
//! between host and device, synchronization and event records (`Gpu` refuses them with
//! CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED before any driver call). A failed capture leaves the
//! stream out of capture mode.
//!
//! On a GPU: cuStreamBeginCapture (global mode), cuStreamEndCapture, cuGraphInstantiate,
//! cuGraphLaunch. On the harness: the recorded launches (kernel, geometry and a copy of every
//! argument's bytes), memsets and copies, replayed in order through the harness.
//!
//! Not run on a GPU yet: the driver path is compiled against the stub driver only.

use super::error::{CudaError, Result};
use super::Gpu;

/// CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED: an operation the stream capture cannot record.
pub const CAPTURE_UNSUPPORTED: u32 = 900;

/// A captured piece of stream work, replayable with [`Gpu::launch_graph`]. Belongs to the `Gpu`
/// that captured it and must be dropped before it.
pub struct Graph {
    #[cfg_attr(not(any(feature = "cuda", feature = "harness")), allow(dead_code))]
    pub(crate) inner: GraphInner,
    /// Launches recorded (for logs and tests).
    pub(crate) launches: usize,
}

pub(crate) enum GraphInner {
    #[cfg(feature = "cuda")]
    Cuda(super::driver::RawGraph),
    #[cfg_attr(not(feature = "harness"), allow(dead_code))]
    Host(Vec<HostNode>),
}

/// One recorded operation of a harness capture.
#[cfg_attr(not(feature = "harness"), allow(dead_code))]
#[derive(Clone)]
pub(crate) enum HostNode {
    Launch {
        kernel: super::Kernel,
        cfg: super::LaunchConfig,
        /// Each argument's bytes as they were at capture time (u64 words: 8-byte aligned, as
        /// the largest kernel parameters need).
        args: Vec<Vec<u64>>,
        sizes: Vec<u32>,
    },
    Memset {
        dst: u64,
        byte: u8,
        bytes: usize,
    },
    Copy {
        dst: u64,
        src: u64,
        bytes: usize,
    },
}

impl Graph {
    /// How many kernel launches the graph holds.
    pub fn launches(&self) -> usize {
        self.launches
    }
}

impl Gpu {
    /// Starts recording the stream's work (see the module doc). An error if already capturing.
    pub fn begin_capture(&self) -> Result<()> {
        if self.capturing.get() {
            return Err(CudaError::new(
                "begin_capture: the stream is already capturing",
                CAPTURE_UNSUPPORTED,
            ));
        }
        self.dev.begin_capture()?;
        self.capturing.set(true);
        self.captured_launches.set(0);
        Ok(())
    }

    /// Ends the capture and returns what was recorded, ready to launch.
    pub fn end_capture(&self) -> Result<Graph> {
        if !self.capturing.get() {
            return Err(CudaError::new(
                "end_capture: the stream is not capturing",
                CAPTURE_UNSUPPORTED,
            ));
        }
        self.capturing.set(false);
        let inner = self.dev.end_capture()?;
        Ok(Graph {
            inner,
            launches: self.captured_launches.get(),
        })
    }

    /// Whether the stream is capturing.
    pub fn is_capturing(&self) -> bool {
        self.capturing.get()
    }

    /// Enqueues `graph` on the stream (asynchronous on a GPU; runs at once on the harness).
    pub fn launch_graph(&self, graph: &Graph) -> Result<()> {
        self.refuse_in_capture("launch_graph")?;
        self.dev.launch_graph(graph)?;
        if self.sync_each_launch {
            self.dev.synchronize("a graph launch (MXGPT_CUDA_SYNC)")?;
        }
        Ok(())
    }

    /// An error naming `what` while the stream captures (what a capture cannot record).
    pub(crate) fn refuse_in_capture(&self, what: &str) -> Result<()> {
        if self.capturing.get() {
            return Err(CudaError::new(
                format!("{what} while the stream is capturing a graph: a CUDA graph cannot record it (allocate, upload and read back outside the captured step)"),
                CAPTURE_UNSUPPORTED,
            ));
        }
        Ok(())
    }
}
