//! The GPU training step without host work: the encoder's token index built on the device, and
//! (below) the step's scalars read from device memory so that a captured CUDA graph replays it.
//!
//! Index: the device build (encoder_index_* in encoder.cu) must produce exactly the host's
//! stable counting sort (the reference, `EncoderIndex::host_reference`), on random tokens with
//! many repeats, a single repeated token, ids at both ends of the vocabulary, more tokens than
//! ids and more ids than the scan block has threads; into a poisoned buffer that held another
//! batch's index before (stale counts would show). On the harness it also runs under random
//! thread schedules, where the scatter's atomics land out of order and the order kernel has to
//! restore the positions' ascending order. The encoder backward from both indexes must be bit
//! identical.

use gpt::cuda::kernels::{encoder, Ptr};
use runtime::cuda::half::bf16;
use runtime::cuda::{Gpu, Schedule};
use tests::gpu::*;

fn random_tokens(rng: &mut Rng, n: usize, vocab: usize, distinct: usize) -> Vec<u32> {
    // `distinct` ids spread over the whole vocabulary (0 and vocab - 1 among them), drawn with
    // repeats.
    let ids: Vec<u32> = (0..distinct)
        .map(|i| {
            if distinct == 1 {
                (vocab / 2) as u32
            } else {
                ((i * (vocab - 1)) / (distinct - 1)) as u32
            }
        })
        .collect();
    (0..n).map(|_| ids[rng.below(distinct)]).collect()
}

/// (bt, vocab, distinct ids): edge sizes and shapes.
const CASES: [(usize, usize, usize); 10] = [
    (1, 1, 1),
    (1, 50, 1),
    (7, 3, 3),
    (300, 50, 1),        // one token repeated
    (517, 50, 13),       // many repeats
    (257, 1025, 200),    // per-thread chunks of 2 in the scan, the last threads empty
    (3000, 7, 7),        // more tokens than ids: cap = vocab
    (2000, 50257, 1800), // GPT-2's vocabulary
    (1024, 5000, 1024),
    (600, 2048, 300), // the scan's last thread owns the largest id (vocab - 1)
];

fn check_index_builds(g: &Gpu, seed: u64) {
    let mut rng = Rng(seed);
    for (bt, vocab, distinct) in CASES {
        let index = encoder::EncoderIndex::new(g, bt, vocab).unwrap();
        // Another batch first, so the second build starts from a used index and scratch.
        let before = random_tokens(&mut rng, bt, vocab, distinct.max(2).min(vocab));
        let tokens = random_tokens(&mut rng, bt, vocab, distinct);
        for (what, toks) in [("first batch", &before), ("second batch", &tokens)] {
            index.fill_bytes(g, 0xFF).unwrap();
            let dtok = g
                .upload(&toks.iter().map(|&t| t as i32).collect::<Vec<_>>())
                .unwrap();
            index.build_on_device(g, Ptr::of(&dtok)).unwrap();
            let got = index.download(g).unwrap();
            let want = encoder::EncoderIndex::host_reference(toks, vocab).unwrap();
            assert_eq!(
                got,
                want,
                "device index != host index ({what}, bt {bt}, vocab {vocab}, {distinct} ids, {:?})",
                g.props().name
            );
        }
    }
}

#[test]
fn device_index_is_the_host_counting_sort() {
    check_index_builds(&gpu(), 1);
}

#[test]
fn device_index_does_not_depend_on_the_order_of_the_atomics() {
    let g = gpu();
    if on_gpu(&g) {
        return; // the schedules are the harness's; on a GPU the first test covers it
    }
    for seed in [3, 4] {
        check_index_builds(&Gpu::harness(Schedule::Random(seed)), 10 + seed);
    }
    check_index_builds(&Gpu::harness(Schedule::Reverse), 20);
}

