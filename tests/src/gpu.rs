//! What every GPU test file needs: the device, a deterministic random source, NaN-poisoned
//! outputs and a NaN-safe closeness check. `use tests::gpu::*;` (a file may shadow any of these
//! with its own).
//!
//! The device. The GPU tests run on the host execution harness by default (every kernel compiled
//! for the CPU and run with the GPU's programming model: ptx/host), so `cargo test` exercises
//! every kernel and launcher on any machine. On a GPU host, `MXGPT_TEST_DEVICE=cuda` (set by the
//! bundle's run-gpu-tests.sh) runs the same tests on GPU 0, and fails if there is none.
//! `MXGPT_HARNESS_SCHEDULE=inorder|reverse|random:SEED` picks the harness's thread schedule
//! (default inorder); a kernel that passes under one and fails under another has a race.

use runtime::cuda::half::bf16;
use runtime::cuda::{DeviceBuffer, DeviceElem, DeviceKind, Gpu, Schedule};

/// The device the GPU tests run on (see the module doc).
pub fn gpu() -> Gpu {
    match std::env::var("MXGPT_TEST_DEVICE").as_deref() {
        Ok("cuda") => {
            Gpu::new(0).unwrap_or_else(|e| panic!("MXGPT_TEST_DEVICE=cuda but no usable GPU: {e}"))
        }
        Ok("harness") | Err(_) => Gpu::harness(harness_schedule()),
        Ok(other) => panic!("MXGPT_TEST_DEVICE={other}: expected cuda or harness"),
    }
}

/// The harness schedule from MXGPT_HARNESS_SCHEDULE (default: threads in order).
pub fn harness_schedule() -> Schedule {
    match std::env::var("MXGPT_HARNESS_SCHEDULE").as_deref() {
        Err(_) | Ok("inorder") => Schedule::InOrder,
        Ok("reverse") => Schedule::Reverse,
        Ok(s) => match s.strip_prefix("random:").and_then(|n| n.parse().ok()) {
            Some(seed) => Schedule::Random(seed),
            None => panic!("MXGPT_HARNESS_SCHEDULE={s}: expected inorder, reverse or random:SEED"),
        },
    }
}

/// Whether the tests run on a real GPU: the largest shapes (vocabulary-sized GEMMs, long
/// sequences) run only there; the harness takes the same code paths on smaller ones.
pub fn on_gpu(g: &Gpu) -> bool {
    g.kind() == DeviceKind::Cuda
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

/// A random MXFP4 operand [rows, k] quantized by the CPU reference: rows of magnitudes from
/// 2^-20 to 2^10 (so block scales span many binades), a NaN at element `nan_at` when asked.
pub fn mx_operand(
    rng: &mut Rng,
    rows: usize,
    k: usize,
    rounding: gpt::mx::Rounding,
    nan_at: Option<usize>,
) -> gpt::mx::MxOperand {
    let mut x: Vec<f32> = (0..rows * k)
        .map(|i| rng.f32(1.0) * 2f32.powi((i / k % 7) as i32 * 5 - 20))
        .collect();
    if let Some(i) = nan_at {
        x[i] = f32::NAN;
    }
    gpt::mx::quantize_rows(&x, rows, k, rounding, 99, 5)
        .unwrap()
        .0
}

/// A quantized operand in device memory: packed codes and scales, as the MX GEMMs read them.
pub struct DevMxOperand {
    pub codes: DeviceBuffer<u8>,
    pub scales: DeviceBuffer<u8>,
}

impl DevMxOperand {
    pub fn upload(g: &Gpu, op: &gpt::mx::MxOperand) -> DevMxOperand {
        DevMxOperand {
            codes: g.upload(&gpt::mx::format::pack_codes(&op.codes)).unwrap(),
            scales: g.upload(&op.scales).unwrap(),
        }
    }

    pub fn r(&self) -> gpt::cuda::kernels::mx::MxRef<'_> {
        use gpt::cuda::kernels::Ptr;
        gpt::cuda::kernels::mx::MxRef {
            codes: Ptr::of(&self.codes),
            scales: Ptr::of(&self.scales),
        }
    }
}
