//! `bench`: performance suites, regression checks against baselines, and SVG plots.
//!
//! Suites (`--suite kernels,step`):
//! - `kernels`: every CPU op of `gpt::cpu::ops` and the GEMM at the shapes of `--model` with
//!   `--batch`/`--seq`, each with time, GFLOP/s or GB/s and the percentage of a ceiling the bench
//!   measures first on the same machine (copy bandwidth, a large square sgemm), in rounds until
//!   it settles.
//! - `step`: a full training step (forward_backward + grad_norm + adamw) per `--backward` mode,
//!   through a `TimedBackend` that delegates to the real backend and adds up wall time per phase.
//!
//! Results: a table on stdout, progress on stderr, and a JSON file named
//! `<device>_<date>_<commit>.json` under target/bench-results (ignored by git), perf/results
//! with `--save`, or `--out DIR`. `--baseline FILE` compares (exit 1 on a regression; a baseline
//! from another device or thread count is refused unless `--force`); `--save-baseline` writes
//! perf/baselines/<device>.json. `bench compare NEW --baseline OLD` compares two result files
//! without running; `bench plot` renders SVG. The code: tools/src/bench (one module per idea);
//! fields and method: perf/README.md.

fn main() {
    tools::bench::main()
}
