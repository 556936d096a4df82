//! Launchers for ptx/kernels/gelu.cu (being written).
