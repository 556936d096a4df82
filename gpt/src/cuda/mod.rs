//! The CUDA backend: typed launchers for every kernel of ptx/kernels (`kernels`) and the
//! `Backend` implementation over them. Feature `cuda`.
//!
//! NOT VERIFIED ON A GPU unless perf/ holds a GPU run of the commit you are reading: written and
//! compiled (against the stub driver) in sessions without one.

pub mod kernels;
