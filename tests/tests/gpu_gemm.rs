//! GPU tests of ptx/kernels/gemm.cu through its launchers (gpt::cuda::kernels::gemm), feature
//! `cuda`, need a GPU: the three matmul forms and the bias gradient against the CPU backend's
//! ops (gpt::cpu::ops, f32) fed with the same bf16 inputs.
//!
//! NOT YET RUN ON A GPU: written and compiled in a session without one. Run on a GPU host with
//! `cargo test --release -p tests --features cuda --test gpu_gemm` (MXGPT_CUDA_SYNC=1 to pin an
//! asynchronous fault on its kernel; compute-sanitizer works on the test binary).
//!
//! Every shape runs twice: operands at offset 0 of their buffers (the 16-byte `vec` kernels when
//! ic and oc are multiples of 8) and at offset 1 element (2-byte aligned: always the `scalar`
//! kernels). Outputs are poisoned with 0xFF (bf16 NaN) first, including 8 guard elements on both
//! sides that must stay poisoned (nothing written outside the output).
//!
//! Tolerance (GEMMs and bias gradient), per element:
//!   |got - want| <= 1e-2 * (|want| + 2^-8 * S),   S = sum_k |a_k b_k| (+ |bias| + |old value|)
//! The GPU rounds once to bf16 (relative error <= 2^-9 = 0.2%, inside 1e-2 |want| with 5x
//! margin). Both sides accumulate in f32 in different orders; that difference is a few f32 ulps
//! of S times sqrt(K) in practice (K <= 50304 here: < 2^-16 S), far below 1e-2 * 2^-8 * S =
//! 2^-14.6 S, which also absorbs cancellation where |want| << S. S is computed by the same CPU
//! op on |a|, |b|. A missing k-slice, wrong tile edge or transposed operand is off by O(S) and
//! fails. GELU output: exactly bf16(gelu(out)) of the GPU's own bf16 pre-activation up to tanhf
//! vs Rust tanh and the bf16 rounding: 1e-2 relative + 1e-5 absolute (cancellation in 1 + tanh
//! for negative inputs). NaN never passes (checks are `assert!(err <= tol)`, false for NaN).
use tests::gpu::*;

use gpt::cpu::ops;
use gpt::cuda::kernels::{gemm, Ptr};
use runtime::cuda::half::bf16;
use runtime::cuda::{DeviceBuffer, Gpu};

fn abs(v: &[f32]) -> Vec<f32> {
    v.iter().map(|x| x.abs()).collect()
}

/// Poison elements on each side of every operand placed with `Placed`.
const GUARD: usize = 8;
const POISON: u16 = 0xFFFF;

/// An operand at element offset `GUARD + off` of a buffer poisoned everywhere else: off = 1
/// makes the span only 2-byte aligned (forces the scalar kernels).
struct Placed {
    buf: DeviceBuffer<bf16>,
    at: usize,
    len: usize,
}

impl Placed {
    /// Poisoned span of `len` (an output).
    fn poisoned(g: &Gpu, len: usize, off: usize) -> Placed {
        Placed {
            buf: poisoned(g, len + off + 2 * GUARD),
            at: GUARD + off,
            len,
        }
    }
    /// Span holding `host` (an input, or an accumulating output's old value).
    fn upload(g: &Gpu, host: &[bf16], off: usize) -> Placed {
        let p = Placed::poisoned(g, host.len(), off);
        g.copy_to_device_at(host, &p.buf, p.at).unwrap();
        p
    }
    fn ptr(&self) -> Ptr<'_, bf16> {
        Ptr::of(&self.buf).slice(self.at, self.len)
    }
    /// The span's values, after checking that everything outside it is still poison.
    fn download(&self, g: &Gpu, what: &str) -> Vec<bf16> {
        let all = g.download(&self.buf).unwrap();
        for (i, v) in all.iter().enumerate() {
            if (i < self.at || i >= self.at + self.len) && v.to_bits() != POISON {
                panic!("{what}: element {i} outside the output span was written");
            }
        }
        all[self.at..self.at + self.len].to_vec()
    }
}

