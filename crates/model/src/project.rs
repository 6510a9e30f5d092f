//! The project document: the project's own fields, its milestone templates
//! and its drawing list. Pure functions over an Automerge document; the
//! caller decides where the bytes live.

use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, ObjId, ObjType, ReadDoc};
use serde::{Deserialize, Serialize};

use crate::crdt::{self, FieldReader, Fields};
use crate::error::{ModelError, Result};
use crate::ids::{DrawingId, ProjectId, TemplateId};
use crate::operation::WriteCtx;
use crate::schema::{self, DocKind};
use crate::template::{NewTemplate, Template, require_text};
use crate::time::Timestamp;

/// A project as requested.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NewProject {
    pub name: String,
    #[serde(default)]
    pub code: Option<String>,
}

/// A change to a project: absent fields stay as they are; `Some(None)` clears.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProjectPatch {
    pub name: Option<String>,
    pub code: Option<Option<String>>,
}

/// A project's own fields as stored (rollups are added by the caller).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProjectInfo {
    pub id: ProjectId,
    pub name: String,
    pub code: Option<String>,
    pub deleted: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub updated_by: String,
}

/// A drawing as requested.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NewDrawing {
    pub number: String,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub revision: Option<String>,
    #[serde(default)]
    pub parent_id: Option<DrawingId>,
    #[serde(default)]
    pub area: Option<String>,
    #[serde(default)]
    pub system: Option<String>,
}

/// A change to a drawing: absent fields stay; `Some(None)` clears.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DrawingPatch {
    pub number: Option<String>,
    pub title: Option<Option<String>>,
    pub revision: Option<Option<String>>,
    pub parent_id: Option<Option<DrawingId>>,
    pub area: Option<Option<String>>,
    pub system: Option<Option<String>>,
}

/// A drawing's entry in the project document. Its drawing document has the
/// same id.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DrawingInfo {
    pub id: DrawingId,
    pub project_id: ProjectId,
    pub number: String,
    pub title: Option<String>,
    pub revision: Option<String>,
    pub parent_id: Option<DrawingId>,
    pub area: Option<String>,
    pub system: Option<String>,
    pub deleted: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub updated_by: String,
}

/// A project document.
#[derive(Debug, Clone)]
pub struct ProjectDoc {
    doc: Automerge,
}

impl ProjectDoc {
    /// Wraps a document without checking it (see `from_automerge`).
    fn wrap(doc: Automerge) -> Self {
        Self { doc }
    }
}

schema::document_plumbing!(ProjectDoc, DocKind::Project);

fn optional_text(field: &str, value: &Option<String>) -> Result<()> {
    match value {
        Some(v) => require_text(field, v),
        None => Ok(()),
    }
}

impl ProjectDoc {
    /// Creates the document of a new project.
    pub fn create(id: ProjectId, new: &NewProject, ctx: &WriteCtx, actor: ActorId) -> Result<Self> {
        require_text("name", &new.name)?;
        optional_text("code", &new.code)?;
        let mut doc = schema::new_doc(actor);
        schema::transact(&mut doc, ctx, |tx| {
            schema::init_root(tx, DocKind::Project)?;
            tx.put(automerge::ROOT, "id", id.to_string())?;
            tx.put(automerge::ROOT, "created_at", ctx.now.millis())?;
            tx.put_object(automerge::ROOT, "templates", ObjType::Map)?;
            tx.put_object(automerge::ROOT, "drawings", ObjType::Map)?;
            let root = automerge::ROOT;
            crdt::write_register(
                tx,
                &root,
                "name",
                ctx,
                new.name.trim().to_owned(),
                String::new(),
                None,
            )?;
            crdt::write_register(tx, &root, "code", ctx, new.code.clone(), None, None)?;
            crdt::write_register(tx, &root, "deleted", ctx, false, false, None)?;
            Ok(((), 1))
        })?;
        Ok(Self::wrap(doc))
    }

    /// The project's id.
    pub fn id(&self) -> Result<ProjectId> {
        let s = crdt::read_str(&self.doc, &automerge::ROOT, "id")?;
        s.parse().map_err(|e| ModelError::corrupt("id", e))
    }

    /// The project's own fields.
    pub fn info(&self) -> Result<ProjectInfo> {
        let fields = Fields::read(&self.doc, &automerge::ROOT)?;
        let created_at = Timestamp(fields.int("created_at")?);
        let mut r = FieldReader::new(&fields);
        let name = r.get("name", String::new())?;
        let code = r.get("code", None)?;
        let deleted = r.get("deleted", false)?;
        let (updated_at, updated_by) = r.latest(created_at);
        Ok(ProjectInfo {
            id: self.id()?,
            name,
            code,
            deleted,
            created_at,
            updated_at,
            updated_by,
        })
    }

