//! The decoding flags `translate`, `eval` and `export` share: one definition, one set of
//! checks, one help text.

use clap::Args;

use crate::checked;

/// `--beam-size`, `--alpha` and `--beta`, each overriding the model's `generation.json` where
/// given.
#[derive(Debug, Clone, Copy, Default, Args)]
pub struct DecodingFlags {
    /// Beam size, 1 to 256 (default: the model's generation.json); 1 is greedy decoding.
    #[arg(long, value_parser = checked::beam_size())]
    pub beam_size: Option<usize>,
    /// Length normalisation exponent alpha, 0 to 10 (default: the model's).
    #[arg(long, value_parser = checked::decoding_weight())]
    pub alpha: Option<f64>,
    /// Coverage penalty weight beta, 0 to 10 (default: the model's).
    #[arg(long, value_parser = checked::decoding_weight())]
    pub beta: Option<f64>,
}

impl DecodingFlags {
    /// Overwrites the settings these flags give; the others keep their values.
    pub fn apply(&self, beam_size: &mut usize, alpha: &mut f64, beta: &mut f64) {
        *beam_size = self.beam_size.unwrap_or(*beam_size);
        *alpha = self.alpha.unwrap_or(*alpha);
        *beta = self.beta.unwrap_or(*beta);
    }
}

/// When `e` is a device running out of memory while decoding batches of `batch_size`
/// sentences with `beam_size` hypotheses each, the error that says what to lower.
pub fn out_of_memory(
    e: &dyn std::fmt::Display,
    batch_size: usize,
    beam_size: usize,
) -> Option<anyhow::Error> {
    gnmt_model::memory::is_out_of_memory(e).then(|| {
        anyhow::anyhow!(
            "the device ran out of memory decoding {batch_size} sentences at a time with beam \
             size {beam_size} ({} hypotheses per step): lower --batch-size ({e})",
            batch_size * beam_size
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_flags_override_and_the_rest_stay() {
        let (mut k, mut a, mut b) = (5, 1.0, 0.2);
        let flags = DecodingFlags {
            beam_size: Some(1),
            alpha: None,
            beta: Some(0.0),
        };
        flags.apply(&mut k, &mut a, &mut b);
        assert_eq!((k, a, b), (1, 1.0, 0.0));
        DecodingFlags::default().apply(&mut k, &mut a, &mut b);
        assert_eq!((k, a, b), (1, 1.0, 0.0));
    }
}
