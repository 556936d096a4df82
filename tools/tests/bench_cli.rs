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
    result_file("cpu-test", 2, "2026-01-01T00:00:00Z", median, q1, q3)
}

/// A result file of `device` with `threads`, dated `date`: one kernel entry with the given
/// quartiles (min and max 10% beyond them) and one failed step entry.
fn result_file(device: &str, threads: u32, date: &str, median: f64, q1: f64, q3: f64) -> String {
    let (min, max) = (q1 - 0.1 * (median - q1), q3 + 0.1 * (q3 - median));
    format!(
        r#"{{"schema":1,"device":"{device}","backend":"{}","threads":{threads},"date":"{date}","commit":"abc1234","model":"tiny","batch":1,"seq":32,"entries":[
        {{"suite":"kernels","name":"matmul_forward/qkv","shape":"rows=32","stats":{{"median_ms":{median},"min_ms":{min},"max_ms":{max},"q1_ms":{q1},"q3_ms":{q3},"reps":10}}}},
        {{"suite":"step","name":"step/mxfp4","shape":"x","error":"not merged"}}]}}"#,
        if device.starts_with("cuda") {
            "cuda"
        } else {
            "cpu"
        }
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
    let widths = attrs_of_class(&cmp, "bar", "width");
    assert_eq!(widths.len(), 2, "{cmp}");
    assert!((widths[1] / widths[0] - 1.2).abs() < 0.01, "{widths:?}");
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

/// `bench --quick --suite kernels EXTRA...` in `dir`.
fn run_quick_kernels(dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["--quick", "--suite", "kernels"];
    args.extend_from_slice(extra);
    bench(&args, dir)
}

