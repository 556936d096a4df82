//! Launchers for ptx/kernels/gemm.cu and ptx/kernels/gemm_fast.cu: the three matmuls of a
//! linear layer on bf16 tensor cores (mma.sync, FP32 accumulation, one rounding to bf16) and the
//! deterministic bias gradient. Semantics are those of `gpt::cpu::ops::{matmul_forward,
//! matmul_backward_input, matmul_backward_weight, bias_backward}` (and `gelu` for the forward's
//! optional epilogue), on bf16 row-major tensors: `rows` tokens, `ic` input channels, `oc` output
//! channels, weights `w` [oc, ic]. Any shape >= 1.
//!
//! Two kernel families compute the same values:
//! - gemm.cu, the readable reference: 128 x 128 tiles, two stages. `*_vec` (16-byte cp.async
//!   loads) when `ic` and `oc` are multiples of 8 and every pointer is 16-byte aligned (always
//!   true for whole `DeviceBuffer`s and the model's shapes), `*_scalar` otherwise (any shape,
//!   2-byte alignment).
//! - gemm_fast.cu: 128 x 256 tiles, 64 x 64 per warp, a 4-stage cp.async ring with one barrier
//!   per k step, swizzled shared memory, grouped block order, a deterministic split-K, and fused
//!   epilogues (bias gradient in backward_weight, GELU backward in backward_input). It needs
//!   what `*_vec` needs and 96 KiB of opt-in shared memory per block.
//!
//! Selection ([`GemmOptions`]). By default (`GemmKernels::Auto`) every launcher takes the fast
//! kernel wherever its conditions hold and the reference `*_vec` / `*_scalar` elsewhere. Without
//! split-K the two families give the same bits (same k order, same epilogue; checked bit for
//! bit by tests/tests/gpu_gemm.rs on the harness), so the default changes speed, not results.
//! `MXGPT_GEMM=reference` forces gemm.cu everywhere, `MXGPT_GEMM=nosplit` keeps the fast kernel
//! but never splits K: NEITHER family has run on a GPU yet, and the reference stays selectable
//! until a GPU run has checked the fast one (read once per process; an unknown value is an
//! error at the first GEMM). Tests and benchmarks pass options explicitly to the `*_with`
//! launchers.
//!
//! Split-K ([`split_plan`]) only where a scratch buffer is passed (the `*_with` launchers for
//! backward_input and backward_weight; the backend passes its work buffer) and only for shapes
//! that launch fewer than 2 x 132 tiles. The number of splits is a function of the shape alone
//! (a cost model of a nominal H100 SXM, never the GPU at hand), so a shape always gives the same
//! bits. Results with and without split-K differ by f32 reassociation (bounded; see
//! gemm_fast.cu), each deterministic.

use super::{check_dim, check_disjoint, check_len, span, Ptr, Span};
use runtime::cuda::{half::bf16, CudaError, Gpu, LaunchConfig, Result};
use std::sync::OnceLock;

/// Output tile of one reference block (GEMM_BM = GEMM_BN in gemm.cu) and its thread count.
const TILE: usize = 128;
const THREADS: u32 = 256;
/// Rows per partial sum of the bias gradient (BIAS_CHUNK_ROWS in gemm.cu).
const BIAS_CHUNK_ROWS: usize = 256;

/// The fast kernel's tile (FG_BM x FG_BN in gemm_fast.cu), k step, threads, shared memory.
pub const FAST_TILE: (usize, usize) = (128, 256);
const FAST_BK: usize = 32;
const FAST_THREADS: u32 = 256;
const FAST_SMEM_BYTES: u32 = (4 * (FAST_TILE.0 + FAST_TILE.1) * FAST_BK * 2) as u32;
/// Split-K partitions K in multiples of this (FG_CHUNK_ROWS: a bias-gradient chunk, 8 k steps).
pub const SPLIT_UNIT: usize = 256;
/// The most splits the automatic plan uses.
pub const MAX_AUTO_SPLITS: usize = 16;
/// The nominal machine of the split-K cost model (H100 SXM): SMs, mma.sync FLOP/s per SM (~60%
/// of 990 TFLOP/s), and HBM bytes/s. Fixed so that the plan, and so the bits, depend only on
/// the shape.
const PLAN_SMS: usize = 132;
const PLAN_FLOPS_PER_SM: f64 = 600e12 / 132.0;
const PLAN_BYTES_PER_S: f64 = 3.0e12;

/// Which kernel family the launchers use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmKernels {
    /// gemm_fast.cu where its conditions hold (see the module doc), gemm.cu elsewhere.
    Auto,
    /// gemm.cu always; fused epilogues run as the separate kernels they replace.
    Reference,
}

