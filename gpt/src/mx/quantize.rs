//! Quantizing one 32-element block to MXFP4 (MXFP4.md section 2), round-to-nearest-even or
//! stochastic rounding, and whole K-major operands block by block.
//!
//! The exact rules (a GPU quantizer must produce the same scale byte and codes):
//! 1. amax = max |x_i|. Any NaN/Inf in the block: scale 0xFF, codes all 0, flagged.
//!    amax == 0: scale byte 0, codes all 0.
//! 2. e = floor(log2(amax)) - 2 from the exponent bits (subnormals included), clamped to
//!    [-127, 127]; scale byte = e + 127.
//! 3. RTN: y = x · 2^-e (one f32 multiply; exact while y is normal). Round |y| to the E2M1 grid
//!    with ties to the even code; |y| > 5 gives 6 (saturation: values in (6, 8) clip).
//!    SR: y = x · (0.75 · 2^-e) (one f32 multiply by an exact constant), so |y| < 6. With lo <= |y|
//!    < hi neighbouring grid points and u = uniform24(word of this element), round up iff
//!    u < (|y| - lo) / (hi - lo) evaluated in f32 (exact: hi - lo is 0.5, 1 or 2).
//! 4. The code's sign bit is x's sign bit, also when the magnitude rounds to 0 (-0.1 -> 0x8).
//!
//! The dequantized value is q · 2^e (RTN) or q · 2^e · 4/3 (SR, unbiased for x).

use super::format::{e2m1_decode, BLOCK, E2M1_VALUES, SCALE_NAN};
use super::philox::{philox_block_x8, uniform24};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rounding {
    /// Round to nearest, ties to the even code (OCP; Blackwell's cvt.rn.satfinite).
    Rtn,
    /// Stochastic rounding after a 3/4 pre-scale (the paper's unbiased quantizer).
    Sr,
}

impl std::str::FromStr for Rounding {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "rtn" => Ok(Rounding::Rtn),
            "sr" => Ok(Rounding::Sr),
            _ => Err(format!("unknown rounding '{s}': expected rtn or sr")),
        }
    }
}

/// floor(log2(|a|)) of a finite non-zero f32, from its bits (exact, subnormals included).
#[inline]
pub fn floor_log2(a: f32) -> i32 {
    let bits = a.to_bits() & 0x7FFF_FFFF;
    debug_assert!(bits != 0 && bits < 0x7F80_0000);
    let exp = (bits >> 23) as i32;
    if exp > 0 {
        exp - 127
    } else {
        // Subnormal: value = mantissa · 2^-149.
        (31 - (bits & 0x7F_FFFF).leading_zeros() as i32) - 149
    }
}

/// The block's shared exponent e = floor(log2(amax)) - 2, clamped to [-127, 127].
#[inline]
pub fn shared_exponent(amax: f32) -> i32 {
    (floor_log2(amax) - 2).clamp(-127, 127)
}

/// 2^p as an f32 for p in [-149, 127] (exact, subnormal below -126).
#[inline]
pub fn exp2i(p: i32) -> f32 {
    debug_assert!((-149..=127).contains(&p));
    if p >= -126 {
        f32::from_bits(((p + 127) as u32) << 23)
    } else {
        f32::from_bits(1u32 << (p + 149))
    }
}

/// RTN magnitude code of a = |y| (finite, a <= 8): nearest grid point, ties to the even code,
/// > 5 -> 7 (6.0, saturating). Written as a count of thresholds passed (strict where the tie
/// goes down to an even code, inclusive where it goes up), which compiles to branch-free
/// compares: the same codes as the if-chain over 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.
#[inline(always)]
pub fn rtn_code(a: f32) -> u8 {
    (a > 0.25) as u8
        + (a >= 0.75) as u8
        + (a > 1.25) as u8
        + (a >= 1.75) as u8
        + (a > 2.5) as u8
        + (a >= 3.5) as u8
        + (a > 5.0) as u8
}

/// Magnitude code of the grid point at or below a (finite, 0 <= a < 8): the number of grid
/// points 0.5, 1, 1.5, 2, 3, 4, 6 that are <= a.
#[inline(always)]
fn floor_code(a: f32) -> u8 {
    (a >= 0.5) as u8
        + (a >= 1.0) as u8
        + (a >= 1.5) as u8
        + (a >= 2.0) as u8
        + (a >= 3.0) as u8
        + (a >= 4.0) as u8
        + (a >= 6.0) as u8
}

