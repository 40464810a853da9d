use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use candle::Device;
use clap::Args;

use crate::checked::{self, real, whole, Interval};
use gnmt_model::{ModelConfig, TieEmbeddings};
use gnmt_train::{train, CorpusSpec, InitFrom, TrainArgs as LibArgs, TrainConfig};

/// The training and validation corpora of a run (`gnmt train`, `gnmt study`).
#[derive(Debug, Args)]
pub struct CorpusArgs {
    /// Training source and target files (plain or gzip), aligned line by line.
    #[arg(long, num_args = 2, value_names = ["SRC", "TGT"], required = true)]
    pub train: Vec<PathBuf>,
    /// Validation source and target files.
    #[arg(long, num_args = 2, value_names = ["SRC", "TGT"], required = true)]
    pub valid: Vec<PathBuf>,
}

/// A run's corpora: one pair of files, or a multilingual model's language pairs.
#[derive(Debug, Args)]
pub struct RunCorpora {
    /// Training source and target files (plain or gzip), aligned line by line.
    #[arg(long, num_args = 2, value_names = ["SRC", "TGT"])]
    pub train: Vec<PathBuf>,
    /// Validation source and target files.
    #[arg(long, num_args = 2, value_names = ["SRC", "TGT"])]
    pub valid: Vec<PathBuf>,
    /// A multilingual model's training corpus for one direction, e.g. --pair en-de A.en A.de;
    /// repeat for each pair. Sources are tagged with their target language (<2de>).
    #[arg(long, num_args = 3, value_names = ["LANGS", "SRC", "TGT"], conflicts_with = "train")]
    pub pair: Vec<String>,
    /// A validation corpus for one direction (validation BLEU is the pairs' mean).
    #[arg(long, num_args = 3, value_names = ["LANGS", "SRC", "TGT"], conflicts_with = "valid")]
    pub valid_pair: Vec<String>,
    /// Sampling across the --pair corpora: by size ^ (1 / T); 1 samples by size, larger T
    /// up-samples the small corpora (5 is common).
    #[arg(long, value_name = "T", value_parser = real::<f64>(Interval::above(0.0, 100.0)))]
    pub temperature: Option<f64>,
}

type Corpora = Vec<CorpusSpec>;

/// `--tie-embeddings`: which embedding matrices are one.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Tie {
    None,
    Decoder,
    All,
}

impl From<Tie> for TieEmbeddings {
    fn from(t: Tie) -> Self {
        match t {
            Tie::None => Self::None,
            Tie::Decoder => Self::Decoder,
            Tie::All => Self::All,
        }
    }
}

