//! Benchmarks print measurements; they assert nothing and are never run as tests.

use std::path::PathBuf;
use std::time::Instant;

use crate::checked::{self, whole};
use clap::{Args, Subcommand};
use gnmt_tokenizer::{data::multi30k_dir, Dataset, Vocab, VocabOptions};

use super::prepare::{DataArgs, EpochStats};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Multi30k train (2 x 29,000 lines) from text to batches.
    Data(BenchDataArgs),
    /// Training-step throughput of a model preset (optionally against PyTorch).
    #[command(alias = "model")]
    Train(super::bench_train::BenchTrainArgs),
    /// Decoding speed and peak memory of a model on a test set.
    Translate(super::bench_translate::BenchTranslateArgs),
}

impl BenchCommand {
    /// `matmul`: the global `--matmul` flag, if given.
    pub fn run(self, compute: crate::ComputeFlags) -> anyhow::Result<()> {
        match self {
            BenchCommand::Data(a) => a.run(),
            BenchCommand::Train(a) => a.run(compute.kernels()?),
            BenchCommand::Translate(a) => a.run(compute.kernels()?),
        }
    }
}

#[derive(Debug, Args)]
pub struct BenchDataArgs {
    /// Directory with train.en and train.de (default: ../shared/data/multi30k or $GNMT_DATA_DIR).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Vocabulary size to train for the run.
    #[arg(long, default_value_t = 8000, value_parser = checked::vocab_size())]
    pub vocab_size: usize,
    /// Timed repetitions of the text-to-batches step (the best and median are reported).
    #[arg(long, default_value_t = 5, value_parser = whole::<usize>(1, 1000))]
    pub repeat: usize,
    #[command(flatten)]
    pub data: DataArgs,
}

impl BenchDataArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let dir = match self.data_dir {
            Some(d) => d,
            None => multi30k_dir()?,
        };
        let (src, tgt) = (dir.join("train.en"), dir.join("train.de"));
        let threads = rayon::current_num_threads();
        println!(
            "bench data: {} + {} on {threads} thread(s)",
            src.display(),
            tgt.display()
        );

        let t = Instant::now();
        let vocab = Vocab::train_from_files(
            &[src.clone(), tgt.clone()],
            &VocabOptions {
                size: self.vocab_size,
                ..Default::default()
            },
        )?;
        println!(
            "vocabulary ({} pieces) trained in {:.2}s",
            vocab.size(),
            t.elapsed().as_secs_f64()
        );

        let mut times = Vec::new();
        let mut last = None;
        for _ in 0..self.repeat.max(1) {
            let t = Instant::now();
            let (ds, _) = Dataset::prepare(&src, &tgt, &vocab, &self.data.filter(), None)?;
            let stats = EpochStats::measure(&ds, &self.data.batching());
            times.push(t.elapsed().as_secs_f64());
            last = Some((ds, stats));
        }
        let (ds, stats) = last.expect("at least one repetition");
        times.sort_by(f64::total_cmp);
        let lines = 2 * ds.summary.total;
        let (best, median) = (times[0], times[times.len() / 2]);
        println!("{}", ds.summary);
        println!("{stats}");
        println!(
            "text -> batches: best {best:.3}s, median {median:.3}s over {} runs; {:.0} lines/s (best)",
            times.len(),
            lines as f64 / best
        );

        let cache = tempfile::tempdir()?;
        Dataset::prepare(&src, &tgt, &vocab, &self.data.filter(), Some(cache.path()))?;
        let t = Instant::now();
        let (_, status) =
            Dataset::prepare(&src, &tgt, &vocab, &self.data.filter(), Some(cache.path()))?;
        EpochStats::measure(&ds, &self.data.batching());
        println!(
            "from binarized cache -> batches: {:.3}s ({status:?})",
            t.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

/// Runs one measurement child process (this executable with `--single` arguments) and
/// returns what it printed; a failure is an error carrying the child's stderr.
pub(crate) fn measurement_output(cmd: &mut std::process::Command) -> anyhow::Result<String> {
    use anyhow::Context;
    let out = cmd.output().context("running the measurement process")?;
    anyhow::ensure!(
        out.status.success(),
        "measurement failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Rates of several configurations measured in alternating rounds. A shared machine's speed
/// drifts by 10-20% within minutes, so a ratio of two runs taken a minute apart can be off by
/// as much; measured round by round, each ratio is of runs taken back to back.
pub(crate) struct Rounds {
    /// `rates[r][i]`: configuration `i` in round `r`.
    rates: Vec<Vec<f64>>,
}

impl Rounds {
    /// Calls `measure(round, i)` for every configuration `i` in `0..configs`, in order, and
    /// does it all `rounds` times.
    pub(crate) fn run(
        rounds: usize,
        configs: usize,
        mut measure: impl FnMut(usize, usize) -> anyhow::Result<f64>,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(rounds >= 1, "--rounds must be at least 1");
        let rates = (0..rounds)
            .map(|r| (0..configs).map(|i| measure(r, i)).collect())
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { rates })
    }

    pub(crate) fn count(&self) -> usize {
        self.rates.len()
    }

    /// The median rate of configuration `i` over the rounds.
    pub(crate) fn median_rate(&self, i: usize) -> f64 {
        median(self.rates.iter().map(|r| r[i]).collect())
    }

    /// The median over the rounds of configuration `i`'s rate divided by `base`'s.
    pub(crate) fn median_ratio(&self, i: usize, base: usize) -> f64 {
        median(self.rates.iter().map(|r| r[i] / r[base]).collect())
    }
}

/// What a ratio printed from `rounds` is: blank for one round.
pub(crate) fn rounds_note(rounds: &Rounds) -> String {
    match rounds.count() {
        1 => String::new(),
        n => format!(" (median of {n} rounds' ratios)"),
    }
}

/// The median of `xs` (the mean of the middle two for an even count).
fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => xs[n / 2],
        _ => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::{median, Rounds};

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(vec![7.0]), 7.0);
        assert!(median(Vec::new()).is_nan());
    }

    #[test]
    fn rounds_alternate_and_ratios_pair_runs_of_one_round() -> anyhow::Result<()> {
        let mut order = Vec::new();
        // Round r runs configuration 0 at 10r + 10 and configuration 1 at twice that, plus a
        // drift that a ratio of runs from different rounds would carry.
        let rounds = Rounds::run(3, 2, |r, i| {
            order.push((r, i));
            Ok((10 * r + 10) as f64 * (i + 1) as f64)
        })?;
        assert_eq!(order, [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]);
        assert_eq!(rounds.count(), 3);
        assert_eq!(rounds.median_rate(0), 20.0);
        assert_eq!(rounds.median_rate(1), 40.0);
        assert_eq!(rounds.median_ratio(1, 0), 2.0);
        assert!(Rounds::run(0, 2, |_, _| Ok(1.0)).is_err());
        Ok(())
    }
}
