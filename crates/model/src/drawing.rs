//! The drawing document: its components and their milestones. Every
//! mutation validates first and writes in one transaction, so an invalid
//! request changes nothing; every read derives completion and status.
//!
//! One file, over 700 lines, on purpose: every function here reads or
//! writes the same Automerge layout (a component's map, its milestones,
//! its quantity entries), and keeping them together keeps that layout in
//! one place a reader can check against `schema`.

use std::collections::{BTreeMap, HashMap};

use automerge::transaction::{Transactable, Transaction};
use automerge::{ActorId, Automerge, ObjId, ObjType, ReadDoc};
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::crdt::{self, FieldReader, Fields};
use crate::error::{ModelError, Result};
use crate::ids::{ComponentId, DeviceId, DrawingId, ProjectId, TemplateId};
use crate::operation::WriteCtx;
use crate::progress::{self, Status};
use crate::project::read_template;
use crate::schema::{self, DocKind};
use crate::template::{MAX_TEXT_LEN, MilestoneDef, Template, WorkflowType, require_text};
use crate::time::Timestamp;

/// Longest attribute value accepted (free text such as a note).
pub const MAX_ATTRIBUTE_LEN: usize = 1000;

/// A component as requested.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NewComponent {
    pub tag: String,
    pub kind: String,
    pub template_id: Option<TemplateId>,
    #[serde(default)]
    pub quantity_total: Option<f64>,
    #[serde(default)]
    pub unit: Option<String>,
    #[serde(default)]
    pub budget_hours: Option<f64>,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

/// A change to a component's fields: absent fields stay; `Some(None)` clears.
/// Attributes are merged key by key; a `None` value removes that attribute.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ComponentPatch {
    pub tag: Option<String>,
    pub kind: Option<String>,
    pub quantity_total: Option<Option<f64>>,
    pub unit: Option<Option<String>>,
    pub budget_hours: Option<Option<f64>>,
    pub attributes: Option<BTreeMap<String, Option<String>>>,
}

/// The new value of one milestone, as the API accepts it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MilestoneValue {
    /// Discrete: done or not.
    Completed(bool),
    /// Percentage: 0..=100.
    Percent(f64),
    /// Quantity, absolute (≥ 0): recorded as an entry of (value − the
    /// quantity the writer saw), so concurrent entries all count.
    Quantity(f64),
    /// Quantity, relative; the result must not go below 0.
    QuantityDelta(f64),
}

impl MilestoneValue {
    /// The request field this value came from, for error paths.
    pub fn field(self) -> &'static str {
        match self {
            Self::Completed(_) => "completed",
            Self::Percent(_) => "percent",
            Self::Quantity(_) => "quantity",
            Self::QuantityDelta(_) => "quantity_delta",
        }
    }

    fn workflow(self) -> WorkflowType {
        match self {
            Self::Completed(_) => WorkflowType::Discrete,
            Self::Percent(_) => WorkflowType::Percentage,
            Self::Quantity(_) | Self::QuantityDelta(_) => WorkflowType::Quantity,
        }
    }
}

/// One milestone update: which component, which milestone, what value.
#[derive(Clone, Debug, PartialEq)]
pub struct MilestoneUpdate {
    pub component_id: ComponentId,
    pub milestone: String,
    pub value: MilestoneValue,
    /// The day the work was done, when recorded late (YYYY-MM-DD).
    pub effective_date: Option<String>,
}

/// A losing concurrent write of a milestone, kept visible until the next
/// write of that milestone.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConflictView {
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub value: serde_json::Value,
    pub updated_by: String,
    pub updated_at: Timestamp,
    pub device_id: DeviceId,
}

/// A milestone as returned: exactly one of `completed`, `percent`,
/// `quantity` is set, by workflow type.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MilestoneView {
    pub key: String,
    pub name: String,
    pub weight: f64,
    pub completed: Option<bool>,
    pub percent: Option<f64>,
    pub quantity: Option<f64>,
    pub updated_at: Option<Timestamp>,
    pub updated_by: Option<String>,
    pub device_id: Option<DeviceId>,
    pub conflicts: Vec<ConflictView>,
}

