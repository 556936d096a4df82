//! The CPU reference ops, as plain functions over f32 slices.
//!
//! These define the semantics every backend implements (the GPU kernels are tested against
//! them), so they favour clarity, but they are also what a user without a GPU trains with, so
//! each is multithreaded with `runtime::cpu` and written so the compiler vectorizes the inner
//! loops. One rule everywhere: **results never depend on the thread count**. Work is split so that
//! each output element is produced by exactly one thread in a fixed summation order (reductions
//! over rows are split by column, never by row), which is what makes training runs and resumed
//! runs reproducible bit for bit.
//!
//! Shapes use llm.c's names: B batch, T sequence, C channels, OC output channels, NH heads,
//! Vp padded vocabulary, V real vocabulary; activations are row-major [B*T, C].

use super::gemm::{sgemm, MatRef};
use runtime::cpu::{parallel_for, parallel_rows_mut};

// Attention lives in its own file; these are the names the backend and the tests call.
pub use super::attention::{
    attention_backward, attention_backward_plain, attention_forward, attention_forward_plain,
};

pub const LAYERNORM_EPS: f32 = 1e-5;

/// A raw pointer that may be shared across the scoped workers of one op, for outputs whose
/// disjoint parts are strided (attention heads, embedding columns). Every use documents why the
/// writes of different workers never touch the same element.
#[derive(Clone, Copy)]
pub(super) struct SharedMut(*mut f32, usize);
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    pub(super) fn new(s: &mut [f32]) -> Self {
        SharedMut(s.as_mut_ptr(), s.len())
    }
    /// # Safety
    /// No two live slices obtained from the same `SharedMut` may overlap.
    #[allow(clippy::mut_from_ref)]
    pub(super) unsafe fn slice(&self, offset: usize, len: usize) -> &mut [f32] {
        assert!(offset + len <= self.1, "SharedMut slice out of bounds");
        std::slice::from_raw_parts_mut(self.0.add(offset), len)
    }
}

// ---------------------------------------------------------------------------------------------
// exp

/// e^x in f32 to within 2 ulp (Cephes' expf scheme: x = n·ln2 + r with |r| <= ln2/2, a degree-6
/// polynomial for e^r, then 2^n through the exponent bits). Unlike `f32::exp` (a libm call) it is
/// branch-free plain arithmetic, so loops over it vectorize; the softmaxes spend most of their
/// time here. Inputs below -87.3 give 0 (the softmaxes only ever pass x <= 0).
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln2 split in a part exact in few bits and a correction, so n·ln2 subtracts exactly.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Round to nearest by the 1.5·2^23 trick (plain adds, no libm call).
    const ROUNDER: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.7);
    let n = (x * LOG2E + ROUNDER) - ROUNDER;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5e-1;
    let er = p * r * r + r + 1.0;
    // 2^n: n in [-126, 128] after the clamp; build it in two halves to stay finite.
    let ni = n as i32;
    let h = ni / 2;
    let scale1 = f32::from_bits(((h + 127) as u32) << 23);
    let scale2 = f32::from_bits(((ni - h + 127) as u32) << 23);
    er * scale1 * scale2
}

// ---------------------------------------------------------------------------------------------
// Embeddings

/// out[b,t,:] = wte[tokens[b,t], :] + wpe[t, :]
pub fn encoder_forward(
    out: &mut [f32],
    tokens: &[u32],
    wte: &[f32],
    wpe: &[f32],
    t: usize,
    c: usize,
) {
    parallel_rows_mut(out, c, 64, |rows, chunk| {
        for (i, row) in rows.enumerate() {
            let tok = tokens[row] as usize;
            let pos = row % t;
            let o = &mut chunk[i * c..(i + 1) * c];
            let e = &wte[tok * c..(tok + 1) * c];
            let p = &wpe[pos * c..(pos + 1) * c];
            for j in 0..c {
                o[j] = e[j] + p[j];
            }
        }
    });
}

