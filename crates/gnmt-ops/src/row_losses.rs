//! The training loss where the output layer's product runs through candle (a GPU's cuBLAS):
//! `logits = x W^T + bias` as candle operations, then one row operation for the log-softmax,
//! the label-smoothed loss and, backward, the logits' gradient. On a GPU the row operation is
//! `gnmt-cuda-kernels`' `token_losses_forward` / `token_losses_backward`; on the CPU it runs
//! the CPU's row functions, so the structure (and its gradients) is tested on any machine.
//!
//! Unlike the CPU's fused [`crate::softmax_loss::token_losses`], the logits of padded rows
//! are computed too (their losses and gradients are 0): a GPU multiplies them for free.

use candle::backend::BackendStorage;
#[cfg(feature = "cuda")]
use candle::cuda_backend::CudaStorage;
use candle::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use gnmt_kernels::softmax::row_logsumexp;

use crate::matmul::candle_matmul;
use crate::softmax_loss::{logit_gradient_row, row_losses};
use crate::storage::contiguous_slice;
use crate::Kernels;

/// `x [N, H]`, `weight [V, H]`, `bias [V]`, `targets [N]` (u32), `keep [N]` -> `[N, 2]`:
/// label-smoothed loss and negative log-likelihood per token (f32), the product in
/// `kernels`' precision ([`candle_matmul`]).
pub(crate) fn token_losses_by_rows(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    targets: &Tensor,
    keep: &Tensor,
    eps: f64,
    kernels: Kernels,
) -> Result<Tensor> {
    let logits = candle_matmul(x, &weight.t()?, kernels)?
        .broadcast_add(bias)?
        .contiguous()?;
    let device = logits.device();
    let targets = targets.to_dtype(DType::U32)?.to_device(device)?;
    let keep = keep.to_dtype(DType::F32)?.to_device(device)?;
    logits.apply_op3(&targets, &keep, RowLosses { eps })
}

/// The numbers of the smoothing as the row kernels take them: `eps`, `1 / V` and `eps / V`,
/// each rounded to f32 from f64 (as the CPU's fused loss rounds them).
#[derive(Debug, Clone, Copy)]
struct Smoothing {
    eps: f32,
    inv_vocab: f32,
    uniform: f32,
}

impl Smoothing {
    fn new(eps: f64, vocab: usize) -> Self {
        Self {
            eps: eps as f32,
            inv_vocab: (1.0 / vocab as f64) as f32,
            uniform: (eps / vocab as f64) as f32,
        }
    }
}

/// `(logits [N, V], targets [N] u32, keep [N]) -> [N, 2]`.
struct RowLosses {
    eps: f64,
}

const OP: &str = "token losses";

/// `(N, V)` of `[N, V]` logits with `[N]` targets and a `[N]` third input, or an error.
fn rows_and_vocab(logits: &Layout, targets: &Layout, third: &Layout) -> Result<(usize, usize)> {
    let (n, v) = logits.shape().dims2()?;
    if targets.shape().dims() != [n] || third.shape().dims()[0] != n {
        candle::bail!(
            "{OP}: logits {:?}, targets {:?}, {:?} do not fit",
            logits.shape(),
            targets.shape(),
            third.shape()
        )
    }
    Ok((n, v))
}

fn f32s<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    match s {
        CpuStorage::F32(d) => contiguous_slice(d, l, OP),
        other => candle::bail!("{OP}: f32 logits only, got {:?}", other.dtype()),
    }
}

fn u32s<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [u32]> {
    match s {
        CpuStorage::U32(d) => contiguous_slice(d, l, OP),
        other => candle::bail!("{OP}: u32 targets only, got {:?}", other.dtype()),
    }
}

