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

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read as _, Write as _};
use std::sync::Arc;

use sitesync_model::automerge::ChangeHash;
use sitesync_model::history::{index_changes, sort_newest_first};
use sitesync_model::{
    Component, ComponentId, DrawingDoc, DrawingId, DrawingInfo, GroupBy, HistoryEntry, ModelError, Progress,
    ProjectId, Status, Tally, Timestamp, rollup,
};
use sitesync_sync::{Repo, RepoError};

use crate::paging::{Page, Paged};

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
                && let Some(views) = saved(repo, pid, id, heads)
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

/// Saved entries live in metadata records `index/<project>/<drawing>`.
const SAVED_PREFIX: &str = "index/";

/// The layout of a saved record, and of the packed views in it. Bump it
/// when [`Component`] or how a view is derived changes: a record of another
/// format is ignored (its drawing is read from the document again), never
/// decoded. `the_packed_view_format_is_pinned` fails when the packed bytes
/// change, as a reminder.
const SAVED_FORMAT: u32 = 2;

/// A decoded view is at most this large, so a record that is not what its
/// format says (a missed bump) cannot make a length allocate the machine.
const SAVED_VIEW_LIMIT: usize = 1 << 24;

fn saved_name(pid: ProjectId, did: DrawingId) -> String {
    format!("{SAVED_PREFIX}{pid}/{did}")
}

/// A drawing's entries as [`ProjectIndex::take_unsaved`] took them.
pub struct Unsaved {
    pub project: ProjectId,
    pub drawing: DrawingId,
    heads: Vec<ChangeHash>,
    views: Vec<Box<[u8]>>,
}

impl Unsaved {
    /// The metadata record: the format (4 bytes, little-endian), then,
    /// deflated, the head count and the sorted heads, the view count, then
    /// each packed view after its length. Deflated because views repeat
    /// their ids, times and milestone names: at 100,000 components, ~50 MB
    /// packed, 4.6 MB deflated.
    pub fn record(&self) -> (String, Vec<u8>) {
        let mut heads = self.heads.clone();
        heads.sort();
        let mut raw =
            Vec::with_capacity(4 + 32 * heads.len() + self.views.iter().map(|v| v.len() + 4).sum::<usize>());
        raw.extend_from_slice(&(heads.len() as u32).to_le_bytes());
        for h in &heads {
            raw.extend_from_slice(&h.0);
        }
        raw.extend_from_slice(&(self.views.len() as u32).to_le_bytes());
        for v in &self.views {
            raw.extend_from_slice(&(v.len() as u32).to_le_bytes());
            raw.extend_from_slice(v);
        }
        let mut out = flate2::write::DeflateEncoder::new(
            SAVED_FORMAT.to_le_bytes().to_vec(),
            flate2::Compression::fast(),
        );
        out.write_all(&raw).expect("writing to memory");
        (
            saved_name(self.project, self.drawing),
            out.finish().expect("writing to memory"),
        )
    }
}

/// The packed views of a drawing's saved record (still to read with
/// [`saved_views`]), if the record holds exactly the document's `heads`
/// in this format. Anything else (no record, stale, damaged, another
/// format) is `None`: the caller reads the document, the truth.
fn saved(repo: &Repo, pid: ProjectId, did: DrawingId, mut heads: Vec<ChangeHash>) -> Option<Vec<u8>> {
    let record = match repo.store().get_meta(&saved_name(pid, did)) {
        Ok(record) => record?,
        Err(e) => {
            tracing::warn!(drawing = %did, error = %e, "saved index entries unreadable; reading the drawing");
            return None;
        }
    };
    heads.sort();
    open_saved(&record, &heads)
}

