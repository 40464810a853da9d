//! GNMT's CUDA kernels, without candle: the counterpart on NVIDIA GPUs of `gnmt-kernels`,
//! file for file where a kernel exists (`kernels/lstm.cu` ~ `lstm/mod.rs`, `attention.cu` ~
//! `attention.rs`, `softmax.cu` ~ `softmax.rs`, `top_tokens.cu` ~ `top_tokens.rs`,
//! `dropout.cu` ~ `dropout.rs`, `embedding.cu` ~ `embedding.rs`, `adam.cu` ~ `adam.rs`).
//! `gnmt-ops` launches them through candle's CUDA device; this crate only names them, embeds
//! their PTX (with the `cuda` feature) and says how each is launched ([`Launch`]).
//!
//! The same sources, compiled as C on the host with a small emulator of CUDA's blocks and
//! threads (`emulate/`), run in this crate's tests on every CPU against the CPU kernels. Those
//! whose sums run in the CPU's order give the CPU's bits (same operations, no FMA
//! contraction, IEEE division and square root on both sides); the loss's row reductions (a
//! tree over a block) agree to rounding.

/// Threads per block of the kernels that reduce a row: one block per row. `kernels/common.cuh`
/// has the same number as `ROW_BLOCK`, and those kernels stop on any other block size.
pub const ROW_BLOCK: u32 = 256;

/// Threads per block of the element-wise kernels.
pub const ELEMENT_BLOCK: u32 = 256;

/// At most this many blocks: beyond it, each thread's grid-stride loop takes several items.
const MAX_BLOCKS: usize = 65_535;

/// A one-dimensional launch: `grid` blocks of `block` threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Launch {
    pub grid: u32,
    pub block: u32,
}

impl Launch {
    /// An element-wise kernel over `n` items (one thread each, up to [`MAX_BLOCKS`] blocks).
    pub fn elements(n: usize) -> Self {
        Self {
            grid: blocks(n.div_ceil(ELEMENT_BLOCK as usize)),
            block: ELEMENT_BLOCK,
        }
    }

    /// A row kernel over `rows` rows: a block of [`ROW_BLOCK`] threads per row.
    pub fn rows(rows: usize) -> Self {
        Self {
            grid: blocks(rows),
            block: ROW_BLOCK,
        }
    }
}

fn blocks(n: usize) -> u32 {
    n.clamp(1, MAX_BLOCKS) as u32
}

/// A compiled kernel file: the name candle's device caches it under, and its PTX.
#[derive(Debug, Clone, Copy)]
pub struct Module {
    pub name: &'static str,
    pub ptx: &'static str,
}

/// PTX of `kernels/NAME.cu`, built by build.rs with the `cuda` feature.
macro_rules! module {
    ($name:literal) => {
        #[cfg(feature = "cuda")]
        pub const MODULE: crate::Module = crate::Module {
            name: concat!("gnmt_", $name),
            ptx: include_str!(concat!(env!("OUT_DIR"), "/", $name, ".ptx")),
        };
    };
}

/// The LSTM cell (`kernels/lstm.cu`).
pub mod lstm {
    module!("lstm");
    /// `(rows, hidden, gates [rows, 4H], c_prev [rows, H], out [rows, 2H])`:
    /// `out = [h | c]`. Launch: [`crate::Launch::elements`]`(rows * hidden)`.
    pub const FORWARD: &str = "lstm_cell_forward";
    /// `(rows, hidden, grad [rows, 2H], gates, c_prev, out, joined [rows * 5H])`:
    /// `joined = [dgates | dc_prev]`. Launch: [`crate::Launch::elements`]`(rows * hidden)`.
    pub const BACKWARD: &str = "lstm_cell_backward";
    /// `(rows, hidden, gates, c_prev, h_prev, keep [rows], out [rows, 2H])`: rows whose
    /// `keep` is 0 carry `[h_prev | c_prev]`. Launch: as [`FORWARD`].
    pub const CARRY_FORWARD: &str = "lstm_cell_carry_forward";
    /// `(rows, hidden, grad, gates, c_prev, out, keep, joined [rows * 6H])`:
    /// `joined = [dgates | dc_prev | dh_prev]`. Launch: as [`FORWARD`].
    pub const CARRY_BACKWARD: &str = "lstm_cell_carry_backward";
    /// A whole layer's step, forward and backward, and the states before each step; the
    /// arguments and launches are [`crate::layer`]'s.
    pub const LAYER_STEP_FORWARD: &str = "lstm_layer_step_forward";
    pub const LAYER_STEP_BACKWARD: &str = "lstm_layer_step_backward";
    pub const LAYER_PREVIOUS_STATES: &str = "lstm_layer_previous_states";
    /// `(rows, cols, m [rows, cols], out, out_stride)`: `out[c * out_stride]` = column `c`'s
    /// sum, rows in order. Launch: [`crate::Launch::elements`]`(cols)`.
    pub const COLUMN_SUMS: &str = "column_sums";
}

pub mod layer;

/// The output layer's loss over rows of logits (`kernels/softmax.cu`).
pub mod softmax {
    module!("softmax");
    /// `(rows, vocab, logits, targets (u32), keep, eps, inv_vocab, out [rows, 2])`.
    /// Launch: [`crate::Launch::rows`]`(rows)`.
    pub const TOKEN_LOSSES: &str = "token_losses_forward";
    /// `(rows, vocab, logits, targets (u32), g [rows, 2], eps, uniform, dlogits)`.
    /// Launch: [`crate::Launch::rows`]`(rows)`.
    pub const TOKEN_LOSSES_BACKWARD: &str = "token_losses_backward";
}

