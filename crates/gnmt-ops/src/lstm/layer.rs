//! A whole LSTM layer as one autograd operation: input projection, recurrence and their
//! backward passes, `CustomOp3(x [B, T, in], W_ih [4H, in], [W_hh | bias] [4H, H + 1]) ->
//! h [B, T, H]`.
//!
//! Composed from candle ops, a layer would be a transposed copy of its input to time-major
//! order, a projection, reshapes, the recurrence and a transposed copy of its output, and in
//! the backward pass each of those nodes would start its input's gradient as a zero tensor on
//! the calling thread. Here the input is read batch-major and multiplied out in time-major
//! order in one product over the real `(step, row)` pairs only (padding costs nothing), and
//! the output is written batch-major.

use std::sync::{Arc, Mutex};

#[cfg(feature = "cuda")]
use candle::cuda_backend::CudaStorage;
use candle::{CpuStorage, CustomOp2, CustomOp3, DType, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use gnmt_kernels::buffers::{gather_rows, zeros};
use gnmt_kernels::gemm::{PackedB, View};
use gnmt_kernels::lstm::sequence::{self, Dims, RecurrentWeight};
use gnmt_kernels::matmul::{packed_format, product_rhs, Rhs};
use gnmt_kernels::{Compute, Precision};

use super::LstmWeights;
use crate::dispatch::{self, Float, Kernel};
use crate::matmul::product_no_bwd;
use crate::storage::{read, split};
use crate::{concat, rows};

/// A layer's weights packed once for the fused forward pass, in the format of one precision:
/// for a model whose weights do not change (translation), so the encoder's `W_ih^T` and
/// `W_hh^T` are not packed again for every batch. The same words as packing them per call.
#[derive(Debug)]
pub struct LstmPacks {
    precision: Precision,
    input: PackedB,
    recurrent: PackedB,
}

impl LstmPacks {
    /// `weights` packed for `precision`; `None` where its products are not packed (f64
    /// weights, or f32 on a CPU without AVX-512F or FMA).
    pub fn new(weights: &LstmWeights, precision: Precision) -> Result<Option<Self>> {
        let Some(format) = packed_format(precision) else {
            return Ok(None);
        };
        if weights.w_ih.dtype() != DType::F32 || weights.w_hh.dtype() != DType::F32 {
            return Ok(None);
        }
        let (h4, input) = weights.w_ih.dims2()?;
        let h = weights.w_hh.dims2()?.1;
        let w_ih = weights.w_ih.flatten_all()?.to_vec1::<f32>()?;
        let w_hh = weights.w_hh.flatten_all()?.to_vec1::<f32>()?;
        Ok(Some(Self {
            precision,
            // `W^T [in, 4H]` read from the `[4H, in]` storage, as the forward pass reads it.
            input: PackedB::new(View::new(&w_ih, input, h4, true), format),
            recurrent: PackedB::new(View::new(&w_hh, h, h4, true), format),
        }))
    }
}

/// Runs one layer from the zero state over `x [B, T, in]` with `weights`. `keep` holds one
/// flag per `(step, row)`, time-major (`keep[s * B + b]`, see [`super::time_major_keep`]); a
/// padded step leaves the state unchanged. `reverse` processes time backwards. Returns the
/// hidden state after each step, `[B, T, H]`.
pub fn lstm_layer(
    x: &Tensor,
    weights: &LstmWeights,
    keep: Option<Vec<bool>>,
    reverse: bool,
    precision: Precision,
    packs: Option<Arc<LstmPacks>>,
) -> Result<Tensor> {
    let (b, t, _) = x.dims3()?;
    weights.check(x)?;
    if keep.as_ref().is_some_and(|k| k.len() != t * b) {
        candle::bail!(
            "lstm: {} mask flags for {t} steps of {b} rows",
            keep.map_or(0, |k| k.len())
        )
    }
    let (input_rows, gate_rows) = real_rows(keep.as_deref(), t, b);
    let op = LstmLayer {
        reverse,
        precision,
        keep: keep.map(Arc::new),
        input_rows: Arc::new(input_rows),
        gate_rows: Arc::new(gate_rows),
        packs: packs.filter(|p| p.precision == precision),
        saved: Mutex::new(None),
        #[cfg(feature = "cuda")]
        device_keep: None,
        #[cfg(feature = "cuda")]
        saved_gpu: Mutex::new(None),
    };
    apply(x, weights, op)
}

/// [`lstm_layer`] on a GPU ([`super::layer_gpu`]): the padding comes as the `[B, T]` mask
/// itself (1 real, 0 pad), which stays on the device, batch-major as the kernels read it; the
/// host-side fields of the op, for the CPU kernels, stay empty.
#[cfg(feature = "cuda")]
pub(super) fn lstm_layer_on_gpu(
    x: &Tensor,
    weights: &LstmWeights,
    mask: Option<&Tensor>,
    reverse: bool,
    precision: Precision,
) -> Result<Tensor> {
    let (b, t, _) = x.dims3()?;
    weights.check(x)?;
    let device_keep = match mask {
        Some(m) if m.dims() != [b, t] => {
            candle::bail!(
                "lstm: mask {:?} does not fit {t} steps of {b} rows",
                m.dims()
            )
        }
        Some(m) => Some(m.to_dtype(DType::F32)?.contiguous()?),
        None => None,
    };
    let op = LstmLayer {
        reverse,
        precision,
        keep: None,
        input_rows: Arc::default(),
        gate_rows: Arc::default(),
        packs: None,
        saved: Mutex::new(None),
        device_keep,
        saved_gpu: Mutex::new(None),
    };
    apply(x, weights, op)
}

/// `op` applied to `x`, `W_ih` and `[W_hh | b_ih + b_hh]`.
fn apply(x: &Tensor, weights: &LstmWeights, op: LstmLayer) -> Result<Tensor> {
    // Three inputs is the most a custom op takes: the summed bias rides as W_hh's last column,
    // put there by an op of its own (a sum, an unsqueeze and a concatenation through candle
    // were three more nodes whose backward started each input's gradient as a zero tensor).
    let w_hh_bias = if x.device().is_cuda() {
        // On a GPU the composite: three small launches per layer, not per step.
        let bias = (weights.b_ih + weights.b_hh)?.unsqueeze(1)?;
        Tensor::cat(&[weights.w_hh, &bias], 1)?
    } else {
        weights.w_hh.contiguous()?.apply_op3(
            &weights.b_ih.contiguous()?,
            &weights.b_hh.contiguous()?,
            RecurrentParams,
        )?
    };
    x.contiguous()?
        .apply_op3(&weights.w_ih.contiguous()?, &w_hh_bias, op)
}

struct LstmLayer {
    reverse: bool,
    precision: Precision,
    /// `[T * B]`, time-major; `None` when every step is real.
    keep: Option<Arc<Vec<bool>>>,
    /// The real `(step, row)` pairs, see [`real_rows`].
    input_rows: Arc<Vec<usize>>,
    gate_rows: Arc<Vec<usize>>,
    /// The weights packed beforehand, in this op's precision.
    packs: Option<Arc<LstmPacks>>,
    /// What the backward pass needs from the forward pass: the hidden states and cell states,
    /// time-major, and the real pairs' gate activations (compact, see `sequence`).
    saved: Mutex<Option<Saved>>,
    /// On a GPU, where the layer runs [`super::layer_gpu`]: the `[B, T]` mask (f32, on the
    /// device; `None` when every step is real), and what the backward pass needs.
    #[cfg(feature = "cuda")]
    device_keep: Option<Tensor>,
    #[cfg(feature = "cuda")]
    saved_gpu: Mutex<Option<super::layer_gpu::Saved>>,
}

/// The forward pass's activations, kept for the backward pass.
struct Saved {
    h: Tensor,
    acts: Tensor,
    cells: Tensor,
}

/// The real `(step, row)` pairs in time-major order, as (row of the batch-major input
/// `b * T + s`, row of the time-major gates `s * B + b`).
fn real_rows(keep: Option<&[bool]>, t: usize, b: usize) -> (Vec<usize>, Vec<usize>) {
    (0..t * b)
        .filter(|&r| keep.is_none_or(|k| k[r]))
        .map(|r| ((r % b) * t + r / b, r))
        .unzip()
}

/// The bias column of `[W_hh | bias] [4H, H + 1]`.
fn bias_column<T: Copy>(wb: &[T], h: usize) -> Vec<T> {
    wb.chunks(h + 1).map(|row| row[h]).collect()
}

/// `W_hh [4H, H]` where it lies inside `[W_hh | bias] [4H, H + 1]` (copying it out was a
/// `memset` and a copy of `4H x H` per layer per pass).
fn recurrent_weight<T>(wb: &[T], h: usize) -> RecurrentWeight<'_, T> {
    RecurrentWeight {
        data: wb,
        row_stride: h + 1,
    }
}

