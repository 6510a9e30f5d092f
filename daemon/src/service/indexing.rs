//! Keeping the project index current: building it on first use,
//! refreshing it after a write, publishing the events a change makes, and
//! saving its changed entries.

use std::collections::BTreeMap;

use serde_json::json;
use sitesync_model::{Component, ComponentId, DrawingId, ProjectId};
use sitesync_sync::RepoError;

use crate::index::ProjectIndex;

use super::*;

impl Service {
    /// The index of a project, building it on first use.
    pub(super) fn index<'s>(&self, state: &'s mut State, pid: ProjectId) -> Result<&'s mut ProjectIndex> {
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
    pub(super) fn refresh(
        &self,
        state: &mut State,
        pid: ProjectId,
        drawings: &[DrawingId],
        project_changed: bool,
    ) -> Result<()> {
        self.refresh_from(state, pid, drawings, project_changed, "local")
    }

    /// [`Self::refresh`] for changes from `origin` (a device id, or "local").
    pub(super) fn refresh_from(
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
    pub(super) fn refreshing(
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
    pub(super) fn refresh_drawing_entries(
        &self,
        state: &mut State,
        pid: ProjectId,
        dids: &[DrawingId],
    ) -> Result<()> {
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
    pub(super) fn refresh_components(
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
    pub(super) fn absorb(
        &self,
        index: &mut ProjectIndex,
        pid: ProjectId,
        fresh: Vec<Component>,
        origin: &str,
    ) -> bool {
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

    pub(super) fn publish_progress(&self, index: &ProjectIndex, pid: ProjectId) {
        let p = index.rollup(None);
        self.events.publish(
            "progress.updated",
            Some(pid),
            json!({"project_id": pid, "completion_percent": p.completion_percent,
                   "earned_hours": p.earned_hours, "budget_hours": p.budget_hours}),
        );
    }

    /// Saves the project index entries of every drawing changed since its
    /// last save (see [`crate::index`]), a batch at a time: the service's
    /// lock is held only to take a batch, never while encoding or writing
    /// it. Returns how many drawings were saved. One save runs at a time,
    /// so records land in the order their entries were taken. Writes are
    /// relaxed (durable with the next durable write or the flush at
    /// shutdown): a record a crash loses is older than its document, whose
    /// heads then differ, and the drawing is read from the document.
    ///
    /// The operations index catches up here too, so the change feed's
    /// notes do not wait for a listing, but not while a sync is taking
    /// documents in ([`Saving::catch_up_now`]).
    pub fn save_index(&self) -> Result<usize, RepoError> {
        /// Drawings taken per hold of the lock: ~64 × 50 views copied.
        const BATCH: usize = 64;
        let mut saving = self.saving.lock().unwrap_or_else(|p| p.into_inner());
        let projects: Vec<ProjectId> = if saving.catch_up_now(self.received.arrivals()) {
            self.lock().index.keys().copied().collect()
        } else {
            Vec::new()
        };
        for pid in projects {
            // A project gone meanwhile has nothing to index.
            let Ok(docs) = self.project_docs(pid) else {
                continue;
            };
            self.oplog
                .catch_up(&self.repo, pid.0, &docs, crate::oplog::Pace::Background)?;
        }
        let mut saved = 0;
        loop {
            let taken = {
                let mut state = self.lock();
                let mut taken = Vec::new();
                for (pid, index) in &mut state.index {
                    if taken.len() >= BATCH {
                        break;
                    }
                    let unindexed = |d: DrawingId| self.received.waiting(d.0);
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
    pub(super) fn give_back(state: &mut State, taken: &[crate::index::Unsaved]) {
        for u in taken {
            if let Some(index) = state.index.get_mut(&u.project) {
                index.mark_unsaved(u.drawing);
            }
        }
    }
}

/// What the periodic index saves remember between them.
#[derive(Default)]
pub(super) struct Saving {
    /// [`Received::arrivals`] at the last save.
    arrivals: u64,
    /// Saves in a row that left the operations index behind.
    deferred: u32,
}

impl Saving {
    /// Saves in a row that may leave the operations index behind while
    /// documents keep arriving: ~30 s at the daemon's 2-s tick, so a site
    /// whose devices write all day still has its notes indexed twice a
    /// minute without anyone listing.
    pub(super) const MAX_DEFERRED: u32 = 15;

    /// Whether this save should catch the operations index up, given the
    /// documents received so far: not when some arrived since the last
    /// save, for at most [`Self::MAX_DEFERRED`] saves in a row. A cold
    /// clone of the aged benchmark project spent 39% of the receiving
    /// daemon's CPU indexing records beside it (its flushes writing those
    /// pages too) and took 8× the fresh clone; the records wait until the
    /// documents stop coming, and a listing meanwhile catches up itself.
    pub(super) fn catch_up_now(&mut self, arrivals: u64) -> bool {
        let busy = arrivals != self.arrivals;
        self.arrivals = arrivals;
        if busy && self.deferred < Self::MAX_DEFERRED {
            self.deferred += 1;
            false
        } else {
            self.deferred = 0;
            true
        }
    }
}
