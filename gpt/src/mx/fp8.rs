//! FP8 E4M3 (docs/numerics.md sections 8 and 9): the conversion every backend implements, and
//! the per-tensor scaling of the FP8 forward.
//!
//! E4M3 (OCP "E4M3FN"): sign, 4 exponent bits (bias 7), 3 mantissa bits; the largest finite
//! value is 448; 0x7F / 0xFF are NaN; no infinity. `e4m3_from_f32` rounds to nearest, ties to
//! even, saturating at ±448 (`cvt.rn.satfinite.e4m3x2.f32` on the GPU).

use super::MxTelemetry;

/// The largest finite E4M3 value.
pub const E4M3_MAX: f32 = 448.0;
/// The canonical E4M3 NaN byte.
pub const E4M3_NAN: u8 = 0x7F;

/// f32 -> E4M3, round to nearest even, saturating (NaN -> 0x7F, |x| >= 448 or inf -> ±448).
pub fn e4m3_from_f32(x: f32) -> u8 {
    if x.is_nan() {
        return E4M3_NAN;
    }
    let bits = x.to_bits();
    let sign = ((bits >> 24) & 0x80) as u8;
    let a = x.abs();
    if a >= E4M3_MAX {
        return sign | 0x7E;
    }
    if a < 2f32.powi(-6) {
        // Subnormal range: multiples of 2^-9. a * 2^9 is exact; 8 rounds up to the smallest
        // normal, whose bits (exponent 1, mantissa 0) are exactly 8.
        return sign | (a * 512.0).round_ties_even() as u8;
    }
    let mut e = ((bits >> 23) & 0xFF) as i32 - 127; // -6 ..= 8
    let m = bits & 0x7F_FFFF;
    let (mut q, rest) = (m >> 20, m & 0xF_FFFF);
    if rest > 0x8_0000 || (rest == 0x8_0000 && q & 1 == 1) {
        q += 1;
    }
    if q == 8 {
        q = 0;
        e += 1;
    }
    if e > 8 || (e == 8 && q == 7) {
        return sign | 0x7E; // 480 would be the NaN pattern: saturate
    }
    sign | (((e + 7) as u8) << 3) | q as u8
}

/// E4M3 -> f32 (exact).
pub fn e4m3_to_f32(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let (e, m) = ((b >> 3) & 0xF, b & 7);
    if e == 15 && m == 7 {
        return f32::NAN;
    }
    let v = if e == 0 {
        m as f32 * 2f32.powi(-9)
    } else {
        (1.0 + m as f32 / 8.0) * 2f32.powi(e as i32 - 7)
    };
    sign * v
}

/// How the FP8 forward chooses a tensor's scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fp8Scaling {
    /// 448 / amax of the tensor at this call.
    Current,
    /// 448 / (the largest amax of the last `history` calls); the first call uses current scaling.
    Delayed { history: usize },
}

impl std::str::FromStr for Fp8Scaling {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "current" => Ok(Fp8Scaling::Current),
            "delayed" => Ok(Fp8Scaling::Delayed { history: 16 }),
            _ => Err(format!(
                "unknown --fp8-scaling '{s}': expected current or delayed"
            )),
        }
    }
}

/// The scale that maps amax to 448: 448 / amax (f32), 1 for amax 0, the largest f32 where the
/// quotient would be infinite. amax must be finite and >= 0.
pub fn tensor_scale(amax: f32) -> f32 {
    if amax == 0.0 {
        return 1.0;
    }
    let s = E4M3_MAX / amax;
    if s.is_finite() {
        s
    } else {
        f32::MAX
    }
}

/// max |x| over the finite values (NaN and inf ignored: they become NaN / ±448 anyway).
pub fn amax(x: &[f32]) -> f32 {
    x.iter()
        .filter(|v| v.is_finite())
        .fold(0.0f32, |m, v| m.max(v.abs()))
}

/// E4M3 bytes of `x * scale` (one f32 multiply each).
pub fn quantize(x: &[f32], scale: f32) -> Vec<u8> {
    x.iter().map(|&v| e4m3_from_f32(v * scale)).collect()
}

/// The E4M3 values of `x * scale` as f32 (exact): the operand an FP32 GEMM multiplies.
pub fn quantize_to_f32(x: &[f32], scale: f32) -> Vec<f32> {
    x.iter()
        .map(|&v| e4m3_to_f32(e4m3_from_f32(v * scale)))
        .collect()
}

/// Scaled values above this are saturated: an E4M3 with a larger exponent range would round
/// them past 448 (to 480 or beyond); those in (448, 464] round to 448 either way.
const SATURATES_ABOVE: f32 = 464.0;

