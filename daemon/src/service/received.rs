//! Another device's changes on their way into the index.
//!
//! The repository's change feed tells [`Received`] about every
//! document a peer's changes reached, inside the repository's lock and
//! before the sync step that made them durable acknowledges them: the clock
//! moves past them there, and the document is queued. The indexer thread
//! ([`Service::start_indexer`]) indexes the queue a batch at a time under
//! the service's lock. A sync connection never waits for the index, and a
//! request waits for at most one batch: during a 500,000-component clone,
//! thousands of drawings arrive faster than their views are read.
//!
//! Until the indexer has taken a document, reads of the index do not show
//! its new changes (they show them once its events are published), and an
//! index save skips the drawing, so no saved record claims heads whose
//! changes its entries lack.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use sitesync_model::automerge::ChangeHash;
use sitesync_model::{Component, DeviceId, DrawingDoc, DrawingId, OpMeta, ProjectId, Spread as _, Timestamp};
use sitesync_sync::repo::Subscriber;
use sitesync_sync::{Origin, Persisted, RepoError};
use uuid::Uuid;

use super::*;

/// Documents the indexer takes per hold of the service's lock: a drawing
/// is ~1–5 ms of reading views, so a write or a request waits behind the
/// indexer for at most ~0.3 s. Taking the whole queue at once made the
/// first request during a 500,000-component clone wait over 30 s.
pub(super) const INDEX_BATCH: usize = 64;

/// Up to this many components changed by a remote apply are read under
/// the repository's lock; past it, from a copy of the document. The copy
/// (~0.05 ms, ~115 KB) was ~5% of a peer's CPU for each replicated single
/// write (`perf`), more than reading one view in place.
pub(super) const READ_IN_PLACE: usize = 4;

/// Received documents waiting for the index; shared by the repository's
/// change feed and the indexer thread, which holds no reference to the
/// service while it waits.
pub(super) struct Received {
    /// One entry per document, in the order they arrived (a second arrival
    /// before it is indexed joins the first).
    queue: Mutex<VecDeque<Arrival>>,
    /// Signalled when a document is queued.
    queued: Condvar,
    /// Moved past every received change, so this device's next write
    /// orders after everything it has seen.
    clock: Arc<Clock>,
    /// This device: its own changes coming back from a peer name no origin.
    device: DeviceId,
    /// Documents received since the start, counted as the change feed
    /// tells them: the periodic index save compares it between saves to
    /// tell whether a sync is taking documents in ([`Service::save_index`]).
    arrivals: AtomicU64,
}

/// One received document to index.
pub(super) struct Arrival {
    pub(super) project: ProjectId,
    pub(super) doc: Uuid,
    /// The document's heads before the first arrival this entry stands
    /// for: everything since then is re-read.
    pub(super) before: Vec<ChangeHash>,
    /// The device the newest changes came from (the events' origin).
    pub(super) origin: String,
}

impl Received {
    pub(super) fn new(clock: Arc<Clock>, device: DeviceId) -> Self {
        Self {
            queue: Mutex::default(),
            queued: Condvar::new(),
            clock,
            device,
            arrivals: AtomicU64::new(0),
        }
    }

    /// How many documents' changes have arrived since the start.
    pub(super) fn arrivals(&self) -> u64 {
        self.arrivals.load(Ordering::Relaxed)
    }

    /// Whether `doc` has received changes the index does not have yet.
    pub(super) fn waiting(&self, doc: Uuid) -> bool {
        self.lock().iter().any(|a| a.doc == doc)
    }

    /// How many documents wait for the index.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Takes up to `n` documents, oldest first.
    fn take(&self, n: usize) -> Vec<Arrival> {
        let mut queue = self.lock();
        let n = n.min(queue.len());
        queue.drain(..n).collect()
    }

