//! One model for several language pairs (`gnmt train --pair`, `--target-lang`): synthetic
//! "languages" over the same sources, `rv` (the words reversed) and `so` (the words sorted),
//! so only the target-language tag tells the model which to produce.

use std::path::Path;

use crate::{err, gnmt, ok};

/// Sources shared by both pairs, targets reversed (`NAME.rv`) and sorted (`NAME.so`).
fn write_pairs(d: &Path, name: &str, pairs: &str, seed: &str) {
    for task in ["reverse", "sort"] {
        let out = format!("{name}-{task}");
        ok(gnmt(
            &[
                "synth",
                "--task",
                task,
                "--pairs",
                pairs,
                "--symbols",
                "8",
                "--min-len",
                "1",
                "--max-len",
                "5",
                "--seed",
                seed,
                "-o",
                &out,
            ],
            d,
        ));
    }
    let read = |f: String| std::fs::read_to_string(d.join(f)).unwrap();
    assert_eq!(
        read(format!("{name}-reverse.src")),
        read(format!("{name}-sort.src"))
    );
    std::fs::rename(
        d.join(format!("{name}-reverse.src")),
        d.join(format!("{name}.xx")),
    )
    .unwrap();
    std::fs::rename(
        d.join(format!("{name}-reverse.tgt")),
        d.join(format!("{name}.rv")),
    )
    .unwrap();
    std::fs::rename(
        d.join(format!("{name}-sort.tgt")),
        d.join(format!("{name}.so")),
    )
    .unwrap();
}

/// A folder with both pairs' training and validation corpora and the run's config.
fn setup(train_pairs: &str, valid_pairs: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_pairs(dir.path(), "train", train_pairs, "1");
    write_pairs(dir.path(), "valid", valid_pairs, "2");
    std::fs::write(dir.path().join("config.json"), CONFIG).unwrap();
    std::fs::write(dir.path().join("learn.json"), LEARN_CONFIG).unwrap();
    dir
}

/// The end-to-end reversal test's settings, with the `tiny` preset: both tasks reach BLEU 95
/// by update 2,000 and 98-100 by 3,000 (seeds 1 and 2; 40 s on 2 cores).
const LEARN_CONFIG: &str = r#"{
  "init_scale": 0.1, "dropout": 0.0, "label_smoothing": 0.0, "optim": {"lr": 0.005, "warmup_steps": 20},
  "data": {"max_tokens": 600}, "log": {"log_every": 100, "valid_every": 500, "save_every": 500}
}"#;

/// A model small enough that a few updates take no time, for the checks that need one.
const CONFIG: &str = r#"{
  "model": {"vocab_size": 300, "embedding_dim": 32, "hidden_size": 32, "encoder_layers": 3, "decoder_layers": 3, "attention_size": 32},
  "dropout": 0.0, "label_smoothing": 0.0, "optim": {"lr": 0.01, "warmup_steps": 20},
  "data": {"max_tokens": 400, "temperature": 2.0}, "log": {"log_every": 50, "valid_every": 500, "save_every": 500}
}"#;

fn train(d: &Path, run: &str, steps: &str, flags: &[&str]) -> std::process::Output {
    let mut args = vec!["--threads", "2", "train", "-o", run];
    args.extend(["--max-steps", steps, "--quiet"]);
    args.extend(flags);
    if !flags.contains(&"--config") {
        args.extend(["--config", "config.json"]);
    }
    gnmt(&args, d)
}

const PAIRS: [&str; 16] = [
    "--pair",
    "xx-rv",
    "train.xx",
    "train.rv",
    "--pair",
    "xx-so",
    "train.xx",
    "train.so",
    "--valid-pair",
    "xx-rv",
    "valid.xx",
    "valid.rv",
    "--valid-pair",
    "xx-so",
    "valid.xx",
    "valid.so",
];

