//! Launchers for ptx/kernels/attention.cu and ptx/kernels/attention_tc.cu: causal multi-head
//! attention, flash style (online softmax over key tiles, no T x T matrix in memory), forward
//! and a deterministic backward that recomputes the probabilities from the saved log-sum-exp.
//! Semantics are those of `gpt::cpu::ops::{attention_forward, attention_backward}`: scale
//! 1/sqrt(HS), lse the natural log of the sum of exp of the SCALED scores. bf16 tensors, f32 lse
//! and f32 softmax and accumulation.
//!
//! Two implementations ([`AttentionImpl`]): attention.cu, FP32 on the CUDA cores, for every
//! supported head size (the readable reference), and attention_tc.cu, BF16 tensor cores
//! (mma.sync, FlashAttention-2 style), for head sizes 64 and 128 ([`TENSOR_CORE_HEAD_SIZES`]):
//! there the probabilities P (and in the backward dS) are rounded to bf16 before they are
//! multiplied by V (dO, Q, K). [`attention_forward`] and [`attention_backward`] pick the
//! tensor-core kernels whenever they can run (head size 64 or 128, qkv and dout 16-byte
//! aligned), else the reference; `*_with` run the one asked for.
//!
//! Shapes: `b` batch, `t` tokens (any `t >= 1`), `c` channels, `nh` heads, head size
//! `hs = c / nh`, which must divide exactly and be one of [`SUPPORTED_HEAD_SIZES`] (the kernels
//! are instantiated per head size). Layouts: qkv [b, t, 3c] (q | k | v, head h at channels
//! h*hs..), out and dout [b, t, c], lse [b, nh, t], dqkv [b, t, 3c].

use super::{check_dim, check_disjoint, check_len, span, Ptr};
use runtime::cuda::{half::bf16, CudaError, DeviceElem, Gpu, LaunchConfig, Result};

/// Head sizes the kernels are built for (`ATTENTION_KERNELS(HS)` in attention.cu).
pub const SUPPORTED_HEAD_SIZES: [usize; 5] = [16, 32, 64, 96, 128];

/// Head sizes attention_tc.cu is built for (`ATTENTION_TC_KERNELS(HS)`).
pub const TENSOR_CORE_HEAD_SIZES: [usize; 2] = [64, 128];

/// Which kernels run an attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionImpl {
    /// attention.cu: FP32 on the CUDA cores, every head size of [`SUPPORTED_HEAD_SIZES`].
    Reference,
    /// attention_tc.cu: BF16 mma.sync, head sizes [`TENSOR_CORE_HEAD_SIZES`]; qkv and dout
    /// must be 16-byte aligned (cp.async copies 16-byte chunks).
    TensorCore,
}

/// The implementation [`attention_forward`] / [`attention_backward`] use for head size `hs`
/// with these operands: the tensor cores when they can run it, else the reference.
pub fn default_impl(hs: usize, aligned16: &[u64]) -> AttentionImpl {
    if TENSOR_CORE_HEAD_SIZES.contains(&hs) && aligned16.iter().all(|a| a.is_multiple_of(16)) {
        AttentionImpl::TensorCore
    } else {
        AttentionImpl::Reference
    }
}

/// Rows (queries or keys) per block: ATT_BLOCK_ROWS in attention.cu.
const BLOCK_ROWS: usize = 16;
/// Rows per block of attention_tc.cu (ATC_ROWS: 4 warps x 16).
const TC_BLOCK_ROWS: usize = 64;
/// Threads per block of the forward, dq and dkdv kernels: ATT_THREADS.
const THREADS: u32 = 128;
/// Rows (one warp each) per block of attention_backward_dsum: ATT_DSUM_WARPS.
const DSUM_ROWS: usize = 8;

/// The checked shapes of one call.
struct Shapes {
    t: i32,
    nh: i32,
    hs: usize,
    /// b * t * 3c (qkv, dqkv)
    n_qkv: usize,
    /// b * t * c (out, dout)
    n_out: usize,
    /// b * nh * t (lse, D)
    n_rows: usize,
}

