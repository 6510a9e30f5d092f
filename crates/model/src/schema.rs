//! The shape of sitesync's Automerge documents and the plumbing every
//! document type shares: creating the root, checking it on load, and running
//! a mutation as one validated, committed transaction.
//!
//! ```text
//! project doc (one per project)          drawing doc (one per drawing)
//! ├─ schema: 1                           ├─ schema: 1
//! ├─ kind: "project"                     ├─ kind: "drawing"
//! ├─ id                                  ├─ project_id, drawing_id
//! ├─ name, code, deleted   (registers)   ├─ templates: {tid: Template JSON}
//! ├─ templates: {tid: Template JSON}     └─ components: {cid: {
//! └─ drawings: {did: {                        id, template_id, created_at,
//!      id, created_at,                        tag, kind, quantity_total, unit,
//!      number, title, revision,               budget_hours, deleted (registers),
//!      parent_id, area, system,               attributes: {name: register},
//!      deleted (registers)}}                  milestones: {key: register
//!                                                 | {entry key: entry}}}}
//! ```
//!
//! Every map that replicas could otherwise race to create (`templates`,
//! `drawings`, `components`, each component's `attributes` and `milestones`,
//! each quantity milestone's entry map) is created together with its parent,
//! by one writer, so concurrent edits never create competing copies.

use automerge::transaction::Transaction;
use automerge::{ActorId, Automerge, ObjId, ReadDoc, ScalarValue, Value};

use crate::error::{ModelError, Result};
use crate::operation::WriteCtx;

/// The schema version written into every new document. A document with a
/// higher version was written by a newer build and is refused, not guessed at.
pub const SCHEMA_VERSION: i64 = 1;

/// Which of the two document types a document is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DocKind {
    Project,
    Drawing,
}

impl DocKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Project => "project",
            Self::Drawing => "drawing",
        }
    }
}

/// The plumbing both document types share: wrapping a checked Automerge
/// document, loading saved bytes with this process's actor, and access to the
/// Automerge document for saving, merging and syncing.
macro_rules! document_plumbing {
    ($ty:ident, $kind:expr) => {
        impl $ty {
            /// Wraps a document loaded or synced by the caller, checking its schema.
            pub fn from_automerge(doc: Automerge) -> Result<Self> {
                schema::check(&doc, $kind)?;
                Ok(Self::wrap(doc))
            }

            /// Loads saved bytes with a fresh actor for this process.
            pub fn load(bytes: &[u8], actor: ActorId) -> Result<Self> {
                let doc = Automerge::load(bytes)
                    .map_err(|e| ModelError::corrupt(concat!(stringify!($ty), " bytes"), e))?
                    .with_actor(actor);
                Self::from_automerge(doc)
            }

            /// The Automerge document, for saving and syncing.
            pub fn automerge(&self) -> &Automerge {
                &self.doc
            }

            /// The Automerge document, for merging and applying sync messages.
            pub fn automerge_mut(&mut self) -> &mut Automerge {
                &mut self.doc
            }
        }
    };
}
pub(crate) use document_plumbing;

/// A fresh, empty Automerge document for this actor. Callers give every
/// process start a fresh actor id, so a restored backup never reuses an
/// actor's sequence numbers.
pub(crate) fn new_doc(actor: ActorId) -> Automerge {
    Automerge::new().with_actor(actor)
}

/// Checks that `doc` is a sitesync document of `kind` at a version this
/// build understands.
pub(crate) fn check(doc: &Automerge, kind: DocKind) -> Result<()> {
    let version = match doc.get(automerge::ROOT, "schema")? {
        Some((Value::Scalar(s), _)) => match s.as_ref() {
            ScalarValue::Int(v) => *v,
            other => return Err(ModelError::corrupt("schema", format!("not an integer: {other}"))),
        },
        _ => return Err(ModelError::corrupt("schema", "missing: not a sitesync document")),
    };
    if version > SCHEMA_VERSION {
        return Err(ModelError::UnsupportedSchema {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    let found = crate::crdt::read_str(doc, &automerge::ROOT, "kind")?;
    if found != kind.as_str() {
        return Err(ModelError::corrupt(
            "kind",
            format!("expected a {} document, found {found:?}", kind.as_str()),
        ));
    }
    Ok(())
}

/// Writes the root keys every document has.
pub(crate) fn init_root(tx: &mut Transaction<'_>, kind: DocKind) -> Result<()> {
    use automerge::transaction::Transactable;
    tx.put(automerge::ROOT, "schema", SCHEMA_VERSION)?;
    tx.put(automerge::ROOT, "kind", kind.as_str())?;
    Ok(())
}

/// Runs `f` as one transaction: committed (with the operation's message and
/// time) when it returns `Ok`, rolled back — nothing written — when it
/// returns `Err`. `f` returns its output and how many items it applied.
pub(crate) fn transact<O>(
    doc: &mut Automerge,
    ctx: &WriteCtx,
    f: impl FnOnce(&mut Transaction<'_>) -> Result<(O, usize)>,
) -> Result<O> {
    let mut tx = doc.transaction();
    match f(&mut tx) {
        Ok((out, count)) => {
            tx.commit_with(ctx.commit_options(count));
            Ok(out)
        }
        Err(e) => {
            tx.rollback();
            Err(e)
        }
    }
}

/// An object id in the form the change log uses (counter, actor), so ops
/// decoded from changes can be matched to objects read from the document.
pub(crate) type ObjKey = (u64, ActorId);

pub(crate) fn obj_key(id: &ObjId) -> Option<ObjKey> {
    match id {
        ObjId::Root => None,
        ObjId::Id(counter, actor, _) => Some((*counter, actor.clone())),
    }
}

/// Which kind of sitesync document `doc` is (for a store that holds both).
pub fn kind_of(doc: &Automerge) -> Result<DocKind> {
    match crate::crdt::read_str(doc, &automerge::ROOT, "kind")?.as_str() {
        "project" => Ok(DocKind::Project),
        "drawing" => Ok(DocKind::Drawing),
        other => Err(ModelError::corrupt(
            "kind",
            format!("unknown document kind {other:?}"),
        )),
    }
}