/// [`saved`] of a record in hand.
fn open_saved(record: &[u8], heads: &[ChangeHash]) -> Option<Vec<u8>> {
    let (format, deflated) = record.split_first_chunk::<4>()?;
    if u32::from_le_bytes(*format) != SAVED_FORMAT {
        return None;
    }
    let mut raw = Vec::new();
    flate2::read::DeflateDecoder::new(deflated)
        .read_to_end(&mut raw)
        .ok()?;
    let (count, rest) = raw.split_first_chunk::<4>()?;
    let count = u32::from_le_bytes(*count) as usize;
    let saved_heads = rest.get(..32 * count)?;
    if count != heads.len()
        || saved_heads
            .chunks_exact(32)
            .zip(heads)
            .any(|(saved, h)| saved != h.0)
    {
        return None;
    }
    raw.drain(..4 + 32 * count);
    Some(raw)
}

/// One view of a saved record: its entry fields read straight from its
/// packed bytes, or (a view packed as JSON, with a conflict) decoded whole.
enum SavedView<'r> {
    Packed(Head<'r>, &'r [u8]),
    Whole(Component, &'r [u8]),
}

/// The views in `packed` (a record's views, as [`saved`] gives them), if
/// every one reads back as one of drawing `did`'s; all or nothing, so a
/// damaged record never leaves part of itself in the index.
fn saved_views(packed: &[u8], did: DrawingId) -> Option<Vec<SavedView<'_>>> {
    let (count, mut packed) = packed.split_first_chunk::<4>()?;
    let count = u32::from_le_bytes(*count) as usize;
    let mut views = Vec::with_capacity(count.min(4096));
    while let Some((len, rest)) = packed.split_first_chunk::<4>() {
        let (view, rest) = rest.split_at_checked(u32::from_le_bytes(*len) as usize)?;
        packed = rest;
        let view = match view.split_first()? {
            (0, bincode) => SavedView::Packed(Head::read_packed(bincode)?, view),
            _ => SavedView::Whole(decode(view)?, view),
        };
        let drawing = match &view {
            SavedView::Packed(head, _) => head.drawing_id,
            SavedView::Whole(c, _) => c.drawing_id,
        };
        if drawing != did {
            return None;
        }
        views.push(view);
    }
    (packed.is_empty() && views.len() == count).then_some(views)
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

/// Filters and order of a component listing.
#[derive(Clone, Debug, Default)]
pub struct ComponentQuery {
    pub drawing_id: Option<DrawingId>,
    pub status: Option<Status>,
    pub kind: Option<String>,
    pub q: Option<String>,
    pub attributes: Vec<(String, String)>,
    pub min_completion: Option<f64>,
    pub max_completion: Option<f64>,
    pub include_deleted: bool,
    pub sort: Sort,
}

/// Component list order; ties go by tag, then id, so every order is total
/// and pages never overlap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sort {
    #[default]
    Tag,
    TagDesc,
    Completion,
    CompletionDesc,
    UpdatedAt,
    UpdatedAtDesc,
}

impl Sort {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "tag" => Self::Tag,
            "-tag" => Self::TagDesc,
            "completion" => Self::Completion,
            "-completion" => Self::CompletionDesc,
            "updated_at" => Self::UpdatedAt,
            "-updated_at" => Self::UpdatedAtDesc,
            _ => return None,
        })
    }

    fn compare(self, a: &Slot, b: &Slot) -> Ordering {
        let by_tag = |a: &Slot, b: &Slot| a.tag.cmp(&b.tag).then(a.id.cmp(&b.id));
        let by_completion = |a: &Slot, b: &Slot| a.completion_percent.total_cmp(&b.completion_percent);
        let by_updated = |a: &Slot, b: &Slot| a.updated_at.cmp(&b.updated_at);
        match self {
            Self::Tag => by_tag(a, b),
            Self::TagDesc => by_tag(b, a),
            Self::Completion => by_completion(a, b).then(by_tag(a, b)),
            Self::CompletionDesc => by_completion(b, a).then(by_tag(a, b)),
            Self::UpdatedAt => by_updated(a, b).then(by_tag(a, b)),
            Self::UpdatedAtDesc => by_updated(b, a).then(by_tag(a, b)),
        }
    }
}

