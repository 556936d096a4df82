//! Launchers for the MXFP4 kernels: ptx/kernels/mx_quantize.cu (fused RHT + quantize of one
//! GEMM operand, bit-identical to gpt::mx) and the telemetry accumulator. The MX GEMMs are in
//! `mx_gemm`.

use super::{check_disjoint, check_len, span, Ptr, Span};
use crate::mx::hadamard::HADAMARD_BLOCKS;
use crate::mx::Rounding;
use runtime::cuda::{half::bf16, CudaError, Gpu, LaunchConfig, Result};

/// Output rows and k per block of the quantize kernel (MXQ_ROWS, MXQ_K in mx_quantize.cu).
const TILE_ROWS: usize = 32;
const TILE_K: usize = 256;

/// Which way the reduction dimension K runs through the row-major source matrix [R, C].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// K = C: output row r is source row r (dgrad's dY).
    Rowwise,
    /// K = R: output row r is source column r (dgrad's W; wgrad's dY and X, quantized along
    /// the tokens).
    Colwise,
}

impl Layout {
    /// (output rows, K) of a [r, c] source.
    pub fn shape(self, r: usize, c: usize) -> (usize, usize) {
        match self {
            Layout::Rowwise => (r, c),
            Layout::Colwise => (c, r),
        }
    }
}

/// The random streams and transform of one operand's quantization.
#[derive(Clone, Copy, Debug)]
pub struct QuantizeSpec {
    pub layout: Layout,
    pub rounding: Rounding,
    pub seed: u64,
    /// SR noise: element (r, k) uses word r * K + k of this stream.
    pub sr_stream: u64,
    /// RHT signs: word j gives the sign of position j of every g-segment.
    pub sign_stream: u64,
    /// Hadamard block g (16..256), or None for no transform.
    pub hadamard_block: Option<usize>,
}

/// Where the quantized operand goes (any may be None): packed codes [rows, K/2] bytes, E8M0
/// scales [rows, K/32], the dequantized values [rows, K] bf16 (code x 2^e, for the BF16 GEMM
/// path), and telemetry partials (`telemetry_partials_len` f64).
#[derive(Clone, Copy, Debug, Default)]
pub struct QuantizeOut<'a> {
    pub codes: Option<Ptr<'a, u8>>,
    pub scales: Option<Ptr<'a, u8>>,
    pub deq: Option<Ptr<'a, bf16>>,
    pub partials: Option<Ptr<'a, f64>>,
}

fn grid(rows_out: usize, k: usize) -> (u32, u32) {
    (
        k.div_ceil(TILE_K) as u32,
        rows_out.div_ceil(TILE_ROWS) as u32,
    )
}

/// The f64 telemetry fields per quantize block (ptx/kernels/mx.cuh, MX_TELEMETRY_FIELDS):
/// squared error, squared values, clipped elements, non-finite blocks, underflows.
pub const TELEMETRY_FIELDS: usize = 5;

/// f64 elements of the telemetry partials of one quantize launch (`TELEMETRY_FIELDS` per block).
pub fn telemetry_partials_len(rows_out: usize, k: usize) -> usize {
    let (x, y) = grid(rows_out, k);
    TELEMETRY_FIELDS * x as usize * y as usize
}

fn err(msg: String) -> CudaError {
    CudaError::new(msg, 1)
}

/// Quantizes the operand held in `src` (row-major bf16 [r, c]) along K as `spec` says,
/// bit-identically to `gpt::mx` (see mx_quantize.cu). Requires K % 32 == 0, K % g == 0,
/// c % 8 == 0 and a 16-byte aligned `src` (and `deq`); outputs may not overlap `src` or each
/// other (checked).
pub fn quantize(
    g: &Gpu,
    src: Ptr<bf16>,
    r: usize,
    c: usize,
    spec: &QuantizeSpec,
    out: QuantizeOut,
) -> Result<()> {
    quantize_based(g, src, r, c, spec, out, StreamBase::default())
}

/// Device words the kernels add to a spec's streams at run time (None: nothing): a CUDA graph
/// captures the launch's streams by value, so a replay gets the step and micro-batch bits of
/// its streams from here (gpt/src/cuda/step.rs), the rest of each stream from the spec.
#[derive(Clone, Copy, Default)]
pub struct StreamBase<'a> {
    pub sr: Option<Ptr<'a, u64>>,
    pub sign: Option<Ptr<'a, u64>>,
}

