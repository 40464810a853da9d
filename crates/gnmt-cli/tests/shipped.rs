//! The default model shipped in models/multi30k-en-de and built into `translate`: a copy of the
//! program moved to another folder and run from a third translates English into German without
//! `-m`. Its BLEU on test_2016_flickr is a data check (`.ci/data_checks.rs`).

use std::io::Write;
use std::process::{Command, Stdio};

use std::path::Path;

use crate::{assert_german, output_lines, repo_root, run_translate, translate_lines};

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

/// The shipped multilingual model (models/multi30k-multilingual) translates the same captions
/// into German and into French as `--target-lang` chooses, and without it is refused, naming
/// both languages.
#[test]
fn the_multilingual_model_translates_into_the_language_chosen() {
    let model = repo_root().join("models/multi30k-multilingual");
    let size: u64 = std::fs::read_dir(&model)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(size < 30 << 20, "the model folder is {size} bytes");
    let program = Path::new(env!("CARGO_BIN_EXE_translate"));
    let run = |extra: &[&str]| {
        let mut args = vec!["-q", "-m", model.to_str().unwrap()];
        args.extend_from_slice(extra);
        run_translate(program, &args, &repo_root(), CAPTIONS)
    };
    let lines = output_lines;
    assert_german(CAPTIONS, &lines(run(&["--target-lang", "de"])));
    let french = lines(run(&["--target-lang", "fr"]));
    assert_eq!(french.len(), CAPTIONS.lines().count());
    let articles = [
        "Un",
        "Une",
        "Deux",
        "Trois",
        "Des",
        "Le",
        "La",
        "Les",
        "Plusieurs",
    ];
    let starts_french = french
        .iter()
        .filter(|l| articles.contains(&l.split_whitespace().next().unwrap_or("")))
        .count();
    assert!(starts_french * 10 >= french.len() * 6, "{french:?}");
    let refused = run(&[]);
    assert!(!refused.status.success());
    let e = String::from_utf8_lossy(&refused.stderr);
    assert!(e.contains("de, fr") && e.contains("--target-lang"), "{e}");
}

/// `-q` leaves stderr empty, also when `--matmul auto` picks a precision (which it otherwise
/// names there), and the translations are those of the same precision given by name.
#[test]
fn quiet_translation_writes_nothing_to_stderr() {
    let program = Path::new(env!("CARGO_BIN_EXE_translate"));
    let quiet = |extra: &[&str]| {
        let mut args = vec!["-q"];
        args.extend_from_slice(extra);
        let out = run_translate(program, &args, &repo_root(), CAPTIONS);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(stderr.is_empty(), "{extra:?}: {stderr}");
        output_lines(out)
    };
    let auto = quiet(&["--matmul", "auto"]);
    let loud = run_translate(program, &["--matmul", "auto"], &repo_root(), CAPTIONS);
    let stderr = String::from_utf8_lossy(&loud.stderr).to_string();
    let picked = stderr
        .lines()
        .find_map(|l| l.strip_prefix("matrix products in "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no --matmul auto line: {stderr}"))
        .to_string();
    assert_eq!(auto, quiet(&["--matmul", &picked]), "auto picked {picked}");
}
