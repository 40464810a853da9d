//! A product split into tiles: which kernel multiplies each `MR x NR` tile, over which rows
//! of `A` (packed or read in place), and how a finished tile is written out.

use rayon::prelude::*;

use super::*;

/// How a finished tile goes into the destination.
#[derive(Clone, Copy)]
pub(super) enum Write<'a> {
    Store,
    Accumulate,
    Bias(&'a [f32]),
}

/// The product into `dst`, which holds at least `m * n` elements (initialised unless `write`
/// is `Store` or `Bias`, which only write); `in_place` false packs every block of `A` (the
/// tests compare both ways). On a CPU with AMX, bf16 and int8 products run on its tiles.
pub(super) fn gemm_reading_a(
    dst: Dst,
    write: Write,
    a: View,
    b: &PackedB,
    threads: usize,
    in_place: bool,
) {
    let (m, n, k) = (a.rows, b.n, b.k);
    assert_eq!(a.cols, k, "inner dimensions differ");
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
    if b.format != Format::F32 && amx::available(b.format) {
        // SAFETY: available() checked; dst as this function's contract says.
        return unsafe { amx::gemm_on_tiles::<amx::Hardware>(dst, write, a, b, threads) };
    }
    gemm_on_micro_tiles(dst, write, a, b, threads, in_place)
}

/// [`gemm_reading_a`] on the AVX-512 (or portable) micro-kernels, whatever the CPU: for
/// `0 < m, n, k`.
pub(super) fn gemm_on_micro_tiles(
    dst: Dst,
    write: Write,
    a: View,
    b: &PackedB,
    threads: usize,
    in_place: bool,
) {
    let (m, n) = (a.rows, b.n);
    let product = Product {
        a: LeftOperand::new(a, b, in_place),
        b,
        m,
        n,
        dst,
        write,
        fast: match b.format {
            Format::Bf16 => accelerated(),
            Format::F32 => accelerated_f32(),
            Format::Int8 => accelerated_int8(),
        },
    };
    let tiles = Tiles::new(m, n, threads, ROW_GROUP);
    let run = |&(group, first_panel): &(usize, usize)| {
        product.run_tile(group, tiles.panels_from(first_panel))
    };
    if threads > 1 && tiles.list.len() > 1 {
        tiles.list.par_iter().for_each(run);
    } else {
        tiles.list.iter().for_each(run);
    }
}

/// The left operand as the kernels read it, block of [`MR`] rows by block.
struct LeftOperand<'a> {
    /// `A`'s storage as words (f32 and u32 have the same size; the kernels read them as f32).
    words: &'a [u32],
    row_stride: usize,
    col_stride: usize,
    /// Depth words per row: the depth in f32, pairs of depths in bf16.
    pairs: usize,
    /// Blocks `0..in_place` are read where they lie in `words`.
    in_place: usize,
    /// The other blocks, packed.
    packed: Vec<u32>,
    /// int8: each row's scale (padded to whole blocks).
    row_scales: Vec<f32>,
}

impl<'a> LeftOperand<'a> {
    /// An f32 `A` needs no packing when its storage already lets the kernel find each
    /// block's rows at every depth: the kernel reads it in place (packing the largest
    /// operands, `dZ` of the output layer above all, is a large share of a training step),
    /// and only a last partial block is packed. bf16 is always packed (the words are pairs).
    fn new(a: View<'a>, b: &PackedB, allow_in_place: bool) -> Self {
        let m = a.rows;
        let read_in_place =
            allow_in_place && b.format == Format::F32 && m >= MR && a.in_place_layout();
        let in_place = if read_in_place { m / MR } else { 0 };
        let mut row_scales = Vec::new();
        let packed = if b.format == Format::Int8 {
            let (words, scales) = super::int8::pack_a(a);
            row_scales = scales;
            words
        } else if read_in_place {
            let start = in_place * MR;
            let tail = View {
                data: &a.data[start * a.row_stride..],
                rows: m - start,
                ..a
            };
            pack_a(tail, b.pairs, b.format)
        } else {
            pack_a(a, b.pairs, b.format)
        };
        // SAFETY: f32 and u32 have the same size and alignment; the kernels read these words
        // as f32 again.
        let words =
            unsafe { std::slice::from_raw_parts(a.data.as_ptr() as *const u32, a.data.len()) };
        Self {
            words,
            row_stride: a.row_stride,
            col_stride: a.col_stride,
            pairs: b.pairs,
            in_place,
            packed,
            row_scales,
        }
    }

