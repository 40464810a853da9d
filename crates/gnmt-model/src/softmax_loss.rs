//! The output softmax and the training loss as one fused operation.
//!
//! Over a batch of 2,000 target tokens and a vocabulary of 8,000 the logits are 16 million
//! values. Composed from candle ops (bias add, log-softmax, gather, mean, their gradients) the
//! loss allocates and walks a dozen tensors of that size per step, and the page faults alone
//! cost more than the arithmetic. Fused, the forward pass reads the logits row by row and
//! writes two numbers per token; the backward pass recomputes the softmax and writes the
//! gradient once, together with the bias gradient.
//!
//! Per token with logits `z = x + bias`, target `y` and smoothing `eps`, the output holds
//! `[smoothed, nll]`:
//! `nll = logsumexp(z) - z_y` and `smoothed = (1 - eps) nll + eps (logsumexp(z) - mean(z))`,
//! the cross-entropy against `(1 - eps) onehot(y) + eps / V` (as
//! [`reference_token_losses`], which the tests compare against). Padded tokens give 0 and no
//! gradient. Rows are independent, so the result does not depend on the number of threads.

use candle::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use crate::kernels::Real;

/// `logits [N, V]` (without bias), `bias [V]`, `targets [N]` (u32), `keep [N]` (1 real, 0
/// pad) -> `[N, 2]`: label-smoothed loss and plain negative log-likelihood per token.
pub fn token_losses(
    logits: &Tensor,
    bias: &Tensor,
    targets: &Tensor,
    keep: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let (n, v) = logits.dims2()?;
    if bias.dims() != [v] || targets.dims() != [n] || keep.dims() != [n] {
        candle::bail!(
            "token losses: logits {:?}, bias {:?}, targets {:?}, mask {:?} do not fit",
            logits.dims(),
            bias.dims(),
            targets.dims(),
            keep.dims()
        )
    }
    let targets = targets.to_dtype(DType::U32)?.to_vec1::<u32>()?;
    if let Some(bad) = targets.iter().find(|&&t| t as usize >= v) {
        candle::bail!("token losses: target id {bad} outside the vocabulary of {v}")
    }
    let keep = keep
        .to_dtype(DType::F32)?
        .to_vec1::<f32>()?
        .into_iter()
        .map(|k| k != 0.0)
        .collect();
    let op = TokenLosses { targets, keep, eps };
    logits.contiguous()?.apply_op2(&bias.contiguous()?, op)
}

/// The same computation from candle ops (the reference).
pub fn reference_token_losses(
    logits: &Tensor,
    bias: &Tensor,
    targets: &Tensor,
    keep: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(&logits.broadcast_add(bias)?, D::Minus1)?;
    let nll = logp.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?;
    let uniform = logp.mean(D::Minus1)?.neg()?;
    let smoothed = ((&nll * (1.0 - eps))? + (uniform * eps)?)?;
    let keep = keep.to_dtype(logits.dtype())?;
    Tensor::stack(&[(smoothed * &keep)?, (nll * &keep)?], 1)
}

struct TokenLosses {
    targets: Vec<u32>,
    keep: Vec<bool>,
    eps: f64,
}

/// `(logsumexp(row), sum(row))` of a row of logits plus bias.
fn row_stats<T: Real>(z: &[T], bias: &[T]) -> (T, T) {
    let mut max = T::from_f64(f64::NEG_INFINITY);
    let mut sum = T::default();
    for (&x, &b) in z.iter().zip(bias) {
        let v = x + b;
        max = max.max_(v);
        sum += v;
    }
    let mut total = T::default();
    for (&x, &b) in z.iter().zip(bias) {
        total += (x + b - max).exp_();
    }
    (max + total.ln_(), sum)
}

fn forward<T: Real>(z: &[T], bias: &[T], op: &TokenLosses, v: usize) -> Vec<T> {
    let eps = T::from_f64(op.eps);
    let inv_v = T::from_f64(1.0 / v as f64);
    let mut out = vec![T::default(); op.targets.len() * 2];
    out.par_chunks_mut(2)
        .zip(z.par_chunks(v))
        .enumerate()
        .for_each(|(n, (o, row))| {
            if !op.keep[n] {
                return;
            }
            let (lse, sum) = row_stats(row, bias);
            let y = op.targets[n] as usize;
            let nll = lse - (row[y] + bias[y]);
            o[0] = (T::ONE - eps) * nll + eps * (lse - sum * inv_v);
            o[1] = nll;
        });
    out
}

/// Gradient of `sum(g * out)` with respect to the logits (and, summed over rows, the bias):
/// per row `(g0 + g1) softmax(z) - g0 q - g1 onehot(y)`, with `q` the smoothed target.
fn backward<T: Real>(z: &[T], bias: &[T], g: &[T], op: &TokenLosses, v: usize) -> (Vec<T>, Vec<T>) {
    let eps = T::from_f64(op.eps);
    let uniform = T::from_f64(op.eps / v as f64);
    let mut dz = vec![T::default(); z.len()];
    dz.par_chunks_mut(v)
        .zip(z.par_chunks(v))
        .enumerate()
        .for_each(|(n, (d, row))| {
            if !op.keep[n] {
                return;
            }
            let (g0, g1) = (g[2 * n], g[2 * n + 1]);
            let (lse, _) = row_stats(row, bias);
            let scale = g0 + g1;
            let spread = g0 * uniform;
            for ((dj, &x), &b) in d.iter_mut().zip(row).zip(bias) {
                *dj = scale * (x + b - lse).exp_() - spread;
            }
            let y = op.targets[n] as usize;
            d[y] = d[y] - g0 * (T::ONE - eps) - g1;
        });
    // The bias gradient sums the rows in a fixed order: independent of the thread count.
    let mut db = vec![T::default(); v];
    for row in dz.chunks(v) {
        for (acc, &x) in db.iter_mut().zip(row) {
            *acc += x;
        }
    }
    (dz, db)
}