fn check_shapes(kernel: &str, b: usize, t: usize, c: usize, nh: usize) -> Result<Shapes> {
    check_dim(kernel, "b", b)?;
    let ti = check_dim(kernel, "t", t)?;
    check_dim(kernel, "c", c)?;
    let nhi = check_dim(kernel, "nh", nh)?;
    if !c.is_multiple_of(nh) {
        return Err(CudaError::new(
            format!("{kernel}: c = {c} is not a multiple of nh = {nh}"),
            1,
        ));
    }
    let hs = c / nh;
    if !SUPPORTED_HEAD_SIZES.contains(&hs) {
        return Err(CudaError::new(
            format!(
                "{kernel}: head size HS = c / nh = {c} / {nh} = {hs} is not supported; the kernels exist for HS in {SUPPORTED_HEAD_SIZES:?}"
            ),
            1,
        ));
    }
    // Grid: (ceil(t / 16), nh, b); y and z are limited to 65535 on every CUDA device.
    if nh > 65535 || b > 65535 {
        return Err(CudaError::new(
            format!("{kernel}: b = {b} and nh = {nh} must each be <= 65535 (grid y and z)"),
            1,
        ));
    }
    let overflow = || CudaError::new(format!("{kernel}: b * t * 3c overflows"), 1);
    let n_out = b
        .checked_mul(t)
        .and_then(|bt| bt.checked_mul(c))
        .ok_or_else(overflow)?;
    let n_qkv = n_out.checked_mul(3).ok_or_else(overflow)?;
    // b * nh * t <= b * t * c, so it cannot overflow; the dsum kernel takes it as an int.
    let n_rows = b * nh * t;
    check_dim(kernel, "b * nh * t", n_rows)?;
    Ok(Shapes {
        t: ti,
        nh: nhi,
        hs,
        n_qkv,
        n_out,
        n_rows,
    })
}

/// Error unless the operand is 4-byte aligned (the kernels move bf16 pairs).
fn check_align4<T: DeviceElem>(kernel: &str, what: &str, p: &Ptr<T>) -> Result<()> {
    if !p.addr().is_multiple_of(4) {
        return Err(CudaError::new(
            format!(
                "{kernel}: operand {what} at device address {:#x} is not 4-byte aligned (the kernels load bf16 pairs)",
                p.addr()
            ),
            1,
        ));
    }
    Ok(())
}

/// Error unless the tensor-core kernels can run this call: a head size they are built for and
/// 16-byte aligned operands for their cp.async copies.
fn check_tensor_core(kernel: &str, hs: usize, aligned16: &[(&str, u64)]) -> Result<()> {
    if !TENSOR_CORE_HEAD_SIZES.contains(&hs) {
        return Err(CudaError::new(
            format!(
                "{kernel}: the tensor-core kernels exist for HS in {TENSOR_CORE_HEAD_SIZES:?}, not HS = {hs}"
            ),
            1,
        ));
    }
    for (what, addr) in aligned16 {
        if !addr.is_multiple_of(16) {
            return Err(CudaError::new(
                format!(
                    "{kernel}: operand {what} at device address {addr:#x} is not 16-byte aligned (the tensor-core kernels copy 16-byte chunks)"
                ),
                1,
            ));
        }
    }
    Ok(())
}

/// The module and the kernel-name prefix of an implementation, and its grid: (ceil(t / rows),
/// nh, b), block 128 (the forward, dq and dkdv kernels of both files).
fn tile_launch(
    imp: AttentionImpl,
    b: usize,
    t: usize,
    nh: usize,
) -> (&'static str, &'static str, LaunchConfig) {
    let (module, prefix, rows) = match imp {
        AttentionImpl::Reference => ("attention", "attention", BLOCK_ROWS),
        AttentionImpl::TensorCore => ("attention_tc", "attention_tc", TC_BLOCK_ROWS),
    };
    let cfg = LaunchConfig {
        grid: (t.div_ceil(rows) as u32, nh as u32, b as u32),
        block: (THREADS, 1, 1),
        smem_bytes: 0, // static: at most 35 KiB (attention_tc.cu at HS 128)
    };
    (module, prefix, cfg)
}

