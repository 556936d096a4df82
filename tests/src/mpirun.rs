//! Starting tests under `mpirun`: shared by the test binaries that need several ranks
//! (tests/tests/gpu_mpi.rs as `tests::mpirun`; gpt/tests/mpi.rs and tools/tests/bench_mpi.rs
//! through `#[path]`: gpt cannot depend on this package (it depends on gpt); tools could as a
//! dev-dependency, the path keeps its manifest as it is).

use std::process::Command;

/// `mpirun -np N` with what a 2-core CI machine running as root needs, under a 5-minute
/// `timeout` so that a job that hangs fails its test instead of stalling CI.
pub fn mpirun(np: usize) -> Command {
    mpirun_within(np, 300)
}

/// [`mpirun`] ended after `secs` seconds (`timeout` then exits with status 124).
pub fn mpirun_within(np: usize, secs: u32) -> Command {
    let mut c = Command::new("timeout");
    c.args([
        &secs.to_string(),
        "mpirun",
        "-np",
        &np.to_string(),
        "--oversubscribe",
        "--bind-to",
        "none",
    ])
    .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
    .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    .env("OMPI_MCA_rmaps_base_oversubscribe", "1");
    c
}

/// Runs the test `child` of this test binary on `np` ranks (with `MXGPT_MPI_CHILD=1` and
/// `envs`), asserts that the job succeeded and that every rank printed `ok` (the line
/// "`ok`" the child prints last), and returns the job's output.
pub fn run_child(np: usize, child: &str, ok: &str, envs: &[(&str, &std::ffi::OsStr)]) -> String {
    run_child_within(np, child, ok, envs, 300)
}

/// [`run_child`], the job ended (and the test failed) after `secs` seconds.
pub fn run_child_within(
    np: usize,
    child: &str,
    ok: &str,
    envs: &[(&str, &std::ffi::OsStr)],
    secs: u32,
) -> String {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut c = mpirun_within(np, secs);
    c.arg(&exe)
        .args(["--exact", child, "--nocapture", "--test-threads", "1"])
        .env("MXGPT_MPI_CHILD", "1");
    for (k, v) in envs {
        c.env(k, v);
    }
    let out = c.output().expect("mpirun runs (is Open MPI installed?)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{np} ranks of {child} failed:\n{text}"
    );
    assert_eq!(
        text.matches(ok).count(),
        np,
        "every rank says '{ok}':\n{text}"
    );
    text
}
