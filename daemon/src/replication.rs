//! The daemon's side of replication: connections to relays and LAN peers
//! (outbound with reconnect and backoff, inbound on `--peer-listen`), what
//! `GET /v1/sync/status` reports, `pending` per project, and presence.
//!
//! Data flow: every connection runs the `sitesync-sync` session over a
//! WebSocket in its own task. Documents are reached through [`DaemonHost`],
//! which applies another device's changes via
//! [`Service::apply_remote`] so the index and the events (with their origin)
//! stay current. The repository's persist hook broadcasts every durable
//! change, so local writes and other peers' changes are offered to every
//! connection as they land.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};
use prometheus_client::metrics::counter::Counter;
use serde::Serialize;
use serde_json::json;
use sitesync_model::automerge::ChangeHash;
use sitesync_model::automerge::sync::{Message as SyncMessage, State as SyncState};
use sitesync_model::{OpMeta, ProjectId, Timestamp};
use sitesync_sync::Persisted;
use sitesync_sync::accept::ConnectionBinding;
use sitesync_sync::credentials::Token;
use sitesync_sync::host::RepoHost;
use sitesync_sync::link::{self, Documents, Feeds, LinkTiming, Observer, PresenceHub};
use sitesync_sync::presence::Offer;
use sitesync_sync::protocol::PresenceEntry;
use sitesync_sync::repo::{decode_heads, encode_heads};
use sitesync_sync::session::{Event, Host, HostError, Incoming, PeerInfo, Session};
use sitesync_sync::tls::{self, Channel, ClientTls, Trust};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::revocations::Book;
use crate::service::Service;

/// Presence expires this long after the last heartbeat.
pub const PRESENCE_TTL_MS: i64 = sitesync_sync::presence::TTL_MS;

/// The session host of a daemon: the repository host, with another device's
/// changes applied through the service.
pub struct DaemonHost {
    inner: RepoHost,
    service: Arc<Service>,
}

impl Host for DaemonHost {
    fn projects(&self) -> Result<Vec<Uuid>, HostError> {
        self.inner.projects()
    }
    fn may_share(&self, org: &str, project: Uuid) -> Result<bool, HostError> {
        self.inner.may_share(org, project)
    }
    fn holds(&self, org: &str, project: Uuid) -> Result<bool, HostError> {
        self.inner.holds(org, project)
    }
    fn summary(&self, project: Uuid) -> Result<Vec<(Uuid, Vec<ChangeHash>)>, HostError> {
        self.inner.summary(project)
    }
    fn project_of(&self, doc: Uuid) -> Result<Option<Uuid>, HostError> {
        self.inner.project_of(doc)
    }
    fn heads(&self, doc: Uuid) -> Result<Vec<ChangeHash>, HostError> {
        self.inner.heads(doc)
    }
    fn generate(&self, doc: Uuid, state: &mut SyncState) -> Result<Option<SyncMessage>, HostError> {
        self.inner.generate(doc, state)
    }
    fn receive(
        &self,
        ctx: &Incoming<'_>,
        state: &mut SyncState,
        message: SyncMessage,
    ) -> Result<Option<Vec<ChangeHash>>, HostError> {
        self.service
            .apply_remote(ctx.project, ctx.doc, || self.inner.receive(ctx, state, message))
    }
    fn load_state(&self, peer: Uuid, doc: Uuid) -> Result<Option<Vec<u8>>, HostError> {
        self.inner.load_state(peer, doc)
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

/// One peer as `GET /v1/sync/status` shows it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct PeerView {
    pub peer_id: Uuid,
    /// The peer's device name once connected.
    pub name: Option<String>,
    /// Its URL (none for a LAN peer that connected to us).
    pub url: Option<String>,
    /// "relay" or "lan".
    pub kind: &'static str,
    /// "connected", "connecting", "disconnected" or "error".
    pub state: &'static str,
    pub latency_ms: Option<i64>,
    /// "excellent" (< 100 ms), "good" (< 300 ms), "fair" (< 1 s), "poor".
    pub quality: Option<&'static str>,
    pub reconnect_attempts: u32,
    pub next_retry_at: Option<Timestamp>,
    pub last_connected_at: Option<Timestamp>,
    pub last_error: Option<String>,
    /// The peer's device id once connected.
    pub device_id: Option<Uuid>,
    /// Whether we dialled it (false: it connected to our --peer-listen).
    pub outbound: bool,
}

impl PeerView {
    /// A peer not connected yet.
    fn new(peer_id: Uuid, url: Option<String>, kind: &'static str, outbound: bool) -> Self {
        Self {
            peer_id,
            name: None,
            url,
            kind,
            state: "connecting",
            latency_ms: None,
            quality: None,
            reconnect_attempts: 0,
            next_retry_at: None,
            last_connected_at: None,
            last_error: None,
            device_id: None,
            outbound,
        }
    }
}

fn quality(latency_ms: i64) -> &'static str {
    match latency_ms {
        ..100 => "excellent",
        100..300 => "good",
        300..1000 => "fair",
        _ => "poor",
    }
}

