//! Small corpora generated in code, for tests and for checking that a model can learn at all.
//!
//! - [`copy_task`]: the target is the source. Needs attention to do anything but memorise.
//! - [`reverse_task`]: the target is the source backwards. A classic seq2seq sanity check: the
//!   first target word depends on the last source word.
//! - [`sort_task`]: the target is the source's words in alphabetical order. Solvable from the
//!   source's bag of words plus an order rule, so a small attention model learns it within a
//!   few hundred updates: the end-to-end training test uses it. (Random-order copying needs
//!   sharp attention, which this architecture finds slowly: a PyTorch replica of the model
//!   shows the same plateau.)
//! - [`toy_sentences`] / [`toy_parallel`]: a few dozen English caption-style sentences with
//!   German translations, written for this project (not taken from any corpus).
//!
//! Everything is seeded: the same arguments give the same corpus on every machine.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// Pseudo-words the synthetic tasks are made of: distinct, short, and sharing letters so that
/// a subword vocabulary has something to merge.
const SYLLABLES: [&str; 32] = [
    "ba", "ko", "mi", "tu", "re", "sa", "ni", "po", "le", "du", "fi", "ga", "ho", "ju", "ve", "zo",
    "bam", "kor", "mil", "tun", "rek", "sap", "nif", "pod", "lem", "dux", "fiz", "gal", "hob",
    "jut", "vel", "zog",
];

/// What a synthetic target is made of from its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// The target is the source.
    Copy,
    /// The source's words in reverse order.
    Reverse,
    /// The source's words sorted.
    Sort,
}

impl Task {
    pub fn target(self, src: &str) -> String {
        match self {
            Task::Copy => src.to_string(),
            Task::Reverse => src.split(' ').rev().collect::<Vec<_>>().join(" "),
            Task::Sort => {
                let mut w: Vec<&str> = src.split(' ').collect();
                w.sort_unstable();
                w.join(" ")
            }
        }
    }

    /// The task's sentence pairs, one at a time (a corpus of any size in constant memory):
    /// random sentences of `min_len..=max_len` words over the first `symbols` pseudo-words
    /// (at most 32), each with its target.
    pub fn pairs(
        self,
        symbols: usize,
        min_len: usize,
        max_len: usize,
        seed: u64,
    ) -> impl Iterator<Item = (String, String)> {
        sentences(symbols, min_len, max_len, seed).map(move |s| {
            let t = self.target(&s);
            (s, t)
        })
    }

    /// The first `n` pairs, as two lists.
    fn corpus(
        self,
        n: usize,
        symbols: usize,
        min_len: usize,
        max_len: usize,
        seed: u64,
    ) -> (Vec<String>, Vec<String>) {
        self.pairs(symbols, min_len, max_len, seed).take(n).unzip()
    }
}

/// `pairs` random sentences of `min_len..=max_len` words over the first `symbols` pseudo-words
/// (at most 32), each paired with itself.
pub fn copy_task(
    pairs: usize,
    symbols: usize,
    min_len: usize,
    max_len: usize,
    seed: u64,
) -> (Vec<String>, Vec<String>) {
    Task::Copy.corpus(pairs, symbols, min_len, max_len, seed)
}

/// Like [`copy_task`], with each target the source's words in reverse order.
pub fn reverse_task(
    pairs: usize,
    symbols: usize,
    min_len: usize,
    max_len: usize,
    seed: u64,
) -> (Vec<String>, Vec<String>) {
    Task::Reverse.corpus(pairs, symbols, min_len, max_len, seed)
}

/// Like [`copy_task`], with each target the source's words sorted.
pub fn sort_task(
    pairs: usize,
    symbols: usize,
    min_len: usize,
    max_len: usize,
    seed: u64,
) -> (Vec<String>, Vec<String>) {
    Task::Sort.corpus(pairs, symbols, min_len, max_len, seed)
}

/// Endless random sentences, seeded.
fn sentences(
    symbols: usize,
    min_len: usize,
    max_len: usize,
    seed: u64,
) -> impl Iterator<Item = String> {
    assert!(
        (1..=SYLLABLES.len()).contains(&symbols),
        "symbols must be in 1..={}",
        SYLLABLES.len()
    );
    assert!(
        1 <= min_len && min_len <= max_len,
        "need 1 <= min_len <= max_len"
    );
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    std::iter::repeat_with(move || {
        let len = rng.random_range(min_len..=max_len);
        (0..len)
            .map(|_| SYLLABLES[rng.random_range(0..symbols)])
            .collect::<Vec<_>>()
            .join(" ")
    })
}

