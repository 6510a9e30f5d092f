//! One connection's sync session, sans IO: frames in, frames and events out.
//! It never touches sockets, tasks, clocks or randomness — the caller passes
//! the time and the nonce — and reaches documents only through [`Host`],
//! which the edges implement over the repository (and tests over plain
//! in-memory documents).
//!
//! Flow. The client sends Hello with its certificate and a nonce; the server
//! admits it through its [`Authority`] and answers Welcome with its own
//! proof; the client proves itself with Auth. From then on both sides hold
//! the *shared scope* (the intersection of both credentials), send a Summary
//! (document → heads) of every shared project they hold, and run Automerge's
//! sync protocol only for documents whose heads differ. A received change is
//! made durable by the host before it is acknowledged with Ack.
//!
//! A summary can name thousands of differing documents (a clone names every
//! one). They are not all started at once: a *window* of at most
//! [`DEFAULT_WINDOW`] documents this side started runs at a time, and the
//! next starts when one settles. Each exchange takes two or three round
//! trips; started all at once, a document's reply would arrive after the
//! repository's cache had evicted it, and every round would decode it again
//! (a clone of 2,000 drawings spent 94% of its time there).
//!
//! Invariants:
//! - Nothing of a project outside the shared scope is sent, and a message
//!   naming one closes the connection with `out_of_scope`, storing nothing.
//! - A malformed frame closes this connection with a reason; nothing else.
//! - In-memory Automerge sync states start from the persisted ones on every
//!   connection (the protocol assumes a reliable, in-order stream, which a
//!   reconnect breaks).
//!
//! One file, over 700 lines, on purpose: it is one state machine, whose
//! states and transitions read top to bottom; split, a reader would hop
//! between files to follow one message.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use ed25519_dalek::Signer as _;
use sitesync_model::automerge::ChangeHash;
use sitesync_model::automerge::sync::{Message as SyncMessage, State as SyncState};
use uuid::Uuid;

use crate::credentials::{
    Authority, Certificate, Channel, CredentialError, RevocationBook, Revocations, Scope, Token,
    check_server, peer_key, transcript,
};
use crate::presence;
use crate::protocol::{self, Head, Message, PresenceEntry, WireId};
use crate::sync_check::{SyncLimits, check_sync_message};

/// Why the host could not do what a session asked.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("document {doc} belongs to project {bound}, not {claimed}")]
    WrongProject { doc: Uuid, bound: Uuid, claimed: Uuid },
    #[error("document {doc}: the peer's changes do not apply: {detail}")]
    BadChanges { doc: Uuid, detail: String },
    #[error("storage failed: {detail}")]
    Storage { detail: String },
    /// The side's limit on what one organisation may keep was reached
    /// (a relay's per-organisation quota); what the message brought is not
    /// stored.
    #[error("{detail}")]
    Quota { detail: String },
}

/// What a session needs of the documents on this side.
pub trait Host {
    /// Projects held here.
    fn projects(&self) -> Result<Vec<Uuid>, HostError>;
    /// Whether `project` may be shared with a peer of organisation `org`
    /// (false when it is bound to another organisation).
    fn may_share(&self, org: &str, project: Uuid) -> Result<bool, HostError>;
    /// Whether `project` is held here and not bound to another organisation
    /// than `org`: presence is shown and passed on only for such projects,
    /// so a device cannot fill other tables with projects nobody holds.
    fn holds(&self, org: &str, project: Uuid) -> Result<bool, HostError>;
    /// The documents of `project` held here, with their durable heads.
    fn summary(&self, project: Uuid) -> Result<Vec<(Uuid, Vec<ChangeHash>)>, HostError>;
    /// The project `doc` is bound to, if held here.
    fn project_of(&self, doc: Uuid) -> Result<Option<Uuid>, HostError>;
    /// Durable heads of `doc`; empty when not held here.
    fn heads(&self, doc: Uuid) -> Result<Vec<ChangeHash>, HostError>;
    /// The next Automerge sync message for `doc` (from an empty document
    /// when not held here).
    fn generate(&self, doc: Uuid, state: &mut SyncState) -> Result<Option<SyncMessage>, HostError>;
    /// Applies a sync message from `peer` (organisation `org`) to `doc` of
    /// `project`, making what it brought durable together with the doc's
    /// binding to `project` and `state`. Returns the new heads when they
    /// changed. Refuses a document bound to another project.
    fn receive(
        &self,
        ctx: &Incoming<'_>,
        state: &mut SyncState,
        message: SyncMessage,
    ) -> Result<Option<Vec<ChangeHash>>, HostError>;
    /// The persisted sync state for (`peer`, `doc`), if any.
    fn load_state(&self, peer: Uuid, doc: Uuid) -> Result<Option<Vec<u8>>, HostError>;
}

/// Who a received sync message is from and what it claims.
pub struct Incoming<'a> {
    pub org: &'a str,
    /// The peer's [`PeerInfo::key`].
    pub peer: Uuid,
    pub project: Uuid,
    pub doc: Uuid,
}

