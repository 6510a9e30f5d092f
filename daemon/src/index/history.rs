//! Per-drawing history rows, kept current from the change log.

use std::collections::HashMap;

use sitesync_model::automerge::{Automerge, ChangeHash};
use sitesync_model::history::{index_changes, sort_newest_first};
use sitesync_model::{ComponentId, DrawingDoc, DrawingId, HistoryEntry, ModelError};

use crate::paging::{Page, Paged};

/// Drawings whose history rows are kept at most: a drawing with years of
/// shift logs holds tens of thousands of rows (~10 MB at 25,000 writes),
/// and a crew looks at a few drawings at a time. Rebuilding an evicted
/// one reads its change log once.
pub const KEPT_DRAWINGS: usize = 8;

/// The history indexes of the drawings looked at last, at most
/// [`KEPT_DRAWINGS`].
#[derive(Default)]
pub struct Histories {
    /// Each drawing's index and its last use (`clock`).
    kept: HashMap<DrawingId, (u64, HistoryIndex)>,
    clock: u64,
}

impl Histories {
    /// The index of `did`, an empty one when not kept (the caller catches
    /// it up); the least recently used beyond the bound is dropped.
    pub fn get(&mut self, did: DrawingId) -> &mut HistoryIndex {
        self.clock += 1;
        if !self.kept.contains_key(&did) && self.kept.len() >= KEPT_DRAWINGS {
            let oldest = self
                .kept
                .iter()
                .min_by_key(|(_, (used, _))| *used)
                .map(|(d, _)| *d);
            if let Some(oldest) = oldest {
                self.kept.remove(&oldest);
            }
        }
        let (used, index) = self.kept.entry(did).or_default();
        *used = self.clock;
        index
    }

    /// Whether `did`'s rows are kept (a look at it catches up from them).
    pub fn is_kept(&self, did: DrawingId) -> bool {
        self.kept.contains_key(&did)
    }

    /// How many drawings' rows are kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.kept.len()
    }
}

/// What a drawing's change log holds since an index's heads
/// ([`HistoryIndex::read`]).
pub struct Caught {
    /// The heads it was read from.
    from: Vec<ChangeHash>,
    /// The document's heads when read.
    heads: Vec<ChangeHash>,
    rows: Vec<(ComponentId, HistoryEntry)>,
    /// Read from the start: the document lacked a head of `from`.
    reset: bool,
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
    /// The heads its rows are indexed up to (empty before first use).
    pub fn heads(&self) -> &[ChangeHash] {
        &self.heads
    }

    /// The rows of the changes `am` has since `from` (the heads of an
    /// index, see [`HistoryIndex::absorb`]). Reads the document alone, so
    /// callers read a copy outside every lock: the first look at a drawing
    /// with years of history reads its whole change log (~0.4 s at 25,000
    /// writes), and writes waited for it.
    pub fn read(am: &Automerge, from: &[ChangeHash]) -> Result<Caught, ModelError> {
        // A head we indexed but the document lacks (a damaged record was
        // skipped on reload) means the rows no longer match: start over.
        let reset = from.iter().any(|h| am.get_change_meta_by_hash(h).is_none());
        let since: &[ChangeHash] = if reset { &[] } else { from };
        let new = am.get_changes(since);
        let rows = if new.is_empty() {
            Vec::new()
        } else {
            index_changes(am, &new)?
        };
        Ok(Caught {
            from: from.to_vec(),
            heads: am.get_heads(),
            rows,
            reset,
        })
    }

    /// Adds what [`HistoryIndex::read`] found, when it was read from this
    /// index's heads; otherwise (the index moved meanwhile) nothing, and
    /// the next catch-up reads what it lacks.
    pub fn absorb(&mut self, caught: Caught) {
        if caught.from != self.heads {
            return;
        }
        if caught.reset {
            self.rows.clear();
        }
        // Only the components the new changes touched are sorted again:
        // a drawing with years of history has thousands of rows.
        let mut touched = std::collections::HashSet::new();
        for (cid, row) in caught.rows {
            self.rows.entry(cid).or_default().push(row);
            touched.insert(cid);
        }
        for cid in touched {
            if let Some(rows) = self.rows.get_mut(&cid) {
                sort_newest_first(rows);
            }
        }
        self.heads = caught.heads;
    }

    /// Catches up with the changes `doc` has since the rows were indexed.
    pub fn catch_up(&mut self, doc: &DrawingDoc) -> Result<(), ModelError> {
        let caught = Self::read(doc.automerge(), &self.heads)?;
        self.absorb(caught);
        Ok(())
    }

    /// One page of a component's rows, newest first; only the page's rows
    /// are copied.
    pub fn page(&self, cid: ComponentId, page: Page) -> Paged<HistoryEntry> {
        let rows = self.rows.get(&cid).map_or(&[][..], Vec::as_slice);
        page.of_mapped(rows, HistoryEntry::clone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// At most [`KEPT_DRAWINGS`] indexes are kept; the one used least
    /// recently goes first, and one asked for again comes back empty.
    #[test]
    fn histories_keep_the_drawings_used_last() {
        let mut h = Histories::default();
        let did = |n: u128| DrawingId(uuid::Uuid::from_u128(n));
        for n in 0..KEPT_DRAWINGS as u128 {
            h.get(did(n)).heads = vec![ChangeHash([n as u8; 32])];
        }
        assert_eq!(h.get(did(0)).heads, vec![ChangeHash([0; 32])], "kept");
        h.get(did(100));
        assert_eq!(h.len(), KEPT_DRAWINGS);
        assert!(
            h.get(did(1)).heads.is_empty(),
            "the least recently used was dropped"
        );
        assert_eq!(h.get(did(0)).heads, vec![ChangeHash([0; 32])], "used since: kept");
        assert_eq!(h.len(), KEPT_DRAWINGS);
    }
}
