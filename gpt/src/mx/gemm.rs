//! The MX GEMM on quantized operands (MXFP4.md section 3):
//!
//! ```text
//! C[m,n] = c · Σ_j 2^(eA[m,j] + eB[n,j] - 2) · Σ_{k in block j} (2 qA[m,k]) · (2 qB[n,k])
//! ```
//!
//! with both operands stored K-major (A: M x K, B: N x K, i.e. B^T), c = 1 (RTN) or 16/9 (SR),
//! applied once to the FP32 result. Codes times two are the integers 0, ±1, ±2, ±3, ±4, ±6, ±8,
//! ±12, so a block's dot product is an integer of magnitude <= 32·144 = 4608: the integer path.
//!
//! Two implementations, bit-identical to each other:
//! - `mx_gemm_int_reference`: the integer path as written: an i32 dot per block, converted to
//!   f32, times the power-of-two scale (exact), added to an f32 accumulator in block order.
//! - `mx_gemm`: the fast one. It runs the same arithmetic on f32 lanes: the codes-times-two are
//!   f32 integers, so every partial sum inside a block is an integer below 2^24 and exact; at the
//!   end of each block one FMA adds block_dot · scale to the accumulator — the same single
//!   rounding as the reference, because block_dot · scale is exact. (This machine's CPUs have
//!   AVX2 but no 8-bit dot instruction; f32 FMA lanes are the fastest exact integer dot here,
//!   and the loop is the sgemm micro-kernel with a per-block epilogue.)
//!
//! Work split: pack A into MR-row panels and B into NR-column panels (values 2q as f32, plus
//! per-block scales), then parallel tasks over (M block, N group) tiles; the micro-kernel keeps
//! MR x NR block sums in registers for 32 k-steps, then folds them into accumulators.
//! Exactness caveat: a scale product 2^(eA+eB-2) below 2^-149 (both blocks near the bottom of
//! E8M0's range, values below 1e-38) is 0 here and above 2^127 is inf; gradients never get there.

use super::format::{e2m1_times_two, BLOCK, SCALE_NAN};
use super::MxOperand;
use runtime::cpu::parallel_for;

/// The SR correction (4/3)^2 applied to the f32 result.
pub const SR_FACTOR: f32 = 16.0 / 9.0;

/// 2^(byte - 127 + shift) as f32 (NaN for a NaN block); exact down to 2^-149.
#[inline]
fn scale_f32(byte: u8, shift: i32) -> f32 {
    if byte == SCALE_NAN {
        return f32::NAN;
    }
    let p = byte as i32 - 127 + shift;
    if p < -149 {
        0.0
    } else if p > 127 {
        f32::INFINITY
    } else {
        super::quantize::exp2i(p)
    }
}

fn check_shapes(a: &MxOperand, b: &MxOperand, c: &[f32], ldc: usize) {
    assert_eq!(a.k, b.k, "mx_gemm: A has K = {}, B has K = {}", a.k, b.k);
    assert!(
        a.k % BLOCK == 0,
        "mx_gemm: K = {} is not a multiple of {BLOCK}",
        a.k
    );
    assert!(ldc >= b.rows);
    if a.rows > 0 && b.rows > 0 {
        assert!(
            (a.rows - 1) * ldc + b.rows <= c.len(),
            "mx_gemm: C too small"
        );
    }
}

#[inline]
fn store(c: &mut f32, v: f32, accumulate: bool) {
    *c = if accumulate { *c + v } else { v };
}

