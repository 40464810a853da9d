use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::{err, gnmt, ok};

/// A small model trained for 150 updates on the sort task: its outputs are real, partly
/// wrong and of varied length, a demanding case for batch and thread invariance.
fn model(d: &Path) -> std::path::PathBuf {
    ok(gnmt(
        &[
            "synth",
            "--task",
            "sort",
            "--pairs",
            "600",
            "--symbols",
            "8",
            "--max-len",
            "8",
            "-o",
            "train",
        ],
        d,
    ));
    ok(gnmt(
        &[
            "synth",
            "--task",
            "sort",
            "--pairs",
            "10",
            "--symbols",
            "8",
            "--max-len",
            "8",
            "--seed",
            "2",
            "-o",
            "valid",
        ],
        d,
    ));
    std::fs::write(
        d.join("config.json"),
        r#"{"model": {"vocab_size": 300, "embedding_dim": 16, "hidden_size": 32, "encoder_layers": 3, "decoder_layers": 3, "attention_size": 16},
            "optim": {"lr": 0.01, "warmup_steps": 10}, "dropout": 0.0, "data": {"max_tokens": 400},
            "log": {"valid_every": 1000, "save_every": 1000}}"#,
    )
    .unwrap();
    ok(gnmt(
        &[
            "train",
            "--train",
            "train.src",
            "train.tgt",
            "--valid",
            "valid.src",
            "valid.tgt",
            "--config",
            "config.json",
            "-o",
            "model",
            "--max-steps",
            "150",
            "--quiet",
        ],
        d,
    ));
    d.join("model")
}

fn translate(args: &[&str], input: &[u8], cwd: &Path) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_translate"))
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A run that fails early (a bad model) may exit before reading its input: a broken pipe
    // here is not the test's concern, the exit status and stderr are.
    let _ = child.stdin.take().unwrap().write_all(input);
    child.wait_with_output().unwrap()
}

fn hostile_input() -> Vec<u8> {
    let mut input = Vec::new();
    input.extend_from_slice(b"ba ko mi tu\n\n   \nre sa ni po le du\nfi\n");
    input.extend_from_slice(b"broken \xff\xfe bytes ko\n");
    input.extend_from_slice("emoji 🦀 and </s> text\n".as_bytes());
    input.extend_from_slice(format!("{}\n", "ko ".repeat(400)).as_bytes());
    input.extend_from_slice(b"ga\r\nho ju ve zo ba\n");
    for i in 0..40 {
        input.extend_from_slice(format!("{}\n", "mi tu re ".repeat(i % 5 + 1)).as_bytes());
    }
    input.extend_from_slice(b"no newline at the end");
    input
}

#[test]
fn one_line_out_per_line_in_whatever_the_input_holds() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let m = model(d);
    let input = hostile_input();
    let out = translate(&["-m", m.to_str().unwrap(), "--beam-size", "3"], &input, d);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    let inputs: Vec<&[u8]> = input.split(|&b| b == b'\n').collect();
    assert_eq!(lines.len(), inputs.len(), "{stdout}");
    for (i, (src, hyp)) in inputs.iter().zip(&lines).enumerate() {
        // Blank in, blank out (a barely trained model may also translate real text to "").
        if src.iter().all(|b| b.is_ascii_whitespace()) {
            assert!(hyp.is_empty(), "line {}: blank input gave {hyp:?}", i + 1);
        }
    }
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("stdin:6: invalid UTF-8 replaced"),
        "{stderr}"
    );
    assert!(
        stderr.contains("stdin:8: longer than 250 pieces; cropped"),
        "{stderr}"
    );
    assert!(
        stderr.contains("translated 51 lines (49 non-empty)"),
        "{stderr}"
    );
    let produced: usize = lines.iter().filter(|l| !l.is_empty()).count();
    assert!(
        produced >= 40,
        "the test model should produce output: {stdout}"
    );
}

