//! `bench --device cuda --suite kernels`: every kernel of the CUDA backend at the shapes of one
//! model, timed with CUDA events around each launch (after warm-up), on random BF16 data (never
//! zeros), with inputs rotated over three copies so that the 50 MB L2 of an H100 does not hold a
//! repeated input; plus the device's own ceilings: device-to-device copy bandwidth and the best
//! this project's BF16 GEMM reaches at 8192^3.
//!
//! NOT VERIFIED ON A GPU unless perf/results holds a `cuda-*` kernels run.

use gpt::cuda::kernels::{self as k, gemm, Ptr};
use gpt::model::Gpt;
use gpt::rng::SplitMix64;
use runtime::cuda::half::bf16;
use runtime::cuda::{DeviceBuffer, Gpu, Result};

/// Input copies the timings rotate over.
const ROTATE: usize = 3;

/// One kernel's timings: per-launch milliseconds, and the FLOPs and bytes of one launch.
pub struct Timing {
    pub name: String,
    pub shape: String,
    pub samples_ms: Vec<f64>,
    pub flops: f64,
    pub bytes: f64,
}

/// Copy bandwidth (bytes read + written per second) and the BF16 GEMM rate at n^3.
pub struct GpuCeilings {
    pub copy_gbps: f64,
    pub copy_bytes: usize,
    pub gemm_tflops: f64,
    pub gemm_n: usize,
}

/// `reps` timed launches after `warmup` untimed ones; `f(i)` launches with input copy `i`.
fn time(
    g: &Gpu,
    warmup: usize,
    reps: usize,
    mut f: impl FnMut(usize) -> Result<()>,
) -> Result<Vec<f64>> {
    for i in 0..warmup {
        f(i % ROTATE)?;
    }
    let (start, end) = (g.event()?, g.event()?);
    let mut ms = Vec::with_capacity(reps);
    for i in 0..reps {
        g.record(&start)?;
        f(i % ROTATE)?;
        g.record(&end)?;
        ms.push(end.elapsed_ms(&start)? as f64);
    }
    Ok(ms)
}

/// Uniform values in [-scale, scale] from the project's seeded splitmix64, never exactly zero.
fn random_bf16(n: usize, seed: u64, scale: f32) -> Vec<bf16> {
    let mut r = SplitMix64::new(seed);
    (0..n)
        .map(|_| {
            let v = (r.next_f64() as f32 * 2.0 - 1.0) * scale;
            bf16::from_f32(if v == 0.0 { 0.5 * scale } else { v })
        })
        .collect()
}

/// `ROTATE` random copies of an `n`-element input, back to back.
struct Rotated {
    buf: DeviceBuffer<bf16>,
    n: usize,
}

impl Rotated {
    fn new(g: &Gpu, n: usize, seed: u64, scale: f32) -> Result<Self> {
        Ok(Rotated {
            buf: g.upload(&random_bf16(n * ROTATE, seed, scale))?,
            n,
        })
    }
    fn at(&self, i: usize) -> Ptr<'_, bf16> {
        Ptr::of(&self.buf).slice((i % ROTATE) * self.n, self.n)
    }
}

pub fn ceilings(g: &Gpu, warmup: usize, reps: usize) -> Result<GpuCeilings> {
    let copy_elems = 256usize << 20; // 512 MiB of bf16 each way
    let (src, dst) = (g.alloc::<bf16>(copy_elems)?, g.alloc::<bf16>(copy_elems)?);
    g.fill_bytes(&src, 0x3F)?;
    let copy = time(g, warmup, reps, |_| g.copy_device(&src, &dst))?;
    let copy_bytes = 2 * src.bytes();
    drop((src, dst));
    let n = 8192;
    let (a, b) = (
        g.upload(&random_bf16(n * n, 1, 1.0))?,
        g.upload(&random_bf16(n * n, 2, 1.0))?,
    );
    let c = g.alloc::<bf16>(n * n)?;
    let gemm = time(g, warmup, reps.min(5), |_| {
        k::gemm::matmul_forward(
            g,
            Ptr::of(&c),
            Ptr::of(&a),
            Ptr::of(&b),
            None,
            None,
            n,
            n,
            n,
        )
    })?;
    let best = |v: &[f64]| v.iter().cloned().fold(f64::INFINITY, f64::min);
    Ok(GpuCeilings {
        copy_gbps: copy_bytes as f64 / (best(&copy) * 1e-3) / 1e9,
        copy_bytes,
        gemm_tflops: 2.0 * (n as f64).powi(3) / (best(&gemm) * 1e-3) / 1e12,
        gemm_n: n,
    })
}

