//! Undo of an operation: a new change that restores the previous values —
//! only for fields whose current winning write *is* that operation's write
//! (compared by operation id). A field written since, even back to an equal
//! value, is skipped and reported `changed_since`. Quantity entries are undone
//! by marking them (never skipped, idempotent). Things the operation created
//! are soft-deleted. Undo is a normal change: it syncs like any other.

use std::collections::HashSet;

use automerge::transaction::Transaction;
use automerge::{Automerge, ObjId};
use serde::{Deserialize, Serialize};

use crate::crdt::{self, Write};
use crate::drawing::DrawingDoc;
use crate::error::{ModelError, Result};
use crate::history::{self, DecodedWrite, ObjIndex, Place};
use crate::ids::{ComponentId, DrawingId, OperationId};
use crate::operation::{OperationKind, WriteCtx};
use crate::project::ProjectDoc;
use crate::schema;

/// Why a field was not restored.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// Written since the operation (by anyone, to any value).
    ChangedSince,
}

/// A field an undo left alone.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub component_id: Option<ComponentId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drawing_id: Option<DrawingId>,
    pub milestone: Option<String>,
    pub field: String,
    pub reason: SkipReason,
}

/// What an undo did in one document.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UndoReport {
    pub reverted: usize,
    pub skipped: Vec<Skipped>,
}

impl UndoReport {
    /// Adds another document's report (an operation may span several).
    pub fn absorb(&mut self, other: UndoReport) {
        self.reverted += other.reverted;
        self.skipped.extend(other.skipped);
    }
}

/// The undo's own context: kind `undo`, pointing at its target.
fn undo_ctx(ctx: &WriteCtx, target: OperationId) -> WriteCtx {
    WriteCtx {
        kind: OperationKind::Undo,
        undoes: Some(target),
        ..ctx.clone()
    }
}

/// The writes of `target` in `doc`, refusing an undo of an undo.
fn target_writes(doc: &Automerge, ix: &ObjIndex, target: OperationId) -> Result<Vec<DecodedWrite>> {
    let (meta, writes) =
        history::operation_writes(doc, ix, target).ok_or(ModelError::OperationNotFound { id: target })?;
    match meta.kind {
        OperationKind::Undo => Err(ModelError::UndoOfUndo { id: target }),
        OperationKind::ProjectCreate | OperationKind::TemplateCreate => Err(ModelError::NotUndoable {
            id: target,
            kind: meta.kind,
        }),
        _ => Ok(writes),
    }
}

/// Restores one register to the value before `target`, if `target`'s write
/// still wins. `first` is the operation's first write of it (its `p` is the
/// value before the operation, even when the operation wrote it twice).
fn revert_register(
    tx: &mut Transaction<'_>,
    obj: &ObjId,
    key: &str,
    ctx: &WriteCtx,
    target: OperationId,
    first: &str,
) -> Result<bool> {
    let first: Write<serde_json::Value> =
        serde_json::from_str(first).map_err(|e| ModelError::corrupt(key, e))?;
    let current = crdt::read_register::<_, serde_json::Value>(tx, obj, key)?;
    if current.is_none_or(|r| r.winner.op != target) {
        return Ok(false);
    }
    crdt::write_register(tx, obj, key, ctx, first.p, serde_json::Value::Null, None)?;
    Ok(true)
}

/// Marks something the operation created as deleted, if the creation's
/// `deleted: false` still wins.
fn uncreate(tx: &mut Transaction<'_>, obj: &ObjId, ctx: &WriteCtx, target: OperationId) -> Result<bool> {
    let current = crdt::read_register::<_, bool>(tx, obj, "deleted")?;
    if current.is_none_or(|r| r.winner.op != target) {
        return Ok(false);
    }
    crdt::write_register(tx, obj, "deleted", ctx, true, false, None)?;
    Ok(true)
}

