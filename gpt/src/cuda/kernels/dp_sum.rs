//! Launcher for ptx/kernels/dp_sum.cu: data parallel's rank-order sum of the gradient parts on
//! the device (used by `crate::cuda::dist`), and its host twin.

use super::{check_len, Ptr};
use runtime::cuda::half::bf16;
use runtime::cuda::{Gpu, LaunchConfig};

/// `out[i]` = BF16(rank-order FP32 sum over r of `parts[r * n + i]`), i < n. `out` must not
/// overlap `parts`. `n == 0` is a no-op.
pub fn rank_order_sum(
    g: &Gpu,
    out: Ptr<bf16>,
    parts: Ptr<bf16>,
    n: usize,
    ranks: usize,
) -> runtime::cuda::Result<()> {
    const K: &str = "rank_order_sum_bf16";
    check_len(K, "out", &out, n)?;
    check_len(K, "parts", &parts, n * ranks)?;
    if n == 0 {
        return Ok(());
    }
    assert!(ranks >= 1, "{K}: a sum over no ranks");
    let ranks = ranks as i32;
    let k = g.kernel("dp_sum", K)?;
    // SAFETY: rank_order_sum_bf16(bf16*, const bf16*, size_t, int); lengths checked.
    unsafe {
        g.launch(
            &k,
            LaunchConfig::linear(n, 256),
            &[&out, &parts, &n, &ranks],
        )
    }
}

/// The host twin of [`rank_order_sum`]: the same additions in the same order, one rounding.
pub fn rank_order_sum_host(parts: &[bf16], n: usize, ranks: usize) -> Vec<bf16> {
    (0..n)
        .map(|i| {
            let s = (1..ranks).fold(parts[i].to_f32(), |s, r| s + parts[r * n + i].to_f32());
            bf16::from_f32(s)
        })
        .collect()
}
