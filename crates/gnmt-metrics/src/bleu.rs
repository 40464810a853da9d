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
    /// Sentence-level scoring: the mean runs over the orders the hypothesis has.
    pub effective_order: bool,
}

impl BleuScore {
    /// sacreBLEU-style signature, with our implementation named as the version.
    pub fn signature(&self) -> String {
        let case = if self.lowercase { "lc" } else { "mixed" };
        let eff = if self.effective_order { "yes" } else { "no" };
        format!(
            "nrefs:{}|case:{case}|eff:{eff}|tok:13a|smooth:exp|version:{VERSION}",
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
    let mut total = Stats::default();
    for (i, hyp) in hyps.iter().enumerate() {
        let segment_refs: Vec<&str> = refs.iter().map(|stream| stream[i].as_ref()).collect();
        total.add(&segment_stats(hyp.as_ref(), &segment_refs, options));
    }
    Ok(score_from_stats(
        &total,
        refs.len(),
        options.lowercase,
        false,
    ))
}

/// Sentence BLEU as sacreBLEU's `sentence_score` computes it: `exp` smoothing and effective
/// order (orders the hypothesis is too short to have are left out of the mean).
pub fn sentence_bleu<S: AsRef<str>>(
    hyp: &str,
    refs: &[S],
    options: &BleuOptions,
) -> Result<BleuScore> {
    if refs.is_empty() {
        return Err(crate::Error::NoReferences);
    }
    let refs: Vec<&str> = refs.iter().map(|r| r.as_ref()).collect();
    Ok(score_from_stats(
        &segment_stats(hyp, &refs, options),
        refs.len(),
        options.lowercase,
        true,
    ))
}

/// BLEU's sufficient statistics.
#[derive(Debug, Clone, Default)]
struct Stats {
    counts: [u64; MAX_ORDER],
    totals: [u64; MAX_ORDER],
    sys_len: u64,
    ref_len: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        for n in 0..MAX_ORDER {
            self.counts[n] += o.counts[n];
            self.totals[n] += o.totals[n];
        }
        self.sys_len += o.sys_len;
        self.ref_len += o.ref_len;
    }
}

fn segment_stats(hyp: &str, refs: &[&str], options: &BleuOptions) -> Stats {
    let prep = |s: &str| {
        let s = s.trim_end();
        tokenize_13a(&if options.lowercase {
            s.to_lowercase()
        } else {
            s.to_string()
        })
    };
    let hyp = prep(hyp);
    let hyp_tokens: Vec<&str> = hyp.split(' ').filter(|t| !t.is_empty()).collect();
    // Reference n-gram counts: the maximum over references; length: the closest, ties to the
    // shorter.
    let mut max_ref: HashMap<Vec<String>, u64> = HashMap::new();
    let mut closest: Option<usize> = None;
    for r in refs {
        let r = prep(r);
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
    let mut stats = Stats {
        sys_len: hyp_tokens.len() as u64,
        ref_len: closest.unwrap_or(0) as u64,
        ..Default::default()
    };
    for (g, c) in ngrams(&hyp_tokens) {
        let n = g.len() - 1;
        stats.totals[n] += c;
        stats.counts[n] += c.min(max_ref.get(&g).copied().unwrap_or(0));
    }
    stats
}

fn score_from_stats(st: &Stats, nrefs: usize, lowercase: bool, effective_order: bool) -> BleuScore {
    let (counts, totals, sys_len, ref_len) = (st.counts, st.totals, st.sys_len, st.ref_len);
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
        let mut orders = MAX_ORDER;
        for n in 0..MAX_ORDER {
            if totals[n] == 0 {
                break;
            }
            if effective_order {
                orders = n + 1;
            }
            precisions[n] = if counts[n] == 0 {
                smooth *= 2.0;
                100.0 / (smooth * totals[n] as f64)
            } else {
                100.0 * counts[n] as f64 / totals[n] as f64
            };
        }
        // sacreBLEU's `my_log`: log(0) is floored to -9999999999, which zeroes the score.
        let log_sum: f64 = precisions[..orders]
            .iter()
            .map(|&p| if p == 0.0 { -9_999_999_999.0 } else { p.ln() })
            .sum();
        score = brevity_penalty * (log_sum / orders as f64).exp();
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
        effective_order,
    }
}