impl CustomOp3 for RowLosses {
    fn name(&self) -> &'static str {
        "token-losses-by-rows"
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
        let (n, v) = rows_and_vocab(l1, l2, l3)?;
        let (logits, targets, keep) = (f32s(s1, l1)?, u32s(s2, l2)?, f32s(s3, l3)?);
        let k = Smoothing::new(self.eps, v);
        let mut out = vec![0f32; n * 2];
        out.par_chunks_mut(2)
            .zip(logits.par_chunks(v.max(1)))
            .enumerate()
            .filter(|(r, _)| keep[*r] != 0.0)
            .for_each(|(r, (o, row))| {
                let (smoothed, nll, _) = row_losses(row, targets[r] as usize, k.eps, k.inv_vocab);
                o.copy_from_slice(&[smoothed, nll]);
            });
        Ok((CpuStorage::F32(out), Shape::from((n, 2))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (n, v) = rows_and_vocab(l1, l2, l3)?;
        on_gpu::losses(
            Smoothing::new(self.eps, v),
            (n, v),
            (s1, l1),
            (s2, l2),
            (s3, l3),
        )
    }

    /// The output's gradient, zeroed on padded rows, turns the logits into theirs.
    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        keep: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = grad.broadcast_mul(&keep.unsqueeze(1)?)?.contiguous()?;
        let op = LogitGradients { eps: self.eps };
        let dz = logits.apply_op3_no_bwd(targets, &g, &op)?;
        Ok((Some(dz), None, None))
    }
}

/// `(logits [N, V], targets [N], g [N, 2]) -> dlogits [N, V]`: per row
/// `(g0 + g1) softmax(z) - g0 q - g1 onehot(y)`.
struct LogitGradients {
    eps: f64,
}

impl CustomOp3 for LogitGradients {
    fn name(&self) -> &'static str {
        "token-losses-by-rows-backward"
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
        let (n, v) = rows_and_vocab(l1, l2, l3)?;
        let (logits, targets, g) = (f32s(s1, l1)?, u32s(s2, l2)?, f32s(s3, l3)?);
        let k = Smoothing::new(self.eps, v);
        let mut dz = logits.to_vec();
        dz.par_chunks_mut(v.max(1))
            .enumerate()
            .for_each(|(r, row)| {
                let (lse, _) = row_logsumexp(row);
                let y = targets[r] as usize;
                logit_gradient_row(row, lse, (g[2 * r], g[2 * r + 1]), y, k.eps, k.uniform);
            });
        Ok((CpuStorage::F32(dz), Shape::from((n, v))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (n, v) = rows_and_vocab(l1, l2, l3)?;
        on_gpu::gradients(
            Smoothing::new(self.eps, v),
            (n, v),
            (s1, l1),
            (s2, l2),
            (s3, l3),
        )
    }
}

/// The row kernels on a GPU.
#[cfg(feature = "cuda")]
mod on_gpu {
    use candle::cuda_backend::cudarc::driver::PushKernelArg;
    use candle::cuda_backend::{CudaStorage, WrapErr};
    use candle::{Layout, Result, Shape};
    use gnmt_cuda_kernels::{softmax, Launch};

    use super::{Smoothing, OP};
    use crate::cuda::{config, dim, function, output, view};

    /// The losses `[N, 2]` of `(logits, targets, keep)`.
    pub(super) fn losses(
        k: Smoothing,
        (n, v): (usize, usize),
        logits: (&CudaStorage, &Layout),
        targets: (&CudaStorage, &Layout),
        keep: (&CudaStorage, &Layout),
    ) -> Result<(CudaStorage, Shape)> {
        let kernel = softmax::TOKEN_LOSSES;
        let out = run(
            kernel,
            (k.eps, k.inv_vocab),
            (n, v),
            logits,
            targets,
            keep,
            n * 2,
        )?;
        Ok((out, Shape::from((n, 2))))
    }

    /// The logits' gradient `[N, V]` of `(logits, targets, g)`.
    pub(super) fn gradients(
        k: Smoothing,
        (n, v): (usize, usize),
        logits: (&CudaStorage, &Layout),
        targets: (&CudaStorage, &Layout),
        g: (&CudaStorage, &Layout),
    ) -> Result<(CudaStorage, Shape)> {
        let kernel = softmax::TOKEN_LOSSES_BACKWARD;
        let out = run(
            kernel,
            (k.eps, k.uniform),
            (n, v),
            logits,
            targets,
            g,
            n * v,
        )?;
        Ok((out, Shape::from((n, v))))
    }

