//! Token-budget batches with length bucketing, seeded shuffling and an exact resume cursor.
//!
//! An epoch's plan is a pure function of `(dataset, options, epoch)`: pairs are shuffled with a
//! ChaCha stream chosen by the epoch, stably sorted by length (so equal lengths stay in random
//! order), cut into batches whose padded size fits the token budget, and the batches shuffled
//! again. A [`Cursor`] `(epoch, batch)` therefore pins a position exactly: resuming rebuilds
//! the epoch's plan and skips to the batch, with no state beyond two integers.
//!
//! A dataset made of several corpora (a multilingual model's pairs, one after the other) can
//! be sampled by size with a temperature ([`Mix`]): each epoch then draws its pairs afresh,
//! still as a function of the epoch alone.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

use crate::dataset::Dataset;
use crate::{BOS_ID, EOS_ID, PAD_ID};

/// How batches are formed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchOptions {
    /// Upper bound on padded tokens per batch: `sentences * max(src_width, tgt_width)`.
    /// A single pair longer than the budget still gets a batch of its own.
    pub max_tokens: usize,
    /// Upper bound on sentence pairs per batch.
    pub max_sentences: usize,
    pub seed: u64,
    /// `false` gives a fixed length-sorted order (validation, scoring).
    pub shuffle: bool,
    /// How an epoch samples the dataset's corpora; `None`: every pair once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mix: Option<Mix>,
}

/// Sampling across the corpora of one dataset, stored one after the other: an epoch holds as
/// many pairs as the dataset, corpus `i` contributing in proportion to `size_i ^ (1 / T)`
/// (Arivazhagan et al. 2019). `T = 1` samples by size (each pair once per epoch); larger `T`
/// moves towards equal shares, up-sampling the small corpora.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mix {
    /// Pairs in each corpus, in dataset order (they sum to the dataset's length).
    pub parts: Vec<usize>,
    pub temperature: f64,
}

impl Mix {
    /// Pairs of each corpus in one epoch: the shares of the dataset's length, rounded, at
    /// least one each.
    pub fn quotas(&self) -> Vec<usize> {
        let total: usize = self.parts.iter().sum();
        let weights: Vec<f64> = self
            .parts
            .iter()
            .map(|&n| (n as f64).powf(1.0 / self.temperature))
            .collect();
        let sum: f64 = weights.iter().sum();
        weights
            .iter()
            .zip(&self.parts)
            .map(|(w, &n)| match n {
                0 => 0,
                _ => ((total as f64 * w / sum).round() as usize).max(1),
            })
            .collect()
    }

    /// The dataset indices of one epoch, before shuffling: each corpus repeated as often as
    /// its quota holds it whole, and the rest of its quota a random subset (drawn afresh each
    /// epoch, so down-sampling a corpus skips different pairs every time).
    fn sample(&self, rng: &mut ChaCha20Rng) -> Vec<usize> {
        let mut order = Vec::new();
        let mut start = 0;
        for (&n, quota) in self.parts.iter().zip(self.quotas()) {
            let part: Vec<usize> = (start..start + n).collect();
            for _ in 0..quota / n.max(1) {
                order.extend_from_slice(&part);
            }
            let mut rest = part;
            rest.shuffle(rng);
            rest.truncate(quota % n.max(1));
            order.extend(rest);
            start += n;
        }
        order
    }
}

impl Default for BatchOptions {
    fn default() -> Self {
        Self {
            max_tokens: 2500,
            max_sentences: 256,
            seed: 1,
            shuffle: true,
            mix: None,
        }
    }
}

/// A position in the stream of batches: the next batch to deliver is number `batch` of the
/// plan of `epoch` (both 0-based).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub epoch: u64,
    pub batch: usize,
}

/// Padded, row-major id matrices for one batch. Source rows end with `</s>`; the decoder reads
/// `tgt_in` (`<s>` + pieces) and is trained to produce `tgt_out` (pieces + `</s>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Dataset indices of the rows, in row order.
    pub indices: Vec<usize>,
    pub src: Vec<u32>,
    /// Columns of `src`.
    pub src_width: usize,
    /// Real (unpadded) length of each source row, `</s>` included.
    pub src_lengths: Vec<usize>,
    pub tgt_in: Vec<u32>,
    pub tgt_out: Vec<u32>,
    /// Columns of `tgt_in` and `tgt_out`.
    pub tgt_width: usize,
    /// Real length of each target row (`tgt_out` including `</s>`).
    pub tgt_lengths: Vec<usize>,
}

