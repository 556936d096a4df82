//! Data parallel on the CUDA backend: a small collective interface over device buffers, and the
//! rank-order gradient sum on the device (ptx/kernels/dp_sum.cu).
//!
//! Determinism as on the CPU (`crate::dist`): no NCCL or MPI reduction is ever used. ZeRO-1's
//! reduce-scatter is an *exchange* (each rank's part of every shard moved to the shard's owner,
//! plain data movement) followed by our own kernel that adds the parts in rank order, rank 0
//! first, in FP32 with one BF16 rounding; the parameter all-gather only moves data. So N ranks
//! reproduce themselves bit for bit whatever the interconnect.
//!
//! Two implementations of the data movement:
//! - [`HostStaged`]: device -> host, the process transport (`Transport::exchange` /
//!   `all_gather`, MPI under mpirun), host -> device. Slow (two PCIe copies of the gradients
//!   and the BF16 values travel as FP32), but it runs on the host execution harness, so CI
//!   exercises the device path with 2 MPI ranks.
//! - [`NcclCollective`]: grouped `ncclSend`/`ncclRecv` of raw bytes between device buffers
//!   (libnccl loaded at run time by `crate::dist::nccl`). Compiled in CI; NEVER RUN (no GPU,
//!   let alone two, was at hand).
//!
//! Memory: a data-parallel backend holds FP32 master weights and moments for its shard only
//! (`CudaBackend::on_ranks`); `Zero1State` adds the staging buffer of the exchanged parts.
//! Checkpoints of the shards: `crate::dist::zero1::save_device_checkpoint`.
//!
//! Overlap (on by default; `MXGPT_DP_OVERLAP=0` exchanges everything after the backward): the
//! gradients move in buckets, one per layer, in the order the backward finishes them
//! ([`backward_buckets`]). After layer l's backward the backend records an event on the main
//! stream (`Zero1State::layer_backward_done`); a second stream waits for it and moves bucket l
//! while the main stream goes on with the layers below. The rank-order sum then runs once over
//! the whole shard, on the main stream after it waits for the second stream, so the bits are
//! those of the serial exchange: each element is moved, not computed, until that one sum.
//! Tested on the host execution harness with 2 MPI ranks, under stream orders that hold either
//! stream back (`tests/tests/gpu_mpi.rs`); the overlap in time itself needs a GPU profile.

pub use super::kernels::dp_sum::{rank_order_sum, rank_order_sum_host};
use super::kernels::Ptr;
use crate::dist::nccl::Nccl;
use crate::dist::{Shards, Transport};
use crate::layout::{ParamKind, ParamLayout};
use runtime::cuda::half::bf16;
use runtime::cuda::{DeviceBuffer, Event, Gpu, Stream};
use std::ops::Range;

/// `len` gradient values on their way to a shard's owner: from `src` in the sender's gradients
/// to `dst` in the owner's staging buffer (`parts`: ranks x the owner's shard, the sender's
/// part at `sender * shard length`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub src: usize,
    pub dst: usize,
    pub len: usize,
}

/// One bucket's data movement seen from one rank: `sends[r]` go to rank r, `recvs[r]` come
/// from rank r. Both sides list a pair's pieces in increasing `src`, so the k-th piece one
/// rank sends to another is the k-th that one receives from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketPlan {
    pub sends: Vec<Vec<Piece>>,
    pub recvs: Vec<Vec<Piece>>,
}

impl BucketPlan {
    /// The plan of `bucket` (disjoint ranges of the gradients, increasing) for `rank`: each range
    /// cut at the shards' edges, each cut going to its shard's owner.
    pub fn new(bucket: &[Range<usize>], shards: &Shards, rank: usize) -> BucketPlan {
        let pieces = |owner: usize, sender: usize| -> Vec<Piece> {
            let sh = shards.range(owner);
            bucket
                .iter()
                .filter_map(|b| {
                    let (start, end) = (b.start.max(sh.start), b.end.min(sh.end));
                    (start < end).then(|| Piece {
                        src: start,
                        dst: sender * sh.len() + (start - sh.start),
                        len: end - start,
                    })
                })
                .collect()
        };
        BucketPlan {
            sends: (0..shards.n).map(|r| pieces(r, rank)).collect(),
            recvs: (0..shards.n).map(|r| pieces(rank, r)).collect(),
        }
    }
}

