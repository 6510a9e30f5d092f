//! Per-drawing history rows, kept current from the change log.

use std::collections::HashMap;

use sitesync_model::automerge::ChangeHash;
use sitesync_model::history::{index_changes, sort_newest_first};
use sitesync_model::{ComponentId, DrawingDoc, HistoryEntry, ModelError};

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

    /// A component's rows, newest first.
    pub fn rows(&self, cid: ComponentId) -> Vec<HistoryEntry> {
        self.rows.get(&cid).cloned().unwrap_or_default()
    }
}
