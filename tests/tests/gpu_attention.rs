//! GPU tests (feature `cuda`, need a GPU) of the causal attention launchers
//! (gpt::cuda::kernels::attention: the FP32 reference kernels of ptx/kernels/attention.cu and,
//! at head sizes 64 and 128, the tensor-core kernels of ptx/kernels/attention_tc.cu, each run
//! by name through `AttentionImpl`) against the CPU backend's ops
//! (`gpt::cpu::ops::{attention_forward, attention_backward}`) on the same bf16-rounded inputs.
//!
//! NOT YET RUN ON A GPU: written and compiled in a session without one. Run on a GPU host with
//! `cargo test --release -p tests --features cuda --test gpu_attention` (MXGPT_CUDA_SYNC=1 to
//! pin an asynchronous fault on the launching kernel).
//!
//! Shapes (b, t, c, nh) cover every supported head size (HS = c / nh in 16, 32, 64, 96, 128),
//! T = 1, T not a multiple of the 16-row block or the 32-column tile, and several batches and
//! heads. q and k are drawn from [-2.5, 2.5) so the scaled scores spread over several units and
//! the softmax is far from uniform (the online rescaling matters); v and dout from [-1, 1).
//!
//! Every output is poisoned with 0xFF bytes (NaN) first, and comparisons are written as
//! `!(err <= tol)` so NaN never passes. Tolerances are stated per test; the tensor-core ones
//! add, per element, the worst case of the bf16 rounding of P (and dS) that those kernels do
//! before multiplying (`tc_forward_bound`, `tc_backward_bound`).
//!
//! Planted bugs in attention_tc.cu that these tests (and gpu_schedules) caught, each planted
//! once and the source restored: the A fragment of P (pack_a) with registers 1 and 2 swapped;
//! the dV mma fed b[3], b[2] for b[2], b[3]; the forward's diagonal mask `key >= query`; the
//! dk/dv mask `j < i`; the dq kernel stopping one chunk early at the diagonal; a tile row
//! edge `t <= T` (read past the end of qkv); the barriers before a tile is overwritten removed
//! (forward, dkdv, dq: the forward's only by gpu_schedules); the wait for the V tile relaxed.
use tests::gpu::*;

use gpt::cpu::ops;
use gpt::cuda::kernels::attention::{self, AttentionImpl};
use gpt::cuda::kernels::Ptr;
use runtime::cuda::half::bf16;
use runtime::cuda::{DeviceBuffer, Gpu};

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, &x| m.max(x.abs()))
}

/// (b, t, c, nh). Every supported head size (HS = c / nh in 16, 32, 64, 96, 128); T = 1 (also
/// for the tensor-core head sizes 64 and 128); T not a multiple of the reference's 16-row block
/// and 32-column tile (17, 45, 70, 130, 200) nor of the tensor-core kernels' 64 (70, 100, 129,
/// 130); several batches and heads. HS 64: T 1, 64, 129, 130; HS 128: T 1, 70, 100.
const SHAPES: [(usize, usize, usize, usize); 11] = [
    (1, 1, 16, 1),
    (2, 17, 64, 4),
    (1, 130, 128, 2),
    (2, 64, 768, 12),
    (1, 200, 384, 4),
    (1, 45, 128, 4),
    (2, 70, 256, 2),
    (3, 1, 128, 2),
    (2, 1, 256, 2),
    (1, 129, 192, 3),
    (2, 100, 384, 3),
];

/// The implementations under test at head size `hs`: the FP32 reference (attention.cu) always;
/// the tensor-core kernels (attention_tc.cu) where they exist.
fn impls(hs: usize) -> Vec<AttentionImpl> {
    let mut v = vec![AttentionImpl::Reference];
    if attention::TENSOR_CORE_HEAD_SIZES.contains(&hs) {
        v.push(AttentionImpl::TensorCore);
    }
    v
}

/// Whether `attention_forward` / `attention_backward` (no implementation named) route this head
/// size to `imp` for the (16-byte aligned) buffers of these tests.
fn is_default(imp: AttentionImpl, hs: usize) -> bool {
    attention::default_impl(hs, &[0]) == imp
}