fn values(pieces: &[Piece]) -> usize {
    pieces.iter().map(|p| p.len).sum()
}

/// The overlapped exchange's buckets (ranges of the gradients), in the order the backward
/// finishes them: the last layer's (its slice of each of the 12 per-layer tensors) first, down
/// to layer 0; then the rest (wte, wpe, the final layernorm), complete only when the backward
/// ends (wte's gradient takes the encoder's backward, its last operation). Every gradient is
/// in exactly one bucket.
pub fn backward_buckets(layout: &ParamLayout) -> Vec<Vec<Range<usize>>> {
    use ParamKind::*;
    let whole = |k: &ParamKind| matches!(k, Wte | Wpe | LnfW | LnfB);
    let layers = layout.tensor(Ln1W).copies;
    let sorted = |mut v: Vec<Range<usize>>| {
        v.sort_by_key(|r| r.start);
        v
    };
    let mut buckets: Vec<Vec<Range<usize>>> = (0..layers)
        .rev()
        .map(|l| {
            sorted(
                layout
                    .tensors
                    .iter()
                    .filter(|t| !whole(&t.kind))
                    .map(|t| layout.grad(t.kind, l).range())
                    .collect(),
            )
        })
        .collect();
    buckets.push(sorted(
        layout
            .tensors
            .iter()
            .filter(|t| whole(&t.kind))
            .map(|t| layout.grad(t.kind, 0).range())
            .collect(),
    ));
    buckets
}

/// The data movement of ZeRO-1 between device buffers of the ranks. Errors are sentences.
pub trait DeviceCollective {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// `plan`'s pieces from `grads` into `parts` on every rank, on the current stream: enqueued
    /// only (NCCL: `finish` waits for them) or done when this returns (host-staged).
    fn exchange(
        &self,
        g: &Gpu,
        grads: &DeviceBuffer<bf16>,
        parts: &DeviceBuffer<bf16>,
        plan: &BucketPlan,
    ) -> Result<(), String>;
    /// Waits until what `exchange` enqueued on the current stream has landed.
    fn finish(&self, g: &Gpu, what: &str) -> Result<(), String>;
    /// On every rank, `buf[shards.range(r)]` = rank r's, for every r (in place).
    fn all_gather(&self, g: &Gpu, buf: &DeviceBuffer<bf16>, shards: &Shards) -> Result<(), String>;
}

/// ZeRO-1's gradient reduce-scatter on the device, not overlapped: the exchange of every
/// gradient into `parts` (ranks x this rank's shard length), then the rank-order sum into `grads[shards.range(rank)]` (the rest of
/// `grads` is stale from here on).
pub fn reduce_scatter_sum(
    dc: &dyn DeviceCollective,
    g: &Gpu,
    grads: &DeviceBuffer<bf16>,
    shards: &Shards,
    parts: &DeviceBuffer<bf16>,
) -> Result<(), String> {
    let mine = shards.range(dc.rank());
    let m = mine.len();
    if parts.len() < m * dc.size() {
        return Err(format!(
            "the gradient staging buffer holds {} values, {} ranks x a shard of {m} need {}",
            parts.len(),
            dc.size(),
            m * dc.size()
        ));
    }
    let whole = BucketPlan::new(std::slice::from_ref(&(0..shards.total)), shards, dc.rank());
    dc.exchange(g, grads, parts, &whole)?;
    dc.finish(g, "the gradient exchange")?;
    rank_order_sum(
        g,
        Ptr::of(grads).slice(mine.start, m),
        Ptr::of(parts).slice(0, m * dc.size()),
        m,
        dc.size(),
    )
    .map_err(|e| e.to_string())
}

