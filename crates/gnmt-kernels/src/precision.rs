//! The precision of matrix products, a value each model, decoder and training step carries.

/// How f32 matrix products are computed. f64 products (the gradient checks) are always f64.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 products and sums.
    #[default]
    F32,
    /// Operands rounded to bfloat16, f32 sums: twice the multiply-adds per instruction on CPUs
    /// with AVX512-BF16 ([`crate::gemm::accelerated`]); elsewhere a portable version of the
    /// same arithmetic, slower than f32.
    Bf16,
    /// Operands quantized to int8 with a scale per row (activations, at every product) and per
    /// output (weights), exact integer sums: four times the multiply-adds per instruction on
    /// CPUs with AVX512-VNNI (see [`crate::gemm`]). For decoding: training refuses it.
    Int8,
}

impl Precision {
    /// "f32", "bf16" or "int8", as the `--matmul` option and config files spell it.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Int8 => "int8",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
