//! Training's attention weights as one operation: the softmax of the scores `[B, T, S]` over
//! each sentence's real source positions (`mask [B, S]`), exactly 0 on padding, with its own
//! backward pass.
//!
//! The composite (`reference_weights`: a large negative bias on padding, then candle's
//! softmax: maximum, subtraction, exponential, sum, division) makes six passes forward and
//! about as many backward, each a launch on a GPU; the fused form makes one each way. Every row is reduced alone in source order by gnmt-kernels'
//! `masked_softmax_row`, the same function decoding's attention step takes its weights from,
//! so a row's weights depend neither on its batch nor on the threads, and on a GPU
//! (`attention.cu`) they are the CPU's bits.

use candle::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use gnmt_kernels::attention::{masked_softmax_row, masked_softmax_row_backward};

use crate::dispatch::{self, Float, Kernel};
use crate::Kernels;
#[cfg(feature = "cuda")]
use candle::cuda_backend::CudaStorage;

/// The score a padded position gets in the composite: its softmax weight is then 0 in f32.
const MASKED_SCORE: f64 = -1e9;

/// `softmax(scores [B, T, S])` over the positions `s` where `mask [B, S]` is non-zero, 0
/// elsewhere: fused on the CPU and on a GPU (f32 there), the composite with the reference
/// kernels.
pub fn attention_weights(scores: &Tensor, mask: &Tensor, kernels: Kernels) -> Result<Tensor> {
    if kernels.is_reference() {
        return reference_weights(scores, mask);
    }
    let (scores, mask) = (scores.contiguous()?, mask.contiguous()?);
    scores.apply_op2(&mask, AttentionWeights)
}

/// The composite: padded positions' scores lowered by 1e9, then candle's softmax. Equal to
/// the fused weights up to rounding for every sentence with a real position; a sentence with
/// none gets uniform weights here and zeros there (training never has one: every source ends
/// with `</s>`).
fn reference_weights(scores: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let bias = ((mask - 1.0)? * -MASKED_SCORE)?.unsqueeze(1)?;
    candle_nn::ops::softmax(&scores.broadcast_add(&bias)?, D::Minus1)
}

#[derive(Clone, Copy)]
struct Dims {
    /// Sentences: the GPU launch's rows are `b * t`; the CPU kernel walks the scores' rows.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    b: usize,
    t: usize,
    s: usize,
}

fn dims(scores: &Shape, mask: &Shape) -> Result<Dims> {
    let (b, t, s) = scores.dims3()?;
    if mask.dims2()? != (b, s) {
        candle::bail!("attention weights: scores {scores:?} and mask {mask:?} do not fit")
    }
    Ok(Dims { b, t, s })
}

/// [`dims`] of the backward pass's `(weights, g, mask)`, whose `g` has the weights' shape.
fn gradient_dims(weights: &Shape, g: &Shape, mask: &Shape) -> Result<Dims> {
    if g != weights {
        candle::bail!("attention weights: gradient {g:?} for weights {weights:?}")
    }
    dims(weights, mask)
}

struct AttentionWeights;

impl Kernel<2> for AttentionWeights {
    const NAME: &'static str = "attention weights";

    fn run<T: Float>(
        &self,
        [(scores, shape), (mask, mask_shape)]: [(&[T], &Shape); 2],
    ) -> Result<(Vec<T>, Shape)> {
        let d = dims(shape, mask_shape)?;
        let mut weights = scores.to_vec();
        each_row(&mut weights, d, mask, |_, mask_row, row| {
            masked_softmax_row(mask_row, row)
        });
        Ok((weights, shape.clone()))
    }
}

impl CustomOp2 for AttentionWeights {
    fn name(&self) -> &'static str {
        "attention-weights"
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

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let d = dims(l1.shape(), l2.shape())?;
        on_gpu::weights(d, (s1, l1), (s2, l2))
    }

    fn bwd(
        &self,
        _scores: &Tensor,
        mask: &Tensor,
        weights: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dz = weights.apply_op3_no_bwd(&grad.contiguous()?, mask, &WeightGradients)?;
        Ok((Some(dz), None))
    }
}

/// `(weights, g, mask)` -> the gradient of `sum(g * weights)` with respect to the scores.
struct WeightGradients;

impl Kernel<3> for WeightGradients {
    const NAME: &'static str = "attention weights";