/// Device -> host -> the process transport -> device.
pub struct HostStaged<'a> {
    pub dist: &'a dyn Transport,
}

fn download_f32(g: &Gpu, b: &DeviceBuffer<bf16>) -> Result<Vec<f32>, String> {
    let v = g.download(b).map_err(|e| e.to_string())?;
    Ok(v.iter().map(|x| x.to_f32()).collect())
}

fn upload_bf16(g: &Gpu, host: &[f32], b: &DeviceBuffer<bf16>, at: usize) -> Result<(), String> {
    // Exact: every value came from a bf16.
    let v: Vec<bf16> = host.iter().map(|&x| bf16::from_f32(x)).collect();
    g.copy_to_device_at(&v, b, at).map_err(|e| e.to_string())
}

impl DeviceCollective for HostStaged<'_> {
    fn rank(&self) -> usize {
        self.dist.rank()
    }
    fn size(&self) -> usize {
        self.dist.size()
    }
    fn exchange(
        &self,
        g: &Gpu,
        grads: &DeviceBuffer<bf16>,
        parts: &DeviceBuffer<bf16>,
        plan: &BucketPlan,
    ) -> Result<(), String> {
        // Each piece's values, in rank order: the copies wait for the current stream only.
        let mut send = Vec::new();
        for p in plan.sends.iter().flatten() {
            let mut v = vec![bf16::ZERO; p.len];
            g.copy_to_host_at(grads, p.src, &mut v)
                .map_err(|e| e.to_string())?;
            send.extend(v.iter().map(|x| x.to_f32()));
        }
        let send_counts: Vec<usize> = plan.sends.iter().map(|s| values(s)).collect();
        let recv_counts: Vec<usize> = plan.recvs.iter().map(|r| values(r)).collect();
        let mut recv = vec![0.0f32; recv_counts.iter().sum()];
        self.dist
            .exchange_counts(&send, &send_counts, &mut recv, &recv_counts)?;
        let mut at = 0;
        for p in plan.recvs.iter().flatten() {
            upload_bf16(g, &recv[at..at + p.len], parts, p.dst)?;
            at += p.len;
        }
        Ok(())
    }
    fn finish(&self, _g: &Gpu, _what: &str) -> Result<(), String> {
        Ok(()) // every copy of `exchange` waited
    }
    fn all_gather(&self, g: &Gpu, buf: &DeviceBuffer<bf16>, shards: &Shards) -> Result<(), String> {
        let mut host = download_f32(g, buf)?;
        self.dist.all_gather(&mut host[..shards.total], shards)?;
        upload_bf16(g, &host[..shards.total], buf, 0)
    }
}

/// Grouped NCCL sends and receives of raw bytes on the current stream; the unique id travels
/// over the transport. NEVER RUN: compiled only. A bucket sends several pieces to one peer in
/// one group: NCCL matches a pair's sends and receives in the order they are called, which
/// both sides keep (`BucketPlan`).
pub struct NcclCollective {
    nccl: Nccl,
    rank: usize,
    size: usize,
}

impl NcclCollective {
    /// Loads NCCL and joins every rank of `dist` (one GPU per rank: the current device).
    pub fn init(dist: &dyn Transport) -> Result<NcclCollective, String> {
        Ok(NcclCollective {
            nccl: Nccl::init(dist)?,
            rank: dist.rank(),
            size: dist.size(),
        })
    }
}

const BF16_BYTES: usize = 2;

fn addr(b: &DeviceBuffer<bf16>, at: usize) -> u64 {
    b.device_ptr() + (at * BF16_BYTES) as u64
}

