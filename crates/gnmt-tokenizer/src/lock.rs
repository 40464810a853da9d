//! One writer per folder: an advisory lock on a file inside the folder that a run, an export
//! or a vocabulary is being written into.
//!
//! The lock is the kernel's (`flock` through [`std::fs::File::try_lock`]), so it dies with the
//! process that holds it: a trainer killed with SIGKILL leaves the lock file behind, but not
//! the lock, and the rerun that resumes takes it at once. The file holds the holder's process
//! id and command line, so a refused second writer can say who is in the way.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Name of the lock file inside a locked folder.
pub const LOCK_FILE: &str = ".gnmt.lock";

/// Holds a folder for writing until dropped (or until the process ends, however it ends).
#[derive(Debug)]
pub struct FolderLock {
    path: PathBuf,
    // Kept open: closing the file releases the lock.
    file: File,
}

impl FolderLock {
    /// Creates `dir` if needed and takes its lock, or fails at once, naming the folder and the
    /// process that holds it. `what` says what the folder is for ("run folder", ...).
    pub fn acquire(dir: &Path, what: &str) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(LOCK_FILE);
        loop {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| Error::io(&path, e))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    return Err(Error::Config(format!(
                        "{}: this {what} is in use by {}; wait for it to end, or write elsewhere",
                        dir.display(),
                        holder(&mut file)
                    )))
                }
                Err(TryLockError::Error(e)) => return Err(Error::io(&path, e)),
            }
            // A holder that was releasing removed the file between our open and our lock: the
            // lock we hold is on a file nobody else will open. Start again on the new one.
            if !same_file(&file, &path) {
                continue;
            }
            write_holder(&mut file).map_err(|e| Error::io(&path, e))?;
            return Ok(Self { path, file });
        }
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for FolderLock {
    fn drop(&mut self) {
        // Removed while still locked, so a writer waiting to open it either sees it gone or
        // finds that the file it locked is no longer the folder's (see `acquire`).
        let _ = std::fs::remove_file(&self.path);
        let _ = self.file.unlock();
    }
}

/// Who holds the lock, as written by `write_holder`; the holder may be writing it right now.
fn holder(file: &mut File) -> String {
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    let mut lines = text.lines();
    match (
        lines.next().and_then(|p| p.trim().parse::<u32>().ok()),
        lines.next(),
    ) {
        (Some(pid), Some(command)) => format!("process {pid} ({command})"),
        (Some(pid), None) => format!("process {pid}"),
        _ => "another process".to_string(),
    }
}

fn write_holder(file: &mut File) -> std::io::Result<()> {
    let command: Vec<String> = std::env::args().collect();
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{}\n{}", std::process::id(), command.join(" "))?;
    file.flush()
}

#[cfg(unix)]
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_file: &File, path: &Path) -> bool {
    path.exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_writer_is_refused_with_the_holder_named() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let held = FolderLock::acquire(&run, "run folder").unwrap();
        // flock locks belong to the open file, so a second open in this process conflicts too.
        let e = FolderLock::acquire(&run, "run folder")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!(
                "{}: this run folder is in use by process {}",
                run.display(),
                std::process::id()
            )),
            "{e}"
        );
        drop(held);
        assert!(
            !run.join(LOCK_FILE).exists(),
            "the lock file outlived its lock"
        );
        let again = FolderLock::acquire(&run, "run folder").unwrap();
        assert!(again.path().exists());
    }

    #[test]
    fn a_lock_file_left_without_its_process_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        // What a killed holder leaves: the file with its id, but no lock.
        std::fs::write(dir.path().join(LOCK_FILE), "4000000\ngnmt train\n").unwrap();
        let lock = FolderLock::acquire(dir.path(), "run folder").unwrap();
        let text = std::fs::read_to_string(lock.path()).unwrap();
        assert!(
            text.starts_with(&format!("{}\n", std::process::id())),
            "{text}"
        );
    }
}
