//! `translate`: stdin (or a file) to stdout (or a file), exactly one output line per input
//! line, in order, whatever the input holds.
//!
//! A reader thread streams the input. The translator takes whatever lines are already
//! available (up to `--window`), sorts them by length into batches, and writes each output
//! line as soon as it and every line before it are done, so the program works interactively,
//! in pipes, and on files larger than memory. Several files (`translate a.txt b.txt --out-dir
//! OUT`, or a directory) go through the same pipeline one after the other, each written to a
//! temporary file renamed into place when complete (as is a single `-o` file).
//!
//! Large files can be split over processes ([`crate::shard`]): `--shard I/N` (or a Slurm job
//! array's task) translates one contiguous part of `-i` into `-o`, and under `mpirun -np N`
//! every rank translates its part and rank 0 joins them into `-o`.

use std::io::{BufRead, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use anyhow::Context;
use candle::Device;
use clap::{Parser, ValueEnum};
use gnmt_infer::{BeamOptions, LineResult, Translator};
#[cfg(feature = "embedded-model")]
use gnmt_model::checkpoint;
use gnmt_tokenizer::io::AtomicFile;
use indicatif::{ProgressBar, ProgressStyle};

use crate::checked::{self, real, whole, Interval};
use crate::models::DecodingKernels;
use crate::rate::rate;

/// Translate text with a trained gnmt model: one output line per input line, in order.
#[derive(Debug, Parser)]
#[command(name = "translate", version, about, long_about = None)]
pub struct TranslateArgs {
    /// Input files, or directories whose files are all translated, written into --out-dir
    /// under the same names.
    #[arg(value_name = "FILE", conflicts_with_all = ["input", "output"], requires = "out_dir")]
    pub files: Vec<PathBuf>,
    /// Output directory for the FILE arguments.
    #[arg(long, requires = "files")]
    pub out_dir: Option<PathBuf>,
    /// Draw the attention matrix of the (first non-empty) input sentence as a PNG heat map.
    #[arg(long, value_name = "PNG")]
    pub attention_png: Option<PathBuf>,
    #[command(flatten)]
    pub models: crate::models::ModelFlags,
    /// Input file, plain text (default: stdin; `-` also means stdin).
    #[arg(short, long)]
    pub input: Option<PathBuf>,
    /// Output file (default: stdout; `-` also means stdout).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Translate only part I of N of the -i file (I from 0; the parts are N contiguous runs of
    /// lines, so their outputs concatenated in order are the whole translation) into -o, and
    /// leave a marker (-o's name + .done) so a rerun skips a finished part. Default in a Slurm
    /// job array: the task's part (SLURM_ARRAY_TASK_ID of SLURM_ARRAY_TASK_COUNT). Under
    /// mpirun, each rank translates its part and rank 0 writes the whole -o.
    #[arg(long, value_name = "I/N", value_parser = crate::shard::parse, requires_all = ["input", "output"])]
    pub shard: Option<crate::shard::Shard>,
    #[command(flatten)]
    pub decoding: crate::decoding::DecodingFlags,
    /// GNMT's pruning margin: hypotheses scoring more than this below the best are dropped
    /// (off by default).
    #[arg(long, value_parser = real::<f64>(Interval::above(0.0, 1000.0)))]
    pub prune_margin: Option<f64>,
    /// Print the K best translations per line as `id ||| translation ||| score` (Marian).
    #[arg(long, value_parser = checked::beam_size())]
    pub n_best: Option<usize>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Include attention weights in JSON output.
    #[arg(long)]
    pub attention: bool,
    /// Sentences decoded together.
    #[arg(long, default_value_t = 32, value_parser = checked::batch_size())]
    pub batch_size: usize,
    /// Lines read ahead and sorted by length before batching.
    #[arg(long, default_value_t = 512, value_parser = whole::<usize>(1, 10_000_000))]
    pub window: usize,
    /// Source pieces per line; longer lines are cropped, with a warning.
    #[arg(long, default_value_t = 250, value_parser = whole::<usize>(1, 100_000))]
    pub max_input_len: usize,
    /// Worker threads (default: all cores).
    #[arg(long, value_parser = checked::threads())]
    pub threads: Option<usize>,
    /// Precision of the matrix products: f32; bf16 operands with f32 sums (faster on CPUs
    /// with AVX512-BF16, slow elsewhere); or int8 operands quantized per row with exact integer
    /// sums (fastest on CPUs with AVX512-VNNI; the products a model exported with
    /// `--storage int8` was stored for); or auto: int8 where the CPU has AVX512-VNNI, else the
    /// precision `gnmt train --matmul auto` picks (named on stderr). Translations may differ
    /// slightly from f32's. `--quantize int8` is the same option.
    /// [default: the products the model folder was stored for: int8 for one exported with
    /// `--storage int8`, on CPUs with AVX512-VNNI; f32 otherwise]
    #[arg(long, alias = "quantize", value_enum)]
    pub matmul: Option<crate::Matmul>,
    /// The operations the model runs on: fused (fast; on a GPU the CUDA kernels where an
    /// operation has one, the references elsewhere), or reference (composite candle
    /// operations, f32 only: the correctness baseline, several times slower on the CPU).
    /// [default: fused on the CPU, reference on a GPU]
    #[arg(long, value_enum)]
    pub kernels: Option<crate::KernelsArg>,
    /// Where the model computes: cpu, cuda, cuda:N (a GPU; needs a build with the `cuda`
    /// feature) or auto (the first GPU if there is one, else the CPU).
    #[arg(long, default_value = "cpu")]
    pub device: crate::device::DeviceArg,
    /// No summary line and no progress bar on stderr.
    #[arg(short, long)]
    pub quiet: bool,
}

/// What one input produced.
#[derive(Debug, Default)]
struct Stats {
    lines: usize,
    sentences: usize,
    tokens: usize,
    /// The first non-empty line and its result, kept for `--attention-png`.
    first: Option<(String, LineResult)>,
}

/// Lines from the reader thread: text (invalid UTF-8 replaced) and its size in bytes.
type ReadLine = std::io::Result<(String, usize)>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// Where the default model lies in a checkout (and in an installed prefix, without the
/// built-in copy).
#[cfg(not(feature = "embedded-model"))]
const DEFAULT_MODEL: &str = "models/multi30k-en-de";

/// The default model's files, compiled into the program.
#[cfg(feature = "embedded-model")]
const BUILT_IN: checkpoint::InMemoryFolder<'static> = {
    macro_rules! shipped {
        ($file:literal) => {
            include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../models/multi30k-en-de/",
                $file
            ))
        };
    }
    checkpoint::InMemoryFolder {
        label: "<built-in models/multi30k-en-de>",
        config: shipped!("config.json"),
        generation: Some(shipped!("generation.json")),
        tokenizer: shipped!("tokenizer.json"),
        model: shipped!("model.safetensors"),
    }
};

