//! NVFP4 (docs/numerics.md section 10): E2M1 elements in blocks of 16 along K, an E4M3 scale
//! per block and an FP32 scale per tensor; the quantizer, the reference GEMM, and the backward
//! GEMM of the `nvfp4` recipes. Every rule that decides a bit is written out where it is
//! implemented; the GPU quantizer must reproduce codes and scales bit for bit.

use super::format::E2M1_VALUES;
use super::fp8::{e4m3_from_f32, e4m3_to_f32, E4M3_NAN};
use super::philox::{philox_block, uniform24};
use super::quantize::{rtn_code, sr_code, Rounding};
use super::{hadamard, MxTelemetry};
use crate::cpu::gemm::{sgemm, MatRef};
use runtime::cpu::parallel_rows_mut;

/// Elements per NVFP4 block.
pub const BLOCK: usize = 16;
/// The Hadamard block of the recipe's wgrad transform.
pub const RHT_BLOCK: usize = 16;
/// The stream of the recipe's one fixed sign vector (word j: the sign of position j); the same
/// stream as the MXFP4 modes' `--hadamard-signs fixed`.
pub const SIGN_STREAM: u64 = super::FIXED_SIGN_STREAM;

/// A quantized K-major operand: `rows` rows of K codes (one per byte), one E4M3 scale byte per
/// 16-block, and the tensor scale.
#[derive(Clone, Debug, PartialEq)]
pub struct Nvfp4Operand {
    pub rows: usize,
    pub k: usize,
    pub codes: Vec<u8>,
    pub scales: Vec<u8>,
    pub s_enc: f32,
}

/// The tensor scale: (6 * 448) / amax over the finite values; 1 for amax 0; the largest f32
/// where the quotient is infinite.
pub fn tensor_scale(x: &[f32]) -> f32 {
    let amax = super::fp8::amax(x);
    if amax == 0.0 {
        return 1.0;
    }
    let s = 2688.0 / amax;
    if s.is_finite() {
        s
    } else {
        f32::MAX
    }
}

/// What one block's quantization produced, for telemetry.
#[derive(Clone, Copy, Debug, Default)]
pub struct BlockStats {
    pub nonfinite: bool,
    pub clipped: u32,
    /// Sum of (dequantized - x)^2 and of x^2 over the block (f64).
    pub sq_err: f64,
    pub sq_sum: f64,
}

/// Quantizes one block of 16 under tensor scale `s_enc`; element i uses word `first_index + i`
/// of `stream` under SR. Writes 16 codes and returns the E4M3 scale byte.
pub fn quantize_block(
    x: &[f32],
    s_enc: f32,
    rounding: Rounding,
    seed: u64,
    stream: u64,
    first_index: u64,
    codes: &mut [u8],
) -> (u8, BlockStats) {
    assert_eq!((x.len(), codes.len()), (BLOCK, BLOCK));
    let mut st = BlockStats::default();
    if x.iter().any(|v| !v.is_finite()) {
        codes.fill(0);
        st.nonfinite = true;
        return (E4M3_NAN, st);
    }
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let scale_byte = e4m3_from_f32((amax / 6.0) * s_enc);
    let s_b = e4m3_to_f32(scale_byte);
    if s_b == 0.0 {
        codes.fill(0);
        st.sq_sum = x.iter().map(|&v| (v as f64).powi(2)).sum();
        st.sq_err = st.sq_sum;
        return (scale_byte, st);
    }
    let r = s_enc / s_b;
    let mut words = [0u32; BLOCK];
    if rounding == Rounding::Sr {
        debug_assert!(first_index % 4 == 0);
        for q in 0..BLOCK / 4 {
            let w = philox_block(seed, stream, (first_index >> 2) + q as u64);
            words[q * 4..q * 4 + 4].copy_from_slice(&w);
        }
    }
    let deq = s_b as f64 / s_enc as f64;
    for i in 0..BLOCK {
        let a = (x[i] * r).abs();
        let clipped = a > 6.0;
        st.clipped += clipped as u32;
        let mag = match rounding {
            Rounding::Rtn => rtn_code(a),
            Rounding::Sr if a >= 6.0 => 7,
            Rounding::Sr => sr_code(a, uniform24(words[i])),
        };
        codes[i] = (((x[i].to_bits() >> 31) as u8) << 3) | mag;
        let d = E2M1_VALUES[mag as usize] as f64 * deq - (x[i] as f64).abs();
        st.sq_err += d * d;
        st.sq_sum += (x[i] as f64).powi(2);
    }
    (scale_byte, st)
}

