//! The sitesync relay: accepts device connections over WebSocket, stores
//! every document it may hold (store-and-forward: two laptops never online
//! at the same time still converge through it), forwards changes and
//! presence to every connected device of the project, and enforces who may
//! see what.
//!
//! Data flow: a connection's [`Session`] (sans IO, in `sitesync-sync`)
//! applies a device's changes through the [`RepoHost`]; the repository makes
//! them durable and its persist hook broadcasts the document id; every other
//! connection's task hears it and offers the document to its device. Each
//! connection is its own task reading a broadcast channel, so a slow device
//! only slows itself (a lagging one re-summarises).

pub mod orgs;
pub mod tls;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use sitesync_sync::host::RepoHost;
use sitesync_sync::link::{self, Feeds, LinkTiming, Observer, PresenceHub};
use sitesync_sync::presence::Offer;
use sitesync_sync::session::{Event, PeerInfo, Session};
use sitesync_sync::{DocStore, RedbBackend, Repo, RepoConfig, StoreError};
use tokio::sync::{Semaphore, broadcast};
use uuid::Uuid;

use crate::orgs::Orgs;

/// Relay settings.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// Connections beyond this are refused with 503.
    pub max_connections: usize,
    pub timing: LinkTiming,
    /// Most documents kept decoded in memory. Every change a device sends
    /// is applied here and forwarded, so a document the cache lacks is
    /// loaded first (2–3 ms for a drawing of 50 components), on the path
    /// of every device waiting for the change.
    pub max_cached: usize,
    /// Time a client has to send its HTTP request headers.
    pub header_read_timeout: Duration,
}

/// Open sockets beyond [`RelayConfig::max_connections`] that are still
/// accepted, so `/healthz` and `/metrics` answer at the device limit.
pub const ADMIN_SLACK: usize = 64;

/// [`RelayConfig::max_cached`] by default, as a daemon's: a project of
/// 2,000 drawings stays whole (~200 MB at ~100 KB a drawing).
/// At 512, the bench's propagation p50 was 11.3 ms and its offline
/// catch-up 6.1 s; at 4,096 (holding that project whole), 9.9 ms and
/// 4.7 s, with the relay at 372 MB holding 1,000 idle connections.
pub const DEFAULT_MAX_CACHED: usize = 2048;

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            timing: LinkTiming::default(),
            max_cached: DEFAULT_MAX_CACHED,
            header_read_timeout: sitesync_sync::accept::HEADER_READ_TIMEOUT,
        }
    }
}

/// The relay's metrics (Prometheus text at `/metrics`).
pub struct Metrics {
    registry: Registry,
    connections: Gauge<i64, AtomicI64>,
    messages_in: Counter,
    messages_out: Counter,
    bytes_in: Counter,
    bytes_out: Counter,
    sync_latency: Histogram,
    auth_failures: Counter,
    /// Connections closed, and peer messages dropped, by a check or a
    /// limit, by reason ([`refusal_label`]).
    refused: Family<Vec<(&'static str, &'static str)>, Counter>,
    documents: Gauge<i64, AtomicI64>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("sitesync_relay");
        let m = Self {
            registry: Registry::default(),
            connections: Gauge::default(),
            messages_in: Counter::default(),
            messages_out: Counter::default(),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            // 50 µs .. ~1.6 s.
            sync_latency: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            auth_failures: Counter::default(),
            refused: Family::default(),
            documents: Gauge::default(),
        };
        registry.register("connections", "Connected devices", m.connections.clone());
        registry.register("messages_in", "Frames received", m.messages_in.clone());
        registry.register("messages_out", "Frames sent", m.messages_out.clone());
        registry.register("bytes_in", "Bytes received", m.bytes_in.clone());
        registry.register("bytes_out", "Bytes sent", m.bytes_out.clone());
        registry.register(
            "sync_latency_seconds",
            "Time to handle one received frame (apply, make durable, answer)",
            m.sync_latency.clone(),
        );
        registry.register(
            "auth_failures",
            "Connections refused or dropped for their credentials",
            m.auth_failures.clone(),
        );
        registry.register(
            "refused",
            "Connections closed and peer messages dropped by a check or a limit, by reason",
            m.refused.clone(),
        );
        registry.register("documents_held", "Documents stored", m.documents.clone());
        Self { registry, ..m }
    }
}

