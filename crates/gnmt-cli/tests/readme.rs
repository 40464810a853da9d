//! Every `gnmt` and `translate` command in the shell blocks of README.md and docs/*.md is parsed by the real
//! argument parsers: a renamed flag or command fails this test instead of rotting the README.
//! (The first README command runs in `shipped.rs`; the second is what CI runs.)

use clap::Parser;

/// Shell words of one command segment: whitespace-separated, double quotes kept together.
fn words(segment: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in segment.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

/// README.md and every `docs/*.md`.
fn documents() -> Vec<(std::path::PathBuf, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut paths = vec![root.join("README.md")];
    let mut docs: Vec<_> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    paths.extend(docs);
    paths
        .into_iter()
        .map(|p| {
            let text =
                std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, text)
        })
        .collect()
}

/// The commands of the documents' ```sh blocks, continuation lines joined, comments removed,
/// split at pipes and redirections; under `mpirun` or `srun`, the command they launch.
fn readme_commands() -> Vec<Vec<String>> {
    documents()
        .iter()
        .flat_map(|(_, text)| commands_in(text))
        .collect()
}

fn commands_in(readme: &str) -> Vec<Vec<String>> {
    let mut commands = Vec::new();
    let mut in_block = false;
    let mut pending = String::new();
    for line in readme.lines() {
        if line.starts_with("```") {
            in_block = line == "```sh";
            continue;
        }
        if !in_block {
            continue;
        }
        let code = match line.find(" #") {
            Some(i) => &line[..i],
            None if line.trim_start().starts_with('#') => "",
            None => line,
        };
        if let Some(head) = code.trim_end().strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(code);
        let full = std::mem::take(&mut pending);
        for segment in full.split(['|', '<', '>', ';']) {
            let mut w = words(segment);
            // A launcher's own options come first: `mpirun -np 4 gnmt train ...`.
            if matches!(w.first().map(String::as_str), Some("mpirun" | "srun")) {
                let program = w.iter().position(|x| x == "gnmt" || x == "translate");
                w.drain(..program.unwrap_or(w.len()));
            }
            if matches!(w.first().map(String::as_str), Some("gnmt" | "translate")) {
                commands.push(w);
            }
        }
    }
    commands
}

#[test]
fn every_readme_command_parses() {
    let commands = readme_commands();
    let count = |name: &str| commands.iter().filter(|c| c[0] == name).count();
    assert!(
        count("gnmt") >= 10 && count("translate") >= 5,
        "{commands:?}"
    );
    for c in &commands {
        let parsed = match c[0].as_str() {
            "gnmt" => gnmt_cli::Cli::try_parse_from(c).map(|_| ()),
            _ => gnmt_cli::cmd::translate::TranslateArgs::try_parse_from(c).map(|_| ()),
        };
        if let Err(e) = parsed {
            panic!("README command {:?} does not parse:\n{e}", c.join(" "));
        }
    }
}

/// The README stays a front page; depth goes to docs/.
#[test]
fn the_readme_stays_short() {
    let (_, readme) = &documents()[0];
    let lines = readme.lines().count();
    assert!(
        lines <= 150,
        "README.md has {lines} lines; move depth to docs/"
    );
}

#[test]
fn a_misspelt_flag_would_be_caught() {
    let bad = words("gnmt train --train a b --valid c d -o run --max-stepz 5");
    assert!(gnmt_cli::Cli::try_parse_from(&bad).is_err());
}