/// Quantizes `rows` K-major rows of `x` (rows x k, k a multiple of 16); element (r, k) uses word
/// r * K + k of `stream` under SR.
pub fn quantize_rows(
    x: &[f32],
    rows: usize,
    k: usize,
    rounding: Rounding,
    seed: u64,
    stream: u64,
) -> Result<(Nvfp4Operand, MxTelemetry), super::MxError> {
    if k % BLOCK != 0 {
        return Err(super::MxError::KNotMultiple {
            k,
            of: BLOCK,
            what: "NVFP4 block",
        });
    }
    if x.len() != rows * k {
        return Err(super::MxError::Shape(format!(
            "nvfp4 quantize_rows: {} values for {rows} x {k}",
            x.len()
        )));
    }
    let s_enc = tensor_scale(x);
    let nblk = k / BLOCK;
    let mut codes = vec![0u8; rows * k];
    let mut scales = vec![0u8; rows * nblk];
    let mut tel = MxTelemetry::default();
    for r in 0..rows {
        for j in 0..nblk {
            let at = r * k + j * BLOCK;
            let (s, st) = quantize_block(
                &x[at..at + BLOCK],
                s_enc,
                rounding,
                seed,
                stream,
                at as u64,
                &mut codes[at..at + BLOCK],
            );
            scales[r * nblk + j] = s;
            tel.elements += BLOCK as u64;
            tel.clipped += st.clipped as u64;
            tel.nonfinite_blocks += st.nonfinite as u64;
            if !st.nonfinite {
                tel.sq_err += st.sq_err;
                tel.sq_sum += st.sq_sum;
                tel.add_underflow(&x[at..at + BLOCK], &codes[at..at + BLOCK]);
            }
        }
    }
    Ok((
        Nvfp4Operand {
            rows,
            k,
            codes,
            scales,
            s_enc,
        },
        tel,
    ))
}

impl Nvfp4Operand {
    /// Each element times its block scale, q * s_b, as f32 (exact: a 2-bit significand times a
    /// 4-bit one), NaN for a non-finite block: the operand the fast GEMM multiplies.
    pub fn block_scaled(&self) -> Vec<f32> {
        let nblk = self.k / BLOCK;
        (0..self.rows * self.k)
            .map(|i| {
                let s = self.scales[(i / self.k) * nblk + (i % self.k) / BLOCK];
                super::format::e2m1_decode(self.codes[i]) * e4m3_to_f32(s)
            })
            .collect()
    }

    /// Dequantized values q * s_b / s_enc (f64, NaN for a non-finite block).
    pub fn dequantize(&self) -> Vec<f64> {
        self.block_scaled()
            .into_iter()
            .map(|v| v as f64 / self.s_enc as f64)
            .collect()
    }
}

/// The reference NVFP4 GEMM (the contract's order): C[m, n] = (sum over blocks j in order of
/// (sA_j sB_j) * dot_j, f32) / (encA * encB); `accumulate` adds to C.
pub fn nvfp4_gemm_reference(
    a: &Nvfp4Operand,
    b: &Nvfp4Operand,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    assert_eq!(a.k, b.k);
    let nblk = a.k / BLOCK;
    let enc = a.s_enc * b.s_enc;
    for m in 0..a.rows {
        for n in 0..b.rows {
            let mut acc = 0.0f32;
            for j in 0..nblk {
                let mut dot = 0.0f32; // multiples of 1/4 below 577: exact
                for kk in j * BLOCK..(j + 1) * BLOCK {
                    dot += super::format::e2m1_decode(a.codes[m * a.k + kk])
                        * super::format::e2m1_decode(b.codes[n * b.k + kk]);
                }
                let s = e4m3_to_f32(a.scales[m * nblk + j]) * e4m3_to_f32(b.scales[n * nblk + j]);
                acc += s * dot;
            }
            let v = acc / enc;
            let at = &mut c[m * ldc + n];
            *at = if accumulate { *at + v } else { v };
        }
    }
}

/// The exact value of the formula (f64), for tests.
pub fn nvfp4_gemm_exact_f64(a: &Nvfp4Operand, b: &Nvfp4Operand) -> Vec<f64> {
    let (da, db) = (a.dequantize(), b.dequantize());
    let mut out = vec![0.0f64; a.rows * b.rows];
    for m in 0..a.rows {
        for n in 0..b.rows {
            out[m * b.rows + n] = (0..a.k).map(|k| da[m * a.k + k] * db[n * b.k + k]).sum();
        }
    }
    out
}

