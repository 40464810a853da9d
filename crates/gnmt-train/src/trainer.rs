//! The training loop: a plain function from arguments to a trained run folder.
//!
//! ```text
//! DIR/train_config.json          effective TrainConfig (resume compares against it)
//! DIR/{config,generation,tokenizer}.json, DIR/model.safetensors   latest model (loadable)
//! DIR/checkpoints/step-N/        model folder + optimizer.safetensors + state.json
//! DIR/best/                      model folder with the best validation BLEU
//! DIR/metrics.jsonl              one JSON object per log line and per validation
//! DIR/valid/step-N.txt           validation translations
//! DIR/cache/                     binarized datasets
//! DIR/.gnmt.lock                 held while a trainer runs (one trainer per folder)
//! ```
//!
//! A checkpoint is written into a temporary folder and renamed into place, so a process killed
//! at any moment (SIGKILL included) leaves every `step-N` folder complete; the next run resumes
//! from the newest one and loses at most the updates since it.
//!
//! In a job of several processes ([`TrainArgs::group`]), every rank reads the same batches and
//! trains on its share of each (by target tokens); the gradients are summed over the ranks and
//! every rank applies the same update, so the global batch and the schedule do not depend on
//! the number of ranks, and a run resumes with any number. Rank 0 alone writes the folder:
//! vocabulary, cache, metrics, validation and checkpoints; it also decides when to stop.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle::{DType, Device, Var};
use candle_nn::{VarBuilder, VarMap};
use gnmt_dist::Group;
use gnmt_infer::LengthLimit;
use gnmt_model::checkpoint::{self, tensors_of};
use gnmt_model::{init_model, Dropout, Gnmt};
use gnmt_tokenizer::batch::Mix;
use gnmt_tokenizer::{
    Batch, BatchOptions, Batcher, Dataset, FilterOptions, FolderLock, Vocab, VocabOptions,
};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

use crate::checkpoints::{latest_checkpoint, save_checkpoint, RAW_WEIGHTS_DIR};
use crate::config::TrainConfig;
use crate::corpora::{self, ValidSet};
use crate::ema::Ema;
use crate::init_from::{self, InitFrom};
use crate::metrics_log::{MetricsLog, Window};
use crate::optim::Optimizer;
use crate::progress::Progress;
use crate::schedule::lr_at;
use crate::state::{RngState, TrainState};
use crate::step::{self, GradientSum};
use crate::sync;
use crate::validate::{batch_tensors, Validator};
use crate::{Error, Result};

/// Consecutive non-finite batches after which training stops.
const MAX_NONFINITE_IN_A_ROW: u32 = 5;
/// Keeps the dropout stream apart from the parameter-initialisation stream of the same seed.
const DROPOUT_SEED_SALT: u64 = 0x5eed_d409;
/// What rank 0 broadcasts when the run goes on (any other message is the reason to stop).
const GO_ON: &[u8] = b"";

pub struct TrainArgs {
    pub out_dir: PathBuf,
    /// The run's settings, its corpora (`data.train`, `data.valid`) included.
    pub config: TrainConfig,
    /// Use this vocabulary instead of training one on the training files.
    pub tokenizer: Option<PathBuf>,
    /// Start from this model's weights (fine-tuning); `config.model` must be its
    /// architecture.
    pub init_from: Option<InitFrom>,
    pub device: Device,
    /// No progress lines on stderr.
    pub quiet: bool,
    /// Set (e.g. by a Ctrl-C handler) to stop after the current update; the run then
    /// validates and saves as at any other stop.
    pub interrupt: Option<Arc<AtomicBool>>,
    /// The processes training this model together ([`Group::single`] for one).
    pub group: &'static Group,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub step: u64,
    pub resumed_from: Option<u64>,
    pub best_bleu: Option<f64>,
    pub last_bleu: Option<f64>,
    pub last_valid_loss: Option<f64>,
    pub stop_reason: String,
}

