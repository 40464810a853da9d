//! `gnmt bench serve`: a server under load. `--clients` concurrent clients send one sentence
//! per `POST /translate` for `--seconds`, over loopback, to a server in this process; the
//! report gives requests, errors, latency percentiles and throughput, against `translate`'s
//! rate on the same sentences (one call over all of them, batches of `--batch-size`), measured
//! first in the same command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use gnmt_serve::api::ServedModel;
use gnmt_serve::{client, Language, Limits, Pool, PoolOptions, Served};
use gnmt_tokenizer::Lines;

use crate::checked::{self, whole};

#[derive(Debug, Args)]
pub struct BenchServeArgs {
    /// Model folder.
    #[arg(short, long)]
    pub model: PathBuf,
    /// Source sentences, sent round-robin (default: Multi30k test_2016_flickr.en).
    #[arg(long)]
    pub src: Option<PathBuf>,
    /// Concurrent clients, each sending one request after another.
    #[arg(long, default_value_t = 64, value_parser = whole::<usize>(1, 4096))]
    pub clients: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 30, value_parser = whole::<u64>(1, 3600))]
    pub seconds: u64,
    /// Milliseconds the server waits for requests to share a batch.
    #[arg(long, default_value_t = 5, value_parser = whole::<u64>(0, 10_000))]
    pub batch_wait_ms: u64,
    /// Sentences decoded together, by the server and by the `translate` baseline.
    #[arg(long, default_value_t = 32, value_parser = checked::batch_size())]
    pub batch_size: usize,
}

/// What the clients saw.
#[derive(Default)]
struct Load {
    latencies: Vec<Duration>,
    errors: usize,
    first_error: Option<String>,
}

impl BenchServeArgs {
    pub fn run(self, compute: crate::ComputeFlags) -> anyhow::Result<()> {
        let device = compute.device()?;
        let decoding = compute.decoding_on(&device)?;
        let src = super::source_or_multi30k_test(&self.src)?;
        let lines: Vec<String> = Lines::read(&src)?.iter().map(str::to_string).collect();
        anyhow::ensure!(!lines.is_empty(), "{}: no sentences", src.display());
        let load = || decoding.load(&self.model, &device);
        let translator = load()?;
        let options = translator.default_options();
        println!(
            "bench serve: {} on {} ({} sentences), beam {}, {} clients for {} s, {} threads",
            self.model.display(),
            src.display(),
            lines.len(),
            options.beam_size,
            self.clients,
            self.seconds,
            rayon::current_num_threads()
        );

        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let start = Instant::now();
        crate::on_pool(|| translator.translate(&refs, &options, self.batch_size, 250))?;
        let baseline = lines.len() as f64 / start.elapsed().as_secs_f64();
        println!("translate, all sentences in one call: {baseline:.1} sentences/s");

        let pool = Pool::start(
            load()?,
            PoolOptions {
                batch_wait: Duration::from_millis(self.batch_wait_ms),
                batch_size: self.batch_size,
                max_queued_lines: self.clients.max(4096),
                ..PoolOptions::default()
            },
        );
        let served = Served {
            models: vec![ServedModel {
                source: Language::from_code("en"),
                target: Language::from_code("de"),
                pool: pool.clone(),
            }],
        };
        let runtime = tokio::runtime::Runtime::new()?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let address = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let limits = Limits {
            timeout: Duration::from_secs(self.seconds + 60),
            char_limit: usize::MAX,
            ..Limits::default()
        };
        let server = std::thread::spawn(move || {
            runtime.block_on(gnmt_serve::serve(listener, served, limits, async {
                let _ = stopped.await;
            }))
        });

        let start = Instant::now();
        let result = self.load_server(address, &lines);
        let secs = start.elapsed().as_secs_f64();
        let _ = stop.send(());
        server
            .join()
            .map_err(|_| anyhow::anyhow!("the server thread panicked"))??;
        let mut result = result?;

        let n = result.latencies.len();
        result.latencies.sort();
        let percentile = |p: f64| {
            let i = ((n as f64 * p).ceil() as usize).clamp(1, n.max(1)) - 1;
            result
                .latencies
                .get(i)
                .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };
        let rate = n as f64 / secs;
        let stats = pool.stats();
        let batches = stats.batches.load(Ordering::SeqCst).max(1);
        let busy = stats.busy_micros.load(Ordering::SeqCst) as f64 / 1e6;
        println!(
            "served: {n} requests in {secs:.1} s, {} errors: {rate:.1} sentences/s, latency p50 \
             {:.0} ms, p99 {:.0} ms, max {:.0} ms; {:.1} lines per translate call, decoding \
             {:.0}% of the time",
            result.errors,
            percentile(0.5),
            percentile(0.99),
            percentile(1.0),
            stats.lines.load(Ordering::SeqCst) as f64 / batches as f64,
            100.0 * busy / secs
        );
        if let Some(e) = result.first_error {
            println!("first error: {e}");
        }
        println!("served vs translate: {:.2}x", rate / baseline);
        Ok(())
    }

    /// `--clients` threads sending requests until `--seconds` have passed.
    fn load_server(&self, address: SocketAddr, lines: &[String]) -> anyhow::Result<Load> {
        let deadline = Instant::now() + Duration::from_secs(self.seconds);
        let next = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicBool::new(false));
        let bodies: Arc<Vec<Vec<u8>>> = Arc::new(
            lines
                .iter()
                .map(|l| serde_json::json!({"q": l, "source": "en", "target": "de"}).to_string())
                .map(String::into_bytes)
                .collect(),
        );
        let clients: Vec<_> = (0..self.clients)
            .map(|_| {
                let (next, failed, bodies) = (next.clone(), failed.clone(), bodies.clone());
                std::thread::spawn(move || {
                    let mut load = Load::default();
                    while Instant::now() < deadline && !failed.load(Ordering::Relaxed) {
                        let body = &bodies[next.fetch_add(1, Ordering::Relaxed) % bodies.len()];
                        let sent = Instant::now();
                        let reply = client::request(
                            address,
                            "POST",
                            "/translate",
                            "application/json",
                            body,
                            Duration::from_secs(120),
                        );
                        match reply {
                            Ok(r) if r.status == 200 => load.latencies.push(sent.elapsed()),
                            other => {
                                load.errors += 1;
                                let what = match other {
                                    Ok(r) => format!(
                                        "{}: {}",
                                        r.status,
                                        String::from_utf8_lossy(&r.body)
                                    ),
                                    Err(e) => e.to_string(),
                                };
                                load.first_error.get_or_insert(what);
                                if load.errors > 100 {
                                    failed.store(true, Ordering::Relaxed);
                                }
                            }
                        }
                    }
                    load
                })
            })
            .collect();
        let mut all = Load::default();
        for c in clients {
            let load = c
                .join()
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))?;
            all.latencies.extend(load.latencies);
            all.errors += load.errors;
            if all.first_error.is_none() {
                all.first_error = load.first_error;
            }
        }
        Ok(all)
    }
}
