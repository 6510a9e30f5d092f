//! Pending changes per project: this device's changes no relay has
//! acknowledged, counted once at start and then followed write by write
//! (the repository's feed), and the acknowledgements that end them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use sitesync_model::OpMeta;
use sitesync_model::automerge::ChangeHash;
use sitesync_sync::Persisted;
use sitesync_sync::repo::{decode_heads, encode_heads};
use sitesync_sync::session::Host;
use uuid::Uuid;

use super::*;

/// Local changes not yet covered by a relay's acknowledgement, counted per
/// document. A local write adds its own changes to its document's count;
/// only a document acknowledged meanwhile (or changed in a way the count
/// cannot follow) is counted again from the document itself, which means
/// decoding it when it is not cached. Without this, the first status after
/// importing 500,000 components decoded 10,000 drawings (28 s).
#[derive(Default)]
pub(super) struct Pending {
    pub(super) counts: Mutex<HashMap<Uuid, Counted>>,
    /// What happened to documents since the last count; `None` until the
    /// first count (which counts every document held).
    pub(super) dirty: Mutex<Option<HashMap<Uuid, Dirty>>>,
}

/// One document's count, and the heads (sorted) it is the count for.
pub(super) struct Counted {
    pub(super) project: Uuid,
    pub(super) heads: Vec<ChangeHash>,
    pub(super) count: usize,
}

/// What happened to one document since the last count.
#[derive(Default)]
pub(super) struct Dirty {
    /// Acknowledged meanwhile: count it from its acknowledged heads.
    pub(super) recount: bool,
    /// Durable writes, in order.
    pub(super) grew: Vec<Grew>,
}

/// One durable write to a document: heads before, heads after (both
/// sorted), and how many of the new changes are this process's own.
pub(super) type Grew = (Vec<ChangeHash>, Vec<ChangeHash>, usize);

pub(super) fn sorted_heads(h: &[ChangeHash]) -> Vec<ChangeHash> {
    let mut h = h.to_vec();
    h.sort_unstable();
    h
}

pub(super) fn acked_key(doc: Uuid) -> String {
    sitesync_sync::keys::acked(doc)
}

impl Pending {
    /// A document's count carried forward over the writes since it was
    /// made, without reading the document; `None` when the writes do not
    /// chain on from the counted heads (then it is counted afresh).
    ///
    /// Counting races writes, two ways, and neither must force a decode:
    /// a count read from the document may already include writes whose
    /// entries arrive after it (skipped here: the count's heads are one of
    /// their `after`s), and writes may land after the entries were taken
    /// (the result is then the count at the chain's end, not at the
    /// document's latest heads; the next count carries it on from there).
    pub(super) fn follow(counted: Option<&Counted>, grew: &[Grew]) -> Option<(Vec<ChangeHash>, usize)> {
        // A document new since the last count starts from no heads and nothing.
        let none = Vec::new();
        let start = counted.map_or((&none, 0), |c| (&c.heads, c.count));
        let covered = grew
            .iter()
            .rposition(|(_, after, _)| after == start.0)
            .map_or(0, |i| i + 1);
        grew[covered..]
            .iter()
            .try_fold(start, |(at, n), (before, after, own)| {
                (before == at).then_some((after, n + own))
            })
            .map(|(at, n)| (at.clone(), n))
    }

    /// Whether `doc` is known to hold none of this device's changes unacknowledged:
    /// counted at 0, and nothing of this process's own written since.
    /// An acknowledgement of such a document changes no count, so it need
    /// not be recorded (a daemon hears one with every sync message a relay
    /// sends it, for documents others changed).
    ///
    /// Never waits: a count in progress holds `counts` while it reads the
    /// repository, and this runs on a connection's task; then the
    /// acknowledgement is simply recorded.
    pub(super) fn nothing_pending(&self, doc: Uuid) -> bool {
        let counts = match self.counts.try_lock() {
            Ok(counts) => counts,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return false,
        };
        if counts.get(&doc).is_none_or(|c| c.count != 0) {
            return false;
        }
        let dirty = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
        match dirty.as_ref() {
            None => false,
            Some(dirty) => dirty
                .get(&doc)
                .is_none_or(|d| !d.recount && d.grew.iter().all(|(_, _, own)| *own == 0)),
        }
    }

    /// These documents were acknowledged: count them from their documents.
    pub(super) fn recount(&self, docs: &[Uuid]) {
        if let Some(dirty) = self.dirty.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            for doc in docs {
                dirty.entry(*doc).or_default().recount = true;
            }
        }
    }

    /// These documents' new changes became durable (called from inside the
    /// repository's lock: this must not read the repository).
    pub(super) fn grew(&self, persisted: &[Persisted]) {
        if let Some(dirty) = self.dirty.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            for p in persisted {
                dirty.entry(p.id).or_default().grew.push((
                    sorted_heads(&p.before),
                    sorted_heads(&p.heads),
                    p.own_changes,
                ));
            }
        }
    }
}

