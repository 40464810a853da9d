//! End-to-end tests of the `gnmt` and `translate` binaries.

mod cli;
mod options;
mod readme;
mod shipped;
mod study;
mod train;
mod translate;

use std::path::Path;
use std::process::{Command, Output};

/// What a data check says when Multi30k is missing. Such checks are `#[ignore]`d in the
/// README's test command, which must pass on a bare clone, and run by `.ci/data-checks.sh`.
pub const NEEDS_MULTI30K: &str =
    "Multi30k is needed: set GNMT_DATA_DIR, or put it in ../shared/data/multi30k";

pub fn gnmt(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gnmt"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run gnmt")
}

pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn err(out: Output) -> String {
    assert!(
        !out.status.success(),
        "expected failure, got: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}
