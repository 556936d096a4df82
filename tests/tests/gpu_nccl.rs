//! NCCL on one GPU, one rank: the least the data-parallel issue asks for with a GPU at hand.
//! `NcclCollective` moves every gradient bucket of the overlapped exchange on a second stream,
//! then the whole-buffer exchange and the rank-order sum, and the parameter all-gather; results
//! against the host's copy, bit for bit, outputs poisoned. Runs only on a GPU
//! (`MXGPT_TEST_DEVICE=cuda`, libnccl found through `MXGPT_NCCL_LIB`, the nvidia-nccl wheel in
//! .toolchain/nccl, or the loader's path; tools/cuda/gpu-session.sh looks for PyTorch's); NCCL
//! cannot run on the host execution harness, where each test says so and returns. No
//! multi-GPU NCCL run has happened.

use gpt::config::ModelConfig;
use gpt::cuda::dist::{
    backward_buckets, reduce_scatter_sum, BucketPlan, DeviceCollective, NcclCollective,
};
use gpt::dist::{Local, Shards};
use gpt::layout::ParamLayout;
use runtime::cuda::half::bf16;
use runtime::cuda::Gpu;
use tests::gpu::*;

/// The GPU and NCCL over one rank, or None (said) on the harness.
fn one_rank() -> Option<(Gpu, NcclCollective)> {
    let g = gpu();
    if !on_gpu(&g) {
        eprintln!("skipped: NCCL needs a GPU (the tests run on the host execution harness)");
        return None;
    }
    let nccl = NcclCollective::init(&Local).unwrap_or_else(|e| panic!("NCCL on 1 rank: {e}"));
    Some((g, nccl))
}

#[test]
fn nccl_moves_every_bucket_on_a_second_stream() {
    let Some((g, nccl)) = one_rank() else { return };
    let layout = ParamLayout::new(&ModelConfig::new(3, 64, 4, 64).unwrap());
    let shards = Shards::even(layout.total, 1);
    let host = Rng(0x0CC1).vec_bf16(layout.total, 2.0);
    let grads = g.upload(&host).unwrap();
    let parts = poisoned::<bf16>(&g, layout.total);
    let side = g.create_stream().unwrap();
    g.on_stream(&side, || -> Result<(), String> {
        for bucket in backward_buckets(&layout) {
            nccl.exchange(&g, &grads, &parts, &BucketPlan::new(&bucket, &shards, 0))?;
        }
        nccl.finish(&g, "the test's buckets")
    })
    .unwrap();
    assert!(
        bits(&g.download(&parts).unwrap()) == bits(&host),
        "buckets: parts != gradients"
    );
}

#[test]
fn nccl_reduce_scatter_and_all_gather_on_one_rank() {
    let Some((g, nccl)) = one_rank() else { return };
    let n = 1_000_003;
    let shards = Shards::even(n, 1);
    let host = Rng(0x0CC2).vec_bf16(n, 2.0);
    let grads = g.upload(&host).unwrap();
    let parts = poisoned::<bf16>(&g, n);
    // One rank's rank-order sum is its own part, rounded once more to BF16: unchanged.
    reduce_scatter_sum(&nccl, &g, &grads, &shards, &parts).unwrap();
    assert!(
        bits(&g.download(&grads).unwrap()) == bits(&host),
        "reduce-scatter"
    );
    nccl.all_gather(&g, &grads, &shards).unwrap();
    assert!(
        bits(&g.download(&grads).unwrap()) == bits(&host),
        "all-gather"
    );
}
