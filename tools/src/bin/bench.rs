//! `bench`: performance suites, regression checks against baselines, and SVG plots.
//!
//! Suites (`--suite kernels,step`):
//! - `kernels`: every CPU op of `gpt::cpu::ops` and the GEMM at the shapes of `--model` with
//!   `--batch`/`--seq`, each with time, GFLOP/s or GB/s and the percentage of a ceiling the bench
//!   measures first on the same machine (copy bandwidth, a large square sgemm).
//! - `step`: a full training step (forward_backward + grad_norm + adamw) per `--backward` mode,
//!   through a `TimedBackend` that delegates to the real backend and adds up wall time per phase.
//!
//! Method: warm-up runs, then repetitions (at least `--reps`, more while under a time budget),
//! median with min/max and quartiles; inputs rotate over `ROTATE` random buffers so the caches
//! do not flatter; random data, never zeros. Results: a table on stdout, progress on stderr, and
//! a JSON file under `--out` (default perf/results) named `<device>_<date>_<commit>.json`
//! (fields: perf/README.md). `--baseline FILE` compares and exits 1 on a regression;
//! `--save-baseline` writes perf/baselines/<device>.json. `bench compare NEW --baseline OLD`
//! compares two result files without running; `bench plot` renders SVG.

use argh::FromArgs;
use gpt::backend::{BResult, Backend, BackendInfo, LinearBackward};
use gpt::config::ModelConfig;
use gpt::cpu::backend::{cpu_model_name, CpuBackend};
use gpt::cpu::gemm::{sgemm, MatRef};
use gpt::cpu::ops::{self, AdamW};
use gpt::layout::{Arena, TensorRef};
use gpt::model::{Gpt, PrecisionPlan};
use gpt::mx::{MxConfig, MxTelemetry};
use gpt::precision::BackwardMode;
use gpt::rng::SplitMix64;
use serde_json::{json, Value};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Random input sets each measurement rotates through.
const ROTATE: usize = 3;
const SCHEMA: u32 = 1;

#[derive(FromArgs)]
/// mxgpt performance benchmarks: `bench [flags]` runs suites; `bench compare NEW --baseline OLD`
/// compares result files; `bench plot [FILES]` renders SVG under perf/plots.
struct Args {
    /// run (default), compare or plot; compare and plot take result files after it
    #[argh(positional)]
    command: Vec<String>,
    /// suites, comma separated: kernels, step (default: kernels,step)
    #[argh(option, default = "String::from(\"kernels,step\")")]
    suite: String,
    /// model name (tiny, small, 124m, 345m, ...; default tiny)
    #[argh(option, default = "String::from(\"tiny\")")]
    model: String,
    /// micro batch size (default 4; 1 with --quick)
    #[argh(option)]
    batch: Option<usize>,
    /// sequence length (default 64; 32 with --quick)
    #[argh(option)]
    seq: Option<usize>,
    /// backward modes for the step suite, comma list or `all` (default bf16)
    #[argh(option, default = "String::from(\"bf16\")")]
    backward: String,
    /// the MX GEMM of the MXFP4 modes on the GPU: auto, bf16, int8, tcgen05 (default auto)
    #[argh(option, default = "String::from(\"auto\")")]
    mx_gemm: String,
    /// cpu (default) or cuda
    #[argh(option, default = "String::from(\"cpu\")")]
    device: String,
    /// tiny sizes and few repetitions (CI)
    #[argh(switch)]
    quick: bool,
    /// minimum repetitions per entry (default 10; 3 with --quick)
    #[argh(option)]
    reps: Option<usize>,
    /// warm-up runs per entry (default 2; 1 with --quick)
    #[argh(option)]
    warmup: Option<usize>,
    /// keep repeating an entry until this many seconds are spent (default 1.0; 0 with --quick)
    #[argh(option)]
    min_time: Option<f64>,
    /// directory for the result JSON (default perf/results)
    #[argh(option, default = "PathBuf::from(\"perf/results\")")]
    out: PathBuf,
    /// baseline JSON to compare with; exit status 1 on a regression
    #[argh(option)]
    baseline: Option<PathBuf>,
    /// regression tolerance, e.g. 5% or 0.05 (default 5%)
    #[argh(option, default = "String::from(\"5%\")")]
    tolerance: String,
    /// also write the results as perf/baselines/<device>.json
    #[argh(switch)]
    save_baseline: bool,
    /// directory of baselines for --save-baseline (default perf/baselines)
    #[argh(option, default = "PathBuf::from(\"perf/baselines\")")]
    baselines_dir: PathBuf,
    /// directory for plots (default perf/plots)
    #[argh(option, default = "PathBuf::from(\"perf/plots\")")]
    plots_dir: PathBuf,
}

fn main() {
    let args: Args = argh::from_env();
    match run(args) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::exit(2);
        }
    }
}

