//! The daemon's derived state: per project, the drawing list and every
//! component view (built from the documents on first use, then kept current
//! by the service on every write and every sync), and per drawing, its
//! components' history rows.
//!
//! Nothing here is authoritative: every structure can be rebuilt from the
//! documents. The project index is also saved, a record per drawing with
//! the heads of the document its entries were read at ([`Unsaved`],
//! written in the background by the service), so a restart decodes only
//! the drawings that changed since: the first listing after a restart read
//! every document, 8–15 s at 100,000 components. A record whose heads are
//! not the document's is ignored, so it never disagrees with them.
//!
//! Costs that must not grow with the project: a write touches only its own
//! components' entries and its drawing's [`Tally`], and project totals are
//! a sum over drawings, never a walk over components. A listing filters and
//! sorts the compact entries (scanning small keys first) and decodes only
//! the page it returns.
//!
//! Memory: a component is held as a [`Slot`]: the fields filters, sorts and
//! tallies read (shared strings interned), plus the whole view packed into
//! bytes. ~0.8 KB a component, against ~2.5 KB as a [`Component`] (its
//! attribute map and milestone names are separate allocations): at 100,000
//! components the difference is the daemon's memory target.

use std::collections::{BTreeMap, HashMap, HashSet};

use std::sync::Arc;

use sitesync_model::{
    Component, ComponentId, DrawingId, DrawingInfo, GroupBy, Progress, ProjectId, Status, Tally, Timestamp,
    rollup,
};
use sitesync_sync::{Repo, RepoError};

use crate::paging::{Page, Paged};

mod history;
mod query;
mod saved;
#[cfg(test)]
mod tests;

pub use history::{Histories, HistoryIndex};
pub use query::{ComponentQuery, Sort};
pub use saved::Unsaved;
use saved::saved as saved_record;
use saved::{SAVED_VIEW_LIMIT, SavedView, saved_views};

/// Derived state of one project.
pub struct ProjectIndex {
    pub drawings: BTreeMap<DrawingId, DrawingInfo>,
    /// Every component, deleted ones included (a delete is a flag, so
    /// entries are never removed), in one dense array a listing walks.
    components: Vec<Slot>,
    /// Beside each entry of `components`, the fields most listings filter
    /// on, packed small: a listing scans these 2.4 MB at 100,000
    /// components, and reads an entry (~150 bytes and its attribute list,
    /// two cache misses) only when its key matches. The bench's listing
    /// (kind, status and one attribute) took 4.5 ms over a hash map of
    /// entries, 0.6 ms over these.
    keys: Vec<Key>,
    /// Where each component sits in `components`.
    positions: HashMap<ComponentId, u32>,
    /// Per drawing: the positions of its components and the tally of the
    /// live ones, recomputed from those few entries when one of them changes.
    members: HashMap<DrawingId, Members>,
    /// Kinds, attribute names and values: a few hundred distinct strings
    /// shared by 100,000 components. Never shrinks, so an interned
    /// string's address identifies it (see [`Key`]).
    strings: HashSet<Arc<str>>,
    /// Drawings whose entries may differ from their saved record: every
    /// drawing a [`Self::put`] touched, or read from its document, since
    /// [`Self::take_unsaved`] last took it.
    unsaved: HashSet<DrawingId>,
}

/// What [`ProjectIndex::build`] read each drawing's entries from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Built {
    /// Drawings whose saved record matched their document's heads.
    pub saved: usize,
    /// Drawings read from their documents (no record, or a stale one).
    pub read: usize,
}

/// One component in the index.
pub struct Slot {
    pub id: ComponentId,
    pub drawing_id: DrawingId,
    pub tag: Box<str>,
    pub kind: Arc<str>,
    pub status: Status,
    pub deleted: bool,
    pub completion_percent: f64,
    pub budget_hours: Option<f64>,
    pub updated_at: Timestamp,
    pub attributes: Box<[(Arc<str>, Arc<str>)]>,
    /// The whole [`Component`], see [`pack`].
    packed: Box<[u8]>,
}

impl Slot {
    /// The component as the API returns it.
    pub fn component(&self) -> Component {
        unpack(&self.packed)
    }

    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| &**k == name)
            .map(|(_, v)| &**v)
    }
}

