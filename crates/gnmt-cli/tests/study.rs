use crate::{gnmt, ok};

fn is_png(path: &std::path::Path) -> bool {
    std::fs::read(path).is_ok_and(|b| b.starts_with(b"\x89PNG\r\n\x1a\n") && b.len() > 1000)
}

/// `gnmt study residuals --quick` on a corpus that `gnmt synth` writes: both arms train, log
/// per-layer gradient norms for every layer of both stacks, and the report and its figures are
/// written; `gnmt plot` draws an arm's curves.
#[test]
fn the_quick_residual_study_writes_its_report_and_figures() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (name, pairs, seed) in [("train", "1000", "1"), ("valid", "100", "2")] {
        ok(gnmt(
            &[
                "synth",
                "--task",
                "reverse",
                "--pairs",
                pairs,
                "--symbols",
                "16",
                "--max-len",
                "12",
                "--seed",
                seed,
                "-o",
                name,
            ],
            d,
        ));
    }
    quick_study(d, ["train.src", "train.tgt", "valid.src", "valid.tgt"]);
}

/// The same on Multi30k, as the study is meant to be run.
#[test]
#[ignore = "needs Multi30k (GNMT_DATA_DIR or ../shared/data/multi30k); .ci/data-checks.sh runs it"]
fn the_quick_residual_study_runs_on_multi30k() {
    let data = gnmt_tokenizer::data::multi30k_dir().expect(crate::NEEDS_MULTI30K);
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

fn quick_study(
    d: &std::path::Path,
    [train_src, train_tgt, valid_src, valid_tgt]: [impl AsRef<str>; 4],
) {
    let out = ok(gnmt(
        &[
            "--threads",
            "2",
            "study",
            "residuals",
            "--quick",
            "--quiet",
            "--train",
            train_src.as_ref(),
            train_tgt.as_ref(),
            "--valid",
            valid_src.as_ref(),
            valid_tgt.as_ref(),
            "-o",
            "study",
        ],
        d,
    ));
    let study = d.join("study");
    assert!(out.contains("report.md"), "{out}");
    for figure in [
        "loss.png",
        "grad_norms_encoder.png",
        "grad_norms_decoder.png",
        "schematic-plain.png",
        "schematic-residual-from-3.png",
    ] {
        assert!(
            is_png(&study.join(figure)),
            "{figure} is missing or not a PNG"
        );
    }
    let report = std::fs::read_to_string(study.join("report.md")).unwrap();
    for needle in [
        "| no residual | 30 |",
        "| residual from layer 3 | 30 |",
        "## The textbook account",
        "**Loss:",
        "**Gradients:",
        "![schematic-plain.png](schematic-plain.png)",
    ] {
        assert!(
            report.contains(needle),
            "report lacks {needle:?}:\n{report}"
        );
    }
    for arm in ["plain", "residual-from-3"] {
        let metrics = std::fs::read_to_string(study.join(arm).join("metrics.jsonl")).unwrap();
        let updates: Vec<serde_json::Value> = metrics
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .filter(|v: &serde_json::Value| v.get("loss").is_some())
            .collect();
        assert!(
            updates.len() >= 10,
            "{arm}: {} logged updates",
            updates.len()
        );
        for u in &updates {
            for stack in ["grad_norm_encoder", "grad_norm_decoder"] {
                let norms = u[stack].as_array().unwrap();
                assert_eq!(norms.len(), 4, "{arm} {stack}: {u}");
                assert!(
                    norms.iter().all(|g| g.as_f64().unwrap() > 0.0),
                    "{arm}: {u}"
                );
            }
        }
    }
    let plotted = ok(gnmt(&["plot", "study/plain"], d));
    for figure in ["loss.png", "bleu.png", "grad_norms.png"] {
        assert!(plotted.contains(figure), "{plotted}");
        assert!(is_png(&study.join("plain/plots").join(figure)), "{figure}");
    }
}
