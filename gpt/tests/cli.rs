//! `train_gpt` as a user runs it: every bad input gives a clear error naming the problem and a
//! non-zero exit, and a NaN stops the run without touching the last good checkpoint.

mod common;
use common::*;
use std::process::Command;

fn assert_fails(args: &[&str], needles: &[&str]) {
    let (code, text) = train_gpt(args);
    assert_ne!(code, 0, "{args:?} should fail; output:\n{text}");
    for n in needles {
        assert!(
            text.contains(n),
            "{args:?}: expected '{n}' in the error; got:\n{text}"
        );
    }
}

#[test]
fn bad_arguments_are_named() {
    let dir = tmpdir("cli-args");
    let data = synthetic_dataset(&dir, 8);
    assert_fails(&["--no-such-flag"], &["--no-such-flag"]);
    assert_fails(
        &["--model", "gigantic", "--data", &data],
        &["gigantic", "124m", "tiny"],
    );
    assert_fails(
        &["--data", &format!("{}/nothing_here", dir.display())],
        &["nothing_here"],
    );
    assert_fails(
        &["--model", "tiny", "--seq", "4096", "--data", &data],
        &["--seq 4096", "256"],
    );
    assert_fails(
        &["--model", "tiny", "--batch", "0", "--data", &data],
        &["--batch"],
    );
    assert_fails(
        &["--model", "tiny", "--backward", "fp3", "--data", &data],
        &["fp3", "mxfp4-rtn"],
    );
    assert_fails(
        &["--model", "tiny", "--device", "cuda", "--data", &data],
        &["cuda"],
    );
    assert_fails(
        &[
            "--model",
            "tiny",
            "--seq",
            "64",
            "--total-batch-tokens",
            "100",
            "--data",
            &data,
        ],
        &["--total-batch-tokens 100"],
    );
    assert_fails(
        &["--model", "tiny", "--schedule", "zigzag", "--data", &data],
        &["zigzag", "cosine"],
    );
    assert_fails(
        &["--model", "tiny", "--forward", "fp4", "--data", &data],
        &["unknown --forward mode 'fp4'", "bf16 or fp8"],
    );
    assert_fails(
        &[
            "--model",
            "tiny",
            "--fp8-scaling",
            "delayed",
            "--data",
            &data,
        ],
        &["--fp8-scaling", "--forward fp8"],
    );
    assert_fails(
        &[
            "--model",
            "tiny",
            "--forward",
            "fp8",
            "--fp8-scaling",
            "sometimes",
            "--data",
            &data,
        ],
        &["sometimes", "current or delayed"],
    );
    assert_fails(
        &[
            "--model",
            "tiny",
            "--forward",
            "fp8",
            "--fp8-amax-history",
            "8",
            "--data",
            &data,
        ],
        &["--fp8-amax-history 8", "delayed"],
    );
    // 6.7B parameters at a large batch: refused up front with the estimate, not an OOM kill.
    assert_fails(
        &[
            "--model", "6.7b", "--batch", "64", "--device", "cpu", "--data", &data,
        ],
        &["out of memory", "GiB", "--batch"],
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_checkpoints_are_named() {
    let dir = tmpdir("cli-ckpt");
    let data = synthetic_dataset(&dir, 8);
    let ck = dir.join("ck");
    let ck_s = ck.to_string_lossy().to_string();
    let base = [
        "--model",
        "tiny",
        "--batch",
        "1",
        "--seq",
        "32",
        "--eval-every",
        "0",
        "--data",
        &data,
    ];
    let mut a = base.to_vec();
    a.extend(["--steps", "1", "--checkpoint-dir", &ck_s]);
    let (code, text) = train_gpt(&a);
    assert_eq!(code, 0, "{text}");
    let path = ck.join("ckpt_00000001.bin");
    let p = path.to_string_lossy().to_string();

    // Another model shape.
    let mut other = base.to_vec();
    other.extend(["--layers", "3", "--steps", "2", "--resume", &p]);
    assert_fails(
        &other,
        &["ckpt_00000001.bin", "different model", "3 layers"],
    );
    // Another micro batch is allowed (the data order continues at the same point of the epoch),
    // and the difference is listed.
    let mut b = vec![
        "--model",
        "tiny",
        "--batch",
        "2",
        "--seq",
        "32",
        "--eval-every",
        "0",
        "--data",
        &data,
    ];
    b.extend(["--steps", "2", "--resume", &p]);
    let text = train_gpt_ok(&b);
    assert!(
        text.contains("--batch: 1 -> 2") && text.contains("does not carry over"),
        "{text}"
    );
    // A corrupted file.
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xFF;
    std::fs::write(&path, &bytes).unwrap();
    let mut c = base.to_vec();
    c.extend(["--steps", "2", "--resume", &p]);
    assert_fails(&c, &["ckpt_00000001.bin", "corrupt"]);
    // A missing one.
    let mut m = base.to_vec();
    m.extend(["--steps", "2", "--resume", "/nonexistent/ckpt.bin"]);
    assert_fails(&m, &["/nonexistent/ckpt.bin"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn nan_loss_stops_the_run_and_names_the_last_normal_checkpoint() {
    let dir = tmpdir("cli-nan");
    let data = synthetic_dataset(&dir, 8);
    let ck = dir.join("ck");
    let ck_s = ck.to_string_lossy().to_string();
    let every_step = [
        "--checkpoint-dir",
        &ck_s,
        "--checkpoint-every",
        "1",
        "--keep-checkpoints",
        "2",
        "--warmup-steps",
        "0",
        "--grad-clip",
        "0",
    ];
    // Three healthy steps, then the same run resumed with an absurd learning rate: the weights
    // blow up (losses of 1e13 and more) for a few checkpoints before the loss turns NaN.
    let mut healthy = tiny(&data, &every_step);
    healthy.extend(["--steps", "3", "--lr", "1e-3"]);
    train_gpt_ok(&healthy);
    let good = ck.join("ckpt_00000003.bin");
    let mut wild = tiny(&data, &every_step);
    wild.extend(["--steps", "50", "--lr", "1e6", "--resume", "auto"]);
    let text = train_gpt_fails(&wild, &["non-finite", "normal range", "already diverged"]);
    // The error names the last checkpoint whose weights still gave a normal loss, not the last
    // one written, and pruning (--keep-checkpoints 2) kept it.
    let named = format!("is {} (loss", good.display());
    assert!(text.contains(&named), "expected '{named}' in:\n{text}");
    assert!(good.exists(), "the last good checkpoint was pruned");
    let latest = gpt::checkpoint::latest(&ck).unwrap().unwrap();
    assert_ne!(
        latest, good,
        "the run should have written diverged checkpoints:\n{text}"
    );
    assert!(
        !text.contains(&format!("is {} (loss", latest.display())),
        "{text}"
    );
    // Every file left behind is a complete checkpoint (no temp files), and the good one holds
    // finite weights.
    for f in std::fs::read_dir(&ck).unwrap().flatten().map(|e| e.path()) {
        if f.file_name().unwrap() != "train_gpt.lock" {
            assert!(f.extension().unwrap() == "bin", "leftover {}", f.display());
            gpt::checkpoint::load(&f).unwrap();
        }
    }
    let c = gpt::checkpoint::load(&good).unwrap();
    assert!(c.params.iter().all(|x| x.is_finite()));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn log_json_records_and_counters_line() {
    let dir = tmpdir("cli-json");
    let data = synthetic_dataset(&dir, 8);
    let log = dir.join("log.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_train_gpt"))
        .args([
            "--model",
            "tiny",
            "--batch",
            "1",
            "--seq",
            "64",
            "--steps",
            "4",
            "--eval-every",
            "2",
            "--eval-batches",
            "1",
            "--backward",
            "mxfp4-rtn",
            "--data",
            &data,
            "--log-json",
            log.to_str().unwrap(),
        ])
        .env("MXGPT_PEAK_TFLOPS", "1.0")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("counters: off"),
        "the log says why counters are off:\n{text}"
    );
    assert!(text.contains("MFU") && text.contains("mx clip"), "{text}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let train: Vec<_> = lines.iter().filter(|v| v["type"] == "train").collect();
    let eval: Vec<_> = lines.iter().filter(|v| v["type"] == "eval").collect();
    assert_eq!(train.len(), 4);
    assert_eq!(
        eval.iter()
            .map(|v| v["step"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![2, 4]
    );
    for (i, r) in train.iter().enumerate() {
        assert_eq!(r["step"].as_u64(), Some(i as u64 + 1));
        for f in ["loss", "lr", "grad_norm", "ms", "tokens_per_s", "mfu"] {
            assert!(
                r[f].as_f64().is_some_and(|x| x.is_finite()),
                "field {f} in {r}"
            );
        }
        assert!(r["mx"]["clipped_fraction"].as_f64().is_some(), "{r}");
    }
    assert!(eval[0]["val_loss"].as_f64().unwrap() > 0.0);
    std::fs::remove_dir_all(&dir).unwrap();
}
