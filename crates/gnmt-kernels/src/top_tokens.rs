//! The few best next tokens of every decoder row, straight from the logits. Beam search needs
//! only the `k` best log-probabilities of each row and greedy search only the best one; the
//! full `[rows, V]` log-softmax, written out and copied back, cost a fifth of a beam step.
//! Here each row is read three times in cache (its maximum, its log-sum-exp, a top-k scan)
//! and nothing of vocabulary size is written.
//!
//! The log-probabilities are bit for bit those of `gnmt_model::Gnmt::step` (`logit - logsumexp`
//! with the same log-sum-exp), and ties rank the lower token id first.

use rayon::prelude::*;

use crate::softmax::log_sum_exp_row;

/// The `k` best tokens of each row with their log-probabilities, best first.
#[derive(Debug, Clone, PartialEq)]
pub struct TopTokens {
    k: usize,
    tokens: Vec<u32>,
    log_probs: Vec<f32>,
}

impl TopTokens {
    /// Rows of `k` tokens and their log-probabilities, best first (ranked elsewhere: a GPU).
    ///
    /// Panics if the two differ in length or are not whole rows.
    pub fn from_rows(k: usize, tokens: Vec<u32>, log_probs: Vec<f32>) -> Self {
        assert_eq!(
            tokens.len(),
            log_probs.len(),
            "top tokens: one value per token"
        );
        assert!(
            k > 0 || tokens.is_empty(),
            "top tokens: rows of 0 tokens hold none"
        );
        assert_eq!(tokens.len() % k.max(1), 0, "top tokens: not whole rows");
        Self {
            k,
            tokens,
            log_probs,
        }
    }

    /// Rows (decoder batch size).
    pub fn rows(&self) -> usize {
        self.tokens.len().checked_div(self.k).unwrap_or(0)
    }

    /// Tokens kept per row: the `k` asked for, or the vocabulary size if smaller.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Row `r`'s `(token, log-probability)` pairs, best first.
    pub fn row(&self, r: usize) -> impl Iterator<Item = (u32, f32)> + '_ {
        let span = r * self.k..(r + 1) * self.k;
        self.tokens[span.clone()]
            .iter()
            .copied()
            .zip(self.log_probs[span].iter().copied())
    }

    /// The best token of every row (greedy decoding).
    pub fn best(&self) -> Vec<u32> {
        self.tokens.iter().step_by(self.k.max(1)).copied().collect()
    }

    /// Tokens renamed through `ids`: token `t` becomes `ids[t]`. For rows scored over a
    /// subset of the vocabulary (a shortlist), whose positions `ids` names.
    pub fn renamed(mut self, ids: &[u32]) -> Self {
        for t in &mut self.tokens {
            *t = ids[*t as usize];
        }
        self
    }

    /// Every row widened to `k` entries, the added ones `(0, -inf)`: rows ranked over lists
    /// shorter than `k` then share one width with the rest. A `-inf` entry is no candidate.
    pub fn padded_to(self, k: usize) -> Self {
        if k <= self.k || self.k == 0 {
            return self;
        }
        let rows = self.rows();
        let mut tokens = Vec::with_capacity(rows * k);
        let mut log_probs = Vec::with_capacity(rows * k);
        for r in 0..rows {
            let span = r * self.k..(r + 1) * self.k;
            tokens.extend_from_slice(&self.tokens[span.clone()]);
            tokens.resize((r + 1) * k, 0);
            log_probs.extend_from_slice(&self.log_probs[span]);
            log_probs.resize((r + 1) * k, f32::NEG_INFINITY);
        }
        TopTokens {
            k,
            tokens,
            log_probs,
        }
    }

    /// The rows of `parts`, in order, as one; every part must keep the same `k`.
    pub fn concat(parts: Vec<TopTokens>) -> TopTokens {
        let k = parts.first().map_or(0, |p| p.k);
        let mut tokens = Vec::new();
        let mut log_probs = Vec::new();
        for p in parts {
            assert_eq!(p.k, k, "top tokens of different widths");
            tokens.extend(p.tokens);
            log_probs.extend(p.log_probs);
        }
        TopTokens {
            k,
            tokens,
            log_probs,
        }
    }
}

