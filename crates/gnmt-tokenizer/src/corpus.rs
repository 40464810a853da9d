//! Reading an aligned source/target corpus.
//!
//! Both files are read whole (gzip or plain), checked for UTF-8 and counted before anything
//! else happens: a line-count mismatch is fatal and names both files and both counts.

use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::io::{into_utf8, line_spans, read_bytes};
use crate::vocab::sha256_hex;
use crate::{Error, Result};

/// The lines of one text file, stored as one string plus line boundaries (no per-line
/// allocation: WMT-sized files have millions of lines).
#[derive(Debug, Clone)]
pub struct Lines {
    path: PathBuf,
    text: String,
    spans: Vec<Range<usize>>,
    sha256: String,
}

impl Lines {
    /// Reads `path` (plain or gzip). Invalid UTF-8 is an error naming the file and line.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = read_bytes(path)?;
        let sha256 = sha256_hex(&bytes);
        let text = into_utf8(path, bytes)?;
        let spans = line_spans(&text);
        Ok(Self {
            path: path.to_path_buf(),
            text,
            spans,
            sha256,
        })
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Line `i` (0-based), without its line ending.
    pub fn get(&self, i: usize) -> &str {
        &self.text[self.spans[i].clone()]
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        self.spans.iter().map(|r| &self.text[r.clone()])
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// sha256 (hex) of the file's (decompressed) contents.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }
}

/// Two files aligned line by line.
#[derive(Debug, Clone)]
pub struct ParallelCorpus {
    pub src: Lines,
    pub tgt: Lines,
}

impl ParallelCorpus {
    pub fn len(&self) -> usize {
        self.src.len()
    }

    pub fn is_empty(&self) -> bool {
        self.src.is_empty()
    }
}

/// Reads an aligned corpus. Fails before any other work if either file is unreadable, not
/// UTF-8, or the line counts differ.
pub fn read_parallel(src: &Path, tgt: &Path) -> Result<ParallelCorpus> {
    let (src, tgt) = rayon::join(|| Lines::read(src), || Lines::read(tgt));
    let (src, tgt) = (src?, tgt?);
    if src.len() != tgt.len() {
        return Err(Error::LineCountMismatch {
            src: src.path.clone(),
            src_lines: src.len(),
            tgt: tgt.path.clone(),
            tgt_lines: tgt.len(),
        });
    }
    Ok(ParallelCorpus { src, tgt })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mismatch_names_both_files_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let (s, t) = (dir.path().join("c.en"), dir.path().join("c.de"));
        std::fs::write(&s, "a\nb\nc\n").unwrap();
        std::fs::write(&t, "x\ny\n").unwrap();
        let err = read_parallel(&s, &t).unwrap_err().to_string();
        assert!(err.contains("c.en has 3 lines but"), "{err}");
        assert!(err.contains("c.de has 2"), "{err}");
    }

    #[test]
    fn missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let s = dir.path().join("there.en");
        std::fs::write(&s, "a\n").unwrap();
        let err = read_parallel(&s, &dir.path().join("absent.de"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("absent.de"), "{err}");
    }

    #[test]
    fn lines_are_indexed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.txt");
        std::fs::write(&p, "first\r\n\nthird").unwrap();
        let l = Lines::read(&p).unwrap();
        assert_eq!(l.iter().collect::<Vec<_>>(), vec!["first", "", "third"]);
        assert_eq!(l.get(2), "third");
        assert_eq!(l.sha256().len(), 64);
    }
}
