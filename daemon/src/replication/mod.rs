//! The daemon's side of replication: connections to relays and LAN peers
//! (outbound with reconnect and backoff, inbound on `--peer-listen`), what
//! `GET /v1/sync/status` reports, `pending` per project, and presence.
//!
//! Data flow: every connection runs the `sitesync-sync` session over a
//! WebSocket in its own task, reaching documents through the repository's
//! host (`RepoHost`). The repository's change feed (its `Subscriber`s)
//! carries every durable change to its subscribers: here, to every
//! connection (offered to its peer as it lands) and to the pending counts;
//! in the service, to the index (another device's changes, with their
//! origin) and the operations list.
//!
//! Files: `mod.rs` peers and their connections; `listen` the
//! `--peer-listen` server; `status` what each peer's status shows;
//! `pending` this device's unacknowledged changes; `presence`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use serde_json::json;
use sitesync_model::Timestamp;
use sitesync_sync::Persisted;
use sitesync_sync::credentials::Token;
use sitesync_sync::host::RepoHost;
use sitesync_sync::link::{self, Documents, Feeds, LinkTiming, PresenceHub};
use sitesync_sync::repo::Subscriber;
use sitesync_sync::session::Session;
use sitesync_sync::tls::{self, ClientTls, Trust};
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::revocations::Book;
use crate::service::Service;

mod listen;
mod pending;
mod presence;
mod status;
#[cfg(test)]
mod tests;

pub use listen::listen_for_peers;
use pending::*;
pub use presence::{PRESENCE_TTL_MS, PresenceView};
pub use status::PeerView;
use status::*;

/// Replication's subscription to the change feed: every durable change,
/// this device's or a peer's, is offered to every connection (each
/// decides whether its peer lacks it) and counted for `pending`. Holds
/// replication weakly: the repository outlives it.
struct Offer(Weak<Replication>);

impl Subscriber for Offer {
    fn persisted(&self, persisted: &[Persisted]) {
        if let Some(repl) = self.0.upgrade() {
            repl.pending.grew(persisted);
            for p in persisted {
                let _ = repl.changes.send(p.id);
            }
        }
    }
}

/// Timing of connections; tests shorten it.
#[derive(Clone, Copy, Debug)]
pub struct SyncTiming {
    pub link: LinkTiming,
    /// First reconnect delay; doubles per failed attempt up to `reconnect_max`.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
}

impl Default for SyncTiming {
    fn default() -> Self {
        Self {
            link: LinkTiming::default(),
            reconnect_min: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(30),
        }
    }
}

/// What sync connections count for `/metrics`.
#[derive(Clone, Default)]
pub struct SyncCounters {
    /// Frames received and sent on every sync connection (a storm shows
    /// there; so does traffic settling).
    pub frames_in: Counter,
    pub frames_out: Counter,
    /// LAN peer sockets closed at accept: `--max-peers` was reached.
    pub peers_refused: Counter,
}

struct PeerSlot {
    view: PeerView,
    /// Stops the peer's connection task.
    task: Option<tokio::task::AbortHandle>,
}

/// Replication state shared by the API and the connection tasks.
pub struct Replication {
    service: Arc<Service>,
    host: Arc<RepoHost>,
    /// This daemon's own token: offered to peers and the default for relays.
    token: Option<Token>,
    device_name: String,
    changes: broadcast::Sender<Uuid>,
    /// The presence table and the channel new entries reach peers by.
    presence: Arc<PresenceHub>,
    /// The last heartbeat number this device gave ([`PresenceEntry::seq`]).
    presence_seq: AtomicU64,
    peers: Mutex<BTreeMap<Uuid, PeerSlot>>,
    pending: Pending,
    last_synced_at: Mutex<Option<Timestamp>>,
    timing: SyncTiming,
    /// How wss:// is dialled: trusted roots for relays; LAN peers are
    /// trusted through their bound handshake ([`sitesync_sync::tls`]).
    tls: Arc<ClientTls>,
    next_connection: AtomicU64,
    /// Counted for `/metrics`.
    counters: SyncCounters,
    /// The organisation's revocation list as heard from the relay or a
    /// LAN peer; every session consults it and passes it on.
    book: Arc<Book>,
}

