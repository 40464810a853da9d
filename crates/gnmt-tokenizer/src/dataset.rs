//! A binarized parallel dataset: the token ids of every kept sentence pair, flat, with
//! offsets, plus a summary of what was skipped and why.
//!
//! Encoding runs in parallel (rayon). The result can be cached as a safetensors file keyed by
//! the tokenizer's hash, both files' contents and the filter settings, so a second run with
//! the same inputs loads ids instead of re-tokenizing; any change to any of them misses the
//! cache.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};

use crate::corpus::{read_parallel, ParallelCorpus};
use crate::vocab::sha256_hex;
use crate::{Error, Result, Vocab};

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
    fn from_vecs(seqs: impl IntoIterator<Item = Vec<u32>>) -> Self {
        let mut out = Sequences {
            ids: Vec::new(),
            offsets: vec![0],
        };
        for s in seqs {
            out.ids.extend_from_slice(&s);
            out.offsets.push(out.ids.len() as u64);
        }
        out
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
    /// Encodes and filters a corpus. Empty pairs are skipped without touching the tokenizer.
    pub fn build(corpus: &ParallelCorpus, vocab: &Vocab, filter: &FilterOptions) -> Result<Self> {
        enum Outcome {
            Empty,
            TooLong,
            BadRatio,
            Kept(Vec<u32>, Vec<u32>),
        }
        let outcomes: Vec<Outcome> = (0..corpus.len())
            .into_par_iter()
            .with_min_len(256)
            .map(|i| {
                let (s, t) = (corpus.src.get(i), corpus.tgt.get(i));
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

        let mut summary = SkipSummary {
            total: corpus.len(),
            ..Default::default()
        };
        let (mut src, mut tgt, mut lines) = (Vec::new(), Vec::new(), Vec::new());
        for (i, o) in outcomes.into_iter().enumerate() {
            match o {
                Outcome::Empty => summary.empty += 1,
                Outcome::TooLong => summary.too_long += 1,
                Outcome::BadRatio => summary.bad_ratio += 1,
                Outcome::Kept(s, t) => {
                    src.push(s);
                    tgt.push(t);
                    lines.push(i as u32);
                }
            }
        }
        summary.kept = lines.len();
        Ok(Self {
            src: Sequences::from_vecs(src),
            tgt: Sequences::from_vecs(tgt),
            lines,
            summary,
        })
    }

    /// Reads, checks, encodes and filters `src`/`tgt`, using a cache file in `cache_dir` when
    /// one matches the tokenizer, the files' contents and the filter. Fails if no pair is left.
    pub fn prepare(
        src: &Path,
        tgt: &Path,
        vocab: &Vocab,
        filter: &FilterOptions,
        cache_dir: Option<&Path>,
    ) -> Result<(Self, CacheStatus)> {
        let corpus = read_parallel(src, tgt)?;
        let key = cache_key(&corpus, vocab, filter);
        let cache_path = cache_dir.map(|d| d.join(cache_file_name(&corpus, &key)));
        let mut stale_reason = None;
        if let Some(p) = &cache_path {
            if p.exists() {
                match Self::load_cache(p, &key, vocab.size()) {
                    Ok(ds) => return Ok((ds, CacheStatus::Hit(p.clone()))),
                    Err(e) => stale_reason = Some(e.to_string()),
                }
            }
        }
        let ds = Self::build(&corpus, vocab, filter)?;
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

    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    fn save_cache(&self, path: &Path, key: &str) -> Result<()> {
        let bytes = |v: &[u32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let bytes64 = |v: &[u64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let arrays = [
            ("src_ids", Dtype::U32, bytes(&self.src.ids)),
            ("src_offsets", Dtype::U64, bytes64(&self.src.offsets)),
            ("tgt_ids", Dtype::U32, bytes(&self.tgt.ids)),
            ("tgt_offsets", Dtype::U64, bytes64(&self.tgt.offsets)),
            ("lines", Dtype::U32, bytes(&self.lines)),
        ];
        let views = arrays
            .iter()
            .map(|(name, dtype, data)| {
                let n = data.len() / if *dtype == Dtype::U64 { 8 } else { 4 };
                TensorView::new(*dtype, vec![n], data).map(|v| (*name, v))
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Invalid {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        let meta = HashMap::from([
            ("format".to_string(), CACHE_FORMAT.to_string()),
            ("version".to_string(), CACHE_VERSION.to_string()),
            ("key".to_string(), key.to_string()),
            (
                "summary".to_string(),
                serde_json::to_string(&self.summary).expect("plain struct"),
            ),
        ]);
        let buf = safetensors::serialize(views, Some(meta)).map_err(|e| Error::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        crate::io::write_atomic(path, &buf)
    }

    /// Loads a cache file, checking its key and the consistency of every array.
    fn load_cache(path: &Path, key: &str, vocab_size: usize) -> Result<Self> {
        let invalid = |reason: String| Error::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let buf = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let st = SafeTensors::deserialize(&buf)
            .map_err(|e| invalid(format!("not a dataset file: {e}")))?;
        let (_, header) = SafeTensors::read_metadata(&buf).map_err(|e| invalid(e.to_string()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let get = |k: &str| meta.get(k).map(String::as_str).unwrap_or("");
        if get("format") != CACHE_FORMAT || get("version") != CACHE_VERSION {
            return Err(invalid("not a gnmt dataset of this version".into()));
        }
        if get("key") != key {
            return Err(invalid("made from other inputs".into()));
        }
        let summary: SkipSummary = serde_json::from_str(get("summary"))
            .map_err(|e| invalid(format!("bad summary: {e}")))?;
        let u32s = |name: &str| -> Result<Vec<u32>> {
            let t = st.tensor(name).map_err(|e| invalid(e.to_string()))?;
            if t.dtype() != Dtype::U32 {
                return Err(invalid(format!("{name} is {:?}, expected U32", t.dtype())));
            }
            Ok(t.data()
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect())
        };
        let u64s = |name: &str| -> Result<Vec<u64>> {
            let t = st.tensor(name).map_err(|e| invalid(e.to_string()))?;
            if t.dtype() != Dtype::U64 {
                return Err(invalid(format!("{name} is {:?}, expected U64", t.dtype())));
            }
            Ok(t.data()
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect())
        };
        let src = Sequences {
            ids: u32s("src_ids")?,
            offsets: u64s("src_offsets")?,
        };
        let tgt = Sequences {
            ids: u32s("tgt_ids")?,
            offsets: u64s("tgt_offsets")?,
        };
        let lines = u32s("lines")?;
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

fn cache_key(corpus: &ParallelCorpus, vocab: &Vocab, filter: &FilterOptions) -> String {
    let material = format!(
        "{CACHE_FORMAT}/{CACHE_VERSION}\ntokenizer {}\nsrc {}\ntgt {}\nfilter {}",
        vocab.hash(),
        corpus.src.sha256(),
        corpus.tgt.sha256(),
        serde_json::to_string(filter).expect("plain struct"),
    );
    sha256_hex(material.as_bytes())
}

fn cache_file_name(corpus: &ParallelCorpus, key: &str) -> String {
    let stem = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    format!(
        "{}+{}.{}.dataset.safetensors",
        stem(corpus.src.path()),
        stem(corpus.tgt.path()),
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
            matches!(&st, CacheStatus::Rebuilt(p, why) if *p == path && why.contains("not a dataset file")),
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
