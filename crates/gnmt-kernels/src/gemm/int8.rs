//! The int8 format: operands quantized to 8-bit integers, one scale per line, exact integer
//! sums (the quantized products of decoding, as GNMT, CTranslate2 and Marian's intgemm do).
//!
//! A line (a row of `A`, a column of `B`, each along the depth) is stored as
//! `q = round(x / s)` with `s = max |x| / 127`, so `q` lies in `[-127, 127]`. The product of
//! row `i` and column `j` is then `s_i s_j Σ q_ip q_pj`, the sum taken exactly in 32-bit
//! integers. The instruction that sums four byte products per lane (`vpdpbusd`, AVX512-VNNI)
//! takes an unsigned left operand, so `A` is stored as `q + 128` and `128 Σ_p q_pj`, a number
//! per column kept beside the packed `B`, is subtracted after the sum.
//!
//! Since integer sums are exact, the accelerated and portable kernels give the same bits, and
//! a row's result depends only on that row (its own scale): as for f32, a sentence decodes the
//! same whatever batch it is in.
//!
//! Words: depth word `p` of a line holds depths `4p .. 4p + 3` as four bytes, lowest first; a
//! depth past the end is 0 in `B` (and `128`, a zero, in `A`).

use super::*;

/// Depths per word.
pub(super) const QUAD: usize = 4;
/// The largest quantized magnitude.
const LEVELS: f32 = 127.0;
/// `A`'s bytes are `q + OFFSET` (unsigned).
pub(super) const OFFSET: i32 = 128;

/// The scale of a line whose largest magnitude is `max_abs`, and its inverse for
/// quantizing; a zero line gets scale 0 (its products are 0), a line with an infinity or NaN
/// scale NaN (its products are NaN, as an f32 product's would be).
fn scale_of(max_abs: f32, finite: bool) -> (f32, f32) {
    if !finite {
        (f32::NAN, 0.0)
    } else if max_abs == 0.0 {
        (0.0, 0.0)
    } else {
        (max_abs / LEVELS, LEVELS / max_abs)
    }
}

/// `v` rounded to the nearest integer, ties to even, for `|v| < 2^22`: adding and taking away
/// `1.5 * 2^23` leaves no fraction bits, and the addition rounds as IEEE does. The same as
/// `round_ties_even`, which without SSE4.1 in the baseline target is a call to `rintf` per
/// element; this vectorizes. NaN stays NaN.
#[inline(always)]
fn round_small(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC) - MAGIC
}

/// `x` quantized with the inverse scale `inverse` (at most `127 / max |x|`), in `[-127, 127]`;
/// a NaN (an infinite line's `x * 0`) is 0.
#[inline(always)]
fn quantize(x: f32, inverse: f32) -> i32 {
    round_small(x * inverse).clamp(-LEVELS, LEVELS) as i32
}

/// The scale of a line and its inverse (see [`scale_of`]).
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512dq+avx512vl",
    "x86_64+avx2+fma"
))]
fn line_scale(line: &[f32]) -> (f32, f32) {
    // Sixteen running maxima, so the loop vectorizes; `a <= f32::MAX` is false for an
    // infinity and for NaN (which `a > m` also skips).
    const LANES: usize = 16;
    let (mut max, mut finite) = ([0f32; LANES], [true; LANES]);
    let chunks = line.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for i in 0..LANES {
            let a = chunk[i].abs();
            max[i] = if a > max[i] { a } else { max[i] };
            finite[i] &= a <= f32::MAX;
        }
    }
    for (i, x) in tail.iter().enumerate() {
        let a = x.abs();
        max[i] = if a > max[i] { a } else { max[i] };
        finite[i] &= a <= f32::MAX;
    }
    let max_abs = max.iter().fold(0f32, |m, &a| m.max(a));
    scale_of(max_abs, finite.iter().all(|&f| f))
}

/// `line` quantized into `out` (same length); returns the scale and the sum of the values.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512dq+avx512vl",
    "x86_64+avx2+fma"
))]
pub(super) fn quantize_into(line: &[f32], out: &mut [i8]) -> (f32, i32) {
    let (scale, inverse) = line_scale(line);
    let mut sum = 0i32;
    for (q, &x) in out.iter_mut().zip(line) {
        let v = quantize(x, inverse);
        sum += v;
        *q = v as i8;
    }
    (scale, sum)
}

/// `row` quantized into `out` (same length) as this format does: returns the scale `s`, so
/// that `out[i] as f32 * s` approximates `row[i]`. Model files store int8 weights this way,
/// and packing them again for a product gives back the same bytes.
pub fn quantize_row(row: &[f32], out: &mut [i8]) -> f32 {
    assert_eq!(row.len(), out.len(), "quantize_row: lengths differ");
    quantize_into(row, out).0
}

/// Lines quantized and packed into blocks of `width` lines (word `p * width + j` of a block:
/// depth word `p` of its line `j`), with each line's scale (0 for the padding lines) and the
/// sum of each line's quantized values. `offset` is added to every byte (128 for `A`).
pub(super) struct Quantized {
    pub(super) words: Vec<u32>,
    pub(super) scales: Vec<f32>,
    pub(super) sums: Vec<i32>,
}

