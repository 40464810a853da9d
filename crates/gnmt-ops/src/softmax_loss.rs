//! The output layer, its softmax and the training loss as one fused operation.
//!
//! Over a batch of 2,000 target tokens and a vocabulary of 8,000 the logits are 16 million
//! values. Composed from candle ops (projection, bias add, log-softmax, gather, mean, their
//! gradients) the loss allocates and walks a dozen tensors of that size per step, and the page
//! faults alone cost more than the arithmetic; candle's autograd adds a zero-filled gradient
//! buffer per op on top. Fused, the `[N, V]` logits never enter the autograd graph: the
//! forward pass computes them with one `gemm`, keeps them, and writes two numbers per token;
//! the backward pass turns the kept logits into their gradient in place and multiplies it out
//! into the gradients of the decoder output, the weight and the bias.
//!
//! Per token with logits `z = x W^T + bias`, target `y` and smoothing `eps`, the output holds
//! `[smoothed, nll]`:
//! `nll = logsumexp(z) - z_y` and `smoothed = (1 - eps) nll + eps (logsumexp(z) - mean(z))`,
//! the cross-entropy against `(1 - eps) onehot(y) + eps / V` (as
//! [`reference_token_losses`], which the tests compare against). Padded tokens give 0 and no
//! gradient, and cost nothing: only the real rows are multiplied out (in a batch of sentences
//! of 16 to 32 tokens, a quarter of the rows are padding). Rows are independent, so the result
//! does not depend on the number of threads.

use std::sync::{Arc, Mutex};

use candle::{CpuStorage, CustomOp3, DType, InplaceOp3, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use gnmt_kernels::buffers::{gather_rows, scatter_rows};
use gnmt_kernels::matmul::product;
use gnmt_kernels::softmax::{log_softmax_row, row_logsumexp, softmax_gradient_row};
use gnmt_kernels::{Compute, Precision};

use gnmt_kernels::Real;

use crate::dispatch::{self, Float, Kernel, KernelInPlace};
use crate::matmul::product_no_bwd;
use crate::rows;
use crate::Kernels;

/// `x [N, H]` (decoder outputs), `weight [V, H]`, `bias [V]`, `targets [N]` (u32), `keep [N]`
/// (1 real, 0 pad) -> `[N, 2]`: label-smoothed loss and plain negative log-likelihood per
/// token.
pub fn token_losses(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    targets: &Tensor,
    keep: &Tensor,
    eps: f64,
    kernels: Kernels,
) -> Result<Tensor> {
    let (n, h) = x.dims2()?;
    let v = bias.dims1()?;
    if weight.dims() != [v, h] || targets.dims() != [n] || keep.dims() != [n] {
        candle::bail!(
            "token losses: x {:?}, weight {:?}, bias {:?}, targets {:?}, mask {:?} do not fit",
            x.dims(),
            weight.dims(),
            bias.dims(),
            targets.dims(),
            keep.dims()
        )
    }
    let targets = targets.to_dtype(DType::U32)?;
    let all_targets = targets.to_vec1::<u32>()?;
    if let Some(bad) = all_targets.iter().find(|&&t| t as usize >= v) {
        candle::bail!("token losses: target id {bad} outside the vocabulary of {v}")
    }
    let precision = match kernels {
        Kernels::Reference => return reference_token_losses(x, weight, bias, &targets, keep, eps),
        // Off the CPU: the product through candle (cuBLAS), the rows in the device's kernels.
        Kernels::Fused(_) if !x.device().is_cpu() => {
            let by_rows = crate::row_losses::token_losses_by_rows;
            return by_rows(x, weight, bias, &targets, keep, eps, kernels);
        }
        Kernels::Fused(precision) => precision,
    };
    let keep = keep.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let rows: Vec<usize> = (0..n).filter(|&i| keep[i] != 0.0).collect();
    let targets: Vec<u32> = rows.iter().map(|&i| all_targets[i]).collect();
    let op = TokenLosses {
        targets: Arc::new(targets),
        rows: Arc::new(rows),
        eps,
        precision,
        logits: Mutex::new(None),
    };
    x.contiguous()?
        .apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)
}

/// Log-softmax over the last dimension of `[N, V]` logits, for decoding: one pass per row
/// with a vectorised exp (f32), rows in parallel. Other dtypes and the reference use
/// candle's op.
pub fn log_softmax_rows(logits: &Tensor, kernels: Kernels) -> Result<Tensor> {
    let (n, v) = logits.dims2()?;
    if logits.dtype() != DType::F32 || kernels.fused_on(logits.device()).is_none() {
        return candle_nn::ops::log_softmax(logits, D::Minus1);
    }
    let mut z = logits.flatten_all()?.to_vec1::<f32>()?;
    z.par_chunks_mut(v.max(1)).for_each(log_softmax_row);
    Tensor::from_vec(z, (n, v), logits.device())
}

