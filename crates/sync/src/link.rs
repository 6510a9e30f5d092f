//! The thin async layer: drives one [`Session`] over one WebSocket. All
//! protocol decisions are the session's; this module only moves frames,
//! forwards local change notifications and presence into the session, pings
//! on a timer, and reports what happened to an [`Observer`].
//!
//! Each connection runs in its own task and reads change notifications from
//! a broadcast channel, so a slow peer only slows itself: if it falls behind
//! the channel, it re-summarises instead of stalling the senders.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt as _};
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::presence::{self, Offer};
use crate::protocol::{self, MAX_FRAME, PresenceEntry};
use crate::session::{Event, Host, HostError, Incoming, Output, Session};
use crate::tls::{Channel, ClientTls, Trust};
use sitesync_model::automerge::ChangeHash;
use sitesync_model::automerge::sync::{Message as SyncMessage, State as SyncState};

/// A bidirectional stream of binary frames (a WebSocket, either side).
pub trait FrameSocket: Send {
    /// The next binary frame; `None` when the connection closed.
    fn recv(&mut self) -> impl Future<Output = Option<Result<Vec<u8>, String>>> + Send;
    fn send(&mut self, frame: Vec<u8>) -> impl Future<Output = Result<(), String>> + Send;
    /// Closes with a reason the other side can log.
    fn close(&mut self, reason: String) -> impl Future<Output = ()> + Send;
}

/// A WebSocket this side opened (to a relay or a LAN peer).
pub type ClientSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Most bytes one connection may have queued for writing. A connection
/// sends one frame at a time and waits for it to be written, so this only
/// bounds the worst case: with the read limit of one frame, a connection's
/// buffers stay under about three frames however slow its peer is.
pub const MAX_WRITE_BUFFER: usize = 2 * MAX_FRAME;

/// A connection's initial read buffer. tungstenite's default (128 KiB, and
/// as much again for writes) is held by every connection, idle or not: a
/// relay with 1,000 idle devices spent ~250 MB on buffers. Larger frames
/// still grow the buffer as they arrive.
pub const READ_BUFFER: usize = 8 * 1024;

/// The WebSocket limits both sides use: one frame is one message, and
/// every frame is written out at once (no write batching: a connection
/// sends one frame at a time anyway).
pub fn ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME))
        .max_frame_size(Some(MAX_FRAME))
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
}

/// [`ws_config`]'s limits on a WebSocket this side accepts.
pub fn limit_upgrade(ws: axum::extract::ws::WebSocketUpgrade) -> axum::extract::ws::WebSocketUpgrade {
    ws.max_message_size(MAX_FRAME)
        .max_frame_size(MAX_FRAME)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
}

/// `listener` with Nagle's algorithm off on every accepted connection (the
/// client side sets it in [`connect`]). Sync frames are small and come in
/// bursts; with Nagle on, a frame written while the previous one is not yet
/// acknowledged waits for the peer's delayed ACK (up to 40 ms on Linux).
pub fn without_nagle(
    listener: tokio::net::TcpListener,
) -> axum::serve::TapIo<tokio::net::TcpListener, fn(&mut tokio::net::TcpStream)> {
    use axum::serve::ListenerExt as _;
    fn set(tcp: &mut tokio::net::TcpStream) {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    }
    listener.tap_io(set as fn(&mut tokio::net::TcpStream))
}

/// Opens a WebSocket to `url` (`ws://`, or `wss://` with `tls` under
/// `trust`), and says what the handshake over it may rely on
/// ([`Channel`]).
pub async fn connect(
    url: &str,
    timeout: Duration,
    tls: &ClientTls,
    trust: Trust,
) -> Result<(ClientSocket, Channel), String> {
    let config = tls.config(trust);
    let connecting = tokio_tungstenite::connect_async_tls_with_config(
        url,
        Some(ws_config()),
        true,
        Some(tokio_tungstenite::Connector::Rustls(config)),
    );
    match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok((socket, _))) => {
            let channel = Channel {
                binding: crate::tls::client_binding(socket.get_ref()),
                server_trusted: trust == Trust::Roots,
            };
            Ok((socket, channel))
        }
        Ok(Err(e)) => Err(format!("cannot connect to {url}: {e}")),
        Err(_) => Err(format!("cannot connect to {url}: timed out after {timeout:?}")),
    }
}

