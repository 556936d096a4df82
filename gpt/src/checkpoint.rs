//! Checkpoints: parameters (FP32 master weights), AdamW moments and the training state, in one
//! versioned file written atomically.
//!
//! Format, version 1 (all integers little-endian):
//!
//! | bytes | content |
//! |---|---|
//! | 8 | magic `MXGPTCKP` |
//! | 4 | u32 format version (1) |
//! | 4 | u32 length H of the JSON header |
//! | H | JSON header: `model` (layers, channels, heads, max_seq, vocab, padded_vocab), `step` (steps completed = the next step to run), `num_params` P, and the trainer's state (`train`: data-loader position, every setting that shapes the numbers, the outlier z-score windows; older checkpoints hold fewer fields) |
//! | 4·P | f32 parameters (layout.rs order) |
//! | 4·P | f32 AdamW first moments |
//! | 4·P | f32 AdamW second moments |
//! | 8 | u64 checksum of every byte before it (see `checksum`) |
//!
//! Version 2 is a data-parallel run's checkpoint: `ckpt_<step>.bin` holds the header (with
//! `ranks` N and `arrays`, the array lengths) and the parameters only; rank r's AdamW moments of
//! its ZeRO-1 shard are in `ckpt_<step>.rank<r>-of-<N>.bin` (header: step, rank, ranks, offset,
//! arrays; then first and second moments, and from a GPU run a third array: the shard's BF16
//! parameters as the device held them, exact in FP32, since they are the stochastic rounding of
//! the master weights and a resume must not round them again). Every rank writes its shard,
//! all wait for each other, then rank 0 writes the model file: it is the marker, written last,
//! and a checkpoint counts only when it exists.
//!
//! A checkpoint is written to `NAME.tmp`, flushed to disk, then renamed over `NAME`, so a crash
//! never leaves a half-written file under a checkpoint's name; files are named
//! `ckpt_<step, 8 digits>.bin` so `--resume auto` tries the highest step first. Saving and
//! loading stream the arrays between the backend and the file through one buffer of
//! `memory::CHECKPOINT_IO_BUFFER` bytes (`save_streaming`, `load_streaming`): no whole copy.

use crate::config::ModelConfig;
use crate::memory::CHECKPOINT_IO_BUFFER;
use serde_json::{json, Value};
use std::fs::{self, File};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"MXGPTCKP";
pub const VERSION: u32 = 1;
/// Files of a data-parallel checkpoint (model file and optimizer shards).
pub const VERSION_SHARDED: u32 = 2;

pub struct Checkpoint {
    pub model: ModelConfig,
    pub step: u64,
    pub params: Vec<f32>,
    pub adam_m: Vec<f32>,
    pub adam_v: Vec<f32>,
    /// Trainer state (seed, loader position, options), opaque to this module.
    pub train: Value,
}

/// FNV-1a over the little-endian 8-byte words of the byte stream (the final partial word
/// zero-padded, then the total length mixed in): fast enough for GB-sized files, catches any
/// flipped or truncated byte, and independent of how the stream is split into `update` calls.
#[derive(Clone, Copy)]
struct Checksum {
    state: u64,
    pending: [u8; 8],
    pending_len: usize,
    total: u64,
}

impl Checksum {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    fn new() -> Self {
        Checksum {
            state: 0xcbf2_9ce4_8422_2325,
            pending: [0; 8],
            pending_len: 0,
            total: 0,
        }
    }
    fn word(&mut self, w: u64) {
        self.state = (self.state ^ w).wrapping_mul(Self::PRIME);
    }
    fn update(&mut self, mut bytes: &[u8]) {
        self.total += bytes.len() as u64;
        while self.pending_len > 0 && !bytes.is_empty() {
            self.pending[self.pending_len] = bytes[0];
            self.pending_len += 1;
            bytes = &bytes[1..];
            if self.pending_len == 8 {
                self.word(u64::from_le_bytes(self.pending));
                self.pending_len = 0;
            }
        }
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.word(u64::from_le_bytes(c.try_into().unwrap()));
        }
        for &b in chunks.remainder() {
            self.pending[self.pending_len] = b;
            self.pending_len += 1;
        }
    }
    fn finish(mut self) -> u64 {
        if self.pending_len > 0 {
            self.pending[self.pending_len..].fill(0);
            self.word(u64::from_le_bytes(self.pending));
        }
        self.word(self.total);
        self.state
    }
}

