//! Launchers for ptx/kernels/layernorm.cu: layernorm forward, the fused residual-add +
//! layernorm forward, and the deterministic two-kernel backward. Semantics are those of
//! `gpt::cpu::ops::{layernorm_forward, residual_layernorm_forward, layernorm_backward}`
//! (eps = 1e-5); bf16 tensors, f32 mean/rstd and f32 math. `n` rows of `c` channels; any
//! `n >= 1`, `1 <= c < 2^30`.
//!
//! Two implementations ([`MemImpl`]): the reference kernels, and the vectorized ones (the row
//! kept in registers in the forward, 16-byte accesses in the backward's column walk; see
//! layernorm.cu), which need `c % 8 == 0`, every bf16 operand (and the backward's scratch)
//! 16-byte aligned, and for the forward `c <= 2048` ([`VEC_FORWARD_MAX_C`]). The default
//! launchers pick the vectorized kernels when all of that holds (see [`super::membound`]); the
//! `*_with` launchers run the one asked for. The forward kernels give the same bits either way;
//! the backward's dinp too, its dw/db are summed in a different fixed order when c <= 1024.

use super::membound::{self, MemImpl};
use super::{check_dim, check_disjoint, check_len, span, Ptr, Span};
use runtime::cuda::{half::bf16, CudaError, Gpu, LaunchConfig, Result};

/// Rows per block of the forward kernels (one warp per row): LN_FWD_WARPS in layernorm.cu.
const FWD_ROWS_PER_BLOCK: usize = 8;
/// Rows per block of `layernorm_backward_dinp`: LN_BWD_ROWS in layernorm.cu.
const BWD_ROWS_PER_BLOCK: usize = 32;
/// Largest c of the vectorized forward kernels (`layernorm_forward_vec8`: 8 vectors of 8 per
/// lane).
pub const VEC_FORWARD_MAX_C: usize = 2048;

/// The vectorized forward kernel's name suffix for `c`: vectors of 8 per lane, one of 1, 2, 4,
/// 8 (the smallest with `256 * nv >= c`).
fn forward_nv(c: usize) -> usize {
    c.div_ceil(256).next_power_of_two()
}

/// Error unless the vectorized kernels can run this call.
fn check_vec(kernel: &str, c: usize, max_c: usize, operands: &[(&str, u64)]) -> Result<()> {
    membound::check_c8(kernel, c)?;
    if c > max_c {
        return Err(CudaError::new(
            format!("{kernel}: the vectorized kernels take c <= {max_c}, got {c} (use MemImpl::Reference)"),
            1,
        ));
    }
    membound::check_aligned16(kernel, operands)
}

fn vec_possible(c: usize, max_c: usize, addrs: &[u64]) -> bool {
    c.is_multiple_of(8) && c <= max_c && membound::aligned16(addrs)
}

fn check_c(kernel: &str, c: usize) -> Result<i32> {
    let ci = check_dim(kernel, "c", c)?;
    if c >= 1 << 30 {
        // The backward's reduction indexes 2c columns with an int.
        return Err(CudaError::new(
            format!("{kernel}: c = {c} must be < 2^30"),
            1,
        ));
    }
    Ok(ci)
}

fn check_rows(kernel: &str, n: usize, c: usize) -> Result<(i32, i32, usize)> {
    let ni = check_dim(kernel, "n", n)?;
    let ci = check_c(kernel, c)?;
    let nc = n
        .checked_mul(c)
        .ok_or_else(|| CudaError::new(format!("{kernel}: n * c overflows"), 1))?;
    Ok((ni, ci, nc))
}

fn forward_cfg(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid: (n.div_ceil(FWD_ROWS_PER_BLOCK) as u32, 1, 1),
        block: (32 * FWD_ROWS_PER_BLOCK as u32, 1, 1),
        smem_bytes: 0,
    }
}

/// Error unless `a` and `b` are the same span or do not overlap (in-place use is allowed, a
/// shifted partial overlap is a race).
fn check_same_or_disjoint(kernel: &str, a: Span, b: Span) -> Result<()> {
    if (a.1, a.2) == (b.1, b.2) {
        return Ok(());
    }
    check_disjoint(kernel, &[a], &[b])
}