#[test]
fn encoder_backward_is_bit_identical_from_either_index() {
    let g = gpu();
    let mut rng = Rng(9);
    let (b, t, c, vocab) = (3usize, 41usize, 24usize, 97usize);
    let bt = b * t;
    let tokens = random_tokens(&mut rng, bt, vocab, 30);
    let dout = g.upload(&rng.vec_bf16(bt * c, 1.0)).unwrap();
    let (gwte0, gwpe0) = (rng.vec_bf16(vocab * c, 0.1), rng.vec_bf16(t * c, 0.1));
    let dtok = g
        .upload(&tokens.iter().map(|&t| t as i32).collect::<Vec<_>>())
        .unwrap();
    let host = encoder::EncoderIndex::build(&g, &tokens, vocab).unwrap();
    let dev = encoder::EncoderIndex::new(&g, bt, vocab).unwrap();
    dev.build_on_device(&g, Ptr::of(&dtok)).unwrap();
    let run = |index: &encoder::EncoderIndex| {
        let (gwte, gwpe) = (g.upload(&gwte0).unwrap(), g.upload(&gwpe0).unwrap());
        encoder::encoder_backward_indexed(
            &g,
            Ptr::of(&gwte),
            Ptr::of(&gwpe),
            Ptr::of(&dout),
            index,
            b,
            t,
            c,
        )
        .unwrap();
        (g.download(&gwte).unwrap(), g.download(&gwpe).unwrap())
    };
    let (from_host, from_dev) = (run(&host), run(&dev));
    assert_eq!(bits(&from_host.0), bits(&from_dev.0), "dwte");
    assert_eq!(bits(&from_host.1), bits(&from_dev.1), "dwpe");
    // ...and the gradient did move (the index was not empty).
    assert_ne!(bits(&from_dev.0), bits(&gwte0));
    let _: &[bf16] = &gwpe0;
}

// ---- stream capture (runtime::cuda::graph) ----

#[test]
fn capture_records_arguments_by_value_and_runs_nothing_until_launched() {
    use gpt::cuda::kernels::global_norm;
    let g = gpu();
    let x0: Vec<bf16> = (0..300).map(|i| bf16::from_f32(1.0 + i as f32)).collect();
    let x = g.upload(&x0).unwrap();
    let norm = g.upload(&[4.0f32]).unwrap();
    g.begin_capture().unwrap();
    {
        // The scalar lives only in this scope: the graph must hold its value, not its address.
        let max_norm = 2.0f32;
        global_norm::clip_by_norm_bf16(&g, Ptr::of(&x), Ptr::of(&norm), max_norm).unwrap();
    }
    // What a capture cannot record is refused, naming the operation; the capture goes on.
    let refused = [
        g.alloc::<f32>(4).map(|_| ()).unwrap_err(),
        g.copy_to_device(&[1.0f32], &norm).unwrap_err(),
        g.download(&norm).map(|_| ()).unwrap_err(),
        g.synchronize("a test").unwrap_err(),
    ];
    for e in &refused {
        assert_eq!(e.code, runtime::cuda::CAPTURE_UNSUPPORTED, "{e}");
        assert!(e.to_string().contains("capturing"), "{e}");
    }
    let graph = g.end_capture().unwrap();
    assert_eq!(graph.launches(), 1);
    assert_eq!(
        bits(&g.download(&x).unwrap()),
        bits(&x0),
        "capture ran the kernel"
    );
    // Two replays: scaled twice by 2 / (4 + 1e-6), each rounded to bf16.
    let scale = 2.0f32 / (4.0f32 + 1e-6f32);
    let mut want = x0.clone();
    for _ in 0..2 {
        g.launch_graph(&graph).unwrap();
        want = want
            .iter()
            .map(|v| bf16::from_f32(v.to_f32() * scale))
            .collect();
    }
    assert_eq!(bits(&g.download(&x).unwrap()), bits(&want));
    // The device buffer the kernel reads is read at replay time: a new norm below max_norm
    // means no clipping.
    g.copy_to_device(&[1.0f32], &norm).unwrap();
    g.launch_graph(&graph).unwrap();
    assert_eq!(bits(&g.download(&x).unwrap()), bits(&want));
    assert!(g.end_capture().is_err(), "end_capture without a capture");
}

// ---- the training step on the device, with and without graphs ----

use gpt::backend::{Backend, StepUpdate};
use gpt::config::ModelConfig;
use gpt::cpu::ops::AdamW;
use gpt::cuda::CudaBackend;
use gpt::layout::{Arena, TensorRef};
use gpt::model::{Gpt, PrecisionPlan};
use gpt::precision::BackwardMode;

#[derive(Clone, Copy, PartialEq, Debug)]
enum StepPath {
    /// grad_norm read back, clip factor on the host, adamw: the reference.
    Host,
    Device,
    DeviceGraphs,
}

