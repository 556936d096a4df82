//! Whole training steps on the CUDA backend against the CPU backend: same model, same initial
//! weights, same tokens, AdamW steps on each. On the host harness (the default, see tests::gpu)
//! the vocabulary is cut to 1001 tokens (padded to 1024: still a ragged, padded classifier) and
//! the run to 4 steps, so that the GEMMs of the LM head do not dominate CI; on a GPU
//! (MXGPT_TEST_DEVICE=cuda) the real GPT-2 vocabulary and ten steps.
//!
//! Tolerances. The GPU keeps parameters, activations and all gradients in BF16 (8 significant
//! bits, relative rounding 2^-9 on average, 2^-8 at most) with FP32 math inside each kernel;
//! the CPU keeps everything in FP32. A gradient on the GPU has passed through a few dozen BF16
//! roundings along the backward chain (two per layer per op, plus the BF16 gradient buffer
//! itself), which compound like a random walk to a few percent at most: each parameter tensor's
//! gradient must agree with the CPU's to 5% in relative L2 norm, the gradient norm to 3%. The
//! loss is a mean over B*T rows of values near ln(50257) = 10.8 computed from BF16 logits: 1%.
//! Later losses differ more (stochastic rounding of the BF16 weights on the GPU, BF16 gradient
//! accumulation): 2%, and both runs must make progress. NaN never passes.
//!
//! MXFP4 modes (both GPU paths, bf16 and int8). The quantizers are bit-identical (tested on
//! the same inputs in gpu_mx_*.rs), but here they see different inputs: the GPU's BF16 dY, W, X
//! against the CPU's FP32 ones, and an element near a rounding boundary lands on another grid
//! point, after which the difference propagates down the backward chain. Both runs draw the same
//! Philox words, so their quantization noise is largely shared: measured on tiny, the per-tensor
//! gradient difference is 0.4-0.7x the quantization noise itself (the CPU's |g_mxfp4 - g_bf16|,
//! 20-40% on this small model); independent noise would give 1.4x and a wrong scale or operand
//! far more. The bound is therefore max(5%, 1x the noise) per tensor; losses and the gradient
//! norm keep the BF16 tolerances.
//!
//! NVFP4 modes (`nvfp4-rtn`, `nvfp4`; the GPU always runs NVFP4's exact s8 GEMM): the same bound.
//! NVFP4 is more sensitive to the BF16-vs-FP32 inputs than MXFP4, because the tensor scale
//! 2688 / amax moves every block scale of the operand with the amax; measured on tiny, the
//! per-tensor difference is 0.5-0.85x the quantization noise (independent noise, e.g. a wrong
//! SR stream or RHT sign vector, would give ~1.4x). One linear layer's backward from the same
//! BF16 tensors is checked against the CPU op within FP32 summation order
//! (`nvfp4_linear_backward_matches_the_cpu_op`).

use gpt::backend::Backend;
use gpt::config::ModelConfig;
use gpt::cpu::backend::CpuBackend;
use gpt::cpu::ops::AdamW;
use gpt::cuda::CudaBackend;
use gpt::cuda::{MxGemmChoice, MxGemmPath};
use gpt::layout::{Arena, TensorRef};
use gpt::model::{Gpt, PrecisionPlan};
use gpt::mx::fp8::{ForwardConfig, Fp8Scaling};
use gpt::mx::{MxConfig, MxTelemetry, SiteTelemetry};
use gpt::precision::{BackwardMode, ForwardMode};
use gpt::rng::SplitMix64;

/// The number of steps on the device the tests run on; on the harness it also cuts the
/// vocabulary (see the file header).
fn scale(g: &runtime::cuda::Gpu, cfg: &mut ModelConfig) -> usize {
    if tests::gpu::on_gpu(g) {
        10
    } else {
        cfg.vocab = 1001;
        cfg.padded_vocab = 1024;
        4
    }
}

/// Token ids in [0, vocab) from the project's seeded splitmix64.
fn tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut r = SplitMix64::new(seed);
    (0..n)
        .map(|_| (r.next_u64() % vocab as u64) as u32)
        .collect()
}

struct Run {
    losses: Vec<f32>,
    norms: Vec<f32>,
    /// Every parameter gradient after the first step's backward.
    first_grads: Vec<f32>,
}

/// `steps` steps with a fixed repeating pair of batches (so the loss must fall).
fn train(be: &mut dyn Backend, gpt: &Gpt, steps: usize, plan: &PrecisionPlan) -> Run {
    train_with(be, gpt, steps, plan, ForwardConfig::HIGH_PRECISION)
}

