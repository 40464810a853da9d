//! Value parsers for numeric options: each accepts only the range that makes sense for its
//! option and names that range when it refuses a value, so nonsense (`--beam-size 0`,
//! `--alpha nan`) stops at the command line instead of running as something else. Values that
//! are legal but costly are accepted with a warning saying why.
//!
//! ```text
//! #[arg(long, value_parser = whole::<usize>(1, 1024).costly_above(64, "..."))]
//! pub beam_size: Option<usize>,
//! ```

use std::ffi::OsStr;
use std::fmt;
use std::marker::PhantomData;

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;

/// The flag an error or warning is about, as the user typed it.
fn flag_name(arg: Option<&clap::Arg>) -> String {
    match arg {
        Some(a) => match a.get_long() {
            Some(long) => format!("--{long}"),
            None => format!("<{}>", a.get_id()),
        },
        None => "the value".to_string(),
    }
}

fn refuse(cmd: &clap::Command, arg: Option<&clap::Arg>, value: &str, must: &str) -> clap::Error {
    clap::Error::raw(
        ErrorKind::ValueValidation,
        format!("invalid value '{value}' for {}: {must}\n", flag_name(arg)),
    )
    .with_cmd(cmd)
}

fn text<'a>(
    cmd: &clap::Command,
    arg: Option<&clap::Arg>,
    value: &'a OsStr,
) -> Result<&'a str, clap::Error> {
    value
        .to_str()
        .ok_or_else(|| refuse(cmd, arg, &value.to_string_lossy(), "not valid UTF-8"))
}

/// A warning for a legal value above the point where it mostly costs time or memory.
#[derive(Debug, Clone, Copy)]
struct Costly {
    above: u64,
    why: &'static str,
}

/// Whole numbers from `lo` to `hi`, both included.
#[derive(Debug, Clone)]
pub struct Whole<T> {
    lo: u64,
    hi: u64,
    costly: Option<Costly>,
    out: PhantomData<fn() -> T>,
}

/// A whole-number option of type `T` taking `lo..=hi`.
pub fn whole<T>(lo: u64, hi: u64) -> Whole<T> {
    assert!(lo <= hi);
    Whole {
        lo,
        hi,
        costly: None,
        out: PhantomData,
    }
}

impl<T> Whole<T> {
    /// Values above `above` are accepted with a warning saying `why` they are costly.
    pub fn costly_above(mut self, above: u64, why: &'static str) -> Self {
        self.costly = Some(Costly { above, why });
        self
    }

    fn must(&self) -> String {
        format!("must be a whole number from {} to {}", self.lo, self.hi)
    }
}

impl<T> TypedValueParser for Whole<T>
where
    T: TryFrom<u64> + Clone + Send + Sync + 'static,
{
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        let s = text(cmd, arg, value)?;
        let v: u64 = s
            .trim()
            .parse()
            .ok()
            .filter(|v| (self.lo..=self.hi).contains(v))
            .ok_or_else(|| refuse(cmd, arg, s, &self.must()))?;
        if let Some(c) = self.costly.filter(|c| v > c.above) {
            eprintln!("warning: {} {v}: {}", flag_name(arg), c.why);
        }
        T::try_from(v).map_err(|_| refuse(cmd, arg, s, &self.must()))
    }
}

/// An interval of real numbers, each end open or closed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    pub lo: f64,
    pub hi: f64,
    pub lo_open: bool,
    pub hi_open: bool,
}

impl Interval {
    /// `[lo, hi]`
    pub const fn closed(lo: f64, hi: f64) -> Self {
        Self {
            lo,
            hi,
            lo_open: false,
            hi_open: false,
        }
    }

    /// `(lo, hi]`: for what must be positive.
    pub const fn above(lo: f64, hi: f64) -> Self {
        Self {
            lo,
            hi,
            lo_open: true,
            hi_open: false,
        }
    }

    /// `(lo, hi)`: for what lies strictly between (a moving average's decay).
    pub const fn open(lo: f64, hi: f64) -> Self {
        Self {
            lo,
            hi,
            lo_open: true,
            hi_open: true,
        }
    }

    /// `[lo, hi)`: for probabilities that must leave something (dropout, label smoothing).
    pub const fn below(lo: f64, hi: f64) -> Self {
        Self {
            lo,
            hi,
            lo_open: false,
            hi_open: true,
        }
    }

    pub fn contains(&self, v: f64) -> bool {
        let above_lo = if self.lo_open {
            v > self.lo
        } else {
            v >= self.lo
        };
        let below_hi = if self.hi_open {
            v < self.hi
        } else {
            v <= self.hi
        };
        v.is_finite() && above_lo && below_hi
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{}, {}{}",
            if self.lo_open { '(' } else { '[' },
            self.lo,
            self.hi,
            if self.hi_open { ')' } else { ']' }
        )
    }
}

/// Floating-point option types.
pub trait Real: Copy + Send + Sync + 'static {
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
}

impl Real for f64 {
    fn from_f64(v: f64) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        self
    }
}

impl Real for f32 {
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
}

/// Finite real numbers in an interval.
#[derive(Debug, Clone)]
pub struct RealIn<T> {
    interval: Interval,
    out: PhantomData<fn() -> T>,
}

/// A real-number option of type `T` taking finite values in `interval`.
pub fn real<T>(interval: Interval) -> RealIn<T> {
    RealIn {
        interval,
        out: PhantomData,
    }
}

