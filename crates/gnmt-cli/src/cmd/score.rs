use std::path::PathBuf;

use crate::checked::whole;
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
    /// Word n-gram order for chrF (2 gives chrF++), 0 to 6.
    #[arg(long, default_value_t = 0, value_parser = whole::<usize>(0, 6))]
    pub chrf_word_order: usize,
    /// Print one JSON object with full-precision scores.
    #[arg(long)]
    pub json: bool,
}

impl ScoreArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let (hyps, refs) = read_streams(&self.hypothesis, std::slice::from_ref(&self.reference))?;
        let refs = &refs[0];
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

/// `gnmt bleu REF [REF...] -i HYP` and `gnmt chrf REF [REF...] -i HYP`: sacreBLEU's command
/// shape, any number of reference files.
#[derive(Debug, Args)]
pub struct MetricArgs {
    /// Reference files, each aligned with the hypothesis file.
    #[arg(required = true)]
    pub references: Vec<PathBuf>,
    /// Hypothesis file.
    #[arg(short, long)]
    pub input: PathBuf,
    /// Lowercase both sides first.
    #[arg(long)]
    pub lowercase: bool,
    /// chrF only: word n-gram order (2 gives chrF++), 0 to 6.
    #[arg(long, default_value_t = 0, value_parser = whole::<usize>(0, 6))]
    pub word_order: usize,
}

impl MetricArgs {
    fn read(&self) -> anyhow::Result<(Vec<String>, Vec<Vec<String>>)> {
        read_streams(&self.input, &self.references)
    }

    pub fn run_bleu(self) -> anyhow::Result<()> {
        let (hyps, refs) = self.read()?;
        let streams: Vec<&[String]> = refs.iter().map(Vec::as_slice).collect();
        let b = corpus_bleu(
            &hyps,
            &streams,
            &BleuOptions {
                lowercase: self.lowercase,
            },
        )?;
        println!(
            "BLEU|{} = {}",
            b.signature(),
            b.to_string().trim_start_matches("BLEU = ")
        );
        Ok(())
    }

    pub fn run_chrf(self) -> anyhow::Result<()> {
        let (hyps, refs) = self.read()?;
        let streams: Vec<&[String]> = refs.iter().map(Vec::as_slice).collect();
        let o = ChrfOptions {
            word_order: self.word_order,
            lowercase: self.lowercase,
            ..Default::default()
        };
        let c = corpus_chrf(&hyps, &streams, &o)?;
        let name = if self.word_order > 0 {
            "chrF2++"
        } else {
            "chrF2"
        };
        println!("{name}|{} = {:.2}", c.signature(), c.score);
        Ok(())
    }
}

/// A hypothesis file and its reference files, checked to have the same number of lines.
fn read_streams(
    hypothesis: &PathBuf,
    references: &[PathBuf],
) -> anyhow::Result<(Vec<String>, Vec<Vec<String>>)> {
    let lines = |p: &PathBuf| -> anyhow::Result<Vec<String>> {
        Ok(Lines::read(p)?.iter().map(str::to_string).collect())
    };
    let hyps = lines(hypothesis)?;
    let refs = references
        .iter()
        .map(lines)
        .collect::<anyhow::Result<Vec<_>>>()?;
    for (p, r) in references.iter().zip(&refs) {
        anyhow::ensure!(
            r.len() == hyps.len(),
            "{} has {} lines but {} has {}",
            p.display(),
            r.len(),
            hypothesis.display(),
            hyps.len()
        );
    }
    Ok((hyps, refs))
}
