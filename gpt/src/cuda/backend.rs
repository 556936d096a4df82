//! `CudaBackend`: the `Backend` trait on one GPU, one stream, one launcher per op.
//!
//! Memory (DESIGN.md): parameters, parameter gradients, activations and activation gradients in
//! BF16; per-row statistics (layernorm mean/rstd, attention log-sum-exp, losses) and the AdamW
//! state (FP32 master weights, both moments) in FP32, for every parameter or, data parallel, for
//! this rank's ZeRO-1 shard only (`on_ranks`). Every arena of `layout.rs` is one device
//! allocation, so a `TensorRef` becomes a base pointer plus an offset. Ops that need temporary
//! FP32 space (the deterministic two-pass reductions) share one `work` buffer sized for the
//! largest of them: everything runs in order on one stream, so they never overlap.
//!
//! The MXFP4 and NVFP4 backward modes run through `mx.rs` (quantize kernels and the MX GEMM path
//! chosen with `set_mx_gemm`; NVFP4 always its exact s8 GEMM); their scratch is allocated, with
//! its own memory check, when a run sets a quantized mode.
//!
//! The FP8 forward (`--forward fp8`, docs/numerics.md section 9) runs the blocks' linear layers
//! through fp8.cu / fp8_gemm.cu (`linear_forward`): per call each operand's amax and scale on
//! the device (delayed scaling's amax rings are device buffers; the call counts that pick a
//! ring's slot are kept here, on the host), E4M3 quantization, then the FP8 GEMM (E4M3
//! mma.sync on compute capability 8.9+, the BF16 fallback elsewhere or when asked).
//!
//! The training step can stay on the device (`device_step`, step.rs): the encoder index is built
//! there, the step's scalars come from a device parameter block, the loss and norm go to a
//! device ring read once; with `MXGPT_CUDA_GRAPH=1` micro batches and the finish replay as CUDA
//! graphs.
//!
//! NOT VERIFIED ON A GPU unless perf/ holds a GPU run of this commit (see the module doc).

use super::fp8_telemetry::Fp8Telemetry;
use super::kernels::fp8::{self as kfp8, Fp8Operand as Fp8Buf};
use super::kernels::{self as k, Ptr};
use super::mx::{self as gmx, MxBackward, MxGemmChoice, MxGemmPath};
use super::step::DeviceStep;
use crate::backend::{
    BResult, Backend, BackendError, BackendInfo, LinearBackward, LinearForward, StepStats,
    StepUpdate,
};
use crate::config::ModelConfig;
use crate::cpu::ops::AdamW;
use crate::layout::{ActLayout, Arena, ParamLayout, TensorRef};
use crate::mx::fp8::{ForwardConfig, Fp8Operand, Fp8Scaling, Fp8State};
use crate::mx::{MxConfig, MxTelemetry, SiteTelemetry};
use runtime::cuda::half::bf16;
use runtime::cuda::{CudaError, DeviceBuffer, Gpu, PinnedBuffer};

pub struct CudaBackend {
    layout: ParamLayout,
    model: ModelConfig,
    batch: usize,
    seq: usize,
    vocab: usize,
    tokens_per_batch: usize,
    params: DeviceBuffer<bf16>,
    grads: DeviceBuffer<bf16>,
    /// FP32 master weights and AdamW moments of the parameters `opt_at..opt_at + master.len()`:
    /// all of them, or this rank's ZeRO-1 shard (`on_ranks`).
    master: DeviceBuffer<f32>,
    adam_m: DeviceBuffer<f32>,
    adam_v: DeviceBuffer<f32>,
    opt_at: usize,
    acts: DeviceBuffer<bf16>,
    scratch: DeviceBuffer<bf16>,
    stats: DeviceBuffer<f32>,
    inputs: DeviceBuffer<i32>,
    targets: DeviceBuffer<i32>,
    /// Pinned host staging of the tokens (inputs, targets), two sets used in turn: a micro
    /// batch's copy runs while the host fills the other set for the next one, and filling a
    /// set waits for the copy that last read it (`PinnedBuffer::host`), two uploads back.
    token_stage: [(PinnedBuffer<i32>, PinnedBuffer<i32>); 2],
    next_stage: usize,
    /// The batch's positions grouped by token, for the encoder backward: built on the device
    /// from `inputs` when the tokens arrive, into buffers allocated once.
    encoder_index: k::encoder::EncoderIndex,
    has_tokens: bool,
    has_targets: bool,
    /// FP32 temporaries of the two-pass reductions (layernorm and bias gradients, attention
    /// backward, gradient norm).
    work: DeviceBuffer<f32>,
    norm: DeviceBuffer<f32>,
    /// `--mx-gemm` as asked; resolved against the device when an MXFP4 mode is set.
    mx_choice: MxGemmChoice,
    /// The MXFP4 backward state (scratch, settings, telemetry) once an MXFP4 mode is set.
    mx: Option<MxBackward>,
    /// `--forward` / `--fp8-scaling` as set; the FP8 state once an FP8 forward is set.
    forward: ForwardConfig,
    fp8: Option<Fp8Forward>,
    /// The FP8 forward's per-layer telemetry (with `fp8`).
    fp8_telemetry: Option<Fp8Telemetry>,
    /// Run the FP8 GEMM on its BF16 fallback even where E4M3 mma exists (tests; takes effect at
    /// the next `set_forward_config`).
    fp8_fallback: bool,
    /// Data parallel: this rank's ZeRO-1 shard and collective (`set_data_parallel`).
    dp: Option<super::dist::Zero1State>,
    /// The step kept on the device (step.rs): parameter block, stats ring, CUDA graphs. Moved
    /// out while a call uses it alongside the other buffers (always Some between calls).
    step: Option<DeviceStep>,
    /// Last: fields drop in declaration order, and every buffer above must be freed while the
    /// context is still alive.
    gpu: Gpu,
}

fn err(e: CudaError) -> BackendError {
    BackendError(format!("CUDA: {e}"))
}

fn gib(bytes: usize) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// Device bytes a model needs at micro batch `batch` x `seq` on each of `ranks` data-parallel
/// ranks (without the `work` buffer, which is small): (parameters + optimizer state,
/// activations and their gradients). With N > 1 ranks (ZeRO-1) the FP32 master weights and
/// moments are the largest rank's shard, and the gradient exchange stages every rank's part of
/// that shard (BF16, `cuda::dist::Zero1State`).
pub fn memory_estimate(
    cfg: &ModelConfig,
    batch: usize,
    seq: usize,
    ranks: usize,
) -> (usize, usize) {
    let n = ParamLayout::new(cfg).total;
    let a = ActLayout::new(cfg, batch, seq);
    let shard = n.div_ceil(ranks.max(1));
    let exchange = if ranks > 1 { 2 * shard * ranks } else { 0 };
    // bf16 params + bf16 grads + f32 master, m, v of the shard (+ the exchange's staging)
    let state = n * (2 + 2) + shard * 4 * 3 + exchange;
    let bt = batch * seq;
    // tokens and targets; the encoder index (<= 3 bt + 3 ints) and its build scratch.
    let index = 4 * (3 * bt + 3 + 2 * cfg.vocab + bt);
    let acts = 2 * (a.acts_total + a.scratch_total) + 4 * a.stats_total + 4 * 2 * bt + index;
    (state, acts)
}

