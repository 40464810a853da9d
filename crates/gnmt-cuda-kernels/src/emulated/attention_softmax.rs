//! `attention_softmax_forward`/`_backward` of `kernels/attention.cu` on the host emulator
//! against gnmt-kernels' `masked_softmax_row` and `masked_softmax_row_backward`.

use gnmt_kernels::attention::{masked_softmax_row, masked_softmax_row_backward};

use super::{bits, values};
use crate::Launch;

extern "C" {
    fn emu_attention_softmax(
        grid: u32,
        block: u32,
        backward: i32,
        batch: u32,
        steps: u32,
        sources: u32,
        scores_or_weights: *const f32,
        g: *const f32,
        mask: *const f32,
        out: *mut f32,
    );
}

/// Scores `[B, T, S]` over sentences of given lengths (one with no real position), and an
/// upstream gradient of the same shape.
struct Case {
    batch: usize,
    steps: usize,
    sources: usize,
    scores: Vec<f32>,
    mask: Vec<f32>,
    g: Vec<f32>,
}

impl Case {
    fn new(steps: usize, sources: usize, lengths: &[usize]) -> Self {
        let batch = lengths.len();
        let mask = lengths
            .iter()
            .flat_map(|&n| (0..sources).map(move |s| if s < n { 1.0 } else { 0.0 }))
            .collect();
        let n = batch * steps * sources;
        Self {
            batch,
            steps,
            sources,
            scores: values(n, 53, 6.0),
            mask,
            g: values(n, 59, 2.0),
        }
    }

    fn launch(&self, launch: Launch, backward: bool, input: &[f32]) -> Vec<f32> {
        let mut out = vec![f32::NAN; input.len()];
        // SAFETY: `input`, `g` and `out` hold B T S values and `mask` B S, as the kernels read
        // and write for these sizes.
        unsafe {
            emu_attention_softmax(
                launch.grid,
                launch.block,
                backward as i32,
                self.batch as u32,
                self.steps as u32,
                self.sources as u32,
                input.as_ptr(),
                self.g.as_ptr(),
                self.mask.as_ptr(),
                out.as_mut_ptr(),
            )
        };
        out
    }

    /// (weights, dz) from the CPU kernels, row by row.
    fn cpu(&self) -> (Vec<f32>, Vec<f32>) {
        let s = self.sources;
        let mut weights = self.scores.clone();
        let mut dz = vec![0.0; weights.len()];
        for r in 0..self.batch * self.steps {
            let mask = &self.mask[r / self.steps * s..][..s];
            masked_softmax_row(mask, &mut weights[r * s..][..s]);
            let w = &weights[r * s..][..s];
            masked_softmax_row_backward(mask, w, &self.g[r * s..][..s], &mut dz[r * s..][..s]);
        }
        (weights, dz)
    }
}

/// Both kernels give the CPU's bits: sentences of different lengths (padding exactly 0 in
/// the weights and their gradient), one with no real position, rows longer than a block has
/// threads; on a block per row and on one block that strides over every row.
#[test]
fn training_attention_weights_and_their_gradient_give_the_cpu_kernels_bits() {
    for (steps, sources, lengths) in [(3, 9, vec![9, 4, 1, 0]), (2, 300, vec![300, 257, 17])] {
        let case = Case::new(steps, sources, &lengths);
        let (weights, dz) = case.cpu();
        let rows = case.batch * steps;
        let one_block = Launch {
            grid: 1,
            block: crate::ROW_BLOCK,
        };
        for launch in [Launch::rows(rows), one_block] {
            let w = case.launch(launch, false, &case.scores);
            assert_eq!(
                bits(&w),
                bits(&weights),
                "weights, {sources} sources, {launch:?}"
            );
            let d = case.launch(launch, true, &weights);
            assert_eq!(bits(&d), bits(&dz), "dz, {sources} sources, {launch:?}");
        }
        for (r, row) in weights.chunks(sources).enumerate() {
            let real = lengths[r / steps];
            assert!(row[real..].iter().all(|&w| w == 0.0), "row {r}'s padding");
            assert!(dz[r * sources..][real..sources].iter().all(|&d| d == 0.0));
            if real > 0 {
                let sum: f32 = row.iter().sum();
                assert!((sum - 1.0).abs() < 1e-5, "row {r} sums to {sum}");
            } else {
                assert!(
                    row.iter().all(|&w| w == 0.0),
                    "row {r}: nothing to attend to"
                );
            }
        }
    }
}
