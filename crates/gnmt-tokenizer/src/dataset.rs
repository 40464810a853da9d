//! A binarized parallel dataset: the token ids of every kept sentence pair, flat, with
//! offsets, plus a summary of what was skipped and why.
//!
//! Encoding runs in parallel (rayon). The result can be cached as a safetensors file keyed by
//! the tokenizer's hash, both files' contents and the filter settings, so a second run with
//! the same inputs loads ids instead of re-tokenizing; any change to any of them misses the
//! cache.
//!
//! [`Dataset::prepare`] streams the files: a first pass checks them (UTF-8, line counts) and
//! hashes them, a second encodes them a chunk of lines at a time. Its memory is the ids it
//! keeps, not the text: a WMT-sized corpus never sits in memory as text.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::arrays::{self, Array};
use crate::corpus::ParallelCorpus;
use crate::io::CheckedLines;
use crate::vocab::sha256_hex;
use crate::{Error, Result, Vocab};

/// Sentence pairs encoded together: the text held at once while preparing a dataset (a few in
/// tests, so that they cross chunk boundaries).
const ENCODE_CHUNK: usize = if cfg!(test) { 3 } else { 1 << 16 };

const CACHE_FORMAT: &str = "gnmt-dataset";
const CACHE_VERSION: &str = "1";

/// Which sentence pairs are kept for training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilterOptions {
    /// Pairs where either side has more pieces than this are skipped (not cropped).
    pub max_len: usize,
    /// Pairs whose longer side has more than `max_ratio` times the pieces of the shorter are
    /// skipped (misalignments); as in Moses' `clean-corpus-n`, the default is 9.
    pub max_ratio: f32,
}

impl Default for FilterOptions {
    fn default() -> Self {
        Self {
            max_len: 100,
            max_ratio: 9.0,
        }
    }
}

/// What happened to each line pair of the corpus.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkipSummary {
    pub total: usize,
    pub kept: usize,
    /// Either side empty or whitespace only.
    pub empty: usize,
    /// Either side longer than `max_len` pieces.
    pub too_long: usize,
    /// Length ratio above `max_ratio`.
    pub bad_ratio: usize,
}

impl std::fmt::Display for SkipSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of {} pairs kept; skipped {} empty, {} too long, {} with a bad length ratio",
            self.kept, self.total, self.empty, self.too_long, self.bad_ratio
        )
    }
}

/// Token-id sequences stored flat: sequence `i` is `ids[offsets[i]..offsets[i+1]]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Sequences {
    ids: Vec<u32>,
    offsets: Vec<u64>,
}

impl Sequences {
    fn new() -> Self {
        Sequences {
            ids: Vec::new(),
            offsets: vec![0],
        }
    }

    fn push(&mut self, seq: &[u32]) {
        self.ids.extend_from_slice(seq);
        self.offsets.push(self.ids.len() as u64);
    }

    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, i: usize) -> &[u32] {
        &self.ids[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }

    /// Length of sequence `i` in pieces.
    pub fn seq_len(&self, i: usize) -> usize {
        (self.offsets[i + 1] - self.offsets[i]) as usize
    }

    pub fn total_tokens(&self) -> usize {
        self.ids.len()
    }
}

/// The kept pairs of a corpus as token ids.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub src: Sequences,
    pub tgt: Sequences,
    /// 0-based corpus line of each kept pair (for messages and for restoring order).
    pub lines: Vec<u32>,
    pub summary: SkipSummary,
}

/// Whether [`Dataset::prepare`] tokenized or loaded from its cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheStatus {
    /// No cache directory was given.
    NotCached,
    /// Loaded from this file.
    Hit(PathBuf),
    /// Tokenized and written to this file.
    Written(PathBuf),
    /// A cache file was present but unusable (named reason); rebuilt and overwritten.
    Rebuilt(PathBuf, String),
}

impl Dataset {
    /// Encodes and filters a corpus held in memory. Empty pairs are skipped without touching
    /// the tokenizer.
    pub fn build(corpus: &ParallelCorpus, vocab: &Vocab, filter: &FilterOptions) -> Result<Self> {
        let mut builder = Builder::new(vocab, filter, None);
        let pairs: Vec<(&str, &str)> = corpus.src.iter().zip(corpus.tgt.iter()).collect();
        for chunk in pairs.chunks(ENCODE_CHUNK) {
            builder.add(chunk)?;
        }
        Ok(builder.finish())
    }