fn model_json(m: &ModelConfig) -> Value {
    json!({"layers": m.layers, "channels": m.channels, "heads": m.heads, "max_seq": m.max_seq,
           "vocab": m.vocab, "padded_vocab": m.padded_vocab})
}

fn f32_bytes(x: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding and any byte pattern is a valid u8; the checkpoint format is
    // little-endian, which is what this is on every platform we build for (asserted below).
    unsafe { std::slice::from_raw_parts(x.as_ptr() as *const u8, std::mem::size_of_val(x)) }
}

fn f32_bytes_mut(x: &mut [f32]) -> &mut [u8] {
    // SAFETY: as above, and every byte pattern is a valid f32.
    unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr() as *mut u8, std::mem::size_of_val(x)) }
}

#[cfg(not(target_endian = "little"))]
compile_error!("checkpoints are written as little-endian memory images");

pub fn file_name(step: u64) -> String {
    format!("ckpt_{step:08}.bin")
}

/// What a checkpoint file says about itself, read before (and without) its arrays.
#[derive(Clone, Debug)]
pub struct Header {
    pub model: ModelConfig,
    pub step: u64,
    pub num_params: usize,
    /// Ranks of the run that wrote it: 1 for a single process (format version 1, with the
    /// optimizer state inside), N for a data-parallel run (version 2: the parameters here, the
    /// optimizer state in one shard file per rank, see `shard_path`).
    pub ranks: usize,
    /// Trainer state (seed, loader position, options), opaque to this module.
    pub train: Value,
}

/// Fills a chunk of array `index` starting at element `offset` (saving).
pub type Fill<'a> = dyn FnMut(usize, usize, &mut [f32]) -> Result<(), String> + 'a;
/// Takes a chunk of array `index` starting at element `offset` (loading).
pub type Take<'a> = dyn FnMut(usize, usize, &[f32]) -> Result<(), String> + 'a;

const CHUNK_FLOATS: usize = CHECKPOINT_IO_BUFFER / 4;

/// Writes a file atomically: magic, `version`, `header`, the arrays of `lens` (their values
/// from `fill`, one I/O buffer at a time), the checksum, into `NAME.tmp`; fsync; rename over
/// `path`; fsync the directory so the rename itself survives a power loss.
fn write_atomic(
    path: &Path,
    version: u32,
    header: &Value,
    lens: &[usize],
    fill: &mut Fill,
) -> Result<(), String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create checkpoint directory {}: {e}", dir.display()))?;
    let tmp = path.with_file_name(format!(
        "{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    let header = serde_json::to_vec(header).expect("header serializes");
    let mut chunk = vec![0.0f32; CHUNK_FLOATS];
    let mut write = || -> Result<(), String> {
        let io = |e: std::io::Error| e.to_string();
        let mut f = File::create(&tmp).map_err(io)?;
        let mut sum = Checksum::new();
        let mut put = |f: &mut File, b: &[u8]| -> Result<(), String> {
            sum.update(b);
            f.write_all(b).map_err(io)
        };
        let mut head = MAGIC.to_vec();
        head.extend_from_slice(&version.to_le_bytes());
        head.extend_from_slice(&(header.len() as u32).to_le_bytes());
        head.extend_from_slice(&header);
        put(&mut f, &head)?;
        for (index, &len) in lens.iter().enumerate() {
            for at in (0..len).step_by(CHUNK_FLOATS) {
                let c = &mut chunk[..CHUNK_FLOATS.min(len - at)];
                fill(index, at, c)?;
                put(&mut f, f32_bytes(c))?;
            }
        }
        f.write_all(&sum.finish().to_le_bytes()).map_err(io)?;
        f.sync_all().map_err(io)
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(format!("writing checkpoint {}: {e}", tmp.display()));
    }
    fs::rename(&tmp, path)
        .map_err(|e| format!("renaming {} to {}: {e}", tmp.display(), path.display()))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("syncing checkpoint directory {}: {e}", dir.display()))
}

