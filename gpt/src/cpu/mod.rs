//! The CPU backend: the f32 reference every GPU kernel is tested against.

pub mod gemm;
pub mod ops;
pub mod backend;

#[cfg(test)]
mod gradcheck;