fn run(args: Args) -> Result<i32, String> {
    let tolerance = parse_tolerance(&args.tolerance)?;
    match args.command.first().map(String::as_str) {
        None | Some("run") => {}
        Some("compare") => {
            let [new] = &args.command[1..] else {
                return Err(
                    "compare takes one result file: bench compare NEW.json --baseline OLD.json"
                        .into(),
                );
            };
            let base = args
                .baseline
                .as_ref()
                .ok_or("compare needs --baseline FILE")?;
            return compare_files(Path::new(new), base, tolerance);
        }
        Some("plot") => return plot(&args.command[1..], &args.out, &args.plots_dir),
        Some(other) => {
            return Err(format!(
                "unknown command '{other}': expected run, compare or plot"
            ))
        }
    }
    let on_gpu = match args.device.as_str() {
        "cpu" => false,
        "cuda" if cfg!(feature = "cuda") => true,
        "cuda" => return Err("--device cuda: this bench was built without the CUDA backend; build it with `cargo build --release -p tools --features cuda` (tools/cuda/bundle.sh does) or use --device cpu".into()),
        d => return Err(format!("unknown --device '{d}': expected cpu or cuda")),
    };
    let cfg = ModelConfig::named(&args.model)?;
    let q = args.quick;
    let m = Method {
        warmup: args.warmup.unwrap_or(if q { 1 } else { 2 }),
        reps: args.reps.unwrap_or(if q { 3 } else { 10 }).max(1),
        min_time: Duration::from_secs_f64(args.min_time.unwrap_or(if q { 0.0 } else { 1.0 })),
    };
    let (batch, seq) = (
        args.batch.unwrap_or(if q { 1 } else { 4 }),
        args.seq.unwrap_or(if q { 32 } else { 64 }),
    );
    let gpt = Gpt::new(cfg, batch, seq)?;
    let modes = parse_modes(&args.backward)?;
    let suites: Vec<&str> = args
        .suite
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    for s in &suites {
        if !["kernels", "step"].contains(s) {
            return Err(format!(
                "unknown --suite '{s}': expected kernels, step or both comma separated"
            ));
        }
    }
    let counters = runtime::counters::Counters::open(0);
    let counters_line = match (&counters, on_gpu) {
        (Ok(c), true) => format!(
            "NVML: {} (energy per token in the step suite)",
            c.device_name
        ),
        (Ok(c), false) => format!("NVML: {} (not used by the cpu suites)", c.device_name),
        (Err(e), _) => e.clone(),
    };
    eprintln!("{counters_line}");
    let counters = if on_gpu { counters.ok() } else { None };

    let device_name = if on_gpu {
        gpu_name()?
    } else {
        cpu_model_name()
    };
    let device = format!(
        "{}-{}",
        if on_gpu { "cuda" } else { "cpu" },
        slug(&device_name)
    );
    let mx_gemm: gpt::cuda::MxGemmChoice = args.mx_gemm.parse()?;
    let bench_device = BenchDevice {
        gpu: on_gpu,
        mx_gemm,
        counters,
    };
    let mut entries = Vec::new();
    let mut ceilings = Ceilings::default();
    if on_gpu && suites.contains(&"kernels") {
        let (e, c) = gpu_kernels_suite(&gpt, &m)?;
        entries.extend(e);
        ceilings = c;
    }
    if !on_gpu && (suites.contains(&"kernels") || suites.contains(&"step")) {
        ceilings = measure_ceilings(&m, q);
        eprintln!(
            "ceilings: copy {:.1} GB/s, sgemm {:.1} GFLOP/s",
            ceilings.copy_gbps, ceilings.sgemm_gflops
        );
    }
    if suites.contains(&"kernels") && !on_gpu {
        entries.extend(kernels_suite(&gpt, &m, &ceilings));
    }
    if suites.contains(&"step") {
        for mode in &modes {
            entries.push(step_entry(&gpt, *mode, &m, &ceilings, &bench_device));
        }
    }

    let (date, stamp) = utc_now();
    let commit = tools::git_commit();
    let doc = json!({
        "schema": SCHEMA,
        "device": device,
        "device_name": device_name,
        "backend": if on_gpu { "cuda" } else { "cpu" },
        "threads": runtime::cpu::threads(),
        "date": date,
        "commit": commit,
        "model": args.model,
        "batch": batch,
        "seq": seq,
        "quick": q,
        "mx_gemm": args.mx_gemm,
        "method": {"warmup": m.warmup, "min_reps": m.reps, "min_time_s": m.min_time.as_secs_f64(), "rotate": ROTATE},
        "counters": counters_line,
        "ceilings": {"copy_gbps": ceilings.copy_gbps, "sgemm_gflops": ceilings.sgemm_gflops,
                     "sgemm_n": ceilings.sgemm_n, "copy_bytes": ceilings.copy_bytes},
        "entries": entries,
    });
    print_table(&doc);
    let path = args.out.join(format!("{device}_{stamp}_{commit}.json"));
    write_atomic(&path, &serde_json::to_string_pretty(&doc).unwrap())?;
    eprintln!("wrote {}", path.display());
    if args.save_baseline {
        let b = args.baselines_dir.join(format!("{device}.json"));
        write_atomic(&b, &serde_json::to_string_pretty(&doc).unwrap())?;
        eprintln!("wrote baseline {}", b.display());
    }
    match &args.baseline {
        Some(b) => Ok(compare_docs(&doc, &read_json(b)?, tolerance)),
        None => Ok(0),
    }
}

// ---------------------------------------------------------------------------------------------
// Measurement

struct Method {
    warmup: usize,
    reps: usize,
    min_time: Duration,
}

/// Milliseconds per repetition: median, extremes and quartiles.
#[derive(Clone, Copy, Debug)]
struct Stats {
    median: f64,
    min: f64,
    max: f64,
    q1: f64,
    q3: f64,
    reps: usize,
}

impl Stats {
    fn from_samples(mut ms: Vec<f64>) -> Stats {
        ms.sort_by(|a, b| a.total_cmp(b));
        let at = |f: f64| {
            // linear interpolation between order statistics
            let x = f * (ms.len() - 1) as f64;
            let (lo, hi) = (x.floor() as usize, x.ceil() as usize);
            ms[lo] + (ms[hi] - ms[lo]) * (x - lo as f64)
        };
        Stats {
            median: at(0.5),
            min: ms[0],
            max: ms[ms.len() - 1],
            q1: at(0.25),
            q3: at(0.75),
            reps: ms.len(),
        }
    }
    fn json(&self) -> Value {
        json!({"median_ms": self.median, "min_ms": self.min, "max_ms": self.max,
               "q1_ms": self.q1, "q3_ms": self.q3, "reps": self.reps})
    }
}

/// Runs `f(i)` (i picks the rotated input set) `warmup` times untimed, then at least `reps`
/// times and until `min_time` has passed.
fn measure(m: &Method, mut f: impl FnMut(usize)) -> Stats {
    for i in 0..m.warmup {
        f(i % ROTATE);
    }
    let start = Instant::now();
    let mut ms = Vec::new();
    while ms.len() < m.reps || (start.elapsed() < m.min_time && ms.len() < 10_000) {
        let t = Instant::now();
        f(ms.len() % ROTATE);
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Stats::from_samples(ms)
}

fn random_vec(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut r = SplitMix64::new(seed);
    // uniform in [-scale, scale], never exactly zero
    (0..n)
        .map(|_| {
            let x = (r.next_f64() * 2.0 - 1.0) as f32 * scale;
            if x == 0.0 {
                0.5 * scale
            } else {
                x
            }
        })
        .collect()
}

fn random_sets(n: usize, seed: u64, scale: f32) -> Vec<Vec<f32>> {
    (0..ROTATE)
        .map(|i| random_vec(n, seed * 31 + i as u64, scale))
        .collect()
}

fn random_tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut r = SplitMix64::new(seed);
    (0..n)
        .map(|_| (r.next_u64() % vocab as u64) as u32)
        .collect()
}

#[derive(Default)]
struct Ceilings {
    copy_gbps: f64,
    sgemm_gflops: f64,
    sgemm_n: usize,
    copy_bytes: usize,
}

/// The machine's own ceilings: multithreaded copy bandwidth over buffers larger than the caches
/// (bytes read + written), and a large square sgemm.
fn measure_ceilings(m: &Method, quick: bool) -> Ceilings {
    let n = if quick { 1 << 21 } else { 1 << 25 }; // floats: 8 MiB / 128 MiB
    let src = random_sets(n, 1, 1.0);
    let mut dst = vec![0.0f32; n];
    let s = measure(m, |i| {
        let src = &src[i];
        runtime::cpu::parallel_rows_mut(&mut dst, 1, 1 << 16, |r, d| d.copy_from_slice(&src[r]));
    });
    let copy_gbps = (2 * 4 * n) as f64 / (s.median * 1e-3) / 1e9;
    let g = if quick { 256 } else { 1024 };
    let (a, b) = (random_sets(g * g, 2, 1.0), random_sets(g * g, 3, 1.0));
    let mut c = vec![0.0f32; g * g];
    let gm = Method {
        reps: m.reps.min(3),
        warmup: 1,
        min_time: Duration::ZERO,
    };
    // B transposed: the layout of matmul_forward (X · W^T), the model's most common GEMM.
    let s = measure(&gm, |i| {
        sgemm(
            MatRef::row_major(&a[i], g, g),
            MatRef::transposed(&b[i], g, g),
            &mut c,
            g,
            false,
        )
    });
    Ceilings {
        copy_gbps,
        sgemm_gflops: 2.0 * (g * g * g) as f64 / (s.median * 1e-3) / 1e9,
        sgemm_n: g,
        copy_bytes: 8 * n,
    }
}

