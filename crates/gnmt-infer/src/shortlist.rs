//! Vocabulary shortlists (Marian's lexical shortlist): each sentence's output layer covers only
//! the target pieces it can plausibly produce, so a decoding step multiplies by a few hundred
//! columns instead of the whole vocabulary. A sentence's list holds
//!
//! - the `first` most frequent target pieces,
//! - the `best` most probable translations of each of its source pieces (a lexical table),
//! - its own source pieces (the vocabulary is shared: names and numbers are copied),
//! - `</s>`.
//!
//! Its scores are normalised over that list. Each sentence gets its own list, made from its
//! own source, so a translation still does not depend on the batch it is decoded in (Marian
//! takes one list for the whole batch).
//!
//! The table is Marian's `lex.s2t` text: one `TARGET SOURCE PROBABILITY` entry per line,
//! whitespace-separated, pieces spelled as in the model's vocabulary. Marian skips lines whose
//! source is `NULL`; gnmt's tables put the target pieces' corpus frequencies there, and the
//! most frequent pieces are taken from them. A table without such lines (one made by other
//! tools) gives no frequent pieces: only the translations, the copies and `</s>`.

use std::collections::HashMap;
use std::path::Path;

use gnmt_tokenizer::{Vocab, EOS_ID};

use crate::{Error, Result};

/// The source word of the lines that hold target frequencies.
pub const NULL_SOURCE: &str = "NULL";

/// How much of a lexical table a shortlist takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShortlistOptions {
    /// The most frequent target pieces in every list.
    pub first: usize,
    /// Translations kept per source piece, most probable first.
    pub best: usize,
}

impl Default for ShortlistOptions {
    fn default() -> Self {
        Self {
            first: 100,
            best: 50,
        }
    }
}

/// A lexical table over a vocabulary's ids: `p(target | source)` per source piece, and the
/// target pieces' frequencies.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LexicalTable {
    /// Per source id, `(target id, probability)`, most probable first (ties: lower id first).
    pub translations: HashMap<u32, Vec<(u32, f32)>>,
    /// `(target id, relative frequency)`, most frequent first (ties: lower id first).
    pub frequencies: Vec<(u32, f32)>,
}

impl LexicalTable {
    /// Reads a `lex.s2t` file (plain or gzip) whose pieces belong to `vocab`. Errors name the
    /// file, the line and the problem.
    pub fn read(path: &Path, vocab: &Vocab) -> Result<Self> {
        let bytes = gnmt_tokenizer::io::read_bytes(path)?;
        let text = gnmt_tokenizer::io::into_utf8(path, bytes)?;
        Self::parse(&text, vocab).map_err(|(line, problem)| {
            Error::Input(format!("{}:{line}: {problem}", path.display()))
        })
    }

    /// Parses `lex.s2t` text; an error is `(line number, problem)`.
    pub fn parse(text: &str, vocab: &Vocab) -> std::result::Result<Self, (usize, String)> {
        let mut table = Self::default();
        let piece = |p: &str, side: &str| {
            vocab.piece_id(p).ok_or_else(|| {
                format!(
                    "{side} piece {p:?} is not in the model's vocabulary (make the table \
                     with `gnmt shortlist` and this model)"
                )
            })
        };
        for (n, line) in text.lines().enumerate() {
            let at = |problem: String| (n + 1, problem);
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [target, source, probability] = fields[..] else {
                if fields.is_empty() {
                    continue;
                }
                return Err(at(format!(
                    "expected 3 fields (`TARGET SOURCE PROBABILITY`), found {}",
                    fields.len()
                )));
            };
            let p: f32 = probability
                .parse()
                .ok()
                .filter(|p: &f32| (0.0..=1.0).contains(p))
                .ok_or_else(|| at(format!("probability {probability:?} is not in [0, 1]")))?;
            let t = piece(target, "target").map_err(at)?;
            if source == NULL_SOURCE {
                table.frequencies.push((t, p));
            } else {
                let s = piece(source, "source").map_err(at)?;
                table.translations.entry(s).or_default().push((t, p));
            }
        }
        table.sort();
        Ok(table)
    }

    /// Most probable first, ties by lower id, everywhere.
    fn sort(&mut self) {
        let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        self.frequencies.sort_by(order);
        for list in self.translations.values_mut() {
            list.sort_by(order);
        }
    }

    /// The table as `lex.s2t` text: frequencies first (`piece NULL frequency`), then every
    /// source piece's translations, sources in id order.
    pub fn to_text(&self, vocab: &Vocab) -> Result<String> {
        let name = |id: u32| {
            vocab
                .piece(id)
                .ok_or_else(|| Error::Input(format!("id {id} is not in the vocabulary")))
        };
        let mut out = String::new();
        for &(t, p) in &self.frequencies {
            out.push_str(&format!("{} {NULL_SOURCE} {p:e}\n", name(t)?));
        }
        let mut sources: Vec<&u32> = self.translations.keys().collect();
        sources.sort();
        for &s in sources {
            let source = name(s)?;
            for &(t, p) in &self.translations[&s] {
                out.push_str(&format!("{} {source} {p:e}\n", name(t)?));
            }
        }
        Ok(out)
    }
}

/// The lists a table gives, ready to make each sentence's.
#[derive(Debug, Clone, PartialEq)]
pub struct Shortlist {
    /// The most frequent target pieces, in every list.
    frequent: Vec<u32>,
    /// The best translations of each source id (empty for ids without any).
    translations: Vec<Vec<u32>>,
    vocab_size: usize,
    /// Ids below this are special tokens and language tags: never copied from the source.
    reserved: u32,
}