/// The model `translate` uses without `-m`: the built-in copy of the shipped model.
#[cfg(feature = "embedded-model")]
pub(crate) fn load_default_model(
    device: &Device,
    kernels: DecodingKernels,
) -> anyhow::Result<Translator> {
    kernels.load_in_memory(&BUILT_IN, device)
}

/// Built without the `embedded-model` feature: the shipped model folder, looked for under the
/// working directory and its parents, then beside the executable and its parents (a
/// checkout's `target/release/`, or an installed prefix holding `models/`).
#[cfg(not(feature = "embedded-model"))]
pub(crate) fn load_default_model(
    device: &Device,
    kernels: DecodingKernels,
) -> anyhow::Result<Translator> {
    let mut starts: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        starts.push(cwd);
    }
    if let Ok(exe) = std::env::current_exe() {
        starts.extend(exe.parent().map(Path::to_path_buf));
    }
    for start in &starts {
        for dir in start.ancestors() {
            let candidate = dir.join(DEFAULT_MODEL);
            if candidate.join("config.json").is_file() {
                return kernels.load(&candidate, device);
            }
        }
    }
    anyhow::bail!(
        "no default model: this translate was built without the built-in model and found no \
         {DEFAULT_MODEL} under the working directory or beside the program; pass -m DIR with \
         a model folder written by `gnmt train` or `gnmt export`"
    )
}

