//! Where tests and benchmarks find real text.
//!
//! Multi30k is read from `$GNMT_DATA_DIR` if set, else from `../shared/data/multi30k` next to
//! the repository (found by walking up from the current directory and from this crate's
//! source directory). Not finding it is an error that says where to put it: tests that need
//! real text fail loudly rather than skip.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The Multi30k directory (`train.en`, `train.de`, `val.*`, `test_2016_flickr.*`).
pub fn multi30k_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("GNMT_DATA_DIR") {
        let dir = PathBuf::from(dir);
        return check(&dir).map(|_| dir.clone()).map_err(|missing| Error::Config(format!(
            "GNMT_DATA_DIR={} does not hold Multi30k: {} is missing. Run data/download-multi30k.sh DIR \
             and point GNMT_DATA_DIR at DIR.",
            dir.display(),
            missing.display()
        )));
    }
    let starts = [
        std::env::current_dir().ok(),
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR"))),
    ];
    for start in starts.into_iter().flatten() {
        for dir in start.ancestors() {
            let candidate = dir.join("shared/data/multi30k");
            if check(&candidate).is_ok() {
                return Ok(candidate);
            }
        }
    }
    Err(Error::Config(
        "Multi30k not found: expected ../shared/data/multi30k beside the repository, or set \
         GNMT_DATA_DIR to a directory holding train.{en,de}, val.{en,de} and test_2016_flickr.{en,de} \
         (data/download-multi30k.sh DIR fetches them)."
            .into(),
    ))
}

fn check(dir: &Path) -> std::result::Result<(), PathBuf> {
    for name in [
        "train.en",
        "train.de",
        "val.en",
        "val.de",
        "test_2016_flickr.en",
        "test_2016_flickr.de",
    ] {
        let p = dir.join(name);
        if !p.is_file() {
            return Err(p);
        }
    }
    Ok(())
}
