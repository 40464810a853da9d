use candle::{DType, Device, Tensor};
use gnmt_model::{init_model, mask_from_lengths, Gnmt, ModelConfig, TieEmbeddings};

/// A padded batch of token ids: rows of different lengths, 0 as padding.
pub struct Inputs {
    pub src: Tensor,
    pub src_mask: Tensor,
    pub tgt_in: Tensor,
    pub tgt_out: Vec<Vec<u32>>,
}

pub fn ids(rows: &[&[u32]], width: usize) -> Tensor {
    let data: Vec<u32> = rows
        .iter()
        .flat_map(|r| r.iter().copied().chain(std::iter::repeat(0)).take(width))
        .collect();
    Tensor::from_vec(data, (rows.len(), width), &Device::Cpu).unwrap()
}

/// Three sentence pairs of different lengths (ids < 64, the tiny vocabulary).
pub fn inputs(dtype: DType) -> Inputs {
    let src: [&[u32]; 3] = [&[5, 9, 12, 7, 3], &[8, 3], &[40, 41, 3]];
    let tgt_in: [&[u32]; 3] = [&[2, 11, 13, 17], &[2, 19], &[2, 23, 29]];
    let tgt_out = vec![vec![11, 13, 17, 3], vec![19, 3], vec![23, 29, 3]];
    Inputs {
        src: ids(&src, 5),
        src_mask: mask_from_lengths(&[5, 2, 3], 5, dtype, &Device::Cpu).unwrap(),
        tgt_in: ids(&tgt_in, 4),
        tgt_out,
    }
}

/// [`inputs`] as a training batch: targets as ids, and their mask.
pub fn pair_batch(dtype: DType) -> gnmt_model::PairBatch {
    let x = inputs(dtype);
    gnmt_model::PairBatch {
        tgt_out: ids(&x.tgt_out.iter().map(Vec::as_slice).collect::<Vec<_>>(), 4),
        tgt_mask: mask_from_lengths(&[4, 2, 3], 4, dtype, &Device::Cpu).unwrap(),
        src: x.src,
        src_mask: x.src_mask,
        tgt_in: x.tgt_in,
    }
}

/// The `tiny` preset's layout (3+3 layers, residual from layer 3) at 8 units and a 64-entry
/// vocabulary: what these tests were written for, small enough for finite differences.
pub fn tiny8() -> ModelConfig {
    ModelConfig {
        vocab_size: 64,
        embedding_dim: 8,
        hidden_size: 8,
        attention_size: 8,
        ..ModelConfig::tiny()
    }
}

/// [`tiny8`] with each attention query: the current bottom output (GNMT v2) and the paper's
/// previous one.
pub fn both_queries() -> [ModelConfig; 2] {
    let tiny = tiny8();
    [
        tiny.clone(),
        ModelConfig {
            attention_query: gnmt_model::AttentionQuery::Previous,
            ..tiny
        },
    ]
}

/// [`tiny8`] with tied embeddings: the decoder's (input and output), and all three.
pub fn tied() -> [ModelConfig; 2] {
    [TieEmbeddings::Decoder, TieEmbeddings::All].map(|tie_embeddings| ModelConfig {
        tie_embeddings,
        ..tiny8()
    })
}

/// Every layout the gradient tests cover: [`both_queries`] and [`tied`].
pub fn gradient_layouts() -> Vec<ModelConfig> {
    both_queries().into_iter().chain(tied()).collect()
}

/// The `tiny` preset's layout at 64 units (32-unit embeddings and attention).
pub fn tiny64() -> ModelConfig {
    ModelConfig {
        hidden_size: 64,
        embedding_dim: 32,
        attention_size: 32,
        ..ModelConfig::tiny()
    }
}

pub fn model(cfg: &ModelConfig, dtype: DType) -> (Gnmt, candle_nn::VarMap) {
    init_model(cfg, 7, 0.3, dtype, &Device::Cpu).unwrap()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// Summed negative log-likelihood of `tgt_out` (padding excluded): a scalar to differentiate.
pub fn nll(logits: &Tensor, tgt_out: &[Vec<u32>]) -> Tensor {
    let logp = candle_nn::ops::log_softmax(logits, 2).unwrap();
    let mut terms = Vec::new();
    for (b, row) in tgt_out.iter().enumerate() {
        for (t, &id) in row.iter().enumerate() {
            terms.push(
                logp.get(b)
                    .unwrap()
                    .get(t)
                    .unwrap()
                    .get(id as usize)
                    .unwrap(),
            );
        }
    }
    Tensor::stack(&terms, 0)
        .unwrap()
        .sum_all()
        .unwrap()
        .neg()
        .unwrap()
}

/// Decodes the three sources of [`inputs`] together (padded to 5) and each alone (no padding)
/// for the steps of their teacher-forced targets, and asserts that every step's top tokens,
/// their log-probabilities and the attention on real positions agree bit for bit: a sentence
/// must translate the same whatever batch it shares.
pub fn assert_decoding_ignores_batch_mates(m: &Gnmt) {
    let x = inputs(DType::F32);
    let src: [&[u32]; 3] = [&[5, 9, 12, 7, 3], &[8, 3], &[40, 41, 3]];
    let tgt: [&[u32]; 3] = [&[2, 11, 13, 17], &[2, 19], &[2, 23, 29]];
    let weights = m.decoding_weights().unwrap();
    let step_all = |src: &Tensor, mask: &Tensor, tokens: &[Vec<u32>]| {
        let mut state = m
            .start_state_with(&m.encode(src, mask).unwrap(), &weights)
            .unwrap();
        let mut steps = Vec::new();
        for step in tokens {
            let input = Tensor::new(step.as_slice(), &Device::Cpu).unwrap();
            let (top, attn, next) = m.step_top_tokens(&input, &state, 4).unwrap();
            steps.push((top, attn.to_vec2::<f32>().unwrap()));
            state = next;
        }
        steps
    };
    // Together: 4 steps, every row fed its own target (padded rows repeat their last token).
    let together_tokens: Vec<Vec<u32>> = (0..4)
        .map(|t| tgt.iter().map(|r| r[t.min(r.len() - 1)]).collect())
        .collect();
    let together = step_all(&x.src, &x.src_mask, &together_tokens);
    for (row, (s, t)) in src.iter().zip(tgt).enumerate() {
        let mask = mask_from_lengths(&[s.len()], s.len(), DType::F32, &Device::Cpu).unwrap();
        let tokens: Vec<Vec<u32>> = t.iter().map(|&id| vec![id]).collect();
        let alone = step_all(&ids(&[s], s.len()), &mask, &tokens);
        for (step, (top, attn)) in alone.iter().enumerate() {
            let (top_b, attn_b) = &together[step];
            assert_eq!(
                top.row(0).collect::<Vec<_>>(),
                top_b.row(row).collect::<Vec<_>>(),
                "sentence {row}, step {step}: top tokens"
            );
            assert_eq!(
                attn[0][..],
                attn_b[row][..s.len()],
                "sentence {row}, step {step}"
            );
        }
    }
}
