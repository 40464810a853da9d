//! The model flags `translate` and `eval` share: `-m` (repeated for an ensemble),
//! `--weights`, `--ensemble`, `--target-lang` and `--shortlist`, and the loading they imply;
//! the kernels each decoding model runs on ([`DecodingKernels`]).

use std::path::{Path, PathBuf};

use anyhow::Context;
use candle::{DType, Device};
use clap::{Args, ValueEnum};
use gnmt_infer::{Combination, ShortlistOptions, Translator};
use gnmt_model::checkpoint::{self, InMemoryFolder, ModelFolder, Storage};
use gnmt_model::{KernelChoice, Kernels, Precision};

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
    pub fn load(&self, device: &Device, kernels: DecodingKernels) -> anyhow::Result<Translator> {
        let mut translator = self.load_models(device, kernels)?;
        match &self.target_lang {
            Some(language) => translator.set_target_language(language)?,
            None => translator.check_target_chosen()?,
        }
        self.shortlist.apply(&mut translator)?;
        Ok(translator)
    }

    fn load_models(&self, device: &Device, kernels: DecodingKernels) -> anyhow::Result<Translator> {
        let count = self.model.len().max(1);
        anyhow::ensure!(
            self.weights.is_empty() || self.weights.len() == count,
            "--weights has {} values for {count} model(s): give one weight per -m",
            self.weights.len()
        );
        let mut parts = Vec::with_capacity(count);
        for dir in &self.model {
            parts.push(kernels.load(dir, device)?);
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

/// How a decoding command chooses each model's kernels: `--kernels`, and the products
/// `--matmul` gave or, where it gave none, those the model folder was stored for.
#[derive(Debug, Clone, Copy)]
pub struct DecodingKernels {
    choice: KernelChoice,
    given: Option<Precision>,
    fused_on_cpu: bool,
}

impl DecodingKernels {
    /// `given`: `--matmul`'s products, resolved and checked against the device and `choice`.
    pub(crate) fn new(choice: KernelChoice, given: Option<Precision>, fused_on_cpu: bool) -> Self {
        Self {
            choice,
            given,
            fused_on_cpu,
        }
    }

    /// `--kernels` and, where given, `--matmul` (resolved), for another gnmt process to choose
    /// alike.
    pub fn to_args(&self) -> Vec<&'static str> {
        let kernels = match self.choice {
            KernelChoice::Fused => "fused",
            KernelChoice::Reference => "reference",
        };
        let mut args = vec!["--kernels", kernels];
        if let Some(precision) = self.given {
            args.extend(["--matmul", precision.name()]);
        }
        args
    }

    /// The kernels for a model folder stored as `stored` (see [`stored_products`]).
    pub fn for_storage(&self, stored: Storage) -> anyhow::Result<Kernels> {
        let int8_fast = gnmt_kernels::gemm::accelerated_int8();
        let precision = self
            .given
            .unwrap_or_else(|| stored_products(stored, self.fused_on_cpu, int8_fast));
        self.choice.with(precision).map_err(anyhow::Error::msg)
    }

    /// The model folder `dir`, loaded to decode on `device` in the products its storage calls
    /// for.
    pub fn load(&self, dir: &Path, device: &Device) -> anyhow::Result<Translator> {
        self.decode_on(checkpoint::load(dir, DType::F32, device), dir, device)
    }

    /// [`DecodingKernels::load`] for a folder held in memory (the built-in model).
    pub fn load_in_memory(
        &self,
        folder: &InMemoryFolder<'_>,
        device: &Device,
    ) -> anyhow::Result<Translator> {
        let loaded = checkpoint::load_in_memory(folder, DType::F32, device);
        self.decode_on(loaded, Path::new(folder.label), device)
    }

    /// The translator of a `loaded` folder (`label` names it in errors).
    fn decode_on(
        &self,
        loaded: checkpoint::Result<ModelFolder>,
        label: &Path,
        device: &Device,
    ) -> anyhow::Result<Translator> {
        let loading = || format!("loading {}", label.display());
        let folder = loaded.with_context(loading)?;
        let kernels = self.for_storage(folder.storage)?;
        Translator::from_folder(folder, label, device, kernels).with_context(loading)
    }
}

/// The products a model folder stored as `stored` decodes in when `--matmul` is not given: an
/// int8 folder (`gnmt export --storage int8`) in int8, the products its integers were made for
/// (as CTranslate2 keeps a model's quantized type), where the fused kernels run on a CPU that
/// multiplies int8 fast (`int8_fast`: AVX512-VNNI); everything else in f32 (an int8 folder's
/// dequantized weights included: the portable int8 kernel is slower than f32).
pub fn stored_products(stored: Storage, fused_on_cpu: bool, int8_fast: bool) -> Precision {
    match stored {
        Storage::Int8 if fused_on_cpu && int8_fast => Precision::Int8,
        _ => Precision::F32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_decode_in_their_stored_products_where_the_cpu_has_them() {
        let half = Storage::Float(DType::F16);
        for stored in [
            Storage::Float(DType::F32),
            half,
            Storage::Float(DType::BF16),
        ] {
            for (fused_on_cpu, int8_fast) in [(true, true), (true, false), (false, true)] {
                assert_eq!(
                    stored_products(stored, fused_on_cpu, int8_fast),
                    Precision::F32
                );
            }
        }
        assert_eq!(stored_products(Storage::Int8, true, true), Precision::Int8);
        // The portable int8 kernel (no VNNI), a GPU, or the reference kernels: f32 products.
        assert_eq!(stored_products(Storage::Int8, true, false), Precision::F32);
        assert_eq!(stored_products(Storage::Int8, false, true), Precision::F32);
    }

    #[test]
    fn given_products_win_over_the_storage() {
        let fused = |given| DecodingKernels::new(KernelChoice::Fused, given, true);
        for stored in [Storage::Int8, Storage::Float(DType::F16)] {
            let kernels = fused(Some(Precision::Bf16)).for_storage(stored).unwrap();
            assert_eq!(kernels.precision(), Precision::Bf16);
            let kernels = fused(Some(Precision::F32)).for_storage(stored).unwrap();
            assert_eq!(kernels.precision(), Precision::F32);
        }
        let reference = DecodingKernels::new(KernelChoice::Reference, None, false);
        let kernels = reference.for_storage(Storage::Int8).unwrap();
        assert_eq!(kernels.precision(), Precision::F32);
    }
}