/// How the fast kernel splits K (it never does without a scratch buffer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitK {
    /// [`split_plan`]'s choice for the shape.
    Auto,
    /// Never.
    Off,
    /// About this many splits: K is cut into pieces of `ceil(K / n)` rounded up to
    /// [`SPLIT_UNIT`], so the count may come out lower (1 when K <= 256).
    Splits(usize),
}

/// Kernel selection for one launch (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmOptions {
    pub kernels: GemmKernels,
    pub split_k: SplitK,
}

impl Default for GemmOptions {
    fn default() -> Self {
        GemmOptions {
            kernels: GemmKernels::Auto,
            split_k: SplitK::Auto,
        }
    }
}

impl GemmOptions {
    /// gemm.cu everywhere.
    pub const REFERENCE: GemmOptions = GemmOptions {
        kernels: GemmKernels::Reference,
        split_k: SplitK::Off,
    };

    /// `auto` (the default), `reference` or `nosplit`: the values of `MXGPT_GEMM`.
    pub fn parse(s: &str) -> std::result::Result<GemmOptions, String> {
        match s {
            "" | "auto" => Ok(GemmOptions::default()),
            "reference" => Ok(GemmOptions::REFERENCE),
            "nosplit" => Ok(GemmOptions {
                kernels: GemmKernels::Auto,
                split_k: SplitK::Off,
            }),
            other => Err(format!(
                "MXGPT_GEMM={other}: expected auto, reference or nosplit"
            )),
        }
    }

    /// The options of `MXGPT_GEMM` (read once per process; unset means `auto`).
    pub fn from_env() -> Result<GemmOptions> {
        static ENV: OnceLock<std::result::Result<GemmOptions, String>> = OnceLock::new();
        ENV.get_or_init(|| GemmOptions::parse(&std::env::var("MXGPT_GEMM").unwrap_or_default()))
            .clone()
            .map_err(|e| CudaError::new(e, 1))
    }
}

/// How a launch splits K: `splits` blocks per output tile, split `s` covering
/// `[s * k_per_split, min(K, (s + 1) * k_per_split))` (`k_per_split` a multiple of
/// [`SPLIT_UNIT`] when `splits > 1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitPlan {
    pub splits: usize,
    pub k_per_split: usize,
}

/// The split of an M x N x K fast GEMM. `SplitK::Auto`: none when the shape already launches
/// at least 2 x 132 tiles (and none for K <= 256, which cannot split); otherwise the split count in 1..=16 that minimizes, on a
/// nominal H100 SXM (132 SMs, one block each, 600 TFLOP/s, 3 TB/s),
///   ceil(tiles * S / 132) * (2 * 128 * 256 * k_per_split) / (FLOP/s per SM)   (rounds of blocks)
///   + 8 * S * M * N / (bytes/s)                       (f32 partials written and read back)
/// (ties to the smaller S). A function of the shape only. At GPT-2 124M (rows 8192) this splits
/// the wgrads of qkv (2), attproj (7), fc and fcproj (3), and the LM head's dgrad (2).
pub fn split_plan(split: SplitK, m: usize, n: usize, k: usize) -> SplitPlan {
    let none = SplitPlan {
        splits: 1,
        k_per_split: k,
    };
    let plan = |n_splits: usize| {
        let kps = k.div_ceil(n_splits.max(1)).next_multiple_of(SPLIT_UNIT);
        SplitPlan {
            splits: k.div_ceil(kps),
            k_per_split: kps,
        }
    };
    // Beyond 2^30 the kernel's int arithmetic on k ranges could overflow: never split.
    if k > 1 << 30 {
        return none;
    }
    match split {
        SplitK::Off => none,
        SplitK::Splits(s) => {
            let p = plan(s);
            if p.splits > 1 {
                p
            } else {
                none
            }
        }
        SplitK::Auto => {
            let tiles = m.div_ceil(FAST_TILE.0) * n.div_ceil(FAST_TILE.1);
            if tiles >= 2 * PLAN_SMS {
                return none;
            }
            let block_flops = (2 * FAST_TILE.0 * FAST_TILE.1) as f64;
            let cost = |p: SplitPlan| {
                let rounds = (tiles * p.splits).div_ceil(PLAN_SMS) as f64;
                let main = rounds * block_flops * p.k_per_split as f64 / PLAN_FLOPS_PER_SM;
                let reduce = if p.splits > 1 {
                    8.0 * (p.splits * m * n) as f64 / PLAN_BYTES_PER_S
                } else {
                    0.0
                };
                main + reduce
            };
            let mut best = (cost(none), none);
            for s in 2..=MAX_AUTO_SPLITS {
                let p = plan(s);
                if p.splits != s {
                    continue; // the same count as a smaller request
                }
                let c = cost(p);
                if c < best.0 {
                    best = (c, p);
                }
            }
            best.1
        }
    }
}

/// What a `*_with` launch ran: the kernel (`module::name`) and the split-K count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GemmRun {
    pub kernel: String,
    pub splits: usize,
}

