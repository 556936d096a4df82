//! Launchers for the FP8 forward (docs/numerics.md sections 8 and 9): ptx/kernels/fp8.cu
//! (per-tensor amax, the current or delayed tensor scale, E4M3 quantization; bit-identical to
//! `gpt::mx::fp8`) and ptx/kernels/fp8_gemm.cu (the GEMM with the scales' division, bias and
//! optional GELU in its epilogue: E4M3 mma.sync on compute capability 8.9+, a BF16 fallback
//! everywhere).
//!
//! A tensor's scale lives on the device in a two-float record (amax, scale) that the GEMM reads
//! there: an FP8 linear never waits for the host, also with delayed scaling, whose amax history
//! is a device buffer (the call counts that pick the ring slot: on the device, `Record::Counter`,
//! or kept by the caller, `Record::Slot`).

use super::{check_dim, check_disjoint, check_len, span, Ptr, Span};
use runtime::cuda::{half::bf16, CudaError, Gpu, LaunchConfig, Result};

const THREADS: u32 = 256;
/// The most blocks an amax or quantize pass launches (grid-stride beyond).
const MAX_BLOCKS: usize = 1024;

fn err(msg: String) -> CudaError {
    CudaError::new(msg, 1)
}

/// f32 elements of amax partials a tensor of `n` elements needs (one per block of the pass).
pub fn amax_partials_len(n: usize) -> usize {
    n.div_ceil(THREADS as usize * 8).clamp(1, MAX_BLOCKS)
}

fn linear_cfg(n_threads: usize) -> LaunchConfig {
    LaunchConfig {
        grid: (
            n_threads.div_ceil(THREADS as usize).clamp(1, MAX_BLOCKS) as u32,
            1,
            1,
        ),
        block: (THREADS, 1, 1),
        smem_bytes: 0,
    }
}

/// Delayed scaling for one tensor: its ring of amaxes (`h` f32, zeros are empty slots) and
/// where this call records its amax.
#[derive(Clone, Copy, Debug)]
pub struct History<'a> {
    pub ring: Ptr<'a, f32>,
    pub record: Record<'a>,
}

/// Whether and where a delayed-scaling call records its amax into the ring.
#[derive(Clone, Copy, Debug)]
pub enum Record<'a> {
    /// Not at all (an evaluation call).
    No,
    /// Into this slot, chosen by the caller (`calls % h`, counted on the host): the plain path.
    Slot(usize),
    /// Into slot `calls % h` of the tensor's call count (one u64) on the device, which the
    /// kernel then increments: what a replayed CUDA graph needs (a slot passed by value would
    /// be the capture's on every replay).
    Counter(Ptr<'a, u64>),
}
/// `rec[0] = amax(x)` over the finite elements of `x` (`n` bf16), `rec[1]` = the tensor's scale:
/// 448 / amax (current scaling, `history` None), or from the ring's largest amax with this call
/// recorded afterwards (`Fp8State::scale`). Two launches; `partials` holds
/// `amax_partials_len(n)` f32 (overwritten).
pub fn tensor_scale(
    g: &Gpu,
    rec: Ptr<f32>,
    partials: Ptr<f32>,
    x: Ptr<bf16>,
    n: usize,
    history: Option<History>,
) -> Result<()> {
    const K: &str = "fp8_tensor_scale";
    check_dim(K, "n", n)?;
    let np = amax_partials_len(n);
    check_len(K, "x", &x, n)?;
    check_len(K, "rec", &rec, 2)?;
    check_len(K, "partials", &partials, np)?;
    let mut outputs: Vec<Span> = vec![span("rec", &rec, 2), span("partials", &partials, np)];
    let (ring, h, slot, calls) = match &history {
        Some(hist) => {
            let h = hist.ring.len();
            if h == 0 || matches!(hist.record, Record::Slot(s) if s >= h) {
                return Err(err(format!(
                    "{K}: history of {h} slots, recording into {:?}",
                    hist.record
                )));
            }
            outputs.push(span("history", &hist.ring, h));
            let (slot, calls) = match hist.record {
                Record::No => (-1, 0u64),
                Record::Slot(s) => (s as i32, 0),
                Record::Counter(c) => {
                    check_len(K, "calls", &c, 1)?;
                    outputs.push(span("calls", &c, 1));
                    (-1, c.addr())
                }
            };
            (hist.ring.addr(), h as i32, slot, calls)
        }
        None => (0u64, 0i32, -1i32, 0u64),
    };
    check_disjoint(K, &outputs, &[span("x", &x, n)])?;
    let partial_kernel = g.kernel("fp8", "fp8_amax_partials")?;
    let finish = g.kernel("fp8", "fp8_amax_finish")?;
    let nl = n as i64;
    let vec = (n >= 8 && x.addr().is_multiple_of(16)) as i32;
    let cfg = LaunchConfig {
        grid: (np as u32, 1, 1),
        block: (THREADS, 1, 1),
        smem_bytes: 0,
    };
    let npi = np as i32;
    // SAFETY: fp8_amax_partials(float* partials, const bf16* x, long long n, int vec) with
    // `vec` only for a 16-byte aligned x; fp8_amax_finish(float* rec, const float* partials,
    // int n, float* history, int h, int slot, unsigned long long* calls) with history NULL when
    // h = 0, slot < h, calls NULL or one u64 (slot -1 then).
    // Lengths and disjointness checked above.
    unsafe {
        g.launch(&partial_kernel, cfg, &[&partials, &x, &nl, &vec])?;
        g.launch(
            &finish,
            LaunchConfig {
                grid: (1, 1, 1),
                block: (THREADS, 1, 1),
                smem_bytes: 0,
            },
            &[&rec, &partials, &npi, &ring, &h, &slot, &calls],
        )
    }
}

