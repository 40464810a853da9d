//! `GET /metrics` in Prometheus's text format: requests by route and status, their latency,
//! and per language pair the queue depth, the lines and target tokens translated, the
//! translate calls and their sizes, and the requests abandoned by their clients.
//!
//! The server owns its metrics (no global registry), so several servers in one process,
//! as in the tests, count apart.

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::api::Served;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

fn latency_histogram() -> Histogram {
    // 1 ms to about 65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// A histogram of lines per translate call: 1 to 4096.
pub(crate) fn batch_lines_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 13))
}

/// What the HTTP side counts.
#[derive(Debug)]
pub(crate) struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabel, Histogram, fn() -> Histogram>,
}

impl HttpMetrics {
    pub(crate) fn new() -> Self {
        Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
        }
    }

    /// One request to `route` answered with `status` after `took`.
    pub(crate) fn record(&self, route: &str, status: u16, took: Duration) {
        let route = route.to_string();
        self.requests
            .get_or_create(&RequestLabels {
                route: route.clone(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabel { route })
            .observe(took.as_secs_f64());
    }

    /// Every metric, as Prometheus reads it.
    pub(crate) fn render(&self, served: &Served) -> String {
        let mut registry = Registry::with_prefix("gnmt");
        registry.register(
            "http_requests",
            "HTTP requests answered, by route and status",
            self.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from a request's arrival to its answer, by route",
            self.latency.clone(),
        );
        for model in &served.models {
            let pair = format!("{}-{}", model.source.code, model.target.code);
            let sub = registry.sub_registry_with_label(("pair".into(), pair.into()));
            let stats = model.pool.stats();
            let count = |a: &std::sync::atomic::AtomicUsize| a.load(SeqCst) as u64;
            sub.register(
                "queued_lines",
                "Lines waiting to be translated",
                ConstGauge::new(stats.queued_lines.load(SeqCst) as i64),
            );
            sub.register(
                "translated_lines",
                "Lines translated",
                ConstCounter::new(count(&stats.lines)),
            );
            sub.register(
                "target_tokens",
                "Tokens of the best translations",
                ConstCounter::new(count(&stats.target_tokens)),
            );
            sub.register(
                "abandoned_requests",
                "Requests dropped from the queue because their client had gone",
                ConstCounter::new(count(&stats.abandoned)),
            );
            sub.register(
                "batch_lines",
                "Lines per translate call (requests batched together)",
                stats.batch_lines.clone(),
            );
        }
        let mut text = String::new();
        encode(&mut text, &registry).expect("writing to a String cannot fail");
        text
    }
}