    /// Renames the project or changes its code.
    pub fn update(&mut self, ctx: &WriteCtx, patch: &ProjectPatch) -> Result<ProjectInfo> {
        if let Some(name) = &patch.name {
            require_text("name", name)?;
        }
        if let Some(code) = &patch.code {
            optional_text("code", code)?;
        }
        schema::transact(&mut self.doc, ctx, |tx| {
            let root = automerge::ROOT;
            let mut n = 0;
            if let Some(name) = &patch.name {
                crdt::write_register(
                    tx,
                    &root,
                    "name",
                    ctx,
                    name.trim().to_owned(),
                    String::new(),
                    None,
                )?;
                n += 1;
            }
            if let Some(code) = &patch.code {
                crdt::write_register(tx, &root, "code", ctx, code.clone(), None, None)?;
                n += 1;
            }
            Ok(((), n))
        })?;
        self.info()
    }

    /// Soft-deletes (`true`) or restores (`false`) the project.
    pub fn set_deleted(&mut self, ctx: &WriteCtx, deleted: bool) -> Result<ProjectInfo> {
        schema::transact(&mut self.doc, ctx, |tx| {
            crdt::write_register(tx, &automerge::ROOT, "deleted", ctx, deleted, false, None)?;
            Ok(((), 1))
        })?;
        self.info()
    }

    fn templates_obj(&self) -> Result<ObjId> {
        crdt::require_map(&self.doc, &automerge::ROOT, "templates")
    }

    fn drawings_obj(&self) -> Result<ObjId> {
        crdt::require_map(&self.doc, &automerge::ROOT, "drawings")
    }

    /// Adds a milestone template. Templates are immutable once created.
    pub fn add_template(&mut self, ctx: &WriteCtx, id: TemplateId, new: NewTemplate) -> Result<Template> {
        let template = new.into_template(id)?;
        let obj = self.templates_obj()?;
        let json = serde_json::to_string(&template).expect("templates serialize");
        schema::transact(&mut self.doc, ctx, |tx| {
            tx.put(&obj, id.to_string(), json)?;
            Ok(((), 1))
        })?;
        Ok(template)
    }

