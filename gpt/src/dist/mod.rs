//! Data-parallel training across processes: the small transport interface the trainer needs,
//! the single-process transport, and how the parameter space is split into ZeRO-1 shards.
//!
//! Determinism: every sum across ranks is taken in rank order, ((x0 + x1) + x2) + ..., by our
//! own code over plain data movement (point-to-point sends, gathers), never by an MPI or NCCL
//! reduction, whose order is implementation-defined. So N ranks reproduce themselves bit for bit,
//! whatever MPI library or network is underneath.

#[cfg(feature = "mpi")]
pub mod mpi;

pub mod nccl;
pub mod watchdog;
pub mod zero1;

use std::ops::Range;

/// What data-parallel training needs from a communication library. Errors are sentences.
pub trait Transport {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// On every rank, `out` = the sum in rank order of `send[shards.range(rank)]` over all ranks
    /// (`out.len()` = that shard's length).
    fn reduce_scatter_sum(
        &self,
        send: &[f32],
        shards: &Shards,
        out: &mut [f32],
    ) -> Result<(), String>;
    /// The data movement of a reduce-scatter whose sum is the caller's (a device kernel): on
    /// every rank, `recv[r * m .. (r + 1) * m]` = rank r's `send[shards.range(rank)]`, this rank's
    /// own included, where m = that shard's length.
    fn exchange(&self, send: &[f32], shards: &Shards, recv: &mut [f32]) -> Result<(), String>;
    /// An all-to-all of variable sizes: `send` holds, in rank order, `send_counts[r]` values
    /// for each rank r; on return `recv` holds, in rank order, the `recv_counts[r]` values rank
    /// r sent to this one (this rank's own included). Counts must match pairwise. The
    /// overlapped exchange moves one gradient bucket at a time with it. (Local, MPI and the
    /// watchdog's wrapper implement it; the default names the transport that does not.)
    fn exchange_counts(
        &self,
        _send: &[f32],
        _send_counts: &[usize],
        _recv: &mut [f32],
        _recv_counts: &[usize],
    ) -> Result<(), String> {
        Err(format!(
            "this transport ({} ranks) has no variable-count exchange",
            self.size()
        ))
    }
    /// On every rank, `buf[shards.range(r)]` = rank r's `buf[shards.range(r)]` for every r.
    fn all_gather(&self, buf: &mut [f32], shards: &Shards) -> Result<(), String>;
    /// Every rank's `x`, indexed by rank (small values: losses, norms, flags).
    fn all_gather_f64(&self, x: f64) -> Result<Vec<f64>, String>;
    /// Rank `root`'s `buf` into every rank's `buf`.
    fn broadcast(&self, buf: &mut [u8], root: usize) -> Result<(), String>;
    fn barrier(&self) -> Result<(), String>;
    /// Ends every rank of the job at once (after this rank printed why).
    fn abort(&self, code: i32) -> !;

    /// Runs `f`, a collective that goes around this transport (NCCL between GPUs), under the
    /// same watch as this transport's own collectives (`watchdog::Watched` times it).
    fn watched(
        &self,
        _what: &'static str,
        f: &mut dyn FnMut() -> Result<(), String>,
    ) -> Result<(), String> {
        f()
    }

    /// On `root`, `buf[shards.range(r)]` = rank r's `mine` for every r (`buf.len()` =
    /// `shards.total` there); elsewhere `buf` is not touched (it may be empty). The default is
    /// an all-gather (every rank holds the whole buffer for it); MPI gathers to the root only.
    fn gather(
        &self,
        mine: &[f32],
        shards: &Shards,
        root: usize,
        buf: &mut [f32],
    ) -> Result<(), String> {
        let mut all = vec![0.0f32; shards.total];
        all[shards.range(self.rank())].copy_from_slice(mine);
        self.all_gather(&mut all, shards)?;
        if self.rank() == root {
            buf.copy_from_slice(&all);
        }
        Ok(())
    }

    /// The sum in rank order of every rank's `x`.
    fn sum_f64(&self, x: f64) -> Result<f64, String> {
        let all = self.all_gather_f64(x)?;
        Ok(all[1..].iter().fold(all[0], |acc, v| acc + v))
    }
    /// `buf` summed over ranks in rank order, on every rank: a reduce-scatter and an all-gather.
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<(), String> {
        let shards = Shards::even(buf.len(), self.size());
        let mut mine = vec![0.0; shards.range(self.rank()).len()];
        self.reduce_scatter_sum(buf, &shards, &mut mine)?;
        buf[shards.range(self.rank())].copy_from_slice(&mine);
        self.all_gather(buf, &shards)
    }
}

/// One process: every collective is the identity.
pub struct Local;

