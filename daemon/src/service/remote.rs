//! Another device's changes on their way into the index: a sync connection
//! applies a document (durable) and queues it; the `remote-indexer`
//! thread, or whoever takes the service's lock first, indexes the queue.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use sitesync_model::OpMeta;
use sitesync_model::automerge::ChangeHash;
use sitesync_model::{DrawingId, ProjectId, Timestamp};
use sitesync_sync::RepoError;
use sitesync_sync::session::HostError;
use uuid::Uuid;

use super::*;

/// Remote changes on their way into the index; shared with the indexer
/// thread, which holds no reference to the service while it waits.
#[derive(Default)]
pub(super) struct RemoteQueue {
    pub(super) remote: Mutex<Remote>,
    /// Signalled when a job is queued.
    pub(super) queued: Condvar,
}

#[derive(Default)]
pub(super) struct Remote {
    /// Applied documents to index, in the order they were applied; one job
    /// per document (a second apply before it is indexed joins the first).
    pub(super) jobs: Vec<RemoteJob>,
    /// Documents with an apply under way: their heads may already be ahead
    /// of the index with no job queued yet.
    pub(super) applying: HashMap<Uuid, usize>,
}

impl Remote {
    /// Whether a document's changes may be durable but not yet indexed.
    pub(super) fn unindexed(&self, doc: Uuid) -> bool {
        self.applying.contains_key(&doc) || self.jobs.iter().any(|j| j.doc == doc)
    }
}

/// Marks a document's apply as under way until its job is queued (or the
/// apply fails), so the index is never saved with heads it does not match.
pub(super) struct Applying<'s> {
    pub(super) service: &'s Service,
    pub(super) doc: Uuid,
}

impl<'s> Applying<'s> {
    pub(super) fn start(service: &'s Service, doc: Uuid) -> Self {
        *service.remote_lock().applying.entry(doc).or_default() += 1;
        Self { service, doc }
    }

    /// Queues the applied document for the index (joining a job already
    /// queued for it) and wakes the indexer; returns how many jobs are
    /// queued now.
    pub(super) fn queue(self, job: RemoteJob) -> usize {
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
pub(super) const REMOTE_BACKLOG: usize = 64;

/// Up to this many components changed by a remote apply are read under
/// the repository's lock; past it, from a copy of the document. The copy
/// (~0.05 ms, ~115 KB) was ~5% of a peer's CPU for each replicated single
/// write (`perf`), more than reading one view in place.
pub(super) const READ_IN_PLACE: usize = 4;

/// One applied document to index.
pub(super) struct RemoteJob {
    pub(super) project: ProjectId,
    pub(super) doc: Uuid,
    /// The document's heads before the first apply this job stands for:
    /// everything since then is re-read.
    pub(super) before: Vec<ChangeHash>,
    /// The device the newest changes came from (the events' origin).
    pub(super) origin: String,
}

impl Service {
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
    pub(super) fn index_remote(&self, state: &mut State) {
        let jobs = std::mem::take(&mut self.remote_lock().jobs);
        for job in jobs {
            if let Err(e) = self.refresh_remote(state, &job) {
                tracing::warn!(project = %job.project, doc = %job.doc, error = %e,
                    "index refresh after sync failed; rebuilding on next use");
                state.index.remove(&job.project);
            }
        }
    }

    pub(super) fn refresh_remote(&self, state: &mut State, job: &RemoteJob) -> Result<()> {
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

    pub(super) fn remote_lock(&self) -> std::sync::MutexGuard<'_, Remote> {
        self.remote.remote.lock().unwrap_or_else(|p| p.into_inner())
    }
}
