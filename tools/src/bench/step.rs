//! The `step` suite: a full training step (set_tokens + zero_grads + forward_backward +
//! grad_norm + adamw) per `--backward` mode, through a `TimedBackend` that delegates to the real
//! backend (CPU or CUDA) and adds up wall time per phase; tokens/s, MFU and, on a GPU with NVML,
//! joules per token.
//!
//! Under `mpirun -np N` (CPU) the step is the trainer's data-parallel one: each rank its own
//! micro batch, then ZeRO-1's collectives (the gradient reduce-scatter with the norm, the
//! parameter all-gather after this rank's shard of AdamW), timed as the `collective` phase. The
//! time a rank waits there for a slower one counts as collective time, as in the trainer.

use super::ceilings::Ceilings;
use super::method::{measure, random_tokens, Method, Stats, ROTATE};
use gpt::backend::{BResult, Backend, BackendInfo, HostState, LinearBackward, LinearForward};
use gpt::config::ModelConfig;
use gpt::cpu::backend::CpuBackend;
use gpt::cpu::ops::AdamW;
use gpt::dist::{zero1, Shards, Transport};
use gpt::layout::{Arena, TensorRef};
use gpt::model::{Gpt, PrecisionPlan};
use gpt::mx::fp8::{ForwardConfig, Fp8State};
use gpt::mx::{MxConfig, MxTelemetry, SiteTelemetry};
use gpt::precision::BackwardMode;
use serde_json::{json, Value};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Instant;

/// The phases a step's wall time is split into (`collective`: data parallel only).
pub const PHASES: [&str; 8] = [
    "forward",
    "attention",
    "backward_gemm",
    "quantization",
    "backward_other",
    "optimizer",
    "collective",
    "other",
];

/// A `Backend` that delegates every call and adds its wall time to a phase. `backward_gemm` is
/// `linear_backward` (dgrad + wgrad + bias grad) less the operand preparation of the MXFP4 modes
/// (gather, RHT, quantization), which the backend reports in its telemetry and which goes to
/// `quantization`. A GPU backend runs asynchronously: with
/// `sync_each_op` every call waits for its work, so the phases are real (at the cost of the
/// launch gaps the waits add; the step time is measured without them).
struct TimedBackend {
    inner: Box<dyn Backend>,
    sync_each_op: bool,
    phase_s: RefCell<[f64; PHASES.len()]>,
}

impl TimedBackend {
    fn timed<T>(&self, phase: usize, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let r = f();
        if self.sync_each_op {
            let _ = self.inner.synchronize();
        }
        self.phase_s.borrow_mut()[phase] += t.elapsed().as_secs_f64();
        r
    }
    fn take(&self) -> [f64; PHASES.len()] {
        std::mem::take(&mut *self.phase_s.borrow_mut())
    }
}

const FWD: usize = 0;
const ATT: usize = 1;
const BWG: usize = 2;
const QNT: usize = 3;
const BWO: usize = 4;
const OPT: usize = 5;
const COL: usize = 6;
const OTH: usize = 7;

