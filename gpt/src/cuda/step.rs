//! The CUDA backend's training step without host round trips, and its CUDA graphs.
//!
//! Per step the host enqueues, and never waits:
//! - per micro batch: the tokens (asynchronous copies from pinned memory), the encoder index
//!   built on the device (`EncoderIndex::build_on_device`), the forward and backward, and the
//!   micro batch's mean loss added to a device f64 sum (`step_loss_accumulate`);
//! - the step's scalars (`StepParams`: lr, betas, bias corrections, eps, weight decay, clip,
//!   seed, ring slot) in ONE copy to a device parameter block;
//! - the finish: global norm, `step_finish` (the step's loss and norm into a device ring, the
//!   clip factor, a halt flag on a non-finite value) and AdamW reading its scalars and clip
//!   factor from device memory (`adamw_update_multi_dev`).
//!
//! After the finish, the step's ring slot (and, in a 4-bit mode, the step's MX telemetry total,
//! which is then reset on the device) is copied asynchronously into a pinned host slot with an
//! event behind it (`StatsSlot`). `take_through(t)` waits for the events of the steps up to
//! `t` only, so the trainer reads step N's numbers after it has queued step N + 1 and the queue
//! never runs dry at a step boundary. The numbers are the host path's bit for bit: the same f64
//! loss sum, the same f32 clip division, the same AdamW kernel body (tests/tests/gpu_step.rs).
//!
//! CUDA graphs (`MXGPT_CUDA_GRAPH=1` or `set_cuda_graphs`, off by default until a GPU run has
//! checked them): the micro batch's forward and backward runs once directly (a warm-up: kernel
//! modules load and kernel attributes are set outside any capture), is captured the second
//! time and replayed for every micro batch after (keyed by the loss scale, the one value it
//! bakes in), and the finish likewise; what changes between replays is in device memory: tokens,
//! the index, the parameter block, and the 4-bit backward's stream base (the step and
//! micro-batch bits of every GEMM's random streams, `begin_micro_batch`; a replay adds the
//! telemetry element counts its run counted; so does the FP8 forward's telemetry). The FP8
//! forward replays with either scaling: every scale is computed on the device, and delayed
//! scaling's amax ring slots come from per-tensor call counts kept on the device too.
//!
//! NOT RUN ON A GPU: harness-tested; the driver path is compiled against the stub driver.

use super::kernels::step::{self as kstep, StepParams};
use super::kernels::Ptr;
use super::mx::{telemetry_of, ACC};
use crate::backend::{BResult, BackendError, StepStats, StepUpdate};
use runtime::cuda::{CudaError, DeviceBuffer, Gpu, Graph, PinnedBuffer};
use std::collections::VecDeque;

/// Steps whose (loss, norm) the device ring holds before `take_step_stats` must be called.
pub const RING: usize = 1024;

fn err(e: CudaError) -> BackendError {
    BackendError(format!("CUDA: {e}"))
}

/// A step's numbers on their way to the host: pinned slots the stream copies into after the
/// step's finish, each with its own event (pinned.rs), so that reading one step waits for that
/// step only.
struct StatsSlot {
    /// (loss, norm) from the step's ring slot.
    stats: PinnedBuffer<f32>,
    /// The MX telemetry total of the step (`ACC` f64), in a 4-bit backward mode.
    mx: PinnedBuffer<f64>,
}

/// A finished (queued) step whose numbers the host has not taken yet.
struct Pending {
    t: u64,
    slot: StatsSlot,
    /// (elements quantized, elements per block) of the step's MX telemetry, when it has one.
    mx: Option<(u64, u64)>,
}

/// A 4-bit backward's running telemetry total for `DeviceStep::step` to hand to the host with
/// the step's numbers (and reset): the device accumulator (`ACC` f64, mx.rs) and the elements
/// it counts.
pub(crate) struct MxTotal<'a> {
    pub(crate) totals: &'a DeviceBuffer<f64>,
    pub(crate) elements: u64,
    pub(crate) block: u64,
}

