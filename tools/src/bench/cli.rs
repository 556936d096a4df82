//! The command line: flags, the three commands (run, compare, plot) and the order of a run
//! (same-machine check, ceilings, suites, table, result file, baseline comparison).

use super::ceilings::{self, Ceilings, SettleRule};
use super::compare::{compare_docs, compare_files, parse_tolerance, same_machine};
use super::method::Method;
use super::result::{self, RunMeta};
use super::step::{self, BenchDevice};
use super::{kernels, plot};
use argh::FromArgs;
use gpt::config::ModelConfig;
use gpt::cpu::backend::cpu_model_name;
use gpt::dist::Transport;
use gpt::model::Gpt;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(FromArgs)]
/// mxgpt performance benchmarks: `bench [flags]` runs suites; `bench compare NEW --baseline OLD`
/// compares result files; `bench plot [FILES]` renders SVG under perf/plots.
pub struct Args {
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
    /// the ceilings' agreement: the last 3 rounds within this spread, e.g. 5% (default 5%)
    #[argh(option)]
    ceiling_tolerance: Option<String>,
    /// seconds at most per ceiling before it is reported unsettled (default 5; 1 with --quick)
    #[argh(option)]
    ceiling_time: Option<f64>,
    /// directory for the result JSON (default target/bench-results, ignored by git; with
    /// `plot`: the results to plot, default perf/results)
    #[argh(option)]
    out: Option<PathBuf>,
    /// keep the result: write it to perf/results (tracked) instead of target/bench-results
    #[argh(switch)]
    save: bool,
    /// baseline JSON to compare with; exit status 1 on a regression, 2 if it comes from another
    /// device or thread count
    #[argh(option)]
    baseline: Option<PathBuf>,
    /// compare with a baseline from another device or thread count anyway (with a warning)
    #[argh(switch)]
    force: bool,
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

/// The `bench` program: exit 0 ok, 1 regression, 2 usage or I/O error (one line on stderr).
/// Under `mpirun` (feature `mpi`) every rank runs the step suite data-parallel; only rank 0
/// prints and writes the result.
pub fn main() {
    let args: Args = argh::from_env();
    let dist = match gpt::dist::from_env() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::exit(2);
        }
    };
    let (rank, ranks) = (dist.rank(), dist.size());
    // The other ranks stay silent; their errors still reach the terminal.
    let stderr = (rank > 0).then(silence_stdout_and_stderr);
    match run(args, dist.as_ref()) {
        Ok(code) => {
            drop(dist); // finalizes MPI
            std::process::exit(code)
        }
        Err(e) => {
            let line = format!("bench: rank {rank} of {ranks}: {e}\n");
            match stderr {
                Some(mut f) => {
                    use std::io::Write;
                    let _ = f.write_all(line.as_bytes());
                }
                None if ranks > 1 => eprint!("{line}"),
                None => eprintln!("bench: {e}"),
            }
            if ranks > 1 {
                dist.abort(2); // the others may wait in a collective
            }
            std::process::exit(2);
        }
    }
}

/// Points stdout and stderr at /dev/null; returns the original stderr.
fn silence_stdout_and_stderr() -> std::fs::File {
    use std::os::fd::{AsRawFd, FromRawFd};
    let null = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .expect("/dev/null");
    // SAFETY: dup/dup2 on the process's own descriptors; the duplicate is owned by the File.
    unsafe {
        let saved = libc::dup(2);
        libc::dup2(null.as_raw_fd(), 1);
        libc::dup2(null.as_raw_fd(), 2);
        std::fs::File::from_raw_fd(saved)
    }
}

fn run(args: Args, dist: &dyn Transport) -> Result<i32, String> {
    let tolerance = parse_tolerance(&args.tolerance)?;
    if dist.size() > 1 && !matches!(args.command.first().map(String::as_str), None | Some("run")) {
        return Err("compare and plot run in one process, not under mpirun".into());
    }
    match args.command.first().map(String::as_str) {
        None | Some("run") => run_suites(&args, tolerance, dist),
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
            compare_files(Path::new(new), base, tolerance, args.force)
        }
        Some("plot") => {
            let results = args
                .out
                .clone()
                .unwrap_or_else(|| PathBuf::from(result::SAVED_DIR));
            plot::plot(&args.command[1..], &results, &args.plots_dir)
        }
        Some(other) => Err(format!(
            "unknown command '{other}': expected run, compare or plot"
        )),
    }
}

