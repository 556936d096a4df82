//! Launch geometry and kernel arguments.

use super::DeviceProps;
use std::ffi::c_void;
use std::fmt;

/// Grid and block dimensions and dynamic shared memory of one launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchConfig {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub smem_bytes: u32,
}

impl LaunchConfig {
    /// One thread per element: `block` threads per block, enough blocks to cover `n`.
    pub fn linear(n: usize, block: u32) -> LaunchConfig {
        let blocks = n.div_ceil(block.max(1) as usize);
        LaunchConfig {
            grid: (blocks.min(u32::MAX as usize) as u32, 1, 1),
            block: (block, 1, 1),
            smem_bytes: 0,
        }
    }

    /// Checks the geometry against the device's limits before the driver sees it, so the
    /// error says which limit was broken (the driver only says CUDA_ERROR_INVALID_VALUE).
    pub fn validate(&self, props: &DeviceProps) -> Result<(), String> {
        let (gx, gy, gz) = self.grid;
        let (bx, by, bz) = self.block;
        if gx == 0 || gy == 0 || gz == 0 || bx == 0 || by == 0 || bz == 0 {
            return Err(format!("empty launch ({self})"));
        }
        let threads = bx as u64 * by as u64 * bz as u64;
        if threads > props.max_threads_per_block as u64 {
            return Err(format!(
                "{threads} threads per block > {} allowed on {} ({self})",
                props.max_threads_per_block, props.name
            ));
        }
        if bz > 64 {
            return Err(format!("block z = {bz} > 64 ({self})"));
        }
        let (mx, my, mz) = props.max_grid;
        if gx > mx || gy > my || gz > mz {
            return Err(format!(
                "grid exceeds the device maximum {mx}x{my}x{mz} ({self})"
            ));
        }
        if self.smem_bytes > props.smem_per_block_optin {
            return Err(format!(
                "{} B dynamic shared memory > {} B per block on {} ({self})",
                self.smem_bytes, props.smem_per_block_optin, props.name
            ));
        }
        Ok(())
    }
}

impl fmt::Display for LaunchConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (gx, gy, gz) = self.grid;
        let (bx, by, bz) = self.block;
        write!(
            f,
            "grid ({gx}, {gy}, {gz}), block ({bx}, {by}, {bz}), smem {} B",
            self.smem_bytes
        )
    }
}

/// A value passed to a kernel: `cuLaunchKernel` takes an array of pointers to the argument
/// values. Scalars point at themselves; device buffers point at their device address.
///
/// # Safety
/// `as_kernel_param` must return a pointer to a value laid out exactly as the kernel parameter
/// (a C scalar of the same size, or a 64-bit device address), valid while `self` is borrowed.
pub unsafe trait KernelArg {
    fn as_kernel_param(&self) -> *mut c_void;
    /// Size in bytes of the value `as_kernel_param` points at (the harness checks it against
    /// the kernel's parameter; a GPU launch cannot).
    fn param_size(&self) -> usize;
}

macro_rules! scalar_args {
    ($($t:ty),*) => {$(
        // SAFETY: a plain C scalar passed by address.
        unsafe impl KernelArg for $t {
            fn as_kernel_param(&self) -> *mut c_void {
                self as *const $t as *mut c_void
            }
            fn param_size(&self) -> usize {
                std::mem::size_of::<$t>()
            }
        }
    )*};
}
scalar_args!(f32, f64, i32, u32, i64, u64, usize, u8, i8, u16, i16);
