//! The MXFP4 backward GEMMs of the linear layers on the GPU (docs/numerics.md): per GEMM, both
//! operands go through the fused RHT + quantize kernel (K-major, bit-identical to the CPU's
//! gpt::mx), then through one of the MX GEMM paths (`--mx-gemm`):
//!
//! - `bf16`: the quantize kernel writes the dequantized operands (code x 2^e, exact in bf16) and
//!   gemm.cu's matmul_kmajor multiplies them on the BF16 tensor cores with FP32 accumulation and
//!   alpha = 16/9 (SR) in the epilogue: exact up to FP32 summation order. The fast path on
//!   Hopper.
//! - `int8`: packed codes and scales through mx_gemm.cu (mma s8, one MX block per instruction,
//!   exact promotion): bit-identical to the CPU's integer reference. The cross-check.
//! - `tcgen05`: Blackwell's block-scaled FP4 MMA (mx_gemm_tcgen05.cu), compute capability 10.x
//!   only; not run on hardware yet, so `auto` never picks it.
//!
//! dgrad `dX[rows, ic] = dY[rows, oc] · W[oc, ic]` reduces over the output features: dY is
//! quantized rowwise, W colwise (both along oc). wgrad `dW[oc, ic] += dY^T · X` reduces over the
//! tokens: dY and X are quantized colwise (along rows = B·T), so neither needs a transpose pass.
//! Streams and signs are keyed exactly as on the CPU (GemmId::stream), so the codes agree.
//!
//! NVFP4 (`--backward nvfp4`, `nvfp4-rtn`; docs/numerics.md sections 10 and 11): per GEMM, each
//! operand's tensor amax, tensor scale and quantization (three launches of
//! nvfp4_quantize.cu, bit-identical to gpt::mx::nvfp4, the tensor scale staying on the device),
//! then the exact s8 GEMM of nvfp4_gemm.cu (bit-identical to `nvfp4_gemm_reference` before the
//! output's bf16 rounding). The recipe as on the CPU: dgrad quantizes dY (SR in `nvfp4`) and W
//! to nearest without a transform; wgrad quantizes dY^T (SR in `nvfp4`) and X^T along the
//! tokens after the 16-point RHT with the run's fixed sign vector (`nvfp4` only). `--mx-gemm`
//! picks among the MXFP4 GEMMs; NVFP4 always runs its s8 GEMM (path `int8`): its bf16 route
//! would need the tensor scales on the host, and its tcgen05 kernel (kind::mxf4nvf4) has
//! never run on hardware, so `--mx-gemm tcgen05` is refused for NVFP4.
//!
//! Memory: one scratch per operand (A, B) sized for the largest layer, bf16 for the `bf16` path
//! or packed codes + scales for the others (NVFP4: codes, E4M3 scales per 16 and the tensor
//! record), and the telemetry (and NVFP4 amax) partials; `scratch_bytes` is what the backend's
//! memory check counts.

use super::kernels::mx::{self as kmx, Layout, MxRef, QuantizeOut, QuantizeSpec};
use super::kernels::nvfp4::{self as knv, Nvfp4Out, Nvfp4Ref, Nvfp4Spec};
use super::kernels::{gemm, Ptr};
use crate::backend::{BResult, BackendError, LinearBackward};
use crate::config::ModelConfig;
use crate::mx::gemm::SR_FACTOR;
use crate::mx::StreamRole;
use crate::mx::{GemmId, GemmKind, LinearKind, MxConfig, MxTelemetry, Rounding, SiteTelemetry};
use runtime::cuda::half::bf16;
use runtime::cuda::{CudaError, DeviceBuffer, Gpu};

/// `--mx-gemm`: which MX GEMM runs the MXFP4 backward GEMMs on the GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MxGemmPath {
    Bf16,
    Int8,
    Tcgen05,
}

/// `--mx-gemm` as given (`auto` resolves against the device).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MxGemmChoice {
    Auto,
    Path(MxGemmPath),
}

impl std::str::FromStr for MxGemmChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "auto" => MxGemmChoice::Auto,
            "bf16" => MxGemmChoice::Path(MxGemmPath::Bf16),
            "int8" => MxGemmChoice::Path(MxGemmPath::Int8),
            "tcgen05" => MxGemmChoice::Path(MxGemmPath::Tcgen05),
            _ => {
                return Err(format!(
                    "unknown --mx-gemm '{s}': expected auto, bf16, int8 or tcgen05"
                ))
            }
        })
    }
}