#[rustfmt::skip]
impl Backend for TimedBackend {
    fn info(&self) -> BackendInfo { self.inner.info() }
    fn write(&mut self, dst: TensorRef, values: &[f32]) -> BResult<()> { self.inner.write(dst, values) }
    fn read(&self, src: TensorRef) -> BResult<Vec<f32>> { self.timed(OTH, || self.inner.read(src)) }
    fn read_optimizer(&self) -> BResult<(Vec<f32>, Vec<f32>, Vec<f32>)> { self.inner.read_optimizer() }
    fn write_optimizer(&mut self, master: &[f32], m: &[f32], v: &[f32]) -> BResult<()> { self.inner.write_optimizer(master, m, v) }
    fn host_state(&mut self) -> Option<HostState<'_>> { self.inner.host_state() }
    fn set_mx_config(&mut self, cfg: MxConfig) -> BResult<()> { self.inner.set_mx_config(cfg) }
    fn take_mx_telemetry(&mut self) -> MxTelemetry {
        let t = self.inner.take_mx_telemetry();
        let phases = self.phase_s.get_mut();
        phases[BWG] -= t.quantize_seconds;
        phases[QNT] += t.quantize_seconds;
        t
    }
    fn take_mx_site_telemetry(&mut self) -> Vec<SiteTelemetry> { self.inner.take_mx_site_telemetry() }
    fn set_mx_noise_measurement(&mut self, on: bool) { self.inner.set_mx_noise_measurement(on) }
    fn synchronize(&self) -> BResult<()> { self.inner.synchronize() }
    fn set_tokens(&mut self, inputs: &[u32], targets: Option<&[u32]>) -> BResult<()> {
        let t = Instant::now(); let r = self.inner.set_tokens(inputs, targets); self.add(OTH, t); r
    }
    fn zero_grads(&mut self) -> BResult<()> { let t = Instant::now(); let r = self.inner.zero_grads(); self.add(OTH, t); r }
    fn encoder_forward(&mut self, out: TensorRef, wte: TensorRef, wpe: TensorRef, t: usize, c: usize) -> BResult<()> {
        let s = Instant::now(); let r = self.inner.encoder_forward(out, wte, wpe, t, c); self.add(FWD, s); r
    }
    fn layernorm_forward(&mut self, out: TensorRef, mean: TensorRef, rstd: TensorRef, inp: TensorRef, w: TensorRef, b: TensorRef, c: usize) -> BResult<()> {
        let s = Instant::now(); let r = self.inner.layernorm_forward(out, mean, rstd, inp, w, b, c); self.add(FWD, s); r
    }
    fn residual_layernorm_forward(&mut self, res_out: TensorRef, ln_out: TensorRef, mean: TensorRef, rstd: TensorRef, res_in: TensorRef, delta: TensorRef, w: TensorRef, b: TensorRef, c: usize) -> BResult<()> {
        let s = Instant::now(); let r = self.inner.residual_layernorm_forward(res_out, ln_out, mean, rstd, res_in, delta, w, b, c); self.add(FWD, s); r
    }
    fn set_forward_config(&mut self, cfg: ForwardConfig) -> BResult<()> { self.inner.set_forward_config(cfg) }
    fn fp8_state(&self) -> BResult<Option<Fp8State>> { self.inner.fp8_state() }
    fn set_fp8_state(&mut self, state: &Fp8State) -> BResult<()> { self.inner.set_fp8_state(state) }
    fn linear_forward(&mut self, site: LinearForward, out: TensorRef, inp: TensorRef, w: TensorRef, bias: Option<TensorRef>, gelu_out: Option<TensorRef>, rows: usize, ic: usize, oc: usize) -> BResult<()> {
        let s = Instant::now(); let r = self.inner.linear_forward(site, out, inp, w, bias, gelu_out, rows, ic, oc); self.add(FWD, s); r
    }
    fn matmul_forward(&mut self, out: TensorRef, inp: TensorRef, w: TensorRef, bias: Option<TensorRef>, gelu_out: Option<TensorRef>, rows: usize, ic: usize, oc: usize) -> BResult<()> {
        let s = Instant::now(); let r = self.inner.matmul_forward(out, inp, w, bias, gelu_out, rows, ic, oc); self.add(FWD, s); r
    }
    fn attention_forward(&mut self, out: TensorRef, lse: TensorRef, qkv: TensorRef, b: usize, t: usize, c: usize, nh: usize) -> BResult<()> {
        let s = Instant::now(); let r = self.inner.attention_forward(out, lse, qkv, b, t, c, nh); self.add(ATT, s); r
    }
    fn classifier(&mut self, logits: TensorRef, losses: TensorRef, vp: usize, v: usize, dloss: Option<f32>) -> BResult<()> {
        let s = Instant::now(); let r = self.inner.classifier(logits, losses, vp, v, dloss); self.add(FWD, s); r
    }
    fn encoder_backward(&mut self, dwte: TensorRef, dwpe: TensorRef, dout: TensorRef, t: usize, c: usize) -> BResult<()> {
        let s = Instant::now(); let r = self.inner.encoder_backward(dwte, dwpe, dout, t, c); self.add(BWO, s); r
    }
    fn layernorm_backward(&mut self, dinp: TensorRef, dw: TensorRef, db: TensorRef, dout: TensorRef, inp: TensorRef, w: TensorRef, mean: TensorRef, rstd: TensorRef, c: usize) -> BResult<()> {
        let s = Instant::now(); let r = self.inner.layernorm_backward(dinp, dw, db, dout, inp, w, mean, rstd, c); self.add(BWO, s); r
    }
    fn linear_backward(&mut self, dinp: TensorRef, dw: TensorRef, dbias: Option<TensorRef>, dout: TensorRef, inp: TensorRef, w: TensorRef, rows: usize, ic: usize, oc: usize, prec: Option<LinearBackward>) -> BResult<()> {
        let s = Instant::now(); let r = self.inner.linear_backward(dinp, dw, dbias, dout, inp, w, rows, ic, oc, prec); self.add(BWG, s); r
    }
    fn gelu_backward(&mut self, d: TensorRef, pre: TensorRef) -> BResult<()> {
        let s = Instant::now(); let r = self.inner.gelu_backward(d, pre); self.add(BWO, s); r
    }
    fn attention_backward(&mut self, dqkv: TensorRef, dout: TensorRef, qkv: TensorRef, out: TensorRef, lse: TensorRef, b: usize, t: usize, c: usize, nh: usize) -> BResult<()> {
        let s = Instant::now(); let r = self.inner.attention_backward(dqkv, dout, qkv, out, lse, b, t, c, nh); self.add(ATT, s); r
    }
    fn zero(&mut self, t: TensorRef) -> BResult<()> { let s = Instant::now(); let r = self.inner.zero(t); self.add(BWO, s); r }
    fn layer_backward_done(&mut self, layer: usize) -> BResult<()> { self.inner.layer_backward_done(layer) }
    fn grad_norm(&mut self) -> BResult<f32> { let s = Instant::now(); let r = self.inner.grad_norm(); self.add(OPT, s); r }
    fn adamw(&mut self, hp: &AdamW) -> BResult<()> { let s = Instant::now(); let r = self.inner.adamw(hp); self.add(OPT, s); r }
}

