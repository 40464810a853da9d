//! The LSTM cell as composite candle ops: obviously right, differentiable by autograd, and
//! the reference any fused kernel is tested against.

use candle::{Result, Tensor, D};

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