/// The integer path, plainly: i32 dot per block, exact scaling, f32 accumulation in block order.
pub fn mx_gemm_int_reference(
    a: &MxOperand,
    b: &MxOperand,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    sr: bool,
) {
    check_shapes(a, b, c, ldc);
    let nblk = a.k / BLOCK;
    for m in 0..a.rows {
        for n in 0..b.rows {
            let mut acc = 0.0f32;
            for j in 0..nblk {
                let (qa, qb) = (
                    &a.codes[m * a.k + j * BLOCK..][..BLOCK],
                    &b.codes[n * b.k + j * BLOCK..][..BLOCK],
                );
                let dot: i32 = qa
                    .iter()
                    .zip(qb)
                    .map(|(&x, &y)| e2m1_times_two(x) as i32 * e2m1_times_two(y) as i32)
                    .sum();
                let s =
                    scale_f32(a.scales[m * nblk + j], 0) * scale_f32(b.scales[n * nblk + j], -2);
                acc += dot as f32 * s;
            }
            let r = if sr { acc * SR_FACTOR } else { acc };
            store(&mut c[m * ldc + n], r, accumulate);
        }
    }
}

/// The exact value of the formula in f64 (for tests): no rounding but the final f64 sum.
pub fn mx_gemm_exact_f64(a: &MxOperand, b: &MxOperand, sr: bool) -> Vec<f64> {
    let nblk = a.k / BLOCK;
    let mut out = vec![0.0f64; a.rows * b.rows];
    for m in 0..a.rows {
        for n in 0..b.rows {
            let mut s = 0.0f64;
            for k in 0..a.k {
                let j = k / BLOCK;
                let va = super::quantize::dequantize(
                    a.codes[m * a.k + k],
                    a.scales[m * nblk + j],
                    false,
                );
                let vb = super::quantize::dequantize(
                    b.codes[n * b.k + k],
                    b.scales[n * nblk + j],
                    false,
                );
                s += va * vb;
            }
            out[m * b.rows + n] = if sr { s * 16.0 / 9.0 } else { s };
        }
    }
    out
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kernel {
    Avx2,
    Portable,
}

impl Kernel {
    fn detect() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                return Kernel::Avx2;
            }
        }
        Kernel::Portable
    }
    fn tile(self) -> (usize, usize) {
        match self {
            Kernel::Avx2 => (6, 16),
            Kernel::Portable => (4, 16),
        }
    }
}

/// Operand panels: `vals[p][k][r]` = 2q of row p*R + r at k (0 past the edge), and
/// `scales[p][j][r]` = the row's block-j scale as f32 (times 2^shift).
#[derive(Default)]
struct Panels {
    r: usize,
    vals: Vec<f32>,
    scales: Vec<f32>,
}

/// Packs `op` into `into`, reusing its buffers (a 124M step runs 96 of these GEMMs on
/// multi-MB operands; fresh buffers cost page faults every call). Every element is rewritten,
/// the padding rows of an edge panel with zeros.
fn pack(op: &MxOperand, r: usize, shift: i32, into: &mut Panels) {
    let (rows, k) = (op.rows, op.k);
    let nblk = k / BLOCK;
    let np = rows.div_ceil(r);
    into.r = r;
    let (vals, scales) = (&mut into.vals, &mut into.scales);
    super::resize_for_overwrite(vals, np * k * r);
    super::resize_for_overwrite(scales, np * nblk * r);
    let lut: [f32; 16] = std::array::from_fn(|c| e2m1_times_two(c as u8) as f32);
    runtime::cpu::parallel_rows_mut(vals, k * r, 1, |ps, chunk| {
        for (pi, p) in ps.enumerate() {
            let panel = &mut chunk[pi * k * r..(pi + 1) * k * r];
            let live = r.min(rows - p * r);
            if live < r {
                panel.fill(0.0);
            }
            for i in 0..live {
                let row = &op.codes[(p * r + i) * k..(p * r + i + 1) * k];
                for (kk, &code) in row.iter().enumerate() {
                    panel[kk * r + i] = lut[(code & 0xF) as usize];
                }
            }
        }
    });
    for p in 0..np {
        let live = r.min(rows - p * r);
        if live < r {
            scales[p * nblk * r..(p + 1) * nblk * r].fill(0.0);
        }
        for i in 0..live {
            for j in 0..nblk {
                scales[(p * nblk + j) * r + i] =
                    scale_f32(op.scales[(p * r + i) * nblk + j], shift);
            }
        }
    }
}

