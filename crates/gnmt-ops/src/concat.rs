//! Concatenation along the last dimension, optionally times a dropout mask, as one autograd
//! operation: what feeds a decoder layer (its input beside the attention context) and the first
//! encoder layer after the bidirectional one (the two directions side by side).
//!
//! candle's `cat` copies on the calling thread alone, and its backward hands each input a
//! strided view of the gradient, which candle then accumulates on the calling thread too; with
//! dropout after it, the concatenation's own gradient was accumulated once more. Here rows are
//! copied in parallel, forward and backward, and each input receives one dense gradient.

use std::sync::Arc;

use candle::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use gnmt_kernels::buffers::zeros;

use gnmt_kernels::Real;

use crate::dispatch::{self, Float, Kernel};
use crate::Kernels;

/// `[a | b]` along the last dimension; `a` and `b` agree on every other dimension.
pub fn cat_last(a: &Tensor, b: &Tensor, kernels: Kernels) -> Result<Tensor> {
    match kernels.fused_on(a.device()) {
        Some(_) => apply(a, b, None),
        None => {
            dims(a.shape(), b.shape())?;
            Tensor::cat(&[a, b], D::Minus1)
        }
    }
}

/// `[a | b] * mask` (`mask` over the concatenation, row-major), the gradient masked alike.
pub(crate) fn cat_last_masked(a: &Tensor, b: &Tensor, mask: Arc<Vec<f32>>) -> Result<Tensor> {
    apply(a, b, Some(mask))
}

fn apply(a: &Tensor, b: &Tensor, mask: Option<Arc<Vec<f32>>>) -> Result<Tensor> {
    a.contiguous()?.apply_op2(&b.contiguous()?, Concat { mask })
}

struct Concat {
    mask: Option<Arc<Vec<f32>>>,
}

/// Row widths of the two inputs, and the output shape.
fn dims(a: &Shape, b: &Shape) -> Result<(usize, usize, Shape)> {
    let (ad, bd) = (a.dims(), b.dims());
    if ad.is_empty() || ad.len() != bd.len() || ad[..ad.len() - 1] != bd[..bd.len() - 1] {
        candle::bail!("concat: {a:?} and {b:?} do not fit side by side")
    }
    let (wa, wb) = (ad[ad.len() - 1], bd[bd.len() - 1]);
    let mut out = ad.to_vec();
    *out.last_mut().expect("rank checked") = wa + wb;
    Ok((wa, wb, Shape::from(out)))
}

impl Kernel<2> for Concat {
    const NAME: &'static str = "concat";

    fn run<T: Float>(&self, [(a, sa), (b, sb)]: [(&[T], &Shape); 2]) -> Result<(Vec<T>, Shape)> {
        let (wa, wb, shape) = dims(sa, sb)?;
        if let Some(m) = &self.mask {
            if m.len() != shape.elem_count() {
                candle::bail!("concat: mask of {} for {shape:?}", m.len())
            }
        }
        let w = wa + wb;
        let mut out = zeros(shape.elem_count());
        if w > 0 {
            out.par_chunks_mut(w).enumerate().for_each(|(r, row)| {
                let (left, right) = row.split_at_mut(wa);
                left.copy_from_slice(&a[r * wa..][..wa]);
                right.copy_from_slice(&b[r * wb..][..wb]);
                if let Some(m) = &self.mask {
                    for (x, &m) in row.iter_mut().zip(&m[r * w..][..w]) {
                        *x *= <T as Real>::from_f64(m as f64);
                    }
                }
            });
        }
        Ok((out, shape))
    }
}

impl CustomOp2 for Concat {
    fn name(&self) -> &'static str {
        "concat"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        dispatch::run(self, [(s1, l1), (s2, l2)])
    }

    /// Each input receives its columns of the gradient, masked when the output was.
    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (wa, wb, _) = dims(a.shape(), b.shape())?;
        let grad = grad.contiguous()?;
        let columns = |from, width| Columns {
            from,
            width,
            mask: self.mask.clone(),
        };
        let da = grad.apply_op1_no_bwd(&columns(0, wa))?;
        let db = grad.apply_op1_no_bwd(&columns(wa, wb))?;
        Ok((Some(da), Some(db)))
    }
}

