use crate::{err, gnmt, ok};

#[test]
fn help_lists_the_commands() {
    let dir = tempfile::tempdir().unwrap();
    let help = ok(gnmt(&["--help"], dir.path()));
    for cmd in [
        "vocab", "encode", "decode", "prepare", "synth", "score", "train", "bench",
    ] {
        assert!(help.contains(cmd), "{cmd} missing from:\n{help}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_translate"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("--model"));
}

#[test]
fn broken_corpora_are_reported_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("a.en"), "one\ntwo\nthree\n").unwrap();
    std::fs::write(d.join("a.de"), "eins\nzwei\n").unwrap();
    std::fs::write(d.join("bad.de"), b"eins\nzw\xc3ei\ndrei\n").unwrap();
    ok(gnmt(
        &["synth", "--task", "copy", "--pairs", "200", "-o", "toy"],
        d,
    ));
    ok(gnmt(
        &[
            "vocab", "--train", "toy.src", "toy.tgt", "--size", "300", "-o", "v",
        ],
        d,
    ));

    let e = err(gnmt(
        &[
            "prepare",
            "--train",
            "a.en",
            "a.de",
            "--vocab",
            "v/tokenizer.json",
        ],
        d,
    ));
    assert!(
        e.contains("a.en has 3 lines but") && e.contains("a.de has 2"),
        "{e}"
    );
    let e = err(gnmt(
        &[
            "prepare",
            "--train",
            "a.en",
            "bad.de",
            "--vocab",
            "v/tokenizer.json",
        ],
        d,
    ));
    assert!(
        e.contains("bad.de:2: invalid UTF-8 at byte offset 7"),
        "{e}"
    );
    // Vocabulary training reads the files itself and says the same, in `gnmt vocab` and in
    // `gnmt train` without --tokenizer.
    let e = err(gnmt(
        &[
            "vocab", "--train", "toy.src", "bad.de", "--size", "300", "-o", "v2",
        ],
        d,
    ));
    assert!(
        e.contains("bad.de:2: invalid UTF-8 at byte offset 7 (byte sequence [c3] is not"),
        "{e}"
    );
    assert!(!d.join("v2/tokenizer.json").exists());
    let e = err(gnmt(
        &[
            "train", "--train", "bad.de", "bad.de", "--valid", "toy.src", "toy.tgt", "-o", "run2",
        ],
        d,
    ));
    assert!(
        e.contains("bad.de:2: invalid UTF-8 at byte offset 7"),
        "{e}"
    );
    // Training refuses the same corpora before doing any work.
    let e = err(gnmt(
        &[
            "train",
            "--train",
            "a.en",
            "a.de",
            "--valid",
            "toy.src",
            "toy.tgt",
            "-o",
            "run",
            "--tokenizer",
            "v/tokenizer.json",
        ],
        d,
    ));
    assert!(e.contains("a.en has 3 lines but"), "{e}");
    assert!(!d
        .join("run/checkpoints")
        .read_dir()
        .map(|mut r| r.next().is_some())
        .unwrap_or(false));
}

/// Nonsense is refused where it is parsed, naming the range; what is legal but costly runs
/// with a warning.
#[test]
fn vocab_can_split_punctuation_from_words() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let en = "A dog runs on the beach.\nTwo men, a woman and a dog.\nA man's hat.\n".repeat(20);
    let de =
        "Ein Hund rennt am Strand.\nZwei Männer, eine Frau und ein Hund.\nDer Hut.\n".repeat(20);
    std::fs::write(d.join("c.en"), en).unwrap();
    std::fs::write(d.join("c.de"), de).unwrap();
    let program = std::path::Path::new(env!("CARGO_BIN_EXE_gnmt"));
    let run = |args: &[&str], input: &str| {
        crate::support::output_lines(crate::support::run_translate(program, args, d, input))
    };
    for (folder, split) in [("joined", false), ("split", true)] {
        let mut args = vec![
            "vocab", "--train", "c.en", "c.de", "--size", "500", "-o", folder,
        ];
        if split {
            args.push("--split-punctuation");
        }
        ok(gnmt(&args, d));
        let vocab = format!("{folder}/tokenizer.json");
        let pieces = run(
            &["encode", "--vocab", &vocab, "--pieces"],
            "Zwei Männer, am Strand.",
        );
        let pieces = pieces.join(" ");
        let marks_alone = pieces.ends_with(" .") && pieces.contains(" , ");
        assert_eq!(marks_alone, split, "{folder}: {pieces}");
        let text = "Zwei Männer, ein Hund (am \"Strand\")...";
        let ids = run(&["encode", "--vocab", &vocab], text).join("\n");
        assert_eq!(run(&["decode", "--vocab", &vocab], &ids), [text]);
    }
}