// ---------------------------------------------------------------------------------------------
// kernels suite

/// One entry: `flops` and `bytes` are per call (bytes: minimum traffic, each operand once).
/// GEMMs and attention are compared with the sgemm ceiling, everything else with copy bandwidth.
fn kernel_entry(
    name: &str,
    shape: String,
    st: Stats,
    flops: f64,
    bytes: f64,
    ceil: &Ceilings,
) -> Value {
    let secs = st.median * 1e-3;
    let (gflops, gbps) = (flops / secs / 1e9, bytes / secs / 1e9);
    let compute_bound = ["matmul_", "attention_", "mx_gemm"]
        .iter()
        .any(|p| name.starts_with(p));
    let (bound, pct) = if compute_bound {
        ("compute", 100.0 * gflops / ceil.sgemm_gflops)
    } else {
        ("memory", 100.0 * gbps / ceil.copy_gbps)
    };
    eprintln!("  kernels/{name:<28} {:>10.3} ms", st.median);
    json!({"suite": "kernels", "name": name, "shape": shape, "stats": st.json(), "flops": flops, "bytes": bytes,
           "gflops": gflops, "gbps": gbps, "bound": bound, "pct_of_ceiling": pct})
}

fn kernels_suite(gpt: &Gpt, m: &Method, ceil: &Ceilings) -> Vec<Value> {
    let cfg = &gpt.cfg;
    let (b, t, c, nh, vp, v) = (
        gpt.batch,
        gpt.seq,
        cfg.channels,
        cfg.heads,
        cfg.padded_vocab,
        cfg.vocab,
    );
    let bt = b * t;
    let f = 4.0; // bytes per f32
    let mut out = Vec::new();
    let tokens: Vec<Vec<u32>> = (0..ROTATE)
        .map(|i| random_tokens(bt, v, 7 + i as u64))
        .collect();

    // embeddings
    let (wte, wpe) = (
        random_sets(vp * c, 10, 0.02),
        random_sets(cfg.max_seq * c, 11, 0.02),
    );
    let mut act = vec![0.0f32; bt * c];
    let st = measure(m, |i| {
        ops::encoder_forward(&mut act, &tokens[i], &wte[i], &wpe[i], t, c)
    });
    out.push(kernel_entry(
        "encoder_forward",
        format!("BT={bt} C={c}"),
        st,
        (bt * c) as f64,
        3.0 * f * (bt * c) as f64,
        ceil,
    ));
    let dout = random_sets(bt * c, 12, 1.0);
    let (mut dwte, mut dwpe) = (vec![0.0f32; vp * c], vec![0.0f32; cfg.max_seq * c]);
    let st = measure(m, |i| {
        ops::encoder_backward(&mut dwte, &mut dwpe, &dout[i], &tokens[i], t, c)
    });
    out.push(kernel_entry(
        "encoder_backward",
        format!("BT={bt} C={c}"),
        st,
        2.0 * (bt * c) as f64,
        5.0 * f * (bt * c) as f64,
        ceil,
    ));

    // layernorms
    let x = random_sets(bt * c, 13, 1.0);
    let (w, bias) = (random_vec(c, 14, 1.0), random_vec(c, 15, 0.1));
    let (mut mean, mut rstd) = (vec![0.0f32; bt], vec![0.0f32; bt]);
    let st = measure(m, |i| {
        ops::layernorm_forward(&mut act, &mut mean, &mut rstd, &x[i], &w, &bias, c)
    });
    out.push(kernel_entry(
        "layernorm_forward",
        format!("BT={bt} C={c}"),
        st,
        8.0 * (bt * c) as f64,
        2.0 * f * (bt * c) as f64,
        ceil,
    ));
    let mut res = vec![0.0f32; bt * c];
    let st = measure(m, |i| {
        ops::residual_layernorm_forward(
            &mut res, &mut act, &mut mean, &mut rstd, &x[i], &dout[i], &w, &bias, c,
        )
    });
    out.push(kernel_entry(
        "residual_layernorm_forward",
        format!("BT={bt} C={c}"),
        st,
        9.0 * (bt * c) as f64,
        4.0 * f * (bt * c) as f64,
        ceil,
    ));
    let (mut dx, mut dw, mut db) = (vec![0.0f32; bt * c], vec![0.0f32; c], vec![0.0f32; c]);
    let st = measure(m, |i| {
        ops::layernorm_backward(
            &mut dx, &mut dw, &mut db, &dout[i], &x[i], &w, &mean, &rstd, c,
        )
    });
    out.push(kernel_entry(
        "layernorm_backward",
        format!("BT={bt} C={c}"),
        st,
        14.0 * (bt * c) as f64,
        4.0 * f * (bt * c) as f64,
        ceil,
    ));

    // the linear layers of a block, and the LM head
    for (name, ic, oc) in [
        ("qkv", c, 3 * c),
        ("attproj", c, c),
        ("fc", c, 4 * c),
        ("fcproj", 4 * c, c),
        ("lm_head", c, vp),
    ] {
        let inp = random_sets(bt * ic, 20 + ic as u64, 1.0);
        let wt = random_sets(oc * ic, 21 + oc as u64, 0.02);
        let bs = random_vec(oc, 22, 0.02);
        let d = random_sets(bt * oc, 23 + oc as u64, 1.0);
        let mut y = vec![0.0f32; bt * oc];
        let gemm_flops = 2.0 * (bt * ic * oc) as f64;
        let gemm_bytes = f * (bt * ic + ic * oc + bt * oc) as f64;
        let shape = format!("rows={bt} IC={ic} OC={oc}");
        let st = measure(m, |i| {
            ops::matmul_forward(&mut y, &inp[i], &wt[i], Some(&bs), bt, ic, oc)
        });
        out.push(kernel_entry(
            &format!("matmul_forward/{name}"),
            shape.clone(),
            st,
            gemm_flops,
            gemm_bytes,
            ceil,
        ));
        let mut dinp = vec![0.0f32; bt * ic];
        let st = measure(m, |i| {
            ops::matmul_backward_input(&mut dinp, &d[i], &wt[i], bt, ic, oc)
        });
        out.push(kernel_entry(
            &format!("matmul_backward_input/{name}"),
            shape.clone(),
            st,
            gemm_flops,
            gemm_bytes,
            ceil,
        ));
        let mut dwt = vec![0.0f32; oc * ic];
        let st = measure(m, |i| {
            ops::matmul_backward_weight(&mut dwt, &d[i], &inp[i], bt, ic, oc)
        });
        out.push(kernel_entry(
            &format!("matmul_backward_weight/{name}"),
            shape.clone(),
            st,
            gemm_flops,
            gemm_bytes + f * (oc * ic) as f64,
            ceil,
        ));
        if name != "lm_head" {
            let mut dbias = vec![0.0f32; oc];
            let st = measure(m, |i| ops::bias_backward(&mut dbias, &d[i], bt, oc));
            out.push(kernel_entry(
                &format!("bias_backward/{name}"),
                shape,
                st,
                (bt * oc) as f64,
                f * (bt * oc) as f64,
                ceil,
            ));
        }
    }

    // GELU
    let pre = random_sets(bt * 4 * c, 30, 2.0);
    let mut g = vec![0.0f32; bt * 4 * c];
    let st = measure(m, |i| ops::gelu_forward(&mut g, &pre[i]));
    out.push(kernel_entry(
        "gelu_forward",
        format!("N={}", bt * 4 * c),
        st,
        12.0 * (bt * 4 * c) as f64,
        2.0 * f * (bt * 4 * c) as f64,
        ceil,
    ));
    let st = measure(m, |i| ops::gelu_backward_inplace(&mut g, &pre[i]));
    out.push(kernel_entry(
        "gelu_backward",
        format!("N={}", bt * 4 * c),
        st,
        20.0 * (bt * 4 * c) as f64,
        3.0 * f * (bt * 4 * c) as f64,
        ceil,
    ));

    // attention (FLOPs of the causal half actually computed: QK^T and PV, backward 2.5x that)
    let qkv = random_sets(bt * 3 * c, 40, 1.0);
    let (mut ao, mut lse) = (vec![0.0f32; bt * c], vec![0.0f32; b * nh * t]);
    let att_flops = 2.0 * 2.0 * (b * t * (t + 1) / 2 * c) as f64;
    let shape = format!("B={b} T={t} C={c} NH={nh}");
    let st = measure(m, |i| {
        ops::attention_forward(&mut ao, &mut lse, &qkv[i], b, t, c, nh)
    });
    out.push(kernel_entry(
        "attention_forward",
        shape.clone(),
        st,
        att_flops,
        f * (bt * 4 * c) as f64,
        ceil,
    ));
    let mut dqkv = vec![0.0f32; bt * 3 * c];
    let st = measure(m, |i| {
        ops::attention_backward(&mut dqkv, &dout[i], &qkv[i], &ao, &lse, b, t, c, nh)
    });
    out.push(kernel_entry(
        "attention_backward",
        shape,
        st,
        2.5 * att_flops,
        f * (bt * 8 * c) as f64,
        ceil,
    ));

    // classifier (fused softmax + loss + dlogits); it overwrites the logits, so each repetition
    // first restores them, and that copy is timed too (documented in perf/README.md)
    let logits = random_sets(bt * vp, 50, 3.0);
    let mut lg = vec![0.0f32; bt * vp];
    let mut losses = vec![0.0f32; bt];
    let st = measure(m, |i| {
        lg.copy_from_slice(&logits[i]);
        ops::classifier(
            &mut lg,
            &mut losses,
            &tokens[i],
            vp,
            v,
            Some(1.0 / bt as f32),
        );
    });
    out.push(kernel_entry(
        "classifier+restore",
        format!("BT={bt} Vp={vp}"),
        st,
        6.0 * (bt * v) as f64,
        4.0 * f * (bt * vp) as f64,
        ceil,
    ));

    // optimizer over the whole model
    let n = gpt.params.total;
    let grads = random_sets(n, 60, 1e-3);
    let st = measure(m, |i| {
        std::hint::black_box(ops::sum_of_squares(&grads[i]));
    });
    out.push(kernel_entry(
        "grad_norm",
        format!("N={n}"),
        st,
        2.0 * n as f64,
        f * n as f64,
        ceil,
    ));
    let (mut p, mut mm, mut vv) = (
        random_vec(n, 61, 0.02),
        random_vec(n, 62, 1e-4),
        random_vec(n, 63, 1e-8)
            .iter()
            .map(|x| x.abs())
            .collect::<Vec<_>>(),
    );
    let hp = AdamW {
        lr: 1e-4,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        t: 10,
        grad_scale: 1.0,
    };
    let st = measure(m, |i| {
        ops::adamw_update(&mut p, &grads[i], &mut mm, &mut vv, &hp, true)
    });
    out.push(kernel_entry(
        "adamw",
        format!("N={n}"),
        st,
        12.0 * n as f64,
        7.0 * f * n as f64,
        ceil,
    ));
    out
}