/// `train` with the blocks' linear layers in the forward precision `forward`.
fn train_with(
    be: &mut dyn Backend,
    gpt: &Gpt,
    steps: usize,
    plan: &PrecisionPlan,
    forward: ForwardConfig,
) -> Run {
    let mode = plan.mode;
    let all = TensorRef {
        arena: Arena::Params,
        offset: 0,
        len: gpt.params.total,
    };
    be.write(all, &gpt.init_params(7)).unwrap();
    be.set_mx_config(MxConfig {
        mode,
        hadamard_block: 32,
        signs: gpt::mx::HadamardSigns::Fresh,
        seed: 5,
    })
    .unwrap();
    be.set_forward_config(forward).unwrap();
    let bt = gpt.tokens_per_batch();
    let batches: Vec<(Vec<u32>, Vec<u32>)> = (0..2)
        .map(|i| {
            (
                tokens(bt, gpt.cfg.vocab, 10 + i),
                tokens(bt, gpt.cfg.vocab, 20 + i),
            )
        })
        .collect();
    let mut run = Run {
        losses: vec![],
        norms: vec![],
        first_grads: vec![],
    };
    for step in 1..=steps {
        let (inp, tgt) = &batches[step % 2];
        be.set_tokens(inp, Some(tgt)).unwrap();
        be.zero_grads().unwrap();
        let loss = gpt
            .forward_backward(be, plan, step as u32, 0, 1.0 / bt as f32)
            .unwrap();
        if step == 1 {
            run.first_grads = be
                .read(TensorRef {
                    arena: Arena::Grads,
                    ..all
                })
                .unwrap();
        }
        let norm = be.grad_norm().unwrap();
        let hp = AdamW {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            t: step as u64,
            grad_scale: if norm > 1.0 { 1.0 / norm } else { 1.0 },
        };
        be.adamw(&hp).unwrap();
        run.losses.push(loss);
        run.norms.push(norm);
    }
    run
}

fn rel(got: f32, want: f32) -> f64 {
    (got as f64 - want as f64).abs() / (want as f64).abs().max(1e-30)
}

/// How far a GPU run may be from the CPU's (see the file header).
struct Tolerance {
    loss: f64,
    later_loss: f64,
    norm: f64,
    grad: f64,
}

const BF16: Tolerance = Tolerance {
    loss: 1e-2,
    later_loss: 2e-2,
    norm: 3e-2,
    grad: 5e-2,
};

/// MXFP4 steps: the same forward (first loss as BF16), and gradients whose per-tensor
/// difference from the CPU's MXFP4 gradients is compared with the quantization noise itself
/// (`grad` here is only the floor; see `compare_mode`).
const MXFP4: Tolerance = Tolerance {
    loss: 1e-2,
    later_loss: 2e-2,
    norm: 3e-2,
    grad: 5e-2,
};

fn compare(name: &str, cfg: ModelConfig, batch: usize, seq: usize) {
    compare_mode(
        name,
        cfg,
        batch,
        seq,
        BackwardMode::Bf16,
        None,
        MxGemmPath::Bf16,
        &BF16,
    );
}

#[allow(clippy::too_many_arguments)]
fn compare_mode(
    name: &str,
    mut cfg: ModelConfig,
    batch: usize,
    seq: usize,
    mode: BackwardMode,
    bf16_blocks: Option<&str>,
    path: MxGemmPath,
    tol: &Tolerance,
) {
    let device = tests::gpu::gpu();
    // MXFP4 runs take 4 steps everywhere: eight of them (4 modes x 2 paths) with their CPU twins
    // must fit the GPU session's budget for this binary.
    let steps = scale(&device, &mut cfg).min(if mode.is_quantized() { 4 } else { usize::MAX });
    let gpt = Gpt::new(cfg, batch, seq).unwrap();
    let mut cpu = CpuBackend::new(&gpt.cfg, batch, seq).unwrap();
    let mut gpu = CudaBackend::on(device, &gpt.cfg, batch, seq).unwrap();
    gpu.set_mx_gemm(MxGemmChoice::Path(path)).unwrap();
    let plan = match bf16_blocks {
        Some(spec) => PrecisionPlan::with_bf16_blocks(mode, gpt.cfg.layers, spec).unwrap(),
        None => PrecisionPlan::uniform(mode, gpt.cfg.layers),
    };
    let want = train(&mut cpu, &gpt, steps, &plan);
    let got = train(&mut gpu, &gpt, steps, &plan);
    if mode.is_quantized() {
        // NVFP4 always runs its exact s8 GEMM (path int8), whatever --mx-gemm says.
        let want_path = if mode.is_nvfp4() {
            MxGemmPath::Int8
        } else {
            path
        };
        assert_eq!(
            gpu.mx_gemm_path(),
            Some(want_path),
            "{name}: the MX GEMM path in use"
        );
    }
    let name = &format!(
        "{name} {mode} ({} path)",
        gpu.mx_gemm_path().unwrap_or(path).name()
    );
    let reference = if mode.is_quantized() {
        let mut cpu_bf16 = CpuBackend::new(&gpt.cfg, batch, seq).unwrap();
        let bf16 = PrecisionPlan::uniform(BackwardMode::Bf16, gpt.cfg.layers);
        Some(train(&mut cpu_bf16, &gpt, 1, &bf16))
    } else {
        None
    };

    let e = rel(got.losses[0], want.losses[0]);
    assert!(
        e <= tol.loss,
        "{name}: first loss {} vs CPU {} (rel {e:.2e})",
        got.losses[0],
        want.losses[0]
    );
    let e = rel(got.norms[0], want.norms[0]);
    assert!(
        e <= tol.norm,
        "{name}: first gradient norm {} vs CPU {} (rel {e:.2e})",
        got.norms[0],
        want.norms[0]
    );
    for t in &gpt.params.tensors {
        let r = t.offset..t.offset + t.len();
        let (g, w) = (&got.first_grads[r.clone()], &want.first_grads[r]);
        let diff: f64 = g
            .iter()
            .zip(w)
            .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
            .sum();
        let norm: f64 = w.iter().map(|b| (*b as f64).powi(2)).sum();
        let e = (diff / norm.max(1e-60)).sqrt();
        // MXFP4: the CPU's quantization noise on this tensor, |g_mxfp4 - g_bf16| / |g_mxfp4|.
        let noise = reference.as_ref().map_or(0.0, |r| {
            let d: f64 = r.first_grads[t.offset..t.offset + t.len()]
                .iter()
                .zip(w)
                .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
                .sum();
            (d / norm.max(1e-60)).sqrt()
        });
        assert!(
            e <= tol.grad.max(noise),
            "{name}: gradient of {} differs from the CPU's by {e:.2e} in relative L2 norm (quantization noise {noise:.2e})",
            t.name
        );
    }
    for (i, (g, w)) in got.losses.iter().zip(&want.losses).enumerate() {
        let e = rel(*g, *w);
        assert!(
            e <= tol.later_loss,
            "{name}: loss at step {} {g} vs CPU {w} (rel {e:.2e})",
            i + 1
        );
    }
    let (first, last) = (got.losses[1], got.losses[steps - 1]);
    assert!(
        last < first,
        "{name}: GPU loss did not fall on a repeated batch: {first} -> {last}"
    );
}

