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