impl Batch {
    /// Builds the padded matrices for the given dataset rows.
    pub fn from_indices(dataset: &Dataset, indices: Vec<usize>) -> Self {
        let src_lengths: Vec<usize> = indices
            .iter()
            .map(|&i| dataset.src.seq_len(i) + 1)
            .collect();
        let tgt_lengths: Vec<usize> = indices
            .iter()
            .map(|&i| dataset.tgt.seq_len(i) + 1)
            .collect();
        let src_width = src_lengths.iter().copied().max().unwrap_or(0);
        let tgt_width = tgt_lengths.iter().copied().max().unwrap_or(0);
        let n = indices.len();
        let mut src = vec![PAD_ID; n * src_width];
        let mut tgt_in = vec![PAD_ID; n * tgt_width];
        let mut tgt_out = vec![PAD_ID; n * tgt_width];
        for (row, &i) in indices.iter().enumerate() {
            let s = dataset.src.get(i);
            let r = &mut src[row * src_width..];
            r[..s.len()].copy_from_slice(s);
            r[s.len()] = EOS_ID;
            let t = dataset.tgt.get(i);
            let (ti, to) = (
                &mut tgt_in[row * tgt_width..],
                &mut tgt_out[row * tgt_width..],
            );
            ti[0] = BOS_ID;
            ti[1..=t.len()].copy_from_slice(t);
            to[..t.len()].copy_from_slice(t);
            to[t.len()] = EOS_ID;
        }
        Self {
            indices,
            src,
            src_width,
            src_lengths,
            tgt_in,
            tgt_out,
            tgt_width,
            tgt_lengths,
        }
    }

    pub fn len(&self) -> usize {
        self.indices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// Real target tokens (`</s>` included): what "target tokens/s" counts.
    pub fn tgt_tokens(&self) -> usize {
        self.tgt_lengths.iter().sum()
    }

    pub fn src_tokens(&self) -> usize {
        self.src_lengths.iter().sum()
    }

    /// The rows that process `rank` of `size` trains on when a job splits this batch: a
    /// contiguous range (rows are sorted by length, so each share stays narrow) holding about
    /// `1/size` of the target tokens; empty when the batch has fewer rows than ranks need.
    pub fn share(&self, dataset: &Dataset, rank: usize, size: usize) -> Batch {
        let rows = share_rows(&self.tgt_lengths, rank, size);
        Batch::from_indices(dataset, self.indices[rows].to_vec())
    }

    /// Share of the source and target matrices that is padding.
    pub fn padding_fraction(&self) -> f64 {
        let cells = self.len() * (self.src_width + self.tgt_width);
        if cells == 0 {
            return 0.0;
        }
        1.0 - (self.src_tokens() + self.tgt_tokens()) as f64 / cells as f64
    }
}

/// Rows `[start, end)` of share `rank` of `size`: share k starts at the first row whose
/// preceding rows hold at least `k/size` of the `lengths`' sum. Every row is in exactly one
/// share, and the shares are in rank order.
pub fn share_rows(lengths: &[usize], rank: usize, size: usize) -> std::ops::Range<usize> {
    assert!(rank < size, "rank {rank} of {size}");
    let total: usize = lengths.iter().sum();
    let start_of = |k: usize| {
        if k == 0 {
            return 0;
        }
        if k == size {
            return lengths.len();
        }
        let mut before = 0;
        for (row, &l) in lengths.iter().enumerate() {
            if before * size >= k * total {
                return row;
            }
            before += l;
        }
        lengths.len()
    };
    start_of(rank)..start_of(rank + 1)
}

/// Keeps the corpus-sampling stream apart from the shuffling stream of the same seed.
const MIX_SEED_SALT: u64 = 0x6d69_7865_645f_7061;

/// The batches of one epoch as lists of dataset indices.
pub fn plan_epoch(dataset: &Dataset, options: &BatchOptions, epoch: u64) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = match &options.mix {
        None => (0..dataset.len()).collect(),
        Some(mix) => {
            let mut rng = ChaCha20Rng::seed_from_u64(options.seed ^ MIX_SEED_SALT);
            rng.set_stream(epoch);
            mix.sample(&mut rng)
        }
    };
    let mut rng = ChaCha20Rng::seed_from_u64(options.seed);
    rng.set_stream(epoch);
    if options.shuffle {
        order.shuffle(&mut rng);
    }
    // Stable: pairs of equal length keep their shuffled order.
    order.sort_by_key(|&i| (dataset.tgt.seq_len(i), dataset.src.seq_len(i)));

    let mut batches = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut width = 0;
    for i in order {
        let w = dataset.src.seq_len(i).max(dataset.tgt.seq_len(i)) + 1;
        let new_width = width.max(w);
        let fits = (current.len() + 1) * new_width <= options.max_tokens
            && current.len() < options.max_sentences;
        if !fits && !current.is_empty() {
            batches.push(std::mem::take(&mut current));
            width = 0;
        }
        width = width.max(w);
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    if options.shuffle {
        batches.shuffle(&mut rng);
    }
    batches
}

/// An endless stream of training batches, epoch after epoch, from a cursor.
pub struct Batcher<'a> {
    dataset: &'a Dataset,
    options: BatchOptions,
    cursor: Cursor,
    plan: Vec<Vec<usize>>,
}

