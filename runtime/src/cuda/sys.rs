//! The driver functions this crate calls, declared with a plain `u32` status.
//!
//! cust_raw's bindings return `CUresult` as a Rust enum generated from the CUDA 11.4 headers; a
//! newer driver can return codes that enum does not have, which would be undefined behaviour
//! when read as the enum. So the calls we make are redeclared here returning the raw code. The
//! handle and attribute types still come from cust_raw, and cust_raw's build script supplies the
//! link line (`-lcuda`). Signatures match cuda.h (CUDA 13.0) for the `_v2` symbols named.

#![allow(non_snake_case)]

use cust_raw::{
    CUcontext, CUdevice, CUdeviceptr, CUevent, CUfunction, CUgraph, CUgraphExec, CUmodule, CUstream,
};
use std::os::raw::{c_char, c_int, c_uint, c_void};

pub type Status = u32;
pub const SUCCESS: Status = 0;

#[link(name = "cuda")]
extern "C" {
    pub fn cuInit(flags: c_uint) -> Status;
    pub fn cuDriverGetVersion(version: *mut c_int) -> Status;
    pub fn cuGetErrorString(error: Status, text: *mut *const c_char) -> Status;
    pub fn cuDeviceGetCount(count: *mut c_int) -> Status;
    pub fn cuDeviceGet(device: *mut CUdevice, ordinal: c_int) -> Status;
    pub fn cuDeviceGetName(name: *mut c_char, len: c_int, device: CUdevice) -> Status;
    pub fn cuDeviceGetAttribute(value: *mut c_int, attribute: c_int, device: CUdevice) -> Status;
    pub fn cuDeviceTotalMem_v2(bytes: *mut usize, device: CUdevice) -> Status;
    pub fn cuDevicePrimaryCtxRetain(ctx: *mut CUcontext, device: CUdevice) -> Status;
    pub fn cuDevicePrimaryCtxRelease_v2(device: CUdevice) -> Status;
    pub fn cuCtxSetCurrent(ctx: CUcontext) -> Status;
    pub fn cuStreamCreate(stream: *mut CUstream, flags: c_uint) -> Status;
    pub fn cuStreamDestroy_v2(stream: CUstream) -> Status;
    pub fn cuStreamSynchronize(stream: CUstream) -> Status;
    pub fn cuStreamWaitEvent(stream: CUstream, event: CUevent, flags: c_uint) -> Status;
    pub fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> Status;
    pub fn cuMemAlloc_v2(ptr: *mut CUdeviceptr, bytes: usize) -> Status;
    pub fn cuMemFree_v2(ptr: CUdeviceptr) -> Status;
    pub fn cuMemHostAlloc(ptr: *mut *mut c_void, bytes: usize, flags: c_uint) -> Status;
    pub fn cuMemFreeHost(ptr: *mut c_void) -> Status;
    pub fn cuMemcpyHtoDAsync_v2(
        dst: CUdeviceptr,
        src: *const c_void,
        bytes: usize,
        stream: CUstream,
    ) -> Status;
    pub fn cuMemcpyDtoHAsync_v2(
        dst: *mut c_void,
        src: CUdeviceptr,
        bytes: usize,
        stream: CUstream,
    ) -> Status;
    pub fn cuMemcpyDtoDAsync_v2(
        dst: CUdeviceptr,
        src: CUdeviceptr,
        bytes: usize,
        stream: CUstream,
    ) -> Status;
    pub fn cuMemsetD8Async(dst: CUdeviceptr, value: u8, count: usize, stream: CUstream) -> Status;
    pub fn cuModuleLoadDataEx(
        module: *mut CUmodule,
        image: *const c_void,
        num_options: c_uint,
        options: *mut c_int,
        values: *mut *mut c_void,
    ) -> Status;
    pub fn cuModuleUnload(module: CUmodule) -> Status;
    pub fn cuModuleGetFunction(
        func: *mut CUfunction,
        module: CUmodule,
        name: *const c_char,
    ) -> Status;
    pub fn cuFuncSetAttribute(func: CUfunction, attribute: c_int, value: c_int) -> Status;
    pub fn cuLaunchKernel(
        f: CUfunction,
        grid_x: c_uint,
        grid_y: c_uint,
        grid_z: c_uint,
        block_x: c_uint,
        block_y: c_uint,
        block_z: c_uint,
        shared_mem_bytes: c_uint,
        stream: CUstream,
        params: *mut *mut c_void,
        extra: *mut *mut c_void,
    ) -> Status;
    pub fn cuEventCreate(event: *mut CUevent, flags: c_uint) -> Status;
    pub fn cuEventRecord(event: CUevent, stream: CUstream) -> Status;
    pub fn cuEventSynchronize(event: CUevent) -> Status;
    pub fn cuEventElapsedTime(ms: *mut f32, start: CUevent, end: CUevent) -> Status;
    pub fn cuEventDestroy_v2(event: CUevent) -> Status;
    // Stream capture and graphs (CUDA 11.4+; mode: CU_STREAM_CAPTURE_MODE_*).
    pub fn cuStreamBeginCapture_v2(stream: CUstream, mode: c_int) -> Status;
    pub fn cuStreamEndCapture(stream: CUstream, graph: *mut CUgraph) -> Status;
    pub fn cuGraphInstantiateWithFlags(
        exec: *mut CUgraphExec,
        graph: CUgraph,
        flags: u64,
    ) -> Status;
    pub fn cuGraphLaunch(exec: CUgraphExec, stream: CUstream) -> Status;
    pub fn cuGraphExecDestroy(exec: CUgraphExec) -> Status;
    pub fn cuGraphDestroy(graph: CUgraph) -> Status;
    /// CUDA 12.0+ (driver >= 525): the versioned lookup of driver entry points.
    pub fn cuGetProcAddress_v2(
        symbol: *const c_char,
        pfn: *mut *mut c_void,
        cuda_version: c_int,
        flags: u64,
        symbol_status: *mut c_int,
    ) -> Status;
}

// Attribute and option numbers (cuda.h, unchanged since CUDA 11).
pub const ATTR_MAX_THREADS_PER_BLOCK: c_int = 1;
pub const ATTR_MAX_GRID_DIM_X: c_int = 5;
pub const ATTR_MAX_GRID_DIM_Y: c_int = 6;
pub const ATTR_MAX_GRID_DIM_Z: c_int = 7;
pub const ATTR_MAX_SHARED_MEMORY_PER_BLOCK: c_int = 8;
pub const ATTR_CLOCK_RATE_KHZ: c_int = 13;
pub const ATTR_MULTIPROCESSOR_COUNT: c_int = 16;
pub const ATTR_L2_CACHE_SIZE: c_int = 38;
pub const ATTR_COMPUTE_CAPABILITY_MAJOR: c_int = 75;
pub const ATTR_COMPUTE_CAPABILITY_MINOR: c_int = 76;
pub const ATTR_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: c_int = 97;
pub const FUNC_ATTR_MAX_DYNAMIC_SHARED_SIZE_BYTES: c_int = 8;
pub const JIT_ERROR_LOG_BUFFER: c_int = 5;
/// CU_STREAM_CAPTURE_MODE_GLOBAL: calls that are unsafe during a capture (cuMemAlloc, a
/// synchronous copy, ...) fail while any stream captures.
pub const STREAM_CAPTURE_MODE_GLOBAL: c_int = 0;
pub const JIT_ERROR_LOG_BUFFER_SIZE_BYTES: c_int = 6;
