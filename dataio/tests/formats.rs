//! Reading hand-built Megatron and llm.c files, writer round trips, and the errors for broken
//! files. Expected values are written out by hand from the format descriptions.

mod common;
use common::*;
use dataio::{DatasetFormat, Dtype, LlmcWriter, MegatronWriter, TokenDataset, EOT_TOKEN};

fn read_all(d: &TokenDataset) -> Vec<u32> {
    let mut v = vec![0; d.num_tokens() as usize];
    d.read_tokens(0, &mut v).unwrap();
    v
}

#[test]
fn hand_built_megatron_without_eod_inserts_separators() {
    let dir = TempDir::new("hand");
    let p = dir.path("tiny");
    // 3 documents; document 1 has two sequences (sentence splitting). Tokens:
    // doc0: [10, 11, 12]; doc1: [20] + [21, 22]; doc2: [30, 31]. uint16 -> 2 bytes each.
    let tokens: [u16; 8] = [10, 11, 12, 20, 21, 22, 30, 31];
    std::fs::write(format!("{p}.bin"), u16_bytes(&tokens)).unwrap();
    std::fs::write(
        format!("{p}.idx"),
        idx_bytes(8, &[3, 1, 2, 2], &[0, 6, 8, 12], &[0, 1, 3, 4]),
    )
    .unwrap();
    let d = TokenDataset::open(&p).unwrap();
    assert_eq!(d.format(), DatasetFormat::Megatron);
    assert_eq!(d.dtype(), Dtype::U16);
    assert_eq!(d.num_documents(), 3);
    assert_eq!(d.num_sequences(), 4);
    assert!(d.inserts_eot());
    assert_eq!(d.num_tokens(), 8 + 3);
    let e = EOT_TOKEN;
    assert_eq!(read_all(&d), vec![10, 11, 12, e, 20, 21, 22, e, 30, 31, e]);
    // Reads starting inside documents and on separators.
    for start in 0..11u64 {
        for len in 0..=(11 - start) as usize {
            let mut out = vec![0; len];
            d.read_tokens(start, &mut out).unwrap();
            assert_eq!(
                out,
                read_all(&d)[start as usize..start as usize + len],
                "start {start} len {len}"
            );
        }
    }
    assert_err_contains(
        d.read_tokens(10, &mut [0; 2]),
        &["tiny", "10..12", "11 tokens"],
    );
    // Opening by the .bin or .idx name is the same dataset.
    assert_eq!(
        read_all(&TokenDataset::open(&format!("{p}.idx")).unwrap()),
        read_all(&d)
    );
}

#[test]
fn hand_built_megatron_with_eod_is_verbatim() {
    let dir = TempDir::new("eod");
    let p = dir.path("eod");
    let tokens: [u16; 5] = [7, 8, 50256, 9, 50256];
    std::fs::write(format!("{p}.bin"), u16_bytes(&tokens)).unwrap();
    std::fs::write(
        format!("{p}.idx"),
        idx_bytes(8, &[3, 2], &[0, 6], &[0, 1, 2]),
    )
    .unwrap();
    let d = TokenDataset::open(&p).unwrap();
    assert!(!d.inserts_eot());
    assert_eq!(d.num_tokens(), 5);
    assert_eq!(d.max_token(), 50256);
    assert_eq!(read_all(&d), vec![7, 8, 50256, 9, 50256]);
}

#[test]
fn hand_built_int32_megatron() {
    let dir = TempDir::new("i32");
    let p = dir.path("wide");
    let bin: Vec<u8> = [5i32, 50000, 50256]
        .iter()
        .flat_map(|t| t.to_le_bytes())
        .collect();
    std::fs::write(format!("{p}.bin"), bin).unwrap();
    std::fs::write(format!("{p}.idx"), idx_bytes(4, &[3], &[0], &[0, 1])).unwrap();
    let d = TokenDataset::open(&p).unwrap();
    assert_eq!(d.dtype(), Dtype::I32);
    assert_eq!(read_all(&d), vec![5, 50000, 50256]);
}

