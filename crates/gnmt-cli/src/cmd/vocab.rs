use std::path::PathBuf;

use crate::checked::{self, whole};
use anyhow::Context;
use clap::Args;
use gnmt_tokenizer::{FolderLock, Lines, SubwordModel, Vocab, VocabOptions};

#[derive(Debug, Args)]
pub struct VocabArgs {
    /// Source and target training files (plain or gzip); one vocabulary is learned for both.
    /// Repeat for several corpora (a multilingual model's pairs).
    #[arg(long, num_args = 2, value_names = ["SRC", "TGT"], required = true)]
    pub train: Vec<PathBuf>,
    /// Target languages of a multilingual model, comma-separated (de,fr): each gets a
    /// reserved tag (<2de>, <2fr>) with the ids after the special tokens, in this order.
    #[arg(long, value_delimiter = ',', value_parser = checked::language)]
    pub languages: Vec<String>,
    /// Vocabulary size, special tokens and the 256 byte pieces included
    /// (8000 suits Multi30k-sized data, 32000 WMT).
    #[arg(long, default_value_t = 8000, value_parser = checked::vocab_size())]
    pub size: usize,
    /// Subword model: bpe or unigram.
    #[arg(long, default_value = "bpe")]
    pub model: SubwordModel,
    /// Minimum pair frequency for a BPE merge.
    #[arg(long, default_value_t = 2, value_parser = whole::<u64>(1, 1_000_000_000))]
    pub min_frequency: u64,
    /// Split punctuation from words before learning pieces (`dog.` becomes `▁dog` `.`, as
    /// Moses tokenization before BPE does), so no piece spends the vocabulary on a word with
    /// its punctuation. Saved in tokenizer.json; decoding restores the text exactly.
    #[arg(long)]
    pub split_punctuation: bool,
    /// Output directory; `tokenizer.json` is written there.
    #[arg(short, long)]
    pub output: PathBuf,
}

impl VocabArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let start = std::time::Instant::now();
        let options = VocabOptions {
            size: self.size,
            model: self.model,
            min_frequency: self.min_frequency,
            languages: self.languages.clone(),
            split_punctuation: self.split_punctuation,
        };
        let _lock = FolderLock::acquire(&self.output, "vocabulary folder")?;
        let vocab =
            Vocab::train_from_files(&self.train, &options).context("training the vocabulary")?;
        let out = self.output.join("tokenizer.json");
        vocab.save(&out)?;
        println!(
            "wrote {} ({} pieces) in {:.1}s",
            out.display(),
            vocab.size(),
            start.elapsed().as_secs_f64()
        );
        if !vocab.languages().is_empty() {
            let tags: Vec<String> = vocab
                .languages()
                .iter()
                .map(|l| {
                    format!(
                        "{} = {}",
                        gnmt_tokenizer::language_tag(l),
                        vocab.tag_id(l).expect("listed")
                    )
                })
                .collect();
            println!("language tags: {}", tags.join(", "));
        }
        for path in &self.train {
            let stats = SideStats::measure(&vocab, &Lines::read(path)?)?;
            println!("{}: {stats}", path.display());
        }
        Ok(())
    }
}

/// How well a vocabulary fits one side of the corpus.
#[derive(Debug, Default, PartialEq)]
pub struct SideStats {
    pub lines: usize,
    pub words: usize,
    pub pieces: usize,
    /// Words that needed byte-fallback pieces (characters the vocabulary does not cover).
    pub words_with_bytes: usize,
}

impl SideStats {
    pub fn measure(vocab: &Vocab, lines: &Lines) -> anyhow::Result<Self> {
        let mut s = SideStats {
            lines: lines.len(),
            ..Default::default()
        };
        for line in lines.iter() {
            let ids = vocab.encode(line)?;
            s.pieces += ids.len();
            let mut word_has_bytes = false;
            for (id, piece) in ids.iter().zip(vocab.pieces(&ids)) {
                if piece.starts_with('\u{2581}') {
                    s.words += 1;
                    s.words_with_bytes += word_has_bytes as usize;
                    word_has_bytes = false;
                }
                word_has_bytes |= vocab.is_byte_piece(*id);
            }
            s.words_with_bytes += word_has_bytes as usize;
        }
        Ok(s)
    }

    /// Share of words encoded without byte fallback.
    pub fn coverage(&self) -> f64 {
        if self.words == 0 {
            1.0
        } else {
            1.0 - self.words_with_bytes as f64 / self.words as f64
        }
    }

    pub fn pieces_per_word(&self) -> f64 {
        if self.words == 0 {
            0.0
        } else {
            self.pieces as f64 / self.words as f64
        }
    }
}

impl std::fmt::Display for SideStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} lines, {} words, {} pieces; {:.3} pieces/word; coverage {:.3}% of words without byte fallback",
            self.lines,
            self.words,
            self.pieces,
            self.pieces_per_word(),
            100.0 * self.coverage()
        )
    }
}
