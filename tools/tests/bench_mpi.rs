//! The step suite data-parallel: `mpirun -np 2 bench --suite step` (feature `mpi`, Open MPI
//! installed): `cargo test --release -p tools --features mpi --test bench_mpi`.

#![cfg(feature = "mpi")]

// The shared mpirun command (tests/src/mpirun.rs), by path as gpt/tests/mpi.rs takes it, so
// that tools' manifest keeps its dependencies (run_child is not used here).
#[path = "../../tests/src/mpirun.rs"]
#[allow(dead_code)]
mod mpirun;

use mpirun::mpirun;
use serde_json::Value;

#[test]
fn two_rank_step_reports_collective_time_and_per_rank_throughput_from_rank_0_only() {
    let dir = std::env::temp_dir().join(format!("mxgpt-bench-mpi-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = mpirun(2)
        .arg(env!("CARGO_BIN_EXE_bench"))
        .args(["--suite", "step", "--quick", "--reps", "4", "--out"])
        .arg(&dir)
        .output()
        .expect("mpirun runs (is Open MPI installed?)");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    // Rank 0 alone prints the table and writes the one result file.
    assert_eq!(stdout.matches("phases ms:").count(), 1, "{stdout}");
    // and the progress: the other ranks are silent.
    assert_eq!(
        stderr.matches("step/bf16/2ranks: model=").count(),
        1,
        "{stderr}"
    );
    let files: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(files[0].path()).unwrap()).unwrap();
    assert_eq!(doc["ranks"], 2);
    let e = &doc["entries"][0];
    assert_eq!(e["name"], "step/bf16/2ranks", "{e}");
    assert_eq!(e["ranks"], 2);
    // A step is both ranks' micro batches (1 x 32 tokens each in --quick).
    let median = e["stats"]["median_ms"].as_f64().unwrap();
    let tps = e["tokens_per_s"].as_f64().unwrap();
    assert!((tps - 64.0 / (median * 1e-3)).abs() < 1e-6 * tps, "{e}");
    let per_rank: Vec<f64> = e["tokens_per_s_per_rank"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(per_rank.len(), 2, "{e}");
    // Rank 0's own entry is its micro batch over its median step.
    assert!(
        (per_rank[0] - 32.0 / (median * 1e-3)).abs() < 1e-6 * per_rank[0],
        "{e}"
    );
    assert!(per_rank[1] > 0.0, "{e}");
    let col = e["phase_ms"]["collective"].as_f64().unwrap();
    assert!(
        col > 0.0 && col < e["stats"]["max_ms"].as_f64().unwrap(),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn under_mpirun_only_the_step_suite_on_the_cpu_runs() {
    let out = mpirun(2)
        .arg(env!("CARGO_BIN_EXE_bench"))
        .args(["--suite", "kernels", "--quick"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        text.contains("rank 0 of 2") && text.contains("step suite only"),
        "{text}"
    );
}