impl StreamBase<'_> {
    /// (sr, sign) device addresses, 0 for none; each must hold one u64.
    pub(crate) fn addrs(&self, kernel: &str) -> Result<(u64, u64)> {
        let one = |p: &Option<Ptr<u64>>, what: &str| -> Result<u64> {
            match p {
                Some(p) => check_len(kernel, what, p, 1).map(|_| p.addr()),
                None => Ok(0),
            }
        };
        Ok((one(&self.sr, "sr_base")?, one(&self.sign, "sign_base")?))
    }
}

/// `quantize` with the streams' run-time parts in device memory (`StreamBase`).
pub fn quantize_based(
    g: &Gpu,
    src: Ptr<bf16>,
    r: usize,
    c: usize,
    spec: &QuantizeSpec,
    out: QuantizeOut,
    base: StreamBase,
) -> Result<()> {
    const K: &str = "mx_quantize";
    let (sr_base, sign_base) = base.addrs(K)?;
    let (rows_out, k) = spec.layout.shape(r, c);
    if rows_out == 0 || k == 0 {
        return Err(err(format!("{K}: empty operand [{r}, {c}]")));
    }
    if r > i32::MAX as usize || c > i32::MAX as usize || rows_out > TILE_ROWS * 65_535 {
        return Err(err(format!("{K}: operand [{r}, {c}] too large")));
    }
    if !k.is_multiple_of(32) {
        return Err(err(format!(
            "{K}: the reduction dimension K = {k} is not a multiple of the MX block 32"
        )));
    }
    let g_rht = match spec.hadamard_block {
        None => 0,
        Some(h) if HADAMARD_BLOCKS.contains(&h) && k % h == 0 => h,
        Some(h) => {
            return Err(err(format!(
                "{K}: Hadamard block {h} must be one of {HADAMARD_BLOCKS:?} and divide K = {k}"
            )))
        }
    };
    if !c.is_multiple_of(8) || !src.addr().is_multiple_of(16) {
        return Err(err(format!(
            "{K}: the source needs 16-byte aligned rows (c = {c} must be a multiple of 8, the base 16-byte aligned)"
        )));
    }
    let n = rows_out * k;
    check_len(K, "src", &src, r * c)?;
    let mut outputs: Vec<Span> = Vec::new();
    let null = 0u64;
    let codes = match &out.codes {
        Some(p) => {
            check_len(K, "codes", p, n / 2)?;
            if p.addr() % 4 != 0 {
                return Err(err(format!("{K}: codes must be 4-byte aligned")));
            }
            outputs.push(span("codes", p, n / 2));
            p.addr()
        }
        None => null,
    };
    let scales = match &out.scales {
        Some(p) => {
            check_len(K, "scales", p, n / 32)?;
            outputs.push(span("scales", p, n / 32));
            p.addr()
        }
        None => null,
    };
    let deq = match &out.deq {
        Some(p) => {
            check_len(K, "deq", p, n)?;
            if !p.addr().is_multiple_of(16) {
                return Err(err(format!("{K}: deq must be 16-byte aligned")));
            }
            outputs.push(span("deq", p, n));
            p.addr()
        }
        None => null,
    };
    let partials = match &out.partials {
        Some(p) => {
            let len = telemetry_partials_len(rows_out, k);
            check_len(K, "partials", p, len)?;
            outputs.push(span("partials", p, len));
            p.addr()
        }
        None => null,
    };
    check_disjoint(K, &outputs, &[span("src", &src, r * c)])?;
    let name = match (spec.layout, spec.rounding) {
        (Layout::Rowwise, Rounding::Rtn) => "mx_quantize_rowwise_rtn",
        (Layout::Rowwise, Rounding::Sr) => "mx_quantize_rowwise_sr",
        (Layout::Colwise, Rounding::Rtn) => "mx_quantize_colwise_rtn",
        (Layout::Colwise, Rounding::Sr) => "mx_quantize_colwise_sr",
    };
    let kernel = g.kernel("mx_quantize", name)?;
    let (gx, gy) = grid(rows_out, k);
    let cfg = LaunchConfig {
        grid: (gx, gy, 1),
        block: (256, 1, 1),
        smem_bytes: 0,
    };
    let (ri, ci, gi) = (r as i32, c as i32, g_rht as i32);
    // SAFETY: NAME(const bf16* src, int R, int C, uint8_t* codes, uint8_t* scales, bf16* deq,
    // double* partials, uint64_t seed, uint64_t sr_stream, uint64_t sign_stream, int g,
    // const uint64_t* sr_base, const uint64_t* sign_base);
    // lengths, alignment and disjointness checked above; NULL outputs are skipped.
    unsafe {
        g.launch(
            &kernel,
            cfg,
            &[
                &src,
                &ri,
                &ci,
                &codes,
                &scales,
                &deq,
                &partials,
                &spec.seed,
                &spec.sr_stream,
                &spec.sign_stream,
                &gi,
                &sr_base,
                &sign_base,
            ],
        )
    }
}