impl TranslateArgs {
    pub fn run(self) -> anyhow::Result<()> {
        crate::init_threads(self.threads)?;
        crate::on_pool(move || self.translate())
    }

    fn translate(self) -> anyhow::Result<()> {
        let compute = crate::ComputeFlags {
            matmul: self.matmul,
            kernels: self.kernels,
            device: self.device,
            quiet: self.quiet,
        };
        let device = compute.device()?;
        let translator = self.models.load(&device, compute.decoding_on(&device)?)?;
        let mut options = translator.default_options();
        self.decoding.apply(
            &mut options.beam_size,
            &mut options.alpha,
            &mut options.beta,
        );
        options.prune_margin = self.prune_margin;
        options.n_best = self.n_best.unwrap_or(1);
        options.beam_size = options.beam_size.max(options.n_best);
        anyhow::ensure!(options.beam_size >= 1, "--beam-size must be at least 1");

        options.keep_attention = self.attention || self.attention_png.is_some();
        let start = Instant::now();
        let mut total = Stats::default();
        let group = gnmt_dist::world();
        if let Some(split) = self.split(group)? {
            total = self.translate_split(split, group, &translator, &options)?;
            if !group.is_root() {
                return Ok(());
            }
        } else if self.files.is_empty() {
            let input: Box<dyn BufRead + Send> = match &self.input {
                Some(p) if p.as_os_str() != "-" => Box::new(std::io::BufReader::new(
                    std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?,
                )),
                _ => Box::new(std::io::BufReader::new(std::io::stdin())),
            };
            let size = self
                .input
                .as_ref()
                .filter(|p| p.as_os_str() != "-")
                .and_then(|p| std::fs::metadata(p).ok())
                .map(|m| m.len());
            let name = self
                .input
                .as_ref()
                .map_or("stdin".to_string(), |p| p.display().to_string());
            match self.output.as_ref().filter(|p| p.as_os_str() != "-") {
                Some(path) => {
                    let mut file = AtomicFile::create(path)?;
                    total = self.stream(input, &mut file, &name, size, &translator, &options)?;
                    file.commit()?;
                }
                None => {
                    let mut out = BufWriter::new(std::io::stdout());
                    total = self.stream(input, &mut out, &name, size, &translator, &options)?;
                }
            }
        } else {
            let out_dir = self
                .out_dir
                .clone()
                .expect("clap requires --out-dir with files");
            std::fs::create_dir_all(&out_dir)
                .with_context(|| format!("creating {}", out_dir.display()))?;
            for (src, dst) in plan_files(&self.files, &out_dir)? {
                let input = Box::new(std::io::BufReader::new(
                    std::fs::File::open(&src)
                        .with_context(|| format!("opening {}", src.display()))?,
                ));
                let size = std::fs::metadata(&src).ok().map(|m| m.len());
                let mut file = AtomicFile::create(&dst)?;
                let name = src.display().to_string();
                let stats = self.stream(input, &mut file, &name, size, &translator, &options)?;
                file.commit()?;
                if !self.quiet {
                    eprintln!(
                        "{} -> {}: {} lines",
                        src.display(),
                        dst.display(),
                        stats.lines
                    );
                }
                total.lines += stats.lines;
                total.sentences += stats.sentences;
                total.tokens += stats.tokens;
                total.first = total.first.or(stats.first);
            }
        }
        if let Some(png) = &self.attention_png {
            draw_attention(png, &total, &translator)?;
        }
        if !self.quiet {
            let secs = start.elapsed().as_secs_f64();
            let products: Vec<String> = translator
                .kernels()
                .iter()
                .map(|k| k.precision().to_string())
                .collect();
            eprintln!(
                "translated {} lines ({} non-empty) in {secs:.2}s with {} products: {}, {}",
                total.lines,
                total.sentences,
                products.join(" + "),
                rate(total.sentences, secs, "sentence"),
                rate(total.tokens, secs, "target token")
            );
        }
        Ok(())
    }

