//! chrF (Popović 2015) and chrF++ (word order 2), as sacreBLEU 2.x computes them.

use std::collections::HashMap;

use crate::{check_streams, python_split, Result, VERSION};

#[derive(Debug, Clone)]
pub struct ChrfOptions {
    pub char_order: usize,
    /// 0 for chrF, 2 for chrF++.
    pub word_order: usize,
    pub beta: f64,
    pub lowercase: bool,
}

impl Default for ChrfOptions {
    fn default() -> Self {
        Self {
            char_order: 6,
            word_order: 0,
            beta: 2.0,
            lowercase: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChrfScore {
    /// 0..100.
    pub score: f64,
    pub char_order: usize,
    pub word_order: usize,
    pub beta: f64,
    pub nrefs: usize,
    pub lowercase: bool,
}

impl ChrfScore {
    pub fn signature(&self) -> String {
        let case = if self.lowercase { "lc" } else { "mixed" };
        format!(
            "nrefs:{}|case:{case}|eff:yes|nc:{}|nw:{}|space:no|version:{VERSION}",
            self.nrefs, self.char_order, self.word_order
        )
    }
}

impl std::fmt::Display for ChrfScore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = if self.word_order > 0 {
            "chrF++"
        } else {
            "chrF2"
        };
        write!(f, "{name} = {:.2}", self.score)
    }
}

const PUNCTS: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

/// Words with one leading or trailing punctuation mark split off (chrF++'s word n-grams).
fn split_punctuation(sent: &str) -> Vec<String> {
    let mut out = Vec::new();
    for w in python_split(sent) {
        let chars: Vec<char> = w.chars().collect();
        if chars.len() == 1 {
            out.push(w.to_string());
        } else if PUNCTS.contains(chars[chars.len() - 1]) {
            out.push(chars[..chars.len() - 1].iter().collect());
            out.push(chars[chars.len() - 1].to_string());
        } else if PUNCTS.contains(chars[0]) {
            out.push(chars[0].to_string());
            out.push(chars[1..].iter().collect());
        } else {
            out.push(w.to_string());
        }
    }
    out
}

/// One counter per order: character orders first, then word orders.
fn all_ngrams(sent: &str, o: &ChrfOptions) -> Vec<HashMap<String, u64>> {
    let chars: Vec<char> = python_split(sent).flat_map(str::chars).collect();
    let mut out = Vec::new();
    for n in 1..=o.char_order {
        let mut c = HashMap::new();
        for w in chars.windows(n) {
            *c.entry(w.iter().collect::<String>()).or_insert(0) += 1;
        }
        out.push(c);
    }
    if o.word_order > 0 {
        let words = split_punctuation(sent);
        for n in 1..=o.word_order {
            let mut c = HashMap::new();
            for w in words.windows(n) {
                *c.entry(w.join(" ")).or_insert(0) += 1;
            }
            out.push(c);
        }
    }
    out
}

/// `[hyp, ref, match]` counts per order, flattened.
fn match_stats(hyp: &[HashMap<String, u64>], r: &[HashMap<String, u64>]) -> Vec<u64> {
    let mut stats = Vec::with_capacity(3 * hyp.len());
    for (h, r) in hyp.iter().zip(r) {
        let (mut matched, mut total) = (0, 0);
        for (g, &c) in h {
            total += c;
            if let Some(&rc) = r.get(g) {
                matched += c.min(rc);
            }
        }
        stats.extend([
            if r.is_empty() { 0 } else { total },
            r.values().sum(),
            matched,
        ]);
    }
    stats
}

fn f_score(stats: &[u64], beta: f64) -> f64 {
    let eps = 1e-16;
    let factor = beta * beta;
    let (mut avg_prec, mut avg_rec, mut effective) = (0.0, 0.0, 0usize);
    for s in stats.chunks(3) {
        let (n_hyp, n_ref, n_match) = (s[0], s[1], s[2]);
        let prec = if n_hyp > 0 {
            n_match as f64 / n_hyp as f64
        } else {
            eps
        };
        let rec = if n_ref > 0 {
            n_match as f64 / n_ref as f64
        } else {
            eps
        };
        if n_hyp > 0 && n_ref > 0 {
            avg_prec += prec;
            avg_rec += rec;
            effective += 1;
        }
    }
    if effective == 0 {
        return 0.0;
    }
    avg_prec /= effective as f64;
    avg_rec /= effective as f64;
    if avg_prec + avg_rec == 0.0 {
        return 0.0;
    }
    100.0 * (1.0 + factor) * avg_prec * avg_rec / (factor * avg_prec + avg_rec)
}

/// Corpus chrF: statistics summed over segments (for each segment, the reference with the
/// best segment-level score), then one F-score.
pub fn corpus_chrf<S: AsRef<str>>(
    hyps: &[S],
    refs: &[&[S]],
    options: &ChrfOptions,
) -> Result<ChrfScore> {
    check_streams(hyps, refs)?;
    let prep = |s: &str| {
        if options.lowercase {
            s.to_lowercase()
        } else {
            s.to_string()
        }
    };
    let orders = options.char_order + options.word_order;
    let mut total = vec![0u64; 3 * orders];
    for (i, hyp) in hyps.iter().enumerate() {
        let h = all_ngrams(&prep(hyp.as_ref()), options);
        let mut best: Option<(f64, Vec<u64>)> = None;
        for stream in refs {
            let stats = match_stats(&h, &all_ngrams(&prep(stream[i].as_ref()), options));
            let f = f_score(&stats, options.beta);
            if best.as_ref().is_none_or(|(bf, _)| f > *bf) {
                best = Some((f, stats));
            }
        }
        if let Some((_, stats)) = best {
            total.iter_mut().zip(stats).for_each(|(t, s)| *t += s);
        }
    }
    Ok(ChrfScore {
        score: f_score(&total, options.beta),
        char_order: options.char_order,
        word_order: options.word_order,
        beta: options.beta,
        nrefs: refs.len(),
        lowercase: options.lowercase,
    })
}
