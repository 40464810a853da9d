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

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle::{DType, Device, Var};
use candle_nn::{VarBuilder, VarMap};
use gnmt_infer::LengthLimit;
use gnmt_model::checkpoint::{self, tensors_of};
use gnmt_model::{init_model, Dropout, Gnmt};
use gnmt_tokenizer::{
    read_parallel, BatchOptions, Batcher, Dataset, FilterOptions, FolderLock, Vocab, VocabOptions,
};

use crate::config::TrainConfig;
use crate::grads::GradStats;
use crate::optim::Optimizer;
use crate::progress::Progress;
use crate::schedule::lr_at;
use crate::state::{RngState, TrainState};
use crate::step;
use crate::validate::{batch_tensors, Validator};
use crate::{Error, Result};

/// Consecutive non-finite batches after which training stops.
const MAX_NONFINITE_IN_A_ROW: u32 = 5;
/// Keeps the dropout stream apart from the parameter-initialisation stream of the same seed.
const DROPOUT_SEED_SALT: u64 = 0x5eed_d409;

pub struct TrainArgs {
    pub train_src: PathBuf,
    pub train_tgt: PathBuf,
    pub valid_src: PathBuf,
    pub valid_tgt: PathBuf,
    pub out_dir: PathBuf,
    pub config: TrainConfig,
    /// Use this vocabulary instead of training one on the training files.
    pub tokenizer: Option<PathBuf>,
    pub device: Device,
    /// No progress lines on stderr.
    pub quiet: bool,
    /// Set (e.g. by a Ctrl-C handler) to stop after the current update; the run then
    /// validates and saves as at any other stop.
    pub interrupt: Option<Arc<AtomicBool>>,
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
    // Before anything is read or written: a second trainer on the same folder would
    // interleave its checkpoints and metrics with ours.
    let _lock = FolderLock::acquire(out, "run folder")?;
    std::fs::create_dir_all(out.join("checkpoints")).map_err(|e| Error::Io {
        path: out.clone(),
        source: e,
    })?;
    let progress = Progress::new(args.quiet, args.config.stop.max_steps);
    let say = |msg: &str| progress.say(msg);

    let (config, vocab) = prepare_run(&args, &say)?;
    let vocab_json =
        std::fs::read(out.join(checkpoint::TOKENIZER_FILE)).map_err(|e| Error::Io {
            path: out.clone(),
            source: e,
        })?;
    let filter = FilterOptions {
        max_len: config.data.max_len,
        max_ratio: config.data.max_ratio,
    };
    let cache = out.join("cache");
    let (train_ds, _) = Dataset::prepare(
        &args.train_src,
        &args.train_tgt,
        &vocab,
        &filter,
        Some(&cache),
    )?;
    say(&format!("train: {}", train_ds.summary));
    let (valid_ds, _) = Dataset::prepare(
        &args.valid_src,
        &args.valid_tgt,
        &vocab,
        &filter,
        Some(&cache),
    )?;
    let valid_corpus = read_parallel(&args.valid_src, &args.valid_tgt)?;
    let validator = Validator {
        dataset: &valid_ds,
        corpus: &valid_corpus,
        vocab: &vocab,
        max_tokens: config.data.max_tokens,
        max_len: config.data.max_len,
        limit: LengthLimit {
            a: config.generation.max_len_a,
            b: config.generation.max_len_b,
        },
        device: &args.device,
    };

    // Model, optimiser and state: from the newest checkpoint, or fresh.
    let latest = latest_checkpoint(out)?;
    let (model, varmap, mut optimizer, mut state, mut dropout) = match &latest {
        Some((step, dir)) => {
            let folder = checkpoint::load(dir, DType::F32, &args.device)?;
            let varmap = VarMap::new();
            {
                let mut data = varmap.data().lock().expect("not poisoned");
                for (name, t) in folder.tensors {
                    data.insert(name, Var::from_tensor(&t)?);
                }
            }
            let model = Gnmt::new(
                &config.model,
                VarBuilder::from_varmap(&varmap, DType::F32, &args.device),
            )?;
            let mut optimizer = Optimizer::new(&varmap)?;
            optimizer.load(&dir.join("optimizer.safetensors"))?;
            let state = TrainState::load(&dir.join("state.json"))?;
            if state.step != *step || folder.step != *step {
                return Err(Error::Checkpoint(format!(
                    "{}: state and model disagree on the step",
                    dir.display()
                )));
            }
            let dropout = Dropout::from_rng(config.dropout, state.dropout_rng.restore()?);
            say(&format!("resuming from {} (update {step})", dir.display()));
            (model, varmap, optimizer, state, dropout)
        }
        None => {
            let (model, varmap) = init_model(
                &config.model,
                config.seed,
                config.init_scale,
                DType::F32,
                &args.device,
            )?;
            let optimizer = Optimizer::new(&varmap)?;
            let dropout = Dropout::new(config.dropout, config.seed ^ DROPOUT_SEED_SALT);
            let state = TrainState::fresh(dropout.rng());
            (model, varmap, optimizer, state, dropout)
        }
    };
    let model = model.with_kernels(args.config.step_kernels()?);