fn product(kernel: &str, a: usize, b: usize) -> Result<usize> {
    a.checked_mul(b)
        .ok_or_else(|| CudaError::new(format!("{kernel}: {a} * {b} overflows"), 1))
}

/// Kernel variant: "vec" when every leading dimension (ic, oc) is a multiple of 8 bf16 and
/// every pointer is 16-byte aligned, else "scalar".
fn variant(ic: usize, oc: usize, addrs: &[u64]) -> &'static str {
    if ic.is_multiple_of(8) && oc.is_multiple_of(8) && addrs.iter().all(|a| a.is_multiple_of(16)) {
        "vec"
    } else {
        "scalar"
    }
}

/// Whether this launch takes gemm_fast.cu: the options allow it, the `vec` conditions hold,
/// the tile count fits the kernel's int index, and the device grants 96 KiB of shared memory.
fn fast_ok(
    g: &Gpu,
    opts: &GemmOptions,
    ic: usize,
    oc: usize,
    m: usize,
    n: usize,
    addrs: &[u64],
) -> bool {
    opts.kernels == GemmKernels::Auto
        && variant(ic, oc, addrs) == "vec"
        && m.div_ceil(FAST_TILE.0)
            .checked_mul(n.div_ceil(FAST_TILE.1))
            .is_some_and(|t| t <= i32::MAX as usize)
        && g.props().smem_per_block_optin >= FAST_SMEM_BYTES
}

/// One block per 128 x 128 tile of C[m, n]: x over M (the long, growing dimension; up to
/// 2^31-1 blocks), y over N (at most 65535 blocks, N <= 8.3M; checked at launch).
fn gemm_cfg(m: usize, n: usize) -> LaunchConfig {
    LaunchConfig {
        grid: (
            m.div_ceil(TILE).min(u32::MAX as usize) as u32,
            n.div_ceil(TILE).min(u32::MAX as usize) as u32,
            1,
        ),
        block: (THREADS, 1, 1),
        smem_bytes: 0, // static, at most 40 KiB
    }
}

/// The operands of one fast launch (C[m, n] = A . B with the form's layouts).
struct Fast<'a> {
    /// gemm_fast_kk (forward, kmajor), gemm_fast_kn (backward_input), gemm_fast_nn
    /// (backward_weight).
    kernel: &'static str,
    c: Ptr<'a, bf16>,
    gelu_out: Option<Ptr<'a, bf16>>,
    a: Ptr<'a, bf16>,
    b: Ptr<'a, bf16>,
    bias: Option<Ptr<'a, bf16>>,
    gelu_pre: Option<Ptr<'a, bf16>>,
    bias_partials: Option<Ptr<'a, f32>>,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    accumulate: bool,
}

/// Launches gemm_fast_* (and gemm_fast_reduce when `split` has more than one split; its
/// `partials` must hold `splits * m * n` f32, 16-byte aligned). Shapes and lengths are checked
/// by the caller.
fn launch_fast(g: &Gpu, f: &Fast, split: Option<(SplitPlan, Ptr<f32>)>) -> Result<GemmRun> {
    let addr = |p: Option<u64>| p.unwrap_or(0); // NULL
    let (mi, ni, ki) = (f.m as i32, f.n as i32, f.k as i32);
    let tiles = f.m.div_ceil(FAST_TILE.0) * f.n.div_ceil(FAST_TILE.1);
    let (splits, kps, partials) = match split {
        Some((p, buf)) if p.splits > 1 => (p.splits, p.k_per_split, buf.addr()),
        _ => (1, f.k, 0),
    };
    let kernel = g.kernel("gemm_fast", f.kernel)?;
    g.set_max_dynamic_smem(&kernel, FAST_SMEM_BYTES)?;
    let cfg = LaunchConfig {
        grid: (tiles as u32, splits as u32, 1),
        block: (FAST_THREADS, 1, 1),
        smem_bytes: FAST_SMEM_BYTES,
    };
    let (gelu_out, bias, gelu_pre, bias_partials) = (
        addr(f.gelu_out.map(|p| p.addr())),
        addr(f.bias.map(|p| p.addr())),
        addr(f.gelu_pre.map(|p| p.addr())),
        addr(f.bias_partials.map(|p| p.addr())),
    );
    let (kpsi, acc) = (kps as i32, f.accumulate as i32);
    // With split-K the GEMM writes only partials; the reduce kernel writes C.
    let (c_gemm, gelu_gemm, bias_gemm, pre_gemm) = if splits > 1 {
        (0u64, 0u64, 0u64, 0u64)
    } else {
        (f.c.addr(), gelu_out, bias, gelu_pre)
    };
    // SAFETY: gemm_fast_{kk,kn,nn}(bf16* C, bf16* gelu_out, const bf16* A, const bf16* B,
    // const bf16* bias, const bf16* gelu_pre, float* partials, float* bias_partials, int M,
    // int N, int K, int k_per_split, float alpha, int accumulate); lengths, alignment and
    // disjointness checked by the caller; partials sized splits * M * N.
    unsafe {
        g.launch(
            &kernel,
            cfg,
            &[
                &c_gemm,
                &gelu_gemm,
                &f.a,
                &f.b,
                &bias_gemm,
                &pre_gemm,
                &partials,
                &bias_partials,
                &mi,
                &ni,
                &ki,
                &kpsi,
                &f.alpha,
                &acc,
            ],
        )?;
    }
    if splits > 1 {
        let reduce = g.kernel("gemm_fast", "gemm_fast_reduce")?;
        let si = splits as i32;
        // SAFETY: gemm_fast_reduce(bf16* C, bf16* gelu_out, const float* partials,
        // const bf16* bias, const bf16* gelu_pre, int M, int N, int splits, float alpha,
        // int accumulate); one thread per 8 columns (N % 8 == 0 on the fast path).
        unsafe {
            g.launch(
                &reduce,
                LaunchConfig::linear(f.m * (f.n / 8), 256),
                &[
                    &f.c, &gelu_out, &partials, &bias, &gelu_pre, &mi, &ni, &si, &f.alpha, &acc,
                ],
            )?;
        }
    }
    Ok(GemmRun {
        kernel: format!("gemm_fast::{}", f.kernel),
        splits,
    })
}

