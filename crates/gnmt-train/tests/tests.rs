//! Integration tests of the trainer.

mod overfit;
