//! The single training loop: data, model, backend, optimizer, schedule, evaluation, sampling,
//! logging and checkpoints. Every backend runs this same code.

use crate::backend::{Backend, BackendInfo, HostState, StepUpdate};
use crate::checkpoint::{self, Header};
use crate::config::ModelConfig;
use crate::cpu::backend::CpuBackend;
use crate::cpu::ops::AdamW;
use crate::dist::watchdog::Watched;
use crate::dist::zero1::{gather_params, reduce_gradients};
use crate::dist::{Local, Shards, Transport};
use crate::layout::{Arena, TensorRef};
use crate::memory::{self, Device, MemoryEstimate, RunPlan};
use crate::model::{Gpt, PrecisionPlan};
use crate::mx::fp8::{ForwardConfig, Fp8Scaling, Fp8State};
use crate::mx::{HadamardSigns, MxConfig, MxTelemetry};
use crate::outliers::OutlierDetector;
use crate::precision::{BackwardMode, ForwardMode};
use crate::rng::SplitMix64;
use crate::run_lock::RunLock;
use crate::schedule::{LrSchedule, ScheduleKind};
use argh::FromArgs;
use dataio::{BatchLoader, DataSplits, LoaderState, TokenDataset, Tokenizer};
use serde_json::{json, Value};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Train a GPT-2 style model with MXFP4 (or BF16) backward passes.
#[derive(FromArgs, Clone, Debug)]
pub struct TrainArgs {
    /// model: tiny, small, 124m, 345m, 760m, 1.3b, 6.7b (default tiny)
    #[argh(option, default = "String::from(\"tiny\")")]
    pub model: String,
    /// override the number of layers
    #[argh(option)]
    pub layers: Option<usize>,
    /// override the width C
    #[argh(option)]
    pub dim: Option<usize>,
    /// override the number of attention heads
    #[argh(option)]
    pub heads: Option<usize>,
    /// dataset: Megatron prefix, llm.c shard or glob of shards; PREFIX_train/PREFIX_val are
    /// used when they exist (default: the Shakespeare corpus, prepared on first use)
    #[argh(option)]
    pub data: Option<String>,
    /// split one dataset by document ratio into train,val[,test], like Megatron's
    /// --split 949,50,1 (default: PREFIX_train/PREFIX_val files when they exist)
    #[argh(option)]
    pub split: Option<String>,
    /// micro batch size B (default 4)
    #[argh(option, default = "4")]
    pub batch: usize,
    /// sequence length T (default: the model's maximum)
    #[argh(option)]
    pub seq: Option<usize>,
    /// tokens per optimizer step; a multiple of B*T, reached by gradient accumulation
    /// (default B*T)
    #[argh(option)]
    pub total_batch_tokens: Option<usize>,
    /// optimizer steps to train (default 200)
    #[argh(option, default = "200")]
    pub steps: u64,
    /// peak learning rate (default: by model, GPT-3's values: 6e-4 for 124m, 3e-4 for 345m,
    /// 2.5e-4 for 760m, 2e-4 for 1.3b, 1.2e-4 for 6.7b; 3e-3 for tiny, 1e-3 for small)
    #[argh(option)]
    pub lr: Option<f32>,
    /// final learning rate (default lr/10)
    #[argh(option)]
    pub min_lr: Option<f32>,
    /// warmup steps (default: --warmup-fraction of --steps)
    #[argh(option)]
    pub warmup_steps: Option<u64>,
    /// warmup as a fraction of --steps (default 0.05)
    #[argh(option)]
    pub warmup_fraction: Option<f32>,
    /// schedule after warmup: cosine, linear, constant, wsd (default cosine)
    #[argh(option, default = "String::from(\"cosine\")")]
    pub schedule: String,
    /// WSD: fraction of the steps spent decaying (default 0.2)
    #[argh(option, default = "0.2")]
    pub wsd_decay_fraction: f32,
    /// the AdamW beta1 (default 0.9)
    #[argh(option, default = "0.9")]
    pub beta1: f32,
    /// the AdamW beta2 (default 0.95)
    #[argh(option, default = "0.95")]
    pub beta2: f32,
    /// the AdamW epsilon (default 1e-8)
    #[argh(option, default = "1e-8")]
    pub eps: f32,
    /// weight decay on 2-D tensors (default 0.1)
    #[argh(option, default = "0.1")]
    pub weight_decay: f32,
    /// clip the global gradient norm to this (0 = off; default 1.0)
    #[argh(option, default = "1.0")]
    pub grad_clip: f32,
    /// seed for initialization, data order and MXFP4 randomness (default 1337)
    #[argh(option, default = "1337")]
    pub seed: u64,
    /// evaluate the validation loss every N steps (0 = off; default 50)
    #[argh(option, default = "50")]
    pub eval_every: u64,
    /// validation batches per evaluation (default 10)
    #[argh(option, default = "10")]
    pub eval_batches: usize,
    /// print a text sample every N steps (0 = off; default 0)
    #[argh(option, default = "0")]
    pub sample_every: u64,
    /// tokens per text sample (default 64)
    #[argh(option, default = "64")]
    pub sample_tokens: usize,
    /// cpu, cuda or auto (default auto: the GPU when this build has the CUDA backend and a GPU
    /// is present)
    #[argh(option, default = "String::from(\"auto\")")]
    pub device: String,
    /// backward GEMM precision: bf16, mxfp4-rtn, mxfp4-rht, mxfp4-sr, mxfp4 (= RHT + SR; the
    /// recipe), nvfp4 (NVIDIA's recipe), nvfp4-rtn (default bf16)
    #[argh(option, default = "String::from(\"bf16\")")]
    pub backward: String,
    /// forward GEMM precision of the blocks' linear layers: bf16 (the backend's high precision)
    /// or fp8 (E4M3 operands, one scale per tensor) (default bf16)
    #[argh(option, default = "String::from(\"bf16\")")]
    pub forward: String,
    /// FP8 tensor scaling: current (448 / amax of the tensor at each call) or delayed (from the
    /// largest amax of the last --fp8-amax-history training calls) (default current)
    #[argh(option)]
    pub fp8_scaling: Option<String>,
    /// calls in delayed scaling's amax history (default 16)
    #[argh(option)]
    pub fp8_amax_history: Option<usize>,
    /// the Hadamard block size g of the modes with a random Hadamard transform (mxfp4-rht,
    /// mxfp4): 16, 32, 64, 128, 256 (default 64; an error with any other mode)
    #[argh(option)]
    pub hadamard_block: Option<usize>,
    /// the random Hadamard transform's signs: fresh (new signs for every GEMM call, the MXFP4
    /// paper's recipe) or fixed (one sign vector for the whole run, drawn from the seed)
    /// (default fresh; an error with a mode that has no transform)
    #[argh(option)]
    pub hadamard_signs: Option<String>,
    /// keep blocks in BF16 backward: first:N,last:M
    #[argh(option)]
    pub bf16_blocks: Option<String>,
    /// the MX GEMM of the MXFP4 modes on the GPU: auto (the fastest exact path verified on
    /// hardware: bf16), bf16 (dequantized operands on the BF16 tensor cores), int8 (the exact
    /// integer path), tcgen05 (Blackwell FP4 tensor cores; compute capability 10.x) (default auto)
    #[argh(option, default = "String::from(\"auto\")")]
    pub mx_gemm: String,
    /// write JSON lines (train and eval records) to this file
    #[argh(option)]
    pub log_json: Option<PathBuf>,
    /// with a quantized --backward: every N steps, log per linear layer and backward GEMM the
    /// clip and underflow fractions and relative error since the last such record, and measure
    /// that step's quantization noise against the exact GEMM (two extra GEMMs per quantized
    /// GEMM on that step only); 0 turns it off (default 100)
    #[argh(option, default = "100")]
    pub mx_telemetry_every: u64,
    /// directory for checkpoints
    #[argh(option)]
    pub checkpoint_dir: Option<PathBuf>,
    /// write a checkpoint every N steps (0 = only at the end; default 0)
    #[argh(option, default = "0")]
    pub checkpoint_every: u64,
    /// how many checkpoints to keep in --checkpoint-dir (default 3)
    #[argh(option, default = "3")]
    pub keep_checkpoints: usize,
    /// resume from a checkpoint: auto (the newest valid one in --checkpoint-dir, or a fresh
    /// start if there is none) or a path; settings that differ from the checkpoint's are listed
    #[argh(option)]
    pub resume: Option<String>,
    /// skip the optimizer update of a step whose loss or gradient-norm z-score over the last
    /// --outlier-window steps exceeds Z, as llm.c does (default: off)
    #[argh(option)]
    pub skip_outliers: Option<f32>,
    /// steps in the window of the outlier z-scores (default 128)
    #[argh(option, default = "128")]
    pub outlier_window: usize,
    /// read the GPU's NVML counters (power, energy, clocks, ...) every N steps (0 = off;
    /// default 10)
    #[argh(option, default = "10")]
    pub counters_every: u64,
    /// CPU worker threads (default: all cores; also MXGPT_THREADS)
    #[argh(option)]
    pub threads: Option<usize>,
    /// with several ranks: end the job when a collective has waited this many seconds for the
    /// other ranks (one is stuck); must exceed rank 0's evaluation, sampling and model-file
    /// writes, which the others wait for; 0 = wait forever (default 1800)
    #[argh(option, default = "1800.0")]
    pub collective_timeout: f64,
}