/// |got - want| <= 1e-2 (|want| + 2^-8 s) per element (see the file header).
fn assert_gemm_close(what: &str, got: &[bf16], want: &[f32], s: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, ((g, &w), &s)) in got.iter().zip(want).zip(s).enumerate() {
        let (g, w, s) = (g.to_f32() as f64, w as f64, s as f64);
        let err = (g - w).abs();
        let tol = 1e-2 * (w.abs() + s / 256.0);
        // `assert!(err <= tol)`: false for NaN, so NaN never passes.
        assert!(
            err <= tol,
            "{what}[{i}]: got {g}, want {w} (err {err:.3e} > tol {tol:.3e}, S = {s:.3e})"
        );
    }
}

/// gelu_out must be bf16(gelu(pre)) of the GPU's own rounded pre-activation.
fn assert_gelu_of(what: &str, got: &[bf16], pre: &[bf16]) {
    for (i, (g, p)) in got.iter().zip(pre).enumerate() {
        let want = ops::gelu(p.to_f32()) as f64;
        let err = (g.to_f32() as f64 - want).abs();
        let tol = 1e-2 * want.abs() + 1e-5;
        assert!(
            err <= tol,
            "{what}[{i}]: got {g}, want gelu({p}) = {want} (err {err:.3e} > tol {tol:.3e})"
        );
    }
}

/// (rows, ic, oc). Odd sizes take the scalar kernels; (130, 40, 72) and (200, 768, 304) take
/// the vector kernels with partial M, N and (40) K tiles; (4096, 64, 96) is a long wgrad K;
/// (64, 64, 50304) the vocabulary-sized N (forward, wgrad M) and K (dgrad).
const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (17, 33, 45),
    (128, 64, 256),
    (130, 40, 72),
    (200, 768, 300),
    (200, 768, 304),
    (4096, 64, 96),
    (64, 64, 50304),
];

#[test]
fn matmul_forward_matches_cpu() {
    let g = gpu();
    let mut rng = Rng(11);
    for &(rows, ic, oc) in SHAPES {
        let inp = rng.vec_bf16(rows * ic, 1.0);
        let w = rng.vec_bf16(oc * ic, 1.0);
        let bias = rng.vec_bf16(oc, 1.0);
        let (inp_f, w_f, bias_f) = (f32s(&inp), f32s(&w), f32s(&bias));
        // CPU reference and the scale S = sum |inp||w| (+ |bias|), without and with bias.
        let mut refs = vec![];
        for b in [None, Some(&bias_f[..])] {
            let mut want = vec![0.0f32; rows * oc];
            ops::matmul_forward(&mut want, &inp_f, &w_f, b, rows, ic, oc);
            let mut s = vec![0.0f32; rows * oc];
            let b_abs = b.map(abs);
            ops::matmul_forward(
                &mut s,
                &abs(&inp_f),
                &abs(&w_f),
                b_abs.as_deref(),
                rows,
                ic,
                oc,
            );
            refs.push((want, s));
        }
        for off in [0usize, 1] {
            let (d_inp, d_w) = (Placed::upload(&g, &inp, off), Placed::upload(&g, &w, off));
            let d_bias = Placed::upload(&g, &bias, off);
            for (use_bias, use_gelu) in [(false, false), (true, false), (false, true), (true, true)]
            {
                let what = format!(
                    "matmul_forward rows={rows} ic={ic} oc={oc} offset={off} bias={use_bias} gelu={use_gelu}"
                );
                let out = Placed::poisoned(&g, rows * oc, off);
                let gelu_out = Placed::poisoned(&g, rows * oc, off);
                gemm::matmul_forward(
                    &g,
                    out.ptr(),
                    d_inp.ptr(),
                    d_w.ptr(),
                    use_bias.then(|| d_bias.ptr()),
                    use_gelu.then(|| gelu_out.ptr()),
                    rows,
                    ic,
                    oc,
                )
                .unwrap_or_else(|e| panic!("{what}: {e}"));
                g.synchronize(&what).unwrap();
                let got = out.download(&g, &what);
                let (want, s) = &refs[use_bias as usize];
                assert_gemm_close(&what, &got, want, s);
                let got_gelu = gelu_out.download(&g, &format!("{what} gelu_out"));
                if use_gelu {
                    assert_gelu_of(&format!("{what} gelu_out"), &got_gelu, &got);
                } else {
                    assert!(
                        got_gelu.iter().all(|v| v.to_bits() == POISON),
                        "{what}: gelu_out written although not requested"
                    );
                }
            }
        }
    }
}

