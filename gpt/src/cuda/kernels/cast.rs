//! Launchers for ptx/kernels/cast.cu: f32 <-> bf16 casts and a batched bf16 transpose.
//!
//! The casts have two implementations ([`MemImpl`]) with identical results (the conversions
//! are exact or round to nearest even either way): the reference kernels (one thread per
//! element) and the `*_vec` kernels (one thread per 8 elements, 16-byte accesses, a scalar tail
//! for n % 8), which need both operands 16-byte aligned. The default launchers pick the
//! vectorized kernels when the operands are aligned (see [`super::membound`]).

use super::membound::{self, MemImpl};
use super::{check_dim, check_len, Ptr};
use runtime::cuda::{half::bf16, CudaError, DeviceElem, Gpu, LaunchConfig, Result};

fn cast<O: DeviceElem, I: DeviceElem>(
    g: &Gpu,
    imp: MemImpl,
    kernel: &'static str,
    out: Ptr<O>,
    inp: Ptr<I>,
    n: usize,
) -> Result<()> {
    check_len(kernel, "out", &out, n)?;
    check_len(kernel, "inp", &inp, n)?;
    if imp == MemImpl::Vectorized {
        membound::check_aligned16(kernel, &[("out", out.addr()), ("inp", inp.addr())])?;
    }
    if n == 0 {
        return Ok(());
    }
    let (name, cfg) = match imp {
        MemImpl::Reference => (kernel.to_string(), LaunchConfig::linear(n, 256)),
        MemImpl::Vectorized => (
            format!("{kernel}_vec"),
            LaunchConfig::linear(n.div_ceil(8), 256),
        ),
    };
    let k = g.kernel("cast", &name)?;
    // SAFETY: cast_*{,_vec}(O* out, const I* in, size_t n); lengths checked, alignment checked
    // for the vec kernels.
    unsafe { g.launch(&k, cfg, &[&out, &inp, &n]) }
}

/// `out[i] = bf16(inp[i])` (round to nearest even, NaN stays NaN) for i < n, overwriting `out`.
/// `n == 0` is a no-op.
pub fn cast_f32_to_bf16(g: &Gpu, out: Ptr<bf16>, inp: Ptr<f32>, n: usize) -> Result<()> {
    let imp = membound::pick(membound::aligned16(&[out.addr(), inp.addr()]));
    cast_f32_to_bf16_with(g, imp, out, inp, n)
}

/// [`cast_f32_to_bf16`] on the kernel asked for ([`MemImpl::Vectorized`]: both operands
/// 16-byte aligned, else an error).
pub fn cast_f32_to_bf16_with(
    g: &Gpu,
    imp: MemImpl,
    out: Ptr<bf16>,
    inp: Ptr<f32>,
    n: usize,
) -> Result<()> {
    cast(g, imp, "cast_f32_to_bf16", out, inp, n)
}

/// `out[i] = f32(inp[i])` (exact) for i < n, overwriting `out`. `n == 0` is a no-op.
pub fn cast_bf16_to_f32(g: &Gpu, out: Ptr<f32>, inp: Ptr<bf16>, n: usize) -> Result<()> {
    let imp = membound::pick(membound::aligned16(&[out.addr(), inp.addr()]));
    cast_bf16_to_f32_with(g, imp, out, inp, n)
}

/// [`cast_bf16_to_f32`] on the kernel asked for ([`MemImpl::Vectorized`]: both operands
/// 16-byte aligned, else an error).
pub fn cast_bf16_to_f32_with(
    g: &Gpu,
    imp: MemImpl,
    out: Ptr<f32>,
    inp: Ptr<bf16>,
    n: usize,
) -> Result<()> {
    cast(g, imp, "cast_bf16_to_f32", out, inp, n)
}

/// Batched transpose: `out[z, c, r] = inp[z, r, c]` for z < batch, r < rows, c < cols
/// (`inp` is `batch` row-major [rows, cols] matrices, `out` the [cols, rows] ones), overwriting
/// `out`. `out` must not overlap `inp` (checked). Limits: rows <= 65535 * 32, batch <= 65535
/// (grid y and z; the launch reports a larger one as an error).
pub fn transpose_bf16(
    g: &Gpu,
    out: Ptr<bf16>,
    inp: Ptr<bf16>,
    batch: usize,
    rows: usize,
    cols: usize,
) -> Result<()> {
    const K: &str = "transpose_bf16";
    check_dim(K, "batch", batch)?;
    let ri = check_dim(K, "rows", rows)?;
    let ci = check_dim(K, "cols", cols)?;
    let n = [batch, rows, cols]
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| CudaError::new(format!("{K}: batch * rows * cols overflows"), 1))?;
    check_len(K, "out", &out, n)?;
    check_len(K, "inp", &inp, n)?;
    let bytes = (2 * n) as u64;
    if out.addr() < inp.addr() + bytes && inp.addr() < out.addr() + bytes {
        return Err(CudaError::new(format!("{K}: out overlaps inp"), 1));
    }
    let k = g.kernel("cast", K)?;
    let cfg = LaunchConfig {
        grid: (
            cols.div_ceil(32) as u32,
            rows.div_ceil(32).min(u32::MAX as usize) as u32,
            batch.min(u32::MAX as usize) as u32,
        ),
        block: (32, 8, 1),
        smem_bytes: 0,
    };
    // SAFETY: transpose_bf16(bf16* out, const bf16* in, int rows, int cols), batch = gridDim.z;
    // lengths checked for batch * rows * cols elements.
    unsafe { g.launch(&k, cfg, &[&out, &inp, &ri, &ci]) }
}