#[test]
fn translations_do_not_depend_on_batch_size_or_threads() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let m = model(d);
    let input = hostile_input();
    // n-best lists print every hypothesis with its score: equal output means equal bits up
    // to the printed digits, not just equal best strings.
    for (beam, matmul) in [("1", "f32"), ("5", "f32"), ("5", "bf16")] {
        let mut reference: Option<Vec<u8>> = None;
        for (batch, threads) in [("1", "1"), ("7", "2"), ("64", "1"), ("64", "2")] {
            let out = translate(
                &[
                    "-m",
                    m.to_str().unwrap(),
                    "--beam-size",
                    beam,
                    "--n-best",
                    beam,
                    "--matmul",
                    matmul,
                    "--batch-size",
                    batch,
                    "--threads",
                    threads,
                    "-q",
                ],
                &input,
                d,
            );
            assert!(out.status.success());
            match &reference {
                None => reference = Some(out.stdout),
                Some(r) => assert!(
                    r == &out.stdout,
                    "beam {beam}, {matmul}, batch {batch}, threads {threads} differs"
                ),
            }
        }
    }
}

#[test]
fn n_best_and_json_formats() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let m = model(d);
    let m = m.to_str().unwrap();
    let out = ok(translate(
        &["-m", m, "--n-best", "3", "-q"],
        b"ba ko mi\n\nre sa\n",
        d,
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3 + 1 + 3, "{out}");
    assert!(
        lines[0].starts_with("0 ||| ")
            && lines[3] == "1 |||  ||| 0"
            && lines[4].starts_with("2 ||| "),
        "{out}"
    );
    let scores: Vec<f64> = lines[..3]
        .iter()
        .map(|l| l.rsplit(" ||| ").next().unwrap().parse().unwrap())
        .collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");

    let out = ok(translate(
        &["-m", m, "--format", "json", "--attention", "-q"],
        b"ba ko mi\n\n",
        d,
    ));
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["id"], 0);
    let attention = rows[0]["attention"].as_array().unwrap();
    let tokens = rows[0]["tokens"].as_array().unwrap().len();
    assert!(attention.len() == tokens || attention.len() == tokens + 1);
    for row in attention {
        let sum: f64 = row
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .sum();
        assert!((sum - 1.0).abs() < 1e-3, "attention row sums to {sum}");
    }
    assert_eq!(rows[1]["translation"], "");
}

