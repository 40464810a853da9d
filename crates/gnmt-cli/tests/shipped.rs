//! The default model shipped in models/multi30k-en-de: it loads, `translate` finds it without
//! `-m`, it translates English into German, and it scores at least 33 BLEU on the first 300
//! lines of test_2016_flickr with its own generation.json (a guard against a broken checkpoint
//! or decoder; the model card reports the full test sets).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{gnmt, ok};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn first_lines(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().take(n).map(|l| format!("{l}\n")).collect()
}

#[test]
fn the_shipped_model_translates_without_m_and_scores() {
    let root = repo_root();
    let model = root.join("models/multi30k-en-de");
    let size: u64 = std::fs::read_dir(&model)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(size < 30 << 20, "the model folder is {size} bytes");

    // From the repository root, without -m, as the README's first command does.
    let data = gnmt_tokenizer::data::multi30k_dir().expect("Multi30k (see GNMT_DATA_DIR)");
    let input = first_lines(&data.join("val.en"), 20);
    let mut child = Command::new(env!("CARGO_BIN_EXE_translate"))
        .arg("-q")
        .current_dir(&root)
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
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let german = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = german.lines().collect();
    assert_eq!(lines.len(), 20);
    assert!(lines.iter().all(|l| !l.trim().is_empty()), "{german}");
    // German, not a copy of the input: most captions start with an article.
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
    assert!(articles >= 12, "{german}");
    for (src, hyp) in input.lines().zip(&lines) {
        assert_ne!(src, *hyp);
    }

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
    let report = ok(gnmt(
        &[
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
    let bleu: f64 = report
        .split_whitespace()
        .skip_while(|w| *w != "=")
        .nth(1)
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no BLEU in {report}"));
    assert!(
        bleu >= 33.0,
        "BLEU {bleu} on the first 300 lines:\n{report}"
    );
}
