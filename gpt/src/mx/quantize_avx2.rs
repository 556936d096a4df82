//! A whole K-major row of MX blocks quantized on AVX2, bit-identical to `quantize_block` per
//! block plus `MxTelemetry::add_block` in block order (the twin it is tested against).
//!
//! What made the per-block code slow is its telemetry: each block's squared error and squared
//! magnitude are f32 sums in element order (pinned: the logged numbers must not change), a
//! chain of 32 dependent adds. Here the chain runs across blocks instead: eight blocks' squared
//! terms are transposed (8 x 8 in registers) so that lane b of one register holds block b's
//! element i, and 32 vector adds in element order give eight blocks' sums at once, each lane
//! the same f32 additions in the same order as the plain loop. Everything else (amax, the
//! scale, RTN or SR codes with the Philox words, clipping and underflow counts, the packing of
//! the 32 codes to bytes) is 8-lane code per block.
//!
//! Cost per 32-element block: ~4 loads, ~60 vector ops for the codes (RTN; SR adds the 8 Philox
//! rounds, ~100 more), ~8 shuffles + 8 adds for the sums, one 32-byte store: compute-bound,
//! a few hundred cycles per KiB of input.

use super::format::{BLOCK, E2M1_VALUES, SCALE_NAN};
use super::philox::philox_block_x8;
use super::quantize::{exp2i, shared_exponent, Rounding};
use super::telemetry::MxTelemetry;
use crate::cpu::simd::transpose8;
use std::arch::x86_64::*;

/// What a block contributes to the telemetry besides its sums.
#[derive(Clone, Copy, Default)]
struct Info {
    nonfinite: bool,
    zero: bool,
    e: i32,
    clipped: u32,
    underflow: u32,
}

/// See the module comment. `x` holds nblk·32 values, `codes` as many bytes, `scales` nblk
/// bytes; element i of the row has SR counter `first_index + i` (a multiple of 32).
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn quantize_row_avx2(
    x: &[f32],
    rounding: Rounding,
    seed: u64,
    stream: u64,
    first_index: u64,
    codes: &mut [u8],
    scales: &mut [u8],
    tel: &mut MxTelemetry,
) {
    let nblk = x.len() / BLOCK;
    assert!(x.len() == nblk * BLOCK && codes.len() == x.len() && scales.len() == nblk);
    let mut b0 = 0;
    while b0 < nblk {
        let nb = (nblk - b0).min(8);
        // Squared error and squared magnitude of the (up to) eight blocks, [block][element].
        let mut dd = [_mm256_setzero_ps(); 32];
        let mut ss = [_mm256_setzero_ps(); 32];
        let mut info = [Info::default(); 8];
        for (bi, inf) in info.iter_mut().enumerate().take(nb) {
            let b = b0 + bi;
            let (dst, terms) = (&mut codes[b * BLOCK..(b + 1) * BLOCK], bi * 4);
            *inf = block(
                &x[b * BLOCK..(b + 1) * BLOCK],
                rounding,
                seed,
                stream,
                first_index + (b * BLOCK) as u64,
                dst,
                &mut scales[b],
                (&mut dd[terms..terms + 4]).try_into().unwrap(),
                (&mut ss[terms..terms + 4]).try_into().unwrap(),
            );
        }
        let (se, sq) = (sums_by_lane(&dd), sums_by_lane(&ss));
        for (bi, inf) in info.iter().enumerate().take(nb) {
            // MxTelemetry::add_block, with the BlockStats quantize_block returns.
            tel.elements += BLOCK as u64;
            tel.clipped += inf.clipped as u64;
            tel.nonfinite_blocks += inf.nonfinite as u64;
            if !inf.nonfinite {
                let (sq_err, sq_sum) = if inf.zero {
                    (0.0, 0.0)
                } else {
                    // (2.0f64).powi(2e) of the plain code, exactly (|2e| <= 254: a normal f64).
                    let four_e = f64::from_bits(((1023 + 2 * inf.e) as u64) << 52);
                    (se[bi] as f64 * four_e, sq[bi] as f64 * four_e)
                };
                tel.sq_err += sq_err;
                tel.sq_sum += sq_sum;
                tel.underflow += inf.underflow as u64;
                tel.underflow_counted += BLOCK as u64;
            }
        }
        b0 += nb;
    }
}

/// Per lane b: Σ_i t[4b + i/8][i % 8] in element order i = 0..32 (blocks past the row's end
/// hold zeros and are ignored by the caller).
#[inline(always)]
unsafe fn sums_by_lane(t: &[__m256; 32]) -> [f32; 8] {
    let mut acc = _mm256_setzero_ps();
    for g in 0..4 {
        let cols = transpose8(std::array::from_fn(|b| t[4 * b + g]));
        for c in cols {
            acc = _mm256_add_ps(acc, c);
        }
    }
    std::mem::transmute(acc)
}