/// The same computation from candle ops (the reference).
fn reference_token_losses(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    targets: &Tensor,
    keep: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let logits = x.matmul(&weight.t()?)?.broadcast_add(bias)?;
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let nll = logp.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?;
    let uniform = logp.mean(D::Minus1)?.neg()?;
    let smoothed = ((&nll * (1.0 - eps))? + (uniform * eps)?)?;
    let keep = keep.to_dtype(x.dtype())?;
    Tensor::stack(&[(smoothed * &keep)?, (nll * &keep)?], 1)
}

struct TokenLosses {
    /// The targets of the real rows.
    targets: Arc<Vec<u32>>,
    /// The real (unpadded) rows of `x`, in order.
    rows: Arc<Vec<usize>>,
    eps: f64,
    precision: Precision,
    /// The logits of the real rows `[rows, V]` (bias included) and their log-sum-exp per row
    /// `[rows]`, kept from the forward pass. The backward pass consumes them.
    logits: Mutex<Option<(Tensor, Tensor)>>,
}

impl Kernel<3> for TokenLosses {
    const NAME: &'static str = "token losses";

    fn run<T: Float>(
        &self,
        [(x, sx), (w, _), (bias, sb)]: [(&[T], &Shape); 3],
    ) -> Result<(Vec<T>, Shape)> {
        let (n, h) = sx.dims2()?;
        let v = sb.dims1()?;
        let real = self.rows.len();
        let z = product(
            (real, v, h),
            (&gather_rows(x, h, &self.rows), false),
            (w, true),
            Some(bias),
            Compute::all_threads(self.precision),
        );
        let (out, lse) = self.losses(&z, v);
        let cpu = candle::Device::Cpu;
        let kept = (
            Tensor::from_vec(z, (real, v), &cpu)?,
            Tensor::from_vec(lse, real, &cpu)?,
        );
        *self.logits.lock().expect("token losses: poisoned") = Some(kept);
        Ok((scatter_rows(&out, 2, &self.rows, n), Shape::from((n, 2))))
    }
}

impl TokenLosses {
    /// Returns (the `[rows, 2]` losses of the real rows, log-sum-exp per row).
    fn losses<T: Float>(&self, z: &[T], v: usize) -> (Vec<T>, Vec<T>) {
        let eps = <T as Real>::from_f64(self.eps);
        let inv_v = <T as Real>::from_f64(1.0 / v as f64);
        let mut out = vec![T::default(); self.targets.len() * 2];
        let mut lse = vec![T::default(); self.targets.len()];
        out.par_chunks_mut(2)
            .zip(lse.par_iter_mut())
            .zip(z.par_chunks(v))
            .enumerate()
            .for_each(|(n, ((o, l), row))| {
                let (smoothed, nll, lse) = row_losses(row, self.targets[n] as usize, eps, inv_v);
                o[0] = smoothed;
                o[1] = nll;
                *l = lse;
            });
        (out, lse)
    }
}

/// `(smoothed, nll, logsumexp)` of one row of logits with target `y`, smoothing `eps` and
/// `inv_v = 1 / V` (both rounded from f64 by the caller).
pub(crate) fn row_losses<T: Float>(row: &[T], y: usize, eps: T, inv_v: T) -> (T, T, T) {
    let (lse, sum) = row_logsumexp(row);
    let nll = lse - row[y];
    let smoothed = (<T as Real>::ONE - eps) * nll + eps * (lse - sum * inv_v);
    (smoothed, nll, lse)
}

/// One row of logits turned into the gradient of `g0 smoothed + g1 nll` in place, given its
/// log-sum-exp; `uniform` is `eps / V`.
pub(crate) fn logit_gradient_row<T: Float>(
    row: &mut [T],
    lse: T,
    (g0, g1): (T, T),
    y: usize,
    eps: T,
    uniform: T,
) {
    softmax_gradient_row(row, lse, g0 + g1, g0 * uniform);
    row[y] = row[y] - g0 * (<T as Real>::ONE - eps) - g1;
}

