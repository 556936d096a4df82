//! Tests that run without a GPU: geometry validation, error texts, the embedded module table,
//! and (with MXGPT_EXPECT_STUB_DRIVER=1, running against the stub libcuda) the no-driver error.

use super::*;

/// H100 SXM limits as documented by NVIDIA (not read from the code under test).
fn h100() -> DeviceProps {
    DeviceProps {
        ordinal: 0,
        name: "NVIDIA H100 80GB HBM3".into(),
        sm_count: 132,
        compute_capability: (9, 0),
        total_memory: 80 << 30,
        l2_bytes: 50 << 20,
        clock_khz: 1_980_000,
        max_threads_per_block: 1024,
        max_grid: (2_147_483_647, 65_535, 65_535),
        smem_per_block: 48 * 1024,
        smem_per_block_optin: 227 * 1024,
        driver_version: 13000,
    }
}

#[test]
fn linear_config_covers_n() {
    assert_eq!(LaunchConfig::linear(1000, 256).grid, (4, 1, 1));
    assert_eq!(LaunchConfig::linear(1024, 256).grid, (4, 1, 1));
    assert_eq!(LaunchConfig::linear(1025, 256).grid, (5, 1, 1));
    assert_eq!(LaunchConfig::linear(1, 256).block, (256, 1, 1));
}

#[test]
fn validation_accepts_legal_and_names_the_broken_limit() {
    let p = h100();
    let ok = LaunchConfig {
        grid: (132, 65_535, 1),
        block: (32, 32, 1),
        smem_bytes: 227 * 1024,
    };
    assert_eq!(ok.validate(&p), Ok(()));

    let too_many = LaunchConfig {
        grid: (1, 1, 1),
        block: (64, 32, 1),
        smem_bytes: 0,
    };
    let e = too_many.validate(&p).unwrap_err();
    assert!(e.contains("2048 threads per block > 1024"), "{e}");
    assert!(e.contains("block (64, 32, 1)"), "{e}");

    let empty = LaunchConfig::linear(0, 256);
    assert!(empty.validate(&p).unwrap_err().contains("empty launch"));

    let grid_y = LaunchConfig {
        grid: (1, 65_536, 1),
        block: (1, 1, 1),
        smem_bytes: 0,
    };
    assert!(grid_y.validate(&p).unwrap_err().contains("grid exceeds"));

    let smem = LaunchConfig {
        grid: (1, 1, 1),
        block: (128, 1, 1),
        smem_bytes: 227 * 1024 + 1,
    };
    let e = smem.validate(&p).unwrap_err();
    assert!(
        e.contains("232449 B dynamic shared memory > 232448 B"),
        "{e}"
    );

    let deep = LaunchConfig {
        grid: (1, 1, 1),
        block: (1, 1, 65),
        smem_bytes: 0,
    };
    assert!(deep.validate(&p).unwrap_err().contains("block z = 65"));
}

#[test]
fn error_text_names_call_code_and_fix() {
    // Display also asks the driver for a description; against the stub that lookup fails and is
    // skipped, on a real driver it adds text. Both keep these parts.
    let e = CudaError::new("cuInit (loading the NVIDIA driver)", 34).to_string();
    assert!(
        e.starts_with("cuInit (loading the NVIDIA driver): CUDA_ERROR_STUB_LIBRARY (34)"),
        "{e}"
    );
    assert!(e.contains("stub libcuda"), "{e}");
    let e = CudaError::new("launch of gelu::gelu_forward with grid (1, 1, 1)", 2).to_string();
    assert!(
        e.contains("CUDA_ERROR_OUT_OF_MEMORY (2)") && e.contains("lower the batch size"),
        "{e}"
    );
    assert_eq!(error_name(100), "CUDA_ERROR_NO_DEVICE");
    assert_eq!(error_name(12345), "CUDA_ERROR_(unlisted)");
}

#[cfg(feature = "cuda")]
#[test]
fn embedded_modules_include_the_first_kernels() {
    let names = module_names();
    for (module, kernels) in [
        (
            "encoder",
            &[
                "encoder_forward",
                "encoder_backward_wpe",
                "encoder_backward_wte",
            ][..],
        ),
        ("gelu", &["gelu_forward", "gelu_backward"][..]),
        ("adamw", &["adamw_update"][..]),
        (
            "global_norm",
            &[
                "global_norm_squares_bf16",
                "global_norm_squares_f32",
                "global_norm_finish",
                "clip_by_norm_bf16",
                "clip_by_norm_f32",
            ][..],
        ),
        (
            "cast",
            &["cast_f32_to_bf16", "cast_bf16_to_f32", "transpose_bf16"][..],
        ),
    ] {
        assert!(
            names.contains(&module),
            "module {module} missing from {names:?}"
        );
        // Every target variant must export the unmangled (extern "C") entry the backend launches.
        for v in ptx::VARIANTS.iter().filter(|v| v.module == module) {
            for k in kernels {
                assert!(
                    v.ptx.contains(&format!(".entry {k}(")),
                    "{module} ({}) lacks .entry {k}",
                    v.target
                );
            }
        }
    }
}

/// CI runs this with LD_LIBRARY_PATH pointing at the stub libcuda and
/// MXGPT_EXPECT_STUB_DRIVER=1; elsewhere it checks nothing about the driver and says so.
#[cfg(feature = "cuda")]
#[test]
fn no_driver_gives_a_clear_error() {
    if std::env::var("MXGPT_EXPECT_STUB_DRIVER").as_deref() != Ok("1") {
        eprintln!("skipped: set MXGPT_EXPECT_STUB_DRIVER=1 and run against the stub libcuda");
        return;
    }
    let err = match Gpu::new(0) {
        Ok(gpu) => panic!("expected the stub driver, got a device: {:?}", gpu.props()),
        Err(e) => e,
    };
    assert_eq!(err.code, 34);
    let text = err.to_string();
    assert!(
        text.contains("cuInit") && text.contains("CUDA_ERROR_STUB_LIBRARY"),
        "{text}"
    );
    assert!(text.contains("no driver on this machine"), "{text}");
}

#[cfg(not(feature = "cuda"))]
#[test]
fn a_build_without_cuda_says_so() {
    let e = match Gpu::new(0) {
        Ok(_) => panic!("a GPU without the cuda feature"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("without the `cuda` feature"), "{e}");
}
