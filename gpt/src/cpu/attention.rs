//! Causal multi-head attention on the CPU, flash style: the forward saves only the output and
//! the log-sum-exp of each softmax row; the backward recomputes the probabilities. Never a T x T
//! matrix in memory.
//!
//! Two implementations, bit-identical (the CPU backend is the reference the MXFP4 and GPU
//! contract tests compare against, so the fast one may not change a single rounding):
//! - `*_plain`: per (batch, head) pair, per query row, `dot` / `axpy` over the strided rows of
//!   qkv [B, T, 3C] (row stride 3C floats: every key row on another page, reloaded for every
//!   query row). The definition.
//! - `attention_forward` / `attention_backward` (fast): per pair, the head's Q, K, V (and dO, O)
//!   are packed once into contiguous [T, hs] per-thread buffers; query rows go in blocks of
//!   `ROWS`, so each key / value row is loaded once per block instead of once per row, and the
//!   P·V and dS·K products keep their accumulators in registers (8-column strips). Every value
//!   still receives its additions in the plain order: each score is the plain `dot` (8 partial
//!   sums, same final combination), the softmax max / exp / sum run over t2 in increasing order,
//!   O, dQ accumulate over t2 increasing and dK, dV over t1 increasing, each from 0.0.
//!
//! Work split: one (batch, head) pair per work item (`parallel_for`), as before; results do not
//! depend on the thread count. Cost per pair: ~2·T²·hs FLOPs forward (QKᵀ and PV, causal half),
//! ~4·T²·hs backward (QKᵀ, dO·Vᵀ, dS·K, dSᵀ·Q, Pᵀ·dO: 5 products, causal half); bytes: the
//! packed head (5·T·hs floats backward) stays in L2 at the model's shapes (T 256, hs 64: 320 KiB),
//! so the fast path is bound by the scalar per-score work (dot combination, exp) and the FMA-less
//! mul + add (Rust does not contract, and fusing would change the bits).

use super::ops::{exp_f32, SharedMut};
use runtime::cpu::parallel_for;
use std::cell::RefCell;

/// The plain twin, and the definition: qkv [B, T, 3C] (q | k | v, head h at channels h*hs..),
/// out [B, T, C], lse [B, NH, T].
// Index loops kept: the plain twin reads as the formula (moved unchanged from ops.rs).
#[allow(clippy::needless_range_loop)]
pub fn attention_forward_plain(
    out: &mut [f32],
    lse: &mut [f32],
    qkv: &[f32],
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) {
    let hs = c / nh;
    let scale = 1.0 / (hs as f32).sqrt();
    let (op, lp) = (SharedMut::new(out), SharedMut::new(lse));
    parallel_for(b * nh, 1, |pairs| {
        super::simd::with_avx2(|| {
            let mut scores = vec![0.0f32; t];
            let mut acc = vec![0.0f32; hs];
            for pair in pairs {
                let (bi, h) = (pair / nh, pair % nh);
                let row = |tt: usize, part: usize| {
                    let base = (bi * t + tt) * 3 * c + part * c + h * hs;
                    &qkv[base..base + hs]
                };
                for t1 in 0..t {
                    let q = row(t1, 0);
                    let mut maxv = f32::NEG_INFINITY;
                    for t2 in 0..=t1 {
                        let s = dot(q, row(t2, 1)) * scale;
                        scores[t2] = s;
                        maxv = maxv.max(s);
                    }
                    let mut sum = 0.0f32;
                    acc.fill(0.0);
                    for t2 in 0..=t1 {
                        let p = exp_f32(scores[t2] - maxv);
                        sum += p;
                        axpy(&mut acc, p, row(t2, 2));
                    }
                    let inv = 1.0 / sum;
                    // SAFETY: (bi, h) owns out[bi, :, h*hs..(h+1)*hs] and lse[bi, h, :].
                    let o = unsafe { op.slice((bi * t + t1) * c + h * hs, hs) };
                    for (o, a) in o.iter_mut().zip(&acc) {
                        *o = a * inv;
                    }
                    unsafe { lp.slice((bi * nh + h) * t + t1, 1)[0] = maxv + sum.ln() };
                }
            }
        })
    });
}