/// A component as returned, with derived completion and status.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Component {
    pub id: ComponentId,
    pub project_id: ProjectId,
    pub drawing_id: DrawingId,
    pub tag: String,
    pub kind: String,
    pub template_id: TemplateId,
    pub workflow_type: WorkflowType,
    pub quantity_total: Option<f64>,
    pub unit: Option<String>,
    pub budget_hours: Option<f64>,
    pub attributes: BTreeMap<String, String>,
    pub completion_percent: f64,
    pub status: Status,
    pub deleted: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub updated_by: String,
    pub milestones: Vec<MilestoneView>,
}

/// A drawing document.
#[derive(Debug, Clone)]
pub struct DrawingDoc {
    doc: Automerge,
    /// Summaries of quantity entries, valid while the document is at the
    /// heads they were kept at: brought forward by this type's own
    /// milestone writes, dropped by anything else that changes it.
    quantities: Quantities,
}

/// [`crdt::EntriesSummary`]s of one document state.
#[derive(Debug, Clone, Default)]
struct Quantities {
    /// The heads the summaries describe.
    heads: Vec<automerge::ChangeHash>,
    sums: crdt::SumMap,
}

schema::document_plumbing!(DrawingDoc, DocKind::Drawing);

impl DrawingDoc {
    /// Wraps a document without checking it (see `from_automerge`).
    fn wrap(doc: Automerge) -> Self {
        Self {
            doc,
            quantities: Quantities::default(),
        }
    }
}

/// The objects of one component, located once per operation.
pub(crate) struct Located {
    pub obj: ObjId,
    /// `obj`'s fields as read when located: one pass serves the template
    /// id, the nested maps and the checks before a write (stale after it).
    pub fields: Fields,
    pub attributes: ObjId,
    pub milestones: ObjId,
    pub template: Template,
}

impl DrawingDoc {
    /// Creates the (empty) document of a new drawing. Only the device that
    /// creates the drawing calls this; every other replica receives it by
    /// sync, so the root maps are never created twice.
    pub fn create(project: ProjectId, drawing: DrawingId, ctx: &WriteCtx, actor: ActorId) -> Result<Self> {
        let mut doc = schema::new_doc(actor);
        schema::transact(&mut doc, ctx, |tx| {
            schema::init_root(tx, DocKind::Drawing)?;
            tx.put(automerge::ROOT, "project_id", project.to_string())?;
            tx.put(automerge::ROOT, "drawing_id", drawing.to_string())?;
            tx.put_object(automerge::ROOT, "templates", ObjType::Map)?;
            tx.put_object(automerge::ROOT, "components", ObjType::Map)?;
            Ok(((), 1))
        })?;
        Ok(Self::wrap(doc))
    }

    /// The project this drawing belongs to.
    pub fn project_id(&self) -> Result<ProjectId> {
        root_id(&self.doc, "project_id")
    }

    /// This drawing's id (also the document's id).
    pub fn drawing_id(&self) -> Result<DrawingId> {
        root_id(&self.doc, "drawing_id")
    }

    /// Whether the component lives in this document.
    pub fn has_component(&self, id: ComponentId) -> bool {
        components_obj(&self.doc)
            .ok()
            .and_then(|c| self.doc.get(&c, id.to_string()).ok().flatten())
            .is_some()
    }

    /// Every component id in the document, deleted ones included.
    pub fn component_ids(&self) -> Result<Vec<ComponentId>> {
        let obj = components_obj(&self.doc)?;
        self.doc
            .keys(&obj)
            .map(|k| {
                k.parse()
                    .map_err(|e| ModelError::corrupt(format!("components.{k}"), e))
            })
            .collect()
    }

    /// Adds a component using `template` (read from the project document).
    pub fn add_component(
        &mut self,
        ctx: &WriteCtx,
        id: ComponentId,
        new: &NewComponent,
        template: &Template,
    ) -> Result<Component> {
        schema::transact(&mut self.doc, ctx, |tx| {
            Ok((create_component(tx, ctx, id, new, template)?, 1))
        })?;
        self.component(id)
    }

    /// Changes a component's fields. Refused for a deleted component.
    pub fn update_component(
        &mut self,
        ctx: &WriteCtx,
        id: ComponentId,
        patch: &ComponentPatch,
    ) -> Result<Component> {
        schema::transact(&mut self.doc, ctx, |tx| {
            let n = update_component(tx, ctx, id, patch)?;
            Ok(((), n))
        })?;
        self.component(id)
    }