    /// Reads, checks, encodes and filters `src`/`tgt`, using a cache file in `cache_dir` when
    /// one matches the tokenizer, the files' contents and the filter. Fails if no pair is left.
    /// Both files are checked (UTF-8, equal line counts) before any encoding.
    pub fn prepare(
        src: &Path,
        tgt: &Path,
        vocab: &Vocab,
        filter: &FilterOptions,
        cache_dir: Option<&Path>,
    ) -> Result<(Self, CacheStatus)> {
        let (src_scan, tgt_scan) = rayon::join(|| scan(src), || scan(tgt));
        let (src_scan, tgt_scan) = (src_scan?, tgt_scan?);
        if src_scan.lines != tgt_scan.lines {
            return Err(Error::LineCountMismatch {
                src: src.to_path_buf(),
                src_lines: src_scan.lines,
                tgt: tgt.to_path_buf(),
                tgt_lines: tgt_scan.lines,
            });
        }
        let key = cache_key(&src_scan.sha256, &tgt_scan.sha256, vocab, filter);
        let cache_path = cache_dir.map(|d| d.join(cache_file_name(src, tgt, &key)));
        let mut stale_reason = None;
        if let Some(p) = &cache_path {
            if p.exists() {
                match Self::load_cache(p, &key, vocab.size()) {
                    Ok(ds) => return Ok((ds, CacheStatus::Hit(p.clone()))),
                    Err(e) => stale_reason = Some(e.to_string()),
                }
            }
        }
        let ds = Self::encode_files(src, tgt, src_scan.lines, vocab, filter)?;
        if ds.summary.kept == 0 {
            return Err(Error::Invalid {
                path: src.to_path_buf(),
                reason: format!(
                    "no usable sentence pairs with {}: {}",
                    tgt.display(),
                    ds.summary
                ),
            });
        }
        let status = match cache_path {
            None => CacheStatus::NotCached,
            Some(p) => {
                if let Some(dir) = p.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
                }
                ds.save_cache(&p, &key)?;
                match stale_reason {
                    Some(r) => CacheStatus::Rebuilt(p, r),
                    None => CacheStatus::Written(p),
                }
            }
        };
        Ok((ds, status))
    }

    /// Encodes two checked files of equal length, [`ENCODE_CHUNK`] pairs at a time.
    fn encode_files(
        src: &Path,
        tgt: &Path,
        lines: usize,
        vocab: &Vocab,
        filter: &FilterOptions,
    ) -> Result<Self> {
        let (src_error, tgt_error) = (Mutex::new(None), Mutex::new(None));
        let mut src_lines = CheckedLines::new(&[src.to_path_buf()], &src_error)?;
        let mut tgt_lines = CheckedLines::new(&[tgt.to_path_buf()], &tgt_error)?;
        let mut builder = Builder::new(vocab, filter, Some(lines));
        loop {
            let chunk: Vec<(String, String)> = src_lines
                .by_ref()
                .zip(tgt_lines.by_ref())
                .take(ENCODE_CHUNK)
                .collect();
            let pairs: Vec<(&str, &str)> = chunk
                .iter()
                .map(|(s, t)| (without_line_end(s), without_line_end(t)))
                .collect();
            builder.add(&pairs)?;
            if chunk.len() < ENCODE_CHUNK {
                break;
            }
        }
        // The files were checked a moment ago; they may have changed since.
        for slot in [src_error, tgt_error] {
            if let Some(e) = slot.into_inner().unwrap_or_else(|p| p.into_inner()) {
                return Err(e);
            }
        }
        Ok(builder.finish())
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The same pairs with `id` before every source sentence: a multilingual model's
    /// target-language tag. (The length filter counted the sentence without it.)
    pub fn with_source_prefix(self, id: u32) -> Self {
        let mut src = Sequences::new();
        let mut row = Vec::new();
        for i in 0..self.src.len() {
            row.clear();
            row.push(id);
            row.extend_from_slice(self.src.get(i));
            src.push(&row);
        }
        Self { src, ..self }
    }

    /// Several datasets one after the other (a multilingual run's corpora, sampled by
    /// [`crate::batch::Mix`]); `lines` keep each corpus's own line numbers.
    pub fn concat(parts: Vec<Dataset>) -> Self {
        let mut all = Dataset {
            src: Sequences::new(),
            tgt: Sequences::new(),
            lines: Vec::new(),
            summary: SkipSummary::default(),
        };
        for part in parts {
            for i in 0..part.len() {
                all.src.push(part.src.get(i));
                all.tgt.push(part.tgt.get(i));
            }
            all.lines.extend(part.lines);
            let (a, b) = (&mut all.summary, part.summary);
            a.total += b.total;
            a.kept += b.kept;
            a.empty += b.empty;
            a.too_long += b.too_long;
            a.bad_ratio += b.bad_ratio;
        }
        all
    }

    fn save_cache(&self, path: &Path, key: &str) -> Result<()> {
        let meta = HashMap::from([
            ("format".to_string(), CACHE_FORMAT.to_string()),
            ("version".to_string(), CACHE_VERSION.to_string()),
            ("key".to_string(), key.to_string()),
            (
                "summary".to_string(),
                serde_json::to_string(&self.summary).expect("plain struct"),
            ),
        ]);
        arrays::write(
            path,
            &meta,
            &[
                ("src_ids", Array::U32(&self.src.ids)),
                ("src_offsets", Array::U64(&self.src.offsets)),
                ("tgt_ids", Array::U32(&self.tgt.ids)),
                ("tgt_offsets", Array::U64(&self.tgt.offsets)),
                ("lines", Array::U32(&self.lines)),
            ],
        )
    }

    /// Loads a cache file, checking its key and the consistency of every array.
    fn load_cache(path: &Path, key: &str, vocab_size: usize) -> Result<Self> {
        let invalid = |reason: String| Error::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let mut file = arrays::Reader::open(path)?;
        let get = |k: &str| file.metadata.get(k).cloned().unwrap_or_default();
        if get("format") != CACHE_FORMAT || get("version") != CACHE_VERSION {
            return Err(invalid("not a gnmt dataset of this version".into()));
        }
        if get("key") != key {
            return Err(invalid("made from other inputs".into()));
        }
        let summary: SkipSummary = serde_json::from_str(&get("summary"))
            .map_err(|e| invalid(format!("bad summary: {e}")))?;
        let src = Sequences {
            ids: file.u32s("src_ids")?,
            offsets: file.u64s("src_offsets")?,
        };
        let tgt = Sequences {
            ids: file.u32s("tgt_ids")?,
            offsets: file.u64s("tgt_offsets")?,
        };
        let lines = file.u32s("lines")?;
        for (name, s) in [("src", &src), ("tgt", &tgt)] {
            let ok = s.offsets.first() == Some(&0)
                && s.offsets.windows(2).all(|w| w[0] <= w[1])
                && s.offsets.last() == Some(&(s.ids.len() as u64))
                && s.ids.iter().all(|&id| (id as usize) < vocab_size);
            if !ok || s.len() != lines.len() || lines.len() != summary.kept {
                return Err(invalid(format!("{name} arrays are inconsistent")));
            }
        }
        Ok(Self {
            src,
            tgt,
            lines,
            summary,
        })
    }
}