/// Runs (or resumes) training into `args.out_dir`.
pub fn train(args: TrainArgs) -> Result<Outcome> {
    args.config.validate()?;
    let out = &args.out_dir;
    let group = args.group;
    // Before anything is read or written: a second trainer on the same folder would
    // interleave its checkpoints and metrics with ours. Only rank 0 writes.
    let _lock = match group.is_root() {
        true => Some(FolderLock::acquire(out, "run folder")?),
        false => None,
    };
    if group.is_root() {
        std::fs::create_dir_all(out.join("checkpoints")).map_err(|e| Error::Io {
            path: out.clone(),
            source: e,
        })?;
    }
    let progress = Progress::new(args.quiet || !group.is_root(), args.config.stop.max_steps);
    let say = |msg: &str| progress.say(msg);

    // Rank 0 settles the vocabulary, the saved configuration and the data cache; the other
    // ranks then read what it wrote.
    if !group.is_root() {
        group.barrier();
    }
    let (config, vocab) = prepare_run(&args, &say)?;
    let data = Data::prepare(&config, &vocab, &out.join("cache"), &say)?;
    if group.is_root() {
        group.barrier();
    }
    let latest = agreed_checkpoint(out, group)?;
    let session = match &latest {
        Some((step, dir)) => Session::resume(*step, dir, &config, &args.device, group, &say)?,
        None => Session::fresh(&config, &args.device, group, args.init_from.as_ref())?,
    };
    if group.is_distributed() {
        if latest.is_none() {
            sync::broadcast_weights(&session.optimizer, group)?;
        }
        sync::check_consistency(&session.optimizer, group, session.state.step)?;
        say(&format!(
            "{} processes train together; each takes its share of every batch",
            group.size()
        ));
    }
    let mut trainer = Trainer {
        validator: data.validator(&config, &vocab, &args.device),
        session,
        vocab_json: std::fs::read(out.join(checkpoint::TOKENIZER_FILE)).map_err(|e| Error::Io {
            path: out.clone(),
            source: e,
        })?,
        metrics: match group.is_root() {
            true => MetricsLog::open(&out.join("metrics.jsonl"))?,
            false => MetricsLog::discard(),
        },
        last_valid: None,
        validated_at: None,
        saved_at: latest.as_ref().map(|(s, _)| *s),
        args: &args,
        progress: &progress,
        config,
    };
    let stop_reason = trainer.run(&data.train, data.mix.clone())?;
    trainer.finish(&stop_reason)?;
    let state = &trainer.session.state;
    Ok(Outcome {
        step: state.step,
        resumed_from: latest.map(|(s, _)| s),
        best_bleu: state.best_bleu,
        last_bleu: trainer.last_valid.map(|v| v.0),
        last_valid_loss: trainer.last_valid.map(|v| v.1),
        stop_reason,
    })
}

/// The run's data: the training set (with how an epoch samples its corpora), and the
/// validation sets with their text for BLEU.
struct Data {
    train: Dataset,
    mix: Option<Mix>,
    valid: Vec<ValidSet>,
}

impl Data {
    /// Encodes (or reads from the run's cache) every corpus, each source sentence tagged with
    /// its target language in a multilingual run.
    fn prepare(
        config: &TrainConfig,
        vocab: &Vocab,
        cache: &Path,
        say: &dyn Fn(&str),
    ) -> Result<Self> {
        let d = &config.data;
        let filter = FilterOptions {
            max_len: d.max_len,
            max_ratio: d.max_ratio,
        };
        let (train_tags, valid_tags) = corpora::source_tags(&d.train, &d.valid, vocab)?;
        let (train, mix) = corpora::training_set(
            &d.train,
            &train_tags,
            vocab,
            &filter,
            cache,
            d.temperature,
            say,
        )?;
        let valid = corpora::validation_sets(&d.valid, &valid_tags, vocab, &filter, cache)?;
        Ok(Self { train, mix, valid })
    }

    fn validator<'a>(
        &'a self,
        config: &TrainConfig,
        vocab: &'a Vocab,
        device: &'a Device,
    ) -> Validator<'a> {
        Validator {
            sets: &self.valid,
            vocab,
            max_tokens: config.data.max_tokens,
            max_len: config.data.max_len,
            limit: LengthLimit {
                a: config.generation.max_len_a,
                b: config.generation.max_len_b,
            },
            device,
        }
    }
}

