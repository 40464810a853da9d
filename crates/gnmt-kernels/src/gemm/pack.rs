//! Packing operands into the kernels' words, and the packed right operand [`PackedB`].

use rayon::prelude::*;

use super::*;

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
    /// 512: depths a power-of-two number of kilobytes apart fall into the same cache sets.
    /// Row-major rows a power-of-two number of kilobytes apart do not suffer from it.
    pub(super) fn in_place_layout(&self) -> bool {
        let transposed = self.row_stride == 1 && self.col_stride == self.rows;
        let row_major = self.col_stride == 1 && self.row_stride >= self.cols;
        (transposed && !self.rows.is_multiple_of(512)) || row_major
    }

    #[cfg(test)]
    pub(super) fn at(&self, r: usize, c: usize) -> f32 {
        self.data[r * self.row_stride + c * self.col_stride]
    }
}

/// Packs `lines` (rows of `A` or columns of `B`) of an operand into words: word
/// `p * width + j` holds depth word `p` of line `first + j` (depth `p` in f32, the pair
/// `(2p, 2p + 1)` in bf16). Element `(line, depth)` is `data[line * line_stride + depth *
/// depth_stride]`; the words of lines past `count` and the odd depth past `depth` are zero.
pub(super) struct Lines<'a> {
    pub(super) data: &'a [f32],
    pub(super) count: usize,
    pub(super) depth: usize,
    pub(super) line_stride: usize,
    pub(super) depth_stride: usize,
}

impl Lines<'_> {
    /// Packs `blocks` consecutive blocks of `width` lines, the first starting at line
    /// `first_block * width`, into `out` (one block after another), writing every word of
    /// `out`: the packing functions write the words of the lines that exist, and only the
    /// words of missing lines are zeroed here (zeroing all of `out` first would be a second
    /// pass over every packed operand).
    pub(super) fn pack(
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
    pub(super) fn pack_all(
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
    pub(super) fn words(&self, format: Format) -> usize {
        self.depth.div_ceil(format.depth_per_word())
    }
}

/// [`Lines::pack`] where each line's depths are contiguous (a row-major `A`, a transposed `B`):
/// a transposition. A block of [`MR`] lines (the `A` operand) goes tile by tile; wider blocks
/// (a `B` panel) line by line, each line's words spread over its block's rows of words.
pub(super) fn pack_depth_runs(
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
pub(super) const TILE: usize = 32;

/// [`TILE`] words of every line of a block, each line's run converted in one vectorised pass
/// and then spread over the block's rows of words, so a tile's writes stay in L1. For the
/// narrow blocks of `A` this packs faster than line by line (whose words land 32 bytes apart,
/// a line's run of a thousand words over a thousand cache lines, 8 times over). The 32-line
/// panels of `B` pack faster line by line (see docs/performance-log.md).
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512dq+avx512vl",
    "x86_64+avx2+fma"
))]
pub(super) fn pack_depth_runs_tiled(
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
pub(super) fn pack_depth_runs_by_line(
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
            Format::Int8 => unreachable!("int8 lines are packed by int8::quantize_lines"),
        }
    }
}

/// Consecutive depths `run` of one line into words: one per depth in f32, one per pair in bf16
/// (an odd last depth paired with zero). [`pack_depth_runs_by_line`] writes the same words
/// spread `width` apart; they are two functions because one taking a `put(p, word)` callback
/// no longer vectorised the contiguous loop.
#[inline(always)]
pub(super) fn convert(format: Format, run: &[f32], words: &mut [u32]) {
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
        Format::Int8 => unreachable!("int8 lines are packed by int8::quantize_lines"),
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
pub(super) fn pack_line_runs(
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
            Format::Int8 => unreachable!("int8 lines are packed by int8::quantize_lines"),
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
                Format::Int8 => unreachable!("int8 lines are packed by int8::quantize_lines"),
            }
        }
    }
}

impl<'a> View<'a> {
    /// The rows of this matrix as lines (the `A` operand).
    pub(super) fn rows_as_lines(&self) -> Lines<'a> {
        Lines {
            data: self.data,
            count: self.rows,
            depth: self.cols,
            line_stride: self.row_stride,
            depth_stride: self.col_stride,
        }
    }

    /// The columns of this matrix as lines (the `B` operand).
    pub(super) fn cols_as_lines(&self) -> Lines<'a> {
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
#[derive(Clone)]
pub struct PackedB {
    pub(super) format: Format,
    pub(super) k: usize,
    pub(super) n: usize,
    /// Depth words: `k` in f32, `ceil(k / 2)` in bf16, `ceil(k / 4)` in int8.
    pub(super) pairs: usize,
    pub(super) data: Vec<u32>,
    /// int8 only: the columns' scales and offsets.
    pub(super) int8: super::int8::ColumnScales,
}

impl PackedB {
    pub fn new(b: View, format: Format) -> Self {
        let (k, n) = (b.rows, b.cols);
        let pairs = k.div_ceil(format.depth_per_word());
        let panels = n.div_ceil(NR);
        if format == Format::Int8 {
            let (data, int8) = super::int8::pack_b(b);
            return Self {
                format,
                k,
                n,
                pairs,
                data,
                int8,
            };
        }
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
            int8: Default::default(),
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

    pub(super) fn panel(&self, panel: usize) -> &[u32] {
        &self.data[panel * self.pairs * NR..][..self.pairs * NR]
    }

    /// int8: the scales and offsets of a panel's `NR` columns.
    pub(super) fn panel_scales(&self, panel: usize) -> (&[f32], &[i32]) {
        (
            &self.int8.scales[panel * NR..][..NR],
            &self.int8.offsets[panel * NR..][..NR],
        )
    }
}

impl std::fmt::Debug for PackedB {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedB({} x {}, {:?})", self.k(), self.n(), self.format)
    }
}

/// `A [m, k]` packed by blocks of [`MR`] rows.
pub(super) fn pack_a(a: View, pairs: usize, format: Format) -> Vec<u32> {
    let blocks = a.rows.div_ceil(MR);
    let lines = a.rows_as_lines();
    debug_assert_eq!(lines.words(format), pairs);
    // Blocks are packed 16 at a time (128 rows), in parallel when there are several groups.
    const GROUP: usize = 16;
    lines.pack_all(format, MR, GROUP, blocks > GROUP)
}
