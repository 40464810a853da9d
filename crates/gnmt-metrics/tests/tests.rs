//! Values pinned from sacreBLEU 2.6.0 (`BLEU()`, `BLEU(lowercase=True)`, `CHRF()`,
//! `CHRF(word_order=2)` on `corpus_score(hyps, [refs])`), produced by this snippet:
//!
//! ```python
//! from sacrebleu.metrics import BLEU, CHRF
//! b = BLEU().corpus_score(hyp, [ref]); print(b.score, b.counts, b.totals, b.sys_len, b.ref_len)
//! print(BLEU(lowercase=True).corpus_score(hyp, [ref]).score)
//! print(CHRF().corpus_score(hyp, [ref]).score, CHRF(word_order=2).corpus_score(hyp, [ref]).score)
//! ```

use gnmt_metrics::{corpus_bleu, corpus_chrf, BleuOptions, ChrfOptions, Error};

struct Case {
    hyp: &'static [&'static str],
    reference: &'static [&'static str],
    bleu: f64,
    counts: [u64; 4],
    totals: [u64; 4],
    lens: (u64, u64),
    bleu_lc: f64,
    chrf: f64,
    chrf_pp: f64,
}

const CASES: &[Case] = &[
    Case {
        hyp: &[
            "The dog bit the man.",
            "It wasn't surprising.",
            "The man had just bitten him.",
        ],
        reference: &[
            "The dog bit the man.",
            "It was not unexpected.",
            "The man bit him first.",
        ],
        bleu: 45.06750632106114,
        counts: [12, 6, 4, 3],
        totals: [17, 14, 11, 8],
        lens: (17, 17),
        bleu_lc: 45.06750632106114,
        chrf: 50.043063606582294,
        chrf_pp: 51.7309698503746,
    },
    Case {
        hyp: &["", ""],
        reference: &["a b c", "d e"],
        bleu: 0.0,
        counts: [0; 4],
        totals: [0; 4],
        lens: (0, 5),
        bleu_lc: 0.0,
        chrf: 0.0,
        chrf_pp: 0.0,
    },
    Case {
        hyp: &[
            "It costs 3.14 euros, i.e. 1,000 cents - right?",
            "well-known 2-3 (approx.) &amp; \"quoted\" <tag>",
        ],
        reference: &[
            "It costs 3,14 euro, that is 1.000 cents-right ?",
            "well known 2 - 3 (approx) & 'quoted' <tag>",
        ],
        bleu: 21.121249204617325,
        counts: [14, 8, 4, 2],
        totals: [29, 27, 25, 23],
        lens: (29, 23),
        bleu_lc: 21.121249204617325,
        chrf: 61.72543429384748,
        chrf_pp: 51.525190674796406,
    },
    Case {
        hyp: &[
            "Ein Mann fährt Fahrrad —   schnell!",
            "Zwei Frauen… „lachen“",
        ],
        reference: &[
            "Ein Mann fährt ein Fahrrad – schnell !",
            "Zwei Frauen lachen",
        ],
        bleu: 24.60608780385093,
        counts: [7, 3, 1, 0],
        totals: [10, 8, 6, 4],
        lens: (10, 11),
        bleu_lc: 24.60608780385093,
        chrf: 71.43228045715344,
        chrf_pp: 65.95452686184663,
    },
    Case {
        hyp: &["a"],
        reference: &["a"],
        bleu: 0.0,
        counts: [1, 0, 0, 0],
        totals: [1, 0, 0, 0],
        lens: (1, 1),
        bleu_lc: 0.0,
        chrf: 100.0,
        chrf_pp: 100.0,
    },
];

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn matches_sacrebleu_on_pinned_cases() {
    for c in CASES {
        let b = corpus_bleu(c.hyp, &[c.reference], &BleuOptions::default()).unwrap();
        assert!(
            close(b.score, c.bleu),
            "BLEU {} vs {} for {:?}",
            b.score,
            c.bleu,
            c.hyp
        );
        assert_eq!(
            (b.counts, b.totals, (b.sys_len, b.ref_len)),
            (c.counts, c.totals, c.lens),
            "{:?}",
            c.hyp
        );
        let lc = corpus_bleu(c.hyp, &[c.reference], &BleuOptions { lowercase: true }).unwrap();
        assert!(close(lc.score, c.bleu_lc));
        let f = corpus_chrf(c.hyp, &[c.reference], &ChrfOptions::default()).unwrap();
        assert!(
            close(f.score, c.chrf),
            "chrF {} vs {} for {:?}",
            f.score,
            c.chrf,
            c.hyp
        );
        let pp = corpus_chrf(
            c.hyp,
            &[c.reference],
            &ChrfOptions {
                word_order: 2,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(
            close(pp.score, c.chrf_pp),
            "chrF++ {} vs {} for {:?}",
            pp.score,
            c.chrf_pp,
            c.hyp
        );
    }
}

/// test_2016_flickr.de against a damaged copy of itself (the word at position i mod len
/// dropped from line i, every third line reversed), scored by sacreBLEU 2.6.0.
#[test]
fn matches_sacrebleu_on_a_multi30k_sized_corpus() {
    let dir = gnmt_tokenizer::data::multi30k_dir().expect("Multi30k is needed for this test");
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

#[test]
fn mismatched_streams_are_errors() {
    let err = corpus_bleu(&["a", "b"], &[&["a"][..]], &BleuOptions::default()).unwrap_err();
    assert_eq!(
        err,
        Error::LineCountMismatch {
            hyps: 2,
            stream: 1,
            refs: 1
        }
    );
    assert_eq!(err.to_string(), "2 hypotheses but reference stream 1 has 1 lines; every stream needs one line per hypothesis");
    assert_eq!(
        corpus_chrf::<&str>(&["a"], &[], &ChrfOptions::default()).unwrap_err(),
        Error::NoReferences
    );
}

#[test]
fn identical_text_scores_100_and_multiple_references_help() {
    let hyp = ["A man rides a red bicycle down the street."];
    let b = corpus_bleu(&hyp, &[&hyp[..]], &BleuOptions::default()).unwrap();
    assert!(close(b.score, 100.0));
    let r1 = ["A person is cycling on a road."];
    let one = corpus_bleu(&hyp, &[&r1[..]], &BleuOptions::default()).unwrap();
    let two = corpus_bleu(&hyp, &[&r1[..], &hyp[..]], &BleuOptions::default()).unwrap();
    assert!(two.score > one.score && close(two.score, 100.0));
}