impl Replication {
    /// A relay made these heads of these documents durable: this device's
    /// changes they cover are no longer pending. Recorded in one write: a
    /// reconnect's summary acknowledges every document at once. The write
    /// is relaxed (durable with the next durable one): one comes for every
    /// change this device sends, and a crash losing it only shows changes
    /// as pending until the relay's next summary acknowledges them again.
    pub(super) fn acked(&self, acks: &[(Uuid, &[ChangeHash])]) {
        let repo = self.service.repo();
        let mut records = Vec::new();
        let mut marked = Vec::new();
        for &(doc, heads) in acks {
            if self.pending.nothing_pending(doc) {
                continue;
            }
            let theirs = sorted_heads(heads);
            // A reconnect re-announces every document's heads: most are
            // what was recorded last time, and cost one metadata read.
            let recorded = repo.store().get_meta(&acked_key(doc)).ok().flatten();
            if recorded
                .as_deref()
                .and_then(decode_heads)
                .map(|h| sorted_heads(&h))
                .as_ref()
                == Some(&theirs)
            {
                continue;
            }
            // Keep only heads this side knows; unknown ones cover nothing
            // yet. When they are exactly this side's heads, no need to
            // load the doc.
            let mine = repo.heads(doc).ok().flatten().map(|h| sorted_heads(&h));
            let known: Vec<ChangeHash> = if mine.as_ref() == Some(&theirs) {
                theirs
            } else {
                repo.read_raw(doc, |am| {
                    theirs
                        .iter()
                        .filter(|h| am.get_change_meta_by_hash(h).is_some())
                        .copied()
                        .collect()
                })
                .ok()
                .flatten()
                .unwrap_or_default()
            };
            if !known.is_empty() {
                records.push((acked_key(doc), encode_heads(&known)));
                marked.push(doc);
            }
        }
        if records.is_empty() {
            return;
        }
        if let Err(e) = repo.store().put_metas_relaxed(&records) {
            tracing::warn!(documents = records.len(), error = %e, "cannot record acknowledgements");
        }
        self.pending.recount(&marked);
    }

    pub(super) fn pending_counts(&self) -> BTreeMap<Uuid, usize> {
        let host = &self.host;
        // Taken in a short critical section: the change feed ([`Offer`]) marks
        // documents dirty while the repository's lock is held, so reading
        // the repository with this lock held deadlocked the two.
        // `counts` is held throughout (nothing else takes it), so two
        // callers never both see the first count as done before it is.
        let mut counts = self.pending.counts.lock().unwrap_or_else(|p| p.into_inner());
        let taken = {
            let mut dirty = self.pending.dirty.lock().unwrap_or_else(|p| p.into_inner());
            dirty.replace(HashMap::new())
        };
        let dirty = taken.unwrap_or_else(|| {
            // First count: every document held, each from its document.
            let mut all = HashMap::new();
            for p in host.projects().unwrap_or_default() {
                for (d, _) in host.summary(p).unwrap_or_default() {
                    all.insert(
                        d,
                        Dirty {
                            recount: true,
                            grew: Vec::new(),
                        },
                    );
                }
            }
            all
        });
        let me = self.service.device();
        let repo = self.service.repo();
        for (doc, what) in dirty {
            let Ok(Some(project)) = host.project_of(doc) else {
                continue;
            };
            let acked = repo
                .store()
                .get_meta(&acked_key(doc))
                .ok()
                .flatten()
                .and_then(|b| decode_heads(&b))
                .unwrap_or_default();
            let heads = sorted_heads(&repo.heads(doc).ok().flatten().unwrap_or_default());
            let followed = if !heads.is_empty() && heads == sorted_heads(&acked) {
                // Acknowledged up to this side's heads: nothing pending, and
                // no need to decode the document (a catch-up marks hundreds).
                Some((heads.clone(), 0))
            } else if what.recount {
                None
            } else {
                Pending::follow(counts.get(&doc), &what.grew)
            };
            let (heads, count) = match followed {
                Some(followed) => followed,
                // Counted from the document, with the heads it was counted
                // at (a write may land between reading the heads and this).
                None => repo
                    .read_raw(doc, |am| {
                        let own = am
                            .get_changes_meta(&acked)
                            .iter()
                            .filter(|c| {
                                c.message
                                    .as_deref()
                                    .and_then(OpMeta::decode)
                                    .is_some_and(|m| m.device == me)
                            })
                            .count();
                        (sorted_heads(&am.get_heads()), own)
                    })
                    .ok()
                    .flatten()
                    .unwrap_or((heads, 0)),
            };
            counts.insert(
                doc,
                Counted {
                    project,
                    heads,
                    count,
                },
            );
        }
        let mut out = BTreeMap::new();
        for c in counts.values() {
            *out.entry(c.project).or_insert(0) += c.count;
        }
        out
    }
}
