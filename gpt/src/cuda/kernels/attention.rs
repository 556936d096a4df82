//! Launchers for ptx/kernels/attention.cu (being written).
