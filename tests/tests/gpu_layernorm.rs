//! GPU tests (feature `cuda`, need a GPU) of the layernorm launchers
//! (gpt::cuda::kernels::layernorm, ptx/kernels/layernorm.cu) against the CPU backend's ops on
//! the same bf16-rounded inputs, and of the launchers of the older kernels where
//! tests/tests/gpu_kernels.rs does not already cover what the launcher adds (the encoder's
//! host-built token index, in-place GELU backward, AdamW's argument order, bf16 clipping, the
//! batched transpose).
//!
//! NOT YET RUN ON A GPU: written and compiled in a session without one. Run on a GPU host with
//! `cargo test --release -p tests --features cuda --test gpu_layernorm`.
//!
//! Every output is poisoned with 0xFF bytes (NaN) first, and comparisons are written as
//! `!(err <= tol)` so NaN never passes. Tolerances are stated per test.
#![cfg(feature = "cuda")]

use tests::gpu::*;

use gpt::cpu::ops;
use gpt::cuda::kernels::{adamw, cast, encoder, gelu, global_norm, layernorm, Ptr};
use runtime::cuda::half::bf16;
use runtime::cuda::ptx::host::{bf16_bits_stochastic, sr_hash};
use runtime::cuda::{DeviceBuffer, Gpu};

fn down_f32(g: &Gpu, b: &DeviceBuffer<bf16>) -> Vec<f32> {
    f32s(&g.download(b).unwrap())
}

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
// Launchers of the kernels tested raw in gpu_kernels.rs: what the launcher itself adds.

#[test]
fn encoder_launchers_with_repeated_tokens_and_index_chunks() {
    // Forward and backward through the launchers. Bitwise: the kernels do the same f32
    // operations in the same order as these references (wte: positions ascending, from 0; wpe:
    // b ascending, from 0; then one add to the old gradient and RNE to bf16).
    let g = gpu();
    let mut rng = Rng(15);
    // Second case: more distinct tokens than grid.y allows (65535), so the launcher must split
    // the wte launch into chunks.
    for (b, t, c, vocab, repeats) in [
        (3usize, 17usize, 100usize, 50usize, true),
        (2, 33_000, 3, 70_000, false),
    ] {
        let bt = b * t;
        let tokens: Vec<u32> = (0..bt)
            .map(|p| {
                if repeats {
                    ((p * 7 + p / 5) % 13) as u32
                } else {
                    ((p * 7919) % vocab) as u32
                }
            })
            .collect();
        let wte = rng.vec_bf16(vocab * c, 1.0);
        let wpe = rng.vec_bf16(t * c, 1.0);
        let tok_i32: Vec<i32> = tokens.iter().map(|&x| x as i32).collect();
        let (dtok, dwte, dwpe) = (
            g.upload(&tok_i32).unwrap(),
            g.upload(&wte).unwrap(),
            g.upload(&wpe).unwrap(),
        );
        let out = poisoned::<bf16>(&g, bt * c);
        encoder::encoder_forward(
            &g,
            Ptr::of(&out),
            Ptr::of(&dtok),
            Ptr::of(&dwte),
            Ptr::of(&dwpe),
            b,
            t,
            c,
        )
        .unwrap();
        let got = g.download(&out).unwrap();
        for p in 0..bt {
            for k in 0..c {
                let want = bf16::from_f32(
                    wte[tokens[p] as usize * c + k].to_f32() + wpe[(p % t) * c + k].to_f32(),
                );
                assert_eq!(
                    got[p * c + k].to_bits(),
                    want.to_bits(),
                    "encoder_forward at p={p} c={k}"
                );
            }
        }

        let dout = rng.vec_bf16(bt * c, 1.0);
        let gwte0 = rng.vec_bf16(vocab * c, 0.1);
        let gwpe0 = rng.vec_bf16(t * c, 0.1);
        let ddout = g.upload(&dout).unwrap();
        let (gwte, gwpe) = (g.upload(&gwte0).unwrap(), g.upload(&gwpe0).unwrap());
        encoder::encoder_backward(
            &g,
            Ptr::of(&gwte),
            Ptr::of(&gwpe),
            Ptr::of(&ddout),
            &tokens,
            b,
            t,
            c,
        )
        .unwrap();
        let mut acc = vec![0f32; vocab * c];
        let mut used = vec![false; vocab];
        for p in 0..bt {
            let v = tokens[p] as usize;
            used[v] = true;
            for k in 0..c {
                acc[v * c + k] += dout[p * c + k].to_f32();
            }
        }
        let want_wte: Vec<u16> = (0..vocab * c)
            .map(|i| {
                if used[i / c] {
                    bf16::from_f32(gwte0[i].to_f32() + acc[i]).to_bits()
                } else {
                    gwte0[i].to_bits()
                }
            })
            .collect();
        let want_wpe: Vec<u16> = (0..t * c)
            .map(|i| {
                let s = (0..b).fold(0f32, |a, bb| a + dout[bb * t * c + i].to_f32());
                bf16::from_f32(gwpe0[i].to_f32() + s).to_bits()
            })
            .collect();
        assert_eq!(
            bits(&g.download(&gwte).unwrap()),
            want_wte,
            "encoder_backward dwte (b={b} t={t})"
        );
        assert_eq!(
            bits(&g.download(&gwpe).unwrap()),
            want_wpe,
            "encoder_backward dwpe (b={b} t={t})"
        );
    }
    // A token outside the vocabulary is a host-side error, not a device fault.
    let (d1, d2, d3) = (
        g.alloc::<bf16>(4 * 8).unwrap(),
        g.alloc::<bf16>(8).unwrap(),
        g.alloc::<bf16>(8).unwrap(),
    );
    let e = encoder::encoder_backward(&g, Ptr::of(&d1), Ptr::of(&d2), Ptr::of(&d3), &[4], 1, 1, 8)
        .unwrap_err()
        .to_string();
    assert!(e.contains("token 4"), "{e}");
}

