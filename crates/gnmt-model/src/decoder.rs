//! The GNMT decoder: LSTM layers with additive attention from the bottom layer over the top
//! encoder outputs, the context fed to every layer, residual connections from layer 3 up that
//! add only the layer's own input (not the context), and an output projection.

use std::sync::Arc;

use candle::{Result, Tensor};
use candle_nn::{Linear, Module, VarBuilder};

use gnmt_ops::dropout::{self, Dropout, Side};
use gnmt_ops::embedding::TokenEmbedding;
use gnmt_ops::step_matrix::StepMatrix;
use gnmt_ops::Kernels;

use crate::attention::{Attention, Memory};
use crate::config::{AttentionQuery, ModelConfig};
use crate::lstm::{Lstm, LstmState, StepWeights};

#[derive(Debug, Clone)]
pub struct Decoder {
    embedding: TokenEmbedding,
    /// `layers[0]` is the bottom layer (its output is the attention query).
    layers: Vec<Lstm>,
    residual: Vec<bool>,
    attention: Attention,
    output: Linear,
    query: AttentionQuery,
    /// Of the embedding, the dropout, the concatenations and the decoding weights (each
    /// layer has its own).
    kernels: Kernels,
}

/// Everything the decoder carries from one step to the next. A value: beam search reorders
/// it with [`DecoderState::reorder`] and nothing is hidden inside the model.
#[derive(Debug, Clone)]
pub struct DecoderState {
    pub layers: Vec<LstmState>,
    /// The source memory, one row per sentence as encoded.
    pub memory: Memory,
    /// The memory row each decoder row attends over (`None`: row `r` over row `r`). Beam
    /// search reorders rows every step; following them with a map instead of copying the
    /// memory saves a copy of every hypothesis' source (megabytes a step), and the beams of a
    /// sentence read one memory row, in cache.
    memory_rows: Option<Arc<[u32]>>,
    /// The decoder's weights laid out for stepping.
    weights: DecodingWeights,
}

/// The decoder's weights laid out for the small per-step products of decoding: transposed
/// into contiguous copies (see [`StepWeights`]), and packed for the bf16 kernel when that
/// precision is on. Made once per model by a translator ([`Decoder::decoding_weights`]) and
/// shared by every batch: laying an 8,000-word output layer out per batch, let alone per
/// step, is a large share of decoding.
/// A value tied to the weights it was made from: remake it after the weights change.
#[derive(Debug, Clone)]
pub struct DecodingWeights(Arc<StepLayout>);

#[derive(Debug)]
struct StepLayout {
    layers: Vec<StepWeights>,
    query_t: StepMatrix,
    output_t: StepMatrix,
}

/// The output layer cut down to some target ids (a sentence's shortlist), laid out for
/// stepping. With the fused kernels every logit is computed exactly as by the whole layer
/// (each column's products are summed alone, in the same order): a shortlist changes which
/// tokens compete, never their logits.
#[derive(Debug)]
pub struct OutputColumns {
    ids: Vec<u32>,
    matrix: StepMatrix,
}

impl OutputColumns {
    /// The vocabulary ids of the columns, in column order.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}

impl DecoderState {
    /// Keeps batch rows `indices` (a `u32` tensor of row numbers), in that order; each keeps
    /// attending over its sentence's source memory.
    pub fn reorder(&self, indices: &Tensor) -> Result<Self> {
        let picked = indices.to_vec1::<u32>()?;
        let rows = self.batch_size();
        if let Some(&bad) = picked.iter().find(|&&i| i as usize >= rows) {
            candle::bail!("reorder: row {bad} of a batch of {rows}")
        }
        let memory_rows = picked
            .iter()
            .map(|&i| match &self.memory_rows {
                Some(map) => map[i as usize],
                None => i,
            })
            .collect();
        Ok(Self {
            layers: self
                .layers
                .iter()
                .map(|s| s.index_select(indices))
                .collect::<Result<_>>()?,
            memory: self.memory.clone(),
            memory_rows: Some(memory_rows),
            weights: self.weights.clone(),
        })
    }

