//! Durable storage of documents, over a narrow key-value [`Backend`] trait so
//! a second backend is one file (redb is the default; [`MemBackend`] is the
//! model the tests compare against).
//!
//! Per document: a compacted snapshot plus appended incremental changes.
//! Compaction writes the new snapshot and removes the records it replaces in
//! one atomic batch — two public Automerge repositories lost data exactly
//! between those two steps. Every record carries a format version and a
//! CRC-32 of its payload; a damaged record is reported and skipped, and the
//! document is rebuilt from what remains (peers fill in the rest).
//!
//! Keys:
//! ```text
//! d <doc uuid:16> s                 snapshot
//! d <doc uuid:16> c <seq:u64 BE>    incremental changes, in append order
//! m <name>                          metadata (device id, api settings, ...)
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use redb::ReadableDatabase;
use sitesync_model::automerge::{ActorId, Automerge};
use uuid::Uuid;

/// The record format version written by this build.
pub const RECORD_VERSION: u8 = 1;
const HEADER: usize = 5; // version (1) + crc32 (4)

/// Errors from storage.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage failed while {context}: {source}")]
    Backend {
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A record that cannot be read. Never retried: the bytes will not change.
    #[error("damaged record {key}: {reason}")]
    Corrupt { key: String, reason: String },
}

impl StoreError {
    fn backend(context: impl Into<String>, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Backend {
            context: context.into(),
            source: Box::new(e),
        }
    }
}

/// One write of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOp {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

/// Key-value pairs in key order, as scans return them.
pub type KvPairs = Vec<(Vec<u8>, Vec<u8>)>;

/// The narrow interface a storage engine implements.
pub trait Backend: Send + Sync + 'static {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// The (key, value) pairs whose key starts with `prefix`, in key order,
    /// the first `skip` left out and at most `limit` returned: a page of an
    /// index kept in the store reads that page, not the index.
    fn scan_page(&self, prefix: &[u8], skip: usize, limit: usize) -> Result<KvPairs, StoreError>;
    /// Every (key, value) whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, prefix: &[u8]) -> Result<KvPairs, StoreError> {
        self.scan_page(prefix, 0, usize::MAX)
    }
    /// Applies every op atomically, and durably: when this returns `Ok`, the
    /// batch survives a crash (kill -9, power loss as far as the OS allows).
    fn apply(&self, batch: Vec<BatchOp>) -> Result<(), StoreError>;
    /// Applies every op atomically and at once for every later read, but
    /// durably only with the next [`Self::apply`] or [`Self::flush`]: a crash
    /// before then loses this batch (and only such batches), never tears one.
    /// For records the process can rebuild, written too often to wait on
    /// the disk for each. A backend with nothing to save applies durably.
    fn apply_relaxed(&self, batch: Vec<BatchOp>) -> Result<(), StoreError> {
        self.apply(batch)
    }
    /// Bytes used on disk (for metrics).
    fn size_on_disk(&self) -> u64;
    /// Flushes anything buffered (at shutdown).
    fn flush(&self) -> Result<(), StoreError>;
}

/// redb, one database file per process (`<dir>/store.redb`).
///
/// Why not sled, which the first design named: sled 0.34's page cache is split
/// into 256 shards that each look at their accesses only after 64 of them
/// queue up, so a store of a few thousand pages (a 100,000-component
/// project) is never evicted at all. Every page read since start-up stays
/// resident: 190 MB of a daemon's 534 MB after its first query (heaptrack),
/// whatever `cache_capacity` says. redb's cache is bounded in bytes.
pub struct RedbBackend {
    db: redb::Database,
    path: PathBuf,
}

/// The one table every record lives in; keys are described in the module doc.
const RECORDS: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("records");

/// redb's page cache. The repository already keeps the documents in use,
/// decoded, so the store's cache only needs the working set of recent pages.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// The database file inside a store directory.
const REDB_FILE: &str = "store.redb";

impl RedbBackend {
    /// Opens (creating if needed) the store in `dir`. A store an earlier
    /// build wrote with sled is copied over first, once.
    ///
    /// The database is locked while open. Dropping it releases the lock, but
    /// a store being reopened in the same process (tests, a restart of the
    /// service) may meet a handle still being dropped, so a lock conflict is
    /// retried for up to two seconds; another process holding the store is
    /// still refused.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::backend(format!("creating {}", dir.display()), e))?;
        let path = dir.join(REDB_FILE);
        if !path.exists() && dir.join(SLED_CONF).exists() {
            migrate_from_sled(dir, &path)?;
        }
        let db = retry_while_locked(
            || redb::Builder::new().set_cache_size(CACHE_BYTES).create(&path),
            |e| matches!(e, redb::DatabaseError::DatabaseAlreadyOpen),
        )
        .map_err(|e| StoreError::backend(format!("opening {}", path.display()), e))?;
        let this = Self { db, path };
        // Create the table, so readers never meet a missing one.
        this.apply(Vec::new())?;
        Ok(this)
    }
}