/// The other side, once the handshake is done.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerInfo {
    pub device: Uuid,
    pub name: String,
    pub org: String,
    /// What both sides may share.
    pub scope: Scope,
    /// The peer is a relay (it proved itself with the organisation key).
    pub relay: bool,
    /// The id of the token the peer presented (none from a relay), so a
    /// revocation can drop the connection.
    pub token_id: Option<Uuid>,
    /// When the peer's certificate expires (none from a relay): a live
    /// link does not outlast it ([`Session::ping`] checks).
    pub expires_at_ms: Option<i64>,
    /// What this side keeps the peer's bookkeeping (sync states, status)
    /// under: its device id bound to its token ([`peer_key`]).
    pub key: Uuid,
}

/// Something the driver should know about.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Ready(PeerInfo),
    /// The peer's changes to `doc` are durable here; `heads` are new.
    Applied {
        project: Uuid,
        doc: Uuid,
        heads: Vec<ChangeHash>,
    },
    /// The peer has made these heads of `doc` durable: from its Ack, from
    /// its Summary (a summary lists durable heads), so an Ack lost to a cut
    /// connection is made good at the next connect, or from the heads of
    /// a relay's sync message. The last matters when this side's changes
    /// reached the relay by another route (a LAN peer carried them):
    /// the peer then never asks for them, so no Ack ever comes. A peer's
    /// sync heads are durable because a host generates only from stored
    /// state ([`crate::Repo::sync_doc`] drops a document whose persist
    /// failed; a daemon's writes are durable before they return).
    Acked {
        doc: Uuid,
        heads: Vec<ChangeHash>,
    },
    Presence(PresenceEntry),
    /// Round trip of a ping, in the caller's time unit (ms).
    Latency(i64),
    /// A revocation list from the peer, signed by this side's organisation
    /// and newer than the one held: the side keeps it (durably), and its
    /// sessions pass it on at their next ping.
    Revocations(Revocations),
    /// A non-fatal error the peer reported.
    PeerError {
        code: String,
        message: String,
    },
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    Send(Message),
    Event(Event),
    /// Close the connection (after sending what came before): `code` is the
    /// protocol error code (this side's or the peer's), `reason` a sentence.
    Close {
        code: String,
        reason: String,
    },
}

enum Side {
    Client(Box<Token>),
    Server(Arc<dyn Authority>),
}

enum Phase {
    AwaitWelcome,
    AwaitHello,
    AwaitAuth {
        cert: Box<Certificate>,
        client_nonce: [u8; 32],
        peer: PeerInfo,
    },
    Ready(PeerInfo),
    Closed,
}

/// How many documents of received summaries this side syncs at once by
/// default: well under the repository's default cache (2,048 documents),
/// which must hold this side's window and the peer's together.
pub const DEFAULT_WINDOW: usize = 16;

/// Most documents one Summary may list: ten times the drawings of a
/// 500,000-component project. A longer one closes the connection.
pub const MAX_SUMMARY_DOCS: usize = 262_144;

/// Most documents of received summaries waiting for a window slot, over
/// all projects: summaries for many projects cannot grow the queue
/// without bound.
pub const MAX_QUEUED: usize = 1_048_576;

/// In-memory sync states a connection keeps by default (~200 bytes each);
/// past this, those of settled documents are dropped (their persisted
/// state is reloaded when the document moves again). Far above a
/// 500,000-component project's 10,000 documents: a bench run at 4,096 made
/// the 500,000-row import that syncs as it goes several times slower, as
/// dropped states turned into fresh exchanges and document reloads.
pub const DEFAULT_MAX_STATES: usize = 65_536;

/// How long a started document may go without settling before its window
/// slot is given to the next (ms). Only a safety net: the peer always
/// answers a sync message that needs an answer, but a slot that never
/// settled would otherwise stop the whole summary.
pub const STALL_MS: i64 = 10_000;

/// The documents of received summaries: those waiting for a slot, and those
/// this side started that have not settled yet.
struct Window {
    limit: usize,
    /// (project, document), in summary order. A document no longer in
    /// `queued` was started meanwhile (by the peer, or a local change) and
    /// is skipped.
    queue: VecDeque<(Uuid, Uuid)>,
    queued: HashSet<Uuid>,
    /// Started and not settled: document → when it started (ms).
    open: HashMap<Uuid, i64>,
}

impl Window {
    fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(1),
            queue: VecDeque::new(),
            queued: HashSet::new(),
            open: HashMap::new(),
        }
    }

    /// Queues `doc`; `false` when the queue is full.
    fn enqueue(&mut self, project: Uuid, doc: Uuid) -> bool {
        if self.queued.len() >= MAX_QUEUED {
            return false;
        }
        if !self.open.contains_key(&doc) && self.queued.insert(doc) {
            self.queue.push_back((project, doc));
        }
        true
    }

    /// The next queued document, when a slot is free.
    fn next(&mut self) -> Option<(Uuid, Uuid)> {
        while self.open.len() < self.limit {
            let (project, doc) = self.queue.pop_front()?;
            if self.queued.remove(&doc) {
                return Some((project, doc));
            }
        }
        None
    }

    /// Frees the slots of documents started before `now_ms - STALL_MS`.
    fn expire(&mut self, now_ms: i64) {
        self.open.retain(|_, started| now_ms - *started < STALL_MS);
    }
}

/// Whether the sync of one document has nothing left to wait for: the
/// peer's last known heads are the heads this side last sent, so neither
/// lacks a change of the other. (`in_flight` cannot say this: it stays set
/// after the last message of an exchange, which gets no answer.)
fn settled(state: &SyncState) -> bool {
    state.their_heads.as_ref() == Some(&state.last_sent_heads)
}