/// The MXFP4 backward's kernels at each linear layer's shapes: the fused quantize (rowwise for
/// dgrad's dY, colwise along the tokens for wgrad's operands; RTN to packed codes for the int8
/// path, RHT + SR to dequantized bf16 for the bf16 path), and both MX GEMM paths for dgrad and
/// wgrad. Bytes count each operand read once and each output written once.
#[allow(clippy::too_many_arguments)]
fn mx_kernels(
    g: &Gpu,
    gpt: &Gpt,
    warmup: usize,
    reps: usize,
    act: &Rotated,
    act2: &Rotated,
    wts: &Rotated,
    push: &mut impl FnMut(&str, String, Vec<f64>, f64, f64),
) -> Result<()> {
    use gpt::mx::Rounding;
    use k::mx::{Layout, MxRef, QuantizeOut, QuantizeSpec};
    let (bt, c) = (gpt.batch * gpt.seq, gpt.cfg.channels);
    let f = |x: usize| x as f64;
    let most = bt.max(c) * 4 * c;
    let (deq_a, deq_b) = (g.alloc::<bf16>(most)?, g.alloc::<bf16>(most)?);
    let (codes_a, codes_b) = (g.alloc::<u8>(most / 2)?, g.alloc::<u8>(most / 2)?);
    let (scales_a, scales_b) = (g.alloc::<u8>(most / 32)?, g.alloc::<u8>(most / 32)?);
    let out = g.alloc::<bf16>(most)?;
    let spec = |layout, rounding, rht: bool| QuantizeSpec {
        layout,
        rounding,
        seed: 1,
        sr_stream: 2,
        sign_stream: 3,
        hadamard_block: rht.then_some(64),
    };
    for (name, ic, oc) in [
        ("qkv", c, 3 * c),
        ("attproj", c, c),
        ("fc", c, 4 * c),
        ("fcproj", 4 * c, c),
    ] {
        // dY [bt, oc] rowwise (dgrad) and X [bt, ic] colwise (wgrad), both forms.
        for (what, src, r, cols, layout) in [
            ("dgrad_dy_rowwise", act2, bt, oc, Layout::Rowwise),
            ("wgrad_x_colwise", act, bt, ic, Layout::Colwise),
        ] {
            let n = r * cols;
            let shape = format!("{r}x{cols}");
            let ms = time(g, warmup, reps, |i| {
                let out = QuantizeOut {
                    codes: Some(Ptr::of(&codes_a)),
                    scales: Some(Ptr::of(&scales_a)),
                    ..Default::default()
                };
                k::mx::quantize(
                    g,
                    src.at(i).slice(0, n),
                    r,
                    cols,
                    &spec(layout, Rounding::Rtn, false),
                    out,
                )
            })?;
            push(
                &format!("mx_quantize/{name}/{what}/rtn_codes"),
                shape.clone(),
                ms,
                4.0 * f(n),
                f(2 * n + n / 2 + n / 32),
            );
            let ms = time(g, warmup, reps, |i| {
                let out = QuantizeOut {
                    deq: Some(Ptr::of(&deq_a)),
                    ..Default::default()
                };
                k::mx::quantize(
                    g,
                    src.at(i).slice(0, n),
                    r,
                    cols,
                    &spec(layout, Rounding::Sr, true),
                    out,
                )
            })?;
            push(
                &format!("mx_quantize/{name}/{what}/rht_sr_bf16"),
                shape,
                ms,
                20.0 * f(n),
                f(4 * n),
            );
        }
        // GEMMs on quantized operands: dgrad M=bt N=ic K=oc, wgrad M=oc N=ic K=bt.
        for (what, m, n, kk) in [("dgrad", bt, ic, oc), ("wgrad", oc, ic, bt)] {
            // Operands from random data: packed for the int8 path, dequantized for bf16.
            let q = |a: bool, rows: usize, src: &Rotated| -> Result<()> {
                let (codes, scales, deq) = if a {
                    (&codes_a, &scales_a, &deq_a)
                } else {
                    (&codes_b, &scales_b, &deq_b)
                };
                let out = QuantizeOut {
                    codes: Some(Ptr::of(codes)),
                    scales: Some(Ptr::of(scales)),
                    deq: Some(Ptr::of(deq)),
                    partials: None,
                };
                let sp = spec(Layout::Rowwise, Rounding::Rtn, false);
                k::mx::quantize(g, src.at(0).slice(0, rows * kk), rows, kk, &sp, out)
            };
            q(true, m, act)?;
            q(false, n, wts)?;
            let shape = format!("M={m} N={n} K={kk}");
            let flops = 2.0 * f(m) * f(n) * f(kk);
            let (ra, rb) = (
                MxRef {
                    codes: Ptr::of(&codes_a),
                    scales: Ptr::of(&scales_a),
                },
                MxRef {
                    codes: Ptr::of(&codes_b),
                    scales: Ptr::of(&scales_b),
                },
            );
            let ms = time(g, warmup, reps, |_| {
                k::mx::gemm_int8(g, Ptr::of(&out), ra, rb, m, n, kk, 1.0, what == "wgrad")
            })?;
            push(
                &format!("mx_gemm_int8/{name}/{what}"),
                shape.clone(),
                ms,
                flops,
                f((m + n) * kk) * (0.5 + 1.0 / 32.0) + 2.0 * f(m * n),
            );
            let ms = time(g, warmup, reps, |_| {
                k::gemm::matmul_kmajor(
                    g,
                    Ptr::of(&out),
                    Ptr::of(&deq_a),
                    Ptr::of(&deq_b),
                    m,
                    n,
                    kk,
                    16.0 / 9.0,
                    what == "wgrad",
                )
            })?;
            push(
                &format!("mx_gemm_bf16/{name}/{what}"),
                shape,
                ms,
                flops,
                2.0 * f((m + n) * kk + m * n),
            );
        }
    }
    Ok(())
}

