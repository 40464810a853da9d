//! Matrix products of f32 matrices computed in bfloat16 with f32 accumulation, on the
//! AVX512-BF16 instruction `vdpbf16ps` (one instruction: 16 lanes, each adding the dot product
//! of two bf16 pairs to an f32 accumulator; twice the multiply-adds of an f32 FMA).
//!
//! Operands stay f32 everywhere else: they are rounded to bf16 (round to nearest even) only
//! while being packed for the kernel, and results are f32. This is the mixed precision of
//! TPUs and of PyTorch's autocast: 8 bits of mantissa in the products, full f32 sums.
//!
//! Layout. `B [k, n]` is packed into panels of [`NR`] columns; within a panel, row pair `p`
//! (rows `2p`, `2p+1`) is `NR` 32-bit words, word `j` holding `(b[2p, j], b[2p+1, j])`. `A`
//! is packed the same way by blocks of [`MR`] rows, word `i` of pair `p` holding
//! `(a[i, 2p], a[i, 2p+1])`. The micro-kernel broadcasts an `A` word and multiplies it with
//! two `B` vectors: an `MR x NR` tile of `C` lives in 16 registers over the whole `k` loop.
//!
//! Every element of the result is summed by one kernel call in a fixed order, whatever the
//! number of threads: results do not depend on it.

use rayon::prelude::*;

/// Rows of a micro-tile.
pub const MR: usize = 8;
/// Columns of a micro-tile (two 16-lane registers).
pub const NR: usize = 32;
/// Rows of `A` that share one pass over a panel of `B` (the panel stays in L1 for them).
const ROW_GROUP: usize = 64;

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
fn pair(lo: f32, hi: f32) -> u32 {
    to_bf16(lo) as u32 | (to_bf16(hi) as u32) << 16
}

/// A dense f32 matrix read with arbitrary strides: element `(r, c)` is `data[r * rs + c * cs]`.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> View<'a> {
    /// A row-major `[rows, cols]` matrix, or with `transposed` the transpose of the row-major
    /// `[cols, rows]` matrix stored in `data`.
    pub fn new(data: &'a [f32], rows: usize, cols: usize, transposed: bool) -> Self {
        assert!(data.len() >= rows * cols, "matrix storage too short");
        let (row_stride, col_stride) = if transposed { (1, rows) } else { (cols, 1) };
        Self {
            data,
            rows,
            cols,
            row_stride,
            col_stride,
        }
    }

    #[cfg(test)]
    fn at(&self, r: usize, c: usize) -> f32 {
        self.data[r * self.row_stride + c * self.col_stride]
    }
}

/// Packs `lines` (rows of `A` or columns of `B`) of an operand into words: word
/// `p * width + j` holds the depth pair `(2p, 2p + 1)` of line `first + j`. Element `(line,
/// depth)` is `data[line * line_stride + depth * depth_stride]`; lines past `count` and the odd
/// depth past `depth` stay zero in `out`, which must arrive zeroed.
struct Lines<'a> {
    data: &'a [f32],
    count: usize,
    depth: usize,
    line_stride: usize,
    depth_stride: usize,
}

impl Lines<'_> {
    /// Packs `blocks` consecutive blocks of `width` lines, the first starting at line
    /// `first_block * width`, into `out` (one block after another).
    fn pack(&self, first_block: usize, blocks: usize, width: usize, out: &mut [u32]) {
        let pairs = self.depth.div_ceil(2);
        let first = first_block * width;
        let lines = (blocks * width).min(self.count.saturating_sub(first));
        // Word of line `j` (counted from `first`) and pair `p`.
        let at = |j: usize, p: usize| (j / width) * pairs * width + p * width + j % width;
        if self.depth_stride == 1 {
            // Each line's depth run is contiguous: convert it pair by pair.
            for j in 0..lines {
                let line = &self.data[(first + j) * self.line_stride..][..self.depth];
                for (p, two) in line.chunks_exact(2).enumerate() {
                    out[at(j, p)] = pair(two[0], two[1]);
                }
                if self.depth % 2 == 1 {
                    out[at(j, pairs - 1)] = pair(line[self.depth - 1], 0.0);
                }
            }
        } else {
            // View::new makes one of the strides 1.
            debug_assert_eq!(self.line_stride, 1);
            // Each depth's run over the lines is contiguous: interleave two of them, a whole
            // run of `blocks * width` lines at a time (a transposed operand read one block of
            // 8 lines at a time would touch a new cache line per 32 bytes).
            let zeros = vec![0f32; lines];
            for p in 0..pairs {
                let lo = &self.data[2 * p * self.depth_stride + first..][..lines];
                let hi = if 2 * p + 1 < self.depth {
                    &self.data[(2 * p + 1) * self.depth_stride + first..][..lines]
                } else {
                    &zeros[..]
                };
                for (block, (lo, hi)) in lo.chunks(width).zip(hi.chunks(width)).enumerate() {
                    let words = &mut out[block * pairs * width + p * width..][..lo.len()];
                    for ((w, &l), &h) in words.iter_mut().zip(lo).zip(hi) {
                        *w = pair(l, h);
                    }
                }
            }
        }
    }
}

