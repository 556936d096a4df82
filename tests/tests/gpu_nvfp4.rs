//! The NVFP4 kernels against the CPU contract gpt::mx::nvfp4 (docs/numerics.md section 10):
//!
//! - quantize (ptx/kernels/nvfp4_quantize.cu: tensor amax, tensor scale, fused RHT + quantize):
//!   codes, E4M3 scale bytes, the tensor amax and s_enc BIT-IDENTICAL to `quantize_rows` on the
//!   same bf16 values (after the recipe's 16-point RHT when asked), both layouts, RTN and SR,
//!   with and without the transform, on fresh random operands (K a multiple of 16 that is not
//!   always one of 32 or 256) and on edge tensors: NaN / inf blocks, zero and signed-zero
//!   blocks, E2M1 ties, E4M3 scale ties (normal and subnormal), scales that underflow E4M3 to
//!   0, scale rounding that pushes |y| above 6, a tensor so small that s_enc clamps to the
//!   largest f32, an all-zero tensor. Telemetry equals the CPU's sums to rounding.
//! - the GEMM (ptx/kernels/nvfp4_gemm.cu, mma and plain kernels): output bits equal the bf16
//!   rounding of `nvfp4_gemm_reference` (which the kernels reproduce exactly before that
//!   rounding), with and without accumulation, with a NaN block, on ragged shapes; quantize
//!   then GEMM end to end against the CPU's backward_gemm within FP32 summation order.
//!
//! Every output is poisoned (0xFF bytes, NaN) before each launch.

use gpt::cuda::kernels::mx::{self as kmx, Layout};
use gpt::cuda::kernels::nvfp4::{self, Nvfp4GemmKernel, Nvfp4Out, Nvfp4Ref, Nvfp4Spec};
use gpt::cuda::kernels::Ptr;
use gpt::mx::format::pack_codes;
use gpt::mx::nvfp4::{nvfp4_gemm_reference, quantize_rows, Nvfp4Operand, SIGN_STREAM};
use gpt::mx::{hadamard, MxTelemetry, Rounding};
use runtime::cuda::half::bf16;
use runtime::cuda::Gpu;
use tests::gpu::{gpu, poisoned, Rng};

const SEED: u64 = 0x0123_4567_89AB_CDEF;

fn spec(layout: Layout, rounding: Rounding, rht: bool) -> Nvfp4Spec {
    Nvfp4Spec {
        layout,
        rounding,
        seed: SEED,
        sr_stream: (3 << 32) | 0x0102_0208,
        rht,
    }
}

/// The K-major f32 operand the CPU quantizes: `src` [r, c] read along K, then the recipe's RHT.
fn k_major(src: &[bf16], r: usize, c: usize, sp: &Nvfp4Spec) -> (Vec<f32>, usize, usize) {
    let (rows, k) = sp.layout.shape(r, c);
    let mut x: Vec<f32> = (0..rows * k)
        .map(|i| {
            let (row, kk) = (i / k, i % k);
            match sp.layout {
                Layout::Rowwise => src[row * c + kk],
                Layout::Colwise => src[kk * c + row],
            }
            .to_f32()
        })
        .collect();
    if sp.rht {
        let signs = hadamard::rht_signs(sp.seed, SIGN_STREAM, 16);
        for row in x.chunks_exact_mut(k) {
            hadamard::rht_row(row, &signs);
        }
    }
    (x, rows, k)
}

struct GpuQuant {
    packed: Vec<u8>,
    scales: Vec<u8>,
    enc: Vec<f32>,
    telemetry: [f64; 5],
}

fn gpu_quantize(g: &Gpu, src: &[bf16], r: usize, c: usize, sp: &Nvfp4Spec) -> GpuQuant {
    let (rows, k) = sp.layout.shape(r, c);
    let s = g.upload(src).unwrap();
    let codes = poisoned::<u8>(g, rows * k / 2);
    let scales = poisoned::<u8>(g, rows * k / 16);
    let enc = poisoned::<f32>(g, 2);
    let amax = poisoned::<f32>(g, nvfp4::amax_partials_len(rows, k));
    let np = kmx::telemetry_partials_len(rows, k);
    let partials = poisoned::<f64>(g, np);
    let acc = g.upload(&[0.0f64; kmx::TELEMETRY_FIELDS]).unwrap();
    nvfp4::quantize(
        g,
        Ptr::of(&s),
        r,
        c,
        sp,
        Nvfp4Out {
            codes: Ptr::of(&codes),
            scales: Ptr::of(&scales),
            enc: Ptr::of(&enc),
            amax_partials: Ptr::of(&amax),
            partials: Some(Ptr::of(&partials)),
        },
    )
    .unwrap();
    kmx::telemetry_accumulate(
        g,
        Ptr::of(&acc),
        None,
        Ptr::of(&partials),
        np / kmx::TELEMETRY_FIELDS,
    )
    .unwrap();
    let t = g.download(&acc).unwrap();
    GpuQuant {
        packed: g.download(&codes).unwrap(),
        scales: g.download(&scales).unwrap(),
        enc: g.download(&enc).unwrap(),
        telemetry: [t[0], t[1], t[2], t[3], t[4]],
    }
}

