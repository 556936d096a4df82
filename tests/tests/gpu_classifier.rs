//! GPU tests (feature `cuda`, need a GPU) of the fused classifier launcher
//! (gpt::cuda::kernels::classifier, ptx/kernels/classifier.cu) against the CPU backend's
//! `ops::classifier` on the same bf16-rounded logits.
//!
//! NOT YET RUN ON A GPU: written and compiled in a session without one. Run on a GPU host with
//! `cargo test --release -p tests --features cuda --test gpu_classifier`.
//!
//! Outputs are poisoned with 0xFF bytes (NaN) first; comparisons are written as `!(err <= tol)`
//! so NaN never passes.
//!
//! Tolerances. Loss: f32 on both sides. The GPU computes e^(x - M) as exp2f(x log2e - M log2e)
//! with M log2e rounded once per row (<= 0.5 ulp of |M log2e| <= 87: 4e-6, a common shift of
//! every term, so ln S moves by <= 3e-6) and exp2f within 2 ulp; the CPU's exp_f32 is within
//! 2 ulp; the sums run in different orders (~1e-6 relative on S). So |loss error| <~ 1e-5 at
//! the largest logits used (|x| <= 60): rel 1e-5 + abs 3e-5. Gradients: one bf16 rounding of
//! s * (p - onehot) (<= 2^-8 relative with a rounding-boundary straddle) on top of those ~1e-5:
//! rel 1e-2. bf16 keeps f32's exponent range, so small probabilities keep their relative
//! accuracy; abs 1e-9 absorbs values below ~1e-38, where the CPU's exp_f32 clamps its argument
//! at -87.3 (giving ~1e-38, not 0) and the GPU's exp2f goes subnormal or 0.
use tests::gpu::*;

use gpt::cpu::ops;
use gpt::cuda::kernels::{classifier, Ptr};
use runtime::cuda::half::bf16;
use runtime::cuda::Gpu;

/// (n, vp, v, logit scale): v == vp; v not a multiple of 8 with vp % 8 == 0 (16-byte path with
/// a masked tail); vp odd (2-byte path); v far from a multiple of the 1024-thread block; the
/// GPT-2 vocabulary; large logits, where only max-subtraction keeps e^x finite.
const CASES: [(usize, usize, usize, f32); 6] = [
    (1, 8, 5, 4.0),
    (3, 1024, 1024, 4.0),
    (5, 2053, 2051, 4.0),
    (7, 3000, 2999, 8.0),
    (4, 50304, 50257, 6.0),
    (3, 1032, 1030, 60.0),
];

struct Case {
    n: usize,
    vp: usize,
    v: usize,
    logits: Vec<bf16>,
    targets: Vec<u32>,
}

fn make_case(rng: &mut Rng, (n, vp, v, scale): (usize, usize, usize, f32)) -> Case {
    let mut logits = rng.vec_bf16(n * vp, scale);
    // Garbage in the padding: the loss must ignore it and the gradient must zero it.
    for r in 0..n {
        for j in v..vp {
            logits[r * vp + j] = bf16::from_f32(1e4);
        }
    }
    let targets = (0..n).map(|_| rng.below(v) as u32).collect();
    Case {
        n,
        vp,
        v,
        logits,
        targets,
    }
}

fn run(g: &Gpu, case: &Case, dloss: Option<f32>) -> (Vec<bf16>, Vec<f32>) {
    let logits = g.upload(&case.logits).unwrap();
    let targets: Vec<i32> = case.targets.iter().map(|&t| t as i32).collect();
    let dt = g.upload(&targets).unwrap();
    let losses = poisoned::<f32>(g, case.n);
    classifier::classifier(
        g,
        Ptr::of(&logits),
        Ptr::of(&losses),
        Ptr::of(&dt),
        case.n,
        case.vp,
        case.v,
        dloss,
    )
    .unwrap();
    (g.download(&logits).unwrap(), g.download(&losses).unwrap())
}

fn cpu(case: &Case, dloss: Option<f32>) -> (Vec<f32>, Vec<f32>) {
    let mut logits = f32s(&case.logits);
    let mut losses = vec![0f32; case.n];
    ops::classifier(
        &mut logits,
        &mut losses,
        &case.targets,
        case.vp,
        case.v,
        dloss,
    );
    (logits, losses)
}

#[test]
fn classifier_loss_only_leaves_logits_untouched() {
    let g = gpu();
    let mut rng = Rng(21);
    for shape in CASES {
        let case = make_case(&mut rng, shape);
        let what = format!("classifier loss-only {:?}", &shape);
        let (got_logits, got_losses) = run(&g, &case, None);
        let (_, want_losses) = cpu(&case, None);
        assert_close(
            &format!("{what} losses"),
            &got_losses,
            &f64s(&want_losses),
            1e-5,
            3e-5,
        );
        assert_eq!(
            bits(&got_logits),
            bits(&case.logits),
            "{what}: logits changed"
        );
        let (_, again) = run(&g, &case, None);
        assert_eq!(
            again.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            got_losses.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            "{what}: losses must be bitwise reproducible"
        );
    }
}

