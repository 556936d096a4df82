//! Data-parallel training on 2 ranks under `mpirun` (feature `mpi`, Open MPI installed):
//! `cargo test --release -p gpt --features mpi --test mpi`. Runs as root too (CI does).

#![cfg(feature = "mpi")]

mod common;
#[path = "../../tests/src/mpirun.rs"]
mod mpirun;
use common::*;
use gpt::checkpoint;
use gpt::dist::Shards;
use mpirun::{mpirun, run_child};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// train_gpt on `np` ranks (1: without mpirun); returns the exit code and the output.
fn train(np: usize, args: &[&str]) -> (i32, String) {
    let mut c = if np == 1 {
        Command::new(env!("CARGO_BIN_EXE_train_gpt"))
    } else {
        let mut c = mpirun(np);
        c.arg(env!("CARGO_BIN_EXE_train_gpt"));
        c
    };
    let out = c
        .args(args)
        .output()
        .expect("mpirun runs (is Open MPI installed?)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn train_ok(np: usize, args: &[&str]) -> String {
    let (code, text) = train(np, args);
    assert_eq!(code, 0, "{np} rank(s) {args:?} failed:\n{text}");
    text
}

const MIB: f64 = (1u64 << 20) as f64;

/// (peak RSS, estimate) in bytes from the "memory: peak RSS 94.5 MiB (estimated 89.8 MiB)" line.
fn peak_and_estimate(out: &str) -> (f64, f64) {
    let line = out
        .lines()
        .find(|l| l.starts_with("memory: peak RSS "))
        .expect("a memory line");
    let nums: Vec<f64> = line
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(
        line.matches("MiB").count() == 2,
        "a tiny run in MiB: {line}"
    );
    (nums[0] * MIB, nums[1] * MIB)
}

/// Every step's loss of a `--log-json` file.
fn losses(log: &Path) -> Vec<f32> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["type"] == "train")
        .map(|v| v["loss"].as_f64().unwrap() as f32)
        .collect()
}

/// Parameters, first and second moments of the checkpoint at `step` in `dir`, the moments
/// gathered from the rank shards of a data-parallel checkpoint.
fn state(dir: &Path, step: u64) -> [Vec<f32>; 3] {
    let path = dir.join(checkpoint::file_name(step));
    let h = checkpoint::peek(&path).unwrap();
    let mut a = [
        vec![0.0f32; h.num_params],
        vec![0.0; h.num_params],
        vec![0.0; h.num_params],
    ];
    checkpoint::load_streaming(&path, &mut |i, at, c| {
        a[i][at..at + c.len()].copy_from_slice(c);
        Ok(())
    })
    .unwrap();
    let shards = Shards::even(h.num_params, h.ranks);
    for r in (0..h.ranks).filter(|_| h.ranks > 1) {
        let range = shards.range(r);
        let (lo, len) = (range.start, range.len());
        checkpoint::load_shard(dir, step, (r, h.ranks), (lo, len), &mut |i, at, c| {
            a[1 + i][lo + at..lo + at + c.len()].copy_from_slice(c);
            Ok(())
        })
        .unwrap();
    }
    a
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// The largest |a - b| relative to the largest |a|.
fn rel_diff(a: &[f32], b: &[f32]) -> f64 {
    let scale = a
        .iter()
        .fold(0.0f64, |m, v| m.max(v.abs() as f64))
        .max(1e-30);
    let d = a
        .iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs() as f64));
    d / scale
}

fn base<'a>(data: &'a str, backward: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "--model",
        "tiny",
        "--batch",
        "2",
        "--seq",
        "64",
        "--total-batch-tokens",
        "256",
        "--eval-every",
        "0",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--backward",
        backward,
        "--data",
        data,
    ];
    v.extend_from_slice(extra);
    v
}

