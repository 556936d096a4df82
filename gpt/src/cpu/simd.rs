//! Runtime SIMD dispatch for the plain-Rust loops of the CPU ops.
//!
//! The crate is built for the x86-64 baseline (SSE2), so the compiler vectorizes loops 4 wide
//! and without AVX. `avx2!` compiles one `#[inline(always)]` body a second time with AVX2 + FMA
//! enabled and picks that copy when the CPU has them. Rust never contracts `a * b + c` into an
//! FMA on its own, so both copies compute the same f32 operations in the same order: the AVX2
//! copy is wider, never different (tests compare them bit for bit). `MXGPT_NO_AVX2=1` forces
//! the portable copies (to test them on an AVX2 machine).

use std::sync::OnceLock;

/// Whether the AVX2 + FMA copies may run (cached; `MXGPT_NO_AVX2` turns them off).
#[inline]
pub fn avx2_fma() -> bool {
    static S: OnceLock<bool> = OnceLock::new();
    *S.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::env::var_os("MXGPT_NO_AVX2").is_none()
                && std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// `avx2!(body(args...))`: calls `body` through an AVX2 + FMA-enabled trampoline when
/// `avx2_fma()`, else directly. `body` must be `#[inline(always)]` so each copy is compiled
/// for its own target features.
#[macro_export]
macro_rules! avx2 {
    ($body:ident($($arg:expr),* $(,)?)) => {{
        #[cfg(target_arch = "x86_64")]
        {
            if $crate::cpu::simd::avx2_fma() {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn trampoline<R>(f: impl FnOnce() -> R) -> R {
                    f()
                }
                // SAFETY: the CPU has AVX2 and FMA (checked just above).
                unsafe { trampoline(|| $body($($arg),*)) }
            } else {
                $body($($arg),*)
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            $body($($arg),*)
        }
    }};
}

/// Runs `f` with AVX2 + FMA enabled when the CPU has them: `f` (a closure called once) is
/// inlined into a trampoline compiled for those features, so its loops vectorize 8 wide. Same
/// arithmetic either way (see the module comment).
#[inline(always)]
pub fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if avx2_fma() {
            #[target_feature(enable = "avx2,fma")]
            unsafe fn trampoline<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            return unsafe { trampoline(f) };
        }
    }
    f()
}

/// 8 x 8 transpose in registers: out[i] lane j = r[j] lane i (the GEMM packing and the MX
/// quantizer's lane-parallel sums share it).
///
/// # Safety
/// Only inlined into AVX2-enabled code.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub unsafe fn transpose8(r: [std::arch::x86_64::__m256; 8]) -> [std::arch::x86_64::__m256; 8] {
    use std::arch::x86_64::*;
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ]
}

/// `with_avx2` with the choice made by the caller: AVX2 + FMA when `enable` and the CPU has
/// them, else the portable copy (tests run both copies of one kernel in one process).
#[inline(always)]
pub fn with_avx2_if<R>(enable: bool, f: impl FnOnce() -> R) -> R {
    if enable && avx2_fma() {
        with_avx2(f)
    } else {
        f()
    }
}
