//! GPU tests (feature `cuda`, need a GPU) of the layernorm launchers
//! (gpt::cuda::kernels::layernorm, ptx/kernels/layernorm.cu) against the CPU backend's ops on
//! the same bf16-rounded inputs. (The launchers of the older kernels are tested in
//! gpu_kernels.rs.)
//!
//! NOT YET RUN ON A GPU: written and compiled in a session without one. Run on a GPU host with
//! `cargo test --release -p tests --features cuda --test gpu_layernorm`.
//!
//! Every output is poisoned with 0xFF bytes (NaN) first, and comparisons are written as
//! `!(err <= tol)` so NaN never passes. Tolerances are stated per test.
use tests::gpu::*;

use gpt::cpu::ops;
use gpt::cuda::kernels::{layernorm, Ptr};
use runtime::cuda::half::bf16;

/// (n, c) shapes: tiny, C not a multiple of 8 (scalar path), GPT-2 small width (16-byte path),
/// GPT-2 XL width with a last backward block of one row, and enough rows for several backward
/// partials per reduction thread.
const SHAPES: [(usize, usize); 5] = [(1, 1), (7, 33), (64, 768), (129, 1600), (300, 96)];

/// Row-wise inputs with a per-row offset, so the mean matters and cancellation is exercised.
fn ln_inputs(rng: &mut Rng, n: usize, c: usize) -> Vec<bf16> {
    let mut x = Vec::with_capacity(n * c);
    for _ in 0..n {
        let off = rng.f32(3.0);
        x.extend((0..c).map(|_| bf16::from_f32(off + rng.f32(2.0))));
    }
    x
}

// Forward tolerances: out is one bf16 rounding (<= 2^-9 relative, or one bf16 ulp = 2^-8 when
// GPU and CPU f32 values straddle a rounding boundary) of an f32 value that differs from the
// CPU's only by summation order (~1e-6 relative): rel 1e-2 + abs 1e-3 (outputs are O(1)).
// mean/rstd are f32 on both sides, but the CPU sums a row sequentially (error ~sqrt(C) half-ulps
// of a running sum of up to ~5C, i.e. ~1e-5 on the mean at C = 1600) while the GPU sums ~C/256
// terms per lane and then a butterfly: mean abs 1e-4 + rel 1e-4 (the mean itself can cancel to
// ~0), rstd rel 1e-4 (the squared deviations are all positive: ~sqrt(C) * 6e-8 relative).
fn check_forward(
    what: &str,
    out: &[f32],
    mean: &[f32],
    rstd: &[f32],
    want: (&[f32], &[f32], &[f32]),
) {
    assert_close(&format!("{what} out"), out, &f64s(want.0), 1e-2, 1e-3);
    assert_close(&format!("{what} mean"), mean, &f64s(want.1), 1e-4, 1e-4);
    assert_close(&format!("{what} rstd"), rstd, &f64s(want.2), 1e-4, 0.0);
}

#[test]
fn layernorm_forward_matches_cpu() {
    let g = gpu();
    let mut rng = Rng(11);
    for (n, c) in SHAPES {
        let x = ln_inputs(&mut rng, n, c);
        let w = rng.vec_bf16(c, 1.0);
        let b = rng.vec_bf16(c, 0.5);
        let (dx, dw, db) = (
            g.upload(&x).unwrap(),
            g.upload(&w).unwrap(),
            g.upload(&b).unwrap(),
        );
        let out = poisoned::<bf16>(&g, n * c);
        let (mean, rstd) = (poisoned::<f32>(&g, n), poisoned::<f32>(&g, n));
        layernorm::layernorm_forward(
            &g,
            Ptr::of(&out),
            Ptr::of(&mean),
            Ptr::of(&rstd),
            Ptr::of(&dx),
            Ptr::of(&dw),
            Ptr::of(&db),
            n,
            c,
        )
        .unwrap();
        let (mut wo, mut wm, mut wr) = (vec![0f32; n * c], vec![0f32; n], vec![0f32; n]);
        ops::layernorm_forward(
            &mut wo,
            &mut wm,
            &mut wr,
            &f32s(&x),
            &f32s(&w),
            &f32s(&b),
            c,
        );
        check_forward(
            &format!("layernorm_forward n={n} c={c}"),
            &down_f32(&g, &out),
            &g.download(&mean).unwrap(),
            &g.download(&rstd).unwrap(),
            (&wo, &wm, &wr),
        );
    }
}