/// Packs a view: bincode (compact, fast), or JSON for a view with a
/// conflict, whose values are arbitrary JSON bincode cannot read back. The
/// first byte says which.
fn pack(c: &Component) -> Box<[u8]> {
    let has_conflicts = c.milestones.iter().any(|m| !m.conflicts.is_empty());
    let mut out = vec![u8::from(has_conflicts)];
    if has_conflicts {
        serde_json::to_writer(&mut out, c).expect("a component serialises as JSON");
    } else {
        let bytes = bincode::serde::encode_to_vec(c, bincode::config::standard())
            .expect("a component without conflicts serialises with bincode");
        out.extend_from_slice(&bytes);
    }
    out.into_boxed_slice()
}

/// Reads back what [`pack`] wrote in this process (never input from
/// outside), so a failure is a bug, not a condition to handle.
fn unpack(bytes: &[u8]) -> Component {
    decode(bytes).expect("the index reads back what it packed")
}

/// Reads back a packed view, `None` when the bytes are not exactly one.
fn decode(bytes: &[u8]) -> Option<Component> {
    match bytes.split_first()? {
        (0, rest) => {
            let (c, read) =
                bincode::serde::decode_from_slice::<Component, _>(rest, bincode::config::standard()).ok()?;
            (read == rest.len()).then_some(c)
        }
        (_, rest) => serde_json::from_slice(rest).ok(),
    }
}

/// A component's deleted flag, status, kind (the address of its interned
/// string: equal kinds share one) and attribute pairs (a one-word Bloom
/// filter), see [`ProjectIndex::keys`].
struct Key {
    kind: usize,
    /// One bit per attribute pair, [`attribute_bits`]. A component whose
    /// bits lack a pair's bit lacks the pair, so an attribute filter reads
    /// the entry (a cache miss on its attribute list) of only the
    /// components that have the pair, plus a few percent that share bits.
    attributes: u64,
    status: Status,
    deleted: bool,
}

impl Key {
    fn of(slot: &Slot) -> Self {
        Self {
            kind: interned_address(&slot.kind),
            attributes: attribute_bits(slot.attributes.iter().map(|(k, v)| (k, v))),
            status: slot.status,
            deleted: slot.deleted,
        }
    }
}

/// Identifies an interned string: only compared, never turned back into one.
fn interned_address(s: &Arc<str>) -> usize {
    Arc::as_ptr(s).cast::<u8>() as usize
}

/// The bits of attribute pairs (interned names and values) in
/// [`Key::attributes`]: one bit per pair.
fn attribute_bits<'a>(pairs: impl Iterator<Item = (&'a Arc<str>, &'a Arc<str>)>) -> u64 {
    pairs
        .map(|(name, value)| {
            let mixed = (interned_address(name) as u64 ^ (interned_address(value) as u64).rotate_left(32))
                .wrapping_mul(0x9e37_79b9_7f4a_7c15);
            1 << (mixed >> 58)
        })
        .fold(0, |bits, bit| bits | bit)
}

#[derive(Default)]
struct Members {
    positions: Vec<u32>,
    tally: Tally,
}

/// What [`ProjectIndex::put`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Created,
    Updated,
    Deleted,
}

impl Change {
    /// The event name.
    pub fn event(self) -> &'static str {
        match self {
            Self::Created => "component.created",
            Self::Updated => "component.updated",
            Self::Deleted => "component.deleted",
        }
    }
}