impl FrameSocket for ClientSocket {
    async fn recv(&mut self) -> Option<Result<Vec<u8>, String>> {
        use tokio_tungstenite::tungstenite::Message as M;
        loop {
            return match self.next().await? {
                Ok(M::Binary(b)) => Some(Ok(b.to_vec())),
                // A text frame is not a protocol frame: let the session say so.
                Ok(M::Text(t)) => Some(Ok(t.as_bytes().to_vec())),
                Ok(M::Close(_)) => None,
                Ok(_) => continue,
                Err(e) => Some(Err(e.to_string())),
            };
        }
    }

    async fn send(&mut self, frame: Vec<u8>) -> Result<(), String> {
        SinkExt::send(
            self,
            tokio_tungstenite::tungstenite::Message::Binary(frame.into()),
        )
        .await
        .map_err(|e| e.to_string())
    }

    async fn close(&mut self, reason: String) {
        use tokio_tungstenite::tungstenite::protocol::{CloseFrame, frame::coding::CloseCode};
        let frame = CloseFrame {
            code: CloseCode::Policy,
            reason: truncate(reason).into(),
        };
        let _ = tokio_tungstenite::WebSocketStream::close(self, Some(frame)).await;
    }
}

impl FrameSocket for axum::extract::ws::WebSocket {
    async fn recv(&mut self) -> Option<Result<Vec<u8>, String>> {
        use axum::extract::ws::Message as M;
        loop {
            return match self.next().await? {
                Ok(M::Binary(b)) => Some(Ok(b.to_vec())),
                Ok(M::Text(t)) => Some(Ok(t.as_bytes().to_vec())),
                Ok(M::Close(_)) => None,
                Ok(_) => continue,
                Err(e) => Some(Err(e.to_string())),
            };
        }
    }

    async fn send(&mut self, frame: Vec<u8>) -> Result<(), String> {
        SinkExt::send(self, axum::extract::ws::Message::Binary(frame.into()))
            .await
            .map_err(|e| e.to_string())
    }

    async fn close(&mut self, reason: String) {
        use axum::extract::ws::{CloseFrame, Message, close_code};
        let frame = CloseFrame {
            code: close_code::POLICY,
            reason: truncate(reason).into(),
        };
        let _ = SinkExt::send(self, Message::Close(Some(frame))).await;
    }
}

/// A WebSocket close reason is limited to 123 bytes.
fn truncate(mut reason: String) -> String {
    if reason.len() > 120 {
        let mut cut = 120;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    reason
}

/// What a driver reports; every method has a no-op default.
pub trait Observer: Send + Sync {
    fn frame_in(&self, _bytes: usize) {}
    fn frame_out(&self, _bytes: usize) {}
    /// How long the session took to handle one frame.
    fn handled(&self, _took: Duration) {}
    /// The events of one session step, together and in order, so an
    /// observer that records them can do so in one write: a reconnect's
    /// summary acknowledges every document at once (2,001 on the
    /// benchmark's project, one durable write each took 6.7 s).
    fn events(&self, _events: &[Event]) {}
    /// A peer's presence entry was dropped: already heard (`Seen`, the
    /// normal end of a loop), the table is full (`Full`) or the
    /// connection's budget spent (`Limited`).
    fn presence_dropped(&self, _offer: Offer) {}
    /// Whether this observer wants [`Self::differing`] at every ping: it
    /// reads the heads of every shared document (a daemon's status shows
    /// it; a relay with thousands of connections does not ask).
    fn wants_differing(&self) -> bool {
        false
    }
    /// How far apart this side and the peer are, per shared project
    /// ([`Session::differing`]), at each ping once the handshake is done.
    fn differing(&self, _projects: &[crate::session::ProjectSync]) {}
    /// How long to wait before handling the next received frame (a relay
    /// keeps an organisation within its messages a second by pacing: the
    /// peer's TCP window then slows the peer, nothing is dropped).
    fn pace(&self) -> Duration {
        Duration::ZERO
    }
}

/// A presence entry on its way to other connections, with the connection it
/// came from (so it is not echoed back) and that connection's organisation
/// (so it only goes to connections of the same one).
#[derive(Clone, Debug)]
pub struct PresenceNote {
    pub from: u64,
    pub org: Arc<str>,
    pub entry: PresenceEntry,
}

/// A node's presence: its table ([`presence::Board`]) and the channel that
/// passes new entries to every connection. Only entries the table finds
/// new go out, so a loop of peers settles.
pub struct PresenceHub {
    board: std::sync::Mutex<presence::Board>,
    out: broadcast::Sender<PresenceNote>,
}

impl PresenceHub {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            board: std::sync::Mutex::new(presence::Board::default()),
            out: broadcast::channel(1024).0,
        })
    }

    pub fn subscribe(&self) -> broadcast::Receiver<PresenceNote> {
        self.out.subscribe()
    }

    fn board(&self) -> std::sync::MutexGuard<'_, presence::Board> {
        self.board.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `entry`, heard on connection `from` (0: made here) of organisation
    /// `org`: recorded and passed to every other connection when new.
    pub fn offer(&self, from: u64, org: &str, entry: PresenceEntry) -> Offer {
        let offer = self.board().offer(org, &entry, now_ms());
        if offer == Offer::New {
            let _ = self.out.send(PresenceNote {
                from,
                org: org.into(),
                entry,
            });
        }
        offer
    }

    /// The live entries of `project` heard from organisation `org`.
    pub fn live(&self, org: &str, project: Uuid) -> Vec<presence::Heard> {
        self.board().live(org, project.into(), now_ms())
    }
}

