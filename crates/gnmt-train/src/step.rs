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
use crate::sync;
use crate::Result;
use gnmt_dist::Group;

/// The label-smoothed loss of `batch` (smoothing `eps`), with dropout when training.
pub fn forward(
    model: &Gnmt,
    batch: &PairBatch,
    eps: f64,
    dropout: Option<&mut Dropout>,
) -> Result<BatchLoss> {
    Ok(batch_loss(model, batch, eps, dropout)?)
}

/// An update's gradients: of the mean loss per real target token over all its batches (and,
/// in a job of several processes, over every rank's share of them).
pub struct Gradients {
    /// Real target tokens the mean is over.
    pub tokens: usize,
    /// The mean label-smoothed loss per real target token.
    pub mean_loss: f64,
    /// Plain negative log-likelihood summed over those tokens (for perplexity).
    pub nll_sum: f64,
    pub grads: GradStore,
    /// Their global and per-layer norms.
    pub stats: GradStats,
    /// Seconds spent summing them over the ranks of a job (0 for one process).
    pub reduce_secs: f64,
}

impl Gradients {
    /// Whether the loss and every gradient are finite: an update from anything else would
    /// corrupt the weights.
    pub fn is_finite(&self) -> bool {
        self.mean_loss.is_finite() && self.stats.is_finite()
    }
}

/// The gradients of one batch's mean loss for the parameters `optimizer` updates.
pub fn backward(loss: BatchLoss, optimizer: &Optimizer) -> Result<Gradients> {
    let mut sum = GradientSum::new(loss.tokens);
    sum.add(loss)?;
    sum.finish(optimizer, &Group::single())
}

/// Sums the gradients of an update's batches (Marian's `--optimizer-delay`, fairseq's
/// `--update-freq`; in a job, of this rank's shares of them), each batch's loss divided by the
/// tokens of the whole update: the sum is the gradient of the update's mean loss per token
/// however the tokens were split into batches and ranks.
pub struct GradientSum {
    /// Real target tokens of the whole update (every batch, every rank).
    total_tokens: usize,
    grads: Option<GradStore>,
    mean_loss: f64,
    nll_sum: f64,
}

impl GradientSum {
    pub fn new(total_tokens: usize) -> Self {
        Self {
            total_tokens,
            grads: None,
            mean_loss: 0.0,
            nll_sum: 0.0,
        }
    }

    /// Adds the gradients of `loss / total_tokens`.
    pub fn add(&mut self, loss: BatchLoss) -> Result<()> {
        let share = loss
            .loss_sum
            .affine(1.0 / self.total_tokens.max(1) as f64, 0.0)?;
        self.mean_loss += share.to_dtype(candle::DType::F64)?.to_scalar::<f64>()?;
        self.nll_sum += loss.nll_sum;
        let grads = gnmt_model::param_grads::backward(&share)?;
        self.grads = Some(match self.grads.take() {
            None => grads,
            Some(mut sum) => {
                add_grads(&mut sum, &grads)?;
                sum
            }
        });
        Ok(())
    }

    /// The update's gradients: summed over the ranks of `group` (with the losses, in one
    /// all-reduce), then measured.
    pub fn finish(self, optimizer: &Optimizer, group: &Group) -> Result<Gradients> {
        let mut grads = match self.grads {
            Some(g) => g,
            // This rank had no share of the update's rows: it adds zeros.
            None => zero_grads(optimizer)?,
        };
        let mut losses = [self.mean_loss, self.nll_sum];
        let mut reduce_secs = 0.0;
        if group.is_distributed() {
            let start = std::time::Instant::now();
            sync::all_reduce(&mut grads, optimizer, &mut losses, group)?;
            reduce_secs = start.elapsed().as_secs_f64();
        }
        let stats = GradStats::measure(&grads, optimizer.vars())?;
        Ok(Gradients {
            tokens: self.total_tokens,
            mean_loss: losses[0],
            nll_sum: losses[1],
            grads,
            stats,
            reduce_secs,
        })
    }
}

/// `sum += more`, parameter by parameter.
fn add_grads(sum: &mut GradStore, more: &GradStore) -> Result<()> {
    let ids: Vec<_> = more.get_ids().copied().collect();
    for id in ids {
        let g = more.get_id(id).expect("listed");
        let total = match sum.get_id(id) {
            Some(s) => (s + g)?,
            None => g.clone(),
        };
        sum.insert_id(id, total);
    }
    Ok(())
}

