//! The CPU backend: the f32 reference every GPU kernel is tested against.

pub mod attention;
pub mod backend;
pub mod gemm;
pub mod ops;
pub mod simd;

#[cfg(test)]
mod attention_tests;
#[cfg(test)]
mod fast_tests;
#[cfg(test)]
mod gradcheck;
