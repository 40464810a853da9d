//! The shared source/target subword vocabulary.
//!
//! GNMT splits words into "wordpieces" that carry a word-boundary marker, so that text can be
//! rebuilt from pieces without guessing where spaces go. We get the same property from the
//! `tokenizers` crate with a Metaspace pre-tokenizer (`▁` starts every word) over a BPE
//! (default) or Unigram model, NFKC normalisation and whitespace folding.
//!
//! Characters never seen in training are not lost: after training we append the 256 byte
//! pieces `<0x00>`..`<0xFF>` to the vocabulary and switch on byte fallback, so an unseen
//! character is encoded as its UTF-8 bytes and decoded back to itself. `<unk>` exists (with a
//! fixed id) but the encoder never produces it.
//!
//! The special tokens have fixed ids: `<pad>` 0, `<unk>` 1, `<s>` 2, `</s>` 3. They are never
//! matched inside user text: a sentence that literally contains `</s>` is encoded as ordinary
//! pieces, so input text cannot end a sentence early or vanish on decoding.
//!
//! A multilingual vocabulary also reserves one language tag per target language (`<2de>`,
//! `<2fr>`, see [`crate::language`]) with the ids right after the special tokens, in the order
//! given; like the special tokens, they are never produced from user text and never decoded.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::metaspace::Metaspace as MetaspaceDecoder;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::unigram::{Unigram, UnigramTrainer};
use tokenizers::models::TrainerWrapper;
use tokenizers::normalizers::{Replace, Sequence as NormalizerSequence, Strip, NFKC};
use tokenizers::pre_tokenizers::metaspace::Metaspace;
use tokenizers::pre_tokenizers::punctuation::Punctuation;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::{AddedToken, Tokenizer};

use crate::io::CheckedLines;
use crate::language::{check_language_code, language_tag, tag_language};
use crate::{Error, Result};

/// Id of the padding token.
pub const PAD_ID: u32 = 0;
/// Id of the unknown token (kept for compatibility; byte fallback means it is never produced).
pub const UNK_ID: u32 = 1;
/// Id of the begin-of-sentence token (first decoder input).
pub const BOS_ID: u32 = 2;
/// Id of the end-of-sentence token.
pub const EOS_ID: u32 = 3;
/// The special tokens, in id order.
pub const SPECIAL_TOKENS: [&str; 4] = ["<pad>", "<unk>", "<s>", "</s>"];

const BYTE_PIECES: usize = 256;
/// The smallest vocabulary that leaves room for learned pieces besides the special tokens and
/// the byte pieces.
pub const MIN_VOCAB_SIZE: usize = SPECIAL_TOKENS.len() + BYTE_PIECES + 17;

/// Which subword model to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SubwordModel {
    /// Byte-pair encoding (merges learned bottom-up). The default: fast to train and to apply.
    #[default]
    Bpe,
    /// SentencePiece-style unigram language model.
    Unigram,
}

impl std::str::FromStr for SubwordModel {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "bpe" => Ok(Self::Bpe),
            "unigram" => Ok(Self::Unigram),
            other => Err(format!(
                "unknown subword model {other:?} (expected bpe or unigram)"
            )),
        }
    }
}

/// Options for [`Vocab::train`].
#[derive(Debug, Clone)]
pub struct VocabOptions {
    /// Total vocabulary size, special tokens and the 256 byte pieces included.
    pub size: usize,
    pub model: SubwordModel,
    /// Pieces seen fewer times than this are not merged (BPE only).
    pub min_frequency: u64,
    /// Target languages of a multilingual model: each gets a reserved tag (`<2de>`) with
    /// the id `4 + its position here`. Empty for a bilingual model.
    pub languages: Vec<String>,
    /// Split punctuation from words before learning pieces (`liegt.` becomes `▁liegt` `.`), as
    /// Moses tokenization before BPE does: no piece then joins a word to its punctuation, so
    /// `▁Straße` and `▁Straße.` are one piece, not two. Decoding is unchanged and lossless.
    pub split_punctuation: bool,
}

impl Default for VocabOptions {
    fn default() -> Self {
        Self {
            size: 8000,
            model: SubwordModel::Bpe,
            min_frequency: 2,
            languages: Vec::new(),
            split_punctuation: false,
        }
    }
}

/// A trained shared vocabulary: text <-> token ids.
#[derive(Clone)]
pub struct Vocab {
    tokenizer: Tokenizer,
    /// sha256 of the canonical `tokenizer.json` text; stored in checkpoints and datasets.
    hash: String,
    byte_piece_start: u32,
    /// The languages of the tags at ids `4..4 + languages.len()`.
    languages: Vec<String>,
}

