//! `CpuBackend`: the `Backend` trait over the plain f32 ops of `ops.rs`.
//!
//! Parameters, gradients, activations and scratch are four `Vec<f32>`s laid out by
//! `layout.rs`; the parameters are the FP32 master weights themselves (no BF16 copy on the CPU:
//! the `bf16` backward mode means "no quantization" here).

use super::gemm::MatRef;
use super::ops::{self, AdamW};
use crate::backend::{
    BResult, Backend, BackendError, BackendInfo, HostState, LinearBackward, LinearForward,
};
use crate::config::ModelConfig;
use crate::layout::{ActLayout, Arena, ParamLayout, TensorRef};
use crate::mx::fp8::{self, ForwardConfig, Fp8Operand, Fp8Scaling, Fp8State};
use crate::mx::{self, MxConfig, MxRecorder, MxTelemetry, SiteGemm, SiteTelemetry};
use crate::precision::BackwardMode;

pub struct CpuBackend {
    layout: ParamLayout,
    params: Vec<f32>,
    grads: Vec<f32>,
    acts: Vec<f32>,
    scratch: Vec<f32>,
    stats: Vec<f32>,
    /// AdamW moments of the parameters `moments_at..moments_at + adam_m.len()` (all of them,
    /// or a ZeRO-1 shard); `adamw` updates only those parameters.
    adam_m: Vec<f32>,
    adam_v: Vec<f32>,
    moments_at: usize,
    inputs: Vec<u32>,
    targets: Vec<u32>,
    vocab: usize,
    mx: MxConfig,
    telemetry: MxRecorder,
    layers: usize,
    forward: ForwardConfig,
    /// Delayed FP8 scaling's amax history (None unless in use).
    fp8: Option<Fp8State>,
    /// With `capture_linear_backward`, every linear_backward's operands (the gradient probe).
    captured: Option<Vec<CapturedLinear>>,
}

/// The operands of one linear layer's backward, copied out for analysis (tools/mx probe).
#[derive(Clone, Debug)]
pub struct CapturedLinear {
    pub prec: Option<LinearBackward>,
    /// dY (rows x oc), X (rows x ic), W (oc x ic), row-major.
    pub dout: Vec<f32>,
    pub inp: Vec<f32>,
    pub w: Vec<f32>,
    pub rows: usize,
    pub ic: usize,
    pub oc: usize,
}

/// One linear layer's two backward GEMMs on plain slices, exactly as `linear_backward` runs
/// them: dX = dY · W (overwritten), dW (+)= dY^T · X; each in `prec`'s precision.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward_gemms(
    mx_cfg: MxConfig,
    telemetry: &mut MxRecorder,
    prec: Option<LinearBackward>,
    (dy, x, w): (&[f32], &[f32], &[f32]),
    (dx, dw): (&mut [f32], &mut [f32]),
    (rows, ic, oc): (usize, usize, usize),
    accumulate_dw: bool,
) -> BResult<()> {
    // dgrad: dX[rows, IC] = dY[rows, OC] · W[OC, IC]
    let r1 = backward_gemm(
        mx_cfg,
        telemetry,
        prec,
        mx::GemmKind::Dgrad,
        MatRef::row_major(dy, rows, oc),
        MatRef::row_major(w, oc, ic),
        dx,
        ic,
        false,
    );
    // wgrad: dW[OC, IC] (+)= dY^T[OC, rows] · X[rows, IC]
    let r2 = backward_gemm(
        mx_cfg,
        telemetry,
        prec,
        mx::GemmKind::Wgrad,
        MatRef::transposed(dy, oc, rows),
        MatRef::row_major(x, rows, ic),
        dw,
        ic,
        accumulate_dw,
    );
    r1.and(r2)
}

impl CpuBackend {
    /// Allocates everything for `cfg` at micro batch `batch` x `seq`; the sizes are checked so an
    /// impossible request fails with the number of bytes it needed instead of aborting.
    pub fn new(cfg: &ModelConfig, batch: usize, seq: usize) -> BResult<Self> {
        Self::with_moments(cfg, batch, seq, None)
    }

