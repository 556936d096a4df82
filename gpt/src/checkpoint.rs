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
//! | H | JSON header: `model` (layers, channels, heads, max_seq, vocab, padded_vocab), `step` (steps completed = the next step to run), `num_params` P, and the trainer's state (`train`: seed, data-loader position, options) |
//! | 4·P | f32 parameters (layout.rs order) |
//! | 4·P | f32 AdamW first moments |
//! | 4·P | f32 AdamW second moments |
//! | 8 | u64 checksum of every byte before it (see `checksum`) |
//!
//! A checkpoint is written to `NAME.tmp`, flushed to disk, then renamed over `NAME`, so a crash
//! never leaves a half-written file under a checkpoint's name; files are named
//! `ckpt_<step, 8 digits>.bin` so `--resume auto` picks the highest step.

use crate::config::ModelConfig;
use serde_json::{json, Value};
use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"MXGPTCKP";
pub const VERSION: u32 = 1;

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

#[cfg(not(target_endian = "little"))]
compile_error!("checkpoints are written as little-endian memory images");

pub fn file_name(step: u64) -> String {
    format!("ckpt_{step:08}.bin")
}

/// Writes `ck` atomically into `dir` and returns its path.
pub fn save(dir: &Path, ck: &Checkpoint) -> Result<PathBuf, String> {
    fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create checkpoint directory {}: {e}", dir.display()))?;
    let path = dir.join(file_name(ck.step));
    let tmp = dir.join(format!("{}.tmp", file_name(ck.step)));
    let header = json!({"model": model_json(&ck.model), "step": ck.step, "num_params": ck.params.len(), "train": ck.train});
    let header = serde_json::to_vec(&header).expect("header serializes");
    let write = || -> std::io::Result<()> {
        let mut f = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        let mut sum = Checksum::new();
        let mut put = |f: &mut BufWriter<File>, b: &[u8]| -> std::io::Result<()> {
            sum.update(b);
            f.write_all(b)
        };
        put(&mut f, MAGIC)?;
        put(&mut f, &VERSION.to_le_bytes())?;
        put(&mut f, &(header.len() as u32).to_le_bytes())?;
        put(&mut f, &header)?;
        for arr in [&ck.params, &ck.adam_m, &ck.adam_v] {
            put(&mut f, f32_bytes(arr))?;
        }
        f.write_all(&sum.finish().to_le_bytes())?;
        let f = f.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(format!("writing checkpoint {}: {e}", tmp.display()));
    }
    fs::rename(&tmp, &path)
        .map_err(|e| format!("renaming {} to {}: {e}", tmp.display(), path.display()))?;
    Ok(path)
}

/// Reads and verifies a checkpoint; every failure names the file and what was wrong.
pub fn load(path: &Path) -> Result<Checkpoint, String> {
    let err = |what: String| format!("checkpoint {}: {what}", path.display());
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| err(format!("cannot read: {e}")))?;
    if bytes.len() < 24 || &bytes[..8] != MAGIC {
        return Err(err(format!(
            "not an mxgpt checkpoint (expected magic {:?} at offset 0)",
            String::from_utf8_lossy(MAGIC)
        )));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
    if version != VERSION {
        return Err(err(format!(
            "format version {version}, this build reads version {VERSION}"
        )));
    }
    let (body, tail) = bytes.split_at(bytes.len() - 8);
    let mut sum = Checksum::new();
    sum.update(body);
    let stored = u64::from_le_bytes(tail.try_into().unwrap());
    let hlen = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    if 16 + hlen > body.len() {
        return Err(err(format!(
            "header length {hlen} runs past the end of the file ({} bytes): truncated?",
            bytes.len()
        )));
    }
    let header: Value = serde_json::from_slice(&bytes[16..16 + hlen])
        .map_err(|e| err(format!("header at offset 16 is not valid JSON: {e}")))?;
    let n = header["num_params"]
        .as_u64()
        .ok_or_else(|| err("header has no num_params".into()))? as usize;
    let expected_len = 16 + hlen + 3 * 4 * n + 8;
    if bytes.len() != expected_len {
        return Err(err(format!(
            "file is {} bytes, expected {expected_len} for {n} parameters: truncated or corrupt",
            bytes.len()
        )));
    }
    let computed = sum.finish();
    if stored != computed {
        return Err(err(format!("checksum mismatch (stored {stored:#018x}, computed {computed:#018x}): the file is corrupt")));
    }
    let m = &header["model"];
    let get = |k: &str| {
        m[k].as_u64()
            .map(|v| v as usize)
            .ok_or_else(|| err(format!("header model.{k} missing")))
    };
    let model = ModelConfig {
        layers: get("layers")?,
        channels: get("channels")?,
        heads: get("heads")?,
        max_seq: get("max_seq")?,
        vocab: get("vocab")?,
        padded_vocab: get("padded_vocab")?,
    };
    let arr = |i: usize| -> Vec<f32> {
        let start = 16 + hlen + i * 4 * n;
        bytes[start..start + 4 * n]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    Ok(Checkpoint {
        model,
        step: header["step"]
            .as_u64()
            .ok_or_else(|| err("header has no step".into()))?,
        params: arr(0),
        adam_m: arr(1),
        adam_v: arr(2),
        train: header["train"].clone(),
    })
}

/// The checkpoint with the highest step in `dir`, if any.
pub fn latest(dir: &Path) -> Result<Option<PathBuf>, String> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(format!(
                "cannot list checkpoint directory {}: {e}",
                dir.display()
            ))
        }
    };
    let mut best: Option<(u64, PathBuf)> = None;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(step) = name
            .strip_prefix("ckpt_")
            .and_then(|s| s.strip_suffix(".bin"))
            .and_then(|s| s.parse::<u64>().ok())
        {
            if best.as_ref().is_none_or(|(b, _)| step > *b) {
                best = Some((step, e.path()));
            }
        }
    }
    Ok(best.map(|(_, p)| p))
}

/// Deletes all but the newest `keep` checkpoints in `dir` (never the one just written).
pub fn prune(dir: &Path, keep: usize) -> Result<(), String> {
    let mut steps: Vec<u64> = fs::read_dir(dir)
        .map_err(|e| format!("cannot list checkpoint directory {}: {e}", dir.display()))?
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            n.strip_prefix("ckpt_")
                .and_then(|s| s.strip_suffix(".bin"))
                .and_then(|s| s.parse().ok())
        })
        .collect();
    steps.sort_unstable();
    let drop = steps.len().saturating_sub(keep.max(1));
    for s in &steps[..drop] {
        let p = dir.join(file_name(*s));
        fs::remove_file(&p)
            .map_err(|e| format!("cannot remove old checkpoint {}: {e}", p.display()))?;
    }
    Ok(())
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
        prune(&d, 1).unwrap();
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
}