    /// Every template, ordered by name.
    pub fn templates(&self) -> Result<Vec<Template>> {
        let mut out = read_templates(&self.doc, &self.templates_obj()?)?;
        out.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// One template; `field` names the request field that referenced it.
    pub fn template(&self, id: TemplateId, field: &str) -> Result<Template> {
        read_template(&self.doc, &self.templates_obj()?, id)?.ok_or_else(|| ModelError::TemplateNotFound {
            field: field.to_owned(),
            id,
        })
    }

    fn drawing_obj(&self, id: DrawingId) -> Result<ObjId> {
        crdt::read_map(&self.doc, &self.drawings_obj()?, &id.to_string())?
            .ok_or(ModelError::DrawingNotFound { id })
    }

    /// Checks that `parent` may be the parent of drawing `child`: it exists,
    /// and the parent chain from it does not come back to `child`.
    fn check_parent(&self, child: DrawingId, parent: DrawingId) -> Result<()> {
        let mut at = Some(parent);
        let mut steps = 0;
        while let Some(id) = at {
            if id == child {
                return Err(ModelError::invalid(
                    "parent_id",
                    "a drawing cannot be its own ancestor",
                ));
            }
            let info = self.drawing(id).map_err(|e| match e {
                ModelError::DrawingNotFound { id } => ModelError::invalid(
                    "parent_id",
                    format!("drawing {id} does not exist in this project"),
                ),
                other => other,
            })?;
            at = info.parent_id;
            steps += 1;
            if steps > 10_000 {
                return Err(ModelError::corrupt("drawings", "parent chain does not end"));
            }
        }
        Ok(())
    }

    /// Adds a drawing to the list. The caller creates its drawing document
    /// ([`crate::DrawingDoc::create`]) with the same id.
    pub fn add_drawing(&mut self, ctx: &WriteCtx, id: DrawingId, new: &NewDrawing) -> Result<DrawingInfo> {
        require_text("number", &new.number)?;
        for (field, v) in [
            ("title", &new.title),
            ("revision", &new.revision),
            ("area", &new.area),
            ("system", &new.system),
        ] {
            optional_text(field, v)?;
        }
        if let Some(parent) = new.parent_id {
            self.check_parent(id, parent)?;
        }
        let drawings = self.drawings_obj()?;
        schema::transact(&mut self.doc, ctx, |tx| {
            let obj = tx.put_object(&drawings, id.to_string(), ObjType::Map)?;
            tx.put(&obj, "id", id.to_string())?;
            tx.put(&obj, "created_at", ctx.now.millis())?;
            crdt::write_register(
                tx,
                &obj,
                "number",
                ctx,
                new.number.trim().to_owned(),
                String::new(),
                None,
            )?;
            for (key, v) in [
                ("title", &new.title),
                ("revision", &new.revision),
                ("area", &new.area),
                ("system", &new.system),
            ] {
                crdt::write_register(tx, &obj, key, ctx, v.clone(), None, None)?;
            }
            crdt::write_register(tx, &obj, "parent_id", ctx, new.parent_id, None, None)?;
            crdt::write_register(tx, &obj, "deleted", ctx, false, false, None)?;
            Ok(((), 1))
        })?;
        self.drawing(id)
    }

    /// Changes a drawing's fields.
    pub fn update_drawing(
        &mut self,
        ctx: &WriteCtx,
        id: DrawingId,
        patch: &DrawingPatch,
    ) -> Result<DrawingInfo> {
        let obj = self.drawing_obj(id)?;
        if self.drawing(id)?.deleted {
            return Err(ModelError::DrawingDeleted { drawing: id });
        }
        if let Some(number) = &patch.number {
            require_text("number", number)?;
        }
        for (field, v) in [
            ("title", &patch.title),
            ("revision", &patch.revision),
            ("area", &patch.area),
            ("system", &patch.system),
        ] {
            if let Some(v) = v {
                optional_text(field, v)?;
            }
        }
        if let Some(Some(parent)) = patch.parent_id {
            self.check_parent(id, parent)?;
        }
        schema::transact(&mut self.doc, ctx, |tx| {
            let mut n = 0;
            if let Some(number) = &patch.number {
                crdt::write_register(
                    tx,
                    &obj,
                    "number",
                    ctx,
                    number.trim().to_owned(),
                    String::new(),
                    None,
                )?;
                n += 1;
            }
            for (key, v) in [
                ("title", &patch.title),
                ("revision", &patch.revision),
                ("area", &patch.area),
                ("system", &patch.system),
            ] {
                if let Some(v) = v {
                    crdt::write_register(tx, &obj, key, ctx, v.clone(), None, None)?;
                    n += 1;
                }
            }
            if let Some(parent) = patch.parent_id {
                crdt::write_register(tx, &obj, "parent_id", ctx, parent, None, None)?;
                n += 1;
            }
            Ok(((), n))
        })?;
        self.drawing(id)
    }

    /// Soft-deletes (`true`) or restores (`false`) a drawing.
    pub fn set_drawing_deleted(
        &mut self,
        ctx: &WriteCtx,
        id: DrawingId,
        deleted: bool,
    ) -> Result<DrawingInfo> {
        let obj = self.drawing_obj(id)?;
        schema::transact(&mut self.doc, ctx, |tx| {
            crdt::write_register(tx, &obj, "deleted", ctx, deleted, false, None)?;
            Ok(((), 1))
        })?;
        self.drawing(id)
    }

    /// One drawing's entry.
    pub fn drawing(&self, id: DrawingId) -> Result<DrawingInfo> {
        let obj = self.drawing_obj(id)?;
        read_drawing(&self.doc, obj, id, self.id()?)
    }

    /// Every drawing, deleted ones included, ordered by number.
    pub fn drawings(&self) -> Result<Vec<DrawingInfo>> {
        let project = self.id()?;
        let drawings = Fields::read(&self.doc, &self.drawings_obj()?)?;
        let mut out = Vec::new();
        for key in drawings.keys() {
            let id: DrawingId = key
                .parse()
                .map_err(|e| ModelError::corrupt(format!("drawings.{key}"), e))?;
            out.push(read_drawing(&self.doc, drawings.require_map(key)?, id, project)?);
        }
        out.sort_by(|a, b| a.number.cmp(&b.number).then(a.id.cmp(&b.id)));
        Ok(out)
    }
}

fn read_drawing(doc: &Automerge, obj: ObjId, id: DrawingId, project_id: ProjectId) -> Result<DrawingInfo> {
    let fields = Fields::read(doc, &obj)?;
    let created_at = Timestamp(fields.int("created_at")?);
    let mut r = FieldReader::new(&fields);
    let number = r.get("number", String::new())?;
    let title = r.get("title", None)?;
    let revision = r.get("revision", None)?;
    let parent_id = r.get("parent_id", None)?;
    let area = r.get("area", None)?;
    let system = r.get("system", None)?;
    let deleted = r.get("deleted", false)?;
    let (updated_at, updated_by) = r.latest(created_at);
    Ok(DrawingInfo {
        id,
        project_id,
        number,
        title,
        revision,
        parent_id,
        area,
        system,
        deleted,
        created_at,
        updated_at,
        updated_by,
    })
}

/// Reads one template from a `templates` map (project or drawing document).
pub(crate) fn read_template<D: ReadDoc>(doc: &D, obj: &ObjId, id: TemplateId) -> Result<Option<Template>> {
    let key = id.to_string();
    if doc.get(obj, &key)?.is_none() {
        return Ok(None);
    }
    let json = crdt::read_str(doc, obj, &key)?;
    serde_json::from_str(&json)
        .map(Some)
        .map_err(|e| ModelError::corrupt(format!("templates.{key}"), e))
}

/// Reads every template of a `templates` map.
pub(crate) fn read_templates<D: ReadDoc>(doc: &D, obj: &ObjId) -> Result<Vec<Template>> {
    let mut out = Vec::new();
    for key in doc.keys(obj) {
        let json = crdt::read_str(doc, obj, &key)?;
        out.push(
            serde_json::from_str(&json).map_err(|e| ModelError::corrupt(format!("templates.{key}"), e))?,
        );
    }
    Ok(out)
}