/// `quantize_to_f32`, adding the operand's statistics to `tel`: its elements, those saturated
/// (|x s| > 464: clamped to 448), the non-zero ones flushed to zero, and the squared error of
/// the dequantized q / s against x (non-finite inputs are left out of the sums).
pub fn quantize_to_f32_recorded(x: &[f32], scale: f32, tel: &mut MxTelemetry) -> Vec<f32> {
    let q = quantize_to_f32(x, scale);
    let inv = 1.0 / scale as f64;
    for (&v, &qv) in x.iter().zip(&q) {
        if !v.is_finite() {
            continue;
        }
        tel.clipped += ((v * scale).abs() > SATURATES_ABOVE) as u64;
        tel.underflow += (v != 0.0 && qv == 0.0) as u64;
        let err = qv as f64 * inv - v as f64;
        tel.sq_err += err * err;
        tel.sq_sum += (v as f64) * (v as f64);
    }
    tel.elements += x.len() as u64;
    tel.underflow_counted += x.len() as u64;
    q
}

/// What one FP8 forward GEMM adds to the telemetry: its operands' statistics always, and the
/// output's error against the exact product when `measure_noise` (one more FP32 GEMM).
pub struct Fp8Record<'a> {
    pub telemetry: &'a mut MxTelemetry,
    pub measure_noise: bool,
}

/// The forward precision of the blocks' linear layers (`--forward`, `--fp8-scaling`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForwardConfig {
    pub mode: crate::precision::ForwardMode,
    pub scaling: Fp8Scaling,
}

impl ForwardConfig {
    pub const HIGH_PRECISION: ForwardConfig = ForwardConfig {
        mode: crate::precision::ForwardMode::Bf16,
        scaling: Fp8Scaling::Current,
    };

    pub fn is_fp8(&self) -> bool {
        self.mode == crate::precision::ForwardMode::Fp8
    }
}

/// The operands of one forward GEMM that get a scale each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fp8Operand {
    Input = 0,
    Weight = 1,
}

/// Delayed scaling's state: for every scaled tensor (layer, linear, operand) the amax of its
/// last `history` training calls, a ring indexed by that tensor's call count. Zeros are empty
/// slots: a tensor whose window holds no non-zero amax (its first call) uses current scaling.
/// Part of a checkpoint, so a resumed run scales exactly as the uninterrupted one.
#[derive(Clone, Debug, PartialEq)]
pub struct Fp8State {
    pub history: usize,
    /// tensors x history, tensor = (layer * 4 + linear) * 2 + operand.
    pub amax: Vec<f32>,
    /// Training calls recorded per tensor.
    pub calls: Vec<u64>,
}

impl Fp8State {
    pub fn new(layers: usize, history: usize) -> Fp8State {
        let tensors = layers * 4 * 2;
        Fp8State {
            history,
            amax: vec![0.0; tensors * history],
            calls: vec![0; tensors],
        }
    }

    pub fn tensor(layer: usize, linear: super::LinearKind, operand: Fp8Operand) -> usize {
        (layer * 4 + linear as usize) * 2 + operand as usize
    }

    /// The scale of `tensor` for this call: from the window's largest amax, or from `amax_now`
    /// (current scaling) while the window is empty.
    pub fn delayed_scale(&self, tensor: usize, amax_now: f32) -> f32 {
        let window = &self.amax[tensor * self.history..(tensor + 1) * self.history];
        let m = window.iter().fold(0.0f32, |m, &v| m.max(v));
        tensor_scale(if m > 0.0 { m } else { amax_now })
    }

    /// Records a training call's amax into the tensor's ring.
    pub fn record(&mut self, tensor: usize, amax_now: f32) {
        let slot = (self.calls[tensor] % self.history as u64) as usize;
        self.amax[tensor * self.history + slot] = amax_now;
        self.calls[tensor] += 1;
    }

    /// The scale for this call under `scaling`; a training call is recorded (delayed only).
    pub fn scale(
        &mut self,
        scaling: Fp8Scaling,
        tensor: usize,
        amax_now: f32,
        training: bool,
    ) -> f32 {
        match scaling {
            Fp8Scaling::Current => tensor_scale(amax_now),
            Fp8Scaling::Delayed { .. } => {
                let s = self.delayed_scale(tensor, amax_now);
                if training {
                    self.record(tensor, amax_now);
                }
                s
            }
        }
    }
}