/// `acc[i] += sum over j of partials[F j + i]` (i < F = `TELEMETRY_FIELDS`) for the first `n`
/// blocks' partials, and the same sum into `site` when given: device-side running totals of
/// (squared error, squared values, clipped elements, non-finite blocks, underflows) that the
/// host reads once per step (`acc`) or per logging interval (`site`, one per backward GEMM).
pub fn telemetry_accumulate(
    g: &Gpu,
    acc: Ptr<f64>,
    site: Option<Ptr<f64>>,
    partials: Ptr<f64>,
    n: usize,
) -> Result<()> {
    const K: &str = "mx_telemetry_accumulate";
    const F: usize = TELEMETRY_FIELDS;
    check_len(K, "acc", &acc, F)?;
    check_len(K, "partials", &partials, F * n)?;
    let mut outputs = vec![span("acc", &acc, F)];
    let site_addr = match &site {
        Some(p) => {
            check_len(K, "site", p, F)?;
            outputs.push(span("site", p, F));
            p.addr()
        }
        None => 0u64,
    };
    check_disjoint(K, &outputs, &[span("partials", &partials, F * n)])?;
    let kernel = g.kernel("mx_quantize", K)?;
    let ni = i32::try_from(n).map_err(|_| err(format!("{K}: {n} partials")))?;
    let cfg = LaunchConfig {
        grid: (1, 1, 1),
        block: (32, 1, 1),
        smem_bytes: 0,
    };
    // SAFETY: mx_telemetry_accumulate(double* acc, double* site, const double* partials, int n);
    // lengths and disjointness checked (acc and site disjoint too); a NULL site is skipped.
    unsafe { g.launch(&kernel, cfg, &[&acc, &site_addr, &partials, &ni]) }
}

/// A quantized K-major operand in device memory: `rows` rows of K packed codes (K/2 bytes) and
/// K/32 scales each (what `quantize` writes).
#[derive(Clone, Copy, Debug)]
pub struct MxRef<'a> {
    pub codes: Ptr<'a, u8>,
    pub scales: Ptr<'a, u8>,
}

/// The checks every MX GEMM launcher makes: positive shapes that fit an `int`, K a multiple of
/// 32, 16-byte aligned code arrays, every operand long enough, C disjoint from the inputs.
/// Returns (m, n, k) as the kernel's `int`s.
pub fn check_gemm_operands(
    kernel: &str,
    c: &Ptr<bf16>,
    a: &MxRef,
    b: &MxRef,
    m: usize,
    n: usize,
    k: usize,
) -> Result<(i32, i32, i32)> {
    let dim = |what: &str, v: usize| super::check_dim(kernel, what, v);
    let (mi, ni, ki) = (dim("m", m)?, dim("n", n)?, dim("k", k)?);
    if !k.is_multiple_of(32) {
        return Err(err(format!(
            "{kernel}: K = {k} is not a multiple of the MX block 32"
        )));
    }
    if !a.codes.addr().is_multiple_of(16) || !b.codes.addr().is_multiple_of(16) {
        return Err(err(format!(
            "{kernel}: code arrays must be 16-byte aligned"
        )));
    }
    check_len(kernel, "c", c, m * n)?;
    check_len(kernel, "a.codes", &a.codes, m * k / 2)?;
    check_len(kernel, "a.scales", &a.scales, m * k / 32)?;
    check_len(kernel, "b.codes", &b.codes, n * k / 2)?;
    check_len(kernel, "b.scales", &b.scales, n * k / 32)?;
    check_disjoint(
        kernel,
        &[span("c", c, m * n)],
        &[
            span("a.codes", &a.codes, m * k / 2),
            span("a.scales", &a.scales, m * k / 32),
            span("b.codes", &b.codes, n * k / 2),
            span("b.scales", &b.scales, n * k / 32),
        ],
    )?;
    Ok((mi, ni, ki))
}

