//! Race detection for every kernel: the host harness runs the threads of a block in different
//! orders between synchronization points (in order, reversed, seeded random), so a kernel with a
//! missing barrier or a shared-memory race gives different bits under different schedules.
//! Whole training steps (which launch every kernel training uses) and the kernels training does
//! not reach (scalar GEMM paths, casts, transpose, clipping) must give bit-identical results
//! under all of them. Harness only: on a GPU (MXGPT_TEST_DEVICE=cuda) the schedule is the
//! hardware's, and compute-sanitizer's racecheck plays this role.

use gpt::backend::Backend;
use gpt::config::ModelConfig;
use gpt::cpu::ops::AdamW;
use gpt::cuda::kernels::attention::{self, AttentionImpl};
use gpt::cuda::kernels::{cast, gemm, global_norm, Ptr};
use gpt::cuda::{CudaBackend, MxGemmChoice, MxGemmPath};
use gpt::layout::{Arena, TensorRef};
use gpt::model::{Gpt, PrecisionPlan};
use gpt::mx::MxConfig;
use gpt::precision::BackwardMode;
use runtime::cuda::half::bf16;
use runtime::cuda::{Gpu, Schedule};
use tests::gpu::{bits, poisoned, Rng};

const SCHEDULES: [Schedule; 4] = [
    Schedule::InOrder,
    Schedule::Reverse,
    Schedule::Random(1),
    Schedule::Random(2),
];

/// Losses, gradient norms, and the parameter and gradient bits after two AdamW steps.
fn two_steps(
    g: Gpu,
    cfg: &ModelConfig,
    mode: BackwardMode,
    path: MxGemmPath,
) -> (Vec<f32>, Vec<f32>, Vec<u32>, Vec<u32>) {
    // T = 48 (not a multiple of 16 or 32 per sequence; B*T = 96, a multiple of the MX block and
    // of g = 32 for the MXFP4 modes' wgrad).
    let (batch, seq) = (2, 48);
    let gpt = Gpt::new(*cfg, batch, seq).unwrap();
    let mut be = CudaBackend::on(g, &gpt.cfg, batch, seq).unwrap();
    be.set_mx_gemm(MxGemmChoice::Path(path)).unwrap();
    be.set_mx_config(MxConfig {
        mode,
        hadamard_block: 32,
        signs: gpt::mx::HadamardSigns::Fresh,
        seed: 4,
    })
    .unwrap();
    let all = TensorRef {
        arena: Arena::Params,
        offset: 0,
        len: gpt.params.total,
    };
    be.write(all, &gpt.init_params(3)).unwrap();
    let plan = PrecisionPlan::uniform(mode, cfg.layers);
    let bt = gpt.tokens_per_batch();
    let toks: Vec<u32> = (0..bt as u32)
        .map(|i| (i * 37 + 11) % cfg.vocab as u32)
        .collect();
    let (mut losses, mut norms) = (vec![], vec![]);
    for step in 1..=2u32 {
        be.set_tokens(
            &toks,
            Some(
                &toks[1..]
                    .iter()
                    .chain(&toks[..1])
                    .copied()
                    .collect::<Vec<_>>(),
            ),
        )
        .unwrap();
        be.zero_grads().unwrap();
        losses.push(
            gpt.forward_backward(&mut be, &plan, step, 0, 1.0 / bt as f32)
                .unwrap(),
        );
        let norm = be.grad_norm().unwrap();
        norms.push(norm);
        be.adamw(&AdamW {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            t: step as u64,
            grad_scale: 1.0 / norm.max(1.0),
        })
        .unwrap();
    }
    let to_bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<u32>>();
    let params = to_bits(be.read(all).unwrap());
    let grads = to_bits(
        be.read(TensorRef {
            arena: Arena::Grads,
            ..all
        })
        .unwrap(),
    );
    (losses, norms, params, grads)
}

