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