/// What an update changes, and a checkpoint saves: the model and its parameters, the
/// optimiser's moments, the training state and the dropout stream.
struct Session {
    model: Gnmt,
    varmap: VarMap,
    optimizer: Optimizer,
    state: TrainState,
    dropout: Dropout,
    /// The moving average of the weights (`ema_decay`), kept by rank 0, which saves it.
    ema: Option<Ema>,
}

impl Session {
    /// A new run: parameters drawn from the configuration's seed, or those of the model it
    /// fine-tunes (with that model's optimiser, if it is kept).
    fn fresh(
        config: &TrainConfig,
        device: &Device,
        group: &Group,
        init: Option<&InitFrom>,
    ) -> Result<Self> {
        let (model, varmap) = match init {
            None => init_model(
                &config.model,
                config.seed,
                config.init_scale,
                DType::F32,
                device,
            )?,
            Some(init) => model_with(init.weights(device)?, config, device)?,
        };
        let mut optimizer = Optimizer::new(&varmap)?;
        optimizer.use_gpu_kernels(!config.step_kernels()?.is_reference());
        let dropout = dropout_from(
            config,
            ChaCha20Rng::seed_from_u64(config.seed ^ DROPOUT_SEED_SALT),
        );
        let dropout = rank_dropout(dropout, config, group, 0, &[])?;
        let mut state = TrainState::fresh(dropout.rng());
        if let Some(init) = init.filter(|i| i.keep_optimizer) {
            state.schedule_offset = init.restore_optimizer(&mut optimizer)?;
        }
        let ema = match config.ema_decay.filter(|_| group.is_root()) {
            Some(decay) => Some(Ema::start(decay, &optimizer)?),
            None => None,
        };
        Ok(Self {
            model: model.with_kernels(config.step_kernels()?),
            state,
            varmap,
            optimizer,
            dropout,
            ema,
        })
    }

    /// The run as checkpoint `dir` (of update `step`) left it.
    fn resume(
        step: u64,
        dir: &std::path::Path,
        config: &TrainConfig,
        device: &Device,
        group: &Group,
        say: &dyn Fn(&str),
    ) -> Result<Self> {
        let folder = checkpoint::load(dir, DType::F32, device)?;
        // With a weight average, the model folder holds the average and `raw/` the weights
        // being trained.
        let (trained, average) = match config.ema_decay {
            Some(_) => {
                let raw = dir.join(RAW_WEIGHTS_DIR);
                if !raw.is_dir() {
                    return Err(Error::Checkpoint(format!(
                        "{}: no {RAW_WEIGHTS_DIR}/ with the trained weights beside their average",
                        dir.display()
                    )));
                }
                let raw = checkpoint::load(&raw, DType::F32, device)?;
                if raw.step != step {
                    return Err(Error::Checkpoint(format!(
                        "{}: the weights and their average disagree on the step",
                        dir.display()
                    )));
                }
                (raw.tensors, Some(folder.tensors))
            }
            None => (folder.tensors, None),
        };
        let (model, varmap) = model_with(trained, config, device)?;
        let mut optimizer = Optimizer::new(&varmap)?;
        optimizer.use_gpu_kernels(!config.step_kernels()?.is_reference());
        optimizer.load(&dir.join("optimizer.safetensors"))?;
        let state = TrainState::load(&dir.join("state.json"))?;
        let ema = match (config.ema_decay, average) {
            (Some(decay), Some(average)) if group.is_root() => {
                Some(Ema::restore(decay, &optimizer, average)?)
            }
            _ => None,
        };
        if state.step != step || folder.step != step {
            return Err(Error::Checkpoint(format!(
                "{}: state and model disagree on the step",
                dir.display()
            )));
        }
        let dropout = dropout_from(config, state.dropout_rng.restore()?);
        let dropout = rank_dropout(dropout, config, group, step, &state.rank_dropout_rngs)?;
        say(&format!("resuming from {} (update {step})", dir.display()));
        Ok(Self {
            model: model.with_kernels(config.step_kernels()?),
            varmap,
            optimizer,
            state,
            dropout,
            ema,
        })
    }
}

