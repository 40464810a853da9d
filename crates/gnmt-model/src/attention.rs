//! Additive attention (Bahdanau et al. 2015; GNMT's "feed-forward network with one hidden
//! layer"): `score(q, k) = v . tanh(W_q q + W_k k + b)`, softmax over the real source positions,
//! context = weighted sum of the encoder outputs.

use candle::{DType, Result, Tensor, WithDType, D};
use candle_nn::{Linear, VarBuilder};
use rayon::prelude::*;

use gnmt_kernels::attention::attend_row;
use gnmt_kernels::{Precision, Real};

use crate::dense::StepMatrix;
use crate::storage::tensor_slice;

/// The encoder side of attention, computed once per sentence batch.
#[derive(Debug, Clone)]
pub struct Memory {
    /// Top encoder outputs `[B, S, H]`: what the context averages.
    pub values: Tensor,
    /// `W_k values + b` `[B, S, A]`: the key half of the scorer, hoisted out of the decoder loop.
    pub keys: Tensor,
    /// `[B, 1, S]`: 0 on real source positions, a large negative number on padding.
    pub score_bias: Tensor,
    /// `[B, S]`: 1 on real positions, 0 on padding.
    pub mask: Tensor,
}

#[derive(Debug, Clone)]
pub struct Attention {
    query: Linear, // H -> A, no bias
    key: Linear,   // H -> A, with the scorer's bias
    score: Linear, // A -> 1, no bias (the `v` vector)
    /// Of the projections and the context product.
    precision: Precision,
}

/// Added to the scores of padded positions. Large enough that exp() underflows to exactly 0.
const MASKED_SCORE: f64 = -1e9;

impl Attention {
    pub fn new(hidden: usize, attention: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            query: candle_nn::linear_no_bias(hidden, attention, vb.pp("query"))?,
            key: candle_nn::linear(hidden, attention, vb.pp("key"))?,
            score: candle_nn::linear_no_bias(attention, 1, vb.pp("score"))?,
            precision: Precision::F32,
        })
    }

    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }

    /// Prepares the encoder outputs `[B, S, H]` with their mask `[B, S]` for attention.
    pub fn memory(&self, values: &Tensor, mask: &Tensor) -> Result<Memory> {
        // Beam search reorders the memory by rows, which needs contiguous tensors.
        let values = values.contiguous()?;
        let keys =
            crate::dense::linear(&values, self.key.weight(), self.key.bias(), self.precision)?;
        let score_bias = ((mask - 1.0)? * -MASKED_SCORE)?.unsqueeze(1)?;
        Ok(Memory {
            values,
            keys,
            score_bias,
            mask: mask.clone(),
        })
    }

    /// Queries `[B, T, H]` -> (context `[B, T, H]`, weights `[B, T, S]`).
    pub fn forward(&self, queries: &Tensor, memory: &Memory) -> Result<(Tensor, Tensor)> {
        let q = crate::dense::linear(queries, self.query.weight(), None, self.precision)?;
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
        let v = self.score.weight().squeeze(0)?;
        match q.dtype() {
            DType::F32 => attend_rows::<f32>(&q, &v, memory, memory_rows),
            DType::F64 => attend_rows::<f64>(&q, &v, memory, memory_rows),
            other => candle::bail!("attention step: no kernel for {other:?}"),
        }
    }

    /// Projected queries `[B, T, A]` -> (context, weights).
    fn attend(&self, q: &Tensor, memory: &Memory) -> Result<(Tensor, Tensor)> {
        let v = self.score.weight().squeeze(0)?; // [A]
        let scores = crate::additive::additive_scores(q, &memory.keys, &v)?; // [B, T, S]
        let scores = scores.broadcast_add(&memory.score_bias)?;
        let weights = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let context = crate::dense::batched_matmul(&weights, &memory.values, self.precision)?;
        Ok((context, weights))
    }

    /// One query per row `[B, H]` -> (context `[B, H]`, weights `[B, S]`).
    pub fn step(&self, query: &Tensor, memory: &Memory) -> Result<(Tensor, Tensor)> {
        let (c, w) = self.forward(&query.unsqueeze(1)?, memory)?;
        Ok((c.squeeze(1)?, w.squeeze(1)?))
    }
}

/// Decoding's attention for projected queries `q [B, A]` with `v [A]`: (context `[B, H]`,
/// weights `[B, S]`), one fused pass per row reading the memory in place: row `r` attends
/// over memory row `memory_rows[r]` (row `r` without a map). Unlike candle's
/// softmax and batched matmul, whose sums are split into lanes by the padded source length,
/// every sum here runs over the row's real positions in order, so a sentence translates to the
/// same bits whatever batch it is in.
fn attend_rows<T: Real + WithDType>(
    q: &Tensor,
    v: &Tensor,
    memory: &Memory,
    memory_rows: Option<&[u32]>,
) -> Result<(Tensor, Tensor)> {
    let (b, a) = q.dims2()?;
    let (bv, s, h) = memory.values.dims3()?;
    let rows_fit = match memory_rows {
        Some(map) => map.len() == b && map.iter().all(|&m| (m as usize) < bv),
        None => b == bv,
    };
    if !rows_fit || memory.keys.dims3()? != (bv, s, a) || memory.mask.dims2()? != (bv, s) {
        candle::bail!(
            "attention step: queries {:?} do not fit the memory {:?}",
            q.shape(),
            memory.values.shape()
        )
    }
    let (q, v) = (q.contiguous()?, v.contiguous()?);
    let (keys, values, mask) = (
        memory.keys.contiguous()?,
        memory.values.contiguous()?,
        memory.mask.contiguous()?,
    );
    let guards = [&q, &v, &keys, &values, &mask].map(|t| t.storage_and_layout());
    let [q, v, keys, values, mask] =
        [0, 1, 2, 3, 4].map(|i| tensor_slice::<T>(&guards[i].0, guards[i].1, "attention step"));
    let (q, v, keys, values, mask) = (q?, v?, keys?, values?, mask?);
    let mut weights = vec![T::default(); b * s];
    let mut context = vec![T::default(); b * h];
    weights
        .par_chunks_mut(s.max(1))
        .zip(context.par_chunks_mut(h.max(1)))
        .enumerate()
        .for_each(|(r, (w, c))| {
            let m = memory_rows.map_or(r, |map| map[r] as usize);
            attend_row(
                &q[r * a..][..a],
                &keys[m * s * a..][..s * a],
                v,
                &mask[m * s..][..s],
                &values[m * s * h..][..s * h],
                w,
                c,
            )
        });
    let device = memory.values.device();
    Ok((
        Tensor::from_vec(context, (b, h), device)?,
        Tensor::from_vec(weights, (b, s), device)?,
    ))
}