    pub fn batch_size(&self) -> usize {
        match &self.memory_rows {
            Some(map) => map.len(),
            None => self.memory.values.dims()[0],
        }
    }
}

impl Decoder {
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let (e, h) = (cfg.embedding_dim, cfg.hidden_size);
        let embedding = TokenEmbedding::new(
            candle_nn::embedding(cfg.vocab_size, e, vb.pp("embedding"))?
                .embeddings()
                .clone(),
        )?;
        let lstm = vb.pp("lstm");
        let bottom_in = match cfg.attention_query {
            AttentionQuery::Current => e,
            AttentionQuery::Previous => e + h,
        };
        let layers = (0..cfg.decoder_layers)
            .map(|k| {
                Lstm::new(
                    if k == 0 { bottom_in } else { 2 * h },
                    h,
                    &format!("l{k}"),
                    &lstm,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let residual = (1..=cfg.decoder_layers)
            .map(|l| cfg.decoder_residual(l))
            .collect();
        let attention = Attention::new(h, cfg.attention_size, vb.pp("attention"))?;
        let output = match cfg.tie_embeddings.output() {
            // One matrix: its gradient is the sum of both uses' (collected per variable).
            true => Linear::new(
                embedding.table().clone(),
                Some(vb.pp("output").get(cfg.vocab_size, "bias")?),
            ),
            false => candle_nn::linear(h, cfg.vocab_size, vb.pp("output"))?,
        };
        Ok(Self {
            embedding,
            layers,
            residual,
            attention,
            output,
            query: cfg.attention_query,
            kernels: Kernels::default(),
        })
    }

    /// The embedding table `[V, E]` (the encoder's too when all embeddings are tied).
    pub fn embedding_table(&self) -> &Tensor {
        self.embedding.table()
    }

    pub fn set_kernels(&mut self, kernels: Kernels) {
        for layer in &mut self.layers {
            layer.set_kernels(kernels);
        }
        self.attention.set_kernels(kernels);
        self.kernels = kernels;
    }

    pub fn memory(&self, encoder_outputs: &Tensor, mask: &Tensor) -> Result<Memory> {
        self.attention.memory(encoder_outputs, mask)
    }

    /// The weights laid out for [`Decoder::step`], in this decoder's precision.
    pub fn decoding_weights(&self) -> Result<DecodingWeights> {
        Ok(DecodingWeights(Arc::new(StepLayout {
            layers: self
                .layers
                .iter()
                .map(Lstm::step_weights)
                .collect::<Result<_>>()?,
            query_t: StepMatrix::new(self.attention.query_weight_t()?, None, self.kernels)?,
            output_t: StepMatrix::new(
                self.output.weight().t()?,
                Some(
                    self.output
                        .bias()
                        .expect("the output layer has a bias")
                        .clone(),
                ),
                self.kernels,
            )?,
        })))
    }

    /// The output layer's columns for `ids` (distinct, within the vocabulary), for decoding
    /// over a shortlist.
    pub fn output_columns(&self, ids: &[u32]) -> Result<OutputColumns> {
        let weight = self.output.weight();
        let vocab = weight.dims2()?.0;
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            candle::bail!("output columns: id {bad} is outside the vocabulary of {vocab}")
        }
        let index = Tensor::new(ids, weight.device())?;
        let bias = self
            .output
            .bias()
            .expect("the output layer has a bias")
            .index_select(&index, 0)?;
        let rows = weight.index_select(&index, 0)?;
        Ok(OutputColumns {
            ids: ids.to_vec(),
            matrix: StepMatrix::new(rows.t()?, Some(bias), self.kernels)?,
        })
    }

    /// The logits of `hidden [B, H]` (top-layer outputs from [`Decoder::step_top`]) over
    /// `columns`, as a row-major `[B, columns]` f32 vector.
    pub fn column_logits(&self, hidden: &Tensor, columns: &OutputColumns) -> Result<Vec<f32>> {
        let mut logits = Vec::new();
        columns.matrix.apply_into(hidden, &mut logits)?;
        Ok(logits)
    }

    /// The state before the first target token, stepping with `weights` (from
    /// [`Decoder::decoding_weights`] of this decoder).
    pub fn start_state(&self, memory: Memory, weights: DecodingWeights) -> Result<DecoderState> {
        let b = memory.values.dims()[0];
        let (dtype, device) = (memory.values.dtype(), memory.values.device().clone());
        let layers = self
            .layers
            .iter()
            .map(|l| LstmState::zeros(b, l.hidden_size(), dtype, &device))
            .collect::<Result<_>>()?;
        Ok(DecoderState {
            layers,
            memory,
            memory_rows: None,
            weights,
        })
    }

    /// Teacher-forced pass over the whole target: `tgt_in [B, T]` -> (logits `[B, T, V]`,
    /// attention `[B, T, S]`). Target padding needs no mask here: it only follows real tokens,
    /// and the loss ignores it.
    pub fn forward(
        &self,
        tgt_in: &Tensor,
        memory: &Memory,
        dropout: Option<&mut Dropout>,
    ) -> Result<(Tensor, Tensor)> {
        let (top, weights) = self.forward_top(tgt_in, memory, None, dropout)?;
        Ok((self.output.forward(&top)?, weights))
    }

    /// The output layer's weight `[V, H]` and bias `[V]`, for the fused softmax and loss.
    pub fn output_layer(&self) -> (&Tensor, &Tensor) {
        let bias = self.output.bias().expect("the output layer has a bias");
        (self.output.weight(), bias)
    }

    /// [`Decoder::forward`] up to the top layer's output `[B, T, H]` (after dropout), before
    /// the output projection; with the attention weights. With `tgt_mask [B, T]` (1 real, 0
    /// pad; padding after the real tokens) the LSTM layers skip the padded steps: the real
    /// positions come out the same, for less work.
    pub fn forward_top(
        &self,
        tgt_in: &Tensor,
        memory: &Memory,
        tgt_mask: Option<&Tensor>,
        mut dropout: Option<&mut Dropout>,
    ) -> Result<(Tensor, Tensor)> {
        let k = self.kernels;
        let emb = self.embedding.forward(tgt_in, k)?;
        let emb = dropout::maybe_words(&mut dropout, &emb, Side::Target, k)?;
        let (bottom, context, weights) = match self.query {
            AttentionQuery::Current => {
                let input = dropout::maybe(&mut dropout, &emb, k)?;
                let bottom = self.layers[0].forward(&input, tgt_mask, false)?;
                let (context, weights) = self.attention.forward(&bottom, memory)?;
                (bottom, context, weights)
            }
            AttentionQuery::Previous => {
                self.bottom_with_previous_query(&emb, memory, &mut dropout)?
            }
        };
        let mut x = bottom;
        for (layer, &residual) in self.layers.iter().zip(&self.residual).skip(1) {
            let input = dropout::maybe_cat(&mut dropout, &x, &context, k)?;
            let out = layer.forward(&input, tgt_mask, false)?;
            x = if residual { (out + &x)? } else { out };
        }
        Ok((dropout::maybe(&mut dropout, &x, k)?, weights))
    }

    /// The paper's bottom layer: at step t the query is the bottom output of step t-1, and the
    /// context is part of the bottom layer's input, so these two must advance together.
    fn bottom_with_previous_query(
        &self,
        emb: &Tensor,
        memory: &Memory,
        dropout: &mut Option<&mut Dropout>,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, t, _) = emb.dims3()?;
        let bottom = &self.layers[0];
        let mut state = LstmState::zeros(b, bottom.hidden_size(), emb.dtype(), emb.device())?;
        let (mut outs, mut contexts, mut weights) = (Vec::new(), Vec::new(), Vec::new());
        for s in 0..t {
            let (context, w) = self.attention.step(&state.h, memory)?;
            let input = Tensor::cat(&[&emb.narrow(1, s, 1)?.squeeze(1)?, &context], 1)?;
            let input = dropout::maybe(dropout, &input, self.kernels)?;
            state = bottom.step(&input, &state)?;
            outs.push(state.h.clone());
            contexts.push(context);
            weights.push(w);
        }
        Ok((
            Tensor::stack(&outs, 1)?,
            Tensor::stack(&contexts, 1)?,
            Tensor::stack(&weights, 1)?,
        ))
    }

