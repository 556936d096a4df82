//! The MXFP4 quantize kernel (ptx/kernels/mx_quantize.cu) against the CPU reference gpt::mx on
//! the same bf16 values: codes, scales and the dequantized bf16 operand must be BIT-IDENTICAL,
//! for both layouts (rowwise along the contiguous dimension, colwise along the rows), RTN and
//! SR, with and without the random Hadamard transform at every block size g, on random data,
//! blocks with outliers, and the contract's edge vectors (zero blocks, -0, subnormal and
//! saturating scales, exact ties, values just below a power of two, NaN and Inf blocks).
//! Telemetry (squared error, clipped elements, non-finite blocks) must match the CPU's sums to
//! rounding (it is accumulated in a different order). Outputs are poisoned before every launch.

use gpt::cuda::kernels::mx::{self, Layout, QuantizeOut, QuantizeSpec, TELEMETRY_FIELDS};
use gpt::cuda::kernels::Ptr;
use gpt::mx::format::{e2m1_decode, e8m0_decode, pack_codes};
use gpt::mx::{hadamard, quantize_rows, MxOperand, MxTelemetry, Rounding};
use runtime::cuda::half::bf16;
use runtime::cuda::Gpu;
use tests::gpu::{gpu, poisoned, Rng};

/// The CPU reference on the K-major view of `src` ([r, c] row-major).
fn cpu_quantize(src: &[bf16], r: usize, c: usize, spec: &QuantizeSpec) -> (MxOperand, MxTelemetry) {
    let (rows, k) = spec.layout.shape(r, c);
    let mut x: Vec<f32> = (0..rows * k)
        .map(|i| {
            let (row, kk) = (i / k, i % k);
            match spec.layout {
                Layout::Rowwise => src[row * c + kk],
                Layout::Colwise => src[kk * c + row],
            }
            .to_f32()
        })
        .collect();
    if let Some(g) = spec.hadamard_block {
        let signs = hadamard::rht_signs(spec.seed, spec.sign_stream, g);
        for row in x.chunks_exact_mut(k) {
            hadamard::rht_row(row, &signs);
        }
    }
    quantize_rows(&x, rows, k, spec.rounding, spec.seed, spec.sr_stream).unwrap()
}

struct GpuResult {
    packed: Vec<u8>,
    scales: Vec<u8>,
    deq: Vec<bf16>,
    telemetry: [f64; 5],
}

fn gpu_quantize(g: &Gpu, src: &[bf16], r: usize, c: usize, spec: &QuantizeSpec) -> GpuResult {
    let (rows, k) = spec.layout.shape(r, c);
    let s = g.upload(src).unwrap();
    let codes = poisoned::<u8>(g, rows * k / 2);
    let scales = poisoned::<u8>(g, rows * k / 32);
    let deq = poisoned::<bf16>(g, rows * k);
    let np = mx::telemetry_partials_len(rows, k);
    let partials = poisoned::<f64>(g, np);
    let acc = g.upload(&[0.0f64; TELEMETRY_FIELDS]).unwrap();
    mx::quantize(
        g,
        Ptr::of(&s),
        r,
        c,
        spec,
        QuantizeOut {
            codes: Some(Ptr::of(&codes)),
            scales: Some(Ptr::of(&scales)),
            deq: Some(Ptr::of(&deq)),
            partials: Some(Ptr::of(&partials)),
        },
    )
    .unwrap();
    mx::telemetry_accumulate(
        g,
        Ptr::of(&acc),
        None,
        Ptr::of(&partials),
        np / TELEMETRY_FIELDS,
    )
    .unwrap();
    let t = g.download(&acc).unwrap();
    GpuResult {
        packed: g.download(&codes).unwrap(),
        scales: g.download(&scales).unwrap(),
        deq: g.download(&deq).unwrap(),
        telemetry: [t[0], t[1], t[2], t[3], t[4]],
    }
}

/// Codes, scales and dequantized values bit for bit; telemetry to rounding.
fn check(what: &str, src: &[bf16], r: usize, c: usize, spec: &QuantizeSpec, g: &Gpu) {
    let (want, tel) = cpu_quantize(src, r, c, spec);
    let got = gpu_quantize(g, src, r, c, spec);
    let (rows, k) = spec.layout.shape(r, c);
    assert_eq!(got.scales.len(), want.scales.len());
    for (i, (a, b)) in got.scales.iter().zip(&want.scales).enumerate() {
        assert_eq!(
            a,
            b,
            "{what}: scale of row {} block {}",
            i / (k / 32),
            i % (k / 32)
        );
    }
    let want_packed = pack_codes(&want.codes);
    for (i, (a, b)) in got.packed.iter().zip(&want_packed).enumerate() {
        assert_eq!(
            a,
            b,
            "{what}: codes of row {} elements {}..{} (scale byte {})",
            2 * i / k,
            2 * i % k,
            2 * i % k + 1,
            want.scales[2 * i / 32]
        );
    }
    for i in 0..rows * k {
        let scale = want.scales[i / 32];
        let v = (e2m1_decode(want.codes[i]) as f64 * e8m0_decode(scale)) as f32;
        let w = bf16::from_f32(v);
        let gv = got.deq[i];
        let same = if v.is_nan() {
            gv.is_nan()
        } else {
            gv.to_bits() == w.to_bits()
        };
        assert!(
            same,
            "{what}: dequantized element {i}: got {gv} want {w} (exact in bf16)"
        );
        assert!(
            v.is_nan() || w.to_f32() == v,
            "{what}: {v} is not exact in bf16"
        );
    }
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * b.abs() + 1e-300;
    let nonfinite = tel.nonfinite_blocks as f64;
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
    assert_eq!(got.telemetry[3], nonfinite, "{what}: non-finite blocks");
    assert_eq!(got.telemetry[4], tel.underflow as f64, "{what}: underflows");
}