/// SR magnitude code of a = |y| (0 <= a < 6) given the uniform u in [0, 1).
#[inline]
pub fn sr_code(a: f32, u: f32) -> u8 {
    let lo = floor_code(a);
    if lo == 7 {
        return 7; // only reachable through rounding of the 3/4 pre-scale at the very top
    }
    // The gaps between neighbouring E2M1 values are powers of two (0.5, 1, 2), so multiplying
    // by their exact reciprocals gives the same f32 as the documented division.
    const INV_GAP: [f32; 7] = [2.0, 2.0, 2.0, 2.0, 1.0, 1.0, 0.5];
    let lo_v = E2M1_VALUES[lo as usize];
    if u < (a - lo_v) * INV_GAP[lo as usize] {
        lo + 1
    } else {
        lo
    }
}

/// What quantizing one block produced, for telemetry.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockStats {
    pub nonfinite: bool,
    /// Elements with |y| > 6 before saturation (RTN only; SR never clips).
    pub clipped: u32,
    /// Sum of (dequantized - x)^2 and of x^2 over the block, in f64.
    pub sq_err: f64,
    pub sq_sum: f64,
}

/// SR magnitude code, branch-free (the form the block loop vectorizes): the same code as
/// `sr_code` for every a in [0, 6] and u in [0, 1) (tested). lo_v and the gap are sums and
/// selects of exact small dyadics, so the f32 compare sees the same operands.
#[inline(always)]
fn sr_code_branchless(a: f32, u: f32) -> u8 {
    let lo = floor_code(a);
    let lo_v = 0.5
        * ((a >= 0.5) as u32 + (a >= 1.0) as u32 + (a >= 1.5) as u32 + (a >= 2.0) as u32) as f32
        + ((a >= 3.0) as u32 + (a >= 4.0) as u32) as f32
        + 2.0 * (a >= 6.0) as u32 as f32;
    let inv_gap = if a >= 4.0 {
        0.5
    } else if a >= 2.0 {
        1.0
    } else {
        2.0
    };
    lo + ((lo < 7) & (u < (a - lo_v) * inv_gap)) as u8
}

/// Quantizes one block of 32 values. `first_index` is the operand-wide index of x[0] (the SR
/// counter); `seed`/`stream` key the generator (unused for RTN). Writes the 32 codes (one per
/// byte, low 4 bits) and returns the scale byte and the block's statistics.
///
/// Runs an AVX2 copy of the same code when the CPU has it (8 Philox calls and the 32 codes in
/// SIMD lanes); the telemetry sums keep their element order, so every output is bit-identical
/// to `quantize_block_plain`, the reference it is tested against.
pub fn quantize_block(
    x: &[f32],
    rounding: Rounding,
    seed: u64,
    stream: u64,
    first_index: u64,
    codes: &mut [u8],
) -> (u8, BlockStats) {
    crate::avx2!(quantize_block_fast(
        x,
        rounding,
        seed,
        stream,
        first_index,
        codes
    ))
}

