//! The daemon's domain operations: each runs the model's pure functions on
//! documents from the repository, makes the result durable, keeps the
//! in-memory project index current, and publishes events.
//!
//! Synchronous on purpose: Automerge work is CPU-bound, so the HTTP layer
//! calls these on blocking threads. One lock (`state`) serialises writes and
//! index updates, so the index always matches what is durable when the
//! lock is taken: another device's changes are applied without it and
//! queued ([`Remote`]), then indexed by the indexer thread or by whoever
//! takes the lock first ([`Service::lock`] drains the queue).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use serde::Serialize;
use serde_json::json;
use sitesync_model::OpMeta;
use sitesync_model::automerge::ChangeHash;
use sitesync_model::bulk::BulkOutcome;
use sitesync_model::{
    BulkOptions, Component, ComponentId, ComponentPatch, DeviceId, DrawingDoc, DrawingId, DrawingInfo,
    DrawingPatch, GroupBy, HistoryEntry, MilestoneUpdate, ModelError, NewComponent, NewDrawing, NewProject,
    NewTemplate, OperationId, OperationInfo, OperationKind, Progress, ProjectDoc, ProjectId, ProjectPatch,
    Status, Template, TemplateId, Timestamp, UndoReport, WriteCtx, apply_bulk,
};
use sitesync_sync::host::{RepoHost, binding_records, project_record};
use sitesync_sync::session::{Host as _, HostError};
use sitesync_sync::{Doc, Repo, RepoError};
use uuid::Uuid;

use crate::events::EventBus;
use crate::index::{ComponentQuery, HistoryIndex, ProjectIndex};
use crate::oplog::OpLog;
use crate::paging::{Page, Paged};

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
const PROJECT_META: &str = "project/";

/// The device's hybrid-logical clock: never behind the wall clock, never
/// repeating or going back, so one device's writes are strictly ordered.
pub struct Clock {
    last: AtomicI64,
    wall: fn() -> i64,
}

impl Clock {
    pub fn system() -> Self {
        Self::with_source(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0)
        })
    }

    /// A clock reading time from `wall` (tests pass a fixed one).
    pub fn with_source(wall: fn() -> i64) -> Self {
        Self {
            last: AtomicI64::new(0),
            wall,
        }
    }

    /// Moves the clock past a time seen in another device's change, so this
    /// device's next write orders after everything it has seen.
    pub fn observe(&self, seen: Timestamp) {
        self.last.fetch_max(seen.0, Ordering::SeqCst);
    }

    pub fn now(&self) -> Timestamp {
        let wall = (self.wall)();
        let prev = self
            .last
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
                Some(wall.max(last + 1))
            })
            .expect("closure always returns Some");
        Timestamp(wall.max(prev + 1))
    }
}

/// A project as the API returns it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ProjectView {
    pub id: ProjectId,
    pub name: String,
    pub code: Option<String>,
    pub completion_percent: f64,
    pub status: Status,
    pub component_count: usize,
    pub drawing_count: usize,
    pub deleted: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A drawing as the API returns it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct DrawingView {
    #[serde(flatten)]
    pub info: DrawingInfo,
    pub component_count: usize,
    pub completion_percent: f64,
}

/// The answer to an undo.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct UndoView {
    pub operation_id: OperationId,
    #[serde(flatten)]
    pub report: UndoReport,
}

#[derive(Default)]
struct State {
    index: HashMap<ProjectId, ProjectIndex>,
    history: HashMap<DrawingId, HistoryIndex>,
}

/// The daemon's domain service.
pub struct Service {
    repo: Arc<Repo>,
    device: DeviceId,
    /// The organisation new projects belong to (the sync token's), once known.
    org: std::sync::OnceLock<String>,
    clock: Clock,
    state: Mutex<State>,
    /// Held by [`Self::save_index`], so a drawing's records land in the
    /// order they were taken (an older one written last would cost a
    /// re-read at the next start).
    saving: Mutex<()>,
    /// Another device's changes, applied but not yet indexed. A sync
    /// connection applies a document and goes on to the next while the
    /// indexer reads the changed views (a third of a cold clone's work):
    /// two cores instead of one (see [`Self::apply_remote`]).
    remote: Arc<RemoteQueue>,
    /// The operations lists' records, told about every durable change by
    /// the repository; apart from `state`, so a listing never waits on (or
    /// holds up) writes.
    oplog: Arc<OpLog>,
    pub events: EventBus,
}

/// Remote changes on their way into the index; shared with the indexer
/// thread, which holds no reference to the service while it waits.
#[derive(Default)]
struct RemoteQueue {
    remote: Mutex<Remote>,
    /// Signalled when a job is queued.
    queued: Condvar,
}

#[derive(Default)]
struct Remote {
    /// Applied documents to index, in the order they were applied; one job
    /// per document (a second apply before it is indexed joins the first).
    jobs: Vec<RemoteJob>,
    /// Documents with an apply under way: their heads may already be ahead
    /// of the index with no job queued yet.
    applying: HashMap<Uuid, usize>,
}

impl Remote {
    /// Whether a document's changes may be durable but not yet indexed.
    fn unindexed(&self, doc: Uuid) -> bool {
        self.applying.contains_key(&doc) || self.jobs.iter().any(|j| j.doc == doc)
    }
}

/// Marks a document's apply as under way until its job is queued (or the
/// apply fails), so the index is never saved with heads it does not match.
struct Applying<'s> {
    service: &'s Service,
    doc: Uuid,
}

impl<'s> Applying<'s> {
    fn start(service: &'s Service, doc: Uuid) -> Self {
        *service.remote_lock().applying.entry(doc).or_default() += 1;
        Self { service, doc }
    }

    /// Queues the applied document for the index (joining a job already
    /// queued for it) and wakes the indexer; returns how many jobs are
    /// queued now.
    fn queue(self, job: RemoteJob) -> usize {
        let mut remote = self.service.remote_lock();
        match remote.jobs.iter_mut().find(|j| j.doc == job.doc) {
            // Its `before` is older and covers this one's changes too.
            Some(queued) => queued.origin = job.origin,
            None => remote.jobs.push(job),
        }
        let queued = remote.jobs.len();
        drop(remote);
        self.service.remote.queued.notify_one();
        // `drop` ends the apply, after the job is visible.
        queued
    }
}

impl Drop for Applying<'_> {
    fn drop(&mut self) {
        let mut remote = self.service.remote_lock();
        if let Some(n) = remote.applying.get_mut(&self.doc) {
            *n -= 1;
            if *n == 0 {
                remote.applying.remove(&self.doc);
            }
        }
    }
}

/// Past this many applied documents waiting for the index, a sync
/// connection indexes them itself before it applies more. Unbounded, a
/// 500,000-component clone queued thousands of drawings ahead of the
/// indexer, and the next request to take the lock (`GET /v1/projects`)
/// indexed them all first: over 30 s. A drawing's job is ~1–5 ms.
const REMOTE_BACKLOG: usize = 64;

/// Up to this many components changed by a remote apply are read under
/// the repository's lock; past it, from a copy of the document. The copy
/// (~0.05 ms, ~115 KB) was ~5% of a peer's CPU for each replicated single
/// write (`perf`), more than reading one view in place.
const READ_IN_PLACE: usize = 4;