/// Reads and verifies a file written by `write_atomic`, streaming its arrays into `take` one
/// I/O buffer at a time; returns the header. Every failure names the file and what was wrong.
/// The checksum is known only at the end: on an error `take` may have received a prefix.
fn read_verified(path: &Path, take: &mut Take) -> Result<Value, String> {
    let err = |what: String| format!("checkpoint {}: {what}", path.display());
    let io = |e: std::io::Error| err(format!("cannot read: {e}"));
    let file = File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    let mut r = BufReader::with_capacity(64 << 10, file);
    let mut sum = Checksum::new();
    let mut prefix = [0u8; 16];
    if file_len < 24 || r.read_exact(&mut prefix).is_err() || &prefix[..8] != MAGIC {
        return Err(err(format!(
            "not an mxgpt checkpoint (expected magic {:?} at offset 0)",
            String::from_utf8_lossy(MAGIC)
        )));
    }
    sum.update(&prefix);
    let version = u32::from_le_bytes(prefix[8..12].try_into().unwrap());
    if version != VERSION && version != VERSION_SHARDED {
        return Err(err(format!(
            "format version {version}, this build reads versions {VERSION} and {VERSION_SHARDED}"
        )));
    }
    let hlen = u32::from_le_bytes(prefix[12..16].try_into().unwrap()) as u64;
    if 16 + hlen + 8 > file_len {
        return Err(err(format!(
            "header length {hlen} runs past the end of the file ({file_len} bytes): truncated?"
        )));
    }
    let mut header = vec![0u8; hlen as usize];
    r.read_exact(&mut header).map_err(io)?;
    sum.update(&header);
    let header: Value = serde_json::from_slice(&header).map_err(|e| {
        err(format!(
            "header at offset 16 is not valid JSON ({e}): the file is corrupt"
        ))
    })?;
    let lens = array_lens(version, &header).map_err(err)?;
    let floats: u64 = lens.iter().map(|&l| l as u64).sum();
    let expected_len = floats.saturating_mul(4).saturating_add(16 + hlen + 8);
    if file_len != expected_len {
        return Err(err(format!(
            "file is {file_len} bytes, expected {expected_len} for arrays of {lens:?} floats: truncated or corrupt"
        )));
    }
    let mut chunk = vec![0.0f32; CHUNK_FLOATS];
    for (index, &len) in lens.iter().enumerate() {
        for at in (0..len).step_by(CHUNK_FLOATS) {
            let c = &mut chunk[..CHUNK_FLOATS.min(len - at)];
            r.read_exact(f32_bytes_mut(c)).map_err(io)?;
            sum.update(f32_bytes(c));
            take(index, at, c).map_err(err)?;
        }
    }
    let mut tail = [0u8; 8];
    r.read_exact(&mut tail).map_err(io)?;
    let stored = u64::from_le_bytes(tail);
    let computed = sum.finish();
    if stored != computed {
        return Err(err(format!("checksum mismatch (stored {stored:#018x}, computed {computed:#018x}): the file is corrupt")));
    }
    Ok(header)
}

/// Version 1 holds parameters and both moments; version 2 lists its arrays in the header.
fn array_lens(version: u32, header: &Value) -> Result<Vec<usize>, String> {
    if version == VERSION {
        let n = header["num_params"]
            .as_u64()
            .ok_or("header has no num_params")?;
        return Ok(vec![n as usize; 3]);
    }
    header["arrays"]
        .as_array()
        .and_then(|a| a.iter().map(|v| v.as_u64().map(|x| x as usize)).collect())
        .ok_or_else(|| "header has no array lengths".into())
}