    /// How the input is split, if it is: `--shard`, a Slurm array task, or the ranks of a job.
    fn split(&self, group: &gnmt_dist::Group) -> anyhow::Result<Option<Split>> {
        let file = |p: &Option<PathBuf>| p.clone().filter(|p| p.as_os_str() != "-");
        let files = file(&self.input).zip(file(&self.output));
        if group.is_distributed() {
            let Some((input, output)) = files else {
                anyhow::bail!(
                    "under mpirun, translate needs -i FILE and -o FILE: every rank translates a \
                     part of the input and rank 0 writes the output"
                );
            };
            anyhow::ensure!(
                self.shard.is_none() && self.attention_png.is_none(),
                "under mpirun the ranks are the shards: --shard and --attention-png do not apply"
            );
            return Ok(Some(Split::Job { input, output }));
        }
        let from_slurm = || crate::shard::Shard::from_slurm_array(|v| std::env::var(v).ok());
        let Some(shard) = self
            .shard
            .or_else(|| files.as_ref().and_then(|_| from_slurm()))
        else {
            return Ok(None);
        };
        let Some((input, output)) = files else {
            anyhow::bail!("--shard needs -i FILE and -o FILE");
        };
        if self.shard.is_none() && !self.quiet {
            eprintln!(
                "translating part {shard} of {} (the task of this Slurm job array)",
                input.display()
            );
        }
        Ok(Some(Split::Part {
            input,
            output,
            shard,
        }))
    }

    /// Translates a part of a file (`Split::Part`), or this rank's part of a job's file, then
    /// on rank 0 the parts joined in order into the output (`Split::Job`). Finished parts are
    /// skipped on a rerun.
    fn translate_split(
        &self,
        split: Split,
        group: &gnmt_dist::Group,
        translator: &Translator,
        options: &BeamOptions,
    ) -> anyhow::Result<Stats> {
        use crate::shard::{self, Shard};
        let settings = format!(
            "{:?}; {options:?}; format {:?}; max_input_len {}",
            self.models, self.format, self.max_input_len
        );
        let input = match &split {
            Split::Part { input, .. } | Split::Job { input, .. } => input,
        };
        let lines = shard::count_lines(input)?;
        // The marker the whole output gets when a job has joined its parts.
        let whole_record = shard::marker(
            input,
            Shard { index: 0, count: 1 },
            &shard::whole(input, lines)?,
            &settings,
        )?;
        let (output, shard) = match &split {
            Split::Part { output, shard, .. } => (output.clone(), *shard),
            Split::Job { output, .. } => {
                if shard::is_done(output, &whole_record) {
                    if group.is_root() && !self.quiet {
                        eprintln!(
                            "{} is already translated (marker); nothing to do",
                            output.display()
                        );
                    }
                    return Ok(Stats::default());
                }
                let shard = Shard {
                    index: group.rank(),
                    count: group.size(),
                };
                (part_file(output, shard), shard)
            }
        };
        let part = shard::locate(input, shard, lines)?;
        let record = shard::marker(input, shard, &part, &settings)?;
        let mut stats = Stats::default();
        if shard::is_done(&output, &record) {
            if !self.quiet {
                eprintln!(
                    "{}{}: part {shard} is already translated (marker); skipped",
                    group.label(),
                    output.display()
                );
            }
        } else {
            let name = format!(
                "{} (part {shard}, from line {})",
                input.display(),
                part.lines.start + 1
            );
            let mut file = AtomicFile::create(&output)?;
            let reader = shard::open_part(input, &part)?;
            stats = self.stream(reader, &mut file, &name, None, translator, options)?;
            file.commit()?;
            shard::mark_done(&output, record)?;
        }
        let Split::Job { output, .. } = split else {
            return Ok(stats);
        };
        // Every part is written before rank 0 reads them; the summary counts every rank's.
        let mut counts = [stats.lines, stats.sentences, stats.tokens].map(|n| n as f64);
        group.all_reduce_sum_f64(&mut counts);
        [stats.lines, stats.sentences, stats.tokens] = counts.map(|n| n as usize);
        if group.is_root() {
            join_parts(&output, group.size(), whole_record)?;
        }
        Ok(stats)
    }

