//! Languages of a multilingual model (Johnson et al. 2017): the source sentence starts with a
//! tag naming the target language, `<2de>`, `<2fr>`, ... The tags are reserved entries of the
//! shared vocabulary with fixed ids, right after the special tokens (4, 5, ... in the order of
//! the vocabulary's language list), so they can never be produced from user text.

use std::fmt;
use std::str::FromStr;

/// The vocabulary entry that asks for a translation into `language`.
pub fn language_tag(language: &str) -> String {
    format!("<2{language}>")
}

/// The language a vocabulary entry asks for, if it is a language tag.
pub fn tag_language(piece: &str) -> Option<&str> {
    piece
        .strip_prefix("<2")
        .and_then(|rest| rest.strip_suffix('>'))
        .filter(|code| check_language_code(code).is_ok())
}

/// Language codes are short lowercase names such as `de`, `fr`, `pt-br` or `zh_hant`: ASCII
/// lowercase letters, digits, `-` or `_`, starting with a letter, 2 to 16 characters.
pub fn check_language_code(code: &str) -> Result<(), String> {
    let ok = (2..=16).contains(&code.len())
        && code.starts_with(|c: char| c.is_ascii_lowercase())
        && code
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    match ok {
        true => Ok(()),
        false => Err(format!(
            "{code:?} is not a language code: use 2 to 16 lowercase ASCII letters, digits, \
             '-' or '_', starting with a letter (de, fr, pt-br)"
        )),
    }
}

/// A translation direction, written `en-de` (source, then target). Codes with a `-` of their
/// own are written with `_` inside a pair (`en-pt_br`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LanguagePair {
    pub source: String,
    pub target: String,
}

impl FromStr for LanguagePair {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (source, target) = s.split_once('-').ok_or_else(|| {
            format!("{s:?} is not a language pair: write the source and target codes as en-de")
        })?;
        for code in [source, target] {
            check_language_code(code).map_err(|e| format!("in the pair {s:?}: {e}"))?;
        }
        if source == target {
            return Err(format!("{s:?}: source and target are the same language"));
        }
        Ok(Self {
            source: source.into(),
            target: target.into(),
        })
    }
}

impl fmt::Display for LanguagePair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.source, self.target)
    }
}

impl serde::Serialize for LanguagePair {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for LanguagePair {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_parse_and_print() {
        let p: LanguagePair = "en-de".parse().unwrap();
        assert_eq!((p.source.as_str(), p.target.as_str()), ("en", "de"));
        assert_eq!(p.to_string(), "en-de");
        assert_eq!("en-pt_br".parse::<LanguagePair>().unwrap().target, "pt_br");
        for bad in ["ende", "en-", "-de", "en-en", "EN-de", "en-d e", "e-de"] {
            assert!(bad.parse::<LanguagePair>().is_err(), "{bad}");
        }
    }

    #[test]
    fn tags_round_trip() {
        assert_eq!(language_tag("fr"), "<2fr>");
        assert_eq!(tag_language("<2fr>"), Some("fr"));
        for not_a_tag in ["<2>", "<2F>", "2fr", "<s>", "<0x41>", "<2f r>"] {
            assert_eq!(tag_language(not_a_tag), None, "{not_a_tag}");
        }
    }
}
