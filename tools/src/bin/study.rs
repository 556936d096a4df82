//! `tools/study`: the MXFP4 paper's Table 2 in miniature. Trains one small GPT on the
//! Shakespeare corpus with each of the paper's five `--backward` modes (bf16 and the four MXFP4
//! variants), or with `--variants` also NVFP4 and the FP8 forward, and several seeds, same data
//! order and steps per seed, then writes `study.json` (every validation curve), `README.md`
//! (final validation loss per variant, mean and spread, and the command that reproduces it) and
//! `loss_curves.svg` (mean curves). The per-GEMM view of the same recipes is `tools/mx probe`.
//!
//! Output goes to `target/study/` (git-ignored) unless `--out DIR` says otherwise; the committed
//! study in `perf/study/` is replaced only when asked, with `--save` (or `--out perf/study`).
//!
//! The seed sets the initialization, the data order and the MXFP4 randomness; runs with the
//! same seed differ only in the backward mode, so the comparison is paired.

use argh::FromArgs;
use gpt::precision::{BackwardMode, ForwardMode};
use gpt::trainer::{train, TrainArgs};
use serde_json::json;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

// The defaults, named so that the README's "Reproduce" line can list every flag that differs.
const DEFAULT_STEPS: u64 = 300;
const DEFAULT_SEEDS: &[u64] = &[1, 2];
const DEFAULT_LAYERS: usize = 4;
const DEFAULT_DIM: usize = 128;
const DEFAULT_HEADS: usize = 4;
const DEFAULT_SEQ: usize = 128;
const DEFAULT_BATCH: usize = 8;
const DEFAULT_LR: f32 = 2e-3;
const DEFAULT_EVAL_EVERY: u64 = 25;
const DEFAULT_EVAL_BATCHES: usize = 8;
/// Where a run writes without --out or --save (under the git-ignored target/).
const DEFAULT_VARIANTS: &str = "paper";
const DEFAULT_OUT: &str = "target/study";
/// The committed study, written only with --save or an explicit --out.
const COMMITTED_OUT: &str = "perf/study";

/// Small-scale MXFP4 study: the paper's five backward modes x seeds on Shakespeare. About an
/// hour on 2 CPU cores at the defaults. Writes to target/study/ unless --out or --save says otherwise.
#[derive(FromArgs)]
struct Args {
    /// optimizer steps per run (default 300)
    #[argh(option, default = "DEFAULT_STEPS")]
    steps: u64,
    /// seeds, comma separated (default 1,2)
    #[argh(option, default = "String::from(\"1,2\")")]
    seeds: String,
    /// layers (default 4)
    #[argh(option, default = "DEFAULT_LAYERS")]
    layers: usize,
    /// width (default 128)
    #[argh(option, default = "DEFAULT_DIM")]
    dim: usize,
    /// heads (default 4)
    #[argh(option, default = "DEFAULT_HEADS")]
    heads: usize,
    /// sequence length (default 128)
    #[argh(option, default = "DEFAULT_SEQ")]
    seq: usize,
    /// micro batch (default 8)
    #[argh(option, default = "DEFAULT_BATCH")]
    batch: usize,
    /// peak learning rate (default 2e-3)
    #[argh(option, default = "DEFAULT_LR")]
    lr: f32,
    /// evaluate every N steps (default 25)
    #[argh(option, default = "DEFAULT_EVAL_EVERY")]
    eval_every: u64,
    /// validation batches per evaluation (default 8)
    #[argh(option, default = "DEFAULT_EVAL_BATCHES")]
    eval_batches: usize,
    /// which runs: paper (the five modes of the paper's Table 2), all (those, NVFP4 and the FP8
    /// forward), or a comma list of names from `all` (default paper)
    #[argh(option, default = "String::from(DEFAULT_VARIANTS)")]
    variants: String,
    /// output directory (default target/study, which git ignores; perf/study holds the
    /// committed study and is written only when named here or with --save)
    #[argh(option)]
    out: Option<PathBuf>,
    /// replace the committed study in perf/study (keeping its hand-written reading)
    #[argh(switch)]
    save: bool,
}

/// One kind of run: its precisions and the name its source (the paper, a recipe) gives it.
#[derive(Debug, PartialEq)]
struct Variant {
    name: &'static str,
    backward: BackwardMode,
    forward: ForwardMode,
    source: &'static str,
}

