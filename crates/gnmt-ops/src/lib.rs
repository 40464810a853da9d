//! GNMT's operations on candle tensors: each fused operation (its forward and backward
//! passes on [`gnmt_kernels`], CPU) beside its composite reference made of plain candle
//! operations. [`Kernels`] picks one of the two for a whole model; the reference runs on any
//! candle device and is the baseline every backend is checked against.
//!
//! A fused op's backward pass is itself made of ops: its `bwd` applies backward ops (or plain
//! candle ops) to tensors and never reads storage, and what it keeps from the forward pass
//! are tensors. So a backend adds kernels to the ops, not a second autograd.

pub mod adam;
pub mod additive;
pub mod attention_step;
pub mod attention_weights;
pub mod concat;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod device_check;
mod dispatch;
pub mod dropout;
pub mod embedding;
mod kernels;
pub mod lstm;
pub mod matmul;
pub mod param_grads;
mod row_losses;
mod rows;
pub mod softmax_loss;
pub mod step_matrix;
mod storage;
mod stream_dropout;
pub mod tf32;
pub mod top_tokens;

pub use dispatch::Float;
pub use dropout::Dropout;
pub use gnmt_kernels::Precision;
pub use kernels::{KernelChoice, Kernels};