impl<'a> View<'a> {
    /// The rows of this matrix as lines (the `A` operand).
    fn rows_as_lines(&self) -> Lines<'a> {
        Lines {
            data: self.data,
            count: self.rows,
            depth: self.cols,
            line_stride: self.row_stride,
            depth_stride: self.col_stride,
        }
    }

    /// The columns of this matrix as lines (the `B` operand).
    fn cols_as_lines(&self) -> Lines<'a> {
        Lines {
            data: self.data,
            count: self.cols,
            depth: self.rows,
            line_stride: self.col_stride,
            depth_stride: self.row_stride,
        }
    }
}

/// The right-hand operand `B [k, n]`, packed once and usable for many products (the
/// recurrent weight of an LSTM is packed once per sequence, not once per step).
pub struct PackedB {
    k: usize,
    n: usize,
    /// Row pairs: `ceil(k / 2)`.
    pairs: usize,
    data: Vec<u32>,
}

impl PackedB {
    pub fn new(b: View) -> Self {
        let (k, n) = (b.rows, b.cols);
        let pairs = k.div_ceil(2);
        let panels = n.div_ceil(NR);
        let mut data = vec![0u32; panels * pairs * NR];
        if data.is_empty() {
            return Self { k, n, pairs, data };
        }
        let lines = b.cols_as_lines();
        let pack = |(panel, out): (usize, &mut [u32])| lines.pack(panel, 1, NR, out);
        if panels > 4 {
            data.par_chunks_mut(pairs * NR).enumerate().for_each(pack);
        } else {
            data.chunks_mut(pairs * NR).enumerate().for_each(pack);
        }
        Self { k, n, pairs, data }
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn n(&self) -> usize {
        self.n
    }

    fn panel(&self, panel: usize) -> &[u32] {
        &self.data[panel * self.pairs * NR..][..self.pairs * NR]
    }
}

impl std::fmt::Debug for PackedB {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedB({} x {})", self.k(), self.n())
    }
}

/// `A [m, k]` packed by blocks of [`MR`] rows.
fn pack_a(a: View, pairs: usize) -> Vec<u32> {
    let blocks = a.rows.div_ceil(MR);
    let mut data = vec![0u32; blocks * pairs * MR];
    let lines = a.rows_as_lines();
    if data.is_empty() {
        return data;
    }
    // Blocks are packed 16 at a time (128 rows), in parallel when there are several groups.
    const GROUP: usize = 16;
    let pack_group = |(group, out): (usize, &mut [u32])| {
        lines.pack(group * GROUP, out.len() / (pairs * MR), MR, out)
    };
    if blocks > GROUP {
        data.par_chunks_mut(GROUP * pairs * MR)
            .enumerate()
            .for_each(pack_group);
    } else {
        data.chunks_mut(GROUP * pairs * MR)
            .enumerate()
            .for_each(pack_group);
    }
    data
}

