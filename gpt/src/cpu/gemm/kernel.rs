//! Micro-kernels: `C[MR x NR] (+)= Apanel[kc x MR]^T · Bpanel[kc x NR]` with the MR x NR
//! accumulators in registers. Both panels are packed (contiguous, MR resp. NR values per k
//! step), so the inner loop is loads, broadcasts and FMAs only. Per k step: NR/8 (or NR/16)
//! vector loads of B, MR broadcasts of A, MR·NR/8 FMAs; the FMA ports are the limit (2 per
//! cycle on Zen 3 and Skylake-X: 32 FLOP/cycle with AVX2, 64 with AVX-512).
//!
//! C is touched once per call (after kc steps), usually in memory far from the core (the
//! classifier's C is 256 x 50304 floats): the kernels prefetch the tile's rows first so the
//! misses overlap the k loop instead of stalling the stores.

/// AVX-512 micro-kernel, 8 rows x 32 columns: 16 zmm accumulators; per k step two B loads,
/// eight A broadcasts, sixteen FMAs.
///
/// # Safety
/// The CPU has AVX-512F; `a` holds `kc * 8` floats, `b` `kc * 32`, and the 8 x 32 tile at `c`
/// with leading dimension `ldc` is writable.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn avx512_8x32(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    overwrite: bool,
) {
    use std::arch::x86_64::*;
    const MR: usize = 8;
    const NR: usize = 32;
    for i in 0..MR {
        _mm_prefetch::<_MM_HINT_T0>(c.add(i * ldc) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(c.add(i * ldc + NR - 1) as *const i8);
    }
    let mut acc = [_mm512_setzero_ps(); 2 * MR];
    for p in 0..kc {
        let b0 = _mm512_loadu_ps(b.add(p * NR));
        let b1 = _mm512_loadu_ps(b.add(p * NR + 16));
        for i in 0..MR {
            let ai = _mm512_set1_ps(*a.add(p * MR + i));
            acc[2 * i] = _mm512_fmadd_ps(ai, b0, acc[2 * i]);
            acc[2 * i + 1] = _mm512_fmadd_ps(ai, b1, acc[2 * i + 1]);
        }
    }
    for i in 0..MR {
        let row = c.add(i * ldc);
        if overwrite {
            _mm512_storeu_ps(row, acc[2 * i]);
            _mm512_storeu_ps(row.add(16), acc[2 * i + 1]);
        } else {
            _mm512_storeu_ps(row, _mm512_add_ps(_mm512_loadu_ps(row), acc[2 * i]));
            _mm512_storeu_ps(
                row.add(16),
                _mm512_add_ps(_mm512_loadu_ps(row.add(16)), acc[2 * i + 1]),
            );
        }
    }
}

/// AVX2 + FMA micro-kernel, 6 rows x 16 columns: 12 ymm accumulators + 2 B vectors + 1
/// broadcast = 15 of the 16 ymm registers; per k step two B loads, six broadcasts, twelve FMAs.
/// (4 x 24 would fit the model's shapes without edges but needs all 16 registers and ran at
/// less than half the rate: the compiler spills.)
///
/// # Safety
/// The CPU has AVX2 and FMA; `a` holds `kc * 6` floats, `b` `kc * 16`, and the 6 x 16 tile at
/// `c` with leading dimension `ldc` is writable.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn avx2_6x16(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    overwrite: bool,
) {
    use std::arch::x86_64::*;
    const MR: usize = 6;
    const NR: usize = 16;
    for i in 0..MR {
        _mm_prefetch::<_MM_HINT_T0>(c.add(i * ldc) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(c.add(i * ldc + NR - 1) as *const i8);
    }
    let mut acc = [_mm256_setzero_ps(); 2 * MR];
    for p in 0..kc {
        let b0 = _mm256_loadu_ps(b.add(p * NR));
        let b1 = _mm256_loadu_ps(b.add(p * NR + 8));
        for i in 0..MR {
            let ai = _mm256_broadcast_ss(&*a.add(p * MR + i));
            acc[2 * i] = _mm256_fmadd_ps(ai, b0, acc[2 * i]);
            acc[2 * i + 1] = _mm256_fmadd_ps(ai, b1, acc[2 * i + 1]);
        }
    }
    for i in 0..MR {
        let row = c.add(i * ldc);
        if overwrite {
            _mm256_storeu_ps(row, acc[2 * i]);
            _mm256_storeu_ps(row.add(8), acc[2 * i + 1]);
        } else {
            _mm256_storeu_ps(row, _mm256_add_ps(_mm256_loadu_ps(row), acc[2 * i]));
            _mm256_storeu_ps(
                row.add(8),
                _mm256_add_ps(_mm256_loadu_ps(row.add(8)), acc[2 * i + 1]),
            );
        }
    }
}

/// Plain Rust micro-kernel for any target (separate multiply and add, so it rounds
/// differently from the FMA kernels: compared within tolerance, not bit for bit).
///
/// # Safety
/// `a` holds `kc * MR` floats, `b` `kc * NR`, and the MR x NR tile at `c` is writable.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // acc[i][j] pairs with ap[i] and bp[j]
pub(super) unsafe fn portable<const MR: usize, const NR: usize>(
    kc: usize,
    a: &[f32],
    b: &[f32],
    c: *mut f32,
    ldc: usize,
    overwrite: bool,
) {
    let mut acc = [[0.0f32; NR]; MR];
    for p in 0..kc {
        let bp: &[f32; NR] = b[p * NR..(p + 1) * NR].try_into().unwrap();
        let ap: &[f32; MR] = a[p * MR..(p + 1) * MR].try_into().unwrap();
        for i in 0..MR {
            for j in 0..NR {
                acc[i][j] += ap[i] * bp[j];
            }
        }
    }
    for i in 0..MR {
        for j in 0..NR {
            let dst = c.add(i * ldc + j);
            *dst = if overwrite {
                acc[i][j]
            } else {
                *dst + acc[i][j]
            };
        }
    }
}
