//! The bench CLI end to end: quick CPU suites write valid JSON with the documented fields, the
//! regression comparison judges synthetic result files, and a missing NVML changes nothing but
//! one line on stderr.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bench(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run bench")
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mxgpt-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn only_json_in(dir: &Path) -> (PathBuf, Value) {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "expected one result file, found {files:?}");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    (
        files[0].clone(),
        serde_json::from_str(&text).expect("result file is valid JSON"),
    )
}

#[test]
fn quick_suites_write_documented_json() {
    let dir = tmpdir("quick");
    let out = bench(
        &[
            "--quick",
            "--backward",
            "bf16,mxfp4",
            "--out",
            "res",
            "--save-baseline",
            "--baselines-dir",
            "base",
        ],
        &dir,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}");
    let (path, doc) = only_json_in(&dir.join("res"));
    let fname = path.file_name().unwrap().to_string_lossy().to_string();
    let device = doc["device"].as_str().unwrap();
    assert!(
        fname.starts_with(&format!("{device}_")) && fname.ends_with(".json"),
        "{fname}"
    );
    for field in [
        "schema",
        "device",
        "device_name",
        "backend",
        "threads",
        "date",
        "commit",
        "model",
        "batch",
        "seq",
        "method",
        "counters",
        "ceilings",
        "entries",
    ] {
        assert!(!doc[field].is_null(), "missing top-level field {field}");
    }
    assert!(
        doc["ceilings"]["copy_gbps"].as_f64().unwrap() > 0.0
            && doc["ceilings"]["sgemm_gflops"].as_f64().unwrap() > 0.0
    );
    let entries = doc["entries"].as_array().unwrap();
    let names: Vec<&str> = entries
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    for n in [
        "encoder_forward",
        "layernorm_backward",
        "matmul_forward/qkv",
        "matmul_backward_weight/lm_head",
        "attention_backward",
        "classifier+restore",
        "adamw",
        "step/bf16",
        "step/mxfp4",
    ] {
        assert!(names.contains(&n), "no entry {n} in {names:?}");
    }
    for e in entries.iter().filter(|e| e["error"].is_null()) {
        let s = &e["stats"];
        let (min, q1, med, q3, max) = (
            s["min_ms"].as_f64().unwrap(),
            s["q1_ms"].as_f64().unwrap(),
            s["median_ms"].as_f64().unwrap(),
            s["q3_ms"].as_f64().unwrap(),
            s["max_ms"].as_f64().unwrap(),
        );
        assert!(
            0.0 <= min && min <= q1 && q1 <= med && med <= q3 && q3 <= max,
            "{e}"
        );
        assert!(s["reps"].as_u64().unwrap() >= 3, "{e}");
        assert!(e["shape"].is_string() && e["suite"].is_string());
    }
    let step = entries.iter().find(|e| e["name"] == "step/bf16").unwrap();
    // tokens/s must agree with the step time and the batch (1 x 32 in --quick)
    let tps = step["tokens_per_s"].as_f64().unwrap();
    let expect = 32.0 / (step["stats"]["median_ms"].as_f64().unwrap() * 1e-3);
    assert!((tps - expect).abs() < 1e-6 * expect, "{tps} vs {expect}");
    assert!(step["mfu"].as_f64().unwrap() > 0.0);
    let phases = step["phase_ms"].as_object().unwrap();
    for p in [
        "forward",
        "attention",
        "backward_gemm",
        "backward_other",
        "optimizer",
    ] {
        assert!(
            phases[p].as_f64().unwrap() > 0.0,
            "phase {p} not timed: {step}"
        );
    }
    // The phases are parts of the step: their sum cannot exceed the slowest step by much.
    let sum: f64 = phases.values().map(|v| v.as_f64().unwrap()).sum();
    assert!(
        sum <= step["stats"]["max_ms"].as_f64().unwrap() * 1.05,
        "{sum} {step}"
    );
    // MXFP4 modes either measure (once the MXFP4 GEMM is merged) or say why not, never both.
    let mx = entries.iter().find(|e| e["name"] == "step/mxfp4").unwrap();
    assert!(mx["error"].is_string() != mx["stats"].is_object(), "{mx}");
    // --save-baseline wrote the same document
    let (_, base) = only_json_in(&dir.join("base"));
    assert_eq!(base["entries"], doc["entries"]);
    // and a run compared with itself passes
    let out = bench(
        &[
            "compare",
            path.to_str().unwrap(),
            "--baseline",
            path.to_str().unwrap(),
        ],
        &dir,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn synthetic(median: f64, q1: f64, q3: f64) -> String {
    format!(
        r#"{{"schema":1,"device":"cpu-test","date":"2026-01-01T00:00:00Z","model":"tiny","entries":[
        {{"suite":"kernels","name":"matmul_forward/qkv","shape":"rows=32","stats":{{"median_ms":{median},"min_ms":{q1},"max_ms":{q3},"q1_ms":{q1},"q3_ms":{q3},"reps":10}}}},
        {{"suite":"step","name":"step/mxfp4","shape":"x","error":"not merged"}}]}}"#
    )
}

fn compare(new: String, base: String, tol: &str) -> Output {
    let dir = tmpdir(&format!("cmp{}", new.len() * 7 + base.len() + tol.len()));
    std::fs::write(dir.join("new.json"), new).unwrap();
    std::fs::write(dir.join("base.json"), base).unwrap();
    bench(
        &[
            "compare",
            "new.json",
            "--baseline",
            "base.json",
            "--tolerance",
            tol,
        ],
        &dir,
    )
}

