//! One decoding pool per model: a thread that owns the translator and decodes the lines of
//! concurrent requests together.
//!
//! A request's lines are a job. The thread takes the first job waiting, then gathers more
//! until `batch_lines` lines are in hand or `batch_wait` has passed, drops the jobs whose
//! client has gone, and translates each group of jobs with the same decoding options in one
//! call (which sorts the lines by length into batches). The queue is bounded in lines: a job
//! that would pass `max_queued_lines` is refused at once, never held in unbounded memory.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gnmt_infer::{BeamOptions, LineResult, Translator};
use tokio::sync::{mpsc, oneshot};

/// How a pool batches and how much it holds.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// Lines gathered into one translate call at most.
    pub batch_lines: usize,
    /// How long the first job waits for others to join it.
    pub batch_wait: Duration,
    /// Lines queued (not yet being translated) at most.
    pub max_queued_lines: usize,
    /// Sentences decoded together (`translate --batch-size`).
    pub batch_size: usize,
    /// Longer inputs are cropped to this many pieces (`translate --max-input-len`).
    pub max_input_len: usize,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            batch_lines: 256,
            batch_wait: Duration::from_millis(5),
            max_queued_lines: 4096,
            batch_size: 32,
            max_input_len: 250,
        }
    }
}

/// Why a job was not translated.
#[derive(Debug, Clone, PartialEq)]
pub enum Refused {
    /// The queue holds too many lines already; try again later.
    Full,
    /// The pool's thread has stopped.
    Stopped,
    /// The translator failed on these lines.
    Failed(String),
}

struct Job {
    lines: Vec<String>,
    options: BeamOptions,
    reply: oneshot::Sender<Result<Vec<LineResult>, Refused>>,
}

/// Counters a pool keeps, for `/health`, `/metrics` and tests.
#[derive(Debug)]
pub struct PoolStats {
    /// Lines waiting to be translated.
    pub queued_lines: AtomicUsize,
    /// Translate calls made.
    pub batches: AtomicUsize,
    /// Lines translated.
    pub lines: AtomicUsize,
    /// Tokens of the best translations.
    pub target_tokens: AtomicUsize,
    /// Jobs dropped because their client had gone.
    pub abandoned: AtomicUsize,
    /// Microseconds spent in translate calls.
    pub busy_micros: AtomicUsize,
    /// Lines per translate call.
    pub batch_lines: prometheus_client::metrics::histogram::Histogram,
}

impl Default for PoolStats {
    fn default() -> Self {
        Self {
            queued_lines: AtomicUsize::new(0),
            batches: AtomicUsize::new(0),
            lines: AtomicUsize::new(0),
            target_tokens: AtomicUsize::new(0),
            abandoned: AtomicUsize::new(0),
            busy_micros: AtomicUsize::new(0),
            batch_lines: crate::metrics::batch_lines_histogram(),
        }
    }
}

/// A handle on a model's decoding thread; cheap to clone.
#[derive(Clone)]
pub struct Pool {
    jobs: mpsc::UnboundedSender<Job>,
    stats: Arc<PoolStats>,
    max_queued_lines: usize,
    /// The translator the thread decodes with, for what needs no decoding (its vocabulary).
    translator: Arc<Translator>,
}

impl Pool {
    /// Starts the decoding thread for `translator`.
    pub fn start(translator: Translator, options: PoolOptions) -> Self {
        let (jobs, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(PoolStats::default());
        let translator = Arc::new(translator);
        let pool = Self {
            jobs,
            stats: stats.clone(),
            max_queued_lines: options.max_queued_lines,
            translator: translator.clone(),
        };
        std::thread::Builder::new()
            .name("gnmt-decode".into())
            .spawn(move || decode_loop(&translator, options, rx, stats))
            .expect("spawning the decoding thread");
        pool
    }

    /// The model's decoding defaults (its `generation.json`).
    pub fn defaults(&self) -> BeamOptions {
        self.translator.default_options()
    }

    /// The subword pieces `text` is encoded into, as the decoder reads it (`</s>` last), or
    /// those of target ids.
    pub fn source_pieces(&self, text: &str) -> Vec<String> {
        let vocab = self.translator.vocab();
        let mut pieces = vocab
            .encode(text)
            .map_or_else(|_| Vec::new(), |ids| vocab.pieces(&ids));
        pieces.push("</s>".into());
        pieces
    }

    /// The pieces of target `ids`.
    pub fn pieces(&self, ids: &[u32]) -> Vec<String> {
        self.translator.vocab().pieces(ids)
    }

    pub fn stats(&self) -> &PoolStats {
        &self.stats
    }

    /// Translates `lines` with `options`, together with whatever else is queued.
    pub async fn translate(
        &self,
        lines: Vec<String>,
        options: BeamOptions,
    ) -> Result<Vec<LineResult>, Refused> {
        let n = lines.len();
        let queued = &self.stats.queued_lines;
        let admitted = queued.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |q| {
            (q + n <= self.max_queued_lines).then_some(q + n)
        });
        if admitted.is_err() {
            return Err(Refused::Full);
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            lines,
            options,
            reply,
        };
        if self.jobs.send(job).is_err() {
            queued.fetch_sub(n, Ordering::SeqCst);
            return Err(Refused::Stopped);
        }
        answer.await.unwrap_or(Err(Refused::Stopped))
    }
}

