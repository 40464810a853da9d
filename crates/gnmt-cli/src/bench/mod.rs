//! `gnmt bench`: benchmarks for developers, kept out of the product commands. They print
//! measurements, assert nothing and are never run as tests.
//!
//! - [`data`]: Multi30k from text to batches.
//! - [`train`]: training-step throughput, optionally against PyTorch.
//! - [`translate`]: decoding speed and peak memory.
//! - [`serve`]: `gnmt serve` under concurrent load, against `translate`'s rate.
//! - [`rounds`]: measurements in child processes, alternated in rounds; [`peak`]: the
//!   machine's peak product rates the others are quoted against.

pub mod data;
pub mod peak;
pub mod rounds;
pub mod serve;
pub mod train;
pub mod translate;

use clap::Subcommand;

/// The sentences a decoding benchmark reads: `given`, or Multi30k's test_2016_flickr.en.
pub fn source_or_multi30k_test(
    given: &Option<std::path::PathBuf>,
) -> anyhow::Result<std::path::PathBuf> {
    match given {
        Some(p) => Ok(p.clone()),
        None => Ok(gnmt_tokenizer::data::multi30k_dir()?.join("test_2016_flickr.en")),
    }
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Multi30k train (2 x 29,000 lines) from text to batches.
    Data(data::BenchDataArgs),
    /// Training-step throughput of a model preset (optionally against PyTorch).
    #[command(alias = "model")]
    Train(train::BenchTrainArgs),
    /// Decoding speed and peak memory of a model on a test set.
    Translate(translate::BenchTranslateArgs),
    /// The server under concurrent clients: latency and throughput against translate's.
    Serve(serve::BenchServeArgs),
}

impl BenchCommand {
    /// `compute`: the global `--matmul` and `--kernels` flags, where given.
    pub fn run(self, compute: crate::ComputeFlags) -> anyhow::Result<()> {
        match self {
            BenchCommand::Data(a) => a.run(),
            BenchCommand::Train(a) => a.run(compute),
            BenchCommand::Translate(a) => a.run(compute),
            BenchCommand::Serve(a) => a.run(compute),
        }
    }
}
