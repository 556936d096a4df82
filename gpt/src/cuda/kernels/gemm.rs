//! Launchers for ptx/kernels/gemm.cu (being written).