const fn variant(
    name: &'static str,
    backward: BackwardMode,
    forward: ForwardMode,
    source: &'static str,
) -> Variant {
    Variant {
        name,
        backward,
        forward,
        source,
    }
}

/// The paper's Table 2 in its order with its names, then the recipes users compare with it.
/// Spelled out (not `BackwardMode::ALL`) so that a new backward mode changes neither the study's
/// runtime nor the committed table; the chart has a colour for each.
#[rustfmt::skip]
const VARIANTS: [Variant; 8] = [
    variant("bf16", BackwardMode::Bf16, ForwardMode::Bf16, "BF16"),
    variant("mxfp4-rtn", BackwardMode::Mxfp4Rtn, ForwardMode::Bf16, "MXFP4"),
    variant("mxfp4-rht", BackwardMode::Mxfp4Rht, ForwardMode::Bf16, "MXFP4+RHT"),
    variant("mxfp4-sr", BackwardMode::Mxfp4Sr, ForwardMode::Bf16, "MXFP4+SR"),
    variant("mxfp4", BackwardMode::Mxfp4, ForwardMode::Bf16, "MXFP4+RHT+SR"),
    variant("fp8+mxfp4", BackwardMode::Mxfp4, ForwardMode::Fp8, "FP8 forward + MXFP4+RHT+SR"),
    variant("nvfp4", BackwardMode::Nvfp4, ForwardMode::Bf16, "NVFP4 recipe (arXiv 2509.25149)"),
    variant("nvfp4-rtn", BackwardMode::Nvfp4Rtn, ForwardMode::Bf16, "NVFP4, RTN, no RHT"),
];
const PAPER_VARIANTS: usize = 5;

/// The variants `--variants` names, in the table's order (bf16, the baseline, always first).
fn parse_variants(s: &str) -> Result<Vec<&'static Variant>, String> {
    match s {
        "paper" => return Ok(VARIANTS[..PAPER_VARIANTS].iter().collect()),
        "all" => return Ok(VARIANTS.iter().collect()),
        _ => {}
    }
    let names: Vec<&str> = s.split(',').map(str::trim).collect();
    for n in &names {
        if !VARIANTS.iter().any(|v| v.name == *n) {
            let known: Vec<&str> = VARIANTS.iter().map(|v| v.name).collect();
            return Err(format!(
                "--variants {s:?}: unknown variant {n:?}; expected paper, all, or a comma list of {}.",
                known.join(", ")
            ));
        }
    }
    Ok(VARIANTS
        .iter()
        .filter(|v| v.name == "bf16" || names.contains(&v.name))
        .collect())
}