impl DeviceCollective for NcclCollective {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn exchange(
        &self,
        g: &Gpu,
        grads: &DeviceBuffer<bf16>,
        parts: &DeviceBuffer<bf16>,
        plan: &BucketPlan,
    ) -> Result<(), String> {
        let list = |side: &[Vec<Piece>], buf: &DeviceBuffer<bf16>, at: fn(&Piece) -> usize| {
            side.iter()
                .enumerate()
                .flat_map(|(r, pieces)| {
                    pieces.iter().map(move |p| {
                        assert!(at(p) + p.len <= buf.len(), "a piece outside its buffer");
                        (r, addr(buf, at(p)), p.len * BF16_BYTES)
                    })
                })
                .collect::<Vec<_>>()
        };
        let sends = list(&plan.sends, grads, |p| p.src);
        let recvs = list(&plan.recvs, parts, |p| p.dst);
        // SAFETY: every piece lies inside its buffer (asserted above), and the buffers outlive
        // the stream's work (the backend frees nothing while a step runs).
        unsafe { self.nccl.exchange_bytes(&sends, &recvs, g.raw_stream()) }
    }
    fn finish(&self, g: &Gpu, what: &str) -> Result<(), String> {
        g.synchronize_stream(what).map_err(|e| e.to_string())
    }
    fn all_gather(&self, g: &Gpu, buf: &DeviceBuffer<bf16>, shards: &Shards) -> Result<(), String> {
        assert!(buf.len() >= shards.total);
        let mine = shards.range(self.rank);
        let others = (0..self.size).filter(|&r| r != self.rank);
        let sends: Vec<_> = others
            .clone()
            .map(|r| (r, addr(buf, mine.start), mine.len() * BF16_BYTES))
            .collect();
        let recvs: Vec<_> = others
            .map(|r| {
                let range = shards.range(r);
                (r, addr(buf, range.start), range.len() * BF16_BYTES)
            })
            .collect();
        // SAFETY: the shards partition buf[..total]: the sends read this rank's range, the
        // receives write the others'.
        unsafe { self.nccl.exchange_bytes(&sends, &recvs, g.raw_stream())? };
        self.finish(g, "the NCCL parameter all-gather")
    }
}

/// The second stream and events of the overlapped exchange.
struct Overlap {
    side: Stream,
    /// Recorded on the main stream when layer l's backward is done (every micro batch; the
    /// last one's record is what the exchange waits for).
    layer_done: Vec<Event>,
    /// Which layers recorded `layer_done` since the last exchange, and whether one was
    /// skipped (while a graph captured): a bucket without its own fresh record waits for the
    /// whole backward instead, never for an old record.
    fresh: std::cell::RefCell<Vec<bool>>,
    skipped: std::cell::Cell<bool>,
    backward_done: Event,
    exchanged: Event,
}

/// A CUDA backend's ZeRO-1 state: its shard of the parameter space, the staging buffer of the
/// exchanged gradient parts, the buckets' plans and the overlap's stream, and NCCL when the
/// run uses it (else the host-staged path).
pub struct Zero1State {
    pub shards: Shards,
    pub rank: usize,
    parts: DeviceBuffer<bf16>,
    nccl: Option<NcclCollective>,
    /// One plan per bucket of `backward_buckets` when overlapping, else one of everything.
    plans: Vec<BucketPlan>,
    overlap: Option<Overlap>,
}

/// Which data movement a data-parallel CUDA run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CollectiveKind {
    Nccl,
    HostStaged,
}

impl CollectiveKind {
    /// `MXGPT_DEVICE_COLLECTIVE`: `nccl` (the default) or `host` (host-staged over the process
    /// transport: no NCCL needed, slow).
    pub fn from_env() -> Result<CollectiveKind, String> {
        match std::env::var("MXGPT_DEVICE_COLLECTIVE").as_deref() {
            Err(_) | Ok("nccl") => Ok(CollectiveKind::Nccl),
            Ok("host") => Ok(CollectiveKind::HostStaged),
            Ok(o) => Err(format!(
                "MXGPT_DEVICE_COLLECTIVE={o}: expected nccl or host"
            )),
        }
    }
}