    fn block(&self, block: usize) -> ABlock<'_> {
        let pairs = self.pairs;
        if block < self.in_place {
            let span = (MR - 1) * self.row_stride + (pairs - 1) * self.col_stride + 1;
            ABlock {
                words: &self.words[block * MR * self.row_stride..][..span],
                row_stride: self.row_stride,
                depth_stride: self.col_stride,
            }
        } else {
            let block = block - self.in_place;
            ABlock {
                words: &self.packed[block * pairs * MR..][..pairs * MR],
                row_stride: 1,
                depth_stride: MR,
            }
        }
    }
}

/// The product's work in tiles of (row group, run of panels), each writing its own part of
/// the destination.
pub(super) struct Tiles {
    pub(super) list: Vec<(usize, usize)>,
    panels: usize,
    panel_chunk: usize,
}

impl Tiles {
    /// Rows in groups of `group_rows`; with several threads, runs of panels short enough for
    /// about four tiles per thread.
    pub(super) fn new(m: usize, n: usize, threads: usize, group_rows: usize) -> Self {
        let panels = n.div_ceil(NR);
        let groups = m.div_ceil(group_rows);
        let panel_chunk = if threads > 1 {
            panels.div_ceil((4 * threads).div_ceil(groups)).max(1)
        } else {
            panels
        };
        let list = (0..groups)
            .flat_map(|g| (0..panels).step_by(panel_chunk).map(move |p| (g, p)))
            .collect();
        Self {
            list,
            panels,
            panel_chunk,
        }
    }

    /// The panels of the tile starting at panel `first`.
    pub(super) fn panels_from(&self, first: usize) -> std::ops::Range<usize> {
        first..(first + self.panel_chunk).min(self.panels)
    }
}

/// Everything a tile of one product reads and where it writes.
struct Product<'a> {
    a: LeftOperand<'a>,
    b: &'a PackedB,
    m: usize,
    n: usize,
    dst: Dst,
    write: Write<'a>,
    /// Whether the CPU runs the accelerated kernels of `b`'s format.
    fast: bool,
}