/// qkv [b, t, 3c] in bf16: q and k in [-2.5, 2.5), v in [-1, 1).
fn qkv_inputs(rng: &mut Rng, b: usize, t: usize, c: usize) -> Vec<bf16> {
    let mut x = Vec::with_capacity(b * t * 3 * c);
    for _ in 0..b * t {
        x.extend(rng.vec_bf16(2 * c, 2.5));
        x.extend(rng.vec_bf16(c, 1.0));
    }
    x
}

/// |got - want| <= rel |want| + abs[i] for every element (a per-element absolute bound);
/// `!(err <= tol)` so that NaN fails.
#[allow(clippy::neg_cmp_op_on_partial_ord)]
fn assert_within(what: &str, got: &[f32], want: &[f64], rel: f64, abs: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    assert_eq!(abs.len(), want.len(), "{what}: bound length");
    for (i, ((&g, &w), &a)) in got.iter().zip(want).zip(abs).enumerate() {
        let err = (g as f64 - w).abs();
        let tol = rel * w.abs() + a;
        if !(err <= tol) {
            panic!("{what}[{i}]: got {g}, want {w} (err {err:.3e} > tol {tol:.3e})");
        }
    }
}

/// Unit roundoff of bf16 round-to-nearest-even (8 significant bits): |bf16(x) - x| <= 2^-8 |x|.
const U_BF16: f64 = 1.0 / 256.0;

/// The softmax probabilities and their gradients of the CPU reference, in f64, per (batch,
/// head): `p[bh][i * t + j] = exp(s_ij - lse_i)` for j <= i (0 above the diagonal), and, given
/// dout and out, `ds[bh][i * t + j] = p (dout_i . v_j - dout_i . out_i) / sqrt(hs)`.
/// Used only to size the tensor-core tolerances (see `tc_forward_bound`, `tc_backward_bound`).
struct Softmax {
    p: Vec<Vec<f64>>,
    ds: Vec<Vec<f64>>,
}

#[allow(clippy::too_many_arguments)]
fn softmax_f64(
    qkv: &[f32],
    lse: &[f32],
    dout_out: Option<(&[f32], &[f32])>,
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) -> Softmax {
    let hs = c / nh;
    let scale = 1.0 / (hs as f64).sqrt();
    let dot =
        |x: &[f32], y: &[f32]| -> f64 { x.iter().zip(y).map(|(&a, &b)| a as f64 * b as f64).sum() };
    let (mut p, mut ds) = (Vec::new(), Vec::new());
    for bi in 0..b {
        for h in 0..nh {
            let row =
                |tt: usize, part: usize| &qkv[(bi * t + tt) * 3 * c + part * c + h * hs..][..hs];
            let (mut ph, mut dsh) = (vec![0f64; t * t], vec![0f64; t * t]);
            for i in 0..t {
                let l = lse[(bi * nh + h) * t + i] as f64;
                let d = dout_out.map(|(d_o, o)| {
                    let at = (bi * t + i) * c + h * hs;
                    (&d_o[at..at + hs], dot(&d_o[at..at + hs], &o[at..at + hs]))
                });
                for j in 0..=i {
                    let pij = (dot(row(i, 0), row(j, 1)) * scale - l).exp();
                    ph[i * t + j] = pij;
                    if let Some((d_o, dsum)) = d {
                        dsh[i * t + j] = pij * (dot(d_o, row(j, 2)) - dsum) * scale;
                    }
                }
            }
            p.push(ph);
            ds.push(dsh);
        }
    }
    Softmax { p, ds }
}

