//! Launchers for ptx/kernels/encoder.cu: token + position embedding forward and its
//! deterministic backward (semantics of `gpt::cpu::ops::{encoder_forward, encoder_backward}`).
//!
//! Two implementations ([`MemImpl`]) with the same sums in the same order (so the same bits):
//! the reference kernels (one thread per element, 2-byte accesses) and the `*_vec` kernels (one
//! thread per 8 channels, 16-byte accesses), which need `c % 8 == 0` and every bf16 operand
//! 16-byte aligned. The default launchers pick the vectorized kernels when both hold (see
//! [`super::membound`]); the `*_with` launchers run the one asked for.

use super::membound::{self, MemImpl};
use super::{check_dim, check_len, Ptr};
use runtime::cuda::{half::bf16, CudaError, DeviceBuffer, Gpu, LaunchConfig, Result};

/// Largest grid.y of a launch: encoder_backward_wte puts one distinct token per grid row, and
/// strides past this many.
const MAX_GRID_Y: usize = 65535;

fn product(kernel: &str, dims: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| CudaError::new(format!("{kernel}: shape product overflows"), 1))
}

/// `out[b, t, :] = wte[tokens[b, t], :] + wpe[t, :]` (f32 add, one bf16 rounding), overwriting
/// `out` [b*t*c]. `tokens` [b*t] are device i32 ids that must be in `0..wte.len() / c`: not
/// checked on the device (the backend checks them on the host). `out` must not overlap the
/// other operands.
#[allow(clippy::too_many_arguments)]
pub fn encoder_forward(
    g: &Gpu,
    out: Ptr<bf16>,
    tokens: Ptr<i32>,
    wte: Ptr<bf16>,
    wpe: Ptr<bf16>,
    b: usize,
    t: usize,
    c: usize,
) -> Result<()> {
    let ok = c.is_multiple_of(8) && membound::aligned16(&[out.addr(), wte.addr(), wpe.addr()]);
    encoder_forward_with(g, membound::pick(ok), out, tokens, wte, wpe, b, t, c)
}

/// [`encoder_forward`] on the kernel asked for ([`MemImpl::Vectorized`]: `c % 8 == 0` and
/// `out`, `wte`, `wpe` 16-byte aligned, else an error).
#[allow(clippy::too_many_arguments)]
pub fn encoder_forward_with(
    g: &Gpu,
    imp: MemImpl,
    out: Ptr<bf16>,
    tokens: Ptr<i32>,
    wte: Ptr<bf16>,
    wpe: Ptr<bf16>,
    b: usize,
    t: usize,
    c: usize,
) -> Result<()> {
    const K: &str = "encoder_forward";
    let (bi, ti, ci) = (
        check_dim(K, "b", b)?,
        check_dim(K, "t", t)?,
        check_dim(K, "c", c)?,
    );
    let n = product(K, &[b, t, c])?;
    check_len(K, "out", &out, n)?;
    check_len(K, "tokens", &tokens, b * t)?;
    check_len(K, "wte", &wte, c)?;
    check_len(K, "wpe", &wpe, t * c)?;
    let (name, cfg) = match imp {
        MemImpl::Reference => (K, LaunchConfig::linear(n, 256)),
        MemImpl::Vectorized => {
            membound::check_c8(K, c)?;
            membound::check_aligned16(
                K,
                &[
                    ("out", out.addr()),
                    ("wte", wte.addr()),
                    ("wpe", wpe.addr()),
                ],
            )?;
            ("encoder_forward_vec", LaunchConfig::linear(n / 8, 256))
        }
    };
    let k = g.kernel("encoder", name)?;
    // SAFETY: encoder_forward{,_vec}(bf16*, const int*, const bf16*, const bf16*, int, int,
    // int); lengths checked above (token ids are the caller's contract), c % 8 and alignment
    // for the vec kernel.
    unsafe { g.launch(&k, cfg, &[&out, &tokens, &wte, &wpe, &bi, &ti, &ci]) }
}

/// The token -> positions index `encoder_backward_wte` needs, in one preallocated device
/// buffer (layout in encoder.cu): the distinct token ids in increasing order (`uniq`, nu of
/// them), CSR offsets `starts` [nu + 1] and the positions `b * T + t` of each token, ascending
/// (a stable counting sort of the tokens). Capacity for `cap = min(bt, vocab)` distinct tokens,
/// so one buffer serves every batch.
///
/// Two builders with the same contents: [`EncoderIndex::build_on_device`] (five launches from
/// the device token buffer, no host work, no sync, no allocation: what the backend runs every
/// micro batch, and what a captured CUDA graph replays) and [`EncoderIndex::fill_from_host`], the
/// reference: the counting sort on the host, uploaded (a synchronizing copy).
pub struct EncoderIndex {
    /// [nu, rows | uniq (cap) | starts (cap + 1) | positions (bt)]
    buf: DeviceBuffer<i32>,
    /// The device build's scratch: [counts (vocab) | tokstart (vocab) | tmp (bt)].
    scratch: DeviceBuffer<i32>,
    cap: usize,
    bt: usize,
    vocab: usize,
}

