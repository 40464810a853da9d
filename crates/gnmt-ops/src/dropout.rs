//! Seeded dropout. candle's CPU random generator cannot be seeded, so masks come from a
//! ChaCha stream of our own whose position can be saved and restored with the training state.

use std::sync::Arc;

use candle::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use crate::dispatch::{self, Float, Kernel};
use crate::stream_dropout::StreamSlice;
use crate::Kernels;

/// Inverted dropout with probability `p`: kept values are scaled by `1 / (1 - p)`, so nothing
/// changes at inference, where no `Dropout` is passed at all.
#[derive(Debug, Clone)]
pub struct Dropout {
    p: f32,
    rng: ChaCha20Rng,
    /// Probabilities of dropping a whole source / target token's embedding.
    words: [f32; 2],
}

/// Which side's embeddings [`Dropout::drop_words`] drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source = 0,
    Target = 1,
}

impl Dropout {
    pub fn new(p: f32, seed: u64) -> Self {
        assert!(
            (0.0..1.0).contains(&p),
            "dropout probability must be in [0, 1)"
        );
        Self::from_rng(p, ChaCha20Rng::seed_from_u64(seed))
    }

    /// Resumes from a saved generator.
    pub fn from_rng(p: f32, rng: ChaCha20Rng) -> Self {
        Self {
            p,
            rng,
            words: [0.0; 2],
        }
    }

    /// Also drops whole tokens' embeddings, with probability `source` on the source side and
    /// `target` on the decoder's input (Gal & Ghahramani 2016; Marian's `--dropout-src` and
    /// `--dropout-trg`). Their masks come from the same stream.
    pub fn with_word_dropout(mut self, source: f32, target: f32) -> Self {
        for p in [source, target] {
            assert!(
                (0.0..1.0).contains(&p),
                "word dropout probability must be in [0, 1)"
            );
        }
        self.words = [source, target];
        self
    }

    pub fn rng(&self) -> &ChaCha20Rng {
        &self.rng
    }

    pub fn p(&self) -> f32 {
        self.p
    }

    pub fn apply(&mut self, x: &Tensor, kernels: Kernels) -> Result<Tensor> {
        if self.p != 0.0 && masks_on_device(x, kernels) {
            let slice = StreamSlice::take(&mut self.rng, self.p, x.elem_count(), 1);
            return crate::stream_dropout::apply(x, slice);
        }
        match self.draw_mask(x.elem_count()) {
            Some(mask) => times_mask(x, mask, kernels),
            None => Ok(x.clone()),
        }
    }

    /// `apply(cat([a, b], last dimension))`, as one operation when fused
    /// ([`crate::concat`]): the same values, gradients and generator stream.
    pub fn apply_cat(&mut self, a: &Tensor, b: &Tensor, kernels: Kernels) -> Result<Tensor> {
        let n = a.elem_count() + b.elem_count();
        if self.p != 0.0 && masks_on_device(a, kernels) {
            let ab = crate::concat::cat_last(a, b, kernels)?;
            let slice = StreamSlice::take(&mut self.rng, self.p, n, 1);
            return crate::stream_dropout::apply(&ab, slice);
        }
        let mask = self.draw_mask(n);
        match (kernels.fused_on(a.device()), mask) {
            (Some(_), Some(mask)) => crate::concat::cat_last_masked(a, b, mask),
            (Some(_), None) => crate::concat::cat_last(a, b, kernels),
            (None, mask) => {
                let ab = crate::concat::cat_last(a, b, kernels)?;
                match mask {
                    Some(mask) => ab.mul(&mask_tensor(&mask, &ab)?),
                    None => Ok(ab),
                }
            }
        }
    }

    /// Word dropout of the embeddings `x [.., E]` of `side`: each token's whole vector is
    /// zeroed with that side's probability, the kept ones scaled by `1 / (1 - p)`.
    pub fn drop_words(&mut self, x: &Tensor, side: Side, kernels: Kernels) -> Result<Tensor> {
        let p = self.words[side as usize];
        if p == 0.0 {
            return Ok(x.clone());
        }
        let dim = x.dims().last().copied().unwrap_or(1).max(1);
        if masks_on_device(x, kernels) {
            let slice = StreamSlice::take(&mut self.rng, p, x.elem_count() / dim, dim);
            return crate::stream_dropout::apply(x, slice);
        }
        let tokens = gnmt_kernels::dropout::draw_mask(&mut self.rng, p, x.elem_count() / dim);
        let mask: Vec<f32> = tokens
            .iter()
            .flat_map(|&m| std::iter::repeat_n(m, dim))
            .collect();
        times_mask(x, Arc::new(mask), kernels)
    }

    /// The next `n` mask elements (`None` when nothing is dropped).
    fn draw_mask(&mut self, n: usize) -> Option<Arc<Vec<f32>>> {
        (self.p != 0.0)
            .then(|| Arc::new(gnmt_kernels::dropout::draw_mask(&mut self.rng, self.p, n)))
    }
}