thread_local! {
    /// The calling thread's A and B panels, kept between GEMMs (see `pack`).
    static PANELS: std::cell::RefCell<(Panels, Panels)> = const {
        std::cell::RefCell::new((
            Panels { r: 0, vals: Vec::new(), scales: Vec::new() },
            Panels { r: 0, vals: Vec::new(), scales: Vec::new() },
        ))
    };
}

#[derive(Clone, Copy)]
struct CPtr(*mut f32);
unsafe impl Send for CPtr {}
unsafe impl Sync for CPtr {}
impl CPtr {
    fn get(&self) -> *mut f32 {
        self.0
    }
}

/// The fast MX GEMM: C (a.rows x b.rows, leading dim ldc) = or += c · A·B^T per the formula.
pub fn mx_gemm(
    a: &MxOperand,
    b: &MxOperand,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    sr: bool,
) {
    mx_gemm_impl(Kernel::detect(), a, b, c, ldc, accumulate, sr)
}

/// `mx_gemm` forced onto the portable kernel (tests compare it with the SIMD one).
#[cfg(test)]
pub(crate) fn mx_gemm_portable(
    a: &MxOperand,
    b: &MxOperand,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    sr: bool,
) {
    mx_gemm_impl(Kernel::Portable, a, b, c, ldc, accumulate, sr)
}

#[allow(clippy::too_many_arguments)]
fn mx_gemm_impl(
    kern: Kernel,
    a: &MxOperand,
    b: &MxOperand,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    sr: bool,
) {
    check_shapes(a, b, c, ldc);
    let (m, n, k) = (a.rows, b.rows, a.k);
    if m == 0 || n == 0 {
        return;
    }
    let (mr, nr) = kern.tile();
    // Taken out of the thread's cache (a nested call finds it empty) and put back after.
    let (mut pa, mut pb) = PANELS.with(|p| std::mem::take(&mut *p.borrow_mut()));
    pack(a, mr, 0, &mut pa);
    pack(b, nr, -2, &mut pb);
    let nblk = k / BLOCK;
    let (m_panels, n_panels) = (m.div_ceil(mr), n.div_ceil(nr));
    // Tasks: 8 A panels x 8 B panels, so each task reuses its panels from cache.
    const GROUP: usize = 8;
    let (mg, ng) = (m_panels.div_ceil(GROUP), n_panels.div_ceil(GROUP));
    let cp = CPtr(c.as_mut_ptr());
    let factor = if sr { SR_FACTOR } else { 1.0 };
    parallel_for(mg * ng, 1, |tasks| {
        let mut acc = vec![0.0f32; mr * nr];
        for t in tasks {
            let (gm, gn) = (t / ng, t % ng);
            for ip in gm * GROUP..((gm + 1) * GROUP).min(m_panels) {
                for jp in gn * GROUP..((gn + 1) * GROUP).min(n_panels) {
                    let av = &pa.vals[ip * k * mr..(ip + 1) * k * mr];
                    let asc = &pa.scales[ip * nblk * mr..(ip + 1) * nblk * mr];
                    let bv = &pb.vals[jp * k * nr..(jp + 1) * k * nr];
                    let bsc = &pb.scales[jp * nblk * nr..(jp + 1) * nblk * nr];
                    acc.fill(0.0);
                    // SAFETY: kernels read within the panels (lengths checked by slicing).
                    unsafe { tile_kernel(kern, nblk, av, asc, bv, bsc, &mut acc) };
                    let (i0, j0) = (ip * mr, jp * nr);
                    for i in 0..mr.min(m - i0) {
                        for j in 0..nr.min(n - j0) {
                            // SAFETY: (i0+i, j0+j) is inside C and owned by this task.
                            let dst = unsafe { &mut *cp.get().add((i0 + i) * ldc + j0 + j) };
                            store(dst, acc[i * nr + j] * factor, accumulate);
                        }
                    }
                }
            }
        }
    });
    debug_assert_eq!(pa.r, mr);
    debug_assert_eq!(pb.r, nr);
    PANELS.with(|p| *p.borrow_mut() = (pa, pb));
}

