//! sacreBLEU's default "13a" tokenizer (mteval-v13a.pl), regex for regex.

use std::sync::OnceLock;

use regex::Regex;

use crate::python_split;

struct Rules {
    punct: Regex,
    period_comma_after_nondigit: Regex,
    period_comma_before_nondigit: Regex,
    dash_after_digit: Regex,
}

fn rules() -> &'static Rules {
    static RULES: OnceLock<Rules> = OnceLock::new();
    RULES.get_or_init(|| Rules {
        // ASCII punctuation and symbols: { to ~, [ to `, space to &, ( to +, : to @, and /.
        punct: Regex::new(r"([\{-~\[-` -&\(-\+:-@/])").expect("valid"),
        period_comma_after_nondigit: Regex::new(r"([^0-9])([\.,])").expect("valid"),
        period_comma_before_nondigit: Regex::new(r"([\.,])([^0-9])").expect("valid"),
        dash_after_digit: Regex::new(r"([0-9])(-)").expect("valid"),
    })
}

/// Tokenizes one segment as sacreBLEU's `Tokenizer13a` does.
pub fn tokenize_13a(line: &str) -> String {
    let mut line = line
        .replace("<skipped>", "")
        .replace("-\n", "")
        .replace('\n', " ");
    if line.contains('&') {
        line = line
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
    }
    let r = rules();
    let line = format!(" {line} ");
    let line = r.punct.replace_all(&line, " $1 ");
    let line = r.period_comma_after_nondigit.replace_all(&line, "$1 $2 ");
    let line = r.period_comma_before_nondigit.replace_all(&line, " $1 $2");
    let line = r.dash_after_digit.replace_all(&line, "$1 $2 ");
    python_split(&line).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_mteval_13a() {
        let cases = [
            ("The dog bit the man.", "The dog bit the man ."),
            ("It wasn't surprising.", "It wasn't surprising ."),
            ("3.14 and 1,000 but a.b, c", "3.14 and 1,000 but a . b , c"),
            ("2-3 well-known", "2 - 3 well-known"),
            ("&quot;x&quot; &amp; &lt;y&gt;", "\" x \" & < y >"),
            ("a<skipped>b", "ab"),
            ("  spaced\tout  ", "spaced out"),
            ("sep\u{1c}arated", "sep arated"),
            ("„Zitat“ — ok", "„Zitat“ — ok"),
            ("", ""),
            // Expected values printed by sacrebleu.tokenizers.tokenizer_13a.Tokenizer13a.
        ];
        for (input, want) in cases {
            assert_eq!(tokenize_13a(input), want, "{input:?}");
        }
    }
}