    /// Soft-deletes (`true`) or restores (`false`) a component. Edits made
    /// concurrently with a delete are kept and come back on restore.
    pub fn set_component_deleted(
        &mut self,
        ctx: &WriteCtx,
        id: ComponentId,
        deleted: bool,
    ) -> Result<Component> {
        schema::transact(&mut self.doc, ctx, |tx| {
            let at = locate(tx, id)?;
            crdt::write_register(tx, &at.obj, "deleted", ctx, deleted, false, None)?;
            Ok(((), 1))
        })?;
        self.component(id)
    }

    /// Applies one milestone update as its own operation.
    pub fn update_milestone(&mut self, ctx: &WriteCtx, update: &MilestoneUpdate) -> Result<Component> {
        let mut sums = self.take_sums();
        schema::transact(&mut self.doc, ctx, |tx| {
            let mut writing = crdt::Sums::Writing(&mut sums);
            Ok((
                apply_update(tx, ctx, update, &mut Templates::default(), &mut writing)?,
                1,
            ))
        })?;
        // The answer reads the component's other quantity milestones too:
        // kept from now on as well.
        let view = ComponentReader::new(&self.doc, None)?
            .read_with(update.component_id, &mut crdt::Sums::Writing(&mut sums));
        self.keep_sums(sums);
        view
    }

    /// The quantity summaries kept for this document as it is now (none
    /// when it changed since), taken out for a write to bring forward.
    pub(crate) fn take_sums(&mut self) -> crdt::SumMap {
        let q = std::mem::take(&mut self.quantities);
        if q.heads == self.doc.get_heads() {
            q.sums
        } else {
            crdt::SumMap::new()
        }
    }

    /// Keeps `sums`, brought forward by a write just committed (or left
    /// as they were by one rolled back), for the document as it is now.
    pub(crate) fn keep_sums(&mut self, sums: crdt::SumMap) {
        self.quantities = Quantities {
            heads: self.doc.get_heads(),
            sums,
        };
    }

    /// The summaries kept, when they describe the document as it is.
    fn kept_sums(&self) -> Option<&crdt::SumMap> {
        (self.quantities.heads == self.doc.get_heads()).then_some(&self.quantities.sums)
    }

    /// The components whose state may have changed since `before` (heads
    /// this document had): those written by a change applied since. A sync
    /// that touched one component then costs one component read, not the
    /// whole drawing's.
    ///
    /// Found from the operations of the new changes, not from Automerge's
    /// diff: the diff reports a key only when Automerge's own winner (by op
    /// id) changes, but a register here shows every concurrent value and
    /// picks its winner by time. A change that adds or replaces a value
    /// that is not Automerge's winner yields no patch at all, yet changes
    /// the view's winner or conflicts (the convergence property test found
    /// this; a daemon's index then kept the old view until a restart).
    pub fn changed_components(&self, before: &[automerge::ChangeHash]) -> Vec<ComponentId> {
        use automerge::legacy::Key;
        let Ok(comps) = components_obj(&self.doc) else {
            return Vec::new();
        };
        if before.is_empty() {
            // New here (a clone, a drawing created elsewhere): every
            // component is, and listing them beats rebuilding every change.
            return self.doc.keys(&comps).filter_map(|k| k.parse().ok()).collect();
        }
        let (comps_id, root_id) = (comps.to_string(), automerge::ROOT.to_string());
        let mut out = std::collections::BTreeSet::new();
        // Objects written inside some component: the component's own map,
        // its attributes, milestones, quantity entries.
        let mut nested = std::collections::HashSet::new();
        for change in self.doc.get_changes(before) {
            for op in change.decode().operations {
                let obj = op.obj.to_string();
                if obj == comps_id {
                    if let Key::Map(key) = &op.key
                        && let Ok(id) = key.parse()
                    {
                        out.insert(id);
                    }
                } else if obj != root_id {
                    nested.insert(obj);
                }
            }
        }
        // Walk up from each to the component that holds it: a few hops
        // each, where walking every component's subtree down cost a seek
        // per key (half of a daemon's time applying a catch-up).
        for obj in nested {
            // The id's text is this document's own (from its changes), so
            // `import_obj` (hidden in Automerge's docs, but public) finds it.
            let Ok(parents) = self.doc.import_obj(&obj).and_then(|id| self.doc.parents(id)) else {
                continue;
            };
            for parent in parents {
                if parent.obj == comps {
                    if let automerge::Prop::Map(key) = &parent.prop
                        && let Ok(id) = key.parse()
                    {
                        out.insert(id);
                    }
                    break;
                }
            }
        }
        out.into_iter().collect()
    }