impl TimedBackend {
    fn add(&mut self, phase: usize, since: Instant) {
        if self.sync_each_op {
            let _ = self.inner.synchronize();
        }
        self.phase_s.get_mut()[phase] += since.elapsed().as_secs_f64();
    }
}

/// Where the step suite runs, the GPU's energy counter when there is one, and the ranks.
pub struct BenchDevice<'a> {
    pub gpu: bool,
    /// `--mx-gemm` for the MXFP4 modes on the GPU.
    pub mx_gemm: gpt::cuda::MxGemmChoice,
    pub counters: Option<runtime::counters::Counters>,
    /// The data-parallel transport (`Local` in one process).
    pub dist: &'a dyn Transport,
}

impl BenchDevice<'_> {
    fn backend(&self, gpt: &Gpt) -> Result<Box<dyn Backend>, String> {
        let shard = (self.dist.size() > 1)
            .then(|| Shards::even(gpt.params.total, self.dist.size()).range(self.dist.rank()));
        if self.gpu && self.dist.size() > 1 {
            let be = gpt::cuda::dist::rank_backend(
                &gpt.cfg,
                gpt.batch,
                gpt.seq,
                self.dist,
                self.mx_gemm,
            )?;
            Ok(Box::new(be))
        } else if self.gpu {
            gpu_backend(gpt, self.mx_gemm)
        } else {
            Ok(Box::new(
                CpuBackend::with_moments(&gpt.cfg, gpt.batch, gpt.seq, shard).map_err(|e| e.0)?,
            ))
        }
    }

    /// The GPU's energy counter in millijoules (None on the CPU or without NVML).
    fn energy_mj(&self) -> Option<u64> {
        self.counters.as_ref().and_then(|c| c.sample().energy_mj)
    }
}

fn gpu_backend(gpt: &Gpt, mx_gemm: gpt::cuda::MxGemmChoice) -> Result<Box<dyn Backend>, String> {
    let mut be = gpt::cuda::CudaBackend::new(0, &gpt.cfg, gpt.batch, gpt.seq).map_err(|e| e.0)?;
    be.set_mx_gemm(mx_gemm).map_err(|e| e.0)?;
    Ok(Box::new(be))
}

pub fn gpu_name() -> Result<String, String> {
    Ok(runtime::cuda::Gpu::new(0)
        .map_err(|e| format!("--device cuda: {e}"))?
        .props()
        .name
        .clone())
}