#[test]
fn two_ranks_equal_one_rank_with_twice_the_accumulation() {
    let dir = tmpdir("mpi-equal");
    let data = synthetic_dataset(&dir, 60);
    for backward in ["bf16", "mxfp4"] {
        let run = |np: usize, name: &str| -> (Vec<f32>, [Vec<f32>; 3]) {
            let ck = dir.join(format!("{backward}-{name}"));
            let log = dir.join(format!("{backward}-{name}.json"));
            let (ck_s, log_s) = (ck.to_string_lossy(), log.to_string_lossy());
            let args = base(
                &data,
                backward,
                &[
                    "--steps",
                    "5",
                    "--checkpoint-dir",
                    &ck_s,
                    "--log-json",
                    &log_s,
                ],
            );
            let out = train_ok(np, &args);
            if np == 2 {
                assert!(out.contains("(1 per rank x 2 ranks)"), "{out}");
                // Rank 0's peak RSS against its per-rank (ZeRO-1) estimate, as 1-rank runs are.
                let (rss, est) = peak_and_estimate(&out);
                eprintln!(
                    "{backward} 2 ranks: rank 0 peak RSS {:.1} MiB, estimate {:.1} MiB",
                    rss / MIB,
                    est / MIB
                );
                assert!((0.85..=1.15).contains(&(rss / est)), "{out}");
                assert!(
                    !out.contains("rank 1: step"),
                    "rank 1 logged its steps:\n{out}"
                );
            }
            (losses(&log), state(&ck, 5))
        };
        let (l1, s1) = run(1, "one");
        let (l2, s2) = run(2, "two");
        let (l2b, s2b) = run(2, "two-again");
        // N ranks reproduce themselves bit for bit (the sums are in rank order).
        assert_eq!(
            bits(&l2),
            bits(&l2b),
            "{backward}: 2-rank losses not reproducible"
        );
        for k in 0..3 {
            assert_eq!(
                bits(&s2[k]),
                bits(&s2b[k]),
                "{backward}: 2-rank state {k} not reproducible"
            );
        }
        // Against 1 rank with 2 micro batches: the same data, the same MXFP4 streams, the same
        // sum of the two micro gradients; only the accumulation inside the backward ops rounds
        // differently (1 rank adds micro batch 2 into the buffer holding micro batch 1).
        assert_eq!(l1.len(), 5);
        let dl = rel_diff(&l1, &l2);
        let (dp, dm, dv) = (
            rel_diff(&s1[0], &s2[0]),
            rel_diff(&s1[1], &s2[1]),
            rel_diff(&s1[2], &s2[2]),
        );
        eprintln!("{backward}: 2 ranks vs 1 rank x 2 accumulation after 5 steps: loss {dl:.2e}, params {dp:.2e}, adam m {dm:.2e}, adam v {dv:.2e} (largest difference / largest value)");
        assert_eq!(
            l1[0].to_bits(),
            l2[0].to_bits(),
            "{backward}: the first step's loss differs"
        );
        assert!(
            dl < 1e-5 && dp < 1e-4 && dm < 1e-3 && dv < 1e-3,
            "{backward}: 2 ranks drifted from 1 rank"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The collectives under mpirun: this test binary re-runs itself on 2 ranks
/// (`transport_child`), which checks the sums and gathers bit for bit; and on 3 ranks
/// (oversubscribed), where a sum in another order than rank order would show.
#[test]
fn collectives_sum_in_rank_order_and_regather_exactly() {
    for np in [2, 3] {
        run_child(np, "transport_child", "transport child: ok", &[]);
    }
}

/// Rank r's contribution: values of mixed magnitudes, so the order of a sum shows in its bits.
fn contribution(r: usize, i: usize) -> f32 {
    let x = dataio::splitmix64((r * 1_000_003 + i) as u64);
    let mant = (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
    mant * [1.0, 1e-3, 1e3, 1e-7][(x & 3) as usize]
}

#[test]
fn transport_child() {
    if std::env::var("MXGPT_MPI_CHILD").is_err() {
        return; // only under mpirun, started by the test above
    }
    let dist = gpt::dist::from_env().unwrap();
    // A failed check must end every rank at once, not leave the others in a collective.
    let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        check_transport(dist.as_ref())
    }));
    if checked.is_err() {
        dist.abort(1);
    }
    println!("transport child: ok");
}

fn check_transport(dist: &dyn gpt::dist::Transport) {
    let (me, n) = (dist.rank(), dist.size());
    assert!(n >= 2, "expected at least 2 ranks");
    let in_order = |i: usize| (1..n).fold(contribution(0, i), |s, r| s + contribution(r, i));
    let mut reversed_differs = false;
    for total in [1usize, 2, 7, 1001, 65_537] {
        let shards = Shards::even(total, n);
        let mine = shards.range(me);
        let send: Vec<f32> = (0..total).map(|i| contribution(me, i)).collect();
        let mut out = vec![f32::NAN; mine.len()];
        dist.reduce_scatter_sum(&send, &shards, &mut out).unwrap();
        for (k, i) in mine.clone().enumerate() {
            assert_eq!(
                out[k].to_bits(),
                in_order(i).to_bits(),
                "reduce-scatter element {i} of {total}"
            );
            let rev = (0..n).rev().fold(-0.0f32, |s, r| s + contribution(r, i));
            reversed_differs |= n > 2 && rev.to_bits() != out[k].to_bits();
        }
        // ZeRO-1's all-gather: each rank's shard lands everywhere, bit for bit.
        let mut buf = vec![f32::NAN; total];
        buf[mine.clone()].copy_from_slice(&out);
        dist.all_gather(&mut buf, &shards).unwrap();
        for (i, v) in buf.iter().enumerate() {
            assert_eq!(
                v.to_bits(),
                in_order(i).to_bits(),
                "all-gather element {i} of {total}"
            );
        }
        // The exchange only moves data: slot r holds rank r's part of this rank's shard.
        let m = mine.len();
        let mut parts = vec![f32::NAN; m * n];
        dist.exchange(&send, &shards, &mut parts).unwrap();
        for r in 0..n {
            for (k, i) in mine.clone().enumerate() {
                assert_eq!(
                    parts[r * m + k].to_bits(),
                    contribution(r, i).to_bits(),
                    "exchange: rank {r}'s element {i} of {total}"
                );
            }
        }
        let mut all = send.clone();
        dist.all_reduce_sum(&mut all).unwrap();
        assert_eq!(bits(&all), bits(&buf), "all-reduce of {total}");
    }
    // A sum of two commutes; from three ranks on, the order shows in the bits.
    assert!(
        n == 2 || reversed_differs,
        "the data cannot tell the summation order apart"
    );
    let ranks = dist.all_gather_f64(me as f64 + 0.5).unwrap();
    assert_eq!(ranks, (0..n).map(|r| r as f64 + 0.5).collect::<Vec<_>>());
    assert_eq!(dist.sum_f64(1.25).unwrap(), 1.25 * n as f64);
    let mut b = if me == 0 {
        b"from rank 0".to_vec()
    } else {
        vec![0u8; 11]
    };
    dist.broadcast(&mut b, 0).unwrap();
    assert_eq!(&b, b"from rank 0");
    dist.barrier().unwrap();
}

fn copy_checkpoint(from: &Path, to: &Path, step: u64, ranks: usize) {
    std::fs::create_dir_all(to).unwrap();
    let name = checkpoint::file_name(step);
    std::fs::copy(from.join(&name), to.join(&name)).unwrap();
    for r in 0..ranks {
        let s = checkpoint::shard_path(from, step, r, ranks);
        std::fs::copy(&s, to.join(s.file_name().unwrap())).unwrap();
    }
}

#[test]
fn two_rank_checkpoint_and_resume_is_bit_exact() {
    let dir = tmpdir("mpi-resume");
    let data = synthetic_dataset(&dir, 60);
    let (a, b) = (dir.join("a"), dir.join("b"));
    let (a_s, b_s) = (
        a.to_string_lossy().to_string(),
        b.to_string_lossy().to_string(),
    );
    let (la, lb) = (dir.join("a.json"), dir.join("b.json"));
    let (la_s, lb_s) = (
        la.to_string_lossy().to_string(),
        lb.to_string_lossy().to_string(),
    );
    let common = [
        "--steps",
        "6",
        "--checkpoint-every",
        "3",
        "--keep-checkpoints",
        "5",
    ];
    let mut args_a = base(&data, "mxfp4", &common);
    args_a.extend(["--checkpoint-dir", &a_s, "--log-json", &la_s]);
    train_ok(2, &args_a);
    // Every rank's shard and the model file, which rank 0 wrote last.
    for step in [3, 6] {
        for r in 0..2 {
            assert!(checkpoint::shard_path(&a, step, r, 2).exists());
        }
    }
    // Resume from the step-3 checkpoint in a directory of its own: steps 4..6 and the final
    // state reproduce the uninterrupted run bit for bit.
    copy_checkpoint(&a, &b, 3, 2);
    let mut args_b = base(&data, "mxfp4", &common);
    args_b.extend([
        "--checkpoint-dir",
        &b_s,
        "--resume",
        "auto",
        "--log-json",
        &lb_s,
    ]);
    let out = train_ok(2, &args_b);
    assert!(
        out.contains("resumed from") && out.contains("every training setting matches"),
        "{out}"
    );
    assert_eq!(
        bits(&losses(&la)[3..]),
        bits(&losses(&lb)),
        "resumed losses differ"
    );
    let (sa, sb) = (state(&a, 6), state(&b, 6));
    for k in 0..3 {
        assert_eq!(
            bits(&sa[k]),
            bits(&sb[k]),
            "state array {k} differs after resume"
        );
    }

    // Another number of ranks is refused, naming both.
    let mut one = base(&data, "mxfp4", &["--steps", "7"]);
    one.extend(["--checkpoint-dir", &b_s, "--resume", "auto"]);
    let (code, text) = train(1, &one);
    assert_ne!(code, 0);
    assert!(
        text.contains("written by 2 rank(s), this run has 1"),
        "{text}"
    );

    // A corrupt shard of the newest checkpoint: every rank falls back to the step-3 one.
    let shard = checkpoint::shard_path(&b, 6, 1, 2);
    let mut bytes = std::fs::read(&shard).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&shard, bytes).unwrap();
    let mut again = base(&data, "mxfp4", &["--steps", "6", "--checkpoint-every", "3"]);
    again.extend(["--checkpoint-dir", &b_s, "--resume", "auto"]);
    let out = train_ok(2, &again);
    assert!(
        out.contains("checksum mismatch") && out.contains("ckpt_00000003.bin"),
        "{out}"
    );

    // Shards split otherwise than this build splits (as before shard boundaries were multiples
    // of 8; the tiny model's total is a multiple of 16, so here the boundary moves by 4): the
    // resume is refused with the expected range, never misread.
    let [_, m, v] = state(&b, 6);
    let total = m.len();
    let split = Shards::even(total, 2).range(1).start + 4;
    for (r, range) in [(0, 0..split), (1, split..total)] {
        let (m, v) = (&m[range.clone()], &v[range.clone()]);
        checkpoint::save_shard(
            &b,
            6,
            (r, 2),
            (range.start, range.len()),
            2,
            &mut |i, at, c| {
                c.copy_from_slice(&[m, v][i][at..at + c.len()]);
                Ok(())
            },
        )
        .unwrap();
    }
    let p6 = b
        .join(checkpoint::file_name(6))
        .to_string_lossy()
        .to_string();
    let mut other = base(&data, "mxfp4", &["--steps", "7"]);
    other.extend(["--checkpoint-dir", &b_s, "--resume", &p6]);
    let (code, text) = train(2, &other);
    assert_ne!(code, 0, "{text}");
    assert!(
        text.contains("rank(s) [0, 1] could not read their part")
            && text.contains("a checkpoint whose shards were split otherwise"),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The pid of rank `rank` of the job whose ranks have `tag` in their environment.
fn rank_pid(tag: &str, rank: usize) -> Option<i32> {
    let want = [
        format!("OMPI_COMM_WORLD_RANK={rank}"),
        format!("MXGPT_TEST_TAG={tag}"),
    ];
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        let env = std::fs::read(e.path().join("environ")).ok()?;
        let env = String::from_utf8_lossy(&env);
        let vars: Vec<&str> = env.split('\0').collect();
        (comm.trim() == "train_gpt" && want.iter().all(|w| vars.contains(&w.as_str())))
            .then_some(pid)
    })
}