impl Session {
    /// The weights a saved model gets: the moving average when there is one, else the
    /// trained weights.
    fn model_weights(&self) -> std::collections::HashMap<String, candle::Tensor> {
        match &self.ema {
            Some(ema) => ema.tensors(),
            None => tensors_of(&self.varmap),
        }
    }
}

/// A model of `config.model` with the weights `tensors`, on the run's kernels (for
/// validating the moving average).
fn model_of(
    tensors: std::collections::HashMap<String, candle::Tensor>,
    config: &TrainConfig,
    device: &Device,
) -> Result<Gnmt> {
    let model = Gnmt::new(
        &config.model,
        VarBuilder::from_tensors(tensors, DType::F32, device),
    )?;
    Ok(model.with_kernels(config.step_kernels()?))
}

/// A model of `config.model` training the parameters `tensors` (checked against it).
fn model_with(
    tensors: std::collections::HashMap<String, candle::Tensor>,
    config: &TrainConfig,
    device: &Device,
) -> Result<(Gnmt, VarMap)> {
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().expect("not poisoned");
        for (name, t) in tensors {
            data.insert(name, Var::from_tensor(&t)?);
        }
    }
    let model = Gnmt::new(
        &config.model,
        VarBuilder::from_varmap(&varmap, DType::F32, device),
    )?;
    Ok((model, varmap))
}

/// Rank 0's dropout masks come from the run's stream; another rank's from a stream of its
/// own. Checkpoints save every rank's (`saved`: ranks 1, 2, ...), so a job resumed with as
/// many ranks continues each exactly. A job of another size draws the other ranks' streams
/// afresh from the seed, the rank and the update it starts at.
fn rank_dropout(
    rank0: Dropout,
    config: &TrainConfig,
    group: &Group,
    step: u64,
    saved: &[RngState],
) -> Result<Dropout> {
    if group.is_root() {
        return Ok(rank0);
    }
    if saved.len() + 1 == group.size() {
        return Ok(dropout_from(config, saved[group.rank() - 1].restore()?));
    }
    let mix = (group.rank() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ step.rotate_left(32);
    Ok(dropout_from(
        config,
        ChaCha20Rng::seed_from_u64(config.seed ^ DROPOUT_SEED_SALT ^ mix),
    ))
}

/// The run's dropout (of LSTM inputs, and of whole words) drawing from `rng`.
fn dropout_from(config: &TrainConfig, rng: ChaCha20Rng) -> Dropout {
    Dropout::from_rng(config.dropout, rng)
        .with_word_dropout(config.word_dropout_src, config.word_dropout_tgt)
}

/// The checkpoint every rank resumes from: rank 0's newest, which the others must find in the
/// same (shared) folder.
fn agreed_checkpoint(out: &std::path::Path, group: &Group) -> Result<Option<(u64, PathBuf)>> {
    let mine = latest_checkpoint(out)?;
    if !group.is_distributed() {
        return Ok(mine);
    }
    let mut step = mine
        .as_ref()
        .map_or(u64::MAX, |(s, _)| *s)
        .to_le_bytes()
        .to_vec();
    group.broadcast(0, &mut step);
    let step = u64::from_le_bytes(step.try_into().expect("8 bytes"));
    if step == u64::MAX {
        return Ok(None);
    }
    match mine {
        Some((s, dir)) if s == step => Ok(Some((s, dir))),
        _ => Err(Error::Checkpoint(format!(
            "rank 0 resumes from update {step}, but rank {} does not see that checkpoint in {}: \
             the run folder must be on a file system every rank shares",
            group.rank(),
            out.join("checkpoints").display()
        ))),
    }
}

/// A training run in progress: the loop's steps (`update`, `validate`, `save`) over one
/// [`Session`].
struct Trainer<'a> {
    args: &'a TrainArgs,
    config: TrainConfig,
    session: Session,
    validator: Validator<'a>,
    vocab_json: Vec<u8>,
    metrics: MetricsLog,
    progress: &'a Progress,
    /// The last validation's (BLEU, loss), and the update it ran after.
    last_valid: Option<(f64, f64)>,
    validated_at: Option<u64>,
    /// The update of the newest checkpoint.
    saved_at: Option<u64>,
}

