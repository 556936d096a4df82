//! The fast attention against its plain twin, bit for bit: fresh random inputs, outputs poisoned
//! with NaN first, shapes at the edges of the blocking (T = 1, T not a multiple of the row block,
//! head sizes 12, 16, 64, 80, pair counts not a multiple of the thread count), and both the AVX2
//! and the portable copies of the fast path.

use super::attention::{
    attention_backward_plain, attention_backward_simd, attention_forward_plain,
    attention_forward_simd,
};
use crate::rng::SplitMix64;

fn randv(n: usize, seed: u64, scale: f64) -> Vec<f32> {
    let mut r = SplitMix64::new(seed);
    (0..n).map(|_| (r.next_normal() * scale) as f32).collect()
}

fn same_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.to_bits() == w.to_bits(),
            "{what}: element {i} is {g:e} ({:#x}), the plain twin gives {w:e} ({:#x})",
            g.to_bits(),
            w.to_bits()
        );
    }
}

/// (B, T, C, NH): hs = C / NH.
const SHAPES: &[(usize, usize, usize, usize)] = &[
    (1, 1, 16, 1),   // T = 1, hs 16
    (2, 7, 32, 2),   // T < one row block + tail, hs 16
    (1, 13, 192, 3), // hs 64, T = 3 blocks + 1, 3 pairs
    (3, 21, 240, 3), // hs 80, 9 pairs
    (2, 10, 36, 3),  // hs 12: not a multiple of 8 (the sequential tail of dot)
    (1, 9, 20, 4),   // hs 5: tail only
    (1, 64, 128, 2), // hs 64, T a multiple of the block
];

#[test]
fn fast_attention_matches_the_plain_twin_bit_for_bit() {
    for (si, &(b, t, c, nh)) in SHAPES.iter().enumerate() {
        let seed = 1000 * si as u64;
        // Scale 2: softmaxes from flat to peaked, so the max subtraction and exp matter.
        let qkv = randv(b * t * 3 * c, seed + 1, 2.0);
        let dout = randv(b * t * c, seed + 2, 1.0);
        let (mut out_p, mut lse_p) = (vec![f32::NAN; b * t * c], vec![f32::NAN; b * nh * t]);
        attention_forward_plain(&mut out_p, &mut lse_p, &qkv, b, t, c, nh);
        let mut dqkv_p = vec![f32::NAN; b * t * 3 * c];
        attention_backward_plain(&mut dqkv_p, &dout, &qkv, &out_p, &lse_p, b, t, c, nh);
        assert!(dqkv_p.iter().chain(&out_p).all(|x| x.is_finite()));
        for avx2 in [false, true] {
            let name = format!("b={b} t={t} c={c} nh={nh} avx2={avx2}");
            let (mut out, mut lse) = (vec![f32::NAN; b * t * c], vec![f32::NAN; b * nh * t]);
            attention_forward_simd(&mut out, &mut lse, &qkv, b, t, c, nh, avx2);
            same_bits(&format!("forward out {name}"), &out, &out_p);
            same_bits(&format!("forward lse {name}"), &lse, &lse_p);
            let mut dqkv = vec![f32::NAN; b * t * 3 * c];
            attention_backward_simd(&mut dqkv, &dout, &qkv, &out_p, &lse_p, b, t, c, nh, avx2);
            same_bits(&format!("backward dqkv {name}"), &dqkv, &dqkv_p);
        }
    }
}

#[test]
#[should_panic(expected = "attention_forward: qkv [B, T, 3C] has 10 floats, expected 48")]
fn fast_attention_names_a_wrong_length() {
    let (mut out, mut lse) = (vec![0.0; 16], vec![0.0; 1]);
    attention_forward_simd(&mut out, &mut lse, &[0.0; 10], 1, 1, 16, 1, true);
}
