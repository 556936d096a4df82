//! Launcher for ptx/kernels/adamw.cu: AdamW on f32 master weights with stochastically rounded
//! bf16 parameters.

use super::{check_len, Ptr};
use runtime::cuda::{half::bf16, CudaError, Gpu, LaunchConfig, Result};

/// Hyper-parameters of one `adamw_update` launch (the kernel's scalar arguments, in order).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamwArgs {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    /// 1 - beta1^t for the 1-based step t (computed on the host).
    pub beta1_correction: f32,
    /// 1 - beta2^t.
    pub beta2_correction: f32,
    pub eps: f32,
    /// 0 for ranges that are not decayed (biases, layernorm gains).
    pub weight_decay: f32,
    /// Multiplies every gradient first (clip factor, or 1).
    pub grad_scale: f32,
    /// Stochastic-rounding seed: pass a fresh one every step (e.g. a hash of run seed and step).
    pub seed: u32,
}

/// One AdamW step on elements `[offset, offset + n)` of the flat parameter buffers, in place:
/// `m`, `v`, `master` (f32) are updated and `params` (bf16) is overwritten with the stochastic
/// rounding of the new master weight (`sr_hash(seed, i)` of the GLOBAL index i, so results do
/// not depend on how the buffer is split into launches). All pointers are the WHOLE buffers
/// (the kernel adds `offset` itself); each must hold at least `offset + n` elements. `grads` is
/// read only. No operand may overlap another. `n == 0` is a no-op.
#[allow(clippy::too_many_arguments)]
pub fn adamw_update(
    g: &Gpu,
    params: Ptr<bf16>,
    master: Ptr<f32>,
    grads: Ptr<bf16>,
    m: Ptr<f32>,
    v: Ptr<f32>,
    offset: usize,
    n: usize,
    hp: &AdamwArgs,
) -> Result<()> {
    const K: &str = "adamw_update";
    let end = offset
        .checked_add(n)
        .ok_or_else(|| CudaError::new(format!("{K}: offset + n overflows"), 1))?;
    check_len(K, "params", &params, end)?;
    check_len(K, "master", &master, end)?;
    check_len(K, "grads", &grads, end)?;
    check_len(K, "m", &m, end)?;
    check_len(K, "v", &v, end)?;
    if n == 0 {
        return Ok(());
    }
    let k = g.kernel("adamw", K)?;
    let a = *hp;
    // SAFETY: adamw_update(bf16*, float*, const bf16*, float*, float*, size_t offset, size_t n,
    // float x 8, unsigned int seed); every buffer holds offset + n elements (checked).
    unsafe {
        g.launch(
            &k,
            LaunchConfig::linear(n, 256),
            &[
                &params,
                &master,
                &grads,
                &m,
                &v,
                &offset,
                &n,
                &a.lr,
                &a.beta1,
                &a.beta2,
                &a.beta1_correction,
                &a.beta2_correction,
                &a.eps,
                &a.weight_decay,
                &a.grad_scale,
                &a.seed,
            ],
        )
    }
}
