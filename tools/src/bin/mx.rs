//! `tools/mx`: MXFP4 numerics from the command line — quantize a tensor, run the backward GEMM in
//! any mode, or report quantization error with and without the random Hadamard transform. It
//! calls exactly the code the CPU backend trains with (gpt::mx), so it also serves to check the
//! numerics from outside (e.g. against a PyTorch or GPU implementation). `random` writes inputs
//! to try them on; `probe` measures what each backward mode does to a model's gradient.
//!
//! Files are raw little-endian f32. Conventions fixed here (a checker needs them):
//! - quantize: the input is one row; blocks are consecutive 32 (MXFP4) or 16 (NVFP4) values; SR
//!   uses stream `--stream` (default 0) with the element's position as counter.
//! - gemm: the GEMM identity is step `--step` (default 0), micro step 0, layer 0, QKV, dgrad.

use argh::FromArgs;
use gpt::cpu::gemm::MatRef;
use gpt::mx::{
    self, format, hadamard, GemmId, GemmKind, LinearKind, MxConfig, MxTelemetry, Rounding,
};
use gpt::precision::BackwardMode;
use std::path::{Path, PathBuf};
use tools::{read_f32_file, write_atomic, write_f32_file};

/// MXFP4 numerics: quantize, gemm, stats; random writes test inputs.
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
    Random(Random),
    Probe(Probe),
}

/// quantize a tensor to MXFP4 or NVFP4 and write the dequantized values (and the packed encoding)
#[derive(FromArgs)]
#[argh(subcommand, name = "quantize")]
struct Quantize {
    /// rtn or sr
    #[argh(option)]
    rounding: String,
    /// mxfp4 (blocks of 32, E8M0 scales) or nvfp4 (blocks of 16, E4M3 scales and an f32
    /// tensor scale) (default mxfp4)
    #[argh(option, default = "String::from(\"mxfp4\")")]
    format: String,
    /// seed of the SR generator (default 0)
    #[argh(option, default = "0")]
    seed: u64,
    /// SR stream id (default 0)
    #[argh(option, default = "0")]
    stream: u64,
    /// raw f32 input; length a multiple of the block; a block holding NaN or Inf gets the NaN
    /// scale (0xFF in MXFP4, 0x7F in NVFP4)
    #[argh(option)]
    input: PathBuf,
    /// raw f32 output: the dequantized values (MXFP4 SR includes the 4/3; NaN in non-finite
    /// blocks)
    #[argh(option)]
    output: PathBuf,
    /// optional: [NVFP4: the tensor scale, f32 little-endian,] scale bytes (one per block), then
    /// the packed codes (low nibble first)
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
    /// bf16, mxfp4-rtn, mxfp4-rht, mxfp4-sr, mxfp4, nvfp4 or nvfp4-rtn (the format follows
    /// the mode)
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

/// write a raw f32 file of normal random values (inputs for the other subcommands)
#[derive(FromArgs)]
#[argh(subcommand, name = "random")]
struct Random {
    /// how many values
    #[argh(option)]
    count: usize,
    /// raw f32 output
    #[argh(option)]
    output: PathBuf,
    /// seed (default 0)
    #[argh(option, default = "0")]
    seed: u64,
    /// standard deviation (default 1)
    #[argh(option, default = "1.0")]
    std: f32,
    /// fraction of values multiplied by 100, like a gradient's outliers (default 0)
    #[argh(option, default = "0.0")]
    outliers: f64,
}

/// the gradient probe: for every backward mode, draw a checkpoint's gradient on one batch many
/// times and compare it with the exact gradient (bias, slope, cosine, variance, beside the
/// minibatch noise), per block weight and per GEMM; writes probe.json and probe.svg
#[derive(FromArgs)]
#[argh(subcommand, name = "probe")]
struct Probe {
    /// checkpoint file (repeat for several points of a run)
    #[argh(option)]
    checkpoint: Vec<PathBuf>,
    /// token dataset (default: the prepared Shakespeare train split)
    #[argh(option)]
    data: Option<String>,
    /// micro batch (default 8)
    #[argh(option, default = "8")]
    batch: usize,
    /// sequence length (default 128, at most the model's)
    #[argh(option, default = "128")]
    seq: usize,
    /// draws per random mode (default 32)
    #[argh(option, default = "32")]
    draws: usize,
    /// batches for the minibatch noise, the probed one included (default 32)
    #[argh(option, default = "32")]
    batches: usize,
    /// backward modes, comma-separated, or all (default all)
    #[argh(option, default = "String::from(\"all\")")]
    modes: String,
    /// the Hadamard block g of the RHT modes (default 64)
    #[argh(option, default = "64")]
    hadamard_block: usize,
    /// seed of the batches and the draws (default 0)
    #[argh(option, default = "0")]
    seed: u64,
    /// output directory (default target/probe)
    #[argh(option, default = "PathBuf::from(\"target/probe\")")]
    out: PathBuf,
    /// redraw probe.svg from an existing probe.json (written beside it) instead of probing
    #[argh(option)]
    replot: Option<PathBuf>,
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
        Cmd::Random(r) => random(r),
        Cmd::Probe(p) => probe(p),
    };
    if let Err(e) = r {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// Reads an input tensor, rejecting lengths that are not a non-empty multiple of `multiple`.
/// NaN and infinities are accepted: docs/numerics.md section 2 quantizes a block holding one to
/// the NaN scale byte 0xFF with all codes 0, and counts it as non-finite.
fn read_input(path: &Path, multiple: usize, what: &str) -> Result<Vec<f32>, String> {
    let x = read_f32_file(path)?;
    if x.is_empty() || x.len() % multiple != 0 {
        return Err(format!(
            "{} holds {} values, but {what} needs a non-empty multiple of {multiple}.",
            path.display(),
            x.len()
        ));
    }
    Ok(x)
}

/// `x * y` for the shape flags `--{xn} x` and `--{yn} y`, or an error naming them when the
/// product does not fit in a usize (it could never be a file's length).
fn shape_product(xn: &str, x: usize, yn: &str, y: usize) -> Result<usize, String> {
    x.checked_mul(y).ok_or_else(|| {
        format!(
            "--{xn} {x} x --{yn} {y} overflows a {}-bit size: no input can hold that many values.",
            usize::BITS
        )
    })
}

/// Zeroed f32 values, or an error (not an abort) when that much memory cannot be had.
fn zeros(len: usize, what: &str) -> Result<Vec<f32>, String> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| {
        format!(
            "The {what} of {len} f32 values ({:.1} GiB) cannot be allocated.",
            len as f64 * 4.0 / (1u64 << 30) as f64
        )
    })?;
    v.resize(len, 0.0);
    Ok(v)
}

