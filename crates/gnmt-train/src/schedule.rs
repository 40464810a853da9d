//! The learning-rate schedule as a pure function of the update number.

use crate::config::OptimConfig;

/// Which update rule applies at a step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rule {
    Adam,
    Sgd,
}

/// Learning rate and rule for update `step` (0-based): linear warm-up, then constant, then
/// step decay; Adam until `sgd_from_step`, plain SGD after it.
pub fn lr_at(step: u64, o: &OptimConfig) -> (f64, Rule) {
    let (base, rule) = match o.sgd_from_step {
        Some(s) if step >= s => (o.sgd_lr, Rule::Sgd),
        _ => (o.lr, Rule::Adam),
    };
    let warm = if rule == Rule::Adam && step < o.warmup_steps {
        (step + 1) as f64 / o.warmup_steps as f64
    } else {
        1.0
    };
    let decays = match o.decay_start {
        Some(start) if step >= start => {
            let k = (step - start) / o.decay_every + 1;
            o.decay_times.map_or(k, |m| k.min(m as u64))
        }
        _ => 0,
    };
    (base * warm * o.decay_factor.powi(decays as i32), rule)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_decay_and_sgd_switch() {
        let o = OptimConfig {
            lr: 1.0,
            warmup_steps: 4,
            decay_start: Some(10),
            decay_every: 5,
            decay_factor: 0.5,
            decay_times: Some(2),
            sgd_from_step: Some(30),
            sgd_lr: 0.1,
            ..Default::default()
        };
        let lr = |s| lr_at(s, &o);
        assert_eq!(lr(0), (0.25, Rule::Adam));
        assert_eq!(lr(3), (1.0, Rule::Adam));
        assert_eq!(lr(9), (1.0, Rule::Adam));
        assert_eq!(lr(10), (0.5, Rule::Adam));
        assert_eq!(lr(15), (0.25, Rule::Adam));
        assert_eq!(lr(29), (0.25, Rule::Adam)); // at most two decays
        assert_eq!(lr(30), (0.025, Rule::Sgd));
    }
}
