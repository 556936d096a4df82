//! f32 GEMM on strided views: `C = A·B` or `C += A·B`. It carries every matmul of the CPU
//! backend (forward `X·W^T`, dgrad `dY·W`, wgrad `dY^T·X`) and the bf16 mode of the MX tools.
//!
//! The structure is BLIS's:
//!
//! ```text
//! for jc in N by NC:                      B block  [KC x NC] packed once, shared by all threads
//!   for pc in K by KC:
//!     pack B[pc.., jc..] into NR-wide panels
//!     parallel for (ic, jr-group) tiles:  each task packs its A block [MC x KC] into MR-tall panels
//!       for each NR panel in the group, for each MR panel: micro-kernel MR x NR over KC
//! ```
//!
//! Packing absorbs any strides or transposes, so the micro-kernel always streams two contiguous
//! panels: MR values of A and NR values of B per k step, MR x NR accumulators in registers
//! (8 x 32 = 16 zmm registers on AVX-512). The sum over K for every C element runs in the same
//! order (KC blocks in order, k in order within a block) whatever the thread count, so results
//! are bit-identical across machines with the same SIMD path and any number of threads.
//!
//! Cost: 2·M·N·K FLOPs; A is packed N/NC times and B once, so memory traffic is small next to
//! the FLOPs for all but skinny shapes (K or M of a few dozen), where packing dominates.

use runtime::cpu::parallel_for;
use std::cell::RefCell;
use std::sync::OnceLock;

/// A read-only strided matrix view: element (r, c) is `data[r * row_stride + c * col_stride]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major `rows x cols` matrix.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        MatRef {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }
    /// The transpose of a row-major `cols x rows` matrix, viewed as `rows x cols`.
    pub fn transposed(data: &'a [f32], rows: usize, cols: usize) -> Self {
        MatRef {
            data,
            rows,
            cols,
            row_stride: 1,
            col_stride: rows,
        }
    }
    #[inline]
    pub fn at(&self, r: usize, c: usize) -> f32 {
        self.data[r * self.row_stride + c * self.col_stride]
    }
    fn check(&self, what: &str) {
        if self.rows > 0 && self.cols > 0 {
            let last = (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride;
            assert!(
                last < self.data.len(),
                "sgemm: {what} view ({}x{}, strides {}/{}) reaches element {last} of {}",
                self.rows,
                self.cols,
                self.row_stride,
                self.col_stride,
                self.data.len()
            );
        }
    }
}

/// Largest micro-tile of any kernel (for the edge-tile buffer).
const MR_MAX: usize = 8;
const NR_MAX: usize = 32;
const KC: usize = 256;
const MC: usize = 64;
const NC: usize = 4096;
/// Columns per parallel task along N.
const JR_COLUMNS: usize = 256;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Simd {
    Avx512,
    Avx2Fma,
    Portable,
}

impl Simd {
    /// Micro-tile (MR rows, NR columns): as many accumulators as the register file holds with
    /// room for the B vectors and one A broadcast (AVX-512: 16 of 32 zmm; AVX2: 12 of 16 ymm).
    fn tile(self) -> (usize, usize) {
        match self {
            Simd::Avx512 => (8, 32),
            Simd::Avx2Fma => (6, 16),
            Simd::Portable => (4, 16),
        }
    }
}

fn simd() -> Simd {
    static S: OnceLock<Simd> = OnceLock::new();
    *S.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::env::var_os("MXGPT_NO_AVX512").is_none() && is_x86_feature_detected!("avx512f")
            {
                return Simd::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Simd::Avx2Fma;
            }
        }
        Simd::Portable
    })
}

