//! Launchers for ptx/kernels/cast.cu (being written).