/// Per element of out [b, t, c]: A_ic = sum_j P_ij |v_jc|.
///
/// The tensor-core forward multiplies bf16(P) by V (P = exp(s - m) in f32, then rounded to bf16
/// for the mma; the row sum l and so lse use the f32 P). Each rounded term is off by at most
/// U_BF16 of itself, so before its own rounding out_ic is off by at most U_BF16 * A_ic (P V / l
/// = sum_j w_ij v_jc with weights w = P / l, which is what `softmax_f64` returns); the final
/// rounding to bf16 adds U_BF16 of that (|computed| <= |want| + U_BF16 A). So the tolerance is
/// rel U_BF16 (as the reference: 4e-3 > 2^-8) plus abs U_BF16 (1 + U_BF16) A_ic plus the
/// reference's 1e-4 for f32 summation order and exp. A_ic <= max|v| < 1; a typical A is ~0.5,
/// so the bound is ~2e-3 where the reference has 1e-4: a worst case (every rounding error of a
/// row with the same sign), not a widening guessed from observed errors.
fn tc_forward_bound(
    sm: &Softmax,
    qkv: &[f32],
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) -> Vec<f64> {
    let hs = c / nh;
    let mut a = vec![0f64; b * t * c];
    for bi in 0..b {
        for h in 0..nh {
            let p = &sm.p[bi * nh + h];
            for i in 0..t {
                let dst = &mut a[(bi * t + i) * c + h * hs..][..hs];
                for j in 0..=i {
                    let v = &qkv[(bi * t + j) * 3 * c + 2 * c + h * hs..][..hs];
                    for (d, &vv) in dst.iter_mut().zip(v) {
                        *d += p[i * t + j] * (vv as f64).abs();
                    }
                }
            }
        }
    }
    a
}

/// Per element of dqkv [b, t, 3c], the sum of |terms| that the tensor-core backward multiplies
/// after rounding one factor to bf16:
///   dq_ic: sum_j |dS_ij| |k_jc|   (dQ += bf16(dS) K)
///   dk_jc: sum_i |dS_ij| |q_ic|   (dK += bf16(dS)^T Q)
///   dv_jc: sum_i P_ij |dout_ic|   (dV += bf16(P)^T dO)
/// Each such output is off by at most U_BF16 times this before its own rounding to bf16 (the
/// same argument as `tc_forward_bound`); the rest of the arithmetic (S, dP, D, P, dS in f32) is
/// the reference kernels'.
#[allow(clippy::too_many_arguments)]
fn tc_backward_bound(
    sm: &Softmax,
    qkv: &[f32],
    dout: &[f32],
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) -> Vec<f64> {
    let hs = c / nh;
    let mut a = vec![0f64; b * t * 3 * c];
    for bi in 0..b {
        for h in 0..nh {
            let (p, ds) = (&sm.p[bi * nh + h], &sm.ds[bi * nh + h]);
            let at = |tt: usize, part: usize| (bi * t + tt) * 3 * c + part * c + h * hs;
            for i in 0..t {
                for j in 0..=i {
                    let (pij, dsij) = (p[i * t + j], ds[i * t + j].abs());
                    for cc in 0..hs {
                        let (q, k) = (
                            qkv[at(i, 0) + cc].abs() as f64,
                            qkv[at(j, 1) + cc].abs() as f64,
                        );
                        let d_o = dout[(bi * t + i) * c + h * hs + cc].abs() as f64;
                        a[at(i, 0) + cc] += dsij * k;
                        a[at(j, 1) + cc] += dsij * q;
                        a[at(j, 2) + cc] += pij * d_o;
                    }
                }
            }
        }
    }
    a
}

/// Runs a GPU forward into fresh poisoned buffers; returns (out as f32, lse, out as bf16).
/// `imp` None: `attention_forward` (the launcher's own choice).
#[allow(clippy::too_many_arguments)]
fn gpu_forward(
    g: &Gpu,
    imp: Option<AttentionImpl>,
    dqkv: &DeviceBuffer<bf16>,
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) -> (Vec<f32>, Vec<f32>, Vec<bf16>) {
    let out = poisoned::<bf16>(g, b * t * c);
    let lse = poisoned::<f32>(g, b * nh * t);
    let (o, l, q) = (Ptr::of(&out), Ptr::of(&lse), Ptr::of(dqkv));
    match imp {
        Some(imp) => attention::attention_forward_with(g, imp, o, l, q, b, t, c, nh),
        None => attention::attention_forward(g, o, l, q, b, t, c, nh),
    }
    .unwrap();
    let out_h = g.download(&out).unwrap();
    (f32s(&out_h), g.download(&lse).unwrap(), out_h)
}

