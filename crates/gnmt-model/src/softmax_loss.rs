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

use std::sync::Mutex;

use candle::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use gnmt_kernels::buffers::{column_sums, gather_rows, scatter_rows};
use gnmt_kernels::matmul::product;
use gnmt_kernels::softmax::{log_softmax_row, row_logsumexp, softmax_gradient_row};
use gnmt_kernels::{Compute, Precision, Real};

use crate::storage::{contiguous_slice, tensor_slice};

/// `x [N, H]` (decoder outputs), `weight [V, H]`, `bias [V]`, `targets [N]` (u32), `keep [N]`
/// (1 real, 0 pad) -> `[N, 2]`: label-smoothed loss and plain negative log-likelihood per
/// token. The products, forward and backward, are in `precision`.
pub fn token_losses(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    targets: &Tensor,
    keep: &Tensor,
    eps: f64,
    precision: Precision,
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
    let targets = targets.to_dtype(DType::U32)?.to_vec1::<u32>()?;
    let keep = keep.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let rows: Vec<usize> = (0..n).filter(|&i| keep[i] != 0.0).collect();
    let targets: Vec<u32> = rows.iter().map(|&i| targets[i]).collect();
    if let Some(bad) = targets.iter().find(|&&t| t as usize >= v) {
        candle::bail!("token losses: target id {bad} outside the vocabulary of {v}")
    }
    let op = TokenLosses {
        targets,
        rows,
        eps,
        precision,
        logits: Mutex::new(None),
    };
    x.contiguous()?
        .apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)
}

/// Log-softmax over the last dimension of `[N, V]` logits, for decoding: one pass per row
/// with a vectorised exp (f32), rows in parallel. Other dtypes use candle's op.
pub fn log_softmax_rows(logits: &Tensor) -> Result<Tensor> {
    let (n, v) = logits.dims2()?;
    if logits.dtype() != DType::F32 {
        return candle_nn::ops::log_softmax(logits, D::Minus1);
    }
    let mut z = logits.flatten_all()?.to_vec1::<f32>()?;
    z.par_chunks_mut(v.max(1)).for_each(log_softmax_row);
    Tensor::from_vec(z, (n, v), logits.device())
}

/// The same computation from candle ops (the reference).
pub fn reference_token_losses(
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
    targets: Vec<u32>,
    /// The real (unpadded) rows of `x`, in order.
    rows: Vec<usize>,
    eps: f64,
    precision: Precision,
    /// The logits of the real rows `[rows, V]` (bias included) and their log-sum-exp per row,
    /// kept from the forward pass as f32 or f64 storage. The backward pass consumes them.
    logits: Mutex<Option<(CpuStorage, CpuStorage)>>,
}

/// Sizes of one product: `n` (real) tokens, `h` inputs, `v` vocabulary entries; and its
/// precision.
#[derive(Clone, Copy)]
struct Dims {
    n: usize,
    h: usize,
    v: usize,
    precision: Precision,
}

/// `x W^T + bias`, `[N, V]`.
fn logits<T: 'static + Real>(x: &[T], w: &[T], bias: &[T], d: Dims) -> Vec<T> {
    product(
        (d.n, d.v, d.h),
        (x, false),
        (w, true),
        Some(bias),
        Compute::all_threads(d.precision),
    )
}

/// Returns (the `[rows, 2]` losses of the real rows, log-sum-exp per row).
fn losses<T: Real>(z: &[T], op: &TokenLosses, v: usize) -> (Vec<T>, Vec<T>) {
    let eps = T::from_f64(op.eps);
    let inv_v = T::from_f64(1.0 / v as f64);
    let mut out = vec![T::default(); op.targets.len() * 2];
    let mut lse = vec![T::default(); op.targets.len()];
    out.par_chunks_mut(2)
        .zip(lse.par_iter_mut())
        .zip(z.par_chunks(v))
        .enumerate()
        .for_each(|(n, ((o, l), row))| {
            let (lse, sum) = row_logsumexp(row);
            let y = op.targets[n] as usize;
            let nll = lse - row[y];
            o[0] = (T::ONE - eps) * nll + eps * (lse - sum * inv_v);
            o[1] = nll;
            *l = lse;
        });
    (out, lse)
}

/// Turns the logits of the real rows into the gradient of `sum(g * out)` with respect to
/// them, in place: per row `(g0 + g1) softmax(z) - g0 q - g1 onehot(y)`, with `q` the
/// smoothed target. `g` is the output's gradient `[N, 2]`, padded rows included.
fn logit_gradients<T: Real>(z: &mut [T], lse: &[T], g: &[T], op: &TokenLosses, v: usize) {
    let eps = T::from_f64(op.eps);
    let uniform = T::from_f64(op.eps / v as f64);
    z.par_chunks_mut(v).enumerate().for_each(|(n, row)| {
        let r = op.rows[n];
        let (g0, g1) = (g[2 * r], g[2 * r + 1]);
        softmax_gradient_row(row, lse[n], g0 + g1, g0 * uniform);
        let y = op.targets[n] as usize;
        row[y] = row[y] - g0 * (T::ONE - eps) - g1;
    });
}

/// Gradients with respect to `x`, the weight and the bias, given the logits' gradient `dz`.
fn backward<T: 'static + Real>(dz: &[T], x: &[T], w: &[T], d: Dims) -> (Vec<T>, Vec<T>, Vec<T>) {
    let dx = product(
        (d.n, d.h, d.v),
        (dz, false),
        (w, false),
        None,
        Compute::all_threads(d.precision),
    );
    let dw = product(
        (d.v, d.h, d.n),
        (dz, true),
        (x, false),
        None,
        Compute::all_threads(d.precision),
    );
    let db = column_sums(dz, d.v);
    (dx, dw, db)
}

