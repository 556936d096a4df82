//! Launchers for the NVFP4 kernels (docs/numerics.md sections 10 and 11):
//! ptx/kernels/nvfp4_quantize.cu (tensor amax, tensor scale and the fused RHT + quantize of one
//! GEMM operand, bit-identical to `gpt::mx::nvfp4::quantize_rows`), ptx/kernels/nvfp4_gemm.cu
//! (the exact GEMM: s8 mma with per-block FP32 promotion, and the plain reference loop), and
//! ptx/kernels/nvfp4_gemm_tcgen05.cu (Blackwell's `kind::mxf4nvf4`, assembled, never run).
//!
//! An operand's quantization is three launches on the stream (amax partials, tensor scale,
//! quantize); its tensor scale stays on the device (`enc`: two f32, the amax and s_enc) and the
//! GEMM reads it there, so a backward GEMM never waits for the host.

use super::mx::Layout;
use super::{check_disjoint, check_len, span, Ptr, Span};
use crate::mx::Rounding;
use runtime::cuda::{half::bf16, CudaError, Gpu, LaunchConfig, Result};

/// Elements per NVFP4 block.
pub const BLOCK: usize = 16;
/// Output rows and k per tile of the quantize kernels (NVQ_ROWS, NVQ_K: mx_quantize.cu's tile,
/// so the telemetry partials have `mx::telemetry_partials_len`'s layout).
const TILE_ROWS: usize = 32;
const TILE_K: usize = 256;

/// How one operand is quantized: layout, rounding, the recipe's 16-point RHT (with the run's
/// fixed sign vector, stream `crate::mx::nvfp4::SIGN_STREAM`), and the SR stream.
#[derive(Clone, Copy, Debug)]
pub struct Nvfp4Spec {
    pub layout: Layout,
    pub rounding: Rounding,
    pub seed: u64,
    /// SR noise: element (r, k) uses word r * K + k of this stream.
    pub sr_stream: u64,
    /// The recipe's 16-point random Hadamard transform (wgrad operands of `nvfp4`).
    pub rht: bool,
}

/// Where one quantized operand goes: packed codes [rows, K/2], E4M3 scales [rows, K/16], the
/// tensor record `enc` (2 f32: amax, s_enc), the amax partials (`amax_partials_len`), and
/// optionally the telemetry partials (`mx::telemetry_partials_len`, summed by
/// `mx::telemetry_accumulate`).
#[derive(Clone, Copy, Debug)]
pub struct Nvfp4Out<'a> {
    pub codes: Ptr<'a, u8>,
    pub scales: Ptr<'a, u8>,
    pub enc: Ptr<'a, f32>,
    pub amax_partials: Ptr<'a, f32>,
    pub partials: Option<Ptr<'a, f64>>,
}

fn grid(rows_out: usize, k: usize) -> (u32, u32) {
    (
        k.div_ceil(TILE_K) as u32,
        rows_out.div_ceil(TILE_ROWS) as u32,
    )
}

/// f32 elements of the amax partials of one operand (one per tile).
pub fn amax_partials_len(rows_out: usize, k: usize) -> usize {
    let (x, y) = grid(rows_out, k);
    x as usize * y as usize
}

fn err(msg: String) -> CudaError {
    CudaError::new(msg, 1)
}

/// Quantizes the operand held in `src` (row-major bf16 [r, c]) along K as `spec` says,
/// bit-identically to `gpt::mx::nvfp4::quantize_rows` on the same values (after the recipe's
/// RHT when `spec.rht`): three launches (see nvfp4_quantize.cu). Requires K % 16 == 0, c % 8 ==
/// 0 and a 16-byte aligned `src`; outputs may not overlap `src` or each other (checked).
pub fn quantize(
    g: &Gpu,
    src: Ptr<bf16>,
    r: usize,
    c: usize,
    spec: &Nvfp4Spec,
    out: Nvfp4Out,
) -> Result<()> {
    quantize_based(g, src, r, c, spec, out, None)
}

