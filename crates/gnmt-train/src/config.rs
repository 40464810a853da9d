//! Everything about a training run that is not the architecture: a config file (JSON or TOML)
//! plus command-line overrides, saved into the run folder as `train_config.json`.

use std::path::Path;

use gnmt_model::checkpoint::GenerationConfig;
use gnmt_model::ModelConfig;
use serde::{Deserialize, Serialize};

use crate::corpora::CorpusSpec;
use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub model: ModelConfig,
    /// Seeds parameter initialisation, dropout masks and the data order.
    pub seed: u64,
    /// Parameters start uniform in `[-init_scale, init_scale]`.
    pub init_scale: f64,
    /// Dropout on the input of every LSTM layer and before the output projection.
    pub dropout: f32,
    /// Probability of dropping a whole source token's embedding (word dropout).
    pub word_dropout_src: f32,
    /// The same for the decoder's input tokens.
    pub word_dropout_tgt: f32,
    pub label_smoothing: f64,
    /// Keep an exponential moving average of the weights with this decay (0.9999 is
    /// common), updated after every update; validation, `best/` and every saved model use
    /// the average (Marian's `--exponential-smoothing`). Early on the decay is
    /// `min(ema_decay, (1 + t) / (10 + t))` at update `t`, so the average follows the young
    /// model instead of its random start.
    pub ema_decay: Option<f64>,
    pub optim: OptimConfig,
    pub data: DataConfig,
    pub stop: StopConfig,
    pub log: LogConfig,
    /// Decoding settings stored with the model (validation decodes greedily).
    pub generation: GenerationConfig,
    /// Precision of the matrix products, `"f32"` or `"bf16"` (bf16 operands, f32 sums; fast on
    /// CPUs with AVX512-BF16). Weights, gradients and optimiser state stay f32 either way.
    pub matmul: gnmt_model::Precision,
    /// `"fused"` (the fast CPU operations) or `"reference"` (their composite candle
    /// references, f32 only: the correctness baseline).
    pub kernels: gnmt_model::KernelChoice,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            model: ModelConfig::small(),
            seed: 1,
            init_scale: 0.1,
            dropout: 0.2,
            word_dropout_src: 0.0,
            word_dropout_tgt: 0.0,
            label_smoothing: 0.1,
            ema_decay: None,
            optim: OptimConfig::default(),
            data: DataConfig::default(),
            stop: StopConfig::default(),
            log: LogConfig::default(),
            generation: GenerationConfig::default(),
            matmul: gnmt_model::Precision::F32,
            kernels: gnmt_model::KernelChoice::Fused,
        }
    }
}

/// Adam with warm-up and step decay; optionally GNMT's switch to plain SGD.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Linear warm-up from `lr / warmup_steps` to `lr` over the first updates.
    pub warmup_steps: u64,
    /// Multiply the rate by `decay_factor` every `decay_every` updates from `decay_start`.
    pub decay_start: Option<u64>,
    pub decay_every: u64,
    pub decay_factor: f64,
    /// At most this many decays (GNMT v2: 4).
    pub decay_times: Option<u32>,
    /// GNMT's recipe: from this update on, plain SGD at `sgd_lr` (decay still applies).
    pub sgd_from_step: Option<u64>,
    pub sgd_lr: f64,
    /// Global gradient-norm clipping threshold.
    pub clip_norm: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: 2e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            warmup_steps: 200,
            decay_start: None,
            decay_every: 1000,
            decay_factor: 0.5,
            decay_times: Some(4),
            sgd_from_step: None,
            sgd_lr: 0.5,
            clip_norm: 5.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    pub max_tokens: usize,
    pub max_sentences: usize,
    pub max_len: usize,
    pub max_ratio: f32,
    /// Batches per update (gradient accumulation: Marian's `--optimizer-delay`, fairseq's
    /// `--update-freq`): one update sees `accumulate` batches of `max_tokens`, whatever the
    /// number of processes.
    pub accumulate: usize,
    /// Several training corpora are sampled in proportion to `size ^ (1 / temperature)`:
    /// 1 samples by size, larger values up-sample the small corpora (5 is common).
    pub temperature: f64,
    /// When the run trains its vocabulary: split punctuation from words first, so that no
    /// piece joins a word to its punctuation (see `gnmt_tokenizer::VocabOptions`).
    pub split_punctuation: bool,
    /// The training corpora (`--train`, or `--pair` for each of a multilingual model's).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub train: Vec<CorpusSpec>,
    /// The validation corpora (`--valid`, or `--valid-pair`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub valid: Vec<CorpusSpec>,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            max_tokens: 2500,
            max_sentences: 256,
            max_len: 100,
            max_ratio: 9.0,
            accumulate: 1,
            temperature: 1.0,
            split_punctuation: false,
            train: Vec::new(),
            valid: Vec::new(),
        }
    }
}

