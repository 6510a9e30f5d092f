//! The daemon's domain operations: each runs the model's pure functions on
//! documents from the repository, makes the result durable, keeps the
//! in-memory project index current, and publishes events.
//!
//! Synchronous on purpose: Automerge work is CPU-bound, so the HTTP layer
//! calls these on blocking threads. One lock (`state`) serialises writes and
//! index updates: a write indexes what it wrote before it returns. Another
//! device's changes reach the service by the repository's change feed
//! (`received`): queued as they become durable, indexed by the indexer
//! thread.
//!
//! By capability: `projects` (projects, templates, drawings, progress),
//! `components` (single writes and bulk), `history` (operations list,
//! undo, a component's history), `indexing` (building, refreshing and
//! saving the project index; events), `received` (another device's
//! changes on their way into the index), `clock` (the hybrid clock). Work outside
//! the service that must plan and write under one lock (an import batch)
//! holds a project with [`Service::hold`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sitesync_model::{
    ComponentId, DeviceId, DrawingId, ModelError, OperationId, OperationKind, ProjectId, Timestamp, WriteCtx,
};
use sitesync_sync::host::{RepoHost, binding_records, project_record};
use sitesync_sync::session::Host as _;
use sitesync_sync::{Repo, RepoError, keys};
use uuid::Uuid;

use crate::events::EventBus;
use crate::index::{Histories, ProjectIndex};
use crate::oplog::OpLog;

mod clock;
mod components;
mod history;
mod indexing;
mod projects;
mod received;
#[cfg(test)]
mod tests;

pub use clock::Clock;
pub use history::UndoView;
use indexing::Saving;
pub use projects::{DrawingView, ProjectView};
use received::Received;

