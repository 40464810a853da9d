//! Our LSTM layer: the input projection of every time step in one matmul (Marian's
//! `applyInput`), then one matmul per step for the recurrent part (`applyState`).
//!
//! Parameters use PyTorch's names (`weight_ih_l{k}`, `weight_hh_l{k}`, `bias_ih_l{k}`,
//! `bias_hh_l{k}`, with `_reverse` for a backward direction), so a layer reads the same tensors
//! as `candle_nn::lstm`, which the tests use as the reference.
//!
//! Padding: a step whose mask is 0 leaves `(h, c)` unchanged. Running backwards over a padded
//! batch therefore starts every sentence from the zero state at its own last real token.

pub mod fused;
pub mod layer;
pub mod reference;
pub mod sequence;

use candle::{DType, Result, Tensor};
use candle_nn::VarBuilder;

use gnmt_kernels::Precision;

use crate::dense::StepMatrix;

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

/// A layer's weights laid out for decoding one step at a time: `[W_ih | W_hh]^T` as one
/// contiguous `[in + H, 4H]` matrix with the summed bias. A step is then one matmul over
/// `[x | h]` that reads the weights as they lie, where `x W_ih^T` on the stored `[4H, in]`
/// weight makes gemm repack it at every step. Made from the current weights by
/// [`Lstm::step_weights`], so it never goes stale during training.
#[derive(Debug)]
pub struct StepWeights {
    w_t: StepMatrix,
}

impl StepWeights {
    /// One step from an input `x [B, in]`.
    pub fn step(&self, x: &Tensor, state: &LstmState) -> Result<LstmState> {
        self.step_parts(&[x], state)
    }

    /// One step from an input given in parts side by side (`[x | context]`): concatenated
    /// with the hidden state in one copy.
    pub fn step_parts(&self, x: &[&Tensor], state: &LstmState) -> Result<LstmState> {
        let mut parts = x.to_vec();
        parts.push(&state.h);
        let gates = self.w_t.apply(&Tensor::cat(&parts, 1)?)?;
        let (h, c) = fused::lstm_cell_step(&gates, &state.c)?;
        Ok(LstmState { h, c })
    }
}

/// One LSTM layer in one direction.
#[derive(Debug, Clone)]
pub struct Lstm {
    w_ih: Tensor, // [4H, in]
    w_hh: Tensor, // [4H, H]
    b_ih: Tensor, // [4H]
    b_hh: Tensor, // [4H]
    hidden: usize,
    /// Of the fused sequence's products and the decoding weights.
    precision: Precision,
}

