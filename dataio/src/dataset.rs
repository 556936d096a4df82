//! `TokenDataset`: one training token stream over a Megatron dataset or a set of llm.c shards,
//! memory-mapped and validated on open.
//!
//! The stream is what the sampler cuts windows from: documents concatenated, separated by EOT.
//! - llm.c shards: the shards' tokens in file-name order, verbatim (llm.c already writes an EOT
//!   before every document).
//! - Megatron, made with `--append-eod` (every document ends with EOT): the .bin verbatim.
//! - Megatron otherwise (some document does not end with EOT): every document followed by one
//!   inserted EOT, so the stream has `tokens + documents` tokens. Positions are mapped back with
//!   a binary search over the index; nothing is copied.
//!
//! Documents in the stream: Megatron's documents; for llm.c, one per EOT (plus one when the
//! stream does not open with EOT). `documents(range)` and `split(weights)` give views over runs
//! of whole documents — the read-time ratio split of Megatron's `--split 949,50,1`.

use crate::megatron::MegatronFile;
use crate::tokens::{Dtype, TokenArray};
use crate::{llmc, DataError, EOT_TOKEN, GPT2_VOCAB_SIZE};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// On-disk layout of a dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatasetFormat {
    /// Megatron-LM indexed dataset, `PREFIX.idx` + `PREFIX.bin`.
    Megatron,
    /// llm.c token shard(s), `.bin` with the 20240520 header.
    Llmc,
}

impl DatasetFormat {
    pub fn name(self) -> &'static str {
        match self {
            DatasetFormat::Megatron => "megatron",
            DatasetFormat::Llmc => "llmc",
        }
    }
}

enum Source {
    Megatron {
        file: MegatronFile,
        insert_eot: bool,
    },
    /// `starts[i]` = stream position of shard i's first token; `starts[len]` = total.
    Llmc {
        shards: Vec<TokenArray>,
        starts: Vec<u64>,
    },
}

struct Inner {
    spec: String,
    source: Source,
    num_tokens: u64,
    num_documents: u64,
    num_sequences: u64,
    max_token: u64,
}

/// A validated, memory-mapped token dataset, or a run of its documents (`documents`, `split`).
/// Cloning is cheap (shared mappings).
#[derive(Clone)]
pub struct TokenDataset {
    inner: Arc<Inner>,
    /// This view: stream tokens `start..start + len` of the whole dataset, holding `documents`
    /// documents and `sequences` sequences.
    start: u64,
    len: u64,
    documents: u64,
    sequences: u64,
    /// The spec, plus the document range for a view (for messages).
    label: String,
}

impl TokenDataset {
    /// A Megatron prefix (`PREFIX.idx` + `PREFIX.bin`; a trailing `.idx`/`.bin` is accepted),
    /// an llm.c shard (`.bin` with the 20240520 header), or a glob of llm.c shards
    /// (`dir/fineweb_train_*.bin`; wildcards `*` and `?` in the file name only). Every token id
    /// is checked to be below the GPT-2 vocabulary size.
    pub fn open(spec: &str) -> Result<TokenDataset, DataError> {
        Self::open_with_vocab(spec, GPT2_VOCAB_SIZE)
    }

