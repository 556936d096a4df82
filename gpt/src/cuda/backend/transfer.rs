//! Host <-> device transfers: tensors, the optimizer state, and the tokens (pinned staging and
//! the encoder index built on the device).

use super::*;

impl CudaBackend {
    pub(super) fn write(&mut self, dst: TensorRef, values: &[f32]) -> BResult<()> {
        if values.len() != dst.len {
            return Err(BackendError(format!(
                "write of {} values into a span of {}",
                values.len(),
                dst.len
            )));
        }
        let g = &self.gpu;
        match dst.arena {
            Arena::Stats => g
                .copy_to_device_at(values, &self.stats, dst.offset)
                .map_err(err),
            Arena::Params => {
                // The FP32 values become the master weights (those of this rank's shard); the
                // BF16 parameters their rounding.
                let (at, end) = (dst.offset, dst.offset + dst.len);
                let o = self.opt_range();
                if at.max(o.start) < end.min(o.end) {
                    let s = at.max(o.start)..end.min(o.end);
                    g.copy_to_device_at(
                        &values[s.start - at..s.end - at],
                        &self.master,
                        s.start - o.start,
                    )
                    .map_err(err)?;
                }
                g.copy_to_device_at(&to_bf16(values), &self.params, dst.offset)
                    .map_err(err)
            }
            Arena::Grads => g
                .copy_to_device_at(&to_bf16(values), &self.grads, dst.offset)
                .map_err(err),
            Arena::Acts => g
                .copy_to_device_at(&to_bf16(values), &self.acts, dst.offset)
                .map_err(err),
            Arena::Scratch => g
                .copy_to_device_at(&to_bf16(values), &self.scratch, dst.offset)
                .map_err(err),
        }
    }

    pub(super) fn read(&self, src: TensorRef) -> BResult<Vec<f32>> {
        let g = &self.gpu;
        if src.arena == Arena::Stats {
            let mut out = vec![0.0f32; src.len];
            g.copy_to_host_at(&self.stats, src.offset, &mut out)
                .map_err(err)?;
            return Ok(out);
        }
        let buf = match src.arena {
            Arena::Params => &self.params,
            Arena::Grads => &self.grads,
            Arena::Acts => &self.acts,
            _ => &self.scratch,
        };
        let mut out = vec![bf16::ZERO; src.len];
        g.copy_to_host_at(buf, src.offset, &mut out).map_err(err)?;
        Ok(out.iter().map(|x| x.to_f32()).collect())
    }

    pub(super) fn read_optimizer(&self) -> BResult<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        self.check_unsharded()?;
        let g = &self.gpu;
        Ok((
            g.download(&self.master).map_err(err)?,
            g.download(&self.adam_m).map_err(err)?,
            g.download(&self.adam_v).map_err(err)?,
        ))
    }

    /// Restores the optimizer state; the BF16 parameters become the round-to-nearest of the
    /// master weights. (The run that saved them held their stochastic rounding, so a resumed GPU
    /// run is not bit-identical to an uninterrupted one, unlike on the CPU.)
    pub(super) fn write_optimizer(&mut self, master: &[f32], m: &[f32], v: &[f32]) -> BResult<()> {
        self.check_unsharded()?;
        let n = self.layout.total;
        for (what, x) in [
            ("master weights", master),
            ("first moments", m),
            ("second moments", v),
        ] {
            if x.len() != n {
                return Err(BackendError(format!(
                    "optimizer state: {} {what} for a model of {n} parameters",
                    x.len()
                )));
            }
        }
        let g = &self.gpu;
        g.copy_to_device(master, &self.master).map_err(err)?;
        g.copy_to_device(m, &self.adam_m).map_err(err)?;
        g.copy_to_device(v, &self.adam_v).map_err(err)?;
        g.copy_to_device(&to_bf16(master), &self.params)
            .map_err(err)
    }

    pub(super) fn set_tokens(&mut self, inputs: &[u32], targets: Option<&[u32]>) -> BResult<()> {
        let bt = self.tokens_per_batch;
        if inputs.len() != bt || targets.is_some_and(|t| t.len() != bt) {
            return Err(BackendError(format!(
                "{} input / {} target tokens for a batch of {bt}",
                inputs.len(),
                targets.map_or(0, |t| t.len())
            )));
        }
        let vocab = self.vocab as u32;
        if let Some(bad) = inputs
            .iter()
            .chain(targets.unwrap_or(&[]))
            .find(|&&t| t >= vocab)
        {
            return Err(BackendError(format!(
                "token id {bad} is outside the vocabulary (< {vocab})"
            )));
        }
        // Into this micro batch's pinned set, then copies the DMA engine makes when the stream
        // gets there (the host does not wait for them), then the index built on the device.
        let g = &self.gpu;
        let (pin_in, pin_tgt) = &mut self.token_stage[self.next_stage];
        self.next_stage ^= 1;
        let fill = |pinned: &mut PinnedBuffer<i32>, v: &[u32]| -> BResult<()> {
            let host = pinned.host().map_err(err)?; // waits for the copy two uploads back
            for (h, &t) in host.iter_mut().zip(v) {
                *h = t as i32;
            }
            Ok(())
        };
        fill(pin_in, inputs)?;
        g.copy_pinned_to_device_async(pin_in, &self.inputs, 0)
            .map_err(err)?;
        self.encoder_index
            .build_on_device(g, Ptr::of(&self.inputs))
            .map_err(err)?;
        self.has_tokens = true;
        self.has_targets = targets.is_some();
        if let Some(t) = targets {
            fill(pin_tgt, t)?;
            g.copy_pinned_to_device_async(pin_tgt, &self.targets, 0)
                .map_err(err)?;
        }
        Ok(())
    }

    pub(super) fn zero(&mut self, t: TensorRef) -> BResult<()> {
        let g = &self.gpu;
        match t.arena {
            Arena::Stats => g.fill_bytes_range(&self.stats, t.offset, t.len, 0),
            Arena::Params => g.fill_bytes_range(&self.params, t.offset, t.len, 0),
            Arena::Grads => g.fill_bytes_range(&self.grads, t.offset, t.len, 0),
            Arena::Acts => g.fill_bytes_range(&self.acts, t.offset, t.len, 0),
            Arena::Scratch => g.fill_bytes_range(&self.scratch, t.offset, t.len, 0),
        }
        .map_err(err)
    }

    /// The current batch's tokens as the device holds them (inputs, targets), for tests.
    pub fn tokens_on_device(&self) -> BResult<(Vec<i32>, Vec<i32>)> {
        let g = &self.gpu;
        Ok((
            g.download(&self.inputs).map_err(err)?,
            g.download(&self.targets).map_err(err)?,
        ))
    }

    /// Whether the pinned token sets have copies in flight (inputs, targets of each set).
    pub fn token_copies_pending(&self) -> [bool; 4] {
        let [(a, b), (c, d)] = &self.token_stage;
        [
            a.is_pending(),
            b.is_pending(),
            c.is_pending(),
            d.is_pending(),
        ]
    }

    /// The encoder index of the current batch (tests compare it with the host's).
    pub fn encoder_index(&self) -> &k::encoder::EncoderIndex {
        &self.encoder_index
    }
}