impl Lstm {
    /// Reads `weight_ih_{name}` etc. from `vb`, where `name` is e.g. `l0` or `l0_reverse`.
    pub fn new(in_dim: usize, hidden: usize, name: &str, vb: &VarBuilder) -> Result<Self> {
        Ok(Self {
            w_ih: vb.get((4 * hidden, in_dim), &format!("weight_ih_{name}"))?,
            w_hh: vb.get((4 * hidden, hidden), &format!("weight_hh_{name}"))?,
            b_ih: vb.get(4 * hidden, &format!("bias_ih_{name}"))?,
            b_hh: vb.get(4 * hidden, &format!("bias_hh_{name}"))?,
            hidden,
            precision: Precision::F32,
        })
    }

    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }

    pub fn hidden_size(&self) -> usize {
        self.hidden
    }

    /// This layer's weights laid out for step-by-step decoding.
    pub fn step_weights(&self) -> Result<StepWeights> {
        let w = Tensor::cat(&[&self.w_ih, &self.w_hh], 1)?; // [4H, in + H]
        Ok(StepWeights {
            w_t: StepMatrix::new(w.t()?, Some(self.bias()?), self.precision)?,
        })
    }

    /// The sum of both bias vectors `[4H]`: the gates only ever see them added.
    fn bias(&self) -> Result<Tensor> {
        &self.b_ih + &self.b_hh
    }

    /// `x W_ih^T` for every step at once: `x [B, T, in]` -> `[T, B, 4H]`, time-major and
    /// contiguous so each step's slice is a plain row block.
    fn input_projection(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, i) = x.dims3()?;
        let x = x.transpose(0, 1)?.contiguous()?.reshape((t * b, i))?;
        crate::dense::matmul_t(&x, &self.w_ih, self.precision)?.reshape((t, b, 4 * self.hidden))
    }

    /// Input part of the gates for every step at once, biases included: `[T, B, 4H]`.
    pub fn input_gates(&self, x: &Tensor) -> Result<Tensor> {
        self.input_projection(x)?.broadcast_add(&self.bias()?)
    }

    /// One step from precomputed input gates `[B, 4H]`.
    pub fn cell(&self, input_gates: &Tensor, state: &LstmState) -> Result<LstmState> {
        let gates = (input_gates + state.h.matmul(&self.w_hh.t()?)?)?;
        let (h, c) = fused::lstm_cell(&gates, &state.c)?;
        Ok(LstmState { h, c })
    }

    /// One step from an input `x [B, in]` (the paper's attention query in training; decoding
    /// steps through [`StepWeights`]).
    pub fn step(&self, x: &Tensor, state: &LstmState) -> Result<LstmState> {
        let input_gates = x.matmul(&self.w_ih.t()?)?.broadcast_add(&self.bias()?)?;
        self.cell(&input_gates, state)
    }

    /// Runs the layer over `x [B, T, in]` from the zero state. `mask [B, T]` (1 real, 0 pad)
    /// freezes the state on padded steps. `reverse` reads time backwards; outputs `[B, T, H]`
    /// are returned in the original time order. The whole recurrence is one fused operation
    /// ([`layer::lstm_layer`]); [`Lstm::forward_stepwise`] is its reference.
    ///
    /// Padded steps cost nothing: the input projection multiplies out only the real
    /// `(step, row)` pairs, and the recurrence only the rows still running at each step.
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>, reverse: bool) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let keep = match mask {
            None => None,
            Some(m) => Some(sequence::time_major_keep(m, t, b)?),
        };
        layer::lstm_layer(
            x,
            &self.w_ih,
            &self.w_hh,
            (&self.b_ih, &self.b_hh),
            keep,
            reverse,
            self.precision,
        )
    }

    /// [`Lstm::forward`] as one autograd op per step, also returning the final state: the
    /// reference the fused sequence is tested against.
    pub fn forward_stepwise(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        reverse: bool,
    ) -> Result<(Tensor, LstmState)> {
        let (b, t, _) = x.dims3()?;
        let gates = self.input_gates(x)?;
        let mask = match mask {
            Some(m) => Some(m.t()?.contiguous()?.unsqueeze(2)?), // [T, B, 1]
            None => None,
        };
        let mut state = LstmState::zeros(b, self.hidden, x.dtype(), x.device())?;
        let mut outputs = vec![None; t];
        for step in 0..t {
            let s = if reverse { t - 1 - step } else { step };
            let next = self.cell(&gates.get(s)?, &state)?;
            state = match &mask {
                None => next,
                Some(m) => {
                    let m = m.get(s)?; // [B, 1]
                    LstmState {
                        h: blend(&m, &next.h, &state.h)?,
                        c: blend(&m, &next.c, &state.c)?,
                    }
                }
            };
            outputs[s] = Some(state.h.clone());
        }
        let outputs: Vec<Tensor> = outputs
            .into_iter()
            .map(|o| o.expect("every step ran"))
            .collect();
        Ok((Tensor::stack(&outputs, 1)?, state))
    }
}

/// `m * new + (1 - m) * old` for a 0/1 mask `[B, 1]`, written as `old + m * (new - old)`.
fn blend(m: &Tensor, new: &Tensor, old: &Tensor) -> Result<Tensor> {
    old + (new - old)?.broadcast_mul(m)?
}