    /// As `open`, for datasets of another tokenizer: ids must be below `vocab`.
    pub fn open_with_vocab(spec: &str, vocab: usize) -> Result<TokenDataset, DataError> {
        let source = resolve(spec)?;
        let inner = match source {
            Resolved::Megatron(prefix) => {
                let file = MegatronFile::open(&prefix)?;
                let scan = file.tokens.scan(vocab as u64, EOT_TOKEN as u64)?;
                let ending_eot = AtomicU64::new(0);
                runtime::cpu::parallel_for(file.documents, 1 << 16, |docs| {
                    let n = docs
                        .filter(|&d| {
                            file.tokens.get(file.document_start(d + 1) as usize - 1) == EOT_TOKEN
                        })
                        .count();
                    ending_eot.fetch_add(n as u64, Ordering::Relaxed);
                });
                let insert_eot = ending_eot.into_inner() != file.documents as u64;
                let stored = file.tokens.count as u64;
                Inner {
                    spec: spec.to_string(),
                    num_tokens: stored + if insert_eot { file.documents as u64 } else { 0 },
                    num_documents: file.documents as u64,
                    num_sequences: file.sequences as u64,
                    max_token: if insert_eot && file.documents > 0 {
                        scan.max_token.max(EOT_TOKEN as u64)
                    } else {
                        scan.max_token
                    },
                    source: Source::Megatron { file, insert_eot },
                }
            }
            Resolved::Llmc(paths) => {
                let mut shards = Vec::with_capacity(paths.len());
                let mut starts = vec![0u64];
                let (mut docs, mut max_token) = (0u64, 0u64);
                for path in &paths {
                    let shard = llmc::open_shard(path)?;
                    let scan = shard.scan(vocab as u64, EOT_TOKEN as u64)?;
                    if shards.is_empty() && shard.count > 0 && shard.get(0) != EOT_TOKEN {
                        docs += 1; // the stream opens mid-document
                    }
                    // Each EOT starts a document (llm.c shards may split one across files).
                    docs += scan.eot_count;
                    max_token = max_token.max(scan.max_token);
                    starts.push(starts.last().unwrap() + shard.count as u64);
                    shards.push(shard);
                }
                Inner {
                    spec: spec.to_string(),
                    num_tokens: *starts.last().unwrap(),
                    num_documents: docs,
                    num_sequences: docs,
                    max_token,
                    source: Source::Llmc { shards, starts },
                }
            }
        };
        Ok(TokenDataset {
            start: 0,
            len: inner.num_tokens,
            documents: inner.num_documents,
            sequences: inner.num_sequences,
            label: spec.to_string(),
            inner: Arc::new(inner),
        })
    }

    /// Documents `range` (of this dataset or view) as their own stream; nothing is copied.
    /// For llm.c data, finding document boundaries scans the tokens for EOTs.
    pub fn documents(&self, range: std::ops::Range<u64>) -> Result<TokenDataset, DataError> {
        if range.start > range.end || range.end > self.documents {
            return Err(DataError::mismatch(
                &self.label,
                "document range",
                format!("a range within 0..{}", self.documents),
                format!("{}..{}", range.start, range.end),
            ));
        }
        let first_doc = self.inner.first_document_of(self.start) + range.start;
        let last_doc = first_doc + (range.end - range.start);
        let start = self.inner.document_stream_start(first_doc);
        let end = self.inner.document_stream_start(last_doc);
        let sequences = match &self.inner.source {
            Source::Megatron { file, .. } => {
                (file.doc_index(last_doc as usize) - file.doc_index(first_doc as usize)) as u64
            }
            Source::Llmc { .. } => range.end - range.start,
        };
        Ok(TokenDataset {
            inner: self.inner.clone(),
            start,
            len: end - start,
            documents: range.end - range.start,
            sequences,
            label: format!("{} (documents {first_doc}..{last_doc})", self.inner.spec),
        })
    }

    /// A ratio split like Megatron's `--split 949,50,1`: one view per weight, holding
    /// contiguous runs of documents in order (`prepare::split_bounds` rounding). Errors when a
    /// part with a non-zero weight would get no document.
    pub fn split(&self, weights: &[u64]) -> Result<Vec<TokenDataset>, DataError> {
        if weights.is_empty() || weights.iter().sum::<u64>() == 0 {
            return Err(DataError::mismatch(
                &self.label,
                "split",
                "weights, not all 0",
                format!("{weights:?}"),
            ));
        }
        let bounds = crate::prepare::split_bounds(weights, self.documents);
        let names = crate::prepare::PART_NAMES;
        let mut parts = Vec::with_capacity(weights.len());
        for (i, &w) in weights.iter().enumerate() {
            if w > 0 && bounds[i + 1] == bounds[i] {
                let list: Vec<String> = weights.iter().map(u64::to_string).collect();
                return Err(DataError::mismatch(
                    &self.label,
                    format!("split {}", list.join(",")),
                    format!(
                        "at least 1 of the {} documents in part {}",
                        self.documents,
                        names.get(i).unwrap_or(&"?")
                    ),
                    "0 documents",
                ));
            }
            parts.push(self.documents(bounds[i]..bounds[i + 1])?);
        }
        Ok(parts)
    }

    pub fn format(&self) -> DatasetFormat {
        match self.inner.source {
            Source::Megatron { .. } => DatasetFormat::Megatron,
            Source::Llmc { .. } => DatasetFormat::Llmc,
        }
    }

    /// The spec this dataset was opened from.
    pub fn spec(&self) -> &str {
        &self.label
    }

    /// Length of the training token stream (see the module docs), counting the EOTs inserted
    /// between documents; `stored_tokens` is what the files hold.
    pub fn num_tokens(&self) -> u64 {
        self.len
    }

