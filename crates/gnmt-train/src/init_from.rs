//! Fine-tuning: a run that starts from a trained model's weights (`gnmt train --init-from
//! MODEL`) instead of drawing them, with the model's vocabulary and architecture. The
//! optimiser and the learning-rate schedule start afresh unless the folder is a checkpoint and
//! [`InitFrom::keep_optimizer`] asks to continue them (Adam's moments, its step count and the
//! schedule's position).
//!
//! The run folder records where it started (`init_from.json`: the path and a hash of the
//! weights), so that running the same command again resumes the run, and a rerun that names
//! another model, or none, is refused instead of silently continuing something else.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle::{DType, Device, Tensor};
use gnmt_model::checkpoint::{self, GenerationConfig};
use gnmt_model::ModelConfig;
use gnmt_tokenizer::Vocab;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::optim::Optimizer;
use crate::state::{write_atomic, TrainState};
use crate::{Error, Result};

/// Where a run folder records the model it started from.
pub const RECORD_FILE: &str = "init_from.json";
/// The files of a checkpoint folder that `keep_optimizer` continues from.
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const STATE_FILE: &str = "state.json";

/// The model a run starts from.
#[derive(Debug, Clone)]
pub struct InitFrom {
    /// A model folder: the shipped model, `gnmt export`'s output, a run folder or one of its
    /// checkpoints.
    pub dir: PathBuf,
    /// Continue the optimiser and schedule saved with the model (a checkpoint folder has them).
    pub keep_optimizer: bool,
}

/// What `init_from.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Record {
    model: PathBuf,
    weights_sha256: String,
    keep_optimizer: bool,
}

impl InitFrom {
    /// The model's architecture and decoding defaults, once the folder is known to hold what
    /// the run needs (with `keep_optimizer`, the optimizer state).
    pub fn settings(&self) -> Result<(ModelConfig, GenerationConfig)> {
        let settings = checkpoint::read_settings(&self.dir)?;
        if self.keep_optimizer {
            self.optimizer_files()?;
        }
        Ok(settings)
    }

    /// The optimizer's moments and the training state saved beside the model.
    fn optimizer_files(&self) -> Result<(PathBuf, PathBuf)> {
        let (moments, state) = (self.dir.join(OPTIMIZER_FILE), self.dir.join(STATE_FILE));
        if !moments.is_file() || !state.is_file() {
            return Err(Error::Config(format!(
                "--keep-optimizer: {} holds no optimizer state ({OPTIMIZER_FILE} and {STATE_FILE}); \
                 a checkpoint folder of a run has them (RUN/checkpoints/step-N), an exported or \
                 shipped model does not",
                self.dir.display()
            )));
        }
        Ok((moments, state))
    }

    /// The vocabulary a run from this model uses: the model's own. `tokenizer`, when given,
    /// must be that vocabulary; `config` must be the model's architecture.
    pub(crate) fn vocab(&self, config: &ModelConfig, tokenizer: Option<&Path>) -> Result<Vocab> {
        let (model_config, _) = self.settings()?;
        let differences = model_differences(config, &model_config);
        if !differences.is_empty() {
            return Err(Error::Config(format!(
                "cannot fine-tune {}: the run's architecture differs from the model's in {} \
                 (the model's value first; fine-tuning keeps the model's architecture: leave out --preset and the \
                 config file's model)",
                self.dir.display(),
                differences.join(", ")
            )));
        }
        let vocab = Vocab::load(&self.dir.join(checkpoint::TOKENIZER_FILE))?;
        if let Some(t) = tokenizer {
            let given = Vocab::load(t)?;
            if given.hash() != vocab.hash() {
                return Err(Error::Config(format!(
                    "cannot fine-tune {}: --tokenizer {} ({} pieces) is not the model's \
                     vocabulary ({} pieces, {}); fine-tuning keeps the model's vocabulary: leave \
                     out --tokenizer",
                    self.dir.display(),
                    t.display(),
                    given.size(),
                    vocab.size(),
                    self.dir.join(checkpoint::TOKENIZER_FILE).display()
                )));
            }
        }
        Ok(vocab)
    }

