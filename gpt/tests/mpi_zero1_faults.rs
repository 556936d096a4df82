//! ZeRO-1 checkpoints of a device's shards (`dist::zero1`) when one rank fails, on 2 ranks
//! under `mpirun` (feature `mpi`, Open MPI installed): `cargo test --release -p gpt --features
//! mpi --test mpi_zero1_faults`. The device is a host stand-in (`HostShard`, a `DeviceZero1` over
//! host vectors) so that the agreement logic runs on CPU machines; the CUDA backend's
//! `DeviceZero1` is exercised by tests/tests/gpu_mpi.rs on the host execution harness.
//!
//! A failure planted on rank 1 only, before the first collective (reading its state, a shard that
//! is not its own, writing its shard file, no ZeRO-1 state, restoring its state): every rank must
//! return an error naming rank 1 with its message, within the job's time limit (a rank left in
//! a collective would hang it), and the previous checkpoint stays the newest and loads intact.

#![cfg(feature = "mpi")]

mod common;
#[path = "../../tests/src/mpirun.rs"]
#[allow(dead_code)] // this test uses one of its launchers
mod mpirun;
use common::tmpdir;
use gpt::checkpoint::{self, Header};
use gpt::config::ModelConfig;
use gpt::dist::zero1::{self, DeviceZero1, ShardState};
use gpt::dist::{Shards, Transport};
use std::path::Path;
use std::time::Instant;

/// What the stand-in device does wrong (on the rank it is planted on).
#[derive(Clone, Copy, PartialEq, Debug)]
enum Fault {
    None,
    Read,
    WrongOffset,
    Write,
}

/// A rank's ZeRO-1 state in host memory: its shard of the optimizer state and the whole BF16
/// parameters (values exact in BF16 here: the test never rounds).
struct HostShard {
    st: ShardState,
    params: Vec<f32>,
    fault: Fault,
}

const PLANTED: &str = "planted fault";

impl DeviceZero1 for HostShard {
    fn reduce_gradients(&mut self, _: &dyn Transport, _: &Shards) -> Result<f32, String> {
        Err("not used here".into())
    }
    fn gather_params(&mut self, dist: &dyn Transport, shards: &Shards) -> Result<(), String> {
        dist.all_gather(&mut self.params, shards)
    }
    fn read_shard(&self) -> Result<ShardState, String> {
        match self.fault {
            Fault::Read => Err(format!("{PLANTED}: the device did not answer")),
            Fault::WrongOffset => Ok(ShardState {
                offset: self.st.offset + 8,
                ..self.st.clone()
            }),
            _ => Ok(self.st.clone()),
        }
    }
    fn write_shard(&mut self, st: &ShardState) -> Result<(), String> {
        if self.fault == Fault::Write {
            return Err(format!("{PLANTED}: the device refused the shard"));
        }
        let at = st.offset;
        let params = if st.params.is_empty() {
            &st.master
        } else {
            &st.params
        };
        self.params[at..at + params.len()].copy_from_slice(params);
        self.st = st.clone();
        Ok(())
    }
}

/// Parameters: an odd total, so the 2 shards differ in length and rank 1's starts mid-model.
const TOTAL: usize = 1003;

fn value(array: usize, i: usize, seed: usize) -> f32 {
    ((array * 7919 + i * 31 + seed) % 1000) as f32 / 64.0 - 7.0
}

/// Rank `rank`'s state of version `seed` (everything a function of it, to compare after a load).
fn host_shard(dist: &dyn Transport, seed: usize) -> HostShard {
    let mine = Shards::even(TOTAL, dist.size()).range(dist.rank());
    let arr = |a: usize| {
        mine.clone()
            .map(|i| value(a, i, seed))
            .collect::<Vec<f32>>()
    };
    HostShard {
        st: ShardState {
            offset: mine.start,
            master: arr(0),
            m: arr(1),
            v: arr(2),
            params: arr(3),
        },
        params: (0..TOTAL).map(|i| value(3, i, seed)).collect(),
        fault: Fault::None,
    }
}

fn header(dist: &dyn Transport, step: u64) -> Header {
    Header {
        model: ModelConfig::new(1, 8, 1, 4).unwrap(),
        step,
        num_params: TOTAL,
        ranks: dist.size(),
        train: serde_json::json!({}),
    }
}

