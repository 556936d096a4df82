//! The gradient probe (`tools/mx probe`): what each backward recipe does to the gradient.
//!
//! On one fixed batch it computes the exact (FP32, CPU) gradient once, then draws the gradient
//! of every quantized backward mode many times (a different random seed per draw: SR draws and
//! Hadamard signs change, the batch does not) and compares the draws with the exact gradient.
//! Two views:
//! - per parameter tensor (the transformer blocks' weight matrices, and groups of them): the
//!   whole backward in the mode, as training runs it;
//! - per GEMM (each block linear's dgrad and wgrad): the quantized GEMM alone, applied to the
//!   exact operands captured from the exact backward, so one GEMM's error is seen in isolation.
//!
//! Statistics of draws q_1..q_D against the exact e (all relative to |e|):
//! bias |mean(q) - e| / |e|, and its floor sqrt(var / D) (the size a zero bias is measured
//! at); slope <mean(q), e> / <e, e> (the regression of quantized on exact: RTN's systematic
//! shrinkage shows as a slope below 1); cosine, the mean of cos(q_d, e); variance
//! sum_d |q_d - mean(q)|^2 / (D - 1) / |e|^2. Beside them, the minibatch noise of the exact
//! gradient over as many batches, var_b |g_b - mean(g)|^2 / |e|^2: the noise SGD already lives
//! with.

pub mod run;
pub mod svg;

use gpt::backend::Backend;
use gpt::cpu::backend::{linear_backward_gemms, CapturedLinear, CpuBackend};
use gpt::layout::{Arena, ParamKind, TensorRef};
use gpt::model::{Gpt, PrecisionPlan};
use gpt::mx::{GemmKind, LinearKind, MxConfig, MxRecorder};
use gpt::precision::BackwardMode;
use serde_json::{json, Value};

/// One batch of inputs and targets (B x T token ids each).
#[derive(Clone, Debug)]
pub struct Batch {
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
}

#[derive(Clone, Debug)]
pub struct ProbeConfig {
    pub modes: Vec<BackwardMode>,
    /// Draws per random mode (modes without randomness are drawn once).
    pub draws: usize,
    pub hadamard_block: usize,
    pub seed: u64,
}

/// Running sums over draws, for the statistics in the module doc.
#[derive(Clone, Debug)]
struct DrawSums {
    sum: Vec<f64>,
    sq_norms: f64,
    cosines: f64,
    draws: usize,
}

impl DrawSums {
    fn new(n: usize) -> Self {
        DrawSums {
            sum: vec![0.0; n],
            sq_norms: 0.0,
            cosines: 0.0,
            draws: 0,
        }
    }

    fn add(&mut self, q: &[f32], exact: &[f32]) {
        let (mut qq, mut qe, mut ee) = (0.0f64, 0.0f64, 0.0f64);
        for ((s, &q), &e) in self.sum.iter_mut().zip(q).zip(exact) {
            let (q, e) = (q as f64, e as f64);
            *s += q;
            qq += q * q;
            qe += q * e;
            ee += e * e;
        }
        self.sq_norms += qq;
        self.cosines += if qq > 0.0 && ee > 0.0 {
            qe / (qq * ee).sqrt()
        } else {
            0.0
        };
        self.draws += 1;
    }