#[test]
fn files_in_and_out_and_bad_models() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let m = model(d);
    std::fs::write(d.join("in.txt"), "ba ko\n\nmi tu re\n").unwrap();
    ok(translate(
        &[
            "-m",
            m.to_str().unwrap(),
            "-i",
            "in.txt",
            "-o",
            "out.txt",
            "-q",
        ],
        b"",
        d,
    ));
    assert_eq!(
        std::fs::read_to_string(d.join("out.txt"))
            .unwrap()
            .lines()
            .count(),
        3
    );

    // Several files (and a directory of files) into --out-dir, line for line, same names.
    std::fs::create_dir(d.join("more")).unwrap();
    std::fs::write(d.join("more/a.txt"), "mi\n\n\nko ba\n").unwrap();
    std::fs::write(d.join("more/b.txt"), "").unwrap();
    let multi = |files: &[&str]| {
        let mut args = vec!["-m", m.to_str().unwrap(), "--out-dir", "outs", "-q"];
        args.extend_from_slice(files);
        translate(&args, b"", d)
    };
    ok(multi(&["in.txt", "more"]));
    for (name, lines) in [("in.txt", 3), ("a.txt", 4), ("b.txt", 0)] {
        let text = std::fs::read_to_string(d.join("outs").join(name)).unwrap();
        assert_eq!(text.lines().count(), lines, "{name}: {text:?}");
    }
    let blank: Vec<String> = std::fs::read_to_string(d.join("outs/a.txt"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert!(blank[1].is_empty() && blank[2].is_empty() && !blank[3].is_empty());
    std::fs::write(d.join("in2.txt"), "x\n").unwrap();
    std::fs::create_dir(d.join("dup")).unwrap();
    std::fs::write(d.join("dup/in.txt"), "x\n").unwrap();
    let e = err(multi(&["in.txt", "dup"]));
    assert!(e.contains("would both be written to"), "{e}");
    let e = err(translate(&["-m", m.to_str().unwrap(), "in.txt"], b"", d));
    assert!(e.contains("--out-dir"), "{e}");

    // The attention heat map of a sentence.
    ok(translate(
        &[
            "-m",
            m.to_str().unwrap(),
            "--attention-png",
            "att.png",
            "-q",
        ],
        b"ba ko mi\n",
        d,
    ));
    let png = std::fs::read(d.join("att.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let e = err(translate(
        &["-m", m.to_str().unwrap(), "--attention-png", "none.png"],
        b"\n\n",
        d,
    ));
    assert!(e.contains("no non-empty line"), "{e}");

    let e = String::from_utf8(translate(&["-m", "nowhere"], b"x\n", d).stderr).unwrap();
    assert!(
        e.contains("nowhere") && e.contains("not a model folder"),
        "{e}"
    );
    std::fs::write(m.join("model.safetensors"), b"\x80\x04 pickled").unwrap();
    let e = err(translate(&["-m", m.to_str().unwrap()], b"x\n", d));
    assert!(e.contains("is a Python pickle"), "{e}");
}

/// `gnmt export`: averaging a model with itself changes nothing; f16 storage halves the file
/// and still translates every line; generation defaults are written; mismatches are refused.
#[test]
fn export_averages_converts_and_sets_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let m = model(d);
    let m = m.to_str().unwrap();
    let input = b"ba ko mi\ntu\n\nre mi ba ko\n";
    let reference = ok(translate(&["-m", m, "-q"], input, d));

    ok(gnmt(&["export", m, m, "-o", "avg"], d));
    assert_eq!(ok(translate(&["-m", "avg", "-q"], input, d)), reference);

    let out = ok(gnmt(
        &[
            "export",
            m,
            "-o",
            "half",
            "--storage",
            "f16",
            "--beam-size",
            "3",
            "--alpha",
            "1.0",
        ],
        d,
    ));
    assert!(out.contains("F16"), "{out}");
    let size = |p: &str| {
        std::fs::metadata(d.join(p).join("model.safetensors"))
            .unwrap()
            .len()
    };
    assert!(
        size("half") * 2 <= size("avg") + 4096,
        "{} vs {}",
        size("half"),
        size("avg")
    );
    let generation: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("half/generation.json")).unwrap())
            .unwrap();
    assert_eq!(generation["beam_size"], 3);
    assert_eq!(generation["alpha"], 1.0);
    let half = ok(translate(&["-m", "half", "-q"], input, d));
    assert_eq!(half.lines().count(), 4);

    // Another vocabulary cannot be averaged in.
    std::fs::create_dir(d.join("other")).unwrap();
    for f in [
        "config.json",
        "generation.json",
        "model.safetensors",
        "tokenizer.json",
    ] {
        std::fs::copy(d.join("model").join(f), d.join("other").join(f)).unwrap();
    }
    let tokenizer = std::fs::read_to_string(d.join("other/tokenizer.json")).unwrap();
    std::fs::write(
        d.join("other/tokenizer.json"),
        tokenizer.replacen("\"ba\"", "\"bb\"", 1),
    )
    .unwrap();
    let e = err(gnmt(&["export", m, "other", "-o", "bad"], d));
    assert!(
        e.contains("other") && (e.contains("vocabulary") || e.contains("tokenizer")),
        "{e}"
    );
}

