//! The op set every backend implements, at the granularity a GPU wants: fused residual +
//! layernorm, matmul with bias and optional GELU epilogue, flash-style attention, fused
//! classifier, AdamW on FP32 master weights, global gradient norm. The model's forward and
//! backward are written once in terms of these (model.rs).
//!
//! A backend owns four arenas (parameters, gradients, activations, activation-gradient
//! scratch) laid out by `layout.rs`, plus the AdamW moments; ops name their operands with
//! `TensorRef`s into those arenas. Integer arguments are shapes.

use crate::layout::TensorRef;
use crate::mx::fp8::{ForwardConfig, Fp8State};
use crate::mx::{GemmId, LinearKind, MxConfig, MxTelemetry, SiteTelemetry};
use crate::precision::BackwardMode;

/// Which block linear layer a forward GEMM computes, and whether the pass trains: delayed FP8
/// scaling records amaxes in training passes only, so evaluation and sampling leave a run's
/// scales as they were.
#[derive(Clone, Copy, Debug)]
pub struct LinearForward {
    pub layer: usize,
    pub linear: LinearKind,
    pub training: bool,
}

/// How one linear layer's backward GEMMs are computed, and the ids that key their randomness.
#[derive(Clone, Copy, Debug)]
pub struct LinearBackward {
    pub mode: BackwardMode,
    pub dgrad: GemmId,
    pub wgrad: GemmId,
}

/// Everything a backend reports about itself in logs and benchmark records.
#[derive(Clone, Debug)]
pub struct BackendInfo {
    pub name: String,
    pub device: String,
    pub threads: usize,
}

#[derive(Debug)]
pub struct BackendError(pub String);

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for BackendError {}

pub type BResult<T> = Result<T, BackendError>;

/// The training state of a backend that keeps it in host memory (the CPU), borrowed in place:
/// data-parallel collectives and checkpoint I/O work on it without copies.
pub struct HostState<'a> {
    /// The parameters, which are the FP32 master weights.
    pub params: &'a mut [f32],
    pub grads: &'a mut [f32],
    /// AdamW moments of the parameters `moments_at..moments_at + m.len()`: all of them, or this
    /// rank's ZeRO-1 shard.
    pub m: &'a mut [f32],
    pub v: &'a mut [f32],
    pub moments_at: usize,
}

/// One optimizer step for a backend that finishes it on the device (`Backend::device_step`).
#[derive(Clone, Copy, Debug)]
pub struct StepUpdate {
    /// The AdamW settings of the step; `grad_scale` is ignored: the backend computes it from the
    /// norm where the norm is, as the trainer does (`grad_clip / norm` when `grad_clip > 0` and
    /// `norm > grad_clip`, else 1).
    pub adamw: crate::cpu::ops::AdamW,
    /// 0 = no clipping.
    pub grad_clip: f32,
    /// The micro batches whose `record_loss` calls the step's loss averages.
    pub micro_batches: usize,
}

/// A finished step's loss (mean over its micro batches) and gradient norm, as the trainer logs
/// them; `t` is the step's AdamW `t` (1-based). `mx`: in a 4-bit backward mode, the step's
/// quantization telemetry (what `take_mx_telemetry` would have returned right after the step).
#[derive(Clone, Debug, PartialEq)]
pub struct StepStats {
    pub t: u64,
    pub loss: f32,
    pub norm: f32,
    pub mx: Option<MxTelemetry>,
}

fn no_device_step<T>(be: &(impl Backend + ?Sized), what: &str) -> BResult<T> {
    Err(BackendError(format!(
        "{what}: the {} backend has no device-side step (use grad_norm and adamw)",
        be.info().name
    )))
}

#[allow(clippy::too_many_arguments)]
pub trait Backend {
    fn info(&self) -> BackendInfo;
    /// Waits until all queued work is done (a GPU backend runs asynchronously); for timing.
    fn synchronize(&self) -> BResult<()> {
        Ok(())
    }

