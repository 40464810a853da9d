//! Text in, text out: a loaded model folder plus its vocabulary. Lines are translated in
//! batches sorted by length and returned in input order; blank lines never reach the model.
//! A multilingual model's sources start with the tag of the chosen target language.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle::{DType, Device};
use candle_nn::VarBuilder;
use gnmt_model::checkpoint::{self, GenerationConfig, ModelFolder};
use gnmt_model::{Gnmt, Kernels};
use gnmt_tokenizer::Vocab;
use rayon::prelude::*;

use crate::{
    beam_search_shortlisted, BeamOptions, Combination, Ensemble, Error, Hypothesis, LengthLimit,
    Member, Result, Shortlist, ShortlistOptions, Work,
};

/// One translated hypothesis with its text.
#[derive(Debug, Clone)]
pub struct Translation {
    pub text: String,
    pub hypothesis: Hypothesis,
}

/// The outcome for one input line.
#[derive(Debug, Clone)]
pub struct LineResult {
    /// Best first; empty for a blank input line.
    pub nbest: Vec<Translation>,
    /// Source pieces actually translated (after cropping).
    pub source_tokens: usize,
    /// The input had more pieces than the limit and was cropped to it.
    pub cropped: bool,
}

pub struct Translator {
    /// The model, or the models decoding together, each with its decoder's weights laid out
    /// for stepping once (for the model's kernels) and shared by every batch.
    models: Ensemble,
    /// Names the folder (or folders) in errors.
    label: PathBuf,
    /// The decoding work done so far (for benchmarks).
    work: Work,
    vocab: Vocab,
    generation: GenerationConfig,
    device: Device,
    /// The target language's tag (multilingual models), put before every source sentence.
    target: Option<u32>,
    /// Each sentence chooses among its shortlist's target pieces only, when set.
    shortlist: Option<Arc<Shortlist>>,
}

impl Translator {
    /// Loads and checks a model folder, to decode on `kernels`.
    pub fn load(dir: &Path, device: &Device, kernels: Kernels) -> Result<Self> {
        let folder =
            checkpoint::load(dir, DType::F32, device).map_err(|e| Error::Input(e.to_string()))?;
        Self::from_folder(folder, dir, device, kernels)
    }

    /// A loaded model folder, to decode on `kernels` (which may depend on the folder, such as
    /// its [`ModelFolder::storage`]); `label` names the folder in errors.
    pub fn from_folder(
        folder: ModelFolder,
        label: &Path,
        device: &Device,
        kernels: Kernels,
    ) -> Result<Self> {
        let tokenizer = label.join(checkpoint::TOKENIZER_FILE);
        let json = std::str::from_utf8(&folder.tokenizer_json)
            .map_err(|_| Error::Input(format!("{}: not UTF-8", tokenizer.display())))?;
        let vocab = Vocab::from_json(json)
            .map_err(|e| Error::Input(format!("{}: {e}", tokenizer.display())))?;
        let model = Gnmt::new(
            &folder.config,
            VarBuilder::from_tensors(folder.tensors, DType::F32, device),
        )?
        .with_kernels(kernels);
        let weights = model.decoding_weights()?;
        // A model with one target language needs no choice.
        let target = match vocab.languages() {
            [only] => vocab.tag_id(only),
            _ => None,
        };
        Ok(Self {
            models: Ensemble::single(model, weights),
            label: label.to_path_buf(),
            work: Work::default(),
            vocab,
            generation: folder.generation,
            device: device.clone(),
            target,
            shortlist: None,
        })
    }

    /// Decodes over shortlists from the lexical table `path` (Marian's `lex.s2t`, pieces of
    /// this model's vocabulary; see [`crate::shortlist`]).
    pub fn use_shortlist(&mut self, path: &Path, options: ShortlistOptions) -> Result<()> {
        self.shortlist = Some(Arc::new(Shortlist::read(path, &self.vocab, options)?));
        Ok(())
    }

    /// Chooses the language a multilingual model translates into; refused, naming the
    /// choices, for a language the model lacks or a model with none.
    pub fn set_target_language(&mut self, language: &str) -> Result<()> {
        let languages = self.vocab.languages();
        let id = self.vocab.tag_id(language).ok_or_else(|| {
            Error::Input(match languages.is_empty() {
                true => format!(
                    "{} is not multilingual: it has no target languages to choose from \
                     (asked for {language:?})",
                    self.label.display()
                ),
                false => format!(
                    "{} cannot translate into {language:?}: its target languages are {}",
                    self.label.display(),
                    languages.join(", ")
                ),
            })
        })?;
        self.target = Some(id);
        Ok(())
    }

    /// The target languages of a multilingual model (empty for a bilingual one).
    pub fn languages(&self) -> &[String] {
        self.vocab.languages()
    }

    /// Refused when the model has several target languages and none was chosen.
    pub fn check_target_chosen(&self) -> Result<()> {
        let languages = self.vocab.languages();
        match self.target.is_none() && languages.len() > 1 {
            true => Err(Error::Input(format!(
                "{} translates into {}: choose one with --target-lang",
                self.label.display(),
                languages.join(", ")
            ))),
            false => Ok(()),
        }
    }

