//! Matrix products of f32 matrices on packed operands, in one of two [`Format`]s:
//!
//! - **bf16**: operands rounded to bfloat16 (round to nearest even) while being packed, f32
//!   sums, on the AVX512-BF16 instruction `vdpbf16ps` (16 lanes, each adding the dot product
//!   of two bf16 pairs to an f32 accumulator: twice the multiply-adds of an f32 FMA). The mixed
//!   precision of TPUs and PyTorch's autocast: 8 bits of mantissa in the products.
//! - **f32**: plain f32 fused multiply-adds (AVX-512F).
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

use rayon::prelude::*;

/// Rows of a micro-tile.
pub const MR: usize = 8;
/// Columns of a micro-tile (two 16-lane registers).
pub const NR: usize = 32;
/// Rows of `A` that share one pass over a panel of `B` (the panel stays in L1 for them).
const ROW_GROUP: usize = 64;
/// Most panels of a row-major `B` packed by one task: 8 panels read 1 KiB of each f32 row.
const PANEL_GROUP: usize = 8;

/// How a packed operand holds its numbers, and so which kernel multiplies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Two depths per word, as a pair of bfloat16.
    Bf16,
    /// One depth per word, as f32.
    F32,
}

impl Format {
    fn depth_per_word(self) -> usize {
        match self {
            Format::Bf16 => 2,
            Format::F32 => 1,
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

    /// Whether the f32 kernel can read this matrix's blocks of rows where they are, with no
    /// packing: a row-major matrix (the kernel follows its MR rows along the depth), or a
    /// transposed one (each depth's rows side by side) unless its row count is a multiple of
    /// 512: depths a power-of-two number of kilobytes apart fall into the same cache sets (a
    /// 4096-row transposed operand read in place ran 15% slower than packed). Row-major rows
    /// 4 or 8 KiB apart were no slower in place than packed (`gemm_shapes`).
    fn in_place_layout(&self) -> bool {
        let transposed = self.row_stride == 1 && self.col_stride == self.rows;
        let row_major = self.col_stride == 1 && self.row_stride >= self.cols;
        (transposed && !self.rows.is_multiple_of(512)) || row_major
    }

    #[cfg(test)]
    fn at(&self, r: usize, c: usize) -> f32 {
        self.data[r * self.row_stride + c * self.col_stride]
    }
}

/// Packs `lines` (rows of `A` or columns of `B`) of an operand into words: word
/// `p * width + j` holds depth word `p` of line `first + j` (depth `p` in f32, the pair
/// `(2p, 2p + 1)` in bf16). Element `(line, depth)` is `data[line * line_stride + depth *
/// depth_stride]`; the words of lines past `count` and the odd depth past `depth` are zero.
struct Lines<'a> {
    data: &'a [f32],
    count: usize,
    depth: usize,
    line_stride: usize,
    depth_stride: usize,
}

impl Lines<'_> {
    /// Packs `blocks` consecutive blocks of `width` lines, the first starting at line
    /// `first_block * width`, into `out` (one block after another), writing every word of
    /// `out`: the packing functions write the words of the lines that exist, and only the
    /// words of missing lines are zeroed here (zeroing all of `out` first was a `memset` of
    /// every packed operand, 1% of a `gnmt-v2-4x1024` step).
    fn pack(
        &self,
        format: Format,
        first_block: usize,
        blocks: usize,
        width: usize,
        out: &mut [MaybeUninit<u32>],
    ) {
        let first = first_block * width;
        let lines = (blocks * width).min(self.count.saturating_sub(first));
        if self.depth_stride == 1 {
            pack_depth_runs(self, format, first, lines, width, out)
        } else {
            // View::new makes one of the strides 1.
            debug_assert_eq!(self.line_stride, 1);
            pack_line_runs(self, format, first, lines, width, out)
        }
        let block_words = self.words(format) * width;
        let zero = MaybeUninit::new(0);
        let (full, rest) = (lines / width, lines % width);
        if rest > 0 {
            for word in out[full * block_words..][..block_words].chunks_mut(width) {
                word[rest..].fill(zero);
            }
        }
        out[lines.div_ceil(width) * block_words..].fill(zero);
    }

