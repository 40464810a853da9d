//! The text side of gnmt: the shared subword vocabulary, and the pipeline that turns a
//! parallel corpus into padded batches of token ids.
//!
//! ```text
//! SRC/TGT files ──Dataset::prepare (streamed: check + hash, then encode by chunks)──▶ Dataset
//!              (or read_parallel ─▶ ParallelCorpus ─▶ Dataset::build, in memory)   (ids, cached)
//!                                                    (Vocab::encode)        │
//!                                                       Batcher (token budget, seeded) ◀┘
//!                                                            │
//!                                                            ▼ Batch { src, tgt_in, tgt_out }
//! ```
//!
//! This crate never depends on candle: it deals in strings and `u32` ids only. Turning a
//! [`Batch`] into tensors is the trainer's job.
//!
//! ```
//! use gnmt_tokenizer::{Vocab, VocabOptions};
//! let sentences = gnmt_tokenizer::synthetic::toy_sentences();
//! let vocab = Vocab::train_from_sentences(&sentences, &VocabOptions { size: 500, ..Default::default() })?;
//! let ids = vocab.encode("A dog runs  across the grass.")?;
//! assert_eq!(vocab.decode(&ids)?, "A dog runs across the grass.");
//! # Ok::<(), gnmt_tokenizer::Error>(())
//! ```

pub mod arrays;
pub mod batch;
pub mod corpus;
pub mod data;
pub mod dataset;
mod error;
pub mod io;
pub mod language;
mod lock;
pub mod synthetic;
mod vocab;

pub use batch::{Batch, BatchOptions, Batcher, Cursor};
pub use corpus::{read_parallel, Lines, ParallelCorpus};
pub use dataset::{Dataset, FilterOptions, SkipSummary};
pub use error::{Error, Result};
pub use language::{language_tag, LanguagePair};
pub use lock::{FolderLock, LOCK_FILE};
pub use vocab::{
    SubwordModel, Vocab, VocabOptions, BOS_ID, EOS_ID, MIN_VOCAB_SIZE, PAD_ID, SPECIAL_TOKENS,
    UNK_ID,
};