#[test]
fn megatron_writer_matches_hand_bytes_and_round_trips() {
    let dir = TempDir::new("mw");
    let p = dir.path("w");
    let mut w = MegatronWriter::create(&p, Dtype::U16).unwrap();
    w.add_document(&[10, 11, 50256]).unwrap();
    w.add_document(&[40000, 50256]).unwrap();
    w.finish().unwrap();
    assert_eq!(
        std::fs::read(format!("{p}.idx")).unwrap(),
        idx_bytes(8, &[3, 2], &[0, 6], &[0, 1, 2])
    );
    assert_eq!(
        std::fs::read(format!("{p}.bin")).unwrap(),
        u16_bytes(&[10, 11, 50256, 40000, 50256])
    );
    assert!(!std::path::Path::new(&format!("{p}.bin.tmp")).exists());
    let d = TokenDataset::open(&p).unwrap();
    assert_eq!(read_all(&d), vec![10, 11, 50256, 40000, 50256]);

    // Every integer dtype round-trips the ids that fit it.
    for (dtype, ids) in [
        (Dtype::U8, vec![1u32, 255]),
        (Dtype::I8, vec![3, 127]),
        (Dtype::I16, vec![9, 32767]),
        (Dtype::I32, vec![50256, 7]),
        (Dtype::I64, vec![50256, 0]),
    ] {
        let p = dir.path(dtype.name());
        let mut w = MegatronWriter::create(&p, dtype).unwrap();
        w.add_document(&ids).unwrap();
        w.finish().unwrap();
        assert_eq!(
            std::fs::metadata(format!("{p}.bin")).unwrap().len(),
            2 * dtype.size() as u64
        );
        let d = TokenDataset::open(&p).unwrap();
        assert_eq!(d.dtype(), dtype);
        let mut want = ids.clone();
        want.push(EOT_TOKEN); // no document ends in EOT -> one inserted
        assert_eq!(read_all(&d), want, "{}", dtype.name());
    }
}

#[test]
fn megatron_writer_refuses_empty_documents_and_oversized_ids() {
    let dir = TempDir::new("mwe");
    let mut w = MegatronWriter::create(&dir.path("x"), Dtype::U8).unwrap();
    assert_err_contains(
        w.add_document(&[]),
        &["document 0", "at least 1 token", "empty"],
    );
    assert_err_contains(w.add_document(&[300]), &["uint8", "300"]);
}

#[test]
fn llmc_round_trip_and_hand_bytes() {
    let dir = TempDir::new("llmc");
    let path = dir.0.join("s_000000.bin");
    let mut w = LlmcWriter::create(&path).unwrap();
    w.write_tokens(&[50256, 1, 2, 3, 50256, 4]).unwrap();
    w.finish().unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        llmc_bytes(&[50256, 1, 2, 3, 50256, 4])
    );
    let d = TokenDataset::open(path.to_str().unwrap()).unwrap();
    assert_eq!(d.format(), DatasetFormat::Llmc);
    assert_eq!(d.num_documents(), 2);
    assert_eq!(read_all(&d), vec![50256, 1, 2, 3, 50256, 4]);
}

#[test]
fn llmc_glob_concatenates_shards_in_name_order() {
    let dir = TempDir::new("glob");
    std::fs::write(
        dir.0.join("fw_train_000002.bin"),
        llmc_bytes(&[50256, 7, 8]),
    )
    .unwrap();
    std::fs::write(
        dir.0.join("fw_train_000001.bin"),
        llmc_bytes(&[50256, 1, 2, 3]),
    )
    .unwrap();
    std::fs::write(dir.0.join("fw_train_000003.bin"), llmc_bytes(&[])).unwrap();
    std::fs::write(dir.0.join("fw_train_000004.bin"), llmc_bytes(&[9])).unwrap();
    std::fs::write(dir.0.join("fw_val_000000.bin"), llmc_bytes(&[50256, 5])).unwrap();
    let d = TokenDataset::open(&dir.path("fw_train_*.bin")).unwrap();
    assert_eq!(d.files().len(), 4);
    // Documents: one per EOT; shard 4's token continues the previous document (llm.c splits
    // documents across shards).
    assert_eq!(d.num_documents(), 2);
    let all = read_all(&d);
    assert_eq!(all, vec![50256, 1, 2, 3, 50256, 7, 8, 9]);
    let mut out = [0u32; 4];
    d.read_tokens(2, &mut out).unwrap(); // crosses shard 1 -> 2
    assert_eq!(out, [2, 3, 50256, 7]);
    let mut out3 = [0u32; 3];
    d.read_tokens(5, &mut out3).unwrap(); // crosses the empty shard
    assert_eq!(out3, [7, 8, 9]);
    let splits = dataio::open_splits(&dir.path("fw_train_*.bin")).unwrap();
    assert_eq!(read_all(splits.val.as_ref().unwrap()), vec![50256, 5]);
    assert!(splits.test.is_none());
    assert_err_contains(
        TokenDataset::open(&dir.path("nothing_*.bin")),
        &["nothing_*.bin", "no matching files"],
    );
}

