//! Properties of the whole MXFP4 pipeline: the fast GEMM equals the integer path bit for bit and
//! the exact formula to f32 accumulation error; RHT preserves products; SR is unbiased.

use super::gemm::{mx_gemm, mx_gemm_exact_f64, mx_gemm_int_reference, mx_gemm_portable};
use super::*;
use crate::rng::SplitMix64;

fn randn(n: usize, seed: u64, std: f64) -> Vec<f32> {
    let mut r = SplitMix64::new(seed);
    (0..n).map(|_| (r.next_normal() * std) as f32).collect()
}

/// Gradient-like data: normal with a few large outliers and rows of very different scales.
fn gradient_like(rows: usize, k: usize, seed: u64) -> Vec<f32> {
    let mut x = randn(rows * k, seed, 1.0);
    let mut r = SplitMix64::new(seed ^ 0xABCD);
    for (i, v) in x.iter_mut().enumerate() {
        *v *= 2f32.powi((i / k) as i32 % 7 - 3);
        if r.next_f64() < 0.01 {
            *v *= 30.0;
        }
    }
    x
}

fn operand(rows: usize, k: usize, rounding: Rounding, seed: u64) -> MxOperand {
    quantize_rows(&gradient_like(rows, k, seed), rows, k, rounding, seed, 99)
        .unwrap()
        .0
}

