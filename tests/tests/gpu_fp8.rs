//! The FP8 forward kernels (ptx/kernels/fp8.cu, fp8_gemm.cu) against the CPU contract
//! gpt::mx::fp8 (docs/numerics.md sections 8 and 9):
//!
//! - the E4M3 conversion, both spellings (the instruction `cvt.rn.satfinite.e4m3x2.f32`, whose
//!   host twin the harness runs, and the software conversion of sm_80 builds): bit for bit
//!   `e4m3_from_f32` on every E4M3 value, every midpoint between neighbours (ties), values just
//!   off them, the subnormal range, saturation, zeros, NaN and infinities, and random f32;
//! - amax and the tensor scale: bit for bit `fp8::amax` / `fp8::tensor_scale`, on aligned and
//!   unaligned tensors of any length, with NaN / inf ignored, amax 0 and overflowing scales;
//!   delayed scaling over a sequence of training and evaluation calls bit for bit
//!   `Fp8State::scale` (scale and ring contents);
//! - quantization: the E4M3 bytes and their bf16 values bit for bit `fp8::quantize`;
//! - the GEMM (E4M3 mma and the BF16 fallback): within FP32 summation error of the exact
//!   `Σ xq wq / (s_x s_W) + bias` in f64 plus the output's bf16 rounding, with and without bias
//!   and GELU, on ragged shapes; identical bits under every harness schedule.
//!
//! Outputs are poisoned before every launch.

use gpt::cuda::kernels::fp8::{self as kfp8, Fp8Operand, History, Record};
use gpt::cuda::kernels::Ptr;
use gpt::mx::fp8::{self, e4m3_from_f32, e4m3_to_f32, Fp8Scaling, Fp8State};
use runtime::cuda::half::bf16;
use runtime::cuda::{Gpu, Schedule};
use tests::gpu::{gpu, poisoned, Rng};

#[test]
fn both_conversions_equal_the_cpu_on_every_edge() {
    let g = gpu();
    let mut x: Vec<f32> = Vec::new();
    // Every finite E4M3 value, both signs; every midpoint between neighbours (a tie), and the
    // f32 values just below and above each midpoint.
    let values: Vec<f32> = (0u8..=0x7E).map(e4m3_to_f32).collect();
    for w in values.windows(2) {
        let mid = (w[0] + w[1]) / 2.0; // exact: neighbours differ in the last of 4 bits
        for v in [
            w[0],
            mid,
            f32::from_bits(mid.to_bits() - 1),
            f32::from_bits(mid.to_bits() + 1),
        ] {
            x.push(v);
            x.push(-v);
        }
    }
    x.extend([
        448.0,
        464.0, // the tie with 480, which does not exist: 448
        463.99997,
        480.0,
        1e30,
        f32::MAX,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        0.0,
        -0.0,
        2f32.powi(-10), // half the smallest subnormal: 0
        2f32.powi(-149),
        -2f32.powi(-149),
        f32::MIN_POSITIVE,
        0.015625, // 2^-6, the smallest normal
        0.0146484375,
    ]);
    let mut rng = Rng(4);
    for i in 0..4000 {
        let e = (i % 40) as i32 - 20;
        x.push(rng.f32(1.0) * 2f32.powi(e));
    }
    let n = x.len();
    let xd = g.upload(&x).unwrap();
    let (hw, sw) = (poisoned::<u8>(&g, n), poisoned::<u8>(&g, n));
    kfp8::convert_check(&g, Ptr::of(&hw), Ptr::of(&sw), Ptr::of(&xd), n).unwrap();
    let (hw, sw) = (g.download(&hw).unwrap(), g.download(&sw).unwrap());
    for i in 0..n {
        let want = e4m3_from_f32(x[i]);
        assert_eq!(
            hw[i], want,
            "cvt.rn.satfinite.e4m3x2 of {:e}: {:#04x}, CPU {want:#04x}",
            x[i], hw[i]
        );
        assert_eq!(
            sw[i], want,
            "software E4M3 of {:e}: {:#04x}, CPU {want:#04x}",
            x[i], sw[i]
        );
    }
}

