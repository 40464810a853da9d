//! Decoding with a trained GNMT model: batched greedy search, and batched beam search with
//! GNMT's length normalisation and coverage penalty.
//!
//! Works on token ids only; turning text into ids and back is the caller's business (the
//! [`Translator`] does both). Decoding over vocabulary shortlists ([`shortlist`]) and the
//! lexical tables they come from ([`lexicon`]) live here too. This crate never sees an
//! optimiser.

mod beam;
mod ensemble;
mod greedy;
pub mod lexicon;
pub mod shortlist;
mod translator;

pub use beam::{
    beam_search, beam_search_ensemble, beam_search_shortlisted, coverage_penalty, length_penalty,
    BeamOptions, Hypothesis, Work,
};
pub use ensemble::{Combination, Ensemble, Member};
pub use greedy::{greedy_decode, source_batch, LengthLimit};
pub use shortlist::{Shortlist, ShortlistOptions};
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

/// The model the unit tests decode with: the `tiny` preset's layout (3+3 layers, residual from
/// layer 3) at 8 units and a 64-entry vocabulary, small enough for exhaustive checks.
#[cfg(test)]
pub(crate) fn test_config() -> gnmt_model::ModelConfig {
    gnmt_model::ModelConfig {
        vocab_size: 64,
        embedding_dim: 8,
        hidden_size: 8,
        attention_size: 8,
        ..gnmt_model::ModelConfig::tiny()
    }
}