fn spec(layout: Layout, rounding: Rounding, hadamard_block: Option<usize>) -> QuantizeSpec {
    QuantizeSpec {
        layout,
        rounding,
        seed: 0x1234_5678_9ABC_DEF0,
        sr_stream: (7 << 32) | 0x0301_0204,
        sign_stream: (7 << 32) | 0x0301_0206,
        hadamard_block,
    }
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

/// Gaussian-ish values with occasional outliers (x100), as gradients look.
fn gradient_like(rng: &mut Rng, n: usize) -> Vec<bf16> {
    (0..n)
        .map(|i| {
            let v = rng.f32(1.0) + rng.f32(1.0) + rng.f32(1.0);
            let v = if i % 97 == 13 { v * 100.0 } else { v * 0.01 };
            bf16::from_f32(v)
        })
        .collect()
}

#[test]
fn random_operands_bit_identical_in_every_mode() {
    let g = gpu();
    let mut rng = Rng(3);
    // (rows, k): rows not a multiple of 32 (but of 8: colwise reads 8 rows per 16 bytes), k a
    // multiple of 256, not one (320 = 256 + 64), small.
    for (rows, k) in [(40, 256), (56, 320), (8, 96), (64, 512)] {
        for layout in [Layout::Rowwise, Layout::Colwise] {
            for rounding in [Rounding::Rtn, Rounding::Sr] {
                for h in [None, Some(16), Some(32), Some(64), Some(128), Some(256)] {
                    if h.is_some_and(|h| k % h != 0) {
                        continue;
                    }
                    let x = gradient_like(&mut rng, rows * k);
                    let (src, r, c) = as_source(&x, rows, k, layout);
                    check(
                        &format!("{layout:?} {rounding:?} g={h:?} rows={rows} k={k}"),
                        &src,
                        r,
                        c,
                        &spec(layout, rounding, h),
                        &g,
                    );
                }
            }
        }
    }
}

/// 32-element blocks that hit each rule of the contract.
fn edge_blocks() -> Vec<Vec<f32>> {
    let mut blocks = Vec::new();
    let with = |fill: f32, probe: &[f32]| {
        let mut b = vec![fill; 32];
        b[..probe.len()].copy_from_slice(probe);
        b
    };
    blocks.push(vec![0.0; 32]); // zero block
    blocks.push(with(0.0, &[-0.0, 0.0, -0.0])); // signed zeros
                                                // amax 4 (e = 0): ties at 0.25 0.75 1.25 1.75 2.5 3.5 5 go to the even code; negatives too.
    blocks.push(with(
        4.0,
        &[
            0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.25, -0.75, -1.25, -1.75, -2.5, -3.5, -5.0,
            0.3, -0.2,
        ],
    ));
    // amax just below 8 (bf16 7.9375): e = 0, values in (6, 8) clip to 6.
    blocks.push(with(1.0, &[7.9375, 6.5, -7.0, 6.0]));
    // amax exactly 8: e = 1.
    blocks.push(with(0.5, &[8.0, -8.0, 3.0]));
    // Subnormal amax: bf16's smallest subnormal 2^-133, and 3 * 2^-128.
    blocks.push(vec![2f32.powi(-133); 32]);
    blocks.push(with(
        2f32.powi(-130),
        &[3.0 * 2f32.powi(-128), -2f32.powi(-133)],
    ));
    // Near the top of the range: bf16 max (2 - 2^-7) 2^127 -> e = 125.
    blocks.push(with(
        1.0,
        &[
            f32::from_bits(0x7F7F_0000),
            -f32::from_bits(0x7F00_0000),
            2f32.powi(100),
        ],
    ));
    // One outlier among small values.
    blocks.push(with(1e-3, &[1000.0, -1e-3, 5e-4]));
    // Non-finite blocks: NaN, +inf, -inf.
    blocks.push(with(1.0, &[f32::NAN]));
    blocks.push(with(-2.0, &[1.0, f32::INFINITY]));
    blocks.push(with(0.5, &[f32::NEG_INFINITY]));
    blocks
}

#[test]
fn edge_vectors_bit_identical_without_rht() {
    let g = gpu();
    let blocks = edge_blocks();
    // Each block is one row's first block; the rest of the row is random, so blocks sit at
    // every position inside a lane quad and a warp row.
    let k = 64;
    let rows = blocks.len().div_ceil(8) * 8; // colwise reads 8 source columns at a time
    let mut rng = Rng(8);
    let mut x = Vec::with_capacity(rows * k);
    for b in &blocks {
        x.extend(b.iter().map(|&v| bf16::from_f32(v)));
        x.extend(rng.vec_bf16(k - 32, 2.0));
    }
    x.extend(rng.vec_bf16((rows - blocks.len()) * k, 2.0));
    // The values the rules are about arrive exactly (bf16 holds them); blocks 2 and 8 also
    // carry probes (0.3, -0.2, 1e-3, 5e-4) that bf16 rounds, which is fine.
    for (i, b) in blocks.iter().enumerate() {
        for (j, &v) in b.iter().enumerate() {
            let stored = x[i * k + j].to_f32();
            let probe = (i == 2 && j >= 14) || (i == 8 && j != 0);
            assert!(
                probe || stored == v || (v.is_nan() && stored.is_nan()),
                "edge value {v} not exact in bf16"
            );
        }
    }
    for layout in [Layout::Rowwise, Layout::Colwise] {
        for rounding in [Rounding::Rtn, Rounding::Sr] {
            let (src, r, c) = as_source(&x, rows, k, layout);
            check(
                &format!("edge {layout:?} {rounding:?}"),
                &src,
                r,
                c,
                &spec(layout, rounding, None),
                &g,
            );
        }
    }
}

#[test]
fn nonfinite_input_under_rht_poisons_its_segment() {
    // RHT mixes a NaN into all g elements of its segment: those g/32 blocks get the NaN scale.
    let g = gpu();
    let (rows, k) = (8, 256);
    let mut rng = Rng(12);
    let mut x = rng.vec_bf16(rows * k, 1.0);
    x[k + 70] = bf16::from_f32(f32::NAN);
    x[3 * k + 200] = bf16::from_f32(f32::INFINITY);
    for layout in [Layout::Rowwise, Layout::Colwise] {
        let (src, r, c) = as_source(&x, rows, k, layout);
        let sp = spec(layout, Rounding::Sr, Some(64));
        check(&format!("nonfinite RHT {layout:?}"), &src, r, c, &sp, &g);
        let got = gpu_quantize(&g, &src, r, c, &sp);
        let nan_blocks: Vec<usize> = (0..rows * k / 32)
            .filter(|&i| got.scales[i] == 0xFF)
            .collect();
        assert_eq!(nan_blocks, vec![8 + 2, 8 + 3, 24 + 6, 24 + 7], "{layout:?}");
        assert_eq!(got.telemetry[3], 4.0);
        // Normal inputs: many elements far below their block's amax round to zero.
        assert!(got.telemetry[4] > 0.0, "{layout:?}: no underflow counted");
    }
}

#[test]
fn launcher_rejects_what_the_kernel_cannot_do() {
    let g = gpu();
    let src = poisoned::<bf16>(&g, 64 * 48);
    let codes = poisoned::<u8>(&g, 64 * 48);
    let out = || QuantizeOut {
        codes: Some(Ptr::of(&codes)),
        ..Default::default()
    };
    let sp = |layout, h| spec(layout, Rounding::Rtn, h);
    let e = |r: runtime::cuda::Result<()>| r.unwrap_err().to_string();
    // K = 48 is not a multiple of 32.
    let msg = e(mx::quantize(
        &g,
        Ptr::of(&src),
        64,
        48,
        &sp(Layout::Rowwise, None),
        out(),
    ));
    assert!(msg.contains("K = 48") && msg.contains("32"), "{msg}");
    // g = 64 does not divide K = 32 (colwise K = rows = 32).
    let msg = e(mx::quantize(
        &g,
        Ptr::of(&src),
        32,
        48,
        &sp(Layout::Colwise, Some(64)),
        out(),
    ));
    assert!(
        msg.contains("Hadamard block 64") && msg.contains("K = 32"),
        "{msg}"
    );
    let msg = e(mx::quantize(
        &g,
        Ptr::of(&src),
        32,
        48,
        &sp(Layout::Colwise, Some(48)),
        out(),
    ));
    assert!(msg.contains("Hadamard block 48"), "{msg}");
    // Columns not a multiple of 8.
    let msg = e(mx::quantize(
        &g,
        Ptr::of(&src),
        64,
        36,
        &sp(Layout::Colwise, None),
        out(),
    ));
    assert!(msg.contains("multiple of 8"), "{msg}");
    // Codes too short, and an output overlapping the source.
    let short = poisoned::<u8>(&g, 10);
    let msg = e(mx::quantize(
        &g,
        Ptr::of(&src),
        64,
        32,
        &sp(Layout::Rowwise, None),
        QuantizeOut {
            codes: Some(Ptr::of(&short)),
            ..Default::default()
        },
    ));
    assert!(msg.contains("codes") && msg.contains("1024"), "{msg}");
}