impl CustomOp3 for TokenLosses {
    fn name(&self) -> &'static str {
        "token-losses"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        dispatch::run(self, [(s1, l1), (s2, l2), (s3, l3)])
    }

    /// The kept logits turn into their own gradient in place, which two products and a
    /// column sum carry to `x`, the weight and the bias, over the real rows only.
    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let kept = self.logits.lock().expect("token losses: poisoned").take();
        let Some((dz, lse)) = kept else {
            candle::bail!("token losses: backward ran twice or before forward")
        };
        let logit_gradients = LogitGradients {
            targets: self.targets.clone(),
            rows: self.rows.clone(),
            eps: self.eps,
        };
        dz.inplace_op3(&lse, &grad.contiguous()?, &logit_gradients)?;
        let p = self.precision;
        let dx_real = product_no_bwd(&dz, weight, (false, false), p)?;
        let dx = rows::scatter(&dx_real, &self.rows, x.dims2()?.0)?;
        let dw = product_no_bwd(&dz, &rows::gather(x, &self.rows)?, (true, false), p)?;
        let db = rows::column_sum(&dz)?;
        use crate::param_grads::deliver;
        Ok((Some(dx), deliver(weight, dw), deliver(bias, db)))
    }
}

/// Turns the logits of the real rows into the gradient of `sum(g * out)` with respect to
/// them, in place: per row `(g0 + g1) softmax(z) - g0 q - g1 onehot(y)`, with `q` the
/// smoothed target. Reads the rows' log-sum-exps and the output's gradient `g [N, 2]`
/// (padded rows included).
struct LogitGradients {
    targets: Arc<Vec<u32>>,
    rows: Arc<Vec<usize>>,
    eps: f64,
}

impl KernelInPlace<2> for LogitGradients {
    const NAME: &'static str = "token losses";

    fn run<T: Float>(
        &self,
        (z, sz): (&mut [T], &Shape),
        [(lse, _), (g, _)]: [(&[T], &Shape); 2],
    ) -> Result<()> {
        let v = sz.dims2()?.1;
        let eps = <T as Real>::from_f64(self.eps);
        let uniform = <T as Real>::from_f64(self.eps / v as f64);
        z.par_chunks_mut(v).enumerate().for_each(|(n, row)| {
            let r = self.rows[n];
            let y = self.targets[n] as usize;
            logit_gradient_row(row, lse[n], (g[2 * r], g[2 * r + 1]), y, eps, uniform);
        });
        Ok(())
    }
}

impl InplaceOp3 for LogitGradients {
    fn name(&self) -> &'static str {
        "token-losses-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        dispatch::run_in_place(self, (s1, l1), [(s2, l2), (s3, l3)])
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
        let (n, h, v) = (6, 5, 11);
        let targets = Tensor::new(&[3u32, 0, 10, 5, 5, 1], &dev).unwrap();
        let keep = Tensor::new(&[1f32, 1., 0., 1., 1., 0.], &dev).unwrap();
        for dtype in [DType::F32, DType::F64] {
            for eps in [0.0, 0.1] {
                let var = |len: usize, shape: &[usize], seed: u64| {
                    Var::from_tensor(
                        &Tensor::from_vec(values(len, seed), shape, &dev)
                            .unwrap()
                            .to_dtype(dtype)
                            .unwrap(),
                    )
                    .unwrap()
                };
                let (x, wt) = (var(n * h, &[n, h], 1), var(v * h, &[v, h], 4));
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
                let run = |kernels: Kernels| {
                    let out = token_losses(
                        x.as_tensor(),
                        wt.as_tensor(),
                        b.as_tensor(),
                        &targets,
                        &keep,
                        eps,
                        kernels,
                    )
                    .unwrap();
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
                        flat(grads.get(&x).unwrap()),
                        flat(grads.get(&wt).unwrap()),
                        flat(grads.get(&b).unwrap()),
                    ]
                };
                let (fused, reference) = (run(Kernels::default()), run(Kernels::Reference));
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
    fn row_log_softmax_matches_candle() {
        let dev = Device::Cpu;
        let z = Tensor::from_vec(values(4 * 9, 5), (4, 9), &dev)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let ours = log_softmax_rows(&z, Kernels::default())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let theirs = log_softmax_rows(&z, Kernels::Reference)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (a, b) in ours.iter().zip(&theirs) {
            assert!((a - b).abs() < 1e-5, "{ours:?} vs {theirs:?}");
        }
    }

    #[test]
    fn targets_outside_the_vocabulary_are_an_error() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 3), DType::F32, &dev).unwrap();
        let w = Tensor::zeros((4, 3), DType::F32, &dev).unwrap();
        let b = Tensor::zeros(4, DType::F32, &dev).unwrap();
        let keep = Tensor::ones(1, DType::F32, &dev).unwrap();
        let err = token_losses(
            &x,
            &w,
            &b,
            &Tensor::new(&[4u32], &dev).unwrap(),
            &keep,
            0.1,
            Kernels::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("outside the vocabulary"), "{err}");
    }
}
