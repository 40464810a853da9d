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
    /// f32 operands rounded to TF32 (10 bits of mantissa) on a GPU's tensor cores, f32 sums
    /// (cuBLAS's `CUBLAS_COMPUTE_32F_FAST_TF32`). A GPU precision: the CPU has no TF32 unit,
    /// and its kernels multiply in f32 if asked (the command line refuses it there).
    Tf32,
    /// Operands quantized to int8 with a scale per row (activations, at every product) and per
    /// output (weights), exact integer sums: four times the multiply-adds per instruction on
    /// CPUs with AVX512-VNNI (see [`crate::gemm`]). For decoding: training refuses it.
    Int8,
}

impl Precision {
    /// "f32", "bf16", "tf32" or "int8", as the `--matmul` option and config files spell it.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Tf32 => "tf32",
            Precision::Int8 => "int8",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The precision `--matmul auto` picks on this CPU, with the reason it gives in the run's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AutoChoice {
    pub precision: Precision,
    pub reason: &'static str,
}

impl Precision {
    /// The fastest precision that trains as well as f32 on this CPU, by what was measured
    /// (docs/benchmarks.md): bf16 on AMD CPUs with AVX512-BF16 (Zen 4: 1.5x f32's tokens/s,
    /// the same validation BLEU), f32 elsewhere: Intel's `vdpbf16ps` ran slower than f32 on
    /// the Xeons measured, and training on AMX tiles has not been measured yet. A rule on the
    /// CPU's features, not a timing, so a seeded run picks the same on the same machine.
    pub fn auto_for_training() -> AutoChoice {
        let (precision, reason) = if !crate::gemm::accelerated() {
            (Precision::F32, "this CPU lacks AVX512-BF16")
        } else if cpu_is_amd() {
            (
                Precision::Bf16,
                "AVX512-BF16 on an AMD CPU: bf16 products trained 1.5x faster than f32 on Zen 4, \
                 to the same validation BLEU",
            )
        } else {
            (
                Precision::F32,
                "on Intel CPUs vdpbf16ps measured slower than f32 (AMX tiles are not yet \
                 measured in training)",
            )
        };
        AutoChoice { precision, reason }
    }

    /// The fastest precision that translates within 0.3 BLEU of f32 on this CPU: int8 where
    /// the CPU has AVX512-VNNI (2x f32's sentences per second on an Intel Xeon; test_2016 BLEU
    /// within 0.1 of f32's on the shipped models), else what [`Precision::auto_for_training`]
    /// picks.
    pub fn auto_for_decoding() -> AutoChoice {
        if crate::gemm::accelerated_int8() {
            AutoChoice {
                precision: Precision::Int8,
                reason:
                    "AVX512-VNNI: int8 products decoded 2x faster than f32, within 0.1 BLEU of it",
            }
        } else {
            Self::auto_for_training()
        }
    }
}

/// Whether CPUID's vendor string is "AuthenticAMD".
#[allow(unused_unsafe)] // `__cpuid` is an unsafe function before Rust 1.94
fn cpu_is_amd() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: leaf 0 of CPUID exists on every x86_64 CPU.
        let leaf = unsafe { std::arch::x86_64::__cpuid(0) };
        let bytes = [leaf.ebx, leaf.edx, leaf.ecx]
            .map(u32::to_le_bytes)
            .concat();
        bytes == b"AuthenticAMD"
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// auto never trains in int8, never picks a precision this CPU would run on a portable
    /// kernel, and picks the same every time (a seeded run must not depend on a timing).
    #[test]
    fn auto_picks_what_this_cpu_runs_in_hardware_and_always_the_same() {
        let (training, decoding) = (
            Precision::auto_for_training(),
            Precision::auto_for_decoding(),
        );
        assert_ne!(training.precision, Precision::Int8);
        assert!(training.precision != Precision::Bf16 || crate::gemm::accelerated());
        assert!(decoding.precision != Precision::Int8 || crate::gemm::accelerated_int8());
        assert!(decoding.precision != Precision::Bf16 || crate::gemm::accelerated());
        assert_eq!(training, Precision::auto_for_training());
        assert_eq!(decoding, Precision::auto_for_decoding());
        eprintln!(
            "this CPU: training in {} ({}), decoding in {} ({})",
            training.precision, training.reason, decoding.precision, decoding.reason
        );
    }
}
