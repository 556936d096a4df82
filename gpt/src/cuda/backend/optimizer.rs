//! The optimizer: gradient norm, AdamW, and data parallel (ZeRO-1 shard, `DeviceZero1`).

use super::*;
use crate::cpu::ops::AdamW;

impl CudaBackend {
    /// Data parallel over `dist` (ZeRO-1, gpt::cuda::dist): `adamw` updates this rank's shard
    /// of the parameters only; the trainer sums the gradients and gathers the parameters
    /// through `Backend::device_zero1`.
    pub fn set_data_parallel(
        &mut self,
        dist: &dyn crate::dist::Transport,
        kind: crate::cuda::dist::CollectiveKind,
    ) -> BResult<()> {
        if self.opt_range()
            != crate::dist::Shards::even(self.layout.total, dist.size()).range(dist.rank())
        {
            return Err(BackendError(format!(
                "rank {} of {}: this backend holds the optimizer state of parameters {:?}, not that rank's ZeRO-1 shard: open it with CudaBackend::on_ranks",
                dist.rank(),
                dist.size(),
                self.opt_range()
            )));
        }
        // Only a model of under 8 parameters per rank gets an empty shard (`Shards::even`); the
        // device path (norm, AdamW, NCCL) is not built for one: refused by name.
        if self.opt_range().is_empty() {
            return Err(BackendError(format!(
                "rank {} of {}: its ZeRO-1 shard of the model's {} parameters is empty (shards start at multiples of {}): use at most {} ranks for this model",
                dist.rank(),
                dist.size(),
                self.layout.total,
                crate::dist::Shards::ALIGN,
                self.layout.total / crate::dist::Shards::ALIGN
            )));
        }
        let overlap = crate::cuda::dist::overlap_from_env().map_err(BackendError)?;
        let st = crate::cuda::dist::Zero1State::new(&self.gpu, dist, &self.layout, kind, overlap);
        self.dp = Some(st.map_err(BackendError)?);
        Ok(())
    }

    pub(super) fn grad_norm(&mut self) -> BResult<f32> {
        let g = &self.gpu;
        k::global_norm::grad_norm(
            g,
            Ptr::of(&self.norm),
            Ptr::of(&self.grads),
            Ptr::of(&self.work),
        )
        .map_err(err)?;
        let mut norm = [0.0f32];
        g.copy_to_host(&self.norm, &mut norm).map_err(err)?;
        Ok(norm[0])
    }

    pub(super) fn adamw(&mut self, hp: &AdamW) -> BResult<()> {
        let args = k::adamw::AdamwArgs {
            lr: hp.lr,
            beta1: hp.beta1,
            beta2: hp.beta2,
            beta1_correction: 1.0 - hp.beta1.powi(hp.t as i32),
            beta2_correction: 1.0 - hp.beta2.powi(hp.t as i32),
            eps: hp.eps,
            // Applied to the decayed ranges only (matrices); the others get 0.
            weight_decay: hp.weight_decay,
            grad_scale: hp.grad_scale,
            seed: adamw_seed(hp.t),
            // Keyed by the global index (below), so a shard rounds as the full update would.
            index_base: self.opt_range().start as u64,
        };
        // Every tensor in one multi-tensor launch (or one reference launch per range: see
        // `adamw_kernels`); the same bits either way.
        // Data parallel: this rank's shard of every tensor only (ZeRO-1). The launch sees the
        // shard's span of the parameters and gradients, so offsets are from its start (the
        // stochastic rounding adds the start back: `index_base`).
        let shard = self.opt_range();
        let ranges: Vec<k::adamw::AdamwRange> = self
            .layout
            .tensors
            .iter()
            .map(|t| {
                (
                    t,
                    t.offset.max(shard.start)..(t.offset + t.len()).min(shard.end),
                )
            })
            .filter(|(_, r)| !r.is_empty())
            .map(|(t, r)| k::adamw::AdamwRange {
                offset: r.start - shard.start,
                len: r.len(),
                decay: t.weight_decay(),
            })
            .collect();
        let (params, master, grads, m, v) = self.adamw_operands();
        k::adamw::adamw_update_ranges_with(
            &self.gpu,
            self.adamw_kernels(),
            params,
            master,
            grads,
            m,
            v,
            &ranges,
            &args,
        )
        .map_err(err)
    }