/// History rows of one drawing document, indexed up to `heads`. Built from
/// the change log on first use, then extended with only the changes made
/// since, so a history request never rescans the whole log.
#[derive(Default)]
pub struct HistoryIndex {
    heads: Vec<ChangeHash>,
    rows: HashMap<ComponentId, Vec<HistoryEntry>>,
}

impl HistoryIndex {
    pub fn catch_up(&mut self, doc: &DrawingDoc) -> Result<(), ModelError> {
        let am = doc.automerge();
        // A head we indexed but the document lacks (a damaged record was
        // skipped on reload) means the rows no longer match: start over.
        if self.heads.iter().any(|h| am.get_change_meta_by_hash(h).is_none()) {
            self.heads.clear();
            self.rows.clear();
        }
        let new = am.get_changes(&self.heads);
        if new.is_empty() {
            return Ok(());
        }
        for (cid, row) in index_changes(am, &new)? {
            self.rows.entry(cid).or_default().push(row);
        }
        for rows in self.rows.values_mut() {
            sort_newest_first(rows);
        }
        self.heads = am.get_heads();
        Ok(())
    }

    /// A component's rows, newest first.
    pub fn rows(&self, cid: ComponentId) -> Vec<HistoryEntry> {
        self.rows.get(&cid).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sitesync_model::progress::group_key;

    fn component(n: u128, drawing: u128, hours: f64, completion: f64, deleted: bool) -> Component {
        Component {
            id: ComponentId::from_u128(n),
            project_id: ProjectId::from_u128(1),
            drawing_id: DrawingId::from_u128(drawing),
            tag: format!("T-{n:03}"),
            kind: "spool".into(),
            template_id: sitesync_model::TemplateId::from_u128(9),
            workflow_type: sitesync_model::WorkflowType::Discrete,
            quantity_total: None,
            unit: None,
            budget_hours: Some(hours),
            attributes: BTreeMap::new(),
            completion_percent: completion,
            status: Status::of(completion),
            deleted,
            created_at: sitesync_model::Timestamp(1),
            updated_at: sitesync_model::Timestamp(n as i64),
            updated_by: "u".into(),
            milestones: Vec::new(),
        }
    }

    /// Drawing `n`, with no area or system.
    fn drawing_info(n: u128) -> DrawingInfo {
        DrawingInfo {
            id: DrawingId::from_u128(n),
            project_id: ProjectId::from_u128(1),
            number: format!("D-{n}"),
            title: None,
            revision: None,
            parent_id: None,
            area: None,
            system: None,
            deleted: false,
            created_at: sitesync_model::Timestamp(1),
            updated_at: sitesync_model::Timestamp(1),
            updated_by: "u".into(),
        }
    }

    /// A repeatable pseudo-random sequence: each call gives a number below `m`.
    fn xorshift(mut seed: u64) -> impl FnMut(u64) -> u64 {
        move |m| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % m
        }
    }

    /// A done weld milestone with every optional field set.
    fn milestone(conflicts: Vec<sitesync_model::drawing::ConflictView>) -> sitesync_model::MilestoneView {
        sitesync_model::MilestoneView {
            key: "weld".into(),
            name: "Weld".into(),
            weight: 50.0,
            completed: Some(true),
            percent: None,
            quantity: Some(2.5),
            updated_at: Some(sitesync_model::Timestamp(1_700_000_000_123)),
            updated_by: Some("ann".into()),
            device_id: Some(sitesync_model::DeviceId::from_u128(5)),
            conflicts,
        }
    }

    fn empty() -> ProjectIndex {
        ProjectIndex {
            drawings: BTreeMap::new(),
            components: Vec::new(),
            keys: Vec::new(),
            positions: HashMap::new(),
            members: HashMap::new(),
            strings: HashSet::new(),
            unsaved: HashSet::new(),
        }
    }