struct PeerSlot {
    view: PeerView,
    /// Stops the peer's connection task.
    task: Option<tokio::task::AbortHandle>,
}

/// A presence heartbeat as stored (never persisted).
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct PresenceView {
    pub user: String,
    pub device_id: Uuid,
    pub component_id: Option<Uuid>,
    /// "viewing" or "editing".
    pub activity: &'static str,
    pub last_seen: Timestamp,
}

fn activity_name(a: u8) -> &'static str {
    if a == 1 { "editing" } else { "viewing" }
}

/// Local changes not yet covered by a relay's acknowledgement, counted per
/// document. A local write adds its own changes to its document's count;
/// only a document acknowledged meanwhile (or changed in a way the count
/// cannot follow) is counted again from the document itself, which means
/// decoding it when it is not cached. Without this, the first status after
/// importing 500,000 components decoded 10,000 drawings (28 s).
#[derive(Default)]
struct Pending {
    counts: Mutex<HashMap<Uuid, Counted>>,
    /// What happened to documents since the last count; `None` until the
    /// first count (which counts every document held).
    dirty: Mutex<Option<HashMap<Uuid, Dirty>>>,
}

/// One document's count, and the heads (sorted) it is the count for.
struct Counted {
    project: Uuid,
    heads: Vec<ChangeHash>,
    count: usize,
}

/// What happened to one document since the last count.
#[derive(Default)]
struct Dirty {
    /// Acknowledged meanwhile: count it from its acknowledged heads.
    recount: bool,
    /// Durable writes, in order.
    grew: Vec<Grew>,
}

/// One durable write to a document: heads before, heads after (both
/// sorted), and how many of the new changes are this process's own.
type Grew = (Vec<ChangeHash>, Vec<ChangeHash>, usize);

fn sorted_heads(h: &[ChangeHash]) -> Vec<ChangeHash> {
    let mut h = h.to_vec();
    h.sort_unstable();
    h
}

fn acked_key(doc: Uuid) -> String {
    sitesync_sync::keys::acked(doc)
}

/// Replication state shared by the API and the connection tasks.
pub struct Replication {
    service: Arc<Service>,
    host: Arc<DaemonHost>,
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
            host: Arc::new(DaemonHost {
                inner: RepoHost::new(service.repo().clone()),
                service: service.clone(),
            }),
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
        // Changes applied here are indexed on their own thread.
        repl.service.start_indexer();
        let weak = Arc::downgrade(&repl);
        repl.service.repo().add_persist_hook(Box::new(move |persisted| {
            if let Some(repl) = weak.upgrade() {
                repl.pending.grew(persisted);
                for p in persisted {
                    let _ = repl.changes.send(p.id);
                }
            }
        }));
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
            let before = (slot.view.state, slot.view.last_error.clone());
            f(&mut slot.view);
            // Publish state changes, not every latency sample.
            ((slot.view.state, slot.view.last_error.clone()) != before).then(|| slot.view.clone())
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
        let view = PeerView::new(peer_id, Some(url.to_owned()), kind, true);
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

