//! `bench`: performance suites, regression checks against baselines, and SVG plots; the
//! program in src/bin/bench.rs is `tools::bench::main`. One idea per module:
//!
//! | module | what |
//! |---|---|
//! | `cli` | flags, the commands (run, compare, plot), the order of a run |
//! | `method` | warm-up, repetitions, median and quartiles, rotated random inputs |
//! | `ceilings` | copy bandwidth and GEMM rate, measured in rounds until they settle |
//! | `kernels` | the kernels suite (CPU ops here; on the GPU via tools::gpu_bench) |
//! | `step` | the step suite: a training step per backward mode, timed per phase |
//! | `result` | the result JSON, its name and directory, the table on stdout |
//! | `compare` | the same-machine check and the regression rule against a baseline |
//! | `plot` | comparison.svg and history.svg |
//!
//! Fields and method: perf/README.md.

mod ceilings;
mod cli;
mod compare;
mod kernels;
mod method;
mod plot;
mod result;
mod step;

pub use cli::main;
pub use result::utc_now;
