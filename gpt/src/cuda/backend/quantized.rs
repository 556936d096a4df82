//! The 4-bit backward (MXFP4 / NVFP4, `crate::cuda::mx`): set-up, the linear layers' backward
//! through it (or the BF16 GEMMs), and its telemetry.

use super::*;
use crate::backend::LinearBackward;
use crate::cuda::mx::{self as gmx, MxBackward};
use crate::mx::{MxConfig, MxTelemetry, SiteTelemetry};

impl CudaBackend {
    /// `--mx-gemm`: which MX GEMM the MXFP4 modes use (takes effect at `set_mx_config`).
    pub fn set_mx_gemm(&mut self, choice: MxGemmChoice) -> BResult<()> {
        let p = self.gpu.props();
        MxGemmPath::resolve(choice, p.compute_capability, &p.name).map_err(BackendError)?;
        self.mx_choice = choice;
        Ok(())
    }

    /// The MX GEMM path in use (None until an MXFP4 mode is set).
    pub fn mx_gemm_path(&self) -> Option<MxGemmPath> {
        self.mx.as_ref().map(|m| m.path)
    }

    /// `linear_backward` with the MXFP4 state passed in (see the trait method).
    #[allow(clippy::type_complexity)]
    fn linear_backward_with(
        &self,
        mx: Option<&mut MxBackward>,
        (dinp, dw, dbias, dout, inp, w): (
            TensorRef,
            TensorRef,
            Option<TensorRef>,
            TensorRef,
            TensorRef,
            TensorRef,
        ),
        (rows, ic, oc): (usize, usize, usize),
        prec: Option<LinearBackward>,
    ) -> BResult<()> {
        let g = &self.gpu;
        let d = self.bf(dout)?;
        match prec.filter(|p| p.mode.is_quantized()) {
            Some(p) => {
                let mx = mx.ok_or_else(|| {
                    BackendError(format!(
                        "--backward {}: set_mx_config was not called with a quantized mode",
                        p.mode
                    ))
                })?;
                let (dx, dwp, x, wp) = (self.bf(dinp)?, self.bf(dw)?, self.bf(inp)?, self.bf(w)?);
                mx.linear_backward(g, &p, dx, dwp, d, x, wp, (rows, ic, oc))?;
            }
            None => {
                // The work buffer allows split-K and holds the bias gradient's partial sums,
                // which the fast wgrad computes from the dout tiles it already loads (the same
                // bits as bias_backward; gemm.rs).
                let (o, work) = (
                    k::gemm::GemmOptions::from_env().map_err(err)?,
                    Ptr::of(&self.work),
                );
                let db = dbias.map(|t| self.bf(t)).transpose()?;
                k::gemm::matmul_backward_input_with(
                    g,
                    &o,
                    self.bf(dinp)?,
                    d,
                    self.bf(w)?,
                    None,
                    Some(work),
                    rows,
                    ic,
                    oc,
                )
                .map_err(err)?;
                k::gemm::matmul_backward_weight_with(
                    g,
                    &o,
                    self.bf(dw)?,
                    db,
                    d,
                    self.bf(inp)?,
                    Some(work),
                    rows,
                    ic,
                    oc,
                )
                .map_err(err)?;
                return Ok(());
            }
        }
        if let Some(db) = dbias {
            k::gemm::bias_backward(g, self.bf(db)?, d, Ptr::of(&self.work), rows, oc)
                .map_err(err)?;
        }
        Ok(())
    }