/// One connection's protocol state.
pub struct Session {
    device: Uuid,
    name: String,
    side: Side,
    /// This side's fresh nonce for the handshake.
    nonce: [u8; 32],
    phase: Phase,
    /// In-memory Automerge sync state per document, rebuilt from the
    /// persisted one on first use in this connection.
    states: HashMap<Uuid, SyncState>,
    /// Documents of received summaries still to sync, at most a window of
    /// them at a time.
    window: Window,
    /// Outstanding pings: nonce → time sent.
    pings: HashMap<u64, i64>,
    next_ping: u64,
    /// What a peer's sync message may hold before Automerge sees it.
    sync_limits: SyncLimits,
    /// In-memory sync states kept before settled ones are dropped.
    max_states: usize,
    /// The transport underneath, which the handshake's proofs are bound
    /// to when it is TLS this side can bind ([`Session::over`]).
    channel: Channel,
    /// What this side knows of revocations ([`Session::with_revocations`]).
    book: Option<Arc<dyn RevocationBook>>,
    /// The version of the newest revocation list this connection has sent
    /// or heard: a list goes to the peer once, and never back.
    revocations_shared: u64,
    /// What the peer was last heard to hold of each document of the
    /// shared projects held here (its summary, its Acks, the heads of its
    /// sync messages): what [`Session::differing`] compares this side's
    /// heads with. Only documents of projects held here are kept, each
    /// project's bounded by the summary limit, so a peer cannot grow it
    /// with ids of its own invention. Kept only when asked
    /// ([`Session::comparing`]): a relay with a thousand devices would
    /// hold a copy of every device's heads.
    known: HashMap<Uuid, Known>,
    /// Whether `known` is kept.
    comparing: bool,
}

/// A document as the peer was last heard to hold it.
struct Known {
    project: Uuid,
    /// Sorted, as compared.
    heads: Vec<ChangeHash>,
}

/// One shared project as [`Session::differing`] finds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProjectSync {
    pub project: Uuid,
    /// Documents of the project held here.
    pub documents: usize,
    /// Documents whose heads differ between this side and what the peer
    /// was last heard to hold, counting those only one side has.
    pub differing: usize,
}

fn heads_to_wire(heads: &[ChangeHash]) -> Vec<Head> {
    heads.iter().map(|h| h.0).collect()
}

fn heads_from_wire(heads: &[Head]) -> Vec<ChangeHash> {
    heads.iter().map(|h| ChangeHash(*h)).collect()
}

fn fatal(code: &str, message: impl Into<String>) -> Vec<Output> {
    let message = message.into();
    vec![
        Output::Send(Message::Error {
            code: code.into(),
            message: message.clone(),
            fatal: true,
        }),
        Output::Close {
            code: code.into(),
            reason: format!("{code}: {message}"),
        },
    ]
}

fn host_failure(e: HostError) -> Vec<Output> {
    match e {
        HostError::WrongProject { .. } => fatal("out_of_scope", e.to_string()),
        HostError::BadChanges { .. } => fatal("bad_changes", e.to_string()),
        HostError::Storage { .. } => fatal("unavailable", e.to_string()),
        HostError::Quota { .. } => fatal("quota_exceeded", e.to_string()),
    }
}

fn out_of_scope(project: Uuid) -> Vec<Output> {
    fatal(
        "out_of_scope",
        format!("project {project} is outside the shared scope"),
    )
}

fn credential_failure(e: CredentialError) -> Vec<Output> {
    fatal("unauthorized", e.to_string())
}

impl Session {
    /// The side that connects, presenting `token`.
    pub fn client(device: Uuid, name: &str, token: Token, nonce: [u8; 32]) -> Self {
        Self::new(
            device,
            name,
            Side::Client(Box::new(token)),
            nonce,
            Phase::AwaitWelcome,
        )
    }

    /// The side that accepts, admitting peers through `authority`.
    pub fn server(device: Uuid, name: &str, authority: Arc<dyn Authority>, nonce: [u8; 32]) -> Self {
        Self::new(device, name, Side::Server(authority), nonce, Phase::AwaitHello)
    }

    /// Runs the handshake over `channel` (default: [`Channel::UNBOUND`]).
    ///
    /// A server with a binding signs it into its proof and accepts only a
    /// client proof bound to it, so the two proofs are good for this TLS
    /// session alone. A client accepts a server proof bound to its own
    /// binding, or, only when the server's certificate is trusted or the
    /// link is plain `ws://`, an unbound one (a relay's); it signs its own
    /// proof the same way. A device in the middle of a LAN link, running a
    /// TLS session with each side, gets proofs that verify on neither.
    pub fn over(mut self, channel: Channel) -> Self {
        self.channel = channel;
        self
    }

    /// Consults `book` for revocations: a peer whose token it names is
    /// refused at the handshake and dropped at the next ping; its list
    /// for the peer's organisation is sent after the handshake and again
    /// whenever it grows; a newer list from the peer comes out as
    /// [`Event::Revocations`].
    pub fn with_revocations(mut self, book: Arc<dyn RevocationBook>) -> Self {
        self.book = Some(book);
        self
    }

    /// The peer's token is revoked, as far as this side knows.
    fn revoked(&self, org: &str, token: Option<Uuid>) -> Option<CredentialError> {
        let (book, id) = (self.book.as_ref()?, token?);
        book.is_revoked(org, id)
            .then_some(CredentialError::Revoked { id })
    }