/// The split of a fast launch with optional scratch: none without scratch.
fn plan_with(
    opts: &GemmOptions,
    scratch: Option<&Ptr<f32>>,
    m: usize,
    n: usize,
    k: usize,
) -> SplitPlan {
    match scratch {
        Some(_) => split_plan(opts.split_k, m, n, k),
        None => split_plan(SplitK::Off, m, n, k),
    }
}

/// f32 elements of scratch that `matmul_backward_input_with` and `matmul_backward_weight_with`
/// (with a bias gradient) need for one linear layer under `opts`: the larger of the dgrad's and
/// the wgrad's split-K partials (the wgrad's plus the bias gradient's partial sums). At least 1.
pub fn matmul_backward_scratch_len(opts: &GemmOptions, rows: usize, ic: usize, oc: usize) -> usize {
    let fast = opts.kernels == GemmKernels::Auto;
    let partials = |m: usize, n: usize, k: usize| {
        let p = split_plan(opts.split_k, m, n, k);
        if fast && p.splits > 1 {
            p.splits * m * n
        } else {
            0
        }
    };
    let dgrad = partials(rows, ic, oc);
    let wgrad = partials(oc, ic, rows) + bias_backward_scratch_len(rows, oc);
    dgrad.max(wgrad).max(1)
}

/// `matmul_backward_scratch_len` over the linear layers of a GPT-2 model with `c` channels and
/// a `padded_vocab` LM head, at `rows` tokens: qkv (c -> 3c), attproj (c -> c), fc (c -> 4c),
/// fcproj (4c -> c), lm_head (c -> padded_vocab). At 124M (rows 8192) that is the LM head's
/// dgrad partials, 2 x 8192 x 768 f32 (50 MB).
pub fn linear_layers_scratch_len(
    opts: &GemmOptions,
    rows: usize,
    c: usize,
    padded_vocab: usize,
) -> usize {
    [
        (c, 3 * c),
        (c, c),
        (c, 4 * c),
        (4 * c, c),
        (c, padded_vocab),
    ]
    .iter()
    .map(|&(ic, oc)| matmul_backward_scratch_len(opts, rows, ic, oc))
    .max()
    .unwrap_or(1)
}

/// `out[rows, oc] = inp[rows, ic] · w[oc, ic]^T (+ bias[oc])`, overwriting `out`. With
/// `gelu_out`, also `gelu_out = gelu(out)` computed from the bf16-rounded `out` (which keeps the
/// pre-activation), as the backward pass will see it. No operand may overlap another
/// (checked): outputs `out`, `gelu_out`; inputs `inp`, `w`, `bias`. Kernel choice: `MXGPT_GEMM`
/// (module doc); never split-K.
#[allow(clippy::too_many_arguments)]
pub fn matmul_forward(
    g: &Gpu,
    out: Ptr<bf16>,
    inp: Ptr<bf16>,
    w: Ptr<bf16>,
    bias: Option<Ptr<bf16>>,
    gelu_out: Option<Ptr<bf16>>,
    rows: usize,
    ic: usize,
    oc: usize,
) -> Result<()> {
    let opts = GemmOptions::from_env()?;
    matmul_forward_with(g, &opts, out, inp, w, bias, gelu_out, rows, ic, oc).map(|_| ())
}