/// Additive attention (`kernels/attention.cu`); the score kernels take `(batch, steps,
/// sources, width)` first: `q [B, T, A]`, `k [B, S, A]`, `v [A]`, `g [B, T, S]`.
pub mod attention {
    module!("attention");
    /// `(.., q, k, v, out [B, T, S])`. Launch: [`crate::Launch::elements`]`(B T S)`.
    pub const FORWARD: &str = "additive_scores_forward";
    /// `(.., g, q, k, v, joined)`: `dq` into `joined = [dq | dk | dv]`.
    /// Launch: [`crate::Launch::elements`]`(B T A)`.
    pub const DQ: &str = "additive_scores_dq";
    /// `(.., g, q, k, v, joined)`: `dk`. Launch: [`crate::Launch::elements`]`(B S A)`.
    pub const DK: &str = "additive_scores_dk";
    /// `(.., g, q, k, partials [B, A])`: each batch row's part of `dv`.
    /// Launch: [`crate::Launch::elements`]`(B A)`.
    pub const DV_ROWS: &str = "additive_scores_dv_rows";
    /// `(.., partials, joined)`: `dv`, the parts summed in batch order.
    /// Launch: [`crate::Launch::elements`]`(A)`.
    pub const DV_SUM: &str = "additive_scores_dv_sum";
    /// Decoding's step, its own arguments: `(rows, sources, width, hidden, q [rows, A],
    /// keys [B, S, A], v [A], mask [B, S], values [B, S, H], memory_rows [rows] (u32),
    /// weights [rows, S], context [rows, H])`. Launch: [`crate::Launch::rows`]`(rows)`.
    pub const STEP: &str = "attend_step";
    /// Training's attention weights, `(batch, steps, sources)` first: `(.., scores [B, T, S],
    /// mask [B, S], weights [B, T, S])`, the softmax over each row's real positions.
    /// Launch: [`crate::Launch::rows`]`(B T)`.
    pub const SOFTMAX: &str = "attention_softmax_forward";
    /// Its gradient: `(batch, steps, sources, weights, g [B, T, S], mask, dz [B, T, S])`.
    /// Launch: [`crate::Launch::rows`]`(B T)`.
    pub const SOFTMAX_BACKWARD: &str = "attention_softmax_backward";
}

/// The `k` best tokens of each decoder row (`kernels/top_tokens.cu`).
pub mod top_tokens {
    module!("top_tokens");
    /// `(rows, vocab, k, normalise (i32), logits [rows, V], tokens [rows, k] (u32),
    /// log_probs [rows, k])`, `k <= MAX_TOP` and `k <= vocab`.
    /// Launch: [`crate::Launch::rows`]`(rows)`.
    pub const TOP_TOKENS: &str = "top_tokens";
    /// The largest `k` the kernel ranks (`MAX_TOP` in the kernel); beyond it, the host does.
    pub const MAX_TOP: usize = 32;
}

/// Inverted dropout with the CPU's ChaCha20 masks (`kernels/dropout.cu`).
pub mod dropout {
    module!("dropout");
    /// `(n (u64), repeat (u64), x, out, key (8 x u32), stream (u64), first_block (u64),
    /// offset (u32), threshold, scale)`: element `i` decided by word `offset + i / repeat`.
    /// Launch: [`crate::Launch::elements`]`(blocks(n / repeat, offset))`.
    pub const DROPOUT: &str = "dropout";

    /// The 16-word stream blocks `decisions` words read from word `offset` of a block on: one
    /// thread each.
    pub fn blocks(decisions: usize, offset: u32) -> usize {
        (offset as usize + decisions).div_ceil(16)
    }
}

/// The gradient of an embedding table (`kernels/embedding.cu`).
pub mod embedding {
    module!("embedding");
    /// `(vocab, n, dim, grad [n, dim], ids [n] (u32), d_table [vocab, dim])`.
    /// Launch: [`crate::Launch::rows`]`(vocab)`.
    pub const BACKWARD: &str = "embedding_backward";
}

/// Adam (`kernels/adam.cu`).
pub mod adam {
    module!("adam");
    /// `(n (u64), p, m, v, g, scale, beta1, beta2, 1 - beta1, 1 - beta2, c1, c2, eps, lr)`.
    /// Launch: [`crate::Launch::elements`]`(n)`.
    pub const UPDATE: &str = "adam_update";
}

#[cfg(test)]
mod emulated;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launches_cover_every_item_with_bounded_grids() {
        assert_eq!(
            Launch::elements(0),
            Launch {
                grid: 1,
                block: 256
            }
        );
        assert_eq!(Launch::elements(257).grid, 2);
        assert_eq!(Launch::elements(usize::MAX / 2).grid, 65_535);
        assert_eq!(
            Launch::rows(7),
            Launch {
                grid: 7,
                block: ROW_BLOCK
            }
        );
        let common = include_str!("../kernels/common.cuh");
        assert!(
            common.contains(&format!("#define ROW_BLOCK {ROW_BLOCK}\n")),
            "kernels/common.cuh and src/lib.rs disagree on ROW_BLOCK"
        );
        let top = include_str!("../kernels/top_tokens.cu");
        assert!(
            top.contains(&format!("#define MAX_TOP {}\n", top_tokens::MAX_TOP)),
            "kernels/top_tokens.cu and src/lib.rs disagree on MAX_TOP"
        );
    }
}
