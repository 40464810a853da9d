//! The micro-kernels in plain Rust, for CPUs without the instructions: the same arithmetic.

use super::*;

/// [`kernel`] in plain Rust, for CPUs without AVX512-BF16: each bf16 product is exact in f32,
/// so only the order and rounding of the sums can differ.
pub(super) fn portable_kernel(pairs: usize, a: &[u32], b: &[u32], tile: &mut [[f32; NR]; MR]) {
    let halves = |w: u32| (from_bf16(w as u16), from_bf16((w >> 16) as u16));
    for row in tile.iter_mut() {
        row.fill(0.0);
    }
    for p in 0..pairs {
        let b_words = &b[p * NR..][..NR];
        for (i, row) in tile.iter_mut().enumerate() {
            let (a0, a1) = halves(a[p * MR + i]);
            for (acc, &w) in row.iter_mut().zip(b_words) {
                let (b0, b1) = halves(w);
                *acc += a0 * b0 + a1 * b1;
            }
        }
    }
}

/// [`kernel_f32`] in plain Rust: the same fused multiply-adds in the same order, so the same
/// bits (`mul_add` is an FMA instruction where the CPU has one, exact software otherwise).
#[multiversion::multiversion(targets("x86_64+avx2+fma"))]
pub(super) fn portable_kernel_f32(k: usize, a: ABlock, b: &[u32], tile: &mut [[f32; NR]; MR]) {
    assert!(a.holds(k) && b.len() >= k * NR);
    for row in tile.iter_mut() {
        row.fill(0.0);
    }
    for p in 0..k {
        let b_words = &b[p * NR..][..NR];
        for (i, row) in tile.iter_mut().enumerate() {
            let ai = f32::from_bits(a.words[p * a.depth_stride + i * a.row_stride]);
            for (acc, &w) in row.iter_mut().zip(b_words) {
                *acc = ai.mul_add(f32::from_bits(w), *acc);
            }
        }
    }
}

/// [`kernel_int8`] in plain Rust: the same exact integer sums and the same dequantization, so
/// the same bits.
pub(super) fn portable_kernel_int8(
    quads: usize,
    a: &[u32],
    b: &[u32],
    scales: TileScales,
    tile: &mut [[f32; NR]; MR],
) {
    let bytes = |w: u32| w.to_le_bytes();
    for (i, row) in tile.iter_mut().enumerate() {
        let mut sums = [0i32; NR];
        for p in 0..quads {
            let a_bytes = bytes(a[p * MR + i]);
            for (sum, &w) in sums.iter_mut().zip(&b[p * NR..][..NR]) {
                for (&x, y) in a_bytes.iter().zip(bytes(w)) {
                    *sum += x as i32 * y as i8 as i32;
                }
            }
        }
        for (j, (out, sum)) in row.iter_mut().zip(sums).enumerate() {
            *out = dequantize(sum, scales.offsets[j], scales.rows[i], scales.columns[j]);
        }
    }
}