// ---------------------------------------------------------------------------------------------
// step suite

/// The phases a step's wall time is split into.
const PHASES: [&str; 7] = [
    "forward",
    "attention",
    "backward_gemm",
    "quantization",
    "backward_other",
    "optimizer",
    "other",
];

/// A `Backend` that delegates every call and adds its wall time to a phase. `backward_gemm` is
/// `linear_backward` (dgrad + wgrad + bias grad) less the operand preparation of the MXFP4 modes
/// (gather, RHT, quantization), which the backend reports in its telemetry and which goes to
/// `quantization`. A GPU backend runs asynchronously: with
/// `sync_each_op` every call waits for its work, so the phases are real (at the cost of the
/// launch gaps the waits add; the step time is measured without them).
struct TimedBackend {
    inner: Box<dyn Backend>,
    sync_each_op: bool,
    phase_s: RefCell<[f64; PHASES.len()]>,
}

impl TimedBackend {
    fn timed<T>(&self, phase: usize, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let r = f();
        if self.sync_each_op {
            let _ = self.inner.synchronize();
        }
        self.phase_s.borrow_mut()[phase] += t.elapsed().as_secs_f64();
        r
    }
    fn take(&self) -> [f64; PHASES.len()] {
        std::mem::take(&mut *self.phase_s.borrow_mut())
    }
}

const FWD: usize = 0;
const ATT: usize = 1;
const BWG: usize = 2;
const QNT: usize = 3;
const BWO: usize = 4;
const OPT: usize = 5;
const OTH: usize = 6;