impl std::fmt::Debug for Vocab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vocab")
            .field("size", &self.size())
            .field("hash", &self.hash)
            .finish()
    }
}

impl Vocab {
    /// Trains a vocabulary on the given text files, plain or gzip (source and target together,
    /// so the vocabulary is shared). The files are read here, not by `tokenizers`, so that bad
    /// input is reported with its file, line and byte offset; the trainer sees each line with
    /// its ending, as `tokenizers`' own file reader gives it.
    pub fn train_from_files(files: &[PathBuf], options: &VocabOptions) -> Result<Self> {
        let error = Mutex::new(None);
        let lines = CheckedLines::new(files, &error)?;
        let trained = Self::train_with(options, |tk, trainer| tk.train(trainer, lines).map(|_| ()));
        // A bad line ended the input early: whatever was trained on the part before it is
        // not what was asked for.
        match error.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => Err(e),
            None => trained,
        }
    }

    /// Trains a vocabulary on in-memory sentences (tests, synthetic tasks).
    pub fn train_from_sentences<S: AsRef<str> + Sync>(
        sentences: &[S],
        options: &VocabOptions,
    ) -> Result<Self> {
        Self::train_with(options, |tk, trainer| {
            tk.train(trainer, sentences.iter().map(|s| s.as_ref()))
                .map(|_| ())
        })
    }

    fn train_with<F>(options: &VocabOptions, run: F) -> Result<Self>
    where
        F: FnOnce(&mut Tokenizer, &mut TrainerWrapper) -> tokenizers::Result<()>,
    {
        for (i, language) in options.languages.iter().enumerate() {
            check_language_code(language).map_err(Error::Config)?;
            if options.languages[..i].contains(language) {
                return Err(Error::Config(format!(
                    "language {language:?} is listed twice"
                )));
            }
        }
        let tags = options.languages.len();
        if options.size < MIN_VOCAB_SIZE + tags {
            return Err(Error::Config(format!(
                "vocabulary size {} is too small: {} ids are reserved for special tokens, \
                 language tags and byte pieces",
                options.size,
                SPECIAL_TOKENS.len() + tags + BYTE_PIECES
            )));
        }
        let learned = options.size - BYTE_PIECES;
        let specials: Vec<AddedToken> = SPECIAL_TOKENS
            .iter()
            .map(|t| t.to_string())
            .chain(options.languages.iter().map(|l| language_tag(l)))
            .map(|t| AddedToken::from(t, true))
            .collect();
        let (mut tk, mut trainer): (Tokenizer, TrainerWrapper) = match options.model {
            SubwordModel::Bpe => (
                Tokenizer::new(
                    BPE::builder()
                        .unk_token("<unk>".into())
                        .build()
                        .map_err(tk_err)?,
                ),
                BpeTrainerBuilder::new()
                    .vocab_size(learned)
                    .min_frequency(options.min_frequency)
                    .show_progress(false)
                    .special_tokens(specials)
                    .build()
                    .into(),
            ),
            SubwordModel::Unigram => (
                Tokenizer::new(Unigram::default()),
                UnigramTrainer::builder()
                    .vocab_size(learned as u32)
                    .unk_token(Some("<unk>".into()))
                    .show_progress(false)
                    .special_tokens(specials)
                    .build()
                    .map_err(|e| Error::Tokenizer(e.to_string()))?
                    .into(),
            ),
        };
        configure_pipeline(&mut tk, options.split_punctuation)?;
        run(&mut tk, &mut trainer).map_err(tk_err)?;
        let tk = add_byte_fallback(&tk)?;
        Self::from_tokenizer(tk)
    }

    /// Loads `tokenizer.json` and checks that it is one of ours (fixed special ids, byte
    /// fallback).
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text).map_err(|e| Error::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// Parses the text of a `tokenizer.json`.
    pub fn from_json(text: &str) -> Result<Self> {
        let tk: Tokenizer = text.parse().map_err(tk_err)?;
        Self::from_tokenizer(tk)
    }

    fn from_tokenizer(mut tk: Tokenizer) -> Result<Self> {
        for (id, token) in SPECIAL_TOKENS.iter().enumerate() {
            if tk.token_to_id(token) != Some(id as u32) {
                return Err(Error::Tokenizer(format!(
                    "special token {token} must have id {id}, found {:?}",
                    tk.token_to_id(token)
                )));
            }
        }
        let byte_piece_start = tk.token_to_id("<0x00>").ok_or_else(|| {
            Error::Tokenizer("no byte pieces <0x00>..<0xFF>: not a gnmt vocabulary".into())
        })?;
        for b in 0..BYTE_PIECES as u32 {
            if tk.token_to_id(&byte_piece(b as u8)) != Some(byte_piece_start + b) {
                return Err(Error::Tokenizer(format!(
                    "byte piece {} is missing or out of order",
                    byte_piece(b as u8)
                )));
            }
        }
        let languages = reserved_languages(&tk)?;
        // Not serialised by `tokenizers`: special tokens in user text are plain text.
        tk.set_encode_special_tokens(true);
        let json = tk.to_string(false).map_err(tk_err)?;
        let hash = sha256_hex(json.as_bytes());
        Ok(Self {
            tokenizer: tk,
            hash,
            byte_piece_start,
            languages,
        })
    }

    /// Writes `tokenizer.json` atomically (temp file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = self.to_json()?;
        crate::io::write_atomic(path, json.as_bytes())
    }

    /// The canonical JSON text (what [`Vocab::hash`] is computed over).
    pub fn to_json(&self) -> Result<String> {
        self.tokenizer.to_string(true).map_err(tk_err)
    }

    /// Vocabulary size, special tokens and byte pieces included: the model's embedding rows.
    pub fn size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// sha256 (hex) of the tokenizer's canonical serialisation.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The target languages this vocabulary has tags for (empty: a bilingual vocabulary).
    pub fn languages(&self) -> &[String] {
        &self.languages
    }

    /// The id of the tag that asks for `language`, if the vocabulary has one.
    pub fn tag_id(&self, language: &str) -> Option<u32> {
        self.languages
            .iter()
            .position(|l| l == language)
            .map(|i| (SPECIAL_TOKENS.len() + i) as u32)
    }

    /// Token ids of one sentence, without `<s>`/`</s>`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.tokenizer.encode(text, false).map_err(tk_err)?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of a sequence of ids. Special tokens (`<pad>`, `<s>`, `</s>`, `<unk>`) are dropped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids, true).map_err(tk_err)
    }

    /// The pieces of a sentence as strings (for display and attention plots).
    pub fn pieces(&self, ids: &[u32]) -> Vec<String> {
        ids.iter()
            .map(|&id| {
                self.tokenizer
                    .id_to_token(id)
                    .unwrap_or_else(|| format!("<id {id}>"))
            })
            .collect()
    }

    /// The piece with id `id`, if the vocabulary has one.
    pub fn piece(&self, id: u32) -> Option<String> {
        self.tokenizer.id_to_token(id)
    }

    /// The id of the piece `piece` (special tokens and tags included), if any.
    pub fn piece_id(&self, piece: &str) -> Option<u32> {
        self.tokenizer.token_to_id(piece)
    }

    /// True for the ids that no text encodes to and no translation should contain: the
    /// special tokens and the language tags.
    pub fn is_reserved(&self, id: u32) -> bool {
        (id as usize) < SPECIAL_TOKENS.len() + self.languages.len()
    }

    /// True for the 256 byte-fallback pieces.
    pub fn is_byte_piece(&self, id: u32) -> bool {
        (self.byte_piece_start..self.byte_piece_start + BYTE_PIECES as u32).contains(&id)
    }

    /// The text every encoding starts from: NFKC, whitespace runs folded to one space,
    /// trimmed. `decode(encode(x)) == normalize(x)` for every string.
    pub fn normalize(&self, text: &str) -> Result<String> {
        let n = self
            .tokenizer
            .get_normalizer()
            .ok_or_else(|| Error::Tokenizer("no normalizer".into()))?;
        let mut s = tokenizers::NormalizedString::from(text);
        use tokenizers::Normalizer;
        n.normalize(&mut s).map_err(tk_err)?;
        Ok(s.get().to_string())
    }
}