/// dwte[tokens[b,t], :] += dout[b,t,:]; dwpe[t, :] += sum_b dout[b,t,:].
/// Split by channel ranges: every worker walks all rows in order, so the sum order per element
/// is fixed.
pub fn encoder_backward(
    dwte: &mut [f32],
    dwpe: &mut [f32],
    dout: &[f32],
    tokens: &[u32],
    t: usize,
    c: usize,
) {
    let rows = tokens.len();
    let (wte, wpe) = (SharedMut::new(dwte), SharedMut::new(dwpe));
    parallel_for(c, 16, |cols| {
        for row in 0..rows {
            let tok = tokens[row] as usize;
            let pos = row % t;
            let d = &dout[row * c + cols.start..row * c + cols.end];
            // SAFETY: each worker owns the column range `cols` of every row of dwte/dwpe.
            let e = unsafe { wte.slice(tok * c + cols.start, cols.len()) };
            for (x, g) in e.iter_mut().zip(d) {
                *x += g;
            }
            let p = unsafe { wpe.slice(pos * c + cols.start, cols.len()) };
            for (x, g) in p.iter_mut().zip(d) {
                *x += g;
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------
// LayerNorm

fn layernorm_row(out: &mut [f32], x: &[f32], w: &[f32], b: &[f32]) -> (f32, f32) {
    let c = x.len() as f32;
    let mean = x.iter().sum::<f32>() / c;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / c;
    let rstd = 1.0 / (var + LAYERNORM_EPS).sqrt();
    for j in 0..x.len() {
        out[j] = (x[j] - mean) * rstd * w[j] + b[j];
    }
    (mean, rstd)
}

/// out = (inp - mean) * rstd * w + b per row of C; saves mean and rstd for the backward.
pub fn layernorm_forward(
    out: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    inp: &[f32],
    w: &[f32],
    b: &[f32],
    c: usize,
) {
    let (mp, rp) = (SharedMut::new(mean), SharedMut::new(rstd));
    parallel_rows_mut(out, c, 32, |rows, chunk| {
        for (i, row) in rows.enumerate() {
            let (m, r) = layernorm_row(
                &mut chunk[i * c..(i + 1) * c],
                &inp[row * c..(row + 1) * c],
                w,
                b,
            );
            // SAFETY: row `row` belongs to this worker only.
            unsafe {
                mp.slice(row, 1)[0] = m;
                rp.slice(row, 1)[0] = r;
            }
        }
    });
}

/// The fused residual + layernorm of the GPU kernels: res_out = res_in + delta, then
/// ln_out = layernorm(res_out).
#[allow(clippy::too_many_arguments)]
pub fn residual_layernorm_forward(
    res_out: &mut [f32],
    ln_out: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    res_in: &[f32],
    delta: &[f32],
    w: &[f32],
    b: &[f32],
    c: usize,
) {
    let (lp, mp, rp) = (
        SharedMut::new(ln_out),
        SharedMut::new(mean),
        SharedMut::new(rstd),
    );
    parallel_rows_mut(res_out, c, 32, |rows, chunk| {
        for (i, row) in rows.enumerate() {
            let r = &mut chunk[i * c..(i + 1) * c];
            let (a, d) = (
                &res_in[row * c..(row + 1) * c],
                &delta[row * c..(row + 1) * c],
            );
            for j in 0..c {
                r[j] = a[j] + d[j];
            }
            // SAFETY: row `row` of ln_out/mean/rstd belongs to this worker only.
            unsafe {
                let (m, s) = layernorm_row(lp.slice(row * c, c), r, w, b);
                mp.slice(row, 1)[0] = m;
                rp.slice(row, 1)[0] = s;
            }
        }
    });
}

/// Accumulates the layernorm gradients: dinp += ..., dw += ..., db += ...
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(
    dinp: &mut [f32],
    dw: &mut [f32],
    db: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    w: &[f32],
    mean: &[f32],
    rstd: &[f32],
    c: usize,
) {
    let rows = mean.len();
    parallel_rows_mut(dinp, c, 32, |rs, chunk| {
        for (i, row) in rs.enumerate() {
            let (x, d) = (&inp[row * c..(row + 1) * c], &dout[row * c..(row + 1) * c]);
            let (m, r) = (mean[row], rstd[row]);
            let mut dnorm_mean = 0.0f32;
            let mut dnorm_norm_mean = 0.0f32;
            for j in 0..c {
                let norm = (x[j] - m) * r;
                let dnorm = w[j] * d[j];
                dnorm_mean += dnorm;
                dnorm_norm_mean += dnorm * norm;
            }
            dnorm_mean /= c as f32;
            dnorm_norm_mean /= c as f32;
            let o = &mut chunk[i * c..(i + 1) * c];
            for j in 0..c {
                let norm = (x[j] - m) * r;
                let dnorm = w[j] * d[j];
                o[j] += r * (dnorm - dnorm_mean - norm * dnorm_norm_mean);
            }
        }
    });
    // dw and db sum over rows: split by columns so the row order is fixed.
    let (wp, bp) = (SharedMut::new(dw), SharedMut::new(db));
    parallel_for(c, 16, |cols| {
        // SAFETY: each worker owns columns `cols` of dw and db.
        let (gw, gb) = unsafe {
            (
                wp.slice(cols.start, cols.len()),
                bp.slice(cols.start, cols.len()),
            )
        };
        for row in 0..rows {
            let (m, r) = (mean[row], rstd[row]);
            let x = &inp[row * c + cols.start..row * c + cols.end];
            let d = &dout[row * c + cols.start..row * c + cols.end];
            for j in 0..cols.len() {
                gw[j] += d[j] * ((x[j] - m) * r);
                gb[j] += d[j];
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Linear layers (weights stored [OC, IC] row-major, as PyTorch and llm.c do)

/// out[rows, OC] = inp[rows, IC] · W^T + bias
pub fn matmul_forward(
    out: &mut [f32],
    inp: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    rows: usize,
    ic: usize,
    oc: usize,
) {
    sgemm(
        MatRef::row_major(inp, rows, ic),
        MatRef::transposed(w, ic, oc),
        out,
        oc,
        false,
    );
    if let Some(b) = bias {
        parallel_rows_mut(out, oc, 64, |_, chunk| {
            for row in chunk.chunks_exact_mut(oc) {
                for (o, b) in row.iter_mut().zip(b) {
                    *o += b;
                }
            }
        });
    }
}

/// dinp = dout · W (overwrites), the high-precision dgrad.
pub fn matmul_backward_input(
    dinp: &mut [f32],
    dout: &[f32],
    w: &[f32],
    rows: usize,
    ic: usize,
    oc: usize,
) {
    sgemm(
        MatRef::row_major(dout, rows, oc),
        MatRef::row_major(w, oc, ic),
        dinp,
        ic,
        false,
    );
}

/// dW += dout^T · inp, the high-precision wgrad.
pub fn matmul_backward_weight(
    dw: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    rows: usize,
    ic: usize,
    oc: usize,
) {
    sgemm(
        MatRef::transposed(dout, oc, rows),
        MatRef::row_major(inp, rows, ic),
        dw,
        ic,
        true,
    );
}

/// dbias += column sums of dout [rows, OC]; split by columns (fixed row order).
pub fn bias_backward(dbias: &mut [f32], dout: &[f32], rows: usize, oc: usize) {
    let bp = SharedMut::new(dbias);
    parallel_for(oc, 64, |cols| {
        // SAFETY: each worker owns columns `cols` of dbias.
        let g = unsafe { bp.slice(cols.start, cols.len()) };
        for row in 0..rows {
            let d = &dout[row * oc + cols.start..row * oc + cols.end];
            for (x, v) in g.iter_mut().zip(d) {
                *x += v;
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------
// GELU, tanh form (GPT-2's)

const GELU_SCALE: f32 = 0.797_884_6; // sqrt(2/pi)

#[inline]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + (GELU_SCALE * (x + 0.044715 * x * x * x)).tanh())
}

#[inline]
pub fn gelu_grad(x: f32) -> f32 {
    let cube = 0.044715 * x * x * x;
    let arg = GELU_SCALE * (x + cube);
    let th = arg.tanh();
    let sech2 = 1.0 - th * th;
    0.5 * (1.0 + th) + 0.5 * x * sech2 * GELU_SCALE * (1.0 + 3.0 * 0.044715 * x * x)
}

/// GELU through the logistic function, the form the fast kernels use:
/// 0.5·x·(1 + tanh(a)) = x·σ(2a) with σ(z) = 1 / (1 + e^-z), a = √(2/π)·(x + 0.044715·x³).
/// Plain arithmetic around `exp_f32` (no libm call), so loops over it vectorize; no cancellation
/// for negative x (where 1 + tanh(a) loses digits). Within (4 + |2a|)·1.5e-7 relative of the exact
/// function: a few ulp times the condition number of σ(2a) (tested).
#[inline(always)]
pub fn gelu_fast(x: f32) -> f32 {
    let a = GELU_SCALE * (x + 0.044715 * x * x * x);
    x / (1.0 + exp_f32(-2.0 * a))
}

/// gelu'(x) from the same σ: with s = σ(2a), e = e^-2a: 0.5·(1 + tanh) = s and
/// sech² = 4·s·(1 - s) = 4·s²·e, so gelu' = s + 2·x·s²·e·√(2/π)·(1 + 3·0.044715·x²).
/// Within 2e-6 absolute of the exact derivative (tested).
#[inline(always)]
pub fn gelu_grad_fast(x: f32) -> f32 {
    let a = GELU_SCALE * (x + 0.044715 * x * x * x);
    let e = exp_f32(-2.0 * a);
    let s = 1.0 / (1.0 + e);
    s + 2.0 * x * (s * s * e) * GELU_SCALE * (1.0 + 3.0 * 0.044715 * x * x)
}

#[inline(always)]
pub(crate) fn gelu_forward_chunk(out: &mut [f32], inp: &[f32]) {
    for (o, x) in out.iter_mut().zip(inp) {
        *o = gelu_fast(*x);
    }
}

#[inline(always)]
pub(crate) fn gelu_backward_chunk(d: &mut [f32], pre: &[f32]) {
    for (g, x) in d.iter_mut().zip(pre) {
        *g *= gelu_grad_fast(*x);
    }
}

/// out = gelu(inp), elementwise. Memory-bound once vectorized (8 bytes per element, ~30 flops);
/// split in 4096-element chunks over the pool.
pub fn gelu_forward(out: &mut [f32], inp: &[f32]) {
    parallel_rows_mut(out, 1, 4096, |r, chunk| {
        crate::avx2!(gelu_forward_chunk(chunk, &inp[r]))
    });
}

/// d *= gelu'(pre), in place.
pub fn gelu_backward_inplace(d: &mut [f32], pre: &[f32]) {
    parallel_rows_mut(d, 1, 4096, |r, chunk| {
        crate::avx2!(gelu_backward_chunk(chunk, &pre[r]))
    });
}

/// The plain twins of `gelu_forward` / `gelu_backward_inplace` (libm tanh), kept as the
/// reference the fast ones are tested against.
pub fn gelu_forward_plain(out: &mut [f32], inp: &[f32]) {
    for (o, x) in out.iter_mut().zip(inp) {
        *o = gelu(*x);
    }
}

pub fn gelu_backward_plain(d: &mut [f32], pre: &[f32]) {
    for (g, x) in d.iter_mut().zip(pre) {
        *g *= gelu_grad(*x);
    }
}

// ---------------------------------------------------------------------------------------------
// Fused classifier: softmax + cross-entropy + dlogits in one pass per row; probabilities are
// never stored (the GPU kernel's contract; on the CPU the logits row is overwritten in place).

/// For every row: losses[row] = logsumexp(logits[row, ..V]) - logits[row, target]. With
/// `dloss = Some(s)`, overwrites logits[row, :] with s * (softmax - onehot(target)) over the
/// real vocabulary and 0 over the padding.
pub fn classifier(
    logits: &mut [f32],
    losses: &mut [f32],
    targets: &[u32],
    vp: usize,
    v: usize,
    dloss: Option<f32>,
) {
    let lp = SharedMut::new(losses);
    parallel_rows_mut(logits, vp, 8, |rows, chunk| {
        let mut e = vec![0.0f32; v];
        for (i, row) in rows.enumerate() {
            let x = &mut chunk[i * vp..(i + 1) * vp];
            let loss = classifier_row(x, &mut e, targets[row] as usize, v, dloss);
            // SAFETY: row `row` of losses belongs to this worker.
            unsafe { lp.slice(row, 1)[0] = loss };
        }
    });
}

fn classifier_row(
    x: &mut [f32],
    e: &mut [f32],
    target: usize,
    v: usize,
    dloss: Option<f32>,
) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked). Same arithmetic, wider vectors, same results.
            return unsafe { classifier_row_avx2(x, e, target, v, dloss) };
        }
    }
    classifier_row_body(x, e, target, v, dloss)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn classifier_row_avx2(
    x: &mut [f32],
    e: &mut [f32],
    target: usize,
    v: usize,
    dloss: Option<f32>,
) -> f32 {
    classifier_row_body(x, e, target, v, dloss)
}

/// One row: loss = logsumexp(x[..v]) - x[target]; with dloss, x <- dloss * (softmax - onehot).
#[inline(always)]
fn classifier_row_body(
    x: &mut [f32],
    e: &mut [f32],
    target: usize,
    v: usize,
    dloss: Option<f32>,
) -> f32 {
    let mut mx = [f32::NEG_INFINITY; 8];
    for (j, a) in x[..v].iter().enumerate() {
        mx[j % 8] = mx[j % 8].max(*a);
    }
    let maxv = mx.iter().fold(f32::NEG_INFINITY, |m, &a| m.max(a));
    // One exp per logit: e = exp(x - max), summed in 8 lanes (a fixed order).
    let mut lanes = [0.0f32; 8];
    let full = v / 8 * 8;
    for (ec, xc) in e[..full].chunks_exact_mut(8).zip(x[..full].chunks_exact(8)) {
        for l in 0..8 {
            ec[l] = exp_f32(xc[l] - maxv);
            lanes[l] += ec[l];
        }
    }
    for j in full..v {
        e[j] = exp_f32(x[j] - maxv);
        lanes[j % 8] += e[j];
    }
    let sum = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5]))
        + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
    let loss = maxv + sum.ln() - x[target];
    if let Some(s) = dloss {
        let k = s / sum;
        for (xj, ej) in x[..v].iter_mut().zip(e.iter()) {
            *xj = ej * k;
        }
        x[target] -= s;
        x[v..].fill(0.0);
    }
    loss
}

// ---------------------------------------------------------------------------------------------
// Optimizer

/// Sum of squares of `x` in f64, in fixed 4096-element chunks (independent of thread count).
pub fn sum_of_squares(x: &[f32]) -> f64 {
    const CHUNK: usize = 4096;
    let n_chunks = x.len().div_ceil(CHUNK);
    let mut partials = vec![0.0f64; n_chunks];
    parallel_rows_mut(&mut partials, 1, 16, |r, out| {
        for (o, ci) in out.iter_mut().zip(r) {
            let s = &x[ci * CHUNK..((ci + 1) * CHUNK).min(x.len())];
            *o = s.iter().map(|&v| (v as f64) * (v as f64)).sum();
        }
    });
    partials.iter().sum()
}

/// AdamW hyper-parameters for one update.
#[derive(Clone, Copy, Debug)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// 1-based step number, for the bias corrections.
    pub t: u64,
    /// Multiplies every gradient first (gradient clipping).
    pub grad_scale: f32,
}

/// One AdamW update of params (FP32 master weights) in place; `decay` says whether this span
/// gets weight decay.
pub fn adamw_update(
    params: &mut [f32],
    grads: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    hp: &AdamW,
    decay: bool,
) {
    let bc1 = 1.0 - hp.beta1.powi(hp.t as i32);
    let bc2 = 1.0 - hp.beta2.powi(hp.t as i32);
    let wd = if decay { hp.weight_decay } else { 0.0 };
    let (mp, vp) = (SharedMut::new(m), SharedMut::new(v));
    parallel_rows_mut(params, 1, 8192, |r, p| {
        // SAFETY: each worker owns the range r of m and v.
        let (m, v) = unsafe { (mp.slice(r.start, r.len()), vp.slice(r.start, r.len())) };
        crate::avx2!(adamw_chunk(p, &grads[r], m, v, hp, bc1, bc2, wd))
    });
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn adamw_chunk(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    hp: &AdamW,
    bc1: f32,
    bc2: f32,
    wd: f32,
) {
    let n = p.len();
    let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
    for i in 0..n {
        let gi = g[i] * hp.grad_scale;
        m[i] = hp.beta1 * m[i] + (1.0 - hp.beta1) * gi;
        v[i] = hp.beta2 * v[i] + (1.0 - hp.beta2) * gi * gi;
        let mhat = m[i] / bc1;
        let vhat = v[i] / bc2;
        p[i] -= hp.lr * (mhat / (vhat.sqrt() + hp.eps) + wd * p[i]);
    }
}
