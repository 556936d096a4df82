//! The GPU training step without host work: the encoder's token index built on the device, and
//! (below) the step's scalars read from device memory so that a captured CUDA graph replays it.
//!
//! Index: the device build (encoder_index_* in encoder.cu) must produce exactly the host's
//! stable counting sort (the reference, `EncoderIndex::host_reference`), on random tokens with
//! many repeats, a single repeated token, ids at both ends of the vocabulary, more tokens than
//! ids and more ids than the scan block has threads; into a poisoned buffer that held another
//! batch's index before (stale counts would show). On the harness it also runs under random
//! thread schedules, where the scatter's atomics land out of order and the order kernel has to
//! restore the positions' ascending order. The encoder backward from both indexes must be bit
//! identical.

use gpt::cuda::kernels::{encoder, Ptr};
use runtime::cuda::half::bf16;
use runtime::cuda::{Gpu, Schedule};
use tests::gpu::*;

fn random_tokens(rng: &mut Rng, n: usize, vocab: usize, distinct: usize) -> Vec<u32> {
    // `distinct` ids spread over the whole vocabulary (0 and vocab - 1 among them), drawn with
    // repeats.
    let ids: Vec<u32> = (0..distinct)
        .map(|i| {
            if distinct == 1 {
                (vocab / 2) as u32
            } else {
                ((i * (vocab - 1)) / (distinct - 1)) as u32
            }
        })
        .collect();
    (0..n).map(|_| ids[rng.below(distinct)]).collect()
}

/// (bt, vocab, distinct ids): edge sizes and shapes.
const CASES: [(usize, usize, usize); 10] = [
    (1, 1, 1),
    (1, 50, 1),
    (7, 3, 3),
    (300, 50, 1),        // one token repeated
    (517, 50, 13),       // many repeats
    (257, 1025, 200),    // per-thread chunks of 2 in the scan, the last threads empty
    (3000, 7, 7),        // more tokens than ids: cap = vocab
    (2000, 50257, 1800), // GPT-2's vocabulary
    (1024, 5000, 1024),
    (600, 2048, 300), // the scan's last thread owns the largest id (vocab - 1)
];

fn check_index_builds(g: &Gpu, seed: u64) {
    let mut rng = Rng(seed);
    for (bt, vocab, distinct) in CASES {
        let index = encoder::EncoderIndex::new(g, bt, vocab).unwrap();
        // Another batch first, so the second build starts from a used index and scratch.
        let before = random_tokens(&mut rng, bt, vocab, distinct.max(2).min(vocab));
        let tokens = random_tokens(&mut rng, bt, vocab, distinct);
        for (what, toks) in [("first batch", &before), ("second batch", &tokens)] {
            index.fill_bytes(g, 0xFF).unwrap();
            let dtok = g
                .upload(&toks.iter().map(|&t| t as i32).collect::<Vec<_>>())
                .unwrap();
            index.build_on_device(g, Ptr::of(&dtok)).unwrap();
            let got = index.download(g).unwrap();
            let want = encoder::EncoderIndex::host_reference(toks, vocab).unwrap();
            assert_eq!(
                got,
                want,
                "device index != host index ({what}, bt {bt}, vocab {vocab}, {distinct} ids, {:?})",
                g.props().name
            );
        }
    }
}

#[test]
fn device_index_is_the_host_counting_sort() {
    check_index_builds(&gpu(), 1);
}

#[test]
fn device_index_does_not_depend_on_the_order_of_the_atomics() {
    let g = gpu();
    if on_gpu(&g) {
        return; // the schedules are the harness's; on a GPU the first test covers it
    }
    for seed in [3, 4] {
        check_index_builds(&Gpu::harness(Schedule::Random(seed)), 10 + seed);
    }
    check_index_builds(&Gpu::harness(Schedule::Reverse), 20);
}

#[test]
fn encoder_backward_is_bit_identical_from_either_index() {
    let g = gpu();
    let mut rng = Rng(9);
    let (b, t, c, vocab) = (3usize, 41usize, 24usize, 97usize);
    let bt = b * t;
    let tokens = random_tokens(&mut rng, bt, vocab, 30);
    let dout = g.upload(&rng.vec_bf16(bt * c, 1.0)).unwrap();
    let (gwte0, gwpe0) = (rng.vec_bf16(vocab * c, 0.1), rng.vec_bf16(t * c, 0.1));
    let dtok = g
        .upload(&tokens.iter().map(|&t| t as i32).collect::<Vec<_>>())
        .unwrap();
    let host = encoder::EncoderIndex::build(&g, &tokens, vocab).unwrap();
    let dev = encoder::EncoderIndex::new(&g, bt, vocab).unwrap();
    dev.build_on_device(&g, Ptr::of(&dtok)).unwrap();
    let run = |index: &encoder::EncoderIndex| {
        let (gwte, gwpe) = (g.upload(&gwte0).unwrap(), g.upload(&gwpe0).unwrap());
        encoder::encoder_backward_indexed(
            &g,
            Ptr::of(&gwte),
            Ptr::of(&gwpe),
            Ptr::of(&dout),
            index,
            b,
            t,
            c,
        )
        .unwrap();
        (g.download(&gwte).unwrap(), g.download(&gwpe).unwrap())
    };
    let (from_host, from_dev) = (run(&host), run(&dev));
    assert_eq!(bits(&from_host.0), bits(&from_dev.0), "dwte");
    assert_eq!(bits(&from_host.1), bits(&from_dev.1), "dwpe");
    // ...and the gradient did move (the index was not empty).
    assert_ne!(bits(&from_dev.0), bits(&gwte0));
    let _: &[bf16] = &gwpe0;
}