/// Forward vs `ops::attention_forward` on the same bf16 inputs, for every implementation that
/// exists at the shape's head size.
///
/// Reference (attention.cu), out: the GPU rounds its f32 result to bf16 once (RNE: relative
/// error <= 2^-8 = 3.9e-3), so rel 4e-3. Before that rounding the two f32 computations differ
/// by summation order (dot products over HS, the softmax sum and the P V sum over up to 200
/// keys, online rescaling) and by the two exp implementations (both within 2 ulp): about 1e-6
/// of the magnitude of the terms, which is at most max|v| = 1; abs 1e-4 covers that with a
/// wide margin while a missing or extra key (a weight of ~1/T >= 1/200 on a v of size ~0.5) is
/// far outside it.
/// Tensor cores (attention_tc.cu), out: the same plus the bf16 rounding of P before P V, bounded
/// per element by U_BF16 (1 + U_BF16) A_ic (`tc_forward_bound`).
/// lse (both): f32 on both sides and never rounded to bf16 (the tensor-core l sums the f32 P),
/// so tighter: |lse| <= ~10 here and the differences are summation order in the scores (~1e-6
/// absolute) and in the softmax sum (relative ~T * 2^-24 worst case, i.e. ~1.2e-5 absolute
/// after the log): abs 3e-5 + rel 1e-5.
/// Also: a second run gives bitwise identical out and lse (deterministic); for the
/// implementation the launcher picks by itself, the second run is `attention_forward` (so the
/// routing is checked too: HS 64 and 128 must take the tensor cores).
#[test]
fn attention_forward_matches_cpu() {
    let g = gpu();
    let mut rng = Rng(0xA77E);
    for (b, t, c, nh) in SHAPES {
        let hs = c / nh;
        let qkv = qkv_inputs(&mut rng, b, t, c);
        let qkv_f = f32s(&qkv);
        let dqkv = g.upload(&qkv).unwrap();
        let (mut wo, mut wl) = (vec![0f32; b * t * c], vec![0f32; b * nh * t]);
        ops::attention_forward(&mut wo, &mut wl, &qkv_f, b, t, c, nh);
        let want = f64s(&wo);
        for imp in impls(hs) {
            let (out, lse, out_bits) = gpu_forward(&g, Some(imp), &dqkv, b, t, c, nh);
            let name = format!("attention_forward {imp:?} b={b} t={t} c={c} nh={nh}");
            let abs: Vec<f64> = match imp {
                AttentionImpl::Reference => vec![1e-4; want.len()],
                AttentionImpl::TensorCore => {
                    let sm = softmax_f64(&qkv_f, &wl, None, b, t, c, nh);
                    tc_forward_bound(&sm, &qkv_f, b, t, c, nh)
                        .iter()
                        .map(|a| U_BF16 * (1.0 + U_BF16) * a + 1e-4)
                        .collect()
                }
            };
            assert_within(&format!("{name} out"), &out, &want, 4e-3, &abs);
            assert_close(&format!("{name} lse"), &lse, &f64s(&wl), 1e-5, 3e-5);
            let again = if is_default(imp, hs) { None } else { Some(imp) };
            let (_, lse2, out_bits2) = gpu_forward(&g, again, &dqkv, b, t, c, nh);
            assert_eq!(
                bits(&out_bits),
                bits(&out_bits2),
                "{name}: out not deterministic (or attention_forward routed elsewhere)"
            );
            let lb: Vec<u32> = lse.iter().map(|x| x.to_bits()).collect();
            let lb2: Vec<u32> = lse2.iter().map(|x| x.to_bits()).collect();
            assert_eq!(lb, lb2, "{name}: lse not deterministic");
        }
    }
}

/// One third (part 0 q, 1 k, 2 v) of every token's row of a [rows, 3c] tensor: [rows, c].
fn third<T: Copy>(v: &[T], c: usize, part: usize) -> Vec<T> {
    v.chunks(3 * c)
        .flat_map(|row| row[part * c..][..c].to_vec())
        .collect()
}

