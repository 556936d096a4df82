//! The `kernels` suite: every CPU op of `gpt::cpu::ops` and the GEMMs at the shapes of the
//! model (`--model`, `--batch`, `--seq`), each with its time, GFLOP/s or GB/s and the percentage
//! of a ceiling (ceilings.rs); on the GPU the same entries come from tools::gpu_bench.

use super::ceilings::{self, Ceilings, SettleRule};
use super::method::{measure, random_sets, random_tokens, random_vec, Method, Stats, ROTATE};
use gpt::cpu::ops::{self, AdamW};
use gpt::model::Gpt;
use serde_json::{json, Value};

/// Entries whose names start with these are compared with the GEMM ceiling, the others with
/// copy bandwidth.
const COMPUTE_BOUND: [&str; 3] = ["matmul_", "attention_", "mx_gemm"];

/// One entry: `flops` and `bytes` are per call (bytes: minimum traffic, each operand once).
/// GEMMs and attention are compared with the GEMM ceiling, everything else with copy
/// bandwidth; `ceiling_stable` says whether that ceiling settled (ceilings.rs).
pub fn kernel_entry(
    name: &str,
    shape: String,
    st: Stats,
    flops: f64,
    bytes: f64,
    ceil: &Ceilings,
) -> Value {
    let secs = st.median * 1e-3;
    let (gflops, gbps) = (flops / secs / 1e9, bytes / secs / 1e9);
    let compute_bound = COMPUTE_BOUND.iter().any(|p| name.starts_with(p));
    let (bound, pct) = if compute_bound {
        ("compute", 100.0 * gflops / ceil.sgemm_gflops)
    } else {
        ("memory", 100.0 * gbps / ceil.copy_gbps)
    };
    eprintln!("  kernels/{name:<28} {:>10.3} ms", st.median);
    json!({"suite": "kernels", "name": name, "shape": shape, "stats": st.json(), "flops": flops, "bytes": bytes,
           "gflops": gflops, "gbps": gbps, "bound": bound, "pct_of_ceiling": pct,
           "ceiling_stable": ceil.stable_for(compute_bound)})
}

