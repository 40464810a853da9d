//! Which implementation of the operations a model runs on.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use gnmt_kernels::Precision;

/// The implementation of every operation of a model, chosen once per model (training step,
/// translator) and carried by its layers: never a process-wide setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// The fused operations of this crate, their matrix products in `Precision`: on the CPU
    /// every operation; on a GPU those with a CUDA kernel (the LSTM cell, the attention
    /// scores, the output layer's loss, decoding's top tokens, dropout, the embedding's
    /// gradient and Adam), the composites elsewhere, products through cuBLAS (bf16 operands
    /// with f32 sums for `Precision::Bf16`, else f32).
    Fused(Precision),
    /// Each operation's composite reference: plain candle operations, products in f32 through
    /// candle's matmul, on any candle device. The correctness baseline of every backend.
    Reference,
}

impl Default for Kernels {
    fn default() -> Self {
        Self::Fused(Precision::F32)
    }
}

impl Kernels {
    /// The precision of the matrix products (f32 for the reference).
    pub fn precision(self) -> Precision {
        match self {
            Self::Fused(p) => p,
            Self::Reference => Precision::F32,
        }
    }

    pub fn is_reference(self) -> bool {
        self == Self::Reference
    }

    /// The precision of the fused CPU kernels, when these are the fused kernels and `device`
    /// is the CPU; `None` where an operation runs its composite: with the reference kernels,
    /// and on a GPU for the operations that have no CUDA kernel (there, the fused kernels
    /// are `gnmt-cuda-kernels`' where they exist and the composites elsewhere).
    pub fn fused_on(self, device: &candle::Device) -> Option<Precision> {
        match self {
            Self::Fused(p) if device.is_cpu() => Some(p),
            _ => None,
        }
    }

    /// Whether these are the fused kernels on a GPU, where an operation with a CUDA kernel in
    /// `gnmt-cuda-kernels` runs it (the others run their composites).
    pub fn cuda_on(self, device: &candle::Device) -> bool {
        matches!(self, Self::Fused(_)) && device.is_cuda()
    }

    /// `fused` or `reference`, as the command line spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Fused(_) => "fused",
            Self::Reference => "reference",
        }
    }
}

impl fmt::Display for Kernels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fused(p) => write!(f, "fused, {p} products"),
            Self::Reference => f.write_str("reference, f32 products"),
        }
    }
}

/// The implementation alone, as `--kernels` takes it; [`KernelChoice::with`] adds the precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelChoice {
    #[default]
    Fused,
    Reference,
}

impl KernelChoice {
    /// The kernels for this choice with products in `precision`; the reference computes in
    /// f32 only, so it refuses any other precision.
    pub fn with(self, precision: Precision) -> Result<Kernels, String> {
        match (self, precision) {
            (Self::Fused, p) => Ok(Kernels::Fused(p)),
            (Self::Reference, Precision::F32) => Ok(Kernels::Reference),
            (Self::Reference, p) => Err(format!(
                "the reference kernels compute in f32 only, not {p}: drop --matmul {p} or use --kernels fused"
            )),
        }
    }
}

impl FromStr for KernelChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fused" => Ok(Self::Fused),
            "reference" => Ok(Self::Reference),
            other => Err(format!("unknown kernels {other:?}: fused or reference")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_is_f32_only_and_names_parse() {
        assert_eq!(
            KernelChoice::Fused.with(Precision::Bf16),
            Ok(Kernels::Fused(Precision::Bf16))
        );
        assert_eq!(
            KernelChoice::Reference.with(Precision::F32),
            Ok(Kernels::Reference)
        );
        let err = KernelChoice::Reference.with(Precision::Bf16).unwrap_err();
        assert!(err.contains("f32 only"), "{err}");
        assert_eq!(
            "reference".parse::<KernelChoice>(),
            Ok(KernelChoice::Reference)
        );
        assert!("fast".parse::<KernelChoice>().is_err());
        assert_eq!(Kernels::Reference.precision(), Precision::F32);
    }
}