impl ProjectIndex {
    /// Reads the project's drawing list and every drawing's components:
    /// from the drawing's saved record when it was saved at the document's
    /// current heads, from the document otherwise.
    pub fn build(repo: &Repo, pid: ProjectId) -> Result<(Self, Built), RepoError> {
        let drawings: BTreeMap<_, _> = repo
            .read_project(pid, |p| p.drawings())??
            .into_iter()
            .map(|d| (d.id, d))
            .collect();
        let mut index = Self {
            drawings,
            components: Vec::new(),
            keys: Vec::new(),
            positions: HashMap::new(),
            members: HashMap::new(),
            strings: HashSet::new(),
            unsaved: HashSet::new(),
        };
        let mut built = Built::default();
        let ids: Vec<DrawingId> = index.drawings.keys().copied().collect();
        for id in ids {
            if let Some(heads) = repo.heads(id.0)?
                && let Some(views) = saved_record(repo, pid, id, heads)
                && let Some(views) = saved_views(&views, id)
            {
                for view in views {
                    match view {
                        SavedView::Packed(head, packed) => index.put_head(&head, packed.into()),
                        SavedView::Whole(c, packed) => index.put_head(&Head::of(&c), packed.into()),
                    };
                }
                built.saved += 1;
                continue;
            }
            // A drawing listed before its document arrived (sync) has no
            // components yet.
            match repo.read_drawing(id, |d| d.components()) {
                Ok(list) => {
                    for c in list? {
                        index.put(&c);
                    }
                    index.unsaved.insert(id);
                    built.read += 1;
                }
                Err(RepoError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok((index, built))
    }

    /// The component, deleted or not.
    pub fn get(&self, cid: ComponentId) -> Option<Component> {
        self.slot(cid).map(Slot::component)
    }

    /// The component's entry, deleted or not.
    pub fn slot(&self, cid: ComponentId) -> Option<&Slot> {
        self.positions.get(&cid).map(|&at| &self.components[at as usize])
    }

    /// How many components, deleted ones included.
    pub fn len(&self) -> usize {
        self.components.len()
    }

    pub fn is_empty(&self) -> bool {
        self.components.is_empty()
    }

    /// Components not deleted.
    pub fn live(&self) -> impl Iterator<Item = &Slot> {
        self.components.iter().filter(|s| !s.deleted)
    }

    /// The live components of one drawing.
    pub fn live_on(&self, did: DrawingId) -> Vec<Component> {
        let Some(m) = self.members.get(&did) else {
            return Vec::new();
        };
        m.positions
            .iter()
            .map(|&at| &self.components[at as usize])
            .filter(|s| !s.deleted)
            .map(Slot::component)
            .collect()
    }

    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(shared) = self.strings.get(s) {
            return shared.clone();
        }
        let shared: Arc<str> = Arc::from(s);
        self.strings.insert(shared.clone());
        shared
    }

    /// Puts a fresh view in, keeping its drawing's tally current. Returns
    /// what changed, or `None` when the view is what the index held. The
    /// drawing is due for saving either way: its document's heads moved.
    pub fn put(&mut self, c: &Component) -> Option<Change> {
        self.unsaved.insert(c.drawing_id);
        self.put_head(&Head::of(c), pack(c))
    }

    /// [`Self::put`] of a view's entry fields and its packed bytes,
    /// leaving what is saved alone.
    fn put_head(&mut self, c: &Head<'_>, packed: Box<[u8]>) -> Option<Change> {
        let change = match self.slot(c.id) {
            None => Change::Created,
            Some(old) if old.packed == packed => return None,
            Some(old) if !old.deleted && c.deleted => Change::Deleted,
            Some(_) => Change::Updated,
        };
        let attributes = c
            .attributes
            .iter()
            .map(|(k, v)| (self.intern(k), self.intern(v)))
            .collect();
        let slot = Slot {
            id: c.id,
            drawing_id: c.drawing_id,
            tag: c.tag.into(),
            kind: self.intern(c.kind),
            status: c.status,
            deleted: c.deleted,
            completion_percent: c.completion_percent,
            budget_hours: c.budget_hours,
            updated_at: c.updated_at,
            attributes,
            packed,
        };
        let members = self.members.entry(c.drawing_id).or_default();
        if change == Change::Created {
            let at = u32::try_from(self.components.len()).expect("fewer than 2^32 components");
            self.positions.insert(c.id, at);
            members.positions.push(at);
            self.keys.push(Key::of(&slot));
            self.components.push(slot);
        } else {
            let at = self.positions[&c.id] as usize;
            self.keys[at] = Key::of(&slot);
            self.components[at] = slot;
        }
        let mut tally = Tally::default();
        for &at in &members.positions {
            let s = &self.components[at as usize];
            if !s.deleted {
                tally.add_one(s.budget_hours, s.completion_percent);
            }
        }
        members.tally = tally;
        Some(change)
    }

    /// The live components of one drawing, summed.
    pub fn drawing_tally(&self, did: DrawingId) -> Tally {
        self.members.get(&did).map(|m| m.tally).unwrap_or_default()
    }

    /// The project's rollup: grouped ones walk the components, the totals
    /// are a sum of the drawings' tallies.
    pub fn rollup(&self, group_by: Option<GroupBy>) -> Progress {
        match group_by {
            None => {
                let mut total = Tally::default();
                for m in self.members.values() {
                    total.merge(&m.tally);
                }
                total.progress()
            }
            Some(_) => rollup(
                self.live()
                    .map(|s| (s.component(), self.drawings.get(&s.drawing_id))),
                group_by,
            ),
        }
    }

    /// Takes up to `max` drawings due for saving, each with its document's
    /// heads and its entries as they are now. The caller holds the lock
    /// that orders writes, so heads and entries match, except for a
    /// document `unindexed` names (another device's changes applied but not
    /// yet indexed), which stays due; `unindexed` is asked after the heads
    /// are read, so an apply that starts in between is caught. The caller
    /// encodes and writes the records after releasing the lock, and gives
    /// back with [`Self::mark_unsaved`] what it failed to write.
    pub fn take_unsaved(
        &mut self,
        repo: &Repo,
        pid: ProjectId,
        max: usize,
        unindexed: &dyn Fn(DrawingId) -> bool,
    ) -> Result<Vec<Unsaved>, RepoError> {
        let taken: Vec<DrawingId> = self.unsaved.iter().take(max).copied().collect();
        let mut out = Vec::with_capacity(taken.len());
        let mut kept = Vec::new();
        for &did in &taken {
            // Not held here (listed before it arrived): nothing to save.
            let Some(heads) = repo.heads(did.0)? else {
                continue;
            };
            if unindexed(did) {
                kept.push(did);
                continue;
            }
            let views = self.members.get(&did).map_or_else(Vec::new, |m| {
                m.positions
                    .iter()
                    .map(|&at| self.components[at as usize].packed.clone())
                    .collect()
            });
            out.push(Unsaved {
                project: pid,
                drawing: did,
                heads,
                views,
            });
        }
        // Only once all were taken: on an error above, every one stays due.
        for did in taken.iter().filter(|d| !kept.contains(d)) {
            self.unsaved.remove(did);
        }
        Ok(out)
    }

    /// Marks a drawing due for saving again (its record failed to write).
    pub fn mark_unsaved(&mut self, did: DrawingId) {
        self.unsaved.insert(did);
    }

    /// One page of the components matching `q`, in its order. Filters and
    /// sorts the compact entries; only the page is decoded.
    pub fn query(&self, q: &ComponentQuery, page: Page) -> Paged<Component> {
        // Every kind and attribute string in the index is interned, so the
        // filters compare pointers; one no component has matches nothing.
        let interned = |s: &str| self.strings.get(s);
        let kind = match q.kind.as_deref().map(interned) {
            None => None,
            Some(Some(k)) => Some(interned_address(k)),
            Some(None) => return page.of(Vec::new()),
        };
        let mut attributes = Vec::with_capacity(q.attributes.len());
        // `area` and `system` fall back to the drawing's, as the rollups
        // group them: a component with no `area` of its own is in its
        // drawing's area. They are checked per entry, not by bits.
        let mut inherited: Vec<(&str, &str)> = Vec::new();
        for (k, v) in &q.attributes {
            if inherits(k) {
                inherited.push((k, v));
                continue;
            }
            match (interned(k), interned(v)) {
                (Some(k), Some(v)) => attributes.push((k, v)),
                _ => return page.of(Vec::new()),
            }
        }
        let wanted_bits = attribute_bits(attributes.iter().copied());
        let needle = q.q.as_ref().map(|s| s.to_lowercase());
        let mut hits: Vec<&Slot> = self
            .keys
            .iter()
            .zip(&self.components)
            .filter(|(key, _)| {
                (q.include_deleted || !key.deleted)
                    && q.status.is_none_or(|s| key.status == s)
                    && kind.is_none_or(|k| key.kind == k)
                    && key.attributes & wanted_bits == wanted_bits
            })
            .map(|(_, c)| c)
            .filter(|c| q.drawing_id.is_none_or(|d| c.drawing_id == d))
            .filter(|c| {
                attributes.iter().all(|(k, v)| {
                    c.attributes
                        .iter()
                        .any(|(ck, cv)| Arc::ptr_eq(ck, k) && Arc::ptr_eq(cv, v))
                })
            })
            .filter(|c| {
                inherited.iter().all(|&(k, v)| {
                    let own = c.attribute(k);
                    let drawing = || {
                        let d = self.drawings.get(&c.drawing_id)?;
                        if k == "area" {
                            d.area.as_deref()
                        } else {
                            d.system.as_deref()
                        }
                    };
                    own.or_else(drawing) == Some(v)
                })
            })
            .filter(|c| q.min_completion.is_none_or(|m| c.completion_percent >= m))
            .filter(|c| q.max_completion.is_none_or(|m| c.completion_percent <= m))
            .filter(|c| needle.as_ref().is_none_or(|n| c.tag.to_lowercase().contains(n)))
            .collect();
        hits.sort_unstable_by(|a, b| q.sort.compare(a, b));
        page.of_mapped(&hits, |s| s.component())
    }
}

/// Whether a component attribute filter falls back to the drawing's field
/// of that name ([`sitesync_model::progress::group_key`] groups the same).
fn inherits(name: &str) -> bool {
    matches!(name, "area" | "system")
}

/// What an entry keeps of a view, borrowed from the view or from its
/// packed bytes.
#[derive(Debug, PartialEq)]
struct Head<'a> {
    id: ComponentId,
    drawing_id: DrawingId,
    tag: &'a str,
    kind: &'a str,
    status: Status,
    deleted: bool,
    completion_percent: f64,
    budget_hours: Option<f64>,
    updated_at: Timestamp,
    attributes: Vec<(&'a str, &'a str)>,
}

impl<'a> Head<'a> {
    fn of(c: &'a Component) -> Self {
        Self {
            id: c.id,
            drawing_id: c.drawing_id,
            tag: &c.tag,
            kind: &c.kind,
            status: c.status,
            deleted: c.deleted,
            completion_percent: c.completion_percent,
            budget_hours: c.budget_hours,
            updated_at: c.updated_at,
            attributes: c
                .attributes
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
        }
    }

