//! MXFP4 numerics: the contract of ../shared/docs/MXFP4.md, implemented exactly. Every other
//! backend (the Hopper emulation, Blackwell's tcgen05 path) is tested against this code, so the
//! rules that decide a bit are written out where they are implemented:
//!
//! - `philox`: the counter-based generator (SR noise and RHT signs) and how it is keyed;
//! - `format`: E2M1 / E8M0 and the packed layout;
//! - `quantize`: one 32-block, RTN or SR;
//! - `hadamard`: the random Hadamard transform along K;
//! - `gemm`: the MX GEMM (integer path and its fast f32-lane form).
//!
//! `backward_gemm` puts them together for the linear layers' backward GEMMs, the one code path
//! the CPU backend and `tools/mx gemm` share.

pub mod format;
pub mod fp8;
pub mod gemm;
pub mod hadamard;
pub mod nvfp4;
pub mod philox;
pub mod quantize;
#[cfg(target_arch = "x86_64")]
mod quantize_avx2;
pub mod telemetry;

use crate::cpu::gemm::{sgemm, MatRef};
use crate::precision::BackwardMode;
use format::BLOCK;
pub use quantize::Rounding;
use runtime::cpu::parallel_rows_mut;
pub use telemetry::{MxRecorder, MxSummary, MxTelemetry, SiteGemm, SiteTelemetry};

/// The MXFP4 settings of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MxConfig {
    pub mode: BackwardMode,
    /// g of the random Hadamard transform (RHT modes only).
    pub hadamard_block: usize,
    /// Fresh RHT signs for every GEMM call, or one vector for the whole run (RHT modes only).
    pub signs: HadamardSigns,
    pub seed: u64,
}

/// Where the RHT's sign vector comes from (`--hadamard-signs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum HadamardSigns {
    /// A fresh vector per GEMM call, from the call's own stream (the MXFP4 paper's recipe).
    #[default]
    Fresh,
    /// One vector for the whole run, from the fixed stream `FIXED_SIGN_STREAM` of the run's seed
    /// (NVIDIA's NVFP4 recipe fixes its signs the same way).
    Fixed,
}

/// The stream of the run-wide sign vector under `HadamardSigns::Fixed`. No `GemmId` stream equals
/// it: their two role bits never hold 3.
pub const FIXED_SIGN_STREAM: u64 = u64::MAX;

impl HadamardSigns {
    pub fn name(self) -> &'static str {
        match self {
            HadamardSigns::Fresh => "fresh",
            HadamardSigns::Fixed => "fixed",
        }
    }
}

impl std::str::FromStr for HadamardSigns {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fresh" => Ok(HadamardSigns::Fresh),
            "fixed" => Ok(HadamardSigns::Fixed),
            _ => Err(format!(
                "unknown --hadamard-signs '{s}': expected fresh (new signs for every GEMM call) or fixed (one sign vector for the run)"
            )),
        }
    }
}

impl MxConfig {
    pub fn validate(&self) -> Result<(), MxError> {
        if self.mode.uses_rht() && !hadamard::HADAMARD_BLOCKS.contains(&self.hadamard_block) {
            return Err(MxError::BadHadamardBlock(self.hadamard_block));
        }
        Ok(())
    }

    /// The stream the RHT signs of GEMM `id` are drawn from.
    pub fn sign_stream(&self, id: &GemmId) -> u64 {
        match self.signs {
            HadamardSigns::Fresh => id.stream(StreamRole::RhtSigns),
            HadamardSigns::Fixed => FIXED_SIGN_STREAM,
        }
    }

    pub fn rounding(&self) -> Rounding {
        if self.mode.uses_sr() {
            Rounding::Sr
        } else {
            Rounding::Rtn
        }
    }
}

/// Which linear layer of a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum LinearKind {
    Qkv = 0,
    AttnProj = 1,
    MlpUp = 2,
    MlpDown = 3,
}

/// Which backward GEMM: dgrad dX = dY·W (reduces over output features) or wgrad dW = dY^T·X
/// (reduces over tokens).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum GemmKind {
    Dgrad = 0,
    Wgrad = 1,
}

impl LinearKind {
    pub fn name(self) -> &'static str {
        match self {
            LinearKind::Qkv => "qkv",
            LinearKind::AttnProj => "attn_proj",
            LinearKind::MlpUp => "mlp_up",
            LinearKind::MlpDown => "mlp_down",
        }
    }
}

impl GemmKind {
    pub fn name(self) -> &'static str {
        match self {
            GemmKind::Dgrad => "dgrad",
            GemmKind::Wgrad => "wgrad",
        }
    }
}