impl MxGemmPath {
    pub fn name(self) -> &'static str {
        match self {
            MxGemmPath::Bf16 => "bf16",
            MxGemmPath::Int8 => "int8",
            MxGemmPath::Tcgen05 => "tcgen05",
        }
    }

    /// The path for `choice` on a device of compute capability `cc`. `auto` is the fastest
    /// exact path verified on hardware: bf16 everywhere for now (tcgen05 has not run on a
    /// Blackwell GPU, so it is only used when asked for).
    pub fn resolve(choice: MxGemmChoice, cc: (u32, u32), device: &str) -> Result<Self, String> {
        match choice {
            MxGemmChoice::Auto => Ok(MxGemmPath::Bf16),
            MxGemmChoice::Path(MxGemmPath::Tcgen05) if cc.0 != 10 => Err(format!(
                "--mx-gemm tcgen05 needs a Blackwell GPU of compute capability 10.x (sm_100a); {device} is {}.{}: use --mx-gemm bf16 or int8",
                cc.0, cc.1
            )),
            MxGemmChoice::Path(p) => Ok(p),
        }
    }

    /// The path of the NVFP4 modes for `choice`: always the exact s8 GEMM (`int8`); `tcgen05`
    /// is refused (nvfp4_gemm_tcgen05.cu is assembled but has never run on hardware).
    pub fn resolve_nvfp4(choice: MxGemmChoice) -> Result<Self, String> {
        match choice {
            MxGemmChoice::Path(MxGemmPath::Tcgen05) => Err(
                "--mx-gemm tcgen05 with an NVFP4 --backward: the kind::mxf4nvf4 GEMM \
                 (nvfp4_gemm_tcgen05.cu) has never run on hardware and is not wired; use \
                 --mx-gemm auto (NVFP4 runs its exact s8 GEMM)"
                    .into(),
            ),
            _ => Ok(MxGemmPath::Int8),
        }
    }
}

/// The four (ic, oc) shapes of a block's linear layers.
fn linear_shapes(c: usize) -> [(usize, usize); 4] {
    [(c, 3 * c), (c, c), (c, 4 * c), (4 * c, c)]
}

/// (elements of operand A, elements of operand B, f64 telemetry partials) the largest GEMM of
/// the model needs at `rows` = B·T tokens.
fn sizes(cfg: &ModelConfig, rows: usize) -> (usize, usize, usize) {
    let (mut a, mut b, mut partials) = (0, 0, 0);
    for (ic, oc) in linear_shapes(cfg.channels) {
        // dgrad: A = dY [rows, K = oc], B = W^T [ic, K = oc]; wgrad: A = dY^T [oc, K = rows],
        // B = X^T [ic, K = rows].
        a = a.max(rows * oc);
        b = b.max(ic * oc).max(ic * rows);
        for (r, k) in [(rows, oc), (ic, oc), (oc, rows), (ic, rows)] {
            partials = partials.max(kmx::telemetry_partials_len(r, k));
        }
    }
    (a, b, partials)
}

/// Device bytes of the MX scratch for `path` at micro batch `batch` x `seq` (`nvfp4`: the
/// NVFP4 operands, whatever the path).
pub fn scratch_bytes(
    cfg: &ModelConfig,
    batch: usize,
    seq: usize,
    path: MxGemmPath,
    nvfp4: bool,
) -> usize {
    let (a, b, partials) = sizes(cfg, batch * seq);
    let operands = match path {
        _ if nvfp4 => (a + b) / 2 + (a + b) / 16 + 4 * (2 * 2 + partials / 4),
        MxGemmPath::Bf16 => 2 * (a + b),
        MxGemmPath::Int8 | MxGemmPath::Tcgen05 => (a + b) / 2 + (a + b) / 32,
    };
    let sites = cfg.layers * LINEARS.len() * 2;
    // The noise measurement's two bf16 products (allocated at the first measured step).
    let noise = 2 * 2 * largest_product(cfg, batch * seq) + 8 * 2 * kmx::NOISE_BLOCKS;
    operands + 8 * (partials + ACC * (1 + sites)) + noise
}