/// FP32 elements of the `work` buffer the two-pass reductions share at micro batch `batch` x
/// `seq`: the largest of them (everything runs in order on one stream).
pub fn work_len(cfg: &ModelConfig, batch: usize, seq: usize) -> BResult<usize> {
    let (layout, bt, c) = (ParamLayout::new(cfg), batch * seq, cfg.channels);
    Ok([
        k::layernorm::layernorm_backward_scratch_len(bt, c),
        k::gemm::bias_backward_scratch_len(bt, 4 * c),
        // split-K partials and the fused bias gradient's partial sums (linear_backward_with)
        k::gemm::linear_layers_scratch_len(
            &k::gemm::GemmOptions::from_env().map_err(err)?,
            bt,
            c,
            cfg.padded_vocab,
        ),
        k::attention::attention_backward_scratch_len(batch, seq, c, cfg.heads),
        k::global_norm::grad_norm_scratch_len(layout.total),
    ]
    .into_iter()
    .max()
    .unwrap_or(1)
    .max(1))
}

impl CudaBackend {
    /// Opens GPU `ordinal` and allocates everything for `cfg` at micro batch `batch` x `seq`.
    /// A model that does not fit fails here, before any allocation, with what it needs.
    pub fn new(ordinal: usize, cfg: &ModelConfig, batch: usize, seq: usize) -> BResult<Self> {
        Self::on(Gpu::new(ordinal).map_err(err)?, cfg, batch, seq)
    }

    /// The backend on an open device (a GPU, or the host harness in tests).
    pub fn on(gpu: Gpu, cfg: &ModelConfig, batch: usize, seq: usize) -> BResult<Self> {
        Self::on_ranks(gpu, cfg, batch, seq, (0, 1))
    }

    /// As `on`, for rank `rank` of `ranks` data-parallel ranks: FP32 master weights and AdamW
    /// moments for this rank's ZeRO-1 shard only (`dist::Shards::even`); `set_data_parallel`
    /// then joins the ranks.
    pub fn on_ranks(
        gpu: Gpu,
        cfg: &ModelConfig,
        batch: usize,
        seq: usize,
        (rank, ranks): (usize, usize),
    ) -> BResult<Self> {
        let layout = ParamLayout::new(cfg);
        let a = ActLayout::new(cfg, batch, seq);
        let bt = batch * seq;
        let work_len = work_len(cfg, batch, seq)?;
        if rank >= ranks {
            return Err(BackendError(format!("rank {rank} of {ranks} ranks")));
        }
        let (state, acts) = memory_estimate(cfg, batch, seq, ranks);
        let need = state + acts + 4 * work_len;
        let (free, total) = gpu.memory_info().map_err(err)?;
        // Leave room for the context, module images and allocator granularity.
        let usable = free.saturating_sub(512 << 20);
        if need > usable {
            return Err(BackendError(format!(
                "out of memory on {}: {cfg} at batch {batch} x seq {seq} needs {:.2} GiB ({:.2} GiB parameters, gradients and AdamW state, {:.2} GiB activations) but {:.2} GiB of {:.2} GiB are free: lower --batch (keeping the step's tokens with gradient accumulation) or --seq, or pick a smaller --model",
                gpu.props().name,
                gib(need),
                gib(state),
                gib(acts),
                gib(free),
                gib(total)
            )));
        }
        let n = layout.total;
        let opt = crate::dist::Shards::even(n, ranks).range(rank);
        let backend = CudaBackend {
            params: gpu.alloc(n).map_err(err)?,
            grads: gpu.alloc(n).map_err(err)?,
            master: gpu.alloc(opt.len()).map_err(err)?,
            adam_m: gpu.alloc(opt.len()).map_err(err)?,
            adam_v: gpu.alloc(opt.len()).map_err(err)?,
            opt_at: opt.start,
            acts: gpu.alloc(a.acts_total).map_err(err)?,
            scratch: gpu.alloc(a.scratch_total).map_err(err)?,
            stats: gpu.alloc(a.stats_total).map_err(err)?,
            inputs: gpu.alloc(bt).map_err(err)?,
            targets: gpu.alloc(bt).map_err(err)?,
            token_stage: [
                (
                    gpu.alloc_pinned(bt).map_err(err)?,
                    gpu.alloc_pinned(bt).map_err(err)?,
                ),
                (
                    gpu.alloc_pinned(bt).map_err(err)?,
                    gpu.alloc_pinned(bt).map_err(err)?,
                ),
            ],
            next_stage: 0,
            encoder_index: k::encoder::EncoderIndex::new(&gpu, bt, cfg.vocab).map_err(err)?,
            has_tokens: false,
            has_targets: false,
            work: gpu.alloc(work_len).map_err(err)?,
            norm: gpu.alloc(1).map_err(err)?,
            mx_choice: MxGemmChoice::Auto,
            mx: None,
            forward: ForwardConfig::HIGH_PRECISION,
            fp8: None,
            fp8_telemetry: None,
            fp8_fallback: false,
            dp: None,
            step: Some(DeviceStep::new(&gpu).map_err(err)?),
            layout,
            model: *cfg,
            batch,
            seq,
            vocab: cfg.vocab,
            tokens_per_batch: bt,
            gpu,
        };
        // Defined contents from the start: zero moments and gradients, so that a read before the
        // first write is zeros and not whatever the allocator handed out.
        for b in [&backend.master, &backend.adam_m, &backend.adam_v] {
            backend.gpu.fill_bytes(b, 0).map_err(err)?;
        }
        backend.gpu.fill_bytes(&backend.grads, 0).map_err(err)?;
        backend.gpu.fill_bytes(&backend.params, 0).map_err(err)?;
        Ok(backend)
    }

    /// Data parallel over `dist` (ZeRO-1, gpt::cuda::dist): `adamw` updates this rank's shard
    /// of the parameters only; the trainer sums the gradients and gathers the parameters
    /// through `Backend::device_zero1`.
    pub fn set_data_parallel(
        &mut self,
        dist: &dyn crate::dist::Transport,
        kind: super::dist::CollectiveKind,
    ) -> BResult<()> {
        if self.opt_range()
            != crate::dist::Shards::even(self.layout.total, dist.size()).range(dist.rank())
        {
            return Err(BackendError(format!(
                "rank {} of {}: this backend holds the optimizer state of parameters {:?}, not that rank's ZeRO-1 shard: open it with CudaBackend::on_ranks",
                dist.rank(),
                dist.size(),
                self.opt_range()
            )));
        }
        let st = super::dist::Zero1State::new(&self.gpu, dist, self.layout.total, kind);
        self.dp = Some(st.map_err(BackendError)?);
        Ok(())
    }

    /// The parameters whose FP32 master weights and moments this backend holds.
    fn opt_range(&self) -> std::ops::Range<usize> {
        self.opt_at..self.opt_at + self.master.len()
    }