impl Trainer<'_> {
    fn say(&self, msg: &str) {
        self.progress.say(msg)
    }

    /// Updates until a stop condition holds; the reason.
    fn run(&mut self, train: &Dataset, mix: Option<Mix>) -> Result<String> {
        let batch_options = BatchOptions {
            max_tokens: self.config.data.max_tokens,
            max_sentences: self.config.data.max_sentences,
            seed: self.config.seed,
            shuffle: true,
            mix,
        };
        let mut batcher = Batcher::new(train, batch_options, self.session.state.cursor);
        let per_epoch = batcher.batches_per_epoch().max(1);
        let max_time = self.config.stop.max_time_secs()?;
        let session_start = Instant::now();
        let elapsed_before = self.session.state.elapsed_secs;
        let mut window = Window::new();
        loop {
            let state = &mut self.session.state;
            state.elapsed_secs = elapsed_before + session_start.elapsed().as_secs_f64();
            let epochs_done = state.cursor.epoch + (state.cursor.batch >= per_epoch) as u64;
            let interrupted = self.args.interrupt.as_ref();
            let reason = stop_reason(&self.config, state, epochs_done, max_time).or_else(|| {
                interrupted
                    .is_some_and(|f| f.load(Ordering::SeqCst))
                    .then(|| "interrupted".to_string())
            });
            if let Some(reason) = self.agree(reason) {
                return Ok(reason);
            }
            let Some(lr) = self.update(train, &mut batcher, &mut window)? else {
                continue;
            };
            let state = &self.session.state;
            let step = state.step;
            if step.is_multiple_of(self.config.log.consistency_every) {
                sync::check_consistency(&self.session.optimizer, self.args.group, step)?;
            }
            if self.args.group.is_root() {
                self.log_and_validate(&mut window, per_epoch, lr)?;
            }
            if step.is_multiple_of(self.config.log.save_every) {
                self.save()?;
            }
        }
    }

    /// Rank 0's work after an update: the log line and metrics, validation when due.
    fn log_and_validate(&mut self, window: &mut Window, per_epoch: usize, lr: f64) -> Result<()> {
        let state = &self.session.state;
        let step = state.step;
        if step.is_multiple_of(self.config.log.log_every) {
            let epoch = state.cursor.epoch as f64 + state.cursor.batch as f64 / per_epoch as f64;
            let mut record = window.record(step, epoch, lr, state.elapsed_secs);
            // The products' precision beside their speed (`--matmul auto` picks it per CPU).
            record["matmul"] = self.config.matmul.name().into();
            self.say(&window.line(step, epoch, lr));
            self.metrics.write(&record)?;
            *window = Window::new();
        }
        if step.is_multiple_of(self.config.log.valid_every) {
            self.validate()?;
        }
        Ok(())
    }

    /// The stop reason rank 0 found (`mine` there), on every rank: ranks may disagree on the
    /// time or an interrupt, and must stop at the same update.
    fn agree(&self, mine: Option<String>) -> Option<String> {
        let group = self.args.group;
        if !group.is_distributed() {
            return mine;
        }
        let mut message = mine.map_or(GO_ON.to_vec(), String::into_bytes);
        group.broadcast(0, &mut message);
        (message != GO_ON).then(|| String::from_utf8_lossy(&message).into_owned())
    }

    /// One update on the next `data.accumulate` batches (this rank's share of each); its
    /// learning rate, or `None` when the update had a non-finite loss or gradient and was
    /// skipped.
    fn update(
        &mut self,
        train: &Dataset,
        batcher: &mut Batcher,
        window: &mut Window,
    ) -> Result<Option<f64>> {
        let group = self.args.group;
        let batches = (0..self.config.data.accumulate)
            .map(|_| batcher.next())
            .collect::<Option<Vec<Batch>>>()
            .ok_or_else(|| Error::Config("the training set is empty".into()))?;
        let s = &mut self.session;
        s.state.batches += batches.len() as u64;
        let mut sum = GradientSum::new(batches.iter().map(Batch::tgt_tokens).sum());
        for batch in &batches {
            let mine = match group.is_distributed() {
                true => Cow::Owned(batch.share(train, group.rank(), group.size())),
                false => Cow::Borrowed(batch),
            };
            let mine = mine.as_ref();
            if mine.is_empty() {
                continue;
            }
            let out_of_memory = |e: Error| out_of_memory_hint(e, mine, self.config.data.max_tokens);
            let tensors = batch_tensors(mine, &self.args.device).map_err(out_of_memory)?;
            step::forward(
                &s.model,
                &tensors,
                self.config.label_smoothing,
                Some(&mut s.dropout),
            )
            .and_then(|loss| sum.add(loss))
            .map_err(out_of_memory)?;
        }
        let whole_update =
            |e: Error| out_of_memory_hint(e, &batches[0], self.config.data.max_tokens);
        let g = sum.finish(&s.optimizer, group).map_err(whole_update)?;
        s.state.cursor = batcher.cursor();
        if !g.is_finite() {
            self.skip_nonfinite()?;
            return Ok(None);
        }
        let s = &mut self.session;
        s.state.nonfinite_in_a_row = 0;
        let (lr, rule) = lr_at(s.state.step + s.state.schedule_offset, &self.config.optim);
        step::update(&mut s.optimizer, &g, lr, rule, &self.config.optim).map_err(whole_update)?;
        s.state.step += 1;
        if let Some(ema) = &mut s.ema {
            ema.update(&s.optimizer, s.state.step)?;
        }
        s.state.target_tokens += g.tokens as u64;
        window.add(&g);
        self.progress
            .update(s.state.step, g.mean_loss, g.tokens, lr);
        Ok(Some(lr))
    }

    /// Counts a skipped batch; too many in a row stop the run.
    fn skip_nonfinite(&mut self) -> Result<()> {
        let state = &mut self.session.state;
        state.nonfinite_skipped += 1;
        state.nonfinite_in_a_row += 1;
        let (step, skipped, in_a_row) = (
            state.step,
            state.nonfinite_skipped,
            state.nonfinite_in_a_row,
        );
        self.say(&format!(
            "warning: non-finite loss or gradient at update {}; batch skipped",
            step + 1
        ));
        self.metrics
            .write(&serde_json::json!({"step": step, "nonfinite_skipped": skipped}))?;
        if in_a_row >= MAX_NONFINITE_IN_A_ROW {
            return Err(Error::Diverged(format!(
                "{in_a_row} batches in a row had a non-finite loss or gradient (update {step}); lower the learning rate \
                 or resume from the last checkpoint in {}",
                self.args.out_dir.join("checkpoints").display()
            )));
        }
        Ok(())
    }

    /// Validation loss and greedy BLEU/chrF; the best model so far is kept in `best/`.
    fn validate(&mut self) -> Result<()> {
        let t = Instant::now();
        let averaged = match &self.session.ema {
            Some(ema) => Some(model_of(ema.tensors(), &self.config, &self.args.device)?),
            None => None,
        };
        let v = self
            .validator
            .run(averaged.as_ref().unwrap_or(&self.session.model))?;
        let out = &self.args.out_dir;
        let weights = self.session.model_weights();
        let state = &mut self.session.state;
        let dir = out.join("valid");
        std::fs::create_dir_all(&dir).map_err(|e| Error::Io {
            path: dir.clone(),
            source: e,
        })?;
        let mut text = v.translations.join("\n");
        text.push('\n');
        crate::state::write_atomic(
            &dir.join(format!("step-{}.txt", state.step)),
            text.as_bytes(),
        )?;
        let improved = state.best_bleu.is_none_or(|b| v.bleu > b);
        if improved {
            state.best_bleu = Some(v.bleu);
            state.best_step = Some(state.step);
            state.stalled = 0;
            checkpoint::save(
                &out.join("best"),
                &self.config.model,
                &weights,
                &self.vocab_json,
                &self.config.generation,
                state.step,
                DType::F32,
            )?;
        } else {
            state.stalled += 1;
        }
        let step = state.step;
        let by_pair: Vec<String> = v
            .bleu_by_pair
            .iter()
            .map(|(pair, bleu)| format!("{pair} {bleu:.2}"))
            .collect();
        self.say(&format!(
            "validation at update {step}: loss {:.4}, ppl {:.2}, BLEU {:.2}{}, chrF {:.2}{} ({:.1}s)",
            v.loss,
            v.loss.exp(),
            v.bleu,
            match by_pair.is_empty() {
                true => String::new(),
                false => format!(" (mean of {})", by_pair.join(", ")),
            },
            v.chrf,
            if improved { " (best)" } else { "" },
            t.elapsed().as_secs_f64()
        ));
        let mut record = serde_json::json!({
            "step": step, "valid_loss": v.loss, "valid_ppl": v.loss.exp(), "bleu": v.bleu, "chrf": v.chrf,
            "bleu_signature": v.bleu_signature, "best": improved, "greedy": true,
        });
        if !v.bleu_by_pair.is_empty() {
            record["bleu_by_pair"] = v
                .bleu_by_pair
                .iter()
                .map(|(pair, bleu)| (pair.clone(), serde_json::Value::from(*bleu)))
                .collect::<serde_json::Map<_, _>>()
                .into();
        }
        self.metrics.write(&record)?;
        self.last_valid = Some((v.bleu, v.loss));
        self.validated_at = Some(step);
        Ok(())
    }

    /// A checkpoint of the session at the current update.
    /// Every rank takes part (its dropout stream goes into the checkpoint); rank 0 writes.
    fn save(&mut self) -> Result<()> {
        let group = self.args.group;
        let s = &mut self.session;
        let mine = serde_json::to_vec(&RngState::capture(s.dropout.rng())).expect("plain");
        let mut streams = group
            .all_gather_bytes(&mine)
            .iter()
            .map(|b| serde_json::from_slice::<RngState>(b))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Checkpoint(format!("a rank's dropout stream: {e}")))?;
        self.saved_at = Some(s.state.step);
        if !group.is_root() {
            return Ok(());
        }
        s.state.rank_dropout_rngs = streams.split_off(1);
        s.state.dropout_rng = streams.remove(0);
        save_checkpoint(
            &self.args.out_dir,
            &self.config,
            &s.model_weights(),
            s.ema.is_some().then(|| tensors_of(&s.varmap)).as_ref(),
            &self.vocab_json,
            &s.optimizer,
            &s.state,
        )?;
        Ok(())
    }

    /// At a stop: validates and saves the last update unless that was just done.
    fn finish(&mut self, stop_reason: &str) -> Result<()> {
        self.progress.finish();
        self.say(&format!("stopping: {stop_reason}"));
        let step = self.session.state.step;
        if self.args.group.is_root() && self.validated_at != Some(step) && step > 0 {
            self.validate()?;
        }
        if self.saved_at != Some(step) {
            self.save()?;
        }
        Ok(())
    }
}

