use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use gnmt_tokenizer::synthetic;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Task {
    /// Target = source.
    Copy,
    /// Target = source words in reverse order.
    Reverse,
    /// Target = source words sorted.
    Sort,
}

#[derive(Debug, Args)]
pub struct SynthArgs {
    #[arg(long, value_enum)]
    pub task: Task,
    /// Number of sentence pairs.
    #[arg(long, default_value_t = 10_000)]
    pub pairs: usize,
    /// Distinct words (1..=32).
    #[arg(long, default_value_t = 16)]
    pub symbols: usize,
    #[arg(long, default_value_t = 1)]
    pub min_len: usize,
    #[arg(long, default_value_t = 20)]
    pub max_len: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Output prefix: writes PREFIX.src and PREFIX.tgt.
    #[arg(short, long)]
    pub output: PathBuf,
}

impl SynthArgs {
    pub fn run(self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=32).contains(&self.symbols),
            "--symbols must be between 1 and 32"
        );
        anyhow::ensure!(
            1 <= self.min_len && self.min_len <= self.max_len,
            "need 1 <= --min-len <= --max-len"
        );
        let make = match self.task {
            Task::Copy => synthetic::copy_task,
            Task::Reverse => synthetic::reverse_task,
            Task::Sort => synthetic::sort_task,
        };
        let (src, tgt) = make(
            self.pairs,
            self.symbols,
            self.min_len,
            self.max_len,
            self.seed,
        );
        for (ext, lines) in [("src", src), ("tgt", tgt)] {
            let path = PathBuf::from(format!("{}.{ext}", self.output.display()));
            let mut text = lines.join("\n");
            text.push('\n');
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            println!("wrote {}", path.display());
        }
        Ok(())
    }
}
