//! The data-parallel gradient sum on the device (ptx/kernels/dp_sum.cu, launcher
//! gpt::cuda::dist::rank_order_sum) against a host sum written here, bit for bit, with poisoned
//! outputs; and the host twin the trainer's docs cite against the same sum.

use gpt::cuda::dist::{rank_order_sum, rank_order_sum_host};
use gpt::cuda::kernels::Ptr;
use runtime::cuda::half::bf16;
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
    use runtime::cuda::{Gpu, Schedule};
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