/// An index read back to the host (tests): the used parts of the device buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostIndex {
    pub rows: usize,
    pub uniq: Vec<i32>,
    pub starts: Vec<i32>,
    pub positions: Vec<i32>,
}

/// The host reference: the index of `tokens` in the device layout for capacity `cap`.
fn host_layout(tokens: &[u32], vocab: usize, cap: usize) -> Result<Vec<i32>> {
    let bt = tokens.len();
    let mut count = vec![0u32; vocab];
    for (p, &tok) in tokens.iter().enumerate() {
        let slot = count.get_mut(tok as usize).ok_or_else(|| {
            CudaError::new(
                format!("encoder index: token {tok} at position {p} >= vocabulary {vocab}"),
                1,
            )
        })?;
        *slot += 1;
    }
    let nu = count.iter().filter(|&&n| n > 0).count();
    let rows = count.iter().rposition(|&n| n > 0).map_or(0, |v| v + 1);
    let mut host = vec![0i32; 2 + 2 * cap + 1 + bt];
    host[0] = nu as i32;
    host[1] = rows as i32;
    let (uniq, rest) = host[2..].split_at_mut(cap);
    let (starts, positions) = rest.split_at_mut(cap + 1);
    // count[token] becomes the cursor: where the token's next position goes in `positions`.
    let (mut u, mut next) = (0, 0u32);
    for (tok, n) in count.iter_mut().enumerate() {
        if *n > 0 {
            uniq[u] = tok as i32;
            starts[u] = next as i32;
            u += 1;
            let cnt = *n;
            *n = next;
            next += cnt;
        }
    }
    starts[nu] = next as i32;
    for (p, &tok) in tokens.iter().enumerate() {
        let cur = &mut count[tok as usize];
        positions[*cur as usize] = p as i32;
        *cur += 1;
    }
    Ok(host)
}

impl EncoderIndex {
    /// Device buffers for the index of `bt` tokens of a `vocab`-token vocabulary.
    pub fn new(g: &Gpu, bt: usize, vocab: usize) -> Result<EncoderIndex> {
        if bt == 0 || bt > (i32::MAX as usize) / 4 || vocab == 0 || vocab > i32::MAX as usize / 2 {
            return Err(CudaError::new(
                format!("encoder index: {bt} tokens of a {vocab}-token vocabulary, need 1..=2^29 tokens and 1..=2^30 ids"),
                1,
            ));
        }
        let cap = bt.min(vocab);
        Ok(EncoderIndex {
            buf: g.alloc(2 + 2 * cap + 1 + bt)?,
            scratch: g.alloc(2 * vocab + bt)?,
            cap,
            bt,
            vocab,
        })
    }

    /// The index of `tokens` (all B*T ids of the batch, row-major; every id `< vocab`) built on
    /// the host and uploaded into new buffers.
    pub fn build(g: &Gpu, tokens: &[u32], vocab: usize) -> Result<EncoderIndex> {
        let index = EncoderIndex::new(g, tokens.len(), vocab)?;
        index.fill_from_host(g, tokens)?;
        Ok(index)
    }

    /// The reference builder: the counting sort of `tokens` (`bt` ids, each `< vocab`, else an
    /// error naming it) on the host, uploaded (waits for the stream).
    pub fn fill_from_host(&self, g: &Gpu, tokens: &[u32]) -> Result<()> {
        if tokens.len() != self.bt {
            return Err(CudaError::new(
                format!(
                    "encoder index: {} tokens for an index of {}",
                    tokens.len(),
                    self.bt
                ),
                1,
            ));
        }
        g.copy_to_device(&host_layout(tokens, self.vocab, self.cap)?, &self.buf)
    }

