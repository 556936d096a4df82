//! Megatron-LM's indexed dataset ("MMapIndexedDataset"), byte-compatible with what
//! `tools/preprocess_data.py` writes:
//!
//! `PREFIX.idx`: magic `MMIDIDX\0\0` (9 bytes), u64 version = 1, u8 dtype code, u64 sequence
//! count S, u64 document-index count D (= documents + 1), then i32 sizes[S] (tokens per
//! sequence), i64 pointers[S] (byte offset of each sequence in .bin), i64 document_indices[D]
//! (document d = sequences document_indices[d]..document_indices[d+1]; starts at 0, ends at S).
//! All little-endian, packed (the arrays start at byte 34, so they are read element by element).
//! `PREFIX.bin`: the sequences' tokens back to back.
//!
//! The reader keeps both files mapped and reads the index lazily; validation on open walks the
//! index once (O(S + D)) and checks that the sequences tile the .bin exactly.

use crate::tokens::{Dtype, TokenArray};
use crate::DataError;
use memmap2::Mmap;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const MAGIC: &[u8; 9] = b"MMIDIDX\x00\x00";
const HEADER_LEN: usize = 9 + 8 + 1 + 8 + 8;

/// An opened, validated Megatron dataset.
pub(crate) struct MegatronFile {
    pub idx_path: PathBuf,
    idx: Mmap,
    pub tokens: TokenArray,
    pub sequences: usize,
    pub documents: usize,
}

fn read_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

impl MegatronFile {
    pub fn open(prefix: &str) -> Result<MegatronFile, DataError> {
        let idx_path = PathBuf::from(format!("{prefix}.idx"));
        let bin_path = PathBuf::from(format!("{prefix}.bin"));
        let idx = TokenArray::map_file(&idx_path)?;
        let p = &idx_path;
        if idx.len() < HEADER_LEN {
            return Err(DataError::mismatch(
                p,
                "header",
                format!("at least {HEADER_LEN} bytes"),
                format!("{} bytes", idx.len()),
            ));
        }
        if &idx[..9] != MAGIC {
            return Err(DataError::mismatch(
                p,
                "byte offset 0 (magic)",
                "MMIDIDX\\x00\\x00",
                format!("{:?}", String::from_utf8_lossy(&idx[..9])),
            ));
        }
        let version = read_u64(&idx, 9);
        if version != 1 {
            return Err(DataError::mismatch(
                p,
                "byte offset 9 (version)",
                1,
                version,
            ));
        }
        let code = idx[17];
        let dtype = Dtype::from_code(code).ok_or_else(|| {
            DataError::mismatch(
                p,
                "byte offset 17 (dtype code)",
                "an integer dtype code 1,2,3,4,5 or 8",
                code,
            )
        })?;
        let sequences = read_u64(&idx, 18);
        let doc_entries = read_u64(&idx, 26);
        let expect_len =
            (HEADER_LEN as u128) + (sequences as u128) * 12 + (doc_entries as u128) * 8;
        if expect_len != idx.len() as u128 {
            return Err(DataError::mismatch(
                p,
                "file length",
                format!("{expect_len} bytes for {sequences} sequences and {doc_entries} document indices"),
                format!("{} bytes", idx.len()),
            ));
        }
        if doc_entries < 1 {
            return Err(DataError::mismatch(
                p,
                "byte offset 26 (document count)",
                "at least 1 (the leading 0)",
                0,
            ));
        }
        let bin = TokenArray::map_file(&bin_path)?;
        let item = dtype.size() as u64;
        if !(bin.len() as u64).is_multiple_of(item) {
            return Err(DataError::mismatch(
                &bin_path,
                "file length",
                format!("a multiple of {item} ({})", dtype.name()),
                format!("{} bytes", bin.len()),
            ));
        }
        let file = MegatronFile {
            idx_path: idx_path.clone(),
            idx,
            tokens: TokenArray {
                path: bin_path,
                offset: 0,
                count: bin.len() / item as usize,
                dtype,
                map: bin,
            },
            sequences: sequences as usize,
            documents: doc_entries as usize - 1,
        };
        file.validate()?;
        Ok(file)
    }

    pub fn size(&self, s: usize) -> i32 {
        let at = HEADER_LEN + 4 * s;
        i32::from_le_bytes(self.idx[at..at + 4].try_into().unwrap())
    }
    pub fn pointer(&self, s: usize) -> i64 {
        let at = HEADER_LEN + 4 * self.sequences + 8 * s;
        read_u64(&self.idx, at) as i64
    }
    pub fn doc_index(&self, d: usize) -> i64 {
        let at = HEADER_LEN + 12 * self.sequences + 8 * d;
        read_u64(&self.idx, at) as i64
    }
    fn size_offset(&self, s: usize) -> usize {
        HEADER_LEN + 4 * s
    }
    fn pointer_offset(&self, s: usize) -> usize {
        HEADER_LEN + 4 * self.sequences + 8 * s
    }
    fn doc_offset(&self, d: usize) -> usize {
        HEADER_LEN + 12 * self.sequences + 8 * d
    }