/// Why a peer could not be added.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("url {url:?} is not a ws:// or wss:// URL")]
    BadUrl { url: String },
    #[error(
        "LAN peer url {url:?} is not wss://: another daemon's --peer-listen speaks only TLS (it prints its wss:// address)"
    )]
    PlainLan { url: String },
    #[error("no token: pass one with the peer, or start the daemon with --token")]
    NoToken,
}

fn now() -> Timestamp {
    Timestamp(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0),
    )
}

impl Replication {
    /// Wires replication to the service's repository. `token` is this
    /// daemon's own (needed to accept LAN peers and as the default for
    /// relays and peers added without one).
    pub fn new(
        service: Arc<Service>,
        token: Option<Token>,
        device_name: String,
        timing: SyncTiming,
        tls: Arc<ClientTls>,
    ) -> Arc<Self> {
        let (changes, _) = broadcast::channel(4096);
        if let Some(t) = &token {
            service.set_org(t.cert().org());
        }
        let book = Arc::new(Book::open(service.repo().clone(), token.as_ref()));
        let repl = Arc::new(Self {
            book,
            host: Arc::new(RepoHost::new(service.repo().clone())),
            service,
            token,
            device_name,
            changes,
            presence: PresenceHub::new(),
            presence_seq: AtomicU64::new(0),
            peers: Mutex::new(BTreeMap::new()),
            pending: Pending::default(),
            last_synced_at: Mutex::new(None),
            timing,
            tls,
            next_connection: AtomicU64::new(1),
            counters: SyncCounters::default(),
        });
        repl.service
            .repo()
            .subscribe(Arc::new(Offer(Arc::downgrade(&repl))));
        // The first count covers every document held: done now, off the
        // caller's thread, so later writes only add to it.
        let first = repl.clone();
        let started = std::thread::Builder::new()
            .name("pending-count".into())
            .spawn(move || {
                first.pending_counts();
            });
        if let Err(e) = started {
            tracing::warn!(error = %e, "cannot count pending changes in the background; the first status will");
        }
        repl
    }

