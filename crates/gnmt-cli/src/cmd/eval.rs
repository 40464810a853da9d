use std::path::PathBuf;

use crate::checked;
use clap::Args;
use gnmt_metrics::{corpus_bleu, corpus_chrf, BleuOptions, ChrfOptions};
use gnmt_tokenizer::Lines;

/// Translate a source file and score it against references in one go.
#[derive(Debug, Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub models: crate::models::ModelFlags,
    /// Source file, one sentence per line.
    #[arg(long)]
    pub src: PathBuf,
    /// Reference translations, aligned with the source.
    #[arg(long)]
    pub r#ref: PathBuf,
    #[command(flatten)]
    pub decoding: crate::decoding::DecodingFlags,
    /// Sentences decoded together.
    #[arg(long, default_value_t = 32, value_parser = checked::batch_size())]
    pub batch_size: usize,
    /// Also write the translations here.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

impl EvalArgs {
    pub fn run(self, compute: crate::ComputeFlags) -> anyhow::Result<()> {
        let device = compute.device()?;
        let t = self.models.load(&device, compute.decoding_on(&device)?)?;
        let mut o = t.default_options();
        self.decoding
            .apply(&mut o.beam_size, &mut o.alpha, &mut o.beta);
        let src = Lines::read(&self.src)?;
        let refs = Lines::read(&self.r#ref)?;
        anyhow::ensure!(
            src.len() == refs.len(),
            "{} has {} lines but {} has {}",
            self.src.display(),
            src.len(),
            self.r#ref.display(),
            refs.len()
        );
        let start = std::time::Instant::now();
        let lines: Vec<&str> = src.iter().collect();
        let results = t.translate(&lines, &o, self.batch_size, 250).map_err(|e| {
            crate::decoding::out_of_memory(&e, self.batch_size, o.beam_size)
                .unwrap_or_else(|| e.into())
        })?;
        let secs = start.elapsed().as_secs_f64();
        let hyps: Vec<String> = results
            .iter()
            .map(|r| r.nbest.first().map_or(String::new(), |b| b.text.clone()))
            .collect();
        if let Some(p) = &self.output {
            let text: String = hyps.iter().map(|h| format!("{h}\n")).collect();
            gnmt_tokenizer::io::write_atomic(p, text.as_bytes())?;
        }
        let refs: Vec<String> = refs.iter().map(str::to_string).collect();
        let bleu = corpus_bleu(&hyps, &[&refs[..]], &BleuOptions::default())?;
        let chrf = corpus_chrf(&hyps, &[&refs[..]], &ChrfOptions::default())?;
        println!(
            "{}: beam {} alpha {} beta {}; {} sentences in {secs:.1}s ({})",
            self.models.label(),
            o.beam_size,
            o.alpha,
            o.beta,
            hyps.len(),
            crate::rate::rate(hyps.len(), secs, "sentence")
        );
        println!(
            "BLEU|{} = {}",
            bleu.signature(),
            bleu.to_string().trim_start_matches("BLEU = ")
        );
        println!("chrF2|{} = {:.2}", chrf.signature(), chrf.score);
        Ok(())
    }
}
