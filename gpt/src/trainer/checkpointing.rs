//! Checkpoints: the run directory's lock, saving, resuming, and judging whether a checkpoint is healthy.

use super::{setup::Setup, TrainArgs};
use crate::backend::{Backend, HostState};
use crate::checkpoint::{self, Header};
use crate::dist::{zero1, Transport};
use crate::model::Gpt;
use crate::mx::fp8::Fp8State;
use crate::outliers::OutlierDetector;
use crate::run_lock::RunLock;
use dataio::{BatchLoader, LoaderState};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

pub(super) fn fp8_state_to_json(st: &Fp8State) -> Value {
    json!({"history": st.history, "amax": st.amax, "calls": st.calls})
}

pub(super) fn fp8_state_from_json(v: &Value) -> Option<Fp8State> {
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
pub(super) fn train_state_json(
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

/// Gives the backend the checkpoint's delayed-scaling history when both have one; a run that
/// switches to delayed scaling starts a fresh history (the settings diff already says so).
pub(super) fn restore_fp8_state(
    be: &mut dyn Backend,
    saved: &Value,
    path: &Path,
) -> Result<(), String> {
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

/// Which checkpoints held healthy weights. A checkpoint's weights are judged by the loss of the
/// step after it (its own step's loss was computed before its update), so the newest one is
/// pending until the next step.
#[derive(Default)]
pub(super) struct CheckpointHealth {
    pub(super) pending: Option<PathBuf>,
    /// The newest checkpoint whose next loss was in the normal range, and that loss.
    pub(super) good: Option<(PathBuf, f32)>,
    /// Checkpoints newer than `good` whose next loss was not, with that loss.
    pub(super) diverged: Vec<(PathBuf, f32)>,
}

impl CheckpointHealth {
    pub(super) fn judge(&mut self, loss: f32, normal: bool) {
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
    pub(super) fn advice(&self) -> String {
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
pub(super) fn claim_checkpoint_dir(dir: &Path, gpt: &Gpt) -> Result<RunLock, String> {
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
pub(super) fn resume_from(
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
        // Every rank must continue from the same checkpoint: it counts only if all read theirs
        // (and every rank learns why one could not).
        let what = format!("checkpoint {}", p.display());
        let why = match zero1::agree(dist, loaded, &what, "read their part") {
            Ok(h) => {
                if !skipped.is_empty() {
                    log::warn!(
                        "resume auto: using {}, the newest valid checkpoint",
                        p.display()
                    );
                }
                return Ok(Some((p.clone(), h)));
            }
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

pub(super) fn refuse_incompatible(p: &Path, h: &Header, s: &Setup) -> Result<(), String> {
    if h.model != s.cfg {
        return Err(format!(
            "checkpoint {} was written for a different model ({}); this run is {}",
            p.display(),
            h.model,
            s.cfg
        ));
    }
    if h.ranks != s.ranks {
        return Err(checkpoint::ranks_mismatch(p, h.ranks, s.ranks));
    }
    Ok(())
}

/// Streams checkpoint `p` into the backend: parameters (and, with one rank, the moments) from
/// the model file; with N ranks this rank's moments from its shard file. A backend without host
/// state (the GPU) gets whole host copies through `write_optimizer`, or with N ranks its shard
/// through `DeviceZero1::write_shard`.
pub(super) fn load_state(
    p: &Path,
    h: &Header,
    be: &mut dyn Backend,
    dist: &dyn Transport,
) -> Result<(), String> {
    if be.host_state().is_none() && dist.size() > 1 {
        return zero1::load_device_checkpoint(p, h, be, dist);
    }
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
            // Array 2 (a GPU run's BF16 parameters) does not concern the FP32 CPU backend.
            &mut |i, at, c| match i {
                0 => put(m, at, c),
                1 => put(v, at, c),
                _ => Ok(()),
            },
        )
        .map_err(|e| zero1::other_split(e, &(moments_at..moments_at + m.len())))?;
    }
    Ok(())
}

/// Writes the checkpoint of `h`, streaming from the backend (a backend without host state
/// hands over whole copies). With N ranks every rank writes its optimizer shard, all wait for
/// each other, then rank 0 writes the model file: the marker that makes the checkpoint count.
pub(super) fn save_state(
    dir: &Path,
    h: &Header,
    be: &mut dyn Backend,
    dist: &dyn Transport,
) -> Result<PathBuf, String> {
    if be.host_state().is_none() && dist.size() > 1 {
        return zero1::save_device_checkpoint(dir, h, be, dist);
    }
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
    // With N ranks every step below that can fail on one rank is agreed on (`zero1::agree`):
    // all ranks return the error, naming that rank, and none waits in a collective.
    let what = format!("checkpoint of step {} in {}", h.step, dir.display());
    if dist.size() > 1 {
        let shard = (moments_at, m.len());
        let saved = checkpoint::save_shard(
            dir,
            h.step,
            (dist.rank(), dist.size()),
            shard,
            2,
            &mut |i, at, c| copy(c, if i == 0 { m } else { v }, at),
        );
        zero1::agree(dist, saved, &what, "write their shard")?;
    }
    let written = if dist.rank() == 0 {
        checkpoint::save_streaming(dir, h, &mut |i, at, c| copy(c, [params, m, v][i], at))
    } else {
        Ok(dir.join(checkpoint::file_name(h.step)))
    };
    zero1::agree(dist, written, &what, "write the model file")
}

/// Continues the data order where the checkpoint left it. When the position cannot carry over
/// (another batch, sequence length, seed or dataset: it would name other windows), continues
/// at the same point of the same epoch in this run's order instead, and says so.
pub(super) fn restore_loader(
    loader: &mut BatchLoader,
    saved: &Value,
    path: &Path,
) -> Result<(), String> {
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

pub(super) fn loader_state_to_json(s: &LoaderState) -> Value {
    json!({"seed": s.seed, "epoch": s.epoch, "next_window": s.next_window, "batch": s.batch, "seq": s.seq,
           "num_windows": s.num_windows, "shuffle": s.shuffle})
}

pub(super) fn loader_state_from_json(v: &Value) -> Option<LoaderState> {
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