/// Number of set lanes of a compare mask.
#[inline(always)]
unsafe fn count(mask: __m256) -> u32 {
    (_mm256_movemask_ps(mask) as u32).count_ones()
}

/// Mask lanes as integers -1 / 0.
#[inline(always)]
unsafe fn ints(mask: __m256) -> __m256i {
    _mm256_castps_si256(mask)
}

/// One block: codes, scale byte, the squared terms (in units of 2^e, as the plain code forms
/// them) into `dd` / `ss`, and the counts.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn block(
    x: &[f32],
    rounding: Rounding,
    seed: u64,
    stream: u64,
    first_index: u64,
    codes: &mut [u8],
    scale: &mut u8,
    dd: &mut [__m256; 4],
    ss: &mut [__m256; 4],
) -> Info {
    let p = x.as_ptr();
    let v: [__m256; 4] = std::array::from_fn(|g| _mm256_loadu_ps(p.add(8 * g)));
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
    let mut amax = _mm256_setzero_ps();
    let mut bad = _mm256_setzero_si256();
    for vg in v {
        let a = _mm256_and_ps(vg, abs_mask);
        // Not finite: |x| bits above the largest finite f32's.
        bad = _mm256_or_si256(
            bad,
            _mm256_cmpgt_epi32(_mm256_castps_si256(a), _mm256_set1_epi32(0x7F7F_FFFF)),
        );
        amax = _mm256_max_ps(amax, a);
    }
    let mut info = Info::default();
    if _mm256_testz_si256(bad, bad) == 0 {
        codes.fill(0);
        *scale = SCALE_NAN;
        info.nonfinite = true;
        return info;
    }
    // Max of finite non-negative values: exact in any order.
    let h = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    let h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    let h = _mm_max_ss(h, _mm_shuffle_ps::<0b01>(h, h));
    let amax = _mm_cvtss_f32(h);
    if amax == 0.0 {
        codes.fill(0);
        *scale = 0;
        info.zero = true;
        return info;
    }
    let e = shared_exponent(amax);
    *scale = (e + 127) as u8;
    info.e = e;
    let unit = _mm256_set1_ps(exp2i(-e));
    let words = match rounding {
        Rounding::Sr => philox_block_x8(seed, stream, first_index >> 2),
        Rounding::Rtn => [0; 32],
    };
    let sr_mult = _mm256_set1_ps(0.75 * exp2i(-e));
    let table = _mm256_loadu_ps(E2M1_VALUES.as_ptr());
    let zero = _mm256_setzero_ps();
    let mut code = [_mm256_setzero_si256(); 4];
    for g in 0..4 {
        let xs = _mm256_and_ps(_mm256_mul_ps(v[g], unit), abs_mask);
        let mag = match rounding {
            Rounding::Rtn => {
                info.clipped += count(_mm256_cmp_ps::<_CMP_GT_OQ>(xs, _mm256_set1_ps(6.0)));
                rtn_mag(xs)
            }
            Rounding::Sr => {
                let a = _mm256_and_ps(_mm256_mul_ps(v[g], sr_mult), abs_mask);
                let w = _mm256_loadu_si256(words.as_ptr().add(8 * g) as *const __m256i);
                // uniform24: (w >> 8) · 2^-24, exact.
                let u = _mm256_mul_ps(
                    _mm256_cvtepi32_ps(_mm256_srli_epi32::<8>(w)),
                    _mm256_set1_ps(1.0 / 16_777_216.0),
                );
                sr_mag(a, u)
            }
        };
        // The plain code's telemetry terms: d = E2M1[mag] · deq_unit - xs (deq_unit 1 or 4/3).
        let mut q = _mm256_permutevar8x32_ps(table, mag);
        if rounding == Rounding::Sr {
            q = _mm256_mul_ps(q, _mm256_set1_ps(4.0 / 3.0));
        }
        let d = _mm256_sub_ps(q, xs);
        dd[g] = _mm256_mul_ps(d, d);
        ss[g] = _mm256_mul_ps(xs, xs);
        // Underflow: a non-zero input whose magnitude code is 0.
        let flushed = _mm256_cmpeq_epi32(mag, _mm256_setzero_si256());
        let nonzero = _mm256_cmp_ps::<_CMP_NEQ_UQ>(v[g], zero);
        info.underflow += count(_mm256_and_ps(nonzero, _mm256_castsi256_ps(flushed)));
        let sign = _mm256_slli_epi32::<3>(_mm256_srli_epi32::<31>(_mm256_castps_si256(v[g])));
        code[g] = _mm256_or_si256(sign, mag);
    }
    // 4 x 8 i32 codes -> 32 bytes in element order.
    let p01 = _mm256_packs_epi32(code[0], code[1]);
    let p23 = _mm256_packs_epi32(code[2], code[3]);
    let bytes = _mm256_permutevar8x32_epi32(
        _mm256_packs_epi16(p01, p23),
        _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7),
    );
    _mm256_storeu_si256(codes.as_mut_ptr() as *mut __m256i, bytes);
    info
}