/// BLEU of `gnmt eval` (the number after `= `).
fn bleu(d: &Path, model: &str, target: &str, reference: &str) -> f64 {
    let out = ok(gnmt(
        &[
            "eval",
            "-m",
            model,
            "--target-lang",
            target,
            "--src",
            "valid.xx",
            "--ref",
            reference,
            "--beam-size",
            "1",
        ],
        d,
    ));
    let line = out.lines().find(|l| l.starts_with("BLEU|")).unwrap();
    line.split("= ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// The end-to-end check for multilingual training: the tag alone selects the task. Trained on
/// both pairs over the same sources, the model reverses when asked for `rv` and sorts when
/// asked for `so` (held-out BLEU of each against its own references, far above the other's).
#[test]
fn one_model_learns_two_pairs_and_the_tag_chooses() {
    let dir = setup("3000", "200");
    let d = dir.path();
    let mut args = PAIRS.to_vec();
    args.extend(["--config", "learn.json", "--preset", "tiny"]);
    let out = ok(train(d, "run", "3000", &args));
    assert!(out.contains("3000 updates"), "{out}");
    // The vocabulary reserves the tags at ids 4 and 5; the run records its pairs.
    let tokenizer: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("run/tokenizer.json")).unwrap()).unwrap();
    let tags: Vec<(u64, &str)> = tokenizer["added_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["content"].as_str().unwrap().starts_with("<2"))
        .map(|t| (t["id"].as_u64().unwrap(), t["content"].as_str().unwrap()))
        .collect();
    assert_eq!(tags, [(4, "<2rv>"), (5, "<2so>")]);
    let config = std::fs::read_to_string(d.join("run/train_config.json")).unwrap();
    assert!(config.contains(r#""pair": "xx-so""#), "{config}");
    let metrics = std::fs::read_to_string(d.join("run/metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(
        metrics
            .lines()
            .rfind(|l| l.contains("bleu_by_pair"))
            .unwrap(),
    )
    .unwrap();
    let by_pair = &last["bleu_by_pair"];
    let mean = (by_pair["xx-rv"].as_f64().unwrap() + by_pair["xx-so"].as_f64().unwrap()) / 2.0;
    assert!(
        (last["bleu"].as_f64().unwrap() - mean).abs() < 1e-9,
        "{last}"
    );

    let reversed = bleu(d, "run", "rv", "valid.rv");
    let sorted = bleu(d, "run", "so", "valid.so");
    assert!(
        reversed >= 90.0 && sorted >= 90.0,
        "rv {reversed}, so {sorted}"
    );
    // Asked for the other language, it does the other task.
    let crossed = bleu(d, "run", "rv", "valid.so");
    assert!(
        crossed < reversed - 30.0,
        "rv against the sorted references: {crossed}"
    );
}

/// What a multilingual model refuses, each naming the fix: no target language, one it lacks,
/// a validation corpus without its pair, resuming with other pairs; and a bilingual model
/// refuses --target-lang.
#[test]
fn multilingual_mistakes_are_refused_naming_the_choices() {
    let dir = setup("200", "10");
    let d = dir.path();
    ok(train(d, "run", "5", &PAIRS));
    std::fs::write(d.join("in.txt"), "ko tu mi\n").unwrap();
    let translate = |extra: &[&str]| {
        let mut args = vec!["-m", "run", "-i", "in.txt", "-q"];
        args.extend(extra);
        std::process::Command::new(env!("CARGO_BIN_EXE_translate"))
            .args(args)
            .current_dir(d)
            .output()
            .unwrap()
    };
    let e = err(translate(&[]));
    assert!(
        e.contains("translates into rv, so: choose one with --target-lang"),
        "{e}"
    );
    let e = err(translate(&["--target-lang", "fr"]));
    assert!(
        e.contains("cannot translate into \"fr\": its target languages are rv, so"),
        "{e}"
    );
    assert_eq!(ok(translate(&["--target-lang", "so"])).lines().count(), 1);

    let mut unpaired = PAIRS[..8].to_vec();
    unpaired.extend(["--valid", "valid.xx", "valid.rv"]);
    let e = err(train(d, "other", "5", &unpaired));
    assert!(e.contains("--valid-pair LANGS SRC TGT"), "{e}");
    let mut one_pair = PAIRS[..4].to_vec();
    one_pair.extend(&PAIRS[8..12]);
    let e = err(train(d, "run", "10", &one_pair));
    assert!(
        e.contains("cannot resume") && e.contains("data.train"),
        "{e}"
    );
    let e = err(gnmt(
        &[
            "train", "--pair", "xx_rv", "a", "b", "--valid", "c", "d", "-o", "x",
        ],
        d,
    ));
    assert!(e.contains("not a language pair"), "{e}");

    // A vocabulary of one's own must hold a tag for every target.
    let out = ok(gnmt(
        &[
            "vocab",
            "--train",
            "train.xx",
            "train.rv",
            "--train",
            "train.xx",
            "train.so",
            "--languages",
            "rv,so",
            "--size",
            "300",
            "-o",
            "vocab",
        ],
        d,
    ));
    assert!(out.contains("language tags: <2rv> = 4, <2so> = 5"), "{out}");
    let mut own = PAIRS.to_vec();
    own.extend(["--tokenizer", "vocab/tokenizer.json"]);
    ok(train(d, "own", "5", &own));
    let e = err(gnmt(
        &["vocab", "--train", "a", "b", "--languages", "De", "-o", "v"],
        d,
    ));
    assert!(e.contains("not a language code"), "{e}");
    let mut other = PAIRS[..4].to_vec();
    other.extend(["--pair", "xx-es", "train.xx", "train.so"]);
    other.extend(&PAIRS[8..12]);
    other.extend(["--tokenizer", "vocab/tokenizer.json"]);
    let e = err(train(d, "lacking", "5", &other));
    assert!(
        e.contains("xx-es: the vocabulary has no tag <2es> (its languages: rv, so)"),
        "{e}"
    );

    // A bilingual model has no languages to choose from.
    let bilingual = [
        "--train", "train.xx", "train.rv", "--valid", "valid.xx", "valid.rv",
    ];
    ok(train(d, "bilingual", "5", &bilingual));
    let e = err(gnmt(
        &[
            "eval",
            "-m",
            "bilingual",
            "--target-lang",
            "rv",
            "--src",
            "valid.xx",
            "--ref",
            "valid.rv",
        ],
        d,
    ));
    assert!(e.contains("is not multilingual"), "{e}");
}