#[test]
fn tiny_training_steps_match_cpu() {
    compare("tiny", ModelConfig::named("tiny").unwrap(), 2, 64);
}

#[test]
fn small_config_training_steps_match_cpu() {
    // HS = 32, T not a multiple of 64, a width that exercises more than one GEMM tile.
    compare(
        "L2 C192 NH6",
        ModelConfig::new(2, 192, 6, 128).unwrap(),
        2,
        100,
    );
}

#[test]
fn mxfp4_training_steps_match_cpu_on_both_paths() {
    for path in [MxGemmPath::Bf16, MxGemmPath::Int8] {
        for mode in [
            BackwardMode::Mxfp4Rtn,
            BackwardMode::Mxfp4Rht,
            BackwardMode::Mxfp4Sr,
            BackwardMode::Mxfp4,
        ] {
            compare_mode(
                "tiny",
                ModelConfig::named("tiny").unwrap(),
                2,
                64,
                mode,
                None,
                path,
                &MXFP4,
            );
        }
    }
}

#[test]
fn nvfp4_training_steps_match_cpu() {
    // Both NVFP4 modes; the --mx-gemm choice (bf16 here) does not change NVFP4's GEMM.
    for mode in [BackwardMode::Nvfp4Rtn, BackwardMode::Nvfp4] {
        compare_mode(
            "tiny",
            ModelConfig::named("tiny").unwrap(),
            2,
            64,
            mode,
            None,
            MxGemmPath::Bf16,
            &MXFP4,
        );
    }
    // The recipe with its BF16 blocks (layer 0 in BF16, layer 1 in NVFP4).
    compare_mode(
        "tiny first:1",
        ModelConfig::named("tiny").unwrap(),
        2,
        64,
        BackwardMode::Nvfp4,
        Some("first:1"),
        MxGemmPath::Int8,
        &MXFP4,
    );
}

#[test]
fn mxfp4_with_bf16_blocks_matches_cpu() {
    // Layer 0 in BF16, layer 1 in the recipe: both backward paths in one step.
    compare_mode(
        "tiny first:1",
        ModelConfig::named("tiny").unwrap(),
        2,
        64,
        BackwardMode::Mxfp4,
        Some("first:1"),
        MxGemmPath::Bf16,
        &MXFP4,
    );
}

