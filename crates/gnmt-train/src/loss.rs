//! The training objective: label-smoothed cross-entropy over real target tokens.

use candle::{DType, Result, Tensor, D};

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
    let tokens = mask
        .sum_all()?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()?
        .round() as usize;
    Ok(BatchLoss {
        loss_sum,
        nll_sum,
        tokens,
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
}
