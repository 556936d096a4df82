//! The MX GEMM paths on the GPU against the CPU reference gpt::mx:
//!
//! - `int8` (ptx/kernels/mx_gemm.cu): BIT-IDENTICAL to `mx_gemm_int_reference` before the one
//!   bf16 rounding of the output (same block order, exact promotions), for RTN and SR (alpha
//!   16/9), overwrite and accumulate, ragged shapes (M, N not multiples of the 128 tile, K with a
//!   half stage), NaN blocks.
//! - `bf16` (the dequantized operands through gemm.cu's matmul_kmajor): products are exact in
//!   FP32 and only the FP32 summation order differs from the exact formula, so
//!   `|got - exact| <= 2^-8 |exact| + K 2^-23 S` with `S = alpha sum_k |a_k b_k|` (2^-8: the
//!   output's bf16 rounding with margin; K 2^-23 S bounds any order of K FP32 adds). A dropped
//!   block or a wrong scale is off by O(S) and fails.
//! - The chain the backend runs: GPU quantize (rowwise / colwise, RHT, SR) then the int8 GEMM
//!   equals the CPU's whole `mx::backward_gemm` on the same bf16 inputs, bit for bit before
//!   the bf16 rounding.

use gpt::cpu::gemm::MatRef;
use gpt::cuda::kernels::mx::{self, Layout, MxRef, QuantizeOut, QuantizeSpec};
use gpt::cuda::kernels::{gemm, Ptr};
use gpt::mx::format::{e2m1_decode, e8m0_decode};
use gpt::mx::gemm::{mx_gemm_exact_f64, mx_gemm_int_reference, SR_FACTOR};
use gpt::mx::{backward_gemm, GemmId, GemmKind, LinearKind, MxConfig, MxOperand, Rounding};
use gpt::precision::BackwardMode;
use runtime::cuda::half::bf16;
use runtime::cuda::DeviceBuffer;
use tests::gpu::{gpu, mx_operand, poisoned, DevMxOperand, Rng};

const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 32),
    (17, 45, 96),
    (130, 72, 64),
    (128, 128, 256),
    (200, 136, 320),
];

#[test]
fn int8_path_is_bit_identical_to_the_integer_reference() {
    let g = gpu();
    let mut rng = Rng(41);
    for &(m, n, k) in SHAPES {
        for rounding in [Rounding::Rtn, Rounding::Sr] {
            for accumulate in [false, true] {
                let nan = (m > 100).then_some(3 * k + 40);
                let a = mx_operand(&mut rng, m, k, rounding, nan);
                let b = mx_operand(&mut rng, n, k, rounding, None);
                let sr = rounding == Rounding::Sr;
                let old = rng.vec_bf16(m * n, 2.0);
                let mut want = vec![0.0f32; m * n];
                if accumulate {
                    want = old.iter().map(|v| v.to_f32()).collect();
                }
                mx_gemm_int_reference(&a, &b, &mut want, n, accumulate, sr);
                let c = if accumulate {
                    g.upload(&old).unwrap()
                } else {
                    poisoned::<bf16>(&g, m * n)
                };
                let (da, db) = (DevMxOperand::upload(&g, &a), DevMxOperand::upload(&g, &b));
                let alpha = if sr { SR_FACTOR } else { 1.0 };
                mx::gemm_int8(&g, Ptr::of(&c), da.r(), db.r(), m, n, k, alpha, accumulate).unwrap();
                let got = g.download(&c).unwrap();
                for (i, (x, w)) in got.iter().zip(&want).enumerate() {
                    let w = bf16::from_f32(*w);
                    let same = if w.is_nan() {
                        x.is_nan()
                    } else {
                        x.to_bits() == w.to_bits()
                    };
                    assert!(
                        same,
                        "{m}x{n}x{k} {rounding:?} acc={accumulate}: C[{}, {}] = {x}, want {w}",
                        i / n,
                        i % n
                    );
                }
                if nan.is_some() {
                    assert!(got[3 * n].is_nan(), "a NaN block must poison its row");
                }
            }
        }
    }
}

