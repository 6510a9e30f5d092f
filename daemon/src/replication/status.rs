//! What `GET /v1/sync/status` shows of each peer, and the observer that
//! keeps it current from each connection's events.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use sitesync_model::Timestamp;
use sitesync_sync::link::Observer;
use sitesync_sync::session::{Event, PeerInfo, ProjectSync};
use uuid::Uuid;

use super::*;

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
    /// How this device came to know it: "configured" (`--relay`, `--peer`
    /// or `POST /v1/sync/peers`) or "inbound" (it connected to our
    /// `--peer-listen`).
    pub found: &'static str,
    /// Each project both sides share that is held here, with how many of
    /// its documents differ from what the peer was last heard to hold (a
    /// change counts until the peer acknowledges it): 0 everywhere means
    /// the peer has everything this device has, and the reverse. Compared
    /// at every ping while connected; empty before the first comparison.
    pub shared_projects: Vec<SharedProject>,
    /// When `shared_projects` was compared.
    pub compared_at: Option<Timestamp>,
}

/// One shared project in a peer's status.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct SharedProject {
    pub project_id: Uuid,
    /// Documents of the project (its own and its drawings') held here.
    pub documents: usize,
    /// Documents whose heads differ between this device and the peer,
    /// counting those only one side holds.
    pub documents_differing: usize,
}

impl PeerView {
    /// A peer not connected yet, `found` as [`Self::found`] says.
    pub(super) fn new(peer_id: Uuid, url: Option<String>, kind: &'static str, found: &'static str) -> Self {
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
            outbound: found != "inbound",
            found,
            shared_projects: Vec::new(),
            compared_at: None,
        }
    }
}

pub(super) fn quality(latency_ms: i64) -> &'static str {
    match latency_ms {
        ..100 => "excellent",
        100..300 => "good",
        300..1000 => "fair",
        _ => "poor",
    }
}

/// Turns one connection's events into peer status, pending and presence.
pub(super) struct PeerObserver {
    pub(super) repl: Arc<Replication>,
    /// The status entry (an inbound peer gets one when it is admitted).
    pub(super) peer_id: Mutex<Option<Uuid>>,
    pub(super) connected: std::sync::atomic::AtomicBool,
}

impl Observer for PeerObserver {
    fn frame_in(&self, _bytes: usize) {
        self.repl.counters.frames_in.inc();
    }

    fn frame_out(&self, _bytes: usize) {
        self.repl.counters.frames_out.inc();
    }

    fn wants_differing(&self) -> bool {
        true
    }

    fn differing(&self, projects: &[ProjectSync]) {
        let Some(id) = *self.peer_id.lock().unwrap_or_else(|p| p.into_inner()) else {
            return;
        };
        let shared = projects
            .iter()
            .map(|p| SharedProject {
                project_id: p.project,
                documents: p.documents,
                documents_differing: p.differing,
            })
            .collect();
        self.repl.update(id, |v| {
            v.shared_projects = shared;
            v.compared_at = Some(now());
        });
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
                                view: PeerView::new(id, None, "lan", "inbound"),
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

pub(super) fn connected(v: &mut PeerView, peer: &PeerInfo) {
    v.state = "connected";
    v.name = Some(peer.name.clone());
    v.device_id = Some(peer.device);
    v.kind = if peer.relay { "relay" } else { "lan" };
    v.last_connected_at = Some(now());
    v.reconnect_attempts = 0;
    v.next_retry_at = None;
    v.last_error = None;
}
