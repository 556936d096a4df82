//! The measurement method: warm-up, repetitions until a count and a time are both reached,
//! median / extremes / quartiles, and random inputs rotated over `ROTATE` sets (never zeros) so
//! that a repetition does not find its inputs hot in the caches.

use gpt::rng::SplitMix64;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Random input sets each measurement rotates through.
pub const ROTATE: usize = 3;

/// How every entry is measured (`--warmup`, `--reps`, `--min-time`).
#[derive(Clone, Copy, Debug)]
pub struct Method {
    pub warmup: usize,
    pub reps: usize,
    pub min_time: Duration,
}

/// Milliseconds per repetition: median, extremes and quartiles.
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub q1: f64,
    pub q3: f64,
    pub reps: usize,
}

impl Stats {
    pub fn from_samples(mut ms: Vec<f64>) -> Stats {
        ms.sort_by(|a, b| a.total_cmp(b));
        let at = |f: f64| {
            // linear interpolation between order statistics
            let x = f * (ms.len() - 1) as f64;
            let (lo, hi) = (x.floor() as usize, x.ceil() as usize);
            ms[lo] + (ms[hi] - ms[lo]) * (x - lo as f64)
        };
        Stats {
            median: at(0.5),
            min: ms[0],
            max: ms[ms.len() - 1],
            q1: at(0.25),
            q3: at(0.75),
            reps: ms.len(),
        }
    }

    pub fn json(&self) -> Value {
        json!({"median_ms": self.median, "min_ms": self.min, "max_ms": self.max,
               "q1_ms": self.q1, "q3_ms": self.q3, "reps": self.reps})
    }
}

/// Runs `f(i)` (i picks the rotated input set) `warmup` times untimed, then at least `reps`
/// times and until `min_time` has passed.
pub fn measure(m: &Method, mut f: impl FnMut(usize)) -> Stats {
    for i in 0..m.warmup {
        f(i % ROTATE);
    }
    let start = Instant::now();
    let mut ms = Vec::new();
    while ms.len() < m.reps || (start.elapsed() < m.min_time && ms.len() < 10_000) {
        let t = Instant::now();
        f(ms.len() % ROTATE);
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Stats::from_samples(ms)
}

/// Uniform values in [-scale, scale], never exactly zero.
pub fn random_vec(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut r = SplitMix64::new(seed);
    (0..n)
        .map(|_| {
            let x = (r.next_f64() * 2.0 - 1.0) as f32 * scale;
            if x == 0.0 {
                0.5 * scale
            } else {
                x
            }
        })
        .collect()
}

/// `ROTATE` independent `random_vec`s.
pub fn random_sets(n: usize, seed: u64, scale: f32) -> Vec<Vec<f32>> {
    (0..ROTATE)
        .map(|i| random_vec(n, seed * 31 + i as u64, scale))
        .collect()
}

pub fn random_tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut r = SplitMix64::new(seed);
    (0..n)
        .map(|_| (r.next_u64() % vocab as u64) as u32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_interpolate_quartiles() {
        let s = Stats::from_samples(vec![4.0, 1.0, 3.0, 2.0, 5.0]);
        assert_eq!(
            (s.min, s.q1, s.median, s.q3, s.max),
            (1.0, 2.0, 3.0, 4.0, 5.0)
        );
        let s = Stats::from_samples(vec![1.0, 2.0]);
        assert_eq!((s.q1, s.median, s.q3), (1.25, 1.5, 1.75));
    }

    #[test]
    fn measure_reaches_reps_and_rotates() {
        let m = Method {
            warmup: 2,
            reps: 7,
            min_time: Duration::ZERO,
        };
        let mut seen = Vec::new();
        let s = measure(&m, |i| seen.push(i));
        assert_eq!(s.reps, 7);
        assert_eq!(seen, vec![0, 1, 0, 1, 2, 0, 1, 2, 0]);
        assert!(random_vec(1000, 1, 1.0)
            .iter()
            .all(|&x| x != 0.0 && x.abs() <= 1.0));
    }
}
