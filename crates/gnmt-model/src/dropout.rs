//! Seeded dropout. candle's CPU random generator cannot be seeded, so masks come from a
//! ChaCha stream of our own whose position can be saved and restored with the training state.

use candle::{Result, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rayon::prelude::*;

/// Mask elements drawn per parallel job (a multiple of ChaCha's 16-word block).
const MASK_BLOCK: usize = 1 << 14;

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
        // Element i takes word `start + i` of the stream, as a sequential loop drawing one
        // f32 (one 32-bit word) per element would: ChaCha seeks to any word, so blocks of
        // the mask are drawn in parallel and the mask is the same whatever the thread count.
        let n = x.elem_count();
        let start = self.rng.get_word_pos();
        let mut mask = vec![0f32; n];
        mask.par_chunks_mut(MASK_BLOCK)
            .enumerate()
            .for_each(|(block, out)| {
                let mut rng = self.rng.clone();
                rng.set_word_pos(start + (block * MASK_BLOCK) as u128);
                for m in out {
                    *m = if rng.random::<f32>() < keep {
                        scale
                    } else {
                        0.0
                    };
                }
            });
        self.rng.set_word_pos(start + n as u128);
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle::{DType, Device};
    use rand::RngCore;

    /// The mask drawn in parallel blocks is the one a sequential loop draws, and the generator
    /// ends where that loop leaves it: resumed training sees the same stream.
    #[test]
    fn parallel_masks_equal_the_sequential_draw() {
        let n = 2 * MASK_BLOCK + 1234;
        let x = Tensor::ones(n, DType::F32, &Device::Cpu).unwrap();
        let mut dropout = Dropout::new(0.3, 9);
        dropout.rng.next_u32(); // start mid-block
        let mut sequential = dropout.rng.clone();
        let got: Vec<f32> = dropout.apply(&x).unwrap().to_vec1().unwrap();
        let want: Vec<f32> = (0..n)
            .map(|_| {
                if sequential.random::<f32>() < 0.7 {
                    1.0 / 0.7
                } else {
                    0.0
                }
            })
            .collect();
        assert_eq!(got, want);
        assert_eq!(dropout.rng.next_u32(), sequential.next_u32());
    }
}
