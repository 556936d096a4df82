//! Launchers for ptx/kernels/gemm.cu: the three matmuls of a linear layer on bf16 tensor cores
//! (mma.sync, FP32 accumulation, one rounding to bf16) and the deterministic bias gradient.
//! Semantics are those of `gpt::cpu::ops::{matmul_forward, matmul_backward_input,
//! matmul_backward_weight, bias_backward}` (and `gelu` for the forward's optional epilogue), on
//! bf16 row-major tensors: `rows` tokens, `ic` input channels, `oc` output channels, weights
//! `w` [oc, ic]. Any shape >= 1.
//!
//! Each GEMM has two kernels: `*_vec` (16-byte cp.async loads, bf16-pair stores) when `ic` and
//! `oc` are multiples of 8 and every pointer is 16-byte aligned (always true for whole
//! `DeviceBuffer`s and the model's shapes), `*_scalar` otherwise. They compute the same values
//! (same tile loop, same k order); the choice depends only on the shapes and addresses.

use super::{check_dim, check_disjoint, check_len, span, Ptr};
use runtime::cuda::{half::bf16, CudaError, Gpu, LaunchConfig, Result};

/// Output tile of one block (GEMM_BM = GEMM_BN in gemm.cu) and its thread count.
const TILE: usize = 128;
const THREADS: u32 = 256;
/// Rows per partial sum of the bias gradient (BIAS_CHUNK_ROWS in gemm.cu).
const BIAS_CHUNK_ROWS: usize = 256;

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

/// `out[rows, oc] = inp[rows, ic] · w[oc, ic]^T (+ bias[oc])`, overwriting `out`. With
/// `gelu_out`, also `gelu_out = gelu(out)` computed from the bf16-rounded `out` (which keeps the
/// pre-activation), as the backward pass will see it. No operand may overlap another
/// (checked): outputs `out`, `gelu_out`; inputs `inp`, `w`, `bias`.
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
    let k = g.kernel("gemm", &format!("{K}_{}", variant(ic, oc, &addrs)))?;
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
        )
    }
}

/// `dinp[rows, ic] = dout[rows, oc] · w[oc, ic]`, overwriting `dinp`. `dinp` may not overlap
/// `dout` or `w` (checked).
pub fn matmul_backward_input(
    g: &Gpu,
    dinp: Ptr<bf16>,
    dout: Ptr<bf16>,
    w: Ptr<bf16>,
    rows: usize,
    ic: usize,
    oc: usize,
) -> Result<()> {
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
    check_disjoint(
        K,
        &[span("dinp", &dinp, n_dinp)],
        &[span("dout", &dout, n_dout), span("w", &w, n_w)],
    )?;
    let addrs = [dinp.addr(), dout.addr(), w.addr()];
    let k = g.kernel("gemm", &format!("{K}_{}", variant(ic, oc, &addrs)))?;
    // SAFETY: matches matmul_backward_input_{vec,scalar}(bf16* dinp, const bf16* dout,
    // const bf16* w, int rows, int ic, int oc); lengths and alignment checked above.
    unsafe { g.launch(&k, gemm_cfg(rows, ic), &[&dinp, &dout, &w, &ri, &ii, &oi]) }
}

/// `dw[oc, ic] += dout[rows, oc]^T · inp[rows, ic]`: ACCUMULATES into the existing bf16
/// gradient (old value added in f32, one rounding). `dw` may not overlap `dout` or `inp`
/// (checked).
pub fn matmul_backward_weight(
    g: &Gpu,
    dw: Ptr<bf16>,
    dout: Ptr<bf16>,
    inp: Ptr<bf16>,
    rows: usize,
    ic: usize,
    oc: usize,
) -> Result<()> {
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
    check_disjoint(
        K,
        &[span("dw", &dw, n_dw)],
        &[span("dout", &dout, n_dout), span("inp", &inp, n_inp)],
    )?;
    let addrs = [dw.addr(), dout.addr(), inp.addr()];
    let k = g.kernel("gemm", &format!("{K}_{}", variant(ic, oc, &addrs)))?;
    // SAFETY: matches matmul_backward_weight_{vec,scalar}(bf16* dw, const bf16* dout,
    // const bf16* inp, int rows, int ic, int oc); lengths and alignment checked above.
    unsafe { g.launch(&k, gemm_cfg(oc, ic), &[&dw, &dout, &inp, &ri, &ii, &oi]) }
}

/// `c[m, n] = bf16(alpha · Σ_k a[m, k] b[n, k])`, or `c = bf16(c + alpha · Σ ...)` with
/// `accumulate`: both operands K-major (the forward form's loop, FP32 accumulation, one
/// rounding). The MXFP4 bf16 path runs its dequantized operands through this with alpha = 16/9
/// (SR) or 1. `c` may not overlap `a` or `b` (checked).
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
    let kernel = g.kernel("gemm", &format!("{K}_{}", variant(k, n, &addrs)))?;
    let acc = accumulate as i32;
    // SAFETY: matmul_kmajor_{vec,scalar}(bf16* C, const bf16* A, const bf16* B, int M, int N,
    // int K, float alpha, int accumulate); lengths and alignment checked above.
    unsafe {
        g.launch(
            &kernel,
            gemm_cfg(m, n),
            &[&c, &a, &b, &mi, &ni, &ki, &alpha, &acc],
        )
    }
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
    let finish = g.kernel("gemm", "bias_backward_finish")?;
    let ci = chunks as i32; // <= 2^31 / 256
    let cfg_partials = LaunchConfig {
        grid: (oc.div_ceil(32) as u32, chunks as u32, 1),
        block: (32, 8, 1),
        smem_bytes: 0,
    };
    // SAFETY: bias_backward_partials(float* partials, const bf16* dout, int rows, int oc) and
    // bias_backward_finish(bf16* dbias, const float* partials, int num_chunks, int oc); lengths
    // checked above.
    unsafe {
        g.launch(&partials, cfg_partials, &[&scratch, &dout, &ri, &oi])?;
        g.launch(
            &finish,
            LaunchConfig::linear(oc, 256),
            &[&dbias, &scratch, &ci, &oi],
        )
    }
}
