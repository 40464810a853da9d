//! `translate`: stdin (or a file) to stdout (or a file), exactly one output line per input
//! line, in order, whatever the input holds.
//!
//! A reader thread streams the input. The translator takes whatever lines are already
//! available (up to `--window`), sorts them by length into batches, and writes each output
//! line as soon as it and every line before it are done, so the program works interactively,
//! in pipes, and on files larger than memory.

use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use anyhow::Context;
use candle::Device;
use clap::{Parser, ValueEnum};
use gnmt_infer::{LineResult, Translator};

/// Translate text with a trained gnmt model: one output line per input line, in order.
#[derive(Debug, Parser)]
#[command(name = "translate", version, about, long_about = None)]
pub struct TranslateArgs {
    /// Model folder (config.json, model.safetensors, tokenizer.json, generation.json).
    /// Default: the shipped default model under models/.
    #[arg(short, long)]
    pub model: Option<PathBuf>,
    /// Input file, plain text (default: stdin; `-` also means stdin).
    #[arg(short, long)]
    pub input: Option<PathBuf>,
    /// Output file (default: stdout; `-` also means stdout).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Beam size (default: the model's generation.json). 1 is greedy decoding.
    #[arg(long)]
    pub beam_size: Option<usize>,
    /// Length normalisation exponent alpha (default: the model's).
    #[arg(long)]
    pub alpha: Option<f64>,
    /// Coverage penalty weight beta (default: the model's).
    #[arg(long)]
    pub beta: Option<f64>,
    /// GNMT's pruning margin (off by default).
    #[arg(long)]
    pub prune_margin: Option<f64>,
    /// Print the K best translations per line as `id ||| translation ||| score` (Marian).
    #[arg(long)]
    pub n_best: Option<usize>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Include attention weights in JSON output.
    #[arg(long)]
    pub attention: bool,
    /// Sentences decoded together.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Lines read ahead and sorted by length before batching.
    #[arg(long, default_value_t = 512)]
    pub window: usize,
    /// Source pieces per line; longer lines are cropped, with a warning.
    #[arg(long, default_value_t = 250)]
    pub max_input_len: usize,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// No summary line on stderr.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// Where `translate` looks for its default model, relative to the working directory and to
/// the executable (a checkout's `target/release/` or an installed binary's prefix).
const DEFAULT_MODEL: &str = "models/multi30k-en-de";

fn default_model() -> anyhow::Result<PathBuf> {
    let mut starts: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        starts.push(cwd);
    }
    if let Ok(exe) = std::env::current_exe() {
        starts.extend(exe.parent().map(Path::to_path_buf));
    }
    starts.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    for start in &starts {
        for dir in start.ancestors() {
            let candidate = dir.join(DEFAULT_MODEL);
            if candidate.join("config.json").is_file() {
                return Ok(candidate);
            }
        }
    }
    anyhow::bail!(
        "no default model found ({DEFAULT_MODEL} is not shipped yet); pass -m DIR with a model folder written by `gnmt train`"
    )
}