#[test]
fn gelu_backward_in_place_through_launcher() {
    // d = dout * gelu'(pre) in place (dinp aliases dout). Reference: the CPU op on the same
    // bf16 values; one bf16 rounding of the GPU result plus f32 tanh differences: rel 1e-2 +
    // abs 1e-3 (as gpu_kernels.rs's GELU test). Also gelu_forward in place.
    let g = gpu();
    let mut rng = Rng(16);
    for n in [1usize, 1000, 3 * 1024 + 7] {
        let pre = rng.vec_bf16(n, 5.0);
        let d = rng.vec_bf16(n, 1.0);
        let (dpre, dd) = (g.upload(&pre).unwrap(), g.upload(&d).unwrap());
        gelu::gelu_backward_inplace(&g, Ptr::of(&dd), Ptr::of(&dpre), n).unwrap();
        let mut want = f32s(&d);
        ops::gelu_backward_inplace(&mut want, &f32s(&pre));
        assert_close(
            &format!("gelu_backward_inplace n={n}"),
            &down_f32(&g, &dd),
            &f64s(&want),
            1e-2,
            1e-3,
        );
        gelu::gelu_forward(&g, Ptr::of(&dpre), Ptr::of(&dpre), n).unwrap();
        let mut want = vec![0f32; n];
        ops::gelu_forward(&mut want, &f32s(&pre));
        assert_close(
            &format!("gelu_forward in place n={n}"),
            &down_f32(&g, &dpre),
            &f64s(&want),
            1e-2,
            1e-3,
        );
    }
}

#[test]
fn adamw_launcher_passes_arguments_in_order() {
    // Distinct values for every hyper-parameter, so a swapped argument shows. Reference in
    // f64; master/m/v rel 1e-5 (f32 math, possible FMA contraction), params exactly the
    // stochastic rounding of the GPU's own master weights; outside [offset, offset + n)
    // nothing changes.
    let g = gpu();
    let mut rng = Rng(17);
    let (total, offset, n) = (3000usize, 517usize, 2001usize);
    let master = rng.vec_f32(total, 1.0);
    let params: Vec<bf16> = master.iter().map(|&x| bf16::from_f32(x)).collect();
    let grads = rng.vec_bf16(total, 0.1);
    let m = rng.vec_f32(total, 0.01);
    let v: Vec<f32> = rng.vec_f32(total, 0.01).iter().map(|x| x.abs()).collect();
    let hp = adamw::AdamwArgs {
        lr: 3e-3,
        beta1: 0.85,
        beta2: 0.97,
        beta1_correction: 1.0 - 0.85f32.powi(4),
        beta2_correction: 1.0 - 0.97f32.powi(4),
        eps: 1e-6,
        weight_decay: 0.2,
        grad_scale: 0.7,
        seed: 1234,
    };
    let (dp, dmaster, dg, dm, dv) = (
        g.upload(&params).unwrap(),
        g.upload(&master).unwrap(),
        g.upload(&grads).unwrap(),
        g.upload(&m).unwrap(),
        g.upload(&v).unwrap(),
    );
    adamw::adamw_update(
        &g,
        Ptr::of(&dp),
        Ptr::of(&dmaster),
        Ptr::of(&dg),
        Ptr::of(&dm),
        Ptr::of(&dv),
        offset,
        n,
        &hp,
    )
    .unwrap();
    let (gp, gmaster, gm, gv) = (
        g.download(&dp).unwrap(),
        g.download(&dmaster).unwrap(),
        g.download(&dm).unwrap(),
        g.download(&dv).unwrap(),
    );
    for i in 0..total {
        if i < offset || i >= offset + n {
            assert_eq!(
                (gp[i].to_bits(), gmaster[i], gm[i], gv[i]),
                (params[i].to_bits(), master[i], m[i], v[i]),
                "index {i} outside the range changed"
            );
            continue;
        }
        let gr = grads[i].to_f64() * hp.grad_scale as f64;
        let mi = hp.beta1 as f64 * m[i] as f64 + (1.0 - hp.beta1 as f64) * gr;
        let vi = hp.beta2 as f64 * v[i] as f64 + (1.0 - hp.beta2 as f64) * gr * gr;
        let w = master[i] as f64;
        let w = w - hp.lr as f64
            * ((mi / hp.beta1_correction as f64)
                / ((vi / hp.beta2_correction as f64).sqrt() + hp.eps as f64)
                + hp.weight_decay as f64 * w);
        assert_close(&format!("m[{i}]"), &[gm[i]], &[mi], 1e-5, 1e-8);
        assert_close(&format!("v[{i}]"), &[gv[i]], &[vi], 1e-5, 1e-12);
        assert_close(&format!("master[{i}]"), &[gmaster[i]], &[w], 1e-5, 1e-7);
        assert_eq!(
            gp[i].to_bits(),
            bf16_bits_stochastic(gmaster[i], sr_hash(hp.seed, i as u64)),
            "param[{i}] is not the stochastic rounding of master"
        );
    }
}