#[test]
fn a_rank_failing_before_the_first_collective_fails_every_rank_without_a_hang() {
    let dir = tmpdir("zero1-faults");
    let t = Instant::now();
    // 90 s: the job takes a few seconds; a rank left waiting in a collective would hang it.
    let out = mpirun::run_child_within(
        2,
        "zero1_faults_child",
        "zero1 faults child: ok",
        &[("MXGPT_ZERO1_DIR", dir.as_os_str())],
        90,
    );
    eprintln!("{out}\nthe job took {:.1} s", t.elapsed().as_secs_f64());
    // The step-2 checkpoint is the only complete one.
    let steps: Vec<u64> = checkpoint::list(&dir)
        .unwrap()
        .iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(steps, vec![2]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn zero1_faults_child() {
    let Ok(dir) = std::env::var("MXGPT_ZERO1_DIR") else {
        return; // only under mpirun, started by the test above
    };
    let dist = gpt::dist::from_env().unwrap();
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        faults(dist.as_ref(), Path::new(&dir))
    }));
    if run.is_err() {
        dist.abort(1)
    }
    println!("zero1 faults child: ok");
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

fn faults(dist: &dyn Transport, dir: &Path) {
    let r = dist.rank();
    assert_eq!(dist.size(), 2, "expected 2 ranks");
    let mut a = host_shard(dist, 1);
    let h2 = header(dist, 2);
    let p2 = zero1::save_zero1_checkpoint(dir, &h2, Some(&mut a), dist).unwrap();
    dist.barrier().unwrap();

    // Saving, a fault on rank 1 before the first collective: every rank gets the same error,
    // naming rank 1 and its message; no model file marks the step.
    let faults = [
        (4, Fault::Read, PLANTED),
        (5, Fault::WrongOffset, "not that rank's shard"),
        (6, Fault::Write, "ckpt_00000006.rank1-of-2.bin"),
    ];
    for (step, fault, says) in faults {
        let mut b = host_shard(dist, 2);
        if r == 1 {
            b.fault = fault;
        }
        if fault == Fault::Write && r == 1 {
            // A directory where rank 1's shard file goes (its writer cannot rename onto it).
            std::fs::create_dir(checkpoint::shard_path(dir, step, 1, 2)).unwrap();
        }
        let h = header(dist, step);
        let what = format!("rank {r}, {fault:?}");
        let e = zero1::save_zero1_checkpoint(dir, &h, Some(&mut b), dist).unwrap_err();
        println!("{what}: {e}");
        assert!(
            e.contains("rank(s) [1] could not write their shard")
                && e.contains("rank 1 of 2: ")
                && e.contains(says),
            "{what}: {e}"
        );
        dist.barrier().unwrap();
        assert!(
            !dir.join(checkpoint::file_name(step)).exists(),
            "{what}: a model file for step {step}"
        );
        if fault == Fault::Write && r == 1 {
            std::fs::remove_dir(checkpoint::shard_path(dir, step, 1, 2)).unwrap();
        }
    }
    // A rank without ZeRO-1 state at all: the same, no hang.
    let mut b = host_shard(dist, 2);
    let dz: Option<&mut dyn DeviceZero1> = if r == 1 { None } else { Some(&mut b) };
    let e = zero1::save_zero1_checkpoint(dir, &header(dist, 7), dz, dist).unwrap_err();
    assert!(
        e.contains("rank(s) [1]") && e.contains("without ZeRO-1 support"),
        "rank {r}: {e}"
    );
    dist.barrier().unwrap();

    // Loading, rank 1 cannot restore its shard: every rank gets the error, none waits in the
    // parameter all-gather.
    let mut c = host_shard(dist, 3);
    if r == 1 {
        c.fault = Fault::Write;
    }
    let e = zero1::load_zero1_checkpoint(&p2, &h2, Some(&mut c), dist).unwrap_err();
    assert!(
        e.contains("rank(s) [1] could not read their part") && e.contains(PLANTED),
        "rank {r}: {e}"
    );
    dist.barrier().unwrap();

    // The step-2 checkpoint is intact: a fresh state loads exactly what was saved.
    let mut d = host_shard(dist, 3);
    zero1::load_zero1_checkpoint(&p2, &h2, Some(&mut d), dist).unwrap();
    for (name, x, y) in [
        ("master", &d.st.master, &a.st.master),
        ("m", &d.st.m, &a.st.m),
        ("v", &d.st.v, &a.st.v),
        ("BF16 parameters", &d.st.params, &a.st.params),
    ] {
        assert_eq!(bits(x), bits(y), "rank {r}: {name} after the load");
    }
    // Every rank's parameters gathered: the saved shards', everywhere.
    let shards = Shards::even(TOTAL, 2);
    let want: Vec<f32> = (0..TOTAL).map(|i| value(3, i, 1)).collect();
    assert_eq!(
        bits(&d.params),
        bits(&want),
        "rank {r}: gathered parameters"
    );
    assert!(shards.range(1).start.is_multiple_of(8) && shards.range(1).start > 0);
    dist.barrier().unwrap();
}
