//! Decoding with several models at once: at every step each member scores the next token and
//! beam search ranks their combination (Marian's and fairseq's ensembles). The members must
//! share the vocabulary; their architectures may differ.
//!
//! - Log-linear (Marian): the weighted mean of the members' log-probabilities.
//! - Linear (fairseq): the log of the weighted mean of their probabilities, computed as
//!   `m + log(sum_i w_i exp(lp_i - m))` with `m` the largest, so nothing underflows.
//!
//! Weights are normalised to sum to one. The coverage penalty reads the members' mean
//! attention. An ensemble of one model is that model, decoded on its fast path (top tokens
//! straight from the logits); an ensemble of a model with itself scores exactly as the model
//! does, bit for bit (the mean of equal values is that value).

use candle::Tensor;
use gnmt_model::{
    log_softmax_row, top_scores, top_tokens, DecoderState, DecodingWeights, Gnmt, OutputColumns,
    TopTokens,
};
use rayon::prelude::*;

use crate::shortlist::Shortlist;
use crate::Result;

/// A batch's shortlists, laid out for stepping: every member's output layer over the union
/// of the sentences' lists (one product per step for the whole batch), and where each
/// sentence's own list lies in it.
pub(crate) struct BatchLists {
    /// Per member: its output layer's columns for the union, ascending ids.
    columns: Vec<OutputColumns>,
    /// Per sentence: its list's vocabulary ids, ascending.
    ids: Vec<Vec<u32>>,
    /// Per sentence: the positions of its ids in the union.
    positions: Vec<Vec<u32>>,
}

impl BatchLists {
    /// Output-layer columns computed per decoder row.
    pub(crate) fn width(&self) -> usize {
        self.columns[0].ids().len()
    }

    /// The logits of each row of `runs` at its sentence's positions, run by run: row-major
    /// `[rows, list]` per run, read out of `logits [B, union]`.
    fn gather(&self, logits: &[f32], runs: &[(usize, usize)]) -> Vec<Vec<f32>> {
        let width = self.width();
        let mut row = 0;
        runs.iter()
            .map(|&(sent, rows)| {
                let positions = &self.positions[sent];
                let mut out = Vec::with_capacity(rows * positions.len());
                for r in row..row + rows {
                    let logits = &logits[r * width..(r + 1) * width];
                    out.extend(positions.iter().map(|&p| logits[p as usize]));
                }
                row += rows;
                out
            })
            .collect()
    }
}

/// How an ensemble combines its members' next-token distributions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Combination {
    /// Weighted mean of log-probabilities (Marian).
    #[default]
    LogLinear,
    /// Log of the weighted mean of probabilities (fairseq).
    Linear,
}

/// One model of an ensemble: the model, its decoder's weights laid out for stepping, and its
/// weight in the combination.
#[derive(Clone)]
pub struct Member {
    pub model: Gnmt,
    pub weights: DecodingWeights,
    pub weight: f64,
}

/// The models that decode together.
#[derive(Clone)]
pub struct Ensemble {
    members: Vec<Member>,
    combination: Combination,
}

impl Ensemble {
    /// One model on its own.
    pub fn single(model: Gnmt, weights: DecodingWeights) -> Self {
        Self {
            members: vec![Member {
                model,
                weights,
                weight: 1.0,
            }],
            combination: Combination::LogLinear,
        }
    }

