//! mxgpt's model, backends, MXFP4 numerics and the single training loop.

pub mod backend;
pub mod checkpoint;
pub mod config;
pub mod cpu;
pub mod cuda;
pub mod dist;
pub mod layout;
pub mod memory;
pub mod model;
pub mod mx;
pub mod outliers;
pub mod precision;
pub mod rng;
pub mod run_lock;
pub mod schedule;
pub mod trainer;
