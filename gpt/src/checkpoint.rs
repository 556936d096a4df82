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
//! A checkpoint is written to `NAME.tmp`, flushed to disk, then renamed over `NAME`, so a crash
//! never leaves a half-written file under a checkpoint's name; files are named
//! `ckpt_<step, 8 digits>.bin` so `--resume auto` tries the highest step first. Saving and
//! loading stream the arrays through one buffer of `memory::CHECKPOINT_IO_BUFFER` bytes.

use crate::config::ModelConfig;
use crate::memory::CHECKPOINT_IO_BUFFER;
use serde_json::{json, Value};
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
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

fn f32_bytes_mut(x: &mut [f32]) -> &mut [u8] {
    // SAFETY: as above, and every byte pattern is a valid f32.
    unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr() as *mut u8, std::mem::size_of_val(x)) }
}

#[cfg(not(target_endian = "little"))]
compile_error!("checkpoints are written as little-endian memory images");

pub fn file_name(step: u64) -> String {
    format!("ckpt_{step:08}.bin")
}

/// Writes `ck` atomically into `dir` and returns its path: the arrays stream from `ck` through
/// one I/O buffer into `NAME.tmp`, which is fsynced, renamed over `NAME`, and the directory
/// fsynced so the rename itself survives a power loss.
pub fn save(dir: &Path, ck: &Checkpoint) -> Result<PathBuf, String> {
    fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create checkpoint directory {}: {e}", dir.display()))?;
    let path = dir.join(file_name(ck.step));
    let tmp = dir.join(format!("{}.tmp", file_name(ck.step)));
    let header = json!({"model": model_json(&ck.model), "step": ck.step, "num_params": ck.params.len(), "train": ck.train});
    let header = serde_json::to_vec(&header).expect("header serializes");
    let write = || -> std::io::Result<()> {
        let mut f = BufWriter::with_capacity(CHECKPOINT_IO_BUFFER, File::create(&tmp)?);
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
            for chunk in f32_bytes(arr).chunks(CHECKPOINT_IO_BUFFER) {
                put(&mut f, chunk)?;
            }
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
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("syncing checkpoint directory {}: {e}", dir.display()))?;
    Ok(path)
}

/// Reads and verifies a checkpoint, streaming the arrays from the file into their vectors (no
/// copy of the whole file in memory); every failure names the file and what was wrong.
pub fn load(path: &Path) -> Result<Checkpoint, String> {
    let err = |what: String| format!("checkpoint {}: {what}", path.display());
    let io = |e: std::io::Error| err(format!("cannot read: {e}"));
    let file = File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    let mut r = BufReader::with_capacity(CHECKPOINT_IO_BUFFER, file);
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
    if version != VERSION {
        return Err(err(format!(
            "format version {version}, this build reads version {VERSION}"
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
    let n = header["num_params"]
        .as_u64()
        .ok_or_else(|| err("header has no num_params".into()))? as usize;
    let expected_len = (n as u64).saturating_mul(12).saturating_add(16 + hlen + 8);
    if file_len != expected_len {
        return Err(err(format!(
            "file is {file_len} bytes, expected {expected_len} for {n} parameters: truncated or corrupt"
        )));
    }
    let mut read_array = || -> Result<Vec<f32>, String> {
        let mut v = vec![0.0f32; n];
        for chunk in f32_bytes_mut(&mut v).chunks_mut(CHECKPOINT_IO_BUFFER) {
            r.read_exact(chunk).map_err(io)?;
            sum.update(chunk);
        }
        Ok(v)
    };
    let (params, adam_m, adam_v) = (read_array()?, read_array()?, read_array()?);
    let mut tail = [0u8; 8];
    r.read_exact(&mut tail).map_err(io)?;
    let stored = u64::from_le_bytes(tail);
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
    Ok(Checkpoint {
        model,
        step: header["step"]
            .as_u64()
            .ok_or_else(|| err("header has no step".into()))?,
        params,
        adam_m,
        adam_v,
        train: header["train"].clone(),
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
    for (_, p) in list(dir)?.iter().skip(keep.max(1)) {
        if protect.iter().any(|q| q == p) {
            continue;
        }
        fs::remove_file(p)
            .map_err(|e| format!("cannot remove old checkpoint {}: {e}", p.display()))?;
    }
    Ok(())
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

/// Removes the `ckpt_*.tmp` files a killed run left half-written and returns their paths. Only
/// for the holder of the directory's lock: nobody else can be writing them.
pub fn remove_stale_temps(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.starts_with("ckpt_") && name.ends_with(".tmp") && fs::remove_file(e.path()).is_ok()
        })
        .map(|e| e.path())
        .collect()
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
