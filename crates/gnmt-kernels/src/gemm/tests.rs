use super::*;
use rand::{Rng, SeedableRng};

/// `dst (+)= A B` with `B` packed for this call only.
fn gemm_unpacked(dst: &mut [f32], accumulate: bool, a: View, b: View, threads: usize) {
    gemm(dst, accumulate, a, &PackedB::new(b, Format::Bf16), threads)
}

pub(super) fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// The product of the bf16-rounded operands in f64: what the kernel computes, up to
/// the order of its f32 sums.
pub(super) fn rounded_product(a: View, b: View) -> Vec<f64> {
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
                            let (block, p, j) = (i / (words * width), i / width % words, i % width);
                            let line = (first_block + block) * width + j;
                            let want = match format {
                                Format::F32 => at(line, p).to_bits(),
                                Format::Bf16 => pair(at(line, 2 * p), at(line, 2 * p + 1)),
                                Format::Int8 => unreachable!("not packed by Lines::pack"),
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
    for format in [Format::F32, Format::Bf16, Format::Int8] {
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
        eprintln!(
            "skipped: this CPU lacks AVX512-BF16, so there is no instruction to compare with"
        );
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
    for format in [Format::F32, Format::Bf16, Format::Int8] {
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
        // Every other f32 test here ran the portable kernel.
        eprintln!("skipped: this CPU lacks AVX-512F, so there is no instruction to compare with");
        return;
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

/// The int8 product by its definition, in f64: each row of `A` and column of `B` scaled to
/// `[-127, 127]` by its largest magnitude and rounded (ties to even), the integer products
/// summed, the sum scaled back.
fn quantized_product(a: View, b: View) -> Vec<f64> {
    let quantize = |line: Vec<f32>| {
        let max = line.iter().fold(0f32, |m, x| m.max(x.abs()));
        let q: Vec<i64> = line
            .iter()
            .map(|&x| {
                if max == 0.0 {
                    0
                } else {
                    (x * (127.0 / max)).round_ties_even() as i64
                }
            })
            .collect();
        (q, max as f64 / 127.0)
    };
    let rows: Vec<_> = (0..a.rows)
        .map(|i| quantize((0..a.cols).map(|p| a.at(i, p)).collect()))
        .collect();
    let cols: Vec<_> = (0..b.cols)
        .map(|j| quantize((0..b.rows).map(|p| b.at(p, j)).collect()))
        .collect();
    let mut out = vec![0.0; a.rows * b.cols];
    for (i, (qa, sa)) in rows.iter().enumerate() {
        for (j, (qb, sb)) in cols.iter().enumerate() {
            let sum: i64 = qa.iter().zip(qb).map(|(x, y)| x * y).sum();
            out[i * b.cols + j] = sum as f64 * sa * sb;
        }
    }
    out
}

#[test]
fn int8_products_match_their_definition_for_every_layout_and_edge() {
    check_every_layout_and_edge(Format::Int8, quantized_product, 1e-6, 21);
}

#[test]
fn int8_products_stay_close_to_f32() {
    // 127 levels per line: a rounding error up to 1/254 of the line's largest magnitude per
    // operand, and random signs make a k-term sum's error grow like sqrt(k): a standard
    // deviation of about 0.04 here, where the sums themselves spread about 7.
    let (m, n, k) = (16, 40, 512);
    let (a, b) = (random(m * k, 22), random(k * n, 23));
    let packed = PackedB::new(View::new(&b, k, n, true), Format::Int8);
    let mut got = vec![0f32; m * n];
    gemm(&mut got, false, View::new(&a, m, k, false), &packed, 1);
    let want = exact_product(View::new(&a, m, k, false), View::new(&b, k, n, true));
    for (g, w) in got.iter().zip(&want) {
        assert!((*g as f64 - w).abs() < 0.25, "{g} vs {w}");
    }
}

/// A row of zeros gives zeros; a row or column holding an infinity or NaN gives NaN, as an
/// f32 product would, not a silently finite number.
#[test]
fn int8_zero_and_non_finite_lines() {
    let (m, n, k) = (3, 4, 9);
    let mut a = random(m * k, 24);
    a[..k].fill(0.0);
    a[k + 2] = f32::INFINITY;
    let mut b = random(k * n, 25);
    b[3 * n + 1] = f32::NAN;
    let packed = PackedB::new(View::new(&b, k, n, false), Format::Int8);
    let mut got = vec![1f32; m * n];
    gemm(&mut got, false, View::new(&a, m, k, false), &packed, 1);
    for j in 0..n {
        let (zero_row, inf_row, plain_row) = (got[j], got[n + j], got[2 * n + j]);
        assert!(zero_row == 0.0 || j == 1 && zero_row.is_nan(), "{zero_row}");
        assert!(inf_row.is_nan());
        assert_eq!(plain_row.is_nan(), j == 1, "{plain_row}");
    }
}

#[test]
fn the_portable_int8_kernel_gives_the_same_bits_as_the_instruction() {
    if !accelerated_int8() {
        // Every other int8 test here ran the portable kernel.
        eprintln!(
            "skipped: this CPU lacks AVX512-VNNI, so there is no instruction to compare with"
        );
        return;
    }
    let (m, n, k) = (MR, NR, 149);
    let (a, b) = (random(m * k, 26), random(k * n, 27));
    let (a_words, row_scales) = super::int8::pack_a(View::new(&a, m, k, false));
    let packed = PackedB::new(View::new(&b, k, n, false), Format::Int8);
    let (columns, offsets) = packed.panel_scales(0);
    let scales = TileScales {
        rows: &row_scales,
        columns,
        offsets,
    };
    let quads = k.div_ceil(4);
    let (mut fast, mut portable) = ([[7f32; NR]; MR], [[1f32; NR]; MR]);
    // SAFETY: accelerated_int8() checked; the words hold `quads` depth words of MR rows and NR
    // columns, the scales one tile's.
    unsafe {
        kernel_int8::<MR>(
            quads,
            &a_words,
            packed.panel(0),
            scales,
            TileOut::Buffer(&mut fast),
        )
    };
    portable_kernel_int8(quads, &a_words, packed.panel(0), scales, &mut portable);
    assert_eq!(fast, portable);
    let mut two = [[7f32; NR]; MR];
    // SAFETY: as above.
    unsafe {
        kernel_int8::<2>(
            quads,
            &a_words,
            packed.panel(0),
            scales,
            TileOut::Buffer(&mut two),
        )
    };
    assert_eq!(two[..2], fast[..2]);
    assert!(two[2..].iter().flatten().all(|&x| x == 7.0));
}

/// Weights stored as `quantize_row`'s integers and scales, multiplied back into f32 and packed
/// for an int8 product, give the same integers: a model stored in int8 decodes with exactly
/// the stored numbers (the scales may differ in the last bit).
#[test]
fn int8_weights_stored_and_loaded_pack_to_the_same_integers() {
    let (n, k) = (45, 70);
    let w = random(n * k, 28); // [n, k]: row j is column j of B
    let mut loaded = vec![0f32; n * k];
    for (row, out) in w.chunks(k).zip(loaded.chunks_mut(k)) {
        let mut q = vec![0i8; k];
        let scale = quantize_row(row, &mut q);
        for (x, &q) in out.iter_mut().zip(&q) {
            *x = q as f32 * scale;
        }
    }
    let original = PackedB::new(View::new(&w, k, n, true), Format::Int8);
    let again = PackedB::new(View::new(&loaded, k, n, true), Format::Int8);
    assert_eq!(original.data, again.data);
    for (a, b) in original.int8.scales.iter().zip(&again.int8.scales) {
        assert!((a - b).abs() <= a.abs() * 2.0 * f32::EPSILON, "{a} vs {b}");
    }
    assert_eq!(original.int8.offsets, again.int8.offsets);
}
