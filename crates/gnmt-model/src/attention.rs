//! Additive attention (Bahdanau et al. 2015; GNMT's "feed-forward network with one hidden
//! layer"): `score(q, k) = v . tanh(W_q q + W_k k + b)`, softmax over the real source positions,
//! context = weighted sum of the encoder outputs.

use candle::{Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use gnmt_ops::additive::additive_scores;
use gnmt_ops::attention_step::{self, Source};
use gnmt_ops::attention_weights::attention_weights;
use gnmt_ops::matmul::{batched_matmul, linear};
use gnmt_ops::step_matrix::StepMatrix;
use gnmt_ops::Kernels;

/// The encoder side of attention, computed once per sentence batch.
#[derive(Debug, Clone)]
pub struct Memory {
    /// Top encoder outputs `[B, S, H]`: what the context averages.
    pub values: Tensor,
    /// `W_k values + b` `[B, S, A]`: the key half of the scorer, hoisted out of the decoder loop.
    pub keys: Tensor,
    /// `[B, S]`: 1 on real positions, 0 on padding.
    pub mask: Tensor,
}

impl Memory {
    /// Rows `rows` of the memory, in that order (a copy): what the reference attends over when
    /// beam search follows its hypotheses with a row map.
    fn select_rows(&self, rows: &[u32]) -> Result<Self> {
        let rows = Tensor::from_slice(rows, rows.len(), self.values.device())?;
        Ok(Self {
            values: self.values.index_select(&rows, 0)?,
            keys: self.keys.index_select(&rows, 0)?,
            mask: self.mask.index_select(&rows, 0)?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct Attention {
    query: Linear, // H -> A, no bias
    key: Linear,   // H -> A, with the scorer's bias
    score: Linear, // A -> 1, no bias (the `v` vector)
    /// Of the scorer, the weights, the projections and the context product.
    kernels: Kernels,
}

impl Attention {
    pub fn new(hidden: usize, attention: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            query: candle_nn::linear_no_bias(hidden, attention, vb.pp("query"))?,
            key: candle_nn::linear(hidden, attention, vb.pp("key"))?,
            score: candle_nn::linear_no_bias(attention, 1, vb.pp("score"))?,
            kernels: Kernels::default(),
        })
    }

    pub fn set_kernels(&mut self, kernels: Kernels) {
        self.kernels = kernels;
    }

    /// Prepares the encoder outputs `[B, S, H]` with their mask `[B, S]` for attention.
    pub fn memory(&self, values: &Tensor, mask: &Tensor) -> Result<Memory> {
        // Beam search reorders the memory by rows, which needs contiguous tensors.
        let values = values.contiguous()?;
        let keys = linear(&values, self.key.weight(), self.key.bias(), self.kernels)?;
        Ok(Memory {
            values,
            keys,
            mask: mask.clone(),
        })
    }

    /// Queries `[B, T, H]` -> (context `[B, T, H]`, weights `[B, T, S]`).
    pub fn forward(&self, queries: &Tensor, memory: &Memory) -> Result<(Tensor, Tensor)> {
        let q = linear(queries, self.query.weight(), None, self.kernels)?;
        self.attend(&q, memory)
    }

    /// The query projection's weight transposed and contiguous `[H, A]`, for
    /// [`Attention::step_projected`].
    pub fn query_weight_t(&self) -> Result<Tensor> {
        self.query.weight().t()?.contiguous()
    }

    /// [`Attention::step`] with the query projection's transposed weight given
    /// ([`Attention::query_weight_t`]); row `r` attends over memory row `memory_rows[r]`
    /// (row `r` when `None`).
    pub fn step_projected(
        &self,
        query_weight_t: &StepMatrix,
        query: &Tensor,
        memory: &Memory,
        memory_rows: Option<&[u32]>,
    ) -> Result<(Tensor, Tensor)> {
        let q = query_weight_t.apply(query)?;
        if !attention_step::runs_fused(&q, self.kernels) {
            let (context, weights) = match memory_rows {
                None => self.attend(&q.unsqueeze(1)?, memory)?,
                Some(rows) => self.attend(&q.unsqueeze(1)?, &memory.select_rows(rows)?)?,
            };
            return Ok((context.squeeze(1)?, weights.squeeze(1)?));
        }
        let v = self.score.weight().squeeze(0)?;
        let source = Source {
            keys: &memory.keys,
            values: &memory.values,
            mask: &memory.mask,
        };
        attention_step::attend(&q, &v, source, memory_rows)
    }

    /// Projected queries `[B, T, A]` -> (context, weights).
    fn attend(&self, q: &Tensor, memory: &Memory) -> Result<(Tensor, Tensor)> {
        let v = self.score.weight().squeeze(0)?; // [A]
        let scores = additive_scores(q, &memory.keys, &v, self.kernels)?; // [B, T, S]
        let weights = attention_weights(&scores, &memory.mask, self.kernels)?;
        let context = batched_matmul(&weights, &memory.values, self.kernels)?;
        Ok((context, weights))
    }

    /// One query per row `[B, H]` -> (context `[B, H]`, weights `[B, S]`).
    pub fn step(&self, query: &Tensor, memory: &Memory) -> Result<(Tensor, Tensor)> {
        let (c, w) = self.forward(&query.unsqueeze(1)?, memory)?;
        Ok((c.squeeze(1)?, w.squeeze(1)?))
    }
}
