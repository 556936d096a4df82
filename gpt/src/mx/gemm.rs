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
//! Implementations, all bit-identical to each other (tested on random shapes and codes):
//! - `mx_gemm_int_reference`: the integer path as written: an i32 dot per block, converted to
//!   f32, times the power-of-two scale (exact), added to an f32 accumulator in block order.
//! - `mx_gemm`, the fast one, with three kernels: on AVX2 the 8-bit integer tile
//!   (`tile_avx2_int`: `vpmaddubsw` on codes x 2 with an offset, i16 block sums, one i32
//!   join per block); its twin on f32 lanes (`tile_avx2`, the previous kernel: codes x 2 as f32,
//!   every partial sum an integer below 2^24, so exact); and a portable f32 tile. Each ends a
//!   block with one FMA acc += block_dot · (sA · sB): the reference's single rounding, because
//!   block_dot · scale is exact, and the blocks in the same order. Only the cross-block f32
//!   order decides bits, and every kernel keeps the reference's.
//!
//! Work split: pack A into MR-row panels and B into NR-column panels (f32 values, or bytes
//! for the integer kernel, plus per-block scales), then parallel tasks over (8 A panels x 8 B
//! panels) tiles; the micro-kernel keeps MR x NR block sums in registers for one 32-block,
//! then folds them into f32 accumulators. Cost: 2·M·N·K integer ops on (M + N)·K bytes of codes
//! (each byte reused N or M times from L1/L2): compute-bound. The integer kernel does 384
//! products per 12 `vpmaddubsw` (2 per cycle on Zen 3: ~64 products a cycle in the loop, less
//! the per-block epilogue), the f32 one 96 per 12 FMAs.
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
pub(crate) enum Kernel {
    /// 8-bit integer lanes (`vpmaddubsw`): the default where the CPU has AVX2.
    Avx2Int,
    /// f32 lanes (FMA), the previous kernel, kept as a twin (tests run it).
    #[cfg_attr(not(test), allow(dead_code))]
    Avx2F32,
    Portable,
}

impl Kernel {
    fn detect() -> Kernel {
        if crate::cpu::simd::avx2_fma() {
            Kernel::Avx2Int
        } else {
            Kernel::Portable
        }
    }
    fn tile(self) -> (usize, usize) {
        match self {
            Kernel::Avx2Int | Kernel::Avx2F32 => (6, 16),
            Kernel::Portable => (4, 16),
        }
    }
}

/// Operand panels: `vals[p][k][r]` = 2q of row p*R + r at k (0 past the edge), and
/// `scales[p][j][r]` = the row's block-j scale as f32 (times 2^shift). The integer kernel
/// uses `bytes` and `corr` instead of `vals` (see `pack_int`).
#[derive(Default)]
struct Panels {
    r: usize,
    vals: Vec<f32>,
    bytes: Vec<u8>,
    corr: Vec<i32>,
    scales: Vec<f32>,
}

/// Packs `op` into `into`, reusing its buffers (a 124M step runs 96 of these GEMMs on
/// multi-MB operands; fresh buffers cost page faults every call). Every element is rewritten,
/// the padding rows of an edge panel with zeros.
fn pack(op: &MxOperand, r: usize, shift: i32, into: &mut Panels) {
    let (rows, k) = (op.rows, op.k);
    let np = rows.div_ceil(r);
    into.r = r;
    let (vals, scales) = (&mut into.vals, &mut into.scales);
    super::resize_for_overwrite(vals, np * k * r);
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
    pack_scales(op, r, shift, scales);
}

/// Packs `op` for the integer kernel: `bytes[p][q][i][0..4]` = 2q + `offset` of row p*R + i at
/// k = 4q..4q+4 (a kernel load of 4·R bytes holds quad q of every row: one `vpmaddubsw`
/// operand), zero past the edge. With `corr`, also `corr[p][j][i]` = 12 · Σ_{k in block j} 2q,
/// the term the A side's offset of 12 adds to a block dot (see `tile_avx2_int`).
#[cfg(target_arch = "x86_64")]
fn pack_int(op: &MxOperand, r: usize, shift: i32, offset: i8, corr: bool, into: &mut Panels) {
    let (rows, k) = (op.rows, op.k);
    let nblk = k / BLOCK;
    let np = rows.div_ceil(r);
    into.r = r;
    super::resize_for_overwrite(&mut into.bytes, np * k * r);
    if corr {
        super::resize_for_overwrite(&mut into.corr, np * nblk * r);
    }
    let cp = SendPtr(into.corr.as_mut_ptr());
    runtime::cpu::parallel_rows_mut(&mut into.bytes, k * r, 1, |ps, chunk| {
        for (pi, p) in ps.enumerate() {
            let panel = &mut chunk[pi * k * r..(pi + 1) * k * r];
            let live = r.min(rows - p * r);
            let codes = &op.codes[p * r * k..(p * r + live) * k];
            // SAFETY: panel p's corrections (nblk·r from p·nblk·r) belong to this task; the
            // CPU has AVX2 (this kernel is only chosen then).
            unsafe {
                let c = corr
                    .then(|| std::slice::from_raw_parts_mut(cp.get().add(p * nblk * r), nblk * r));
                pack_int_panel(panel, c, codes, live, r, k, offset);
            }
        }
    });
    pack_scales(op, r, shift, &mut into.scales);
}

