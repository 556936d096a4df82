//! The CUDA backend's data-parallel collectives on the host execution harness, 2 and 3 MPI
//! ranks (feature `mpi`, Open MPI installed): `cargo test --release -p tests --features mpi
//! --test gpu_mpi`. This binary re-runs itself under mpirun (`device_collective_child`).

#![cfg(feature = "mpi")]

use gpt::backend::Backend;
use gpt::checkpoint;
use gpt::config::ModelConfig;
use gpt::cpu::ops::AdamW;
use gpt::cuda::dist::{reduce_scatter_sum, CollectiveKind, DeviceCollective, HostStaged};
use gpt::cuda::CudaBackend;
use gpt::dist::{zero1, Local, Shards, Transport};
use gpt::layout::{Arena, TensorRef};
use gpt::model::{Gpt, PrecisionPlan};
use gpt::mx::MxConfig;
use gpt::precision::BackwardMode;
use gpt::rng::SplitMix64;
use runtime::cuda::half::bf16;
use std::path::Path;
use tests::gpu::*;
use tests::mpirun::run_child;

#[test]
fn host_staged_device_collectives_sum_in_rank_order_and_regather_exactly() {
    for np in [2, 3] {
        run_child(
            np,
            "device_collective_child",
            "device collective child: ok",
            &[],
        );
    }
}

/// Rank r's gradient value i: mixed magnitudes, so the order of a sum shows in its bits.
fn grad(r: usize, i: usize) -> bf16 {
    let x = ((r * 1_000_003 + i) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mant = (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
    bf16::from_f32(mant * [1.0, 1e-3, 1e3, 1e-7][(x >> 20 & 3) as usize])
}

#[test]
fn device_collective_child() {
    if std::env::var("MXGPT_MPI_CHILD").is_err() {
        return; // only under mpirun, started by the test above
    }
    let dist = gpt::dist::from_env().unwrap();
    let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        check(&HostStaged {
            dist: dist.as_ref(),
        })
    }));
    let gathered =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check_gather(dist.as_ref())));
    if checked.is_err() || gathered.is_err() {
        dist.abort(1);
    }
    println!("device collective child: ok");
}

/// `Transport::gather` (the checkpoint's master weights to rank 0): every shard in place on
/// the root, for each root; elsewhere the (empty) output untouched.
fn check_gather(dist: &dyn Transport) {
    let (me, n) = (dist.rank(), dist.size());
    for total in [1usize, 7, 4099] {
        let shards = Shards::even(total, n);
        let value = |i: usize| (i * 31 % 1009) as f32 - 0.5;
        let mine: Vec<f32> = shards.range(me).map(value).collect();
        for root in 0..n {
            let mut buf = vec![f32::NAN; if me == root { total } else { 0 }];
            dist.gather(&mine, &shards, root, &mut buf).unwrap();
            if me == root {
                for (i, x) in buf.iter().enumerate() {
                    assert_eq!(
                        x.to_bits(),
                        value(i).to_bits(),
                        "gather to {root}: {i} of {total}"
                    );
                }
            }
        }
    }
}

fn check(dc: &dyn DeviceCollective) {
    let g = gpu();
    let (me, n) = (dc.rank(), dc.size());
    let in_order = |i: usize| {
        let s = (1..n).fold(grad(0, i).to_f32(), |s, r| s + grad(r, i).to_f32());
        bf16::from_f32(s).to_bits()
    };
    for total in [1usize, 2, 7, 1001, 4099] {
        let shards = Shards::even(total, n);
        let mine = shards.range(me);
        let host: Vec<bf16> = (0..total).map(|i| grad(me, i)).collect();
        let grads = g.upload(&host).unwrap();
        let parts = poisoned::<bf16>(&g, mine.len() * n);
        reduce_scatter_sum(dc, &g, &grads, &shards, &parts).unwrap();
        let got = g.download(&grads).unwrap();
        for i in mine.clone() {
            assert_eq!(
                got[i].to_bits(),
                in_order(i),
                "reduce-scatter element {i} of {total}"
            );
        }
        // Outside this rank's shard the gradients are untouched.
        for i in (0..total).filter(|i| !mine.contains(i)) {
            assert_eq!(
                got[i].to_bits(),
                host[i].to_bits(),
                "element {i} of {total} moved"
            );
        }
        // The all-gather of the summed shards: every element everywhere, bit for bit.
        let buf = poisoned::<bf16>(&g, total);
        g.copy_to_device_at(&got[mine.clone()], &buf, mine.start)
            .unwrap();
        dc.all_gather(&g, &buf, &shards).unwrap();
        let all = g.download(&buf).unwrap();
        for (i, v) in all.iter().enumerate() {
            assert_eq!(
                v.to_bits(),
                in_order(i),
                "all-gather element {i} of {total}"
            );
        }
    }
}

