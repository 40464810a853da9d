//! GNMT's compute on plain slices, with no tensor library: the packed matrix product (f32 and
//! bf16), the LSTM cell rows and the recurrence of a layer, additive attention rows, the
//! softmax and top-k of a row, the Adam update, dropout masks and the embedding gradient.
//! `gnmt-ops` wraps them as candle operations; a GPU kernels crate mirrors this one file for
//! file.
//!
//! Every kernel is deterministic: each output element is computed in a fixed order, whatever
//! the thread count or the number of rows, so a sentence decodes to the same bits in any
//! batch and a seeded training run repeats exactly.
//!
//! ```
//! use gnmt_kernels::{matmul::product, Compute, Precision};
//!
//! // [2, 3] x [3, 2], f32 on two threads.
//! let a = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
//! let b = [1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0];
//! let c = product((2, 2, 3), (&a, false), (&b, false), None, Compute::new(Precision::F32, 2));
//! assert_eq!(c, [4.0, 5.0, 10.0, 11.0]);
//! ```

pub mod adam;
pub mod attention;
pub mod buffers;
pub mod dropout;
pub mod embedding;
pub mod gemm;
pub mod lstm;
pub mod matmul;
pub mod precision;
pub mod real;
pub mod reduce;
pub mod softmax;
pub mod top_tokens;

pub use matmul::Compute;
pub use precision::Precision;
pub use real::Real;