/// When to stop. Any limit reached stops the run (after a final validation and save).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct StopConfig {
    pub max_steps: Option<u64>,
    pub max_epochs: Option<u64>,
    /// Wall time over all sessions of the run, e.g. "90m", "2h", "1h 30m".
    pub max_time: Option<String>,
    /// Stop after this many validations without a BLEU improvement.
    pub patience: Option<u32>,
}

impl StopConfig {
    pub fn max_time_secs(&self) -> Result<Option<f64>> {
        self.max_time
            .as_deref()
            .map(|t| {
                humantime::parse_duration(t)
                    .map(|d| d.as_secs_f64())
                    .map_err(|e| {
                        Error::Config(format!("max_time {t:?}: {e} (examples: 90m, 2h, 1h 30m)"))
                    })
            })
            .transpose()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub log_every: u64,
    pub valid_every: u64,
    pub save_every: u64,
    /// Step checkpoints kept in `checkpoints/` (at least 1: resuming needs one).
    pub keep_last: usize,
    /// In a job of several processes, every this many updates the ranks compare a checksum
    /// of their weights and stop if any differs.
    pub consistency_every: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            log_every: 50,
            valid_every: 1000,
            save_every: 1000,
            keep_last: 2,
            consistency_every: 200,
        }
    }
}