/// int8: `export --quantize int8` writes a file about half of f16's that translates every
/// line; int8 products (`--quantize int8`) on it or on the f32 model translate every line, the
/// same whatever the batch size or thread count; training refuses int8 products.
#[test]
fn int8_export_and_decoding() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let m = model(d);
    let m = m.to_str().unwrap();
    let out = ok(gnmt(&["export", m, "-o", "q8", "--quantize", "int8"], d));
    assert!(out.contains("Int8"), "{out}");
    ok(gnmt(&["export", m, "-o", "half", "--storage", "f16"], d));
    let size = |p: &str| {
        std::fs::metadata(d.join(p).join("model.safetensors"))
            .unwrap()
            .len()
    };
    assert!(
        size("q8") < size("half"),
        "{} vs {}",
        size("q8"),
        size("half")
    );
    let input = hostile_input();
    let lines = input.split(|&b| b == b'\n').count();
    for model in ["q8", m] {
        let one = ok(translate(
            &[
                "-m",
                model,
                "-q",
                "--quantize",
                "int8",
                "--batch-size",
                "1",
                "--threads",
                "1",
            ],
            &input,
            d,
        ));
        assert_eq!(one.lines().count(), lines, "{model}");
        let many = ok(translate(
            &[
                "-m",
                model,
                "-q",
                "--matmul",
                "int8",
                "--batch-size",
                "16",
                "--threads",
                "3",
            ],
            &input,
            d,
        ));
        assert_eq!(one, many, "{model}: int8 translations depend on the batch");
    }
    // Without --matmul a folder decodes in the products it was stored for: the int8 one in
    // int8 where the CPU multiplies int8 fast (AVX512-VNNI), else in f32, as the summary says;
    // the f16 one in f32. --matmul f32 still gives f32 products on int8 weights.
    let run = |model: &str, extra: &[&str]| {
        let out = translate(&[&["-m", model][..], extra].concat(), &input, d);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (ok(out), stderr)
    };
    let (stored, summary) = run("q8", &[]);
    let int8_fast = gnmt_kernels::gemm::accelerated_int8();
    let expected = if int8_fast { "int8" } else { "f32" };
    assert!(
        summary.contains(&format!("with {expected} products")),
        "{summary}"
    );
    let (as_given, _) = run("q8", &["-q", "--matmul", expected]);
    assert_eq!(stored, as_given, "the stored products are {expected}'s");
    let (plain, summary) = run("q8", &["--matmul", "f32"]);
    assert!(summary.contains("with f32 products"), "{summary}");
    assert_eq!(plain.lines().count(), lines, "f32 products on int8 weights");
    let (_, summary) = run("half", &[]);
    assert!(summary.contains("with f32 products"), "{summary}");
    if !int8_fast {
        eprintln!("skipped: int8 products by default (this CPU lacks AVX512-VNNI)");
    }
    let e = err(gnmt(
        &[
            "--matmul",
            "int8",
            "train",
            "--train",
            "train.src",
            "train.tgt",
            "--config",
            "config.json",
            "-o",
            "r8",
            "--max-steps",
            "1",
        ],
        d,
    ));
    assert!(e.contains("int8 is for decoding"), "{e}");
}

/// `--shard I/N` translates the I-th of N contiguous parts of the file: the parts joined in
/// order are byte for byte the whole file's translation; a finished part is skipped when run
/// again (its marker); a Slurm array task finds its part in the environment; bad shards are
/// refused where parsed.
#[test]
fn shards_joined_are_the_whole_translation() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let m = model(d);
    let m = m.to_str().unwrap();
    std::fs::write(d.join("in.txt"), hostile_input()).unwrap();
    ok(translate(
        &["-m", m, "-i", "in.txt", "-o", "whole.txt", "-q"],
        b"",
        d,
    ));
    let whole = std::fs::read(d.join("whole.txt")).unwrap();
    let mut parts = Vec::new();
    for i in 0..3 {
        let (shard, out) = (format!("{i}/3"), format!("part{i}.txt"));
        ok(translate(
            &["-m", m, "-i", "in.txt", "-o", &out, "--shard", &shard, "-q"],
            b"",
            d,
        ));
        assert!(d.join(format!("{out}.done")).is_file());
        parts.push(std::fs::read(d.join(&out)).unwrap());
    }
    let joined = parts.concat();
    assert_eq!(
        String::from_utf8_lossy(&joined),
        String::from_utf8_lossy(&whole)
    );
    let again = translate(
        &["-m", m, "-i", "in.txt", "-o", "part1.txt", "--shard", "1/3"],
        b"",
        d,
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("already translated"));
    // Another setting is another translation: the part is done again.
    let beam = translate(
        &[
            "-m",
            m,
            "-i",
            "in.txt",
            "-o",
            "part1.txt",
            "--shard",
            "1/3",
            "--beam-size",
            "2",
        ],
        b"",
        d,
    );
    assert!(!String::from_utf8_lossy(&beam.stderr).contains("already translated"));
    let task = Command::new(env!("CARGO_BIN_EXE_translate"))
        .args(["-m", m, "-i", "in.txt", "-o", "task.txt", "-q"])
        .current_dir(d)
        .env("SLURM_ARRAY_TASK_ID", "4")
        .env("SLURM_ARRAY_TASK_MIN", "3")
        .env("SLURM_ARRAY_TASK_COUNT", "3")
        .output()
        .unwrap();
    ok(task);
    assert_eq!(std::fs::read(d.join("task.txt")).unwrap(), parts[1]);
    for (bad, says) in [("3/3", "below N"), ("1", "I/N"), ("0/0", "from 1")] {
        let e = err(translate(
            &["-m", m, "-i", "in.txt", "-o", "x", "--shard", bad],
            b"",
            d,
        ));
        assert!(e.contains(says), "{bad}: {e}");
    }
    let e = err(translate(&["-m", m, "--shard", "0/2"], b"x\n", d));
    assert!(e.contains("--input") || e.contains("-i"), "{e}");
}