/// Whether `x`'s masks are generated where it is (a GPU, with the fused kernels) rather than
/// drawn on the CPU and copied there.
fn masks_on_device(x: &Tensor, kernels: Kernels) -> bool {
    kernels.cuda_on(x.device())
}

/// `x * mask` elementwise: the fused op, or candle's product for the reference.
fn times_mask(x: &Tensor, mask: Arc<Vec<f32>>, kernels: Kernels) -> Result<Tensor> {
    match kernels.fused_on(x.device()) {
        Some(_) => x.contiguous()?.apply_op1(Masked(mask)),
        None => x.mul(&mask_tensor(&mask, x)?),
    }
}

/// A mask as a tensor shaped, typed and placed like `x`: the reference's multiplier.
fn mask_tensor(mask: &[f32], x: &Tensor) -> Result<Tensor> {
    Tensor::from_slice(mask, x.shape(), x.device())?.to_dtype(x.dtype())
}

/// `x * mask` elementwise, in parallel, and the same product for the gradient (candle's `mul`
/// ran on the calling thread alone, forward and backward).
struct Masked(Arc<Vec<f32>>);

impl Kernel<1> for Masked {
    const NAME: &'static str = "dropout";

    fn run<T: Float>(&self, [(x, shape)]: [(&[T], &Shape); 1]) -> Result<(Vec<T>, Shape)> {
        if x.len() != self.0.len() {
            candle::bail!("dropout: mask of {} for {shape:?}", self.0.len())
        }
        Ok((gnmt_kernels::dropout::times_mask(x, &self.0), shape.clone()))
    }
}

impl CustomOp1 for Masked {
    fn name(&self) -> &'static str {
        "dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        dispatch::run(self, [(s, l)])
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            grad.contiguous()?
                .apply_op1_no_bwd(&Masked(self.0.clone()))?,
        ))
    }
}

/// Applies dropout when training (`Some`), passes through otherwise.
pub fn maybe(dropout: &mut Option<&mut Dropout>, x: &Tensor, kernels: Kernels) -> Result<Tensor> {
    match dropout {
        Some(d) => d.apply(x, kernels),
        None => Ok(x.clone()),
    }
}

/// Word dropout of `side`'s embeddings when training ([`Dropout::drop_words`]).
pub fn maybe_words(
    dropout: &mut Option<&mut Dropout>,
    x: &Tensor,
    side: Side,
    kernels: Kernels,
) -> Result<Tensor> {
    match dropout {
        Some(d) => d.drop_words(x, side, kernels),
        None => Ok(x.clone()),
    }
}

/// [`maybe`] of `a` and `b` side by side (last dimension), in one operation when fused.
pub fn maybe_cat(
    dropout: &mut Option<&mut Dropout>,
    a: &Tensor,
    b: &Tensor,
    kernels: Kernels,
) -> Result<Tensor> {
    match dropout {
        Some(d) => d.apply_cat(a, b, kernels),
        None => crate::concat::cat_last(a, b, kernels),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle::{DType, Device};

    /// The gradient flows through the kept elements, scaled as they were: `probe * mask`.
    #[test]
    fn the_gradient_is_masked_like_the_values() {
        for dtype in [DType::F32, DType::F64] {
            let x = candle::Var::from_tensor(&Tensor::ones((3, 700), dtype, &Device::Cpu).unwrap())
                .unwrap();
            let mask = Dropout::new(0.4, 3).apply(&x, Kernels::default()).unwrap(); // x is 1: the output is the mask
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

    /// Word dropout zeroes whole rows (tokens), about `p` of them, scales the rest by
    /// `1 / (1 - p)`, touches only its side, and gives the same rows with either kernels.
    #[test]
    fn word_dropout_drops_whole_tokens_of_its_side() {
        let (tokens, dim) = (2000, 6);
        let x = Tensor::ones((4, tokens / 4, dim), DType::F32, &Device::Cpu).unwrap();
        let mut fused = Dropout::new(0.0, 9).with_word_dropout(0.25, 0.0);
        let mut reference = fused.clone();
        assert_eq!(
            fused
                .drop_words(&x, Side::Target, Kernels::default())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            vec![1.0; tokens * dim],
            "the target side has no word dropout here"
        );
        let got = fused
            .drop_words(&x, Side::Source, Kernels::default())
            .unwrap();
        let want = reference
            .drop_words(&x, Side::Source, Kernels::Reference)
            .unwrap();
        let rows = got
            .reshape((tokens, dim))
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(
            rows,
            want.reshape((tokens, dim))
                .unwrap()
                .to_vec2::<f32>()
                .unwrap()
        );
        let mut dropped = 0;
        for row in &rows {
            assert!(
                row.iter().all(|&v| v == row[0]),
                "a token is dropped whole: {row:?}"
            );
            match row[0] {
                0.0 => dropped += 1,
                v => assert!((v - 1.0 / 0.75).abs() < 1e-6, "{v}"),
            }
        }
        assert!(
            (400..600).contains(&dropped),
            "{dropped} of {tokens} dropped"
        );
    }
}
