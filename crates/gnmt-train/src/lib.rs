//! Training GNMT models. So far: the training objective ([`loss`]); the loop, optimiser,
//! validation and resumable state follow with the training work.

pub mod loss;

pub use loss::{label_smoothed_nll, BatchLoss};