    /// Accepts LAN peers on `listener` (WebSocket at `/`), admitting only
    /// devices of this daemon's own organisation.
    pub async fn serve_peers(
        self: Arc<Self>,
        listener: TcpListener,
        limits: sitesync_sync::accept::Limits,
    ) -> std::io::Result<()> {
        let app = Router::new()
            .route("/", get(accept_peer))
            .with_state(self.clone());
        let counted = self.clone();
        let refused = Arc::new(move || {
            tracing::debug!("a LAN peer socket past --max-peers was closed");
            counted.counters.peers_refused.inc();
        });
        let config = tls::self_signed_config().map_err(std::io::Error::other)?;
        let listener = sitesync_sync::link::without_nagle(listener);
        sitesync_sync::accept::serve(
            listener,
            Some(config),
            app,
            limits,
            refused,
            std::future::pending(),
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

    /// A relay made these heads of these documents durable: this device's
    /// changes they cover are no longer pending. Recorded in one write: a
    /// reconnect's summary acknowledges every document at once. The write
    /// is relaxed (durable with the next durable one): one comes for every
    /// change this device sends, and a crash losing it only shows changes
    /// as pending until the relay's next summary acknowledges them again.
    fn acked(&self, acks: &[(Uuid, &[ChangeHash])]) {
        let repo = self.service.repo();
        let mut records = Vec::new();
        let mut marked = Vec::new();
        for &(doc, heads) in acks {
            if self.pending.nothing_pending(doc) {
                continue;
            }
            let theirs = sorted_heads(heads);
            // A reconnect re-announces every document's heads: most are
            // what was recorded last time, and cost one metadata read.
            let recorded = repo.store().get_meta(&acked_key(doc)).ok().flatten();
            if recorded
                .as_deref()
                .and_then(decode_heads)
                .map(|h| sorted_heads(&h))
                .as_ref()
                == Some(&theirs)
            {
                continue;
            }
            // Keep only heads this side knows; unknown ones cover nothing
            // yet. When they are exactly this side's heads, no need to
            // load the doc.
            let mine = repo.heads(doc).ok().flatten().map(|h| sorted_heads(&h));
            let known: Vec<ChangeHash> = if mine.as_ref() == Some(&theirs) {
                theirs
            } else {
                repo.read_raw(doc, |am| {
                    theirs
                        .iter()
                        .filter(|h| am.get_change_meta_by_hash(h).is_some())
                        .copied()
                        .collect()
                })
                .ok()
                .flatten()
                .unwrap_or_default()
            };
            if !known.is_empty() {
                records.push((acked_key(doc), encode_heads(&known)));
                marked.push(doc);
            }
        }
        if records.is_empty() {
            return;
        }
        if let Err(e) = repo.store().put_metas_relaxed(&records) {
            tracing::warn!(documents = records.len(), error = %e, "cannot record acknowledgements");
        }
        self.pending.recount(&marked);
    }

    fn pending_counts(&self) -> BTreeMap<Uuid, usize> {
        let host = &self.host.inner;
        // Taken in a short critical section: the persist hook marks
        // documents dirty while the repository's lock is held, so reading
        // the repository with this lock held deadlocked the two.
        // `counts` is held throughout (nothing else takes it), so two
        // callers never both see the first count as done before it is.
        let mut counts = self.pending.counts.lock().unwrap_or_else(|p| p.into_inner());
        let taken = {
            let mut dirty = self.pending.dirty.lock().unwrap_or_else(|p| p.into_inner());
            dirty.replace(HashMap::new())
        };
        let dirty = taken.unwrap_or_else(|| {
            // First count: every document held, each from its document.
            let mut all = HashMap::new();
            for p in host.projects().unwrap_or_default() {
                for (d, _) in host.summary(p).unwrap_or_default() {
                    all.insert(
                        d,
                        Dirty {
                            recount: true,
                            grew: Vec::new(),
                        },
                    );
                }
            }
            all
        });
        let me = self.service.device();
        let repo = self.service.repo();
        for (doc, what) in dirty {
            let Ok(Some(project)) = host.project_of(doc) else {
                continue;
            };
            let acked = repo
                .store()
                .get_meta(&acked_key(doc))
                .ok()
                .flatten()
                .and_then(|b| decode_heads(&b))
                .unwrap_or_default();
            let heads = sorted_heads(&repo.heads(doc).ok().flatten().unwrap_or_default());
            let followed = if !heads.is_empty() && heads == sorted_heads(&acked) {
                // Acknowledged up to this side's heads: nothing pending, and
                // no need to decode the document (a catch-up marks hundreds).
                Some((heads.clone(), 0))
            } else if what.recount {
                None
            } else {
                Pending::follow(counts.get(&doc), &what.grew)
            };
            let (heads, count) = match followed {
                Some(followed) => followed,
                // Counted from the document, with the heads it was counted
                // at (a write may land between reading the heads and this).
                None => repo
                    .read_raw(doc, |am| {
                        let own = am
                            .get_changes_meta(&acked)
                            .iter()
                            .filter(|c| {
                                c.message
                                    .as_deref()
                                    .and_then(OpMeta::decode)
                                    .is_some_and(|m| m.device == me)
                            })
                            .count();
                        (sorted_heads(&am.get_heads()), own)
                    })
                    .ok()
                    .flatten()
                    .unwrap_or((heads, 0)),
            };
            counts.insert(
                doc,
                Counted {
                    project,
                    heads,
                    count,
                },
            );
        }
        let mut out = BTreeMap::new();
        for c in counts.values() {
            *out.entry(c.project).or_insert(0) += c.count;
        }
        out
    }

    /// `PUT /v1/presence`: a local heartbeat, relayed to every peer.
    pub fn heartbeat(&self, project: ProjectId, component: Option<Uuid>, activity: u8, user: &str) {
        // Strictly increasing, and past any number given before a restart
        // (the wall clock has moved on), so peers take it as new.
        let at = now().0.max(0) as u64;
        let prev = self
            .presence_seq
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
                Some(at.max(last + 1))
            })
            .unwrap_or(0);
        let entry = PresenceEntry {
            project: project.0.into(),
            component: component.map(Into::into),
            user: user.to_owned(),
            device: self.service.device().0.into(),
            activity,
            seq: at.max(prev + 1),
        };
        if self.presence.offer(0, self.service.org(), entry.clone()) == Offer::New {
            self.publish_presence(&entry);
        }
    }

