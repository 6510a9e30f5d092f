//! Presence: this device's heartbeats, and who is here from every peer.

use std::sync::atomic::Ordering;

use serde::Serialize;
use serde_json::json;
use sitesync_model::{ProjectId, Timestamp};
use sitesync_sync::presence::Offer;
use sitesync_sync::protocol::PresenceEntry;
use uuid::Uuid;

use super::*;

/// Presence expires this long after the last heartbeat.
pub const PRESENCE_TTL_MS: i64 = sitesync_sync::presence::TTL_MS;

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

pub(super) fn activity_name(a: u8) -> &'static str {
    if a == 1 { "editing" } else { "viewing" }
}

impl Replication {
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
    pub(super) fn publish_presence(&self, entry: &PresenceEntry) {
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