struct Trained {
    losses: Vec<u32>,
    norms: Vec<u32>,
    params: Vec<u32>,
    master: Vec<u32>,
    m: Vec<u32>,
    v: Vec<u32>,
    /// The device step's per-step 4-bit telemetry (empty on the host path).
    telemetry: Vec<Option<gpt::mx::MxTelemetry>>,
    /// The per-site telemetry of the whole run.
    sites: Vec<gpt::mx::SiteTelemetry>,
    /// Delayed FP8 scaling's state at the end (amax rings and call counts).
    fp8: Option<gpt::mx::fp8::Fp8State>,
}

fn f32_bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// `steps` steps of the tiny model (2 micro batches each, fresh tokens every micro batch, a
/// learning rate that changes every step, clipping that engages on some steps).
fn train_tiny(path: StepPath, steps: usize) -> Trained {
    train_tiny_in(
        path,
        steps,
        BackwardMode::Bf16,
        ForwardConfig::HIGH_PRECISION,
    )
}

use gpt::mx::fp8::{ForwardConfig, Fp8Scaling};

/// `train_tiny` with the backward in `mode` (a 4-bit mode draws fresh random streams per step
/// and micro batch: a graph replay must not reuse the captured ones).
fn train_tiny_in(path: StepPath, steps: usize, mode: BackwardMode, fwd: ForwardConfig) -> Trained {
    let mut cfg = ModelConfig::named("tiny").unwrap();
    cfg.vocab = 1001;
    cfg.padded_vocab = 1024;
    let (batch, seq, accum) = (2, 32, 2);
    let gpt = Gpt::new(cfg, batch, seq).unwrap();
    let mut be = CudaBackend::on(gpu(), &gpt.cfg, batch, seq).unwrap();
    be.set_cuda_graphs(path == StepPath::DeviceGraphs);
    let all = TensorRef {
        arena: Arena::Params,
        offset: 0,
        len: gpt.params.total,
    };
    be.write(all, &gpt.init_params(3)).unwrap();
    let plan = PrecisionPlan::uniform(mode, gpt.cfg.layers);
    be.set_mx_config(gpt::mx::MxConfig {
        mode,
        hadamard_block: 32,
        signs: gpt::mx::HadamardSigns::Fresh,
        seed: 11,
    })
    .unwrap();
    be.set_forward_config(fwd).unwrap();
    let bt = batch * seq;
    let mut rng = Rng(77);
    let (mut losses, mut norms, mut telemetry) = (vec![], vec![], vec![]);
    let loss_scale = 1.0 / (bt * accum) as f32;
    // Clipping at 0.5 engages on the first steps of this run (norms ~1-2), not on all.
    let grad_clip = 0.5f32;
    for step in 0..steps {
        be.zero_grads().unwrap();
        let mut loss_sum = 0f64;
        for micro in 0..accum {
            let inp: Vec<u32> = (0..bt).map(|_| rng.below(cfg.vocab) as u32).collect();
            let tgt: Vec<u32> = (0..bt).map(|_| rng.below(cfg.vocab) as u32).collect();
            be.set_tokens(&inp, Some(&tgt)).unwrap();
            if path == StepPath::Host {
                let l = gpt
                    .forward_backward(&mut be, &plan, step as u32, micro as u32, loss_scale)
                    .unwrap();
                loss_sum += l as f64;
            } else {
                gpt.forward_backward_on_device(
                    &mut be,
                    &plan,
                    step as u32,
                    micro as u32,
                    loss_scale,
                )
                .unwrap();
            }
        }
        let adamw = AdamW {
            lr: 1e-3 * (1.0 + step as f32) / steps as f32,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            t: step as u64 + 1,
            grad_scale: 1.0,
        };
        if path == StepPath::Host {
            let norm = be.grad_norm().unwrap();
            let grad_scale = if norm > grad_clip {
                grad_clip / norm
            } else {
                1.0
            };
            be.adamw(&AdamW {
                grad_scale,
                ..adamw
            })
            .unwrap();
            losses.push(((loss_sum / accum as f64) as f32).to_bits());
            norms.push(norm.to_bits());
        } else {
            be.device_step(&StepUpdate {
                adamw,
                grad_clip,
                micro_batches: accum,
            })
            .unwrap();
        }
    }
    if path != StepPath::Host {
        // One read-back for the whole run.
        let stats = be.take_step_stats().unwrap();
        assert_eq!(
            stats.iter().map(|s| s.t).collect::<Vec<_>>(),
            (1..=steps as u64).collect::<Vec<_>>()
        );
        losses = stats.iter().map(|s| s.loss.to_bits()).collect();
        norms = stats.iter().map(|s| s.norm.to_bits()).collect();
        telemetry = stats.iter().map(|s| s.mx.clone()).collect();
        assert!(be.take_step_stats().unwrap().is_empty());
    }
    // With graphs: the first micro batch and the first finish run directly (warm-up), the
    // second of each is recorded, then replays only.
    let want = match path {
        StepPath::DeviceGraphs => (2, steps * (accum + 1) - 2),
        _ => (0, 0),
    };
    assert_eq!(be.graph_counts(), want, "(graphs recorded, graph launches)");
    let (master, m, v) = be.read_optimizer().unwrap();
    Trained {
        fp8: be.fp8_state().unwrap(),
        sites: be.take_mx_site_telemetry(),
        telemetry,
        losses,
        norms,
        params: f32_bits(&be.read(all).unwrap()),
        master: f32_bits(&master),
        m: f32_bits(&m),
        v: f32_bits(&v),
    }
}