    /// A heartbeat new to this device, on the event stream.
    fn publish_presence(&self, entry: &PresenceEntry) {
        let project = Uuid::from(entry.project);
        self.service.events.publish(
            "presence.updated",
            Some(ProjectId(project)),
            json!({"project_id": project, "user": entry.user, "device_id": Uuid::from(entry.device),
                   "component_id": entry.component.map(Uuid::from),
                   "activity": activity_name(entry.activity), "last_seen": now()}),
        );
    }

    /// Who is viewing or editing what in `project` (expired entries dropped).
    pub fn presence(&self, project: ProjectId) -> Vec<PresenceView> {
        let mut out: Vec<PresenceView> = self
            .presence
            .live(self.service.org(), project.0)
            .into_iter()
            .map(|h| PresenceView {
                user: h.user,
                device_id: h.device.into(),
                component_id: h.component.map(Uuid::from),
                activity: activity_name(h.activity),
                last_seen: Timestamp(h.at_ms),
            })
            .collect();
        out.sort_by(|a, b| a.user.cmp(&b.user).then(a.device_id.cmp(&b.device_id)));
        out
    }
}

impl Pending {
    /// A document's count carried forward over the writes since it was
    /// made, without reading the document; `None` when the writes do not
    /// chain on from the counted heads (then it is counted afresh).
    ///
    /// Counting races writes, two ways, and neither must force a decode:
    /// a count read from the document may already include writes whose
    /// entries arrive after it (skipped here: the count's heads are one of
    /// their `after`s), and writes may land after the entries were taken
    /// (the result is then the count at the chain's end, not at the
    /// document's latest heads; the next count carries it on from there).
    fn follow(counted: Option<&Counted>, grew: &[Grew]) -> Option<(Vec<ChangeHash>, usize)> {
        // A document new since the last count starts from no heads and nothing.
        let none = Vec::new();
        let start = counted.map_or((&none, 0), |c| (&c.heads, c.count));
        let covered = grew
            .iter()
            .rposition(|(_, after, _)| after == start.0)
            .map_or(0, |i| i + 1);
        grew[covered..]
            .iter()
            .try_fold(start, |(at, n), (before, after, own)| {
                (before == at).then_some((after, n + own))
            })
            .map(|(at, n)| (at.clone(), n))
    }

