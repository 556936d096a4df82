//! `tools/study`: the MXFP4 paper's Table 2 in miniature. Trains one small GPT on the
//! Shakespeare corpus with each `--backward` mode and several seeds, same data order and steps
//! per seed, then writes under perf/study/: `study.json` (every validation curve), `README.md`
//! (final validation loss per mode, mean and spread) and `loss_curves.svg` (mean curves).
//!
//! The seed sets the initialization, the data order and the MXFP4 randomness; runs with the
//! same seed differ only in the backward mode, so the comparison is paired.

use argh::FromArgs;
use gpt::precision::BackwardMode;
use gpt::trainer::{train, TrainArgs};
use serde_json::json;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

/// Small-scale MXFP4 study: every backward mode x seeds on Shakespeare.
#[derive(FromArgs)]
struct Args {
    /// optimizer steps per run (default 300)
    #[argh(option, default = "300")]
    steps: u64,
    /// seeds, comma separated (default 1,2)
    #[argh(option, default = "String::from(\"1,2\")")]
    seeds: String,
    /// layers (default 4)
    #[argh(option, default = "4")]
    layers: usize,
    /// width (default 128)
    #[argh(option, default = "128")]
    dim: usize,
    /// heads (default 4)
    #[argh(option, default = "4")]
    heads: usize,
    /// sequence length (default 128)
    #[argh(option, default = "128")]
    seq: usize,
    /// micro batch (default 8)
    #[argh(option, default = "8")]
    batch: usize,
    /// peak learning rate (default 2e-3)
    #[argh(option, default = "2e-3")]
    lr: f32,
    /// evaluate every N steps (default 25)
    #[argh(option, default = "25")]
    eval_every: u64,
    /// validation batches per evaluation (default 8)
    #[argh(option, default = "8")]
    eval_batches: usize,
    /// output directory (default perf/study)
    #[argh(option, default = "PathBuf::from(\"perf/study\")")]
    out: PathBuf,
}

