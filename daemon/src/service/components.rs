//! Components and their milestones: single writes and bulk updates.

use sitesync_model::bulk::BulkOutcome;
use sitesync_model::{
    BulkOptions, Component, ComponentId, ComponentPatch, DrawingDoc, DrawingId, MilestoneUpdate, ModelError,
    NewComponent, OperationId, OperationKind, ProjectId, WriteCtx, apply_bulk,
};

use crate::index::ComponentQuery;
use crate::paging::{Page, Paged};

use super::*;

impl Service {
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

    pub(super) fn component_locked(
        &self,
        state: &mut State,
        pid: ProjectId,
        cid: ComponentId,
    ) -> Result<Component> {
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
    pub(super) fn with_component(
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
}
