//! The sitesync relay: accepts device connections over WebSocket, stores
//! every document it may hold (store-and-forward: two laptops never online
//! at the same time still converge through it), forwards changes and
//! presence to every connected device of the project, and enforces who may
//! see what.
//!
//! Data flow: a connection's [`Session`] (sans IO, in `sitesync-sync`) is
//! admitted by its Hello, which names its organisation; the link then opens
//! that organisation's space ([`spaces`]: its own store and repository, so
//! organisations share no ids). The session applies the device's changes
//! through the space's `RepoHost`; the repository makes them durable and
//! its change feed (`spaces::Forward`) broadcasts the document id on the space's channel;
//! every other connection of the organisation hears it and offers the
//! document to its device. Each connection is its own task reading a
//! broadcast channel, so a slow device only slows itself (a lagging one
//! re-summarises).

pub mod orgs;
pub mod spaces;

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
use sitesync_sync::link::{self, Documents, Feeds, LinkTiming, Observer, PresenceHub};
use sitesync_sync::presence::Offer;
use sitesync_sync::session::{Event, Session};
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::orgs::Orgs;
use crate::spaces::{Quota, SpaceError, Spaces};

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
    /// Most bytes the decoded documents of every organisation may take
    /// together (estimated, [`sitesync_sync::cache::weight`]). The space
    /// that goes over evicts its own least recently used documents, and
    /// every [`sitesync_sync::memory::TRIM_EVERY`] the spaces idle longest
    /// are emptied until the total is back under ([`Spaces::shed_idle`]):
    /// memory does not grow with the number of organisations.
    pub max_cache_bytes: usize,
    /// Time a client has to send its HTTP request headers.
    pub header_read_timeout: Duration,
    /// What one organisation may keep here.
    pub quota: Quota,
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
            max_cache_bytes: sitesync_sync::RepoConfig::default().max_cached_bytes,
            header_read_timeout: sitesync_sync::accept::HEADER_READ_TIMEOUT,
            quota: Quota::default(),
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
    /// Frames whose handling waited to keep their organisation within its
    /// messages a second.
    paced: Counter,
    documents: Gauge<i64, AtomicI64>,
    /// Estimated heap of the decoded documents, set at each scrape.
    cache_bytes: Gauge<i64, AtomicI64>,
    /// Organisations whose decoded documents were dropped to keep the
    /// relay within --max-cache-mb ([`Spaces::shed_idle`]).
    shed: Counter,
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
            paced: Counter::default(),
            documents: Gauge::default(),
            cache_bytes: Gauge::default(),
            shed: Counter::default(),
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
        registry.register(
            "paced_frames",
            "Frames whose handling waited to keep their organisation within --max-messages-per-second-per-org",
            m.paced.clone(),
        );
        registry.register("documents_held", "Documents stored", m.documents.clone());
        registry.register(
            "cache_bytes",
            "Estimated heap of the documents kept decoded, all organisations (bounded by --max-cache-mb)",
            m.cache_bytes.clone(),
        );
        registry.register(
            "spaces_shed",
            "Idle organisations whose decoded documents were dropped to stay within --max-cache-mb",
            m.shed.clone(),
        );
        Self { registry, ..m }
    }
}

/// Everything the relay's tasks share.
pub struct Relay {
    spaces: Arc<Spaces>,
    orgs: Arc<Orgs>,
    device: Uuid,
    presence: Arc<PresenceHub>,
    metrics: Metrics,
    slots: Arc<Semaphore>,
    next_connection: AtomicU64,
    config: RelayConfig,
}

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot read the relay's device id in {dir}: {source}")]
    Device { dir: String, source: std::io::Error },
    #[error(transparent)]
    Spaces(#[from] SpaceError),
}

impl Relay {
    /// Opens the relay on `data_dir`: organisations in `orgs/`, their
    /// documents in `spaces/` (one store each), its device id in
    /// `device-id`.
    pub fn open(data_dir: &Path, config: RelayConfig) -> Result<Arc<Self>, StartError> {
        let metrics = Metrics::default();
        let device = device_id(data_dir)?;
        let spaces = Spaces::open(
            data_dir,
            config.max_cached,
            sitesync_sync::cache::CacheBudget::new(config.max_cache_bytes),
            config.quota,
            metrics.documents.clone(),
        )?;
        Ok(Arc::new(Self {
            spaces: Arc::new(spaces),
            orgs: Arc::new(Orgs::new(data_dir)),
            device,
            presence: PresenceHub::new(),
            metrics,
            slots: Arc::new(Semaphore::new(config.max_connections)),
            next_connection: AtomicU64::new(1),
            config,
        }))
    }

    /// Every organisation's documents.
    pub fn spaces(&self) -> &Spaces {
        &self.spaces
    }
}

