//! Products on AMX tiles (Intel Xeon from Sapphire Rapids on): bf16 pairs on `tdpbf16ps` (f32
//! sums) and int8 quads on `tdpbusd` (unsigned `A` bytes times signed `B` bytes, exact i32
//! sums), for the same packed `B` as the AVX-512 kernels.
//!
//! A tile is 16 rows of 64 bytes: 16 depth words of 16 lines. A panel of `B` already holds
//! depth word `p` of its 32 columns as one run of 128 bytes, so a `B` tile is 16 such runs
//! read 128 bytes apart (columns 16..32 start 64 bytes in): `B` is not repacked. `A` is
//! repacked row-major ([`RowMajorA`]): each row's depth words, padded with zero words to whole
//! tiles. A block of 32 rows and 32 columns keeps four accumulator tiles over the whole depth
//! and loads two tiles of `A` and two of `B` per 16 depth words; a block of 16 rows or fewer
//! loads one tile of `A` and keeps two accumulators.
//!
//! Every element is summed over the depth in order by the same instructions whatever the
//! other rows are, so results still do not depend on the batch; to keep it so, a CPU with AMX
//! runs every bf16 and int8 product here, the small ones too. int8 sums are exact: the same
//! bits as `vpdpbusd`. bf16 sums may round differently from `vdpbf16ps`.
//!
//! Stable Rust has no AMX intrinsics, so the instructions are written with `asm!`, and Linux
//! must first grant the process the tile state (`arch_prctl(ARCH_REQ_XCOMP_PERM)`). The driver
//! is generic over a [`TileUnit`]: [`Hardware`], and `Emulated`, the instructions' documented
//! arithmetic in plain Rust. The tests run the driver on the emulated unit on every CPU, and
//! compare the hardware with it where the CPU has AMX.

use std::sync::OnceLock;

use rayon::prelude::*;

use super::int8::{dequantize, quad_words, quantize_into, OFFSET, QUAD};
use super::pack::convert;
use super::tile::Tiles;
use super::*;

/// Rows of a tile, and depth words a tile row holds (64 bytes).
const TILE: usize = 16;
/// Rows of `A` one block multiplies: two tiles.
const BLOCK_ROWS: usize = 2 * TILE;
/// Bytes between consecutive depth words of a `B` panel.
const PANEL_STRIDE: usize = NR * 4;

/// What the tiles multiply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Bf16,
    Int8,
}

impl Kind {
    fn format(self) -> Format {
        match self {
            Kind::Bf16 => Format::Bf16,
            Kind::Int8 => Format::Int8,
        }
    }

    fn of(format: Format) -> Option<Self> {
        match format {
            Format::Bf16 => Some(Kind::Bf16),
            Format::Int8 => Some(Kind::Int8),
            Format::F32 => None,
        }
    }
}