fn slice<'a, T>(data: &'a [T], l: &Layout) -> Result<&'a [T]> {
    contiguous_slice(data, l, "token losses")
}

impl TokenLosses {
    /// Returns the `[N, 2]` losses, and the logits and log-sum-exps of the real rows.
    fn forward<T: 'static + Real>(
        &self,
        x: &[T],
        w: &[T],
        b: &[T],
        d: Dims,
    ) -> (Vec<T>, Vec<T>, Vec<T>) {
        let real = Dims {
            n: self.rows.len(),
            ..d
        };
        let z = logits(&gather_rows(x, d.h, &self.rows), w, b, real);
        let (out, lse) = losses(&z, self, d.v);
        (scatter_rows(&out, 2, &self.rows, d.n), z, lse)
    }

    /// Gradients with respect to `x [N, H]`, the weight and the bias, from the kept logits.
    fn gradients<T: 'static + Real>(
        &self,
        mut z: Vec<T>,
        lse: &[T],
        g: &[T],
        x: &[T],
        w: &[T],
        d: Dims,
    ) -> (Vec<T>, Vec<T>, Vec<T>) {
        logit_gradients(&mut z, lse, g, self, d.v);
        let real = Dims {
            n: self.rows.len(),
            ..d
        };
        let (dx, dw, db) = backward(&z, &gather_rows(x, d.h, &self.rows), w, real);
        (scatter_rows(&dx, d.h, &self.rows, d.n), dw, db)
    }
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
        let (n, h) = l1.shape().dims2()?;
        let v = l3.shape().dims1()?;
        let d = Dims {
            n,
            h,
            v,
            precision: self.precision,
        };
        let (out, kept) = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(w), CpuStorage::F32(b)) => {
                let (o, z, l) = self.forward(slice(x, l1)?, slice(w, l2)?, slice(b, l3)?, d);
                (CpuStorage::F32(o), (CpuStorage::F32(z), CpuStorage::F32(l)))
            }
            (CpuStorage::F64(x), CpuStorage::F64(w), CpuStorage::F64(b)) => {
                let (o, z, l) = self.forward(slice(x, l1)?, slice(w, l2)?, slice(b, l3)?, d);
                (CpuStorage::F64(o), (CpuStorage::F64(z), CpuStorage::F64(l)))
            }
            _ => candle::bail!("token losses: f32 or f64 inputs of one dtype only"),
        };
        *self.logits.lock().expect("token losses: poisoned") = Some(kept);
        Ok((out, Shape::from((n, 2))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, h) = x.dims2()?;
        let v = bias.dims1()?;
        let d = Dims {
            n,
            h,
            v,
            precision: self.precision,
        };
        let device = x.device();
        let kept = self.logits.lock().expect("token losses: poisoned").take();
        let Some(kept) = kept else {
            candle::bail!("token losses: backward ran twice or before forward")
        };
        let (x, weight, grad) = (x.contiguous()?, weight.contiguous()?, grad.contiguous()?);
        // Read in place: copying the inputs (the weight is megabytes) out was serial work on
        // the calling thread.
        let (xs, ws, gs) = (
            x.storage_and_layout(),
            weight.storage_and_layout(),
            grad.storage_and_layout(),
        );
        macro_rules! grads {
            ($t:ty, $z:expr, $lse:expr) => {{
                let name = "token losses";
                let (dx, dw, db) = self.gradients(
                    $z,
                    &$lse,
                    tensor_slice::<$t>(&gs.0, gs.1, name)?,
                    tensor_slice::<$t>(&xs.0, xs.1, name)?,
                    tensor_slice::<$t>(&ws.0, ws.1, name)?,
                    d,
                );
                (
                    Tensor::from_vec(dx, (n, h), device)?,
                    Tensor::from_vec(dw, (v, h), device)?,
                    Tensor::from_vec(db, v, device)?,
                )
            }};
        }
        let (dx, dw, db) = match kept {
            (CpuStorage::F32(z), CpuStorage::F32(lse)) => grads!(f32, z, lse),
            (CpuStorage::F64(z), CpuStorage::F64(lse)) => grads!(f64, z, lse),
            _ => candle::bail!("token losses: backward needs f32 or f64 tensors"),
        };
        Ok((
            Some(dx),
            crate::param_grads::deliver(&weight, dw),
            crate::param_grads::deliver(bias, db),
        ))
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
                type Losses =
                    fn(&Tensor, &Tensor, &Tensor, &Tensor, &Tensor, f64) -> Result<Tensor>;
                let run = |f: Losses| {
                    let out = f(
                        x.as_tensor(),
                        wt.as_tensor(),
                        b.as_tensor(),
                        &targets,
                        &keep,
                        eps,
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
                let fused_f32 =
                    |x: &Tensor, w: &Tensor, b: &Tensor, t: &Tensor, k: &Tensor, eps| {
                        token_losses(x, w, b, t, k, eps, Precision::F32)
                    };
                let (fused, reference) = (run(fused_f32), run(reference_token_losses));
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
        let ours = log_softmax_rows(&z)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let theirs = candle_nn::ops::log_softmax(&z, D::Minus1)
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
            Precision::F32,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("outside the vocabulary"), "{err}");
    }
}
