//! The document repository: documents loaded on demand, kept while in use,
//! evicted when idle (memory follows the working set, not the project size),
//! and written through to the store before a write is acknowledged.
//!
//! A write runs a closure over the documents it touches; afterwards the new
//! changes of every touched document are appended in **one** atomic, flushed
//! batch. If the closure fails, or the store does, the touched documents are
//! dropped from memory so the next read reloads exactly what is durable.
//!
//! The repository is synchronous; async callers run it on a blocking thread
//! (Automerge work is CPU-heavy and must stay off the async threads).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use sitesync_model::automerge::{ActorId, Automerge, ChangeHash};
use sitesync_model::schema::{DocKind, kind_of};
use sitesync_model::{DrawingDoc, DrawingId, ModelError, ProjectDoc, ProjectId};
use uuid::Uuid;

use crate::store::{Append, Damage, DocStore, StoreError};

/// Errors from the repository.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: Uuid },
}

/// A loaded document of either kind.
pub enum Doc {
    Project(ProjectDoc),
    Drawing(DrawingDoc),
}

impl Doc {
    pub fn automerge(&self) -> &Automerge {
        match self {
            Self::Project(d) => d.automerge(),
            Self::Drawing(d) => d.automerge(),
        }
    }

    fn from_automerge(doc: Automerge) -> Result<Self, ModelError> {
        Ok(match kind_of(&doc)? {
            DocKind::Project => Self::Project(ProjectDoc::from_automerge(doc)?),
            DocKind::Drawing => Self::Drawing(DrawingDoc::from_automerge(doc)?),
        })
    }
}

struct Slot {
    doc: Doc,
    /// Heads already durable in the store.
    saved: Vec<ChangeHash>,
    next_seq: u64,
    change_records: usize,
    last_used: u64,
}

#[derive(Default)]
struct Cache {
    slots: HashMap<Uuid, Slot>,
    damaged: Vec<Damage>,
    tick: u64,
}

/// Tuning knobs; the defaults suit a laptop.
#[derive(Clone, Copy, Debug)]
pub struct RepoConfig {
    /// Fold a document's change records into a snapshot past this many.
    pub compact_at: usize,
    /// Keep at most this many documents in memory.
    pub max_cached: usize,
}

impl Default for RepoConfig {
    fn default() -> Self {
        Self {
            compact_at: 64,
            max_cached: 256,
        }
    }
}

/// The document repository.
pub struct Repo {
    store: DocStore,
    actor: ActorId,
    config: RepoConfig,
    cache: Mutex<Cache>,
}

impl Repo {
    /// `actor` must be fresh for every process start, so a restored backup
    /// never reuses an actor's sequence numbers.
    pub fn new(store: DocStore, actor: ActorId, config: RepoConfig) -> Self {
        Self {
            store,
            actor,
            config,
            cache: Mutex::new(Cache::default()),
        }
    }

    /// The Automerge actor this process writes as.
    pub fn actor(&self) -> &ActorId {
        &self.actor
    }