    /// Translates one input stream into `out`, line for line.
    fn stream(
        &self,
        input: Box<dyn BufRead + Send>,
        out: &mut dyn Write,
        input_name: &str,
        size: Option<u64>,
        translator: &Translator,
        options: &BeamOptions,
    ) -> anyhow::Result<Stats> {
        // Reader thread: lines with their byte counts, invalid UTF-8 replaced and reported.
        let (tx, rx) = mpsc::sync_channel::<ReadLine>(self.window.max(1) * 2);
        let reader_name = input_name.to_string();
        std::thread::spawn(move || {
            for (n, line) in input.split(b'\n').enumerate() {
                let line = line.map(|mut bytes| {
                    let read = bytes.len() + 1;
                    if bytes.last() == Some(&b'\r') {
                        bytes.pop();
                    }
                    let text = match String::from_utf8(bytes) {
                        Ok(s) => s,
                        Err(e) => {
                            eprintln!(
                                "warning: {reader_name}:{}: invalid UTF-8 replaced with U+FFFD",
                                n + 1
                            );
                            String::from_utf8_lossy(e.as_bytes()).into_owned()
                        }
                    };
                    (text, read)
                });
                let failed = line.is_err();
                if tx.send(line).is_err() || failed {
                    break;
                }
            }
        });
        let progress = self.progress_bar(size, input_name);
        let mut stats = Stats::default();
        while let Ok(first) = rx.recv() {
            let mut window = vec![first.with_context(|| format!("reading {input_name}"))?];
            while window.len() < self.window.max(1) {
                match rx.try_recv() {
                    Ok(line) => window.push(line.with_context(|| format!("reading {input_name}"))?),
                    Err(_) => break,
                }
            }
            let refs: Vec<&str> = window.iter().map(|(text, _)| text.as_str()).collect();
            let results =
                match translator.translate(&refs, options, self.batch_size, self.max_input_len) {
                    Ok(r) => r,
                    Err(e) => {
                        // Out of memory, every later window would fail too: stop, and say
                        // what to lower (the lines before are written).
                        if let Some(hint) =
                            crate::decoding::out_of_memory(&e, self.batch_size, options.beam_size)
                        {
                            return Err(hint.context(format!(
                                "{input_name}:{}-{}",
                                stats.lines + 1,
                                stats.lines + window.len()
                            )));
                        }
                        // Lose nothing: every line of the failed window still gets its (empty) line.
                        eprintln!(
                            "error: {input_name}:{}-{}: {e}; empty output lines written",
                            stats.lines + 1,
                            stats.lines + window.len()
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
                let line_no = stats.lines + k;
                if r.cropped {
                    eprintln!(
                        "warning: {input_name}:{}: longer than {} pieces; cropped",
                        line_no + 1,
                        self.max_input_len
                    );
                }
                if !r.nbest.is_empty() {
                    stats.sentences += 1;
                    stats.tokens += r.nbest[0].hypothesis.tokens.len();
                    if stats.first.is_none() && self.attention_png.is_some() {
                        stats.first = Some((window[k].0.clone(), r.clone()));
                    }
                }
                self.write_line(out, line_no, r, translator)?;
            }
            out.flush()?;
            stats.lines += window.len();
            if let Some(p) = &progress {
                p.inc(window.iter().map(|(_, n)| *n as u64).sum());
            }
        }
        out.flush()?;
        if let Some(p) = progress {
            p.finish_and_clear();
        }
        Ok(stats)
    }

    /// A progress bar over the bytes of a file, when stderr is a terminal.
    fn progress_bar(&self, size: Option<u64>, name: &str) -> Option<ProgressBar> {
        let size = size.filter(|_| !self.quiet && std::io::stderr().is_terminal())?;
        let bar = ProgressBar::new(size);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:40}] {percent}% {binary_bytes_per_sec} eta {eta}",
            )
            .ok()?
            .progress_chars("=> "),
        );
        bar.set_message(name.to_string());
        Some(bar)
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