#[test]
fn open_splits_finds_parts_or_falls_back() {
    let dir = TempDir::new("splits");
    for (name, toks) in [("c_train", vec![1u32, 2, 3]), ("c_val", vec![4u32])] {
        let mut w = MegatronWriter::create(&dir.path(name), Dtype::U16).unwrap();
        w.add_document(&toks).unwrap();
        w.finish().unwrap();
    }
    let s = dataio::open_splits(&dir.path("c")).unwrap();
    assert_eq!(read_all(&s.train), vec![1, 2, 3, 50256]);
    assert_eq!(read_all(s.val.as_ref().unwrap()), vec![4, 50256]);
    assert!(s.test.is_none());
    let single = dataio::open_splits(&dir.path("c_val")).unwrap();
    assert_eq!(read_all(&single.train), vec![4, 50256]);
    assert!(single.val.is_none());
    assert_err_contains(
        dataio::open_splits(&dir.path("missing")),
        &["missing", "no such files"],
    );
}

// ---- broken files: each error names the file, the place, expected and found ----

fn tiny_megatron(dir: &TempDir, name: &str) -> String {
    let p = dir.path(name);
    std::fs::write(format!("{p}.bin"), u16_bytes(&[1, 2, 3, 4, 5])).unwrap();
    std::fs::write(
        format!("{p}.idx"),
        idx_bytes(8, &[3, 2], &[0, 6], &[0, 1, 2]),
    )
    .unwrap();
    p
}