/// One panel of `pack_int`: per row and block, 32 codes mapped through a 16-entry table with
/// `vpshufb`, scattered as eight 4-byte words; the block's correction from the same register.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn pack_int_panel(
    panel: &mut [u8],
    mut corr: Option<&mut [i32]>,
    codes: &[u8],
    live: usize,
    r: usize,
    k: usize,
    offset: i8,
) {
    use std::arch::x86_64::*;
    assert!(panel.len() == k * r && codes.len() == live * k && live <= r);
    if live < r {
        panel.fill(0);
        if let Some(c) = corr.as_deref_mut() {
            c.fill(0);
        }
    }
    let t: [i8; 16] = std::array::from_fn(|c| e2m1_times_two(c as u8) + offset);
    let lut = _mm256_broadcastsi128_si256(_mm_loadu_si128(t.as_ptr() as *const __m128i));
    let (low4, twelve, ones) = (
        _mm256_set1_epi8(0x0F),
        _mm256_set1_epi8(12),
        _mm256_set1_epi16(1),
    );
    let out = panel.as_mut_ptr();
    for i in 0..live {
        for j in 0..k / BLOCK {
            let src = _mm256_loadu_si256(codes.as_ptr().add(i * k + j * BLOCK) as *const __m256i);
            let v = _mm256_shuffle_epi8(lut, _mm256_and_si256(src, low4));
            let words: [u32; 8] = std::mem::transmute(v);
            for (q, w) in words.iter().enumerate() {
                let at = (j * 8 + q) * 4 * r + 4 * i;
                (out.add(at) as *mut u32).write_unaligned(*w);
            }
            if let Some(c) = corr.as_deref_mut() {
                // 12 · (sum of the 32 signed values): pairs in i16, then i32, then across lanes.
                let s = _mm256_madd_epi16(_mm256_maddubs_epi16(twelve, v), ones);
                let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
                let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
                let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
                c[j * r + i] = _mm_cvtsi128_si32(s);
            }
        }
    }
}

#[derive(Clone, Copy)]
struct SendPtr(*mut i32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(&self) -> *mut i32 {
        self.0
    }
}

