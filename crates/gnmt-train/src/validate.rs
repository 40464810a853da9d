//! Validation: cross-entropy on the validation pairs, and BLEU/chrF of greedy translations of
//! every validation source line (empty lines give empty translations without the model).

use candle::{DType, Device, Tensor};
use gnmt_infer::{greedy_decode, LengthLimit};
use gnmt_metrics::{corpus_bleu, corpus_chrf, BleuOptions, ChrfOptions};
use gnmt_model::{mask_from_lengths, Gnmt, PairBatch};
use gnmt_tokenizer::batch::plan_epoch;
use gnmt_tokenizer::{Batch, BatchOptions, Dataset, ParallelCorpus, Vocab};

use crate::loss::batch_loss;
use crate::Result;

pub struct ValidResult {
    pub loss: f64,
    pub bleu: f64,
    pub chrf: f64,
    pub bleu_signature: String,
    pub translations: Vec<String>,
}

/// A batch's tensors on `device`.
pub fn batch_tensors(b: &Batch, device: &Device) -> Result<PairBatch> {
    let n = b.len();
    Ok(PairBatch {
        src: Tensor::from_slice(&b.src, (n, b.src_width), device)?,
        src_mask: mask_from_lengths(&b.src_lengths, b.src_width, DType::F32, device)?,
        tgt_in: Tensor::from_slice(&b.tgt_in, (n, b.tgt_width), device)?,
        tgt_out: Tensor::from_slice(&b.tgt_out, (n, b.tgt_width), device)?,
        tgt_mask: mask_from_lengths(&b.tgt_lengths, b.tgt_width, DType::F32, device)?,
    })
}

pub struct Validator<'a> {
    pub dataset: &'a Dataset,
    pub corpus: &'a ParallelCorpus,
    pub vocab: &'a Vocab,
    pub max_tokens: usize,
    pub max_len: usize,
    pub limit: LengthLimit,
    pub device: &'a Device,
}

impl Validator<'_> {
    pub fn run(&self, model: &Gnmt) -> Result<ValidResult> {
        let options = BatchOptions {
            max_tokens: self.max_tokens,
            max_sentences: 256,
            seed: 0,
            shuffle: false,
        };
        let (mut nll, mut tokens) = (0.0, 0usize);
        for indices in plan_epoch(self.dataset, &options, 0) {
            let batch = batch_tensors(&Batch::from_indices(self.dataset, indices), self.device)?;
            let l = batch_loss(model, &batch, 0.0, None)?;
            nll += l.nll_sum;
            tokens += l.tokens;
        }
        let translations = self.translate_all(model)?;
        let refs: Vec<String> = self.corpus.tgt.iter().map(str::to_string).collect();
        let bleu = corpus_bleu(&translations, &[&refs[..]], &BleuOptions::default())?;
        let chrf = corpus_chrf(&translations, &[&refs[..]], &ChrfOptions::default())?;
        Ok(ValidResult {
            loss: nll / tokens.max(1) as f64,
            bleu: bleu.score,
            chrf: chrf.score,
            bleu_signature: bleu.signature(),
            translations,
        })
    }

    /// Greedy translations of every source line, in order; sorted by length into batches.
    fn translate_all(&self, model: &Gnmt) -> Result<Vec<String>> {
        let sources: Vec<Vec<u32>> = self
            .corpus
            .src
            .iter()
            .map(|line| {
                let mut ids = self.vocab.encode(line)?;
                ids.truncate(self.max_len);
                Ok(ids)
            })
            .collect::<Result<_>>()?;
        let mut order: Vec<usize> = (0..sources.len())
            .filter(|&i| !sources[i].is_empty())
            .collect();
        order.sort_by_key(|&i| sources[i].len());
        let mut out = vec![String::new(); sources.len()];
        for chunk in order.chunks(64) {
            let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| sources[i].clone()).collect();
            let hyps = greedy_decode(model, &batch, self.limit, DType::F32, self.device)?;
            for (&i, ids) in chunk.iter().zip(hyps) {
                out[i] = self.vocab.decode(&ids)?;
            }
        }
        Ok(out)
    }
}