fn assert_same(what: &str, got: &Trained, want: &Trained) {
    let f = |b: &[u32]| b.iter().map(|&x| f32::from_bits(x)).collect::<Vec<_>>();
    assert_eq!(f(&got.losses), f(&want.losses), "{what}: losses");
    assert_eq!(f(&got.norms), f(&want.norms), "{what}: gradient norms");
    for (name, a, b) in [
        ("bf16 parameters", &got.params, &want.params),
        ("master weights", &got.master, &want.master),
        ("first moments", &got.m, &want.m),
        ("second moments", &got.v, &want.v),
    ] {
        let diff = a.iter().zip(b.iter()).filter(|(x, y)| x != y).count();
        assert_eq!(diff, 0, "{what}: {diff} of {} {name} differ", a.len());
    }
}

#[test]
fn device_step_and_graph_replay_are_bit_identical_to_the_host_step() {
    let steps = 3;
    let host = train_tiny(StepPath::Host, steps);
    // Clipping engaged on some steps and not on others, and the loss fell: a real run.
    let norms: Vec<f32> = host.norms.iter().map(|&b| f32::from_bits(b)).collect();
    assert!(norms.iter().any(|&n| n > 0.5), "{norms:?}");
    let device = train_tiny(StepPath::Device, steps);
    assert_same("device step", &device, &host);
    let graphs = train_tiny(StepPath::DeviceGraphs, steps);
    assert_same("graph replay", &graphs, &host);
}

#[test]
fn graph_replay_of_the_4_bit_backward_is_bit_identical() {
    // Each GEMM's SR noise and RHT signs come from a stream keyed by step and micro batch:
    // replays read those bits from device memory. MXFP4 with RHT + SR (fresh signs), NVFP4
    // (SR on the gradient, fixed signs).
    let steps = 2;
    for mode in [BackwardMode::Mxfp4, BackwardMode::Nvfp4] {
        let fwd = ForwardConfig::HIGH_PRECISION;
        let direct = train_tiny_in(StepPath::Device, steps, mode, fwd);
        let graphs = train_tiny_in(StepPath::DeviceGraphs, steps, mode, fwd);
        assert_same(&format!("{mode} graph replay"), &graphs, &direct);
        // The step's telemetry too: replays count the elements their run counted.
        assert!(direct
            .telemetry
            .iter()
            .all(|t| t.as_ref().is_some_and(|t| t.elements > 0)));
        assert_eq!(graphs.telemetry, direct.telemetry, "{mode} telemetry");
    }
}

#[test]
fn graph_replay_of_the_fp8_forward_with_current_scaling_is_bit_identical() {
    // Current scaling computes every scale on the device: nothing per call goes by value.
    // The per-layer FP8 telemetry counts the replays' elements too.
    let fwd = ForwardConfig {
        mode: gpt::precision::ForwardMode::Fp8,
        scaling: Fp8Scaling::Current,
    };
    let direct = train_tiny_in(StepPath::Device, 2, BackwardMode::Bf16, fwd);
    let graphs = train_tiny_in(StepPath::DeviceGraphs, 2, BackwardMode::Bf16, fwd);
    assert_same("fp8 graph replay", &graphs, &direct);
    assert!(!direct.sites.is_empty());
    assert_eq!(graphs.sites, direct.sites, "fp8 per-layer telemetry");
}