    let batch_options = BatchOptions {
        max_tokens: config.data.max_tokens,
        max_sentences: config.data.max_sentences,
        seed: config.seed,
        shuffle: true,
    };
    let mut batcher = Batcher::new(&train_ds, batch_options, state.cursor);
    let per_epoch = batcher.batches_per_epoch().max(1);
    let max_time = config.stop.max_time_secs()?;
    let mut metrics = MetricsLog::open(&out.join("metrics.jsonl"))?;
    let session_start = Instant::now();
    let elapsed_before = state.elapsed_secs;
    let mut window = Window::new();
    let (mut last_valid, mut last_saved) = (None, latest.as_ref().map(|(s, _)| *s));
    let mut validated_at = None;

    let stop_reason = loop {
        state.elapsed_secs = elapsed_before + session_start.elapsed().as_secs_f64();
        let epochs_done = state.cursor.epoch + (state.cursor.batch >= per_epoch) as u64;
        if let Some(reason) = stop_reason(&config, &state, epochs_done, max_time) {
            break reason;
        }
        if args
            .interrupt
            .as_ref()
            .is_some_and(|f| f.load(Ordering::SeqCst))
        {
            break "interrupted".to_string();
        }
        let batch = batcher
            .next()
            .ok_or_else(|| Error::Config("the training set is empty".into()))?;
        state.batches += 1;
        let tensors = batch_tensors(&batch, &args.device)?;
        let loss = step::forward(&model, &tensors, config.label_smoothing, Some(&mut dropout))?;
        let g = step::backward(loss, &optimizer)?;
        state.cursor = batcher.cursor();
        if !g.is_finite() {
            state.nonfinite_skipped += 1;
            state.nonfinite_in_a_row += 1;
            say(&format!(
                "warning: non-finite loss or gradient at update {}; batch skipped",
                state.step + 1
            ));
            metrics.write(&serde_json::json!({"step": state.step, "nonfinite_skipped": state.nonfinite_skipped}))?;
            if state.nonfinite_in_a_row >= MAX_NONFINITE_IN_A_ROW {
                return Err(Error::Diverged(format!(
                    "{} batches in a row had a non-finite loss or gradient (update {}); lower the learning rate \
                     or resume from the last checkpoint in {}",
                    state.nonfinite_in_a_row,
                    state.step,
                    out.join("checkpoints").display()
                )));
            }
            continue;
        }
        state.nonfinite_in_a_row = 0;
        let (lr, rule) = lr_at(state.step, &config.optim);
        step::update(&mut optimizer, &g, lr, rule, &config.optim)?;
        state.step += 1;
        state.target_tokens += g.loss.tokens as u64;
        window.add(&g.loss, g.mean_loss, &g.stats);
        progress.update(state.step, g.mean_loss, g.loss.tokens, lr);

        if state.step % config.log.log_every == 0 {
            let epoch = state.cursor.epoch as f64 + state.cursor.batch as f64 / per_epoch as f64;
            let record = window.record(state.step, epoch, lr, state.elapsed_secs);
            say(&window.line(state.step, epoch, lr));
            metrics.write(&record)?;
            window = Window::new();
        }
        if state.step % config.log.valid_every == 0 {
            last_valid = Some(run_validation(
                &validator,
                &model,
                &config,
                &mut state,
                &varmap,
                &vocab_json,
                out,
                &mut metrics,
                &say,
            )?);
            validated_at = Some(state.step);
        }
        if state.step % config.log.save_every == 0 {
            state.dropout_rng = RngState::capture(dropout.rng());
            save_checkpoint(out, &config, &varmap, &vocab_json, &optimizer, &state)?;
            last_saved = Some(state.step);
        }
    };

