//! `gnmt shortlist`: learns a lexical table from a parallel corpus in a model's pieces and
//! writes it in Marian's `lex.s2t` format, for `translate --shortlist`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use gnmt_infer::lexicon::{self, LexiconOptions};
use gnmt_model::checkpoint::TOKENIZER_FILE;
use gnmt_tokenizer::{read_parallel, Vocab};
use rayon::prelude::*;

use crate::checked::{real, whole, Interval};

#[derive(Debug, Args)]
pub struct ShortlistArgs {
    /// Model folder whose vocabulary the table is written in.
    #[arg(short, long)]
    pub model: PathBuf,
    /// Source and target training files (plain or gzip), aligned line by line.
    #[arg(long, num_args = 2, value_names = ["SRC", "TGT"], required = true)]
    pub train: Vec<PathBuf>,
    /// Output file (lex.s2t: `TARGET SOURCE PROBABILITY` per line).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Expectation-maximisation passes of IBM Model 1.
    #[arg(long, default_value_t = LexiconOptions::default().iterations,
          value_parser = whole::<usize>(1, 100))]
    pub iterations: usize,
    /// Translations written per source piece, most probable first.
    #[arg(long, default_value_t = LexiconOptions::default().keep,
          value_parser = whole::<usize>(1, 100_000))]
    pub keep: usize,
    /// Translations less probable than this are not written.
    #[arg(long, default_value_t = LexiconOptions::default().min_probability,
          value_parser = real::<f32>(Interval::below(0.0, 1.0)))]
    pub min_probability: f32,
}

impl ShortlistArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let start = Instant::now();
        let tokenizer = self.model.join(TOKENIZER_FILE);
        let vocab = Vocab::load(&tokenizer)
            .with_context(|| format!("loading the vocabulary of {}", self.model.display()))?;
        let corpus = read_parallel(&self.train[0], &self.train[1])?;
        let encode = |line: &str| vocab.encode(line);
        let pairs: Vec<(Vec<u32>, Vec<u32>)> = (0..corpus.len())
            .into_par_iter()
            .map(|i| Ok((encode(corpus.src.get(i))?, encode(corpus.tgt.get(i))?)))
            .collect::<gnmt_tokenizer::Result<_>>()?;
        let options = LexiconOptions {
            iterations: self.iterations,
            keep: self.keep,
            min_probability: self.min_probability,
        };
        let table = lexicon::learn(&pairs, |id| vocab.is_reserved(id), &options);
        let text = table.to_text(&vocab)?;
        gnmt_tokenizer::io::write_atomic(&self.output, text.as_bytes())?;
        let entries: usize = table.translations.values().map(Vec::len).sum();
        println!(
            "wrote {}: {entries} translations of {} source pieces and {} target frequencies, \
             from {} pairs in {:.1}s",
            self.output.display(),
            table.translations.len(),
            table.frequencies.len(),
            pairs.len(),
            start.elapsed().as_secs_f64()
        );
        Ok(())
    }
}
