//! An LSTM layer's operations: the cell ([`cell`]), and a whole layer over a sequence as one
//! fused op ([`layer`]) or, for the reference, one composite cell per step.
//!
//! Padding: a step whose mask is 0 leaves `(h, c)` unchanged. Running backwards over a padded
//! batch therefore starts every sentence from the zero state at its own last real token.

pub mod carry;
pub mod cell;
pub mod layer;
#[cfg(feature = "cuda")]
mod layer_gpu;
pub mod reference;

use candle::{DType, Result, Tensor};

use crate::Kernels;
#[cfg(feature = "cuda")]
use gnmt_kernels::Precision;

/// The recurrent state of one layer: hidden output `h` and cell `c`, both `[B, H]`.
#[derive(Debug, Clone)]
pub struct LstmState {
    pub h: Tensor,
    pub c: Tensor,
}

impl LstmState {
    pub fn zeros(
        batch: usize,
        hidden: usize,
        dtype: DType,
        device: &candle::Device,
    ) -> Result<Self> {
        let z = Tensor::zeros((batch, hidden), dtype, device)?;
        Ok(Self { h: z.clone(), c: z })
    }

    /// Keeps rows `indices` (a `u32` tensor), in that order: beam reordering.
    pub fn index_select(&self, indices: &Tensor) -> Result<Self> {
        Ok(Self {
            h: self.h.index_select(indices, 0)?,
            c: self.c.index_select(indices, 0)?,
        })
    }
}

/// One layer's weights in PyTorch's layout: `w_ih [4H, in]`, `w_hh [4H, H]` and the two
/// biases `[4H]` (the gates see their sum), gates in the order i, f, g, o.
#[derive(Debug, Clone, Copy)]
pub struct LstmWeights<'a> {
    pub w_ih: &'a Tensor,
    pub w_hh: &'a Tensor,
    pub b_ih: &'a Tensor,
    pub b_hh: &'a Tensor,
}

impl LstmWeights<'_> {
    /// Checks the weights fit one another and the input `x [B, T, in]`.
    fn check(&self, x: &Tensor) -> Result<()> {
        let i = x.dims3()?.2;
        let (h4, h) = self.w_hh.dims2()?;
        let fit = h4 == 4 * h
            && self.w_ih.dims() == [h4, i]
            && self.b_ih.dims() == [h4]
            && self.b_hh.dims() == [h4];
        if !fit {
            candle::bail!(
                "lstm: x {:?}, W_ih {:?}, W_hh {:?} and biases {:?}, {:?} do not fit",
                x.dims(),
                self.w_ih.dims(),
                self.w_hh.dims(),
                self.b_ih.dims(),
                self.b_hh.dims()
            )
        }
        Ok(())
    }
}

/// Runs a layer with `weights` over `x [B, T, in]` from the zero state; `mask [B, T]` (1 real,
/// 0 pad) freezes the state on padded steps, `reverse` reads time backwards. Returns the
/// outputs `[B, T, H]` in the original time order.
///
/// Fused, the whole recurrence is one op ([`layer::lstm_layer`]). On the CPU padded steps cost
/// nothing: the input projection multiplies out only the real `(step, row)` pairs, and the
/// recurrence only the rows still running at each step; `packs` (from
/// [`layer::LstmPacks::new`]) saves packing the weights again. On a GPU the op runs
/// `gnmt-cuda-kernels`' layer: one product for the input projection, then a product and a
/// launch per step (f32 inputs, f32/TF32/bf16 products). The reference runs
/// [`reference::layer`].
pub fn lstm_layer(
    x: &Tensor,
    weights: &LstmWeights,
    mask: Option<&Tensor>,
    reverse: bool,
    kernels: Kernels,
    packs: Option<std::sync::Arc<layer::LstmPacks>>,
) -> Result<Tensor> {
    let (b, t, _) = x.dims3()?;
    if let Some(precision) = kernels.fused_on(x.device()) {
        let keep = mask.map(|m| time_major_keep(m, t, b)).transpose()?;
        return layer::lstm_layer(x, weights, keep, reverse, precision, packs);
    }
    #[cfg(feature = "cuda")]
    if let Some(precision) = gpu_layer_precision(x, kernels, b * t) {
        return layer::lstm_layer_on_gpu(x, weights, mask, reverse, precision);
    }
    // The composite layer, with the device's fused cell where it has one.
    Ok(reference::layer(x, weights, mask, reverse, kernels)?.0)
}

/// The products' precision where the fused layer runs on a GPU: the fused kernels there, f32
/// values, a precision cuBLAS has (not int8) and at least one `(row, step)`.
#[cfg(feature = "cuda")]
fn gpu_layer_precision(x: &Tensor, kernels: Kernels, pairs: usize) -> Option<Precision> {
    match kernels {
        Kernels::Fused(p)
            if kernels.cuda_on(x.device())
                && x.dtype() == DType::F32
                && p != Precision::Int8
                && pairs > 0 =>
        {
            Some(p)
        }
        _ => None,
    }
}

/// A `[B, T]` mask (1 real, 0 pad, any float dtype) as one flag per `(step, row)`, time-major
/// like the gates: `keep[s * B + b]`.
pub fn time_major_keep(mask: &Tensor, t: usize, b: usize) -> Result<Vec<bool>> {
    if mask.dims() != [b, t] {
        candle::bail!(
            "lstm: mask {:?} does not fit {t} steps of {b} rows",
            mask.dims()
        )
    }
    let rows = mask.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    Ok((0..t)
        .flat_map(|s| rows.iter().map(move |r| r[s] != 0.0))
        .collect())
}