/// Runs a GPU backward into a fresh poisoned dqkv (and poisoned scratch); returns dqkv.
/// `imp` None: `attention_backward` (the launcher's own choice).
#[allow(clippy::too_many_arguments)]
fn gpu_backward(
    g: &Gpu,
    imp: Option<AttentionImpl>,
    dout: &DeviceBuffer<bf16>,
    qkv: &DeviceBuffer<bf16>,
    out: &DeviceBuffer<bf16>,
    lse: &DeviceBuffer<f32>,
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) -> Vec<bf16> {
    let dqkv = poisoned::<bf16>(g, b * t * 3 * c);
    let scratch = poisoned::<f32>(g, attention::attention_backward_scratch_len(b, t, c, nh));
    let p = (
        Ptr::of(&dqkv),
        Ptr::of(dout),
        Ptr::of(qkv),
        Ptr::of(out),
        Ptr::of(lse),
        Ptr::of(&scratch),
    );
    match imp {
        Some(imp) => {
            attention::attention_backward_with(g, imp, p.0, p.1, p.2, p.3, p.4, p.5, b, t, c, nh)
        }
        None => attention::attention_backward(g, p.0, p.1, p.2, p.3, p.4, p.5, b, t, c, nh),
    }
    .unwrap();
    g.download(&dqkv).unwrap()
}

/// Backward vs `ops::attention_backward` on the same inputs: qkv and dout random bf16, out and
/// lse from the CPU forward (out rounded to bf16, as the GPU stores it), so the backward is
/// tested on its own. dq, dk and dv are compared separately, for every implementation that
/// exists at the shape's head size.
///
/// Reference: per element rel 4e-3 (the one bf16 rounding of each output, <= 2^-8) plus
/// abs 1e-4 * max|want| over that third of dqkv. Before rounding the GPU and CPU differ only
/// by f32 summation order (the score and dP dot products, D = dout . out, the sums over up to
/// 200 keys or queries) and by exp within 2 ulp: ~1e-6 relative to the terms, whose size is
/// bounded by a small multiple of max|want| (the probabilities of a row sum to 1), so 1e-4 of
/// the max leaves a wide margin; a wrongly masked or missing term (weight ~1/T >= 1/200) is
/// about 10x larger than it. The dP - D cancellation can make single elements small, which is
/// why the absolute part is tied to the tensor's scale rather than the element's. At T = 1 that
/// scale is 0 for dq and dk: they are exactly 0 (P = 1 and out = v, so dP = D), and what the
/// GPU returns is the rounding residue of dP - D, two dot products over HS summed in different
/// orders (an mma or fmaf chain against the D kernel's): ~sqrt(HS) 2^-24 |dout . v| scale |k|,
/// about 5e-8 here; a floor of 1e-6 covers it (a wrong P or a missing term is >= 1e-3).
/// Tensor cores: the same plus U_BF16 (1 + U_BF16) times the element's sum of |terms| that
/// were multiplied with a bf16-rounded P or dS (`tc_backward_bound`).
/// Also: a second run gives bitwise identical dqkv (no atomics); for the implementation the
/// launcher picks by itself the second run is `attention_backward` (routing checked).
#[test]
fn attention_backward_matches_cpu() {
    let g = gpu();
    let mut rng = Rng(0xBAC4);
    for (b, t, c, nh) in SHAPES {
        let hs = c / nh;
        let qkv = qkv_inputs(&mut rng, b, t, c);
        let dout = rng.vec_bf16(b * t * c, 1.0);
        let qkv_f = f32s(&qkv);
        let (mut wo, mut wl) = (vec![0f32; b * t * c], vec![0f32; b * nh * t]);
        ops::attention_forward(&mut wo, &mut wl, &qkv_f, b, t, c, nh);
        let out: Vec<bf16> = wo.iter().map(|&x| bf16::from_f32(x)).collect();

        let d_qkv = g.upload(&qkv).unwrap();
        let d_dout = g.upload(&dout).unwrap();
        let d_out = g.upload(&out).unwrap();
        let d_lse = g.upload(&wl).unwrap();

        let mut want = vec![0f32; b * t * 3 * c];
        let (dout_f, out_f) = (f32s(&dout), f32s(&out));
        ops::attention_backward(&mut want, &dout_f, &qkv_f, &out_f, &wl, b, t, c, nh);

        for imp in impls(hs) {
            let got = gpu_backward(&g, Some(imp), &d_dout, &d_qkv, &d_out, &d_lse, b, t, c, nh);
            let bound = match imp {
                AttentionImpl::Reference => vec![0f64; want.len()],
                AttentionImpl::TensorCore => {
                    let sm = softmax_f64(&qkv_f, &wl, Some((&dout_f, &out_f)), b, t, c, nh);
                    tc_backward_bound(&sm, &qkv_f, &dout_f, b, t, c, nh)
                }
            };
            let name = format!("attention_backward {imp:?} b={b} t={t} c={c} nh={nh}");
            let got_f = f32s(&got);
            for (part, pname) in ["dq", "dk", "dv"].iter().enumerate() {
                let (gp, wp) = (third(&got_f, c, part), f64s(&third(&want, c, part)));
                let scale = max_abs(&wp);
                let abs: Vec<f64> = third(&bound, c, part)
                    .iter()
                    .map(|a| U_BF16 * (1.0 + U_BF16) * a + 1e-4 * scale + 1e-6)
                    .collect();
                assert_within(&format!("{name} {pname}"), &gp, &wp, 4e-3, &abs);
            }
            let again = if is_default(imp, hs) { None } else { Some(imp) };
            let again = gpu_backward(&g, again, &d_dout, &d_qkv, &d_out, &d_lse, b, t, c, nh);
            assert_eq!(
                bits(&got),
                bits(&again),
                "{name}: dqkv not deterministic (or attention_backward routed elsewhere)"
            );
        }
    }
}