/// One linear layer's MXFP4 backward on both backends from the same BF16 tensors: on the
/// integer path the GPU's dX and dW must equal the bf16 rounding of the CPU's FP32 results bit
/// for bit (the quantized operands are then identical too), on the bf16 path agree to the
/// FP32-summation bound of gpu_mx_gemm.rs (checked here as 1% of the output's RMS).
/// The GPU's quantizer telemetry of the same quantizations as the CPU's, in total and per
/// backward-GEMM site: the same sites and counts (clipped, non-finite, underflows), the sums to
/// a relative `tol` (summation order). The inputs must underflow somewhere, so that the count
/// is checked on something.
fn same_telemetry(
    what: &str,
    (gpu_total, gpu_sites): (&MxTelemetry, &[SiteTelemetry]),
    (cpu_total, cpu_sites): (&MxTelemetry, &[SiteTelemetry]),
    tol: f64,
) {
    let same = |at: &str, g: &MxTelemetry, c: &MxTelemetry| {
        // The measured noise: the GPU's products are rounded to bf16, the CPU's are f32.
        assert!(
            c.exact_sq > 0.0 && c.noise_sq > 0.0,
            "{what} {at}: noise not measured"
        );
        let noise = [
            (g.noise_sq, c.noise_sq, 2e-2),
            (g.exact_sq, c.exact_sq, 1e-2),
        ];
        for (a, b, rel) in noise {
            assert!(
                (a - b).abs() <= rel * b,
                "{what} {at}: noise sums {a} vs {b}"
            );
        }
        let counts = |t: &MxTelemetry| {
            (
                t.elements,
                t.clipped,
                t.nonfinite_blocks,
                t.underflow,
                t.underflow_counted,
            )
        };
        assert_eq!(
            counts(g),
            counts(c),
            "{what} {at}: (elements, clipped, non-finite, underflow, counted)"
        );
        for (a, b) in [(g.sq_err, c.sq_err), (g.sq_sum, c.sq_sum)] {
            assert!(
                (a - b).abs() <= tol * b.abs(),
                "{what} {at}: sums {a} vs {b}"
            );
        }
    };
    same("total", gpu_total, cpu_total);
    assert!(
        cpu_total.underflow > 0,
        "{what}: the inputs underflow nowhere"
    );
    let labels = |s: &[SiteTelemetry]| s.iter().map(|x| x.label()).collect::<Vec<_>>();
    assert_eq!(labels(gpu_sites), labels(cpu_sites), "{what}: sites");
    for (g, c) in gpu_sites.iter().zip(cpu_sites) {
        same(&g.label(), &g.telemetry, &c.telemetry);
    }
}

#[test]
fn mxfp4_linear_backward_matches_the_cpu_op() {
    use gpt::backend::LinearBackward;
    use gpt::layout::ParamKind;
    use gpt::mx::{GemmId, GemmKind, LinearKind};
    let mut cfg = ModelConfig::named("tiny").unwrap();
    cfg.vocab = 1001;
    cfg.padded_vocab = 1024;
    let (batch, seq) = (2, 64);
    let gpt = Gpt::new(cfg, batch, seq).unwrap();
    let (rows, c) = (batch * seq, gpt.cfg.channels);
    let l = &gpt.acts.layers[1];
    // MLP up: dX [rows, C] from dY [rows, 4C] and W [4C, C]; dW [4C, C].
    let (dinp, dout, inp) = (gpt.acts.d_ln, gpt.acts.d_fch, l.ln2);
    let (w, dw, db) = (
        gpt.params.param(ParamKind::FcW, 1),
        gpt.params.grad(ParamKind::FcW, 1),
        gpt.params.grad(ParamKind::FcB, 1),
    );
    let mut rng = tests::gpu::Rng(77);
    let bf = |v: Vec<f32>| -> Vec<f32> {
        v.into_iter()
            .map(|x| runtime::cuda::half::bf16::from_f32(x).to_f32())
            .collect()
    };
    let (dy, x, wv) = (
        bf(rng.vec_f32(dout.len, 0.02)),
        bf(rng.vec_f32(inp.len, 1.0)),
        bf(rng.vec_f32(w.len, 0.1)),
    );
    for path in [MxGemmPath::Int8, MxGemmPath::Bf16] {
        for mode in [BackwardMode::Mxfp4Rtn, BackwardMode::Mxfp4] {
            let mut cpu = CpuBackend::new(&gpt.cfg, batch, seq).unwrap();
            let mut gpu = CudaBackend::on(tests::gpu::gpu(), &gpt.cfg, batch, seq).unwrap();
            gpu.set_mx_gemm(MxGemmChoice::Path(path)).unwrap();
            let id = |gemm| GemmId {
                step: 9,
                micro_step: 0,
                layer: 1,
                linear: LinearKind::MlpUp,
                gemm,
            };
            let p = LinearBackward {
                mode,
                dgrad: id(GemmKind::Dgrad),
                wgrad: id(GemmKind::Wgrad),
            };
            let mut out = Vec::new();
            for be in [&mut cpu as &mut dyn Backend, &mut gpu] {
                be.set_mx_config(MxConfig {
                    mode,
                    hadamard_block: 64,
                    signs: gpt::mx::HadamardSigns::Fresh,
                    seed: 11,
                })
                .unwrap();
                be.zero_grads().unwrap();
                be.set_mx_noise_measurement(true);
                be.write(dout, &dy).unwrap();
                be.write(inp, &x).unwrap();
                be.write(w, &wv).unwrap();
                be.linear_backward(dinp, dw, Some(db), dout, inp, w, rows, c, 4 * c, Some(p))
                    .unwrap();
                let t = be.take_mx_telemetry();
                let sites = be.take_mx_site_telemetry();
                out.push((
                    be.read(dinp).unwrap(),
                    be.read(dw).unwrap(),
                    t.clone(),
                    sites,
                ));
                // dgrad quantizes dY [rows, 4C] and W [4C, C]; wgrad dY and X along the rows.
                assert_eq!(
                    t.elements,
                    (rows * 4 * c + 4 * c * c + 4 * c * rows + c * rows) as u64
                );
            }
            let (want, got) = (&out[0], &out[1]);
            // Telemetry of the same quantizations: the same counts, sums to rounding; in total
            // and per site (this layer's dgrad and wgrad, nothing else).
            same_telemetry(
                &mode.to_string(),
                (&got.2, &got.3),
                (&want.2, &want.3),
                1e-5,
            );
            let labels: Vec<String> = got.3.iter().map(|x| x.label()).collect();
            assert_eq!(labels, ["layer 1 mlp_up dgrad", "layer 1 mlp_up wgrad"]);
            for (what, g, w) in [("dX", &got.0, &want.0), ("dW", &got.1, &want.1)] {
                let rms =
                    (w.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / w.len() as f64).sqrt();
                for (i, (a, b)) in g.iter().zip(w.iter()).enumerate() {
                    let b16 = runtime::cuda::half::bf16::from_f32(*b).to_f32();
                    if path == MxGemmPath::Int8 {
                        assert_eq!(
                            a.to_bits(),
                            b16.to_bits(),
                            "{mode} {what}[{i}]: GPU {a}, CPU {b}"
                        );
                    } else {
                        let tol = 2f64.powi(-8) * (*b as f64).abs() + 1e-2 * rms;
                        assert!(
                            ((*a - *b) as f64).abs() <= tol,
                            "{mode} bf16 path {what}[{i}]: GPU {a}, CPU {b}"
                        );
                    }
                }
            }
        }
    }
}

