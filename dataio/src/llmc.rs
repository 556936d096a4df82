//! llm.c token shards (karpathy/llm.c dev/data/data_common.py, GPT-2 flavour): a header of
//! 256 little-endian int32 — [0] magic 20240520, [1] version 1, [2] token count N — then N
//! uint16 tokens. llm.c puts an EOT *before* every document, so a shard's tokens already form
//! the EOT-separated stream.

use crate::tokens::{Dtype, TokenArray};
use crate::DataError;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const MAGIC: i32 = 20240520;
pub const VERSION: i32 = 1;
pub const HEADER_BYTES: usize = 256 * 4;

fn header_field(map: &[u8], i: usize) -> i32 {
    i32::from_le_bytes(map[4 * i..4 * i + 4].try_into().unwrap())
}

/// True when `path` starts with the llm.c magic (used to tell shards from Megatron .bin files).
pub fn has_magic(path: &Path) -> bool {
    use std::io::Read;
    let mut b = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok()
        && i32::from_le_bytes(b) == MAGIC
}

/// Maps and validates the header of one shard.
pub(crate) fn open_shard(path: &Path) -> Result<TokenArray, DataError> {
    let map = TokenArray::map_file(path)?;
    if map.len() < HEADER_BYTES {
        return Err(DataError::mismatch(
            path,
            "header",
            format!("at least {HEADER_BYTES} bytes"),
            format!("{} bytes", map.len()),
        ));
    }
    let magic = header_field(&map, 0);
    if magic != MAGIC {
        return Err(DataError::mismatch(
            path,
            "byte offset 0 (magic)",
            MAGIC,
            magic,
        ));
    }
    let version = header_field(&map, 1);
    if version != VERSION {
        return Err(DataError::mismatch(
            path,
            "byte offset 4 (version)",
            format!("{VERSION} (GPT-2, uint16 tokens)"),
            version,
        ));
    }
    let count = header_field(&map, 2);
    if count < 0 {
        return Err(DataError::mismatch(
            path,
            "byte offset 8 (token count)",
            "a count >= 0",
            count,
        ));
    }
    let expect = HEADER_BYTES as u64 + 2 * count as u64;
    if expect != map.len() as u64 {
        return Err(DataError::mismatch(
            path,
            "file length",
            format!("{expect} bytes (1024-byte header + {count} uint16 tokens)"),
            format!("{} bytes", map.len()),
        ));
    }
    Ok(TokenArray {
        path: path.to_path_buf(),
        map,
        offset: HEADER_BYTES,
        count: count as usize,
        dtype: Dtype::U16,
    })
}

/// Writes one shard: tokens stream to `PATH.tmp`, the header (with the final count) is patched
/// in at `finish`, then the file is renamed into place (a writer dropped without `finish`
/// deletes its temporary file).
pub struct LlmcWriter {
    path: PathBuf,
    tmp: PathBuf,
    /// `None` once finished.
    out: Option<std::io::BufWriter<std::fs::File>>,
    tokens: u64,
    scratch: Vec<u8>,
}

impl Drop for LlmcWriter {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

impl LlmcWriter {
    pub fn create(path: &Path) -> Result<LlmcWriter, DataError> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| DataError::io(dir, "create directory", e))?;
            }
        }
        let tmp = PathBuf::from(format!("{}.tmp", path.display()));
        let f = std::fs::File::create(&tmp).map_err(|e| DataError::io(&tmp, "create", e))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, f);
        out.write_all(&[0u8; HEADER_BYTES])
            .map_err(|e| DataError::io(&tmp, "write", e))?;
        Ok(LlmcWriter {
            path: path.to_path_buf(),
            tmp,
            out: Some(out),
            tokens: 0,
            scratch: Vec::new(),
        })
    }

    /// Appends tokens (must be < 65536; the caller adds EOTs as llm.c does).
    pub fn write_tokens(&mut self, tokens: &[u32]) -> Result<(), DataError> {
        let buf = &mut self.scratch;
        buf.clear();
        for &t in tokens {
            let t16 = u16::try_from(t).map_err(|_| {
                DataError::mismatch(
                    &self.tmp,
                    format!("token {}", self.tokens),
                    "ids < 65536 (uint16)",
                    t,
                )
            })?;
            buf.extend_from_slice(&t16.to_le_bytes());
        }
        if self.tokens + tokens.len() as u64 > i32::MAX as u64 {
            return Err(DataError::mismatch(
                &self.tmp,
                "token count",
                "at most 2^31-1 tokens per llm.c shard (use --format megatron)",
                self.tokens + tokens.len() as u64,
            ));
        }
        let out = self.out.as_mut().expect("writer used after finish");
        out.write_all(buf)
            .map_err(|e| DataError::io(&self.tmp, "write", e))?;
        self.tokens += tokens.len() as u64;
        Ok(())
    }

    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    pub fn finish(mut self) -> Result<(), DataError> {
        use std::io::{Seek, SeekFrom};
        let tmp = self.tmp.clone();
        let out = self.out.take().expect("finish called once");
        let mut f = out
            .into_inner()
            .map_err(|e| DataError::io(&tmp, "flush", e.into_error()))?;
        let mut header = [0u8; 12];
        header[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        header[4..8].copy_from_slice(&VERSION.to_le_bytes());
        header[8..12].copy_from_slice(&(self.tokens as i32).to_le_bytes());
        f.seek(SeekFrom::Start(0))
            .and_then(|_| f.write_all(&header))
            .and_then(|_| f.sync_all())
            .map_err(|e| DataError::io(&tmp, "write header", e))?;
        std::fs::rename(&tmp, &self.path)
            .map_err(|e| DataError::io(&tmp, &format!("rename to {}", self.path.display()), e))
    }
}