    pub(super) fn set_mx_config(&mut self, cfg: MxConfig) -> BResult<()> {
        cfg.validate().map_err(|e| BackendError(e.to_string()))?;
        if !cfg.mode.is_quantized() {
            self.mx = None;
            return Ok(());
        }
        let props = self.gpu.props().clone();
        let nvfp4 = cfg.mode.is_nvfp4();
        let path = if nvfp4 {
            MxGemmPath::resolve_nvfp4(self.mx_choice)
        } else {
            MxGemmPath::resolve(self.mx_choice, props.compute_capability, &props.name)
        }
        .map_err(BackendError)?;
        if let Some(m) = self
            .mx
            .as_mut()
            .filter(|m| m.path == path && m.cfg.mode.is_nvfp4() == nvfp4)
        {
            m.cfg = cfg;
            return Ok(());
        }
        self.mx = None;
        let need = gmx::scratch_bytes(&self.model, self.batch, self.seq, path, nvfp4);
        let (free, total) = self.gpu.memory_info().map_err(err)?;
        if need > free.saturating_sub(256 << 20) {
            return Err(BackendError(format!(
                "out of memory on {}: the {} backward ({} path) needs {:.2} GiB of scratch for the quantized operands at batch {} x seq {}, but {:.2} GiB of {:.2} GiB are free: lower --batch or --seq",
                props.name,
                if nvfp4 { "NVFP4" } else { "MXFP4" },
                path.name(),
                gib(need),
                self.batch,
                self.seq,
                gib(free),
                gib(total)
            )));
        }
        let mx = MxBackward::new(&self.gpu, &self.model, self.batch, self.seq, path, cfg)
            .map_err(err)?;
        log::info!(
            "{} backward on {}: {} GEMM path, {:.1} MiB of scratch",
            if nvfp4 { "NVFP4" } else { "MXFP4" },
            props.name,
            path.name(),
            need as f64 / (1 << 20) as f64
        );
        self.mx = Some(mx);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn linear_backward(
        &mut self,
        dinp: TensorRef,
        dw: TensorRef,
        dbias: Option<TensorRef>,
        dout: TensorRef,
        inp: TensorRef,
        w: TensorRef,
        rows: usize,
        ic: usize,
        oc: usize,
        prec: Option<LinearBackward>,
    ) -> BResult<()> {
        // The MXFP4 state is moved out for the call (it is mutated while the buffers are read).
        let mut mx = self.mx.take();
        let r = self.linear_backward_with(
            mx.as_mut(),
            (dinp, dw, dbias, dout, inp, w),
            (rows, ic, oc),
            prec,
        );
        self.mx = mx;
        r
    }

    pub(super) fn take_mx_telemetry(&mut self) -> MxTelemetry {
        let Some(m) = self.mx.as_mut() else {
            return MxTelemetry::default();
        };
        m.take_telemetry(&self.gpu).unwrap_or_else(|e| {
            log::warn!("MXFP4 telemetry unavailable: {e}");
            MxTelemetry::default()
        })
    }

    pub(super) fn set_mx_noise_measurement(&mut self, on: bool) {
        if let Some(m) = self.mx.as_mut() {
            if m.measure_noise != on {
                // The measurement's launches are part of a recorded micro batch or not.
                self.step.as_mut().expect("device step").forget_graphs();
            }
            m.measure_noise = on;
        }
        if let Some(t) = self.fp8_telemetry.as_mut() {
            if t.measure_noise != on {
                self.step.as_mut().expect("device step").forget_graphs();
            }
            t.measure_noise = on;
        }
    }

    pub(super) fn take_mx_site_telemetry(&mut self) -> Vec<SiteTelemetry> {
        let g = &self.gpu;
        let mut sites = match self.mx.as_mut().map(|m| m.take_site_telemetry(g)) {
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                log::warn!("per-layer MXFP4 telemetry unavailable: {e}");
                Vec::new()
            }
            None => Vec::new(),
        };
        match self.fp8_telemetry.as_mut().map(|t| t.take_sites(g)) {
            Some(Ok(s)) => sites.extend(s),
            Some(Err(e)) => log::warn!("per-layer FP8 telemetry unavailable: {e}"),
            None => {}
        }
        sites.sort_by_key(|s| (s.layer, s.linear as u8, s.gemm));
        sites
    }
}
