//! Launchers for ptx/kernels/classifier.cu (being written).
