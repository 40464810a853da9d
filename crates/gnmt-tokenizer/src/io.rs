//! File helpers shared by the pipeline: whole-file reads (plain or gzip), line splitting with
//! UTF-8 checks that name the line, and atomic writes.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

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

/// Checks that `bytes` is UTF-8; the error names the 1-based line of the first bad byte.
pub fn into_utf8(path: &Path, bytes: Vec<u8>) -> Result<String> {
    String::from_utf8(bytes).map_err(|e| {
        let err = e.utf8_error();
        let bytes = e.as_bytes();
        let line = bytes[..err.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        let bad = &bytes[err.valid_up_to()
            ..(err.valid_up_to() + err.error_len().unwrap_or(1)).min(bytes.len())];
        Error::InvalidUtf8 {
            path: path.to_path_buf(),
            line,
            detail: format!("byte sequence {bad:02x?} is not valid UTF-8"),
        }
    })
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

/// Writes `bytes` to `path` so that a reader sees either the old file or the whole new one:
/// write a temporary file in the same directory, fsync it, rename it over `path`, fsync the
/// directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| Error::Config(format!("{} is not a file path", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable. Not every platform can open a directory.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

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
            "x.de:3: invalid UTF-8 (byte sequence [ff] is not valid UTF-8)"
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
    fn corrupt_gzip_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("broken.gz");
        std::fs::write(&p, [0x1f, 0x8b, 8, 0, 1, 2, 3]).unwrap();
        let err = read_bytes(&p).unwrap_err().to_string();
        assert!(err.contains("broken.gz: corrupt gzip data"), "{err}");
    }
}
