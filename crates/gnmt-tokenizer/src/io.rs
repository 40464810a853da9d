//! File helpers shared by the pipeline: whole-file reads (plain or gzip), line splitting with
//! UTF-8 checks that name the line and byte offset, streamed lines for the vocabulary trainer,
//! and atomic writes.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::{Error, Result};

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Reads a whole file, transparently decompressing gzip (recognised by its magic bytes, so a
/// `.gz` name is not required and a misnamed plain file still works).
pub fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if raw.starts_with(&GZIP_MAGIC) {
        let mut out = Vec::with_capacity(raw.len() * 4);
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::Invalid {
                path: path.to_path_buf(),
                reason: format!("corrupt gzip data: {e}"),
            })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Checks that `bytes` is UTF-8; the error names the 1-based line and the byte offset of the
/// first bad byte.
pub fn into_utf8(path: &Path, bytes: Vec<u8>) -> Result<String> {
    String::from_utf8(bytes).map_err(|e| {
        let bad_at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..bad_at]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        utf8_error(path, line, 0, e.as_bytes(), e.utf8_error())
    })
}

/// The error for invalid UTF-8 in `bytes`, which start at byte `start` of the file, on line
/// `line`.
pub fn utf8_error(
    path: &Path,
    line: usize,
    start: usize,
    bytes: &[u8],
    err: std::str::Utf8Error,
) -> Error {
    let at = err.valid_up_to();
    let detail = match err.error_len() {
        Some(n) => format!(
            "byte sequence {:02x?} is not valid UTF-8",
            &bytes[at..at + n]
        ),
        None => format!("the file ends inside a character: {:02x?}", &bytes[at..]),
    };
    Error::InvalidUtf8 {
        path: path.to_path_buf(),
        line,
        offset: start + at,
        detail,
    }
}

/// Opens a text file for streaming, plain or gzip (recognised by its magic bytes).
pub fn open_text(path: &Path) -> Result<Box<dyn BufRead + Send>> {
    let mut file = BufReader::new(File::open(path).map_err(|e| Error::io(path, e))?);
    let gzip = file
        .fill_buf()
        .map_err(|e| Error::io(path, e))?
        .starts_with(&GZIP_MAGIC);
    Ok(if gzip {
        Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(file)))
    } else {
        Box::new(file)
    })
}

/// The lines of text files, line endings kept, read as they are needed. The first read error
/// or invalid UTF-8 ends all of them and is left in the `error` slot given to [`Self::new`],
/// naming the file, the line and the byte offset: an iterator that a consumer such as
/// `tokenizers`' trainer drains cannot return it.
pub struct CheckedLines<'a> {
    files: std::collections::VecDeque<PathBuf>,
    current: Option<(PathBuf, Box<dyn BufRead + Send>)>,
    line: usize,
    offset: usize,
    error: &'a Mutex<Option<Error>>,
}

impl<'a> CheckedLines<'a> {
    /// Checks that every file opens before any is read.
    pub fn new(files: &[PathBuf], error: &'a Mutex<Option<Error>>) -> Result<Self> {
        for f in files {
            File::open(f).map_err(|e| Error::io(f, e))?;
        }
        Ok(Self {
            files: files.iter().cloned().collect(),
            current: None,
            line: 0,
            offset: 0,
            error,
        })
    }

    fn fail(&mut self, e: Error) -> Option<String> {
        *self.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
        self.current = None;
        self.files.clear();
        None
    }
}

impl Iterator for CheckedLines<'_> {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        loop {
            let Some((path, reader)) = &mut self.current else {
                let path = self.files.pop_front()?;
                match open_text(&path) {
                    Ok(reader) => self.current = Some((path, reader)),
                    Err(e) => return self.fail(e),
                }
                (self.line, self.offset) = (0, 0);
                continue;
            };
            let mut bytes = Vec::new();
            match reader.read_until(b'\n', &mut bytes) {
                Ok(0) => self.current = None,
                Ok(n) => {
                    self.line += 1;
                    return match String::from_utf8(bytes) {
                        Ok(text) => {
                            self.offset += n;
                            Some(text)
                        }
                        Err(e) => {
                            let e = utf8_error(
                                path,
                                self.line,
                                self.offset,
                                e.as_bytes(),
                                e.utf8_error(),
                            );
                            self.fail(e)
                        }
                    };
                }
                Err(e) => {
                    let e = Error::Invalid {
                        path: path.clone(),
                        reason: format!("line {}: cannot read: {e}", self.line + 1),
                    };
                    return self.fail(e);
                }
            }
        }
    }
}

/// Byte ranges of the lines of `text`: split on `\n`, a trailing `\r` dropped, and no extra
/// empty line after a final newline. An empty text has no lines.
pub fn line_spans(text: &str) -> Vec<std::ops::Range<usize>> {
    let mut spans = Vec::new();
    let mut start = 0;
    let bytes = text.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\n' {
            let end = if i > start && bytes[i - 1] == b'\r' {
                i - 1
            } else {
                i
            };
            spans.push(start..end);
            start = i + 1;
        }
    }
    if start < bytes.len() {
        let end = if bytes[bytes.len() - 1] == b'\r' {
            bytes.len() - 1
        } else {
            bytes.len()
        };
        spans.push(start..end);
    }
    spans
}

