//! Launchers for ptx/kernels/layernorm.cu (being written).