/// What a run did, for callers (tests, benchmarks) and the end-of-run summary.
#[derive(Clone, Debug, Default)]
pub struct TrainSummary {
    /// (step, loss) of every step this process ran (step is 1-based: steps completed).
    pub losses: Vec<(u64, f32)>,
    pub val_losses: Vec<(u64, f32)>,
    pub last_checkpoint: Option<PathBuf>,
    pub tokens_per_s: f64,
    pub ms_per_step: f64,
    pub backend: Option<BackendInfo>,
}

/// Everything derived from the arguments before any work starts.
struct Setup {
    cfg: ModelConfig,
    gpt: Gpt,
    /// Micro batches per optimizer step, over all ranks (the 1-rank accumulation).
    accum: usize,
    /// Data-parallel ranks; each runs `accum / ranks` of the micro batches.
    ranks: usize,
    plan: PrecisionPlan,
    mx: MxConfig,
    forward: ForwardConfig,
    schedule: LrSchedule,
}

fn setup(args: &TrainArgs, ranks: usize) -> Result<Setup, String> {
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
fn forward_config(args: &TrainArgs) -> Result<ForwardConfig, String> {
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
fn pick_device(args: &TrainArgs) -> Result<Device, String> {
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

/// The backend; with several ranks it keeps AdamW moments for this rank's ZeRO-1 shard only.
fn make_backend(
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
        Device::Cuda if shard.is_some() && args.checkpoint_dir.is_some() => Err(format!(
            "{} ranks on --device cuda with --checkpoint-dir: checkpoints of a data-parallel GPU run are not implemented yet (each rank's optimizer shard lives on its GPU); drop --checkpoint-dir, or use --device cpu or one rank",
            dist.size()
        )),
        Device::Cuda if shard.is_some() => {
            // One GPU per rank: this machine's rank r drives GPU r.
            let gpu = ["OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID"]
                .iter()
                .find_map(|k| std::env::var(k).ok()?.parse().ok())
                .unwrap_or(0);
            let mut be = crate::cuda::CudaBackend::new(gpu, &gpt.cfg, gpt.batch, gpt.seq)
                .map_err(|e| format!("--device cuda (rank {}: GPU {gpu}): {e}", dist.rank()))?;
            be.set_mx_gemm(args.mx_gemm.parse()?)
                .map_err(|e| e.to_string())?;
            let kind = crate::cuda::dist::CollectiveKind::from_env()?;
            be.set_data_parallel(dist, kind)
                .map_err(|e| format!("--device cuda, {} ranks: {e}", dist.size()))?;
            Ok(Box::new(be))
        }
        Device::Cuda => cuda_backend(args, gpt),
    }
}

fn cuda_backend(args: &TrainArgs, gpt: &Gpt) -> Result<Box<dyn Backend>, String> {
    let mut be = crate::cuda::CudaBackend::new(0, &gpt.cfg, gpt.batch, gpt.seq)
        .map_err(|e| format!("--device cuda: {e}"))?;
    be.set_mx_gemm(args.mx_gemm.parse()?)
        .map_err(|e| e.to_string())?;
    Ok(Box::new(be))
}

/// Ranks on this machine, as the MPI launcher says (None: not launched by one).
fn local_ranks() -> Option<usize> {
    ["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"]
        .iter()
        .find_map(|k| std::env::var(k).ok()?.parse().ok())
}

/// Whether GPU 0 can be opened (`auto`).
fn gpu_probe() -> Result<(), String> {
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
fn open_data(args: &TrainArgs) -> Result<(DataSplits, String), String> {
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

/// `--log-json`: each record is formatted into one line first and written with one `write`, so
/// a killed run cannot leave a torn line between two records.
struct JsonLog(Option<Box<dyn Write>>);

impl JsonLog {
    /// A fresh run truncates the file; a run resumed at `resume_step` first drops the records
    /// past that step (the interrupted run's, which this run redoes) so the file reads as one run.
    fn open(path: Option<&Path>, resume_step: Option<u64>) -> Result<Self, String> {
        let Some(p) = path else {
            return Ok(JsonLog(None));
        };
        if let (Some(step), true) = (resume_step, p.exists()) {
            drop_records_after(p, step)?;
        }
        let f = OpenOptions::new()
            .create(true)
            .write(true)
            .append(resume_step.is_some())
            .truncate(resume_step.is_none())
            .open(p)
            .map_err(|e| format!("cannot open --log-json {}: {e}", p.display()))?;
        Ok(JsonLog(Some(Box::new(f))))
    }

    fn record(&mut self, v: &Value) -> Result<(), String> {
        if let Some(f) = &mut self.0 {
            let mut line = v.to_string();
            line.push('\n');
            f.write_all(line.as_bytes())
                .map_err(|e| format!("writing --log-json: {e}"))?;
        }
        Ok(())
    }
}

/// Rewrites the JSON log `p` without the records of steps after `step` and without torn lines:
/// the kept lines go to a temporary file, which is fsynced and renamed over `p`.
fn drop_records_after(p: &Path, step: u64) -> Result<(), String> {
    let bytes = fs::read(p).map_err(|e| format!("cannot read --log-json {}: {e}", p.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    let (mut kept, mut dropped) = (String::new(), 0usize);
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<Value>(line) {
            Ok(v) if v["step"].as_u64().is_none_or(|s| s <= step) => {
                kept.push_str(line);
                kept.push('\n');
            }
            _ => dropped += 1,
        }
    }
    if kept.len() == bytes.len() {
        return Ok(()); // nothing to drop, and the last line is complete
    }
    let tmp = p.with_file_name(format!(
        ".{}.tmp",
        p.file_name().map_or("log".into(), |n| n.to_string_lossy())
    ));
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(kept.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, p)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        format!("cannot rewrite --log-json {}: {e}", p.display())
    })?;
    log::info!(
        "log-json: dropped {dropped} records after step {step} from {} (the interrupted run's; this run redoes those steps)",
        p.display()
    );
    Ok(())
}

fn describe_forward(f: &ForwardConfig) -> String {
    match (f.mode, f.scaling) {
        (ForwardMode::Bf16, _) => "bf16".into(),
        (ForwardMode::Fp8, Fp8Scaling::Current) => "fp8 (current scaling)".into(),
        (ForwardMode::Fp8, Fp8Scaling::Delayed { history }) => {
            format!("fp8 (delayed scaling, amax history {history})")
        }
    }
}

fn fp8_state_to_json(st: &Fp8State) -> Value {
    json!({"history": st.history, "amax": st.amax, "calls": st.calls})
}

fn fp8_state_from_json(v: &Value) -> Option<Fp8State> {
    let f = |x: &Value| x.as_f64().map(|a| a as f32);
    Some(Fp8State {
        history: v["history"].as_u64()? as usize,
        amax: v["amax"].as_array()?.iter().map(f).collect::<Option<_>>()?,
        calls: v["calls"]
            .as_array()?
            .iter()
            .map(Value::as_u64)
            .collect::<Option<_>>()?,
    })
}

/// The trainer's part of a checkpoint. `seed`, `batch`, `seq`, `accum` and `backward` are
/// what the first checkpoints held (kept, so older builds read new checkpoints); `settings` is
/// every setting that shapes the numbers (see `run_settings`), `outliers` the z-score windows.
fn train_state_json(
    s: &Setup,
    loader: &LoaderState,
    settings: &[(&str, String)],
    outliers: &[&OutlierDetector; 2],
    fp8: Option<&Fp8State>,
) -> Value {
    let settings: serde_json::Map<String, Value> = settings
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    json!({
        "seed": s.mx.seed,
        "batch": s.gpt.batch,
        "seq": s.gpt.seq,
        "accum": s.accum,
        "backward": s.plan.mode.name(),
        "loader": loader_state_to_json(loader),
        "settings": settings,
        "outliers": {"loss": outliers[0].to_json(), "grad_norm": outliers[1].to_json()},
        "fp8": fp8.map(fp8_state_to_json),
    })
}

/// Every setting that changes what a run computes, as (flag, value) with defaults resolved, so
/// a resumed run can say exactly what differs from its checkpoint.
fn run_settings(
    args: &TrainArgs,
    s: &Setup,
    data: &str,
    device: &str,
) -> Vec<(&'static str, String)> {
    let sch = &s.schedule;
    let or_none = |o: &Option<String>| o.clone().unwrap_or_else(|| "none".into());
    vec![
        ("--model", s.cfg.to_string()),
        ("--device", device.to_string()),
        ("--backward", s.plan.mode.name().to_string()),
        ("--forward", s.forward.mode.name().to_string()),
        (
            "--fp8-scaling",
            match (s.forward.mode, s.forward.scaling) {
                (ForwardMode::Bf16, _) => "none".into(),
                (_, Fp8Scaling::Current) => "current".into(),
                (_, Fp8Scaling::Delayed { history }) => format!("delayed (history {history})"),
            },
        ),
        (
            "--hadamard-block",
            if s.plan.mode.uses_rht() {
                s.mx.hadamard_block.to_string()
            } else {
                "none".into()
            },
        ),
        (
            "--hadamard-signs",
            if s.plan.mode.uses_rht() {
                s.mx.signs.name().to_string()
            } else {
                "none".into()
            },
        ),
        ("--bf16-blocks", or_none(&args.bf16_blocks)),
        ("--mx-gemm", args.mx_gemm.clone()),
        ("--data", data.to_string()),
        ("--split", or_none(&args.split)),
        ("--batch", s.gpt.batch.to_string()),
        ("--seq", s.gpt.seq.to_string()),
        (
            "--total-batch-tokens",
            (s.gpt.batch * s.gpt.seq * s.accum).to_string(),
        ),
        ("--steps", args.steps.to_string()),
        ("--lr", sch.max_lr.to_string()),
        ("--min-lr", sch.min_lr.to_string()),
        ("--warmup-steps", sch.warmup_steps.to_string()),
        ("--schedule", args.schedule.clone()),
        ("--wsd-decay-fraction", args.wsd_decay_fraction.to_string()),
        ("--beta1", args.beta1.to_string()),
        ("--beta2", args.beta2.to_string()),
        ("--eps", args.eps.to_string()),
        ("--weight-decay", args.weight_decay.to_string()),
        ("--grad-clip", args.grad_clip.to_string()),
        ("--seed", args.seed.to_string()),
        (
            "--skip-outliers",
            args.skip_outliers.map_or("off".into(), |z| z.to_string()),
        ),
        ("--outlier-window", args.outlier_window.to_string()),
    ]
}

/// (flag, checkpoint value, this run's value) for every setting that differs; "unknown" where
/// the checkpoint predates the setting (checkpoints before `settings` held only a few fields).
fn settings_diff(train: &Value, now: &[(&str, String)]) -> Vec<(String, String, String)> {
    let saved = |flag: &str| -> Option<String> {
        if let Some(v) = train["settings"].get(flag) {
            return v.as_str().map(String::from);
        }
        let u = |k: &str| train[k].as_u64();
        match flag {
            "--seed" => u("seed").map(|v| v.to_string()),
            "--batch" => u("batch").map(|v| v.to_string()),
            "--seq" => u("seq").map(|v| v.to_string()),
            "--backward" => train["backward"].as_str().map(String::from),
            "--total-batch-tokens" => Some((u("batch")? * u("seq")? * u("accum")?).to_string()),
            _ => None,
        }
    };
    now.iter()
        .filter_map(|(flag, value)| {
            let then = saved(flag).unwrap_or_else(|| "unknown".into());
            (then != *value).then(|| (flag.to_string(), then, value.clone()))
        })
        .collect()
}

pub fn format_duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// Gives the backend the checkpoint's delayed-scaling history when both have one; a run that
/// switches to delayed scaling starts a fresh history (the settings diff already says so).
fn restore_fp8_state(be: &mut dyn Backend, saved: &Value, path: &Path) -> Result<(), String> {
    let now = be.fp8_state().map_err(|e| e.to_string())?;
    match (now, saved.is_null()) {
        (Some(_), false) => {
            let st = fp8_state_from_json(saved).ok_or_else(|| {
                format!(
                    "checkpoint {}: its FP8 scaling state is malformed",
                    path.display()
                )
            })?;
            if be.set_fp8_state(&st).is_err() {
                log::warn!("resume: the checkpoint's FP8 amax history (history {}) does not fit this run's; starting a fresh history", st.history);
            }
        }
        (Some(_), true) => {
            log::warn!(
                "resume: checkpoint {} has no FP8 amax history; delayed scaling starts a fresh one",
                path.display()
            )
        }
        (None, _) => {}
    }
    Ok(())
}

fn all_params(gpt: &Gpt) -> TensorRef {
    TensorRef {
        arena: Arena::Params,
        offset: 0,
        len: gpt.params.total,
    }
}

/// A loss above this many times that of uniform guessing (ln V) means the weights have
/// diverged, whatever the z-scores say (they need a full window of history).
const DIVERGED_LOSS_FACTOR: f32 = 2.0;
/// The z-score beyond which a checkpoint's loss is out of the normal range when
/// `--skip-outliers` does not set one.
const NORMAL_Z: f64 = 5.0;

/// Which checkpoints held healthy weights. A checkpoint's weights are judged by the loss of the
/// step after it (its own step's loss was computed before its update), so the newest one is
/// pending until the next step.
#[derive(Default)]
struct CheckpointHealth {
    pending: Option<PathBuf>,
    /// The newest checkpoint whose next loss was in the normal range, and that loss.
    good: Option<(PathBuf, f32)>,
    /// Checkpoints newer than `good` whose next loss was not, with that loss.
    diverged: Vec<(PathBuf, f32)>,
}

impl CheckpointHealth {
    fn judge(&mut self, loss: f32, normal: bool) {
        if let Some(p) = self.pending.take() {
            if normal {
                self.good = Some((p, loss));
                self.diverged.clear();
            } else {
                self.diverged.push((p, loss));
            }
        }
    }

    /// Where to resume after a non-finite step.
    fn advice(&self) -> String {
        let diverged = self
            .diverged
            .iter()
            .filter(|(p, _)| p.exists()) // pruned ones are not worth naming
            .map(|(p, l)| format!("{} (next loss {l:.4e})", p.display()))
            .collect::<Vec<_>>()
            .join(", ");
        let newer = if diverged.is_empty() {
            String::new()
        } else {
            format!("; these had already diverged: {diverged}")
        };
        match &self.good {
            Some((p, l)) => format!(
                "The last checkpoint whose weights gave a loss in the normal range is {} (loss {l:.4} on the step after it): resume from it with --resume {}{newer}.",
                p.display(),
                p.display()
            ),
            None if self.diverged.is_empty() => "No checkpoint was written by this run.".into(),
            None => format!("No checkpoint of this run gave a loss in the normal range{newer}."),
        }
    }
}

/// Takes `--checkpoint-dir` for this run before any work: it must be writable with room for a
/// checkpoint, and no other run may be using it (the returned lock is held for the whole run).
fn claim_checkpoint_dir(dir: &Path, gpt: &Gpt) -> Result<RunLock, String> {
    checkpoint::prepare_dir(dir, checkpoint::file_bytes(gpt.params.total))?;
    let lock = RunLock::acquire(dir)?;
    for p in checkpoint::remove_stale_temps(dir) {
        log::info!(
            "checkpoint: removed {}, left half-written by an interrupted run",
            p.display()
        );
    }
    Ok(lock)
}

/// Loads the checkpoint `--resume` names into the backend, streaming it from the file (no
/// whole copy on the CPU), and returns its path and header. `auto` takes the newest checkpoint
/// in `--checkpoint-dir` that every rank reads and verifies, skipping (and saying why) any that
/// fail. A checkpoint of another model or number of ranks is refused.
fn resume_from(
    args: &TrainArgs,
    s: &Setup,
    be: &mut dyn Backend,
    dist: &dyn Transport,
) -> Result<Option<(PathBuf, Header)>, String> {
    let (candidates, auto) = match args.resume.as_deref() {
        None => return Ok(None),
        Some("auto") => {
            let dir = args
                .checkpoint_dir
                .as_ref()
                .ok_or("--resume auto needs --checkpoint-dir")?;
            let found: Vec<PathBuf> = checkpoint::list(dir)?.into_iter().map(|c| c.1).collect();
            if found.is_empty() {
                log::info!(
                    "resume auto: no checkpoint in {} yet; starting fresh",
                    dir.display()
                );
                return Ok(None);
            }
            (found, true)
        }
        Some(p) => (vec![PathBuf::from(p)], false),
    };
    let mut skipped = Vec::new();
    for p in &candidates {
        let loaded = match checkpoint::peek(p) {
            Ok(h) => {
                refuse_incompatible(p, &h, s)?; // the same file, so the same answer on every rank
                load_state(p, &h, be, dist).map(|()| h)
            }
            Err(e) => Err(e),
        };
        // Every rank must continue from the same checkpoint: it counts only if all read theirs.
        let ok = dist.all_gather_f64(loaded.is_ok() as u8 as f64)?;
        let failed: Vec<usize> = (0..ok.len()).filter(|&r| ok[r] != 1.0).collect();
        let why = match loaded {
            Ok(h) if failed.is_empty() => {
                if !skipped.is_empty() {
                    log::warn!("resume auto: using {}, the newest valid checkpoint", p.display());
                }
                return Ok(Some((p.clone(), h)));
            }
            Ok(_) => format!(
                "checkpoint {}: rank(s) {failed:?} could not read their part (their messages say why)",
                p.display()
            ),
            Err(e) => e,
        };
        if !auto {
            return Err(why);
        }
        log::warn!("resume auto: skipping {why}");
        skipped.push(why);
    }
    Err(format!(
        "--resume auto: none of the {} checkpoints in {} is valid:\n  {}",
        skipped.len(),
        args.checkpoint_dir
            .as_deref()
            .unwrap_or(Path::new("."))
            .display(),
        skipped.join("\n  ")
    ))
}

fn refuse_incompatible(p: &Path, h: &Header, s: &Setup) -> Result<(), String> {
    if h.model != s.cfg {
        return Err(format!(
            "checkpoint {} was written for a different model ({}); this run is {}",
            p.display(),
            h.model,
            s.cfg
        ));
    }
    if h.ranks != s.ranks {
        return Err(format!(
            "checkpoint {} was written by {} rank(s), this run has {}: resume it on {} (re-sharding the optimizer state to another number of ranks is not supported)",
            p.display(),
            h.ranks,
            s.ranks,
            h.ranks
        ));
    }
    Ok(())
}

/// Streams checkpoint `p` into the backend: parameters (and, with one rank, the moments) from
/// the model file; with N ranks this rank's moments from its shard file. A backend without host
/// state (the GPU) gets whole host copies through `write_optimizer`.
fn load_state(
    p: &Path,
    h: &Header,
    be: &mut dyn Backend,
    dist: &dyn Transport,
) -> Result<(), String> {
    let Some(HostState {
        params,
        m,
        v,
        moments_at,
        ..
    }) = be.host_state()
    else {
        let ck = checkpoint::load(p)?;
        return be
            .write_optimizer(&ck.params, &ck.adam_m, &ck.adam_v)
            .map_err(|e| e.to_string());
    };
    let put = |dst: &mut [f32], at: usize, c: &[f32]| -> Result<(), String> {
        dst.get_mut(at..at + c.len())
            .ok_or("holds more values than this run's state")?
            .copy_from_slice(c);
        Ok(())
    };
    checkpoint::load_streaming(p, &mut |i, at, c| match i {
        0 => put(params, at, c),
        1 => put(m, at, c),
        _ => put(v, at, c),
    })?;
    if dist.size() > 1 {
        let dir = p.parent().unwrap_or(Path::new("."));
        let shard = (moments_at, m.len());
        checkpoint::load_shard(
            dir,
            h.step,
            (dist.rank(), dist.size()),
            shard,
            &mut |i, at, c| put(if i == 0 { m } else { v }, at, c),
        )?;
    }
    Ok(())
}

/// Writes the checkpoint of `h`, streaming from the backend (a backend without host state
/// hands over whole copies). With N ranks every rank writes its optimizer shard, all wait for
/// each other, then rank 0 writes the model file: the marker that makes the checkpoint count.
fn save_state(
    dir: &Path,
    h: &Header,
    be: &mut dyn Backend,
    dist: &dyn Transport,
) -> Result<PathBuf, String> {
    let Some(HostState {
        params,
        m,
        v,
        moments_at,
        ..
    }) = be.host_state()
    else {
        let (params, adam_m, adam_v) = be.read_optimizer().map_err(|e| e.to_string())?;
        let ck = checkpoint::Checkpoint {
            model: h.model,
            step: h.step,
            params,
            adam_m,
            adam_v,
            train: h.train.clone(),
        };
        return checkpoint::save(dir, &ck);
    };
    let (params, m, v) = (&*params, &*m, &*v);
    let copy = |c: &mut [f32], src: &[f32], at: usize| {
        c.copy_from_slice(&src[at..at + c.len()]);
        Ok(())
    };
    if dist.size() > 1 {
        let shard = (moments_at, m.len());
        checkpoint::save_shard(
            dir,
            h.step,
            (dist.rank(), dist.size()),
            shard,
            &mut |i, at, c| copy(c, if i == 0 { m } else { v }, at),
        )?;
        dist.barrier()?;
    }
    if dist.rank() == 0 {
        checkpoint::save_streaming(dir, h, &mut |i, at, c| copy(c, [params, m, v][i], at))
    } else {
        Ok(dir.join(checkpoint::file_name(h.step)))
    }
}

/// Continues the data order where the checkpoint left it. When the position cannot carry over
/// (another batch, sequence length, seed or dataset: it would name other windows), continues
/// at the same point of the same epoch in this run's order instead, and says so.
fn restore_loader(loader: &mut BatchLoader, saved: &Value, path: &Path) -> Result<(), String> {
    let saved = loader_state_from_json(saved)
        .ok_or_else(|| format!("checkpoint {}: no data-loader state", path.display()))?;
    if loader.restore(saved).is_ok() {
        return Ok(());
    }
    let now = loader.state();
    let frac = saved.next_window as f64 / saved.num_windows.max(1) as f64;
    let next =
        ((frac * now.num_windows as f64) as u64 / now.batch * now.batch).min(now.num_windows);
    loader
        .restore(LoaderState {
            epoch: saved.epoch,
            next_window: next,
            ..now
        })
        .map_err(|e| format!("checkpoint {}: {e}", path.display()))?;
    log::warn!(
        "data: the checkpoint's position (epoch {}, window {} of {}) does not carry over to this run's batch, sequence length, seed or data; continuing at the same point of epoch {}: window {next} of {}",
        saved.epoch,
        saved.next_window,
        saved.num_windows,
        saved.epoch,
        now.num_windows
    );
    Ok(())
}

/// Runs training as the arguments say, in this process alone. Errors are complete sentences.
pub fn train(args: &TrainArgs) -> Result<TrainSummary, String> {
    train_with(args, &Local)
}

/// Runs training as one rank of `dist`: each rank computes its share of the micro batches of
/// every step, the gradients are summed over the ranks, and each rank updates its ZeRO-1 shard
/// of the parameters (then all are gathered). Only rank 0 logs, evaluates and samples.
pub fn train_with(args: &TrainArgs, dist: &dyn Transport) -> Result<TrainSummary, String> {
    if let Some(t) = args.threads {
        if t == 0 {
            return Err("--threads must be at least 1".into());
        }
        std::env::set_var("MXGPT_THREADS", t.to_string());
    } else if let Some(local) = local_ranks().filter(|&n| n > 1) {
        // Ranks sharing a machine share its cores.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::set_var("MXGPT_THREADS", (cores / local).max(1).to_string());
    }
    let timeout = args.collective_timeout;
    if !(timeout >= 0.0 && timeout.is_finite()) {
        return Err(format!(
            "--collective-timeout {timeout}: expected a number of seconds >= 0 (0: wait forever)"
        ));
    }
    // A stuck rank would leave the others waiting in a collective forever: time them.
    let watched = (dist.size() > 1 && args.collective_timeout > 0.0)
        .then(|| Watched::exiting(dist, Duration::from_secs_f64(args.collective_timeout)));
    let dist: &dyn Transport = watched.as_ref().map_or(dist, |w| w as &dyn Transport);
    let s = setup(args, dist.size())?;
    let shards = Shards::even(s.gpt.params.total, s.ranks);
    let lead = dist.rank() == 0;
    let device = pick_device(args)?;
    // Problems that would otherwise surface hours later, found before any work: an unusable or
    // shared checkpoint directory, a run that does not fit in memory.
    let estimate = MemoryEstimate::new(&RunPlan {
        gpt: &s.gpt,
        device,
        threads: runtime::cpu::threads(),
        mode: s.plan.mode,
        resume: args.resume.is_some(),
        checkpoints: args.checkpoint_dir.is_some(),
        sampling: args.sample_every > 0 && lead,
        ranks: s.ranks,
    });
    let ranks_here = local_ranks().unwrap_or(1).min(s.ranks);
    memory::check_fits(&estimate, &s.cfg, &s.gpt, ranks_here)?;
    // Rank 0 claims the directory for the whole job; the others wait until it has.
    let _lock = match &args.checkpoint_dir {
        Some(dir) if lead => Some(claim_checkpoint_dir(dir, &s.gpt)?),
        _ => None,
    };
    dist.barrier()?;
    let mut be = make_backend(device, args, &s.gpt, dist)?;
    let (data, data_spec) = open_data(args)?;
    let (b, t) = (s.gpt.batch, s.gpt.seq);
    let mut loader =
        BatchLoader::new(&data.train, b, t, args.seed, true).map_err(|e| e.to_string())?;
    be.set_mx_config(s.mx).map_err(|e| e.to_string())?;
    be.set_forward_config(s.forward)
        .map_err(|e| e.to_string())?;
    let info = be.info();
    log::info!(
        "model: {} ({:.2}M parameters)",
        s.cfg,
        s.gpt.params.total as f64 / 1e6
    );
    log::info!(
        "batch: {b} x {t} tokens x {} accumulation{} = {} tokens/step; forward {}; backward {}{}; backend {} ({}, {} threads{})",
        s.accum,
        if s.ranks > 1 { format!(" ({} per rank x {} ranks)", s.accum / s.ranks, s.ranks) } else { String::new() },
        b * t * s.accum,
        describe_forward(&s.forward),
        s.plan.mode,
        if s.plan.mode.uses_rht() { format!(" (Hadamard block {}, {} signs)", s.mx.hadamard_block, s.mx.signs.name()) } else { String::new() },
        info.name,
        info.device,
        info.threads,
        if s.ranks > 1 { " per rank; ZeRO-1: each rank holds the AdamW moments of 1/N of the parameters" } else { "" }
    );
    log::info!(
        "data: {} training tokens{}",
        data.train.num_tokens(),
        match &data.val {
            Some(v) => format!(", {} validation tokens", v.num_tokens()),
            None => ", no validation split (evaluation off)".into(),
        }
    );
    log::info!(
        "memory: estimated peak {}{}",
        estimate.describe(),
        memory::available_bytes()
            .map(|(a, src)| format!("; {} available ({src})", memory::format_bytes(a)))
            .unwrap_or_default()
    );

    // Perf counters: NVML on a GPU backend; MFU wherever a peak is known (the device table, or
    // MXGPT_PEAK_TFLOPS, e.g. a CPU's measured GEMM ceiling).
    let counters = if args.counters_every == 0 {
        None
    } else if info.name == "cpu" {
        log::info!("counters: off (CPU backend: NVML counters describe a GPU)");
        None
    } else {
        match runtime::counters::Counters::open(0) {
            Ok(c) => Some(c),
            Err(e) => {
                log::info!("counters: {e}");
                None
            }
        }
    };
    let peak_tflops = runtime::counters::peak_tflops(&info.device)?;
    let flops_per_token = s.cfg.flops_per_token(t);
    let mut energy = runtime::counters::Summary::default();
    let mut tokens_since_sample = 0u64;

    // Fresh start or resume.
    let settings = run_settings(args, &s, &data_spec, &info.name);
    let mut loss_z = OutlierDetector::new(args.outlier_window);
    let mut norm_z = OutlierDetector::new(args.outlier_window);
    let mut health = CheckpointHealth::default();
    let mut start_step = 0u64;
    let resumed = resume_from(args, &s, be.as_mut(), dist)?;
    if let Some((path, ck)) = &resumed {
        let diff = settings_diff(&ck.train, &settings);
        if diff.is_empty() {
            log::info!(
                "resume: every training setting matches checkpoint {}",
                path.display()
            );
        } else {
            log::warn!(
                "resume: these settings differ from checkpoint {} (flag: checkpoint value -> this run's value):\n{}\nThe run continues with this run's values; the bit-exact resume guarantee holds only when nothing differs.",
                path.display(),
                diff.iter()
                    .map(|(f, then, now)| format!("  {f}: {then} -> {now}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        restore_loader(&mut loader, &ck.train["loader"], path)?;
        restore_fp8_state(be.as_mut(), &ck.train["fp8"], path)?;
        loss_z.restore(&ck.train["outliers"]["loss"]);
        norm_z.restore(&ck.train["outliers"]["grad_norm"]);
        start_step = ck.step;
        health.pending = Some(path.clone());
        log::info!("resumed from {} at step {start_step}", path.display());
        if start_step >= args.steps {
            log::info!(
                "the checkpoint is already at step {start_step} >= --steps {}; nothing to train",
                args.steps
            );
        }
    } else {
        be.write(all_params(&s.gpt), &s.gpt.init_params(args.seed))
            .map_err(|e| e.to_string())?;
    }
    // The checkpoint's arrays are in the backend now; free the host copies before training.
    let resumed_from = resumed.map(|(p, _)| p);

    let mut json_log = JsonLog::open(
        args.log_json.as_deref().filter(|_| lead),
        resumed_from.as_ref().map(|_| start_step),
    )?;
    let tokenizer = if args.sample_every > 0 && lead {
        Some(Tokenizer::gpt2().map_err(|e| e.to_string())?)
    } else {
        None
    };
    let tokens_per_step = (b * t * s.accum) as f64;
    let mut inputs = vec![0u32; b * t];
    let mut targets = vec![0u32; b * t];
    let mut summary = TrainSummary {
        last_checkpoint: resumed_from,
        backend: Some(info.clone()),
        ..Default::default()
    };
    let mut recent_ms: Vec<f64> = Vec::new();
    let mut total_ms = 0.0;
    let mut timed_steps = 0u64;
    let mut skipped_steps = 0u64;
    let diverged_loss = DIVERGED_LOSS_FACTOR * (s.cfg.vocab as f32).ln();
    let normal_z = args.skip_outliers.map_or(NORMAL_Z, |z| z as f64);
    let per_rank = s.accum / s.ranks;
    // A GPU backend keeps the step on the device (one rank, no outlier skipping, which needs
    // the norm before the update): the loss and the norm come back in one read after the step
    // is queued, and the update is skipped on the device when either is not finite.
    let on_device = be.has_device_step() && s.ranks == 1 && args.skip_outliers.is_none();

    for step in start_step..args.steps {
        if let Some(w) = &watched {
            w.set_step(step);
        }
        let t0 = Instant::now();
        let per_layer_mx = (s.plan.mode.is_quantized() || s.forward.is_fp8())
            && args.mx_telemetry_every > 0
            && (step + 1) % args.mx_telemetry_every == 0;
        be.set_mx_noise_measurement(per_layer_mx);
        be.zero_grads().map_err(|e| e.to_string())?;
        let mut loss_sum = 0.0f64;
        let loss_scale = 1.0 / (b * t * s.accum) as f32;
        // Rank r runs micro batches r*A/N .. (r+1)*A/N of the global batch and steps its loader
        // past the others', so the data order and the micro-step index that keys the MXFP4
        // randomness are those of a 1-rank run with A-fold accumulation, whatever N.
        for micro in 0..s.accum {
            if micro / per_rank != dist.rank() {
                loader.skip_batch();
                continue;
            }
            loader
                .next_batch(&mut inputs, &mut targets)
                .map_err(|e| e.to_string())?;
            be.set_tokens(&inputs, Some(&targets))
                .map_err(|e| e.to_string())?;
            if on_device {
                s.gpt
                    .forward_backward_on_device(
                        be.as_mut(),
                        &s.plan,
                        step as u32,
                        micro as u32,
                        loss_scale,
                    )
                    .map_err(|e| e.to_string())?;
                continue;
            }
            let l = s
                .gpt
                .forward_backward(be.as_mut(), &s.plan, step as u32, micro as u32, loss_scale)
                .map_err(|e| e.to_string())?;
            loss_sum += l as f64;
        }
        let lr = s.schedule.lr(step);
        let adamw = AdamW {
            lr,
            beta1: args.beta1,
            beta2: args.beta2,
            eps: args.eps,
            weight_decay: args.weight_decay,
            t: step + 1,
            grad_scale: 1.0,
        };
        let t_comm = Instant::now();
        let (loss, norm) = if on_device {
            be.device_step(&StepUpdate {
                adamw,
                grad_clip: args.grad_clip,
                micro_batches: s.accum,
            })
            .map_err(|e| e.to_string())?;
            let stats = be.take_step_stats().map_err(|e| e.to_string())?;
            let st = stats.last().ok_or("the device step recorded no loss")?;
            (st.loss, st.norm)
        } else if s.ranks == 1 {
            let norm = be.grad_norm().map_err(|e| e.to_string())?;
            ((loss_sum / s.accum as f64) as f32, norm)
        } else {
            let loss = (dist.sum_f64(loss_sum)? / s.accum as f64) as f32;
            (loss, reduce_gradients(be.as_mut(), dist, &shards)?)
        };
        let mut comm_ms = t_comm.elapsed().as_secs_f64() * 1e3;
        let telemetry = be.take_mx_telemetry();
        let (zl, zn) = (loss_z.z(loss as f64), norm_z.z(norm as f64));
        health.judge(
            loss,
            loss.is_finite() && loss <= diverged_loss && zl.is_none_or(|z| z <= normal_z),
        );
        if !loss.is_finite() || !norm.is_finite() {
            return Err(format!(
                "step {}: non-finite {} (loss {loss}, gradient norm {norm}){}; stopped before updating the weights. {}",
                step + 1,
                if loss.is_finite() { "gradient norm" } else { "loss" },
                mx_nonfinite_note(&telemetry),
                health.advice()
            ));
        }
        loss_z.push(loss as f64);
        norm_z.push(norm as f64);
        let skip = args.skip_outliers.and_then(|limit| {
            let over = |z: Option<f64>| z.filter(|&z| z > limit as f64);
            match (over(zl), over(zn)) {
                (Some(z), _) => Some(format!("loss z-score {z:.2} > {limit}")),
                (None, Some(z)) => Some(format!("gradient-norm z-score {z:.2} > {limit}")),
                _ => None,
            }
        });
        if skip.is_none() && !on_device {
            let grad_scale = if args.grad_clip > 0.0 && norm > args.grad_clip {
                args.grad_clip / norm
            } else {
                1.0
            };
            let hp = AdamW {
                grad_scale,
                ..adamw
            };
            be.adamw(&hp).map_err(|e| e.to_string())?;
            if s.ranks > 1 {
                let t_gather = Instant::now();
                gather_params(be.as_mut(), dist, &shards)?;
                comm_ms += t_gather.elapsed().as_secs_f64() * 1e3;
            }
        }
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        let done = step + 1;
        // The first step of a process pays for page faults and warm-up: keep it out of averages.
        if done > start_step + 1 || args.steps - start_step == 1 {
            total_ms += ms;
            timed_steps += 1;
        }
        recent_ms.push(ms);
        if recent_ms.len() > 20 {
            recent_ms.remove(0);
        }
        let avg_ms = recent_ms.iter().sum::<f64>() / recent_ms.len() as f64;
        let tokens_per_s = tokens_per_step / (ms / 1e3);
        let eta = format_duration(avg_ms / 1e3 * (args.steps - done) as f64);
        let mut mx_note = mx_summary(&telemetry);
        if s.ranks > 1 {
            mx_note = format!(
                " | {:.0} tok/s/rank | comm {comm_ms:.1} ms{mx_note}",
                tokens_per_s / s.ranks as f64
            );
        }
        let mfu = peak_tflops.map(|p| runtime::counters::mfu(flops_per_token, tokens_per_s, p));
        let mfu_note = mfu
            .map(|m| format!(" | MFU {:.1}%", m * 100.0))
            .unwrap_or_default();
        skipped_steps += skip.is_some() as u64;
        let skip_note = skip
            .as_ref()
            .map(|why| format!(" | skipped the update: {why}"))
            .unwrap_or_default();
        log::info!(
            "step {done:>5}/{} | loss {loss:.4} | lr {lr:.2e} | norm {norm:.4} | {ms:.1} ms | {tokens_per_s:.0} tok/s{mfu_note} | ETA {eta}{mx_note}{skip_note}",
            args.steps
        );
        let mut rec = json!({"type": "train", "step": done, "loss": loss, "lr": lr, "grad_norm": norm, "ms": ms, "tokens_per_s": tokens_per_s, "skipped": skip.is_some()});
        if let Some(z) = zl {
            rec["loss_z"] = json!(z);
        }
        if let Some(z) = zn {
            rec["grad_norm_z"] = json!(z);
        }
        if let Some(m) = mfu {
            rec["mfu"] = json!(m);
        }
        if s.ranks > 1 {
            rec["ranks"] = json!(s.ranks);
            rec["comm_ms"] = json!(comm_ms);
        }
        if s.plan.mode.is_quantized() {
            rec["mx"] = telemetry.summary_json();
        }
        tokens_since_sample += tokens_per_step as u64;
        if let Some(c) = &counters {
            if done % args.counters_every == 0 || done == args.steps {
                let sample = c.sample();
                energy.add(&sample, tokens_since_sample);
                tokens_since_sample = 0;
                log::info!("step {done:>5}/{} | gpu {}", args.steps, sample.short());
                rec["counters"] = serde_json::from_str(&sample.to_json()).unwrap_or(Value::Null);
            }
        }
        json_log.record(&rec)?;
        summary.losses.push((done, loss));
        if per_layer_mx {
            be.set_mx_noise_measurement(false);
            let sites = be.take_mx_site_telemetry();
            if !sites.is_empty() {
                log::info!(
                    "step {done:>5}/{} | mx per layer: {}",
                    args.steps,
                    crate::mx::telemetry::sites_note(&sites)
                );
                json_log.record(&json!({
                    "type": "mx_layers",
                    "step": done,
                    "steps": args.mx_telemetry_every.min(done - start_step),
                    "sites": sites.iter().map(|x| x.json()).collect::<Vec<_>>(),
                }))?;
            }
        }

        let last = done == args.steps;
        if let Some(val) = data.val.as_ref().filter(|_| lead) {
            if args.eval_every > 0 && (done % args.eval_every == 0 || last) {
                let vl = evaluate(&s.gpt, be.as_mut(), val, args)?;
                log::info!(
                    "step {done:>5}/{} | val loss {vl:.4} | val ppl {:.2}",
                    args.steps,
                    (vl as f64).exp()
                );
                json_log.record(&json!({"type": "eval", "step": done, "val_loss": vl}))?;
                summary.val_losses.push((done, vl));
            }
        }
        if let Some(tok) = &tokenizer {
            if done % args.sample_every == 0 || last {
                let text = sample(
                    &s.gpt,
                    be.as_mut(),
                    tok,
                    args.sample_tokens,
                    args.seed ^ done,
                )?;
                log::info!("sample at step {done}:\n{text}\n---");
            }
        }
        if let Some(dir) = &args.checkpoint_dir {
            if (args.checkpoint_every > 0 && done % args.checkpoint_every == 0) || last {
                let fp8 = be.fp8_state().map_err(|e| e.to_string())?;
                let header = Header {
                    model: s.cfg,
                    step: done,
                    num_params: s.gpt.params.total,
                    ranks: s.ranks,
                    train: train_state_json(
                        &s,
                        &loader.state(),
                        &settings,
                        &[&loss_z, &norm_z],
                        fp8.as_ref(),
                    ),
                };
                let p = save_state(dir, &header, be.as_mut(), dist)?;
                let good = health.good.as_ref().map(|(g, _)| g.as_path());
                if lead {
                    checkpoint::prune(dir, args.keep_checkpoints, good.as_slice())?;
                }
                log::info!("checkpoint: {}", p.display());
                health.pending = Some(p.clone());
                summary.last_checkpoint = Some(p);
            }
        }
    }
    if counters.is_some() {
        log::info!(
            "energy: mean power {} W, {} J, {} J/token",
            energy
                .mean_power_w()
                .map_or("?".into(), |w| format!("{w:.0}")),
            energy.energy_j().map_or("?".into(), |j| format!("{j:.0}")),
            energy
                .joules_per_token()
                .map_or("?".into(), |j| format!("{j:.4}"))
        );
    }
    if timed_steps > 0 {
        summary.ms_per_step = total_ms / timed_steps as f64;
        summary.tokens_per_s = tokens_per_step / (summary.ms_per_step / 1e3);
        log::info!(
            "done: {} steps{}, {:.1} ms/step, {:.0} tokens/s (first step excluded)",
            summary.losses.len(),
            if skipped_steps > 0 {
                format!(" ({skipped_steps} updates skipped as outliers)")
            } else {
                String::new()
            },
            summary.ms_per_step,
            summary.tokens_per_s
        );
    }
    if let Some(rss) = memory::peak_rss_bytes() {
        log::info!(
            "memory: peak RSS {} (estimated {})",
            memory::format_bytes(rss),
            memory::format_bytes(estimate.peak)
        );
    }
    Ok(summary)
}

/// Mean loss over the first `--eval-batches` batches of the validation split (always the same
/// batches, in order, so evaluations compare across steps and runs).
fn evaluate(
    gpt: &Gpt,
    be: &mut dyn Backend,
    val: &TokenDataset,
    args: &TrainArgs,
) -> Result<f32, String> {
    let mut loader = BatchLoader::new(val, gpt.batch, gpt.seq, 0, false)
        .map_err(|e| format!("validation split: {e}"))?;
    let n = gpt.tokens_per_batch();
    let (mut inputs, mut targets) = (vec![0u32; n], vec![0u32; n]);
    let mut sum = 0.0f64;
    for _ in 0..args.eval_batches.max(1) {
        loader
            .next_batch(&mut inputs, &mut targets)
            .map_err(|e| e.to_string())?;
        be.set_tokens(&inputs, Some(&targets))
            .map_err(|e| e.to_string())?;
        sum += gpt.eval_loss(be).map_err(|e| e.to_string())? as f64;
    }
    Ok((sum / args.eval_batches.max(1) as f64) as f32)
}

/// Generates `n` tokens after `<|endoftext|>` by ancestral sampling at temperature 1. Simple
/// rather than fast: each token re-runs the forward pass over the whole (B, T) window, like
/// llm.c's sampler (there is no KV cache).
fn sample(
    gpt: &Gpt,
    be: &mut dyn Backend,
    tok: &Tokenizer,
    n: usize,
    seed: u64,
) -> Result<String, String> {
    let t = gpt.seq;
    let vp = gpt.cfg.padded_vocab;
    let mut rng = SplitMix64::new(seed);
    let mut tokens = vec![dataio::EOT_TOKEN; gpt.tokens_per_batch()];
    let mut out = Vec::new();
    for pos in 1..=n.min(t - 1) {
        be.set_tokens(&tokens, None).map_err(|e| e.to_string())?;
        gpt.forward(be).map_err(|e| e.to_string())?;
        let row = TensorRef {
            arena: Arena::Acts,
            offset: gpt.acts.logits.offset + (pos - 1) * vp,
            len: gpt.cfg.vocab,
        };
        let logits = be.read(row).map_err(|e| e.to_string())?;
        let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let probs: Vec<f64> = logits.iter().map(|&l| ((l - m) as f64).exp()).collect();
        let mut u = rng.next_f64() * probs.iter().sum::<f64>();
        let mut next = probs.len() - 1;
        for (i, p) in probs.iter().enumerate() {
            if u < *p {
                next = i;
                break;
            }
            u -= p;
        }
        tokens[pos] = next as u32;
        out.push(next as u32);
    }
    Ok(tok.decode(&out))
}

fn mx_summary(t: &MxTelemetry) -> String {
    match t.summary() {
        Some(s) => format!(
            " | mx clip {:.2}%{} relerr {:.4}",
            s.clipped_fraction * 100.0,
            s.underflow_fraction
                .map(|u| format!(" underflow {:.2}%", u * 100.0))
                .unwrap_or_default(),
            s.relative_error
        ),
        None => String::new(),
    }
}

fn mx_nonfinite_note(t: &MxTelemetry) -> String {
    match t.summary() {
        Some(s) if s.nonfinite_blocks > 0 => format!(
            " ({} MXFP4 blocks held NaN/Inf gradients)",
            s.nonfinite_blocks
        ),
        _ => String::new(),
    }
}

fn loader_state_to_json(s: &LoaderState) -> Value {
    json!({"seed": s.seed, "epoch": s.epoch, "next_window": s.next_window, "batch": s.batch, "seq": s.seq,
           "num_windows": s.num_windows, "shuffle": s.shuffle})
}

fn loader_state_from_json(v: &Value) -> Option<LoaderState> {
    let g = |k: &str| v[k].as_u64();
    Some(LoaderState {
        seed: g("seed")?,
        epoch: g("epoch")?,
        next_window: g("next_window")?,
        batch: g("batch")?,
        seq: g("seq")?,
        num_windows: g("num_windows")?,
        shuffle: g("shuffle")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// Keeps every `write` call it receives.
    struct Calls(Rc<RefCell<Vec<Vec<u8>>>>);

    impl Write for Calls {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.borrow_mut().push(b.to_vec());
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn each_json_record_is_one_write() {
        let calls = Rc::new(RefCell::new(Vec::new()));
        let mut log = JsonLog(Some(Box::new(Calls(calls.clone()))));
        let rec =
            json!({"type": "train", "step": 7, "loss": 1.5, "mx": {"clipped_fraction": 0.01}});
        log.record(&rec).unwrap();
        log.record(&json!({"type": "eval", "step": 7, "val_loss": 2.0}))
            .unwrap();
        let calls = calls.borrow();
        assert_eq!(calls.len(), 2, "one write per record: {calls:?}");
        let line = calls[0].strip_suffix(b"\n").expect("a whole line");
        assert_eq!(serde_json::from_slice::<Value>(line).unwrap(), rec);
    }
}