const STEPS: u32 = 3;
/// Micro batches per step over all ranks (the 1-rank run's accumulation).
const ACCUM: usize = 2;

/// The tiny model with the vocabulary cut as gpu_train.rs does (the harness is slow), B=2 T=16.
fn model() -> Gpt {
    let mut cfg = ModelConfig::named("tiny").unwrap();
    cfg.vocab = 1001;
    cfg.padded_vocab = 1024;
    Gpt::new(cfg, 2, 16).unwrap()
}

/// A CUDA backend for this rank of `dist` (ZeRO-1 with N > 1), initial weights of `seed`.
fn backend(dist: &dyn Transport, mode: BackwardMode, seed: u64) -> CudaBackend {
    let gpt = model();
    let n = dist.size();
    let ranks = (dist.rank(), n);
    let mut be = CudaBackend::on_ranks(gpu(), &gpt.cfg, gpt.batch, gpt.seq, ranks).unwrap();
    if n > 1 {
        be.set_data_parallel(dist, CollectiveKind::HostStaged)
            .unwrap();
    }
    be.write(all_params(&gpt), &gpt.init_params(seed)).unwrap();
    be.set_mx_config(MxConfig {
        mode,
        hadamard_block: 32,
        signs: gpt::mx::HadamardSigns::Fresh,
        seed: 5,
    })
    .unwrap();
    be
}

fn all_params(gpt: &Gpt) -> TensorRef {
    TensorRef {
        arena: Arena::Params,
        offset: 0,
        len: gpt.params.total,
    }
}

/// The trainer's step on the CUDA backend (trainer::train_with, reduced to its arithmetic):
/// rank r runs micro batches r*A/N .. (r+1)*A/N, the MXFP4 randomness keyed by (step, micro);
/// with N ranks ZeRO-1 (zero1::reduce_gradients, this rank's shard of AdamW, gather_params).
/// Returns every step's loss and gradient norm.
fn run_steps(
    be: &mut CudaBackend,
    dist: &dyn Transport,
    mode: BackwardMode,
    steps: std::ops::Range<u32>,
) -> (Vec<f32>, Vec<f32>) {
    let gpt = model();
    let n = dist.size();
    let plan = PrecisionPlan::uniform(mode, gpt.cfg.layers);
    let bt = gpt.tokens_per_batch();
    let shards = Shards::even(gpt.params.total, n);
    let per_rank = ACCUM / n;
    let (mut losses, mut norms) = (vec![], vec![]);
    for step in steps {
        be.zero_grads().unwrap();
        let mut loss_sum = 0.0f64;
        for micro in 0..ACCUM {
            if micro / per_rank != dist.rank() {
                continue;
            }
            let mut r = SplitMix64::new(1000 * step as u64 + micro as u64);
            let mut toks = || -> Vec<u32> {
                (0..bt)
                    .map(|_| (r.next_u64() % gpt.cfg.vocab as u64) as u32)
                    .collect()
            };
            let (inp, tgt) = (toks(), toks());
            be.set_tokens(&inp, Some(&tgt)).unwrap();
            let scale = 1.0 / (bt * ACCUM) as f32;
            loss_sum += gpt
                .forward_backward(be, &plan, step, micro as u32, scale)
                .unwrap() as f64;
        }
        let (loss, norm) = if n == 1 {
            (loss_sum / ACCUM as f64, be.grad_norm().unwrap())
        } else {
            let loss = dist.sum_f64(loss_sum).unwrap() / ACCUM as f64;
            (loss, zero1::reduce_gradients(be, dist, &shards).unwrap())
        };
        be.adamw(&AdamW {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            t: step as u64 + 1,
            grad_scale: if norm > 1.0 { 1.0 / norm } else { 1.0 },
        })
        .unwrap();
        if n > 1 {
            zero1::gather_params(be, dist, &shards).unwrap();
        }
        losses.push(loss as f32);
        norms.push(norm);
    }
    (losses, norms)
}

