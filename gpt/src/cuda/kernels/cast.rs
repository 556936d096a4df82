//! Launchers for ptx/kernels/cast.cu: f32 <-> bf16 casts and a batched bf16 transpose.

use super::{check_dim, check_len, Ptr};
use runtime::cuda::{half::bf16, CudaError, Gpu, LaunchConfig, Result};

/// `out[i] = bf16(inp[i])` (round to nearest even, NaN stays NaN) for i < n, overwriting `out`.
/// `n == 0` is a no-op.
pub fn cast_f32_to_bf16(g: &Gpu, out: Ptr<bf16>, inp: Ptr<f32>, n: usize) -> Result<()> {
    const K: &str = "cast_f32_to_bf16";
    check_len(K, "out", &out, n)?;
    check_len(K, "inp", &inp, n)?;
    if n == 0 {
        return Ok(());
    }
    let k = g.kernel("cast", K)?;
    // SAFETY: cast_f32_to_bf16(bf16*, const float*, size_t); lengths checked.
    unsafe { g.launch(&k, LaunchConfig::linear(n, 256), &[&out, &inp, &n]) }
}

/// `out[i] = f32(inp[i])` (exact) for i < n, overwriting `out`. `n == 0` is a no-op.
pub fn cast_bf16_to_f32(g: &Gpu, out: Ptr<f32>, inp: Ptr<bf16>, n: usize) -> Result<()> {
    const K: &str = "cast_bf16_to_f32";
    check_len(K, "out", &out, n)?;
    check_len(K, "inp", &inp, n)?;
    if n == 0 {
        return Ok(());
    }
    let k = g.kernel("cast", K)?;
    // SAFETY: cast_bf16_to_f32(float*, const bf16*, size_t); lengths checked.
    unsafe { g.launch(&k, LaunchConfig::linear(n, 256), &[&out, &inp, &n]) }
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