    /// As `new`, with AdamW moments (and updates) for the parameters in `moments` only: this
    /// rank's ZeRO-1 shard (None: all of them).
    pub fn with_moments(
        cfg: &ModelConfig,
        batch: usize,
        seq: usize,
        moments: Option<std::ops::Range<usize>>,
    ) -> BResult<Self> {
        let layout = ParamLayout::new(cfg);
        let acts = ActLayout::new(cfg, batch, seq);
        let n = layout.total;
        let moments = moments.unwrap_or(0..n);
        if moments.end > n {
            return Err(BackendError(format!(
                "optimizer shard {moments:?} outside the {n} parameters"
            )));
        }
        // params, grads, two AdamW moments (the parameters are the master weights on the CPU)
        let floats =
            2 * n + 2 * moments.len() + acts.acts_total + acts.scratch_total + acts.stats_total;
        let need = floats as f64 * 4.0 / (1u64 << 30) as f64;
        if let Some(avail) = mem_available_bytes() {
            let avail = avail as f64 / (1u64 << 30) as f64;
            if need > avail {
                return Err(BackendError(format!(
                    "out of memory: {} at batch {batch} x seq {seq} needs {need:.1} GiB ({:.1} GiB parameters and optimizer state, {:.1} GiB activations), the machine has {avail:.1} GiB available: lower --batch or --seq, or pick a smaller --model",
                    cfg,
                    4.0 * n as f64 * 4.0 / (1u64 << 30) as f64,
                    (acts.acts_total + acts.scratch_total + acts.stats_total) as f64 * 4.0 / (1u64 << 30) as f64
                )));
            }
        }
        let alloc = |len: usize, what: &str| -> BResult<Vec<f32>> {
            let mut v = Vec::new();
            v.try_reserve_exact(len).map_err(|_| {
                BackendError(format!(
                    "out of memory allocating the {what} ({:.2} GiB; the whole model at batch {batch} x seq {seq} needs {:.2} GiB): lower --batch or --seq, or pick a smaller --model",
                    len as f64 * 4.0 / (1u64 << 30) as f64,
                    floats as f64 * 4.0 / (1u64 << 30) as f64
                ))
            })?;
            v.resize(len, 0.0);
            Ok(v)
        };
        Ok(CpuBackend {
            params: alloc(n, "parameters")?,
            grads: alloc(n, "gradients")?,
            adam_m: alloc(moments.len(), "AdamW first moments")?,
            adam_v: alloc(moments.len(), "AdamW second moments")?,
            moments_at: moments.start,
            acts: alloc(acts.acts_total, "activations")?,
            scratch: alloc(acts.scratch_total, "activation gradients")?,
            stats: alloc(acts.stats_total, "per-row statistics")?,
            layout,
            vocab: cfg.vocab,
            inputs: vec![0; batch * seq],
            targets: vec![0; batch * seq],
            mx: MxConfig {
                mode: BackwardMode::Bf16,
                hadamard_block: 64,
                signs: crate::mx::HadamardSigns::Fresh,
                seed: 0,
            },
            telemetry: MxRecorder::default(),
            layers: cfg.layers,
            forward: ForwardConfig::HIGH_PRECISION,
            fp8: None,
            captured: None,
        })
    }

    fn check_unsharded(&self) -> BResult<()> {
        if self.adam_m.len() != self.params.len() {
            return Err(BackendError(format!(
                "the optimizer state is a ZeRO-1 shard (parameters {}..{}): read or write it through host_state",
                self.moments_at,
                self.moments_at + self.adam_m.len()
            )));
        }
        Ok(())
    }

    /// From now on, copy every linear_backward's operands (until `take_captured`).
    pub fn capture_linear_backward(&mut self) {
        self.captured = Some(Vec::new());
    }

    /// The operands captured since `capture_linear_backward`, in call order; capturing stops.
    pub fn take_captured(&mut self) -> Vec<CapturedLinear> {
        self.captured.take().unwrap_or_default()
    }

    fn arena(&self, a: Arena) -> &[f32] {
        match a {
            Arena::Params => &self.params,
            Arena::Grads => &self.grads,
            Arena::Acts => &self.acts,
            Arena::Scratch => &self.scratch,
            Arena::Stats => &self.stats,
        }
    }

    fn arena_ptr(&mut self, a: Arena) -> (*mut f32, usize) {
        let v = match a {
            Arena::Params => &mut self.params,
            Arena::Grads => &mut self.grads,
            Arena::Acts => &mut self.acts,
            Arena::Scratch => &mut self.scratch,
            Arena::Stats => &mut self.stats,
        };
        (v.as_mut_ptr(), v.len())
    }

