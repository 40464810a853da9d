use std::path::PathBuf;

use clap::Args;
use gnmt_metrics::{corpus_bleu, corpus_chrf, BleuOptions, ChrfOptions};
use gnmt_tokenizer::Lines;

#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// Reference file (plain or gzip), one segment per line.
    pub reference: PathBuf,
    /// Hypothesis file, aligned with the reference.
    pub hypothesis: PathBuf,
    /// Lowercase both sides first.
    #[arg(long)]
    pub lowercase: bool,
    /// Word n-gram order for chrF (2 gives chrF++).
    #[arg(long, default_value_t = 0)]
    pub chrf_word_order: usize,
    /// Print one JSON object with full-precision scores.
    #[arg(long)]
    pub json: bool,
}

impl ScoreArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let refs = Lines::read(&self.reference)?;
        let hyps = Lines::read(&self.hypothesis)?;
        anyhow::ensure!(
            refs.len() == hyps.len(),
            "{} has {} lines but {} has {}",
            self.reference.display(),
            refs.len(),
            self.hypothesis.display(),
            hyps.len()
        );
        let refs: Vec<&str> = refs.iter().collect();
        let hyps: Vec<&str> = hyps.iter().collect();
        let bleu = corpus_bleu(
            &hyps,
            &[&refs[..]],
            &BleuOptions {
                lowercase: self.lowercase,
            },
        )?;
        let chrf_options = ChrfOptions {
            word_order: self.chrf_word_order,
            lowercase: self.lowercase,
            ..Default::default()
        };
        let chrf = corpus_chrf(&hyps, &[&refs[..]], &chrf_options)?;
        if self.json {
            let v = serde_json::json!({
                "bleu": bleu.score, "bleu_signature": bleu.signature(),
                "chrf": chrf.score, "chrf_signature": chrf.signature(),
            });
            println!("{v}");
        } else {
            let bleu_text = bleu.to_string();
            let chrf_text = chrf.to_string();
            let (bleu_name, bleu_rest) =
                bleu_text.split_once(" = ").unwrap_or(("BLEU", &bleu_text));
            let (chrf_name, chrf_rest) =
                chrf_text.split_once(" = ").unwrap_or(("chrF2", &chrf_text));
            println!("{bleu_name}|{} = {bleu_rest}", bleu.signature());
            println!("{chrf_name}|{} = {chrf_rest}", chrf.signature());
        }
        Ok(())
    }
}