    /// One decoding step: `tokens [B]` (u32) -> (logits `[B, V]`, attention `[B, S]`, state).
    pub fn step(
        &self,
        tokens: &Tensor,
        state: &DecoderState,
    ) -> Result<(Tensor, Tensor, DecoderState)> {
        let (top, weights, next) = self.step_top(tokens, state)?;
        let w = &state.weights.0;
        Ok((w.output_t.apply(&top)?, weights, next))
    }

    /// [`Decoder::step`] with the logits written into `logits` as a row-major `[B, V]` f32
    /// vector (a buffer reused across steps), for the caller that reads them once (the top-k
    /// of beam search) and need not make a tensor.
    pub fn step_logits(
        &self,
        tokens: &Tensor,
        state: &DecoderState,
        logits: &mut Vec<f32>,
    ) -> Result<(Tensor, DecoderState)> {
        let (top, weights, next) = self.step_top(tokens, state)?;
        let w = &state.weights.0;
        w.output_t.apply_into(&top, logits)?;
        Ok((weights, next))
    }

    /// [`Decoder::step_logits`] with the logits `[B, V]` left where they were computed (a
    /// GPU's memory): (logits, attention `[B, S]`, next state).
    pub fn step_logits_tensor(
        &self,
        tokens: &Tensor,
        state: &DecoderState,
    ) -> Result<(Tensor, Tensor, DecoderState)> {
        let (top, weights, next) = self.step_top(tokens, state)?;
        Ok((state.weights.0.output_t.apply(&top)?, weights, next))
    }

