//! The CUDA backend's data-parallel collectives on the host execution harness, 2 and 3 MPI
//! ranks (feature `mpi`, Open MPI installed): `cargo test --release -p tests --features mpi
//! --test gpu_mpi`. This binary re-runs itself under mpirun (`device_collective_child`).

#![cfg(feature = "mpi")]

use gpt::cuda::dist::{reduce_scatter_sum, DeviceCollective, HostStaged};
use gpt::dist::Shards;
use runtime::cuda::half::bf16;
use std::process::Command;
use tests::gpu::*;

fn mpirun(np: usize) -> Command {
    let mut c = Command::new("timeout");
    c.args([
        "300",
        "mpirun",
        "-np",
        &np.to_string(),
        "--oversubscribe",
        "--bind-to",
        "none",
    ])
    .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
    .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    c
}

#[test]
fn host_staged_device_collectives_sum_in_rank_order_and_regather_exactly() {
    let exe = std::env::current_exe().unwrap();
    for np in [2, 3] {
        let out = mpirun(np)
            .arg(&exe)
            .args([
                "--exact",
                "device_collective_child",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("MXGPT_MPI_CHILD", "1")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        assert_eq!(
            text.matches("device collective child: ok").count(),
            np,
            "{text}"
        );
    }
}

/// Rank r's gradient value i: mixed magnitudes, so the order of a sum shows in its bits.
fn grad(r: usize, i: usize) -> bf16 {
    let x = ((r * 1_000_003 + i) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mant = (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
    bf16::from_f32(mant * [1.0, 1e-3, 1e3, 1e-7][(x >> 20 & 3) as usize])
}

#[test]
fn device_collective_child() {
    if std::env::var("MXGPT_MPI_CHILD").is_err() {
        return; // only under mpirun, started by the test above
    }
    let dist = gpt::dist::from_env().unwrap();
    let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        check(&HostStaged {
            dist: dist.as_ref(),
        })
    }));
    if checked.is_err() {
        dist.abort(1);
    }
    println!("device collective child: ok");
}

fn check(dc: &dyn DeviceCollective) {
    let g = gpu();
    let (me, n) = (dc.rank(), dc.size());
    let in_order = |i: usize| {
        let s = (1..n).fold(grad(0, i).to_f32(), |s, r| s + grad(r, i).to_f32());
        bf16::from_f32(s).to_bits()
    };
    for total in [1usize, 2, 7, 1001, 4099] {
        let shards = Shards::even(total, n);
        let mine = shards.range(me);
        let host: Vec<bf16> = (0..total).map(|i| grad(me, i)).collect();
        let grads = g.upload(&host).unwrap();
        let parts = poisoned::<bf16>(&g, mine.len() * n);
        reduce_scatter_sum(dc, &g, &grads, &shards, &parts).unwrap();
        let got = g.download(&grads).unwrap();
        for i in mine.clone() {
            assert_eq!(
                got[i].to_bits(),
                in_order(i),
                "reduce-scatter element {i} of {total}"
            );
        }
        // Outside this rank's shard the gradients are untouched.
        for i in (0..total).filter(|i| !mine.contains(i)) {
            assert_eq!(
                got[i].to_bits(),
                host[i].to_bits(),
                "element {i} of {total} moved"
            );
        }
        // The all-gather of the summed shards: every element everywhere, bit for bit.
        let buf = poisoned::<bf16>(&g, total);
        g.copy_to_device_at(&got[mine.clone()], &buf, mine.start)
            .unwrap();
        dc.all_gather(&g, &buf, &shards).unwrap();
        let all = g.download(&buf).unwrap();
        for (i, v) in all.iter().enumerate() {
            assert_eq!(
                v.to_bits(),
                in_order(i),
                "all-gather element {i} of {total}"
            );
        }
    }
}
