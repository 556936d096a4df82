//! Launchers for ptx/kernels/gelu.cu: GELU (tanh approximation) forward and backward,
//! elementwise, bf16 storage and f32 math (semantics of `gpt::cpu::ops::{gelu_forward,
//! gelu_backward_inplace}`).

use super::{check_len, Ptr};
use runtime::cuda::{half::bf16, Gpu, LaunchConfig, Result};

/// `out[i] = gelu(inp[i])` for i < n, overwriting `out`. `out` may be `inp` (in place: each
/// element is read and written by the same thread). `n == 0` is a no-op.
pub fn gelu_forward(g: &Gpu, out: Ptr<bf16>, inp: Ptr<bf16>, n: usize) -> Result<()> {
    const K: &str = "gelu_forward";
    check_len(K, "out", &out, n)?;
    check_len(K, "inp", &inp, n)?;
    if n == 0 {
        return Ok(());
    }
    let k = g.kernel("gelu", K)?;
    // SAFETY: gelu_forward(bf16*, const bf16*, size_t); lengths checked.
    unsafe { g.launch(&k, LaunchConfig::linear(n, 256), &[&out, &inp, &n]) }
}

/// In-place backward: `d[i] = d[i] * gelu'(pre[i])` for i < n, where `d` holds dout on entry
/// and dinp on return (overwritten, not accumulated) and `pre` is the GELU input. Runs
/// `gelu_backward(dinp = d, inp = pre, dout = d)`: the kernel reads `inp[i]` and `dout[i]` and
/// then writes `dinp[i]` in the same thread, with no `__restrict__`, so `dinp` aliasing `dout`
/// is safe. `pre` must not overlap `d`. `n == 0` is a no-op.
pub fn gelu_backward_inplace(g: &Gpu, d: Ptr<bf16>, pre: Ptr<bf16>, n: usize) -> Result<()> {
    const K: &str = "gelu_backward";
    check_len(K, "d", &d, n)?;
    check_len(K, "pre", &pre, n)?;
    if n == 0 {
        return Ok(());
    }
    let k = g.kernel("gelu", K)?;
    // SAFETY: gelu_backward(bf16* dinp, const bf16* inp, const bf16* dout, size_t); lengths
    // checked; dinp == dout is allowed by the kernel (see above).
    unsafe { g.launch(&k, LaunchConfig::linear(n, 256), &[&d, &pre, &d, &n]) }
}