    /// The model's parameters, as f32 on `device` (a folder saved in f16 or bf16 converts).
    /// Continuing a checkpoint's optimizer continues its training, so a checkpoint whose
    /// model is a moving average gives the weights that optimizer was training (`raw/`).
    pub(crate) fn weights(&self, device: &Device) -> Result<HashMap<String, Tensor>> {
        let raw = self.dir.join(crate::checkpoints::RAW_WEIGHTS_DIR);
        let dir = match self.keep_optimizer && raw.is_dir() {
            true => &raw,
            false => &self.dir,
        };
        Ok(checkpoint::load(dir, DType::F32, device)?.tensors)
    }

    /// Loads the optimiser saved with the model into `optimizer`, and returns the update the
    /// saved run had reached (where the schedule continues). Only with `keep_optimizer`.
    pub(crate) fn restore_optimizer(&self, optimizer: &mut Optimizer) -> Result<u64> {
        let (moments, state) = self.optimizer_files()?;
        optimizer.load(&moments)?;
        let saved = TrainState::load(&state)?;
        Ok(saved.step + saved.schedule_offset)
    }

    fn record(&self) -> Result<Record> {
        Ok(Record {
            model: self.dir.clone(),
            weights_sha256: file_sha256(&self.dir.join(checkpoint::MODEL_FILE))?,
            keep_optimizer: self.keep_optimizer,
        })
    }
}

/// Writes a new run's record of its start (none for a run from scratch).
pub(crate) fn save_record(out: &Path, init: Option<&InitFrom>) -> Result<()> {
    let Some(init) = init else { return Ok(()) };
    let json = serde_json::to_string_pretty(&init.record()?).expect("plain");
    write_atomic(&out.join(RECORD_FILE), json.as_bytes())
}

/// Refuses to resume `out` from another start than the one it recorded.
pub(crate) fn check_resume(out: &Path, init: Option<&InitFrom>) -> Result<()> {
    let path = out.join(RECORD_FILE);
    let saved: Option<Record> = match path.is_file() {
        true => {
            let text = std::fs::read_to_string(&path).map_err(|e| Error::Io {
                path: path.clone(),
                source: e,
            })?;
            Some(
                serde_json::from_str(&text)
                    .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?,
            )
        }
        false => None,
    };
    let cannot = |why: String| {
        Err(Error::Config(format!(
            "cannot resume {}: {why}. Run the command that started it, or use another output \
             folder",
            out.display()
        )))
    };
    match (saved, init) {
        (None, None) => Ok(()),
        (None, Some(i)) => cannot(format!(
            "it was started from scratch, not from {} (--init-from)",
            i.dir.display()
        )),
        (Some(s), None) => cannot(format!(
            "it was started from {} (--init-from)",
            s.model.display()
        )),
        (Some(s), Some(i)) => {
            let now = i.record()?;
            if now.weights_sha256 != s.weights_sha256 {
                return cannot(format!(
                    "it was started from {}, and the weights of {} are not those",
                    s.model.display(),
                    i.dir.display()
                ));
            }
            if now.keep_optimizer != s.keep_optimizer {
                return cannot(format!(
                    "it was started {} --keep-optimizer",
                    if s.keep_optimizer { "with" } else { "without" }
                ));
            }
            Ok(())
        }
    }
}

/// The keys in which two architectures differ, as `key (b -> a)`.
pub fn model_differences(a: &ModelConfig, b: &ModelConfig) -> Vec<String> {
    let (a, b) = (
        serde_json::to_value(a).expect("plain"),
        serde_json::to_value(b).expect("plain"),
    );
    let mut out = Vec::new();
    crate::config::diff_keys("", &a, &b, &mut out);
    out
}

fn file_sha256(path: &Path) -> Result<String> {
    let io = |e| Error::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}
