//! Nothing lost, nothing misleading: one run per checkpoint directory, unusable directories
//! found at start, `--resume auto` past corrupt files, resumed settings that differ are listed,
//! outlier steps skipped, a JSON log that reads as one run, flags that would do nothing refused.

mod common;
use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn s(p: &Path) -> String {
    p.to_string_lossy().to_string()
}

fn flip_byte(path: &Path, at: usize) {
    let mut b = std::fs::read(path).unwrap();
    b[at] ^= 0xFF;
    std::fs::write(path, b).unwrap();
}

#[test]
fn a_checkpoint_dir_serves_one_run_at_a_time() {
    let dir = tmpdir("lock");
    let data = synthetic_dataset(&dir, 8);
    let ck = s(&dir.join("ck"));
    // A long run holds the directory (killed when this test ends, whatever happens)...
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut first = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_train_gpt"))
            .args(tiny(
                &data,
                &["--steps", "1000000", "--checkpoint-dir", &ck],
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let lock = dir.join("ck/train_gpt.lock");
    let pid = format!("pid {}", first.0.id());
    let t0 = Instant::now();
    while !std::fs::read_to_string(&lock).is_ok_and(|t| t.contains(&pid)) {
        assert!(t0.elapsed() < Duration::from_secs(60), "no lock file");
        std::thread::sleep(Duration::from_millis(20));
    }
    // ... so a second one is refused at start, naming the directory and the holder.
    let text = train_gpt_fails(
        &tiny(&data, &["--steps", "1", "--checkpoint-dir", &ck]),
        &[
            &ck,
            "in use by another run",
            &format!("PID {}", first.0.id()),
            "started",
        ],
    );
    assert!(!text.contains("| loss "), "{text}");
    // A killed run leaves its lock file behind; the kernel dropped the lock, so it does not
    // block the next run.
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    assert!(lock.exists());
    train_gpt_ok(&tiny(
        &data,
        &["--steps", "1", "--checkpoint-dir", &ck, "--resume", "auto"],
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_unusable_checkpoint_dir_is_found_before_training() {
    let dir = tmpdir("baddir");
    let data = synthetic_dataset(&dir, 8);
    let file = dir.join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    // The default --checkpoint-every 0 writes only at the end: still refused at the start.
    let cases = [
        (s(&file), "is not a directory"),
        (s(&file.join("sub")), "cannot create checkpoint directory"),
    ];
    for (ck, why) in &cases {
        let text = train_gpt_fails(
            &tiny(&data, &["--steps", "3", "--checkpoint-dir", ck]),
            &[ck, why],
        );
        assert!(!text.contains("| loss "), "trained before failing:\n{text}");
    }
    // Permissions do not stop root, so this case only runs as another user.
    if unsafe { libc::geteuid() } != 0 {
        use std::os::unix::fs::PermissionsExt;
        let ro = dir.join("read-only");
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        let text = train_gpt_fails(
            &tiny(&data, &["--steps", "3", "--checkpoint-dir", &s(&ro)]),
            &[&s(&ro), "not writable"],
        );
        assert!(!text.contains("| loss "), "{text}");
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn resume_auto_skips_corrupt_checkpoints() {
    let dir = tmpdir("fallback");
    let data = synthetic_dataset(&dir, 8);
    let ck = dir.join("ck");
    let every = [
        "--checkpoint-dir",
        &s(&ck),
        "--checkpoint-every",
        "1",
        "--keep-checkpoints",
        "10",
    ];
    let mut a = tiny(&data, &every);
    a.extend(["--steps", "3"]);
    train_gpt_ok(&a);
    let path = |n: u64| ck.join(format!("ckpt_{n:08}.bin"));
    // The newest has a flipped bit, the next is truncated: resume from step 1.
    let len = std::fs::metadata(path(3)).unwrap().len() as usize;
    flip_byte(&path(3), len / 2);
    let two = std::fs::read(path(2)).unwrap();
    std::fs::write(path(2), &two[..two.len() / 3]).unwrap();
    // A half-written temp file of a killed run is not a candidate, and is cleaned up.
    std::fs::write(ck.join("ckpt_00000009.bin.tmp"), b"half").unwrap();
    let mut b = tiny(&data, &every);
    b.extend(["--steps", "4", "--resume", "auto"]);
    let text = train_gpt_ok(&b);
    for needle in [
        "skipping checkpoint",
        "ckpt_00000003.bin: checksum mismatch",
        "ckpt_00000002.bin: file is",
        &format!("resumed from {} at step 1", s(&path(1))),
    ] {
        assert!(text.contains(needle), "expected '{needle}' in:\n{text}");
    }
    assert!(!ck.join("ckpt_00000009.bin.tmp").exists());
    // Steps 2..4 were trained again after the fallback.
    assert!(
        text.contains("step     2/4") && text.contains("step     4/4"),
        "{text}"
    );

    // When none is valid, the error lists every one skipped.
    let bad = dir.join("bad");
    std::fs::create_dir(&bad).unwrap();
    for n in [5u64, 7] {
        std::fs::write(bad.join(format!("ckpt_{n:08}.bin")), b"garbage").unwrap();
    }
    let bad_s = s(&bad);
    let mut c = tiny(&data, &["--checkpoint-dir", &bad_s]);
    c.extend(["--steps", "8", "--resume", "auto"]);
    train_gpt_fails(
        &c,
        &[
            "none of the 2 checkpoints",
            &s(&bad),
            "ckpt_00000005.bin: not an mxgpt checkpoint",
            "ckpt_00000007.bin: not an mxgpt checkpoint",
        ],
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_resume_lists_every_setting_that_differs() {
    let dir = tmpdir("settings");
    let data = synthetic_dataset(&dir, 8);
    let ck = dir.join("ck");
    let ck_s = s(&ck);
    let mut a = tiny(&data, &["--checkpoint-dir", &ck_s, "--lr", "1e-3"]);
    a.extend(["--steps", "3", "--checkpoint-every", "2"]);
    train_gpt_ok(&a);
    let p = s(&ck.join("ckpt_00000002.bin"));

    // Same settings: nothing listed.
    let mut same = tiny(&data, &["--lr", "1e-3", "--resume", &p]);
    same.extend(["--steps", "3"]);
    let text = train_gpt_ok(&same);
    assert!(
        text.contains("every training setting matches") && !text.contains(" -> "),
        "{text}"
    );

    // A precision switch (the decay-phase recipe), a new learning rate and micro batch: allowed,
    // and each difference is listed with both values.
    let mut other = tiny(
        &data,
        &["--lr", "5e-4", "--backward", "mxfp4", "--resume", &p],
    );
    other[3] = "2"; // --batch 2
    other.extend(["--steps", "3"]);
    let text = train_gpt_ok(&other);
    for needle in [
        "--lr: 0.001 -> 0.0005",
        "--backward: bf16 -> mxfp4",
        "--batch: 1 -> 2",
        "--total-batch-tokens: 32 -> 64",
        "the bit-exact resume guarantee holds only when nothing differs",
    ] {
        assert!(text.contains(needle), "expected '{needle}' in:\n{text}");
    }
    assert!(
        !text.contains("--seed:") && !text.contains("--seq:"),
        "{text}"
    );

    // A checkpoint from before the settings were stored: what it held is compared, the rest is
    // "unknown".
    let mut old = gpt::checkpoint::load(Path::new(&p)).unwrap();
    let t = old.train.as_object_mut().unwrap();
    t.remove("settings");
    t.remove("outliers");
    let old_dir = dir.join("old");
    let old_path = gpt::checkpoint::save(&old_dir, &old).unwrap();
    let old_s = s(&old_path);
    let mut legacy = tiny(&data, &["--lr", "1e-3", "--resume", &old_s]);
    legacy.extend(["--steps", "3"]);
    let text = train_gpt_ok(&legacy);
    assert!(text.contains("--lr: unknown -> 0.001"), "{text}");
    assert!(
        !text.contains("--batch:") && !text.contains("--seed:"),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn outlier_steps_skip_the_optimizer_update() {
    let dir = tmpdir("outliers");
    let data = synthetic_dataset(&dir, 20);
    let log = dir.join("log.jsonl");
    // A constant learning rate, so a run cut short computes the same steps as a longer one.
    let common = [
        "--schedule",
        "constant",
        "--warmup-steps",
        "0",
        "--lr",
        "1e-3",
        "--outlier-window",
        "8",
        "--skip-outliers",
        "1.0",
    ];
    let mut a = tiny(&data, &common);
    let log_s = s(&log);
    a.extend(["--steps", "30", "--log-json", &log_s]);
    let text = train_gpt_ok(&a);
    assert!(text.contains("skipped the update: "), "{text}");
    let recs = json_lines(&log);
    let skipped: Vec<u64> = recs
        .iter()
        .filter(|r| r["skipped"] == true)
        .map(|r| r["step"].as_u64().unwrap())
        .collect();
    // z-scores exist once the window is full, and only then can a step be skipped.
    assert!(recs[..8].iter().all(|r| r.get("loss_z").is_none()));
    assert!(recs[8..]
        .iter()
        .all(|r| r["loss_z"].is_f64() && r["grad_norm_z"].is_f64()));
    assert!(
        !skipped.is_empty() && skipped.len() < 22 && skipped[0] > 8,
        "skipped {skipped:?}"
    );

    // The state after a skipped step is the state before it, bit for bit.
    let s_step = skipped[0];
    let ck = dir.join("ck");
    let ck_s = s(&ck);
    let mut b = tiny(&data, &common);
    let steps = s_step.to_string();
    b.extend([
        "--steps",
        &steps,
        "--checkpoint-dir",
        &ck_s,
        "--checkpoint-every",
        "1",
        "--keep-checkpoints",
        "2",
    ]);
    train_gpt_ok(&b);
    let load = |n: u64| gpt::checkpoint::load(&ck.join(format!("ckpt_{n:08}.bin"))).unwrap();
    let (before, after) = (load(s_step - 1), load(s_step));
    let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert!(
        bits(&before.params) == bits(&after.params),
        "weights changed"
    );
    assert!(
        bits(&before.adam_m) == bits(&after.adam_m),
        "moments changed"
    );
    assert!(
        bits(&before.adam_v) == bits(&after.adam_v),
        "moments changed"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_json_log_of_a_resumed_run_reads_as_one_run() {
    let dir = tmpdir("jsonlog");
    let data = synthetic_dataset(&dir, 8);
    let ck = dir.join("ck");
    let log = dir.join("log.jsonl");
    let (log_s, ck_s) = (s(&log), s(&ck));
    let common = vec![
        "--model",
        "tiny",
        "--batch",
        "1",
        "--seq",
        "32",
        "--data",
        &data,
        "--log-json",
        &log_s,
        "--checkpoint-dir",
        &ck_s,
        "--checkpoint-every",
        "3",
        "--keep-checkpoints",
        "5",
        "--eval-every",
        "2",
        "--eval-batches",
        "1",
        "--steps",
        "6",
    ];
    train_gpt_ok(&common);
    let full = json_lines(&log);
    // The run was "killed" while writing step 7's record (the file also ends mid-line).
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::io::Write::write_all(&mut f, b"{\"type\":\"train\",\"step\":7,\"lo").unwrap();
    drop(f);
    // Resuming at step 3 redoes steps 4..6: their old records go, the new ones are appended.
    let mid = s(&ck.join("ckpt_00000003.bin"));
    let mut resumed = common.clone();
    resumed.extend(["--resume", &mid]);
    train_gpt_ok(&resumed);
    let again = json_lines(&log);
    let steps = |v: &[Value], kind: &str| -> Vec<u64> {
        v.iter()
            .filter(|r| r["type"] == kind)
            .map(|r| r["step"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(steps(&again, "train"), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(steps(&again, "eval"), vec![2, 4, 6]);
    // A resumed CPU run reproduces the losses, so the file equals the uninterrupted run's.
    let losses = |v: &[Value]| -> Vec<String> {
        v.iter()
            .map(|r| format!("{} {} {}", r["step"], r["loss"], r["val_loss"]))
            .collect()
    };
    assert_eq!(losses(&again), losses(&full));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn hadamard_block_needs_a_mode_with_rht() {
    let dir = tmpdir("hadamard");
    let data = synthetic_dataset(&dir, 8);
    for mode in ["bf16", "mxfp4-rtn", "mxfp4-sr"] {
        let mut a = tiny(&data, &["--backward", mode, "--hadamard-block", "64"]);
        a.extend(["--steps", "1"]);
        train_gpt_fails(&a, &["--hadamard-block 64", mode, "no effect", "mxfp4-rht"]);
    }
    let mut ok = tiny(
        &data,
        &["--backward", "mxfp4-rht", "--hadamard-block", "32"],
    );
    ok.extend(["--steps", "1"]);
    let text = train_gpt_ok(&ok);
    assert!(text.contains("Hadamard block 32"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn hadamard_signs_need_a_mode_with_rht_and_a_known_value() {
    let dir = tmpdir("hadamard-signs");
    let data = synthetic_dataset(&dir, 8);
    for mode in ["bf16", "mxfp4-sr", "nvfp4"] {
        let mut a = tiny(&data, &["--backward", mode, "--hadamard-signs", "fixed"]);
        a.extend(["--steps", "1"]);
        train_gpt_fails(&a, &["--hadamard-signs fixed", mode, "no effect"]);
    }
    let mut bad = tiny(
        &data,
        &["--backward", "mxfp4", "--hadamard-signs", "random"],
    );
    bad.extend(["--steps", "1"]);
    train_gpt_fails(&bad, &["--hadamard-signs 'random'", "fresh", "fixed"]);
    let mut ok = tiny(
        &data,
        &[
            "--backward",
            "mxfp4",
            "--hadamard-block",
            "32",
            "--hadamard-signs",
            "fixed",
        ],
    );
    ok.extend(["--steps", "1"]);
    let text = train_gpt_ok(&ok);
    assert!(text.contains("fixed signs"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}
