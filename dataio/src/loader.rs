//! Training batches: the stream is cut into windows of T+1 tokens at stride T (window w covers
//! tokens [w*T, w*T + T]; consecutive windows share one token, as in llm.c), so a dataset of N
//! tokens has W = (N-1)/T windows. Each epoch visits windows in an order given by a keyed
//! bijection of 0..W (a Feistel network with cycle-walking, keyed by seed and epoch): O(1)
//! memory however large the dataset, and no dependence on any library's RNG. A batch takes the
//! next B windows of the order; the last W mod B windows of an epoch are skipped (a different
//! set each epoch when shuffling). The state is four counters, so resuming is exact.

use crate::{DataError, TokenDataset};

/// splitmix64's output function: a fixed, well-mixed 64-bit hash.
pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A pseudo-random permutation of `0..n` for a key: `index(i)` is the i-th element.
#[derive(Clone, Debug)]
pub struct Permutation {
    n: u64,
    half_bits: u32,
    keys: [u64; 4],
}

impl Permutation {
    pub fn new(n: u64, key: u64) -> Permutation {
        // Smallest even bit width 2h with 2^(2h) >= n: the Feistel domain is at most 4n, so
        // cycle-walking takes under 4 rounds on average.
        let bits = 64 - n.saturating_sub(1).leading_zeros();
        let half_bits = bits.div_ceil(2).max(1);
        let mut keys = [0u64; 4];
        for (r, k) in keys.iter_mut().enumerate() {
            *k = splitmix64(key ^ splitmix64(r as u64 + 1));
        }
        Permutation { n, half_bits, keys }
    }

    fn feistel(&self, x: u64) -> u64 {
        let mask = (1u64 << self.half_bits) - 1;
        let (mut left, mut right) = (x >> self.half_bits, x & mask);
        for k in self.keys {
            let f = splitmix64(right ^ k) & mask;
            (left, right) = (right, left ^ f);
        }
        (left << self.half_bits) | right
    }

    /// The element at position `i` (< n). A bijection on the 2^(2h) domain, walked until it
    /// lands inside 0..n, is a bijection on 0..n.
    pub fn index(&self, i: u64) -> u64 {
        debug_assert!(i < self.n);
        let mut x = self.feistel(i);
        while x >= self.n {
            x = self.feistel(x);
        }
        x
    }
}

/// Where a `BatchLoader` is; save it with a checkpoint and `restore` it to continue exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoaderState {
    pub seed: u64,
    pub epoch: u64,
    /// Position in this epoch's window order of the next batch's first window.
    pub next_window: u64,
    pub batch: u64,
    pub seq: u64,
    /// Windows in the dataset (pins the dataset's length).
    pub num_windows: u64,
    /// 1 when shuffling, 0 for the sequential order.
    pub shuffle: u64,
}

/// Deterministic, resumable batches of B windows of T+1 tokens.
pub struct BatchLoader {
    dataset: TokenDataset,
    state: LoaderState,
    order: Permutation,
    window: Vec<u32>,
}

impl BatchLoader {
    /// Errors when the dataset has fewer than `batch * seq + 1` tokens.
    pub fn new(
        dataset: &TokenDataset,
        batch: usize,
        seq: usize,
        seed: u64,
        shuffle: bool,
    ) -> Result<Self, DataError> {
        if batch == 0 || seq == 0 {
            return Err(DataError::mismatch(
                dataset.spec(),
                "batch loader",
                "batch >= 1 and seq >= 1",
                format!("batch {batch}, seq {seq}"),
            ));
        }
        let need = (batch as u64) * (seq as u64) + 1;
        if dataset.num_tokens() < need {
            return Err(DataError::mismatch(
                dataset.spec(),
                "batch loader",
                format!("at least batch*seq+1 = {batch}*{seq}+1 = {need} tokens"),
                format!("{} tokens", dataset.num_tokens()),
            ));
        }
        let num_windows = (dataset.num_tokens() - 1) / seq as u64;
        let state = LoaderState {
            seed,
            epoch: 0,
            next_window: 0,
            batch: batch as u64,
            seq: seq as u64,
            num_windows,
            shuffle: shuffle as u64,
        };
        Ok(BatchLoader {
            dataset: dataset.clone(),
            order: Self::order_for(&state),
            state,
            window: vec![0; seq + 1],
        })
    }

