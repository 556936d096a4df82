//! ZeRO-1's two collectives on a backend's state, shared by the trainer and the benchmark: the
//! gradients summed over ranks (in rank order) into this rank's shard, and the updated
//! parameter shards gathered back onto every rank; and the checkpoints of a device's shards.

use super::{Shards, Transport};
use crate::backend::Backend;
use crate::checkpoint::{self, Header};
use std::path::{Path, PathBuf};

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
    /// Host copies of this rank's shard of the optimizer state (checkpoints).
    fn read_shard(&self) -> Result<ShardState, String>;
    /// Restores this rank's shard: master weights, moments, and the BF16 parameters of the
    /// shard (`params`, or the round-to-nearest of the master weights when empty). The other
    /// ranks' parameters arrive with the next `gather_params`.
    fn write_shard(&mut self, st: &ShardState) -> Result<(), String>;
}

/// One rank's ZeRO-1 shard of a device's optimizer state, parameters `offset..offset + len`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShardState {
    pub offset: usize,
    /// FP32 master weights.
    pub master: Vec<f32>,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    /// The BF16 parameters as the device holds them (each value exact in FP32): the stochastic
    /// rounding of `master` by the last update, which round-to-nearest would not reproduce.
    pub params: Vec<f32>,
}

const UNSUPPORTED: &str = "data-parallel training needs a backend with ZeRO-1 support: the CPU backend, or the CUDA backend set up for it (CudaBackend::set_data_parallel)";

/// A device's ZeRO-1 shard from checkpoint `p` (header `h`, written by as many ranks as `dist` has): the master weights of this rank's shard
/// from the model file, the moments (and the BF16 parameters, when a GPU run wrote them) from
/// the shard file; then the parameter all-gather rebuilds every rank's full BF16 weights.
pub fn load_device_checkpoint(
    p: &Path,
    h: &Header,
    be: &mut dyn Backend,
    dist: &dyn Transport,
) -> Result<(), String> {
    load_zero1_checkpoint(p, h, be.device_zero1(), dist)
}

/// [`load_device_checkpoint`] into `dz`, a device's ZeRO-1 state (None: the backend has none,
/// an error agreed on as any other).
pub fn load_zero1_checkpoint(
    p: &Path,
    h: &Header,
    dz: Option<&mut dyn DeviceZero1>,
    dist: &dyn Transport,
) -> Result<(), String> {
    // The all-gather is a collective: every rank enters it, or none does (a rank that could not
    // read its part must not leave the others waiting in it).
    let read = dz
        .ok_or_else(|| NO_DEVICE_ZERO1.to_string())
        .and_then(|dz| read_device_shard(p, h, dz, dist).map(|()| dz));
    let dz = agree(
        dist,
        read,
        &format!("checkpoint {}", p.display()),
        "read their part",
    )?;
    dz.gather_params(dist, &Shards::even(h.num_params, dist.size()))
}

/// Every rank's outcome `r` made known to all, through collectives that every rank runs in the
/// same sequence whatever the outcomes (the ok flags, then each failed rank's message from it):
/// on every rank, `r`'s value if all succeeded, else one error naming each failed rank with its
/// message (just that message when every rank failed with the same one, as when a nested
/// `agree` failed). So all ranks take the same path, none waits in a collective another skips,
/// and rank 0, the one that logs, says why. One rank: `r` as it is.
pub fn agree<T>(
    dist: &dyn Transport,
    r: Result<T, String>,
    what: &str,
    did: &str,
) -> Result<T, String> {
    /// Bytes of a message that travel (the rest is cut).
    const MAX_MESSAGE: usize = 4096;
    let n = dist.size();
    if n == 1 {
        return r;
    }
    let own = r
        .as_ref()
        .err()
        .map(|e| &e.as_bytes()[..e.len().min(MAX_MESSAGE)]);
    // 0: succeeded; else 1 + the length of the message (exact in an f64).
    let lens = dist.all_gather_f64(own.map_or(0.0, |m| 1.0 + m.len() as f64))?;
    let mut failed = Vec::new();
    for (rank, &len) in lens.iter().enumerate().filter(|(_, &l)| l != 0.0) {
        let mut msg = vec![0u8; len as usize - 1];
        if let (true, Some(m)) = (rank == dist.rank(), own) {
            msg.copy_from_slice(m);
        }
        dist.broadcast(&mut msg, rank)?;
        failed.push((rank, String::from_utf8_lossy(&msg).into_owned()));
    }
    if failed.is_empty() {
        return r;
    }
    if failed.len() == n && failed.iter().all(|(_, m)| *m == failed[0].1) {
        return Err(failed.swap_remove(0).1);
    }
    let ranks: Vec<usize> = failed.iter().map(|f| f.0).collect();
    let why: Vec<String> = failed
        .iter()
        .map(|(rank, m)| format!("rank {rank} of {n}: {m}"))
        .collect();
    Err(format!(
        "{what}: rank(s) {ranks:?} could not {did}: {}",
        why.join("; ")
    ))
}

