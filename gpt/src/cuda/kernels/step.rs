//! Launchers for ptx/kernels/step.cu: the training step's loss sum, clip factor and (loss, norm)
//! ring on the device, and the per-step scalars they and `adamw::adamw_update_ranges_dev` read
//! from device memory (so a captured CUDA graph stays valid from step to step).

use super::{check_len, Ptr};
use runtime::cuda::{DeviceElem, Gpu, LaunchConfig, Result};

/// The step's scalars as the kernels read them: `struct StepParams` in step.cuh (48 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepParams {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    /// 1 - beta1^t for the 1-based step t.
    pub beta1_correction: f32,
    pub beta2_correction: f32,
    pub eps: f32,
    /// Applied to the decayed ranges only.
    pub weight_decay: f32,
    /// Clip the gradient norm to this; 0 = off.
    pub grad_clip: f32,
    /// AdamW's stochastic-rounding seed for this step.
    pub seed: u32,
    /// The step's (loss, norm) slot in the ring (`step_finish`).
    pub slot: u32,
    /// How many `loss_accumulate` calls the step's loss averages.
    pub micro_batches: i32,
    pub pad: i32,
}

// SAFETY: repr(C), 12 four-byte fields, no padding; every bit pattern is a valid value.
unsafe impl DeviceElem for StepParams {
    const NAME: &'static str = "StepParams";
}

/// `struct StepState` (step.cuh) as two u64 words: the f64 loss sum, then the f32 clip factor
/// and the i32 halted flag.
pub const STATE_WORDS: usize = 2;

/// Adds the mean of `losses` (computed in f64 in index order, rounded to f32, as
/// `Gpt::mean_loss`) to the step's loss sum in `state`. One warp; no host sync.
pub fn loss_accumulate(g: &Gpu, state: Ptr<u64>, losses: Ptr<f32>) -> Result<()> {
    const K: &str = "step_loss_accumulate";
    check_len(K, "state", &state, STATE_WORDS)?;
    let n = super::check_dim(K, "losses", losses.len())?;
    let k = g.kernel("step", K)?;
    let cfg = LaunchConfig {
        grid: (1, 1, 1),
        block: (32, 1, 1),
        smem_bytes: 0,
    };
    // SAFETY: step_loss_accumulate(StepState*, const float*, int n); lengths checked.
    unsafe { g.launch(&k, cfg, &[&state, &losses, &n]) }
}

/// Ends the step on the device: its loss (the sum over `p.micro_batches`) and `norm[0]` into
/// `ring` at `p.slot`, the loss sum reset, the clip factor and the halted flag set in `state`
/// (see step.cu). `p.slot` is read on the device: the caller keeps it below `ring.len() / 2`.
pub fn finish(
    g: &Gpu,
    state: Ptr<u64>,
    ring: Ptr<f32>,
    norm: Ptr<f32>,
    p: Ptr<StepParams>,
) -> Result<()> {
    const K: &str = "step_finish";
    check_len(K, "state", &state, STATE_WORDS)?;
    check_len(K, "ring", &ring, 2)?;
    check_len(K, "norm", &norm, 1)?;
    check_len(K, "params", &p, 1)?;
    let k = g.kernel("step", K)?;
    // SAFETY: step_finish(StepState*, float* ring, const float* norm, const StepParams*);
    // lengths checked, the slot is the caller's contract (above).
    unsafe { g.launch(&k, LaunchConfig::linear(1, 1), &[&state, &ring, &norm, &p]) }
}