fn slice<'a, T>(data: &'a [T], l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle::bail!("token losses: inputs must be contiguous"),
    }
}

impl CustomOp2 for TokenLosses {
    fn name(&self) -> &'static str {
        "token-losses"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, v) = l1.shape().dims2()?;
        let out = match (s1, s2) {
            (CpuStorage::F32(z), CpuStorage::F32(b)) => {
                CpuStorage::F32(forward(slice(z, l1)?, slice(b, l2)?, self, v))
            }
            (CpuStorage::F64(z), CpuStorage::F64(b)) => {
                CpuStorage::F64(forward(slice(z, l1)?, slice(b, l2)?, self, v))
            }
            _ => candle::bail!("token losses: f32 or f64 inputs of one dtype only"),
        };
        Ok((out, Shape::from((n, 2))))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        bias: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, v) = logits.dims2()?;
        let device = logits.device();
        let g = grad.flatten_all()?.contiguous()?;
        let z = logits.contiguous()?;
        let (z_storage, z_layout) = z.storage_and_layout();
        let b = bias.contiguous()?;
        let (b_storage, b_layout) = b.storage_and_layout();
        let (dz, db) = match (&*z_storage, &*b_storage) {
            (
                candle::Storage::Cpu(CpuStorage::F32(zs)),
                candle::Storage::Cpu(CpuStorage::F32(bs)),
            ) => {
                let (dz, db) = backward(
                    slice(zs, z_layout)?,
                    slice(bs, b_layout)?,
                    &g.to_vec1::<f32>()?,
                    self,
                    v,
                );
                (
                    Tensor::from_vec(dz, (n, v), device)?,
                    Tensor::from_vec(db, v, device)?,
                )
            }
            (
                candle::Storage::Cpu(CpuStorage::F64(zs)),
                candle::Storage::Cpu(CpuStorage::F64(bs)),
            ) => {
                let (dz, db) = backward(
                    slice(zs, z_layout)?,
                    slice(bs, b_layout)?,
                    &g.to_vec1::<f64>()?,
                    self,
                    v,
                );
                (
                    Tensor::from_vec(dz, (n, v), device)?,
                    Tensor::from_vec(db, v, device)?,
                )
            }
            _ => candle::bail!("token losses: backward needs f32 or f64 CPU tensors"),
        };
        Ok((Some(dz), Some(db)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle::{Device, Var};

    fn values(n: usize, seed: u64) -> Vec<f64> {
        (0..n)
            .map(|i| ((((i as u64 + 7) * 2654435761 * (seed + 1)) % 2000) as f64 / 250.0) - 4.0)
            .collect()
    }

    #[test]
    fn fused_losses_match_the_reference_values_and_gradients() {
        let dev = Device::Cpu;
        let (n, v) = (6, 11);
        let targets = Tensor::new(&[3u32, 0, 10, 5, 5, 1], &dev).unwrap();
        let keep = Tensor::new(&[1f32, 1., 0., 1., 1., 0.], &dev).unwrap();
        for dtype in [DType::F32, DType::F64] {
            for eps in [0.0, 0.1] {
                let z = Var::from_tensor(
                    &Tensor::from_vec(values(n * v, 1), (n, v), &dev)
                        .unwrap()
                        .to_dtype(dtype)
                        .unwrap(),
                )
                .unwrap();
                let b = Var::from_tensor(
                    &Tensor::from_vec(values(v, 2), v, &dev)
                        .unwrap()
                        .to_dtype(dtype)
                        .unwrap(),
                )
                .unwrap();
                // Weights on both outputs, so both gradient paths are checked.
                let w = Tensor::from_vec(values(2 * n, 3), (n, 2), &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let run = |f: fn(&Tensor, &Tensor, &Tensor, &Tensor, f64) -> Result<Tensor>| {
                    let out = f(z.as_tensor(), b.as_tensor(), &targets, &keep, eps).unwrap();
                    let grads = (&out * &w).unwrap().sum_all().unwrap().backward().unwrap();
                    let flat = |t: &Tensor| {
                        t.to_dtype(DType::F64)
                            .unwrap()
                            .flatten_all()
                            .unwrap()
                            .to_vec1::<f64>()
                            .unwrap()
                    };
                    [
                        flat(&out),
                        flat(grads.get(&z).unwrap()),
                        flat(grads.get(&b).unwrap()),
                    ]
                };
                let (fused, reference) = (run(token_losses), run(reference_token_losses));
                let tol = if dtype == DType::F32 { 2e-5 } else { 1e-12 };
                for (k, (a, r)) in fused.iter().zip(&reference).enumerate() {
                    for (x, y) in a.iter().zip(r) {
                        assert!(
                            (x - y).abs() <= tol * (1.0 + y.abs()),
                            "{dtype:?} eps {eps} output {k}: {x} vs {y}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn targets_outside_the_vocabulary_are_an_error() {
        let dev = Device::Cpu;
        let z = Tensor::zeros((1, 4), DType::F32, &dev).unwrap();
        let b = Tensor::zeros(4, DType::F32, &dev).unwrap();
        let keep = Tensor::ones(1, DType::F32, &dev).unwrap();
        let err = token_losses(&z, &b, &Tensor::new(&[4u32], &dev).unwrap(), &keep, 0.1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("outside the vocabulary"), "{err}");
    }
}