thread_local! {
    static PACK_A: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static PACK_B: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `C = A·B` (or `C += A·B` when `accumulate`), C row-major `a.rows x b.cols` with leading
/// dimension `ldc`.
pub fn sgemm(a: MatRef, b: MatRef, c: &mut [f32], ldc: usize, accumulate: bool) {
    sgemm_with_threads(a, b, c, ldc, accumulate, runtime::cpu::threads())
}

#[derive(Clone, Copy)]
struct CPtr(*mut f32);
unsafe impl Send for CPtr {}
unsafe impl Sync for CPtr {}

impl CPtr {
    // A method (not field access) so closures capture the Send + Sync wrapper, not the pointer.
    fn get(&self) -> *mut f32 {
        self.0
    }
}

/// `sgemm` with an explicit thread count (tests use it to show results do not depend on it).
pub fn sgemm_with_threads(
    a: MatRef,
    b: MatRef,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    threads: usize,
) {
    let (m, n, k) = (a.rows, b.cols, a.cols);
    assert_eq!(
        a.cols, b.rows,
        "sgemm: A is {}x{}, B is {}x{}",
        a.rows, a.cols, b.rows, b.cols
    );
    assert!(ldc >= n, "sgemm: ldc {ldc} < N {n}");
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        (m - 1) * ldc + n <= c.len(),
        "sgemm: C ({} floats) too small for {m}x{n} with ldc {ldc}",
        c.len()
    );
    a.check("A");
    b.check("B");
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                c[r * ldc..r * ldc + n].fill(0.0);
            }
        }
        return;
    }
    let kind = simd();
    let (mr_t, nr_t) = kind.tile();
    let jr_group = JR_COLUMNS / nr_t;
    let cp = CPtr(c.as_mut_ptr());
    PACK_B.with(|pb| {
        let mut pb = pb.borrow_mut();
        for jc in (0..n).step_by(NC) {
            let nc = NC.min(n - jc);
            let n_panels = nc.div_ceil(nr_t);
            for pc in (0..k).step_by(KC) {
                let kc = KC.min(k - pc);
                pb.resize(n_panels * nr_t * kc, 0.0);
                pack_b(&mut pb, b, pc, kc, jc, nc, nr_t, threads);
                let packed_b: &[f32] = &pb;
                let overwrite = !accumulate && pc == 0;
                let m_blocks = m.div_ceil(MC);
                let j_groups = n_panels.div_ceil(jr_group);
                let tasks = m_blocks * j_groups;
                let work = |range: std::ops::Range<usize>| {
                    PACK_A.with(|pa| {
                        let mut pa = pa.borrow_mut();
                        let mut packed_for = usize::MAX;
                        for task in range {
                            let (ib, jg) = (task / j_groups, task % j_groups);
                            let ic = ib * MC;
                            let mc = MC.min(m - ic);
                            if packed_for != ib {
                                pa.resize(mc.div_ceil(mr_t) * mr_t * kc, 0.0);
                                pack_a(&mut pa, a, ic, mc, pc, kc, mr_t);
                                packed_for = ib;
                            }
                            for jp in jg * jr_group..((jg + 1) * jr_group).min(n_panels) {
                                let j0 = jc + jp * nr_t;
                                let nr = nr_t.min(n - j0);
                                let bpanel = &packed_b[jp * nr_t * kc..(jp + 1) * nr_t * kc];
                                for ip in 0..mc.div_ceil(mr_t) {
                                    let i0 = ic + ip * mr_t;
                                    let mr = mr_t.min(ic + mc - i0);
                                    let apanel = &pa[ip * mr_t * kc..(ip + 1) * mr_t * kc];
                                    // SAFETY: tile (i0.., j0..) of C lies inside C (checked above)
                                    // and belongs to this task only: tasks own disjoint
                                    // (M block, N group) tiles.
                                    unsafe {
                                        micro_tile(
                                            kind,
                                            kc,
                                            apanel,
                                            bpanel,
                                            cp.get().add(i0 * ldc + j0),
                                            ldc,
                                            mr,
                                            nr,
                                            overwrite,
                                        )
                                    };
                                }
                            }
                        }
                    })
                };
                if threads <= 1 || tasks == 1 {
                    work(0..tasks);
                } else {
                    parallel_for_n(tasks, threads, &work);
                }
            }
        }
    });
}