#[test]
fn regression_comparison_on_synthetic_files() {
    // 20% slower with tight spreads: a regression, exit 1, named in the table.
    let out = compare(
        synthetic(12.0, 11.9, 12.1),
        synthetic(10.0, 9.9, 10.1),
        "5%",
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("REGRESSION"));
    // equal and faster pass
    assert_eq!(
        compare(synthetic(10.0, 9.9, 10.1), synthetic(10.0, 9.9, 10.1), "5%")
            .status
            .code(),
        Some(0)
    );
    let faster = compare(synthetic(7.0, 6.9, 7.1), synthetic(10.0, 9.9, 10.1), "5%");
    assert_eq!(faster.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&faster.stdout).contains("faster"));
    // 8% slower but within the combined spread (IQRs 2 + 2 ms): noise, passes
    assert_eq!(
        compare(synthetic(10.8, 9.8, 11.8), synthetic(10.0, 9.0, 11.0), "5%")
            .status
            .code(),
        Some(0)
    );
    // 8% slower, beyond the spread, within a 10% tolerance: passes; within 5%: fails
    assert_eq!(
        compare(
            synthetic(10.8, 10.75, 10.85),
            synthetic(10.0, 9.95, 10.05),
            "10%"
        )
        .status
        .code(),
        Some(0)
    );
    assert_eq!(
        compare(
            synthetic(10.8, 10.75, 10.85),
            synthetic(10.0, 9.95, 10.05),
            "0.05"
        )
        .status
        .code(),
        Some(1)
    );
    // a file that is not a result: clear error, exit 2
    let bad = compare("{}".into(), synthetic(1.0, 1.0, 1.0), "5%");
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("new.json"));
}

#[test]
fn bad_flags_fail_with_one_line() {
    let dir = tmpdir("flags");
    for (args, needle) in [
        (&["--device", "cuda"][..], "CUDA backend"),
        (&["--model", "huge"][..], "huge"),
        (&["--backward", "fp3"][..], "fp3"),
        (&["--tolerance", "lots"][..], "tolerance"),
    ] {
        let out = bench(args, &dir);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(needle) && err.trim().lines().count() == 1,
            "{args:?}: {err}"
        );
    }
}

#[test]
fn nvml_absent_is_one_line_and_nothing_else_changes() {
    let dir = tmpdir("nvml");
    let out = bench(&["--quick", "--suite", "step", "--out", "r"], &dir);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let (_, doc) = only_json_in(&dir.join("r"));
    let line = doc["counters"].as_str().unwrap();
    assert!(err.contains(line), "{err}");
    match runtime::counters::Counters::open(0) {
        Err(e) => {
            assert_eq!(line, e);
            assert!(line.starts_with("NVML") && line.ends_with("counters off"));
        }
        Ok(c) => assert!(line.contains(&c.device_name)),
    }
}

#[test]
fn plot_writes_svg() {
    let dir = tmpdir("plot");
    std::fs::create_dir_all(dir.join("res")).unwrap();
    std::fs::write(dir.join("res/a.json"), synthetic(10.0, 9.9, 10.1)).unwrap();
    std::fs::write(
        dir.join("res/b.json"),
        synthetic(12.0, 11.9, 12.1).replace("2026-01-01", "2026-01-02"),
    )
    .unwrap();
    let out = bench(&["plot", "--out", "res", "--plots-dir", "plots"], &dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in ["comparison.svg", "history.svg"] {
        let svg = std::fs::read_to_string(dir.join("plots").join(f)).unwrap();
        assert!(
            svg.starts_with("<svg")
                && svg.trim_end().ends_with("</svg>")
                && svg.contains("matmul_forward/qkv"),
            "{f}"
        );
    }
    // the bar of b is 1.2x the bar of a
    let cmp = std::fs::read_to_string(dir.join("plots/comparison.svg")).unwrap();
    let widths: Vec<f64> = cmp
        .match_indices("width=\"")
        .skip(1)
        .filter_map(|(i, _)| cmp[i + 7..].split('"').next()?.parse().ok())
        .collect();
    assert!(
        widths.windows(2).any(|w| (w[1] / w[0] - 1.2).abs() < 0.01),
        "{widths:?}"
    );
}

/// The step suite splits the MXFP4 operand preparation (gather, RHT, quantization) out of the
/// backward GEMMs: a `quantization` phase that is positive under mxfp4 and zero under bf16.
#[test]
fn step_suite_reports_quantization_separately() {
    let dir = tmpdir("quant");
    // B*T = 64 tokens: wgrad reduces over tokens, which must be a multiple of g = 64.
    let out = bench(
        &[
            "--quick",
            "--suite",
            "step",
            "--seq",
            "64",
            "--backward",
            "bf16,mxfp4",
            "--out",
            "res",
        ],
        &dir,
    );
    assert!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, doc) = only_json_in(&dir.join("res"));
    let entries = doc["entries"].as_array().unwrap();
    let phase = |name: &str, p: &str| {
        let e = entries
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no {name}"));
        e["phase_ms"][p]
            .as_f64()
            .unwrap_or_else(|| panic!("{name} has no phase {p}: {e}"))
    };
    assert_eq!(phase("step/bf16", "quantization"), 0.0);
    assert!(phase("step/mxfp4", "quantization") > 0.0);
    assert!(phase("step/mxfp4", "backward_gemm") > 0.0);
}
