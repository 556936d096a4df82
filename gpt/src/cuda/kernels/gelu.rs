//! Launchers for ptx/kernels/gelu.cu: GELU (tanh approximation) forward and backward,
//! elementwise, bf16 storage and f32 math (semantics of `gpt::cpu::ops::{gelu_forward,
//! gelu_backward_inplace}`).
//!
//! Two implementations ([`MemImpl`]) with the same per-element arithmetic: the reference
//! kernels (one thread per element) and the `*_vec` kernels (one thread per 8 elements, 16-byte
//! accesses, a scalar tail for n % 8), which need every operand 16-byte aligned. The default
//! launchers pick the vectorized kernels when the operands are aligned (see
//! [`super::membound`]); the `*_with` launchers run the one asked for.

use super::membound::{self, MemImpl};
use super::{check_len, Ptr};
use runtime::cuda::{half::bf16, Gpu, LaunchConfig, Result};

fn config(imp: MemImpl, n: usize) -> LaunchConfig {
    match imp {
        MemImpl::Reference => LaunchConfig::linear(n, 256),
        MemImpl::Vectorized => LaunchConfig::linear(n.div_ceil(8), 256),
    }
}

/// `out[i] = gelu(inp[i])` for i < n, overwriting `out`. `out` may be `inp` (in place: each
/// element is read and written by the same thread). `n == 0` is a no-op.
pub fn gelu_forward(g: &Gpu, out: Ptr<bf16>, inp: Ptr<bf16>, n: usize) -> Result<()> {
    let imp = membound::pick(membound::aligned16(&[out.addr(), inp.addr()]));
    gelu_forward_with(g, imp, out, inp, n)
}

/// [`gelu_forward`] on the kernels asked for; [`MemImpl::Vectorized`] needs `out` and `inp`
/// 16-byte aligned (an error otherwise).
pub fn gelu_forward_with(
    g: &Gpu,
    imp: MemImpl,
    out: Ptr<bf16>,
    inp: Ptr<bf16>,
    n: usize,
) -> Result<()> {
    const K: &str = "gelu_forward";
    check_len(K, "out", &out, n)?;
    check_len(K, "inp", &inp, n)?;
    if imp == MemImpl::Vectorized {
        membound::check_aligned16(K, &[("out", out.addr()), ("inp", inp.addr())])?;
    }
    if n == 0 {
        return Ok(());
    }
    let name = match imp {
        MemImpl::Reference => K,
        MemImpl::Vectorized => "gelu_forward_vec",
    };
    let k = g.kernel("gelu", name)?;
    // SAFETY: gelu_forward{,_vec}(bf16*, const bf16*, size_t); lengths checked, alignment
    // checked for the vec kernel.
    unsafe { g.launch(&k, config(imp, n), &[&out, &inp, &n]) }
}

/// In-place backward: `d[i] = d[i] * gelu'(pre[i])` for i < n, where `d` holds dout on entry
/// and dinp on return (overwritten, not accumulated) and `pre` is the GELU input. Runs
/// `gelu_backward(dinp = d, inp = pre, dout = d)`: the kernel reads `inp[i]` and `dout[i]` and
/// then writes `dinp[i]` in the same thread (the vec kernel: the same 8-vector), with no
/// `__restrict__`, so `dinp` aliasing `dout` is safe. `pre` must not overlap `d`. `n == 0` is a
/// no-op.
pub fn gelu_backward_inplace(g: &Gpu, d: Ptr<bf16>, pre: Ptr<bf16>, n: usize) -> Result<()> {
    let imp = membound::pick(membound::aligned16(&[d.addr(), pre.addr()]));
    gelu_backward_inplace_with(g, imp, d, pre, n)
}

/// [`gelu_backward_inplace`] on the kernels asked for; [`MemImpl::Vectorized`] needs `d` and
/// `pre` 16-byte aligned (an error otherwise).
pub fn gelu_backward_inplace_with(
    g: &Gpu,
    imp: MemImpl,
    d: Ptr<bf16>,
    pre: Ptr<bf16>,
    n: usize,
) -> Result<()> {
    const K: &str = "gelu_backward";
    check_len(K, "d", &d, n)?;
    check_len(K, "pre", &pre, n)?;
    if imp == MemImpl::Vectorized {
        membound::check_aligned16(K, &[("d", d.addr()), ("pre", pre.addr())])?;
    }
    if n == 0 {
        return Ok(());
    }
    let name = match imp {
        MemImpl::Reference => K,
        MemImpl::Vectorized => "gelu_backward_vec",
    };
    let k = g.kernel("gelu", name)?;
    // SAFETY: gelu_backward{,_vec}(bf16* dinp, const bf16* inp, const bf16* dout, size_t);
    // lengths checked; dinp == dout is allowed by the kernels (see above).
    unsafe { g.launch(&k, config(imp, n), &[&d, &pre, &d, &n]) }
}
