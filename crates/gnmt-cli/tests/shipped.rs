//! The default model shipped in models/multi30k-en-de and built into `translate`: a copy of the
//! program moved to another folder and run from a third translates English into German without
//! `-m`; and (a data check, with Multi30k) it scores at least 33 BLEU on the first 300 lines
//! of test_2016_flickr with its own generation.json, a guard against a broken checkpoint or
//! decoder (the model card reports the full test sets).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{gnmt, ok, NEEDS_MULTI30K};

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

/// Image captions written for this test, in the style of the model's training data.
const CAPTIONS: &str = "\
A man is riding a bicycle down the street.
Two children are playing in the sand.
A woman in a red dress is walking her dog.
A group of people are standing in front of a building.
A little girl is eating an ice cream cone.
A dog is running through the grass.
Three men are sitting on a bench.
A young boy is jumping into a swimming pool.
An old man is reading a newspaper.
A woman is cooking in the kitchen.
Two dogs are playing with a ball.
A man in a blue shirt is climbing a rock.
";

/// `translate` reading `input` from `cwd`, its stdout lines.
fn translate_lines(program: &Path, cwd: &Path, input: &str) -> Vec<String> {
    let mut child = Command::new(program)
        .arg("-q")
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
    let out = child.wait_with_output().unwrap();
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

/// German, not a copy of the input: most captions start with an article or a number.
fn assert_german(input: &str, lines: &[String]) {
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

#[test]
fn the_built_in_model_translates_from_any_folder() {
    let root = repo_root();
    let model = root.join("models/multi30k-en-de");
    let size: u64 = std::fs::read_dir(&model)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(size < 30 << 20, "the model folder is {size} bytes");

    // The program copied out of the build tree and run from an unrelated folder: nothing on
    // disk leads back to the checkout.
    let bin = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let program = bin.path().join("translate");
    std::fs::copy(env!("CARGO_BIN_EXE_translate"), &program).unwrap();
    let lines = translate_lines(&program, elsewhere.path(), CAPTIONS);
    assert_german(CAPTIONS, &lines);
    // The same translations as the model folder on disk gives.
    let out = Command::new(&program)
        .args(["-q", "-m", model.to_str().unwrap(), "-i", "-"])
        .current_dir(elsewhere.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(CAPTIONS.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    let from_folder: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(from_folder, lines);
}

#[test]
#[ignore = "needs Multi30k (GNMT_DATA_DIR or ../shared/data/multi30k); .ci/data-checks.sh runs it"]
fn the_shipped_model_scores_on_test_2016() {
    let root = repo_root();
    let model = root.join("models/multi30k-en-de");
    let data = gnmt_tokenizer::data::multi30k_dir().expect(NEEDS_MULTI30K);
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