    /// One component with derived completion and status.
    pub fn component(&self, id: ComponentId) -> Result<Component> {
        ComponentReader::new(&self.doc, self.kept_sums())?.read(id)
    }

    /// The components `ids`, in that order; `component_not_found` for an
    /// id not in this drawing. One pass over the components map and each
    /// template parsed once, where `component` per id repeats both: a bulk
    /// update re-reads every component it touched.
    pub fn components_of(&self, ids: &[ComponentId]) -> Result<Vec<Component>> {
        let mut reader = ComponentReader::new(&self.doc, self.kept_sums())?;
        ids.iter().map(|id| reader.read(*id)).collect()
    }

    /// Every component, deleted ones included, ordered by tag.
    pub fn components(&self) -> Result<Vec<Component>> {
        let mut reader = ComponentReader::new(&self.doc, self.kept_sums())?;
        let mut out = Vec::new();
        let keys: Vec<String> = reader.comps.keys().map(str::to_owned).collect();
        for key in keys {
            let id: ComponentId = key
                .parse()
                .map_err(|e| ModelError::corrupt(format!("components.{key}"), e))?;
            out.push(reader.read(id)?);
        }
        out.sort_by(|a, b| a.tag.cmp(&b.tag).then(a.id.cmp(&b.id)));
        Ok(out)
    }
}

/// Reads components of one drawing: the components map in one pass
/// ([`Fields`]), each object in one pass, each template parsed once.
struct ComponentReader<'a> {
    doc: &'a Automerge,
    project: ProjectId,
    drawing: DrawingId,
    comps: Fields,
    /// Templates parsed so far; a drawing uses few.
    parsed: Templates,
    /// Quantity summaries kept at the document's heads.
    sums: Option<&'a crdt::SumMap>,
}

impl<'a> ComponentReader<'a> {
    fn new(doc: &'a Automerge, sums: Option<&'a crdt::SumMap>) -> Result<Self> {
        Ok(Self {
            doc,
            sums,
            project: root_id(doc, "project_id")?,
            drawing: root_id(doc, "drawing_id")?,
            comps: Fields::read(doc, &components_obj(doc)?)?,
            parsed: Templates::default(),
        })
    }

    fn read(&mut self, id: ComponentId) -> Result<Component> {
        self.read_with(id, &mut crdt::Sums::Kept(self.sums))
    }

    /// [`Self::read`], finding quantity summaries in `sums`.
    fn read_with(&mut self, id: ComponentId, sums: &mut crdt::Sums<'_>) -> Result<Component> {
        let obj = self
            .comps
            .map(&id.to_string())?
            .ok_or(ModelError::ComponentNotFound { id })?;
        let fields = Fields::read(self.doc, &obj)?;
        let template = template_of(self.doc, &fields, &mut self.parsed)?;
        read_component(
            self.doc,
            id,
            &fields,
            template,
            (self.project, self.drawing),
            sums,
        )
    }
}

fn root_id<T: std::str::FromStr>(doc: &Automerge, key: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    crdt::read_str(doc, &automerge::ROOT, key)?
        .parse()
        .map_err(|e| ModelError::corrupt(key, e))
}

pub(crate) fn components_obj<D: ReadDoc>(doc: &D) -> Result<ObjId> {
    crdt::require_map(doc, &automerge::ROOT, "components")
}

/// The template of the component whose fields are `comp`, parsed from
/// this document's copy on first use and kept in `parsed`.
fn template_of<'t, D: ReadDoc>(doc: &D, comp: &Fields, parsed: &'t mut Templates) -> Result<&'t Template> {
    let tid: TemplateId = comp
        .str("template_id")?
        .parse()
        .map_err(|e| ModelError::corrupt("template_id", e))?;
    match parsed.entry(tid) {
        std::collections::hash_map::Entry::Occupied(t) => Ok(t.into_mut()),
        std::collections::hash_map::Entry::Vacant(slot) => {
            let templates = crdt::require_map(doc, &automerge::ROOT, "templates")?;
            let t = read_template(doc, &templates, tid)?
                .ok_or_else(|| ModelError::corrupt(format!("templates.{tid}"), "missing"))?;
            Ok(slot.insert(t))
        }
    }
}

/// Finds a component's objects and its template.
pub(crate) fn locate<D: ReadDoc>(doc: &D, id: ComponentId) -> Result<Located> {
    locate_with(doc, id, &mut Templates::default())
}

