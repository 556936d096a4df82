//! Launchers for ptx/kernels/adamw.cu (being written).