/// `out = (inp - mean) * rstd * w + b` per row of `c`, overwriting `out` [n*c] and storing the
/// row statistics `mean` [n] and `rstd` [n] (f32) for the backward.
/// `out` may be `inp` (in place); otherwise no two operands may overlap (checked).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward(
    g: &Gpu,
    out: Ptr<bf16>,
    mean: Ptr<f32>,
    rstd: Ptr<f32>,
    inp: Ptr<bf16>,
    w: Ptr<bf16>,
    b: Ptr<bf16>,
    n: usize,
    c: usize,
) -> Result<()> {
    let addrs = [out.addr(), inp.addr(), w.addr(), b.addr()];
    let imp = membound::pick(vec_possible(c, VEC_FORWARD_MAX_C, &addrs));
    layernorm_forward_with(g, imp, out, mean, rstd, inp, w, b, n, c)
}

/// [`layernorm_forward`] on the kernels asked for ([`MemImpl::Vectorized`]: `c % 8 == 0`,
/// `c <= 2048`, `out`, `inp`, `w`, `b` 16-byte aligned, else an error).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward_with(
    g: &Gpu,
    imp: MemImpl,
    out: Ptr<bf16>,
    mean: Ptr<f32>,
    rstd: Ptr<f32>,
    inp: Ptr<bf16>,
    w: Ptr<bf16>,
    b: Ptr<bf16>,
    n: usize,
    c: usize,
) -> Result<()> {
    const K: &str = "layernorm_forward";
    let (ni, ci, nc) = check_rows(K, n, c)?;
    check_len(K, "out", &out, nc)?;
    check_len(K, "mean", &mean, n)?;
    check_len(K, "rstd", &rstd, n)?;
    check_len(K, "inp", &inp, nc)?;
    check_len(K, "w", &w, c)?;
    check_len(K, "b", &b, c)?;
    let (so, si) = (span("out", &out, nc), span("inp", &inp, nc));
    check_disjoint(
        K,
        &[so, span("mean", &mean, n), span("rstd", &rstd, n)],
        &[span("w", &w, c), span("b", &b, c)],
    )?;
    check_disjoint(K, &[span("mean", &mean, n), span("rstd", &rstd, n)], &[si])?;
    check_same_or_disjoint(K, so, si)?;
    let name = match imp {
        MemImpl::Reference => K.to_string(),
        MemImpl::Vectorized => {
            check_vec(
                K,
                c,
                VEC_FORWARD_MAX_C,
                &[
                    ("out", out.addr()),
                    ("inp", inp.addr()),
                    ("w", w.addr()),
                    ("b", b.addr()),
                ],
            )?;
            format!("layernorm_forward_vec{}", forward_nv(c))
        }
    };
    let k = g.kernel("layernorm", &name)?;
    // SAFETY: layernorm_forward{,_vec*}(bf16* out, float* mean, float* rstd, const bf16* inp,
    // const bf16* w, const bf16* b, int N, int C); lengths and overlaps checked (and c, alignment
    // for the vec kernels).
    unsafe {
        g.launch(
            &k,
            forward_cfg(n),
            &[&out, &mean, &rstd, &inp, &w, &b, &ni, &ci],
        )
    }
}

/// Fused residual + layernorm: `res_out = bf16(res_in + delta)`, then `ln_out =
/// layernorm(res_out)` computed from `res_out` as stored in bf16 (so the backward, which reads
/// `res_out` as its input, sees the same values); `mean`/`rstd` as in [`layernorm_forward`].
/// All outputs are overwritten. `res_out` may be `res_in` or `delta` (in-place residual);
/// otherwise no two operands may overlap (checked).
#[allow(clippy::too_many_arguments)]
pub fn residual_layernorm_forward(
    g: &Gpu,
    res_out: Ptr<bf16>,
    ln_out: Ptr<bf16>,
    mean: Ptr<f32>,
    rstd: Ptr<f32>,
    res_in: Ptr<bf16>,
    delta: Ptr<bf16>,
    w: Ptr<bf16>,
    b: Ptr<bf16>,
    n: usize,
    c: usize,
) -> Result<()> {
    let addrs = [
        res_out.addr(),
        ln_out.addr(),
        res_in.addr(),
        delta.addr(),
        w.addr(),
        b.addr(),
    ];
    let imp = membound::pick(vec_possible(c, VEC_FORWARD_MAX_C, &addrs));
    residual_layernorm_forward_with(
        g, imp, res_out, ln_out, mean, rstd, res_in, delta, w, b, n, c,
    )
}

