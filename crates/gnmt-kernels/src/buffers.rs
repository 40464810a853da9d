//! Buffers of the kernels: zeroed memory written in parallel, rows gathered and scattered,
//! column sums.

use crate::real::Real;

/// `n` zeros, written by all of rayon's threads when there are many. Freed memory is reused
/// (see the CLI's `keep_freed_memory`), so `vec![0; n]` is a `memset` on the calling thread:
/// for the gradient buffers of a training step, serial work that held back two threads.
pub fn zeros<T: Copy + Default + Send + Sync>(n: usize) -> Vec<T> {
    use rayon::prelude::*;
    if n < 1 << 15 || rayon::current_num_threads() == 1 {
        return vec![T::default(); n];
    }
    let mut out = Vec::with_capacity(n);
    (0..n)
        .into_par_iter()
        .with_min_len(1 << 14)
        .map(|_| T::default())
        .collect_into_vec(&mut out);
    out
}

/// Rows `rows` of a row-major `[_, width]` matrix, in that order, as a dense matrix: the
/// real (unpadded) rows of a batch, so products skip the padding.
pub fn gather_rows<T: Copy + Default + Send + Sync>(
    data: &[T],
    width: usize,
    rows: &[usize],
) -> Vec<T> {
    use rayon::prelude::*;
    let mut out = zeros(rows.len() * width);
    if width > 0 {
        out.par_chunks_mut(width)
            .zip(rows.par_iter())
            .for_each(|(dst, &r)| dst.copy_from_slice(&data[r * width..][..width]));
    }
    out
}

/// The inverse of [`gather_rows`]: an `[n, width]` matrix holding row `i` of `compact` at row
/// `rows[i]`, zeros elsewhere (`rows` distinct).
pub fn scatter_rows<T: Copy + Default + Send + Sync>(
    compact: &[T],
    width: usize,
    rows: &[usize],
    n: usize,
) -> Vec<T> {
    use rayon::prelude::*;
    let mut out = zeros(n * width);
    if width == 0 {
        return out;
    }
    // Destination rows in parallel: map each back to its compact row, if any.
    let mut source = vec![usize::MAX; n];
    for (i, &r) in rows.iter().enumerate() {
        source[r] = i;
    }
    out.par_chunks_mut(width)
        .zip(source.par_iter())
        .for_each(|(dst, &i)| {
            if i != usize::MAX {
                dst.copy_from_slice(&compact[i * width..][..width]);
            }
        });
    out
}

/// Column sums of a row-major `[rows, cols]` matrix (a bias gradient). Blocks of columns run
/// in parallel; each column is summed over the rows in order, whatever the thread count.
pub fn column_sums<T: Real>(data: &[T], cols: usize) -> Vec<T> {
    use rayon::prelude::*;
    const BLOCK: usize = 256;
    let mut sums = vec![T::default(); cols];
    sums.par_chunks_mut(BLOCK)
        .enumerate()
        .for_each(|(b, block)| {
            let (start, width) = (b * BLOCK, block.len());
            for row in data.chunks_exact(cols) {
                for (acc, &x) in block.iter_mut().zip(&row[start..start + width]) {
                    *acc += x;
                }
            }
        });
    sums
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scattering_undoes_gathering_in_any_row_order() {
        let data: Vec<f32> = (0..15).map(|x| x as f32).collect(); // [5, 3]
        let rows = [4, 0, 2];
        let compact = gather_rows(&data, 3, &rows);
        assert_eq!(compact, [12., 13., 14., 0., 1., 2., 6., 7., 8.]);
        let back = scatter_rows(&compact, 3, &rows, 5);
        assert_eq!(
            back,
            [0., 1., 2., 0., 0., 0., 6., 7., 8., 0., 0., 0., 12., 13., 14.]
        );
        // Large enough for the parallel zeroing.
        assert!(zeros::<f32>(1 << 16).iter().all(|&x| x == 0.0));
        assert_eq!(zeros::<f64>(1 << 16).len(), 1 << 16);
    }
}