    /// Every line packed into blocks of `width` (the last block padded with zero lines), as
    /// fresh words: `chunk_blocks` blocks per call of [`Lines::pack`], the calls in parallel
    /// when `parallel`. Nothing is zeroed first, since `pack` writes every word (freed memory
    /// is reused, so `vec![0; n]` was a `memset` of the whole operand on the calling thread).
    fn pack_all(
        &self,
        format: Format,
        width: usize,
        chunk_blocks: usize,
        parallel: bool,
    ) -> Vec<u32> {
        let block_words = self.words(format) * width;
        let len = self.count.div_ceil(width) * block_words;
        let mut data: Vec<u32> = Vec::with_capacity(len);
        if len == 0 {
            return data;
        }
        let fill = |(c, out): (usize, &mut [MaybeUninit<u32>])| {
            self.pack(
                format,
                c * chunk_blocks,
                out.len() / block_words,
                width,
                out,
            )
        };
        let spare = &mut data.spare_capacity_mut()[..len];
        if parallel {
            spare
                .par_chunks_mut(chunk_blocks * block_words)
                .enumerate()
                .for_each(fill);
        } else {
            spare
                .chunks_mut(chunk_blocks * block_words)
                .enumerate()
                .for_each(fill);
        }
        // SAFETY: the chunks cover all `len` words, and `pack` writes every word of its output.
        unsafe { data.set_len(len) };
        data
    }

    /// Depth words per line: `depth` in f32, `ceil(depth / 2)` in bf16.
    fn words(&self, format: Format) -> usize {
        self.depth.div_ceil(format.depth_per_word())
    }
}

/// [`Lines::pack`] where each line's depths are contiguous (a row-major `A`, a transposed `B`):
/// a transposition. A block of [`MR`] lines (the `A` operand) goes tile by tile; wider blocks
/// (a `B` panel) line by line, each line's words spread over its block's rows of words.
fn pack_depth_runs(
    l: &Lines,
    format: Format,
    first: usize,
    lines: usize,
    width: usize,
    out: &mut [MaybeUninit<u32>],
) {
    if width <= MR {
        pack_depth_runs_tiled(l, format, first, lines, width, out)
    } else {
        pack_depth_runs_by_line(l, format, first, lines, width, out)
    }
}

/// Words of each line converted at once by [`pack_depth_runs_tiled`].
const TILE: usize = 32;

/// [`TILE`] words of every line of a block, each line's run converted in one vectorised pass
/// and then spread over the block's rows of words, so a tile's writes stay in L1. For the
/// narrow blocks of `A` this packs faster than line by line (whose words land 32 bytes apart,
/// a line's run of a thousand words over a thousand cache lines, 8 times over): bf16
/// `2048 x 1024 x 32000` with `B` packed before, 192-197 -> 201-208 GFLOP/s (`gemm_shapes`).
/// For the 32-line panels of `B` it measured slower, in f32 markedly (the output layer's
/// `W^T`: 32 -> 58 ms).
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512dq+avx512vl",
    "x86_64+avx2+fma"
))]
fn pack_depth_runs_tiled(
    l: &Lines,
    format: Format,
    first: usize,
    lines: usize,
    width: usize,
    out: &mut [MaybeUninit<u32>],
) {
    let (per_word, words) = (format.depth_per_word(), l.words(format));
    for (block, block_out) in out.chunks_mut(words * width).enumerate() {
        let rows = lines.saturating_sub(block * width).min(width);
        for p0 in (0..words).step_by(TILE) {
            let n = TILE.min(words - p0);
            let depths = p0 * per_word..((p0 + n) * per_word).min(l.depth);
            for j in 0..rows {
                let line = &l.data[(first + block * width + j) * l.line_stride..][..l.depth];
                let mut tile = [0u32; TILE];
                convert(format, &line[depths.clone()], &mut tile[..n]);
                for (p, &w) in tile[..n].iter().enumerate() {
                    block_out[(p0 + p) * width + j] = MaybeUninit::new(w);
                }
            }
        }
    }
}

