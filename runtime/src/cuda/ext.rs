//! CUDA 12+ driver entry points missing from cust_raw's CUDA 11.4 bindings, fetched at run time
//! with `cuGetProcAddress_v2`. The C signatures are written out from cuda.h (CUDA 13.0).
//!
//! Unverified on a GPU: the struct layouts below follow cuda.h and are checked here only by
//! size/alignment tests.

use super::error::{check, CudaError, Result};
use super::{sys, Gpu};
use cust_raw::{CUfunction, CUstream};
use std::ffi::{c_void, CString};
use std::os::raw::c_int;

/// `CUtensorMap`: 128 opaque bytes, 128-byte aligned in the CUDA 13 header (64 in CUDA 12; the
/// larger alignment satisfies both). Passed to kernels as a `const __grid_constant__` parameter.
#[repr(C, align(128))]
#[derive(Clone, Copy, Debug)]
pub struct CuTensorMap {
    pub opaque: [u64; 16],
}

// CUtensorMapDataType, Interleave, Swizzle, L2promotion, FloatOOBfill: C enums (int-sized).
pub const TENSOR_MAP_DATA_TYPE_UINT8: u32 = 0;
pub const TENSOR_MAP_DATA_TYPE_FLOAT16: u32 = 6;
pub const TENSOR_MAP_DATA_TYPE_FLOAT32: u32 = 7;
pub const TENSOR_MAP_DATA_TYPE_BFLOAT16: u32 = 9;
pub const TENSOR_MAP_INTERLEAVE_NONE: u32 = 0;
pub const TENSOR_MAP_SWIZZLE_NONE: u32 = 0;
pub const TENSOR_MAP_SWIZZLE_32B: u32 = 1;
pub const TENSOR_MAP_SWIZZLE_64B: u32 = 2;
pub const TENSOR_MAP_SWIZZLE_128B: u32 = 3;
pub const TENSOR_MAP_L2_PROMOTION_NONE: u32 = 0;
pub const TENSOR_MAP_L2_PROMOTION_L2_128B: u32 = 2;
pub const TENSOR_MAP_FLOAT_OOB_FILL_NONE: u32 = 0;

/// ```c
/// CUresult cuTensorMapEncodeTiled(CUtensorMap *tensorMap, CUtensorMapDataType tensorDataType,
///     cuuint32_t tensorRank, void *globalAddress, const cuuint64_t *globalDim,
///     const cuuint64_t *globalStrides, const cuuint32_t *boxDim,
///     const cuuint32_t *elementStrides, CUtensorMapInterleave interleave,
///     CUtensorMapSwizzle swizzle, CUtensorMapL2promotion l2Promotion,
///     CUtensorMapFloatOOBfill oobFill);
/// ```
/// globalStrides has rank-1 entries (bytes, dim 0 is implicitly the element size).
pub type CuTensorMapEncodeTiledFn = unsafe extern "C" fn(
    tensor_map: *mut CuTensorMap,
    data_type: u32,
    rank: u32,
    global_address: *mut c_void,
    global_dim: *const u64,
    global_strides: *const u64,
    box_dim: *const u32,
    element_strides: *const u32,
    interleave: u32,
    swizzle: u32,
    l2_promotion: u32,
    oob_fill: u32,
) -> u32;

/// `CUlaunchAttributeValue`: a 64-byte union; `cluster_dim` is the CLUSTER_DIMENSION member.
#[repr(C)]
#[derive(Clone, Copy)]
pub union CuLaunchAttributeValue {
    pub pad: [u8; 64],
    pub cluster_dim: [u32; 3],
}

/// `CUlaunchAttribute { CUlaunchAttributeID id; char pad[4]; CUlaunchAttributeValue value; }`
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CuLaunchAttribute {
    pub id: u32,
    pub pad: [u8; 4],
    pub value: CuLaunchAttributeValue,
}

pub const LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION: u32 = 4;

