//! `sitesync-daemon`: the durable local store and the localhost HTTP API.
//!
//! Data flow: an HTTP request passes the [`api::auth`] guard (Host, Origin,
//! token), is parsed by [`api`], and runs a
//! [`service::Service`] operation on a blocking thread; the service runs the
//! model's pure mutations on documents from the repository
//! (`sitesync-sync`), which makes them durable before the answer is sent,
//! then updates the in-memory project index and publishes [`events`].
//!
//! Like mini-redis, [`run`] takes an already-bound listener, so tests bind
//! port 0 and read the address back.

pub mod api;
pub mod events;
pub mod export;
pub mod import;
pub mod index;
pub mod jobs;
pub mod login;
pub mod metrics;
pub mod oplog;
pub mod paging;
pub mod replication;
pub mod revocations;
pub mod seed;
pub mod service;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sitesync_model::DeviceId;
use sitesync_model::automerge::ActorId;
use sitesync_sync::{DocStore, RedbBackend, Repo, RepoConfig, StoreError};
use tokio::net::TcpListener;

use crate::events::EventBus;
use crate::service::{Clock, Service};

/// Everything a request handler needs.
pub struct AppState {
    pub service: Arc<Service>,
    /// The API token every request but health must present (or a
    /// signed-in browser's cookie).
    pub token: String,
    /// One-time sign-in codes and the app's sessions.
    pub logins: std::sync::Mutex<login::Logins>,
    /// The session cookie's name ([`api::app::cookie_name`]).
    pub cookie_name: String,
    /// Host header values accepted (DNS-rebinding defence).
    pub allowed_hosts: Vec<String>,
    /// Browser origins accepted (none by default).
    pub allowed_origins: Vec<String>,
    /// The acting user when a request has no `X-User`.
    pub default_user: String,
    pub device_name: String,
    /// Request counts and latencies for `/metrics`.
    pub metrics: metrics::Metrics,
    /// Peers, sync status, pending and presence.
    pub replication: Arc<replication::Replication>,
    /// Imports and exports.
    pub jobs: Arc<jobs::Jobs>,
    /// Largest import file accepted.
    pub max_import_bytes: u64,
    /// The API socket's connection cap and header-read timeout.
    pub http_limits: sitesync_sync::accept::Limits,
}

/// Failures while starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the store in {dir}: {source}")]
    Store { dir: String, source: StoreError },
}

/// How many events the stream keeps for `Last-Event-ID` resumption.
const EVENT_RING: usize = 10_000;

/// How much of the store stays decoded in memory: at most `documents`
/// documents weighing at most `bytes` together (estimated,
/// [`sitesync_sync::cache::weight`]); whichever binds first.
#[derive(Clone, Copy, Debug)]
pub struct CacheLimits {
    pub documents: usize,
    pub bytes: usize,
}

impl Default for CacheLimits {
    fn default() -> Self {
        let repo = RepoConfig::default();
        Self {
            documents: repo.max_cached,
            bytes: repo.max_cached_bytes,
        }
    }
}

/// Opens the store in `data_dir` and builds the service: the device id is
/// created once and kept; the Automerge actor is fresh for every start.
pub fn open_service(data_dir: &Path, cache: CacheLimits) -> Result<Service, StartError> {
    let store_dir = data_dir.join("store");
    let store_err = |source| StartError::Store {
        dir: store_dir.display().to_string(),
        source,
    };
    let store = DocStore::new(RedbBackend::open(&store_dir).map_err(store_err)?);
    let device = DeviceId(store.device_id().map_err(store_err)?);
    let repo = Repo::new(
        store,
        ActorId::random(),
        RepoConfig {
            max_cached: cache.documents,
            max_cached_bytes: cache.bytes,
            // The operations list follows every change's commit metadata.
            report_commits: true,
            ..RepoConfig::default()
        },
    );
    let clock = Clock::system();
    // Event ids start from the clock (µs), so they keep increasing across
    // restarts and a stale Last-Event-ID is recognised.
    let first_event = clock.now().millis().max(0) as u64 * 1000;
    Ok(Service::new(
        repo,
        device,
        clock,
        EventBus::new(EVENT_RING, first_event),
    ))
}

/// How often the project index's changed entries are saved. A drawing
/// changed since is read from its document at the next start (~5 ms).
pub const INDEX_SAVE_EVERY: Duration = Duration::from_secs(2);

/// Serves the API on `listener` until `shutdown` resolves, then saves the
/// index and flushes.
pub async fn run(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let service = state.service.clone();
    sitesync_sync::repo::compact_in_background(service.repo());
    sitesync_sync::memory::trim_periodically(sitesync_sync::memory::TRIM_EVERY);
    save_index_periodically(&service, INDEX_SAVE_EVERY);
    let limits = state.http_limits;
    let counted = state.clone();
    let refused = Arc::new(move || counted.metrics.connection_refused());
    let app = api::router(state);
    sitesync_sync::accept::serve(
        sitesync_sync::link::without_nagle(listener),
        None,
        app,
        limits,
        refused,
        shutdown,
    )
    .await?;
    let svc = service.clone();
    match tokio::task::spawn_blocking(move || svc.save_index()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "saving the index at shutdown failed; the next start reads those drawings")
        }
        Err(e) => tracing::warn!(error = %e, "saving the index at shutdown failed"),
    }
    if let Err(e) = service.repo().flush() {
        tracing::error!(error = %e, "flush at shutdown failed");
    }
    Ok(())
}

/// Saves the index's changed entries every `every`, on a blocking thread,
/// until the service is dropped.
fn save_index_periodically(service: &Arc<Service>, every: Duration) {
    let service = Arc::downgrade(service);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(svc) = service.upgrade() else { return };
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || svc.save_index()).await {
                tracing::warn!(error = %e, "saving the index failed; retried at the next tick");
            }
        }
    });
}
