//! The corpora of a run: one pair of files for a bilingual model, or several language pairs for
//! a multilingual one (Johnson et al. 2017), each source sentence then starting with the tag of
//! its target language (`<2de>`), and the training pairs sampled across corpora by size with a
//! temperature ([`gnmt_tokenizer::batch::Mix`]).

use std::path::{Path, PathBuf};

use gnmt_tokenizer::batch::Mix;
use gnmt_tokenizer::{
    language_tag, read_parallel, Dataset, FilterOptions, LanguagePair, ParallelCorpus, Vocab,
};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// One parallel corpus: its files and, in a multilingual run, its direction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorpusSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pair: Option<LanguagePair>,
    pub src: PathBuf,
    pub tgt: PathBuf,
}

impl CorpusSpec {
    /// How messages name the corpus: its pair, or its files.
    pub fn label(&self) -> String {
        match &self.pair {
            Some(p) => p.to_string(),
            None => format!("{} + {}", self.src.display(), self.tgt.display()),
        }
    }
}

/// The target languages of the training corpora, in order of first appearance.
pub fn target_languages(train: &[CorpusSpec]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for pair in train.iter().filter_map(|c| c.pair.as_ref()) {
        if !out.contains(&pair.target) {
            out.push(pair.target.clone());
        }
    }
    out
}

/// The language tags a vocabulary trained for these corpora reserves: one per target when
/// there are several targets, none for a single one (nothing to choose between).
pub fn languages_to_reserve(train: &[CorpusSpec]) -> Vec<String> {
    let targets = target_languages(train);
    match targets.len() {
        0 | 1 => Vec::new(),
        _ => targets,
    }
}

/// Each corpus's source tag, in corpus order.
pub type Tags = Vec<Option<u32>>;

/// Checks the corpora against each other and against `vocab`; the tag each corpus's sources
/// start with (`None` everywhere for a bilingual vocabulary).
pub fn source_tags(
    train: &[CorpusSpec],
    valid: &[CorpusSpec],
    vocab: &Vocab,
) -> Result<(Tags, Tags)> {
    if train.is_empty() || valid.is_empty() {
        return Err(Error::Config(
            "a run needs training and validation corpora: --train SRC TGT and --valid SRC TGT, \
             or --pair LANGS SRC TGT and --valid-pair LANGS SRC TGT for a multilingual model"
                .into(),
        ));
    }
    let paired = train.iter().filter(|c| c.pair.is_some()).count();
    if paired != 0 && paired != train.len() || train.len() > 1 && paired == 0 {
        return Err(Error::Config(
            "with several training corpora, name the language pair of each: \
             --pair en-de SRC TGT"
                .into(),
        ));
    }
    let targets = target_languages(train);
    if vocab.languages().is_empty() {
        if targets.len() > 1 {
            return Err(Error::Config(format!(
                "the corpora translate into {} but the vocabulary has no language tags: train \
                 one with `gnmt vocab --languages {}`, or leave out --tokenizer",
                targets.join(", "),
                targets.join(",")
            )));
        }
        return Ok((vec![None; train.len()], vec![None; valid.len()]));
    }
    let tag = |c: &CorpusSpec, what: &str| -> Result<Option<u32>> {
        let pair = c.pair.as_ref().ok_or_else(|| {
            Error::Config(format!(
                "the model is multilingual ({}): name the language pair of the {what} corpus \
                 {} ({}-pair LANGS SRC TGT)",
                vocab.languages().join(", "),
                c.label(),
                if what == "training" { "--" } else { "--valid" }
            ))
        })?;
        vocab.tag_id(&pair.target).map(Some).ok_or_else(|| {
            Error::Config(format!(
                "{what} corpus {pair}: the vocabulary has no tag {} (its languages: {})",
                language_tag(&pair.target),
                vocab.languages().join(", ")
            ))
        })
    };
    let train_tags = train
        .iter()
        .map(|c| tag(c, "training"))
        .collect::<Result<_>>()?;
    let valid_tags = valid
        .iter()
        .map(|c| tag(c, "validation"))
        .collect::<Result<_>>()?;
    Ok((train_tags, valid_tags))
}

