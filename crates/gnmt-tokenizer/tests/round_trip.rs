use std::path::Path;
use std::sync::OnceLock;

use gnmt_tokenizer::{data::multi30k_dir, Lines, Vocab, VocabOptions, UNK_ID};
use unicode_normalization::UnicodeNormalization;

/// The promise: decoding the encoding gives the input back after NFKC and whitespace folding.
/// Computed independently of the tokenizer's own normalizer.
fn expected(x: &str) -> String {
    let nfkc: String = x.nfkc().collect();
    nfkc.split_whitespace().collect::<Vec<_>>().join(" ")
}

const NEEDS_MULTI30K: &str =
    "Multi30k is needed: set GNMT_DATA_DIR, or put it in ../shared/data/multi30k";

/// One vocabulary trained on Multi30k train en+de (the default setup), for the data check.
fn multi30k_vocab() -> &'static Vocab {
    static VOCAB: OnceLock<Vocab> = OnceLock::new();
    VOCAB.get_or_init(|| {
        let dir = multi30k_dir().expect(NEEDS_MULTI30K);
        Vocab::train_from_files(
            &[dir.join("train.en"), dir.join("train.de")],
            &VocabOptions::default(),
        )
        .expect("train vocabulary")
    })
}

/// The vocabulary of the shipped model, trained the same way: what the tests below need
/// without any corpus at hand.
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
#[ignore = "needs Multi30k (GNMT_DATA_DIR or ../shared/data/multi30k); .ci/data-checks.sh runs it"]
fn every_multi30k_line_round_trips() {
    let vocab = multi30k_vocab();
    assert_eq!(vocab.size(), 8000);
    let dir = multi30k_dir().unwrap();
    let mut checked = 0;
    for split in ["train", "val", "test_2016_flickr"] {
        for lang in ["en", "de", "fr"] {
            let lines = Lines::read(&dir.join(format!("{split}.{lang}"))).unwrap();
            for line in lines.iter() {
                check_round_trip(vocab, line);
            }
            checked += lines.len();
        }
    }
    assert_eq!(checked, 3 * (29_000 + 1_014 + 1_000));
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
