//! Reading the Automerge change log: a component's history, the list of
//! operations, and the set of fields an operation wrote (for undo).
//!
//! Every register write and quantity entry carries who, when, which
//! operation and the value the writer saw (`p`), so one pass over the
//! decoded changes yields old → new for every write, including writes merged
//! in from other replicas. The daemon indexes these rows as changes arrive
//! ([`history_rows`] over just the new changes) instead of rescanning the log
//! per request.

use std::collections::{BTreeMap, HashMap};

use automerge::legacy::{Key, ObjectId, OpType};
use automerge::{Automerge, Change, ChangeHash, ExpandedChange, ObjId, ReadDoc, ScalarValue};
use serde::{Deserialize, Serialize};

use crate::crdt::{self, Entry, Write};
use crate::drawing::components_obj;
use crate::error::{ModelError, Result};
use crate::ids::{ComponentId, DeviceId, DrawingId, OperationId};
use crate::operation::{OpMeta, OperationKind};
use crate::schema::{ObjKey, obj_key};
use crate::template::WorkflowType;
use crate::time::Timestamp;

/// One write in a component's history.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub at: Timestamp,
    pub user: String,
    pub device_id: DeviceId,
    pub operation_id: OperationId,
    /// The milestone written, for milestone writes.
    pub milestone: Option<String>,
    /// `completed` / `percent` / `quantity` for milestones; the field name
    /// (`tag`, `deleted`, `attributes.area`, ...) otherwise; `created` for the
    /// component's creation.
    pub field: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub old: serde_json::Value,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub new: serde_json::Value,
    pub reason: Option<String>,
    pub effective_date: Option<String>,
}

/// One operation as listed.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OperationInfo {
    pub id: OperationId,
    pub kind: OperationKind,
    pub at: Timestamp,
    pub user: String,
    pub device_id: DeviceId,
    /// Items applied, summed over every document the operation touched.
    pub count: usize,
    pub reason: Option<String>,
    pub undone_by: Option<OperationId>,
}

/// What a map object in a document is, so an op decoded from a change can be
/// attributed to a component or drawing and a field.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Place {
    /// The components map: a make op here creates the component named by key.
    Components,
    /// A component's own map: keys are its field registers.
    ComponentField(ComponentId),
    /// A component's attributes: keys are attribute names.
    Attributes(ComponentId),
    /// A component's milestones: keys are milestone registers (discrete and
    /// percentage) or quantity entry maps.
    Milestones(ComponentId),
    /// A quantity milestone's entries.
    Entries(ComponentId, String),
    /// The project document's root: name, code, deleted.
    ProjectRoot,
    /// The drawings map: a make op here creates the drawing named by key.
    Drawings,
    /// One drawing's entry in the project document.
    DrawingField(DrawingId),
}

/// Object id → (what it is, its id for writing).
#[derive(Default)]
pub(crate) struct ObjIndex {
    objects: HashMap<ObjKey, (Place, ObjId)>,
    root: Option<Place>,
    workflow: HashMap<ComponentId, WorkflowType>,
}

impl ObjIndex {
    fn add(&mut self, id: &ObjId, place: Place) {
        if let Some(k) = obj_key(id) {
            self.objects.insert(k, (place, id.clone()));
        }
    }

    /// Indexes a drawing document: every component, or just `only`.
    pub fn drawing(doc: &Automerge, only: Option<ComponentId>) -> Result<Self> {
        let mut ix = Self::default();
        let comps = components_obj(doc)?;
        ix.add(&comps, Place::Components);
        let ids: Vec<String> = match only {
            Some(id) => vec![id.to_string()],
            None => doc.keys(&comps).collect(),
        };
        for key in ids {
            let id: ComponentId = key
                .parse()
                .map_err(|e| ModelError::corrupt(format!("components.{key}"), e))?;
            let Some(obj) = crdt::read_map(doc, &comps, &key)? else {
                continue;
            };
            let at = crate::drawing::locate(doc, id)?;
            ix.workflow.insert(id, at.template.workflow_type);
            ix.add(&obj, Place::ComponentField(id));
            ix.add(&at.attributes, Place::Attributes(id));
            ix.add(&at.milestones, Place::Milestones(id));
            if at.template.workflow_type == WorkflowType::Quantity {
                for m in &at.template.milestones {
                    let entries = crdt::require_map(doc, &at.milestones, &m.key)?;
                    ix.add(&entries, Place::Entries(id, m.key.clone()));
                }
            }
        }
        Ok(ix)
    }

