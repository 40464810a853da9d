//! GNMT (Wu et al. 2016, "Google's Neural Machine Translation System", arXiv:1609.08144):
//! the encoder, the attention decoder, and the inference API beam search drives.

use std::cell::RefCell;

use candle::{bail, DType, Device, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};
use gnmt_kernels::top_tokens::{top_tokens, TopTokens};
use gnmt_ops::softmax_loss::{log_softmax_rows, token_losses};
use gnmt_ops::{Dropout, Kernels};

use crate::attention::Memory;
use crate::config::ModelConfig;
use crate::decoder::{Decoder, DecoderState, DecodingWeights, OutputColumns};
use crate::encoder::Encoder;
use crate::params::{self, ParamSpec};

/// The encoded source batch, ready for attention.
#[derive(Debug, Clone)]
pub struct EncoderOutput {
    pub memory: Memory,
}

impl EncoderOutput {
    /// Top encoder outputs `[B, S, H]`.
    pub fn outputs(&self) -> &Tensor {
        &self.memory.values
    }
}

#[derive(Debug, Clone)]
pub struct Gnmt {
    config: ModelConfig,
    encoder: Encoder,
    decoder: Decoder,
    /// Of every operation, in training and in decoding.
    kernels: Kernels,
}

impl Gnmt {
    /// Builds the model from `vb` (a `VarMap` for training, checkpoint tensors for inference).
    pub fn new(config: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        if let Err(e) = config.validate() {
            bail!("invalid model config: {e}")
        }
        let decoder = Decoder::new(config, vb.pp("decoder"))?;
        let shared = config
            .tie_embeddings
            .encoder()
            .then(|| decoder.embedding_table());
        Ok(Self {
            config: config.clone(),
            encoder: Encoder::new(config, vb.pp("encoder"), shared)?,
            decoder,
            kernels: Kernels::default(),
        })
    }

    /// This model running on `kernels` (fused, f32 products after [`Gnmt::new`]). Decoding
    /// weights made before keep the kernels they were made for.
    pub fn with_kernels(mut self, kernels: Kernels) -> Self {
        self.encoder.set_kernels(kernels);
        self.decoder.set_kernels(kernels);
        self.kernels = kernels;
        self
    }

    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Encodes `src [B, S]` (u32 ids) with `src_mask [B, S]` (1 real, 0 pad, float).
    pub fn encode(&self, src: &Tensor, src_mask: &Tensor) -> Result<EncoderOutput> {
        self.encode_with(src, src_mask, None)
    }

    fn encode_with(
        &self,
        src: &Tensor,
        src_mask: &Tensor,
        dropout: Option<&mut Dropout>,
    ) -> Result<EncoderOutput> {
        check_ids(src, "src")?;
        if src.dims() != src_mask.dims() {
            bail!(
                "src {:?} and src_mask {:?} differ in shape",
                src.dims(),
                src_mask.dims()
            )
        }
        let outputs = self.encoder.forward(src, src_mask, dropout)?;
        Ok(EncoderOutput {
            memory: self.decoder.memory(&outputs, src_mask)?,
        })
    }

    /// The decoder state before the first target token. Lays the decoder's weights out for
    /// stepping each time; a caller decoding many batches with fixed weights makes them once
    /// with [`Gnmt::decoding_weights`] and uses [`Gnmt::start_state_with`].
    pub fn start_state(&self, encoded: &EncoderOutput) -> Result<DecoderState> {
        self.start_state_with(encoded, &self.decoding_weights()?)
    }

    /// The decoder's weights laid out for [`Gnmt::step`] for this model's kernels.
    /// Valid while this model's weights stay as they are (not across training updates).
    pub fn decoding_weights(&self) -> Result<DecodingWeights> {
        self.decoder.decoding_weights()
    }

    /// [`Gnmt::start_state`] with weights from [`Gnmt::decoding_weights`] of this model.
    pub fn start_state_with(
        &self,
        encoded: &EncoderOutput,
        weights: &DecodingWeights,
    ) -> Result<DecoderState> {
        self.decoder
            .start_state(encoded.memory.clone(), weights.clone())
    }