    /// Whether `doc` is known to hold none of this device's changes unacknowledged:
    /// counted at 0, and nothing of this process's own written since.
    /// An acknowledgement of such a document changes no count, so it need
    /// not be recorded (a daemon hears one with every sync message a relay
    /// sends it, for documents others changed).
    ///
    /// Never waits: a count in progress holds `counts` while it reads the
    /// repository, and this runs on a connection's task; then the
    /// acknowledgement is simply recorded.
    fn nothing_pending(&self, doc: Uuid) -> bool {
        let counts = match self.counts.try_lock() {
            Ok(counts) => counts,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return false,
        };
        if counts.get(&doc).is_none_or(|c| c.count != 0) {
            return false;
        }
        let dirty = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
        match dirty.as_ref() {
            None => false,
            Some(dirty) => dirty
                .get(&doc)
                .is_none_or(|d| !d.recount && d.grew.iter().all(|(_, _, own)| *own == 0)),
        }
    }

    /// These documents were acknowledged: count them from their documents.
    fn recount(&self, docs: &[Uuid]) {
        if let Some(dirty) = self.dirty.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            for doc in docs {
                dirty.entry(*doc).or_default().recount = true;
            }
        }
    }

    /// These documents' new changes became durable (called from inside the
    /// repository's lock: this must not read the repository).
    fn grew(&self, persisted: &[Persisted]) {
        if let Some(dirty) = self.dirty.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            for p in persisted {
                dirty.entry(p.id).or_default().grew.push((
                    sorted_heads(&p.before),
                    sorted_heads(&p.heads),
                    p.own_changes,
                ));
            }
        }
    }
}

/// Turns one connection's events into peer status, pending and presence.
struct PeerObserver {
    repl: Arc<Replication>,
    /// The status entry (an inbound peer gets one when it is admitted).
    peer_id: Mutex<Option<Uuid>>,
    connected: std::sync::atomic::AtomicBool,
}

impl Observer for PeerObserver {
    fn frame_in(&self, _bytes: usize) {
        self.repl.counters.frames_in.inc();
    }

    fn frame_out(&self, _bytes: usize) {
        self.repl.counters.frames_out.inc();
    }

