//! The LSTM as composite candle ops: obviously right, differentiable by autograd, on any
//! device, and the reference every fused kernel is tested against.

use candle::{Result, Tensor, D};

use super::{LstmState, LstmWeights};
use crate::matmul::candle_matmul;
use crate::Kernels;

/// One LSTM cell update from pre-activation gates `[B, 4H]` (order i, f, g, o, as PyTorch and
/// `candle_nn::LSTM`) and the previous cell state `[B, H]`. Returns `(h, c)`.
pub fn lstm_cell(gates: &Tensor, c_prev: &Tensor) -> Result<(Tensor, Tensor)> {
    let chunks = gates.chunk(4, D::Minus1)?;
    let i = candle_nn::ops::sigmoid(&chunks[0])?;
    let f = candle_nn::ops::sigmoid(&chunks[1])?;
    let g = chunks[2].tanh()?;
    let o = candle_nn::ops::sigmoid(&chunks[3])?;
    let c = ((f * c_prev)? + (i * g)?)?;
    let h = (o * c.tanh()?)?;
    Ok((h, c))
}

/// A layer over `x [B, T, in]` one step at a time (see [`super::lstm_layer`]), also returning
/// the final state. Its cell and products are `kernels`' ([`super::cell::lstm_cell`],
/// [`crate::matmul::candle_matmul`]): the composites for the reference; a GPU's fused cell
/// and its products' precision for the fused kernels there.
pub fn layer(
    x: &Tensor,
    weights: &LstmWeights,
    mask: Option<&Tensor>,
    reverse: bool,
    kernels: Kernels,
) -> Result<(Tensor, LstmState)> {
    weights.check(x)?;
    let (b, t, i) = x.dims3()?;
    let hidden = weights.w_hh.dims2()?.1;
    let bias = (weights.b_ih + weights.b_hh)?;
    let gates = candle_matmul(&x.reshape((b * t, i))?, &weights.w_ih.t()?, kernels)?
        .broadcast_add(&bias)?
        .reshape((b, t, 4 * hidden))?;
    let mask = match mask {
        Some(m) if m.dims() != [b, t] => {
            candle::bail!(
                "lstm: mask {:?} does not fit {t} steps of {b} rows",
                m.dims()
            )
        }
        Some(m) => Some(m.to_dtype(x.dtype())?.unsqueeze(2)?), // [B, T, 1]
        None => None,
    };
    let mut state = LstmState::zeros(b, hidden, x.dtype(), x.device())?;
    let mut outputs = vec![None; t];
    for step in 0..t {
        let s = if reverse { t - 1 - step } else { step };
        let recurrent = candle_matmul(&state.h, &weights.w_hh.t()?, kernels)?;
        let gates = (gates.narrow(1, s, 1)?.squeeze(1)? + recurrent)?;
        let (h, c) = match &mask {
            None => super::cell::lstm_cell(&gates, &state.c, kernels)?,
            Some(m) => {
                let m = m.narrow(1, s, 1)?.squeeze(1)?; // [B, 1]
                super::carry::lstm_cell_carry(&gates, &state.c, &state.h, &m, kernels)?
            }
        };
        state = LstmState { h, c };
        outputs[s] = Some(state.h.clone());
    }
    let outputs: Vec<Tensor> = outputs
        .into_iter()
        .map(|o| o.expect("every step ran"))
        .collect();
    Ok((Tensor::stack(&outputs, 1)?, state))
}

/// `m * new + (1 - m) * old` for a 0/1 mask `[B, 1]`, written as `old + m * (new - old)`.
pub(super) fn blend(m: &Tensor, new: &Tensor, old: &Tensor) -> Result<Tensor> {
    old + (new - old)?.broadcast_mul(m)?
}
