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
//! Not done: overlapping the exchange with the backward (per-layer buckets on a second stream,
//! designed in the README's data-parallel section); the exchange starts after the last micro
//! batch's backward.

pub use super::kernels::dp_sum::{rank_order_sum, rank_order_sum_host};
use super::kernels::Ptr;
use crate::dist::nccl::Nccl;
use crate::dist::{Shards, Transport};
use runtime::cuda::half::bf16;
use runtime::cuda::{DeviceBuffer, Gpu};

/// The data movement of ZeRO-1 between device buffers of the ranks. Errors are sentences.
pub trait DeviceCollective {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// On every rank, `parts[r * m .. (r + 1) * m]` = rank r's `grads[shards.range(rank)]`
    /// (this rank's own included), m = this rank's shard length; `parts` holds ranks x m.
    fn exchange(
        &self,
        g: &Gpu,
        grads: &DeviceBuffer<bf16>,
        shards: &Shards,
        parts: &DeviceBuffer<bf16>,
    ) -> Result<(), String>;
    /// On every rank, `buf[shards.range(r)]` = rank r's, for every r (in place).
    fn all_gather(&self, g: &Gpu, buf: &DeviceBuffer<bf16>, shards: &Shards) -> Result<(), String>;
}

/// ZeRO-1's gradient reduce-scatter on the device: the exchange into `parts` (ranks x this
/// rank's shard length), then the rank-order sum into `grads[shards.range(rank)]` (the rest of
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
    dc.exchange(g, grads, shards, parts)?;
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
        shards: &Shards,
        parts: &DeviceBuffer<bf16>,
    ) -> Result<(), String> {
        let send = download_f32(g, grads)?;
        let m = shards.range(self.rank()).len();
        let mut recv = vec![0.0f32; m * self.size()];
        self.dist
            .exchange(&send[..shards.total], shards, &mut recv)?;
        upload_bf16(g, &recv, parts, 0)
    }
    fn all_gather(&self, g: &Gpu, buf: &DeviceBuffer<bf16>, shards: &Shards) -> Result<(), String> {
        let mut host = download_f32(g, buf)?;
        self.dist.all_gather(&mut host[..shards.total], shards)?;
        upload_bf16(g, &host[..shards.total], buf, 0)
    }
}

/// Grouped NCCL sends and receives of raw bytes; the unique id travels over the transport.
/// NEVER RUN: compiled only.
pub struct NcclCollective {
    nccl: Nccl,
    rank: usize,
    size: usize,
    /// One byte that a memset on the backend's stream writes after each NCCL call: that
    /// stream is a blocking one, so the memset waits for NCCL's work on the legacy default
    /// stream, and synchronizing the backend's stream then waits for NCCL too (an error or a
    /// hang surfaces inside the call, where the watchdog times it).
    fence: DeviceBuffer<u8>,
}

impl NcclCollective {
    /// Loads NCCL and joins every rank of `dist` (one GPU per rank: `g`, the current device).
    pub fn init(g: &Gpu, dist: &dyn Transport) -> Result<NcclCollective, String> {
        Ok(NcclCollective {
            nccl: Nccl::init(dist)?,
            rank: dist.rank(),
            size: dist.size(),
            fence: g.alloc::<u8>(1).map_err(|e| e.to_string())?,
        })
    }

    /// Waits until the NCCL work enqueued on the legacy default stream is done.
    fn wait(&self, g: &Gpu, what: &str) -> Result<(), String> {
        g.fill_bytes(&self.fence, 0)
            .and_then(|()| g.synchronize(what))
            .map_err(|e| e.to_string())
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
        shards: &Shards,
        parts: &DeviceBuffer<bf16>,
    ) -> Result<(), String> {
        let m = shards.range(self.rank).len();
        assert!(grads.len() >= shards.total && parts.len() >= m * self.size);
        let sends: Vec<_> = (0..self.size)
            .map(|r| {
                let range = shards.range(r);
                (r, addr(grads, range.start), range.len() * BF16_BYTES)
            })
            .collect();
        let recvs: Vec<_> = (0..self.size)
            .map(|r| (r, addr(parts, r * m), m * BF16_BYTES))
            .collect();
        // The legacy default stream: the backend's stream is a blocking one, ordered with it
        // both ways (see `fence`).
        // SAFETY: every range lies inside its buffer (asserted above; shards partition total).
        unsafe {
            self.nccl
                .exchange_bytes(&sends, &recvs, std::ptr::null_mut())?
        };
        self.wait(g, "the NCCL gradient exchange")
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
        unsafe {
            self.nccl
                .exchange_bytes(&sends, &recvs, std::ptr::null_mut())?
        };
        self.wait(g, "the NCCL parameter all-gather")
    }
}

/// A CUDA backend's ZeRO-1 state: its shard of the parameter space, the staging buffer of the
/// exchanged gradient parts, and NCCL when the run uses it (else the host-staged path).
pub struct Zero1State {
    pub shards: Shards,
    pub rank: usize,
    parts: DeviceBuffer<bf16>,
    nccl: Option<NcclCollective>,
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

impl Zero1State {
    /// This rank's shard of `total` parameters over `dist`'s ranks, on `g`.
    pub fn new(
        g: &Gpu,
        dist: &dyn Transport,
        total: usize,
        kind: CollectiveKind,
    ) -> Result<Zero1State, String> {
        let shards = Shards::even(total, dist.size());
        let m = shards.range(dist.rank()).len();
        let parts = g
            .alloc::<bf16>((m * dist.size()).max(1))
            .map_err(|e| e.to_string())?;
        let nccl = match kind {
            CollectiveKind::Nccl => Some(NcclCollective::init(g, dist)?),
            CollectiveKind::HostStaged => None,
        };
        Ok(Zero1State {
            shards,
            rank: dist.rank(),
            parts,
            nccl,
        })
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
                reduce_scatter_sum(n, g, grads, shards, &self.parts)
            })?,
            None => reduce_scatter_sum(&HostStaged { dist }, g, grads, shards, &self.parts)?,
        }
        let mine = self.mine();
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