/// The device side of the step: parameter block, state, stats ring, and the graphs.
pub(crate) struct DeviceStep {
    params: DeviceBuffer<StepParams>,
    state: DeviceBuffer<u64>,
    ring: DeviceBuffer<f32>,
    /// The steps queued and not yet taken, oldest first; the oldest in ring slot `first`.
    pending: VecDeque<Pending>,
    /// Slots of taken steps, for reuse (pinned allocations are slow).
    spare: Vec<StatsSlot>,
    first: usize,
    pub(crate) graphs: bool,
    /// The micro batch's graph and the key it was recorded for.
    micro: Option<(u64, Graph)>,
    /// The key being recorded (between `graph_begin` and `graph_end`).
    recording: Option<u64>,
    /// The key whose micro batch ran once without capture (the warm-up that loads the kernel
    /// modules and sets their attributes: driver calls better kept out of a capture).
    warmed: Option<u64>,
    finish: Option<Graph>,
    finish_warmed: bool,
    /// Graphs recorded and graph launches so far (tests check that replays happen).
    pub(crate) recorded: usize,
    pub(crate) launched: usize,
}

impl DeviceStep {
    pub(crate) fn new(g: &Gpu) -> runtime::cuda::Result<DeviceStep> {
        let s = DeviceStep {
            params: g.alloc(1)?,
            state: g.alloc(kstep::STATE_WORDS)?,
            ring: g.alloc(2 * RING)?,
            pending: VecDeque::new(),
            spare: Vec::new(),
            first: 0,
            graphs: std::env::var("MXGPT_CUDA_GRAPH").is_ok_and(|v| v == "1"),
            micro: None,
            recording: None,
            warmed: None,
            finish: None,
            finish_warmed: false,
            recorded: 0,
            launched: 0,
        };
        g.fill_bytes(&s.state, 0)?;
        g.fill_bytes(&s.ring, 0)?;
        Ok(s)
    }

