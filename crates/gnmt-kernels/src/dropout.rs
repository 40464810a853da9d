//! Inverted-dropout masks drawn from a seekable ChaCha stream, and the product with a mask.

use rand::Rng;
use rand_chacha::ChaCha20Rng;
use rayon::prelude::*;

use crate::buffers::zeros;
use crate::real::Real;

/// Mask elements drawn per parallel job (a multiple of ChaCha's 16-word block).
pub const MASK_BLOCK: usize = 1 << 14;

/// Stream words fetched at once while drawing a mask block (4 KiB, in L1).
const WORDS_AT_ONCE: usize = 1024;

/// The next `n` elements of an inverted-dropout mask with drop probability `p` in (0, 1):
/// `1 / (1 - p)` where kept, 0 where dropped. Element `i` is decided by word `i` of what is
/// left of `rng`'s stream, exactly as `rng.random::<f32>() < 1 - p` drawn once per element
/// would decide it, and `rng` ends past those `n` words: the mask does not depend on the
/// thread count, and a generator saved with the training state resumes the same stream.
pub fn draw_mask(rng: &mut ChaCha20Rng, p: f32, n: usize) -> Vec<f32> {
    let keep = 1.0 - p;
    let scale = 1.0 / keep;
    // `rng.random::<f32>()` is `(word >> 8) as f32 * 2^-24`, every step exact, so
    // `random < keep` is `(word >> 8) as f32 < keep * 2^24`: the same decision, made on a
    // block of words at once, which vectorises.
    let threshold = keep * (1u32 << 24) as f32;
    // ChaCha seeks to any word, so blocks of the mask are drawn in parallel.
    let start = rng.get_word_pos();
    let mut mask = zeros(n);
    mask.par_chunks_mut(MASK_BLOCK)
        .enumerate()
        .for_each(|(block, out)| {
            let mut rng = rng.clone();
            rng.set_word_pos(start + (block * MASK_BLOCK) as u128);
            let mut words = [0u32; WORDS_AT_ONCE];
            for part in out.chunks_mut(WORDS_AT_ONCE) {
                let words = &mut words[..part.len()];
                // Successive words of the stream, as successive `next_u32` calls give.
                rng.fill(words);
                keep_or_drop(words, threshold, scale, part);
            }
        });
    rng.set_word_pos(start + n as u128);
    mask
}

/// `scale` where a word's top 24 bits are below `threshold`, else 0. The two numbers come by
/// value: captured by reference, they were reloaded for every element and nothing vectorised.
fn keep_or_drop(words: &[u32], threshold: f32, scale: f32, out: &mut [f32]) {
    for (m, &word) in out.iter_mut().zip(words) {
        *m = if ((word >> 8) as f32) < threshold {
            scale
        } else {
            0.0
        };
    }
}

/// `x * mask` elementwise, in parallel (the mask converted to `T` exactly).
///
/// Panics if the lengths differ.
pub fn times_mask<T: Real>(x: &[T], mask: &[f32]) -> Vec<T> {
    assert_eq!(x.len(), mask.len(), "dropout: mask of another length");
    let mut out = zeros(x.len());
    out.par_iter_mut()
        .zip(x.par_iter().zip(mask.par_iter()))
        .for_each(|(o, (&x, &m))| *o = x * T::from_f64(m as f64));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngCore, SeedableRng};

    /// The mask drawn in parallel blocks is the one a sequential loop draws, and the generator
    /// ends where that loop leaves it: resumed training sees the same stream.
    #[test]
    fn parallel_masks_equal_the_sequential_draw() {
        let n = 2 * MASK_BLOCK + 1234;
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        rng.next_u32(); // start mid-block
        let mut sequential = rng.clone();
        let got = draw_mask(&mut rng, 0.3, n);
        let want: Vec<f32> = (0..n)
            .map(|_| {
                if sequential.random::<f32>() < 0.7 {
                    1.0 / 0.7
                } else {
                    0.0
                }
            })
            .collect();
        assert_eq!(got, want);
        assert_eq!(rng.next_u32(), sequential.next_u32());
        let x: Vec<f64> = (0..n).map(|i| i as f64).collect();
        let masked = times_mask(&x, &got);
        assert!(masked
            .iter()
            .zip(&got)
            .enumerate()
            .all(|(i, (&y, &m))| y == i as f64 * m as f64));
    }
}