#[inline(always)]
fn quantize_block_fast(
    x: &[f32],
    rounding: Rounding,
    seed: u64,
    stream: u64,
    first_index: u64,
    codes: &mut [u8],
) -> (u8, BlockStats) {
    let x: &[f32; BLOCK] = x.try_into().expect("quantize_block: 32 values");
    let codes: &mut [u8; BLOCK] = codes.try_into().expect("quantize_block: 32 codes");
    let mut amax = 0.0f32;
    let mut finite = true;
    for &v in x {
        finite &= v.is_finite();
        amax = amax.max(v.abs());
    }
    let mut st = BlockStats::default();
    if !finite {
        codes.fill(0);
        st.nonfinite = true;
        return (SCALE_NAN, st);
    }
    if amax == 0.0 {
        codes.fill(0);
        return (0, st);
    }
    let e = shared_exponent(amax);
    let scale_byte = (e + 127) as u8;
    let unit = exp2i(-e);
    let mut mags = [0u8; BLOCK];
    let deq_unit = match rounding {
        Rounding::Rtn => {
            for i in 0..BLOCK {
                mags[i] = rtn_code((x[i] * unit).abs());
            }
            1.0f32
        }
        Rounding::Sr => {
            debug_assert!(first_index % 4 == 0);
            let words = philox_block_x8(seed, stream, first_index >> 2);
            let mult = 0.75 * unit;
            for i in 0..BLOCK {
                mags[i] = sr_code_branchless((x[i] * mult).abs(), uniform24(words[i]));
            }
            4.0 / 3.0
        }
    };
    let mut clipped = 0u32;
    if rounding == Rounding::Rtn {
        for i in 0..BLOCK {
            clipped += ((x[i] * unit).abs() > 6.0) as u32;
        }
    }
    for i in 0..BLOCK {
        codes[i] = (((x[i].to_bits() >> 31) as u8) << 3) | mags[i];
    }
    // Telemetry, summed in element order (as the plain version does).
    let (mut sq_err, mut sq_sum) = (0.0f32, 0.0f32);
    for i in 0..BLOCK {
        let xs = (x[i] * unit).abs();
        let d = E2M1_VALUES[mags[i] as usize] * deq_unit - xs;
        sq_err += d * d;
        sq_sum += xs * xs;
    }
    let four_e = (2.0f64).powi(2 * e);
    st.clipped = clipped;
    st.sq_err = sq_err as f64 * four_e;
    st.sq_sum = sq_sum as f64 * four_e;
    (scale_byte, st)
}

/// Quantizes one K-major row of `x.len() / 32` blocks: codes, one scale byte per block, and each
/// block's statistics added to `tel` in block order, exactly as `quantize_row_blocks` (the
/// twin: `quantize_block` then `MxTelemetry::add_block` per block). On AVX2 the telemetry's
/// pinned-order sums run eight blocks at a time in SIMD lanes (`quantize_avx2`).
#[allow(clippy::too_many_arguments)]
pub fn quantize_row(
    x: &[f32],
    rounding: Rounding,
    seed: u64,
    stream: u64,
    first_index: u64,
    codes: &mut [u8],
    scales: &mut [u8],
    tel: &mut super::MxTelemetry,
) {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::simd::avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        return unsafe {
            super::quantize_avx2::quantize_row_avx2(
                x,
                rounding,
                seed,
                stream,
                first_index,
                codes,
                scales,
                tel,
            )
        };
    }
    quantize_row_blocks(x, rounding, seed, stream, first_index, codes, scales, tel)
}

/// `quantize_row` block by block (the portable path and the twin the AVX2 row is tested
/// against).
#[allow(clippy::too_many_arguments)]
pub fn quantize_row_blocks(
    x: &[f32],
    rounding: Rounding,
    seed: u64,
    stream: u64,
    first_index: u64,
    codes: &mut [u8],
    scales: &mut [u8],
    tel: &mut super::MxTelemetry,
) {
    for (j, ((src, dst), s)) in x
        .chunks_exact(BLOCK)
        .zip(codes.chunks_exact_mut(BLOCK))
        .zip(scales.iter_mut())
        .enumerate()
    {
        let (scale, st) = quantize_block(
            src,
            rounding,
            seed,
            stream,
            first_index + (j * BLOCK) as u64,
            dst,
        );
        *s = scale;
        tel.add_block(&st, src, dst);
    }
}