    /// This side's revocation list for the peer, when it has one the peer
    /// has not had from this connection.
    fn offer_revocations(&mut self, org: &str) -> Option<Output> {
        let list = self.book.as_ref()?.latest(org)?;
        if list.version() <= self.revocations_shared {
            return None;
        }
        self.revocations_shared = list.version();
        Some(Output::Send(Message::Revocations { list: list.encode() }))
    }

    fn new(device: Uuid, name: &str, side: Side, nonce: [u8; 32], phase: Phase) -> Self {
        Self {
            device,
            name: name.to_owned(),
            side,
            nonce,
            phase,
            states: HashMap::new(),
            window: Window::new(DEFAULT_WINDOW),
            pings: HashMap::new(),
            next_ping: 0,
            sync_limits: SyncLimits::default(),
            max_states: DEFAULT_MAX_STATES,
            channel: Channel::UNBOUND,
            book: None,
            revocations_shared: 0,
            known: HashMap::new(),
            comparing: false,
        }
    }

    /// Keeps what the peer holds, so [`Session::differing`] can tell how
    /// far apart the two sides are (a daemon's status); off by default.
    pub fn comparing(mut self) -> Self {
        self.comparing = true;
        self
    }

    /// Syncs at most `limit` documents of received summaries at once
    /// (at least one).
    pub fn with_window(mut self, limit: usize) -> Self {
        self.window.limit = limit.max(1);
        self
    }

    /// Keeps at most about `limit` in-memory sync states (at least one).
    pub fn with_max_states(mut self, limit: usize) -> Self {
        self.max_states = limit.max(1);
        self
    }

    /// How many in-memory sync states this connection holds.
    pub fn sync_states(&self) -> usize {
        self.states.len()
    }

    /// Drops the states of settled documents not in the window once there
    /// are more than allowed: a long connection over a large project would
    /// otherwise hold one for every document it ever synced.
    fn shrink_states(&mut self) {
        if self.states.len() > self.max_states {
            let open = &self.window.open;
            self.states
                .retain(|doc, state| open.contains_key(doc) || !settled(state));
        }
    }

    /// The peer, once the handshake is done.
    pub fn peer(&self) -> Option<&PeerInfo> {
        match &self.phase {
            Phase::Ready(p) => Some(p),
            _ => None,
        }
    }

    /// How far apart this side and the peer are, per shared project held
    /// here (nothing unless [`Session::comparing`]): documents whose
    /// durable heads differ from what the peer was last heard to hold (a change this side made counts until the peer
    /// acknowledges it). Reads the heads of every shared document, so the
    /// driver calls it now and then (a daemon at each ping), not per frame.
    pub fn differing(&self, host: &dyn Host) -> Result<Vec<ProjectSync>, HostError> {
        let Some(peer) = self.peer().filter(|_| self.comparing) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for project in self.shared_projects(peer, host)? {
            let ours = host.summary(project)?;
            let mut held = HashSet::with_capacity(ours.len());
            let mut differing = 0;
            for (doc, mut heads) in ours {
                held.insert(doc);
                heads.sort_unstable();
                if self.known.get(&doc).map(|k| &k.heads) != Some(&heads) {
                    differing += 1;
                }
            }
            differing += self
                .known
                .iter()
                .filter(|(doc, k)| k.project == project && !k.heads.is_empty() && !held.contains(*doc))
                .count();
            out.push(ProjectSync {
                project,
                documents: held.len(),
                differing,
            });
        }
        Ok(out)
    }

    /// Notes that the peer holds `heads` of `doc` (of `project`, when the
    /// message said): kept only for a document of a project held here and
    /// shared with the peer.
    fn hear(
        &mut self,
        peer: &PeerInfo,
        doc: Uuid,
        project: Option<Uuid>,
        heads: &[ChangeHash],
        host: &dyn Host,
    ) -> Result<(), HostError> {
        if !self.comparing {
            return Ok(());
        }
        let mut heads = heads.to_vec();
        heads.sort_unstable();
        // A document kept already was checked when it was first kept:
        // its project is shared and held (no store reads per message).
        if let Some(known) = self.known.get_mut(&doc) {
            known.heads = heads;
            return Ok(());
        }
        let project = match project {
            Some(p) => p,
            None => match host.project_of(doc)? {
                Some(p) => p,
                None => return Ok(()),
            },
        };
        if !self.allowed(peer, project, host)? || !host.holds(&peer.org, project)? {
            return Ok(());
        }
        self.known.insert(doc, Known { project, heads });
        Ok(())
    }

