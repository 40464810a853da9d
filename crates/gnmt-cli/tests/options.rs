//! Every option of every command, read from the clap definitions themselves: each has help
//! text, and each numeric one accepts exactly its range, refusing the values on either side of
//! it (and NaN and infinities) with a message that names the range. A numeric option added
//! without an entry in `RANGES` fails this test, so none slips in unchecked.

use std::any::TypeId;
use std::collections::BTreeSet;

use clap::CommandFactory;

/// (command, flag, accepted values): `lo..=hi` for whole numbers, an interval such as
/// `(0, 10]` for real numbers.
const RANGES: &[(&str, &str, &str)] = &[
    ("gnmt", "threads", "1..=1024"),
    ("gnmt vocab", "size", "277..=1000000"),
    ("gnmt vocab", "min-frequency", "1..=1000000000"),
    ("gnmt prepare", "max-len", "1..=100000"),
    ("gnmt prepare", "max-ratio", "[1, 1000]"),
    ("gnmt prepare", "max-tokens", "1..=100000000"),
    ("gnmt prepare", "max-sentences", "1..=1000000"),
    ("gnmt prepare", "seed", "0..=18446744073709551615"),
    ("gnmt synth", "pairs", "1..=1000000000"),
    ("gnmt synth", "symbols", "1..=32"),
    ("gnmt synth", "min-len", "1..=1000"),
    ("gnmt synth", "max-len", "1..=1000"),
    ("gnmt synth", "seed", "0..=18446744073709551615"),
    ("gnmt train", "max-steps", "1..=1000000000000"),
    ("gnmt train", "max-epochs", "1..=1000000"),
    ("gnmt train", "patience", "1..=1000000"),
    ("gnmt train", "save-every", "1..=1000000000000"),
    ("gnmt train", "valid-every", "1..=1000000000000"),
    ("gnmt train", "log-every", "1..=1000000000000"),
    ("gnmt train", "keep-last", "1..=1000000"),
    ("gnmt train", "seed", "0..=18446744073709551615"),
    ("gnmt train", "lr", "(0, 10]"),
    ("gnmt train", "dropout", "[0, 1)"),
    ("gnmt train", "label-smoothing", "[0, 1)"),
    ("gnmt train", "word-dropout-src", "[0, 1)"),
    ("gnmt train", "word-dropout-tgt", "[0, 1)"),
    ("gnmt train", "ema-decay", "(0, 1)"),
    ("gnmt train", "max-tokens", "1..=100000000"),
    ("gnmt train", "accumulate", "1..=4096"),
    ("gnmt train", "temperature", "(0, 100]"),
    ("gnmt eval", "beam-size", "1..=256"),
    ("gnmt eval", "weights", "(0, 1000000]"),
    ("gnmt eval", "alpha", "[0, 10]"),
    ("gnmt eval", "beta", "[0, 10]"),
    ("gnmt eval", "batch-size", "1..=65536"),
    ("gnmt eval", "shortlist-first", "0..=1000000"),
    ("gnmt eval", "shortlist-best", "1..=1000000"),
    ("gnmt shortlist", "iterations", "1..=100"),
    ("gnmt shortlist", "keep", "1..=100000"),
    ("gnmt shortlist", "min-probability", "[0, 1)"),
    ("gnmt bleu", "word-order", "0..=6"),
    ("gnmt chrf", "word-order", "0..=6"),
    ("gnmt score", "chrf-word-order", "0..=6"),
    ("gnmt export", "beam-size", "1..=256"),
    ("gnmt export", "alpha", "[0, 10]"),
    ("gnmt export", "beta", "[0, 10]"),
    ("gnmt study residuals", "layers", "1..=64"),
    ("gnmt study residuals", "hidden", "1..=16384"),
    ("gnmt study residuals", "steps", "1..=100000000"),
    ("gnmt study residuals", "valid-lines", "1..=100000000"),
    ("gnmt study residuals", "seed", "0..=18446744073709551615"),
    ("gnmt bench data", "vocab-size", "277..=1000000"),
    ("gnmt bench data", "repeat", "1..=1000"),
    ("gnmt bench data", "max-len", "1..=100000"),
    ("gnmt bench data", "max-ratio", "[1, 1000]"),
    ("gnmt bench data", "max-tokens", "1..=100000000"),
    ("gnmt bench data", "max-sentences", "1..=1000000"),
    ("gnmt bench data", "seed", "0..=18446744073709551615"),
    ("gnmt check-device", "seed", "0..=18446744073709551615"),
    ("gnmt serve", "port", "0..=65535"),
    ("gnmt bench serve", "clients", "1..=4096"),
    ("gnmt bench serve", "seconds", "1..=3600"),
    ("gnmt bench serve", "batch-wait-ms", "0..=10000"),
    ("gnmt bench serve", "batch-size", "1..=65536"),
    ("gnmt serve", "char-limit", "1..=100000000"),
    ("gnmt serve", "timeout-secs", "1..=86400"),
    ("gnmt serve", "batch-wait-ms", "0..=10000"),
    ("gnmt serve", "max-queue", "1..=10000000"),
    ("gnmt serve", "batch-size", "1..=65536"),
    ("gnmt bench train", "batch", "1..=65536"),
    ("gnmt bench train", "min-len", "1..=1000"),
    ("gnmt bench train", "max-len", "1..=1000"),
    ("gnmt bench train", "steps", "1..=100000"),
    ("gnmt bench train", "threads-list", "1..=1024"),
    ("gnmt bench train", "rounds", "1..=1000"),
    ("gnmt bench translate", "beams", "1..=256"),
    ("gnmt bench translate", "threads-list", "1..=1024"),
    ("gnmt bench translate", "batch-size", "1..=65536"),
    ("gnmt bench translate", "rounds", "1..=1000"),
    ("gnmt bench translate", "single", "1..=256"),
    ("gnmt bench translate", "shortlist-first", "0..=1000000"),
    ("gnmt bench translate", "shortlist-best", "1..=1000000"),
    ("translate", "beam-size", "1..=256"),
    ("translate", "alpha", "[0, 10]"),
    ("translate", "beta", "[0, 10]"),
    ("translate", "prune-margin", "(0, 1000]"),
    ("translate", "n-best", "1..=256"),
    ("translate", "weights", "(0, 1000000]"),
    ("translate", "batch-size", "1..=65536"),
    ("translate", "window", "1..=10000000"),
    ("translate", "max-input-len", "1..=100000"),
    ("translate", "threads", "1..=1024"),
    ("translate", "shortlist-first", "0..=1000000"),
    ("translate", "shortlist-best", "1..=1000000"),
];