#[rustfmt::skip]
impl Backend for TimedBackend {
    fn info(&self) -> BackendInfo { self.inner.info() }
    fn write(&mut self, dst: TensorRef, values: &[f32]) -> BResult<()> { self.inner.write(dst, values) }
    fn read(&self, src: TensorRef) -> BResult<Vec<f32>> { self.timed(OTH, || self.inner.read(src)) }
    fn read_optimizer(&self) -> BResult<(Vec<f32>, Vec<f32>, Vec<f32>)> { self.inner.read_optimizer() }
    fn write_optimizer(&mut self, master: &[f32], m: &[f32], v: &[f32]) -> BResult<()> { self.inner.write_optimizer(master, m, v) }
    fn set_mx_config(&mut self, cfg: MxConfig) -> BResult<()> { self.inner.set_mx_config(cfg) }
    fn take_mx_telemetry(&mut self) -> MxTelemetry {
        let t = self.inner.take_mx_telemetry();
        let phases = self.phase_s.get_mut();
        phases[BWG] -= t.quantize_seconds;
        phases[QNT] += t.quantize_seconds;
        t
    }
    fn synchronize(&self) -> BResult<()> { self.inner.synchronize() }
    fn set_tokens(&mut self, inputs: &[u32], targets: Option<&[u32]>) -> BResult<()> {
        let t = Instant::now(); let r = self.inner.set_tokens(inputs, targets); self.add(OTH, t); r
    }
    fn zero_grads(&mut self) -> BResult<()> { let t = Instant::now(); let r = self.inner.zero_grads(); self.add(OTH, t); r }
    fn encoder_forward(&mut self, out: TensorRef, wte: TensorRef, wpe: TensorRef, t: usize, c: usize) -> BResult<()> {
        let s = Instant::now(); let r = self.inner.encoder_forward(out, wte, wpe, t, c); self.add(FWD, s); r
    }
    fn layernorm_forward(&mut self, out: TensorRef, mean: TensorRef, rstd: TensorRef, inp: TensorRef, w: TensorRef, b: TensorRef, c: usize) -> BResult<()> {
        let s = Instant::now(); let r = self.inner.layernorm_forward(out, mean, rstd, inp, w, b, c); self.add(FWD, s); r
    }
    fn residual_layernorm_forward(&mut self, res_out: TensorRef, ln_out: TensorRef, mean: TensorRef, rstd: TensorRef, res_in: TensorRef, delta: TensorRef, w: TensorRef, b: TensorRef, c: usize) -> BResult<()> {
        let s = Instant::now(); let r = self.inner.residual_layernorm_forward(res_out, ln_out, mean, rstd, res_in, delta, w, b, c); self.add(FWD, s); r
    }
    fn matmul_forward(&mut self, out: TensorRef, inp: TensorRef, w: TensorRef, bias: Option<TensorRef>, gelu_out: Option<TensorRef>, rows: usize, ic: usize, oc: usize) -> BResult<()> {
        let s = Instant::now(); let r = self.inner.matmul_forward(out, inp, w, bias, gelu_out, rows, ic, oc); self.add(FWD, s); r
    }
    fn attention_forward(&mut self, out: TensorRef, lse: TensorRef, qkv: TensorRef, b: usize, t: usize, c: usize, nh: usize) -> BResult<()> {
        let s = Instant::now(); let r = self.inner.attention_forward(out, lse, qkv, b, t, c, nh); self.add(ATT, s); r
    }
    fn classifier(&mut self, logits: TensorRef, losses: TensorRef, vp: usize, v: usize, dloss: Option<f32>) -> BResult<()> {
        let s = Instant::now(); let r = self.inner.classifier(logits, losses, vp, v, dloss); self.add(FWD, s); r
    }
    fn encoder_backward(&mut self, dwte: TensorRef, dwpe: TensorRef, dout: TensorRef, t: usize, c: usize) -> BResult<()> {
        let s = Instant::now(); let r = self.inner.encoder_backward(dwte, dwpe, dout, t, c); self.add(BWO, s); r
    }
    fn layernorm_backward(&mut self, dinp: TensorRef, dw: TensorRef, db: TensorRef, dout: TensorRef, inp: TensorRef, w: TensorRef, mean: TensorRef, rstd: TensorRef, c: usize) -> BResult<()> {
        let s = Instant::now(); let r = self.inner.layernorm_backward(dinp, dw, db, dout, inp, w, mean, rstd, c); self.add(BWO, s); r
    }
    fn linear_backward(&mut self, dinp: TensorRef, dw: TensorRef, dbias: Option<TensorRef>, dout: TensorRef, inp: TensorRef, w: TensorRef, rows: usize, ic: usize, oc: usize, prec: Option<LinearBackward>) -> BResult<()> {
        let s = Instant::now(); let r = self.inner.linear_backward(dinp, dw, dbias, dout, inp, w, rows, ic, oc, prec); self.add(BWG, s); r
    }
    fn gelu_backward(&mut self, d: TensorRef, pre: TensorRef) -> BResult<()> {
        let s = Instant::now(); let r = self.inner.gelu_backward(d, pre); self.add(BWO, s); r
    }
    fn attention_backward(&mut self, dqkv: TensorRef, dout: TensorRef, qkv: TensorRef, out: TensorRef, lse: TensorRef, b: usize, t: usize, c: usize, nh: usize) -> BResult<()> {
        let s = Instant::now(); let r = self.inner.attention_backward(dqkv, dout, qkv, out, lse, b, t, c, nh); self.add(ATT, s); r
    }
    fn zero(&mut self, t: TensorRef) -> BResult<()> { let s = Instant::now(); let r = self.inner.zero(t); self.add(BWO, s); r }
    fn grad_norm(&mut self) -> BResult<f32> { let s = Instant::now(); let r = self.inner.grad_norm(); self.add(OPT, s); r }
    fn adamw(&mut self, hp: &AdamW) -> BResult<()> { let s = Instant::now(); let r = self.inner.adamw(hp); self.add(OPT, s); r }
}

impl TimedBackend {
    fn add(&mut self, phase: usize, since: Instant) {
        if self.sync_each_op {
            let _ = self.inner.synchronize();
        }
        self.phase_s.get_mut()[phase] += since.elapsed().as_secs_f64();
    }
}

/// Where the step suite runs, and the GPU's energy counter when there is one.
struct BenchDevice {
    gpu: bool,
    /// `--mx-gemm` for the MXFP4 modes on the GPU.
    mx_gemm: gpt::cuda::MxGemmChoice,
    counters: Option<runtime::counters::Counters>,
}

impl BenchDevice {
    fn backend(&self, gpt: &Gpt) -> Result<Box<dyn Backend>, String> {
        if self.gpu {
            gpu_backend(gpt, self.mx_gemm)
        } else {
            Ok(Box::new(
                CpuBackend::new(&gpt.cfg, gpt.batch, gpt.seq).map_err(|e| e.0)?,
            ))
        }
    }

    /// The GPU's energy counter in millijoules (None on the CPU or without NVML).
    fn energy_mj(&self) -> Option<u64> {
        self.counters.as_ref().and_then(|c| c.sample().energy_mj)
    }
}

fn gpu_backend(gpt: &Gpt, mx_gemm: gpt::cuda::MxGemmChoice) -> Result<Box<dyn Backend>, String> {
    let mut be = gpt::cuda::CudaBackend::new(0, &gpt.cfg, gpt.batch, gpt.seq).map_err(|e| e.0)?;
    be.set_mx_gemm(mx_gemm).map_err(|e| e.0)?;
    Ok(Box::new(be))
}

/// The kernels suite on the GPU (tools::gpu_bench), as result entries, and the GPU's ceilings
/// (`sgemm_gflops` is then the BF16 tensor-core GEMM's rate).
fn gpu_kernels_suite(gpt: &Gpt, m: &Method) -> Result<(Vec<Value>, Ceilings), String> {
    let g = runtime::cuda::Gpu::new(0).map_err(|e| format!("--device cuda: {e}"))?;
    let gc = tools::gpu_bench::ceilings(&g, m.warmup, m.reps).map_err(|e| e.to_string())?;
    let ceil = Ceilings {
        copy_gbps: gc.copy_gbps,
        sgemm_gflops: gc.gemm_tflops * 1e3,
        sgemm_n: gc.gemm_n,
        copy_bytes: gc.copy_bytes,
    };
    eprintln!(
        "ceilings: copy {:.1} GB/s, bf16 GEMM {:.1} TFLOP/s at {}^3",
        gc.copy_gbps, gc.gemm_tflops, gc.gemm_n
    );
    let timings =
        tools::gpu_bench::kernels(&g, gpt, m.warmup, m.reps).map_err(|e| e.to_string())?;
    let entries = timings
        .into_iter()
        .map(|t| {
            kernel_entry(
                &t.name,
                t.shape,
                Stats::from_samples(t.samples_ms),
                t.flops,
                t.bytes,
                &ceil,
            )
        })
        .collect();
    Ok((entries, ceil))
}

