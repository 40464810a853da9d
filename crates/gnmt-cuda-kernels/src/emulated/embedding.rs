//! `kernels/embedding.cu` on the host emulator against gnmt-kernels' `embedding.rs`.

use gnmt_kernels::embedding::table_gradient;

use super::{bits, values};
use crate::Launch;

extern "C" {
    fn emu_embedding_backward(
        grid: u32,
        block: u32,
        vocab: u32,
        n: u32,
        dim: u32,
        grad: *const f32,
        ids: *const u32,
        d_table: *mut f32,
    );
}

/// The table's gradient: the CPU kernel's bits, on a full grid and on two blocks that stride
/// over the rows; with ids repeated within and across chunks of a block's width, ids never
/// used, one beyond the vocabulary, and a width above the block's (threads own two columns).
#[test]
fn the_embedding_gradient_gives_the_cpu_kernels_bits() {
    let (vocab, dim) = (70usize, 300usize);
    let n = crate::ROW_BLOCK as usize * 2 + 37;
    // Most positions share a few frequent ids; every 97th is out of range.
    let ids: Vec<u32> = (0..n as u32)
        .map(|p| match p % 97 {
            0 => vocab as u32,
            r if r % 3 == 0 => 5,
            r => (r * 31 + p / 11) % 60,
        })
        .collect();
    let grad = values(n * dim, 23, 2.0);
    let want = table_gradient(&grad, &ids, vocab, dim);
    let two_blocks = Launch {
        grid: 2,
        block: crate::ROW_BLOCK,
    };
    for launch in [Launch::rows(vocab), two_blocks] {
        let mut d_table = vec![f32::NAN; vocab * dim];
        // SAFETY: grad [n, dim], ids [n], d_table [vocab, dim].
        unsafe {
            emu_embedding_backward(
                launch.grid,
                launch.block,
                vocab as u32,
                n as u32,
                dim as u32,
                grad.as_ptr(),
                ids.as_ptr(),
                d_table.as_mut_ptr(),
            )
        };
        assert_eq!(bits(&d_table), bits(&want), "{launch:?}");
    }
    assert!(want[5 * dim..][..dim].iter().all(|&g| g != 0.0));
    assert!(want[69 * dim..][..dim].iter().all(|&g| g == 0.0));
}