/// `W_hh [4H, H]` and a bias `[4H]` joined into `[W_hh | bias] [4H, H + 1]`: the inverse of
/// the split in [`RecurrentParams`]' backward pass.
fn join_w_hh_bias<T: Copy + Default + Send + Sync>(w_hh: &[T], bias: &[T], h: usize) -> Vec<T> {
    let mut wb = zeros(bias.len() * (h + 1));
    wb.par_chunks_mut(h + 1)
        .zip(w_hh.par_chunks(h.max(1)))
        .zip(bias.par_iter())
        .for_each(|((dst, w), &b)| {
            dst[..h].copy_from_slice(&w[..h]);
            dst[h] = b;
        });
    wb
}

/// Time-major `[T, B, width]` rows reordered to batch-major `[B, T, width]`, or back with
/// `to_time_major`.
fn reorder<T: Copy + Default + Send + Sync>(
    data: &[T],
    (t, b, width): (usize, usize, usize),
    to_time_major: bool,
) -> Vec<T> {
    let rows: Vec<usize> = if to_time_major {
        (0..t * b).map(|r| (r % b) * t + r / b).collect()
    } else {
        (0..t * b).map(|r| (r % t) * b + r / t).collect()
    };
    gather_rows(data, width, &rows)
}

impl LstmLayer {
    fn dims(&self, x: &Shape, w_ih: &Shape, wb: &Shape) -> Result<(Dims, usize)> {
        let (b, t, i) = x.dims3()?;
        let (h4, h1) = wb.dims2()?;
        let h = h1.saturating_sub(1);
        if h4 != 4 * h || w_ih.dims2()? != (h4, i) {
            candle::bail!("lstm: x {x:?}, W_ih {w_ih:?} and [W_hh | bias] {wb:?} do not fit")
        }
        let d = Dims {
            t,
            b,
            h,
            reverse: self.reverse,
            precision: self.precision,
        };
        Ok((d, i))
    }

