//! Training GNMT models: `train` runs a resumable, reproducible training session into a run
//! folder that is always a loadable model folder.
//!
//! - [`config`]: `TrainConfig` (file + overrides), saved as `train_config.json`.
//! - [`schedule`]: the learning rate as a pure function of the update number.
//! - [`optim`]: Adam/SGD with saveable moments. [`grads`]: global and per-layer norms.
//! - [`loss`]: label-smoothed cross-entropy. [`state`]: what an exact resume needs.
//! - [`step`]: one update (loss, gradients, clipping and the optimiser's step), shared with
//!   the training benchmark; gradient accumulation over several batches.
//! - [`sync`]: what keeps the ranks of a job on one model (all-reduce, broadcast, checksum).
//! - [`init_from`]: fine-tuning, a run that starts from a trained model.
//! - [`corpora`]: the run's corpora; a multilingual model's language pairs and tags.
//! - [`trainer`]: the loop, validation (loss, greedy BLEU/chrF) and checkpoints.

mod checkpoints;
pub mod config;
pub mod corpora;
mod ema;
pub mod grads;
pub mod init_from;
pub mod loss;
mod metrics_log;
#[cfg(feature = "nccl")]
mod nccl;
pub mod optim;
pub mod progress;
pub mod schedule;
pub mod state;
pub mod step;
pub mod sync;
pub mod trainer;
mod validate;

use std::path::PathBuf;

pub use checkpoints::latest_checkpoint;
pub use config::TrainConfig;
pub use corpora::CorpusSpec;
pub use init_from::InitFrom;
pub use loss::{batch_loss, label_smoothed_nll, BatchLoss};
pub use trainer::{train, Outcome, TrainArgs};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Candle(#[from] candle::Error),
    #[error(transparent)]
    Text(#[from] gnmt_tokenizer::Error),
    #[error(transparent)]
    ModelFolder(#[from] gnmt_model::checkpoint::CheckpointError),
    #[error(transparent)]
    Decode(#[from] gnmt_infer::Error),
    #[error(transparent)]
    Metrics(#[from] gnmt_metrics::Error),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("training stopped: {0}")]
    Diverged(String),
    #[error("{0}")]
    OutOfMemory(String),
}

pub type Result<T> = std::result::Result<T, Error>;