/// Quantizes on both sides and requires identical bits; returns the CPU's operand.
fn check(what: &str, g: &Gpu, src: &[bf16], r: usize, c: usize, sp: &Nvfp4Spec) -> Nvfp4Operand {
    let (x, rows, k) = k_major(src, r, c, sp);
    let (want, tel): (Nvfp4Operand, MxTelemetry) =
        quantize_rows(&x, rows, k, sp.rounding, sp.seed, sp.sr_stream).unwrap();
    let got = gpu_quantize(g, src, r, c, sp);
    let amax = gpt::mx::fp8::amax(&x);
    assert_eq!(
        got.enc[0].to_bits(),
        amax.to_bits(),
        "{what}: tensor amax {} vs {amax}",
        got.enc[0]
    );
    assert_eq!(
        got.enc[1].to_bits(),
        want.s_enc.to_bits(),
        "{what}: s_enc {} vs {}",
        got.enc[1],
        want.s_enc
    );
    let nblk = k / 16;
    for (i, (a, b)) in got.scales.iter().zip(&want.scales).enumerate() {
        assert_eq!(
            a,
            b,
            "{what}: scale of row {} block {} (GPU {a:#04x}, CPU {b:#04x})",
            i / nblk,
            i % nblk
        );
    }
    let want_packed = pack_codes(&want.codes);
    assert_eq!(got.packed.len(), want_packed.len());
    for (i, (a, b)) in got.packed.iter().zip(&want_packed).enumerate() {
        assert_eq!(
            a,
            b,
            "{what}: codes of row {} elements {}..{} (x = {:e}, {:e}; scale byte {:#04x}, s_enc {})",
            2 * i / k,
            2 * i % k,
            2 * i % k + 1,
            x[2 * i],
            x[2 * i + 1],
            want.scales[2 * i / 16],
            want.s_enc
        );
    }
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs() + 1e-300;
    assert!(
        close(got.telemetry[0], tel.sq_err),
        "{what}: sq_err {} vs {}",
        got.telemetry[0],
        tel.sq_err
    );
    assert!(
        close(got.telemetry[1], tel.sq_sum),
        "{what}: sq_sum {} vs {}",
        got.telemetry[1],
        tel.sq_sum
    );
    assert_eq!(got.telemetry[2], tel.clipped as f64, "{what}: clipped");
    assert_eq!(
        got.telemetry[3], tel.nonfinite_blocks as f64,
        "{what}: non-finite blocks"
    );
    assert_eq!(got.telemetry[4], tel.underflow as f64, "{what}: underflows");
    want
}

/// A K-major matrix [rows, k] as the source of `layout` ([r, c] row-major).
fn as_source(x: &[bf16], rows: usize, k: usize, layout: Layout) -> (Vec<bf16>, usize, usize) {
    match layout {
        Layout::Rowwise => (x.to_vec(), rows, k),
        Layout::Colwise => {
            let mut t = vec![bf16::ZERO; rows * k];
            for r in 0..rows {
                for kk in 0..k {
                    t[kk * rows + r] = x[r * k + kk];
                }
            }
            (t, k, rows)
        }
    }
}

/// Gradient-like values: rows of very different magnitudes (so block scales span the E4M3
/// range, some underflowing it) and occasional outliers.
fn gradient_like(rng: &mut Rng, rows: usize, k: usize) -> Vec<bf16> {
    (0..rows * k)
        .map(|i| {
            let row_scale = 2f32.powi((i / k % 11) as i32 * 2 - 16);
            let v = (rng.f32(1.0) + rng.f32(1.0) + rng.f32(1.0)) * row_scale;
            bf16::from_f32(if i % 89 == 7 { v * 60.0 } else { v })
        })
        .collect()
}