    pub(crate) fn state(&self) -> Ptr<'_, u64> {
        Ptr::of(&self.state)
    }

    pub(crate) fn params(&self) -> Ptr<'_, StepParams> {
        Ptr::of(&self.params)
    }

    pub(crate) fn ring(&self) -> Ptr<'_, f32> {
        Ptr::of(&self.ring)
    }

    /// Drops the graphs (their launches bake buffer addresses and shapes in).
    pub(crate) fn forget_graphs(&mut self) {
        self.micro = None;
        self.finish = None;
        self.warmed = None;
        self.finish_warmed = false;
    }

    /// Before a micro batch: whether the caller must run (and maybe record) its ops.
    pub(crate) fn graph_begin(&mut self, g: &Gpu, key: u64) -> BResult<bool> {
        if !self.graphs {
            return Ok(true);
        }
        if self.micro.as_ref().is_some_and(|(k, _)| *k == key) {
            return Ok(false);
        }
        self.micro = None;
        if self.warmed != Some(key) {
            self.warmed = Some(key);
            return Ok(true); // the warm-up: run directly
        }
        g.begin_capture().map_err(err)?;
        self.recording = Some(key);
        Ok(true)
    }

    /// After a micro batch: ends a recording (kept when `ok`), then launches the graph.
    pub(crate) fn graph_end(&mut self, g: &Gpu, ok: bool) -> BResult<()> {
        if let Some(key) = self.recording.take() {
            let graph = g.end_capture().map_err(err)?;
            if !ok {
                return Ok(());
            }
            log::info!(
                "CUDA graph: a micro batch's forward and backward recorded ({} kernels)",
                graph.launches()
            );
            self.micro = Some((key, graph));
            self.recorded += 1;
        }
        match &self.micro {
            Some((_, graph)) if self.graphs => {
                self.launched += 1;
                g.launch_graph(graph).map_err(err)
            }
            _ => Ok(()),
        }
    }

    /// Writes the step's parameter block (one asynchronous copy) and runs `enqueue_finish`
    /// (norm, step_finish, AdamW) directly or as the recorded finish graph; then queues the
    /// copies of the step's numbers (and `mx`'s total, which is reset) to the host.
    pub(crate) fn step(
        &mut self,
        g: &Gpu,
        up: &StepUpdate,
        seed: u32,
        mx: Option<MxTotal>,
        enqueue_finish: &dyn Fn(&DeviceStep) -> BResult<()>,
    ) -> BResult<()> {
        if self.pending.len() == RING {
            return Err(BackendError(format!(
                "device_step: {RING} steps finished without take_step_stats (the device ring is full)"
            )));
        }
        if up.micro_batches == 0 || up.micro_batches > i32::MAX as usize {
            return Err(BackendError(format!(
                "device_step: {} micro batches, need at least 1",
                up.micro_batches
            )));
        }
        let hp = &up.adamw;
        let slot = (self.first + self.pending.len()) % RING;
        let p = StepParams {
            lr: hp.lr,
            beta1: hp.beta1,
            beta2: hp.beta2,
            beta1_correction: 1.0 - hp.beta1.powi(hp.t as i32),
            beta2_correction: 1.0 - hp.beta2.powi(hp.t as i32),
            eps: hp.eps,
            weight_decay: hp.weight_decay,
            grad_clip: up.grad_clip,
            seed,
            slot: slot as u32,
            micro_batches: up.micro_batches as i32,
            pad: 0,
        };
        g.copy_to_device_async(&[p], &self.params).map_err(err)?;
        if !self.graphs || (self.finish.is_none() && !self.finish_warmed) {
            enqueue_finish(self)?; // without graphs, or the warm-up before the recording
            self.finish_warmed = self.graphs;
        } else {
            if self.finish.is_none() {
                g.begin_capture().map_err(err)?;
                let r = enqueue_finish(self);
                let graph = g.end_capture().map_err(err);
                r?;
                let graph = graph?;
                log::info!(
                    "CUDA graph: the step's norm, clip and AdamW recorded ({} kernels)",
                    graph.launches()
                );
                self.finish = Some(graph);
                self.recorded += 1;
            }
            self.launched += 1;
            g.launch_graph(self.finish.as_ref().expect("recorded above"))
                .map_err(err)?;
        }
        // The step's numbers to the host, without waiting (the event behind each copy is what
        // `take_through` waits for).
        let mut s = match self.spare.pop() {
            Some(s) => s,
            None => StatsSlot {
                stats: g.alloc_pinned(2).map_err(err)?,
                mx: g.alloc_pinned(ACC).map_err(err)?,
            },
        };
        g.copy_to_pinned_async(&self.ring, 2 * slot, &mut s.stats)
            .map_err(err)?;
        let mx = match mx {
            Some(m) => {
                g.copy_to_pinned_async(m.totals, 0, &mut s.mx)
                    .map_err(err)?;
                g.fill_bytes_range(m.totals, 0, ACC, 0).map_err(err)?;
                Some((m.elements, m.block))
            }
            None => None,
        };
        self.pending.push_back(Pending {
            t: hp.t,
            slot: s,
            mx,
        });
        Ok(())
    }

    /// The numbers of the pending steps whose AdamW `t` is at most `through`, oldest first;
    /// waits for those steps' copies only, not for work queued after them.
    pub(crate) fn take_through(&mut self, through: u64) -> BResult<Vec<StepStats>> {
        let mut out = Vec::new();
        while self.pending.front().is_some_and(|p| p.t <= through) {
            let mut p = self.pending.pop_front().expect("checked above");
            let (loss, norm) = {
                let v = p.slot.stats.host().map_err(err)?;
                (v[0], v[1])
            };
            let mx = match p.mx {
                Some((elements, block)) => {
                    let t = p.slot.mx.host().map_err(err)?;
                    Some(telemetry_of(t, elements, block))
                }
                None => None,
            };
            out.push(StepStats {
                t: p.t,
                loss,
                norm,
                mx,
            });
            self.first = (self.first + 1) % RING;
            self.spare.push(p.slot);
        }
        Ok(out)
    }
}