    /// Indexes a project document.
    pub fn project(doc: &Automerge) -> Result<Self> {
        let mut ix = Self {
            root: Some(Place::ProjectRoot),
            ..Self::default()
        };
        let drawings = crdt::require_map(doc, &automerge::ROOT, "drawings")?;
        ix.add(&drawings, Place::Drawings);
        for key in doc.keys(&drawings) {
            let id: DrawingId = key
                .parse()
                .map_err(|e| ModelError::corrupt(format!("drawings.{key}"), e))?;
            let obj = crdt::require_map(doc, &drawings, &key)?;
            ix.add(&obj, Place::DrawingField(id));
        }
        Ok(ix)
    }

    fn place(&self, obj: &ObjectId) -> Option<&(Place, ObjId)> {
        match obj {
            ObjectId::Root => None,
            ObjectId::Id(op) => self.objects.get(&(op.0, op.1.clone())),
        }
    }

    fn root_place(&self, obj: &ObjectId) -> Option<Place> {
        matches!(obj, ObjectId::Root).then(|| self.root.clone()).flatten()
    }

    /// The object id to write to for a place (the root for `ProjectRoot`).
    pub fn obj_of(&self, place: &Place) -> Option<ObjId> {
        if self.root.as_ref() == Some(place) {
            return Some(automerge::ROOT);
        }
        self.objects
            .values()
            .find(|(p, _)| p == place)
            .map(|(_, id)| id.clone())
    }
}

/// One decoded op of interest: a put of a string value or a make, at a known
/// place.
#[derive(Clone, Debug)]
pub(crate) struct DecodedWrite {
    pub place: Place,
    pub key: String,
    /// The string put (a register or entry JSON); `None` for a make.
    pub raw: Option<String>,
}

fn decode_writes(change: &ExpandedChange, ix: &ObjIndex) -> Vec<DecodedWrite> {
    let mut out = Vec::new();
    for op in &change.operations {
        let place = match ix.root_place(&op.obj) {
            Some(p) => p,
            None => match ix.place(&op.obj) {
                Some((p, _)) => p.clone(),
                None => continue,
            },
        };
        let Key::Map(key) = &op.key else { continue };
        // Plain values written once at creation are not registers.
        let register = match &place {
            Place::ProjectRoot => matches!(key.as_str(), "name" | "code" | "deleted"),
            Place::ComponentField(_) => !matches!(key.as_str(), "id" | "template_id"),
            Place::DrawingField(_) => key.as_str() != "id",
            _ => true,
        };
        if !register {
            continue;
        }
        let raw = match &op.action {
            OpType::Put(ScalarValue::Str(s)) => Some(s.to_string()),
            OpType::Make(_) => None,
            _ => continue,
        };
        out.push(DecodedWrite {
            place,
            key: key.to_string(),
            raw,
        });
    }
    out
}

/// Every write an operation made in this document, in order, with its
/// commit message. `None` when the operation did not touch the document.
pub(crate) fn operation_writes(
    doc: &Automerge,
    ix: &ObjIndex,
    target: OperationId,
) -> Option<(OpMeta, Vec<DecodedWrite>)> {
    let mut meta = None;
    let mut writes = Vec::new();
    for change in doc.get_changes(&[]) {
        let Some(m) = change.message().and_then(OpMeta::decode) else {
            continue;
        };
        if m.op != target {
            continue;
        }
        writes.extend(decode_writes(&change.decode(), ix));
        meta.get_or_insert(m);
    }
    meta.map(|m| (m, writes))
}

fn milli_json(v: &serde_json::Value) -> serde_json::Value {
    match v.as_i64() {
        Some(m) => serde_json::json!(crdt::from_milli(m)),
        None => v.clone(),
    }
}