    fn run<T: Float>(
        &self,
        [(weights, shape), (g, g_shape), (mask, mask_shape)]: [(&[T], &Shape); 3],
    ) -> Result<(Vec<T>, Shape)> {
        let d = gradient_dims(shape, g_shape, mask_shape)?;
        let mut dz = vec![T::default(); weights.len()];
        each_row(&mut dz, d, mask, |r, mask_row, dz_row| {
            let row = r * d.s..(r + 1) * d.s;
            masked_softmax_row_backward(mask_row, &weights[row.clone()], &g[row], dz_row);
        });
        Ok((dz, shape.clone()))
    }
}

/// `f(r, mask row, row r of out)` for every row `r` of `out [B, T, S]`, rows in parallel.
fn each_row<T: Float>(
    out: &mut [T],
    d: Dims,
    mask: &[T],
    f: impl Fn(usize, &[T], &mut [T]) + Sync,
) {
    if d.s == 0 {
        return;
    }
    out.par_chunks_mut(d.s)
        .enumerate()
        .for_each(|(r, row)| f(r, &mask[r / d.t * d.s..][..d.s], row));
}

impl CustomOp3 for WeightGradients {
    fn name(&self) -> &'static str {
        "attention-weights-backward"
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
        let d = gradient_dims(l1.shape(), l2.shape(), l3.shape())?;
        on_gpu::gradient(d, (s1, l1), (s2, l2), (s3, l3))
    }
}

/// The weights and their gradient on a GPU: `gnmt-cuda-kernels`' `attention.cu`, the
/// arithmetic of `masked_softmax_row` and its backward in the same order (f32).
#[cfg(feature = "cuda")]
mod on_gpu {
    use candle::cuda_backend::cudarc::driver::{CudaSlice, CudaView, PushKernelArg};
    use candle::cuda_backend::{CudaDevice, CudaStorage, WrapErr};
    use candle::{Layout, Result, Shape};
    use gnmt_cuda_kernels::{attention, Launch};

    use super::Dims;
    use crate::cuda::{config, dim, function, output, view};

    const OP: &str = "attention weights";

