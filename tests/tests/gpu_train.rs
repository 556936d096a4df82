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

use gpt::backend::Backend;
use gpt::config::ModelConfig;
use gpt::cpu::backend::CpuBackend;
use gpt::cpu::ops::AdamW;
use gpt::cuda::CudaBackend;
use gpt::cuda::{MxGemmChoice, MxGemmPath};
use gpt::layout::{Arena, TensorRef};
use gpt::model::{Gpt, PrecisionPlan};
use gpt::mx::MxConfig;
use gpt::precision::BackwardMode;
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
    let steps = scale(&device, &mut cfg).min(if mode.is_mxfp4() { 4 } else { usize::MAX });
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
    if mode.is_mxfp4() {
        assert_eq!(
            gpu.mx_gemm_path(),
            Some(path),
            "{name}: the MX GEMM path in use"
        );
    }
    let name = &format!("{name} {mode} ({} path)", path.name());
    let reference = if mode.is_mxfp4() {
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
                be.write(dout, &dy).unwrap();
                be.write(inp, &x).unwrap();
                be.write(w, &wv).unwrap();
                be.linear_backward(dinp, dw, Some(db), dout, inp, w, rows, c, 4 * c, Some(p))
                    .unwrap();
                let t = be.take_mx_telemetry();
                out.push((be.read(dinp).unwrap(), be.read(dw).unwrap(), t.clone()));
                // dgrad quantizes dY [rows, 4C] and W [4C, C]; wgrad dY and X along the rows.
                assert_eq!(
                    t.elements,
                    (rows * 4 * c + 4 * c * c + 4 * c * rows + c * rows) as u64
                );
            }
            let (want, got) = (&out[0], &out[1]);
            // Telemetry of the same quantizations: the same counts, sums to rounding.
            let (tc, tg) = (&want.2, &got.2);
            assert_eq!(
                (tg.clipped, tg.nonfinite_blocks),
                (tc.clipped, tc.nonfinite_blocks)
            );
            for (a, b) in [(tg.sq_err, tc.sq_err), (tg.sq_sum, tc.sq_sum)] {
                assert!(
                    (a - b).abs() <= 1e-5 * b.abs(),
                    "{mode} telemetry {a} vs {b}"
                );
            }
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
