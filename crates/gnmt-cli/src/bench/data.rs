//! `gnmt bench data`: Multi30k's training set from text to batches, and again from the
//! binarized cache.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use gnmt_tokenizer::{data::multi30k_dir, Dataset, Vocab, VocabOptions};

use crate::checked::{self, whole};
use crate::cmd::prepare::{DataArgs, EpochStats};

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