/// English/German sentence pairs written for this project (image-caption style).
pub fn toy_parallel() -> Vec<(&'static str, &'static str)> {
    vec![
        ("A man is riding a bicycle.", "Ein Mann fährt Fahrrad."),
        (
            "A dog runs across the grass.",
            "Ein Hund läuft über das Gras.",
        ),
        (
            "Two children are playing in the snow.",
            "Zwei Kinder spielen im Schnee.",
        ),
        (
            "A woman is reading a book on a bench.",
            "Eine Frau liest ein Buch auf einer Bank.",
        ),
        (
            "The cat sleeps on the red sofa.",
            "Die Katze schläft auf dem roten Sofa.",
        ),
        (
            "A group of people stand near the water.",
            "Eine Gruppe von Menschen steht am Wasser.",
        ),
        (
            "A boy in a blue shirt jumps into the lake.",
            "Ein Junge in einem blauen Hemd springt in den See.",
        ),
        (
            "Three men are working on a roof.",
            "Drei Männer arbeiten auf einem Dach.",
        ),
        (
            "A girl is eating an apple.",
            "Ein Mädchen isst einen Apfel.",
        ),
        (
            "The old man walks with his dog.",
            "Der alte Mann geht mit seinem Hund spazieren.",
        ),
        (
            "A musician plays the guitar on the street.",
            "Ein Musiker spielt Gitarre auf der Straße.",
        ),
        (
            "Two women are talking at a table.",
            "Zwei Frauen unterhalten sich an einem Tisch.",
        ),
        (
            "A child holds a yellow balloon.",
            "Ein Kind hält einen gelben Ballon.",
        ),
        (
            "The football player kicks the ball.",
            "Der Fußballspieler schießt den Ball.",
        ),
        (
            "A brown dog swims in the river.",
            "Ein brauner Hund schwimmt im Fluss.",
        ),
        (
            "People are waiting for the bus.",
            "Menschen warten auf den Bus.",
        ),
        (
            "A man in a black jacket is taking a photo.",
            "Ein Mann in einer schwarzen Jacke macht ein Foto.",
        ),
        ("The little girl is smiling.", "Das kleine Mädchen lächelt."),
        (
            "A cook prepares food in a kitchen.",
            "Ein Koch bereitet in einer Küche Essen zu.",
        ),
        (
            "Two dogs are playing with a stick.",
            "Zwei Hunde spielen mit einem Stock.",
        ),
        (
            "A woman rides a horse on the beach.",
            "Eine Frau reitet am Strand auf einem Pferd.",
        ),
        (
            "The men are sitting on a wall.",
            "Die Männer sitzen auf einer Mauer.",
        ),
        (
            "A skier goes down a snowy hill.",
            "Ein Skifahrer fährt einen verschneiten Hügel hinunter.",
        ),
        (
            "A worker in an orange vest repairs the road.",
            "Ein Arbeiter in einer orangen Weste repariert die Straße.",
        ),
        (
            "Children are running in the park.",
            "Kinder rennen im Park.",
        ),
        (
            "A woman is singing into a microphone.",
            "Eine Frau singt in ein Mikrofon.",
        ),
        (
            "The boy throws a ball to his father.",
            "Der Junge wirft seinem Vater einen Ball zu.",
        ),
        (
            "A crowd watches a parade.",
            "Eine Menschenmenge schaut einer Parade zu.",
        ),
        (
            "A man climbs a rock wall.",
            "Ein Mann klettert an einer Felswand.",
        ),
        (
            "Two girls are dancing on a stage.",
            "Zwei Mädchen tanzen auf einer Bühne.",
        ),
        (
            "The baby is sleeping in a small bed.",
            "Das Baby schläft in einem kleinen Bett.",
        ),
        (
            "A man sells fruit at the market.",
            "Ein Mann verkauft Obst auf dem Markt.",
        ),
        (
            "A white dog is catching a frisbee.",
            "Ein weißer Hund fängt eine Frisbee.",
        ),
        (
            "The students are listening to the teacher.",
            "Die Schüler hören dem Lehrer zu.",
        ),
        (
            "A cyclist rides through the city.",
            "Ein Radfahrer fährt durch die Stadt.",
        ),
        (
            "A woman with long hair walks down the street.",
            "Eine Frau mit langen Haaren geht die Straße entlang.",
        ),
        (
            "A man is surfing on a big wave.",
            "Ein Mann surft auf einer großen Welle.",
        ),
        (
            "Four friends sit around a fire.",
            "Vier Freunde sitzen um ein Feuer.",
        ),
        (
            "A little boy is washing his hands.",
            "Ein kleiner Junge wäscht sich die Hände.",
        ),
        (
            "The firefighters stand next to their truck.",
            "Die Feuerwehrleute stehen neben ihrem Wagen.",
        ),
    ]
}

/// Both sides of [`toy_parallel`] as one list: enough text to train a small vocabulary.
pub fn toy_sentences() -> Vec<String> {
    toy_parallel()
        .into_iter()
        .flat_map(|(en, de)| [en.to_string(), de.to_string()])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_are_seeded_and_shaped() {
        let (s, t) = reverse_task(20, 8, 2, 6, 42);
        assert_eq!((s.len(), t.len()), (20, 20));
        assert_eq!(reverse_task(20, 8, 2, 6, 42), (s.clone(), t.clone()));
        assert_ne!(reverse_task(20, 8, 2, 6, 43).0, s);
        for (a, b) in s.iter().zip(&t) {
            let n = a.split(' ').count();
            assert!((2..=6).contains(&n));
            assert_eq!(
                a.split(' ').rev().collect::<Vec<_>>(),
                b.split(' ').collect::<Vec<_>>()
            );
            assert!(a.split(' ').all(|w| SYLLABLES[..8].contains(&w)));
        }
        let (cs, ct) = copy_task(5, 32, 1, 3, 0);
        assert_eq!(cs, ct);
        let (ss, st) = sort_task(5, 32, 1, 6, 0);
        for (a, b) in ss.iter().zip(&st) {
            let mut w: Vec<&str> = a.split(' ').collect();
            w.sort();
            assert_eq!(w.join(" "), *b);
        }
    }
}