/// This rank's part of `load_device_checkpoint`, without collectives.
fn read_device_shard(
    p: &Path,
    h: &Header,
    dz: &mut dyn DeviceZero1,
    dist: &dyn Transport,
) -> Result<(), String> {
    if h.ranks != dist.size() {
        return Err(checkpoint::ranks_mismatch(p, h.ranks, dist.size()));
    }
    let shards = Shards::even(h.num_params, dist.size());
    let mine = shards.range(dist.rank());
    let mut st = ShardState {
        offset: mine.start,
        master: vec![0.0; mine.len()],
        m: vec![0.0; mine.len()],
        v: vec![0.0; mine.len()],
        params: vec![0.0; mine.len()],
    };
    checkpoint::load_streaming(p, &mut |i, at, c| {
        // Array 0, the parameters: keep the part of the chunk inside this rank's shard.
        let (lo, hi) = (at.max(mine.start), (at + c.len()).min(mine.end));
        if i == 0 && lo < hi {
            st.master[lo - mine.start..hi - mine.start].copy_from_slice(&c[lo - at..hi - at]);
        }
        Ok(())
    })?;
    let dir = p.parent().unwrap_or(Path::new("."));
    let arrays = checkpoint::load_shard(
        dir,
        h.step,
        (dist.rank(), dist.size()),
        (mine.start, mine.len()),
        &mut |i, at, c| {
            let dst = match i {
                0 => &mut st.m,
                1 => &mut st.v,
                _ => &mut st.params,
            };
            dst[at..at + c.len()].copy_from_slice(c);
            Ok(())
        },
    )
    .map_err(|e| other_split(e, &mine))?;
    if arrays < 3 {
        // A CPU run's checkpoint: the BF16 weights become the nearest of the master weights.
        st.params.clear();
    }
    dz.write_shard(&st)
}

/// A shard file's error, with what this build expects of it: a checkpoint whose shards were
/// split otherwise (before shard boundaries were multiples of 8) is refused, never misread.
pub fn other_split(e: String, mine: &std::ops::Range<usize>) -> String {
    format!("{e} (this build's ZeRO-1 split gives this rank parameters {mine:?}, boundaries at multiples of {}: a checkpoint whose shards were split otherwise, as by builds before that, cannot be resumed)", Shards::ALIGN)
}

const NO_DEVICE_ZERO1: &str = "a data-parallel checkpoint on a device backend without ZeRO-1 support (the CUDA backend sets it up with set_data_parallel)";

/// A device backend's data-parallel checkpoint of `h` into `dir`, the CPU's format: each rank
/// writes its ZeRO-1 shard (moments and BF16 parameters), all wait for each other, the FP32
/// master weights are gathered and rank 0 writes the model file, the marker, last. A failure on
/// any rank, before or between the collectives, fails every rank with an error naming it.
pub fn save_device_checkpoint(
    dir: &Path,
    h: &Header,
    be: &mut dyn Backend,
    dist: &dyn Transport,
) -> Result<PathBuf, String> {
    save_zero1_checkpoint(dir, h, be.device_zero1(), dist)
}

/// [`save_device_checkpoint`] of `dz`, a device's ZeRO-1 state (None: the backend has none, an
/// error agreed on as any other).
pub fn save_zero1_checkpoint(
    dir: &Path,
    h: &Header,
    dz: Option<&mut dyn DeviceZero1>,
    dist: &dyn Transport,
) -> Result<PathBuf, String> {
    let shards = Shards::even(h.num_params, dist.size());
    let what = format!("checkpoint of step {} in {}", h.step, dir.display());
    // This rank's part, without collectives: any failure in it reaches every rank through the
    // agreement, the first collective. Every shard is on disk (or every rank returns an error)
    // before the model file, the marker, is written.
    let saved = dz
        .ok_or_else(|| NO_DEVICE_ZERO1.to_string())
        .and_then(|dz| write_device_shard(dir, h, dz, dist, &shards));
    let st = agree(dist, saved, &what, "write their shard")?;
    // The model file holds every FP32 master weight: the shards gathered on rank 0 only.
    let root = dist.rank() == 0;
    let mut master = vec![0.0f32; if root { h.num_params } else { 0 }];
    dist.gather(&st.master, &shards, 0, &mut master)?;
    let written = if root {
        checkpoint::save_streaming(dir, h, &mut |_, at, c| {
            c.copy_from_slice(&master[at..at + c.len()]);
            Ok(())
        })
    } else {
        Ok(dir.join(checkpoint::file_name(h.step)))
    };
    // Rank 0's outcome on every rank: the checkpoint counts on all or on none.
    agree(dist, written, &what, "write the model file")
}

/// This rank's part of `save_zero1_checkpoint` before the collectives: its shard read from the
/// device, checked to be this rank's, and written (moments and BF16 parameters).
fn write_device_shard(
    dir: &Path,
    h: &Header,
    dz: &mut dyn DeviceZero1,
    dist: &dyn Transport,
    shards: &Shards,
) -> Result<ShardState, String> {
    let st = dz.read_shard()?;
    let mine = shards.range(dist.rank());
    let lens = [st.master.len(), st.m.len(), st.v.len(), st.params.len()];
    if st.offset != mine.start || lens.iter().any(|&l| l != mine.len()) {
        return Err(format!(
            "checkpoint of rank {} of {}: the device holds the optimizer state of parameters {}.. ({lens:?} master/m/v/parameter values), not that rank's shard {mine:?}",
            dist.rank(),
            dist.size(),
            st.offset,
        ));
    }
    let (m, v, params) = (&st.m, &st.v, &st.params);
    checkpoint::save_shard(
        dir,
        h.step,
        (dist.rank(), dist.size()),
        (st.offset, st.m.len()),
        3,
        &mut |i, at, c| {
            c.copy_from_slice(&[m, v, params][i][at..at + c.len()]);
            Ok(())
        },
    )?;
    Ok(st)
}
