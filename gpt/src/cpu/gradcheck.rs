//! Gradient checks: every op's backward and the whole model's, against central finite
//! differences of an independent f64 reference forward (naive loops written here, sharing no
//! code with ops.rs). The analytic gradients are f32; the differences are f64, so the
//! comparison error is f32 rounding, not truncation.

use super::backend::CpuBackend;
use super::ops;
use crate::backend::Backend;
use crate::config::ModelConfig;
use crate::layout::ParamKind;
use crate::model::{Gpt, PrecisionPlan};
use crate::precision::BackwardMode;
use crate::rng::SplitMix64;

fn randn(n: usize, seed: u64, std: f64) -> Vec<f64> {
    let mut r = SplitMix64::new(seed);
    (0..n).map(|_| r.next_normal() * std).collect()
}

fn to32(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&v| v as f32).collect()
}

/// Central difference of `f` at every index of `x` listed in `idx`.
fn fd(x: &mut [f64], idx: &[usize], h: f64, mut f: impl FnMut(&[f64]) -> f64) -> Vec<f64> {
    idx.iter()
        .map(|&i| {
            let x0 = x[i];
            x[i] = x0 + h;
            let up = f(x);
            x[i] = x0 - h;
            let dn = f(x);
            x[i] = x0;
            (up - dn) / (2.0 * h)
        })
        .collect()
}

/// Asserts analytic ≈ numeric within `rtol` of the larger of |numeric| and the RMS of all
/// numeric values (gradients near zero are judged on the tensor's scale).
fn assert_close(what: &str, analytic: &[f64], numeric: &[f64], rtol: f64) {
    let rms = (numeric.iter().map(|v| v * v).sum::<f64>() / numeric.len() as f64).sqrt();
    assert!(
        rms > 0.0,
        "{what}: all numeric gradients are zero: the check would be vacuous"
    );
    for (i, (a, n)) in analytic.iter().zip(numeric).enumerate() {
        assert!(a.is_finite(), "{what}[{i}]: analytic gradient {a}");
        let tol = rtol * n.abs().max(rms);
        assert!(
            (a - n).abs() <= tol,
            "{what}[{i}]: analytic {a} vs numeric {n} (tol {tol:.3e}, rms {rms:.3e})"
        );
    }
}

fn all(n: usize) -> Vec<usize> {
    (0..n).collect()
}

// --- f64 reference forwards --------------------------------------------------------------

fn ref_layernorm(x: &[f64], w: &[f64], b: &[f64], c: usize) -> Vec<f64> {
    let mut out = vec![0.0; x.len()];
    for (row, o) in x.chunks(c).zip(out.chunks_mut(c)) {
        let mean = row.iter().sum::<f64>() / c as f64;
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / c as f64;
        let rstd = 1.0 / (var + ops::LAYERNORM_EPS as f64).sqrt();
        for j in 0..c {
            o[j] = (row[j] - mean) * rstd * w[j] + b[j];
        }
    }
    out
}

/// y = x · W^T + b with W [oc, ic]
fn ref_linear(x: &[f64], w: &[f64], b: Option<&[f64]>, ic: usize, oc: usize) -> Vec<f64> {
    let rows = x.len() / ic;
    let mut y = vec![0.0; rows * oc];
    for r in 0..rows {
        for o in 0..oc {
            let mut s = b.map_or(0.0, |b| b[o]);
            for i in 0..ic {
                s += x[r * ic + i] * w[o * ic + i];
            }
            y[r * oc + o] = s;
        }
    }
    y
}

fn ref_gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
}