/// Everything the relay's tasks share.
pub struct Relay {
    host: RepoHost,
    orgs: Arc<Orgs>,
    device: Uuid,
    changes: broadcast::Sender<Uuid>,
    presence: Arc<PresenceHub>,
    metrics: Metrics,
    slots: Arc<Semaphore>,
    next_connection: AtomicU64,
    config: RelayConfig,
}

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the store in {dir}: {source}")]
    Store { dir: String, source: StoreError },
}

/// Capacity of the change notification channel; a connection further behind
/// than this re-summarises instead of holding the others up.
const CHANGE_BACKLOG: usize = 4096;

impl Relay {
    /// Opens the relay's store in `<data_dir>/store`; organisations live in
    /// `<data_dir>/orgs`.
    pub fn open(data_dir: &Path, config: RelayConfig) -> Result<Arc<Self>, StartError> {
        let store_dir = data_dir.join("store");
        let store_err = |source| StartError::Store {
            dir: store_dir.display().to_string(),
            source,
        };
        let store = DocStore::new(RedbBackend::open(&store_dir).map_err(store_err)?);
        let device = store.device_id().map_err(store_err)?;
        let repo = Arc::new(Repo::new(
            store,
            sitesync_sync::model::automerge::ActorId::random(),
            RepoConfig {
                typed: false,
                max_cached: config.max_cached,
                ..RepoConfig::default()
            },
        ));
        let (changes, _) = broadcast::channel(CHANGE_BACKLOG);
        let presence = PresenceHub::new();
        let notify = changes.clone();
        let metrics = Metrics::default();
        // Counted once here, then followed write by write: a scrape of
        // `/metrics` reads no store record.
        let host = RepoHost::new(repo.clone());
        let held_now = repo.store().meta_names("bind/").map_err(store_err)?.len();
        metrics.documents.set(held_now as i64);
        let held = metrics.documents.clone();
        repo.set_persist_hook(Box::new(move |persisted| {
            for p in persisted {
                if p.before.is_empty() {
                    held.inc();
                }
                let _ = notify.send(p.id);
            }
        }));
        Ok(Arc::new(Self {
            host,
            orgs: Arc::new(Orgs::new(data_dir)),
            device,
            changes,
            presence,
            metrics,
            slots: Arc::new(Semaphore::new(config.max_connections)),
            next_connection: AtomicU64::new(1),
            config,
        }))
    }

    pub fn host(&self) -> &RepoHost {
        &self.host
    }
}

/// Serves the relay on `listener` (plain TCP, or [`tls::TlsListener`])
/// until `shutdown` resolves, then flushes.
pub async fn run<L>(
    listener: L,
    relay: Arc<Relay>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Io: Unpin,
{
    sitesync_sync::repo::compact_in_background(relay.host.repo());
    sitesync_sync::memory::trim_periodically(sitesync_sync::memory::TRIM_EVERY);
    let app = Router::new()
        .route("/", get(upgrade))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(relay.clone());
    let limits = sitesync_sync::accept::Limits {
        max_connections: relay.config.max_connections.saturating_add(ADMIN_SLACK),
        header_read_timeout: relay.config.header_read_timeout,
    };
    let counted = relay.clone();
    let refused = Arc::new(move || {
        let label = vec![("reason", "connection_limit")];
        counted.metrics.refused.get_or_create(&label).inc();
    });
    sitesync_sync::accept::serve(listener, app, limits, refused, shutdown).await?;
    if let Err(e) = relay.host.repo().flush() {
        tracing::error!(error = %e, "flush at shutdown failed");
    }
    Ok(())
}

async fn healthz(State(relay): State<Arc<Relay>>) -> Response {
    let body = serde_json::json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "device_id": relay.device,
        "connections": relay.metrics.connections.get(),
    });
    axum::Json(body).into_response()
}