#[test]
fn random_operands_bit_identical_in_every_mode() {
    let g = gpu();
    let mut rng = Rng(41);
    // (rows, k): rows not a multiple of 32 (but of 8: colwise reads 8 source columns at a time),
    // k a multiple of 16 that is not one of 32 (48, 272), of 256 exactly, and more than a tile.
    for (rows, k) in [(40, 256), (24, 48), (56, 272), (8, 512)] {
        for layout in [Layout::Rowwise, Layout::Colwise] {
            for rounding in [Rounding::Rtn, Rounding::Sr] {
                for rht in [false, true] {
                    let x = gradient_like(&mut rng, rows, k);
                    let (src, r, c) = as_source(&x, rows, k, layout);
                    check(
                        &format!("{layout:?} {rounding:?} rht={rht} rows={rows} k={k}"),
                        &g,
                        &src,
                        r,
                        c,
                        &spec(layout, rounding, rht),
                    );
                }
            }
        }
    }
}

/// 16-element blocks, each padded with `fill` after its probes.
fn block(probe: &[f32], fill: f32) -> Vec<f32> {
    let mut b = vec![fill; 16];
    b[..probe.len()].copy_from_slice(probe);
    b
}

/// A tensor of `blocks` (each one row's first block; the rest of the row random below
/// `fill_scale`), rows padded to a multiple of 8 with random rows.
fn tensor(rng: &mut Rng, blocks: &[Vec<f32>], k: usize, fill_scale: f32) -> (Vec<bf16>, usize) {
    let rows = blocks.len().div_ceil(8) * 8;
    let mut x = Vec::with_capacity(rows * k);
    for b in blocks {
        for &v in b {
            let h = bf16::from_f32(v);
            assert!(
                h.to_f32() == v || (v.is_nan() && h.is_nan()),
                "edge value {v:e} is not exact in bf16"
            );
            x.push(h);
        }
        x.extend(rng.vec_bf16(k - 16, fill_scale));
    }
    x.extend(rng.vec_bf16((rows - blocks.len()) * k, fill_scale));
    (x, rows)
}

/// Every layout and rounding; returns the CPU's rowwise RTN operand (to check that the edges
/// were hit).
fn check_all_modes(what: &str, g: &Gpu, x: &[bf16], rows: usize, k: usize) -> Nvfp4Operand {
    for layout in [Layout::Rowwise, Layout::Colwise] {
        for rounding in [Rounding::Rtn, Rounding::Sr] {
            let (src, r, c) = as_source(x, rows, k, layout);
            check(
                &format!("{what} {layout:?} {rounding:?}"),
                g,
                &src,
                r,
                c,
                &spec(layout, rounding, false),
            );
        }
    }
    let (xf, ..) = k_major(x, rows, k, &spec(Layout::Rowwise, Rounding::Rtn, false));
    quantize_rows(&xf, rows, k, Rounding::Rtn, SEED, 0)
        .unwrap()
        .0
}