/// The integer-path MX GEMM (ptx/kernels/mx_gemm.cu): `c[m, n] = bf16(alpha · Σ_j 2^(eA+eB) ·
/// dot_j)`, or `c = bf16(c + alpha · ...)` with `accumulate`, over A [m, k] and B [n, k];
/// bit-identical to `gpt::mx::gemm::mx_gemm_int_reference` before the bf16 rounding. K must be
/// a multiple of 32 and the code arrays 16-byte aligned (checked).
#[allow(clippy::too_many_arguments)]
pub fn gemm_int8(
    g: &Gpu,
    c: Ptr<bf16>,
    a: MxRef,
    b: MxRef,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    accumulate: bool,
) -> Result<()> {
    const K: &str = "mx_gemm_int8";
    let (mi, ni, ki) = check_gemm_operands(K, &c, &a, &b, m, n, k)?;
    if m.div_ceil(128) > u32::MAX as usize || n.div_ceil(128) > 65_535 {
        return Err(err(format!("{K}: {m} x {n} is too large a grid")));
    }
    let kernel = g.kernel("mx_gemm", K)?;
    let cfg = LaunchConfig {
        grid: (m.div_ceil(128) as u32, n.div_ceil(128) as u32, 1),
        block: (256, 1, 1),
        smem_bytes: 0,
    };
    let acc = accumulate as i32;
    // SAFETY: mx_gemm_int8(bf16* C, const uint8_t* a_codes, const uint8_t* a_scales,
    // const uint8_t* b_codes, const uint8_t* b_scales, int M, int N, int K, float alpha,
    // int accumulate); lengths, alignment and disjointness checked above.
    unsafe {
        g.launch(
            &kernel,
            cfg,
            &[
                &c, &a.codes, &a.scales, &b.codes, &b.scales, &mi, &ni, &ki, &alpha, &acc,
            ],
        )
    }
}

/// Blocks of `mx_noise_partials` (MX_NOISE_BLOCKS in ptx/kernels/mx_noise.cu's header): fixed,
/// since the sums depend on it.
pub const NOISE_BLOCKS: usize = 256;

/// `[Σ (q - e)^2, Σ e^2]` over the `n` elements of a 4-bit GEMM product `q` and the exact
/// product `e`, added to `total` and to `site` (2 f64 each; ptx/kernels/mx_noise.cu:
/// deterministic, two launches); `partials` (2 x `NOISE_BLOCKS` f64) is overwritten.
pub fn noise_accumulate(
    g: &Gpu,
    total: Ptr<f64>,
    site: Ptr<f64>,
    partials: Ptr<f64>,
    q: Ptr<bf16>,
    e: Ptr<bf16>,
    n: usize,
) -> Result<()> {
    const K: &str = "mx_noise_partials";
    check_len(K, "q", &q, n)?;
    check_len(K, "e", &e, n)?;
    check_len(K, "partials", &partials, 2 * NOISE_BLOCKS)?;
    check_len(K, "site", &site, 2)?;
    check_len(K, "total", &total, 2)?;
    check_disjoint(
        K,
        &[
            span("partials", &partials, 2 * NOISE_BLOCKS),
            span("site", &site, 2),
            span("total", &total, 2),
        ],
        &[span("q", &q, n), span("e", &e, n)],
    )?;
    let partials_kernel = g.kernel("mx_noise", K)?;
    let cfg = LaunchConfig {
        grid: (NOISE_BLOCKS as u32, 1, 1),
        block: (256, 1, 1),
        smem_bytes: 0,
    };
    // SAFETY: mx_noise_partials(double* partials, const bf16* q, const bf16* e, size_t n);
    // lengths and disjointness checked.
    unsafe { g.launch(&partials_kernel, cfg, &[&partials, &q, &e, &n])? };
    let finish = g.kernel("mx_noise", "mx_noise_accumulate")?;
    let blocks = NOISE_BLOCKS as i32;
    let cfg = LaunchConfig {
        grid: (1, 1, 1),
        block: (32, 1, 1),
        smem_bytes: 0,
    };
    // SAFETY: mx_noise_accumulate(double* total, double* site, const double* partials,
    // int blocks); checked.
    unsafe { g.launch(&finish, cfg, &[&total, &site, &partials, &blocks]) }
}