    /// Waits until a document is queued or `timeout` passes.
    fn wait(&self, timeout: Duration) {
        let queue = self.lock();
        if queue.is_empty() {
            drop(self.queued.wait_timeout(queue, timeout));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Arrival>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Another device's changes, as the change feed tells them (inside the
/// repository's lock: it only queues); this device's own are indexed by
/// the write that made them.
impl Subscriber for Received {
    fn persisted(&self, persisted: &[Persisted]) {
        let mut queued = false;
        for p in persisted {
            let Origin::Received(from) = p.origin else {
                continue;
            };
            // Who made the newest changes, and when: the events' origin, and
            // the time this device's next write must order after. This
            // device's own changes coming back (made before a restart) are
            // skipped.
            let newest = p
                .commits
                .iter()
                .flatten()
                .filter_map(|c| {
                    let meta = OpMeta::decode(c.message.as_deref()?)?;
                    (meta.device != self.device).then_some((c.time, meta.device))
                })
                .max();
            if let Some((time, _)) = newest {
                self.clock.observe(Timestamp(time));
            }
            let arrival = Arrival {
                project: ProjectId(from.project),
                doc: p.id,
                before: p.before.clone(),
                origin: newest.map_or_else(|| "remote".to_owned(), |(_, d)| d.to_string()),
            };
            let mut queue = self.lock();
            match queue.iter_mut().find(|a| a.doc == arrival.doc) {
                // Its `before` is older and covers these changes too.
                Some(waiting) => waiting.origin = arrival.origin,
                None => queue.push_back(arrival),
            }
            queued = true;
            self.arrivals.fetch_add(1, Ordering::Relaxed);
        }
        if queued {
            self.queued.notify_one();
        }
    }
}

impl Service {
    /// Starts the thread that indexes received changes as they are queued;
    /// it ends once the service is dropped. Whoever owns the service owns
    /// the thread (the daemon's `main`); without it, received changes wait
    /// for [`Self::index_received`].
    pub fn start_indexer(self: &Arc<Self>) -> std::io::Result<()> {
        /// How often an idle indexer checks whether the service is gone.
        const IDLE: Duration = Duration::from_secs(1);
        let service: Weak<Self> = Arc::downgrade(self);
        let received = self.received.clone();
        std::thread::Builder::new()
            .name("index-received".into())
            .spawn(move || {
                loop {
                    received.wait(IDLE);
                    let Some(svc) = service.upgrade() else { return };
                    while svc.index_received() > 0 {}
                }
            })
            .map(drop)
    }

    /// Indexes up to [`INDEX_BATCH`] received documents, oldest first,
    /// under the service's lock; returns how many it took.
    pub fn index_received(&self) -> usize {
        let mut state = self.lock();
        let batch = self.received.take(INDEX_BATCH);
        let views = self.read_received(&batch);
        for (arrival, views) in batch.iter().zip(views) {
            if let Err(e) = self.refresh_received(&mut state, arrival, views) {
                tracing::warn!(project = %arrival.project, doc = %arrival.doc, error = %e,
                    "index refresh after sync failed; rebuilding on next use");
                state.index.remove(&arrival.project);
            }
        }
        batch.len()
    }

    /// The changed component views of each received drawing, in the
    /// batch's order (`None`: a project's document, or a drawing not held
    /// as one yet). A few changed components are read in place; more are
    /// read from a copy, so the repository's lock is free for the next
    /// apply while they are, and the copies are read side by side
    /// ([`sitesync_sync::Workers`]): a clone brings every component of
    /// each drawing, and after its last apply the index's reading is all
    /// that is left to do.
    fn read_received(&self, batch: &[Arrival]) -> Vec<Option<Result<Vec<Component>>>> {
        enum Read {
            Views(Result<Vec<Component>>),
            Copy(Box<(DrawingDoc, Vec<ComponentId>)>),
            Nothing,
        }
        let reads: Vec<Read> = batch
            .iter()
            .map(|arrival| {
                if arrival.doc == arrival.project.0 {
                    return Read::Nothing;
                }
                let read = self.repo.read_drawing(DrawingId(arrival.doc), |d| {
                    let changed = d.changed_components(&arrival.before);
                    if changed.len() <= READ_IN_PLACE {
                        Ok(d.components_of(&changed))
                    } else {
                        Err(Box::new((d.clone(), changed)))
                    }
                });
                match read {
                    Ok(Ok(views)) => Read::Views(views.map_err(Into::into)),
                    Ok(Err(copy)) => Read::Copy(copy),
                    // Listed before its document arrived, or still raw.
                    Err(RepoError::NotFound { .. }) => Read::Nothing,
                    Err(e) => Read::Views(Err(e.into())),
                }
            })
            .collect();
        self.repo.workers().map(reads, |read| match read {
            Read::Views(views) => Some(views),
            Read::Copy(copy) => Some(copy.0.components_of(&copy.1).map_err(Into::into)),
            Read::Nothing => None,
        })
    }

    /// Puts one received document's changes into the index: its `views`
    /// for a drawing, the drawings it newly lists for a project's document.
    fn refresh_received(
        &self,
        state: &mut State,
        job: &Arrival,
        views: Option<Result<Vec<Component>>>,
    ) -> Result<()> {
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
        let Some(fresh) = views else { return Ok(()) };
        let fresh = fresh?;
        Self::refreshing(state, pid, |state| {
            let index = self.index(state, pid)?;
            if self.absorb(index, pid, fresh, origin) {
                self.publish_progress(index, pid);
            }
            Ok(())
        })
    }
}