/// The CPU kernels suite.
pub fn cpu_suite(gpt: &Gpt, m: &Method, ceil: &Ceilings) -> Vec<Value> {
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
    let f = 4.0; // bytes per f32
    let mut out = Vec::new();
    let tokens: Vec<Vec<u32>> = (0..ROTATE)
        .map(|i| random_tokens(bt, v, 7 + i as u64))
        .collect();

    // embeddings
    let (wte, wpe) = (
        random_sets(vp * c, 10, 0.02),
        random_sets(cfg.max_seq * c, 11, 0.02),
    );
    let mut act = vec![0.0f32; bt * c];
    let st = measure(m, |i| {
        ops::encoder_forward(&mut act, &tokens[i], &wte[i], &wpe[i], t, c)
    });
    out.push(kernel_entry(
        "encoder_forward",
        format!("BT={bt} C={c}"),
        st,
        (bt * c) as f64,
        3.0 * f * (bt * c) as f64,
        ceil,
    ));
    let dout = random_sets(bt * c, 12, 1.0);
    let (mut dwte, mut dwpe) = (vec![0.0f32; vp * c], vec![0.0f32; cfg.max_seq * c]);
    let st = measure(m, |i| {
        ops::encoder_backward(&mut dwte, &mut dwpe, &dout[i], &tokens[i], t, c)
    });
    out.push(kernel_entry(
        "encoder_backward",
        format!("BT={bt} C={c}"),
        st,
        2.0 * (bt * c) as f64,
        5.0 * f * (bt * c) as f64,
        ceil,
    ));

    // layernorms
    let x = random_sets(bt * c, 13, 1.0);
    let (w, bias) = (random_vec(c, 14, 1.0), random_vec(c, 15, 0.1));
    let (mut mean, mut rstd) = (vec![0.0f32; bt], vec![0.0f32; bt]);
    let st = measure(m, |i| {
        ops::layernorm_forward(&mut act, &mut mean, &mut rstd, &x[i], &w, &bias, c)
    });
    out.push(kernel_entry(
        "layernorm_forward",
        format!("BT={bt} C={c}"),
        st,
        8.0 * (bt * c) as f64,
        2.0 * f * (bt * c) as f64,
        ceil,
    ));
    let mut res = vec![0.0f32; bt * c];
    let st = measure(m, |i| {
        ops::residual_layernorm_forward(
            &mut res, &mut act, &mut mean, &mut rstd, &x[i], &dout[i], &w, &bias, c,
        )
    });
    out.push(kernel_entry(
        "residual_layernorm_forward",
        format!("BT={bt} C={c}"),
        st,
        9.0 * (bt * c) as f64,
        4.0 * f * (bt * c) as f64,
        ceil,
    ));
    let (mut dx, mut dw, mut db) = (vec![0.0f32; bt * c], vec![0.0f32; c], vec![0.0f32; c]);
    let st = measure(m, |i| {
        ops::layernorm_backward(
            &mut dx, &mut dw, &mut db, &dout[i], &x[i], &w, &mean, &rstd, c,
        )
    });
    out.push(kernel_entry(
        "layernorm_backward",
        format!("BT={bt} C={c}"),
        st,
        14.0 * (bt * c) as f64,
        4.0 * f * (bt * c) as f64,
        ceil,
    ));

    // the linear layers of a block, and the LM head
    for (name, ic, oc) in [
        ("qkv", c, 3 * c),
        ("attproj", c, c),
        ("fc", c, 4 * c),
        ("fcproj", 4 * c, c),
        ("lm_head", c, vp),
    ] {
        let inp = random_sets(bt * ic, 20 + ic as u64, 1.0);
        let wt = random_sets(oc * ic, 21 + oc as u64, 0.02);
        let bs = random_vec(oc, 22, 0.02);
        let d = random_sets(bt * oc, 23 + oc as u64, 1.0);
        let mut y = vec![0.0f32; bt * oc];
        let gemm_flops = 2.0 * (bt * ic * oc) as f64;
        let gemm_bytes = f * (bt * ic + ic * oc + bt * oc) as f64;
        let shape = format!("rows={bt} IC={ic} OC={oc}");
        let st = measure(m, |i| {
            ops::matmul_forward(&mut y, &inp[i], &wt[i], Some(&bs), bt, ic, oc)
        });
        out.push(kernel_entry(
            &format!("matmul_forward/{name}"),
            shape.clone(),
            st,
            gemm_flops,
            gemm_bytes,
            ceil,
        ));
        let mut dinp = vec![0.0f32; bt * ic];
        let st = measure(m, |i| {
            ops::matmul_backward_input(&mut dinp, &d[i], &wt[i], bt, ic, oc)
        });
        out.push(kernel_entry(
            &format!("matmul_backward_input/{name}"),
            shape.clone(),
            st,
            gemm_flops,
            gemm_bytes,
            ceil,
        ));
        let mut dwt = vec![0.0f32; oc * ic];
        let st = measure(m, |i| {
            ops::matmul_backward_weight(&mut dwt, &d[i], &inp[i], bt, ic, oc)
        });
        out.push(kernel_entry(
            &format!("matmul_backward_weight/{name}"),
            shape.clone(),
            st,
            gemm_flops,
            gemm_bytes + f * (oc * ic) as f64,
            ceil,
        ));
        if name != "lm_head" {
            let mut dbias = vec![0.0f32; oc];
            let st = measure(m, |i| ops::bias_backward(&mut dbias, &d[i], bt, oc));
            out.push(kernel_entry(
                &format!("bias_backward/{name}"),
                shape,
                st,
                (bt * oc) as f64,
                f * (bt * oc) as f64,
                ceil,
            ));
        }
    }

    // GELU
    let pre = random_sets(bt * 4 * c, 30, 2.0);
    let mut g = vec![0.0f32; bt * 4 * c];
    let st = measure(m, |i| ops::gelu_forward(&mut g, &pre[i]));
    out.push(kernel_entry(
        "gelu_forward",
        format!("N={}", bt * 4 * c),
        st,
        12.0 * (bt * 4 * c) as f64,
        2.0 * f * (bt * 4 * c) as f64,
        ceil,
    ));
    let st = measure(m, |i| ops::gelu_backward_inplace(&mut g, &pre[i]));
    out.push(kernel_entry(
        "gelu_backward",
        format!("N={}", bt * 4 * c),
        st,
        20.0 * (bt * 4 * c) as f64,
        3.0 * f * (bt * 4 * c) as f64,
        ceil,
    ));

    // attention (FLOPs of the causal half actually computed: QK^T and PV, backward 2.5x that)
    let qkv = random_sets(bt * 3 * c, 40, 1.0);
    let (mut ao, mut lse) = (vec![0.0f32; bt * c], vec![0.0f32; b * nh * t]);
    let att_flops = 2.0 * 2.0 * (b * t * (t + 1) / 2 * c) as f64;
    let shape = format!("B={b} T={t} C={c} NH={nh}");
    let st = measure(m, |i| {
        ops::attention_forward(&mut ao, &mut lse, &qkv[i], b, t, c, nh)
    });
    out.push(kernel_entry(
        "attention_forward",
        shape.clone(),
        st,
        att_flops,
        f * (bt * 4 * c) as f64,
        ceil,
    ));
    let mut dqkv = vec![0.0f32; bt * 3 * c];
    let st = measure(m, |i| {
        ops::attention_backward(&mut dqkv, &dout[i], &qkv[i], &ao, &lse, b, t, c, nh)
    });
    out.push(kernel_entry(
        "attention_backward",
        shape,
        st,
        2.5 * att_flops,
        f * (bt * 8 * c) as f64,
        ceil,
    ));

    // classifier (fused softmax + loss + dlogits); it overwrites the logits, so each repetition
    // first restores them, and that copy is timed too (documented in perf/README.md)
    let logits = random_sets(bt * vp, 50, 3.0);
    let mut lg = vec![0.0f32; bt * vp];
    let mut losses = vec![0.0f32; bt];
    let st = measure(m, |i| {
        lg.copy_from_slice(&logits[i]);
        ops::classifier(
            &mut lg,
            &mut losses,
            &tokens[i],
            vp,
            v,
            Some(1.0 / bt as f32),
        );
    });
    out.push(kernel_entry(
        "classifier+restore",
        format!("BT={bt} Vp={vp}"),
        st,
        6.0 * (bt * v) as f64,
        4.0 * f * (bt * vp) as f64,
        ceil,
    ));

    // optimizer over the whole model
    let n = gpt.params.total;
    let grads = random_sets(n, 60, 1e-3);
    let st = measure(m, |i| {
        std::hint::black_box(ops::sum_of_squares(&grads[i]));
    });
    out.push(kernel_entry(
        "grad_norm",
        format!("N={n}"),
        st,
        2.0 * n as f64,
        f * n as f64,
        ceil,
    ));
    let (mut p, mut mm, mut vv) = (
        random_vec(n, 61, 0.02),
        random_vec(n, 62, 1e-4),
        random_vec(n, 63, 1e-8)
            .iter()
            .map(|x| x.abs())
            .collect::<Vec<_>>(),
    );
    let hp = AdamW {
        lr: 1e-4,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        t: 10,
        grad_scale: 1.0,
    };
    let st = measure(m, |i| {
        ops::adamw_update(&mut p, &grads[i], &mut mm, &mut vv, &hp, true)
    });
    out.push(kernel_entry(
        "adamw",
        format!("N={n}"),
        st,
        12.0 * n as f64,
        7.0 * f * n as f64,
        ceil,
    ));
    out
}

/// The kernels suite on the GPU (tools::gpu_bench), as result entries, and the GPU's ceilings
/// (`sgemm_gflops` is then the BF16 tensor-core GEMM's rate).
pub fn gpu_suite(
    gpt: &Gpt,
    m: &Method,
    rule: &SettleRule,
) -> Result<(Vec<Value>, Ceilings), String> {
    let g = runtime::cuda::Gpu::new(0).map_err(|e| format!("--device cuda: {e}"))?;
    let ceil = ceilings::measure_gpu(&g, m, rule)?;
    eprintln!("{}", ceil.report("bf16 GEMM", "TFLOP/s", 1e-3));
    let timings =
        crate::gpu_bench::kernels(&g, gpt, m.warmup, m.reps).map_err(|e| e.to_string())?;
    let entries = timings
        .into_iter()
        .map(|t| {
            kernel_entry(
                &t.name,
                t.shape,
                Stats::from_samples(t.samples_ms),
                t.flops,
                t.bytes,
                &ceil,
            )
        })
        .collect();
    Ok((entries, ceil))
}