#[test]
fn graph_replay_of_the_fp8_forward_with_delayed_scaling_is_bit_identical() {
    // Delayed scaling records each training call's amax into its tensor's ring at slot
    // calls % history: the count lives on the device and the amax kernel advances it, so every
    // replay records into its own slot. 3 steps x 2 micro batches = 6 calls per tensor through
    // rings of 4: the window slides and wraps.
    let (steps, history) = (3, 4);
    let fwd = ForwardConfig {
        mode: gpt::precision::ForwardMode::Fp8,
        scaling: Fp8Scaling::Delayed { history },
    };
    let direct = train_tiny_in(StepPath::Device, steps, BackwardMode::Bf16, fwd);
    let graphs = train_tiny_in(StepPath::DeviceGraphs, steps, BackwardMode::Bf16, fwd);
    assert_same("fp8 delayed graph replay", &graphs, &direct);
    let want = direct.fp8.as_ref().expect("delayed scaling has a state");
    assert!(
        want.calls.iter().all(|&c| c == (steps * 2) as u64),
        "{:?}",
        want.calls
    );
    assert!(want.amax.iter().all(|&a| a > 0.0), "every slot recorded");
    let got = graphs.fp8.as_ref().expect("delayed scaling has a state");
    assert_eq!(got.calls, want.calls, "call counts");
    assert_eq!(f32_bits(&got.amax), f32_bits(&want.amax), "amax rings");
    assert_eq!(graphs.sites, direct.sites, "fp8 per-layer telemetry");
}

#[test]
fn a_non_finite_loss_stops_the_updates_on_the_device() {
    // The trainer stops "before updating the weights" at a non-finite loss or norm; on the
    // device step it reads them after the update was queued, so the device must skip it (and
    // every later one).
    let mut cfg = ModelConfig::named("tiny").unwrap();
    cfg.vocab = 101;
    cfg.padded_vocab = 128;
    let (batch, seq) = (1, 16);
    let gpt = Gpt::new(cfg, batch, seq).unwrap();
    let mut be = CudaBackend::on(gpu(), &gpt.cfg, batch, seq).unwrap();
    be.set_cuda_graphs(false); // whatever MXGPT_CUDA_GRAPH a trainer test set meanwhile
    let all = TensorRef {
        arena: Arena::Params,
        offset: 0,
        len: gpt.params.total,
    };
    let mut init = gpt.init_params(5);
    init[3] = f32::NAN; // a token embedding: its row's logits, hence the loss, become NaN
    be.write(all, &init).unwrap();
    let plan = PrecisionPlan::uniform(BackwardMode::Bf16, gpt.cfg.layers);
    let before = be.read_optimizer().unwrap();
    for step in 0..2u64 {
        be.zero_grads().unwrap();
        let toks: Vec<u32> = (0..batch * seq).map(|i| (i % cfg.vocab) as u32).collect();
        be.set_tokens(&toks, Some(&toks)).unwrap();
        gpt.forward_backward_on_device(&mut be, &plan, step as u32, 0, 1.0 / 16.0)
            .unwrap();
        be.device_step(&StepUpdate {
            adamw: AdamW {
                lr: 1e-3,
                beta1: 0.9,
                beta2: 0.95,
                eps: 1e-8,
                weight_decay: 0.1,
                t: step + 1,
                grad_scale: 1.0,
            },
            grad_clip: 1.0,
            micro_batches: 1,
        })
        .unwrap();
    }
    let stats = be.take_step_stats().unwrap();
    assert_eq!(stats.len(), 2);
    assert!(stats.iter().all(|s| !s.loss.is_finite()), "{stats:?}");
    let after = be.read_optimizer().unwrap();
    for (name, a, b) in [
        ("master weights", &after.0, &before.0),
        ("first moments", &after.1, &before.1),
        ("second moments", &after.2, &before.2),
    ] {
        assert_eq!(f32_bits(a), f32_bits(b), "{name} changed after a NaN loss");
    }
}

// ---- the trainer's loop on the CUDA backend: the deferred read of the device step ----
//
// `train_gpt --device cuda` runs here on the harness (MXGPT_CUDA_HARNESS=1, unless the tests
// run on a GPU). The reference is the same run with `--skip-outliers` at a z-score no step
// reaches: that takes the host path (the norm read back before the update, every step
// synchronous), which gpu_step's tests above show is bit-identical to the device step.

use serde_json::Value;
use std::path::{Path, PathBuf};