pub(super) fn quantize_lines(lines: &pack::Lines, width: usize, offset: i32) -> Quantized {
    let quads = lines.depth.div_ceil(QUAD);
    let blocks = lines.count.div_ceil(width);
    // `(q + 128) as u8` is `q as u8 ^ 0x80`, for every byte of a word at once.
    let flip = (offset as u32 & 0xff) * 0x0101_0101;
    let mut words = vec![flip; blocks * quads * width];
    let mut scales = vec![0f32; blocks * width];
    let mut sums = vec![0i32; blocks * width];
    // A strided line is gathered first; the quantized bytes are padded with zeros to whole
    // words.
    let mut gathered = vec![
        0f32;
        if lines.depth_stride == 1 {
            0
        } else {
            lines.depth
        }
    ];
    let mut bytes = vec![0i8; quads * QUAD];
    for line in 0..lines.count {
        let first = line * lines.line_stride;
        let values: &[f32] = if lines.depth_stride == 1 {
            &lines.data[first..first + lines.depth]
        } else {
            for (d, x) in gathered.iter_mut().enumerate() {
                *x = lines.data[first + d * lines.depth_stride];
            }
            &gathered
        };
        let (scale, sum) = quantize_into(values, &mut bytes[..lines.depth]);
        scales[line] = scale;
        sums[line] = sum;
        let out = &mut words[(line / width) * quads * width + line % width..];
        for (p, word) in quad_words(&bytes, offset).enumerate() {
            out[p * width] = word;
        }
    }
    Quantized {
        words,
        scales,
        sums,
    }
}

/// Quantized values (a whole number of words) as words, four to a word, lowest first, each
/// byte plus `offset` (128 for `A`: `(q + 128) as u8` is `q as u8 ^ 0x80`).
pub(super) fn quad_words(bytes: &[i8], offset: i32) -> impl Iterator<Item = u32> + '_ {
    let flip = (offset as u32 & 0xff) * 0x0101_0101;
    bytes
        .chunks_exact(QUAD)
        .map(move |q| u32::from_le_bytes([q[0] as u8, q[1] as u8, q[2] as u8, q[3] as u8]) ^ flip)
}

/// The int8 parts of a packed `B`: its columns' scales, and `128 Σ_p q_pj` for each column
/// (what the unsigned `A` adds to every sum), both padded to whole panels.
#[derive(Debug, Clone, Default)]
pub(super) struct ColumnScales {
    pub(super) scales: Vec<f32>,
    pub(super) offsets: Vec<i32>,
}

/// `B [k, n]` quantized per column.
pub(super) fn pack_b(b: View) -> (Vec<u32>, ColumnScales) {
    let q = quantize_lines(&b.cols_as_lines(), NR, 0);
    let offsets = q.sums.iter().map(|s| s * OFFSET).collect();
    (
        q.words,
        ColumnScales {
            scales: q.scales,
            offsets,
        },
    )
}

/// `A [m, k]` quantized per row, as unsigned bytes (`q + 128`), with the rows' scales.
pub(super) fn pack_a(a: View) -> (Vec<u32>, Vec<f32>) {
    let q = quantize_lines(&a.rows_as_lines(), MR, OFFSET);
    (q.words, q.scales)
}

/// One element's result from its exact integer sum: `(sum - offset) s_i s_j`, in this order
/// in every kernel (the same bits).
#[inline(always)]
pub(super) fn dequantize(sum: i32, offset: i32, row_scale: f32, column_scale: f32) -> f32 {
    (sum.wrapping_sub(offset)) as f32 * row_scale * column_scale
}

/// Whether this CPU has AVX512-VNNI (`vpdpbusd`) for the int8 kernel. Without it [`gemm`]
/// runs a portable version of the same integer arithmetic: the same bits, slower.
pub fn accelerated_int8() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The scales one `MR x NR` tile of an int8 product needs: its rows' (`MR`), its columns'
/// and their offsets (`NR` each).
#[derive(Clone, Copy)]
pub(super) struct TileScales<'a> {
    pub(super) rows: &'a [f32],
    pub(super) columns: &'a [f32],
    pub(super) offsets: &'a [i32],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_small_rounds_ties_to_even_as_the_standard_rounding_does() {
        // Every quarter and a spread of odd fractions over the quantized range and beyond it.
        for i in -600..=600 {
            for v in [i as f32 / 4.0, i as f32 / 4.0 + 0.001, i as f32 / 3.7] {
                assert_eq!(round_small(v), v.round_ties_even(), "{v}");
            }
        }
        assert!(round_small(f32::NAN).is_nan());
        assert_eq!(quantize(f32::NAN, 1.0), 0);
        assert_eq!(quantize(f32::INFINITY, 0.0), 0);
        assert_eq!(quantize(1000.0, 1.0), 127);
        assert_eq!(quantize(-1000.0, 1.0), -127);
    }

    #[test]
    fn a_line_scale_sees_every_element_and_every_non_finite_one() {
        for len in [1, 15, 16, 17, 40] {
            for at in 0..len {
                let mut line = vec![0.5f32; len];
                line[at] = -3.0;
                assert_eq!(line_scale(&line).0, 3.0 / LEVELS, "len {len}, at {at}");
                for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                    line[at] = bad;
                    assert!(line_scale(&line).0.is_nan(), "len {len}, at {at}: {bad}");
                }
            }
        }
    }
}
