//! A whole LSTM layer as one autograd operation: input projection, recurrence and their
//! backward passes, `CustomOp3(x [B, T, in], W_ih [4H, in], [W_hh | bias] [4H, H + 1]) ->
//! h [B, T, H]`.
//!
//! Composed from candle ops, a layer was a transposed copy of its input to time-major order, a
//! projection, two reshapes, the recurrence ([`super::sequence`]) and a transposed view of its
//! output that the next op copied; in the backward pass each of those nodes also started its
//! input's gradient as a fresh zero tensor and added into it: serial work on the calling
//! thread (fusing them made a two-thread `small` training step 5-8% faster). Here the input is
//! read batch-major and multiplied out in time-major order in one product over the real
//! `(step, row)` pairs only (padding costs nothing), and the output is written batch-major.

use std::sync::Mutex;

use candle::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::sequence::{self, Dims, RecurrentWeight};
use gnmt_kernels::buffers::{gather_rows, scatter_rows, zeros};
use gnmt_kernels::matmul::product;
use gnmt_kernels::{Compute, Precision, Real};

use crate::storage::tensor_slice;

/// Runs one layer from the zero state over `x [B, T, in]`: `w_ih [4H, in]`, `w_hh [4H, H]`,
/// and both LSTM biases `[4H]` (the gates see their sum). `keep` holds one flag per `(step, row)`,
/// time-major (`keep[s * B + b]`, see [`sequence::time_major_keep`]); a padded step leaves the
/// state unchanged. `reverse` processes time backwards. Returns the hidden state after each
/// step, `[B, T, H]`.
pub fn lstm_layer(
    x: &Tensor,
    w_ih: &Tensor,
    w_hh: &Tensor,
    (b_ih, b_hh): (&Tensor, &Tensor),
    keep: Option<Vec<bool>>,
    reverse: bool,
    precision: Precision,
) -> Result<Tensor> {
    let (b, t, i) = x.dims3()?;
    let (h4, h) = w_hh.dims2()?;
    if h4 != 4 * h || w_ih.dims() != [h4, i] || b_ih.dims() != [h4] || b_hh.dims() != [h4] {
        candle::bail!(
            "lstm: x {:?}, W_ih {:?}, W_hh {:?} and biases {:?}, {:?} do not fit",
            x.dims(),
            w_ih.dims(),
            w_hh.dims(),
            b_ih.dims(),
            b_hh.dims()
        )
    }
    if keep.as_ref().is_some_and(|k| k.len() != t * b) {
        candle::bail!(
            "lstm: {} mask flags for {t} steps of {b} rows",
            keep.map_or(0, |k| k.len())
        )
    }
    // Three inputs is the most a custom op takes: the summed bias rides as W_hh's last column,
    // put there by an op of its own (a sum, an unsqueeze and a concatenation through candle
    // were three more nodes whose backward started each input's gradient as a zero tensor).
    let w_hh_bias =
        w_hh.contiguous()?
            .apply_op3(&b_ih.contiguous()?, &b_hh.contiguous()?, RecurrentParams)?;
    let op = LstmLayer {
        reverse,
        precision,
        keep,
        saved: Mutex::new(None),
    };
    x.contiguous()?
        .apply_op3(&w_ih.contiguous()?, &w_hh_bias, op)
}

struct LstmLayer {
    reverse: bool,
    precision: Precision,
    /// `[T * B]`, time-major; `None` when every step is real.
    keep: Option<Vec<bool>>,
    /// What the backward pass needs from the forward pass: the hidden states and cell states,
    /// time-major, and the real pairs' gate activations (compact, see `sequence`), as f32 or
    /// f64 storage.
    saved: Mutex<Option<[CpuStorage; 3]>>,
}

/// The real `(step, row)` pairs in time-major order, as (row of the batch-major input
/// `b * T + s`, row of the time-major gates `s * B + b`).
fn real_rows(keep: Option<&[bool]>, t: usize, b: usize) -> (Vec<usize>, Vec<usize>) {
    (0..t * b)
        .filter(|&r| keep.is_none_or(|k| k[r]))
        .map(|r| ((r % b) * t + r / b, r))
        .unzip()
}