    /// `(scores, mask)` -> weights.
    pub(super) fn weights(
        d: Dims,
        (scores, ls): (&CudaStorage, &Layout),
        (mask, lm): (&CudaStorage, &Layout),
    ) -> Result<(CudaStorage, Shape)> {
        let device = scores.device.clone();
        let inputs = [view(scores, ls, OP)?, view(mask, lm, OP)?];
        let out = launch_rows(&device, attention::SOFTMAX, d, &inputs)?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, device),
            Shape::from((d.b, d.t, d.s)),
        ))
    }

    /// `(weights, g, mask)` -> the scores' gradient.
    pub(super) fn gradient(
        d: Dims,
        (weights, lw): (&CudaStorage, &Layout),
        (g, lg): (&CudaStorage, &Layout),
        (mask, lm): (&CudaStorage, &Layout),
    ) -> Result<(CudaStorage, Shape)> {
        let device = weights.device.clone();
        let inputs = [
            view(weights, lw, OP)?,
            view(g, lg, OP)?,
            view(mask, lm, OP)?,
        ];
        let out = launch_rows(&device, attention::SOFTMAX_BACKWARD, d, &inputs)?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, device),
            Shape::from((d.b, d.t, d.s)),
        ))
    }

    /// Launches `kernel`, `(batch, steps, sources, inputs.., out [B, T, S])`, a block per row.
    fn launch_rows(
        device: &CudaDevice,
        kernel: &str,
        d: Dims,
        inputs: &[CudaView<'_, f32>],
    ) -> Result<CudaSlice<f32>> {
        let mut out = output::<f32>(device, d.b * d.t * d.s)?;
        let (b, t, s) = (dim(d.b, OP)?, dim(d.t, OP)?, dim(d.s, OP)?);
        let func = function(device, attention::MODULE, kernel)?;
        let stream = device.cuda_stream();
        let mut args = stream.launch_builder(&func);
        args.arg(&b).arg(&t).arg(&s);
        for input in inputs {
            args.arg(input);
        }
        args.arg(&mut out);
        // SAFETY: the callers pass the kernel's inputs in its order, [B, T, S] tensors and the
        // mask [B, S] as it reads them; `out` holds the B T S values it writes.
        unsafe { args.launch(config(Launch::rows(d.b * d.t))) }.w()?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle::{DType, Device, Var};

    fn scores(dtype: DType) -> Tensor {
        let v: Vec<f64> = (0..3 * 4 * 5)
            .map(|i| ((i * 37 % 23) as f64 / 23.0 - 0.5) * 6.0)
            .collect();
        Tensor::from_vec(v, (3, 4, 5), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    }

    /// Sentences of 5, 3 and 1 real positions.
    fn mask(dtype: DType) -> Tensor {
        let lengths = [5, 3, 1];
        let v: Vec<f64> = lengths
            .iter()
            .flat_map(|&n| (0..5).map(move |s| if s < n { 1.0 } else { 0.0 }))
            .collect();
        Tensor::from_vec(v, (3, 5), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    }

    fn flat(t: &Tensor) -> Vec<f64> {
        t.to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// The fused weights and the scores' gradient equal the composite's (f32 and f64), and
    /// padding weighs exactly 0 with an exactly 0 gradient.
    #[test]
    fn fused_matches_reference_values_and_gradients() {
        for dtype in [DType::F32, DType::F64] {
            let scores = Var::from_tensor(&scores(dtype)).unwrap();
            let mask = mask(dtype);
            let upstream = (scores.as_tensor().detach().cos().unwrap() * 3.0).unwrap();
            let run = |kernels: Kernels| {
                let w = attention_weights(scores.as_tensor(), &mask, kernels).unwrap();
                let grads = (&w * &upstream)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                (flat(&w), flat(grads.get(&scores).unwrap()))
            };
            let (fused_w, fused_dz) = run(Kernels::default());
            let (reference_w, reference_dz) = run(Kernels::Reference);
            // f32: the fused form's `fast_exp` is within 5e-7 of libm's `exp`.
            let tol = if dtype == DType::F32 { 5e-6 } else { 1e-13 };
            for (name, fused, reference) in [
                ("weights", &fused_w, &reference_w),
                ("gradient", &fused_dz, &reference_dz),
            ] {
                for (i, (x, y)) in fused.iter().zip(reference.iter()).enumerate() {
                    let close = (x - y).abs() <= tol * (1.0 + y.abs());
                    assert!(close, "{dtype:?} {name} {i}: {x} vs {y}");
                }
            }
            // Row (b, t) at b = 1 has 3 real positions, b = 2 one.
            for (r, row) in fused_w.chunks(5).enumerate() {
                let real = [5, 3, 1][r / 4];
                assert!(row[real..].iter().all(|&w| w == 0.0), "{dtype:?} row {r}");
                assert!(fused_dz[r * 5..][real..5].iter().all(|&d| d == 0.0));
                assert!((row.iter().sum::<f64>() - 1.0).abs() < tol * 10.0);
            }
            // One real position: weight exactly 1, nothing to learn from its score.
            assert!(fused_w[8 * 5] == 1.0 && fused_dz[8 * 5] == 0.0, "{dtype:?}");
        }
    }

    /// A row's weights do not depend on the rows beside it or on the padding after it: the
    /// same sentence alone, with less padding, gives the same bits.
    #[test]
    fn a_rows_weights_do_not_depend_on_its_batch() {
        let all =
            attention_weights(&scores(DType::F32), &mask(DType::F32), Kernels::default()).unwrap();
        let alone_scores = scores(DType::F32)
            .narrow(0, 1, 1)
            .unwrap()
            .narrow(2, 0, 3)
            .unwrap();
        let alone_mask = Tensor::ones((1, 3), DType::F32, &Device::Cpu).unwrap();
        let alone = attention_weights(&alone_scores, &alone_mask, Kernels::default()).unwrap();
        let bits = |t: &Tensor| -> Vec<u32> {
            t.flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect()
        };
        let batch_row = all.narrow(0, 1, 1).unwrap().narrow(2, 0, 3).unwrap();
        assert_eq!(bits(&alone), bits(&batch_row));
    }

    #[test]
    fn shapes_that_do_not_fit_are_refused() {
        let err = attention_weights(
            &scores(DType::F32),
            &Tensor::ones((3, 4), DType::F32, &Device::Cpu).unwrap(),
            Kernels::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("do not fit"), "{err}");
    }
}