impl DrawingDoc {
    /// Undoes what operation `target` did in this document.
    pub fn undo(&mut self, ctx: &WriteCtx, target: OperationId) -> Result<UndoReport> {
        let ctx = undo_ctx(ctx, target);
        let ix = ObjIndex::drawing(self.automerge(), None)?;
        let writes = target_writes(self.automerge(), &ix, target)?;
        let created: HashSet<ComponentId> = writes
            .iter()
            .filter(|w| w.place == Place::Components && w.raw.is_none())
            .filter_map(|w| w.key.parse().ok())
            .collect();
        schema::transact(self.automerge_mut(), &ctx, |tx| {
            let mut report = UndoReport::default();
            let mut done: HashSet<(Place, String)> = HashSet::new();
            let skip = |c: ComponentId, milestone: Option<String>, field: String| Skipped {
                component_id: Some(c),
                drawing_id: None,
                milestone,
                field,
                reason: SkipReason::ChangedSince,
            };
            for c in &created {
                let obj = ix
                    .obj_of(&Place::ComponentField(*c))
                    .ok_or_else(|| ModelError::corrupt("components", "created component missing"))?;
                if uncreate(tx, &obj, &ctx, target)? {
                    report.reverted += 1;
                } else {
                    report.skipped.push(skip(*c, None, "deleted".into()));
                }
            }
            for w in &writes {
                let Some(raw) = &w.raw else { continue };
                if !done.insert((w.place.clone(), w.key.clone())) {
                    continue; // only the operation's first write of a field counts
                }
                let (c, milestone, field) = match &w.place {
                    Place::ComponentField(c) => (*c, None, w.key.clone()),
                    Place::Attributes(c) => (*c, None, format!("attributes.{}", w.key)),
                    Place::Milestones(c) => (*c, Some(w.key.clone()), "value".to_owned()),
                    Place::Entries(c, m) => {
                        let obj = ix
                            .obj_of(&w.place)
                            .ok_or_else(|| ModelError::corrupt(m.as_str(), "entries missing"))?;
                        let entries = crdt::read_entries(tx, &obj)?;
                        let seen = crdt::quantity_of(&entries);
                        if let Some(e) = entries.iter().find(|e| e.key == w.key && e.entry.op == target) {
                            crdt::mark_undone(tx, &obj, &ctx, e, seen)?;
                            report.reverted += 1;
                        }
                        let _ = c; // entries are undone even on components the operation created
                        continue;
                    }
                    _ => continue,
                };
                if created.contains(&c) {
                    continue;
                }
                let obj = ix
                    .obj_of(&w.place)
                    .ok_or_else(|| ModelError::corrupt(field.as_str(), "object missing"))?;
                if revert_register(tx, &obj, &w.key, &ctx, target, raw)? {
                    report.reverted += 1;
                } else {
                    report.skipped.push(skip(c, milestone, field));
                }
            }
            let n = report.reverted;
            Ok((report, n))
        })
    }
}

impl ProjectDoc {
    /// Undoes what operation `target` did in the project document: drawings
    /// it created are soft-deleted, fields it wrote restored.
    pub fn undo(&mut self, ctx: &WriteCtx, target: OperationId) -> Result<UndoReport> {
        let ctx = undo_ctx(ctx, target);
        let ix = ObjIndex::project(self.automerge())?;
        let writes = target_writes(self.automerge(), &ix, target)?;
        let created: HashSet<DrawingId> = writes
            .iter()
            .filter(|w| w.place == Place::Drawings && w.raw.is_none())
            .filter_map(|w| w.key.parse().ok())
            .collect();
        schema::transact(self.automerge_mut(), &ctx, |tx| {
            let mut report = UndoReport::default();
            let skip = |d: Option<DrawingId>, field: String| Skipped {
                component_id: None,
                drawing_id: d,
                milestone: None,
                field,
                reason: SkipReason::ChangedSince,
            };
            for d in &created {
                let obj = ix
                    .obj_of(&Place::DrawingField(*d))
                    .ok_or_else(|| ModelError::corrupt("drawings", "created drawing missing"))?;
                if uncreate(tx, &obj, &ctx, target)? {
                    report.reverted += 1;
                } else {
                    report.skipped.push(skip(Some(*d), "deleted".into()));
                }
            }
            let mut done: HashSet<(Place, String)> = HashSet::new();
            for w in &writes {
                let Some(raw) = &w.raw else { continue };
                let drawing = match &w.place {
                    Place::ProjectRoot => None,
                    Place::DrawingField(d) if !created.contains(d) => Some(*d),
                    _ => continue,
                };
                if !done.insert((w.place.clone(), w.key.clone())) {
                    continue;
                }
                let obj = ix
                    .obj_of(&w.place)
                    .ok_or_else(|| ModelError::corrupt(w.key.as_str(), "object missing"))?;
                if revert_register(tx, &obj, &w.key, &ctx, target, raw)? {
                    report.reverted += 1;
                } else {
                    report.skipped.push(skip(drawing, w.key.clone()));
                }
            }
            let n = report.reverted;
            Ok((report, n))
        })
    }
}