/// History rows for the given changes, attributed to components via `ix`.
/// Rows come in change order; [`component_history`] sorts them.
pub(crate) fn history_rows(changes: &[Change], ix: &ObjIndex) -> Result<Vec<(ComponentId, HistoryEntry)>> {
    let mut rows = Vec::new();
    for change in changes {
        let meta = change.message().and_then(OpMeta::decode);
        let decoded = change.decode();
        let writes = decode_writes(&decoded, ix);
        // Components created in this change: their initial field writes are
        // summed up by one `created` row rather than one row per field.
        let created: Vec<ComponentId> = writes
            .iter()
            .filter(|w| w.place == Place::Components && w.raw.is_none())
            .filter_map(|w| w.key.parse().ok())
            .collect();
        for w in &writes {
            let bad = |e: serde_json::Error| ModelError::corrupt(format!("change {}", change.hash()), e);
            match (&w.place, &w.raw) {
                (Place::Components, None) => {
                    let (Ok(id), Some(meta)) = (w.key.parse::<ComponentId>(), &meta) else {
                        continue;
                    };
                    rows.push((
                        id,
                        HistoryEntry {
                            at: Timestamp(change.timestamp()),
                            user: meta.user.clone(),
                            device_id: meta.device,
                            operation_id: meta.op,
                            milestone: None,
                            field: "created".into(),
                            old: serde_json::Value::Null,
                            new: serde_json::Value::Bool(true),
                            reason: meta.reason.clone(),
                            effective_date: None,
                        },
                    ));
                }
                (Place::ComponentField(c) | Place::Attributes(c) | Place::Milestones(c), Some(raw)) => {
                    if created.contains(c) {
                        continue;
                    }
                    let wr: Write<serde_json::Value> = serde_json::from_str(raw).map_err(bad)?;
                    let (milestone, field, old, new) = match &w.place {
                        Place::ComponentField(_) if w.key == "quantity_total" => {
                            (None, w.key.clone(), milli_json(&wr.p), milli_json(&wr.v))
                        }
                        Place::ComponentField(_) => (None, w.key.clone(), wr.p, wr.v),
                        Place::Attributes(_) => (None, format!("attributes.{}", w.key), wr.p, wr.v),
                        _ => {
                            let field = match ix.workflow.get(c) {
                                Some(WorkflowType::Percentage) => "percent",
                                _ => "completed",
                            };
                            (Some(w.key.clone()), field.to_owned(), wr.p, wr.v)
                        }
                    };
                    rows.push((
                        *c,
                        HistoryEntry {
                            at: Timestamp(wr.ts),
                            user: wr.u,
                            device_id: wr.d,
                            operation_id: wr.op,
                            milestone,
                            field,
                            old,
                            new,
                            reason: wr.r,
                            effective_date: wr.e,
                        },
                    ));
                }
                (Place::Entries(c, m), Some(raw)) => {
                    let e: Entry = serde_json::from_str(raw).map_err(bad)?;
                    let undone_here = e
                        .undo
                        .as_ref()
                        .filter(|u| meta.as_ref().is_some_and(|meta| meta.op == u.op));
                    let row = match undone_here {
                        Some(u) => HistoryEntry {
                            at: Timestamp(u.ts),
                            user: u.u.clone(),
                            device_id: u.d,
                            operation_id: u.op,
                            milestone: Some(m.clone()),
                            field: "quantity".into(),
                            old: serde_json::json!(crdt::from_milli(u.p)),
                            new: serde_json::json!(crdt::from_milli(u.p - e.delta)),
                            reason: meta.as_ref().and_then(|m| m.reason.clone()),
                            effective_date: None,
                        },
                        None => HistoryEntry {
                            at: Timestamp(e.ts),
                            user: e.u,
                            device_id: e.d,
                            operation_id: e.op,
                            milestone: Some(m.clone()),
                            field: "quantity".into(),
                            old: serde_json::json!(crdt::from_milli(e.p)),
                            new: serde_json::json!(crdt::from_milli(e.p + e.delta)),
                            reason: e.r,
                            effective_date: e.e,
                        },
                    };
                    rows.push((*c, row));
                }
                _ => {}
            }
        }
    }
    Ok(rows)
}

/// Newest first; ties (one operation writing several fields) keep a stable,
/// replica-independent order.
pub fn sort_newest_first(rows: &mut [HistoryEntry]) {
    rows.sort_by(|a, b| {
        (b.at, b.device_id, b.operation_id, &b.milestone, &b.field).cmp(&(
            a.at,
            a.device_id,
            a.operation_id,
            &a.milestone,
            &a.field,
        ))
    });
}

/// A component's history, newest first, read from the document's change log
/// (so it includes changes merged in from other replicas).
pub fn component_history(doc: &Automerge, id: ComponentId) -> Result<Vec<HistoryEntry>> {
    let ix = ObjIndex::drawing(doc, Some(id))?;
    let mut rows: Vec<HistoryEntry> = history_rows(&doc.get_changes(&[]), &ix)?
        .into_iter()
        .filter(|(c, _)| *c == id)
        .map(|(_, r)| r)
        .collect();
    sort_newest_first(&mut rows);
    Ok(rows)
}

/// History rows for every component, for changes the caller has not indexed
/// yet (e.g. those just received from a peer).
pub fn index_changes(doc: &Automerge, changes: &[Change]) -> Result<Vec<(ComponentId, HistoryEntry)>> {
    history_rows(changes, &ObjIndex::drawing(doc, None)?)
}

/// The sitesync commits of one document: each commit's metadata and time.
/// Cheap (no op decoding); combine several documents' with [`summarize`].
pub fn operation_records(doc: &Automerge) -> Vec<(OpMeta, Timestamp)> {
    operation_records_since(doc, &[])
}

