//! Concatenation along the last dimension, optionally times a dropout mask, as one autograd
//! operation: what feeds a decoder layer (its input beside the attention context) and the first
//! encoder layer after the bidirectional one (the two directions side by side).
//!
//! candle's `cat` copies on the calling thread alone, and its backward hands each input a
//! strided view of the gradient, which candle then accumulates on the calling thread too; with
//! dropout after it, the concatenation's own gradient was accumulated once more. Here rows are
//! copied in parallel, forward and backward, and each input receives one dense gradient.

use std::sync::Arc;

use candle::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use gnmt_kernels::buffers::zeros;
use gnmt_kernels::Real;

use crate::storage::{contiguous_slice, tensor_slice};

/// `[a | b]` along the last dimension; `a` and `b` agree on every other dimension.
pub fn cat_last(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    apply(a, b, None)
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

impl Concat {
    fn forward<T: Real>(&self, a: &[T], b: &[T], (wa, wb): (usize, usize), rows: usize) -> Vec<T> {
        let w = wa + wb;
        let mut out = zeros(rows * w);
        if w == 0 {
            return out;
        }
        out.par_chunks_mut(w).enumerate().for_each(|(r, row)| {
            let (left, right) = row.split_at_mut(wa);
            left.copy_from_slice(&a[r * wa..][..wa]);
            right.copy_from_slice(&b[r * wb..][..wb]);
            if let Some(m) = &self.mask {
                for (x, &m) in row.iter_mut().zip(&m[r * w..][..w]) {
                    *x = *x * T::from_f64(m as f64);
                }
            }
        });
        out
    }

    /// The gradient's left and right parts (masked when the output was).
    fn split<T: Real>(&self, g: &[T], (wa, wb): (usize, usize)) -> (Vec<T>, Vec<T>) {
        let w = wa + wb;
        let rows = g.len().checked_div(w).unwrap_or(0);
        let (mut da, mut db) = (zeros(rows * wa), zeros(rows * wb));
        let part = |dst: &mut [T], r: usize, offset: usize| {
            let g = &g[r * w + offset..][..dst.len()];
            match &self.mask {
                Some(m) => {
                    let m = &m[r * w + offset..][..dst.len()];
                    for ((x, &g), &m) in dst.iter_mut().zip(g).zip(m) {
                        *x = g * T::from_f64(m as f64);
                    }
                }
                None => dst.copy_from_slice(g),
            }
        };
        rayon::join(
            || {
                if wa > 0 {
                    da.par_chunks_mut(wa)
                        .enumerate()
                        .for_each(|(r, dst)| part(dst, r, 0));
                }
            },
            || {
                if wb > 0 {
                    db.par_chunks_mut(wb)
                        .enumerate()
                        .for_each(|(r, dst)| part(dst, r, wa));
                }
            },
        );
        (da, db)
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
        let (wa, wb, shape) = dims(l1.shape(), l2.shape())?;
        if let Some(m) = &self.mask {
            if m.len() != shape.elem_count() {
                candle::bail!("concat: mask of {} for {shape:?}", m.len())
            }
        }
        let rows = shape.elem_count().checked_div(wa + wb).unwrap_or(0);
        let out = match (s1, s2) {
            (CpuStorage::F32(a), CpuStorage::F32(b)) => CpuStorage::F32(self.forward(
                contiguous_slice(a, l1, "concat")?,
                contiguous_slice(b, l2, "concat")?,
                (wa, wb),
                rows,
            )),
            (CpuStorage::F64(a), CpuStorage::F64(b)) => CpuStorage::F64(self.forward(
                contiguous_slice(a, l1, "concat")?,
                contiguous_slice(b, l2, "concat")?,
                (wa, wb),
                rows,
            )),
            _ => candle::bail!("concat: two f32 or two f64 inputs"),
        };
        Ok((out, shape))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (wa, wb, _) = dims(a.shape(), b.shape())?;
        let grad = grad.contiguous()?;
        let (storage, layout) = grad.storage_and_layout();
        let device = grad.device();
        macro_rules! parts {
            ($t:ty) => {{
                let g = tensor_slice::<$t>(&storage, layout, "concat")?;
                let (da, db) = self.split(g, (wa, wb));
                (
                    Tensor::from_vec(da, a.shape(), device)?,
                    Tensor::from_vec(db, b.shape(), device)?,
                )
            }};
        }
        let (da, db) = match grad.dtype() {
            candle::DType::F32 => parts!(f32),
            candle::DType::F64 => parts!(f64),
            other => candle::bail!("concat: no backward for {other:?}"),
        };
        Ok((Some(da), Some(db)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle::{DType, Device, Var, D};

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
                    cat_last(&a, &b).unwrap()
                };
                let mut theirs = Tensor::cat(&[a.as_tensor(), b.as_tensor()], D::Minus1).unwrap();
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
            assert!(cat_last(&a, &Tensor::zeros((3, 4, 7), dtype, &dev).unwrap()).is_err());
        }
    }
}