/// Every command with its path ("gnmt bench train"), the two programs and their subcommands.
fn commands() -> Vec<(String, clap::Command)> {
    fn walk(cmd: &clap::Command, path: String, out: &mut Vec<(String, clap::Command)>) {
        out.push((path.clone(), cmd.clone()));
        for sub in cmd.get_subcommands() {
            walk(sub, format!("{path} {}", sub.get_name()), out);
        }
    }
    let mut out = Vec::new();
    walk(&gnmt_cli::Cli::command(), "gnmt".into(), &mut out);
    walk(
        &gnmt_cli::cmd::translate::TranslateArgs::command(),
        "translate".into(),
        &mut out,
    );
    out
}

fn is_numeric(arg: &clap::Arg) -> bool {
    let t = arg.get_value_parser().type_id();
    [
        TypeId::of::<usize>(),
        TypeId::of::<u64>(),
        TypeId::of::<u32>(),
        TypeId::of::<u16>(),
        TypeId::of::<f64>(),
        TypeId::of::<f32>(),
    ]
    .iter()
    .any(|id| t == *id)
}

/// Parses `--flag value` with the option's own definition, alone in a command of its own.
fn parse(arg: &clap::Arg, value: &str) -> Result<(), String> {
    let long = arg.get_long().expect("numeric options are flags");
    let probe = clap::Command::new("probe")
        .no_binary_name(true)
        .arg(arg.clone().required(false).global(false));
    probe
        .try_get_matches_from([format!("--{long}={value}")])
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Values the option must accept, values it must refuse, and the range its message names.
fn cases(spec: &str) -> (Vec<String>, Vec<String>, String) {
    let junk = ["nan", "inf", "-inf", "x", ""].map(String::from);
    if let Some((lo, hi)) = spec.split_once("..=") {
        let (lo, hi): (u64, u64) = (lo.parse().unwrap(), hi.parse().unwrap());
        let mut refused: Vec<String> = junk.to_vec();
        refused.extend(["-1".to_string(), format!("{lo}.5")]);
        if lo > 0 {
            refused.push((lo - 1).to_string());
        }
        refused.push(match hi.checked_add(1) {
            Some(h) => h.to_string(),
            None => "18446744073709551616".to_string(),
        });
        let accepted = vec![lo.to_string(), hi.to_string()];
        (accepted, refused, format!("from {lo} to {hi}"))
    } else {
        let lo_open = spec.starts_with('(');
        let hi_open = spec.ends_with(')');
        let (lo, hi) = spec[1..spec.len() - 1].split_once(", ").unwrap();
        let (lo, hi): (f64, f64) = (lo.parse().unwrap(), hi.parse().unwrap());
        let step = 1e-3 * (hi - lo);
        let mut accepted = vec![((lo + hi) / 2.0).to_string()];
        let mut refused: Vec<String> = junk.to_vec();
        refused.extend([(lo - step).to_string(), (hi + step).to_string()]);
        if lo_open {
            refused.push(lo.to_string())
        } else {
            accepted.push(lo.to_string())
        }
        if hi_open {
            refused.push(hi.to_string())
        } else {
            accepted.push(hi.to_string())
        }
        (accepted, refused, format!("in {spec}"))
    }
}

#[test]
fn every_numeric_option_accepts_its_range_and_refuses_the_rest() {
    let mut seen = BTreeSet::new();
    for (path, cmd) in commands() {
        for arg in cmd.get_arguments().filter(|a| is_numeric(a)) {
            let long = arg.get_long().unwrap();
            seen.insert((path.clone(), long.to_string()));
            let Some((_, _, spec)) = RANGES.iter().find(|(c, f, _)| *c == path && *f == long)
            else {
                panic!("`{path} --{long}` is numeric but has no entry in RANGES");
            };
            let (accepted, refused, range) = cases(spec);
            for v in &accepted {
                parse(arg, v).unwrap_or_else(|e| panic!("`{path} --{long} {v}` refused: {e}"));
            }
            for v in &refused {
                let e = parse(arg, v)
                    .err()
                    .unwrap_or_else(|| panic!("`{path} --{long} {v}` accepted"));
                assert!(
                    e.contains(&format!("for --{long}")) && e.contains(&range),
                    "`{path} --{long} {v}`: the message does not name the range {range}: {e}"
                );
            }
        }
    }
    for (path, long, _) in RANGES {
        assert!(
            seen.contains(&(path.to_string(), long.to_string())),
            "RANGES names `{path} --{long}`, which is not a numeric option"
        );
    }
}

#[test]
fn every_option_and_command_has_help() {
    for (path, cmd) in commands() {
        assert!(cmd.get_about().is_some(), "`{path}` has no description");
        for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
            let name = arg
                .get_long()
                .map_or(arg.get_id().to_string(), |l| format!("--{l}"));
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            assert!(!help.trim().is_empty(), "`{path} {name}` has no help text");
        }
    }
}
