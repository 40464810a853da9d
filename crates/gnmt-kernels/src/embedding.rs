//! The gradient of an embedding table: row `v` of `d_table` is the sum, in position order, of
//! the gradients of the positions whose token is `v` (zero for tokens not looked up).
//!
//! Each parallel task owns a range of table rows and scans the ids, so no two tasks write one
//! row and every row adds its positions in the same order, whatever the thread count: the
//! bits of candle's `index_select` backward (a zero table, then the rows added in order), and
//! of `kernels/embedding.cu` in `gnmt-cuda-kernels`.

use rayon::prelude::*;

use crate::buffers::zeros;
use crate::Real;

/// Table rows one parallel task owns.
const ROWS_PER_TASK: usize = 64;

/// `grad [ids.len(), dim]` -> `d_table [vocab, dim]`. Ids at or beyond `vocab` add nowhere
/// (callers check the ids where they are looked up).
pub fn table_gradient<T: Real>(grad: &[T], ids: &[u32], vocab: usize, dim: usize) -> Vec<T> {
    assert_eq!(
        grad.len(),
        ids.len() * dim,
        "embedding gradient: one row per id"
    );
    let mut d_table = zeros(vocab * dim);
    if dim == 0 {
        return d_table;
    }
    d_table
        .par_chunks_mut(ROWS_PER_TASK * dim)
        .enumerate()
        .for_each(|(task, block)| {
            let first = task * ROWS_PER_TASK;
            let rows = first..first + block.len() / dim;
            for (position, &id) in ids.iter().enumerate() {
                let id = id as usize;
                if rows.contains(&id) {
                    let dst = &mut block[(id - first) * dim..][..dim];
                    for (d, &g) in dst.iter_mut().zip(&grad[position * dim..][..dim]) {
                        *d += g;
                    }
                }
            }
        });
    d_table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_sum_their_positions_in_order_and_others_stay_zero() {
        // Ids spanning three tasks' rows, repeated, and one out of range.
        let ids = [3u32, 130, 3, 64, 200, 3];
        let dim = 2;
        let grad: Vec<f32> = (0..ids.len() * dim)
            .map(|i| 0.1 * i as f32 + 1e-3)
            .collect();
        let d = table_gradient(&grad, &ids, 150, dim);
        assert_eq!(d.len(), 300);
        let row = |v: usize| &d[v * dim..][..dim];
        let sum = |positions: &[usize], c: usize| {
            positions
                .iter()
                .fold(0.0f32, |acc, &p| acc + grad[p * dim + c])
        };
        assert_eq!(row(3), [sum(&[0, 2, 5], 0), sum(&[0, 2, 5], 1)]);
        assert_eq!(row(130), &grad[2..4]);
        assert_eq!(row(64), &grad[6..8]);
        let touched = [3, 64, 130];
        for v in (0..150).filter(|v| !touched.contains(v)) {
            assert_eq!(row(v), [0.0, 0.0], "row {v}");
        }
    }

    #[test]
    fn the_thread_count_does_not_change_the_bits() {
        let vocab = 1000;
        let ids: Vec<u32> = (0..3000u32)
            .map(|i| (i * 7919 + i / 3) % vocab as u32)
            .collect();
        let grad: Vec<f32> = (0..ids.len() * 8)
            .map(|i| ((i * 37) % 101) as f32 / 7.0 - 7.0)
            .collect();
        let on = |threads| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| table_gradient(&grad, &ids, vocab, 8))
        };
        assert_eq!(on(1), on(3));
    }
}