/// The CUDA backend of data-parallel rank `dist.rank()` (the trainer's and the step bench's):
/// one GPU per rank, the node-local rank's (`OMPI_COMM_WORLD_LOCAL_RANK` or `MPI_LOCALRANKID`,
/// else GPU 0); FP32 master weights and moments of this rank's ZeRO-1 shard only; the data
/// movement `CollectiveKind::from_env` names.
pub fn rank_backend(
    cfg: &crate::config::ModelConfig,
    batch: usize,
    seq: usize,
    dist: &dyn Transport,
    mx_gemm: super::MxGemmChoice,
) -> Result<super::CudaBackend, String> {
    let gpu = ["OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID"]
        .iter()
        .find_map(|k| std::env::var(k).ok()?.parse().ok())
        .unwrap_or(0);
    let at = |e: String| format!("--device cuda (rank {}: GPU {gpu}): {e}", dist.rank());
    let dev = Gpu::new(gpu).map_err(|e| at(e.to_string()))?;
    let ranks = (dist.rank(), dist.size());
    let mut be =
        super::CudaBackend::on_ranks(dev, cfg, batch, seq, ranks).map_err(|e| at(e.to_string()))?;
    be.set_mx_gemm(mx_gemm).map_err(|e| e.to_string())?;
    be.set_data_parallel(dist, CollectiveKind::from_env()?)
        .map_err(|e| format!("--device cuda, {} ranks: {e}", dist.size()))?;
    Ok(be)
}

/// `MXGPT_DP_OVERLAP`: `1` (the default) overlaps the gradient exchange with the backward,
/// `0` exchanges everything after it. Both give the same bits.
pub fn overlap_from_env() -> Result<bool, String> {
    match std::env::var("MXGPT_DP_OVERLAP").as_deref() {
        Err(_) | Ok("1") => Ok(true),
        Ok("0") => Ok(false),
        Ok(o) => Err(format!("MXGPT_DP_OVERLAP={o}: expected 1 (overlap) or 0")),
    }
}

impl Zero1State {
    /// This rank's shard of `layout`'s parameters over `dist`'s ranks, on `g`; the exchange
    /// overlaps the backward if `overlap`.
    pub fn new(
        g: &Gpu,
        dist: &dyn Transport,
        layout: &ParamLayout,
        kind: CollectiveKind,
        overlap: bool,
    ) -> Result<Zero1State, String> {
        let shards = Shards::even(layout.total, dist.size());
        let m = shards.range(dist.rank()).len();
        let e = |e: runtime::cuda::CudaError| e.to_string();
        let parts = g.alloc::<bf16>((m * dist.size()).max(1)).map_err(e)?;
        let nccl = match kind {
            CollectiveKind::Nccl => Some(NcclCollective::init(dist)?),
            CollectiveKind::HostStaged => None,
        };
        let buckets = if overlap {
            backward_buckets(layout)
        } else {
            vec![vec![0..layout.total]]
        };
        let plans = buckets
            .iter()
            .map(|b| BucketPlan::new(b, &shards, dist.rank()))
            .collect();
        let overlap = match overlap {
            false => None,
            true => Some(Overlap {
                side: g.create_stream().map_err(e)?,
                layer_done: (0..layout.tensor(ParamKind::Ln1W).copies)
                    .map(|_| g.event())
                    .collect::<Result<_, _>>()
                    .map_err(e)?,
                fresh: std::cell::RefCell::new(vec![false; layout.tensor(ParamKind::Ln1W).copies]),
                skipped: std::cell::Cell::new(false),
                backward_done: g.event().map_err(e)?,
                exchanged: g.event().map_err(e)?,
            }),
        };
        Ok(Zero1State {
            shards,
            rank: dist.rank(),
            parts,
            nccl,
            plans,
            overlap,
        })
    }