/// One linear layer's NVFP4 backward on both backends from the same BF16 tensors, in both modes:
/// the GPU's quantized operands are bit-identical to the CPU's (gpu_nvfp4.rs) and its GEMM is
/// the reference's, so dX and dW differ from the CPU backend's FP32 results only by the CPU
/// fast GEMM's summation order and the GPU's bf16 output rounding (half an ulp, at most 2^-8
/// of the value; the summation term is far below 1e-3 of the output's RMS at K <= 256).
/// Telemetry of the same quantizations: the same counts, the same sums to rounding.
#[test]
fn nvfp4_linear_backward_matches_the_cpu_op() {
    use gpt::backend::LinearBackward;
    use gpt::layout::ParamKind;
    use gpt::mx::{GemmId, GemmKind, LinearKind};
    let mut cfg = ModelConfig::named("tiny").unwrap();
    cfg.vocab = 1001;
    cfg.padded_vocab = 1024;
    let (batch, seq) = (2, 64);
    let gpt = Gpt::new(cfg, batch, seq).unwrap();
    let (rows, c) = (batch * seq, gpt.cfg.channels);
    let l = &gpt.acts.layers[0];
    // MLP down: dX [rows, 4C] from dY [rows, C] and W [C, 4C]; dW [C, 4C].
    let (dinp, dout, inp) = (gpt.acts.d_fch, gpt.acts.d_ln, l.fch_gelu);
    let (w, dw, db) = (
        gpt.params.param(ParamKind::FcProjW, 0),
        gpt.params.grad(ParamKind::FcProjW, 0),
        gpt.params.grad(ParamKind::FcProjB, 0),
    );
    let mut rng = tests::gpu::Rng(78);
    let bf = |v: Vec<f32>| -> Vec<f32> {
        v.into_iter()
            .map(|x| runtime::cuda::half::bf16::from_f32(x).to_f32())
            .collect()
    };
    let (dy, x, wv) = (
        bf(rng.vec_f32(dout.len, 0.02)),
        bf(rng.vec_f32(inp.len, 1.0)),
        bf(rng.vec_f32(w.len, 0.1)),
    );
    for mode in [BackwardMode::Nvfp4Rtn, BackwardMode::Nvfp4] {
        let mut cpu = CpuBackend::new(&gpt.cfg, batch, seq).unwrap();
        let mut gpu = CudaBackend::on(tests::gpu::gpu(), &gpt.cfg, batch, seq).unwrap();
        let id = |gemm| GemmId {
            step: 3,
            micro_step: 1,
            layer: 0,
            linear: LinearKind::MlpDown,
            gemm,
        };
        let p = LinearBackward {
            mode,
            dgrad: id(GemmKind::Dgrad),
            wgrad: id(GemmKind::Wgrad),
        };
        let mut out = Vec::new();
        for be in [&mut cpu as &mut dyn Backend, &mut gpu] {
            be.set_mx_config(MxConfig {
                mode,
                hadamard_block: 64,
                signs: gpt::mx::HadamardSigns::Fresh,
                seed: 12,
            })
            .unwrap();
            be.zero_grads().unwrap();
            be.set_mx_noise_measurement(true);
            be.write(dout, &dy).unwrap();
            be.write(inp, &x).unwrap();
            be.write(w, &wv).unwrap();
            be.linear_backward(dinp, dw, Some(db), dout, inp, w, rows, 4 * c, c, Some(p))
                .unwrap();
            let t = be.take_mx_telemetry();
            let sites = be.take_mx_site_telemetry();
            out.push((
                be.read(dinp).unwrap(),
                be.read(dw).unwrap(),
                t.clone(),
                sites,
            ));
            // dgrad quantizes dY [rows, C] and W [C, 4C] along C; wgrad dY and X along the rows.
            assert_eq!(
                t.elements,
                (rows * c + 4 * c * c + c * rows + 4 * c * rows) as u64
            );
        }
        assert_eq!(gpu.mx_gemm_path(), Some(MxGemmPath::Int8));
        let (want, got) = (&out[0], &out[1]);
        same_telemetry(
            &mode.to_string(),
            (&got.2, &got.3),
            (&want.2, &want.3),
            1e-9,
        );
        assert_eq!(got.3.len(), 2, "{mode}: this layer's dgrad and wgrad sites");
        for (what, g, w) in [("dX", &got.0, &want.0), ("dW", &got.1, &want.1)] {
            let rms = (w.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / w.len() as f64).sqrt();
            assert!(rms > 0.0, "{mode} {what} is all zeros");
            for (i, (a, b)) in g.iter().zip(w.iter()).enumerate() {
                let tol = 2f64.powi(-8) * (*b as f64).abs() + 1e-3 * rms;
                assert!(
                    ((*a - *b) as f64).abs() <= tol,
                    "{mode} {what}[{i}]: GPU {a}, CPU {b}"
                );
            }
        }
    }
}

