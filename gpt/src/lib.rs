//! mxgpt's model, backends, MXFP4 numerics and the single training loop.

pub mod cpu;
pub mod precision;
