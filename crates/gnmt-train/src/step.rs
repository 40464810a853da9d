//! One training update, in the three phases `gnmt train` runs and `gnmt bench train` times:
//! the batch's loss ([`forward`]), its gradients and their norms ([`backward`]), then clipping
//! and the optimiser's step ([`update`]). The trainer adds what a benchmark leaves out: data,
//! skipping non-finite batches, logging, validation and checkpoints.

use candle::backprop::GradStore;
use gnmt_model::{Dropout, Gnmt, PairBatch};

use crate::config::OptimConfig;
use crate::grads::GradStats;
use crate::loss::{batch_loss, BatchLoss};
use crate::optim::Optimizer;
use crate::schedule::Rule;
use crate::Result;

/// The label-smoothed loss of `batch` (smoothing `eps`), with dropout when training.
pub fn forward(
    model: &Gnmt,
    batch: &PairBatch,
    eps: f64,
    dropout: Option<&mut Dropout>,
) -> Result<BatchLoss> {
    Ok(batch_loss(model, batch, eps, dropout)?)
}

/// A batch's loss and the gradients of its mean per token.
pub struct Gradients {
    pub loss: BatchLoss,
    /// The mean loss per real target token.
    pub mean_loss: f64,
    pub grads: GradStore,
    /// Their global and per-layer norms.
    pub stats: GradStats,
}

impl Gradients {
    /// Whether the loss and every gradient are finite: an update from anything else would
    /// corrupt the weights.
    pub fn is_finite(&self) -> bool {
        self.mean_loss.is_finite() && self.stats.is_finite()
    }
}

/// The gradients of `loss`'s mean for the parameters `optimizer` updates.
pub fn backward(loss: BatchLoss, optimizer: &Optimizer) -> Result<Gradients> {
    let mean = loss.mean()?;
    let mean_loss = mean.to_scalar::<f32>()? as f64;
    let grads = gnmt_model::param_grads::backward(&mean)?;
    let stats = GradStats::measure(&grads, optimizer.vars())?;
    Ok(Gradients {
        loss,
        mean_loss,
        grads,
        stats,
    })
}

/// Clips the gradients to a global norm of `optim.clip_norm` and applies the optimiser's step
/// at learning rate `lr` with `rule`.
pub fn update(
    optimizer: &mut Optimizer,
    g: &Gradients,
    lr: f64,
    rule: Rule,
    optim: &OptimConfig,
) -> Result<()> {
    optimizer.step(
        &g.grads,
        lr,
        rule,
        clip_scale(&g.stats, optim.clip_norm),
        optim,
    )
}

/// The factor that brings the gradients' global norm down to `clip_norm`, or 1 when it is
/// not above it.
fn clip_scale(stats: &GradStats, clip_norm: f64) -> f64 {
    if stats.total_norm > clip_norm {
        clip_norm / stats.total_norm
    } else {
        1.0
    }
}
