//! Which of the served source languages a text is in: `source: auto` and `POST /detect`.

use whatlang::{Detector, Lang};

use crate::api::Language;

/// whatlang's language for an ISO 639-1 code, where the table knows it.
fn whatlang_of(code: &str) -> Option<Lang> {
    let iso639_3 = match code {
        "ar" => "ara",
        "cs" => "ces",
        "de" => "deu",
        "en" => "eng",
        "es" => "spa",
        "fr" => "fra",
        "it" => "ita",
        "ja" => "jpn",
        "nl" => "nld",
        "pl" => "pol",
        "pt" => "por",
        "ro" => "ron",
        "ru" => "rus",
        "tr" => "tur",
        "uk" => "ukr",
        "zh" => "cmn",
        _ => return None,
    };
    Lang::from_code(iso639_3)
}

/// The most likely of `candidates` for `text`, with a confidence from 0 to 100. One
/// candidate is certain; among several, whatlang decides between those it knows (the first
/// candidate, at confidence 0, when it cannot tell).
pub fn detect<'a>(text: &str, candidates: &[&'a Language]) -> (&'a Language, f64) {
    let first = candidates[0];
    if candidates.len() == 1 {
        return (first, 100.0);
    }
    let known: Vec<(Lang, &Language)> = candidates
        .iter()
        .filter_map(|&l| whatlang_of(&l.code).map(|w| (w, l)))
        .collect();
    let detector = Detector::with_allowlist(known.iter().map(|(w, _)| *w).collect());
    match detector.detect(text) {
        Some(info) => match known.iter().find(|(w, _)| *w == info.lang()) {
            Some((_, l)) => (*l, (info.confidence() * 100.0).round()),
            None => (first, 0.0),
        },
        None => (first, 0.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_served_language_a_text_is_in_is_found() {
        let (en, de, fr) = (
            Language::from_code("en"),
            Language::from_code("de"),
            Language::from_code("fr"),
        );
        let all = [&en, &de, &fr];
        let (l, c) = detect("Ein Mann fährt mit dem Fahrrad über die Straße.", &all);
        assert_eq!(l.code, "de");
        assert!(c > 50.0, "{c}");
        assert_eq!(
            detect("A man is riding a bicycle down the street.", &all)
                .0
                .code,
            "en"
        );
        assert_eq!(
            detect("Un homme fait du vélo dans la rue.", &all).0.code,
            "fr"
        );
        assert_eq!(detect("anything", &[&de]), (&de, 100.0));
    }
}