    /// Layer `layer`'s weight gradients are complete once the main stream gets here (the
    /// backend calls this after the layer's backward): their bucket may leave from this point.
    /// Nothing while a graph is captured (its events could not be recorded).
    pub fn layer_backward_done(&self, g: &Gpu, layer: usize) -> Result<(), String> {
        let Some(o) = &self.overlap else {
            return Ok(());
        };
        if g.is_capturing() {
            o.skipped.set(true);
            return Ok(());
        }
        g.record(&o.layer_done[layer]).map_err(|e| e.to_string())?;
        o.fresh.borrow_mut()[layer] = true;
        Ok(())
    }

    /// Every bucket from `grads` into `parts`: one after the backward (serial), or each on the
    /// second stream once its layer is done, the main stream then waiting for the last.
    fn exchange_all(
        &self,
        g: &Gpu,
        dc: &dyn DeviceCollective,
        grads: &DeviceBuffer<bf16>,
    ) -> Result<(), String> {
        let e = |e: runtime::cuda::CudaError| e.to_string();
        let Some(o) = &self.overlap else {
            dc.exchange(g, grads, &self.parts, &self.plans[0])?;
            return dc.finish(g, "the gradient exchange");
        };
        g.record(&o.backward_done).map_err(e)?;
        // backward_buckets' order: layers L-1 .. 0, then the rest.
        let fresh = o.fresh.replace(vec![false; o.layer_done.len()]);
        let skipped = o.skipped.replace(false);
        let ready = (0..fresh.len())
            .rev()
            .map(|l| match fresh[l] && !skipped {
                true => &o.layer_done[l],
                false => &o.backward_done,
            })
            .chain([&o.backward_done]);
        g.on_stream(&o.side, || -> Result<(), String> {
            for (plan, done) in self.plans.iter().zip(ready) {
                g.wait_event(done).map_err(e)?;
                dc.exchange(g, grads, &self.parts, plan)?;
            }
            dc.finish(g, "the overlapped gradient exchange")?;
            g.record(&o.exchanged).map_err(e)
        })?;
        g.wait_event(&o.exchanged).map_err(e)
    }

    /// The parameter range this rank updates.
    pub fn mine(&self) -> std::ops::Range<usize> {
        self.shards.range(self.rank)
    }

    fn check(&self, dist: &dyn Transport, shards: &Shards) -> Result<(), String> {
        if *shards != self.shards || dist.rank() != self.rank {
            return Err(format!(
                "ZeRO-1 on the CUDA backend was set up for rank {} of {:?}, called for rank {} of {shards:?}",
                self.rank,
                self.shards,
                dist.rank()
            ));
        }
        Ok(())
    }

    /// The gradients summed over the ranks into this rank's shard of `grads`; returns the global
    /// norm (this shard's on the device, the squares summed over ranks in rank order).
    pub fn reduce_gradients(
        &self,
        g: &Gpu,
        dist: &dyn Transport,
        shards: &Shards,
        grads: &DeviceBuffer<bf16>,
        norm: &DeviceBuffer<f32>,
        work: &DeviceBuffer<f32>,
    ) -> Result<f32, String> {
        self.check(dist, shards)?;
        match &self.nccl {
            // NCCL goes around the transport: the watchdog times it through `watched`.
            Some(n) => dist.watched("the NCCL gradient exchange", &mut || {
                self.exchange_all(g, n, grads)
            })?,
            None => self.exchange_all(g, &HostStaged { dist }, grads)?,
        }
        let mine = self.mine();
        let n = dist.size();
        rank_order_sum(
            g,
            Ptr::of(grads).slice(mine.start, mine.len()),
            Ptr::of(&self.parts).slice(0, mine.len() * n),
            mine.len(),
            n,
        )
        .map_err(|e| e.to_string())?;
        super::kernels::global_norm::grad_norm(
            g,
            Ptr::of(norm),
            Ptr::of(grads).slice(mine.start, mine.len()),
            Ptr::of(work),
        )
        .map_err(|e| e.to_string())?;
        let mut n = [0.0f32];
        g.copy_to_host(norm, &mut n).map_err(|e| e.to_string())?;
        let squares = dist.sum_f64(n[0] as f64 * n[0] as f64)?;
        Ok(squares.sqrt() as f32)
    }