/// `quantize` with the SR stream's run-time part (step and micro-batch bits) read from the
/// device word `sr_base` (see `mx::StreamBase`; NVFP4's sign stream is a constant).
pub fn quantize_based(
    g: &Gpu,
    src: Ptr<bf16>,
    r: usize,
    c: usize,
    spec: &Nvfp4Spec,
    out: Nvfp4Out,
    sr_base: Option<Ptr<u64>>,
) -> Result<()> {
    const K: &str = "nvfp4_quantize";
    let (sr_base, sign_base) = super::mx::StreamBase {
        sr: sr_base,
        sign: None,
    }
    .addrs(K)?;
    let (rows_out, k) = spec.layout.shape(r, c);
    if rows_out == 0 || k == 0 {
        return Err(err(format!("{K}: empty operand [{r}, {c}]")));
    }
    if r > i32::MAX as usize || c > i32::MAX as usize || rows_out > TILE_ROWS * 65_535 {
        return Err(err(format!("{K}: operand [{r}, {c}] too large")));
    }
    if !k.is_multiple_of(BLOCK) {
        return Err(err(format!(
            "{K}: the reduction dimension K = {k} is not a multiple of the NVFP4 block 16"
        )));
    }
    if !c.is_multiple_of(8) || !src.addr().is_multiple_of(16) {
        return Err(err(format!(
            "{K}: the source needs 16-byte aligned rows (c = {c} must be a multiple of 8, the base 16-byte aligned)"
        )));
    }
    let n = rows_out * k;
    let tiles = amax_partials_len(rows_out, k);
    check_len(K, "src", &src, r * c)?;
    check_len(K, "codes", &out.codes, n / 2)?;
    check_len(K, "scales", &out.scales, n / BLOCK)?;
    check_len(K, "enc", &out.enc, 2)?;
    check_len(K, "amax_partials", &out.amax_partials, tiles)?;
    if !out.codes.addr().is_multiple_of(4) {
        return Err(err(format!("{K}: codes must be 4-byte aligned")));
    }
    let mut outputs: Vec<Span> = vec![
        span("codes", &out.codes, n / 2),
        span("scales", &out.scales, n / BLOCK),
        span("enc", &out.enc, 2),
        span("amax_partials", &out.amax_partials, tiles),
    ];
    let partials = match &out.partials {
        Some(p) => {
            let len = super::mx::telemetry_partials_len(rows_out, k);
            check_len(K, "partials", p, len)?;
            outputs.push(span("partials", p, len));
            p.addr()
        }
        None => 0u64,
    };
    check_disjoint(K, &outputs, &[span("src", &src, r * c)])?;
    let colwise = spec.layout == Layout::Colwise;
    let amax_kernel = g.kernel(
        "nvfp4_quantize",
        if colwise {
            "nvfp4_amax_colwise"
        } else {
            "nvfp4_amax_rowwise"
        },
    )?;
    let scale_kernel = g.kernel("nvfp4_quantize", "nvfp4_tensor_scale")?;
    let name = match (spec.layout, spec.rounding) {
        (Layout::Rowwise, Rounding::Rtn) => "nvfp4_quantize_rowwise_rtn",
        (Layout::Rowwise, Rounding::Sr) => "nvfp4_quantize_rowwise_sr",
        (Layout::Colwise, Rounding::Rtn) => "nvfp4_quantize_colwise_rtn",
        (Layout::Colwise, Rounding::Sr) => "nvfp4_quantize_colwise_sr",
    };
    let quantize_kernel = g.kernel("nvfp4_quantize", name)?;
    let (gx, gy) = grid(rows_out, k);
    let cfg = LaunchConfig {
        grid: (gx, gy, 1),
        block: (256, 1, 1),
        smem_bytes: 0,
    };
    let (ri, ci) = (r as i32, c as i32);
    let gi: i32 = if spec.rht { 16 } else { 0 };
    let sign_stream = crate::mx::nvfp4::SIGN_STREAM;
    let ti = i32::try_from(tiles).map_err(|_| err(format!("{K}: {tiles} tiles")))?;
    // SAFETY: nvfp4_amax_*(const bf16* src, int R, int C, float* amax_partials, uint64_t seed,
    // uint64_t sign_stream, int g); nvfp4_tensor_scale(float* enc, const float* amax_partials,
    // int n); nvfp4_quantize_*(const bf16* src, int R, int C, const float* enc, uint8_t* codes,
    // uint8_t* scales, double* partials, uint64_t seed, uint64_t sr_stream,
    // uint64_t sign_stream, int g, const uint64_t* sr_base, const uint64_t* sign_base).
    // Lengths, alignment and disjointness checked above; a NULL
    // `partials` is skipped by the kernel.
    unsafe {
        g.launch(
            &amax_kernel,
            cfg,
            &[
                &src,
                &ri,
                &ci,
                &out.amax_partials,
                &spec.seed,
                &sign_stream,
                &gi,
            ],
        )?;
        g.launch(
            &scale_kernel,
            LaunchConfig {
                grid: (1, 1, 1),
                block: (256, 1, 1),
                smem_bytes: 0,
            },
            &[&out.enc, &out.amax_partials, &ti],
        )?;
        g.launch(
            &quantize_kernel,
            cfg,
            &[
                &src,
                &ri,
                &ci,
                &out.enc,
                &out.codes,
                &out.scales,
                &partials,
                &spec.seed,
                &spec.sr_stream,
                &sign_stream,
                &gi,
                &sr_base,
                &sign_base,
            ],
        )
    }
}

