//! Seeded dropout. candle's CPU random generator cannot be seeded, so masks come from a
//! ChaCha stream of our own whose position can be saved and restored with the training state.

use candle::{Result, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// Inverted dropout with probability `p`: kept values are scaled by `1 / (1 - p)`, so nothing
/// changes at inference, where no `Dropout` is passed at all.
#[derive(Debug, Clone)]
pub struct Dropout {
    p: f32,
    rng: ChaCha20Rng,
}

impl Dropout {
    pub fn new(p: f32, seed: u64) -> Self {
        assert!(
            (0.0..1.0).contains(&p),
            "dropout probability must be in [0, 1)"
        );
        Self {
            p,
            rng: ChaCha20Rng::seed_from_u64(seed),
        }
    }

    /// Resumes from a saved generator.
    pub fn from_rng(p: f32, rng: ChaCha20Rng) -> Self {
        Self { p, rng }
    }

    pub fn rng(&self) -> &ChaCha20Rng {
        &self.rng
    }

    pub fn p(&self) -> f32 {
        self.p
    }

    pub fn apply(&mut self, x: &Tensor) -> Result<Tensor> {
        if self.p == 0.0 {
            return Ok(x.clone());
        }
        let keep = 1.0 - self.p;
        let scale = 1.0 / keep;
        let mask: Vec<f32> = (0..x.elem_count())
            .map(|_| {
                if self.rng.random::<f32>() < keep {
                    scale
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        x * mask
    }
}

/// Applies dropout when training (`Some`), passes through otherwise.
pub(crate) fn maybe(dropout: &mut Option<&mut Dropout>, x: &Tensor) -> Result<Tensor> {
    match dropout {
        Some(d) => d.apply(x),
        None => Ok(x.clone()),
    }
}