    /// [`Self::dims`] as the GPU layer takes them.
    #[cfg(feature = "cuda")]
    fn gpu_dims(
        &self,
        x: &Shape,
        w_ih: &Shape,
        wb: &Shape,
    ) -> Result<gnmt_cuda_kernels::layer::LayerDims> {
        let (d, input) = self.dims(x, w_ih, wb)?;
        Ok(gnmt_cuda_kernels::layer::LayerDims {
            batch: d.b,
            steps: d.t,
            hidden: d.h,
            input,
            reverse: d.reverse,
        })
    }

    /// The backward pass on a GPU: [`super::layer_gpu::ThroughTime`] gives the gates' and
    /// `[W_hh | bias]`'s gradients, two cuBLAS products those of `x` and `W_ih`.
    #[cfg(feature = "cuda")]
    fn gpu_backward(
        &self,
        x: &Tensor,
        w_ih: &Tensor,
        w_hh_bias: &Tensor,
        out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = self.gpu_dims(x.shape(), w_ih.shape(), w_hh_bias.shape())?;
        let Some(saved) = self.saved_gpu.lock().expect("lstm: poisoned").take() else {
            candle::bail!("lstm: backward ran twice or before forward")
        };
        let through_time = super::layer_gpu::ThroughTime {
            d,
            precision: self.precision,
            keep: self.device_keep.clone(),
            saved,
            h: out.clone(),
        };
        let flat = grad
            .contiguous()?
            .apply_op2_no_bwd(&w_hh_bias.contiguous()?, &through_time)?;
        let (rows, h) = (d.batch * d.steps, d.hidden);
        let [dg, dwb] = split(&flat, [(rows, 4 * h).into(), (4 * h, h + 1).into()])?;
        let kernels = crate::Kernels::Fused(self.precision);
        let dx = crate::matmul::candle_matmul(&dg, w_ih, kernels)?.reshape(x.shape())?;
        let x_rows = x.reshape((rows, d.input))?;
        let d_w_ih = crate::matmul::candle_matmul(&dg.t()?, &x_rows, kernels)?;
        Ok((
            Some(dx),
            crate::param_grads::deliver(w_ih, d_w_ih),
            Some(dwb),
        ))
    }
}