/// A quantized K-major NVFP4 operand in device memory: `rows` rows of K packed codes (K/2
/// bytes), K/16 E4M3 scales each, and its tensor record (amax, s_enc).
#[derive(Clone, Copy, Debug)]
pub struct Nvfp4Ref<'a> {
    pub codes: Ptr<'a, u8>,
    pub scales: Ptr<'a, u8>,
    pub enc: Ptr<'a, f32>,
}

/// Which NVFP4 GEMM kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nvfp4GemmKernel {
    /// nvfp4_gemm_mma: s8 mma.sync, one NVFP4 block per instruction (K % 32 == 0).
    Mma,
    /// nvfp4_gemm_plain: the reference loop, one thread per output (any K % 16 == 0).
    Plain,
    /// nvfp4_gemm_tcgen05: Blackwell's block-scaled MMA (compute capability 10.x; not run on
    /// hardware yet).
    Tcgen05,
}

impl Nvfp4GemmKernel {
    /// The kernel `gemm` picks for reduction length `k`: the mma path when it can, else plain.
    pub fn for_k(k: usize) -> Nvfp4GemmKernel {
        if k.is_multiple_of(32) {
            Nvfp4GemmKernel::Mma
        } else {
            Nvfp4GemmKernel::Plain
        }
    }
}

/// `c[m, n] = bf16(v)` or `bf16(c + v)` with `accumulate`, v = (Σ_j sA sB dot_j) / (encA encB)
/// over A [m, k] and B [n, k]: bit-identical to `gpt::mx::nvfp4::nvfp4_gemm_reference` before
/// the bf16 rounding (both the mma and the plain kernel; see nvfp4_gemm.cu). Picks the mma
/// kernel when K % 32 == 0, else the plain one.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    g: &Gpu,
    c: Ptr<bf16>,
    a: Nvfp4Ref,
    b: Nvfp4Ref,
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
) -> Result<()> {
    gemm_with(g, Nvfp4GemmKernel::for_k(k), c, a, b, m, n, k, accumulate)
}