    /// Builds the index of the device tokens `tokens` [bt] on the device: five launches, no
    /// host work, no sync, no allocation. Ids must be `< vocab` (the caller checks them; an id
    /// outside is left out of the index).
    pub fn build_on_device(&self, g: &Gpu, tokens: Ptr<i32>) -> Result<()> {
        const K: &str = "encoder_index";
        check_len(K, "tokens", &tokens, self.bt)?;
        let (v, bt) = (self.vocab, self.bt);
        let (vi, bti, capi) = (v as i32, bt as i32, self.cap as i32);
        let scratch = Ptr::of(&self.scratch);
        let (counts, tokstart, tmp) = (
            scratch.slice(0, v),
            scratch.slice(v, v),
            scratch.slice(2 * v, bt),
        );
        let index = Ptr::of(&self.buf);
        let kernel = |name: &str| g.kernel("encoder", name);
        // SAFETY: signatures as in encoder.cu's header; counts/tokstart hold vocab ints, tmp and
        // tokens bt, the index 2 + 2 cap + 1 + bt (allocated in `new`); grids cover vocab or bt.
        unsafe {
            g.launch(
                &kernel("encoder_index_clear")?,
                LaunchConfig::linear(v, 256),
                &[&counts, &vi],
            )?;
            g.launch(
                &kernel("encoder_index_count")?,
                LaunchConfig::linear(bt, 256),
                &[&counts, &tokens, &bti, &vi],
            )?;
            g.launch(
                &kernel("encoder_index_scan")?,
                LaunchConfig {
                    grid: (1, 1, 1),
                    block: (1024, 1, 1),
                    smem_bytes: 0,
                },
                &[&counts, &tokstart, &index, &vi, &capi],
            )?;
            g.launch(
                &kernel("encoder_index_scatter")?,
                LaunchConfig::linear(bt, 256),
                &[&counts, &tokstart, &tokens, &tmp, &bti, &vi],
            )?;
            g.launch(
                &kernel("encoder_index_order")?,
                LaunchConfig::linear(bt, 256),
                &[&counts, &tokstart, &tokens, &tmp, &index, &bti, &vi, &capi],
            )
        }
    }

    /// Fills the index buffer with `byte` (tests poison it before a build).
    pub fn fill_bytes(&self, g: &Gpu, byte: u8) -> Result<()> {
        g.fill_bytes(&self.buf, byte)
    }

    /// The index as the device holds it (waits for the stream): for tests.
    pub fn download(&self, g: &Gpu) -> Result<HostIndex> {
        let all = g.download(&self.buf)?;
        let (nu, rows) = (all[0].max(0) as usize, all[1].max(0) as usize);
        let nu = nu.min(self.cap);
        let uniq = &all[2..2 + self.cap];
        let starts = &all[2 + self.cap..3 + 2 * self.cap];
        Ok(HostIndex {
            rows,
            uniq: uniq[..nu].to_vec(),
            starts: starts[..nu + 1].to_vec(),
            positions: all[3 + 2 * self.cap..].to_vec(),
        })
    }

    /// The reference index of `tokens` in the form [`EncoderIndex::download`] returns.
    pub fn host_reference(tokens: &[u32], vocab: usize) -> Result<HostIndex> {
        let cap = tokens.len().min(vocab);
        let all = host_layout(tokens, vocab, cap)?;
        let nu = all[0] as usize;
        Ok(HostIndex {
            rows: all[1] as usize,
            uniq: all[2..2 + nu].to_vec(),
            starts: all[2 + cap..3 + cap + nu].to_vec(),
            positions: all[3 + 2 * cap..].to_vec(),
        })
    }

    /// Number of tokens the index holds (B*T).
    pub fn tokens(&self) -> usize {
        self.bt
    }
}

/// Encoder backward with a prebuilt index, ACCUMULATING: `dwte[v, :] += sum of dout[p, :]`
/// over the positions p holding token v (in ascending p order), `dwpe[t, :] += sum over b of
/// dout[b, t, :]` (in b order); f32 sums, one bf16 rounding per element; rows of unused tokens
/// are untouched. Bitwise deterministic. Asynchronous (no host sync); `index` must stay alive
/// until the kernels have run (drop it after a later synchronizing call). `dwte`, `dwpe`, `dout`
/// must not overlap.
#[allow(clippy::too_many_arguments)]
pub fn encoder_backward_indexed(
    g: &Gpu,
    dwte: Ptr<bf16>,
    dwpe: Ptr<bf16>,
    dout: Ptr<bf16>,
    index: &EncoderIndex,
    b: usize,
    t: usize,
    c: usize,
) -> Result<()> {
    let ok = c.is_multiple_of(8) && membound::aligned16(&[dwte.addr(), dwpe.addr(), dout.addr()]);
    encoder_backward_indexed_with(g, membound::pick(ok), dwte, dwpe, dout, index, b, t, c)
}

