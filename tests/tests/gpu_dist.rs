//! The data-parallel gradient sum on the device (ptx/kernels/dp_sum.cu, launcher
//! gpt::cuda::dist::rank_order_sum) against a host sum written here, bit for bit, with poisoned
//! outputs; and the host twin the trainer's docs cite against the same sum.

use gpt::cuda::dist::{rank_order_sum, rank_order_sum_host};
use gpt::cuda::kernels::Ptr;
use gpt::dist::Shards;
use runtime::cuda::half::bf16;
use runtime::cuda::{Gpu, Schedule};
use tests::gpu::*;

/// Rank r's part: magnitudes from 2^-12 to 2^12, so that the order of a sum of 3 or more parts
/// shows in its bits.
fn parts(rng: &mut Rng, n: usize, ranks: usize) -> Vec<bf16> {
    (0..n * ranks)
        .map(|i| bf16::from_f32(rng.f32(1.0) * 2f32.powi((i * 7 % 25) as i32 - 12)))
        .collect()
}

/// The rank-order FP32 sum, one rounding to BF16 (round to nearest even).
fn expected(p: &[bf16], n: usize, ranks: usize) -> Vec<u16> {
    (0..n)
        .map(|i| {
            let mut s = 0.0f32;
            for r in 0..ranks {
                s = if r == 0 {
                    p[i].to_f32()
                } else {
                    s + p[r * n + i].to_f32()
                };
            }
            bf16::from_f32(s).to_bits()
        })
        .collect()
}

#[test]
fn rank_order_sum_matches_the_host_sum_bit_for_bit() {
    let g = gpu();
    let mut rng = Rng(0x5EED_D15C);
    let mut order_shows = false;
    for ranks in [1usize, 2, 3, 5] {
        for n in [1usize, 255, 256, 257, 1000] {
            let p = parts(&mut rng, n, ranks);
            let want = expected(&p, n, ranks);
            let dp = g.upload(&p).unwrap();
            let out = poisoned::<bf16>(&g, n);
            rank_order_sum(&g, Ptr::of(&out), Ptr::of(&dp), n, ranks).unwrap();
            let got = bits(&g.download(&out).unwrap());
            assert_eq!(got, want, "ranks {ranks}, n {n}");
            assert_eq!(bits(&rank_order_sum_host(&p, n, ranks)), want, "host twin");
            // Reversed order differs somewhere once there are 3 ranks: the test can tell.
            let rev: Vec<u16> = (0..n)
                .map(|i| {
                    let s = (0..ranks)
                        .rev()
                        .fold(0.0f32, |s, r| s + p[r * n + i].to_f32());
                    bf16::from_f32(s).to_bits()
                })
                .collect();
            order_shows |= ranks >= 3 && rev != want;
        }
    }
    assert!(
        order_shows,
        "the inputs cannot tell the summation order apart"
    );
}

#[test]
fn rank_order_sum_checks_its_operands() {
    let g = gpu();
    let parts = g.alloc::<bf16>(10).unwrap();
    let out = g.alloc::<bf16>(5).unwrap();
    let e = rank_order_sum(&g, Ptr::of(&out), Ptr::of(&parts), 5, 3)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("rank_order_sum_bf16") && e.contains("parts"),
        "{e}"
    );
}

/// No shared memory and no barriers, so no schedule can change it; checked as for every kernel
/// (gpu_schedules.rs). Harness only.
#[test]
fn rank_order_sum_is_the_same_under_every_schedule() {
    if on_gpu(&gpu()) {
        return;
    }
    let (n, ranks) = (700, 3);
    let p = parts(&mut Rng(77), n, ranks);
    let want = expected(&p, n, ranks);
    for s in [
        Schedule::InOrder,
        Schedule::Reverse,
        Schedule::Random(1),
        Schedule::Random(2),
    ] {
        let g = Gpu::harness(s);
        let dp = g.upload(&p).unwrap();
        let out = poisoned::<bf16>(&g, n);
        rank_order_sum(&g, Ptr::of(&out), Ptr::of(&dp), n, ranks).unwrap();
        assert_eq!(bits(&g.download(&out).unwrap()), want, "{s:?}");
    }
}

/// Data-parallel set-up needs only the rank and the size of a transport (host-staged: no NCCL);
/// every collective is refused.
struct Pretend(usize, usize);