struct Run {
    variant: &'static Variant,
    seed: u64,
    curve: Vec<(u64, f32)>,
    seconds: f64,
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let a: Args = argh::from_env();
    if let Err(e) = run(&a, &gpt::trainer::project_root()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// The seeds of `--seeds`.
fn parse_seeds(s: &str) -> Result<Vec<u64>, String> {
    s.split(',')
        .map(|p| {
            p.trim().parse::<u64>().map_err(|_| {
                format!("--seeds {s:?}: {p:?} is not a non-negative integer (expected e.g. 1,2).")
            })
        })
        .collect()
}

/// The output directory: --out, or perf/study with --save, or target/study; relative to the
/// repository root `root`.
fn out_dir(a: &Args, root: &Path) -> Result<PathBuf, String> {
    match (&a.out, a.save) {
        (Some(out), true) => Err(format!(
            "--save writes the committed study in {COMMITTED_OUT}, but --out {} names another \
             place: give one of them.",
            out.display()
        )),
        (Some(out), false) => Ok(root.join(out)),
        (None, true) => Ok(root.join(COMMITTED_OUT)),
        (None, false) => Ok(root.join(DEFAULT_OUT)),
    }
}

/// The command line that repeats this run: `tools/study` with every flag that is not at its
/// default, in the order of `--help`.
fn reproduce(a: &Args, seeds: &[u64]) -> String {
    let mut cmd = String::from("tools/study");
    let mut flag = |name: &str, value: String| {
        let _ = write!(cmd, " --{name} {value}");
    };
    if a.steps != DEFAULT_STEPS {
        flag("steps", a.steps.to_string());
    }
    if seeds != DEFAULT_SEEDS {
        let list: Vec<String> = seeds.iter().map(u64::to_string).collect();
        flag("seeds", list.join(","));
    }
    if a.layers != DEFAULT_LAYERS {
        flag("layers", a.layers.to_string());
    }
    if a.dim != DEFAULT_DIM {
        flag("dim", a.dim.to_string());
    }
    if a.heads != DEFAULT_HEADS {
        flag("heads", a.heads.to_string());
    }
    if a.seq != DEFAULT_SEQ {
        flag("seq", a.seq.to_string());
    }
    if a.batch != DEFAULT_BATCH {
        flag("batch", a.batch.to_string());
    }
    if a.lr != DEFAULT_LR {
        flag("lr", a.lr.to_string());
    }
    if a.eval_every != DEFAULT_EVAL_EVERY {
        flag("eval-every", a.eval_every.to_string());
    }
    if a.eval_batches != DEFAULT_EVAL_BATCHES {
        flag("eval-batches", a.eval_batches.to_string());
    }
    if a.variants != DEFAULT_VARIANTS {
        flag("variants", a.variants.replace(' ', ""));
    }
    if let Some(out) = &a.out {
        flag("out", out.display().to_string());
    }
    if a.save {
        cmd.push_str(" --save");
    }
    cmd
}

fn run(a: &Args, root: &Path) -> Result<(), String> {
    let seeds = parse_seeds(&a.seeds)?;
    let variants = parse_variants(&a.variants)?;
    let out = out_dir(a, root)?;
    let data = dataio::prepare_shakespeare(root).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut runs = Vec::new();
    let total = variants.len() * seeds.len();
    for &seed in &seeds {
        for &v in &variants {
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
                v.backward.name(),
                "--forward",
                v.forward.name(),
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
                variant: v,
                seed,
                curve: s.val_losses,
                seconds: t0.elapsed().as_secs_f64(),
            };
            eprintln!(
                "study: run {}/{total}: {:<10} seed {seed}: final val loss {:.4} ({:.0} s; {:.0} s so far)",
                runs.len() + 1,
                v.name,
                run.curve.last().map(|c| c.1).unwrap_or(f32::NAN),
                run.seconds,
                started.elapsed().as_secs_f64()
            );
            runs.push(run);
        }
    }
    std::fs::create_dir_all(&out)
        .map_err(|e| format!("Cannot create the output directory {}: {e}.", out.display()))?;
    let command = reproduce(a, &seeds);
    let config = json!({"layers": a.layers, "dim": a.dim, "heads": a.heads, "seq": a.seq, "batch": a.batch, "steps": a.steps,
        "lr": a.lr, "eval_every": a.eval_every, "eval_batches": a.eval_batches, "seeds": seeds, "data": "shakespeare",
        "hadamard_block": 64, "threads": runtime::cpu::threads(), "cpu": gpt::cpu::backend::cpu_model_name(),
        "total_seconds": started.elapsed().as_secs_f64(), "commit": tools::git_commit(), "command": command});
    let runs_json: Vec<_> = runs
        .iter()
        .map(|r| {
            json!({"variant": r.variant.name, "mode": r.variant.backward.name(), "forward": r.variant.forward.name(), "seed": r.seed, "seconds": r.seconds,
        "val_curve": r.curve.iter().map(|(s, l)| json!([s, l])).collect::<Vec<_>>()})
        })
        .collect();
    let doc = json!({"config": config, "runs": runs_json});
    write(
        &out.join("study.json"),
        &serde_json::to_string_pretty(&doc).unwrap(),
    )?;
    // A hand-written interpretation below NOTES_HEADING survives a rerun (it is about the
    // numbers, so reread it when they change).
    let readme = out.join("README.md");
    let notes = std::fs::read_to_string(&readme)
        .ok()
        .and_then(|old| old.find(NOTES_HEADING).map(|i| old[i..].to_string()))
        .unwrap_or_default();
    let seconds = started.elapsed().as_secs_f64();
    let table_md = table(&runs, &variants, a, &command, seconds);
    write(
        &readme,
        &if notes.is_empty() {
            table_md.clone()
        } else {
            format!("{table_md}\n{notes}")
        },
    )?;
    write(&out.join("loss_curves.svg"), &svg(&runs, &variants))?;
    println!("{table_md}");
    eprintln!("study: wrote {}", out.display());
    Ok(())
}

/// Heading of the hand-written part of the README (perf/study's) that a rerun into the same
/// directory keeps.
const NOTES_HEADING: &str = "## Reading the results";

fn write(p: &std::path::Path, s: &str) -> Result<(), String> {
    tools::write_atomic(p, s.as_bytes())
}

fn finals(runs: &[Run], v: &Variant) -> Vec<f64> {
    runs.iter()
        .filter(|r| r.variant == v)
        .filter_map(|r| r.curve.last().map(|c| c.1 as f64))
        .collect()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn table(runs: &[Run], variants: &[&Variant], a: &Args, command: &str, seconds: f64) -> String {
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
    let _ = writeln!(s, "Reproduce: `{command}`\n");
    let _ = writeln!(s, "| variant | forward | backward | name in its source | final val loss (mean) | spread (min..max) | vs bf16 (paired mean diff) |");
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    let base = finals(runs, &VARIANTS[0]);
    for v in variants {
        let f = finals(runs, v);
        let (lo, hi) = f
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &x| {
                (l.min(x), h.max(x))
            });
        let diff = mean(&f.iter().zip(&base).map(|(x, b)| x - b).collect::<Vec<_>>());
        let _ = writeln!(
            s,
            "| `{}` | {} | {} | {} | {:.4} | {lo:.4}..{hi:.4} | {diff:+.4} |",
            v.name,
            v.forward.name(),
            v.backward.name(),
            v.source,
            mean(&f)
        );
    }
    s
}

/// Mean validation curve per mode as an SVG line chart (hand-written: no plotting dependency).
fn svg(runs: &[Run], variants: &[&Variant]) -> String {
    let (w, h, l, r, t, b) = (720.0, 420.0, 70.0, 170.0, 30.0, 50.0);
    // (name, colour index: the variant's place in VARIANTS, so a variant keeps its colour
    // whatever --variants selects, mean curve)
    let curves: Vec<(&str, usize, Vec<(f64, f64)>)> = variants
        .iter()
        .map(|&v| {
            let rs: Vec<&Run> = runs.iter().filter(|r| r.variant == v).collect();
            let n = rs.iter().map(|r| r.curve.len()).min().unwrap_or(0);
            let pts = (0..n)
                .map(|i| {
                    (
                        rs[0].curve[i].0 as f64,
                        mean(&rs.iter().map(|r| r.curve[i].1 as f64).collect::<Vec<_>>()),
                    )
                })
                .collect();
            let colour = VARIANTS.iter().position(|x| x == v).unwrap_or(0);
            (v.name, colour, pts)
        })
        .collect();
    let all: Vec<(f64, f64)> = curves.iter().flat_map(|c| c.2.clone()).collect();
    let (x0, x1) = (0.0, all.iter().map(|p| p.0).fold(1.0, f64::max));
    let (y0, y1) = all
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.1), b.max(p.1))
        });
    let (y0, y1) = (y0 - 0.05 * (y1 - y0), y1 + 0.05 * (y1 - y0));
    let px = |x: f64| l + (x - x0) / (x1 - x0) * (w - l - r);
    let py = |y: f64| t + (y1 - y) / (y1 - y0) * (h - t - b);
    let colors = [
        "#222222", "#d62728", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2",
    ];
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n");
    let _ = writeln!(s, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
    let _ = writeln!(s, "<text x=\"{}\" y=\"18\" text-anchor=\"middle\" font-size=\"14\">Validation loss by variant (mean over seeds)</text>", (l + w - r) / 2.0);
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
    for (i, (name, colour, pts)) in curves.iter().enumerate() {
        let path: Vec<String> = pts
            .iter()
            .map(|p| format!("{:.1},{:.1}", px(p.0), py(p.1)))
            .collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>",
            colors[*colour],
            path.join(" ")
        );
        let ly = t + 20.0 + 22.0 * i as f64;
        let _ = writeln!(s, "<line x1=\"{}\" x2=\"{}\" y1=\"{ly}\" y2=\"{ly}\" stroke=\"{}\" stroke-width=\"3\"/><text x=\"{}\" y=\"{}\">{}</text>", w - r + 10.0, w - r + 34.0, colors[*colour], w - r + 40.0, ly + 4.0, name);
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(flags: &[&str]) -> Args {
        <Args as FromArgs>::from_args(&["study"], flags).unwrap()
    }

    #[test]
    fn output_goes_under_target_and_perf_study_only_when_asked() {
        let root = Path::new("/repo");
        assert_eq!(
            out_dir(&args(&[]), root).unwrap(),
            root.join("target/study")
        );
        assert_eq!(
            out_dir(&args(&["--save"]), root).unwrap(),
            root.join("perf/study")
        );
        assert_eq!(
            out_dir(&args(&["--out", "perf/study"]), root).unwrap(),
            root.join("perf/study")
        );
        assert_eq!(
            out_dir(&args(&["--out", "/elsewhere"]), root).unwrap(),
            PathBuf::from("/elsewhere")
        );
        let err = out_dir(&args(&["--save", "--out", "x"]), root).unwrap_err();
        assert!(
            err.contains("--save") && err.contains("--out x") && err.ends_with('.'),
            "{err}"
        );
    }

    #[test]
    fn reproduce_lists_every_non_default_flag() {
        let line = |flags: &[&str]| {
            let a = args(flags);
            reproduce(&a, &parse_seeds(&a.seeds).unwrap())
        };
        assert_eq!(line(&[]), "tools/study");
        // The run behind the committed perf/study (steps 250, everything else at its default).
        assert_eq!(
            line(&["--steps", "250", "--seeds", "1,2", "--save"]),
            "tools/study --steps 250 --save"
        );
        let all = [
            "--steps",
            "7",
            "--seeds",
            "3, 4",
            "--layers",
            "2",
            "--dim",
            "64",
            "--heads",
            "2",
            "--seq",
            "32",
            "--batch",
            "4",
            "--lr",
            "0.001",
            "--eval-every",
            "5",
            "--eval-batches",
            "3",
            "--out",
            "/tmp/s",
        ];
        assert_eq!(
            line(&all),
            "tools/study --steps 7 --seeds 3,4 --layers 2 --dim 64 --heads 2 --seq 32 --batch 4 \
             --lr 0.001 --eval-every 5 --eval-batches 3 --out /tmp/s"
        );
        assert!(parse_seeds("1,x").unwrap_err().contains("\"x\""));
        assert_eq!(
            line(&["--variants", "nvfp4, fp8+mxfp4"]),
            "tools/study --variants nvfp4,fp8+mxfp4"
        );
    }

    #[test]
    fn variants_name_runs_and_keep_the_baseline() {
        let names =
            |s: &str| -> Vec<&str> { parse_variants(s).unwrap().iter().map(|v| v.name).collect() };
        assert_eq!(
            names("paper"),
            ["bf16", "mxfp4-rtn", "mxfp4-rht", "mxfp4-sr", "mxfp4"]
        );
        assert_eq!(names("all").len(), VARIANTS.len());
        // bf16 is the baseline of the paired differences: always run, table order kept.
        assert_eq!(names("nvfp4,fp8+mxfp4"), ["bf16", "fp8+mxfp4", "nvfp4"]);
        let err = parse_variants("mxfp4,fp4").unwrap_err();
        assert!(
            err.contains("\"fp4\"") && err.contains("nvfp4-rtn"),
            "{err}"
        );
        let fp8 = parse_variants("fp8+mxfp4").unwrap()[1];
        assert_eq!(
            (fp8.forward, fp8.backward),
            (ForwardMode::Fp8, BackwardMode::Mxfp4)
        );
    }

    /// A throwaway repository root with a small random Megatron corpus where the study looks for
    /// Shakespeare, and a committed-looking perf/study/README.md.
    fn fake_root(tag: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!("study-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let mut state = 7u64;
        for (part, docs) in [("train", 40), ("val", 10)] {
            let prefix = root.join(format!("data/shakespeare_{part}"));
            let mut w =
                dataio::MegatronWriter::create(prefix.to_str().unwrap(), dataio::Dtype::U16)
                    .unwrap();
            for _ in 0..docs {
                let mut doc: Vec<u32> = (0..100)
                    .map(|_| {
                        state = state.wrapping_add(1);
                        (dataio::splitmix64(state) % 1000) as u32
                    })
                    .collect();
                doc.push(dataio::EOT_TOKEN);
                w.add_document(&doc).unwrap();
            }
            w.finish().unwrap();
        }
        std::fs::create_dir_all(root.join("perf/study")).unwrap();
        std::fs::write(
            root.join("perf/study/README.md"),
            "committed table\n\n## Reading the results\n\nhand-written reading\n",
        )
        .unwrap();
        root
    }

    const TINY: [&str; 16] = [
        "--steps",
        "2",
        "--seeds",
        "5",
        "--layers",
        "1",
        "--dim",
        "64",
        "--heads",
        "1",
        "--seq",
        "64",
        "--batch",
        "1",
        "--eval-every",
        "1",
    ];

    #[test]
    fn a_run_leaves_the_committed_study_alone_unless_saved() {
        let root = fake_root("run");
        let committed = std::fs::read_to_string(root.join("perf/study/README.md")).unwrap();
        let mut flags = TINY.to_vec();
        flags.extend(["--eval-batches", "1"]);
        run(&args(&flags), &root).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join("perf/study/README.md")).unwrap(),
            committed,
            "a run without --save must not touch perf/study"
        );
        assert_eq!(
            std::fs::read_dir(root.join("perf/study")).unwrap().count(),
            1
        );
        let readme = std::fs::read_to_string(root.join("target/study/README.md")).unwrap();
        let repro = "Reproduce: `tools/study --steps 2 --seeds 5 --layers 1 --dim 64 --heads 1 \
                     --seq 64 --batch 1 --eval-every 1 --eval-batches 1`";
        assert!(readme.contains(repro), "{readme}");
        assert!(!readme.contains("hand-written reading"));
        for mode in ["bf16", "mxfp4-rtn", "mxfp4-rht", "mxfp4-sr", "mxfp4"] {
            assert!(readme.contains(&format!("| `{mode}` |")), "{readme}");
        }
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(root.join("target/study/study.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(json["runs"].as_array().unwrap().len(), 5);
        assert!(root.join("target/study/loss_curves.svg").is_file());

        // --save replaces the committed table and keeps its reading.
        flags.push("--save");
        run(&args(&flags), &root).unwrap();
        let saved = std::fs::read_to_string(root.join("perf/study/README.md")).unwrap();
        assert!(!saved.contains("committed table"), "{saved}");
        let saved_repro = format!("{} --save`", repro.strip_suffix('`').unwrap());
        assert!(saved.contains(&saved_repro), "{saved}");
        assert!(saved.ends_with("## Reading the results\n\nhand-written reading\n"));

        // The recipes beyond the paper: NVFP4 and the FP8 forward, beside the bf16 baseline.
        let mut flags = TINY.to_vec();
        flags.extend(["--eval-batches", "1", "--variants", "nvfp4,fp8+mxfp4"]);
        run(&args(&flags), &root).unwrap();
        let readme = std::fs::read_to_string(root.join("target/study/README.md")).unwrap();
        assert!(readme.contains("| `fp8+mxfp4` | fp8 | mxfp4 |"), "{readme}");
        assert!(readme.contains("| `nvfp4` | bf16 | nvfp4 |"), "{readme}");
        assert!(readme.contains("--variants nvfp4,fp8+mxfp4"), "{readme}");
        // Colours follow the variant, not its place in the selection.
        let svg = std::fs::read_to_string(root.join("target/study/loss_curves.svg")).unwrap();
        for (name, colour) in [("fp8+mxfp4", "#9467bd"), ("nvfp4", "#8c564b")] {
            assert!(
                svg.contains(&format!("stroke=\"{colour}\" stroke-width=\"2\"")),
                "{name}"
            );
        }
        assert!(
            !svg.contains("#d62728"),
            "mxfp4-rtn's colour without mxfp4-rtn"
        );
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(root.join("target/study/study.json")).unwrap(),
        )
        .unwrap();
        let runs: Vec<String> = json["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| format!("{} {} {}", r["variant"], r["forward"], r["mode"]))
            .collect();
        assert_eq!(
            runs,
            [
                "\"bf16\" \"bf16\" \"bf16\"",
                "\"fp8+mxfp4\" \"fp8\" \"mxfp4\"",
                "\"nvfp4\" \"bf16\" \"nvfp4\""
            ]
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}