/// `w_hh_bias [4H, H + 1]` split into `W_hh [4H, H]` and the bias `[4H]`.
fn split_w_hh_bias<T: Copy + Default + Send + Sync>(wb: &[T], h: usize) -> (Vec<T>, Vec<T>) {
    let mut w_hh = zeros(4 * h * h);
    w_hh.par_chunks_mut(h.max(1))
        .zip(wb.par_chunks(h + 1))
        .for_each(|(dst, src)| dst.copy_from_slice(&src[..h]));
    (w_hh, bias_column(wb, h))
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
/// [`split_w_hh_bias`].
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

fn forward<T: 'static + Real>(
    x: &[T],
    w_ih: &[T],
    wb: &[T],
    keep: Option<&[bool]>,
    (d, i): (Dims, usize),
) -> [Vec<T>; 4] {
    let compute = Compute::all_threads(d.precision);
    let (input_rows, gate_rows) = real_rows(keep, d.t, d.b);
    let projected = product(
        (gate_rows.len(), 4 * d.h, i),
        (&gather_rows(x, i, &input_rows), false),
        (w_ih, true),
        None,
        compute,
    );
    // The projection's rows are the real pairs in time-major order: the compact layout the
    // recurrence reads its input gates in.
    let bias = bias_column(wb, d.h);
    let (h, acts, cells) = sequence::forward(&projected, recurrent_weight(wb, d.h), &bias, keep, d);
    let out = reorder(&h, (d.t, d.b, d.h), false);
    [out, h, acts, cells]
}

/// Returns the gradients of `x`, `W_ih` and `[W_hh | bias]`.
fn backward<T: 'static + Real>(
    grad: &[T],
    x: &[T],
    w_ih: &[T],
    wb: &[T],
    [h, acts, cells]: [&[T]; 3],
    keep: Option<&[bool]>,
    (d, i): (Dims, usize),
) -> [Vec<T>; 3] {
    let compute = Compute::all_threads(d.precision);
    let grad_h = reorder(grad, (d.t, d.b, d.h), true);
    let (input_rows, gate_rows) = real_rows(keep, d.t, d.b);
    let w_hh = recurrent_weight(wb, d.h);
    let (dg, d_w_hh, d_bias) =
        sequence::backward(&grad_h, h, acts, cells, w_hh, keep, &gate_rows, d);
    // The projection's backward, over the real (step, row) pairs only: the rows of `dg`.
    let dx_real = product(
        (gate_rows.len(), i, 4 * d.h),
        (&dg, false),
        (w_ih, false),
        None,
        compute,
    );
    let dx = scatter_rows(&dx_real, i, &input_rows, d.b * d.t);
    let d_w_ih = product(
        (4 * d.h, i, gate_rows.len()),
        (&dg, true),
        (&gather_rows(x, i, &input_rows), false),
        None,
        compute,
    );
    [dx, d_w_ih, join_w_hh_bias(&d_w_hh, &d_bias, d.h)]
}

/// `(W_hh [4H, H], b_ih [4H], b_hh [4H]) -> [W_hh | b_ih + b_hh] [4H, H + 1]`, the layer op's
/// third input. Its backward splits the gradient and hands the parts to
/// [`crate::param_grads`] (both biases receive the bias column's gradient).
struct RecurrentParams;

fn pack_w_hh_bias<T: Real>(w_hh: &[T], b_ih: &[T], b_hh: &[T], h: usize) -> Vec<T> {
    let bias: Vec<T> = b_ih.iter().zip(b_hh).map(|(&bi, &bh)| bi + bh).collect();
    join_w_hh_bias(w_hh, &bias, h)
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
        let (h4, h) = l1.shape().dims2()?;
        if l2.shape().dims() != [h4] || l3.shape().dims() != [h4] {
            candle::bail!(
                "lstm: W_hh {:?} and biases {:?}, {:?} do not fit",
                l1.shape(),
                l2.shape(),
                l3.shape()
            )
        }
        let wb = match (s1, s2, s3) {
            (CpuStorage::F32(w), CpuStorage::F32(bi), CpuStorage::F32(bh)) => CpuStorage::F32(
                pack_w_hh_bias(slice(w, l1)?, slice(bi, l2)?, slice(bh, l3)?, h),
            ),
            (CpuStorage::F64(w), CpuStorage::F64(bi), CpuStorage::F64(bh)) => CpuStorage::F64(
                pack_w_hh_bias(slice(w, l1)?, slice(bi, l2)?, slice(bh, l3)?, h),
            ),
            _ => candle::bail!("lstm: f32 or f64 weights of one dtype only"),
        };
        Ok((wb, Shape::from((h4, h + 1))))
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
        let g = grad.contiguous()?;
        let gs = g.storage_and_layout();
        let device = w_hh.device();
        macro_rules! split {
            ($t:ty) => {{
                let (w, b) = split_w_hh_bias(tensor_slice::<$t>(&gs.0, gs.1, "lstm")?, h);
                (
                    Tensor::from_vec(w, (h4, h), device)?,
                    Tensor::from_vec(b, h4, device)?,
                )
            }};
        }
        let (d_w_hh, d_bias) = match grad.dtype() {
            DType::F32 => split!(f32),
            DType::F64 => split!(f64),
            other => candle::bail!("lstm: no backward for {other:?}"),
        };
        use crate::param_grads::deliver;
        Ok((
            deliver(w_hh, d_w_hh),
            deliver(b_ih, d_bias.clone()),
            deliver(b_hh, d_bias),
        ))
    }
}