/// Elements of the largest [m, n] product of the model's backward GEMMs at `rows` = B·T tokens
/// (dX [rows, ic] or dW [oc, ic]).
fn largest_product(cfg: &ModelConfig, rows: usize) -> usize {
    linear_shapes(cfg.channels)
        .iter()
        .map(|&(ic, oc)| (rows * ic).max(oc * ic))
        .max()
        .unwrap_or(0)
}

/// One operand's quantized form, as the path consumes it.
enum Operand {
    Dequantized(DeviceBuffer<bf16>),
    Packed {
        codes: DeviceBuffer<u8>,
        scales: DeviceBuffer<u8>,
    },
    /// NVFP4: packed codes, E4M3 scales per 16, the tensor record (amax, s_enc).
    Nvfp4 {
        codes: DeviceBuffer<u8>,
        scales: DeviceBuffer<u8>,
        enc: DeviceBuffer<f32>,
    },
}

impl Operand {
    fn new(
        g: &Gpu,
        path: MxGemmPath,
        elements: usize,
        nvfp4: bool,
    ) -> runtime::cuda::Result<Operand> {
        Ok(match path {
            _ if nvfp4 => Operand::Nvfp4 {
                codes: g.alloc(elements / 2)?,
                scales: g.alloc(elements / knv::BLOCK)?,
                enc: g.alloc(2)?,
            },
            MxGemmPath::Bf16 => Operand::Dequantized(g.alloc(elements)?),
            _ => Operand::Packed {
                codes: g.alloc(elements / 2)?,
                scales: g.alloc(elements / 32)?,
            },
        })
    }

    fn out(&self) -> QuantizeOut<'_> {
        match self {
            Operand::Dequantized(d) => QuantizeOut {
                deq: Some(Ptr::of(d)),
                ..Default::default()
            },
            Operand::Packed { codes, scales } => QuantizeOut {
                codes: Some(Ptr::of(codes)),
                scales: Some(Ptr::of(scales)),
                ..Default::default()
            },
            Operand::Nvfp4 { .. } => unreachable!("NVFP4 operands go through nvfp4_out"),
        }
    }

    fn nvfp4_ref(&self) -> Nvfp4Ref<'_> {
        match self {
            Operand::Nvfp4 { codes, scales, enc } => Nvfp4Ref {
                codes: Ptr::of(codes),
                scales: Ptr::of(scales),
                enc: Ptr::of(enc),
            },
            _ => unreachable!("an MXFP4 operand where NVFP4 was expected"),
        }
    }
}

/// The MXFP4 state of a CUDA backend: path, settings, scratch, the step's telemetry.
pub struct MxBackward {
    pub path: MxGemmPath,
    pub cfg: MxConfig,
    a: Operand,
    b: Operand,
    partials: DeviceBuffer<f64>,
    /// NVFP4's per-tile amax partials (one f32 per quantize tile; unused by MXFP4).
    amax: DeviceBuffer<f32>,
    /// Running sums on the device (`kmx::TELEMETRY_FIELDS` each: squared error, squared
    /// values, clipped, non-finite blocks, underflows): the step's total first, then one per
    /// backward-GEMM site (`site_index`), read at the per-layer logging interval; `ACC` f64
    /// each.
    totals: DeviceBuffer<f64>,
    elements: u64,
    /// Elements quantized per site since the sites were last taken (known on the host).
    site_elements: Vec<u64>,
    /// While on, every GEMM's 4-bit product is measured against the exact one.
    pub measure_noise: bool,
    /// The measurement's scratch, allocated on the first measured GEMM.
    noise: Option<NoiseScratch>,
    /// The largest product [m, n] of the model's backward GEMMs, for the scratch's size.
    largest_product: usize,
    /// With CUDA graphs: the random streams' step and micro-batch bits come from the device
    /// word `stream_base` (written by `set_micro_batch` before each micro batch, read by the
    /// quantize kernels at run time), the other bits by value, so that a replay draws the
    /// streams of its own step. Off: the whole stream by value.
    pub device_streams: bool,
    stream_base: DeviceBuffer<u64>,
    /// The value last written to `stream_base`.
    base_value: Option<u64>,
    /// A replayed micro batch makes no host calls, so the host-side element counts it adds are
    /// learnt from a run of its ops (counts at the start of the run; what the run added).
    count_start: Option<(u64, Vec<u64>)>,
    replay_counts: (u64, Vec<u64>),
}