/// `scales[p][j][r]` = row p*R + r's block-j scale as f32 times 2^shift (0 past the edge).
fn pack_scales(op: &MxOperand, r: usize, shift: i32, scales: &mut Vec<f32>) {
    let nblk = op.k / BLOCK;
    let np = op.rows.div_ceil(r);
    super::resize_for_overwrite(scales, np * nblk * r);
    for p in 0..np {
        let live = r.min(op.rows - p * r);
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
            Panels { r: 0, vals: Vec::new(), bytes: Vec::new(), corr: Vec::new(), scales: Vec::new() },
            Panels { r: 0, vals: Vec::new(), bytes: Vec::new(), corr: Vec::new(), scales: Vec::new() },
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

/// The kernels this CPU can run (tests compare each with the reference).
#[cfg(test)]
pub(crate) fn kernels_here() -> Vec<Kernel> {
    let mut k = vec![Kernel::Portable];
    if crate::cpu::simd::avx2_fma() {
        k.extend([Kernel::Avx2F32, Kernel::Avx2Int]);
    }
    k
}

/// `mx_gemm` on a chosen kernel (for tests).
#[cfg(test)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn mx_gemm_with(
    kern: Kernel,
    a: &MxOperand,
    b: &MxOperand,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    sr: bool,
) {
    mx_gemm_impl(kern, a, b, c, ldc, accumulate, sr)
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
    match kern {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2Int => {
            pack_int(a, mr, 0, 12, false, &mut pa);
            pack_int(b, nr, -2, 0, true, &mut pb);
        }
        _ => {
            pack(a, mr, 0, &mut pa);
            pack(b, nr, -2, &mut pb);
        }
    }
    let nblk = k / BLOCK;
    let (m_panels, n_panels) = (m.div_ceil(mr), n.div_ceil(nr));
    // Tasks: 8 A panels x 8 B panels, so each task reuses its panels from cache.
    const GROUP: usize = 8;
    let (mg, ng) = (m_panels.div_ceil(GROUP), n_panels.div_ceil(GROUP));
    let cp = CPtr(c.as_mut_ptr());
    let factor = if sr { SR_FACTOR } else { 1.0 };
    let (rpa, rpb) = (&pa, &pb);
    parallel_for(mg * ng, 1, |tasks| {
        let mut acc = [0.0f32; 96];
        let acc = &mut acc[..mr * nr];
        for t in tasks {
            let (gm, gn) = (t / ng, t % ng);
            for ip in gm * GROUP..((gm + 1) * GROUP).min(m_panels) {
                for jp in gn * GROUP..((gn + 1) * GROUP).min(n_panels) {
                    acc.fill(0.0);
                    // SAFETY: kernels read within the panels (lengths checked by slicing).
                    unsafe { tile_kernel(kern, nblk, k, ip, jp, rpa, rpb, acc) };
                    let (i0, j0) = (ip * mr, jp * nr);
                    let tile = Tile {
                        rows: mr.min(m - i0),
                        cols: nr.min(n - j0),
                        nr,
                        ldc,
                    };
                    // SAFETY: the tile's rows and columns are inside C and owned by this task.
                    unsafe {
                        store_tile(
                            kern,
                            acc,
                            &tile,
                            cp.get().add(i0 * ldc + j0),
                            factor,
                            accumulate,
                        )
                    };
                }
            }
        }
    });
    debug_assert_eq!(pa.r, mr);
    debug_assert_eq!(pb.r, nr);
    PANELS.with(|p| *p.borrow_mut() = (pa, pb));
}

/// Where a finished tile goes: `rows` x `cols` of C (leading dim `ldc`) from an MR x `nr`
/// accumulator.
struct Tile {
    rows: usize,
    cols: usize,
    nr: usize,
    ldc: usize,
}

/// The MR x NR tile (A panel `ip`, B panel `jp`) of the kernel `kern` into `acc`.
#[allow(clippy::too_many_arguments)]
unsafe fn tile_kernel(
    kern: Kernel,
    nblk: usize,
    k: usize,
    ip: usize,
    jp: usize,
    pa: &Panels,
    pb: &Panels,
    acc: &mut [f32],
) {
    let (mr, nr) = (pa.r, pb.r);
    let asc = &pa.scales[ip * nblk * mr..(ip + 1) * nblk * mr];
    let bsc = &pb.scales[jp * nblk * nr..(jp + 1) * nblk * nr];
    match kern {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2Int => {
            let aq = &pa.bytes[ip * k * mr..(ip + 1) * k * mr];
            let bq = &pb.bytes[jp * k * nr..(jp + 1) * k * nr];
            let corr = &pb.corr[jp * nblk * nr..(jp + 1) * nblk * nr];
            tile_avx2_int(nblk, aq, asc, bq, corr, bsc, acc)
        }
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2F32 => {
            let av = &pa.vals[ip * k * mr..(ip + 1) * k * mr];
            let bv = &pb.vals[jp * k * nr..(jp + 1) * k * nr];
            tile_avx2(nblk, av, asc, bv, bsc, acc)
        }
        _ => {
            let av = &pa.vals[ip * k * mr..(ip + 1) * k * mr];
            let bv = &pb.vals[jp * k * nr..(jp + 1) * k * nr];
            tile_portable::<4, 16>(nblk, av, asc, bv, bsc, acc)
        }
    }
}

/// C[i][j] = (or +=) acc[i][j] · factor over the tile at `c`: the same f32 operations as
/// `store`, 8 lanes at a time for a full-width tile on AVX2.
unsafe fn store_tile(
    kern: Kernel,
    acc: &[f32],
    t: &Tile,
    c: *mut f32,
    factor: f32,
    accumulate: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if kern != Kernel::Portable && t.nr == 16 && t.cols == 16 {
        return store_tile_avx2(acc, t, c, factor, accumulate);
    }
    let _ = kern;
    for i in 0..t.rows {
        for j in 0..t.cols {
            store(
                &mut *c.add(i * t.ldc + j),
                acc[i * t.nr + j] * factor,
                accumulate,
            );
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn store_tile_avx2(acc: &[f32], t: &Tile, c: *mut f32, factor: f32, accumulate: bool) {
    use std::arch::x86_64::*;
    assert!(acc.len() >= t.rows * 16);
    let f = _mm256_set1_ps(factor);
    for i in 0..t.rows {
        for h in [0, 8] {
            let v = _mm256_mul_ps(_mm256_loadu_ps(acc.as_ptr().add(i * 16 + h)), f);
            let p = c.add(i * t.ldc + h);
            let v = if accumulate {
                _mm256_add_ps(_mm256_loadu_ps(p), v)
            } else {
                v
            };
            _mm256_storeu_ps(p, v);
        }
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

/// AVX2 integer tile, 6 x 16 (the default kernel). Codes times two are integers in [-12, 12];
/// A is packed as 2q + 12 (unsigned, <= 24) and B as 2q (signed), so `vpmaddubsw` of a
/// broadcast A quad (4 k of one row) and a B register (4 k of 8 columns) gives per i16 lane
/// the exact sum of two products, |.| <= 2 · 24 · 12. Twelve i16 accumulators (6 rows x 16
/// columns x 2 lanes) add 8 quads = one 32-block: each lane sums 16 products, |.| <= 4608 <
/// 2^15, exact. At the block's end `vpmaddwd` by 1 joins a column's two lanes in i32, minus the
/// offset's 12 · Σ 2qB (packed per column), is the block's exact integer dot, converted to
/// f32 (exact, < 2^24) and folded in exactly as `tile_avx2` does: acc += dot · (sA · sB) in
/// one FMA. Same dot, same scale product, same FMA, in block order: the same bits.
/// Per quad: 2 loads, 6 broadcasts, 12 `vpmaddubsw` + 12 `vpaddw` for 384 products (the f32
/// kernel needs 48 FMAs for them).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2_int(
    nblk: usize,
    aq: &[u8],
    asc: &[f32],
    bq: &[u8],
    bcorr: &[i32],
    bsc: &[f32],
    acc: &mut [f32],
) {
    use std::arch::x86_64::*;
    const MR: usize = 6;
    const NR: usize = 16;
    assert!(aq.len() >= nblk * BLOCK * MR && bq.len() >= nblk * BLOCK * NR && acc.len() >= MR * NR);
    assert!(asc.len() >= nblk * MR && bsc.len() >= nblk * NR && bcorr.len() >= nblk * NR);
    let (a, b) = (aq.as_ptr(), bq.as_ptr());
    let accp = acc.as_mut_ptr();
    let ones = _mm256_set1_epi16(1);
    for j in 0..nblk {
        let mut s = [_mm256_setzero_si256(); 2 * MR];
        for q in j * 8..(j + 1) * 8 {
            let bp = b.add(q * 4 * NR) as *const __m256i;
            let (b0, b1) = (_mm256_loadu_si256(bp), _mm256_loadu_si256(bp.add(1)));
            let ap = a.add(q * 4 * MR) as *const i32;
            for i in 0..MR {
                let ai = _mm256_set1_epi32(ap.add(i).read_unaligned());
                s[2 * i] = _mm256_add_epi16(s[2 * i], _mm256_maddubs_epi16(ai, b0));
                s[2 * i + 1] = _mm256_add_epi16(s[2 * i + 1], _mm256_maddubs_epi16(ai, b1));
            }
        }
        let cp = bcorr.as_ptr().add(j * NR) as *const __m256i;
        let (c0, c1) = (_mm256_loadu_si256(cp), _mm256_loadu_si256(cp.add(1)));
        let s0 = _mm256_loadu_ps(bsc.as_ptr().add(j * NR));
        let s1 = _mm256_loadu_ps(bsc.as_ptr().add(j * NR + 8));
        for i in 0..MR {
            let d0 = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_madd_epi16(s[2 * i], ones), c0));
            let d1 =
                _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_madd_epi16(s[2 * i + 1], ones), c1));
            let sa = _mm256_broadcast_ss(&asc[j * MR + i]);
            let p = accp.add(i * NR);
            _mm256_storeu_ps(
                p,
                _mm256_fmadd_ps(d0, _mm256_mul_ps(sa, s0), _mm256_loadu_ps(p)),
            );
            _mm256_storeu_ps(
                p.add(8),
                _mm256_fmadd_ps(d1, _mm256_mul_ps(sa, s1), _mm256_loadu_ps(p.add(8))),
            );
        }
    }
}
