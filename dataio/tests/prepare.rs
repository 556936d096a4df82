//! prepare: text/JSONL inputs into datasets, splits, and the input errors.

mod common;
use common::*;
use dataio::prepare::{prepare, PrepareOptions};
use dataio::{DatasetFormat, TokenDataset, Tokenizer, EOT_TOKEN};
use std::path::PathBuf;

fn opts(
    inputs: Vec<PathBuf>,
    output: String,
    format: DatasetFormat,
    split: Option<Vec<u64>>,
) -> PrepareOptions {
    PrepareOptions {
        inputs,
        output,
        format,
        split,
        json_key: "text".into(),
        skip_empty: false,
        progress: false,
    }
}

fn read_all(d: &TokenDataset) -> Vec<u32> {
    let mut v = vec![0; d.num_tokens() as usize];
    d.read_tokens(0, &mut v).unwrap();
    v
}

#[test]
fn text_directory_and_jsonl_to_both_formats() {
    let dir = TempDir::new("prep");
    let texts = dir.0.join("texts");
    std::fs::create_dir_all(texts.join("sub")).unwrap();
    std::fs::write(texts.join("b.txt"), "Second file.").unwrap();
    std::fs::write(texts.join("a.txt"), "First file.\n").unwrap();
    std::fs::write(texts.join("sub/c.txt"), "Third, nested.").unwrap();
    std::fs::write(texts.join("ignored.md"), "not a document").unwrap();
    let jsonl = dir.0.join("docs.jsonl");
    std::fs::write(
        &jsonl,
        "{\"text\": \"Hello, world!\", \"id\": 1}\n\n{\"text\": \"To be.\"}\n",
    )
    .unwrap();
    let tok = Tokenizer::gpt2().unwrap();
    // Expected stream, built from the tokenizer per document in the documented order
    // (directory entries sorted, recursively; then JSONL lines).
    let docs = [
        "First file.\n",
        "Second file.",
        "Third, nested.",
        "Hello, world!",
        "To be.",
    ];

    let meg = dir.path("meg");
    let parts = prepare(
        &opts(
            vec![texts.clone(), jsonl.clone()],
            meg.clone(),
            DatasetFormat::Megatron,
            None,
        ),
        &tok,
    )
    .unwrap();
    assert_eq!(parts.len(), 1);
    assert_eq!(parts[0].documents, 5);
    let d = TokenDataset::open(&meg).unwrap();
    assert_eq!(d.format(), DatasetFormat::Megatron);
    assert!(
        !d.inserts_eot(),
        "documents are written with a trailing EOT"
    );
    let want: Vec<u32> = docs
        .iter()
        .flat_map(|s| tok.encode(s).into_iter().chain([EOT_TOKEN]))
        .collect();
    assert_eq!(read_all(&d), want);

    let llmc = dir.path("llmc");
    prepare(
        &opts(vec![texts, jsonl], llmc.clone(), DatasetFormat::Llmc, None),
        &tok,
    )
    .unwrap();
    let d = TokenDataset::open(&llmc).unwrap();
    assert_eq!(d.format(), DatasetFormat::Llmc);
    assert_eq!(d.num_documents(), 5);
    let want: Vec<u32> = docs
        .iter()
        .flat_map(|s| [EOT_TOKEN].into_iter().chain(tok.encode(s)))
        .collect();
    assert_eq!(read_all(&d), want);
}

#[test]
fn ratio_split_by_documents() {
    let dir = TempDir::new("split");
    let jsonl = dir.0.join("d.jsonl");
    let lines: String = (0..20)
        .map(|i| format!("{{\"text\": \"document number {i}\"}}\n"))
        .collect();
    std::fs::write(&jsonl, lines).unwrap();
    let tok = Tokenizer::gpt2().unwrap();
    let out = dir.path("s");
    // 20 docs at 8,1,1 -> 16, 2, 2 in input order.
    let parts = prepare(
        &opts(
            vec![jsonl],
            out.clone(),
            DatasetFormat::Megatron,
            Some(vec![8, 1, 1]),
        ),
        &tok,
    )
    .unwrap();
    assert_eq!(
        parts.iter().map(|p| p.documents).collect::<Vec<_>>(),
        vec![16, 2, 2]
    );
    let s = dataio::open_splits(&out).unwrap();
    let doc_stream = |r: std::ops::Range<i32>| -> Vec<u32> {
        r.flat_map(|i| {
            tok.encode(&format!("document number {i}"))
                .into_iter()
                .chain([EOT_TOKEN])
        })
        .collect()
    };
    assert_eq!(read_all(&s.train), doc_stream(0..16));
    assert_eq!(read_all(s.val.as_ref().unwrap()), doc_stream(16..18));
    assert_eq!(read_all(s.test.as_ref().unwrap()), doc_stream(18..20));
}