impl Kernel<3> for LstmLayer {
    const NAME: &'static str = "lstm";

    /// The input projection over the real pairs in one product, then the recurrence.
    fn run<T: Float>(
        &self,
        [(x, sx), (w_ih, sw), (wb, swb)]: [(&[T], &Shape); 3],
    ) -> Result<(Vec<T>, Shape)> {
        let (d, i) = self.dims(sx, sw, swb)?;
        let compute = Compute::all_threads(d.precision);
        let packs = self.packs.as_deref();
        let projected = product_rhs(
            (self.gate_rows.len(), 4 * d.h, i),
            (&gather_rows(x, i, &self.input_rows), false),
            &Rhs::strided_prepacked(
                w_ih,
                (i, 4 * d.h),
                (1, i),
                d.precision,
                packs.map(|p| &p.input),
            ),
            None,
            compute,
        );
        // The projection's rows are the real pairs in time-major order: the compact layout
        // the recurrence reads its input gates in.
        let bias = bias_column(wb, d.h);
        let keep = self.keep.as_deref().map(Vec::as_slice);
        let (h, acts, cells) = sequence::forward(
            &projected,
            recurrent_weight(wb, d.h),
            packs.map(|p| &p.recurrent),
            &bias,
            keep,
            d,
        );
        let out = reorder(&h, (d.t, d.b, d.h), false);
        let (cpu, n_acts) = (Device::Cpu, acts.len());
        let saved = Saved {
            h: Tensor::from_vec(h, (d.t, d.b, d.h), &cpu)?,
            acts: Tensor::from_vec(acts, n_acts, &cpu)?,
            cells: Tensor::from_vec(cells, (d.t, d.b, d.h), &cpu)?,
        };
        *self.saved.lock().expect("lstm: poisoned") = Some(saved);
        Ok((out, Shape::from((d.b, d.t, d.h))))
    }
}

impl CustomOp3 for LstmLayer {
    fn name(&self) -> &'static str {
        "lstm-layer"
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
        let d = self.gpu_dims(l1.shape(), l2.shape(), l3.shape())?;
        let keep = self.device_keep.as_ref();
        let (out, saved) =
            super::layer_gpu::forward(d, self.precision, keep, (s1, l1), (s2, l2), (s3, l3))?;
        *self.saved_gpu.lock().expect("lstm: poisoned") = Some(saved);
        Ok((out, Shape::from((d.batch, d.steps, d.hidden))))
    }

    /// Backpropagation through time gives the gates' gradients (compact, real pairs only)
    /// and `[W_hh | bias]`'s; two products over the real pairs give those of `x` and `W_ih`.
    fn bwd(
        &self,
        x: &Tensor,
        w_ih: &Tensor,
        w_hh_bias: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        #[cfg(feature = "cuda")]
        if x.device().is_cuda() {
            return self.gpu_backward(x, w_ih, w_hh_bias, _out, grad);
        }
        let (d, i) = self.dims(x.shape(), w_ih.shape(), w_hh_bias.shape())?;
        let Some(saved) = self.saved.lock().expect("lstm: poisoned").take() else {
            candle::bail!("lstm: backward ran twice or before forward")
        };
        let through_time = ThroughTime {
            d,
            keep: self.keep.clone(),
            gate_rows: self.gate_rows.clone(),
            saved,
        };
        let flat = grad
            .contiguous()?
            .apply_op2_no_bwd(w_hh_bias, &through_time)?;
        let real = self.gate_rows.len();
        let [dg, dwb] = split(&flat, [(real, 4 * d.h).into(), (4 * d.h, d.h + 1).into()])?;
        let p = self.precision;
        let dx_real = product_no_bwd(&dg, w_ih, (false, false), p)?;
        let dx = rows::scatter(&dx_real, &self.input_rows, d.b * d.t)?.reshape((d.b, d.t, i))?;
        let x_real = rows::gather(&x.reshape((d.b * d.t, i))?, &self.input_rows)?;
        let d_w_ih = product_no_bwd(&dg, &x_real, (true, false), p)?;
        Ok((
            Some(dx),
            crate::param_grads::deliver(w_ih, d_w_ih),
            Some(dwb),
        ))
    }
}

