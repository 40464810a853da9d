//! `gnmt study residuals`: trains the same deep model with and without residual connections
//! (same seed, same initial weights, same batches in the same order) and reports what the
//! identity paths change: loss, validation BLEU, and the gradient norm reaching each layer.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::checked::{self, whole};
use anyhow::Context;
use candle::Device;
use clap::{Args, Subcommand};
use gnmt_model::ModelConfig;
use gnmt_train::{train, CorpusSpec, TrainArgs as LibArgs, TrainConfig};

use crate::plot::{line_chart, residual_schematic, Series};
use crate::run_log::RunLog;

#[derive(Debug, Subcommand)]
pub enum StudyCommand {
    /// Train a deep model with and without residual connections and report the difference.
    Residuals(ResidualStudyArgs),
}

impl StudyCommand {
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            StudyCommand::Residuals(a) => a.run(),
        }
    }
}

#[derive(Debug, Args)]
pub struct ResidualStudyArgs {
    #[command(flatten)]
    pub corpus: crate::cmd::train::CorpusArgs,
    /// Output folder: one training run per arm, the figures and report.md.
    #[arg(short, long)]
    pub output: PathBuf,
    /// LSTM layers in the encoder and in the decoder.
    #[arg(long, default_value_t = 8, value_parser = whole::<usize>(1, 64))]
    pub layers: usize,
    /// Hidden, embedding and attention size.
    #[arg(long, default_value_t = 256, value_parser = whole::<usize>(1, 16_384))]
    pub hidden: usize,
    /// Training updates per arm (with the defaults, two arms take about 20 minutes on 2 cores).
    #[arg(long, default_value_t = 300, value_parser = whole::<u64>(1, 100_000_000))]
    pub steps: u64,
    /// The arms: `none` (no residual connections) or N (residual connections from layer N up),
    /// comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "none,3")]
    pub arms: Vec<String>,
    /// Validation sentences used (the first N lines of the validation files).
    #[arg(long, default_value_t = 500, value_parser = whole::<usize>(1, 100_000_000))]
    pub valid_lines: usize,
    /// Seed of every arm's initialisation, dropout and data order.
    #[arg(long, default_value_t = 1, value_parser = checked::seed())]
    pub seed: u64,
    /// A few-minute version for tests: 4 layers of 32 units, 1,000 training pairs, 30 updates.
    #[arg(long)]
    pub quick: bool,
    /// No progress lines from the training runs.
    #[arg(short, long)]
    pub quiet: bool,
}

/// One arm of the study.
#[derive(Debug, Clone)]
struct Arm {
    /// `None`: no residual connections.
    residual_from: Option<usize>,
}

impl Arm {
    fn parse(s: &str, layers: usize) -> anyhow::Result<Self> {
        if s == "none" {
            return Ok(Self {
                residual_from: None,
            });
        }
        let from: usize = s
            .parse()
            .map_err(|_| anyhow::anyhow!("arm {s:?}: expected `none` or a layer number"))?;
        anyhow::ensure!(
            (2..=layers).contains(&from),
            "arm {s:?}: residual connections start at a layer from 2 to {layers}"
        );
        Ok(Self {
            residual_from: Some(from),
        })
    }

    fn dir_name(&self) -> String {
        match self.residual_from {
            None => "plain".into(),
            Some(l) => format!("residual-from-{l}"),
        }
    }

    fn label(&self) -> String {
        match self.residual_from {
            None => "no residual".into(),
            Some(l) => format!("residual from layer {l}"),
        }
    }
}

/// The study's sizes after `--quick` is applied.
struct Plan {
    layers: usize,
    hidden: usize,
    steps: u64,
    vocab: usize,
    train_lines: Option<usize>,
    valid_lines: usize,
    max_tokens: usize,
}

impl ResidualStudyArgs {
    fn plan(&self) -> Plan {
        if self.quick {
            Plan {
                layers: 4,
                hidden: 32,
                steps: 30,
                vocab: 1000,
                train_lines: Some(1000),
                valid_lines: 40,
                max_tokens: 1000,
            }
        } else {
            Plan {
                layers: self.layers,
                hidden: self.hidden,
                steps: self.steps,
                vocab: 8000,
                train_lines: None,
                valid_lines: self.valid_lines,
                max_tokens: 2500,
            }
        }
    }