/// One training step per repetition; a mode whose backward fails (the MXFP4 GEMM not built in
/// yet, say) is recorded with its error instead of numbers.
pub fn step_entry(
    gpt: &Gpt,
    mode: BackwardMode,
    m: &Method,
    ceil: &Ceilings,
    dev: &BenchDevice,
) -> Value {
    let name = format!("step/{}", mode.name());
    let shape = format!(
        "model={} B={} T={}",
        model_label(&gpt.cfg),
        gpt.batch,
        gpt.seq
    );
    let ranks = dev.dist.size();
    let (name, shape) = if ranks > 1 {
        (
            format!("{name}/{ranks}ranks"),
            format!("{shape} ranks={ranks}"),
        )
    } else {
        (name, shape)
    };
    eprintln!("  {name}: {shape}");
    match run_steps(gpt, mode, m, dev) {
        Ok((st, phases, joules_per_step, per_rank)) => {
            // A step is every rank's micro batch; MFU is per rank, against one rank's peak.
            let tokens = (gpt.tokens_per_batch() * ranks) as f64;
            let tokens_per_s = tokens / (st.median * 1e-3);
            let fpt = gpt.cfg.flops_per_token(gpt.seq);
            // A GPU's peak comes from the device table; the CPU's is the bench's own sgemm
            // ceiling. MXGPT_PEAK_TFLOPS overrides both.
            let peak_name = if dev.gpu {
                gpu_name().unwrap_or_default()
            } else {
                String::new()
            };
            let (peak, peak_source) = match runtime::counters::peak_tflops(&peak_name) {
                Ok(Some(p)) if std::env::var_os("MXGPT_PEAK_TFLOPS").is_some() => {
                    (p, "MXGPT_PEAK_TFLOPS")
                }
                Ok(Some(p)) => (p, "device table"),
                _ if dev.gpu => (f64::NAN, "unknown"),
                _ => (ceil.sgemm_gflops / 1e3, "sgemm ceiling"),
            };
            let joules_per_token = joules_per_step.map(|j| j / tokens);
            let mfu = runtime::counters::mfu(fpt, tokens_per_s / ranks as f64, peak);
            eprintln!(
                "  {name:<36} {:>10.3} ms/step, {tokens_per_s:.2} tok/s, MFU {:.1}%",
                st.median,
                100.0 * mfu
            );
            let phase_json: BTreeMap<&str, f64> =
                PHASES.iter().zip(phases).map(|(p, s)| (*p, s)).collect();
            let mut e = json!({"suite": "step", "name": name, "shape": shape, "mode": mode.name(), "stats": st.json(),
                   "tokens_per_step": tokens, "tokens_per_s": tokens_per_s, "flops_per_token": fpt,
                   "peak_tflops": if peak.is_finite() { json!(peak) } else { Value::Null },
                   "peak_source": peak_source,
                   "mfu": if mfu.is_finite() { json!(mfu) } else { Value::Null },
                   "joules_per_token": joules_per_token, "phase_ms": phase_json});
            if ranks > 1 {
                let col = phases[COL];
                eprintln!(
                    "  {:<36} {col:.3} ms/step in collectives; tok/s per rank {per_rank:.2?}",
                    ""
                );
                e["ranks"] = json!(ranks);
                e["tokens_per_s_per_rank"] = json!(per_rank);
            }
            if peak_source == "sgemm ceiling" {
                // MFU is then a percentage of a measured ceiling: flag it when that did not settle
                e["ceiling_stable"] = json!(ceil.sgemm.stable());
            }
            e
        }
        Err(e) => {
            eprintln!("  {name}: {e}");
            json!({"suite": "step", "name": name, "shape": shape, "mode": mode.name(), "error": e})
        }
    }
}

pub fn model_label(cfg: &ModelConfig) -> String {
    gpt::config::MODEL_NAMES
        .iter()
        .find(|(_, l, c, h, t)| {
            (*l, *c, *h, *t) == (cfg.layers, cfg.channels, cfg.heads, cfg.max_seq)
        })
        .map(|m| m.0.to_string())
        .unwrap_or_else(|| format!("L{}C{}", cfg.layers, cfg.channels))
}

/// What `run_steps` measures.
type StepRun = (Stats, [f64; PHASES.len()], Option<f64>, Vec<f64>);