/// Rows below this many logits are handled on the calling thread.
const PARALLEL_MIN_LOGITS: usize = 1 << 16;

/// The top `k` of each row of `logits [rows, vocab]` (row-major), as log-probabilities.
pub fn top_tokens(logits: &[f32], vocab: usize, k: usize) -> TopTokens {
    top_of_rows(logits, vocab, k, Scores::Logits)
}

/// The top `k` of each row of `scores [rows, vocab]` that are already log-probabilities (or
/// any scores to rank as they are, such as an ensemble's combination), with those values.
pub fn top_scores(scores: &[f32], vocab: usize, k: usize) -> TopTokens {
    top_of_rows(scores, vocab, k, Scores::Final)
}

/// What the rows hold.
#[derive(Clone, Copy)]
enum Scores {
    /// Logits: each row is normalised by its log-sum-exp.
    Logits,
    /// Values ranked and returned as they are.
    Final,
}

fn top_of_rows(logits: &[f32], vocab: usize, k: usize, scores: Scores) -> TopTokens {
    assert!(vocab > 0, "top tokens of an empty vocabulary");
    assert_eq!(logits.len() % vocab, 0, "logits are not whole rows");
    let k = k.min(vocab);
    let rows = logits.len() / vocab;
    let mut tokens = vec![0u32; rows * k];
    let mut log_probs = vec![0f32; rows * k];
    if k > 0 {
        let work = |((row, t), l): ((&[f32], &mut [u32]), &mut [f32])| {
            let lse = match scores {
                Scores::Logits => log_sum_exp_row(row),
                Scores::Final => 0.0,
            };
            row_top_k(row, lse, t, l);
        };
        let jobs = logits
            .par_chunks(vocab)
            .zip(tokens.par_chunks_mut(k))
            .zip(log_probs.par_chunks_mut(k));
        if logits.len() >= PARALLEL_MIN_LOGITS {
            jobs.for_each(work);
        } else {
            logits
                .chunks(vocab)
                .zip(tokens.chunks_mut(k))
                .zip(log_probs.chunks_mut(k))
                .for_each(work);
        }
    }
    TopTokens {
        k,
        tokens,
        log_probs,
    }
}

/// Elements per block of the scan: a block whose maximum cannot enter the current top `k` is
/// skipped with one vectorised comparison.
const BLOCK: usize = 16;