/// The bits of a GemmId stream that change from micro batch to micro batch (step 32 and
/// micro-step 16, `GemmId::stream`); the others (layer, linear, GEMM, role) are fixed per call
/// site and go by value even into a graph.
const RUNTIME_BITS: u64 = !0xFFFF;

/// Scratch of the noise measurement: the 4-bit product when it cannot be read from the GEMM's
/// output (wgrad accumulates into dW), the exact product, the kernel's partial sums.
struct NoiseScratch {
    q: DeviceBuffer<bf16>,
    e: DeviceBuffer<bf16>,
    partials: DeviceBuffer<f64>,
}

/// The quantizer's fields (`kmx::TELEMETRY_FIELDS`) of every accumulator.
pub(super) const FIELDS: usize = kmx::TELEMETRY_FIELDS;
/// An accumulator: the quantizer's fields, then the measured noise (sum (Q - E)^2, sum E^2).
pub(super) const ACC: usize = FIELDS + 2;
pub(super) const LINEARS: [LinearKind; 4] = [
    LinearKind::Qkv,
    LinearKind::AttnProj,
    LinearKind::MlpUp,
    LinearKind::MlpDown,
];

/// The site of a backward GEMM in `totals` (after the step total): (layer, linear, GEMM) order.
fn site_index(id: &GemmId) -> usize {
    (id.layer as usize * 4 + id.linear as usize) * 2 + id.gemm as usize
}

/// One accumulator as telemetry; underflows are counted over the finite blocks of
/// `block` elements (32 for MXFP4, 16 for NVFP4), as on the CPU.
pub(super) fn telemetry_of(t: &[f64], elements: u64, block: u64) -> MxTelemetry {
    let nonfinite_blocks = t[3] as u64;
    MxTelemetry {
        elements,
        sq_err: t[0],
        sq_sum: t[1],
        clipped: t[2] as u64,
        nonfinite_blocks,
        underflow: t[4] as u64,
        underflow_counted: elements - nonfinite_blocks * block,
        noise_sq: t[FIELDS],
        exact_sq: t[FIELDS + 1],
        ..MxTelemetry::default()
    }
}

fn cuda(e: CudaError) -> BackendError {
    BackendError(format!("CUDA: {e}"))
}

/// One operand to quantize: the source tensor, its shape [r, c], which way K runs.
struct Source<'a> {
    src: Ptr<'a, bf16>,
    r: usize,
    c: usize,
    layout: Layout,
}

impl MxBackward {
    /// Allocates the scratch for the model at micro batch `batch` x `seq`.
    pub fn new(
        g: &Gpu,
        model: &ModelConfig,
        batch: usize,
        seq: usize,
        path: MxGemmPath,
        cfg: MxConfig,
    ) -> runtime::cuda::Result<MxBackward> {
        let (a, b, partials) = sizes(model, batch * seq);
        let sites = model.layers * LINEARS.len() * 2;
        let totals = g.alloc(ACC * (1 + sites))?;
        g.fill_bytes(&totals, 0)?;
        let nvfp4 = cfg.mode.is_nvfp4();
        Ok(MxBackward {
            path,
            cfg,
            a: Operand::new(g, path, a, nvfp4)?,
            b: Operand::new(g, path, b, nvfp4)?,
            partials: g.alloc(partials.max(FIELDS))?,
            amax: g.alloc(if nvfp4 { (partials / 4).max(1) } else { 1 })?,
            totals,
            elements: 0,
            site_elements: vec![0; sites],
            measure_noise: false,
            noise: None,
            largest_product: largest_product(model, batch * seq),
            device_streams: false,
            stream_base: g.alloc(1)?,
            base_value: None,
            count_start: None,
            replay_counts: (0, vec![0; sites]),
        })
    }

    /// The run-time bits of the streams of micro batch `micro` of step `step`, into the device
    /// word the quantize kernels add (an asynchronous copy, outside any capture).
    pub fn set_micro_batch(&mut self, g: &Gpu, step: u32, micro: u32) -> BResult<()> {
        let id = GemmId {
            step,
            micro_step: micro,
            layer: 0,
            linear: LinearKind::Qkv,
            gemm: GemmKind::Dgrad,
        };
        let base = id.stream(StreamRole::SrA) & RUNTIME_BITS;
        g.copy_to_device_async(&[base], &self.stream_base)
            .map_err(cuda)?;
        self.base_value = Some(base);
        Ok(())
    }