/// `parallel_for` with an explicit worker count (the runtime's helper uses the global count).
fn parallel_for_n(n: usize, threads: usize, f: &(dyn Fn(std::ops::Range<usize>) + Sync)) {
    if threads == runtime::cpu::threads() {
        return parallel_for(n, 1, f);
    }
    let chunks = threads.min(n);
    std::thread::scope(|s| {
        for i in 0..chunks {
            let r = (n * i / chunks)..(n * (i + 1) / chunks);
            s.spawn(move || f(r));
        }
    });
}

/// Packs A[ic..ic+mc, pc..pc+kc] into MR-row panels: panel p holds, for each k, the MR values
/// A[ic + p*MR + 0..MR, pc + k] (zero-padded past mc).
fn pack_a(dst: &mut [f32], a: MatRef, ic: usize, mc: usize, pc: usize, kc: usize, mr: usize) {
    for p in 0..mc.div_ceil(mr) {
        let panel = &mut dst[p * mr * kc..(p + 1) * mr * kc];
        let rows = mr.min(mc - p * mr);
        let r0 = ic + p * mr;
        if a.row_stride == 1 {
            // Column-major view (a transposed row-major matrix): the `rows` values of one k are
            // contiguous, so walk k outside and read each column slice in one go.
            for kk in 0..kc {
                let src = (pc + kk) * a.col_stride + r0;
                let dst = &mut panel[kk * mr..(kk + 1) * mr];
                dst[..rows].copy_from_slice(&a.data[src..src + rows]);
                dst[rows..].fill(0.0);
            }
        } else {
            for i in 0..mr {
                if i < rows {
                    let base = (r0 + i) * a.row_stride + pc * a.col_stride;
                    let cs = a.col_stride;
                    for kk in 0..kc {
                        panel[kk * mr + i] = a.data[base + kk * cs];
                    }
                } else {
                    for kk in 0..kc {
                        panel[kk * mr + i] = 0.0;
                    }
                }
            }
        }
    }
}

/// Packs B[pc..pc+kc, jc..jc+nc] into NR-column panels: panel p holds, for each k, the NR values
/// B[pc + k, jc + p*NR + 0..NR] (zero-padded past nc). Panels are packed in parallel.
#[allow(clippy::too_many_arguments)]
fn pack_b(
    dst: &mut [f32],
    b: MatRef,
    pc: usize,
    kc: usize,
    jc: usize,
    nc: usize,
    nr: usize,
    threads: usize,
) {
    let pack_panel = |p: usize, panel: &mut [f32]| {
        let cols = nr.min(nc - p * nr);
        let c0 = jc + p * nr;
        if b.col_stride == 1 {
            for kk in 0..kc {
                let row = &mut panel[kk * nr..(kk + 1) * nr];
                let base = (pc + kk) * b.row_stride + c0;
                row[..cols].copy_from_slice(&b.data[base..base + cols]);
                row[cols..].fill(0.0);
            }
        } else {
            // A transposed view (the forward's W^T): each column is contiguous along k, so read
            // columns and scatter into the (L1-resident) panel.
            if cols < nr {
                panel.fill(0.0);
            }
            for j in 0..cols {
                let base = (c0 + j) * b.col_stride + pc * b.row_stride;
                let rs = b.row_stride;
                for kk in 0..kc {
                    panel[kk * nr + j] = b.data[base + kk * rs];
                }
            }
        }
    };
    let panels = nc.div_ceil(nr);
    if threads <= 1 || panels * kc < 8192 {
        for (p, panel) in dst.chunks_exact_mut(nr * kc).enumerate() {
            pack_panel(p, panel);
        }
    } else {
        runtime::cpu::parallel_rows_mut(&mut dst[..panels * nr * kc], nr * kc, 1, |r, chunk| {
            for (i, p) in r.enumerate() {
                pack_panel(p, &mut chunk[i * nr * kc..(i + 1) * nr * kc]);
            }
        });
    }
}

