//! What the trainer logs: statistics over the updates between two log lines, and
//! `metrics.jsonl`.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::{Error, Result};

/// Statistics accumulated between two log lines.
pub(crate) struct Window {
    start: Instant,
    loss_sum: f64,
    nll_sum: f64,
    tokens: usize,
    updates: usize,
    grad_norm_sum: f64,
    group_sums: HashMap<String, f64>,
    encoder: Vec<f64>,
    decoder: Vec<f64>,
    /// Seconds in the all-reduce of a job's gradients (0 for one process).
    reduce_secs: f64,
}

impl Window {
    pub(crate) fn new() -> Self {
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
            reduce_secs: 0.0,
        }
    }

    pub(crate) fn add(&mut self, g: &crate::step::Gradients) {
        let stats = &g.stats;
        self.loss_sum += g.mean_loss * g.tokens as f64;
        self.nll_sum += g.nll_sum;
        self.tokens += g.tokens;
        self.reduce_secs += g.reduce_secs;
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

    pub(crate) fn line(&self, step: u64, epoch: f64, lr: f64) -> String {
        let n = self.updates.max(1) as f64;
        format!(
            "update {step} | epoch {epoch:.2} | loss {:.4} | ppl {:.2} | {:.0} tok/s | lr {lr:.2e} | grad norm {:.3}",
            self.loss_sum / self.tokens.max(1) as f64,
            (self.nll_sum / self.tokens.max(1) as f64).exp(),
            self.tokens_per_s(),
            self.grad_norm_sum / n
        )
    }

    pub(crate) fn record(&self, step: u64, epoch: f64, lr: f64, elapsed: f64) -> serde_json::Value {
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
            "allreduce_ms": 1e3 * self.reduce_secs / n,
        })
    }
}

/// `metrics.jsonl`, appended to and flushed line by line.
pub(crate) struct MetricsLog {
    /// `None` on the ranks of a job that do not write the run folder.
    file: Option<std::fs::File>,
    path: PathBuf,
}

impl MetricsLog {
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::Io {
                path: path.to_path_buf(),
                source: e,
            })?;
        Ok(Self {
            file: Some(file),
            path: path.to_path_buf(),
        })
    }

    /// A log that writes nothing (another rank writes the run's).
    pub(crate) fn discard() -> Self {
        Self {
            file: None,
            path: PathBuf::new(),
        }
    }

    pub(crate) fn write(&mut self, v: &serde_json::Value) -> Result<()> {
        let Some(file) = &mut self.file else {
            return Ok(());
        };
        writeln!(file, "{v}")
            .and_then(|_| file.flush())
            .map_err(|e| Error::Io {
                path: self.path.clone(),
                source: e,
            })
    }
}