    pub fn store(&self) -> &DocStore {
        &self.store
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        // A panic while holding the lock leaves only durable state behind
        // (writes persist before the cache is updated), so recover the guard.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads any document, then trims the cache (reads bound memory too).
    fn read<T>(&self, id: Uuid, f: impl FnOnce(&Doc) -> T) -> Result<T, RepoError> {
        let mut cache = self.lock();
        let out = f(&self.slot(&mut cache, id)?.doc);
        self.trim(&mut cache);
        Ok(out)
    }

    /// Reads a project document.
    pub fn read_project<T>(&self, id: ProjectId, f: impl FnOnce(&ProjectDoc) -> T) -> Result<T, RepoError> {
        self.read(id.0, |doc| match doc {
            Doc::Project(d) => Ok(f(d)),
            Doc::Drawing(_) => Err(RepoError::NotFound {
                what: "project",
                id: id.0,
            }),
        })?
    }

    /// Reads a drawing document.
    pub fn read_drawing<T>(&self, id: DrawingId, f: impl FnOnce(&DrawingDoc) -> T) -> Result<T, RepoError> {
        self.read(id.0, |doc| match doc {
            Doc::Drawing(d) => Ok(f(d)),
            Doc::Project(_) => Err(RepoError::NotFound {
                what: "drawing",
                id: id.0,
            }),
        })?
    }

    /// Runs `f` over the documents it touches, then makes every new change
    /// durable in one batch before returning.
    pub fn write<T>(&self, f: impl FnOnce(&mut Tx<'_>) -> Result<T, RepoError>) -> Result<T, RepoError> {
        let mut cache = self.lock();
        let mut tx = Tx {
            repo: self,
            cache: &mut cache,
            touched: HashSet::new(),
            metas: Vec::new(),
        };
        let result = f(&mut tx);
        let touched = std::mem::take(&mut tx.touched);
        let metas = std::mem::take(&mut tx.metas);
        let out = match result {
            Ok(out) => out,
            Err(e) => {
                for id in &touched {
                    cache.slots.remove(id);
                }
                return Err(e);
            }
        };
        if let Err(e) = self.persist(&mut cache, &touched, &metas) {
            for id in &touched {
                cache.slots.remove(id);
            }
            return Err(e.into());
        }
        self.trim(&mut cache);
        Ok(out)
    }

    fn persist(
        &self,
        cache: &mut Cache,
        touched: &HashSet<Uuid>,
        metas: &[(String, Vec<u8>)],
    ) -> Result<(), StoreError> {
        let mut appends = Vec::new();
        for id in touched {
            let slot = cache.slots.get(id).expect("touched documents are cached");
            let heads = slot.doc.automerge().get_heads();
            if heads != slot.saved {
                appends.push(Append {
                    id: *id,
                    seq: slot.next_seq,
                    bytes: slot.doc.automerge().save_after(&slot.saved),
                });
            }
        }
        self.store.append(&appends, metas)?;
        for a in &appends {
            let slot = cache.slots.get_mut(&a.id).expect("cached");
            slot.saved = slot.doc.automerge().get_heads();
            slot.next_seq += 1;
            slot.change_records += 1;
            if slot.change_records >= self.config.compact_at {
                // Compaction failing loses nothing: the change records stay.
                match self
                    .store
                    .compact(a.id, &slot.doc.automerge().save(), slot.next_seq)
                {
                    Ok(()) => slot.change_records = 0,
                    Err(e) => tracing::warn!(doc = %a.id, error = %e, "compaction failed; will retry"),
                }
            }
        }
        Ok(())
    }

    fn slot<'c>(&self, cache: &'c mut Cache, id: Uuid) -> Result<&'c mut Slot, RepoError> {
        cache.tick += 1;
        let tick = cache.tick;
        if !cache.slots.contains_key(&id) {
            let loaded = self
                .store
                .load(id, self.actor.clone())?
                .ok_or(RepoError::NotFound { what: "document", id })?;
            cache.damaged.extend(loaded.damaged);
            let saved = loaded.doc.get_heads();
            let doc = Doc::from_automerge(loaded.doc)?;
            cache.slots.insert(
                id,
                Slot {
                    doc,
                    saved,
                    next_seq: loaded.next_seq,
                    change_records: loaded.change_records,
                    last_used: tick,
                },
            );
        }
        let slot = cache.slots.get_mut(&id).expect("just inserted");
        slot.last_used = tick;
        Ok(slot)
    }

    /// Evicts the least recently used documents beyond the cache size.
    /// Safe between operations, when every cached change is durable — never
    /// call it inside a write, whose touched documents are not yet stored.
    fn trim(&self, cache: &mut Cache) {
        let excess = cache.slots.len().saturating_sub(self.config.max_cached);
        if excess == 0 {
            return;
        }
        let mut by_age: Vec<(u64, Uuid)> = cache.slots.iter().map(|(id, s)| (s.last_used, *id)).collect();
        by_age.sort_unstable();
        for (_, id) in by_age.into_iter().take(excess) {
            cache.slots.remove(&id);
        }
    }

