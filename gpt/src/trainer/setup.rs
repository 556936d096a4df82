//! Turning the arguments into a run: model shape, precision plan, schedule, device, backend, data.

use super::TrainArgs;
use crate::backend::Backend;
use crate::config::ModelConfig;
use crate::cpu::backend::CpuBackend;
use crate::dist::{Shards, Transport};
use crate::memory::Device;
use crate::model::{Gpt, PrecisionPlan};
use crate::mx::fp8::{ForwardConfig, Fp8Scaling};
use crate::mx::{HadamardSigns, MxConfig};
use crate::precision::{BackwardMode, ForwardMode};
use crate::schedule::{LrSchedule, ScheduleKind};
use dataio::DataSplits;
use std::path::PathBuf;

/// Everything derived from the arguments before any work starts.
pub(super) struct Setup {
    pub(super) cfg: ModelConfig,
    pub(super) gpt: Gpt,
    /// Micro batches per optimizer step, over all ranks (the 1-rank accumulation).
    pub(super) accum: usize,
    /// Data-parallel ranks; each runs `accum / ranks` of the micro batches.
    pub(super) ranks: usize,
    pub(super) plan: PrecisionPlan,
    pub(super) mx: MxConfig,
    pub(super) forward: ForwardConfig,
    pub(super) schedule: LrSchedule,
}