/// `rtn_code` on 8 lanes: thresholds passed, strict where the tie goes down to an even code.
#[inline(always)]
unsafe fn rtn_mag(a: __m256) -> __m256i {
    let gt = |t: f32| ints(_mm256_cmp_ps::<_CMP_GT_OQ>(a, _mm256_set1_ps(t)));
    let ge = |t: f32| ints(_mm256_cmp_ps::<_CMP_GE_OQ>(a, _mm256_set1_ps(t)));
    // Each mask is -1 where passed: subtracting counts it.
    let mut m = _mm256_setzero_si256();
    for mask in [
        gt(0.25),
        ge(0.75),
        gt(1.25),
        ge(1.75),
        gt(2.5),
        ge(3.5),
        gt(5.0),
    ] {
        m = _mm256_sub_epi32(m, mask);
    }
    m
}

/// `sr_code_branchless` on 8 lanes (same f32 operations: lo_v and the gap are exact dyadics,
/// the compare sees (a - lo_v) · inv_gap rounded once, as there).
#[inline(always)]
unsafe fn sr_mag(a: __m256, u: __m256) -> __m256i {
    let ge = |t: f32| ints(_mm256_cmp_ps::<_CMP_GE_OQ>(a, _mm256_set1_ps(t)));
    let (c05, c1, c15, c2) = (ge(0.5), ge(1.0), ge(1.5), ge(2.0));
    let (c3, c4, c6) = (ge(3.0), ge(4.0), ge(6.0));
    let neg = |m: __m256i| _mm256_sub_epi32(_mm256_setzero_si256(), m);
    let n4 = neg(_mm256_add_epi32(
        _mm256_add_epi32(c05, c1),
        _mm256_add_epi32(c15, c2),
    ));
    let n2 = neg(_mm256_add_epi32(c3, c4));
    let n1 = neg(c6);
    let lo = _mm256_add_epi32(_mm256_add_epi32(n4, n2), n1);
    let lo_v = _mm256_add_ps(
        _mm256_add_ps(
            _mm256_mul_ps(_mm256_set1_ps(0.5), _mm256_cvtepi32_ps(n4)),
            _mm256_cvtepi32_ps(n2),
        ),
        _mm256_mul_ps(_mm256_set1_ps(2.0), _mm256_cvtepi32_ps(n1)),
    );
    // inv_gap: 0.5 from 4 up, 1 from 2 up, else 2.
    let inv_gap = _mm256_blendv_ps(
        _mm256_blendv_ps(
            _mm256_set1_ps(2.0),
            _mm256_set1_ps(1.0),
            _mm256_castsi256_ps(c2),
        ),
        _mm256_set1_ps(0.5),
        _mm256_castsi256_ps(c4),
    );
    let up = _mm256_cmp_ps::<_CMP_LT_OQ>(u, _mm256_mul_ps(_mm256_sub_ps(a, lo_v), inv_gap));
    let below7 = _mm256_cmpgt_epi32(_mm256_set1_epi32(7), lo);
    // lo + (lo < 7 && up): the masks are -1 where true.
    _mm256_sub_epi32(lo, _mm256_and_si256(below7, ints(up)))
}

/// The transposing case of the K-major gather on AVX2: `out[i·k + kk] = data[r0 + i + kk·ks]`
/// for i < n, kk < k (the view's rows are contiguous along the K-major rows: wgrad's dY^T and
/// X^T, dgrad's W). 8 x 8 tiles: eight contiguous loads, a register transpose, eight stores;
/// the rows past a multiple of 8 element by element. Pure data movement.
///
/// # Safety
/// The CPU must have AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn gather_transposed_avx2(
    data: &[f32],
    ks: usize,
    r0: usize,
    n: usize,
    k: usize,
    out: &mut [f32],
) {
    if n == 0 || k == 0 {
        return;
    }
    assert!(out.len() >= n * k && r0 + n - 1 + (k - 1) * ks < data.len());
    let (n8, k8) = (n / 8 * 8, k / 8 * 8);
    let (src, dst) = (data.as_ptr(), out.as_mut_ptr());
    for k0 in (0..k8).step_by(8) {
        for i0 in (0..n8).step_by(8) {
            let rows = std::array::from_fn(|j| _mm256_loadu_ps(src.add(r0 + i0 + (k0 + j) * ks)));
            for (i, t) in transpose8(rows).into_iter().enumerate() {
                _mm256_storeu_ps(dst.add((i0 + i) * k + k0), t);
            }
        }
    }
    for i in 0..n {
        let from = if i < n8 { k8 } else { 0 };
        for kk in from..k {
            out[i * k + kk] = data[r0 + i + kk * ks];
        }
    }
}