fn slice<'a, T>(data: &'a [T], l: &Layout) -> Result<&'a [T]> {
    crate::storage::contiguous_slice(data, l, "lstm")
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
        let (d, i) = self.dims(l1.shape(), l2.shape(), l3.shape())?;
        let keep = self.keep.as_deref();
        let (out, saved) = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(w), CpuStorage::F32(wb)) => {
                let [o, h, a, c] =
                    forward(slice(x, l1)?, slice(w, l2)?, slice(wb, l3)?, keep, (d, i));
                (
                    CpuStorage::F32(o),
                    [CpuStorage::F32(h), CpuStorage::F32(a), CpuStorage::F32(c)],
                )
            }
            (CpuStorage::F64(x), CpuStorage::F64(w), CpuStorage::F64(wb)) => {
                let [o, h, a, c] =
                    forward(slice(x, l1)?, slice(w, l2)?, slice(wb, l3)?, keep, (d, i));
                (
                    CpuStorage::F64(o),
                    [CpuStorage::F64(h), CpuStorage::F64(a), CpuStorage::F64(c)],
                )
            }
            _ => candle::bail!("lstm: f32 or f64 inputs of one dtype only"),
        };
        *self.saved.lock().expect("lstm: poisoned") = Some(saved);
        Ok((out, Shape::from((d.b, d.t, d.h))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w_ih: &Tensor,
        w_hh_bias: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (d, i) = self.dims(x.shape(), w_ih.shape(), w_hh_bias.shape())?;
        let keep = self.keep.as_deref();
        let device = x.device();
        let (x, w, wb, g) = (
            x.contiguous()?,
            w_ih.contiguous()?,
            w_hh_bias.contiguous()?,
            grad.contiguous()?,
        );
        // Read in place: copying the inputs out was serial work on the calling thread.
        let (xs, ws, wbs, gs) = (
            x.storage_and_layout(),
            w.storage_and_layout(),
            wb.storage_and_layout(),
            g.storage_and_layout(),
        );
        let saved = self.saved.lock().expect("lstm: poisoned");
        let Some([h, acts, cells]) = saved.as_ref() else {
            candle::bail!("lstm: backward before forward")
        };
        macro_rules! grads {
            ($t:ty, $h:expr, $a:expr, $c:expr) => {{
                let [dx, dw, dwb] = backward::<$t>(
                    tensor_slice(&gs.0, gs.1, "lstm")?,
                    tensor_slice(&xs.0, xs.1, "lstm")?,
                    tensor_slice(&ws.0, ws.1, "lstm")?,
                    tensor_slice(&wbs.0, wbs.1, "lstm")?,
                    [$h, $a, $c],
                    keep,
                    (d, i),
                );
                (
                    Tensor::from_vec(dx, (d.b, d.t, i), device)?,
                    Tensor::from_vec(dw, (4 * d.h, i), device)?,
                    Tensor::from_vec(dwb, (4 * d.h, d.h + 1), device)?,
                )
            }};
        }
        let (dx, dw, dwb) = match (h, acts, cells, x.dtype()) {
            (CpuStorage::F32(h), CpuStorage::F32(a), CpuStorage::F32(c), DType::F32) => {
                grads!(f32, h, a, c)
            }
            (CpuStorage::F64(h), CpuStorage::F64(a), CpuStorage::F64(c), DType::F64) => {
                grads!(f64, h, a, c)
            }
            (.., other) => candle::bail!("lstm: no backward for {other:?}"),
        };
        Ok((Some(dx), crate::param_grads::deliver(w_ih, dw), Some(dwb)))
    }
}