pub(super) fn setup(args: &TrainArgs, ranks: usize) -> Result<Setup, String> {
    let mut cfg = ModelConfig::named(&args.model)?;
    if let Some(l) = args.layers {
        cfg.layers = l;
    }
    if let Some(d) = args.dim {
        cfg.channels = d;
    }
    if let Some(h) = args.heads {
        cfg.heads = h;
    }
    cfg.validate()?;
    let seq = args.seq.unwrap_or(cfg.max_seq);
    let gpt = Gpt::new(cfg, args.batch, seq)?;
    let bt = args.batch * seq;
    let total = args.total_batch_tokens.unwrap_or(bt);
    if total == 0 || total % bt != 0 {
        return Err(format!(
            "--total-batch-tokens {total} must be a positive multiple of the micro batch B*T = {} x {} = {bt}",
            args.batch, seq
        ));
    }
    if total % (bt * ranks) != 0 {
        return Err(format!(
            "--total-batch-tokens {total} must be a multiple of B*T x ranks = {} x {} x {ranks} = {}: each of the {ranks} ranks runs the same number of micro batches",
            args.batch,
            seq,
            bt * ranks
        ));
    }
    let mode: BackwardMode = args.backward.parse()?;
    args.mx_gemm.parse::<crate::cuda::MxGemmChoice>()?; // checked on every device
    let plan = match &args.bf16_blocks {
        Some(spec) => PrecisionPlan::with_bf16_blocks(mode, cfg.layers, spec)?,
        None => PrecisionPlan::uniform(mode, cfg.layers),
    };
    if let Some(g) = args.hadamard_block {
        if !mode.uses_rht() {
            return Err(format!(
                "--hadamard-block {g} has no effect with --backward {mode}: only the modes with a random Hadamard transform (mxfp4-rht, mxfp4) use it; drop the flag or pick one of those modes"
            ));
        }
    }
    if let Some(signs) = &args.hadamard_signs {
        if !mode.uses_rht() {
            return Err(format!(
                "--hadamard-signs {signs} has no effect with --backward {mode}: only the MXFP4 modes with a random Hadamard transform (mxfp4-rht, mxfp4) use it (the NVFP4 recipe always fixes its signs); drop the flag or pick one of those modes"
            ));
        }
    }
    let hadamard_block = args.hadamard_block.unwrap_or(64);
    let signs: HadamardSigns = match &args.hadamard_signs {
        Some(s) => s.parse()?,
        None => HadamardSigns::Fresh,
    };
    let mx = MxConfig {
        mode,
        hadamard_block,
        signs,
        seed: args.seed,
    };
    if mode.is_quantized() {
        mx.validate().map_err(|e| e.to_string())?;
        // Every quantized GEMM reduces over C, 3C or 4C (dgrad) or B*T (wgrad) in blocks of 32
        // (MXFP4; with RHT also g) or 16 (NVFP4, whose wgrad transform is 16-point too).
        let (block, what) = if mode.is_nvfp4() {
            (crate::mx::nvfp4::BLOCK, "NVFP4 block 16".to_string())
        } else if mode.uses_rht() {
            (
                hadamard_block.max(32),
                format!("MX block 32, Hadamard block {hadamard_block}"),
            )
        } else {
            (32, "MX block 32".to_string())
        };
        if cfg.channels % block != 0 {
            return Err(format!(
                "--backward {mode} needs the width ({}) to be a multiple of {block} ({what})",
                cfg.channels
            ));
        }
        if bt % block != 0 {
            return Err(format!("--backward {mode} needs B*T ({bt}) to be a multiple of {block}: the weight-gradient GEMMs reduce over tokens"));
        }
    } else if args.bf16_blocks.is_some() {
        log::warn!("--bf16-blocks has no effect with --backward bf16");
    }
    if args.steps == 0 {
        return Err("--steps must be at least 1".into());
    }
    if let Some(z) = args.skip_outliers {
        if !(z > 0.0 && z.is_finite()) {
            return Err(format!(
                "--skip-outliers {z} must be a positive z-score (e.g. 5)"
            ));
        }
    }
    if args.outlier_window < 2 {
        return Err(format!(
            "--outlier-window {} must be at least 2 steps",
            args.outlier_window
        ));
    }
    let warmup = match (args.warmup_steps, args.warmup_fraction) {
        (Some(_), Some(_)) => {
            return Err("give --warmup-steps or --warmup-fraction, not both".into())
        }
        (Some(w), None) => w,
        (None, f) => {
            let f = f.unwrap_or(0.05);
            if !(0.0..=1.0).contains(&f) {
                return Err(format!("--warmup-fraction {f} is outside [0, 1]"));
            }
            (args.steps as f64 * f as f64).round() as u64
        }
    };
    let lr = args
        .lr
        .unwrap_or_else(|| crate::config::default_lr(&args.model));
    if !(lr > 0.0 && lr.is_finite()) {
        return Err(format!("--lr {lr} must be a positive number"));
    }
    let schedule = LrSchedule {
        kind: args.schedule.parse::<ScheduleKind>()?,
        max_lr: lr,
        min_lr: args.min_lr.unwrap_or(lr / 10.0),
        warmup_steps: warmup,
        total_steps: args.steps,
        decay_fraction: args.wsd_decay_fraction,
    };
    // Every backward GEMM of a run has its own random stream (mx::GemmId::stream).
    if mode.is_quantized() && total / bt > crate::mx::GemmId::MAX_MICRO_STEPS {
        return Err(format!(
            "{} micro-steps of gradient accumulation: the quantized modes key their randomness with at most {} per step; raise --batch or lower --total-batch-tokens",
            total / bt,
            crate::mx::GemmId::MAX_MICRO_STEPS
        ));
    }
    if cfg.layers > crate::mx::GemmId::MAX_LAYERS {
        return Err(format!(
            "{} layers: at most {} (the MXFP4 stream ids hold 11 bits of layer)",
            cfg.layers,
            crate::mx::GemmId::MAX_LAYERS
        ));
    }
    Ok(Setup {
        cfg,
        gpt,
        accum: total / bt,
        ranks,
        plan,
        mx,
        forward: forward_config(args)?,
        schedule,
    })
}

/// `--forward`, `--fp8-scaling`, `--fp8-amax-history`: the FP8 options only with fp8, the
/// history only with delayed scaling.
pub(super) fn forward_config(args: &TrainArgs) -> Result<ForwardConfig, String> {
    let mode: ForwardMode = args.forward.parse()?;
    if mode != ForwardMode::Fp8 {
        if let Some(f) = [
            ("--fp8-scaling", args.fp8_scaling.is_some()),
            ("--fp8-amax-history", args.fp8_amax_history.is_some()),
        ]
        .iter()
        .find(|(_, given)| *given)
        {
            return Err(format!(
                "{} applies to --forward fp8, but this run's forward is {mode}: drop the flag or add --forward fp8",
                f.0
            ));
        }
    }
    let mut scaling: Fp8Scaling = args.fp8_scaling.as_deref().unwrap_or("current").parse()?;
    match (&mut scaling, args.fp8_amax_history) {
        (Fp8Scaling::Delayed { history }, Some(h)) => {
            if h == 0 {
                return Err("--fp8-amax-history 0: the history needs at least 1 call".into());
            }
            *history = h;
        }
        (Fp8Scaling::Current, Some(h)) => {
            return Err(format!(
                "--fp8-amax-history {h} applies to --fp8-scaling delayed; current scaling keeps no history"
            ))
        }
        _ => {}
    }
    Ok(ForwardConfig { mode, scaling })
}

