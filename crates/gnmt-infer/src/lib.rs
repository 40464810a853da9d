//! Decoding with a trained GNMT model: batched greedy search, and batched beam search with
//! GNMT's length normalisation and coverage penalty.
//!
//! Works on token ids only; turning text into ids and back is the caller's business. This
//! crate never sees an optimiser.

mod beam;
mod greedy;
mod translator;

pub use beam::{beam_search, coverage_penalty, length_penalty, BeamOptions, Hypothesis};
pub use greedy::{greedy_decode, source_batch, LengthLimit};
pub use translator::{LineResult, Translation, Translator};

/// Errors from decoding.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Candle(#[from] candle::Error),
    #[error("{0}")]
    Input(String),
}

pub type Result<T> = std::result::Result<T, Error>;