impl Shortlist {
    /// The lists of `table` for a model with vocabulary `vocab`.
    pub fn new(table: &LexicalTable, vocab: &Vocab, options: ShortlistOptions) -> Self {
        let ids = |list: &[(u32, f32)], n: usize| -> Vec<u32> {
            list.iter()
                .filter(|&&(t, _)| !vocab.is_reserved(t))
                .take(n)
                .map(|&(t, _)| t)
                .collect()
        };
        let mut translations = vec![Vec::new(); vocab.size()];
        for (&s, list) in &table.translations {
            translations[s as usize] = ids(list, options.best);
        }
        let reserved = (0..vocab.size() as u32)
            .find(|&id| !vocab.is_reserved(id))
            .unwrap_or(0);
        Self::from_lists(
            ids(&table.frequencies, options.first),
            translations,
            vocab.size(),
            reserved,
        )
    }

    /// Lists given as ids: `frequent` target ids, `translations[s]` for source id `s`, over
    /// a vocabulary of `vocab_size` whose ids below `reserved` are never copied.
    pub fn from_lists(
        frequent: Vec<u32>,
        mut translations: Vec<Vec<u32>>,
        vocab_size: usize,
        reserved: u32,
    ) -> Self {
        translations.resize(vocab_size, Vec::new());
        Self {
            frequent,
            translations,
            vocab_size,
            reserved,
        }
    }

    /// Reads a `lex.s2t` file for `vocab` and takes its lists.
    pub fn read(path: &Path, vocab: &Vocab, options: ShortlistOptions) -> Result<Self> {
        Ok(Self::new(&LexicalTable::read(path, vocab)?, vocab, options))
    }

    /// The target ids a sentence with source ids `source` may produce: ascending, distinct,
    /// `</s>` always among them.
    pub fn for_sentence(&self, source: &[u32]) -> Vec<u32> {
        let mut chosen = vec![false; self.vocab_size];
        chosen[EOS_ID as usize] = true;
        for &t in &self.frequent {
            chosen[t as usize] = true;
        }
        for &s in source {
            if s >= self.reserved && (s as usize) < self.vocab_size {
                chosen[s as usize] = true;
                for &t in &self.translations[s as usize] {
                    chosen[t as usize] = true;
                }
            }
        }
        (0..self.vocab_size as u32)
            .filter(|&id| chosen[id as usize])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every word of these lines is one piece.
    pub(crate) fn vocab() -> Vocab {
        let lines = [
            "a small dog runs on the grass",
            "ein kleiner hund rennt auf dem gras",
            "the man plays guitar",
            "der mann spielt gitarre",
        ];
        let options = gnmt_tokenizer::VocabOptions {
            size: gnmt_tokenizer::MIN_VOCAB_SIZE + 300,
            min_frequency: 1,
            languages: vec!["de".into(), "fr".into()],
            ..Default::default()
        };
        Vocab::train_from_sentences(&lines, &options).unwrap()
    }

    fn id(v: &Vocab, piece: &str) -> u32 {
        v.piece_id(piece).unwrap()
    }

    #[test]
    fn a_table_reads_back_what_it_wrote() {
        let v = vocab();
        let text = "▁hund ▁dog 0.9\n▁gras ▁dog 0.05\n\n▁der NULL 0.2\n▁hund NULL 0.1\n";
        let table = LexicalTable::parse(text, &v).unwrap();
        assert_eq!(
            table.translations[&id(&v, "▁dog")],
            vec![(id(&v, "▁hund"), 0.9), (id(&v, "▁gras"), 0.05)]
        );
        assert_eq!(table.frequencies[0], (id(&v, "▁der"), 0.2));
        let again = LexicalTable::parse(&table.to_text(&v).unwrap(), &v).unwrap();
        assert_eq!(again, table);
    }

    #[test]
    fn bad_lines_are_named() {
        let v = vocab();
        let err = |text: &str| LexicalTable::parse(text, &v).unwrap_err();
        assert_eq!(err("▁hund ▁dog 0.9\n▁hund ▁dog\n").0, 2);
        assert!(err("▁hund ▁dog 0.9\n▁hund ▁dog\n")
            .1
            .contains("expected 3 fields"));
        assert!(err("▁hund ▁dog 1.5\n").1.contains("not in [0, 1]"));
        assert!(err("▁hund ▁dog nan\n").1.contains("not in [0, 1]"));
        let unknown = err("▁hund ▁Zebra 0.5\n");
        assert_eq!(unknown.0, 1);
        assert!(
            unknown.1.contains("source piece \"▁Zebra\""),
            "{}",
            unknown.1
        );
    }

    #[test]
    fn a_sentence_gets_the_frequent_pieces_its_translations_its_own_pieces_and_the_end() {
        let v = vocab();
        let text = "▁hund ▁dog 0.9\n▁gras ▁dog 0.05\n▁rennt ▁dog 0.01\n\
                    ▁mann ▁man 0.8\n▁der NULL 0.2\n▁ein NULL 0.1\n▁dem NULL 0.05\n";
        let table = LexicalTable::parse(text, &v).unwrap();
        let list = Shortlist::new(&table, &v, ShortlistOptions { first: 2, best: 2 });
        let (dog, tag) = (id(&v, "▁dog"), v.tag_id("de").unwrap());
        let got = list.for_sentence(&[tag, dog]);
        let mut want = vec![
            EOS_ID,
            dog,
            id(&v, "▁hund"),
            id(&v, "▁gras"),
            id(&v, "▁der"),
            id(&v, "▁ein"),
        ];
        want.sort();
        // Not `▁rennt` (third translation), `▁mann` (another source's), `▁dem` (third most
        // frequent) or the language tag.
        assert_eq!(got, want);
        assert_eq!(list.for_sentence(&[]), {
            let mut w = vec![EOS_ID, id(&v, "▁der"), id(&v, "▁ein")];
            w.sort();
            w
        });
    }
}