/// The plain reference of `quantize_block` (the rules above, written out one element at a
/// time).
///
/// Quantizes one block of 32 values. `first_index` is the operand-wide index of x[0] (the SR
/// counter); `seed`/`stream` key the generator (unused for RTN). Writes the 32 codes (one per
/// byte, low 4 bits) and returns the scale byte and the block's statistics.
pub fn quantize_block_plain(
    x: &[f32],
    rounding: Rounding,
    seed: u64,
    stream: u64,
    first_index: u64,
    codes: &mut [u8],
) -> (u8, BlockStats) {
    assert_eq!(x.len(), BLOCK);
    assert_eq!(codes.len(), BLOCK);
    let mut amax = 0.0f32;
    let mut finite = true;
    for &v in x {
        finite &= v.is_finite();
        amax = amax.max(v.abs());
    }
    let mut st = BlockStats::default();
    if !finite {
        codes.fill(0);
        st.nonfinite = true;
        return (SCALE_NAN, st);
    }
    if amax == 0.0 {
        codes.fill(0);
        return (0, st);
    }
    let e = shared_exponent(amax);
    let scale_byte = (e + 127) as u8;
    // Random words for the 32 elements: 8 Philox calls when the block is 4-aligned (always,
    // since blocks start at multiples of 32).
    let mut words = [0u32; BLOCK];
    if rounding == Rounding::Sr {
        debug_assert!(first_index % 4 == 0);
        for q in 0..BLOCK / 4 {
            let w = super::philox::philox_block(seed, stream, (first_index >> 2) + q as u64);
            words[q * 4..q * 4 + 4].copy_from_slice(&w);
        }
    }
    // 2^-e is exact for every e in [-127, 127]; so is 0.75 * 2^-e.
    let unit = exp2i(-e);
    let (mult, deq_unit) = match rounding {
        Rounding::Rtn => (unit, 1.0f32),
        Rounding::Sr => (0.75 * unit, 4.0 / 3.0),
    };
    // Telemetry in units of 2^e (|x| / 2^e < 8, so f32 neither overflows nor loses the small
    // block sums), scaled back by 4^e in f64 at the end: cheap enough to run on every block.
    let (mut sq_err, mut sq_sum, mut clipped) = (0.0f32, 0.0f32, 0u32);
    for i in 0..BLOCK {
        let a = (x[i] * mult).abs();
        let mag = match rounding {
            Rounding::Rtn => {
                clipped += (a > 6.0) as u32;
                rtn_code(a)
            }
            Rounding::Sr => sr_code(a, uniform24(words[i])),
        };
        codes[i] = (((x[i].to_bits() >> 31) as u8) << 3) | mag;
        // |Q(x)| and |x| in units of 2^e; Q(x) has x's sign, so |Q(x) - x| = ||Q(x)| - |x||.
        let xs = (x[i] * unit).abs();
        let d = E2M1_VALUES[mag as usize] * deq_unit - xs;
        sq_err += d * d;
        sq_sum += xs * xs;
    }
    let four_e = (2.0f64).powi(2 * e);
    st.clipped = clipped;
    st.sq_err = sq_err as f64 * four_e;
    st.sq_sum = sq_sum as f64 * four_e;
    (scale_byte, st)
}