/// `rec` after one tensor_scale call on `x` (uploaded at element offset `offset` of a larger
/// buffer, so the 16-byte vector path is skipped when it is odd).
fn scale_of(
    g: &Gpu,
    x: &[bf16],
    offset: usize,
    history: Option<(&runtime::cuda::DeviceBuffer<f32>, Record)>,
) -> [f32; 2] {
    let mut padded = vec![bf16::from_f32(1e6); offset];
    padded.extend_from_slice(x);
    let buf = g.upload(&padded).unwrap();
    let rec = poisoned::<f32>(g, 2);
    let partials = poisoned::<f32>(g, kfp8::amax_partials_len(x.len()));
    kfp8::tensor_scale(
        g,
        Ptr::of(&rec),
        Ptr::of(&partials),
        Ptr::of(&buf).slice(offset, x.len()),
        x.len(),
        history.map(|(ring, record)| History {
            ring: Ptr::of(ring),
            record,
        }),
    )
    .unwrap();
    let r = g.download(&rec).unwrap();
    [r[0], r[1]]
}

#[test]
fn amax_and_current_scale_equal_the_cpu() {
    let g = gpu();
    let mut rng = Rng(9);
    for &(n, offset) in &[
        (1usize, 0usize),
        (7, 0),
        (8, 0),
        (1000, 0),
        (1003, 1),
        (70_001, 3),
        (2048 * 300, 0),
    ] {
        let mut x = rng.vec_bf16(n, 3.0);
        if n > 100 {
            x[n / 3] = bf16::from_f32(f32::NAN);
            x[n / 2] = bf16::from_f32(f32::NEG_INFINITY);
            x[n - 1] = bf16::from_f32(-7.5); // the amax, last (the scalar tail)
        }
        let xf: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
        let (amax, scale) = (fp8::amax(&xf), fp8::tensor_scale(fp8::amax(&xf)));
        let got = scale_of(&g, &x, offset, None);
        assert_eq!(got[0].to_bits(), amax.to_bits(), "amax of {n} at {offset}");
        assert_eq!(
            got[1].to_bits(),
            scale.to_bits(),
            "scale of {n} at {offset}"
        );
    }
    // amax 0 (zeros, NaN and inf only): scale 1; a tiny tensor: the scale clamps to f32::MAX.
    let x = vec![
        bf16::ZERO,
        bf16::from_f32(f32::NAN),
        bf16::from_f32(f32::INFINITY),
        bf16::from_f32(-0.0),
    ];
    assert_eq!(scale_of(&g, &x, 0, None), [0.0, 1.0]);
    let tiny = bf16::from_f32(2f32.powi(-130));
    assert_eq!(scale_of(&g, &[tiny; 9], 0, None), [tiny.to_f32(), f32::MAX]);
}

#[test]
fn delayed_scaling_follows_fp8_state() {
    // One tensor's ring of 3 on the device against Fp8State: training calls record, evaluation
    // calls do not, the window slides, an empty window falls back to current scaling. Twice:
    // the slot chosen here (Record::Slot) and the slot from the call count on the device
    // (Record::Counter, which the kernel increments; a poisoned second word must stay).
    let g = gpu();
    let h = 3;
    let ring = g.upload(&vec![0.0f32; h]).unwrap();
    let counted = g.upload(&vec![0.0f32; h]).unwrap();
    let calls = g.upload(&[0u64, 0xDEAD_BEEF]).unwrap();
    let mut state = Fp8State::new(1, h);
    let scaling = Fp8Scaling::Delayed { history: h };
    let mut rng = Rng(31);
    let amaxes = [4.0f32, 1.0, 2.5, 0.5, 0.25, 96.0, 3.0, 0.125, 7.0];
    let training = [true, true, false, true, true, true, false, true, true];
    for (i, (&a, &train)) in amaxes.iter().zip(&training).enumerate() {
        let mut x = rng.vec_bf16(100, a / 2.0);
        x[37] = bf16::from_f32(-a);
        let want = state.scale(scaling, 0, a, train);
        let record = match train {
            true => Record::Slot((state.calls[0] as usize - 1) % h),
            false => Record::No,
        };
        let got = scale_of(&g, &x, 0, Some((&ring, record)));
        let record = match train {
            true => Record::Counter(Ptr::of(&calls).slice(0, 1)),
            false => Record::No,
        };
        assert_eq!(
            scale_of(&g, &x, 0, Some((&counted, record))),
            got,
            "call {i}: the device count's amax and scale"
        );
        assert_eq!(
            g.download(&counted).unwrap(),
            &state.amax[..h],
            "call {i}: the device count's ring"
        );
        assert_eq!(
            g.download(&calls).unwrap(),
            [state.calls[0], 0xDEAD_BEEF],
            "call {i}: the device count"
        );
        assert_eq!(got[0], a, "call {i}: amax");
        assert_eq!(
            got[1].to_bits(),
            want.to_bits(),
            "call {i}: scale {} vs {want}",
            got[1]
        );
        assert_eq!(
            g.download(&ring).unwrap(),
            &state.amax[..h],
            "call {i}: the ring"
        );
    }
}

