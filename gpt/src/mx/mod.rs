//! TEMPORARY interface shim (replaced by the numerics library when it merges).
use crate::precision::BackwardMode;
use crate::cpu::gemm::MatRef;
#[derive(Clone, Copy, Debug)]
pub struct MxConfig { pub mode: BackwardMode, pub hadamard_block: usize, pub seed: u64 }
#[derive(Clone, Copy, Debug, PartialEq, Eq)] #[repr(u8)]
pub enum LinearKind { Qkv = 0, AttnProj = 1, MlpUp = 2, MlpDown = 3 }
#[derive(Clone, Copy, Debug, PartialEq, Eq)] #[repr(u8)]
pub enum GemmKind { Dgrad = 0, Wgrad = 1 }
#[derive(Clone, Copy, Debug)]
pub struct GemmId { pub step: u32, pub micro_step: u32, pub layer: u32, pub linear: LinearKind, pub gemm: GemmKind }
#[derive(Default, Clone, Debug)]
pub struct MxTelemetry {}
impl MxTelemetry { pub fn merge(&mut self, _o: &MxTelemetry) {} }
#[derive(Debug)]
pub struct MxError(pub String);
impl std::fmt::Display for MxError { fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str(&self.0) } }
#[allow(clippy::too_many_arguments)]
pub fn backward_gemm(cfg: &MxConfig, _id: &GemmId, a: MatRef, b: MatRef, c: &mut [f32], ldc: usize, accumulate: bool, _t: Option<&mut MxTelemetry>) -> Result<(), MxError> {
    if cfg.mode.is_mxfp4() { return Err(MxError("MXFP4 not merged yet".into())); }
    crate::cpu::gemm::sgemm(a, b, c, ldc, accumulate); Ok(())
}
pub struct MxSummary { pub clipped_fraction: f64, pub relative_error: f64, pub nonfinite_blocks: u64 }
impl MxTelemetry { pub fn summary(&self) -> Option<MxSummary> { None } }
impl MxConfig { pub fn validate(&self) -> Result<(), MxError> { Ok(()) } }
