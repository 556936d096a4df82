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
    let nan = tmp("nan.f32");
    let mut v = randv(32, 6);
    v[7] = f32::NAN;
    write(&nan, &v);
    let (ok, text) = mx(&[
        "quantize",
        "--rounding",
        "sr",
        "--input",
        nan.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(
        !ok && text.contains("value 7") && text.contains("NaN"),
        "{text}"
    );
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
