//! `gnmt train --init-from`: fine-tuning a trained model on new data.

use std::path::Path;

use crate::{err, gnmt, losses, ok, repo_root, TRAIN_TINY};

/// A small English-German corpus the shipped model has not seen (written for this test).
const PAIRS: [(&str, &str); 16] = [
    (
        "A man is riding a red bicycle.",
        "Ein Mann fährt ein rotes Fahrrad.",
    ),
    (
        "Two dogs are playing in the snow.",
        "Zwei Hunde spielen im Schnee.",
    ),
    (
        "A woman is reading a book on a bench.",
        "Eine Frau liest ein Buch auf einer Bank.",
    ),
    (
        "Children are swimming in a lake.",
        "Kinder schwimmen in einem See.",
    ),
    ("A boy is throwing a ball.", "Ein Junge wirft einen Ball."),
    (
        "A girl in a blue dress is dancing.",
        "Ein Mädchen in einem blauen Kleid tanzt.",
    ),
    (
        "Three men are standing on a street.",
        "Drei Männer stehen auf einer Straße.",
    ),
    (
        "A black dog runs through the grass.",
        "Ein schwarzer Hund rennt durch das Gras.",
    ),
    (
        "An old man is sitting on a chair.",
        "Ein alter Mann sitzt auf einem Stuhl.",
    ),
    (
        "A woman is cooking in a kitchen.",
        "Eine Frau kocht in einer Küche.",
    ),
    (
        "People are walking in a park.",
        "Menschen gehen in einem Park spazieren.",
    ),
    (
        "A man plays the guitar on stage.",
        "Ein Mann spielt auf der Bühne Gitarre.",
    ),
    ("Two girls are laughing.", "Zwei Mädchen lachen."),
    ("A child is eating an apple.", "Ein Kind isst einen Apfel."),
    (
        "A man in a hat climbs a rock.",
        "Ein Mann mit Hut klettert auf einen Felsen.",
    ),
    (
        "A brown horse stands in a field.",
        "Ein braunes Pferd steht auf einem Feld.",
    ),
];

/// Optimisation only: the model, and its decoding defaults, come from the folder.
const FINE_TUNE_CONFIG: &str = r#"{
  "dropout": 0.0, "label_smoothing": 0.0, "optim": {"lr": 0.0003, "warmup_steps": 1},
  "data": {"max_tokens": 4000}, "log": {"log_every": 1, "valid_every": 100, "save_every": 100}
}"#;

fn write_corpus(d: &Path) {
    for (name, side) in [("new.en", 0), ("new.de", 1)] {
        let text: String = PAIRS
            .iter()
            .map(|p| format!("{}\n", if side == 0 { p.0 } else { p.1 }))
            .collect();
        std::fs::write(d.join(name), text).unwrap();
    }
    std::fs::write(d.join("ft.json"), FINE_TUNE_CONFIG).unwrap();
}

fn fine_tune(d: &Path, run: &str, extra: &[&str]) -> std::process::Output {
    let shipped = repo_root().join("models/multi30k-en-de");
    let mut args = vec![
        "train",
        "--init-from",
        shipped.to_str().unwrap(),
        "--train",
        "new.en",
        "new.de",
        "--valid",
        "new.en",
        "new.de",
        "--config",
        "ft.json",
        "-o",
        run,
        "--quiet",
    ];
    args.extend_from_slice(extra);
    gnmt(&args, d)
}

/// Fine-tuning the shipped model starts from it: the first update's loss on the new corpus is
/// already far below a fresh model's (log 8000 = 9.0 nats per token for uniform guesses), and
/// the following updates, all on the same one-batch corpus, lower it further. The run keeps
/// the model's vocabulary, architecture and decoding defaults.
#[test]
fn fine_tuning_the_shipped_model_starts_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_corpus(d);
    ok(fine_tune(d, "run", &["--max-steps", "4"]));
    let losses = losses(&d.join("run"));
    assert_eq!(losses.len(), 4, "{losses:?}");
    assert!(losses[0] < 3.0, "first update's loss {losses:?}");
    assert!(losses[3] < losses[0], "the loss did not fall: {losses:?}");
    let shipped = repo_root().join("models/multi30k-en-de");
    for file in ["tokenizer.json", "generation.json"] {
        assert_eq!(
            std::fs::read(d.join("run").join(file)).unwrap(),
            std::fs::read(shipped.join(file)).unwrap(),
            "{file}"
        );
    }
    let config = |p: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p.join("config.json")).unwrap()).unwrap()
    };
    assert_eq!(config(&d.join("run")), config(&shipped));
    // Running the same command again resumes; leaving --init-from out is refused.
    ok(fine_tune(d, "run", &["--max-steps", "5"]));
    assert_eq!(crate::losses(&d.join("run")).len(), 5);
    let mut args = TRAIN_FINE_TUNED.to_vec();
    args.extend(["-o", "run", "--max-steps", "6"]);
    let e = err(gnmt(&args, d));
    assert!(
        e.contains("it was started from") && e.contains("--init-from"),
        "{e}"
    );
}