    /// Reads the fields from a view packed with bincode (after [`pack`]'s
    /// tag byte) without decoding the rest: a start reads 100,000 saved
    /// views, and decoding each whole (milestones, a dozen strings) was
    /// most of its time, in malloc and free.
    fn read_packed(bincode: &'a [u8]) -> Option<Self> {
        /// [`Component`]'s fields in order up to `updated_at` (bincode is
        /// positional), strings borrowed from the bytes.
        #[derive(serde::Deserialize)]
        #[allow(dead_code)] // Some fields are read only to skip them.
        struct Prefix<'a> {
            id: ComponentId,
            project_id: ProjectId,
            drawing_id: DrawingId,
            tag: &'a str,
            kind: &'a str,
            template_id: sitesync_model::TemplateId,
            workflow_type: sitesync_model::WorkflowType,
            quantity_total: Option<f64>,
            unit: Option<&'a str>,
            budget_hours: Option<f64>,
            #[serde(borrow)]
            attributes: Vec<(&'a str, &'a str)>,
            completion_percent: f64,
            status: Status,
            deleted: bool,
            created_at: &'a str,
            updated_at: Timestamp,
        }
        let limited = bincode::config::standard().with_limit::<SAVED_VIEW_LIMIT>();
        let (p, _): (Prefix<'a>, usize) = bincode::serde::borrow_decode_from_slice(bincode, limited).ok()?;
        Some(Self {
            id: p.id,
            drawing_id: p.drawing_id,
            tag: p.tag,
            kind: p.kind,
            status: p.status,
            deleted: p.deleted,
            completion_percent: p.completion_percent,
            budget_hours: p.budget_hours,
            updated_at: p.updated_at,
            attributes: p.attributes,
        })
    }
}
