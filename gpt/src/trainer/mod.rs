//! The single training loop: data, model, backend, optimizer, schedule, evaluation, sampling,
//! logging and checkpoints. Every backend runs this same code.

mod args;
mod checkpointing;
mod logging;
mod setup;

pub use args::TrainArgs;
use checkpointing::*;
pub use logging::format_duration;
use logging::*;
pub use setup::project_root;
use setup::*;

use crate::backend::{Backend, BackendInfo, StepUpdate};
use crate::checkpoint::{self, Header};
use crate::cpu::ops::AdamW;
use crate::dist::watchdog::Watched;
use crate::dist::zero1::{gather_params, reduce_gradients};
use crate::dist::{Local, Shards, Transport};
use crate::layout::{Arena, TensorRef};
use crate::memory::{self, MemoryEstimate, RunPlan};
use crate::model::Gpt;
use crate::outliers::OutlierDetector;
use crate::rng::SplitMix64;
use dataio::{BatchLoader, TokenDataset, Tokenizer};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

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
    /// Device steps whose loss and norm were read after the next step had been queued.
    pub steps_read_late: u64,
}

fn all_params(gpt: &Gpt) -> TensorRef {
    TensorRef {
        arena: Arena::Params,
        offset: 0,
        len: gpt.params.total,
    }
}

/// A step whose work is queued and whose numbers the host has not looked at yet (the
/// deferred read of the device step).
struct Queued {
    step: u64,
    lr: f32,
    adamw: AdamW,
    t0: Instant,
    /// Time spent queueing the step's end (its collectives, with several ranks).
    comm_ms: f64,
    per_layer_mx: bool,
    /// (loss, norm) where the host computed them; None: the device step has them.
    host_stats: Option<(f32, f32)>,
}

/// A loss above this many times that of uniform guessing (ln V) means the weights have
/// diverged, whatever the z-scores say (they need a full window of history).
const DIVERGED_LOSS_FACTOR: f32 = 2.0;
/// The z-score beyond which a checkpoint's loss is out of the normal range when
/// `--skip-outliers` does not set one.
const NORMAL_Z: f64 = 5.0;

/// `TrainArgs` from command-line words (without the program name), as `train_gpt` parses
/// them; the error is argh's message.
pub fn parse_args(words: &[&str]) -> Result<TrainArgs, String> {
    use argh::FromArgs;
    TrainArgs::from_args(&["train_gpt"], words).map_err(|e| e.output)
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
        match (s.ranks > 1, device) {
            (false, _) => "",
            (true, memory::Device::Cpu) => " per rank; ZeRO-1: each rank holds the AdamW moments of 1/N of the parameters",
            (true, memory::Device::Cuda) => " per rank; ZeRO-1: each rank holds the FP32 master weights and AdamW moments of 1/N of the parameters",
        }
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
    // the norm before the update): the update is skipped on the device when the loss or the
    // norm is not finite (and so is every later one: a sticky halt flag), and the host reads a
    // step's loss and norm only after it has queued the next step, so that the device never
    // waits for the host at a step boundary. Steps after which the host needs the state as the
    // step left it (evaluation, sampling, a checkpoint, per-layer telemetry, the last step) are
    // read before anything more is queued. The logged numbers are the same either way.
    let on_device = be.has_device_step() && s.ranks == 1 && args.skip_outliers.is_none();
    let lead_val = data.val.as_ref().filter(|_| lead);
    let needs_drain = |done: u64, per_layer_mx: bool| {
        done == args.steps
            || per_layer_mx
            || (lead_val.is_some() && args.eval_every > 0 && done.is_multiple_of(args.eval_every))
            || (tokenizer.is_some() && done.is_multiple_of(args.sample_every))
            || (args.checkpoint_dir.is_some()
                && args.checkpoint_every > 0
                && done.is_multiple_of(args.checkpoint_every))
    };
    // The device step queued and not yet read; when the last step's numbers came back.
    let mut deferred: Option<Queued> = None;
    let mut last_read: Option<Instant> = None;

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
        let host_stats = if on_device {
            be.device_step(&StepUpdate {
                adamw,
                grad_clip: args.grad_clip,
                micro_batches: s.accum,
            })
            .map_err(|e| e.to_string())?;
            None
        } else if s.ranks == 1 {
            let norm = be.grad_norm().map_err(|e| e.to_string())?;
            Some(((loss_sum / s.accum as f64) as f32, norm))
        } else {
            let loss = (dist.sum_f64(loss_sum)? / s.accum as f64) as f32;
            Some((loss, reduce_gradients(be.as_mut(), dist, &shards)?))
        };
        let queued = Queued {
            step,
            lr,
            adamw,
            t0,
            comm_ms: t_comm.elapsed().as_secs_f64() * 1e3,
            per_layer_mx,
            host_stats,
        };
        // Step N - 1 is read now that step N is queued; step N at once when the host needs
        // the state it leaves, else after step N + 1 is queued.
        let mut ready = Vec::with_capacity(2);
        ready.extend(deferred.take());
        if on_device && !needs_drain(step + 1, per_layer_mx) {
            deferred = Some(queued);
        } else {
            ready.push(queued);
        }
        let queued_last = step;
        for q in ready {
            let Queued {
                step,
                lr,
                adamw,
                t0,
                comm_ms: queue_ms,
                per_layer_mx,
                host_stats,
            } = q;
            let ((loss, norm), telemetry) = match host_stats {
                Some(ln) => (ln, be.take_mx_telemetry()),
                None => {
                    summary.steps_read_late += (step < queued_last) as u64;
                    let stats = be
                        .take_step_stats_through(step + 1)
                        .map_err(|e| e.to_string())?;
                    let st = stats
                        .into_iter()
                        .find(|st| st.t == step + 1)
                        .ok_or_else(|| {
                            format!("step {}: the device step recorded no loss", step + 1)
                        })?;
                    ((st.loss, st.norm), st.mx.unwrap_or_default())
                }
            };
            let mut comm_ms = queue_ms;
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
            // A step read after the next was queued ran from the previous read (the device was
            // busy with it until then), not from when it was queued.
            let started = last_read.map_or(t0, |r| r.max(t0));
            let ms = started.elapsed().as_secs_f64() * 1e3;
            last_read = Some(Instant::now());
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
                    rec["counters"] =
                        serde_json::from_str(&sample.to_json()).unwrap_or(Value::Null);
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