    /// Every rank's updated shard of `params` onto every rank.
    pub fn gather_params(
        &self,
        g: &Gpu,
        dist: &dyn Transport,
        shards: &Shards,
        params: &DeviceBuffer<bf16>,
    ) -> Result<(), String> {
        self.check(dist, shards)?;
        match &self.nccl {
            Some(n) => dist.watched("the NCCL parameter all-gather", &mut || {
                n.all_gather(g, params, shards)
            }),
            None => HostStaged { dist }.all_gather(g, params, shards),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;

    fn layouts() -> Vec<ParamLayout> {
        // Small enough to simulate element by element; shard edges fall inside tensors; one
        // layer is the edge case of the per-layer tensors having one copy like the rest.
        [(3, 16, 2, 8), (1, 8, 1, 4)]
            .iter()
            .map(|&(l, c, h, t)| ParamLayout::new(&ModelConfig::new(l, c, h, t).unwrap()))
            .collect()
    }

    #[test]
    fn buckets_hold_every_gradient_once_layer_by_layer_from_the_last() {
        for layout in layouts() {
            let layers = layout.tensor(ParamKind::Ln1W).copies;
            let buckets = backward_buckets(&layout);
            assert_eq!(buckets.len(), layers + 1);
            let mut seen = vec![0u8; layout.total];
            for (k, b) in buckets.iter().enumerate() {
                assert!(
                    b.windows(2).all(|w| w[0].end <= w[1].start),
                    "bucket {k} sorted"
                );
                for r in b {
                    r.clone().for_each(|i| seen[i] += 1);
                }
                if k < layers {
                    // Bucket k is layer L-1-k's: its fc weight is there, layer L-k's is not.
                    let l = layers - 1 - k;
                    assert!(b.contains(&layout.grad(ParamKind::FcW, l).range()));
                    assert!(b.contains(&layout.grad(ParamKind::Ln1B, l).range()));
                    assert_eq!(b.len(), 12);
                } else {
                    assert!(b.contains(&layout.grad(ParamKind::Wte, 0).range()));
                    assert_eq!(b.len(), 4);
                }
            }
            assert!(
                seen.iter().all(|&c| c == 1),
                "every gradient in exactly one bucket"
            );
        }
    }

    /// The buckets' plans applied to N simulated ranks move exactly what the whole exchange
    /// moves: every element of every owner's `parts` written once, with the sender's value.
    #[test]
    fn bucket_plans_together_are_the_whole_exchange() {
        for layout in layouts() {
            let total = layout.total;
            for n in 1..=4 {
                let shards = Shards::even(total, n);
                let value = |r: usize, i: usize| (r * total + i) as u64;
                let mut parts: Vec<Vec<Option<u64>>> = (0..n)
                    .map(|o| vec![None; shards.range(o).len() * n])
                    .collect();
                for bucket in backward_buckets(&layout) {
                    let plans: Vec<BucketPlan> = (0..n)
                        .map(|r| BucketPlan::new(&bucket, &shards, r))
                        .collect();
                    for (sender, plan) in plans.iter().enumerate() {
                        for (owner, pieces) in plan.sends.iter().enumerate() {
                            // What the owner expects from this sender, piece by piece.
                            assert_eq!(pieces, &plans[owner].recvs[sender]);
                            for p in pieces {
                                for j in 0..p.len {
                                    let slot = &mut parts[owner][p.dst + j];
                                    assert!(slot.is_none(), "written twice");
                                    *slot = Some(value(sender, p.src + j));
                                }
                            }
                        }
                    }
                }
                for (owner, got) in parts.iter().enumerate() {
                    let mine = shards.range(owner);
                    for (k, v) in got.iter().enumerate() {
                        let (sender, j) = (k / mine.len(), k % mine.len());
                        assert_eq!(*v, Some(value(sender, mine.start + j)), "{n} ranks");
                    }
                }
            }
        }
    }
}
