//! GPU tests (feature `cuda`, need a GPU) of the causal attention launchers
//! (gpt::cuda::kernels::attention, ptx/kernels/attention.cu) against the CPU backend's ops
//! (`gpt::cpu::ops::{attention_forward, attention_backward}`) on the same bf16-rounded inputs.
//!
//! NOT YET RUN ON A GPU: written and compiled in a session without one. Run on a GPU host with
//! `cargo test --release -p tests --features cuda --test gpu_attention` (MXGPT_CUDA_SYNC=1 to
//! pin an asynchronous fault on the launching kernel).
//!
//! Shapes (b, t, c, nh) cover every supported head size (HS = c / nh in 16, 32, 64, 96, 128),
//! T = 1, T not a multiple of the 16-row block or the 32-column tile, and several batches and
//! heads. q and k are drawn from [-2.5, 2.5) so the scaled scores spread over several units and
//! the softmax is far from uniform (the online rescaling matters); v and dout from [-1, 1).
//!
//! Every output is poisoned with 0xFF bytes (NaN) first, and comparisons are written as
//! `!(err <= tol)` so NaN never passes. Tolerances are stated per test.
use tests::gpu::*;

use gpt::cpu::ops;
use gpt::cuda::kernels::attention;
use gpt::cuda::kernels::Ptr;
use runtime::cuda::half::bf16;
use runtime::cuda::{DeviceBuffer, Gpu};

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, &x| m.max(x.abs()))
}

/// (b, t, c, nh): the brief's five (HS 16, 16, 64, 64, 96) plus HS 32 and HS 128, so every
/// instantiated kernel runs. T = 1; T = 17, 45, 70, 130, 200 are not multiples of 16 or 32.
const SHAPES: [(usize, usize, usize, usize); 7] = [
    (1, 1, 16, 1),
    (2, 17, 64, 4),
    (1, 130, 128, 2),
    (2, 64, 768, 12),
    (1, 200, 384, 4),
    (1, 45, 128, 4),
    (2, 70, 256, 2),
];

/// qkv [b, t, 3c] in bf16: q and k in [-2.5, 2.5), v in [-1, 1).
fn qkv_inputs(rng: &mut Rng, b: usize, t: usize, c: usize) -> Vec<bf16> {
    let mut x = Vec::with_capacity(b * t * 3 * c);
    for _ in 0..b * t {
        x.extend(rng.vec_bf16(2 * c, 2.5));
        x.extend(rng.vec_bf16(c, 1.0));
    }
    x
}

/// Runs the GPU forward into fresh poisoned buffers; returns (out as f32, lse, out as bf16).
fn gpu_forward(
    g: &Gpu,
    dqkv: &DeviceBuffer<bf16>,
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) -> (Vec<f32>, Vec<f32>, Vec<bf16>) {
    let out = poisoned::<bf16>(g, b * t * c);
    let lse = poisoned::<f32>(g, b * nh * t);
    attention::attention_forward(g, Ptr::of(&out), Ptr::of(&lse), Ptr::of(dqkv), b, t, c, nh)
        .unwrap();
    let out_h = g.download(&out).unwrap();
    (f32s(&out_h), g.download(&lse).unwrap(), out_h)
}