/// Issue 13, item 1: a baseline recorded on another device, or with another thread count, is
/// refused with both named (exit 2) before anything runs; `--force` compares anyway and the
/// report says loudly that the devices differ.
#[test]
fn baseline_of_another_device_or_thread_count_is_refused() {
    let dir = tmpdir("devcheck");
    std::fs::write(
        dir.join("other.json"),
        result_file(
            "cpu-other-machine",
            96,
            "2026-01-01T00:00:00Z",
            1.0,
            0.9,
            1.1,
        ),
    )
    .unwrap();
    // --force: runs, compares, and says so loudly
    let out = run_quick_kernels(
        &dir,
        &["--out", "forced", "--baseline", "other.json", "--force"],
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let (result, doc) = only_json_in(&dir.join("forced"));
    let device = doc["device"].as_str().unwrap().to_string();
    let threads = doc["threads"].as_u64().unwrap();
    assert!(
        stdout.contains("DIFFERENT DEVICES")
            && stdout.contains("cpu-other-machine")
            && stdout.contains(&device),
        "{stdout}"
    );
    // without --force: refused before the suites run, naming both devices, exit 2
    let out = run_quick_kernels(&dir, &["--out", "refused", "--baseline", "other.json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let last = err.trim().lines().last().unwrap_or("");
    assert!(
        last.contains("cpu-other-machine") && last.contains(&device) && last.contains("--force"),
        "{err}"
    );
    assert!(
        !dir.join("refused").exists(),
        "refused run still wrote results"
    );
    // same device, another thread count: refused too, by `compare` as well
    let mut base = doc.clone();
    base["threads"] = serde_json::json!(threads + 7);
    std::fs::write(dir.join("threads.json"), base.to_string()).unwrap();
    let res = result.to_str().unwrap();
    let out = bench(&["compare", res, "--baseline", "threads.json"], &dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("{threads} threads"))
            && err.contains(&format!("{} threads", threads + 7)),
        "{err}"
    );
    let out = bench(
        &["compare", res, "--baseline", "threads.json", "--force"],
        &dir,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("DIFFERENT"), "{stdout}");
    // the same device and thread count compares quietly
    let out = bench(&["compare", res, "--baseline", res], &dir);
    assert_eq!(out.status.code(), Some(0));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("DIFFERENT"));
}

/// Issue 13, item 2: the ceilings are measured in rounds until the best of the last rounds
/// agree, and the JSON records their spread; a ceiling that did not settle is flagged on every
/// percentage computed from it, in the JSON and in the table.
#[test]
fn ceilings_settle_and_unsettled_percentages_say_so() {
    let dir = tmpdir("ceil");
    let out = run_quick_kernels(&dir, &["--out", "ok"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, doc) = only_json_in(&dir.join("ok"));
    let c = &doc["ceilings"];
    let tol = c["tolerance"].as_f64().expect("ceilings.tolerance");
    for k in ["copy", "sgemm"] {
        let rounds = c[format!("{k}_rounds")].as_array().expect("rounds").len();
        let spread = c[format!("{k}_spread")].as_f64().expect("spread");
        let stable = c[format!("{k}_stable")].as_bool().expect("stable");
        assert!(rounds >= 1 && spread >= 0.0, "{c}");
        if stable {
            assert!(rounds >= 3 && spread < tol, "{c}");
        }
    }
    // A zero tolerance can never be met: the ceilings stop at the time cap, unsettled, and every
    // percentage says so.
    let out = run_quick_kernels(
        &dir,
        &[
            "--out",
            "unsettled",
            "--ceiling-tolerance",
            "0",
            "--ceiling-time",
            "0.3",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, doc) = only_json_in(&dir.join("unsettled"));
    let c = &doc["ceilings"];
    assert_eq!(c["copy_stable"], false, "{c}");
    assert_eq!(c["sgemm_stable"], false, "{c}");
    let entries = doc["entries"].as_array().unwrap();
    assert!(!entries.is_empty());
    for e in entries {
        assert_eq!(e["ceiling_stable"], false, "{e}");
    }
    assert!(stdout.contains("did not stabilize"), "{stdout}");
    let marked = stdout.lines().filter(|l| l.contains("%?")).count();
    assert_eq!(marked, entries.len(), "{stdout}");
}

/// Issue 13, item 4: an ad-hoc run writes under target/ (ignored by git) and says where;
/// `--save` writes to perf/results; `--out DIR` to DIR.
#[test]
fn results_go_to_an_ignored_directory_unless_saved() {
    let dir = tmpdir("outdir");
    let out = bench(&["--quick", "--suite", "step"], &dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        !dir.join("perf").exists(),
        "an ad-hoc run wrote under perf/"
    );
    let (path, _) = only_json_in(&dir.join("target/bench-results"));
    assert!(
        err.contains(&format!(
            "target/bench-results/{}",
            path.file_name().unwrap().to_string_lossy()
        )),
        "{err}"
    );
    let out = bench(&["--quick", "--suite", "step", "--save"], &dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let (path, _) = only_json_in(&dir.join("perf/results"));
    assert!(
        err.contains(&format!(
            "perf/results/{}",
            path.file_name().unwrap().to_string_lossy()
        )),
        "{err}"
    );
    let out = bench(
        &["--quick", "--suite", "step", "--save", "--out", "x"],
        &dir,
    );
    assert_eq!(out.status.code(), Some(2));
}

/// `class="NAME"` elements' attribute `attr`, in document order.
fn attrs_of_class(svg: &str, class: &str, attr: &str) -> Vec<f64> {
    svg.split('<')
        .filter(|el| el.contains(&format!("class=\"{class}\"")))
        .filter_map(|el| {
            let i = el.find(&format!(" {attr}=\""))? + attr.len() + 3;
            el[i..].split('"').next()?.parse().ok()
        })
        .collect()
}

/// Issue 13, item 3: comparison.svg compares the two newest results of one device by the dates
/// inside the files, with noise bars; one result alone is said, not drawn.
#[test]
fn comparison_picks_by_date_within_one_device_with_noise_bars() {
    let dir = tmpdir("plotpick");
    let res = dir.join("res");
    std::fs::create_dir_all(&res).unwrap();
    // name order is not date order, and another device's file sorts last by name
    for (file, device, date, median) in [
        ("cpu-a_run1.json", "cpu-a", "2026-01-05T00:00:00Z", 10.0),
        ("cpu-a_run2.json", "cpu-a", "2026-01-01T00:00:00Z", 30.0),
        ("cpu-a_run3.json", "cpu-a", "2026-01-03T00:00:00Z", 20.0),
        ("cuda-z_run.json", "cuda-z", "2026-01-04T00:00:00Z", 1.0),
    ] {
        std::fs::write(
            res.join(file),
            result_file(device, 2, date, median, median * 0.9, median * 1.1),
        )
        .unwrap();
    }
    let out = bench(&["plot", "--out", "res", "--plots-dir", "plots"], &dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cmp = std::fs::read_to_string(dir.join("plots/comparison.svg")).unwrap();
    assert!(
        cmp.contains("cpu-a_run3") && cmp.contains("cpu-a_run1"),
        "{cmp}"
    );
    assert!(
        !cmp.contains("cuda-z") && !cmp.contains("cpu-a_run2"),
        "{cmp}"
    );
    // run3 (older) is the reference, run1 takes half its time
    let bars = attrs_of_class(&cmp, "bar", "width");
    assert_eq!(bars.len(), 2, "{cmp}");
    assert!((bars[1] / bars[0] - 0.5).abs() < 0.01, "{bars:?}");
    // a noise bar (q1..q3) on every bar, spanning 0.9..1.1 of its median
    let (x1, x2) = (
        attrs_of_class(&cmp, "iqr", "x1"),
        attrs_of_class(&cmp, "iqr", "x2"),
    );
    let x0 = attrs_of_class(&cmp, "bar", "x");
    assert_eq!((x1.len(), x2.len()), (2, 2), "{cmp}");
    for i in 0..2 {
        let (lo, hi) = ((x1[i] - x0[i]) / bars[i], (x2[i] - x0[i]) / bars[i]);
        assert!(
            (lo - 0.9).abs() < 0.02 && (hi - 1.1).abs() < 0.02,
            "{lo} {hi}"
        );
    }

    // the newest device has one result: nothing to compare, and it says so
    std::fs::write(
        res.join("cuda-z_run.json"),
        result_file("cuda-z", 2, "2026-02-01T00:00:00Z", 1.0, 0.9, 1.1),
    )
    .unwrap();
    let out = bench(&["plot", "--out", "res", "--plots-dir", "plots2"], &dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("only one") && err.contains("cuda-z"), "{err}");
    assert!(!dir.join("plots2/comparison.svg").exists());
    assert!(dir.join("plots2/history.svg").exists());
    // one file named explicitly: a clear error
    let out = bench(
        &["plot", "res/cpu-a_run1.json", "--plots-dir", "plots3"],
        &dir,
    );
    assert_eq!(out.status.code(), Some(2));
}

/// Issue 13, item 3: history.svg has a panel per device (machines never share a line), a
/// legend naming every series, ticks on both axes, and a marker on every point (so a series of
/// one run is visible).
#[test]
fn history_is_per_device_with_legend_ticks_and_points() {
    let dir = tmpdir("plothist");
    let res = dir.join("res");
    std::fs::create_dir_all(&res).unwrap();
    for (file, device, date, median) in [
        ("cpu-a_1.json", "cpu-a", "2026-01-01T00:00:00Z", 10.0),
        ("cpu-a_2.json", "cpu-a", "2026-01-02T00:00:00Z", 11.0),
        ("cpu-a_3.json", "cpu-a", "2026-01-03T00:00:00Z", 9.0),
        ("cuda-z_1.json", "cuda-z", "2026-01-02T12:00:00Z", 1.0),
    ] {
        std::fs::write(
            res.join(file),
            result_file(device, 2, date, median, median * 0.95, median * 1.05),
        )
        .unwrap();
    }
    let out = bench(&["plot", "--out", "res", "--plots-dir", "plots"], &dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let svg = std::fs::read_to_string(dir.join("plots/history.svg")).unwrap();
    let panel = |device: &str| -> String {
        let start = svg
            .find(&format!("data-device=\"{device}\""))
            .unwrap_or_else(|| panic!("no panel for {device}: {svg}"));
        let end = svg[start..].find("</g><!-- panel -->").unwrap() + start;
        svg[start..end].to_string()
    };
    let (cpu, gpu) = (panel("cpu-a"), panel("cuda-z"));
    assert_eq!(cpu.matches("<circle").count(), 3, "{cpu}");
    assert_eq!(gpu.matches("<circle").count(), 1, "{gpu}");
    for p in [&cpu, &gpu] {
        assert!(p.contains(">matmul_forward/qkv [rows=32]"), "legend: {p}");
        assert!(p.matches("class=\"ytick\"").count() >= 3, "y ticks: {p}");
        assert!(p.matches("class=\"xtick\"").count() >= 1, "x ticks: {p}");
    }
    assert_eq!(cpu.matches("class=\"xtick\"").count(), 3);
}

/// Issue 13, item 5 (guard): every flag tools/cuda/gpu-session.sh passes to the bench exists,
/// and the same command line on the CPU writes its result into --out DIR.
#[test]
fn gpu_session_flags_keep_working() {
    let script =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("cuda/gpu-session.sh"))
            .unwrap();
    let mut flags = std::collections::BTreeSet::new();
    let mut in_bench = false;
    for line in script.lines() {
        if line.contains("\"$here/bench\"") {
            in_bench = true;
        }
        if in_bench {
            for w in line.split_whitespace().filter(|w| w.starts_with("--")) {
                flags.insert(w.to_string());
            }
            in_bench = line.trim_end().ends_with('\\');
        }
    }
    for f in [
        "--device",
        "--suite",
        "--model",
        "--batch",
        "--seq",
        "--backward",
        "--mx-gemm",
        "--warmup",
        "--reps",
        "--min-time",
        "--out",
    ] {
        assert!(
            flags.contains(f),
            "gpu-session.sh no longer passes {f}: {flags:?}"
        );
    }
    let dir = tmpdir("session");
    let help = bench(&["--help"], &dir);
    let help = String::from_utf8_lossy(&help.stdout);
    for f in &flags {
        assert!(help.contains(f.as_str()), "bench --help has no {f}");
    }
    for (suite, out_dir) in [("kernels", "k"), ("step", "s")] {
        let out = bench(
            &[
                "--device",
                "cpu",
                "--suite",
                suite,
                "--model",
                "tiny",
                "--batch",
                "1",
                "--seq",
                "32",
                "--backward",
                "bf16",
                "--mx-gemm",
                "int8",
                "--warmup",
                "1",
                "--reps",
                "3",
                "--min-time",
                "0",
                "--out",
                out_dir,
            ],
            &dir,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (_, doc) = only_json_in(&dir.join(out_dir));
        assert!(doc["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["suite"] == suite));
        assert_eq!(doc["mx_gemm"], "int8");
    }
    assert!(!dir.join("perf").exists() && !dir.join("target").exists());
}