#[test]
fn split_leaving_a_part_empty_is_an_error_and_writes_nothing() {
    let dir = TempDir::new("empty-part");
    let jsonl = dir.0.join("d.jsonl");
    std::fs::write(
        &jsonl,
        "{\"text\": \"a\"}\n{\"text\": \"b\"}\n{\"text\": \"c\"}\n",
    )
    .unwrap();
    let tok = Tokenizer::gpt2().unwrap();
    let out = dir.path("x");
    // 3 docs at 949,50,1 -> 3, 0, 0.
    assert_err_contains(
        prepare(
            &opts(
                vec![jsonl],
                out.clone(),
                DatasetFormat::Megatron,
                Some(vec![949, 50, 1]),
            ),
            &tok,
        ),
        &[
            "x_val",
            "split 949,50,1",
            "at least 1 of the 3 input documents in part val",
            "found 0 documents",
        ],
    );
    assert_eq!(
        std::fs::read_dir(&dir.0).unwrap().count(),
        1,
        "only the input remains"
    );
}

#[test]
fn input_errors_name_file_and_line() {
    let dir = TempDir::new("inerr");
    let tok = Tokenizer::gpt2().unwrap();
    let out = dir.path("o");
    let j = dir.0.join("bad.jsonl");

    std::fs::write(&j, "{\"text\": \"ok\"}\n{\"text\": 5}\n").unwrap();
    assert_err_contains(
        prepare(
            &opts(vec![j.clone()], out.clone(), DatasetFormat::Megatron, None),
            &tok,
        ),
        &[
            "bad.jsonl",
            "line 2",
            "a string under \"text\"",
            "found a number",
        ],
    );

    std::fs::write(&j, "{\"text\": \"ok\"}\n{\"body\": \"x\"}\n").unwrap();
    assert_err_contains(
        prepare(
            &opts(vec![j.clone()], out.clone(), DatasetFormat::Megatron, None),
            &tok,
        ),
        &["bad.jsonl", "line 2", "a \"text\" field"],
    );

    std::fs::write(&j, "{\"text\": \"ok\"}\n{not json\n").unwrap();
    assert_err_contains(
        prepare(
            &opts(vec![j.clone()], out.clone(), DatasetFormat::Megatron, None),
            &tok,
        ),
        &["bad.jsonl", "line 2", "invalid JSON"],
    );

    // Empty document: an error naming file:line, or skipped with skip_empty.
    std::fs::write(
        &j,
        "{\"text\": \"ok\"}\n{\"text\": \"\"}\n{\"text\": \"fine\"}\n",
    )
    .unwrap();
    assert_err_contains(
        prepare(
            &opts(vec![j.clone()], out.clone(), DatasetFormat::Megatron, None),
            &tok,
        ),
        &["bad.jsonl:2", "--skip-empty", "empty document"],
    );
    let mut o = opts(vec![j.clone()], out.clone(), DatasetFormat::Megatron, None);
    o.skip_empty = true;
    assert_eq!(prepare(&o, &tok).unwrap()[0].documents, 2);

    let t = dir.0.join("latin1.txt");
    std::fs::write(&t, b"caf\xe9").unwrap();
    assert_err_contains(
        prepare(
            &opts(vec![t], out.clone(), DatasetFormat::Megatron, None),
            &tok,
        ),
        &["latin1.txt", "byte offset 3", "UTF-8"],
    );

    assert_err_contains(
        prepare(
            &opts(vec![dir.0.join("nope")], out, DatasetFormat::Megatron, None),
            &tok,
        ),
        &["nope", "nothing at this path"],
    );
    // Failed runs leave no temporary files behind (the writers delete them when dropped).
    let tmp: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(tmp.is_empty(), "{tmp:?}");
}

