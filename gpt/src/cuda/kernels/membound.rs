//! Which kernels the memory-bound operations run: the scalar reference kernels or their
//! 16-byte vectorized variants (the `*_vec` / `*_multi` kernels of encoder.cu, gelu.cu, cast.cu,
//! layernorm.cu, global_norm.cu, adamw.cu).
//!
//! Default: [`MemImpl::Vectorized`] wherever the shapes and alignment allow it (checked by each
//! launcher: 16-byte aligned operands, and C % 8 == 0 for the row-wise kernels), because the
//! vectorized kernels issue one 16-byte access per 8 bf16 where the references issue eight
//! 2-byte ones, and AdamW becomes one launch instead of one per tensor. Each is tested on the
//! host harness against the CPU reference and, where the arithmetic is the same, bit for bit
//! against its reference kernel; none has run on a GPU yet (harness-tested, ptxas-assembled, not
//! timed). Until a GPU run has checked them, the references stay one switch away:
//! `MXGPT_MEMBOUND_KERNELS=reference` in the environment makes every default launcher run the
//! reference kernels (read once per process). The `*_with` launchers take the implementation
//! explicitly (tests, benchmarks).

use runtime::cuda::{CudaError, Result};
use std::sync::OnceLock;

/// The environment variable that forces the reference kernels: `reference` (or `vectorized`,
/// the default).
pub const ENV: &str = "MXGPT_MEMBOUND_KERNELS";

/// One memory-bound operation's implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemImpl {
    /// The scalar kernels: one thread per element (or column), 2- and 4-byte accesses; any
    /// shape and alignment.
    Reference,
    /// The 16-byte vector kernels; each launcher documents what it needs (and checks it).
    Vectorized,
}

/// Whether `MXGPT_MEMBOUND_KERNELS=reference` is set (read once).
pub fn forced_reference() -> bool {
    static FORCED: OnceLock<bool> = OnceLock::new();
    *FORCED.get_or_init(|| match std::env::var(ENV).as_deref() {
        Ok("reference") => {
            log::info!("{ENV}=reference: the memory-bound operations run the reference kernels");
            true
        }
        Ok("vectorized") | Ok("") | Err(_) => false,
        Ok(other) => {
            log::warn!("{ENV}={other} is not 'reference' or 'vectorized': using the default");
            false
        }
    })
}

/// The implementation a default launcher uses: vectorized when `possible` (the launcher's own
/// shape and alignment test) and not forced to the reference.
pub fn pick(possible: bool) -> MemImpl {
    if possible && !forced_reference() {
        MemImpl::Vectorized
    } else {
        MemImpl::Reference
    }
}

/// Whether every device address is a multiple of 16.
pub fn aligned16(addrs: &[u64]) -> bool {
    addrs.iter().all(|a| a.is_multiple_of(16))
}

/// Error unless every named device address is 16-byte aligned (asked for the vectorized kernels
/// explicitly).
pub fn check_aligned16(kernel: &str, operands: &[(&str, u64)]) -> Result<()> {
    for (what, addr) in operands {
        if !addr.is_multiple_of(16) {
            return Err(CudaError::new(
                format!(
                    "{kernel}: operand {what} at device address {addr:#x} is not 16-byte aligned (the vectorized kernel moves 16-byte vectors; use MemImpl::Reference)"
                ),
                1,
            ));
        }
    }
    Ok(())
}

/// Error unless `c` is a multiple of 8 (one 16-byte vector of bf16 never crosses a row).
pub fn check_c8(kernel: &str, c: usize) -> Result<()> {
    if !c.is_multiple_of(8) {
        return Err(CudaError::new(
            format!("{kernel}: the vectorized kernel needs c % 8 == 0, got c = {c} (use MemImpl::Reference)"),
            1,
        ));
    }
    Ok(())
}