    /// The peer's organisation once its Hello is admitted (a server still
    /// awaiting the client's Auth, or either side once ready).
    pub fn admitted_org(&self) -> Option<&str> {
        match &self.phase {
            Phase::AwaitAuth { peer, .. } | Phase::Ready(peer) => Some(&peer.org),
            _ => None,
        }
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// What to send first: a client's Hello (a server waits).
    pub fn start(&mut self) -> Vec<Output> {
        match &self.side {
            Side::Client(token) => vec![Output::Send(Message::Hello {
                peer: self.device.into(),
                device_name: self.name.clone(),
                credentials: token.cert().encode(),
                nonce: self.nonce,
            })],
            Side::Server(_) => Vec::new(),
        }
    }

    /// Handles one received frame at time `now_ms`.
    pub fn handle(&mut self, frame: &[u8], now_ms: i64, host: &dyn Host) -> Vec<Output> {
        if self.is_closed() {
            return Vec::new();
        }
        let out = match protocol::decode(frame) {
            Ok(message) => self.handle_message(message, now_ms, host),
            Err(protocol::FrameError::UnsupportedVersion) => fatal(
                "unsupported_version",
                format!(
                    "this side speaks sitesync protocol version {}; upgrade the older side",
                    protocol::PROTOCOL_VERSION
                ),
            ),
            Err(e) => fatal("malformed_frame", e.to_string()),
        };
        if out.iter().any(|o| matches!(o, Output::Close { .. })) {
            self.phase = Phase::Closed;
        }
        out
    }

    fn handle_message(&mut self, message: Message, now_ms: i64, host: &dyn Host) -> Vec<Output> {
        let phase = std::mem::replace(&mut self.phase, Phase::Closed);
        match (phase, message) {
            (
                Phase::AwaitHello,
                Message::Hello {
                    peer,
                    device_name,
                    credentials,
                    nonce,
                },
            ) => self.on_hello(peer, device_name, &credentials, nonce, now_ms),
            (
                Phase::AwaitWelcome,
                Message::Welcome {
                    peer,
                    device_name,
                    credentials,
                    nonce,
                    proof,
                    ..
                },
            ) => self.on_welcome(peer, device_name, &credentials, nonce, &proof, now_ms, host),
            (
                Phase::AwaitAuth {
                    cert,
                    client_nonce,
                    peer,
                },
                Message::Auth { proof },
            ) => {
                let signed = transcript(
                    "client",
                    &client_nonce,
                    &self.nonce,
                    self.channel.binding.as_ref(),
                );
                if let Err(e) = cert.check_proof(&signed, &proof) {
                    return credential_failure(e);
                }
                self.ready(peer, host)
            }
            (
                _,
                Message::Error {
                    code,
                    message,
                    fatal: true,
                },
            ) => vec![Output::Close {
                reason: format!("peer refused: {code}: {message}"),
                code,
            }],
            (Phase::Ready(peer), message) => {
                self.phase = Phase::Ready(peer.clone());
                self.on_ready_message(&peer, message, now_ms, host)
            }
            (_, other) => fatal(
                "protocol",
                format!("unexpected {} before the handshake finished", name_of(&other)),
            ),
        }
    }

    fn on_hello(
        &mut self,
        peer: WireId,
        device_name: String,
        credentials: &[u8],
        client_nonce: [u8; 32],
        now_ms: i64,
    ) -> Vec<Output> {
        let Side::Server(authority) = &self.side else {
            unreachable!("only servers await a Hello")
        };
        let cert = match Certificate::decode(credentials) {
            Ok(c) => c,
            Err(e) => return credential_failure(e),
        };
        let admission = match authority.admit(&cert, now_ms) {
            Ok(a) => a,
            Err(e) => return credential_failure(e),
        };
        if let Some(e) = self.revoked(cert.org(), Some(cert.id())) {
            return credential_failure(e);
        }
        let info = PeerInfo {
            device: peer.into(),
            name: device_name,
            org: cert.org().to_owned(),
            scope: admission.scope.intersect(&cert.scope()),
            relay: false,
            token_id: Some(cert.id()),
            expires_at_ms: Some(cert.expires_at_ms()),
            key: peer_key(Some(cert.id()), peer.into()),
        };
        let proof = admission
            .signer
            .sign(&transcript(
                "server",
                &client_nonce,
                &self.nonce,
                self.channel.binding.as_ref(),
            ))
            .to_bytes()
            .to_vec();
        let welcome = Message::Welcome {
            peer: self.device.into(),
            device_name: self.name.clone(),
            credentials: admission.presented,
            nonce: self.nonce,
            proof,
        };
        self.phase = Phase::AwaitAuth {
            cert: Box::new(cert),
            client_nonce,
            peer: info,
        };
        vec![Output::Send(welcome)]
    }

    #[allow(clippy::too_many_arguments)]
    fn on_welcome(
        &mut self,
        peer: WireId,
        device_name: String,
        credentials: &[u8],
        server_nonce: [u8; 32],
        proof: &[u8],
        now_ms: i64,
        host: &dyn Host,
    ) -> Vec<Output> {
        let Side::Client(token) = &self.side else {
            unreachable!("only clients await a Welcome")
        };
        // The bound proof first; an unbound one only where nothing else
        // needs the binding to know who is at the other end ([`Self::over`]).
        let bound = self.channel.binding;
        let unbound_ok = bound.is_none() || self.channel.server_trusted;
        let check = |binding: Option<&[u8; 32]>| {
            let signed = transcript("server", &self.nonce, &server_nonce, binding);
            check_server(token, credentials, &signed, proof, now_ms)
        };
        let mut checked = check(bound.as_ref()).map(|scope| (scope, bound));
        if checked.is_err() && bound.is_some() {
            let unbound = check(None).map(|scope| (scope, None));
            checked = match unbound {
                Ok(found) if unbound_ok => Ok(found),
                Ok(_) => Err(CredentialError::UnboundProof),
                Err(_) => checked,
            };
        }
        let (server_scope, binding) = match checked {
            Ok(found) => found,
            Err(e) => return credential_failure(e),
        };
        let server_cert = Certificate::decode(credentials).ok();
        if let Some(e) = self.revoked(token.cert().org(), server_cert.as_ref().map(Certificate::id)) {
            return credential_failure(e);
        }
        let info = PeerInfo {
            device: peer.into(),
            name: device_name,
            org: token.cert().org().to_owned(),
            scope: token.cert().scope().intersect(&server_scope),
            relay: credentials.is_empty(),
            token_id: server_cert.as_ref().map(Certificate::id),
            expires_at_ms: server_cert.as_ref().map(Certificate::expires_at_ms),
            key: peer_key(server_cert.as_ref().map(Certificate::id), peer.into()),
        };
        let auth = Message::Auth {
            proof: token.sign(&transcript(
                "client",
                &self.nonce,
                &server_nonce,
                binding.as_ref(),
            )),
        };
        let mut out = vec![Output::Send(auth)];
        out.extend(self.ready(info, host));
        out
    }

    /// Handshake done: announce, then summarise every shared project held.
    fn ready(&mut self, peer: PeerInfo, host: &dyn Host) -> Vec<Output> {
        self.phase = Phase::Ready(peer.clone());
        let mut out = vec![Output::Event(Event::Ready(peer.clone()))];
        out.extend(self.offer_revocations(&peer.org));
        out.extend(self.resync(host));
        out
    }

    fn shared_projects(&self, peer: &PeerInfo, host: &dyn Host) -> Result<Vec<Uuid>, HostError> {
        let mut out = Vec::new();
        for p in host.projects()? {
            if self.allowed(peer, p, host)? {
                out.push(p);
            }
        }
        Ok(out)
    }

    fn allowed(&self, peer: &PeerInfo, project: Uuid, host: &dyn Host) -> Result<bool, HostError> {
        Ok(peer.scope.contains(project) && host.may_share(&peer.org, project)?)
    }

    /// Sends a Summary of every shared project held (after the handshake,
    /// and whenever the driver fell behind on change notifications).
    pub fn resync(&mut self, host: &dyn Host) -> Vec<Output> {
        let Some(peer) = self.peer().cloned() else {
            return Vec::new();
        };
        let result = (|| {
            let mut out = Vec::new();
            for project in self.shared_projects(&peer, host)? {
                let docs = host
                    .summary(project)?
                    .into_iter()
                    .map(|(d, h)| (WireId::from(d), heads_to_wire(&h)))
                    .collect();
                out.push(Output::Send(Message::Summary {
                    project: project.into(),
                    docs,
                }));
            }
            Ok(out)
        })();
        result.unwrap_or_else(|e| self.fail(host_failure(e)))
    }

    fn fail(&mut self, out: Vec<Output>) -> Vec<Output> {
        self.phase = Phase::Closed;
        out
    }

    fn state(&mut self, peer: Uuid, doc: Uuid, host: &dyn Host) -> Result<&mut SyncState, HostError> {
        Ok(match self.states.entry(doc) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(
                host.load_state(peer, doc)?
                    .and_then(|bytes| SyncState::decode(&bytes).ok())
                    .unwrap_or_default(),
            ),
        })
    }