/// The quantized operand of an FP8 GEMM: E4M3 bytes (the FP8 mma path) or their exact bf16
/// values (the fallback).
#[derive(Clone, Copy, Debug)]
pub enum Fp8Operand<'a> {
    E4m3(Ptr<'a, u8>),
    Bf16(Ptr<'a, bf16>),
}

impl Fp8Operand<'_> {
    fn addr(&self) -> u64 {
        match self {
            Fp8Operand::E4m3(p) => p.addr(),
            Fp8Operand::Bf16(p) => p.addr(),
        }
    }
    fn span(&self, name: &'static str, n: usize) -> Span {
        match self {
            Fp8Operand::E4m3(p) => span(name, p, n),
            Fp8Operand::Bf16(p) => span(name, p, n),
        }
    }
    fn check_len(&self, kernel: &str, name: &str, n: usize) -> Result<()> {
        match self {
            Fp8Operand::E4m3(p) => check_len(kernel, name, p, n),
            Fp8Operand::Bf16(p) => check_len(kernel, name, p, n),
        }
    }
}

/// `out[i] = E4M3(x[i] · scale)` with scale = `rec[1]` (one f32 multiply, then round to nearest
/// even, saturating; `gpt::mx::fp8::quantize`), as E4M3 bytes or as their exact bf16 values.
pub fn quantize(g: &Gpu, out: Fp8Operand, x: Ptr<bf16>, n: usize, rec: Ptr<f32>) -> Result<()> {
    const K: &str = "fp8_quantize";
    check_dim(K, "n", n)?;
    check_len(K, "x", &x, n)?;
    check_len(K, "rec", &rec, 2)?;
    out.check_len(K, "out", n)?;
    check_disjoint(
        K,
        &[out.span("out", n)],
        &[span("x", &x, n), span("rec", &rec, 2)],
    )?;
    let name = match out {
        Fp8Operand::E4m3(_) => "fp8_quantize_e4m3",
        Fp8Operand::Bf16(_) => "fp8_quantize_bf16",
    };
    let kernel = g.kernel("fp8", name)?;
    let nl = n as i64;
    let o = out.addr();
    // SAFETY: fp8_quantize_{e4m3,bf16}(uint8_t* / bf16* out, const bf16* x, long long n,
    // const float* rec); lengths and disjointness checked above.
    unsafe { g.launch(&kernel, linear_cfg(n.div_ceil(2)), &[&o, &x, &nl, &rec]) }
}