    /// Whole-state transfers need the whole optimizer state (a ZeRO-1 shard goes through
    /// `DeviceZero1::read_shard`/`write_shard`).
    fn check_unsharded(&self) -> BResult<()> {
        if self.master.len() != self.layout.total {
            return Err(BackendError(format!(
                "the optimizer state is a ZeRO-1 shard (parameters {:?}): read or write it through DeviceZero1::read_shard/write_shard",
                self.opt_range()
            )));
        }
        Ok(())
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// CUDA graphs for the micro batches and the step's finish (default: MXGPT_CUDA_GRAPH=1;
    /// see step.rs). Turning them off or on drops what was recorded.
    pub fn set_cuda_graphs(&mut self, on: bool) {
        let st = self.step.as_mut().expect("device step");
        st.graphs = on;
        st.forget_graphs();
    }

    /// CUDA graphs recorded and launched so far (see `set_cuda_graphs`).
    pub fn graph_counts(&self) -> (usize, usize) {
        let st = self.step.as_ref().expect("device step");
        (st.recorded, st.launched)
    }

    /// Why the current modes cannot be replayed from a graph (their launches take per-call
    /// values by value), or None. (The 4-bit backward's per-GEMM streams can: their step and
    /// micro-batch bits are in device memory, `begin_micro_batch`; so can FP8 with current
    /// scaling.)
    fn graph_obstacle(&self) -> Option<String> {
        if self.fp8.as_ref().is_some_and(|f| f.delayed.is_some()) {
            return Some(
                "the FP8 forward's delayed scaling passes its amax ring slots by value; use --fp8-scaling current or --forward bf16".into(),
            );
        }
        None
    }

    /// The current batch's tokens as the device holds them (inputs, targets), for tests.
    pub fn tokens_on_device(&self) -> BResult<(Vec<i32>, Vec<i32>)> {
        let g = &self.gpu;
        Ok((
            g.download(&self.inputs).map_err(err)?,
            g.download(&self.targets).map_err(err)?,
        ))
    }

    /// Whether the pinned token sets have copies in flight (inputs, targets of each set).
    pub fn token_copies_pending(&self) -> [bool; 4] {
        let [(a, b), (c, d)] = &self.token_stage;
        [
            a.is_pending(),
            b.is_pending(),
            c.is_pending(),
            d.is_pending(),
        ]
    }

    /// The encoder index of the current batch (tests compare it with the host's).
    pub fn encoder_index(&self) -> &k::encoder::EncoderIndex {
        &self.encoder_index
    }

    /// The BF16 span a tensor names; an error for the FP32 statistics arena.
    fn bf(&self, t: TensorRef) -> BResult<Ptr<'_, bf16>> {
        let buf = match t.arena {
            Arena::Params => &self.params,
            Arena::Grads => &self.grads,
            Arena::Acts => &self.acts,
            Arena::Scratch => &self.scratch,
            Arena::Stats => {
                return Err(BackendError(format!("CUDA backend: a BF16 operand was expected but {t:?} is in the FP32 statistics arena")))
            }
        };
        span(buf, t)
    }

    /// The FP32 span of a per-row statistics tensor.
    fn f32s(&self, t: TensorRef) -> BResult<Ptr<'_, f32>> {
        if t.arena != Arena::Stats {
            return Err(BackendError(format!(
                "CUDA backend: an FP32 statistics operand was expected but {t:?} is BF16"
            )));
        }
        span(&self.stats, t)
    }

    fn rows_of(&self, t: usize) -> usize {
        self.tokens_per_batch / t.max(1)
    }

    /// `--mx-gemm`: which MX GEMM the MXFP4 modes use (takes effect at `set_mx_config`).
    pub fn set_mx_gemm(&mut self, choice: MxGemmChoice) -> BResult<()> {
        let p = self.gpu.props();
        MxGemmPath::resolve(choice, p.compute_capability, &p.name).map_err(BackendError)?;
        self.mx_choice = choice;
        Ok(())
    }

    /// `linear_backward` with the MXFP4 state passed in (see the trait method).
    #[allow(clippy::type_complexity)]
    fn linear_backward_with(
        &self,
        mx: Option<&mut MxBackward>,
        (dinp, dw, dbias, dout, inp, w): (
            TensorRef,
            TensorRef,
            Option<TensorRef>,
            TensorRef,
            TensorRef,
            TensorRef,
        ),
        (rows, ic, oc): (usize, usize, usize),
        prec: Option<LinearBackward>,
    ) -> BResult<()> {
        let g = &self.gpu;
        let d = self.bf(dout)?;
        match prec.filter(|p| p.mode.is_quantized()) {
            Some(p) => {
                let mx = mx.ok_or_else(|| {
                    BackendError(format!(
                        "--backward {}: set_mx_config was not called with a quantized mode",
                        p.mode
                    ))
                })?;
                let (dx, dwp, x, wp) = (self.bf(dinp)?, self.bf(dw)?, self.bf(inp)?, self.bf(w)?);
                mx.linear_backward(g, &p, dx, dwp, d, x, wp, (rows, ic, oc))?;
            }
            None => {
                // The work buffer allows split-K and holds the bias gradient's partial sums,
                // which the fast wgrad computes from the dout tiles it already loads (the same
                // bits as bias_backward; gemm.rs).
                let (o, work) = (
                    k::gemm::GemmOptions::from_env().map_err(err)?,
                    Ptr::of(&self.work),
                );
                let db = dbias.map(|t| self.bf(t)).transpose()?;
                k::gemm::matmul_backward_input_with(
                    g,
                    &o,
                    self.bf(dinp)?,
                    d,
                    self.bf(w)?,
                    None,
                    Some(work),
                    rows,
                    ic,
                    oc,
                )
                .map_err(err)?;
                k::gemm::matmul_backward_weight_with(
                    g,
                    &o,
                    self.bf(dw)?,
                    db,
                    d,
                    self.bf(inp)?,
                    Some(work),
                    rows,
                    ic,
                    oc,
                )
                .map_err(err)?;
                return Ok(());
            }
        }
        if let Some(db) = dbias {
            k::gemm::bias_backward(g, self.bf(db)?, d, Ptr::of(&self.work), rows, oc)
                .map_err(err)?;
        }
        Ok(())
    }

    /// The MX GEMM path in use (None until an MXFP4 mode is set).
    pub fn mx_gemm_path(&self) -> Option<MxGemmPath> {
        self.mx.as_ref().map(|m| m.path)
    }

    /// Run the FP8 forward GEMM on its BF16 fallback (fp8_gemm_bf16) even where the E4M3 mma
    /// exists; takes effect at the next `set_forward_config` (for tests and comparisons).
    pub fn set_fp8_fallback(&mut self, fallback: bool) {
        self.fp8_fallback = fallback;
    }

    /// The FP8 GEMM in use: "e4m3" (mma.sync e4m3) or "bf16" (the fallback); None unless the
    /// forward is FP8.
    pub fn fp8_gemm_path(&self) -> Option<&'static str> {
        self.fp8
            .as_ref()
            .map(|f| if f.mma { "e4m3" } else { "bf16" })
    }
}

/// One quantized FP8 operand's scratch: E4M3 bytes (mma path) or their bf16 values (fallback).
enum Fp8Scratch {
    E4m3(DeviceBuffer<u8>),
    Bf16(DeviceBuffer<bf16>),
}