/// Templates parsed so far, by id: a bulk locates many components of few
/// templates, and parsing one's JSON costs more than a clone.
pub(crate) type Templates = HashMap<TemplateId, Template>;

/// [`locate`], reusing and filling `parsed`.
pub(crate) fn locate_with<D: ReadDoc>(doc: &D, id: ComponentId, parsed: &mut Templates) -> Result<Located> {
    let comps = components_obj(doc)?;
    let obj = crdt::read_map(doc, &comps, &id.to_string())?.ok_or(ModelError::ComponentNotFound { id })?;
    let fields = Fields::read(doc, &obj)?;
    let template = template_of(doc, &fields, parsed)?.clone();
    Ok(Located {
        attributes: fields.require_map("attributes")?,
        milestones: fields.require_map("milestones")?,
        fields,
        obj,
        template,
    })
}

fn check_positive(field: &str, value: f64) -> Result<()> {
    if !(value.is_finite() && value > 0.0 && value <= crdt::MAX_QUANTITY) {
        return Err(ModelError::OutOfRange {
            field: field.to_owned(),
            value,
            min: 0.001,
            max: crdt::MAX_QUANTITY,
        });
    }
    Ok(())
}

fn check_hours(value: Option<f64>) -> Result<()> {
    match value {
        Some(h) if !(h.is_finite() && (0.0..=1e9).contains(&h)) => Err(ModelError::OutOfRange {
            field: "budget_hours".into(),
            value: h,
            min: 0.0,
            max: 1e9,
        }),
        _ => Ok(()),
    }
}

fn check_attribute(name: &str, value: Option<&str>) -> Result<()> {
    let field = format!("attributes.{name}");
    require_text(&field, name).map_err(|_| {
        ModelError::invalid(
            "attributes",
            format!("attribute names must be 1..={MAX_TEXT_LEN} characters, not blank"),
        )
    })?;
    if let Some(v) = value
        && v.chars().count() > MAX_ATTRIBUTE_LEN
    {
        return Err(ModelError::invalid(
            field,
            format!("must be at most {MAX_ATTRIBUTE_LEN} characters"),
        ));
    }
    Ok(())
}

fn optional_text(field: &str, value: &Option<String>) -> Result<()> {
    value.as_deref().map_or(Ok(()), |v| require_text(field, v))
}

/// Validates a new component against its template.
pub(crate) fn validate_new(new: &NewComponent, template: &Template) -> Result<()> {
    require_text("tag", &new.tag)?;
    require_text("kind", &new.kind)?;
    optional_text("unit", &new.unit)?;
    if new.template_id.is_some_and(|t| t != template.id) {
        return Err(ModelError::invalid(
            "template_id",
            "does not match the template given",
        ));
    }
    match new.quantity_total {
        Some(q) => check_positive("quantity_total", q)?,
        None if template.workflow_type == WorkflowType::Quantity => {
            return Err(ModelError::MissingQuantityTotal {
                field: "quantity_total".into(),
                template: template.name.clone(),
            });
        }
        None => {}
    }
    check_hours(new.budget_hours)?;
    for (k, v) in &new.attributes {
        check_attribute(k, Some(v))?;
    }
    Ok(())
}

/// Validates a change to a component of `template`; returns the new
/// quantity total in thousandths (`Some(None)` clears it), as stored.
pub(crate) fn validate_patch(patch: &ComponentPatch, template: &Template) -> Result<Option<Option<i64>>> {
    if let Some(tag) = &patch.tag {
        require_text("tag", tag)?;
    }
    if let Some(kind) = &patch.kind {
        require_text("kind", kind)?;
    }
    if let Some(unit) = &patch.unit {
        optional_text("unit", unit)?;
    }
    let qty_total = match patch.quantity_total {
        Some(Some(q)) => {
            check_positive("quantity_total", q)?;
            Some(Some(crdt::to_milli("quantity_total", q)?))
        }
        Some(None) if template.workflow_type == WorkflowType::Quantity => {
            return Err(ModelError::MissingQuantityTotal {
                field: "quantity_total".into(),
                template: template.name.clone(),
            });
        }
        Some(None) => Some(None),
        None => None,
    };
    if let Some(h) = patch.budget_hours {
        check_hours(h)?;
    }
    for (k, v) in patch.attributes.iter().flatten() {
        check_attribute(k, v.as_deref())?;
    }
    Ok(qty_total)
}

