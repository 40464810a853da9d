//! `gnmt serve`: translation over HTTP, speaking LibreTranslate's API (so Mastodon, Weblate,
//! browser extensions and the `libretranslatepy` / npm `libretranslate` clients work
//! unchanged) and a native route with the decoder's settings.
//!
//! Requests do not decode on their own: their lines go to one decoding pool per model
//! ([`pool`]), which gathers the lines of concurrent requests (up to a budget, waiting a
//! moment for more) and translates them together, so a busy server decodes in full batches.
//! The decoder is batch-invariant on the CPU, so every line translates as `translate` would
//! translate it alone.

pub mod api;
pub mod client;
mod detect;
mod metrics;
pub mod pool;

use std::future::Future;
use std::time::Duration;

pub use api::{router, Language, Served};
pub use pool::{Pool, PoolOptions};

/// What the server accepts, and how long it waits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Characters per request, all lines together (LibreTranslate's `--char-limit`).
    pub char_limit: usize,
    /// Bytes of a request body.
    pub body_bytes: usize,
    /// How long a request may take, queueing included (504 after).
    pub timeout: Duration,
    /// The key every request must carry (`api_key`), if any.
    pub api_key: Option<String>,
    /// Answer browsers from any origin (CORS `*`).
    pub cors: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            char_limit: 5000,
            body_bytes: 1 << 20,
            timeout: Duration::from_secs(30),
            api_key: None,
            cors: false,
        }
    }
}

/// Serves `served` on `listener` until `shutdown` completes; then stops accepting, lets the
/// requests in flight finish, and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    served: Served,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(served, limits))
        .with_graceful_shutdown(shutdown)
        .await
}
