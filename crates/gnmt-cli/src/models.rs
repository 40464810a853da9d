//! The model flags `translate` and `eval` share: `-m` (repeated for an ensemble),
//! `--weights`, `--ensemble`, `--target-lang` and `--shortlist`, and the loading they imply.

use std::path::PathBuf;

use anyhow::Context;
use candle::Device;
use clap::{Args, ValueEnum};
use gnmt_infer::{Combination, ShortlistOptions, Translator};
use gnmt_model::Kernels;

use crate::checked::{real, whole, Interval};

#[derive(Debug, Clone, Args)]
pub struct ModelFlags {
    /// Model folder (config.json, model.safetensors, tokenizer.json, generation.json).
    /// Repeat to decode with an ensemble (-m A -m B): the models, which must share a
    /// vocabulary, score every step together. Default: the shipped English-German model.
    #[arg(short, long)]
    pub model: Vec<PathBuf>,
    /// An ensemble's weights, one per -m, comma-separated (default: equal).
    #[arg(long, value_delimiter = ',', value_parser = real::<f64>(Interval::above(0.0, 1e6)))]
    pub weights: Vec<f64>,
    /// How an ensemble combines its models' next-token distributions: log-linear (weighted
    /// mean of log-probabilities, as Marian) or linear (log of the weighted mean of
    /// probabilities, as fairseq).
    #[arg(long, value_enum, default_value_t = EnsembleArg::LogLinear)]
    pub ensemble: EnsembleArg,
    /// The language a multilingual model translates into (de, fr, ...); required when the
    /// model has several.
    #[arg(long, value_name = "LANG", value_parser = crate::checked::language)]
    pub target_lang: Option<String>,
    #[command(flatten)]
    pub shortlist: ShortlistFlags,
}

/// `--shortlist` and how much of its table to take.
#[derive(Debug, Clone, Args)]
pub struct ShortlistFlags {
    /// Decode over vocabulary shortlists from this lexical table (Marian's lex.s2t format,
    /// made by `gnmt shortlist`): each sentence chooses among the most frequent target
    /// pieces, its source pieces' likely translations and its own pieces only. Faster;
    /// translations may differ slightly from the full vocabulary's.
    #[arg(long, value_name = "LEX")]
    pub shortlist: Option<PathBuf>,
    /// With --shortlist: the most frequent target pieces in every shortlist.
    #[arg(long, default_value_t = ShortlistOptions::default().first,
          value_parser = whole::<usize>(0, 1_000_000))]
    pub shortlist_first: usize,
    /// With --shortlist: translations per source piece in a shortlist, most probable first.
    #[arg(long, default_value_t = ShortlistOptions::default().best,
          value_parser = whole::<usize>(1, 1_000_000))]
    pub shortlist_best: usize,
}

impl ShortlistFlags {
    /// Sets `translator` to decode over the shortlists these flags ask for, if any.
    pub fn apply(&self, translator: &mut Translator) -> anyhow::Result<()> {
        if let Some(path) = &self.shortlist {
            let options = ShortlistOptions {
                first: self.shortlist_first,
                best: self.shortlist_best,
            };
            translator
                .use_shortlist(path, options)
                .with_context(|| format!("loading the shortlist {}", path.display()))?;
        }
        Ok(())
    }

    /// The flags as given, to pass on to another gnmt process.
    pub fn to_args(&self) -> Vec<std::ffi::OsString> {
        let Some(path) = &self.shortlist else {
            return Vec::new();
        };
        vec![
            "--shortlist".into(),
            path.into(),
            "--shortlist-first".into(),
            self.shortlist_first.to_string().into(),
            "--shortlist-best".into(),
            self.shortlist_best.to_string().into(),
        ]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EnsembleArg {
    LogLinear,
    Linear,
}

impl From<EnsembleArg> for Combination {
    fn from(e: EnsembleArg) -> Self {
        match e {
            EnsembleArg::LogLinear => Combination::LogLinear,
            EnsembleArg::Linear => Combination::Linear,
        }
    }
}

impl ModelFlags {
    /// The model of `-m`, the ensemble of several, or the default model; set to translate into
    /// --target-lang, which a multilingual model with several targets requires.
    pub fn load(&self, device: &Device, kernels: Kernels) -> anyhow::Result<Translator> {
        let mut translator = self.load_models(device, kernels)?;
        match &self.target_lang {
            Some(language) => translator.set_target_language(language)?,
            None => translator.check_target_chosen()?,
        }
        self.shortlist.apply(&mut translator)?;
        Ok(translator)
    }

    fn load_models(&self, device: &Device, kernels: Kernels) -> anyhow::Result<Translator> {
        let count = self.model.len().max(1);
        anyhow::ensure!(
            self.weights.is_empty() || self.weights.len() == count,
            "--weights has {} values for {count} model(s): give one weight per -m",
            self.weights.len()
        );
        let mut parts = Vec::with_capacity(count);
        for dir in &self.model {
            parts.push(
                Translator::load(dir, device, kernels)
                    .with_context(|| format!("loading {}", dir.display()))?,
            );
        }
        if parts.is_empty() {
            parts.push(crate::cmd::translate::load_default_model(device, kernels)?);
        }
        if parts.len() == 1 {
            return Ok(parts.pop().expect("one"));
        }
        let weights = match self.weights.is_empty() {
            true => vec![1.0; count],
            false => self.weights.clone(),
        };
        Ok(Translator::ensemble(parts, &weights, self.ensemble.into())?)
    }

    /// The models as a reader names them: `A`, `A + B`, or the default.
    pub fn label(&self) -> String {
        match self.model.is_empty() {
            true => "the shipped model".into(),
            false => self
                .model
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" + "),
        }
    }
}
