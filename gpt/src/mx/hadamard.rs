//! The random Hadamard transform along K (MXFP4.md section 4).
//!
//! For every g-long segment x of a row along K: RHT(x) = H_g (s ⊙ x), with H_g the Sylvester
//! Hadamard matrix scaled by 1/sqrt(g) (symmetric and orthonormal) and s a vector of random
//! signs shared by both operands of the GEMM, so (A S H)(H S B) = A B in exact arithmetic. It
//! spreads an outlier's energy over g entries, shrinking the block amax relative to the typical
//! entry, which is what lets 4-bit values with one shared exponent represent gradients.
//!
//! The exact f32 computation (a GPU kernel must match it to reproduce the codes):
//! multiply by s (exact), then butterflies with h = 1, 2, 4, ..., g/2 in that order:
//! (x[j], x[j+h]) <- (x[j] + x[j+h], x[j] - x[j+h]) for every j with j & h == 0; then multiply
//! every entry by the f32 constant `(1/sqrt(g) as f64) as f32`.
//! Signs: s_j = -1 iff bit 31 of random word j of the GEMM's RhtSigns stream.

use super::philox::random_word;

/// Hadamard block sizes the recipe supports (the paper ablates 32..256; 64 is its default).
pub const HADAMARD_BLOCKS: [usize; 5] = [16, 32, 64, 128, 256];

/// The g random signs (+1.0 / -1.0) for one GEMM.
pub fn rht_signs(seed: u64, stream: u64, g: usize) -> Vec<f32> {
    (0..g as u64)
        .map(|j| {
            if random_word(seed, stream, j) >> 31 == 1 {
                -1.0
            } else {
                1.0
            }
        })
        .collect()
}

/// The normalization 1/sqrt(g) as the f32 every backend uses.
pub fn rht_scale(g: usize) -> f32 {
    (1.0 / (g as f64).sqrt()) as f32
}

/// In-place fast Walsh-Hadamard transform of one segment (unnormalized), h ascending.
#[inline(always)]
pub fn fwht(x: &mut [f32]) {
    let g = x.len();
    debug_assert!(g.is_power_of_two());
    let mut h = 1;
    while h < g {
        for base in (0..g).step_by(2 * h) {
            for j in base..base + h {
                let (a, b) = (x[j], x[j + h]);
                x[j] = a + b;
                x[j + h] = a - b;
            }
        }
        h *= 2;
    }
}

/// Applies the RHT to every g-segment of `row` (whose length is a multiple of g). On AVX2 a
/// segment runs in ymm registers (`rht_segment_avx2`), else the plain code: the same f32
/// operations per element in the same order, so the same bits (tested against
/// `rht_row_plain`).
pub fn rht_row(row: &mut [f32], signs: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::simd::avx2_fma() {
        let g = signs.len();
        assert!(
            row.len().is_multiple_of(g),
            "rht_row: row of {} is not a multiple of g = {g}",
            row.len()
        );
        let scale = rht_scale(g);
        for seg in row.chunks_exact_mut(g) {
            // SAFETY: the CPU has AVX2 (checked above); lengths are g (asserted inside).
            unsafe {
                match g {
                    16 => rht_segment_avx2::<2>(seg, signs, scale),
                    32 => rht_segment_avx2::<4>(seg, signs, scale),
                    64 => rht_segment_avx2::<8>(seg, signs, scale),
                    128 => rht_segment_avx2::<16>(seg, signs, scale),
                    256 => rht_segment_avx2::<32>(seg, signs, scale),
                    _ => rht_row_plain(seg, signs),
                }
            }
        }
        return;
    }
    rht_row_plain(row, signs)
}

/// One g = 8·N segment in N ymm registers: signs, the butterflies h = 1, 2, 4 inside each
/// register (a lane permute brings x[j ^ h] next to x[j]; the lanes with bit h clear take
/// x[j] + x[j+h], the others x[j] - x[j+h], both with the plain code's operand order), the
/// stages h >= 8 between registers, then the scale. Cost per element: ~2 multiplies and
/// log2(g) add/sub, all in registers up to g = 64 (N = 8 of the 16 ymm).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rht_segment_avx2<const N: usize>(seg: &mut [f32], signs: &[f32], scale: f32) {
    use std::arch::x86_64::*;
    assert!(seg.len() == 8 * N && signs.len() == 8 * N);
    let (p, sp) = (seg.as_mut_ptr(), signs.as_ptr());
    let mut v = [_mm256_setzero_ps(); N];
    for (i, r) in v.iter_mut().enumerate() {
        let x = _mm256_mul_ps(
            _mm256_loadu_ps(p.add(8 * i)),
            _mm256_loadu_ps(sp.add(8 * i)),
        );
        // h = 1: partner = the neighbour in the pair; odd lanes take partner - self.
        let w = _mm256_permute_ps(x, 0b10_11_00_01);
        let x = _mm256_blend_ps(_mm256_add_ps(x, w), _mm256_sub_ps(w, x), 0b1010_1010);
        // h = 2: partner two lanes away (within a 128-bit half).
        let w = _mm256_permute_ps(x, 0b01_00_11_10);
        let x = _mm256_blend_ps(_mm256_add_ps(x, w), _mm256_sub_ps(w, x), 0b1100_1100);
        // h = 4: partner in the other half.
        let w = _mm256_permute2f128_ps(x, x, 0x01);
        *r = _mm256_blend_ps(_mm256_add_ps(x, w), _mm256_sub_ps(w, x), 0b1111_0000);
    }
    let mut h = 1;
    while h < N {
        for base in (0..N).step_by(2 * h) {
            for j in base..base + h {
                let (a, b) = (v[j], v[j + h]);
                v[j] = _mm256_add_ps(a, b);
                v[j + h] = _mm256_sub_ps(a, b);
            }
        }
        h *= 2;
    }
    let s = _mm256_set1_ps(scale);
    for (i, r) in v.iter().enumerate() {
        _mm256_storeu_ps(p.add(8 * i), _mm256_mul_ps(*r, s));
    }
}

