//! Rates for summary lines that mean something however slow the run: a run of a few
//! sentences a minute reads "4.8 s per sentence", not "0.2 sentences/s" rounded to "0.0".

/// `count` things (`unit` is the singular: "sentence") done in `secs` seconds.
pub fn rate(count: usize, secs: f64, unit: &str) -> String {
    let per_second = count as f64 / secs.max(1e-9);
    if count == 0 {
        format!("no {unit}s")
    } else if per_second >= 100.0 {
        format!("{per_second:.0} {unit}s/s")
    } else if per_second >= 1.0 {
        format!("{per_second:.1} {unit}s/s")
    } else {
        format!("{:.1} s per {unit}", 1.0 / per_second)
    }
}

#[cfg(test)]
mod tests {
    use super::rate;

    #[test]
    fn slow_runs_get_seconds_per_item() {
        assert_eq!(rate(1234, 2.0, "sentence"), "617 sentences/s");
        assert_eq!(rate(15, 2.0, "sentence"), "7.5 sentences/s");
        assert_eq!(rate(3, 14.4, "sentence"), "4.8 s per sentence");
        assert_eq!(rate(1, 600.0, "target token"), "600.0 s per target token");
        assert_eq!(rate(0, 3.0, "sentence"), "no sentences");
    }
}