/// The `tokens.len()` largest values `x - lse` of one row, best first (ties: lower index
/// first), written to `tokens` and `log_probs`.
fn row_top_k(row: &[f32], lse: f32, tokens: &mut [u32], log_probs: &mut [f32]) {
    let k = tokens.len();
    // The best so far, sorted best first; a value enters only if it beats the k-th.
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    for (b, block) in row.chunks(BLOCK).enumerate() {
        // `x - lse` is monotone in `x`, so no element of a block beats the k-th unless its
        // maximum does. (`max` passes NaN over, as the plain scan's comparison does.)
        if best.len() == k {
            let top = block.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            let may_enter = top - lse > best[k - 1].1;
            if !may_enter {
                continue;
            }
        }
        for (i, &x) in block.iter().enumerate() {
            let value = x - lse;
            if best.len() < k || value > best[best.len() - 1].1 {
                let at = best.partition_point(|&(_, v)| v >= value);
                best.insert(at, ((b * BLOCK + i) as u32, value));
                best.truncate(k);
            }
        }
    }
    for ((t, l), (index, value)) in tokens.iter_mut().zip(log_probs.iter_mut()).zip(best) {
        *t = index;
        *l = value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain computation: log-softmax of the whole row, then the k best, lower index first
    /// among equals.
    fn reference(row: &[f32], k: usize) -> Vec<(u32, f32)> {
        let mut z = row.to_vec();
        crate::softmax::log_softmax_row(&mut z);
        let mut all: Vec<(u32, f32)> = z.iter().enumerate().map(|(i, &v)| (i as u32, v)).collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(k);
        all
    }

    fn pseudo_random_row(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 20.0
            })
            .collect()
    }

    #[test]
    fn matches_a_full_log_softmax_and_sort() {
        for (seed, vocab) in [
            (1u64, 1usize),
            (2, 7),
            (3, 16),
            (4, 17),
            (5, 300),
            (6, 8000),
        ] {
            for k in [1, 2, 5, 12] {
                let rows = 3usize;
                let logits: Vec<f32> = (0..rows)
                    .flat_map(|r| pseudo_random_row(seed * 10 + r as u64, vocab))
                    .collect();
                let top = top_tokens(&logits, vocab, k);
                assert_eq!(top.rows(), rows);
                assert_eq!(top.k(), k.min(vocab));
                for r in 0..rows {
                    let got: Vec<(u32, f32)> = top.row(r).collect();
                    let want = reference(&logits[r * vocab..][..vocab], k);
                    // Bit-for-bit equal log-probabilities, same order.
                    assert_eq!(got, want, "vocab {vocab}, k {k}, row {r}");
                }
            }
        }
    }

    #[test]
    fn ties_rank_the_lower_token_first_across_blocks() {
        let mut row = vec![0f32; 40];
        for i in [3, 20, 37] {
            row[i] = 5.0;
        }
        let top = top_tokens(&row, 40, 4);
        let tokens: Vec<u32> = top.row(0).map(|(t, _)| t).collect();
        assert_eq!(tokens, vec![3, 20, 37, 0]);
        assert_eq!(top.best(), vec![3]);
    }

    /// Ranking log-probabilities as they are gives what ranking their logits gives: the same
    /// tokens with the same values, bit for bit.
    #[test]
    fn final_scores_rank_as_their_logits_do() {
        let vocab = 300;
        let logits: Vec<f32> = (0..4u64)
            .flat_map(|r| pseudo_random_row(r + 70, vocab))
            .collect();
        let mut log_probs = logits.clone();
        log_probs
            .chunks_mut(vocab)
            .for_each(crate::softmax::log_softmax_row);
        for k in [1, 5, 17] {
            assert_eq!(
                top_scores(&log_probs, vocab, k),
                top_tokens(&logits, vocab, k)
            );
        }
    }

    #[test]
    fn renamed_and_joined_rows_keep_their_order_and_values() {
        let a = top_tokens(&[0.0, 3.0, 1.0, 2.0], 2, 1);
        let b = top_tokens(&[5.0, 4.0], 2, 1);
        let joined = TopTokens::concat(vec![a.clone().renamed(&[10, 20]), b.renamed(&[7, 9])]);
        assert_eq!(joined.rows(), 3);
        assert_eq!(joined.best(), vec![20, 20, 7]);
        let first: Vec<(u32, f32)> = joined.row(0).collect();
        assert_eq!(first[0].1, a.row(0).next().unwrap().1);
        let wide = a.clone().padded_to(3);
        assert_eq!(wide.k(), 3);
        let second: Vec<(u32, f32)> = wide.row(1).collect();
        assert_eq!(second[0], a.row(1).next().unwrap());
        assert_eq!(second[1..], [(0, f32::NEG_INFINITY); 2]);
    }

    #[test]
    fn large_batches_split_across_threads_give_the_same_result() {
        let vocab = 5000;
        let logits: Vec<f32> = (0..20u64)
            .flat_map(|r| pseudo_random_row(r, vocab))
            .collect();
        assert!(logits.len() >= PARALLEL_MIN_LOGITS);
        let top = top_tokens(&logits, vocab, 5);
        for r in 0..20 {
            let got: Vec<(u32, f32)> = top.row(r).collect();
            assert_eq!(got, reference(&logits[r * vocab..][..vocab], 5));
        }
    }

    #[test]
    fn rows_ranked_elsewhere_read_back_as_ranked_here() {
        let logits = pseudo_random_row(9, 3 * 40);
        let here = top_tokens(&logits, 40, 4);
        let (tokens, log_probs): (Vec<u32>, Vec<f32>) = (0..3).flat_map(|r| here.row(r)).unzip();
        assert_eq!(TopTokens::from_rows(4, tokens, log_probs), here);
        assert_eq!(TopTokens::from_rows(0, Vec::new(), Vec::new()).rows(), 0);
    }

    #[test]
    #[should_panic(expected = "not whole rows")]
    fn rows_ranked_elsewhere_must_be_whole() {
        TopTokens::from_rows(4, vec![1, 2, 3], vec![0.0; 3]);
    }
}
