//! The thin runtime: CPU threading and timing helpers, and the device layer (`cuda`): one GPU
//! through the driver API (feature `cuda`) or the host execution harness standing in for one
//! (feature `harness`), with buffers, kernel loading and checked launches.

pub mod counters;
pub mod cpu;
pub mod cuda;
