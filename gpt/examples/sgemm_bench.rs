//! GFLOP/s of the CPU sgemm at the shapes of GPT-2 124M training (B*T = 4096):
//! `cargo run --release -p gpt --example sgemm_bench`. The tools/bench `kernels` suite is the
//! full benchmark; this is the quick look while working on the kernel.

use gpt::cpu::gemm::{sgemm, MatRef};
use std::time::Instant;

fn main() {
    let shapes: &[(&str, usize, usize, usize, bool, bool)] = &[
        ("fwd qkv   X·W^T", 4096, 2304, 768, false, true),
        ("fwd fc    X·W^T", 4096, 3072, 768, false, true),
        ("dgrad fcp dY·W", 4096, 3072, 768, false, false),
        ("wgrad fc  dY^T·X", 3072, 768, 4096, true, false),
        ("lm head   X·E^T", 1024, 50304, 768, false, true),
    ];
    for &(name, m, n, k, ta, tb) in shapes {
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 104729) % 1000) as f32 * 1e-3 - 0.5)
            .collect();
        let av = if ta {
            MatRef::transposed(&a, m, k)
        } else {
            MatRef::row_major(&a, m, k)
        };
        let bv = if tb {
            MatRef::transposed(&b, k, n)
        } else {
            MatRef::row_major(&b, k, n)
        };
        let mut c = vec![0.0f32; m * n];
        sgemm(av, bv, &mut c, n, false);
        let reps = 3;
        let t0 = Instant::now();
        for _ in 0..reps {
            sgemm(av, bv, &mut c, n, false);
        }
        let s = t0.elapsed().as_secs_f64() / reps as f64;
        println!(
            "{name:18} {m:6} x {n:6} x {k:5}: {:8.2} ms  {:7.1} GFLOP/s",
            s * 1e3,
            2.0 * (m * n * k) as f64 / s / 1e9
        );
    }
}