fn parse_header(path: &Path, h: &Value) -> Result<Header, String> {
    let err = |what: String| format!("checkpoint {}: {what}", path.display());
    let m = &h["model"];
    let get = |k: &str| {
        m[k].as_u64()
            .map(|v| v as usize)
            .ok_or_else(|| err(format!("header model.{k} missing")))
    };
    Ok(Header {
        model: ModelConfig {
            layers: get("layers")?,
            channels: get("channels")?,
            heads: get("heads")?,
            max_seq: get("max_seq")?,
            vocab: get("vocab")?,
            padded_vocab: get("padded_vocab")?,
        },
        step: h["step"]
            .as_u64()
            .ok_or_else(|| err("header has no step".into()))?,
        num_params: h["num_params"]
            .as_u64()
            .ok_or_else(|| err("header has no num_params".into()))? as usize,
        ranks: h["ranks"].as_u64().unwrap_or(1) as usize,
        train: h["train"].clone(),
    })
}

/// Writes the checkpoint (model) file of `h` into `dir` atomically and returns its path. With
/// one rank `fill` supplies parameters, first and second moments (version 1); with N ranks only
/// the parameters (version 2), after every rank saved its optimizer shard (`save_shard`): the
/// model file is written last, and a checkpoint counts only once it exists.
pub fn save_streaming(dir: &Path, h: &Header, fill: &mut Fill) -> Result<PathBuf, String> {
    let path = dir.join(file_name(h.step));
    let mut header = json!({"model": model_json(&h.model), "step": h.step, "num_params": h.num_params, "train": h.train});
    if h.ranks == 1 {
        write_atomic(&path, VERSION, &header, &[h.num_params; 3], fill)?;
    } else {
        header["ranks"] = json!(h.ranks);
        header["arrays"] = json!([h.num_params]);
        write_atomic(&path, VERSION_SHARDED, &header, &[h.num_params], fill)?;
    }
    Ok(path)
}

/// Reads and verifies a checkpoint (model) file, streaming its arrays into `take` (index 0
/// parameters; with one rank 1 and 2 the moments).
pub fn load_streaming(path: &Path, take: &mut Take) -> Result<Header, String> {
    let h = read_verified(path, take)?;
    parse_header(path, &h)
}