/// [`residual_layernorm_forward`] on the kernels asked for ([`MemImpl::Vectorized`]:
/// `c % 8 == 0`, `c <= 2048`, every bf16 operand 16-byte aligned, else an error).
#[allow(clippy::too_many_arguments)]
pub fn residual_layernorm_forward_with(
    g: &Gpu,
    imp: MemImpl,
    res_out: Ptr<bf16>,
    ln_out: Ptr<bf16>,
    mean: Ptr<f32>,
    rstd: Ptr<f32>,
    res_in: Ptr<bf16>,
    delta: Ptr<bf16>,
    w: Ptr<bf16>,
    b: Ptr<bf16>,
    n: usize,
    c: usize,
) -> Result<()> {
    const K: &str = "residual_layernorm_forward";
    let (ni, ci, nc) = check_rows(K, n, c)?;
    check_len(K, "res_out", &res_out, nc)?;
    check_len(K, "ln_out", &ln_out, nc)?;
    check_len(K, "mean", &mean, n)?;
    check_len(K, "rstd", &rstd, n)?;
    check_len(K, "res_in", &res_in, nc)?;
    check_len(K, "delta", &delta, nc)?;
    check_len(K, "w", &w, c)?;
    check_len(K, "b", &b, c)?;
    let (sr, sa, sd) = (
        span("res_out", &res_out, nc),
        span("res_in", &res_in, nc),
        span("delta", &delta, nc),
    );
    let others = [
        span("ln_out", &ln_out, nc),
        span("mean", &mean, n),
        span("rstd", &rstd, n),
    ];
    check_disjoint(
        K,
        &[sr, others[0], others[1], others[2]],
        &[span("w", &w, c), span("b", &b, c)],
    )?;
    check_disjoint(K, &others, &[sa, sd])?;
    check_same_or_disjoint(K, sr, sa)?;
    check_same_or_disjoint(K, sr, sd)?;
    let name = match imp {
        MemImpl::Reference => K.to_string(),
        MemImpl::Vectorized => {
            check_vec(
                K,
                c,
                VEC_FORWARD_MAX_C,
                &[
                    ("res_out", res_out.addr()),
                    ("ln_out", ln_out.addr()),
                    ("res_in", res_in.addr()),
                    ("delta", delta.addr()),
                    ("w", w.addr()),
                    ("b", b.addr()),
                ],
            )?;
            format!("residual_layernorm_forward_vec{}", forward_nv(c))
        }
    };
    let k = g.kernel("layernorm", &name)?;
    // SAFETY: residual_layernorm_forward{,_vec*}(bf16* res_out, bf16* ln_out, float* mean,
    // float* rstd, const bf16* res_in, const bf16* delta, const bf16* w, const bf16* b, int N,
    // int C); lengths and overlaps checked (and c, alignment for the vec kernels).
    unsafe {
        g.launch(
            &k,
            forward_cfg(n),
            &[
                &res_out, &ln_out, &mean, &rstd, &res_in, &delta, &w, &b, &ni, &ci,
            ],
        )
    }
}

/// f32 scratch elements [`layernorm_backward`] needs: one partial (dw, db) pair of `c`-vectors
/// per 32-row block, `ceil(n / 32) * 2 * c` (1.6 MB at n = 8192, c = 768).
pub fn layernorm_backward_scratch_len(n: usize, c: usize) -> usize {
    n.div_ceil(BWD_ROWS_PER_BLOCK) * 2 * c
}

/// Layernorm backward, ACCUMULATING: `dinp += rstd * (dnorm - mean(dnorm) - norm *
/// mean(dnorm * norm))` with `norm = (inp - mean) * rstd`, `dnorm = w * dout`;
/// `dw += sum over rows of dout * norm`; `db += sum over rows of dout`. `mean`/`rstd` are the
/// forward's. Deterministic: per-32-row-block partial sums of dw/db go to `scratch` (at least
/// [`layernorm_backward_scratch_len`] floats, contents on entry ignored), then a second kernel
/// sums them in block order and adds into dw/db (f32 math, one bf16 rounding per element).
/// Two launches. No output (dinp, dw, db, scratch) may overlap another operand: checked, an
/// overlap is an error.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(
    g: &Gpu,
    dinp: Ptr<bf16>,
    dw: Ptr<bf16>,
    db: Ptr<bf16>,
    dout: Ptr<bf16>,
    inp: Ptr<bf16>,
    w: Ptr<bf16>,
    mean: Ptr<f32>,
    rstd: Ptr<f32>,
    scratch: Ptr<f32>,
    n: usize,
    c: usize,
) -> Result<()> {
    let addrs = [
        dinp.addr(),
        dout.addr(),
        inp.addr(),
        w.addr(),
        scratch.addr(),
    ];
    let imp = membound::pick(vec_possible(c, usize::MAX, &addrs));
    layernorm_backward_with(
        g, imp, dinp, dw, db, dout, inp, w, mean, rstd, scratch, n, c,
    )
}