/// What a random stream is used for within one GEMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum StreamRole {
    SrA = 0,
    SrB = 1,
    RhtSigns = 2,
}

/// Identifies one backward GEMM call; keys its random streams so every call gets fresh signs and
/// noise and a rerun (or a resumed run) gets the same ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GemmId {
    pub step: u32,
    pub micro_step: u32,
    pub layer: u32,
    pub linear: LinearKind,
    pub gemm: GemmKind,
}

impl GemmId {
    /// Largest micro-step and layer index a stream id can hold without two GEMMs of one run
    /// sharing a stream (the trainer refuses configurations beyond them).
    pub const MAX_MICRO_STEPS: usize = 1 << 16;
    pub const MAX_LAYERS: usize = 1 << 11;

    /// stream = step << 32 | micro_step << 16 | layer << 5 | linear << 3 | gemm << 2 | role:
    /// every field has its own bits (step 32, micro-step 16, layer 11, linear 2, GEMM 1, role
    /// 2), so no two GEMMs of a run share a stream.
    pub fn stream(&self, role: StreamRole) -> u64 {
        debug_assert!((self.micro_step as usize) < Self::MAX_MICRO_STEPS);
        debug_assert!((self.layer as usize) < Self::MAX_LAYERS);
        (self.step as u64) << 32
            | ((self.micro_step & 0xFFFF) as u64) << 16
            | ((self.layer & 0x7FF) as u64) << 5
            | (self.linear as u64) << 3
            | (self.gemm as u64) << 2
            | role as u64
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxError {
    /// K of a GEMM is not a multiple of the MX block (32) or of the Hadamard block g.
    KNotMultiple {
        k: usize,
        of: usize,
        what: &'static str,
    },
    BadHadamardBlock(usize),
    Shape(String),
}

impl std::fmt::Display for MxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MxError::KNotMultiple { k, of, what } => write!(
                f,
                "the reduction dimension K = {k} is not a multiple of the {what} {of}"
            ),
            MxError::BadHadamardBlock(g) => {
                write!(f, "Hadamard block {g} is not one of 16, 32, 64, 128, 256")
            }
            MxError::Shape(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for MxError {}

/// A quantized K-major operand: `rows` rows of K codes (one 4-bit code per byte, unpacked for
/// speed) and one E8M0 scale per 32-block of each row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MxOperand {
    pub rows: usize,
    pub k: usize,
    pub codes: Vec<u8>,
    pub scales: Vec<u8>,
}

impl MxOperand {
    /// The exchange format: scale bytes (one per block, row-major), then the packed codes (two
    /// per byte, low nibble first) — what `tools/mx quantize --packed` writes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.scales.clone();
        out.extend(format::pack_codes(&self.codes));
        out
    }

    /// Dequantized values (f32; SR includes the 4/3).
    pub fn dequantize(&self, sr: bool) -> Vec<f32> {
        let nblk = self.k / BLOCK;
        (0..self.rows * self.k)
            .map(|i| {
                let (r, k) = (i / self.k, i % self.k);
                quantize::dequantize(self.codes[i], self.scales[r * nblk + k / BLOCK], sr) as f32
            })
            .collect()
    }
}

/// Quantizes `rows` K-major rows of `x` (rows x k) block by block; element (r, k) uses counter
/// r·K + k of `stream` under SR. Parallel over rows; returns the operand and its telemetry.
pub fn quantize_rows(
    x: &[f32],
    rows: usize,
    k: usize,
    rounding: Rounding,
    seed: u64,
    stream: u64,
) -> Result<(MxOperand, MxTelemetry), MxError> {
    let mut op = MxOperand {
        rows: 0,
        k: 0,
        codes: Vec::new(),
        scales: Vec::new(),
    };
    let t = quantize_rows_into(x, rows, k, rounding, seed, stream, &mut op)?;
    Ok((op, t))
}

/// `quantize_rows` into `op`, reusing its buffers (every code and scale is rewritten): the
/// backward GEMMs call this once per operand per step, and fresh multi-MB buffers cost page
/// faults on every call.
pub fn quantize_rows_into(
    x: &[f32],
    rows: usize,
    k: usize,
    rounding: Rounding,
    seed: u64,
    stream: u64,
    op: &mut MxOperand,
) -> Result<MxTelemetry, MxError> {
    if k % BLOCK != 0 {
        return Err(MxError::KNotMultiple {
            k,
            of: BLOCK,
            what: "MX block",
        });
    }
    if x.len() != rows * k {
        return Err(MxError::Shape(format!(
            "quantize_rows: {} values for {rows} x {k}",
            x.len()
        )));
    }
    let nblk = k / BLOCK;
    op.rows = rows;
    op.k = k;
    resize_for_overwrite(&mut op.codes, rows * k);
    resize_for_overwrite(&mut op.scales, rows * nblk);
    if rows == 0 || k == 0 {
        return Ok(MxTelemetry::default());
    }
    let (codes, scales) = (&mut op.codes, &mut op.scales);
    let tel = std::sync::Mutex::new(MxTelemetry::default());
    let sp = SharedBytes(scales.as_mut_ptr(), scales.len());
    parallel_rows_mut(codes, k, 16, |rs, chunk| {
        let mut local = MxTelemetry::default();
        for (i, r) in rs.enumerate() {
            // SAFETY: row r's scales belong to this worker.
            let row_scales = unsafe { sp.row(r * nblk, nblk) };
            quantize::quantize_row(
                &x[r * k..(r + 1) * k],
                rounding,
                seed,
                stream,
                (r * k) as u64,
                &mut chunk[i * k..(i + 1) * k],
                row_scales,
                &mut local,
            );
        }
        tel.lock().unwrap().merge(&local);
    });
    Ok(tel.into_inner().unwrap())
}

/// Sets `v`'s length to `n` for a caller that overwrites every element: keeps the allocation
/// (and its already-faulted pages) and zeroes only a grown tail.
pub(crate) fn resize_for_overwrite<T: Copy + Default>(v: &mut Vec<T>, n: usize) {
    v.truncate(n);
    v.resize(n, T::default());
}

#[derive(Clone, Copy)]
struct SharedBytes(*mut u8, usize);
unsafe impl Send for SharedBytes {}
unsafe impl Sync for SharedBytes {}
impl SharedBytes {
    /// Bytes `start..start + len`; the caller must be their only user.
    #[allow(clippy::mut_from_ref)]
    unsafe fn row(&self, start: usize, len: usize) -> &mut [u8] {
        assert!(start + len <= self.1);
        std::slice::from_raw_parts_mut(self.0.add(start), len)
    }
}

/// Copies a strided view into a K-major buffer: rows of `k` values. `k_along_cols` says whether
/// K runs along the view's columns (A: M x K) or rows (B: K x N, giving B^T).
pub(crate) fn gather_k_major(v: MatRef, k_along_cols: bool) -> Vec<f32> {
    let mut out = Vec::new();
    gather_k_major_into(v, k_along_cols, &mut out);
    out
}

/// `gather_k_major` into `out`, reusing its allocation (every element is rewritten).
fn gather_k_major_into(v: MatRef, k_along_cols: bool, out: &mut Vec<f32>) {
    let (rows, k) = k_major_shape(v, k_along_cols);
    resize_for_overwrite(out, rows * k);
    if rows == 0 || k == 0 {
        return;
    }
    parallel_rows_mut(out, k, 8, |r_range, chunk| {
        gather_rows(v, k_along_cols, r_range, chunk)
    });
}

/// (rows, K) of the K-major form of `v`.
fn k_major_shape(v: MatRef, k_along_cols: bool) -> (usize, usize) {
    if k_along_cols {
        (v.rows, v.cols)
    } else {
        (v.cols, v.rows)
    }
}

/// Rows `r_range` of the K-major form of `v` into `chunk` (rows of K values).
fn gather_rows(v: MatRef, k_along_cols: bool, r_range: std::ops::Range<usize>, chunk: &mut [f32]) {
    let k = k_major_shape(v, k_along_cols).1;
    // Element (r, kk) of the K-major result sits at v[r*rs + kk*ks] of the view.
    let (rs, ks) = if k_along_cols {
        (v.row_stride, v.col_stride)
    } else {
        (v.col_stride, v.row_stride)
    };
    if ks == 1 {
        for (i, r) in r_range.enumerate() {
            chunk[i * k..(i + 1) * k].copy_from_slice(&v.data[r * rs..r * rs + k]);
        }
    } else {
        #[cfg(target_arch = "x86_64")]
        if rs == 1 && crate::cpu::simd::avx2_fma() {
            // SAFETY: the CPU has AVX2 (checked); bounds are asserted inside.
            return unsafe {
                quantize_avx2::gather_transposed_avx2(
                    v.data,
                    ks,
                    r_range.start,
                    r_range.len(),
                    k,
                    chunk,
                )
            };
        }
        // Transposing: walk K in tiles so reads along the view's rows stay in cache.
        const T: usize = 64;
        let r0 = r_range.start;
        let n = r_range.len();
        for k0 in (0..k).step_by(T) {
            for i in 0..n {
                let r = r0 + i;
                for kk in k0..(k0 + T).min(k) {
                    chunk[i * k + kk] = v.data[r * rs + kk * ks];
                }
            }
        }
    }
}

/// One operand of an MXFP4 GEMM in one parallel pass: per chunk of rows, gather them K-major
/// into `buf` (scratch), apply the RHT with `signs` if given, quantize each row into `op`.
/// The same values as `gather_k_major`, `rht_row` on every row, then `quantize_rows`, but
/// each chunk's rows are transformed and quantized while they sit in L1/L2, and one pass
/// (one join) instead of three.
#[allow(clippy::too_many_arguments)]
fn prepare_operand(
    v: MatRef,
    k_along_cols: bool,
    signs: Option<&[f32]>,
    rounding: Rounding,
    seed: u64,
    stream: u64,
    buf: &mut Vec<f32>,
    op: &mut MxOperand,
) -> MxTelemetry {
    let (rows, k) = k_major_shape(v, k_along_cols);
    let nblk = k / BLOCK;
    resize_for_overwrite(buf, rows * k);
    op.rows = rows;
    op.k = k;
    resize_for_overwrite(&mut op.codes, rows * k);
    resize_for_overwrite(&mut op.scales, rows * nblk);
    if rows == 0 || k == 0 {
        return MxTelemetry::default();
    }
    let tel = std::sync::Mutex::new(MxTelemetry::default());
    let sp = SharedBytes(op.scales.as_mut_ptr(), op.scales.len());
    let bp = SharedF32(buf.as_mut_ptr(), buf.len());
    parallel_rows_mut(&mut op.codes, k, 16, |rs, codes| {
        // SAFETY: rows `rs` of the scratch and of the scales belong to this chunk.
        let x = unsafe { bp.rows(rs.start * k, rs.len() * k) };
        gather_rows(v, k_along_cols, rs.clone(), x);
        let mut local = MxTelemetry::default();
        for (i, r) in rs.enumerate() {
            let row = &mut x[i * k..(i + 1) * k];
            if let Some(s) = signs {
                hadamard::rht_row(row, s);
            }
            quantize::quantize_row(
                row,
                rounding,
                seed,
                stream,
                (r * k) as u64,
                &mut codes[i * k..(i + 1) * k],
                unsafe { sp.row(r * nblk, nblk) },
                &mut local,
            );
        }
        tel.lock().unwrap().merge(&local);
    });
    tel.into_inner().unwrap()
}

#[derive(Clone, Copy)]
struct SharedF32(*mut f32, usize);
unsafe impl Send for SharedF32 {}
unsafe impl Sync for SharedF32 {}
impl SharedF32 {
    /// Values `start..start + len`; the caller must be their only user.
    #[allow(clippy::mut_from_ref)]
    unsafe fn rows(&self, start: usize, len: usize) -> &mut [f32] {
        assert!(start + len <= self.1);
        std::slice::from_raw_parts_mut(self.0.add(start), len)
    }
}

/// Per-thread buffers of `backward_gemm` (K-major operands and their quantized forms), kept
/// between calls: a 124M step runs 96 MX GEMMs on multi-MB operands, and fresh allocations
/// cost about 15% of an mxfp4 step in page faults and zeroing.
#[derive(Default)]
struct GemmScratch {
    xa: Vec<f32>,
    xb: Vec<f32>,
    qa: Option<MxOperand>,
    qb: Option<MxOperand>,
}

thread_local! {
    static GEMM_SCRATCH: std::cell::RefCell<GemmScratch> =
        std::cell::RefCell::new(GemmScratch::default());
}

/// The linear layers' backward GEMM in any `--backward` mode, the one path on the CPU:
/// C (M x N, leading dim ldc) = A·B, or += when `accumulate`. A is M x K and B is K x N, strided
/// views (dgrad: A = dY, B = W; wgrad: A = dY^T, B = X). bf16 mode: the f32 sgemm. MXFP4 modes:
/// both operands gathered K-major, transformed with the same random Hadamard signs (RHT
/// modes), quantized along K (RTN, or SR with one stream per operand), multiplied by the MX GEMM.
#[allow(clippy::too_many_arguments)]
pub fn backward_gemm(
    cfg: &MxConfig,
    id: &GemmId,
    a: MatRef,
    b: MatRef,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    telemetry: Option<&mut MxTelemetry>,
) -> Result<(), MxError> {
    if a.cols != b.rows {
        return Err(MxError::Shape(format!(
            "backward_gemm: A is {}x{}, B is {}x{}",
            a.rows, a.cols, b.rows, b.cols
        )));
    }
    if cfg.mode.is_nvfp4() {
        let recipe = nvfp4::Nvfp4Recipe::of(cfg.mode);
        let wgrad = id.gemm == GemmKind::Wgrad;
        let sr_stream = id.stream(StreamRole::SrA);
        return nvfp4::backward_gemm(
            recipe, wgrad, cfg.seed, sr_stream, a, b, c, ldc, accumulate, telemetry,
        );
    }
    if !cfg.mode.is_mxfp4() {
        sgemm(a, b, c, ldc, accumulate);
        return Ok(());
    }
    cfg.validate()?;
    let k = a.cols;
    if k % BLOCK != 0 {
        return Err(MxError::KNotMultiple {
            k,
            of: BLOCK,
            what: "MX block",
        });
    }
    let g = cfg.hadamard_block;
    if cfg.mode.uses_rht() && k % g != 0 {
        return Err(MxError::KNotMultiple {
            k,
            of: g,
            what: "Hadamard block g",
        });
    }
    // Taken out of the thread's scratch (a nested call would find it empty, still correct)
    // and put back after.
    let mut scratch = GEMM_SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    let result = mxfp4_gemm(cfg, id, a, b, c, ldc, accumulate, telemetry, &mut scratch);
    GEMM_SCRATCH.with(|s| *s.borrow_mut() = scratch);
    result
}

/// The MXFP4 modes of `backward_gemm` (shapes checked), on the scratch buffers.
#[allow(clippy::too_many_arguments)]
fn mxfp4_gemm(
    cfg: &MxConfig,
    id: &GemmId,
    a: MatRef,
    b: MatRef,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    telemetry: Option<&mut MxTelemetry>,
    scratch: &mut GemmScratch,
) -> Result<(), MxError> {
    let (k, g) = (a.cols, cfg.hadamard_block);
    let started = std::time::Instant::now();
    let GemmScratch { xa, xb, qa, qb } = scratch;
    let signs = cfg
        .mode
        .uses_rht()
        .then(|| hadamard::rht_signs(cfg.seed, cfg.sign_stream(id), g));
    let rounding = cfg.rounding();
    let empty = || MxOperand {
        rows: 0,
        k: 0,
        codes: Vec::new(),
        scales: Vec::new(),
    };
    let qa = qa.get_or_insert_with(empty);
    let qb = qb.get_or_insert_with(empty);
    let (sa, sb) = (id.stream(StreamRole::SrA), id.stream(StreamRole::SrB));
    let s = signs.as_deref();
    let ta = prepare_operand(a, true, s, rounding, cfg.seed, sa, xa, qa);
    let tb = prepare_operand(b, false, s, rounding, cfg.seed, sb, xb, qb);
    debug_assert_eq!((qa.k, qb.k), (k, k));
    let quantize_seconds = started.elapsed().as_secs_f64();
    gemm::mx_gemm(qa, qb, c, ldc, accumulate, rounding == Rounding::Sr);
    if let Some(t) = telemetry {
        t.merge(&ta);
        t.merge(&tb);
        t.quantize_seconds += quantize_seconds;
    }
    Ok(())
}

/// The quantization noise of one backward GEMM: (|Q(A)Q(B) - AB|^2, |AB|^2) summed over the
/// output, with Q(A)Q(B) recomputed from the same streams as `backward_gemm` draws (so it is the
/// product the step used) and AB the f32 GEMM. For telemetry: costs two more GEMMs.
pub fn gemm_noise(
    cfg: &MxConfig,
    id: &GemmId,
    a: MatRef,
    b: MatRef,
) -> Result<(f64, f64), MxError> {
    let n = a.rows * b.cols;
    let (mut q, mut exact) = (vec![0.0f32; n], vec![0.0f32; n]);
    backward_gemm(cfg, id, a, b, &mut q, b.cols, false, None)?;
    sgemm(a, b, &mut exact, b.cols, false);
    Ok(q.iter()
        .zip(&exact)
        .fold((0.0, 0.0), |(noise, sum), (&q, &e)| {
            let (q, e) = (q as f64, e as f64);
            (noise + (q - e) * (q - e), sum + e * e)
        }))
}

#[cfg(test)]
mod tests;
