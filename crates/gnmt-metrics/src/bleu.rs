//! Corpus BLEU (Papineni et al. 2002) with sacreBLEU's defaults.

use std::collections::HashMap;

use crate::{check_streams, python_split, tokenize_13a, Result, VERSION};

const MAX_ORDER: usize = 4;

#[derive(Debug, Clone, Default)]
pub struct BleuOptions {
    /// Lowercase hypotheses and references before tokenizing (`-lc`).
    pub lowercase: bool,
}

/// A corpus BLEU score and its sufficient statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct BleuScore {
    /// 0..100.
    pub score: f64,
    /// Matching n-grams of each order 1..4.
    pub counts: [u64; MAX_ORDER],
    /// Hypothesis n-grams of each order.
    pub totals: [u64; MAX_ORDER],
    /// Smoothed precisions in percent.
    pub precisions: [f64; MAX_ORDER],
    pub brevity_penalty: f64,
    pub sys_len: u64,
    pub ref_len: u64,
    pub nrefs: usize,
    pub lowercase: bool,
}

impl BleuScore {
    /// sacreBLEU-style signature, with our implementation named as the version.
    pub fn signature(&self) -> String {
        let case = if self.lowercase { "lc" } else { "mixed" };
        format!(
            "nrefs:{}|case:{case}|eff:no|tok:13a|smooth:exp|version:{VERSION}",
            self.nrefs
        )
    }
}

impl std::fmt::Display for BleuScore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = self.precisions;
        write!(
            f,
            "BLEU = {:.2} {:.1}/{:.1}/{:.1}/{:.1} (BP = {:.3} ratio = {:.3} hyp_len = {} ref_len = {})",
            self.score,
            p[0],
            p[1],
            p[2],
            p[3],
            self.brevity_penalty,
            self.sys_len as f64 / self.ref_len.max(1) as f64,
            self.sys_len,
            self.ref_len
        )
    }
}

fn ngrams(tokens: &[&str]) -> HashMap<Vec<String>, u64> {
    let mut counts = HashMap::new();
    for n in 1..=MAX_ORDER {
        for w in tokens.windows(n) {
            *counts
                .entry(w.iter().map(|s| s.to_string()).collect())
                .or_insert(0) += 1;
        }
    }
    counts
}

/// Corpus BLEU of `hyps` against one or more reference streams (each aligned with `hyps`).
pub fn corpus_bleu<S: AsRef<str>>(
    hyps: &[S],
    refs: &[&[S]],
    options: &BleuOptions,
) -> Result<BleuScore> {
    check_streams(hyps, refs)?;
    let prep = |s: &str| {
        let s = s.trim_end();
        tokenize_13a(&if options.lowercase {
            s.to_lowercase()
        } else {
            s.to_string()
        })
    };
    let (mut counts, mut totals) = ([0u64; MAX_ORDER], [0u64; MAX_ORDER]);
    let (mut sys_len, mut ref_len) = (0u64, 0u64);
    for (i, hyp) in hyps.iter().enumerate() {
        let hyp = prep(hyp.as_ref());
        let hyp_tokens: Vec<&str> = hyp.split(' ').filter(|t| !t.is_empty()).collect();
        // Reference n-gram counts: the maximum over references; length: the closest, ties to
        // the shorter.
        let mut max_ref: HashMap<Vec<String>, u64> = HashMap::new();
        let mut closest: Option<usize> = None;
        for stream in refs {
            let r = prep(stream[i].as_ref());
            let r_tokens: Vec<&str> = python_split(&r).collect();
            let len = r_tokens.len();
            let better = match closest {
                None => true,
                Some(c) => {
                    let (d, dc) = (len.abs_diff(hyp_tokens.len()), c.abs_diff(hyp_tokens.len()));
                    d < dc || (d == dc && len < c)
                }
            };
            if better {
                closest = Some(len);
            }
            for (g, c) in ngrams(&r_tokens) {
                let e = max_ref.entry(g).or_insert(0);
                *e = (*e).max(c);
            }
        }
        sys_len += hyp_tokens.len() as u64;
        ref_len += closest.unwrap_or(0) as u64;
        for (g, c) in ngrams(&hyp_tokens) {
            let n = g.len() - 1;
            totals[n] += c;
            counts[n] += c.min(max_ref.get(&g).copied().unwrap_or(0));
        }
    }
    Ok(score_from_stats(
        counts,
        totals,
        sys_len,
        ref_len,
        refs.len(),
        options.lowercase,
    ))
}

fn score_from_stats(
    counts: [u64; 4],
    totals: [u64; 4],
    sys_len: u64,
    ref_len: u64,
    nrefs: usize,
    lowercase: bool,
) -> BleuScore {
    let brevity_penalty = if sys_len < ref_len {
        if sys_len > 0 {
            (1.0 - ref_len as f64 / sys_len as f64).exp()
        } else {
            0.0
        }
    } else {
        1.0
    };
    let mut precisions = [0.0; MAX_ORDER];
    let mut score = 0.0;
    if counts.iter().any(|&c| c > 0) {
        let mut smooth = 1.0;
        for n in 0..MAX_ORDER {
            if totals[n] == 0 {
                break;
            }
            precisions[n] = if counts[n] == 0 {
                smooth *= 2.0;
                100.0 / (smooth * totals[n] as f64)
            } else {
                100.0 * counts[n] as f64 / totals[n] as f64
            };
        }
        // sacreBLEU's `my_log`: log(0) is floored to -9999999999, which zeroes the score.
        let log_sum: f64 = precisions
            .iter()
            .map(|&p| if p == 0.0 { -9_999_999_999.0 } else { p.ln() })
            .sum();
        score = brevity_penalty * (log_sum / MAX_ORDER as f64).exp();
    }
    BleuScore {
        score,
        counts,
        totals,
        precisions,
        brevity_penalty,
        sys_len,
        ref_len,
        nrefs,
        lowercase,
    }
}