/// Normal values by Box-Muller over the splitmix64 sequence of `--seed` (the same seed gives the
/// same file).
fn random(r: Random) -> Result<(), String> {
    if r.count == 0 {
        return Err("--count is 0, but the file needs at least 1 value.".into());
    }
    if !(0.0..=1.0).contains(&r.outliers) {
        return Err(format!(
            "--outliers {} is not a fraction between 0 and 1.",
            r.outliers
        ));
    }
    if !r.std.is_finite() || r.std < 0.0 {
        return Err(format!(
            "--std {} is not a finite, non-negative number.",
            r.std
        ));
    }
    // The splitmix64 sequence: state advances by the golden-ratio constant, then is mixed.
    let mut state = r.seed;
    let mut uniform = || {
        let out = dataio::splitmix64(state);
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        (out >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut x = zeros(r.count, "output (--count)")?;
    for v in x.iter_mut() {
        let (u1, u2) = (1.0 - uniform(), uniform()); // u1 in (0, 1]
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        let scale = if uniform() < r.outliers { 100.0 } else { 1.0 };
        *v = (z * r.std as f64 * scale) as f32;
    }
    write_f32_file(&r.output, &x)
}

fn quantize(q: Quantize) -> Result<(), String> {
    let rounding: Rounding = q.rounding.parse()?;
    match q.format.as_str() {
        "mxfp4" => quantize_mxfp4(&q, rounding),
        "nvfp4" => quantize_nvfp4(&q, rounding),
        f => Err(format!("unknown --format '{f}': expected mxfp4 or nvfp4.")),
    }
}

fn print_quantized(q: &Quantize, values: usize, block: usize, nonfinite: u64, nan_scale: &str) {
    println!(
        "{}: {values} values in {} blocks of {block}; non-finite blocks: {nonfinite}{}",
        q.input.display(),
        values / block,
        if nonfinite > 0 {
            format!(" (scale byte {nan_scale}, codes 0, dequantized to NaN)")
        } else {
            String::new()
        }
    );
}

fn quantize_mxfp4(q: &Quantize, rounding: Rounding) -> Result<(), String> {
    let x = read_input(
        &q.input,
        format::BLOCK,
        "MXFP4 quantization (32-element blocks)",
    )?;
    let (op, tel) =
        mx::quantize_rows(&x, 1, x.len(), rounding, q.seed, q.stream).map_err(|e| e.to_string())?;
    write_f32_file(&q.output, &op.dequantize(rounding == Rounding::Sr))?;
    if let Some(p) = &q.packed {
        write_atomic(p, &op.to_bytes())?;
    }
    print_quantized(q, x.len(), format::BLOCK, tel.nonfinite_blocks, "0xFF");
    Ok(())
}

fn quantize_nvfp4(q: &Quantize, rounding: Rounding) -> Result<(), String> {
    let x = read_input(
        &q.input,
        mx::nvfp4::BLOCK,
        "NVFP4 quantization (16-element blocks)",
    )?;
    let (op, tel) = mx::nvfp4::quantize_rows(&x, 1, x.len(), rounding, q.seed, q.stream)
        .map_err(|e| e.to_string())?;
    let values: Vec<f32> = op.dequantize().into_iter().map(|v| v as f32).collect();
    write_f32_file(&q.output, &values)?;
    if let Some(p) = &q.packed {
        let mut bytes = op.s_enc.to_le_bytes().to_vec();
        bytes.extend(&op.scales);
        bytes.extend(format::pack_codes(&op.codes));
        write_atomic(p, &bytes)?;
    }
    print_quantized(q, x.len(), mx::nvfp4::BLOCK, tel.nonfinite_blocks, "0x7F");
    println!("tensor scale s_enc = 2688 / amax = {:e}", op.s_enc);
    Ok(())
}

fn gemm(g: Gemm) -> Result<(), String> {
    let mode: BackwardMode = g.backward.parse()?;
    for (name, v) in [("m", g.m), ("n", g.n), ("k", g.k)] {
        if v == 0 {
            return Err(format!(
                "--{name} is 0, but every GEMM dimension must be at least 1."
            ));
        }
    }
    let a_len = shape_product("m", g.m, "k", g.k)?;
    let b_len = shape_product("k", g.k, "n", g.n)?;
    let c_len = shape_product("m", g.m, "n", g.n)?;
    let a = read_f32_file(&g.a)?;
    let b = read_f32_file(&g.b)?;
    if a.len() != a_len {
        return Err(format!(
            "{} holds {} values, but --m {} x --k {} needs {a_len}.",
            g.a.display(),
            a.len(),
            g.m,
            g.k,
        ));
    }
    if b.len() != b_len {
        return Err(format!(
            "{} holds {} values, but --k {} x --n {} needs {b_len}.",
            g.b.display(),
            b.len(),
            g.k,
            g.n,
        ));
    }
    let cfg = MxConfig {
        mode,
        hadamard_block: g.hadamard_block,
        signs: gpt::mx::HadamardSigns::Fresh,
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
    let mut c = zeros(c_len, "output C (--m x --n)")?;
    let mut tel = MxTelemetry::default();
    mx::backward_gemm(
        &cfg,
        &id,
        MatRef::row_major(&a, g.m, g.k),
        MatRef::row_major(&b, g.k, g.n),
        &mut c,
        g.n,
        false,
        Some(&mut tel),
    )
    .map_err(|e| format!("--backward {mode}: {e}"))?;
    write_f32_file(&g.output, &c)?;
    if mode != BackwardMode::Bf16 {
        println!(
            "gemm: {} values quantized (A and B); non-finite blocks: {}{}",
            tel.elements,
            tel.nonfinite_blocks,
            if tel.nonfinite_blocks > 0 {
                " (NaN scale: every output they touch is NaN)"
            } else {
                ""
            }
        );
    } else {
        let bad = a.iter().chain(&b).filter(|v| !v.is_finite()).count();
        if bad > 0 {
            println!("gemm: {bad} non-finite input values (--backward {mode} propagates them)");
        }
    }
    Ok(())
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
    // Non-finite blocks (scale 0xFF) are left out, as in the trainer's telemetry.
    let finite: Vec<(f32, f32)> = deq
        .chunks(format::BLOCK)
        .zip(x.chunks(format::BLOCK))
        .zip(&op.scales)
        .filter(|(_, &s)| s != format::SCALE_NAN)
        .flat_map(|((d, v), _)| d.iter().copied().zip(v.iter().copied()))
        .collect();
    let n = finite.len() as f64;
    let bias = finite.iter().map(|(d, v)| (d - v) as f64).sum::<f64>() / n;
    let mean_abs_err = finite
        .iter()
        .map(|(d, v)| ((d - v) as f64).abs())
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
    let finite: Vec<f32> = x.iter().copied().filter(|v| v.is_finite()).collect();
    let rms = (finite.iter().map(|v| (*v as f64).powi(2)).sum::<f64>()
        / finite.len().max(1) as f64)
        .sqrt();
    let amax = finite.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    println!(
        "{}: {} values ({} blocks of 32), rms {rms:.4e}, max |x| {amax:.4e} ({:.1} x rms){}",
        s.input.display(),
        x.len(),
        x.len() / 32,
        amax as f64 / rms,
        match x.len() - finite.len() {
            0 => String::new(),
            n => format!("; {n} NaN/Inf values left out of these figures"),
        }
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
    row(
        "non-finite blocks (0xFF)",
        sp.nonfinite_blocks.to_string(),
        sr.nonfinite_blocks.to_string(),
    );
    println!();
    println!("scale exponents e (block counts):");
    let hist = |scales: &[u8]| {
        let mut h = std::collections::BTreeMap::new();
        // Non-finite blocks (scale byte 0xFF) are counted in the table above, not here.
        for &b in scales.iter().filter(|&&b| b != format::SCALE_NAN) {
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

fn probe(p: Probe) -> Result<(), String> {
    if let Some(json) = &p.replot {
        return tools::probe::run::replot(json);
    }
    let root = gpt::trainer::project_root();
    let command = std::iter::once("tools/mx".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    tools::probe::run::run(&tools::probe::run::ProbeRun {
        modes: tools::probe::run::parse_modes(&p.modes)?,
        checkpoints: p.checkpoint,
        data: p.data,
        batch: p.batch,
        seq: p.seq,
        draws: p.draws,
        batches: p.batches,
        hadamard_block: p.hadamard_block,
        seed: p.seed,
        out: root.join(p.out),
        root,
        command,
    })
}