const TRAIN_FINE_TUNED: [&str; 9] = [
    "train", "--train", "new.en", "new.de", "--valid", "new.en", "new.de", "--config", "ft.json",
];

/// What fine-tuning cannot change is refused before anything is written, naming what differs:
/// another vocabulary, another architecture, and an optimizer the folder does not have.
#[test]
fn fine_tuning_refuses_another_vocabulary_or_architecture() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_corpus(d);
    ok(gnmt(
        &[
            "vocab", "--train", "new.en", "new.de", "--size", "300", "-o", "voc",
        ],
        d,
    ));
    let e = err(fine_tune(d, "a", &["--tokenizer", "voc/tokenizer.json"]));
    assert!(e.contains("--tokenizer voc/tokenizer.json"), "{e}");
    assert!(e.contains("is not the model's vocabulary"), "{e}");
    let e = err(fine_tune(d, "b", &["--preset", "tiny"]));
    assert!(
        e.contains("--preset tiny") && e.contains("hidden_size (256 -> 64)"),
        "{e}"
    );
    let e = err(fine_tune(d, "c", &["--keep-optimizer"]));
    assert!(e.contains("holds no optimizer state"), "{e}");
    for run in ["a", "b", "c"] {
        assert!(!d.join(run).join("train_config.json").exists(), "{run}");
    }
    // A --preset naming the model's own architecture is no conflict.
    std::fs::write(
        d.join("same.json"),
        r#"{"model": {"vocab_size": 8000, "embedding_dim": 256, "hidden_size": 256,
            "encoder_layers": 4, "decoder_layers": 4, "attention_size": 256,
            "tie_embeddings": "all"}}"#,
    )
    .unwrap();
    let shipped = repo_root().join("models/multi30k-en-de");
    let mut args = TRAIN_FINE_TUNED.to_vec();
    args[8] = "same.json";
    args.extend([
        "--init-from",
        shipped.to_str().unwrap(),
        "-o",
        "d",
        "--max-steps",
        "1",
    ]);
    args.push("--quiet");
    ok(gnmt(&args, d));
}

/// `--keep-optimizer` from a checkpoint continues its optimizer and schedule: the first
/// update of the new run has the learning rate the old run had reached (past its warm-up),
/// where a fresh schedule starts warming up again.
#[test]
fn keep_optimizer_continues_the_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    crate::train::tiny_run_setup(d);
    ok(crate::train::train_tiny(d, "base", "10"));
    let step10 = d.join("base/checkpoints/step-10");
    let first_lr = |run: &str, extra: &[&str]| {
        let mut args = TRAIN_TINY.to_vec();
        args.extend(["--init-from", step10.to_str().unwrap(), "-o", run]);
        args.extend(["--max-steps", "2", "--log-every", "1", "--quiet"]);
        args.extend_from_slice(extra);
        ok(gnmt(&args, d));
        let log = std::fs::read_to_string(d.join(run).join("metrics.jsonl")).unwrap();
        let first: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
        first["lr"].as_f64().unwrap()
    };
    // TINY_CONFIG: lr 0.005 after 5 warm-up updates.
    assert_eq!(first_lr("kept", &["--keep-optimizer"]), 0.005);
    assert!((first_lr("fresh", &[]) - 0.001).abs() < 1e-12);
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(d.join("kept/checkpoints/step-2/state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["schedule_offset"], 10);
    assert_eq!(state["step"], 2);
}