    /// Drops every cached document (e.g. when idle); they reload on demand.
    pub fn evict_all(&self) {
        self.lock().slots.clear();
    }

    /// How many documents are in memory now.
    pub fn loaded(&self) -> usize {
        self.lock().slots.len()
    }

    /// Damaged records found so far (reported in status and logs).
    pub fn damaged(&self) -> Vec<Damage> {
        self.lock().damaged.clone()
    }

    /// Every stored document id.
    pub fn doc_ids(&self) -> Result<Vec<Uuid>, RepoError> {
        Ok(self.store.doc_ids()?)
    }

    /// Flushes the store (at shutdown).
    pub fn flush(&self) -> Result<(), RepoError> {
        Ok(self.store.flush()?)
    }
}

/// The documents one write touches.
pub struct Tx<'a> {
    repo: &'a Repo,
    cache: &'a mut Cache,
    touched: HashSet<Uuid>,
    metas: Vec<(String, Vec<u8>)>,
}

impl Tx<'_> {
    /// The project document, for changing.
    pub fn project(&mut self, id: ProjectId) -> Result<&mut ProjectDoc, RepoError> {
        // Touched only once loaded: a caller may tolerate NotFound and go on.
        let slot = self.repo.slot(self.cache, id.0)?;
        self.touched.insert(id.0);
        match &mut slot.doc {
            Doc::Project(d) => Ok(d),
            Doc::Drawing(_) => Err(RepoError::NotFound {
                what: "project",
                id: id.0,
            }),
        }
    }

    /// A drawing document, for changing.
    pub fn drawing(&mut self, id: DrawingId) -> Result<&mut DrawingDoc, RepoError> {
        let slot = self.repo.slot(self.cache, id.0)?;
        self.touched.insert(id.0);
        match &mut slot.doc {
            Doc::Drawing(d) => Ok(d),
            Doc::Project(_) => Err(RepoError::NotFound {
                what: "drawing",
                id: id.0,
            }),
        }
    }

    /// Several drawing documents at once (a bulk update spans drawings).
    pub fn drawings(&mut self, ids: &[DrawingId]) -> Result<Vec<&mut DrawingDoc>, RepoError> {
        for id in ids {
            self.drawing(*id)?;
        }
        let wanted: HashSet<Uuid> = ids.iter().map(|d| d.0).collect();
        Ok(self
            .cache
            .slots
            .iter_mut()
            .filter(|(id, _)| wanted.contains(id))
            .filter_map(|(_, s)| match &mut s.doc {
                Doc::Drawing(d) => Some(d),
                Doc::Project(_) => None,
            })
            .collect())
    }

    /// Adds a newly created document; it is stored with the write.
    pub fn insert(&mut self, id: Uuid, doc: Doc) {
        self.cache.tick += 1;
        self.touched.insert(id);
        self.cache.slots.insert(
            id,
            Slot {
                doc,
                saved: Vec::new(),
                next_seq: 0,
                change_records: 0,
                last_used: self.cache.tick,
            },
        );
    }

    /// A metadata record stored in the same batch as the documents.
    pub fn put_meta(&mut self, name: &str, value: &[u8]) {
        self.metas.push((name.to_owned(), value.to_vec()));
    }

    /// The actor new documents are created with.
    pub fn actor(&self) -> ActorId {
        self.repo.actor.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemBackend, SledBackend};
    use sitesync_model::{
        DeviceId, NewDrawing, NewProject, OperationId, OperationKind, ProjectPatch, Timestamp, WriteCtx,
    };

    fn ctx(n: u128) -> WriteCtx {
        WriteCtx::new(
            "ana",
            DeviceId::from_u128(1),
            OperationId::from_u128(n),
            OperationKind::ProjectUpdate,
            Timestamp(1_700_000_000_000 + n as i64),
        )
    }

    const P: ProjectId = ProjectId::from_u128(1);

    fn create(repo: &Repo) {
        repo.write(|tx| {
            let new = NewProject {
                name: "Plant".into(),
                code: None,
            };
            let doc = ProjectDoc::create(P, &new, &ctx(1), tx.actor())?;
            tx.insert(P.0, Doc::Project(doc));
            Ok(())
        })
        .unwrap();
    }

    fn rename(repo: &Repo, n: u128) {
        repo.write(|tx| {
            let patch = ProjectPatch {
                name: Some(format!("Plant {n}")),
                code: None,
            };
            tx.project(P)?.update(&ctx(n), &patch)?;
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn writes_survive_reopening_through_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let config = RepoConfig {
            compact_at: 4,
            max_cached: 1,
        };
        {
            let repo = Repo::new(
                DocStore::new(SledBackend::open(dir.path()).unwrap()),
                ActorId::random(),
                config,
            );
            create(&repo);
            for n in 2..=11 {
                rename(&repo, n);
            }
        }
        let repo = Repo::new(
            DocStore::new(SledBackend::open(dir.path()).unwrap()),
            ActorId::random(),
            config,
        );
        let name = repo.read_project(P, |p| p.info().unwrap().name).unwrap();
        assert_eq!(name, "Plant 11");
        rename(&repo, 12);
        assert!(repo.damaged().is_empty());
    }

    #[test]
    fn memory_holds_at_most_max_cached_documents() {
        let config = RepoConfig {
            compact_at: 64,
            max_cached: 2,
        };
        let repo = Repo::new(DocStore::new(MemBackend::default()), ActorId::random(), config);
        let ids: Vec<ProjectId> = (10..15).map(ProjectId::from_u128).collect();
        for id in &ids {
            repo.write(|tx| {
                let new = NewProject {
                    name: format!("P{id}"),
                    code: None,
                };
                let doc = ProjectDoc::create(*id, &new, &ctx(1), tx.actor())?;
                tx.insert(id.0, Doc::Project(doc));
                Ok(())
            })
            .unwrap();
        }
        assert_eq!(repo.loaded(), 2, "least recently used documents were evicted");
        for id in &ids {
            let name = repo.read_project(*id, |p| p.info().unwrap().name).unwrap();
            assert_eq!(name, format!("P{id}"), "evicted documents reload from the store");
        }
        assert_eq!(repo.loaded(), 2, "reads are bounded too");
    }

    #[test]
    fn a_write_may_tolerate_a_missing_document() {
        let repo = Repo::new(
            DocStore::new(MemBackend::default()),
            ActorId::random(),
            RepoConfig::default(),
        );
        create(&repo);
        repo.write(|tx| {
            // A drawing listed before its document arrived, say.
            assert!(matches!(
                tx.drawing(DrawingId::from_u128(99)),
                Err(RepoError::NotFound { .. })
            ));
            let patch = ProjectPatch {
                name: Some("Still written".into()),
                code: None,
            };
            tx.project(P)?.update(&ctx(2), &patch)?;
            Ok(())
        })
        .unwrap();
        assert_eq!(
            repo.read_project(P, |p| p.info().unwrap().name).unwrap(),
            "Still written"
        );
    }

    #[test]
    fn a_failed_write_leaves_only_what_is_durable() {
        let repo = Repo::new(
            DocStore::new(MemBackend::default()),
            ActorId::random(),
            RepoConfig::default(),
        );
        create(&repo);
        let err = repo.write(|tx| {
            let patch = ProjectPatch {
                name: Some("Renamed".into()),
                code: None,
            };
            tx.project(P)?.update(&ctx(2), &patch)?;
            // A second step fails after the first changed the document.
            tx.project(P)?
                .add_drawing(&ctx(3), DrawingId::from_u128(5), &NewDrawing::default())?;
            Ok(())
        });
        assert!(matches!(err, Err(RepoError::Model(_))));
        let name = repo.read_project(P, |p| p.info().unwrap().name).unwrap();
        assert_eq!(
            name, "Plant",
            "the first step was not acknowledged, so it is gone"
        );
        assert!(matches!(
            repo.read_drawing(DrawingId::from_u128(P.0.as_u128()), |_| ()),
            Err(RepoError::NotFound { .. })
        ));
    }
}