    /// Tokens stored in the file(s) for this dataset or view: `num_tokens` less the EOTs
    /// inserted between the documents of a Megatron dataset made without `--append-eod`.
    pub fn stored_tokens(&self) -> u64 {
        if self.inserts_eot() {
            self.len - self.documents
        } else {
            self.len
        }
    }

    /// Documents: Megatron's document count; for llm.c, the number of EOT-started documents.
    pub fn num_documents(&self) -> u64 {
        self.documents
    }

    /// Megatron's sequence count (sentences, when made with sentence splitting); for llm.c,
    /// equal to the document count.
    pub fn num_sequences(&self) -> u64 {
        self.sequences
    }

    /// Largest token id in the whole dataset (views share it).
    pub fn max_token(&self) -> u64 {
        self.inner.max_token
    }

    /// Element type on disk.
    pub fn dtype(&self) -> Dtype {
        match &self.inner.source {
            Source::Megatron { file, .. } => file.tokens.dtype,
            Source::Llmc { .. } => Dtype::U16,
        }
    }

    /// True for a Megatron dataset made without `--append-eod` (EOTs are inserted in the stream).
    pub fn inserts_eot(&self) -> bool {
        matches!(
            self.inner.source,
            Source::Megatron {
                insert_eot: true,
                ..
            }
        )
    }

    /// The files behind this dataset.
    pub fn files(&self) -> Vec<PathBuf> {
        match &self.inner.source {
            Source::Megatron { file, .. } => vec![file.idx_path.clone(), file.tokens.path.clone()],
            Source::Llmc { shards, .. } => shards.iter().map(|s| s.path.clone()).collect(),
        }
    }

    /// Copies stream tokens `start..start + out.len()` into `out`.
    pub fn read_tokens(&self, start: u64, out: &mut [u32]) -> Result<(), DataError> {
        let end = start
            .checked_add(out.len() as u64)
            .filter(|&e| e <= self.len);
        if end.is_none() {
            return Err(DataError::mismatch(
                &self.label,
                format!(
                    "read of tokens {start}..{}",
                    start as u128 + out.len() as u128
                ),
                format!("a range within the stream of {} tokens", self.len),
                "a range past its end",
            ));
        }
        self.inner.read(self.start + start, out);
        Ok(())
    }
}

impl Inner {
    /// Stream position where document `d` starts (`d == num_documents`: the end).
    fn document_stream_start(&self, d: u64) -> u64 {
        if d == self.num_documents {
            return self.num_tokens;
        }
        match &self.source {
            Source::Megatron { file, insert_eot } => {
                file.document_start(d as usize) + if *insert_eot { d } else { 0 }
            }
            Source::Llmc { shards, starts } => {
                // Document 0 starts at 0 even without an EOT there; the others at EOTs.
                let opens_mid_doc = self.num_tokens > 0 && self.read_one(0) != EOT_TOKEN;
                let mut nth = match (d, opens_mid_doc) {
                    (0, _) => return 0,
                    (d, true) => d - 1,
                    (d, false) => d,
                };
                for (shard, &shard_start) in shards.iter().zip(starts) {
                    match shard.find_nth(EOT_TOKEN, nth) {
                        Ok(i) => return shard_start + i as u64,
                        Err(seen) => nth -= seen,
                    }
                }
                unreachable!("document {d} < {} has a start", self.num_documents)
            }
        }
    }