#[test]
fn matmul_backward_input_matches_cpu() {
    let g = gpu();
    let mut rng = Rng(12);
    for &(rows, ic, oc) in SHAPES {
        let dout = rng.vec_bf16(rows * oc, 1.0);
        let w = rng.vec_bf16(oc * ic, 1.0);
        let (dout_f, w_f) = (f32s(&dout), f32s(&w));
        let mut want = vec![0.0f32; rows * ic];
        ops::matmul_backward_input(&mut want, &dout_f, &w_f, rows, ic, oc);
        let mut s = vec![0.0f32; rows * ic];
        ops::matmul_backward_input(&mut s, &abs(&dout_f), &abs(&w_f), rows, ic, oc);
        for off in [0usize, 1] {
            let what = format!("matmul_backward_input rows={rows} ic={ic} oc={oc} offset={off}");
            let (d_dout, d_w) = (Placed::upload(&g, &dout, off), Placed::upload(&g, &w, off));
            let dinp = Placed::poisoned(&g, rows * ic, off);
            gemm::matmul_backward_input(&g, dinp.ptr(), d_dout.ptr(), d_w.ptr(), rows, ic, oc)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            g.synchronize(&what).unwrap();
            assert_gemm_close(&what, &dinp.download(&g, &what), &want, &s);
        }
    }
}

#[test]
fn matmul_backward_weight_accumulates_like_cpu() {
    let g = gpu();
    let mut rng = Rng(13);
    for &(rows, ic, oc) in SHAPES {
        let dout = rng.vec_bf16(rows * oc, 1.0);
        let inp = rng.vec_bf16(rows * ic, 1.0);
        let old = rng.vec_bf16(oc * ic, 4.0); // accumulate into existing gradients
        let (dout_f, inp_f, old_f) = (f32s(&dout), f32s(&inp), f32s(&old));
        let mut want = old_f.clone();
        ops::matmul_backward_weight(&mut want, &dout_f, &inp_f, rows, ic, oc);
        let mut s = abs(&old_f);
        ops::matmul_backward_weight(&mut s, &abs(&dout_f), &abs(&inp_f), rows, ic, oc);
        for off in [0usize, 1] {
            let what = format!("matmul_backward_weight rows={rows} ic={ic} oc={oc} offset={off}");
            let (d_dout, d_inp) = (
                Placed::upload(&g, &dout, off),
                Placed::upload(&g, &inp, off),
            );
            let dw = Placed::upload(&g, &old, off);
            gemm::matmul_backward_weight(&g, dw.ptr(), d_dout.ptr(), d_inp.ptr(), rows, ic, oc)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            g.synchronize(&what).unwrap();
            assert_gemm_close(&what, &dw.download(&g, &what), &want, &s);
        }
    }
}

#[test]
fn bias_backward_accumulates_column_sums() {
    let g = gpu();
    let mut rng = Rng(14);
    // Row counts around the 256-row chunk; 1, 45, 300 columns are not multiples of 32.
    for (rows, oc) in [
        (1usize, 1usize),
        (17, 45),
        (256, 64),
        (257, 300),
        (1000, 768),
        (8192, 3),
    ] {
        let what = format!("bias_backward rows={rows} oc={oc}");
        let dout = rng.vec_bf16(rows * oc, 1.0);
        let old = rng.vec_bf16(oc, 4.0);
        let (dout_f, old_f) = (f32s(&dout), f32s(&old));
        let mut want = old_f.clone();
        ops::bias_backward(&mut want, &dout_f, rows, oc);
        let mut s = abs(&old_f);
        ops::bias_backward(&mut s, &abs(&dout_f), rows, oc);
        for off in [0usize, 1] {
            let d_dout = Placed::upload(&g, &dout, off);
            let dbias = Placed::upload(&g, &old, off);
            let scratch = poisoned::<f32>(&g, gemm::bias_backward_scratch_len(rows, oc));
            gemm::bias_backward(&g, dbias.ptr(), d_dout.ptr(), Ptr::of(&scratch), rows, oc)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            g.synchronize(&what).unwrap();
            assert_gemm_close(
                &format!("{what} offset={off}"),
                &dbias.download(&g, &what),
                &want,
                &s,
            );
        }
    }
}

