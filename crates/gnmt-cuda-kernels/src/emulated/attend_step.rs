//! `attend_step` of `kernels/attention.cu` on the host emulator against gnmt-kernels'
//! `attend_row`.

use gnmt_kernels::attention::attend_row;

use super::{bits, values};
use crate::Launch;

extern "C" {
    fn emu_attend_step(
        grid: u32,
        block: u32,
        sizes: *const u32,
        q: *const f32,
        keys: *const f32,
        v: *const f32,
        mask: *const f32,
        values: *const f32,
        memory_rows: *const u32,
        weights: *mut f32,
        context: *mut f32,
    );
}

/// A memory of `batch` sentences of up to `sources` positions and the queries that read it.
struct Case {
    sources: usize,
    width: usize,
    hidden: usize,
    q: Vec<f32>,
    keys: Vec<f32>,
    v: Vec<f32>,
    mask: Vec<f32>,
    values: Vec<f32>,
    memory_rows: Vec<u32>,
}

impl Case {
    /// `(weights, context)` from the kernel.
    fn kernel(&self, launch: Launch) -> (Vec<f32>, Vec<f32>) {
        let rows = self.memory_rows.len();
        let mut weights = vec![f32::NAN; rows * self.sources];
        let mut context = vec![f32::NAN; rows * self.hidden];
        let sizes = [rows, self.sources, self.width, self.hidden].map(|n| n as u32);
        // SAFETY: every buffer has the size the kernel reads or writes for `sizes`, and
        // every memory row is within the memory.
        unsafe {
            emu_attend_step(
                launch.grid,
                launch.block,
                sizes.as_ptr(),
                self.q.as_ptr(),
                self.keys.as_ptr(),
                self.v.as_ptr(),
                self.mask.as_ptr(),
                self.values.as_ptr(),
                self.memory_rows.as_ptr(),
                weights.as_mut_ptr(),
                context.as_mut_ptr(),
            )
        };
        (weights, context)
    }

    /// `(weights, context)` from the CPU kernel, row by row.
    fn cpu(&self) -> (Vec<f32>, Vec<f32>) {
        let (s, a, h) = (self.sources, self.width, self.hidden);
        let rows = self.memory_rows.len();
        let mut weights = vec![0.0; rows * s];
        let mut context = vec![0.0; rows * h];
        for (r, &m) in self.memory_rows.iter().enumerate() {
            let m = m as usize;
            attend_row(
                &self.q[r * a..][..a],
                &self.keys[m * s * a..][..s * a],
                &self.v,
                &self.mask[m * s..][..s],
                &self.values[m * s * h..][..s * h],
                &mut weights[r * s..][..s],
                &mut context[r * h..][..h],
            );
        }
        (weights, context)
    }
}

/// The kernel gives the CPU's bits for weights and context: beams that share a memory row
/// (a map out of order), sentences of different lengths (padding masked to exactly 0), one
/// with no real position at all, a width that is not a multiple of 16 lanes, more units than
/// a block has threads; on a block per row and on one block that strides over the rows.
#[test]
fn the_attention_step_gives_the_cpu_kernels_bits() {
    let (batch, sources, width, hidden) = (4, 9, 37, 300);
    let lengths = [9, 4, 1, 0];
    let mask: Vec<f32> = lengths
        .iter()
        .flat_map(|&n| (0..sources).map(move |s| if s < n { 1.0 } else { 0.0 }))
        .collect();
    let memory_rows = vec![1, 0, 1, 3, 2, 2, 0];
    let case = Case {
        sources,
        width,
        hidden,
        q: values(memory_rows.len() * width, 31, 1.5),
        keys: values(batch * sources * width, 37, 1.5),
        v: values(width, 41, 1.0),
        mask,
        values: values(batch * sources * hidden, 43, 2.0),
        memory_rows,
    };
    let (weights, context) = case.cpu();
    let one_block = Launch {
        grid: 1,
        block: crate::ROW_BLOCK,
    };
    for launch in [Launch::rows(case.memory_rows.len()), one_block] {
        let (w, c) = case.kernel(launch);
        assert_eq!(bits(&w), bits(&weights), "weights, {launch:?}");
        assert_eq!(bits(&c), bits(&context), "context, {launch:?}");
    }
    // Row 0 reads sentence 1 (4 real positions): its padding weighs exactly 0, the rest 1.
    let row0 = &weights[..sources];
    assert!(row0[4..].iter().all(|&w| w == 0.0));
    assert!((row0[..4].iter().sum::<f32>() - 1.0).abs() < 1e-6);
    // Row 3 reads sentence 3, which has no real position: nothing to attend to.
    assert!(weights[3 * sources..][..sources].iter().all(|&w| w == 0.0));
    assert!(context[3 * hidden..][..hidden].iter().all(|&c| c == 0.0));
}
