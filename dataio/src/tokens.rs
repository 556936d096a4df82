//! Token arrays inside memory-mapped files: the element type (`Dtype`), a zero-copy view
//! (`TokenArray`) that converts to u32 on copy, and the open-time scan that checks every id
//! against the vocabulary (split over threads; it is the one full pass over a dataset).

use crate::DataError;
use memmap2::Mmap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[cfg(target_endian = "big")]
compile_error!("dataio reads little-endian token files by reinterpreting memory; big-endian hosts are unsupported");

/// Element type of a token file, with Megatron's `.idx` dtype codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    U8,
    I8,
    I16,
    I32,
    I64,
    U16,
}

impl Dtype {
    /// Megatron-LM's code (megatron/core/datasets/indexed_dataset.py `DType`). Codes 6 and 7
    /// (float64/float32) are valid there but cannot hold token ids, so we refuse them.
    pub fn from_code(code: u8) -> Option<Dtype> {
        Some(match code {
            1 => Dtype::U8,
            2 => Dtype::I8,
            3 => Dtype::I16,
            4 => Dtype::I32,
            5 => Dtype::I64,
            8 => Dtype::U16,
            _ => return None,
        })
    }
    pub fn code(self) -> u8 {
        match self {
            Dtype::U8 => 1,
            Dtype::I8 => 2,
            Dtype::I16 => 3,
            Dtype::I32 => 4,
            Dtype::I64 => 5,
            Dtype::U16 => 8,
        }
    }
    pub fn size(self) -> usize {
        match self {
            Dtype::U8 | Dtype::I8 => 1,
            Dtype::I16 | Dtype::U16 => 2,
            Dtype::I32 => 4,
            Dtype::I64 => 8,
        }
    }
    /// numpy's name, as `tools/data inspect` prints it.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::U8 => "uint8",
            Dtype::I8 => "int8",
            Dtype::I16 => "int16",
            Dtype::I32 => "int32",
            Dtype::I64 => "int64",
            Dtype::U16 => "uint16",
        }
    }
    /// The smallest type Megatron's builder picks for a vocabulary (uint16 below 65500, else int32).
    pub fn for_vocab(vocab: usize) -> Dtype {
        if vocab < 65500 {
            Dtype::U16
        } else {
            Dtype::I32
        }
    }
}

/// What a path that is not a regular file is, for messages ("a directory", ...).
pub(crate) fn path_kind(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_file() {
        "a regular file"
    } else {
        "a special file (a device, pipe or socket)"
    }
}

/// `count` tokens of type `dtype` starting at byte `offset` of a mapped file.
pub(crate) struct TokenArray {
    pub path: PathBuf,
    pub map: Mmap,
    pub offset: usize,
    pub count: usize,
    pub dtype: Dtype,
}

/// What the open-time scan found.
pub(crate) struct ScanResult {
    pub max_token: u64,
    pub eot_count: u64,
}

macro_rules! with_slice {
    ($arr:expr, $s:ident => $body:expr) => {
        match $arr.dtype {
            Dtype::U8 => {
                let $s = $arr.typed::<u8>();
                $body
            }
            Dtype::I8 => {
                let $s = $arr.typed::<i8>();
                $body
            }
            Dtype::I16 => {
                let $s = $arr.typed::<i16>();
                $body
            }
            Dtype::U16 => {
                let $s = $arr.typed::<u16>();
                $body
            }
            Dtype::I32 => {
                let $s = $arr.typed::<i32>();
                $body
            }
            Dtype::I64 => {
                let $s = $arr.typed::<i64>();
                $body
            }
        }
    };
}

impl TokenArray {
    /// Maps `path` and checks that `offset + count * dtype.size()` bytes are there.
    pub fn map_file(path: &Path) -> Result<Mmap, DataError> {
        // A directory or device opens fine but cannot be mapped ("No such device"): say what
        // the path is instead.
        let meta = std::fs::metadata(path).map_err(|e| DataError::io(path, "open", e))?;
        if !meta.is_file() {
            return Err(DataError::mismatch(
                path,
                "open",
                "a regular file of tokens",
                path_kind(&meta),
            ));
        }
        let file = std::fs::File::open(path).map_err(|e| DataError::io(path, "open", e))?;
        // SAFETY: the mapping is read-only; like every mmap reader we assume nobody truncates
        // the file while it is open (that would be a SIGBUS, not silent corruption).
        unsafe { Mmap::map(&file) }.map_err(|e| DataError::io(path, "mmap", e))
    }