/// Settles the configuration and vocabulary of the run: a new run saves them, a resumed one
/// must match what it saved (limits and logging may change).
fn prepare_run(args: &TrainArgs, say: &dyn Fn(&str)) -> Result<(TrainConfig, Vocab)> {
    let out = &args.out_dir;
    let config_path = out.join("train_config.json");
    let tokenizer_path = out.join(checkpoint::TOKENIZER_FILE);
    let mut config = args.config.clone();
    if config_path.exists() {
        init_from::check_resume(out, args.init_from.as_ref())?;
        let saved = TrainConfig::from_file(&config_path)?;
        let vocab = Vocab::load(&tokenizer_path)?;
        if let Some(t) = &args.tokenizer {
            if Vocab::load(t)?.hash() != vocab.hash() {
                return Err(Error::Config(format!(
                    "cannot resume {}: --tokenizer {} is not the vocabulary this run was started with",
                    out.display(),
                    t.display()
                )));
            }
        }
        // The vocabulary fixed vocab_size when the run started.
        config.model.vocab_size = saved.model.vocab_size;
        let conflicts = config.resume_conflicts(&saved);
        if !conflicts.is_empty() {
            return Err(Error::Config(format!(
                "cannot resume {}: the architecture or training setup differs from the saved run in {}. \
                 Use another output folder, or the original settings (only stop.* and log.* may change).",
                out.display(),
                conflicts.join(", ")
            )));
        }
        return Ok((config, vocab));
    }
    let given_vocabulary = args.init_from.is_some() || args.tokenizer.is_some();
    if given_vocabulary && config.data.split_punctuation {
        return Err(Error::Config(
            "data.split_punctuation applies when the run trains its vocabulary: \
             a --tokenizer or --init-from model brings its own"
                .into(),
        ));
    }
    let vocab = match (&args.init_from, &args.tokenizer) {
        (Some(init), tokenizer) => {
            say(&format!("fine-tuning {}", init.dir.display()));
            init.vocab(&config.model, tokenizer.as_deref())?
        }
        (None, Some(t)) => Vocab::load(t)?,
        (None, None) => {
            let languages = corpora::languages_to_reserve(&config.data.train);
            say(&format!(
                "training a {}-piece vocabulary on the training files{}",
                config.model.vocab_size,
                match languages.is_empty() {
                    true => String::new(),
                    false => format!(", with the language tags of {}", languages.join(", ")),
                }
            ));
            // A source file several pairs share (en-de, en-fr) counts once.
            let mut files: Vec<PathBuf> = Vec::new();
            for file in config.data.train.iter().flat_map(|c| [&c.src, &c.tgt]) {
                if !files.contains(file) {
                    files.push(file.clone());
                }
            }
            Vocab::train_from_files(
                &files,
                &VocabOptions {
                    size: config.model.vocab_size,
                    languages,
                    split_punctuation: config.data.split_punctuation,
                    ..Default::default()
                },
            )?
        }
    };
    if vocab.size() != config.model.vocab_size {
        say(&format!(
            "vocab_size set to {} to match the vocabulary",
            vocab.size()
        ));
        config.model.vocab_size = vocab.size();
    }
    vocab.save(&tokenizer_path)?;
    init_from::save_record(out, args.init_from.as_ref())?;
    crate::state::write_atomic(
        &config_path,
        serde_json::to_string_pretty(&config)
            .expect("plain")
            .as_bytes(),
    )?;
    Ok((config, vocab))
}

