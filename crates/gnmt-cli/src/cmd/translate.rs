//! The `translate` binary's arguments. Decoding arrives with the model and beam-search work;
//! until then `translate` says so instead of pretending.

use std::path::PathBuf;

use clap::Parser;

/// Translate text with a trained gnmt model: one output line per input line, in order.
#[derive(Debug, Parser)]
#[command(name = "translate", version, about, long_about = None)]
pub struct TranslateArgs {
    /// Model folder (config.json, model.safetensors, tokenizer.json).
    #[arg(short, long)]
    pub model: Option<PathBuf>,
    /// Input file (default: stdin; `-` also means stdin).
    #[arg(short, long)]
    pub input: Option<PathBuf>,
    /// Output file (default: stdout; `-` also means stdout).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

impl TranslateArgs {
    pub fn run(self) -> anyhow::Result<()> {
        anyhow::bail!(
            "translation is not available yet: this build has no model code and ships no default model \
             (see README.md, \"Status\")"
        )
    }
}