#[test]
fn grad_norm_and_bf16_clip_through_launchers() {
    // Norm vs f64: rel 1e-5 (f32 sums of <= 1M squares in a fixed tree). Clip: each element is
    // one bf16 rounding of x * scale: rel 2^-8 (1e-2 stated loosely) vs f64, abs 1e-12.
    let g = gpu();
    let mut rng = Rng(18);
    for n in [1usize, 777, (1 << 20) | 3] {
        let x = rng.vec_bf16(n, 1.0);
        let want = x.iter().map(|v| v.to_f64().powi(2)).sum::<f64>().sqrt();
        let dx = g.upload(&x).unwrap();
        let norm = poisoned::<f32>(&g, 1);
        let scratch = poisoned::<f32>(&g, global_norm::grad_norm_scratch_len(n));
        global_norm::grad_norm(&g, Ptr::of(&norm), Ptr::of(&dx), Ptr::of(&scratch)).unwrap();
        let got = g.download(&norm).unwrap()[0];
        assert_close(&format!("grad_norm n={n}"), &[got], &[want], 1e-5, 0.0);
        let max_norm = (want / 3.0) as f32;
        global_norm::clip_by_norm_bf16(&g, Ptr::of(&dx), Ptr::of(&norm), max_norm).unwrap();
        let s = max_norm as f64 / (got as f64 + 1e-6);
        let want_x: Vec<f64> = x.iter().map(|v| v.to_f64() * s).collect();
        assert_close(
            &format!("clip_by_norm_bf16 n={n}"),
            &down_f32(&g, &dx),
            &want_x,
            1e-2,
            1e-12,
        );
        // Below the threshold nothing changes, bit for bit.
        let before = g.download(&dx).unwrap();
        global_norm::clip_by_norm_bf16(&g, Ptr::of(&dx), Ptr::of(&norm), f32::MAX).unwrap();
        assert_eq!(
            bits(&g.download(&dx).unwrap()),
            bits(&before),
            "clip below threshold n={n}"
        );
    }
}

#[test]
fn cast_and_batched_transpose_through_launchers() {
    // Exact: casts are RNE / widening, the transpose moves bits.
    let g = gpu();
    let mut rng = Rng(19);
    let (batch, rows, cols) = (3usize, 37usize, 45usize);
    let n = batch * rows * cols;
    let xf = rng.vec_f32(n, 3.0);
    let dxf = g.upload(&xf).unwrap();
    let xb = poisoned::<bf16>(&g, n);
    cast::cast_f32_to_bf16(&g, Ptr::of(&xb), Ptr::of(&dxf), n).unwrap();
    let hb = g.download(&xb).unwrap();
    assert_eq!(
        bits(&hb),
        bits(&xf.iter().map(|&v| bf16::from_f32(v)).collect::<Vec<_>>()),
        "cast_f32_to_bf16"
    );
    let back = poisoned::<f32>(&g, n);
    cast::cast_bf16_to_f32(&g, Ptr::of(&back), Ptr::of(&xb), n).unwrap();
    assert_eq!(g.download(&back).unwrap(), f32s(&hb), "cast_bf16_to_f32");
    let t = poisoned::<bf16>(&g, n);
    cast::transpose_bf16(&g, Ptr::of(&t), Ptr::of(&xb), batch, rows, cols).unwrap();
    let ht = g.download(&t).unwrap();
    for z in 0..batch {
        for r in 0..rows {
            for c in 0..cols {
                assert_eq!(
                    ht[z * rows * cols + c * rows + r].to_bits(),
                    hb[z * rows * cols + r * cols + c].to_bits(),
                    "transpose at ({z},{r},{c})"
                );
            }
        }
    }
    let e = cast::transpose_bf16(&g, Ptr::of(&xb), Ptr::of(&xb), batch, rows, cols)
        .unwrap_err()
        .to_string();
    assert!(e.contains("overlaps"), "{e}");
}
