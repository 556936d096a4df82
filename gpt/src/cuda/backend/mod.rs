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
//! the device (delayed scaling's amax rings are device buffers, and so are the call counts
//! that pick a ring's slot), E4M3 quantization, then the FP8 GEMM (E4M3
//! mma.sync on compute capability 8.9+, the BF16 fallback elsewhere or when asked).
//!
//! The training step can stay on the device (`device_step`, step.rs): the encoder index is built
//! there, the step's scalars come from a device parameter block, the loss and norm go to a
//! device ring read once; with `MXGPT_CUDA_GRAPH=1` micro batches and the finish replay as CUDA
//! graphs.
//!
//! Files: this one holds the struct, its allocation and the tensor spans; `ops.rs` the
//! `Backend` trait (each op's launch, the rest forwarded); `transfer.rs` host <-> device copies
//! and the tokens; `fp8.rs` the FP8 forward and its scaling; `quantized.rs` the 4-bit backward;
//! `optimizer.rs` gradient norm, AdamW and ZeRO-1; `device_step.rs` the device step and graphs.
//!
//! NOT VERIFIED ON A GPU unless perf/ holds a GPU run of this commit (see the module doc).

mod device_step;
mod fp8;
mod ops;
mod optimizer;
mod quantized;
mod transfer;

use super::fp8_telemetry::Fp8Telemetry;
use super::kernels::{self as k, Ptr};
use super::mx::{MxBackward, MxGemmChoice, MxGemmPath};
use super::step::DeviceStep;
use crate::backend::{BResult, Backend, BackendError, BackendInfo};
use crate::config::ModelConfig;
use crate::layout::{ActLayout, Arena, ParamLayout, TensorRef};
use crate::mx::fp8::ForwardConfig;
use fp8::Fp8Forward;
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
    let shard = crate::dist::Shards::even(n, ranks.max(1)).max_len();
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