/// [`encoder_backward_indexed`] on the kernels asked for ([`MemImpl::Vectorized`]: `c % 8 == 0`
/// and `dwte`, `dwpe`, `dout` 16-byte aligned, else an error).
#[allow(clippy::too_many_arguments)]
pub fn encoder_backward_indexed_with(
    g: &Gpu,
    imp: MemImpl,
    dwte: Ptr<bf16>,
    dwpe: Ptr<bf16>,
    dout: Ptr<bf16>,
    index: &EncoderIndex,
    b: usize,
    t: usize,
    c: usize,
) -> Result<()> {
    const K: &str = "encoder_backward";
    let (bi, ti, ci) = (
        check_dim(K, "b", b)?,
        check_dim(K, "t", t)?,
        check_dim(K, "c", c)?,
    );
    let n = product(K, &[b, t, c])?;
    if index.bt != b * t {
        return Err(CudaError::new(
            format!(
                "{K}: index built for {} tokens, b * t = {}",
                index.bt,
                b * t
            ),
            1,
        ));
    }
    check_len(K, "dout", &dout, n)?;
    check_len(K, "dwpe", &dwpe, t * c)?;
    // Token ids are < the index's vocabulary (checked by its builders): dwte must hold that many
    // rows (which ones the batch uses is known only on the device).
    check_len(K, "dwte", &dwte, index.vocab * c)?;
    let vec = imp == MemImpl::Vectorized;
    if vec {
        membound::check_c8(K, c)?;
        membound::check_aligned16(
            K,
            &[
                ("dwte", dwte.addr()),
                ("dwpe", dwpe.addr()),
                ("dout", dout.addr()),
            ],
        )?;
    }
    let idx = Ptr::of(&index.buf);
    let (wpe_name, wte_name) = if vec {
        ("encoder_backward_wpe_vec", "encoder_backward_wte_vec")
    } else {
        ("encoder_backward_wpe", "encoder_backward_wte")
    };
    let kwpe = g.kernel("encoder", wpe_name)?;
    // The vec kernels: one thread per 8 channels; wte blocks as wide as a row's vectors
    // (rounded up to a warp), at most 256 threads.
    let wte_threads = if vec {
        (32 * c.div_ceil(256)).min(256)
    } else {
        256
    };
    let wte_cols = if vec { c / 8 } else { c };
    // SAFETY: encoder_backward_wpe{,_vec}(bf16*, const bf16*, int, int, int); lengths checked
    // (and c % 8, alignment for the vec kernel).
    unsafe {
        g.launch(
            &kwpe,
            LaunchConfig::linear(if vec { t * c / 8 } else { t * c }, 256),
            &[&dwpe, &dout, &bi, &ti, &ci],
        )?
    };
    let kwte = g.kernel("encoder", wte_name)?;
    // One block row per possible distinct token (the count is on the device); rows past nu
    // exit at once, and above the grid.y limit each row strides over several tokens.
    let cfg = LaunchConfig {
        grid: (
            wte_cols.div_ceil(wte_threads) as u32,
            index.cap.min(MAX_GRID_Y) as u32,
            1,
        ),
        block: (wte_threads as u32, 1, 1),
        smem_bytes: 0,
    };
    let capi = index.cap as i32;
    // SAFETY: encoder_backward_wte{,_vec}(bf16*, const bf16*, const int* index, int cap, int C);
    // the index buffer holds 2 + 2 cap + 1 + b*t ints built for this b*t with ids < vocab, and
    // dwte holds vocab rows (checked).
    unsafe { g.launch(&kwte, cfg, &[&dwte, &dout, &idx, &capi, &ci]) }
}

/// Encoder backward from the host copy of the batch's tokens, ACCUMULATING into `dwte`
/// [vocab * c] and `dwpe` [t * c] (see [`encoder_backward_indexed`] for the exact sums).
/// `tokens_host` holds at least b*t ids, each `< dwte.len() / c` (checked: an error, not a
/// fault). Cost beyond the two kernels: builds an [`EncoderIndex`] (O(B*T + vocab) host work, a
/// ~100 KB upload that waits for all queued work) and synchronizes the stream once more at the
/// end so the index can be freed safely: two host stalls per call. Use
/// [`EncoderIndex::build`] + [`encoder_backward_indexed`] to avoid them.
#[allow(clippy::too_many_arguments)]
pub fn encoder_backward(
    g: &Gpu,
    dwte: Ptr<bf16>,
    dwpe: Ptr<bf16>,
    dout: Ptr<bf16>,
    tokens_host: &[u32],
    b: usize,
    t: usize,
    c: usize,
) -> Result<()> {
    const K: &str = "encoder_backward";
    let _ = check_dim(K, "c", c)?;
    let bt = b
        .checked_mul(t)
        .ok_or_else(|| CudaError::new(format!("{K}: b * t overflows"), 1))?;
    if tokens_host.len() < bt {
        return Err(CudaError::new(
            format!("{K}: {} host tokens, b * t = {bt}", tokens_host.len()),
            1,
        ));
    }
    let vocab = dwte.len() / c;
    let index = EncoderIndex::build(g, &tokens_host[..bt], vocab)?;
    encoder_backward_indexed(g, dwte, dwpe, dout, &index, b, t, c)?;
    // The index's device memory must outlive the kernels that read it.
    g.synchronize("encoder_backward")
}