    /// The tokens as a typed slice. The offset is checked to be aligned at construction
    /// (mmaps are page-aligned and token data starts at 0 or 1024).
    fn typed<T>(&self) -> &[T] {
        let bytes = &self.map[self.offset..self.offset + self.count * self.dtype.size()];
        assert_eq!(std::mem::size_of::<T>(), self.dtype.size());
        assert_eq!(
            bytes.as_ptr() as usize % std::mem::align_of::<T>(),
            0,
            "unaligned token data"
        );
        // SAFETY: length and alignment checked above; every bit pattern is a valid integer.
        unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const T, self.count) }
    }

    /// Token `i` (caller checks `i < count`; ids were validated on open so the cast is exact).
    pub fn get(&self, i: usize) -> u32 {
        with_slice!(self, s => s[i] as u32)
    }

    /// Copies tokens `start..start + out.len()` into `out` as u32.
    pub fn copy_to(&self, start: usize, out: &mut [u32]) {
        with_slice!(self, s => {
            let n = out.len();
            for (o, &t) in out.iter_mut().zip(&s[start..start + n]) {
                *o = t as u32;
            }
        })
    }

    /// Index of the `n`-th (0-based) occurrence of `value`, or the number of occurrences when
    /// there are not that many.
    #[allow(clippy::unnecessary_cast)] // `as i64` is a no-op only in the int64 instance
    pub fn find_nth(&self, value: u32, n: u64) -> Result<usize, u64> {
        let mut seen = 0u64;
        with_slice!(self, s => {
            for (i, &t) in s.iter().enumerate() {
                if t as i64 == value as i64 {
                    if seen == n {
                        return Ok(i);
                    }
                    seen += 1;
                }
            }
        });
        Err(seen)
    }

    /// Byte offset in the file of token `i` (for error messages).
    pub fn byte_offset(&self, i: usize) -> usize {
        self.offset + i * self.dtype.size()
    }

    /// Checks every id is in `0..vocab`, and returns the largest id and the number of `eot`s.
    /// Threads take contiguous chunks; only on failure do we search for the first bad token,
    /// so the error names the lowest offending offset.
    #[allow(clippy::unnecessary_cast)] // `as i64` is a no-op only in the int64 instance
    pub fn scan(&self, vocab: u64, eot: u64) -> Result<ScanResult, DataError> {
        let max = AtomicU64::new(0);
        let eots = AtomicU64::new(0);
        let bad: Mutex<Option<(usize, i64)>> = Mutex::new(None);
        with_slice!(self, s => {
            runtime::cpu::parallel_for(s.len(), 1 << 20, |range| {
                let chunk = &s[range.clone()];
                let (mut lo, mut hi, mut n_eot) = (i64::MAX, i64::MIN, 0u64);
                for &t in chunk {
                    let t = t as i64;
                    lo = lo.min(t);
                    hi = hi.max(t);
                    n_eot += (t == eot as i64) as u64;
                }
                if lo < 0 || hi >= vocab as i64 {
                    let i = chunk.iter().position(|&t| (t as i64) < 0 || (t as i64) >= vocab as i64).unwrap();
                    let mut b = bad.lock().unwrap();
                    let here = (range.start + i, chunk[i] as i64);
                    if b.is_none_or(|(j, _)| here.0 < j) {
                        *b = Some(here);
                    }
                }
                if !chunk.is_empty() {
                    max.fetch_max(hi.max(0) as u64, Ordering::Relaxed);
                }
                eots.fetch_add(n_eot, Ordering::Relaxed);
            })
        });
        if let Some((i, t)) = bad.into_inner().unwrap() {
            return Err(DataError::mismatch(
                &self.path,
                format!("byte offset {} (token {i})", self.byte_offset(i)),
                format!("a token id in 0..{vocab}"),
                t,
            ));
        }
        Ok(ScanResult {
            max_token: max.into_inner(),
            eot_count: eots.into_inner(),
        })
    }
}
