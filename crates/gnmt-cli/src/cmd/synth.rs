use std::path::PathBuf;

use crate::checked::{self, whole};
use anyhow::Context;
use clap::{Args, ValueEnum};
use std::io::Write;

use gnmt_tokenizer::io::AtomicFile;
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
    /// What the target is made of from the source.
    #[arg(long, value_enum)]
    pub task: Task,
    /// Number of sentence pairs.
    #[arg(long, default_value_t = 10_000, value_parser = whole::<usize>(1, 1_000_000_000))]
    pub pairs: usize,
    /// Distinct words (1 to 32).
    #[arg(long, default_value_t = 16, value_parser = whole::<usize>(1, 32))]
    pub symbols: usize,
    /// Shortest sentence, in words.
    #[arg(long, default_value_t = 1, value_parser = whole::<usize>(1, 1000))]
    pub min_len: usize,
    /// Longest sentence, in words (at least --min-len).
    #[arg(long, default_value_t = 20, value_parser = whole::<usize>(1, 1000))]
    pub max_len: usize,
    /// Seed of the generator: the same seed writes the same corpus.
    #[arg(long, default_value_t = 1, value_parser = checked::seed())]
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
        let task = match self.task {
            Task::Copy => synthetic::Task::Copy,
            Task::Reverse => synthetic::Task::Reverse,
            Task::Sort => synthetic::Task::Sort,
        };
        // Streamed: a corpus of any size is written in constant memory.
        let path = |ext: &str| PathBuf::from(format!("{}.{ext}", self.output.display()));
        let (src_path, tgt_path) = (path("src"), path("tgt"));
        let mut src = AtomicFile::create(&src_path)?;
        let mut tgt = AtomicFile::create(&tgt_path)?;
        let pairs = task.pairs(self.symbols, self.min_len, self.max_len, self.seed);
        for (s, t) in pairs.take(self.pairs) {
            writeln!(src, "{s}").with_context(|| format!("writing {}", src_path.display()))?;
            writeln!(tgt, "{t}").with_context(|| format!("writing {}", tgt_path.display()))?;
        }
        for (file, path) in [(src, src_path), (tgt, tgt_path)] {
            file.commit()?;
            println!("wrote {}", path.display());
        }
        Ok(())
    }
}