/// Runs `open` until it succeeds, fails otherwise than `locked`, or two
/// seconds pass: a database just dropped in this process may still hold its
/// file lock for a moment (sled's background flusher does), while another
/// process holding it is still refused.
fn retry_while_locked<T, E>(
    mut open: impl FnMut() -> Result<T, E>,
    locked: impl Fn(&E) -> bool,
) -> Result<T, E> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match open() {
            Err(e) if locked(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            result => return result,
        }
    }
}

/// Maps any redb error to a [`StoreError`] saying what was being done.
fn redb_failed<E: Into<redb::Error>>(context: &str) -> impl Fn(E) -> StoreError + '_ {
    move |e| StoreError::backend(context, e.into())
}

impl Backend for RedbBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read().map_err(redb_failed("reading"))?;
        let table = tx.open_table(RECORDS).map_err(redb_failed("reading"))?;
        let value = table.get(key).map_err(redb_failed("reading"))?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    fn scan_page(&self, prefix: &[u8], skip: usize, limit: usize) -> Result<KvPairs, StoreError> {
        let tx = self.db.begin_read().map_err(redb_failed("scanning"))?;
        let table = tx.open_table(RECORDS).map_err(redb_failed("scanning"))?;
        let mut out = Vec::new();
        let entries = table.range(prefix..).map_err(redb_failed("scanning"))?;
        for entry in entries.skip(skip) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = entry.map_err(redb_failed("scanning"))?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push((k.value().to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn apply(&self, batch: Vec<BatchOp>) -> Result<(), StoreError> {
        // The default durability, `Immediate`: the commit returns once the
        // batch is on disk, with every relaxed batch before it.
        self.commit(batch, redb::Durability::Immediate)
    }

    fn apply_relaxed(&self, batch: Vec<BatchOp>) -> Result<(), StoreError> {
        // `None`: committed in memory, on disk with the next durable commit;
        // a crash reopens at the last durable one.
        self.commit(batch, redb::Durability::None)
    }

    fn size_on_disk(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }

    fn flush(&self) -> Result<(), StoreError> {
        // An empty durable commit takes every relaxed one before it to disk.
        self.apply(Vec::new())
    }
}

impl RedbBackend {
    fn commit(&self, batch: Vec<BatchOp>, durability: redb::Durability) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write().map_err(redb_failed("writing a batch"))?;
        tx.set_durability(durability)
            .map_err(|e| StoreError::backend("writing a batch", e))?;
        {
            let mut table = tx.open_table(RECORDS).map_err(redb_failed("writing a batch"))?;
            for op in batch {
                match op {
                    BatchOp::Put(k, v) => table.insert(k.as_slice(), v.as_slice()).map(drop),
                    BatchOp::Delete(k) => table.remove(k.as_slice()).map(drop),
                }
                .map_err(redb_failed("writing a batch"))?;
            }
        }
        tx.commit().map_err(redb_failed("writing a batch"))
    }
}

/// The file sled 0.34 keeps in its directory, always.
const SLED_CONF: &str = "conf";

/// Copies a store written by sled (builds before redb) into a new redb file
/// at `to`, then removes sled's files. The copy is written to a temporary
/// file and renamed into place, so a crash midway leaves the sled store
/// whole and the next start copies again.
fn migrate_from_sled(dir: &Path, to: &Path) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    let sled = retry_while_locked(
        || sled::Config::new().path(dir).open(),
        // sled reports it as `Other` with this text.
        |e| matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock")),
    )
    .map_err(|e| {
        StoreError::backend(
            format!("opening the sled store in {} to migrate it", dir.display()),
            e,
        )
    })?;
    let tmp = to.with_extension("redb.migrating");
    let _ = std::fs::remove_file(&tmp);
    let context = format!("migrating the sled store in {}", dir.display());
    let db = redb::Database::create(&tmp).map_err(redb_failed(&context))?;
    let tx = db.begin_write().map_err(redb_failed(&context))?;
    let mut records = 0u64;
    {
        let mut table = tx.open_table(RECORDS).map_err(redb_failed(&context))?;
        for kv in sled.iter() {
            let (k, v) = kv.map_err(|e| StoreError::backend("reading the sled store to migrate it", e))?;
            table
                .insert(k.as_ref(), v.as_ref())
                .map_err(redb_failed(&context))?;
            records += 1;
        }
    }
    tx.commit().map_err(redb_failed(&context))?;
    drop(db);
    drop(sled);
    std::fs::rename(&tmp, to).map_err(|e| StoreError::backend(format!("renaming {}", tmp.display()), e))?;
    for name in [SLED_CONF, "db", "snap", "blobs"] {
        let p = dir.join(name);
        let _ = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
    }
    // sled's snapshots are named `snap.<lsn>`.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("snap.") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    tracing::info!(
        records,
        seconds = started.elapsed().as_secs_f64(),
        "migrated the store in {} from sled to redb",
        dir.display()
    );
    Ok(())
}

