//! GPU kernel tests (feature `cuda`, need a GPU): each kernel of ptx/kernels against an
//! independent CPU reference on fresh pseudo-random inputs, outputs poisoned with NaN first
//! (0xFF bytes), at sizes that are not multiples of the block or tile.
//!
//! NOT YET RUN ON A GPU: written and compiled in a session without one. Run on a GPU host with
//! `cargo test --release -p tests --features cuda --test gpu_kernels` (MXGPT_CUDA_SYNC=1 to
//! pin asynchronous faults on the launching kernel; compute-sanitizer works on the test binary).
//!
//! Tolerances: casts, transpose, encoder (same f32 operations in the same order, then
//! round-to-nearest bf16) must match bit for bit. GELU: one bf16 rounding of the output
//! (2^-8 relative) plus f32 tanh error, so 1e-2 relative + 1e-3 absolute against an f64
//! reference. AdamW: master/m/v 1e-5 relative (nvcc may fuse multiply-adds); bf16 params exactly
//! the stochastic rounding of the GPU's own master weights. Norms: 1e-5 relative to f64.
//! NaN never passes (comparisons are written as `!(err <= tol)`). The second half goes through
//! the launchers of gpt::cuda::kernels (what training uses): the encoder's host-built token
//! index, in-place GELU backward, AdamW (tested only this way), bf16 clipping, the batched
//! transpose.
use tests::gpu::*;

use gpt::cpu::ops;
use gpt::cuda::kernels::{adamw, cast, encoder, gelu, global_norm, Ptr};
use runtime::cuda::half::bf16;
use runtime::cuda::ptx::host::{bf16_bits_stochastic, sr_hash};
use runtime::cuda::LaunchConfig;

fn assert_close(what: &str, got: &[f32], want: &[f64], rel: f64, abs: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        let tol = rel * w.abs() + abs;
        assert!(
            err <= tol,
            "{what}[{i}]: got {g}, want {w} (err {err:.3e} > tol {tol:.3e})"
        );
    }
}

#[test]
fn cast_both_ways_exact() {
    let g = gpu();
    let f2b = g.kernel("cast", "cast_f32_to_bf16").unwrap();
    let b2f = g.kernel("cast", "cast_bf16_to_f32").unwrap();
    let mut rng = Rng(1);
    for n in [1usize, 255, 4099] {
        let x = rng.vec_f32(n, 3.0);
        let dx = g.upload(&x).unwrap();
        let dy = poisoned::<bf16>(&g, n);
        unsafe {
            g.launch(&f2b, LaunchConfig::linear(n, 256), &[&dy, &dx, &n])
                .unwrap()
        };
        let y = g.download(&dy).unwrap();
        let want: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect(); // RNE
        assert_eq!(bits(&y), bits(&want), "cast_f32_to_bf16 n={n}");
        let dz = poisoned::<f32>(&g, n);
        unsafe {
            g.launch(&b2f, LaunchConfig::linear(n, 256), &[&dz, &dy, &n])
                .unwrap()
        };
        let z = g.download(&dz).unwrap();
        let want: Vec<f32> = want.iter().map(|v| v.to_f32()).collect();
        assert_eq!(z, want, "cast_bf16_to_f32 n={n}");
    }
}

#[test]
fn transpose_exact_on_ragged_shapes() {
    let g = gpu();
    let k = g.kernel("cast", "transpose_bf16").unwrap();
    let mut rng = Rng(2);
    for (batch, rows, cols) in [
        (1usize, 1usize, 1usize),
        (3, 37, 45),
        (2, 64, 32),
        (1, 33, 1000),
    ] {
        let x = rng.vec_bf16(batch * rows * cols, 1.0);
        let dx = g.upload(&x).unwrap();
        let dy = poisoned::<bf16>(&g, x.len());
        let cfg = LaunchConfig {
            grid: (
                cols.div_ceil(32) as u32,
                rows.div_ceil(32) as u32,
                batch as u32,
            ),
            block: (32, 8, 1),
            smem_bytes: 0,
        };
        let (r, c) = (rows as i32, cols as i32);
        unsafe { g.launch(&k, cfg, &[&dy, &dx, &r, &c]).unwrap() };
        let y = g.download(&dy).unwrap();
        for z in 0..batch {
            for i in 0..rows {
                for j in 0..cols {
                    let got = y[z * rows * cols + j * rows + i].to_bits();
                    let want = x[z * rows * cols + i * cols + j].to_bits();
                    assert_eq!(
                        got, want,
                        "transpose {batch}x{rows}x{cols} at ({z},{i},{j})"
                    );
                }
            }
        }
    }
}

