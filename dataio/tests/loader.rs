//! BatchLoader and Permutation: windows, determinism, epoch coverage, resume.

mod common;
use common::*;
use dataio::{BatchLoader, Dtype, MegatronWriter, Permutation, TokenDataset};
use std::collections::HashSet;

/// A dataset whose stream token i is i % 50000 (one document ending in EOT would break that,
/// so it is a single llm.c shard with no EOT at all).
fn counting_dataset(dir: &TempDir, n: usize) -> TokenDataset {
    let toks: Vec<u16> = (0..n).map(|i| (i % 50000) as u16).collect();
    std::fs::write(dir.0.join("count.bin"), llmc_bytes(&toks)).unwrap();
    TokenDataset::open(&dir.path("count.bin")).unwrap()
}

#[test]
fn permutation_is_a_bijection() {
    for n in [1u64, 2, 3, 5, 16, 17, 1000, 4097, 65536, 100_003] {
        for key in [0u64, 1, 0xDEAD_BEEF] {
            let p = Permutation::new(n, key);
            let mut seen = vec![false; n as usize];
            for i in 0..n {
                let x = p.index(i);
                assert!(
                    x < n && !seen[x as usize],
                    "n {n} key {key}: {x} repeated or out of range"
                );
                seen[x as usize] = true;
            }
        }
    }
    // A shuffle, not the identity, and different keys give different orders.
    let a: Vec<u64> = (0..1000)
        .map(|i| Permutation::new(1000, 1).index(i))
        .collect();
    let b: Vec<u64> = (0..1000)
        .map(|i| Permutation::new(1000, 2).index(i))
        .collect();
    assert_ne!(a, (0..1000).collect::<Vec<_>>());
    assert_ne!(a, b);
    // Large domains work without memory: spot-check distinctness on a sample.
    let p = Permutation::new(3_000_000_000, 7);
    let sample: HashSet<u64> = (0..10_000).map(|i| p.index(i * 300_000)).collect();
    assert_eq!(sample.len(), 10_000);
    assert!(sample.iter().all(|&x| x < 3_000_000_000));
}

#[test]
fn batches_are_windows_with_shifted_targets_and_cover_each_epoch() {
    let dir = TempDir::new("ld");
    let (b, t) = (4usize, 8usize);
    // N = 8*40 + 1 tokens -> exactly 40 windows -> 10 batches per epoch.
    let d = counting_dataset(&dir, t * 40 + 1);
    let mut loader = BatchLoader::new(&d, b, t, 42, true).unwrap();
    assert_eq!(loader.batches_per_epoch(), 10);
    let (mut x, mut y) = (vec![0u32; b * t], vec![0u32; b * t]);
    for epoch in 0..3u64 {
        let mut starts = HashSet::new();
        for _ in 0..10 {
            loader.next_batch(&mut x, &mut y).unwrap();
            for row in 0..b {
                let s = x[row * t];
                assert_eq!(s as usize % t, 0, "window starts at a multiple of T");
                for k in 0..t {
                    assert_eq!(x[row * t + k], s + k as u32);
                    assert_eq!(y[row * t + k], s + k as u32 + 1);
                }
                starts.insert(s);
            }
        }
        assert_eq!(starts.len(), 40, "epoch {epoch} visits every window once");
        assert_eq!(loader.state().epoch, epoch);
    }
}

#[test]
fn sequential_order_without_shuffle() {
    let dir = TempDir::new("seq");
    let d = counting_dataset(&dir, 2 * 3 * 5 + 1);
    let mut l = BatchLoader::new(&d, 2, 3, 0, false).unwrap();
    let (mut x, mut y) = (vec![0u32; 6], vec![0u32; 6]);
    l.next_batch(&mut x, &mut y).unwrap();
    assert_eq!(x, vec![0, 1, 2, 3, 4, 5]);
    assert_eq!(y, vec![1, 2, 3, 4, 5, 6]);
    l.next_batch(&mut x, &mut y).unwrap();
    assert_eq!(x, vec![6, 7, 8, 9, 10, 11]);
}