    fn stats(&self, exact: &[f32]) -> DrawStats {
        let d = self.draws as f64;
        let (mut ee, mut me, mut mm, mut bias2) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
        for (&s, &e) in self.sum.iter().zip(exact) {
            let (m, e) = (s / d, e as f64);
            ee += e * e;
            me += m * e;
            mm += m * m;
            bias2 += (m - e) * (m - e);
        }
        let var = if self.draws > 1 {
            ((self.sq_norms - d * mm) / (d - 1.0)).max(0.0)
        } else {
            0.0
        };
        let norm = ee.sqrt();
        DrawStats {
            exact_norm: norm,
            bias: bias2.sqrt() / norm,
            bias_floor: (var / d).sqrt() / norm,
            slope: me / ee,
            cosine: self.cosines / d,
            variance: var / ee,
            draws: self.draws,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DrawStats {
    pub exact_norm: f64,
    pub bias: f64,
    pub bias_floor: f64,
    pub slope: f64,
    pub cosine: f64,
    pub variance: f64,
    pub draws: usize,
}

impl DrawStats {
    fn json(&self) -> Value {
        json!({"bias": self.bias, "bias_floor": self.bias_floor, "slope": self.slope,
               "cosine": self.cosine, "variance": self.variance, "draws": self.draws})
    }
}

/// A reported slice of the gradient vector: one tensor, or a group of tensors.
#[derive(Clone, Debug)]
struct Region {
    name: String,
    /// Ranges into the flat gradient vector.
    ranges: Vec<std::ops::Range<usize>>,
}

impl Region {
    fn gather(&self, g: &[f32]) -> Vec<f32> {
        self.ranges
            .iter()
            .flat_map(|r| g[r.clone()].iter().copied())
            .collect()
    }
}

const BLOCK_WEIGHTS: [(ParamKind, &str); 4] = [
    (ParamKind::QkvW, "qkv"),
    (ParamKind::AttProjW, "attn_proj"),
    (ParamKind::FcW, "mlp_up"),
    (ParamKind::FcProjW, "mlp_down"),
];

fn regions(gpt: &Gpt) -> Vec<Region> {
    let layers = gpt.cfg.layers;
    let span = |k: ParamKind, l: usize| gpt.params.param(k, l).range();
    let mut out = vec![Region {
        name: "block weights".into(),
        ranges: (0..layers)
            .flat_map(|l| BLOCK_WEIGHTS.iter().map(move |&(k, _)| (k, l)))
            .map(|(k, l)| span(k, l))
            .collect(),
    }];
    for l in 0..layers {
        for &(k, name) in &BLOCK_WEIGHTS {
            out.push(Region {
                name: format!("layer {l} {name}"),
                ranges: vec![span(k, l)],
            });
        }
    }
    out.push(Region {
        name: "token embedding".into(),
        ranges: vec![span(ParamKind::Wte, 0)],
    });
    out.push(Region {
        name: "all parameters".into(),
        ranges: std::iter::once(0..gpt.params.total).collect(),
    });
    out
}

/// Whether drawing a mode twice can give different gradients.
fn is_random(mode: BackwardMode) -> bool {
    mode.uses_sr() || mode.uses_rht()
}

fn grads_of(gpt: &Gpt) -> TensorRef {
    TensorRef {
        arena: Arena::Grads,
        offset: 0,
        len: gpt.params.total,
    }
}

/// The gradient of `batch` (mean loss over its tokens) with every block's backward in `mode`.
fn gradient(
    gpt: &Gpt,
    be: &mut CpuBackend,
    batch: &Batch,
    mode: BackwardMode,
    mx: MxConfig,
) -> Result<Vec<f32>, String> {
    let e = |e: gpt::backend::BackendError| e.to_string();
    be.set_mx_config(MxConfig { mode, ..mx }).map_err(e)?;
    be.set_tokens(&batch.inputs, Some(&batch.targets))
        .map_err(e)?;
    be.zero_grads().map_err(e)?;
    let plan = PrecisionPlan::uniform(mode, gpt.cfg.layers);
    let scale = 1.0 / gpt.tokens_per_batch() as f32;
    gpt.forward_backward(be, &plan, 0, 0, scale).map_err(e)?;
    be.read(grads_of(gpt)).map_err(e)
}

/// The probe of one parameter vector: JSON with `tensors` (per region: exact norm, minibatch
/// variance, per-mode statistics) and `gemms` (per block linear and GEMM). `batches[0]` is the
/// probed batch; all of them measure the minibatch noise. `progress` is told what is running.
pub fn probe(
    gpt: &Gpt,
    params: &[f32],
    batches: &[Batch],
    cfg: &ProbeConfig,
    progress: &mut dyn FnMut(&str),
) -> Result<Value, String> {
    if batches.len() < 2 {
        return Err(format!(
            "the probe needs at least 2 batches (the probed one and the minibatch noise), got {}",
            batches.len()
        ));
    }
    if params.len() != gpt.params.total {
        return Err(format!(
            "{} parameters for a model of {}",
            params.len(),
            gpt.params.total
        ));
    }
    let mut be = CpuBackend::new(&gpt.cfg, gpt.batch, gpt.seq).map_err(|e| e.to_string())?;
    let all = TensorRef {
        arena: Arena::Params,
        offset: 0,
        len: gpt.params.total,
    };
    be.write(all, params).map_err(|e| e.to_string())?;
    let mx = MxConfig {
        mode: BackwardMode::Bf16,
        hadamard_block: cfg.hadamard_block,
        signs: gpt::mx::HadamardSigns::Fresh,
        seed: cfg.seed,
    };
    let regions = regions(gpt);

    // The exact gradient of the probed batch, with the block linears' operands captured.
    progress("exact gradient and minibatch noise");
    be.capture_linear_backward();
    let exact = gradient(gpt, &mut be, &batches[0], BackwardMode::Bf16, mx)?;
    let captured: Vec<CapturedLinear> = be
        .take_captured()
        .into_iter()
        .filter(|c| c.prec.is_some())
        .collect();

    let minibatch = region_minibatch_variance(gpt, &mut be, batches, &regions, &exact, mx)?;
    let mut tensor_json: Vec<Value> = regions
        .iter()
        .zip(&minibatch)
        .map(|(r, v)| {
            let e = r.gather(&exact);
            json!({"name": r.name, "numel": e.len(), "exact_norm": norm(&e),
                   "minibatch_variance": v, "modes": {}})
        })
        .collect();

    let mut gemm_json: Vec<Value> = captured
        .iter()
        .flat_map(|c| {
            let p = c.prec.expect("filtered");
            [GemmKind::Dgrad, GemmKind::Wgrad].map(|g| {
                let id = if g == GemmKind::Dgrad {
                    p.dgrad
                } else {
                    p.wgrad
                };
                json!({"layer": id.layer, "linear": linear_name(id.linear),
                       "gemm": if g == GemmKind::Dgrad { "dgrad" } else { "wgrad" }, "modes": {}})
            })
        })
        .collect();
    let exact_gemms: Vec<(Vec<f32>, Vec<f32>)> = captured
        .iter()
        .map(|c| gemms(c, None, mx))
        .collect::<Result<_, _>>()?;
    for (slot, (dx, dw)) in exact_gemms.iter().enumerate() {
        for (j, e) in [dx, dw].into_iter().enumerate() {
            gemm_json[2 * slot + j]["exact_norm"] = json!(norm(e));
        }
    }

    let exact_regions: Vec<Vec<f32>> = regions.iter().map(|r| r.gather(&exact)).collect();
    for &mode in &cfg.modes {
        let draws = if is_random(mode) { cfg.draws.max(2) } else { 1 };
        progress(&format!("{mode}: {draws} draws"));
        let mut sums: Vec<DrawSums> = exact_regions
            .iter()
            .map(|e| DrawSums::new(e.len()))
            .collect();
        let mut gemm_sums: Vec<DrawSums> = exact_gemms
            .iter()
            .flat_map(|(dx, dw)| [DrawSums::new(dx.len()), DrawSums::new(dw.len())])
            .collect();
        for d in 0..draws {
            let draw_cfg = MxConfig {
                seed: cfg.seed.wrapping_add(1 + d as u64),
                ..mx
            };
            let g = gradient(gpt, &mut be, &batches[0], mode, draw_cfg)?;
            for ((s, r), e) in sums.iter_mut().zip(&regions).zip(&exact_regions) {
                s.add(&r.gather(&g), e);
            }
            for (slot, c) in captured.iter().enumerate() {
                let mut p = c.prec.expect("filtered");
                p.mode = mode;
                let (dx, dw) = gemms(c, Some(p), draw_cfg)?;
                gemm_sums[2 * slot].add(&dx, &exact_gemms[slot].0);
                gemm_sums[2 * slot + 1].add(&dw, &exact_gemms[slot].1);
            }
        }
        for ((t, s), e) in tensor_json.iter_mut().zip(&sums).zip(&exact_regions) {
            t["modes"][mode.name()] = s.stats(e).json();
        }
        for (slot, (dx, dw)) in exact_gemms.iter().enumerate() {
            gemm_json[2 * slot]["modes"][mode.name()] = gemm_sums[2 * slot].stats(dx).json();
            gemm_json[2 * slot + 1]["modes"][mode.name()] =
                gemm_sums[2 * slot + 1].stats(dw).json();
        }
    }
    Ok(json!({
        "modes": cfg.modes.iter().map(|m| m.name()).collect::<Vec<_>>(),
        "draws": cfg.draws,
        "minibatch_batches": batches.len(),
        "batch_tokens": gpt.tokens_per_batch(),
        "hadamard_block": cfg.hadamard_block,
        "seed": cfg.seed,
        "tensors": tensor_json,
        "gemms": gemm_json,
    }))
}

fn norm(x: &[f32]) -> f64 {
    x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt()
}

fn linear_name(k: LinearKind) -> &'static str {
    match k {
        LinearKind::Qkv => "qkv",
        LinearKind::AttnProj => "attn_proj",
        LinearKind::MlpUp => "mlp_up",
        LinearKind::MlpDown => "mlp_down",
    }
}

/// A captured linear's dgrad and wgrad outputs in `prec` (None: exact).
fn gemms(
    c: &CapturedLinear,
    prec: Option<gpt::backend::LinearBackward>,
    mx: MxConfig,
) -> Result<(Vec<f32>, Vec<f32>), String> {
    let mut dx = vec![0.0; c.rows * c.ic];
    let mut dw = vec![0.0; c.oc * c.ic];
    linear_backward_gemms(
        mx,
        &mut MxRecorder::default(),
        prec,
        (&c.dout, &c.inp, &c.w),
        (&mut dx, &mut dw),
        (c.rows, c.ic, c.oc),
        false,
    )
    .map_err(|e| e.to_string())?;
    Ok((dx, dw))
}

/// Per region: var_b |g_b - mean_b g_b|^2 / |e|^2 over the batches' exact gradients.
fn region_minibatch_variance(
    gpt: &Gpt,
    be: &mut CpuBackend,
    batches: &[Batch],
    regions: &[Region],
    exact: &[f32],
    mx: MxConfig,
) -> Result<Vec<f64>, String> {
    let mut sums: Vec<DrawSums> = regions
        .iter()
        .map(|r| DrawSums::new(r.gather(exact).len()))
        .collect();
    for (i, b) in batches.iter().enumerate() {
        let g = if i == 0 {
            exact.to_vec()
        } else {
            gradient(gpt, be, b, BackwardMode::Bf16, mx)?
        };
        for (s, r) in sums.iter_mut().zip(regions) {
            s.add(&r.gather(&g), &r.gather(exact));
        }
    }
    Ok(sums
        .iter()
        .zip(regions)
        .map(|(s, r)| s.stats(&r.gather(exact)).variance)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpt::config::ModelConfig;
    use gpt::rng::SplitMix64;

    fn setup() -> (Gpt, Vec<f32>, Vec<Batch>) {
        let mut cfg = ModelConfig::new(2, 64, 2, 32).unwrap();
        cfg.vocab = 200;
        cfg.padded_vocab = 256;
        let gpt = Gpt::new(cfg, 2, 32).unwrap();
        let params = gpt.init_params(3);
        let mut r = SplitMix64::new(4);
        let mut toks = || {
            (0..64)
                .map(|_| (r.next_u64() % 200) as u32)
                .collect::<Vec<_>>()
        };
        let batches = (0..4)
            .map(|_| Batch {
                inputs: toks(),
                targets: toks(),
            })
            .collect();
        (gpt, params, batches)
    }

    fn stat(v: &Value, region: &str, mode: &str, what: &str) -> f64 {
        let t = v["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == region)
            .unwrap();
        t["modes"][mode][what].as_f64().unwrap()
    }

    #[test]
    fn exact_mode_is_exact_rtn_is_biased_and_sr_is_unbiased_to_its_floor() {
        let (gpt, params, batches) = setup();
        use BackwardMode::*;
        let cfg = ProbeConfig {
            modes: vec![Bf16, Mxfp4Rtn, Mxfp4Sr, Mxfp4],
            draws: 40,
            hadamard_block: 32,
            seed: 5,
        };
        let v = probe(&gpt, &params, &batches, &cfg, &mut |_| {}).unwrap();
        let bw = "block weights";
        assert_eq!(stat(&v, bw, "bf16", "bias"), 0.0);
        assert_eq!(stat(&v, bw, "bf16", "variance"), 0.0);
        assert!((stat(&v, bw, "bf16", "slope") - 1.0).abs() < 1e-12);
        assert!((stat(&v, bw, "bf16", "cosine") - 1.0).abs() < 1e-9);
        // RTN: deterministic (one draw, no variance), and its bias is far above what the SR
        // modes' bias is measured at.
        assert_eq!(stat(&v, bw, "mxfp4-rtn", "variance"), 0.0);
        assert_eq!(stat(&v, bw, "mxfp4-rtn", "draws"), 1.0);
        let rtn = stat(&v, bw, "mxfp4-rtn", "bias");
        for sr in ["mxfp4-sr", "mxfp4"] {
            let (bias, floor) = (stat(&v, bw, sr, "bias"), stat(&v, bw, sr, "bias_floor"));
            assert!(
                floor > 0.0 && bias < 1.5 * floor,
                "{sr}: bias {bias} vs floor {floor}"
            );
            assert!(rtn > 3.0 * floor, "rtn bias {rtn} vs {sr} floor {floor}");
            assert!(stat(&v, bw, sr, "cosine") < 1.0);
        }
        // Per GEMM: 2 layers x 4 linears x (dgrad, wgrad), each with every mode.
        let gemms = v["gemms"].as_array().unwrap();
        assert_eq!(gemms.len(), 16);
        for g in gemms {
            assert_eq!(g["modes"]["bf16"]["bias"].as_f64().unwrap(), 0.0, "{g}");
            assert!(g["modes"]["mxfp4-rtn"]["bias"].as_f64().unwrap() > 0.0);
        }
        assert!(stat(&v, bw, "bf16", "variance") == 0.0);
        let mb = v["tensors"][0]["minibatch_variance"].as_f64().unwrap();
        assert!(mb > 0.0, "different batches give different gradients");
        let svg = svg::render(&[("test".into(), v.clone())]);
        assert!(svg.starts_with("<svg") && svg.contains("mxfp4-rtn"));
    }
}