/// Every kernel at the shapes of `gpt` (its micro batch B x T).
pub fn kernels(g: &Gpu, gpt: &Gpt, warmup: usize, reps: usize) -> Result<Vec<Timing>> {
    let cfg = &gpt.cfg;
    let (b, t, c, nh, vp, v) = (
        gpt.batch,
        gpt.seq,
        cfg.channels,
        cfg.heads,
        cfg.padded_vocab,
        cfg.vocab,
    );
    let bt = b * t;
    let mut out = Vec::new();
    let mut push = |name: &str, shape: String, samples_ms: Vec<f64>, flops: f64, bytes: f64| {
        out.push(Timing {
            name: name.into(),
            shape,
            samples_ms,
            flops,
            bytes,
        });
    };
    let f = |x: usize| x as f64;

    // Shared operands: activations [BT, 4C] covers every activation input; weights [Vp, C].
    let act = Rotated::new(g, bt * 4 * c, 10, 1.0)?;
    let act2 = Rotated::new(g, bt * 4 * c, 11, 1.0)?;
    let wts = Rotated::new(g, vp.max(4 * c) * c.max(4 * c), 12, 0.02)?;
    let small = Rotated::new(g, 4 * c, 13, 1.0)?;
    let out_a = g.alloc::<bf16>(bt * vp.max(4 * c))?;
    let out_b = g.alloc::<bf16>(bt * 4 * c)?;
    let grads = g.alloc::<bf16>(vp.max(4 * c) * c.max(4 * c))?;
    g.fill_bytes(&grads, 0)?;
    let stats_a = g.alloc::<f32>(b * nh * t + bt)?;
    let stats_b = g.alloc::<f32>(bt)?;
    let mut r = SplitMix64::new(14);
    let tokens_host: Vec<u32> = (0..bt).map(|_| (r.next_u64() % v as u64) as u32).collect();
    let tokens = g.upload(&tokens_host.iter().map(|&x| x as i32).collect::<Vec<i32>>())?;
    let work_len = [
        k::layernorm::layernorm_backward_scratch_len(bt, c),
        k::gemm::bias_backward_scratch_len(bt, 4 * c),
        k::attention::attention_backward_scratch_len(b, t, c, nh),
        k::global_norm::grad_norm_scratch_len(grads.len()),
    ]
    .into_iter()
    .max()
    .unwrap_or(1);
    let work = g.alloc::<f32>(work_len.max(1))?;
    let (oa, ob, w) = (Ptr::of(&out_a), Ptr::of(&out_b), Ptr::of(&work));
    let s = format!("BT={bt} C={c}");

    // wte [Vp, C] and wpe [T, C] both from the weights copies.
    let ms = time(g, warmup, reps, |i| {
        k::encoder::encoder_forward(
            g,
            oa.slice(0, bt * c),
            Ptr::of(&tokens),
            wts.at(i).slice(0, vp * c),
            wts.at(i + 1).slice(0, t * c),
            b,
            t,
            c,
        )
    })?;
    push(
        "encoder_forward",
        s.clone(),
        ms,
        f(bt * c),
        f(3 * 2 * bt * c),
    );

    let ms = time(g, warmup, reps, |i| {
        k::layernorm::layernorm_forward(
            g,
            oa.slice(0, bt * c),
            Ptr::of(&stats_a).slice(0, bt),
            Ptr::of(&stats_b),
            act.at(i),
            small.at(i).slice(0, c),
            small.at(i + 1).slice(0, c),
            bt,
            c,
        )
    })?;
    push(
        "layernorm_forward",
        s.clone(),
        ms,
        f(8 * bt * c),
        f(2 * 2 * bt * c),
    );
    let ms = time(g, warmup, reps, |i| {
        k::layernorm::residual_layernorm_forward(
            g,
            oa.slice(0, bt * c),
            ob.slice(0, bt * c),
            Ptr::of(&stats_a).slice(0, bt),
            Ptr::of(&stats_b),
            act.at(i),
            act2.at(i),
            small.at(i).slice(0, c),
            small.at(i + 1).slice(0, c),
            bt,
            c,
        )
    })?;
    push(
        "residual_layernorm_forward",
        s.clone(),
        ms,
        f(9 * bt * c),
        f(4 * 2 * bt * c),
    );
    let ms = time(g, warmup, reps, |i| {
        let gw = Ptr::of(&grads);
        k::layernorm::layernorm_backward(
            g,
            oa.slice(0, bt * c),
            gw.slice(0, c),
            gw.slice(c, c),
            act.at(i),
            act2.at(i),
            small.at(i).slice(0, c),
            Ptr::of(&stats_a).slice(0, bt),
            Ptr::of(&stats_b),
            w,
            bt,
            c,
        )
    })?;
    push(
        "layernorm_backward",
        s.clone(),
        ms,
        f(14 * bt * c),
        f(5 * 2 * bt * c),
    );

    // GEMMs, side by side: `matmul_*/{layer}` is what training runs (the default selection:
    // gemm_fast.cu, split-K from the backend's work buffer, the wgrad with its fused bias
    // gradient); `matmul_*_reference/{layer}` is gemm.cu (MXGPT_GEMM=reference), whose wgrad
    // leaves the bias gradient to `bias_backward/{layer}`. `matmul_backward_input+gelu/fcproj`
    // is the dgrad with the GELU backward folded in (compare with the dgrad plus
    // `gelu_backward`).
    let fast = gemm::GemmOptions::default();
    let reference = gemm::GemmOptions::REFERENCE;
    let gemm_scratch = g.alloc::<f32>(gemm::linear_layers_scratch_len(&fast, bt, c, vp))?;
    let gs = Some(Ptr::of(&gemm_scratch));
    for (name, ic, oc, gelu) in [
        ("qkv", c, 3 * c, false),
        ("attproj", c, c, false),
        ("fc", c, 4 * c, true),
        ("fcproj", 4 * c, c, false),
        ("lm_head", c, vp, false),
    ] {
        let shape = format!("rows={bt} IC={ic} OC={oc}");
        let with_splits = |m: usize, n: usize, k: usize| {
            let s = gemm::split_plan(fast.split_k, m, n, k).splits;
            format!("{shape} splits={s}")
        };
        let flops = 2.0 * f(bt) * f(ic) * f(oc);
        let bytes = 2.0 * f(bt * ic + ic * oc + bt * oc);
        let bias = (name != "lm_head").then(|| small.at(0).slice(0, oc.min(4 * c)));
        for (suffix, opts) in [("", fast), ("_reference", reference)] {
            let ms = time(g, warmup, reps, |i| {
                let gelu_out = gelu.then(|| ob.slice(0, bt * oc));
                gemm::matmul_forward_with(
                    g,
                    &opts,
                    oa.slice(0, bt * oc),
                    act.at(i).slice(0, bt * ic),
                    wts.at(i).slice(0, oc * ic),
                    bias,
                    gelu_out,
                    bt,
                    ic,
                    oc,
                )
                .map(|_| ())
            })?;
            push(
                &format!("matmul_forward{suffix}/{name}"),
                shape.clone(),
                ms,
                flops,
                bytes + if gelu { 2.0 * f(bt * oc) } else { 0.0 },
            );
        }
        // dgrad and wgrad read dout [BT, OC]: for the LM head that is larger than `act`.
        let dout = if oc <= 4 * c {
            None
        } else {
            Some(g.upload(&random_bf16(bt * oc, 15, 1e-4))?)
        };
        let d = |i: usize| match &dout {
            Some(buf) => Ptr::of(buf),
            None => act2.at(i).slice(0, bt * oc),
        };
        for (suffix, opts) in [("", fast), ("_reference", reference)] {
            let ms = time(g, warmup, reps, |i| {
                gemm::matmul_backward_input_with(
                    g,
                    &opts,
                    oa.slice(0, bt * ic),
                    d(i),
                    wts.at(i).slice(0, oc * ic),
                    None,
                    gs,
                    bt,
                    ic,
                    oc,
                )
                .map(|_| ())
            })?;
            let sh = if suffix.is_empty() {
                with_splits(bt, ic, oc)
            } else {
                shape.clone()
            };
            push(
                &format!("matmul_backward_input{suffix}/{name}"),
                sh,
                ms,
                flops,
                bytes,
            );
        }
        if name == "fcproj" {
            // d(fch) = gelu'(fch) * (dout . w): the pre-activation from the activations.
            let ms = time(g, warmup, reps, |i| {
                gemm::matmul_backward_input_with(
                    g,
                    &fast,
                    oa.slice(0, bt * ic),
                    d(i),
                    wts.at(i).slice(0, oc * ic),
                    Some(act.at(i + 1).slice(0, bt * ic)),
                    gs,
                    bt,
                    ic,
                    oc,
                )
                .map(|_| ())
            })?;
            push(
                &format!("matmul_backward_input+gelu/{name}"),
                with_splits(bt, ic, oc),
                ms,
                flops + 20.0 * f(bt * ic),
                bytes + 2.0 * f(bt * ic),
            );
        }
        // wgrad: default (split-K), default with the fused bias gradient (what training runs
        // for layers with a bias), reference.
        let wgrad_runs: &[(&str, gemm::GemmOptions, bool)] = if name == "lm_head" {
            &[("", fast, false), ("_reference", reference, false)]
        } else {
            &[
                ("", fast, false),
                ("+bias", fast, true),
                ("_reference", reference, false),
            ]
        };
        for &(suffix, opts, with_bias) in wgrad_runs {
            let ms = time(g, warmup, reps, |i| {
                let gr = Ptr::of(&grads);
                gemm::matmul_backward_weight_with(
                    g,
                    &opts,
                    gr.slice(0, oc * ic),
                    with_bias.then(|| gr.slice(oc * ic, oc)),
                    d(i),
                    act.at(i).slice(0, bt * ic),
                    gs,
                    bt,
                    ic,
                    oc,
                )
                .map(|_| ())
            })?;
            let sh = if suffix == "_reference" {
                shape.clone()
            } else {
                with_splits(oc, ic, bt)
            };
            let extra = if with_bias { 2.0 * f(oc) } else { 0.0 };
            push(
                &format!("matmul_backward_weight{suffix}/{name}"),
                sh,
                ms,
                flops + if with_bias { f(bt * oc) } else { 0.0 },
                bytes + 2.0 * f(ic * oc) + extra,
            );
        }
        if name != "lm_head" {
            let ms = time(g, warmup, reps, |i| {
                k::gemm::bias_backward(g, Ptr::of(&grads).slice(0, oc), d(i), w, bt, oc)
            })?;
            push(
                &format!("bias_backward/{name}"),
                shape,
                ms,
                f(bt * oc),
                2.0 * f(bt * oc),
            );
        }
    }
    drop(gemm_scratch);

    mx_kernels(g, gpt, warmup, reps, &act, &act2, &wts, &mut push)?;

    let n = bt * 4 * c;
    let ms = time(g, warmup, reps, |i| {
        k::gelu::gelu_backward_inplace(g, ob.slice(0, n), act.at(i), n)
    })?;
    push(
        "gelu_backward",
        format!("N={n}"),
        ms,
        20.0 * f(n),
        3.0 * 2.0 * f(n),
    );

    let hs = c / nh;
    let att_flops = 4.0 * f(b * nh) * f(t) * f(t) * f(hs) / 2.0;
    let shape = format!("B={b} T={t} C={c} NH={nh}");
    let qkv = |i: usize| act.at(i).slice(0, bt * 3 * c);
    let lse = Ptr::of(&stats_a).slice(0, b * nh * t);
    let ms = time(g, warmup, reps, |i| {
        k::attention::attention_forward(g, ob.slice(0, bt * c), lse, qkv(i), b, t, c, nh)
    })?;
    push(
        "attention_forward",
        shape.clone(),
        ms,
        att_flops,
        2.0 * f(bt * 4 * c),
    );
    let ms = time(g, warmup, reps, |i| {
        k::attention::attention_backward(
            g,
            oa.slice(0, bt * 3 * c),
            act2.at(i).slice(0, bt * c),
            qkv(i),
            ob.slice(0, bt * c),
            lse,
            w,
            b,
            t,
            c,
            nh,
        )
    })?;
    push(
        "attention_backward",
        shape,
        ms,
        2.5 * att_flops,
        2.0 * f(bt * 8 * c),
    );

    // The classifier overwrites its logits with gradients: refill them from a random copy first
    // (a device copy, timed with it, as on the CPU's classifier+restore entry).
    let logits_src = g.upload(&random_bf16(bt * vp, 16, 4.0))?;
    let targets = g.upload(&tokens_host.iter().map(|&x| x as i32).collect::<Vec<i32>>())?;
    let ms = time(g, warmup, reps, |_| {
        g.copy_device(&logits_src, &out_a)?;
        k::classifier::classifier(
            g,
            oa.slice(0, bt * vp),
            Ptr::of(&stats_b),
            Ptr::of(&targets),
            bt,
            vp,
            v,
            Some(1.0 / bt as f32),
        )
    })?;
    push(
        "classifier+restore",
        format!("BT={bt} Vp={vp}"),
        ms,
        5.0 * f(bt * v),
        3.0 * 2.0 * f(bt * vp),
    );

    let np = gpt.params.total;
    let params_host = random_bf16(np, 17, 0.02);
    let params = g.upload(&params_host)?;
    let master = g.upload(&params_host.iter().map(|x| x.to_f32()).collect::<Vec<f32>>())?;
    let pgrads = g.upload(&random_bf16(np, 18, 1e-3))?;
    let (m, vv) = (g.alloc::<f32>(np)?, g.alloc::<f32>(np)?);
    g.fill_bytes(&m, 0)?;
    g.fill_bytes(&vv, 0)?;
    let ms = time(g, warmup, reps, |_| {
        k::global_norm::grad_norm(g, Ptr::of(&stats_b).slice(0, 1), Ptr::of(&pgrads), w)
    })?;
    push("grad_norm", format!("N={np}"), ms, 2.0 * f(np), 2.0 * f(np));
    let args = k::adamw::AdamwArgs {
        lr: 1e-4,
        beta1: 0.9,
        beta2: 0.95,
        beta1_correction: 0.1,
        beta2_correction: 0.05,
        eps: 1e-8,
        weight_decay: 0.1,
        grad_scale: 1.0,
        seed: 1,
        index_base: 0,
    };
    let ms = time(g, warmup, reps, |_| {
        k::adamw::adamw_update(
            g,
            Ptr::of(&params),
            Ptr::of(&master),
            Ptr::of(&pgrads),
            Ptr::of(&m),
            Ptr::of(&vv),
            0,
            np,
            &args,
        )
    })?;
    push(
        "adamw",
        format!("N={np}"),
        ms,
        12.0 * f(np),
        f(np) * (2.0 + 2.0 + 4.0 * 3.0 * 2.0),
    );
    Ok(out)
}
