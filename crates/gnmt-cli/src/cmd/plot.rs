//! `gnmt plot DIR`: the training curves of a run folder as PNG files in `DIR/plots/`.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::plot::{line_chart, Series};
use crate::run_log::RunLog;

#[derive(Debug, Args)]
pub struct PlotArgs {
    /// Run folder (with metrics.jsonl).
    pub run: PathBuf,
    /// Where to write the figures (default: RUN/plots).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

impl PlotArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let out = self.output.unwrap_or_else(|| self.run.join("plots"));
        for path in plot_run(&self.run, &out)? {
            println!("{}", path.display());
        }
        Ok(())
    }
}

/// Writes loss.png, bleu.png and grad_norms.png for the run in `run` into `out`; returns
/// their paths.
pub fn plot_run(run: &Path, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let log = RunLog::read(run)?;
    anyhow::ensure!(
        !log.updates.is_empty(),
        "{}: no logged updates yet",
        run.join("metrics.jsonl").display()
    );
    std::fs::create_dir_all(out)?;
    let name = run
        .file_name()
        .map_or_else(|| run.display().to_string(), |n| n.to_string_lossy().into());
    let mut written = Vec::new();

    let loss = out.join("loss.png");
    let train_loss = log.updates.iter().map(|u| (u.step, u.loss)).collect();
    let valid_loss = log.validations.iter().map(|v| (v.step, v.loss)).collect();
    line_chart(
        &loss,
        &format!("{name}: loss"),
        "update",
        "cross-entropy (nats per token)",
        &[
            Series::new("training (label-smoothed)", train_loss),
            Series::new("validation", valid_loss).with_markers(),
        ],
        false,
    )?;
    written.push(loss);

    if !log.validations.is_empty() {
        let bleu = out.join("bleu.png");
        line_chart(
            &bleu,
            &format!("{name}: validation scores"),
            "update",
            "score",
            &[
                Series::new(
                    "BLEU",
                    log.validations.iter().map(|v| (v.step, v.bleu)).collect(),
                )
                .with_markers(),
                Series::new(
                    "chrF",
                    log.validations.iter().map(|v| (v.step, v.chrf)).collect(),
                )
                .with_markers(),
            ],
            false,
        )?;
        written.push(bleu);
    }

    let grads = out.join("grad_norms.png");
    let (enc, dec) = log.layer_counts();
    let mut series = Vec::new();
    for (stack, count, pick) in [
        (
            "encoder",
            enc,
            (|u: &crate::run_log::UpdateRecord| &u.encoder) as fn(&_) -> &Vec<f64>,
        ),
        ("decoder", dec, |u| &u.decoder),
    ] {
        for layer in 0..count {
            let points = log
                .updates
                .iter()
                .filter_map(|u| pick(u).get(layer).map(|&g| (u.step, g)))
                .collect();
            series.push(Series::new(format!("{stack} {}", layer + 1), points));
        }
    }
    line_chart(
        &grads,
        &format!("{name}: gradient norm reaching each layer"),
        "update",
        "gradient norm",
        &series,
        true,
    )?;
    written.push(grads);
    Ok(written)
}
