//! `serve`: translation over HTTP (LibreTranslate's API and a native one) until SIGTERM or
//! Ctrl-C, after which it stops accepting, finishes the requests in flight and exits 0.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use gnmt_infer::Translator;
use gnmt_serve::api::ServedModel;
use gnmt_serve::{Language, Limits, Pool, PoolOptions, Served};

use crate::checked::{self, whole};
use crate::ComputeFlags;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A model to serve and its languages, as SRC-TGT=DIR (e.g. en-de=models/multi30k-en-de);
    /// repeat for more pairs (a multilingual model once per pair it serves: en-de=M en-fr=M).
    /// Default: the shipped English-German model.
    #[arg(short = 'm', long = "model", value_parser = parse_model)]
    pub models: Vec<ModelArg>,
    /// Address to listen on (0.0.0.0 for every interface).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port, printed at start).
    #[arg(long, default_value_t = 5000, value_parser = whole::<u16>(0, 65_535))]
    pub port: u16,
    /// Characters per request, all texts together (LibreTranslate's --char-limit).
    #[arg(long, default_value_t = 5000, value_parser = whole::<usize>(1, 100_000_000))]
    pub char_limit: usize,
    /// Seconds a request may take, queueing included (504 after).
    #[arg(long, default_value_t = 30, value_parser = whole::<u64>(1, 86_400))]
    pub timeout_secs: u64,
    /// Milliseconds a request waits for others to share its batch.
    #[arg(long, default_value_t = 5, value_parser = whole::<u64>(0, 10_000))]
    pub batch_wait_ms: u64,
    /// Lines waiting per model at most; past it requests get 503 with Retry-After.
    #[arg(long, default_value_t = 4096, value_parser = whole::<usize>(1, 10_000_000))]
    pub max_queue: usize,
    /// Sentences decoded together.
    #[arg(long, default_value_t = 32, value_parser = checked::batch_size())]
    pub batch_size: usize,
    /// A file holding the API key every request must give (`api_key`); 403 without it.
    #[arg(long)]
    pub api_key_file: Option<PathBuf>,
    /// Answer browser requests from any origin (CORS `*`).
    #[arg(long)]
    pub cors: bool,
}

/// `SRC-TGT=DIR`.
#[derive(Debug, Clone)]
pub struct ModelArg {
    pub source: String,
    pub target: String,
    pub dir: PathBuf,
}

fn parse_model(s: &str) -> Result<ModelArg, String> {
    let usage = || format!("{s:?}: expected SRC-TGT=DIR, e.g. en-de=models/multi30k-en-de");
    let (pair, dir) = s.split_once('=').ok_or_else(usage)?;
    let (source, target) = pair.split_once('-').ok_or_else(usage)?;
    let code =
        |c: &str| !c.is_empty() && c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_');
    if !code(source) || !code(target) || dir.is_empty() {
        return Err(usage());
    }
    Ok(ModelArg {
        source: source.to_string(),
        target: target.to_string(),
        dir: PathBuf::from(dir),
    })
}

impl ServeArgs {
    pub fn run(self, compute: ComputeFlags) -> anyhow::Result<()> {
        let device = compute.device()?;
        let kernels = compute.decoding_on(&device)?;
        let pool_options = PoolOptions {
            batch_wait: Duration::from_millis(self.batch_wait_ms),
            max_queued_lines: self.max_queue,
            batch_size: self.batch_size,
            ..PoolOptions::default()
        };
        let mut served = Served::default();
        let mut seen = Vec::new();
        let start = |translator: Translator, source: &str, target: &str| ServedModel {
            source: Language::from_code(source),
            target: Language::from_code(target),
            pool: Pool::start(translator, pool_options.clone()),
        };
        if self.models.is_empty() {
            let translator = super::translate::load_default_model(&device, kernels)?;
            served.models.push(start(translator, "en", "de"));
        }
        for m in &self.models {
            anyhow::ensure!(
                !seen.contains(&(&m.source, &m.target)),
                "two models for {}-{}: serve one per language pair",
                m.source,
                m.target
            );
            seen.push((&m.source, &m.target));
            let mut translator = kernels.load(&m.dir, &device)?;
            // A multilingual model serves the pair's target language (name it once per pair).
            if !translator.languages().is_empty() {
                translator.set_target_language(&m.target)?;
            }
            served.models.push(start(translator, &m.source, &m.target));
        }
        let api_key = match &self.api_key_file {
            None => None,
            Some(path) => {
                let key = std::fs::read_to_string(path)
                    .with_context(|| format!("reading the API key from {}", path.display()))?;
                let key = key.trim().to_string();
                anyhow::ensure!(
                    !key.is_empty(),
                    "{}: the API key file is empty",
                    path.display()
                );
                Some(key)
            }
        };
        let limits = Limits {
            char_limit: self.char_limit,
            timeout: Duration::from_secs(self.timeout_secs),
            api_key,
            cors: self.cors,
            ..Limits::default()
        };
        let pairs: Vec<String> = served
            .models
            .iter()
            .map(|m| format!("{}-{}", m.source.code, m.target.code))
            .collect();
        // Request logs on stderr: each request's method, path, status and latency, unless
        // RUST_LOG says otherwise (RUST_LOG=off silences them).
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("tower_http=info"));
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_target(false)
            .compact()
            .init();
        let runtime = tokio::runtime::Runtime::new().context("starting the server's runtime")?;
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind((self.host.as_str(), self.port))
                .await
                .with_context(|| format!("listening on {}:{}", self.host, self.port))?;
            let address = listener.local_addr()?;
            eprintln!("serving {} on http://{address}", pairs.join(", "));
            gnmt_serve::serve(listener, served, limits, stop_signal())
                .await
                .context("serving")?;
            eprintln!("stopped: every request in flight answered");
            Ok(())
        })
    }
}

/// Completes on SIGTERM or Ctrl-C.
async fn stop_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_arguments_name_a_pair_and_a_folder() {
        let m = parse_model("en-de=models/x").unwrap();
        assert_eq!((m.source.as_str(), m.target.as_str()), ("en", "de"));
        assert_eq!(m.dir, PathBuf::from("models/x"));
        for bad in ["models/x", "en=models/x", "en-de=", "-de=x", "e n-de=x"] {
            let e = parse_model(bad).unwrap_err();
            assert!(e.contains("SRC-TGT=DIR"), "{bad}: {e}");
        }
    }
}