    /// Before a micro batch under CUDA graphs: `run` (its ops are called: learn what they
    /// count) or a replay (add what a run counted).
    pub(super) fn graph_micro_begin(&mut self, run: bool) {
        if run {
            self.count_start = Some((self.elements, self.site_elements.clone()));
        } else {
            self.elements += self.replay_counts.0;
            for (s, d) in self.site_elements.iter_mut().zip(&self.replay_counts.1) {
                *s += d;
            }
        }
    }

    /// After a micro batch under CUDA graphs.
    pub(super) fn graph_micro_end(&mut self) {
        if let Some((e, sites)) = self.count_start.take() {
            self.replay_counts = (
                self.elements - e,
                self.site_elements
                    .iter()
                    .zip(&sites)
                    .map(|(a, b)| a - b)
                    .collect(),
            );
        }
    }

    /// (stream by value, device word to add) for GEMM `id`'s stream `full`: all by value, or
    /// with `device_streams` the run-time bits from `stream_base` (which must hold this micro
    /// batch's: a replay would otherwise draw another step's noise).
    fn split_stream(&self, id: &GemmId, full: u64) -> BResult<(u64, Option<Ptr<'_, u64>>)> {
        if !self.device_streams {
            return Ok((full, None));
        }
        if self.base_value != Some(full & RUNTIME_BITS) {
            return Err(BackendError(format!(
                "the quantized backward of step {} micro batch {} under CUDA graphs: the device stream base was not set for it (begin_micro_batch)",
                id.step, id.micro_step
            )));
        }
        Ok((full & !RUNTIME_BITS, Some(Ptr::of(&self.stream_base))))
    }

    /// Adds a quantize launch's partials (`rows` x `k` elements) to the step total and to the
    /// site of GEMM `id`.
    fn accumulate_telemetry(&mut self, g: &Gpu, id: &GemmId, rows: usize, k: usize) -> BResult<()> {
        let site = site_index(id);
        if site >= self.site_elements.len() {
            return Err(BackendError(format!(
                "telemetry site of layer {} outside the model's {} layers",
                id.layer,
                self.site_elements.len() / 8
            )));
        }
        let n = kmx::telemetry_partials_len(rows, k) / FIELDS;
        let site_sums = Ptr::of(&self.totals).slice(ACC * (1 + site), FIELDS);
        let total = Ptr::of(&self.totals).slice(0, FIELDS);
        kmx::telemetry_accumulate(g, total, Some(site_sums), Ptr::of(&self.partials), n)
            .map_err(cuda)?;
        self.elements += (rows * k) as u64;
        self.site_elements[site] += (rows * k) as u64;
        Ok(())
    }

    fn quantize(
        &mut self,
        g: &Gpu,
        which: usize,
        s: &Source,
        spec: &QuantizeSpec,
        id: &GemmId,
    ) -> BResult<()> {
        let target = if which == 0 { &self.a } else { &self.b };
        let (rows, k) = s.layout.shape(s.r, s.c);
        let out = QuantizeOut {
            partials: Some(Ptr::of(&self.partials)),
            ..target.out()
        };
        // Fixed RHT signs are one constant stream: by value always.
        let fresh_signs = self.cfg.signs == crate::mx::HadamardSigns::Fresh;
        let (sr_stream, sr) = self.split_stream(id, spec.sr_stream)?;
        let (sign_stream, sign) = if fresh_signs {
            self.split_stream(id, spec.sign_stream)?
        } else {
            (spec.sign_stream, None)
        };
        let spec = QuantizeSpec {
            sr_stream,
            sign_stream,
            ..*spec
        };
        let base = kmx::StreamBase { sr, sign };
        kmx::quantize_based(g, s.src, s.r, s.c, &spec, out, base)
            .map_err(|e| BackendError(e.context))?;
        self.accumulate_telemetry(g, id, rows, k)
    }

