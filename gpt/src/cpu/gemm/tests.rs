//! The blocked GEMM against its plain twin (`sgemm_reference`) and against f64, on every SIMD
//! path this CPU has; the packing fast paths against their plain twins, bit for bit.

use super::*;
use crate::rng::SplitMix64;

fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut r = SplitMix64::new(seed);
    (0..n).map(|_| (r.next_f64() * 2.0 - 1.0) as f32).collect()
}

/// The SIMD paths this machine can run (the portable one always).
fn kinds() -> Vec<Simd> {
    let mut kinds = vec![Simd::Portable];
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            kinds.push(Simd::Avx2Fma);
        }
        if is_x86_feature_detected!("avx512f") {
            kinds.push(Simd::Avx512);
        }
    }
    kinds
}

/// A view of an (m x k) matrix inside `data`, in one of four layouts: row-major, transposed
/// (column-major), row-major with padded rows, or a general strided view (both strides > 1).
fn view(data: &[f32], rows: usize, cols: usize, layout: usize) -> MatRef<'_> {
    match layout {
        0 => MatRef::row_major(data, rows, cols),
        1 => MatRef::transposed(data, rows, cols),
        2 => MatRef {
            data,
            rows,
            cols,
            row_stride: cols + 5,
            col_stride: 1,
        },
        _ => MatRef {
            data,
            rows,
            cols,
            row_stride: 2 * cols + 1,
            col_stride: 2,
        },
    }
}

/// Floats a view of `layout` needs.
fn view_len(rows: usize, cols: usize, layout: usize) -> usize {
    match layout {
        0 | 1 => rows * cols,
        2 => rows * (cols + 5),
        _ => rows * (2 * cols + 1),
    }
}

/// Runs `kind`'s sgemm on fresh random inputs with a poisoned (NaN, or random when
/// accumulating) C that has padding columns, and checks every element against the plain twin
/// within `2·(K+2)·eps·(Σ|a·b| + |c|)` (both are f32 sums of the same products in different
/// association and with or without FMA; the standard bound for each against the exact sum,
/// doubled) and that no padding element was touched.
#[allow(clippy::too_many_arguments)]
fn check(kind: Simd, m: usize, n: usize, k: usize, la: usize, lb: usize, acc: bool, t: usize) {
    let seed = (m * 1_000_003 + n * 1009 + k * 7 + la * 3 + lb) as u64;
    let a_data = rand_vec(view_len(m, k, la) + 3, seed);
    let b_data = rand_vec(view_len(k, n, lb) + 5, seed ^ 0xB);
    let (a, b) = (view(&a_data, m, k, la), view(&b_data, k, n, lb));
    let ldc = n + 3;
    let init = if acc {
        rand_vec(m * ldc, seed ^ 0xC)
    } else {
        vec![f32::NAN; m * ldc]
    };
    let mut got = init.clone();
    sgemm_on(kind, a, b, &mut got, ldc, acc, t);
    let mut want = init.clone();
    sgemm_reference(a, b, &mut want, ldc, acc);
    for i in 0..m {
        for j in 0..n {
            let mut abs = if acc {
                init[i * ldc + j].abs() as f64
            } else {
                0.0
            };
            for p in 0..k {
                abs += (a.at(i, p) as f64 * b.at(p, j) as f64).abs();
            }
            let tol = 2.0 * (k as f64 + 2.0) * f32::EPSILON as f64 * abs;
            let (g, w) = (got[i * ldc + j] as f64, want[i * ldc + j] as f64);
            assert!(
                (g - w).abs() <= tol,
                "{kind:?} ({m},{n},{k}) layouts {la}/{lb} acc={acc} threads={t}: C[{i},{j}] = \
                 {g}, reference {w} (tolerance {tol:e})"
            );
        }
        for j in n..ldc.min(got.len() - i * ldc) {
            assert_eq!(
                got[i * ldc + j].to_bits(),
                init[i * ldc + j].to_bits(),
                "{kind:?} ({m},{n},{k}): padding C[{i},{j}] was written"
            );
        }
    }
}

#[test]
fn matches_reference_on_edge_shapes_layouts_and_paths() {
    // Tile edges (1, primes, one past a multiple of 6/8/16/32), K past one KC block (257,
    // 769), N past one NC block (4099), and the model's transposition cases.
    let shapes = [
        (1, 1, 1),
        (7, 5, 3),
        (6, 16, 256),
        (13, 37, 257),
        (65, 97, 300),
        (73, 40, 17),
        (3, 300, 600),
        (1, 50, 385),
        (97, 35, 769),
        (193, 17, 1),
        (5, 4099, 9),
        (7, 4100, 300),
    ];
    for kind in kinds() {
        for &(m, n, k) in &shapes {
            for (la, lb) in [(0, 1), (0, 0), (1, 0), (1, 1), (2, 3), (3, 2)] {
                check(kind, m, n, k, la, lb, false, 2);
                check(kind, m, n, k, la, lb, true, 3);
            }
        }
    }
}