    /// Several models; every weight must be positive and finite. The caller checks that the
    /// members share a vocabulary (the ids mean the same tokens).
    pub fn new(
        members: Vec<Member>,
        combination: Combination,
    ) -> std::result::Result<Self, String> {
        if members.is_empty() {
            return Err("an ensemble needs at least one model".into());
        }
        let vocab = members[0].model.config().vocab_size;
        for (i, m) in members.iter().enumerate() {
            if !(m.weight.is_finite() && m.weight > 0.0) {
                return Err(format!(
                    "model {}'s weight {} must be positive and finite",
                    i + 1,
                    m.weight
                ));
            }
            if m.model.config().vocab_size != vocab {
                return Err(format!(
                    "model {} has {} vocabulary entries, model 1 has {vocab}",
                    i + 1,
                    m.model.config().vocab_size
                ));
            }
        }
        Ok(Self {
            members,
            combination,
        })
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The first member (whose configuration describes the ensemble's vocabulary).
    pub fn first(&self) -> &Gnmt {
        &self.members[0].model
    }

    /// Every member's decoder state before the first target token, for source `src` with
    /// `mask`.
    pub(crate) fn start(&self, src: &Tensor, mask: &Tensor) -> Result<Vec<DecoderState>> {
        self.members
            .iter()
            .map(|m| {
                let encoded = m.model.encode(src, mask)?;
                Ok(m.model.start_state_with(&encoded, &m.weights)?)
            })
            .collect()
    }

    /// One step for `tokens [B]`: the `k` best next tokens of every row under the combined
    /// scores, the members' mean attention `[B, S]`, and every member's next state.
    pub(crate) fn step(
        &self,
        tokens: &Tensor,
        states: &[DecoderState],
        k: usize,
    ) -> Result<(TopTokens, Tensor, Vec<DecoderState>)> {
        if let [only] = self.members.as_slice() {
            let (top, attention, next) = only.model.step_top_tokens(tokens, &states[0], k)?;
            return Ok((top, attention, vec![next]));
        }
        let total: f64 = self.members.iter().map(|m| m.weight).sum();
        let mut log_probs: Vec<Vec<f32>> = Vec::with_capacity(self.members.len());
        let mut attention: Option<Tensor> = None;
        let mut next = Vec::with_capacity(self.members.len());
        for (m, state) in self.members.iter().zip(states) {
            let (lp, att, n) = m.model.step(tokens, state)?;
            log_probs.push(lp.flatten_all()?.to_vec1()?);
            attention = Some(match attention {
                None => att,
                Some(sum) => (sum + att)?,
            });
            next.push(n);
        }
        let share: Vec<f64> = self.members.iter().map(|m| m.weight / total).collect();
        let combined = combine(&log_probs, &share, self.combination);
        let vocab = self.first().config().vocab_size;
        let attention = (attention.expect("two or more members") / self.members.len() as f64)?;
        Ok((top_scores(&combined, vocab, k), attention, next))
    }

    /// The shortlists of `sources` laid out for every member.
    pub(crate) fn batch_lists(
        &self,
        sources: &[Vec<u32>],
        shortlist: &Shortlist,
    ) -> Result<BatchLists> {
        let ids: Vec<Vec<u32>> = sources.iter().map(|s| shortlist.for_sentence(s)).collect();
        let mut union: Vec<u32> = ids.iter().flatten().copied().collect();
        union.sort_unstable();
        union.dedup();
        let positions = ids
            .iter()
            .map(|list| {
                list.iter()
                    .map(|id| union.binary_search(id).expect("in the union") as u32)
                    .collect()
            })
            .collect();
        let columns = self
            .members
            .iter()
            .map(|m| Ok(m.model.output_columns(&union)?))
            .collect::<Result<_>>()?;
        Ok(BatchLists {
            columns,
            ids,
            positions,
        })
    }

    /// [`Ensemble::step`] over shortlists: the decoder rows come as `runs` of `(sentence,
    /// rows)`, and each row chooses among its own sentence's list only (at most `k` of it),
    /// normalised over that list. A sentence's scores are computed
    /// from its own list alone, whatever else the batch holds.
    pub(crate) fn step_shortlisted(
        &self,
        tokens: &Tensor,
        states: &[DecoderState],
        k: usize,
        runs: &[(usize, usize)],
        lists: &BatchLists,
    ) -> Result<(TopTokens, Tensor, Vec<DecoderState>)> {
        // A list shorter than `k` gives its rows fewer candidates, padded with none (-inf), so
        // no sentence's width depends on another's list.
        let ranked = |scores: Vec<Vec<f32>>, final_scores: bool| {
            let parts = scores
                .iter()
                .zip(runs)
                .map(|(rows, &(sent, _))| {
                    let ids = &lists.ids[sent];
                    let top = match final_scores {
                        true => top_scores(rows, ids.len(), k),
                        false => top_tokens(rows, ids.len(), k),
                    };
                    top.renamed(ids).padded_to(k)
                })
                .collect();
            TopTokens::concat(parts)
        };
        if let [only] = self.members.as_slice() {
            let (logits, attention, next) =
                only.model
                    .step_column_logits(tokens, &states[0], &lists.columns[0])?;
            return Ok((
                ranked(lists.gather(&logits, runs), false),
                attention,
                vec![next],
            ));
        }
        let total: f64 = self.members.iter().map(|m| m.weight).sum();
        // Per member, per run: row-major log-probabilities over the run's list.
        let mut log_probs: Vec<Vec<Vec<f32>>> = Vec::with_capacity(self.members.len());
        let mut attention: Option<Tensor> = None;
        let mut next = Vec::with_capacity(self.members.len());
        for ((m, state), columns) in self.members.iter().zip(states).zip(&lists.columns) {
            let (logits, att, n) = m.model.step_column_logits(tokens, state, columns)?;
            let mut runs_lp = lists.gather(&logits, runs);
            for (rows, &(sent, _)) in runs_lp.iter_mut().zip(runs) {
                rows.chunks_mut(lists.ids[sent].len())
                    .for_each(log_softmax_row);
            }
            log_probs.push(runs_lp);
            attention = Some(match attention {
                None => att,
                Some(sum) => (sum + att)?,
            });
            next.push(n);
        }
        let share: Vec<f64> = self.members.iter().map(|m| m.weight / total).collect();
        let combined = (0..runs.len())
            .map(|g| {
                let members: Vec<&[f32]> = log_probs.iter().map(|lp| lp[g].as_slice()).collect();
                combine(&members, &share, self.combination)
            })
            .collect();
        let attention = (attention.expect("two or more members") / self.members.len() as f64)?;
        Ok((ranked(combined, true), attention, next))
    }

    /// Every member's state reordered to the rows `parents` (beam search's survivors).
    pub(crate) fn reorder(states: &[DecoderState], parents: &Tensor) -> Result<Vec<DecoderState>> {
        states.iter().map(|s| Ok(s.reorder(parents)?)).collect()
    }
}

/// The members' log-probabilities (`share`: their normalised weights) combined element by
/// element, in f64 (on several threads: each element alone, so the result does not depend on
/// how they split).
fn combine<L: AsRef<[f32]> + Sync>(
    log_probs: &[L],
    share: &[f64],
    combination: Combination,
) -> Vec<f32> {
    let n = log_probs[0].as_ref().len();
    (0..n)
        .into_par_iter()
        .with_min_len(1 << 14)
        .map(|j| {
            let values = log_probs.iter().map(|lp| lp.as_ref()[j] as f64);
            let value = match combination {
                Combination::LogLinear => values.zip(share).map(|(v, w)| w * v).sum::<f64>(),
                Combination::Linear => {
                    let m = values.clone().fold(f64::NEG_INFINITY, f64::max);
                    if m == f64::NEG_INFINITY {
                        m
                    } else {
                        m + values
                            .zip(share)
                            .map(|(v, w)| w * (v - m).exp())
                            .sum::<f64>()
                            .ln()
                    }
                }
            };
            value as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_members_combine_to_themselves_exactly() {
        let lp = vec![-0.1f32, -2.5, -7.25, -30.0, f32::NEG_INFINITY];
        for c in [Combination::LogLinear, Combination::Linear] {
            let got = combine(&[lp.clone(), lp.clone()], &[0.5, 0.5], c);
            assert_eq!(got, lp, "{c:?}");
        }
    }

    #[test]
    fn the_two_rules_follow_their_definitions() {
        let (a, b) = (
            vec![(0.2f32).ln(), (0.8f32).ln()],
            vec![(0.6f32).ln(), (0.4f32).ln()],
        );
        let share = [0.25, 0.75];
        let linear = combine(&[a.clone(), b.clone()], &share, Combination::Linear);
        for (got, want) in linear
            .iter()
            .zip([0.25 * 0.2 + 0.75 * 0.6, 0.25 * 0.8 + 0.75 * 0.4])
        {
            assert!((got.exp() - want as f32).abs() < 1e-6, "{got} {want}");
        }
        let log_linear = combine(&[a.clone(), b.clone()], &share, Combination::LogLinear);
        for j in 0..2 {
            let want = 0.25 * a[j] as f64 + 0.75 * b[j] as f64;
            assert!((log_linear[j] as f64 - want).abs() < 1e-6);
        }
    }

    #[test]
    fn weights_must_be_positive_and_the_vocabularies_equal() {
        let cfg = crate::test_config();
        let model = |vocab| {
            let cfg = gnmt_model::ModelConfig {
                vocab_size: vocab,
                ..cfg.clone()
            };
            let m = gnmt_model::init_model(&cfg, 1, 0.5, candle::DType::F32, &candle::Device::Cpu)
                .unwrap()
                .0;
            let weights = m.decoding_weights().unwrap();
            (m, weights)
        };
        let member = |vocab, weight| {
            let (model, weights) = model(vocab);
            Member {
                model,
                weights,
                weight,
            }
        };
        assert!(Ensemble::new(vec![member(64, 1.0), member(64, 2.0)], Combination::Linear).is_ok());
        let e = Ensemble::new(vec![member(64, 1.0), member(64, 0.0)], Combination::Linear);
        assert!(e.err().unwrap().contains("model 2's weight 0"));
        let e = Ensemble::new(
            vec![member(64, 1.0), member(65, 1.0)],
            Combination::LogLinear,
        );
        assert!(e.err().unwrap().contains("model 2 has 65"));
        assert!(Ensemble::new(Vec::new(), Combination::Linear).is_err());
    }
}