#[test]
fn llmc_output_replaces_a_stale_megatron_index() {
    let dir = TempDir::new("stale");
    let j = dir.0.join("d.jsonl");
    std::fs::write(&j, "{\"text\": \"abc\"}\n").unwrap();
    let tok = Tokenizer::gpt2().unwrap();
    let out = dir.path("same");
    prepare(
        &opts(vec![j.clone()], out.clone(), DatasetFormat::Megatron, None),
        &tok,
    )
    .unwrap();
    prepare(&opts(vec![j], out.clone(), DatasetFormat::Llmc, None), &tok).unwrap();
    assert_eq!(
        TokenDataset::open(&out).unwrap().format(),
        DatasetFormat::Llmc
    );
}

#[test]
fn inputs_without_documents_are_named() {
    let dir = TempDir::new("nodocs");
    let tok = Tokenizer::gpt2().unwrap();
    let out = dir.path("o");
    let empty = dir.0.join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let blank = dir.0.join("blank.jsonl");
    std::fs::write(&blank, "\n  \n\t\n").unwrap();
    // Used to say "o: split : expected at least 1 of the 0 input documents in part train"
    // with no --split given.
    for (inputs, fragments) in [
        (
            vec![empty.clone()],
            vec![
                "empty.jsonl",
                "at least 1 document",
                "empty or holds only blank lines",
            ],
        ),
        (
            vec![empty.clone(), blank.clone()],
            vec!["empty.jsonl, ", "blank.jsonl", "none in the 2 input files"],
        ),
    ] {
        for split in [None, Some(vec![949, 50, 1])] {
            let r = prepare(
                &opts(inputs.clone(), out.clone(), DatasetFormat::Megatron, split),
                &tok,
            );
            let msg = r.expect_err("no documents is an error").to_string();
            for f in &fragments {
                assert!(msg.contains(f), "{msg:?} lacks {f:?}");
            }
            assert!(!msg.contains("split"), "{msg}");
        }
    }
    // Only empty documents, dropped by skip_empty, without a split: no talk of splits.
    let j = dir.0.join("empties.jsonl");
    std::fs::write(&j, "{\"text\": \"\"}\n{\"text\": \"\"}\n").unwrap();
    let mut o = opts(vec![j], out.clone(), DatasetFormat::Megatron, None);
    o.skip_empty = true;
    let msg = prepare(&o, &tok).err().unwrap().to_string();
    assert!(
        msg.contains("at least 1 non-empty document") && msg.contains("--skip-empty"),
        "{msg}"
    );
    assert!(!msg.contains("split") && !msg.contains("part"), "{msg}");
    assert_eq!(
        std::fs::read_dir(&dir.0).unwrap().count(),
        3,
        "nothing written besides the inputs"
    );
}

#[test]
fn bad_jsonl_lines_report_one_line_number() {
    let dir = TempDir::new("badline");
    let tok = Tokenizer::gpt2().unwrap();
    let out = dir.path("o");
    let j = dir.0.join("bad.jsonl");
    // Line 3 holds the byte 0xFF inside the string, at byte 11 of the line (column 11).
    std::fs::write(
        &j,
        b"{\"text\": \"ok\"}\n\n{\"text\":\"b\xff\"}\n".as_slice(),
    )
    .unwrap();
    let msg = prepare(
        &opts(vec![j.clone()], out.clone(), DatasetFormat::Megatron, None),
        &tok,
    )
    .err()
    .unwrap()
    .to_string();
    for f in ["bad.jsonl", "line 3 column 11", "UTF-8", "0xFF"] {
        assert!(msg.contains(f), "{msg:?} lacks {f:?}");
    }
    // serde_json used to add its own "at line 1 column 11" (it sees one line at a time).
    assert_eq!(msg.matches("line ").count(), 1, "{msg}");

    // The same for JSON syntax errors: the file's line, serde_json's message, one line number.
    std::fs::write(&j, "{\"text\": \"ok\"}\n{\"text\": tru}\n").unwrap();
    let msg = prepare(&opts(vec![j], out, DatasetFormat::Megatron, None), &tok)
        .err()
        .unwrap()
        .to_string();
    for f in [
        "bad.jsonl",
        "line 2 column",
        "invalid JSON (expected ident)",
    ] {
        assert!(msg.contains(f), "{msg:?} lacks {f:?}");
    }
    assert_eq!(msg.matches("line ").count(), 1, "{msg}");
}
