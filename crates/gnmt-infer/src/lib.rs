//! Decoding with a trained GNMT model: batched greedy search so far (beam search with GNMT's
//! length normalisation and coverage penalty follows with the translate work).
//!
//! Works on token ids only; turning text into ids and back is the caller's business. This
//! crate never sees an optimiser.

mod greedy;

pub use greedy::{greedy_decode, source_batch, LengthLimit};

/// Errors from decoding.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Candle(#[from] candle::Error),
    #[error("{0}")]
    Input(String),
}

pub type Result<T> = std::result::Result<T, Error>;