/// `--forward fp8` whole steps on the CUDA backend (both FP8 GEMMs: E4M3 mma and the BF16
/// fallback; current and delayed scaling) against the CPU backend's FP8 forward. The kernels
/// are bit-identical to the CPU in what they quantize (gpu_fp8.rs), but here they quantize the
/// GPU's BF16 activations and weights where the CPU quantizes FP32 ones: an element near an
/// E4M3 rounding boundary lands on the other grid point, and the tensor scales move with the
/// amaxes. The bound is MXFP4's: each parameter gradient of the first step within max(5%, 1x the
/// CPU's |g_fp8 - g_bf16|) of the CPU's FP8 gradient, losses and norm within the BF16
/// tolerances, the loss falling. On tiny the FP8 noise is itself only 1-4% (measured: the GPU is
/// 0.7-1.0x of it away), so this is an integration check (the FP8 path runs, trains, records its
/// calls) that could not tell FP8 from BF16 by itself: `fp8_linear_forward_matches_the_cpu_op`
/// checks the op's numbers, from identical inputs, to FP32 summation order. Delayed scaling:
/// both backends recorded the same calls, and their amax histories agree to the activations'
/// BF16-vs-FP32 difference (measured under 1%; 5% allowed); the state survives a round trip.
fn compare_fp8(name: &str, scaling: Fp8Scaling, fallback: bool) {
    let device = tests::gpu::gpu();
    let mut cfg = ModelConfig::named("tiny").unwrap();
    let steps = scale(&device, &mut cfg).min(4);
    let (batch, seq) = (2, 64);
    let gpt = Gpt::new(cfg, batch, seq).unwrap();
    let plan = PrecisionPlan::uniform(BackwardMode::Bf16, gpt.cfg.layers);
    let fp8 = ForwardConfig {
        mode: ForwardMode::Fp8,
        scaling,
    };
    let mut cpu = CpuBackend::new(&gpt.cfg, batch, seq).unwrap();
    let mut gpu = CudaBackend::on(device, &gpt.cfg, batch, seq).unwrap();
    gpu.set_fp8_fallback(fallback);
    let want = train_with(&mut cpu, &gpt, steps, &plan, fp8);
    let got = train_with(&mut gpu, &gpt, steps, &plan, fp8);
    let path = gpu.fp8_gemm_path().expect("the FP8 forward is set");
    assert_eq!(path, if fallback { "bf16" } else { "e4m3" });
    let name = &format!("{name} fp8 {scaling:?} ({path} GEMM)");
    let mut cpu_bf16 = CpuBackend::new(&gpt.cfg, batch, seq).unwrap();
    let reference = train(&mut cpu_bf16, &gpt, 1, &plan);
    let e = rel(got.losses[0], want.losses[0]);
    assert!(
        e <= BF16.loss,
        "{name}: first loss {} vs CPU {} (rel {e:.2e})",
        got.losses[0],
        want.losses[0]
    );
    let e = rel(got.norms[0], want.norms[0]);
    assert!(
        e <= BF16.norm,
        "{name}: first gradient norm {} vs CPU {} (rel {e:.2e})",
        got.norms[0],
        want.norms[0]
    );
    for t in &gpt.params.tensors {
        let r = t.offset..t.offset + t.len();
        let (g, w, b) = (
            &got.first_grads[r.clone()],
            &want.first_grads[r.clone()],
            &reference.first_grads[r],
        );
        let l2 = |a: &[f32], b: &[f32]| -> f64 {
            a.iter()
                .zip(b)
                .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
                .sum::<f64>()
                .sqrt()
        };
        let norm = w
            .iter()
            .map(|x| (*x as f64).powi(2))
            .sum::<f64>()
            .sqrt()
            .max(1e-30);
        let (e, noise) = (l2(g, w) / norm, l2(b, w) / norm);
        assert!(
            e <= BF16.grad.max(noise),
            "{name}: gradient of {} differs from the CPU's by {e:.2e} in relative L2 norm (FP8 noise {noise:.2e})",
            t.name
        );
    }
    for (i, (g, w)) in got.losses.iter().zip(&want.losses).enumerate() {
        let e = rel(*g, *w);
        assert!(
            e <= BF16.later_loss,
            "{name}: loss at step {} {g} vs CPU {w} (rel {e:.2e})",
            i + 1
        );
    }
    assert!(
        got.losses[steps - 1] < got.losses[1],
        "{name}: GPU loss did not fall on a repeated batch: {:?}",
        got.losses
    );
    let (sc, sg) = (cpu.fp8_state().unwrap(), gpu.fp8_state().unwrap());
    match scaling {
        Fp8Scaling::Current => assert!(sc.is_none() && sg.is_none(), "{name}: no state"),
        Fp8Scaling::Delayed { history } => {
            let (sc, sg) = (sc.unwrap(), sg.unwrap());
            assert_eq!(sg.history, history);
            // Every tensor of every layer recorded one call per training step.
            assert!(
                sg.calls.iter().all(|&c| c == steps as u64),
                "{name}: {:?}",
                sg.calls
            );
            assert_eq!(sg.calls, sc.calls, "{name}: calls");
            for (i, (a, b)) in sg.amax.iter().zip(&sc.amax).enumerate() {
                assert!(
                    (a - b).abs() <= 0.05 * b.abs(),
                    "{name}: amax history [{i}]: GPU {a}, CPU {b}"
                );
            }
            // The state survives a round trip through a checkpoint.
            let mut fresh = CudaBackend::on(tests::gpu::gpu(), &gpt.cfg, batch, seq).unwrap();
            fresh.set_forward_config(fp8).unwrap();
            fresh.set_fp8_state(&sg).unwrap();
            assert_eq!(fresh.fp8_state().unwrap().as_ref(), Some(&sg));
            let wrong = gpt::mx::fp8::Fp8State::new(gpt.cfg.layers + 1, history);
            assert!(fresh.set_fp8_state(&wrong).is_err());
        }
    }
}

