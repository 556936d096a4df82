//! ZeRO-1's two collectives on a backend's state, shared by the trainer and the benchmark: the
//! gradients summed over ranks (in rank order) into this rank's shard, and the updated
//! parameter shards gathered back onto every rank.

use super::{Shards, Transport};
use crate::backend::Backend;

/// ZeRO-1: sums every rank's gradients (in rank order) into this rank's shard of the gradient
/// buffer (the rest of it is stale from here on) and returns the global gradient norm.
pub fn reduce_gradients(
    be: &mut dyn Backend,
    dist: &dyn Transport,
    shards: &Shards,
) -> Result<f32, String> {
    if be.host_state().is_none() {
        let dev = be.device_zero1().ok_or(UNSUPPORTED)?;
        return dev.reduce_gradients(dist, shards);
    }
    let st = be.host_state().ok_or(UNSUPPORTED)?;
    let mine = shards.range(dist.rank());
    let mut sum = vec![0.0f32; mine.len()];
    dist.reduce_scatter_sum(st.grads, shards, &mut sum)?;
    st.grads[mine].copy_from_slice(&sum);
    let squares = dist.sum_f64(crate::cpu::ops::sum_of_squares(&sum))?;
    Ok(squares.sqrt() as f32)
}

/// ZeRO-1: every rank updated its shard of the parameters; gathers them all on every rank.
pub fn gather_params(
    be: &mut dyn Backend,
    dist: &dyn Transport,
    shards: &Shards,
) -> Result<(), String> {
    if be.host_state().is_none() {
        let dev = be.device_zero1().ok_or(UNSUPPORTED)?;
        return dev.gather_params(dist, shards);
    }
    let st = be.host_state().ok_or(UNSUPPORTED)?;
    dist.all_gather(st.params, shards)
}

/// ZeRO-1 on a backend whose state lives on a device (the CUDA backend: gpt::cuda::dist).
pub trait DeviceZero1 {
    /// As [`reduce_gradients`]: every rank's gradients summed in rank order into this rank's
    /// shard; returns the global gradient norm.
    fn reduce_gradients(&mut self, dist: &dyn Transport, shards: &Shards) -> Result<f32, String>;
    /// As [`gather_params`].
    fn gather_params(&mut self, dist: &dyn Transport, shards: &Shards) -> Result<(), String>;
}

const UNSUPPORTED: &str = "data-parallel training needs a backend with ZeRO-1 support: the CPU backend, or the CUDA backend set up for it (CudaBackend::set_data_parallel)";