/// Writes `bytes` to `path` so that a reader sees either the old file or the whole new one
/// (an [`AtomicFile`] written at once).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = AtomicFile::create(path)?;
    file.write_all(bytes).map_err(|e| Error::io(path, e))?;
    file.commit()
}

/// A file written in full or not at all, however large: writes go (buffered) to a temporary
/// file in the same directory, which [`AtomicFile::commit`] fsyncs and renames over the
/// destination, then fsyncs the directory. Dropped without a commit, the temporary file is
/// removed and the destination is untouched.
pub struct AtomicFile {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<std::io::BufWriter<File>>,
}

impl AtomicFile {
    pub fn create(path: &Path) -> Result<Self> {
        let name = path
            .file_name()
            .ok_or_else(|| Error::Config(format!("{} is not a file path", path.display())))?;
        let tmp = path.with_file_name(format!(
            ".{}.tmp-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let file = File::create(&tmp).map_err(|e| Error::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            tmp,
            file: Some(std::io::BufWriter::with_capacity(1 << 20, file)),
        })
    }

    /// Puts the whole file in place under its name.
    pub fn commit(mut self) -> Result<()> {
        let file = self.file.take().expect("not yet committed");
        let result = (|| -> std::io::Result<()> {
            let file = file.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            drop(file);
            std::fs::rename(&self.tmp, &self.path)?;
            // Make the rename itself durable. Not every platform can open a directory.
            let dir = match self.path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
            Ok(())
        })();
        result.map_err(|e| Error::io(&self.path, e))
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.as_mut().expect("not yet committed").write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.as_mut().expect("not yet committed").flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        // Committed: the temporary name no longer exists, and this fails harmlessly.
        drop(self.file.take());
        let _ = std::fs::remove_file(&self.tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_atomic_file_appears_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.txt");
        std::fs::write(&path, "old").unwrap();
        let mut f = AtomicFile::create(&path).unwrap();
        f.write_all(b"new, ").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old");
        drop(f); // not committed: nothing changes, nothing is left behind
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let mut f = AtomicFile::create(&path).unwrap();
        f.write_all(b"new, ").unwrap();
        f.write_all(b"whole").unwrap();
        f.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new, whole");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    fn lines(text: &str) -> Vec<&str> {
        line_spans(text).into_iter().map(|r| &text[r]).collect()
    }

    #[test]
    fn line_splitting() {
        assert_eq!(lines(""), Vec::<&str>::new());
        assert_eq!(lines("a"), vec!["a"]);
        assert_eq!(lines("a\n"), vec!["a"]);
        assert_eq!(lines("a\n\nb"), vec!["a", "", "b"]);
        assert_eq!(lines("a\r\nb\r\n"), vec!["a", "b"]);
        assert_eq!(lines("\n"), vec![""]);
        assert_eq!(lines("a\rb\n"), vec!["a\rb"]);
    }

    #[test]
    fn invalid_utf8_names_the_line() {
        let err = into_utf8(Path::new("x.de"), b"ok\nok\nbad \xff here\n".to_vec()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "x.de:3: invalid UTF-8 at byte offset 10 (byte sequence [ff] is not valid UTF-8)"
        );
        let err = into_utf8(Path::new("y.en"), b"a\n\xc3".to_vec()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "y.en:2: invalid UTF-8 at byte offset 2 (the file ends inside a character: [c3])"
        );
    }

    #[test]
    fn gzip_is_transparent_and_atomic_write_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.txt.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(b"hello\nworld\n").unwrap();
        write_atomic(&p, &enc.finish().unwrap()).unwrap();
        assert_eq!(read_bytes(&p).unwrap(), b"hello\nworld\n");
        write_atomic(&p, b"plain").unwrap();
        assert_eq!(read_bytes(&p).unwrap(), b"plain");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "temporary files left behind");
    }

    #[test]
    fn streamed_lines_keep_endings_and_stop_at_the_first_bad_byte() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.txt"), dir.path().join("b.txt"));
        std::fs::write(&a, "one\r\ntwo").unwrap();
        std::fs::write(&b, b"fine\nbad \xe2\x82 here\nnever read\n").unwrap();
        let error = Mutex::new(None);
        let lines: Vec<String> = CheckedLines::new(&[a.clone(), b.clone()], &error)
            .unwrap()
            .collect();
        assert_eq!(lines, ["one\r\n", "two", "fine\n"]);
        let e = error
            .into_inner()
            .unwrap()
            .expect("the bad byte is reported")
            .to_string();
        assert_eq!(
            e,
            format!(
                "{}:2: invalid UTF-8 at byte offset 9 (byte sequence [e2, 82] is not valid UTF-8)",
                b.display()
            )
        );
        let missing = dir.path().join("missing.txt");
        let e = CheckedLines::new(&[a, missing.clone()], &Mutex::new(None))
            .err()
            .unwrap();
        assert!(
            e.to_string().starts_with(&missing.display().to_string()),
            "{e}"
        );
    }

    #[test]
    fn corrupt_gzip_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("broken.gz");
        std::fs::write(&p, [0x1f, 0x8b, 8, 0, 1, 2, 3]).unwrap();
        let err = read_bytes(&p).unwrap_err().to_string();
        assert!(err.contains("broken.gz: corrupt gzip data"), "{err}");
    }
}
