//! The operations list (`GET /v1/projects/{pid}/operations`), derived from
//! the documents' commit records and kept so a listing reads no document.
//!
//! Per document: the commit records (operation metadata and time) read up
//! to its heads. Every durable change is told to the operations list by the
//! repository with its new commits ([`sitesync_sync::Persisted::commits`]),
//! so a document created or received here is followed from its first
//! change without being read. A listing compares each document's durable
//! heads (cheap: the repository knows them without loading the document)
//! with those followed: a document that is behind (followed from before a
//! restart, or never) is read for the changes since, or whole. Records are
//! saved, one metadata record per document (`oplog/<doc>`, written relaxed
//! by a listing and by [`OpLog::save`]), so a restart reads none of the
//! documents either. Reading every document of a 100,000-component project
//! for its records took 56 s (2,000 drawings, read from the store) and held
//! the service lock throughout; the app asks for the list on every
//! dashboard.
//!
//! Nothing here is authoritative. A saved record is only a prefix of its
//! document's log: a listing reads on from its heads, and a record whose
//! heads the document lacks (a damaged change record skipped on reload) or
//! that does not decode is dropped and the document read whole.
//!
//! Locks: `note` runs inside the repository's lock, so it only queues
//! (`pending`); a listing takes `docs`, then calls the repository, and
//! never holds `pending` while it does. No cycle.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sitesync_model::automerge::ChangeHash;
use sitesync_model::history::{knows_all, operation_records_since, summarize};
use sitesync_model::{OpMeta, OperationInfo, Timestamp};
use sitesync_sync::repo::Subscriber;
use sitesync_sync::{Persisted, Repo, RepoError};
use uuid::Uuid;

/// One document's commit records, read up to `heads`.
#[derive(Default)]
struct DocOps {
    heads: Vec<ChangeHash>,
    records: Vec<(OpMeta, Timestamp)>,
    /// Changed since last saved.
    dirty: bool,
}

/// A document's records as saved: the heads they were read at, sorted, as
/// hex, and each commit's metadata with its time in milliseconds.
#[derive(Serialize, Deserialize)]
struct Saved {
    heads: Vec<String>,
    records: Vec<(OpMeta, i64)>,
}

impl DocOps {
    fn encode(&self) -> Vec<u8> {
        let mut heads: Vec<String> = self.heads.iter().map(ToString::to_string).collect();
        heads.sort();
        let saved = Saved {
            heads,
            records: self.records.iter().map(|(m, at)| (m.clone(), at.0)).collect(),
        };
        serde_json::to_vec(&saved).expect("operation records serialize")
    }

    /// A saved record, or `None` for one that does not decode (damaged, or
    /// of another layout): the document is then read whole.
    fn decode(bytes: &[u8]) -> Option<Self> {
        let saved: Saved = serde_json::from_slice(bytes).ok()?;
        let heads = saved
            .heads
            .iter()
            .map(|h| h.parse::<ChangeHash>().ok())
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            heads,
            records: saved
                .records
                .into_iter()
                .map(|(m, at)| (m, Timestamp(at)))
                .collect(),
            dirty: false,
        })
    }
}

fn same_heads(a: &[ChangeHash], b: &[ChangeHash]) -> bool {
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    a.sort();
    b.sort();
    a == b
}

/// The operation records of every document, followed as they change.
#[derive(Default)]
pub struct OpLog {
    docs: Mutex<HashMap<Uuid, DocOps>>,
    /// Durable changes told by the repository, not yet applied to `docs`.
    pending: Mutex<Vec<Persisted>>,
}

/// The operations list follows the change feed: every durable change's
/// commits, queued (inside the repository's lock) for the next listing.
impl Subscriber for OpLog {
    fn persisted(&self, persisted: &[Persisted]) {
        let fresh = persisted.iter().filter(|p| p.commits.is_some()).cloned();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(fresh);
    }
}

impl OpLog {
    /// Applies the queued notes: a document followed up to a note's
    /// `before` (or new here) takes its commits and moves to its heads;
    /// one that is not stays as it is, to be read by the next listing.
    fn catch_up(&self, docs: &mut HashMap<Uuid, DocOps>) {
        let notes = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        for note in notes {
            let Some(commits) = note.commits else { continue };
            // A document not followed yet is taken up only when it is new
            // here (its commits are then its whole log); otherwise a
            // listing starts it from its saved record.
            let entry = if note.before.is_empty() {
                docs.entry(note.id).or_default()
            } else {
                match docs.get_mut(&note.id) {
                    Some(entry) => entry,
                    None => continue,
                }
            };
            if !same_heads(&entry.heads, &note.before) {
                continue;
            }
            entry.records.extend(commits.iter().filter_map(|c| {
                let meta = c.message.as_deref().and_then(OpMeta::decode)?;
                Some((meta, Timestamp(c.time)))
            }));
            entry.heads = note.heads;
            entry.dirty = true;
        }
    }

