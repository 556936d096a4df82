//! The up-front memory estimate against what `train_gpt` really holds: the peak RSS of the
//! child process (wait4's ru_maxrss) is within 15% of the estimate it logs, fresh and resumed,
//! and a run that cannot fit is refused before it allocates anything.

mod common;
use common::*;
use std::process::{Command, Stdio};

/// Runs train_gpt; returns its peak RSS in bytes (from the kernel, not the process), its exit
/// code and its output.
#[allow(clippy::zombie_processes)] // reaped by wait4, which std's Child does not know about
fn run_measured(args: &[&str], out: &std::path::Path) -> (f64, i32, String) {
    let log = std::fs::File::create(out).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_train_gpt"))
        .args(args)
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let mut status = 0;
    // SAFETY: wait4 on our own child, filling locals.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32, "wait4 failed");
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    let text = std::fs::read_to_string(out).unwrap();
    (usage.ru_maxrss as f64 * 1024.0, code, text)
}

/// The "memory: estimated peak 12.3 MiB (...)" figure of a run's log, in bytes.
fn logged_estimate(text: &str) -> f64 {
    let rest = text
        .split("memory: estimated peak ")
        .nth(1)
        .unwrap_or_else(|| panic!("no estimate in:\n{text}"));
    let mut words = rest.split_whitespace();
    let value: f64 = words.next().unwrap().parse().unwrap();
    value
        * match words.next().unwrap() {
            "MiB" => (1u64 << 20) as f64,
            "GiB" => (1u64 << 30) as f64,
            u => panic!("unit {u}"),
        }
}

#[test]
fn peak_rss_is_within_15_percent_of_the_estimate() {
    let dir = tmpdir("rss");
    let data = synthetic_dataset(&dir, 40);
    let mut report = Vec::new();
    for (model, backward) in [("tiny", "bf16"), ("small", "mxfp4")] {
        let ck = dir.join(format!("ck-{model}"));
        let ck_s = ck.to_string_lossy().to_string();
        let base = [
            "--model",
            model,
            "--backward",
            backward,
            "--batch",
            "2",
            "--seq",
            "64",
            "--eval-every",
            "0",
            "--device",
            "cpu",
            "--data",
            &data,
        ];
        let runs: [(&str, Vec<&str>); 3] = [
            ("no checkpoints", vec!["--steps", "2"]),
            ("fresh", vec!["--steps", "2", "--checkpoint-dir", &ck_s]),
            (
                "resumed",
                vec![
                    "--steps",
                    "3",
                    "--checkpoint-dir",
                    &ck_s,
                    "--resume",
                    "auto",
                ],
            ),
        ];
        for (what, extra) in runs {
            let mut args = base.to_vec();
            args.extend(extra);
            let (rss, code, text) = run_measured(&args, &dir.join("out.txt"));
            assert_eq!(code, 0, "{args:?}:\n{text}");
            let est = logged_estimate(&text);
            let ratio = rss / est;
            report.push(format!(
                "{model} {backward} {what}: peak RSS {:.1} MiB, estimate {:.1} MiB ({:+.1}%)",
                rss / (1u64 << 20) as f64,
                est / (1u64 << 20) as f64,
                (ratio - 1.0) * 100.0
            ));
            assert!(
                (0.85..=1.15).contains(&ratio),
                "{model} {what}: peak RSS {rss} vs estimate {est}\n{}\n{text}",
                report.join("\n")
            );
        }
    }
    eprintln!("{}", report.join("\n"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// 1.3B parameters at the smallest batch: the arenas alone (what the estimate used to count)
/// fit on a machine of about 24 GiB, but initialization needs another copy of the weights:
/// refused up front with what it needs, not killed by the kernel.
#[test]
fn a_run_that_cannot_fit_is_refused_up_front() {
    // What the run would certainly touch, worked out here rather than by the code under test:
    // parameters, gradients, two moments, and the host copy the weights are initialized in
    // (checkpoints stream through a small buffer).
    let p = gpt::config::ModelConfig::named("1.3b")
        .unwrap()
        .num_parameters() as f64;
    let certain = 4.0 * p * (4.0 + 1.0);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let avail_kb: f64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap();
    if avail_kb * 1024.0 >= certain {
        eprintln!("this machine has room for a 1.3b run: nothing to check");
        return;
    }
    let dir = tmpdir("oom");
    let data = synthetic_dataset(&dir, 8);
    let ck = dir.join("ck").to_string_lossy().to_string();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_train_gpt"));
    cmd.args([
        "--model",
        "1.3b",
        "--batch",
        "1",
        "--seq",
        "64",
        "--device",
        "cpu",
        "--data",
        &data,
        "--checkpoint-dir",
        &ck,
    ]);
    // If the check let the run through, its allocations fail at 4 GiB instead of pressing the
    // whole machine into the OOM killer.
    // SAFETY: setrlimit is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            let lim = libc::rlimit {
                rlim_cur: 4 << 30,
                rlim_max: 4 << 30,
            };
            libc::setrlimit(libc::RLIMIT_AS, &lim);
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    for needle in [
        "out of memory",
        "needs an estimated",
        "checkpoint save",
        "available",
        "smaller --model",
    ] {
        assert!(text.contains(needle), "expected '{needle}' in:\n{text}");
    }
    assert!(!text.contains("| loss "), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}
