//! The `Backend` trait on `CudaBackend`: each forward and backward op's kernel launch, here;
//! the rest forwarded to the inherent method of the same name in the file of its idea
//! (inherent methods take precedence over the trait's, so `self.write(..)` is not a recursion).

use super::*;
use crate::backend::{LinearBackward, LinearForward, StepStats, StepUpdate};
use crate::cpu::ops::AdamW;
use crate::mx::fp8::{ForwardConfig, Fp8State};
use crate::mx::{MxConfig, MxTelemetry, SiteTelemetry};

#[allow(clippy::too_many_arguments)]
impl Backend for CudaBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: "cuda".into(),
            device: self.gpu.props().name.clone(),
            threads: 1,
        }
    }

    fn synchronize(&self) -> BResult<()> {
        self.gpu.synchronize("the queued kernels").map_err(err)
    }

    fn write(&mut self, dst: TensorRef, values: &[f32]) -> BResult<()> {
        self.write(dst, values)
    }

    fn read(&self, src: TensorRef) -> BResult<Vec<f32>> {
        self.read(src)
    }

    fn read_optimizer(&self) -> BResult<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        self.read_optimizer()
    }

    fn write_optimizer(&mut self, master: &[f32], m: &[f32], v: &[f32]) -> BResult<()> {
        self.write_optimizer(master, m, v)
    }

    fn set_mx_config(&mut self, cfg: MxConfig) -> BResult<()> {
        self.set_mx_config(cfg)
    }

    fn set_forward_config(&mut self, cfg: ForwardConfig) -> BResult<()> {
        self.set_forward_config(cfg)
    }

    fn fp8_state(&self) -> BResult<Option<Fp8State>> {
        self.fp8_state()
    }

    fn set_fp8_state(&mut self, state: &Fp8State) -> BResult<()> {
        self.set_fp8_state(state)
    }

    fn linear_forward(
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
        self.linear_forward(site, out, inp, w, bias, gelu_out, rows, ic, oc)
    }

    fn take_mx_telemetry(&mut self) -> MxTelemetry {
        self.take_mx_telemetry()
    }

    fn set_mx_noise_measurement(&mut self, on: bool) {
        self.set_mx_noise_measurement(on)
    }

    fn take_mx_site_telemetry(&mut self) -> Vec<SiteTelemetry> {
        self.take_mx_site_telemetry()
    }

    fn set_tokens(&mut self, inputs: &[u32], targets: Option<&[u32]>) -> BResult<()> {
        self.set_tokens(inputs, targets)
    }

    fn zero_grads(&mut self) -> BResult<()> {
        self.gpu.fill_bytes(&self.grads, 0).map_err(err)
    }

    fn encoder_forward(
        &mut self,
        out: TensorRef,
        wte: TensorRef,
        wpe: TensorRef,
        t: usize,
        c: usize,
    ) -> BResult<()> {
        let b = self.rows_of(t);
        let tokens = Ptr::of(&self.inputs);
        k::encoder::encoder_forward(
            &self.gpu,
            self.bf(out)?,
            tokens,
            self.bf(wte)?,
            self.bf(wpe)?,
            b,
            t,
            c,
        )
        .map_err(err)
    }

    fn layernorm_forward(
        &mut self,
        out: TensorRef,
        mean: TensorRef,
        rstd: TensorRef,
        inp: TensorRef,
        w: TensorRef,
        b: TensorRef,
        c: usize,
    ) -> BResult<()> {
        let n = mean.len;
        k::layernorm::layernorm_forward(
            &self.gpu,
            self.bf(out)?,
            self.f32s(mean)?,
            self.f32s(rstd)?,
            self.bf(inp)?,
            self.bf(w)?,
            self.bf(b)?,
            n,
            c,
        )
        .map_err(err)
    }

    fn residual_layernorm_forward(
        &mut self,
        res_out: TensorRef,
        ln_out: TensorRef,
        mean: TensorRef,
        rstd: TensorRef,
        res_in: TensorRef,
        delta: TensorRef,
        w: TensorRef,
        b: TensorRef,
        c: usize,
    ) -> BResult<()> {
        let n = mean.len;
        k::layernorm::residual_layernorm_forward(
            &self.gpu,
            self.bf(res_out)?,
            self.bf(ln_out)?,
            self.f32s(mean)?,
            self.f32s(rstd)?,
            self.bf(res_in)?,
            self.bf(delta)?,
            self.bf(w)?,
            self.bf(b)?,
            n,
            c,
        )
        .map_err(err)
    }

    fn matmul_forward(
        &mut self,
        out: TensorRef,
        inp: TensorRef,
        w: TensorRef,
        bias: Option<TensorRef>,
        gelu_out: Option<TensorRef>,
        rows: usize,
        ic: usize,
        oc: usize,
    ) -> BResult<()> {
        let bias = bias.map(|t| self.bf(t)).transpose()?;
        let gelu_out = gelu_out.map(|t| self.bf(t)).transpose()?;
        k::gemm::matmul_forward(
            &self.gpu,
            self.bf(out)?,
            self.bf(inp)?,
            self.bf(w)?,
            bias,
            gelu_out,
            rows,
            ic,
            oc,
        )
        .map_err(err)
    }

    fn attention_forward(
        &mut self,
        out: TensorRef,
        lse: TensorRef,
        qkv: TensorRef,
        b: usize,
        t: usize,
        c: usize,
        nh: usize,
    ) -> BResult<()> {
        k::attention::attention_forward(
            &self.gpu,
            self.bf(out)?,
            self.f32s(lse)?,
            self.bf(qkv)?,
            b,
            t,
            c,
            nh,
        )
        .map_err(err)
    }

    fn classifier(
        &mut self,
        logits: TensorRef,
        losses: TensorRef,
        vp: usize,
        v: usize,
        dloss: Option<f32>,
    ) -> BResult<()> {
        if !self.has_targets {
            return Err(BackendError(
                "classifier: no targets were set for this batch".into(),
            ));
        }
        let n = losses.len;
        let targets = Ptr::of(&self.targets).slice(0, n);
        k::classifier::classifier(
            &self.gpu,
            self.bf(logits)?,
            self.f32s(losses)?,
            targets,
            n,
            vp,
            v,
            dloss,
        )
        .map_err(err)
    }

    fn encoder_backward(
        &mut self,
        dwte: TensorRef,
        dwpe: TensorRef,
        dout: TensorRef,
        t: usize,
        c: usize,
    ) -> BResult<()> {
        let b = self.rows_of(t);
        if !self.has_tokens {
            return Err(BackendError(
                "encoder_backward: no tokens were set for this batch".into(),
            ));
        }
        let index = &self.encoder_index;
        k::encoder::encoder_backward_indexed(
            &self.gpu,
            self.bf(dwte)?,
            self.bf(dwpe)?,
            self.bf(dout)?,
            index,
            b,
            t,
            c,
        )
        .map_err(err)
    }

    fn layernorm_backward(
        &mut self,
        dinp: TensorRef,
        dw: TensorRef,
        db: TensorRef,
        dout: TensorRef,
        inp: TensorRef,
        w: TensorRef,
        mean: TensorRef,
        rstd: TensorRef,
        c: usize,
    ) -> BResult<()> {
        let n = mean.len;
        k::layernorm::layernorm_backward(
            &self.gpu,
            self.bf(dinp)?,
            self.bf(dw)?,
            self.bf(db)?,
            self.bf(dout)?,
            self.bf(inp)?,
            self.bf(w)?,
            self.f32s(mean)?,
            self.f32s(rstd)?,
            Ptr::of(&self.work),
            n,
            c,
        )
        .map_err(err)
    }

    fn linear_backward(
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
        self.linear_backward(dinp, dw, dbias, dout, inp, w, rows, ic, oc, prec)
    }

    fn gelu_backward(&mut self, d: TensorRef, pre: TensorRef) -> BResult<()> {
        k::gelu::gelu_backward_inplace(&self.gpu, self.bf(d)?, self.bf(pre)?, d.len).map_err(err)
    }

    fn attention_backward(
        &mut self,
        dqkv: TensorRef,
        dout: TensorRef,
        qkv: TensorRef,
        out: TensorRef,
        lse: TensorRef,
        b: usize,
        t: usize,
        c: usize,
        nh: usize,
    ) -> BResult<()> {
        k::attention::attention_backward(
            &self.gpu,
            self.bf(dqkv)?,
            self.bf(dout)?,
            self.bf(qkv)?,
            self.bf(out)?,
            self.f32s(lse)?,
            Ptr::of(&self.work),
            b,
            t,
            c,
            nh,
        )
        .map_err(err)
    }

    fn zero(&mut self, t: TensorRef) -> BResult<()> {
        self.zero(t)
    }

    fn device_zero1(&mut self) -> Option<&mut dyn crate::dist::zero1::DeviceZero1> {
        Some(self)
    }

    fn grad_norm(&mut self) -> BResult<f32> {
        self.grad_norm()
    }

    fn adamw(&mut self, hp: &AdamW) -> BResult<()> {
        self.adamw(hp)
    }

    fn has_device_step(&self) -> bool {
        self.has_device_step()
    }

    fn layer_backward_done(&mut self, layer: usize) -> BResult<()> {
        match &self.dp {
            Some(dp) => dp
                .layer_backward_done(&self.gpu, layer)
                .map_err(BackendError),
            None => Ok(()),
        }
    }
    fn record_loss(&mut self, losses: TensorRef) -> BResult<()> {
        self.record_loss(losses)
    }

    fn device_step(&mut self, up: &StepUpdate) -> BResult<()> {
        self.device_step(up)
    }

    fn take_step_stats_through(&mut self, t: u64) -> BResult<Vec<StepStats>> {
        self.take_step_stats_through(t)
    }

    fn begin_micro_batch(&mut self, step: u32, micro: u32) -> BResult<()> {
        self.begin_micro_batch(step, micro)
    }

    fn graph_begin(&mut self, key: u64) -> BResult<bool> {
        self.graph_begin(key)
    }

    fn graph_end(&mut self, ok: bool) -> BResult<()> {
        self.graph_end(ok)
    }
}
