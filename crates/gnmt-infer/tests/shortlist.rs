//! Decoding over shortlists: a list holding the whole vocabulary changes nothing, bit for bit;
//! a real list keeps every sentence to its own pieces whatever batch it is in; an ensemble of
//! a model with itself decodes as the model.

use candle::{DType, Device};
use gnmt_infer::{
    beam_search_shortlisted, BeamOptions, Combination, Ensemble, Hypothesis, LengthLimit, Member,
    Shortlist, Work,
};
use gnmt_model::{init_model, Gnmt, ModelConfig};

const VOCAB: usize = 64;

fn model(seed: u64) -> Gnmt {
    let cfg = ModelConfig {
        vocab_size: VOCAB,
        embedding_dim: 8,
        hidden_size: 8,
        attention_size: 8,
        ..ModelConfig::tiny()
    };
    init_model(&cfg, seed, 0.8, DType::F32, &Device::Cpu)
        .unwrap()
        .0
}

fn single(m: &Gnmt) -> Ensemble {
    Ensemble::single(m.clone(), m.decoding_weights().unwrap())
}

fn sources() -> Vec<Vec<u32>> {
    vec![
        vec![5, 6, 7, 8, 9, 10],
        vec![11],
        vec![12, 13, 14],
        vec![40, 41, 42, 43],
        vec![20, 5, 33],
    ]
}

fn options() -> BeamOptions {
    BeamOptions {
        beam_size: 4,
        n_best: 3,
        limit: LengthLimit { a: 1.5, b: 4 },
        ..Default::default()
    }
}

fn decode(e: &Ensemble, sources: &[Vec<u32>], list: Option<&Shortlist>) -> Vec<Vec<Hypothesis>> {
    let work = Work::default();
    beam_search_shortlisted(
        e,
        &work,
        sources,
        &options(),
        list,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap()
}

/// Frequent pieces 4..=9; source piece `s` translates to `s + 20` and `s + 21`.
fn real_list() -> Shortlist {
    let translations = (0..VOCAB as u32)
        .map(|s| {
            [s + 20, s + 21]
                .into_iter()
                .filter(|&t| (t as usize) < VOCAB)
                .collect()
        })
        .collect();
    Shortlist::from_lists((4..10).collect(), translations, VOCAB, 4)
}

#[test]
fn a_shortlist_of_the_whole_vocabulary_decodes_exactly_as_none() {
    let m = model(3);
    let everything = Shortlist::from_lists((0..VOCAB as u32).collect(), Vec::new(), VOCAB, 0);
    assert_eq!(everything.for_sentence(&[5]).len(), VOCAB);
    let e = single(&m);
    assert_eq!(
        decode(&e, &sources(), Some(&everything)),
        decode(&e, &sources(), None)
    );
}

#[test]
fn each_sentence_chooses_among_its_own_list_whatever_its_batch() {
    let m = model(4);
    let list = real_list();
    let e = single(&m);
    let all = decode(&e, &sources(), Some(&list));
    let unrestricted = decode(&e, &sources(), None);
    let mut differs = false;
    for (i, s) in sources().iter().enumerate() {
        let allowed = list.for_sentence(s);
        for h in &all[i] {
            assert!(
                h.tokens.iter().all(|t| allowed.contains(t)),
                "sentence {i}: {h:?}"
            );
        }
        let alone = decode(&e, std::slice::from_ref(s), Some(&list));
        assert_eq!(alone[0], all[i], "sentence {i} alone and in the batch");
        differs |= all[i] != unrestricted[i];
    }
    // The lists are short enough to matter for this random model.
    assert!(differs);
}

#[test]
fn an_ensemble_of_a_model_with_itself_decodes_as_the_model_over_shortlists() {
    let m = model(5);
    let list = real_list();
    let member = || Member {
        model: m.clone(),
        weights: m.decoding_weights().unwrap(),
        weight: 1.0,
    };
    let alone = decode(&single(&m), &sources(), Some(&list));
    for combination in [Combination::LogLinear, Combination::Linear] {
        let pair = Ensemble::new(vec![member(), member()], combination).unwrap();
        let both = decode(&pair, &sources(), Some(&list));
        assert_eq!(both.len(), alone.len());
        for (a, b) in alone.iter().zip(&both) {
            assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(b) {
                assert_eq!(x.tokens, y.tokens);
                assert_eq!(x.score, y.score);
                assert_eq!(x.log_prob, y.log_prob);
            }
        }
    }
}

/// A list shorter than the beam (no frequent pieces, no table: `</s>` and the sentence's own
/// pieces) gives its sentence fewer candidates, without narrowing the other sentences' beams:
/// each decodes as it does alone.
#[test]
fn a_list_shorter_than_the_beam_narrows_only_its_own_sentence() {
    let m = model(6);
    let tiny = Shortlist::from_lists(Vec::new(), Vec::new(), VOCAB, 4);
    assert!(tiny.for_sentence(&[11]).len() < options().beam_size);
    let e = single(&m);
    let mixed = [vec![11], vec![5, 6, 7, 8, 9, 10]];
    let all = decode(&e, &mixed, Some(&tiny));
    for (i, s) in mixed.iter().enumerate() {
        let alone = decode(&e, std::slice::from_ref(s), Some(&tiny));
        assert_eq!(alone[0], all[i], "sentence {i}");
        let allowed = tiny.for_sentence(s);
        assert!(all[i]
            .iter()
            .all(|h| h.tokens.iter().all(|t| allowed.contains(t))));
    }
}