#[test]
fn training_steps_are_bit_identical_under_every_schedule() {
    // Head sizes 16 and 64 (attention.cu's kernels at 16, attention_tc.cu's at 64), a ragged
    // padded vocabulary; BF16 and the MXFP4 recipe on both MX GEMM paths (quantize kernels, int8
    // and bf16 MX GEMMs).
    for (l, c, nh, mode, path) in [
        (1, 64, 4, BackwardMode::Bf16, MxGemmPath::Bf16),
        (1, 128, 2, BackwardMode::Bf16, MxGemmPath::Bf16),
        (1, 64, 4, BackwardMode::Mxfp4, MxGemmPath::Bf16),
        (1, 64, 4, BackwardMode::Mxfp4, MxGemmPath::Int8),
    ] {
        let mut cfg = ModelConfig::new(l, c, nh, 64).unwrap();
        cfg.vocab = 301;
        cfg.padded_vocab = 384;
        let what = format!("C{c} NH{nh} {mode} ({} path)", path.name());
        let runs: Vec<_> = SCHEDULES
            .iter()
            .map(|&s| two_steps(Gpu::harness(s), &cfg, mode, path))
            .collect();
        for (s, r) in SCHEDULES.iter().zip(&runs).skip(1) {
            assert_eq!(r.0, runs[0].0, "{what}: losses under {s:?}");
            assert_eq!(r.1, runs[0].1, "{what}: gradient norms under {s:?}");
            assert!(r.2 == runs[0].2, "{what}: parameters differ under {s:?}");
            assert!(r.3 == runs[0].3, "{what}: gradients differ under {s:?}");
        }
        assert!(runs[0].0.iter().all(|l| l.is_finite()));
    }
}

/// Elements [1, 1 + n) of a buffer: 2-byte aligned, which forces the GEMMs' scalar kernels.
fn at1(b: &runtime::cuda::DeviceBuffer<bf16>, n: usize) -> Ptr<'_, bf16> {
    Ptr::of(b).slice(1, n)
}

/// The kernels training does not launch: all three GEMM forms on the scalar path (odd shapes,
/// 2-byte aligned operands), the bias gradient, casts, the batched transpose, clipping.
fn glue_kernels(g: &Gpu) -> Vec<Vec<u16>> {
    let mut rng = Rng(77);
    let (rows, ic, oc) = (37, 45, 29);
    let up = |v: &[bf16]| g.upload(v).unwrap();
    let x = up(&rng.vec_bf16(rows * ic + 1, 1.0));
    let w = up(&rng.vec_bf16(oc * ic + 1, 1.0));
    let dy = up(&rng.vec_bf16(rows * oc + 1, 1.0));
    let (y, dx) = (
        poisoned::<bf16>(g, rows * oc + 1),
        poisoned::<bf16>(g, rows * ic + 1),
    );
    let dw = up(&rng.vec_bf16(oc * ic + 1, 0.1));
    let db = up(&rng.vec_bf16(oc, 0.1));
    let scratch = poisoned::<f32>(g, gemm::bias_backward_scratch_len(rows, oc));
    gemm::matmul_forward(
        g,
        at1(&y, rows * oc),
        at1(&x, rows * ic),
        at1(&w, oc * ic),
        None,
        None,
        rows,
        ic,
        oc,
    )
    .unwrap();
    gemm::matmul_backward_input(
        g,
        at1(&dx, rows * ic),
        at1(&dy, rows * oc),
        at1(&w, oc * ic),
        rows,
        ic,
        oc,
    )
    .unwrap();
    gemm::matmul_backward_weight(
        g,
        at1(&dw, oc * ic),
        at1(&dy, rows * oc),
        at1(&x, rows * ic),
        rows,
        ic,
        oc,
    )
    .unwrap();
    gemm::bias_backward(
        g,
        Ptr::of(&db),
        at1(&dy, rows * oc),
        Ptr::of(&scratch),
        rows,
        oc,
    )
    .unwrap();
    let f = g.upload(&rng.vec_f32(1000, 3.0)).unwrap();
    let fb = poisoned::<bf16>(g, 1000);
    cast::cast_f32_to_bf16(g, Ptr::of(&fb), Ptr::of(&f), 1000).unwrap();
    let t = poisoned::<bf16>(g, 3 * 33 * 70);
    let src = up(&rng.vec_bf16(3 * 33 * 70, 1.0));
    cast::transpose_bf16(g, Ptr::of(&t), Ptr::of(&src), 3, 33, 70).unwrap();
    let norm = poisoned::<f32>(g, 1);
    let gs = up(&rng.vec_bf16(5000, 2.0));
    let ns = poisoned::<f32>(g, global_norm::grad_norm_scratch_len(5000));
    global_norm::grad_norm(g, Ptr::of(&norm), Ptr::of(&gs), Ptr::of(&ns)).unwrap();
    global_norm::clip_by_norm_bf16(g, Ptr::of(&gs), Ptr::of(&norm), 1.0).unwrap();
    let d = |b: &runtime::cuda::DeviceBuffer<bf16>| bits(&g.download(b).unwrap());
    let n = g.download(&norm).unwrap()[0].to_bits();
    vec![
        d(&y),
        d(&dx),
        d(&dw),
        d(&db),
        d(&fb),
        d(&t),
        d(&gs),
        vec![n as u16, (n >> 16) as u16],
    ]
}