/// Blocks of `fp8_stats_partials` (FP8_STATS_BLOCKS in fp8.cu's header): fixed, since the sums
/// depend on it.
pub const STATS_BLOCKS: usize = 256;

/// The telemetry partials of quantizing `x` [n] with scale `rec[1]`: `STATS_BLOCKS` x
/// `mx::TELEMETRY_FIELDS` f64 in the quantizers' layout (squared error, squared values,
/// saturated, 0, flushed to zero), summed by `mx::telemetry_accumulate`.
pub fn stats(g: &Gpu, partials: Ptr<f64>, x: Ptr<bf16>, n: usize, rec: Ptr<f32>) -> Result<()> {
    const K: &str = "fp8_stats_partials";
    let len = STATS_BLOCKS * super::mx::TELEMETRY_FIELDS;
    check_dim(K, "n", n)?;
    check_len(K, "x", &x, n)?;
    check_len(K, "rec", &rec, 2)?;
    check_len(K, "partials", &partials, len)?;
    check_disjoint(
        K,
        &[span("partials", &partials, len)],
        &[span("x", &x, n), span("rec", &rec, 2)],
    )?;
    let kernel = g.kernel("fp8", K)?;
    let cfg = LaunchConfig {
        grid: (STATS_BLOCKS as u32, 1, 1),
        block: (256, 1, 1),
        smem_bytes: 0,
    };
    let nl = n as i64;
    // SAFETY: fp8_stats_partials(double* partials, const bf16* x, long long n, const float*
    // rec); lengths and disjointness checked above.
    unsafe { g.launch(&kernel, cfg, &[&partials, &x, &nl, &rec]) }
}

/// The test kernel of fp8.cu: every f32 of `x` through the conversion instruction (`hw`, its
/// host twin on the harness) and through the software conversion the sm_80 build uses (`sw`).
pub fn convert_check(g: &Gpu, hw: Ptr<u8>, sw: Ptr<u8>, x: Ptr<f32>, n: usize) -> Result<()> {
    const K: &str = "fp8_convert_check";
    let ni = check_dim(K, "n", n)?;
    check_len(K, "hw", &hw, n)?;
    check_len(K, "sw", &sw, n)?;
    check_len(K, "x", &x, n)?;
    check_disjoint(
        K,
        &[span("hw", &hw, n), span("sw", &sw, n)],
        &[span("x", &x, n)],
    )?;
    let kernel = g.kernel("fp8", K)?;
    let cfg = LaunchConfig {
        grid: (n.div_ceil(THREADS as usize) as u32, 1, 1),
        block: (THREADS, 1, 1),
        smem_bytes: 0,
    };
    // SAFETY: fp8_convert_check(uint8_t* hw, uint8_t* sw, const float* x, int n); checked.
    unsafe { g.launch(&kernel, cfg, &[&hw, &sw, &x, &ni]) }
}

/// Whether `gemm` can take the FP8 mma path on a device of compute capability `cc` (8.9+).
pub fn has_fp8_mma(cc: (u32, u32)) -> bool {
    cc >= (8, 9)
}

