//! The GNMT network on candle (embeddings, encoder, attention, decoder: [`Gnmt`]), built from
//! the operations of [`gnmt_ops`], and the model-folder checkpoint format every other crate
//! shares.
//!
//! This crate deals in token ids and tensors only: no text, no tokenizer. The inference API
//! keeps no hidden state: [`Gnmt::encode`], [`Gnmt::start_state`], [`Gnmt::step`] and
//! [`DecoderState::reorder`] are all beam search needs; training uses the teacher-forced
//! [`Gnmt::forward`].
//!
//! ```
//! use candle::{DType, Device, Tensor};
//! use gnmt_model::{init_model, mask_from_lengths, ModelConfig};
//!
//! let cfg = ModelConfig::tiny();
//! let (model, _params) = init_model(&cfg, 42, 0.04, DType::F32, &Device::Cpu)?;
//! let src = Tensor::new(&[[5u32, 6, 7, 3], [8, 3, 0, 0]], &Device::Cpu)?;
//! let mask = mask_from_lengths(&[4, 2], 4, DType::F32, &Device::Cpu)?;
//! let encoded = model.encode(&src, &mask)?;
//! let state = model.start_state(&encoded)?;
//! let (log_probs, attention, _next) = model.step(&Tensor::new(&[2u32, 2], &Device::Cpu)?, &state)?;
//! assert_eq!(log_probs.dims(), &[2, cfg.vocab_size]);
//! assert_eq!(attention.dims(), &[2, 4]);
//! # Ok::<(), candle::Error>(())
//! ```

pub mod attention;
pub mod checkpoint;
pub mod config;
pub mod decoder;
pub mod device_check;
pub mod encoder;
pub mod lstm;
pub mod memory;
mod model;
pub mod params;
pub mod quantized;

pub use config::{AttentionQuery, ModelConfig, TieEmbeddings};
pub use decoder::{DecoderState, DecodingWeights, OutputColumns};
pub use gnmt_kernels::softmax::log_softmax_row;
pub use gnmt_kernels::top_tokens::{top_scores, top_tokens, TopTokens};
pub use gnmt_ops::{param_grads, Dropout, KernelChoice, Kernels, Precision};
pub use model::{
    init_model, init_varmap, mask_from_lengths, parameter_count, parameter_specs, EncoderOutput,
    Gnmt, PairBatch,
};
pub use params::ParamSpec;