impl TrainConfig {
    /// Reads a JSON or TOML file (by extension; `.toml` is TOML, anything else JSON).
    pub fn from_file(path: &Path) -> Result<Self> {
        let cfg: Self = parse_file(path)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The top-level sections a configuration file sets (`model`, `generation`, ...); those
    /// it leaves out take their defaults.
    pub fn sections_in_file(path: &Path) -> Result<Vec<String>> {
        let value: serde_json::Value = parse_file(path)?;
        Ok(match value {
            serde_json::Value::Object(map) => map.keys().cloned().collect(),
            _ => Vec::new(),
        })
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        self.model
            .validate()
            .map_err(|e| Error::Config(format!("model: {e}")))?;
        self.generation
            .validate()
            .map_err(|e| Error::Config(format!("generation: {e}")))?;
        if self.matmul == gnmt_model::Precision::Int8 {
            return bad(
                "matmul = int8 is for decoding (translate, eval, serve): training computes in \
                 f32, bf16 or tf32 (on a GPU)"
                    .into(),
            );
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout = {} must be in [0, 1)", self.dropout));
        }
        for (name, p) in [
            ("word_dropout_src", self.word_dropout_src),
            ("word_dropout_tgt", self.word_dropout_tgt),
        ] {
            if !(0.0..1.0).contains(&p) {
                return bad(format!("{name} = {p} must be in [0, 1)"));
            }
        }
        if let Some(d) = self.ema_decay.filter(|d| !(*d > 0.0 && *d < 1.0)) {
            return bad(format!("ema_decay = {d} must be in (0, 1)"));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return bad(format!(
                "label_smoothing = {} must be in [0, 1)",
                self.label_smoothing
            ));
        }
        let o = &self.optim;
        // Written as negated comparisons on purpose: NaN fails every comparison, so
        // `!(x > 0.0)` refuses it where the "simplified" `x <= 0.0` would let it through.
        #[allow(clippy::nonminimal_bool, clippy::neg_cmp_op_on_partial_ord)]
        if !(o.lr > 0.0 && o.lr.is_finite())
            || !(o.clip_norm > 0.0)
            || !(o.init_ok(self.init_scale))
        {
            return bad(
                "optim.lr, optim.clip_norm and init_scale must be positive and finite".into(),
            );
        }
        if !(0.0..1.0).contains(&o.beta1) || !(0.0..1.0).contains(&o.beta2) || o.decay_every == 0 {
            return bad(
                "optim.beta1/beta2 must be in [0, 1) and optim.decay_every positive".into(),
            );
        }
        if self.log.log_every == 0
            || self.log.valid_every == 0
            || self.log.save_every == 0
            || self.log.keep_last == 0
            || self.log.consistency_every == 0
        {
            return bad(
                "log.log_every, valid_every, save_every, keep_last and consistency_every must be \
                 at least 1"
                    .into(),
            );
        }
        let d = &self.data;
        if d.max_tokens == 0 || d.max_sentences == 0 || d.max_len == 0 || d.accumulate == 0 {
            return bad(
                "data.max_tokens, max_sentences, max_len and accumulate must be at least 1".into(),
            );
        }
        #[allow(clippy::neg_cmp_op_on_partial_ord)]
        if !(d.temperature > 0.0 && d.temperature <= 100.0) {
            return bad(format!(
                "data.temperature = {} must be in (0, 100]",
                d.temperature
            ));
        }
        self.stop.max_time_secs()?;
        self.step_kernels()?;
        Ok(())
    }

    /// The kernels the training step runs on: [`TrainConfig::kernels`] with products in
    /// [`TrainConfig::matmul`].
    pub fn step_kernels(&self) -> Result<gnmt_model::Kernels> {
        self.kernels.with(self.matmul).map_err(Error::Config)
    }

    /// Keys that may change when a run is resumed (limits, logging, decoding defaults, the
    /// kernels and the precision of their matrix products); everything else must match the
    /// saved configuration.
    pub fn resume_conflicts(&self, saved: &TrainConfig) -> Vec<String> {
        let (a, b) = (self.resume_view(), saved.resume_view());
        let mut out = Vec::new();
        diff_keys("", &a, &b, &mut out);
        out.retain(|k| {
            !(k.starts_with("stop.")
                || k.starts_with("log.")
                || k.starts_with("generation.")
                || k.starts_with("matmul ")
                || k.starts_with("kernels "))
        });
        out
    }

    /// The configuration as resuming compares it: of the corpora, only their language pairs
    /// (files may move; the datasets are keyed by their contents).
    fn resume_view(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).expect("plain");
        let data = value["data"].as_object_mut().expect("a table");
        for (key, corpora) in [("train", &self.data.train), ("valid", &self.data.valid)] {
            let pairs: Vec<String> = corpora
                .iter()
                .filter_map(|c| c.pair.as_ref().map(ToString::to_string))
                .collect();
            match pairs.is_empty() {
                true => data.remove(key),
                false => data.insert(key.into(), pairs.into()),
            };
        }
        value
    }
}

/// A JSON or TOML file (by extension) as `T`; errors name the file.
fn parse_file<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let parsed = if path.extension().is_some_and(|e| e == "toml") {
        toml::from_str(&text).map_err(|e| e.to_string())
    } else {
        serde_json::from_str(&text).map_err(|e| e.to_string())
    };
    parsed.map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}

impl OptimConfig {
    fn init_ok(&self, init_scale: f64) -> bool {
        init_scale > 0.0 && init_scale.is_finite() && self.sgd_lr > 0.0
    }
}

