//! Host memory of a training run: what it holds at its peak, estimated before anything is
//! allocated, so a run that cannot fit stops at once with a clear message instead of being
//! killed by the kernel's OOM killer hours later (when it writes its first checkpoint).
//!
//! The peak is the steady state (backend arenas, loader, runtime) plus the largest of the
//! transient phases, which never overlap: initializing the weights (a host copy of the
//! parameters), loading or saving a checkpoint (on the CPU one I/O buffer: checkpoints stream
//! between the arenas and the file; on a GPU the three FP32 state arrays, which
//! `Backend::read_optimizer`/`write_optimizer` exchange as whole host copies), on the CPU the
//! quantized operands of the largest backward GEMM, and with N data-parallel ranks the
//! collectives' host buffers (the CPU's reduce-scatter; on GPUs the host-staged exchange's when
//! `MXGPT_DEVICE_COLLECTIVE=host`, none with NCCL, whose buffers are device memory, counted by
//! `cuda::backend::memory_estimate`). With N ranks the estimate is per rank (ZeRO-1: each holds
//! the AdamW moments of 1/N of the parameters, and on a GPU the master weights too). The
//! memory-mapped dataset is not counted: its pages are page cache the kernel can evict.

use crate::config::ModelConfig;
use crate::model::Gpt;
use crate::precision::BackwardMode;

const MIB: f64 = (1u64 << 20) as f64;
const GIB: f64 = (1u64 << 30) as f64;

/// Bytes of one checkpoint read or write buffer (checkpoint.rs streams through it).
pub const CHECKPOINT_IO_BUFFER: usize = 1 << 20;
/// The process before any model memory: binary, libraries, allocator, main thread, the GEMM's
/// packing buffer (KC x NC floats on the calling thread). Measured 4-8 MiB on Linux x86-64.
const RUNTIME_BYTES: f64 = 8.0 * MIB;
/// Each CPU worker thread: stack pages, its allocator arena, its GEMM panel and softmax row.
const PER_THREAD_BYTES: f64 = 0.5 * MIB;
/// The GPT-2 tokenizer (vocabulary and merges), loaded when the run prints samples.
const TOKENIZER_BYTES: f64 = 48.0 * MIB;
/// The CUDA driver, context and module images on the host side.
const CUDA_HOST_BYTES: f64 = 512.0 * MIB;
/// Allocator slack and everything too small to list.
const MARGIN: f64 = 0.05;

/// Which backend holds the model: on the CPU the arenas are host memory; on a GPU only the
/// transfers pass through the host (the CUDA backend checks device memory itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda,
}

/// What the run will do, as far as memory is concerned.
#[derive(Clone, Debug)]
pub struct RunPlan<'a> {
    pub gpt: &'a Gpt,
    pub device: Device,
    pub threads: usize,
    pub mode: BackwardMode,
    /// Resuming from a checkpoint (else the weights are initialized on the host).
    pub resume: bool,
    /// Writing checkpoints.
    pub checkpoints: bool,
    /// Printing text samples (loads the tokenizer).
    pub sampling: bool,
    /// Data-parallel ranks (1: one process).
    pub ranks: usize,
}

/// The host buffers of a data-parallel step's gradient collective (`p`: bytes of one FP32 copy
/// of the parameters): the CPU's reduce-scatter; on GPUs the host-staged exchange's, none with
/// NCCL (device memory).
fn collective_host_bytes(
    device: Device,
    ranks: usize,
    p: f64,
    host_staged: bool,
) -> Option<(&'static str, f64)> {
    match device {
        _ if ranks == 1 => None,
        // The summed gradient shard and the receive buffer of the reduce-scatter.
        Device::Cpu => Some(("gradient reduce-scatter", 2.0 * p / ranks as f64)),
        // cuda::dist::HostStaged's exchange: the gradients as FP32 (P x 4 B; their BF16
        // download, P x 2 B, is freed as they convert), the received parts (about P x 4 B) and
        // their BF16 upload (P x 2 B). Its all-gather holds less (P x 6 B).
        Device::Cuda if host_staged => Some(("host-staged gradient exchange", 2.5 * p)),
        Device::Cuda => None,
    }
}

