//! Every fast CPU kernel against its plain twin on fresh random inputs, at edge shapes (lengths
//! that are not multiples of the vector width, single rows), and the AVX2 copies against the
//! portable ones bit for bit. Tolerances are stated per kernel.

use super::ops;
use crate::rng::SplitMix64;

fn randv(n: usize, seed: u64, scale: f64) -> Vec<f32> {
    let mut r = SplitMix64::new(seed);
    (0..n).map(|_| (r.next_normal() * scale) as f32).collect()
}

// The exact functions in f64, in the logistic form (0.5·(1 + tanh a) = 1 / (1 + e^-2a)) so
// that f64 itself does not cancel for very negative x.
fn gelu_f64(x: f64) -> f64 {
    let a = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
    x / (1.0 + (-2.0 * a).exp())
}

fn gelu_grad_f64(x: f64) -> f64 {
    let k = (2.0 / std::f64::consts::PI).sqrt();
    let e = (-2.0 * k * (x + 0.044715 * x * x * x)).exp();
    let s = 1.0 / (1.0 + e);
    let sech2_4 = if e.is_finite() { s * s * e } else { 0.0 };
    s + 2.0 * x * sech2_4 * k * (1.0 + 3.0 * 0.044715 * x * x)
}

/// Inputs: normals at several scales plus the awkward values.
fn gelu_inputs(n: usize, seed: u64) -> Vec<f32> {
    let mut x = randv(n, seed, 3.0);
    let special = [
        0.0, -0.0, 1e-30, -1e-30, 1e-7, -1e-7, 0.5, -0.75, 3.0, -3.0, 9.0, -9.0, 20.0, -20.0, 60.0,
        -60.0, 1e4, -1e4,
    ];
    for (i, v) in special.iter().enumerate() {
        if i < n {
            x[i] = *v;
        }
    }
    x
}

#[test]
fn fast_gelu_forward_matches_the_exact_function() {
    for n in [1, 7, 9, 4099, 20_000] {
        let x = gelu_inputs(n, n as u64);
        let (mut fast, mut plain) = (vec![0.0; n], vec![0.0; n]);
        ops::gelu_forward(&mut fast, &x);
        ops::gelu_forward_plain(&mut plain, &x);
        for i in 0..n {
            let want = gelu_f64(x[i] as f64);
            // A few ulp, times the condition number of σ(2a) in a (|2a|·(1 - σ) <= |2a|): an
            // ulp of error in the f32 argument a moves e^-2a by |2a| ulp.
            let xf = x[i] as f64;
            let two_a = 2.0 * 0.7978845608 * (xf + 0.044715 * xf * xf * xf).abs();
            let tol = (4.0 + two_a) * 1.5e-7 * want.abs() + 1e-30;
            let plain_tol = 1e-6 * want.abs() + 2e-7;
            assert!(
                (fast[i] as f64 - want).abs() <= tol,
                "gelu_fast({}) = {} want {want}",
                x[i],
                fast[i]
            );
            // The plain twin (libm tanh) cancels for negative x: absolute error up to ~|x|·ulp.
            assert!((plain[i] as f64 - want).abs() <= plain_tol + 1e-7 * (x[i] as f64).abs());
        }
    }
}

#[test]
fn fast_gelu_backward_matches_the_exact_derivative() {
    for n in [1, 7, 9, 4099, 20_000] {
        let x = gelu_inputs(n, 100 + n as u64);
        let d0 = randv(n, 7 + n as u64, 1.0);
        let (mut fast, mut plain) = (d0.clone(), d0.clone());
        ops::gelu_backward_inplace(&mut fast, &x);
        ops::gelu_backward_plain(&mut plain, &x);
        for i in 0..n {
            let want = d0[i] as f64 * gelu_grad_f64(x[i] as f64);
            let tol = 2e-6 * (d0[i] as f64).abs();
            assert!(
                (fast[i] as f64 - want).abs() <= tol,
                "gelu_grad_fast({}) * {} = {} want {want}",
                x[i],
                d0[i],
                fast[i]
            );
            assert!((plain[i] as f64 - want).abs() <= tol + 1e-7 * (d0[i] as f64).abs());
        }
    }
}

#[test]
fn avx2_gelu_copies_match_the_portable_ones_bit_for_bit() {
    let x = gelu_inputs(1037, 5);
    let (mut a, mut b) = (vec![0.0; x.len()], vec![0.0; x.len()]);
    ops::gelu_forward_chunk(&mut a, &x);
    crate::avx2!(ops_gelu_fwd(&mut b, &x));
    assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()));
    let (mut a, mut b) = (x.clone(), x.clone());
    ops::gelu_backward_chunk(&mut a, &x);
    crate::avx2!(ops_gelu_bwd(&mut b, &x));
    assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()));
}

#[inline(always)]
fn ops_gelu_fwd(o: &mut [f32], x: &[f32]) {
    ops::gelu_forward_chunk(o, x)
}
#[inline(always)]
fn ops_gelu_bwd(o: &mut [f32], x: &[f32]) {
    ops::gelu_backward_chunk(o, x)
}