    /// Several loaded models decoding together (see [`Ensemble`]), with `weights` (one per
    /// model, positive) combined by `combination`. They must share a vocabulary; the decoding
    /// defaults are the first model's.
    pub fn ensemble(
        parts: Vec<Translator>,
        weights: &[f64],
        combination: Combination,
    ) -> Result<Self> {
        if parts.len() != weights.len() {
            return Err(Error::Input(format!(
                "{} weights for {} models",
                weights.len(),
                parts.len()
            )));
        }
        let Some(first) = parts.first() else {
            return Err(Error::Input("an ensemble needs at least one model".into()));
        };
        if let Some(other) = parts[1..]
            .iter()
            .find(|p| p.vocab.hash() != first.vocab.hash())
        {
            return Err(Error::Input(format!(
                "{}: its vocabulary is not that of {} ({} and {} pieces); the models of an \
                 ensemble must share one vocabulary",
                other.label.display(),
                first.label.display(),
                other.vocab.size(),
                first.vocab.size()
            )));
        }
        let label = parts
            .iter()
            .map(|p| p.label.display().to_string())
            .collect::<Vec<_>>()
            .join(" + ");
        let members = parts
            .iter()
            .zip(weights)
            .flat_map(|(p, &w)| {
                p.models.members().iter().map(move |m| Member {
                    weight: w * m.weight,
                    ..m.clone()
                })
            })
            .collect();
        let models = Ensemble::new(members, combination).map_err(Error::Input)?;
        let first = parts.into_iter().next().expect("checked");
        Ok(Self {
            models,
            label: PathBuf::from(label),
            ..first
        })
    }

    /// Models decoding together (1 for a plain model).
    pub fn model_count(&self) -> usize {
        self.models.members().len()
    }

    /// The kernels each model decodes on, in the ensemble's order.
    pub fn kernels(&self) -> Vec<Kernels> {
        let members = self.models.members();
        members.iter().map(|m| m.model.kernels()).collect()
    }

    /// Decoding defaults stored with the model.
    pub fn generation(&self) -> &GenerationConfig {
        &self.generation
    }

    /// Beam options from the model's defaults.
    pub fn default_options(&self) -> BeamOptions {
        let g = &self.generation;
        BeamOptions {
            beam_size: g.beam_size,
            alpha: g.alpha,
            beta: g.beta,
            limit: LengthLimit {
                a: g.max_len_a,
                b: g.max_len_b,
            },
            ..Default::default()
        }
    }

    /// The decoding work done so far by this translator.
    pub fn work(&self) -> &Work {
        &self.work
    }

    /// The (first) model's configuration.
    pub fn config(&self) -> &gnmt_model::ModelConfig {
        self.models.first().config()
    }

    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    /// Translates `lines`, cropping inputs longer than `max_input_len` pieces. Blank lines
    /// give an empty result without touching the model. Sentences are decoded in batches of
    /// at most `batch_size`, sorted by length; results come back in input order.
    pub fn translate(
        &self,
        lines: &[&str],
        options: &BeamOptions,
        batch_size: usize,
        max_input_len: usize,
    ) -> Result<Vec<LineResult>> {
        self.check_target_chosen()?;
        let mut results: Vec<LineResult> = Vec::with_capacity(lines.len());
        let mut sources: Vec<Vec<u32>> = Vec::with_capacity(lines.len());
        for line in lines {
            let mut ids = if line.trim().is_empty() {
                Vec::new()
            } else {
                self.vocab.encode(line)?
            };
            let cropped = ids.len() > max_input_len;
            ids.truncate(max_input_len);
            results.push(LineResult {
                nbest: Vec::new(),
                source_tokens: ids.len(),
                cropped,
            });
            if let (Some(tag), false) = (self.target, ids.is_empty()) {
                ids.insert(0, tag);
            }
            sources.push(ids);
        }
        let mut order: Vec<usize> = (0..lines.len())
            .filter(|&i| !sources[i].is_empty())
            .collect();
        order.sort_by_key(|&i| (sources[i].len(), i));
        // Batches are formed the same way whatever the thread count and decoded independently,
        // so running them on several threads at once changes no output; it scales much better
        // than splitting each small per-step matmul across threads.
        let chunks: Vec<&[usize]> = order.chunks(batch_size.max(1)).collect();
        let decoded: Vec<Result<Vec<Vec<crate::Hypothesis>>>> = chunks
            .par_iter()
            .map(|chunk| {
                let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| sources[i].clone()).collect();
                beam_search_shortlisted(
                    &self.models,
                    &self.work,
                    &batch,
                    options,
                    self.shortlist.as_deref(),
                    DType::F32,
                    &self.device,
                )
            })
            .collect();
        for (chunk, hyps) in chunks.into_iter().zip(decoded) {
            for (&i, nbest) in chunk.iter().zip(hyps?) {
                results[i].nbest = nbest
                    .into_iter()
                    .map(|mut h| {
                        // The attention a caller sees is over its own sentence's pieces.
                        if self.target.is_some() {
                            h.attention.iter_mut().for_each(|row| {
                                row.remove(0);
                            });
                        }
                        Ok(Translation {
                            text: self.vocab.decode(&h.tokens)?,
                            hypothesis: h,
                        })
                    })
                    .collect::<Result<_>>()?;
            }
        }
        Ok(results)
    }
}

impl From<gnmt_tokenizer::Error> for Error {
    fn from(e: gnmt_tokenizer::Error) -> Self {
        Error::Input(e.to_string())
    }
}
