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
    let st = be.host_state().ok_or(NEEDS_HOST_STATE)?;
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
    let st = be.host_state().ok_or(NEEDS_HOST_STATE)?;
    dist.all_gather(st.params, shards)
}

const NEEDS_HOST_STATE: &str = "data-parallel training needs a backend that keeps its state in host memory (the CPU backend); the GPU needs the NCCL transport, not implemented yet";
