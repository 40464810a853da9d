//! Seeded dropout. candle's CPU random generator cannot be seeded, so masks come from a
//! ChaCha stream of our own whose position can be saved and restored with the training state.

use std::sync::Arc;

use candle::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use crate::dispatch::{self, Float, Kernel};
use crate::Kernels;

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

    pub fn apply(&mut self, x: &Tensor, kernels: Kernels) -> Result<Tensor> {
        let Some(mask) = self.draw_mask(x.elem_count()) else {
            return Ok(x.clone());
        };
        match kernels {
            Kernels::Fused(_) => x.contiguous()?.apply_op1(Masked(mask)),
            Kernels::Reference => x.mul(&mask_tensor(&mask, x)?),
        }
    }

    /// `apply(cat([a, b], last dimension))`, as one operation when fused
    /// ([`crate::concat`]): the same values, gradients and generator stream.
    pub fn apply_cat(&mut self, a: &Tensor, b: &Tensor, kernels: Kernels) -> Result<Tensor> {
        let n = a.elem_count() + b.elem_count();
        let mask = self.draw_mask(n);
        match (kernels, mask) {
            (Kernels::Fused(_), Some(mask)) => crate::concat::cat_last_masked(a, b, mask),
            (Kernels::Fused(_), None) => crate::concat::cat_last(a, b, kernels),
            (Kernels::Reference, mask) => {
                let ab = crate::concat::cat_last(a, b, kernels)?;
                match mask {
                    Some(mask) => ab.mul(&mask_tensor(&mask, &ab)?),
                    None => Ok(ab),
                }
            }
        }
    }

    /// The next `n` mask elements (`None` when nothing is dropped).
    fn draw_mask(&mut self, n: usize) -> Option<Arc<Vec<f32>>> {
        (self.p != 0.0)
            .then(|| Arc::new(gnmt_kernels::dropout::draw_mask(&mut self.rng, self.p, n)))
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
}
