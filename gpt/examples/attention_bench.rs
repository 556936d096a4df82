//! The CPU attention, fast vs plain, side by side on one thread:
//! `cargo run --release -p gpt --example attention_bench [ROUNDS]` (default 15). Per shape
//! (the 124M head shape, hs 64, NH 12: B=8 T=256 and B=4 T=64), forward + backward of the plain
//! and the fast implementation are run interleaved ROUNDS times; printed is the best thread-CPU
//! time of each (min over rounds: the least disturbed run on a shared machine) and the ratio,
//! one JSON object per shape. The outputs are checked bit-identical once (a sanity check; the
//! tests are gpt/src/cpu/attention_tests.rs).

use gpt::cpu::attention::{
    attention_backward, attention_backward_plain, attention_forward, attention_forward_plain,
};
use gpt::rng::SplitMix64;

fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

type Fwd = fn(&mut [f32], &mut [f32], &[f32], usize, usize, usize, usize);
type Bwd = fn(&mut [f32], &[f32], &[f32], &[f32], &[f32], usize, usize, usize, usize);

fn main() {
    // One worker: the single-thread cost of the kernel (set before the pool reads it).
    std::env::set_var("MXGPT_THREADS", "1");
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("ROUNDS: a number"))
        .unwrap_or(15);
    let (c, nh) = (768, 12);
    for (b, t) in [(8, 256), (4, 64)] {
        let mut r = SplitMix64::new(7);
        let mut randv = |n: usize| -> Vec<f32> { (0..n).map(|_| r.next_normal() as f32).collect() };
        let qkv = randv(b * t * 3 * c);
        let dout = randv(b * t * c);
        let run = |fwd: Fwd, bwd: Bwd| {
            let (mut out, mut lse) = (vec![0.0f32; b * t * c], vec![0.0f32; b * nh * t]);
            let mut dqkv = vec![0.0f32; b * t * 3 * c];
            let s = thread_cpu_seconds();
            fwd(&mut out, &mut lse, &qkv, b, t, c, nh);
            let f = thread_cpu_seconds();
            bwd(&mut dqkv, &dout, &qkv, &out, &lse, b, t, c, nh);
            let e = thread_cpu_seconds();
            ((f - s, e - f), (out, lse, dqkv))
        };
        let plain: (Fwd, Bwd) = (attention_forward_plain, attention_backward_plain);
        let fast: (Fwd, Bwd) = (attention_forward, attention_backward);
        let (_, want) = run(plain.0, plain.1);
        let (_, got) = run(fast.0, fast.1);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert!(
            bits(&want.0) == bits(&got.0)
                && bits(&want.1) == bits(&got.1)
                && bits(&want.2) == bits(&got.2),
            "fast and plain attention differ at B={b} T={t}"
        );
        let mut best = [[f64::INFINITY; 2]; 2]; // [plain, fast][fwd, bwd]
        for _ in 0..rounds {
            for (i, imp) in [plain, fast].into_iter().enumerate() {
                let ((f, bw), _) = run(imp.0, imp.1);
                best[i][0] = best[i][0].min(f);
                best[i][1] = best[i][1].min(bw);
            }
        }
        let ms = |x: f64| (x * 1e4).round() / 10.0;
        println!(
            "{{\"b\": {b}, \"t\": {t}, \"c\": {c}, \"nh\": {nh}, \"threads\": 1, \"rounds\": {rounds}, \
             \"plain_fwd_ms\": {}, \"plain_bwd_ms\": {}, \"fast_fwd_ms\": {}, \"fast_bwd_ms\": {}, \
             \"fwd_speedup\": {:.2}, \"bwd_speedup\": {:.2}, \"total_speedup\": {:.2}}}",
            ms(best[0][0]),
            ms(best[0][1]),
            ms(best[1][0]),
            ms(best[1][1]),
            best[0][0] / best[1][0],
            best[0][1] / best[1][1],
            (best[0][0] + best[0][1]) / (best[1][0] + best[1][1]),
        );
    }
}