#[test]
fn glue_kernels_are_bit_identical_under_every_schedule() {
    let runs: Vec<_> = SCHEDULES
        .iter()
        .map(|&s| glue_kernels(&Gpu::harness(s)))
        .collect();
    let names = [
        "matmul_forward",
        "matmul_backward_input",
        "matmul_backward_weight",
        "bias_backward",
        "cast",
        "transpose",
        "clip",
        "norm",
    ];
    for (s, r) in SCHEDULES.iter().zip(&runs).skip(1) {
        for (i, name) in names.iter().enumerate() {
            assert!(r[i] == runs[0][i], "{name} differs under {s:?}");
        }
    }
}

/// Attention forward and backward on both implementations at both tensor-core head sizes
/// (training above reaches attention_tc.cu only at HS 64): T = 70 gives a full 64-row block
/// and a ragged one (off-diagonal, diagonal and zero-filled tiles), B = 2 and NH = 2.
fn attention_kernels(g: &Gpu) -> Vec<Vec<u16>> {
    let mut rng = Rng(91);
    let (b, t) = (2, 70);
    let mut outs = vec![];
    for (c, nh) in [(128, 2), (256, 2)] {
        let mut qkv = rng.vec_bf16(b * t * 3 * c, 2.0);
        // v in [-1, 1)
        for (i, x) in qkv.iter_mut().enumerate() {
            if i % (3 * c) >= 2 * c {
                *x = bf16::from_f32(x.to_f32() * 0.5);
            }
        }
        let qkv = g.upload(&qkv).unwrap();
        let dout = g.upload(&rng.vec_bf16(b * t * c, 1.0)).unwrap();
        for imp in [AttentionImpl::TensorCore, AttentionImpl::Reference] {
            let out = poisoned::<bf16>(g, b * t * c);
            let lse = poisoned::<f32>(g, b * nh * t);
            let dqkv = poisoned::<bf16>(g, b * t * 3 * c);
            let scratch =
                poisoned::<f32>(g, attention::attention_backward_scratch_len(b, t, c, nh));
            let (o, l) = (Ptr::of(&out), Ptr::of(&lse));
            attention::attention_forward_with(g, imp, o, l, Ptr::of(&qkv), b, t, c, nh).unwrap();
            attention::attention_backward_with(
                g,
                imp,
                Ptr::of(&dqkv),
                Ptr::of(&dout),
                Ptr::of(&qkv),
                o,
                l,
                Ptr::of(&scratch),
                b,
                t,
                c,
                nh,
            )
            .unwrap();
            let lse_bits: Vec<u16> = g
                .download(&lse)
                .unwrap()
                .iter()
                .flat_map(|x| [x.to_bits() as u16, (x.to_bits() >> 16) as u16])
                .collect();
            outs.push(bits(&g.download(&out).unwrap()));
            outs.push(lse_bits);
            outs.push(bits(&g.download(&dqkv).unwrap()));
        }
    }
    outs
}

#[test]
fn attention_kernels_are_bit_identical_under_every_schedule() {
    let runs: Vec<_> = SCHEDULES
        .iter()
        .map(|&s| attention_kernels(&Gpu::harness(s)))
        .collect();
    let mut names = vec![];
    for hs in [64, 128] {
        for imp in ["tensor-core", "reference"] {
            for what in ["out", "lse", "dqkv"] {
                names.push(format!("attention HS {hs} {imp} {what}"));
            }
        }
    }
    for (s, r) in SCHEDULES.iter().zip(&runs).skip(1) {
        for (i, name) in names.iter().enumerate() {
            assert!(r[i] == runs[0][i], "{name} differs under {s:?}");
        }
    }
}
