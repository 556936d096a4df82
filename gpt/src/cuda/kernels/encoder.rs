//! Launchers for ptx/kernels/encoder.cu (being written).