/// The plain twin, and the definition: dqkv [B, T, 3C] (overwritten) from dout [B, T, C],
/// using the saved out and lse.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_plain(
    dqkv: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    out: &[f32],
    lse: &[f32],
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) {
    let hs = c / nh;
    let scale = 1.0 / (hs as f32).sqrt();
    let dp = SharedMut::new(dqkv);
    parallel_for(b * nh, 1, |pairs| {
        super::simd::with_avx2(|| {
            let mut dscore = vec![0.0f32; t];
            for pair in pairs {
                let (bi, h) = (pair / nh, pair % nh);
                let at = |tt: usize, part: usize| (bi * t + tt) * 3 * c + part * c + h * hs;
                // SAFETY: (bi, h) owns the head-h channels of q, k and v in dqkv[bi, :, :].
                for tt in 0..t {
                    for part in 0..3 {
                        unsafe { dp.slice(at(tt, part), hs) }.fill(0.0);
                    }
                }
                for t1 in 0..t {
                    let q = &qkv[at(t1, 0)..at(t1, 0) + hs];
                    let d_o = &dout[(bi * t + t1) * c + h * hs..][..hs];
                    let o = &out[(bi * t + t1) * c + h * hs..][..hs];
                    let l = lse[(bi * nh + h) * t + t1];
                    let d_sum = dot(d_o, o); // sum_t2 P dP, the softmax-backward correction
                    for t2 in 0..=t1 {
                        let k = &qkv[at(t2, 1)..at(t2, 1) + hs];
                        let v = &qkv[at(t2, 2)..at(t2, 2) + hs];
                        let p = exp_f32(dot(q, k) * scale - l);
                        // dV[t2] += P * dO[t1]
                        axpy(unsafe { dp.slice(at(t2, 2), hs) }, p, d_o);
                        dscore[t2] = p * (dot(d_o, v) - d_sum) * scale;
                    }
                    let dq = unsafe { dp.slice(at(t1, 0), hs) };
                    for t2 in 0..=t1 {
                        let k = &qkv[at(t2, 1)..at(t2, 1) + hs];
                        axpy(dq, dscore[t2], k);
                        axpy(unsafe { dp.slice(at(t2, 1), hs) }, dscore[t2], q);
                    }
                }
            }
        })
    });
}

/// The plain dot product whose exact order every score follows (fast path included).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight partial sums so the compiler can vectorize without reassociating (fixed order).
    let mut acc = [0.0f32; 8];
    let chunks = a.len() / 8;
    for i in 0..chunks {
        for j in 0..8 {
            acc[j] += a[i * 8 + j] * b[i * 8 + j];
        }
    }
    let mut s = 0.0;
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + s
}

#[inline(always)]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

// ---------------------------------------------------------------------------------------------
// Fast path

/// Query rows per block: 4 rows x 1 key row share each key load; 4 accumulators (one ymm each
/// with AVX2) plus the key fit the 16 registers.
const ROWS: usize = 4;

/// Per-thread buffers, reused across pairs and calls (the pool's threads live on).
#[derive(Default)]
struct Work {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    o: Vec<f32>,
    dout: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
    lse: Vec<f32>,
    /// ROWS rows of T: scores, then probabilities.
    s: Vec<f32>,
    /// ROWS rows of T: dO·V, then dS (backward).
    ds: Vec<f32>,
}

thread_local! {
    static WORK: RefCell<Work> = RefCell::new(Work::default());
}

fn sized(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    v.resize(len, 0.0);
    &mut v[..len]
}

/// Copies rows `src[offset + tt*stride..][..hs]` for tt in 0..T into the contiguous `dst`.
#[inline(always)]
fn pack(dst: &mut [f32], src: &[f32], offset: usize, stride: usize, hs: usize) {
    for (tt, d) in dst.chunks_exact_mut(hs).enumerate() {
        d.copy_from_slice(&src[offset + tt * stride..][..hs]);
    }
}

/// The inverse of `pack`.
#[inline(always)]
fn unpack(dst: &SharedMut, src: &[f32], offset: usize, stride: usize, hs: usize) {
    for (tt, s) in src.chunks_exact(hs).enumerate() {
        // SAFETY: the caller's pair owns these rows' head channels (see its comment).
        unsafe { dst.slice(offset + tt * stride, hs) }.copy_from_slice(s);
    }
}

