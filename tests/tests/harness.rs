//! The host execution harness catches the mistakes it claims to catch: each test runs a kernel of
//! ptx/host/selftest/selftest.cu that commits one (a missing barrier, a race on shared memory, a
//! barrier or shuffle in divergent code, a read past the end of a buffer, a deadlock, a missing
//! cp.async wait, a wrong mma fragment index, a read of unwritten shared memory) and checks
//! that it fails (an error naming the problem, or a wrong result that a schedule change or a
//! comparison exposes), and that the correct twin passes. Inputs are fresh random values for
//! every launch, so a kernel cannot pass by reading what an earlier launch left behind.

use runtime::cuda::half::bf16;
use runtime::cuda::{DeviceBuffer, Gpu, LaunchConfig, Schedule};
use tests::gpu::Rng;

const SCHEDULES: [Schedule; 3] = [Schedule::InOrder, Schedule::Reverse, Schedule::Random(3)];

fn cfg(grid: u32, block: u32) -> LaunchConfig {
    LaunchConfig {
        grid: (grid, 1, 1),
        block: (block, 1, 1),
        smem_bytes: 0,
    }
}

/// Launches selftest::`name`; Ok or the launch error's text.
fn launch(
    g: &Gpu,
    name: &str,
    c: LaunchConfig,
    args: &[&dyn runtime::cuda::KernelArg],
) -> Result<(), String> {
    let k = g.kernel("selftest", name).unwrap();
    // SAFETY: the argument lists below match selftest.cu's signatures (the harness checks sizes).
    unsafe { g.launch(&k, c, args) }.map_err(|e| e.to_string())
}

fn expect_error(r: Result<(), String>, words: &[&str]) {
    let e = r.expect_err("the harness let the bug pass");
    for w in words {
        assert!(e.contains(w), "error lacks '{w}': {e}");
    }
}

fn out_f32(g: &Gpu, n: usize) -> DeviceBuffer<f32> {
    tests::gpu::poisoned(g, n)
}

#[test]
fn missing_barrier_gives_wrong_results_and_the_barrier_fixes_them() {
    let (blocks, n) = (3usize, 256usize);
    for s in SCHEDULES {
        let g = Gpu::harness(s);
        let mut rng = Rng(17);
        for barrier in [1i32, 0] {
            let x = rng.vec_f32(blocks * n, 1.0);
            let (inp, out) = (g.upload(&x).unwrap(), out_f32(&g, blocks * n));
            launch(
                &g,
                "rotate",
                cfg(blocks as u32, n as u32),
                &[&out, &inp, &barrier],
            )
            .unwrap();
            let got = g.download(&out).unwrap();
            let want: Vec<f32> = (0..blocks * n)
                .map(|i| x[i / n * n + (i % n + 1) % n])
                .collect();
            if barrier == 1 {
                assert_eq!(got, want, "{s:?}: with the barrier");
            } else {
                // Every schedule has a thread that reads its neighbour's slot before the
                // neighbour wrote it this launch (in order: thread 0 runs to the end first).
                assert_ne!(got, want, "{s:?}: the missing barrier went unnoticed");
            }
        }
    }
}

#[test]
fn a_write_write_race_shows_as_schedule_dependent_results() {
    let results: Vec<Vec<i32>> = SCHEDULES
        .iter()
        .map(|&s| {
            let g = Gpu::harness(s);
            let out = tests::gpu::poisoned::<i32>(&g, 64);
            launch(&g, "last_writer", cfg(1, 64), &[&out]).unwrap();
            g.download(&out).unwrap()
        })
        .collect();
    assert_eq!(results[0], vec![63; 64], "in order, thread 63 writes last");
    assert_eq!(results[1], vec![0; 64], "in reverse, thread 0 writes last");
    assert_ne!(results[0], results[1]);
}

#[test]
fn divergent_and_orphaned_barriers_are_errors() {
    for s in SCHEDULES {
        let g = Gpu::harness(s);
        let out = tests::gpu::poisoned::<i32>(&g, 128);
        expect_error(
            launch(&g, "divergent_barrier", cfg(1, 128), &[&out]),
            &[
                "selftest::divergent_barrier",
                "__syncthreads",
                "block (0,0,0)",
            ],
        );
        let n = 100i32;
        expect_error(
            launch(&g, "exit_before_barrier", cfg(1, 128), &[&out, &n]),
            &["exited", "__syncthreads"],
        );
        let n = 128i32;
        launch(&g, "exit_before_barrier", cfg(1, 128), &[&out, &n]).unwrap();
    }
}

#[test]
fn shuffle_masks_must_name_the_caller_and_only_live_lanes() {
    let g = Gpu::harness(Schedule::InOrder);
    let out = tests::gpu::poisoned::<i32>(&g, 64);
    let (full, half, no, yes) = (0xFFFF_FFFFu32, 0x0000_FFFFu32, 0i32, 1i32);
    launch(&g, "shuffle_masked", cfg(1, 64), &[&out, &full, &no]).unwrap();
    let got = g.download(&out).unwrap();
    let want: Vec<i32> = (0..64).map(|i| i / 32 * 32).collect();
    assert_eq!(got, want, "__shfl_sync from lane 0 of each warp");
    expect_error(
        launch(&g, "shuffle_masked", cfg(1, 64), &[&out, &half, &no]),
        &["__shfl_sync", "not in mask 0x0000ffff", "lane 16"],
    );
    expect_error(
        launch(&g, "shuffle_masked", cfg(1, 64), &[&out, &full, &yes]),
        &["__shfl_sync", "exited"],
    );
}

