//! The checks that need Multi30k: the shipped model's BLEU, the quick residual study on real
//! data, the tokenizer round trip over every line, and sacreBLEU's scores on a Multi30k-sized
//! corpus. CI's checks, kept out of the crates' test folders: the README's test command must
//! pass on a bare clone, and this target (a test of gnmt-cli, for its binaries and helpers) is
//! built only with the `data-checks` feature, which `.ci/data-checks.sh` turns on. Without the
//! data every check fails, saying where to put it.

#[allow(dead_code)] // shared with gnmt-cli's tests; not every helper is used here
#[path = "../crates/gnmt-cli/tests/support.rs"]
mod support;

use std::path::{Path, PathBuf};

use gnmt_metrics::{corpus_bleu, corpus_chrf, BleuOptions, ChrfOptions};
use gnmt_tokenizer::{Lines, Vocab, VocabOptions, UNK_ID};
use support::*;
use unicode_normalization::UnicodeNormalization;

fn multi30k() -> PathBuf {
    gnmt_tokenizer::data::multi30k_dir()
        .expect("Multi30k is needed: set GNMT_DATA_DIR, or put it in ../shared/data/multi30k")
}

/// A guard against a broken checkpoint or decoder: the shipped model, with its own
/// generation.json, scores at least 37 BLEU on the first 300 lines of test_2016_flickr (39.05
/// when it shipped; the model card reports the full test sets).
#[test]
fn the_shipped_model_scores_on_test_2016() {
    let root = repo_root();
    let model = root.join("models/multi30k-en-de");
    let data = multi30k();
    let input = first_lines(&data.join("val.en"), 20);
    let lines = translate_lines(Path::new(env!("CARGO_BIN_EXE_translate")), &root, &input);
    assert_german(&input, &lines);

    // BLEU on the first 300 lines of test_2016_flickr with the shipped generation.json.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("src.en"),
        first_lines(&data.join("test_2016_flickr.en"), 300),
    )
    .unwrap();
    std::fs::write(
        d.join("ref.de"),
        first_lines(&data.join("test_2016_flickr.de"), 300),
    )
    .unwrap();
    let eval = |kernels: &str| {
        let report = ok(gnmt(
            &[
                "--kernels",
                kernels,
                "eval",
                "-m",
                model.to_str().unwrap(),
                "--src",
                "src.en",
                "--ref",
                "ref.de",
            ],
            d,
        ));
        let bleu = report_bleu(&report);
        (bleu, report)
    };
    let (bleu, report) = eval("fused");
    assert!(
        bleu >= 37.0,
        "BLEU {bleu} on the first 300 lines:\n{report}"
    );
    // The composite references of the fused operations translate as well.
    let (reference, report) = eval("reference");
    assert!(
        (reference - bleu).abs() <= 0.1,
        "reference kernels: BLEU {reference} against {bleu} fused:\n{report}"
    );
}

/// The same guard for the shipped multilingual model, one direction at a time: at least 33
/// BLEU into German and 50 into French on the first 300 lines of test_2016_flickr (its model
/// card reports the full test set).
#[test]
fn the_multilingual_model_scores_on_test_2016() {
    let model = repo_root().join("models/multi30k-multilingual");
    let data = multi30k();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let head = |name: &str| first_lines(&data.join(name), 300);
    std::fs::write(d.join("src.en"), head("test_2016_flickr.en")).unwrap();
    for (language, floor) in [("de", 33.0), ("fr", 50.0)] {
        let reference = format!("ref.{language}");
        std::fs::write(
            d.join(&reference),
            head(&format!("test_2016_flickr.{language}")),
        )
        .unwrap();
        let report = ok(gnmt(
            &[
                "eval",
                "-m",
                model.to_str().unwrap(),
                "--target-lang",
                language,
                "--src",
                "src.en",
                "--ref",
                &reference,
            ],
            d,
        ));
        let bleu = report_bleu(&report);
        assert!(bleu >= floor, "en-{language}: BLEU {bleu}:\n{report}");
    }
}

/// The same on Multi30k, as the study is meant to be run.
#[test]
fn the_quick_residual_study_runs_on_multi30k() {
    let data = multi30k();
    let file = |name: &str| data.join(name).display().to_string();
    let dir = tempfile::tempdir().unwrap();
    quick_study(
        dir.path(),
        [
            file("train.en"),
            file("train.de"),
            file("val.en"),
            file("val.de"),
        ],
    );
}

fn expected(x: &str) -> String {
    let nfkc: String = x.nfkc().collect();
    nfkc.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn check_round_trip(vocab: &Vocab, x: &str) {
    let ids = vocab
        .encode(x)
        .unwrap_or_else(|e| panic!("encode {x:?}: {e}"));
    assert!(!ids.contains(&UNK_ID), "{x:?} produced <unk>");
    assert_eq!(
        vocab.decode(&ids).unwrap(),
        expected(x),
        "round trip of {x:?}"
    );
    assert_eq!(
        vocab.normalize(x).unwrap(),
        expected(x),
        "normalizer of {x:?}"
    );
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

/// A vocabulary trained on Multi30k train en+de (the default setup) gives back every line of
/// every split and language: decoding the encoding is the input after NFKC and whitespace
/// folding, computed independently of the tokenizer's own normalizer.
#[test]
fn every_multi30k_line_round_trips() {
    let dir = multi30k();
    let vocab = Vocab::train_from_files(
        &[dir.join("train.en"), dir.join("train.de")],
        &VocabOptions::default(),
    )
    .unwrap();
    assert_eq!(vocab.size(), 8000);
    let mut checked = 0;
    for split in ["train", "val", "test_2016_flickr"] {
        for lang in ["en", "de", "fr"] {
            let lines = Lines::read(&dir.join(format!("{split}.{lang}"))).unwrap();
            for line in lines.iter() {
                check_round_trip(&vocab, line);
            }
            checked += lines.len();
        }
    }
    assert_eq!(checked, 3 * (29_000 + 1_014 + 1_000));
}

/// test_2016_flickr.de against a damaged copy of itself (the word at position i mod len
/// dropped from line i, every third line reversed), scored by sacreBLEU 2.6.0.
#[test]
fn matches_sacrebleu_on_a_multi30k_sized_corpus() {
    let dir = multi30k();
    let text = std::fs::read_to_string(dir.join("test_2016_flickr.de")).unwrap();
    let refs: Vec<&str> = text.lines().collect();
    let hyps: Vec<String> = refs
        .iter()
        .enumerate()
        .map(|(i, line)| {
            let mut w: Vec<&str> = line.split_whitespace().collect();
            if !w.is_empty() {
                w.remove(i % w.len());
            }
            if i % 3 == 0 {
                w.reverse();
            }
            w.join(" ")
        })
        .collect();
    let refs: Vec<String> = refs.iter().map(|s| s.to_string()).collect();
    let b = corpus_bleu(&hyps, &[&refs[..]], &BleuOptions::default()).unwrap();
    assert!(close(b.score, 58.98817295383794), "{}", b.score);
    let f = corpus_chrf(&hyps, &[&refs[..]], &ChrfOptions::default()).unwrap();
    assert!(close(f.score, 78.08646758522096), "{}", f.score);
    let pp = corpus_chrf(
        &hyps,
        &[&refs[..]],
        &ChrfOptions {
            word_order: 2,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(close(pp.score, 77.58544379605183), "{}", pp.score);
    assert_eq!(
        b.signature(),
        format!(
            "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:gnmt-metrics-{}",
            env!("CARGO_PKG_VERSION")
        )
    );
}