/// The languages of the tags right after the special tokens: reserved (special) entries named
/// `<2xx>`, at consecutive ids; a tag anywhere else would be a foreign vocabulary's.
fn reserved_languages(tk: &Tokenizer) -> Result<Vec<String>> {
    let added = tk.get_added_tokens_decoder();
    let is_tag = |id: u32| {
        added
            .get(&id)
            .filter(|t| t.special)
            .and_then(|t| tag_language(&t.content).map(str::to_string))
    };
    let first = SPECIAL_TOKENS.len() as u32;
    let languages: Vec<String> = (first..).map_while(is_tag).collect();
    let end = first + languages.len() as u32;
    if let Some((id, token)) = added
        .iter()
        .find(|(id, t)| **id >= end && t.special && tag_language(&t.content).is_some())
    {
        return Err(Error::Tokenizer(format!(
            "language tag {} has id {id}: tags must follow the special tokens at ids {first}..",
            token.content
        )));
    }
    Ok(languages)
}

/// NFKC, whitespace folding, Metaspace pieces (each punctuation mark its own piece when
/// `split_punctuation`), and the matching decoder.
fn configure_pipeline(tk: &mut Tokenizer, split_punctuation: bool) -> Result<()> {
    let fold = Replace::new(
        tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()),
        " ",
    )
    .map_err(tk_err)?;
    tk.with_normalizer(Some(NormalizerSequence::new(vec![
        NFKC.into(),
        fold.into(),
        Strip::new(true, true).into(),
    ])))
    .map_err(tk_err)?;
    if split_punctuation {
        // Metaspace first, so a word keeps its `▁` and the marks after it have none: the
        // Metaspace decoder then joins them back without a space.
        tk.with_pre_tokenizer(Some(PreTokenizerSequence::new(vec![
            Metaspace::default().into(),
            Punctuation::default().into(),
        ])));
    } else {
        tk.with_pre_tokenizer(Some(Metaspace::default()));
    }
    tk.with_decoder(Some(DecoderSequence::new(vec![
        ByteFallback::new().into(),
        MetaspaceDecoder::default().into(),
    ])));
    Ok(())
}