/// Creates a component inside a transaction (so an import can create many in
/// one commit).
pub(crate) fn create_component(
    tx: &mut Transaction<'_>,
    ctx: &WriteCtx,
    id: ComponentId,
    new: &NewComponent,
    template: &Template,
) -> Result<()> {
    validate_new(new, template)?;
    let comps = components_obj(tx)?;
    if tx.get(&comps, id.to_string())?.is_some() {
        return Err(ModelError::invalid(
            "id",
            format!("component {id} already exists"),
        ));
    }
    let qty_total = new
        .quantity_total
        .map(|q| crdt::to_milli("quantity_total", q))
        .transpose()?;
    // The drawing carries its own copy of every template its components use
    // (templates are immutable, so the copy never goes stale).
    let templates = crdt::require_map(tx, &automerge::ROOT, "templates")?;
    if tx.get(&templates, template.id.to_string())?.is_none() {
        tx.put(
            &templates,
            template.id.to_string(),
            serde_json::to_string(template).expect("templates serialize"),
        )?;
    }
    let obj = tx.put_object(&comps, id.to_string(), ObjType::Map)?;
    tx.put(&obj, "id", id.to_string())?;
    tx.put(&obj, "template_id", template.id.to_string())?;
    tx.put(&obj, "created_at", ctx.now.millis())?;
    crdt::write_register(
        tx,
        &obj,
        "tag",
        ctx,
        new.tag.trim().to_owned(),
        String::new(),
        None,
    )?;
    crdt::write_register(
        tx,
        &obj,
        "kind",
        ctx,
        new.kind.trim().to_owned(),
        String::new(),
        None,
    )?;
    crdt::write_register(tx, &obj, "quantity_total", ctx, qty_total, None, None)?;
    crdt::write_register(tx, &obj, "unit", ctx, new.unit.clone(), None, None)?;
    crdt::write_register(tx, &obj, "budget_hours", ctx, new.budget_hours, None, None)?;
    crdt::write_register(tx, &obj, "deleted", ctx, false, false, None)?;
    let attrs = tx.put_object(&obj, "attributes", ObjType::Map)?;
    for (k, v) in &new.attributes {
        crdt::write_register(tx, &attrs, k, ctx, Some(v.clone()), None, None)?;
    }
    let milestones = tx.put_object(&obj, "milestones", ObjType::Map)?;
    if template.workflow_type == WorkflowType::Quantity {
        // Created now, by the creator, so replicas never race to create it.
        for m in &template.milestones {
            tx.put_object(&milestones, m.key.as_str(), ObjType::Map)?;
        }
    }
    Ok(())
}

/// Changes a component's fields inside a transaction. Returns how many
/// fields were written.
pub(crate) fn update_component(
    tx: &mut Transaction<'_>,
    ctx: &WriteCtx,
    id: ComponentId,
    patch: &ComponentPatch,
) -> Result<usize> {
    let at = locate(tx, id)?;
    if at.fields.value("deleted", false)? {
        return Err(ModelError::ComponentDeleted { component: id });
    }
    let qty_total = validate_patch(patch, &at.template)?;

    let mut n = 0;
    let obj = &at.obj;
    if let Some(tag) = &patch.tag {
        crdt::write_register(tx, obj, "tag", ctx, tag.trim().to_owned(), String::new(), None)?;
        n += 1;
    }
    if let Some(kind) = &patch.kind {
        crdt::write_register(tx, obj, "kind", ctx, kind.trim().to_owned(), String::new(), None)?;
        n += 1;
    }
    if let Some(q) = qty_total {
        crdt::write_register(tx, obj, "quantity_total", ctx, q, None, None)?;
        n += 1;
    }
    if let Some(unit) = &patch.unit {
        crdt::write_register(tx, obj, "unit", ctx, unit.clone(), None, None)?;
        n += 1;
    }
    if let Some(h) = patch.budget_hours {
        crdt::write_register(tx, obj, "budget_hours", ctx, h, None, None)?;
        n += 1;
    }
    for (k, v) in patch.attributes.iter().flatten() {
        crdt::write_register(tx, &at.attributes, k, ctx, v.clone(), None, None)?;
        n += 1;
    }
    Ok(n)
}