/// Picks the device for `--device`: `cuda` must get a GPU; `auto` takes the GPU when this build
/// has the CUDA backend and a driver and device answer, else the CPU (saying why).
pub(super) fn pick_device(args: &TrainArgs) -> Result<Device, String> {
    match args.device.as_str() {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda),
        "auto" => Ok(match gpu_probe() {
            Ok(()) => Device::Cuda,
            Err(why) => {
                log::info!("device auto: using the CPU ({why})");
                Device::Cpu
            }
        }),
        other => Err(format!(
            "unknown --device '{other}': expected cpu, cuda or auto"
        )),
    }
}

/// The backend; with several ranks it keeps AdamW moments (on a GPU also the FP32 master
/// weights) for this rank's ZeRO-1 shard only.
pub(super) fn make_backend(
    device: Device,
    args: &TrainArgs,
    gpt: &Gpt,
    dist: &dyn Transport,
) -> Result<Box<dyn Backend>, String> {
    let shard =
        (dist.size() > 1).then(|| Shards::even(gpt.params.total, dist.size()).range(dist.rank()));
    match device {
        Device::Cpu => Ok(Box::new(
            CpuBackend::with_moments(&gpt.cfg, gpt.batch, gpt.seq, shard)
                .map_err(|e| e.to_string())?,
        )),
        Device::Cuda if shard.is_some() => Ok(Box::new(crate::cuda::dist::rank_backend(
            &gpt.cfg,
            gpt.batch,
            gpt.seq,
            dist,
            args.mx_gemm.parse()?,
        )?)),
        Device::Cuda => cuda_backend(args, gpt),
    }
}

pub(super) fn cuda_backend(args: &TrainArgs, gpt: &Gpt) -> Result<Box<dyn Backend>, String> {
    let mut be = crate::cuda::CudaBackend::new(0, &gpt.cfg, gpt.batch, gpt.seq)
        .map_err(|e| format!("--device cuda: {e}"))?;
    be.set_mx_gemm(args.mx_gemm.parse()?)
        .map_err(|e| e.to_string())?;
    Ok(Box::new(be))
}

/// Ranks on this machine, as the MPI launcher says (None: not launched by one).
pub(super) fn local_ranks() -> Option<usize> {
    ["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"]
        .iter()
        .find_map(|k| std::env::var(k).ok()?.parse().ok())
}

/// Whether GPU 0 can be opened (`auto`).
pub(super) fn gpu_probe() -> Result<(), String> {
    runtime::cuda::Gpu::new(0)
        .map(|_| ())
        .map_err(|e| format!("no usable GPU: {e}"))
}

/// Where `data/` and `.cache/` live: `MXGPT_ROOT` (set by the launchers) or the current directory.
pub fn project_root() -> PathBuf {
    std::env::var_os("MXGPT_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The splits and the dataset spec they came from.
pub(super) fn open_data(args: &TrainArgs) -> Result<(DataSplits, String), String> {
    let spec = match &args.data {
        Some(s) => s.clone(),
        None => {
            let prefix = dataio::prepare_shakespeare(&project_root()).map_err(|e| e.to_string())?;
            log::info!("data: the default Shakespeare corpus ({prefix})");
            prefix
        }
    };
    let splits = match &args.split {
        Some(ratio) => {
            let weights = dataio::prepare::parse_split(ratio).map_err(|e| e.to_string())?;
            dataio::open_splits_ratio(&spec, &weights).map_err(|e| e.to_string())
        }
        None => dataio::open_splits(&spec).map_err(|e| e.to_string()),
    }?;
    Ok((splits, spec))
}
