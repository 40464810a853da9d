//! What a training run says on stderr: a live progress bar (loss, tokens/s, learning rate,
//! ETA) when stderr is a terminal, plain log lines otherwise, nothing when quiet. Log lines
//! are printed above the bar, so the two never tangle.

use std::cell::Cell;
use std::io::IsTerminal;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    quiet: bool,
    bar: Option<ProgressBar>,
    /// For the bar's own tokens/s: counted since the last update of the message.
    since: Cell<Instant>,
    tokens: Cell<usize>,
}

impl Progress {
    /// `max_steps`: the bar's length when known (otherwise a counter with elapsed time).
    pub fn new(quiet: bool, max_steps: Option<u64>) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = match max_steps {
                Some(n) => ProgressBar::new(n).with_style(
                    ProgressStyle::with_template(
                        "update {pos}/{len} [{bar:30}] {msg} | elapsed {elapsed} eta {eta}",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                ),
                None => ProgressBar::no_length().with_style(
                    ProgressStyle::with_template("update {pos} {msg} | elapsed {elapsed}")
                        .expect("valid template"),
                ),
            };
            bar.set_draw_target(ProgressDrawTarget::stderr_with_hz(4));
            bar
        });
        Self {
            quiet,
            bar,
            since: Cell::new(Instant::now()),
            tokens: Cell::new(0),
        }
    }

    /// A log line: above the bar, or on stderr.
    pub fn say(&self, msg: &str) {
        match (&self.bar, self.quiet) {
            (Some(bar), _) => bar.println(msg),
            (None, false) => eprintln!("{msg}"),
            (None, true) => {}
        }
    }

    /// After each update (`step` counts updates since the run began, resumed ones included).
    pub fn update(&self, step: u64, loss: f64, tokens: usize, lr: f64) {
        let Some(bar) = &self.bar else { return };
        self.tokens.set(self.tokens.get() + tokens);
        bar.set_position(step);
        let secs = self.since.get().elapsed().as_secs_f64();
        if secs >= 1.0 {
            bar.set_message(format!(
                "loss {loss:.3} | {:.0} tok/s | lr {lr:.2e}",
                self.tokens.get() as f64 / secs
            ));
            self.since.set(Instant::now());
            self.tokens.set(0);
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
