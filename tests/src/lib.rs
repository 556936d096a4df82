//! Shared helpers for the cross-crate integration tests.

/// Helpers shared by the GPU test files (tests/tests/gpu_*.rs).
pub mod gpu;
pub mod mpirun;