#[test]
fn deterministic_per_seed_and_resumable() {
    let dir = TempDir::new("det");
    let d = counting_dataset(&dir, 10_000);
    let (b, t) = (3, 16);
    let run = |seed: u64, steps: usize| -> Vec<u32> {
        let mut l = BatchLoader::new(&d, b, t, seed, true).unwrap();
        let (mut x, mut y) = (vec![0u32; b * t], vec![0u32; b * t]);
        (0..steps)
            .flat_map(|_| {
                l.next_batch(&mut x, &mut y).unwrap();
                x.clone()
            })
            .collect()
    };
    // 300 steps crosses epochs (10000/16 = 624 windows, 208 batches per epoch).
    let a = run(5, 300);
    assert_eq!(a, run(5, 300));
    assert_ne!(a, run(6, 300));

    // Stop after 250 steps, restore into a fresh loader, continue: same as uninterrupted.
    let mut l = BatchLoader::new(&d, b, t, 5, true).unwrap();
    let (mut x, mut y) = (vec![0u32; b * t], vec![0u32; b * t]);
    for _ in 0..250 {
        l.next_batch(&mut x, &mut y).unwrap();
    }
    let saved = l.state();
    assert_eq!(saved.epoch, 1);
    let mut fresh = BatchLoader::new(&d, b, t, 5, true).unwrap();
    fresh.restore(saved).unwrap();
    let mut rest = Vec::new();
    for _ in 250..300 {
        fresh.next_batch(&mut x, &mut y).unwrap();
        rest.extend_from_slice(&x);
    }
    assert_eq!(rest, a[250 * b * t..]);

    let mut other_seed = BatchLoader::new(&d, b, t, 9, true).unwrap();
    assert_err_contains(
        other_seed.restore(saved),
        &["seed", "expected 9 (this loader)", "found 5 (saved state)"],
    );
    let mut other_shape = BatchLoader::new(&d, b, 8, 5, true).unwrap();
    assert_err_contains(
        other_shape.restore(saved),
        &["seq", "expected 8", "found 16"],
    );
}

#[test]
fn too_small_dataset_and_bad_buffers() {
    let dir = TempDir::new("small");
    let p = dir.path("small");
    let mut w = MegatronWriter::create(&p, Dtype::U16).unwrap();
    w.add_document(&[1, 2, 3, 4, 50256]).unwrap();
    w.finish().unwrap();
    let d = TokenDataset::open(&p).unwrap();
    assert_err_contains(
        BatchLoader::new(&d, 2, 4, 0, true),
        &["small", "2*4+1 = 9 tokens", "found 5 tokens"],
    );
    let mut l = BatchLoader::new(&d, 1, 4, 0, true).unwrap();
    assert_err_contains(
        l.next_batch(&mut [0; 3], &mut [0; 4]),
        &["B*T = 4", "found 3 and 4"],
    );
}

#[test]
fn loader_on_a_view_stays_inside_it() {
    let dir = TempDir::new("lview");
    let p = dir.path("docs");
    let mut w = MegatronWriter::create(&p, Dtype::U16).unwrap();
    for doc in 0..10u32 {
        // Document k holds 99 copies of k, then EOT: 100 tokens.
        let mut toks = vec![doc; 99];
        toks.push(50256);
        w.add_document(&toks).unwrap();
    }
    w.finish().unwrap();
    let d = TokenDataset::open(&p).unwrap();
    let val = &d.split(&[8, 2]).unwrap()[1]; // documents 8 and 9
    assert_eq!(val.num_tokens(), 200);
    let mut l = BatchLoader::new(val, 2, 16, 1, true).unwrap();
    let (mut x, mut y) = (vec![0u32; 32], vec![0u32; 32]);
    for _ in 0..30 {
        l.next_batch(&mut x, &mut y).unwrap();
        assert!(
            x.iter().chain(&y).all(|&t| t == 8 || t == 9 || t == 50256),
            "{x:?}"
        );
    }
}