/// The fast GEMM the CPU backend runs: sgemm over the block-scaled operands (every product
/// exact), then one division by encA * encB; equal to the reference up to FP32 summation order.
pub fn nvfp4_gemm(a: &Nvfp4Operand, b: &Nvfp4Operand, c: &mut [f32], ldc: usize, accumulate: bool) {
    assert_eq!(a.k, b.k);
    let (sa, sb) = (a.block_scaled(), b.block_scaled());
    let (m, n, k) = (a.rows, b.rows, a.k);
    let mut tmp = vec![0.0f32; m * n];
    sgemm(
        MatRef::row_major(&sa, m, k),
        MatRef::transposed(&sb, k, n),
        &mut tmp,
        n,
        false,
    );
    let enc = a.s_enc * b.s_enc;
    for r in 0..m {
        for col in 0..n {
            let v = tmp[r * n + col] / enc;
            let at = &mut c[r * ldc + col];
            *at = if accumulate { *at + v } else { v };
        }
    }
}

/// The recipe's rounding and transform for one backward GEMM: A (the gradient dY or dY^T) is
/// rounded stochastically in `nvfp4`, B (W or X) to nearest; wgrad's operands get the 16-point
/// RHT with the run's one fixed sign vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nvfp4Recipe {
    pub sr_gradient: bool,
    pub rht_wgrad: bool,
}

impl Nvfp4Recipe {
    /// `nvfp4`: SR on the gradient operand and the wgrad RHT; `nvfp4-rtn`: neither.
    pub fn of(mode: crate::precision::BackwardMode) -> Nvfp4Recipe {
        let full = mode == crate::precision::BackwardMode::Nvfp4;
        Nvfp4Recipe {
            sr_gradient: full,
            rht_wgrad: full,
        }
    }
}