    /// A view reads back exactly as put, every optional field set or not,
    /// with or without a conflict (the JSON path), and the entry's own
    /// fields match it.
    #[test]
    fn a_view_reads_back_whole_from_its_packed_entry() {
        let conflict = sitesync_model::drawing::ConflictView {
            value: serde_json::json!({"completed": false, "note": [1, "x"]}),
            updated_by: "bob".into(),
            updated_at: sitesync_model::Timestamp(1_700_000_000_999),
            device_id: sitesync_model::DeviceId::from_u128(6),
        };
        let mut plain = component(1, 1, 2.0, 50.0, false);
        plain.attributes = BTreeMap::from([("area".into(), "U03".into()), ("line".into(), "L-7".into())]);
        plain.unit = Some("m".into());
        plain.quantity_total = Some(12.0);
        plain.milestones = vec![milestone(Vec::new()), milestone(Vec::new())];
        let mut conflicted = component(2, 1, 3.0, 25.0, true);
        conflicted.milestones = vec![milestone(vec![conflict])];

        let mut index = empty();
        for c in [plain, conflicted] {
            assert_eq!(unpack(&pack(&c)), c);
            index.put(&c);
            assert_eq!(index.get(c.id), Some(c.clone()));
            let slot = index.slot(c.id).unwrap();
            assert_eq!(
                (slot.deleted, &*slot.tag, &*slot.kind),
                (c.deleted, c.tag.as_str(), c.kind.as_str())
            );
            for (k, v) in &c.attributes {
                assert_eq!(slot.attribute(k), Some(v.as_str()));
            }
        }
        assert_eq!(
            index
                .query(
                    &ComponentQuery {
                        attributes: vec![("area".into(), "U03".into())],
                        ..Default::default()
                    },
                    Page::default()
                )
                .total,
            1
        );
    }

    /// `attr.area` and `attr.system` find a component by its drawing's
    /// area or system when it has none of its own (as the rollups group
    /// it), and by its own when it has one; other attributes never fall
    /// back.
    #[test]
    fn area_and_system_filters_fall_back_to_the_drawings() {
        let drawing = |n: u128, area: &str| DrawingInfo {
            area: Some(area.into()),
            system: Some("Steam".into()),
            ..drawing_info(n)
        };
        let mut index = empty();
        index
            .drawings
            .insert(DrawingId::from_u128(1), drawing(1, "Bay 1"));
        index
            .drawings
            .insert(DrawingId::from_u128(2), drawing(2, "Bay 2"));
        let inherits = component(1, 1, 1.0, 0.0, false);
        let mut own = component(2, 1, 1.0, 0.0, false);
        own.attributes = BTreeMap::from([("area".into(), "Bay 2".into()), ("line".into(), "L-1".into())]);
        let other = component(3, 2, 1.0, 0.0, false);
        for c in [&inherits, &own, &other] {
            index.put(c);
        }
        let tags = |attributes: Vec<(&str, &str)>| -> Vec<String> {
            let q = ComponentQuery {
                attributes: attributes
                    .into_iter()
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect(),
                ..Default::default()
            };
            index
                .query(&q, Page::default())
                .items
                .into_iter()
                .map(|c| c.tag)
                .collect()
        };
        assert_eq!(tags(vec![("area", "Bay 1")]), ["T-001"]);
        assert_eq!(tags(vec![("area", "Bay 2")]), ["T-002", "T-003"]);
        assert_eq!(tags(vec![("system", "Steam")]), ["T-001", "T-002", "T-003"]);
        assert_eq!(tags(vec![("area", "Bay 2"), ("line", "L-1")]), ["T-002"]);
        assert!(tags(vec![("area", "Bay 9")]).is_empty());
        assert!(
            tags(vec![("line", "Bay 1")]).is_empty(),
            "only area and system fall back"
        );
    }

    /// A view with every field set.
    fn full_view() -> Component {
        let mut c = component(1, 1, 2.0, 50.0, false);
        c.attributes = BTreeMap::from([("area".into(), "U03".into())]);
        c.unit = Some("m".into());
        c.quantity_total = Some(12.0);
        c.milestones = vec![milestone(Vec::new())];
        c
    }

