//! GPT-2: the forward and backward passes, written once over the `Backend` trait.
//!
//! Pre-LayerNorm blocks (x + attn(ln1(x)), then x + mlp(ln2(x))), learned token and position
//! embeddings, GELU (tanh) MLP of width 4C, final LayerNorm, LM head tied to the token
//! embedding, biases everywhere. The residual add is fused into the following layernorm, as the
//! GPU kernels do it.

use crate::backend::{BResult, Backend, LinearBackward, LinearForward};
use crate::config::ModelConfig;
use crate::layout::{ActLayout, ParamKind, ParamLayout};
use crate::mx::{GemmId, GemmKind, LinearKind};
use crate::precision::BackwardMode;
use crate::rng::SplitMix64;

/// Which backward precision each block's linear layers use.
#[derive(Clone, Debug)]
pub struct PrecisionPlan {
    pub mode: BackwardMode,
    /// Per layer: true = this block's linear layers use `mode`, false = kept in high precision
    /// (`--bf16-blocks first:N,last:M`).
    pub quantized_layers: Vec<bool>,
}

impl PrecisionPlan {
    pub fn uniform(mode: BackwardMode, layers: usize) -> Self {
        PrecisionPlan {
            mode,
            quantized_layers: vec![true; layers],
        }
    }

    /// `first:N,last:M` (either part optional) keeps the first N and last M blocks in BF16.
    pub fn with_bf16_blocks(mode: BackwardMode, layers: usize, spec: &str) -> Result<Self, String> {
        let mut plan = Self::uniform(mode, layers);
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (which, n) = part.split_once(':').ok_or_else(|| {
                format!("--bf16-blocks '{spec}': expected first:N,last:M, found '{part}'")
            })?;
            let n: usize = n
                .parse()
                .map_err(|_| format!("--bf16-blocks '{spec}': '{n}' is not a count"))?;
            if n > layers {
                return Err(format!(
                    "--bf16-blocks '{spec}': {n} blocks asked, the model has {layers}"
                ));
            }
            match which {
                "first" => plan.quantized_layers[..n].fill(false),
                "last" => plan.quantized_layers[layers - n..].fill(false),
                _ => {
                    return Err(format!(
                        "--bf16-blocks '{spec}': expected 'first' or 'last', found '{which}'"
                    ))
                }
            }
        }
        Ok(plan)
    }
}

/// The model's shapes and memory map for one micro batch size.
#[derive(Clone, Debug)]
pub struct Gpt {
    pub cfg: ModelConfig,
    pub batch: usize,
    pub seq: usize,
    pub params: ParamLayout,
    pub acts: ActLayout,
}

impl Gpt {
    pub fn new(cfg: ModelConfig, batch: usize, seq: usize) -> Result<Self, String> {
        if batch == 0 {
            return Err("--batch must be at least 1".into());
        }
        if seq == 0 || seq > cfg.max_seq {
            return Err(format!(
                "--seq {seq} is outside 1..={} (the model's maximum sequence length)",
                cfg.max_seq
            ));
        }
        Ok(Gpt {
            params: ParamLayout::new(&cfg),
            acts: ActLayout::new(&cfg, batch, seq),
            cfg,
            batch,
            seq,
        })
    }

    pub fn tokens_per_batch(&self) -> usize {
        self.batch * self.seq
    }

