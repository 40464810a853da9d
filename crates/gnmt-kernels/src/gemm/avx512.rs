//! The AVX-512 micro-kernels: bf16 pairs on `vdpbf16ps`, f32 on FMA.

use super::*;

/// Puts the first `R` rows of a tile held in registers (`$acc[i]`: row `i`'s two halves) where
/// `$out` (a [`TileOut`]) says, with the arithmetic of [`Dst::write_row`] (the same bits). A
/// macro, expanded inside each kernel: as a function taking `&acc` (not inlined across the
/// target-feature boundary) it kept the accumulators in memory and the kernel ran at half
/// speed.
///
/// Safety (of the caller): the CPU must have AVX512F; a direct tile's `R` rows must lie in the
/// destination, written by no one else meanwhile (and initialised for `Accumulate`).
#[cfg(target_arch = "x86_64")]
macro_rules! put_tile {
    ($acc:expr, $out:expr) => {{
        use std::arch::x86_64::*;
        match $out {
            TileOut::Buffer(tile) => {
                for (row, acc_row) in tile.iter_mut().zip(&$acc) {
                    _mm512_storeu_ps(row.as_mut_ptr(), acc_row[0]);
                    _mm512_storeu_ps(row.as_mut_ptr().add(16), acc_row[1]);
                }
            }
            TileOut::Direct(d) => {
                for (i, acc_row) in $acc.iter().enumerate() {
                    let row = d.first.add(i * d.row_len);
                    let (lo, hi) = match d.write {
                        Write::Store => (acc_row[0], acc_row[1]),
                        Write::Accumulate => (
                            _mm512_add_ps(_mm512_loadu_ps(row), acc_row[0]),
                            _mm512_add_ps(_mm512_loadu_ps(row.add(16)), acc_row[1]),
                        ),
                        Write::Bias(bias) => {
                            let b = bias[d.column..d.column + NR].as_ptr();
                            (
                                _mm512_add_ps(acc_row[0], _mm512_loadu_ps(b)),
                                _mm512_add_ps(acc_row[1], _mm512_loadu_ps(b.add(16))),
                            )
                        }
                    };
                    _mm512_storeu_ps(row, lo);
                    _mm512_storeu_ps(row.add(16), hi);
                }
            }
        }
    }};
}

/// The first `R` rows of one `MR x NR` tile over all `pairs`: `A_block B_panel` into `out` (a
/// last block with fewer than MR rows multiplies only those).
///
/// # Safety
/// The CPU must have AVX512F and AVX512-BF16; `a` holds `pairs * MR` words, `b` `pairs * NR`;
/// `out` as for [`put_tile!`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn kernel<const R: usize>(pairs: usize, a: &[u32], b: &[u32], out: TileOut) {
    use std::arch::x86_64::*;
    assert!(R <= MR && a.len() >= pairs * MR && b.len() >= pairs * NR);
    let (a, b) = (a.as_ptr(), b.as_ptr());
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    for p in 0..pairs {
        let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR) as *const _));
        let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR + 16) as *const _));
        for (i, acc_row) in acc.iter_mut().enumerate() {
            let ai: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(p * MR + i) as i32));
            acc_row[0] = _mm512_dpbf16_ps(acc_row[0], ai, b0);
            acc_row[1] = _mm512_dpbf16_ps(acc_row[1], ai, b1);
        }
    }
    put_tile!(acc, out)
}

#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn kernel<const R: usize>(_: usize, _: &[u32], _: &[u32], _: TileOut) {
    unreachable!("accelerated() is false off x86_64")
}