fn gpu_name() -> Result<String, String> {
    Ok(runtime::cuda::Gpu::new(0)
        .map_err(|e| format!("--device cuda: {e}"))?
        .props()
        .name
        .clone())
}

/// One training step per repetition; a mode whose backward fails (the MXFP4 GEMM not built in
/// yet, say) is recorded with its error instead of numbers.
fn step_entry(
    gpt: &Gpt,
    mode: BackwardMode,
    m: &Method,
    ceil: &Ceilings,
    dev: &BenchDevice,
) -> Value {
    let name = format!("step/{}", mode.name());
    let shape = format!(
        "model={} B={} T={}",
        model_label(&gpt.cfg),
        gpt.batch,
        gpt.seq
    );
    eprintln!("  {name}: {shape}");
    match run_steps(gpt, mode, m, dev) {
        Ok((st, phases, joules_per_step)) => {
            let tokens = gpt.tokens_per_batch() as f64;
            let tokens_per_s = tokens / (st.median * 1e-3);
            let fpt = gpt.cfg.flops_per_token(gpt.seq);
            // A GPU's peak comes from the device table; the CPU's is the bench's own sgemm
            // ceiling. MXGPT_PEAK_TFLOPS overrides both.
            let peak_name = if dev.gpu {
                gpu_name().unwrap_or_default()
            } else {
                String::new()
            };
            let peak = match runtime::counters::peak_tflops(&peak_name) {
                Ok(Some(p)) => p,
                _ if dev.gpu => f64::NAN,
                _ => ceil.sgemm_gflops / 1e3,
            };
            let joules_per_token = joules_per_step.map(|j| j / tokens);
            let mfu = runtime::counters::mfu(fpt, tokens_per_s, peak);
            eprintln!(
                "  {name:<36} {:>10.3} ms/step, {tokens_per_s:.2} tok/s, MFU {:.1}%",
                st.median,
                100.0 * mfu
            );
            let phase_json: BTreeMap<&str, f64> =
                PHASES.iter().zip(phases).map(|(p, s)| (*p, s)).collect();
            json!({"suite": "step", "name": name, "shape": shape, "mode": mode.name(), "stats": st.json(),
                   "tokens_per_step": tokens, "tokens_per_s": tokens_per_s, "flops_per_token": fpt,
                   "peak_tflops": if peak.is_finite() { json!(peak) } else { Value::Null },
                   "mfu": if mfu.is_finite() { json!(mfu) } else { Value::Null },
                   "joules_per_token": joules_per_token, "phase_ms": phase_json})
        }
        Err(e) => {
            eprintln!("  {name}: {e}");
            json!({"suite": "step", "name": name, "shape": shape, "mode": mode.name(), "error": e})
        }
    }
}

fn model_label(cfg: &ModelConfig) -> String {
    gpt::config::MODEL_NAMES
        .iter()
        .find(|(_, l, c, h, t)| {
            (*l, *c, *h, *t) == (cfg.layers, cfg.channels, cfg.heads, cfg.max_seq)
        })
        .map(|m| m.0.to_string())
        .unwrap_or_else(|| format!("L{}C{}", cfg.layers, cfg.channels))
}

/// Median step stats, the median per-phase milliseconds and, on a GPU with NVML, the joules
/// per step over the measured steps.
fn run_steps(
    gpt: &Gpt,
    mode: BackwardMode,
    m: &Method,
    dev: &BenchDevice,
) -> Result<(Stats, [f64; PHASES.len()], Option<f64>), String> {
    let mut be = TimedBackend {
        inner: dev.backend(gpt)?,
        sync_each_op: false,
        phase_s: RefCell::new([0.0; PHASES.len()]),
    };
    be.write(
        TensorRef {
            arena: Arena::Params,
            offset: 0,
            len: gpt.params.total,
        },
        &gpt.init_params(1),
    )
    .map_err(|e| e.0)?;
    be.set_mx_config(MxConfig {
        mode,
        hadamard_block: 64,
        seed: 1,
    })
    .map_err(|e| e.0)?;
    let plan = PrecisionPlan::uniform(mode, gpt.cfg.layers);
    let bt = gpt.tokens_per_batch();
    let toks: Vec<(Vec<u32>, Vec<u32>)> = (0..ROTATE)
        .map(|i| {
            (
                random_tokens(bt, gpt.cfg.vocab, 100 + i as u64),
                random_tokens(bt, gpt.cfg.vocab, 200 + i as u64),
            )
        })
        .collect();
    let mut step_no = 0u32;
    let mut error = None;
    let mut phase_samples: Vec<[f64; PHASES.len()]> = Vec::new();
    let mut one_step = |i: usize, be: &mut TimedBackend| -> Result<(), String> {
        step_no += 1;
        be.set_tokens(&toks[i].0, Some(&toks[i].1))
            .map_err(|e| e.0)?;
        be.zero_grads().map_err(|e| e.0)?;
        gpt.forward_backward(be, &plan, step_no, 0, 1.0 / bt as f32)
            .map_err(|e| e.0)?;
        // Moves the MXFP4 operand preparation out of backward_gemm into quantization.
        be.take_mx_telemetry();
        let norm = be.grad_norm().map_err(|e| e.0)?;
        let clip = if norm > 1.0 { 1.0 / norm } else { 1.0 };
        be.adamw(&AdamW {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            t: step_no as u64,
            grad_scale: clip,
        })
        .map_err(|e| e.0)?;
        // A step is done when its work is: the GPU runs asynchronously.
        be.synchronize().map_err(|e| e.0)
    };
    let total = m.warmup + m.reps;
    let mut done = 0usize;
    let mut energy_mj: Vec<Option<u64>> = Vec::new();
    let st = measure(m, |i| {
        if error.is_some() {
            return;
        }
        be.take();
        if let Err(e) = one_step(i, &mut be) {
            error = Some(e);
        }
        phase_samples.push(be.take().map(|s| s * 1e3));
        energy_mj.push(dev.energy_mj());
        done += 1;
        if total >= 5 && done.is_multiple_of((total / 5).max(1)) {
            eprintln!("    {done}/{total}+ steps");
        }
    });
    if let Some(e) = error {
        return Err(e);
    }
    // Energy over the measured steps (after the warm-up), from NVML's total-energy counter.
    let joules_per_step = match (
        m.warmup.checked_sub(1).and_then(|i| energy_mj.get(i)),
        energy_mj.last(),
    ) {
        (Some(Some(a)), Some(Some(b))) if energy_mj.len() > m.warmup && b > a => {
            Some((b - a) as f64 * 1e-3 / (energy_mj.len() - m.warmup) as f64)
        }
        _ => None,
    };
    let mut kept = phase_samples[m.warmup.min(phase_samples.len())..].to_vec();
    if dev.gpu {
        // The timed steps ran without waits; a few more with a wait after every op give the
        // per-phase breakdown.
        be.sync_each_op = true;
        kept.clear();
        for i in 0..3 {
            be.take();
            one_step(i % ROTATE, &mut be)?;
            kept.push(be.take().map(|s| s * 1e3));
        }
    }
    let mut phases = [0.0; PHASES.len()];
    for (p, slot) in phases.iter_mut().enumerate() {
        *slot = Stats::from_samples(kept.iter().map(|s| s[p]).collect()).median;
    }
    Ok((st, phases, joules_per_step))
}