/// `matmul_forward` with explicit kernel options; returns what ran.
#[allow(clippy::too_many_arguments)]
pub fn matmul_forward_with(
    g: &Gpu,
    opts: &GemmOptions,
    out: Ptr<bf16>,
    inp: Ptr<bf16>,
    w: Ptr<bf16>,
    bias: Option<Ptr<bf16>>,
    gelu_out: Option<Ptr<bf16>>,
    rows: usize,
    ic: usize,
    oc: usize,
) -> Result<GemmRun> {
    const K: &str = "matmul_forward";
    let (ri, ii, oi) = (
        check_dim(K, "rows", rows)?,
        check_dim(K, "ic", ic)?,
        check_dim(K, "oc", oc)?,
    );
    let (n_out, n_inp, n_w) = (
        product(K, rows, oc)?,
        product(K, rows, ic)?,
        product(K, oc, ic)?,
    );
    check_len(K, "out", &out, n_out)?;
    check_len(K, "inp", &inp, n_inp)?;
    check_len(K, "w", &w, n_w)?;
    let mut outputs = vec![span("out", &out, n_out)];
    let mut inputs = vec![span("inp", &inp, n_inp), span("w", &w, n_w)];
    let mut addrs = vec![out.addr(), inp.addr(), w.addr()];
    if let Some(b) = &bias {
        check_len(K, "bias", b, oc)?;
        inputs.push(span("bias", b, oc));
        addrs.push(b.addr());
    }
    if let Some(ge) = &gelu_out {
        check_len(K, "gelu_out", ge, n_out)?;
        outputs.push(span("gelu_out", ge, n_out));
        addrs.push(ge.addr());
    }
    check_disjoint(K, &outputs, &inputs)?;
    if fast_ok(g, opts, ic, oc, rows, oc, &addrs) {
        let f = Fast {
            kernel: "gemm_fast_kk",
            c: out,
            gelu_out,
            a: inp,
            b: w,
            bias,
            gelu_pre: None,
            bias_partials: None,
            m: rows,
            n: oc,
            k: ic,
            alpha: 1.0,
            accumulate: false,
        };
        return launch_fast(g, &f, None);
    }
    let name = format!("{K}_{}", variant(ic, oc, &addrs));
    let k = g.kernel("gemm", &name)?;
    let bias_addr: u64 = bias.map_or(0, |b| b.addr()); // NULL: no bias
    let gelu_addr: u64 = gelu_out.map_or(0, |p| p.addr()); // NULL: no GELU output
                                                           // SAFETY: argument list matches matmul_forward_{vec,scalar}(bf16* out, bf16* gelu_out,
                                                           // const bf16* inp, const bf16* w, const bf16* bias, int rows, int ic, int oc); lengths and
                                                           // alignment checked above.
    unsafe {
        g.launch(
            &k,
            gemm_cfg(rows, oc),
            &[&out, &gelu_addr, &inp, &w, &bias_addr, &ri, &ii, &oi],
        )?;
    }
    Ok(GemmRun {
        kernel: format!("gemm::{name}"),
        splits: 1,
    })
}

/// `dinp[rows, ic] = dout[rows, oc] · w[oc, ic]`, overwriting `dinp`. `dinp` may not overlap
/// `dout` or `w` (checked). Kernel choice: `MXGPT_GEMM` (module doc); never split-K.
pub fn matmul_backward_input(
    g: &Gpu,
    dinp: Ptr<bf16>,
    dout: Ptr<bf16>,
    w: Ptr<bf16>,
    rows: usize,
    ic: usize,
    oc: usize,
) -> Result<()> {
    let opts = GemmOptions::from_env()?;
    matmul_backward_input_with(g, &opts, dinp, dout, w, None, None, rows, ic, oc).map(|_| ())
}

