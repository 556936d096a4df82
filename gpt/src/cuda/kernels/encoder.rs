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

/// Largest grid.y of a launch: encoder_backward_wte puts one unique token per grid row, so more
/// unique tokens than this are launched in chunks.
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

/// The token -> positions index `encoder_backward_wte` needs, on the device: the distinct token
/// ids in increasing order (`uniq`, nu of them), CSR offsets `starts` [nu + 1] and the
/// positions `b * T + t` of each token, ascending (a stable counting sort of the tokens).
/// Building it costs O(B*T + vocab) host work and one upload of 4 * (2 nu + 1 + B*T) bytes
/// (~100 KB at B*T = 8192), which waits for the stream (`Gpu::copy_to_device` synchronizes).
/// Build it once per batch where the stream is idle anyway (e.g. when the tokens are uploaded)
/// and pass it to [`encoder_backward_indexed`] to keep the backward free of host stalls.
pub struct EncoderIndex {
    /// [uniq (nu) | starts (nu + 1) | positions (bt)]
    buf: DeviceBuffer<i32>,
    nu: usize,
    bt: usize,
    /// Rows of dwte the kernels touch: largest token id + 1.
    rows: usize,
}

impl EncoderIndex {
    /// Index of `tokens` (all B*T ids of the batch, row-major); every id must be `< vocab`.
    pub fn build(g: &Gpu, tokens: &[u32], vocab: usize) -> Result<EncoderIndex> {
        let bt = tokens.len();
        if bt == 0 || bt > i32::MAX as usize {
            return Err(CudaError::new(
                format!("encoder index: {bt} tokens, need 1..=2^31-1"),
                1,
            ));
        }
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
        let mut host = Vec::with_capacity(2 * nu + 1 + bt);
        // Then count[token] becomes the cursor: where the token's next position goes in
        // `positions`.
        let mut starts = Vec::with_capacity(nu + 1);
        let mut next = 0u32;
        for (tok, n) in count.iter_mut().enumerate() {
            if *n > 0 {
                host.push(tok as i32);
                starts.push(next as i32);
                let cnt = *n;
                *n = next;
                next += cnt;
            }
        }
        starts.push(next as i32);
        host.extend_from_slice(&starts);
        let pos_base = host.len();
        host.resize(pos_base + bt, 0);
        for (p, &tok) in tokens.iter().enumerate() {
            let cur = &mut count[tok as usize];
            host[pos_base + *cur as usize] = p as i32;
            *cur += 1;
        }
        Ok(EncoderIndex {
            buf: g.upload(&host)?,
            nu,
            bt,
            rows,
        })
    }

    /// Number of distinct tokens.
    pub fn unique(&self) -> usize {
        self.nu
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
    // Token ids were checked against the vocabulary when the index was built; dwte must hold
    // the largest one's row.
    check_len(K, "dwte", &dwte, index.rows * c)?;
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
    let (nu, bt) = (index.nu, index.bt);
    let positions = idx.slice(2 * nu + 1, bt);
    let mut u0 = 0;
    while u0 < nu {
        let chunk = (nu - u0).min(MAX_GRID_Y);
        // starts holds absolute offsets into positions, so a chunk is just shifted pointers.
        let uniq = idx.slice(u0, chunk);
        let starts = idx.slice(nu + u0, chunk + 1);
        let nc = chunk as i32;
        let cfg = LaunchConfig {
            grid: (wte_cols.div_ceil(wte_threads) as u32, chunk as u32, 1),
            block: (wte_threads as u32, 1, 1),
            smem_bytes: 0,
        };
        // SAFETY: encoder_backward_wte{,_vec}(bf16*, const bf16*, const int*, const int*,
        // const int*,
        // int, int); uniq/starts/positions come from a consistent index of b*t tokens whose ids
        // are < index.rows, and dwte holds index.rows rows (checked).
        unsafe {
            g.launch(
                &kwte,
                cfg,
                &[&dwte, &dout, &uniq, &starts, &positions, &nc, &ci],
            )?
        };
        u0 += chunk;
    }
    Ok(())
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
