//! Matrix products of f32 matrices on packed operands, in one of two [`Format`]s:
//!
//! - **bf16**: operands rounded to bfloat16 (round to nearest even) while being packed, f32
//!   sums, on the AVX512-BF16 instruction `vdpbf16ps` (16 lanes, each adding the dot product
//!   of two bf16 pairs to an f32 accumulator: twice the multiply-adds of an f32 FMA). The mixed
//!   precision of TPUs and PyTorch's autocast: 8 bits of mantissa in the products.
//! - **f32**: plain f32 fused multiply-adds (AVX-512F).
//! - **int8**: operands quantized to 8-bit integers with a scale per row of `A` and per column
//!   of `B`, exact integer sums on AVX512-VNNI's `vpdpbusd` (four products per lane: four times
//!   an f32 FMA); for decoding only ([`int8`] says how).
//!
//! Layout. `B [k, n]` is packed into panels of [`NR`] columns; within a panel, depth word `p`
//! is `NR` 32-bit words, word `j` holding column `j`'s depth `p` (f32) or depths `2p, 2p+1`
//! (a bf16 pair). `A` is packed the same way by blocks of [`MR`] rows, except that an f32 `A`
//! whose storage already lets the kernel step through a block's rows depth by depth (row-major,
//! or transposed) is read where it lies. The micro-kernel broadcasts an `A` word and multiplies
//! it with two `B` vectors: an `MR x NR` tile of `C` lives in 16 registers over the whole `k`
//! loop.
//!
//! Every element of the result is summed by one kernel call, over the depth in order: results
//! depend on neither the number of threads nor the number of rows, so a sentence decodes to
//! the same bits whatever batch it is in (the `gemm` crate splits the depth into blocks whose
//! size depends on the matrix shape, and takes another path for a single row).

use std::mem::MaybeUninit;

mod amx;
mod avx512;
mod int8;
mod pack;
mod portable;
#[cfg(test)]
mod tests;
mod tile;

pub use amx::available as amx_available;
use avx512::{kernel, kernel_f32, kernel_int8};
pub use int8::{accelerated_int8, quantize_row};
use int8::{dequantize, TileScales};
use pack::pack_a;
pub use pack::{PackedB, View};
use portable::{portable_kernel, portable_kernel_f32, portable_kernel_int8};
use tile::{gemm_reading_a, ABlock, Dst, TileOut, Write};

/// Rows of a micro-tile.
pub const MR: usize = 8;
/// Columns of a micro-tile (two 16-lane registers).
pub const NR: usize = 32;
/// Rows of `A` that share one pass over a panel of `B` (the panel stays in L1 for them).
pub(crate) const ROW_GROUP: usize = 64;
/// Most panels of a row-major `B` packed by one task: 8 panels read 1 KiB of each f32 row.
pub(crate) const PANEL_GROUP: usize = 8;

/// How a packed operand holds its numbers, and so which kernel multiplies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Two depths per word, as a pair of bfloat16.
    Bf16,
    /// One depth per word, as f32.
    F32,
    /// Four depths per word, as bytes quantized per line (see [`int8`]).
    Int8,
}

impl Format {
    pub(crate) fn depth_per_word(self) -> usize {
        match self {
            Format::Bf16 => 2,
            Format::F32 => 1,
            Format::Int8 => int8::QUAD,
        }
    }
}

/// Whether this CPU has AVX-512F, for the f32 kernel. Without it [`gemm`] runs a portable
/// version of the same arithmetic (the same fused multiply-adds in the same order: the same
/// bits, slower where the CPU lacks FMA).
pub fn accelerated_f32() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the f32 kernel runs in hardware: AVX-512F, the portable kernel's AVX2+FMA
/// version, or ARM64 (where FMA is baseline). Elsewhere `mul_add` is a software routine.
pub fn f32_is_fast() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        accelerated_f32()
            || (std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        cfg!(target_arch = "aarch64")
    }
}

/// Whether this CPU has the `vdpbf16ps` instruction. Without it [`gemm`] runs a portable
/// version of the same arithmetic (exact bf16 products, f32 sums): same results up to the
/// rounding of the sums, several times slower than f32.
pub fn accelerated() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// f32 -> bf16, rounding to nearest even; NaN stays NaN.
#[inline(always)]
pub fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16;
    let quiet_nan = (bits >> 16) | 0x40;
    // A select, not a branch: packing loops vectorise.
    (if bits & 0x7fff_ffff > 0x7f80_0000 {
        quiet_nan
    } else {
        rounded
    }) as u16
}

/// bf16 -> f32 (exact).
#[inline(always)]
pub fn from_bf16(x: u16) -> f32 {
    f32::from_bits((x as u32) << 16)
}

#[inline(always)]
pub(crate) fn pair(lo: f32, hi: f32) -> u32 {
    to_bf16(lo) as u32 | (to_bf16(hi) as u32) << 16
}

/// `dst [m, n]` (row-major, dense) `(+)= A B`. `threads` > 1 splits the tiles over rayon's pool.
///
/// Panics if the shapes disagree.
pub fn gemm(dst: &mut [f32], accumulate: bool, a: View, b: &PackedB, threads: usize) {
    let write = if accumulate {
        Write::Accumulate
    } else {
        Write::Store
    };
    assert!(dst.len() >= a.rows * b.n, "destination too short");
    gemm_reading_a(Dst(dst.as_mut_ptr()), write, a, b, threads, true)
}

/// `dst [m, n] = A B + bias` (`bias [n]` added to every row as the tiles are written: no
/// separate pass over the output, which for a decoder's output layer is megabytes per step).
///
/// Panics if the shapes disagree.
pub fn gemm_bias(dst: &mut [f32], a: View, b: &PackedB, bias: &[f32], threads: usize) {
    assert_eq!(bias.len(), b.n, "bias length differs from the column count");
    assert!(dst.len() >= a.rows * b.n, "destination too short");
    gemm_reading_a(
        Dst(dst.as_mut_ptr()),
        Write::Bias(bias),
        a,
        b,
        threads,
        true,
    )
}

/// `dst [m, n] = A B (+ bias)` into memory not yet written: every element of `dst[..m * n]`
/// is written, none read, so a fresh product needs no zeroing pass first (for the output
/// layer's logits that pass wrote 50 MB a step).
///
/// Panics if the shapes disagree.
pub fn gemm_uninit(
    dst: &mut [MaybeUninit<f32>],
    a: View,
    b: &PackedB,
    bias: Option<&[f32]>,
    threads: usize,
) {
    assert!(dst.len() >= a.rows * b.n, "destination too short");
    let write = match bias {
        Some(bias) => {
            assert_eq!(bias.len(), b.n, "bias length differs from the column count");
            Write::Bias(bias)
        }
        None => Write::Store,
    };
    gemm_reading_a(
        Dst(dst.as_mut_ptr() as *mut f32),
        write,
        a,
        b,
        threads,
        true,
    )
}