/// What a connection listens to besides its socket.
pub struct Feeds {
    /// Ids of documents whose changes just became durable here. `None`
    /// with [`Documents::PerOrg`]: the organisation's own feed is
    /// subscribed once it is known.
    pub changes: Option<broadcast::Receiver<Uuid>>,
    pub presence: broadcast::Receiver<PresenceNote>,
    /// This connection's id in [`PresenceNote::from`].
    pub id: u64,
}

/// Where a connection's documents live.
pub enum Documents {
    /// One host for every peer, its changes on [`Feeds::changes`] (a
    /// daemon: it holds its own organisation's projects only).
    One(Arc<dyn Host + Send + Sync>),
    /// One per organisation, opened once the peer's Hello is admitted (a
    /// relay: organisations share no namespace of project or document
    /// ids, so one that learns another's ids can neither claim nor see
    /// them).
    PerOrg(Arc<dyn OrgDocuments>),
}

/// A relay's documents, one space per organisation.
pub trait OrgDocuments: Send + Sync {
    /// `org`'s documents and the feed of their changes. `org` comes from
    /// an admitted certificate. `Err` closes the connection with the
    /// reason.
    fn open(&self, org: &str) -> Result<(Arc<dyn Host + Send + Sync>, broadcast::Receiver<Uuid>), String>;
}

/// The host of a connection whose organisation is not known yet: it holds
/// nothing. The session reaches documents only after the handshake, by
/// which time [`Documents::PerOrg`] has replaced it.
struct NoDocuments;

impl Host for NoDocuments {
    fn projects(&self) -> Result<Vec<Uuid>, HostError> {
        Ok(Vec::new())
    }
    fn may_share(&self, _org: &str, _project: Uuid) -> Result<bool, HostError> {
        Ok(false)
    }
    fn holds(&self, _org: &str, _project: Uuid) -> Result<bool, HostError> {
        Ok(false)
    }
    fn summary(&self, _project: Uuid) -> Result<Vec<(Uuid, Vec<ChangeHash>)>, HostError> {
        Ok(Vec::new())
    }
    fn project_of(&self, _doc: Uuid) -> Result<Option<Uuid>, HostError> {
        Ok(None)
    }
    fn heads(&self, _doc: Uuid) -> Result<Vec<ChangeHash>, HostError> {
        Ok(Vec::new())
    }
    fn generate(&self, _doc: Uuid, _state: &mut SyncState) -> Result<Option<SyncMessage>, HostError> {
        Err(not_yet())
    }
    fn receive(
        &self,
        _ctx: &Incoming<'_>,
        _state: &mut SyncState,
        _message: SyncMessage,
    ) -> Result<Option<Vec<ChangeHash>>, HostError> {
        Err(not_yet())
    }
    fn load_state(&self, _peer: Uuid, _doc: Uuid) -> Result<Option<Vec<u8>>, HostError> {
        Ok(None)
    }
}

fn not_yet() -> HostError {
    HostError::Storage {
        detail: "no documents before the handshake".into(),
    }
}