/// Line by line: each line's words spread straight over its block's rows of words.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512dq+avx512vl",
    "x86_64+avx2+fma"
))]
fn pack_depth_runs_by_line(
    l: &Lines,
    format: Format,
    first: usize,
    lines: usize,
    width: usize,
    out: &mut [MaybeUninit<u32>],
) {
    let words = l.words(format);
    for j in 0..lines {
        let line = &l.data[(first + j) * l.line_stride..][..l.depth];
        let dst = &mut out[(j / width) * words * width + j % width..];
        match format {
            Format::F32 => {
                for (p, &x) in line.iter().enumerate() {
                    dst[p * width] = MaybeUninit::new(x.to_bits());
                }
            }
            Format::Bf16 => {
                let (twos, rest) = line.as_chunks::<2>();
                for (p, &[lo, hi]) in twos.iter().enumerate() {
                    dst[p * width] = MaybeUninit::new(pair(lo, hi));
                }
                if let [last] = rest {
                    dst[twos.len() * width] = MaybeUninit::new(pair(*last, 0.0));
                }
            }
        }
    }
}

/// Consecutive depths `run` of one line into words: one per depth in f32, one per pair in bf16
/// (an odd last depth paired with zero). [`pack_depth_runs_by_line`] writes the same words
/// spread `width` apart; one function for both, taking a `put(p, word)` callback, cost 5% of
/// the bf16 `2048 x 1024 x 32000` product here, since the contiguous loop no longer vectorised.
#[inline(always)]
fn convert(format: Format, run: &[f32], words: &mut [u32]) {
    match format {
        Format::F32 => {
            for (w, &x) in words.iter_mut().zip(run) {
                *w = x.to_bits();
            }
        }
        Format::Bf16 => {
            let (twos, rest) = run.as_chunks::<2>();
            for (w, &[lo, hi]) in words.iter_mut().zip(twos) {
                *w = pair(lo, hi);
            }
            if let [last] = rest {
                words[twos.len()] = pair(*last, 0.0);
            }
        }
    }
}