    /// One decoding step for `tokens [B]` (u32, the previous output or `<s>`):
    /// (log-probabilities `[B, V]`, attention weights `[B, S]`, next state).
    pub fn step(
        &self,
        tokens: &Tensor,
        state: &DecoderState,
    ) -> Result<(Tensor, Tensor, DecoderState)> {
        check_ids(tokens, "tokens")?;
        let (logits, attention, next) = self.decoder.step(tokens, state)?;
        Ok((log_softmax_rows(&logits, self.kernels)?, attention, next))
    }

    /// One decoding step that keeps only the `k` most probable next tokens of each row, with
    /// their log-probabilities (bit for bit those of [`Gnmt::step`]): what beam search and
    /// greedy search need, without writing out the full `[B, V]` log-softmax.
    pub fn step_top_tokens(
        &self,
        tokens: &Tensor,
        state: &DecoderState,
        k: usize,
    ) -> Result<(TopTokens, Tensor, DecoderState)> {
        check_ids(tokens, "tokens")?;
        if self.kernels.cuda_on(tokens.device()) {
            // On a GPU with the fused kernels: ranked there, rows x k values copied back.
            let (logits, attention, next) = self.decoder.step_logits_tensor(tokens, state)?;
            let top = match gnmt_ops::top_tokens::on_device(&logits, k, true)? {
                Some(top) => top,
                None => top_tokens(&logits.flatten_all()?.to_vec1()?, self.config.vocab_size, k),
            };
            return Ok((top, attention, next));
        }
        let run = |logits: &mut Vec<f32>| {
            let (attention, next) = self.decoder.step_logits(tokens, state, logits)?;
            Ok((
                top_tokens(logits, self.config.vocab_size, k),
                attention,
                next,
            ))
        };
        // One logits buffer per thread, reused from step to step. A thread that is already
        // inside this function (rayon can run another batch's step on a thread waiting for
        // its parallel product) takes a fresh one.
        thread_local! {
            static LOGITS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
        }
        LOGITS.with(|cell| match cell.try_borrow_mut() {
            Ok(mut logits) => run(&mut logits),
            Err(_) => run(&mut Vec::new()),
        })
    }

    /// The output layer's columns for `ids` (distinct vocabulary ids), for decoding over
    /// shortlists with [`Gnmt::step_column_logits`].
    pub fn output_columns(&self, ids: &[u32]) -> Result<OutputColumns> {
        self.decoder.output_columns(ids)
    }

    /// One decoding step whose logits cover only `columns` (a batch's shortlists): (logits,
    /// row-major `[B, columns]`; attention `[B, S]`; next state). Each logit is the full
    /// layer's (see [`OutputColumns`]); normalising them is the caller's business.
    pub fn step_column_logits(
        &self,
        tokens: &Tensor,
        state: &DecoderState,
        columns: &OutputColumns,
    ) -> Result<(Vec<f32>, Tensor, DecoderState)> {
        check_ids(tokens, "tokens")?;
        let (hidden, attention, next) = self.decoder.step_top(tokens, state)?;
        let logits = self.decoder.column_logits(&hidden, columns)?;
        Ok((logits, attention, next))
    }

    /// Teacher-forced training pass: (logits `[B, T, V]`, attention `[B, T, S]`) for decoder
    /// inputs `tgt_in [B, T]`. Pass a [`Dropout`] when training.
    pub fn forward(
        &self,
        src: &Tensor,
        src_mask: &Tensor,
        tgt_in: &Tensor,
        mut dropout: Option<&mut Dropout>,
    ) -> Result<(Tensor, Tensor)> {
        check_ids(tgt_in, "tgt_in")?;
        let encoded = self.encode_with(src, src_mask, dropout.as_deref_mut())?;
        self.decoder.forward(tgt_in, &encoded.memory, dropout)
    }
}