fn ref_attention(qkv: &[f64], b: usize, t: usize, c: usize, nh: usize) -> Vec<f64> {
    let hs = c / nh;
    let mut out = vec![0.0; b * t * c];
    for bi in 0..b {
        for h in 0..nh {
            let at = |tt: usize, part: usize, j: usize| {
                qkv[(bi * t + tt) * 3 * c + part * c + h * hs + j]
            };
            for t1 in 0..t {
                let s: Vec<f64> = (0..=t1)
                    .map(|t2| {
                        (0..hs).map(|j| at(t1, 0, j) * at(t2, 1, j)).sum::<f64>()
                            / (hs as f64).sqrt()
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|v| (v - m).exp()).sum();
                for j in 0..hs {
                    out[(bi * t + t1) * c + h * hs + j] = (0..=t1)
                        .map(|t2| (s[t2] - m).exp() / z * at(t2, 2, j))
                        .sum::<f64>();
                }
            }
        }
    }
    out
}

fn ref_cross_entropy(logits: &[f64], targets: &[u32], vp: usize, v: usize) -> Vec<f64> {
    logits
        .chunks(vp)
        .zip(targets)
        .map(|(row, &tg)| {
            let m = row[..v].iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = row[..v].iter().map(|x| (x - m).exp()).sum();
            m + z.ln() - row[tg as usize]
        })
        .collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

// --- per-op checks -----------------------------------------------------------------------

#[test]
fn exp_f32_is_accurate_to_two_ulp() {
    let mut worst = 0.0f64;
    let mut x = -87.0f32;
    while x < 88.0 {
        let got = ops::exp_f32(x) as f64;
        let want = (x as f64).exp();
        let ulp = (want as f32).abs() * f32::EPSILON; // spacing near `want`
        worst = worst.max((got - want).abs() / ulp as f64);
        x += 0.001_37;
    }
    assert!(worst <= 2.0, "worst error {worst} ulp");
    assert_eq!(ops::exp_f32(0.0), 1.0);
    assert_eq!(ops::exp_f32(-200.0), 0.0f32.max(ops::exp_f32(-87.3)));
}

#[test]
fn layernorm_backward_matches_finite_differences() {
    let (rows, c) = (5, 24);
    let mut x = randn(rows * c, 1, 1.0);
    x.iter_mut()
        .enumerate()
        .for_each(|(i, v)| *v += (i / c) as f64); // distinct row means
    let mut w = randn(c, 2, 1.0);
    let mut b = randn(c, 3, 1.0);
    let dy = randn(rows * c, 4, 1.0);
    let (mut y, mut mean, mut rstd) = (
        vec![f32::NAN; rows * c],
        vec![f32::NAN; rows],
        vec![f32::NAN; rows],
    );
    ops::layernorm_forward(
        &mut y,
        &mut mean,
        &mut rstd,
        &to32(&x),
        &to32(&w),
        &to32(&b),
        c,
    );
    let yref = ref_layernorm(&x, &w, &b, c);
    for (a, r) in y.iter().zip(&yref) {
        assert!((*a as f64 - r).abs() < 1e-5, "forward {a} vs {r}");
    }
    // Accumulating outputs start from a known non-zero value to check the `+=`.
    let (mut dx, mut dw, mut db) = (vec![0.5f32; rows * c], vec![0.25f32; c], vec![-1.0f32; c]);
    ops::layernorm_backward(
        &mut dx,
        &mut dw,
        &mut db,
        &to32(&dy),
        &to32(&x),
        &to32(&w),
        &mean,
        &rstd,
        c,
    );
    let (wc, bc) = (w.clone(), b.clone());
    let nx = fd(&mut x, &all(rows * c), 1e-5, |x| {
        dot(&ref_layernorm(x, &wc, &bc, c), &dy)
    });
    let xc = x.clone();
    let nw = fd(&mut w, &all(c), 1e-5, |w| {
        dot(&ref_layernorm(&xc, w, &bc, c), &dy)
    });
    let wc = w.clone();
    let nb = fd(&mut b, &all(c), 1e-5, |b| {
        dot(&ref_layernorm(&xc, &wc, b, c), &dy)
    });
    let sub = |v: &[f32], s: f64| v.iter().map(|&a| a as f64 - s).collect::<Vec<_>>();
    assert_close("layernorm dx", &sub(&dx, 0.5), &nx, 2e-4);
    assert_close("layernorm dw", &sub(&dw, 0.25), &nw, 2e-4);
    assert_close("layernorm db", &sub(&db, -1.0), &nb, 2e-4);
}

#[test]
fn residual_layernorm_is_add_then_layernorm() {
    let (rows, c) = (3, 16);
    let (a, d) = (randn(rows * c, 5, 1.0), randn(rows * c, 6, 1.0));
    let (w, b) = (randn(c, 7, 1.0), randn(c, 8, 1.0));
    let (mut r, mut y) = (vec![f32::NAN; rows * c], vec![f32::NAN; rows * c]);
    let (mut m, mut s) = (vec![f32::NAN; rows], vec![f32::NAN; rows]);
    ops::residual_layernorm_forward(
        &mut r,
        &mut y,
        &mut m,
        &mut s,
        &to32(&a),
        &to32(&d),
        &to32(&w),
        &to32(&b),
        c,
    );
    let sum: Vec<f64> = a.iter().zip(&d).map(|(x, y)| x + y).collect();
    let yref = ref_layernorm(&sum, &w, &b, c);
    for i in 0..rows * c {
        assert!((r[i] as f64 - sum[i]).abs() < 1e-6);
        assert!((y[i] as f64 - yref[i]).abs() < 1e-5);
    }
}

#[test]
fn linear_backward_matches_finite_differences() {
    let (rows, ic, oc) = (7, 13, 9);
    let mut x = randn(rows * ic, 11, 1.0);
    let mut w = randn(oc * ic, 12, 0.5);
    let mut b = randn(oc, 13, 0.5);
    let dy = randn(rows * oc, 14, 1.0);
    let mut y = vec![f32::NAN; rows * oc];
    ops::matmul_forward(&mut y, &to32(&x), &to32(&w), Some(&to32(&b)), rows, ic, oc);
    let yref = ref_linear(&x, &w, Some(&b), ic, oc);
    for (a, r) in y.iter().zip(&yref) {
        assert!((*a as f64 - r).abs() < 1e-5);
    }
    let mut dx = vec![f32::NAN; rows * ic]; // overwritten
    let mut dw = vec![1.0f32; oc * ic]; // accumulated
    let mut db = vec![1.0f32; oc];
    ops::matmul_backward_input(&mut dx, &to32(&dy), &to32(&w), rows, ic, oc);
    ops::matmul_backward_weight(&mut dw, &to32(&dy), &to32(&x), rows, ic, oc);
    ops::bias_backward(&mut db, &to32(&dy), rows, oc);
    let (wc, bc) = (w.clone(), b.clone());
    let nx = fd(&mut x, &all(rows * ic), 1e-5, |x| {
        dot(&ref_linear(x, &wc, Some(&bc), ic, oc), &dy)
    });
    let xc = x.clone();
    let nw = fd(&mut w, &all(oc * ic), 1e-5, |w| {
        dot(&ref_linear(&xc, w, Some(&bc), ic, oc), &dy)
    });
    let nb = fd(&mut b, &all(oc), 1e-5, |b| {
        dot(&ref_linear(&xc, &wc, Some(b), ic, oc), &dy)
    });
    let sub = |v: &[f32], s: f64| v.iter().map(|&a| a as f64 - s).collect::<Vec<_>>();
    assert_close("linear dx", &sub(&dx, 0.0), &nx, 1e-4);
    assert_close("linear dw", &sub(&dw, 1.0), &nw, 1e-4);
    assert_close("linear db", &sub(&db, 1.0), &nb, 1e-4);
}

#[test]
fn gelu_backward_matches_finite_differences() {
    let mut x = randn(64, 21, 2.0);
    let mut y = vec![f32::NAN; 64];
    ops::gelu_forward(&mut y, &to32(&x));
    for (a, r) in y.iter().zip(&x) {
        assert!((*a as f64 - ref_gelu(*r)).abs() < 1e-6);
    }
    let dy = randn(64, 22, 1.0);
    let mut d = to32(&dy);
    ops::gelu_backward_inplace(&mut d, &to32(&x));
    let n = fd(&mut x, &all(64), 1e-5, |x| {
        x.iter().zip(&dy).map(|(v, g)| ref_gelu(*v) * g).sum()
    });
    let a: Vec<f64> = d.iter().map(|&v| v as f64).collect();
    assert_close("gelu", &a, &n, 1e-4);
}

#[test]
fn attention_backward_matches_finite_differences() {
    let (b, t, c, nh) = (2, 5, 12, 3);
    let mut qkv = randn(b * t * 3 * c, 31, 1.0);
    let dy = randn(b * t * c, 32, 1.0);
    let (mut out, mut lse) = (vec![f32::NAN; b * t * c], vec![f32::NAN; b * nh * t]);
    ops::attention_forward(&mut out, &mut lse, &to32(&qkv), b, t, c, nh);
    let oref = ref_attention(&qkv, b, t, c, nh);
    for (a, r) in out.iter().zip(&oref) {
        assert!((*a as f64 - r).abs() < 1e-5, "{a} vs {r}");
    }
    let mut dqkv = vec![f32::NAN; qkv.len()]; // overwritten
    ops::attention_backward(&mut dqkv, &to32(&dy), &to32(&qkv), &out, &lse, b, t, c, nh);
    let n = fd(&mut qkv, &all(b * t * 3 * c), 1e-5, |q| {
        dot(&ref_attention(q, b, t, c, nh), &dy)
    });
    let a: Vec<f64> = dqkv.iter().map(|&v| v as f64).collect();
    assert_close("attention dqkv", &a, &n, 2e-4);
}

#[test]
fn classifier_loss_and_dlogits_match_finite_differences() {
    let (rows, vp, v) = (4, 16, 11);
    let mut logits = randn(rows * vp, 41, 2.0);
    let targets = [3u32, 0, 10, 7];
    let mut lg = to32(&logits);
    lg[v..vp].fill(f32::NAN); // padded logits must never be read
    let mut losses = vec![f32::NAN; rows];
    let scale = 0.25f32;
    ops::classifier(&mut lg, &mut losses, &targets, vp, v, Some(scale));
    let lref = ref_cross_entropy(&logits, &targets, vp, v);
    for (a, r) in losses.iter().zip(&lref) {
        assert!((*a as f64 - r).abs() < 1e-5);
    }
    let n = fd(&mut logits, &all(rows * vp), 1e-5, |x| {
        ref_cross_entropy(x, &targets, vp, v).iter().sum::<f64>() * scale as f64
    });
    let a: Vec<f64> = lg.iter().map(|&x| x as f64).collect();
    assert_close("classifier dlogits", &a, &n, 1e-4);
    for row in lg.chunks(vp) {
        assert!(
            row[v..].iter().all(|&x| x == 0.0),
            "padded dlogits must be 0"
        );
    }
}

#[test]
fn encoder_backward_scatters_by_token_and_position() {
    let (t, c) = (3, 4);
    let tokens = [2u32, 0, 2, 1, 2, 0]; // B = 2
    let dout: Vec<f32> = (0..6 * c).map(|i| i as f32).collect();
    let (mut dwte, mut dwpe) = (vec![0.0f32; 3 * c], vec![0.0f32; t * c]);
    ops::encoder_backward(&mut dwte, &mut dwpe, &dout, &tokens, t, c);
    for j in 0..c {
        let d = |row: usize| dout[row * c + j];
        assert_eq!(dwte[2 * c + j], d(0) + d(2) + d(4));
        assert_eq!(dwte[j], d(1) + d(5));
        assert_eq!(dwte[c + j], d(3));
        for pos in 0..t {
            assert_eq!(dwpe[pos * c + j], d(pos) + d(t + pos));
        }
    }
}

#[test]
fn adamw_matches_the_formula() {
    let hp = ops::AdamW {
        lr: 0.1,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        t: 3,
        grad_scale: 0.5,
    };
    let (mut p, g, mut m, mut v) = (
        vec![1.0f32, -2.0],
        vec![0.4f32, -0.2],
        vec![0.1f32, 0.0],
        vec![0.01f32, 0.02],
    );
    ops::adamw_update(&mut p, &g, &mut m, &mut v, &hp, true);
    for (i, (p0, g0, m0, v0)) in [(1.0f64, 0.4f64, 0.1f64, 0.01f64), (-2.0, -0.2, 0.0, 0.02)]
        .iter()
        .enumerate()
    {
        let g = g0 * 0.5;
        let m1 = 0.9 * m0 + 0.1 * g;
        let v1 = 0.95 * v0 + 0.05 * g * g;
        let upd = (m1 / (1.0 - 0.9f64.powi(3))) / ((v1 / (1.0 - 0.95f64.powi(3))).sqrt() + 1e-8);
        let p1 = p0 - 0.1 * (upd + 0.1 * p0);
        assert!((p[i] as f64 - p1).abs() < 1e-6, "{} vs {p1}", p[i]);
        assert!((m[i] as f64 - m1).abs() < 1e-7 && (v[i] as f64 - v1).abs() < 1e-7);
    }
}

// --- the whole model ---------------------------------------------------------------------

/// A model small enough for f64 finite differences over its whole forward: vocab 100 (padded
/// to 128), 2 layers, width 32, 2 heads, B=2, T=8.
fn check_config() -> (ModelConfig, usize, usize) {
    let mut cfg = ModelConfig::new(2, 32, 2, 16).unwrap();
    cfg.vocab = 100;
    cfg.padded_vocab = 128;
    (cfg, 2, 8)
}

/// The whole GPT-2 forward in f64, from the parameter vector, returning the mean loss.
fn ref_model_loss(gpt: &Gpt, p: &[f64], inputs: &[u32], targets: &[u32]) -> f64 {
    ref_model_loss_with(gpt, p, inputs, targets, ref_linear)
}

/// The same model with `block_linear` computing the blocks' four linear layers (the LM head
/// stays `ref_linear`).
fn ref_model_loss_with(
    gpt: &Gpt,
    p: &[f64],
    inputs: &[u32],
    targets: &[u32],
    block_linear: fn(&[f64], &[f64], Option<&[f64]>, usize, usize) -> Vec<f64>,
) -> f64 {
    let ref_linear = block_linear;
    let head_linear = self::ref_linear;
    let cfg = &gpt.cfg;
    let (c, t, b) = (cfg.channels, gpt.seq, gpt.batch);
    let get = |k: ParamKind, l: usize| &p[gpt.params.param(k, l).range()];
    use ParamKind::*;
    let mut x = vec![0.0; b * t * c];
    for (row, &tok) in inputs.iter().enumerate() {
        for j in 0..c {
            x[row * c + j] = get(Wte, 0)[tok as usize * c + j] + get(Wpe, 0)[(row % t) * c + j];
        }
    }
    for l in 0..cfg.layers {
        let h = ref_layernorm(&x, get(Ln1W, l), get(Ln1B, l), c);
        let qkv = ref_linear(&h, get(QkvW, l), Some(get(QkvB, l)), c, 3 * c);
        let att = ref_attention(&qkv, b, t, c, cfg.heads);
        let proj = ref_linear(&att, get(AttProjW, l), Some(get(AttProjB, l)), c, c);
        x.iter_mut().zip(&proj).for_each(|(a, d)| *a += d);
        let h2 = ref_layernorm(&x, get(Ln2W, l), get(Ln2B, l), c);
        let fc: Vec<f64> = ref_linear(&h2, get(FcW, l), Some(get(FcB, l)), c, 4 * c)
            .into_iter()
            .map(ref_gelu)
            .collect();
        let out = ref_linear(&fc, get(FcProjW, l), Some(get(FcProjB, l)), 4 * c, c);
        x.iter_mut().zip(&out).for_each(|(a, d)| *a += d);
    }
    let xf = ref_layernorm(&x, get(LnfW, 0), get(LnfB, 0), c);
    let logits = head_linear(&xf, get(Wte, 0), None, c, cfg.padded_vocab);
    let losses = ref_cross_entropy(&logits, targets, cfg.padded_vocab, cfg.vocab);
    losses.iter().sum::<f64>() / losses.len() as f64
}

#[test]
fn whole_model_gradients_match_finite_differences() {
    let (cfg, b, t) = check_config();
    let gpt = Gpt::new(cfg, b, t).unwrap();
    // Larger-than-GPT-2 init so every path carries signal.
    let mut params: Vec<f64> = gpt
        .init_params(5)
        .iter()
        .map(|&v| v as f64 * 10.0)
        .collect();
    for k in [ParamKind::Ln1W, ParamKind::Ln2W, ParamKind::LnfW] {
        let r = gpt.params.tensor(k);
        let noise = randn(r.len(), 51, 0.3);
        for (i, n) in (r.offset..r.offset + r.len()).zip(noise) {
            params[i] = 1.0 + n;
        }
    }
    for k in [
        ParamKind::QkvB,
        ParamKind::AttProjB,
        ParamKind::FcB,
        ParamKind::FcProjB,
        ParamKind::Ln1B,
        ParamKind::Ln2B,
        ParamKind::LnfB,
    ] {
        let r = gpt.params.tensor(k);
        let noise = randn(r.len(), 52 + k as u64, 0.1);
        params[r.offset..r.offset + r.len()].copy_from_slice(&noise);
    }
    let mut rng = SplitMix64::new(9);
    let inputs: Vec<u32> = (0..b * t)
        .map(|_| (rng.next_u64() % cfg.vocab as u64) as u32)
        .collect();
    let targets: Vec<u32> = (0..b * t)
        .map(|_| (rng.next_u64() % cfg.vocab as u64) as u32)
        .collect();

    let mut be = CpuBackend::new(&cfg, b, t).unwrap();
    let all_params = crate::layout::TensorRef {
        arena: crate::layout::Arena::Params,
        offset: 0,
        len: gpt.params.total,
    };
    be.write(all_params, &to32(&params)).unwrap();
    be.set_tokens(&inputs, Some(&targets)).unwrap();
    be.zero_grads().unwrap();
    let plan = PrecisionPlan::uniform(BackwardMode::Bf16, cfg.layers);
    let loss = be_loss(&gpt, &mut be, &plan);
    let ref_loss = ref_model_loss(&gpt, &params, &inputs, &targets);
    assert!(
        (loss as f64 - ref_loss).abs() < 1e-4 * ref_loss,
        "loss {loss} vs f64 reference {ref_loss}"
    );
    let grads = be
        .read(crate::layout::TensorRef {
            arena: crate::layout::Arena::Grads,
            ..all_params
        })
        .unwrap();

    // Check a spread of entries of every tensor (wte: only rows of tokens that occur, plus a
    // row that only the LM head touches).
    for tensor in gpt.params.tensors.clone() {
        let n = tensor.len();
        let mut idx: Vec<usize> = (0..6)
            .map(|_| tensor.offset + (rng.next_u64() % n as u64) as usize)
            .collect();
        if tensor.kind == ParamKind::Wte {
            idx = vec![
                inputs[0] as usize * cfg.channels,
                inputs[3] as usize * cfg.channels + 5,
                99 * cfg.channels + 1,
            ];
        }
        if tensor.kind == ParamKind::Wpe {
            idx.retain(|&i| (i - tensor.offset) / cfg.channels < t); // positions beyond T get no gradient
            idx.push(tensor.offset + 2);
        }
        let numeric = fd(&mut params, &idx, 1e-4, |p| {
            ref_model_loss(&gpt, p, &inputs, &targets)
        });
        let analytic: Vec<f64> = idx.iter().map(|&i| grads[i] as f64).collect();
        for (k, (a, nmr)) in analytic.iter().zip(&numeric).enumerate() {
            let tol = 2e-3 * nmr.abs() + 2e-6;
            assert!(
                (a - nmr).abs() <= tol,
                "{}[{}]: analytic {a:e} vs numeric {nmr:e}",
                tensor.name,
                idx[k] - tensor.offset
            );
        }
    }
    // Padded vocab rows never receive gradient.
    let wte = gpt.params.tensor(ParamKind::Wte);
    assert!(
        grads[wte.offset + cfg.vocab * cfg.channels..wte.offset + wte.len()]
            .iter()
            .all(|&g| g == 0.0)
    );
}

fn be_loss(gpt: &Gpt, be: &mut CpuBackend, plan: &PrecisionPlan) -> f32 {
    let scale = 1.0 / (gpt.batch * gpt.seq) as f32;
    gpt.forward_backward(be, plan, 0, 0, scale).unwrap()
}

// --- the FP8 forward (docs/numerics.md sections 8 and 9) ---------------------------------

/// E4M3 rounding by search over the format's value table (independent of mx::fp8's bit
/// manipulation): nearest value, ties to the even code, saturating at 448.
fn ref_e4m3(x: f32) -> f64 {
    let a = (x as f64).abs();
    let (mut best, mut best_d) = (0u32, f64::INFINITY);
    for code in 0u32..=0x7E {
        let (e, m) = ((code >> 3) as i32, (code & 7) as f64);
        let v = if e == 0 {
            m * 2f64.powi(-9)
        } else {
            (1.0 + m / 8.0) * 2f64.powi(e - 7)
        };
        let d = (v - a).abs();
        if d < best_d || (d == best_d && code & 1 == 0) {
            best = code;
            best_d = d;
        }
    }
    let (e, m) = ((best >> 3) as i32, (best & 7) as f64);
    let v = if e == 0 {
        m * 2f64.powi(-9)
    } else {
        (1.0 + m / 8.0) * 2f64.powi(e - 7)
    };
    if x < 0.0 {
        -v
    } else {
        v
    }
}

/// Current scaling's FP8 linear in f64: scales 448 / amax in f32 from the f32 operands, E4M3
/// operands, exact products and sum, one division by the f32 product of the scales.
fn ref_linear_fp8(x: &[f64], w: &[f64], b: Option<&[f64]>, ic: usize, oc: usize) -> Vec<f64> {
    let scale = |t: &[f64]| {
        let amax = t.iter().fold(0.0f32, |m, &v| m.max((v as f32).abs()));
        if amax == 0.0 {
            1.0f32
        } else {
            448.0f32 / amax
        }
    };
    let (sx, sw) = (scale(x), scale(w));
    let xq: Vec<f64> = x.iter().map(|&v| ref_e4m3(v as f32 * sx)).collect();
    let wq: Vec<f64> = w.iter().map(|&v| ref_e4m3(v as f32 * sw)).collect();
    let s = (sx * sw) as f64;
    let mut y = ref_linear(&xq, &wq, None, ic, oc);
    for (i, v) in y.iter_mut().enumerate() {
        *v = *v / s + b.map_or(0.0, |b| b[i % oc]);
    }
    y
}

#[test]
fn fp8_forward_loss_matches_the_f64_model_with_e4m3_linears() {
    use crate::mx::fp8::{ForwardConfig, Fp8Scaling};
    use crate::precision::ForwardMode;
    let (cfg, b, t) = check_config();
    let gpt = Gpt::new(cfg, b, t).unwrap();
    let mut params: Vec<f64> = gpt
        .init_params(7)
        .iter()
        .map(|&v| v as f64 * 10.0)
        .collect();
    for k in [
        ParamKind::QkvB,
        ParamKind::AttProjB,
        ParamKind::FcB,
        ParamKind::FcProjB,
    ] {
        let r = gpt.params.tensor(k);
        let noise = randn(r.len(), 70 + k as u64, 0.1);
        params[r.offset..r.offset + r.len()].copy_from_slice(&noise);
    }
    let mut rng = SplitMix64::new(19);
    let mut tokens = || -> Vec<u32> {
        (0..b * t)
            .map(|_| (rng.next_u64() % cfg.vocab as u64) as u32)
            .collect()
    };
    let (inputs, targets) = (tokens(), tokens());
    let all = crate::layout::TensorRef {
        arena: crate::layout::Arena::Params,
        offset: 0,
        len: gpt.params.total,
    };
    let plan = PrecisionPlan::uniform(BackwardMode::Bf16, cfg.layers);
    let loss_of = |mode| {
        let mut be = CpuBackend::new(&cfg, b, t).unwrap();
        be.set_forward_config(ForwardConfig {
            mode,
            scaling: Fp8Scaling::Current,
        })
        .unwrap();
        be.write(all, &to32(&params)).unwrap();
        be.set_tokens(&inputs, Some(&targets)).unwrap();
        be.zero_grads().unwrap();
        be_loss(&gpt, &mut be, &plan) as f64
    };
    let (fp8, high) = (loss_of(ForwardMode::Fp8), loss_of(ForwardMode::Bf16));
    let want = ref_model_loss_with(&gpt, &params, &inputs, &targets, ref_linear_fp8);
    let want_high = ref_model_loss(&gpt, &params, &inputs, &targets);
    eprintln!("loss fp8 {fp8} (f64 model {want}), high precision {high} (f64 model {want_high})");
    // The quantization moves the loss measurably; the backend follows the f64 FP8 model far
    // more closely than that.
    let effect = (want - want_high).abs();
    assert!(
        effect > 1e-4 * want_high,
        "E4M3 changed the loss by only {effect}"
    );
    assert!(
        (fp8 - want).abs() < 0.05 * effect,
        "fp8 loss {fp8} vs f64 model {want}"
    );
    assert!((high - want_high).abs() < 1e-4 * want_high);
}

#[test]
fn delayed_fp8_scaling_records_training_passes_only_and_resumes_exactly() {
    use crate::mx::fp8::{ForwardConfig, Fp8Scaling, Fp8State};
    use crate::precision::ForwardMode;
    let (cfg, b, t) = check_config();
    let gpt = Gpt::new(cfg, b, t).unwrap();
    let params = gpt.init_params(8);
    let mut rng = SplitMix64::new(23);
    let mut tokens = || -> Vec<u32> {
        (0..b * t)
            .map(|_| (rng.next_u64() % cfg.vocab as u64) as u32)
            .collect()
    };
    let batches: Vec<(Vec<u32>, Vec<u32>)> = (0..5).map(|_| (tokens(), tokens())).collect();
    let all = crate::layout::TensorRef {
        arena: crate::layout::Arena::Params,
        offset: 0,
        len: gpt.params.total,
    };
    let plan = PrecisionPlan::uniform(BackwardMode::Bf16, cfg.layers);
    let fresh = || {
        let mut be = CpuBackend::new(&cfg, b, t).unwrap();
        be.set_forward_config(ForwardConfig {
            mode: ForwardMode::Fp8,
            scaling: Fp8Scaling::Delayed { history: 3 },
        })
        .unwrap();
        be.write(all, &params).unwrap();
        be
    };
    let step = |be: &mut CpuBackend, (x, y): &(Vec<u32>, Vec<u32>)| {
        be.set_tokens(x, Some(y)).unwrap();
        be.zero_grads().unwrap();
        be_loss(&gpt, be, &plan)
    };
    let mut be = fresh();
    assert_eq!(be.fp8_state().unwrap(), Some(Fp8State::new(cfg.layers, 3)));
    be.set_tokens(&batches[0].0, None).unwrap();
    gpt.forward(&mut be).unwrap();
    assert_eq!(
        be.fp8_state().unwrap(),
        Some(Fp8State::new(cfg.layers, 3)),
        "an evaluation pass records nothing"
    );
    let mut losses = Vec::new();
    let mut saved = None;
    for (i, batch) in batches.iter().enumerate() {
        if i == 2 {
            saved = be.fp8_state().unwrap();
        }
        losses.push(step(&mut be, batch));
    }
    let state = be.fp8_state().unwrap().unwrap();
    assert!(state.calls.iter().all(|&c| c == 5));
    assert!(
        state.amax.iter().all(|&a| a > 0.0),
        "every slot of the 3-call window is filled"
    );
    // Resuming from the state saved before step 2 reproduces steps 2.. bit for bit (the
    // parameters do not change here: no optimizer step), and a fresh state does not.
    let mut resumed = fresh();
    resumed.set_fp8_state(&saved.unwrap()).unwrap();
    let mut restarted = fresh();
    for (i, batch) in batches.iter().enumerate().skip(2) {
        assert_eq!(
            step(&mut resumed, batch).to_bits(),
            losses[i].to_bits(),
            "step {i}"
        );
    }
    let differs = batches[2..]
        .iter()
        .zip(&losses[2..])
        .any(|(batch, l)| step(&mut restarted, batch) != *l);
    assert!(
        differs,
        "the window changes the scales, so a lost history would show"
    );
    let mut wrong = CpuBackend::new(&cfg, b, t).unwrap();
    let e = wrong.set_fp8_state(&state).unwrap_err().to_string();
    assert!(e.contains("no delayed FP8 scaling"), "{e}");
}
