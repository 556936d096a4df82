//! The FP8 forward (`--forward fp8`): its device state, set-up, delayed-scaling state and the
//! per-call amax, scale, quantization and GEMM of a linear layer.

use super::*;
use crate::backend::LinearForward;
use crate::cuda::fp8_telemetry::Fp8Telemetry;
use crate::cuda::kernels::fp8::{self as kfp8, Fp8Operand as Fp8Buf};
use crate::mx::fp8::{ForwardConfig, Fp8Operand, Fp8Scaling, Fp8State};

/// One quantized FP8 operand's scratch: E4M3 bytes (mma path) or their bf16 values (fallback).
enum Fp8Scratch {
    E4m3(DeviceBuffer<u8>),
    Bf16(DeviceBuffer<bf16>),
}

impl Fp8Scratch {
    fn new(g: &Gpu, mma: bool, n: usize) -> runtime::cuda::Result<Fp8Scratch> {
        Ok(if mma {
            Fp8Scratch::E4m3(g.alloc(n)?)
        } else {
            Fp8Scratch::Bf16(g.alloc(n)?)
        })
    }

    fn first(&self, n: usize) -> Fp8Buf<'_> {
        match self {
            Fp8Scratch::E4m3(b) => Fp8Buf::E4m3(Ptr::of(b).slice(0, n)),
            Fp8Scratch::Bf16(b) => Fp8Buf::Bf16(Ptr::of(b).slice(0, n)),
        }
    }
}

/// Delayed FP8 scaling: every tensor's ring of `history` amaxes on the device (layout of
/// `Fp8State::amax`), and the training calls recorded per tensor, also on the device: the
/// amax kernel picks its ring slot from the count and increments it, so a replayed CUDA graph
/// records into the slot of each replay's call (`kfp8::Record::Counter`).
struct Fp8History {
    history: usize,
    rings: DeviceBuffer<f32>,
    calls: DeviceBuffer<u64>,
}

/// The FP8 forward's device state.
pub(super) struct Fp8Forward {
    mma: bool,
    xq: Fp8Scratch,
    wq: Fp8Scratch,
    partials: DeviceBuffer<f32>,
    /// (amax, scale) of the input, then of the weight, of the current call.
    rec: DeviceBuffer<f32>,
    delayed: Option<Fp8History>,
}

impl CudaBackend {
    /// Run the FP8 forward GEMM on its BF16 fallback (fp8_gemm_bf16) even where the E4M3 mma
    /// exists; takes effect at the next `set_forward_config` (for tests and comparisons).
    pub fn set_fp8_fallback(&mut self, fallback: bool) {
        self.fp8_fallback = fallback;
    }