impl Gnmt {
    /// The training loss per target token without materialising log-probabilities: `[B * T, 2]`
    /// holding the label-smoothed cross-entropy (smoothing `eps`) and the plain negative
    /// log-likelihood of `batch.tgt_out`, 0 where `batch.tgt_mask` is 0. The output softmax
    /// and the loss are one operation ([`gnmt_ops::softmax_loss`]).
    pub fn token_losses(
        &self,
        batch: &PairBatch,
        eps: f64,
        mut dropout: Option<&mut Dropout>,
    ) -> Result<Tensor> {
        let PairBatch {
            src,
            src_mask,
            tgt_in,
            tgt_out,
            tgt_mask,
        } = batch;
        check_ids(tgt_in, "tgt_in")?;
        check_ids(tgt_out, "tgt_out")?;
        if tgt_in.dims() != tgt_out.dims() || tgt_in.dims() != tgt_mask.dims() {
            bail!(
                "tgt_in {:?}, tgt_out {:?} and tgt_mask {:?} differ in shape",
                tgt_in.dims(),
                tgt_out.dims(),
                tgt_mask.dims()
            )
        }
        let encoded = self.encode_with(src, src_mask, dropout.as_deref_mut())?;
        let (top, _) =
            self.decoder
                .forward_top(tgt_in, &encoded.memory, Some(tgt_mask), dropout)?;
        let (b, t, h) = top.dims3()?;
        let (weight, bias) = self.decoder.output_layer();
        token_losses(
            &top.reshape((b * t, h))?,
            weight,
            bias,
            &tgt_out.flatten_all()?,
            &tgt_mask.flatten_all()?,
            eps,
            self.kernels,
        )
    }
}

/// A batch of sentence pairs as training reads it: `src [B, S]`, and `tgt_in` (`<s>` first)
/// and `tgt_out` (`</s>` last) `[B, T]`, all u32 ids, with float masks of their shapes (1 on
/// real tokens, 0 on padding).
#[derive(Debug, Clone)]
pub struct PairBatch {
    pub src: Tensor,
    pub src_mask: Tensor,
    pub tgt_in: Tensor,
    pub tgt_out: Tensor,
    pub tgt_mask: Tensor,
}

fn check_ids(t: &Tensor, name: &str) -> Result<()> {
    if t.dtype() != DType::U32 {
        bail!("{name} must hold u32 token ids, got {:?}", t.dtype())
    }
    Ok(())
}

/// Every parameter of a model with this configuration, sorted by name.
pub fn parameter_specs(config: &ModelConfig) -> Result<Vec<ParamSpec>> {
    params::record(|vb| Gnmt::new(config, vb).map(drop))
}

/// Total number of parameters.
pub fn parameter_count(config: &ModelConfig) -> Result<usize> {
    Ok(parameter_specs(config)?
        .iter()
        .map(ParamSpec::elem_count)
        .sum())
}

/// A `VarMap` holding every parameter, drawn uniformly from `[-scale, scale]` by a ChaCha
/// generator seeded with `seed`, parameter by parameter in name order. The same seed gives
/// bit-identical parameters on every machine and thread count.
pub fn init_varmap(
    config: &ModelConfig,
    seed: u64,
    scale: f64,
    dtype: DType,
    device: &Device,
) -> Result<VarMap> {
    params::seeded_varmap(&parameter_specs(config)?, seed, scale, dtype, device)
}

/// A freshly initialised model and the `VarMap` that owns its parameters (for training).
pub fn init_model(
    config: &ModelConfig,
    seed: u64,
    scale: f64,
    dtype: DType,
    device: &Device,
) -> Result<(Gnmt, VarMap)> {
    let varmap = init_varmap(config, seed, scale, dtype, device)?;
    let model = Gnmt::new(config, VarBuilder::from_varmap(&varmap, dtype, device))?;
    Ok((model, varmap))
}

/// `[B, width]` float mask with 1 on the first `lengths[b]` positions of row `b`.
pub fn mask_from_lengths(
    lengths: &[usize],
    width: usize,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let data: Vec<f32> = lengths
        .iter()
        .flat_map(|&len| (0..width).map(move |j| if j < len { 1.0 } else { 0.0 }))
        .collect();
    Tensor::from_vec(data, (lengths.len(), width), device)?.to_dtype(dtype)
}