    /// The next sync message of `doc` to the peer, if any.
    fn step(
        &mut self,
        peer: &PeerInfo,
        project: Uuid,
        doc: Uuid,
        host: &dyn Host,
    ) -> Result<Vec<Output>, HostError> {
        let state = self.state(peer.key, doc, host)?;
        Ok(match host.generate(doc, state)? {
            Some(m) => vec![Output::Send(Message::Sync {
                project: project.into(),
                doc: doc.into(),
                message: m.encode(),
            })],
            None => Vec::new(),
        })
    }

    /// A local document changed (a local write, or another peer's changes
    /// made durable): offer it to this peer if it may have it.
    pub fn doc_changed(&mut self, doc: Uuid, host: &dyn Host) -> Vec<Output> {
        let Some(peer) = self.peer().cloned() else {
            return Vec::new();
        };
        let result = (|| {
            let Some(project) = host.project_of(doc)? else {
                return Ok(Vec::new());
            };
            if !self.allowed(&peer, project, host)? {
                return Ok(Vec::new());
            }
            // Started now: a queued turn would only repeat it.
            self.window.queued.remove(&doc);
            self.step(&peer, project, doc, host)
        })();
        result.unwrap_or_else(|e| self.fail(host_failure(e)))
    }

    /// Relays a presence entry heard from organisation `org` (or made here)
    /// if the peer is of that organisation and its project is shared with
    /// it: presence never crosses organisations.
    pub fn presence(&mut self, org: &str, entry: PresenceEntry, host: &dyn Host) -> Vec<Output> {
        let Some(peer) = self.peer() else {
            return Vec::new();
        };
        if peer.org != org {
            return Vec::new();
        }
        match self.allowed(peer, entry.project.into(), host) {
            Ok(true) => vec![Output::Send(Message::Presence(entry))],
            Ok(false) => Vec::new(),
            Err(e) => self.fail(host_failure(e)),
        }
    }

