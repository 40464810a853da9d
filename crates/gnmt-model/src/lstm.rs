//! Our LSTM layer: the input projection of every time step in one matmul (Marian's
//! `applyInput`), then one matmul per step for the recurrent part (`applyState`).
//!
//! Parameters use PyTorch's names (`weight_ih_l{k}`, `weight_hh_l{k}`, `bias_ih_l{k}`,
//! `bias_hh_l{k}`, with `_reverse` for a backward direction), so a layer reads the same tensors
//! as `candle_nn::lstm`, which the tests use as the reference.
//!
//! Padding: a step whose mask is 0 leaves `(h, c)` unchanged (see [`gnmt_ops::lstm`]).

use std::sync::{Arc, OnceLock};

use candle::{Result, Tensor};
use candle_nn::VarBuilder;

use gnmt_ops::lstm::cell::{lstm_cell, lstm_cell_step};
use gnmt_ops::lstm::layer::LstmPacks;
use gnmt_ops::lstm::{lstm_layer, reference, LstmWeights};
use gnmt_ops::step_matrix::StepMatrix;
use gnmt_ops::Kernels;

pub use gnmt_ops::lstm::LstmState;

/// A layer's weights laid out for decoding one step at a time: `[W_ih | W_hh]^T` as one
/// contiguous `[in + H, 4H]` matrix with the summed bias. A step is then one matmul over
/// `[x | h]` that reads the weights as they lie, where `x W_ih^T` on the stored `[4H, in]`
/// weight makes gemm repack it at every step. Made from the current weights by
/// [`Lstm::step_weights`], so it never goes stale during training.
#[derive(Debug)]
pub struct StepWeights {
    w_t: StepMatrix,
    kernels: Kernels,
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
        let (h, c) = lstm_cell_step(&gates, &state.c, self.kernels)?;
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
    /// Of the sequence, the cell and the decoding weights.
    kernels: Kernels,
    /// The weights packed for the fused sequence, made at the first forward pass of a layer
    /// whose weights are constants (a loaded model, not a training one: a `Var` changes at
    /// every update) and kept for the layer's life; cleared when the kernels change.
    packs: OnceLock<Option<Arc<LstmPacks>>>,
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
            kernels: Kernels::default(),
            packs: OnceLock::new(),
        })
    }

    pub fn set_kernels(&mut self, kernels: Kernels) {
        self.kernels = kernels;
        self.packs = OnceLock::new();
    }

    /// Whether a forward pass has packed this layer's weights and kept them (a loaded layer
    /// on the fused kernels; never a training one).
    pub fn keeps_packed_weights(&self) -> bool {
        matches!(self.packs.get(), Some(Some(_)))
    }

    /// The packed weights for the fused sequence, when they can be kept (see `packs`).
    fn packs(&self) -> Result<Option<Arc<LstmPacks>>> {
        let Some(precision) = self.kernels.fused_on(self.w_ih.device()) else {
            return Ok(None);
        };
        if self.w_ih.is_variable() || self.w_hh.is_variable() {
            return Ok(None);
        }
        if let Some(packs) = self.packs.get() {
            return Ok(packs.clone());
        }
        let packs = LstmPacks::new(&self.weights(), precision)?.map(Arc::new);
        Ok(self.packs.get_or_init(|| packs).clone())
    }

    pub fn hidden_size(&self) -> usize {
        self.hidden
    }

    /// This layer's weights laid out for step-by-step decoding.
    pub fn step_weights(&self) -> Result<StepWeights> {
        let w = Tensor::cat(&[&self.w_ih, &self.w_hh], 1)?; // [4H, in + H]
        Ok(StepWeights {
            w_t: StepMatrix::new(w.t()?, Some(self.bias()?), self.kernels)?,
            kernels: self.kernels,
        })
    }

    /// The sum of both bias vectors `[4H]`: the gates only ever see them added.
    fn bias(&self) -> Result<Tensor> {
        &self.b_ih + &self.b_hh
    }

    /// One step from an input `x [B, in]` (the paper's attention query in training; decoding
    /// steps through [`StepWeights`]).
    pub fn step(&self, x: &Tensor, state: &LstmState) -> Result<LstmState> {
        let input_gates = x.matmul(&self.w_ih.t()?)?.broadcast_add(&self.bias()?)?;
        let gates = (input_gates + state.h.matmul(&self.w_hh.t()?)?)?;
        let (h, c) = lstm_cell(&gates, &state.c, self.kernels)?;
        Ok(LstmState { h, c })
    }

    fn weights(&self) -> LstmWeights<'_> {
        LstmWeights {
            w_ih: &self.w_ih,
            w_hh: &self.w_hh,
            b_ih: &self.b_ih,
            b_hh: &self.b_hh,
        }
    }

    /// Runs the layer over `x [B, T, in]` from the zero state. `mask [B, T]` (1 real, 0 pad)
    /// freezes the state on padded steps. `reverse` reads time backwards; outputs `[B, T, H]`
    /// are returned in the original time order ([`gnmt_ops::lstm::lstm_layer`]).
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>, reverse: bool) -> Result<Tensor> {
        lstm_layer(
            x,
            &self.weights(),
            mask,
            reverse,
            self.kernels,
            self.packs()?,
        )
    }

    /// [`Lstm::forward`] through the composite reference, one step at a time, also returning
    /// the final state.
    pub fn forward_stepwise(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        reverse: bool,
    ) -> Result<(Tensor, LstmState)> {
        reference::layer(x, &self.weights(), mask, reverse, Kernels::Reference)
    }
}