/// `matmul_backward_input` with explicit options, and optionally:
/// - `gelu_pre` [rows, ic]: the GELU backward folded in, `dinp = bf16(bf16(dout · w) *
///   gelu'(gelu_pre))`: bit for bit what `matmul_backward_input` followed by
///   `gelu::gelu_backward_inplace(dinp, gelu_pre)` gives (the reference path runs exactly
///   that; the fast kernel does it in its epilogue, saving a write and two reads of
///   [rows, ic]). `gelu_pre` may not overlap `dinp`.
/// - `scratch`: allows split-K ([`split_plan`]); needs `splits * rows * ic` f32, 16-byte
///   aligned ([`matmul_backward_scratch_len`] covers it). It is overwritten.
#[allow(clippy::too_many_arguments)]
pub fn matmul_backward_input_with(
    g: &Gpu,
    opts: &GemmOptions,
    dinp: Ptr<bf16>,
    dout: Ptr<bf16>,
    w: Ptr<bf16>,
    gelu_pre: Option<Ptr<bf16>>,
    scratch: Option<Ptr<f32>>,
    rows: usize,
    ic: usize,
    oc: usize,
) -> Result<GemmRun> {
    const K: &str = "matmul_backward_input";
    let (ri, ii, oi) = (
        check_dim(K, "rows", rows)?,
        check_dim(K, "ic", ic)?,
        check_dim(K, "oc", oc)?,
    );
    let (n_dinp, n_dout, n_w) = (
        product(K, rows, ic)?,
        product(K, rows, oc)?,
        product(K, oc, ic)?,
    );
    check_len(K, "dinp", &dinp, n_dinp)?;
    check_len(K, "dout", &dout, n_dout)?;
    check_len(K, "w", &w, n_w)?;
    let mut inputs: Vec<Span> = vec![span("dout", &dout, n_dout), span("w", &w, n_w)];
    let mut outputs: Vec<Span> = vec![span("dinp", &dinp, n_dinp)];
    let mut addrs = vec![dinp.addr(), dout.addr(), w.addr()];
    if let Some(p) = &gelu_pre {
        check_len(K, "gelu_pre", p, n_dinp)?;
        inputs.push(span("gelu_pre", p, n_dinp));
        addrs.push(p.addr());
    }
    if let Some(s) = &scratch {
        outputs.push(span("scratch", s, s.len()));
    }
    check_disjoint(K, &outputs, &inputs)?;
    if fast_ok(g, opts, ic, oc, rows, ic, &addrs) {
        let plan = plan_with(opts, scratch.as_ref(), rows, ic, oc);
        let split = match scratch {
            Some(s) if plan.splits > 1 => {
                check_len(K, "scratch (split-K partials)", &s, plan.splits * n_dinp)?;
                check_aligned(K, "scratch", s.addr())?;
                Some((plan, s))
            }
            _ => None,
        };
        let f = Fast {
            kernel: "gemm_fast_kn",
            c: dinp,
            gelu_out: None,
            a: dout,
            b: w,
            bias: None,
            gelu_pre,
            bias_partials: None,
            m: rows,
            n: ic,
            k: oc,
            alpha: 1.0,
            accumulate: false,
        };
        return launch_fast(g, &f, split);
    }
    let name = format!("{K}_{}", variant(ic, oc, &addrs[..3]));
    let k = g.kernel("gemm", &name)?;
    // SAFETY: matches matmul_backward_input_{vec,scalar}(bf16* dinp, const bf16* dout,
    // const bf16* w, int rows, int ic, int oc); lengths and alignment checked above.
    unsafe { g.launch(&k, gemm_cfg(rows, ic), &[&dinp, &dout, &w, &ri, &ii, &oi])? };
    if let Some(pre) = gelu_pre {
        super::gelu::gelu_backward_inplace(g, dinp, pre, n_dinp)?;
    }
    Ok(GemmRun {
        kernel: format!("gemm::{name}"),
        splits: 1,
    })
}

fn check_aligned(kernel: &str, what: &str, addr: u64) -> Result<()> {
    if !addr.is_multiple_of(16) {
        return Err(CudaError::new(
            format!("{kernel}: {what} must be 16-byte aligned"),
            1,
        ));
    }
    Ok(())
}

/// `dw[oc, ic] += dout[rows, oc]^T · inp[rows, ic]`: ACCUMULATES into the existing bf16
/// gradient (old value added in f32, one rounding). `dw` may not overlap `dout` or `inp`
/// (checked). Kernel choice: `MXGPT_GEMM` (module doc); never split-K.
pub fn matmul_backward_weight(
    g: &Gpu,
    dw: Ptr<bf16>,
    dout: Ptr<bf16>,
    inp: Ptr<bf16>,
    rows: usize,
    ic: usize,
    oc: usize,
) -> Result<()> {
    let opts = GemmOptions::from_env()?;
    matmul_backward_weight_with(g, &opts, dw, None, dout, inp, None, rows, ic, oc).map(|_| ())
}

