//! What every GPU test file needs (feature `cuda`): the device, a deterministic random source,
//! NaN-poisoned outputs and a NaN-safe closeness check. `use tests::gpu::*;` (a file may shadow
//! any of these with its own).

use runtime::cuda::half::bf16;
use runtime::cuda::{DeviceBuffer, DeviceElem, Gpu};

/// GPU 0, or a panic that says the GPU tests need one.
pub fn gpu() -> Gpu {
    Gpu::new(0).unwrap_or_else(|e| panic!("GPU tests need a CUDA device: {e}"))
}

/// xorshift64* uniform in [-scale, scale): deterministic, no extra dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn f32(&mut self, scale: f32) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let r = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((r >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
    }
    pub fn vec_f32(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f32(scale)).collect()
    }
    pub fn vec_bf16(&mut self, n: usize, scale: f32) -> Vec<bf16> {
        (0..n).map(|_| bf16::from_f32(self.f32(scale))).collect()
    }
    /// Uniform integer in 0..n.
    pub fn below(&mut self, n: usize) -> usize {
        (((self.f32(1.0) + 1.0) * 0.5 * n as f32) as usize).min(n - 1)
    }
}

/// A device buffer poisoned with NaN bytes, so unwritten outputs fail every comparison.
pub fn poisoned<T: DeviceElem>(g: &Gpu, n: usize) -> DeviceBuffer<T> {
    let b = g.alloc::<T>(n).unwrap();
    g.fill_bytes(&b, 0xFF).unwrap();
    b
}

/// |got - want| <= rel |want| + abs for every element. Written as `!(err <= tol)` on purpose:
/// a NaN error must fail, which `err > tol` would let pass.
#[allow(clippy::neg_cmp_op_on_partial_ord)]
pub fn assert_close(what: &str, got: &[f32], want: &[f64], rel: f64, abs: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        let tol = rel * w.abs() + abs;
        if !(err <= tol) {
            panic!("{what}[{i}]: got {g}, want {w} (err {err:.3e} > tol {tol:.3e})");
        }
    }
}

pub fn f32s(v: &[bf16]) -> Vec<f32> {
    v.iter().map(|x| x.to_f32()).collect()
}

pub fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

pub fn bits(v: &[bf16]) -> Vec<u16> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// A device bf16 buffer downloaded as f32.
pub fn down_f32(g: &Gpu, b: &DeviceBuffer<bf16>) -> Vec<f32> {
    f32s(&g.download(b).unwrap())
}
