//! GFLOP/s of the CPU sgemm at the shapes of GPT-2 124M training:
//! `cargo run --release -p gpt --example sgemm_bench [ROWS]` (ROWS = B*T, default 256 = 4 x 64).
//! Prints wall-clock GFLOP/s and GFLOP per CPU-second (process CPU time): on a shared machine
//! the second is the one that tracks the kernel, since it does not count time spent waiting for
//! a core. The tools/bench `kernels` suite is the full benchmark; this is the quick look while
//! working on the kernel.

use gpt::cpu::gemm::{sgemm, MatRef};
use std::time::Instant;

fn cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn main() {
    let r: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("ROWS"))
        .unwrap_or(256);
    // (name, M, N, K, A transposed, B transposed), as the backend calls sgemm.
    let shapes: &[(&str, usize, usize, usize, bool, bool)] = &[
        ("fwd qkv    X·W^T", r, 2304, 768, false, true),
        ("fwd fc     X·W^T", r, 3072, 768, false, true),
        ("fwd fcproj X·W^T", r, 768, 3072, false, true),
        ("dgrad fc   dY·W", r, 768, 3072, false, false),
        ("dgrad fcp  dY·W", r, 3072, 768, false, false),
        ("wgrad fc   dY^T·X", 3072, 768, r, true, false),
        ("wgrad fcp  dY^T·X", 768, 3072, r, true, false),
        ("lm fwd     X·E^T", r, 50304, 768, false, true),
        ("lm dgrad   dL·E", r, 768, 50304, false, false),
        ("lm wgrad   dL^T·X", 50304, 768, r, true, false),
    ];
    let (mut tot_flop, mut tot_wall, mut tot_cpu) = (0.0, 0.0, 0.0);
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
        let (t0, c0) = (Instant::now(), cpu_seconds());
        for _ in 0..reps {
            sgemm(av, bv, &mut c, n, false);
        }
        let wall = t0.elapsed().as_secs_f64() / reps as f64;
        let cpu = (cpu_seconds() - c0) / reps as f64;
        let flop = 2.0 * (m * n * k) as f64;
        (tot_flop, tot_wall, tot_cpu) = (tot_flop + flop, tot_wall + wall, tot_cpu + cpu);
        println!(
            "{name:18} {m:6} x {n:6} x {k:5}: {:8.2} ms  {:6.1} GFLOP/s wall  {:6.1} GFLOP/cpu-s",
            wall * 1e3,
            flop / wall / 1e9,
            flop / cpu / 1e9
        );
    }
    println!(
        "{:18} {:31} {:8.2} ms  {:6.1} GFLOP/s wall  {:6.1} GFLOP/cpu-s",
        "total",
        "",
        tot_wall * 1e3,
        tot_flop / tot_wall / 1e9,
        tot_flop / tot_cpu / 1e9
    );
}