/// An in-memory backend: the simple model tests compare redb against, and a
/// store for tests that do not need a disk.
#[derive(Default)]
pub struct MemBackend {
    map: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl Backend for MemBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.map.lock().expect("lock").get(key).cloned())
    }

    fn scan_page(&self, prefix: &[u8], skip: usize, limit: usize) -> Result<KvPairs, StoreError> {
        let map = self.map.lock().expect("lock");
        Ok(map
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .skip(skip)
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn apply(&self, batch: Vec<BatchOp>) -> Result<(), StoreError> {
        let mut map = self.map.lock().expect("lock");
        for op in batch {
            match op {
                BatchOp::Put(k, v) => map.insert(k, v),
                BatchOp::Delete(k) => map.remove(&k),
            };
        }
        Ok(())
    }

    fn size_on_disk(&self) -> u64 {
        let map = self.map.lock().expect("lock");
        map.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum()
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// The puts of metadata `records`, as a batch writes them.
fn meta_puts(records: &[(String, Vec<u8>)]) -> Vec<BatchOp> {
    records
        .iter()
        .map(|(name, value)| BatchOp::Put(meta_key(name), encode_record(value)))
        .collect()
}

/// Wraps a payload as a record: version, CRC-32, payload.
pub fn encode_record(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.push(RECORD_VERSION);
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Checks and unwraps a record.
pub fn decode_record<'a>(key: &[u8], record: &'a [u8]) -> Result<&'a [u8], StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        key: describe_key(key),
        reason,
    };
    if record.len() < HEADER {
        return Err(corrupt(format!(
            "{} bytes is shorter than a record header",
            record.len()
        )));
    }
    if record[0] != RECORD_VERSION {
        return Err(corrupt(format!(
            "record format {} (this build reads {RECORD_VERSION})",
            record[0]
        )));
    }
    let crc = u32::from_le_bytes(record[1..5].try_into().expect("4 bytes"));
    let payload = &record[HEADER..];
    if crc32fast::hash(payload) != crc {
        return Err(corrupt("checksum mismatch".into()));
    }
    Ok(payload)
}

/// A key in a form a person can read in a log line.
pub fn describe_key(key: &[u8]) -> String {
    match key {
        [b'd', rest @ ..] if rest.len() >= 17 => {
            let id = Uuid::from_slice(&rest[..16])
                .map(|u| u.to_string())
                .unwrap_or_default();
            match &rest[16..] {
                [b's'] => format!("doc {id} snapshot"),
                [b'c', seq @ ..] if seq.len() == 8 => {
                    format!(
                        "doc {id} change {}",
                        u64::from_be_bytes(seq.try_into().expect("8"))
                    )
                }
                _ => format!("doc {id} {:?}", &rest[16..]),
            }
        }
        [b'm', name @ ..] => format!("meta {}", String::from_utf8_lossy(name)),
        _ => format!("{key:?}"),
    }
}

pub(crate) fn doc_prefix(id: Uuid) -> Vec<u8> {
    let mut k = Vec::with_capacity(26);
    k.push(b'd');
    k.extend_from_slice(id.as_bytes());
    k
}

fn snapshot_key(id: Uuid) -> Vec<u8> {
    let mut k = doc_prefix(id);
    k.push(b's');
    k
}

fn change_key(id: Uuid, seq: u64) -> Vec<u8> {
    let mut k = doc_prefix(id);
    k.push(b'c');
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn meta_key(name: &str) -> Vec<u8> {
    let mut k = vec![b'm'];
    k.extend_from_slice(name.as_bytes());
    k
}

/// A damaged record found while loading, reported rather than fatal.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Damage {
    pub record: String,
    pub reason: String,
}

/// A document as loaded from its records.
pub struct Loaded {
    pub doc: Automerge,
    /// The sequence number the next appended change record gets.
    pub next_seq: u64,
    /// How many change records follow the snapshot (compaction trigger).
    pub change_records: usize,
    /// Their payload bytes (the other compaction trigger).
    pub change_bytes: usize,
    /// The stored snapshot's payload bytes (0 without one): what a
    /// compaction would rewrite, which the repository weighs against
    /// `change_bytes` ([`crate::repo::RepoConfig::compaction_due`]).
    pub snapshot_bytes: usize,
    /// Records that could not be read (the document is rebuilt without them).
    pub damaged: Vec<Damage>,
}

/// New changes of one document, appended as one record.
pub struct Append {
    pub id: Uuid,
    pub seq: u64,
    pub bytes: Vec<u8>,
    /// `bytes` is the whole document (`Automerge::save`), stored as its
    /// snapshot rather than as change record `seq`. How a document's first
    /// write is stored: a drawing of 50 components saves to ~6 KB and
    /// loads in ~1 ms, while the same changes as a record are ~90 KB and
    /// load in ~2 ms (100,000-component bench store), and compacting them
    /// later would cost a load, a save and a commit more.
    pub whole: bool,
}

/// One document's records folded into a snapshot ([`DocStore::compact`]).
pub struct Compaction {
    pub id: Uuid,
    /// The whole document (`Automerge::save`).
    pub snapshot: Vec<u8>,
    /// Every change record below this is in the snapshot.
    pub next_seq: u64,
}

fn not_automerge(key: &[u8], e: sitesync_model::automerge::AutomergeError) -> StoreError {
    StoreError::Corrupt {
        key: describe_key(key),
        reason: format!("not Automerge data: {e}"),
    }
}

/// A damaged record to skip (logged), or the error to return when the
/// failure is not damage (the backend failed).
fn damage(e: StoreError) -> Result<Damage, StoreError> {
    let StoreError::Corrupt { key, reason } = e else {
        return Err(e);
    };
    tracing::error!(record = %key, %reason, "damaged record skipped; rebuilding the document from the rest");
    Ok(Damage { record: key, reason })
}

/// Documents and metadata over a [`Backend`].
pub struct DocStore {
    backend: Box<dyn Backend>,
}

impl DocStore {
    pub fn new(backend: impl Backend) -> Self {
        Self {
            backend: Box::new(backend),
        }
    }

    /// Loads a document, `None` when it has no records. Damaged records are
    /// skipped and listed in [`Loaded::damaged`].
    pub fn load(&self, id: Uuid, actor: ActorId) -> Result<Option<Loaded>, StoreError> {
        let mut records = self.backend.scan_prefix(&doc_prefix(id))?;
        // The snapshot ('s') sorts after the changes ('c') but loads first.
        records.sort_by_key(|(k, _)| !(k.len() == 18 && k[17] == b's'));
        if records.is_empty() {
            return Ok(None);
        }
        let mut damaged = Vec::new();
        let mut doc = Automerge::new();
        let mut next_seq = 0;
        let mut change_records = 0;
        // Change records are applied in one call: Automerge applies a batch
        // of changes at about the cost of one, while one call per record
        // made a document with 60 records load ~4× slower than its snapshot.
        let mut changes: Vec<(&[u8], &[u8])> = Vec::new();
        let mut snapshot: Option<&[u8]> = None;
        for (key, value) in &records {
            let is_snapshot = key.len() == 18 && key[17] == b's';
            if !is_snapshot {
                change_records += 1;
                if key.len() == 26 {
                    let seq = u64::from_be_bytes(key[18..26].try_into().expect("8 bytes"));
                    next_seq = next_seq.max(seq + 1);
                }
            }
            let payload = match decode_record(key, value) {
                Ok(p) => p,
                Err(e) => {
                    damaged.push(damage(e)?);
                    continue;
                }
            };
            if is_snapshot {
                match Automerge::load(payload) {
                    Ok(d) => {
                        doc = d;
                        snapshot = Some(payload);
                    }
                    Err(e) => damaged.push(damage(not_automerge(key, e))?),
                }
            } else {
                changes.push((key, payload));
            }
        }
        let batch: Vec<u8> = changes.iter().flat_map(|(_, p)| p.iter().copied()).collect();
        let change_bytes = batch.len();
        // Applying changes leaves Automerge's columns with spare capacity
        // (~15× the document after two bulk changes on a snapshot); a clone
        // allocates only what is used (see `Repo`'s cache, which keeps it).
        let shrink = !changes.is_empty();
        if doc.load_incremental(&batch).is_err() {
            // A record is not Automerge data: start again from the snapshot,
            // one record at a time, and keep all but the bad ones.
            doc = snapshot
                .map_or_else(|| Ok(Automerge::new()), Automerge::load)
                .unwrap_or_default();
            for (key, payload) in changes {
                if let Err(e) = doc.load_incremental(payload) {
                    damaged.push(damage(not_automerge(key, e))?);
                }
            }
        }
        if shrink {
            doc = doc.clone();
        }
        Ok(Some(Loaded {
            doc: doc.with_actor(actor),
            next_seq,
            change_records,
            change_bytes,
            snapshot_bytes: snapshot.map_or(0, <[u8]>::len),
            damaged,
        }))
    }

    /// Appends new changes of several documents, and metadata records that
    /// must land with them, in one atomic, durable batch.
    pub fn append(&self, appends: &[Append], metas: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
        if appends.is_empty() && metas.is_empty() {
            return Ok(());
        }
        let docs = appends.iter().map(|a| {
            let key = if a.whole {
                snapshot_key(a.id)
            } else {
                change_key(a.id, a.seq)
            };
            BatchOp::Put(key, encode_record(&a.bytes))
        });
        let metas = metas
            .iter()
            .map(|(name, v)| BatchOp::Put(meta_key(name), encode_record(v)));
        self.backend.apply(docs.chain(metas).collect())
    }

    /// The names (after `prefix`) of every metadata record under `prefix`.
    pub fn meta_names(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .backend
            .scan_prefix(&meta_key(prefix))?
            .into_iter()
            .map(|(k, _)| String::from_utf8_lossy(&k[1 + prefix.len()..]).into_owned())
            .collect())
    }

    /// A page of the metadata records under `prefix`, in name order: their
    /// names (after `prefix`) and values, the first `skip` left out, at most
    /// `limit`.
    pub fn meta_page(
        &self,
        prefix: &str,
        skip: usize,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.backend
            .scan_page(&meta_key(prefix), skip, limit)?
            .into_iter()
            .map(|(k, v)| {
                let name = String::from_utf8_lossy(&k[1 + prefix.len()..]).into_owned();
                Ok((name, decode_record(&k, &v)?.to_vec()))
            })
            .collect()
    }

    /// Writes and removes metadata records in one relaxed batch
    /// ([`Self::put_metas_relaxed`]): `None` removes.
    pub fn change_metas_relaxed(&self, records: &[(String, Option<Vec<u8>>)]) -> Result<(), StoreError> {
        let batch = records
            .iter()
            .map(|(name, value)| match value {
                Some(v) => BatchOp::Put(meta_key(name), encode_record(v)),
                None => BatchOp::Delete(meta_key(name)),
            })
            .collect();
        self.backend.apply_relaxed(batch)
    }

    /// Replaces documents' records with one snapshot each, atomically and
    /// in one durable commit (compaction runs in batches, and a commit is
    /// an fsync): each snapshot and the removal of its document's change
    /// records below `next_seq` (and any damaged leftovers) are one batch.
    pub fn compact(&self, docs: &[Compaction]) -> Result<(), StoreError> {
        let mut batch = Vec::new();
        for c in docs {
            batch.extend(
                self.backend
                    .scan_prefix(&doc_prefix(c.id))?
                    .into_iter()
                    .filter(|(k, _)| {
                        k.len() == 26
                            && k[17] == b'c'
                            && u64::from_be_bytes(k[18..26].try_into().expect("8")) < c.next_seq
                    })
                    .map(|(k, _)| BatchOp::Delete(k)),
            );
            batch.push(BatchOp::Put(snapshot_key(c.id), encode_record(&c.snapshot)));
        }
        self.backend.apply(batch)
    }

    /// Every stored document id.
    pub fn doc_ids(&self) -> Result<Vec<Uuid>, StoreError> {
        let mut ids: Vec<Uuid> = self
            .backend
            .scan_prefix(b"d")?
            .into_iter()
            .filter_map(|(k, _)| Uuid::from_slice(k.get(1..17)?).ok())
            .collect();
        ids.dedup();
        Ok(ids)
    }

    /// Reads a metadata record.
    pub fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = meta_key(name);
        match self.backend.get(&key)? {
            Some(v) => Ok(Some(decode_record(&key, &v)?.to_vec())),
            None => Ok(None),
        }
    }

    /// The id the owner of this store goes by (a daemon's device, a relay):
    /// created on first use and kept, so peers recognise it across restarts.
    pub fn device_id(&self) -> Result<Uuid, StoreError> {
        const NAME: &str = crate::keys::DEVICE_ID;
        match self.get_meta(NAME)? {
            Some(bytes) => String::from_utf8_lossy(&bytes)
                .parse()
                .map_err(|e| StoreError::Corrupt {
                    key: describe_key(&meta_key(NAME)),
                    reason: format!("not a device id: {e}"),
                }),
            None => {
                let id = Uuid::new_v4();
                self.put_meta(NAME, id.to_string().as_bytes())?;
                Ok(id)
            }
        }
    }

    /// Writes a metadata record durably.
    pub fn put_meta(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        self.backend
            .apply(vec![BatchOp::Put(meta_key(name), encode_record(value))])
    }

    /// Writes several metadata records in one durable write (all or none).
    pub fn put_metas(&self, records: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
        self.backend.apply(meta_puts(records))
    }

    /// Writes metadata records in one batch (all or none) that is durable
    /// only with the next durable write or [`Self::flush`]
    /// ([`Backend::apply_relaxed`]): for records a crash may lose, because
    /// the process rebuilds them (a peer's acknowledgements come again with
    /// its next summary).
    pub fn put_metas_relaxed(&self, records: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
        self.backend.apply_relaxed(meta_puts(records))
    }

    /// Removes a metadata record durably (absent is fine).
    pub fn delete_meta(&self, name: &str) -> Result<(), StoreError> {
        self.backend.apply(vec![BatchOp::Delete(meta_key(name))])
    }

    pub fn size_on_disk(&self) -> u64 {
        self.backend.size_on_disk()
    }

    pub fn flush(&self) -> Result<(), StoreError> {
        self.backend.flush()
    }

    /// Raw access for tests that damage records on purpose.
    #[doc(hidden)]
    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sitesync_model::automerge::transaction::Transactable;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn doc_with(values: &[&str]) -> Automerge {
        let mut d = Automerge::new();
        for v in values {
            let mut tx = d.transaction();
            tx.put(sitesync_model::automerge::ROOT, *v, 1).unwrap();
            tx.commit();
        }
        d
    }

    #[test]
    fn records_detect_damage() {
        let rec = encode_record(b"hello");
        assert_eq!(decode_record(b"k", &rec).unwrap(), b"hello");
        let mut flipped = rec.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(
            decode_record(b"k", &flipped),
            Err(StoreError::Corrupt { .. })
        ));
        let mut future = rec.clone();
        future[0] = 9;
        let err = decode_record(b"k", &future).unwrap_err().to_string();
        assert!(err.contains("record format 9"), "{err}");
        assert!(decode_record(b"k", &rec[..3]).is_err());
    }

    fn appends_then_compaction(store: &DocStore) {
        let id = Uuid::from_u128(7);
        let mut d = Automerge::new();
        let mut heads = vec![];
        for (seq, key) in ["a", "b", "c"].into_iter().enumerate() {
            let mut tx = d.transaction();
            tx.put(sitesync_model::automerge::ROOT, key, 1).unwrap();
            tx.commit();
            let bytes = d.save_after(&heads);
            heads = d.get_heads();
            store
                .append(
                    &[Append {
                        id,
                        seq: seq as u64,
                        bytes,
                        whole: false,
                    }],
                    &[(format!("doc/{seq}"), vec![])],
                )
                .unwrap();
        }
        let loaded = store.load(id, ActorId::random()).unwrap().unwrap();
        assert_eq!((loaded.next_seq, loaded.change_records), (3, 3));
        assert_eq!(loaded.doc.get_heads(), d.get_heads());
        store
            .compact(&[Compaction {
                id,
                snapshot: d.save(),
                next_seq: 3,
            }])
            .unwrap();
        let loaded = store.load(id, ActorId::random()).unwrap().unwrap();
        assert_eq!(
            (loaded.change_records, loaded.doc.get_heads()),
            (0, d.get_heads())
        );
        assert_eq!(store.doc_ids().unwrap(), vec![id]);
        assert_eq!(store.meta_names("doc/").unwrap(), vec!["0", "1", "2"]);
        assert!(
            store
                .load(Uuid::from_u128(8), ActorId::random())
                .unwrap()
                .is_none()
        );
    }

    /// A memory backend that counts its durable writes.
    struct Counting {
        inner: MemBackend,
        writes: Arc<AtomicUsize>,
    }

    impl Backend for Counting {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.get(key)
        }
        fn scan_page(&self, prefix: &[u8], skip: usize, limit: usize) -> Result<KvPairs, StoreError> {
            self.inner.scan_page(prefix, skip, limit)
        }
        fn apply(&self, batch: Vec<BatchOp>) -> Result<(), StoreError> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            self.inner.apply(batch)
        }
        fn size_on_disk(&self) -> u64 {
            0
        }
        fn flush(&self) -> Result<(), StoreError> {
            Ok(())
        }
    }

    /// A reconnect acknowledges every document at once: its records are
    /// one durable write, not one each.
    #[test]
    fn many_metadata_records_are_one_write() {
        let writes = Arc::new(AtomicUsize::new(0));
        let store = DocStore::new(Counting {
            inner: MemBackend::default(),
            writes: writes.clone(),
        });
        let records: Vec<(String, Vec<u8>)> = (0..500u32)
            .map(|i| (format!("acked/{i}"), i.to_le_bytes().to_vec()))
            .collect();
        store.put_metas(&records).unwrap();
        assert_eq!(writes.load(Ordering::SeqCst), 1);
        for (name, value) in &records {
            assert_eq!(store.get_meta(name).unwrap().as_ref(), Some(value));
        }
    }

    /// A relaxed write is read at once and goes to disk with the next
    /// durable write. The file is copied while the store is open, as a
    /// kill -9 would leave it: before the durable write, the copy opens at
    /// the last durable state, without the relaxed record and unharmed.
    #[test]
    fn a_relaxed_write_is_read_at_once_and_durable_with_the_next_durable_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = DocStore::new(RedbBackend::open(dir.path()).unwrap());
        store.put_meta("durable/1", b"one").unwrap();
        let relaxed = [("acked/1".to_owned(), b"heads".to_vec())];
        store.put_metas_relaxed(&relaxed).unwrap();
        assert_eq!(store.get_meta("acked/1").unwrap().as_deref(), Some(&b"heads"[..]));
        let as_crashed = |name: &str| {
            let copy = dir.path().join(name);
            std::fs::create_dir(&copy).unwrap();
            std::fs::copy(dir.path().join(REDB_FILE), copy.join(REDB_FILE)).unwrap();
            DocStore::new(RedbBackend::open(&copy).unwrap())
        };
        let early = as_crashed("early");
        assert_eq!(early.get_meta("durable/1").unwrap().as_deref(), Some(&b"one"[..]));
        assert_eq!(early.get_meta("acked/1").unwrap(), None, "not durable yet");
        store.put_meta("durable/2", b"two").unwrap();
        let late = as_crashed("late");
        assert_eq!(late.get_meta("acked/1").unwrap().as_deref(), Some(&b"heads"[..]));
        assert_eq!(late.get_meta("durable/2").unwrap().as_deref(), Some(&b"two"[..]));
        // A flush (shutdown) takes a last relaxed write to disk too.
        store
            .put_metas_relaxed(&[("acked/2".to_owned(), b"more".to_vec())])
            .unwrap();
        store.flush().unwrap();
        let flushed = as_crashed("flushed");
        assert_eq!(
            flushed.get_meta("acked/2").unwrap().as_deref(),
            Some(&b"more"[..])
        );
    }

    #[test]
    fn append_load_compact_on_both_backends() {
        appends_then_compaction(&DocStore::new(MemBackend::default()));
        let dir = tempfile::tempdir().unwrap();
        appends_then_compaction(&DocStore::new(RedbBackend::open(dir.path()).unwrap()));
    }

    /// A page of metadata records is the slice of the full listing, on
    /// both backends, and stops at the prefix; removals land with writes.
    #[test]
    fn a_page_of_metadata_is_a_slice_of_the_listing() {
        let check = |store: DocStore| {
            let records: Vec<(String, Vec<u8>)> = (0..30u32)
                .map(|i| (format!("opx/p/{i:04}"), i.to_le_bytes().to_vec()))
                .chain([("opy/after".to_owned(), b"x".to_vec())])
                .collect();
            store.put_metas(&records).unwrap();
            let all = store.meta_page("opx/p/", 0, usize::MAX).unwrap();
            assert_eq!(all.len(), 30, "the prefix bounds the scan");
            assert_eq!(all[0], ("0000".to_owned(), 0u32.to_le_bytes().to_vec()));
            assert_eq!(store.meta_page("opx/p/", 10, 5).unwrap(), all[10..15].to_vec());
            assert_eq!(store.meta_page("opx/p/", 28, 5).unwrap(), all[28..].to_vec());
            assert!(store.meta_page("opx/p/", 40, 5).unwrap().is_empty());
            store
                .change_metas_relaxed(&[
                    ("opx/p/0000".into(), None),
                    ("opx/p/9999".into(), Some(b"new".to_vec())),
                ])
                .unwrap();
            let after = store.meta_page("opx/p/", 0, usize::MAX).unwrap();
            assert_eq!(after.len(), 30);
            assert_eq!(after[0].0, "0001");
            assert_eq!(after[29], ("9999".to_owned(), b"new".to_vec()));
        };
        check(DocStore::new(MemBackend::default()));
        let dir = tempfile::tempdir().unwrap();
        check(DocStore::new(RedbBackend::open(dir.path()).unwrap()));
    }

    /// A store an earlier build wrote with sled opens with every record,
    /// once: sled's files are gone afterwards. A copy cut short (its
    /// temporary file left behind) is redone from the sled store.
    #[test]
    fn a_sled_store_is_migrated_once_and_whole() {
        let dir = tempfile::tempdir().unwrap();
        let records: Vec<(Vec<u8>, Vec<u8>)> = (0u8..50)
            .map(|i| (vec![b'd', i, b's'], vec![i; 1 + usize::from(i) * 100]))
            .chain([(b"mdevice".to_vec(), b"abc".to_vec())])
            .collect();
        {
            let sled = sled::open(dir.path()).unwrap();
            for (k, v) in &records {
                sled.insert(k.as_slice(), v.as_slice()).unwrap();
            }
            sled.flush().unwrap();
        }
        // A previous attempt that crashed midway.
        std::fs::write(dir.path().join("store.redb.migrating"), b"half a copy").unwrap();

        let backend = RedbBackend::open(dir.path()).unwrap();
        for (k, v) in &records {
            assert_eq!(backend.get(k).unwrap().as_ref(), Some(v), "{k:?}");
        }
        assert_eq!(backend.scan_prefix(b"d").unwrap().len(), 50);
        assert!(!dir.path().join(SLED_CONF).exists(), "sled's files are removed");
        assert!(!dir.path().join("store.redb.migrating").exists());
        backend.apply(vec![BatchOp::Delete(b"mdevice".to_vec())]).unwrap();
        drop(backend);

        // Reopening does not migrate again (the delete stays).
        let backend = RedbBackend::open(dir.path()).unwrap();
        assert_eq!(backend.get(b"mdevice").unwrap(), None);
        assert_eq!(backend.scan_prefix(b"d").unwrap().len(), 50);
    }

    #[test]
    fn a_damaged_record_is_reported_and_the_rest_loads() {
        let store = DocStore::new(MemBackend::default());
        let id = Uuid::from_u128(1);
        let d = doc_with(&["a"]);
        store
            .compact(&[Compaction {
                id,
                snapshot: d.save(),
                next_seq: 0,
            }])
            .unwrap();
        let mut d2 = d.clone();
        let mut tx = d2.transaction();
        tx.put(sitesync_model::automerge::ROOT, "b", 2).unwrap();
        tx.commit();
        store
            .append(
                &[Append {
                    id,
                    seq: 0,
                    bytes: d2.save_after(&d.get_heads()),
                    whole: false,
                }],
                &[],
            )
            .unwrap();
        // Damage the change record.
        let key = change_key(id, 0);
        let mut rec = store.backend().get(&key).unwrap().unwrap();
        rec[7] ^= 0xff;
        store.backend().apply(vec![BatchOp::Put(key, rec)]).unwrap();
        let loaded = store.load(id, ActorId::random()).unwrap().unwrap();
        assert_eq!(loaded.damaged.len(), 1);
        assert!(
            loaded.damaged[0].reason.contains("checksum"),
            "{:?}",
            loaded.damaged
        );
        assert_eq!(loaded.doc.get_heads(), d.get_heads(), "the snapshot still loads");
    }

    #[test]
    fn change_records_load_in_one_batch_and_a_damaged_one_is_skipped_alone() {
        let store = DocStore::new(MemBackend::default());
        let id = Uuid::from_u128(1);
        let d = doc_with(&["a"]);
        store
            .compact(&[Compaction {
                id,
                snapshot: d.save(),
                next_seq: 0,
            }])
            .unwrap();
        let mut next = d.clone();
        let mut appends = Vec::new();
        for (seq, key) in ["b", "c", "d"].into_iter().enumerate() {
            let before = next.get_heads();
            let mut tx = next.transaction();
            tx.put(sitesync_model::automerge::ROOT, key, 1).unwrap();
            tx.commit();
            appends.push(Append {
                id,
                seq: seq as u64,
                bytes: next.save_after(&before),
                whole: false,
            });
        }
        store.append(&appends, &[]).unwrap();
        let loaded = store.load(id, ActorId::random()).unwrap().unwrap();
        assert_eq!(loaded.doc.get_heads(), next.get_heads(), "all three in one batch");
        assert_eq!((loaded.change_records, loaded.next_seq), (3, 3));

        // A damaged record leaves the batch; the others still load.
        let key = change_key(id, 2);
        let mut rec = store.backend().get(&key).unwrap().unwrap();
        rec[7] ^= 0xff;
        store.backend().apply(vec![BatchOp::Put(key, rec)]).unwrap();
        let loaded = store.load(id, ActorId::random()).unwrap().unwrap();
        assert_eq!(loaded.damaged.len(), 1, "{:?}", loaded.damaged);
        assert!(loaded.damaged[0].reason.contains("checksum"));
        let keys: Vec<String> =
            sitesync_model::automerge::ReadDoc::keys(&loaded.doc, sitesync_model::automerge::ROOT).collect();
        assert_eq!(keys, ["a", "b", "c"], "the good records still load");
    }
}