/// The dequantized operand (code x 2^e, no 4/3) as bf16: what mx_quantize's `deq` output holds.
fn dequantized(op: &MxOperand) -> Vec<bf16> {
    (0..op.rows * op.k)
        .map(|i| {
            let s = op.scales[i / 32];
            bf16::from_f32((e2m1_decode(op.codes[i]) as f64 * e8m0_decode(s)) as f32)
        })
        .collect()
}

#[test]
fn bf16_path_equals_the_exact_formula_up_to_fp32_summation() {
    let g = gpu();
    let mut rng = Rng(43);
    for &(m, n, k) in SHAPES {
        for rounding in [Rounding::Rtn, Rounding::Sr] {
            let a = mx_operand(&mut rng, m, k, rounding, None);
            let b = mx_operand(&mut rng, n, k, rounding, None);
            let sr = rounding == Rounding::Sr;
            let exact = mx_gemm_exact_f64(&a, &b, sr);
            // S = alpha sum_k |a_k b_k|, from the exact formula on |codes|.
            let abs = |op: &MxOperand| MxOperand {
                codes: op.codes.iter().map(|c| c & 7).collect(),
                ..op.clone()
            };
            let s = mx_gemm_exact_f64(&abs(&a), &abs(&b), sr);
            let (da, db) = (
                g.upload(&dequantized(&a)).unwrap(),
                g.upload(&dequantized(&b)).unwrap(),
            );
            let c = poisoned::<bf16>(&g, m * n);
            let alpha = if sr { SR_FACTOR } else { 1.0 };
            gemm::matmul_kmajor(
                &g,
                Ptr::of(&c),
                Ptr::of(&da),
                Ptr::of(&db),
                m,
                n,
                k,
                alpha,
                false,
            )
            .unwrap();
            let got = g.download(&c).unwrap();
            for i in 0..m * n {
                let (x, w) = (got[i].to_f32() as f64, exact[i]);
                let tol = 2f64.powi(-8) * w.abs() + k as f64 * 2f64.powi(-23) * s[i];
                assert!(
                    (x - w).abs() <= tol,
                    "{m}x{n}x{k} {rounding:?}: C[{}, {}] = {x}, exact {w} (tol {tol:.3e})",
                    i / n,
                    i % n
                );
            }
        }
    }
}

