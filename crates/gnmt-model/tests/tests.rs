//! Integration tests of the model and the checkpoint format.

mod checkpoint;
mod common;
mod gradients;
mod lstm;
mod model;
