//! Everything besides the parameters and optimiser moments that an exact resume needs.

use std::path::Path;

use gnmt_tokenizer::Cursor;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A ChaCha generator's exact position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    pub seed: [u8; 32],
    pub stream: u64,
    /// Word position, as a decimal string (u128 does not fit JSON numbers).
    pub word_pos: String,
}

impl RngState {
    pub fn capture(rng: &ChaCha20Rng) -> Self {
        Self {
            seed: rng.get_seed(),
            stream: rng.get_stream(),
            word_pos: rng.get_word_pos().to_string(),
        }
    }

    pub fn restore(&self) -> Result<ChaCha20Rng> {
        let mut rng = ChaCha20Rng::from_seed(self.seed);
        rng.set_stream(self.stream);
        let pos = self
            .word_pos
            .parse::<u128>()
            .map_err(|_| Error::Checkpoint(format!("bad RNG position {:?}", self.word_pos)))?;
        rng.set_word_pos(pos);
        Ok(rng)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Updates applied so far (skipped non-finite batches do not count).
    pub step: u64,
    /// Batches consumed, skipped ones included.
    pub batches: u64,
    /// The next batch to train on.
    pub cursor: Cursor,
    pub dropout_rng: RngState,
    pub best_bleu: Option<f64>,
    pub best_step: Option<u64>,
    /// Validations since the last BLEU improvement (early stopping).
    pub stalled: u32,
    /// Wall time spent training, summed over sessions.
    pub elapsed_secs: f64,
    pub target_tokens: u64,
    pub nonfinite_skipped: u64,
    pub nonfinite_in_a_row: u32,
    /// In a job of several processes, the dropout streams of ranks 1, 2, ... (rank 0's is
    /// `dropout_rng`): a job resumed with as many ranks continues their masks exactly.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rank_dropout_rngs: Vec<RngState>,
    /// Updates of the run this one fine-tunes with its optimiser kept (`--keep-optimizer`):
    /// the learning-rate schedule continues at `step + schedule_offset`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub schedule_offset: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl TrainState {
    pub fn fresh(dropout_rng: &ChaCha20Rng) -> Self {
        Self {
            step: 0,
            batches: 0,
            cursor: Cursor::default(),
            dropout_rng: RngState::capture(dropout_rng),
            best_bleu: None,
            best_step: None,
            stalled: 0,
            elapsed_secs: 0.0,
            target_tokens: 0,
            nonfinite_skipped: 0,
            nonfinite_in_a_row: 0,
            rank_dropout_rngs: Vec::new(),
            schedule_offset: 0,
        }
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        serde_json::from_str(&text)
            .map_err(|e| Error::Checkpoint(format!("{}: {e}", path.display())))
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic(
            path,
            serde_json::to_string_pretty(self)
                .expect("plain struct")
                .as_bytes(),
        )
    }
}

/// Atomic write (temporary file, fsync, rename), shared with the text side.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    gnmt_tokenizer::io::write_atomic(path, bytes).map_err(Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::RngCore;

    #[test]
    fn rng_state_round_trips_mid_stream() {
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        for _ in 0..37 {
            rng.next_u32();
        }
        let saved = RngState::capture(&rng);
        let json = serde_json::to_string(&saved).unwrap();
        let mut back = serde_json::from_str::<RngState>(&json)
            .unwrap()
            .restore()
            .unwrap();
        for _ in 0..100 {
            assert_eq!(rng.next_u64(), back.next_u64());
        }
    }
}