/// The first `R` rows of one `MR x NR` tile over all `k` depths in f32: `tile = A_block
/// B_panel`, each element a chain of fused multiply-adds in depth order, whatever the block's
/// layout (a last block with fewer than MR rows multiplies only those).
///
/// # Safety
/// The CPU must have AVX512F; `b` holds `k * NR` words; `out` as for [`put_tile!`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn kernel_f32<const R: usize>(k: usize, a: ABlock, b: &[u32], out: TileOut) {
    use std::arch::x86_64::*;
    assert!(R <= MR && a.holds(k) && b.len() >= k * NR);
    let b = b.as_ptr() as *const f32;
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    let base = a.words.as_ptr() as *const f32;
    if a.row_stride == 1 {
        // A block's MR words of a depth side by side (packed, or a transposed matrix).
        let stride = a.depth_stride;
        for p in 0..k {
            let b0 = _mm512_loadu_ps(b.add(p * NR));
            let b1 = _mm512_loadu_ps(b.add(p * NR + 16));
            for (i, acc_row) in acc.iter_mut().enumerate() {
                let ai = _mm512_set1_ps(*base.add(p * stride + i));
                acc_row[0] = _mm512_fmadd_ps(ai, b0, acc_row[0]);
                acc_row[1] = _mm512_fmadd_ps(ai, b1, acc_row[1]);
            }
        }
    } else {
        // Rows of a row-major matrix: MR streams, each read along its depth.
        let (rows, stride) = (
            std::array::from_fn::<_, R, _>(|i| base.add(i * a.row_stride)),
            a.depth_stride,
        );
        for p in 0..k {
            let b0 = _mm512_loadu_ps(b.add(p * NR));
            let b1 = _mm512_loadu_ps(b.add(p * NR + 16));
            for (row, acc_row) in rows.iter().zip(acc.iter_mut()) {
                let ai = _mm512_set1_ps(*row.add(p * stride));
                acc_row[0] = _mm512_fmadd_ps(ai, b0, acc_row[0]);
                acc_row[1] = _mm512_fmadd_ps(ai, b1, acc_row[1]);
            }
        }
    }
    put_tile!(acc, out)
}

#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn kernel_f32<const R: usize>(_: usize, _: ABlock, _: &[u32], _: TileOut) {
    unreachable!("accelerated_f32() is false off x86_64")
}

/// The first `R` rows of one `MR x NR` tile over all `quads` in int8: four byte products per
/// lane and instruction (`vpdpbusd`: unsigned `A` bytes times signed `B` bytes), summed
/// exactly in i32, then dequantized as [`dequantize`] does.
///
/// # Safety
/// The CPU must have AVX512F and AVX512-VNNI; `a` holds `quads * MR` words, `b` `quads * NR`;
/// `scales` `MR` rows and `NR` columns; `out` as for [`put_tile!`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
pub(super) unsafe fn kernel_int8<const R: usize>(
    quads: usize,
    a: &[u32],
    b: &[u32],
    scales: TileScales,
    out: TileOut,
) {
    use std::arch::x86_64::*;
    assert!(R <= MR && a.len() >= quads * MR && b.len() >= quads * NR);
    assert!(scales.rows.len() >= R && scales.columns.len() >= NR && scales.offsets.len() >= NR);
    let (a, b) = (a.as_ptr(), b.as_ptr());
    let mut acc = [[_mm512_setzero_si512(); 2]; R];
    for p in 0..quads {
        let b0 = _mm512_loadu_si512(b.add(p * NR) as *const _);
        let b1 = _mm512_loadu_si512(b.add(p * NR + 16) as *const _);
        for (i, acc_row) in acc.iter_mut().enumerate() {
            let ai = _mm512_set1_epi32(*a.add(p * MR + i) as i32);
            acc_row[0] = _mm512_dpbusd_epi32(acc_row[0], ai, b0);
            acc_row[1] = _mm512_dpbusd_epi32(acc_row[1], ai, b1);
        }
    }
    let offsets = scales.offsets.as_ptr();
    let (off0, off1) = (
        _mm512_loadu_si512(offsets as *const _),
        _mm512_loadu_si512(offsets.add(16) as *const _),
    );
    let columns = scales.columns.as_ptr();
    let (col0, col1) = (_mm512_loadu_ps(columns), _mm512_loadu_ps(columns.add(16)));
    let values: [[__m512; 2]; R] = std::array::from_fn(|i| {
        let row = _mm512_set1_ps(scales.rows[i]);
        let value = |sum, offset, column| {
            let exact = _mm512_cvtepi32_ps(_mm512_sub_epi32(sum, offset));
            _mm512_mul_ps(_mm512_mul_ps(exact, row), column)
        };
        [value(acc[i][0], off0, col0), value(acc[i][1], off1, col1)]
    });
    put_tile!(values, out)
}

#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn kernel_int8<const R: usize>(
    _: usize,
    _: &[u32],
    _: &[u32],
    _: TileScales,
    _: TileOut,
) {
    unreachable!("accelerated_int8() is false off x86_64")
}
