//! What a run prints and records: the JSON log, run settings, summaries of the MX telemetry.

use super::{setup::Setup, TrainArgs};
use crate::mx::fp8::{ForwardConfig, Fp8Scaling};
use crate::mx::MxTelemetry;
use crate::precision::ForwardMode;
use serde_json::Value;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

/// `--log-json`: each record is formatted into one line first and written with one `write`, so
/// a killed run cannot leave a torn line between two records.
pub(super) struct JsonLog(Option<Box<dyn Write>>);

impl JsonLog {
    /// A fresh run truncates the file; a run resumed at `resume_step` first drops the records
    /// past that step (the interrupted run's, which this run redoes) so the file reads as one run.
    pub(super) fn open(path: Option<&Path>, resume_step: Option<u64>) -> Result<Self, String> {
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

    pub(super) fn record(&mut self, v: &Value) -> Result<(), String> {
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
pub(super) fn drop_records_after(p: &Path, step: u64) -> Result<(), String> {
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

pub(super) fn describe_forward(f: &ForwardConfig) -> String {
    match (f.mode, f.scaling) {
        (ForwardMode::Bf16, _) => "bf16".into(),
        (ForwardMode::Fp8, Fp8Scaling::Current) => "fp8 (current scaling)".into(),
        (ForwardMode::Fp8, Fp8Scaling::Delayed { history }) => {
            format!("fp8 (delayed scaling, amax history {history})")
        }
    }
}

/// Every setting that changes what a run computes, as (flag, value) with defaults resolved, so
/// a resumed run can say exactly what differs from its checkpoint.
pub(super) fn run_settings(
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
pub(super) fn settings_diff(
    train: &Value,
    now: &[(&str, String)],
) -> Vec<(String, String, String)> {
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

pub(super) fn mx_summary(t: &MxTelemetry) -> String {
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

pub(super) fn mx_nonfinite_note(t: &MxTelemetry) -> String {
    match t.summary() {
        Some(s) if s.nonfinite_blocks > 0 => format!(
            " ({} MXFP4 blocks held NaN/Inf gradients)",
            s.nonfinite_blocks
        ),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
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
    pub(super) fn each_json_record_is_one_write() {
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
