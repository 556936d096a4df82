//! The FP8 forward's per-layer telemetry on the GPU: the CPU's `fwd` entries of the `mx_layers`
//! records (docs/numerics.md section 7). Every training call adds both operands' E4M3 statistics
//! (squared error, squared values, saturated, flushed to zero) to its site's accumulator on the
//! device (fp8.cu's `fp8_stats_partials`, then `mx_telemetry_accumulate`); on measured steps the
//! call's FP8 product without the bias is compared with the BF16 GEMM's (mx_noise.cu). The host
//! reads the sites once per record: no synchronization inside a step.
//!
//! Memory: the accumulators (7 f64 per site), the partial sums, and on the first measured step
//! two bf16 products of the largest linear output [B·T, 4C] (`scratch_bytes` counts them).

use super::kernels::fp8::{self as kfp8, Fp8Operand};
use super::kernels::{gemm, mx as kmx, Ptr};
use super::mx::{telemetry_of, ACC, FIELDS, LINEARS};
use crate::backend::LinearForward;
use crate::mx::{SiteGemm, SiteTelemetry};
use runtime::cuda::half::bf16;
use runtime::cuda::{DeviceBuffer, Gpu, Result};

pub struct Fp8Telemetry {
    /// `ACC` f64 for a total the step log does not use (the accumulate kernels add to one),
    /// then `ACC` per site, site = layer * 4 + linear.
    acc: DeviceBuffer<f64>,
    partials: DeviceBuffer<f64>,
    site_elements: Vec<u64>,
    /// While on, each training call's product is measured against the exact one.
    pub measure_noise: bool,
    /// (FP8 product, exact product), allocated at the first measured call.
    noise: Option<(DeviceBuffer<bf16>, DeviceBuffer<bf16>)>,
    largest_output: usize,
    /// CUDA graphs: a replayed micro batch makes no host calls, so the site counts it adds are
    /// learnt from a run of its ops (as the 4-bit backward's, cuda/mx.rs).
    count_start: Option<Vec<u64>>,
    replay_counts: Vec<u64>,
}

/// Bytes of device memory the telemetry may hold for `layers` blocks at `rows` = B·T tokens and
/// width `channels`.
pub fn scratch_bytes(layers: usize, rows: usize, channels: usize) -> usize {
    8 * (ACC * (1 + layers * 4) + partials_len()) + 2 * 2 * rows * 4 * channels
}

fn partials_len() -> usize {
    (kfp8::STATS_BLOCKS * FIELDS).max(2 * kmx::NOISE_BLOCKS)
}

impl Fp8Telemetry {
    pub fn new(g: &Gpu, layers: usize, rows: usize, channels: usize) -> Result<Fp8Telemetry> {
        let acc = g.alloc(ACC * (1 + layers * 4))?;
        g.fill_bytes(&acc, 0)?;
        Ok(Fp8Telemetry {
            acc,
            partials: g.alloc(partials_len())?,
            site_elements: vec![0; layers * 4],
            measure_noise: false,
            noise: None,
            largest_output: rows * 4 * channels,
            count_start: None,
            replay_counts: vec![0; layers * 4],
        })
    }

    /// Before a micro batch under CUDA graphs: `run` (learn what its calls count) or a replay
    /// (add what a run counted).
    pub fn graph_micro_begin(&mut self, run: bool) {
        if run {
            self.count_start = Some(self.site_elements.clone());
        } else {
            for (s, d) in self.site_elements.iter_mut().zip(&self.replay_counts) {
                *s += d;
            }
        }
    }

    /// After a micro batch under CUDA graphs.
    pub fn graph_micro_end(&mut self) {
        if let Some(start) = self.count_start.take() {
            let now = self.site_elements.iter();
            self.replay_counts = now.zip(&start).map(|(a, b)| a - b).collect();
        }
    }

    fn site(&self, at: &LinearForward) -> usize {
        at.layer * 4 + at.linear as usize
    }

    /// One training call's operands, x [n_x] and W [n_w], quantized with the scales `rec_x[1]`
    /// and `rec_w[1]`: their statistics into the call's site.
    pub fn record(
        &mut self,
        g: &Gpu,
        at: &LinearForward,
        (x, n_x, rec_x): (Ptr<bf16>, usize, Ptr<f32>),
        (w, n_w, rec_w): (Ptr<bf16>, usize, Ptr<f32>),
    ) -> Result<()> {
        let site = self.site(at);
        let total = Ptr::of(&self.acc).slice(0, FIELDS);
        let sums = Ptr::of(&self.acc).slice(ACC * (1 + site), FIELDS);
        let partials = Ptr::of(&self.partials);
        for (v, n, rec) in [(x, n_x, rec_x), (w, n_w, rec_w)] {
            kfp8::stats(g, partials, v, n, rec)?;
            kmx::telemetry_accumulate(g, total, Some(sums), partials, kfp8::STATS_BLOCKS)?;
        }
        self.site_elements[site] += (n_x + n_w) as u64;
        Ok(())
    }

    /// With `measure_noise` on: the call's FP8 product of `xq` [rows, ic] and `wq` [oc, ic]
    /// (scales in `rec_x`, `rec_w`; no bias) against the BF16 GEMM of `x` and `w`, into the
    /// site's noise sums.
    #[allow(clippy::too_many_arguments)]
    pub fn measure(
        &mut self,
        g: &Gpu,
        at: &LinearForward,
        (xq, wq): (Fp8Operand, Fp8Operand),
        (rec_x, rec_w): (Ptr<f32>, Ptr<f32>),
        (x, w): (Ptr<bf16>, Ptr<bf16>),
        (rows, ic, oc): (usize, usize, usize),
    ) -> Result<()> {
        if !self.measure_noise {
            return Ok(());
        }
        if self.noise.is_none() {
            let len = self.largest_output;
            self.noise = Some((g.alloc(len)?, g.alloc(len)?));
        }
        let (q_buf, e_buf) = self.noise.as_ref().expect("allocated above");
        let n = rows * oc;
        let (q, e) = (Ptr::of(q_buf).slice(0, n), Ptr::of(e_buf).slice(0, n));
        kfp8::gemm(g, q, None, xq, wq, None, rec_x, rec_w, rows, ic, oc)?;
        gemm::matmul_forward(g, e, x, w, None, None, rows, ic, oc)?;
        let site = self.site(at);
        let total = Ptr::of(&self.acc).slice(FIELDS, 2);
        let sums = Ptr::of(&self.acc).slice(ACC * (1 + site) + FIELDS, 2);
        kmx::noise_accumulate(g, total, sums, Ptr::of(&self.partials), q, e, n)
    }

    /// Every site's telemetry since the last call, in (layer, linear) order, leaving out the
    /// sites that recorded nothing; and a reset.
    pub fn take_sites(&mut self, g: &Gpu) -> Result<Vec<SiteTelemetry>> {
        let all = g.download(&self.acc)?;
        g.fill_bytes(&self.acc, 0)?;
        let sites = self.site_elements.len();
        let elements = std::mem::replace(&mut self.site_elements, vec![0; sites]);
        Ok(elements
            .into_iter()
            .enumerate()
            .filter(|(_, e)| *e > 0)
            .map(|(i, e)| SiteTelemetry {
                layer: (i / 4) as u32,
                linear: LINEARS[i % 4],
                gemm: SiteGemm::Forward,
                telemetry: telemetry_of(&all[ACC * (1 + i)..ACC * (2 + i)], e, 1),
            })
            .collect())
    }
}