impl Product<'_> {
    /// int8: the scales of a block's rows and a panel's columns.
    fn tile_scales(&self, block: usize, panel: usize) -> TileScales<'_> {
        let (columns, offsets) = self.b.panel_scales(panel);
        TileScales {
            rows: &self.a.row_scales[block * MR..][..MR],
            columns,
            offsets,
        }
    }

    /// Rows `group` of the product, in the columns of `panels`.
    fn run_tile(&self, group: usize, panels: std::ops::Range<usize>) {
        let rows = group * ROW_GROUP..((group + 1) * ROW_GROUP).min(self.m);
        // Every kernel overwrites the whole tile, so it is not zeroed per call.
        let mut tile = [[0f32; NR]; MR];
        for panel in panels {
            for block in rows.start / MR..rows.end.div_ceil(MR) {
                self.multiply_block(block, panel, &mut tile);
            }
        }
    }

    /// One `MR x NR` block of the product, written into the destination.
    #[inline(always)]
    fn multiply_block(&self, block: usize, panel: usize, tile: &mut [[f32; NR]; MR]) {
        let (m, n, pairs) = (self.m, self.n, self.a.pairs);
        let cols = panel * NR..((panel + 1) * NR).min(n);
        let (a, b) = (self.a.block(block), self.b.panel(panel));
        // Rows of this block that exist: the kernels for fewer than MR rows skip the rest (a
        // recurrence's last steps, with few rows still running, are mostly padding rows
        // otherwise).
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
        // A full panel goes from the registers straight into `dst`; a partial one (and the
        // portable kernels' tiles) through `tile` and `write_row`, a copy per row that full
        // panels skip.
        let direct = self.fast && cols.len() == NR;
        let out = if direct {
            TileOut::Direct(DirectTile {
                // SAFETY: row block * MR < m, column cols.start < n: inside dst.
                first: unsafe { self.dst.0.add(block * MR * n + cols.start) },
                row_len: n,
                write: self.write,
                column: cols.start,
            })
        } else {
            TileOut::Buffer(tile)
        };
        match (self.b.format, self.fast) {
            // SAFETY: the CPU has the instructions (accelerated() or accelerated_f32()); A's
            // block spans `pairs` depth words of its MR rows (bf16 is always packed), B
            // `pairs` of NR; a direct tile's `live` rows of NR columns lie in dst, written by
            // this tile alone.
            (Format::Bf16, true) => unsafe { rows!(kernel, pairs, a.words, b, out) },
            (Format::F32, true) => unsafe { rows!(kernel_f32, pairs, a, b, out) },
            (Format::Int8, true) => unsafe {
                rows!(
                    kernel_int8,
                    pairs,
                    a.words,
                    b,
                    self.tile_scales(block, panel),
                    out
                )
            },
            (Format::Bf16, false) => portable_kernel(pairs, a.words, b, tile),
            (Format::F32, false) => portable_kernel_f32(pairs, a, b, tile),
            (Format::Int8, false) => {
                portable_kernel_int8(pairs, a.words, b, self.tile_scales(block, panel), tile)
            }
        }
        if direct {
            return;
        }
        for (i, row) in tile.iter().enumerate() {
            let r = block * MR + i;
            if r >= m {
                break;
            }
            // SAFETY: tiles are disjoint in (row, column), so no two threads write the same
            // element; r < m and cols end <= n bound the row in dst.
            unsafe {
                self.dst.write_row(
                    r * n + cols.start,
                    self.write,
                    &row[..cols.len()],
                    cols.start,
                )
            };
        }
    }
}

/// The destination of a product, shared by the threads that write its disjoint tiles.
#[derive(Clone, Copy)]
pub(super) struct Dst(pub(super) *mut f32);
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
    pub(super) unsafe fn write_row(self, start: usize, write: Write, part: &[f32], column: usize) {
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
pub(super) enum TileOut<'a> {
    /// Into a buffer, row `i` of the tile in row `i` (a panel narrower than [`NR`]).
    Buffer(&'a mut [[f32; NR]; MR]),
    /// Into the destination, written the way [`Dst::write_row`] writes.
    Direct(DirectTile<'a>),
}

/// A full-width tile's place in the destination: its row `i` is the `NR` elements from
/// `first + i * row_len`; the bias, if any, is read from `column` on.
#[derive(Clone, Copy)]
pub(super) struct DirectTile<'a> {
    pub(super) first: *mut f32,
    pub(super) row_len: usize,
    pub(super) write: Write<'a>,
    pub(super) column: usize,
}

/// Where a block of `MR` rows of `A` lies: depth `p` of row `i` is word
/// `p * depth_stride + i * row_stride` of `words` (packed: row stride 1, depth stride MR; read
/// in place from a transposed matrix: 1 and `m`; from a row-major one: the row length and 1).
#[derive(Clone, Copy)]
pub(super) struct ABlock<'a> {
    pub(super) words: &'a [u32],
    pub(super) row_stride: usize,
    pub(super) depth_stride: usize,
}

impl ABlock<'_> {
    pub(super) fn holds(&self, k: usize) -> bool {
        k == 0 || self.words.len() > (k - 1) * self.depth_stride + (MR - 1) * self.row_stride
    }
}