    fn config(&self, plan: &Plan, arm: &Arm) -> anyhow::Result<TrainConfig> {
        let mut c = TrainConfig {
            model: ModelConfig {
                vocab_size: plan.vocab,
                embedding_dim: plan.hidden,
                hidden_size: plan.hidden,
                attention_size: plan.hidden,
                encoder_layers: plan.layers,
                decoder_layers: plan.layers,
                residual: arm.residual_from.is_some(),
                residual_from_layer: arm.residual_from.unwrap_or(3),
                ..ModelConfig::small()
            },
            seed: self.seed,
            ..TrainConfig::default()
        };
        c.stop.max_steps = Some(plan.steps);
        c.log.log_every = (plan.steps / 40).max(1);
        c.log.valid_every = (plan.steps / 4).max(1);
        c.log.save_every = (plan.steps / 4).max(1);
        c.log.keep_last = 1;
        c.data.max_tokens = plan.max_tokens;
        c.optim.warmup_steps = (plan.steps / 10).max(1);
        c.validate()?;
        Ok(c)
    }

    pub fn run(self) -> anyhow::Result<()> {
        let plan = self.plan();
        let arms = self
            .arms
            .iter()
            .map(|a| Arm::parse(a, plan.layers))
            .collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::ensure!(!arms.is_empty(), "no arms to train");
        let _lock = gnmt_tokenizer::FolderLock::acquire(&self.output, "study folder")?;
        let data = self.output.join("data");
        let (train_src, train_tgt) = (
            head(
                &self.corpus.train[0],
                plan.train_lines,
                &data.join("train.src"),
            )?,
            head(
                &self.corpus.train[1],
                plan.train_lines,
                &data.join("train.tgt"),
            )?,
        );
        let (valid_src, valid_tgt) = (
            head(
                &self.corpus.valid[0],
                Some(plan.valid_lines),
                &data.join("valid.src"),
            )?,
            head(
                &self.corpus.valid[1],
                Some(plan.valid_lines),
                &data.join("valid.tgt"),
            )?,
        );
        let mut logs = Vec::new();
        let mut tokenizer: Option<PathBuf> = None;
        for arm in &arms {
            let dir = self.output.join(arm.dir_name());
            if !self.quiet {
                eprintln!("study: training arm {:?} in {}", arm.label(), dir.display());
            }
            let mut config = self.config(&plan, arm)?;
            config.data.train = vec![CorpusSpec {
                pair: None,
                src: train_src.clone(),
                tgt: train_tgt.clone(),
            }];
            config.data.valid = vec![CorpusSpec {
                pair: None,
                src: valid_src.clone(),
                tgt: valid_tgt.clone(),
            }];
            train(LibArgs {
                out_dir: dir.clone(),
                config,
                // Every arm shares the first arm's vocabulary.
                tokenizer: tokenizer.clone(),
                device: Device::Cpu,
                quiet: self.quiet,
                init_from: None,
                interrupt: None,
                group: gnmt_dist::alone(),
            })
            .with_context(|| format!("training arm {:?}", arm.label()))?;
            tokenizer.get_or_insert_with(|| dir.join("tokenizer.json"));
            logs.push(RunLog::read(&dir)?);
        }
        let figures = self.figures(&plan, &arms, &logs)?;
        let report = self.report(&plan, &arms, &logs, &figures);
        let path = self.output.join("report.md");
        gnmt_tokenizer::io::write_atomic(&path, report.as_bytes())?;
        println!("{}", path.display());
        Ok(())
    }

    fn figures(&self, plan: &Plan, arms: &[Arm], logs: &[RunLog]) -> anyhow::Result<Vec<String>> {
        let out = &self.output;
        let mut names = Vec::new();
        let mut loss = Vec::new();
        for (arm, log) in arms.iter().zip(logs) {
            loss.push(Series::new(
                format!("{}: training", arm.label()),
                log.updates.iter().map(|u| (u.step, u.loss)).collect(),
            ));
            loss.push(
                Series::new(
                    format!("{}: validation", arm.label()),
                    log.validations.iter().map(|v| (v.step, v.loss)).collect(),
                )
                .with_markers(),
            );
        }
        line_chart(
            &out.join("loss.png"),
            &format!("{0}+{0}-layer GNMT: loss", plan.layers),
            "update",
            "cross-entropy (nats per token)",
            &loss,
            false,
        )?;
        names.push("loss.png".to_string());
        for stack in ["encoder", "decoder"] {
            let mut series = Vec::new();
            for (arm, log) in arms.iter().zip(logs) {
                for (phase, range) in phases(log.updates.len()) {
                    let profile = layer_profile(log, stack, range);
                    let points = profile
                        .iter()
                        .enumerate()
                        .map(|(l, &g)| ((l + 1) as f64, g))
                        .collect();
                    series.push(
                        Series::new(format!("{}, {phase}", arm.label()), points).with_markers(),
                    );
                }
            }
            let name = format!("grad_norms_{stack}.png");
            line_chart(
                &out.join(&name),
                &format!("Gradient norm reaching each {stack} layer"),
                &format!("{stack} layer (1 = bottom)"),
                "gradient norm",
                &series,
                true,
            )?;
            names.push(name);
        }
        for arm in arms {
            let name = format!("schematic-{}.png", arm.dir_name());
            residual_schematic(&out.join(&name), plan.layers, arm.residual_from)?;
            names.push(name);
        }
        Ok(names)
    }

