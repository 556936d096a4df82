//! f32 GEMM on strided views: `C = A·B` or `C += A·B`. It carries every matmul of the CPU
//! backend (forward `X·W^T`, dgrad `dY·W`, wgrad `dY^T·X`, the tied classifier's three with
//! N or M = 50304) and the bf16 mode of the MX tools. `sgemm_reference` is its plain twin.
//!
//! Structure (BLIS's), for each SIMD path's micro-tile MR x NR (AVX2: 6 x 16):
//!
//! ```text
//! for jc in N by NC:                     B block [KC x NC], A block [M x KC] when small
//!   for pc in K by KC:                   (K order fixed: the result does not depend on threads)
//!     parallel: pack B's NR-wide panels (and A's MR-tall panels when M·KC is small)
//!     parallel, dynamic chunks over (MC block, column group) tasks:
//!       [pack the task's A block [MC x KC] when A is not shared]
//!       for each NR panel of the group (in L1), for each MR panel (A block in L2):
//!         micro-kernel MR x NR over KC, C tile (+)= in registers
//! ```
//!
//! Work split: tasks own disjoint C tiles, so every C element's sum over K runs in the same
//! order (KC blocks in order, k in order within a block) whatever the thread count or
//! schedule: results are bit-identical for any number of threads on one SIMD path.
//!
//! Cost and roofline: 2·M·N·K FLOPs. Bytes: B is packed once (K·N reads + writes), A once
//! per NC block when shared (else once per task), C read and written once per KC block. At
//! the model's shapes (M = B·T = 256, K, N in 768..50304) every element moved feeds >= 2·256
//! FLOPs, so this is compute bound: the ceiling is the FMA rate (AVX2 on Zen 3: 2 x 8-wide
//! FMAs a cycle = 32 FLOP/cycle/core; the 6 x 16 kernel alone measures ~30 in L1). What is
//! lost is packing (one read + write per element of B, once per GEMM), edge tiles (M = 256
//! is not a multiple of 6) and C misses (prefetched by the kernels).