/// A dataset being encoded, chunk by chunk.
struct Builder<'a> {
    vocab: &'a Vocab,
    filter: &'a FilterOptions,
    /// Pairs the whole corpus has, when known: the first chunk's ids per pair then size the
    /// arrays once (growing by doubling would hold up to three times the ids at a moment).
    expected_pairs: Option<usize>,
    src: Sequences,
    tgt: Sequences,
    lines: Vec<u32>,
    summary: SkipSummary,
}

impl<'a> Builder<'a> {
    fn new(vocab: &'a Vocab, filter: &'a FilterOptions, expected_pairs: Option<usize>) -> Self {
        Self {
            vocab,
            filter,
            expected_pairs,
            src: Sequences::new(),
            tgt: Sequences::new(),
            lines: Vec::new(),
            summary: SkipSummary::default(),
        }
    }

    /// Encodes the next `pairs` of the corpus (in parallel) and keeps those that pass.
    fn add(&mut self, pairs: &[(&str, &str)]) -> Result<()> {
        enum Outcome {
            Empty,
            TooLong,
            BadRatio,
            Kept(Vec<u32>, Vec<u32>),
        }
        let (vocab, filter) = (self.vocab, self.filter);
        let outcomes: Vec<Outcome> = pairs
            .par_iter()
            .with_min_len(256)
            .map(|&(s, t)| {
                if s.trim().is_empty() || t.trim().is_empty() {
                    return Ok(Outcome::Empty);
                }
                let (s, t) = (vocab.encode(s)?, vocab.encode(t)?);
                // NFKC can map a visible character to nothing; treat that as empty too.
                if s.is_empty() || t.is_empty() {
                    return Ok(Outcome::Empty);
                }
                if s.len() > filter.max_len || t.len() > filter.max_len {
                    return Ok(Outcome::TooLong);
                }
                let (short, long) = (s.len().min(t.len()) as f32, s.len().max(t.len()) as f32);
                if long > filter.max_ratio * short {
                    return Ok(Outcome::BadRatio);
                }
                Ok(Outcome::Kept(s, t))
            })
            .collect::<Result<_>>()?;
        let first_line = self.summary.total;
        self.summary.total += pairs.len();
        for (i, o) in outcomes.into_iter().enumerate() {
            match o {
                Outcome::Empty => self.summary.empty += 1,
                Outcome::TooLong => self.summary.too_long += 1,
                Outcome::BadRatio => self.summary.bad_ratio += 1,
                Outcome::Kept(s, t) => {
                    self.src.push(&s);
                    self.tgt.push(&t);
                    self.lines.push((first_line + i) as u32);
                }
            }
        }
        if let Some(expected) = self.expected_pairs.take() {
            self.reserve_for(expected);
        }
        Ok(())
    }