/// One micro-tile: full tiles go straight to C; edge tiles through a local buffer.
#[allow(clippy::too_many_arguments)]
unsafe fn micro_tile(
    kind: Simd,
    kc: usize,
    a: &[f32],
    b: &[f32],
    c: *mut f32,
    ldc: usize,
    mr: usize,
    nr: usize,
    overwrite: bool,
) {
    let (mr_t, nr_t) = kind.tile();
    if mr == mr_t && nr == nr_t {
        kernel(kind, kc, a, b, c, ldc, overwrite);
        return;
    }
    let mut tmp = [0.0f32; MR_MAX * NR_MAX];
    if !overwrite {
        for i in 0..mr {
            for j in 0..nr {
                tmp[i * nr_t + j] = *c.add(i * ldc + j);
            }
        }
    }
    kernel(kind, kc, a, b, tmp.as_mut_ptr(), nr_t, overwrite);
    for i in 0..mr {
        for j in 0..nr {
            *c.add(i * ldc + j) = tmp[i * nr_t + j];
        }
    }
}

#[inline]
unsafe fn kernel(
    kind: Simd,
    kc: usize,
    a: &[f32],
    b: &[f32],
    c: *mut f32,
    ldc: usize,
    overwrite: bool,
) {
    let (mr, nr) = kind.tile();
    assert!(a.len() >= kc * mr && b.len() >= kc * nr);
    match kind {
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => kernel_avx512(kc, a.as_ptr(), b.as_ptr(), c, ldc, overwrite),
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2Fma => kernel_avx2(kc, a.as_ptr(), b.as_ptr(), c, ldc, overwrite),
        _ => kernel_portable::<4, 16>(kc, a, b, c, ldc, overwrite),
    }
}