    fn report(&self, plan: &Plan, arms: &[Arm], logs: &[RunLog], figures: &[String]) -> String {
        let mut r = String::new();
        let _ = writeln!(
            r,
            "# Residual connections in a {0}+{0}-layer GNMT\n",
            plan.layers
        );
        let _ = writeln!(
            r,
            "Training data: `{}` / `{}`{}; validation: the first {} lines of `{}` / `{}`. \
             Model: {} LSTM layers of {} units in the encoder and in the decoder, {}-piece \
             vocabulary. Every arm starts from the same weights (seed {}) and sees the same \
             batches in the same order for {} updates; the arms differ only in their residual \
             connections.\n",
            self.corpus.train[0].display(),
            self.corpus.train[1].display(),
            plan.train_lines
                .map_or(String::new(), |n| format!(" (first {n} pairs)")),
            plan.valid_lines,
            self.corpus.valid[0].display(),
            self.corpus.valid[1].display(),
            plan.layers,
            plan.hidden,
            plan.vocab,
            self.seed,
            plan.steps,
        );
        let _ = writeln!(
            r,
            "| arm | updates | training loss (last 10%) | best validation loss | best validation BLEU | \
             gradient norm, bottom / top encoder layer | bottom / top decoder layer |"
        );
        let _ = writeln!(r, "|---|---|---|---|---|---|---|");
        let summaries: Vec<Summary> = logs.iter().map(Summary::of).collect();
        for (arm, s) in arms.iter().zip(&summaries) {
            let _ = writeln!(
                r,
                "| {} | {} | {:.3} | {:.3} | {:.2} | {:.3} | {:.3} |",
                arm.label(),
                s.updates,
                s.final_loss,
                s.best_valid_loss,
                s.best_bleu,
                s.encoder_ratio,
                s.decoder_ratio
            );
        }
        let _ = writeln!(
            r,
            "\nThe gradient ratios are means over all logged updates of the gradient norm of the \
             bottom layer's parameters divided by that of the top layer's: 1 means the gradient \
             reaches the bottom as strongly as the top.\n"
        );
        let _ = writeln!(r, "## The textbook account\n");
        let _ = writeln!(
            r,
            "A residual connection adds a layer's input to its output, so each layer learns a \
             correction to what it receives instead of a whole new representation. In the \
             backward pass the identity path carries the gradient from the top of the stack to \
             the bottom layers without passing through every layer's weights and \
             nonlinearities, so it arrives undiminished; in a plain deep stack the gradient is \
             multiplied by each layer's Jacobian on the way down and tends to shrink, so the \
             bottom layers learn slowly and the whole stack trains slower or not at all. GNMT \
             (Wu et al. 2016) reports that without residual connections its LSTM stacks stopped \
             improving beyond 4 layers, and that with them 8 layers trained well.\n"
        );
        let _ = writeln!(r, "## What this run shows\n");
        let plain = arms.iter().position(|a| a.residual_from.is_none());
        let residual = arms.iter().position(|a| a.residual_from.is_some());
        match (plain, residual) {
            (Some(p), Some(q)) => {
                let (a, b) = (&summaries[p], &summaries[q]);
                let _ = writeln!(r, "{}", verdict_loss(a, b, &arms[q].label()));
                let _ = writeln!(r, "{}", verdict_gradients(a, b, &arms[q].label()));
            }
            _ => {
                let _ = writeln!(
                    r,
                    "Only one kind of arm was trained; compare an arm `none` with an arm `3` to \
                     see the effect."
                );
            }
        }
        let _ = writeln!(
            r,
            "\nThis is one seed and {} updates: differences of a few percent are within what \
             another seed could change.\n",
            plan.steps
        );
        let _ = writeln!(r, "## Figures\n");
        for f in figures {
            let _ = writeln!(r, "![{f}]({f})");
        }
        r
    }
}

/// Early, middle and late windows (each a tenth of the logged updates, at least one).
fn phases(n: usize) -> Vec<(&'static str, std::ops::Range<usize>)> {
    if n == 0 {
        return Vec::new();
    }
    let w = (n / 10).max(1);
    let mid = n / 2;
    vec![
        ("early", 0..w.min(n)),
        (
            "middle",
            mid.saturating_sub(w / 2)..(mid.saturating_sub(w / 2) + w).min(n),
        ),
        ("late", n - w..n),
    ]
}