#[test]
fn matches_f64_at_a_model_shape() {
    // The forward of a 768 -> 2304 layer at 12 rows (a slice of B·T), against exact sums: the
    // blocked sum over K = 768 (three KC blocks) stays within the standard f32 bound.
    let (m, n, k) = (12, 2304, 768);
    let (a_data, b_data) = (rand_vec(m * k, 11), rand_vec(n * k, 12));
    let (a, b) = (
        MatRef::row_major(&a_data, m, k),
        MatRef::transposed(&b_data, k, n),
    );
    for kind in kinds() {
        let mut c = vec![f32::NAN; m * n];
        sgemm_on(kind, a, b, &mut c, n, false, 2);
        for i in 0..m {
            for j in 0..n {
                let (mut s, mut abs) = (0.0f64, 0.0f64);
                for p in 0..k {
                    let x = a.at(i, p) as f64 * b.at(p, j) as f64;
                    s += x;
                    abs += x.abs();
                }
                let tol = (k as f64 + 2.0) * f32::EPSILON as f64 * abs;
                assert!(
                    (c[i * n + j] as f64 - s).abs() <= tol,
                    "{kind:?} C[{i},{j}]"
                );
            }
        }
    }
}

#[test]
fn results_do_not_depend_on_thread_count() {
    // Both A strategies: shared A (M = 200) and per-task A blocks (M = 4200 > SHARED_A_MAX /
    // KC rows), each with K over one KC block so C accumulates across blocks.
    for (m, n, k) in [(200, 300, 700), (4200, 40, 300)] {
        let a = rand_vec(m * k, 1);
        let b = rand_vec(k * n, 2);
        for kind in kinds() {
            let run = |t: usize| {
                let mut c = vec![f32::NAN; m * n];
                sgemm_on(
                    kind,
                    MatRef::row_major(&a, m, k),
                    MatRef::transposed(&b, k, n),
                    &mut c,
                    n,
                    false,
                    t,
                );
                c
            };
            let one = run(1);
            for t in [2, 3, 5] {
                assert!(
                    one.iter()
                        .zip(run(t))
                        .all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{kind:?} ({m},{n},{k}): {t} threads differ from one"
                );
            }
        }
    }
}

#[test]
fn pool_and_default_entry_point_match_explicit_threads() {
    // `sgemm` (the pool's dynamic chunks) gives the same bits as a static split.
    let (m, n, k) = (100, 530, 300);
    let (a, b) = (rand_vec(m * k, 3), rand_vec(k * n, 4));
    let (av, bv) = (MatRef::transposed(&a, m, k), MatRef::row_major(&b, k, n));
    let mut pool = vec![f32::NAN; m * n];
    sgemm(av, bv, &mut pool, n, false);
    let mut one = vec![f32::NAN; m * n];
    sgemm_with_threads(av, bv, &mut one, n, false, 1);
    assert!(pool
        .iter()
        .zip(&one)
        .all(|(x, y)| x.to_bits() == y.to_bits()));
}

#[test]
fn k_zero_clears_or_keeps_c() {
    let (a, b) = (vec![], vec![]);
    for kind in kinds() {
        let mut c = vec![f32::NAN; 6];
        sgemm_on(
            kind,
            MatRef::row_major(&a, 2, 0),
            MatRef::row_major(&b, 0, 3),
            &mut c,
            3,
            false,
            2,
        );
        assert!(c.iter().all(|&x| x == 0.0));
        let mut c = vec![2.0f32; 6];
        sgemm_on(
            kind,
            MatRef::row_major(&a, 2, 0),
            MatRef::row_major(&b, 0, 3),
            &mut c,
            3,
            true,
            2,
        );
        assert!(c.iter().all(|&x| x == 2.0));
    }
}