/// A gradient store holding zeros for every parameter.
fn zero_grads(optimizer: &Optimizer) -> Result<GradStore> {
    let mut vars = optimizer.vars();
    let (_, first) = vars
        .next()
        .ok_or_else(|| crate::Error::Config("no parameters".into()))?;
    // The only public way to a GradStore: the backward pass of something.
    let mut grads = first.as_tensor().sum_all()?.affine(0.0, 0.0)?.backward()?;
    for (_, var) in optimizer.vars() {
        grads.insert(var, var.as_tensor().zeros_like()?);
    }
    Ok(grads)
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle::{DType, Device, Tensor};
    use gnmt_model::{init_model, mask_from_lengths, ModelConfig};

    /// A sentence pair's source and target ids.
    type Row<'a> = (&'a [u32], &'a [u32]);

    fn batch(rows: &[Row]) -> PairBatch {
        let dev = Device::Cpu;
        let sw = rows.iter().map(|r| r.0.len()).max().unwrap();
        let tw = rows.iter().map(|r| r.1.len() + 1).max().unwrap();
        let (mut src, mut tin, mut tout) = (vec![], vec![], vec![]);
        for (s, t) in rows {
            src.extend(s.iter().copied().chain(std::iter::repeat(0)).take(sw));
            tin.extend(
                [2].iter()
                    .chain(t.iter())
                    .copied()
                    .chain(std::iter::repeat(0))
                    .take(tw),
            );
            tout.extend(
                t.iter()
                    .copied()
                    .chain([3])
                    .chain(std::iter::repeat(0))
                    .take(tw),
            );
        }
        let n = rows.len();
        let lens = |f: &dyn Fn(&Row) -> usize| rows.iter().map(f).collect::<Vec<_>>();
        PairBatch {
            src: Tensor::from_vec(src, (n, sw), &dev).unwrap(),
            src_mask: mask_from_lengths(&lens(&|r| r.0.len()), sw, DType::F32, &dev).unwrap(),
            tgt_in: Tensor::from_vec(tin, (n, tw), &dev).unwrap(),
            tgt_out: Tensor::from_vec(tout, (n, tw), &dev).unwrap(),
            tgt_mask: mask_from_lengths(&lens(&|r| r.1.len() + 1), tw, DType::F32, &dev).unwrap(),
        }
    }

    fn max_abs(t: &Tensor) -> f32 {
        t.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Summing the gradients of a batch's parts (accumulation, or a job's ranks) gives the
    /// gradients of the whole batch's mean loss: uneven parts are weighted by their tokens.
    #[test]
    fn the_sum_over_parts_is_the_gradient_of_the_whole() {
        let (model, varmap) =
            init_model(&ModelConfig::tiny(), 5, 0.3, DType::F32, &Device::Cpu).unwrap();
        let optimizer = Optimizer::new(&varmap).unwrap();
        let rows: [Row; 3] = [
            (&[5, 6, 7, 3], &[9, 10, 11, 12]),
            (&[8, 9, 3], &[13]),
            (&[10, 3], &[14, 15]),
        ];
        let whole = backward(
            forward(&model, &batch(&rows), 0.1, None).unwrap(),
            &optimizer,
        )
        .unwrap();
        let mut sum = GradientSum::new(whole.tokens);
        for part in [&rows[..1], &rows[1..]] {
            sum.add(forward(&model, &batch(part), 0.1, None).unwrap())
                .unwrap();
        }
        let parts = sum.finish(&optimizer, &Group::single()).unwrap();
        assert_eq!(parts.tokens, 10);
        assert!((parts.mean_loss - whole.mean_loss).abs() < 1e-5 * whole.mean_loss);
        assert!((parts.nll_sum - whole.nll_sum).abs() < 1e-4);
        for (name, var) in optimizer.vars() {
            let a = whole.grads.get(var).unwrap();
            let b = parts.grads.get(var).unwrap();
            let diff = max_abs(&(a - b).unwrap());
            let scale = max_abs(a);
            assert!(
                diff <= 1e-5 * scale.max(1e-3),
                "{name}: {diff} (scale {scale})"
            );
        }
        // A rank with no share of an update adds zeros.
        let empty = GradientSum::new(10)
            .finish(&optimizer, &Group::single())
            .unwrap();
        assert_eq!(empty.stats.total_norm, 0.0);
    }
}