#[allow(clippy::too_many_arguments)]
unsafe fn tile_kernel(
    kern: Kernel,
    nblk: usize,
    av: &[f32],
    asc: &[f32],
    bv: &[f32],
    bsc: &[f32],
    acc: &mut [f32],
) {
    match kern {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => tile_avx2(nblk, av, asc, bv, bsc, acc),
        _ => tile_portable::<4, 16>(nblk, av, asc, bv, bsc, acc),
    }
}

/// Portable tile: MR x NR block sums, folded into `acc` with one multiply-add per block.
#[inline(always)]
fn tile_portable<const MR: usize, const NR: usize>(
    nblk: usize,
    av: &[f32],
    asc: &[f32],
    bv: &[f32],
    bsc: &[f32],
    acc: &mut [f32],
) {
    for j in 0..nblk {
        let mut blk = [[0.0f32; NR]; MR];
        for kk in 0..BLOCK {
            let k = j * BLOCK + kk;
            let a: &[f32; MR] = av[k * MR..(k + 1) * MR].try_into().unwrap();
            let b: &[f32; NR] = bv[k * NR..(k + 1) * NR].try_into().unwrap();
            for i in 0..MR {
                for jj in 0..NR {
                    blk[i][jj] += a[i] * b[jj]; // exact: integers below 2^24
                }
            }
        }
        for i in 0..MR {
            for jj in 0..NR {
                let s = asc[j * MR + i] * bsc[j * NR + jj];
                acc[i * NR + jj] = blk[i][jj].mul_add(s, acc[i * NR + jj]);
            }
        }
    }
}

/// AVX2 + FMA tile, 6 x 16: twelve ymm block sums, per k two B loads, six broadcasts, twelve
/// FMAs; after 32 k-steps, fold into the accumulators: acc += blk · (sA[i] · sB).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2(
    nblk: usize,
    av: &[f32],
    asc: &[f32],
    bv: &[f32],
    bsc: &[f32],
    acc: &mut [f32],
) {
    use std::arch::x86_64::*;
    const MR: usize = 6;
    const NR: usize = 16;
    assert!(av.len() >= nblk * BLOCK * MR && bv.len() >= nblk * BLOCK * NR && acc.len() >= MR * NR);
    assert!(asc.len() >= nblk * MR && bsc.len() >= nblk * NR);
    let (a, b) = (av.as_ptr(), bv.as_ptr());
    let accp = acc.as_mut_ptr();
    for j in 0..nblk {
        let mut blk = [_mm256_setzero_ps(); 2 * MR];
        for kk in 0..BLOCK {
            let k = j * BLOCK + kk;
            let b0 = _mm256_loadu_ps(b.add(k * NR));
            let b1 = _mm256_loadu_ps(b.add(k * NR + 8));
            for i in 0..MR {
                let ai = _mm256_broadcast_ss(&*a.add(k * MR + i));
                blk[2 * i] = _mm256_fmadd_ps(ai, b0, blk[2 * i]);
                blk[2 * i + 1] = _mm256_fmadd_ps(ai, b1, blk[2 * i + 1]);
            }
        }
        let s0 = _mm256_loadu_ps(bsc.as_ptr().add(j * NR));
        let s1 = _mm256_loadu_ps(bsc.as_ptr().add(j * NR + 8));
        for i in 0..MR {
            let sa = _mm256_broadcast_ss(&asc[j * MR + i]);
            let p = accp.add(i * NR);
            _mm256_storeu_ps(
                p,
                _mm256_fmadd_ps(blk[2 * i], _mm256_mul_ps(sa, s0), _mm256_loadu_ps(p)),
            );
            _mm256_storeu_ps(
                p.add(8),
                _mm256_fmadd_ps(
                    blk[2 * i + 1],
                    _mm256_mul_ps(sa, s1),
                    _mm256_loadu_ps(p.add(8)),
                ),
            );
        }
    }
}
