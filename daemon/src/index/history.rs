//! Per-drawing history rows, kept current from the change log.

use std::collections::HashMap;

use sitesync_model::automerge::ChangeHash;
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

    /// How many drawings' rows are kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.kept.len()
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
        // Only the components the new changes touched are sorted again:
        // a drawing with years of history has thousands of rows.
        let mut touched = std::collections::HashSet::new();
        for (cid, row) in index_changes(am, &new)? {
            self.rows.entry(cid).or_default().push(row);
            touched.insert(cid);
        }
        for cid in touched {
            if let Some(rows) = self.rows.get_mut(&cid) {
                sort_newest_first(rows);
            }
        }
        self.heads = am.get_heads();
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