    /// One NVFP4 operand's quantization into `which` (0: A, 1: B), its telemetry accumulated.
    fn quantize_nvfp4(
        &mut self,
        g: &Gpu,
        which: usize,
        s: &Source,
        spec: &Nvfp4Spec,
        id: &GemmId,
    ) -> BResult<()> {
        let target = if which == 0 { &self.a } else { &self.b };
        let (rows, k) = s.layout.shape(s.r, s.c);
        let Operand::Nvfp4 { codes, scales, enc } = target else {
            unreachable!("NVFP4 scratch in an NVFP4 mode")
        };
        let out = Nvfp4Out {
            codes: Ptr::of(codes),
            scales: Ptr::of(scales),
            enc: Ptr::of(enc),
            amax_partials: Ptr::of(&self.amax),
            partials: Some(Ptr::of(&self.partials)),
        };
        // Only the SR operand draws from a per-call stream (the signs are a constant).
        let (sr_stream, sr) = if spec.rounding == Rounding::Sr {
            self.split_stream(id, spec.sr_stream)?
        } else {
            (spec.sr_stream, None)
        };
        let spec = Nvfp4Spec { sr_stream, ..*spec };
        knv::quantize_based(g, s.src, s.r, s.c, &spec, out, sr)
            .map_err(|e| BackendError(e.context))?;
        self.accumulate_telemetry(g, id, rows, k)
    }

    /// One NVFP4 backward GEMM (docs/numerics.md section 10's recipe): A, the gradient, rounded
    /// stochastically in `nvfp4`; B to nearest; the fixed-sign 16-point RHT on both wgrad
    /// operands in `nvfp4`; then the exact s8 GEMM.
    #[allow(clippy::too_many_arguments)]
    fn gemm_nvfp4(
        &mut self,
        g: &Gpu,
        p: &LinearBackward,
        kind: GemmKind,
        a: Source,
        b: Source,
        out: Ptr<bf16>,
        (m, n, k): (usize, usize, usize),
        accumulate: bool,
    ) -> BResult<()> {
        let id = if kind == GemmKind::Dgrad {
            p.dgrad
        } else {
            p.wgrad
        };
        let recipe = crate::mx::nvfp4::Nvfp4Recipe::of(p.mode);
        let rht = kind == GemmKind::Wgrad && recipe.rht_wgrad;
        let sa = Nvfp4Spec {
            layout: a.layout,
            rounding: if recipe.sr_gradient {
                Rounding::Sr
            } else {
                Rounding::Rtn
            },
            seed: self.cfg.seed,
            sr_stream: id.stream(StreamRole::SrA),
            rht,
        };
        let sb = Nvfp4Spec {
            layout: b.layout,
            rounding: Rounding::Rtn,
            sr_stream: 0,
            ..sa
        };
        let context = |e: BackendError| {
            BackendError(format!(
                "{} {kind:?} of layer {} {:?}: {}",
                p.mode, id.layer, id.linear, e.0
            ))
        };
        self.quantize_nvfp4(g, 0, &a, &sa, &id).map_err(context)?;
        self.quantize_nvfp4(g, 1, &b, &sb, &id).map_err(context)?;
        let shape = (m, n, k);
        self.product(g, out, shape, 1.0, accumulate)
            .map_err(context)?;
        self.measure(g, &id, &a, &b, out, shape, 1.0, accumulate)
            .map_err(context)
    }