/// [`layernorm_backward`] on the kernels asked for ([`MemImpl::Vectorized`]: `c % 8 == 0` and
/// `dinp`, `dout`, `inp`, `w`, `scratch` 16-byte aligned, else an error). Both use the same
/// scratch and the same second kernel (`layernorm_backward_dweight`).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward_with(
    g: &Gpu,
    imp: MemImpl,
    dinp: Ptr<bf16>,
    dw: Ptr<bf16>,
    db: Ptr<bf16>,
    dout: Ptr<bf16>,
    inp: Ptr<bf16>,
    w: Ptr<bf16>,
    mean: Ptr<f32>,
    rstd: Ptr<f32>,
    scratch: Ptr<f32>,
    n: usize,
    c: usize,
) -> Result<()> {
    const K: &str = "layernorm_backward";
    let (ni, ci, nc) = check_rows(K, n, c)?;
    check_len(K, "dinp", &dinp, nc)?;
    check_len(K, "dw", &dw, c)?;
    check_len(K, "db", &db, c)?;
    check_len(K, "dout", &dout, nc)?;
    check_len(K, "inp", &inp, nc)?;
    check_len(K, "w", &w, c)?;
    check_len(K, "mean", &mean, n)?;
    check_len(K, "rstd", &rstd, n)?;
    let scratch_len = layernorm_backward_scratch_len(n, c);
    check_len(K, "scratch", &scratch, scratch_len)?;
    check_disjoint(
        K,
        &[
            span("dinp", &dinp, nc),
            span("dw", &dw, c),
            span("db", &db, c),
            span("scratch", &scratch, scratch_len),
        ],
        &[
            span("dout", &dout, nc),
            span("inp", &inp, nc),
            span("w", &w, c),
            span("mean", &mean, n),
            span("rstd", &rstd, n),
        ],
    )?;
    let blocks = n.div_ceil(BWD_ROWS_PER_BLOCK);
    let name = match imp {
        MemImpl::Reference => "layernorm_backward_dinp",
        MemImpl::Vectorized => {
            check_vec(
                K,
                c,
                usize::MAX,
                &[
                    ("dinp", dinp.addr()),
                    ("dout", dout.addr()),
                    ("inp", inp.addr()),
                    ("w", w.addr()),
                    ("scratch", scratch.addr()),
                ],
            )?;
            "layernorm_backward_dinp_vec"
        }
    };
    let k1 = g.kernel("layernorm", name)?;
    let cfg1 = LaunchConfig {
        grid: (blocks as u32, 1, 1),
        block: (256, 1, 1),
        smem_bytes: 0,
    };
    // SAFETY: layernorm_backward_dinp{,_vec}(bf16* dinp, float* partials, const bf16* dout,
    // const bf16* inp, const bf16* w, const float* mean, const float* rstd, int N, int C);
    // lengths and overlaps checked (and c, alignment for the vec kernel).
    unsafe {
        g.launch(
            &k1,
            cfg1,
            &[&dinp, &scratch, &dout, &inp, &w, &mean, &rstd, &ni, &ci],
        )?
    };
    let k2 = g.kernel("layernorm", "layernorm_backward_dweight")?;
    let cfg2 = LaunchConfig {
        grid: ((2 * c).div_ceil(32) as u32, 1, 1),
        block: (32, 8, 1),
        smem_bytes: 0,
    };
    let num_partials = blocks as i32; // <= n, so fits
                                      // SAFETY: layernorm_backward_dweight(bf16* dw, bf16* db, const float* partials, int, int C);
                                      // scratch holds num_partials * 2c floats (checked).
    unsafe { g.launch(&k2, cfg2, &[&dw, &db, &scratch, &num_partials, &ci]) }
}