#[test]
fn layernorm_forward_unaligned_and_in_place() {
    // C % 8 == 0 but operands one element off 16-byte alignment: the kernel must take its
    // scalar path. Then the same shape in place (out == inp). Tolerances as in check_forward.
    let g = gpu();
    let mut rng = Rng(12);
    let (n, c) = (9usize, 256usize);
    let x = ln_inputs(&mut rng, n, c);
    let w = rng.vec_bf16(c, 1.0);
    let b = rng.vec_bf16(c, 0.5);
    let (mut wo, mut wm, mut wr) = (vec![0f32; n * c], vec![0f32; n], vec![0f32; n]);
    ops::layernorm_forward(
        &mut wo,
        &mut wm,
        &mut wr,
        &f32s(&x),
        &f32s(&w),
        &f32s(&b),
        c,
    );

    let mut padded = vec![bf16::ZERO];
    padded.extend_from_slice(&x);
    let dx = g.upload(&padded).unwrap();
    let mut wpad = vec![bf16::ZERO];
    wpad.extend_from_slice(&w);
    wpad.extend_from_slice(&b);
    let dwb = g.upload(&wpad).unwrap();
    let out = poisoned::<bf16>(&g, n * c + 1);
    let (mean, rstd) = (poisoned::<f32>(&g, n), poisoned::<f32>(&g, n));
    layernorm::layernorm_forward(
        &g,
        Ptr::of(&out).slice(1, n * c),
        Ptr::of(&mean),
        Ptr::of(&rstd),
        Ptr::of(&dx).slice(1, n * c),
        Ptr::of(&dwb).slice(1, c),
        Ptr::of(&dwb).slice(1 + c, c),
        n,
        c,
    )
    .unwrap();
    check_forward(
        "layernorm_forward unaligned",
        &down_f32(&g, &out)[1..],
        &g.download(&mean).unwrap(),
        &g.download(&rstd).unwrap(),
        (&wo, &wm, &wr),
    );

    let inout = g.upload(&x).unwrap();
    let (dw, db) = (g.upload(&w).unwrap(), g.upload(&b).unwrap());
    layernorm::layernorm_forward(
        &g,
        Ptr::of(&inout),
        Ptr::of(&mean),
        Ptr::of(&rstd),
        Ptr::of(&inout),
        Ptr::of(&dw),
        Ptr::of(&db),
        n,
        c,
    )
    .unwrap();
    check_forward(
        "layernorm_forward in place",
        &down_f32(&g, &inout),
        &g.download(&mean).unwrap(),
        &g.download(&rstd).unwrap(),
        (&wo, &wm, &wr),
    );
}

#[test]
fn residual_layernorm_forward_matches_cpu() {
    // res_out must equal bf16(res_in + delta) bit for bit (one f32 add, RNE on both sides);
    // ln_out/mean/rstd are layernorm of those stored bf16 values: tolerances of check_forward.
    let g = gpu();
    let mut rng = Rng(13);
    for (i, (n, c)) in SHAPES.into_iter().enumerate() {
        let a = ln_inputs(&mut rng, n, c);
        let d = rng.vec_bf16(n * c, 1.0);
        let w = rng.vec_bf16(c, 1.0);
        let b = rng.vec_bf16(c, 0.5);
        let r: Vec<bf16> = a
            .iter()
            .zip(&d)
            .map(|(x, y)| bf16::from_f32(x.to_f32() + y.to_f32()))
            .collect();
        let (mut wo, mut wm, mut wr) = (vec![0f32; n * c], vec![0f32; n], vec![0f32; n]);
        ops::layernorm_forward(
            &mut wo,
            &mut wm,
            &mut wr,
            &f32s(&r),
            &f32s(&w),
            &f32s(&b),
            c,
        );

        let in_place = i % 2 == 1; // odd shapes: res_out is res_in
        let (da, dd) = (g.upload(&a).unwrap(), g.upload(&d).unwrap());
        let (dw, db) = (g.upload(&w).unwrap(), g.upload(&b).unwrap());
        let res_out = poisoned::<bf16>(&g, n * c);
        let ln_out = poisoned::<bf16>(&g, n * c);
        let (mean, rstd) = (poisoned::<f32>(&g, n), poisoned::<f32>(&g, n));
        let ro = if in_place {
            Ptr::of(&da)
        } else {
            Ptr::of(&res_out)
        };
        layernorm::residual_layernorm_forward(
            &g,
            ro,
            Ptr::of(&ln_out),
            Ptr::of(&mean),
            Ptr::of(&rstd),
            Ptr::of(&da),
            Ptr::of(&dd),
            Ptr::of(&dw),
            Ptr::of(&db),
            n,
            c,
        )
        .unwrap();
        let what = format!("residual_layernorm_forward n={n} c={c} in_place={in_place}");
        let got_r = g.download(if in_place { &da } else { &res_out }).unwrap();
        assert_eq!(bits(&got_r), bits(&r), "{what}: res_out");
        check_forward(
            &what,
            &down_f32(&g, &ln_out),
            &g.download(&mean).unwrap(),
            &g.download(&rstd).unwrap(),
            (&wo, &wm, &wr),
        );
    }
}