fn decode_loop(
    translator: &Translator,
    options: PoolOptions,
    mut rx: mpsc::UnboundedReceiver<Job>,
    stats: Arc<PoolStats>,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        gather(&mut jobs, &mut rx, &options);
        let (live, gone): (Vec<Job>, Vec<Job>) =
            jobs.into_iter().partition(|j| !j.reply.is_closed());
        let gone_lines: usize = gone.iter().map(|j| j.lines.len()).sum();
        stats.queued_lines.fetch_sub(gone_lines, Ordering::SeqCst);
        stats.abandoned.fetch_add(gone.len(), Ordering::SeqCst);
        for group in by_options(live) {
            translate_group(translator, &options, group, &stats);
        }
    }
}

/// Adds the jobs that arrive within `batch_wait` of now, up to `batch_lines` lines.
fn gather(jobs: &mut Vec<Job>, rx: &mut mpsc::UnboundedReceiver<Job>, options: &PoolOptions) {
    let deadline = Instant::now() + options.batch_wait;
    let mut lines: usize = jobs.iter().map(|j| j.lines.len()).sum();
    while lines < options.batch_lines {
        match rx.try_recv() {
            Ok(job) => {
                lines += job.lines.len();
                jobs.push(job);
            }
            Err(mpsc::error::TryRecvError::Empty) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_micros(200));
            }
            Err(_) => break,
        }
    }
}

/// Jobs split into groups of equal decoding options, in arrival order.
fn by_options(jobs: Vec<Job>) -> Vec<Vec<Job>> {
    let mut groups: Vec<Vec<Job>> = Vec::new();
    for job in jobs {
        match groups.iter_mut().find(|g| g[0].options == job.options) {
            Some(g) => g.push(job),
            None => groups.push(vec![job]),
        }
    }
    groups
}

fn translate_group(
    translator: &Translator,
    options: &PoolOptions,
    group: Vec<Job>,
    stats: &PoolStats,
) {
    let lines: Vec<&str> = group
        .iter()
        .flat_map(|j| j.lines.iter().map(String::as_str))
        .collect();
    let n = lines.len();
    // On one of rayon's workers: from this thread, outside the pool, every parallel step of
    // decoding would be handed over and waited for (about half the throughput on 2 cores).
    let started = Instant::now();
    let result = rayon::scope(|_| {
        translator.translate(
            &lines,
            &group[0].options,
            options.batch_size,
            options.max_input_len,
        )
    });
    let busy = started.elapsed().as_micros() as usize;
    stats.busy_micros.fetch_add(busy, Ordering::SeqCst);
    stats.queued_lines.fetch_sub(n, Ordering::SeqCst);
    stats.batches.fetch_add(1, Ordering::SeqCst);
    stats.batch_lines.observe(n as f64);
    match result {
        Ok(results) => {
            stats.lines.fetch_add(n, Ordering::SeqCst);
            let tokens: usize = results
                .iter()
                .filter_map(|r| r.nbest.first())
                .map(|t| t.hypothesis.tokens.len())
                .sum();
            stats.target_tokens.fetch_add(tokens, Ordering::SeqCst);
            let mut results = results.into_iter();
            for job in group {
                let mine: Vec<LineResult> = results.by_ref().take(job.lines.len()).collect();
                let _ = job.reply.send(Ok(mine)); // a client gone meanwhile: nothing to do
            }
        }
        Err(e) => {
            for job in group {
                let _ = job.reply.send(Err(Refused::Failed(e.to_string())));
            }
        }
    }
}