#[test]
fn quantize_equals_the_cpu_in_both_forms() {
    let g = gpu();
    let mut rng = Rng(12);
    for &n in &[1usize, 31, 4096 + 3] {
        let mut x = rng.vec_bf16(n, 20.0);
        if n > 10 {
            x[5] = bf16::from_f32(f32::NAN);
            x[6] = bf16::from_f32(f32::INFINITY);
            x[7] = bf16::from_f32(-1e-5);
        }
        let xf: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
        let s = fp8::tensor_scale(fp8::amax(&xf));
        let want = fp8::quantize(&xf, s);
        let xd = g.upload(&x).unwrap();
        let rec = g.upload(&[0.0f32, s]).unwrap();
        let q8 = poisoned::<u8>(&g, n);
        let q16 = poisoned::<bf16>(&g, n);
        kfp8::quantize(
            &g,
            Fp8Operand::E4m3(Ptr::of(&q8)),
            Ptr::of(&xd),
            n,
            Ptr::of(&rec),
        )
        .unwrap();
        kfp8::quantize(
            &g,
            Fp8Operand::Bf16(Ptr::of(&q16)),
            Ptr::of(&xd),
            n,
            Ptr::of(&rec),
        )
        .unwrap();
        let (q8, q16) = (g.download(&q8).unwrap(), g.download(&q16).unwrap());
        for i in 0..n {
            assert_eq!(q8[i], want[i], "byte {i} of x = {} * {s}", xf[i]);
            let v = e4m3_to_f32(want[i]);
            assert!(
                q16[i].to_f32() == v || (v.is_nan() && q16[i].is_nan()),
                "bf16 {i}: {} vs {v}",
                q16[i]
            );
        }
    }
}

struct Case {
    rows: usize,
    ic: usize,
    oc: usize,
    x: Vec<bf16>,
    w: Vec<bf16>,
    bias: Vec<bf16>,
}

fn case(rng: &mut Rng, rows: usize, ic: usize, oc: usize) -> Case {
    let mut x = rng.vec_bf16(rows * ic, 2.0);
    x[rows * ic / 2] = bf16::from_f32(-30.0); // an outlier sets the scale
    Case {
        rows,
        ic,
        oc,
        x,
        w: rng.vec_bf16(oc * ic, 0.05),
        bias: rng.vec_bf16(oc, 0.3),
    }
}