    progress.finish();
    say(&format!("stopping: {stop_reason}"));
    if validated_at != Some(state.step) && state.step > 0 {
        last_valid = Some(run_validation(
            &validator,
            &model,
            &config,
            &mut state,
            &varmap,
            &vocab_json,
            out,
            &mut metrics,
            &say,
        )?);
    }
    if last_saved != Some(state.step) {
        state.dropout_rng = RngState::capture(dropout.rng());
        save_checkpoint(out, &config, &varmap, &vocab_json, &optimizer, &state)?;
    }
    Ok(Outcome {
        step: state.step,
        resumed_from: latest.map(|(s, _)| s),
        best_bleu: state.best_bleu,
        last_bleu: last_valid.map(|v| v.0),
        last_valid_loss: last_valid.map(|v| v.1),
        stop_reason,
    })
}

/// Settles the configuration and vocabulary of the run: a new run saves them, a resumed one
/// must match what it saved (limits and logging may change).
fn prepare_run(args: &TrainArgs, say: &dyn Fn(&str)) -> Result<(TrainConfig, Vocab)> {
    let out = &args.out_dir;
    let config_path = out.join("train_config.json");
    let tokenizer_path = out.join(checkpoint::TOKENIZER_FILE);
    let mut config = args.config.clone();
    if config_path.exists() {
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
    let vocab = match &args.tokenizer {
        Some(t) => Vocab::load(t)?,
        None => {
            say(&format!(
                "training a {}-piece vocabulary on the training files",
                config.model.vocab_size
            ));
            Vocab::train_from_files(
                &[args.train_src.clone(), args.train_tgt.clone()],
                &VocabOptions {
                    size: config.model.vocab_size,
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

#[allow(clippy::too_many_arguments)]
fn run_validation(
    validator: &Validator,
    model: &Gnmt,
    config: &TrainConfig,
    state: &mut TrainState,
    varmap: &VarMap,
    vocab_json: &[u8],
    out: &Path,
    metrics: &mut MetricsLog,
    say: &dyn Fn(&str),
) -> Result<(f64, f64)> {
    let t = Instant::now();
    let v = validator.run(model)?;
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
            &config.model,
            &tensors_of(varmap),
            vocab_json,
            &config.generation,
            state.step,
            DType::F32,
        )?;
    } else {
        state.stalled += 1;
    }
    say(&format!(
        "validation at update {}: loss {:.4}, ppl {:.2}, BLEU {:.2}, chrF {:.2}{} ({:.1}s)",
        state.step,
        v.loss,
        v.loss.exp(),
        v.bleu,
        v.chrf,
        if improved { " (best)" } else { "" },
        t.elapsed().as_secs_f64()
    ));
    metrics.write(&serde_json::json!({
        "step": state.step, "valid_loss": v.loss, "valid_ppl": v.loss.exp(), "bleu": v.bleu, "chrf": v.chrf,
        "bleu_signature": v.bleu_signature, "best": improved, "greedy": true,
    }))?;
    Ok((v.bleu, v.loss))
}

/// Writes `checkpoints/step-N` (via a temporary folder and a rename), updates the top-level
/// model, and prunes old checkpoints.
fn save_checkpoint(
    out: &Path,
    config: &TrainConfig,
    varmap: &VarMap,
    vocab_json: &[u8],
    optimizer: &Optimizer,
    state: &TrainState,
) -> Result<()> {
    let checkpoints = out.join("checkpoints");
    let tmp = checkpoints.join(format!(".step-{}.tmp", state.step));
    let dest = checkpoints.join(format!("step-{}", state.step));
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e| Error::Io { path: p, source: e }
    };
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    let tensors = tensors_of(varmap);
    checkpoint::save(
        &tmp,
        &config.model,
        &tensors,
        vocab_json,
        &config.generation,
        state.step,
        DType::F32,
    )?;
    optimizer.save(&tmp.join("optimizer.safetensors"))?;
    state.save(&tmp.join("state.json"))?;
    if dest.exists() {
        std::fs::remove_dir_all(&dest).map_err(io(&dest))?;
    }
    std::fs::rename(&tmp, &dest).map_err(io(&dest))?;
    if let Ok(d) = std::fs::File::open(&checkpoints) {
        let _ = d.sync_all();
    }
    checkpoint::save(
        out,
        &config.model,
        &tensors,
        vocab_json,
        &config.generation,
        state.step,
        DType::F32,
    )?;
    let mut steps = checkpoint_steps(out)?;
    steps.sort_unstable();
    let excess = steps.len().saturating_sub(config.log.keep_last);
    for step in &steps[..excess] {
        let p = checkpoints.join(format!("step-{step}"));
        std::fs::remove_dir_all(&p).map_err(io(&p))?;
    }
    Ok(())
}

fn checkpoint_steps(out: &Path) -> Result<Vec<u64>> {
    let dir = out.join("checkpoints");
    let entries = std::fs::read_dir(&dir).map_err(|e| Error::Io {
        path: dir.clone(),
        source: e,
    })?;
    Ok(entries
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .into_string()
                .ok()?
                .strip_prefix("step-")?
                .parse()
                .ok()
        })
        .collect())
}

/// The newest complete checkpoint, if any.
pub fn latest_checkpoint(out: &Path) -> Result<Option<(u64, PathBuf)>> {
    if !out.join("checkpoints").is_dir() {
        return Ok(None);
    }
    Ok(checkpoint_steps(out)?
        .into_iter()
        .max()
        .map(|s| (s, out.join("checkpoints").join(format!("step-{s}")))))
}

/// Statistics accumulated between two log lines.
struct Window {
    start: Instant,
    loss_sum: f64,
    nll_sum: f64,
    tokens: usize,
    updates: usize,
    grad_norm_sum: f64,
    group_sums: HashMap<String, f64>,
    encoder: Vec<f64>,
    decoder: Vec<f64>,
}

impl Window {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            loss_sum: 0.0,
            nll_sum: 0.0,
            tokens: 0,
            updates: 0,
            grad_norm_sum: 0.0,
            group_sums: HashMap::new(),
            encoder: Vec::new(),
            decoder: Vec::new(),
        }
    }

    fn add(&mut self, loss: &crate::BatchLoss, mean_loss: f64, stats: &GradStats) {
        self.loss_sum += mean_loss * loss.tokens as f64;
        self.nll_sum += loss.nll_sum;
        self.tokens += loss.tokens;
        self.updates += 1;
        self.grad_norm_sum += stats.total_norm;
        for (k, v) in &stats.groups {
            *self.group_sums.entry(k.clone()).or_insert(0.0) += v;
        }
        let add = |acc: &mut Vec<f64>, xs: Vec<f64>| {
            acc.resize(xs.len().max(acc.len()), 0.0);
            acc.iter_mut().zip(xs).for_each(|(a, x)| *a += x);
        };
        add(&mut self.encoder, stats.stack("encoder"));
        add(&mut self.decoder, stats.stack("decoder"));
    }

    fn tokens_per_s(&self) -> f64 {
        self.tokens as f64 / self.start.elapsed().as_secs_f64().max(1e-9)
    }

    fn line(&self, step: u64, epoch: f64, lr: f64) -> String {
        let n = self.updates.max(1) as f64;
        format!(
            "update {step} | epoch {epoch:.2} | loss {:.4} | ppl {:.2} | {:.0} tok/s | lr {lr:.2e} | grad norm {:.3}",
            self.loss_sum / self.tokens.max(1) as f64,
            (self.nll_sum / self.tokens.max(1) as f64).exp(),
            self.tokens_per_s(),
            self.grad_norm_sum / n
        )
    }

    fn record(&self, step: u64, epoch: f64, lr: f64, elapsed: f64) -> serde_json::Value {
        let n = self.updates.max(1) as f64;
        let mean = |v: &[f64]| v.iter().map(|x| x / n).collect::<Vec<_>>();
        let others: serde_json::Map<String, serde_json::Value> = self
            .group_sums
            .iter()
            .filter(|(k, _)| !k.contains(".layer"))
            .map(|(k, v)| (k.clone(), (v / n).into()))
            .collect();
        serde_json::json!({
            "step": step, "epoch": epoch,
            "loss": self.loss_sum / self.tokens.max(1) as f64,
            "ppl": (self.nll_sum / self.tokens.max(1) as f64).exp(),
            "tokens_per_s": self.tokens_per_s(), "lr": lr,
            "grad_norm": self.grad_norm_sum / n,
            "grad_norm_encoder": mean(&self.encoder), "grad_norm_decoder": mean(&self.decoder),
            "grad_norm_other": others, "elapsed_s": elapsed,
        })
    }
}

/// `metrics.jsonl`, appended to and flushed line by line.
struct MetricsLog {
    file: std::fs::File,
    path: PathBuf,
}

impl MetricsLog {
    fn open(path: &Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::Io {
                path: path.to_path_buf(),
                source: e,
            })?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    fn write(&mut self, v: &serde_json::Value) -> Result<()> {
        writeln!(self.file, "{v}")
            .and_then(|_| self.file.flush())
            .map_err(|e| Error::Io {
                path: self.path.clone(),
                source: e,
            })
    }
}