#[test]
fn megatron_errors() {
    let dir = TempDir::new("merr");
    let p = tiny_megatron(&dir, "ok");
    TokenDataset::open(&p).unwrap();

    // Wrong magic.
    let mut idx = std::fs::read(format!("{p}.idx")).unwrap();
    idx[0] = b'X';
    std::fs::write(format!("{p}.idx"), &idx).unwrap();
    assert_err_contains(
        TokenDataset::open(&p),
        &[
            "ok.idx",
            "byte offset 0 (magic)",
            "expected MMIDIDX",
            "found \"XMIDIDX",
        ],
    );

    // Truncated index (last document index cut off): 34 + 2*12 + 3*8 = 82 bytes expected.
    let p = tiny_megatron(&dir, "trunc_idx");
    let idx = std::fs::read(format!("{p}.idx")).unwrap();
    std::fs::write(format!("{p}.idx"), &idx[..idx.len() - 8]).unwrap();
    assert_err_contains(
        TokenDataset::open(&p),
        &[
            "trunc_idx.idx",
            "file length",
            "expected 82 bytes",
            "found 74 bytes",
        ],
    );

    // Truncated .bin: sizes say 10 bytes.
    let p = tiny_megatron(&dir, "trunc_bin");
    std::fs::write(format!("{p}.bin"), u16_bytes(&[1, 2, 3, 4])).unwrap();
    assert_err_contains(
        TokenDataset::open(&p),
        &[
            "trunc_bin.bin",
            "file length",
            "expected 10 bytes",
            "found 8 bytes",
        ],
    );

    // Odd .bin length for uint16.
    let p = tiny_megatron(&dir, "odd_bin");
    std::fs::write(format!("{p}.bin"), [0u8; 9]).unwrap();
    assert_err_contains(
        TokenDataset::open(&p),
        &["odd_bin.bin", "multiple of 2", "found 9 bytes"],
    );

    // Version 2.
    let p = tiny_megatron(&dir, "ver");
    let mut idx = std::fs::read(format!("{p}.idx")).unwrap();
    idx[9] = 2;
    std::fs::write(format!("{p}.idx"), &idx).unwrap();
    assert_err_contains(
        TokenDataset::open(&p),
        &[
            "ver.idx",
            "byte offset 9 (version)",
            "expected 1",
            "found 2",
        ],
    );

    // Float dtype code 7.
    let p = tiny_megatron(&dir, "float");
    let mut idx = std::fs::read(format!("{p}.idx")).unwrap();
    idx[17] = 7;
    std::fs::write(format!("{p}.idx"), &idx).unwrap();
    assert_err_contains(
        TokenDataset::open(&p),
        &["float.idx", "dtype code", "found 7"],
    );

    // Corrupted pointer: sequence 1 should start at byte 6. pointers[1] sits at 34 + 2*4 + 8.
    let p = tiny_megatron(&dir, "ptr");
    std::fs::write(
        format!("{p}.idx"),
        idx_bytes(8, &[3, 2], &[0, 4], &[0, 1, 2]),
    )
    .unwrap();
    assert_err_contains(
        TokenDataset::open(&p),
        &[
            "ptr.idx",
            "byte offset 50 (pointers[1])",
            "expected 6",
            "found 4",
        ],
    );

    // Pointer far out of range.
    let p = tiny_megatron(&dir, "ptr2");
    std::fs::write(
        format!("{p}.idx"),
        idx_bytes(8, &[3, 2], &[0, 1 << 40], &[0, 1, 2]),
    )
    .unwrap();
    assert_err_contains(
        TokenDataset::open(&p),
        &[
            "ptr2.idx",
            "pointers[1]",
            "expected 6",
            &format!("found {}", 1i64 << 40),
        ],
    );

    // Negative size.
    let p = tiny_megatron(&dir, "neg");
    std::fs::write(
        format!("{p}.idx"),
        idx_bytes(8, &[3, -2], &[0, 6], &[0, 1, 2]),
    )
    .unwrap();
    assert_err_contains(
        TokenDataset::open(&p),
        &["neg.idx", "byte offset 38 (sizes[1])", "found -2"],
    );

    // Document indices not ending at the sequence count.
    let p = tiny_megatron(&dir, "docs");
    std::fs::write(
        format!("{p}.idx"),
        idx_bytes(8, &[3, 2], &[0, 6], &[0, 1, 1]),
    )
    .unwrap();
    assert_err_contains(
        TokenDataset::open(&p),
        &[
            "docs.idx",
            "document_indices[2]",
            "expected the sequence count 2",
            "found 1",
        ],
    );

    // Out-of-range token: 60000 at token 3 (byte 6 of the .bin).
    let p = tiny_megatron(&dir, "range");
    std::fs::write(format!("{p}.bin"), u16_bytes(&[1, 2, 3, 60000, 5])).unwrap();
    assert_err_contains(
        TokenDataset::open(&p),
        &[
            "range.bin",
            "byte offset 6 (token 3)",
            "expected a token id in 0..50257",
            "found 60000",
        ],
    );

    // Negative token in an int32 file.
    let p = dir.path("negtok");
    std::fs::write(
        format!("{p}.bin"),
        [1i32, -5]
            .iter()
            .flat_map(|t| t.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    std::fs::write(format!("{p}.idx"), idx_bytes(4, &[2], &[0], &[0, 1])).unwrap();
    assert_err_contains(
        TokenDataset::open(&p),
        &["negtok.bin", "byte offset 4 (token 1)", "found -5"],
    );

    // Empty document: document 1 has no sequences.
    let p = dir.path("emptydoc");
    std::fs::write(format!("{p}.bin"), u16_bytes(&[1, 2, 3])).unwrap();
    std::fs::write(format!("{p}.idx"), idx_bytes(8, &[3], &[0], &[0, 1, 1])).unwrap();
    assert_err_contains(
        TokenDataset::open(&p),
        &[
            "emptydoc.idx",
            "document 1",
            "at least 1 token",
            "found 0 tokens",
        ],
    );
    // Empty document made of one zero-size sequence.
    let p = dir.path("emptyseq");
    std::fs::write(format!("{p}.bin"), u16_bytes(&[1, 2, 3])).unwrap();
    std::fs::write(
        format!("{p}.idx"),
        idx_bytes(8, &[0, 3], &[0, 0], &[0, 1, 2]),
    )
    .unwrap();
    assert_err_contains(
        TokenDataset::open(&p),
        &["emptyseq.idx", "document 0", "found 0 tokens"],
    );

    // Megatron .bin without its .idx and without llm.c magic.
    let p = dir.path("noidx");
    std::fs::write(format!("{p}.bin"), u16_bytes(&[1, 2])).unwrap();
    assert_err_contains(
        TokenDataset::open(&p),
        &["noidx.bin", "llm.c shard", "no ", "noidx.idx"],
    );
}

#[test]
fn llmc_errors() {
    let dir = TempDir::new("lerr");
    let path = dir.0.join("s.bin");
    let spec = path.to_str().unwrap();

    let mut b = llmc_bytes(&[1, 2, 3]);
    b[0] ^= 1;
    std::fs::write(&path, &b).unwrap();
    // Without the magic the file is taken for a Megatron .bin missing its .idx.
    assert_err_contains(
        TokenDataset::open(spec),
        &["s.bin", "llm.c shard (magic 20240520)"],
    );
    // Through a glob it must be a shard, so the magic itself is reported.
    assert_err_contains(
        TokenDataset::open(&dir.path("s*.bin")),
        &[
            "s.bin",
            "byte offset 0 (magic)",
            "expected 20240520",
            &format!("found {}", 20240520 ^ 1),
        ],
    );

    let b = llmc_bytes(&[1, 2, 3]);
    std::fs::write(&path, &b[..b.len() - 2]).unwrap();
    assert_err_contains(
        TokenDataset::open(spec),
        &[
            "s.bin",
            "file length",
            "expected 1030 bytes",
            "found 1028 bytes",
        ],
    );

    std::fs::write(&path, &b[..100]).unwrap();
    assert_err_contains(
        TokenDataset::open(&dir.path("s*.bin")),
        &["s.bin", "header", "at least 1024 bytes", "found 100 bytes"],
    );

    let mut b = llmc_bytes(&[1, 2, 3]);
    b[4] = 2;
    std::fs::write(&path, &b).unwrap();
    assert_err_contains(
        TokenDataset::open(spec),
        &["s.bin", "byte offset 4 (version)", "found 2"],
    );

    std::fs::write(&path, llmc_bytes(&[1, 50257, 3])).unwrap();
    assert_err_contains(
        TokenDataset::open(spec),
        &[
            "s.bin",
            "byte offset 1026 (token 1)",
            "0..50257",
            "found 50257",
        ],
    );
}

#[test]
fn large_scan_finds_first_bad_token_across_threads() {
    // Large enough to be split across threads; two bad tokens, the lower one must be named.
    let dir = TempDir::new("scan");
    let n = 5_000_000usize;
    let mut toks: Vec<u16> = (0..n).map(|i| (i % 50257) as u16).collect();
    toks[3_000_001] = 65535;
    toks[4_900_000] = 50300;
    std::fs::write(dir.0.join("big.bin"), llmc_bytes(&toks)).unwrap();
    assert_err_contains(
        TokenDataset::open(&dir.path("big.bin")),
        &["byte offset 6001026 (token 3000001)", "found 65535"],
    );
    toks[3_000_001] = 1;
    toks[4_900_000] = 2;
    std::fs::write(dir.0.join("big.bin"), llmc_bytes(&toks)).unwrap();
    let d = TokenDataset::open(&dir.path("big.bin")).unwrap();
    assert_eq!(d.max_token(), 50256);
    // EOT (50256) appears at i % 50257 == 50256: floor((n - 50257) / 50257) + 1 times = 99.
    assert_eq!(d.num_documents(), 99 + 1);
}

// ---- ratio splits at read time (views over document runs) ----

#[test]
fn split_megatron_into_document_views() {
    let dir = TempDir::new("view");
    let p = dir.path("v");
    // Same bytes as hand_built_megatron_without_eod_inserts_separators.
    std::fs::write(
        format!("{p}.bin"),
        u16_bytes(&[10, 11, 12, 20, 21, 22, 30, 31]),
    )
    .unwrap();
    std::fs::write(
        format!("{p}.idx"),
        idx_bytes(8, &[3, 1, 2, 2], &[0, 6, 8, 12], &[0, 1, 3, 4]),
    )
    .unwrap();
    let d = TokenDataset::open(&p).unwrap();
    let e = EOT_TOKEN;
    let parts = d.split(&[1, 1, 1]).unwrap();
    assert_eq!(read_all(&parts[0]), vec![10, 11, 12, e]);
    assert_eq!(read_all(&parts[1]), vec![20, 21, 22, e]);
    assert_eq!(read_all(&parts[2]), vec![30, 31, e]);
    assert_eq!(
        parts.iter().map(|v| v.num_sequences()).collect::<Vec<_>>(),
        vec![1, 2, 1]
    );
    // A view of a view.
    let tail = d.documents(1..3).unwrap();
    assert_eq!(read_all(&tail.documents(1..2).unwrap()), vec![30, 31, e]);
    assert_err_contains(
        tail.read_tokens(6, &mut [0; 2]),
        &["documents 1..3", "within the stream of 7 tokens"],
    );
    assert_err_contains(
        d.documents(2..4),
        &["document range", "within 0..3", "found 2..4"],
    );
    // 3 documents at 949,50,1 -> 3, 0, 0: val would be empty.
    assert_err_contains(
        d.split(&[949, 50, 1]),
        &["v", "split 949,50,1", "in part val", "found 0 documents"],
    );
    let s = dataio::open_splits_ratio(&p, &[2, 1]).unwrap();
    assert_eq!(read_all(&s.train), vec![10, 11, 12, e, 20, 21, 22, e]);
    assert_eq!(read_all(s.val.as_ref().unwrap()), vec![30, 31, e]);
    assert!(s.test.is_none());
}

#[test]
fn split_llmc_at_eot_boundaries() {
    let dir = TempDir::new("lview");
    let e = 50256u16;
    std::fs::write(dir.0.join("a_1.bin"), llmc_bytes(&[e, 1, 2, 3, e])).unwrap();
    std::fs::write(dir.0.join("a_2.bin"), llmc_bytes(&[7, 8, e, 9])).unwrap();
    let d = TokenDataset::open(&dir.path("a_*.bin")).unwrap();
    assert_eq!(d.num_documents(), 3);
    let parts = d.split(&[1, 1, 1]).unwrap();
    let e = EOT_TOKEN;
    assert_eq!(read_all(&parts[0]), vec![e, 1, 2, 3]);
    assert_eq!(read_all(&parts[1]), vec![e, 7, 8]);
    assert_eq!(read_all(&parts[2]), vec![e, 9]);
    // A stream that opens mid-document: document 0 starts at 0.
    std::fs::write(dir.0.join("b.bin"), llmc_bytes(&[5, 6, 50256, 7])).unwrap();
    let b = TokenDataset::open(&dir.path("b.bin")).unwrap();
    assert_eq!(b.num_documents(), 2);
    let parts = b.split(&[1, 1]).unwrap();
    assert_eq!(read_all(&parts[0]), vec![5, 6]);
    assert_eq!(read_all(&parts[1]), vec![e, 7]);
}

// ---- paths that are not regular files ----

/// The error's text, for assertions that something is absent from it.
fn err_text<T>(r: Result<T, dataio::DataError>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_directory_where_a_dataset_file_belongs_is_named() {
    let dir = TempDir::new("dirs");
    // A Megatron index whose .bin is a directory: opening it used to fail in mmap with "No such
    // device", naming neither the directory nor what was expected.
    let p = tiny_megatron(&dir, "m");
    std::fs::remove_file(format!("{p}.bin")).unwrap();
    std::fs::create_dir(format!("{p}.bin")).unwrap();
    let msg = err_text(TokenDataset::open(&p));
    for want in ["m.bin", "expected a regular file", "found a directory"] {
        assert!(msg.contains(want), "{msg:?} lacks {want:?}");
    }
    assert!(!msg.contains("No such device"), "{msg}");

    // The spec itself a directory (named like a shard, or a plain directory of shards).
    let shard_dir = dir.path("shards.bin");
    std::fs::create_dir(&shard_dir).unwrap();
    std::fs::write(format!("{shard_dir}/x_000.bin"), llmc_bytes(&[1, 2])).unwrap();
    let msg = err_text(TokenDataset::open(&shard_dir));
    for want in [
        "shards.bin is a directory",
        "expected",
        "a glob such as",
        "shards.bin/*.bin",
    ] {
        assert!(msg.contains(want), "{msg:?} lacks {want:?}");
    }
    assert!(!msg.contains("no such files"), "{msg}");
    let plain = dir.path("plain");
    std::fs::create_dir(&plain).unwrap();
    let msg = err_text(TokenDataset::open(&plain));
    assert!(msg.contains("plain is a directory"), "{msg}");
    // ... and the glob the message suggests opens it.
    assert_eq!(
        read_all(&TokenDataset::open(&format!("{shard_dir}/*.bin")).unwrap()),
        vec![1, 2]
    );

    // An index that is a directory beside a .bin without the llm.c magic.
    let q = dir.path("q");
    std::fs::create_dir(format!("{q}.idx")).unwrap();
    std::fs::write(format!("{q}.bin"), u16_bytes(&[1, 2, 3])).unwrap();
    assert_err_contains(TokenDataset::open(&q), &["q.idx is a directory"]);

    // A character device is not a dataset either.
    #[cfg(unix)]
    assert_err_contains(
        TokenDataset::open("/dev/null"),
        &["/dev/null is a special file (a device"],
    );
}

#[test]
fn stored_tokens_leave_out_the_inserted_eots() {
    let dir = TempDir::new("stored");
    // Without EOTs: 8 tokens stored in 3 documents, 11 in the stream.
    let p = dir.path("no_eod");
    std::fs::write(
        format!("{p}.bin"),
        u16_bytes(&[10, 11, 12, 20, 21, 22, 30, 31]),
    )
    .unwrap();
    std::fs::write(
        format!("{p}.idx"),
        idx_bytes(8, &[3, 1, 2, 2], &[0, 6, 8, 12], &[0, 1, 3, 4]),
    )
    .unwrap();
    let d = TokenDataset::open(&p).unwrap();
    assert_eq!((d.stored_tokens(), d.num_tokens()), (8, 11));
    // Views: documents 1..3 hold 3 + 2 stored tokens, 7 in the stream.
    let tail = d.documents(1..3).unwrap();
    assert_eq!((tail.stored_tokens(), tail.num_tokens()), (5, 7));
    // With EOTs (--append-eod) and llm.c shards the two agree.
    let q = dir.path("eod");
    std::fs::write(format!("{q}.bin"), u16_bytes(&[7, 8, 50256, 9, 50256])).unwrap();
    std::fs::write(
        format!("{q}.idx"),
        idx_bytes(8, &[3, 2], &[0, 6], &[0, 1, 2]),
    )
    .unwrap();
    let d = TokenDataset::open(&q).unwrap();
    assert_eq!((d.stored_tokens(), d.num_tokens()), (5, 5));
    let s = dir.path("s.bin");
    std::fs::write(&s, llmc_bytes(&[50256, 1, 2, 50256, 3])).unwrap();
    let d = TokenDataset::open(&s).unwrap();
    assert_eq!((d.stored_tokens(), d.num_tokens()), (5, 5));
}
