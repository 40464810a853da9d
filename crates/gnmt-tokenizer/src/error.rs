use std::path::PathBuf;

/// Everything that can go wrong on the text side, with the file (and line) it concerns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `offset` counts bytes from the start of the (decompressed) file.
    #[error("{}:{line}: invalid UTF-8 at byte offset {offset} ({detail})", path.display())]
    InvalidUtf8 {
        path: PathBuf,
        line: usize,
        offset: usize,
        detail: String,
    },
    #[error(
        "line counts differ: {} has {src_lines} lines but {} has {tgt_lines}; \
         the two sides of a parallel corpus must be aligned line by line",
        src.display(), tgt.display()
    )]
    LineCountMismatch {
        src: PathBuf,
        src_lines: usize,
        tgt: PathBuf,
        tgt_lines: usize,
    },
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("{0}")]
    Config(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