/// The launchers refuse what the kernels cannot do, with errors that say why: a head size
/// without a kernel (naming HS and the supported set), c not a multiple of nh, dqkv aliasing
/// qkv, a short operand.
#[test]
fn attention_launchers_reject_bad_calls() {
    let g = gpu();
    let (b, t) = (1usize, 8usize);
    // HS = 80: no kernel.
    let (c, nh) = (80usize, 1usize);
    let qkv = g.alloc::<bf16>(b * t * 3 * c).unwrap();
    let out = g.alloc::<bf16>(b * t * c).unwrap();
    let lse = g.alloc::<f32>(b * nh * t).unwrap();
    let e =
        attention::attention_forward(&g, Ptr::of(&out), Ptr::of(&lse), Ptr::of(&qkv), b, t, c, nh)
            .unwrap_err()
            .to_string();
    assert!(
        e.contains("80") && e.contains("[16, 32, 64, 96, 128]"),
        "{e}"
    );
    let dqkv = g.alloc::<bf16>(b * t * 3 * c).unwrap();
    let scratch = g.alloc::<f32>(b * nh * t).unwrap();
    let e = attention::attention_backward(
        &g,
        Ptr::of(&dqkv),
        Ptr::of(&out),
        Ptr::of(&qkv),
        Ptr::of(&out),
        Ptr::of(&lse),
        Ptr::of(&scratch),
        b,
        t,
        c,
        nh,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("80") && e.contains("[16, 32, 64, 96, 128]"),
        "{e}"
    );
    // c = 80, nh = 3: not a multiple.
    let e =
        attention::attention_forward(&g, Ptr::of(&out), Ptr::of(&lse), Ptr::of(&qkv), b, t, 80, 3)
            .unwrap_err()
            .to_string();
    assert!(e.contains("not a multiple"), "{e}");
    // HS = 16 (c = 80, nh = 5) is supported: in-place dqkv = qkv is refused.
    let nh = 5;
    let lse5 = g.alloc::<f32>(b * nh * t).unwrap();
    let scratch5 = g.alloc::<f32>(b * nh * t).unwrap();
    let e = attention::attention_backward(
        &g,
        Ptr::of(&qkv),
        Ptr::of(&out),
        Ptr::of(&qkv),
        Ptr::of(&out),
        Ptr::of(&lse5),
        Ptr::of(&scratch5),
        b,
        t,
        c,
        nh,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("overlaps"), "{e}");
    // A short lse.
    let e =
        attention::attention_forward(&g, Ptr::of(&out), Ptr::of(&lse), Ptr::of(&qkv), b, t, c, nh)
            .unwrap_err()
            .to_string();
    assert!(e.contains("lse"), "{e}");
    // The tensor-core kernels, asked for by name, at a head size they do not have (HS = 16).
    let lse5 = g.alloc::<f32>(b * nh * t).unwrap();
    let e = attention::attention_forward_with(
        &g,
        AttentionImpl::TensorCore,
        Ptr::of(&out),
        Ptr::of(&lse5),
        Ptr::of(&qkv),
        b,
        t,
        c,
        nh,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("[64, 128]") && e.contains("16"), "{e}");
}

