//! Learning a lexical table from a parallel corpus, for shortlists: IBM Model 1 (Brown et al.
//! 1993) over the model's pieces, estimated by expectation-maximisation. Each target piece of
//! a pair is explained by one of the pair's source pieces or by an empty source word (`NULL`);
//! the translation probabilities `p(target | source)` that explain the corpus best come out of
//! a few passes. Marian's tables come from fast_align's alignments; Model 1 is the same
//! family without the distortion term, and ranking each source piece's translations is all a
//! shortlist asks of it.
//!
//! Deterministic: every sum runs in corpus order, and the table is sorted before it is used.

use std::collections::HashMap;

use crate::shortlist::LexicalTable;

/// What to learn and what to keep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LexiconOptions {
    /// Expectation-maximisation passes over the corpus.
    pub iterations: usize,
    /// Translations kept per source piece, most probable first.
    pub keep: usize,
    /// Translations less probable than this are dropped.
    pub min_probability: f32,
}

impl Default for LexiconOptions {
    fn default() -> Self {
        Self {
            iterations: 5,
            keep: 100,
            min_probability: 1e-3,
        }
    }
}

/// `(source, target)` as one hash key; the empty source word is `u32::MAX`.
fn key(source: u32, target: u32) -> u64 {
    ((source as u64) << 32) | target as u64
}

const NULL_WORD: u32 = u32::MAX;

/// IBM Model 1's `p(target | source)` for `pairs` of id sequences (pieces only: no `<s>`,
/// `</s>` or language tag), and the target pieces' relative frequencies. `skip(id)` marks ids
/// to leave out of both sides (special tokens, tags).
pub fn learn(
    pairs: &[(Vec<u32>, Vec<u32>)],
    skip: impl Fn(u32) -> bool,
    options: &LexiconOptions,
) -> LexicalTable {
    let pairs: Vec<(Vec<u32>, Vec<u32>)> = pairs
        .iter()
        .map(|(s, t)| {
            let keep = |ids: &[u32]| ids.iter().copied().filter(|&id| !skip(id)).collect();
            (keep(s), keep(t))
        })
        .collect();
    // Uniform start: every co-occurring pair equally likely (the first pass normalises).
    let mut probability: HashMap<u64, f64> = HashMap::new();
    for (source, target) in &pairs {
        for &t in target {
            for &s in source.iter().chain([&NULL_WORD]) {
                probability.insert(key(s, t), 1.0);
            }
        }
    }
    for _ in 0..options.iterations {
        probability = expectation_maximisation_pass(&pairs, &probability);
    }
    LexicalTable {
        translations: best_translations(&probability, options),
        frequencies: frequencies(&pairs),
    }
}

/// One pass: each target piece's unit of count shared among its pair's source words in
/// proportion to their current probabilities, then renormalised per source word.
fn expectation_maximisation_pass(
    pairs: &[(Vec<u32>, Vec<u32>)],
    probability: &HashMap<u64, f64>,
) -> HashMap<u64, f64> {
    let mut counts: HashMap<u64, f64> = HashMap::with_capacity(probability.len());
    let mut totals: HashMap<u32, f64> = HashMap::new();
    let mut shares = Vec::new();
    for (source, target) in pairs {
        for &t in target {
            shares.clear();
            shares.extend(
                source
                    .iter()
                    .chain([&NULL_WORD])
                    .map(|&s| (s, probability[&key(s, t)])),
            );
            let sum: f64 = shares.iter().map(|&(_, p)| p).sum();
            for &(s, p) in &shares {
                let c = p / sum;
                *counts.entry(key(s, t)).or_default() += c;
                *totals.entry(s).or_default() += c;
            }
        }
    }
    for (k, c) in counts.iter_mut() {
        *c /= totals[&((k >> 32) as u32)];
    }
    counts
}

/// Each source piece's most probable targets (the empty word's are not a translation).
fn best_translations(
    probability: &HashMap<u64, f64>,
    options: &LexiconOptions,
) -> HashMap<u32, Vec<(u32, f32)>> {
    let mut by_source: HashMap<u32, Vec<(u32, f32)>> = HashMap::new();
    for (&k, &p) in probability {
        let (s, t) = ((k >> 32) as u32, k as u32);
        if s != NULL_WORD && p as f32 >= options.min_probability {
            by_source.entry(s).or_default().push((t, p as f32));
        }
    }
    for list in by_source.values_mut() {
        list.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        list.truncate(options.keep);
    }
    by_source
}

/// Relative frequency of every target piece, most frequent first (ties: lower id first).
fn frequencies(pairs: &[(Vec<u32>, Vec<u32>)]) -> Vec<(u32, f32)> {
    let mut counts: HashMap<u32, u64> = HashMap::new();
    for (_, target) in pairs {
        for &t in target {
            *counts.entry(t).or_default() += 1;
        }
    }
    let total: u64 = counts.values().sum();
    let mut list: Vec<(u32, u64)> = counts.into_iter().collect();
    list.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    list.into_iter()
        .map(|(t, c)| (t, (c as f64 / total as f64) as f32))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy corpus in which word `i` of the source always translates to word `100 + i`,
    /// and `50` (a function word) appears on the target side of every pair.
    fn corpus() -> Vec<(Vec<u32>, Vec<u32>)> {
        let sentences: [&[u32]; 6] = [&[1, 2, 3], &[1, 4], &[2, 4, 5], &[3, 5], &[1, 5], &[2, 3]];
        sentences
            .iter()
            .map(|s| {
                let mut target: Vec<u32> = s.iter().map(|w| 100 + w).collect();
                target.push(50);
                (s.to_vec(), target)
            })
            .collect()
    }

    #[test]
    fn each_word_learns_its_translation() {
        let table = learn(&corpus(), |_| false, &LexiconOptions::default());
        for w in 1..=5u32 {
            let best = table.translations[&w][0];
            assert_eq!(best.0, 100 + w, "source {w}: {:?}", table.translations[&w]);
            assert!(best.1 > 0.5, "source {w}: {best:?}");
        }
        // The function word is the most frequent target piece: one in every pair.
        assert_eq!(table.frequencies[0].0, 50);
        let total: f32 = table.frequencies.iter().map(|f| f.1).sum();
        assert!((total - 1.0).abs() < 1e-5);
    }

    #[test]
    fn learning_is_deterministic_and_honours_its_limits() {
        let options = LexiconOptions {
            iterations: 3,
            keep: 2,
            min_probability: 0.01,
        };
        let a = learn(&corpus(), |id| id == 4 || id == 104, &options);
        let b = learn(&corpus(), |id| id == 4 || id == 104, &options);
        assert_eq!(a, b);
        assert!(!a.translations.contains_key(&4));
        for list in a.translations.values() {
            assert!(list.len() <= 2);
            assert!(list.iter().all(|&(t, p)| t != 104 && p >= 0.01));
        }
    }
}