    fn order_for(s: &LoaderState) -> Permutation {
        Permutation::new(
            s.num_windows,
            splitmix64(s.seed) ^ splitmix64(s.epoch.wrapping_add(0x5EED)),
        )
    }

    /// Windows per epoch actually used: W - W mod B.
    pub fn batches_per_epoch(&self) -> u64 {
        self.state.num_windows / self.state.batch
    }

    /// The stream position of the window at position `i` of the current epoch's order.
    fn window_start(&self, i: u64) -> u64 {
        let w = if self.state.shuffle == 1 {
            self.order.index(i)
        } else {
            i
        };
        w * self.state.seq
    }

    /// Fills `inputs` and `targets` (each B*T, row-major by batch row) with the next batch;
    /// `targets[b][t] = inputs[b][t+1]` within a window.
    pub fn next_batch(&mut self, inputs: &mut [u32], targets: &mut [u32]) -> Result<(), DataError> {
        let (b, t) = (self.state.batch as usize, self.state.seq as usize);
        if inputs.len() != b * t || targets.len() != b * t {
            return Err(DataError::mismatch(
                self.dataset.spec(),
                "next_batch buffers",
                format!("inputs and targets of B*T = {} tokens", b * t),
                format!("{} and {}", inputs.len(), targets.len()),
            ));
        }
        self.start_epoch_if_done();
        for row in 0..b {
            let start = self.window_start(self.state.next_window + row as u64);
            self.dataset.read_tokens(start, &mut self.window)?;
            inputs[row * t..(row + 1) * t].copy_from_slice(&self.window[..t]);
            targets[row * t..(row + 1) * t].copy_from_slice(&self.window[1..]);
        }
        self.state.next_window += self.state.batch;
        Ok(())
    }

    /// Moves past the next batch without reading it, exactly as `next_batch` would (data
    /// parallelism: the other ranks' batches of a global batch).
    pub fn skip_batch(&mut self) {
        self.start_epoch_if_done();
        self.state.next_window += self.state.batch;
    }

    fn start_epoch_if_done(&mut self) {
        if self.state.next_window + self.state.batch > self.state.num_windows {
            self.state.epoch += 1;
            self.state.next_window = 0;
            self.order = Self::order_for(&self.state);
        }
    }

    pub fn state(&self) -> LoaderState {
        self.state
    }

    /// Continues from a saved state; refuses one from another seed, shape, order mode or dataset
    /// length, since its positions would mean other windows.
    pub fn restore(&mut self, s: LoaderState) -> Result<(), DataError> {
        let cur = self.state;
        let checks = [
            ("seed", cur.seed, s.seed),
            ("batch", cur.batch, s.batch),
            ("seq", cur.seq, s.seq),
            (
                "num_windows (dataset length)",
                cur.num_windows,
                s.num_windows,
            ),
            ("shuffle", cur.shuffle, s.shuffle),
        ];
        for (field, have, saved) in checks {
            if have != saved {
                return Err(DataError::mismatch(
                    self.dataset.spec(),
                    format!("loader state field {field}"),
                    format!("{have} (this loader)"),
                    format!("{saved} (saved state)"),
                ));
            }
        }
        if s.next_window > s.num_windows {
            return Err(DataError::mismatch(
                self.dataset.spec(),
                "loader state field next_window",
                format!("<= {}", s.num_windows),
                s.next_window,
            ));
        }
        self.state = s;
        self.order = Self::order_for(&s);
        Ok(())
    }
}
