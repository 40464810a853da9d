//! Seeded dropout. candle's CPU random generator cannot be seeded, so masks come from a
//! ChaCha stream of our own whose position can be saved and restored with the training state.

use std::sync::Arc;

use candle::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rayon::prelude::*;

/// Mask elements drawn per parallel job (a multiple of ChaCha's 16-word block).
const MASK_BLOCK: usize = 1 << 14;

/// Stream words fetched at once while drawing a mask block (4 KiB, in L1).
const WORDS_AT_ONCE: usize = 1024;

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
        match self.draw_mask(x.elem_count()) {
            Some(mask) => x.contiguous()?.apply_op1(Masked(mask)),
            None => Ok(x.clone()),
        }
    }

    /// `apply(cat([a, b], last dimension))` as one operation ([`crate::concat`]): the same
    /// values, gradients and generator stream.
    pub fn apply_cat(&mut self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let n = a.elem_count() + b.elem_count();
        match self.draw_mask(n) {
            Some(mask) => crate::concat::cat_last_masked(a, b, mask),
            None => crate::concat::cat_last(a, b),
        }
    }

    /// The next `n` mask elements (`None` when nothing is dropped).
    fn draw_mask(&mut self, n: usize) -> Option<Arc<Vec<f32>>> {
        if self.p == 0.0 {
            return None;
        }
        let keep = 1.0 - self.p;
        let scale = 1.0 / keep;
        // `rng.random::<f32>()` is `(word >> 8) as f32 * 2^-24`, every step exact, so
        // `random < keep` is `(word >> 8) as f32 < keep * 2^24`: the same decision, made on
        // a block of words at once, which vectorises (drawing and testing one f32 at a time
        // cost 4% of a training step).
        let threshold = keep * (1u32 << 24) as f32;
        // Element i takes word `start + i` of the stream, as a sequential loop drawing one
        // f32 (one 32-bit word) per element would: ChaCha seeks to any word, so blocks of
        // the mask are drawn in parallel and the mask is the same whatever the thread count.
        let start = self.rng.get_word_pos();
        let mut mask = crate::kernels::zeros(n);
        mask.par_chunks_mut(MASK_BLOCK)
            .enumerate()
            .for_each(|(block, out)| {
                let mut rng = self.rng.clone();
                rng.set_word_pos(start + (block * MASK_BLOCK) as u128);
                let mut words = [0u32; WORDS_AT_ONCE];
                for part in out.chunks_mut(WORDS_AT_ONCE) {
                    let words = &mut words[..part.len()];
                    // Successive words of the stream, as successive `next_u32` calls give.
                    rng.fill(words);
                    keep_or_drop(words, threshold, scale, part);
                }
            });
        self.rng.set_word_pos(start + n as u128);
        Some(Arc::new(mask))
    }
}

/// `scale` where a word's top 24 bits are below `threshold`, else 0. The two numbers come by
/// value: captured by reference, they were reloaded for every element and nothing vectorised.
fn keep_or_drop(words: &[u32], threshold: f32, scale: f32, out: &mut [f32]) {
    for (m, &word) in out.iter_mut().zip(words) {
        *m = if ((word >> 8) as f32) < threshold {
            scale
        } else {
            0.0
        };
    }
}

/// `x * mask` elementwise, in parallel, and the same product for the gradient (candle's `mul`
/// ran on the calling thread alone, forward and backward).
struct Masked(Arc<Vec<f32>>);

impl Masked {
    fn times<T: crate::kernels::Real>(&self, x: &[T]) -> Vec<T> {
        let mut out = crate::kernels::zeros(x.len());
        out.par_iter_mut()
            .zip(x.par_iter().zip(self.0.par_iter()))
            .for_each(|(o, (&x, &m))| *o = x * T::from_f64(m as f64));
        out
    }
}

impl CustomOp1 for Masked {
    fn name(&self) -> &'static str {
        "dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        if l.shape().elem_count() != self.0.len() {
            candle::bail!("dropout: mask of {} for {:?}", self.0.len(), l.shape())
        }
        use crate::kernels::contiguous_slice;
        let out = match s {
            CpuStorage::F32(x) => CpuStorage::F32(self.times(contiguous_slice(x, l, "dropout")?)),
            CpuStorage::F64(x) => CpuStorage::F64(self.times(contiguous_slice(x, l, "dropout")?)),
            _ => candle::bail!("dropout: f32 or f64 only"),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            grad.contiguous()?
                .apply_op1_no_bwd(&Masked(self.0.clone()))?,
        ))
    }
}

/// Applies dropout when training (`Some`), passes through otherwise.
pub(crate) fn maybe(dropout: &mut Option<&mut Dropout>, x: &Tensor) -> Result<Tensor> {
    match dropout {
        Some(d) => d.apply(x),
        None => Ok(x.clone()),
    }
}

/// [`maybe`] of `a` and `b` side by side (last dimension), in one operation.
pub(crate) fn maybe_cat(
    dropout: &mut Option<&mut Dropout>,
    a: &Tensor,
    b: &Tensor,
) -> Result<Tensor> {
    match dropout {
        Some(d) => d.apply_cat(a, b),
        None => crate::concat::cat_last(a, b),
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

    /// The gradient flows through the kept elements, scaled as they were: `probe * mask`.
    #[test]
    fn the_gradient_is_masked_like_the_values() {
        for dtype in [DType::F32, DType::F64] {
            let x = candle::Var::from_tensor(&Tensor::ones((3, 700), dtype, &Device::Cpu).unwrap())
                .unwrap();
            let mask = Dropout::new(0.4, 3).apply(&x).unwrap(); // x is 1: the output is the mask
            let probe = Tensor::rand(0f32, 1.0, (3, 700), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let grads = (&mask * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let got = grads.get(&x).unwrap().to_dtype(DType::F64).unwrap();
            let want = (mask * probe).unwrap().to_dtype(DType::F64).unwrap();
            let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(diff.to_scalar::<f64>().unwrap(), 0.0, "{dtype:?}");
        }
    }
}