/// `STEPS` steps from the initial weights; every step's loss and gradient norm, and the final
/// BF16 parameters.
fn train(dist: &dyn Transport, mode: BackwardMode) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut be = backend(dist, mode, 7);
    let (losses, norms) = run_steps(&mut be, dist, mode, 0..STEPS);
    (losses, norms, be.read(all_params(&model())).unwrap())
}

fn bits32(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn read_f32s(p: &Path) -> Vec<f32> {
    std::fs::read(p)
        .unwrap()
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// 2 ranks of the CUDA backend (host-staged collectives, on the harness) against 1 rank with 2
/// micro batches: the same data, MXFP4 streams and initial weights. Ranks agree bit for bit.
/// Against 1 rank the sum of the two micro gradients rounds differently: 1 rank accumulates the
/// second micro batch into the BF16 gradient buffer inside the backward ops, 2 ranks add two
/// finished BF16 gradients in FP32 and round once; the BF16 weights (stochastic rounding of the
/// FP32 master) then differ where a master weight moved across a rounding threshold.
#[test]
fn two_cuda_ranks_equal_one_rank_with_twice_the_accumulation() {
    let dir = std::env::temp_dir().join(format!("mxgpt-gpu-mpi-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for mode in [BackwardMode::Bf16, BackwardMode::Mxfp4] {
        let (l1, n1, p1) = train(&Local, mode);
        run_child(
            2,
            "cuda_ranks_child",
            "cuda ranks child: ok",
            &[
                ("MXGPT_DP_MODE", mode.name().as_ref()),
                ("MXGPT_DP_OUT", dir.as_os_str()),
            ],
        );
        let (p2a, p2b) = (
            read_f32s(&dir.join("params0")),
            read_f32s(&dir.join("params1")),
        );
        let l2 = read_f32s(&dir.join("losses0"));
        let n2 = read_f32s(&dir.join("norms0"));
        assert_eq!(
            bits32(&p2a),
            bits32(&p2b),
            "{mode}: the 2 ranks' parameters differ"
        );
        assert_eq!(bits32(&l2), bits32(&read_f32s(&dir.join("losses1"))));
        // The first step's loss is the same forward of the same weights on the same batches.
        assert_eq!(
            l1[0].to_bits(),
            l2[0].to_bits(),
            "{mode}: first loss {l1:?} vs {l2:?}"
        );
        // The difference against what training moved: the initial weights as the backend
        // holds them (BF16, round to nearest).
        let p0: Vec<f32> = model()
            .init_params(7)
            .iter()
            .map(|&x| bf16::from_f32(x).to_f32())
            .collect();
        let l2norm = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| ((x - y) as f64).powi(2))
                .sum::<f64>()
                .sqrt()
        };
        let (moved, apart) = (l2norm(&p1, &p0), l2norm(&p2a, &p1));
        let differ = p1
            .iter()
            .zip(&p2a)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        let rel = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .fold(0.0f32, |m, (x, y)| m.max((x - y).abs() / x.abs()))
        };
        let (dl, dn, dn1) = (rel(&l1, &l2), rel(&n1, &n2), rel(&n1[..1], &n2[..1]));
        eprintln!(
            "{mode}: 2 CUDA ranks vs 1 rank x 2 accumulation after {STEPS} steps: losses {dl:.2e}, gradient norms {dn:.2e} (first step {dn1:.2e}) relative; {differ} of {} BF16 weights differ; |p2 - p1| = {:.3} |p1 - p0|",
            p1.len(),
            apart / moved
        );
        // Measured 0.021 (bf16) and 0.098 (mxfp4); 0.06 / 0.12 while a shard's stochastic
        // rounding was keyed by the position in the shard instead of the global index.
        let limit = if mode == BackwardMode::Bf16 {
            0.04
        } else {
            0.15
        };
        assert!(
            apart / moved < limit,
            "{mode}: 2 ranks drifted from 1 rank: {:.3}",
            apart / moved
        );
        assert!(dl < 1e-3, "{mode}: losses drifted: {l1:?} vs {l2:?}");
        // The norm is not scale-invariant as AdamW's update nearly is: a lost or doubled
        // contribution shows here. Step 1 differs only by the rounding of the sum.
        assert!(
            dn1 < 1e-3 && dn < 2e-2,
            "{mode}: gradient norms {n1:?} vs {n2:?}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The overlapped gradient exchange (the default: per-layer buckets on a second stream, each
/// waiting for its layer's backward) against the serial one (`MXGPT_DP_OVERLAP=0`): 2 CUDA
/// ranks, MXFP4, 3 steps, bit for bit (losses, norms, every parameter), with the harness
/// running both streams eagerly, holding the main stream back (a bucket read before its
/// layer's backward ran would show) and holding the second stream back.
#[test]
fn overlapped_exchange_equals_the_serial_one_in_every_stream_order() {
    let dir = std::env::temp_dir().join(format!("mxgpt-gpu-overlap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let run = |overlap: &str, order: &str| -> Vec<Vec<u32>> {
        run_child(
            2,
            "cuda_ranks_child",
            "cuda ranks child: ok",
            &[
                ("MXGPT_DP_MODE", "mxfp4".as_ref()),
                ("MXGPT_DP_OUT", dir.as_os_str()),
                ("MXGPT_DP_OVERLAP", overlap.as_ref()),
                ("MXGPT_HARNESS_STREAMS", order.as_ref()),
            ],
        );
        ["params0", "params1", "losses0", "norms0"]
            .iter()
            .map(|f| bits32(&read_f32s(&dir.join(f))))
            .collect()
    };
    let serial = run("0", "eager");
    assert_eq!(serial[0], serial[1], "the 2 ranks' parameters differ");
    for order in ["eager", "main-late", "side-late"] {
        let overlapped = run("1", order);
        for (k, what) in [
            "rank 0's parameters",
            "rank 1's parameters",
            "losses",
            "norms",
        ]
        .iter()
        .enumerate()
        {
            let differ = (overlapped[k].iter().zip(&serial[k]))
                .filter(|(a, b)| a != b)
                .count();
            assert_eq!(
                differ, 0,
                "{order}: {what}: {differ} values differ from the serial exchange"
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `train_gpt --device cuda` itself on 2 MPI ranks (the trainer's data-parallel CUDA path:
/// `rank_backend`, the host-staged exchange, ZeRO-1 checkpoints), on the harness
/// (`MXGPT_CUDA_HARNESS=1`), MXFP4: the overlapped exchange against the serial one, eager and
/// with the main stream held back. Rank 0's logged numbers (what does not depend on the clock)
/// and every checkpoint file, bit for bit.
#[test]
fn the_cuda_trainer_on_two_ranks_overlaps_with_the_serial_bits() {
    let dir = std::env::temp_dir().join(format!("mxgpt-gpu-trainer-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let data = dir.join("synth").to_string_lossy().to_string();
    let mut rng = Rng(4242);
    for (part, docs) in [("train", 40), ("val", 11)] {
        let mut w =
            dataio::MegatronWriter::create(&format!("{data}_{part}"), dataio::Dtype::U16).unwrap();
        for _ in 0..docs {
            let doc: Vec<u32> = (0..60).map(|_| 100 + rng.below(500) as u32).collect();
            w.add_document(&doc).unwrap();
        }
        w.finish().unwrap();
    }
    let run = |name: &str, overlap: &str, order: &str| -> (Vec<String>, Vec<(String, Vec<u8>)>) {
        let out = dir.join(name);
        run_child(
            2,
            "cuda_trainer_child",
            "cuda trainer child: ok",
            &[
                ("MXGPT_TRAIN_OUT", out.as_os_str()),
                ("MXGPT_TRAIN_DATA", data.as_ref()),
                ("MXGPT_CUDA_HARNESS", "1".as_ref()),
                ("MXGPT_DEVICE_COLLECTIVE", "host".as_ref()),
                ("MXGPT_DP_OVERLAP", overlap.as_ref()),
                ("MXGPT_HARNESS_STREAMS", order.as_ref()),
            ],
        );
        let log = std::fs::read_to_string(out.join("log.jsonl")).unwrap();
        let numbers = log
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                if let Some(o) = v.as_object_mut() {
                    for k in ["ms", "tokens_per_s", "mfu", "comm_ms"] {
                        o.remove(k);
                    }
                    if let Some(mx) = o.get_mut("mx").and_then(|m| m.as_object_mut()) {
                        mx.remove("quantize_seconds");
                    }
                }
                v.to_string()
            })
            .collect();
        let mut files = Vec::new();
        let mut stack = vec![out.join("ckpt")];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_none_or(|x| x != "lock") {
                    // (the run lock holds the run's PID)
                    let rel = p.strip_prefix(&out).unwrap().to_string_lossy().to_string();
                    files.push((rel, std::fs::read(&p).unwrap()));
                }
            }
        }
        files.sort();
        (numbers, files)
    };
    let (serial_log, serial_files) = run("serial", "0", "eager");
    assert!(
        serial_log.len() >= 3,
        "the log has the steps: {serial_log:?}"
    );
    assert!(
        serial_files
            .iter()
            .any(|(n, _)| n.contains("shard") || n.contains("rank")),
        "the checkpoint has the ranks' shards: {:?}",
        serial_files.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    for (name, order) in [("overlap", "eager"), ("overlap-main-late", "main-late")] {
        let (log, files) = run(name, "1", order);
        assert_eq!(log, serial_log, "{name}: rank 0's log");
        let names = |f: &[(String, Vec<u8>)]| f.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(&files),
            names(&serial_files),
            "{name}: checkpoint files"
        );
        for (a, b) in files.iter().zip(&serial_files) {
            assert!(a.1 == b.1, "{name}: {} differs from the serial run's", a.0);
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cuda_trainer_child() {
    let Ok(out) = std::env::var("MXGPT_TRAIN_OUT") else {
        return; // only under mpirun, started by the test above
    };
    let data = std::env::var("MXGPT_TRAIN_DATA").unwrap();
    let (log, ckpt) = (format!("{out}/log.jsonl"), format!("{out}/ckpt"));
    #[rustfmt::skip]
    let words = [
        "--device", "cuda", "--model", "tiny", "--layers", "2", "--dim", "64", "--heads", "2",
        "--batch", "1", "--seq", "64", "--total-batch-tokens", "128", "--steps", "3",
        "--backward", "mxfp4", "--data", &data, "--eval-every", "3", "--eval-batches", "1",
        "--counters-every", "0", "--log-json", &log, "--checkpoint-dir", &ckpt,
        "--checkpoint-every", "2",
    ];
    let args = gpt::trainer::parse_args(&words).unwrap();
    let dist = gpt::dist::from_env().unwrap();
    if let Err(e) = gpt::trainer::train_with(&args, dist.as_ref()) {
        eprintln!("rank error: {e}");
        std::process::exit(1);
    }
    println!("cuda trainer child: ok");
}

#[test]
fn cuda_ranks_child() {
    let Ok(out) = std::env::var("MXGPT_DP_OUT") else {
        return; // only under mpirun, started by the test above
    };
    let mode: BackwardMode = std::env::var("MXGPT_DP_MODE").unwrap().parse().unwrap();
    let dist = gpt::dist::from_env().unwrap();
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| train(dist.as_ref(), mode)));
    let Ok((losses, norms, params)) = run else {
        dist.abort(1)
    };
    let r = dist.rank();
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    std::fs::write(Path::new(&out).join(format!("params{r}")), bytes(&params)).unwrap();
    std::fs::write(Path::new(&out).join(format!("losses{r}")), bytes(&losses)).unwrap();
    std::fs::write(Path::new(&out).join(format!("norms{r}")), bytes(&norms)).unwrap();
    println!("cuda ranks child: ok");
}

/// Checkpoints of 2 CUDA ranks (host-staged collectives, on the harness), MXFP4 backward: 2
/// steps, a checkpoint, 2 more steps; fresh backends with other initial weights, resumed from
/// the checkpoint, run the same 2 steps bit for bit (losses, norms, BF16 weights, every rank's
/// optimizer shard). The files are the CPU path's format (a model file marking 2 ranks, one
/// shard per rank, here with the BF16 parameters as a third array); 1 rank is refused by name;
/// a rank whose shard is missing fails every rank's load with an error, without a hang.
#[test]
fn two_cuda_ranks_resume_from_their_checkpoint_bit_exactly() {
    let dir = std::env::temp_dir().join(format!("mxgpt-gpu-ckpt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    run_child(
        2,
        "cuda_checkpoint_child",
        "cuda checkpoint child: ok",
        &[("MXGPT_DP_CKPT", dir.as_os_str())],
    );
    let p = dir.join(checkpoint::file_name(2));
    let h = checkpoint::peek(&p).unwrap();
    let n = model().params.total;
    assert_eq!((h.ranks, h.num_params, h.step), (2, n, 2));
    let shards = Shards::even(n, 2);
    for r in 0..2 {
        let range = shards.range(r);
        let arrays = checkpoint::load_shard(
            &dir,
            2,
            (r, 2),
            (range.start, range.len()),
            &mut |_, _, _| Ok(()),
        )
        .unwrap();
        assert_eq!(arrays, 3, "rank {r}: moments and BF16 parameters");
    }
    // Another number of ranks: the CPU path's refusal.
    let mut be = backend(&Local, BackwardMode::Bf16, 7);
    let e = zero1::load_device_checkpoint(&p, &h, &mut be, &Local).unwrap_err();
    assert!(
        e.contains("written by 2 rank(s), this run has 1") && e.contains("re-sharding"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cuda_checkpoint_child() {
    let Ok(dir) = std::env::var("MXGPT_DP_CKPT") else {
        return; // only under mpirun, started by the test above
    };
    let dist = gpt::dist::from_env().unwrap();
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        checkpoint_round_trip(dist.as_ref(), Path::new(&dir))
    }));
    if run.is_err() {
        dist.abort(1)
    }
    println!("cuda checkpoint child: ok");
}

fn checkpoint_round_trip(dist: &dyn Transport, dir: &Path) {
    use gpt::dist::zero1::DeviceZero1;
    let mode = BackwardMode::Mxfp4;
    let gpt = model();
    let mut a = backend(dist, mode, 7);
    run_steps(&mut a, dist, mode, 0..2);
    let h = checkpoint::Header {
        model: gpt.cfg,
        step: 2,
        num_params: gpt.params.total,
        ranks: dist.size(),
        train: serde_json::json!({}),
    };
    let path = zero1::save_device_checkpoint(dir, &h, &mut a, dist).unwrap();
    dist.barrier().unwrap(); // rank 0 writes the model file last
    let (la, na) = run_steps(&mut a, dist, mode, 2..4);
    // Other initial weights: everything must come from the checkpoint.
    let mut b = backend(dist, mode, 8);
    let h = checkpoint::peek(&path).unwrap();
    zero1::load_device_checkpoint(&path, &h, &mut b, dist).unwrap();
    let (lb, nb) = run_steps(&mut b, dist, mode, 2..4);
    let r = dist.rank();
    assert_eq!(
        bits32(&la),
        bits32(&lb),
        "rank {r}: losses after the resume"
    );
    assert_eq!(bits32(&na), bits32(&nb), "rank {r}: gradient norms");
    let all = all_params(&gpt);
    assert_eq!(
        bits32(&a.read(all).unwrap()),
        bits32(&b.read(all).unwrap()),
        "rank {r}: BF16 weights"
    );
    let (sa, sb) = (a.read_shard().unwrap(), b.read_shard().unwrap());
    assert_eq!(sa.offset, sb.offset);
    for (what, x, y) in [
        ("master weights", &sa.master, &sb.master),
        ("first moments", &sa.m, &sb.m),
        ("second moments", &sa.v, &sb.v),
    ] {
        assert_eq!(bits32(x), bits32(y), "rank {r}: {what}");
    }
    // A rank that cannot read its part: every rank gets an error, none is left waiting in the
    // parameter all-gather.
    let shard1 = checkpoint::shard_path(dir, 2, 1, 2);
    let away = shard1.with_extension("away");
    if r == 1 {
        std::fs::rename(&shard1, &away).unwrap();
    }
    dist.barrier().unwrap();
    let e = zero1::load_device_checkpoint(&path, &h, &mut b, dist).unwrap_err();
    let want = if r == 0 { "rank(s) [1]" } else { "rank1-of-2" };
    assert!(e.contains(want), "rank {r}: {e}");
    dist.barrier().unwrap();
    if r == 1 {
        std::fs::rename(&away, &shard1).unwrap();
    }
    dist.barrier().unwrap();
    // A rank that cannot write its shard (a directory where its file goes): every rank gets an
    // error, none waits in the master weights' gather, and no model file marks the step.
    let h9 = checkpoint::Header { step: 9, ..h };
    if r == 1 {
        std::fs::create_dir(checkpoint::shard_path(dir, 9, 1, 2)).unwrap();
    }
    dist.barrier().unwrap();
    let e = zero1::save_device_checkpoint(dir, &h9, &mut b, dist).unwrap_err();
    if r == 0 {
        assert!(e.contains("rank(s) [1] could not write their shard"), "{e}");
    }
    dist.barrier().unwrap();
    assert!(
        !dir.join(checkpoint::file_name(9)).exists(),
        "rank {r}: a model file for step 9"
    );
}