/// An ensemble of a model with itself translates exactly as the model does, scores of every
/// n-best entry included, under both combinations (the mean of equal distributions is that
/// distribution, bit for bit); models with different vocabularies, and a weight count that
/// does not match the models, are refused.
#[test]
fn an_ensemble_of_a_model_with_itself_is_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    model(d);
    let input = hostile_input();
    let run = |extra: &[&str]| {
        let mut args = vec!["-q", "--n-best", "3", "--beam-size", "4"];
        args.extend_from_slice(extra);
        ok(translate(&args, &input, d))
    };
    let alone = run(&["-m", "model"]);
    assert!(alone.lines().count() >= 3 * 40, "{alone}");
    assert_eq!(run(&["-m", "model", "-m", "model"]), alone);
    assert_eq!(
        run(&[
            "-m",
            "model",
            "-m",
            "model",
            "--ensemble",
            "linear",
            "--weights",
            "2,2"
        ]),
        alone
    );
    let shipped = crate::repo_root().join("models/multi30k-en-de");
    let e = err(translate(
        &["-m", "model", "-m", shipped.to_str().unwrap()],
        b"x\n",
        d,
    ));
    assert!(e.contains("its vocabulary is not that of model"), "{e}");
    let e = err(translate(
        &["-m", "model", "-m", "model", "--weights", "1,2,3"],
        b"x\n",
        d,
    ));
    assert!(e.contains("--weights has 3 values for 2 model(s)"), "{e}");
    let e = err(translate(&["-m", "model", "--weights", "1,-2"], b"x\n", d));
    assert!(e.contains("--weights"), "{e}");
}

/// `gnmt shortlist` learns a lexical table from the training corpus (with the target pieces'
/// frequencies on `NULL` lines). Translating over shortlists that hold every piece the corpus
/// has gives the full vocabulary's translations; short lists still give one line per line, and
/// `eval` takes them too. A table with a malformed line or a piece the model lacks is refused,
/// naming the file and the line.
#[test]
fn shortlists_learned_from_the_corpus_translate_and_bad_tables_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    model(d);
    let out = ok(gnmt(
        &[
            "shortlist",
            "-m",
            "model",
            "--train",
            "train.src",
            "train.tgt",
            "-o",
            "lex.s2t",
        ],
        d,
    ));
    assert!(out.contains("wrote lex.s2t"), "{out}");
    let table = std::fs::read_to_string(d.join("lex.s2t")).unwrap();
    let sources: Vec<&str> = table
        .lines()
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    assert!(sources.contains(&"NULL"), "{table}");
    assert!(sources.iter().any(|&s| s != "NULL"), "{table}");

    let input = b"ba ko mi tu\nre sa ni po le du\nfi\nmi tu re mi tu re\n";
    let full = ok(translate(
        &["-m", "model", "-q", "--beam-size", "3"],
        input,
        d,
    ));
    let run = |first: &str, best: &str| {
        ok(translate(
            &[
                "-m",
                "model",
                "-q",
                "--beam-size",
                "3",
                "--shortlist",
                "lex.s2t",
                "--shortlist-first",
                first,
                "--shortlist-best",
                best,
            ],
            input,
            d,
        ))
    };
    assert_eq!(run("1000000", "1000000"), full);
    assert_eq!(run("0", "1").lines().count(), full.lines().count());
    let eval = ok(gnmt(
        &[
            "eval",
            "-m",
            "model",
            "--src",
            "valid.src",
            "--ref",
            "valid.tgt",
            "--shortlist",
            "lex.s2t",
        ],
        d,
    ));
    assert!(eval.contains("BLEU"), "{eval}");

    std::fs::write(d.join("short.s2t"), "x 0.5\n").unwrap();
    let e = err(translate(
        &["-m", "model", "--shortlist", "short.s2t"],
        b"x\n",
        d,
    ));
    assert!(e.contains("short.s2t:1: expected 3 fields"), "{e}");
    std::fs::write(d.join("bad.s2t"), "\n▁no-such-piece-here NULL 0.5\n").unwrap();
    let e = err(translate(
        &["-m", "model", "--shortlist", "bad.s2t"],
        b"x\n",
        d,
    ));
    assert!(e.contains("bad.s2t:2:"), "{e}");
    assert!(e.contains("not in the model's vocabulary"), "{e}");
}