/// Appends the byte pieces to a trained model and switches byte fallback on.
///
/// Done on the JSON form because neither trainer knows about byte fallback; the JSON is the
/// stable public format, so this survives `tokenizers` upgrades better than private fields.
fn add_byte_fallback(tk: &Tokenizer) -> Result<Tokenizer> {
    let mut json: Value = serde_json::from_str(&tk.to_string(false).map_err(tk_err)?)
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
    let model = json
        .get_mut("model")
        .ok_or_else(|| Error::Tokenizer("no model".into()))?;
    let kind = model
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    match kind.as_str() {
        "BPE" => {
            let vocab = model
                .get_mut("vocab")
                .and_then(Value::as_object_mut)
                .ok_or_else(|| Error::Tokenizer("BPE model without vocab".into()))?;
            let next = vocab
                .values()
                .filter_map(Value::as_u64)
                .max()
                .map_or(0, |m| m + 1);
            for b in 0..BYTE_PIECES {
                vocab.insert(byte_piece(b as u8), Value::from(next + b as u64));
            }
        }
        "Unigram" => {
            let vocab = model
                .get_mut("vocab")
                .and_then(Value::as_array_mut)
                .ok_or_else(|| Error::Tokenizer("Unigram model without vocab".into()))?;
            // Byte pieces must never win over real pieces: give them a very low score.
            for b in 0..BYTE_PIECES {
                vocab.push(serde_json::json!([byte_piece(b as u8), -100.0]));
            }
        }
        other => {
            return Err(Error::Tokenizer(format!(
                "unsupported model type {other:?}"
            )))
        }
    }
    model["byte_fallback"] = Value::Bool(true);
    json.to_string().parse().map_err(tk_err)
}