    /// GPT-2 initialization: N(0, 0.02) for matrices and embeddings, the residual projections
    /// (attprojw, fcprojw) scaled by 1/sqrt(2L), biases 0, layernorm gains 1. The padded vocab
    /// rows are 0 (no token ever reads them). Deterministic for `seed`.
    pub fn init_params(&self, seed: u64) -> Vec<f32> {
        let mut p = vec![0.0f32; self.params.total];
        let resid_scale = 1.0 / (2.0 * self.cfg.layers as f64).sqrt();
        for (i, t) in self.params.tensors.iter().enumerate() {
            let dst = &mut p[t.offset..t.offset + t.len()];
            // One stream per tensor, so adding a tensor never shifts the others' values.
            let mut rng = SplitMix64::new(
                seed ^ (0x5EED_0000 + i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            match t.kind {
                ParamKind::Ln1W | ParamKind::Ln2W | ParamKind::LnfW => dst.fill(1.0),
                _ if !t.is_matrix => {}
                kind => {
                    let std = match kind {
                        ParamKind::AttProjW | ParamKind::FcProjW => 0.02 * resid_scale,
                        _ => 0.02,
                    };
                    let real = if kind == ParamKind::Wte {
                        self.cfg.vocab * t.cols
                    } else {
                        dst.len()
                    };
                    for x in dst[..real].iter_mut() {
                        *x = (rng.next_normal() * std) as f32;
                    }
                }
            }
        }
        p
    }

    fn linear_backward_prec(
        &self,
        plan: &PrecisionPlan,
        step: u32,
        micro: u32,
        layer: usize,
        linear: LinearKind,
    ) -> Option<LinearBackward> {
        let mode = if plan.quantized_layers[layer] {
            plan.mode
        } else {
            BackwardMode::Bf16
        };
        let id = |gemm| GemmId {
            step,
            micro_step: micro,
            layer: layer as u32,
            linear,
            gemm,
        };
        Some(LinearBackward {
            mode,
            dgrad: id(GemmKind::Dgrad),
            wgrad: id(GemmKind::Wgrad),
        })
    }

    /// Forward pass up to the logits (left in `acts.logits`), not training: delayed FP8
    /// scaling records nothing.
    pub fn forward<B: Backend + ?Sized>(&self, be: &mut B) -> BResult<()> {
        self.forward_pass(be, false)
    }

    fn forward_pass<B: Backend + ?Sized>(&self, be: &mut B, training: bool) -> BResult<()> {
        let (c, t, b, nh) = (self.cfg.channels, self.seq, self.batch, self.cfg.heads);
        let bt = b * t;
        let (p, a) = (&self.params, &self.acts);
        use ParamKind::*;
        let site = |layer, linear| LinearForward {
            layer,
            linear,
            training,
        };
        be.encoder_forward(a.encoded, p.param(Wte, 0), p.param(Wpe, 0), t, c)?;
        for l in 0..self.cfg.layers {
            let la = &a.layers[l];
            if l == 0 {
                be.layernorm_forward(
                    la.ln1,
                    la.ln1_mean,
                    la.ln1_rstd,
                    a.encoded,
                    p.param(Ln1W, l),
                    p.param(Ln1B, l),
                    c,
                )?;
            } else {
                let prev = &a.layers[l - 1];
                be.residual_layernorm_forward(
                    prev.residual3,
                    la.ln1,
                    la.ln1_mean,
                    la.ln1_rstd,
                    prev.residual2,
                    prev.fcproj,
                    p.param(Ln1W, l),
                    p.param(Ln1B, l),
                    c,
                )?;
            }
            be.linear_forward(
                site(l, LinearKind::Qkv),
                la.qkv,
                la.ln1,
                p.param(QkvW, l),
                Some(p.param(QkvB, l)),
                None,
                bt,
                c,
                3 * c,
            )?;
            be.attention_forward(la.atty, la.att_lse, la.qkv, b, t, c, nh)?;
            be.linear_forward(
                site(l, LinearKind::AttnProj),
                la.attproj,
                la.atty,
                p.param(AttProjW, l),
                Some(p.param(AttProjB, l)),
                None,
                bt,
                c,
                c,
            )?;
            be.residual_layernorm_forward(
                la.residual2,
                la.ln2,
                la.ln2_mean,
                la.ln2_rstd,
                a.residual_in(l),
                la.attproj,
                p.param(Ln2W, l),
                p.param(Ln2B, l),
                c,
            )?;
            be.linear_forward(
                site(l, LinearKind::MlpUp),
                la.fch,
                la.ln2,
                p.param(FcW, l),
                Some(p.param(FcB, l)),
                Some(la.fch_gelu),
                bt,
                c,
                4 * c,
            )?;
            be.linear_forward(
                site(l, LinearKind::MlpDown),
                la.fcproj,
                la.fch_gelu,
                p.param(FcProjW, l),
                Some(p.param(FcProjB, l)),
                None,
                bt,
                4 * c,
                c,
            )?;
        }
        let last = &a.layers[self.cfg.layers - 1];
        be.residual_layernorm_forward(
            last.residual3,
            a.lnf,
            a.lnf_mean,
            a.lnf_rstd,
            last.residual2,
            last.fcproj,
            p.param(LnfW, 0),
            p.param(LnfB, 0),
            c,
        )?;
        be.matmul_forward(
            a.logits,
            a.lnf,
            p.param(Wte, 0),
            None,
            None,
            bt,
            c,
            self.cfg.padded_vocab,
        )
    }

    /// Forward + loss on the targets set in the backend; returns the mean loss (no gradients).
    pub fn eval_loss<B: Backend + ?Sized>(&self, be: &mut B) -> BResult<f32> {
        self.forward(be)?;
        be.classifier(
            self.acts.logits,
            self.acts.losses,
            self.cfg.padded_vocab,
            self.cfg.vocab,
            None,
        )?;
        self.mean_loss(be)
    }

    fn mean_loss<B: Backend + ?Sized>(&self, be: &B) -> BResult<f32> {
        let losses = be.read(self.acts.losses)?;
        Ok((losses.iter().map(|&x| x as f64).sum::<f64>() / losses.len() as f64) as f32)
    }

    /// Forward, loss and backward for one micro batch; parameter gradients accumulate into the
    /// gradient buffer, each scaled by `loss_scale` (1 / (B*T*accumulation steps) for the mean
    /// loss over the whole batch). Returns the micro batch's mean loss.
    pub fn forward_backward<B: Backend + ?Sized>(
        &self,
        be: &mut B,
        plan: &PrecisionPlan,
        step: u32,
        micro: u32,
        loss_scale: f32,
    ) -> BResult<f32> {
        self.forward_backward_with(be, plan, step, micro, loss_scale, false)
            .map(|l| l.expect("the loss is read back"))
    }

    /// `forward_backward` for a backend that keeps the step on the device
    /// (`Backend::has_device_step`): the micro batch's loss is added to the step's on the device
    /// (`record_loss`) instead of being read back, so nothing here waits for the device; the
    /// backend may record the micro batch as a CUDA graph once and replay it after
    /// (`graph_begin`; the graph is keyed by `loss_scale`, the one value it bakes in; the step
    /// and micro-batch indices reach a replay through `begin_micro_batch`, in device memory;
    /// what differs per call, such as delayed FP8 scaling's ring slots, is on the device too).
    pub fn forward_backward_on_device<B: Backend + ?Sized>(
        &self,
        be: &mut B,
        plan: &PrecisionPlan,
        step: u32,
        micro: u32,
        loss_scale: f32,
    ) -> BResult<()> {
        be.begin_micro_batch(step, micro)?;
        let r = if be.graph_begin(loss_scale.to_bits() as u64)? {
            self.forward_backward_with(be, plan, step, micro, loss_scale, true)
                .map(|_| ())
        } else {
            Ok(())
        };
        be.graph_end(r.is_ok())?;
        r
    }

    fn forward_backward_with<B: Backend + ?Sized>(
        &self,
        be: &mut B,
        plan: &PrecisionPlan,
        step: u32,
        micro: u32,
        loss_scale: f32,
        on_device: bool,
    ) -> BResult<Option<f32>> {
        self.forward_pass(be, true)?;
        let (c, t, b, nh) = (self.cfg.channels, self.seq, self.batch, self.cfg.heads);
        let bt = b * t;
        let (p, a) = (&self.params, &self.acts);
        use ParamKind::*;
        be.classifier(
            a.logits,
            a.losses,
            self.cfg.padded_vocab,
            self.cfg.vocab,
            Some(loss_scale),
        )?;
        let loss = if on_device {
            be.record_loss(a.losses)?;
            None
        } else {
            Some(self.mean_loss(be)?)
        };
        // LM head (tied to wte), kept in high precision.
        be.linear_backward(
            a.d_ln,
            p.grad(Wte, 0),
            None,
            a.logits,
            a.lnf,
            p.param(Wte, 0),
            bt,
            c,
            self.cfg.padded_vocab,
            None,
        )?;
        be.zero(a.d_residual)?;
        let last = &a.layers[self.cfg.layers - 1];
        be.layernorm_backward(
            a.d_residual,
            p.grad(LnfW, 0),
            p.grad(LnfB, 0),
            a.d_ln,
            last.residual3,
            p.param(LnfW, 0),
            a.lnf_mean,
            a.lnf_rstd,
            c,
        )?;
        for l in (0..self.cfg.layers).rev() {
            let la = &a.layers[l];
            let prec = |k| self.linear_backward_prec(plan, step, micro, l, k);
            // d_residual holds d(residual3) = d(fcproj) = d(residual2) before ln2's share.
            be.linear_backward(
                a.d_fch,
                p.grad(FcProjW, l),
                Some(p.grad(FcProjB, l)),
                a.d_residual,
                la.fch_gelu,
                p.param(FcProjW, l),
                bt,
                4 * c,
                c,
                prec(LinearKind::MlpDown),
            )?;
            be.gelu_backward(a.d_fch, la.fch)?;
            be.linear_backward(
                a.d_ln,
                p.grad(FcW, l),
                Some(p.grad(FcB, l)),
                a.d_fch,
                la.ln2,
                p.param(FcW, l),
                bt,
                c,
                4 * c,
                prec(LinearKind::MlpUp),
            )?;
            be.layernorm_backward(
                a.d_residual,
                p.grad(Ln2W, l),
                p.grad(Ln2B, l),
                a.d_ln,
                la.residual2,
                p.param(Ln2W, l),
                la.ln2_mean,
                la.ln2_rstd,
                c,
            )?;
            // d_residual now holds d(residual2) = d(attproj) = d(layer input) before ln1's share.
            be.linear_backward(
                a.d_atty,
                p.grad(AttProjW, l),
                Some(p.grad(AttProjB, l)),
                a.d_residual,
                la.atty,
                p.param(AttProjW, l),
                bt,
                c,
                c,
                prec(LinearKind::AttnProj),
            )?;
            be.attention_backward(a.d_qkv, a.d_atty, la.qkv, la.atty, la.att_lse, b, t, c, nh)?;
            be.linear_backward(
                a.d_ln,
                p.grad(QkvW, l),
                Some(p.grad(QkvB, l)),
                a.d_qkv,
                la.ln1,
                p.param(QkvW, l),
                bt,
                c,
                3 * c,
                prec(LinearKind::Qkv),
            )?;
            be.layernorm_backward(
                a.d_residual,
                p.grad(Ln1W, l),
                p.grad(Ln1B, l),
                a.d_ln,
                a.residual_in(l),
                p.param(Ln1W, l),
                la.ln1_mean,
                la.ln1_rstd,
                c,
            )?;
            be.layer_backward_done(l)?;
        }
        be.encoder_backward(p.grad(Wte, 0), p.grad(Wpe, 0), a.d_residual, t, c)?;
        Ok(loss)
    }
}
