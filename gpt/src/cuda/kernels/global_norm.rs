//! Launchers for ptx/kernels/global_norm.cu (being written).