    fn events(&self, events: &[Event]) {
        let repl = &self.repl;
        let slot = *self.peer_id.lock().unwrap_or_else(|p| p.into_inner());
        let mut acks = Vec::new();
        for event in events {
            match event {
                Event::Ready(peer) => {
                    self.connected.store(true, Ordering::Relaxed);
                    let id = match slot {
                        Some(id) => id,
                        None => {
                            // An inbound LAN peer: one entry per device
                            // and token, so no device can take over
                            // another's entry by claiming its id.
                            let id = peer.key;
                            repl.peers().entry(id).or_insert_with(|| PeerSlot {
                                view: PeerView::new(id, None, "lan", false),
                                task: None,
                            });
                            *self.peer_id.lock().unwrap_or_else(|p| p.into_inner()) = Some(id);
                            id
                        }
                    };
                    repl.update(id, |v| connected(v, peer));
                    repl.synced_now();
                }
                Event::Applied { .. } => repl.synced_now(),
                Event::Acked { doc, heads } => acks.push((*doc, heads.as_slice())),
                // The link passes on only entries new to this device.
                Event::Presence(entry) => repl.publish_presence(entry),
                Event::Revocations(list) => repl.book.keep(list.clone()),
                Event::Latency(ms) => {
                    if let Some(id) = slot {
                        repl.update(id, |v| {
                            v.latency_ms = Some(*ms);
                            v.quality = Some(quality(*ms));
                        });
                    }
                }
                Event::PeerError { code, message } => {
                    if let Some(id) = slot {
                        repl.update(id, |v| v.last_error = Some(format!("{code}: {message}")));
                    }
                }
            }
        }
        if acks.is_empty() {
            return;
        }
        // Only a relay's acknowledgements mean "stored off this device".
        let slot = *self.peer_id.lock().unwrap_or_else(|p| p.into_inner());
        let from_relay = slot
            .and_then(|id| repl.peers().get(&id).map(|s| s.view.kind == "relay"))
            .unwrap_or(false);
        if from_relay {
            repl.acked(&acks);
        }
        repl.synced_now();
    }
}

fn connected(v: &mut PeerView, peer: &PeerInfo) {
    v.state = "connected";
    v.name = Some(peer.name.clone());
    v.device_id = Some(peer.device);
    v.kind = if peer.relay { "relay" } else { "lan" };
    v.last_connected_at = Some(now());
    v.reconnect_attempts = 0;
    v.next_retry_at = None;
    v.last_error = None;
}

/// A LAN peer's WebSocket on `--peer-listen`, always over TLS: the
/// handshake is bound to the connection's TLS session.
async fn accept_peer(
    State(repl): State<Arc<Replication>>,
    Extension(ConnectionBinding(binding)): Extension<ConnectionBinding>,
    ws: WebSocketUpgrade,
) -> Response {
    sitesync_sync::link::limit_upgrade(ws).on_upgrade(move |socket| async move {
        let Some(token) = repl.token.clone() else { return };
        let session = Session::server(
            repl.service.device().0,
            &repl.device_name,
            Arc::new(token),
            rand::random(),
        )
        .over(Channel {
            binding,
            server_trusted: false,
        })
        .with_revocations(repl.book.clone());
        let observer = Arc::new(PeerObserver {
            repl: repl.clone(),
            peer_id: Mutex::new(None),
            connected: Default::default(),
        });
        let reason = repl.run_session(socket, session, observer.clone()).await.reason;
        let id = *observer.peer_id.lock().unwrap_or_else(|p| p.into_inner());
        match id {
            Some(id) => repl.update(id, |v| {
                v.state = "disconnected";
                v.latency_ms = None;
                v.quality = None;
                v.last_error = Some(reason);
            }),
            None => tracing::info!(%reason, "LAN peer refused"),
        }
    })
}