    /// Sizes the arrays for `pairs` pairs like the ones seen so far, with 5% to spare.
    fn reserve_for(&mut self, pairs: usize) {
        let seen = self.summary.total.max(1) as f64;
        // What the whole corpus will need beyond `have`.
        let more = |have: usize| {
            ((have as f64 / seen * pairs as f64 * 1.05) as usize).saturating_sub(have)
        };
        let kept = self.lines.len();
        self.lines.reserve(more(kept));
        self.src.offsets.reserve(more(kept));
        self.tgt.offsets.reserve(more(kept));
        self.src.ids.reserve(more(self.src.ids.len()));
        self.tgt.ids.reserve(more(self.tgt.ids.len()));
    }

    fn finish(mut self) -> Dataset {
        self.summary.kept = self.lines.len();
        Dataset {
            src: self.src,
            tgt: self.tgt,
            lines: self.lines,
            summary: self.summary,
        }
    }
}

/// What the first pass over a file finds.
struct Scan {
    /// Of the (decompressed) contents, hex.
    sha256: String,
    lines: usize,
}

/// Reads `path` once as a stream: its hash and line count, or the first invalid UTF-8 (naming
/// the line and byte offset).
fn scan(path: &Path) -> Result<Scan> {
    let error = Mutex::new(None);
    let mut hasher = Sha256::new();
    let mut lines = 0;
    for line in CheckedLines::new(&[path.to_path_buf()], &error)? {
        hasher.update(line.as_bytes());
        lines += 1;
    }
    if let Some(e) = error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    let sha256 = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Scan { sha256, lines })
}

/// A line as [`crate::io::line_spans`] cuts it: without `\n`, and without a `\r` before it.
fn without_line_end(line: &str) -> &str {
    let line = line.strip_suffix('\n').unwrap_or(line);
    line.strip_suffix('\r').unwrap_or(line)
}

fn cache_key(src_sha256: &str, tgt_sha256: &str, vocab: &Vocab, filter: &FilterOptions) -> String {
    let material = format!(
        "{CACHE_FORMAT}/{CACHE_VERSION}\ntokenizer {}\nsrc {src_sha256}\ntgt {tgt_sha256}\nfilter {}",
        vocab.hash(),
        serde_json::to_string(filter).expect("plain struct"),
    );
    sha256_hex(material.as_bytes())
}