impl Fp8Scratch {
    fn new(g: &Gpu, mma: bool, n: usize) -> runtime::cuda::Result<Fp8Scratch> {
        Ok(if mma {
            Fp8Scratch::E4m3(g.alloc(n)?)
        } else {
            Fp8Scratch::Bf16(g.alloc(n)?)
        })
    }

    fn first(&self, n: usize) -> Fp8Buf<'_> {
        match self {
            Fp8Scratch::E4m3(b) => Fp8Buf::E4m3(Ptr::of(b).slice(0, n)),
            Fp8Scratch::Bf16(b) => Fp8Buf::Bf16(Ptr::of(b).slice(0, n)),
        }
    }
}

/// Delayed FP8 scaling: every tensor's ring of `history` amaxes on the device (layout of
/// `Fp8State::amax`), and the training calls recorded per tensor (here, on the host).
struct Fp8History {
    history: usize,
    rings: DeviceBuffer<f32>,
    calls: Vec<u64>,
}

/// The FP8 forward's device state.
struct Fp8Forward {
    mma: bool,
    xq: Fp8Scratch,
    wq: Fp8Scratch,
    partials: DeviceBuffer<f32>,
    /// (amax, scale) of the input, then of the weight, of the current call.
    rec: DeviceBuffer<f32>,
    delayed: Option<Fp8History>,
}

impl CudaBackend {
    /// The FP8 forward of a linear layer after the delayed-scaling bookkeeping (`slots`: the ring
    /// slot each operand's training call records into, `tensors`: their rings), with the
    /// telemetry of a training call.
    #[allow(clippy::type_complexity)]
    fn fp8_linear_forward(
        &self,
        site: LinearForward,
        (out, inp, w, bias, gelu_out): (
            TensorRef,
            TensorRef,
            TensorRef,
            Option<TensorRef>,
            Option<TensorRef>,
        ),
        (rows, ic, oc): (usize, usize, usize),
        (slots, tensors): ([Option<usize>; 2], [usize; 2]),
        telemetry: Option<&mut Fp8Telemetry>,
    ) -> BResult<()> {
        let f = self
            .fp8
            .as_ref()
            .expect("linear_forward checked that it is set up");
        let g = &self.gpu;
        let (x, wp) = (self.bf(inp)?, self.bf(w)?);
        let rec = Ptr::of(&f.rec);
        let (rx, rw) = (rec.slice(0, 2), rec.slice(2, 2));
        let ring = |i: usize| {
            f.delayed.as_ref().map(|h| kfp8::History {
                ring: Ptr::of(&h.rings).slice(tensors[i] * h.history, h.history),
                slot: slots[i],
            })
        };
        let context = |e: CudaError| {
            BackendError(format!(
                "CUDA: FP8 forward of layer {} {:?}: {e}",
                site.layer, site.linear
            ))
        };
        let (nx, nw) = (rows * ic, oc * ic);
        let partials = Ptr::of(&f.partials);
        kfp8::tensor_scale(g, rx, partials, x, nx, ring(0)).map_err(context)?;
        kfp8::tensor_scale(g, rw, partials, wp, nw, ring(1)).map_err(context)?;
        let (xq, wq) = (f.xq.first(nx), f.wq.first(nw));
        kfp8::quantize(g, xq, x, nx, rx).map_err(context)?;
        kfp8::quantize(g, wq, wp, nw, rw).map_err(context)?;
        let bias = bias.map(|t| self.bf(t)).transpose()?;
        let gelu_out = gelu_out.map(|t| self.bf(t)).transpose()?;
        kfp8::gemm(
            g,
            self.bf(out)?,
            gelu_out,
            xq,
            wq,
            bias,
            rx,
            rw,
            rows,
            ic,
            oc,
        )
        .map_err(context)?;
        if let Some(t) = telemetry {
            t.record(g, &site, (x, nx, rx), (wp, nw, rw))
                .map_err(context)?;
            t.measure(g, &site, (xq, wq), (rx, rw), (x, wp), (rows, ic, oc))
                .map_err(context)?;
        }
        Ok(())
    }
}

fn span<T: runtime::cuda::DeviceElem>(buf: &DeviceBuffer<T>, t: TensorRef) -> BResult<Ptr<'_, T>> {
    if t.offset
        .checked_add(t.len)
        .is_none_or(|end| end > buf.len())
    {
        return Err(BackendError(format!(
            "CUDA backend: {t:?} lies outside its arena of {} elements",
            buf.len()
        )));
    }
    Ok(Ptr::of(buf).slice(t.offset, t.len))
}

fn to_bf16(values: &[f32]) -> Vec<bf16> {
    values.iter().map(|&x| bf16::from_f32(x)).collect()
}

/// A fresh stochastic-rounding seed per optimizer step (splitmix64 of the step), so an element
/// does not round the same way every step.
fn adamw_seed(step: u64) -> u32 {
    let mut z = step.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 32) as u32
}

