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

/// The FP8 forward (`--forward fp8`) adds one `fwd` site per block linear layer to the records:
/// E4M3's statistics over both operands and the forward output's measured error, alone (BF16
/// backward) or beside the 4-bit backward's sites; and recording them changes no training number.
#[test]
fn fp8_forward_sites_are_recorded_without_changing_training() {
    let dir = tmpdir("fp8-telemetry");
    let data = synthetic_dataset(&dir, 8);
    let layers = gpt::config::ModelConfig::named("tiny").unwrap().layers;
    let fp8_run = |backward: &str, every: &str| {
        let log = dir.join(format!("fp8-{backward}-{every}.jsonl"));
        let log_s = log.to_string_lossy().to_string();
        let mut a = tiny(&data, &["--forward", "fp8", "--backward", backward]);
        if backward == "mxfp4" {
            a.extend(["--hadamard-block", "32"]); // B*T = 32 tokens
        }
        a.extend(["--mx-telemetry-every", every]);
        a.extend(["--steps", "4", "--log-json", &log_s]);
        train_gpt_ok(&a);
        json_lines(&log)
    };
    for (backward, backward_sites) in [("bf16", 0), ("mxfp4", layers * 4 * 2)] {
        let with = fp8_run(backward, "2");
        let without = fp8_run(backward, "0");
        assert_eq!(train_losses(&with), train_losses(&without), "{backward}");
        let per_layer: Vec<&Value> = with.iter().filter(|r| r["type"] == "mx_layers").collect();
        assert_eq!(per_layer.len(), 2, "{backward}: steps 2 and 4");
        for r in per_layer {
            let sites = r["sites"].as_array().unwrap();
            assert_eq!(sites.len(), layers * 4 + backward_sites, "{backward}");
            let fwd: Vec<&Value> = sites.iter().filter(|s| s["gemm"] == "fwd").collect();
            assert_eq!(
                fwd.len(),
                layers * 4,
                "{backward}: one per layer and linear"
            );
            for site in fwd {
                let f = |k: &str| site[k].as_f64().unwrap_or_else(|| panic!("{k}: {site}"));
                // Current scaling maps amax to 448: nothing saturates.
                assert_eq!(f("clipped_fraction"), 0.0, "{site}");
                // 3 mantissa bits: about 2-3% RMS error per operand, likewise in the output.
                assert!(
                    f("relative_error") > 0.005 && f("relative_error") < 0.06,
                    "{site}"
                );
                assert!(
                    f("noise_to_grad") > 0.005 && f("noise_to_grad") < 0.1,
                    "{site}"
                );
                assert!((0.0..0.01).contains(&f("underflow_fraction")), "{site}");
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