/// Columns `from..from + width` of the last dimension of `t`, with no backward pass.
pub(crate) fn columns(t: &Tensor, from: usize, width: usize) -> Result<Tensor> {
    t.contiguous()?.apply_op1_no_bwd(&Columns {
        from,
        width,
        mask: None,
    })
}

/// Columns `from..from + width` of the last dimension, times the same columns of a mask over
/// the whole input: the backward pass of [`Concat`], one input's part.
struct Columns {
    from: usize,
    width: usize,
    mask: Option<Arc<Vec<f32>>>,
}

impl Kernel<1> for Columns {
    const NAME: &'static str = "concat";

    fn run<T: Float>(&self, [(g, shape)]: [(&[T], &Shape); 1]) -> Result<(Vec<T>, Shape)> {
        let mut dims = shape.dims().to_vec();
        let w = dims.last().copied().unwrap_or(0);
        if self.from + self.width > w || self.mask.as_ref().is_some_and(|m| m.len() != g.len()) {
            candle::bail!("concat: columns {}+{} of {shape:?}", self.from, self.width)
        }
        *dims.last_mut().expect("width checked") = self.width;
        let rows = g.len().checked_div(w).unwrap_or(0);
        let mut out = zeros(rows * self.width);
        if self.width > 0 {
            out.par_chunks_mut(self.width)
                .enumerate()
                .for_each(|(r, dst)| {
                    let at = r * w + self.from;
                    let g = &g[at..][..self.width];
                    match &self.mask {
                        Some(m) => {
                            let m = &m[at..][..self.width];
                            for ((x, &g), &m) in dst.iter_mut().zip(g).zip(m) {
                                *x = g * <T as Real>::from_f64(m as f64);
                            }
                        }
                        None => dst.copy_from_slice(g),
                    }
                });
        }
        Ok((out, Shape::from(dims)))
    }
}

impl CustomOp1 for Columns {
    fn name(&self) -> &'static str {
        "concat-backward"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        dispatch::run(self, [(s, l)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle::{DType, Device, Var};

    /// Values and gradients against candle's `cat` (and `cat` then the same mask), f32 and f64,
    /// with a leading batch dimension and rows of different widths.
    #[test]
    fn matches_candle_cat_with_and_without_a_mask() {
        for dtype in [DType::F32, DType::F64] {
            let dev = Device::Cpu;
            let a = Var::from_tensor(
                &Tensor::randn(0f32, 1., (3, 5, 4), &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap(),
            )
            .unwrap();
            let b = Var::from_tensor(
                &Tensor::randn(0f32, 1., (3, 5, 7), &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap(),
            )
            .unwrap();
            let probe = Tensor::randn(0f32, 1., (3, 5, 11), &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let mask: Vec<f32> = (0..3 * 5 * 11)
                .map(|i| [0.0, 1.25, 1.25, 1.25][i % 4])
                .collect();
            let mask_t = Tensor::from_vec(mask.clone(), (3, 5, 11), &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            for masked in [false, true] {
                let ours = if masked {
                    cat_last_masked(&a, &b, Arc::new(mask.clone())).unwrap()
                } else {
                    cat_last(&a, &b, Kernels::default()).unwrap()
                };
                let mut theirs = cat_last(&a, &b, Kernels::Reference).unwrap();
                if masked {
                    theirs = (theirs * &mask_t).unwrap();
                }
                let run = |t: &Tensor| {
                    let grads = (t * &probe).unwrap().sum_all().unwrap().backward().unwrap();
                    [
                        t.clone(),
                        grads.get(&a).unwrap().clone(),
                        grads.get(&b).unwrap().clone(),
                    ]
                };
                for (x, y) in run(&ours).iter().zip(run(&theirs).iter()) {
                    let diff = (x - y)
                        .unwrap()
                        .abs()
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .max(0)
                        .unwrap();
                    assert_eq!(
                        diff.to_dtype(DType::F64)
                            .unwrap()
                            .to_scalar::<f64>()
                            .unwrap(),
                        0.0
                    );
                }
            }
            let misfit = Tensor::zeros((3, 4, 7), dtype, &dev).unwrap();
            assert!(cat_last(&a, &misfit, Kernels::default()).is_err());
            assert!(cat_last(&a, &misfit, Kernels::Reference).is_err());
        }
    }
}
