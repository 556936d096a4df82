//! Launcher for ptx/kernels/classifier.cu: the fused softmax + cross-entropy (+ logits
//! gradient) of `gpt::cpu::ops::classifier`.

use super::{check_dim, check_len, Ptr};
use runtime::cuda::{half::bf16, CudaError, Gpu, LaunchConfig, Result};

/// Threads per block (one block per row): CLS_THREADS in classifier.cu.
const THREADS: u32 = 1024;

/// For each of the `n` rows of `logits` [n, vp]: `losses[row] = logsumexp(logits[row, ..v]) -
/// logits[row, targets[row]]` (f32, overwritten). With `dloss = Some(s)` the logits row is
/// then OVERWRITTEN in place with `s * (softmax - onehot(target))` over `..v` and exactly 0
/// over the padding `v..vp`; with `None` the logits are left untouched. Probabilities are
/// never stored. Targets must be in `0..v`: the kernel does not check them beyond turning an
/// out-of-range target into a NaN loss (the backend validates targets on the host when it
/// uploads them). `losses` and `targets` must not overlap `logits`. One launch, one block of
/// 1024 threads per row.
#[allow(clippy::too_many_arguments)]
pub fn classifier(
    g: &Gpu,
    logits: Ptr<bf16>,
    losses: Ptr<f32>,
    targets: Ptr<i32>,
    n: usize,
    vp: usize,
    v: usize,
    dloss: Option<f32>,
) -> Result<()> {
    const K: &str = "classifier";
    let _ = check_dim(K, "n", n)?;
    let vpi = check_dim(K, "vp", vp)?;
    let vi = check_dim(K, "v", v)?;
    if v > vp {
        return Err(CudaError::new(
            format!("{K}: v = {v} must be <= vp = {vp}"),
            1,
        ));
    }
    let nvp = n
        .checked_mul(vp)
        .ok_or_else(|| CudaError::new(format!("{K}: n * vp overflows"), 1))?;
    check_len(K, "logits", &logits, nvp)?;
    check_len(K, "losses", &losses, n)?;
    check_len(K, "targets", &targets, n)?;
    let (write, s) = match dloss {
        Some(s) => (1i32, s),
        None => (0i32, 0.0f32),
    };
    let k = g.kernel("classifier", "classifier_forward_backward")?;
    let cfg = LaunchConfig {
        grid: (n as u32, 1, 1), // n <= 2^31 - 1 (check_dim): within the grid's x limit
        block: (THREADS, 1, 1),
        smem_bytes: 0,
    };
    // SAFETY: argument list matches classifier_forward_backward(bf16*, float*, const int*, int,
    // int, float, int); lengths checked above for the n rows the grid covers.
    unsafe {
        g.launch(
            &k,
            cfg,
            &[&logits, &losses, &targets, &vpi, &vi, &s, &write],
        )
    }
}