/// Whether products in `format` run on AMX tiles here: the CPU has the tiles and the
/// instruction (CPUID leaf 7: AMX-TILE, and AMX-BF16 or AMX-INT8), and Linux granted this
/// process the tile state.
pub fn available(format: Format) -> bool {
    match Kind::of(format) {
        Some(kind) => cpu_has(kind) && tile_state_granted(),
        None => false,
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unused_unsafe)] // `__cpuid` is an unsafe function before Rust 1.94
fn cpu_has(kind: Kind) -> bool {
    // SAFETY: CPUID exists on every x86_64 CPU; leaf 7 is valid when the maximum leaf is >= 7.
    let max_leaf = unsafe { std::arch::x86_64::__cpuid(0) }.eax;
    if max_leaf < 7 {
        return false;
    }
    let edx = unsafe { std::arch::x86_64::__cpuid_count(7, 0) }.edx;
    let bit = |b: u32| edx >> b & 1 == 1;
    bit(24)
        && match kind {
            Kind::Bf16 => bit(22),
            Kind::Int8 => bit(25),
        }
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_has(_: Kind) -> bool {
    false
}

/// Asks Linux once for the AMX tile data state (the tiles are off for a process until it asks;
/// the first tile instruction would fault). The permission holds for every thread.
fn tile_state_granted() -> bool {
    static GRANTED: OnceLock<bool> = OnceLock::new();
    *GRANTED.get_or_init(request_tile_state)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_state() -> bool {
    const ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: u64 = 0x1023;
    const XFEATURE_XTILEDATA: u64 = 18;
    let result: i64;
    // SAFETY: the arch_prctl system call with these arguments only changes this process's
    // permitted extended state; it reads and writes no memory of ours.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") ARCH_PRCTL => result,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    result == 0
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn request_tile_state() -> bool {
    false
}

/// Eight tiles: accumulators 0-3 (`C`: rows 0-15 x columns 0-15, rows 0-15 x 16-31, rows
/// 16-31 x 0-15, rows 16-31 x 16-31), 4-5 the two row tiles of `A`, 6-7 the two column tiles
/// of `B`; every tile 16 rows of 64 bytes.
pub(super) trait TileUnit: Default {
    /// Before any other call on this thread (loads the tile configuration).
    ///
    /// # Safety
    /// [`available`] is true for the kind that will be multiplied (hardware unit).
    unsafe fn begin(&mut self);
    /// After the last call (releases the tiles).
    ///
    /// # Safety
    /// After [`TileUnit::begin`] on this thread.
    unsafe fn end(&mut self);
    /// Zeroes the accumulators.
    ///
    /// # Safety
    /// Between `begin` and `end` on this thread.
    unsafe fn zero(&mut self);
    /// `C += A B` over 16 depth words: `A`'s rows start at `a`, `a_stride` bytes apart (32
    /// rows when `two`, else 16); `B`'s depth words start at `b`, [`PANEL_STRIDE`] bytes apart,
    /// 32 columns each.
    ///
    /// # Safety
    /// Between `begin` and `end`; `a` addresses 16 (`two`: 32) rows of 64 readable bytes,
    /// `b` 16 runs of 128.
    unsafe fn step(&mut self, kind: Kind, a: *const u32, a_stride: usize, two: bool, b: *const u32);
    /// The accumulators into `out` (row `i` of the block in `out[i]`): rows 0-15, and 16-31 when
    /// `two`.
    ///
    /// # Safety
    /// Between `begin` and `end`.
    unsafe fn store(&mut self, two: bool, out: &mut [[u32; NR]; BLOCK_ROWS]);
}

/// The CPU's tiles.
#[derive(Default)]
pub(super) struct Hardware;

/// A tile configuration (`ldtilecfg`'s 64 bytes): palette 1, every tile 16 rows of 64 bytes.
#[repr(C, align(64))]
struct Config([u8; 64]);

impl Config {
    fn every_tile_full() -> Self {
        let mut bytes = [0u8; 64];
        bytes[0] = 1; // palette
        for t in 0..8 {
            // Bytes per row (a little-endian u16 at 16 + 2t), then rows (a byte at 48 + t).
            bytes[16 + 2 * t] = (TILE * 4) as u8;
            bytes[48 + t] = TILE as u8;
        }
        Self(bytes)
    }
}

#[cfg(target_arch = "x86_64")]
impl TileUnit for Hardware {
    unsafe fn begin(&mut self) {
        let config = Config::every_tile_full();
        std::arch::asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack, readonly));
    }

    unsafe fn end(&mut self) {
        std::arch::asm!("tilerelease", options(nostack, nomem));
    }

    unsafe fn zero(&mut self) {
        std::arch::asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem)
        );
    }

    unsafe fn step(
        &mut self,
        kind: Kind,
        a: *const u32,
        a_stride: usize,
        two: bool,
        b: *const u32,
    ) {
        let (a2, b2) = (a.wrapping_byte_add(TILE * a_stride), b.byte_add(TILE * 4));
        // The tile registers are named in the instructions: one block per shape and kind.
        macro_rules! step_with {
            ($dot:literal) => {
                if two {
                    std::arch::asm!(
                        "tileloadd tmm4, [{a} + {sa}*1]",
                        "tileloadd tmm5, [{a2} + {sa}*1]",
                        "tileloadd tmm6, [{b} + {sb}*1]",
                        "tileloadd tmm7, [{b2} + {sb}*1]",
                        concat!($dot, " tmm0, tmm4, tmm6"),
                        concat!($dot, " tmm1, tmm4, tmm7"),
                        concat!($dot, " tmm2, tmm5, tmm6"),
                        concat!($dot, " tmm3, tmm5, tmm7"),
                        a = in(reg) a, a2 = in(reg) a2, sa = in(reg) a_stride,
                        b = in(reg) b, b2 = in(reg) b2, sb = in(reg) PANEL_STRIDE,
                        options(nostack, readonly),
                    )
                } else {
                    std::arch::asm!(
                        "tileloadd tmm4, [{a} + {sa}*1]",
                        "tileloadd tmm6, [{b} + {sb}*1]",
                        "tileloadd tmm7, [{b2} + {sb}*1]",
                        concat!($dot, " tmm0, tmm4, tmm6"),
                        concat!($dot, " tmm1, tmm4, tmm7"),
                        a = in(reg) a, sa = in(reg) a_stride,
                        b = in(reg) b, b2 = in(reg) b2, sb = in(reg) PANEL_STRIDE,
                        options(nostack, readonly),
                    )
                }
            };
        }
        match kind {
            Kind::Bf16 => step_with!("tdpbf16ps"),
            Kind::Int8 => step_with!("tdpbusd"),
        }
    }

    unsafe fn store(&mut self, two: bool, out: &mut [[u32; NR]; BLOCK_ROWS]) {
        let top = out.as_mut_ptr() as *mut u32;
        let (top_right, bottom) = (top.add(TILE), top.add(TILE * NR));
        std::arch::asm!(
            "tilestored [{p} + {s}*1], tmm0",
            "tilestored [{q} + {s}*1], tmm1",
            p = in(reg) top, q = in(reg) top_right, s = in(reg) PANEL_STRIDE,
            options(nostack),
        );
        if two {
            std::arch::asm!(
                "tilestored [{p} + {s}*1], tmm2",
                "tilestored [{q} + {s}*1], tmm3",
                p = in(reg) bottom, q = in(reg) bottom.add(TILE), s = in(reg) PANEL_STRIDE,
                options(nostack),
            );
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
impl TileUnit for Hardware {
    unsafe fn begin(&mut self) {
        unreachable!("available() is false off x86_64")
    }
    unsafe fn end(&mut self) {}
    unsafe fn zero(&mut self) {}
    unsafe fn step(&mut self, _: Kind, _: *const u32, _: usize, _: bool, _: *const u32) {}
    unsafe fn store(&mut self, _: bool, _: &mut [[u32; NR]; BLOCK_ROWS]) {}
}

/// The tile instructions' arithmetic as Intel documents it, in plain Rust: `tdpbf16ps` adds,
/// for each depth word in order, the product of the even halves and then of the odd halves
/// (each exact in f32) to the f32 accumulator; `tdpbusd` adds the four byte products of each
/// depth word to the i32 accumulator (wrapping). The hardware flushes bf16 denormals, which
/// this does not.
#[cfg(test)]
#[derive(Clone)]
pub(super) struct Emulated {
    tiles: [[[u32; TILE]; TILE]; 8],
}

#[cfg(test)]
impl Default for Emulated {
    fn default() -> Self {
        Self {
            tiles: [[[0; TILE]; TILE]; 8],
        }
    }
}

#[cfg(test)]
impl Emulated {
    /// Tile `t` from 16 rows of 16 words, `stride` bytes apart.
    unsafe fn load(&mut self, t: usize, at: *const u32, stride: usize) {
        for (r, row) in self.tiles[t].iter_mut().enumerate() {
            std::ptr::copy_nonoverlapping(at.byte_add(r * stride), row.as_mut_ptr(), TILE);
        }
    }

    fn dot(&mut self, kind: Kind, c: usize, a: usize, b: usize) {
        let (a, b) = (self.tiles[a], self.tiles[b]);
        for (m, c_row) in self.tiles[c].iter_mut().enumerate() {
            for (n, c) in c_row.iter_mut().enumerate() {
                *c = match kind {
                    Kind::Bf16 => {
                        let mut sum = f32::from_bits(*c);
                        for (&x, b_row) in a[m].iter().zip(&b) {
                            let y = b_row[n];
                            sum += from_bf16(x as u16) * from_bf16(y as u16);
                            sum += from_bf16((x >> 16) as u16) * from_bf16((y >> 16) as u16);
                        }
                        sum.to_bits()
                    }
                    Kind::Int8 => {
                        let mut sum = *c as i32;
                        for (&x, b_row) in a[m].iter().zip(&b) {
                            for (u, s) in x.to_le_bytes().into_iter().zip(b_row[n].to_le_bytes()) {
                                sum = sum.wrapping_add(u as i32 * s as i8 as i32);
                            }
                        }
                        sum as u32
                    }
                };
            }
        }
    }
}

#[cfg(test)]
impl TileUnit for Emulated {
    unsafe fn begin(&mut self) {}

    unsafe fn end(&mut self) {}

    unsafe fn zero(&mut self) {
        self.tiles[..4]
            .iter_mut()
            .for_each(|t| *t = [[0; TILE]; TILE]);
    }

    unsafe fn step(
        &mut self,
        kind: Kind,
        a: *const u32,
        a_stride: usize,
        two: bool,
        b: *const u32,
    ) {
        self.load(4, a, a_stride);
        self.load(6, b, PANEL_STRIDE);
        self.load(7, b.add(TILE), PANEL_STRIDE);
        self.dot(kind, 0, 4, 6);
        self.dot(kind, 1, 4, 7);
        if two {
            self.load(5, a.byte_add(TILE * a_stride), a_stride);
            self.dot(kind, 2, 5, 6);
            self.dot(kind, 3, 5, 7);
        }
    }

    unsafe fn store(&mut self, two: bool, out: &mut [[u32; NR]; BLOCK_ROWS]) {
        let accumulators = if two { 4 } else { 2 };
        for c in 0..accumulators {
            let (row0, col0) = (c / 2 * TILE, c % 2 * TILE);
            for (r, row) in self.tiles[c].iter().enumerate() {
                out[row0 + r][col0..col0 + TILE].copy_from_slice(row);
            }
        }
    }
}

/// `A` repacked for the tiles: row `r`'s depth words at `words[r * stride..]` (bf16 pairs, or
/// int8 quads of unsigned `q + 128` as [`super::int8`] stores them), zero words up to `stride`
/// (a multiple of 16) and zero rows up to a multiple of 16; with each row's scale for int8.
pub(super) struct RowMajorA {
    words: Vec<u32>,
    stride: usize,
    row_scales: Vec<f32>,
}

impl RowMajorA {
    pub(super) fn new(a: View, kind: Kind, threads: usize) -> Self {
        let depth = a.cols;
        let row_words = depth.div_ceil(kind.format().depth_per_word());
        let stride = row_words.div_ceil(TILE) * TILE;
        let rows = a.rows.div_ceil(TILE) * TILE;
        let mut words = vec![0u32; rows * stride];
        // The scales of int8 rows (0 for bf16 and for the padding rows).
        let mut row_scales = vec![0f32; rows];
        // A row into its words, through scratch buffers reused from row to row: the row
        // gathered when its values are strided, and its quantized bytes.
        let pack_row = |scratch: &mut (Vec<f32>, Vec<i8>), r: usize, out: &mut [u32]| -> f32 {
            let (gathered, bytes) = scratch;
            let values = if a.col_stride == 1 {
                &a.data[r * a.row_stride..][..depth]
            } else {
                gathered.clear();
                gathered.extend((0..depth).map(|c| a.data[r * a.row_stride + c * a.col_stride]));
                &gathered[..]
            };
            match kind {
                Kind::Bf16 => {
                    convert(Format::Bf16, values, &mut out[..row_words]);
                    0.0
                }
                Kind::Int8 => {
                    bytes.resize(row_words * QUAD, 0);
                    let (scale, _) = quantize_into(values, &mut bytes[..depth]);
                    for (w, word) in out.iter_mut().zip(quad_words(bytes, OFFSET)) {
                        *w = word;
                    }
                    scale
                }
            }
        };
        let (real, scales) = (&mut words[..a.rows * stride], &mut row_scales[..a.rows]);
        let scratch = || (Vec::new(), Vec::new());
        if threads > 1 && a.rows * depth >= 1 << 16 {
            real.par_chunks_mut(stride)
                .zip(scales.par_iter_mut())
                .enumerate()
                .for_each_init(scratch, |s, (r, (out, scale))| *scale = pack_row(s, r, out));
        } else {
            let mut s = scratch();
            for (r, (out, scale)) in real.chunks_mut(stride).zip(scales).enumerate() {
                *scale = pack_row(&mut s, r, out);
            }
        }
        Self {
            words,
            stride,
            row_scales,
        }
    }
}

/// `dst (write) A B` on the tiles of `U`, for a bf16 or int8 `b`: blocks of 32 rows and one
/// panel, several panels per task; `threads` > 1 runs the tasks on rayon's pool.
///
/// # Safety
/// For [`Hardware`], [`available`] must be true for `b`'s format. `dst` holds `m * n`
/// elements (initialised for `Accumulate`), written by no one else meanwhile.
pub(super) unsafe fn gemm_on_tiles<U: TileUnit>(
    dst: Dst,
    write: Write,
    a: View,
    b: &PackedB,
    threads: usize,
) {
    let kind = Kind::of(b.format).expect("tiles multiply bf16 or int8");
    let (m, n) = (a.rows, b.n);
    assert_eq!(a.cols, b.k, "inner dimensions differ");
    if m == 0 || n == 0 {
        return;
    }
    let left = RowMajorA::new(a, kind, threads);
    let tiles = Tiles::new(m, n, threads, BLOCK_ROWS);
    let run = |&(group, first): &(usize, usize)| {
        // SAFETY: the caller's contract; tiles write disjoint (rows, panels) of dst.
        let panels = tiles.panels_from(first);
        unsafe { multiply_group::<U>(kind, &left, b, group, panels, m, dst, write) }
    };
    if threads > 1 && tiles.list.len() > 1 {
        tiles.list.par_iter().for_each(run);
    } else {
        tiles.list.iter().for_each(run);
    }
}

/// Rows `32 group ..` of the product in the columns of `panels`.
///
/// # Safety
/// As for [`gemm_on_tiles`]; no other task writes these rows and columns.
#[allow(clippy::too_many_arguments)]
unsafe fn multiply_group<U: TileUnit>(
    kind: Kind,
    left: &RowMajorA,
    b: &PackedB,
    group: usize,
    panels: std::ops::Range<usize>,
    m: usize,
    dst: Dst,
    write: Write,
) {
    let (n, pairs) = (b.n, b.pairs);
    let rows = group * BLOCK_ROWS..((group + 1) * BLOCK_ROWS).min(m);
    let two = rows.len() > TILE;
    let a = left.words[rows.start * left.stride..].as_ptr();
    let a_stride = left.stride * 4;
    let (full, rest) = (pairs / TILE, pairs % TILE);
    // B's last depth words, padded with zero words to a whole tile (A's padding is zero too).
    let mut tail = [0u32; TILE * NR];
    let mut sums = [[0u32; NR]; BLOCK_ROWS];
    let mut values = [0f32; NR];
    let mut unit = U::default();
    unit.begin();
    for panel in panels {
        let words = b.panel(panel);
        unit.zero();
        for t in 0..full {
            unit.step(
                kind,
                a.add(t * TILE),
                a_stride,
                two,
                words[t * TILE * NR..].as_ptr(),
            );
        }
        if rest > 0 {
            tail[..rest * NR].copy_from_slice(&words[full * TILE * NR..][..rest * NR]);
            unit.step(kind, a.add(full * TILE), a_stride, two, tail.as_ptr());
        }
        unit.store(two, &mut sums);
        let cols = panel * NR..((panel + 1) * NR).min(n);
        let (column_scales, offsets) = match kind {
            Kind::Int8 => b.panel_scales(panel),
            Kind::Bf16 => (&[][..], &[][..]),
        };
        for (i, r) in rows.clone().enumerate() {
            for (j, value) in values[..cols.len()].iter_mut().enumerate() {
                *value = match kind {
                    Kind::Bf16 => f32::from_bits(sums[i][j]),
                    Kind::Int8 => dequantize(
                        sums[i][j] as i32,
                        offsets[j],
                        left.row_scales[r],
                        column_scales[j],
                    ),
                };
            }
            dst.write_row(r * n + cols.start, write, &values[..cols.len()], cols.start);
        }
    }
    unit.end();
}

#[cfg(test)]
mod tests {
    use super::super::tests::{random, rounded_product};
    use super::super::tile::gemm_on_micro_tiles;
    use super::*;

    /// Shapes with partial tiles of rows, columns and depth, one row, one block of 16 rows,
    /// several blocks, and one large enough for `A` to be packed on several threads.
    const SHAPES: [(usize, usize, usize); 8] = [
        (1, 1, 1),
        (3, 5, 7),
        (16, 32, 64),
        (17, 33, 65),
        (32, 64, 128),
        (40, 70, 129),
        (70, 100, 300),
        (300, 40, 256),
    ];

    /// A product of the operands made by `make(len, seed)`, in every layout, thread count and
    /// way of writing, by `run` (into zeros, onto 0.5, with a bias): the outputs' bits.
    fn outputs(
        format: Format,
        (m, n, k): (usize, usize, usize),
        make: fn(usize, u64) -> Vec<f32>,
        run: &dyn Fn(Dst, Write, View, &PackedB, usize),
    ) -> Vec<Vec<u32>> {
        let mut all = Vec::new();
        let (a_data, b_data, bias) = (make(m * k, 1), make(k * n, 2), make(n, 3));
        for (at, bt) in [(false, false), (true, false), (false, true), (true, true)] {
            let (a, b) = (View::new(&a_data, m, k, at), View::new(&b_data, k, n, bt));
            let packed = PackedB::new(b, format);
            for threads in [1, 3] {
                for write in [Write::Store, Write::Accumulate, Write::Bias(&bias)] {
                    let mut out = vec![0.5f32; m * n];
                    run(Dst(out.as_mut_ptr()), write, a, &packed, threads);
                    all.push(out.iter().map(|x| x.to_bits()).collect());
                }
            }
        }
        all
    }

    fn emulated(dst: Dst, write: Write, a: View, b: &PackedB, threads: usize) {
        // SAFETY: the emulated unit runs anywhere; dst holds m * n initialised elements.
        unsafe { gemm_on_tiles::<Emulated>(dst, write, a, b, threads) }
    }

    fn micro_kernels(dst: Dst, write: Write, a: View, b: &PackedB, threads: usize) {
        gemm_on_micro_tiles(dst, write, a, b, threads, true)
    }

    /// Small integers: every bf16 product and every partial sum is exact, so any order of the
    /// sums gives the same bits.
    fn small_integers(len: usize, seed: u64) -> Vec<f32> {
        random(len, seed)
            .iter()
            .map(|x| (x * 4.0).round())
            .collect()
    }

    #[test]
    fn int8_on_emulated_tiles_gives_the_micro_kernels_bits() {
        for shape in SHAPES {
            let tiles = outputs(Format::Int8, shape, random, &emulated);
            assert_eq!(
                tiles,
                outputs(Format::Int8, shape, random, &micro_kernels),
                "{shape:?}"
            );
        }
    }

    #[test]
    fn bf16_on_emulated_tiles_matches_the_rounded_operands() {
        for (m, n, k) in SHAPES {
            let (a_data, b_data) = (random(m * k, 1), random(k * n, 2));
            let (a, b) = (
                View::new(&a_data, m, k, false),
                View::new(&b_data, k, n, true),
            );
            let want = rounded_product(a, b);
            let mut got = vec![0f32; m * n];
            emulated(
                Dst(got.as_mut_ptr()),
                Write::Store,
                a,
                &PackedB::new(b, Format::Bf16),
                2,
            );
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (*g as f64 - w).abs() < 1e-5 * k as f64,
                    "{m}x{n}x{k}: {g} vs {w}"
                );
            }
        }
        // Where the sums are exact, the bits of the micro-kernels, in every layout and way.
        for shape in SHAPES {
            let tiles = outputs(Format::Bf16, shape, small_integers, &emulated);
            let micro = outputs(Format::Bf16, shape, small_integers, &micro_kernels);
            assert_eq!(tiles, micro, "{shape:?}");
        }
    }

    #[test]
    fn a_row_on_tiles_does_not_depend_on_the_other_rows() {
        let (m, n, k) = (45, 40, 100);
        let (a_data, b_data) = (random(m * k, 4), random(k * n, 5));
        for format in [Format::Bf16, Format::Int8] {
            let packed = PackedB::new(View::new(&b_data, k, n, false), format);
            let mut all = vec![0f32; m * n];
            emulated(
                Dst(all.as_mut_ptr()),
                Write::Store,
                View::new(&a_data, m, k, false),
                &packed,
                1,
            );
            for r in [0, 15, 16, 31, 32, 44] {
                let mut one = vec![0f32; n];
                let row = View::new(&a_data[r * k..][..k], 1, k, false);
                emulated(Dst(one.as_mut_ptr()), Write::Store, row, &packed, 1);
                assert_eq!(one, all[r * n..][..n], "{format:?} row {r}");
            }
        }
    }

    #[test]
    fn the_cpu_tiles_give_the_emulated_results() {
        let hardware = |dst: Dst, write: Write, a: View, b: &PackedB, threads: usize| {
            // SAFETY: called only where available() is true for b's format.
            unsafe { gemm_on_tiles::<Hardware>(dst, write, a, b, threads) }
        };
        let mut ran = false;
        if available(Format::Int8) {
            for shape in SHAPES {
                let tiles = outputs(Format::Int8, shape, random, &hardware);
                assert_eq!(
                    tiles,
                    outputs(Format::Int8, shape, random, &emulated),
                    "{shape:?}"
                );
            }
            ran = true;
        }
        if available(Format::Bf16) {
            for shape in SHAPES {
                let exact = outputs(Format::Bf16, shape, small_integers, &hardware);
                assert_eq!(
                    exact,
                    outputs(Format::Bf16, shape, small_integers, &emulated)
                );
                let got = outputs(Format::Bf16, shape, random, &hardware);
                let want = outputs(Format::Bf16, shape, random, &emulated);
                for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
                    let (g, w) = (f32::from_bits(*g), f32::from_bits(*w));
                    assert!(
                        (g - w).abs() <= 1e-5 * shape.2 as f32,
                        "{shape:?}: {g} vs {w}"
                    );
                }
            }
            ran = true;
        }
        if !ran {
            eprintln!(
                "skipped: this CPU (or this kernel's permission) gives no AMX tiles, so only the \
                 emulated tiles were tested"
            );
        }
    }
}