/// `out[rows, oc] = bf16(Σ_k xq wq / (s_x s_W) + bias)` with s_x = `sx[1]`, s_W = `sw[1]`, and
/// with `gelu_out` also `gelu_out = bf16(gelu(out))` (fp8_gemm.cu). `xq` [rows, ic] and `wq`
/// [oc, ic] are both E4M3 (mma.sync e4m3: compute capability 8.9+, checked) or both bf16 (the
/// fallback). Requires ic % 16 == 0 and 16-byte aligned operands; outputs may not overlap
/// inputs or each other (checked).
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    g: &Gpu,
    out: Ptr<bf16>,
    gelu_out: Option<Ptr<bf16>>,
    xq: Fp8Operand,
    wq: Fp8Operand,
    bias: Option<Ptr<bf16>>,
    sx: Ptr<f32>,
    sw: Ptr<f32>,
    rows: usize,
    ic: usize,
    oc: usize,
) -> Result<()> {
    const K: &str = "fp8_gemm";
    let (ri, ii, oi) = (
        check_dim(K, "rows", rows)?,
        check_dim(K, "ic", ic)?,
        check_dim(K, "oc", oc)?,
    );
    let name = match (xq, wq) {
        (Fp8Operand::E4m3(_), Fp8Operand::E4m3(_)) => {
            let p = g.props();
            if !has_fp8_mma(p.compute_capability) {
                return Err(err(format!(
                    "fp8_gemm_e4m3: {} has compute capability {}.{}; the E4M3 mma needs 8.9 or later (use the bf16 operands)",
                    p.name, p.compute_capability.0, p.compute_capability.1
                )));
            }
            "fp8_gemm_e4m3"
        }
        (Fp8Operand::Bf16(_), Fp8Operand::Bf16(_)) => "fp8_gemm_bf16",
        _ => return Err(err(format!("{K}: xq and wq must have the same type"))),
    };
    if !ic.is_multiple_of(16) {
        return Err(err(format!(
            "{name}: ic = {ic} must be a multiple of 16 (16-byte rows of E4M3)"
        )));
    }
    if !xq.addr().is_multiple_of(16) || !wq.addr().is_multiple_of(16) {
        return Err(err(format!("{name}: xq and wq must be 16-byte aligned")));
    }
    let (n_out, n_x, n_w) = (rows * oc, rows * ic, oc * ic);
    check_len(name, "out", &out, n_out)?;
    xq.check_len(name, "xq", n_x)?;
    wq.check_len(name, "wq", n_w)?;
    check_len(name, "sx", &sx, 2)?;
    check_len(name, "sw", &sw, 2)?;
    let mut outputs = vec![span("out", &out, n_out)];
    let mut inputs = vec![
        xq.span("xq", n_x),
        wq.span("wq", n_w),
        span("sx", &sx, 2),
        span("sw", &sw, 2),
    ];
    if let Some(b) = &bias {
        check_len(name, "bias", b, oc)?;
        inputs.push(span("bias", b, oc));
    }
    if let Some(ge) = &gelu_out {
        check_len(name, "gelu_out", ge, n_out)?;
        outputs.push(span("gelu_out", ge, n_out));
    }
    check_disjoint(name, &outputs, &inputs)?;
    if rows.div_ceil(128) > u32::MAX as usize || oc.div_ceil(128) > 65_535 {
        return Err(err(format!("{name}: {rows} x {oc} is too large a grid")));
    }
    let kernel = g.kernel("fp8_gemm", name)?;
    let cfg = LaunchConfig {
        grid: (rows.div_ceil(128) as u32, oc.div_ceil(128) as u32, 1),
        block: (THREADS, 1, 1),
        smem_bytes: 0,
    };
    let bias_addr = bias.map_or(0u64, |b| b.addr());
    let gelu_addr = gelu_out.map_or(0u64, |p| p.addr());
    let (xa, wa) = (xq.addr(), wq.addr());
    // SAFETY: fp8_gemm_{e4m3,bf16}(bf16* out, bf16* gelu_out, const T* xq, const T* wq,
    // const bf16* bias, const float* sx, const float* sw, int rows, int ic, int oc), T = uint8_t
    // or bf16 as the operands; NULL bias / gelu_out are skipped; lengths, alignment and
    // disjointness checked above.
    unsafe {
        g.launch(
            &kernel,
            cfg,
            &[
                &out, &gelu_addr, &xa, &wa, &bias_addr, &sx, &sw, &ri, &ii, &oi,
            ],
        )
    }
}