    /// First token (index into .bin) of sequence `s`; `s == sequences` gives the end.
    pub fn sequence_start(&self, s: usize) -> u64 {
        if s == self.sequences {
            self.tokens.count as u64
        } else {
            self.pointer(s) as u64 / self.tokens.dtype.size() as u64
        }
    }

    /// First token of document `d`; `d == documents` gives the end.
    pub fn document_start(&self, d: usize) -> u64 {
        self.sequence_start(self.doc_index(d) as usize)
    }

    /// Sizes non-negative; pointers start at 0 and each sequence starts where the previous one
    /// ends (what Megatron's writer and merger produce), the last ending at the .bin's end;
    /// document indices run from 0 to S, every document non-empty.
    fn validate(&self) -> Result<(), DataError> {
        let p = &self.idx_path;
        let item = self.tokens.dtype.size() as i64;
        let mut expected_ptr: i64 = 0;
        for s in 0..self.sequences {
            let size = self.size(s);
            if size < 0 {
                return Err(DataError::mismatch(
                    p,
                    format!("byte offset {} (sizes[{s}])", self.size_offset(s)),
                    "a size >= 0",
                    size,
                ));
            }
            let ptr = self.pointer(s);
            if ptr != expected_ptr {
                return Err(DataError::mismatch(
                    p,
                    format!("byte offset {} (pointers[{s}])", self.pointer_offset(s)),
                    format!("{expected_ptr} (end of sequence {})", s as i64 - 1),
                    ptr,
                ));
            }
            expected_ptr = ptr + size as i64 * item;
        }
        let bin_len = (self.tokens.count as i64) * item;
        if expected_ptr != bin_len {
            return Err(DataError::mismatch(
                &self.tokens.path,
                "file length",
                format!(
                    "{expected_ptr} bytes (sum of the {} sequence sizes in {} x {} bytes)",
                    self.sequences,
                    self.tokens.dtype.name(),
                    item
                ),
                format!("{bin_len} bytes"),
            ));
        }
        let first = self.doc_index(0);
        if first != 0 {
            return Err(DataError::mismatch(
                p,
                format!("byte offset {} (document_indices[0])", self.doc_offset(0)),
                0,
                first,
            ));
        }
        let last = self.doc_index(self.documents);
        if last != self.sequences as i64 {
            return Err(DataError::mismatch(
                p,
                format!(
                    "byte offset {} (document_indices[{}])",
                    self.doc_offset(self.documents),
                    self.documents
                ),
                format!("the sequence count {}", self.sequences),
                last,
            ));
        }
        let mut prev_seq = 0i64;
        let mut prev_tok = 0u64;
        for d in 1..=self.documents {
            let seq = self.doc_index(d);
            if seq < prev_seq || seq > self.sequences as i64 {
                return Err(DataError::mismatch(
                    p,
                    format!("byte offset {} (document_indices[{d}])", self.doc_offset(d)),
                    format!("a sequence index in {prev_seq}..={}", self.sequences),
                    seq,
                ));
            }
            let tok = self.sequence_start(seq as usize);
            if tok == prev_tok {
                return Err(DataError::mismatch(
                    p,
                    format!("document {} (sequences {prev_seq}..{seq})", d - 1),
                    "at least 1 token (empty documents are not allowed)",
                    "0 tokens",
                ));
            }
            prev_seq = seq;
            prev_tok = tok;
        }
        Ok(())
    }
}

/// Writes a Megatron dataset one document at a time (one sequence per document, like
/// `preprocess_data.py` without sentence splitting). Tokens stream to `PREFIX.bin.tmp`; the
/// index is kept in memory (12 bytes per document) and written at `finish`, which renames both
/// files into place, so a failed run leaves no half-written dataset (a writer dropped without
/// `finish` deletes its temporary file).
pub struct MegatronWriter {
    prefix: String,
    dtype: Dtype,
    /// `None` once finished.
    bin: Option<std::io::BufWriter<std::fs::File>>,
    sizes: Vec<i32>,
    tokens: u64,
    /// Encoding buffer reused across documents.
    scratch: Vec<u8>,
}

impl Drop for MegatronWriter {
    fn drop(&mut self) {
        if self.bin.take().is_some() {
            let _ = std::fs::remove_file(format!("{}.bin.tmp", self.prefix));
        }
    }
}