#[test]
fn edge_tensors_bit_identical() {
    let g = gpu();
    let mut rng = Rng(17);
    let k = 48;
    let p = |e: i32| 2f32.powi(e);

    // Tensor amax 6: s_enc = 448, and a block of amax 6 has scale 448 and r = 1, so the E2M1
    // ties 0.25 0.75 1.25 1.75 2.5 3.5 5 are exact (to the even code, both signs).
    let a = vec![
        block(
            &[
                6.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.25, -0.75, -1.25, -1.75, -2.5, -3.5,
                -5.0, -6.0,
            ],
            0.0,
        ),
        block(&[5.875, 1.0], 0.5), // t = 438.7 rounds up to 448: r = 1, 5.875 -> 6; and 5.9-like
        block(&[3.0, 1.0, -0.5], 0.0), // scale 224 (0x76), r = 2
        vec![0.0; 16],             // zero block: scale 0
        block(&[-0.0, 0.0, -0.0], 0.0), // signed zeros
        block(&[f32::NAN], 1.0),   // non-finite blocks
        block(&[1.0, f32::INFINITY], -2.0),
        block(&[f32::NEG_INFINITY], 0.5),
        block(&[p(-20), -p(-21)], p(-22)), // t = 2^-20 / 6 * 448 ~ 7e-5: underflows E4M3 to 0
    ];
    let (x, rows) = tensor(&mut rng, &a, k, 1.0);
    let op = check_all_modes("amax-6 tensor", &g, &x, rows, k);
    // The edges were hit: scale bytes of the first block of each row, and the ties of row 0.
    let first: Vec<u8> = (0..a.len()).map(|r| op.scales[r * k / 16]).collect();
    assert_eq!(first, [0x7E, 0x7E, 0x76, 0, 0, 0x7F, 0x7F, 0x7F, 0]);
    assert_eq!(
        &op.codes[..16],
        &[7, 0, 2, 2, 4, 4, 6, 6, 8, 10, 10, 12, 12, 14, 14, 15]
    );

    // Tensor amax 5.25: s_enc = 512, t = amax_b / 6 * 512 exact for amax_b = 6 m 2^-13:
    // E4M3 ties at 1.0625 (-> 1.0, 0x38), 1.1875 (-> 1.25, 0x3A), subnormal 1.5 2^-9 (-> 2^-8),
    // and 2^-10 (half the smallest subnormal -> 0: codes 0); a subnormal scale 3 2^-9.
    let b = vec![
        block(&[5.25], 0.125),
        block(&[102.0 * p(-13), -50.0 * p(-13)], 3.0 * p(-13)),
        block(&[114.0 * p(-13), 57.0 * p(-13)], -p(-13)),
        block(&[18.0 * p(-19), 9.0 * p(-19), -3.0 * p(-19)], p(-20)),
        block(&[6.0 * p(-19), -p(-19)], 0.0),
        block(
            &[36.0 * p(-19), 12.0 * p(-19), -24.0 * p(-19)],
            2.0 * p(-19),
        ),
    ];
    let (x, rows) = tensor(&mut rng, &b, k, 0.01);
    let op = check_all_modes("amax-5.25 tensor", &g, &x, rows, k);
    assert_eq!(op.s_enc, 512.0);
    let first: Vec<u8> = (0..b.len()).map(|r| op.scales[r * k / 16]).collect();
    assert_eq!(first, [0x7E, 0x38, 0x3A, 0x02, 0x00, 0x03]);

    // A tensor so small that 2688 / amax overflows: s_enc = the largest f32, and r = s_enc / s_b
    // can be infinite (0 * inf = NaN: code 0, with x's sign bit).
    let c = vec![
        block(&[p(-126), -p(-127), 0.0, -0.0], p(-130)),
        block(&[p(-133), 0.0, -0.0], -p(-133)),
        block(&[3.0 * p(-128)], p(-129)),
    ];
    let (x, rows) = tensor(&mut rng, &c, k, p(-128));
    let (src, r, cc) = as_source(&x, rows, k, Layout::Rowwise);
    let op = check(
        "tiny tensor",
        &g,
        &src,
        r,
        cc,
        &spec(Layout::Rowwise, Rounding::Rtn, false),
    );
    assert_eq!(op.s_enc, f32::MAX, "the tiny tensor's s_enc clamps");
    check_all_modes("tiny tensor", &g, &x, rows, k);

    // An all-zero tensor: s_enc = 1, every scale 0.
    let x = vec![bf16::ZERO; 16 * k];
    let op = check(
        "zero tensor",
        &g,
        &x,
        16,
        k,
        &spec(Layout::Rowwise, Rounding::Sr, false),
    );
    assert_eq!(op.s_enc, 1.0);
    check_all_modes("zero tensor", &g, &x, 16, k);
}

#[test]
fn rht_mixes_a_nonfinite_value_into_its_segment_only() {
    let g = gpu();
    let (rows, k) = (8, 64);
    let mut rng = Rng(5);
    let mut x = rng.vec_bf16(rows * k, 1.0);
    x[k + 20] = bf16::from_f32(f32::NAN);
    x[5 * k + 63] = bf16::from_f32(f32::INFINITY);
    for layout in [Layout::Rowwise, Layout::Colwise] {
        let (src, r, c) = as_source(&x, rows, k, layout);
        let sp = spec(layout, Rounding::Sr, true);
        check(&format!("nonfinite RHT {layout:?}"), &g, &src, r, c, &sp);
        let got = gpu_quantize(&g, &src, r, c, &sp);
        let nan_blocks: Vec<usize> = (0..rows * k / 16)
            .filter(|&i| got.scales[i] == 0x7F)
            .collect();
        assert_eq!(nan_blocks, vec![4 + 1, 20 + 3], "{layout:?}");
        assert_eq!(got.telemetry[3], 2.0);
        assert!(got.telemetry[4] > 0.0, "{layout:?}: no underflow counted");
    }
}

// ---- the GEMM -------------------------------------------------------------------------------