    /// The operations recorded in `docs` (a project's document and its
    /// drawings'), newest first, each document brought up to its current
    /// heads first. Documents not held here are skipped.
    pub fn list(&self, repo: &Repo, ids: &[Uuid]) -> Result<Vec<OperationInfo>, RepoError> {
        let mut docs = self.docs.lock().unwrap_or_else(|p| p.into_inner());
        self.catch_up(&mut docs);
        for &id in ids {
            let Some(heads) = repo.heads(id)? else { continue };
            let entry = docs.entry(id).or_insert_with(|| {
                repo.store()
                    .get_meta(&sitesync_sync::keys::oplog(id))
                    .ok()
                    .flatten()
                    .and_then(|b| DocOps::decode(&b))
                    .unwrap_or_default()
            });
            if same_heads(&entry.heads, &heads) {
                continue;
            }
            let read = repo.read_raw(id, |am| {
                let whole = !knows_all(am, &entry.heads);
                let since: &[ChangeHash] = if whole { &[] } else { &entry.heads };
                (whole, operation_records_since(am, since), am.get_heads())
            })?;
            let Some((whole, records, now)) = read else {
                continue;
            };
            if whole {
                entry.records.clear();
            }
            entry.records.extend(records);
            entry.heads = now;
            entry.dirty = true;
        }
        save(repo, &mut docs);
        let records = ids
            .iter()
            .filter_map(|id| docs.get(id))
            .flat_map(|d| d.records.iter().cloned());
        Ok(summarize(records))
    }

    /// The documents of `ids` a listing would have to read: those whose
    /// followed records are behind their durable heads.
    pub fn behind(&self, repo: &Repo, ids: &[Uuid]) -> Result<Vec<Uuid>, RepoError> {
        let mut docs = self.docs.lock().unwrap_or_else(|p| p.into_inner());
        self.catch_up(&mut docs);
        let mut behind = Vec::new();
        for &id in ids {
            if let Some(heads) = repo.heads(id)?
                && !docs.get(&id).is_some_and(|d| same_heads(&d.heads, &heads))
            {
                behind.push(id);
            }
        }
        Ok(behind)
    }

    /// Saves the records followed since they were last saved.
    pub fn save(&self, repo: &Repo) {
        let mut docs = self.docs.lock().unwrap_or_else(|p| p.into_inner());
        self.catch_up(&mut docs);
        save(repo, &mut docs);
    }
}

/// Writes the changed documents' records, relaxed (derived, and read again
/// when lost), in one batch.
fn save(repo: &Repo, docs: &mut HashMap<Uuid, DocOps>) {
    let changed: Vec<(String, Vec<u8>)> = docs
        .iter_mut()
        .filter(|(_, d)| d.dirty)
        .map(|(id, d)| {
            d.dirty = false;
            (sitesync_sync::keys::oplog(*id), d.encode())
        })
        .collect();
    if !changed.is_empty()
        && let Err(e) = repo.store().put_metas_relaxed(&changed)
    {
        tracing::warn!(error = %e, "saving operation records failed; they are read again next start");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A saved record reads back as written; a damaged or foreign one is
    /// refused (the document is then read whole), never trusted.
    #[test]
    fn a_saved_record_reads_back_and_a_damaged_one_is_refused() {
        let meta = OpMeta {
            op: sitesync_model::OperationId(Uuid::from_u128(7)),
            kind: sitesync_model::OperationKind::BulkUpdate,
            user: "ana".into(),
            device: sitesync_model::DeviceId::from_u128(3),
            reason: Some("daily report".into()),
            undoes: None,
            count: 12,
        };
        let ops = DocOps {
            heads: vec![ChangeHash([9; 32]), ChangeHash([1; 32])],
            records: vec![(meta.clone(), Timestamp(1_700_000_000_000))],
            dirty: true,
        };
        let back = DocOps::decode(&ops.encode()).expect("decodes");
        assert!(same_heads(&back.heads, &ops.heads));
        assert_eq!(back.records, ops.records);
        for bad in [&b"not json"[..], br#"{"heads": ["zz"], "records": []}"#, b""] {
            assert!(
                DocOps::decode(bad).is_none(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