/// Binds `--peer-listen` and serves LAN peers in the background.
pub async fn listen_for_peers(
    repl: Arc<Replication>,
    addr: SocketAddr,
    limits: sitesync_sync::accept::Limits,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = repl.serve_peers(listener, limits).await {
            tracing::error!(error = %e, "LAN peer listener failed");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use sitesync_model::automerge::ActorId;
    use sitesync_model::{DeviceId, NewProject};
    use sitesync_sync::{DocStore, MemBackend, Repo, RepoConfig};

    use super::*;
    use crate::events::EventBus;
    use crate::service::Clock;

    /// A replication over an in-memory repository, its first count done.
    fn replication() -> (Arc<Service>, Arc<Replication>) {
        let repo = Repo::new(
            DocStore::new(MemBackend::default()),
            ActorId::random(),
            RepoConfig::default(),
        );
        let service = Arc::new(Service::new(
            repo,
            DeviceId(Uuid::new_v4()),
            Clock::system(),
            EventBus::new(100, 1),
        ));
        let tls = ClientTls::new(&[]).unwrap();
        let repl = Replication::new(service.clone(), None, "t".into(), SyncTiming::default(), tls);
        // The first count runs in the background; once it has taken the
        // (empty) dirty set it takes nothing else, so the tests' own counts
        // are the only ones consuming what writes record.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while repl.pending.dirty.lock().unwrap().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "the first count never started"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        (service, repl)
    }

    /// A local write adds its changes to the pending count; the documents
    /// are not decoded to count them (an import of 500,000 components
    /// wrote 10,000 drawings, and decoding them all took 28 s), and the
    /// count is what counting every document from scratch gives.
    #[test]
    fn local_writes_add_to_the_pending_count_without_decoding() {
        let (service, repl) = replication();
        let new = NewProject {
            name: "P".into(),
            code: None,
        };
        let pid = service.create_project("ana", new).unwrap().id;
        let base = repl.pending_counts()[&pid.0];
        assert!(base > 0, "the project's creation is pending");
        for n in 0..5 {
            let new = sitesync_model::NewDrawing {
                number: format!("D-{n}"),
                ..Default::default()
            };
            service.add_drawing("ana", pid, new).unwrap();
        }
        service.repo().evict_all();
        let followed = repl.pending_counts();
        assert_eq!(service.repo().loaded(), 0, "no document decoded to count");
        assert_eq!(
            followed[&pid.0],
            base + 10,
            "each drawing: one change to the project, one creating its own document"
        );
        *repl.pending.dirty.lock().unwrap() = None;
        assert_eq!(repl.pending_counts(), followed, "counted from scratch");

        // The relay acknowledges the project document: what is left is
        // the drawings' own changes, the same followed or from scratch.
        let heads = service.repo().heads(pid.0).unwrap().unwrap();
        repl.acked(&[(pid.0, &heads)]);
        let after_ack = repl.pending_counts();
        assert_eq!(after_ack[&pid.0], 5);
        let new = sitesync_model::NewDrawing {
            number: "D-5".into(),
            ..Default::default()
        };
        service.add_drawing("ana", pid, new).unwrap();
        assert_eq!(repl.pending_counts()[&pid.0], 7);
        *repl.pending.dirty.lock().unwrap() = None;
        assert_eq!(repl.pending_counts()[&pid.0], 7, "counted from scratch");
    }

    /// Once nothing of a document is pending, further acknowledgements of
    /// it are not recorded: a relay's every sync message carries its heads
    /// (one store write each, for documents others changed), and one that
    /// lags behind an Ack already recorded would count acknowledged
    /// changes as pending again.
    #[test]
    fn acknowledgements_of_a_document_with_nothing_pending_change_nothing() {
        let (service, repl) = replication();
        let new = NewProject {
            name: "P".into(),
            code: None,
        };
        let pid = service.create_project("ana", new).unwrap().id;
        let older = service.repo().heads(pid.0).unwrap().unwrap();
        let patch = sitesync_model::ProjectPatch {
            name: Some("Q".into()),
            code: None,
        };
        service.update_project("ana", pid, patch).unwrap();
        let newer = service.repo().heads(pid.0).unwrap().unwrap();
        repl.acked(&[(pid.0, &newer)]);
        assert_eq!(repl.pending_counts()[&pid.0], 0);
        let recorded = || service.repo().store().get_meta(&acked_key(pid.0)).unwrap();
        let before = recorded();

        repl.acked(&[(pid.0, &older)]);
        assert_eq!(recorded(), before, "nothing written");
        assert_eq!(repl.pending_counts()[&pid.0], 0, "nothing pending again");
    }

    /// Counting races writes: a write can land after a count took the
    /// entries but before it read the heads, and a write's entry can arrive
    /// after a count that already read the document past it. Neither may
    /// make a count decode a document, and both must count right. (The
    /// background first count hit this in CI.)
    #[test]
    fn a_count_racing_a_write_neither_decodes_nor_miscounts() {
        let (service, repl) = replication();
        let new = NewProject {
            name: "P".into(),
            code: None,
        };
        let pid = service.create_project("ana", new).unwrap().id;
        let add = |n: usize| {
            let new = sitesync_model::NewDrawing {
                number: format!("D-{n}"),
                ..Default::default()
            };
            service.add_drawing("ana", pid, new).unwrap();
        };
        // The entries recorded since the last count, taken out.
        let take = || -> Vec<(Uuid, Vec<Grew>)> {
            let mut dirty = repl.pending.dirty.lock().unwrap();
            let taken = std::mem::take(dirty.as_mut().unwrap());
            taken.into_iter().map(|(doc, what)| (doc, what.grew)).collect()
        };
        let put = |entries: &[(Uuid, Vec<Grew>)]| {
            let mut dirty = repl.pending.dirty.lock().unwrap();
            for (doc, grew) in entries {
                let what = dirty.as_mut().unwrap().entry(*doc).or_default();
                what.grew.extend(grew.iter().cloned());
            }
        };
        let before = repl.pending_counts()[&pid.0];

        // Two drawings; the second one's entries arrive only after a count
        // (which reads the project's heads past the entries it has).
        add(0);
        add(1);
        let (mut now, mut late) = (Vec::new(), Vec::new());
        for (doc, mut grew) in take() {
            late.push((doc, vec![grew.pop().unwrap()]));
            now.push((doc, grew));
        }
        put(&now);
        service.repo().evict_all();
        repl.pending_counts();
        assert_eq!(
            service.repo().loaded(),
            0,
            "a write that outran the count decoded nothing"
        );
        put(&late);
        let counted = repl.pending_counts();
        assert_eq!(
            service.repo().loaded(),
            0,
            "the late entries carried on from the count"
        );
        assert_eq!(counted[&pid.0], before + 4, "two drawings: two changes each");

        // A count that covers a third drawing, whose entries then arrive again.
        add(2);
        let early = take();
        put(&early);
        repl.pending_counts();
        put(&early);
        service.repo().evict_all();
        let followed = repl.pending_counts();
        assert_eq!(service.repo().loaded(), 0, "entries the count covers are skipped");
        assert_eq!(followed[&pid.0], before + 6, "each change counted once");
        *repl.pending.dirty.lock().unwrap() = None;
        assert_eq!(repl.pending_counts(), followed, "counted from scratch");
    }

    /// The first pending count reads the repository; every durable write
    /// marks documents pending from inside the repository's lock. Both at
    /// once, many times over, must finish: with the count holding the
    /// pending lock while it read the repository, they deadlocked.
    #[test]
    fn counting_pending_changes_never_blocks_a_write() {
        let (service, repl) = replication();
        let (done, finished) = std::sync::mpsc::channel();
        let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let writer = std::thread::spawn(move || {
            for n in 0..300 {
                let new = NewProject {
                    name: format!("P{n}"),
                    code: None,
                };
                service.create_project("ana", new).unwrap();
            }
            done.send(()).unwrap();
        });
        let counter = {
            let (repl, writing) = (repl.clone(), writing.clone());
            std::thread::spawn(move || {
                // For as long as the writer writes.
                while writing.load(Ordering::Relaxed) {
                    // Every call is a first count again.
                    *repl.pending.dirty.lock().unwrap() = None;
                    repl.pending_counts();
                }
            })
        };
        finished
            .recv_timeout(Duration::from_secs(60))
            .expect("the writer never finished: pending counting deadlocked with a write");
        writing.store(false, Ordering::Relaxed);
        writer.join().unwrap();
        counter.join().unwrap();
        assert_eq!(repl.pending_counts().len(), 300, "every project counted");
    }
}