/// `dst [m, n]` (row-major, dense) `(+)= A B`. `threads` > 1 splits the tiles over rayon's pool.
///
/// Panics if the shapes disagree.
pub fn gemm(dst: &mut [f32], accumulate: bool, a: View, b: &PackedB, threads: usize) {
    let (m, n, k) = (a.rows, b.n, b.k);
    assert_eq!(a.cols, k, "inner dimensions differ");
    assert!(dst.len() >= m * n, "destination too short");
    let fast = accelerated();
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    let pairs = b.pairs;
    let packed_a = pack_a(a, pairs);
    let a_block = |block: usize| &packed_a[block * b.pairs * MR..][..b.pairs * MR];
    let panels = n.div_ceil(NR);
    let groups = m.div_ceil(ROW_GROUP);
    // Tiles of (row group, panel range), each writing its own part of dst.
    let panel_chunk = if threads > 1 {
        panels.div_ceil((4 * threads).div_ceil(groups)).max(1)
    } else {
        panels
    };
    let tiles: Vec<(usize, usize)> = (0..groups)
        .flat_map(|g| (0..panels).step_by(panel_chunk).map(move |p| (g, p)))
        .collect();
    let out = SharedDst(dst.as_mut_ptr());
    let run_tile = |&(group, first_panel): &(usize, usize)| {
        let rows = group * ROW_GROUP..((group + 1) * ROW_GROUP).min(m);
        for panel in first_panel..(first_panel + panel_chunk).min(panels) {
            let cols = panel * NR..((panel + 1) * NR).min(n);
            for block in rows.start / MR..rows.end.div_ceil(MR) {
                let mut tile = [[0f32; NR]; MR];
                let (a, b) = (a_block(block), b.panel(panel));
                if fast {
                    // SAFETY: the CPU has the instructions (accelerated()); both packed
                    // operands hold `pairs` pairs of MR (A) and NR (B) words.
                    unsafe { kernel(pairs, a, b, &mut tile) };
                } else {
                    portable_kernel(pairs, a, b, &mut tile);
                }
                for (i, row) in tile.iter().enumerate() {
                    let r = block * MR + i;
                    if r >= m {
                        break;
                    }
                    // SAFETY: tiles are disjoint in (row, column), so no two threads write
                    // the same element; r < m and cols end <= n bound the slice in dst.
                    let d = unsafe { out.row(r * n + cols.start, cols.len()) };
                    if accumulate {
                        for (x, y) in d.iter_mut().zip(row) {
                            *x += y;
                        }
                    } else {
                        d.copy_from_slice(&row[..cols.len()]);
                    }
                }
            }
        }
    };
    if threads > 1 && tiles.len() > 1 {
        tiles.par_iter().for_each(run_tile);
    } else {
        tiles.iter().for_each(run_tile);
    }
}

struct SharedDst(*mut f32);
// SAFETY: used only to hand disjoint parts of one destination to the tiles of `gemm`.
unsafe impl Sync for SharedDst {}
impl SharedDst {
    /// # Safety
    /// The range must be inside the destination and written by no one else meanwhile.
    #[allow(clippy::mut_from_ref)]
    unsafe fn row(&self, start: usize, len: usize) -> &mut [f32] {
        std::slice::from_raw_parts_mut(self.0.add(start), len)
    }
}