impl<T: Real> TypedValueParser for RealIn<T> {
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        let s = text(cmd, arg, value)?;
        let must = format!("must be a finite number in {}", self.interval);
        // Checked after the conversion too: an f32 option must not round a legal value onto
        // an excluded end (0.99999999 -> 1).
        s.trim()
            .parse::<f64>()
            .ok()
            .filter(|v| self.interval.contains(*v))
            .map(T::from_f64)
            .filter(|v| self.interval.contains(v.to_f64()))
            .ok_or_else(|| refuse(cmd, arg, s, &must))
    }
}

/// Worker threads: at least one; more than the machine has is legal (the pool time-slices)
/// but slower, so it is warned about.
pub fn threads() -> Whole<usize> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    whole(1, 1024).costly_above(
        cores,
        "more threads than this machine has cores: they take turns and run slower",
    )
}

/// Beam widths, up to the 256 a model's generation.json may hold: cost grows linearly with
/// the width, and past a few dozen BLEU stops improving.
pub fn beam_size() -> Whole<usize> {
    whole(1, 256).costly_above(
        64,
        "each decoding step scores beam x vocabulary hypotheses per sentence; beams above 64 \
         rarely help and are that much slower",
    )
}

/// Sentences decoded together.
pub fn batch_size() -> Whole<usize> {
    whole(1, 65_536).costly_above(
        4_096,
        "a batch this large holds every sentence's states at once; it is rarely faster than 64",
    )
}

/// GNMT's length-normalisation exponent (alpha) and coverage weight (beta).
pub fn decoding_weight() -> RealIn<f64> {
    real(Interval::closed(0.0, 10.0))
}

/// Vocabulary sizes, special tokens and byte pieces included.
pub fn vocab_size() -> Whole<usize> {
    whole(gnmt_tokenizer::MIN_VOCAB_SIZE as u64, 1_000_000).costly_above(
        100_000,
        "the output layer and its softmax grow with the vocabulary; 8,000-32,000 is usual",
    )
}

/// Padded tokens per batch.
pub fn max_tokens() -> Whole<usize> {
    whole(1, 100_000_000).costly_above(
        1_000_000,
        "a batch this large needs gigabytes of activations per step",
    )
}

/// Rounds of a benchmark.
pub fn rounds() -> Whole<usize> {
    whole(1, 1000)
}

/// Steps, epochs and intervals counted in updates.
pub fn updates() -> Whole<u64> {
    whole(1, 1_000_000_000_000)
}

/// A wall-time limit such as `90m`, `2h` or `1h 30m`, longer than zero; kept as written (the
/// training configuration stores it so).
pub fn duration(value: &str) -> Result<String, String> {
    match humantime::parse_duration(value) {
        Ok(d) if !d.is_zero() => Ok(value.to_string()),
        Ok(_) => Err("must be longer than zero".to_string()),
        Err(e) => Err(format!("{e} (examples: 90m, 2h, 1h 30m)")),
    }
}

/// A language code (`de`, `pt-br`): see [`gnmt_tokenizer::language::check_language_code`].
pub fn language(value: &str) -> Result<String, String> {
    gnmt_tokenizer::language::check_language_code(value).map(|()| value.to_string())
}

/// Seeds: every value is legal.
pub fn seed() -> Whole<u64> {
    whole(0, u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Demo {
        #[arg(long, value_parser = whole::<usize>(1, 8).costly_above(4, "slow"))]
        count: Option<usize>,
        #[arg(long, value_parser = real::<f32>(Interval::below(0.0, 1.0)))]
        p: Option<f32>,
    }

    /// `--flag=value`, so that values such as `-1` are not taken for flags.
    fn parse(args: &[&str]) -> Result<Demo, String> {
        Demo::try_parse_from(["demo".to_string(), format!("{}={}", args[0], args[1])])
            .map_err(|e| e.to_string())
    }

    #[test]
    fn ranges_are_enforced_and_named() {
        assert_eq!(parse(&["--count", "1"]).unwrap().count, Some(1));
        assert_eq!(parse(&["--count", "8"]).unwrap().count, Some(8));
        for bad in ["0", "9", "-1", "2.5", "x", ""] {
            let e = parse(&["--count", bad]).unwrap_err();
            assert!(
                e.contains(&format!(
                    "invalid value '{bad}' for --count: must be a whole number from 1 to 8"
                )),
                "{e}"
            );
        }
        assert_eq!(parse(&["--p", "0"]).unwrap().p, Some(0.0));
        assert_eq!(parse(&["--p", "0.5"]).unwrap().p, Some(0.5));
        for bad in [
            "1",
            "-0.1",
            "nan",
            "NaN",
            "inf",
            "-inf",
            "1e400",
            "0.99999999",
        ] {
            let e = parse(&["--p", bad]).unwrap_err();
            assert!(
                e.contains("must be a finite number in [0, 1)"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn intervals_print_their_open_ends() {
        assert_eq!(Interval::above(0.0, 10.0).to_string(), "(0, 10]");
        assert_eq!(Interval::closed(0.5, 2.0).to_string(), "[0.5, 2]");
        assert!(!Interval::above(0.0, 1.0).contains(0.0));
        assert!(Interval::above(0.0, 1.0).contains(1.0));
        assert!(!Interval::below(0.0, 1.0).contains(1.0));
    }
}
