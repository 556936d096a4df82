//! The GPU kernel benchmark (`bench --device cuda --suite kernels`, tools::gpu_bench) runs every
//! kernel it times, MXFP4 ones included, at a small model's shapes on the host execution
//! harness: each launch is valid (shapes, lengths, alignment) and every timing entry gets its
//! FLOPs and bytes. Timings themselves mean nothing here; this guards the benchmark code, which
//! otherwise only runs on a GPU.

use gpt::config::ModelConfig;
use gpt::model::Gpt;
use runtime::cuda::{Gpu, Schedule};

#[test]
fn kernels_suite_launches_every_kernel_on_the_harness() {
    let mut cfg = ModelConfig::new(1, 64, 2, 64).unwrap();
    cfg.vocab = 1000;
    cfg.padded_vocab = 1024;
    let gpt = Gpt::new(cfg, 2, 64).unwrap();
    let g = Gpu::harness(Schedule::InOrder);
    let timings = tools::gpu_bench::kernels(&g, &gpt, 0, 1).unwrap();
    let names: Vec<&str> = timings.iter().map(|t| t.name.as_str()).collect();
    for want in [
        "encoder_forward",
        "matmul_forward/lm_head",
        "attention_backward",
        "mx_quantize/fc/dgrad_dy_rowwise/rht_sr_bf16",
        "mx_quantize/fcproj/wgrad_x_colwise/rtn_codes",
        "mx_gemm_int8/qkv/wgrad",
        "mx_gemm_bf16/fcproj/dgrad",
        "adamw",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    for t in &timings {
        assert_eq!(t.samples_ms.len(), 1, "{}", t.name);
        assert!(
            t.flops > 0.0 && t.bytes > 0.0,
            "{}: flops {} bytes {}",
            t.name,
            t.flops,
            t.bytes
        );
    }
}
