//! The event stream's memory: every event gets an increasing id and is kept
//! in a bounded ring so a client reconnecting with `Last-Event-ID` gets what
//! it missed; a client further behind than the ring is told
//! `resync.required`. Live events fan out through a broadcast channel.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use sitesync_model::ProjectId;
use tokio::sync::broadcast;

/// One event.
#[derive(Clone, Debug)]
pub struct Event {
    pub id: u64,
    /// `component.updated`, `progress.updated`, ...
    pub kind: &'static str,
    /// The project it concerns, for `?project_id=` filtering.
    pub project_id: Option<ProjectId>,
    /// The payload as JSON text, serialized once when published: the ring
    /// and every subscriber share it. (Kept as a `serde_json::Value`, each
    /// event was built as a tree, deep-copied into the ring and dropped
    /// again; a clone publishes one per component, 6% of its time.)
    pub data: Arc<str>,
}

/// Where a resuming subscriber starts.
pub struct Resume {
    /// Events after the client's last one, still held.
    pub backlog: Vec<Event>,
    /// The client's last event is no longer held (or never was).
    pub resync_required: bool,
    pub live: broadcast::Receiver<Event>,
}

pub struct EventBus {
    ring: Mutex<Ring>,
    live: broadcast::Sender<Event>,
    capacity: usize,
}

struct Ring {
    events: VecDeque<Event>,
    next_id: u64,
}

impl EventBus {
    /// `first_id` should exceed any id a previous run handed out (the daemon
    /// seeds it from the clock), so ids keep increasing across restarts.
    pub fn new(capacity: usize, first_id: u64) -> Self {
        Self {
            ring: Mutex::new(Ring {
                events: VecDeque::with_capacity(capacity.min(4096)),
                next_id: first_id.max(1),
            }),
            live: broadcast::channel(1024).0,
            capacity,
        }
    }

    pub fn publish(&self, kind: &'static str, project_id: Option<ProjectId>, data: impl Serialize) {
        let data = match serde_json::to_string(&data) {
            Ok(text) => Arc::from(text),
            // Our payloads are maps with string keys: this does not happen,
            // and an event lost is better than a write failed.
            Err(e) => {
                tracing::error!(kind, error = %e, "cannot serialize an event; dropped");
                return;
            }
        };
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let event = Event {
            id: ring.next_id,
            kind,
            project_id,
            data,
        };
        ring.next_id += 1;
        if ring.events.len() == self.capacity {
            ring.events.pop_front();
        }
        ring.events.push_back(event.clone());
        // Subscribe happens under the same lock, so no event falls between
        // a subscriber's backlog and its live stream.
        let _ = self.live.send(event);
    }

    /// Subscribes, resuming after `last_id` when given.
    pub fn subscribe(&self, last_id: Option<u64>) -> Resume {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let live = self.live.subscribe();
        let Some(last) = last_id else {
            return Resume {
                backlog: Vec::new(),
                resync_required: false,
                live,
            };
        };
        let oldest_held = ring.events.front().map_or(ring.next_id, |e| e.id);
        // Ids we never issued, or events already dropped from the ring.
        let resync_required = last >= ring.next_id || last + 1 < oldest_held;
        let backlog = if resync_required {
            Vec::new()
        } else {
            ring.events.iter().filter(|e| e.id > last).cloned().collect()
        };
        Resume {
            backlog,
            resync_required,
            live,
        }
    }

    /// The id the next event will get.
    pub fn next_id(&self) -> u64 {
        self.ring.lock().unwrap_or_else(|p| p.into_inner()).next_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_replays_what_was_missed_or_asks_for_resync() {
        let bus = EventBus::new(3, 100);
        for i in 0..5 {
            bus.publish("x", None, serde_json::json!(i));
        }
        // Held: 102, 103, 104.
        let r = bus.subscribe(Some(102));
        assert_eq!(r.backlog.iter().map(|e| e.id).collect::<Vec<_>>(), vec![103, 104]);
        assert!(!r.resync_required);
        let r = bus.subscribe(Some(101));
        assert_eq!(r.backlog.len(), 3);
        assert!(!r.resync_required, "101 is just before the oldest held event");
        assert!(bus.subscribe(Some(100)).resync_required, "event 101 was dropped");
        assert!(bus.subscribe(Some(999)).resync_required, "an id from another run");
        assert!(bus.subscribe(Some(104)).backlog.is_empty());
    }
}