/// The FP8 forward GEMM on f32 operands, as section 9 defines it: out (rows x oc) =
/// (Σ e4m3(x s_x) e4m3(W s_W)) / (s_x s_W) + bias; `gemm(xq, wq, out)` is the FP32 GEMM
/// out = xq · wq^T that the caller's backend provides. With `record`, the operands' statistics
/// (and, when asked, the output's error before the bias) go to its telemetry; `out` is the same.
#[allow(clippy::too_many_arguments)]
pub fn linear_forward_f32(
    out: &mut [f32],
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    (s_x, s_w): (f32, f32),
    oc: usize,
    mut record: Option<Fp8Record>,
    gemm: impl Fn(&[f32], &[f32], &mut [f32]),
) {
    let (xq, wq) = match &mut record {
        Some(r) => {
            let tel = &mut *r.telemetry;
            (
                quantize_to_f32_recorded(x, s_x, tel),
                quantize_to_f32_recorded(w, s_w, tel),
            )
        }
        None => (quantize_to_f32(x, s_x), quantize_to_f32(w, s_w)),
    };
    gemm(&xq, &wq, out);
    let s = s_x * s_w;
    for o in out.iter_mut() {
        *o /= s;
    }
    if let Some(r) = record.filter(|r| r.measure_noise) {
        let mut exact = vec![0.0f32; out.len()];
        gemm(x, w, &mut exact);
        for (&q, &e) in out.iter().zip(&exact) {
            r.telemetry.noise_sq += (q as f64 - e as f64).powi(2);
            r.telemetry.exact_sq += (e as f64).powi(2);
        }
    }
    if let Some(b) = bias {
        for row in out.chunks_exact_mut(oc) {
            for (o, bj) in row.iter_mut().zip(b) {
                *o += bj;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every finite E4M3 value, from the format's definition (not from the code above).
    fn table() -> Vec<(u8, f64)> {
        let mut v = Vec::new();
        for b in 0u8..=0x7E {
            let (e, m) = ((b >> 3) as i32, (b & 7) as f64);
            let x = if e == 0 {
                m * 2f64.powi(-9)
            } else {
                (1.0 + m / 8.0) * 2f64.powi(e - 7)
            };
            v.push((b, x));
        }
        v
    }

    #[test]
    fn hand_computed_vectors() {
        let cases: [(f32, u8); 14] = [
            (0.0, 0x00),
            (-0.0, 0x80),
            (1.0, 0x38),   // e = 0: field 7, mantissa 0
            (448.0, 0x7E), // the largest finite value
            (-448.0, 0xFE),
            (464.0, 0x7E), // above 448 saturates (a tie with 480, which does not exist)
            (1e30, 0x7E),  // saturates
            (f32::INFINITY, 0x7E),
            (2f32.powi(-9), 0x01),        // smallest subnormal
            (2f32.powi(-10), 0x00),       // half of it: tie to even (0)
            (3.0 * 2f32.powi(-10), 0x02), // 1.5 units: tie to even (2)
            (2f32.powi(-6), 0x08),        // smallest normal
            (1.0625, 0x38),               // 1 + 1/16: tie between 1 and 1.125 -> even (1)
            (1.1875, 0x3A),               // 1 + 3/16: tie between 1.125 and 1.25 -> even (1.25)
        ];
        for (x, want) in cases {
            assert_eq!(e4m3_from_f32(x), want, "{x}");
        }
        assert_eq!(e4m3_from_f32(f32::NAN), E4M3_NAN);
        assert!(e4m3_to_f32(0x7F).is_nan() && e4m3_to_f32(0xFF).is_nan());
        assert_eq!(e4m3_to_f32(0x7E), 448.0);
        assert_eq!(e4m3_to_f32(0x01), 2f32.powi(-9));
    }

    #[test]
    fn conversion_is_round_to_nearest_even_against_an_f64_search() {
        let table = table();
        let mut r = crate::rng::SplitMix64::new(3);
        for i in 0..200_000 {
            // Magnitudes over the whole range, with exact ties and grid points mixed in.
            let x = match i % 4 {
                0 => ((r.next_f64() * 2.0 - 1.0) * 2f64.powf(r.next_f64() * 20.0 - 12.0)) as f32,
                1 => table[(r.next_u64() % 127) as usize].1 as f32,
                2 => {
                    let k = (r.next_u64() % 126) as usize;
                    ((table[k].1 + table[k + 1].1) / 2.0) as f32
                }
                _ => (r.next_f64() * 600.0 - 300.0) as f32,
            };
            let a = (x as f64).abs();
            // Nearest finite value; ties to the even code; above 448 saturates.
            let (mut best, mut best_d) = (0u8, f64::INFINITY);
            for &(b, v) in &table {
                let d = (v - a).abs();
                if d < best_d || (d == best_d && b & 1 == 0) {
                    best = b;
                    best_d = d;
                }
            }
            let want = if x.is_sign_negative() {
                best | 0x80
            } else {
                best
            };
            assert_eq!(e4m3_from_f32(x), want, "x = {x:e}");
            if best != 0 {
                assert_eq!(
                    e4m3_to_f32(want),
                    x.signum() * table[best as usize].1 as f32
                );
            }
        }
    }

    #[test]
    fn recorded_quantization_counts_saturation_underflow_and_error() {
        // scale 2: 300 -> 600 saturates to 448 (dequantized 224); 1e-4 -> 2e-4 is below half
        // the smallest subnormal (2^-10) and flushes to 0; 0.3 -> 0.6 rounds to 0.625 (0.3125);
        // 1 -> 2 is exact; NaN is left out of the sums.
        // 230 -> 460 rounds to 448 as it would in a wider format: not counted as saturated.
        let x = [300.0f32, 1e-4, 0.3, 1.0, 0.0, f32::NAN, 230.0];
        let mut t = MxTelemetry::default();
        let q = quantize_to_f32_recorded(&x, 2.0, &mut t);
        let plain = quantize_to_f32(&x, 2.0);
        assert!(q
            .iter()
            .zip(&plain)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
        assert_eq!(&q[..5], &[448.0, 0.0, 0.625, 2.0, 0.0]);
        assert_eq!(q[6], 448.0);
        assert_eq!((t.elements, t.clipped, t.underflow), (7, 1, 1));
        let x64 = |i: usize| x[i] as f64;
        let want_err = (224.0 - 300.0f64).powi(2)
            + x64(1).powi(2)
            + (0.3125 - x64(2)).powi(2)
            + (224.0 - 230.0f64).powi(2);
        let want_sum = 300.0f64.powi(2) + x64(1).powi(2) + x64(2).powi(2) + 1.0 + 230.0f64.powi(2);
        assert!(
            (t.sq_err - want_err).abs() < 1e-9 * want_err,
            "{}",
            t.sq_err
        );
        assert!(
            (t.sq_sum - want_sum).abs() < 1e-9 * want_sum,
            "{}",
            t.sq_sum
        );
    }

    #[test]
    fn recorded_forward_measures_the_output_error_against_an_f64_product() {
        let (rows, ic, oc) = (5, 7, 3);
        let mut r = crate::rng::SplitMix64::new(11);
        let mut draw =
            |n: usize| -> Vec<f32> { (0..n).map(|_| (r.next_f64() * 2.0 - 1.0) as f32).collect() };
        let (x, w, bias) = (draw(rows * ic), draw(oc * ic), draw(oc));
        // out = x · w^T, naive f32.
        let gemm = |a: &[f32], b: &[f32], out: &mut [f32]| {
            for i in 0..rows {
                for j in 0..oc {
                    out[i * oc + j] = (0..ic).map(|k| a[i * ic + k] * b[j * ic + k]).sum();
                }
            }
        };
        let scales = (tensor_scale(amax(&x)), tensor_scale(amax(&w)));
        let mut plain = vec![f32::NAN; rows * oc];
        linear_forward_f32(&mut plain, &x, &w, Some(&bias), scales, oc, None, gemm);
        let mut t = MxTelemetry::default();
        let rec = Fp8Record {
            telemetry: &mut t,
            measure_noise: true,
        };
        let mut out = vec![f32::NAN; rows * oc];
        linear_forward_f32(&mut out, &x, &w, Some(&bias), scales, oc, Some(rec), gemm);
        assert!(out
            .iter()
            .zip(&plain)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
        assert_eq!(t.elements, (rows * ic + oc * ic) as u64);
        // The noise, from the definition in f64: (Σ q_x q_w) / (s_x s_w) against Σ x w.
        let (xq, wq) = (quantize_to_f32(&x, scales.0), quantize_to_f32(&w, scales.1));
        let (mut noise, mut exact) = (0.0f64, 0.0f64);
        for i in 0..rows {
            for j in 0..oc {
                let dot = |a: &[f32], b: &[f32]| -> f64 {
                    (0..ic)
                        .map(|k| a[i * ic + k] as f64 * b[j * ic + k] as f64)
                        .sum()
                };
                let q = dot(&xq, &wq) / (scales.0 as f64 * scales.1 as f64);
                let e = dot(&x, &w);
                noise += (q - e).powi(2);
                exact += e * e;
            }
        }
        assert!(
            (t.noise_sq - noise).abs() < 1e-4 * noise,
            "{} vs {noise}",
            t.noise_sq
        );
        assert!(
            (t.exact_sq - exact).abs() < 1e-5 * exact,
            "{} vs {exact}",
            t.exact_sq
        );
        assert!(noise > 0.0);
    }

    #[test]
    fn scales_and_delayed_history() {
        assert_eq!(tensor_scale(0.0), 1.0);
        assert_eq!(tensor_scale(2.0), 224.0);
        assert_eq!(tensor_scale(1e-40), f32::MAX);
        let d = Fp8Scaling::Delayed { history: 2 };
        let mut h = Fp8State::new(1, 2);
        let t = Fp8State::tensor(0, super::super::LinearKind::MlpUp, Fp8Operand::Weight);
        assert_eq!(t, 5);
        assert_eq!(
            h.scale(d, t, 4.0, true),
            112.0,
            "first call: current scaling"
        );
        assert_eq!(h.scale(d, t, 1.0, true), 112.0, "max of [4]");
        assert_eq!(
            h.scale(d, t, 2.0, false),
            112.0,
            "max of [4, 1]; not recorded"
        );
        assert_eq!(h.scale(d, t, 2.0, true), 112.0, "max of [4, 1]");
        assert_eq!(
            h.scale(d, t, 1.0, true),
            224.0,
            "max of [2, 1]: 4 left the window"
        );
        assert_eq!(h.calls[t], 4);
        assert_eq!(&h.amax[t * 2..t * 2 + 2], &[2.0, 1.0]);
        assert!(h
            .amax
            .iter()
            .enumerate()
            .all(|(i, &v)| i / 2 == t || v == 0.0));
        let mut c = Fp8State::new(1, 2);
        assert_eq!(c.scale(Fp8Scaling::Current, t, 8.0, true), 56.0);
        assert_eq!(c, Fp8State::new(1, 2), "current scaling keeps no state");
        assert_eq!(amax(&[1.0, f32::NAN, -3.0, f32::INFINITY]), 3.0);
    }

    #[test]
    fn linear_forward_matches_an_f64_reference() {
        let table = table();
        let nearest = |x: f32| -> f64 {
            let a = (x as f64).abs();
            let mut best = (0u8, f64::INFINITY);
            for &(b, v) in &table {
                let d = (v - a).abs();
                if d < best.1 || (d == best.1 && b & 1 == 0) {
                    best = (b, d);
                }
            }
            table[best.0 as usize].1 * if x < 0.0 { -1.0 } else { 1.0 }
        };
        let (rows, ic, oc) = (5, 48, 7);
        let mut r = crate::rng::SplitMix64::new(11);
        let mut randn = |n: usize, std: f64| -> Vec<f32> {
            (0..n).map(|_| (r.next_normal() * std) as f32).collect()
        };
        let mut x = randn(rows * ic, 3.0);
        x[17] = -40.0; // the amax: must map to exactly -448
        let w = randn(oc * ic, 0.02);
        let bias = randn(oc, 0.1);
        let (sx, sw) = (tensor_scale(amax(&x)), tensor_scale(amax(&w)));
        assert_eq!(sx, 448.0 / 40.0);
        assert_eq!(quantize(&x, sx)[17], 0xFE);
        let mut out = vec![f32::NAN; rows * oc];
        let no_record = None;
        linear_forward_f32(
            &mut out,
            &x,
            &w,
            Some(&bias),
            (sx, sw),
            oc,
            no_record,
            |xq, wq, o| {
                for i in 0..rows {
                    for j in 0..oc {
                        o[i * oc + j] = (0..ic).map(|k| xq[i * ic + k] * wq[j * ic + k]).sum();
                    }
                }
            },
        );
        for i in 0..rows {
            for j in 0..oc {
                let (mut acc, mut mag) = (0.0f64, 0.0f64);
                for k in 0..ic {
                    let p = nearest(x[i * ic + k] * sx) * nearest(w[j * ic + k] * sw);
                    acc += p;
                    mag += p.abs();
                }
                let s = (sx * sw) as f64;
                let want = acc / s + bias[j] as f64;
                let tol = (ic as f64 * mag * 2f64.powi(-24) + acc.abs() * 2f64.powi(-23)) / s
                    + want.abs() * 2f64.powi(-23);
                let got = out[i * oc + j] as f64;
                assert!((got - want).abs() <= tol, "({i},{j}): {got} vs {want}");
            }
        }
    }
}