struct Run {
    mode: BackwardMode,
    seed: u64,
    curve: Vec<(u64, f32)>,
    seconds: f64,
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let a: Args = argh::from_env();
    if let Err(e) = run(&a) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(a: &Args) -> Result<(), String> {
    let seeds: Vec<u64> = a
        .seeds
        .split(',')
        .map(|s| {
            s.trim()
                .parse::<u64>()
                .map_err(|_| format!("--seeds: '{s}' is not a number"))
        })
        .collect::<Result<_, _>>()?;
    let root = gpt::trainer::project_root();
    let data = dataio::prepare_shakespeare(&root).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut runs = Vec::new();
    let total = BackwardMode::ALL.len() * seeds.len();
    for &seed in &seeds {
        for mode in BackwardMode::ALL {
            let t0 = Instant::now();
            let list: Vec<String> = [
                "--model",
                "small",
                "--layers",
                &a.layers.to_string(),
                "--dim",
                &a.dim.to_string(),
                "--heads",
                &a.heads.to_string(),
                "--seq",
                &a.seq.to_string(),
                "--batch",
                &a.batch.to_string(),
                "--steps",
                &a.steps.to_string(),
                "--lr",
                &a.lr.to_string(),
                "--eval-every",
                &a.eval_every.to_string(),
                "--eval-batches",
                &a.eval_batches.to_string(),
                "--seed",
                &seed.to_string(),
                "--backward",
                mode.name(),
                "--data",
                &data,
                "--device",
                "cpu",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let refs: Vec<&str> = list.iter().map(|s| s.as_str()).collect();
            let args =
                <TrainArgs as FromArgs>::from_args(&["train_gpt"], &refs).map_err(|e| e.output)?;
            let s = train(&args)?;
            let run = Run {
                mode,
                seed,
                curve: s.val_losses,
                seconds: t0.elapsed().as_secs_f64(),
            };
            eprintln!(
                "study: run {}/{total}: {:<10} seed {seed}: final val loss {:.4} ({:.0} s; {:.0} s so far)",
                runs.len() + 1,
                mode.name(),
                run.curve.last().map(|c| c.1).unwrap_or(f32::NAN),
                run.seconds,
                started.elapsed().as_secs_f64()
            );
            runs.push(run);
        }
    }
    std::fs::create_dir_all(&a.out)
        .map_err(|e| format!("cannot create {}: {e}", a.out.display()))?;
    let config = json!({"layers": a.layers, "dim": a.dim, "heads": a.heads, "seq": a.seq, "batch": a.batch, "steps": a.steps,
        "lr": a.lr, "eval_every": a.eval_every, "eval_batches": a.eval_batches, "seeds": seeds, "data": "shakespeare",
        "hadamard_block": 64, "threads": runtime::cpu::threads(), "cpu": gpt::cpu::backend::cpu_model_name(),
        "total_seconds": started.elapsed().as_secs_f64(), "commit": tools::git_commit()});
    let runs_json: Vec<_> = runs
        .iter()
        .map(|r| {
            json!({"mode": r.mode.name(), "seed": r.seed, "seconds": r.seconds,
        "val_curve": r.curve.iter().map(|(s, l)| json!([s, l])).collect::<Vec<_>>()})
        })
        .collect();
    let doc = json!({"config": config, "runs": runs_json});
    write(
        &a.out.join("study.json"),
        &serde_json::to_string_pretty(&doc).unwrap(),
    )?;
    // A hand-written interpretation below NOTES_HEADING survives a rerun (it is about the
    // numbers, so reread it when they change).
    let readme = a.out.join("README.md");
    let notes = std::fs::read_to_string(&readme)
        .ok()
        .and_then(|old| old.find(NOTES_HEADING).map(|i| old[i..].to_string()))
        .unwrap_or_default();
    let table_md = table(&runs, a, started.elapsed().as_secs_f64());
    write(
        &readme,
        &if notes.is_empty() {
            table_md
        } else {
            format!("{table_md}\n{notes}")
        },
    )?;
    write(&a.out.join("loss_curves.svg"), &svg(&runs))?;
    println!("{}", table(&runs, a, started.elapsed().as_secs_f64()));
    Ok(())
}

/// Heading of the hand-written part of perf/study/README.md that a rerun keeps.
const NOTES_HEADING: &str = "## Reading the results";

fn write(p: &std::path::Path, s: &str) -> Result<(), String> {
    tools::write_atomic(p, s.as_bytes())
}

fn finals(runs: &[Run], mode: BackwardMode) -> Vec<f64> {
    runs.iter()
        .filter(|r| r.mode == mode)
        .filter_map(|r| r.curve.last().map(|c| c.1 as f64))
        .collect()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn table(runs: &[Run], a: &Args, seconds: f64) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Small-scale MXFP4 study (the paper's Table 2 in miniature)\n"
    );
    let _ = writeln!(
        s,
        "GPT with {} layers, width {}, {} heads, T = {}, B = {}, {} steps at peak lr {} (cosine), on the Shakespeare corpus; \
         validation loss over {} batches every {} steps; Hadamard block 64. Seeds: {}. Runtime {:.0} s on {} ({} threads).\n",
        a.layers, a.dim, a.heads, a.seq, a.batch, a.steps, a.lr, a.eval_batches, a.eval_every, a.seeds, seconds,
        gpt::cpu::backend::cpu_model_name(), runtime::cpu::threads()
    );
    let _ = writeln!(
        s,
        "Reproduce: `tools/study --steps {} --seeds {}`\n",
        a.steps, a.seeds
    );
    let _ = writeln!(s, "| backward | paper's name | final val loss (mean) | spread (min..max) | vs bf16 (paired mean diff) |");
    let _ = writeln!(s, "|---|---|---|---|---|");
    let base = finals(runs, BackwardMode::Bf16);
    for mode in BackwardMode::ALL {
        let f = finals(runs, mode);
        let (lo, hi) = f
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &x| {
                (l.min(x), h.max(x))
            });
        let diff = mean(&f.iter().zip(&base).map(|(x, b)| x - b).collect::<Vec<_>>());
        let paper = match mode {
            BackwardMode::Bf16 => "BF16",
            BackwardMode::Mxfp4Rtn => "MXFP4",
            BackwardMode::Mxfp4Rht => "MXFP4+RHT",
            BackwardMode::Mxfp4Sr => "MXFP4+SR",
            BackwardMode::Mxfp4 => "MXFP4+RHT+SR",
            BackwardMode::Nvfp4 | BackwardMode::Nvfp4Rtn => "(NVFP4, not in the paper)",
        };
        let _ = writeln!(
            s,
            "| `{}` | {paper} | {:.4} | {lo:.4}..{hi:.4} | {diff:+.4} |",
            mode.name(),
            mean(&f)
        );
    }
    s
}

/// Mean validation curve per mode as an SVG line chart (hand-written: no plotting dependency).
fn svg(runs: &[Run]) -> String {
    let (w, h, l, r, t, b) = (720.0, 420.0, 70.0, 170.0, 30.0, 50.0);
    let curves: Vec<(BackwardMode, Vec<(f64, f64)>)> = BackwardMode::ALL
        .iter()
        .map(|&mode| {
            let rs: Vec<&Run> = runs.iter().filter(|r| r.mode == mode).collect();
            let n = rs.iter().map(|r| r.curve.len()).min().unwrap_or(0);
            let pts = (0..n)
                .map(|i| {
                    (
                        rs[0].curve[i].0 as f64,
                        mean(&rs.iter().map(|r| r.curve[i].1 as f64).collect::<Vec<_>>()),
                    )
                })
                .collect();
            (mode, pts)
        })
        .collect();
    let all: Vec<(f64, f64)> = curves.iter().flat_map(|c| c.1.clone()).collect();
    let (x0, x1) = (0.0, all.iter().map(|p| p.0).fold(1.0, f64::max));
    let (y0, y1) = all
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.1), b.max(p.1))
        });
    let (y0, y1) = (y0 - 0.05 * (y1 - y0), y1 + 0.05 * (y1 - y0));
    let px = |x: f64| l + (x - x0) / (x1 - x0) * (w - l - r);
    let py = |y: f64| t + (y1 - y) / (y1 - y0) * (h - t - b);
    let colors = ["#222222", "#d62728", "#1f77b4", "#ff7f0e", "#2ca02c"];
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n");
    let _ = writeln!(s, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
    let _ = writeln!(s, "<text x=\"{}\" y=\"18\" text-anchor=\"middle\" font-size=\"14\">Validation loss by backward mode (mean over seeds)</text>", (l + w - r) / 2.0);
    for i in 0..=5 {
        let y = y0 + (y1 - y0) * i as f64 / 5.0;
        let _ = writeln!(s, "<line x1=\"{l}\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{y:.2}</text>", w - r, py(y), py(y), l - 6.0, py(y) + 4.0);
    }
    for i in 0..=5 {
        let x = x0 + (x1 - x0) * i as f64 / 5.0;
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{x:.0}</text>",
            px(x),
            h - b + 18.0
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">step</text>",
        (l + w - r) / 2.0,
        h - 10.0
    );
    let _ = writeln!(
        s,
        "<rect x=\"{l}\" y=\"{t}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#444\"/>",
        w - l - r,
        h - t - b
    );
    for (i, (mode, pts)) in curves.iter().enumerate() {
        let path: Vec<String> = pts
            .iter()
            .map(|p| format!("{:.1},{:.1}", px(p.0), py(p.1)))
            .collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>",
            colors[i],
            path.join(" ")
        );
        let ly = t + 20.0 + 22.0 * i as f64;
        let _ = writeln!(s, "<line x1=\"{}\" x2=\"{}\" y1=\"{ly}\" y2=\"{ly}\" stroke=\"{}\" stroke-width=\"3\"/><text x=\"{}\" y=\"{}\">{}</text>", w - r + 10.0, w - r + 34.0, colors[i], w - r + 40.0, ly + 4.0, mode.name());
    }
    s.push_str("</svg>\n");
    s
}
