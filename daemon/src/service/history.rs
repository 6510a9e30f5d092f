//! The change log read back: the operations list, undo, and a component's history.

use serde::Serialize;
use sitesync_model::{
    ComponentId, DrawingId, HistoryEntry, ModelError, OperationId, OperationInfo, OperationKind, ProjectId,
    UndoReport,
};
use sitesync_sync::RepoError;

use crate::index::HistoryIndex;
use crate::paging::{Page, Paged};

use super::*;

/// The answer to an undo.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct UndoView {
    pub operation_id: OperationId,
    #[serde(flatten)]
    pub report: UndoReport,
}

impl Service {
    pub(super) fn drawing_ids(&self, state: &mut State, pid: ProjectId) -> Result<Vec<DrawingId>> {
        Ok(self.index(state, pid)?.drawings.keys().copied().collect())
    }

    /// One page of the project's operations, newest first, from the
    /// operations index ([`OpLog`]): only documents changed since the last
    /// listing are indexed, and without the service lock, so writes go on
    /// meanwhile.
    pub fn operations(&self, pid: ProjectId, page: Page) -> Result<Paged<OperationInfo>> {
        let docs = self.project_docs(pid)?;
        Ok(self.oplog.list(&self.repo, pid.0, &docs, page)?)
    }

    /// The project's document and its drawings'.
    pub(super) fn project_docs(&self, pid: ProjectId) -> Result<Vec<uuid::Uuid>> {
        let dids = {
            let mut state = self.lock();
            self.drawing_ids(&mut state, pid)?
        };
        Ok(std::iter::once(pid.0).chain(dids.iter().map(|d| d.0)).collect())
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

    /// A page of a component's history, newest first, from the drawing's
    /// history index (caught up with any changes since it was last read;
    /// kept for the few drawings looked at last).
    pub fn history(&self, pid: ProjectId, cid: ComponentId, page: Page) -> Result<Paged<HistoryEntry>> {
        let (did, kept) = {
            let mut state = self.lock();
            let did = self.component_locked(&mut state, pid, cid)?.drawing_id;
            (did, state.history.is_kept(did))
        };
        // A first look reads the drawing's whole change log: from a copy,
        // holding neither the service's lock nor the repository's (at
        // 25,000 writes of history it took ~0.4 s, and every write waited).
        // A kept index catches up in place: copying a hot drawing costs
        // more than the few changes since the last look.
        let first = if kept {
            None
        } else {
            let copy = self.repo.read_drawing(did, |d| d.automerge().clone())?;
            Some(HistoryIndex::read(&copy, &[])?)
        };
        let mut state = self.lock();
        let index = state.history.get(did);
        if let Some(caught) = first {
            index.absorb(caught);
        }
        // What arrived since the copy, or since the last look.
        self.repo.read_drawing(did, |d| index.catch_up(d))??;
        Ok(index.page(cid, page))
    }
}