#[test]
fn options_are_checked_when_parsed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let e = err(gnmt(
        &["synth", "--task", "copy", "--pairs", "0", "-o", "toy"],
        d,
    ));
    assert!(
        e.contains("invalid value '0' for --pairs: must be a whole number from 1 to"),
        "{e}"
    );
    assert!(!d.join("toy.src").exists());
    let e = err(gnmt(
        &[
            "train", "--train", "a", "b", "--valid", "c", "d", "-o", "r", "--lr", "nan",
        ],
        d,
    ));
    assert!(
        e.contains("invalid value 'nan' for --lr: must be a finite number in (0, 10]"),
        "{e}"
    );
    let out = gnmt(
        &[
            "--threads",
            "1000",
            "synth",
            "--task",
            "copy",
            "--pairs",
            "5",
            "-o",
            "toy",
        ],
        d,
    );
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: --threads 1000: more threads than this machine has cores"),
        "{stderr}"
    );
    for args in [
        &["--beam-size", "0"][..],
        &["--batch-size", "0"],
        &["--max-input-len", "0"],
        &["--alpha", "nan"],
        &["--beam-size", "5000"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_translate"))
            .args(args)
            .current_dir(d)
            .output()
            .unwrap();
        let e = err(out);
        assert!(
            e.contains(&format!("invalid value '{}' for {}", args[1], args[0])),
            "{e}"
        );
    }
}

#[test]
fn score_matches_the_pinned_sacrebleu_value() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("ref"),
        "The dog bit the man.\nIt was not unexpected.\nThe man bit him first.\n",
    )
    .unwrap();
    std::fs::write(
        d.join("hyp"),
        "The dog bit the man.\nIt wasn't surprising.\nThe man had just bitten him.\n",
    )
    .unwrap();
    let out = ok(gnmt(&["score", "ref", "hyp"], d));
    assert!(
        out.starts_with("BLEU|nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:gnmt-metrics-"),
        "{out}"
    );
    assert!(out.contains(" = 45.07 "), "{out}");
    assert!(out.contains("chrF2|") && out.contains(" = 50.04"), "{out}");
    // sacreBLEU's README example: two reference files.
    std::fs::write(
        d.join("ref2"),
        "The dog had bit the man.\nNo one was surprised.\nThe man had bitten the dog.\n",
    )
    .unwrap();
    let out = ok(gnmt(&["bleu", "ref", "ref2", "-i", "hyp"], d));
    assert!(
        out.starts_with("BLEU|nrefs:2|") && out.contains(" = 48.53 "),
        "{out}"
    );
    let out = ok(gnmt(&["chrf", "ref", "-i", "hyp"], d));
    assert!(
        out.starts_with("chrF2|nrefs:1|") && out.trim_end().ends_with(" = 50.04"),
        "{out}"
    );
    std::fs::write(d.join("short"), "one line\n").unwrap();
    let e = err(gnmt(&["bleu", "short", "-i", "hyp"], d));
    assert!(e.contains("short has 1 lines but hyp has 3"), "{e}");
}

/// `gnmt ... | head -1` ends quietly, like any Unix filter.
#[test]
fn a_closed_pipe_is_not_a_panic() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(gnmt(
        &["synth", "--task", "copy", "--pairs", "200", "-o", "toy"],
        d,
    ));
    ok(gnmt(
        &[
            "vocab", "--train", "toy.src", "toy.tgt", "--size", "300", "-o", "v",
        ],
        d,
    ));
    let big: String = (0..200_000).map(|i| format!("ba ko {i}\n")).collect();
    std::fs::write(d.join("big.txt"), big).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gnmt"))
        .args(["encode", "--vocab", "v/tokenizer.json"])
        .current_dir(d)
        .stdin(std::fs::File::open(d.join("big.txt")).unwrap())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap(); // then closed
    let out = child.wait_with_output().unwrap();
    assert!(!first.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `--threads` sizes the pool the work runs on, in the measurement's own process.
#[test]
fn threads_flag_sizes_the_worker_pool() {
    let dir = tempfile::tempdir().unwrap();
    for n in ["1", "2"] {
        let out = ok(gnmt(
            &[
                "--threads",
                n,
                "--matmul",
                "f32",
                "bench",
                "model",
                "--single",
                "--preset",
                "tiny",
                "--batch",
                "2",
                "--steps",
                "1",
            ],
            dir.path(),
        ));
        assert!(
            out.contains(&format!("threads={n} (fused, f32 products)")),
            "{out}"
        );
    }
}

/// Completions and man pages come from the same definitions that parse the command lines.
#[test]
fn completions_and_man_pages_cover_both_programs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bash = ok(gnmt(&["completions", "bash"], d));
    assert!(
        bash.contains("_gnmt()") && bash.contains("--max-steps"),
        "{bash}"
    );
    let zsh = ok(gnmt(&["completions", "zsh", "--program", "translate"], d));
    assert!(
        zsh.starts_with("#compdef translate") && zsh.contains("--beam-size"),
        "{zsh}"
    );
    let e = err(gnmt(&["completions", "tcsh"], d));
    assert!(e.contains("invalid value 'tcsh'"), "{e}");
    let said = ok(gnmt(&["man", "-o", "man"], d));
    assert!(said.contains(" man pages"), "{said}");
    let train = std::fs::read_to_string(d.join("man/gnmt-train.1")).unwrap();
    assert!(
        train.contains(".TH gnmt-train 1") && train.contains("max\\-steps"),
        "{train}"
    );
    let translate = std::fs::read_to_string(d.join("man/translate.1")).unwrap();
    assert!(translate.contains("beam\\-size"), "{translate}");
    assert!(d.join("man/gnmt-bench-translate.1").is_file());
}