/// AVX-512 micro-kernel, 8 rows x 32 columns: 16 zmm accumulators; per k step two B loads,
/// eight A broadcasts, sixteen FMAs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn kernel_avx512(
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
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_avx2(
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

/// Plain Rust micro-kernel for any target (separate multiply and add).
#[inline(always)]
unsafe fn kernel_portable<const MR: usize, const NR: usize>(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
        let mut r = SplitMix64::new(seed);
        (0..n).map(|_| (r.next_f64() * 2.0 - 1.0) as f32).collect()
    }

    /// Checks sgemm on an (m, n, k) problem with A and/or B stored transposed, against f64.
    fn check(m: usize, n: usize, k: usize, ta: bool, tb: bool, accumulate: bool, threads: usize) {
        let a_data = rand_vec(m * k + 3, (m * 31 + k) as u64);
        let b_data = rand_vec(k * n + 5, (n * 17 + k) as u64);
        let a = if ta {
            MatRef::transposed(&a_data, m, k)
        } else {
            MatRef::row_major(&a_data, m, k)
        };
        let b = if tb {
            MatRef::transposed(&b_data, k, n)
        } else {
            MatRef::row_major(&b_data, k, n)
        };
        let ldc = n + 3;
        let init = rand_vec(m * ldc, 99);
        let mut c = if accumulate {
            init.clone()
        } else {
            vec![f32::NAN; m * ldc]
        };
        sgemm_with_threads(a, b, &mut c, ldc, accumulate, threads);
        // |error| <= K * eps * sum|a||b| (a standard bound); inputs are in [-1, 1].
        let tol = (k as f64 + 2.0) * f32::EPSILON as f64 * k.max(1) as f64;
        for i in 0..m {
            for j in 0..n {
                let mut s: f64 = if accumulate {
                    init[i * ldc + j] as f64
                } else {
                    0.0
                };
                for p in 0..k {
                    s += a.at(i, p) as f64 * b.at(p, j) as f64;
                }
                let got = c[i * ldc + j] as f64;
                assert!(
                    (got - s).abs() <= tol,
                    "({m},{n},{k}) ta={ta} tb={tb} acc={accumulate} C[{i},{j}] = {got}, want {s}"
                );
            }
            for j in n..ldc.min(c.len() - i * ldc) {
                let want = if accumulate {
                    init[i * ldc + j]
                } else {
                    f32::NAN
                };
                assert!(
                    c[i * ldc + j].to_bits() == want.to_bits(),
                    "padding column {j} of row {i} was written"
                );
            }
        }
    }

    #[test]
    fn matches_f64_on_edge_shapes_and_layouts() {
        for &(m, n, k) in &[
            (1, 1, 1),
            (7, 5, 3),
            (8, 32, 256),
            (9, 33, 257),
            (65, 97, 300),
            (130, 40, 17),
            (3, 300, 600),
            (1, 50, 385),
            (97, 35, 769),
            (193, 17, 1),
        ] {
            for ta in [false, true] {
                for tb in [false, true] {
                    check(m, n, k, ta, tb, false, 2);
                    check(m, n, k, ta, tb, true, 3);
                }
            }
        }
    }

    #[test]
    fn k_zero_clears_or_keeps_c() {
        let (a, b) = (vec![], vec![]);
        let mut c = vec![f32::NAN; 6];
        sgemm(
            MatRef::row_major(&a, 2, 0),
            MatRef::row_major(&b, 0, 3),
            &mut c,
            3,
            false,
        );
        assert!(c.iter().all(|&x| x == 0.0));
        let mut c = vec![2.0f32; 6];
        sgemm(
            MatRef::row_major(&a, 2, 0),
            MatRef::row_major(&b, 0, 3),
            &mut c,
            3,
            true,
        );
        assert!(c.iter().all(|&x| x == 2.0));
    }

    #[test]
    fn results_do_not_depend_on_thread_count() {
        let (m, n, k) = (200, 300, 700);
        let a = rand_vec(m * k, 1);
        let b = rand_vec(k * n, 2);
        let run = |t: usize| {
            let mut c = vec![0.0f32; m * n];
            sgemm_with_threads(
                MatRef::row_major(&a, m, k),
                MatRef::transposed(&b, k, n),
                &mut c,
                n,
                false,
                t,
            );
            c
        };
        let one = run(1);
        for t in [2, 3, 5] {
            assert!(
                one.iter()
                    .zip(run(t))
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "{t} threads differ"
            );
        }
    }

    #[test]
    fn every_simd_kernel_computes_the_same_tile() {
        let kc = 37;
        let mut kinds = vec![Simd::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                kinds.push(Simd::Avx2Fma);
            }
            if is_x86_feature_detected!("avx512f") {
                kinds.push(Simd::Avx512);
            }
        }
        for kind in kinds {
            let (mr, nr) = kind.tile();
            let (a, b) = (rand_vec(mr * kc, 5), rand_vec(nr * kc, 6));
            let init = rand_vec(mr * nr, 7);
            let mut want = vec![0.0f64; mr * nr];
            for i in 0..mr {
                for j in 0..nr {
                    want[i * nr + j] = init[i * nr + j] as f64
                        + (0..kc)
                            .map(|p| a[p * mr + i] as f64 * b[p * nr + j] as f64)
                            .sum::<f64>();
                }
            }
            let mut c = init.clone();
            unsafe { kernel(kind, kc, &a, &b, c.as_mut_ptr(), nr, false) };
            for (g, w) in c.iter().zip(&want) {
                assert!((*g as f64 - w).abs() < 1e-4, "{kind:?}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn strided_views_are_read_correctly() {
        // A 3x4 view with row stride 10 and column stride 2 inside a larger buffer.
        let data: Vec<f32> = (0..40).map(|x| x as f32).collect();
        let a = MatRef {
            data: &data,
            rows: 3,
            cols: 4,
            row_stride: 10,
            col_stride: 2,
        };
        let eye: Vec<f32> = (0..16)
            .map(|i| if i % 5 == 0 { 1.0 } else { 0.0 })
            .collect();
        let mut c = vec![0.0f32; 12];
        sgemm(a, MatRef::row_major(&eye, 4, 4), &mut c, 4, false);
        for r in 0..3 {
            for j in 0..4 {
                assert_eq!(c[r * 4 + j], (r * 10 + j * 2) as f32);
            }
        }
    }
}