/// The header of a checkpoint file, without reading (or verifying) its arrays.
pub fn peek(path: &Path) -> Result<Header, String> {
    let err = |what: String| format!("checkpoint {}: {what}", path.display());
    let mut f = File::open(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let mut prefix = [0u8; 16];
    if f.read_exact(&mut prefix).is_err() || &prefix[..8] != MAGIC {
        return Err(err(format!(
            "not an mxgpt checkpoint (expected magic {:?} at offset 0)",
            String::from_utf8_lossy(MAGIC)
        )));
    }
    let hlen = u32::from_le_bytes(prefix[12..16].try_into().unwrap()) as u64;
    let mut header = Vec::new();
    f.take(hlen)
        .read_to_end(&mut header)
        .map_err(|e| err(format!("cannot read: {e}")))?;
    let h: Value = serde_json::from_slice(&header).map_err(|e| {
        err(format!(
            "header is not valid JSON ({e}): the file is corrupt"
        ))
    })?;
    parse_header(path, &h)
}

/// Why checkpoint `p`, written by `written` ranks, cannot be resumed on `now` ranks.
pub fn ranks_mismatch(p: &Path, written: usize, now: usize) -> String {
    format!(
        "checkpoint {} was written by {written} rank(s), this run has {now}: resume it on {written} (re-sharding the optimizer state to another number of ranks is not supported)",
        p.display()
    )
}

/// Rank `rank`'s optimizer shard of the checkpoint at `step` of an N-rank run.
pub fn shard_path(dir: &Path, step: u64, rank: usize, ranks: usize) -> PathBuf {
    dir.join(format!("ckpt_{step:08}.rank{rank}-of-{ranks}.bin"))
}

/// Writes this rank's optimizer shard atomically: `arrays` arrays of the parameters
/// `offset..offset + len` from `fill`: 0 and 1 the AdamW first and second moments; with
/// `arrays` = 3, array 2 the BF16 parameters a device held (see the module doc).
pub fn save_shard(
    dir: &Path,
    step: u64,
    (rank, ranks): (usize, usize),
    (offset, len): (usize, usize),
    arrays: usize,
    fill: &mut Fill,
) -> Result<PathBuf, String> {
    if !(2..=3).contains(&arrays) {
        return Err(format!(
            "an optimizer shard holds 2 or 3 arrays (moments, BF16 parameters), not {arrays}"
        ));
    }
    let path = shard_path(dir, step, rank, ranks);
    let lens = vec![len; arrays];
    let header = json!({"kind": "optimizer shard", "step": step, "rank": rank, "ranks": ranks,
                        "offset": offset, "arrays": lens});
    write_atomic(&path, VERSION_SHARDED, &header, &lens, fill)?;
    Ok(path)
}

/// Reads and verifies this rank's optimizer shard of the checkpoint at `step`, streaming its
/// arrays into `take` (0, 1 the moments; 2, if the shard has it, the BF16 parameters); the
/// shard must cover exactly `offset..offset + len`. Returns how many arrays it held.
pub fn load_shard(
    dir: &Path,
    step: u64,
    (rank, ranks): (usize, usize),
    (offset, len): (usize, usize),
    take: &mut Take,
) -> Result<usize, String> {
    let path = shard_path(dir, step, rank, ranks);
    let h = read_verified(&path, &mut |i, at, c| {
        if at + c.len() > len {
            return Err(format!(
                "holds more than the {len} moments of rank {rank}'s shard"
            ));
        }
        take(i, at, c)
    })?;
    let found = (
        h["step"].as_u64(),
        h["rank"].as_u64(),
        h["ranks"].as_u64(),
        h["offset"].as_u64(),
    );
    let want = (
        Some(step),
        Some(rank as u64),
        Some(ranks as u64),
        Some(offset as u64),
    );
    let lens = array_lens(VERSION_SHARDED, &h)?;
    if found != want || !(2..=3).contains(&lens.len()) || lens.iter().any(|&l| l != len) {
        return Err(format!(
            "checkpoint shard {}: holds (step, rank, ranks, offset) {found:?} with arrays {}, expected {want:?} with two or three arrays of {len}",
            path.display(),
            h["arrays"]
        ));
    }
    Ok(lens.len())
}

/// Writes `ck` (a whole single-process checkpoint in memory) atomically into `dir`.
pub fn save(dir: &Path, ck: &Checkpoint) -> Result<PathBuf, String> {
    let h = Header {
        model: ck.model,
        step: ck.step,
        num_params: ck.params.len(),
        ranks: 1,
        train: ck.train.clone(),
    };
    let arrays = [&ck.params, &ck.adam_m, &ck.adam_v];
    save_streaming(dir, &h, &mut |i, at, c| {
        c.copy_from_slice(&arrays[i][at..at + c.len()]);
        Ok(())
    })
}

/// Reads and verifies a single-process checkpoint into memory (tools and tests; the trainer
/// streams with `load_streaming`).
pub fn load(path: &Path) -> Result<Checkpoint, String> {
    let h = peek(path)?;
    if h.ranks != 1 {
        return Err(format!(
            "checkpoint {} was written by {} ranks: its optimizer state is in per-rank shard files; resume it with train_gpt on {} ranks",
            path.display(),
            h.ranks,
            h.ranks
        ));
    }
    let mut arrays = [vec![], vec![], vec![]];
    for a in &mut arrays {
        a.try_reserve_exact(h.num_params)
            .map_err(|_| format!("checkpoint {}: out of memory", path.display()))?;
        a.resize(h.num_params, 0.0);
    }
    let h = load_streaming(path, &mut |i, at, c| {
        arrays[i][at..at + c.len()].copy_from_slice(c);
        Ok(())
    })?;
    let [params, adam_m, adam_v] = arrays;
    Ok(Checkpoint {
        model: h.model,
        step: h.step,
        params,
        adam_m,
        adam_v,
        train: h.train,
    })
}

/// The checkpoints in `dir` as (step, path), newest first (none if `dir` does not exist).
pub fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, String> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(format!(
                "cannot list checkpoint directory {}: {e}",
                dir.display()
            ))
        }
    };
    let mut found: Vec<(u64, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let step = name
                .strip_prefix("ckpt_")?
                .strip_suffix(".bin")?
                .parse()
                .ok()?;
            Some((step, e.path()))
        })
        .collect();
    found.sort_unstable_by_key(|f| std::cmp::Reverse(f.0));
    Ok(found)
}