/// Mean gradient norm per layer over the updates in `range`.
fn layer_profile(log: &RunLog, stack: &str, range: std::ops::Range<usize>) -> Vec<f64> {
    let updates = &log.updates[range];
    let pick = |u: &crate::run_log::UpdateRecord| {
        if stack == "encoder" {
            u.encoder.clone()
        } else {
            u.decoder.clone()
        }
    };
    let layers = updates.iter().map(|u| pick(u).len()).max().unwrap_or(0);
    (0..layers)
        .map(|l| {
            let vals: Vec<f64> = updates
                .iter()
                .filter_map(|u| pick(u).get(l).copied())
                .collect();
            vals.iter().sum::<f64>() / vals.len().max(1) as f64
        })
        .collect()
}

struct Summary {
    updates: usize,
    final_loss: f64,
    best_valid_loss: f64,
    best_bleu: f64,
    encoder_ratio: f64,
    decoder_ratio: f64,
}

impl Summary {
    fn of(log: &RunLog) -> Self {
        let n = log.updates.len();
        let tail = &log.updates[n - (n / 10).max(1).min(n)..];
        let mean = |xs: Vec<f64>| xs.iter().sum::<f64>() / xs.len().max(1) as f64;
        let ratio = |pick: fn(&crate::run_log::UpdateRecord) -> &Vec<f64>| {
            mean(
                log.updates
                    .iter()
                    .filter_map(|u| {
                        let g = pick(u);
                        (g.len() >= 2 && g[g.len() - 1] > 0.0).then(|| g[0] / g[g.len() - 1])
                    })
                    .collect(),
            )
        };
        Self {
            updates: log.updates.last().map_or(0, |u| u.step as usize),
            final_loss: if tail.is_empty() {
                f64::NAN
            } else {
                mean(tail.iter().map(|u| u.loss).collect())
            },
            best_valid_loss: log
                .validations
                .iter()
                .map(|v| v.loss)
                .fold(f64::INFINITY, f64::min),
            best_bleu: log
                .validations
                .iter()
                .map(|v| v.bleu)
                .fold(f64::NEG_INFINITY, f64::max),
            encoder_ratio: ratio(|u| &u.encoder),
            decoder_ratio: ratio(|u| &u.decoder),
        }
    }
}

fn verdict_loss(plain: &Summary, residual: &Summary, label: &str) -> String {
    let rel = (plain.best_valid_loss - residual.best_valid_loss) / plain.best_valid_loss;
    let numbers = format!(
        "best validation loss {:.3} ({label}) against {:.3} (no residual), training loss at the \
         end {:.3} against {:.3}, validation BLEU {:.2} against {:.2}",
        residual.best_valid_loss,
        plain.best_valid_loss,
        residual.final_loss,
        plain.final_loss,
        residual.best_bleu,
        plain.best_bleu
    );
    if rel > 0.01 {
        format!(
            "- **Loss: bears the account out.** With residual connections the model learned \
             faster: {numbers}."
        )
    } else if rel < -0.01 {
        format!(
            "- **Loss: does not bear the account out here.** The plain stack reached the lower \
             loss: {numbers}."
        )
    } else {
        format!(
            "- **Loss: no clear difference** (within 1%) at this depth and length of training: \
             {numbers}."
        )
    }
}

fn verdict_gradients(plain: &Summary, residual: &Summary, label: &str) -> String {
    let numbers = format!(
        "the bottom encoder layer receives {:.2} times the top layer's gradient norm with \
         {label} and {:.2} times without; in the decoder {:.2} against {:.2}",
        residual.encoder_ratio, plain.encoder_ratio, residual.decoder_ratio, plain.decoder_ratio
    );
    let better = (residual.encoder_ratio > plain.encoder_ratio) as u8
        + (residual.decoder_ratio > plain.decoder_ratio) as u8;
    match better {
        2 => format!(
            "- **Gradients: bear the account out.** Relative to the top, the gradient reaches \
             the bottom layers stronger through the identity paths: {numbers}."
        ),
        0 => format!(
            "- **Gradients: do not bear the account out here.** Relative to the top, the bottom \
             layers get more gradient in the plain stack: {numbers}."
        ),
        _ => format!("- **Gradients: mixed.** {numbers}."),
    }
}

/// The first `lines` lines of `src` (all of it with `None`) copied to `dst`; returns `dst`.
fn head(src: &Path, lines: Option<usize>, dst: &Path) -> anyhow::Result<PathBuf> {
    let text = gnmt_tokenizer::Lines::read(src)?;
    let n = lines.map_or(text.len(), |n| n.min(text.len()));
    let mut out = String::new();
    for line in text.iter().take(n) {
        out.push_str(line);
        out.push('\n');
    }
    if let Some(dir) = dst.parent() {
        std::fs::create_dir_all(dir)?;
    }
    gnmt_tokenizer::io::write_atomic(dst, out.as_bytes())?;
    Ok(dst.to_path_buf())
}