    // --- state transfer (host <-> backend), for init, checkpoints and tests
    fn write(&mut self, dst: TensorRef, values: &[f32]) -> BResult<()>;
    fn read(&self, src: TensorRef) -> BResult<Vec<f32>>;
    /// FP32 master weights, first and second AdamW moments: the optimizer state.
    fn read_optimizer(&self) -> BResult<(Vec<f32>, Vec<f32>, Vec<f32>)>;
    fn write_optimizer(&mut self, master: &[f32], m: &[f32], v: &[f32]) -> BResult<()>;
    /// The state in place where it lives in host memory; None (the default) where it lives on a
    /// device: checkpoints then go through `read_optimizer`/`write_optimizer`, and data-parallel
    /// training goes through `device_zero1`.
    fn host_state(&mut self) -> Option<HostState<'_>> {
        None
    }
    /// ZeRO-1's collectives on state that lives on a device (None: not supported, or the state
    /// is in host memory).
    fn device_zero1(&mut self) -> Option<&mut dyn crate::dist::zero1::DeviceZero1> {
        None
    }

    fn set_mx_config(&mut self, cfg: MxConfig) -> BResult<()>;
    /// The forward precision of the blocks' linear layers (`linear_forward`). The defaults
    /// here are a backend (or wrapper) without an FP8 forward: it refuses FP8 by name.
    fn set_forward_config(&mut self, cfg: ForwardConfig) -> BResult<()> {
        if cfg.is_fp8() {
            return Err(BackendError(format!(
                "--forward fp8: the {} backend has no FP8 forward yet (the cpu backend has); use --forward bf16",
                self.info().name
            )));
        }
        Ok(())
    }
    /// Delayed FP8 scaling's amax history (None unless the forward is FP8 with delayed
    /// scaling), for checkpoints.
    fn fp8_state(&self) -> BResult<Option<Fp8State>> {
        Ok(None)
    }
    fn set_fp8_state(&mut self, _state: &Fp8State) -> BResult<()> {
        Err(BackendError(format!(
            "FP8 scaling state given to the {} backend, which has no FP8 forward",
            self.info().name
        )))
    }
    /// Quantization telemetry accumulated since the last call (empty in bf16 mode).
    fn take_mx_telemetry(&mut self) -> MxTelemetry;
    /// The same sums per GEMM site since the last call of this method (the FP8 forward's too,
    /// on the CPU), in (layer, linear, GEMM) order; independent of `take_mx_telemetry`. Empty
    /// where a backend keeps only totals.
    fn take_mx_site_telemetry(&mut self) -> Vec<SiteTelemetry> {
        Vec::new()
    }
    /// While on, measure every quantized GEMM's output (4-bit backward, FP8 forward) against the
    /// exact product (`MxTelemetry::noise_sq`); a backend that cannot ignores it.
    fn set_mx_noise_measurement(&mut self, _on: bool) {}

    /// Token ids of the current micro batch ([B*T] each); targets may be absent (inference).
    fn set_tokens(&mut self, inputs: &[u32], targets: Option<&[u32]>) -> BResult<()>;
    fn zero_grads(&mut self) -> BResult<()>;

    // --- forward ops
    /// out[b,t,:] = wte[token] + wpe[t]
    fn encoder_forward(
        &mut self,
        out: TensorRef,
        wte: TensorRef,
        wpe: TensorRef,
        t: usize,
        c: usize,
    ) -> BResult<()>;
    fn layernorm_forward(
        &mut self,
        out: TensorRef,
        mean: TensorRef,
        rstd: TensorRef,
        inp: TensorRef,
        w: TensorRef,
        b: TensorRef,
        c: usize,
    ) -> BResult<()>;
    /// res_out = res_in + delta; ln_out = layernorm(res_out)
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
    ) -> BResult<()>;
    /// out = inp · W^T + bias; with `gelu_out`, also gelu_out = gelu(out).
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
    ) -> BResult<()>;
    /// A block's linear layer: as `matmul_forward`, in the precision of `set_forward_config`
    /// (FP8 with per-tensor scales, docs/numerics.md section 9, or high precision).
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
        let _ = site; // high precision: every site alike
        self.matmul_forward(out, inp, w, bias, gelu_out, rows, ic, oc)
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
    ) -> BResult<()>;
    /// Per-row loss of the current targets; with `dloss`, overwrites logits with
    /// dloss * (softmax - onehot) (the fused classifier).
    fn classifier(
        &mut self,
        logits: TensorRef,
        losses: TensorRef,
        vp: usize,
        v: usize,
        dloss: Option<f32>,
    ) -> BResult<()>;

    // --- backward ops (parameter gradients accumulate; activation gradients as documented)
    fn encoder_backward(
        &mut self,
        dwte: TensorRef,
        dwpe: TensorRef,
        dout: TensorRef,
        t: usize,
        c: usize,
    ) -> BResult<()>;
    /// dinp += ..., dw += ..., db += ...
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
    ) -> BResult<()>;
    /// dinp = dout · W (overwritten), dW += dout^T · inp, dbias += colsum(dout); the two GEMMs
    /// in the precision `prec` (None: high precision, used by the LM head).
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
    ) -> BResult<()>;
    /// d *= gelu'(pre), in place.
    fn gelu_backward(&mut self, d: TensorRef, pre: TensorRef) -> BResult<()>;
    /// dqkv (overwritten) from dout.
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
    ) -> BResult<()>;
    fn zero(&mut self, t: TensorRef) -> BResult<()>;
    /// Layer `layer`'s backward is done: its weight gradients are complete for this micro
    /// batch (the CUDA backend lets their data-parallel exchange start here).
    fn layer_backward_done(&mut self, _layer: usize) -> BResult<()> {
        Ok(())
    }

    // --- optimizer
    /// L2 norm of the whole gradient buffer.
    fn grad_norm(&mut self) -> BResult<f32>;
    /// One AdamW step over every parameter tensor (weight decay where the layout says so).
    fn adamw(&mut self, hp: &crate::cpu::ops::AdamW) -> BResult<()>;

    // --- the step kept on the device (a GPU backend): no host round trip inside a step
    /// Whether `record_loss`, `device_step` and `take_step_stats` work here (default: no; the
    /// caller then reads the loss and the norm itself, and calls `adamw`).
    fn has_device_step(&self) -> bool {
        false
    }
    /// Adds the mean of `losses` (as `Gpt::mean_loss` computes it) to the step's loss, where
    /// the losses are, without reading them back.
    fn record_loss(&mut self, _losses: TensorRef) -> BResult<()> {
        no_device_step(self, "record_loss")
    }
    /// Ends the step where the gradients are: global norm, clip factor, and the AdamW update
    /// (skipped, as the trainer skips it, when the loss or norm is not finite; and every later
    /// one too); the step's (loss, norm) kept for `take_step_stats`.
    fn device_step(&mut self, _up: &StepUpdate) -> BResult<()> {
        no_device_step(self, "device_step")
    }
    /// The numbers of the steps queued and not yet taken, in order; waits for all of them.
    fn take_step_stats(&mut self) -> BResult<Vec<StepStats>> {
        self.take_step_stats_through(u64::MAX)
    }
    /// The numbers of the steps not yet taken whose AdamW `t` is at most `t`, in order; waits
    /// for those steps only, not for work queued after them (the trainer reads step N while
    /// step N + 1 runs). A step's 4-bit telemetry is in its `StepStats::mx`, not in
    /// `take_mx_telemetry`.
    fn take_step_stats_through(&mut self, _t: u64) -> BResult<Vec<StepStats>> {
        no_device_step(self, "take_step_stats")
    }
    /// Before a micro batch's forward and backward on the device: its step and micro-batch
    /// indices, for a backend that keeps what depends on them (the 4-bit backward's random
    /// streams) in device memory, where a replayed CUDA graph reads them. Default: nothing.
    fn begin_micro_batch(&mut self, _step: u32, _micro: u32) -> BResult<()> {
        Ok(())
    }
    /// CUDA graphs: before a micro batch's forward and backward (`Gpt::forward_backward_on_device`).
    /// True: run the ops (a backend with graphs on records them, when it has no graph for `key`
    /// yet); false: skip them, `graph_end` replays the recording. The default runs them.
    fn graph_begin(&mut self, _key: u64) -> BResult<bool> {
        Ok(true)
    }
    /// After the micro batch: ends a recording (kept when `ok`) and launches the graph.
    fn graph_end(&mut self, _ok: bool) -> BResult<()> {
        Ok(())
    }
}