    /// A ping to measure latency; the matching Pong yields [`Event::Latency`].
    pub fn ping(&mut self, now_ms: i64) -> Vec<Output> {
        let Some(peer) = self.peer() else {
            return Vec::new();
        };
        // Expiry is checked at the handshake and on every ping after it,
        // so a link lives at most a ping interval past its certificate.
        if let Some(expired) = peer.expires_at_ms.filter(|at| now_ms >= *at) {
            let out = credential_failure(CredentialError::Expired {
                id: peer.token_id.unwrap_or_default(),
                expired_at_ms: expired,
            });
            return self.fail(out);
        }
        // So is revocation: a link lives at most a ping interval past the
        // moment this side learns of it.
        if let Some(e) = self.revoked(&peer.org, peer.token_id) {
            let out = credential_failure(e);
            return self.fail(out);
        }
        let org = peer.org.clone();
        let mut out: Vec<Output> = self.offer_revocations(&org).into_iter().collect();
        self.next_ping += 1;
        // Forget pings never answered, so the map stays small.
        self.pings.retain(|n, _| *n + 8 > self.next_ping);
        self.pings.insert(self.next_ping, now_ms);
        out.push(Output::Send(Message::Ping {
            nonce: self.next_ping,
        }));
        out
    }

    fn on_ready_message(
        &mut self,
        peer: &PeerInfo,
        message: Message,
        now_ms: i64,
        host: &dyn Host,
    ) -> Vec<Output> {
        let result = match message {
            Message::Summary { project, docs } => self.on_summary(peer, project.into(), docs, host),
            Message::Sync {
                project,
                doc,
                message,
            } => self.on_sync(peer, project.into(), doc.into(), &message, host),
            Message::Ack { doc, heads } => {
                let (doc, heads) = (Uuid::from(doc), heads_from_wire(&heads));
                self.hear(peer, doc, None, &heads, host)
                    .map(|()| vec![Output::Event(Event::Acked { doc, heads })])
            }
            Message::Presence(entry) => {
                if let Err(e) = presence::check(&entry) {
                    return fatal("bad_presence", e.to_string());
                }
                let project = Uuid::from(entry.project);
                if !peer.scope.contains(project) {
                    return fatal("out_of_scope", "presence for a project outside the shared scope");
                }
                // A project in scope that is not held here (or is another
                // organisation's) has nobody here to show it to: dropped.
                match host.holds(&peer.org, project) {
                    Ok(true) => Ok(vec![Output::Event(Event::Presence(entry))]),
                    Ok(false) => Ok(Vec::new()),
                    Err(e) => Err(e),
                }
            }
            Message::Revocations { list } => self.on_revocations(peer, &list),
            Message::Ping { nonce } => Ok(vec![Output::Send(Message::Pong { nonce })]),
            Message::Pong { nonce } => Ok(self
                .pings
                .remove(&nonce)
                .map(|sent| Output::Event(Event::Latency(now_ms - sent)))
                .into_iter()
                .collect()),
            Message::Error { code, message, .. } => {
                Ok(vec![Output::Event(Event::PeerError { code, message })])
            }
            other @ (Message::Hello { .. } | Message::Welcome { .. } | Message::Auth { .. }) => {
                return fatal(
                    "protocol",
                    format!("unexpected {} after the handshake", name_of(&other)),
                );
            }
        };
        // After any frame, freed slots start queued documents (a summary
        // queues them; a settled sync frees one), and stalled slots are
        // given away (pongs arrive even when nothing else does).
        let result = result.and_then(|mut out| {
            if !out.iter().any(|o| matches!(o, Output::Close { .. })) {
                self.window.expire(now_ms);
                out.extend(self.fill(peer, now_ms, host)?);
            }
            Ok(out)
        });
        result.unwrap_or_else(host_failure)
    }

    /// Starts queued documents while the window has room. A document whose
    /// first step sends nothing, or is settled at once, takes no slot.
    fn fill(&mut self, peer: &PeerInfo, now_ms: i64, host: &dyn Host) -> Result<Vec<Output>, HostError> {
        let mut out = Vec::new();
        while let Some((project, doc)) = self.window.next() {
            let sent = self.step(peer, project, doc, host)?;
            if !sent.is_empty() && !self.states.get(&doc).is_some_and(settled) {
                self.window.open.insert(doc, now_ms);
            }
            out.extend(sent);
        }
        Ok(out)
    }