fn parse_modes(s: &str) -> Result<Vec<BackwardMode>, String> {
    if s == "all" {
        return Ok(BackwardMode::ALL.to_vec());
    }
    s.split(',').map(|m| m.trim().parse()).collect()
}

// ---------------------------------------------------------------------------------------------
// Output

fn print_table(doc: &Value) {
    println!(
        "{} ({}), {} threads, commit {}; ceilings: copy {:.1} GB/s, sgemm {:.1} GFLOP/s",
        doc["device_name"].as_str().unwrap_or("?"),
        doc["backend"].as_str().unwrap_or("?"),
        doc["threads"],
        doc["commit"].as_str().unwrap_or("?"),
        doc["ceilings"]["copy_gbps"].as_f64().unwrap_or(0.0),
        doc["ceilings"]["sgemm_gflops"].as_f64().unwrap_or(0.0)
    );
    println!(
        "{:<36} {:>11} {:>17} {:>20} {:>8}  shape",
        "entry", "median ms", "min..max ms", "rate", "% ceil"
    );
    for e in doc["entries"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap_or("?");
        if let Some(err) = e["error"].as_str() {
            println!("{name:<36} error: {err}");
            continue;
        }
        let s = &e["stats"];
        let rate = if e["suite"] == "step" {
            let tps = e["tokens_per_s"].as_f64().unwrap_or(0.0);
            if tps < 100.0 {
                format!("{tps:.2} tok/s")
            } else {
                format!("{tps:.0} tok/s")
            }
        } else if e["bound"] == "compute" {
            format!("{:.2} GFLOP/s", e["gflops"].as_f64().unwrap_or(0.0))
        } else {
            format!("{:.2} GB/s", e["gbps"].as_f64().unwrap_or(0.0))
        };
        let pct = e["pct_of_ceiling"]
            .as_f64()
            .or(e["mfu"].as_f64().map(|m| 100.0 * m))
            .unwrap_or(0.0);
        println!(
            "{name:<36} {:>11.3} {:>17} {rate:>20} {pct:>7.1}%  {}",
            s["median_ms"].as_f64().unwrap_or(0.0),
            format!(
                "{:.3}..{:.3}",
                s["min_ms"].as_f64().unwrap_or(0.0),
                s["max_ms"].as_f64().unwrap_or(0.0)
            ),
            e["shape"].as_str().unwrap_or("")
        );
        if let Some(ph) = e["phase_ms"].as_object() {
            let parts: Vec<String> = ph
                .iter()
                .map(|(k, v)| format!("{k} {:.2}", v.as_f64().unwrap_or(0.0)))
                .collect();
            println!("{:<36} phases ms: {}  (% = MFU)", "", parts.join(", "));
        }
    }
}

fn write_atomic(path: &Path, text: &str) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .map_err(|e| format!("cannot rename {} to {}: {e}", tmp.display(), path.display()))
}

fn read_json(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not valid JSON: {e}", path.display()))?;
    if !v["entries"].is_array() {
        return Err(format!(
            "{} has no \"entries\" array: not a bench result file",
            path.display()
        ));
    }
    Ok(v)
}

