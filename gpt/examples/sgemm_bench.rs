//! GFLOP/s of the CPU sgemm at the shapes of GPT-2 124M training:
//! `cargo run --release -p gpt --example sgemm_bench [ROWS] [--json] [--only NAME_PART]` (ROWS = B*T, default
//! 256 = 4 x 64). Per shape, the best of several runs (at least 3, and ~SGEMM_BENCH_SECONDS =
//! 0.3 s): wall-clock ms, GFLOP/s wall and GFLOP per CPU-second (process CPU time, which on a
//! shared machine tracks the kernel better: it does not count time spent waiting for a core).
//! `calls` is how often a training step runs the shape (12 layers; the classifier once), so
//! `step` estimates the GEMM time of one step. `--json` prints one JSON object per shape (for
//! perf/cpu_gemm_side_by_side.py, which runs PyTorch's sgemm at the same shapes beside it).

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

/// (name, calls per step, M, N, K, A transposed, B transposed), as the backend calls sgemm.
pub fn shapes(r: usize) -> Vec<(&'static str, usize, usize, usize, usize, bool, bool)> {
    vec![
        ("fwd qkv X.W^T", 12, r, 2304, 768, false, true),
        ("fwd attproj X.W^T", 12, r, 768, 768, false, true),
        ("fwd fc X.W^T", 12, r, 3072, 768, false, true),
        ("fwd fcproj X.W^T", 12, r, 768, 3072, false, true),
        ("dgrad qkv dY.W", 12, r, 768, 2304, false, false),
        ("dgrad attproj dY.W", 12, r, 768, 768, false, false),
        ("dgrad fc dY.W", 12, r, 768, 3072, false, false),
        ("dgrad fcproj dY.W", 12, r, 3072, 768, false, false),
        ("wgrad qkv dY^T.X", 12, 2304, 768, r, true, false),
        ("wgrad attproj dY^T.X", 12, 768, 768, r, true, false),
        ("wgrad fc dY^T.X", 12, 3072, 768, r, true, false),
        ("wgrad fcproj dY^T.X", 12, 768, 3072, r, true, false),
        ("lm fwd X.E^T", 1, r, 50304, 768, false, true),
        ("lm dgrad dL.E", 1, r, 768, 50304, false, false),
        ("lm wgrad dL^T.X", 1, 50304, 768, r, true, false),
    ]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let json = args.iter().any(|a| a == "--json");
    // `--only TEXT`: just the shapes whose name contains TEXT (for profiling one).
    let only = args
        .iter()
        .position(|a| a == "--only")
        .map(|i| args.get(i + 1).expect("--only needs a name part").clone());
    let r: usize = args
        .iter()
        .enumerate()
        .find(|(i, a)| !a.starts_with("--") && (*i == 0 || args[i - 1] != "--only"))
        .map(|(_, a)| a)
        .map(|s| s.parse().expect("ROWS: a number of rows (B*T)"))
        .unwrap_or(256);
    let min_time: f64 = std::env::var("SGEMM_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.3);
    let (mut tot_flop, mut tot_wall, mut tot_cpu) = (0.0, 0.0, 0.0);
    for (name, calls, m, n, k, ta, tb) in shapes(r) {
        if only.as_ref().is_some_and(|o| !name.contains(o.as_str())) {
            continue;
        }
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
        // Best of several reps (least disturbed by neighbours).
        let (mut wall, mut cpu) = (f64::MAX, f64::MAX);
        let t_start = Instant::now();
        let mut reps = 0;
        while reps < 3 || (t_start.elapsed().as_secs_f64() < min_time && reps < 50) {
            let (t0, c0) = (Instant::now(), cpu_seconds());
            sgemm(av, bv, &mut c, n, false);
            wall = wall.min(t0.elapsed().as_secs_f64());
            cpu = cpu.min(cpu_seconds() - c0);
            reps += 1;
        }
        let flop = 2.0 * (m * n * k) as f64;
        tot_flop += calls as f64 * flop;
        tot_wall += calls as f64 * wall;
        tot_cpu += calls as f64 * cpu;
        if json {
            println!(
                "{{\"name\": \"{name}\", \"calls\": {calls}, \"m\": {m}, \"n\": {n}, \"k\": {k}, \
                 \"ta\": {ta}, \"tb\": {tb}, \"wall_ms\": {:.4}, \"cpu_ms\": {:.4}, \"reps\": {reps}}}",
                wall * 1e3,
                cpu * 1e3
            );
        } else {
            println!(
                "{name:21} x{calls:<2} {m:6} x {n:6} x {k:5}: {:8.2} ms {:6.1} GFLOP/s wall \
                 {:6.1} GFLOP/cpu-s",
                wall * 1e3,
                flop / wall / 1e9,
                flop / cpu / 1e9
            );
        }
    }
    if !json {
        println!(
            "{:21} {:34} {:8.2} ms {:6.1} GFLOP/s wall {:6.1} GFLOP/cpu-s",
            "step (sum of calls)",
            "",
            tot_wall * 1e3,
            tot_flop / tot_wall / 1e9,
            tot_flop / tot_cpu / 1e9
        );
    }
}
