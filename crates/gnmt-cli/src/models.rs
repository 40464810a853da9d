//! The model flags `translate` and `eval` share: `-m` (repeated for an ensemble),
//! `--weights`, `--ensemble` and `--target-lang`, and the loading they imply.

use std::path::PathBuf;

use anyhow::Context;
use candle::Device;
use clap::{Args, ValueEnum};
use gnmt_infer::{Combination, Translator};
use gnmt_model::Kernels;

use crate::checked::{real, Interval};

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