#[test]
fn gelu_forward_backward_match_f64() {
    let g = gpu();
    let fwd = g.kernel("gelu", "gelu_forward").unwrap();
    let bwd = g.kernel("gelu", "gelu_backward").unwrap();
    let s = (2.0f64 / std::f64::consts::PI).sqrt();
    let mut rng = Rng(3);
    for n in [1usize, 1000, 3 * 1024 + 7] {
        let x = rng.vec_bf16(n, 5.0);
        let dy = rng.vec_bf16(n, 1.0);
        let (dxin, ddy) = (g.upload(&x).unwrap(), g.upload(&dy).unwrap());
        let dout = poisoned::<bf16>(&g, n);
        let ddx = poisoned::<bf16>(&g, n);
        unsafe {
            g.launch(&fwd, LaunchConfig::linear(n, 256), &[&dout, &dxin, &n])
                .unwrap();
            g.launch(&bwd, LaunchConfig::linear(n, 256), &[&ddx, &dxin, &ddy, &n])
                .unwrap();
        }
        let (mut want_y, mut want_dx) = (vec![], vec![]);
        for i in 0..n {
            let v = x[i].to_f64();
            let th = (s * (v + 0.044715 * v * v * v)).tanh();
            want_y.push(0.5 * v * (1.0 + th));
            let d =
                0.5 * (1.0 + th) + 0.5 * v * (1.0 - th * th) * s * (1.0 + 3.0 * 0.044715 * v * v);
            want_dx.push(dy[i].to_f64() * d);
        }
        let got_y: Vec<f32> = g
            .download(&dout)
            .unwrap()
            .iter()
            .map(|v| v.to_f32())
            .collect();
        let got_dx: Vec<f32> = g
            .download(&ddx)
            .unwrap()
            .iter()
            .map(|v| v.to_f32())
            .collect();
        assert_close(&format!("gelu_forward n={n}"), &got_y, &want_y, 1e-2, 1e-3);
        assert_close(
            &format!("gelu_backward n={n}"),
            &got_dx,
            &want_dx,
            1e-2,
            1e-3,
        );
    }
}

#[test]
fn encoder_forward_and_deterministic_backward() {
    let g = gpu();
    let fwd = g.kernel("encoder", "encoder_forward").unwrap();
    let bwd_wpe = g.kernel("encoder", "encoder_backward_wpe").unwrap();
    let bwd_wte = g.kernel("encoder", "encoder_backward_wte").unwrap();
    let (b, t, c, v, max_t) = (3usize, 17usize, 100usize, 50usize, 20usize);
    let mut rng = Rng(4);
    let tok: Vec<i32> = (0..b * t).map(|i| ((i * 7 + i / 5) % 13) as i32).collect(); // repeats
    let wte = rng.vec_bf16(v * c, 1.0);
    let wpe = rng.vec_bf16(max_t * c, 1.0);
    let dtok = g.upload(&tok).unwrap();
    let (dwte_in, dwpe_in) = (g.upload(&wte).unwrap(), g.upload(&wpe).unwrap());
    let out = poisoned::<bf16>(&g, b * t * c);
    let (bi, ti, ci) = (b as i32, t as i32, c as i32);
    unsafe {
        g.launch(
            &fwd,
            LaunchConfig::linear(b * t * c, 256),
            &[&out, &dtok, &dwte_in, &dwpe_in, &bi, &ti, &ci],
        )
        .unwrap()
    };
    let got = g.download(&out).unwrap();
    for bt in 0..b * t {
        for k in 0..c {
            let want = bf16::from_f32(
                wte[tok[bt] as usize * c + k].to_f32() + wpe[(bt % t) * c + k].to_f32(),
            );
            assert_eq!(
                got[bt * c + k].to_bits(),
                want.to_bits(),
                "encoder_forward at bt={bt} c={k}"
            );
        }
    }

    // Backward: CSR of positions by token, built as the CudaBackend would.
    let dout = rng.vec_bf16(b * t * c, 1.0);
    let mut uniq: Vec<i32> = tok.clone();
    uniq.sort();
    uniq.dedup();
    let mut starts = vec![0i32];
    let mut positions = vec![];
    for &u in &uniq {
        positions.extend((0..b * t).filter(|&p| tok[p] == u).map(|p| p as i32));
        starts.push(positions.len() as i32);
    }
    let grad0_wte = rng.vec_bf16(v * c, 0.1); // accumulate into existing gradients
    let grad0_wpe = rng.vec_bf16(max_t * c, 0.1);
    let run = || {
        let (gwte, gwpe) = (g.upload(&grad0_wte).unwrap(), g.upload(&grad0_wpe).unwrap());
        let ddout = g.upload(&dout).unwrap();
        // The index layout of encoder.cu: [nu, rows | uniq (cap) | starts (cap + 1) |
        // positions], here with two spare slots of capacity (poisoned) past nu.
        let nu = uniq.len() as i32;
        let cap = uniq.len() + 2;
        let mut layout = vec![nu, 0];
        layout.extend(&uniq);
        layout.extend([-7, -7]);
        layout.extend(&starts);
        layout.extend([-7, -7]);
        layout.extend(&positions);
        let didx = g.upload(&layout).unwrap();
        let capi = cap as i32;
        unsafe {
            g.launch(
                &bwd_wpe,
                LaunchConfig::linear(t * c, 256),
                &[&gwpe, &ddout, &bi, &ti, &ci],
            )
            .unwrap();
            // Fewer block rows than tokens: rows stride over them.
            let cfg = LaunchConfig {
                grid: (c.div_ceil(256) as u32, 3, 1),
                block: (256, 1, 1),
                smem_bytes: 0,
            };
            g.launch(&bwd_wte, cfg, &[&gwte, &ddout, &didx, &capi, &ci])
                .unwrap();
        }
        (
            bits(&g.download(&gwte).unwrap()),
            bits(&g.download(&gwpe).unwrap()),
        )
    };
    let (got_wte, got_wpe) = run();
    let mut want_wte = bits(&grad0_wte);
    for (ui, &u) in uniq.iter().enumerate() {
        for k in 0..c {
            let mut acc = 0f32;
            for &p in &positions[starts[ui] as usize..starts[ui + 1] as usize] {
                acc += dout[p as usize * c + k].to_f32();
            }
            let dst = u as usize * c + k;
            want_wte[dst] = bf16::from_f32(grad0_wte[dst].to_f32() + acc).to_bits();
        }
    }
    let mut want_wpe = bits(&grad0_wpe);
    for i in 0..t * c {
        let acc = (0..b).fold(0f32, |a, bb| a + dout[bb * t * c + i].to_f32());
        want_wpe[i] = bf16::from_f32(grad0_wpe[i].to_f32() + acc).to_bits();
    }
    assert_eq!(got_wte, want_wte, "encoder_backward_wte");
    assert_eq!(got_wpe, want_wpe, "encoder_backward_wpe");
    assert_eq!(
        run(),
        (got_wte, got_wpe),
        "encoder backward must be bitwise reproducible"
    );
}

