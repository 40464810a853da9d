//! The training objective: label-smoothed cross-entropy over real target tokens.

use candle::{DType, Result, Tensor, D};
use gnmt_model::{Dropout, Gnmt, PairBatch};

/// Sums over the real (unpadded) target tokens of a batch.
#[derive(Debug)]
pub struct BatchLoss {
    /// Label-smoothed loss summed over real tokens: what is differentiated (after dividing by
    /// `tokens`).
    pub loss_sum: Tensor,
    /// Plain negative log-likelihood summed over real tokens (for perplexity), detached.
    pub nll_sum: f64,
    pub tokens: usize,
}

impl BatchLoss {
    /// Mean loss per real token: the scalar to call `backward` on.
    pub fn mean(&self) -> Result<Tensor> {
        self.loss_sum.affine(1.0 / self.tokens.max(1) as f64, 0.0)
    }
}

/// The loss of one batch through the model's output softmax and loss operation
/// ([`Gnmt::token_losses`]): what training and validation use. [`label_smoothed_nll`]
/// computes the same from logits and is its reference.
pub fn batch_loss(
    model: &Gnmt,
    batch: &PairBatch,
    eps: f64,
    dropout: Option<&mut Dropout>,
) -> Result<BatchLoss> {
    let per_token = model.token_losses(batch, eps, dropout)?;
    let loss_sum = per_token.narrow(1, 0, 1)?.sum_all()?;
    let nll_sum = per_token
        .narrow(1, 1, 1)?
        .detach()
        .sum_all()?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()?;
    Ok(BatchLoss {
        loss_sum,
        nll_sum,
        tokens: count_tokens(&batch.tgt_mask)?,
    })
}

fn count_tokens(mask: &Tensor) -> Result<usize> {
    Ok(mask
        .sum_all()?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()?
        .round() as usize)
}

/// `logits [B, T, V]`, `targets [B, T]` (u32), `mask [B, T]` (1 real, 0 pad). With smoothing
/// `eps`, the target distribution puts `1 - eps` on the reference token and spreads `eps`
/// uniformly over the vocabulary (Szegedy et al. 2016; GNMT v2 uses 0.1).
pub fn label_smoothed_nll(
    logits: &Tensor,
    targets: &Tensor,
    mask: &Tensor,
    eps: f64,
) -> Result<BatchLoss> {
    let (b, t, v) = logits.dims3()?;
    let logp = candle_nn::ops::log_softmax(&logits.reshape((b * t, v))?, D::Minus1)?;
    let targets = targets.reshape((b * t, 1))?;
    let mask = mask.reshape(b * t)?.to_dtype(logp.dtype())?;
    let nll = logp.gather(&targets, 1)?.squeeze(1)?.neg()?; // [B*T]
    let per_token = if eps > 0.0 {
        let uniform = logp.mean(D::Minus1)?.neg()?;
        ((&nll * (1.0 - eps))? + (uniform * eps)?)?
    } else {
        nll.clone()
    };
    let loss_sum = (per_token * &mask)?.sum_all()?;
    let nll_sum = (nll.detach() * &mask)?
        .sum_all()?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()?;
    Ok(BatchLoss {
        loss_sum,
        nll_sum,
        tokens: count_tokens(&mask)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle::Device;

    #[test]
    fn padding_is_excluded_and_smoothing_mixes_in_the_uniform_term() {
        let dev = Device::Cpu;
        // One sentence of 2 real tokens + 1 pad, vocabulary of 3.
        let logits = Tensor::new(
            &[[[2.0f64, 0.0, 0.0], [0.0, 1.0, 0.0], [9.0, -9.0, 3.0]]],
            &dev,
        )
        .unwrap();
        let targets = Tensor::new(&[[0u32, 1, 2]], &dev).unwrap();
        let mask = Tensor::new(&[[1.0f64, 1.0, 0.0]], &dev).unwrap();
        let lse = |xs: [f64; 3]| xs.iter().map(|x| x.exp()).sum::<f64>().ln();
        let (l0, l1) = (lse([2.0, 0.0, 0.0]), lse([0.0, 1.0, 0.0]));
        let nll = (l0 - 2.0) + (l1 - 1.0);
        let plain = label_smoothed_nll(&logits, &targets, &mask, 0.0).unwrap();
        assert_eq!(plain.tokens, 2);
        assert!((plain.nll_sum - nll).abs() < 1e-12);
        assert!((plain.loss_sum.to_scalar::<f64>().unwrap() - nll).abs() < 1e-12);
        let smooth = label_smoothed_nll(&logits, &targets, &mask, 0.1).unwrap();
        let uniform = (l0 - 2.0 / 3.0) + (l1 - 1.0 / 3.0);
        let want = 0.9 * nll + 0.1 * uniform;
        assert!((smooth.loss_sum.to_scalar::<f64>().unwrap() - want).abs() < 1e-12);
        assert!((smooth.nll_sum - nll).abs() < 1e-12);
        assert!((smooth.mean().unwrap().to_scalar::<f64>().unwrap() - want / 2.0).abs() < 1e-12);
    }

    #[test]
    fn fused_batch_loss_equals_the_loss_from_logits() {
        let dev = Device::Cpu;
        let cfg = gnmt_model::ModelConfig::tiny();
        let (model, _) = gnmt_model::init_model(&cfg, 3, 0.3, DType::F64, &dev).unwrap();
        let b = PairBatch {
            src: Tensor::new(&[[5u32, 6, 7, 3], [8, 3, 0, 0]], &dev).unwrap(),
            src_mask: gnmt_model::mask_from_lengths(&[4, 2], 4, DType::F64, &dev).unwrap(),
            tgt_in: Tensor::new(&[[2u32, 9, 10], [2, 11, 0]], &dev).unwrap(),
            tgt_out: Tensor::new(&[[9u32, 10, 3], [11, 3, 0]], &dev).unwrap(),
            tgt_mask: gnmt_model::mask_from_lengths(&[3, 2], 3, DType::F64, &dev).unwrap(),
        };
        for eps in [0.0, 0.1] {
            let fused = batch_loss(&model, &b, eps, None).unwrap();
            let (logits, _) = model.forward(&b.src, &b.src_mask, &b.tgt_in, None).unwrap();
            let reference = label_smoothed_nll(&logits, &b.tgt_out, &b.tgt_mask, eps).unwrap();
            assert_eq!(fused.tokens, 5);
            assert_eq!(reference.tokens, 5);
            let (a, b) = (
                fused.loss_sum.to_scalar::<f64>().unwrap(),
                reference.loss_sum.to_scalar::<f64>().unwrap(),
            );
            assert!((a - b).abs() < 1e-10, "eps {eps}: {a} vs {b}");
            assert!((fused.nll_sum - reference.nll_sum).abs() < 1e-10);
        }
    }
}
