//! Reading a run folder's `metrics.jsonl` (written by gnmt_train::trainer): one JSON object per
//! logged update, and one per validation.

use std::path::Path;

use anyhow::Context;
use serde_json::Value;

/// One logged training update.
#[derive(Debug, Clone)]
pub struct UpdateRecord {
    pub step: f64,
    pub loss: f64,
    pub lr: f64,
    pub tokens_per_s: f64,
    pub grad_norm: f64,
    /// Gradient norm reaching each encoder layer, bottom first.
    pub encoder: Vec<f64>,
    /// Gradient norm reaching each decoder layer, bottom first.
    pub decoder: Vec<f64>,
}

/// One validation.
#[derive(Debug, Clone)]
pub struct ValidRecord {
    pub step: f64,
    pub loss: f64,
    pub bleu: f64,
    pub chrf: f64,
}

#[derive(Debug, Clone, Default)]
pub struct RunLog {
    pub updates: Vec<UpdateRecord>,
    pub validations: Vec<ValidRecord>,
}

fn number(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

fn numbers(v: &Value, key: &str) -> Vec<f64> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

impl RunLog {
    /// Reads `dir/metrics.jsonl`. A torn last line (a run killed mid-write) is skipped; any
    /// other malformed line is an error naming it.
    pub fn read(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("metrics.jsonl");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let lines: Vec<&str> = text.lines().collect();
        let mut log = RunLog::default();
        for (i, line) in lines.iter().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = match serde_json::from_str(line) {
                Ok(v) => v,
                Err(_) if i + 1 == lines.len() => continue,
                Err(e) => anyhow::bail!("{}:{}: not JSON: {e}", path.display(), i + 1),
            };
            let Some(step) = number(&v, "step") else {
                anyhow::bail!("{}:{}: no \"step\"", path.display(), i + 1)
            };
            if let Some(loss) = number(&v, "valid_loss") {
                log.validations.push(ValidRecord {
                    step,
                    loss,
                    bleu: number(&v, "bleu").unwrap_or(f64::NAN),
                    chrf: number(&v, "chrf").unwrap_or(f64::NAN),
                });
            } else if let Some(loss) = number(&v, "loss") {
                log.updates.push(UpdateRecord {
                    step,
                    loss,
                    lr: number(&v, "lr").unwrap_or(f64::NAN),
                    tokens_per_s: number(&v, "tokens_per_s").unwrap_or(f64::NAN),
                    grad_norm: number(&v, "grad_norm").unwrap_or(f64::NAN),
                    encoder: numbers(&v, "grad_norm_encoder"),
                    decoder: numbers(&v, "grad_norm_decoder"),
                });
            }
        }
        Ok(log)
    }

    /// Layers with gradient norms logged: (encoder, decoder).
    pub fn layer_counts(&self) -> (usize, usize) {
        self.updates
            .iter()
            .map(|u| (u.encoder.len(), u.decoder.len()))
            .max()
            .unwrap_or((0, 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_updates_and_validations_and_skips_a_torn_last_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("metrics.jsonl"),
            concat!(
                r#"{"step":50,"loss":7.5,"lr":0.001,"tokens_per_s":900,"grad_norm":1.0,"grad_norm_encoder":[0.1,0.2],"grad_norm_decoder":[0.3,0.4]}"#,
                "\n",
                r#"{"step":100,"valid_loss":6.0,"bleu":3.5,"chrf":20.0}"#,
                "\n",
                r#"{"step":150,"loss":6.9"#,
            ),
        )
        .unwrap();
        let log = RunLog::read(dir.path()).unwrap();
        assert_eq!(log.updates.len(), 1);
        assert_eq!(log.updates[0].encoder, vec![0.1, 0.2]);
        assert_eq!(log.validations.len(), 1);
        assert_eq!(log.validations[0].bleu, 3.5);
        assert_eq!(log.layer_counts(), (2, 2));
    }

    #[test]
    fn a_malformed_line_in_the_middle_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("metrics.jsonl"),
            "{\"step\":1,\"loss\":2}\nnot json\n{\"step\":2,\"loss\":1}\n",
        )
        .unwrap();
        let err = RunLog::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("metrics.jsonl:2"), "{err}");
    }
}