    /// The FP8 GEMM in use: "e4m3" (mma.sync e4m3) or "bf16" (the fallback); None unless the
    /// forward is FP8.
    pub fn fp8_gemm_path(&self) -> Option<&'static str> {
        self.fp8
            .as_ref()
            .map(|f| if f.mma { "e4m3" } else { "bf16" })
    }

    pub(super) fn set_forward_config(&mut self, cfg: ForwardConfig) -> BResult<()> {
        if !cfg.is_fp8() {
            self.fp8 = None;
            self.fp8_telemetry = None;
            self.forward = cfg;
            return Ok(());
        }
        let c = self.model.channels;
        if !c.is_multiple_of(16) {
            return Err(BackendError(format!(
                "--forward fp8 on the CUDA backend needs the channels ({c}) to be a multiple of 16 (rows of 16-byte E4M3 chunks); use --forward bf16 or --device cpu"
            )));
        }
        let props = self.gpu.props().clone();
        let mma = !self.fp8_fallback && kfp8::has_fp8_mma(props.compute_capability);
        let rows = self.batch * self.seq;
        let (nx, nw) = (rows * 4 * c, 4 * c * c);
        let tensors = self.model.layers * 4 * 2;
        let history = match cfg.scaling {
            Fp8Scaling::Delayed { history } => history,
            Fp8Scaling::Current => 0,
        };
        let elem = if mma { 1 } else { 2 };
        let need = elem * (nx + nw)
            + 4 * (kfp8::amax_partials_len(nx.max(nw)) + 4 + tensors * history)
            + crate::cuda::fp8_telemetry::scratch_bytes(self.model.layers, rows, c);
        let (free, total) = self.gpu.memory_info().map_err(err)?;
        if need > free.saturating_sub(256 << 20) {
            return Err(BackendError(format!(
                "out of memory on {}: the FP8 forward needs {:.2} GiB of scratch for its quantized operands at batch {} x seq {}, but {:.2} GiB of {:.2} GiB are free: lower --batch or --seq",
                props.name,
                gib(need),
                self.batch,
                self.seq,
                gib(free),
                gib(total)
            )));
        }
        self.fp8 = None;
        self.fp8_telemetry = None;
        let g = &self.gpu;
        self.fp8_telemetry = Some(Fp8Telemetry::new(g, self.model.layers, rows, c).map_err(err)?);
        let delayed = if history > 0 {
            let rings = g.alloc(tensors * history).map_err(err)?;
            g.fill_bytes(&rings, 0).map_err(err)?;
            let calls = g.alloc(tensors).map_err(err)?;
            g.fill_bytes(&calls, 0).map_err(err)?;
            Some(Fp8History {
                history,
                rings,
                calls,
            })
        } else {
            None
        };
        self.fp8 = Some(Fp8Forward {
            mma,
            xq: Fp8Scratch::new(g, mma, nx).map_err(err)?,
            wq: Fp8Scratch::new(g, mma, nw).map_err(err)?,
            partials: g.alloc(kfp8::amax_partials_len(nx.max(nw))).map_err(err)?,
            rec: g.alloc(4).map_err(err)?,
            delayed,
        });
        self.forward = cfg;
        log::info!(
            "FP8 forward on {}: {} GEMM, {} scaling",
            props.name,
            if mma { "E4M3 mma" } else { "BF16 fallback" },
            if history > 0 { "delayed" } else { "current" }
        );
        Ok(())
    }

    pub(super) fn fp8_state(&self) -> BResult<Option<Fp8State>> {
        let Some(h) = self.fp8.as_ref().and_then(|f| f.delayed.as_ref()) else {
            return Ok(None);
        };
        Ok(Some(Fp8State {
            history: h.history,
            amax: self.gpu.download(&h.rings).map_err(err)?,
            calls: self.gpu.download(&h.calls).map_err(err)?,
        }))
    }

    pub(super) fn set_fp8_state(&mut self, state: &Fp8State) -> BResult<()> {
        let g = &self.gpu;
        match self.fp8.as_mut().and_then(|f| f.delayed.as_mut()) {
            Some(h)
                if h.history == state.history
                    && h.calls.len() == state.calls.len()
                    && state.amax.len() == h.rings.len() =>
            {
                g.copy_to_device(&state.amax, &h.rings).map_err(err)?;
                g.copy_to_device(&state.calls, &h.calls).map_err(err)?;
                Ok(())
            }
            h => {
                let have = match h {
                    Some(h) => format!("{} tensors, history {}", h.calls.len(), h.history),
                    None => "no delayed FP8 scaling".into(),
                };
                Err(BackendError(format!(
                    "FP8 scaling state for {} tensors with history {} does not fit this run ({have})",
                    state.calls.len(),
                    state.history
                )))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn linear_forward(
        &mut self,
        site: LinearForward,
        out: TensorRef,
        inp: TensorRef,
        w: TensorRef,
        bias: Option<TensorRef>,
        gelu_out: Option<TensorRef>,
        rows: usize,
        ic: usize,
        oc: usize,
    ) -> BResult<()> {
        if !self.forward.is_fp8() {
            return self.matmul_forward(out, inp, w, bias, gelu_out, rows, ic, oc);
        }
        let f = self
            .fp8
            .as_ref()
            .ok_or_else(|| BackendError("linear_forward: the FP8 forward was not set up".into()))?;
        // Delayed scaling: the tensor (ring and call count) of each operand; a training call
        // records into its ring at the slot its count on the device picks.
        let mut tensors = [0, 0];
        if let Some(h) = f.delayed.as_ref() {
            for (i, op) in [Fp8Operand::Input, Fp8Operand::Weight]
                .into_iter()
                .enumerate()
            {
                let t = Fp8State::tensor(site.layer, site.linear, op);
                if t >= h.calls.len() {
                    return Err(BackendError(format!(
                        "linear_forward: layer {} outside the FP8 state's {} tensors",
                        site.layer,
                        h.calls.len()
                    )));
                }
                tensors[i] = t;
            }
        }
        let mut telemetry = self.fp8_telemetry.take();
        let r = self.fp8_linear_forward(
            site,
            (out, inp, w, bias, gelu_out),
            (rows, ic, oc),
            tensors,
            telemetry.as_mut().filter(|_| site.training),
        );
        self.fp8_telemetry = telemetry;
        r
    }

    /// The FP8 forward of a linear layer (`tensors`: the delayed-scaling tensors of its input and
    /// weight, whose rings a training call records into), with the telemetry of a training call.
    #[allow(clippy::type_complexity)]
    fn fp8_linear_forward(
        &self,
        site: LinearForward,
        (out, inp, w, bias, gelu_out): (
            TensorRef,
            TensorRef,
            TensorRef,
            Option<TensorRef>,
            Option<TensorRef>,
        ),
        (rows, ic, oc): (usize, usize, usize),
        tensors: [usize; 2],
        telemetry: Option<&mut Fp8Telemetry>,
    ) -> BResult<()> {
        let f = self
            .fp8
            .as_ref()
            .expect("linear_forward checked that it is set up");
        let g = &self.gpu;
        let (x, wp) = (self.bf(inp)?, self.bf(w)?);
        let rec = Ptr::of(&f.rec);
        let (rx, rw) = (rec.slice(0, 2), rec.slice(2, 2));
        let ring = |i: usize| {
            f.delayed.as_ref().map(|h| kfp8::History {
                ring: Ptr::of(&h.rings).slice(tensors[i] * h.history, h.history),
                record: if site.training {
                    kfp8::Record::Counter(Ptr::of(&h.calls).slice(tensors[i], 1))
                } else {
                    kfp8::Record::No
                },
            })
        };
        let context = |e: CudaError| {
            BackendError(format!(
                "CUDA: FP8 forward of layer {} {:?}: {e}",
                site.layer, site.linear
            ))
        };
        let (nx, nw) = (rows * ic, oc * ic);
        let partials = Ptr::of(&f.partials);
        kfp8::tensor_scale(g, rx, partials, x, nx, ring(0)).map_err(context)?;
        kfp8::tensor_scale(g, rw, partials, wp, nw, ring(1)).map_err(context)?;
        let (xq, wq) = (f.xq.first(nx), f.wq.first(nw));
        kfp8::quantize(g, xq, x, nx, rx).map_err(context)?;
        kfp8::quantize(g, wq, wp, nw, rw).map_err(context)?;
        let bias = bias.map(|t| self.bf(t)).transpose()?;
        let gelu_out = gelu_out.map(|t| self.bf(t)).transpose()?;
        kfp8::gemm(
            g,
            self.bf(out)?,
            gelu_out,
            xq,
            wq,
            bias,
            rx,
            rw,
            rows,
            ic,
            oc,
        )
        .map_err(context)?;
        if let Some(t) = telemetry {
            t.record(g, &site, (x, nx, rx), (wp, nw, rw))
                .map_err(context)?;
            t.measure(g, &site, (xq, wq), (rx, rw), (x, wp), (rows, ic, oc))
                .map_err(context)?;
        }
        Ok(())
    }
}
