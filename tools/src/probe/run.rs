//! `tools/mx probe` end to end: checkpoints and batches in, `probe.json` and `probe.svg` out.

use super::{probe, Batch, ProbeConfig};
use gpt::model::Gpt;
use gpt::precision::BackwardMode;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// What the command line asks for (see `tools/mx probe --help`).
pub struct ProbeRun {
    pub checkpoints: Vec<PathBuf>,
    pub data: Option<String>,
    pub batch: usize,
    pub seq: usize,
    pub draws: usize,
    pub batches: usize,
    pub modes: Vec<BackwardMode>,
    pub hadamard_block: usize,
    pub seed: u64,
    pub out: PathBuf,
    pub root: PathBuf,
    pub command: String,
}

/// `--modes all` (every quantized mode) or a comma list; bf16 is the reference, never drawn.
pub fn parse_modes(s: &str) -> Result<Vec<BackwardMode>, String> {
    let modes: Vec<BackwardMode> = if s == "all" {
        BackwardMode::ALL.to_vec()
    } else {
        s.split(',')
            .map(|m| m.trim().parse())
            .collect::<Result<_, _>>()?
    };
    Ok(modes.into_iter().filter(|m| m.is_quantized()).collect())
}

fn batches(spec: &str, gpt: &Gpt, count: usize, seed: u64) -> Result<Vec<Batch>, String> {
    let data = dataio::TokenDataset::open(spec).map_err(|e| e.to_string())?;
    let mut loader = dataio::BatchLoader::new(&data, gpt.batch, gpt.seq, seed, true)
        .map_err(|e| e.to_string())?;
    (0..count)
        .map(|_| {
            let n = gpt.tokens_per_batch();
            let (mut inputs, mut targets) = (vec![0; n], vec![0; n]);
            loader
                .next_batch(&mut inputs, &mut targets)
                .map_err(|e| e.to_string())?;
            Ok(Batch { inputs, targets })
        })
        .collect()
}

pub fn run(r: &ProbeRun) -> Result<(), String> {
    if r.checkpoints.is_empty() {
        return Err("--checkpoint: give at least one checkpoint file to probe".into());
    }
    if r.draws < 2 || r.batches < 2 {
        return Err(format!(
            "--draws {} --batches {}: the variances need at least 2 of each",
            r.draws, r.batches
        ));
    }
    let spec = match &r.data {
        Some(s) => s.clone(),
        None => format!(
            "{}_train",
            dataio::prepare_shakespeare(&r.root).map_err(|e| e.to_string())?
        ),
    };
    let cfg = ProbeConfig {
        modes: r.modes.clone(),
        draws: r.draws,
        hadamard_block: r.hadamard_block,
        seed: r.seed,
    };
    let mut results = Vec::new();
    let mut rows = Vec::new();
    for path in &r.checkpoints {
        let ck = gpt::checkpoint::load(path)?;
        let seq = r.seq.min(ck.model.max_seq);
        let gpt = Gpt::new(ck.model, r.batch, seq)?;
        let bs = batches(&spec, &gpt, r.batches, r.seed)?;
        let started = std::time::Instant::now();
        let name = path.display().to_string();
        let v = probe(&gpt, &ck.params, &bs, &cfg, &mut |what| {
            eprintln!("probe {name} (step {}): {what}", ck.step);
        })?;
        let seconds = started.elapsed().as_secs_f64();
        rows.push((row_title(ck.step, &name), v.clone()));
        results.push(
            json!({"checkpoint": name, "step": ck.step, "model": ck.model.to_string(),
                            "batch": r.batch, "seq": seq, "seconds": seconds, "probe": v}),
        );
    }
    let doc = json!({
        "command": r.command,
        "data": spec,
        "date": tools_date(),
        "commit": crate::git_commit(),
        "results": results,
    });
    std::fs::create_dir_all(&r.out).map_err(|e| {
        format!(
            "cannot create the output directory {}: {e}",
            r.out.display()
        )
    })?;
    let json_text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
    crate::write_atomic(&r.out.join("probe.json"), json_text.as_bytes())?;
    crate::write_atomic(
        &r.out.join("probe.svg"),
        super::svg::render(&rows).as_bytes(),
    )?;
    print_summary(&rows);
    eprintln!("wrote {}", display(&r.out));
    Ok(())
}