    /// The document that starts at stream position `pos` (a view's first token).
    fn first_document_of(&self, pos: u64) -> u64 {
        if pos == 0 {
            return 0;
        }
        // Binary search over document starts; views always start on one.
        let (mut lo, mut hi) = (0u64, self.num_documents);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.document_stream_start(mid) < pos {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    fn read_one(&self, pos: u64) -> u32 {
        let mut t = [0u32];
        self.read(pos, &mut t);
        t[0]
    }

    /// Copies stream tokens `start..start + out.len()` (in range: checked by the caller).
    fn read(&self, start: u64, out: &mut [u32]) {
        match &self.source {
            Source::Llmc { shards, starts } => {
                let mut pos = start;
                let mut done = 0;
                // Last shard whose start is <= pos.
                let mut i = starts.partition_point(|&s| s <= pos) - 1;
                while done < out.len() {
                    let local = (pos - starts[i]) as usize;
                    let n = (shards[i].count - local).min(out.len() - done);
                    shards[i].copy_to(local, &mut out[done..done + n]);
                    done += n;
                    pos += n as u64;
                    i += 1;
                }
            }
            Source::Megatron {
                file,
                insert_eot: false,
            } => file.tokens.copy_to(start as usize, out),
            Source::Megatron {
                file,
                insert_eot: true,
            } => {
                // Document d occupies stream positions [start_d + d, start_d+1 + d), then its EOT.
                let stream_start = |d: usize| file.document_start(d) + d as u64;
                let mut lo = 0;
                let mut hi = file.documents; // invariant: stream_start(lo) <= start < stream_start(hi)
                while hi - lo > 1 {
                    let mid = (lo + hi) / 2;
                    if stream_start(mid) <= start {
                        lo = mid;
                    } else {
                        hi = mid;
                    }
                }
                let (mut d, mut pos, mut done) = (lo, start, 0usize);
                while done < out.len() {
                    let doc_begin = file.document_start(d);
                    let doc_len = file.document_start(d + 1) - doc_begin;
                    let in_doc = pos - (doc_begin + d as u64);
                    if in_doc < doc_len {
                        let n = ((doc_len - in_doc) as usize).min(out.len() - done);
                        file.tokens
                            .copy_to((doc_begin + in_doc) as usize, &mut out[done..done + n]);
                        done += n;
                        pos += n as u64;
                    } else {
                        out[done] = EOT_TOKEN;
                        done += 1;
                        pos += 1;
                        d += 1;
                    }
                }
            }
        }
    }
}

enum Resolved {
    Megatron(String),
    Llmc(Vec<PathBuf>),
}

fn is_glob(spec: &str) -> bool {
    spec.contains('*') || spec.contains('?')
}

/// Decides what `spec` names, without opening it.
fn resolve(spec: &str) -> Result<Resolved, DataError> {
    if is_glob(spec) {
        let paths = glob(spec)?;
        if paths.is_empty() {
            return Err(DataError::mismatch(
                spec,
                "glob",
                "at least one matching llm.c shard",
                "no matching files",
            ));
        }
        return Ok(Resolved::Llmc(paths));
    }
    let prefix = spec
        .strip_suffix(".idx")
        .or_else(|| spec.strip_suffix(".bin"))
        .unwrap_or(spec);
    if Path::new(&format!("{prefix}.idx")).is_file() {
        return Ok(Resolved::Megatron(prefix.to_string()));
    }
    for bin in [spec.to_string(), format!("{prefix}.bin")] {
        if bin.ends_with(".bin") && Path::new(&bin).is_file() {
            if llmc::has_magic(Path::new(&bin)) {
                return Ok(Resolved::Llmc(vec![PathBuf::from(bin)]));
            }
            let idx = format!("{prefix}.idx");
            let no_idx = match std::fs::metadata(&idx) {
                Ok(meta) => format!("{idx} is {}", crate::tokens::path_kind(&meta)),
                Err(_) => format!("no {idx}"),
            };
            return Err(DataError::mismatch(
                &bin,
                "byte offset 0",
                format!(
                    "an llm.c shard (magic {}) or a Megatron .bin beside {prefix}.idx",
                    llmc::MAGIC
                ),
                format!("neither ({no_idx}, no llm.c magic)"),
            ));
        }
    }
    let expected =
        format!("{prefix}.idx + {prefix}.bin (Megatron), an llm.c .bin shard, or a glob of shards");
    // Something is there but it is not a file: name it rather than claim nothing exists.
    let mut candidates = vec![spec.to_string()];
    for ext in ["idx", "bin"] {
        let c = format!("{prefix}.{ext}");
        if !candidates.contains(&c) {
            candidates.push(c);
        }
    }
    for path in candidates {
        if let Ok(meta) = std::fs::metadata(&path) {
            if !meta.is_file() {
                let hint = if meta.is_dir() && path == spec {
                    format!(
                        " (for a directory of llm.c shards, give a glob such as {}/*.bin)",
                        spec.trim_end_matches('/')
                    )
                } else {
                    String::new()
                };
                return Err(DataError::mismatch(
                    spec,
                    "dataset spec",
                    expected,
                    format!("{path} is {}{hint}", crate::tokens::path_kind(&meta)),
                ));
            }
        }
    }
    Err(DataError::mismatch(
        spec,
        "dataset spec",
        expected,
        "no such files",
    ))
}

/// True when `spec` names something `TokenDataset::open` would try to open.
pub fn dataset_exists(spec: &str) -> bool {
    if is_glob(spec) {
        return glob(spec).map(|v| !v.is_empty()).unwrap_or(false);
    }
    let prefix = spec
        .strip_suffix(".idx")
        .or_else(|| spec.strip_suffix(".bin"))
        .unwrap_or(spec);
    Path::new(&format!("{prefix}.idx")).is_file() || Path::new(&format!("{prefix}.bin")).is_file()
}

/// Files matching `dir/pattern`, sorted; wildcards only in the last component.
pub fn glob(spec: &str) -> Result<Vec<PathBuf>, DataError> {
    let path = Path::new(spec);
    let pattern = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if is_glob(&dir.to_string_lossy()) {
        return Err(DataError::mismatch(
            spec,
            "glob",
            "wildcards in the file name only",
            format!("wildcards in the directory {}", dir.display()),
        ));
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(DataError::io(dir, "list directory", e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| DataError::io(dir, "list directory", e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if wildcard_match(pattern.as_bytes(), name.as_bytes()) && entry.path().is_file() {
            out.push(path.parent().unwrap_or(Path::new("")).join(&name));
        }
    }
    out.sort();
    Ok(out)
}

/// `*` = any run of bytes, `?` = one byte. Iterative with single backtrack point (linear-ish).
fn wildcard_match(pat: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pat.len() && (pat[p] == b'?' || pat[p] == s[i]) {
            p += 1;
            i += 1;
        } else if p < pat.len() && pat[p] == b'*' {
            star = Some((p, i));
            p += 1;
        } else if let Some((sp, si)) = star {
            p = sp + 1;
            i = si + 1;
            star = Some((sp, si + 1));
        } else {
            return false;
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
}

/// The parts named by one `--data` argument.
pub struct DataSplits {
    pub train: TokenDataset,
    pub val: Option<TokenDataset>,
    pub test: Option<TokenDataset>,
}

/// `PREFIX_train` (+ `PREFIX_val`, `PREFIX_test` when present) if `PREFIX_train` exists; for a
/// glob containing `_train`, the same glob with `_val`/`_test` (llm.c's naming); else `spec`
/// alone as train.
pub fn open_splits(spec: &str) -> Result<DataSplits, DataError> {
    let open_opt = |s: String| -> Result<Option<TokenDataset>, DataError> {
        if dataset_exists(&s) {
            TokenDataset::open(&s).map(Some)
        } else {
            Ok(None)
        }
    };
    if !is_glob(spec) && dataset_exists(&format!("{spec}_train")) {
        return Ok(DataSplits {
            train: TokenDataset::open(&format!("{spec}_train"))?,
            val: open_opt(format!("{spec}_val"))?,
            test: open_opt(format!("{spec}_test"))?,
        });
    }
    let train = TokenDataset::open(spec)?;
    if is_glob(spec) && spec.contains("_train") {
        return Ok(DataSplits {
            train,
            val: open_opt(spec.replacen("_train", "_val", 1))?,
            test: open_opt(spec.replacen("_train", "_test", 1))?,
        });
    }
    Ok(DataSplits {
        train,
        val: None,
        test: None,
    })
}

/// One dataset split by ratio at read time, like Megatron's `--split 949,50,1` on a single
/// `--data-path`: 1 to 3 weights for train, val, test (see `TokenDataset::split`).
pub fn open_splits_ratio(spec: &str, weights: &[u64]) -> Result<DataSplits, DataError> {
    if weights.is_empty() || weights.len() > 3 {
        return Err(DataError::mismatch(
            spec,
            "split",
            "1 to 3 weights (train, val, test)",
            format!("{} weights", weights.len()),
        ));
    }
    let mut parts = TokenDataset::open(spec)?.split(weights)?.into_iter();
    let train = parts.next().unwrap();
    let val = parts.next().filter(|p| p.num_documents() > 0);
    let test = parts.next().filter(|p| p.num_documents() > 0);
    Ok(DataSplits { train, val, test })
}

#[cfg(test)]
mod tests {
    use super::wildcard_match;
    #[test]
    fn wildcards() {
        assert!(wildcard_match(
            b"fineweb_train_*.bin",
            b"fineweb_train_000001.bin"
        ));
        assert!(!wildcard_match(
            b"fineweb_train_*.bin",
            b"fineweb_val_000000.bin"
        ));
        assert!(wildcard_match(b"a?c*", b"abc"));
        assert!(!wildcard_match(b"a?c", b"ac"));
        assert!(wildcard_match(b"*a*b", b"xxaxxab"));
        assert!(!wildcard_match(b"*a*b", b"xxaxxa"));
    }
}