/// Why a service operation failed. The API maps each variant to its HTTP
/// answer in one place (`api::error`); nothing below the API knows HTTP.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The model refused the operation (invalid, a state conflict, a
    /// missing template or milestone, too large, a damaged document); its
    /// `code()` and `field()` say what.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// No such project, drawing, component or job here (or not yet: a
    /// document still syncing).
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    /// A field the request must carry is absent.
    #[error("{field} is required")]
    Missing { field: &'static str },
    /// A request value the model does not check (an export column) is not
    /// one this daemon knows.
    #[error("{message}")]
    Invalid { field: String, message: String },
    /// The store failed, or holds a damaged record (`RepoError::Store`).
    #[error(transparent)]
    Store(sitesync_sync::StoreError),
    /// The sync bookkeeping could not be read.
    #[error("sync bookkeeping unavailable: {detail}")]
    Unavailable { detail: String },
    /// A file of the daemon's own (an export, an upload) failed.
    #[error("{doing} failed: {source}")]
    Io {
        doing: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl ServiceError {
    pub fn not_found(what: &'static str, id: impl std::fmt::Display) -> Self {
        Self::NotFound {
            what,
            id: id.to_string(),
        }
    }
}

impl From<RepoError> for ServiceError {
    fn from(e: RepoError) -> Self {
        match e {
            RepoError::Model(e) => Self::Model(e),
            RepoError::NotFound { what, id } => Self::not_found(what, id),
            RepoError::Store(e) => Self::Store(e),
        }
    }
}

/// The result of a service operation.
pub type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// Metadata record marking a project (so listing projects needs no scan of
/// every document).

#[derive(Default)]
struct State {
    index: HashMap<ProjectId, ProjectIndex>,
    history: Histories,
}

/// The daemon's domain service.
pub struct Service {
    repo: Arc<Repo>,
    device: DeviceId,
    /// The organisation new projects belong to (the sync token's), once known.
    org: std::sync::OnceLock<String>,
    /// Shared with [`Received`], which moves it past received changes.
    clock: Arc<Clock>,
    state: Mutex<State>,
    /// Held by [`Self::save_index`], so a drawing's records land in the
    /// order they were taken (an older one written last would cost a
    /// re-read at the next start); it also remembers whether the last
    /// saves found a sync taking documents in.
    saving: Mutex<Saving>,
    /// Another device's changes, durable but not yet indexed. A sync
    /// connection applies a document and goes on to the next while the
    /// indexer reads the changed views (a third of a cold clone's work):
    /// two cores instead of one.
    received: Arc<Received>,
    /// The operations lists' records, told about every durable change by
    /// the repository; apart from `state`, so a listing never waits on (or
    /// holds up) writes.
    oplog: Arc<OpLog>,
    pub events: EventBus,
}

/// A project held under the service's lock ([`Service::hold`]).
pub struct Held<'s> {
    service: &'s Service,
    state: std::sync::MutexGuard<'s, State>,
    pid: ProjectId,
}

impl Held<'_> {
    /// The held project's index, current with every write of this device
    /// and with received changes as far as the indexer has come (built
    /// again if a failed refresh dropped it).
    pub fn index(&mut self) -> Result<&mut ProjectIndex> {
        self.service.index(&mut self.state, self.pid)
    }

    /// The context of a write by `user` as part of operation `op`.
    pub fn ctx(&self, user: &str, op: OperationId, kind: OperationKind) -> WriteCtx {
        WriteCtx::new(user, self.service.device, op, kind, self.service.clock.now())
    }

    /// One durable write (see [`Repo::write`]).
    pub fn write<T>(
        &self,
        f: impl FnOnce(&mut sitesync_sync::Tx<'_>) -> Result<T, RepoError>,
    ) -> Result<T, RepoError> {
        self.service.repo.write(f)
    }

    /// Writes the records binding a new document `doc` to the held
    /// project, inside a write.
    pub fn bind(&self, tx: &mut sitesync_sync::Tx<'_>, doc: Uuid) {
        self.service.bind(tx, self.pid, doc);
    }

    /// The per-document work spreader of the repository.
    pub fn workers(&self) -> sitesync_sync::Workers {
        self.service.repo.workers()
    }

    /// After a write: indexes the drawings it `created` and the components
    /// it `touched`, and publishes their events.
    pub fn refreshed(&mut self, created: &[DrawingId], touched: &[(DrawingId, ComponentId)]) -> Result<()> {
        let (service, pid) = (self.service, self.pid);
        service.refresh_drawing_entries(&mut self.state, pid, created)?;
        service.refresh_components(&mut self.state, pid, touched, "local")
    }
}

fn new_id() -> Uuid {
    Uuid::new_v4()
}

impl Service {
    /// A service over `repo`, subscribing the operations list and the
    /// index of received changes to its change feed. The repository should
    /// report commits ([`sitesync_sync::RepoConfig::report_commits`]):
    /// without them the operations list reads each changed document, and
    /// received changes neither move the clock nor name their origin.
    pub fn new(repo: Repo, device: DeviceId, clock: Clock, events: EventBus) -> Self {
        let oplog = Arc::new(OpLog::default());
        repo.subscribe(oplog.clone());
        let clock = Arc::new(clock);
        let received = Arc::new(Received::new(clock.clone(), device));
        repo.subscribe(received.clone());
        Self {
            repo: Arc::new(repo),
            device,
            org: std::sync::OnceLock::new(),
            clock,
            state: Mutex::new(State::default()),
            saving: Mutex::default(),
            received,
            oplog,
            events,
        }
    }

    pub fn device(&self) -> DeviceId {
        self.device
    }

    /// The device clock's time (never repeats, never goes back).
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    pub fn repo(&self) -> &Arc<Repo> {
        &self.repo
    }

    /// Sets the organisation new projects belong to (once, at start).
    pub fn set_org(&self, org: &str) {
        let _ = self.org.set(org.to_owned());
    }

    /// This device's organisation ("" until a token names it).
    pub fn org(&self) -> &str {
        self.org.get().map_or("", String::as_str)
    }

    /// The record listing `pid` as this device's organisation's.
    fn project_record(&self, pid: ProjectId) -> (String, Vec<u8>) {
        project_record(pid.0, self.org.get().map_or("", String::as_str))
    }

    /// The sync bookkeeping records binding a new document to its project.
    fn bind(&self, tx: &mut sitesync_sync::Tx<'_>, pid: ProjectId, doc: Uuid) {
        let project = (doc == pid.0).then(|| self.project_record(pid));
        for (k, v) in binding_records(pid.0, doc).into_iter().chain(project) {
            tx.put_meta(&k, &v);
        }
    }

    /// Brings a store an earlier daemon wrote up to date, once per
    /// record (a second start finds nothing to do):
    /// - a project from before sync existed gets its sync bindings
    ///   (`bind/`, `pdoc/`, `proj/`), so peers can be offered it;
    /// - the `project/<id>` record an earlier daemon kept beside the host's
    ///   `proj/<id>`, both meaning "this project is held here", is merged
    ///   into `proj/` and removed.
    pub fn migrate_store(&self) -> Result<()> {
        let _state = self.lock();
        let host = RepoHost::new(self.repo.clone());
        let store = self.repo.store();
        let legacy: Vec<ProjectId> = store
            .meta_names(keys::LEGACY_PROJECT)
            .map_err(RepoError::from)?
            .into_iter()
            .filter_map(|name| name.parse().ok())
            .collect();
        for pid in legacy {
            let bound = host.project_of(pid.0).map_err(|e| ServiceError::Unavailable {
                detail: e.to_string(),
            })?;
            if bound.is_none() {
                let drawings = self.repo.read_project(pid, |p| p.drawings())??;
                let mut records = binding_records(pid.0, pid.0);
                records.push(self.project_record(pid));
                for d in drawings {
                    records.extend(binding_records(pid.0, d.id.0));
                }
                // One durable batch per project.
                store.append(&[], &records).map_err(RepoError::from)?;
            } else if host
                .project_org(pid.0)
                .map_err(|e| ServiceError::Unavailable {
                    detail: e.to_string(),
                })?
                .is_none()
            {
                store
                    .put_metas(&[self.project_record(pid)])
                    .map_err(RepoError::from)?;
            }
            // `proj/` is durable first: a crash here leaves only the old
            // record, which the next start removes.
            store
                .delete_meta(&keys::legacy_project(pid.0))
                .map_err(RepoError::from)?;
        }
        Ok(())
    }

    /// Takes the lock that orders writes and index updates.
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ctx(&self, user: &str, kind: OperationKind) -> WriteCtx {
        WriteCtx::new(user, self.device, OperationId(new_id()), kind, self.clock.now())
    }

    /// Holds project `pid` under the service's lock with its index
    /// current, for work outside the service that plans against the index
    /// and then writes (an import batch, an export's outline): the plan and
    /// the write see the same state, and nothing else writes in between.
    pub fn hold(&self, pid: ProjectId) -> Result<Held<'_>> {
        let mut state = self.lock();
        self.index(&mut state, pid)?;
        Ok(Held {
            service: self,
            state,
            pid,
        })
    }

    /// A service over an in-memory store whose repository reports
    /// commits, as the daemon's does: what unit tests build on.
    #[cfg(test)]
    pub(crate) fn in_memory(clock: Clock, events: EventBus) -> Self {
        let config = sitesync_sync::RepoConfig {
            report_commits: true,
            ..sitesync_sync::RepoConfig::default()
        };
        let store = sitesync_sync::DocStore::new(sitesync_sync::MemBackend::default());
        let repo = Repo::new(store, sitesync_model::automerge::ActorId::random(), config);
        Self::new(repo, DeviceId(new_id()), clock, events)
    }

    /// How many documents are in memory (for health and metrics).
    pub fn documents_loaded(&self) -> usize {
        self.repo.loaded()
    }
}
