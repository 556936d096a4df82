//! Philox4x32-10 (Salmon, Moraes, Dror, Shaw: "Parallel random numbers: as easy as 1, 2, 3",
//! SC 2011), the counter-based generator of cuRAND and PyTorch. Stateless: the output is a pure
//! function of (counter, key), so the CPU and every GPU kernel draw identical numbers for the
//! same element without sharing any state.
//!
//! How mxgpt keys it (MXFP4.md section 6) — a GPU kernel must do exactly this:
//! - key = [seed as u32, (seed >> 32) as u32]
//! - element `i` (u64) of stream `s` (u64): counter = [(i >> 2) as u32, (i >> 34) as u32,
//!   s as u32, (s >> 32) as u32]; the element uses output word `i & 3`.
//!   Four consecutive elements share one Philox call.

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

#[inline(always)]
fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = a as u64 * b as u64;
    ((p >> 32) as u32, p as u32)
}

#[inline(always)]
fn round(c: [u32; 4], k: [u32; 2]) -> [u32; 4] {
    let (hi0, lo0) = mulhilo(M0, c[0]);
    let (hi1, lo1) = mulhilo(M1, c[2]);
    [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0]
}

/// Ten rounds; the key is bumped by the Weyl constants before every round after the first.
#[inline]
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = round(counter, key);
    let mut k = key;
    for _ in 1..10 {
        k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
        c = round(c, k);
    }
    c
}

/// The four 32-bit words for elements 4q..4q+3 of stream `stream` under `seed`.
#[inline]
pub fn philox_block(seed: u64, stream: u64, quad: u64) -> [u32; 4] {
    philox4x32_10(
        [
            quad as u32,
            (quad >> 32) as u32,
            stream as u32,
            (stream >> 32) as u32,
        ],
        [seed as u32, (seed >> 32) as u32],
    )
}

/// The 32 words of elements 4·first_quad .. 4·first_quad + 31 (eight consecutive Philox calls),
/// in element order: the same words as `philox_block` on each quad. Written lane-parallel (one
/// array entry per call, u32 x u32 -> u64 products) so the compiler runs the eight calls in
/// SIMD lanes (AVX2 `vpmuludq`); one MX block's SR words in one go.
#[inline(always)]
pub fn philox_block_x8(seed: u64, stream: u64, first_quad: u64) -> [u32; 32] {
    let mut c0 = [0u32; 8];
    let mut c1 = [0u32; 8];
    for l in 0..8 {
        let q = first_quad + l as u64;
        c0[l] = q as u32;
        c1[l] = (q >> 32) as u32;
    }
    let mut c2 = [stream as u32; 8];
    let mut c3 = [(stream >> 32) as u32; 8];
    let mut k = [seed as u32, (seed >> 32) as u32];
    for r in 0..10 {
        if r > 0 {
            k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
        }
        for l in 0..8 {
            let p0 = M0 as u64 * c0[l] as u64;
            let p1 = M1 as u64 * c2[l] as u64;
            let n0 = ((p1 >> 32) as u32) ^ c1[l] ^ k[0];
            let n2 = ((p0 >> 32) as u32) ^ c3[l] ^ k[1];
            c1[l] = p1 as u32;
            c3[l] = p0 as u32;
            c0[l] = n0;
            c2[l] = n2;
        }
    }
    let mut out = [0u32; 32];
    for l in 0..8 {
        out[4 * l] = c0[l];
        out[4 * l + 1] = c1[l];
        out[4 * l + 2] = c2[l];
        out[4 * l + 3] = c3[l];
    }
    out
}

/// The 32-bit random word of element `i` of stream `stream` under `seed`.
#[inline]
pub fn random_word(seed: u64, stream: u64, i: u64) -> u32 {
    philox_block(seed, stream, i >> 2)[(i & 3) as usize]
}

/// The SR uniform of a word: its top 24 bits times 2^-24, in [0, 1) and exact in f32.
#[inline(always)]
pub fn uniform24(word: u32) -> f32 {
    (word >> 8) as f32 * (1.0 / 16_777_216.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known-answer vectors of Random123's kat_vectors file (philox4x32, 10 rounds).
    #[test]
    fn matches_random123_known_answers() {
        assert_eq!(
            philox4x32_10([0; 4], [0; 2]),
            [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]
        );
        assert_eq!(
            philox4x32_10([0xffff_ffff; 4], [0xffff_ffff; 2]),
            [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
                [0xa409_3822, 0x299f_31d0]
            ),
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1]
        );
    }

    #[test]
    fn element_addressing_follows_the_documented_layout() {
        let (seed, stream) = (0x0123_4567_89ab_cdef_u64, 0xfeed_0000_0000_0042_u64);
        for i in [0u64, 1, 2, 3, 4, 5, 1 << 34, (1 << 34) + 7] {
            let direct = philox4x32_10(
                [
                    (i >> 2) as u32,
                    (i >> 34) as u32,
                    stream as u32,
                    (stream >> 32) as u32,
                ],
                [seed as u32, (seed >> 32) as u32],
            )[(i & 3) as usize];
            assert_eq!(random_word(seed, stream, i), direct);
        }
        assert_ne!(random_word(1, 2, 3), random_word(1, 3, 3));
        assert_ne!(random_word(1, 2, 3), random_word(2, 2, 3));
    }

    #[test]
    fn x8_matches_eight_single_calls() {
        for (seed, stream, q) in [
            (0u64, 0u64, 0u64),
            (0x0123_4567_89ab_cdef, 0xfeed_0000_0000_0042, 5),
            (u64::MAX, u64::MAX, u64::MAX - 3),
            (7, 9, (1 << 32) - 4),
        ] {
            let w = philox_block_x8(seed, stream, q);
            for l in 0..8u64 {
                let one = philox_block(seed, stream, q.wrapping_add(l));
                assert_eq!(&w[4 * l as usize..4 * l as usize + 4], &one, "quad {q}+{l}");
            }
        }
    }

    #[test]
    fn uniform24_is_in_unit_interval_and_exact() {
        assert_eq!(uniform24(0), 0.0);
        assert_eq!(uniform24(0xffff_ffff), 1.0 - 1.0 / 16_777_216.0);
        assert_eq!(uniform24(0x0000_01ff), 1.0 / 16_777_216.0);
    }
}