/// `CUlaunchConfig`, field for field.
#[repr(C)]
pub struct CuLaunchConfig {
    pub grid_dim_x: u32,
    pub grid_dim_y: u32,
    pub grid_dim_z: u32,
    pub block_dim_x: u32,
    pub block_dim_y: u32,
    pub block_dim_z: u32,
    pub shared_mem_bytes: u32,
    pub stream: CUstream,
    pub attrs: *mut CuLaunchAttribute,
    pub num_attrs: u32,
}

/// ```c
/// CUresult cuLaunchKernelEx(const CUlaunchConfig *config, CUfunction f, void **kernelParams,
///     void **extra);
/// ```
pub type CuLaunchKernelExFn = unsafe extern "C" fn(
    config: *const CuLaunchConfig,
    f: CUfunction,
    kernel_params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> u32;

/// The driver entry points we fetch, resolved once per Gpu by `Gpu::driver_ext`.
#[derive(Clone, Copy)]
pub struct DriverExt {
    pub tensor_map_encode_tiled: CuTensorMapEncodeTiledFn,
    pub launch_kernel_ex: CuLaunchKernelExFn,
}

/// Looks up `symbol` for the API version `cuda_version` (e.g. 12000 = CUDA 12.0).
///
/// # Safety
/// The caller must transmute the result only to the function type that matches the symbol's
/// C signature for that version.
pub unsafe fn proc_address(symbol: &str, cuda_version: i32) -> Result<*mut c_void> {
    let name = CString::new(symbol)
        .map_err(|_| CudaError::new(format!("symbol {symbol:?} has NUL"), 1))?;
    let mut pfn: *mut c_void = std::ptr::null_mut();
    let mut found: c_int = -1;
    // flags 0 = CU_GET_PROC_ADDRESS_DEFAULT
    check(
        sys::cuGetProcAddress_v2(name.as_ptr(), &mut pfn, cuda_version, 0, &mut found),
        || format!("cuGetProcAddress({symbol}, version {cuda_version})"),
    )?;
    if pfn.is_null() || found != 0 {
        return Err(CudaError::new(
            format!(
                "driver has no {symbol} for CUDA {}.{} (query status {found}; 1 = symbol not found, 2 = driver too old)",
                cuda_version / 1000,
                cuda_version % 1000 / 10
            ),
            500,
        ));
    }
    Ok(pfn)
}

impl Gpu {
    /// `cuTensorMapEncodeTiled` and `cuLaunchKernelEx` (both CUDA 12.0 APIs).
    pub fn driver_ext(&self) -> Result<DriverExt> {
        // SAFETY: each pointer is transmuted to the type written out from cuda.h above.
        unsafe {
            let encode = proc_address("cuTensorMapEncodeTiled", 12000)?;
            let launch_ex = proc_address("cuLaunchKernelEx", 12000)?;
            Ok(DriverExt {
                tensor_map_encode_tiled: std::mem::transmute::<*mut c_void, CuTensorMapEncodeTiledFn>(
                    encode,
                ),
                launch_kernel_ex: std::mem::transmute::<*mut c_void, CuLaunchKernelExFn>(launch_ex),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, offset_of, size_of};

    // Layouts from cuda.h (x86-64): CUtensorMap 128 B; CUlaunchAttribute 8 + 64 = 72 B;
    // CUlaunchConfig: 7 x u32 = 28, pad to 32, stream 8, attrs 8, numAttrs 4 + pad = 56 B.
    #[test]
    fn ffi_layouts_match_cuda_h() {
        assert_eq!(size_of::<CuTensorMap>(), 128);
        assert_eq!(align_of::<CuTensorMap>(), 128);
        assert_eq!(size_of::<CuLaunchAttribute>(), 72);
        assert_eq!(offset_of!(CuLaunchAttribute, value), 8);
        assert_eq!(offset_of!(CuLaunchConfig, stream), 32);
        assert_eq!(offset_of!(CuLaunchConfig, attrs), 40);
        assert_eq!(offset_of!(CuLaunchConfig, num_attrs), 48);
        assert_eq!(size_of::<CuLaunchConfig>(), 56);
    }
}
