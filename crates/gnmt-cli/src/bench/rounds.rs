//! Measurements in child processes (each sized its thread pool from the start), alternated
//! in rounds so that every ratio is of runs taken back to back.

/// Runs one measurement child process (this executable with `--single` arguments) and
/// returns what it printed; a failure is an error carrying the child's stderr.
pub(crate) fn measurement_output(cmd: &mut std::process::Command) -> anyhow::Result<String> {
    use anyhow::Context;
    let out = cmd.output().context("running the measurement process")?;
    anyhow::ensure!(
        out.status.success(),
        "measurement failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Rates of several configurations measured in alternating rounds. A shared machine's speed
/// drifts by 10-20% within minutes, so a ratio of two runs taken a minute apart can be off by
/// as much; measured round by round, each ratio is of runs taken back to back.
pub(crate) struct Rounds {
    /// `rates[r][i]`: configuration `i` in round `r`.
    rates: Vec<Vec<f64>>,
}

impl Rounds {
    /// Calls `measure(round, i)` for every configuration `i` in `0..configs`, in order, and
    /// does it all `rounds` times.
    pub(crate) fn run(
        rounds: usize,
        configs: usize,
        mut measure: impl FnMut(usize, usize) -> anyhow::Result<f64>,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(rounds >= 1, "--rounds must be at least 1");
        let rates = (0..rounds)
            .map(|r| (0..configs).map(|i| measure(r, i)).collect())
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { rates })
    }

    pub(crate) fn count(&self) -> usize {
        self.rates.len()
    }

    /// The median rate of configuration `i` over the rounds.
    pub(crate) fn median_rate(&self, i: usize) -> f64 {
        median(self.rates.iter().map(|r| r[i]).collect())
    }

    /// The median over the rounds of configuration `i`'s rate divided by `base`'s.
    pub(crate) fn median_ratio(&self, i: usize, base: usize) -> f64 {
        median(self.rates.iter().map(|r| r[i] / r[base]).collect())
    }
}

/// What a ratio printed from `rounds` is: blank for one round.
pub(crate) fn rounds_note(rounds: &Rounds) -> String {
    match rounds.count() {
        1 => String::new(),
        n => format!(" (median of {n} rounds' ratios)"),
    }
}

/// The median of `xs` (the mean of the middle two for an even count).
fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => xs[n / 2],
        _ => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::{median, Rounds};

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(vec![7.0]), 7.0);
        assert!(median(Vec::new()).is_nan());
    }

    #[test]
    fn rounds_alternate_and_ratios_pair_runs_of_one_round() -> anyhow::Result<()> {
        let mut order = Vec::new();
        // Round r runs configuration 0 at 10r + 10 and configuration 1 at twice that, plus a
        // drift that a ratio of runs from different rounds would carry.
        let rounds = Rounds::run(3, 2, |r, i| {
            order.push((r, i));
            Ok((10 * r + 10) as f64 * (i + 1) as f64)
        })?;
        assert_eq!(order, [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]);
        assert_eq!(rounds.count(), 3);
        assert_eq!(rounds.median_rate(0), 20.0);
        assert_eq!(rounds.median_rate(1), 40.0);
        assert_eq!(rounds.median_ratio(1, 0), 2.0);
        assert!(Rounds::run(0, 2, |_, _| Ok(1.0)).is_err());
        Ok(())
    }
}
