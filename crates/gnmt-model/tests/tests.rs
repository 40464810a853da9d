//! Integration tests of the model and the checkpoint format.

mod bf16;
mod checkpoint;
mod common;
mod gradients;
mod lstm;
mod model;
mod reference;
