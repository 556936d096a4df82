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
//! Memory: one scratch per operand (A, B) sized for the largest layer, bf16 for the `bf16` path
//! or packed codes + scales for the others, and the telemetry partials; `scratch_bytes` is what
//! the backend's memory check counts.

use super::kernels::mx::{self as kmx, Layout, MxRef, QuantizeOut, QuantizeSpec};
use super::kernels::{gemm, Ptr};
use crate::backend::{BResult, BackendError, LinearBackward};
use crate::config::ModelConfig;
use crate::mx::gemm::SR_FACTOR;
use crate::mx::{GemmKind, MxConfig, MxTelemetry, Rounding, StreamRole};
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

/// Device bytes of the MX scratch for `path` at micro batch `batch` x `seq`.
pub fn scratch_bytes(cfg: &ModelConfig, batch: usize, seq: usize, path: MxGemmPath) -> usize {
    let (a, b, partials) = sizes(cfg, batch * seq);
    let operands = match path {
        MxGemmPath::Bf16 => 2 * (a + b),
        MxGemmPath::Int8 | MxGemmPath::Tcgen05 => (a + b) / 2 + (a + b) / 32,
    };
    operands + 8 * (partials + 4)
}

/// One operand's quantized form, as the path consumes it.
enum Operand {
    Dequantized(DeviceBuffer<bf16>),
    Packed {
        codes: DeviceBuffer<u8>,
        scales: DeviceBuffer<u8>,
    },
}

impl Operand {
    fn new(g: &Gpu, path: MxGemmPath, elements: usize) -> runtime::cuda::Result<Operand> {
        Ok(match path {
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
    /// Running (squared error, squared values, clipped, non-finite blocks) on the device.
    totals: DeviceBuffer<f64>,
    elements: u64,
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
        let totals = g.alloc(4)?;
        g.fill_bytes(&totals, 0)?;
        Ok(MxBackward {
            path,
            cfg,
            a: Operand::new(g, path, a)?,
            b: Operand::new(g, path, b)?,
            partials: g.alloc(partials.max(4))?,
            totals,
            elements: 0,
        })
    }

    fn quantize(&mut self, g: &Gpu, which: usize, s: &Source, spec: &QuantizeSpec) -> BResult<()> {
        let target = if which == 0 { &self.a } else { &self.b };
        let (rows, k) = s.layout.shape(s.r, s.c);
        let out = QuantizeOut {
            partials: Some(Ptr::of(&self.partials)),
            ..target.out()
        };
        kmx::quantize(g, s.src, s.r, s.c, spec, out).map_err(|e| BackendError(e.context))?;
        let n = kmx::telemetry_partials_len(rows, k) / 4;
        kmx::telemetry_accumulate(g, Ptr::of(&self.totals), Ptr::of(&self.partials), n)
            .map_err(cuda)?;
        self.elements += (rows * k) as u64;
        Ok(())
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
        self.quantize(g, 0, &a, &sa).map_err(context)?;
        self.quantize(g, 1, &b, &sb).map_err(context)?;
        let alpha = if rounding == Rounding::Sr {
            SR_FACTOR
        } else {
            1.0
        };
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
            _ => unreachable!("both operands follow the path"),
        };
        r.map_err(|e| context(cuda(e)))
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

    /// The telemetry since the last call (one device read), and a reset.
    pub fn take_telemetry(&mut self, g: &Gpu) -> BResult<MxTelemetry> {
        let t = g.download(&self.totals).map_err(cuda)?;
        g.fill_bytes(&self.totals, 0).map_err(cuda)?;
        let tel = MxTelemetry {
            elements: self.elements,
            sq_err: t[0],
            sq_sum: t[1],
            clipped: t[2] as u64,
            nonfinite_blocks: t[3] as u64,
            ..MxTelemetry::default()
        };
        self.elements = 0;
        Ok(tel)
    }
}