#[allow(clippy::too_many_arguments)]
impl Backend for CudaBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: "cuda".into(),
            device: self.gpu.props().name.clone(),
            threads: 1,
        }
    }

    fn synchronize(&self) -> BResult<()> {
        self.gpu.synchronize("the queued kernels").map_err(err)
    }

    fn write(&mut self, dst: TensorRef, values: &[f32]) -> BResult<()> {
        if values.len() != dst.len {
            return Err(BackendError(format!(
                "write of {} values into a span of {}",
                values.len(),
                dst.len
            )));
        }
        let g = &self.gpu;
        match dst.arena {
            Arena::Stats => g
                .copy_to_device_at(values, &self.stats, dst.offset)
                .map_err(err),
            Arena::Params => {
                // The FP32 values become the master weights (those of this rank's shard); the
                // BF16 parameters their rounding.
                let (at, end) = (dst.offset, dst.offset + dst.len);
                let o = self.opt_range();
                if at.max(o.start) < end.min(o.end) {
                    let s = at.max(o.start)..end.min(o.end);
                    g.copy_to_device_at(
                        &values[s.start - at..s.end - at],
                        &self.master,
                        s.start - o.start,
                    )
                    .map_err(err)?;
                }
                g.copy_to_device_at(&to_bf16(values), &self.params, dst.offset)
                    .map_err(err)
            }
            Arena::Grads => g
                .copy_to_device_at(&to_bf16(values), &self.grads, dst.offset)
                .map_err(err),
            Arena::Acts => g
                .copy_to_device_at(&to_bf16(values), &self.acts, dst.offset)
                .map_err(err),
            Arena::Scratch => g
                .copy_to_device_at(&to_bf16(values), &self.scratch, dst.offset)
                .map_err(err),
        }
    }

    fn read(&self, src: TensorRef) -> BResult<Vec<f32>> {
        let g = &self.gpu;
        if src.arena == Arena::Stats {
            let mut out = vec![0.0f32; src.len];
            g.copy_to_host_at(&self.stats, src.offset, &mut out)
                .map_err(err)?;
            return Ok(out);
        }
        let buf = match src.arena {
            Arena::Params => &self.params,
            Arena::Grads => &self.grads,
            Arena::Acts => &self.acts,
            _ => &self.scratch,
        };
        let mut out = vec![bf16::ZERO; src.len];
        g.copy_to_host_at(buf, src.offset, &mut out).map_err(err)?;
        Ok(out.iter().map(|x| x.to_f32()).collect())
    }

    fn read_optimizer(&self) -> BResult<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        self.check_unsharded()?;
        let g = &self.gpu;
        Ok((
            g.download(&self.master).map_err(err)?,
            g.download(&self.adam_m).map_err(err)?,
            g.download(&self.adam_v).map_err(err)?,
        ))
    }

    /// Restores the optimizer state; the BF16 parameters become the round-to-nearest of the
    /// master weights. (The run that saved them held their stochastic rounding, so a resumed GPU
    /// run is not bit-identical to an uninterrupted one, unlike on the CPU.)
    fn write_optimizer(&mut self, master: &[f32], m: &[f32], v: &[f32]) -> BResult<()> {
        self.check_unsharded()?;
        let n = self.layout.total;
        for (what, x) in [
            ("master weights", master),
            ("first moments", m),
            ("second moments", v),
        ] {
            if x.len() != n {
                return Err(BackendError(format!(
                    "optimizer state: {} {what} for a model of {n} parameters",
                    x.len()
                )));
            }
        }
        let g = &self.gpu;
        g.copy_to_device(master, &self.master).map_err(err)?;
        g.copy_to_device(m, &self.adam_m).map_err(err)?;
        g.copy_to_device(v, &self.adam_v).map_err(err)?;
        g.copy_to_device(&to_bf16(master), &self.params)
            .map_err(err)
    }

    fn set_mx_config(&mut self, cfg: MxConfig) -> BResult<()> {
        cfg.validate().map_err(|e| BackendError(e.to_string()))?;
        if !cfg.mode.is_quantized() {
            self.mx = None;
            return Ok(());
        }
        let props = self.gpu.props().clone();
        let nvfp4 = cfg.mode.is_nvfp4();
        let path = if nvfp4 {
            MxGemmPath::resolve_nvfp4(self.mx_choice)
        } else {
            MxGemmPath::resolve(self.mx_choice, props.compute_capability, &props.name)
        }
        .map_err(BackendError)?;
        if let Some(m) = self
            .mx
            .as_mut()
            .filter(|m| m.path == path && m.cfg.mode.is_nvfp4() == nvfp4)
        {
            m.cfg = cfg;
            return Ok(());
        }
        self.mx = None;
        let need = gmx::scratch_bytes(&self.model, self.batch, self.seq, path, nvfp4);
        let (free, total) = self.gpu.memory_info().map_err(err)?;
        if need > free.saturating_sub(256 << 20) {
            return Err(BackendError(format!(
                "out of memory on {}: the {} backward ({} path) needs {:.2} GiB of scratch for the quantized operands at batch {} x seq {}, but {:.2} GiB of {:.2} GiB are free: lower --batch or --seq",
                props.name,
                if nvfp4 { "NVFP4" } else { "MXFP4" },
                path.name(),
                gib(need),
                self.batch,
                self.seq,
                gib(free),
                gib(total)
            )));
        }
        let mx = MxBackward::new(&self.gpu, &self.model, self.batch, self.seq, path, cfg)
            .map_err(err)?;
        log::info!(
            "{} backward on {}: {} GEMM path, {:.1} MiB of scratch",
            if nvfp4 { "NVFP4" } else { "MXFP4" },
            props.name,
            path.name(),
            need as f64 / (1 << 20) as f64
        );
        self.mx = Some(mx);
        Ok(())
    }

    fn set_forward_config(&mut self, cfg: ForwardConfig) -> BResult<()> {
        if !cfg.is_fp8() {
            self.fp8 = None;
            self.fp8_telemetry = None;
            self.forward = cfg;
            return Ok(());
        }
        let c = self.model.channels;
        if !c.is_multiple_of(16) {
            return Err(BackendError(format!(
                "--forward fp8 on the CUDA backend needs the channels ({c}) to be a multiple of 16 (rows of 16-byte E4M3 chunks); use --forward bf16 or --device cpu"
            )));
        }
        let props = self.gpu.props().clone();
        let mma = !self.fp8_fallback && kfp8::has_fp8_mma(props.compute_capability);
        let rows = self.batch * self.seq;
        let (nx, nw) = (rows * 4 * c, 4 * c * c);
        let tensors = self.model.layers * 4 * 2;
        let history = match cfg.scaling {
            Fp8Scaling::Delayed { history } => history,
            Fp8Scaling::Current => 0,
        };
        let elem = if mma { 1 } else { 2 };
        let need = elem * (nx + nw)
            + 4 * (kfp8::amax_partials_len(nx.max(nw)) + 4 + tensors * history)
            + super::fp8_telemetry::scratch_bytes(self.model.layers, rows, c);
        let (free, total) = self.gpu.memory_info().map_err(err)?;
        if need > free.saturating_sub(256 << 20) {
            return Err(BackendError(format!(
                "out of memory on {}: the FP8 forward needs {:.2} GiB of scratch for its quantized operands at batch {} x seq {}, but {:.2} GiB of {:.2} GiB are free: lower --batch or --seq",
                props.name,
                gib(need),
                self.batch,
                self.seq,
                gib(free),
                gib(total)
            )));
        }
        self.fp8 = None;
        self.fp8_telemetry = None;
        let g = &self.gpu;
        self.fp8_telemetry = Some(Fp8Telemetry::new(g, self.model.layers, rows, c).map_err(err)?);
        let delayed = if history > 0 {
            let rings = g.alloc(tensors * history).map_err(err)?;
            g.fill_bytes(&rings, 0).map_err(err)?;
            Some(Fp8History {
                history,
                rings,
                calls: vec![0; tensors],
            })
        } else {
            None
        };
        self.fp8 = Some(Fp8Forward {
            mma,
            xq: Fp8Scratch::new(g, mma, nx).map_err(err)?,
            wq: Fp8Scratch::new(g, mma, nw).map_err(err)?,
            partials: g.alloc(kfp8::amax_partials_len(nx.max(nw))).map_err(err)?,
            rec: g.alloc(4).map_err(err)?,
            delayed,
        });
        self.forward = cfg;
        log::info!(
            "FP8 forward on {}: {} GEMM, {} scaling",
            props.name,
            if mma { "E4M3 mma" } else { "BF16 fallback" },
            if history > 0 { "delayed" } else { "current" }
        );
        Ok(())
    }

    fn fp8_state(&self) -> BResult<Option<Fp8State>> {
        let Some(h) = self.fp8.as_ref().and_then(|f| f.delayed.as_ref()) else {
            return Ok(None);
        };
        Ok(Some(Fp8State {
            history: h.history,
            amax: self.gpu.download(&h.rings).map_err(err)?,
            calls: h.calls.clone(),
        }))
    }

    fn set_fp8_state(&mut self, state: &Fp8State) -> BResult<()> {
        let g = &self.gpu;
        match self.fp8.as_mut().and_then(|f| f.delayed.as_mut()) {
            Some(h)
                if h.history == state.history
                    && h.calls.len() == state.calls.len()
                    && state.amax.len() == h.rings.len() =>
            {
                g.copy_to_device(&state.amax, &h.rings).map_err(err)?;
                h.calls.clone_from(&state.calls);
                Ok(())
            }
            h => {
                let have = match h {
                    Some(h) => format!("{} tensors, history {}", h.calls.len(), h.history),
                    None => "no delayed FP8 scaling".into(),
                };
                Err(BackendError(format!(
                    "FP8 scaling state for {} tensors with history {} does not fit this run ({have})",
                    state.calls.len(),
                    state.history
                )))
            }
        }
    }

    fn linear_forward(
        &mut self,
        site: LinearForward,
        out: TensorRef,
        inp: TensorRef,
        w: TensorRef,
        bias: Option<TensorRef>,
        gelu_out: Option<TensorRef>,
        rows: usize,
        ic: usize,
        oc: usize,
    ) -> BResult<()> {
        if !self.forward.is_fp8() {
            return self.matmul_forward(out, inp, w, bias, gelu_out, rows, ic, oc);
        }
        let f = self
            .fp8
            .as_mut()
            .ok_or_else(|| BackendError("linear_forward: the FP8 forward was not set up".into()))?;
        // Delayed scaling: the ring of each operand, and the slot a training call records into
        // (its call count modulo the history, counted here).
        let mut slots = [None, None];
        let mut tensors = [0, 0];
        if let Some(h) = f.delayed.as_mut() {
            for (i, op) in [Fp8Operand::Input, Fp8Operand::Weight]
                .into_iter()
                .enumerate()
            {
                let t = Fp8State::tensor(site.layer, site.linear, op);
                if t >= h.calls.len() {
                    return Err(BackendError(format!(
                        "linear_forward: layer {} outside the FP8 state's {} tensors",
                        site.layer,
                        h.calls.len()
                    )));
                }
                tensors[i] = t;
                if site.training {
                    slots[i] = Some((h.calls[t] % h.history as u64) as usize);
                    h.calls[t] += 1;
                }
            }
        }
        let mut telemetry = self.fp8_telemetry.take();
        let r = self.fp8_linear_forward(
            site,
            (out, inp, w, bias, gelu_out),
            (rows, ic, oc),
            (slots, tensors),
            telemetry.as_mut().filter(|_| site.training),
        );
        self.fp8_telemetry = telemetry;
        r
    }

    fn take_mx_telemetry(&mut self) -> MxTelemetry {
        let Some(m) = self.mx.as_mut() else {
            return MxTelemetry::default();
        };
        m.take_telemetry(&self.gpu).unwrap_or_else(|e| {
            log::warn!("MXFP4 telemetry unavailable: {e}");
            MxTelemetry::default()
        })
    }

    fn set_mx_noise_measurement(&mut self, on: bool) {
        if let Some(m) = self.mx.as_mut() {
            if m.measure_noise != on {
                // The measurement's launches are part of a recorded micro batch or not.
                self.step.as_mut().expect("device step").forget_graphs();
            }
            m.measure_noise = on;
        }
        if let Some(t) = self.fp8_telemetry.as_mut() {
            if t.measure_noise != on {
                self.step.as_mut().expect("device step").forget_graphs();
            }
            t.measure_noise = on;
        }
    }

    fn take_mx_site_telemetry(&mut self) -> Vec<SiteTelemetry> {
        let g = &self.gpu;
        let mut sites = match self.mx.as_mut().map(|m| m.take_site_telemetry(g)) {
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                log::warn!("per-layer MXFP4 telemetry unavailable: {e}");
                Vec::new()
            }
            None => Vec::new(),
        };
        match self.fp8_telemetry.as_mut().map(|t| t.take_sites(g)) {
            Some(Ok(s)) => sites.extend(s),
            Some(Err(e)) => log::warn!("per-layer FP8 telemetry unavailable: {e}"),
            None => {}
        }
        sites.sort_by_key(|s| (s.layer, s.linear as u8, s.gemm));
        sites
    }

    fn set_tokens(&mut self, inputs: &[u32], targets: Option<&[u32]>) -> BResult<()> {
        let bt = self.tokens_per_batch;
        if inputs.len() != bt || targets.is_some_and(|t| t.len() != bt) {
            return Err(BackendError(format!(
                "{} input / {} target tokens for a batch of {bt}",
                inputs.len(),
                targets.map_or(0, |t| t.len())
            )));
        }
        let vocab = self.vocab as u32;
        if let Some(bad) = inputs
            .iter()
            .chain(targets.unwrap_or(&[]))
            .find(|&&t| t >= vocab)
        {
            return Err(BackendError(format!(
                "token id {bad} is outside the vocabulary (< {vocab})"
            )));
        }
        // Into this micro batch's pinned set, then copies the DMA engine makes when the stream
        // gets there (the host does not wait for them), then the index built on the device.
        let g = &self.gpu;
        let (pin_in, pin_tgt) = &mut self.token_stage[self.next_stage];
        self.next_stage ^= 1;
        let fill = |pinned: &mut PinnedBuffer<i32>, v: &[u32]| -> BResult<()> {
            let host = pinned.host().map_err(err)?; // waits for the copy two uploads back
            for (h, &t) in host.iter_mut().zip(v) {
                *h = t as i32;
            }
            Ok(())
        };
        fill(pin_in, inputs)?;
        g.copy_pinned_to_device_async(pin_in, &self.inputs, 0)
            .map_err(err)?;
        self.encoder_index
            .build_on_device(g, Ptr::of(&self.inputs))
            .map_err(err)?;
        self.has_tokens = true;
        self.has_targets = targets.is_some();
        if let Some(t) = targets {
            fill(pin_tgt, t)?;
            g.copy_pinned_to_device_async(pin_tgt, &self.targets, 0)
                .map_err(err)?;
        }
        Ok(())
    }

    fn zero_grads(&mut self) -> BResult<()> {
        self.gpu.fill_bytes(&self.grads, 0).map_err(err)
    }

    fn encoder_forward(
        &mut self,
        out: TensorRef,
        wte: TensorRef,
        wpe: TensorRef,
        t: usize,
        c: usize,
    ) -> BResult<()> {
        let b = self.rows_of(t);
        let tokens = Ptr::of(&self.inputs);
        k::encoder::encoder_forward(
            &self.gpu,
            self.bf(out)?,
            tokens,
            self.bf(wte)?,
            self.bf(wpe)?,
            b,
            t,
            c,
        )
        .map_err(err)
    }

    fn layernorm_forward(
        &mut self,
        out: TensorRef,
        mean: TensorRef,
        rstd: TensorRef,
        inp: TensorRef,
        w: TensorRef,
        b: TensorRef,
        c: usize,
    ) -> BResult<()> {
        let n = mean.len;
        k::layernorm::layernorm_forward(
            &self.gpu,
            self.bf(out)?,
            self.f32s(mean)?,
            self.f32s(rstd)?,
            self.bf(inp)?,
            self.bf(w)?,
            self.bf(b)?,
            n,
            c,
        )
        .map_err(err)
    }

    fn residual_layernorm_forward(
        &mut self,
        res_out: TensorRef,
        ln_out: TensorRef,
        mean: TensorRef,
        rstd: TensorRef,
        res_in: TensorRef,
        delta: TensorRef,
        w: TensorRef,
        b: TensorRef,
        c: usize,
    ) -> BResult<()> {
        let n = mean.len;
        k::layernorm::residual_layernorm_forward(
            &self.gpu,
            self.bf(res_out)?,
            self.bf(ln_out)?,
            self.f32s(mean)?,
            self.f32s(rstd)?,
            self.bf(res_in)?,
            self.bf(delta)?,
            self.bf(w)?,
            self.bf(b)?,
            n,
            c,
        )
        .map_err(err)
    }

    fn matmul_forward(
        &mut self,
        out: TensorRef,
        inp: TensorRef,
        w: TensorRef,
        bias: Option<TensorRef>,
        gelu_out: Option<TensorRef>,
        rows: usize,
        ic: usize,
        oc: usize,
    ) -> BResult<()> {
        let bias = bias.map(|t| self.bf(t)).transpose()?;
        let gelu_out = gelu_out.map(|t| self.bf(t)).transpose()?;
        k::gemm::matmul_forward(
            &self.gpu,
            self.bf(out)?,
            self.bf(inp)?,
            self.bf(w)?,
            bias,
            gelu_out,
            rows,
            ic,
            oc,
        )
        .map_err(err)
    }

    fn attention_forward(
        &mut self,
        out: TensorRef,
        lse: TensorRef,
        qkv: TensorRef,
        b: usize,
        t: usize,
        c: usize,
        nh: usize,
    ) -> BResult<()> {
        k::attention::attention_forward(
            &self.gpu,
            self.bf(out)?,
            self.f32s(lse)?,
            self.bf(qkv)?,
            b,
            t,
            c,
            nh,
        )
        .map_err(err)
    }

    fn classifier(
        &mut self,
        logits: TensorRef,
        losses: TensorRef,
        vp: usize,
        v: usize,
        dloss: Option<f32>,
    ) -> BResult<()> {
        if !self.has_targets {
            return Err(BackendError(
                "classifier: no targets were set for this batch".into(),
            ));
        }
        let n = losses.len;
        let targets = Ptr::of(&self.targets).slice(0, n);
        k::classifier::classifier(
            &self.gpu,
            self.bf(logits)?,
            self.f32s(losses)?,
            targets,
            n,
            vp,
            v,
            dloss,
        )
        .map_err(err)
    }

    fn encoder_backward(
        &mut self,
        dwte: TensorRef,
        dwpe: TensorRef,
        dout: TensorRef,
        t: usize,
        c: usize,
    ) -> BResult<()> {
        let b = self.rows_of(t);
        if !self.has_tokens {
            return Err(BackendError(
                "encoder_backward: no tokens were set for this batch".into(),
            ));
        }
        let index = &self.encoder_index;
        k::encoder::encoder_backward_indexed(
            &self.gpu,
            self.bf(dwte)?,
            self.bf(dwpe)?,
            self.bf(dout)?,
            index,
            b,
            t,
            c,
        )
        .map_err(err)
    }

    fn layernorm_backward(
        &mut self,
        dinp: TensorRef,
        dw: TensorRef,
        db: TensorRef,
        dout: TensorRef,
        inp: TensorRef,
        w: TensorRef,
        mean: TensorRef,
        rstd: TensorRef,
        c: usize,
    ) -> BResult<()> {
        let n = mean.len;
        k::layernorm::layernorm_backward(
            &self.gpu,
            self.bf(dinp)?,
            self.bf(dw)?,
            self.bf(db)?,
            self.bf(dout)?,
            self.bf(inp)?,
            self.bf(w)?,
            self.f32s(mean)?,
            self.f32s(rstd)?,
            Ptr::of(&self.work),
            n,
            c,
        )
        .map_err(err)
    }

    fn linear_backward(
        &mut self,
        dinp: TensorRef,
        dw: TensorRef,
        dbias: Option<TensorRef>,
        dout: TensorRef,
        inp: TensorRef,
        w: TensorRef,
        rows: usize,
        ic: usize,
        oc: usize,
        prec: Option<LinearBackward>,
    ) -> BResult<()> {
        // The MXFP4 state is moved out for the call (it is mutated while the buffers are read).
        let mut mx = self.mx.take();
        let r = self.linear_backward_with(
            mx.as_mut(),
            (dinp, dw, dbias, dout, inp, w),
            (rows, ic, oc),
            prec,
        );
        self.mx = mx;
        r
    }

    fn gelu_backward(&mut self, d: TensorRef, pre: TensorRef) -> BResult<()> {
        k::gelu::gelu_backward_inplace(&self.gpu, self.bf(d)?, self.bf(pre)?, d.len).map_err(err)
    }

    fn attention_backward(
        &mut self,
        dqkv: TensorRef,
        dout: TensorRef,
        qkv: TensorRef,
        out: TensorRef,
        lse: TensorRef,
        b: usize,
        t: usize,
        c: usize,
        nh: usize,
    ) -> BResult<()> {
        k::attention::attention_backward(
            &self.gpu,
            self.bf(dqkv)?,
            self.bf(dout)?,
            self.bf(qkv)?,
            self.bf(out)?,
            self.f32s(lse)?,
            Ptr::of(&self.work),
            b,
            t,
            c,
            nh,
        )
        .map_err(err)
    }

    fn zero(&mut self, t: TensorRef) -> BResult<()> {
        let g = &self.gpu;
        match t.arena {
            Arena::Stats => g.fill_bytes_range(&self.stats, t.offset, t.len, 0),
            Arena::Params => g.fill_bytes_range(&self.params, t.offset, t.len, 0),
            Arena::Grads => g.fill_bytes_range(&self.grads, t.offset, t.len, 0),
            Arena::Acts => g.fill_bytes_range(&self.acts, t.offset, t.len, 0),
            Arena::Scratch => g.fill_bytes_range(&self.scratch, t.offset, t.len, 0),
        }
        .map_err(err)
    }

    fn device_zero1(&mut self) -> Option<&mut dyn crate::dist::zero1::DeviceZero1> {
        Some(self)
    }

    fn grad_norm(&mut self) -> BResult<f32> {
        let g = &self.gpu;
        k::global_norm::grad_norm(
            g,
            Ptr::of(&self.norm),
            Ptr::of(&self.grads),
            Ptr::of(&self.work),
        )
        .map_err(err)?;
        let mut norm = [0.0f32];
        g.copy_to_host(&self.norm, &mut norm).map_err(err)?;
        Ok(norm[0])
    }

    fn adamw(&mut self, hp: &AdamW) -> BResult<()> {
        let args = k::adamw::AdamwArgs {
            lr: hp.lr,
            beta1: hp.beta1,
            beta2: hp.beta2,
            beta1_correction: 1.0 - hp.beta1.powi(hp.t as i32),
            beta2_correction: 1.0 - hp.beta2.powi(hp.t as i32),
            eps: hp.eps,
            // Applied to the decayed ranges only (matrices); the others get 0.
            weight_decay: hp.weight_decay,
            grad_scale: hp.grad_scale,
            seed: adamw_seed(hp.t),
            // Keyed by the global index (below), so a shard rounds as the full update would.
            index_base: self.opt_range().start as u64,
        };
        // Every tensor in one multi-tensor launch (or one reference launch per range when
        // MXGPT_MEMBOUND_KERNELS=reference); the same bits either way.
        // Data parallel: this rank's shard of every tensor only (ZeRO-1). The launch sees the
        // shard's span of the parameters and gradients, so offsets are from its start (the
        // stochastic rounding adds the start back: `index_base`).
        let shard = self.opt_range();
        let ranges: Vec<k::adamw::AdamwRange> = self
            .layout
            .tensors
            .iter()
            .map(|t| {
                (
                    t,
                    t.offset.max(shard.start)..(t.offset + t.len()).min(shard.end),
                )
            })
            .filter(|(_, r)| !r.is_empty())
            .map(|(t, r)| k::adamw::AdamwRange {
                offset: r.start - shard.start,
                len: r.len(),
                decay: t.weight_decay(),
            })
            .collect();
        k::adamw::adamw_update_ranges(
            &self.gpu,
            Ptr::of(&self.params).slice(shard.start, shard.len()),
            Ptr::of(&self.master),
            Ptr::of(&self.grads).slice(shard.start, shard.len()),
            Ptr::of(&self.adam_m),
            Ptr::of(&self.adam_v),
            &ranges,
            &args,
        )
        .map_err(err)
    }

    fn has_device_step(&self) -> bool {
        // The device step updates every parameter: not with a ZeRO-1 shard (data parallel).
        self.dp.is_none() && self.master.len() == self.layout.total
    }

    fn record_loss(&mut self, losses: TensorRef) -> BResult<()> {
        let st = self.step.as_ref().expect("device step");
        k::step::loss_accumulate(&self.gpu, st.state(), self.f32s(losses)?).map_err(err)
    }

    fn device_step(&mut self, up: &StepUpdate) -> BResult<()> {
        let mut st = self.step.take().expect("device step");
        let ranges: Vec<k::adamw::AdamwRange> = self
            .layout
            .tensors
            .iter()
            .map(|t| k::adamw::AdamwRange {
                offset: t.offset,
                len: t.len(),
                decay: t.weight_decay(),
            })
            .collect();
        let finish = |st: &DeviceStep| -> BResult<()> {
            let g = &self.gpu;
            k::global_norm::grad_norm(
                g,
                Ptr::of(&self.norm),
                Ptr::of(&self.grads),
                Ptr::of(&self.work),
            )
            .map_err(err)?;
            k::step::finish(g, st.state(), st.ring(), Ptr::of(&self.norm), st.params())
                .map_err(err)?;
            k::adamw::adamw_update_ranges_dev(
                g,
                Ptr::of(&self.params),
                Ptr::of(&self.master),
                Ptr::of(&self.grads),
                Ptr::of(&self.adam_m),
                Ptr::of(&self.adam_v),
                &ranges,
                0,
                st.params(),
                st.state(),
            )
            .map_err(err)
        };
        // The 4-bit telemetry total travels with the step's numbers (moved out for the call).
        let mut mx = self.mx.take();
        let r = st.step(
            &self.gpu,
            up,
            adamw_seed(up.adamw.t),
            mx.as_mut().map(|m| m.step_total()),
            &finish,
        );
        self.mx = mx;
        self.step = Some(st);
        r
    }

    fn take_step_stats_through(&mut self, t: u64) -> BResult<Vec<StepStats>> {
        self.step.as_mut().expect("device step").take_through(t)
    }

    fn begin_micro_batch(&mut self, step: u32, micro: u32) -> BResult<()> {
        let graphs = self.step.as_ref().expect("device step").graphs;
        match self.mx.as_mut() {
            Some(mx) => {
                mx.device_streams = graphs;
                mx.set_micro_batch(&self.gpu, step, micro)
            }
            None => Ok(()),
        }
    }

    fn graph_begin(&mut self, key: u64) -> BResult<bool> {
        let why_not = self.graph_obstacle();
        let st = self.step.as_mut().expect("device step");
        let run = st.graph_begin(&self.gpu, key, why_not)?;
        if let Some(mx) = self.mx.as_mut().filter(|_| st.graphs) {
            mx.graph_micro_begin(run);
        }
        if let Some(t) = self.fp8_telemetry.as_mut().filter(|_| st.graphs) {
            t.graph_micro_begin(run);
        }
        Ok(run)
    }

    fn graph_end(&mut self, ok: bool) -> BResult<()> {
        let st = self.step.as_mut().expect("device step");
        if let Some(mx) = self.mx.as_mut().filter(|_| st.graphs) {
            mx.graph_micro_end();
        }
        if let Some(t) = self.fp8_telemetry.as_mut().filter(|_| st.graphs) {
            t.graph_micro_end();
        }
        st.graph_end(&self.gpu, ok)
    }
}