/// The GEMM on the device: (out, gelu_out) with the E4M3 mma (`mma`) or the BF16 fallback.
fn gpu_gemm(g: &Gpu, c: &Case, mma: bool, with_bias: bool, gelu: bool) -> (Vec<bf16>, Vec<bf16>) {
    let (rows, ic, oc) = (c.rows, c.ic, c.oc);
    let (xd, wd, bd) = (
        g.upload(&c.x).unwrap(),
        g.upload(&c.w).unwrap(),
        g.upload(&c.bias).unwrap(),
    );
    let (sx, sw) = (poisoned::<f32>(g, 2), poisoned::<f32>(g, 2));
    let partials = poisoned::<f32>(g, kfp8::amax_partials_len((rows * ic).max(oc * ic)));
    kfp8::tensor_scale(
        g,
        Ptr::of(&sx),
        Ptr::of(&partials),
        Ptr::of(&xd),
        rows * ic,
        None,
    )
    .unwrap();
    kfp8::tensor_scale(
        g,
        Ptr::of(&sw),
        Ptr::of(&partials),
        Ptr::of(&wd),
        oc * ic,
        None,
    )
    .unwrap();
    let out = poisoned::<bf16>(g, rows * oc);
    let ge = poisoned::<bf16>(g, rows * oc);
    let bias = with_bias.then(|| Ptr::of(&bd));
    let gelu_out = gelu.then(|| Ptr::of(&ge));
    if mma {
        let (xq, wq) = (poisoned::<u8>(g, rows * ic), poisoned::<u8>(g, oc * ic));
        kfp8::quantize(
            g,
            Fp8Operand::E4m3(Ptr::of(&xq)),
            Ptr::of(&xd),
            rows * ic,
            Ptr::of(&sx),
        )
        .unwrap();
        kfp8::quantize(
            g,
            Fp8Operand::E4m3(Ptr::of(&wq)),
            Ptr::of(&wd),
            oc * ic,
            Ptr::of(&sw),
        )
        .unwrap();
        kfp8::gemm(
            g,
            Ptr::of(&out),
            gelu_out,
            Fp8Operand::E4m3(Ptr::of(&xq)),
            Fp8Operand::E4m3(Ptr::of(&wq)),
            bias,
            Ptr::of(&sx),
            Ptr::of(&sw),
            rows,
            ic,
            oc,
        )
        .unwrap();
    } else {
        let (xq, wq) = (poisoned::<bf16>(g, rows * ic), poisoned::<bf16>(g, oc * ic));
        kfp8::quantize(
            g,
            Fp8Operand::Bf16(Ptr::of(&xq)),
            Ptr::of(&xd),
            rows * ic,
            Ptr::of(&sx),
        )
        .unwrap();
        kfp8::quantize(
            g,
            Fp8Operand::Bf16(Ptr::of(&wq)),
            Ptr::of(&wd),
            oc * ic,
            Ptr::of(&sw),
        )
        .unwrap();
        kfp8::gemm(
            g,
            Ptr::of(&out),
            gelu_out,
            Fp8Operand::Bf16(Ptr::of(&xq)),
            Fp8Operand::Bf16(Ptr::of(&wq)),
            bias,
            Ptr::of(&sx),
            Ptr::of(&sw),
            rows,
            ic,
            oc,
        )
        .unwrap();
    }
    (g.download(&out).unwrap(), g.download(&ge).unwrap())
}

fn gelu64(x: f64) -> f64 {
    0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
}

/// Output within FP32 summation error of the exact formula (f64 from the CPU's quantized
/// operands) plus half a bf16 ulp; gelu_out within bf16 rounding of gelu(out).
fn check_gemm(what: &str, c: &Case, with_bias: bool, gelu: bool, got: &(Vec<bf16>, Vec<bf16>)) {
    let (rows, ic, oc) = (c.rows, c.ic, c.oc);
    let xf: Vec<f32> = c.x.iter().map(|v| v.to_f32()).collect();
    let wf: Vec<f32> = c.w.iter().map(|v| v.to_f32()).collect();
    let (sx, sw) = (
        fp8::tensor_scale(fp8::amax(&xf)),
        fp8::tensor_scale(fp8::amax(&wf)),
    );
    let (xq, wq) = (fp8::quantize_to_f32(&xf, sx), fp8::quantize_to_f32(&wf, sw));
    let s = (sx * sw) as f64;
    for r in 0..rows {
        for o in 0..oc {
            let (mut acc, mut mag) = (0.0f64, 0.0f64);
            for k in 0..ic {
                let p = xq[r * ic + k] as f64 * wq[o * ic + k] as f64;
                acc += p;
                mag += p.abs();
            }
            let b = if with_bias {
                c.bias[o].to_f32() as f64
            } else {
                0.0
            };
            let want = acc / s + b;
            let tol = ic as f64 * 2f64.powi(-24) * mag / s
                + 2f64.powi(-8) * want.abs()
                + 2f64.powi(-22) * (acc.abs() / s + b.abs());
            let gv = got.0[r * oc + o].to_f32() as f64;
            assert!(
                (gv - want).abs() <= tol,
                "{what} {rows}x{ic}x{oc}: out[{r}, {o}] = {gv}, want {want} (tol {tol:e})"
            );
            if gelu {
                let gg = got.1[r * oc + o].to_f32() as f64;
                let wg = gelu64(gv);
                assert!(
                    (gg - wg).abs() <= 2f64.powi(-8) * wg.abs() + 1e-6,
                    "{what}: gelu_out[{r}, {o}] = {gg}, gelu(out) = {wg}"
                );
            }
        }
    }
}