impl RunCorpora {
    /// The corpora the flags name, or `None` where they name none (the config file's then).
    fn specs(&self) -> anyhow::Result<(Option<Corpora>, Option<Corpora>)> {
        let plain = |files: &[PathBuf]| -> Vec<CorpusSpec> {
            files
                .chunks(2)
                .map(|f| CorpusSpec {
                    pair: None,
                    src: f[0].clone(),
                    tgt: f[1].clone(),
                })
                .collect()
        };
        let paired = |values: &[String], flag: &str| {
            values
                .chunks(3)
                .map(|v| {
                    let pair = v[0]
                        .parse()
                        .map_err(|e| anyhow::anyhow!("{flag} {} {} {}: {e}", v[0], v[1], v[2]))?;
                    Ok(CorpusSpec {
                        pair: Some(pair),
                        src: v[1].clone().into(),
                        tgt: v[2].clone().into(),
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()
        };
        let pick = |a: Vec<CorpusSpec>| (!a.is_empty()).then_some(a);
        let train = match self.pair.is_empty() {
            true => plain(&self.train),
            false => paired(&self.pair, "--pair")?,
        };
        let valid = match self.valid_pair.is_empty() {
            true => plain(&self.valid),
            false => paired(&self.valid_pair, "--valid-pair")?,
        };
        Ok((pick(train), pick(valid)))
    }
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub corpus: RunCorpora,
    /// Run folder. Running the same command again resumes from its newest checkpoint.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Configuration file (JSON, or TOML by `.toml` extension); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Model preset from models/presets (overrides the config file's model).
    #[arg(long)]
    pub preset: Option<String>,
    /// Use this vocabulary (tokenizer.json) instead of training one on the training files.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Train the vocabulary with punctuation split from words (`dog.` becomes `▁dog` `.`), as
    /// `gnmt vocab --split-punctuation` does; config key data.split_punctuation.
    #[arg(long, conflicts_with_all = ["tokenizer", "init_from"])]
    pub split_punctuation: bool,
    /// Fine-tune: start from this model folder's weights, with its vocabulary, architecture
    /// and decoding defaults (a --preset, --tokenizer or config `model` that differs is
    /// refused). The optimizer and learning-rate schedule start afresh.
    #[arg(long, value_name = "MODEL")]
    pub init_from: Option<PathBuf>,
    /// With --init-from a checkpoint folder (RUN/checkpoints/step-N): continue its optimizer
    /// (Adam's moments) and its learning-rate schedule instead of starting them afresh.
    #[arg(long, requires = "init_from")]
    pub keep_optimizer: bool,
    /// Stop after this many updates.
    #[arg(long, value_parser = checked::updates())]
    pub max_steps: Option<u64>,
    /// Stop after this many passes over the training data.
    #[arg(long, value_parser = whole::<u64>(1, 1_000_000))]
    pub max_epochs: Option<u64>,
    /// Wall-time limit over the whole run, e.g. 90m, 2h.
    #[arg(long, value_parser = checked::duration)]
    pub max_time: Option<String>,
    /// Early stopping: stop after N validations without a BLEU improvement.
    #[arg(long, value_parser = whole::<u32>(1, 1_000_000))]
    pub patience: Option<u32>,
    /// Write a checkpoint every N updates (and at every stop).
    #[arg(long, value_parser = checked::updates())]
    pub save_every: Option<u64>,
    /// Validate (loss and greedy BLEU on the validation files) every N updates.
    #[arg(long, value_parser = checked::updates())]
    pub valid_every: Option<u64>,
    /// Log loss, learning rate, gradient norms and speed every N updates.
    #[arg(long, value_parser = checked::updates())]
    pub log_every: Option<u64>,
    /// Step checkpoints to keep.
    #[arg(long, value_parser = whole::<usize>(1, 1_000_000))]
    pub keep_last: Option<usize>,
    /// Seed of initialisation, dropout and data order: the same seed repeats the run exactly.
    #[arg(long, value_parser = checked::seed())]
    pub seed: Option<u64>,
    /// Peak learning rate (after warm-up), in (0, 10].
    #[arg(long, value_parser = real::<f64>(Interval::above(0.0, 10.0)))]
    pub lr: Option<f64>,
    /// Dropout on the input of every LSTM layer and before the output projection, in [0, 1).
    #[arg(long, value_parser = real::<f32>(Interval::below(0.0, 1.0)))]
    pub dropout: Option<f32>,
    /// Word dropout: the probability of dropping a whole source token's embedding, in [0, 1).
    #[arg(long, value_name = "P", value_parser = real::<f32>(Interval::below(0.0, 1.0)))]
    pub word_dropout_src: Option<f32>,
    /// The same for the decoder's input tokens, in [0, 1).
    #[arg(long, value_name = "P", value_parser = real::<f32>(Interval::below(0.0, 1.0)))]
    pub word_dropout_tgt: Option<f32>,
    /// Keep an exponential moving average of the weights with this decay, in (0, 1) (0.9999
    /// is common); validation and every saved model use the average.
    #[arg(long, value_name = "DECAY", value_parser = real::<f64>(Interval::open(0.0, 1.0)))]
    pub ema_decay: Option<f64>,
    /// Share embedding matrices: `decoder` (its input embedding is its output layer) or `all`
    /// (the encoder's embedding too). Needs embedding_dim = hidden_size.
    #[arg(long, value_name = "WHICH", conflicts_with = "init_from")]
    pub tie_embeddings: Option<Tie>,
    /// Label smoothing of the training loss, in [0, 1).
    #[arg(long, value_parser = real::<f64>(Interval::below(0.0, 1.0)))]
    pub label_smoothing: Option<f64>,
    /// Padded tokens per batch.
    #[arg(long, value_parser = checked::max_tokens())]
    pub max_tokens: Option<usize>,
    /// Batches per update (gradient accumulation): an update sees K batches of --max-tokens,
    /// however many processes share them.
    #[arg(long, value_name = "K", value_parser = whole::<usize>(1, 4096))]
    pub accumulate: Option<usize>,
    /// No progress lines on stderr.
    #[arg(short, long)]
    pub quiet: bool,
}

impl TrainArgs {
    /// The effective configuration: file (or defaults), then preset, then flags (`compute`:
    /// the global `--matmul` and `--kernels`, where given), for training on `device`.
    pub fn resolve(
        &self,
        compute: crate::ComputeFlags,
        device: &Device,
    ) -> anyhow::Result<TrainConfig> {
        let mut c = match &self.config {
            Some(p) => TrainConfig::from_file(p)?,
            None => TrainConfig::default(),
        };
        if let Some(p) = &self.preset {
            c.model = ModelConfig::preset(p).map_err(anyhow::Error::msg)?;
        }
        if let Some(tie) = self.tie_embeddings {
            c.model.tie_embeddings = tie.into();
        }
        if let Some(init) = self.init() {
            self.take_model_settings(&init, &mut c)?;
        }
        macro_rules! set {
            ($($flag:ident => $($field:ident).+),* $(,)?) => {
                $(if let Some(v) = self.$flag.clone() { c.$($field).+ = v.into(); })*
            };
        }
        set!(
            max_steps => stop.max_steps, max_epochs => stop.max_epochs, max_time => stop.max_time,
            patience => stop.patience, save_every => log.save_every, valid_every => log.valid_every,
            log_every => log.log_every, keep_last => log.keep_last, seed => seed, lr => optim.lr,
            dropout => dropout, label_smoothing => label_smoothing, max_tokens => data.max_tokens,
            accumulate => data.accumulate, word_dropout_src => word_dropout_src,
            word_dropout_tgt => word_dropout_tgt,
        );
        if self.ema_decay.is_some() {
            c.ema_decay = self.ema_decay;
        }
        let (train, valid) = self.corpus.specs()?;
        c.data.train = train.unwrap_or(c.data.train);
        c.data.valid = valid.unwrap_or(c.data.valid);
        if self.split_punctuation {
            c.data.split_punctuation = true;
        }
        if let Some(t) = self.corpus.temperature {
            c.data.temperature = t;
        }
        let given = compute.kernels.map(Into::into);
        if given.is_some() || !device.is_cpu() {
            c.kernels = crate::kernel_choice(given, device)?;
        }
        // auto unless chosen, by the flag or by the config file's `matmul` key; the reference
        // kernels and GPUs compute in f32.
        let file_sets_matmul = match &self.config {
            Some(p) => TrainConfig::sections_in_file(p)?
                .iter()
                .any(|s| s == "matmul"),
            None => false,
        };
        let matmul = compute
            .matmul
            .or((!file_sets_matmul).then_some(crate::Matmul::Auto));
        let fused_on_cpu = c.kernels == gnmt_model::KernelChoice::Fused && device.is_cpu();
        if let Some(m) = matmul {
            c.matmul = m.for_training(fused_on_cpu, self.quiet);
        }
        if device.is_cpu() {
            crate::warn_if_slow(c.matmul);
        }
        crate::products_fit(device, c.matmul)?;
        c.validate()?;
        Ok(c)
    }

    /// The model this run fine-tunes, if it does.
    fn init(&self) -> Option<InitFrom> {
        self.init_from.as_ref().map(|dir| InitFrom {
            dir: dir.clone(),
            keep_optimizer: self.keep_optimizer,
        })
    }

    /// Fine-tuning: the run takes the model's architecture and (unless the config file sets
    /// them) its decoding defaults; an architecture asked for by --preset or the config file
    /// must be the model's.
    fn take_model_settings(&self, init: &InitFrom, c: &mut TrainConfig) -> anyhow::Result<()> {
        let (model, generation) = init.settings()?;
        let sections = match &self.config {
            Some(p) => TrainConfig::sections_in_file(p)?,
            None => Vec::new(),
        };
        let asked = match (&self.preset, &self.config) {
            (Some(p), _) => Some(format!("--preset {p}")),
            (None, Some(f)) if sections.iter().any(|s| s == "model") => {
                Some(format!("the model of {}", f.display()))
            }
            _ => None,
        };
        if let Some(asked) = asked {
            // The vocabulary's size comes from the vocabulary, which is the model's.
            let wanted = ModelConfig {
                vocab_size: model.vocab_size,
                ..c.model.clone()
            };
            let differences = gnmt_train::init_from::model_differences(&wanted, &model);
            anyhow::ensure!(
                differences.is_empty(),
                "cannot fine-tune {} with {asked}: the architectures differ in {} (the model's \
                 value first); fine-tuning keeps the model's architecture",
                init.dir.display(),
                differences.join(", ")
            );
        }
        c.model = model;
        if !sections.iter().any(|s| s == "generation") {
            c.generation = generation;
        }
        Ok(())
    }

    pub fn run(self, compute: crate::ComputeFlags) -> anyhow::Result<()> {
        let device = compute.device()?;
        let config = self.resolve(compute, &device)?;
        // First Ctrl-C: finish the update, validate, save, exit. Second: exit at once.
        let interrupt = Arc::new(AtomicBool::new(false));
        let flag = interrupt.clone();
        ctrlc::set_handler(move || {
            if flag.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!("interrupted: saving a checkpoint before exiting (Ctrl-C again to quit now)");
        })?;
        let outcome = train(LibArgs {
            out_dir: self.output.clone(),
            config,
            tokenizer: self.tokenizer.clone(),
            init_from: self.init(),
            device,
            quiet: self.quiet,
            interrupt: Some(interrupt),
            group: gnmt_dist::world(),
        })?;
        if !gnmt_dist::world().is_root() {
            return Ok(());
        }
        // The curves are a convenience: a failure to draw them does not fail the run.
        if let Err(e) = super::plot::plot_run(&self.output, &self.output.join("plots")) {
            eprintln!("warning: could not draw the training curves: {e:#}");
        }
        println!(
            "{}: {} updates ({}); best validation BLEU {} (greedy)",
            self.output.display(),
            outcome.step,
            outcome.stop_reason,
            outcome
                .best_bleu
                .map_or("-".to_string(), |b| format!("{b:.2}"))
        );
        Ok(())
    }
}
