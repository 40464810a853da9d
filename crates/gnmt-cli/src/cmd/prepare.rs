use std::path::PathBuf;

use crate::checked::{self, real, whole, Interval};
use clap::Args;
use gnmt_tokenizer::batch::plan_epoch;
use gnmt_tokenizer::dataset::CacheStatus;
use gnmt_tokenizer::{Batch, BatchOptions, Dataset, FilterOptions, Vocab};

/// Corpus filtering and batching options, shared by `prepare`, `bench data` and (later) `train`.
#[derive(Debug, Clone, Args)]
pub struct DataArgs {
    /// Skip pairs with more pieces than this on either side.
    #[arg(long, default_value_t = FilterOptions::default().max_len, value_parser = whole::<usize>(1, 100_000))]
    pub max_len: usize,
    /// Skip pairs whose length ratio (longer side over shorter) exceeds this, 1 to 1000.
    #[arg(long, default_value_t = FilterOptions::default().max_ratio, value_parser = real::<f32>(Interval::closed(1.0, 1000.0)))]
    pub max_ratio: f32,
    /// Padded tokens per batch.
    #[arg(long, default_value_t = BatchOptions::default().max_tokens, value_parser = checked::max_tokens())]
    pub max_tokens: usize,
    /// Sentence pairs per batch, at most.
    #[arg(long, default_value_t = BatchOptions::default().max_sentences, value_parser = whole::<usize>(1, 1_000_000))]
    pub max_sentences: usize,
    /// Seed of the data order.
    #[arg(long, default_value_t = 1, value_parser = checked::seed())]
    pub seed: u64,
}

impl DataArgs {
    pub fn filter(&self) -> FilterOptions {
        FilterOptions {
            max_len: self.max_len,
            max_ratio: self.max_ratio,
        }
    }

    pub fn batching(&self) -> BatchOptions {
        BatchOptions {
            max_tokens: self.max_tokens,
            max_sentences: self.max_sentences,
            seed: self.seed,
            shuffle: true,
            mix: None,
        }
    }
}

#[derive(Debug, Args)]
pub struct PrepareArgs {
    /// Source and target files (plain or gzip), aligned line by line.
    #[arg(long, num_args = 2, value_names = ["SRC", "TGT"], required = true)]
    pub train: Vec<PathBuf>,
    /// The tokenizer.json to encode with.
    #[arg(long)]
    pub vocab: PathBuf,
    /// Directory for the binarized dataset cache (reused when nothing changed).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    #[command(flatten)]
    pub data: DataArgs,
}

impl PrepareArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let start = std::time::Instant::now();
        let vocab = Vocab::load(&self.vocab)?;
        let (ds, status) = Dataset::prepare(
            &self.train[0],
            &self.train[1],
            &vocab,
            &self.data.filter(),
            self.cache_dir.as_deref(),
        )?;
        println!("{}", ds.summary);
        match status {
            CacheStatus::NotCached => {}
            CacheStatus::Hit(p) => println!("loaded from cache {}", p.display()),
            CacheStatus::Written(p) => println!("cached as {}", p.display()),
            CacheStatus::Rebuilt(p, why) => {
                println!("rebuilt cache {} (old one unusable: {why})", p.display())
            }
        }
        println!(
            "{} source and {} target pieces",
            ds.src.total_tokens(),
            ds.tgt.total_tokens()
        );
        let stats = EpochStats::measure(&ds, &self.data.batching());
        println!("{stats}");
        println!("done in {:.2}s", start.elapsed().as_secs_f64());
        Ok(())
    }
}

/// Shape of one epoch's batches.
pub struct EpochStats {
    pub batches: usize,
    pub sentences: usize,
    pub padding: f64,
}

impl EpochStats {
    /// Plans epoch 0 and materialises every batch (what training does).
    pub fn measure(ds: &Dataset, options: &BatchOptions) -> Self {
        let plan = plan_epoch(ds, options, 0);
        let (mut cells, mut real, mut sentences) = (0usize, 0usize, 0usize);
        for indices in &plan {
            let b = Batch::from_indices(ds, indices.clone());
            cells += b.len() * (b.src_width + b.tgt_width);
            real += b.src_tokens() + b.tgt_tokens();
            sentences += b.len();
        }
        Self {
            batches: plan.len(),
            sentences,
            padding: 1.0 - real as f64 / cells.max(1) as f64,
        }
    }
}

impl std::fmt::Display for EpochStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} batches per epoch, {:.1} pairs per batch, {:.1}% padding",
            self.batches,
            self.sentences as f64 / self.batches.max(1) as f64,
            100.0 * self.padding
        )
    }
}