#[test]
fn fp8_forward_training_steps_match_cpu() {
    compare_fp8("tiny", Fp8Scaling::Current, false);
    compare_fp8("tiny", Fp8Scaling::Delayed { history: 16 }, false);
    compare_fp8("tiny", Fp8Scaling::Current, true);
}

/// The FP8 linear forward op on both backends from the same BF16 tensors: the GPU quantizes
/// exactly what the CPU quantizes (same amaxes, same scales, same E4M3 operands), so outputs
/// agree to FP32 summation order plus the GPU's bf16 output rounding (half an ulp, at most 2^-8
/// of the value; the summation term is far below 1e-4 of the RMS at K <= 256), GELU outputs to
/// the derivative times that plus their own rounding. A sequence of training and evaluation
/// calls with delayed scaling (history 2, so the window slides) leaves bit-identical state.
#[test]
fn fp8_linear_forward_matches_the_cpu_op() {
    use gpt::backend::LinearForward;
    use gpt::layout::ParamKind;
    use gpt::mx::LinearKind;
    let mut cfg = ModelConfig::named("tiny").unwrap();
    cfg.vocab = 1001;
    cfg.padded_vocab = 1024;
    let (batch, seq) = (2, 64);
    let gpt = Gpt::new(cfg, batch, seq).unwrap();
    let (rows, c) = (batch * seq, gpt.cfg.channels);
    let l = &gpt.acts.layers[1];
    let mut rng = tests::gpu::Rng(55);
    let bf = |v: Vec<f32>| -> Vec<f32> {
        v.into_iter()
            .map(|x| runtime::cuda::half::bf16::from_f32(x).to_f32())
            .collect()
    };
    for (fallback, scaling) in [
        (false, Fp8Scaling::Delayed { history: 2 }),
        (true, Fp8Scaling::Delayed { history: 2 }),
        (false, Fp8Scaling::Current),
    ] {
        let fp8 = ForwardConfig {
            mode: ForwardMode::Fp8,
            scaling,
        };
        let mut cpu = CpuBackend::new(&gpt.cfg, batch, seq).unwrap();
        let mut gpu = CudaBackend::on(tests::gpu::gpu(), &gpt.cfg, batch, seq).unwrap();
        gpu.set_fp8_fallback(fallback);
        for be in [&mut cpu as &mut dyn Backend, &mut gpu] {
            be.set_forward_config(fp8).unwrap();
        }
        // MLP up (with GELU) and MLP down of layer 1, five calls each with new inputs.
        let sites = [
            (
                LinearKind::MlpUp,
                l.fch,
                l.ln2,
                ParamKind::FcW,
                ParamKind::FcB,
                Some(l.fch_gelu),
                c,
                4 * c,
            ),
            (
                LinearKind::MlpDown,
                l.fcproj,
                l.fch_gelu,
                ParamKind::FcProjW,
                ParamKind::FcProjB,
                None,
                4 * c,
                c,
            ),
        ];
        for call in 0..5 {
            let training = call != 2;
            for be in [&mut cpu as &mut dyn Backend, &mut gpu] {
                be.set_mx_noise_measurement(call == 3);
            }
            for &(linear, out, inp, wk, bk, gelu_out, ic, oc) in &sites {
                let (w, b) = (gpt.params.param(wk, 1), gpt.params.param(bk, 1));
                let amp = [1.0, 3.0, 0.5, 0.25, 2.0][call];
                let (mut x, wv, bv) = (
                    bf(rng.vec_f32(inp.len, amp)),
                    bf(rng.vec_f32(w.len, 0.1 * amp)),
                    bf(rng.vec_f32(b.len, 0.2)),
                );
                // Far below the smallest subnormal after scaling: flushed to zero.
                x[7] = bf(vec![1e-6 * amp])[0];
                let site = LinearForward {
                    layer: 1,
                    linear,
                    training,
                };
                let mut res = Vec::new();
                for be in [&mut cpu as &mut dyn Backend, &mut gpu] {
                    be.write(inp, &x).unwrap();
                    be.write(w, &wv).unwrap();
                    be.write(b, &bv).unwrap();
                    be.linear_forward(site, out, inp, w, Some(b), gelu_out, rows, ic, oc)
                        .unwrap();
                    res.push((be.read(out).unwrap(), gelu_out.map(|t| be.read(t).unwrap())));
                }
                let what = format!("{scaling:?} fallback={fallback} call {call} {linear:?}");
                let (want, got) = (&res[0], &res[1]);
                let rms = |v: &[f32]| {
                    (v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
                };
                let r = rms(&want.0);
                assert!(r > 0.0, "{what}: zero output");
                for (i, (a, b)) in got.0.iter().zip(&want.0).enumerate() {
                    let tol = 2f64.powi(-8) * (*b as f64).abs() + 1e-4 * r;
                    assert!(
                        ((*a - *b) as f64).abs() <= tol,
                        "{what}: out[{i}] GPU {a}, CPU {b}"
                    );
                }
                if let (Some(gg), Some(gw)) = (&got.1, &want.1) {
                    for (i, ((a, b), o)) in gg.iter().zip(gw).zip(&want.0).enumerate() {
                        let tol =
                            2f64.powi(-7) * ((*b as f64).abs() + (*o as f64).abs()) + 1e-4 * r;
                        assert!(
                            ((*a - *b) as f64).abs() <= tol,
                            "{what}: gelu_out[{i}] GPU {a}, CPU {b}"
                        );
                    }
                }
            }
        }
        // The per-layer telemetry of the four training calls: the same sites and E4M3 counts
        // (saturated, flushed), the sums to f64 summation order, the output error measured on
        // call 3 to the bf16 rounding of the GPU's products.
        let (sg, sc) = (gpu.take_mx_site_telemetry(), cpu.take_mx_site_telemetry());
        let labels = |s: &[SiteTelemetry]| s.iter().map(|x| x.label()).collect::<Vec<_>>();
        assert_eq!(labels(&sg), ["layer 1 mlp_up fwd", "layer 1 mlp_down fwd"]);
        assert_eq!(labels(&sg), labels(&sc));
        let (mut saturated, mut flushed) = (0, 0);
        for (g, c) in sg.iter().zip(&sc) {
            let (tg, tc) = (&g.telemetry, &c.telemetry);
            let what = format!("{scaling:?} fallback={fallback} {}", g.label());
            let counts =
                |t: &MxTelemetry| (t.elements, t.clipped, t.underflow, t.underflow_counted);
            assert_eq!(
                counts(tg),
                counts(tc),
                "{what}: (elements, saturated, flushed, counted)"
            );
            let sums = [
                (tg.sq_err, tc.sq_err, 1e-9),
                (tg.sq_sum, tc.sq_sum, 1e-9),
                (tg.noise_sq, tc.noise_sq, 2e-2),
                (tg.exact_sq, tc.exact_sq, 1e-2),
            ];
            for (a, b, rel) in sums {
                assert!(b > 0.0 && (a - b).abs() <= rel * b, "{what}: {a} vs {b}");
            }
            saturated += tc.clipped;
            flushed += tc.underflow;
        }
        assert!(flushed > 0, "{scaling:?}: nothing was flushed to zero");
        if scaling != Fp8Scaling::Current {
            // The amplitude triples at call 1: the window's older amax saturates the new values.
            assert!(saturated > 0, "{scaling:?}: nothing saturated");
        }
        assert_eq!(
            gpu.fp8_state().unwrap(),
            cpu.fp8_state().unwrap(),
            "{scaling:?}: the delayed-scaling state"
        );
        if let Some(st) = gpu.fp8_state().unwrap() {
            assert_eq!(
                st.calls.iter().sum::<u64>(),
                2 * 2 * 4,
                "4 training calls x 2 linears x 2 operands"
            );
        }
    }
}

#[test]
fn fp8_forward_refuses_channels_it_cannot_tile() {
    // C = 24: the E4M3 rows would not be 16-byte chunks.
    let cfg = ModelConfig::new(1, 24, 2, 64).unwrap();
    let mut gpu = CudaBackend::on(tests::gpu::gpu(), &cfg, 1, 16).unwrap();
    let e = gpu
        .set_forward_config(ForwardConfig {
            mode: ForwardMode::Fp8,
            scaling: Fp8Scaling::Current,
        })
        .unwrap_err()
        .to_string();
    assert!(e.contains("multiple of 16") && e.contains("24"), "{e}");
}
