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

// ---------------------------------------------------------------------------------------------
// The vectorized kernels (MemImpl::Vectorized): the forward keeps the row in registers
// (layernorm_forward_vec{1,2,4,8}), the backward walks the columns 8 at a time with 16-byte
// accesses (layernorm_backward_dinp_vec). Shapes: c = 8 (one vector: NV 1, 32 row groups in
// the backward), 200 (NV 1, 25 vectors: lanes without data), 264 (NV 2), 96 (12 row groups),
// 768 (NV 4, 2 row groups), 1600 (NV 8, one group), 2048 (NV 8 full), 2056 (backward only:
// 257 vector columns, so thread 0 walks two); row counts with partial last blocks.

use gpt::cuda::kernels::membound::MemImpl;
use runtime::cuda::{Gpu, Schedule};

const VEC_SHAPES: [(usize, usize); 7] = [
    (1, 8),
    (7, 200),
    (33, 264),
    (70, 96),
    (64, 768),
    (129, 1600),
    (10, 2048),
];

/// Forward outputs (out, mean, rstd) of one implementation.
#[allow(clippy::too_many_arguments)]
fn forward_with(
    g: &Gpu,
    imp: MemImpl,
    x: &[bf16],
    w: &[bf16],
    b: &[bf16],
    n: usize,
    c: usize,
    in_place: bool,
) -> (Vec<bf16>, Vec<f32>, Vec<f32>) {
    let (dx, dw, db) = (
        g.upload(x).unwrap(),
        g.upload(w).unwrap(),
        g.upload(b).unwrap(),
    );
    let out = poisoned::<bf16>(g, n * c);
    let (mean, rstd) = (poisoned::<f32>(g, n), poisoned::<f32>(g, n));
    let o = if in_place {
        Ptr::of(&dx)
    } else {
        Ptr::of(&out)
    };
    layernorm::layernorm_forward_with(
        g,
        imp,
        o,
        Ptr::of(&mean),
        Ptr::of(&rstd),
        Ptr::of(&dx),
        Ptr::of(&dw),
        Ptr::of(&db),
        n,
        c,
    )
    .unwrap();
    (
        g.download(if in_place { &dx } else { &out }).unwrap(),
        g.download(&mean).unwrap(),
        g.download(&rstd).unwrap(),
    )
}

fn f32_bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn vec_layernorm_forward_matches_reference_bitwise_and_cpu() {
    // Same per-lane summation order as the reference's 16-byte path, the row from registers
    // instead of re-read: out, mean and rstd bit for bit equal to the reference kernel's (and
    // in place, out == inp); against the CPU the tolerances of check_forward.
    let g = gpu();
    let mut rng = Rng(41);
    for (i, (n, c)) in VEC_SHAPES.into_iter().enumerate() {
        let x = ln_inputs(&mut rng, n, c);
        let w = rng.vec_bf16(c, 1.0);
        let b = rng.vec_bf16(c, 0.5);
        let want = forward_with(&g, MemImpl::Reference, &x, &w, &b, n, c, false);
        let got = forward_with(&g, MemImpl::Vectorized, &x, &w, &b, n, c, i % 2 == 1);
        let what = format!("layernorm_forward_vec n={n} c={c} in_place={}", i % 2 == 1);
        assert_eq!(bits(&got.0), bits(&want.0), "{what}: out vs reference");
        assert_eq!(
            f32_bits(&got.1),
            f32_bits(&want.1),
            "{what}: mean vs reference"
        );
        assert_eq!(
            f32_bits(&got.2),
            f32_bits(&want.2),
            "{what}: rstd vs reference"
        );
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
        check_forward(&what, &f32s(&got.0), &got.1, &got.2, (&wo, &wm, &wr));
    }
}