impl gpt::dist::Transport for Pretend {
    fn rank(&self) -> usize {
        self.0
    }
    fn size(&self) -> usize {
        self.1
    }
    fn reduce_scatter_sum(&self, _: &[f32], _: &Shards, _: &mut [f32]) -> Result<(), String> {
        Err("pretend".into())
    }
    fn exchange(&self, _: &[f32], _: &Shards, _: &mut [f32]) -> Result<(), String> {
        Err("pretend".into())
    }
    fn all_gather(&self, _: &mut [f32], _: &Shards) -> Result<(), String> {
        Err("pretend".into())
    }
    fn all_gather_f64(&self, _: f64) -> Result<Vec<f64>, String> {
        Err("pretend".into())
    }
    fn broadcast(&self, _: &mut [u8], _: usize) -> Result<(), String> {
        Err("pretend".into())
    }
    fn barrier(&self) -> Result<(), String> {
        Err("pretend".into())
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// The device memory a CUDA backend allocates (counted by the device) against its estimate
/// (`cuda::memory_estimate`, the numbers its out-of-memory check uses), for 1 rank and for each
/// of 2 and 3 data-parallel ranks: ZeRO-1 keeps the FP32 master weights and both moments of the
/// rank's shard only, so a rank's allocation drops by what the estimate says.
#[test]
fn data_parallel_backends_allocate_what_the_estimate_says() {
    use gpt::cuda::backend::{memory_estimate, work_len, CudaBackend};
    use gpt::cuda::dist::CollectiveKind;
    let mut cfg = gpt::config::ModelConfig::named("tiny").unwrap();
    cfg.vocab = 1001;
    cfg.padded_vocab = 1024;
    let (b, t) = (2, 16);
    let n = gpt::layout::ParamLayout::new(&cfg).total;
    // Not in the estimate: the two-pass reductions' FP32 work buffer (checked separately by the
    // constructor) and the device step's parameter block and loss ring (a few KiB).
    const SMALL: usize = 16 << 10; // 8,260 bytes measured on the tiny model
    let mut per_rank = Vec::new();
    for ranks in [1usize, 2, 3] {
        let (state, acts) = memory_estimate(&cfg, b, t, ranks);
        for rank in 0..ranks {
            let g = gpu(); // fresh: its allocation count starts at 0
            let mut be = CudaBackend::on_ranks(g, &cfg, b, t, (rank, ranks)).unwrap();
            if ranks > 1 {
                be.set_data_parallel(&Pretend(rank, ranks), CollectiveKind::HostStaged)
                    .unwrap();
            }
            let got = be.gpu().bytes_allocated();
            let work = 4 * work_len(&cfg, b, t).unwrap();
            let shard = Shards::even(n, ranks).range(rank).len();
            // The estimate takes the largest shard: exact for the largest, above by the
            // difference (12 bytes per parameter, 2 more per rank staged) for the others.
            let slack = (Shards::even(n, ranks).max_len() - shard) * (12 + 2 * ranks);
            let est = state + acts + work;
            assert!(
                got + slack >= est && got <= est + SMALL,
                "{ranks} ranks, rank {rank}: allocated {got} bytes, estimated {est} (slack {slack})"
            );
            eprintln!("{ranks} rank(s), rank {rank}: {got} bytes allocated, {est} estimated");
            per_rank.push((ranks, got));
        }
    }
    // What ZeRO-1 saves: FP32 master, m, v of the other ranks' parameters, less the exchange's
    // BF16 staging of the shard from every rank.
    let one = per_rank[0].1 as i64;
    for &(ranks, got) in &per_rank[1..] {
        let shard = n.div_ceil(ranks) as i64;
        let saved = one - got as i64;
        let want = 12 * (n as i64 - shard) - 2 * shard * ranks as i64;
        assert!(
            (saved - want).abs() <= 14 * ranks as i64,
            "{ranks} ranks: a rank allocates {saved} bytes less than 1 rank, expected {want}"
        );
    }
}

/// Every rank of a 2- and 3-rank CUDA run updates its shard with the vectorized AdamW kernel:
/// `Shards::even` starts every shard at a multiple of 8 BF16 values, so the shard's slices of
/// the parameters and gradients stay 16-byte aligned (a total of parameters that is not a
/// multiple of 8 x ranks, so a plain r * total / n split would start mid-vector). The choice
/// `adamw` makes is `CudaBackend::adamw_kernels`; a shard that does not start at a multiple of
/// 8 would get the per-range reference kernel, checked here through a misaligned buffer base.
#[test]
fn every_data_parallel_rank_takes_the_vectorized_adamw() {
    use gpt::cuda::backend::CudaBackend;
    use gpt::cuda::dist::CollectiveKind;
    use gpt::cuda::kernels::membound::{self, MemImpl};
    assert!(
        !membound::forced_reference(),
        "run without {}=reference",
        membound::ENV
    );
    let mut cfg = gpt::config::ModelConfig::new(2, 12, 3, 10).unwrap();
    cfg.vocab = 45;
    cfg.padded_vocab = 51;
    let total = gpt::layout::ParamLayout::new(&cfg).total;
    assert!(
        [2usize, 3]
            .iter()
            .all(|&n| (1..n).any(|r| !(r * total / n).is_multiple_of(8))),
        "a total of {total}: an r * total / n split would be aligned too"
    );
    for ranks in [1usize, 2, 3] {
        for rank in 0..ranks {
            let mut be = CudaBackend::on_ranks(gpu(), &cfg, 2, 4, (rank, ranks)).unwrap();
            if ranks > 1 {
                be.set_data_parallel(&Pretend(rank, ranks), CollectiveKind::HostStaged)
                    .unwrap();
            }
            let start = Shards::even(total, ranks).range(rank).start;
            assert_eq!(
                be.adamw_kernels(),
                MemImpl::Vectorized,
                "rank {rank} of {ranks} (shard at {start} of {total}) falls back to the reference AdamW"
            );
        }
    }
    // Under 8 parameters per rank some shard is empty: refused by name, not run.
    let most = total / 8;
    for (ranks, ok) in [(most, true), (most + 1, false)] {
        let mut be = CudaBackend::on_ranks(gpu(), &cfg, 2, 4, (0, ranks)).unwrap();
        let set = be.set_data_parallel(&Pretend(0, ranks), CollectiveKind::HostStaged);
        match set {
            Ok(()) => assert!(ok, "{ranks} ranks: an empty shard accepted"),
            Err(e) => assert!(
                !ok && e.to_string().contains(&format!("use at most {most} ranks")),
                "{ranks} ranks: {e}"
            ),
        }
    }
    // The choice follows the alignment: a BF16 span 2 bytes past an aligned base is not.
    let g = gpu();
    let b = g.alloc::<bf16>(16).unwrap();
    let addrs = |at: usize| [Ptr::of(&b).slice(at, 8).addr(), Ptr::of(&b).addr()];
    assert!(membound::aligned16(&addrs(8)) && !membound::aligned16(&addrs(1)));
}

/// One AdamW step's optimizer state: the whole model's, or a ZeRO-1 shard's.
struct Adam {
    master: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
}

/// `steps` AdamW steps (seed 40 + t) on the parameters `[start, start + state.len)`: `params`
/// and `grads` are the whole model's buffers, sliced as the backend slices them, the state is
/// `[start, end)`'s only, the tensor ranges cut to it with offsets from `start`, and the
/// stochastic rounding keyed from `index_base`. Returns the state after.
#[allow(clippy::too_many_arguments)]
fn adamw_on_shard(
    g: &Gpu,
    imp: gpt::cuda::kernels::membound::MemImpl,
    tensors: &[(std::ops::Range<usize>, bool)],
    params: &runtime::cuda::DeviceBuffer<bf16>,
    grads: &runtime::cuda::DeviceBuffer<bf16>,
    state: &Adam,
    start: usize,
    index_base: u64,
    steps: u32,
) -> Adam {
    use gpt::cuda::kernels::adamw;
    let len = state.master.len();
    let ranges: Vec<adamw::AdamwRange> = tensors
        .iter()
        .map(|(r, decay)| (r.start.max(start)..r.end.min(start + len), *decay))
        .filter(|(r, _)| !r.is_empty())
        .map(|(r, decay)| adamw::AdamwRange {
            offset: r.start - start,
            len: r.len(),
            decay,
        })
        .collect();
    let (master, m, v) = (
        g.upload(&state.master).unwrap(),
        g.upload(&state.m).unwrap(),
        g.upload(&state.v).unwrap(),
    );
    for t in 1..=steps {
        let hp = adamw::AdamwArgs {
            lr: 3e-3,
            beta1: 0.85,
            beta2: 0.97,
            beta1_correction: 1.0 - 0.85f32.powi(t as i32),
            beta2_correction: 1.0 - 0.97f32.powi(t as i32),
            eps: 1e-6,
            weight_decay: 0.2,
            grad_scale: 0.7,
            seed: 40 + t,
            index_base,
        };
        adamw::adamw_update_ranges_with(
            g,
            imp,
            Ptr::of(params).slice(start, len),
            Ptr::of(&master),
            Ptr::of(grads).slice(start, len),
            Ptr::of(&m),
            Ptr::of(&v),
            &ranges,
            &hp,
        )
        .unwrap();
    }
    Adam {
        master: g.download(&master).unwrap(),
        m: g.download(&m).unwrap(),
        v: g.download(&v).unwrap(),
    }
}

/// ZeRO-1's update on the GPU: each rank runs AdamW on its shard of the optimizer state, with
/// the stochastic rounding of the BF16 weights keyed by the element's global index
/// (`AdamwArgs::index_base` = the shard's start), so that the shards together write exactly the
/// full update: master weights, moments and BF16 weights bit for bit, 2 steps, for 2 and 3
/// even shards (boundaries inside 8-vectors and tensors: the reference kernel, as the launcher
/// picks for a misaligned shard) and an 8-aligned 3-way split (the vectorized kernel too). The
/// shards write into poisoned BF16 weights, and nothing outside their shard.
#[test]
fn sharded_adamw_is_the_slice_of_the_full_update_bit_for_bit() {
    use gpt::cuda::kernels::membound::MemImpl;
    let g = gpu();
    let mut rng = Rng(0xADA5);
    let mut cfg = gpt::config::ModelConfig::new(2, 12, 3, 10).unwrap();
    cfg.vocab = 45;
    cfg.padded_vocab = 51; // an odd total: shards start inside 8-vectors
    let layout = gpt::layout::ParamLayout::new(&cfg);
    let total = layout.total;
    let tensors: Vec<(std::ops::Range<usize>, bool)> = layout
        .tensors
        .iter()
        .map(|t| (t.offset..t.offset + t.len(), t.weight_decay()))
        .collect();
    let full = Adam {
        master: rng.vec_f32(total, 1.0),
        m: rng.vec_f32(total, 0.01),
        v: rng.vec_f32(total, 0.01).iter().map(|x| x.abs()).collect(),
    };
    let grads = g.upload(&rng.vec_bf16(total, 0.1)).unwrap();
    let want_params = poisoned::<bf16>(&g, total);
    let want = adamw_on_shard(
        &g,
        MemImpl::Reference,
        &tensors,
        &want_params,
        &grads,
        &full,
        0,
        0,
        2,
    );
    let want_params = bits(&g.download(&want_params).unwrap());
    let even = |n: usize| -> Vec<usize> {
        (0..=n)
            .map(|r| Shards::even(total, n).range(r).start)
            .collect()
    };
    // The split before shards were 8-aligned (r * total / n): shards start mid-vector, which
    // the reference kernel must handle too.
    let unaligned = |n: usize| -> Vec<usize> { (0..=n).map(|r| r * total / n).collect() };
    let splits = [unaligned(2), unaligned(3), even(2), even(3)];
    assert!(
        splits[..2].iter().flatten().any(|s| s % 8 != 0),
        "no shard starts mid-vector"
    );
    assert!(
        splits[2..]
            .iter()
            .flatten()
            .all(|&s| s % 8 == 0 || s == total),
        "Shards::even starts a shard mid-vector: {splits:?}"
    );
    for bounds in &splits {
        let bounds: Vec<usize> = bounds
            .iter()
            .copied()
            .take_while(|&s| s < total)
            .chain([total])
            .collect();
        for imp in [MemImpl::Reference, MemImpl::Vectorized] {
            let starts = &bounds[..bounds.len() - 1];
            if imp == MemImpl::Vectorized && starts.iter().any(|s| s % 8 != 0) {
                continue; // the vectorized kernel needs 16-byte aligned slices
            }
            let params = poisoned::<bf16>(&g, total);
            for w in bounds.windows(2) {
                let r = w[0]..w[1];
                let state = Adam {
                    master: full.master[r.clone()].to_vec(),
                    m: full.m[r.clone()].to_vec(),
                    v: full.v[r.clone()].to_vec(),
                };
                let before = bits(&g.download(&params).unwrap());
                let got = adamw_on_shard(
                    &g,
                    imp,
                    &tensors,
                    &params,
                    &grads,
                    &state,
                    r.start,
                    r.start as u64,
                    2,
                );
                let what = format!("{imp:?}, shards at {bounds:?}, shard {r:?}");
                for (name, x, y) in [
                    ("master", &got.master, &want.master),
                    ("m", &got.m, &want.m),
                    ("v", &got.v, &want.v),
                ] {
                    let (x, y): (Vec<u32>, Vec<u32>) = (
                        x.iter().map(|v| v.to_bits()).collect(),
                        y[r.clone()].iter().map(|v| v.to_bits()).collect(),
                    );
                    assert!(x == y, "{what}: {name} is not the full update's slice");
                }
                let after = bits(&g.download(&params).unwrap());
                for i in (0..total).filter(|i| !r.contains(i)) {
                    assert_eq!(
                        after[i], before[i],
                        "{what}: BF16 weight {i} outside it written"
                    );
                }
            }
            let got = bits(&g.download(&params).unwrap());
            let differ: Vec<usize> = (0..total).filter(|&i| got[i] != want_params[i]).collect();
            assert!(
                differ.is_empty(),
                "{imp:?}, shards at {bounds:?}: {} BF16 weights differ from the full update (first {:?})",
                differ.len(),
                &differ[..differ.len().min(5)]
            );
        }
    }
}

/// `adamw_update_multi_dev` (the device step's update: scalars from device memory) keys its
/// stochastic rounding on `index_base` as `adamw_update_multi` does: a shard-like slice of the
/// buffers with a base updates bit for bit as the by-value kernel with the same base; with base
/// 0 instead, the BF16 weights differ (the comparison can tell).
#[test]
fn device_scalar_adamw_keys_on_index_base_as_the_by_value_kernel() {
    use gpt::cuda::kernels::{adamw, membound::MemImpl};
    let g = gpu();
    let mut rng = Rng(0xBA5E);
    let (total, start) = (3000usize, 1016usize); // an 8-aligned slice
    let len = total - start;
    let ranges = [
        adamw::AdamwRange {
            offset: 0,
            len: 700,
            decay: true,
        },
        adamw::AdamwRange {
            offset: 700,
            len: len - 700,
            decay: false,
        },
    ];
    let hp = adamw::AdamwArgs {
        lr: 3e-3,
        beta1: 0.85,
        beta2: 0.97,
        beta1_correction: 0.15,
        beta2_correction: 0.03,
        eps: 1e-6,
        weight_decay: 0.2,
        grad_scale: 0.7,
        seed: 77,
        index_base: start as u64,
    };
    let master = rng.vec_f32(len, 1.0);
    let m = rng.vec_f32(len, 0.01);
    let v: Vec<f32> = rng.vec_f32(len, 0.01).iter().map(|x| x.abs()).collect();
    let grads = g.upload(&rng.vec_bf16(total, 0.1)).unwrap();
    // StepState: loss sum (f64), then the clip factor (f32) and the halted flag (i32).
    let state = g.upload(&[0u64, hp.grad_scale.to_bits() as u64]).unwrap();
    let p = g.upload(&[step_params(&hp)]).unwrap();
    // The BF16 weights' and the master weights' bits.
    let run = |dev: bool, base: u64| -> (Vec<u16>, Vec<u32>) {
        let out = poisoned::<bf16>(&g, total);
        let (dm, dmm, dv) = (
            g.upload(&master).unwrap(),
            g.upload(&m).unwrap(),
            g.upload(&v).unwrap(),
        );
        let (po, gr) = (
            Ptr::of(&out).slice(start, len),
            Ptr::of(&grads).slice(start, len),
        );
        let (pm, pmm, pv) = (Ptr::of(&dm), Ptr::of(&dmm), Ptr::of(&dv));
        if dev {
            adamw::adamw_update_ranges_dev(
                &g,
                po,
                pm,
                gr,
                pmm,
                pv,
                &ranges,
                base,
                Ptr::of(&p),
                Ptr::of(&state),
            )
            .unwrap();
        } else {
            let a = adamw::AdamwArgs {
                index_base: base,
                ..hp
            };
            adamw::adamw_update_ranges_with(
                &g,
                MemImpl::Vectorized,
                po,
                pm,
                gr,
                pmm,
                pv,
                &ranges,
                &a,
            )
            .unwrap();
        }
        (
            bits(&g.download(&out).unwrap()),
            g.download(&dm)
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect(),
        )
    };
    let want = run(false, start as u64);
    assert!(
        run(true, start as u64) == want,
        "the device-scalar kernel differs"
    );
    let (zero, _) = run(true, 0);
    assert!(zero != want.0, "index_base does not show in the weights");
}

/// The kernels' `StepParams` for the by-value arguments `a`.
fn step_params(a: &gpt::cuda::kernels::adamw::AdamwArgs) -> gpt::cuda::kernels::step::StepParams {
    gpt::cuda::kernels::step::StepParams {
        lr: a.lr,
        beta1: a.beta1,
        beta2: a.beta2,
        beta1_correction: a.beta1_correction,
        beta2_correction: a.beta2_correction,
        eps: a.eps,
        weight_decay: a.weight_decay,
        grad_clip: 0.0,
        seed: a.seed,
        slot: 0,
        micro_batches: 1,
        pad: 0,
    }
}