/// How `translate` splits its input over processes.
enum Split {
    /// `--shard I/N`, or a Slurm array task: one part of `input` into `output`.
    Part {
        input: PathBuf,
        output: PathBuf,
        shard: crate::shard::Shard,
    },
    /// The ranks of an MPI job: each its part, then rank 0 all of `output`.
    Job { input: PathBuf, output: PathBuf },
}

/// Where rank `shard.index` of a job writes its part of `output` (beside it, so the join is a
/// local copy on a shared file system).
fn part_file(output: &Path, shard: crate::shard::Shard) -> PathBuf {
    let mut name = output.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".part-{}-of-{}", shard.index, shard.count));
    output.with_file_name(name)
}

/// Joins a job's `count` parts of `output` in order into `output` (atomically), marks it done
/// with `record`, and removes the parts and their markers.
fn join_parts(output: &Path, count: usize, record: serde_json::Value) -> anyhow::Result<()> {
    use crate::shard::{self, Shard};
    let mut out = AtomicFile::create(output)?;
    let parts: Vec<PathBuf> = (0..count)
        .map(|index| part_file(output, Shard { index, count }))
        .collect();
    for part in &parts {
        let mut r = std::fs::File::open(part).with_context(|| {
            format!(
                "opening {}: the parts must be on a file system every rank shares",
                part.display()
            )
        })?;
        std::io::copy(&mut r, &mut out).with_context(|| format!("copying {}", part.display()))?;
    }
    out.commit()?;
    shard::mark_done(output, record)?;
    for part in &parts {
        // Leftovers are harmless: a rerun finds the whole output done.
        let _ = std::fs::remove_file(shard::marker_path(part));
        let _ = std::fs::remove_file(part);
    }
    Ok(())
}

/// The (input, output) file pairs for `files` (directories expanded to their files, sorted),
/// refusing two inputs that would write the same output.
fn plan_files(files: &[PathBuf], out_dir: &Path) -> anyhow::Result<Vec<(PathBuf, PathBuf)>> {
    let mut inputs = Vec::new();
    for f in files {
        if f.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(f)
                .with_context(|| format!("reading directory {}", f.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect();
            entries.sort();
            inputs.extend(entries);
        } else {
            inputs.push(f.clone());
        }
    }
    let mut seen = std::collections::HashMap::new();
    let mut plan = Vec::new();
    for src in inputs {
        let name = src
            .file_name()
            .with_context(|| format!("{}: not a file name", src.display()))?;
        let dst = out_dir.join(name);
        if let Some(other) = seen.insert(dst.clone(), src.clone()) {
            anyhow::bail!(
                "{} and {} would both be written to {}",
                other.display(),
                src.display(),
                dst.display()
            );
        }
        anyhow::ensure!(
            std::fs::canonicalize(&src).ok() != std::fs::canonicalize(&dst).ok(),
            "{} would overwrite itself; choose another --out-dir",
            src.display()
        );
        plan.push((src, dst));
    }
    anyhow::ensure!(!plan.is_empty(), "no input files found");
    Ok(plan)
}

/// The attention heat map of the first translated sentence: target pieces down, source pieces
/// across, `</s>` included where the model attended from or to it.
fn draw_attention(png: &Path, stats: &Stats, t: &Translator) -> anyhow::Result<()> {
    let Some((line, result)) = &stats.first else {
        anyhow::bail!("--attention-png: the input has no non-empty line to draw")
    };
    if stats.sentences > 1 {
        eprintln!("warning: --attention-png draws the first sentence only");
    }
    let best = result.nbest.first().context("no translation")?;
    let weights = &best.hypothesis.attention;
    let mut cols = t.vocab().pieces(&t.vocab().encode(line)?);
    let mut rows = t.vocab().pieces(&best.hypothesis.tokens);
    let width = weights.first().map_or(0, Vec::len);
    while cols.len() < width {
        cols.push("</s>".into());
    }
    cols.truncate(width);
    while rows.len() < weights.len() {
        rows.push("</s>".into());
    }
    rows.truncate(weights.len());
    crate::plot::heatmap(
        png,
        &format!("attention: {}", best.text),
        &rows,
        &cols,
        weights,
    )?;
    Ok(())
}