pub(crate) fn diff_keys(
    prefix: &str,
    a: &serde_json::Value,
    b: &serde_json::Value,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                diff_keys(
                    &p,
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        _ if a != b => out.push(format!("{prefix} ({b} -> {a})")),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resuming_may_change_limits_and_kernels_but_not_the_setup() {
        let saved = TrainConfig::default();
        let mut next = saved.clone();
        next.stop.max_steps = Some(10);
        next.log.valid_every = 7;
        next.matmul = gnmt_model::Precision::Bf16;
        next.kernels = gnmt_model::KernelChoice::Reference;
        assert_eq!(next.resume_conflicts(&saved), Vec::<String>::new());
        next.optim.lr = 1.0;
        next.model.hidden_size = 12;
        let conflicts = next.resume_conflicts(&saved);
        assert_eq!(conflicts.len(), 2, "{conflicts:?}");
        assert!(
            conflicts[0].starts_with("model.hidden_size "),
            "{conflicts:?}"
        );
        assert!(conflicts[1].starts_with("optim.lr "), "{conflicts:?}");
    }

    /// The reference kernels compute in f32 only: asking for bf16 products on them is refused
    /// when the configuration is checked, not at the first update. A configuration saved
    /// before `kernels` existed reads as fused.
    #[test]
    fn a_config_file_lists_the_corpora_and_resuming_compares_their_pairs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("multi.toml");
        std::fs::write(
            &path,
            r#"
[data]
temperature = 5
[[data.train]]
pair = "en-de"
src = "a.en"
tgt = "a.de"
[[data.train]]
pair = "en-fr"
src = "b.en"
tgt = "b.fr"
[[data.valid]]
pair = "en-fr"
src = "v.en"
tgt = "v.fr"
"#,
        )
        .unwrap();
        let saved = TrainConfig::from_file(&path).unwrap();
        assert_eq!(saved.data.temperature, 5.0);
        assert_eq!(
            saved.data.train[1].pair.as_ref().unwrap().to_string(),
            "en-fr"
        );
        assert_eq!(saved.data.valid[0].tgt, Path::new("v.fr"));
        // Moved files resume; other pairs or another temperature do not.
        let mut moved = saved.clone();
        moved.data.train[0].src = "elsewhere/a.en".into();
        assert!(moved.resume_conflicts(&saved).is_empty());
        let mut fewer = saved.clone();
        fewer.data.train.pop();
        fewer.data.temperature = 1.0;
        let conflicts = fewer.resume_conflicts(&saved).join("; ");
        assert!(
            conflicts.contains("data.train") && conflicts.contains("data.temperature"),
            "{conflicts}"
        );
        // A bilingual run's files are not compared, as before.
        let plain = TrainConfig::default();
        let mut with_files = plain.clone();
        with_files.data.train = vec![CorpusSpec {
            pair: None,
            src: "x".into(),
            tgt: "y".into(),
        }];
        assert!(with_files.resume_conflicts(&plain).is_empty());
        std::fs::write(
            &path,
            "[[data.train]]\npair = \"EN-de\"\nsrc = \"a\"\ntgt = \"b\"\n",
        )
        .unwrap();
        let e = TrainConfig::from_file(&path).unwrap_err().to_string();
        assert!(
            e.contains("multi.toml") && e.contains("not a language code"),
            "{e}"
        );
    }

    #[test]
    fn kernels_are_checked_with_the_precision() {
        let mut c = TrainConfig {
            kernels: gnmt_model::KernelChoice::Reference,
            ..TrainConfig::default()
        };
        assert_eq!(c.step_kernels().unwrap(), gnmt_model::Kernels::Reference);
        c.matmul = gnmt_model::Precision::Bf16;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("f32 only"), "{err}");
        let mut saved = serde_json::to_value(TrainConfig::default()).unwrap();
        saved.as_object_mut().unwrap().remove("kernels");
        let old: TrainConfig = serde_json::from_value(saved).unwrap();
        assert_eq!(
            old.step_kernels().unwrap(),
            gnmt_model::Kernels::Fused(gnmt_model::Precision::F32)
        );
    }
}
