//! What an operation is: the context every write carries (who, which device,
//! when, which operation, why) and the commit message that records it in the
//! Automerge change log.
//!
//! Automerge's own commit time is left at 0 by the Rust crate unless it is
//! set, so every commit the model makes goes through [`WriteCtx::commit_options`].

use automerge::transaction::CommitOptions;
use serde::{Deserialize, Serialize};

use crate::ids::{DeviceId, OperationId};
use crate::time::Timestamp;

/// What kind of user action an operation was; shown in the operations list.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationKind {
    ProjectCreate,
    ProjectUpdate,
    ProjectDelete,
    TemplateCreate,
    DrawingCreate,
    DrawingUpdate,
    DrawingDelete,
    ComponentCreate,
    ComponentUpdate,
    ComponentDelete,
    ComponentRestore,
    MilestoneUpdate,
    BulkUpdate,
    Import,
    Undo,
}

/// The context of one write: passed into every mutation, never read from the
/// environment, so tests control time and identity.
#[derive(Clone, Debug, PartialEq)]
pub struct WriteCtx {
    /// The acting person, as the local app declares it.
    pub user: String,
    /// The device the write is made on.
    pub device: DeviceId,
    /// The operation this write belongs to; shared by every document an
    /// operation touches.
    pub op: OperationId,
    pub kind: OperationKind,
    /// Wall-clock time of the write (the daemon passes its hybrid clock).
    pub now: Timestamp,
    /// Why, as the user said it (e.g. "daily report").
    pub reason: Option<String>,
    /// For an undo: the operation it undoes.
    pub undoes: Option<OperationId>,
}

impl WriteCtx {
    /// A context with no reason and no undo target.
    pub fn new(
        user: impl Into<String>,
        device: DeviceId,
        op: OperationId,
        kind: OperationKind,
        now: Timestamp,
    ) -> Self {
        Self {
            user: user.into(),
            device,
            op,
            kind,
            now,
            reason: None,
            undoes: None,
        }
    }

    /// The same context with a reason.
    pub fn with_reason(mut self, reason: Option<String>) -> Self {
        self.reason = reason;
        self
    }

    /// The commit message and time recording this operation.
    pub(crate) fn commit_options(&self, count: usize) -> CommitOptions {
        let meta = OpMeta {
            op: self.op,
            kind: self.kind,
            user: self.user.clone(),
            device: self.device,
            reason: self.reason.clone(),
            undoes: self.undoes,
            count,
        };
        CommitOptions::default()
            .with_message(meta.encode())
            .with_time(self.now.millis())
    }
}

/// The commit message of every change sitesync makes: JSON, so a human
/// reading the raw change log understands it too.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpMeta {
    pub op: OperationId,
    pub kind: OperationKind,
    pub user: String,
    pub device: DeviceId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undoes: Option<OperationId>,
    /// How many items (updates, rows, fields) this commit applied.
    pub count: usize,
}

impl OpMeta {
    pub(crate) fn encode(&self) -> String {
        serde_json::to_string(self).expect("OpMeta serializes")
    }

    /// Parses a commit message; `None` for changes not made by sitesync.
    pub fn decode(message: &str) -> Option<Self> {
        serde_json::from_str(message).ok()
    }
}