fn run_suites(args: &Args, tolerance: f64, dist: &dyn Transport) -> Result<i32, String> {
    let ranks = dist.size();
    if ranks > 1 {
        data_parallel_setup(args)?;
    }
    let out_dir = result::out_dir(args.out.as_deref(), args.save)?;
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
        // Ranks must agree on the number of steps (each has collectives): no time target.
        min_time: Duration::from_secs_f64(if ranks > 1 {
            0.0
        } else {
            args.min_time.unwrap_or(if q { 0.0 } else { 1.0 })
        }),
    };
    let ceiling_tolerance = match &args.ceiling_tolerance {
        Some(t) => {
            Some(parse_tolerance(t).map_err(|e| e.replace("--tolerance", "--ceiling-tolerance"))?)
        }
        None => None,
    };
    if let Some(t) = args.ceiling_time.filter(|t| !(*t >= 0.0 && t.is_finite())) {
        return Err(format!(
            "--ceiling-time {t}: expected a non-negative number of seconds"
        ));
    }
    let rule = SettleRule::new(ceiling_tolerance, args.ceiling_time, q);
    let (batch, seq) = (
        args.batch.unwrap_or(if q { 1 } else { 4 }),
        args.seq.unwrap_or(if q { 32 } else { 64 }),
    );
    let gpt = Gpt::new(cfg, batch, seq)?;
    let modes = step::parse_modes(&args.backward)?;
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
    let mx_gemm: gpt::cuda::MxGemmChoice = args.mx_gemm.parse()?;
    let device_name = if on_gpu {
        step::gpu_name()?
    } else {
        cpu_model_name()
    };
    let mut meta = RunMeta {
        device: format!(
            "{}-{}",
            if on_gpu { "cuda" } else { "cpu" },
            result::slug(&device_name)
        ),
        device_name,
        gpu: on_gpu,
        threads: runtime::cpu::threads(),
        date: String::new(),
        commit: crate::git_commit(),
        model: args.model.clone(),
        batch,
        seq,
        quick: q,
        mx_gemm: args.mx_gemm.clone(),
        method: m,
        counters: String::new(),
        ranks,
    };
    // A baseline from another machine is refused before anything runs.
    let baseline = match &args.baseline {
        Some(b) => {
            let doc = result::read_json(b)?;
            let warning = same_machine(&meta.identity(), &doc, b, args.force)?;
            if let Some(w) = &warning {
                eprintln!("bench: {w}");
            }
            Some((doc, warning))
        }
        None => None,
    };

    let counters = runtime::counters::Counters::open(0);
    meta.counters = match (&counters, on_gpu) {
        (Ok(c), true) => format!(
            "NVML: {} (energy per token in the step suite)",
            c.device_name
        ),
        (Ok(c), false) => format!("NVML: {} (not used by the cpu suites)", c.device_name),
        (Err(e), _) => e.clone(),
    };
    eprintln!("{}", meta.counters);
    let bench_device = BenchDevice {
        gpu: on_gpu,
        mx_gemm,
        counters: if on_gpu { counters.ok() } else { None },
        dist,
    };

    let mut entries = Vec::new();
    let mut ceil = Ceilings::default();
    if on_gpu && suites.contains(&"kernels") {
        let (e, c) = kernels::gpu_suite(&gpt, &m, &rule)?;
        entries.extend(e);
        ceil = c;
    }
    if !on_gpu && !suites.is_empty() {
        ceil = ceilings::measure_cpu(&m, q, &rule);
        eprintln!("{}", ceil.report("sgemm", "GFLOP/s", 1.0));
    }
    if suites.contains(&"kernels") && !on_gpu {
        entries.extend(kernels::cpu_suite(&gpt, &m, &ceil));
    }
    if suites.contains(&"step") {
        for mode in &modes {
            entries.push(step::step_entry(&gpt, *mode, &m, &ceil, &bench_device));
        }
    }

    if dist.rank() > 0 {
        return Ok(0); // rank 0 reports
    }
    let (date, stamp) = result::utc_now();
    meta.date = date;
    let doc = result::document(&meta, &ceil, entries);
    result::print_table(&doc);
    let text = serde_json::to_string_pretty(&doc).unwrap();
    let path = out_dir.join(result::file_name(&doc, &stamp));
    result::write_text(&path, &text)?;
    if args.out.is_none() && !args.save {
        eprintln!(
            "wrote {} (not tracked by git; --save writes to {})",
            path.display(),
            result::SAVED_DIR
        );
    } else {
        eprintln!("wrote {}", path.display());
    }
    if args.save_baseline {
        let b = args.baselines_dir.join(format!("{}.json", meta.device));
        result::write_text(&b, &text)?;
        eprintln!("wrote baseline {}", b.display());
    }
    match baseline {
        Some((base, warning)) => Ok(compare_docs(&doc, &base, tolerance, warning.as_deref())),
        None => Ok(0),
    }
}

/// What a data-parallel bench (`mpirun -np N bench`) accepts, checked before any work; ranks on
/// one machine split its cores, as the trainer's do.
fn data_parallel_setup(args: &Args) -> Result<(), String> {
    if args.suite != "step" {
        return Err(format!(
            "under mpirun the bench runs the step suite only (the collectives are part of a step): pass --suite step, not --suite {}",
            args.suite
        ));
    }
    if args.device != "cpu" {
        return Err("under mpirun the bench runs on the CPU backend only (data parallel on --device cuda: not in the bench yet)".into());
    }
    if args.min_time.is_some() {
        return Err("--min-time: under mpirun every rank runs exactly --warmup + --reps steps (the ranks must agree); use --reps".into());
    }
    if args.save_baseline || args.baseline.is_some() {
        return Err("--baseline / --save-baseline compare one-process runs; under mpirun, compare result files by hand".into());
    }
    let local = ["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"]
        .iter()
        .find_map(|k| std::env::var(k).ok()?.parse::<usize>().ok());
    if let (Some(n), None) = (local, std::env::var_os("MXGPT_THREADS")) {
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
        std::env::set_var("MXGPT_THREADS", (cores / n).max(1).to_string());
    }
    Ok(())
}
