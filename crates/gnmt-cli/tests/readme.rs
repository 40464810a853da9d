//! Every `gnmt` and `translate` command in README.md's shell blocks is parsed by the real
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

/// The commands of the README's ```sh blocks, continuation lines joined, comments removed,
/// split at pipes and redirections.
fn readme_commands() -> Vec<Vec<String>> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md");
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
            let w = words(segment);
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

#[test]
fn a_misspelt_flag_would_be_caught() {
    let bad = words("gnmt train --train a b --valid c d -o run --max-stepz 5");
    assert!(gnmt_cli::Cli::try_parse_from(&bad).is_err());
}