    fn on_summary(
        &mut self,
        peer: &PeerInfo,
        project: Uuid,
        docs: Vec<(WireId, Vec<Head>)>,
        host: &dyn Host,
    ) -> Result<Vec<Output>, HostError> {
        if !self.allowed(peer, project, host)? {
            return Ok(out_of_scope(project));
        }
        if docs.len() > MAX_SUMMARY_DOCS {
            return Ok(fatal(
                "too_large",
                format!(
                    "a summary of {} documents exceeds the limit of {MAX_SUMMARY_DOCS}",
                    docs.len()
                ),
            ));
        }
        let mut out = Vec::new();
        let mut listed = HashSet::new();
        let mut differ = Vec::new();
        // What the peer holds is remembered for projects held here only.
        let holds = self.comparing && host.holds(&peer.org, project)?;
        for (doc, heads) in docs {
            let doc = Uuid::from(doc);
            listed.insert(doc);
            match host.project_of(doc)? {
                Some(bound) if bound != project => {
                    return Ok(host_failure(HostError::WrongProject {
                        doc,
                        bound,
                        claimed: project,
                    }));
                }
                _ => {}
            }
            let mut theirs = heads_from_wire(&heads);
            let mut mine = host.heads(doc)?;
            theirs.sort_unstable();
            mine.sort_unstable();
            if holds {
                self.known.insert(
                    doc,
                    Known {
                        project,
                        heads: theirs.clone(),
                    },
                );
            }
            if theirs != mine {
                // What the summary says replaces what this side last heard,
                // and nothing is in flight any more: an exchange that
                // ended on this side's message leaves Automerge waiting
                // for an answer, and it would generate nothing for a
                // document the peer changed without sending (a change
                // its feed missed, say).
                let state = self.state(peer.key, doc, host)?;
                state.their_heads = Some(theirs.clone());
                state.in_flight = false;
                differ.push(doc);
            }
            if !theirs.is_empty() {
                out.push(Output::Event(Event::Acked { doc, heads: theirs }));
            }
        }
        for (doc, _) in host.summary(project)? {
            if !listed.contains(&doc) {
                differ.push(doc);
            }
        }
        // The project document first: a daemon indexes a drawing as it
        // arrives only once it holds the project's drawing list, so a new
        // device's listings fill in as the clone goes instead of all at
        // once whenever the project document comes (781st of 2,001 in the
        // bench's clone). The clone's total time is the same either way.
        differ.sort_by_key(|doc| *doc != project);
        for doc in differ {
            if !self.window.enqueue(project, doc) {
                return Ok(fatal(
                    "too_large",
                    format!("more than {MAX_QUEUED} documents wait to sync on this connection"),
                ));
            }
        }
        Ok(out)
    }

    /// A revocation list from the peer: checked, reported when news, and
    /// never sent back on this connection.
    fn on_revocations(&mut self, peer: &PeerInfo, bytes: &[u8]) -> Result<Vec<Output>, HostError> {
        let list = match Revocations::decode(bytes) {
            Ok(list) => list,
            Err(e) => return Ok(fatal("bad_revocations", e.to_string())),
        };
        if list.org() != peer.org {
            return Ok(fatal(
                "bad_revocations",
                format!("a revocation list of organisation {:?}", list.org()),
            ));
        }
        let Some(book) = self.book.clone() else {
            return Ok(Vec::new());
        };
        let news = match book.is_news(&list) {
            Ok(news) => news,
            Err(e) => return Ok(fatal("bad_revocations", e.to_string())),
        };
        self.revocations_shared = self.revocations_shared.max(list.version());
        if !news {
            return Ok(Vec::new());
        }
        let names_peer = peer.token_id.is_some_and(|t| list.contains(t));
        let mut out = vec![Output::Event(Event::Revocations(list))];
        if names_peer {
            let id = peer.token_id.unwrap_or_default();
            out.extend(credential_failure(CredentialError::Revoked { id }));
        }
        Ok(out)
    }

    fn on_sync(
        &mut self,
        peer: &PeerInfo,
        project: Uuid,
        doc: Uuid,
        bytes: &[u8],
        host: &dyn Host,
    ) -> Result<Vec<Output>, HostError> {
        if !self.allowed(peer, project, host)? {
            return Ok(out_of_scope(project));
        }
        // Automerge trusts what it decodes: the bytes are checked first.
        if let Err(e) = check_sync_message(bytes, &self.sync_limits) {
            return Ok(fatal(
                "malformed_frame",
                format!("bad sync message for {doc}: {e}"),
            ));
        }
        let message = match SyncMessage::decode(bytes) {
            Ok(m) => m,
            Err(e) => {
                return Ok(fatal(
                    "malformed_frame",
                    format!("bad sync message for {doc}: {e}"),
                ));
            }
        };
        let incoming = Incoming {
            org: &peer.org,
            peer: peer.key,
            project,
            doc,
        };
        let state = self.state(peer.key, doc, host)?;
        let sent_heads = message.heads.clone();
        let theirs = if peer.relay {
            message.heads.clone()
        } else {
            Vec::new()
        };
        let mut out = Vec::new();
        if let Some(heads) = host.receive(&incoming, state, message)? {
            out.push(Output::Send(Message::Ack {
                doc: doc.into(),
                heads: heads_to_wire(&heads),
            }));
            out.push(Output::Event(Event::Applied { project, doc, heads }));
        }
        // After the receive: the first message of a new project makes it
        // held here.
        self.hear(peer, doc, Some(project), &sent_heads, host)?;
        // Only a relay's holdings mean "stored off this device"; a LAN
        // peer's sync messages need no event.
        if !theirs.is_empty() {
            out.push(Output::Event(Event::Acked { doc, heads: theirs }));
        }
        // The peer started this document: it no longer waits for a slot.
        self.window.queued.remove(&doc);
        out.extend(self.step(peer, project, doc, host)?);
        if self.states.get(&doc).is_some_and(settled) {
            self.window.open.remove(&doc);
        }
        self.shrink_states();
        Ok(out)
    }
}

fn name_of(m: &Message) -> &'static str {
    match m {
        Message::Hello { .. } => "Hello",
        Message::Welcome { .. } => "Welcome",
        Message::Auth { .. } => "Auth",
        Message::Summary { .. } => "Summary",
        Message::Sync { .. } => "Sync",
        Message::Ack { .. } => "Ack",
        Message::Presence(_) => "Presence",
        Message::Ping { .. } => "Ping",
        Message::Pong { .. } => "Pong",
        Message::Revocations { .. } => "Revocations",
        Message::Error { .. } => "Error",
    }
}
