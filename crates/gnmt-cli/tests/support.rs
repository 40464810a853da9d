//! Helpers shared by the end-to-end tests (`tests.rs`) and the data checks
//! (`data_checks.rs`): running the programs, writing synthetic corpora, and checks that both
//! make.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub fn gnmt(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gnmt"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run gnmt")
}

pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn err(out: Output) -> String {
    assert!(
        !out.status.success(),
        "expected failure, got: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// `gnmt synth --task reverse` into `d/name.{src,tgt}`.
pub fn synth_reverse(
    d: &Path,
    name: &str,
    pairs: usize,
    symbols: usize,
    max_len: usize,
    seed: u64,
) {
    let (pairs, symbols, max_len, seed) = (
        pairs.to_string(),
        symbols.to_string(),
        max_len.to_string(),
        seed.to_string(),
    );
    ok(gnmt(
        &[
            "synth",
            "--task",
            "reverse",
            "--pairs",
            &pairs,
            "--symbols",
            &symbols,
            "--max-len",
            &max_len,
            "--seed",
            &seed,
            "-o",
            name,
        ],
        d,
    ));
}

pub fn first_lines(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().take(n).map(|l| format!("{l}\n")).collect()
}

/// `translate` reading `input` from `cwd`, its stdout lines.
pub fn translate_lines(program: &Path, cwd: &Path, input: &str) -> Vec<String> {
    output_lines(run_translate(program, &["-q"], cwd, input))
}

/// `program` (a `translate`) run in `cwd` with `args`, `input` on its stdin.
pub fn run_translate(program: &Path, args: &[&str], cwd: &Path, input: &str) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// The stdout lines of a run that must have succeeded (its stderr shown if not).
pub fn output_lines(out: Output) -> Vec<String> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The BLEU score in a `gnmt eval` report (the number after the signature's `=`).
pub fn report_bleu(report: &str) -> f64 {
    report
        .split_whitespace()
        .skip_while(|w| *w != "=")
        .nth(1)
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no BLEU in {report}"))
}

/// German, not a copy of the input: most captions start with an article or a number.
pub fn assert_german(input: &str, lines: &[String]) {
    let n = input.lines().count();
    assert_eq!(lines.len(), n, "{lines:?}");
    assert!(lines.iter().all(|l| !l.trim().is_empty()), "{lines:?}");
    let articles = lines
        .iter()
        .filter(|l| {
            let first = l.split_whitespace().next().unwrap_or("");
            [
                "Ein", "Eine", "Der", "Die", "Das", "Zwei", "Drei", "Mehrere", "Viele", "Einige",
            ]
            .contains(&first)
        })
        .count();
    assert!(articles * 10 >= n * 6, "{lines:?}");
    for (src, hyp) in input.lines().zip(lines) {
        assert_ne!(src, hyp);
    }
}

pub fn is_png(path: &std::path::Path) -> bool {
    std::fs::read(path).is_ok_and(|b| b.starts_with(b"\x89PNG\r\n\x1a\n") && b.len() > 1000)
}

pub fn quick_study(
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

/// `gnmt train` on `train.{src,tgt}` and `valid.{src,tgt}` with `config.json`, on one thread,
/// in the test's folder: the run folder and the limits come after.
pub const TRAIN_TINY: [&str; 11] = [
    "--threads",
    "1",
    "train",
    "--train",
    "train.src",
    "train.tgt",
    "--valid",
    "valid.src",
    "valid.tgt",
    "--config",
    "config.json",
];

/// The training losses a run folder's metrics.jsonl logged, in order.
pub fn losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64())
        .collect()
}
