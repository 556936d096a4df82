//! `tools/mx`: MXFP4 numerics from the command line — quantize a tensor, run the backward GEMM in
//! any mode, or report quantization error with and without the random Hadamard transform. It
//! calls exactly the code the CPU backend trains with (gpt::mx), so it also serves to check the
//! numerics from outside (e.g. against a PyTorch or GPU implementation).
//!
//! Files are raw little-endian f32. Conventions fixed here (a checker needs them):
//! - quantize: the input is one row; blocks are consecutive 32 values; SR uses stream
//!   `--stream` (default 0) with the element's position as counter.
//! - gemm: the GEMM identity is step `--step` (default 0), micro step 0, layer 0, QKV, dgrad.

use argh::FromArgs;
use gpt::cpu::gemm::MatRef;
use gpt::mx::{
    self, format, hadamard, GemmId, GemmKind, LinearKind, MxConfig, MxTelemetry, Rounding,
};
use gpt::precision::BackwardMode;
use std::path::PathBuf;
use tools::{read_f32_file, write_atomic, write_f32_file};

/// MXFP4 numerics: quantize, gemm, stats.
#[derive(FromArgs)]
struct Args {
    #[argh(subcommand)]
    cmd: Cmd,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Cmd {
    Quantize(Quantize),
    Gemm(Gemm),
    Stats(Stats),
}

/// quantize a tensor to MXFP4 and write the dequantized values (and the packed encoding)
#[derive(FromArgs)]
#[argh(subcommand, name = "quantize")]
struct Quantize {
    /// rtn or sr
    #[argh(option)]
    rounding: String,
    /// seed of the SR generator (default 0)
    #[argh(option, default = "0")]
    seed: u64,
    /// SR stream id (default 0)
    #[argh(option, default = "0")]
    stream: u64,
    /// raw f32 input; length a multiple of 32
    #[argh(option)]
    input: PathBuf,
    /// raw f32 output: the dequantized values (SR includes the 4/3)
    #[argh(option)]
    output: PathBuf,
    /// optional: scale bytes (one per block) followed by the packed codes (low nibble first)
    #[argh(option)]
    packed: Option<PathBuf>,
}

/// C = A·B through the CPU backend's backward-GEMM path
#[derive(FromArgs)]
#[argh(subcommand, name = "gemm")]
struct Gemm {
    /// rows of A and C
    #[argh(option)]
    m: usize,
    /// columns of B and C
    #[argh(option)]
    n: usize,
    /// the reduction dimension
    #[argh(option)]
    k: usize,
    /// raw f32, M x K row-major
    #[argh(option)]
    a: PathBuf,
    /// raw f32, K x N row-major
    #[argh(option)]
    b: PathBuf,
    /// raw f32 output, M x N row-major
    #[argh(option)]
    output: PathBuf,
    /// bf16, mxfp4-rtn, mxfp4-rht, mxfp4-sr or mxfp4
    #[argh(option)]
    backward: String,
    /// seed of the SR noise and RHT signs (default 0)
    #[argh(option, default = "0")]
    seed: u64,
    /// step of the GEMM identity, for fresh draws (default 0)
    #[argh(option, default = "0")]
    step: u32,
    /// the Hadamard block g for the RHT modes (default 64)
    #[argh(option, default = "64")]
    hadamard_block: usize,
}

/// report quantization error with and without the random Hadamard transform
#[derive(FromArgs)]
#[argh(subcommand, name = "stats")]
struct Stats {
    /// raw f32 input; length a multiple of 32 (and of the Hadamard block)
    #[argh(option)]
    input: PathBuf,
    /// rtn or sr (default rtn)
    #[argh(option, default = "String::from(\"rtn\")")]
    rounding: String,
    /// the Hadamard block g (default 64)
    #[argh(option, default = "64")]
    hadamard_block: usize,
    /// seed for SR and the signs (default 0)
    #[argh(option, default = "0")]
    seed: u64,
}

fn main() {
    let args: Args = argh::from_env();
    let r = match args.cmd {
        Cmd::Quantize(q) => quantize(q),
        Cmd::Gemm(g) => gemm(g),
        Cmd::Stats(s) => stats(s),
    };
    if let Err(e) = r {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// Reads an input tensor, rejecting NaN/Inf (naming the index) and lengths not a multiple of
/// `multiple`.
fn read_input(path: &PathBuf, multiple: usize, what: &str) -> Result<Vec<f32>, String> {
    let x = read_f32_file(path)?;
    if x.is_empty() || x.len() % multiple != 0 {
        return Err(format!(
            "{}: {} values; {what} needs a non-empty multiple of {multiple}",
            path.display(),
            x.len()
        ));
    }
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        return Err(format!(
            "{}: value {i} is {} (NaN/Inf input cannot be quantized)",
            path.display(),
            x[i]
        ));
    }
    Ok(x)
}

fn quantize(q: Quantize) -> Result<(), String> {
    let rounding: Rounding = q.rounding.parse()?;
    let x = read_input(
        &q.input,
        format::BLOCK,
        "MXFP4 quantization (32-element blocks)",
    )?;
    let (op, _) =
        mx::quantize_rows(&x, 1, x.len(), rounding, q.seed, q.stream).map_err(|e| e.to_string())?;
    write_f32_file(&q.output, &op.dequantize(rounding == Rounding::Sr))?;
    if let Some(p) = &q.packed {
        write_atomic(p, &op.to_bytes())?;
    }
    Ok(())
}

fn gemm(g: Gemm) -> Result<(), String> {
    let mode: BackwardMode = g.backward.parse()?;
    let a = read_f32_file(&g.a)?;
    let b = read_f32_file(&g.b)?;
    if a.len() != g.m * g.k {
        return Err(format!(
            "{}: {} values, but --m {} x --k {} = {}",
            g.a.display(),
            a.len(),
            g.m,
            g.k,
            g.m * g.k
        ));
    }
    if b.len() != g.k * g.n {
        return Err(format!(
            "{}: {} values, but --k {} x --n {} = {}",
            g.b.display(),
            b.len(),
            g.k,
            g.n,
            g.k * g.n
        ));
    }
    for (name, v) in [(&g.a, &a), (&g.b, &b)] {
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(format!(
                "{}: value {i} is {} (NaN/Inf input)",
                name.display(),
                v[i]
            ));
        }
    }
    let cfg = MxConfig {
        mode,
        hadamard_block: g.hadamard_block,
        seed: g.seed,
    };
    cfg.validate().map_err(|e| e.to_string())?;
    let id = GemmId {
        step: g.step,
        micro_step: 0,
        layer: 0,
        linear: LinearKind::Qkv,
        gemm: GemmKind::Dgrad,
    };
    let mut c = vec![0.0f32; g.m * g.n];
    mx::backward_gemm(
        &cfg,
        &id,
        MatRef::row_major(&a, g.m, g.k),
        MatRef::row_major(&b, g.k, g.n),
        &mut c,
        g.n,
        false,
        None,
    )
    .map_err(|e| format!("--backward {mode}: {e}"))?;
    write_f32_file(&g.output, &c)
}

/// Error statistics of quantizing `x` (one row) as given.
struct Report {
    tel: MxTelemetry,
    bias: f64,
    mean_abs_err: f64,
    scales: Vec<u8>,
}

fn measure(x: &[f32], rounding: Rounding, seed: u64) -> Result<Report, String> {
    let (op, tel) =
        mx::quantize_rows(x, 1, x.len(), rounding, seed, 0).map_err(|e| e.to_string())?;
    let deq = op.dequantize(rounding == Rounding::Sr);
    let n = x.len() as f64;
    let bias = deq
        .iter()
        .zip(x)
        .map(|(d, v)| (*d - *v) as f64)
        .sum::<f64>()
        / n;
    let mean_abs_err = deq
        .iter()
        .zip(x)
        .map(|(d, v)| ((*d - *v) as f64).abs())
        .sum::<f64>()
        / n;
    Ok(Report {
        tel,
        bias,
        mean_abs_err,
        scales: op.scales,
    })
}

fn stats(s: Stats) -> Result<(), String> {
    let rounding: Rounding = s.rounding.parse()?;
    if !hadamard::HADAMARD_BLOCKS.contains(&s.hadamard_block) {
        return Err(format!(
            "--hadamard-block {} is not one of 16, 32, 64, 128, 256",
            s.hadamard_block
        ));
    }
    let g = s.hadamard_block;
    let x = read_input(
        &s.input,
        g.max(format::BLOCK),
        "stats (MX blocks and Hadamard blocks)",
    )?;
    let mut xr = x.clone();
    hadamard::rht_row(&mut xr, &hadamard::rht_signs(s.seed, 1, g));
    let plain = measure(&x, rounding, s.seed)?;
    let rotated = measure(&xr, rounding, s.seed)?;
    let rms = (x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / x.len() as f64).sqrt();
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    println!(
        "{}: {} values ({} blocks of 32), rms {rms:.4e}, max |x| {amax:.4e} ({:.1} x rms)",
        s.input.display(),
        x.len(),
        x.len() / 32,
        amax as f64 / rms
    );
    println!(
        "rounding: {}{}",
        s.rounding,
        if rounding == Rounding::Sr {
            " (3/4 pre-scale, dequantized with 4/3)"
        } else {
            " (ties to even, saturating at 6)"
        }
    );
    println!();
    println!(
        "{:<28} {:>14} {:>14}",
        "",
        "plain MXFP4",
        format!("RHT (g = {g})")
    );
    let row = |name: &str, a: String, b: String| println!("{name:<28} {a:>14} {b:>14}");
    let (sp, sr) = (plain.tel.summary().unwrap(), rotated.tel.summary().unwrap());
    row(
        "relative error ||Q-x||/||x||",
        format!("{:.4}", sp.relative_error),
        format!("{:.4}", sr.relative_error),
    );
    row(
        "mean |Q - x|",
        format!("{:.4e}", plain.mean_abs_err),
        format!("{:.4e}", rotated.mean_abs_err),
    );
    row(
        "bias mean(Q - x)",
        format!("{:+.3e}", plain.bias),
        format!("{:+.3e}", rotated.bias),
    );
    row(
        "clipped (|x/2^e| > 6)",
        format!("{:.3}%", sp.clipped_fraction * 100.0),
        format!("{:.3}%", sr.clipped_fraction * 100.0),
    );
    println!();
    println!("scale exponents e (block counts):");
    let hist = |scales: &[u8]| {
        let mut h = std::collections::BTreeMap::new();
        for &b in scales {
            *h.entry(b as i32 - 127).or_insert(0usize) += 1;
        }
        h
    };
    let (hp, hr) = (hist(&plain.scales), hist(&rotated.scales));
    let keys: std::collections::BTreeSet<i32> = hp.keys().chain(hr.keys()).copied().collect();
    let widest = hp.values().chain(hr.values()).copied().max().unwrap_or(1);
    for e in keys {
        let (a, b) = (
            hp.get(&e).copied().unwrap_or(0),
            hr.get(&e).copied().unwrap_or(0),
        );
        let bar = |n: usize| "#".repeat((n * 20).div_ceil(widest));
        println!(
            "  e = {e:>4}   plain {a:>7} {:<20}   RHT {b:>7} {}",
            bar(a),
            bar(b)
        );
    }
    println!();
    println!("Why: a block's scale follows its largest entry, so one outlier pushes its neighbours toward 0;");
    println!(
        "the Hadamard transform spreads each outlier over g entries, evening out the block maxima."
    );
    Ok(())
}
