//! The CUDA backend: typed launchers for every kernel of ptx/kernels (`kernels`) and the
//! `Backend` implementation over them. Feature `cuda`.
//!
//! NOT VERIFIED ON A GPU unless perf/ holds a GPU run of the commit you are reading: written and
//! compiled (against the stub driver) in sessions without one.

pub mod backend;
pub mod dist;
mod fp8_telemetry;
pub mod kernels;
pub mod mx;
pub mod step;

pub use backend::CudaBackend;
pub use mx::{MxGemmChoice, MxGemmPath};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;

    /// Without a driver the backend fails with the driver's error, not a panic. CI runs this
    /// against the stub libcuda with MXGPT_EXPECT_STUB_DRIVER=1; elsewhere it checks nothing.
    #[test]
    fn no_driver_is_a_clear_error() {
        if std::env::var("MXGPT_EXPECT_STUB_DRIVER").as_deref() != Ok("1") {
            eprintln!("skipped: set MXGPT_EXPECT_STUB_DRIVER=1 and run against the stub libcuda");
            return;
        }
        let cfg = ModelConfig::named("tiny").unwrap();
        let e = match CudaBackend::new(0, &cfg, 1, 16) {
            Ok(_) => panic!("expected the stub driver, got a GPU"),
            Err(e) => e.to_string(),
        };
        assert!(
            e.contains("cuInit") && e.contains("CUDA_ERROR_STUB_LIBRARY"),
            "{e}"
        );
    }
}