#[test]
fn gemm_and_bias_backward_are_deterministic() {
    let g = gpu();
    let mut rng = Rng(15);
    let (rows, ic, oc) = (300usize, 768usize, 304usize);
    let inp = rng.vec_bf16(rows * ic, 1.0);
    let w = rng.vec_bf16(oc * ic, 1.0);
    let bias = rng.vec_bf16(oc, 1.0);
    let dout = rng.vec_bf16(rows * oc, 1.0);
    let old = rng.vec_bf16(oc * ic, 1.0);
    let run = || {
        let (d_inp, d_w, d_bias, d_dout) = (
            Placed::upload(&g, &inp, 0),
            Placed::upload(&g, &w, 0),
            Placed::upload(&g, &bias, 0),
            Placed::upload(&g, &dout, 0),
        );
        let (out, gelu_out) = (
            Placed::poisoned(&g, rows * oc, 0),
            Placed::poisoned(&g, rows * oc, 0),
        );
        let dinp = Placed::poisoned(&g, rows * ic, 0);
        let dw = Placed::upload(&g, &old, 0);
        let dbias = Placed::upload(&g, &bias, 0);
        let scratch = poisoned::<f32>(&g, gemm::bias_backward_scratch_len(rows, oc));
        gemm::matmul_forward(
            &g,
            out.ptr(),
            d_inp.ptr(),
            d_w.ptr(),
            Some(d_bias.ptr()),
            Some(gelu_out.ptr()),
            rows,
            ic,
            oc,
        )
        .unwrap();
        gemm::matmul_backward_input(&g, dinp.ptr(), d_dout.ptr(), d_w.ptr(), rows, ic, oc).unwrap();
        gemm::matmul_backward_weight(&g, dw.ptr(), d_dout.ptr(), d_inp.ptr(), rows, ic, oc)
            .unwrap();
        gemm::bias_backward(&g, dbias.ptr(), d_dout.ptr(), Ptr::of(&scratch), rows, oc).unwrap();
        g.synchronize("determinism run").unwrap();
        [&out, &gelu_out, &dinp, &dw, &dbias]
            .iter()
            .map(|p| {
                p.download(&g, "determinism run")
                    .iter()
                    .map(|v| v.to_bits())
                    .collect()
            })
            .collect::<Vec<Vec<u16>>>()
    };
    let (a, b) = (run(), run());
    for (i, name) in ["out", "gelu_out", "dinp", "dw", "dbias"]
        .iter()
        .enumerate()
    {
        assert_eq!(a[i], b[i], "{name} differs between two identical runs");
    }
}

#[test]
fn launchers_reject_bad_operands() {
    let g = gpu();
    let (rows, ic, oc) = (4usize, 8usize, 16usize);
    let inp = poisoned::<bf16>(&g, rows * ic);
    let w = poisoned::<bf16>(&g, oc * ic);
    let out = poisoned::<bf16>(&g, rows * oc);
    let short = poisoned::<bf16>(&g, rows * oc - 1);
    // Too short an output.
    assert!(gemm::matmul_forward(
        &g,
        Ptr::of(&short),
        Ptr::of(&inp),
        Ptr::of(&w),
        None,
        None,
        rows,
        ic,
        oc
    )
    .is_err());
    // Zero-sized shape.
    assert!(gemm::matmul_forward(
        &g,
        Ptr::of(&out),
        Ptr::of(&inp),
        Ptr::of(&w),
        None,
        None,
        0,
        ic,
        oc
    )
    .is_err());
    // gelu_out overlapping out.
    let big = poisoned::<bf16>(&g, 2 * rows * oc);
    let (o1, o2) = (
        Ptr::of(&big).slice(0, rows * oc),
        Ptr::of(&big).slice(1, rows * oc),
    );
    assert!(gemm::matmul_forward(
        &g,
        o1,
        Ptr::of(&inp),
        Ptr::of(&w),
        None,
        Some(o2),
        rows,
        ic,
        oc
    )
    .is_err());
    // dw (= w, oc x ic) overlapping its input inp (the first rows x ic elements of w).
    let inp_in_w = Ptr::of(&w).slice(0, rows * ic);
    assert!(
        gemm::matmul_backward_weight(&g, Ptr::of(&w), Ptr::of(&out), inp_in_w, rows, ic, oc)
            .is_err()
    );
    // Too short a scratch for the bias gradient.
    let scratch = poisoned::<f32>(&g, gemm::bias_backward_scratch_len(rows, oc) - 1);
    let dbias = poisoned::<bf16>(&g, oc);
    assert!(gemm::bias_backward(
        &g,
        Ptr::of(&dbias),
        Ptr::of(&out),
        Ptr::of(&scratch),
        rows,
        oc
    )
    .is_err());
    g.synchronize("rejected launches").unwrap();
}