fn slug(s: &str) -> String {
    let mut out = String::new();
    for ch in s.chars() {
        if ch.is_ascii_alphanumeric() {
            out.push(ch.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-')
        .replace("-cpu", "")
        .chars()
        .take(48)
        .collect()
}

/// ("2026-11-23T06:41:17Z", "20261123-064117") from the system clock (UTC).
fn utc_now() -> (String, String) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86400, secs % 86400);
    // civil-from-days (Howard Hinnant's algorithm)
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (mo <= 2) as i64;
    let (h, mi, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    (
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z"),
        format!("{y:04}{mo:02}{d:02}-{h:02}{mi:02}{s:02}"),
    )
}

// ---------------------------------------------------------------------------------------------
// Regression comparison

fn parse_tolerance(s: &str) -> Result<f64, String> {
    let (num, scale) = match s.strip_suffix('%') {
        Some(n) => (n, 0.01),
        None => (s, 1.0),
    };
    let v: f64 = num.trim().parse().map_err(|_| {
        format!("--tolerance '{s}': expected a percentage like 5% or a fraction like 0.05")
    })?;
    if !(v >= 0.0 && v.is_finite()) {
        return Err(format!("--tolerance '{s}' must be non-negative"));
    }
    Ok(v * scale)
}

fn compare_files(new: &Path, base: &Path, tolerance: f64) -> Result<i32, String> {
    Ok(compare_docs(&read_json(new)?, &read_json(base)?, tolerance))
}

/// Compares entries present in both (matched by suite, name and shape); prints a table and
/// returns 1 if any is a regression: new median slower than the baseline's by more than the
/// tolerance AND by more than the two interquartile ranges together (so noise does not fail).
fn compare_docs(new: &Value, base: &Value, tolerance: f64) -> i32 {
    let key = |e: &Value| {
        format!(
            "{}|{}|{}",
            e["suite"].as_str().unwrap_or(""),
            e["name"].as_str().unwrap_or(""),
            e["shape"].as_str().unwrap_or("")
        )
    };
    let base_by_key: BTreeMap<String, &Value> = base["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| (key(e), e))
        .collect();
    println!(
        "comparison with the baseline (tolerance {:.1}%, noise = the two IQRs added):",
        tolerance * 100.0
    );
    println!(
        "{:<36} {:>11} {:>11} {:>8} {:>9}  verdict",
        "entry", "base ms", "new ms", "change", "noise ms"
    );
    let (mut regressions, mut matched) = (0, 0);
    for e in new["entries"].as_array().into_iter().flatten() {
        let Some(b) = base_by_key.get(&key(e)) else {
            continue;
        };
        let (Some(nm), Some(bm)) = (
            e["stats"]["median_ms"].as_f64(),
            b["stats"]["median_ms"].as_f64(),
        ) else {
            continue;
        };
        matched += 1;
        let iqr = |v: &Value| {
            v["stats"]["q3_ms"].as_f64().unwrap_or(0.0)
                - v["stats"]["q1_ms"].as_f64().unwrap_or(0.0)
        };
        let noise = iqr(e) + iqr(b);
        let slower = nm - bm;
        let verdict = if slower > bm * tolerance && slower > noise {
            regressions += 1;
            "REGRESSION"
        } else if -slower > bm * tolerance && -slower > noise {
            "faster"
        } else {
            "ok"
        };
        println!(
            "{:<36} {bm:>11.3} {nm:>11.3} {:>+7.1}% {noise:>9.3}  {verdict}",
            e["name"].as_str().unwrap_or("?"),
            100.0 * slower / bm
        );
    }
    if matched == 0 {
        println!("no entries in common with the baseline (different model, shapes or suites?)");
    }
    if regressions > 0 {
        eprintln!("bench: {regressions} regression(s) against the baseline");
        1
    } else {
        0
    }
}

// ---------------------------------------------------------------------------------------------
// Plots (hand-written SVG)

fn plot(files: &[String], results_dir: &Path, plots_dir: &Path) -> Result<i32, String> {
    let mut all: Vec<PathBuf> = std::fs::read_dir(results_dir)
        .map_err(|e| format!("cannot list {}: {e}", results_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    all.sort();
    let chosen: Vec<PathBuf> = if files.is_empty() {
        all.iter().rev().take(2).rev().cloned().collect()
    } else {
        files.iter().map(PathBuf::from).collect()
    };
    if chosen.is_empty() {
        return Err(format!(
            "no result files to plot in {}",
            results_dir.display()
        ));
    }
    let docs: Vec<(String, Value)> = chosen
        .iter()
        .map(|p| Ok((label_of(p), read_json(p)?)))
        .collect::<Result<_, String>>()?;
    let cmp = plots_dir.join("comparison.svg");
    std::fs::create_dir_all(plots_dir)
        .map_err(|e| format!("cannot create {}: {e}", plots_dir.display()))?;
    write_atomic(&cmp, &comparison_svg(&docs))?;
    eprintln!("wrote {}", cmp.display());
    let mut hist_docs = Vec::new();
    for p in &all {
        let d = read_json(p)?;
        hist_docs.push((d["date"].as_str().unwrap_or("").to_string(), label_of(p), d));
    }
    hist_docs.sort_by(|a, b| a.0.cmp(&b.0));
    let hist = plots_dir.join("history.svg");
    write_atomic(&hist, &history_svg(&hist_docs))?;
    eprintln!("wrote {}", hist.display());
    Ok(0)
}

fn label_of(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

const COLORS: [&str; 6] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
];

/// (entry label "name [shape]", median ms) of every measured entry; the shape is part of the
/// label so runs of different models or sizes never share a bar or a line.
fn entry_medians(d: &Value) -> Vec<(String, f64)> {
    d["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            Some((
                format!(
                    "{} [{}]",
                    e["name"].as_str()?,
                    e["shape"].as_str().unwrap_or("")
                ),
                e["stats"]["median_ms"].as_f64()?,
            ))
        })
        .collect()
}

/// Horizontal bars: per entry, one bar per file, length = median relative to the first file.
fn comparison_svg(docs: &[(String, Value)]) -> String {
    let names: Vec<String> = entry_medians(&docs[0].1)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let per: Vec<BTreeMap<String, f64>> = docs
        .iter()
        .map(|(_, d)| entry_medians(d).into_iter().collect())
        .collect();
    let bar_h = 10.0;
    let group_h = bar_h * docs.len() as f64 + 8.0;
    let (left, width) = (260.0, 420.0);
    let top = 30.0 + 14.0 * docs.len() as f64;
    let height = top + group_h * names.len() as f64 + 20.0;
    let per = &per;
    let max_rel = names
        .iter()
        .flat_map(|n| {
            per.iter()
                .filter_map(move |m| Some(m.get(n)? / per[0].get(n)?))
        })
        .fold(1.0f64, f64::max);
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" font-family=\"monospace\" font-size=\"10\">\n", left + width + 120.0);
    s += "<text x=\"4\" y=\"14\" font-size=\"12\">median time relative to the first file (shorter is faster)</text>\n";
    for (i, (label, _)) in docs.iter().enumerate() {
        s += &format!("<rect x=\"4\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"18\" y=\"{}\">{}</text>\n", 20.0 + 14.0 * i as f64, COLORS[i % 6], 29.0 + 14.0 * i as f64, esc(label));
    }
    for (g, n) in names.iter().enumerate() {
        let y0 = top + group_h * g as f64;
        s += &format!("<text x=\"4\" y=\"{}\">{}</text>\n", y0 + bar_h, esc(n));
        for (i, m) in per.iter().enumerate() {
            let (Some(v), Some(b)) = (m.get(n), per[0].get(n)) else {
                continue;
            };
            let w = width * (v / b) / max_rel;
            s += &format!(
                "<rect x=\"{left}\" y=\"{}\" width=\"{w:.1}\" height=\"{}\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{v:.3} ms</text>\n",
                y0 + bar_h * i as f64,
                bar_h - 1.0,
                COLORS[i % 6],
                left + w + 4.0,
                y0 + bar_h * (i + 1) as f64 - 1.0
            );
        }
    }
    s + "</svg>\n"
}

/// One line per entry over the result files in date order, each normalized to its first value.
fn history_svg(docs: &[(String, String, Value)]) -> String {
    let mut series: BTreeMap<String, Vec<(usize, f64)>> = BTreeMap::new();
    for (i, (_, _, d)) in docs.iter().enumerate() {
        for (n, v) in entry_medians(d) {
            let shape = d["model"].as_str().unwrap_or("");
            series
                .entry(format!("{shape}:{n}"))
                .or_default()
                .push((i, v));
        }
    }
    let (left, top, w, h) = (50.0, 30.0, 600.0, 300.0);
    let rel: Vec<(String, Vec<(usize, f64)>)> = series
        .into_iter()
        .map(|(k, pts)| {
            let first = pts[0].1;
            (k, pts.into_iter().map(|(i, v)| (i, v / first)).collect())
        })
        .collect();
    let ymax = rel
        .iter()
        .flat_map(|(_, p)| p.iter().map(|x| x.1))
        .fold(1.5f64, f64::max);
    let n = docs.len().max(2) - 1;
    let x = |i: usize| left + w * i as f64 / n as f64;
    let y = |v: f64| top + h - h * v / ymax;
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"monospace\" font-size=\"10\">\n", left + w + 20.0, top + h + 40.0 + 12.0 * docs.len() as f64);
    s += "<text x=\"4\" y=\"14\" font-size=\"12\">median time per entry relative to its first run, over perf/results (lower is faster)</text>\n";
    s += &format!("<line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#999\" stroke-dasharray=\"4\"/><text x=\"4\" y=\"{}\">1.0</text>\n", y(1.0), left + w, y(1.0), y(1.0) + 3.0);
    s += &format!("<line x1=\"{left}\" y1=\"{}\" x2=\"{left}\" y2=\"{}\" stroke=\"#000\"/><text x=\"4\" y=\"{}\">{ymax:.2}</text>\n", top, top + h, top + 8.0);
    for (k, (_, pts)) in rel.iter().enumerate() {
        let path: Vec<String> = pts
            .iter()
            .map(|&(i, v)| format!("{:.1},{:.1}", x(i), y(v)))
            .collect();
        s += &format!("<polyline fill=\"none\" stroke=\"{}\" stroke-opacity=\"0.6\" points=\"{}\"><title>{}</title></polyline>\n", COLORS[k % 6], path.join(" "), esc(&rel[k].0));
    }
    for (i, (date, label, _)) in docs.iter().enumerate() {
        s += &format!(
            "<text x=\"4\" y=\"{}\">{i}: {} {}</text>\n",
            top + h + 20.0 + 12.0 * i as f64,
            esc(date),
            esc(label)
        );
    }
    s + "</svg>\n"
}