/// `gemm` with the kernel named (tests run every one).
#[allow(clippy::too_many_arguments)]
pub fn gemm_with(
    g: &Gpu,
    kernel: Nvfp4GemmKernel,
    c: Ptr<bf16>,
    a: Nvfp4Ref,
    b: Nvfp4Ref,
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
) -> Result<()> {
    let name = match kernel {
        Nvfp4GemmKernel::Mma => "nvfp4_gemm_mma",
        Nvfp4GemmKernel::Plain => "nvfp4_gemm_plain",
        Nvfp4GemmKernel::Tcgen05 => "nvfp4_gemm_tcgen05",
    };
    let dim = |what: &str, v: usize| super::check_dim(name, what, v);
    let (mi, ni, ki) = (dim("m", m)?, dim("n", n)?, dim("k", k)?);
    let step = if kernel == Nvfp4GemmKernel::Plain {
        BLOCK
    } else {
        32
    };
    if !k.is_multiple_of(step) {
        return Err(err(format!(
            "{name}: K = {k} is not a multiple of {step}{}",
            if step == 32 {
                " (nvfp4_gemm_plain takes any multiple of 16)"
            } else {
                " (the NVFP4 block)"
            }
        )));
    }
    if !a.codes.addr().is_multiple_of(16) || !b.codes.addr().is_multiple_of(16) {
        return Err(err(format!("{name}: code arrays must be 16-byte aligned")));
    }
    check_len(name, "c", &c, m * n)?;
    check_len(name, "a.codes", &a.codes, m * k / 2)?;
    check_len(name, "a.scales", &a.scales, m * k / BLOCK)?;
    check_len(name, "a.enc", &a.enc, 2)?;
    check_len(name, "b.codes", &b.codes, n * k / 2)?;
    check_len(name, "b.scales", &b.scales, n * k / BLOCK)?;
    check_len(name, "b.enc", &b.enc, 2)?;
    check_disjoint(
        name,
        &[span("c", &c, m * n)],
        &[
            span("a.codes", &a.codes, m * k / 2),
            span("a.scales", &a.scales, m * k / BLOCK),
            span("a.enc", &a.enc, 2),
            span("b.codes", &b.codes, n * k / 2),
            span("b.scales", &b.scales, n * k / BLOCK),
            span("b.enc", &b.enc, 2),
        ],
    )?;
    let (cfg, module) = match kernel {
        Nvfp4GemmKernel::Plain => {
            if n.div_ceil(256) > 65_535 {
                return Err(err(format!("{name}: N = {n} is too large a grid")));
            }
            (
                LaunchConfig {
                    grid: (m as u32, n.div_ceil(256) as u32, 1),
                    block: (256, 1, 1),
                    smem_bytes: 0,
                },
                "nvfp4_gemm",
            )
        }
        _ => {
            if m.div_ceil(128) > u32::MAX as usize || n.div_ceil(128) > 65_535 {
                return Err(err(format!("{name}: {m} x {n} is too large a grid")));
            }
            let threads = if kernel == Nvfp4GemmKernel::Mma {
                256
            } else {
                128
            };
            (
                LaunchConfig {
                    grid: (m.div_ceil(128) as u32, n.div_ceil(128) as u32, 1),
                    block: (threads, 1, 1),
                    smem_bytes: 0,
                },
                if kernel == Nvfp4GemmKernel::Mma {
                    "nvfp4_gemm"
                } else {
                    "nvfp4_gemm_tcgen05"
                },
            )
        }
    };
    if kernel == Nvfp4GemmKernel::Tcgen05 {
        let props = g.props();
        let (major, minor) = props.compute_capability;
        if major != 10 {
            return Err(err(format!(
                "{name}: {} has compute capability {major}.{minor}, but this path needs a \
                 Blackwell GPU of compute capability 10.x (sm_100a: tcgen05.mma \
                 kind::mxf4nvf4); it has also never run on hardware. Use the mma kernel",
                props.name
            )));
        }
    }
    let kern = g.kernel(module, name)?;
    let acc = accumulate as i32;
    // SAFETY: NAME(bf16* C, const uint8_t* a_codes, const uint8_t* a_scales, const float* a_enc,
    // const uint8_t* b_codes, const uint8_t* b_scales, const float* b_enc, int M, int N, int K,
    // int accumulate) for all three kernels; lengths, alignment and disjointness checked above.
    unsafe {
        g.launch(
            &kern,
            cfg,
            &[
                &c, &a.codes, &a.scales, &a.enc, &b.codes, &b.scales, &b.enc, &mi, &ni, &ki, &acc,
            ],
        )
    }
}