/// Forward vs `ops::attention_forward` on the same bf16 inputs.
///
/// out: the GPU rounds its f32 result to bf16 once (RNE: relative error <= 2^-8 = 3.9e-3), so
/// rel 4e-3. Before that rounding the two f32 computations differ by summation order (dot
/// products over HS, the softmax sum and the P V sum over up to 200 keys, online rescaling) and
/// by the two exp implementations (both within 2 ulp): about 1e-6 of the magnitude of the
/// terms, which is at most max|v| = 1; abs 1e-4 covers that with a wide margin while a
/// missing or extra key (a weight of ~1/T >= 1/200 on a v of size ~0.5) is far outside it.
/// lse: f32 on both sides and never rounded to bf16, so tighter: |lse| <= ~10 here and the
/// differences are summation order in the scores (~1e-6 absolute) and in the softmax sum
/// (relative ~T * 2^-24 worst case, i.e. ~1.2e-5 absolute after the log): abs 3e-5 + rel 1e-5.
/// Also: a second run gives bitwise identical out and lse (the kernel is deterministic).
#[test]
fn attention_forward_matches_cpu() {
    let g = gpu();
    let mut rng = Rng(0xA77E);
    for (b, t, c, nh) in SHAPES {
        let qkv = qkv_inputs(&mut rng, b, t, c);
        let dqkv = g.upload(&qkv).unwrap();
        let (out, lse, out_bits) = gpu_forward(&g, &dqkv, b, t, c, nh);
        let (mut wo, mut wl) = (vec![0f32; b * t * c], vec![0f32; b * nh * t]);
        ops::attention_forward(&mut wo, &mut wl, &f32s(&qkv), b, t, c, nh);
        let name = format!("attention_forward b={b} t={t} c={c} nh={nh}");
        assert_close(&format!("{name} out"), &out, &f64s(&wo), 4e-3, 1e-4);
        assert_close(&format!("{name} lse"), &lse, &f64s(&wl), 1e-5, 3e-5);
        let (_, lse2, out_bits2) = gpu_forward(&g, &dqkv, b, t, c, nh);
        assert_eq!(
            bits(&out_bits),
            bits(&out_bits2),
            "{name}: out not deterministic"
        );
        let lb: Vec<u32> = lse.iter().map(|x| x.to_bits()).collect();
        let lb2: Vec<u32> = lse2.iter().map(|x| x.to_bits()).collect();
        assert_eq!(lb, lb2, "{name}: lse not deterministic");
    }
}

/// Runs the GPU backward into a fresh poisoned dqkv (and poisoned scratch); returns dqkv.
#[allow(clippy::too_many_arguments)]
fn gpu_backward(
    g: &Gpu,
    dout: &DeviceBuffer<bf16>,
    qkv: &DeviceBuffer<bf16>,
    out: &DeviceBuffer<bf16>,
    lse: &DeviceBuffer<f32>,
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) -> Vec<bf16> {
    let dqkv = poisoned::<bf16>(g, b * t * 3 * c);
    let scratch = poisoned::<f32>(g, attention::attention_backward_scratch_len(b, t, c, nh));
    attention::attention_backward(
        g,
        Ptr::of(&dqkv),
        Ptr::of(dout),
        Ptr::of(qkv),
        Ptr::of(out),
        Ptr::of(lse),
        Ptr::of(&scratch),
        b,
        t,
        c,
        nh,
    )
    .unwrap();
    g.download(&dqkv).unwrap()
}

/// Backward vs `ops::attention_backward` on the same inputs: qkv and dout random bf16, out and
/// lse from the CPU forward (out rounded to bf16, as the GPU stores it), so the backward is
/// tested on its own. dq, dk and dv are compared separately.
///
/// Tolerance per element: rel 4e-3 (the one bf16 rounding of each output, <= 2^-8) plus
/// abs 1e-4 * max|want| over that third of dqkv. Before rounding the GPU and CPU differ only
/// by f32 summation order (the score and dP dot products, D = dout . out, the sums over up to
/// 200 keys or queries) and by exp within 2 ulp: ~1e-6 relative to the terms, whose size is
/// bounded by a small multiple of max|want| (the probabilities of a row sum to 1), so 1e-4 of
/// the max leaves a wide margin; a wrongly masked or missing term (weight ~1/T >= 1/200) is
/// about 10x larger than it. The dP - D cancellation can make single elements small, which is
/// why the absolute part is tied to the tensor's scale rather than the element's.
/// Also: a second run gives bitwise identical dqkv (no atomics).
#[test]
fn attention_backward_matches_cpu() {
    let g = gpu();
    let mut rng = Rng(0xBAC4);
    for (b, t, c, nh) in SHAPES {
        let qkv = qkv_inputs(&mut rng, b, t, c);
        let dout = rng.vec_bf16(b * t * c, 1.0);
        let qkv_f = f32s(&qkv);
        let (mut wo, mut wl) = (vec![0f32; b * t * c], vec![0f32; b * nh * t]);
        ops::attention_forward(&mut wo, &mut wl, &qkv_f, b, t, c, nh);
        let out: Vec<bf16> = wo.iter().map(|&x| bf16::from_f32(x)).collect();

        let d_qkv = g.upload(&qkv).unwrap();
        let d_dout = g.upload(&dout).unwrap();
        let d_out = g.upload(&out).unwrap();
        let d_lse = g.upload(&wl).unwrap();
        let got = gpu_backward(&g, &d_dout, &d_qkv, &d_out, &d_lse, b, t, c, nh);

        let mut want = vec![0f32; b * t * 3 * c];
        ops::attention_backward(
            &mut want,
            &f32s(&dout),
            &qkv_f,
            &f32s(&out),
            &wl,
            b,
            t,
            c,
            nh,
        );

        let name = format!("attention_backward b={b} t={t} c={c} nh={nh}");
        let got_f = f32s(&got);
        for (part, pname) in ["dq", "dk", "dv"].iter().enumerate() {
            // Gather this third of every token's row: [b * t, c].
            let pick = |v: &[f32]| -> Vec<f32> {
                (0..b * t)
                    .flat_map(|r| v[r * 3 * c + part * c..][..c].to_vec())
                    .collect()
            };
            let (gp, wp) = (pick(&got_f), f64s(&pick(&want)));
            let scale = max_abs(&wp);
            assert_close(&format!("{name} {pname}"), &gp, &wp, 4e-3, 1e-4 * scale);
        }
        let again = gpu_backward(&g, &d_dout, &d_qkv, &d_out, &d_lse, b, t, c, nh);
        assert_eq!(bits(&got), bits(&again), "{name}: dqkv not deterministic");
    }
}