/// `(grad [B, T, H], [W_hh | bias])` with the forward pass's activations -> the gates'
/// gradients `[real pairs, 4H]` and `[W_hh | bias]`'s, joined (see [`split`]).
struct ThroughTime {
    d: Dims,
    keep: Option<Arc<Vec<bool>>>,
    gate_rows: Arc<Vec<usize>>,
    saved: Saved,
}

impl Kernel<2> for ThroughTime {
    const NAME: &'static str = "lstm";

    fn run<T: Float>(&self, [(grad, _), (wb, _)]: [(&[T], &Shape); 2]) -> Result<(Vec<T>, Shape)> {
        let d = self.d;
        let grad_h = reorder(grad, (d.t, d.b, d.h), true);
        let keep = self.keep.as_deref().map(Vec::as_slice);
        let Saved { h, acts, cells } = &self.saved;
        read(h, Self::NAME, |h: &[T]| {
            read(acts, Self::NAME, |acts: &[T]| {
                read(cells, Self::NAME, |cells: &[T]| {
                    // [gates' gradients | [W_hh | bias]'s] in one buffer (see `split`).
                    let n_dg = self.gate_rows.len() * 4 * d.h;
                    let mut all = zeros(n_dg + 4 * d.h * (d.h + 1));
                    let (dg, dwb) = all.split_at_mut(n_dg);
                    let (d_w_hh, d_bias) = sequence::backward(
                        &grad_h,
                        sequence::Saved { h, acts, cells },
                        recurrent_weight(wb, d.h),
                        keep,
                        &self.gate_rows,
                        d,
                        dg,
                    );
                    dwb.copy_from_slice(&join_w_hh_bias(&d_w_hh, &d_bias, d.h));
                    let n = all.len();
                    Ok((all, Shape::from(n)))
                })
            })
        })
    }
}

impl CustomOp2 for ThroughTime {
    fn name(&self) -> &'static str {
        "lstm-layer-backward"
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
}

/// `(W_hh [4H, H], b_ih [4H], b_hh [4H]) -> [W_hh | b_ih + b_hh] [4H, H + 1]`, the layer op's
/// third input. Its backward pass splits the gradient and hands the parts to
/// [`crate::param_grads`] (both biases receive the bias column's gradient).
struct RecurrentParams;

impl Kernel<3> for RecurrentParams {
    const NAME: &'static str = "lstm";

    fn run<T: Float>(
        &self,
        [(w_hh, sw), (b_ih, sbi), (b_hh, sbh)]: [(&[T], &Shape); 3],
    ) -> Result<(Vec<T>, Shape)> {
        let (h4, h) = sw.dims2()?;
        if sbi.dims() != [h4] || sbh.dims() != [h4] {
            candle::bail!("lstm: W_hh {sw:?} and biases {sbi:?}, {sbh:?} do not fit")
        }
        let bias: Vec<T> = b_ih.iter().zip(b_hh).map(|(&bi, &bh)| bi + bh).collect();
        Ok((join_w_hh_bias(w_hh, &bias, h), Shape::from((h4, h + 1))))
    }
}

impl CustomOp3 for RecurrentParams {
    fn name(&self) -> &'static str {
        "lstm-recurrent-params"
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

    fn bwd(
        &self,
        w_hh: &Tensor,
        b_ih: &Tensor,
        b_hh: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (h4, h) = w_hh.dims2()?;
        let grad = grad.contiguous()?;
        let d_w_hh = concat::columns(&grad, 0, h)?;
        let d_bias = concat::columns(&grad, h, 1)?.reshape(h4)?;
        use crate::param_grads::deliver;
        Ok((
            deliver(w_hh, d_w_hh),
            deliver(b_ih, d_bias.clone()),
            deliver(b_hh, d_bias),
        ))
    }
}