/// The relay's device id, made once and kept in `<data_dir>/device-id`
/// (a relay's stores are per organisation; its identity is not).
fn device_id(data_dir: &Path) -> Result<Uuid, StartError> {
    let path = data_dir.join("device-id");
    let err = |source| StartError::Device {
        dir: data_dir.display().to_string(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse()
            .map_err(|e| err(std::io::Error::new(std::io::ErrorKind::InvalidData, e))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir).map_err(err)?;
            // A relay from before spaces kept its id in its one store: the
            // same id keeps devices' sync bookkeeping for it useful.
            let old = data_dir.join("store");
            let id = old
                .exists()
                .then(|| {
                    let store = sitesync_sync::DocStore::new(sitesync_sync::RedbBackend::open(&old).ok()?);
                    store.device_id().ok()
                })
                .flatten()
                .unwrap_or_else(Uuid::new_v4);
            let tmp = data_dir.join("device-id.tmp");
            std::fs::write(&tmp, id.to_string()).map_err(err)?;
            std::fs::rename(&tmp, &path).map_err(err)?;
            Ok(id)
        }
        Err(e) => Err(err(e)),
    }
}

/// Serves the relay on `listener` (TLS with `tls`: `wss://`)
/// until `shutdown` resolves, then flushes.
pub async fn run<L>(
    listener: L,
    tls: Option<Arc<sitesync_sync::tls::ServerConfig>>,
    relay: Arc<Relay>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Io: Unpin,
{
    // Each space compacts in the background from the moment it opens
    // (`Spaces::get`), so nothing here.
    sitesync_sync::memory::trim_periodically(sitesync_sync::memory::TRIM_EVERY);
    shed_idle_periodically(relay.clone());
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
    sitesync_sync::accept::serve(listener, tls, app, limits, refused, shutdown).await?;
    for (org, space) in relay.spaces.all() {
        if let Err(e) = space.host.repo().flush() {
            tracing::error!(error = %e, org, "flush at shutdown failed");
        }
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
    let cached = relay.spaces.budget().used();
    relay
        .metrics
        .cache_bytes
        .set(i64::try_from(cached).unwrap_or(i64::MAX));
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

/// Every [`sitesync_sync::memory::TRIM_EVERY`], empties the organisations
/// idle longest while the decoded documents are over
/// [`RelayConfig::max_cache_bytes`] ([`Spaces::shed_idle`]); stops with the
/// runtime.
fn shed_idle_periodically(relay: Arc<Relay>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(sitesync_sync::memory::TRIM_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !relay.spaces.budget().over() {
                continue;
            }
            let shedding = relay.clone();
            // Dropping decoded documents takes each space's lock in turn.
            let shed = tokio::task::spawn_blocking(move || shedding.spaces.shed_idle())
                .await
                .unwrap_or(0);
            if shed > 0 {
                relay.metrics.shed.inc_by(shed as u64);
                tracing::info!(
                    organisations = shed,
                    cache_bytes = relay.spaces.budget().used(),
                    "emptied idle organisations' document caches to stay within --max-cache-mb"
                );
            }
        }
    });
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
        "quota_exceeded",
        "bad_revocations",
    ]
    .into_iter()
    .find(|known| *known == code)
}

/// Reports a connection's traffic to the metrics, and paces it to its
/// organisation's rate once the handshake names it.
struct ConnectionObserver {
    relay: Arc<Relay>,
    space: std::sync::OnceLock<Arc<spaces::Space>>,
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
                if let Ok(space) = self.relay.spaces.get(&peer.org) {
                    let _ = self.space.set(space);
                }
            }
        }
    }

    fn pace(&self) -> Duration {
        let Some(space) = self.space.get() else {
            return Duration::ZERO;
        };
        let wait = space.pace(sitesync_sync::link::now_ms());
        if wait > 0 {
            self.relay.metrics.paced.inc();
        }
        Duration::from_millis(wait)
    }

    fn presence_dropped(&self, offer: Offer) {
        let reason = match offer {
            Offer::Full => "presence_table_full",
            Offer::Limited => "presence_rate",
            Offer::New | Offer::Seen => return,
        };
        self.relay
            .metrics
            .refused
            .get_or_create(&vec![("reason", reason)])
            .inc();
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
        let session = Session::server(relay.device, "relay", relay.orgs.clone(), rand::random())
            .with_revocations(relay.orgs.clone());
        let feeds = Feeds {
            changes: None,
            presence: relay.presence.subscribe(),
            id,
        };
        let observer = Arc::new(ConnectionObserver {
            relay: relay.clone(),
            space: std::sync::OnceLock::new(),
        });
        let ended = link::drive(
            socket,
            session,
            Documents::PerOrg(relay.spaces.clone()),
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
        let space = relay.spaces().get("acme").unwrap();
        let repo = space.host.repo();
        for n in 0..5u128 {
            repo.sync_doc(
                uuid::Uuid::from_u128(n + 1),
                sitesync_sync::Sender {
                    peer: uuid::Uuid::nil(),
                    project: uuid::Uuid::nil(),
                },
                None,
                |am| {
                    let mut tx = am.transaction();
                    tx.put(ROOT, "n", n as i64).unwrap();
                    tx.commit();
                    ((), Vec::new())
                },
            )
            .unwrap();
        }
        assert_eq!(repo.loaded(), 2);
    }
}