/// Where the tensor-core kernels cannot run for alignment (qkv 4-byte but not 16-byte
/// aligned: their cp.async copies move 16-byte chunks), asking for them by name is an error
/// naming the operand, and `attention_forward` / `attention_backward` fall back to the
/// reference kernels (bit for bit what `AttentionImpl::Reference` gives).
#[test]
fn attention_misaligned_falls_back_to_reference() {
    let g = gpu();
    let mut rng = Rng(0x5A1);
    let (b, t, c, nh) = (1usize, 20usize, 128usize, 2usize); // HS 64
    let n = b * t * 3 * c;
    let qkv = g.upload(&qkv_inputs(&mut rng, b, t, c)).unwrap();
    // The same values 2 elements (4 bytes) further on.
    let shifted = g
        .upload(&[vec![bf16::from_f32(0.0); 2], g.download(&qkv).unwrap()].concat())
        .unwrap();
    let qkv4 = Ptr::of(&shifted).slice(2, n);
    assert!(qkv4.addr() % 16 != 0);
    let dout = g.upload(&rng.vec_bf16(b * t * c, 1.0)).unwrap();
    let e = attention::attention_forward_with(
        &g,
        AttentionImpl::TensorCore,
        Ptr::of(&poisoned::<bf16>(&g, b * t * c)),
        Ptr::of(&poisoned::<f32>(&g, b * nh * t)),
        qkv4,
        b,
        t,
        c,
        nh,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("qkv") && e.contains("16-byte"), "{e}");

    let run = |imp: Option<AttentionImpl>| -> (Vec<u16>, Vec<u16>) {
        let (out, lse) = (
            poisoned::<bf16>(&g, b * t * c),
            poisoned::<f32>(&g, b * nh * t),
        );
        let (o, l) = (Ptr::of(&out), Ptr::of(&lse));
        let dqkv = poisoned::<bf16>(&g, n);
        let scratch = poisoned::<f32>(&g, attention::attention_backward_scratch_len(b, t, c, nh));
        let (dq, d_o, s) = (Ptr::of(&dqkv), Ptr::of(&dout), Ptr::of(&scratch));
        match imp {
            Some(imp) => {
                attention::attention_forward_with(&g, imp, o, l, qkv4, b, t, c, nh).unwrap();
                attention::attention_backward_with(&g, imp, dq, d_o, qkv4, o, l, s, b, t, c, nh)
                    .unwrap();
            }
            None => {
                attention::attention_forward(&g, o, l, qkv4, b, t, c, nh).unwrap();
                attention::attention_backward(&g, dq, d_o, qkv4, o, l, s, b, t, c, nh).unwrap();
            }
        }
        (
            bits(&g.download(&out).unwrap()),
            bits(&g.download(&dqkv).unwrap()),
        )
    };
    assert!(
        run(None) == run(Some(AttentionImpl::Reference)),
        "misaligned qkv: attention_forward/backward did not fall back to the reference kernels"
    );
}
