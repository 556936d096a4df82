//! Quantization telemetry: what the 4-bit backward (and the FP8 forward) did to the numbers,
//! cheap enough to leave on.
//!
//! Every quantized operand adds its sums while it is quantized (clipped and underflowed
//! elements, squared error and squared magnitude). A backend keeps them twice: as totals for
//! the step's log line, and per backward-GEMM site (layer, linear layer, dgrad or wgrad) for the
//! per-layer records of `--log-json`. On request a backend also measures each GEMM's output
//! against the exact product (`noise_sq`, `exact_sq`): the ratio of quantization noise to
//! gradient norm that "FP4 All the Way" (Chmiel et al., 2025) finds decisive, FP4 training no
//! longer helping once the gradient norm falls below about sqrt(3) times the noise.

use super::{GemmId, GemmKind, LinearKind};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Sums over quantized blocks (and, when measured, over GEMM outputs).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MxTelemetry {
    pub elements: u64,
    pub clipped: u64,
    pub nonfinite_blocks: u64,
    /// Non-zero inputs quantized to a zero magnitude, out of `underflow_counted` elements (those
    /// of the finite blocks; 0 where a backend does not count them).
    pub underflow: u64,
    pub underflow_counted: u64,
    pub sq_err: f64,
    pub sq_sum: f64,
    /// |Q(A)Q(B) - AB|^2 and |AB|^2 summed over the measured GEMM outputs (0 when not measured).
    pub noise_sq: f64,
    pub exact_sq: f64,
    /// Wall time spent preparing operands (gather along K, RHT, quantization), for the bench's
    /// per-phase breakdown.
    pub quantize_seconds: f64,
}

/// Derived figures for logs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MxSummary {
    /// Fraction of elements with |x / 2^e| > 6 (RTN's clipping; 0 under SR).
    pub clipped_fraction: f64,
    /// Fraction of the counted elements that were non-zero and quantized to zero (None where not
    /// counted).
    pub underflow_fraction: Option<f64>,
    /// ||Q(x) - x|| / ||x|| over all quantized operands.
    pub relative_error: f64,
    /// ||Q(A)Q(B) - AB|| / ||AB|| over the measured GEMM outputs (None where not measured).
    pub noise_to_grad: Option<f64>,
    pub nonfinite_blocks: u64,
}

/// Above this noise-to-gradient ratio the gradient norm is below sqrt(3) times the quantization
/// noise: the regime where "FP4 All the Way" finds FP4 training stops making progress.
pub const NOISE_TO_GRAD_LIMIT: f64 = 0.577_350_269_189_625_8; // 1 / sqrt(3)

impl MxTelemetry {
    pub fn merge(&mut self, o: &MxTelemetry) {
        self.elements += o.elements;
        self.clipped += o.clipped;
        self.nonfinite_blocks += o.nonfinite_blocks;
        self.underflow += o.underflow;
        self.underflow_counted += o.underflow_counted;
        self.sq_err += o.sq_err;
        self.sq_sum += o.sq_sum;
        self.noise_sq += o.noise_sq;
        self.exact_sq += o.exact_sq;
        self.quantize_seconds += o.quantize_seconds;
    }

    /// One quantized MXFP4 block: its statistics, inputs and codes (for the underflow count).
    pub(crate) fn add_block(&mut self, st: &super::quantize::BlockStats, x: &[f32], codes: &[u8]) {
        self.elements += x.len() as u64;
        self.clipped += st.clipped as u64;
        self.nonfinite_blocks += st.nonfinite as u64;
        if !st.nonfinite {
            self.sq_err += st.sq_err;
            self.sq_sum += st.sq_sum;
            self.add_underflow(x, codes);
        }
    }

    /// Counts the non-zero inputs whose code has a zero magnitude (bits 0-2 of an E2M1 code).
    pub(crate) fn add_underflow(&mut self, x: &[f32], codes: &[u8]) {
        self.underflow += x
            .iter()
            .zip(codes)
            .filter(|(v, c)| **v != 0.0 && *c & 7 == 0)
            .count() as u64;
        self.underflow_counted += x.len() as u64;
    }

    /// None when nothing was quantized.
    pub fn summary(&self) -> Option<MxSummary> {
        (self.elements > 0).then(|| MxSummary {
            clipped_fraction: self.clipped as f64 / self.elements as f64,
            underflow_fraction: (self.underflow_counted > 0)
                .then(|| self.underflow as f64 / self.underflow_counted as f64),
            relative_error: if self.sq_sum > 0.0 {
                (self.sq_err / self.sq_sum).sqrt()
            } else {
                0.0
            },
            noise_to_grad: (self.exact_sq > 0.0).then(|| (self.noise_sq / self.exact_sq).sqrt()),
            nonfinite_blocks: self.nonfinite_blocks,
        })
    }

    /// The summary as a JSON object (null when nothing was quantized).
    pub fn summary_json(&self) -> Value {
        match self.summary() {
            Some(s) => json!({
                "clipped_fraction": s.clipped_fraction,
                "underflow_fraction": s.underflow_fraction,
                "relative_error": s.relative_error,
                "noise_to_grad": s.noise_to_grad,
                "nonfinite_blocks": s.nonfinite_blocks,
            }),
            None => Value::Null,
        }
    }
}

/// Which GEMM of a linear layer a telemetry site is: the FP8 forward GEMM or one of the two
/// 4-bit backward GEMMs. (Not a `GemmKind`: that one keys random streams, and the forward has
/// none.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SiteGemm {
    Forward,
    Dgrad,
    Wgrad,
}

impl SiteGemm {
    pub fn name(self) -> &'static str {
        match self {
            SiteGemm::Forward => "fwd",
            SiteGemm::Dgrad => "dgrad",
            SiteGemm::Wgrad => "wgrad",
        }
    }
}