impl Transport for Local {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn reduce_scatter_sum(
        &self,
        send: &[f32],
        shards: &Shards,
        out: &mut [f32],
    ) -> Result<(), String> {
        out.copy_from_slice(&send[shards.range(0)]);
        Ok(())
    }
    fn exchange(&self, send: &[f32], shards: &Shards, recv: &mut [f32]) -> Result<(), String> {
        recv.copy_from_slice(&send[shards.range(0)]);
        Ok(())
    }
    fn exchange_counts(
        &self,
        send: &[f32],
        send_counts: &[usize],
        recv: &mut [f32],
        recv_counts: &[usize],
    ) -> Result<(), String> {
        if send_counts != [send.len()] || recv_counts != [recv.len()] || send.len() != recv.len() {
            return Err(format!(
                "a 1-rank exchange of {send_counts:?} values into {recv_counts:?}"
            ));
        }
        recv.copy_from_slice(send);
        Ok(())
    }
    fn all_gather(&self, _buf: &mut [f32], _shards: &Shards) -> Result<(), String> {
        Ok(())
    }
    fn all_gather_f64(&self, x: f64) -> Result<Vec<f64>, String> {
        Ok(vec![x])
    }
    fn broadcast(&self, _buf: &mut [u8], _root: usize) -> Result<(), String> {
        Ok(())
    }
    fn barrier(&self) -> Result<(), String> {
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// A split of `0..total` into `n` contiguous shards, rank r owning the r-th. Every interior
/// boundary is a multiple of 8 (`ALIGN`): a shard of the BF16 parameters and gradients then
/// starts 16-byte aligned, which the vectorized AdamW kernel needs on the GPU (an unaligned
/// shard falls back to the per-range reference kernel). Rank r's shard starts at
/// `8 * floor(r * total / (8 n))`, the last ends at `total`: every shard's length is within 8
/// of `total / n`. A total under 8 per rank leaves some shards empty: the collectives cope
/// (CPU and host-staged device transports, tested with 1, 2 and 7 values); the CUDA backend
/// refuses one in `set_data_parallel`; a model is never that small.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shards {
    pub total: usize,
    pub n: usize,
}

impl Shards {
    /// Elements per alignment unit of a shard boundary: one 16-byte vector of BF16.
    pub const ALIGN: usize = 8;

    pub fn even(total: usize, n: usize) -> Shards {
        assert!(n > 0, "a split into 0 shards");
        Shards { total, n }
    }
    pub fn range(&self, r: usize) -> Range<usize> {
        let a = Self::ALIGN as u128;
        let at = |i: usize| {
            if i >= self.n {
                self.total
            } else {
                (i as u128 * self.total as u128 / (a * self.n as u128) * a) as usize
            }
        };
        at(r)..at(r + 1)
    }
    /// The longest shard's length (what a message to or from one rank may hold).
    pub fn max_len(&self) -> usize {
        (0..self.n).map(|r| self.range(r).len()).max().unwrap_or(0)
    }
}

/// The transport this process was started with: MPI's world under `mpirun` in a build with the
/// `mpi` feature, else a single process (saying so if `mpirun` started it without the feature).
pub fn from_env() -> Result<Box<dyn Transport>, String> {
    let launched = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"]
        .iter()
        .find_map(|k| std::env::var(k).ok().map(|v| (*k, v)));
    #[cfg(feature = "mpi")]
    if launched.is_some() {
        return Ok(Box::new(mpi::Mpi::init()?));
    }
    #[cfg(not(feature = "mpi"))]
    if let Some((k, v)) = launched {
        if k != "OMPI_COMM_WORLD_SIZE" || v != "1" {
            return Err(format!(
                "started by an MPI launcher ({k}={v}) but this train_gpt was built without the `mpi` feature: every rank would train alone. Build with `cargo build --release -p gpt --features mpi` (./train_gpt does when it finds mpicc and mpirun on PATH)"
            ));
        }
    }
    Ok(Box::new(Local))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The split's promises over many (total, n): a partition of 0..total in rank order,
    /// interior boundaries multiples of 8, every length within 8 of total / n.
    #[test]
    fn shards_partition_align_and_balance() {
        let mut cases: Vec<(usize, usize)> = (1..=9)
            .flat_map(|n| (0..200).map(move |t| (t, n)))
            .collect();
        cases.extend([
            (124_000_001, 4),
            (124_439_808, 3),
            (6_700_000_007, 7),
            (1 << 40, 5),
        ]);
        for (total, n) in cases {
            let s = Shards::even(total, n);
            let mut next = 0;
            for r in 0..n {
                let range = s.range(r);
                assert_eq!(range.start, next, "{total} over {n}: shard {r} starts");
                assert!(range.start <= range.end, "{total} over {n}: shard {r}");
                if r > 0 {
                    assert_eq!(
                        range.start % Shards::ALIGN,
                        0,
                        "{total} over {n}: shard {r}"
                    );
                }
                // |len - total / n| < 8, in integers.
                let dev = (range.len() * n).abs_diff(total);
                assert!(
                    dev < 8 * n,
                    "{total} over {n}: shard {r} holds {}",
                    range.len()
                );
                next = range.end;
            }
            assert_eq!(
                next, total,
                "{total} over {n}: the last shard ends at the total"
            );
            assert_eq!(s.range(n), total..total, "past the last rank: empty");
            // No shard is empty from 8 values per rank on (what the CUDA backend requires).
            let none_empty = (0..n).all(|r| !s.range(r).is_empty());
            assert_eq!(
                none_empty,
                total >= 8 * n || (n == 1 && total > 0),
                "{total} over {n}"
            );
        }
    }
}