mod kernel;
mod pack;
#[cfg(test)]
mod tests;

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
/// K block: a B panel (KC x NR = 16 KiB on AVX2) stays in the 32 KiB L1 while the A block
/// streams from L2.
const KC: usize = 256;
/// N block: the packed B block (KC x NC = 4 MiB) lives in L3.
const NC: usize = 4096;
/// Columns per parallel task along N (16 AVX2 panels; a 256 KiB slice of the B block).
const JR_COLUMNS: usize = 256;
/// A is packed once per (NC, KC) block, shared by all tasks, when its packed block is at most
/// this many floats (M <= 4096 at KC = 256: the forward and dgrad at B·T rows, wgrad at
/// OC <= 3072); else each task packs its own MC x KC block (the classifier's wgrad).
const SHARED_A_MAX: usize = 1 << 20;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Simd {
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

    /// Rows per A block (a multiple of MR, so only the last block of M has an edge panel):
    /// MC x KC floats, 72 KiB on AVX2, sits in L2 next to the B slice.
    fn mc(self) -> usize {
        self.tile().0 * 12
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

/// Whether the packing may use AVX2 (any x86-64 CPU with it; the kernels' choice aside).
fn has_avx2() -> bool {
    static S: OnceLock<bool> = OnceLock::new();
    *S.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            is_x86_feature_detected!("avx2")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

thread_local! {
    static PACK_A: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static PACK_B: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static PACK_A_SHARED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `C = A·B` (or `C += A·B` when `accumulate`), C row-major `a.rows x b.cols` with leading
/// dimension `ldc`.
pub fn sgemm(a: MatRef, b: MatRef, c: &mut [f32], ldc: usize, accumulate: bool) {
    sgemm_with_threads(a, b, c, ldc, accumulate, runtime::cpu::threads())
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
    sgemm_on(simd(), a, b, c, ldc, accumulate, threads)
}

/// The plain twin of `sgemm`: each C element is one f32 dot product in k order (then added to
/// C when `accumulate`). Same checks, no blocking, no threads.
pub fn sgemm_reference(a: MatRef, b: MatRef, c: &mut [f32], ldc: usize, accumulate: bool) {
    if !check_shapes(a, b, c, ldc, accumulate) {
        return;
    }
    for i in 0..a.rows {
        for j in 0..b.cols {
            let mut s = 0.0f32;
            for p in 0..a.cols {
                s += a.at(i, p) * b.at(p, j);
            }
            let dst = &mut c[i * ldc + j];
            *dst = if accumulate { *dst + s } else { s };
        }
    }
}

/// Validates the operands (panics naming what is wrong); handles M, N or K = 0. Returns
/// whether there is a product left to compute.
fn check_shapes(a: MatRef, b: MatRef, c: &mut [f32], ldc: usize, accumulate: bool) -> bool {
    let (m, n, k) = (a.rows, b.cols, a.cols);
    assert_eq!(
        a.cols, b.rows,
        "sgemm: A is {}x{}, B is {}x{}",
        a.rows, a.cols, b.rows, b.cols
    );
    assert!(ldc >= n, "sgemm: ldc {ldc} < N {n}");
    if m == 0 || n == 0 {
        return false;
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
        return false;
    }
    true
}

/// A raw pointer the parallel tasks share; each writes only the elements it owns.
#[derive(Clone, Copy)]
struct SharedPtr(*mut f32);
unsafe impl Send for SharedPtr {}
unsafe impl Sync for SharedPtr {}

impl SharedPtr {
    // A method (not field access) so closures capture the Send + Sync wrapper, not the pointer.
    fn get(&self) -> *mut f32 {
        self.0
    }
}

fn sgemm_on(
    kind: Simd,
    a: MatRef,
    b: MatRef,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    threads: usize,
) {
    if !check_shapes(a, b, c, ldc, accumulate) {
        return;
    }
    let cp = SharedPtr(c.as_mut_ptr());
    match kind {
        Simd::Avx512 => blocked::<8, 32>(kind, a, b, cp, ldc, accumulate, threads),
        Simd::Avx2Fma => blocked::<6, 16>(kind, a, b, cp, ldc, accumulate, threads),
        Simd::Portable => blocked::<4, 16>(kind, a, b, cp, ldc, accumulate, threads),
    }
}

/// Runs `f` over `0..n` on `threads` threads: the pool's dynamic chunks when `threads` is the
/// pool's size, a static split on scoped threads otherwise (tests), inline for one thread.
fn for_each_chunk(
    n: usize,
    threads: usize,
    min_items: usize,
    f: &(dyn Fn(std::ops::Range<usize>) + Sync),
) {
    if threads <= 1 || n <= min_items {
        f(0..n)
    } else if threads == runtime::cpu::threads() {
        parallel_for(n, min_items, f)
    } else {
        let chunks = threads.min(n);
        std::thread::scope(|s| {
            for i in 0..chunks {
                let r = (n * i / chunks)..(n * (i + 1) / chunks);
                s.spawn(move || f(r));
            }
        });
    }
}

/// The blocked GEMM of the module comment for one micro-tile MR x NR (C checked by the caller).
#[allow(clippy::too_many_arguments)]
fn blocked<const MR: usize, const NR: usize>(
    kind: Simd,
    a: MatRef,
    b: MatRef,
    c: SharedPtr,
    ldc: usize,
    accumulate: bool,
    threads: usize,
) {
    debug_assert_eq!(kind.tile(), (MR, NR));
    let (m, n, k) = (a.rows, b.cols, a.cols);
    let mc_max = kind.mc();
    let a_panels = m.div_ceil(MR);
    let share_a = a_panels * MR * KC.min(k) <= SHARED_A_MAX;
    let jr_group = JR_COLUMNS / NR;
    PACK_B.with(|pb| {
        PACK_A_SHARED.with(|sa| {
            let mut pb = pb.borrow_mut();
            let mut shared_a = sa.borrow_mut();
            for jc in (0..n).step_by(NC) {
                let nc = NC.min(n - jc);
                let b_panels = nc.div_ceil(NR);
                for pc in (0..k).step_by(KC) {
                    let kc = KC.min(k - pc);
                    // Pack B's panels (and A's, when shared) in one parallel pass.
                    pb.resize(b_panels * NR * kc, 0.0);
                    let pa_panels = if share_a && (jc == 0 || k > KC) {
                        // A depends on pc only: with a single K block it is packed once for all jc.
                        shared_a.resize(a_panels * MR * kc, 0.0);
                        a_panels
                    } else {
                        0
                    };
                    let (bp, ap) = (SharedPtr(pb.as_mut_ptr()), SharedPtr(shared_a.as_mut_ptr()));
                    let pack = |r: std::ops::Range<usize>| {
                        for p in r {
                            // SAFETY: panel p of the B (or A) buffer, sized above, is written by
                            // this item only.
                            if p < b_panels {
                                let panel = unsafe {
                                    std::slice::from_raw_parts_mut(
                                        bp.get().add(p * NR * kc),
                                        NR * kc,
                                    )
                                };
                                let c0 = jc + p * NR;
                                pack::b_panel::<NR>(panel, b, pc, kc, c0, NR.min(n - c0));
                            } else {
                                let q = p - b_panels;
                                let panel = unsafe {
                                    std::slice::from_raw_parts_mut(
                                        ap.get().add(q * MR * kc),
                                        MR * kc,
                                    )
                                };
                                pack::a_panel::<MR>(panel, a, q * MR, MR.min(m - q * MR), pc, kc);
                            }
                        }
                    };
                    let items = b_panels + pa_panels;
                    let min_items = (16384 / (NR * kc)).max(1);
                    for_each_chunk(items, threads, min_items, &pack);

                    let packed_b: &[f32] = &pb;
                    let packed_a: &[f32] = &shared_a;
                    let overwrite = !accumulate && pc == 0;
                    let m_blocks = m.div_ceil(mc_max);
                    let j_groups = b_panels.div_ceil(jr_group);
                    let work = |range: std::ops::Range<usize>| {
                        PACK_A.with(|pa| {
                            let mut pa = pa.borrow_mut();
                            let mut packed_for = usize::MAX;
                            for task in range {
                                // Tasks run M-block-major, so a chunk's tasks share an A block.
                                let (ib, jg) = (task / j_groups, task % j_groups);
                                let ic = ib * mc_max;
                                let mc = mc_max.min(m - ic);
                                let block: &[f32] = if share_a {
                                    &packed_a[ic * kc..(ic + mc.div_ceil(MR) * MR) * kc]
                                } else {
                                    if packed_for != ib {
                                        pa.resize(mc.div_ceil(MR) * MR * kc, 0.0);
                                        for (q, panel) in pa.chunks_exact_mut(MR * kc).enumerate() {
                                            let r0 = ic + q * MR;
                                            pack::a_panel::<MR>(
                                                panel,
                                                a,
                                                r0,
                                                MR.min(m - r0),
                                                pc,
                                                kc,
                                            );
                                        }
                                        packed_for = ib;
                                    }
                                    &pa
                                };
                                for jp in jg * jr_group..((jg + 1) * jr_group).min(b_panels) {
                                    let j0 = jc + jp * NR;
                                    let nr = NR.min(n - j0);
                                    let bpanel = &packed_b[jp * NR * kc..(jp + 1) * NR * kc];
                                    for (ip, apanel) in block.chunks_exact(MR * kc).enumerate() {
                                        let i0 = ic + ip * MR;
                                        let mr = MR.min(m - i0);
                                        // SAFETY: tile (i0.., j0..) of C lies inside C (checked by
                                        // the caller) and belongs to this task only: tasks own
                                        // disjoint (M block, N group) tiles.
                                        unsafe {
                                            micro_tile::<MR, NR>(
                                                kind,
                                                kc,
                                                apanel,
                                                bpanel,
                                                c.get().add(i0 * ldc + j0),
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
                    for_each_chunk(m_blocks * j_groups, threads, 1, &work);
                }
            }
        })
    });
}

/// One micro-tile: full tiles go straight to C; edge tiles through a local buffer.
///
/// # Safety
/// The `mr x nr` tile at `c` (leading dimension `ldc`) is valid and owned by the caller.
#[allow(clippy::too_many_arguments)]
unsafe fn micro_tile<const MR: usize, const NR: usize>(
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
    if mr == MR && nr == NR {
        run_kernel::<MR, NR>(kind, kc, a, b, c, ldc, overwrite);
        return;
    }
    let mut tmp = [0.0f32; MR_MAX * NR_MAX];
    if !overwrite {
        for i in 0..mr {
            for j in 0..nr {
                tmp[i * NR + j] = *c.add(i * ldc + j);
            }
        }
    }
    run_kernel::<MR, NR>(kind, kc, a, b, tmp.as_mut_ptr(), NR, overwrite);
    for i in 0..mr {
        for j in 0..nr {
            *c.add(i * ldc + j) = tmp[i * NR + j];
        }
    }
}

/// Calls `kind`'s micro-kernel (MR x NR must be its tile).
///
/// # Safety
/// The full MR x NR tile at `c` is valid and owned by the caller.
#[inline]
unsafe fn run_kernel<const MR: usize, const NR: usize>(
    kind: Simd,
    kc: usize,
    a: &[f32],
    b: &[f32],
    c: *mut f32,
    ldc: usize,
    overwrite: bool,
) {
    assert!(a.len() >= kc * MR && b.len() >= kc * NR && kind.tile() == (MR, NR));
    match kind {
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => kernel::avx512_8x32(kc, a.as_ptr(), b.as_ptr(), c, ldc, overwrite),
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2Fma => kernel::avx2_6x16(kc, a.as_ptr(), b.as_ptr(), c, ldc, overwrite),
        _ => kernel::portable::<MR, NR>(kc, a, b, c, ldc, overwrite),
    }
}