/// An estimate, part by part, in bytes.
#[derive(Clone, Debug)]
pub struct MemoryEstimate {
    /// Always resident: (what, bytes).
    pub steady: Vec<(&'static str, f64)>,
    /// Transient phases, at most one at a time: (what, bytes).
    pub transient: Vec<(&'static str, f64)>,
    /// steady + the largest transient, plus the margin.
    pub peak: f64,
}

impl MemoryEstimate {
    pub fn new(run: &RunPlan) -> Self {
        let gpt = run.gpt;
        let p = gpt.params.total as f64 * 4.0; // one FP32 copy of the parameters
        let bt = (gpt.batch * gpt.seq) as f64;
        let mut steady = vec![(
            "runtime",
            RUNTIME_BYTES + PER_THREAD_BYTES * run.threads as f64,
        )];
        if run.device == Device::Cpu {
            let a = &gpt.acts;
            let moments = 2.0 * p / run.ranks as f64; // ZeRO-1: this rank's shard
            steady.push(("parameters, gradients and AdamW moments", 2.0 * p + moments));
            steady.push((
                "activations",
                4.0 * (a.acts_total + a.scratch_total + a.stats_total) as f64 + 8.0 * bt,
            ));
        } else {
            steady.push(("CUDA driver and context", CUDA_HOST_BYTES));
        }
        // Inputs and targets of a training and an evaluation batch, one window each.
        steady.push(("data loader", 16.0 * bt + 8.0 * (gpt.seq + 1) as f64));
        if run.sampling {
            steady.push(("tokenizer", TOKENIZER_BYTES));
        }
        let mut transient = Vec::new();
        // The CUDA backend converts the master weights to BF16 on the host when it loads them.
        let bf16_copy = if run.device == Device::Cuda {
            p / 2.0
        } else {
            0.0
        };
        // The CPU streams checkpoints; a GPU backend hands over whole host copies: the three
        // FP32 state arrays, or with N ranks its ZeRO-1 shard of them and of the BF16 weights
        // (4 arrays of P/N), plus, to save, every FP32 master weight on rank 0 (gathered for
        // its model file; zero1::save_device_checkpoint), the largest rank, which this counts.
        let shard = 4.0 * p / run.ranks as f64;
        let (load_copies, save_copies) = match (run.device, run.ranks) {
            (Device::Cpu, _) => (0.0, 0.0),
            (Device::Cuda, 1) => (3.0 * p, 3.0 * p),
            (Device::Cuda, _) => (shard, shard + p),
        };
        let io = CHECKPOINT_IO_BUFFER as f64 + 64.0 * 1024.0;
        if run.resume {
            transient.push(("checkpoint load", load_copies + bf16_copy + io));
        } else {
            transient.push(("weight initialization", p + bf16_copy));
        }
        if run.checkpoints {
            transient.push(("checkpoint save", save_copies + io));
        }
        let host_staged = matches!(
            crate::cuda::dist::CollectiveKind::from_env(),
            Ok(crate::cuda::dist::CollectiveKind::HostStaged)
        );
        transient.extend(collective_host_bytes(run.device, run.ranks, p, host_staged));
        if run.device == Device::Cpu && run.mode != BackwardMode::Bf16 {
            transient.push((
                "quantized backward operands",
                quantized_scratch(gpt, run.mode),
            ));
        }
        let total = steady.iter().map(|x| x.1).sum::<f64>()
            + transient.iter().map(|x| x.1).fold(0.0, f64::max);
        MemoryEstimate {
            steady,
            transient,
            peak: total * (1.0 + MARGIN),
        }
    }

    fn parts(&self) -> impl Iterator<Item = &(&'static str, f64)> {
        self.steady.iter().chain(&self.transient)
    }

    /// "1.23 GiB (parameters, ... 0.50 GiB; ...; at most one of: checkpoint save 0.37 GiB, ...)"
    pub fn describe(&self) -> String {
        let list = |v: &[(&str, f64)]| {
            v.iter()
                .map(|(w, b)| format!("{w} {}", format_bytes(*b)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "{} ({}; the largest of: {}; {:.0}% margin)",
            format_bytes(self.peak),
            list(&self.steady),
            list(&self.transient),
            MARGIN * 100.0
        )
    }
}

/// The CPU's quantized backward GEMM (mx::backward_gemm) holds, for its A (M x K) and B (N x K)
/// operands at once: the K-major f32 gathers, one code byte per element, the f32 panels of the
/// MX GEMM (padded to its register tile) and the block scales. Returns the largest over the
/// linear layers' dgrad and wgrad GEMMs (the LM head stays in high precision).
fn quantized_scratch(gpt: &Gpt, mode: BackwardMode) -> f64 {
    let c = gpt.cfg.channels;
    let rows = gpt.batch * gpt.seq;
    // (in features, out features) of QKV, attention projection, MLP up, MLP down.
    let linears = [(c, 3 * c), (c, c), (c, 4 * c), (4 * c, c)];
    let gemm = |m: usize, n: usize, k: usize| -> f64 {
        let (mp, np) = (m.div_ceil(8) * 8, n.div_ceil(16) * 16);
        let elems = ((m + n) * k) as f64;
        let panels = ((mp + np) * k) as f64 * 4.0;
        let scales = elems / 16.0 * 5.0; // a byte and a panel float per block of 32 (NVFP4: 16)
                                         // The NVFP4 GEMM also accumulates into a temporary M x N f32 result.
        let nv_tmp = if mode.name().starts_with("nvfp4") {
            (m * n) as f64 * 4.0
        } else {
            0.0
        };
        elems * 5.0 + panels + scales + nv_tmp
    };
    linears
        .iter()
        .flat_map(|&(ic, oc)| [gemm(rows, ic, oc), gemm(oc, ic, rows)])
        .fold(0.0, f64::max)
}

pub fn format_bytes(b: f64) -> String {
    if b >= GIB {
        format!("{:.2} GiB", b / GIB)
    } else {
        format!("{:.1} MiB", b / MIB)
    }
}

/// What this process may still allocate: MemAvailable, capped by a cgroup memory limit (a
/// container is OOM-killed at its limit however much the host has free). None where unknown.
pub fn available_bytes() -> Option<(f64, String)> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: f64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let mut avail = (kb * 1024.0, "MemAvailable".to_string());
    for (limit, usage) in [
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ] {
        let read =
            |p: &str| -> Option<f64> { std::fs::read_to_string(p).ok()?.trim().parse().ok() };
        // "max" (v2) does not parse; v1 says "no limit" with a number near 2^63.
        if let (Some(l), Some(u)) = (read(limit), read(usage)) {
            if l < (1u64 << 60) as f64 && l - u < avail.0 {
                avail = ((l - u).max(0.0), format!("the cgroup limit {limit}"));
            }
        }
    }
    Some(avail)
}

/// The peak resident set of this process so far (getrusage's ru_maxrss).
pub fn peak_rss_bytes() -> Option<f64> {
    // SAFETY: getrusage fills the struct we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return None;
    }
    Some(u.ru_maxrss as f64 * 1024.0) // kilobytes on Linux
}

/// Refuses a run whose estimate, times the `ranks_here` data-parallel ranks sharing this
/// machine, exceeds the available memory, saying what to lower.
pub fn check_fits(
    est: &MemoryEstimate,
    cfg: &ModelConfig,
    gpt: &Gpt,
    ranks_here: usize,
) -> Result<(), String> {
    let Some((avail, source)) = available_bytes() else {
        return Ok(());
    };
    if est.peak * ranks_here as f64 <= avail {
        return Ok(());
    }
    // Advise what actually dominates: the per-token memory or the model's own state.
    let part = |what: &str| est.parts().find(|p| p.0 == what).map_or(0.0, |p| p.1);
    let per_token = part("activations") + part("quantized backward operands");
    let advice = if per_token > part("parameters, gradients and AdamW moments") {
        "lower --batch or --seq (--total-batch-tokens keeps the tokens per step through gradient accumulation), or pick a smaller --model".to_string()
    } else {
        format!("pick a smaller --model (the weights and optimizer state dominate; lowering --batch or --seq would save at most {})", format_bytes(per_token))
    };
    let per_rank = if ranks_here > 1 {
        format!(" per rank, x {ranks_here} ranks on this machine")
    } else {
        String::new()
    };
    Err(format!(
        "out of memory: {cfg} at batch {} x seq {} needs an estimated {}{per_rank}, but only {} are available ({source}): {advice}",
        gpt.batch,
        gpt.seq,
        est.describe(),
        format_bytes(avail),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(gpt: &Gpt) -> RunPlan<'_> {
        RunPlan {
            gpt,
            device: Device::Cpu,
            threads: 2,
            mode: BackwardMode::Bf16,
            resume: false,
            checkpoints: false,
            sampling: false,
            ranks: 1,
        }
    }

    #[test]
    fn the_peak_counts_every_phase() {
        let cfg = ModelConfig::named("124m").unwrap();
        let gpt = Gpt::new(cfg, 1, 64).unwrap();
        let p = gpt.params.total as f64 * 4.0;
        let fresh = MemoryEstimate::new(&plan(&gpt));
        // The arenas alone (what the old estimate counted) plus the initial weights.
        assert!(fresh.peak > 5.0 * p, "{}", fresh.describe());
        let ck = MemoryEstimate::new(&RunPlan {
            checkpoints: true,
            ..plan(&gpt)
        });
        let resumed = MemoryEstimate::new(&RunPlan {
            resume: true,
            checkpoints: true,
            ..plan(&gpt)
        });
        // On the CPU checkpoints stream through one buffer: no whole extra copy.
        assert!(
            (ck.peak - fresh.peak).abs() < 2.0 * MIB,
            "{} vs {}",
            ck.describe(),
            fresh.describe()
        );
        // Resumed: no initial copy of the weights, and the checkpoint streams too.
        assert!(resumed.peak < ck.peak - 0.9 * p, "{}", resumed.describe());
        // A GPU backend still exchanges whole host copies of the three state arrays.
        let gpu = |checkpoints| {
            MemoryEstimate::new(&RunPlan {
                device: Device::Cuda,
                checkpoints,
                ..plan(&gpt)
            })
            .peak
        };
        // (three copies against the initialization's FP32 and BF16 copies of the weights)
        assert!((gpu(true) - gpu(false) - 1.5 * p * (1.0 + MARGIN)).abs() < 2.0 * MIB);
        // 4 GPU ranks: host copies of the rank's shard of master, m, v and BF16 weights (P/4
        // each), and every master weight gathered for the model file: 2P against the 1.5P of
        // the initialization.
        let gpu4 = |checkpoints| {
            MemoryEstimate::new(&RunPlan {
                device: Device::Cuda,
                checkpoints,
                ranks: 4,
                ..plan(&gpt)
            })
            .peak
        };
        assert!((gpu4(true) - gpu4(false) - 0.5 * p * (1.0 + MARGIN)).abs() < 2.0 * MIB);
        // ZeRO-1 on 2 ranks: half the moments per rank, plus the reduce-scatter's buffers.
        let two = MemoryEstimate::new(&RunPlan {
            ranks: 2,
            ..plan(&gpt)
        });
        assert!(two.describe().contains("gradient reduce-scatter"));
        // GPU ranks: host buffers only when the exchange is staged through the host.
        assert_eq!(collective_host_bytes(Device::Cuda, 2, p, false), None);
        assert_eq!(
            collective_host_bytes(Device::Cuda, 2, p, true),
            Some(("host-staged gradient exchange", 2.5 * p))
        );
        assert_eq!(collective_host_bytes(Device::Cuda, 1, p, true), None);
        assert!(two.peak < fresh.peak - 0.9 * p, "{}", two.describe());
        let mx = MemoryEstimate::new(&RunPlan {
            mode: BackwardMode::Mxfp4,
            ..plan(&Gpt::new(cfg, 16, 1024).unwrap())
        });
        assert!(mx.describe().contains("quantized backward operands"));
    }
}