fn cache_file_name(src: &Path, tgt: &Path, key: &str) -> String {
    let stem = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    format!(
        "{}+{}.{}.dataset.safetensors",
        stem(src),
        stem(tgt),
        &key[..16]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::VocabOptions;

    fn vocab() -> Vocab {
        let s = crate::synthetic::toy_sentences();
        Vocab::train_from_sentences(
            &s,
            &VocabOptions {
                size: 500,
                ..Default::default()
            },
        )
        .unwrap()
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn corpora_concatenate_with_their_tags() {
        let v = vocab();
        let dir = tempfile::tempdir().unwrap();
        let filter = FilterOptions::default();
        let corpus = |name: &str, src: &str, tgt: &str| {
            let (s, t) = (
                write(dir.path(), &format!("{name}.s"), src),
                write(dir.path(), &format!("{name}.t"), tgt),
            );
            Dataset::build(&crate::read_parallel(&s, &t).unwrap(), &v, &filter).unwrap()
        };
        let a = corpus("a", "a dog\nthe cat\n", "x\ny\n");
        let b = corpus("b", "a man\n", "z\n");
        let all = Dataset::concat(vec![
            a.clone().with_source_prefix(4),
            b.clone().with_source_prefix(5),
        ]);
        assert_eq!(all.len(), 3);
        assert_eq!(all.lines, [0, 1, 0]);
        assert_eq!((all.summary.total, all.summary.kept), (3, 3));
        for (i, (part, row, tag)) in [(&a, 0, 4), (&a, 1, 4), (&b, 0, 5)].into_iter().enumerate() {
            assert_eq!(all.src.get(i)[0], tag);
            assert_eq!(&all.src.get(i)[1..], part.src.get(row));
            assert_eq!(all.tgt.get(i), part.tgt.get(row));
        }
    }

    /// Streaming the files (by chunks of 3 pairs here) gives the dataset of the corpus read
    /// whole: CRLF and LF endings, blank and skipped lines, no final newline, gzip.
    #[test]
    fn streamed_preparation_equals_the_corpus_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let s = write(
            dir.path(),
            "s.en",
            "a dog\r\n\nthe cat\r\nok\nx\n \na man\nthe end",
        );
        let gz = dir.path().join("t.de.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(
            &mut enc,
            "ein hund\nleer\r\ndie katze\nok\n\nz\nein mann\ndas ende\n".as_bytes(),
        )
        .unwrap();
        std::fs::write(&gz, enc.finish().unwrap()).unwrap();
        let (v, f) = (vocab(), FilterOptions::default());
        let whole = Dataset::build(&crate::read_parallel(&s, &gz).unwrap(), &v, &f).unwrap();
        let (streamed, _) = Dataset::prepare(&s, &gz, &v, &f, None).unwrap();
        assert_eq!(streamed, whole);
        assert_eq!(streamed.summary.total, 8);
        assert_eq!(streamed.lines, [0, 2, 3, 6, 7]);
    }

    #[test]
    fn skips_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let long = "word ".repeat(70);
        let s = write(
            dir.path(),
            "a.en",
            &format!("a dog\n\n  \nok\n{long}\nx\nthe cat\n"),
        );
        let t = write(
            dir.path(),
            "a.de",
            "ein hund\nleer\nblank\n \nkurz\na b c d e f g h i j k l\ndie katze\n",
        );
        let filter = FilterOptions {
            max_len: 60,
            max_ratio: 3.0,
        };
        let (ds, status) = Dataset::prepare(&s, &t, &vocab(), &filter, None).unwrap();
        assert_eq!(status, CacheStatus::NotCached);
        assert_eq!(
            ds.summary,
            SkipSummary {
                total: 7,
                kept: 2,
                empty: 3,
                too_long: 1,
                bad_ratio: 1
            },
            "{}",
            ds.summary
        );
        assert_eq!(ds.lines, vec![0, 6]);
        assert_eq!(ds.src.get(1), vocab().encode("the cat").unwrap().as_slice());
    }

    #[test]
    fn all_empty_corpus_is_an_error_naming_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let s = write(dir.path(), "e.en", "\n\n");
        let t = write(dir.path(), "e.de", "x\n\n");
        let err = Dataset::prepare(&s, &t, &vocab(), &FilterOptions::default(), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("e.en: no usable sentence pairs with") && err.contains("e.de"),
            "{err}"
        );
        assert!(err.contains("skipped 2 empty"), "{err}");
    }

    #[test]
    fn cache_hits_misses_and_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let s = write(dir.path(), "c.en", "a dog runs\nthe cat sleeps\n");
        let t = write(dir.path(), "c.de", "ein hund rennt\ndie katze schläft\n");
        let v = vocab();
        let f = FilterOptions::default();
        let (built, st) = Dataset::prepare(&s, &t, &v, &f, Some(&cache)).unwrap();
        let CacheStatus::Written(path) = st else {
            panic!("expected a write, got {st:?}")
        };
        let (loaded, st) = Dataset::prepare(&s, &t, &v, &f, Some(&cache)).unwrap();
        assert_eq!(st, CacheStatus::Hit(path.clone()));
        assert_eq!(built, loaded);

        // Other filter settings: another key, another file.
        let (_, st) = Dataset::prepare(
            &s,
            &t,
            &v,
            &FilterOptions {
                max_len: 50,
                ..f.clone()
            },
            Some(&cache),
        )
        .unwrap();
        assert!(matches!(st, CacheStatus::Written(p) if p != path));

        // A corrupt cache file is rebuilt, not trusted.
        std::fs::write(&path, b"garbage").unwrap();
        let (again, st) = Dataset::prepare(&s, &t, &v, &f, Some(&cache)).unwrap();
        assert!(
            matches!(&st, CacheStatus::Rebuilt(p, why) if *p == path && why.contains("too short for a safetensors file")),
            "{st:?}"
        );
        assert_eq!(again, built);

        // Edited corpus: the key changes.
        std::fs::write(&t, "ein hund rennt\ndie katze döst\n").unwrap();
        let (edited, st) = Dataset::prepare(&s, &t, &v, &f, Some(&cache)).unwrap();
        assert!(matches!(st, CacheStatus::Written(_)), "{st:?}");
        assert_ne!(edited, built);
    }
}
