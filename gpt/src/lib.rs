//! mxgpt's model, backends, MXFP4 numerics and the single training loop.

pub mod cpu;
pub mod precision;
pub mod config;
pub mod layout;
pub mod backend;
pub mod mx;
pub mod model;
pub mod rng;
pub mod checkpoint;
pub mod schedule;
pub mod trainer;
#[cfg(feature = "cuda")]
pub mod cuda;