/// C (M x N, ldc) (+)= A B in NVFP4 as the recipe says: A (M x K) and B (K x N) strided views,
/// gathered K-major; `wgrad` selects the transform; SR words from `stream_a`.
#[allow(clippy::too_many_arguments)]
pub fn backward_gemm(
    recipe: Nvfp4Recipe,
    wgrad: bool,
    seed: u64,
    stream_a: u64,
    a: MatRef,
    b: MatRef,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    telemetry: Option<&mut MxTelemetry>,
) -> Result<(), super::MxError> {
    let k = a.cols;
    if b.rows != k {
        return Err(super::MxError::Shape(format!(
            "nvfp4 backward_gemm: A is {}x{}, B is {}x{}",
            a.rows, a.cols, b.rows, b.cols
        )));
    }
    let rht = wgrad && recipe.rht_wgrad;
    if k % BLOCK != 0 || (rht && k % RHT_BLOCK != 0) {
        return Err(super::MxError::KNotMultiple {
            k,
            of: BLOCK,
            what: "NVFP4 block",
        });
    }
    let started = std::time::Instant::now();
    let mut xa = super::gather_k_major(a, true);
    let mut xb = super::gather_k_major(b, false);
    if rht {
        let signs = hadamard::rht_signs(seed, SIGN_STREAM, RHT_BLOCK);
        for x in [&mut xa, &mut xb] {
            parallel_rows_mut(x, k, 8, |_, chunk| {
                for row in chunk.chunks_exact_mut(k) {
                    hadamard::rht_row(row, &signs);
                }
            });
        }
    }
    let ra = if recipe.sr_gradient {
        Rounding::Sr
    } else {
        Rounding::Rtn
    };
    let (qa, ta) = quantize_rows(&xa, a.rows, k, ra, seed, stream_a)?;
    let (qb, tb) = quantize_rows(&xb, b.cols, k, Rounding::Rtn, seed, 0)?;
    let quantize_seconds = started.elapsed().as_secs_f64();
    nvfp4_gemm(&qa, &qb, c, ldc, accumulate);
    if let Some(t) = telemetry {
        t.merge(&ta);
        t.merge(&tb);
        t.quantize_seconds += quantize_seconds;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    fn block(probe: &[f32], fill: f32) -> Vec<f32> {
        let mut b = vec![fill; BLOCK];
        b[..probe.len()].copy_from_slice(probe);
        b
    }

    fn q(x: &[f32], s_enc: f32) -> (u8, Vec<u8>) {
        let mut c = vec![0u8; BLOCK];
        let (s, _) = quantize_block(x, s_enc, Rounding::Rtn, 0, 0, 0, &mut c);
        (s, c)
    }

    #[test]
    fn hand_computed_blocks() {
        // A tensor whose amax is 6: s_enc = 2688 / 6 = 448. A block with amax 6: t = (6 / 6) 448
        // = 448 -> scale byte 0x7E (448), r = 1: the values are their own E2M1 codes.
        let x = block(&[6.0, -3.0, 0.75, 1.25, 5.0, 0.25, 2.6], 0.0);
        let (s, c) = q(&x, 448.0);
        assert_eq!(s, 0x7E);
        // 0.75 -> 1.0 (tie to even code 2), 1.25 -> 1.0 (code 2), 5 -> 4 (code 6), 0.25 -> 0,
        // 2.6 -> 3 (code 5).
        assert_eq!(&c[..7], &[7, 5 | 8, 2, 2, 6, 0, 5]);
        // A block with amax 3 in the same tensor: t = 0.5 * 448 = 224 = 0x76 (1.75 * 2^7), r = 2.
        let (s, c) = q(&block(&[3.0, 1.0, -0.5], 0.0), 448.0);
        assert_eq!((s, e4m3_to_f32(s)), (0x76, 224.0));
        assert_eq!(&c[..3], &[7, 4, 2 | 8]);
        // Scale rounding can push |y| above 6: amax_b = 5.9 in a tensor of amax 6.
        // t = 5.9/6 * 448 = 440.53 -> E4M3 rounds to 448 (ties/nearest), r = 1: 5.9 -> 6.
        let (s, c) = q(&block(&[5.9], 1.0), 448.0);
        assert_eq!((s, c[0]), (0x7E, 7));
        // A zero block and a block whose scale underflows: codes 0.
        assert_eq!(q(&[0.0; BLOCK], 448.0), (0, vec![0; BLOCK]));
        let (s, c) = q(&block(&[1e-12], 0.0), 1.0);
        assert_eq!((s, c[0]), (0, 0));
        // Non-finite blocks: the NaN scale byte.
        for bad in [f32::NAN, f32::INFINITY] {
            assert_eq!(q(&block(&[bad], 1.0), 448.0).0, E4M3_NAN);
        }
        assert_eq!(tensor_scale(&[0.0, 0.0]), 1.0);
        assert_eq!(tensor_scale(&[-6.0, f32::NAN, 2.0]), 448.0);
    }

    fn gradient_like(n: usize, k: usize, seed: u64) -> Vec<f32> {
        let mut r = SplitMix64::new(seed);
        (0..n)
            .map(|i| {
                let v = r.next_normal() as f32 * 2f32.powi((i / k % 9) as i32 * 3 - 12);
                if r.next_f64() < 0.01 {
                    v * 40.0
                } else {
                    v
                }
            })
            .collect()
    }

    #[test]
    fn every_code_is_the_nearest_grid_point_of_an_f64_reference() {
        // RTN: |x| r lands on its nearest E2M1 value, ties to the even code, computed in f64
        // from the definition (amax, E4M3 rounding of the scale, the ratio).
        let (rows, k) = (24, 64);
        let x = gradient_like(rows * k, k, 5);
        let (op, _) = quantize_rows(&x, rows, k, Rounding::Rtn, 0, 0).unwrap();
        let grid = [0.0f64, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];
        for (i, &v) in x.iter().enumerate() {
            let s_b = e4m3_to_f32(op.scales[i / BLOCK]) as f64;
            if s_b == 0.0 {
                // The block's scale underflowed E4M3 (rows 2^20 below the tensor's amax: one
                // tensor scale cannot span them): all codes 0.
                assert_eq!(op.codes[i], 0);
                continue;
            }
            let y = ((v * (op.s_enc / s_b as f32)).abs()) as f64;
            let mut best = 0usize;
            for (c, &g) in grid.iter().enumerate() {
                let (d, bd) = ((g - y).abs(), (grid[best] - y).abs());
                if d < bd || (d == bd && c % 2 == 0 && best % 2 == 1) {
                    best = c;
                }
            }
            assert_eq!(op.codes[i] & 7, best as u8, "element {i}: y = {y}");
            assert_eq!(op.codes[i] >> 3, (v < 0.0) as u8);
        }
    }

    #[test]
    fn sr_is_unbiased() {
        // x = 1.3 in a block of amax 6 (tensor amax 6): r = 1, y = 1.3 between 1 and 1.5.
        let x = block(&[1.3; 15], 6.0);
        let (mut sum, mut n) = (0.0f64, 0u64);
        for seed in 0..3000u64 {
            let mut c = vec![0u8; BLOCK];
            let (s, _) = quantize_block(&x, 448.0, Rounding::Sr, seed, 9, 0, &mut c);
            for &code in &c[..15] {
                assert!(code == 2 || code == 3);
                sum +=
                    super::super::format::e2m1_decode(code) as f64 * e4m3_to_f32(s) as f64 / 448.0;
                n += 1;
            }
        }
        // per-sample std 0.5 sqrt(0.6 * 0.4) = 0.245; 45,000 samples: std error 1.2e-3.
        assert!(
            (sum / n as f64 - 1.3).abs() < 6e-3,
            "mean {}",
            sum / n as f64
        );
    }

    #[test]
    fn gemms_equal_the_exact_formula() {
        for &(m, n, k) in &[(1, 1, 16), (7, 5, 48), (13, 17, 160)] {
            let a = quantize_rows(&gradient_like(m * k, k, 1), m, k, Rounding::Sr, 3, 4)
                .unwrap()
                .0;
            let b = quantize_rows(&gradient_like(n * k, k, 2), n, k, Rounding::Rtn, 0, 0)
                .unwrap()
                .0;
            let exact = nvfp4_gemm_exact_f64(&a, &b);
            let abs_a = Nvfp4Operand {
                codes: a.codes.iter().map(|c| c & 7).collect(),
                ..a.clone()
            };
            let abs_b = Nvfp4Operand {
                codes: b.codes.iter().map(|c| c & 7).collect(),
                ..b.clone()
            };
            let s = nvfp4_gemm_exact_f64(&abs_a, &abs_b);
            let (mut reference, mut fast) = (vec![0.0f32; m * n], vec![0.0f32; m * n]);
            nvfp4_gemm_reference(&a, &b, &mut reference, n, false);
            nvfp4_gemm(&a, &b, &mut fast, n, false);
            for i in 0..m * n {
                // FP32 summation over K terms plus the final division: K 2^-23 S + 2^-23 |C|.
                let tol = (k as f64 + 2.0) * 2f64.powi(-23) * s[i];
                assert!(
                    (reference[i] as f64 - exact[i]).abs() <= tol,
                    "reference {m}x{n}x{k}[{i}]"
                );
                assert!(
                    (fast[i] as f64 - exact[i]).abs() <= tol,
                    "fast {m}x{n}x{k}[{i}]"
                );
            }
        }
    }

    #[test]
    fn wgrad_transform_preserves_the_product_and_dgrad_has_none() {
        // With RTN everywhere, the RHT changes the quantization noise but not the product's
        // expectation; check the plumbing: a wgrad GEMM with the transform equals the one
        // computed by hand on transformed operands.
        let (m, n, k) = (8, 6, 32);
        let a = gradient_like(m * k, k, 8);
        let b = gradient_like(k * n, n, 9);
        let recipe = Nvfp4Recipe {
            sr_gradient: false,
            rht_wgrad: true,
        };
        let mut got = vec![0.0f32; m * n];
        backward_gemm(
            recipe,
            true,
            77,
            0,
            MatRef::row_major(&a, m, k),
            MatRef::row_major(&b, k, n),
            &mut got,
            n,
            false,
            None,
        )
        .unwrap();
        let signs = hadamard::rht_signs(77, SIGN_STREAM, RHT_BLOCK);
        let mut ta = a.clone();
        for row in ta.chunks_exact_mut(k) {
            hadamard::rht_row(row, &signs);
        }
        let mut tb: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        for row in tb.chunks_exact_mut(k) {
            hadamard::rht_row(row, &signs);
        }
        let qa = quantize_rows(&ta, m, k, Rounding::Rtn, 77, 0).unwrap().0;
        let qb = quantize_rows(&tb, n, k, Rounding::Rtn, 77, 0).unwrap().0;
        let mut want = vec![0.0f32; m * n];
        nvfp4_gemm(&qa, &qb, &mut want, n, false);
        assert_eq!(got, want);
        let mut dgrad = vec![0.0f32; m * n];
        backward_gemm(
            recipe,
            false,
            77,
            0,
            MatRef::row_major(&a, m, k),
            MatRef::row_major(&b, k, n),
            &mut dgrad,
            n,
            false,
            None,
        )
        .unwrap();
        assert_ne!(dgrad, got, "dgrad quantizes the untransformed operands");
    }
}