/// A 2-rank job (bf16, checkpoints every 2 steps, `extra` arguments) that runs until its
/// step-4 checkpoint exists, then has `signal` sent to rank 1; waits until the job ends (at most
/// `within`) and checks that the newest complete checkpoint resumes on 2 ranks. Returns the
/// job's output and how long after the signal it ended.
fn signal_rank_1(name: &str, signal: i32, extra: &[&str], within: Duration) -> (String, Duration) {
    let dir = tmpdir(name);
    let data = synthetic_dataset(&dir, 60);
    let ck = dir.join("ck");
    let ck_s = ck.to_string_lossy().to_string();
    let log = dir.join("out.txt");
    let mut args = base(
        &data,
        "bf16",
        &["--steps", "1000", "--checkpoint-every", "2"],
    );
    args.extend(["--checkpoint-dir", &ck_s]);
    args.extend_from_slice(extra);
    let tag = dir.to_string_lossy().to_string();
    let mut child = mpirun(2)
        .env("MXGPT_TEST_TAG", &tag)
        .arg(env!("CARGO_BIN_EXE_train_gpt"))
        .args(&args)
        .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("err.txt")).unwrap(),
        ))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ck.join(checkpoint::file_name(4)).exists() {
        assert!(
            Instant::now() < deadline,
            "no checkpoint at step 4 within 2 minutes"
        );
        assert!(child.try_wait().unwrap().is_none(), "the job ended early");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = rank_pid(&tag, 1).expect("rank 1's process");
    // SAFETY: kill(2) on a process we started.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    let signalled = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if signalled.elapsed() > within {
            // Leave nothing behind: a stopped rank would never end by itself.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = child.kill();
            panic!("the job still runs {within:?} after signal {signal} to rank 1");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let ended = signalled.elapsed();
    let text = std::fs::read_to_string(&log).unwrap()
        + &std::fs::read_to_string(dir.join("err.txt")).unwrap();
    eprintln!(
        "the job ended {:.1} s after signal {signal} to rank 1, saying:\n{}",
        ended.as_secs_f64(),
        text.lines()
            .filter(|l| l.contains("error") || l.contains("rank 1"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(!status.success(), "{text}");
    assert!(
        rank_pid(&tag, 1).is_none(),
        "rank 1 outlived the job:\n{text}"
    );
    // The newest complete checkpoint resumes (on the same 2 ranks).
    let (newest, _) = checkpoint::list(&ck).unwrap()[0].clone();
    let step = newest;
    let steps = (step + 1).to_string();
    let mut resume = base(&data, "bf16", &["--steps", &steps]);
    resume.extend(["--checkpoint-dir", &ck_s, "--resume", "auto"]);
    let out = train_ok(2, &resume);
    assert!(
        out.contains(&format!(
            "resumed from {}",
            ck.join(checkpoint::file_name(step)).display()
        )),
        "{out}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    (text, ended)
}

#[test]
fn a_killed_rank_ends_the_job_and_the_last_checkpoint_stays_valid() {
    let (text, _) = signal_rank_1("mpi-kill", libc::SIGKILL, &[], Duration::from_secs(60));
    assert!(
        text.contains("rank 1") && text.contains("signal 9"),
        "no clear message:\n{text}"
    );
}

/// A rank that is alive but stuck (SIGSTOP): the other's watchdog ends the job once a collective
/// has waited --collective-timeout, naming the limit; the stopped rank does not outlive the job.
#[test]
fn a_stopped_rank_ends_the_job_within_the_collective_timeout() {
    let (text, ended) = signal_rank_1(
        "mpi-stop",
        libc::SIGSTOP,
        &["--collective-timeout", "4"],
        Duration::from_secs(60),
    );
    assert!(
        text.contains("rank 0 of 2")
            && text.contains("--collective-timeout 4)")
            && text.contains("another rank is stuck"),
        "no clear message:\n{text}"
    );
    // Not long before the limit: the collective in progress began at most about a step (well
    // under 2 s, even on a loaded machine) before the signal.
    assert!(ended > Duration::from_secs(2), "ended after {ended:?}");
}

#[test]
fn a_bad_collective_timeout_is_refused_naming_it() {
    for bad in ["-1", "nan", "inf"] {
        let (code, text) = train(1, &["--collective-timeout", bad, "--steps", "1"]);
        assert_ne!(code, 0);
        assert!(
            text.to_lowercase()
                .contains(&format!("--collective-timeout {bad}"))
                && text.contains("expected a number of seconds >= 0"),
            "{bad}: {text}"
        );
    }
}

#[test]
fn a_rank_that_fails_ends_the_job_and_its_checkpoint_never_counts() {
    let dir = tmpdir("mpi-fail");
    let data = synthetic_dataset(&dir, 60);
    let ck = dir.join("ck");
    let ck_s = ck.to_string_lossy().to_string();
    // Rank 1 cannot write its shard of the step-4 checkpoint (a directory is in the way).
    let blocker = dir.join("ck/ckpt_00000004.rank1-of-2.bin.tmp");
    std::fs::create_dir_all(&blocker).unwrap();
    let mut args = base(&data, "bf16", &["--steps", "8", "--checkpoint-every", "2"]);
    args.extend(["--checkpoint-dir", &ck_s]);
    let t = Instant::now();
    let (code, text) = train(2, &args);
    eprintln!(
        "the job ended {:.1} s after it started",
        t.elapsed().as_secs_f64()
    );
    assert_ne!(code, 0, "{text}");
    assert!(
        text.contains("rank 1 of 2") && text.contains("aborting all 2 ranks"),
        "{text}"
    );
    assert!(text.contains("ckpt_00000004.rank1-of-2.bin.tmp"), "{text}");
    // Rank 0 never wrote the step-4 model file: the step-2 checkpoint is the newest and resumes.
    let newest: Vec<u64> = checkpoint::list(&ck).unwrap().iter().map(|c| c.0).collect();
    assert_eq!(newest, vec![2], "{text}");
    std::fs::remove_dir_all(&blocker).unwrap();
    let mut resume = base(&data, "bf16", &["--steps", "3"]);
    resume.extend(["--checkpoint-dir", &ck_s, "--resume", "auto"]);
    let out = train_ok(2, &resume);
    assert!(out.contains("ckpt_00000002.bin at step 2"), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}