/// `dot(rows[r], k)` for the N contiguous rows of `rows` ([N, hs]), bit for bit the plain `dot`:
/// 8 partial sums over the 8-wide chunks, a sequential tail, the same final combination.
#[inline(always)]
fn dots<const N: usize>(rows: &[f32], k: &[f32], hs: usize) -> [f32; N] {
    let (rows, k) = (&rows[..N * hs], &k[..hs]);
    let chunks = hs / 8;
    let mut acc = [[0.0f32; 8]; N];
    for i in 0..chunks {
        let kc: &[f32; 8] = k[i * 8..i * 8 + 8].try_into().unwrap();
        for (r, a) in acc.iter_mut().enumerate() {
            let qc: &[f32; 8] = rows[r * hs + i * 8..r * hs + i * 8 + 8].try_into().unwrap();
            for j in 0..8 {
                a[j] += qc[j] * kc[j];
            }
        }
    }
    let mut out = [0.0f32; N];
    for (r, a) in acc.iter().enumerate() {
        let mut s = 0.0;
        for i in chunks * 8..hs {
            s += rows[r * hs + i] * k[i];
        }
        out[r] = ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7])) + s;
    }
    out
}

/// out[r, :] = sum over t2 in 0..=r0+r, increasing, of w[r*ws + t2] * x[t2, :], from 0.0 (the
/// plain `axpy` loop's order per element), for the N rows r0.. of a block. 8-column strips keep
/// the N accumulators in registers while the x rows stream by.
#[inline(always)]
fn weighted_rows<const N: usize>(
    out: &mut [f32],
    w: &[f32],
    ws: usize,
    x: &[f32],
    r0: usize,
    hs: usize,
) {
    let chunks = hs / 8;
    for ci in 0..chunks {
        let mut acc = [[0.0f32; 8]; N];
        // Keys every row of the block sees, then the causal triangle inside the block.
        for t2 in 0..r0 + N {
            let xc: &[f32; 8] = x[t2 * hs + ci * 8..t2 * hs + ci * 8 + 8]
                .try_into()
                .unwrap();
            for (r, a) in acc.iter_mut().enumerate() {
                if t2 <= r0 + r {
                    let c = w[r * ws + t2];
                    for j in 0..8 {
                        a[j] += c * xc[j];
                    }
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            out[r * hs + ci * 8..r * hs + ci * 8 + 8].copy_from_slice(a);
        }
    }
    for col in chunks * 8..hs {
        for r in 0..N {
            let mut a = 0.0f32;
            for t2 in 0..=r0 + r {
                a += w[r * ws + t2] * x[t2 * hs + col];
            }
            out[r * hs + col] = a;
        }
    }
}

/// y[:] += c[r] * x[r, :] for r in rmin..N, in that order per element (dK, dV: t1 increasing).
#[inline(always)]
fn axpy_rows<const N: usize>(y: &mut [f32], c: [f32; N], x: &[f32], rmin: usize, hs: usize) {
    let (y, x) = (&mut y[..hs], &x[..N * hs]);
    let chunks = hs / 8;
    for ci in 0..chunks {
        let yc: &mut [f32; 8] = (&mut y[ci * 8..ci * 8 + 8]).try_into().unwrap();
        let mut a = *yc;
        for r in rmin..N {
            let xc: &[f32; 8] = x[r * hs + ci * 8..r * hs + ci * 8 + 8].try_into().unwrap();
            for j in 0..8 {
                a[j] += c[r] * xc[j];
            }
        }
        *yc = a;
    }
    for col in chunks * 8..hs {
        for r in rmin..N {
            y[col] += c[r] * x[r * hs + col];
        }
    }
}

/// Forward for query rows r0..r0+N of one packed head: w.o rows and w.lse entries.
#[inline(always)]
fn forward_rows<const N: usize>(w: &mut Work, t: usize, r0: usize, hs: usize, scale: f32) {
    let s = &mut w.s[..N * t];
    let q = &w.q[r0 * hs..(r0 + N) * hs];
    for t2 in 0..r0 + N {
        let d = dots::<N>(q, &w.k[t2 * hs..], hs);
        for r in 0..N {
            s[r * t + t2] = d[r] * scale;
        }
    }
    let mut inv = [0.0f32; N];
    for r in 0..N {
        let row = &mut s[r * t..r * t + r0 + r + 1];
        let mut maxv = f32::NEG_INFINITY;
        for &x in row.iter() {
            maxv = maxv.max(x);
        }
        for x in row.iter_mut() {
            *x = exp_f32(*x - maxv);
        }
        let mut sum = 0.0f32;
        for &p in row.iter() {
            sum += p;
        }
        inv[r] = 1.0 / sum;
        w.lse[r0 + r] = maxv + sum.ln();
    }
    let o = &mut w.o[r0 * hs..(r0 + N) * hs];
    weighted_rows::<N>(o, s, t, &w.v, r0, hs);
    for r in 0..N {
        for x in &mut o[r * hs..(r + 1) * hs] {
            *x *= inv[r];
        }
    }
}

/// Backward for query rows r0..r0+N: dQ rows, and these rows' additions to dK, dV.
#[inline(always)]
fn backward_rows<const N: usize>(w: &mut Work, t: usize, r0: usize, hs: usize, scale: f32) {
    let (s, ds) = (&mut w.s[..N * t], &mut w.ds[..N * t]);
    let q = &w.q[r0 * hs..(r0 + N) * hs];
    let d_o = &w.dout[r0 * hs..(r0 + N) * hs];
    let mut d_sum = [0.0f32; N];
    let mut l = [0.0f32; N];
    for r in 0..N {
        d_sum[r] = dot(
            &d_o[r * hs..(r + 1) * hs],
            &w.o[(r0 + r) * hs..(r0 + r + 1) * hs],
        );
        l[r] = w.lse[r0 + r];
    }
    for t2 in 0..r0 + N {
        let qk = dots::<N>(q, &w.k[t2 * hs..], hs);
        let dv = dots::<N>(d_o, &w.v[t2 * hs..], hs);
        for r in 0..N {
            s[r * t + t2] = qk[r] * scale - l[r];
            ds[r * t + t2] = dv[r];
        }
    }
    for r in 0..N {
        let len = r0 + r + 1;
        for (x, g) in s[r * t..r * t + len]
            .iter_mut()
            .zip(&mut ds[r * t..r * t + len])
        {
            let p = exp_f32(*x);
            *x = p;
            *g = p * (*g - d_sum[r]) * scale;
        }
    }
    for t2 in 0..r0 + N {
        // Rows r of the block with t2 <= r0 + r, in increasing t1 order.
        let rmin = t2.saturating_sub(r0);
        let (mut cp, mut cs) = ([0.0f32; N], [0.0f32; N]);
        for r in rmin..N {
            cp[r] = s[r * t + t2];
            cs[r] = ds[r * t + t2];
        }
        axpy_rows::<N>(&mut w.dv[t2 * hs..], cp, d_o, rmin, hs);
        axpy_rows::<N>(&mut w.dk[t2 * hs..], cs, q, rmin, hs);
    }
    weighted_rows::<N>(&mut w.dq[r0 * hs..(r0 + N) * hs], ds, t, &w.k, r0, hs);
}

/// Fast forward, bit-identical to [`attention_forward_plain`] (same arguments).
pub fn attention_forward(
    out: &mut [f32],
    lse: &mut [f32],
    qkv: &[f32],
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) {
    attention_forward_simd(out, lse, qkv, b, t, c, nh, super::simd::avx2_fma())
}

/// Panics naming the operand whose length does not match the shape (a caller's bug).
fn check_shapes(what: &str, ops: &[(&str, usize, usize)], c: usize, nh: usize) {
    assert!(
        nh > 0 && c.is_multiple_of(nh),
        "{what}: C = {c} is not a multiple of the head count NH = {nh}"
    );
    for &(name, len, want) in ops {
        assert!(
            len == want,
            "{what}: {name} has {len} floats, expected {want}"
        );
    }
}

/// [`attention_forward`] with the AVX2 copy on or off (`avx2` false: the portable copy).
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_forward_simd(
    out: &mut [f32],
    lse: &mut [f32],
    qkv: &[f32],
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
    avx2: bool,
) {
    check_shapes(
        "attention_forward",
        &[
            ("out [B, T, C]", out.len(), b * t * c),
            ("lse [B, NH, T]", lse.len(), b * nh * t),
            ("qkv [B, T, 3C]", qkv.len(), b * t * 3 * c),
        ],
        c,
        nh,
    );
    let hs = c / nh;
    let scale = 1.0 / (hs as f32).sqrt();
    let (op, lp) = (SharedMut::new(out), SharedMut::new(lse));
    parallel_for(b * nh, 1, |pairs| {
        WORK.with(|cell| {
            let w = &mut *cell.borrow_mut();
            super::simd::with_avx2_if(avx2, || {
                for pair in pairs {
                    let (bi, h) = (pair / nh, pair % nh);
                    let base = bi * t * 3 * c + h * hs;
                    pack(sized(&mut w.q, t * hs), qkv, base, 3 * c, hs);
                    pack(sized(&mut w.k, t * hs), qkv, base + c, 3 * c, hs);
                    pack(sized(&mut w.v, t * hs), qkv, base + 2 * c, 3 * c, hs);
                    sized(&mut w.o, t * hs);
                    sized(&mut w.lse, t);
                    sized(&mut w.s, ROWS * t);
                    let mut r0 = 0;
                    while r0 + ROWS <= t {
                        forward_rows::<ROWS>(w, t, r0, hs, scale);
                        r0 += ROWS;
                    }
                    for r in r0..t {
                        forward_rows::<1>(w, t, r, hs, scale);
                    }
                    // SAFETY: (bi, h) owns out[bi, :, h*hs..(h+1)*hs] and lse[bi, h, :].
                    unpack(&op, &w.o, bi * t * c + h * hs, c, hs);
                    unsafe { lp.slice((bi * nh + h) * t, t) }.copy_from_slice(&w.lse);
                }
            })
        })
    });
}

/// Fast backward, bit-identical to [`attention_backward_plain`] (same arguments).
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    dqkv: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    out: &[f32],
    lse: &[f32],
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) {
    attention_backward_simd(
        dqkv,
        dout,
        qkv,
        out,
        lse,
        b,
        t,
        c,
        nh,
        super::simd::avx2_fma(),
    )
}

/// [`attention_backward`] with the AVX2 copy on or off (`avx2` false: the portable copy).
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_backward_simd(
    dqkv: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    out: &[f32],
    lse: &[f32],
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
    avx2: bool,
) {
    check_shapes(
        "attention_backward",
        &[
            ("dqkv [B, T, 3C]", dqkv.len(), b * t * 3 * c),
            ("dout [B, T, C]", dout.len(), b * t * c),
            ("qkv [B, T, 3C]", qkv.len(), b * t * 3 * c),
            ("out [B, T, C]", out.len(), b * t * c),
            ("lse [B, NH, T]", lse.len(), b * nh * t),
        ],
        c,
        nh,
    );
    let hs = c / nh;
    let scale = 1.0 / (hs as f32).sqrt();
    let dp = SharedMut::new(dqkv);
    parallel_for(b * nh, 1, |pairs| {
        WORK.with(|cell| {
            let w = &mut *cell.borrow_mut();
            super::simd::with_avx2_if(avx2, || {
                for pair in pairs {
                    let (bi, h) = (pair / nh, pair % nh);
                    let base = bi * t * 3 * c + h * hs;
                    let obase = bi * t * c + h * hs;
                    pack(sized(&mut w.q, t * hs), qkv, base, 3 * c, hs);
                    pack(sized(&mut w.k, t * hs), qkv, base + c, 3 * c, hs);
                    pack(sized(&mut w.v, t * hs), qkv, base + 2 * c, 3 * c, hs);
                    pack(sized(&mut w.o, t * hs), out, obase, c, hs);
                    pack(sized(&mut w.dout, t * hs), dout, obase, c, hs);
                    let l = &lse[(bi * nh + h) * t..][..t];
                    sized(&mut w.lse, t).copy_from_slice(l);
                    for buf in [&mut w.dq, &mut w.dk, &mut w.dv] {
                        sized(buf, t * hs).fill(0.0);
                    }
                    sized(&mut w.s, ROWS * t);
                    sized(&mut w.ds, ROWS * t);
                    let mut r0 = 0;
                    while r0 + ROWS <= t {
                        backward_rows::<ROWS>(w, t, r0, hs, scale);
                        r0 += ROWS;
                    }
                    for r in r0..t {
                        backward_rows::<1>(w, t, r, hs, scale);
                    }
                    // SAFETY: (bi, h) owns the head-h channels of q, k and v in dqkv[bi, :, :].
                    unpack(&dp, &w.dq, base, 3 * c, hs);
                    unpack(&dp, &w.dk, base + c, 3 * c, hs);
                    unpack(&dp, &w.dv, base + 2 * c, 3 * c, hs);
                }
            })
        })
    });
}
