//! GPT-2 tokenization against known ids (from the GPT-2 vocabulary) and round trips.

mod common;
use common::*;
use dataio::Tokenizer;

#[test]
fn known_gpt2_ids() {
    let t = Tokenizer::gpt2().unwrap();
    // Widely published GPT-2 encodings.
    assert_eq!(t.encode("Hello, world!"), vec![15496, 11, 995, 0]);
    assert_eq!(t.encode("Hello world"), vec![15496, 995]);
    assert_eq!(t.encode(" the"), vec![262]);
    assert_eq!(t.encode("\n\n"), vec![628]);
    assert_eq!(t.encode("\n"), vec![198]);
    // Special-token text is ordinary text: never the EOT id.
    assert_eq!(
        t.encode("<|endoftext|>"),
        vec![27, 91, 437, 1659, 5239, 91, 29]
    );
    assert_eq!(t.decode(&[50256]), "<|endoftext|>");
}

#[test]
fn round_trips() {
    let t = Tokenizer::gpt2().unwrap();
    for s in [
        "",
        "To be, or not to be: that is the question.",
        "naïve café — 東京 🙂\n\ttabs  and   spaces",
        "I'll've we're they'd 12345 3.14",
    ] {
        assert_eq!(t.decode(&t.encode(s)), s);
    }
    // A multi-byte character split across tokens decodes lossily, not with a panic.
    let ids = t.encode("🙂");
    assert!(ids.len() > 1);
    assert!(t.decode(&ids[..1]).contains('\u{FFFD}'));
    assert_eq!(t.decode(&[60000]), "<|unk:60000|>");
}

/// GPT-2's byte -> unicode table, written out independently from the published definition.
fn gpt2_byte_char(b: u8) -> char {
    let printable =
        |x: u8| (33..=126).contains(&x) || (161..=172).contains(&x) || (174..=255).contains(&x);
    if printable(b) {
        return b as char;
    }
    let rank = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + rank).unwrap()
}

#[test]
fn from_files_with_a_hand_made_vocab() {
    let dir = TempDir::new("vocab");
    // ids 0..255: bytes in byte order; then merges "h e" -> 256, "l l" -> 257, "he ll" -> 258,
    // "Ġ w" -> 259 (Ġ is GPT-2's char for the space byte), then <|endoftext|> 260.
    let mut entries: Vec<(String, u32)> = (0..=255u8)
        .map(|b| (gpt2_byte_char(b).to_string(), b as u32))
        .collect();
    for (i, piece) in ["he", "ll", "hell", "Ġw"].iter().enumerate() {
        entries.push((piece.to_string(), 256 + i as u32));
    }
    entries.push(("<|endoftext|>".into(), 260));
    let json = serde_json::Value::Object(
        entries
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::from(v)))
            .collect(),
    );
    std::fs::write(dir.0.join("vocab.json"), json.to_string()).unwrap();
    std::fs::write(
        dir.0.join("merges.txt"),
        "#version: 0.2\nh e\nl l\nhe ll\nĠ w\n",
    )
    .unwrap();
    let t = Tokenizer::from_files(&dir.0.join("vocab.json"), &dir.0.join("merges.txt")).unwrap();
    // "hello world": pieces "hello", " world". hello -> he,l,l,o -> he,ll,o -> hell,o = [258, 111].
    // " world" -> Ġw,o,r,l,d = [259, 111, 114, 108, 100].
    assert_eq!(
        t.encode("hello world"),
        vec![258, 111, 259, 111, 114, 108, 100]
    );
    assert_eq!(t.decode(&[258, 111, 259]), "hello w");

    // Merges whose ids do not follow their order are refused.
    std::fs::write(dir.0.join("bad.txt"), "#version: 0.2\nl l\nh e\n").unwrap();
    assert_err_contains(
        Tokenizer::from_files(&dir.0.join("vocab.json"), &dir.0.join("bad.txt")),
        &["bad.txt", "line 3", "found 256"],
    );
}