impl MegatronWriter {
    pub fn create(prefix: &str, dtype: Dtype) -> Result<MegatronWriter, DataError> {
        let tmp = format!("{prefix}.bin.tmp");
        if let Some(dir) = Path::new(prefix).parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| DataError::io(dir, "create directory", e))?;
            }
        }
        let f = std::fs::File::create(&tmp).map_err(|e| DataError::io(&tmp, "create", e))?;
        Ok(MegatronWriter {
            prefix: prefix.to_string(),
            dtype,
            bin: Some(std::io::BufWriter::with_capacity(1 << 20, f)),
            sizes: Vec::new(),
            tokens: 0,
            scratch: Vec::new(),
        })
    }

    /// Appends one document (one sequence). Empty documents are refused; ids must fit `dtype`.
    pub fn add_document(&mut self, tokens: &[u32]) -> Result<(), DataError> {
        let tmp = format!("{}.bin.tmp", self.prefix);
        if tokens.is_empty() {
            return Err(DataError::mismatch(
                &tmp,
                format!("document {}", self.sizes.len()),
                "at least 1 token",
                "an empty document",
            ));
        }
        let size = i32::try_from(tokens.len()).map_err(|_| {
            DataError::mismatch(
                &tmp,
                format!("document {}", self.sizes.len()),
                "at most 2^31-1 tokens",
                tokens.len(),
            )
        })?;
        let limit: u64 = match self.dtype {
            Dtype::U8 => u8::MAX as u64,
            Dtype::I8 => i8::MAX as u64,
            Dtype::I16 => i16::MAX as u64,
            Dtype::U16 => u16::MAX as u64,
            Dtype::I32 => i32::MAX as u64,
            Dtype::I64 => i64::MAX as u64,
        };
        let buf = &mut self.scratch;
        buf.clear();
        for &t in tokens {
            if t as u64 > limit {
                return Err(DataError::mismatch(
                    &tmp,
                    format!("document {}", self.sizes.len()),
                    format!("token ids <= {limit} ({})", self.dtype.name()),
                    t,
                ));
            }
            match self.dtype {
                Dtype::U8 | Dtype::I8 => buf.push(t as u8),
                Dtype::I16 | Dtype::U16 => buf.extend_from_slice(&(t as u16).to_le_bytes()),
                Dtype::I32 => buf.extend_from_slice(&t.to_le_bytes()),
                Dtype::I64 => buf.extend_from_slice(&(t as u64).to_le_bytes()),
            }
        }
        let bin = self.bin.as_mut().expect("writer used after finish");
        bin.write_all(buf)
            .map_err(|e| DataError::io(&tmp, "write", e))?;
        self.sizes.push(size);
        self.tokens += tokens.len() as u64;
        Ok(())
    }

    pub fn documents(&self) -> usize {
        self.sizes.len()
    }
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// Writes the index and moves `PREFIX.bin` and `PREFIX.idx` into place.
    pub fn finish(mut self) -> Result<(), DataError> {
        let bin_tmp = format!("{}.bin.tmp", self.prefix);
        let idx_tmp = format!("{}.idx.tmp", self.prefix);
        let bin = self.bin.take().expect("finish called once");
        let f = bin
            .into_inner()
            .map_err(|e| DataError::io(&bin_tmp, "flush", e.into_error()))?;
        f.sync_all()
            .map_err(|e| DataError::io(&bin_tmp, "sync", e))?;
        let s = self.sizes.len();
        let mut idx = Vec::with_capacity(HEADER_LEN + 12 * s + 8 * (s + 1));
        idx.extend_from_slice(MAGIC);
        idx.extend_from_slice(&1u64.to_le_bytes());
        idx.push(self.dtype.code());
        idx.extend_from_slice(&(s as u64).to_le_bytes());
        idx.extend_from_slice(&(s as u64 + 1).to_le_bytes());
        for &size in &self.sizes {
            idx.extend_from_slice(&size.to_le_bytes());
        }
        let mut ptr = 0i64;
        for &size in &self.sizes {
            idx.extend_from_slice(&ptr.to_le_bytes());
            ptr += size as i64 * self.dtype.size() as i64;
        }
        for d in 0..=s as i64 {
            idx.extend_from_slice(&d.to_le_bytes());
        }
        std::fs::write(&idx_tmp, &idx).map_err(|e| DataError::io(&idx_tmp, "write", e))?;
        let bin_path = format!("{}.bin", self.prefix);
        let idx_path = format!("{}.idx", self.prefix);
        std::fs::rename(&bin_tmp, &bin_path)
            .map_err(|e| DataError::io(&bin_tmp, &format!("rename to {bin_path}"), e))?;
        std::fs::rename(&idx_tmp, &idx_path)
            .map_err(|e| DataError::io(&idx_tmp, &format!("rename to {idx_path}"), e))?;
        Ok(())
    }
}