/// `matmul_backward_weight` with explicit options, and optionally:
/// - `dbias` [oc]: also `dbias += column sums of dout`, bit for bit what `bias_backward`
///   gives (the reference path runs it; the fast kernel computes the same per-256-row partial
///   sums from the dout tiles it already has in shared memory, then `bias_backward`'s finishing
///   kernel: one pass over dout [rows, oc] less). Needs `scratch`.
/// - `scratch`: allows split-K ([`split_plan`]) and holds the bias partial sums; needs
///   [`matmul_backward_scratch_len`] f32 (at least `splits * oc * ic` + `bias_backward_scratch_len`
///   with a bias), 16-byte aligned. It is overwritten.
#[allow(clippy::too_many_arguments)]
pub fn matmul_backward_weight_with(
    g: &Gpu,
    opts: &GemmOptions,
    dw: Ptr<bf16>,
    dbias: Option<Ptr<bf16>>,
    dout: Ptr<bf16>,
    inp: Ptr<bf16>,
    scratch: Option<Ptr<f32>>,
    rows: usize,
    ic: usize,
    oc: usize,
) -> Result<GemmRun> {
    const K: &str = "matmul_backward_weight";
    let (ri, ii, oi) = (
        check_dim(K, "rows", rows)?,
        check_dim(K, "ic", ic)?,
        check_dim(K, "oc", oc)?,
    );
    let (n_dw, n_dout, n_inp) = (
        product(K, oc, ic)?,
        product(K, rows, oc)?,
        product(K, rows, ic)?,
    );
    check_len(K, "dw", &dw, n_dw)?;
    check_len(K, "dout", &dout, n_dout)?;
    check_len(K, "inp", &inp, n_inp)?;
    let mut outputs: Vec<Span> = vec![span("dw", &dw, n_dw)];
    let inputs: Vec<Span> = vec![span("dout", &dout, n_dout), span("inp", &inp, n_inp)];
    if let Some(db) = &dbias {
        check_len(K, "dbias", db, oc)?;
        outputs.push(span("dbias", db, oc));
        if scratch.is_none() {
            return Err(CudaError::new(
                format!("{K}: a bias gradient needs a scratch buffer"),
                1,
            ));
        }
    }
    if let Some(s) = &scratch {
        outputs.push(span("scratch", s, s.len()));
    }
    check_disjoint(K, &outputs, &inputs)?;
    let addrs = [dw.addr(), dout.addr(), inp.addr()];
    let chunks = rows.div_ceil(BIAS_CHUNK_ROWS);
    if fast_ok(g, opts, ic, oc, oc, ic, &addrs) {
        let plan = plan_with(opts, scratch.as_ref(), oc, ic, rows);
        let n_partials = if plan.splits > 1 {
            plan.splits * n_dw
        } else {
            0
        };
        let n_bias = if dbias.is_some() { chunks * oc } else { 0 };
        let (split, bias_partials) = match scratch {
            Some(s) if n_partials + n_bias > 0 => {
                check_len(K, "scratch", &s, n_partials + n_bias)?;
                check_aligned(K, "scratch", s.addr())?;
                (
                    (n_partials > 0).then(|| (plan, s.slice(0, n_partials))),
                    (n_bias > 0).then(|| s.slice(n_partials, n_bias)),
                )
            }
            _ => (None, None),
        };
        let f = Fast {
            kernel: "gemm_fast_nn",
            c: dw,
            gelu_out: None,
            a: dout,
            b: inp,
            bias: None,
            gelu_pre: None,
            bias_partials,
            m: oc,
            n: ic,
            k: rows,
            alpha: 1.0,
            accumulate: true,
        };
        let run = launch_fast(g, &f, split)?;
        if let (Some(db), Some(partials)) = (dbias, bias_partials) {
            bias_finish(g, db, partials, chunks, oc)?;
        }
        return Ok(run);
    }
    let name = format!("{K}_{}", variant(ic, oc, &addrs));
    let k = g.kernel("gemm", &name)?;
    // SAFETY: matches matmul_backward_weight_{vec,scalar}(bf16* dw, const bf16* dout,
    // const bf16* inp, int rows, int ic, int oc); lengths and alignment checked above.
    unsafe { g.launch(&k, gemm_cfg(oc, ic), &[&dw, &dout, &inp, &ri, &ii, &oi])? };
    if let (Some(db), Some(s)) = (dbias, scratch) {
        bias_backward(g, db, dout, s, rows, oc)?;
    }
    Ok(GemmRun {
        kernel: format!("gemm::{name}"),
        splits: 1,
    })
}

/// `c[m, n] = bf16(alpha · Σ_k a[m, k] b[n, k])`, or `c = bf16(c + alpha · Σ ...)` with
/// `accumulate`: both operands K-major (the forward form's loop, FP32 accumulation, one
/// rounding). The MXFP4 bf16 path runs its dequantized operands through this with alpha = 16/9
/// (SR) or 1. `c` may not overlap `a` or `b` (checked). Kernel choice: `MXGPT_GEMM` (module
/// doc; the fast kernel gives the reference's bits); never split-K.
#[allow(clippy::too_many_arguments)]
pub fn matmul_kmajor(
    g: &Gpu,
    c: Ptr<bf16>,
    a: Ptr<bf16>,
    b: Ptr<bf16>,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    accumulate: bool,
) -> Result<()> {
    let opts = GemmOptions::from_env()?;
    matmul_kmajor_with(g, &opts, c, a, b, m, n, k, alpha, accumulate).map(|_| ())
}

