//! Launcher for ptx/kernels/adamw.cu: AdamW on f32 master weights with stochastically rounded
//! bf16 parameters.
//!
//! [`adamw_update`] runs the reference kernel on one range. [`adamw_update_ranges`] updates a
//! list of ranges (the parameter tensors, each decayed or not) in one step: by default with
//! ONE launch of `adamw_update_multi` (16-byte accesses; the ranges passed in a table by value)
//! when the five buffers are 16-byte aligned, else with one reference launch per range (see
//! [`super::membound`]); both write the same bits.

use super::membound::{self, MemImpl};
use super::{check_len, Ptr};
use runtime::cuda::{half::bf16, CudaError, Gpu, KernelArg, LaunchConfig, Result};
use std::ffi::c_void;

/// Ranges per `adamw_update_multi` launch: ADAMW_MAX_SEGMENTS in adamw.cu. More (after merging
/// neighbours with the same decay setting) take several launches.
pub const MAX_SEGMENTS: usize = 16;

/// One range of the flat parameter buffers and whether AdamW decays it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdamwRange {
    pub offset: usize,
    pub len: usize,
    /// Apply `AdamwArgs::weight_decay` (matrices); otherwise 0 (biases, layernorm gains).
    pub decay: bool,
}

/// The kernel's `AdamwTable` (adamw.cu), passed by value: sorted, disjoint, non-empty ranges
/// `[start[s], end[s])` and a decay bit per range.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct AdamwTable {
    start: [u64; MAX_SEGMENTS],
    end: [u64; MAX_SEGMENTS],
    count: u32,
    decay_mask: u32,
}

// SAFETY: a plain repr(C) struct of u64/u32 whose layout matches `struct AdamwTable` in
// adamw.cu (264 bytes, 8-byte aligned), passed by address as CUDA expects for by-value params.
unsafe impl KernelArg for AdamwTable {
    fn as_kernel_param(&self) -> *mut c_void {
        self as *const AdamwTable as *mut c_void
    }
    fn param_size(&self) -> usize {
        std::mem::size_of::<AdamwTable>()
    }
}

/// Hyper-parameters of one `adamw_update` launch (the kernel's scalar arguments, in order).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamwArgs {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    /// 1 - beta1^t for the 1-based step t (computed on the host).
    pub beta1_correction: f32,
    /// 1 - beta2^t.
    pub beta2_correction: f32,
    pub eps: f32,
    /// 0 for ranges that are not decayed (biases, layernorm gains).
    pub weight_decay: f32,
    /// Multiplies every gradient first (clip factor, or 1).
    pub grad_scale: f32,
    /// Stochastic-rounding seed: pass a fresh one every step (e.g. a hash of run seed and step).
    pub seed: u32,
    /// The global index of the buffers' element 0: element i rounds with `sr_hash(seed,
    /// index_base + i)`. 0 for whole buffers; a ZeRO-1 shard passes its start, so that its
    /// update writes the bits of the same slice of the full update.
    pub index_base: u64,
}

/// The five buffers every AdamW kernel takes first, in this order.
#[derive(Clone, Copy)]
struct Buffers<'a> {
    params: Ptr<'a, bf16>,
    master: Ptr<'a, f32>,
    grads: Ptr<'a, bf16>,
    m: Ptr<'a, f32>,
    v: Ptr<'a, f32>,
}

impl<'a> Buffers<'a> {
    fn new(
        params: Ptr<'a, bf16>,
        master: Ptr<'a, f32>,
        grads: Ptr<'a, bf16>,
        m: Ptr<'a, f32>,
        v: Ptr<'a, f32>,
    ) -> Self {
        Buffers {
            params,
            master,
            grads,
            m,
            v,
        }
    }

