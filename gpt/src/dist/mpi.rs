//! The MPI transport (feature `mpi`): rsmpi over the system's MPI library (Open MPI from
//! Debian's packages). Sums are ours, in rank order (see `dist`): the reduce-scatter is
//! point-to-point sends of each shard to its owner, which adds the contributions rank 0 first;
//! the all-gathers only move data. MPI's default error handler (errors are fatal) stays: an MPI
//! failure, or a rank that dies, ends the whole job through `mpirun` instead of hanging.

use super::{Shards, Transport};
use mpi::datatype::{Partition, PartitionMut};
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

pub struct Mpi {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    // Dropped last: finalizes MPI when the transport goes away.
    _universe: Universe,
}

impl Mpi {
    pub fn init() -> Result<Mpi, String> {
        // Only the main thread calls MPI (the CPU backend's workers never do): FUNNELED.
        let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Funneled)
            .ok_or("MPI_Init_thread failed (or MPI was already initialized in this process)")?;
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        Ok(Mpi {
            world,
            rank,
            size,
            _universe: universe,
        })
    }
}

impl Mpi {
    /// The data movement of a reduce-scatter: every rank's `send[shards.range(rank)]` (this
    /// rank's own included), handed to `each` in rank order, one part at a time (so a sum
    /// needs one part's buffer, not N). Sends to every other rank go out first, non-blocking.
    fn parts_in_rank_order(
        &self,
        send: &[f32],
        shards: &Shards,
        each: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<(), String> {
        let me = self.rank;
        let mine = shards.range(me);
        assert_eq!(
            send.len(),
            shards.total,
            "reduce-scatter of a buffer its shards do not describe"
        );
        count(shards.max_len(), "a gradient shard")?;
        let mut recv = vec![0.0f32; mine.len()];
        mpi::request::scope(|scope| {
            let sends: Vec<_> = (0..self.size)
                .filter(|&r| r != me)
                .map(|r| {
                    self.world
                        .process_at_rank(r as i32)
                        .immediate_send(scope, &send[shards.range(r)])
                })
                .collect();
            for r in 0..self.size {
                if r == me {
                    each(r, &send[mine.clone()]);
                } else {
                    self.world
                        .process_at_rank(r as i32)
                        .receive_into(&mut recv[..]);
                    each(r, &recv);
                }
            }
            for s in sends {
                s.wait();
            }
        });
        Ok(())
    }
}

/// MPI counts and displacements are C ints.
fn count(n: usize, what: &str) -> Result<i32, String> {
    i32::try_from(n).map_err(|_| {
        format!(
            "{what} of {n} floats: MPI messages hold at most {} elements; use more ranks",
            i32::MAX
        )
    })
}

impl Transport for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }

    fn reduce_scatter_sum(
        &self,
        send: &[f32],
        shards: &Shards,
        out: &mut [f32],
    ) -> Result<(), String> {
        assert_eq!(
            out.len(),
            shards.range(self.rank).len(),
            "reduce-scatter output is not this rank's shard"
        );
        self.parts_in_rank_order(send, shards, &mut |r, part| {
            if r == 0 {
                out.copy_from_slice(part);
            } else {
                out.iter_mut().zip(part).for_each(|(o, x)| *o += *x);
            }
        })
    }

    fn exchange(&self, send: &[f32], shards: &Shards, recv: &mut [f32]) -> Result<(), String> {
        let m = shards.range(self.rank).len();
        assert_eq!(
            recv.len(),
            m * self.size,
            "exchange output is not ranks x this rank's shard"
        );
        self.parts_in_rank_order(send, shards, &mut |r, part| {
            recv[r * m..(r + 1) * m].copy_from_slice(part)
        })
    }

    fn exchange_counts(
        &self,
        send: &[f32],
        send_counts: &[usize],
        recv: &mut [f32],
        recv_counts: &[usize],
    ) -> Result<(), String> {
        let layout =
            |counts: &[usize], len: usize, what: &str| -> Result<(Vec<i32>, Vec<i32>), String> {
                if counts.len() != self.size || counts.iter().sum::<usize>() != len {
                    return Err(format!(
                        "{what} counts {counts:?} for {} ranks and {len} values",
                        self.size
                    ));
                }
                count(len, what)?;
                let displs = counts
                    .iter()
                    .scan(0usize, |at, &c| {
                        let d = *at;
                        *at += c;
                        Some(d as i32)
                    })
                    .collect();
                Ok((counts.iter().map(|&c| c as i32).collect(), displs))
            };
        let (sc, sd) = layout(send_counts, send.len(), "an exchange's send")?;
        let (rc, rd) = layout(recv_counts, recv.len(), "an exchange's receive")?;
        let sent = Partition::new(send, sc, sd);
        let mut received = PartitionMut::new(recv, rc, rd);
        self.world.all_to_all_varcount_into(&sent, &mut received);
        Ok(())
    }

    fn all_gather(&self, buf: &mut [f32], shards: &Shards) -> Result<(), String> {
        count(shards.total, "an all-gather")?;
        let ranges: Vec<_> = (0..self.size).map(|r| shards.range(r)).collect();
        let counts: Vec<i32> = ranges.iter().map(|r| r.len() as i32).collect();
        let displs: Vec<i32> = ranges.iter().map(|r| r.start as i32).collect();
        let mine = buf[ranges[self.rank].clone()].to_vec();
        let mut part = PartitionMut::new(buf, counts, displs);
        self.world.all_gather_varcount_into(&mine[..], &mut part);
        Ok(())
    }

    fn gather(
        &self,
        mine: &[f32],
        shards: &Shards,
        root: usize,
        buf: &mut [f32],
    ) -> Result<(), String> {
        count(shards.total, "a gather")?;
        assert_eq!(
            mine.len(),
            shards.range(self.rank).len(),
            "gather input is not this rank's shard"
        );
        let at = self.world.process_at_rank(root as i32);
        if self.rank != root {
            at.gather_varcount_into(mine);
            return Ok(());
        }
        assert_eq!(
            buf.len(),
            shards.total,
            "gather output is not the whole buffer"
        );
        let ranges: Vec<_> = (0..self.size).map(|r| shards.range(r)).collect();
        let counts: Vec<i32> = ranges.iter().map(|r| r.len() as i32).collect();
        let displs: Vec<i32> = ranges.iter().map(|r| r.start as i32).collect();
        let mut part = PartitionMut::new(buf, counts, displs);
        at.gather_varcount_into_root(mine, &mut part);
        Ok(())
    }

    fn all_gather_f64(&self, x: f64) -> Result<Vec<f64>, String> {
        let mut all = vec![0.0f64; self.size];
        self.world.all_gather_into(&x, &mut all[..]);
        Ok(all)
    }

    fn broadcast(&self, buf: &mut [u8], root: usize) -> Result<(), String> {
        count(buf.len(), "a broadcast")?;
        self.world.process_at_rank(root as i32).broadcast_into(buf);
        Ok(())
    }

    fn barrier(&self) -> Result<(), String> {
        self.world.barrier();
        Ok(())
    }

    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}