/// The dequantized value of a code under a scale byte, with the SR factor 4/3 when `sr` (f64;
/// NaN for a NaN block).
pub fn dequantize(code: u8, scale: u8, sr: bool) -> f64 {
    let v = e2m1_decode(code) as f64 * super::format::e8m0_decode(scale);
    if sr {
        v * 4.0 / 3.0
    } else {
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast block quantizer (its AVX2 copy where the CPU has one, and its portable copy)
    /// against the plain reference, bit for bit: codes, scale byte and telemetry, on random
    /// blocks spanning 2^-140..2^120 with zeros, exact grid points, ties and non-finite values.
    #[test]
    fn fast_quantize_block_is_bit_identical_to_the_plain_one() {
        let mut r = crate::rng::SplitMix64::new(42);
        for trial in 0..20_000u64 {
            let mag = (r.next_f64() * 260.0 - 140.0) as i32;
            let mut x = [0.0f32; BLOCK];
            for v in x.iter_mut() {
                *v = (r.next_normal() as f32) * exp2i(mag.clamp(-126, 120));
                match r.next_u64() % 16 {
                    0 => *v = 0.0,
                    1 => {
                        *v = E2M1_VALUES[(r.next_u64() % 8) as usize] * exp2i(mag.clamp(-120, 120))
                    }
                    2 => {
                        *v = [0.25f32, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0][(r.next_u64() % 7) as usize]
                    }
                    _ => {}
                }
            }
            if trial % 997 == 0 {
                x[(trial % 32) as usize] =
                    [f32::NAN, f32::INFINITY, -f32::INFINITY][(trial % 3) as usize];
            }
            for rounding in [Rounding::Rtn, Rounding::Sr] {
                let first = 32 * (trial % 1000);
                let (mut c0, mut c1, mut c2) = ([0u8; 32], [0u8; 32], [0u8; 32]);
                let want = quantize_block_plain(&x, rounding, 9, trial, first, &mut c0);
                let fast = quantize_block(&x, rounding, 9, trial, first, &mut c1);
                let portable = quantize_block_fast(&x, rounding, 9, trial, first, &mut c2);
                assert_eq!(c1, c0, "trial {trial} {rounding:?}: codes");
                assert_eq!(c2, c0, "trial {trial} {rounding:?}: portable codes");
                for got in [fast, portable] {
                    assert_eq!(got.0, want.0);
                    assert_eq!(got.1.clipped, want.1.clipped);
                    assert_eq!(got.1.nonfinite, want.1.nonfinite);
                    assert_eq!(got.1.sq_err.to_bits(), want.1.sq_err.to_bits());
                    assert_eq!(got.1.sq_sum.to_bits(), want.1.sq_sum.to_bits());
                }
            }
        }
    }

    /// A random block like those of the test above: magnitudes 2^-140..2^120, zeros, grid
    /// points, ties; now and then an all-zero or a non-finite block.
    fn random_block(r: &mut crate::rng::SplitMix64, x: &mut [f32]) {
        let mag = (r.next_f64() * 260.0 - 140.0) as i32;
        for v in x.iter_mut() {
            *v = (r.next_normal() as f32) * exp2i(mag.clamp(-126, 120));
            match r.next_u64() % 16 {
                0 => *v = 0.0,
                1 => *v = E2M1_VALUES[(r.next_u64() % 8) as usize] * exp2i(mag.clamp(-120, 120)),
                2 => *v = [0.25f32, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0][(r.next_u64() % 7) as usize],
                _ => {}
            }
        }
        match r.next_u64() % 40 {
            0 => x.fill(0.0),
            1 => {
                x[(r.next_u64() % 32) as usize] =
                    [f32::NAN, f32::INFINITY][r.next_u64() as usize % 2]
            }
            2 => x.fill(-0.0),
            _ => {}
        }
    }

    /// `quantize_row` (the AVX2 row where the CPU has it, eight blocks' telemetry sums in SIMD
    /// lanes) and its twin `quantize_row_blocks` against `quantize_block_plain` +
    /// `add_block` per block: codes, scales and every telemetry field bit for bit, rows of
    /// 1..25 blocks (not multiples of 8), both roundings, poisoned outputs.
    #[test]
    fn quantize_row_is_bit_identical_to_plain_blocks() {
        use crate::mx::MxTelemetry;
        let mut r = crate::rng::SplitMix64::new(7);
        for trial in 0..400u64 {
            let nblk = 1 + (r.next_u64() % 25) as usize;
            let mut x = vec![0.0f32; nblk * BLOCK];
            for blk in x.chunks_exact_mut(BLOCK) {
                random_block(&mut r, blk);
            }
            let first = 32 * (r.next_u64() % 5000);
            for rounding in [Rounding::Rtn, Rounding::Sr] {
                let (mut want_c, mut want_s) = (vec![0xEEu8; x.len()], vec![0xEEu8; nblk]);
                let mut want_t = MxTelemetry::default();
                for j in 0..nblk {
                    let (src, dst) = (&x[j * 32..(j + 1) * 32], &mut want_c[j * 32..(j + 1) * 32]);
                    let (s, st) =
                        quantize_block_plain(src, rounding, 3, trial, first + 32 * j as u64, dst);
                    want_s[j] = s;
                    want_t.add_block(&st, src, dst);
                }
                type RowFn =
                    fn(&[f32], Rounding, u64, u64, u64, &mut [u8], &mut [u8], &mut MxTelemetry);
                let fns: [(&str, RowFn); 2] = [
                    ("quantize_row", quantize_row),
                    ("quantize_row_blocks", quantize_row_blocks),
                ];
                for (name, f) in fns {
                    let (mut c, mut s) = (vec![0xEEu8; x.len()], vec![0xEEu8; nblk]);
                    let mut t = MxTelemetry::default();
                    f(&x, rounding, 3, trial, first, &mut c, &mut s, &mut t);
                    let what = format!("{name} trial {trial} {rounding:?} nblk {nblk}");
                    assert_eq!(c, want_c, "{what}: codes");
                    assert_eq!(s, want_s, "{what}: scales");
                    assert_eq!(
                        (
                            t.elements,
                            t.clipped,
                            t.nonfinite_blocks,
                            t.underflow,
                            t.underflow_counted
                        ),
                        (
                            want_t.elements,
                            want_t.clipped,
                            want_t.nonfinite_blocks,
                            want_t.underflow,
                            want_t.underflow_counted
                        ),
                        "{what}: counts"
                    );
                    assert_eq!(
                        t.sq_err.to_bits(),
                        want_t.sq_err.to_bits(),
                        "{what}: sq_err"
                    );
                    assert_eq!(
                        t.sq_sum.to_bits(),
                        want_t.sq_sum.to_bits(),
                        "{what}: sq_sum"
                    );
                }
            }
        }
    }

    #[test]
    fn branchless_sr_code_matches_sr_code() {
        let mut r = crate::rng::SplitMix64::new(3);
        let check = |a: f32, u: f32| {
            assert_eq!(sr_code_branchless(a, u), sr_code(a, u), "a {a} u {u}");
        };
        for &g in &E2M1_VALUES {
            for d in [-2i32, -1, 0, 1, 2] {
                let a = f32::from_bits((g.to_bits() as i32 + d).max(0) as u32).min(6.0);
                for u in [0.0, 0.25, 0.5, 0.999_999_94] {
                    check(a, u);
                }
            }
        }
        for _ in 0..200_000 {
            check((r.next_f64() * 6.0) as f32, uniform24(r.next_u64() as u32));
        }
    }

    fn rtn(x: &[f32]) -> (u8, Vec<u8>) {
        let mut c = vec![0u8; 32];
        let (s, _) = quantize_block(x, Rounding::Rtn, 0, 0, 0, &mut c);
        (s, c)
    }

    /// A block whose amax is 4 (so e = 0 and y = x) with `probe` values in the first slots.
    fn unit_block(probe: &[f32]) -> Vec<f32> {
        let mut x = vec![0.0f32; 32];
        x[31] = 4.0;
        x[..probe.len()].copy_from_slice(probe);
        x
    }

    #[test]
    fn rtn_ties_go_to_the_even_code() {
        // (value, expected code): ties at 0.25 0.75 1.25 1.75 2.5 3.5 5 by hand from the grid
        // 0 0.5 1 1.5 2 3 4 6 with codes 0..7.
        let cases = [
            (0.25, 0),
            (0.75, 2),
            (1.25, 2),
            (1.75, 4),
            (2.5, 4),
            (3.5, 6),
            (5.0, 6),
            (0.2, 0),
            (0.3, 1),
            (1.3, 3),
            (2.6, 5),
            (5.1, 7),
        ];
        for (v, want) in cases {
            let (s, c) = rtn(&unit_block(&[v, -v]));
            assert_eq!(s, 127, "amax 4 gives e = 0");
            assert_eq!(c[0], want, "{v}");
            assert_eq!(c[1], want | 8, "-{v}");
        }
    }

    #[test]
    fn rtn_saturates_values_in_6_to_8() {
        // amax 7.9: e = floor(log2 7.9) - 2 = 0, y in (6, 8) -> code 7 (6.0), counted as clipped.
        let mut x = unit_block(&[7.9, 6.5, 6.0]);
        x[31] = 1.0;
        let mut c = vec![0u8; 32];
        let (s, st) = quantize_block(&x, Rounding::Rtn, 0, 0, 0, &mut c);
        assert_eq!(s, 127);
        assert_eq!(&c[..3], &[7, 7, 7]);
        assert_eq!(
            st.clipped, 2,
            "6.0 itself is representable, 7.9 and 6.5 clip"
        );
    }

    #[test]
    fn zero_block_and_nonfinite_blocks() {
        let (s, c) = rtn(&[0.0; 32]);
        assert_eq!((s, c.iter().all(|&c| c == 0)), (0, true));
        let mut neg0 = [0.0f32; 32];
        neg0[3] = -0.0;
        assert_eq!(rtn(&neg0).0, 0);
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut x = [1.0f32; 32];
            x[17] = bad;
            let mut c = vec![9u8; 32];
            let (s, st) = quantize_block(&x, Rounding::Sr, 1, 2, 0, &mut c);
            assert_eq!(s, SCALE_NAN);
            assert!(st.nonfinite && c.iter().all(|&c| c == 0));
        }
    }

    #[test]
    fn shared_exponent_uses_the_exponent_bits() {
        // At a power of two and just below it (where a floating log2 rounds up).
        assert_eq!(shared_exponent(8.0), 1);
        assert_eq!(shared_exponent(f32::from_bits(8.0f32.to_bits() - 1)), 0);
        assert_eq!(shared_exponent(1.0), -2);
        assert_eq!(shared_exponent(f32::from_bits(1.0f32.to_bits() - 1)), -3);
        // f32 subnormals: 2^-149 and 2^-140 + a bit; clamped at -127.
        assert_eq!(floor_log2(f32::from_bits(1)), -149);
        assert_eq!(floor_log2(f32::from_bits((1 << 9) | 1)), -140);
        assert_eq!(shared_exponent(f32::from_bits(1)), -127);
        // Near the top of the range: amax = 2^127 · 1.9 -> e = 125.
        assert_eq!(shared_exponent(f32::MAX), 125);
    }

    #[test]
    fn amax_just_below_a_power_of_two_maps_to_6() {
        // amax = 8 - ulp: e = 0, y = 7.99.. -> clips to 6 under RTN.
        let a = f32::from_bits(8.0f32.to_bits() - 1);
        let (s, c) = rtn(&unit_block(&[a]));
        assert_eq!((s, c[0]), (127, 7));
        // amax = 8: e = 1, y = 4 -> code 6, no clipping.
        let (s, c) = rtn(&unit_block(&[8.0]));
        assert_eq!((s, c[0]), (128, 6));
    }

    #[test]
    fn subnormal_blocks_quantize_with_the_clamped_scale() {
        // All values subnormal, amax = 2^-140: e clamps to -127, y = x · 2^127 = 2^-13 -> 0,
        // while a block scaled so that y lands on the grid keeps its values.
        let tiny = f32::from_bits(1 << 9); // 2^-140
        let (s, c) = rtn(&[tiny; 32]);
        assert_eq!(s, 0);
        assert!(c.iter().all(|&c| c == 0));
        let big = exp2i(-126) * 3.0; // 3 · 2^-126: e = -127 ... y = 3 · 2^1 = 6
        let (s, c) = rtn(&[big; 32]);
        assert_eq!((s, c[0]), (0, 7));
    }

    #[test]
    fn amax_near_2_pow_127() {
        let x = [f32::MAX, -f32::MAX / 2.0, 1.0, 0.0].repeat(8);
        let (s, c) = rtn(&x);
        // e = 125; y = x / 2^125 = 7.99.. -> 6; -3.99.. -> -4; 1 / 2^125 -> 0.
        assert_eq!(s, 252);
        assert_eq!(&c[..4], &[7, 6 | 8, 0, 0]);
    }

    #[test]
    fn sr_picks_a_neighbour_and_is_unbiased() {
        // x = 1.3 with amax 4 (e = 0): y = 0.975 between 0.5 and 1; P(up) = 0.95.
        let x = unit_block(&[1.3; 31]);
        let (mut sum, mut n) = (0.0f64, 0u64);
        for seed in 0..2000u64 {
            let mut c = vec![0u8; 32];
            let (s, _) = quantize_block(&x, Rounding::Sr, seed, 7, 0, &mut c);
            assert_eq!(s, 127);
            for &code in &c[..31] {
                assert!(
                    code == 1 || code == 2,
                    "SR must pick a neighbour of 0.975, got code {code}"
                );
                sum += dequantize(code, s, true);
                n += 1;
            }
        }
        let mean = sum / n as f64;
        // Per-sample std of the dequantized value: (4/3) · 0.5 · sqrt(0.95 · 0.05) = 0.145;
        // over 62,000 samples the standard error is 5.8e-4; allow 5 sigma.
        assert!((mean - 1.3).abs() < 3e-3, "mean {mean}");
    }

    #[test]
    fn sr_never_clips_and_keeps_grid_points() {
        // amax = 7.9 -> y = 7.9 · 0.75 = 5.925 < 6.
        let mut x = [7.9f32; 32];
        x[0] = 4.0 / 0.75; // y = 4 exactly: a grid point never moves
        let mut c = vec![0u8; 32];
        let (_, st) = quantize_block(&x, Rounding::Sr, 3, 4, 0, &mut c);
        assert_eq!(st.clipped, 0);
        assert_eq!(c[0], 6);
        assert!(c[1..].iter().all(|&c| c == 6 || c == 7));
    }
}