    /// One backward GEMM `out (+)= A · B` with A = `a` [m, k] and B^T = `b` [n, k] after
    /// quantization, as linear layer `p` says.
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &mut self,
        g: &Gpu,
        p: &LinearBackward,
        kind: GemmKind,
        a: Source,
        b: Source,
        out: Ptr<bf16>,
        (m, n, k): (usize, usize, usize),
        accumulate: bool,
    ) -> BResult<()> {
        if p.mode.is_nvfp4() != self.cfg.mode.is_nvfp4() {
            return Err(BackendError(format!(
                "--backward {}: the quantized-backward scratch was set up for {}",
                p.mode, self.cfg.mode
            )));
        }
        if p.mode.is_nvfp4() {
            return self.gemm_nvfp4(g, p, kind, a, b, out, (m, n, k), accumulate);
        }
        let id = if kind == GemmKind::Dgrad {
            p.dgrad
        } else {
            p.wgrad
        };
        let rounding = if p.mode.uses_sr() {
            Rounding::Sr
        } else {
            Rounding::Rtn
        };
        let spec = |role: StreamRole, layout: Layout| QuantizeSpec {
            layout,
            rounding,
            seed: self.cfg.seed,
            sr_stream: id.stream(role),
            sign_stream: self.cfg.sign_stream(&id),
            hadamard_block: p.mode.uses_rht().then_some(self.cfg.hadamard_block),
        };
        let (sa, sb) = (
            spec(StreamRole::SrA, a.layout),
            spec(StreamRole::SrB, b.layout),
        );
        let context = |e: BackendError| {
            BackendError(format!(
                "MXFP4 {kind:?} of layer {} {:?}: {}",
                id.layer, id.linear, e.0
            ))
        };
        self.quantize(g, 0, &a, &sa, &id).map_err(context)?;
        self.quantize(g, 1, &b, &sb, &id).map_err(context)?;
        let alpha = if rounding == Rounding::Sr {
            SR_FACTOR
        } else {
            1.0
        };
        let shape = (m, n, k);
        self.product(g, out, shape, alpha, accumulate)
            .map_err(context)?;
        self.measure(g, &id, &a, &b, out, shape, alpha, accumulate)
            .map_err(context)
    }

    /// `out (+)= alpha · Q(A) · Q(B)^T`, [m, n] over K = k, from the operands last quantized into
    /// the scratch, on this backward's GEMM path (NVFP4: its s8 GEMM, the scales inside).
    fn product(
        &self,
        g: &Gpu,
        out: Ptr<bf16>,
        (m, n, k): (usize, usize, usize),
        alpha: f32,
        accumulate: bool,
    ) -> BResult<()> {
        let r = match (&self.a, &self.b) {
            (Operand::Dequantized(da), Operand::Dequantized(db)) => {
                gemm::matmul_kmajor(g, out, Ptr::of(da), Ptr::of(db), m, n, k, alpha, accumulate)
            }
            (
                Operand::Packed {
                    codes: ca,
                    scales: sa,
                },
                Operand::Packed {
                    codes: cb,
                    scales: sb,
                },
            ) => {
                let (qa, qb) = (
                    MxRef {
                        codes: Ptr::of(ca),
                        scales: Ptr::of(sa),
                    },
                    MxRef {
                        codes: Ptr::of(cb),
                        scales: Ptr::of(sb),
                    },
                );
                match self.path {
                    MxGemmPath::Tcgen05 => super::kernels::mx_tcgen05::gemm_tcgen05(
                        g, out, qa, qb, m, n, k, alpha, accumulate,
                    ),
                    _ => kmx::gemm_int8(g, out, qa, qb, m, n, k, alpha, accumulate),
                }
            }
            (Operand::Nvfp4 { .. }, Operand::Nvfp4 { .. }) => knv::gemm(
                g,
                out,
                self.a.nvfp4_ref(),
                self.b.nvfp4_ref(),
                m,
                n,
                k,
                accumulate,
            ),
            _ => unreachable!("both operands follow the path"),
        };
        r.map_err(cuda)
    }

    /// With `measure_noise` on: the GEMM's 4-bit product against the exact product of its bf16
    /// operands A = `a` [m, k] and B^T = `b` [n, k], added to GEMM `id`'s site (the noise sums
    /// of docs/numerics.md section 7). `out` holds the 4-bit product unless the GEMM
    /// accumulated into it (wgrad), in which case the product is formed again in the scratch.
    /// The exact product is the BF16 GEMM's (bf16 output), the same call the BF16 backward makes.
    #[allow(clippy::too_many_arguments)]
    fn measure(
        &mut self,
        g: &Gpu,
        id: &GemmId,
        a: &Source,
        b: &Source,
        out: Ptr<bf16>,
        (m, n, k): (usize, usize, usize),
        alpha: f32,
        accumulate: bool,
    ) -> BResult<()> {
        if !self.measure_noise {
            return Ok(());
        }
        if self.noise.is_none() {
            let len = self.largest_product;
            let scratch = NoiseScratch {
                q: g.alloc(len).map_err(cuda)?,
                e: g.alloc(len).map_err(cuda)?,
                partials: g.alloc(2 * kmx::NOISE_BLOCKS).map_err(cuda)?,
            };
            self.noise = Some(scratch);
        }
        let ns = self.noise.as_ref().expect("allocated above");
        let q = if accumulate {
            let q = Ptr::of(&ns.q).slice(0, m * n);
            self.product(g, q, (m, n, k), alpha, false)?;
            q
        } else {
            out
        };
        let e = Ptr::of(&ns.e).slice(0, m * n);
        match id.gemm {
            // dX [rows = m, ic = n] = dY [rows, oc = k] · W [oc, ic].
            GemmKind::Dgrad => gemm::matmul_backward_input(g, e, a.src, b.src, m, n, k),
            // dW [oc = m, ic = n] = dY^T · X over rows = k, into zeros.
            GemmKind::Wgrad => g
                .fill_bytes_range(&ns.e, 0, m * n, 0)
                .and_then(|_| gemm::matmul_backward_weight(g, e, a.src, b.src, k, n, m)),
        }
        .map_err(cuda)?;
        let total = Ptr::of(&self.totals).slice(FIELDS, 2);
        let site = Ptr::of(&self.totals).slice(ACC * (1 + site_index(id)) + FIELDS, 2);
        kmx::noise_accumulate(g, total, site, Ptr::of(&ns.partials), q, e, m * n).map_err(cuda)
    }

    /// dgrad and wgrad of one linear layer (dX overwritten, dW accumulated), as the CPU's
    /// `linear_backward` defines them.
    #[allow(clippy::too_many_arguments)]
    pub fn linear_backward(
        &mut self,
        g: &Gpu,
        p: &LinearBackward,
        dinp: Ptr<bf16>,
        dw: Ptr<bf16>,
        dout: Ptr<bf16>,
        inp: Ptr<bf16>,
        w: Ptr<bf16>,
        (rows, ic, oc): (usize, usize, usize),
    ) -> BResult<()> {
        // dgrad: dX[rows, ic] = dY[rows, oc] · W[oc, ic], K = oc.
        self.gemm(
            g,
            p,
            GemmKind::Dgrad,
            Source {
                src: dout,
                r: rows,
                c: oc,
                layout: Layout::Rowwise,
            },
            Source {
                src: w,
                r: oc,
                c: ic,
                layout: Layout::Colwise,
            },
            dinp,
            (rows, ic, oc),
            false,
        )?;
        // wgrad: dW[oc, ic] += dY^T[oc, rows] · X[rows, ic], K = rows.
        self.gemm(
            g,
            p,
            GemmKind::Wgrad,
            Source {
                src: dout,
                r: rows,
                c: oc,
                layout: Layout::Colwise,
            },
            Source {
                src: inp,
                r: rows,
                c: ic,
                layout: Layout::Colwise,
            },
            dw,
            (oc, ic, rows),
            true,
        )
    }

    /// Elements per quantization block (scale).
    fn block(&self) -> u64 {
        if self.cfg.mode.is_nvfp4() {
            crate::mx::nvfp4::BLOCK as u64
        } else {
            crate::mx::format::BLOCK as u64
        }
    }

    /// The step's running total for the device step to copy to the host with the step's
    /// numbers (and reset, on the device); the host's element count restarts here.
    pub(super) fn step_total(&mut self) -> super::step::MxTotal<'_> {
        super::step::MxTotal {
            totals: &self.totals,
            elements: std::mem::take(&mut self.elements),
            block: self.block(),
        }
    }

    /// The step's telemetry since the last call (one device read of the total), and a reset.
    pub fn take_telemetry(&mut self, g: &Gpu) -> BResult<MxTelemetry> {
        let mut t = [0.0f64; ACC];
        g.copy_to_host_at(&self.totals, 0, &mut t).map_err(cuda)?;
        g.fill_bytes_range(&self.totals, 0, ACC, 0).map_err(cuda)?;
        let tel = telemetry_of(&t, self.elements, self.block());
        self.elements = 0;
        Ok(tel)
    }

    /// Every backward-GEMM site's telemetry since the last call, in (layer, linear, GEMM)
    /// order, leaving out the sites that quantized nothing; and a reset of the sites.
    pub fn take_site_telemetry(&mut self, g: &Gpu) -> BResult<Vec<SiteTelemetry>> {
        let all = g.download(&self.totals).map_err(cuda)?;
        let (sites, block) = (self.site_elements.len(), self.block());
        g.fill_bytes_range(&self.totals, ACC, ACC * sites, 0)
            .map_err(cuda)?;
        let mut out = Vec::new();
        for (i, elements) in std::mem::replace(&mut self.site_elements, vec![0; sites])
            .into_iter()
            .enumerate()
            .filter(|(_, e)| *e > 0)
        {
            let gemm = if i % 2 == 0 {
                GemmKind::Dgrad
            } else {
                GemmKind::Wgrad
            };
            out.push(SiteTelemetry {
                layer: (i / 8) as u32,
                linear: LINEARS[(i / 2) % 4],
                gemm: gemm.into(),
                telemetry: telemetry_of(&all[ACC * (1 + i)..ACC * (2 + i)], elements, block),
            });
        }
        Ok(out)
    }
}