#[test]
fn global_norm_and_clip() {
    let g = gpu();
    let sq_bf16 = g.kernel("global_norm", "global_norm_squares_bf16").unwrap();
    let sq_f32 = g.kernel("global_norm", "global_norm_squares_f32").unwrap();
    let finish = g.kernel("global_norm", "global_norm_finish").unwrap();
    let clip = g.kernel("global_norm", "clip_by_norm_f32").unwrap();
    const BLOCKS: usize = 1024; // GLOBAL_NORM_BLOCKS in global_norm.cu
    let mut rng = Rng(6);
    for n in [1usize, 777, 1 << 20 | 3] {
        let xb = rng.vec_bf16(n, 1.0);
        let xf = rng.vec_f32(n, 1.0);
        let want_b = xb.iter().map(|v| v.to_f64().powi(2)).sum::<f64>().sqrt();
        let want_f = xf.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
        let partials = poisoned::<f32>(&g, 2 * BLOCKS);
        let norm = poisoned::<f32>(&g, 1);
        let (dxb, dxf) = (g.upload(&xb).unwrap(), g.upload(&xf).unwrap());
        let norm_of = |kernel, x: &dyn runtime::cuda::KernelArg| {
            let cfg = LaunchConfig {
                grid: (BLOCKS as u32, 1, 1),
                block: (256, 1, 1),
                smem_bytes: 0,
            };
            let fin = LaunchConfig {
                grid: (1, 1, 1),
                block: (1024, 1, 1),
                smem_bytes: 0,
            };
            let np = BLOCKS as i32;
            unsafe {
                g.launch(kernel, cfg, &[&partials, x, &n]).unwrap();
                g.launch(&finish, fin, &[&norm, &partials, &np]).unwrap();
            }
            g.download(&norm).unwrap()[0]
        };
        let got_b = norm_of(&sq_bf16, &dxb);
        let got_f = norm_of(&sq_f32, &dxf);
        assert_close(&format!("norm bf16 n={n}"), &[got_b], &[want_b], 1e-5, 0.0);
        assert_close(&format!("norm f32 n={n}"), &[got_f], &[want_f], 1e-5, 0.0);
        assert_eq!(
            norm_of(&sq_f32, &dxf).to_bits(),
            got_f.to_bits(),
            "norm must be reproducible"
        );

        // Clip the f32 buffer to half its norm (norm[0] currently holds got_f).
        let max_norm = (want_f / 2.0) as f32;
        unsafe {
            g.launch(
                &clip,
                LaunchConfig::linear(n, 256),
                &[&dxf, &n, &norm, &max_norm],
            )
            .unwrap()
        };
        let clipped = g.download(&dxf).unwrap();
        let s = max_norm as f64 / (got_f as f64 + 1e-6);
        let want: Vec<f64> = xf.iter().map(|&v| v as f64 * s).collect();
        assert_close(&format!("clip n={n}"), &clipped, &want, 1e-6, 1e-9);
    }
}