#[test]
fn gemm_paths_match_the_exact_formula() {
    let g = gpu();
    let mut rng = Rng(77);
    // Ragged rows and oc (tile edges), ic of part of one stage (16), one stage, several and a
    // ragged last stage (80 bytes of e4m3, 160 of bf16).
    for &(rows, ic, oc) in &[(1, 16, 1), (37, 64, 45), (130, 80, 20), (64, 256, 136)] {
        let c = case(&mut rng, rows, ic, oc);
        for mma in [true, false] {
            for (with_bias, gelu) in [(true, false), (false, false), (true, true)] {
                let got = gpu_gemm(&g, &c, mma, with_bias, gelu);
                let what = format!(
                    "{} bias={with_bias} gelu={gelu}",
                    if mma { "e4m3 mma" } else { "bf16 fallback" }
                );
                check_gemm(&what, &c, with_bias, gelu, &got);
            }
        }
    }
}

#[test]
fn kernels_give_the_same_bits_under_every_schedule() {
    let mut rng = Rng(5);
    let c = case(&mut rng, 72, 96, 40);
    let run = |s: Schedule| -> Vec<Vec<u16>> {
        let g = Gpu::harness(s);
        [true, false]
            .iter()
            .flat_map(|&mma| {
                let (o, ge) = gpu_gemm(&g, &c, mma, true, true);
                [o, ge]
            })
            .map(|v| v.iter().map(|x| x.to_bits()).collect())
            .collect()
    };
    let want = run(Schedule::InOrder);
    for s in [Schedule::Reverse, Schedule::Random(3), Schedule::Random(11)] {
        assert!(
            run(s) == want,
            "{s:?} gives other bits than the in-order schedule"
        );
    }
}

#[test]
fn launchers_reject_what_the_kernels_cannot_do() {
    let g = gpu();
    let (o, x8, x16) = (
        poisoned::<bf16>(&g, 64 * 64),
        poisoned::<u8>(&g, 64 * 64),
        poisoned::<bf16>(&g, 64 * 64),
    );
    let s = poisoned::<f32>(&g, 2);
    let e = |r: runtime::cuda::Result<()>| r.unwrap_err().to_string();
    let gemm = |xq, wq, ic| {
        kfp8::gemm(
            &g,
            Ptr::of(&o),
            None,
            xq,
            wq,
            None,
            Ptr::of(&s),
            Ptr::of(&s),
            8,
            ic,
            8,
        )
    };
    let msg = e(gemm(
        Fp8Operand::E4m3(Ptr::of(&x8)),
        Fp8Operand::E4m3(Ptr::of(&x8)),
        40,
    ));
    assert!(msg.contains("ic = 40") && msg.contains("16"), "{msg}");
    let msg = e(gemm(
        Fp8Operand::E4m3(Ptr::of(&x8)),
        Fp8Operand::Bf16(Ptr::of(&x16)),
        32,
    ));
    assert!(msg.contains("same type"), "{msg}");
    // Recording into a slot outside the ring.
    let ring = poisoned::<f32>(&g, 4);
    let msg = e(kfp8::tensor_scale(
        &g,
        Ptr::of(&s),
        Ptr::of(&ring),
        Ptr::of(&x16),
        64,
        Some(History {
            ring: Ptr::of(&ring).slice(0, 2),
            record: Record::Slot(2),
        }),
    ));
    assert!(msg.contains("slot"), "{msg}");
}