/// The plain RHT of one row (the reference; `rht_row` is this compiled for AVX2 where it can).
#[inline(always)]
pub fn rht_row_plain(row: &mut [f32], signs: &[f32]) {
    let g = signs.len();
    let scale = rht_scale(g);
    for seg in row.chunks_exact_mut(g) {
        for (v, s) in seg.iter_mut().zip(signs) {
            *v *= s;
        }
        fwht(seg);
        for v in seg.iter_mut() {
            *v *= scale;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    fn randv(n: usize, seed: u64) -> Vec<f32> {
        let mut r = SplitMix64::new(seed);
        (0..n).map(|_| r.next_normal() as f32).collect()
    }

    /// The dispatched RHT (in ymm registers on AVX2) equals the plain one bit for bit, for
    /// every g, on normal data with zeros of both signs, subnormals, huge values, infinities
    /// and NaNs mixed in (a wrong lane or operand shows up in a value, the sign of a zero or
    /// the rounding of a sum).
    #[test]
    fn dispatched_rht_is_bit_identical_to_the_plain_one() {
        let mut r = SplitMix64::new(77);
        for &g in &HADAMARD_BLOCKS {
            for trial in 0..20u64 {
                let signs = rht_signs(5, 6 + trial, g);
                let mut x = randv(g * 7, g as u64 + 1000 * trial);
                for v in x.iter_mut() {
                    match r.next_u64() % 64 {
                        0 => *v = 0.0,
                        1 => *v = -0.0,
                        2 => *v = f32::from_bits(1 + (r.next_u64() % 1000) as u32),
                        3 => *v *= 1e37,
                        4 if trial % 5 == 0 => *v = f32::INFINITY,
                        5 if trial % 7 == 0 => *v = f32::NAN,
                        _ => {}
                    }
                }
                let (mut a, mut b) = (x.clone(), x.clone());
                rht_row(&mut a, &signs);
                // The plain body called directly: compiled for the baseline target here.
                rht_row_plain(&mut b, &signs);
                // NaN payloads are not pinned (Rust lets the compiler swap the operands of an
                // add), every other bit is.
                for (i, (p, q)) in a.iter().zip(&b).enumerate() {
                    assert!(
                        p.to_bits() == q.to_bits() || (p.is_nan() && q.is_nan()),
                        "g {g} trial {trial} [{i}]: {p} vs {q}"
                    );
                }
            }
        }
    }

    /// The dense Sylvester matrix entry: H[i][j] = (-1)^popcount(i & j).
    fn h(i: usize, j: usize) -> f64 {
        if (i & j).count_ones() % 2 == 0 {
            1.0
        } else {
            -1.0
        }
    }

    #[test]
    fn fwht_equals_the_dense_sylvester_matrix() {
        for g in HADAMARD_BLOCKS {
            let x = randv(g, g as u64);
            let mut y = x.clone();
            fwht(&mut y);
            for i in 0..g {
                let want: f64 = (0..g).map(|j| h(i, j) * x[j] as f64).sum();
                assert!(
                    (y[i] as f64 - want).abs() < 1e-4 * (g as f64),
                    "g={g} i={i}"
                );
            }
        }
    }

    #[test]
    fn rht_preserves_norms_and_is_its_own_inverse_without_signs() {
        for g in HADAMARD_BLOCKS {
            let x = randv(4 * g, 11);
            let ones = vec![1.0f32; g];
            let mut y = x.clone();
            rht_row(&mut y, &ones);
            let n0: f64 = x.iter().map(|v| (*v as f64).powi(2)).sum();
            let n1: f64 = y.iter().map(|v| (*v as f64).powi(2)).sum();
            assert!((n0 - n1).abs() < 1e-5 * n0, "g={g}: norm {n0} -> {n1}");
            // H symmetric and orthonormal: H H = I.
            rht_row(&mut y, &ones);
            for (a, b) in x.iter().zip(&y) {
                assert!((a - b).abs() < 1e-5, "g={g}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn same_signs_on_both_operands_preserve_dot_products() {
        let g = 64;
        let signs = rht_signs(42, 7, g);
        assert!(signs.iter().any(|&s| s < 0.0) && signs.iter().any(|&s| s > 0.0));
        let (a, b) = (randv(3 * g, 1), randv(3 * g, 2));
        let (mut ra, mut rb) = (a.clone(), b.clone());
        rht_row(&mut ra, &signs);
        rht_row(&mut rb, &signs);
        let d0: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        let d1: f64 = ra.iter().zip(&rb).map(|(x, y)| *x as f64 * *y as f64).sum();
        assert!((d0 - d1).abs() < 1e-4, "{d0} vs {d1}");
    }

    #[test]
    fn signs_follow_bit_31_of_the_stream() {
        let s = rht_signs(5, 9, 16);
        for (j, v) in s.iter().enumerate() {
            let w = random_word(5, 9, j as u64);
            assert_eq!(*v < 0.0, w >> 31 == 1);
        }
        assert_ne!(rht_signs(5, 9, 64), rht_signs(5, 10, 64));
    }
}