fn stop_reason(
    config: &TrainConfig,
    state: &TrainState,
    epochs_done: u64,
    max_time: Option<f64>,
) -> Option<String> {
    let s = &config.stop;
    if let Some(m) = s.max_steps.filter(|&m| state.step >= m) {
        return Some(format!("reached max_steps {m}"));
    }
    if let Some(m) = s.max_epochs.filter(|&m| epochs_done >= m) {
        return Some(format!("reached max_epochs {m}"));
    }
    if let Some(t) = max_time.filter(|&t| state.elapsed_secs >= t) {
        return Some(format!("reached max_time ({t:.0}s)"));
    }
    if let Some(p) = s.patience.filter(|&p| state.stalled >= p) {
        return Some(format!(
            "no BLEU improvement in {p} validations (early stopping)"
        ));
    }
    None
}

/// `e`, or when it is a device running out of memory, what to lower: the batch that did not
/// fit and the `max_tokens` that made it.
fn out_of_memory_hint(e: Error, batch: &Batch, max_tokens: usize) -> Error {
    match e {
        Error::Candle(c) if gnmt_model::memory::is_out_of_memory(&c) => {
            Error::OutOfMemory(format!(
                "the device ran out of memory on a batch of {} sentence pairs ({} source and \
                 {} target columns; max_tokens {max_tokens}): lower --max-tokens (data.max_tokens \
                 in the config) or choose a smaller model ({c})",
                batch.len(),
                batch.src_width,
                batch.tgt_width
            ))
        }
        other => other,
    }
}
