//! `tools/mx` from the outside, checked against an independent MXFP4 reference written here in
//! f64 (block amax, floor(log2), nearest grid point with ties to even) — no code shared with
//! gpt::mx.

use std::path::{Path, PathBuf};
use std::process::Command;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mxgpt-mxcli-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn write(path: &Path, v: &[f32]) {
    std::fs::write(
        path,
        v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(),
    )
    .unwrap();
}

fn read(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Exit status, stdout, stderr.
fn mx_full(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mx"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn mx(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mx"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn randv(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32 * 3.0
        })
        .collect()
}

/// Independent RTN MXFP4 of one block in f64: returns dequantized values.
fn ref_rtn_block(x: &[f32]) -> Vec<f64> {
    let amax = x.iter().fold(0.0f64, |m, v| m.max((*v as f64).abs()));
    if amax == 0.0 {
        return vec![0.0; x.len()];
    }
    let e = (amax.log2().floor() as i32 - 2).clamp(-127, 127);
    let grid = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];
    x.iter()
        .map(|&v| {
            let y = (v as f64 / 2f64.powi(e)).abs();
            // nearest; ties to the even index
            let mut best = 0;
            for i in 1..8 {
                let (d, db) = ((y - grid[i]).abs(), (y - grid[best]).abs());
                if d < db || (d == db && i % 2 == 0) {
                    best = i;
                }
            }
            grid[best] * 2f64.powi(e) * (v as f64).signum()
        })
        .collect()
}

