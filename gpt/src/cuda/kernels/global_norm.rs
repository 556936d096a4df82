//! Launchers for ptx/kernels/global_norm.cu: the deterministic global gradient L2 norm and
//! clipping by it.
//!
//! The norm's first pass has two implementations ([`MemImpl`]): the reference kernel (2-byte
//! loads) and `global_norm_squares_bf16_vec` (16-byte loads, four in flight per thread), which
//! needs `grads` 16-byte aligned. Both use the same fixed grid, scratch and finishing kernel;
//! each is bitwise deterministic, and they differ from each other only in the order of the
//! f32 sum. The default picks the vectorized kernel when `grads` is aligned (see
//! [`super::membound`]).

use super::membound::{self, MemImpl};
use super::{check_len, Ptr};
use runtime::cuda::{half::bf16, Gpu, LaunchConfig, Result};

/// Blocks of the sum-of-squares pass: GLOBAL_NORM_BLOCKS in global_norm.cu. Fixed (never
/// derived from the device), so the summation order and the norm are the same on every GPU.
const BLOCKS: usize = 1024;

/// f32 scratch elements [`grad_norm`] needs: one partial sum per block (1024, whatever `n`).
pub fn grad_norm_scratch_len(_n: usize) -> usize {
    BLOCKS
}

/// `norm_out[0] = sqrt(sum of grads[i]^2)` over all of `grads` (the L2 norm, not its square:
/// `global_norm_finish` writes the square root), f32 math. Two launches (1024 partial sums in
/// `scratch`, then one block sums them in index order): bitwise deterministic. The norm stays
/// on the device so clipping needs no host round trip. `scratch` (>= 1024 floats, contents on
/// entry ignored) must not overlap the other operands. An empty `grads` gives 0.
pub fn grad_norm(g: &Gpu, norm_out: Ptr<f32>, grads: Ptr<bf16>, scratch: Ptr<f32>) -> Result<()> {
    let imp = membound::pick(membound::aligned16(&[grads.addr()]));
    grad_norm_with(g, imp, norm_out, grads, scratch)
}

/// [`grad_norm`] with the first pass asked for ([`MemImpl::Vectorized`]: `grads` 16-byte
/// aligned, else an error).
pub fn grad_norm_with(
    g: &Gpu,
    imp: MemImpl,
    norm_out: Ptr<f32>,
    grads: Ptr<bf16>,
    scratch: Ptr<f32>,
) -> Result<()> {
    const K: &str = "grad_norm";
    check_len(K, "norm_out", &norm_out, 1)?;
    check_len(K, "scratch", &scratch, BLOCKS)?;
    let n = grads.len();
    let name = match imp {
        MemImpl::Reference => "global_norm_squares_bf16",
        MemImpl::Vectorized => {
            membound::check_aligned16(K, &[("grads", grads.addr())])?;
            "global_norm_squares_bf16_vec"
        }
    };
    let squares = g.kernel("global_norm", name)?;
    let finish = g.kernel("global_norm", "global_norm_finish")?;
    let cfg = LaunchConfig {
        grid: (BLOCKS as u32, 1, 1),
        block: (256, 1, 1),
        smem_bytes: 0,
    };
    let fin = LaunchConfig {
        grid: (1, 1, 1),
        block: (1024, 1, 1),
        smem_bytes: 0,
    };
    let num_partials = BLOCKS as i32;
    // SAFETY: global_norm_squares_bf16{,_vec}(float* partials[gridDim.x], const bf16*, size_t n)
    // (the vec kernel: grads aligned, checked) and
    // global_norm_finish(float* norm, const float* partials, int); scratch holds BLOCKS floats.
    unsafe {
        g.launch(&squares, cfg, &[&scratch, &grads, &n])?;
        g.launch(&finish, fin, &[&norm_out, &scratch, &num_partials])
    }
}

/// In place: `grads[i] *= max_norm / (norm + 1e-6)` if `norm > max_norm`, else unchanged
/// (multiplied by 1, so bitwise unchanged), with `norm = norm[0]` read on the device (e.g.
/// written by [`grad_norm`]). One bf16 rounding per element. An empty `grads` is a no-op.
pub fn clip_by_norm_bf16(g: &Gpu, grads: Ptr<bf16>, norm: Ptr<f32>, max_norm: f32) -> Result<()> {
    const K: &str = "clip_by_norm_bf16";
    check_len(K, "norm", &norm, 1)?;
    let n = grads.len();
    if n == 0 {
        return Ok(());
    }
    let k = g.kernel("global_norm", K)?;
    // SAFETY: clip_by_norm_bf16(bf16* g, size_t n, const float* norm, float max_norm).
    unsafe {
        g.launch(
            &k,
            LaunchConfig::linear(n, 256),
            &[&grads, &n, &norm, &max_norm],
        )
    }
}
