//! `/metrics` in Prometheus text format: request counts and latency
//! histograms per route, documents loaded, store size, damaged records.
//! The registry belongs to the app state (no process-global recorder), so
//! several daemons in one test process keep separate numbers.

use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::AppState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

type HistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// The daemon's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: HistogramFamily,
    documents_loaded: Gauge<i64, AtomicI64>,
    cache_bytes: Gauge<i64, AtomicI64>,
    store_bytes: Gauge<i64, AtomicI64>,
    damaged_records: Gauge<i64, AtomicI64>,
    connections_refused: Counter,
}

fn latency_histogram() -> Histogram {
    // 0.25 ms .. ~8 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("sitesync");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let documents_loaded = Gauge::default();
        let cache_bytes = Gauge::default();
        let store_bytes = Gauge::default();
        let damaged_records = Gauge::default();
        let connections_refused = Counter::default();
        registry.register(
            "http_requests",
            "HTTP requests by method, route and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by method and route",
            latency.clone(),
        );
        registry.register(
            "documents_loaded",
            "Automerge documents in memory",
            documents_loaded.clone(),
        );
        registry.register(
            "cache_bytes",
            "Estimated heap of the documents in memory (bounded by --max-cache-mb)",
            cache_bytes.clone(),
        );
        registry.register(
            "store_size_bytes",
            "Bytes the store uses on disk",
            store_bytes.clone(),
        );
        registry.register(
            "damaged_records",
            "Stored records found damaged and skipped since start",
            damaged_records.clone(),
        );
        registry.register(
            "connections_refused",
            "API sockets closed at accept because --max-connections were open",
            connections_refused.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            documents_loaded,
            cache_bytes,
            store_bytes,
            damaged_records,
            connections_refused,
        }
    }
}

impl Metrics {
    /// Registers the sync connections' counters (replication owns them: it
    /// exists before the metrics do).
    pub fn register_sync(&mut self, counters: crate::replication::SyncCounters) {
        self.registry.register(
            "sync_frames_in",
            "Frames received from relays and LAN peers",
            counters.frames_in,
        );
        self.registry.register(
            "sync_frames_out",
            "Frames sent to relays and LAN peers",
            counters.frames_out,
        );
        self.registry.register(
            "peers_refused",
            "LAN peer sockets closed at accept because --max-peers was reached",
            counters.peers_refused,
        );
    }

    /// An API socket was closed at accept: the connection cap was reached.
    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }
}

/// The method as a label: the standard ones by name, any other as
/// `other`. Anyone may send any method (the guard answers after this
/// records), and each distinct label would be kept forever.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method as M;
    [
        M::GET,
        M::HEAD,
        M::POST,
        M::PUT,
        M::PATCH,
        M::DELETE,
        M::OPTIONS,
        M::CONNECT,
        M::TRACE,
    ]
    .into_iter()
    .zip([
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE",
    ])
    .find(|(m, _)| m == method)
    .map_or("other", |(_, name)| name)
}

/// Records every request's route, status and latency.
pub async fn track(State(app): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(req.method()).to_owned();
    // The route template (`/v1/projects/{pid}`), never the raw path: ids
    // would make the label set unbounded.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(req).await;
    let m = &app.metrics;
    m.requests
        .get_or_create(&RequestLabels {
            method: method.clone(),
            route: route.clone(),
            status: response.status().as_u16(),
        })
        .inc();
    m.latency
        .get_or_create(&RouteLabels { method, route })
        .observe(started.elapsed().as_secs_f64());
    response
}

/// Prometheus metrics: requests, sync, storage and documents.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    responses((status = 200, content_type = "application/openmetrics-text", description = "Prometheus text format"))
)]
pub async fn render(State(app): State<Arc<AppState>>) -> Response {
    let m = &app.metrics;
    let svc = &app.service;
    m.documents_loaded.set(svc.documents_loaded() as i64);
    m.cache_bytes.set(svc.repo().cached_bytes() as i64);
    m.store_bytes.set(svc.repo().store().size_on_disk() as i64);
    m.damaged_records.set(svc.repo().damaged().len() as i64);
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &m.registry) {
        tracing::error!(error = %e, "encoding metrics failed");
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_methods_share_one_label() {
        assert_eq!(method_label(&axum::http::Method::PUT), "PUT");
        let odd = axum::http::Method::from_bytes(b"FROB123").unwrap();
        assert_eq!(method_label(&odd), "other");
    }
}
