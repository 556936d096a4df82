//! f32 GEMM on strided views (placeholder interface; the fast kernel lands with the CPU backend).

/// A read-only strided matrix view: element (r, c) is `data[r * row_stride + c * col_stride]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major `rows x cols` matrix.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        MatRef { data, rows, cols, row_stride: cols, col_stride: 1 }
    }
    /// The transpose of a row-major `cols x rows` matrix, viewed as `rows x cols`.
    pub fn transposed(data: &'a [f32], rows: usize, cols: usize) -> Self {
        MatRef { data, rows, cols, row_stride: 1, col_stride: rows }
    }
    #[inline]
    pub fn at(&self, r: usize, c: usize) -> f32 {
        self.data[r * self.row_stride + c * self.col_stride]
    }
}

/// `C = A·B` (or `C += A·B` when `accumulate`), C row-major `a.rows x b.cols` with leading
/// dimension `ldc`.
pub fn sgemm(a: MatRef, b: MatRef, c: &mut [f32], ldc: usize, accumulate: bool) {
    assert_eq!(a.cols, b.rows, "sgemm: inner dimensions differ");
    for m in 0..a.rows {
        for n in 0..b.cols {
            let mut acc = 0.0f32;
            for k in 0..a.cols {
                acc += a.at(m, k) * b.at(k, n);
            }
            let dst = &mut c[m * ldc + n];
            *dst = if accumulate { *dst + acc } else { acc };
        }
    }
}