#[test]
fn layernorm_backward_accumulates_and_is_deterministic() {
    // dinp/dw/db are prefilled with random values and must come back as old + gradient. The CPU
    // op accumulates in f32 from the same old values and the same mean/rstd (the CPU forward's,
    // uploaded), so the GPU differs by summation order (~1e-6 relative) and one bf16 rounding
    // of the result (<= 2^-8 relative with a boundary straddle): rel 1e-2. Absolute 1e-3 covers
    // elements where old + gradient cancels (values are O(1)..O(10)). Scratch is poisoned: its
    // contents on entry must not matter. A second run must be bitwise identical.
    let g = gpu();
    let mut rng = Rng(14);
    for (n, c) in SHAPES {
        let x = ln_inputs(&mut rng, n, c);
        let w = rng.vec_bf16(c, 1.0);
        let b = rng.vec_bf16(c, 0.5);
        let (mut fo, mut mean, mut rstd) = (vec![0f32; n * c], vec![0f32; n], vec![0f32; n]);
        ops::layernorm_forward(
            &mut fo,
            &mut mean,
            &mut rstd,
            &f32s(&x),
            &f32s(&w),
            &f32s(&b),
            c,
        );
        let dout = rng.vec_bf16(n * c, 1.0);
        let dinp0 = rng.vec_bf16(n * c, 0.5);
        let dw0 = rng.vec_bf16(c, 0.5);
        let db0 = rng.vec_bf16(c, 0.5);

        let (mut wdi, mut wdw, mut wdb) = (f32s(&dinp0), f32s(&dw0), f32s(&db0));
        ops::layernorm_backward(
            &mut wdi,
            &mut wdw,
            &mut wdb,
            &f32s(&dout),
            &f32s(&x),
            &f32s(&w),
            &mean,
            &rstd,
            c,
        );

        let (dx, dwt, ddo) = (
            g.upload(&x).unwrap(),
            g.upload(&w).unwrap(),
            g.upload(&dout).unwrap(),
        );
        let (dmean, drstd) = (g.upload(&mean).unwrap(), g.upload(&rstd).unwrap());
        let run = || {
            let (di, dw, db) = (
                g.upload(&dinp0).unwrap(),
                g.upload(&dw0).unwrap(),
                g.upload(&db0).unwrap(),
            );
            let scratch = poisoned::<f32>(&g, layernorm::layernorm_backward_scratch_len(n, c));
            layernorm::layernorm_backward(
                &g,
                Ptr::of(&di),
                Ptr::of(&dw),
                Ptr::of(&db),
                Ptr::of(&ddo),
                Ptr::of(&dx),
                Ptr::of(&dwt),
                Ptr::of(&dmean),
                Ptr::of(&drstd),
                Ptr::of(&scratch),
                n,
                c,
            )
            .unwrap();
            (
                g.download(&di).unwrap(),
                g.download(&dw).unwrap(),
                g.download(&db).unwrap(),
            )
        };
        let (gdi, gdw, gdb) = run();
        let what = format!("layernorm_backward n={n} c={c}");
        assert_close(
            &format!("{what} dinp"),
            &f32s(&gdi),
            &f64s(&wdi),
            1e-2,
            1e-3,
        );
        assert_close(&format!("{what} dw"), &f32s(&gdw), &f64s(&wdw), 1e-2, 1e-3);
        assert_close(&format!("{what} db"), &f32s(&gdb), &f64s(&wdb), 1e-2, 1e-3);
        let (gdi2, gdw2, gdb2) = run();
        assert_eq!(
            (bits(&gdi2), bits(&gdw2), bits(&gdb2)),
            (bits(&gdi), bits(&gdw), bits(&gdb)),
            "{what}: must be bitwise reproducible"
        );
    }
}

#[test]
fn layernorm_launchers_reject_bad_operands() {
    // Checked on the host before any launch: short buffers and overlapping outputs are errors.
    let g = gpu();
    let (n, c) = (4usize, 16usize);
    let a = g.alloc::<bf16>(n * c).unwrap();
    let d = g.alloc::<bf16>(n * c).unwrap();
    let wb = g.alloc::<bf16>(c).unwrap();
    let st = g.alloc::<f32>(n).unwrap();
    let scratch = g
        .alloc::<f32>(layernorm::layernorm_backward_scratch_len(n, c))
        .unwrap();
    let e = layernorm::layernorm_backward(
        &g,
        Ptr::of(&d),
        Ptr::of(&wb),
        Ptr::of(&wb),
        Ptr::of(&d),
        Ptr::of(&a),
        Ptr::of(&wb),
        Ptr::of(&st),
        Ptr::of(&st),
        Ptr::of(&scratch),
        n,
        c,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("overlaps"), "{e}");
    let e = layernorm::layernorm_forward(
        &g,
        Ptr::of(&d),
        Ptr::of(&st),
        Ptr::of(&st),
        Ptr::of(&a),
        Ptr::of(&wb),
        Ptr::of(&wb),
        n + 1,
        c,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("layernorm_forward") && e.contains("out"), "{e}");
}