/// The training set: every corpus encoded (or read from the cache), tagged, one after the
/// other; and how an epoch samples them (`None` for one corpus: every pair once).
pub fn training_set(
    train: &[CorpusSpec],
    tags: &[Option<u32>],
    vocab: &Vocab,
    filter: &FilterOptions,
    cache: &Path,
    temperature: f64,
    say: &dyn Fn(&str),
) -> Result<(Dataset, Option<Mix>)> {
    let mut parts = Vec::with_capacity(train.len());
    for (corpus, &tag) in train.iter().zip(tags) {
        let (ds, _) = Dataset::prepare(&corpus.src, &corpus.tgt, vocab, filter, Some(cache))?;
        match train.len() {
            1 => say(&format!("train: {}", ds.summary)),
            _ => say(&format!("train {}: {}", corpus.label(), ds.summary)),
        }
        parts.push(match tag {
            Some(id) => ds.with_source_prefix(id),
            None => ds,
        });
    }
    if parts.len() == 1 {
        return Ok((parts.pop().expect("one"), None));
    }
    let mix = Mix {
        parts: parts.iter().map(Dataset::len).collect(),
        temperature,
    };
    let shares: Vec<String> = train
        .iter()
        .zip(mix.parts.iter().zip(mix.quotas()))
        .map(|(c, (n, q))| format!("{} {n} -> {q}", c.label()))
        .collect();
    say(&format!(
        "sampling by size^(1/{temperature}), pairs per epoch: {}",
        shares.join(", ")
    ));
    Ok((Dataset::concat(parts), Some(mix)))
}

/// A validation corpus: its pairs (for the loss), its text (for BLEU) and its tag.
pub struct ValidSet {
    pub label: Option<String>,
    pub dataset: Dataset,
    pub corpus: ParallelCorpus,
    pub tag: Option<u32>,
}

pub fn validation_sets(
    valid: &[CorpusSpec],
    tags: &[Option<u32>],
    vocab: &Vocab,
    filter: &FilterOptions,
    cache: &Path,
) -> Result<Vec<ValidSet>> {
    valid
        .iter()
        .zip(tags)
        .map(|(c, &tag)| {
            let (ds, _) = Dataset::prepare(&c.src, &c.tgt, vocab, filter, Some(cache))?;
            Ok(ValidSet {
                label: c.pair.as_ref().map(ToString::to_string),
                dataset: match tag {
                    Some(id) => ds.with_source_prefix(id),
                    None => ds,
                },
                corpus: read_parallel(&c.src, &c.tgt)?,
                tag,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use gnmt_tokenizer::VocabOptions;

    fn spec(pair: Option<&str>) -> CorpusSpec {
        CorpusSpec {
            pair: pair.map(|p| p.parse().unwrap()),
            src: "a.src".into(),
            tgt: "a.tgt".into(),
        }
    }

    fn vocab(languages: &[&str]) -> Vocab {
        Vocab::train_from_sentences(
            &gnmt_tokenizer::synthetic::toy_sentences(),
            &VocabOptions {
                size: 500,
                languages: languages.iter().map(|l| l.to_string()).collect(),
                ..Default::default()
            },
        )
        .unwrap()
    }

    #[test]
    fn tags_follow_each_corpus_target() {
        let train = [
            spec(Some("en-de")),
            spec(Some("en-fr")),
            spec(Some("de-fr")),
        ];
        assert_eq!(target_languages(&train), ["de", "fr"]);
        assert_eq!(languages_to_reserve(&train), ["de", "fr"]);
        assert!(languages_to_reserve(&train[..1]).is_empty());
        let v = vocab(&["de", "fr"]);
        let (t, val) = source_tags(&train, &[spec(Some("en-fr"))], &v).unwrap();
        assert_eq!(t, [Some(4), Some(5), Some(5)]);
        assert_eq!(val, [Some(5)]);
        // A bilingual run keeps untagged sources.
        let (t, _) = source_tags(&[spec(None)], &[spec(None)], &vocab(&[])).unwrap();
        assert_eq!(t, [None]);
    }

    #[test]
    fn inconsistent_corpora_are_refused_with_the_fix() {
        let fails = |train: &[CorpusSpec], valid: &[CorpusSpec], v: &Vocab| {
            source_tags(train, valid, v).unwrap_err().to_string()
        };
        let tagged = vocab(&["de", "fr"]);
        let two = [spec(Some("en-de")), spec(Some("en-fr"))];
        let err = fails(&two, &[spec(None)], &tagged);
        assert!(err.contains("--valid-pair LANGS SRC TGT"), "{err}");
        let err = fails(&[spec(Some("en-es"))], &[spec(Some("en-es"))], &tagged);
        assert!(
            err.contains("no tag <2es>") && err.contains("de, fr"),
            "{err}"
        );
        let err = fails(&two, &[spec(Some("en-de"))], &vocab(&[]));
        assert!(err.contains("gnmt vocab --languages de,fr"), "{err}");
        let err = fails(&[spec(None), spec(None)], &[spec(None)], &vocab(&[]));
        assert!(err.contains("name the language pair of each"), "{err}");
        let err = fails(&[], &[spec(None)], &vocab(&[]));
        assert!(err.contains("--valid SRC TGT"), "{err}");
    }
}