#[test]
fn classifier_with_dloss_writes_gradient_and_zero_padding() {
    let g = gpu();
    let mut rng = Rng(22);
    for shape in CASES {
        let case = make_case(&mut rng, shape);
        let (n, vp, v) = (case.n, case.vp, case.v);
        let dloss = 1.0 / (n as f32 * 3.0);
        let what = format!("classifier dloss {:?}", &shape);
        let (got_logits, got_losses) = run(&g, &case, Some(dloss));
        let (want_logits, want_losses) = cpu(&case, Some(dloss));
        assert_close(
            &format!("{what} losses"),
            &got_losses,
            &f64s(&want_losses),
            1e-5,
            3e-5,
        );
        for r in 0..n {
            let row = &got_logits[r * vp..(r + 1) * vp];
            assert_close(
                &format!("{what} dlogits row {r}"),
                &f32s(&row[..v]),
                &f64s(&want_logits[r * vp..r * vp + v]),
                1e-2,
                1e-9,
            );
            for (j, x) in row[v..].iter().enumerate() {
                assert_eq!(x.to_bits(), 0, "{what}: padding [{r}, {}] not zero", v + j);
            }
            // The target entry carries the -dloss term (it is p - 1 < 0 times dloss).
            let t = case.targets[r] as usize;
            assert!(
                row[t].to_f32() < 0.0,
                "{what}: target entry [{r}, {t}] = {}",
                row[t]
            );
        }
        let (again, _) = run(&g, &case, Some(dloss));
        assert_eq!(
            bits(&again),
            bits(&got_logits),
            "{what}: dlogits must be bitwise reproducible"
        );
    }
}

#[test]
fn classifier_bad_target_gives_nan_loss_and_shape_errors() {
    // An out-of-range target must not read out of bounds: the kernel reports loss NaN (the
    // backend validates targets on the host, so this is a guard, not a feature).
    let g = gpu();
    let mut rng = Rng(23);
    let mut case = make_case(&mut rng, (2, 16, 10, 2.0));
    case.targets[1] = 12; // >= v, inside the padding
    let (logits, losses) = run(&g, &case, Some(0.5));
    assert!(
        losses[0].is_finite() && losses[1].is_nan(),
        "losses {losses:?}"
    );
    assert!(
        logits[16 + 12].to_f32() == 0.0,
        "padding of a bad-target row must stay 0"
    );
    // v > vp and short buffers are host-side errors.
    let l = g.alloc::<bf16>(16).unwrap();
    let lo = g.alloc::<f32>(1).unwrap();
    let t = g.alloc::<i32>(1).unwrap();
    let e = classifier::classifier(&g, Ptr::of(&l), Ptr::of(&lo), Ptr::of(&t), 1, 16, 17, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("v = 17"), "{e}");
    let e = classifier::classifier(&g, Ptr::of(&l), Ptr::of(&lo), Ptr::of(&t), 2, 8, 8, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("losses"), "{e}");
}

#[test]
fn classifier_misaligned_logits_take_the_2byte_path() {
    // vp % 8 == 0 but the logits one element off 16-byte alignment: the kernel must see the
    // misalignment and take its 2-byte path (W = 1; a 16-byte load there would fault on a GPU).
    // The CPU tolerances of the tests above; the padding exactly 0; the element before the
    // logits untouched.
    let g = gpu();
    let mut rng = Rng(24);
    let case = make_case(&mut rng, (3, 1032, 1030, 4.0));
    let (n, vp, v) = (case.n, case.vp, case.v);
    let mut host = vec![bf16::from_f32(7.0)];
    host.extend_from_slice(&case.logits);
    let logits = g.upload(&host).unwrap();
    let targets: Vec<i32> = case.targets.iter().map(|&t| t as i32).collect();
    let dt = g.upload(&targets).unwrap();
    let losses = poisoned::<f32>(&g, n);
    let dloss = 0.25;
    classifier::classifier(
        &g,
        Ptr::of(&logits).slice(1, n * vp),
        Ptr::of(&losses),
        Ptr::of(&dt),
        n,
        vp,
        v,
        Some(dloss),
    )
    .unwrap();
    let (want_logits, want_losses) = cpu(&case, Some(dloss));
    assert_close(
        "misaligned classifier losses",
        &g.download(&losses).unwrap(),
        &f64s(&want_losses),
        1e-5,
        3e-5,
    );
    let got = g.download(&logits).unwrap();
    assert_eq!(
        got[0].to_f32(),
        7.0,
        "the element before the logits changed"
    );
    for r in 0..n {
        let row = &got[1 + r * vp..1 + (r + 1) * vp];
        assert_close(
            &format!("misaligned classifier dlogits row {r}"),
            &f32s(&row[..v]),
            &f64s(&want_logits[r * vp..r * vp + v]),
            1e-2,
            1e-9,
        );
        assert!(row[v..].iter().all(|x| x.to_bits() == 0), "padding row {r}");
    }
}