    /// One step up to the top layer's output `[B, H]`, before the output projection: (that
    /// output, attention `[B, S]`, next state).
    pub fn step_top(
        &self,
        tokens: &Tensor,
        state: &DecoderState,
    ) -> Result<(Tensor, Tensor, DecoderState)> {
        let w = &state.weights.0;
        let attend = |query: &Tensor| {
            self.attention.step_projected(
                &w.query_t,
                query,
                &state.memory,
                state.memory_rows.as_deref(),
            )
        };
        let emb = self.embedding.forward(tokens, self.kernels)?;
        let mut layers = Vec::with_capacity(self.layers.len());
        let (bottom, context, weights) = match self.query {
            AttentionQuery::Current => {
                let s = w.layers[0].step(&emb, &state.layers[0])?;
                let (context, weights) = attend(&s.h)?;
                (s, context, weights)
            }
            AttentionQuery::Previous => {
                let (context, weights) = attend(&state.layers[0].h)?;
                let s = w.layers[0].step_parts(&[&emb, &context], &state.layers[0])?;
                (s, context, weights)
            }
        };
        let mut x = bottom.h.clone();
        layers.push(bottom);
        for ((layer, &residual), prev) in w
            .layers
            .iter()
            .zip(&self.residual)
            .zip(&state.layers)
            .skip(1)
        {
            let s = layer.step_parts(&[&x, &context], prev)?;
            x = if residual { (&s.h + &x)? } else { s.h.clone() };
            layers.push(s);
        }
        Ok((
            x,
            weights,
            DecoderState {
                layers,
                memory: state.memory.clone(),
                memory_rows: state.memory_rows.clone(),
                weights: state.weights.clone(),
            },
        ))
    }
}