    /// Borrows `N` output spans mutably and `M` input spans immutably at once. Panics (a bug in
    /// the caller) if an output overlaps any other operand or a span is out of bounds.
    fn views<const N: usize, const M: usize>(
        &mut self,
        outs: [TensorRef; N],
        ins: [TensorRef; M],
    ) -> ([&mut [f32]; N], [&[f32]; M]) {
        for (i, o) in outs.iter().enumerate() {
            for (j, p) in outs.iter().enumerate() {
                assert!(
                    i == j || !o.overlaps(p),
                    "output {o:?} overlaps output {p:?}"
                );
            }
            for p in &ins {
                assert!(!o.overlaps(p), "output {o:?} overlaps input {p:?}");
            }
        }
        let outs = outs.map(|t| {
            let (ptr, len) = self.arena_ptr(t.arena);
            assert!(
                t.offset + t.len <= len,
                "{t:?} is outside its arena of {len} floats"
            );
            // SAFETY: in bounds (checked), and no output overlaps another operand (checked), so
            // the mutable slices alias nothing else handed out here.
            unsafe { std::slice::from_raw_parts_mut(ptr.add(t.offset), t.len) }
        });
        let ins = ins.map(|t| {
            let (ptr, len) = self.arena_ptr(t.arena);
            assert!(
                t.offset + t.len <= len,
                "{t:?} is outside its arena of {len} floats"
            );
            // SAFETY: in bounds; inputs may alias each other but no output (checked above).
            unsafe { std::slice::from_raw_parts(ptr.add(t.offset) as *const f32, t.len) }
        });
        (outs, ins)
    }
}

/// One backward GEMM of a linear layer: through the MXFP4 library when the layer's precision
/// says so, else the f32 GEMM.
#[allow(clippy::too_many_arguments)]
fn backward_gemm(
    mx_cfg: MxConfig,
    telemetry: &mut MxRecorder,
    prec: Option<LinearBackward>,
    which: mx::GemmKind,
    a: MatRef,
    b: MatRef,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) -> BResult<()> {
    match prec {
        Some(p) if p.mode.is_quantized() => {
            let cfg = MxConfig {
                mode: p.mode,
                ..mx_cfg
            };
            let id = if which == mx::GemmKind::Dgrad {
                p.dgrad
            } else {
                p.wgrad
            };
            let named = |e: mx::MxError| {
                BackendError(format!(
                    "{} {which:?} of layer {} {:?}: {e}",
                    p.mode, id.layer, id.linear
                ))
            };
            let mut t = MxTelemetry::default();
            mx::backward_gemm(&cfg, &id, a, b, c, ldc, accumulate, Some(&mut t)).map_err(named)?;
            if telemetry.measure_noise {
                let (noise_sq, exact_sq) = mx::gemm_noise(&cfg, &id, a, b).map_err(named)?;
                t.noise_sq += noise_sq;
                t.exact_sq += exact_sq;
            }
            telemetry.record(&id, &t);
            Ok(())
        }
        _ => {
            super::gemm::sgemm(a, b, c, ldc, accumulate);
            Ok(())
        }
    }
}