    /// Each buffer holds `end` elements; with `aligned16`, each starts 16-byte aligned (what
    /// the vectorized kernels need). An error naming kernel `k` and the buffer otherwise.
    fn check(&self, k: &str, end: usize, aligned16: bool) -> Result<()> {
        check_len(k, "params", &self.params, end)?;
        check_len(k, "master", &self.master, end)?;
        check_len(k, "grads", &self.grads, end)?;
        check_len(k, "m", &self.m, end)?;
        check_len(k, "v", &self.v, end)?;
        if aligned16 {
            membound::check_aligned16(k, &self.named_addrs())?;
        }
        Ok(())
    }

    fn named_addrs(&self) -> [(&'static str, u64); 5] {
        [
            ("params", self.params.addr()),
            ("master", self.master.addr()),
            ("grads", self.grads.addr()),
            ("m", self.m.addr()),
            ("v", self.v.addr()),
        ]
    }

    /// Launches adamw.cu's `kernel` with the argument list every AdamW kernel shares: the
    /// five buffers, `index_base`, then `rest` (the kernel's range, then its scalars).
    ///
    /// # Safety
    /// `rest` must be the kernel's remaining parameters in order, and the grid must touch only
    /// elements the buffers hold (the callers check both against the kernel's signature).
    unsafe fn launch(
        &self,
        g: &Gpu,
        kernel: &str,
        cfg: LaunchConfig,
        index_base: &u64,
        rest: &[&dyn KernelArg],
    ) -> Result<()> {
        let k = g.kernel("adamw", kernel)?;
        let mut args: Vec<&dyn KernelArg> = vec![
            &self.params,
            &self.master,
            &self.grads,
            &self.m,
            &self.v,
            index_base,
        ];
        args.extend_from_slice(rest);
        g.launch(&k, cfg, &args)
    }
}

impl AdamwArgs {
    /// The scalars `adamw_update` and `adamw_update_multi` take last, in order (float x 8,
    /// unsigned int seed).
    fn scalars(&self) -> [&dyn KernelArg; 9] {
        [
            &self.lr,
            &self.beta1,
            &self.beta2,
            &self.beta1_correction,
            &self.beta2_correction,
            &self.eps,
            &self.weight_decay,
            &self.grad_scale,
            &self.seed,
        ]
    }
}

/// One AdamW step on elements `[offset, offset + n)` of the flat parameter buffers, in place:
/// `m`, `v`, `master` (f32) are updated and `params` (bf16) is overwritten with the stochastic
/// rounding of the new master weight (`sr_hash(seed, hp.index_base + i)`, keyed by the GLOBAL
/// index, so results do not depend on how the buffer is split into launches or shards). All
/// pointers are the WHOLE buffers (the kernel adds `offset` itself); each must hold at least
/// `offset + n` elements. `grads` is read only. No operand may overlap another. `n == 0` is a
/// no-op.
#[allow(clippy::too_many_arguments)]
pub fn adamw_update(
    g: &Gpu,
    params: Ptr<bf16>,
    master: Ptr<f32>,
    grads: Ptr<bf16>,
    m: Ptr<f32>,
    v: Ptr<f32>,
    offset: usize,
    n: usize,
    hp: &AdamwArgs,
) -> Result<()> {
    update_range(g, &Buffers::new(params, master, grads, m, v), offset, n, hp)
}

fn update_range(g: &Gpu, b: &Buffers, offset: usize, n: usize, hp: &AdamwArgs) -> Result<()> {
    const K: &str = "adamw_update";
    let end = offset
        .checked_add(n)
        .ok_or_else(|| CudaError::new(format!("{K}: offset + n overflows"), 1))?;
    b.check(K, end, false)?;
    if n == 0 {
        return Ok(());
    }
    let mut rest: Vec<&dyn KernelArg> = vec![&offset, &n];
    rest.extend_from_slice(&hp.scalars());
    // SAFETY: adamw_update(5 buffers, unsigned long long index_base, size_t offset, size_t n,
    // float x 8, unsigned int seed); every buffer holds offset + n elements (checked).
    unsafe { b.launch(g, K, LaunchConfig::linear(n, 256), &hp.index_base, &rest) }
}

/// One AdamW step over every range of `ranges` (e.g. all parameter tensors of a model), in
/// place, with `hp.weight_decay` applied to the ranges with `decay` and 0 to the others: the
/// same bits as one [`adamw_update`] per range (stochastic rounding indexed by the global
/// element index either way). Ranges must be sorted by offset and disjoint (an error
/// otherwise); empty ones are skipped. Buffers are the WHOLE buffers, as for [`adamw_update`].
/// By default one `adamw_update_multi` launch (per [`MAX_SEGMENTS`] ranges after merging
/// neighbours with the same decay) when all five buffers are 16-byte aligned, else one
/// reference launch per range.
#[allow(clippy::too_many_arguments)]
pub fn adamw_update_ranges(
    g: &Gpu,
    params: Ptr<bf16>,
    master: Ptr<f32>,
    grads: Ptr<bf16>,
    m: Ptr<f32>,
    v: Ptr<f32>,
    ranges: &[AdamwRange],
    hp: &AdamwArgs,
) -> Result<()> {
    let b = Buffers::new(params, master, grads, m, v);
    let imp = membound::pick(membound::aligned16(&b.named_addrs().map(|(_, a)| a)));
    update_ranges(g, imp, &b, ranges, hp)
}

/// [`adamw_update_ranges`] on the kernels asked for: [`MemImpl::Reference`] launches
/// `adamw_update` once per range; [`MemImpl::Vectorized`] launches `adamw_update_multi` once
/// per [`MAX_SEGMENTS`] merged ranges and needs the five buffers 16-byte aligned (an error
/// otherwise).
#[allow(clippy::too_many_arguments)]
pub fn adamw_update_ranges_with(
    g: &Gpu,
    imp: MemImpl,
    params: Ptr<bf16>,
    master: Ptr<f32>,
    grads: Ptr<bf16>,
    m: Ptr<f32>,
    v: Ptr<f32>,
    ranges: &[AdamwRange],
    hp: &AdamwArgs,
) -> Result<()> {
    update_ranges(
        g,
        imp,
        &Buffers::new(params, master, grads, m, v),
        ranges,
        hp,
    )
}

fn update_ranges(
    g: &Gpu,
    imp: MemImpl,
    b: &Buffers,
    ranges: &[AdamwRange],
    hp: &AdamwArgs,
) -> Result<()> {
    const K: &str = "adamw_update_multi";
    let merged = checked_ranges(K, b, ranges, imp == MemImpl::Vectorized)?;
    if imp == MemImpl::Reference {
        for r in &merged {
            let a = AdamwArgs {
                weight_decay: if r.decay { hp.weight_decay } else { 0.0 },
                ..*hp
            };
            update_range(g, b, r.offset, r.len, &a)?;
        }
        return Ok(());
    }
    for chunk in merged.chunks(MAX_SEGMENTS) {
        let (table, vecs) = table_of(chunk);
        let mut rest: Vec<&dyn KernelArg> = vec![&table];
        rest.extend_from_slice(&hp.scalars());
        // SAFETY: adamw_update_multi(5 buffers, unsigned long long index_base, AdamwTable,
        // float x 8, unsigned int seed); every buffer holds the table's last end and is 16-byte
        // aligned (checked), and the grid covers the 8-vectors from floor(start[0] / 8) to
        // ceil(end[count - 1] / 8).
        unsafe { b.launch(g, K, LaunchConfig::linear(vecs, 256), &hp.index_base, &rest)? };
    }
    Ok(())
}

/// `ranges` merged ([`merge_ranges`]), with the buffers checked to hold the last range's end
/// (and, with `aligned16`, to be 16-byte aligned).
fn checked_ranges(
    k: &str,
    b: &Buffers,
    ranges: &[AdamwRange],
    aligned16: bool,
) -> Result<Vec<AdamwRange>> {
    let merged = merge_ranges(ranges)?;
    if let Some(last) = merged.last() {
        b.check(k, last.offset + last.len, aligned16)?;
    }
    Ok(merged)
}

/// `ranges` validated (sorted, disjoint: an error otherwise), empty ones dropped, touching
/// neighbours with the same decay merged.
fn merge_ranges(ranges: &[AdamwRange]) -> Result<Vec<AdamwRange>> {
    const K: &str = "adamw_update_multi";
    // Validate, drop empty ranges, merge touching neighbours with the same decay.
    let mut merged: Vec<AdamwRange> = Vec::with_capacity(ranges.len());
    let mut prev_end = 0usize;
    for r in ranges.iter().filter(|r| r.len > 0) {
        let end = r
            .offset
            .checked_add(r.len)
            .ok_or_else(|| CudaError::new(format!("{K}: offset + len overflows"), 1))?;
        if r.offset < prev_end {
            return Err(CudaError::new(
                format!(
                    "{K}: ranges must be sorted and disjoint; [{}, {end}) starts before {prev_end}",
                    r.offset
                ),
                1,
            ));
        }
        prev_end = end;
        match merged.last_mut() {
            Some(last) if last.offset + last.len == r.offset && last.decay == r.decay => {
                last.len += r.len
            }
            _ => merged.push(*r),
        }
    }
    Ok(merged)
}

/// The kernel table of up to MAX_SEGMENTS merged ranges, and how many 8-vectors its grid covers.
fn table_of(chunk: &[AdamwRange]) -> (AdamwTable, usize) {
    let mut table = AdamwTable {
        start: [0; MAX_SEGMENTS],
        end: [0; MAX_SEGMENTS],
        count: chunk.len() as u32,
        decay_mask: 0,
    };
    for (s, r) in chunk.iter().enumerate() {
        table.start[s] = r.offset as u64;
        table.end[s] = (r.offset + r.len) as u64;
        if r.decay {
            table.decay_mask |= 1 << s;
        }
    }
    let first_vec = chunk[0].offset / 8;
    let last = chunk[chunk.len() - 1];
    (table, (last.offset + last.len).div_ceil(8) - first_vec)
}

/// [`adamw_update_ranges`] on `adamw_update_multi_dev`: the step's scalars (lr, betas, bias
/// corrections, eps, weight decay, seed) read from `p` and the clip factor from `state`
/// (written by `step::finish`) on the device, so nothing is passed by value that changes from
/// step to step; skipped on the device when `state` says a loss or norm was not finite. The
/// same bits as [`adamw_update_ranges`] with those values (`index_base` as
/// [`AdamwArgs::index_base`]). The five buffers must be 16-byte aligned (an error otherwise).
#[allow(clippy::too_many_arguments)]
pub fn adamw_update_ranges_dev(
    g: &Gpu,
    params: Ptr<bf16>,
    master: Ptr<f32>,
    grads: Ptr<bf16>,
    m: Ptr<f32>,
    v: Ptr<f32>,
    ranges: &[AdamwRange],
    index_base: u64,
    p: Ptr<super::step::StepParams>,
    state: Ptr<u64>,
) -> Result<()> {
    const K: &str = "adamw_update_multi_dev";
    let b = Buffers::new(params, master, grads, m, v);
    let merged = checked_ranges(K, &b, ranges, true)?;
    if merged.is_empty() {
        return Ok(());
    }
    check_len(K, "step params", &p, 1)?;
    check_len(K, "step state", &state, super::step::STATE_WORDS)?;
    for chunk in merged.chunks(MAX_SEGMENTS) {
        let (table, vecs) = table_of(chunk);
        // SAFETY: adamw_update_multi_dev(5 buffers, unsigned long long index_base, AdamwTable,
        // const StepParams*, const StepState*); buffers hold the table's last end and are
        // aligned, p and state hold a StepParams and a StepState (checked); the grid covers the
        // table's 8-vectors.
        unsafe {
            b.launch(
                g,
                K,
                LaunchConfig::linear(vecs, 256),
                &index_base,
                &[&table, &p, &state],
            )?
        };
    }
    Ok(())
}