/// The checkpoint with the highest step in `dir`, if any.
pub fn latest(dir: &Path) -> Result<Option<PathBuf>, String> {
    Ok(list(dir)?.into_iter().next().map(|(_, p)| p))
}

/// Deletes all but the newest `keep` checkpoints in `dir`, never one in `protect` (the last
/// checkpoint known to be good, so a run that diverges cannot prune away its way back).
pub fn prune(dir: &Path, keep: usize, protect: &[&Path]) -> Result<(), String> {
    for (step, p) in list(dir)?.iter().skip(keep.max(1)) {
        if protect.iter().any(|q| q == p) {
            continue;
        }
        // The model file first: without it the shards no longer count as a checkpoint.
        fs::remove_file(p)
            .map_err(|e| format!("cannot remove old checkpoint {}: {e}", p.display()))?;
        for s in shard_files(dir, Some(*step)) {
            fs::remove_file(&s)
                .map_err(|e| format!("cannot remove old checkpoint shard {}: {e}", s.display()))?;
        }
    }
    Ok(())
}

/// The optimizer shard files in `dir` (of checkpoint `step`, or of every step).
fn shard_files(dir: &Path, step: Option<u64>) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let prefix = step.map_or("ckpt_".to_string(), |s| format!("ckpt_{s:08}."));
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with(&prefix) && name.contains(".rank") && name.ends_with(".bin")
        })
        .collect()
}

/// Makes sure checkpoints can be written to `dir` before a run spends any time: creates it,
/// checks it is a directory, writes and removes a probe file, and checks there is room for one
/// checkpoint of `bytes`.
pub fn prepare_dir(dir: &Path, bytes: u64) -> Result<(), String> {
    if dir.exists() && !dir.is_dir() {
        return Err(format!(
            "--checkpoint-dir {} is not a directory: it must be a directory (or not exist yet)",
            dir.display()
        ));
    }
    fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create checkpoint directory {}: {e}", dir.display()))?;
    let probe = dir.join(format!(".write-test-{}.tmp", std::process::id()));
    let written = File::create(&probe).and_then(|mut f| f.write_all(b"mxgpt"));
    let _ = fs::remove_file(&probe);
    written.map_err(|e| {
        format!(
            "checkpoint directory {} is not writable ({e}): checkpoints could not be saved",
            dir.display()
        )
    })?;
    if let Some(free) = free_bytes(dir) {
        if free < bytes {
            return Err(format!(
                "checkpoint directory {} has {:.2} GiB free, one checkpoint needs {:.2} GiB: free some space or pick another --checkpoint-dir",
                dir.display(),
                free as f64 / (1u64 << 30) as f64,
                bytes as f64 / (1u64 << 30) as f64
            ));
        }
    }
    Ok(())
}

/// Removes the `ckpt_*.tmp` files a killed run left half-written, and optimizer shards whose
/// checkpoint never got its model file (the run died while saving), and returns their paths.
/// Only for the holder of the directory's lock: nobody else can be writing them.
pub fn remove_stale_temps(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed: Vec<PathBuf> = shard_files(dir, None)
        .into_iter()
        .filter(|s| {
            let name = s
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            let model = dir.join(format!(
                "{}.bin",
                name.split('.').next().unwrap_or_default()
            ));
            !model.exists() && fs::remove_file(s).is_ok()
        })
        .collect();
    removed.extend(
        entries
            .flatten()
            .filter(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                name.starts_with("ckpt_")
                    && name.ends_with(".tmp")
                    && fs::remove_file(e.path()).is_ok()
            })
            .map(|e| e.path()),
    );
    removed
}

/// Size of a checkpoint of `num_params` parameters (the header is a few hundred bytes).
pub fn file_bytes(num_params: usize) -> u64 {
    16 + 4096 + 12 * num_params as u64 + 8
}

fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs fills the struct we pass; c is a valid NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        let model = ModelConfig::new(1, 8, 2, 4).unwrap();
        Checkpoint {
            model,
            step: 42,
            params: (0..10).map(|i| i as f32 * 0.5).collect(),
            adam_m: (0..10).map(|i| -(i as f32)).collect(),
            adam_v: (0..10).map(|i| i as f32 * 1e-3).collect(),
            train: json!({"seed": 7}),
        }
    }

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mxgpt-ckpt-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn round_trip_and_latest() {
        let d = tmpdir("rt");
        let ck = sample();
        let p = save(&d, &ck).unwrap();
        let mut ck2 = sample();
        ck2.step = 100;
        save(&d, &ck2).unwrap();
        assert_eq!(latest(&d).unwrap().unwrap(), d.join("ckpt_00000100.bin"));
        let back = load(&p).unwrap();
        assert_eq!(back.step, 42);
        assert_eq!(back.model, ck.model);
        assert_eq!(back.params, ck.params);
        assert_eq!(back.adam_m, ck.adam_m);
        assert_eq!(back.adam_v, ck.adam_v);
        assert_eq!(back.train["seed"], 7);
        assert!(!d.join("ckpt_00000042.bin.tmp").exists());
        prune(&d, 1, &[]).unwrap();
        assert!(!p.exists() && d.join("ckpt_00000100.bin").exists());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn corruption_and_truncation_are_reported() {
        let d = tmpdir("bad");
        let p = save(&d, &sample()).unwrap();
        let mut bytes = fs::read(&p).unwrap();
        let mid = bytes.len() - 20;
        bytes[mid] ^= 0x10;
        fs::write(&p, &bytes).unwrap();
        let e = load(&p).err().unwrap();
        assert!(
            e.contains("checksum") && e.contains("ckpt_00000042.bin"),
            "{e}"
        );
        fs::write(&p, &bytes[..bytes.len() - 9]).unwrap();
        let e = load(&p).err().unwrap();
        assert!(e.contains("truncated"), "{e}");
        fs::write(&p, b"hello world, definitely not a checkpoint").unwrap();
        assert!(load(&p).err().unwrap().contains("magic"));
        assert!(load(&d.join("missing.bin"))
            .err()
            .unwrap()
            .contains("cannot read"));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn prune_spares_the_protected_checkpoint() {
        let d = tmpdir("prune");
        for step in 1..=4 {
            let mut ck = sample();
            ck.step = step;
            save(&d, &ck).unwrap();
        }
        let one = d.join(file_name(1));
        prune(&d, 2, &[&one]).unwrap();
        let left: Vec<u64> = list(&d).unwrap().into_iter().map(|x| x.0).collect();
        assert_eq!(left, vec![4, 3, 1]);
        fs::remove_dir_all(&d).unwrap();
    }

    /// A 2-rank checkpoint at `step`: both shards, then the model file.
    fn save_two_rank(d: &Path, ck: &Checkpoint) {
        let n = ck.params.len();
        for (rank, range) in [(0, 0..n / 2), (1, n / 2..n)] {
            let (m, v) = (&ck.adam_m[range.clone()], &ck.adam_v[range.clone()]);
            save_shard(
                d,
                ck.step,
                (rank, 2),
                (range.start, range.len()),
                2,
                &mut |i, at, c| {
                    c.copy_from_slice(&[m, v][i][at..at + c.len()]);
                    Ok(())
                },
            )
            .unwrap();
        }
        let h = Header {
            model: ck.model,
            step: ck.step,
            num_params: n,
            ranks: 2,
            train: ck.train.clone(),
        };
        save_streaming(d, &h, &mut |_, at, c| {
            c.copy_from_slice(&ck.params[at..at + c.len()]);
            Ok(())
        })
        .unwrap();
    }

    /// A GPU rank's shard carries its BF16 parameters as a third array; 2 arrays (a CPU
    /// rank's) still load, and anything else is refused when writing.
    #[test]
    fn a_shard_holds_two_or_three_arrays() {
        let d = tmpdir("shard-arrays");
        let x: Vec<Vec<f32>> = (0..3)
            .map(|a| (0..7).map(|i| (10 * a + i) as f32 + 0.5).collect())
            .collect();
        for arrays in [2, 3] {
            save_shard(&d, 9, (1, 3), (7, 7), arrays, &mut |i, at, c| {
                c.copy_from_slice(&x[i][at..at + c.len()]);
                Ok(())
            })
            .unwrap();
            let mut got = vec![vec![f32::NAN; 7]; 3];
            let n = load_shard(&d, 9, (1, 3), (7, 7), &mut |i, at, c| {
                got[i][at..at + c.len()].copy_from_slice(c);
                Ok(())
            })
            .unwrap();
            assert_eq!(n, arrays);
            assert_eq!(&got[..arrays], &x[..arrays]);
        }
        let e = save_shard(&d, 9, (1, 3), (7, 7), 4, &mut |_, _, _| Ok(())).unwrap_err();
        assert!(e.contains("2 or 3 arrays"), "{e}");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn sharded_checkpoints_round_trip_prune_and_refuse_the_wrong_shard() {
        let d = tmpdir("shards");
        let ck = sample();
        save_two_rank(&d, &ck);
        let p = d.join(file_name(42));
        let h = peek(&p).unwrap();
        assert_eq!((h.ranks, h.num_params, h.step), (2, 10, 42));
        let mut params = vec![0.0; 10];
        load_streaming(&p, &mut |i, at, c| {
            assert_eq!(i, 0, "a 2-rank model file holds the parameters only");
            params[at..at + c.len()].copy_from_slice(c);
            Ok(())
        })
        .unwrap();
        assert_eq!(params, ck.params);
        let (mut m, mut v) = (vec![0.0; 5], vec![0.0; 5]);
        load_shard(&d, 42, (1, 2), (5, 5), &mut |i, at, c| {
            [&mut m, &mut v][i][at..at + c.len()].copy_from_slice(c);
            Ok(())
        })
        .unwrap();
        assert_eq!((&m[..], &v[..]), (&ck.adam_m[5..], &ck.adam_v[5..]));
        // Another rank's shard, or another split, is refused by name.
        let e = load_shard(&d, 42, (1, 2), (4, 6), &mut |_, _, _| Ok(())).unwrap_err();
        assert!(e.contains("rank1-of-2") && e.contains("expected"), "{e}");
        // The whole-file loader says where the optimizer state is.
        assert!(load(&p).err().unwrap().contains("written by 2 ranks"));
        // Pruning takes the shards with the model file; an orphan shard (no model file: the
        // run died while saving) is removed at the next start.
        let mut newer = sample();
        newer.step = 43;
        save_two_rank(&d, &newer);
        prune(&d, 1, &[]).unwrap();
        assert!(
            !p.exists() && !shard_path(&d, 42, 0, 2).exists() && !shard_path(&d, 42, 1, 2).exists()
        );
        assert!(shard_path(&d, 43, 1, 2).exists());
        fs::remove_file(d.join(file_name(43))).unwrap();
        assert_eq!(remove_stale_temps(&d).len(), 2);
        assert_eq!(fs::read_dir(&d).unwrap().count(), 0);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn unusable_directories_are_named() {
        let d = tmpdir("prep");
        fs::create_dir_all(&d).unwrap();
        let file = d.join("plain");
        fs::write(&file, b"x").unwrap();
        let e = prepare_dir(&file, 1).unwrap_err();
        assert!(e.contains("plain") && e.contains("not a directory"), "{e}");
        let e = prepare_dir(&file.join("sub"), 1).unwrap_err();
        assert!(e.contains("cannot create checkpoint directory"), "{e}");
        let e = prepare_dir(&d, u64::MAX).unwrap_err();
        assert!(e.contains("GiB free"), "{e}");
        prepare_dir(&d.join("new/nested"), 1).unwrap();
        fs::write(d.join("new/nested/ckpt_00000002.bin.tmp"), b"half").unwrap();
        assert_eq!(remove_stale_temps(&d.join("new/nested")).len(), 1);
        assert_eq!(fs::read_dir(d.join("new/nested")).unwrap().count(), 0);
        fs::remove_dir_all(&d).unwrap();
    }
}