    fn peers(&self) -> std::sync::MutexGuard<'_, BTreeMap<Uuid, PeerSlot>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, peer_id: Uuid, f: impl FnOnce(&mut PeerView)) {
        let view = {
            let mut peers = self.peers();
            let Some(slot) = peers.get_mut(&peer_id) else {
                return;
            };
            let seen = |v: &PeerView| {
                let apart: Vec<(Uuid, usize)> = v
                    .shared_projects
                    .iter()
                    .map(|p| (p.project_id, p.documents_differing))
                    .collect();
                (v.state, v.last_error.clone(), apart)
            };
            let before = seen(&slot.view);
            f(&mut slot.view);
            // Publish changes of state and of how far apart the two are,
            // not every latency sample or comparison.
            (seen(&slot.view) != before).then(|| slot.view.clone())
        };
        if let Some(view) = view {
            self.service
                .events
                .publish("sync.status", None, json!({"peer": view}));
        }
    }

    /// Adds a relay or LAN peer and starts connecting to it.
    pub fn add_peer(
        self: &Arc<Self>,
        url: &str,
        token: Option<Token>,
        kind: &'static str,
    ) -> Result<PeerView, PeerError> {
        if !(url.starts_with("ws://") || url.starts_with("wss://")) || url.len() < 8 {
            return Err(PeerError::BadUrl { url: url.into() });
        }
        // A LAN listener speaks only TLS, and its certificate is its own:
        // trust comes from the handshake bound to the TLS session.
        let trust = if kind == "lan" {
            if !url.starts_with("wss://") {
                return Err(PeerError::PlainLan { url: url.into() });
            }
            Trust::Binding
        } else {
            Trust::Roots
        };
        let token = token.or_else(|| self.token.clone()).ok_or(PeerError::NoToken)?;
        if self.token.is_none() {
            // The first token this daemon sees names its organisation.
            self.service.set_org(token.cert().org());
        }
        let peer_id = Uuid::new_v4();
        let view = PeerView::new(peer_id, Some(url.to_owned()), kind, "configured");
        self.peers().insert(
            peer_id,
            PeerSlot {
                view: view.clone(),
                task: None,
            },
        );
        let task = tokio::spawn(self.clone().dial(peer_id, url.to_owned(), token, trust));
        if let Some(slot) = self.peers().get_mut(&peer_id) {
            slot.task = Some(task.abort_handle());
        }
        Ok(view)
    }

    /// Stops and forgets a peer; false when there is no such peer.
    pub fn remove_peer(&self, peer_id: Uuid) -> bool {
        match self.peers().remove(&peer_id) {
            Some(slot) => {
                if let Some(t) = slot.task {
                    t.abort();
                }
                true
            }
            None => false,
        }
    }

    /// Connects, runs the session, and reconnects with exponential backoff
    /// and jitter until removed.
    async fn dial(self: Arc<Self>, peer_id: Uuid, url: String, token: Token, trust: Trust) {
        let mut attempt: u32 = 0;
        loop {
            self.update(peer_id, |v| {
                v.state = "connecting";
                v.next_retry_at = None;
            });
            let (state, error) = match link::connect(&url, Duration::from_secs(10), &self.tls, trust).await {
                Ok((socket, channel)) => {
                    let session = Session::client(
                        self.service.device().0,
                        &self.device_name,
                        token.clone(),
                        rand::random(),
                    )
                    .over(channel)
                    .comparing()
                    .with_revocations(self.book.clone());
                    let observer = Arc::new(PeerObserver {
                        repl: self.clone(),
                        peer_id: Mutex::new(Some(peer_id)),
                        connected: Default::default(),
                    });
                    let ended = self.run_session(socket, session, observer.clone()).await;
                    if observer.connected.load(Ordering::Relaxed) {
                        attempt = 0;
                    }
                    // Refused by either side (credentials, scope, version):
                    // an error a person must look at, not a network blip.
                    let state = if ended.code.is_some() {
                        "error"
                    } else {
                        "disconnected"
                    };
                    (state, ended.reason)
                }
                Err(e) => ("disconnected", e),
            };
            attempt = attempt.saturating_add(1);
            let delay = link::backoff(
                attempt,
                self.timing.reconnect_min,
                self.timing.reconnect_max,
                rand::random(),
            );
            let retry_at = Timestamp(now().0 + delay.as_millis() as i64);
            self.update(peer_id, |v| {
                v.state = state;
                v.last_error = Some(error);
                v.latency_ms = None;
                v.quality = None;
                v.reconnect_attempts = attempt;
                v.next_retry_at = Some(retry_at);
            });
            tokio::time::sleep(delay).await;
        }
    }

    async fn run_session<S: link::FrameSocket>(
        self: &Arc<Self>,
        socket: S,
        session: Session,
        observer: Arc<PeerObserver>,
    ) -> link::Ended {
        let id = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let feeds = Feeds {
            changes: Some(self.changes.subscribe()),
            presence: self.presence.subscribe(),
            id,
        };
        link::drive(
            socket,
            session,
            Documents::One(self.host.clone()),
            feeds,
            observer,
            self.presence.clone(),
            self.timing.link,
        )
        .await
    }

    /// The sync connections' counters, for the daemon's metrics registry.
    pub fn counters(&self) -> SyncCounters {
        self.counters.clone()
    }

    /// `GET /v1/sync/status`.
    pub fn status(&self) -> serde_json::Value {
        let peers: Vec<PeerView> = self.peers().values().map(|s| s.view.clone()).collect();
        let pending = self.pending_counts();
        json!({
            "device_id": self.service.device(),
            "peers": peers,
            "pending": pending,
            "last_synced_at": *self.last_synced_at.lock().unwrap_or_else(|p| p.into_inner()),
        })
    }

    fn synced_now(&self) {
        *self.last_synced_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(now());
    }
}
