//! BLEU and chrF, computed exactly as sacreBLEU 2.x computes them (cased, detokenized input,
//! 13a tokenization, `exp` smoothing; chrF with character order 6, beta 2, whitespace
//! removed; chrF++ with word order 2). Tests pin values produced by sacreBLEU itself, and CI
//! compares whole files against it.
//!
//! ```
//! let hyps = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."];
//! let refs = ["The dog bit the man.", "It was not unexpected.", "The man bit him first."];
//! let bleu = gnmt_metrics::corpus_bleu(&hyps, &[&refs[..]], &Default::default())?;
//! assert!((bleu.score - 45.0675063).abs() < 1e-6);
//! let chrf = gnmt_metrics::corpus_chrf(&hyps, &[&refs[..]], &Default::default())?;
//! assert!((chrf.score - 50.0430636).abs() < 1e-6);
//! # Ok::<(), gnmt_metrics::Error>(())
//! ```

mod bleu;
mod chrf;
mod tokenize;

pub use bleu::{corpus_bleu, sentence_bleu, BleuOptions, BleuScore};
pub use chrf::{corpus_chrf, ChrfOptions, ChrfScore};
pub use tokenize::tokenize_13a;

/// Hypotheses and references that cannot be compared.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("{hyps} hypotheses but reference stream {stream} has {refs} lines; every stream needs one line per hypothesis")]
    LineCountMismatch {
        hyps: usize,
        stream: usize,
        refs: usize,
    },
    #[error("no reference streams given")]
    NoReferences,
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn check_streams<S: AsRef<str>>(hyps: &[S], refs: &[&[S]]) -> Result<()> {
    if refs.is_empty() {
        return Err(Error::NoReferences);
    }
    for (stream, r) in refs.iter().enumerate() {
        if r.len() != hyps.len() {
            return Err(Error::LineCountMismatch {
                hyps: hyps.len(),
                stream: stream + 1,
                refs: r.len(),
            });
        }
    }
    Ok(())
}

/// Python's `str.split()`: Unicode whitespace plus the ASCII separators U+001C..U+001F,
/// which Rust's `char::is_whitespace` does not include.
pub(crate) fn python_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
        .filter(|w| !w.is_empty())
}

/// The version string placed in signatures.
pub(crate) const VERSION: &str = concat!("gnmt-metrics-", env!("CARGO_PKG_VERSION"));