/// [`Lines::pack`] where each depth's values of consecutive lines are contiguous (a
/// row-major `B`, a transposed `A`): depth by depth, the whole run of `lines` lines (every block
/// of this call) is read in one sweep and converted into the blocks' rows of words. (A
/// `B [k, n]` packed one 32-column panel at a time read 128 bytes per row, a new page per
/// depth: 4 ns a word for the output layer's weight.)
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512dq+avx512vl",
    "x86_64+avx2+fma"
))]
fn pack_line_runs(
    l: &Lines,
    format: Format,
    first: usize,
    lines: usize,
    width: usize,
    out: &mut [MaybeUninit<u32>],
) {
    let words = l.words(format);
    let zeros = vec![0f32; if format == Format::Bf16 { lines } else { 0 }];
    for p in 0..words {
        let at = |d: usize| &l.data[d * l.depth_stride + first..][..lines];
        let (lo, hi) = match format {
            Format::F32 => (at(p), &[][..]),
            Format::Bf16 if 2 * p + 1 < l.depth => (at(2 * p), at(2 * p + 1)),
            Format::Bf16 => (at(2 * p), &zeros[..]),
        };
        for (block, lo) in lo.chunks(width).enumerate() {
            let dst = &mut out[block * words * width + p * width..][..lo.len()];
            match format {
                Format::F32 => {
                    for (w, &x) in dst.iter_mut().zip(lo) {
                        *w = MaybeUninit::new(x.to_bits());
                    }
                }
                Format::Bf16 => {
                    let hi = &hi[block * width..][..lo.len()];
                    for ((w, &l), &h) in dst.iter_mut().zip(lo).zip(hi) {
                        *w = MaybeUninit::new(pair(l, h));
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
    format: Format,
    k: usize,
    n: usize,
    /// Depth words: `k` in f32, `ceil(k / 2)` in bf16.
    pairs: usize,
    data: Vec<u32>,
}

impl PackedB {
    pub fn new(b: View, format: Format) -> Self {
        let (k, n) = (b.rows, b.cols);
        let pairs = k.div_ceil(format.depth_per_word());
        let panels = n.div_ceil(NR);
        let lines = b.cols_as_lines();
        // A row-major `B` is read along its rows, so a task packs several panels in one sweep
        // (see `pack_line_runs`); as long as there are a few tasks per thread.
        let group = if lines.depth_stride == 1 {
            1
        } else {
            (panels / (4 * rayon::current_num_threads())).clamp(1, PANEL_GROUP)
        };
        let data = lines.pack_all(format, NR, group, panels > 4);
        Self {
            format,
            k,
            n,
            pairs,
            data,
        }
    }

    pub fn format(&self) -> Format {
        self.format
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
        write!(f, "PackedB({} x {}, {:?})", self.k(), self.n(), self.format)
    }
}

/// `A [m, k]` packed by blocks of [`MR`] rows.
fn pack_a(a: View, pairs: usize, format: Format) -> Vec<u32> {
    let blocks = a.rows.div_ceil(MR);
    let lines = a.rows_as_lines();
    debug_assert_eq!(lines.words(format), pairs);
    // Blocks are packed 16 at a time (128 rows), in parallel when there are several groups.
    const GROUP: usize = 16;
    lines.pack_all(format, MR, GROUP, blocks > GROUP)
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

/// How a finished tile goes into the destination.
#[derive(Clone, Copy)]
enum Write<'a> {
    Store,
    Accumulate,
    Bias(&'a [f32]),
}

/// The product into `dst`, which holds at least `m * n` elements (initialised unless `write`
/// is `Store` or `Bias`, which only write); `in_place` false packs every block of `A` (the
/// tests compare both ways).
fn gemm_reading_a(dst: Dst, write: Write, a: View, b: &PackedB, threads: usize, in_place: bool) {
    let (m, n, k) = (a.rows, b.n, b.k);
    assert_eq!(a.cols, k, "inner dimensions differ");
    let fast = match b.format {
        Format::Bf16 => accelerated(),
        Format::F32 => accelerated_f32(),
    };
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        let zeros = vec![0.0; n];
        for r in 0..m {
            // SAFETY: row r < m of the destination, written by this thread alone.
            unsafe { dst.write_row(r * n, write, &zeros, 0) };
        }
        return;
    }
    let pairs = b.pairs;
    // An f32 `A` needs no packing when its storage already lets the kernel find each
    // block's rows at every depth: the kernel reads it in place (packing the largest
    // operands, `dZ` of the output layer above all, cost a tenth of a training step), and
    // only a last partial block is packed. bf16 is always packed (the words are pairs).
    let read_in_place = in_place && b.format == Format::F32 && m >= MR && a.in_place_layout();
    let full_blocks = if read_in_place { m / MR } else { 0 };
    let packed_a = if read_in_place {
        let start = full_blocks * MR;
        let tail = View {
            data: &a.data[start * a.row_stride..],
            rows: m - start,
            ..a
        };
        pack_a(tail, pairs, b.format)
    } else {
        pack_a(a, pairs, b.format)
    };
    // SAFETY: f32 and u32 have the same size and alignment; the kernels read these words as
    // f32 again.
    let a_words =
        unsafe { std::slice::from_raw_parts(a.data.as_ptr() as *const u32, a.data.len()) };
    let a_block = |block: usize| -> ABlock {
        if block < full_blocks {
            let span = (MR - 1) * a.row_stride + (pairs - 1) * a.col_stride + 1;
            ABlock {
                words: &a_words[block * MR * a.row_stride..][..span],
                row_stride: a.row_stride,
                depth_stride: a.col_stride,
            }
        } else {
            let block = block - full_blocks;
            ABlock {
                words: &packed_a[block * pairs * MR..][..pairs * MR],
                row_stride: 1,
                depth_stride: MR,
            }
        }
    };
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
    let b_format = b.format;
    let run_tile = |&(group, first_panel): &(usize, usize)| {
        let rows = group * ROW_GROUP..((group + 1) * ROW_GROUP).min(m);
        // Every kernel overwrites the whole tile: zeroing it per call was a `memset` call per
        // kernel call, 5% of a beam step.
        let mut tile = [[0f32; NR]; MR];
        for panel in first_panel..(first_panel + panel_chunk).min(panels) {
            let cols = panel * NR..((panel + 1) * NR).min(n);
            for block in rows.start / MR..rows.end.div_ceil(MR) {
                let (a, b) = (a_block(block), b.panel(panel));
                // Rows of this block that exist: the kernels for fewer than MR rows skip the
                // rest (a recurrence's last steps, with few rows still running, were mostly
                // padding rows multiplied out).
                let live = (m - block * MR).min(MR);
                macro_rules! rows {
                    ($kernel:ident, $($arg:expr),*) => {
                        match live {
                            1 => $kernel::<1>($($arg),*),
                            2 => $kernel::<2>($($arg),*),
                            3 => $kernel::<3>($($arg),*),
                            4 => $kernel::<4>($($arg),*),
                            5 => $kernel::<5>($($arg),*),
                            6 => $kernel::<6>($($arg),*),
                            7 => $kernel::<7>($($arg),*),
                            _ => $kernel::<MR>($($arg),*),
                        }
                    };
                }
                // A full panel goes from the registers straight into `dst`; a partial one
                // (and the portable kernels' tiles) through `tile` and `write_row` (storing
                // every tile through the buffer, a `memcpy` call per row, took about 2% of a
                // `gnmt-v2-4x1024` step's perf samples).
                let direct = fast && cols.len() == NR;
                let out = if direct {
                    TileOut::Direct(DirectTile {
                        // SAFETY: row block * MR < m, column cols.start < n: inside dst.
                        first: unsafe { dst.0.add(block * MR * n + cols.start) },
                        row_len: n,
                        write,
                        column: cols.start,
                    })
                } else {
                    TileOut::Buffer(&mut tile)
                };
                match (b_format, fast) {
                    // SAFETY: the CPU has the instructions (accelerated() or
                    // accelerated_f32()); A's block spans `pairs` depth words of its MR
                    // rows (bf16 is always packed), B `pairs` of NR; a direct tile's `live`
                    // rows of NR columns lie in dst, written by this tile alone.
                    (Format::Bf16, true) => unsafe { rows!(kernel, pairs, a.words, b, out) },
                    (Format::F32, true) => unsafe { rows!(kernel_f32, pairs, a, b, out) },
                    (Format::Bf16, false) => portable_kernel(pairs, a.words, b, &mut tile),
                    (Format::F32, false) => portable_kernel_f32(pairs, a, b, &mut tile),
                }
                if direct {
                    continue;
                }
                for (i, row) in tile.iter().enumerate() {
                    let r = block * MR + i;
                    if r >= m {
                        break;
                    }
                    // SAFETY: tiles are disjoint in (row, column), so no two threads write
                    // the same element; r < m and cols end <= n bound the row in dst.
                    unsafe {
                        dst.write_row(r * n + cols.start, write, &row[..cols.len()], cols.start)
                    };
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

/// The destination of a product, shared by the threads that write its disjoint tiles.
#[derive(Clone, Copy)]
struct Dst(*mut f32);
// SAFETY: used only to hand disjoint parts of one destination to the tiles of a product.
unsafe impl Sync for Dst {}
unsafe impl Send for Dst {}

impl Dst {
    /// Puts a finished row segment `part` at element `start`: stores it, adds it to what is
    /// there (`Accumulate`, the only way that reads), or stores it plus `bias[column..]`.
    ///
    /// # Safety
    /// `start..start + part.len()` must be inside the destination, written by no one else
    /// meanwhile, and already initialised for `Accumulate`.
    unsafe fn write_row(self, start: usize, write: Write, part: &[f32], column: usize) {
        let d = self.0.add(start);
        match write {
            Write::Store => std::ptr::copy_nonoverlapping(part.as_ptr(), d, part.len()),
            Write::Accumulate => {
                let d = std::slice::from_raw_parts_mut(d, part.len());
                for (x, y) in d.iter_mut().zip(part) {
                    *x += y;
                }
            }
            Write::Bias(bias) => {
                for (j, (y, b)) in part.iter().zip(&bias[column..]).enumerate() {
                    d.add(j).write(y + b);
                }
            }
        }
    }
}

/// Where a kernel puts its finished tile.
enum TileOut<'a> {
    /// Into a buffer, row `i` of the tile in row `i` (a panel narrower than [`NR`]).
    Buffer(&'a mut [[f32; NR]; MR]),
    /// Into the destination, written the way [`Dst::write_row`] writes.
    Direct(DirectTile<'a>),
}

/// A full-width tile's place in the destination: its row `i` is the `NR` elements from
/// `first + i * row_len`; the bias, if any, is read from `column` on.
#[derive(Clone, Copy)]
struct DirectTile<'a> {
    first: *mut f32,
    row_len: usize,
    write: Write<'a>,
    column: usize,
}

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
unsafe fn kernel<const R: usize>(pairs: usize, a: &[u32], b: &[u32], out: TileOut) {
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
unsafe fn kernel<const R: usize>(_: usize, _: &[u32], _: &[u32], _: TileOut) {
    unreachable!("accelerated() is false off x86_64")
}

/// [`kernel`] in plain Rust, for CPUs without AVX512-BF16: each bf16 product is exact in f32,
/// so only the order and rounding of the sums can differ.
fn portable_kernel(pairs: usize, a: &[u32], b: &[u32], tile: &mut [[f32; NR]; MR]) {
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

/// Where a block of `MR` rows of `A` lies: depth `p` of row `i` is word
/// `p * depth_stride + i * row_stride` of `words` (packed: row stride 1, depth stride MR; read
/// in place from a transposed matrix: 1 and `m`; from a row-major one: the row length and 1).
#[derive(Clone, Copy)]
struct ABlock<'a> {
    words: &'a [u32],
    row_stride: usize,
    depth_stride: usize,
}

impl ABlock<'_> {
    fn holds(&self, k: usize) -> bool {
        k == 0 || self.words.len() > (k - 1) * self.depth_stride + (MR - 1) * self.row_stride
    }
}

/// The first `R` rows of one `MR x NR` tile over all `k` depths in f32: `tile = A_block
/// B_panel`, each element a chain of fused multiply-adds in depth order, whatever the block's
/// layout (a last block with fewer than MR rows multiplies only those).
///
/// # Safety
/// The CPU must have AVX512F; `b` holds `k * NR` words; `out` as for [`put_tile!`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn kernel_f32<const R: usize>(k: usize, a: ABlock, b: &[u32], out: TileOut) {
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
unsafe fn kernel_f32<const R: usize>(_: usize, _: ABlock, _: &[u32], _: TileOut) {
    unreachable!("accelerated_f32() is false off x86_64")
}

/// [`kernel_f32`] in plain Rust: the same fused multiply-adds in the same order, so the same
/// bits (`mul_add` is an FMA instruction where the CPU has one, exact software otherwise).
#[multiversion::multiversion(targets("x86_64+avx2+fma"))]
fn portable_kernel_f32(k: usize, a: ABlock, b: &[u32], tile: &mut [[f32; NR]; MR]) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// `dst (+)= A B` with `B` packed for this call only.
    fn gemm_unpacked(dst: &mut [f32], accumulate: bool, a: View, b: View, threads: usize) {
        gemm(dst, accumulate, a, &PackedB::new(b, Format::Bf16), threads)
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

    /// Every packing path (lines contiguous along the depth or across it, f32 and bf16, odd
    /// depths, partial last blocks, several blocks per call, a first block past the start)
    /// writes exactly the words of the definition: word `p * width + j` of a block holds
    /// depth word `p` of line `j`, zero past the last line and past the last depth.
    #[test]
    fn packing_writes_the_words_of_the_definition() {
        for format in [Format::F32, Format::Bf16] {
            for (rows, cols) in [(1, 1), (7, 5), (37, 64), (70, 33), (130, 300)] {
                for transposed in [false, true] {
                    let data = random(rows * cols, (rows * 1000 + cols) as u64);
                    let view = View::new(&data, rows, cols, transposed);
                    for (lines, width) in [(view.rows_as_lines(), MR), (view.cols_as_lines(), NR)] {
                        let words = lines.words(format);
                        let at = |line: usize, d: usize| {
                            if line < lines.count && d < lines.depth {
                                lines.data[line * lines.line_stride + d * lines.depth_stride]
                            } else {
                                0.0
                            }
                        };
                        let total_blocks = lines.count.div_ceil(width);
                        let calls = [(0, total_blocks), (0, 1), (total_blocks - 1, 1), (1, 3)];
                        // Calls start at a block that has lines (and may run past the end).
                        for (first_block, blocks) in
                            calls.into_iter().filter(|&(f, _)| f < total_blocks)
                        {
                            // Every word starts as a sentinel: pack must write each one.
                            let mut out =
                                vec![MaybeUninit::new(0xdead_beef_u32); blocks * words * width];
                            lines.pack(format, first_block, blocks, width, &mut out);
                            // SAFETY: every word was initialised (to the sentinel, then by pack).
                            let out: Vec<u32> =
                                out.iter().map(|w| unsafe { w.assume_init() }).collect();
                            for (i, &word) in out.iter().enumerate() {
                                let (block, p, j) =
                                    (i / (words * width), i / width % words, i % width);
                                let line = (first_block + block) * width + j;
                                let want = match format {
                                    Format::F32 => at(line, p).to_bits(),
                                    Format::Bf16 => pair(at(line, 2 * p), at(line, 2 * p + 1)),
                                };
                                assert_eq!(
                                    word, want,
                                    "{format:?} {rows}x{cols} transposed {transposed} width \
                                     {width} blocks {first_block}+{blocks}: word {i}"
                                );
                            }
                        }
                    }
                }
            }
        }
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

    /// Products in `format` against `want(a, b)` within `tolerance * k`, for odd k, partial
    /// tiles in both directions, a single row, several row groups, every operand layout and
    /// thread count; accumulating adds exactly the stored product.
    fn check_every_layout_and_edge(
        format: Format,
        want: fn(View, View) -> Vec<f64>,
        tolerance: f64,
        seed: u64,
    ) {
        for &(m, n, k) in &[
            (1, 1, 1),
            (3, 5, 7),
            (8, 32, 2),
            (70, 45, 33),
            (131, 100, 64),
        ] {
            for (at, bt) in [(false, false), (true, false), (false, true), (true, true)] {
                let (a_data, b_data) = (random(m * k, seed), random(k * n, seed + 1));
                let (a, b) = (View::new(&a_data, m, k, at), View::new(&b_data, k, n, bt));
                let want = want(a, b);
                let packed = PackedB::new(b, format);
                for threads in [1, 3] {
                    let mut got = vec![0.5f32; m * n];
                    gemm(&mut got, false, a, &packed, threads);
                    let mut acc = vec![0.5f32; m * n];
                    gemm(&mut acc, true, a, &packed, threads);
                    let bias = random(n, seed + 2);
                    let mut biased = vec![0.5f32; m * n];
                    gemm_bias(&mut biased, a, &packed, &bias, threads);
                    for (i, ((g, c), w)) in got.iter().zip(&acc).zip(&want).enumerate() {
                        assert!(
                            (*g as f64 - w).abs() < tolerance * k as f64,
                            "{format:?} {m}x{n}x{k}: {g} vs {w}"
                        );
                        assert_eq!(*c, 0.5 + *g, "accumulating adds the same product");
                        assert_eq!(biased[i], *g + bias[i % n], "the bias adds to the product");
                    }
                }
            }
        }
    }

    #[test]
    fn products_match_the_rounded_operands_for_every_layout_and_edge() {
        check_every_layout_and_edge(Format::Bf16, rounded_product, 1e-5, 1);
    }

    /// An f32 `A` read in place, transposed (rows not a multiple of 512) or row-major (also
    /// with rows further apart than their length), a partial last block included, gives the
    /// bits of the same matrix packed.
    #[test]
    fn an_operand_read_in_place_gives_the_packed_bits() {
        let (m, n, k) = (77, 40, 300);
        let stored = random(k * m, 5); // A^T, [k, m]
        let b_data = random(k * n, 6);
        let packed = PackedB::new(View::new(&b_data, k, n, false), Format::F32);
        let product = |a: View, in_place: bool| {
            let mut out = vec![0f32; m * n];
            gemm_reading_a(Dst(out.as_mut_ptr()), Write::Store, a, &packed, 2, in_place);
            out.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        };
        let transposed = View::new(&stored, m, k, true);
        assert!(transposed.in_place_layout());
        let want = product(transposed, false);
        assert_eq!(product(transposed, true), want);
        // The same matrix row-major, rows `k` and `k + 3` words apart.
        for row_stride in [k, k + 3] {
            let rows: Vec<f32> = (0..m * row_stride)
                .map(|i| match (i / row_stride, i % row_stride) {
                    (r, c) if c < k => stored[c * m + r],
                    _ => f32::NAN, // never read
                })
                .collect();
            let row_major = View {
                data: &rows,
                rows: m,
                cols: k,
                row_stride,
                col_stride: 1,
            };
            assert!(row_major.in_place_layout());
            assert_eq!(product(row_major, true), want);
            assert_eq!(product(row_major, false), want);
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let (m, n, k) = (300, 700, 256);
        let (a, b) = (random(m * k, 3), random(k * n, 4));
        for format in [Format::F32, Format::Bf16] {
            let packed = PackedB::new(View::new(&b, k, n, false), format);
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
        let (mut fast, mut portable) = ([[7f32; NR]; MR], [[7f32; NR]; MR]);
        // SAFETY: accelerated() checked; a and b hold `pairs` pairs of MR and NR words.
        unsafe { kernel::<MR>(pairs, &a, &b, TileOut::Buffer(&mut fast)) };
        portable_kernel(pairs, &a, &b, &mut portable);
        for (f, p) in fast.iter().flatten().zip(portable.iter().flatten()) {
            assert!((f - p).abs() < 1e-4, "{f} vs {p}");
        }
        // The kernel for the first 3 rows gives those rows' bits and leaves the rest.
        let mut three = [[7f32; NR]; MR];
        // SAFETY: as above.
        unsafe { kernel::<3>(pairs, &a, &b, TileOut::Buffer(&mut three)) };
        assert_eq!(three[..3], fast[..3]);
        assert!(three[3..].iter().flatten().all(|&x| x == 7.0));
    }

    /// The exact product in f64.
    fn exact_product(a: View, b: View) -> Vec<f64> {
        let mut out = vec![0.0; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                out[i * b.cols + j] = (0..a.cols)
                    .map(|p| a.at(i, p) as f64 * b.at(p, j) as f64)
                    .sum();
            }
        }
        out
    }

    #[test]
    fn f32_products_are_exact_up_to_f32_rounding_for_every_layout_and_edge() {
        check_every_layout_and_edge(Format::F32, exact_product, 1e-6, 11);
    }

    /// Row `i` of `A B` is the same bits whatever rows surround it: what makes a sentence
    /// decode the same in any batch.
    #[test]
    fn a_row_of_the_product_does_not_depend_on_the_other_rows() {
        let (k, n) = (300, 77);
        let (a, b) = (random(200 * k, 13), random(k * n, 14));
        for format in [Format::F32, Format::Bf16] {
            let packed = PackedB::new(View::new(&b, k, n, false), format);
            let product = |rows: &[f32], m: usize| {
                let mut out = vec![0f32; m * n];
                gemm(&mut out, false, View::new(rows, m, k, false), &packed, 2);
                out
            };
            let alone = product(&a[5 * k..6 * k], 1);
            for m in [6, 9, 64, 200] {
                assert_eq!(
                    alone[..],
                    product(&a[..m * k], m)[5 * n..6 * n],
                    "{format:?}, {m} rows"
                );
            }
        }
    }

    #[test]
    fn the_portable_f32_kernel_gives_the_same_bits_as_the_instruction() {
        if !accelerated_f32() {
            return; // every other f32 test here ran the portable kernel
        }
        let k = 37;
        let a: Vec<u32> = random(k * MR, 15).iter().map(|x| x.to_bits()).collect();
        let b: Vec<u32> = random(k * NR, 16).iter().map(|x| x.to_bits()).collect();
        // The same words as a packed block and as MR rows of k depths.
        let packed = ABlock {
            words: &a,
            row_stride: 1,
            depth_stride: MR,
        };
        let rows = ABlock {
            words: &a,
            row_stride: k,
            depth_stride: 1,
        };
        for block in [packed, rows] {
            let (mut fast, mut portable) = ([[7f32; NR]; MR], [[1f32; NR]; MR]);
            // SAFETY: accelerated_f32() checked; the block spans k depths of its MR rows, b
            // holds k depths of NR words.
            unsafe { kernel_f32::<MR>(k, block, &b, TileOut::Buffer(&mut fast)) };
            portable_kernel_f32(k, block, &b, &mut portable);
            assert_eq!(fast, portable);
            // The kernel for the first 5 rows gives those rows' bits and leaves the rest.
            let mut five = [[7f32; NR]; MR];
            // SAFETY: as above.
            unsafe { kernel_f32::<5>(k, block, &b, TileOut::Buffer(&mut five)) };
            assert_eq!(five[..5], fast[..5]);
            assert!(five[5..].iter().flatten().all(|&x| x == 7.0));
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
