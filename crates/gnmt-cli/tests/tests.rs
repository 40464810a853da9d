//! End-to-end tests of the `gnmt` and `translate` binaries.

mod cli;
mod fine_tune;
mod multilingual;
mod options;
mod readme;
mod shipped;
mod study;
mod support;
mod train;
mod translate;

pub use support::*;