/// A CPU-quantized operand [rows, k] of gradient-like values.
fn cpu_operand(
    rng: &mut Rng,
    rows: usize,
    k: usize,
    rounding: Rounding,
    nan_at: Option<usize>,
) -> Nvfp4Operand {
    let mut x: Vec<f32> = gradient_like(rng, rows, k)
        .iter()
        .map(|v| v.to_f32())
        .collect();
    if let Some(i) = nan_at {
        x[i] = f32::NAN;
    }
    quantize_rows(&x, rows, k, rounding, 9, 4).unwrap().0
}

struct DevOperand {
    codes: runtime::cuda::DeviceBuffer<u8>,
    scales: runtime::cuda::DeviceBuffer<u8>,
    enc: runtime::cuda::DeviceBuffer<f32>,
}

impl DevOperand {
    fn upload(g: &Gpu, op: &Nvfp4Operand) -> DevOperand {
        DevOperand {
            codes: g.upload(&pack_codes(&op.codes)).unwrap(),
            scales: g.upload(&op.scales).unwrap(),
            // enc[0] (the amax) is not read by the GEMM: NaN proves it.
            enc: g.upload(&[f32::NAN, op.s_enc]).unwrap(),
        }
    }
    fn r(&self) -> Nvfp4Ref<'_> {
        Nvfp4Ref {
            codes: Ptr::of(&self.codes),
            scales: Ptr::of(&self.scales),
            enc: Ptr::of(&self.enc),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn gemm_matches_reference(
    g: &Gpu,
    kernel: Nvfp4GemmKernel,
    a: &Nvfp4Operand,
    b: &Nvfp4Operand,
    init: Option<&[bf16]>,
    what: &str,
) {
    let (m, n, k) = (a.rows, b.rows, a.k);
    let (da, db) = (DevOperand::upload(g, a), DevOperand::upload(g, b));
    let c = match init {
        Some(v) => g.upload(v).unwrap(),
        None => poisoned::<bf16>(g, m * n),
    };
    nvfp4::gemm_with(
        g,
        kernel,
        Ptr::of(&c),
        da.r(),
        db.r(),
        m,
        n,
        k,
        init.is_some(),
    )
    .unwrap();
    let got = g.download(&c).unwrap();
    let mut want: Vec<f32> = match init {
        Some(v) => v.iter().map(|x| x.to_f32()).collect(),
        None => vec![0.0; m * n],
    };
    nvfp4_gemm_reference(a, b, &mut want, n, init.is_some());
    for i in 0..m * n {
        let w = bf16::from_f32(want[i]);
        let same = if w.is_nan() {
            got[i].is_nan()
        } else {
            got[i].to_bits() == w.to_bits()
        };
        assert!(
            same,
            "{what} {kernel:?} {m}x{n}x{k}: C[{}, {}] = {} but the reference rounds to {} ({})",
            i / n,
            i % n,
            got[i],
            w,
            want[i]
        );
    }
}

#[test]
fn gemm_kernels_equal_the_reference_bit_for_bit() {
    let g = gpu();
    let mut rng = Rng(23);
    // Ragged M and N (tile edges), K of one and several stages, and K % 64 == 32 (a half stage).
    for &(m, n, k) in &[(1, 1, 32), (37, 45, 96), (130, 20, 256), (64, 136, 160)] {
        let a = cpu_operand(&mut rng, m, k, Rounding::Sr, None);
        let b = cpu_operand(&mut rng, n, k, Rounding::Rtn, None);
        for kernel in [Nvfp4GemmKernel::Mma, Nvfp4GemmKernel::Plain] {
            gemm_matches_reference(&g, kernel, &a, &b, None, "overwrite");
            let init = rng.vec_bf16(m * n, 0.5);
            gemm_matches_reference(&g, kernel, &a, &b, Some(&init), "accumulate");
        }
    }
    // K % 32 == 16: only the plain kernel; the launcher's choice must be it.
    let (m, n, k) = (9, 12, 48);
    let a = cpu_operand(&mut rng, m, k, Rounding::Rtn, None);
    let b = cpu_operand(&mut rng, n, k, Rounding::Rtn, None);
    assert_eq!(Nvfp4GemmKernel::for_k(k), Nvfp4GemmKernel::Plain);
    gemm_matches_reference(&g, Nvfp4GemmKernel::Plain, &a, &b, None, "K % 32 == 16");
    // A non-finite block of A makes its output row NaN, as on the CPU.
    let (m, n, k) = (20, 24, 64);
    let a = cpu_operand(&mut rng, m, k, Rounding::Sr, Some(3 * k + 40));
    let b = cpu_operand(&mut rng, n, k, Rounding::Rtn, None);
    for kernel in [Nvfp4GemmKernel::Mma, Nvfp4GemmKernel::Plain] {
        gemm_matches_reference(&g, kernel, &a, &b, None, "NaN block");
    }
}

#[test]
fn quantize_then_gemm_is_the_cpu_backward_gemm() {
    // The whole NVFP4 wgrad of the recipe on the GPU (SR + RHT on dY^T, RHT on X, both quantized
    // along the tokens) against gpt::mx::nvfp4::backward_gemm on the same bf16 values: the
    // quantized operands are bit-identical (tested above), so the outputs differ only by the
    // CPU fast GEMM's FP32 summation order and the bf16 rounding of the GPU's output.
    let g = gpu();
    let mut rng = Rng(99);
    let (tokens, oc, ic) = (96, 40, 24);
    let dy = gradient_like(&mut rng, tokens, oc);
    let x = rng.vec_bf16(tokens * ic, 1.0);
    let (dd, dx) = (g.upload(&dy).unwrap(), g.upload(&x).unwrap());
    let quant = |src: &runtime::cuda::DeviceBuffer<bf16>, c: usize, rounding| {
        let rows = c;
        let codes = poisoned::<u8>(&g, rows * tokens / 2);
        let scales = poisoned::<u8>(&g, rows * tokens / 16);
        let enc = poisoned::<f32>(&g, 2);
        let amax = poisoned::<f32>(&g, nvfp4::amax_partials_len(rows, tokens));
        let mut sp = spec(Layout::Colwise, rounding, true);
        sp.sr_stream = 777;
        nvfp4::quantize(
            &g,
            Ptr::of(src),
            tokens,
            c,
            &sp,
            Nvfp4Out {
                codes: Ptr::of(&codes),
                scales: Ptr::of(&scales),
                enc: Ptr::of(&enc),
                amax_partials: Ptr::of(&amax),
                partials: None,
            },
        )
        .unwrap();
        (codes, scales, enc)
    };
    let (ca, sa, ea) = quant(&dd, oc, Rounding::Sr);
    let (cb, sb, eb) = quant(&dx, ic, Rounding::Rtn);
    let out = poisoned::<bf16>(&g, oc * ic);
    let r = |c, s, e| Nvfp4Ref {
        codes: Ptr::of(c),
        scales: Ptr::of(s),
        enc: Ptr::of(e),
    };
    nvfp4::gemm(
        &g,
        Ptr::of(&out),
        r(&ca, &sa, &ea),
        r(&cb, &sb, &eb),
        oc,
        ic,
        tokens,
        false,
    )
    .unwrap();
    let got = g.download(&out).unwrap();
    // (1) Bit for bit: the CPU's quantization of the same transformed operands, then the
    // reference GEMM, rounded to bf16.
    let sp = |rounding| Nvfp4Spec {
        sr_stream: 777,
        ..spec(Layout::Colwise, rounding, true)
    };
    let (xa, _, _) = k_major(&dy, tokens, oc, &sp(Rounding::Sr));
    let (xb, _, _) = k_major(&x, tokens, ic, &sp(Rounding::Rtn));
    let qa = quantize_rows(&xa, oc, tokens, Rounding::Sr, SEED, 777)
        .unwrap()
        .0;
    let qb = quantize_rows(&xb, ic, tokens, Rounding::Rtn, SEED, 777)
        .unwrap()
        .0;
    let mut reference = vec![0.0f32; oc * ic];
    nvfp4_gemm_reference(&qa, &qb, &mut reference, ic, false);
    for i in 0..oc * ic {
        assert_eq!(
            got[i].to_bits(),
            bf16::from_f32(reference[i]).to_bits(),
            "dW[{}, {}]: GPU {}, reference {}",
            i / ic,
            i % ic,
            got[i],
            reference[i]
        );
    }
    // (2) The CPU backend's NVFP4 wgrad (its own gather, transform, streams and fast GEMM):
    // equal up to FP32 summation order, |C - exact| <= (K + 2) 2^-23 sum_k |a_k b_k|, plus the
    // GPU output's bf16 rounding (half an ulp: at most 2^-8 of the value).
    let dyf: Vec<f32> = dy.iter().map(|v| v.to_f32()).collect();
    let xf: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
    let mut want = vec![0.0f32; oc * ic];
    use gpt::cpu::gemm::MatRef;
    gpt::mx::nvfp4::backward_gemm(
        gpt::mx::nvfp4::Nvfp4Recipe {
            sr_gradient: true,
            rht_wgrad: true,
        },
        true,
        SEED,
        777,
        MatRef::transposed(&dyf, oc, tokens),
        MatRef::row_major(&xf, tokens, ic),
        &mut want,
        ic,
        false,
        None,
    )
    .unwrap();
    let (da, db) = (qa.dequantize(), qb.dequantize());
    for i in 0..oc * ic {
        let (m, n) = (i / ic, i % ic);
        let s: f64 = (0..tokens)
            .map(|k| (da[m * tokens + k] * db[n * tokens + k]).abs())
            .sum();
        let (a, b) = (got[i].to_f32() as f64, want[i] as f64);
        let tol = 2f64.powi(-8) * b.abs() + 2.0 * (tokens as f64 + 2.0) * 2f64.powi(-23) * s;
        assert!(
            (a - b).abs() <= tol,
            "dW[{m}, {n}]: GPU {a}, CPU backend {b} (tol {tol:e})"
        );
    }
}

#[test]
fn launchers_reject_what_the_kernels_cannot_do() {
    let g = gpu();
    let src = poisoned::<bf16>(&g, 64 * 64);
    let codes = poisoned::<u8>(&g, 64 * 64);
    let scales = poisoned::<u8>(&g, 64 * 64);
    let enc = poisoned::<f32>(&g, 2);
    let amax = poisoned::<f32>(&g, 64);
    let out = || Nvfp4Out {
        codes: Ptr::of(&codes),
        scales: Ptr::of(&scales),
        enc: Ptr::of(&enc),
        amax_partials: Ptr::of(&amax),
        partials: None,
    };
    let e = |r: runtime::cuda::Result<()>| r.unwrap_err().to_string();
    // K = 40 is not a multiple of 16.
    let msg = e(nvfp4::quantize(
        &g,
        Ptr::of(&src),
        64,
        40,
        &spec(Layout::Rowwise, Rounding::Rtn, false),
        out(),
    ));
    assert!(msg.contains("K = 40") && msg.contains("16"), "{msg}");
    // Columns not a multiple of 8.
    let msg = e(nvfp4::quantize(
        &g,
        Ptr::of(&src),
        48,
        36,
        &spec(Layout::Colwise, Rounding::Rtn, false),
        out(),
    ));
    assert!(msg.contains("multiple of 8"), "{msg}");
    // The mma kernel needs K % 32 == 0; tcgen05 needs a Blackwell GPU.
    let c = poisoned::<bf16>(&g, 64);
    let r = Nvfp4Ref {
        codes: Ptr::of(&codes),
        scales: Ptr::of(&scales),
        enc: Ptr::of(&enc),
    };
    let msg = e(nvfp4::gemm_with(
        &g,
        Nvfp4GemmKernel::Mma,
        Ptr::of(&c),
        r,
        r,
        8,
        8,
        48,
        false,
    ));
    assert!(msg.contains("K = 48") && msg.contains("32"), "{msg}");
    let msg = e(nvfp4::gemm_with(
        &g,
        Nvfp4GemmKernel::Tcgen05,
        Ptr::of(&c),
        r,
        r,
        8,
        8,
        64,
        false,
    ));
    if !tests::gpu::on_gpu(&g) {
        assert!(
            msg.contains("compute capability 9.0") && msg.contains("10.x"),
            "{msg}"
        );
    }
}

// ---- the Blackwell kernel (assembled only) --------------------------------------------------

/// nvfp4_gemm_tcgen05.cu, whose descriptor literals must be what the encoders produce.
const TCGEN05_SRC: &str = include_str!("../../ptx/kernels/nvfp4_gemm_tcgen05.cu");

/// The value of `#define NAME value` in the kernel source (hex or decimal, C suffixes dropped).
fn kernel_define(name: &str) -> u64 {
    let line = TCGEN05_SRC
        .lines()
        .find_map(|l| l.strip_prefix(&format!("#define {name} ")))
        .unwrap_or_else(|| panic!("no #define {name} in nvfp4_gemm_tcgen05.cu"));
    let v = line
        .split_whitespace()
        .next()
        .unwrap()
        .trim_end_matches(['u', 'l']);
    match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => v.parse(),
    }
    .unwrap_or_else(|e| panic!("#define {name} {line}: {e}"))
}

#[test]
fn tcgen05_kernel_is_assembled_only_with_the_encoders_constants() {
    use gpt::cuda::kernels::mx_tcgen05::{
        self as tc, instr_desc_mxf4, operand_desc, sf_desc, Mxf4InstrDesc,
    };
    // kind::mxf4nvf4 with UE4M3 scales: the kind::mxf4 descriptor with bit 23 (scale type
    // UE8M0) cleared, scale-factor ids 0 (scale_vec::4X reads all four bytes of a word).
    let d = Mxf4InstrDesc {
        scale_ue8m0: false,
        ..Mxf4InstrDesc::dense(128, 128, 0, 0).unwrap()
    };
    assert_eq!(kernel_define("NVT_IDESC"), d.encode() as u64);
    assert_eq!(d.encode() ^ instr_desc_mxf4(128, 128, 0, 0), 1 << 23);
    assert_eq!(kernel_define("NVT_AB_DESC"), operand_desc(0));
    assert_eq!(kernel_define("NVT_SF_DESC"), sf_desc(0));
    assert_eq!(kernel_define("NVT_LBO"), tc::CORE_LBO as u64);
    assert_eq!(kernel_define("NVT_SBO"), tc::CORE_SBO as u64);
    assert_eq!(kernel_define("NVT_BK"), tc::K_STEP as u64);
    assert_eq!(kernel_define("NVT_THREADS"), tc::THREADS as u64);
    assert_eq!(kernel_define("NVT_SFA_COL"), tc::TMEM_SFA_COL as u64);
    assert_eq!(kernel_define("NVT_SFB_COL"), tc::TMEM_SFB_COL as u64);
    // The padding scale byte is E4M3 1.0.
    assert_eq!(
        gpt::mx::fp8::e4m3_to_f32(kernel_define("NVT_PAD_SCALE") as u8),
        1.0
    );
    // The harness lists it, not emulated, with nvfp4_gemm_mma's parameter list.
    let table = runtime::cuda::ptx::harness::kernels();
    let find = |module: &str, name: &str| {
        table
            .iter()
            .find(|k| k.module == module && k.name == name)
            .unwrap_or_else(|| panic!("the harness has no {module}::{name}"))
    };
    let tcgen = find("nvfp4_gemm_tcgen05", "nvfp4_gemm_tcgen05");
    let why = tcgen
        .not_emulated
        .expect("nvfp4_gemm_tcgen05 must be marked not emulated");
    assert!(why.contains("tcgen05"), "{why}");
    let mma = find("nvfp4_gemm", "nvfp4_gemm_mma");
    assert_eq!(mma.not_emulated, None);
    assert_eq!(tcgen.signature, mma.signature);
    assert_eq!(tcgen.param_sizes, mma.param_sizes);
}

#[test]
fn kernels_give_the_same_bits_under_every_schedule() {
    // Quantize (both layouts, SR + RHT) and both GEMMs under the harness's schedules: a missing
    // barrier or cp.async wait would make the bits depend on the order threads run in.
    let mut rng = Rng(61);
    let (rows, k) = (40, 272);
    let x = gradient_like(&mut rng, rows, k);
    let a = cpu_operand(&mut rng, 72, 128, Rounding::Sr, None);
    let b = cpu_operand(&mut rng, 40, 128, Rounding::Rtn, None);
    let run = |s: runtime::cuda::Schedule| -> Vec<Vec<u8>> {
        let g = Gpu::harness(s);
        let mut out = Vec::new();
        for layout in [Layout::Rowwise, Layout::Colwise] {
            let (src, r, c) = as_source(&x, rows, k, layout);
            let q = gpu_quantize(&g, &src, r, c, &spec(layout, Rounding::Sr, true));
            out.push(q.packed);
            out.push(q.scales);
        }
        let (da, db) = (DevOperand::upload(&g, &a), DevOperand::upload(&g, &b));
        for kernel in [Nvfp4GemmKernel::Mma, Nvfp4GemmKernel::Plain] {
            let c = poisoned::<bf16>(&g, 72 * 40);
            nvfp4::gemm_with(&g, kernel, Ptr::of(&c), da.r(), db.r(), 72, 40, 128, false).unwrap();
            out.push(
                g.download(&c)
                    .unwrap()
                    .iter()
                    .flat_map(|v| v.to_bits().to_le_bytes())
                    .collect(),
            );
        }
        out
    };
    use runtime::cuda::Schedule;
    let want = run(Schedule::InOrder);
    for s in [Schedule::Reverse, Schedule::Random(7), Schedule::Random(19)] {
        assert!(
            run(s) == want,
            "{s:?} gives other bits than the in-order schedule"
        );
    }
}
