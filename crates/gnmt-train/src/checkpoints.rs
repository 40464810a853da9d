//! A run folder's checkpoints on disk: `checkpoints/step-N`, each written into a temporary
//! folder and renamed into place, so a process killed at any moment leaves every `step-N`
//! complete.

use std::path::{Path, PathBuf};

use std::collections::HashMap;

use candle::{DType, Tensor};
use gnmt_model::checkpoint;

use crate::config::TrainConfig;
use crate::optim::Optimizer;
use crate::state::TrainState;
use crate::{Error, Result};

/// Where a checkpoint of a run with a weight average keeps the weights being trained (a
/// model folder of its own); the checkpoint's model is the average.
pub(crate) const RAW_WEIGHTS_DIR: &str = "raw";

/// Writes `checkpoints/step-N` (via a temporary folder and a rename), updates the top-level
/// model, and prunes old checkpoints. `weights` are the model's; `raw`, when the model is a
/// moving average, the weights being trained, saved beside it for resuming.
#[allow(clippy::too_many_arguments)]
pub(crate) fn save_checkpoint(
    out: &Path,
    config: &TrainConfig,
    weights: &HashMap<String, Tensor>,
    raw: Option<&HashMap<String, Tensor>>,
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
    let save_model = |dir: &Path, tensors| {
        checkpoint::save(
            dir,
            &config.model,
            tensors,
            vocab_json,
            &config.generation,
            state.step,
            DType::F32,
        )
    };
    save_model(&tmp, weights)?;
    if let Some(raw) = raw {
        save_model(&tmp.join(RAW_WEIGHTS_DIR), raw)?;
    }
    optimizer.save(&tmp.join("optimizer.safetensors"))?;
    state.save(&tmp.join("state.json"))?;
    if dest.exists() {
        std::fs::remove_dir_all(&dest).map_err(io(&dest))?;
    }
    std::fs::rename(&tmp, &dest).map_err(io(&dest))?;
    if let Ok(d) = std::fs::File::open(&checkpoints) {
        let _ = d.sync_all();
    }
    save_model(out, weights)?;
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
