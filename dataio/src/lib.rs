//! dataio: token datasets for mxgpt.
//!
//! - `TokenDataset`: Megatron-LM indexed datasets (`.idx` + `.bin`) and llm.c token shards,
//!   memory-mapped, validated on open, read as one EOT-separated token stream (`dataset`).
//! - `BatchLoader`: deterministic, shuffled, resumable windows of T+1 tokens (`loader`).
//! - `Tokenizer`: GPT-2 BPE (`tokenizer`).
//! - Writers (`MegatronWriter`, `LlmcWriter`) and the `prepare` pipeline behind `tools/data`
//!   (text/JSONL -> dataset, ratio splits, the Shakespeare default corpus).

mod dataset;
mod error;
mod llmc;
mod loader;
mod megatron;
pub mod prepare;
mod tokenizer;
mod tokens;

pub use dataset::{
    dataset_exists, glob, open_splits, open_splits_ratio, DataSplits, DatasetFormat, TokenDataset,
};
pub use error::DataError;
pub use llmc::LlmcWriter;
pub use loader::{splitmix64, BatchLoader, LoaderState, Permutation};
pub use megatron::MegatronWriter;
pub use prepare::prepare_shakespeare;
pub use tokenizer::{bytes_to_unicode, Tokenizer};
pub use tokens::Dtype;

/// GPT-2's end-of-text token, the document separator.
pub const EOT_TOKEN: u32 = 50256;
/// GPT-2's vocabulary size (50,257 ids; models usually pad the embedding to 50,304).
pub const GPT2_VOCAB_SIZE: usize = 50257;