#[test]
fn a_read_past_the_end_of_a_buffer_is_caught() {
    let g = Gpu::harness(Schedule::InOrder);
    let mut rng = Rng(5);
    // 1024 floats end exactly at the guard page: the read faults and the error says where.
    let n = 1024i32;
    let x = rng.vec_f32(n as usize, 1.0);
    let (inp, out) = (g.upload(&x).unwrap(), out_f32(&g, n as usize));
    let (exact, over) = (0i32, 1i32);
    launch(&g, "copy_over", cfg(4, 256), &[&out, &inp, &n, &exact]).unwrap();
    assert_eq!(g.download(&out).unwrap(), x);
    expect_error(
        launch(&g, "copy_over", cfg(4, 256), &[&out, &inp, &n, &over]),
        &[
            "invalid memory access",
            "0 bytes past the end of a 4096-byte device buffer",
            "thread (255,0,0)",
        ],
    );
    // 1001 floats (4004 bytes) leave 12 bytes of slack before the guard page (allocations are
    // whole 16-byte units): the over-read returns the allocation's 0xFF fill, a NaN that any
    // comparison catches.
    let n = 1001i32;
    let x = rng.vec_f32(n as usize, 1.0);
    let (inp, out) = (g.upload(&x).unwrap(), out_f32(&g, n as usize));
    launch(&g, "copy_over", cfg(4, 256), &[&out, &inp, &n, &over]).unwrap();
    let got = g.download(&out).unwrap();
    assert_eq!(&got[..1000], &x[1..]);
    assert!(got[1000].is_nan());
}

#[test]
fn a_deadlock_is_reported_with_what_each_thread_waits_for() {
    let g = Gpu::harness(Schedule::InOrder);
    let out = tests::gpu::poisoned::<i32>(&g, 32);
    expect_error(
        launch(&g, "deadlock", cfg(1, 32), &[&out]),
        &["deadlock", "__syncwarp", "__syncthreads"],
    );
}

#[test]
fn reading_cp_async_data_before_the_wait_gives_stale_values() {
    let g = Gpu::harness(Schedule::InOrder);
    let mut rng = Rng(9);
    for wait in [1i32, 0] {
        let x = rng.vec_f32(128, 1.0);
        let (inp, out) = (g.upload(&x).unwrap(), out_f32(&g, 128));
        launch(&g, "cp_async_stage", cfg(1, 32), &[&out, &inp, &wait]).unwrap();
        let got = g.download(&out).unwrap();
        let want: Vec<f32> = (0..128).map(|i| x[(i / 4 + 1) % 32 * 4 + i % 4]).collect();
        if wait == 1 {
            assert_eq!(got, want);
        } else {
            assert_ne!(
                got, want,
                "reading before cp.async.wait_group went unnoticed"
            );
        }
    }
}

#[test]
fn a_wrong_mma_fragment_index_gives_a_wrong_product() {
    let g = Gpu::harness(Schedule::InOrder);
    let mut rng = Rng(21);
    let a = rng.vec_bf16(16 * 16, 1.0);
    let bt = rng.vec_bf16(8 * 16, 1.0);
    // C[m][n] = sum_k A[m][k] B[k][n] with B stored transposed (bt[n][k]).
    let want: Vec<f32> = (0..16 * 8)
        .map(|i| {
            let (m, n) = (i / 8, i % 8);
            (0..16)
                .map(|k| a[m * 16 + k].to_f32() as f64 * bt[n * 16 + k].to_f32() as f64)
                .sum::<f64>() as f32
        })
        .collect();
    let (da, db) = (g.upload(&a).unwrap(), g.upload(&bt).unwrap());
    for bug in [0i32, 1] {
        let c = out_f32(&g, 16 * 8);
        launch(&g, "mma_tile", cfg(1, 32), &[&c, &da, &db, &bug]).unwrap();
        let got = g.download(&c).unwrap();
        if bug == 0 {
            // Products of bf16 are exact and the twin sums exactly: equal up to one f32 rounding.
            for (x, y) in got.iter().zip(&want) {
                assert!((x - y).abs() <= 1e-6 * y.abs().max(1.0), "{x} vs {y}");
            }
        } else {
            assert!(
                got.iter().zip(&want).any(|(x, y)| (x - y).abs() > 1e-3),
                "wrong fragment passed"
            );
        }
    }
    let _ = bf16::ZERO;
}

#[test]
fn unwritten_dynamic_shared_memory_reads_as_nan() {
    let g = Gpu::harness(Schedule::InOrder);
    let n = 64usize;
    for skip in [0i32, 1] {
        let out = out_f32(&g, n);
        let c = LaunchConfig {
            smem_bytes: (n * 4) as u32,
            ..cfg(2, n as u32)
        };
        launch(&g, "dynamic_smem", c, &[&out, &skip]).unwrap();
        let got = g.download(&out).unwrap();
        for (i, v) in got.iter().enumerate() {
            let want = ((i + 1) % n + i) as f32;
            if skip == 1 && (i == 0 || i == n - 1) {
                assert!(v.is_nan(), "slot 0 unwritten: out[{i}] = {v}");
            } else {
                assert_eq!(*v, want, "out[{i}]");
            }
        }
    }
}

#[test]
fn argument_count_and_sizes_are_checked_against_the_signature() {
    let g = Gpu::harness(Schedule::InOrder);
    let out = tests::gpu::poisoned::<f32>(&g, 256);
    let inp = tests::gpu::poisoned::<f32>(&g, 256);
    expect_error(
        launch(&g, "rotate", cfg(1, 256), &[&out, &inp]),
        &["takes 3 parameters", "passed 2"],
    );
    let wide = 1i64;
    expect_error(
        launch(&g, "rotate", cfg(1, 256), &[&out, &inp, &wide]),
        &[
            "parameter 2 is 4 bytes",
            "8-byte value",
            "(float*, const float*, int)",
        ],
    );
}
