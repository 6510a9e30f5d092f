//! Projects, their templates and drawings, and progress rollups.

use serde::Serialize;
use serde_json::json;
use sitesync_model::{
    DrawingDoc, DrawingId, DrawingInfo, DrawingPatch, GroupBy, NewDrawing, NewProject, NewTemplate,
    OperationKind, Progress, ProjectDoc, ProjectId, ProjectPatch, Status, Template, TemplateId, Timestamp,
};
use sitesync_sync::{Doc, RepoError};

use crate::index::ProjectIndex;

use super::*;

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

impl Service {
    pub fn create_project(&self, user: &str, new: NewProject) -> Result<ProjectView> {
        let mut state = self.lock();
        let pid = ProjectId(new_id());
        let ctx = self.ctx(user, OperationKind::ProjectCreate);
        self.repo.write(|tx| {
            let doc = ProjectDoc::create(pid, &new, &ctx, tx.actor())?;
            tx.insert(pid.0, Doc::Project(doc));
            self.bind(tx, pid, pid.0);
            Ok(())
        })?;
        self.index(&mut state, pid)?;
        let view = self.project_view(&mut state, pid)?;
        self.events
            .publish("project.created", Some(pid), json!({"project": &view}));
        Ok(view)
    }

    pub(super) fn project_view(&self, state: &mut State, pid: ProjectId) -> Result<ProjectView> {
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

    /// The projects held here whose own document has arrived (`proj/` is
    /// written with a project's first document, which may be a drawing).
    pub(super) fn project_ids(&self) -> Result<Vec<ProjectId>> {
        let mut out = Vec::new();
        for name in self
            .repo
            .store()
            .meta_names(sitesync_sync::keys::PROJECT)
            .map_err(RepoError::from)?
        {
            let Ok(pid) = name.parse::<ProjectId>() else {
                continue;
            };
            if self.repo.heads(pid.0)?.is_some() {
                out.push(pid);
            }
        }
        Ok(out)
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

    pub(super) fn existing(&self, pid: ProjectId) -> Result<()> {
        let mut state = self.lock();
        self.index(&mut state, pid).map(|_| ())
    }

    pub(super) fn drawing_view(index: &ProjectIndex, info: DrawingInfo) -> DrawingView {
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

    pub(super) fn drawing_locked(
        &self,
        state: &mut State,
        pid: ProjectId,
        did: DrawingId,
    ) -> Result<DrawingView> {
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

    pub fn progress(&self, pid: ProjectId, group_by: Option<GroupBy>) -> Result<Progress> {
        let mut state = self.lock();
        Ok(self.index(&mut state, pid)?.rollup(group_by))
    }
}