fn byte_piece(b: u8) -> String {
    format!("<0x{b:02X}>")
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn tk_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> Vocab {
        let sents = crate::synthetic::toy_sentences();
        Vocab::train_from_sentences(
            &sents,
            &VocabOptions {
                size: 600,
                ..Default::default()
            },
        )
        .unwrap()
    }

    #[test]
    fn special_ids_are_fixed() {
        let v = toy();
        for (id, t) in SPECIAL_TOKENS.iter().enumerate() {
            assert_eq!(v.tokenizer.token_to_id(t), Some(id as u32));
        }
        assert_eq!(v.size(), 600);
    }

    #[test]
    fn special_token_text_in_input_is_plain_text() {
        let v = toy();
        let ids = v.encode("a </s> b <pad>").unwrap();
        assert!(ids.iter().all(|&id| id > EOS_ID), "{ids:?}");
        assert_eq!(v.decode(&ids).unwrap(), "a </s> b <pad>");
    }

    #[test]
    fn unseen_characters_use_byte_pieces() {
        let v = toy();
        let ids = v.encode("🦀").unwrap();
        assert_eq!(ids.iter().filter(|&&i| v.is_byte_piece(i)).count(), 4);
        assert!(!ids.contains(&UNK_ID));
        assert_eq!(v.decode(&ids).unwrap(), "🦀");
    }

    #[test]
    fn unigram_round_trips_too() {
        let sents = crate::synthetic::toy_sentences();
        let v = Vocab::train_from_sentences(
            &sents,
            &VocabOptions {
                size: 400,
                model: SubwordModel::Unigram,
                min_frequency: 1,
                ..Default::default()
            },
        )
        .unwrap();
        let s = "The dog runs across the snowy field 🐕.";
        assert_eq!(v.decode(&v.encode(s).unwrap()).unwrap(), s);
    }

    #[test]
    fn split_punctuation_keeps_marks_apart_and_round_trips() {
        let sents = crate::synthetic::toy_sentences();
        let options = |split_punctuation| VocabOptions {
            size: 600,
            split_punctuation,
            ..Default::default()
        };
        let attached = |v: &Vocab| {
            let learned =
                (0..v.size() as u32).filter(|&id| !v.is_reserved(id) && !v.is_byte_piece(id));
            let pieces: Vec<String> = learned.filter_map(|id| v.piece(id)).collect();
            pieces
                .iter()
                .filter(|p| p.chars().any(char::is_alphanumeric))
                .filter(|p| p.chars().any(|c| c.is_ascii_punctuation()))
                .count()
        };
        let joined = Vocab::train_from_sentences(&sents, &options(false)).unwrap();
        let split = Vocab::train_from_sentences(&sents, &options(true)).unwrap();
        assert!(
            attached(&joined) > 0,
            "the toy corpus must have pieces like `field.`"
        );
        assert_eq!(attached(&split), 0);
        for s in [
            "A dog, a cat (and a \"bird\") run... across the field.",
            "T-Shirt's 🐕!",
        ] {
            let ids = split.encode(s).unwrap();
            assert_eq!(split.decode(&ids).unwrap(), s);
            let reloaded = Vocab::from_json(&split.to_json().unwrap()).unwrap();
            assert_eq!(
                reloaded.encode(s).unwrap(),
                ids,
                "the split is saved with the vocabulary"
            );
        }
        let ids = split.encode("the field.").unwrap();
        assert_eq!(split.pieces(&ids).last().map(String::as_str), Some("."));
    }

    #[test]
    fn reload_keeps_hash_and_ids() {
        let v = toy();
        let w = Vocab::from_json(&v.to_json().unwrap()).unwrap();
        assert_eq!(v.hash(), w.hash());
        let s = "A man rides a bike.";
        assert_eq!(v.encode(s).unwrap(), w.encode(s).unwrap());
    }

    #[test]
    fn foreign_tokenizer_is_refused() {
        let tk = Tokenizer::new(BPE::default());
        let err = Vocab::from_json(&tk.to_string(false).unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("special token <pad> must have id 0"), "{err}");
    }

    fn multilingual() -> Vocab {
        Vocab::train_from_sentences(
            &crate::synthetic::toy_sentences(),
            &VocabOptions {
                size: 600,
                languages: vec!["de".into(), "fr".into()],
                ..Default::default()
            },
        )
        .unwrap()
    }

    #[test]
    fn language_tags_have_fixed_ids_after_the_special_tokens() {
        let v = multilingual();
        assert_eq!(v.languages(), ["de", "fr"]);
        assert_eq!(
            (v.tag_id("de"), v.tag_id("fr"), v.tag_id("es")),
            (Some(4), Some(5), None)
        );
        assert_eq!(v.pieces(&[4, 5]), ["<2de>", "<2fr>"]);
        assert_eq!(v.size(), 600);
        // Kept through a save and reload; a bilingual vocabulary has none.
        let w = Vocab::from_json(&v.to_json().unwrap()).unwrap();
        assert_eq!((w.languages(), w.hash()), (v.languages(), v.hash()));
        assert!(toy().languages().is_empty());
    }

    #[test]
    fn language_tags_in_user_text_are_plain_text_and_tags_are_never_decoded() {
        let v = multilingual();
        let ids = v.encode("<2fr> a dog").unwrap();
        assert!(ids.iter().all(|&id| id > 5), "{ids:?}");
        assert_eq!(v.decode(&ids).unwrap(), "<2fr> a dog");
        let dog = v.encode("a dog").unwrap();
        let tagged: Vec<u32> = [4].into_iter().chain(dog.iter().copied()).collect();
        assert_eq!(v.decode(&tagged).unwrap(), "a dog");
    }

    #[test]
    fn bad_language_lists_are_refused() {
        for (languages, expected) in [
            (vec!["de", "de"], "listed twice"),
            (vec!["DE"], "not a language code"),
        ] {
            let err = Vocab::train_from_sentences(
                &["a b"],
                &VocabOptions {
                    languages: languages.into_iter().map(String::from).collect(),
                    ..Default::default()
                },
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains(expected), "{err}");
        }
    }

    #[test]
    fn too_small_size_is_a_config_error() {
        let err = Vocab::train_from_sentences(
            &["a b"],
            &VocabOptions {
                size: 100,
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("too small"), "{err}");
    }
}
