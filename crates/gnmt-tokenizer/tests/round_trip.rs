use std::path::Path;
use std::sync::OnceLock;

use gnmt_tokenizer::{Vocab, UNK_ID};
use unicode_normalization::UnicodeNormalization;

/// The promise: decoding the encoding gives the input back after NFKC and whitespace folding.
/// Computed independently of the tokenizer's own normalizer.
fn expected(x: &str) -> String {
    let nfkc: String = x.nfkc().collect();
    nfkc.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The vocabulary of the shipped model, trained on Multi30k en+de with the default options:
/// real-world pieces without any corpus at hand. (`gnmt-cli`'s data checks train one and
/// round-trip every Multi30k line.)
fn shipped_vocab() -> &'static Vocab {
    static VOCAB: OnceLock<Vocab> = OnceLock::new();
    VOCAB.get_or_init(|| {
        Vocab::load(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../models/multi30k-en-de/tokenizer.json"
        )))
        .expect("the shipped tokenizer.json")
    })
}

fn check_round_trip(vocab: &Vocab, x: &str) {
    let ids = vocab
        .encode(x)
        .unwrap_or_else(|e| panic!("encode {x:?}: {e}"));
    assert!(!ids.contains(&UNK_ID), "{x:?} produced <unk>");
    let back = vocab.decode(&ids).unwrap();
    assert_eq!(back, expected(x), "round trip of {x:?}");
    assert_eq!(
        vocab.normalize(x).unwrap(),
        expected(x),
        "normalizer of {x:?}"
    );
}

#[test]
fn nasty_strings_round_trip() {
    let vocab = shipped_vocab();
    let long_word = "x".repeat(10_000);
    let long_text = "Ein Hund läuft über die Wiese. ".repeat(330);
    let long_cjk = "猫が走る。".repeat(2_000);
    let nasty: Vec<&str> = vec![
        "",
        " ",
        "   \t  ",
        "\u{a0}",                     // NBSP alone
        "a\u{a0}b\u{2009}c\u{3000}d", // NBSP, thin space, ideographic space
        "tab\tseparated\twords",
        "  leading and trailing  ",
        "😀 🦀 👩‍👩‍👧 🇩🇪",                   // emoji, ZWJ sequence, flag
        "猫が走っている。",              // Japanese
        "一只狗在草地上跑。",            // Chinese
        "개가 달린다",                   // Korean
        "e\u{301}te\u{301} cafe\u{301}", // combining acute accents
        "Å Å ﬁ ① ｆｕｌｌｗｉｄｔｈ",    // NFKC changes these
        "مرحبا بالعالم",                 // Arabic, right to left
        "Ελληνικά και русский",
        "\u{200b}zero\u{200b}width",
        "a </s> b <s> <pad> <unk> c", // special-token text is plain text
        "<0x41> is not a byte piece here",
        "control \u{1} \u{7f} chars",
        "math ∑∫√ and arrows →⇒",
        "quotes „so“ «so» “so”",
        &long_word,
        &long_text,
        &long_cjk,
    ];
    for x in nasty {
        check_round_trip(vocab, x);
    }
}

#[test]
fn unseen_text_costs_bytes_not_information() {
    let vocab = shipped_vocab();
    let ids = vocab.encode("ᚠᛇᚻ runes").unwrap();
    assert!(ids.iter().any(|&i| vocab.is_byte_piece(i)));
    assert_eq!(vocab.decode(&ids).unwrap(), "ᚠᛇᚻ runes");
}

/// U+2581 is the word-boundary marker itself; like SentencePiece, we cannot tell it from a
/// space. Pinned so the limit stays documented and visible.
#[test]
fn the_boundary_marker_in_input_decodes_as_a_space() {
    let vocab = shipped_vocab();
    let ids = vocab.encode("a\u{2581}b").unwrap();
    assert_eq!(vocab.decode(&ids).unwrap(), "a b");
}

#[test]
fn saved_file_reloads_identically() {
    let vocab = shipped_vocab();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tokenizer.json");
    vocab.save(&p).unwrap();
    let back = Vocab::load(&p).unwrap();
    assert_eq!(back.hash(), vocab.hash());
    let s = "Zwei Männer spielen Fußball auf einer Wiese.";
    assert_eq!(back.encode(s).unwrap(), vocab.encode(s).unwrap());
}

#[test]
fn broken_tokenizer_file_is_refused_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tokenizer.json");
    std::fs::write(&p, "{ not json").unwrap();
    let err = Vocab::load(&p).unwrap_err().to_string();
    assert!(err.starts_with(&p.display().to_string()), "{err}");
    let err = Vocab::load(&dir.path().join("missing.json"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.json"), "{err}");
}