/// dgrad and wgrad as the backend runs them: dgrad dX = dY · W quantizes dY rowwise and W
/// colwise (both along the output features); wgrad dW += dY^T · X quantizes dY and X colwise
/// (along the tokens). GPU quantize + int8 GEMM must equal the CPU's backward_gemm bit for bit
/// (before the output's bf16 rounding) for every MXFP4 mode.
#[test]
fn quantize_then_int8_gemm_equals_the_cpu_backward_gemm() {
    let g = gpu();
    let mut rng = Rng(47);
    let (rows, ic, oc) = (128, 96, 64); // tokens, input and output features
    let dy = rng.vec_bf16(rows * oc, 0.05);
    let w = rng.vec_bf16(oc * ic, 0.5);
    let x = rng.vec_bf16(rows * ic, 1.0);
    let f32s = |v: &[bf16]| v.iter().map(|x| x.to_f32()).collect::<Vec<_>>();
    let (dyf, wf, xf) = (f32s(&dy), f32s(&w), f32s(&x));
    let (d_dy, d_w, d_x) = (
        g.upload(&dy).unwrap(),
        g.upload(&w).unwrap(),
        g.upload(&x).unwrap(),
    );
    for mode in [
        BackwardMode::Mxfp4Rtn,
        BackwardMode::Mxfp4Rht,
        BackwardMode::Mxfp4Sr,
        BackwardMode::Mxfp4,
    ] {
        let cfg = MxConfig {
            mode,
            hadamard_block: 32,
            signs: gpt::mx::HadamardSigns::Fresh,
            seed: 0xFEED,
        };
        for kind in [GemmKind::Dgrad, GemmKind::Wgrad] {
            let id = GemmId {
                step: 3,
                micro_step: 1,
                layer: 2,
                linear: LinearKind::MlpUp,
                gemm: kind,
            };
            // The CPU: backward_gemm on the f32 values of the same bf16 tensors.
            let (a, b, m, n, k) = match kind {
                GemmKind::Dgrad => (
                    MatRef::row_major(&dyf, rows, oc),
                    MatRef::row_major(&wf, oc, ic),
                    rows,
                    ic,
                    oc,
                ),
                GemmKind::Wgrad => (
                    MatRef::transposed(&dyf, oc, rows),
                    MatRef::row_major(&xf, rows, ic),
                    oc,
                    ic,
                    rows,
                ),
            };
            let mut want = vec![0.0f32; m * n];
            backward_gemm(&cfg, &id, a, b, &mut want, n, false, None).unwrap();
            // The GPU: quantize both operands, then the int8 GEMM.
            let spec = |layout, role| QuantizeSpec {
                layout,
                rounding: cfg.rounding(),
                seed: cfg.seed,
                sr_stream: id.stream(role),
                sign_stream: id.stream(gpt::mx::StreamRole::RhtSigns),
                hadamard_block: mode.uses_rht().then_some(cfg.hadamard_block),
            };
            use gpt::mx::StreamRole::{SrA, SrB};
            let (src_a, ra, ca, la, src_b, rb, cb, lb) = match kind {
                GemmKind::Dgrad => (
                    &d_dy,
                    rows,
                    oc,
                    Layout::Rowwise,
                    &d_w,
                    oc,
                    ic,
                    Layout::Colwise,
                ),
                GemmKind::Wgrad => (
                    &d_dy,
                    rows,
                    oc,
                    Layout::Colwise,
                    &d_x,
                    rows,
                    ic,
                    Layout::Colwise,
                ),
            };
            let qa = (
                poisoned::<u8>(&g, m * k / 2),
                poisoned::<u8>(&g, m * k / 32),
            );
            let qb = (
                poisoned::<u8>(&g, n * k / 2),
                poisoned::<u8>(&g, n * k / 32),
            );
            for (src, r, c, layout, role, q) in
                [(src_a, ra, ca, la, SrA, &qa), (src_b, rb, cb, lb, SrB, &qb)]
            {
                let out = QuantizeOut {
                    codes: Some(Ptr::of(&q.0)),
                    scales: Some(Ptr::of(&q.1)),
                    ..Default::default()
                };
                mx::quantize(&g, Ptr::of(src), r, c, &spec(layout, role), out).unwrap();
            }
            let c = poisoned::<bf16>(&g, m * n);
            let alpha = if mode.uses_sr() { SR_FACTOR } else { 1.0 };
            mx::gemm_int8(
                &g,
                Ptr::of(&c),
                mx_ref(&qa),
                mx_ref(&qb),
                m,
                n,
                k,
                alpha,
                false,
            )
            .unwrap();
            let got = g.download(&c).unwrap();
            for (i, (x, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    x.to_bits(),
                    bf16::from_f32(*w).to_bits(),
                    "{mode} {kind:?}: C[{}, {}] = {x}, CPU {w}",
                    i / n,
                    i % n
                );
            }
        }
    }
}

fn mx_ref(q: &(DeviceBuffer<u8>, DeviceBuffer<u8>)) -> MxRef<'_> {
    MxRef {
        codes: Ptr::of(&q.0),
        scales: Ptr::of(&q.1),
    }
}

#[test]
fn int8_launcher_rejects_bad_operands() {
    let g = gpu();
    let codes = poisoned::<u8>(&g, 64 * 48);
    let scales = poisoned::<u8>(&g, 64);
    let c = poisoned::<bf16>(&g, 64 * 64);
    let op = MxRef {
        codes: Ptr::of(&codes),
        scales: Ptr::of(&scales),
    };
    let e = mx::gemm_int8(&g, Ptr::of(&c), op, op, 8, 8, 48, 1.0, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("K = 48"), "{e}");
    let e = mx::gemm_int8(&g, Ptr::of(&c), op, op, 64, 64, 64, 1.0, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("a.scales") && e.contains("128"), "{e}");
    let unaligned = MxRef {
        codes: Ptr::of(&codes).slice(4, 1024),
        scales: Ptr::of(&scales),
    };
    let e = mx::gemm_int8(&g, Ptr::of(&c), unaligned, op, 2, 2, 32, 1.0, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("16-byte aligned"), "{e}");
}
