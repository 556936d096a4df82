//! Packing: copies a block of A or B into the panel layout the micro-kernels stream, absorbing
//! any strides or transposes. Pure data movement (bit-exact), one panel per call so callers can
//! pack panels in parallel.
//!
//! Cost: one read and one write per element. With M = B·T = 256 rows each packed B element
//! feeds 2·256 FLOPs, about 5 ns of kernel time at the kernel's rate, so packing at ~1 ns an
//! element (scalar, strided) was ~15% of a GEMM; the fast paths below (fixed-size copies, 8 x 8
//! register transposes) bring it to a few percent.

use super::MatRef;

/// Packs A[r0..r0+rows, pc..pc+kc] into one MR-row panel: for each k, the MR values
/// A[r0 + 0..MR, pc + k], zero past `rows`. `panel` holds `kc * MR` floats.
pub(super) fn a_panel<const MR: usize>(
    panel: &mut [f32],
    a: MatRef,
    r0: usize,
    rows: usize,
    pc: usize,
    kc: usize,
) {
    let panel = &mut panel[..kc * MR];
    if rows == MR && a.row_stride == 1 {
        // Column-major view (wgrad's dY^T): the MR values of one k are contiguous.
        for (kk, dst) in panel.chunks_exact_mut(MR).enumerate() {
            let src = (pc + kk) * a.col_stride + r0;
            let src: &[f32; MR] = a.data[src..src + MR].try_into().unwrap();
            dst.copy_from_slice(src);
        }
    } else if rows == MR && a.col_stride == 1 {
        // Row-major (forward's X, dgrad's dY): MR contiguous rows, interleaved.
        let src: [&[f32]; MR] = std::array::from_fn(|i| {
            let s = (r0 + i) * a.row_stride + pc;
            &a.data[s..s + kc]
        });
        for (kk, dst) in panel.chunks_exact_mut(MR).enumerate() {
            for i in 0..MR {
                dst[i] = src[i][kk];
            }
        }
    } else {
        a_panel_plain::<MR>(panel, a, r0, rows, pc, kc);
    }
}

/// The plain twin of `a_panel` (any strides, any `rows <= MR`).
pub(super) fn a_panel_plain<const MR: usize>(
    panel: &mut [f32],
    a: MatRef,
    r0: usize,
    rows: usize,
    pc: usize,
    kc: usize,
) {
    for kk in 0..kc {
        for i in 0..MR {
            panel[kk * MR + i] = if i < rows { a.at(r0 + i, pc + kk) } else { 0.0 };
        }
    }
}

/// Packs B[pc..pc+kc, c0..c0+cols] into one NR-column panel: for each k, the NR values
/// B[pc + k, c0 + 0..NR], zero past `cols`. `panel` holds `kc * NR` floats.
pub(super) fn b_panel<const NR: usize>(
    panel: &mut [f32],
    b: MatRef,
    pc: usize,
    kc: usize,
    c0: usize,
    cols: usize,
) {
    let panel = &mut panel[..kc * NR];
    if cols == NR && b.col_stride == 1 {
        // Row-major (dgrad's W, wgrad's X): NR contiguous values per k.
        for (kk, dst) in panel.chunks_exact_mut(NR).enumerate() {
            let src = (pc + kk) * b.row_stride + c0;
            let src: &[f32; NR] = b.data[src..src + NR].try_into().unwrap();
            dst.copy_from_slice(src);
        }
    } else if cols == NR && b.row_stride == 1 && NR.is_multiple_of(8) && super::has_avx2() {
        // Column-major view (the forward's W^T, the classifier's E^T): each column is
        // contiguous along k; transpose 8 x 8 blocks in registers.
        let full = kc - kc % 8;
        for j in (0..NR).step_by(8) {
            for kk in (0..full).step_by(8) {
                // SAFETY: AVX2 is present (checked above); the 8 columns c0+j.. hold k values
                // pc+kk..pc+kk+8 (the view was bounds-checked by the caller) and the panel rows
                // kk..kk+8 hold columns j..j+8.
                unsafe {
                    transpose8x8_avx2(
                        b.data.as_ptr().add((c0 + j) * b.col_stride + pc + kk),
                        b.col_stride,
                        panel.as_mut_ptr().add(kk * NR + j),
                        NR,
                    )
                };
            }
        }
        for kk in full..kc {
            for j in 0..NR {
                panel[kk * NR + j] = b.data[(c0 + j) * b.col_stride + pc + kk];
            }
        }
    } else {
        b_panel_plain::<NR>(panel, b, pc, kc, c0, cols);
    }
}

/// The plain twin of `b_panel` (any strides, any `cols <= NR`).
pub(super) fn b_panel_plain<const NR: usize>(
    panel: &mut [f32],
    b: MatRef,
    pc: usize,
    kc: usize,
    c0: usize,
    cols: usize,
) {
    for kk in 0..kc {
        for j in 0..NR {
            panel[kk * NR + j] = if j < cols { b.at(pc + kk, c0 + j) } else { 0.0 };
        }
    }
}

/// dst[i * ld_dst + j] = src[j * ld_src + i] for i, j < 8.
///
/// # Safety
/// AVX2 is present; the 8 source rows of 8 floats and the 8 destination rows are in bounds.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn transpose8x8_avx2(src: *const f32, ld_src: usize, dst: *mut f32, ld_dst: usize) {
    use std::arch::x86_64::*;
    let r: [__m256; 8] = std::array::from_fn(|j| _mm256_loadu_ps(src.add(j * ld_src)));
    let out = crate::cpu::simd::transpose8(r);
    for (i, v) in out.iter().enumerate() {
        _mm256_storeu_ps(dst.add(i * ld_dst), *v);
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn transpose8x8_avx2(_: *const f32, _: usize, _: *mut f32, _: usize) {
    unreachable!("has_avx2() is false off x86-64")
}