#[test]
fn launch_errors_name_the_kernel_and_geometry() {
    let g = gpu();
    let k = g.kernel("gelu", "gelu_forward").unwrap();
    let cfg = LaunchConfig {
        grid: (1, 1, 1),
        block: (2048, 1, 1),
        smem_bytes: 0,
    };
    let n = 0usize;
    let buf = g.alloc::<bf16>(1).unwrap();
    let e = unsafe { g.launch(&k, cfg, &[&buf, &buf, &n]) }
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("gelu::gelu_forward") && e.contains("block (2048, 1, 1)"),
        "{e}"
    );
    let e = g.kernel("gelu", "no_such_kernel").unwrap_err().to_string();
    assert!(
        e.contains("no_such_kernel") && e.contains("CUDA_ERROR_NOT_FOUND"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------------
// The same kernels through their launchers (gpt::cuda::kernels), the code training uses:
// what the launcher itself adds. AdamW is tested only this way.

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
        // Past 32 bits: a truncated or dropped base shows in the rounding.
        index_base: 0x1_2345_6789,
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
            bf16_bits_stochastic(gmaster[i], sr_hash(hp.seed, hp.index_base + i as u64)),
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

// ---------------------------------------------------------------------------------------------
// The vectorized memory-bound kernels (MemImpl::Vectorized: 16-byte accesses, one multi-tensor
// AdamW launch) against the CPU reference and, where the per-element arithmetic is the same
// code, bit for bit against their reference kernels (both inline the same device function, so
// nvcc contracts it the same way in both). Outputs poisoned first; sizes with 1..7-element
// tails; misaligned operands.

use gpt::config::ModelConfig;
use gpt::cuda::kernels::membound::MemImpl;
use gpt::layout::ParamLayout;
use runtime::cuda::{Gpu, Schedule};

/// Sizes around the 8-element vector and the 256-thread block: tails of 1..7 elements.
const VEC_SIZES: [usize; 7] = [1, 7, 8, 9, 1000, 2048 + 7, 3 * 1024 + 7];

#[test]
fn vec_gelu_matches_reference_bitwise_and_cpu() {
    // GELU: the vec kernels call the same gelu_value / gelu_grad as the reference kernels, so
    // the bits must match; against the CPU op the tolerances of gelu_backward_in_place_through_
    // launcher (rel 1e-2 + abs 1e-3). In place (out == inp, dinp == dout) as training runs it.
    let g = gpu();
    let mut rng = Rng(31);
    for n in VEC_SIZES {
        let pre = rng.vec_bf16(n, 5.0);
        let d = rng.vec_bf16(n, 1.0);
        let dpre = g.upload(&pre).unwrap();
        let mut outs = vec![];
        for imp in [MemImpl::Reference, MemImpl::Vectorized] {
            let out = poisoned::<bf16>(&g, n);
            gelu::gelu_forward_with(&g, imp, Ptr::of(&out), Ptr::of(&dpre), n).unwrap();
            let dd = g.upload(&d).unwrap();
            gelu::gelu_backward_inplace_with(&g, imp, Ptr::of(&dd), Ptr::of(&dpre), n).unwrap();
            let inplace = g.upload(&pre).unwrap();
            gelu::gelu_forward_with(&g, imp, Ptr::of(&inplace), Ptr::of(&inplace), n).unwrap();
            outs.push((
                g.download(&out).unwrap(),
                g.download(&dd).unwrap(),
                g.download(&inplace).unwrap(),
            ));
        }
        let (r, v) = (&outs[0], &outs[1]);
        assert_eq!(
            bits(&v.0),
            bits(&r.0),
            "gelu_forward_vec n={n} vs reference"
        );
        assert_eq!(
            bits(&v.1),
            bits(&r.1),
            "gelu_backward_vec n={n} vs reference"
        );
        assert_eq!(bits(&v.2), bits(&v.0), "gelu_forward_vec in place n={n}");
        let mut want = vec![0f32; n];
        ops::gelu_forward(&mut want, &f32s(&pre));
        assert_close(
            &format!("gelu_forward_vec n={n}"),
            &f32s(&v.0),
            &f64s(&want),
            1e-2,
            1e-3,
        );
        let mut want = f32s(&d);
        ops::gelu_backward_inplace(&mut want, &f32s(&pre));
        assert_close(
            &format!("gelu_backward_vec n={n}"),
            &f32s(&v.1),
            &f64s(&want),
            1e-2,
            1e-3,
        );
    }
}

#[test]
fn vec_casts_are_exact() {
    // RNE to bf16 (half's from_f32 is RNE too) and the exact widening, bit for bit, including
    // infinities, signed zeros, subnormals and rounding ties (NaN payloads are left out: the
    // kernels give the canonical 0x7FFF, half keeps the payload).
    let g = gpu();
    let mut rng = Rng(32);
    for n in VEC_SIZES {
        let mut x = rng.vec_f32(n, 3.0);
        let specials = [
            f32::INFINITY,
            f32::NEG_INFINITY,
            -0.0,
            1e-40,
            f32::from_bits(0x3F80_8000), // a tie: 1 + 2^-8, rounds to even (1.0)
            f32::from_bits(0x3F81_8000), // a tie that rounds up
            f32::MAX,
        ];
        for (i, s) in specials.iter().enumerate().take(n) {
            x[(i * 131) % n] = *s;
        }
        let dx = g.upload(&x).unwrap();
        let xb = poisoned::<bf16>(&g, n);
        cast::cast_f32_to_bf16_with(&g, MemImpl::Vectorized, Ptr::of(&xb), Ptr::of(&dx), n)
            .unwrap();
        let hb = g.download(&xb).unwrap();
        let want: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
        assert_eq!(bits(&hb), bits(&want), "cast_f32_to_bf16_vec n={n}");
        let back = poisoned::<f32>(&g, n);
        cast::cast_bf16_to_f32_with(&g, MemImpl::Vectorized, Ptr::of(&back), Ptr::of(&xb), n)
            .unwrap();
        let got: Vec<u32> = g
            .download(&back)
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect();
        let want: Vec<u32> = hb.iter().map(|v| v.to_f32().to_bits()).collect();
        assert_eq!(got, want, "cast_bf16_to_f32_vec n={n}");
    }
}

#[test]
fn vec_kernels_check_alignment_and_defaults_fall_back() {
    // One element off 16-byte alignment: asking for the vec kernel is a host-side error naming
    // the operand, the default launcher runs the reference instead (right values), and on the
    // harness a raw launch of the vec kernel with a misaligned pointer stops with the harness's
    // alignment error (x86 itself would not fault). Eight elements off (16 bytes) is aligned.
    let g = gpu();
    let mut rng = Rng(33);
    let n = 1000;
    let pre = rng.vec_bf16(n + 8, 5.0);
    let dpre = g.upload(&pre).unwrap();
    let out = poisoned::<bf16>(&g, n + 8);
    let e = gelu::gelu_forward_with(
        &g,
        MemImpl::Vectorized,
        Ptr::of(&out).slice(1, n),
        Ptr::of(&dpre).slice(1, n),
        n,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("out") && e.contains("16-byte aligned"), "{e}");
    for off in [1usize, 8] {
        gelu::gelu_forward(
            &g,
            Ptr::of(&out).slice(off, n),
            Ptr::of(&dpre).slice(off, n),
            n,
        )
        .unwrap();
        let mut want = vec![0f32; n];
        ops::gelu_forward(&mut want, &f32s(&pre[off..off + n]));
        assert_close(
            &format!("gelu_forward default, offset {off}"),
            &down_f32(&g, &out)[off..off + n],
            &f64s(&want),
            1e-2,
            1e-3,
        );
    }
    let x = g.upload(&rng.vec_f32(n + 1, 1.0)).unwrap();
    let e = cast::cast_f32_to_bf16_with(
        &g,
        MemImpl::Vectorized,
        Ptr::of(&out),
        Ptr::of(&x).slice(1, n),
        n,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("inp") && e.contains("16-byte aligned"), "{e}");
    let norm = poisoned::<f32>(&g, 1);
    let scratch = poisoned::<f32>(&g, global_norm::grad_norm_scratch_len(n));
    let e = global_norm::grad_norm_with(
        &g,
        MemImpl::Vectorized,
        Ptr::of(&norm),
        Ptr::of(&dpre).slice(1, n),
        Ptr::of(&scratch),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("grads") && e.contains("16-byte aligned"), "{e}");
    if !on_gpu(&g) {
        let k = g.kernel("gelu", "gelu_forward_vec").unwrap();
        let (o, i) = (Ptr::of(&out).slice(1, n), Ptr::of(&dpre).slice(1, n));
        let e = unsafe { g.launch(&k, LaunchConfig::linear(n.div_ceil(8), 256), &[&o, &i, &n]) }
            .unwrap_err()
            .to_string();
        assert!(e.contains("not 16-byte aligned"), "{e}");
    }
}

#[test]
fn vec_encoder_matches_cpu_bitwise() {
    // The vec kernels do the reference's f32 operations in the reference's order (forward: one
    // add; wte: positions ascending; wpe: b ascending; then one add to the old gradient), so the
    // host-built expectations below must match bit for bit. Second case: more distinct tokens
    // than grid.y allows, so the wte launch is chunked; c = 8 is a single vector per row.
    let g = gpu();
    let mut rng = Rng(34);
    for (b, t, c, vocab, repeats) in [
        (3usize, 17usize, 96usize, 50usize, true),
        (2, 21, 264, 40, true),
        (2, 33_000, 8, 70_000, false),
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
        encoder::encoder_forward_with(
            &g,
            MemImpl::Vectorized,
            Ptr::of(&out),
            Ptr::of(&dtok),
            Ptr::of(&dwte),
            Ptr::of(&dwpe),
            b,
            t,
            c,
        )
        .unwrap();
        let want: Vec<u16> = (0..bt * c)
            .map(|i| {
                let (p, k) = (i / c, i % c);
                bf16::from_f32(
                    wte[tokens[p] as usize * c + k].to_f32() + wpe[(p % t) * c + k].to_f32(),
                )
                .to_bits()
            })
            .collect();
        assert_eq!(
            bits(&g.download(&out).unwrap()),
            want,
            "encoder_forward_vec b={b} t={t} c={c}"
        );

        let dout = rng.vec_bf16(bt * c, 1.0);
        let gwte0 = rng.vec_bf16(vocab * c, 0.1);
        let gwpe0 = rng.vec_bf16(t * c, 0.1);
        let ddout = g.upload(&dout).unwrap();
        let (gwte, gwpe) = (g.upload(&gwte0).unwrap(), g.upload(&gwpe0).unwrap());
        let index = encoder::EncoderIndex::build(&g, &tokens, vocab).unwrap();
        encoder::encoder_backward_indexed_with(
            &g,
            MemImpl::Vectorized,
            Ptr::of(&gwte),
            Ptr::of(&gwpe),
            Ptr::of(&ddout),
            &index,
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
            "encoder_backward_wte_vec b={b} t={t} c={c}"
        );
        assert_eq!(
            bits(&g.download(&gwpe).unwrap()),
            want_wpe,
            "encoder_backward_wpe_vec b={b} t={t} c={c}"
        );
    }
    // c % 8 != 0: the vec kernels refuse, the default runs the reference.
    let (o, w) = (g.alloc::<bf16>(12).unwrap(), g.alloc::<bf16>(12).unwrap());
    let tk = g.upload(&[0i32]).unwrap();
    let e = encoder::encoder_forward_with(
        &g,
        MemImpl::Vectorized,
        Ptr::of(&o),
        Ptr::of(&tk),
        Ptr::of(&w),
        Ptr::of(&w),
        1,
        1,
        12,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("c % 8"), "{e}");
}

#[test]
fn vec_grad_norm_matches_f64_and_is_deterministic() {
    // Norm vs f64: rel 1e-5 (f32 sums of <= 10.5M squares, ~40 per thread, then the fixed
    // trees). The largest n reaches the 4-vector unrolled loop (it needs more than 3 x 262144
    // vectors), its remainder loop and a 5-element tail. Reproducible bit for bit.
    let g = gpu();
    let mut rng = Rng(35);
    for n in [
        1usize,
        7,
        8,
        777,
        (1 << 20) | 3,
        8 * (5 * 262_144 + 1000) + 5,
    ] {
        let x = rng.vec_bf16(n, 1.0);
        let want = x.iter().map(|v| v.to_f64().powi(2)).sum::<f64>().sqrt();
        let dx = g.upload(&x).unwrap();
        let norm = poisoned::<f32>(&g, 1);
        let scratch = poisoned::<f32>(&g, global_norm::grad_norm_scratch_len(n));
        let run = || {
            global_norm::grad_norm_with(
                &g,
                MemImpl::Vectorized,
                Ptr::of(&norm),
                Ptr::of(&dx),
                Ptr::of(&scratch),
            )
            .unwrap();
            g.download(&norm).unwrap()[0]
        };
        let got = run();
        assert_close(&format!("grad_norm vec n={n}"), &[got], &[want], 1e-5, 0.0);
        assert_eq!(
            run().to_bits(),
            got.to_bits(),
            "grad_norm vec n={n} reproducible"
        );
    }
}

/// (params, master, grads, m, v) of a flat parameter buffer of `total` elements.
struct AdamState {
    params: Vec<bf16>,
    master: Vec<f32>,
    grads: Vec<bf16>,
    m: Vec<f32>,
    v: Vec<f32>,
}

impl AdamState {
    fn random(rng: &mut Rng, total: usize) -> AdamState {
        let master = rng.vec_f32(total, 1.0);
        AdamState {
            params: master.iter().map(|&x| bf16::from_f32(x)).collect(),
            master,
            grads: rng.vec_bf16(total, 0.1),
            m: rng.vec_f32(total, 0.01),
            v: rng.vec_f32(total, 0.01).iter().map(|x| x.abs()).collect(),
        }
    }
}

/// Runs `steps` AdamW steps over `ranges` on a fresh device copy of `s`, with the reference
/// kernel once per range (`None`: the backend's old per-tensor loop) or the launcher with the
/// implementation given; returns the five buffers' bits.
fn adamw_steps(
    g: &Gpu,
    s: &AdamState,
    ranges: &[adamw::AdamwRange],
    imp: Option<MemImpl>,
    steps: u32,
) -> Vec<Vec<u32>> {
    let (dp, dmaster, dg, dm, dv) = (
        g.upload(&s.params).unwrap(),
        g.upload(&s.master).unwrap(),
        g.upload(&s.grads).unwrap(),
        g.upload(&s.m).unwrap(),
        g.upload(&s.v).unwrap(),
    );
    for t in 1..=steps {
        let hp = adamw::AdamwArgs {
            lr: 3e-3,
            beta1: 0.85,
            beta2: 0.97,
            beta1_correction: 1.0 - 0.85f32.powi(t as i32),
            beta2_correction: 1.0 - 0.97f32.powi(t as i32),
            eps: 1e-6,
            weight_decay: 0.2,
            grad_scale: 0.7,
            seed: 1234 + t,
            index_base: 0,
        };
        let (p, ma, gr, m, v) = (
            Ptr::of(&dp),
            Ptr::of(&dmaster),
            Ptr::of(&dg),
            Ptr::of(&dm),
            Ptr::of(&dv),
        );
        match imp {
            None => {
                for r in ranges {
                    let a = adamw::AdamwArgs {
                        weight_decay: if r.decay { hp.weight_decay } else { 0.0 },
                        ..hp
                    };
                    adamw::adamw_update(g, p, ma, gr, m, v, r.offset, r.len, &a).unwrap();
                }
            }
            Some(imp) => {
                adamw::adamw_update_ranges_with(g, imp, p, ma, gr, m, v, ranges, &hp).unwrap()
            }
        }
    }
    let f = |b: &runtime::cuda::DeviceBuffer<f32>| -> Vec<u32> {
        g.download(b).unwrap().iter().map(|x| x.to_bits()).collect()
    };
    let h = |b: &runtime::cuda::DeviceBuffer<bf16>| -> Vec<u32> {
        bits(&g.download(b).unwrap())
            .into_iter()
            .map(u32::from)
            .collect()
    };
    vec![h(&dp), f(&dmaster), h(&dg), f(&dm), f(&dv)]
}

#[test]
fn multi_tensor_adamw_is_bitwise_the_per_tensor_update() {
    // 1. Every tensor of a small model's parameter layout (16 tensors, C = 12, so several tensor
    //    boundaries fall inside an 8-vector): one adamw_update_multi launch per step vs the
    //    backend's former loop of one adamw_update per tensor, two steps, all five buffers bit
    //    for bit (same per-element function, same stochastic-rounding index).
    // 2. 40 ranges (three launches of <= 16 merged ranges) starting at an odd offset, with gaps
    //    and random decay settings: same comparison; elements outside every range (the gaps,
    //    the head and the tail) must stay as they were, which the reference guarantees.
    let g = gpu();
    let mut rng = Rng(36);
    let mut cfg = ModelConfig::new(2, 12, 3, 10).unwrap();
    cfg.vocab = 45;
    cfg.padded_vocab = 50;
    let layout = ParamLayout::new(&cfg);
    let ranges: Vec<adamw::AdamwRange> = layout
        .tensors
        .iter()
        .map(|t| adamw::AdamwRange {
            offset: t.offset,
            len: t.len(),
            decay: t.weight_decay(),
        })
        .collect();
    let s = AdamState::random(&mut rng, layout.total);
    let want = adamw_steps(&g, &s, &ranges, None, 2);
    let got = adamw_steps(&g, &s, &ranges, Some(MemImpl::Vectorized), 2);
    let names = ["params", "master", "grads", "m", "v"];
    for (i, name) in names.iter().enumerate() {
        assert!(
            got[i] == want[i],
            "model layout: {name} differs from per-tensor AdamW"
        );
    }
    assert!(
        got[1] != adamw_steps(&g, &s, &ranges, None, 0)[1],
        "nothing was updated"
    );

    let total = 3200;
    let mut ranges = vec![];
    let mut at = 517;
    for _ in 0..40 {
        let len = 1 + rng.below(60);
        ranges.push(adamw::AdamwRange {
            offset: at,
            len,
            decay: rng.below(2) == 1,
        });
        at += len + rng.below(6);
    }
    assert!(at < total);
    let s = AdamState::random(&mut rng, total);
    let want = adamw_steps(&g, &s, &ranges, None, 1);
    let got = adamw_steps(&g, &s, &ranges, Some(MemImpl::Vectorized), 1);
    for (i, name) in names.iter().enumerate() {
        assert!(got[i] == want[i], "40 ranges with gaps: {name} differs");
    }
    let untouched = adamw_steps(&g, &s, &ranges, None, 0);
    let inside = |i: usize| ranges.iter().any(|r| i >= r.offset && i < r.offset + r.len);
    for i in (0..total).filter(|&i| !inside(i)) {
        assert_eq!(
            got[1][i], untouched[1][i],
            "master[{i}] outside the ranges changed"
        );
        assert_eq!(
            got[0][i], untouched[0][i],
            "params[{i}] outside the ranges changed"
        );
    }

    // Unsorted or overlapping ranges are errors; a misaligned buffer is an error for the vec
    // kernel, and the default launcher falls back to per-range launches (same bits).
    let (dp, dmaster, dg, dm, dv) = (
        g.upload(&s.params).unwrap(),
        g.upload(&s.master).unwrap(),
        g.upload(&s.grads).unwrap(),
        g.upload(&s.m).unwrap(),
        g.upload(&s.v).unwrap(),
    );
    let hp = adamw::AdamwArgs {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.95,
        beta1_correction: 0.1,
        beta2_correction: 0.05,
        eps: 1e-8,
        weight_decay: 0.1,
        grad_scale: 1.0,
        seed: 5,
        index_base: 0,
    };
    let r = |offset, len| adamw::AdamwRange {
        offset,
        len,
        decay: true,
    };
    let e = adamw::adamw_update_ranges(
        &g,
        Ptr::of(&dp),
        Ptr::of(&dmaster),
        Ptr::of(&dg),
        Ptr::of(&dm),
        Ptr::of(&dv),
        &[r(100, 50), r(120, 10)],
        &hp,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("sorted and disjoint"), "{e}");
    let e = adamw::adamw_update_ranges_with(
        &g,
        MemImpl::Vectorized,
        Ptr::of(&dp).slice(1, total - 1),
        Ptr::of(&dmaster).slice(1, total - 1),
        Ptr::of(&dg).slice(1, total - 1),
        Ptr::of(&dm).slice(1, total - 1),
        Ptr::of(&dv).slice(1, total - 1),
        &[r(0, 100)],
        &hp,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("params") && e.contains("16-byte aligned"), "{e}");
}

/// Every vectorized kernel of this file once, on fixed inputs, on a harness with schedule `s`:
/// the output bits.
fn vec_kernels(g: &Gpu) -> Vec<Vec<u32>> {
    let mut rng = Rng(37);
    let mut outs = vec![];
    let hb = |b: &runtime::cuda::DeviceBuffer<bf16>| -> Vec<u32> {
        bits(&g.download(b).unwrap())
            .into_iter()
            .map(u32::from)
            .collect()
    };
    let n = 2 * 1024 + 3;
    let pre = g.upload(&rng.vec_bf16(n, 4.0)).unwrap();
    let d = g.upload(&rng.vec_bf16(n, 1.0)).unwrap();
    let out = poisoned::<bf16>(g, n);
    gelu::gelu_forward_with(g, MemImpl::Vectorized, Ptr::of(&out), Ptr::of(&pre), n).unwrap();
    gelu::gelu_backward_inplace_with(g, MemImpl::Vectorized, Ptr::of(&d), Ptr::of(&pre), n)
        .unwrap();
    outs.push(hb(&out));
    outs.push(hb(&d));
    let f = g.upload(&rng.vec_f32(n, 3.0)).unwrap();
    cast::cast_f32_to_bf16_with(g, MemImpl::Vectorized, Ptr::of(&out), Ptr::of(&f), n).unwrap();
    outs.push(hb(&out));
    let (b, t, c, vocab) = (2usize, 9usize, 40usize, 11usize);
    let tokens: Vec<u32> = (0..b * t).map(|p| ((p * 5) % vocab) as u32).collect();
    let tok = g
        .upload(&tokens.iter().map(|&x| x as i32).collect::<Vec<_>>())
        .unwrap();
    let wte = g.upload(&rng.vec_bf16(vocab * c, 1.0)).unwrap();
    let wpe = g.upload(&rng.vec_bf16(t * c, 1.0)).unwrap();
    let enc = poisoned::<bf16>(g, b * t * c);
    encoder::encoder_forward_with(
        g,
        MemImpl::Vectorized,
        Ptr::of(&enc),
        Ptr::of(&tok),
        Ptr::of(&wte),
        Ptr::of(&wpe),
        b,
        t,
        c,
    )
    .unwrap();
    outs.push(hb(&enc));
    let index = encoder::EncoderIndex::build(g, &tokens, vocab).unwrap();
    encoder::encoder_backward_indexed_with(
        g,
        MemImpl::Vectorized,
        Ptr::of(&wte),
        Ptr::of(&wpe),
        Ptr::of(&enc),
        &index,
        b,
        t,
        c,
    )
    .unwrap();
    outs.push(hb(&wte));
    outs.push(hb(&wpe));
    let norm = poisoned::<f32>(g, 1);
    let scratch = poisoned::<f32>(g, global_norm::grad_norm_scratch_len(n));
    global_norm::grad_norm_with(
        g,
        MemImpl::Vectorized,
        Ptr::of(&norm),
        Ptr::of(&pre),
        Ptr::of(&scratch),
    )
    .unwrap();
    outs.push(vec![g.download(&norm).unwrap()[0].to_bits()]);
    let s = AdamState::random(&mut rng, 1000);
    let ranges = [
        adamw::AdamwRange {
            offset: 3,
            len: 500,
            decay: true,
        },
        adamw::AdamwRange {
            offset: 503,
            len: 490,
            decay: false,
        },
    ];
    outs.extend(adamw_steps(g, &s, &ranges, Some(MemImpl::Vectorized), 1));
    outs
}

#[test]
fn vec_kernels_are_bit_identical_under_every_schedule() {
    // Harness schedules (gpu_schedules.rs): in order, reverse, two random ones. The vec kernels
    // have no shared memory except the norm's block reduction; a schedule-dependent result
    // would be a race.
    let schedules = [
        Schedule::InOrder,
        Schedule::Reverse,
        Schedule::Random(1),
        Schedule::Random(2),
    ];
    let runs: Vec<_> = schedules
        .iter()
        .map(|&s| vec_kernels(&Gpu::harness(s)))
        .collect();
    let names = [
        "gelu_forward_vec",
        "gelu_backward_vec",
        "cast_f32_to_bf16_vec",
        "encoder_forward_vec",
        "encoder_backward_wte_vec",
        "encoder_backward_wpe_vec",
        "global_norm_squares_bf16_vec",
        "adamw params",
        "adamw master",
        "adamw grads",
        "adamw m",
        "adamw v",
    ];
    assert_eq!(runs[0].len(), names.len());
    for (s, r) in schedules.iter().zip(&runs).skip(1) {
        for (i, name) in names.iter().enumerate() {
            assert!(r[i] == runs[0][i], "{name} differs under {s:?}");
        }
    }
}