/// The launchers refuse what the kernels cannot do, with errors that say why: a head size
/// without a kernel (naming HS and the supported set), c not a multiple of nh, dqkv aliasing
/// qkv, a short operand.
#[test]
fn attention_launchers_reject_bad_calls() {
    let g = gpu();
    let (b, t) = (1usize, 8usize);
    // HS = 80: no kernel.
    let (c, nh) = (80usize, 1usize);
    let qkv = g.alloc::<bf16>(b * t * 3 * c).unwrap();
    let out = g.alloc::<bf16>(b * t * c).unwrap();
    let lse = g.alloc::<f32>(b * nh * t).unwrap();
    let e =
        attention::attention_forward(&g, Ptr::of(&out), Ptr::of(&lse), Ptr::of(&qkv), b, t, c, nh)
            .unwrap_err()
            .to_string();
    assert!(
        e.contains("80") && e.contains("[16, 32, 64, 96, 128]"),
        "{e}"
    );
    let dqkv = g.alloc::<bf16>(b * t * 3 * c).unwrap();
    let scratch = g.alloc::<f32>(b * nh * t).unwrap();
    let e = attention::attention_backward(
        &g,
        Ptr::of(&dqkv),
        Ptr::of(&out),
        Ptr::of(&qkv),
        Ptr::of(&out),
        Ptr::of(&lse),
        Ptr::of(&scratch),
        b,
        t,
        c,
        nh,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("80") && e.contains("[16, 32, 64, 96, 128]"),
        "{e}"
    );
    // c = 80, nh = 3: not a multiple.
    let e =
        attention::attention_forward(&g, Ptr::of(&out), Ptr::of(&lse), Ptr::of(&qkv), b, t, 80, 3)
            .unwrap_err()
            .to_string();
    assert!(e.contains("not a multiple"), "{e}");
    // HS = 16 (c = 80, nh = 5) is supported: in-place dqkv = qkv is refused.
    let nh = 5;
    let lse5 = g.alloc::<f32>(b * nh * t).unwrap();
    let scratch5 = g.alloc::<f32>(b * nh * t).unwrap();
    let e = attention::attention_backward(
        &g,
        Ptr::of(&qkv),
        Ptr::of(&out),
        Ptr::of(&qkv),
        Ptr::of(&out),
        Ptr::of(&lse5),
        Ptr::of(&scratch5),
        b,
        t,
        c,
        nh,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("overlaps"), "{e}");
    // A short lse.
    let e =
        attention::attention_forward(&g, Ptr::of(&out), Ptr::of(&lse), Ptr::of(&qkv), b, t, c, nh)
            .unwrap_err()
            .to_string();
    assert!(e.contains("lse"), "{e}");
}
