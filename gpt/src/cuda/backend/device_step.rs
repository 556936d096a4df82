//! The step kept on the device (`crate::cuda::step`): loss and norm into the stats ring, the
//! update from the device parameter block, and the CUDA graphs of the micro batches and the
//! finish.

use super::optimizer::adamw_seed;
use super::*;
use crate::backend::{StepStats, StepUpdate};

impl CudaBackend {
    /// CUDA graphs for the micro batches and the step's finish (default: MXGPT_CUDA_GRAPH=1;
    /// see step.rs). Turning them off or on drops what was recorded.
    pub fn set_cuda_graphs(&mut self, on: bool) {
        let st = self.step.as_mut().expect("device step");
        st.graphs = on;
        st.forget_graphs();
    }

    /// CUDA graphs recorded and launched so far (see `set_cuda_graphs`).
    pub fn graph_counts(&self) -> (usize, usize) {
        let st = self.step.as_ref().expect("device step");
        (st.recorded, st.launched)
    }

    pub(super) fn has_device_step(&self) -> bool {
        // The device step updates every parameter: not with a ZeRO-1 shard (data parallel).
        self.dp.is_none() && self.master.len() == self.layout.total
    }

    pub(super) fn record_loss(&mut self, losses: TensorRef) -> BResult<()> {
        let st = self.step.as_ref().expect("device step");
        k::step::loss_accumulate(&self.gpu, st.state(), self.f32s(losses)?).map_err(err)
    }

    pub(super) fn device_step(&mut self, up: &StepUpdate) -> BResult<()> {
        let mut st = self.step.take().expect("device step");
        let ranges: Vec<k::adamw::AdamwRange> = self
            .layout
            .tensors
            .iter()
            .map(|t| k::adamw::AdamwRange {
                offset: t.offset,
                len: t.len(),
                decay: t.weight_decay(),
            })
            .collect();
        let finish = |st: &DeviceStep| -> BResult<()> {
            let g = &self.gpu;
            k::global_norm::grad_norm(
                g,
                Ptr::of(&self.norm),
                Ptr::of(&self.grads),
                Ptr::of(&self.work),
            )
            .map_err(err)?;
            k::step::finish(g, st.state(), st.ring(), Ptr::of(&self.norm), st.params())
                .map_err(err)?;
            k::adamw::adamw_update_ranges_dev(
                g,
                Ptr::of(&self.params),
                Ptr::of(&self.master),
                Ptr::of(&self.grads),
                Ptr::of(&self.adam_m),
                Ptr::of(&self.adam_v),
                &ranges,
                0,
                st.params(),
                st.state(),
            )
            .map_err(err)
        };
        // The 4-bit telemetry total travels with the step's numbers (moved out for the call).
        let mut mx = self.mx.take();
        let r = st.step(
            &self.gpu,
            up,
            adamw_seed(up.adamw.t),
            mx.as_mut().map(|m| m.step_total()),
            &finish,
        );
        self.mx = mx;
        self.step = Some(st);
        r
    }

    pub(super) fn take_step_stats_through(&mut self, t: u64) -> BResult<Vec<StepStats>> {
        self.step.as_mut().expect("device step").take_through(t)
    }

    pub(super) fn begin_micro_batch(&mut self, step: u32, micro: u32) -> BResult<()> {
        let graphs = self.step.as_ref().expect("device step").graphs;
        match self.mx.as_mut() {
            Some(mx) => {
                mx.device_streams = graphs;
                mx.set_micro_batch(&self.gpu, step, micro)
            }
            None => Ok(()),
        }
    }

    pub(super) fn graph_begin(&mut self, key: u64) -> BResult<bool> {
        let st = self.step.as_mut().expect("device step");
        let run = st.graph_begin(&self.gpu, key)?;
        if let Some(mx) = self.mx.as_mut().filter(|_| st.graphs) {
            mx.graph_micro_begin(run);
        }
        if let Some(t) = self.fp8_telemetry.as_mut().filter(|_| st.graphs) {
            t.graph_micro_begin(run);
        }
        Ok(run)
    }

    pub(super) fn graph_end(&mut self, ok: bool) -> BResult<()> {
        let st = self.step.as_mut().expect("device step");
        if let Some(mx) = self.mx.as_mut().filter(|_| st.graphs) {
            mx.graph_micro_end();
        }
        if let Some(t) = self.fp8_telemetry.as_mut().filter(|_| st.graphs) {
            t.graph_micro_end();
        }
        st.graph_end(&self.gpu, ok)
    }
}