/// `--device`: `auto` runs on the CPU when there is no GPU (and translates as the CPU does);
/// a GPU asked for by a program built without CUDA, or a misspelt device, is refused with
/// what to do.
#[test]
fn devices_are_chosen_and_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let translate = std::path::Path::new(env!("CARGO_BIN_EXE_translate"));
    let run = |args: &[&str]| {
        let mut child = std::process::Command::new(translate)
            .args(["-q", "--beam-size", "1"])
            .args(args)
            .current_dir(d)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        // A refused option ends the program before it reads: the pipe may be closed already.
        let _ = stdin.write_all(b"A man is riding a bicycle.\n");
        drop(stdin);
        child.wait_with_output().unwrap()
    };
    let cpu = ok(run(&["--device", "cpu"]));
    assert!(cpu.starts_with("Ein"), "{cpu}");
    if cfg!(not(feature = "cuda")) {
        assert_eq!(ok(run(&["--device", "auto"])), cpu);
        let e = err(run(&["--device", "cuda:1"]));
        assert!(
            e.contains("built without CUDA") && e.contains("--features cuda"),
            "{e}"
        );
        let e = err(gnmt(&["--device", "cuda", "bench", "train", "--single"], d));
        assert!(e.contains("built without CUDA"), "{e}");
    }
    let e = err(run(&["--device", "gpu"]));
    assert!(e.contains("cpu, cuda, cuda:N"), "{e}");
}

/// `check-device` on the CPU: every operation and the network, fused (f32 and bf16 products)
/// against the reference, all within tolerance; each operation is named in the report.
#[test]
fn check_device_passes_on_the_cpu_and_names_every_operation() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = ok(gnmt(&["check-device"], d));
    for op in [
        "linear out 0",
        "additive_scores d v",
        "embedding d table",
        "lstm_layer reverse d w_hh",
        "token_losses d weight",
        "attention_step out 1",
        "model d encoder.lstm.weight_ih_l0_reverse",
        "model (previous query) step 3 log-probs",
    ] {
        assert!(out.contains(op), "{op} missing:\n{out}");
    }
    assert!(!out.contains("FAILED"), "{out}");
    let last = out.lines().last().unwrap();
    let (passed, all) = last.split_once(" of ").unwrap();
    assert_eq!(passed, all.split_whitespace().next().unwrap(), "{last}");
    let bf16 = ok(gnmt(
        &["--matmul", "bf16", "check-device", "--failures-only"],
        d,
    ));
    assert_eq!(
        bf16.lines().count(),
        2,
        "only the header and the summary:\n{bf16}"
    );
    assert!(bf16.contains("tolerance 3e-2"), "{bf16}");
}

/// `gnmt serve` as users run it: the built-in model on a free port, a LibreTranslate request
/// answered, and SIGTERM ending it with exit status 0. Bad options are refused before any
/// model loads.
#[test]
fn serve_answers_and_stops_cleanly_on_sigterm() {
    use std::io::{BufRead, BufReader, Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let e = err(gnmt(&["serve", "-m", "models/x"], dir.path()));
    assert!(e.contains("SRC-TGT=DIR"), "{e}");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gnmt"))
        .args(["serve", "--port", "0"])
        .current_dir(dir.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    let address = first
        .trim()
        .rsplit("http://")
        .next()
        .unwrap_or_else(|| panic!("no address in {first:?}"))
        .to_string();
    assert!(first.starts_with("serving en-de on "), "{first}");
    let body = r#"{"q": "A man is riding a bicycle.", "source": "en", "target": "de"}"#;
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    write!(
        stream,
        "POST /translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains(r#"{"translatedText":"Ein "#), "{reply}");
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(status.success(), "{status:?}: {rest}");
    assert!(rest.contains("stopped"), "{rest}");
}

/// Started by a launcher as one of several processes, a build without the `mpi` feature
/// refuses to run (each process would train alone into the same folder) and says how to
/// build one that can; a launch of one process runs as usual.
#[cfg(not(feature = "mpi"))]
#[test]
fn several_processes_need_the_mpi_feature() {
    let dir = tempfile::tempdir().unwrap();
    let launched = |size: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_gnmt"))
            .args(["synth", "--task", "copy", "--pairs", "5", "-o", "s"])
            .current_dir(dir.path())
            .env("OMPI_COMM_WORLD_RANK", "0")
            .env("OMPI_COMM_WORLD_SIZE", size)
            .output()
            .unwrap()
    };
    let e = err(launched("2"));
    assert!(e.contains("mpirun started 2 processes"), "{e}");
    assert!(e.contains("--features mpi"), "{e}");
    ok(launched("1"));
}