/// Median step stats (this rank's), the median per-phase milliseconds, on a GPU with NVML the
/// joules per step over the measured steps, and every rank's tokens/s (its own micro batch over
/// its median step time).
fn run_steps(
    gpt: &Gpt,
    mode: BackwardMode,
    m: &Method,
    dev: &BenchDevice,
) -> Result<StepRun, String> {
    let dist = dev.dist;
    let shards = Shards::even(gpt.params.total, dist.size());
    let mut be = TimedBackend {
        inner: dev.backend(gpt)?,
        sync_each_op: false,
        phase_s: RefCell::new([0.0; PHASES.len()]),
    };
    be.write(
        TensorRef {
            arena: Arena::Params,
            offset: 0,
            len: gpt.params.total,
        },
        &gpt.init_params(1),
    )
    .map_err(|e| e.0)?;
    be.set_mx_config(MxConfig {
        mode,
        hadamard_block: 64,
        signs: gpt::mx::HadamardSigns::Fresh,
        seed: 1,
    })
    .map_err(|e| e.0)?;
    let plan = PrecisionPlan::uniform(mode, gpt.cfg.layers);
    let bt = gpt.tokens_per_batch();
    let toks: Vec<(Vec<u32>, Vec<u32>)> = (0..ROTATE)
        .map(|i| {
            (
                // Each rank its own micro batch.
                random_tokens(
                    bt,
                    gpt.cfg.vocab,
                    100 + i as u64 + 1000 * dist.rank() as u64,
                ),
                random_tokens(
                    bt,
                    gpt.cfg.vocab,
                    200 + i as u64 + 1000 * dist.rank() as u64,
                ),
            )
        })
        .collect();
    let mut step_no = 0u32;
    let mut error = None;
    let mut phase_samples: Vec<[f64; PHASES.len()]> = Vec::new();
    let mut one_step = |i: usize, be: &mut TimedBackend| -> Result<(), String> {
        step_no += 1;
        be.set_tokens(&toks[i].0, Some(&toks[i].1))
            .map_err(|e| e.0)?;
        be.zero_grads().map_err(|e| e.0)?;
        gpt.forward_backward(be, &plan, step_no, 0, 1.0 / bt as f32)
            .map_err(|e| e.0)?;
        // Moves the MXFP4 operand preparation out of backward_gemm into quantization.
        be.take_mx_telemetry();
        let norm = if dist.size() > 1 {
            let t = Instant::now();
            let norm = zero1::reduce_gradients(be.inner.as_mut(), dist, &shards)?;
            be.phase_s.get_mut()[COL] += t.elapsed().as_secs_f64();
            norm
        } else {
            be.grad_norm().map_err(|e| e.0)?
        };
        let clip = if norm > 1.0 { 1.0 / norm } else { 1.0 };
        be.adamw(&AdamW {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            t: step_no as u64,
            grad_scale: clip,
        })
        .map_err(|e| e.0)?;
        if dist.size() > 1 {
            let t = Instant::now();
            zero1::gather_params(be.inner.as_mut(), dist, &shards)?;
            be.phase_s.get_mut()[COL] += t.elapsed().as_secs_f64();
        }
        // A step is done when its work is: the GPU runs asynchronously.
        be.synchronize().map_err(|e| e.0)
    };
    let total = m.warmup + m.reps;
    let mut done = 0usize;
    let mut energy_mj: Vec<Option<u64>> = Vec::new();
    let st = measure(m, |i| {
        if error.is_some() {
            return;
        }
        be.take();
        if let Err(e) = one_step(i, &mut be) {
            error = Some(e);
        }
        phase_samples.push(be.take().map(|s| s * 1e3));
        energy_mj.push(dev.energy_mj());
        done += 1;
        if total >= 5 && done.is_multiple_of((total / 5).max(1)) {
            eprintln!("    {done}/{total}+ steps");
        }
    });
    if let Some(e) = error {
        return Err(e);
    }
    // Energy over the measured steps (after the warm-up), from NVML's total-energy counter.
    let joules_per_step = match (
        m.warmup.checked_sub(1).and_then(|i| energy_mj.get(i)),
        energy_mj.last(),
    ) {
        (Some(Some(a)), Some(Some(b))) if energy_mj.len() > m.warmup && b > a => {
            Some((b - a) as f64 * 1e-3 / (energy_mj.len() - m.warmup) as f64)
        }
        _ => None,
    };
    let mut kept = phase_samples[m.warmup.min(phase_samples.len())..].to_vec();
    if dev.gpu {
        // The timed steps ran without waits; a few more with a wait after every op give the
        // per-phase breakdown.
        be.sync_each_op = true;
        kept.clear();
        for i in 0..3 {
            be.take();
            one_step(i % ROTATE, &mut be)?;
            kept.push(be.take().map(|s| s * 1e3));
        }
    }
    let mut phases = [0.0; PHASES.len()];
    for (p, slot) in phases.iter_mut().enumerate() {
        *slot = Stats::from_samples(kept.iter().map(|s| s[p]).collect()).median;
    }
    let per_rank = dist.all_gather_f64(bt as f64 / (st.median * 1e-3))?;
    Ok((st, phases, joules_per_step, per_rank))
}

pub fn parse_modes(s: &str) -> Result<Vec<BackwardMode>, String> {
    if s == "all" {
        return Ok(BackwardMode::ALL.to_vec());
    }
    s.split(',').map(|m| m.trim().parse()).collect()
}