fn trainer_on_this_device() {
    if !on_gpu(&gpu()) {
        std::env::set_var("MXGPT_CUDA_HARNESS", "1");
    }
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mxgpt-gpu-step-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// PREFIX_train / PREFIX_val of short repeated random phrases (ids 100..600).
fn dataset(dir: &Path) -> String {
    let prefix = dir.join("synth").to_string_lossy().to_string();
    let mut rng = Rng(12345);
    for (part, docs) in [("train", 40), ("val", 11)] {
        let mut w = dataio::MegatronWriter::create(&format!("{prefix}_{part}"), dataio::Dtype::U16)
            .unwrap();
        for _ in 0..docs {
            let phrase: Vec<u32> = (0..5).map(|_| 100 + rng.below(500) as u32).collect();
            let doc: Vec<u32> = phrase.iter().cycle().take(60).copied().collect();
            w.add_document(&doc).unwrap();
        }
        w.finish().unwrap();
    }
    prefix
}

/// A small model at B = 1, T = 16 (unless `extra` sets --seq), one micro batch per step: the harness runs the LM head over
/// GPT-2's whole vocabulary (the trainer has no smaller one), so everything else is small.
fn run(
    dir: &Path,
    name: &str,
    host_path: bool,
    extra: &[&str],
) -> (Result<gpt::trainer::TrainSummary, String>, Vec<Value>) {
    run_with(dir, name, host_path, extra, false)
}

/// The trainer's backend reads MXGPT_CUDA_GRAPH when it opens: trainer runs take turns, each
/// with the variable as it asks.
static TRAINER_ENV: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `run`, with CUDA graphs (MXGPT_CUDA_GRAPH=1) when `graphs`.
fn run_with(
    dir: &Path,
    name: &str,
    host_path: bool,
    extra: &[&str],
    graphs: bool,
) -> (Result<gpt::trainer::TrainSummary, String>, Vec<Value>) {
    let _turn = TRAINER_ENV.lock().unwrap_or_else(|e| e.into_inner());
    match graphs {
        true => std::env::set_var("MXGPT_CUDA_GRAPH", "1"),
        false => std::env::remove_var("MXGPT_CUDA_GRAPH"),
    }
    let r = run_unlocked(dir, name, host_path, extra);
    std::env::remove_var("MXGPT_CUDA_GRAPH");
    r
}

fn run_unlocked(
    dir: &Path,
    name: &str,
    host_path: bool,
    extra: &[&str],
) -> (Result<gpt::trainer::TrainSummary, String>, Vec<Value>) {
    let data = dataset(dir);
    let log = dir.join(format!("{name}.jsonl"));
    let ckpt = dir.join(format!("{name}-ckpt"));
    let (log_s, ckpt_s) = (
        log.to_string_lossy().to_string(),
        ckpt.to_string_lossy().to_string(),
    );
    let mut words = vec![
        "--device",
        "cuda",
        "--model",
        "tiny",
        "--layers",
        "1",
        "--dim",
        "32",
        "--heads",
        "2",
        "--batch",
        "1",
        "--data",
        &data,
        "--eval-batches",
        "1",
        "--counters-every",
        "0",
        "--mx-telemetry-every",
        "3",
        "--log-json",
        &log_s,
        "--checkpoint-dir",
        &ckpt_s,
    ];
    if host_path {
        words.extend(["--skip-outliers", "1e30"]);
    }
    if !extra.contains(&"--seq") {
        words.extend(["--seq", "16"]);
    }
    words.extend(extra);
    trainer_on_this_device();
    let args = gpt::trainer::parse_args(&words).unwrap();
    let r = gpt::trainer::train(&args);
    let records = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (r, records)
}

/// The records without what depends on the clock (or on the path, by construction).
fn logged_numbers(records: &[Value]) -> Vec<Value> {
    records
        .iter()
        .map(|r| {
            let mut r = r.clone();
            if let Some(o) = r.as_object_mut() {
                for k in ["ms", "tokens_per_s", "mfu", "comm_ms"] {
                    o.remove(k);
                }
                if let Some(mx) = o.get_mut("mx").and_then(|m| m.as_object_mut()) {
                    mx.remove("quantize_seconds");
                }
            }
            r
        })
        .collect()
}

fn master_weights(ckpt: &Path, step: u64) -> Vec<u32> {
    let ck = gpt::checkpoint::load(&ckpt.join(gpt::checkpoint::file_name(step))).unwrap();
    ck.params.iter().map(|x| x.to_bits()).collect()
}

fn trainer_logs_match(mode: &[&str], tag: &str, read_late: u64) {
    let dir = tmpdir(tag);
    let mut extra = vec![
        "--steps",
        "5",
        "--eval-every",
        "2",
        "--checkpoint-every",
        "2",
    ];
    extra.extend(mode);
    let (lagged, lagged_log) = run(&dir, "lagged", false, &extra);
    let (host, host_log) = run(&dir, "host", true, &extra);
    let (lagged, host) = (lagged.unwrap(), host.unwrap());
    // The deferred read happened: of 5 steps, 2 and 4 (eval and checkpoint), 5 (the last) and
    // in a 4-bit mode 3 (per-layer telemetry) are read at once, the others after the next was
    // queued.
    assert_eq!(
        lagged.steps_read_late, read_late,
        "device steps read after the next was queued"
    );
    assert_eq!(host.steps_read_late, 0);
    let bits = |v: &[(u64, f32)]| v.iter().map(|&(s, l)| (s, l.to_bits())).collect::<Vec<_>>();
    assert_eq!(bits(&lagged.losses), bits(&host.losses), "losses");
    assert_eq!(
        bits(&lagged.val_losses),
        bits(&host.val_losses),
        "validation losses"
    );
    assert_eq!(lagged.val_losses.len(), 3);
    // Every logged record (train, eval, mx_layers) but the clock's.
    assert_eq!(logged_numbers(&lagged_log), logged_numbers(&host_log));
    assert!(lagged_log.iter().any(|r| r["type"] == "eval"));
    if !mode.is_empty() {
        // The 4-bit telemetry was logged: every step's, and the per-layer records.
        let train = lagged_log.iter().filter(|r| r["type"] == "train");
        assert!(
            train.clone().count() == 5
                && train
                    .clone()
                    .all(|r| r["mx"]["relative_error"].as_f64() > Some(0.0))
        );
        assert!(lagged_log.iter().any(|r| r["type"] == "mx_layers"));
    }
    // The checkpoints hold the same weights.
    for step in [2, 4, 5] {
        assert_eq!(
            master_weights(&dir.join("lagged-ckpt"), step),
            master_weights(&dir.join("host-ckpt"), step),
            "checkpoint of step {step}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn trainer_logs_are_identical_with_the_deferred_read() {
    trainer_logs_match(&[], "bf16", 2);
}

#[test]
fn trainer_logs_are_identical_with_the_deferred_read_mxfp4() {
    // The step's MX telemetry comes back with its loss and norm; the per-layer records of
    // step 3 are read before step 4 is queued.
    // T = 32: wgrad's K is the micro batch's tokens, a multiple of the MX block.
    let mode = [
        "--backward",
        "mxfp4",
        "--hadamard-block",
        "32",
        "--seq",
        "32",
    ];
    trainer_logs_match(&mode, "mxfp4", 1);
}

#[test]
fn trainer_runs_are_identical_with_cuda_graphs() {
    // `train_gpt --device cuda` with MXGPT_CUDA_GRAPH=1 against the same run without: the
    // hardest modes at once (MXFP4 backward with RHT and SR, FP8 forward with delayed scaling
    // and a ring of 2 that wraps), 2 micro batches per step (the replays see fresh tokens, step
    // and micro-batch bits), evaluation between steps (direct, non-recording FP8 calls). Logs,
    // validation losses and checkpoint files bit for bit.
    let dir = tmpdir("graphs");
    let extra = [
        "--steps",
        "3",
        "--eval-every",
        "2",
        "--checkpoint-every",
        "2",
        "--seq",
        "32",
        "--total-batch-tokens",
        "64",
        "--backward",
        "mxfp4",
        "--hadamard-block",
        "32",
        "--forward",
        "fp8",
        "--fp8-scaling",
        "delayed",
        "--fp8-amax-history",
        "2",
    ];
    let (graphs, graphs_log) = run_with(&dir, "graphs", false, &extra, true);
    let (direct, direct_log) = run_with(&dir, "direct", false, &extra, false);
    let (graphs, direct) = (graphs.unwrap(), direct.unwrap());
    let bits = |v: &[(u64, f32)]| v.iter().map(|&(s, l)| (s, l.to_bits())).collect::<Vec<_>>();
    assert_eq!(graphs.losses.len(), 3);
    assert_eq!(bits(&graphs.losses), bits(&direct.losses), "losses");
    assert_eq!(direct.val_losses.len(), 2); // steps 2 and 3 (the last)
    assert_eq!(
        bits(&graphs.val_losses),
        bits(&direct.val_losses),
        "validation losses"
    );
    assert_eq!(logged_numbers(&graphs_log), logged_numbers(&direct_log));
    assert!(direct_log
        .iter()
        .any(|r| r["type"] == "train" && r["mx"]["relative_error"].as_f64() > Some(0.0)));
    for step in [2, 3] {
        let file = |run: &str| {
            std::fs::read(
                dir.join(format!("{run}-ckpt"))
                    .join(gpt::checkpoint::file_name(step)),
            )
            .unwrap()
        };
        assert!(
            file("graphs") == file("direct"),
            "checkpoint of step {step}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_non_finite_step_read_late_stops_with_the_host_paths_error() {
    // Step 3's checkpoint with NaN second moments: the resumed step 4 is finite but its update
    // makes every weight NaN, so step 5's loss is NaN. Step 5 is read after step 6 was queued
    // (6 is a checkpoint step): the error must name step 5 as the host path does, step 6 must
    // write no checkpoint, and step 3's must stay as it was.
    let dir = tmpdir("nan");
    let every = ["--checkpoint-every", "3", "--eval-every", "0"];
    let (first, _) = run(
        &dir,
        "first",
        false,
        &[&["--steps", "3"][..], &every].concat(),
    );
    first.unwrap();
    let src = dir.join("first-ckpt").join(gpt::checkpoint::file_name(3));
    let mut ck = gpt::checkpoint::load(&src).unwrap();
    ck.adam_v.iter_mut().for_each(|v| *v = f32::NAN);
    let mut errors = vec![];
    for (name, host_path) in [("lagged", false), ("host", true)] {
        let ckdir = dir.join(format!("{name}-ckpt"));
        std::fs::create_dir_all(&ckdir).unwrap();
        let planted = gpt::checkpoint::save(&ckdir, &ck).unwrap();
        let before = std::fs::read(&planted).unwrap();
        let resume = planted.to_string_lossy().to_string();
        let words = [&["--steps", "8", "--resume", &resume][..], &every].concat();
        let (r, log) = run(&dir, name, host_path, &words);
        let e = r.expect_err("a NaN loss must end the run");
        assert!(e.starts_with("step 5: non-finite loss"), "{name}: {e}");
        let steps: Vec<u64> = log
            .iter()
            .filter(|r| r["type"] == "train")
            .map(|r| r["step"].as_u64().unwrap())
            .collect();
        assert_eq!(steps, [4], "{name}: logged steps");
        let left: Vec<u64> = gpt::checkpoint::list(&ckdir)
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(left, [3], "{name}: checkpoints after the error");
        assert!(
            std::fs::read(&planted).unwrap() == before,
            "{name}: step 3's checkpoint changed"
        );
        errors.push(e.replace(&*ckdir.to_string_lossy(), "CKPT"));
    }
    assert_eq!(errors[0], errors[1]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tokens_go_up_from_alternating_pinned_sets() {
    // Each micro batch's tokens are staged in pinned memory, two sets in turn, copied without
    // waiting; the device must hold exactly this batch's tokens (a copy from the other set
    // would give the previous batch's), and the set's copies stay tracked until it is refilled.
    let mut cfg = ModelConfig::named("tiny").unwrap();
    cfg.vocab = 101;
    cfg.padded_vocab = 128;
    let (batch, seq) = (2, 16);
    let mut be = CudaBackend::on(gpu(), &cfg, batch, seq).unwrap();
    let mut rng = Rng(5);
    for round in 0..5 {
        let inp: Vec<u32> = (0..batch * seq).map(|_| rng.below(101) as u32).collect();
        let tgt: Vec<u32> = (0..batch * seq).map(|_| rng.below(101) as u32).collect();
        be.set_tokens(&inp, Some(&tgt)).unwrap();
        let set = round % 2;
        let pending = be.token_copies_pending();
        assert!(
            pending[2 * set] && pending[2 * set + 1],
            "round {round}: {pending:?}"
        );
        let (di, dt) = be.tokens_on_device().unwrap();
        let as_i32 = |v: &[u32]| v.iter().map(|&t| t as i32).collect::<Vec<_>>();
        assert_eq!(di, as_i32(&inp), "round {round}: inputs");
        assert_eq!(dt, as_i32(&tgt), "round {round}: targets");
        let index = be.encoder_index().download(be.gpu()).unwrap();
        let want = encoder::EncoderIndex::host_reference(&inp, 101).unwrap();
        assert_eq!(index, want, "round {round}: index");
    }
}