/// Checks an effective date: a real calendar day, not after today.
fn check_effective_date(date: &str, now: Timestamp) -> Result<String> {
    let day = NaiveDate::parse_from_str(date, "%Y-%m-%d")
        .map_err(|_| ModelError::invalid("effective_date", format!("{date:?} is not a date (YYYY-MM-DD)")))?;
    // A day of slack: the writer's local date may be ahead of UTC.
    let today = DateTime::<Utc>::from_timestamp_millis(now.millis())
        .map(|t| t.date_naive())
        .unwrap_or(NaiveDate::MAX);
    if day > today.succ_opt().unwrap_or(today) {
        return Err(ModelError::invalid(
            "effective_date",
            format!("{date} is in the future"),
        ));
    }
    Ok(day.format("%Y-%m-%d").to_string())
}

/// Validates and applies one milestone update inside a transaction. Returns
/// the milestone before and after. Validation happens before any write, so
/// an `Err` leaves the transaction untouched.
pub(crate) fn apply_update(
    tx: &mut Transaction<'_>,
    ctx: &WriteCtx,
    u: &MilestoneUpdate,
    templates: &mut Templates,
    sums: &mut crdt::Sums<'_>,
) -> Result<(MilestoneView, MilestoneView)> {
    let at = locate_with(tx, u.component_id, templates)?;
    if at.fields.value("deleted", false)? {
        return Err(ModelError::ComponentDeleted {
            component: u.component_id,
        });
    }
    let Some(def) = at.template.milestone(&u.milestone).cloned() else {
        return Err(ModelError::UnknownMilestone {
            field: "milestone".into(),
            component: u.component_id,
            key: u.milestone.clone(),
            known: at.template.keys(),
        });
    };
    let workflow = at.template.workflow_type;
    if u.value.workflow() != workflow {
        return Err(ModelError::WrongWorkflow {
            field: u.value.field().into(),
            key: def.key.clone(),
            workflow,
            expected: workflow.expected_value(),
        });
    }
    let effective = u
        .effective_date
        .as_deref()
        .map(|d| check_effective_date(d, ctx.now))
        .transpose()?;
    let effective = effective.as_deref();
    let before = milestone_view(tx, &at, &def, sums)?;
    let key = def.key.as_str();
    match u.value {
        MilestoneValue::Completed(done) => {
            crdt::write_register(tx, &at.milestones, key, ctx, done, false, effective)?;
        }
        MilestoneValue::Percent(p) => {
            if !(p.is_finite() && (0.0..=100.0).contains(&p)) {
                return Err(ModelError::OutOfRange {
                    field: "percent".into(),
                    value: p,
                    min: 0.0,
                    max: 100.0,
                });
            }
            crdt::write_register(tx, &at.milestones, key, ctx, p, 0.0, effective)?;
        }
        MilestoneValue::Quantity(q) | MilestoneValue::QuantityDelta(q) => {
            let field = u.value.field();
            let amount = crdt::to_milli(field, q)?;
            let entries_obj = crdt::require_map(tx, &at.milestones, key)?;
            let seen = sums.get(tx, &entries_obj)?.sum;
            let delta = match u.value {
                MilestoneValue::Quantity(_) => amount - seen,
                _ => amount,
            };
            let result = seen.saturating_add(delta);
            if result < 0 {
                return Err(ModelError::NegativeQuantity {
                    field: field.into(),
                    value: q,
                    result: crdt::from_milli(result),
                });
            }
            crdt::add_entry(tx, &entries_obj, ctx, delta, sums, effective)?;
        }
    }
    let after = milestone_view(tx, &at, &def, sums)?;
    Ok((before, after))
}

/// One milestone's view and its progress ∈ [0, 1], from the component's
/// `milestones` map.
fn milestone_state<D: ReadDoc>(
    doc: &D,
    milestones: &Fields,
    workflow: WorkflowType,
    def: &MilestoneDef,
    quantity_total: Option<i64>,
    sums: &mut crdt::Sums<'_>,
) -> Result<(MilestoneView, f64)> {
    let mut view = MilestoneView {
        key: def.key.clone(),
        name: def.name.clone(),
        weight: def.weight,
        completed: None,
        percent: None,
        quantity: None,
        updated_at: None,
        updated_by: None,
        device_id: None,
        conflicts: Vec::new(),
    };
    let key = def.key.as_str();
    let progress = match workflow {
        WorkflowType::Discrete => {
            let reg = milestones.register::<bool>(key)?;
            let done = reg.as_ref().is_some_and(|r| r.winner.v);
            view.completed = Some(done);
            fill_register_meta(&mut view, reg, |v| serde_json::Value::Bool(*v));
            if done { 1.0 } else { 0.0 }
        }
        WorkflowType::Percentage => {
            let reg = milestones.register::<f64>(key)?;
            let p = reg.as_ref().map_or(0.0, |r| r.winner.v);
            view.percent = Some(p);
            fill_register_meta(&mut view, reg, |v| serde_json::json!(v));
            p / 100.0
        }
        WorkflowType::Quantity => {
            let summary = sums.get(doc, &milestones.require_map(key)?)?;
            let q = summary.sum;
            view.quantity = Some(crdt::from_milli(q));
            if let Some((ts, device, user)) = summary.latest {
                view.updated_at = Some(Timestamp(ts));
                view.updated_by = Some(user);
                view.device_id = Some(device);
            }
            match quantity_total {
                Some(total) if total > 0 => (q as f64 / total as f64).clamp(0.0, 1.0),
                _ => 0.0,
            }
        }
    };
    Ok((view, progress))
}