#[test]
fn fast_gemm_equals_the_integer_path_bit_for_bit() {
    for &(m, n, k) in &[
        (1, 1, 32),
        (7, 5, 64),
        (6, 16, 96),
        (13, 33, 320),
        (50, 70, 128),
    ] {
        for sr in [false, true] {
            let rounding = if sr { Rounding::Sr } else { Rounding::Rtn };
            let (a, b) = (operand(m, k, rounding, 1), operand(n, k, rounding, 2));
            for accumulate in [false, true] {
                let ldc = n + 2;
                let init = randn(m * ldc, 3, 1.0);
                let start = if accumulate {
                    init.clone()
                } else {
                    vec![f32::NAN; m * ldc]
                };
                let (mut c1, mut c2, mut c3) = (start.clone(), start.clone(), start.clone());
                mx_gemm_int_reference(&a, &b, &mut c1, ldc, accumulate, sr);
                mx_gemm(&a, &b, &mut c2, ldc, accumulate, sr);
                mx_gemm_portable(&a, &b, &mut c3, ldc, accumulate, sr);
                for i in 0..m {
                    for j in 0..n {
                        let idx = i * ldc + j;
                        assert!(c1[idx].is_finite(), "reference produced {}", c1[idx]);
                        assert_eq!(
                            c1[idx].to_bits(),
                            c2[idx].to_bits(),
                            "({m},{n},{k}) sr={sr} acc={accumulate} [{i},{j}] simd"
                        );
                        assert_eq!(
                            c1[idx].to_bits(),
                            c3[idx].to_bits(),
                            "({m},{n},{k}) [{i},{j}] portable"
                        );
                    }
                    for j in n..ldc {
                        assert_eq!(
                            c2[i * ldc + j].to_bits(),
                            start[i * ldc + j].to_bits(),
                            "padding written"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn integer_path_matches_the_exact_formula_to_f32_accumulation_error() {
    let (m, n, k) = (9, 11, 32 * 40);
    for sr in [false, true] {
        let rounding = if sr { Rounding::Sr } else { Rounding::Rtn };
        let (a, b) = (operand(m, k, rounding, 5), operand(n, k, rounding, 6));
        let mut c = vec![0.0f32; m * n];
        mx_gemm(&a, &b, &mut c, n, false, sr);
        let exact = mx_gemm_exact_f64(&a, &b, sr);
        let nblk = (k / 32) as f64;
        for i in 0..m {
            for j in 0..n {
                // Each of the nblk additions rounds once (relative 2^-24 of the running sum,
                // bounded by the sum of |block partials|), plus the final 16/9 multiply.
                let abs_sum: f64 = (0..k / 32)
                    .map(|blk| {
                        (0..32)
                            .map(|kk| {
                                let kk = blk * 32 + kk;
                                let va = quantize::dequantize(
                                    a.codes[i * k + kk],
                                    a.scales[i * (k / 32) + blk],
                                    false,
                                );
                                let vb = quantize::dequantize(
                                    b.codes[j * k + kk],
                                    b.scales[j * (k / 32) + blk],
                                    false,
                                );
                                va * vb
                            })
                            .sum::<f64>()
                            .abs()
                    })
                    .sum::<f64>();
                let bound = (nblk + 2.0)
                    * f32::EPSILON as f64
                    * abs_sum
                    * if sr { 16.0 / 9.0 } else { 1.0 };
                let err = (c[i * n + j] as f64 - exact[i * n + j]).abs();
                assert!(
                    err <= bound,
                    "sr={sr} [{i},{j}]: {} vs {} (bound {bound:e})",
                    c[i * n + j],
                    exact[i * n + j]
                );
            }
        }
    }
}

#[test]
fn nan_blocks_poison_exactly_the_outputs_they_touch() {
    let (m, n, k) = (4, 3, 64);
    let mut xa = gradient_like(m, k, 1);
    xa[2 * k + 40] = f32::NAN; // row 2, block 1
    let (a, ta) = quantize_rows(&xa, m, k, Rounding::Rtn, 0, 0).unwrap();
    assert_eq!(ta.nonfinite_blocks, 1);
    assert_eq!(a.scales[2 * 2 + 1], format::SCALE_NAN);
    let b = operand(n, k, Rounding::Rtn, 2);
    let mut c = vec![0.0f32; m * n];
    mx_gemm(&a, &b, &mut c, n, false, false);
    for i in 0..m {
        for j in 0..n {
            assert_eq!(
                c[i * n + j].is_nan(),
                i == 2,
                "[{i},{j}] = {}",
                c[i * n + j]
            );
        }
    }
}

fn f64_matmul(a: MatRef, b: MatRef) -> Vec<f64> {
    let mut out = vec![0.0; a.rows * b.cols];
    for i in 0..a.rows {
        for j in 0..b.cols {
            out[i * b.cols + j] = (0..a.cols)
                .map(|p| a.at(i, p) as f64 * b.at(p, j) as f64)
                .sum();
        }
    }
    out
}

fn id(step: u32) -> GemmId {
    GemmId {
        step,
        micro_step: 0,
        layer: 3,
        linear: LinearKind::MlpUp,
        gemm: GemmKind::Dgrad,
    }
}

#[test]
fn rht_on_both_operands_preserves_the_product() {
    let (m, n, k, g) = (5, 7, 256, 64);
    let (a, b) = (randn(m * k, 1, 1.0), randn(k * n, 2, 1.0));
    let signs = hadamard::rht_signs(9, id(0).stream(StreamRole::RhtSigns), g);
    let mut ra = a.clone();
    for row in ra.chunks_exact_mut(k) {
        hadamard::rht_row(row, &signs);
    }
    // B is K x N: transform its columns, i.e. rows of B^T.
    let mut bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
    for row in bt.chunks_exact_mut(k) {
        hadamard::rht_row(row, &signs);
    }
    let want = f64_matmul(MatRef::row_major(&a, m, k), MatRef::row_major(&b, k, n));
    let got = f64_matmul(MatRef::row_major(&ra, m, k), MatRef::transposed(&bt, k, n));
    for (w, g) in want.iter().zip(&got) {
        assert!((w - g).abs() < 1e-4, "{w} vs {g}");
    }
}

#[test]
fn backward_gemm_modes_follow_their_definitions() {
    let (m, n, k) = (6, 10, 128);
    let a_data = gradient_like(m, k, 11);
    // B given as a transposed view (as wgrad's dY^T is): stored N x K.
    let bt_data = gradient_like(n, k, 12);
    let (a, b) = (
        MatRef::row_major(&a_data, m, k),
        MatRef::transposed(&bt_data, k, n),
    );
    let exact = f64_matmul(a, b);
    let norm: f64 = exact.iter().map(|v| v * v).sum::<f64>().sqrt();
    let mut errs = Vec::new();
    for mode in BackwardMode::ALL {
        let cfg = MxConfig {
            mode,
            hadamard_block: 32,
            signs: crate::mx::HadamardSigns::Fresh,
            seed: 3,
        };
        let mut c = vec![f32::NAN; m * n];
        let mut tel = MxTelemetry::default();
        backward_gemm(&cfg, &id(1), a, b, &mut c, n, false, Some(&mut tel)).unwrap();
        let err: f64 = c
            .iter()
            .zip(&exact)
            .map(|(x, y)| (*x as f64 - y).powi(2))
            .sum::<f64>()
            .sqrt()
            / norm;
        errs.push((mode, err));
        if mode == BackwardMode::Bf16 {
            assert!(err < 1e-6, "bf16 mode is the f32 GEMM: {err}");
            assert_eq!(tel, MxTelemetry::default());
        } else {
            // 4-bit operands: a few to tens of percent relative error, never garbage.
            assert!(err > 1e-3 && err < 0.5, "{mode}: relative error {err}");
            assert_eq!(tel.elements as usize, (m + n) * k);
        }
        // Manual pipeline for the RTN mode without RHT: quantize both, integer GEMM.
        if mode == BackwardMode::Mxfp4Rtn {
            let (qa, _) = quantize_rows(&a_data, m, k, Rounding::Rtn, 3, 0).unwrap();
            let (qb, _) = quantize_rows(&bt_data, n, k, Rounding::Rtn, 3, 0).unwrap();
            let mut c2 = vec![0.0f32; m * n];
            mx_gemm_int_reference(&qa, &qb, &mut c2, n, false, false);
            assert!(c.iter().zip(&c2).all(|(x, y)| x.to_bits() == y.to_bits()));
        }
    }
    eprintln!("relative errors per mode: {errs:?}");
    // NVFP4's finer blocks (16, E4M3 scales) must beat MXFP4's (32, power-of-two scales).
    let err_of = |m: BackwardMode| errs.iter().find(|(x, _)| *x == m).unwrap().1;
    assert!(err_of(BackwardMode::Nvfp4Rtn) < err_of(BackwardMode::Mxfp4Rtn));
}

#[test]
fn sr_gemm_is_unbiased_over_seeds() {
    let (m, n, k) = (3, 4, 64);
    let a_data = gradient_like(m, k, 21);
    let b_data = gradient_like(k, n, 22); // K x N row-major (dgrad's W)
    let (a, b) = (
        MatRef::row_major(&a_data, m, k),
        MatRef::row_major(&b_data, k, n),
    );
    let exact = f64_matmul(a, b);
    for mode in [BackwardMode::Mxfp4Sr, BackwardMode::Mxfp4] {
        let trials = 3000;
        let (mut sum, mut sumsq) = (vec![0.0f64; m * n], vec![0.0f64; m * n]);
        for seed in 0..trials {
            let cfg = MxConfig {
                mode,
                hadamard_block: 64,
                signs: crate::mx::HadamardSigns::Fresh,
                seed,
            };
            let mut c = vec![0.0f32; m * n];
            backward_gemm(&cfg, &id(seed as u32), a, b, &mut c, n, false, None).unwrap();
            for (i, v) in c.iter().enumerate() {
                sum[i] += *v as f64;
                sumsq[i] += (*v as f64).powi(2);
            }
        }
        for i in 0..m * n {
            let mean = sum[i] / trials as f64;
            let var = sumsq[i] / trials as f64 - mean * mean;
            let se = (var / trials as f64).sqrt();
            // Unbiased: the mean over seeds is within 5 standard errors of A·B.
            assert!(
                (mean - exact[i]).abs() < 5.0 * se + 1e-6,
                "{mode} [{i}]: mean {mean} vs {} (se {se:e})",
                exact[i]
            );
        }
    }
    // RTN, by contrast, is deterministic: every seed gives the same (biased) answer.
    let cfg = MxConfig {
        mode: BackwardMode::Mxfp4Rtn,
        hadamard_block: 64,
        signs: crate::mx::HadamardSigns::Fresh,
        seed: 0,
    };
    let (mut c1, mut c2) = (vec![0.0f32; m * n], vec![0.0f32; m * n]);
    backward_gemm(&cfg, &id(0), a, b, &mut c1, n, false, None).unwrap();
    backward_gemm(
        &MxConfig { seed: 5, ..cfg },
        &id(7),
        a,
        b,
        &mut c2,
        n,
        false,
        None,
    )
    .unwrap();
    assert_eq!(c1, c2);
}

#[test]
fn shapes_that_do_not_divide_are_named() {
    let a = vec![1.0f32; 2 * 48];
    let b = vec![1.0f32; 48 * 2];
    let cfg = MxConfig {
        mode: BackwardMode::Mxfp4Rtn,
        hadamard_block: 64,
        signs: crate::mx::HadamardSigns::Fresh,
        seed: 0,
    };
    let mut c = vec![0.0f32; 4];
    let e = backward_gemm(
        &cfg,
        &id(0),
        MatRef::row_major(&a, 2, 48),
        MatRef::row_major(&b, 48, 2),
        &mut c,
        2,
        false,
        None,
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("48") && e.to_string().contains("32"),
        "{e}"
    );
    let a = vec![1.0f32; 2 * 96];
    let b = vec![1.0f32; 96 * 2];
    let cfg = MxConfig {
        mode: BackwardMode::Mxfp4,
        hadamard_block: 64,
        signs: crate::mx::HadamardSigns::Fresh,
        seed: 0,
    };
    let e = backward_gemm(
        &cfg,
        &id(0),
        MatRef::row_major(&a, 2, 96),
        MatRef::row_major(&b, 96, 2),
        &mut c,
        2,
        false,
        None,
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("96") && e.to_string().contains("64"),
        "{e}"
    );
    assert!(MxConfig {
        mode: BackwardMode::Mxfp4,
        hadamard_block: 48,
        signs: crate::mx::HadamardSigns::Fresh,
        seed: 0
    }
    .validate()
    .is_err());
}

#[test]
fn stream_ids_separate_every_field() {
    let base = GemmId {
        step: 5,
        micro_step: 1,
        layer: 2,
        linear: LinearKind::Qkv,
        gemm: GemmKind::Wgrad,
    };
    let variants = [
        GemmId { step: 6, ..base },
        GemmId {
            micro_step: 2,
            ..base
        },
        GemmId { layer: 3, ..base },
        GemmId {
            linear: LinearKind::MlpDown,
            ..base
        },
        GemmId {
            gemm: GemmKind::Dgrad,
            ..base
        },
    ];
    let s0 = base.stream(StreamRole::SrA);
    assert_eq!(s0, 5u64 << 32 | 1 << 16 | 2 << 5 | 0 << 3 | 1 << 2);
    // Fields do not wrap into each other: micro-steps and layers past 255 keep their own streams.
    let far = [
        GemmId {
            micro_step: 257,
            ..base
        },
        GemmId { layer: 258, ..base },
        GemmId {
            micro_step: 65535,
            layer: 2047,
            ..base
        },
    ];
    for v in far {
        assert_ne!(v.stream(StreamRole::SrA), s0);
    }
    for v in variants {
        assert_ne!(v.stream(StreamRole::SrA), s0);
    }
    assert_ne!(base.stream(StreamRole::SrB), s0);
    assert_ne!(base.stream(StreamRole::RhtSigns), s0);
}

#[test]
fn rht_shrinks_the_error_on_outlier_heavy_data() {
    // One huge outlier per block: without RHT it owns the block's scale and the rest round to 0.
    let (rows, k) = (64, 256);
    let mut x = randn(rows * k, 31, 1.0);
    for r in 0..rows {
        for blk in 0..k / 32 {
            x[r * k + blk * 32 + (r * 7 + blk) % 32] = 200.0;
        }
    }
    let (_, plain) = quantize_rows(&x, rows, k, Rounding::Rtn, 0, 0).unwrap();
    let signs = hadamard::rht_signs(1, 2, 64);
    let mut xr = x.clone();
    for row in xr.chunks_exact_mut(k) {
        hadamard::rht_row(row, &signs);
    }
    let (_, rotated) = quantize_rows(&xr, rows, k, Rounding::Rtn, 0, 0).unwrap();
    let (e0, e1) = (
        plain.summary().unwrap().relative_error,
        rotated.summary().unwrap().relative_error,
    );
    assert!(e1 < e0, "RHT error {e1} should be below plain {e0}");
}

#[test]
fn fixed_hadamard_signs_are_one_vector_for_the_run() {
    let (m, n, k) = (4, 6, 128);
    let a_data = gradient_like(m, k, 31);
    let b_data = gradient_like(k, n, 32);
    let (a, b) = (
        MatRef::row_major(&a_data, m, k),
        MatRef::row_major(&b_data, k, n),
    );
    // RHT + RTN is deterministic given the signs, so equal outputs mean equal signs.
    let run = |signs: HadamardSigns, step: u32| {
        let cfg = MxConfig {
            mode: BackwardMode::Mxfp4Rht,
            hadamard_block: 64,
            signs,
            seed: 8,
        };
        let mut c = vec![f32::NAN; m * n];
        backward_gemm(&cfg, &id(step), a, b, &mut c, n, false, None).unwrap();
        c.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    };
    let bits_differ = |x: &[u32], y: &[u32]| x != y;
    assert_eq!(run(HadamardSigns::Fixed, 1), run(HadamardSigns::Fixed, 900));
    assert!(bits_differ(
        &run(HadamardSigns::Fresh, 1),
        &run(HadamardSigns::Fresh, 900)
    ));
    // The fixed vector is word j of stream 2^64 - 1 (docs/numerics.md section 4), the NVFP4
    // recipe's stream, and no GEMM's own sign stream.
    assert_eq!(FIXED_SIGN_STREAM, u64::MAX);
    assert_eq!(crate::mx::nvfp4::SIGN_STREAM, FIXED_SIGN_STREAM);
    let signs = hadamard::rht_signs(8, u64::MAX, 64);
    let (mut xa, mut xb) = (a_data.clone(), gather_k_major(b, false));
    for row in xa.chunks_exact_mut(k).chain(xb.chunks_exact_mut(k)) {
        hadamard::rht_row(row, &signs);
    }
    let (qa, _) = quantize_rows(&xa, m, k, Rounding::Rtn, 8, 0).unwrap();
    let (qb, _) = quantize_rows(&xb, n, k, Rounding::Rtn, 8, 0).unwrap();
    let mut manual = vec![0.0f32; m * n];
    mx_gemm_int_reference(&qa, &qb, &mut manual, n, false, false);
    let manual: Vec<u32> = manual.iter().map(|v| v.to_bits()).collect();
    assert_eq!(run(HadamardSigns::Fixed, 7), manual);
    assert!("fixed".parse::<HadamardSigns>() == Ok(HadamardSigns::Fixed));
    assert!("Fixed".parse::<HadamardSigns>().is_err());
}

#[test]
fn telemetry_counts_underflow_and_measures_gemm_noise() {
    // One large value and 30 tiny ones per block: amax 1000 gives e = 9 - 2 = 7, so 1e-3 is
    // 7.8e-6 units of 2^e and rounds to zero (RTN), while the exact zero is not an underflow.
    // Signs alternate: a negative underflow keeps its sign bit (code 0x8) and still counts.
    let mut x: Vec<f32> = (0..64)
        .map(|i| if i % 2 == 1 { -1e-3 } else { 1e-3 })
        .collect();
    x[0] = 1000.0;
    x[5] = 0.0;
    x[32] = -1000.0;
    let (_, t) = quantize_rows(&x, 2, 32, Rounding::Rtn, 0, 0).unwrap();
    assert_eq!((t.underflow, t.underflow_counted), (61, 64));
    assert_eq!(t.summary().unwrap().underflow_fraction, Some(61.0 / 64.0));
    let (_, t) = nvfp4::quantize_rows(&x, 2, 32, Rounding::Rtn, 0, 0).unwrap();
    assert!(t.underflow > 0 && t.underflow_counted == 64, "{t:?}");

    // gemm_noise against an f64 product and the GEMM's own output.
    let (m, n, k) = (5, 7, 64);
    let a_data = gradient_like(m, k, 41);
    let b_data = gradient_like(k, n, 42);
    let (a, b) = (
        MatRef::row_major(&a_data, m, k),
        MatRef::row_major(&b_data, k, n),
    );
    let exact = f64_matmul(a, b);
    for mode in [
        BackwardMode::Mxfp4Sr,
        BackwardMode::Mxfp4Rtn,
        BackwardMode::Bf16,
    ] {
        let cfg = MxConfig {
            mode,
            hadamard_block: 64,
            signs: HadamardSigns::Fresh,
            seed: 4,
        };
        let mut q = vec![f32::NAN; m * n];
        backward_gemm(&cfg, &id(2), a, b, &mut q, n, false, None).unwrap();
        let (noise, sum) = gemm_noise(&cfg, &id(2), a, b).unwrap();
        let want_sum: f64 = exact.iter().map(|e| e * e).sum();
        let want_noise: f64 = q
            .iter()
            .zip(&exact)
            .map(|(q, e)| (*q as f64 - e).powi(2))
            .sum();
        assert!((sum - want_sum).abs() <= 1e-5 * want_sum, "{mode}");
        if mode == BackwardMode::Bf16 {
            assert!(
                noise <= 1e-10 * want_sum,
                "{mode}: the f32 GEMM has no quantization noise"
            );
        } else {
            // Same streams as the step's GEMM: the noise of exactly its product.
            assert!(
                (noise - want_noise).abs() <= 1e-4 * want_noise,
                "{mode}: {noise} vs {want_noise}"
            );
            assert!(noise > 1e-4 * sum, "{mode}");
        }
    }
}

#[test]
fn reused_buffers_give_the_results_of_fresh_ones() {
    // backward_gemm and mx_gemm keep their operand buffers per thread between calls. A large
    // GEMM leaves them full of its data; a smaller one with edge panels (rows not a multiple
    // of any tile) must give the bits a fresh thread (empty buffers) gives.
    let run = |m: usize, n: usize, k: usize, mode: BackwardMode| {
        let (a, b) = (gradient_like(m, k, 21), gradient_like(k, n, 22));
        let cfg = MxConfig {
            mode,
            hadamard_block: 32,
            signs: HadamardSigns::Fresh,
            seed: 6,
        };
        let (av, bv) = (MatRef::row_major(&a, m, k), MatRef::row_major(&b, k, n));
        let mut c = vec![f32::NAN; m * n];
        let mut t = MxTelemetry::default();
        backward_gemm(&cfg, &id(4), av, bv, &mut c, n, false, Some(&mut t)).unwrap();
        t.quantize_seconds = 0.0; // wall time, the one field that may differ
        (c, t)
    };
    for mode in [BackwardMode::Mxfp4Rtn, BackwardMode::Mxfp4] {
        let fresh = std::thread::spawn(move || run(7, 13, 64, mode))
            .join()
            .unwrap();
        run(97, 131, 256, mode);
        let reused = run(7, 13, 64, mode);
        assert_eq!(fresh.1, reused.1, "{mode}: telemetry");
        assert!(
            fresh
                .0
                .iter()
                .zip(&reused.0)
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "{mode}: a GEMM after a larger one differs from the same GEMM on fresh buffers"
        );
    }
}

/// Random operand with every code (0..16) and scale bytes in [110, 150] (clear of the
/// underflow/overflow caveat of `mx_gemm`), a NaN block now and then.
fn random_operand(rows: usize, k: usize, r: &mut SplitMix64, nan: bool) -> MxOperand {
    let nblk = k / 32;
    let codes = (0..rows * k).map(|_| (r.next_u64() % 16) as u8).collect();
    let scales = (0..rows * nblk)
        .map(|_| {
            if nan && r.next_u64() % 50 == 0 {
                format::SCALE_NAN
            } else {
                110 + (r.next_u64() % 41) as u8
            }
        })
        .collect();
    MxOperand {
        rows,
        k,
        codes,
        scales,
    }
}

/// Every MX GEMM kernel this CPU runs (the AVX2 integer one, the AVX2 f32-lane one, the
/// portable one) equals the integer reference bit for bit: random codes and scales, shapes off
/// the 6 x 16 tile (1, primes, one past a tile), accumulate or not into poisoned / random C
/// with padding columns that must stay untouched, and the extreme codes (±12 everywhere) that
/// reach the integer kernel's i16 bound of 4608 per lane.
#[test]
fn every_mx_gemm_kernel_equals_the_integer_reference_bit_for_bit() {
    use super::gemm::{kernels_here, mx_gemm_with};
    let mut r = SplitMix64::new(2026);
    let shapes = [
        (1, 1, 32),
        (6, 16, 32),
        (7, 17, 64),
        (5, 13, 96),
        (13, 31, 160),
        (12, 32, 256),
        (47, 97, 416),
        (19, 50, 768),
    ];
    for (si, &(m, n, k)) in shapes.iter().enumerate() {
        for variant in 0..4 {
            let (mut a, mut b) = (
                random_operand(m, k, &mut r, variant == 1),
                random_operand(n, k, &mut r, variant == 1),
            );
            if variant >= 2 {
                // All +12 against all -12 (and the reverse): the largest block dots.
                let (ca, cb) = if variant == 2 { (7, 15) } else { (15, 7) };
                a.codes.fill(ca);
                b.codes.fill(cb);
            }
            let sr = variant % 2 == 1;
            for accumulate in [false, true] {
                let ldc = n + si % 3;
                let start: Vec<f32> = if accumulate {
                    randn(m * ldc, si as u64, 1.0)
                } else {
                    vec![f32::NAN; m * ldc]
                };
                let mut want = start.clone();
                mx_gemm_int_reference(&a, &b, &mut want, ldc, accumulate, sr);
                for kern in kernels_here() {
                    let mut got = start.clone();
                    mx_gemm_with(kern, &a, &b, &mut got, ldc, accumulate, sr);
                    for i in 0..m {
                        for j in 0..ldc {
                            let idx = i * ldc + j;
                            let expect = if j < n { want[idx] } else { start[idx] };
                            assert_eq!(
                                got[idx].to_bits(),
                                expect.to_bits(),
                                "{kern:?} ({m},{n},{k}) variant {variant} acc={accumulate} [{i},{j}]: {} vs {}",
                                got[idx],
                                expect
                            );
                        }
                    }
                }
            }
        }
    }
}

/// `backward_gemm` in every MXFP4 mode (its one fused pass per operand: gather K-major, RHT,
/// quantize a chunk of rows at a time) against the pipeline written out step by step:
/// `gather_k_major`, `rht_row` on every row, `quantize_rows`, `mx_gemm_int_reference`. Output
/// bits, codes-derived counts exactly, the f64 error sums to rounding (their chunk merge order
/// is the pool's). Row-major and transposed views of both operands, rows off every chunk and
/// tile size, fresh and fixed signs, g = 32 and 64.
#[test]
fn fused_operand_pass_equals_the_step_by_step_pipeline() {
    let mut r = SplitMix64::new(9);
    for &(m, n, k, g) in &[(7, 13, 64, 32), (37, 21, 192, 64), (3, 50, 128, 64)] {
        for mode in BackwardMode::ALL.into_iter().filter(|m| m.is_mxfp4()) {
            for (case, signs) in [HadamardSigns::Fresh, HadamardSigns::Fixed]
                .into_iter()
                .enumerate()
            {
                let cfg = MxConfig {
                    mode,
                    hadamard_block: g,
                    signs,
                    seed: r.next_u64(),
                };
                let (ad, bd) = (
                    gradient_like(m, k, r.next_u64()),
                    gradient_like(k, n, r.next_u64()),
                );
                // case 0: A row-major (dgrad's dY), B row-major K x N (W);
                // case 1: A transposed (wgrad's dY^T), B transposed (N x K stored).
                let (a, b) = if case == 0 {
                    (MatRef::row_major(&ad, m, k), MatRef::row_major(&bd, k, n))
                } else {
                    (MatRef::transposed(&ad, m, k), MatRef::transposed(&bd, k, n))
                };
                let gid = id(3 + case as u32);
                let ldc = n + 1;
                let mut c = vec![f32::NAN; m * ldc];
                let mut t = MxTelemetry::default();
                backward_gemm(&cfg, &gid, a, b, &mut c, ldc, false, Some(&mut t)).unwrap();

                let (mut xa, mut xb) = (gather_k_major(a, true), gather_k_major(b, false));
                if mode.uses_rht() {
                    let s = hadamard::rht_signs(cfg.seed, cfg.sign_stream(&gid), g);
                    for row in xa.chunks_exact_mut(k).chain(xb.chunks_exact_mut(k)) {
                        hadamard::rht_row_plain(row, &s);
                    }
                }
                let rounding = cfg.rounding();
                let (qa, ta) =
                    quantize_rows(&xa, m, k, rounding, cfg.seed, gid.stream(StreamRole::SrA))
                        .unwrap();
                let (qb, tb) =
                    quantize_rows(&xb, n, k, rounding, cfg.seed, gid.stream(StreamRole::SrB))
                        .unwrap();
                let mut want = vec![f32::NAN; m * ldc];
                mx_gemm_int_reference(&qa, &qb, &mut want, ldc, false, rounding == Rounding::Sr);
                for (i, (x, y)) in c.iter().zip(&want).enumerate() {
                    assert!(
                        x.to_bits() == y.to_bits() || (i % ldc == n && x.is_nan() && y.is_nan()),
                        "{mode} ({m},{n},{k}) case {case} [{i}]: {x} vs {y}"
                    );
                }
                let mut tw = ta.clone();
                tw.merge(&tb);
                assert_eq!(
                    (
                        t.elements,
                        t.clipped,
                        t.nonfinite_blocks,
                        t.underflow,
                        t.underflow_counted
                    ),
                    (
                        tw.elements,
                        tw.clipped,
                        tw.nonfinite_blocks,
                        tw.underflow,
                        tw.underflow_counted
                    ),
                    "{mode} case {case}: counts"
                );
                for (x, y) in [(t.sq_err, tw.sq_err), (t.sq_sum, tw.sq_sum)] {
                    assert!(
                        (x - y).abs() <= 1e-12 * y.abs(),
                        "{mode} case {case}: {x} vs {y}"
                    );
                }
            }
        }
    }
}

/// The K-major gather (its AVX2 8 x 8-tile path for views whose K-major rows are contiguous,
/// and the scalar paths) against `MatRef::at`, element by element, on transposed, row-major and
/// padded (column stride past the row count) views, sizes off the 8 x 8 tile, into a buffer
/// poisoned by a larger earlier gather.
#[test]
fn k_major_gather_equals_the_view_element_by_element() {
    let mut out = Vec::new();
    gather_k_major_into(
        MatRef::row_major(&randn(300 * 200, 1, 1.0), 300, 200),
        true,
        &mut out,
    );
    out.iter_mut().for_each(|v| *v = f32::NAN);
    for &(rows, k, pad) in &[
        (1, 32, 0),
        (7, 64, 3),
        (8, 32, 0),
        (37, 96, 1),
        (130, 64, 5),
        (9, 40, 0),
    ] {
        let ld = rows + pad;
        let data = randn(ld * k, (rows * k) as u64, 1.0);
        let views = [
            // K along columns, rows contiguous: A = dY^T (row stride 1, column stride >= rows).
            (
                MatRef {
                    data: &data,
                    rows,
                    cols: k,
                    row_stride: 1,
                    col_stride: ld,
                },
                true,
            ),
            // K along rows of a K x rows row-major matrix: B = W or X (K-major rows strided).
            (
                MatRef {
                    data: &data,
                    rows: k,
                    cols: rows,
                    row_stride: ld,
                    col_stride: 1,
                },
                false,
            ),
            // K along columns, contiguous rows of K: the copy path.
            (MatRef::row_major(&data[..rows * k], rows, k), true),
        ];
        for (vi, (v, k_along_cols)) in views.into_iter().enumerate() {
            gather_k_major_into(v, k_along_cols, &mut out);
            assert_eq!(out.len(), rows * k);
            for r in 0..rows {
                for kk in 0..k {
                    let want = if k_along_cols {
                        v.at(r, kk)
                    } else {
                        v.at(kk, r)
                    };
                    assert_eq!(
                        out[r * k + kk].to_bits(),
                        want.to_bits(),
                        "view {vi} ({rows}x{k}, pad {pad}) [{r},{kk}]"
                    );
                }
            }
        }
    }
}