#[test]
fn quantize_rtn_matches_the_independent_reference_and_packs_codes() {
    // Hand-made first block (amax 4 -> e = 0): ties 0.25 -> 0, 0.75 -> 1, 2.5 -> 2, 5 -> 4,
    // 7 -> clipped to 6.
    let mut x = vec![0.0f32; 32];
    x[..6].copy_from_slice(&[4.0, 0.25, -0.75, 2.5, 5.0, -1.25]);
    x.extend(randv(96, 1));
    let (input, output, packed) = (tmp("q_in.f32"), tmp("q_out.f32"), tmp("q.bin"));
    write(&input, &x);
    let (ok, text) = mx(&[
        "quantize",
        "--rounding",
        "rtn",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--packed",
        packed.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    let y = read(&output);
    assert_eq!(&y[..6], &[4.0, 0.0, -1.0, 2.0, 4.0, -1.0]);
    for (blk, chunk) in x.chunks(32).enumerate() {
        for (i, want) in ref_rtn_block(chunk).iter().enumerate() {
            assert_eq!(y[blk * 32 + i] as f64, *want, "block {blk} element {i}");
        }
    }
    let bytes = std::fs::read(&packed).unwrap();
    assert_eq!(
        bytes.len(),
        4 + 128 / 2,
        "4 scale bytes + 64 bytes of codes"
    );
    assert_eq!(bytes[0], 127, "first block's scale is 2^0");
    // Codes of 4.0 (6) and 0.25 (0) share the first byte, low nibble first; -0.75 -> 0xA.
    assert_eq!(bytes[4], 0x06);
    assert_eq!(bytes[5] & 0xF, 0xA);
}

#[test]
fn quantize_sr_dequantizes_with_four_thirds_and_depends_on_seed() {
    let x = randv(64, 2);
    let (input, o1, o2) = (tmp("s_in.f32"), tmp("s1.f32"), tmp("s2.f32"));
    write(&input, &x);
    assert!(
        mx(&[
            "quantize",
            "--rounding",
            "sr",
            "--seed",
            "1",
            "--input",
            input.to_str().unwrap(),
            "--output",
            o1.to_str().unwrap()
        ])
        .0
    );
    assert!(
        mx(&[
            "quantize",
            "--rounding",
            "sr",
            "--seed",
            "2",
            "--input",
            input.to_str().unwrap(),
            "--output",
            o2.to_str().unwrap()
        ])
        .0
    );
    let (y1, y2) = (read(&o1), read(&o2));
    assert_ne!(y1, y2);
    for (blk, chunk) in x.chunks(32).enumerate() {
        let amax = chunk.iter().fold(0.0f64, |m, v| m.max((*v as f64).abs()));
        let scale = 2f64.powi(amax.log2().floor() as i32 - 2);
        for i in 0..32 {
            // Every output is (4/3) · 2^e · (a grid point), on the neighbour of 0.75 · x / 2^e.
            let q = y1[blk * 32 + i] as f64 / (scale * 4.0 / 3.0);
            let y = chunk[i] as f64 * 0.75 / scale;
            assert!(
                [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
                    .iter()
                    .any(|g| (q.abs() - g).abs() < 1e-6),
                "{q} is not on the grid"
            );
            assert!((q - y).abs() <= 2.0 + 1e-9, "{q} is not a neighbour of {y}");
        }
    }
}

#[test]
fn gemm_modes_against_independent_references() {
    let (m, n, k) = (5, 6, 128);
    let (a, b) = (randv(m * k, 3), randv(k * n, 4));
    let (pa, pb, pc) = (tmp("a.f32"), tmp("b.f32"), tmp("c.f32"));
    write(&pa, &a);
    write(&pb, &b);
    let run = |mode: &str| {
        let (ok, text) = mx(&[
            "gemm",
            "--m",
            "5",
            "--n",
            "6",
            "--k",
            "128",
            "--a",
            pa.to_str().unwrap(),
            "--b",
            pb.to_str().unwrap(),
            "--output",
            pc.to_str().unwrap(),
            "--backward",
            mode,
        ]);
        assert!(ok, "{mode}: {text}");
        read(&pc)
    };
    // bf16 mode: the plain product.
    let c = run("bf16");
    for i in 0..m {
        for j in 0..n {
            let want: f64 = (0..k)
                .map(|p| a[i * k + p] as f64 * b[p * n + j] as f64)
                .sum();
            assert!((c[i * n + j] as f64 - want).abs() < 1e-4, "bf16 [{i},{j}]");
        }
    }
    // mxfp4-rtn: A quantized along its rows, B along its columns, then multiplied.
    let c = run("mxfp4-rtn");
    let qa: Vec<Vec<f64>> = (0..m)
        .map(|i| {
            a[i * k..(i + 1) * k]
                .chunks(32)
                .flat_map(ref_rtn_block)
                .collect()
        })
        .collect();
    let qb: Vec<Vec<f64>> = (0..n)
        .map(|j| {
            let col: Vec<f32> = (0..k).map(|p| b[p * n + j]).collect();
            col.chunks(32).flat_map(ref_rtn_block).collect()
        })
        .collect();
    for i in 0..m {
        for j in 0..n {
            let want: f64 = (0..k).map(|p| qa[i][p] * qb[j][p]).sum();
            assert!(
                (c[i * n + j] as f64 - want).abs() < 1e-4 * (1.0 + want.abs()),
                "rtn [{i},{j}]: {} vs {want}",
                c[i * n + j]
            );
        }
    }
    // The recipe modes run and stay near the product.
    for mode in ["mxfp4-rht", "mxfp4-sr", "mxfp4"] {
        let c = run(mode);
        assert!(c.iter().all(|v| v.is_finite()), "{mode}");
    }
}

#[test]
fn bad_inputs_are_named() {
    let odd = tmp("odd.f32");
    write(&odd, &randv(33, 5));
    let out = tmp("never.f32");
    let (ok, text) = mx(&[
        "quantize",
        "--rounding",
        "rtn",
        "--input",
        odd.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(!ok && text.contains("33") && text.contains("32"), "{text}");
    assert!(!out.exists(), "no output on error");
    let (ok, text) = mx(&[
        "quantize",
        "--rounding",
        "up",
        "--input",
        odd.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(!ok && text.contains("up"), "{text}");
    let (ok, text) = mx(&[
        "quantize",
        "--rounding",
        "rtn",
        "--input",
        "/nonexistent/x.f32",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(!ok && text.contains("/nonexistent/x.f32"), "{text}");

    let (pa, pb) = (tmp("ga.f32"), tmp("gb.f32"));
    write(&pa, &randv(2 * 96, 7));
    write(&pb, &randv(96 * 3, 8));
    let g = |extra: &[&str]| {
        let mut args = vec![
            "gemm",
            "--a",
            pa.to_str().unwrap(),
            "--b",
            pb.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        mx(&args)
    };
    let (ok, text) = g(&["--m", "2", "--n", "4", "--k", "96", "--backward", "bf16"]);
    assert!(
        !ok && text.contains("gb.f32") && text.contains("--n 4"),
        "{text}"
    );
    let (ok, text) = g(&["--m", "2", "--n", "3", "--k", "96", "--backward", "mxfp4"]);
    assert!(
        !ok && text.contains("96") && text.contains("64"),
        "K=96 is not a multiple of g=64: {text}"
    );
    let (ok, text) = g(&["--m", "2", "--n", "3", "--k", "96", "--backward", "fp4"]);
    assert!(!ok && text.contains("fp4"), "{text}");
    assert!(
        g(&[
            "--m",
            "2",
            "--n",
            "3",
            "--k",
            "96",
            "--backward",
            "mxfp4-sr"
        ])
        .0,
        "K=96 is fine without RHT"
    );
}

#[test]
fn stats_reports_both_columns() {
    let x = randv(1024, 9);
    let p = tmp("stats.f32");
    write(&p, &x);
    let (ok, text) = mx(&[
        "stats",
        "--input",
        p.to_str().unwrap(),
        "--hadamard-block",
        "32",
    ]);
    assert!(ok, "{text}");
    for needle in [
        "relative error",
        "plain MXFP4",
        "RHT (g = 32)",
        "clipped",
        "scale exponents",
    ] {
        assert!(text.contains(needle), "missing '{needle}':\n{text}");
    }
}

/// docs/numerics.md section 2: a block holding NaN or an infinity gets scale byte 0xFF and codes
/// 0, dequantizes to NaN, and is counted as non-finite; the other blocks are unaffected.
#[test]
fn nan_and_inf_blocks_follow_the_contract() {
    let mut x = randv(128, 10);
    x[32 + 7] = f32::NAN; // block 1
    x[64] = f32::INFINITY; // block 2
    x[64 + 31] = f32::NEG_INFINITY;
    let (input, output, packed) = (tmp("nan_in.f32"), tmp("nan_out.f32"), tmp("nan.bin"));
    write(&input, &x);
    for rounding in ["rtn", "sr"] {
        let _ = std::fs::remove_file(&output);
        let _ = std::fs::remove_file(&packed);
        let (code, stdout, stderr) = mx_full(&[
            "quantize",
            "--rounding",
            rounding,
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--packed",
            packed.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{rounding}: {stderr}");
        assert!(
            stdout.contains("4 blocks of 32; non-finite blocks: 2"),
            "{rounding}: {stdout}"
        );
        let y = read(&output);
        assert_eq!(y.len(), 128);
        for (blk, chunk) in y.chunks(32).enumerate() {
            let nan = chunk.iter().filter(|v| v.is_nan()).count();
            let want = if blk == 1 || blk == 2 { 32 } else { 0 };
            assert_eq!(nan, want, "{rounding}: block {blk}: {chunk:?}");
        }
        if rounding == "rtn" {
            for blk in [0, 3] {
                let want = ref_rtn_block(&x[blk * 32..(blk + 1) * 32]);
                for i in 0..32 {
                    assert_eq!(y[blk * 32 + i] as f64, want[i], "block {blk} element {i}");
                }
            }
        }
        let bytes = std::fs::read(&packed).unwrap();
        assert_eq!(bytes.len(), 4 + 64);
        assert_eq!(&bytes[1..3], &[0xFF, 0xFF], "{rounding}: NaN scale bytes");
        assert!(bytes[0] != 0xFF && bytes[3] != 0xFF);
        assert!(
            bytes[4 + 16..4 + 48].iter().all(|&b| b == 0),
            "{rounding}: codes of the non-finite blocks are 0"
        );
    }

    // The MX GEMM: a NaN block of A poisons exactly the row of C it belongs to.
    let (m, n, k) = (3, 2, 64);
    let mut a = randv(m * k, 11);
    a[k + 40] = f32::NAN; // row 1, block 1
    let b = randv(k * n, 12);
    let (pa, pb, pc) = (tmp("nan_a.f32"), tmp("nan_b.f32"), tmp("nan_c.f32"));
    write(&pa, &a);
    write(&pb, &b);
    let (code, stdout, stderr) = mx_full(&[
        "gemm",
        "--m",
        "3",
        "--n",
        "2",
        "--k",
        "64",
        "--a",
        pa.to_str().unwrap(),
        "--b",
        pb.to_str().unwrap(),
        "--output",
        pc.to_str().unwrap(),
        "--backward",
        "mxfp4-rtn",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("non-finite blocks: 1"), "{stdout}");
    let c = read(&pc);
    for i in 0..m {
        for j in 0..n {
            assert_eq!(
                c[i * n + j].is_nan(),
                i == 1,
                "[{i},{j}] = {}",
                c[i * n + j]
            );
        }
    }

    // stats counts them and leaves them out of the error figures.
    let (code, stdout, stderr) = mx_full(&[
        "stats",
        "--input",
        input.to_str().unwrap(),
        "--hadamard-block",
        "32",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let row = stdout
        .lines()
        .find(|l| l.starts_with("non-finite blocks"))
        .unwrap_or_else(|| panic!("no non-finite row:\n{stdout}"));
    assert_eq!(
        row.split_whitespace().rev().take(2).collect::<Vec<_>>(),
        ["2", "2"],
        "{row}"
    );
    let rel = stdout
        .lines()
        .find(|l| l.starts_with("relative error"))
        .unwrap();
    assert!(!rel.contains("NaN"), "{rel}");
    assert!(stdout.contains("3 NaN/Inf values left out"), "{stdout}");
}

/// Shapes whose products overflow: an error naming the flags, exit status 1, never a panic
/// (m * k wrapped around to the file's length and the GEMM then indexed out of bounds).
#[test]
fn huge_gemm_shapes_are_refused_without_panic() {
    let (pa, pb, out) = (tmp("h_a.f32"), tmp("h_b.f32"), tmp("h_c.f32"));
    write(&pa, &randv(64, 13));
    write(&pb, &randv(64, 14));
    let gemm = |m: &str, n: &str, k: &str| {
        mx_full(&[
            "gemm",
            "--m",
            m,
            "--n",
            n,
            "--k",
            k,
            "--a",
            pa.to_str().unwrap(),
            "--b",
            pb.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--backward",
            "bf16",
        ])
    };
    // (2^63 + 2) * 32 wraps to 64, the length of a.f32.
    let (code, stdout, stderr) = gemm("9223372036854775810", "2", "32");
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.contains("--m 9223372036854775810 x --k 32 overflows"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let (code, _, stderr) = gemm("2", "4611686018427387904", "32");
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("--k 32 x --n 4611686018427387904 overflows"),
        "{stderr}"
    );
    let (code, _, stderr) = gemm("2", "9223372036854775810", "32");
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("overflows") && !stderr.contains("panicked"),
        "{stderr}"
    );
    // m * n overflows while m * k and k * n fit the files.
    let (code, _, stderr) = gemm("18446744073709551615", "18446744073709551615", "0");
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("--k is 0"), "{stderr}");
    assert!(!out.exists(), "no output on error");
    for line in stderr.lines() {
        assert!(line.ends_with('.'), "a sentence: {line}");
    }
}

#[test]
fn random_writes_reproducible_normal_values() {
    let (p1, p2, p3) = (tmp("r1.f32"), tmp("r2.f32"), tmp("r3.f32"));
    let gen = |p: &Path, seed: &str| {
        let (code, _, stderr) = mx_full(&[
            "random",
            "--count",
            "20000",
            "--seed",
            seed,
            "--std",
            "2",
            "--output",
            p.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{stderr}");
        read(p)
    };
    let (x1, x2, x3) = (gen(&p1, "1"), gen(&p2, "1"), gen(&p3, "2"));
    assert_eq!(x1.len(), 20000);
    assert_eq!(x1, x2, "same seed, same values");
    assert_ne!(x1, x3);
    let mean = x1.iter().map(|&v| v as f64).sum::<f64>() / 20000.0;
    let var = x1.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / 20000.0;
    assert!(mean.abs() < 0.06, "mean {mean}");
    assert!((var.sqrt() - 2.0).abs() < 0.06, "std {}", var.sqrt());
    // About 68% within one standard deviation, as for a normal distribution.
    let within = x1.iter().filter(|v| v.abs() < 2.0).count() as f64 / 20000.0;
    assert!((within - 0.6827).abs() < 0.015, "{within}");
    let (code, _, stderr) = mx_full(&["random", "--count", "0", "--output", p3.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("--count is 0"), "{stderr}");
}

#[test]
fn nvfp4_quantize_matches_hand_computed_blocks() {
    // Block 1 holds E2M1 grid values times 0.25, amax 1.5: s_enc = 2688 / 1.5 = 1792 and the
    // block scale e4m3(1.5 / 6 * 1792) = 448 (0x7E), so every value is representable and
    // comes back unchanged. Block 2 holds one value, 0.175. Block 3 holds a NaN.
    let grid = [0.0f32, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];
    let mut x: Vec<f32> = (0..16)
        .map(|i| {
            if i < 8 {
                grid[i] * 0.25
            } else {
                -grid[1 + (i - 8) % 7] * 0.25
            }
        })
        .collect();
    x.extend((0..16).map(|i| if i == 0 { 0.7 * 0.25 } else { 0.0 }));
    x.extend((0..16).map(|i| if i == 3 { f32::NAN } else { 1.0 }));
    let (inp, out, packed) = (tmp("nv_in.f32"), tmp("nv_out.f32"), tmp("nv_packed.bin"));
    write(&inp, &x);
    let (ok, text) = mx(&[
        "quantize",
        "--format",
        "nvfp4",
        "--rounding",
        "rtn",
        "--input",
        inp.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--packed",
        packed.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    assert!(
        text.contains("3 blocks of 16; non-finite blocks: 1"),
        "{text}"
    );
    let y = read(&out);
    assert_eq!(&y[..16], &x[..16]);
    // Block 2: amax 0.175, scale e4m3(0.175 / 6 * 1792) = e4m3(52.27) = 52 (0x65: exponent
    // field 12, mantissa 5: 1.625 * 32); 0.175 * 1792 / 52 = 6.03 -> code 7 (6); dequantized
    // 6 * 52 / 1792.
    assert_eq!(y[16], 6.0 * 52.0 / 1792.0);
    assert!(y[17..32].iter().all(|&v| v == 0.0));
    assert!(y[32..48].iter().all(|v| v.is_nan()));
    let p = std::fs::read(&packed).unwrap();
    assert_eq!(p.len(), 4 + 3 + 24);
    assert_eq!(f32::from_le_bytes(p[..4].try_into().unwrap()), 1792.0);
    assert_eq!(&p[4..7], &[0x7E, 0x65, 0x7F]);
    // Codes of block 1, low nibble first: 0, 1, .. 7, then sign 8 | 1, 8 | 2, ...
    assert_eq!(p[7], 0x10);
    assert_eq!(p[11], 0xA9);
    let (ok, text) = mx(&[
        "quantize",
        "--format",
        "fp6",
        "--rounding",
        "rtn",
        "--input",
        inp.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(!ok && text.contains("unknown --format 'fp6'"), "{text}");
}
