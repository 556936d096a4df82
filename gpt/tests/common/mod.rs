//! Helpers shared by the trainer's integration tests.
#![allow(dead_code)]

use dataio::Dtype;
use dataio::MegatronWriter;
use std::path::{Path, PathBuf};

/// A fresh, empty temporary directory unique to this test.
pub fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mxgpt-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes PREFIX_train and PREFIX_val Megatron datasets of learnable synthetic text: each
/// document repeats a short random phrase of token ids, so a model can drive the loss down.
pub fn synthetic_dataset(dir: &Path, docs: usize) -> String {
    let prefix = dir.join("synth").to_string_lossy().to_string();
    let mut state = 12345u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for (part, n) in [("train", docs), ("val", docs / 4 + 1)] {
        let mut w = MegatronWriter::create(&format!("{prefix}_{part}"), Dtype::U16).unwrap();
        for _ in 0..n {
            let phrase: Vec<u32> = (0..5).map(|_| (next() % 500) as u32 + 100).collect();
            let doc: Vec<u32> = phrase
                .iter()
                .cycle()
                .take(90 + (next() % 40) as usize)
                .copied()
                .collect();
            w.add_document(&doc).unwrap();
        }
        w.finish().unwrap();
    }
    prefix
}

pub fn args(list: &[&str]) -> gpt::trainer::TrainArgs {
    use argh::FromArgs;
    gpt::trainer::TrainArgs::from_args(&["train_gpt"], list)
        .unwrap_or_else(|e| panic!("bad test args {list:?}: {}", e.output))
}

/// Runs the `train_gpt` binary; returns its exit code and stdout + stderr.
pub fn train_gpt(args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_train_gpt"))
        .args(args)
        .output()
        .expect("train_gpt runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// `train_gpt` that must succeed; returns its output.
pub fn train_gpt_ok(args: &[&str]) -> String {
    let (code, text) = train_gpt(args);
    assert_eq!(code, 0, "{args:?} failed:\n{text}");
    text
}

/// `train_gpt` that must fail with every one of `needles` in its output; returns the output.
pub fn train_gpt_fails(args: &[&str], needles: &[&str]) -> String {
    let (code, text) = train_gpt(args);
    assert_ne!(code, 0, "{args:?} should fail; output:\n{text}");
    for n in needles {
        assert!(
            text.contains(n),
            "{args:?}: expected '{n}' in the output; got:\n{text}"
        );
    }
    text
}

/// The tiny model at one short sequence on `data`, evaluation off, then `extra`.
pub fn tiny<'a>(data: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "--model",
        "tiny",
        "--batch",
        "1",
        "--seq",
        "32",
        "--eval-every",
        "0",
        "--device",
        "cpu",
        "--data",
        data,
    ];
    v.extend_from_slice(extra);
    v
}

/// The records of a `--log-json` file, one JSON value per line.
pub fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect()
}