/// One `MR x NR` tile over all `pairs`: `tile = A_block B_panel`.
///
/// # Safety
/// The CPU must have AVX512F and AVX512-BF16; `a` holds `pairs * MR` words, `b` `pairs * NR`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn kernel(pairs: usize, a: &[u32], b: &[u32], tile: &mut [[f32; NR]; MR]) {
    use std::arch::x86_64::*;
    debug_assert!(a.len() >= pairs * MR && b.len() >= pairs * NR);
    let (a, b) = (a.as_ptr(), b.as_ptr());
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    for p in 0..pairs {
        let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR) as *const _));
        let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR + 16) as *const _));
        for (i, acc_row) in acc.iter_mut().enumerate() {
            let ai: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(p * MR + i) as i32));
            acc_row[0] = _mm512_dpbf16_ps(acc_row[0], ai, b0);
            acc_row[1] = _mm512_dpbf16_ps(acc_row[1], ai, b1);
        }
    }
    for (row, acc_row) in tile.iter_mut().zip(&acc) {
        _mm512_storeu_ps(row.as_mut_ptr(), acc_row[0]);
        _mm512_storeu_ps(row.as_mut_ptr().add(16), acc_row[1]);
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn kernel(_: usize, _: &[u32], _: &[u32], _: &mut [[f32; NR]; MR]) {
    unreachable!("accelerated() is false off x86_64")
}

/// [`kernel`] in plain Rust, for CPUs without AVX512-BF16: each bf16 product is exact in f32,
/// so only the order and rounding of the sums can differ.
fn portable_kernel(pairs: usize, a: &[u32], b: &[u32], tile: &mut [[f32; NR]; MR]) {
    let halves = |w: u32| (from_bf16(w as u16), from_bf16((w >> 16) as u16));
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// `dst (+)= A B` with `B` packed for this call only.
    fn gemm_unpacked(dst: &mut [f32], accumulate: bool, a: View, b: View, threads: usize) {
        gemm(dst, accumulate, a, &PackedB::new(b), threads)
    }

    fn random(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// The product of the bf16-rounded operands in f64: what the kernel computes, up to
    /// the order of its f32 sums.
    fn rounded_product(a: View, b: View) -> Vec<f64> {
        let r = |x: f32| from_bf16(to_bf16(x)) as f64;
        let mut out = vec![0.0; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                out[i * b.cols + j] = (0..a.cols).map(|p| r(a.at(i, p)) * r(b.at(p, j))).sum();
            }
        }
        out
    }

    #[test]
    fn bf16_rounding_is_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        assert_eq!(from_bf16(to_bf16(1.0 + 1.0 / 256.0)), 1.0); // tie: to even
        assert_eq!(from_bf16(to_bf16(1.0 + 3.0 / 256.0)), 1.0 + 4.0 / 256.0); // tie: to even
        assert_eq!(from_bf16(to_bf16(1.0 + 1.5 / 256.0)), 1.0 + 2.0 / 256.0);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(f32::INFINITY)), f32::INFINITY);
        assert_eq!(from_bf16(to_bf16(-2.5)), -2.5);
    }

    #[test]
    fn products_match_the_rounded_operands_for_every_layout_and_edge() {
        // Odd k, partial tiles in both directions, a single row, several row groups.
        for &(m, n, k) in &[
            (1, 1, 1),
            (3, 5, 7),
            (8, 32, 2),
            (70, 45, 33),
            (131, 100, 64),
        ] {
            for (at, bt) in [(false, false), (true, false), (false, true), (true, true)] {
                let (a_data, b_data) = (random(m * k, 1), random(k * n, 2));
                let (a, b) = (View::new(&a_data, m, k, at), View::new(&b_data, k, n, bt));
                let want = rounded_product(a, b);
                for threads in [1, 3] {
                    let mut got = vec![0.5f32; m * n];
                    gemm_unpacked(&mut got, false, a, b, threads);
                    for (g, w) in got.iter().zip(&want) {
                        assert!(
                            (*g as f64 - w).abs() < 1e-5 * (k as f64),
                            "{m}x{n}x{k}: {g} vs {w}"
                        );
                    }
                    let mut acc = vec![0.5f32; m * n];
                    gemm_unpacked(&mut acc, true, a, b, threads);
                    for (g, w) in acc.iter().zip(&want) {
                        assert!((*g as f64 - 0.5 - w).abs() < 1e-5 * (k as f64));
                    }
                }
            }
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let (m, n, k) = (300, 700, 256);
        let (a, b) = (random(m * k, 3), random(k * n, 4));
        let packed = PackedB::new(View::new(&b, k, n, false));
        let run = |threads| {
            let mut out = vec![0f32; m * n];
            gemm(
                &mut out,
                false,
                View::new(&a, m, k, false),
                &packed,
                threads,
            );
            out
        };
        let one = run(1);
        assert_eq!(one, run(2));
        assert_eq!(one, run(7));
    }

    #[test]
    fn the_portable_kernel_agrees_with_the_instruction() {
        if !accelerated() {
            // Nothing to compare with: every other test here ran the portable kernel.
            return;
        }
        let pairs = 37;
        let a: Vec<u32> = random(pairs * MR, 7)
            .iter()
            .map(|&x| pair(x, -x / 3.0))
            .collect();
        let b: Vec<u32> = random(pairs * NR, 8)
            .iter()
            .map(|&x| pair(x / 2.0, x))
            .collect();
        let (mut fast, mut portable) = ([[0f32; NR]; MR], [[0f32; NR]; MR]);
        // SAFETY: accelerated() checked; a and b hold `pairs` pairs of MR and NR words.
        unsafe { kernel(pairs, &a, &b, &mut fast) };
        portable_kernel(pairs, &a, &b, &mut portable);
        for (f, p) in fast.iter().flatten().zip(portable.iter().flatten()) {
            assert!((f - p).abs() < 1e-4, "{f} vs {p}");
        }
    }

    #[test]
    fn bf16_products_stay_close_to_f32() {
        // bf16 keeps 8 bits of mantissa: relative error per product about 2^-8, and random
        // signs make the errors of a k-term sum grow like sqrt(k).
        let (m, n, k) = (16, 16, 512);
        let (a, b) = (random(m * k, 5), random(k * n, 6));
        let mut got = vec![0f32; m * n];
        gemm_unpacked(
            &mut got,
            false,
            View::new(&a, m, k, false),
            View::new(&b, k, n, false),
            1,
        );
        for i in 0..m {
            for j in 0..n {
                let exact: f64 = (0..k)
                    .map(|p| a[i * k + p] as f64 * b[p * n + j] as f64)
                    .sum();
                assert!(
                    (got[i * n + j] as f64 - exact).abs() < 0.1,
                    "{} vs {exact}",
                    got[i * n + j]
                );
            }
        }
    }
}