/// The next change notification; never, without a feed.
async fn next_change(
    changes: &mut Option<broadcast::Receiver<Uuid>>,
) -> Result<Uuid, broadcast::error::RecvError> {
    match changes {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Timing of a connection.
#[derive(Clone, Copy, Debug)]
pub struct LinkTiming {
    pub ping_every: Duration,
    /// No frame for this long (pings included) and the peer is gone.
    pub idle_timeout: Duration,
    /// The handshake must be done this long after the socket opened: a
    /// socket that never sends its Hello gives its slot back.
    pub handshake_timeout: Duration,
}

impl LinkTiming {
    /// Both binaries' timing from their ping interval: gone after six
    /// silent pings, the handshake done within two (at least 2 s each).
    pub fn from_ping(ping_every: Duration) -> Self {
        Self {
            ping_every,
            idle_timeout: (ping_every * 6).max(Duration::from_secs(2)),
            handshake_timeout: (ping_every * 2).max(Duration::from_secs(2)),
        }
    }
}

impl Default for LinkTiming {
    fn default() -> Self {
        Self::from_ping(Duration::from_secs(5))
    }
}

/// The wall clock in ms since the epoch: what the edges pass the pure
/// modules as "now".
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// How a connection ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Ended {
    /// The protocol error code when one side refused (`unauthorized`,
    /// `out_of_scope`, ...); `None` when the transport ended it (the peer
    /// went away, a cut, an idle timeout, shutdown).
    pub code: Option<String>,
    /// A sentence for logs and `last_error`.
    pub reason: String,
}

impl Ended {
    fn transport(reason: impl Into<String>) -> Self {
        Self {
            code: None,
            reason: reason.into(),
        }
    }
}

/// Runs `session` over `socket` until either side closes; returns why.
pub async fn drive<S: FrameSocket>(
    mut socket: S,
    mut session: Session,
    documents: Documents,
    mut feeds: Feeds,
    observer: Arc<dyn Observer>,
    presence: Arc<PresenceHub>,
    timing: LinkTiming,
) -> Ended {
    // Session steps do storage and Automerge work: keep them off the
    // async worker's hot path.
    let step = |session: &mut Session, f: &mut dyn FnMut(&mut Session) -> Vec<Output>| {
        tokio::task::block_in_place(|| f(session))
    };
    let (mut host, mut per_org): (Arc<dyn Host + Send + Sync>, _) = match documents {
        Documents::One(host) => (host, None),
        Documents::PerOrg(orgs) => (Arc::new(NoDocuments), Some(orgs)),
    };
    let mut pending = step(&mut session, &mut |s| s.start());
    // What this connection may pass on of the peer's presence.
    let mut budget = presence::budget(now_ms());
    let mut ticker = tokio::time::interval(timing.ping_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let handshake_deadline = tokio::time::sleep(timing.handshake_timeout);
    tokio::pin!(handshake_deadline);
    loop {
        let mut outputs = std::mem::take(&mut pending);
        // Events first, all of one step at once: observers record state
        // (status, acknowledgements), and a Close below ends the loop.
        // A presence entry goes on (to the observer and to every other
        // connection) only when this node has not heard it before.
        let events: Vec<Event> = outputs
            .extract_if(.., |o| matches!(o, Output::Event(_)))
            .filter_map(|o| match o {
                Output::Event(Event::Presence(entry)) => {
                    let org = session.peer().map_or("", |p| p.org.as_str());
                    let offer = if budget.take(now_ms()) {
                        presence.offer(feeds.id, org, entry.clone())
                    } else {
                        Offer::Limited
                    };
                    match offer {
                        Offer::New => Some(Event::Presence(entry)),
                        dropped => {
                            observer.presence_dropped(dropped);
                            None
                        }
                    }
                }
                Output::Event(e) => Some(e),
                _ => None,
            })
            .collect();
        if !events.is_empty() {
            tokio::task::block_in_place(|| observer.events(&events));
        }
        for output in outputs {
            match output {
                Output::Send(m) => {
                    let frame = protocol::encode(&m);
                    observer.frame_out(frame.len());
                    if let Err(e) = socket.send(frame).await {
                        return Ended::transport(format!("send failed: {e}"));
                    }
                }
                // Handled above, before the sends.
                Output::Event(_) => {}
                Output::Close { code, reason } => {
                    socket.close(reason.clone()).await;
                    return Ended {
                        code: Some(code),
                        reason,
                    };
                }
            }
        }
        tokio::select! {
            frame = socket.recv() => match frame {
                None => return Ended::transport("closed by the peer"),
                Some(Err(e)) => return Ended::transport(format!("connection failed: {e}")),
                Some(Ok(bytes)) => {
                    let wait = observer.pace();
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                    last_heard = Instant::now();
                    observer.frame_in(bytes.len());
                    let started = Instant::now();
                    pending = step(&mut session, &mut |s| s.handle(&bytes, now_ms(), host.as_ref()));
                    observer.handled(started.elapsed());
                    // A relay opens the organisation's documents once the
                    // Hello is admitted, before the Auth that reaches them.
                    if let Some(org) = session.admitted_org()
                        && let Some(orgs) = per_org.take()
                    {
                        match tokio::task::block_in_place(|| orgs.open(org)) {
                            Ok((opened, changes)) => {
                                host = opened;
                                feeds.changes = Some(changes);
                            }
                            Err(reason) => {
                                pending = vec![
                                    Output::Send(protocol::Message::Error {
                                        code: "unavailable".into(),
                                        message: reason.clone(),
                                        fatal: true,
                                    }),
                                    Output::Close {
                                        code: "unavailable".into(),
                                        reason,
                                    },
                                ];
                            }
                        }
                    }
                }
            },
            changed = next_change(&mut feeds.changes) => match changed {
                Ok(doc) => pending = step(&mut session, &mut |s| s.doc_changed(doc, host.as_ref())),
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    pending = step(&mut session, &mut |s| s.resync(host.as_ref()));
                }
                Err(broadcast::error::RecvError::Closed) => return Ended::transport("shutting down"),
            },
            note = feeds.presence.recv() => match note {
                Ok(note) if note.from != feeds.id => {
                    pending = step(&mut session, &mut |s| s.presence(&note.org, note.entry.clone(), host.as_ref()));
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return Ended::transport("shutting down"),
            },
            () = &mut handshake_deadline, if session.peer().is_none() => {
                let reason = format!("no handshake within {:?}", timing.handshake_timeout);
                socket.close(reason.clone()).await;
                return Ended::transport(reason);
            }
            _ = ticker.tick() => {
                if last_heard.elapsed() > timing.idle_timeout {
                    socket.close("idle timeout".into()).await;
                    return Ended::transport(format!("no frame for {:?}", timing.idle_timeout));
                }
                pending = session.ping(now_ms());
                if session.peer().is_some() && observer.wants_differing() {
                    match tokio::task::block_in_place(|| session.differing(host.as_ref())) {
                        Ok(projects) => observer.differing(&projects),
                        Err(e) => tracing::debug!(error = %e, "comparing with the peer failed; tried again at the next ping"),
                    }
                }
            }
        }
    }
}

/// Resolves on SIGINT or SIGTERM: both binaries finish in-flight work and
/// flush their store on either.
pub async fn shutdown_signal() {
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
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down: finishing in-flight work and flushing the store");
}

/// The delay before reconnect attempt `attempt` (1-based): `min` doubling
/// per attempt, capped at `max`, plus up to a quarter more of jitter
/// (`jitter` in [0, 1), from the caller's RNG) so devices cut off together
/// do not all return at the same instant.
pub fn backoff(attempt: u32, min: Duration, max: Duration, jitter: f64) -> Duration {
    let doubling = 2f64.powi(attempt.saturating_sub(1).min(30) as i32);
    let base = (min.as_secs_f64() * doubling).min(max.as_secs_f64());
    let with_jitter = base * (1.0 + 0.25 * jitter.clamp(0.0, 1.0));
    Duration::from_secs_f64(with_jitter.min(max.as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_to_a_thirty_second_cap() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(30));
        let secs = |a, j| backoff(a, min, max, j).as_secs_f64();
        assert_eq!(secs(1, 0.0), 1.0);
        assert_eq!(secs(2, 0.0), 2.0);
        assert_eq!(secs(5, 0.0), 16.0);
        assert_eq!(secs(6, 0.0), 30.0);
        assert_eq!(secs(1000, 0.99), 30.0);
        assert!((secs(3, 0.5) - 4.5).abs() < 1e-9, "jitter adds up to a quarter");
    }
}