impl From<GemmKind> for SiteGemm {
    fn from(g: GemmKind) -> SiteGemm {
        match g {
            GemmKind::Dgrad => SiteGemm::Dgrad,
            GemmKind::Wgrad => SiteGemm::Wgrad,
        }
    }
}

/// The telemetry of one GEMM site since the last take. For a backward site the statistics are
/// MXFP4's or NVFP4's (clipped = above the block's largest code under RTN); for the FP8 forward
/// site they are E4M3's over both operands (clipped = saturated at 448), and the measured noise
/// is ||Q(X)Q(W)^T - XW^T|| / ||XW^T||, the forward output's relative error.
#[derive(Clone, Debug, PartialEq)]
pub struct SiteTelemetry {
    pub layer: u32,
    pub linear: LinearKind,
    pub gemm: SiteGemm,
    pub telemetry: MxTelemetry,
}

impl SiteTelemetry {
    pub fn json(&self) -> Value {
        let mut v = self.telemetry.summary_json();
        if let Value::Object(m) = &mut v {
            m.insert("layer".into(), json!(self.layer));
            m.insert("linear".into(), json!(self.linear.name()));
            m.insert("gemm".into(), json!(self.gemm.name()));
        }
        v
    }

    pub fn label(&self) -> String {
        format!(
            "layer {} {} {}",
            self.layer,
            self.linear.name(),
            self.gemm.name()
        )
    }
}

/// Telemetry as a backend records it: totals of the 4-bit backward (taken every step) and
/// per-site sums, backward and FP8 forward (taken at the per-layer logging interval),
/// independent of each other.
#[derive(Clone, Debug, Default)]
pub struct MxRecorder {
    pub total: MxTelemetry,
    sites: BTreeMap<(u32, u8, u8), SiteTelemetry>,
    /// Measure every quantized GEMM's output against the exact product (costs one more
    /// quantized GEMM and one f32 GEMM per backward call, one f32 GEMM per FP8 forward call:
    /// switch it on for single steps).
    pub measure_noise: bool,
}

impl MxRecorder {
    pub fn record(&mut self, id: &GemmId, t: &MxTelemetry) {
        self.record_site(id.layer, id.linear, id.gemm.into(), t);
    }

    /// Adds `t` to its site; a backward site's also to the total (the step log's 4-bit line).
    pub fn record_site(&mut self, layer: u32, linear: LinearKind, gemm: SiteGemm, t: &MxTelemetry) {
        if gemm != SiteGemm::Forward {
            self.total.merge(t);
        }
        self.sites
            .entry((layer, linear as u8, gemm as u8))
            .or_insert_with(|| SiteTelemetry {
                layer,
                linear,
                gemm,
                telemetry: MxTelemetry::default(),
            })
            .telemetry
            .merge(t);
    }

    pub fn take_total(&mut self) -> MxTelemetry {
        std::mem::take(&mut self.total)
    }

    /// The sites in (layer, linear, GEMM) order.
    pub fn take_sites(&mut self) -> Vec<SiteTelemetry> {
        std::mem::take(&mut self.sites).into_values().collect()
    }
}

/// One line for the step log: the worst noise-to-gradient backward site (when measured), how
/// many are past 1/sqrt(3), the worst clipping; for an FP8 forward the worst output error and
/// saturation.
pub fn sites_note(sites: &[SiteTelemetry]) -> String {
    let (forward, backward): (Vec<SiteTelemetry>, Vec<SiteTelemetry>) = sites
        .iter()
        .cloned()
        .partition(|s| s.gemm == SiteGemm::Forward);
    let mut out = backward_note(&backward);
    let fwd = forward_note(&forward);
    if !out.is_empty() && !fwd.is_empty() {
        out += "; ";
    }
    out + &fwd
}

fn forward_note(sites: &[SiteTelemetry]) -> String {
    let worst = |f: &dyn Fn(&MxSummary) -> Option<f64>| {
        sites
            .iter()
            .filter_map(|s| Some((f(&s.telemetry.summary()?)?, s)))
            .max_by(|a, b| a.0.total_cmp(&b.0))
    };
    let mut parts = Vec::new();
    if let Some((r, s)) = worst(&|m| m.noise_to_grad) {
        parts.push(format!(
            "fp8 forward output error max {r:.3} ({})",
            s.label()
        ));
    }
    if let Some((c, s)) = worst(&|m| Some(m.clipped_fraction)).filter(|(c, _)| *c > 0.0) {
        parts.push(format!(
            "fp8 saturated max {:.3}% ({})",
            c * 100.0,
            s.label()
        ));
    }
    parts.join("; ")
}

fn backward_note(sites: &[SiteTelemetry]) -> String {
    let measured: Vec<(f64, &SiteTelemetry)> = sites
        .iter()
        .filter_map(|s| Some((s.telemetry.summary()?.noise_to_grad?, s)))
        .collect();
    let worst_clip = sites
        .iter()
        .filter_map(|s| Some((s.telemetry.summary()?.clipped_fraction, s)))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    let mut out = String::new();
    if let Some((r, s)) = measured.iter().max_by(|a, b| a.0.total_cmp(&b.0)) {
        let past = measured
            .iter()
            .filter(|(r, _)| *r > NOISE_TO_GRAD_LIMIT)
            .count();
        out += &format!(
            "noise/grad max {r:.3} ({}), {past} of {} GEMMs above 1/sqrt(3)",
            s.label(),
            measured.len()
        );
    }
    if let Some((c, s)) = worst_clip.filter(|(c, _)| *c > 0.0) {
        if !out.is_empty() {
            out += "; ";
        }
        out += &format!("clip max {:.2}% ({})", c * 100.0, s.label());
    }
    out
}