async fn metrics(State(relay): State<Arc<Relay>>) -> Response {
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &relay.metrics.registry) {
        return (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// The metrics label of a connection's closing code, for the codes a check
/// or a limit of this side gives; `None` for anything else (a peer's own
/// codes are its words, and would make labels without bound).
pub fn refusal_label(code: &str) -> Option<&'static str> {
    [
        "malformed_frame",
        "bad_presence",
        "out_of_scope",
        "bad_changes",
        "protocol",
        "unsupported_version",
    ]
    .into_iter()
    .find(|known| *known == code)
}

/// Reports a connection's traffic to the metrics and re-checks its token.
struct ConnectionObserver {
    relay: Arc<Relay>,
}

impl Observer for ConnectionObserver {
    fn frame_in(&self, bytes: usize) {
        self.relay.metrics.messages_in.inc();
        self.relay.metrics.bytes_in.inc_by(bytes as u64);
    }

    fn frame_out(&self, bytes: usize) {
        self.relay.metrics.messages_out.inc();
        self.relay.metrics.bytes_out.inc_by(bytes as u64);
    }

    fn handled(&self, took: Duration) {
        self.relay.metrics.sync_latency.observe(took.as_secs_f64());
    }

    fn events(&self, events: &[Event]) {
        for event in events {
            if let Event::Ready(peer) = event {
                tracing::info!(device = %peer.device, name = %peer.name, org = %peer.org, "device connected");
            }
        }
    }

    fn presence_dropped(&self, offer: Offer) {
        if offer == Offer::Full {
            let label = vec![("reason", "presence_table_full")];
            self.relay.metrics.refused.get_or_create(&label).inc();
        }
    }

    fn still_admitted(&self, peer: &PeerInfo) -> Result<(), String> {
        let Some(token) = peer.token_id else { return Ok(()) };
        match self.relay.orgs.is_revoked(&peer.org, token) {
            Ok(false) => Ok(()),
            Ok(true) => Err(format!("token {token} was revoked")),
            Err(e) => Err(e.to_string()),
        }
    }
}

async fn upgrade(State(relay): State<Arc<Relay>>, ws: WebSocketUpgrade) -> Response {
    let Ok(permit) = relay.slots.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the relay is at its connection limit; retry later",
        )
            .into_response();
    };
    sitesync_sync::link::limit_upgrade(ws).on_upgrade(move |socket| async move {
        let id = relay.next_connection.fetch_add(1, Ordering::Relaxed);
        relay.metrics.connections.inc();
        let session = Session::server(relay.device, "relay", relay.orgs.clone(), rand::random());
        let feeds = Feeds {
            changes: relay.changes.subscribe(),
            presence: relay.presence.subscribe(),
            id,
        };
        let observer = Arc::new(ConnectionObserver { relay: relay.clone() });
        let ended = link::drive(
            socket,
            session,
            Arc::new(relay.host.clone()),
            feeds,
            observer,
            relay.presence.clone(),
            relay.config.timing,
        )
        .await;
        if ended.code.as_deref() == Some("unauthorized") {
            relay.metrics.auth_failures.inc();
        }
        if let Some(reason) = ended.code.as_deref().and_then(refusal_label) {
            relay
                .metrics
                .refused
                .get_or_create(&vec![("reason", reason)])
                .inc();
        }
        tracing::info!(connection = id, reason = %ended.reason, "connection closed");
        relay.metrics.connections.dec();
        drop(permit);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sitesync_sync::model::automerge::{ROOT, transaction::Transactable as _};

    /// The relay's repository keeps at most `max_cached` documents decoded.
    #[test]
    fn the_relay_keeps_at_most_its_configured_documents_decoded() {
        assert_eq!(RelayConfig::default().max_cached, DEFAULT_MAX_CACHED);
        let dir = tempfile::tempdir().unwrap();
        let config = RelayConfig {
            max_cached: 2,
            ..RelayConfig::default()
        };
        let relay = Relay::open(dir.path(), config).unwrap();
        let repo = relay.host().repo();
        for n in 0..5u128 {
            repo.sync_doc(uuid::Uuid::from_u128(n + 1), None, |am| {
                let mut tx = am.transaction();
                tx.put(ROOT, "n", n as i64).unwrap();
                tx.commit();
                ((), Vec::new())
            })
            .unwrap();
        }
        assert_eq!(repo.loaded(), 2);
    }
}