#[test]
fn every_simd_kernel_computes_the_same_tile() {
    let kc = 37;
    for kind in kinds() {
        let (mr, nr) = kind.tile();
        let (a, b) = (rand_vec(mr * kc, 5), rand_vec(nr * kc, 6));
        let init = rand_vec(mr * nr, 7);
        let mut want = vec![0.0f64; mr * nr];
        for i in 0..mr {
            for j in 0..nr {
                want[i * nr + j] = init[i * nr + j] as f64
                    + (0..kc)
                        .map(|p| a[p * mr + i] as f64 * b[p * nr + j] as f64)
                        .sum::<f64>();
            }
        }
        let mut c = init.clone();
        unsafe {
            match kind {
                Simd::Avx512 => run_kernel::<8, 32>(kind, kc, &a, &b, c.as_mut_ptr(), nr, false),
                Simd::Avx2Fma => run_kernel::<6, 16>(kind, kc, &a, &b, c.as_mut_ptr(), nr, false),
                Simd::Portable => run_kernel::<4, 16>(kind, kc, &a, &b, c.as_mut_ptr(), nr, false),
            }
        }
        for (g, w) in c.iter().zip(&want) {
            assert!((*g as f64 - w).abs() < 1e-4, "{kind:?}: {g} vs {w}");
        }
    }
}

#[test]
fn packing_fast_paths_equal_their_plain_twins() {
    // Every layout, full and edge panels, kc with and without a multiple of 8 (the transpose
    // blocks), and an offset into the matrix; panels start poisoned.
    for layout in 0..4 {
        for kc in [1, 7, 8, 37, 64] {
            let (rows, cols) = (kc + 9, 45);
            let data = rand_vec(view_len(rows, cols, layout), (layout * 100 + kc) as u64);
            let v = view(&data, rows, cols, layout);
            // B panels: k along the rows of v, columns c0.. (16 and 32 wide, full and edge).
            for c0 in [0, 3, 13] {
                let width = (cols - c0).min(32);
                for w in [width.min(16), width.min(11)] {
                    let (mut fast, mut plain) = (vec![f32::NAN; 16 * kc], vec![0.5; 16 * kc]);
                    pack::b_panel::<16>(&mut fast, v, 2, kc, c0, w);
                    pack::b_panel_plain::<16>(&mut plain, v, 2, kc, c0, w);
                    assert_eq!(fast, plain, "B16 layout {layout} kc {kc} c0 {c0} cols {w}");
                }
                let w = width.min(32);
                let (mut fast, mut plain) = (vec![f32::NAN; 32 * kc], vec![0.5; 32 * kc]);
                pack::b_panel::<32>(&mut fast, v, 2, kc, c0, w);
                pack::b_panel_plain::<32>(&mut plain, v, 2, kc, c0, w);
                assert_eq!(fast, plain, "B32 layout {layout} kc {kc} c0 {c0} cols {w}");
            }
            // A panels: rows r0.. of the transposed problem (k along the columns of v^T), so
            // view v as A = (cols x rows)^T: use v's columns as A's rows.
            let at = MatRef {
                data: v.data,
                rows: cols,
                cols: rows,
                row_stride: v.col_stride,
                col_stride: v.row_stride,
            };
            for r0 in [0, 5, 40] {
                for r in [6.min(cols - r0), 4.min(cols - r0)] {
                    let (mut fast, mut plain) = (vec![f32::NAN; 6 * kc], vec![0.5; 6 * kc]);
                    pack::a_panel::<6>(&mut fast, at, r0, r, 2, kc);
                    pack::a_panel_plain::<6>(&mut plain, at, r0, r, 2, kc);
                    assert_eq!(fast, plain, "A6 layout {layout} kc {kc} r0 {r0} rows {r}");
                }
            }
        }
    }
}

#[test]
fn strided_views_are_read_correctly() {
    // A 3x4 view with row stride 10 and column stride 2 inside a larger buffer.
    let data: Vec<f32> = (0..40).map(|x| x as f32).collect();
    let a = MatRef {
        data: &data,
        rows: 3,
        cols: 4,
        row_stride: 10,
        col_stride: 2,
    };
    let eye: Vec<f32> = (0..16)
        .map(|i| if i % 5 == 0 { 1.0 } else { 0.0 })
        .collect();
    let mut c = vec![0.0f32; 12];
    sgemm(a, MatRef::row_major(&eye, 4, 4), &mut c, 4, false);
    for r in 0..3 {
        for j in 0..4 {
            assert_eq!(c[r * 4 + j], (r * 10 + j * 2) as f32);
        }
    }
}

#[test]
#[should_panic(expected = "sgemm: A is 2x3, B is 4x5")]
fn mismatched_inner_dimensions_are_named() {
    let (a, b) = (vec![0.0; 6], vec![0.0; 20]);
    let mut c = vec![0.0; 10];
    sgemm(
        MatRef::row_major(&a, 2, 3),
        MatRef::row_major(&b, 4, 5),
        &mut c,
        5,
        false,
    );
}