/// A picture row's title: the step and the checkpoint's file name (its directory is in the JSON).
fn row_title(step: impl std::fmt::Display, checkpoint: &str) -> String {
    let file = Path::new(checkpoint)
        .file_name()
        .map_or(checkpoint.into(), |f| f.to_string_lossy());
    format!("step {step} ({file})")
}

/// Redraws probe.svg beside an existing probe.json (the picture changes; the 30-minute probe
/// need not be rerun).
pub fn replot(json_path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(json_path)
        .map_err(|e| format!("--replot {}: {e}", json_path.display()))?;
    let doc: Value = serde_json::from_str(&text)
        .map_err(|e| format!("--replot {}: not a probe.json ({e})", json_path.display()))?;
    let results = doc["results"].as_array().ok_or_else(|| {
        format!(
            "--replot {}: no \"results\" list; expected the probe.json that tools/mx probe writes",
            json_path.display()
        )
    })?;
    let rows: Vec<(String, Value)> = results
        .iter()
        .map(|r| {
            (
                row_title(&r["step"], r["checkpoint"].as_str().unwrap_or("?")),
                r["probe"].clone(),
            )
        })
        .collect();
    let out = json_path.with_file_name("probe.svg");
    crate::write_atomic(&out, super::svg::render(&rows).as_bytes())?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

fn display(p: &Path) -> String {
    format!("{}/probe.json and probe.svg", p.display())
}

fn tools_date() -> Value {
    json!(crate::bench::utc_now().0)
}

/// One line per checkpoint and mode: the block-weight gradient's bias, floor, slope, std.
fn print_summary(rows: &[(String, Value)]) {
    for (title, v) in rows {
        let Some(g) = v["tensors"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["name"] == "block weights"))
        else {
            continue;
        };
        println!(
            "{title}: block weights, minibatch noise std {:.3} |g|",
            g["minibatch_variance"].as_f64().unwrap_or(f64::NAN).sqrt()
        );
        if let Some(modes) = g["modes"].as_object() {
            for (m, s) in modes {
                let f = |k: &str| s[k].as_f64().unwrap_or(f64::NAN);
                println!(
                    "  {m:<10} bias {:.4} (floor {:.4})  slope {:.4}  cosine {:.4}  std {:.4}",
                    f("bias"),
                    f("bias_floor"),
                    f("slope"),
                    f("cosine"),
                    f("variance").sqrt()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replot_redraws_the_picture_from_the_json_and_refuses_other_files() {
        let dir = std::env::temp_dir().join(format!("probe-replot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let json_path = dir.join("probe.json");
        let doc = json!({"results": [
            {"step": 30, "checkpoint": "/runs/a/ckpt_00000030.bin", "probe": {"modes": [], "tensors": []}},
            {"step": 300, "checkpoint": "ckpt_00000300.bin", "probe": {"modes": [], "tensors": []}},
        ]});
        std::fs::write(&json_path, doc.to_string()).unwrap();
        replot(&json_path).unwrap();
        let svg = std::fs::read_to_string(dir.join("probe.svg")).unwrap();
        assert!(svg.contains("step 30 (ckpt_00000030.bin)"), "{svg}");
        assert!(svg.contains("step 300 (ckpt_00000300.bin)"), "{svg}");
        assert!(
            !svg.contains("/runs/a"),
            "rows name the file, not its directory"
        );

        std::fs::write(&json_path, "{\"tensors\": []}").unwrap();
        let err = replot(&json_path).unwrap_err();
        assert!(
            err.contains("no \"results\"") && err.contains("probe.json"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
