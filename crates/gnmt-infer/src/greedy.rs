//! Batched greedy decoding: every sentence advances together; a sentence that emits `</s>` or
//! reaches its length limit leaves the batch (the decoder state is narrowed to the rows still
//! running), so long sentences do not make short ones pay.

use candle::{DType, Device, Tensor};
use gnmt_model::{mask_from_lengths, Gnmt};

use gnmt_tokenizer::{BOS_ID, EOS_ID, PAD_ID};

use crate::{Error, Result};

/// Output length bound: `a * source_length + b` tokens (`</s>` excluded), so a model that
/// never emits `</s>` still stops.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LengthLimit {
    pub a: f64,
    pub b: usize,
}

impl LengthLimit {
    pub fn for_source(&self, src_len: usize) -> usize {
        (self.a * src_len as f64).floor() as usize + self.b
    }
}

/// Pads source id sequences (each gets `</s>` appended) into `[B, S]` ids and mask.
pub fn source_batch(
    sources: &[Vec<u32>],
    dtype: DType,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let lengths: Vec<usize> = sources.iter().map(|s| s.len() + 1).collect();
    let width = lengths.iter().copied().max().unwrap_or(1);
    let mut ids = vec![PAD_ID; sources.len() * width];
    for (row, s) in sources.iter().enumerate() {
        ids[row * width..row * width + s.len()].copy_from_slice(s);
        ids[row * width + s.len()] = EOS_ID;
    }
    let ids = Tensor::from_vec(ids, (sources.len(), width), device)?;
    Ok((ids, mask_from_lengths(&lengths, width, dtype, device)?))
}

/// Greedy translations of `sources` (token ids without `</s>`), returned in input order and
/// without `</s>`. An empty source still gets decoded (it is just `</s>`); callers that want
/// empty-in, empty-out skip such lines before calling.
pub fn greedy_decode(
    model: &Gnmt,
    sources: &[Vec<u32>],
    limit: LengthLimit,
    dtype: DType,
    device: &Device,
) -> Result<Vec<Vec<u32>>> {
    if sources.is_empty() {
        return Ok(Vec::new());
    }
    if let Some(bad) = sources
        .iter()
        .flatten()
        .find(|&&id| id as usize >= model.config().vocab_size)
    {
        return Err(Error::Input(format!(
            "token id {bad} is outside the vocabulary of {}",
            model.config().vocab_size
        )));
    }
    let (src, mask) = source_batch(sources, dtype, device)?;
    let encoded = model.encode(&src, &mask)?;
    let mut state = model.start_state(&encoded)?;
    let max_len: Vec<usize> = sources
        .iter()
        .map(|s| limit.for_source(s.len() + 1))
        .collect();
    let mut outputs: Vec<Vec<u32>> = vec![Vec::new(); sources.len()];
    // `alive[k]` is the input row that decoder row k belongs to.
    let mut alive: Vec<usize> = (0..sources.len()).collect();
    let mut tokens = vec![BOS_ID; sources.len()];
    while !alive.is_empty() {
        let input = Tensor::new(tokens.as_slice(), device)?;
        let (top, _, next) = model.step_top_tokens(&input, &state, 1)?;
        let best = top.best();
        let mut keep = Vec::with_capacity(alive.len());
        tokens.clear();
        for (k, (&row, &token)) in alive.iter().zip(&best).enumerate() {
            if token == EOS_ID {
                continue;
            }
            outputs[row].push(token);
            if outputs[row].len() < max_len[row] {
                keep.push(k);
                tokens.push(token);
            }
        }
        if keep.len() == alive.len() {
            state = next;
        } else if !keep.is_empty() {
            let idx = Tensor::new(
                keep.iter()
                    .map(|&k| k as u32)
                    .collect::<Vec<_>>()
                    .as_slice(),
                device,
            )?;
            state = next.reorder(&idx)?;
        }
        alive = keep.iter().map(|&k| alive[k]).collect();
    }
    Ok(outputs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gnmt_model::init_model;

    #[test]
    fn batch_composition_does_not_change_translations() {
        let (model, _) =
            init_model(&crate::test_config(), 5, 0.5, DType::F32, &Device::Cpu).unwrap();
        let sources: Vec<Vec<u32>> =
            vec![vec![5, 6, 7, 8, 9, 10], vec![11], vec![], vec![12, 13, 14]];
        let limit = LengthLimit { a: 1.5, b: 3 };
        let together = greedy_decode(&model, &sources, limit, DType::F32, &Device::Cpu).unwrap();
        for (i, s) in sources.iter().enumerate() {
            let alone = greedy_decode(
                &model,
                std::slice::from_ref(s),
                limit,
                DType::F32,
                &Device::Cpu,
            )
            .unwrap();
            assert_eq!(alone[0], together[i], "sentence {i}");
            assert!(together[i].len() <= limit.for_source(s.len() + 1));
            assert!(!together[i].contains(&EOS_ID));
        }
    }

    #[test]
    fn out_of_vocabulary_ids_are_an_error() {
        let (model, _) =
            init_model(&crate::test_config(), 5, 0.5, DType::F32, &Device::Cpu).unwrap();
        let err = greedy_decode(
            &model,
            &[vec![64]],
            LengthLimit { a: 1.0, b: 1 },
            DType::F32,
            &Device::Cpu,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("token id 64 is outside the vocabulary of 64"),
            "{err}"
        );
    }
}
