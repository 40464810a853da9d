//! One module per command: its clap `Args` and a `run` that turns them into library calls.

pub mod check_device;
pub mod codec;
pub mod docs;
pub mod eval;
pub mod export;
pub mod plot;
pub mod prepare;
pub mod score;
pub mod serve;
pub mod shortlist;
pub mod synth;
pub mod train;
pub mod translate;
pub mod vocab;