/// Causal attention forward: `out[b, i, h*hs..]` = softmax over keys `j <= i` of
/// `q_i . k_j / sqrt(hs)`, times v; `lse[b, h, i]` = log of that softmax's normaliser (natural
/// log, scaled scores), saved for the backward. Both are overwritten. `out` and `lse` must not
/// overlap each other or `qkv` (checked); pointers must be 4-byte aligned (checked). Runs the
/// tensor-core kernels when it can ([`default_impl`]), else the reference.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward(
    g: &Gpu,
    out: Ptr<bf16>,
    lse: Ptr<f32>,
    qkv: Ptr<bf16>,
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) -> Result<()> {
    let hs = c.checked_div(nh).unwrap_or(0);
    let imp = default_impl(hs, &[qkv.addr()]);
    attention_forward_with(g, imp, out, lse, qkv, b, t, c, nh)
}

/// [`attention_forward`] with the implementation chosen by the caller (an error if
/// [`AttentionImpl::TensorCore`] cannot run this head size or alignment).
#[allow(clippy::too_many_arguments)]
pub fn attention_forward_with(
    g: &Gpu,
    imp: AttentionImpl,
    out: Ptr<bf16>,
    lse: Ptr<f32>,
    qkv: Ptr<bf16>,
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) -> Result<()> {
    const K: &str = "attention_forward";
    let s = check_shapes(K, b, t, c, nh)?;
    if imp == AttentionImpl::TensorCore {
        check_tensor_core(K, s.hs, &[("qkv", qkv.addr())])?;
    }
    check_len(K, "out", &out, s.n_out)?;
    check_len(K, "lse", &lse, s.n_rows)?;
    check_len(K, "qkv", &qkv, s.n_qkv)?;
    check_align4(K, "out", &out)?;
    check_align4(K, "qkv", &qkv)?;
    check_disjoint(
        K,
        &[span("out", &out, s.n_out), span("lse", &lse, s.n_rows)],
        &[span("qkv", &qkv, s.n_qkv)],
    )?;
    let (module, prefix, cfg) = tile_launch(imp, b, t, nh);
    let k = g.kernel(module, &format!("{prefix}_forward_hs{}", s.hs))?;
    // SAFETY: attention_forward_hsN / attention_tc_forward_hsN(bf16* out, float* lse,
    // const bf16* qkv, int T, int NH); lengths, alignment (16 bytes for the tensor-core qkv) and
    // disjointness checked; the grid covers exactly (t, nh, b).
    unsafe { g.launch(&k, cfg, &[&out, &lse, &qkv, &s.t, &s.nh]) }
}

/// f32 scratch elements [`attention_backward`] needs: D = rowsum(dout * out), one per
/// (batch, head, token): `b * nh * t`.
pub fn attention_backward_scratch_len(b: usize, t: usize, _c: usize, nh: usize) -> usize {
    b.saturating_mul(nh).saturating_mul(t)
}

/// Causal attention backward: overwrites all of `dqkv` [b, t, 3c] with the gradients of q, k
/// and v given `dout`, the forward's inputs `qkv` and its saved `out` and `lse` (the
/// probabilities are recomputed from them). Three launches: D = rowsum(dout * out) into
/// `scratch` (contents on entry ignored, at least [`attention_backward_scratch_len`] floats),
/// then dk and dv per key block, then dq per query block. No atomics: bitwise deterministic.
/// `dqkv` and `scratch` must not overlap each other or any input (checked: in particular
/// `dqkv` cannot be `qkv`: within one launch, the rows one block writes are rows other blocks
/// still read); pointers must be 4-byte aligned (checked). Runs the tensor-core dk/dv and dq
/// kernels when it can ([`default_impl`]), else the reference; the D pass is attention.cu's
/// in both cases.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    g: &Gpu,
    dqkv: Ptr<bf16>,
    dout: Ptr<bf16>,
    qkv: Ptr<bf16>,
    out: Ptr<bf16>,
    lse: Ptr<f32>,
    scratch: Ptr<f32>,
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) -> Result<()> {
    let hs = c.checked_div(nh).unwrap_or(0);
    let imp = default_impl(hs, &[qkv.addr(), dout.addr()]);
    attention_backward_with(g, imp, dqkv, dout, qkv, out, lse, scratch, b, t, c, nh)
}