/// One applied document to index.
struct RemoteJob {
    project: ProjectId,
    doc: Uuid,
    /// The document's heads before the first apply this job stands for:
    /// everything since then is re-read.
    before: Vec<ChangeHash>,
    /// The device the newest changes came from (the events' origin).
    origin: String,
}

/// A project held under the service's lock ([`Service::hold`]).
pub struct Held<'s> {
    service: &'s Service,
    state: std::sync::MutexGuard<'s, State>,
    pid: ProjectId,
}

impl Held<'_> {
    /// The held project's index, current with every durable change.
    pub fn index(&mut self) -> &mut ProjectIndex {
        self.state
            .index
            .get_mut(&self.pid)
            .expect("a held project keeps its index until a refresh fails")
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

fn storage(e: RepoError) -> HostError {
    HostError::Storage {
        detail: e.to_string(),
    }
}

fn new_id() -> Uuid {
    Uuid::new_v4()
}

impl Service {
    pub fn new(repo: Repo, device: DeviceId, clock: Clock, events: EventBus) -> Self {
        let oplog = Arc::new(OpLog::default());
        let told = oplog.clone();
        repo.add_persist_hook(Box::new(move |persisted| told.note(persisted)));
        Self {
            repo: Arc::new(repo),
            device,
            org: std::sync::OnceLock::new(),
            clock,
            state: Mutex::new(State::default()),
            saving: Mutex::new(()),
            remote: Arc::default(),
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

    /// Writes the sync binding records of documents created before sync
    /// existed (stores from older versions), so peers can be offered them.
    pub fn backfill_bindings(&self) -> Result<()> {
        let _state = self.lock();
        let host = RepoHost::new(self.repo.clone());
        for pid in self.project_ids()? {
            if host
                .project_of(pid.0)
                .map_err(|e| ServiceError::Unavailable {
                    detail: e.to_string(),
                })?
                .is_some()
            {
                continue;
            }
            let drawings = self.repo.read_project(pid, |p| p.drawings())??;
            let mut records = binding_records(pid.0, pid.0);
            records.push(self.project_record(pid));
            for d in drawings {
                records.extend(binding_records(pid.0, d.id.0));
            }
            // One durable batch per project.
            self.repo.store().append(&[], &records).map_err(RepoError::from)?;
        }
        Ok(())
    }

    /// Applies another device's changes through `apply` (which makes them
    /// durable), then queues the document for the index, whose events carry
    /// the device the changes came from as their origin.
    ///
    /// The service's lock is not taken: the caller (a sync connection) goes
    /// on to its next message while the indexer thread reads the changed
    /// views, and anyone taking the lock indexes what is queued first, so
    /// every read still sees every applied change.
    pub fn apply_remote<T>(
        &self,
        project: Uuid,
        doc: Uuid,
        apply: impl FnOnce() -> Result<Option<T>, HostError>,
    ) -> Result<Option<T>, HostError> {
        let applying = Applying::start(self, doc);
        let before = self.repo.heads(doc).map_err(storage)?.unwrap_or_default();
        let Some(out) = apply()? else { return Ok(None) };
        let pid = ProjectId(project);
        // Who made the new changes, and when: the origin of the events, and
        // the clock must order this device's next write after them. A local
        // write landing between `before` and the apply is this device's own
        // and is skipped here.
        let newest = self
            .repo
            .read_raw(doc, |am| {
                // Metadata only, from the change graph: rebuilding the
                // changes themselves (`get_changes`) cost a clone, where
                // every change is new, 8% of its time.
                am.get_changes_meta(&before)
                    .iter()
                    .filter_map(|c| {
                        let meta = OpMeta::decode(c.message.as_deref()?)?;
                        (meta.device != self.device).then_some((c.timestamp, meta.device))
                    })
                    .max()
            })
            .map_err(storage)?
            .flatten();
        if let Some((ts, _)) = newest {
            self.clock.observe(Timestamp(ts));
        }
        let origin = newest.map_or_else(|| "remote".to_owned(), |(_, d)| d.to_string());
        if doc == project {
            let meta = format!("{PROJECT_META}{pid}");
            if self
                .repo
                .store()
                .get_meta(&meta)
                .map_err(|e| storage(e.into()))?
                .is_none()
            {
                self.repo
                    .store()
                    .put_meta(&meta, b"")
                    .map_err(|e| storage(e.into()))?;
            }
        }
        let queued = applying.queue(RemoteJob {
            project: pid,
            doc,
            before,
            origin,
        });
        if queued > REMOTE_BACKLOG {
            // The indexer is behind (a clone applies faster than it reads
            // views): this connection indexes the backlog itself before
            // applying more, so the queue stays bounded and whoever takes
            // the lock next (a request) waits for at most a backlog's work.
            drop(self.lock());
        }
        Ok(Some(out))
    }

    /// Starts the thread that indexes applied remote changes as they are
    /// queued (see [`Self::apply_remote`]); it ends once the service is
    /// dropped. Without it they are indexed at the next use of the lock.
    pub fn start_indexer(self: &Arc<Self>) {
        /// How often an idle indexer checks whether the service is gone.
        const IDLE: Duration = Duration::from_secs(1);
        let service: Weak<Self> = Arc::downgrade(self);
        let queue = self.remote.clone();
        let started = std::thread::Builder::new()
            .name("remote-indexer".into())
            .spawn(move || {
                loop {
                    {
                        let remote = queue.remote.lock().unwrap_or_else(|p| p.into_inner());
                        if remote.jobs.is_empty() {
                            drop(queue.queued.wait_timeout(remote, IDLE));
                        }
                    }
                    let Some(svc) = service.upgrade() else { return };
                    // Taking the lock indexes what is queued.
                    drop(svc.lock());
                }
            });
        if let Err(e) = started {
            tracing::warn!(error = %e, "cannot start the remote indexer; remote changes are indexed at the next request");
        }
    }

    /// Indexes every queued remote change. The caller holds the lock.
    fn index_remote(&self, state: &mut State) {
        let jobs = std::mem::take(&mut self.remote_lock().jobs);
        for job in jobs {
            if let Err(e) = self.refresh_remote(state, &job) {
                tracing::warn!(project = %job.project, doc = %job.doc, error = %e,
                    "index refresh after sync failed; rebuilding on next use");
                state.index.remove(&job.project);
            }
        }
    }

    fn refresh_remote(&self, state: &mut State, job: &RemoteJob) -> Result<()> {
        let (pid, origin) = (job.project, job.origin.as_str());
        if !state.index.contains_key(&pid) {
            // Built from the documents on first use; a project whose
            // document has not arrived yet has nothing to index.
            return match self.index(state, pid) {
                Ok(_) => Ok(()),
                Err(ServiceError::NotFound { .. }) => Ok(()),
                Err(e) => Err(e),
            };
        }
        if job.doc == pid.0 {
            let known = &state.index[&pid].drawings;
            let listed: Vec<DrawingId> = self
                .repo
                .read_project(pid, |p| p.drawings())??
                .into_iter()
                .map(|d| d.id)
                .filter(|d| !known.contains_key(d))
                .collect();
            return self.refresh_from(state, pid, &listed, true, origin);
        }
        // A few changed components are read in place; more are read from a
        // copy, so the repository's lock is free for the next apply while
        // they are (a clone: 50 views of each drawing arriving).
        let did = DrawingId(job.doc);
        let read = self.repo.read_drawing(did, |d| {
            let changed = d.changed_components(&job.before);
            if changed.len() <= READ_IN_PLACE {
                Ok(d.components_of(&changed))
            } else {
                Err(Box::new((d.clone(), changed)))
            }
        });
        let fresh = match read {
            Ok(Ok(views)) => views?,
            Ok(Err(copy)) => copy.0.components_of(&copy.1)?,
            // Listed before its document arrived, or still raw.
            Err(RepoError::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        Self::refreshing(state, pid, |state| {
            let index = self.index(state, pid)?;
            if self.absorb(index, pid, fresh, origin) {
                self.publish_progress(index, pid);
            }
            Ok(())
        })
    }

    /// Takes the lock that orders writes and index updates, first indexing
    /// any remote change applied since, so whoever holds it sees an index
    /// that matches every durable change.
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.index_remote(&mut state);
        state
    }

    fn remote_lock(&self) -> std::sync::MutexGuard<'_, Remote> {
        self.remote.remote.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ctx(&self, user: &str, kind: OperationKind) -> WriteCtx {
        WriteCtx::new(user, self.device, OperationId(new_id()), kind, self.clock.now())
    }

    /// The index of a project, building it on first use.
    fn index<'s>(&self, state: &'s mut State, pid: ProjectId) -> Result<&'s mut ProjectIndex> {
        match state.index.entry(pid) {
            std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
            std::collections::hash_map::Entry::Vacant(e) => {
                let started = std::time::Instant::now();
                let (index, built) = ProjectIndex::build(&self.repo, pid).map_err(|e| match e {
                    RepoError::NotFound { .. } => ServiceError::not_found("project", pid),
                    e => e.into(),
                })?;
                tracing::info!(
                    project = %pid,
                    components = index.len(),
                    from_saved = built.saved,
                    from_documents = built.read,
                    ms = started.elapsed().as_millis() as u64,
                    "project index ready"
                );
                Ok(e.insert(index))
            }
        }
    }

    /// Refreshes the index after a write to these drawings (and the project
    /// document), then publishes component and progress events.
    fn refresh(
        &self,
        state: &mut State,
        pid: ProjectId,
        drawings: &[DrawingId],
        project_changed: bool,
    ) -> Result<()> {
        self.refresh_from(state, pid, drawings, project_changed, "local")
    }

    /// [`Self::refresh`] for changes from `origin` (a device id, or "local").
    fn refresh_from(
        &self,
        state: &mut State,
        pid: ProjectId,
        drawings: &[DrawingId],
        project_changed: bool,
        origin: &str,
    ) -> Result<()> {
        Self::refreshing(state, pid, |state| {
            let index = self.index(state, pid)?;
            if project_changed {
                index.drawings = self
                    .repo
                    .read_project(pid, |p| p.drawings())??
                    .into_iter()
                    .map(|d| (d.id, d))
                    .collect();
            }
            let mut changed = false;
            for did in drawings {
                let fresh = match self.repo.read_drawing(*did, |d| d.components()) {
                    Ok(list) => list?,
                    // Listed before its document arrived by sync (or still raw).
                    Err(RepoError::NotFound { .. }) => continue,
                    Err(e) => return Err(e.into()),
                };
                changed |= self.absorb(index, pid, fresh, origin);
            }
            if changed {
                self.publish_progress(index, pid);
            }
            Ok(())
        })
    }

    /// Runs an index refresh after a durable write. One that fails part-way
    /// may leave the index behind the documents, so the index is dropped
    /// (and rebuilt on next use) rather than kept, and saved, wrong.
    fn refreshing(
        state: &mut State,
        pid: ProjectId,
        refresh: impl FnOnce(&mut State) -> Result<()>,
    ) -> Result<()> {
        let result = refresh(state);
        if result.is_err() {
            state.index.remove(&pid);
        }
        result
    }

    /// Re-reads just these drawings' entries in the project document after
    /// a local write that added or changed them. Re-reading every entry
    /// (`refresh` with `project_changed`) costs O(drawings) a write: an
    /// import of 500,000 components spent a fifth of its time there.
    fn refresh_drawing_entries(&self, state: &mut State, pid: ProjectId, dids: &[DrawingId]) -> Result<()> {
        if dids.is_empty() {
            return Ok(());
        }
        let index = self.index(state, pid)?;
        let fresh = self.repo.read_project(pid, |p| {
            dids.iter()
                .map(|did| p.drawing(*did))
                .collect::<Result<Vec<_>, _>>()
        })??;
        for info in fresh {
            index.drawings.insert(info.id, info);
        }
        Ok(())
    }

    /// Refreshes just these components after a local write that knows what
    /// it touched: reading a whole drawing's views costs a write ~50× more.
    fn refresh_components(
        &self,
        state: &mut State,
        pid: ProjectId,
        touched: &[(DrawingId, ComponentId)],
        origin: &str,
    ) -> Result<()> {
        Self::refreshing(state, pid, |state| {
            let index = self.index(state, pid)?;
            let mut by_drawing: BTreeMap<DrawingId, Vec<ComponentId>> = BTreeMap::new();
            for (did, cid) in touched {
                by_drawing.entry(*did).or_default().push(*cid);
            }
            let fresh = self
                .repo
                .read_drawings(by_drawing.into_iter().collect(), |d, cids| d.components_of(&cids))?;
            let mut changed = false;
            for fresh in fresh {
                changed |= self.absorb(index, pid, fresh?, origin);
            }
            if changed {
                self.publish_progress(index, pid);
            }
            Ok(())
        })
    }

    /// Puts fresh component views into the index, publishing an event for
    /// each that changed. Returns whether any did.
    fn absorb(&self, index: &mut ProjectIndex, pid: ProjectId, fresh: Vec<Component>, origin: &str) -> bool {
        let mut changed = false;
        /// `component.*` events' payload, serialized straight from the view.
        #[derive(serde::Serialize)]
        struct ComponentEvent<'a> {
            component: &'a Component,
            origin: &'a str,
        }
        for c in fresh {
            if let Some(change) = index.put(&c) {
                changed = true;
                let event = ComponentEvent {
                    component: &c,
                    origin,
                };
                self.events.publish(change.event(), Some(pid), event);
            }
        }
        changed
    }

    fn publish_progress(&self, index: &ProjectIndex, pid: ProjectId) {
        let p = index.rollup(None);
        self.events.publish(
            "progress.updated",
            Some(pid),
            json!({"project_id": pid, "completion_percent": p.completion_percent,
                   "earned_hours": p.earned_hours, "budget_hours": p.budget_hours}),
        );
    }

    // ---- projects ----

    pub fn create_project(&self, user: &str, new: NewProject) -> Result<ProjectView> {
        let mut state = self.lock();
        let pid = ProjectId(new_id());
        let ctx = self.ctx(user, OperationKind::ProjectCreate);
        self.repo.write(|tx| {
            let doc = ProjectDoc::create(pid, &new, &ctx, tx.actor())?;
            tx.insert(pid.0, Doc::Project(doc));
            tx.put_meta(&format!("{PROJECT_META}{pid}"), b"");
            self.bind(tx, pid, pid.0);
            Ok(())
        })?;
        self.index(&mut state, pid)?;
        let view = self.project_view(&mut state, pid)?;
        self.events
            .publish("project.created", Some(pid), json!({"project": &view}));
        Ok(view)
    }

    fn project_view(&self, state: &mut State, pid: ProjectId) -> Result<ProjectView> {
        let info = self.repo.read_project(pid, |p| p.info())??;
        let index = self.index(state, pid)?;
        let p = index.rollup(None);
        Ok(ProjectView {
            id: pid,
            name: info.name,
            code: info.code,
            completion_percent: p.completion_percent,
            status: Status::of(p.completion_percent),
            component_count: p.component_count,
            drawing_count: index.drawings.values().filter(|d| !d.deleted).count(),
            deleted: info.deleted,
            created_at: info.created_at,
            updated_at: info.updated_at,
        })
    }

    /// Every project not deleted, by name.
    pub fn projects(&self) -> Result<Vec<ProjectView>> {
        let ids = self.project_ids()?;
        let mut state = self.lock();
        let mut out = Vec::new();
        for pid in ids {
            let view = self.project_view(&mut state, pid)?;
            if !view.deleted {
                out.push(view);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    fn project_ids(&self) -> Result<Vec<ProjectId>> {
        Ok(self
            .repo
            .store()
            .meta_names(PROJECT_META)
            .map_err(RepoError::from)?
            .into_iter()
            .filter_map(|name| name.parse().ok())
            .collect())
    }

    pub fn project(&self, pid: ProjectId) -> Result<ProjectView> {
        let mut state = self.lock();
        self.project_view(&mut state, pid)
    }

    pub fn update_project(&self, user: &str, pid: ProjectId, patch: ProjectPatch) -> Result<ProjectView> {
        let mut state = self.lock();
        self.index(&mut state, pid)?;
        let ctx = self.ctx(user, OperationKind::ProjectUpdate);
        self.repo.write(|tx| Ok(tx.project(pid)?.update(&ctx, &patch)?))?;
        self.project_view(&mut state, pid)
    }

    pub fn delete_project(&self, user: &str, pid: ProjectId) -> Result<()> {
        let mut state = self.lock();
        self.index(&mut state, pid)?;
        let ctx = self.ctx(user, OperationKind::ProjectDelete);
        self.repo
            .write(|tx| Ok(tx.project(pid)?.set_deleted(&ctx, true)?))?;
        Ok(())
    }

    // ---- templates ----

    pub fn add_template(&self, user: &str, pid: ProjectId, new: NewTemplate) -> Result<Template> {
        let mut state = self.lock();
        self.index(&mut state, pid)?;
        let ctx = self.ctx(user, OperationKind::TemplateCreate);
        Ok(self
            .repo
            .write(|tx| Ok(tx.project(pid)?.add_template(&ctx, TemplateId(new_id()), new)?))?)
    }

    pub fn templates(&self, pid: ProjectId) -> Result<Vec<Template>> {
        self.existing(pid)?;
        Ok(self.repo.read_project(pid, |p| p.templates())??)
    }

    fn existing(&self, pid: ProjectId) -> Result<()> {
        let mut state = self.lock();
        self.index(&mut state, pid).map(|_| ())
    }

    // ---- drawings ----

    fn drawing_view(index: &ProjectIndex, info: DrawingInfo) -> DrawingView {
        let tally = index.drawing_tally(info.id);
        DrawingView {
            info,
            component_count: tally.count,
            completion_percent: tally.completion(),
        }
    }

    pub fn add_drawing(&self, user: &str, pid: ProjectId, new: NewDrawing) -> Result<DrawingView> {
        let mut state = self.lock();
        self.index(&mut state, pid)?;
        let did = DrawingId(new_id());
        let ctx = self.ctx(user, OperationKind::DrawingCreate);
        self.repo.write(|tx| {
            tx.project(pid)?.add_drawing(&ctx, did, &new)?;
            let doc = DrawingDoc::create(pid, did, &ctx, tx.actor())?;
            tx.insert(did.0, Doc::Drawing(doc));
            self.bind(tx, pid, did.0);
            Ok(())
        })?;
        self.refresh_drawing_entries(&mut state, pid, &[did])?;
        self.drawing_locked(&mut state, pid, did)
    }

    fn drawing_locked(&self, state: &mut State, pid: ProjectId, did: DrawingId) -> Result<DrawingView> {
        let index = self.index(state, pid)?;
        let info = index
            .drawings
            .get(&did)
            .cloned()
            .ok_or_else(|| ServiceError::not_found("drawing", did))?;
        Ok(Self::drawing_view(index, info))
    }

    pub fn drawing(&self, pid: ProjectId, did: DrawingId) -> Result<DrawingView> {
        self.drawing_locked(&mut self.lock(), pid, did)
    }

    /// Every drawing not deleted, by number.
    pub fn drawings(&self, pid: ProjectId) -> Result<Vec<DrawingView>> {
        let mut state = self.lock();
        let index = self.index(&mut state, pid)?;
        let mut out: Vec<_> = index
            .drawings
            .values()
            .filter(|d| !d.deleted)
            .map(|d| Self::drawing_view(index, d.clone()))
            .collect();
        out.sort_by(|a, b| a.info.number.cmp(&b.info.number));
        Ok(out)
    }

    pub fn update_drawing(
        &self,
        user: &str,
        pid: ProjectId,
        did: DrawingId,
        patch: DrawingPatch,
    ) -> Result<DrawingView> {
        let mut state = self.lock();
        self.drawing_locked(&mut state, pid, did)?;
        let ctx = self.ctx(user, OperationKind::DrawingUpdate);
        self.repo
            .write(|tx| Ok(tx.project(pid)?.update_drawing(&ctx, did, &patch)?))?;
        self.refresh_drawing_entries(&mut state, pid, &[did])?;
        self.drawing_locked(&mut state, pid, did)
    }

    pub fn delete_drawing(&self, user: &str, pid: ProjectId, did: DrawingId) -> Result<()> {
        let mut state = self.lock();
        self.drawing_locked(&mut state, pid, did)?;
        let ctx = self.ctx(user, OperationKind::DrawingDelete);
        self.repo
            .write(|tx| Ok(tx.project(pid)?.set_drawing_deleted(&ctx, did, true)?))?;
        self.refresh_drawing_entries(&mut state, pid, &[did])
    }

    // ---- components ----

    pub fn add_component(
        &self,
        user: &str,
        pid: ProjectId,
        did: DrawingId,
        new: NewComponent,
    ) -> Result<Component> {
        let mut state = self.lock();
        let drawing = self.drawing_locked(&mut state, pid, did)?;
        if drawing.info.deleted {
            return Err(ModelError::DrawingDeleted { drawing: did }.into());
        }
        let tid = new
            .template_id
            .ok_or_else(|| ServiceError::Missing { field: "template_id" })?;
        let template = self
            .repo
            .read_project(pid, |p| p.template(tid, "template_id"))??;
        let cid = ComponentId(new_id());
        let ctx = self.ctx(user, OperationKind::ComponentCreate);
        self.repo
            .write(|tx| Ok(tx.drawing(did)?.add_component(&ctx, cid, &new, &template)?))?;
        self.refresh_components(&mut state, pid, &[(did, cid)], "local")?;
        self.component_locked(&mut state, pid, cid)
    }

    fn component_locked(&self, state: &mut State, pid: ProjectId, cid: ComponentId) -> Result<Component> {
        self.index(state, pid)?
            .get(cid)
            .ok_or_else(|| ServiceError::not_found("component", cid))
    }

    pub fn component(&self, pid: ProjectId, cid: ComponentId) -> Result<Component> {
        self.component_locked(&mut self.lock(), pid, cid)
    }

    /// One page of the components matching the query, in its order.
    pub fn components(&self, pid: ProjectId, q: &ComponentQuery, page: Page) -> Result<Paged<Component>> {
        let mut state = self.lock();
        Ok(self.index(&mut state, pid)?.query(q, page))
    }

    /// Runs a write on the drawing holding `cid`.
    /// One write to one component. The write returns the component's fresh
    /// view, which goes into the index as is: reading it a second time cost
    /// a fifth of a single write.
    fn with_component(
        &self,
        pid: ProjectId,
        cid: ComponentId,
        kind: OperationKind,
        user: &str,
        reason: Option<String>,
        f: impl FnOnce(&mut DrawingDoc, &WriteCtx) -> Result<Component, ModelError>,
    ) -> Result<(Component, OperationId)> {
        let mut state = self.lock();
        let did = self
            .index(&mut state, pid)?
            .slot(cid)
            .ok_or_else(|| ServiceError::not_found("component", cid))?
            .drawing_id;
        let ctx = self.ctx(user, kind).with_reason(reason);
        let view = self.repo.write(|tx| Ok(f(tx.drawing(did)?, &ctx)?))?;
        let index = self.index(&mut state, pid)?;
        if self.absorb(index, pid, vec![view.clone()], "local") {
            self.publish_progress(index, pid);
        }
        Ok((view, ctx.op))
    }

    /// Each single-component write answers with the component as it now
    /// stands and the operation it made (which the app offers to undo).
    pub fn update_component(
        &self,
        user: &str,
        pid: ProjectId,
        cid: ComponentId,
        patch: ComponentPatch,
    ) -> Result<(Component, OperationId)> {
        self.with_component(pid, cid, OperationKind::ComponentUpdate, user, None, |d, ctx| {
            d.update_component(ctx, cid, &patch)
        })
    }

    pub fn set_component_deleted(
        &self,
        user: &str,
        pid: ProjectId,
        cid: ComponentId,
        deleted: bool,
    ) -> Result<(Component, OperationId)> {
        let kind = if deleted {
            OperationKind::ComponentDelete
        } else {
            OperationKind::ComponentRestore
        };
        self.with_component(pid, cid, kind, user, None, |d, ctx| {
            d.set_component_deleted(ctx, cid, deleted)
        })
    }

    pub fn update_milestone(
        &self,
        user: &str,
        pid: ProjectId,
        update: MilestoneUpdate,
        reason: Option<String>,
    ) -> Result<(Component, OperationId)> {
        let cid = update.component_id;
        self.with_component(
            pid,
            cid,
            OperationKind::MilestoneUpdate,
            user,
            reason,
            |d, ctx| d.update_milestone(ctx, &update),
        )
    }

    /// A bulk update: one durable batch for every drawing it touches.
    pub fn bulk(
        &self,
        user: &str,
        pid: ProjectId,
        updates: Vec<MilestoneUpdate>,
        options: BulkOptions,
        reason: Option<String>,
    ) -> Result<BulkOutcome> {
        let mut state = self.lock();
        let index = self.index(&mut state, pid)?;
        let mut touched: Vec<(DrawingId, ComponentId)> = updates
            .iter()
            .filter_map(|u| index.slot(u.component_id).map(|s| (s.drawing_id, u.component_id)))
            .collect();
        touched.sort();
        touched.dedup();
        let mut drawings: Vec<DrawingId> = touched.iter().map(|(d, _)| *d).collect();
        drawings.dedup();
        let ctx = self.ctx(user, OperationKind::BulkUpdate).with_reason(reason);
        let outcome = self.repo.write(|tx| {
            let mut docs = tx.drawings(&drawings)?;
            Ok(apply_bulk(
                &mut docs,
                &updates,
                &options,
                &ctx,
                &self.repo.workers(),
            )?)
        })?;
        if outcome.applied > 0 {
            self.refresh_components(&mut state, pid, &touched, "local")?;
        }
        Ok(outcome)
    }

    /// What an export needs before its first row: drawing numbers,
    /// templates, attribute names, and the live components' order (by
    /// drawing number, then tag) — ids only, so the rows themselves are
    /// fetched a batch at a time.
    /// These components as they are now, in the order given (ids no longer
    /// in the project, or deleted since, are skipped).
    pub fn components_by_id(&self, pid: ProjectId, ids: &[ComponentId]) -> Result<Vec<Component>> {
        let mut state = self.lock();
        let index = self.index(&mut state, pid)?;
        Ok(ids
            .iter()
            .filter_map(|id| index.get(*id).filter(|c| !c.deleted))
            .collect())
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

    // ---- operations, undo, history, progress ----

    fn drawing_ids(&self, state: &mut State, pid: ProjectId) -> Result<Vec<DrawingId>> {
        Ok(self.index(state, pid)?.drawings.keys().copied().collect())
    }

    /// Recent operations in the project, newest first, from the operation
    /// log ([`OpLog`]): only documents changed since the last listing are
    /// read, and without the service lock, so writes go on meanwhile.
    pub fn operations(&self, pid: ProjectId, limit: usize) -> Result<Vec<OperationInfo>> {
        let dids = {
            let mut state = self.lock();
            self.drawing_ids(&mut state, pid)?
        };
        let docs: Vec<uuid::Uuid> = std::iter::once(pid.0).chain(dids.iter().map(|d| d.0)).collect();
        let mut ops = self.oplog.list(&self.repo, &docs)?;
        ops.truncate(limit);
        Ok(ops)
    }

    /// Undoes an operation everywhere it wrote in the project.
    pub fn undo(&self, user: &str, pid: ProjectId, target: OperationId) -> Result<UndoView> {
        let mut state = self.lock();
        let dids = self.drawing_ids(&mut state, pid)?;
        let ctx = self.ctx(user, OperationKind::Undo);
        let report = self.repo.write(|tx| {
            let mut report = UndoReport::default();
            let mut found = false;
            let mut absorb = |r: Result<UndoReport, ModelError>| match r {
                Ok(r) => {
                    found = true;
                    report.absorb(r);
                    Ok(())
                }
                Err(ModelError::OperationNotFound { .. }) => Ok(()),
                Err(e) => Err(RepoError::Model(e)),
            };
            absorb(tx.project(pid)?.undo(&ctx, target))?;
            for did in &dids {
                match tx.drawing(*did) {
                    Ok(d) => absorb(d.undo(&ctx, target))?,
                    Err(RepoError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            if !found {
                return Err(ModelError::OperationNotFound { id: target }.into());
            }
            Ok(report)
        })?;
        self.refresh(&mut state, pid, &dids, true)?;
        Ok(UndoView {
            operation_id: ctx.op,
            report,
        })
    }

    /// A component's history, newest first, from the drawing's history
    /// index (caught up with any changes since it was last read).
    pub fn history(&self, pid: ProjectId, cid: ComponentId) -> Result<Vec<HistoryEntry>> {
        let mut state = self.lock();
        let did = self.component_locked(&mut state, pid, cid)?.drawing_id;
        let index = state.history.entry(did).or_default();
        self.repo.read_drawing(did, |d| index.catch_up(d))??;
        Ok(index.rows(cid))
    }

    pub fn progress(&self, pid: ProjectId, group_by: Option<GroupBy>) -> Result<Progress> {
        let mut state = self.lock();
        Ok(self.index(&mut state, pid)?.rollup(group_by))
    }

    /// Saves the project index entries of every drawing changed since its
    /// last save (see [`crate::index`]), a batch at a time: the service's
    /// lock is held only to take a batch, never while encoding or writing
    /// it. Returns how many drawings were saved. One save runs at a time,
    /// so records land in the order their entries were taken. Writes are
    /// relaxed (durable with the next durable write or the flush at
    /// shutdown): a record a crash loses is older than its document, whose
    /// heads then differ, and the drawing is read from the document.
    pub fn save_index(&self) -> Result<usize, RepoError> {
        /// Drawings taken per hold of the lock: ~64 × 50 views copied.
        const BATCH: usize = 64;
        let _one_at_a_time = self.saving.lock().unwrap_or_else(|p| p.into_inner());
        // The operation records followed since the last save go too.
        self.oplog.save(&self.repo);
        let mut saved = 0;
        loop {
            let taken = {
                let mut state = self.lock();
                let mut taken = Vec::new();
                for (pid, index) in &mut state.index {
                    if taken.len() >= BATCH {
                        break;
                    }
                    let unindexed = |d: DrawingId| self.remote_lock().unindexed(d.0);
                    match index.take_unsaved(&self.repo, *pid, BATCH - taken.len(), &unindexed) {
                        Ok(more) => taken.extend(more),
                        Err(e) => {
                            Self::give_back(&mut state, &taken);
                            return Err(e);
                        }
                    }
                }
                taken
            };
            if taken.is_empty() {
                return Ok(saved);
            }
            let records: Vec<(String, Vec<u8>)> = taken.iter().map(|u| u.record()).collect();
            if let Err(e) = self.repo.store().put_metas_relaxed(&records) {
                Self::give_back(&mut self.lock(), &taken);
                return Err(e.into());
            }
            saved += taken.len();
        }
    }

    /// Marks drawings taken for saving but not saved as due again.
    fn give_back(state: &mut State, taken: &[crate::index::Unsaved]) {
        for u in taken {
            if let Some(index) = state.index.get_mut(&u.project) {
                index.mark_unsaved(u.drawing);
            }
        }
    }

    /// How many documents are in memory (for health and metrics).
    pub fn documents_loaded(&self) -> usize {
        self.repo.loaded()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sitesync_model::automerge::ActorId;
    use sitesync_model::history::{component_history, summarize};
    use sitesync_model::{MilestoneDef, MilestoneValue, WorkflowType};
    use sitesync_sync::{DocStore, MemBackend, RepoConfig};

    /// A service on `dir` with a small cache, as the restart tests want.
    fn open_small(dir: &std::path::Path) -> Result<Service, crate::StartError> {
        crate::open_service(
            dir,
            crate::CacheLimits {
                documents: 512,
                ..Default::default()
            },
        )
    }

    fn service() -> Service {
        let repo = Repo::new(
            DocStore::new(MemBackend::default()),
            ActorId::random(),
            RepoConfig::default(),
        );
        Service::new(repo, DeviceId(new_id()), Clock::system(), EventBus::new(100, 1))
    }

    #[test]
    fn a_store_from_before_sync_gets_its_bindings_once() {
        let svc = service();
        let (pid, did) = (ProjectId(new_id()), DrawingId(new_id()));
        // As an older version wrote it: documents and the project marker only.
        svc.repo
            .write(|tx| {
                let ctx = svc.ctx("ana", OperationKind::ProjectCreate);
                let new = NewProject {
                    name: "Old".into(),
                    code: None,
                };
                let mut project = ProjectDoc::create(pid, &new, &ctx, tx.actor())?;
                let drawing = NewDrawing {
                    number: "ISO-1".into(),
                    ..NewDrawing::default()
                };
                project.add_drawing(&ctx, did, &drawing)?;
                tx.insert(
                    did.0,
                    Doc::Drawing(DrawingDoc::create(pid, did, &ctx, tx.actor())?),
                );
                tx.insert(pid.0, Doc::Project(project));
                tx.put_meta(&format!("{PROJECT_META}{pid}"), b"");
                Ok(())
            })
            .unwrap();
        let host = RepoHost::new(svc.repo.clone());
        assert!(
            host.summary(pid.0).unwrap().is_empty(),
            "nothing to offer peers yet"
        );
        svc.set_org("acme");
        svc.backfill_bindings().unwrap();
        let mut docs: Vec<Uuid> = host.summary(pid.0).unwrap().into_iter().map(|(d, _)| d).collect();
        docs.sort();
        let mut want = vec![pid.0, did.0];
        want.sort();
        assert_eq!(docs, want);
        assert_eq!(host.project_of(did.0).unwrap(), Some(pid.0));
        assert_eq!(host.project_org(pid.0).unwrap().as_deref(), Some("acme"));
        // A second start changes nothing.
        svc.backfill_bindings().unwrap();
        assert_eq!(host.summary(pid.0).unwrap().len(), 2);
    }

    /// A project with one discrete template of one milestone, `erect`.
    /// A project with three drawings of `each` components (4 budget hours,
    /// one discrete milestone `erect`), in drawing order.
    fn three_drawings(svc: &Service, each: usize) -> (ProjectView, Vec<Component>) {
        let (p, t) = project_with_template(svc);
        let mut components = Vec::new();
        for n in 0..3 {
            let d = svc
                .add_drawing(
                    "ana",
                    p.id,
                    NewDrawing {
                        number: format!("D{n}"),
                        ..Default::default()
                    },
                )
                .unwrap();
            for m in 0..each {
                let new = NewComponent {
                    tag: format!("C{n}-{m}"),
                    kind: "spool".into(),
                    template_id: Some(t.id),
                    budget_hours: Some(4.0),
                    ..Default::default()
                };
                components.push(svc.add_component("ana", p.id, d.info.id, new).unwrap());
            }
        }
        (p, components)
    }

    fn project_with_template(svc: &Service) -> (ProjectView, Template) {
        let p = svc
            .create_project(
                "ana",
                NewProject {
                    name: "P".into(),
                    code: None,
                },
            )
            .unwrap();
        let t = svc
            .add_template(
                "ana",
                p.id,
                NewTemplate {
                    name: "Spool".into(),
                    workflow_type: WorkflowType::Discrete,
                    milestones: vec![MilestoneDef {
                        key: "erect".into(),
                        name: "Erect".into(),
                        weight: 1.0,
                    }],
                },
            )
            .unwrap();
        (p, t)
    }

    #[test]
    fn the_history_index_matches_a_full_scan_as_writes_arrive() {
        let svc = service();
        let (pid, did, ids) = drawing_with_components(&svc, 1);
        let cid = ids[0];
        let full = |svc: &Service| {
            svc.repo()
                .read_drawing(did, |doc| component_history(doc.automerge(), cid).unwrap())
                .unwrap()
        };
        assert_eq!(svc.history(pid, cid).unwrap(), full(&svc));
        for (i, done) in [true, false, true].into_iter().enumerate() {
            let u = MilestoneUpdate {
                component_id: cid,
                milestone: "erect".into(),
                value: MilestoneValue::Completed(done),
                effective_date: None,
            };
            svc.update_milestone(if i % 2 == 0 { "ana" } else { "ben" }, pid, u, None)
                .unwrap();
            let h = svc.history(pid, cid).unwrap();
            assert_eq!(h, full(&svc), "after write {i}");
            assert_eq!(h.len(), i + 2);
        }
    }

    /// After a restart the index reads each drawing's entries from its
    /// saved record when the document has not changed since the save, and
    /// from the document when it has: a write after the last save (then a
    /// crash, which saves nothing) shows after the restart.
    #[test]
    fn a_restart_reads_saved_entries_and_rereads_drawings_changed_since() {
        let dir = tempfile::tempdir().unwrap();
        let svc = open_small(dir.path()).unwrap();
        let (p, components) = three_drawings(&svc, 2);
        assert_eq!(svc.save_index().unwrap(), 3, "every drawing with components");
        assert_eq!(svc.save_index().unwrap(), 0, "nothing changed since");
        // Not saved: the process stops before the next save.
        let erected = MilestoneUpdate {
            component_id: components[2].id,
            milestone: "erect".into(),
            value: MilestoneValue::Completed(true),
            effective_date: None,
        };
        svc.update_milestone("ben", p.id, erected, None).unwrap();
        let all = |svc: &Service| {
            svc.components(
                p.id,
                &ComponentQuery::default(),
                Page {
                    offset: 0,
                    limit: 100,
                },
            )
            .unwrap()
            .items
        };
        let before = all(&svc);
        assert_eq!(before.iter().filter(|c| c.completion_percent == 100.0).count(), 1);
        drop(svc);

        let svc = open_small(dir.path()).unwrap();
        let (_, built) = ProjectIndex::build(svc.repo(), p.id).unwrap();
        assert_eq!(built, crate::index::Built { saved: 2, read: 1 });
        assert_eq!(all(&svc), before);
        assert_eq!(svc.progress(p.id, None).unwrap().earned_hours, 4.0);
        // The re-read drawing is saved again; then every drawing reads back.
        assert_eq!(svc.save_index().unwrap(), 1);
        drop(svc);
        let svc = open_small(dir.path()).unwrap();
        let (_, built) = ProjectIndex::build(svc.repo(), p.id).unwrap();
        assert_eq!(built, crate::index::Built { saved: 3, read: 0 });
        assert_eq!(all(&svc), before);
    }

    /// Without commits reported by the repository, the list reads the
    /// documents that changed, and is still the full scan's.
    #[test]
    fn the_operations_list_reads_documents_when_commits_are_not_reported() {
        let svc = service();
        let (pid, did, ids) = drawing_with_components(&svc, 2);
        let docs = [pid.0, did.0];
        assert_eq!(svc.oplog.behind(&svc.repo, &docs).unwrap().len(), 2);
        let full = |svc: &Service| {
            summarize(docs.iter().flat_map(|id| {
                svc.repo
                    .read_raw(*id, sitesync_model::history::operation_records)
                    .unwrap()
                    .unwrap()
            }))
        };
        assert_eq!(svc.operations(pid, usize::MAX).unwrap(), full(&svc));
        assert!(svc.oplog.behind(&svc.repo, &docs).unwrap().is_empty());
        let u = MilestoneUpdate {
            component_id: ids[1],
            milestone: "erect".into(),
            value: MilestoneValue::Completed(true),
            effective_date: None,
        };
        svc.update_milestone("ana", pid, u, None).unwrap();
        assert_eq!(svc.oplog.behind(&svc.repo, &docs).unwrap(), vec![did.0]);
        assert_eq!(svc.operations(pid, usize::MAX).unwrap(), full(&svc));
    }

    /// The operations list is what a full read of every document gives,
    /// after each write; after a restart it comes from the saved records
    /// without reading a single drawing, and a write made since is read
    /// from its own drawing.
    #[test]
    fn the_operations_list_matches_a_full_scan_and_a_restart_reads_no_drawing() {
        let dir = tempfile::tempdir().unwrap();
        let svc = open_small(dir.path()).unwrap();
        let (p, components) = three_drawings(&svc, 1);
        let full = |svc: &Service| {
            let mut docs = vec![p.id.0];
            docs.extend(components.iter().map(|c| c.drawing_id.0));
            summarize(docs.into_iter().flat_map(|id| {
                svc.repo
                    .read_raw(id, sitesync_model::history::operation_records)
                    .unwrap()
                    .unwrap()
            }))
        };
        // Followed from their first change: nothing to read for the list.
        let mut docs = vec![p.id.0];
        docs.extend(components.iter().map(|c| c.drawing_id.0));
        assert_eq!(svc.oplog.behind(&svc.repo, &docs).unwrap(), Vec::<Uuid>::new());
        assert_eq!(svc.operations(p.id, usize::MAX).unwrap(), full(&svc));
        let erect = |c: &Component, done: bool| MilestoneUpdate {
            component_id: c.id,
            milestone: "erect".into(),
            value: MilestoneValue::Completed(done),
            effective_date: None,
        };
        for (i, c) in components.iter().enumerate() {
            let (_, op) = svc.update_milestone("ben", p.id, erect(c, true), None).unwrap();
            assert!(svc.oplog.behind(&svc.repo, &docs).unwrap().is_empty());
            let listed = svc.operations(p.id, usize::MAX).unwrap();
            assert_eq!(listed, full(&svc), "after write {i}");
            assert_eq!(listed[0].id, op, "the newest first");
        }
        let undone = svc.operations(p.id, 1).unwrap()[0].id;
        svc.undo("ana", p.id, OperationId(undone.0)).unwrap();
        let before = svc.operations(p.id, usize::MAX).unwrap();
        assert_eq!(before, full(&svc));
        assert!(before.iter().any(|o| o.id == undone && o.undone_by.is_some()));
        svc.save_index().unwrap();
        drop(svc);

        let svc = open_small(dir.path()).unwrap();
        svc.progress(p.id, None).unwrap();
        let loaded = svc.documents_loaded();
        assert_eq!(svc.operations(p.id, usize::MAX).unwrap(), before);
        assert_eq!(svc.documents_loaded(), loaded, "no document read for the list");
        let (_, op) = svc
            .update_milestone("ana", p.id, erect(&components[1], false), None)
            .unwrap();
        let after = svc.operations(p.id, usize::MAX).unwrap();
        assert_eq!(after[0].id, op);
        assert_eq!(after, full(&svc));
    }

    /// Brings `doc` from `from` into `to` as a sync connection does,
    /// through [`Service::apply_remote`]; `during` runs once the change is
    /// durable on `to` and before it is queued for the index.
    fn receive(from: &Service, to: &Service, project: ProjectId, doc: Uuid, during: impl FnOnce()) {
        let saved = from.repo.read_raw(doc, |am| am.save()).unwrap().unwrap();
        let applied = to
            .apply_remote(project.0, doc, || {
                let (_, heads) = to
                    .repo
                    .sync_doc(doc, None, |am| {
                        am.load_incremental(&saved).unwrap();
                        ((), Vec::new())
                    })
                    .map_err(storage)?;
                during();
                Ok(Some(heads))
            })
            .unwrap();
        assert!(applied.is_some());
    }

    /// A project on `a` with one drawing of `n` components, each with the
    /// one milestone `erect`; received whole by `b`.
    fn shared_drawing(a: &Service, b: &Service, n: usize) -> (ProjectId, DrawingId, Vec<ComponentId>) {
        let (pid, did, ids) = drawing_with_components(a, n);
        receive(a, b, pid, pid.0, || {});
        receive(a, b, pid, did.0, || {});
        (pid, did, ids)
    }

    /// A project on `svc` with one drawing, `D1`, of `n` components `C0`…,
    /// each of 2 budget hours and the one milestone `erect`.
    fn drawing_with_components(svc: &Service, n: usize) -> (ProjectId, DrawingId, Vec<ComponentId>) {
        let (p, t) = project_with_template(svc);
        let d = svc
            .add_drawing(
                "ana",
                p.id,
                NewDrawing {
                    number: "D1".into(),
                    ..Default::default()
                },
            )
            .unwrap();
        let ids = (0..n)
            .map(|i| {
                let new = NewComponent {
                    tag: format!("C{i}"),
                    kind: "spool".into(),
                    template_id: Some(t.id),
                    budget_hours: Some(2.0),
                    ..Default::default()
                };
                svc.add_component("ana", p.id, d.info.id, new).unwrap().id
            })
            .collect();
        (p.id, d.info.id, ids)
    }

    fn erect(svc: &Service, pid: ProjectId, cid: ComponentId) {
        let u = MilestoneUpdate {
            component_id: cid,
            milestone: "erect".into(),
            value: MilestoneValue::Completed(true),
            effective_date: None,
        };
        svc.update_milestone("ana", pid, u, None).unwrap();
    }

    /// Remote changes are applied without the service's lock and indexed
    /// later, but whoever takes the lock next indexes them first: a read
    /// right after an apply sees it, with no indexer thread running.
    #[test]
    fn a_read_right_after_a_remote_apply_sees_it() {
        let (a, b) = (service(), service());
        let (pid, did, ids) = shared_drawing(&a, &b, 1);
        assert_eq!(b.component(pid, ids[0]).unwrap().completion_percent, 0.0);
        let next = b.events.next_id();
        erect(&a, pid, ids[0]);
        receive(&a, &b, pid, did.0, || {});
        assert_eq!(b.component(pid, ids[0]).unwrap().completion_percent, 100.0);
        assert_eq!(b.progress(pid, None).unwrap().earned_hours, 2.0);
        // The event names the device the change came from.
        let events = b.events.subscribe(Some(next - 1)).backlog;
        let updated = events
            .iter()
            .find(|e| e.kind == "component.updated")
            .expect("an update event");
        let data: serde_json::Value = serde_json::from_str(&updated.data).unwrap();
        assert_eq!(data["origin"], a.device().to_string());
    }

    /// A connection applying faster than anything indexes (here, with no
    /// indexer thread at all) indexes the backlog itself once it passes
    /// [`REMOTE_BACKLOG`], so the next request never waits for an
    /// unbounded queue; nothing applied is missed.
    #[test]
    fn the_remote_backlog_stays_bounded() {
        let (a, b) = (service(), service());
        let (p, t) = project_with_template(&a);
        receive(&a, &b, p.id, p.id.0, || {});
        let drawings = REMOTE_BACKLOG + 10;
        let mut longest = 0;
        for n in 0..drawings {
            let d = a
                .add_drawing(
                    "ana",
                    p.id,
                    NewDrawing {
                        number: format!("D{n}"),
                        ..Default::default()
                    },
                )
                .unwrap();
            let new = NewComponent {
                tag: format!("C{n}"),
                kind: "spool".into(),
                template_id: Some(t.id),
                budget_hours: Some(1.0),
                ..Default::default()
            };
            a.add_component("ana", p.id, d.info.id, new).unwrap();
            receive(&a, &b, p.id, d.info.id.0, || {});
            longest = longest.max(b.remote_lock().jobs.len());
        }
        assert!(
            longest <= REMOTE_BACKLOG,
            "{longest} documents waited for the index"
        );
        receive(&a, &b, p.id, p.id.0, || {});
        assert_eq!(b.project(p.id).unwrap().component_count, drawings);
    }

    /// With the indexer thread running, a remote change reaches the index
    /// and its events with no request taking the lock.
    #[test]
    fn the_indexer_thread_indexes_remote_changes_on_its_own() {
        let a = service();
        let b = Arc::new(service());
        b.start_indexer();
        let (pid, did, ids) = shared_drawing(&a, &b, 1);
        assert_eq!(b.component(pid, ids[0]).unwrap().completion_percent, 0.0);
        let next = b.events.next_id();
        erect(&a, pid, ids[0]);
        receive(&a, &b, pid, did.0, || {});
        // Only the event ring is read here: no lock is taken.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while b.events.next_id() == next {
            assert!(std::time::Instant::now() < deadline, "no event after 10 s");
            std::thread::sleep(Duration::from_millis(5));
        }
        let events = b.events.subscribe(Some(next - 1)).backlog;
        assert!(
            events.iter().any(|e| e.kind == "component.updated"),
            "{:?}",
            events.iter().map(|e| e.kind).collect::<Vec<_>>()
        );
        // The thread holds the service only while indexing: it is dropped.
        let weak = Arc::downgrade(&b);
        drop(b);
        while weak.strong_count() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the indexer kept the service"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// An index save that runs while a remote apply is under way must not
    /// record the document's new heads beside entries that do not have its
    /// changes yet: after a crash, the restart would trust those entries.
    #[test]
    fn an_index_save_during_a_remote_apply_leaves_that_drawing_due() {
        let dir = tempfile::tempdir().unwrap();
        let a = service();
        let b = open_small(dir.path()).unwrap();
        let (pid, did, ids) = shared_drawing(&a, &b, 2);
        assert_eq!(b.progress(pid, None).unwrap().earned_hours, 0.0);
        assert_eq!(b.save_index().unwrap(), 1);
        erect(&a, pid, ids[0]);
        receive(&a, &b, pid, did.0, || {});
        erect(&a, pid, ids[1]);
        receive(&a, &b, pid, did.0, || {
            // The first change is indexed now; the second is durable but
            // not indexed, so the drawing is not saved yet.
            assert_eq!(b.save_index().unwrap(), 0);
        });
        // Killed before the second change is indexed or saved.
        drop(b);
        let b = open_small(dir.path()).unwrap();
        assert_eq!(b.progress(pid, None).unwrap().earned_hours, 4.0);
        for id in ids {
            assert_eq!(b.component(pid, id).unwrap().completion_percent, 100.0);
        }
    }

    #[test]
    fn the_clock_never_repeats_or_goes_back() {
        let clock = Clock::with_source(|| 1_000);
        let a = clock.now();
        let b = clock.now();
        assert_eq!((a, b), (Timestamp(1_000), Timestamp(1_001)));
    }
}
