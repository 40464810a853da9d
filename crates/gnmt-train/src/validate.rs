//! Validation: cross-entropy on the validation pairs, and BLEU/chrF of greedy translations of
//! every validation source line (empty lines give empty translations without the model).
//! A multilingual run validates each of its pairs; its BLEU and chrF are the pairs' means.

use candle::{DType, Device, Tensor};
use gnmt_infer::{greedy_decode, LengthLimit};
use gnmt_metrics::{corpus_bleu, corpus_chrf, BleuOptions, ChrfOptions};
use gnmt_model::{mask_from_lengths, Gnmt, PairBatch};
use gnmt_tokenizer::batch::plan_epoch;
use gnmt_tokenizer::{Batch, BatchOptions, Vocab};

use crate::corpora::ValidSet;
use crate::loss::batch_loss;
use crate::Result;

pub struct ValidResult {
    /// Per target token, over every set.
    pub loss: f64,
    /// The mean over the sets (one set: its BLEU).
    pub bleu: f64,
    pub chrf: f64,
    pub bleu_signature: String,
    /// Every set's translations, one set after the other.
    pub translations: Vec<String>,
    /// Each language pair's BLEU (empty for one unnamed set).
    pub bleu_by_pair: Vec<(String, f64)>,
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
    pub sets: &'a [ValidSet],
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
            mix: None,
        };
        let (mut nll, mut tokens) = (0.0, 0usize);
        let (mut bleu_sum, mut chrf_sum) = (0.0, 0.0);
        let mut result = ValidResult {
            loss: 0.0,
            bleu: 0.0,
            chrf: 0.0,
            bleu_signature: String::new(),
            translations: Vec::new(),
            bleu_by_pair: Vec::new(),
        };
        for set in self.sets {
            for indices in plan_epoch(&set.dataset, &options, 0) {
                let batch =
                    batch_tensors(&Batch::from_indices(&set.dataset, indices), self.device)?;
                let l = batch_loss(model, &batch, 0.0, None)?;
                nll += l.nll_sum;
                tokens += l.tokens;
            }
            let translations = self.translate_all(model, set)?;
            let refs: Vec<String> = set.corpus.tgt.iter().map(str::to_string).collect();
            let bleu = corpus_bleu(&translations, &[&refs[..]], &BleuOptions::default())?;
            let chrf = corpus_chrf(&translations, &[&refs[..]], &ChrfOptions::default())?;
            bleu_sum += bleu.score;
            chrf_sum += chrf.score;
            if result.bleu_signature.is_empty() {
                result.bleu_signature = bleu.signature();
            }
            if let Some(label) = &set.label {
                result.bleu_by_pair.push((label.clone(), bleu.score));
            }
            result.translations.extend(translations);
        }
        let sets = self.sets.len().max(1) as f64;
        result.loss = nll / tokens.max(1) as f64;
        result.bleu = bleu_sum / sets;
        result.chrf = chrf_sum / sets;
        Ok(result)
    }

    /// Greedy translations of every source line of `set`, in order; sorted by length into
    /// batches.
    fn translate_all(&self, model: &Gnmt, set: &ValidSet) -> Result<Vec<String>> {
        let sources: Vec<Vec<u32>> = set
            .corpus
            .src
            .iter()
            .map(|line| {
                let mut ids = self.vocab.encode(line)?;
                ids.truncate(self.max_len);
                if let (Some(tag), false) = (set.tag, ids.is_empty()) {
                    ids.insert(0, tag);
                }
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