    /// Launches a row kernel of `softmax.cu`: both take `(rows, vocab, logits, targets, a
    /// float input per row, two numbers, the output of `out_len` values)`.
    fn run(
        kernel: &str,
        (a, b): (f32, f32),
        (n, v): (usize, usize),
        (logits, l1): (&CudaStorage, &Layout),
        (targets, l2): (&CudaStorage, &Layout),
        (per_row, l3): (&CudaStorage, &Layout),
        out_len: usize,
    ) -> Result<CudaStorage> {
        let device = logits.device.clone();
        let logits = view::<f32>(logits, l1, OP)?;
        let targets = view::<u32>(targets, l2, OP)?;
        let per_row = view::<f32>(per_row, l3, OP)?;
        let mut out = output::<f32>(&device, out_len)?;
        let (rows, vocab) = (dim(n, OP)?, dim(v, OP)?);
        let func = function(&device, softmax::MODULE, kernel)?;
        let stream = device.cuda_stream();
        let mut args = stream.launch_builder(&func);
        args.arg(&rows)
            .arg(&vocab)
            .arg(&logits)
            .arg(&targets)
            .arg(&per_row);
        args.arg(&a).arg(&b).arg(&mut out);
        // SAFETY: `n` rows of `v` logits, `n` targets below `v` (checked by the caller), `n`
        // (or `2n`) values per row input, `out_len` outputs, as both kernels read and write.
        unsafe { args.launch(config(Launch::rows(n))) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(out, device))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle::{Device, Var};

    use crate::softmax_loss::token_losses;

    /// The row structure gives the reference's losses and gradients (x, weight, bias), with
    /// padded rows and with and without smoothing.
    #[test]
    fn losses_by_rows_match_the_reference_values_and_gradients() {
        let dev = Device::Cpu;
        let (n, h, v) = (6, 5, 300);
        let wave = |len: usize, k: f32| -> Vec<f32> {
            (0..len)
                .map(|i| ((i as f32 + 1.0) * k).sin() * 2.0)
                .collect()
        };
        let var = |len: usize, shape: &[usize], k: f32| {
            Var::from_tensor(&Tensor::from_vec(wave(len, k), shape, &dev).unwrap()).unwrap()
        };
        let (x, w, b) = (
            var(n * h, &[n, h], 0.37),
            var(v * h, &[v, h], 1.13),
            var(v, &[v], 0.71),
        );
        let targets = Tensor::new(&[3u32, 0, 299, 5, 5, 100], &dev).unwrap();
        let keep = Tensor::new(&[1f32, 1., 0., 1., 1., 0.], &dev).unwrap();
        let r = Tensor::from_vec(wave(2 * n, 0.53), (n, 2), &dev).unwrap();
        for eps in [0.0, 0.1] {
            let run = |rows: bool| -> Vec<Vec<f32>> {
                let (x, w, b) = (x.as_tensor(), w.as_tensor(), b.as_tensor());
                let out = if rows {
                    token_losses_by_rows(x, w, b, &targets, &keep, eps, Kernels::default()).unwrap()
                } else {
                    token_losses(x, w, b, &targets, &keep, eps, Kernels::Reference).unwrap()
                };
                let grads = (&out * &r).unwrap().sum_all().unwrap().backward().unwrap();
                let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                vec![
                    flat(&out),
                    flat(grads.get(x).unwrap()),
                    flat(grads.get(w).unwrap()),
                    flat(grads.get(b).unwrap()),
                ]
            };
            let (by_rows, reference) = (run(true), run(false));
            for (k, (got, want)) in by_rows.iter().zip(&reference).enumerate() {
                let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
                for (a, b) in got.iter().zip(want) {
                    assert!(
                        (a - b).abs() <= 1e-5 * scale,
                        "eps {eps}, quantity {k}: {a} vs {b}"
                    );
                }
            }
        }
    }
}
