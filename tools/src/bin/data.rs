//! `tools/data`: build and look at token datasets.
//!
//!   data prepare --input PATH... [--output PREFIX] [--format megatron|llmc] [--split 949,50,1]
//!   data prepare --corpus shakespeare
//!   data inspect PREFIX_OR_FILE [--text N]
//!
//! `inspect` prints one JSON object: `tokens` counts the tokens stored in the files;
//! `stream_tokens` is the length of the stream training reads, which adds an EOT after every
//! document of a Megatron dataset made without `--append-eod` (otherwise the two are equal).
//! `max_token`, `first_tokens` and `text` come from the stream.
//!
//! Errors print one line on stderr and exit with status 1.

use argh::FromArgs;
use dataio::prepare::{parse_split, prepare, PrepareOptions};
use dataio::{DataError, DatasetFormat, TokenDataset, Tokenizer};
use std::path::PathBuf;

#[derive(FromArgs)]
/// Prepare and inspect mxgpt token datasets (Megatron-LM indexed or llm.c shards).
struct Args {
    #[argh(subcommand)]
    cmd: Cmd,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Cmd {
    Prepare(Prepare),
    Inspect(Inspect),
}

#[derive(FromArgs)]
#[argh(subcommand, name = "prepare")]
/// Tokenize text (files, directories of .txt/.jsonl, JSONL with a "text" field) with GPT-2 BPE
/// into a dataset; or, with --corpus shakespeare, fetch and prepare the default corpus.
struct Prepare {
    /// input file or directory (repeatable)
    #[argh(option)]
    input: Vec<PathBuf>,
    /// output prefix (default: data/<name of the first input>)
    #[argh(option)]
    output: Option<String>,
    /// megatron (PREFIX.idx + PREFIX.bin, default) or llmc (PREFIX.bin)
    #[argh(option, default = "String::from(\"megatron\")")]
    format: String,
    /// train,val[,test] ratio by documents, e.g. 949,50,1: writes PREFIX_train, PREFIX_val, PREFIX_test
    #[argh(option)]
    split: Option<String>,
    /// JSONL key holding the text (default "text")
    #[argh(option, default = "String::from(\"text\")")]
    json_key: String,
    /// drop documents without text instead of failing on them
    #[argh(switch)]
    skip_empty: bool,
    /// a named corpus instead of --input: "shakespeare"
    #[argh(option)]
    corpus: Option<String>,
    /// root for data/ and .cache/ of --corpus (default: the repository root)
    #[argh(option)]
    root: Option<PathBuf>,
}

#[derive(FromArgs)]
#[argh(subcommand, name = "inspect")]
/// Print one JSON object describing a dataset (Megatron prefix, llm.c shard or glob): format,
/// dtype, documents, sequences, tokens (stored in the files), stream_tokens (the training stream's
/// length: tokens plus the EOTs inserted after each document of a Megatron dataset made without
/// --append-eod), max_token, first_tokens (the stream's first 16).
struct Inspect {
    /// dataset prefix, .bin/.idx file, or glob of llm.c shards (default: the Shakespeare
    /// corpus's training part, data/shakespeare_train)
    #[argh(positional)]
    spec: Option<String>,
    /// also decode the first N tokens (adds a "text" field)
    #[argh(option)]
    text: Option<usize>,
}

/// The repository root: the launcher exports MXGPT_ROOT; otherwise the current directory.
fn repo_root() -> PathBuf {
    std::env::var_os("MXGPT_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn run_prepare(p: Prepare) -> Result<(), DataError> {
    if let Some(corpus) = &p.corpus {
        if corpus != "shakespeare" {
            return Err(DataError::mismatch(
                "--corpus",
                "value",
                "shakespeare",
                corpus,
            ));
        }
        if !p.input.is_empty() || p.output.is_some() || p.split.is_some() {
            return Err(DataError::mismatch(
                "--corpus",
                "arguments",
                "no --input, --output or --split with --corpus",
                "some",
            ));
        }
        let prefix = dataio::prepare_shakespeare(&p.root.unwrap_or_else(repo_root))?;
        for part in ["train", "val"] {
            let d = TokenDataset::open(&format!("{prefix}_{part}"))?;
            println!(
                "{prefix}_{part}: {} documents, {} tokens",
                d.num_documents(),
                d.stored_tokens()
            );
        }
        return Ok(());
    }
    if p.input.is_empty() {
        return Err(DataError::mismatch(
            "prepare",
            "arguments",
            "--input PATH (or --corpus shakespeare)",
            "neither",
        ));
    }
    let format = match p.format.as_str() {
        "megatron" => DatasetFormat::Megatron,
        "llmc" => DatasetFormat::Llmc,
        other => {
            return Err(DataError::mismatch(
                "--format",
                "value",
                "megatron or llmc",
                other,
            ))
        }
    };
    let output = match p.output {
        Some(o) => o,
        None => {
            let first = &p.input[0];
            let stem = first
                .file_stem()
                .or_else(|| first.file_name())
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "dataset".into());
            repo_root().join("data").join(stem).display().to_string()
        }
    };
    let split = p.split.as_deref().map(parse_split).transpose()?;
    let opts = PrepareOptions {
        inputs: p.input,
        output,
        format,
        split,
        json_key: p.json_key,
        skip_empty: p.skip_empty,
        progress: true,
    };
    let tok = Tokenizer::gpt2()?;
    let started = std::time::Instant::now();
    let parts = prepare(&opts, &tok)?;
    let secs = started.elapsed().as_secs_f64();
    let total: u64 = parts.iter().map(|p| p.tokens).sum();
    for part in &parts {
        println!(
            "{}: {} documents, {} tokens",
            part.prefix, part.documents, part.tokens
        );
    }
    eprintln!(
        "prepare: {total} tokens in {secs:.1} s ({:.2} M tokens/s)",
        total as f64 / secs.max(1e-9) / 1e6
    );
    Ok(())
}

fn run_inspect(i: Inspect) -> Result<(), DataError> {
    let spec = i.spec.unwrap_or_else(|| {
        repo_root()
            .join("data/shakespeare_train")
            .display()
            .to_string()
    });
    let d = TokenDataset::open(&spec)?;
    let mut first = vec![0u32; d.num_tokens().min(16) as usize];
    d.read_tokens(0, &mut first)?;
    let mut obj = serde_json::json!({
        "format": d.format().name(),
        "dtype": d.dtype().name(),
        "documents": d.num_documents(),
        "sequences": d.num_sequences(),
        "tokens": d.stored_tokens(),
        "stream_tokens": d.num_tokens(),
        "max_token": d.max_token(),
        "first_tokens": first,
    });
    if let Some(n) = i.text {
        let mut toks = vec![0u32; d.num_tokens().min(n as u64) as usize];
        d.read_tokens(0, &mut toks)?;
        obj["text"] = serde_json::Value::String(Tokenizer::gpt2()?.decode(&toks));
    }
    println!("{obj}");
    Ok(())
}

fn main() {
    let args: Args = argh::from_env();
    let result = match args.cmd {
        Cmd::Prepare(p) => run_prepare(p),
        Cmd::Inspect(i) => run_inspect(i),
    };
    if let Err(e) = result {
        eprintln!("data: error: {e}");
        std::process::exit(1);
    }
}
