//! Per-layer MXFP4 telemetry in `--log-json`: a record every --mx-telemetry-every steps with one
//! entry per block linear layer and backward GEMM, and measuring it leaves training untouched.

mod common;
use common::*;
use serde_json::Value;
use std::path::Path;

fn run(dir: &Path, data: &str, mode: &str, every: &str) -> Vec<Value> {
    let log = dir.join(format!("{mode}-{every}.jsonl"));
    let log_s = log.to_string_lossy().to_string();
    let mut a = tiny(data, &["--backward", mode, "--mx-telemetry-every", every]);
    if mode == "mxfp4" {
        a.extend(["--hadamard-block", "32"]); // B*T = 32 tokens
    }
    a.extend(["--steps", "4", "--log-json", &log_s]);
    train_gpt_ok(&a);
    json_lines(&log)
}

fn train_losses(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .filter(|r| r["type"] == "train")
        .map(|r| format!("{} {} {}", r["step"], r["loss"], r["grad_norm"]))
        .collect()
}

#[test]
fn per_layer_records_cover_every_gemm_and_leave_training_unchanged() {
    let dir = tmpdir("mx-telemetry");
    let data = synthetic_dataset(&dir, 8);
    let layers = gpt::config::ModelConfig::named("tiny").unwrap().layers;
    for mode in ["mxfp4-rtn", "mxfp4", "nvfp4"] {
        let with = run(&dir, &data, mode, "2");
        let without = run(&dir, &data, mode, "0");
        // Measuring the noise re-runs the GEMMs on the side: the training numbers are identical.
        assert_eq!(train_losses(&with), train_losses(&without), "{mode}");
        assert!(without.iter().all(|r| r["type"] != "mx_layers"));
        let per_layer: Vec<&Value> = with.iter().filter(|r| r["type"] == "mx_layers").collect();
        let steps: Vec<u64> = per_layer
            .iter()
            .map(|r| r["step"].as_u64().unwrap())
            .collect();
        assert_eq!(steps, [2, 4], "{mode}");
        for r in per_layer {
            let sites = r["sites"].as_array().unwrap();
            assert_eq!(
                sites.len(),
                layers * 4 * 2,
                "{mode}: one per layer, linear, GEMM"
            );
            let mut seen = std::collections::BTreeSet::new();
            for site in sites {
                seen.insert(format!(
                    "{} {} {}",
                    site["layer"], site["linear"], site["gemm"]
                ));
                let f = |k: &str| {
                    site[k]
                        .as_f64()
                        .unwrap_or_else(|| panic!("{mode}: {k} missing in {site}"))
                };
                let (clip, under, rel, noise) = (
                    f("clipped_fraction"),
                    f("underflow_fraction"),
                    f("relative_error"),
                    f("noise_to_grad"),
                );
                assert!((0.0..0.5).contains(&clip), "{mode} {site}");
                assert!((0.0..1.0).contains(&under), "{mode} {site}");
                assert!(rel > 0.01 && rel < 1.0, "{mode} {site}");
                // 4-bit operands: a GEMM output a few to tens of percent off, never exact.
                assert!(noise > 1e-3 && noise < 2.0, "{mode} {site}");
            }
            assert_eq!(seen.len(), sites.len(), "{mode}: sites are distinct");
        }
    }
    // Nothing is quantized in bf16: no per-layer records.
    let bf16 = run(&dir, &data, "bf16", "2");
    assert!(bf16.iter().all(|r| r["type"] != "mx_layers"));
    std::fs::remove_dir_all(&dir).unwrap();
}