/// The sitesync commits of one document made since `heads` (which must be
/// the document's own: see [`knows_all`]).
pub fn operation_records_since(doc: &Automerge, heads: &[ChangeHash]) -> Vec<(OpMeta, Timestamp)> {
    doc.get_changes_meta(heads)
        .into_iter()
        .filter_map(|c| {
            let meta = c.message.as_deref().and_then(OpMeta::decode)?;
            Some((meta, Timestamp(c.timestamp)))
        })
        .collect()
}

/// [`operation_records_since`] in steps of at most `step` changes, each
/// with the heads the document had once its changes were made: indexing
/// a step and following its heads in one commit leaves nothing indexed
/// twice or skipped, whatever step a crash stops at, and no commit grows
/// with a document's history (a drawing with 25,000 writes of history
/// indexed in one commit held the store's writer, and every user write,
/// for 0.3–0.9 s).
///
/// The changes come in causal order, so each step's heads are the
/// frontier after it: `heads` (an antichain, as heads are) with every
/// change so far added and the changes it depends on removed.
pub fn operation_record_steps(doc: &Automerge, heads: &[ChangeHash], step: usize) -> Vec<RecordStep> {
    let step = step.max(1);
    let mut frontier: std::collections::BTreeSet<ChangeHash> = heads.iter().copied().collect();
    let mut steps = Vec::new();
    let mut records = Vec::new();
    let changes = doc.get_changes_meta(heads);
    let last = changes.len();
    for (n, c) in changes.into_iter().enumerate() {
        for dep in &c.deps {
            frontier.remove(dep);
        }
        frontier.insert(c.hash);
        if let Some(meta) = c.message.as_deref().and_then(OpMeta::decode) {
            records.push((meta, Timestamp(c.timestamp)));
        }
        if (n + 1) % step == 0 || n + 1 == last {
            steps.push(RecordStep {
                records: std::mem::take(&mut records),
                heads: frontier.iter().copied().collect(),
            });
        }
    }
    steps
}

/// One step of [`operation_record_steps`].
#[derive(Debug, Clone, PartialEq)]
pub struct RecordStep {
    /// The sitesync commits among the step's changes, in causal order.
    pub records: Vec<(OpMeta, Timestamp)>,
    /// The document's heads once the step's changes (and all before them)
    /// were made, sorted.
    pub heads: Vec<ChangeHash>,
}

/// Whether `doc` holds every change of `heads`: records read up to heads it
/// lacks (a damaged record skipped on reload) no longer describe it.
pub fn knows_all(doc: &Automerge, heads: &[ChangeHash]) -> bool {
    heads.iter().all(|h| doc.get_change_meta_by_hash(h).is_some())
}

impl OperationInfo {
    /// An operation as its first commit record (`meta`, at `at`) tells it;
    /// records of it in other documents add their items, and an undo
    /// record sets `undone_by`.
    pub fn first(meta: OpMeta, at: Timestamp) -> Self {
        Self {
            id: meta.op,
            kind: meta.kind,
            at,
            user: meta.user,
            device_id: meta.device,
            count: meta.count,
            reason: meta.reason,
            undone_by: None,
        }
    }
}

/// Operations from the commit records of any number of documents (one
/// operation may span several), newest first.
pub fn summarize(records: impl IntoIterator<Item = (OpMeta, Timestamp)>) -> Vec<OperationInfo> {
    let mut ops: BTreeMap<OperationId, OperationInfo> = BTreeMap::new();
    let mut undone: Vec<(OperationId, OperationId)> = Vec::new();
    for (meta, at) in records {
        if let Some(target) = meta.undoes {
            undone.push((target, meta.op));
        }
        let (op, count) = (meta.op, meta.count);
        ops.entry(op)
            .and_modify(|o| {
                o.count = o.count.saturating_add(count);
                o.at = o.at.min(at);
            })
            .or_insert_with(|| OperationInfo::first(meta, at));
    }
    for (target, by) in undone {
        if let Some(o) = ops.get_mut(&target) {
            // Two replicas may undo the same operation concurrently; show one,
            // the same one everywhere.
            o.undone_by = Some(o.undone_by.map_or(by, |b| b.min(by)));
        }
    }
    let mut out: Vec<_> = ops.into_values().collect();
    out.sort_by_key(|o| std::cmp::Reverse((o.at, o.id)));
    out
}

/// The operations recorded in a set of documents, newest first.
pub fn operations<'a>(docs: impl IntoIterator<Item = &'a Automerge>) -> Vec<OperationInfo> {
    summarize(docs.into_iter().flat_map(operation_records))
}
