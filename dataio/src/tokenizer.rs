//! GPT-2 byte-level BPE via tiktoken-rs: `gpt2()` is r50k_base (tiktoken's embedding of GPT-2's
//! encoder.json + vocab.bpe); `from_files` builds the same thing from the `gpt2-vocab.json` +
//! `gpt2-merges.txt` pair that Megatron-LM's setup uses.
//!
//! Encoding is "ordinary": text that spells `<|endoftext|>` is encoded as plain text, never as
//! the EOT id, so documents cannot inject separators (Megatron's GPT2BPETokenizer behaves alike).

use crate::DataError;
use std::collections::HashMap;
use std::path::Path;
use tiktoken_rs::CoreBPE;

/// GPT-2's pre-tokenization regex (as in tiktoken's r50k_base).
const GPT2_PATTERN: &str =
    r"'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s";

enum Bpe {
    Shared(&'static CoreBPE),
    Owned(Box<CoreBPE>),
}

/// A GPT-2 tokenizer. `Sync`: one instance can encode from many threads.
pub struct Tokenizer {
    bpe: Bpe,
}

impl Tokenizer {
    /// GPT-2's tokenizer (tiktoken r50k_base, built once per process).
    pub fn gpt2() -> Result<Tokenizer, DataError> {
        Ok(Tokenizer {
            bpe: Bpe::Shared(tiktoken_rs::r50k_base_singleton()),
        })
    }

    /// GPT-2 style files: `vocab.json` maps byte-level-unicode strings to ids, `merges.txt`
    /// lists merges in priority order. tiktoken ranks pieces by id, which equals merge priority
    /// only when the merged tokens' ids increase with the merge order (true for GPT-2's files);
    /// we check that and refuse files where it does not hold.
    pub fn from_files(vocab_json: &Path, merges_txt: &Path) -> Result<Tokenizer, DataError> {
        let text = std::fs::read_to_string(vocab_json)
            .map_err(|e| DataError::io(vocab_json, "read", e))?;
        let vocab: HashMap<String, u32> = serde_json::from_str(&text).map_err(|e| {
            DataError::mismatch(
                vocab_json,
                format!("line {} column {}", e.line(), e.column()),
                "a JSON object of string -> id",
                e,
            )
        })?;
        let unicode_to_byte: HashMap<char, u8> = bytes_to_unicode()
            .into_iter()
            .map(|(b, c)| (c, b))
            .collect();
        let to_bytes = |s: &str| -> Option<Vec<u8>> {
            s.chars()
                .map(|c| unicode_to_byte.get(&c).copied())
                .collect()
        };
        let mut encoder: HashMap<Vec<u8>, u32> = HashMap::with_capacity(vocab.len());
        let mut specials: HashMap<String, u32> = HashMap::new();
        for (piece, &id) in &vocab {
            if piece.starts_with("<|") && piece.ends_with("|>") {
                specials.insert(piece.clone(), id);
            } else {
                let bytes = to_bytes(piece).ok_or_else(|| {
                    DataError::mismatch(
                        vocab_json,
                        format!("entry {piece:?}"),
                        "a byte-level BPE piece",
                        "characters outside GPT-2's byte alphabet",
                    )
                })?;
                encoder.insert(bytes, id);
            }
        }
        for b in 0..=255u8 {
            if !encoder.contains_key(&vec![b]) {
                return Err(DataError::mismatch(
                    vocab_json,
                    "byte tokens",
                    "an entry for every one of the 256 bytes",
                    format!("none for byte {b}"),
                ));
            }
        }
        let merges = std::fs::read_to_string(merges_txt)
            .map_err(|e| DataError::io(merges_txt, "read", e))?;
        let max_byte_id = (0..=255u8).map(|b| encoder[&vec![b]]).max().unwrap();
        let mut prev_id: Option<u32> = None;
        for (lineno, line) in merges.lines().enumerate() {
            if line.starts_with("#version") || line.trim().is_empty() {
                continue;
            }
            let at = format!("line {}", lineno + 1);
            let (a, b) = line.split_once(' ').ok_or_else(|| {
                DataError::mismatch(merges_txt, &at, "two pieces separated by a space", line)
            })?;
            let merged = to_bytes(&format!("{a}{b}")).ok_or_else(|| {
                DataError::mismatch(merges_txt, &at, "byte-level BPE pieces", line)
            })?;
            let id = *encoder.get(&merged).ok_or_else(|| {
                DataError::mismatch(
                    merges_txt,
                    &at,
                    format!("the merge result {a}{b} in {}", vocab_json.display()),
                    "no such entry",
                )
            })?;
            let floor = prev_id.unwrap_or(max_byte_id);
            if id <= floor {
                return Err(DataError::mismatch(
                    merges_txt,
                    &at,
                    format!("the merged token's id above {floor} (ids must follow merge order)"),
                    id,
                ));
            }
            prev_id = Some(id);
        }
        let bpe = CoreBPE::new(
            encoder.into_iter().collect(),
            specials.into_iter().collect(),
            GPT2_PATTERN,
        )
        .map_err(|e| DataError::new(vocab_json, "building BPE", e.to_string()))?;
        Ok(Tokenizer {
            bpe: Bpe::Owned(Box::new(bpe)),
        })
    }

    fn core(&self) -> &CoreBPE {
        match &self.bpe {
            Bpe::Shared(b) => b,
            Bpe::Owned(b) => b,
        }
    }

    /// Token ids of `text` (special-token text is encoded as ordinary text).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.core().encode_ordinary(text)
    }

    /// Text of `tokens`; bytes that are not valid UTF-8 (a character split across the end of
    /// the slice) become U+FFFD, unknown ids become "<|unk:ID|>".
    pub fn decode(&self, tokens: &[u32]) -> String {
        match self.core().decode_bytes(tokens) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(_) => {
                let mut bytes = Vec::new();
                for &t in tokens {
                    match self.core().decode_bytes(&[t]) {
                        Ok(b) => bytes.extend_from_slice(&b),
                        Err(_) => bytes.extend_from_slice(format!("<|unk:{t}|>").as_bytes()),
                    }
                }
                String::from_utf8_lossy(&bytes).into_owned()
            }
        }
    }
}

/// GPT-2's reversible byte -> printable-unicode mapping (openai/gpt-2 encoder.py): printable
/// Latin-1 bytes map to themselves, the other 68 bytes to U+0100 upwards in byte order.
pub fn bytes_to_unicode() -> Vec<(u8, char)> {
    let keep = |b: u8| {
        (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
    };
    let mut next = 256u32;
    (0..=255u8)
        .map(|b| {
            if keep(b) {
                (b, b as char)
            } else {
                let c = char::from_u32(next).unwrap();
                next += 1;
                (b, c)
            }
        })
        .collect()
}