impl<'a> Batcher<'a> {
    /// Starts at `cursor` (use `Cursor::default()` for a fresh run). A cursor past the end of
    /// its epoch moves on to the next epoch.
    pub fn new(dataset: &'a Dataset, options: BatchOptions, cursor: Cursor) -> Self {
        let plan = plan_epoch(dataset, &options, cursor.epoch);
        Self {
            dataset,
            options,
            cursor,
            plan,
        }
    }

    /// The position of the next batch: save this to resume exactly.
    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    /// Number of batches in the current epoch.
    pub fn batches_per_epoch(&self) -> usize {
        self.plan.len()
    }
}

impl Iterator for Batcher<'_> {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        if self.dataset.is_empty() {
            return None;
        }
        if self.cursor.batch >= self.plan.len() {
            self.cursor = Cursor {
                epoch: self.cursor.epoch + 1,
                batch: 0,
            };
            self.plan = plan_epoch(self.dataset, &self.options, self.cursor.epoch);
        }
        let indices = self.plan[self.cursor.batch].clone();
        self.cursor.batch += 1;
        Some(Batch::from_indices(self.dataset, indices))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{corpus::read_parallel, dataset::FilterOptions, Vocab, VocabOptions};

    fn dataset(n: usize) -> Dataset {
        let dir = tempfile::tempdir().unwrap();
        let (src, tgt) = crate::synthetic::reverse_task(n, 12, 1, 20, 7);
        let (s, t) = (dir.path().join("r.src"), dir.path().join("r.tgt"));
        std::fs::write(&s, src.join("\n")).unwrap();
        std::fs::write(&t, tgt.join("\n")).unwrap();
        let vocab = Vocab::train_from_sentences(
            &src,
            &VocabOptions {
                size: 300,
                ..Default::default()
            },
        )
        .unwrap();
        Dataset::build(
            &read_parallel(&s, &t).unwrap(),
            &vocab,
            &FilterOptions::default(),
        )
        .unwrap()
    }

    #[test]
    fn shares_cover_every_row_once_in_order_and_balance_tokens() {
        let lengths = [3, 3, 4, 4, 5, 6, 6, 7, 9, 12];
        for size in 1..=12 {
            let mut next = 0;
            for rank in 0..size {
                let r = share_rows(&lengths, rank, size);
                assert_eq!(r.start, next, "size {size} rank {rank}");
                next = r.end;
                if size <= 2 {
                    let tokens: usize = lengths[r].iter().sum();
                    // Within one row's length of an even split.
                    assert!(tokens.abs_diff(59 / size) <= 12, "size {size}: {tokens}");
                }
            }
            assert_eq!(next, lengths.len());
        }
        assert_eq!(share_rows(&lengths, 0, 1), 0..10);
        assert_eq!(share_rows(&[], 1, 2), 0..0);
        let ds = dataset(50);
        let batch = Batch::from_indices(&ds, (0..7).collect());
        let halves = [batch.share(&ds, 0, 2), batch.share(&ds, 1, 2)];
        assert_eq!(
            halves[0].tgt_tokens() + halves[1].tgt_tokens(),
            batch.tgt_tokens()
        );
        assert_eq!(
            [halves[0].indices.clone(), halves[1].indices.clone()].concat(),
            batch.indices
        );
    }

    #[test]
    fn every_pair_once_per_epoch_within_budget() {
        let ds = dataset(500);
        let opts = BatchOptions {
            max_tokens: 200,
            max_sentences: 16,
            seed: 3,
            shuffle: true,
            mix: None,
        };
        let plan = plan_epoch(&ds, &opts, 0);
        let mut seen: Vec<usize> = plan.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..ds.len()).collect::<Vec<_>>());
        for b in &plan {
            let batch = Batch::from_indices(&ds, b.clone());
            assert!(batch.len() <= 16);
            assert!(batch.len() * batch.src_width.max(batch.tgt_width) <= 200 || batch.len() == 1);
        }
    }

    #[test]
    fn a_mix_samples_corpora_by_tempered_size_afresh_each_epoch() {
        // Two corpora of 240 and 60 pairs: T = 1 keeps each pair once; T = 5 moves towards
        // equal shares (240^0.2 : 60^0.2), up-sampling the small one and drawing a
        // different part of the large one every epoch.
        let ds = dataset(300);
        let mix = |temperature| Mix {
            parts: vec![240, 60],
            temperature,
        };
        assert_eq!(mix(1.0).quotas(), [240, 60]);
        let quotas = mix(5.0).quotas();
        let expected_small = 300.0 / (1.0 + 4f64.powf(0.2));
        assert_eq!(
            quotas,
            [
                300 - expected_small.round() as usize,
                expected_small.round() as usize
            ]
        );
        let opts = BatchOptions {
            max_tokens: 150,
            mix: Some(mix(5.0)),
            ..Default::default()
        };
        let counts = |epoch| {
            let mut seen = vec![0usize; 300];
            for i in plan_epoch(&ds, &opts, epoch).into_iter().flatten() {
                seen[i] += 1;
            }
            seen
        };
        let (first, second) = (counts(0), counts(1));
        assert_eq!(first.iter().sum::<usize>(), 300);
        assert_eq!(first[..240].iter().sum::<usize>(), quotas[0]);
        assert!(first[..240].iter().all(|&c| c <= 1));
        // 129 draws of 60 pairs: every pair twice, 9 of them three times.
        assert!(first[240..].iter().all(|&c| c == 2 || c == 3));
        assert_eq!(first[240..].iter().sum::<usize>(), quotas[1]);
        assert_ne!(
            first[..240],
            second[..240],
            "the large corpus's sample is drawn afresh"
        );
        assert_eq!(plan_epoch(&ds, &opts, 1), plan_epoch(&ds, &opts, 1));
        // T = 1 plans exactly as without a mix.
        let by_size = BatchOptions {
            mix: Some(mix(1.0)),
            ..opts.clone()
        };
        let plain = BatchOptions {
            mix: None,
            ..opts.clone()
        };
        assert_eq!(plan_epoch(&ds, &by_size, 3), plan_epoch(&ds, &plain, 3));
    }

    #[test]
    fn seeded_plans_are_reproducible_and_epochs_differ() {
        let ds = dataset(300);
        let opts = BatchOptions {
            max_tokens: 150,
            ..Default::default()
        };
        assert_eq!(plan_epoch(&ds, &opts, 0), plan_epoch(&ds, &opts, 0));
        assert_ne!(plan_epoch(&ds, &opts, 0), plan_epoch(&ds, &opts, 1));
        let other = BatchOptions {
            seed: 2,
            ..opts.clone()
        };
        assert_ne!(plan_epoch(&ds, &opts, 0), plan_epoch(&ds, &other, 0));
    }

    #[test]
    fn resume_from_cursor_continues_the_same_stream() {
        let ds = dataset(200);
        let opts = BatchOptions {
            max_tokens: 120,
            ..Default::default()
        };
        let full: Vec<Batch> = Batcher::new(&ds, opts.clone(), Cursor::default())
            .take(40)
            .collect();
        let mut first = Batcher::new(&ds, opts.clone(), Cursor::default());
        let head: Vec<Batch> = first.by_ref().take(17).collect();
        let resumed: Vec<Batch> = Batcher::new(&ds, opts, first.cursor()).take(23).collect();
        assert_eq!([head, resumed].concat(), full);
    }

    #[test]
    fn matrices_are_padded_and_framed() {
        let ds = dataset(50);
        let b = Batch::from_indices(&ds, vec![0, 1, 2]);
        for (row, &i) in b.indices.iter().enumerate() {
            let s = ds.src.get(i);
            let src_row = &b.src[row * b.src_width..(row + 1) * b.src_width];
            assert_eq!(&src_row[..s.len()], s);
            assert_eq!(src_row[s.len()], EOS_ID);
            assert!(src_row[s.len() + 1..].iter().all(|&x| x == PAD_ID));
            let t = ds.tgt.get(i);
            let tin = &b.tgt_in[row * b.tgt_width..(row + 1) * b.tgt_width];
            let tout = &b.tgt_out[row * b.tgt_width..(row + 1) * b.tgt_width];
            assert_eq!(tin[0], BOS_ID);
            assert_eq!(&tin[1..=t.len()], t);
            assert_eq!(&tout[..t.len()], t);
            assert_eq!(tout[t.len()], EOS_ID);
            assert_eq!(b.tgt_lengths[row], t.len() + 1);
        }
    }

    #[test]
    fn unshuffled_plan_is_length_sorted() {
        let ds = dataset(100);
        let opts = BatchOptions {
            shuffle: false,
            max_tokens: 100,
            ..Default::default()
        };
        let flat: Vec<usize> = plan_epoch(&ds, &opts, 0).into_iter().flatten().collect();
        assert!(flat
            .windows(2)
            .all(|w| ds.tgt.seq_len(w[0]) <= ds.tgt.seq_len(w[1])));
        assert_eq!(plan_epoch(&ds, &opts, 0), plan_epoch(&ds, &opts, 5));
    }
}