impl Backend for CpuBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: "cpu".into(),
            device: cpu_model_name(),
            threads: runtime::cpu::threads(),
        }
    }

    fn write(&mut self, dst: TensorRef, values: &[f32]) -> BResult<()> {
        if values.len() != dst.len {
            return Err(BackendError(format!(
                "write of {} values into a span of {}",
                values.len(),
                dst.len
            )));
        }
        let ([d], []) = self.views([dst], []);
        d.copy_from_slice(values);
        Ok(())
    }

    fn read(&self, src: TensorRef) -> BResult<Vec<f32>> {
        let a = self.arena(src.arena);
        a.get(src.range())
            .map(|s| s.to_vec())
            .ok_or_else(|| BackendError(format!("{src:?} is outside its arena")))
    }

    fn read_optimizer(&self) -> BResult<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        self.check_unsharded()?;
        Ok((
            self.params.clone(),
            self.adam_m.clone(),
            self.adam_v.clone(),
        ))
    }

    fn write_optimizer(&mut self, master: &[f32], m: &[f32], v: &[f32]) -> BResult<()> {
        self.check_unsharded()?;
        let n = self.params.len();
        if master.len() != n || m.len() != n || v.len() != n {
            return Err(BackendError(format!(
                "optimizer state has {}/{}/{} values, the model has {n} parameters",
                master.len(),
                m.len(),
                v.len()
            )));
        }
        self.params.copy_from_slice(master);
        self.adam_m.copy_from_slice(m);
        self.adam_v.copy_from_slice(v);
        Ok(())
    }

    fn host_state(&mut self) -> Option<HostState<'_>> {
        Some(HostState {
            params: &mut self.params,
            grads: &mut self.grads,
            m: &mut self.adam_m,
            v: &mut self.adam_v,
            moments_at: self.moments_at,
        })
    }

    fn set_mx_config(&mut self, cfg: MxConfig) -> BResult<()> {
        self.mx = cfg;
        Ok(())
    }

    fn take_mx_telemetry(&mut self) -> MxTelemetry {
        self.telemetry.take_total()
    }
    fn take_mx_site_telemetry(&mut self) -> Vec<SiteTelemetry> {
        self.telemetry.take_sites()
    }
    fn set_mx_noise_measurement(&mut self, on: bool) {
        self.telemetry.measure_noise = on;
    }

    fn set_forward_config(&mut self, cfg: ForwardConfig) -> BResult<()> {
        self.fp8 = match cfg.scaling {
            Fp8Scaling::Delayed { history } if cfg.is_fp8() => {
                Some(Fp8State::new(self.layers, history))
            }
            _ => None,
        };
        self.forward = cfg;
        Ok(())
    }

    fn fp8_state(&self) -> BResult<Option<Fp8State>> {
        Ok(self.fp8.clone())
    }

    fn set_fp8_state(&mut self, state: &Fp8State) -> BResult<()> {
        match &mut self.fp8 {
            Some(s) if s.history == state.history && s.calls.len() == state.calls.len() => {
                *s = state.clone();
                Ok(())
            }
            _ => Err(BackendError(format!(
                "FP8 scaling state for {} tensors with history {} does not fit this run ({})",
                state.calls.len(),
                state.history,
                match &self.fp8 {
                    Some(s) => format!("{} tensors, history {}", s.calls.len(), s.history),
                    None => "no delayed FP8 scaling".into(),
                }
            ))),
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
        let scaling = self.forward.scaling;
        let mut state = self.fp8.take();
        let ([], [x, wv]) = self.views([], [inp, w]);
        let mut scale = |operand, t: &[f32]| {
            let a = fp8::amax(t);
            match state.as_mut() {
                Some(st) => {
                    let tensor = Fp8State::tensor(site.layer, site.linear, operand);
                    st.scale(scaling, tensor, a, site.training)
                }
                None => fp8::tensor_scale(a),
            }
        };
        let scales = (scale(Fp8Operand::Input, x), scale(Fp8Operand::Weight, wv));
        let b = bias.map(|b| self.read(b)).transpose()?;
        let mut tel = MxTelemetry::default();
        let record = site.training.then_some(fp8::Fp8Record {
            telemetry: &mut tel,
            measure_noise: self.telemetry.measure_noise,
        });
        let ([o], [x, wv]) = self.views([out], [inp, w]);
        fp8::linear_forward_f32(o, x, wv, b.as_deref(), scales, oc, record, |xq, wq, o| {
            super::gemm::sgemm(
                MatRef::row_major(xq, rows, ic),
                MatRef::transposed(wq, ic, oc),
                o,
                oc,
                false,
            )
        });
        self.fp8 = state;
        if site.training {
            let layer = site.layer as u32;
            (self.telemetry).record_site(layer, site.linear, SiteGemm::Forward, &tel);
        }
        if let Some(g) = gelu_out {
            let ([go], [pre]) = self.views([g], [out]);
            ops::gelu_forward(go, pre);
        }
        Ok(())
    }

    fn set_tokens(&mut self, inputs: &[u32], targets: Option<&[u32]>) -> BResult<()> {
        if inputs.len() != self.inputs.len() {
            return Err(BackendError(format!(
                "{} input tokens for a batch of {}",
                inputs.len(),
                self.inputs.len()
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
        self.inputs.copy_from_slice(inputs);
        if let Some(t) = targets {
            self.targets.copy_from_slice(t);
        }
        Ok(())
    }

    fn zero_grads(&mut self) -> BResult<()> {
        self.grads.fill(0.0);
        Ok(())
    }

    fn encoder_forward(
        &mut self,
        out: TensorRef,
        wte: TensorRef,
        wpe: TensorRef,
        t: usize,
        c: usize,
    ) -> BResult<()> {
        let tokens = std::mem::take(&mut self.inputs);
        let ([o], [e, p]) = self.views([out], [wte, wpe]);
        ops::encoder_forward(o, &tokens, e, p, t, c);
        self.inputs = tokens;
        Ok(())
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
        let ([o, m, r], [x, w, b]) = self.views([out, mean, rstd], [inp, w, b]);
        ops::layernorm_forward(o, m, r, x, w, b, c);
        Ok(())
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
        let ([ro, lo, m, r], [ri, d, w, b]) =
            self.views([res_out, ln_out, mean, rstd], [res_in, delta, w, b]);
        ops::residual_layernorm_forward(ro, lo, m, r, ri, d, w, b, c);
        Ok(())
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
        match bias {
            Some(b) => {
                let ([o], [x, w, b]) = self.views([out], [inp, w, b]);
                ops::matmul_forward(o, x, w, Some(b), rows, ic, oc);
            }
            None => {
                let ([o], [x, w]) = self.views([out], [inp, w]);
                ops::matmul_forward(o, x, w, None, rows, ic, oc);
            }
        }
        if let Some(g) = gelu_out {
            let ([go], [pre]) = self.views([g], [out]);
            ops::gelu_forward(go, pre);
        }
        Ok(())
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
        let ([o, l], [q]) = self.views([out, lse], [qkv]);
        ops::attention_forward(o, l, q, b, t, c, nh);
        Ok(())
    }

    fn classifier(
        &mut self,
        logits: TensorRef,
        losses: TensorRef,
        vp: usize,
        v: usize,
        dloss: Option<f32>,
    ) -> BResult<()> {
        let targets = std::mem::take(&mut self.targets);
        let ([lg, ls], []) = self.views([logits, losses], []);
        ops::classifier(lg, ls, &targets, vp, v, dloss);
        self.targets = targets;
        Ok(())
    }

    fn encoder_backward(
        &mut self,
        dwte: TensorRef,
        dwpe: TensorRef,
        dout: TensorRef,
        t: usize,
        c: usize,
    ) -> BResult<()> {
        let tokens = std::mem::take(&mut self.inputs);
        let ([e, p], [d]) = self.views([dwte, dwpe], [dout]);
        ops::encoder_backward(e, p, d, &tokens, t, c);
        self.inputs = tokens;
        Ok(())
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
        let ([di, dw, db], [d, x, w, m, r]) =
            self.views([dinp, dw, db], [dout, inp, w, mean, rstd]);
        ops::layernorm_backward(di, dw, db, d, x, w, m, r, c);
        Ok(())
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
        if let Some(db) = dbias {
            let ([g], [d]) = self.views([db], [dout]);
            ops::bias_backward(g, d, rows, oc);
        }
        let (mx_cfg, mut tel) = (self.mx, std::mem::take(&mut self.telemetry));
        let mut captured = self.captured.take();
        let ([dx, gw], [dy, x, wt]) = self.views([dinp, dw], [dout, inp, w]);
        if let Some(c) = captured.as_mut() {
            c.push(CapturedLinear {
                prec,
                dout: dy.to_vec(),
                inp: x.to_vec(),
                w: wt.to_vec(),
                rows,
                ic,
                oc,
            });
        }
        let r = linear_backward_gemms(
            mx_cfg,
            &mut tel,
            prec,
            (dy, x, wt),
            (dx, gw),
            (rows, ic, oc),
            true,
        );
        self.telemetry = tel;
        self.captured = captured;
        r
    }

    fn gelu_backward(&mut self, d: TensorRef, pre: TensorRef) -> BResult<()> {
        let ([g], [x]) = self.views([d], [pre]);
        ops::gelu_backward_inplace(g, x);
        Ok(())
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
        let ([dq], [d, q, o, l]) = self.views([dqkv], [dout, qkv, out, lse]);
        ops::attention_backward(dq, d, q, o, l, b, t, c, nh);
        Ok(())
    }

    fn zero(&mut self, t: TensorRef) -> BResult<()> {
        let ([z], []) = self.views([t], []);
        z.fill(0.0);
        Ok(())
    }

    fn grad_norm(&mut self) -> BResult<f32> {
        Ok(ops::sum_of_squares(&self.grads).sqrt() as f32)
    }

    fn adamw(&mut self, hp: &AdamW) -> BResult<()> {
        let (lo, hi) = (self.moments_at, self.moments_at + self.adam_m.len());
        for t in &self.layout.tensors {
            // The part of the tensor whose moments this backend holds.
            let r = t.offset.max(lo)..(t.offset + t.len()).min(hi);
            if r.is_empty() {
                continue;
            }
            let mr = r.start - lo..r.end - lo;
            ops::adamw_update(
                &mut self.params[r.clone()],
                &self.grads[r],
                &mut self.adam_m[mr.clone()],
                &mut self.adam_v[mr],
                hp,
                t.weight_decay(),
            );
        }
        Ok(())
    }
}

/// MemAvailable from /proc/meminfo (None where there is no such file).
fn mem_available_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The CPU's model name from /proc/cpuinfo (for logs and benchmark records).
pub fn cpu_model_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}