    /// Saved records hold packed views, so a change to how a view packs
    /// must bump [`SAVED_FORMAT`]: when this fails, bump it, then update
    /// the bytes here.
    #[test]
    fn the_packed_view_format_is_pinned() {
        let hex: String = pack(&full_view()).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            (SAVED_FORMAT, hex.as_str()),
            (
                2,
                concat!(
                    "00100000000000000000000000000000000110000000000000000000000000000000011000000000",
                    "00000000000000000000000105542d3030310573706f6f6c10000000000000000000000000000000",
                    "090001000000000000284001016d0100000000000000400104617265610355303300000000000049",
                    "40010018313937302d30312d30315430303a30303a30302e3030315a18313937302d30312d303154",
                    "30303a30303a30302e3030315a0175010477656c640457656c640000000000004940010100010000",
                    "0000000004400118323032332d31312d31345432323a31333a32302e3132335a0103616e6e011000",
                    "00000000000000000000000000000500"
                )
            ),
            "the packed view changed: bump SAVED_FORMAT, then pin the new bytes"
        );
    }

    /// A saved record's views read back whole, as a start puts them.
    fn decode_saved(record: &[u8], did: DrawingId, heads: &[ChangeHash]) -> Option<Vec<Component>> {
        let raw = open_saved(record, heads)?;
        let views = saved_views(&raw, did)?;
        Some(
            views
                .into_iter()
                .map(|v| match v {
                    SavedView::Packed(head, packed) => {
                        let c = unpack(packed);
                        assert_eq!(head, Head::of(&c), "the head read from the bytes is the view's");
                        c
                    }
                    SavedView::Whole(c, packed) => {
                        assert_eq!(packed, &*pack(&c));
                        c
                    }
                })
                .collect(),
        )
    }

    /// An entry's fields read straight from a packed view are the view's,
    /// every optional field set or not.
    #[test]
    fn a_packed_views_head_is_its_entry_fields() {
        let mut bare = component(7, 2, 0.0, 0.0, true);
        bare.budget_hours = None;
        for c in [full_view(), bare] {
            let packed = pack(&c);
            assert_eq!(packed[0], 0, "packed with bincode");
            assert_eq!(Head::read_packed(&packed[1..]), Some(Head::of(&c)));
        }
    }

    /// A record reads back at exactly the heads it was saved with, and is
    /// ignored otherwise: other heads, another format, cut
    /// short, or views of another drawing.
    #[test]
    fn a_saved_record_reads_back_only_at_its_heads() {
        let did = DrawingId::from_u128(1);
        let heads = vec![ChangeHash([7; 32]), ChangeHash([3; 32])];
        let mut second = component(2, 1, 1.0, 0.0, true);
        second.kind = "weld".into();
        let mut conflicted = component(3, 1, 1.0, 25.0, false);
        conflicted.milestones = full_view().milestones;
        conflicted.milestones[0].conflicts = vec![sitesync_model::drawing::ConflictView {
            value: serde_json::json!({"completed": false}),
            updated_by: "bob".into(),
            updated_at: sitesync_model::Timestamp(2),
            device_id: sitesync_model::DeviceId::from_u128(6),
        }];
        let views = [full_view(), second, conflicted];
        let unsaved = |drawing: DrawingId, views: &[Component]| Unsaved {
            project: ProjectId::from_u128(1),
            drawing,
            heads: heads.clone(),
            views: views.iter().map(pack).collect(),
        };
        let (name, record) = unsaved(did, &views).record();
        assert_eq!(name, format!("index/{}/{did}", ProjectId::from_u128(1)));
        // Taken unsorted; the record sorts them, and `saved` sorts the
        // document's before comparing.
        let mut sorted = heads.clone();
        sorted.sort();
        let read = decode_saved(&record, did, &sorted).expect("read back at its heads");
        assert_eq!(read, views);

        assert!(decode_saved(&record, did, &sorted[..1]).is_none(), "fewer heads");
        assert!(
            decode_saved(&record, did, &[ChangeHash([7; 32]), ChangeHash([9; 32])]).is_none(),
            "other heads"
        );
        let mut other_format = record.clone();
        other_format[..4].copy_from_slice(&(SAVED_FORMAT + 1).to_le_bytes());
        assert!(
            decode_saved(&other_format, did, &sorted).is_none(),
            "another format"
        );
        assert!(
            decode_saved(&record[..record.len() / 2], did, &sorted).is_none(),
            "cut short"
        );
        assert!(decode_saved(&record[..3], did, &sorted).is_none(), "no format");
        let (_, first_two) = unsaved(did, &views[..2]).record();
        let mut raw = open_saved(&first_two, &sorted).unwrap();
        raw[..4].copy_from_slice(&3u32.to_le_bytes());
        assert!(saved_views(&raw, did).is_none(), "a view short of its count");
        let (_, elsewhere) = unsaved(DrawingId::from_u128(2), &views).record();
        assert!(
            decode_saved(&elsewhere, DrawingId::from_u128(2), &sorted).is_none(),
            "views of drawing 1"
        );
        let (_, empty) = unsaved(did, &[]).record();
        assert_eq!(
            decode_saved(&empty, did, &sorted).map(|v| v.len()),
            Some(0),
            "a drawing with no components"
        );
    }

    /// The kept totals equal a full rollup after any sequence of puts
    /// (creates, updates, deletes, restores, across drawings).
    #[test]
    fn kept_totals_match_a_full_rollup() {
        let mut index = empty();
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..2_000 {
            let n = u128::from(next(300));
            let c = component(
                n,
                n % 7,
                (next(40) as f64) / 4.0,
                (next(5) * 25) as f64,
                next(6) == 0,
            );
            index.put(&c);
            let all: Vec<Component> = index.components.iter().map(Slot::component).collect();
            let full = rollup(all.iter().map(|c| (c, None)), None);
            let kept = index.rollup(None);
            assert_eq!(kept.component_count, full.component_count);
            assert!((kept.completion_percent - full.completion_percent).abs() < 1e-6);
            assert!((kept.earned_hours - full.earned_hours).abs() < 1e-6);
            assert!((kept.budget_hours - full.budget_hours).abs() < 1e-6);
        }
        for d in 0..7 {
            let did = DrawingId::from_u128(d);
            let live = index.live_on(did);
            let full = rollup(live.iter().map(|c| (c, None)), None);
            assert_eq!(index.drawing_tally(did).count, full.component_count);
        }
    }

    #[test]
    fn put_says_what_changed() {
        let mut index = empty();
        assert_eq!(
            index.put(&component(1, 1, 2.0, 0.0, false)),
            Some(Change::Created)
        );
        assert_eq!(index.put(&component(1, 1, 2.0, 0.0, false)), None);
        assert_eq!(
            index.put(&component(1, 1, 2.0, 50.0, false)),
            Some(Change::Updated)
        );
        assert_eq!(
            index.put(&component(1, 1, 2.0, 50.0, true)),
            Some(Change::Deleted)
        );
        assert_eq!(
            index.put(&component(1, 1, 2.0, 50.0, false)),
            Some(Change::Updated)
        );
        assert_eq!(index.drawing_tally(DrawingId::from_u128(1)).earned, 1.0);
    }

    /// Every query returns exactly the live (or all) components a plain
    /// filter over the whole views picks, after creates and updates that
    /// change kinds, attributes, status and deletion: the packed keys, the
    /// interned comparisons and the attribute bits never drop a match or
    /// let a non-match through.
    #[test]
    fn a_query_picks_what_a_plain_filter_over_the_views_picks() {
        let mut next = xorshift(0x2545_f491_4f6c_dd1d);
        const KINDS: [&str; 3] = ["spool", "weld", "pipe"];
        const NAMES: [&str; 3] = ["area", "system", "line"];
        const VALUES: [&str; 4] = ["U01", "U02", "SYS-1", "L-7"];
        let mut index = empty();
        // Drawings with an area and a system, for components without one.
        for n in 0..9u128 {
            let mut d = drawing_info(n);
            d.area = (n % 3 > 0).then(|| VALUES[(n % 2) as usize].to_owned());
            d.system = (n % 4 == 0).then(|| "SYS-1".to_owned());
            index.drawings.insert(d.id, d);
        }
        let mut views: BTreeMap<ComponentId, Component> = BTreeMap::new();
        for _ in 0..1_500 {
            let n = u128::from(next(400));
            let mut c = component(n, n % 9, 1.0, (next(5) * 25) as f64, next(5) == 0);
            c.kind = KINDS[next(3) as usize].into();
            for name in NAMES {
                if next(3) > 0 {
                    c.attributes.insert(name.into(), VALUES[next(4) as usize].into());
                }
            }
            index.put(&c);
            views.insert(c.id, c);
        }
        for _ in 0..400 {
            let pick = |n: u64, of: &[&str]| of.get(n as usize).map(|s| s.to_string());
            let mut attributes = Vec::new();
            for _ in 0..next(3) {
                // Now and then a name or value no component has.
                let name = pick(next(4), &NAMES).unwrap_or_else(|| "nowhere".into());
                let value = pick(next(5), &VALUES).unwrap_or_else(|| "U99".into());
                attributes.push((name, value));
            }
            let q = ComponentQuery {
                kind: match next(5) {
                    0 => Some("nothing".into()),
                    1 => None,
                    n => pick(n - 2, &KINDS),
                },
                status: [
                    None,
                    Some(Status::NotStarted),
                    Some(Status::InProgress),
                    Some(Status::Completed),
                ][next(4) as usize],
                attributes,
                min_completion: (next(3) == 0).then_some(50.0),
                include_deleted: next(2) == 0,
                ..Default::default()
            };
            let expected: Vec<ComponentId> = views
                .values()
                .filter(|c| q.include_deleted || !c.deleted)
                .filter(|c| q.kind.as_ref().is_none_or(|k| &c.kind == k))
                .filter(|c| q.status.is_none_or(|s| c.status == s))
                .filter(|c| q.min_completion.is_none_or(|m| c.completion_percent >= m))
                .filter(|c| {
                    let drawing = index.drawings.get(&c.drawing_id);
                    q.attributes.iter().all(|(k, v)| match k.as_str() {
                        "area" => group_key(c, drawing, GroupBy::Area).as_ref() == Some(v),
                        "system" => group_key(c, drawing, GroupBy::System).as_ref() == Some(v),
                        _ => c.attributes.get(k) == Some(v),
                    })
                })
                .map(|c| c.id)
                .collect();
            let page = index.query(
                &q,
                Page {
                    offset: 0,
                    limit: 1000,
                },
            );
            let mut got: Vec<ComponentId> = page.items.iter().map(|c| c.id).collect();
            got.sort();
            assert_eq!(got, expected, "{q:?}");
            assert_eq!(page.total, expected.len());
        }
    }

    #[test]
    fn a_query_pages_in_order_without_overlap() {
        let mut index = empty();
        for n in 0..25 {
            index.put(&component(n, n % 3, 1.0, ((n * 7) % 5 * 25) as f64, n == 4));
        }
        let q = ComponentQuery {
            sort: Sort::CompletionDesc,
            ..Default::default()
        };
        let mut seen = Vec::new();
        let mut page = Page { offset: 0, limit: 10 };
        loop {
            let p = index.query(&q, page);
            assert_eq!(p.total, 24);
            seen.extend(p.items.iter().map(|c| (c.completion_percent, c.tag.clone())));
            match p.next_cursor {
                Some(cursor) => {
                    page = Page {
                        offset: Page::decode_cursor(&cursor).unwrap(),
                        limit: 10,
                    }
                }
                None => break,
            }
        }
        assert_eq!(seen.len(), 24);
        let mut sorted = seen.clone();
        sorted.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        assert_eq!(seen, sorted);
    }
}