fn fill_register_meta<T>(
    view: &mut MilestoneView,
    reg: Option<crdt::Register<T>>,
    json: impl Fn(&T) -> serde_json::Value,
) {
    if let Some(reg) = reg {
        view.updated_at = Some(Timestamp(reg.winner.ts));
        view.updated_by = Some(reg.winner.u.clone());
        view.device_id = Some(reg.winner.d);
        view.conflicts = reg
            .conflicts
            .iter()
            .map(|w| ConflictView {
                value: json(&w.v),
                updated_by: w.u.clone(),
                updated_at: Timestamp(w.ts),
                device_id: w.d,
            })
            .collect();
    }
}

fn milestone_view<D: ReadDoc>(
    doc: &D,
    at: &Located,
    def: &MilestoneDef,
    sums: &mut crdt::Sums<'_>,
) -> Result<MilestoneView> {
    // A milestone write leaves `quantity_total` as located.
    let total = at.fields.value::<Option<i64>>("quantity_total", None)?;
    let milestones = Fields::read(doc, &at.milestones)?;
    Ok(milestone_state(doc, &milestones, at.template.workflow_type, def, total, sums)?.0)
}

/// A component's view from its fields (`comp`, already read) and template.
fn read_component<D: ReadDoc>(
    doc: &D,
    id: ComponentId,
    comp: &Fields,
    template: &Template,
    (project_id, drawing_id): (ProjectId, DrawingId),
    sums: &mut crdt::Sums<'_>,
) -> Result<Component> {
    let created_at = Timestamp(comp.int("created_at")?);
    let attribute_fields = Fields::read(doc, &comp.require_map("attributes")?)?;
    let milestone_fields = Fields::read(doc, &comp.require_map("milestones")?)?;
    let mut r = FieldReader::new(comp);
    let tag = r.get("tag", String::new())?;
    let kind = r.get("kind", String::new())?;
    let quantity_total: Option<i64> = r.get("quantity_total", None)?;
    let unit = r.get("unit", None)?;
    let budget_hours = r.get("budget_hours", None)?;
    let deleted = r.get("deleted", false)?;
    let mut attributes = BTreeMap::new();
    for name in attribute_fields.keys() {
        if let Some(reg) = attribute_fields.register::<Option<String>>(name)? {
            r.saw(reg.winner.ts, &reg.winner.u);
            if let Some(v) = reg.winner.v {
                attributes.insert(name.to_owned(), v);
            }
        }
    }
    let mut milestones = Vec::with_capacity(template.milestones.len());
    let mut parts = Vec::with_capacity(template.milestones.len());
    for def in &template.milestones {
        let (view, progress) = milestone_state(
            doc,
            &milestone_fields,
            template.workflow_type,
            def,
            quantity_total,
            sums,
        )?;
        if let (Some(ts), Some(u)) = (view.updated_at, &view.updated_by) {
            r.saw(ts.millis(), u);
        }
        parts.push((def.weight, progress));
        milestones.push(view);
    }
    let completion_percent = progress::weighted_percent(parts);
    let (updated_at, updated_by) = r.latest(created_at);
    Ok(Component {
        id,
        project_id,
        drawing_id,
        tag,
        kind,
        template_id: template.id,
        workflow_type: template.workflow_type,
        quantity_total: quantity_total.map(crdt::from_milli),
        unit,
        budget_hours,
        attributes,
        completion_percent,
        status: Status::of(completion_percent),
        deleted,
        created_at,
        updated_at,
        updated_by,
        milestones,
    })
}
