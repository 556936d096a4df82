//! CPU mirrors of the bit-level helpers in `kernels/common.cuh`, so CPU code and GPU tests can
//! reproduce kernel results exactly (e.g. AdamW's stochastically rounded bf16 parameters).
//! Always built; no CUDA needed.

/// `sr_hash` of common.cuh: splitmix64's finalizer of `index + seed * 0x9E3779B97F4A7C15`,
/// high 32 bits.
pub fn sr_hash(seed: u32, index: u64) -> u32 {
    let mut z = index.wrapping_add((seed as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 32) as u32
}

/// `to_bf16_stochastic` of common.cuh, as bf16 bits: add the low 16 random bits below the bf16
/// mantissa and truncate. inf stays inf; NaN stays a NaN (its payload bits may differ from
/// the GPU's `__float2bfloat16_rn`, which returns 0x7FFF).
pub fn bf16_bits_stochastic(x: f32, random: u32) -> u16 {
    let bits = x.to_bits();
    if bits & 0x7F80_0000 == 0x7F80_0000 {
        // inf keeps its bits; NaN becomes a quiet NaN with the sign kept.
        return if bits & 0x007F_FFFF == 0 {
            (bits >> 16) as u16
        } else {
            ((bits >> 16) as u16) | 0x0040
        };
    }
    ((bits.wrapping_add(random & 0xFFFF) & 0xFFFF_0000) >> 16) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sr_hash_is_splitmix64() {
        // splitmix64 seeded with state 0 first outputs 0xE220A8397B1DCDAF (published reference
        // sequence); seed 1, index 0 is exactly that state advance.
        assert_eq!(sr_hash(1, 0), 0xE220_A839);
        // Its second output 0x6E789E6AA1B965F4 is state 2 * gamma = seed 2, index 0.
        assert_eq!(sr_hash(2, 0), 0x6E78_9E6A);
        assert_ne!(sr_hash(1, 1), sr_hash(1, 0));
    }

    #[test]
    fn stochastic_rounding_brackets_and_is_unbiased() {
        // 1 + 2^-9 lies a quarter of the way from bf16 1.0 (0x3F80) to the next value 0x3F81.
        let x = 1.0f32 + 2f32.powi(-9);
        assert_eq!(bf16_bits_stochastic(x, 0), 0x3F80);
        assert_eq!(bf16_bits_stochastic(x, 0xFFFF), 0x3F81);
        assert_eq!(bf16_bits_stochastic(x, 0xBFFF), 0x3F80);
        assert_eq!(bf16_bits_stochastic(x, 0xC000), 0x3F81);
        let ups = (0..100_000u64)
            .filter(|&i| bf16_bits_stochastic(x, sr_hash(7, i)) == 0x3F81)
            .count();
        assert!(
            (ups as f64 / 1e5 - 0.25).abs() < 0.01,
            "round-up rate {ups}/100000"
        );
        // Exactly representable values never move; specials keep their class.
        assert_eq!(bf16_bits_stochastic(-2.5, 0xFFFF), 0xC020);
        assert_eq!(bf16_bits_stochastic(f32::INFINITY, 0xFFFF), 0x7F80);
        assert_eq!(bf16_bits_stochastic(f32::NAN, 0) & 0x7FC0, 0x7FC0);
    }
}