/// [`attention_backward`] with the implementation chosen by the caller (an error if
/// [`AttentionImpl::TensorCore`] cannot run this head size or alignment).
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_with(
    g: &Gpu,
    imp: AttentionImpl,
    dqkv: Ptr<bf16>,
    dout: Ptr<bf16>,
    qkv: Ptr<bf16>,
    out: Ptr<bf16>,
    lse: Ptr<f32>,
    scratch: Ptr<f32>,
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) -> Result<()> {
    const K: &str = "attention_backward";
    let s = check_shapes(K, b, t, c, nh)?;
    if imp == AttentionImpl::TensorCore {
        check_tensor_core(K, s.hs, &[("qkv", qkv.addr()), ("dout", dout.addr())])?;
    }
    check_len(K, "dqkv", &dqkv, s.n_qkv)?;
    check_len(K, "dout", &dout, s.n_out)?;
    check_len(K, "qkv", &qkv, s.n_qkv)?;
    check_len(K, "out", &out, s.n_out)?;
    check_len(K, "lse", &lse, s.n_rows)?;
    check_len(
        K,
        "scratch",
        &scratch,
        attention_backward_scratch_len(b, t, c, nh),
    )?;
    for (what, p) in [
        ("dqkv", &dqkv),
        ("dout", &dout),
        ("qkv", &qkv),
        ("out", &out),
    ] {
        check_align4(K, what, p)?;
    }
    check_disjoint(
        K,
        &[
            span("dqkv", &dqkv, s.n_qkv),
            span("scratch", &scratch, s.n_rows),
        ],
        &[
            span("dout", &dout, s.n_out),
            span("qkv", &qkv, s.n_qkv),
            span("out", &out, s.n_out),
            span("lse", &lse, s.n_rows),
        ],
    )?;
    let (module, prefix, cfg) = tile_launch(imp, b, t, nh);
    let dsum = g.kernel("attention", "attention_backward_dsum")?;
    let dkdv = g.kernel(module, &format!("{prefix}_backward_dkdv_hs{}", s.hs))?;
    let dq = g.kernel(module, &format!("{prefix}_backward_dq_hs{}", s.hs))?;
    let dsum_cfg = LaunchConfig {
        grid: (s.n_rows.div_ceil(DSUM_ROWS) as u32, 1, 1),
        block: (32 * DSUM_ROWS as u32, 1, 1),
        smem_bytes: 0,
    };
    let hs = s.hs as i32;
    let rows = s.n_rows as i32;
    // SAFETY: attention_backward_dsum(float* dsum, const bf16* dout, const bf16* out, int T,
    // int NH, int HS, int rows) and {attention,attention_tc}_backward_{dkdv,dq}_hsN(bf16* dqkv,
    // const bf16* dout, const bf16* qkv, const float* lse, const float* dsum, int T, int NH);
    // lengths, alignment and disjointness checked. Same stream, so dkdv and dq see all of D.
    unsafe {
        g.launch(
            &dsum,
            dsum_cfg,
            &[&scratch, &dout, &out, &s.t, &s.nh, &hs, &rows],
        )?;
        g.launch(
            &dkdv,
            cfg,
            &[&dqkv, &dout, &qkv, &lse, &scratch, &s.t, &s.nh],
        )?;
        g.launch(&dq, cfg, &[&dqkv, &dout, &qkv, &lse, &scratch, &s.t, &s.nh])
    }
}
