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

use gpt::backend::Backend;
use gpt::config::ModelConfig;
use gpt::cpu::backend::CpuBackend;
use gpt::cpu::ops::AdamW;
use gpt::cuda::CudaBackend;
use gpt::layout::{Arena, TensorRef};
use gpt::model::{Gpt, PrecisionPlan};
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

/// Ten steps with a fixed repeating pair of batches (so the loss must fall).
fn train(be: &mut dyn Backend, gpt: &Gpt, steps: usize) -> Run {
    let all = TensorRef {
        arena: Arena::Params,
        offset: 0,
        len: gpt.params.total,
    };
    be.write(all, &gpt.init_params(7)).unwrap();
    let plan = PrecisionPlan::uniform(BackwardMode::Bf16, gpt.cfg.layers);
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
            .forward_backward(be, &plan, step as u32, 0, 1.0 / bt as f32)
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

fn compare(name: &str, mut cfg: ModelConfig, batch: usize, seq: usize) {
    let device = tests::gpu::gpu();
    let steps = scale(&device, &mut cfg);
    let gpt = Gpt::new(cfg, batch, seq).unwrap();
    let mut cpu = CpuBackend::new(&gpt.cfg, batch, seq).unwrap();
    let mut gpu = CudaBackend::on(device, &gpt.cfg, batch, seq).unwrap();
    let want = train(&mut cpu, &gpt, steps);
    let got = train(&mut gpu, &gpt, steps);

    let e = rel(got.losses[0], want.losses[0]);
    assert!(
        e <= 1e-2,
        "{name}: first loss {} vs CPU {} (rel {e:.2e})",
        got.losses[0],
        want.losses[0]
    );
    let e = rel(got.norms[0], want.norms[0]);
    assert!(
        e <= 3e-2,
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
        assert!(
            e <= 5e-2,
            "{name}: gradient of {} differs from the CPU's by {e:.2e} in relative L2 norm",
            t.name
        );
    }
    for (i, (g, w)) in got.losses.iter().zip(&want.losses).enumerate() {
        let e = rel(*g, *w);
        assert!(
            e <= 2e-2,
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
fn mxfp4_modes_are_a_clear_error_on_the_gpu() {
    let gpt = Gpt::new(ModelConfig::named("tiny").unwrap(), 1, 16).unwrap();
    let mut gpu = CudaBackend::on(tests::gpu::gpu(), &gpt.cfg, 1, 16).unwrap();
    let cfg = gpt::mx::MxConfig {
        mode: BackwardMode::Mxfp4,
        hadamard_block: 64,
        seed: 1,
    };
    let e = gpu.set_mx_config(cfg).unwrap_err().to_string();
    assert!(e.contains("mxfp4") && e.contains("bf16"), "{e}");
}