#[test]
fn vec_residual_layernorm_forward_matches_reference_bitwise() {
    // res_out = bf16(res_in + delta) bit for bit; ln_out/mean/rstd bit for bit the reference
    // kernel's; res_out aliasing res_in (i % 3 == 1) or delta (i % 3 == 2).
    let g = gpu();
    let mut rng = Rng(42);
    for (i, (n, c)) in VEC_SHAPES.into_iter().enumerate() {
        let a = ln_inputs(&mut rng, n, c);
        let d = rng.vec_bf16(n * c, 1.0);
        let w = rng.vec_bf16(c, 1.0);
        let b = rng.vec_bf16(c, 0.5);
        let r: Vec<bf16> = a
            .iter()
            .zip(&d)
            .map(|(x, y)| bf16::from_f32(x.to_f32() + y.to_f32()))
            .collect();
        let mut results = vec![];
        for imp in [MemImpl::Reference, MemImpl::Vectorized] {
            let (da, dd) = (g.upload(&a).unwrap(), g.upload(&d).unwrap());
            let (dw, db) = (g.upload(&w).unwrap(), g.upload(&b).unwrap());
            let res_out = poisoned::<bf16>(&g, n * c);
            let ln_out = poisoned::<bf16>(&g, n * c);
            let (mean, rstd) = (poisoned::<f32>(&g, n), poisoned::<f32>(&g, n));
            let ro = match i % 3 {
                1 => &da,
                2 => &dd,
                _ => &res_out,
            };
            layernorm::residual_layernorm_forward_with(
                &g,
                imp,
                Ptr::of(ro),
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
            results.push((
                bits(&g.download(ro).unwrap()),
                bits(&g.download(&ln_out).unwrap()),
                f32_bits(&g.download(&mean).unwrap()),
                f32_bits(&g.download(&rstd).unwrap()),
            ));
        }
        let what = format!("residual_layernorm_forward_vec n={n} c={c} alias={}", i % 3);
        assert_eq!(results[1].0, bits(&r), "{what}: res_out");
        assert!(
            results[1] == results[0],
            "{what}: differs from the reference kernel"
        );
    }
}

/// One backward run: (dinp, dw, db) after accumulating into the given old values.
#[allow(clippy::too_many_arguments)]
fn backward_with(
    g: &Gpu,
    imp: MemImpl,
    (x, w, dout): (&[bf16], &[bf16], &[bf16]),
    (mean, rstd): (&[f32], &[f32]),
    (dinp0, dw0, db0): (&[bf16], &[bf16], &[bf16]),
    n: usize,
    c: usize,
) -> (Vec<bf16>, Vec<bf16>, Vec<bf16>) {
    let (dx, dwt, ddo) = (
        g.upload(x).unwrap(),
        g.upload(w).unwrap(),
        g.upload(dout).unwrap(),
    );
    let (dmean, drstd) = (g.upload(mean).unwrap(), g.upload(rstd).unwrap());
    let (di, dw, db) = (
        g.upload(dinp0).unwrap(),
        g.upload(dw0).unwrap(),
        g.upload(db0).unwrap(),
    );
    let scratch = poisoned::<f32>(g, layernorm::layernorm_backward_scratch_len(n, c));
    layernorm::layernorm_backward_with(
        g,
        imp,
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
}

#[test]
fn vec_layernorm_backward_matches_cpu_and_reference_dinp() {
    // Against the CPU op with the tolerances of layernorm_backward_accumulates_and_is_
    // deterministic (rel 1e-2 + abs 1e-3: summation order and one bf16 rounding). dinp is the
    // reference kernel's bit for bit (same per-element arithmetic); dw/db sum a block's rows in
    // row groups when c <= 1024, so they are compared to the CPU only. A second run must give
    // the same bits.
    let g = gpu();
    let mut rng = Rng(43);
    for (n, c) in VEC_SHAPES.into_iter().chain([(5, 2056), (40, 8)]) {
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
        let ins = (&x[..], &w[..], &dout[..]);
        let stats = (&mean[..], &rstd[..]);
        let old = (&dinp0[..], &dw0[..], &db0[..]);
        let got = backward_with(&g, MemImpl::Vectorized, ins, stats, old, n, c);
        let what = format!("layernorm_backward vec n={n} c={c}");
        assert_close(
            &format!("{what} dinp"),
            &f32s(&got.0),
            &f64s(&wdi),
            1e-2,
            1e-3,
        );
        assert_close(
            &format!("{what} dw"),
            &f32s(&got.1),
            &f64s(&wdw),
            1e-2,
            1e-3,
        );
        assert_close(
            &format!("{what} db"),
            &f32s(&got.2),
            &f64s(&wdb),
            1e-2,
            1e-3,
        );
        let reference = backward_with(&g, MemImpl::Reference, ins, stats, old, n, c);
        assert_eq!(
            bits(&got.0),
            bits(&reference.0),
            "{what}: dinp vs reference"
        );
        let again = backward_with(&g, MemImpl::Vectorized, ins, stats, old, n, c);
        assert_eq!(
            (bits(&again.0), bits(&again.1), bits(&again.2)),
            (bits(&got.0), bits(&got.1), bits(&got.2)),
            "{what}: must be bitwise reproducible"
        );
    }
}

#[test]
fn vec_layernorm_launchers_check_shapes_and_fall_back() {
    // c % 8 != 0, c > 2048 (forward) and misaligned operands: an error when the vec kernels are
    // asked for, the reference kernels by default (checked against the CPU).
    let g = gpu();
    let mut rng = Rng(44);
    let (n, c) = (3usize, 2056usize);
    let x = ln_inputs(&mut rng, n, c);
    let w = rng.vec_bf16(c, 1.0);
    let b = rng.vec_bf16(c, 0.5);
    let (dx, dw, db) = (
        g.upload(&x).unwrap(),
        g.upload(&w).unwrap(),
        g.upload(&b).unwrap(),
    );
    let out = poisoned::<bf16>(&g, n * c + 8);
    let (mean, rstd) = (poisoned::<f32>(&g, n), poisoned::<f32>(&g, n));
    let call = |imp: Option<MemImpl>, out: Ptr<bf16>, c: usize| {
        let args = (Ptr::of(&mean), Ptr::of(&rstd), Ptr::of(&dx), Ptr::of(&dw));
        match imp {
            Some(imp) => layernorm::layernorm_forward_with(
                &g,
                imp,
                out,
                args.0,
                args.1,
                args.2,
                args.3,
                Ptr::of(&db),
                n,
                c,
            ),
            None => layernorm::layernorm_forward(
                &g,
                out,
                args.0,
                args.1,
                args.2,
                args.3,
                Ptr::of(&db),
                n,
                c,
            ),
        }
    };
    let e = call(Some(MemImpl::Vectorized), Ptr::of(&out), c)
        .unwrap_err()
        .to_string();
    assert!(e.contains("c <= 2048"), "{e}");
    let e = call(Some(MemImpl::Vectorized), Ptr::of(&out), 2052)
        .unwrap_err()
        .to_string();
    assert!(e.contains("c % 8"), "{e}");
    let e = call(
        Some(MemImpl::Vectorized),
        Ptr::of(&out).slice(1, n * c),
        c - 8,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("out") && e.contains("16-byte aligned"), "{e}");
    call(None, Ptr::of(&out), c).unwrap();
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
        "layernorm_forward c=2056 default",
        &down_f32(&g, &out)[..n * c],
        &g.download(&mean).unwrap(),
        &g.download(&rstd).unwrap(),
        (&wo, &wm, &wr),
    );
}

/// The vec layernorm kernels once, on fixed inputs: output bits.
fn vec_layernorm_kernels(g: &Gpu) -> Vec<Vec<u32>> {
    let mut rng = Rng(45);
    let mut outs = vec![];
    for (n, c) in [(37usize, 96usize), (3, 2056)] {
        let x = ln_inputs(&mut rng, n, c);
        let d = rng.vec_bf16(n * c, 1.0);
        let w = rng.vec_bf16(c, 1.0);
        let b = rng.vec_bf16(c, 0.5);
        let imp = if c <= layernorm::VEC_FORWARD_MAX_C {
            MemImpl::Vectorized
        } else {
            MemImpl::Reference
        };
        let (dx, dd, dw, db) = (
            g.upload(&x).unwrap(),
            g.upload(&d).unwrap(),
            g.upload(&w).unwrap(),
            g.upload(&b).unwrap(),
        );
        let (res, ln) = (poisoned::<bf16>(g, n * c), poisoned::<bf16>(g, n * c));
        let (mean, rstd) = (poisoned::<f32>(g, n), poisoned::<f32>(g, n));
        layernorm::residual_layernorm_forward_with(
            g,
            imp,
            Ptr::of(&res),
            Ptr::of(&ln),
            Ptr::of(&mean),
            Ptr::of(&rstd),
            Ptr::of(&dx),
            Ptr::of(&dd),
            Ptr::of(&dw),
            Ptr::of(&db),
            n,
            c,
        )
        .unwrap();
        let (di, gw, gb) = (
            g.upload(&rng.vec_bf16(n * c, 0.5)).unwrap(),
            g.upload(&rng.vec_bf16(c, 0.5)).unwrap(),
            g.upload(&rng.vec_bf16(c, 0.5)).unwrap(),
        );
        let scratch = poisoned::<f32>(g, layernorm::layernorm_backward_scratch_len(n, c));
        layernorm::layernorm_backward_with(
            g,
            MemImpl::Vectorized,
            Ptr::of(&di),
            Ptr::of(&gw),
            Ptr::of(&gb),
            Ptr::of(&dd),
            Ptr::of(&res),
            Ptr::of(&dw),
            Ptr::of(&mean),
            Ptr::of(&rstd),
            Ptr::of(&scratch),
            n,
            c,
        )
        .unwrap();
        for buf in [&res, &ln, &di, &gw, &gb] {
            outs.push(
                bits(&g.download(buf).unwrap())
                    .into_iter()
                    .map(u32::from)
                    .collect(),
            );
        }
        outs.push(f32_bits(&g.download(&mean).unwrap()));
        outs.push(f32_bits(&g.download(&rstd).unwrap()));
    }
    outs
}

#[test]
fn vec_layernorm_is_bit_identical_under_every_schedule() {
    // The backward's row groups meet in shared memory behind a barrier (c = 96: 21 groups);
    // c = 2056 runs one group with two vector columns for thread 0. Any schedule dependence
    // would be a race.
    let schedules = [
        Schedule::InOrder,
        Schedule::Reverse,
        Schedule::Random(1),
        Schedule::Random(2),
    ];
    let runs: Vec<_> = schedules
        .iter()
        .map(|&s| vec_layernorm_kernels(&Gpu::harness(s)))
        .collect();
    for (s, r) in schedules.iter().zip(&runs).skip(1) {
        for (i, (a, b)) in r.iter().zip(&runs[0]).enumerate() {
            let what = ["res_out", "ln_out", "dinp", "dw", "db", "mean", "rstd"][i % 7];
            assert!(
                a == b,
                "vec layernorm {what} (case {}) differs under {s:?}",
                i / 7
            );
        }
    }
}
