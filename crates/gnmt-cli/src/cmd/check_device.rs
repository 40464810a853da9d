//! `check-device`: every operation, then the whole network, on `--device` with the kernels it
//! runs there, against the reference kernels on the CPU. Prints one line per quantity
//! compared and fails if any is outside its tolerance.

use clap::Args;
use gnmt_model::device_check::{self, Comparison};

use crate::{checked, device, ComputeFlags};

#[derive(Debug, Args)]
pub struct CheckDeviceArgs {
    /// Seed of the inputs and parameters drawn.
    #[arg(long, default_value_t = 17, value_parser = checked::seed())]
    pub seed: u64,
    /// Print only the quantities that fail, and the summary.
    #[arg(long)]
    pub failures_only: bool,
}

impl CheckDeviceArgs {
    pub fn run(self, compute: ComputeFlags) -> anyhow::Result<()> {
        let device = compute.device()?;
        let kernels = compute.kernels_on(&device)?;
        let tolerance = device_check::tolerance(kernels);
        println!(
            "{}, kernels {kernels}, against the reference kernels on the CPU; \
             error = max |device - reference| / max |reference|, tolerance {tolerance:e}",
            device::name(&device)
        );
        let mut found = device_check::check_ops(&device, kernels, self.seed)?;
        found.extend(device_check::check_model(&device, kernels, self.seed)?);
        let width = found
            .iter()
            .map(|c| c.case.len() + c.quantity.len() + 1)
            .max()
            .unwrap_or(0);
        for c in &found {
            if !self.failures_only || !c.passed() {
                println!("{}", line(c, width));
            }
        }
        let failed = found.iter().filter(|c| !c.passed()).count();
        let worst = found
            .iter()
            .map(Comparison::relative_error)
            .fold(0.0, f64::max);
        println!(
            "{} of {} quantities within tolerance; largest error {worst:.2e}",
            found.len() - failed,
            found.len()
        );
        if failed > 0 {
            anyhow::bail!(
                "{failed} quantities differ from the reference beyond {tolerance:e} on {}",
                device::name(&device)
            );
        }
        Ok(())
    }
}

fn line(c: &Comparison, width: usize) -> String {
    let label = format!("{} {}", c.case, c.quantity);
    let verdict = if c.passed() { "ok" } else { "FAILED" };
    format!(
        "{label:width$}  error {:.2e}  (max {:.2e}, scale {:.2e})  {verdict}",
        c.relative_error(),
        c.max_error,
        c.scale
    )
}
