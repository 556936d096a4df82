//! The thin runtime: CPU threading and timing helpers (always built) and, behind the `cuda`
//! feature, the CUDA context, module registry, device buffers and launch helpers.

pub mod counters;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