/// `matmul_kmajor` with explicit options; returns what ran.
#[allow(clippy::too_many_arguments)]
pub fn matmul_kmajor_with(
    g: &Gpu,
    opts: &GemmOptions,
    c: Ptr<bf16>,
    a: Ptr<bf16>,
    b: Ptr<bf16>,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    accumulate: bool,
) -> Result<GemmRun> {
    const K: &str = "matmul_kmajor";
    let (mi, ni, ki) = (
        check_dim(K, "m", m)?,
        check_dim(K, "n", n)?,
        check_dim(K, "k", k)?,
    );
    let (n_c, n_a, n_b) = (product(K, m, n)?, product(K, m, k)?, product(K, n, k)?);
    check_len(K, "c", &c, n_c)?;
    check_len(K, "a", &a, n_a)?;
    check_len(K, "b", &b, n_b)?;
    check_disjoint(
        K,
        &[span("c", &c, n_c)],
        &[span("a", &a, n_a), span("b", &b, n_b)],
    )?;
    let addrs = [c.addr(), a.addr(), b.addr()];
    if fast_ok(g, opts, k, n, m, n, &addrs) {
        let f = Fast {
            kernel: "gemm_fast_kk",
            c,
            gelu_out: None,
            a,
            b,
            bias: None,
            gelu_pre: None,
            bias_partials: None,
            m,
            n,
            k,
            alpha,
            accumulate,
        };
        return launch_fast(g, &f, None);
    }
    let name = format!("{K}_{}", variant(k, n, &addrs));
    let kernel = g.kernel("gemm", &name)?;
    let acc = accumulate as i32;
    // SAFETY: matmul_kmajor_{vec,scalar}(bf16* C, const bf16* A, const bf16* B, int M, int N,
    // int K, float alpha, int accumulate); lengths and alignment checked above.
    unsafe {
        g.launch(
            &kernel,
            gemm_cfg(m, n),
            &[&c, &a, &b, &mi, &ni, &ki, &alpha, &acc],
        )?;
    }
    Ok(GemmRun {
        kernel: format!("gemm::{name}"),
        splits: 1,
    })
}

/// f32 elements of scratch `bias_backward` needs: one partial sum per 256-row chunk and column.
pub fn bias_backward_scratch_len(rows: usize, oc: usize) -> usize {
    rows.div_ceil(BIAS_CHUNK_ROWS) * oc
}

/// `dbias[oc] += column sums of dout[rows, oc]`: ACCUMULATES (old value added in f32, one
/// rounding). Deterministic: fixed chunking and summation order, independent of the GPU.
/// `scratch` (f32, `bias_backward_scratch_len(rows, oc)`) is overwritten. Two launches on the
/// stream; `dbias` may not overlap `dout` (checked; the scratch is f32 and separate).
pub fn bias_backward(
    g: &Gpu,
    dbias: Ptr<bf16>,
    dout: Ptr<bf16>,
    scratch: Ptr<f32>,
    rows: usize,
    oc: usize,
) -> Result<()> {
    const K: &str = "bias_backward";
    let (ri, oi) = (check_dim(K, "rows", rows)?, check_dim(K, "oc", oc)?);
    let n_dout = product(K, rows, oc)?;
    let chunks = rows.div_ceil(BIAS_CHUNK_ROWS);
    check_len(K, "dbias", &dbias, oc)?;
    check_len(K, "dout", &dout, n_dout)?;
    check_len(K, "scratch", &scratch, product(K, chunks, oc)?)?;
    check_disjoint(
        K,
        &[span("dbias", &dbias, oc)],
        &[span("dout", &dout, n_dout)],
    )?;
    let partials = g.kernel("gemm", "bias_backward_partials")?;
    let cfg_partials = LaunchConfig {
        grid: (oc.div_ceil(32) as u32, chunks as u32, 1),
        block: (32, 8, 1),
        smem_bytes: 0,
    };
    // SAFETY: bias_backward_partials(float* partials, const bf16* dout, int rows, int oc);
    // lengths checked above.
    unsafe { g.launch(&partials, cfg_partials, &[&scratch, &dout, &ri, &oi])? };
    bias_finish(g, dbias, scratch, chunks, oc)
}

/// bias_backward_finish: `dbias[c] = bf16(dbias[c] + Σ_chunk partials[chunk * oc + c])`, the
/// chunks in order. Lengths checked by the callers.
fn bias_finish(
    g: &Gpu,
    dbias: Ptr<bf16>,
    partials: Ptr<f32>,
    chunks: usize,
    oc: usize,
) -> Result<()> {
    let finish = g.kernel("gemm", "bias_backward_finish")?;
    let (ci, oi) = (chunks as i32, oc as i32); // chunks <= 2^31 / 256; oc checked by callers
                                               // SAFETY: bias_backward_finish(bf16* dbias, const float* partials, int num_chunks, int oc).
    unsafe {
        g.launch(
            &finish,
            LaunchConfig::linear(oc, 256),
            &[&dbias, &partials, &ci, &oi],
        )
    }
}
