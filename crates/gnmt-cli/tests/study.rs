use crate::{quick_study, synth_reverse};

/// `gnmt study residuals --quick` on a corpus that `gnmt synth` writes: both arms train, log
/// per-layer gradient norms for every layer of both stacks, and the report and its figures are
/// written; `gnmt plot` draws an arm's curves.
#[test]
fn the_quick_residual_study_writes_its_report_and_figures() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    synth_reverse(d, "train", 1000, 16, 12, 1);
    synth_reverse(d, "valid", 100, 16, 12, 2);
    quick_study(d, ["train.src", "train.tgt", "valid.src", "valid.tgt"]);
}
