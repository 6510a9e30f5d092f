//! The sitesync domain model: types, validation, the Automerge document
//! schema, and every mutation and query as a pure function over a document.
//!
//! No IO, no async, no clock, no RNG: ids, time and Automerge actor ids come
//! in as parameters, documents come in as values. The engine (`sitesync-sync`)
//! loads and stores documents and syncs them; the daemon maps HTTP to these
//! functions.
//!
//! How data flows:
//!
//! ```text
//!  request ─▶ validate ─▶ write registers / quantity entries (crdt) ─▶ one commit
//!                                                                  (operation: who, device, when, op id)
//!  document ─▶ read registers (winner + conflicts) ─▶ Component / DrawingInfo views
//!                                                     └▶ progress: completion, status, rollups
//!  change log ─▶ history rows, operations list, an operation's writes ─▶ undo
//! ```
//!
//! Module map: [`schema`] (document layout, versions), `crdt` (the register
//! and quantity-entry encoding that gives docs/design.md's merge semantics),
//! [`project`] and [`drawing`] (the two document types), [`bulk`], [`import`], [`undo`],
//! [`history`], [`progress`], [`template`], [`operation`], [`ids`], [`time`],
//! [`error`].

mod crdt;

pub mod bulk;
pub mod drawing;
pub mod error;
pub mod history;
pub mod ids;
pub mod import;
pub mod operation;
pub mod progress;
pub mod project;
pub mod schema;
pub mod template;
pub mod time;
pub mod undo;

pub use bulk::{BulkOptions, BulkOutcome, InOrder, MAX_BULK_UPDATES, Spread, apply_bulk};
pub use drawing::{
    Component, ComponentPatch, DrawingDoc, MilestoneUpdate, MilestoneValue, MilestoneView, NewComponent,
};
pub use error::{ErrorKind, ModelError};
pub use history::{HistoryEntry, OperationInfo, component_history, operations};
pub use ids::{ComponentId, DeviceId, DrawingId, OperationId, ProjectId, TemplateId};
pub use operation::{OpMeta, OperationKind, WriteCtx};
pub use progress::{GroupBy, Progress, Status, Tally, rollup};
pub use project::{DrawingInfo, DrawingPatch, NewDrawing, NewProject, ProjectDoc, ProjectInfo, ProjectPatch};
pub use template::{MilestoneDef, NewTemplate, Template, WorkflowType};
pub use time::Timestamp;
pub use undo::UndoReport;

/// Re-exported so callers use the same Automerge version as the model.
pub use automerge;