impl TranslateArgs {
    pub fn run(self) -> anyhow::Result<()> {
        crate::init_threads(self.threads)?;
        let model_dir = match &self.model {
            Some(m) => m.clone(),
            None => default_model()?,
        };
        let translator = Translator::load(&model_dir, &Device::Cpu)
            .with_context(|| format!("loading {}", model_dir.display()))?;
        let mut options = translator.default_options();
        if let Some(k) = self.beam_size {
            options.beam_size = k;
        }
        options.alpha = self.alpha.unwrap_or(options.alpha);
        options.beta = self.beta.unwrap_or(options.beta);
        options.prune_margin = self.prune_margin;
        options.n_best = self.n_best.unwrap_or(1);
        options.beam_size = options.beam_size.max(options.n_best);
        options.keep_attention = self.attention;
        anyhow::ensure!(options.beam_size >= 1, "--beam-size must be at least 1");

        let input: Box<dyn BufRead + Send> = match &self.input {
            Some(p) if p.as_os_str() != "-" => Box::new(std::io::BufReader::new(
                std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?,
            )),
            _ => Box::new(std::io::BufReader::new(std::io::stdin())),
        };
        let mut out: Box<dyn Write> = match &self.output {
            Some(p) if p.as_os_str() != "-" => Box::new(BufWriter::new(
                std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
            )),
            _ => Box::new(BufWriter::new(std::io::stdout())),
        };
        let input_name = self
            .input
            .as_ref()
            .map_or("stdin".to_string(), |p| p.display().to_string());

        // Reader thread: lines as (number, text), invalid UTF-8 replaced and reported.
        let (tx, rx) = mpsc::sync_channel::<std::io::Result<String>>(self.window.max(1) * 2);
        let reader_name = input_name.clone();
        std::thread::spawn(move || {
            for (n, line) in input.split(b'\n').enumerate() {
                let line = line.map(|mut bytes| {
                    if bytes.last() == Some(&b'\r') {
                        bytes.pop();
                    }
                    match String::from_utf8(bytes) {
                        Ok(s) => s,
                        Err(e) => {
                            eprintln!(
                                "warning: {reader_name}:{}: invalid UTF-8 replaced with U+FFFD",
                                n + 1
                            );
                            String::from_utf8_lossy(e.as_bytes()).into_owned()
                        }
                    }
                });
                let failed = line.is_err();
                if tx.send(line).is_err() || failed {
                    break;
                }
            }
        });

        let start = Instant::now();
        let (mut lines_done, mut sentences, mut tokens) = (0usize, 0usize, 0usize);
        while let Ok(first) = rx.recv() {
            let mut window = vec![first.with_context(|| format!("reading {input_name}"))?];
            while window.len() < self.window.max(1) {
                match rx.try_recv() {
                    Ok(line) => window.push(line.with_context(|| format!("reading {input_name}"))?),
                    Err(_) => break,
                }
            }
            let refs: Vec<&str> = window.iter().map(String::as_str).collect();
            let results =
                match translator.translate(&refs, &options, self.batch_size, self.max_input_len) {
                    Ok(r) => r,
                    Err(e) => {
                        // Lose nothing: every line of the failed window still gets its (empty) line.
                        eprintln!(
                            "error: {input_name}:{}-{}: {e}; empty output lines written",
                            lines_done + 1,
                            lines_done + window.len()
                        );
                        window
                            .iter()
                            .map(|_| LineResult {
                                nbest: Vec::new(),
                                source_tokens: 0,
                                cropped: false,
                            })
                            .collect()
                    }
                };
            for (k, r) in results.iter().enumerate() {
                let line_no = lines_done + k;
                if r.cropped {
                    eprintln!(
                        "warning: {input_name}:{}: longer than {} pieces; cropped",
                        line_no + 1,
                        self.max_input_len
                    );
                }
                if !r.nbest.is_empty() {
                    sentences += 1;
                    tokens += r.nbest[0].hypothesis.tokens.len();
                }
                self.write_line(&mut out, line_no, r, &translator)?;
            }
            out.flush()?;
            lines_done += window.len();
        }
        out.flush()?;
        if !self.quiet {
            let secs = start.elapsed().as_secs_f64();
            eprintln!(
                "translated {lines_done} lines ({sentences} non-empty) in {secs:.2}s: {:.1} sentences/s, {:.0} target tokens/s",
                sentences as f64 / secs.max(1e-9),
                tokens as f64 / secs.max(1e-9)
            );
        }
        Ok(())
    }

    fn write_line(
        &self,
        out: &mut dyn Write,
        id: usize,
        r: &LineResult,
        t: &Translator,
    ) -> anyhow::Result<()> {
        match (self.format, self.n_best.is_some()) {
            (Format::Text, false) => {
                writeln!(out, "{}", r.nbest.first().map_or("", |b| b.text.as_str()))?
            }
            (Format::Text, true) => {
                if r.nbest.is_empty() {
                    writeln!(out, "{id} |||  ||| 0")?;
                }
                for h in &r.nbest {
                    writeln!(out, "{id} ||| {} ||| {:.6}", h.text, h.hypothesis.score)?;
                }
            }
            (Format::Json, _) => {
                let hyp = |h: &gnmt_infer::Translation| {
                    let mut v = serde_json::json!({
                        "translation": h.text, "score": h.hypothesis.score, "log_prob": h.hypothesis.log_prob,
                        "tokens": t.vocab().pieces(&h.hypothesis.tokens),
                    });
                    if self.attention {
                        v["attention"] = serde_json::json!(h.hypothesis.attention);
                    }
                    v
                };
                let mut v = match r.nbest.first() {
                    Some(best) => hyp(best),
                    None => {
                        serde_json::json!({"translation": "", "score": null, "log_prob": null, "tokens": []})
                    }
                };
                v["id"] = id.into();
                if r.cropped {
                    v["cropped"] = true.into();
                }
                if self.n_best.is_some() {
                    v["nbest"] = r.nbest.iter().map(hyp).collect();
                }
                writeln!(out, "{v}")?;
            }
        }
        Ok(())
    }
}
