//! The MXFP4 storage formats (OCP Microscaling v1.0; MXFP4.md section 1).
//!
//! - Element E2M1: 4 bits, sign in bit 3, magnitude code 0..7 = 0, 0.5, 1, 1.5, 2, 3, 4, 6.
//! - Scale E8M0: one byte, value 2^(byte - 127); 0xFF is NaN (a block that held NaN or Inf).
//! - Packed: two codes per byte, element 2i in the low nibble and 2i+1 in the high nibble (what
//!   Blackwell's `kind::mxf4` MMA and `__nv_cvt_float2_to_fp4x2` use); scales in their own array.

/// Magnitudes of the eight E2M1 codes.
pub const E2M1_VALUES: [f32; 8] = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];
/// Largest E2M1 magnitude (emax = 2, so 1.5 · 2^2).
pub const E2M1_MAX: f32 = 6.0;
/// Elements per MX block.
pub const BLOCK: usize = 32;
/// The E8M0 byte that marks a block as not finite.
pub const SCALE_NAN: u8 = 0xFF;

/// The value of an E2M1 code (low 4 bits of `code`).
#[inline]
pub fn e2m1_decode(code: u8) -> f32 {
    let m = E2M1_VALUES[(code & 7) as usize];
    if code & 8 != 0 {
        -m
    } else {
        m
    }
}

/// Twice the value of an E2M1 code, as an integer in [-12, 12]: the integer GEMM's operand.
#[inline]
pub fn e2m1_times_two(code: u8) -> i8 {
    const TWICE: [i8; 8] = [0, 1, 2, 3, 4, 6, 8, 12];
    let m = TWICE[(code & 7) as usize];
    if code & 8 != 0 {
        -m
    } else {
        m
    }
}

/// The shared exponent e as an E8M0 byte (e + 127); `e` must be in [-127, 127].
#[inline]
pub fn e8m0_encode(e: i32) -> u8 {
    assert!((-127..=127).contains(&e), "E8M0 exponent {e} out of range");
    (e + 127) as u8
}

/// The scale 2^(byte - 127) as f64 (exact for every byte; NaN for 0xFF).
#[inline]
pub fn e8m0_decode(byte: u8) -> f64 {
    if byte == SCALE_NAN {
        f64::NAN
    } else {
        (2.0f64).powi(byte as i32 - 127)
    }
}

/// Packs 4-bit codes two per byte, low nibble first. `codes.len()` must be even.
pub fn pack_codes(codes: &[u8]) -> Vec<u8> {
    assert!(
        codes.len() % 2 == 0,
        "pack_codes: odd number of codes ({})",
        codes.len()
    );
    codes
        .chunks_exact(2)
        .map(|p| (p[0] & 0xF) | ((p[1] & 0xF) << 4))
        .collect()
}

/// The inverse of `pack_codes`.
pub fn unpack_codes(packed: &[u8]) -> Vec<u8> {
    packed.iter().flat_map(|&b| [b & 0xF, b >> 4]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_decode_to_the_e2m1_grid() {
        let want = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];
        for c in 0..8u8 {
            assert_eq!(e2m1_decode(c), want[c as usize]);
            assert_eq!(e2m1_decode(c | 8), -want[c as usize]);
            assert_eq!(e2m1_times_two(c) as f32, 2.0 * want[c as usize]);
            assert_eq!(e2m1_times_two(c | 8) as f32, -2.0 * want[c as usize]);
        }
    }

    #[test]
    fn scales_cover_the_e8m0_range() {
        assert_eq!(e8m0_decode(127), 1.0);
        assert_eq!(e8m0_decode(0), 2f64.powi(-127));
        assert_eq!(e8m0_decode(254), 2f64.powi(127));
        assert!(e8m0_decode(SCALE_NAN).is_nan());
        assert_eq!(e8m0_encode(-127), 0);
        assert_eq!(e8m0_encode(0), 127);
    }

    #[test]
    fn packing_is_low_nibble_first() {
        let codes = [0x1, 0xA, 0xF, 0x0, 0x7, 0x8];
        let packed = pack_codes(&codes);
        assert_eq!(packed, vec![0xA1, 0x0F, 0x87]);
        assert_eq!(unpack_codes(&packed), codes.to_vec());
    }
}