    /// The five buffers `adamw` hands the kernels: this rank's shard of the BF16 parameters and
    /// gradients, and the FP32 master weights and moments (the shard's only).
    #[allow(clippy::type_complexity)]
    fn adamw_operands(
        &self,
    ) -> (
        Ptr<'_, bf16>,
        Ptr<'_, f32>,
        Ptr<'_, bf16>,
        Ptr<'_, f32>,
        Ptr<'_, f32>,
    ) {
        let shard = self.opt_range();
        (
            Ptr::of(&self.params).slice(shard.start, shard.len()),
            Ptr::of(&self.master),
            Ptr::of(&self.grads).slice(shard.start, shard.len()),
            Ptr::of(&self.adam_m),
            Ptr::of(&self.adam_v),
        )
    }

    /// Which AdamW kernels `adamw` launches: the vectorized multi-tensor kernel when its five
    /// buffers start 16-byte aligned (with ZeRO-1: when the shard starts at a multiple of 8
    /// BF16 values, as `Shards::even` places every shard), else one reference launch per range
    /// (or always, under MXGPT_MEMBOUND_KERNELS=reference).
    pub fn adamw_kernels(&self) -> k::membound::MemImpl {
        let (p, ma, g, m, v) = self.adamw_operands();
        k::membound::pick(k::membound::aligned16(&[
            p.addr(),
            ma.addr(),
            g.addr(),
            m.addr(),
            v.addr(),
        ]))
    }
}

/// A fresh stochastic-rounding seed per optimizer step (splitmix64 of the step), so an element
/// does not round the same way every step.
pub(super) fn adamw_seed(step: u64) -> u32 {
    let mut z = step.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 32) as u32
}

impl crate::dist::zero1::DeviceZero1 for CudaBackend {
    fn reduce_gradients(
        &mut self,
        dist: &dyn crate::dist::Transport,
        shards: &crate::dist::Shards,
    ) -> Result<f32, String> {
        let dp = self.dp.as_ref().ok_or(NOT_DATA_PARALLEL)?;
        dp.reduce_gradients(&self.gpu, dist, shards, &self.grads, &self.norm, &self.work)
    }
    fn gather_params(
        &mut self,
        dist: &dyn crate::dist::Transport,
        shards: &crate::dist::Shards,
    ) -> Result<(), String> {
        let dp = self.dp.as_ref().ok_or(NOT_DATA_PARALLEL)?;
        dp.gather_params(&self.gpu, dist, shards, &self.params)
    }
    fn read_shard(&self) -> Result<crate::dist::zero1::ShardState, String> {
        let (g, o) = (&self.gpu, self.opt_range());
        let e = |e: CudaError| e.to_string();
        let mut params = vec![bf16::ZERO; o.len()];
        g.copy_to_host_at(&self.params, o.start, &mut params)
            .map_err(e)?;
        Ok(crate::dist::zero1::ShardState {
            offset: o.start,
            master: g.download(&self.master).map_err(e)?,
            m: g.download(&self.adam_m).map_err(e)?,
            v: g.download(&self.adam_v).map_err(e)?,
            params: params.iter().map(|x| x.to_f32()).collect(),
        })
    }
    fn write_shard(&mut self, st: &crate::dist::zero1::ShardState) -> Result<(), String> {
        let (g, o) = (&self.gpu, self.opt_range());
        let fits = |x: &[f32]| x.len() == o.len();
        if st.offset != o.start
            || !(fits(&st.master) && fits(&st.m) && fits(&st.v))
            || !(st.params.is_empty() || fits(&st.params))
        {
            return Err(format!(
                "optimizer shard at {} with {}/{}/{}/{} master/m/v/parameter values for this rank's shard {o:?}",
                st.offset,
                st.master.len(),
                st.m.len(),
                st.v.len(),
                st.params.len()
            ));
        }
        let e = |e: CudaError| e.to_string();
        g.copy_to_device(&st.master, &self.master).map_err(e)?;
        g.copy_to_device(&st.m, &self.adam_m).map_err(e)?;
        g.copy_to_device(&st.v, &self.adam_v).map_err(e)?;
        let params = if st.params.is_empty() {
            &st.master
        } else {
            &st.params
        };
        g.copy_to_device_at(&to_bf16(params), &self.params, o.start)
            .map_err(e)
    }
}

const NOT_DATA_PARALLEL: &str =
    "the CUDA backend was not set up for data parallel (CudaBackend::set_data_parallel)";