impl crate::dist::zero1::DeviceZero1 for CudaBackend {
    fn reduce_gradients(
        &mut self,
        dist: &dyn crate::dist::Transport,
        shards: &crate::dist::Shards,
    ) -> Result<f32, String> {
        let dp = self.dp.as_ref().ok_or(NOT_DATA_PARALLEL)?;
        dp.reduce_gradients(&self.gpu, dist, shards, &self.grads, &self.norm, &self.work)
    }
    fn gather_params(
        &mut self,
        dist: &dyn crate::dist::Transport,
        shards: &crate::dist::Shards,
    ) -> Result<(), String> {
        let dp = self.dp.as_ref().ok_or(NOT_DATA_PARALLEL)?;
        dp.gather_params(&self.gpu, dist, shards, &self.params)
    }
    fn read_shard(&self) -> Result<crate::dist::zero1::ShardState, String> {
        let (g, o) = (&self.gpu, self.opt_range());
        let e = |e: CudaError| e.to_string();
        let mut params = vec![bf16::ZERO; o.len()];
        g.copy_to_host_at(&self.params, o.start, &mut params)
            .map_err(e)?;
        Ok(crate::dist::zero1::ShardState {
            offset: o.start,
            master: g.download(&self.master).map_err(e)?,
            m: g.download(&self.adam_m).map_err(e)?,
            v: g.download(&self.adam_v).map_err(e)?,
            params: params.iter().map(|x| x.to_f32()).collect(),
        })
    }
    fn write_shard(&mut self, st: &crate::dist::zero1::ShardState) -> Result<(), String> {
        let (g, o) = (&self.gpu, self.opt_range());
        let fits = |x: &[f32]| x.len() == o.len();
        if st.offset != o.start
            || !(fits(&st.master) && fits(&st.m) && fits(&st.v))
            || !(st.params.is_empty() || fits(&st.params))
        {
            return Err(format!(
                "optimizer shard at {} with {}/{}/{}/{} master/m/v/parameter values for this rank's shard {o:?}",
                st.offset,
                st.master.len(),
                st.m.len(),
                st.v.len(),
                st.params.len()
            ));
        }
        let e = |e: CudaError| e.to_string();
        g.copy_to_device(&st.master, &self.master).map_err(e)?;
        g.copy_to_device(&st.m, &self.adam_m).map_err(e)?;
        g.copy_to_device(&st.v, &self.adam_v).map_err(e)?;
        let params = if st.params.is_empty() {
            &st.master
        } else {
            &st.params
        };
        g.copy_to_device_at(&to_bf16(params), &self.params, o.start)
            .map_err(e)
    }
}

const NOT_DATA_PARALLEL: &str =
    "the CUDA backend was not set up for data parallel (CudaBackend::set_data_parallel)";
