//! The operations list (`GET /v1/projects/{pid}/operations`): an index in
//! the store, derived from the documents' commit records, kept current
//! from the change feed, read a page at a time.
//!
//! Records (see `sitesync_sync::keys`), all written relaxed (derived, and
//! read again from the documents when lost), each batch whole or not at
//! all:
//! - `opx/<project>/<order>`: one operation, merged over every document it
//!   wrote (items summed, the earliest time); `<order>` sorts newest first;
//! - `opat/<project>/<op>`: where an operation's entry is, so later records
//!   of it merge in;
//! - `opundo/<project>/<op>`: the operation that undid it (the smallest id
//!   when several replicas did, so every device shows the same one);
//! - `opcount/<project>`: how many operations the project has;
//! - `oplog/<doc>`: the heads a document's records are indexed up to,
//!   written in the batch that indexes them, so the two never disagree.
//!
//! A listing compares each document's durable heads (the repository knows
//! them without loading the document) with those followed, indexes the
//! commits the change feed reported since (or reads the document's changes
//! since, when the feed's notes do not reach its heads), then reads one
//! page. Its cost follows the page and the changes since the last listing,
//! never the project's age: summarising every record on each listing took
//! 61 ms on the aged benchmark's quick project (22,000 writes) against
//! 2.2 ms fresh, and held every record in memory.
//!
//! Records merge by adding, so a document cannot be read twice: one whose
//! followed heads it no longer has (a damaged change record skipped at
//! load) has the project's index dropped and rebuilt from every document.
//! A store of an earlier daemon, whose `oplog/<doc>` held the document's
//! records themselves, is indexed from those records (no document read).
//!
//! Locks: the feed ([`Subscriber::persisted`]) runs inside the
//! repository's lock, so it only queues (`pending`); a listing takes
//! `followed`, then calls the repository, and holds `pending` only to take
//! notes out. No cycle.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sitesync_model::automerge::{Automerge, ChangeHash};
use sitesync_model::history::{RecordStep, knows_all, operation_record_steps};
use sitesync_model::{OpMeta, OperationId, OperationInfo, Timestamp};
use sitesync_sync::keys;
use sitesync_sync::repo::Subscriber;
use sitesync_sync::{DocStore, Persisted, Repo, RepoError, StoreError};
use uuid::Uuid;

use crate::paging::{Page, Paged};

/// A document's notes kept waiting for a listing, at most: past it they
/// are dropped, and the listing reads the document's changes instead.
const PENDING_PER_DOC: usize = 256;

/// Commits kept in notes across all documents, at most (~200 bytes each:
/// a few MB). A clone of the aged benchmark project reports over a
/// million commits while the periodic catch-up waits for it to end
/// (`Service::save_index`); a document whose notes would pass the bound
/// has them dropped and is read instead.
const PENDING_COMMITS: usize = 32_768;

/// One commit's operation record and time.
type Record = (OpMeta, Timestamp);

/// The operations index of every project, followed as documents change.
pub struct OpLog {
    /// Records a catch-up stores in one batch, about ([`BATCH_WRITES`];
    /// tests make it small to store every change apart).
    batch_writes: usize,
    /// Changes read per step of one document's history
    /// ([`STEP_CHANGES`], or fewer with small batches).
    step_changes: usize,
    /// Per document: the heads its records are indexed up to (as read
    /// from `oplog/<doc>` or last written).
    followed: Mutex<HashMap<Uuid, Vec<ChangeHash>>>,
    /// Durable changes told by the repository, per document, not yet
    /// indexed.
    pending: Mutex<Pending>,
    /// Listings waiting for `followed`: a background catch-up that holds
    /// it runs without pauses while one waits, since someone now waits
    /// for the whole of it.
    listings_waiting: AtomicUsize,
    /// How a background catch-up pauses (`std::thread::sleep`; tests
    /// count the pauses instead).
    pause: Pause,
}

/// Sleeps for the given time, or stands in for it in a test.
type Pause = std::sync::Arc<dyn Fn(std::time::Duration) + Send + Sync>;

/// The change feed's notes waiting for a catch-up.
#[derive(Default)]
struct Pending {
    notes: HashMap<Uuid, Vec<Persisted>>,
    /// Commits in `notes`, bounded by [`PENDING_COMMITS`].
    commits: usize,
}

impl Pending {
    /// Keeps `p`'s notes, or drops every note of its document when that
    /// would pass either bound (it is then read from the document).
    fn keep(&mut self, p: &Persisted) {
        let new = Self::commits_of(p);
        let notes = self.notes.entry(p.id).or_default();
        if notes.len() >= PENDING_PER_DOC || self.commits + new > PENDING_COMMITS {
            let dropped: usize = notes.iter().map(Self::commits_of).sum();
            self.notes.remove(&p.id);
            self.commits -= dropped;
        } else {
            notes.push(p.clone());
            self.commits += new;
        }
    }

    /// Takes (or with `take` false, copies) `doc`'s notes.
    fn of(&mut self, doc: Uuid, take: bool) -> Vec<Persisted> {
        if !take {
            return self.notes.get(&doc).cloned().unwrap_or_default();
        }
        let notes = self.notes.remove(&doc).unwrap_or_default();
        self.commits -= notes.iter().map(Self::commits_of).sum::<usize>();
        notes
    }

    fn commits_of(p: &Persisted) -> usize {
        p.commits.as_ref().map_or(0, Vec::len)
    }
}

/// Records a catch-up stores in one commit, about (~3 per operation, a
/// few hundred bytes each). The commit holds the store's one writer, so
/// every user write waits for it: batches of 30,000 took 0.3–0.9 s each
/// while a daemon caught up a year of history, and single writes stalled
/// as long; batches of 1,000 took 12–20 ms (the year's records land all
/// over the index, a page each) and, back to back, slowed every write to
/// ~30 ms. Batches of 250 take a few ms, with a pause as long after each.
const BATCH_WRITES: usize = 250;

/// Changes a document's history is read in per step
/// ([`operation_record_steps`]), so a batch stays near [`BATCH_WRITES`]
/// however long one document's history is.
const STEP_CHANGES: usize = 32;

impl Default for OpLog {
    fn default() -> Self {
        Self::with_batches_of(BATCH_WRITES)
    }
}

/// The operations list follows the change feed: every durable change's
/// commits, queued (inside the repository's lock) for the next listing.
impl Subscriber for OpLog {
    fn persisted(&self, persisted: &[Persisted]) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for p in persisted.iter().filter(|p| p.commits.is_some()) {
            pending.keep(p);
        }
    }
}

/// How a document comes up to its heads.
enum Catch {
    /// Indexed up to them already.
    Current,
    /// The feed's notes reach them: index their records.
    Notes(Vec<Record>, Vec<ChangeHash>),
    /// Read the document's changes since the followed heads.
    Read,
}

impl OpLog {
    /// An operations list that stores a catch-up in batches of about
    /// `batch_writes` records, reading a document's history in steps of at
    /// most as many changes (tests store every change apart with 1).
    pub fn with_batches_of(batch_writes: usize) -> Self {
        Self {
            batch_writes,
            step_changes: batch_writes.clamp(1, STEP_CHANGES),
            followed: Mutex::default(),
            pending: Mutex::default(),
            listings_waiting: AtomicUsize::new(0),
            pause: std::sync::Arc::new(std::thread::sleep),
        }
    }

    /// This operations list with its background pauses taken by `pause`.
    #[cfg(test)]
    pub fn pausing_with(self, pause: impl Fn(std::time::Duration) + Send + Sync + 'static) -> Self {
        Self {
            pause: std::sync::Arc::new(pause),
            ..self
        }
    }

    /// Whether a listing waits for a catch-up to finish.
    #[cfg(test)]
    pub fn listing_waits(&self) -> bool {
        self.listings_waiting.load(Ordering::SeqCst) > 0
    }

    /// One page of the project's operations, newest first; `docs` are the
    /// project's document and its drawings' (documents not held here are
    /// skipped), each indexed up to its heads first.
    pub fn list(
        &self,
        repo: &Repo,
        project: Uuid,
        docs: &[Uuid],
        page: Page,
    ) -> Result<Paged<OperationInfo>, RepoError> {
        self.catch_up(repo, project, docs, Pace::Flat)?;
        let store = repo.store();
        let entries = store.meta_page(&format!("{}{project}/", keys::OPX), page.offset, page.limit)?;
        let mut items = Vec::with_capacity(entries.len());
        for (_, bytes) in entries {
            let Ok(mut info) = serde_json::from_slice::<OperationInfo>(&bytes) else {
                continue;
            };
            info.undone_by = read_id(store, &keys::op_undone(project, info.id.0))?.map(OperationId);
            items.push(info);
        }
        let total = store
            .get_meta(&keys::op_count(project))?
            .and_then(|b| String::from_utf8(b).ok()?.parse().ok())
            .unwrap_or(0);
        Ok(Paged {
            next_cursor: page.next_cursor(total),
            items,
            total,
        })
    }

    /// Indexes what `docs` (one project's) changed since they were last
    /// indexed: the change feed's notes where they reach a document's
    /// heads, its changes read otherwise. Stored in batches of about
    /// [`BATCH_WRITES`] records, each holding steps of documents' histories
    /// with the heads each step reached ([`operation_record_steps`]), so
    /// a commit never grows with the project or with one document's age
    /// (a clone of the aged benchmark project held ~150 MB of records in
    /// one batch), and a crash between batches leaves every record either
    /// indexed and followed or neither.
    /// A listing's catch-up runs flat out (someone waits for it);
    /// `Pace::Background`, the periodic one, pauses after each batch as
    /// long as it held the store's one writer, so user writes between
    /// batches wait for one batch at most, never a run of them, unless a
    /// listing is waiting for it to finish (it then runs flat out too: a
    /// listing behind a year of history waited twice as long).
    pub fn catch_up(&self, repo: &Repo, project: Uuid, docs: &[Uuid], pace: Pace) -> Result<(), RepoError> {
        let mut followed = match pace {
            Pace::Background => self.followed.lock(),
            Pace::Flat => {
                self.listings_waiting.fetch_add(1, Ordering::SeqCst);
                let followed = self.followed.lock();
                self.listings_waiting.fetch_sub(1, Ordering::SeqCst);
                followed
            }
        }
        .unwrap_or_else(|p| p.into_inner());
        if self.index(repo, project, docs, &mut followed, pace)? == Indexed::Damaged {
            tracing::warn!(%project, "the operations index disagrees with the documents; rebuilding it");
            self.wipe(repo.store(), project, docs, &mut followed)?;
            // From nothing, every document knows where it starts.
            self.index(repo, project, docs, &mut followed, pace)?;
        }
        Ok(())
    }

    /// Indexes `docs` up to their heads, a batch at a time; stops at a
    /// document that lacks the heads it was followed to.
    fn index(
        &self,
        repo: &Repo,
        project: Uuid,
        docs: &[Uuid],
        followed: &mut HashMap<Uuid, Vec<ChangeHash>>,
        pace: Pace,
    ) -> Result<Indexed, RepoError> {
        let store = repo.store();
        let mut batch = Batch::new(store, project);
        for &doc in docs {
            let Some(heads) = repo.heads(doc)? else { continue };
            let from = self.followed_heads(followed, &mut batch, doc)?;
            let read = match self.catch(doc, &from, &heads, true) {
                Catch::Current => None,
                Catch::Notes(records, heads) => Some(Ok(vec![RecordStep { records, heads }])),
                // Read from a copy: reading the records of a drawing with
                // years of history under the repository's lock held every
                // write for as long (0.4–0.9 s at 25,000 changes); a copy
                // takes a millisecond.
                Catch::Read => repo.read_raw(doc, Automerge::clone)?.map(|am| {
                    if knows_all(&am, &from) {
                        Ok(operation_record_steps(&am, &from, self.step_changes))
                    } else {
                        Err(Damaged)
                    }
                }),
            };
            let steps = match read {
                None => Vec::new(),
                Some(Ok(steps)) => steps,
                Some(Err(Damaged)) => return Ok(Indexed::Damaged),
            };
            for step in steps {
                batch.add(step.records)?;
                batch.follow(doc, &step.heads);
                if batch.broken {
                    return Ok(Indexed::Damaged);
                }
                if batch.writes.len() >= self.batch_writes {
                    let full = std::mem::replace(&mut batch, Batch::new(store, project));
                    let started = Instant::now();
                    if !Self::store_batch(full, docs, followed) {
                        return Ok(Indexed::Whole);
                    }
                    if pace == Pace::Background && self.listings_waiting.load(Ordering::SeqCst) == 0 {
                        (self.pause)(started.elapsed());
                    }
                }
            }
        }
        Self::store_batch(batch, docs, followed);
        Ok(Indexed::Whole)
    }

    /// Stores `batch` and follows what it indexed; `false` when storing
    /// failed (what was taken as followed is then read again from the
    /// store next listing, and the listing shows what is stored).
    fn store_batch(batch: Batch<'_>, docs: &[Uuid], followed: &mut HashMap<Uuid, Vec<ChangeHash>>) -> bool {
        match batch.commit() {
            Ok(followed_now) => {
                followed.extend(followed_now);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "saving the operations index failed; it is indexed again next listing");
                for doc in docs {
                    followed.remove(doc);
                }
                false
            }
        }
    }

    /// The documents of `docs` a listing would have to read: those whose
    /// indexed records are behind their durable heads and whose notes do
    /// not reach them.
    pub fn behind(&self, repo: &Repo, project: Uuid, docs: &[Uuid]) -> Result<Vec<Uuid>, RepoError> {
        let mut followed = self.followed.lock().unwrap_or_else(|p| p.into_inner());
        let mut scratch = Batch::new(repo.store(), project);
        let mut behind = Vec::new();
        for &doc in docs {
            let Some(heads) = repo.heads(doc)? else { continue };
            let from = self.followed_heads(&mut followed, &mut scratch, doc)?;
            if matches!(self.catch(doc, &from, &heads, false), Catch::Read) {
                behind.push(doc);
            }
        }
        Ok(behind)
    }

    /// The heads `doc`'s records are indexed up to. A record of an earlier
    /// daemon (the records themselves) is indexed into `batch` here.
    fn followed_heads(
        &self,
        followed: &mut HashMap<Uuid, Vec<ChangeHash>>,
        batch: &mut Batch<'_>,
        doc: Uuid,
    ) -> Result<Vec<ChangeHash>, RepoError> {
        if let Some(heads) = followed.get(&doc) {
            return Ok(heads.clone());
        }
        let saved = batch.store.get_meta(&keys::oplog(doc))?;
        let heads = match saved.as_deref().map(Followed::decode) {
            Some(Some(Followed::Heads(heads))) => heads,
            // Followed only once the batch indexing its records is stored
            // (`Batch::follow`): a batch that is not (`behind`'s, or one
            // that fails) leaves them to be indexed next time.
            Some(Some(Followed::Legacy(heads, records))) => {
                batch.add(records)?;
                batch.follow(doc, &heads);
                return Ok(heads);
            }
            // Never indexed, or a record that does not decode: from the
            // start (a record that did not decode indexed nothing).
            Some(None) | None => Vec::new(),
        };
        followed.insert(doc, heads.clone());
        Ok(heads)
    }

    /// How `doc`, indexed up to `from`, comes up to `heads`; `take`: the
    /// notes are taken out of the queue (a listing), not only looked at.
    fn catch(&self, doc: Uuid, from: &[ChangeHash], heads: &[ChangeHash], take: bool) -> Catch {
        if same_heads(from, heads) {
            return Catch::Current;
        }
        let notes = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .of(doc, take);
        let (mut at, mut records) = (from.to_vec(), Vec::new());
        for note in notes {
            if !same_heads(&note.before, &at) {
                continue;
            }
            records.extend(note.commits.iter().flatten().filter_map(|c| {
                let meta = c.message.as_deref().and_then(OpMeta::decode)?;
                Some((meta, Timestamp(c.time)))
            }));
            at = note.heads;
        }
        if same_heads(&at, heads) {
            Catch::Notes(records, at)
        } else {
            Catch::Read
        }
    }

    /// Drops the project's index and what `docs` were followed to, in one
    /// batch: every document is then indexed from its start, as if new.
    fn wipe(
        &self,
        store: &DocStore,
        project: Uuid,
        docs: &[Uuid],
        followed: &mut HashMap<Uuid, Vec<ChangeHash>>,
    ) -> Result<(), RepoError> {
        let mut batch = Batch::new(store, project);
        for prefix in [keys::OPX, keys::OPAT, keys::OPUNDO] {
            let prefix = format!("{prefix}{project}/");
            for name in store.meta_names(&prefix)? {
                batch.delete(format!("{prefix}{name}"));
            }
        }
        batch.delete(keys::op_count(project));
        for &doc in docs {
            batch.delete(keys::oplog(doc));
            followed.remove(&doc);
        }
        let records: Vec<(String, Option<Vec<u8>>)> = batch.writes.into_iter().collect();
        store.change_metas_relaxed(&records)?;
        Ok(())
    }
}

/// How a catch-up shares the store's writer ([`OpLog::catch_up`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Pace {
    /// Someone waits for it (a listing): no pauses.
    Flat,
    /// The periodic catch-up: a pause after each batch.
    Background,
}

/// How far [`OpLog::index`] got.
#[derive(PartialEq, Eq)]
enum Indexed {
    /// Every document is indexed up to its heads (or storing failed, and
    /// the next listing tries again).
    Whole,
    /// A document lacks the heads it was followed to: the index must be
    /// rebuilt.
    Damaged,
}

/// A document whose followed heads it lacks.
struct Damaged;

/// Writes to one project's index, read back before they are stored: one
/// relaxed batch per listing.
struct Batch<'s> {
    store: &'s DocStore,
    project: Uuid,
    writes: BTreeMap<String, Option<Vec<u8>>>,
    added: u64,
    /// Documents followed to new heads by this batch.
    followed: Vec<(Uuid, Vec<ChangeHash>)>,
    /// An entry did not decode: the index is rebuilt instead.
    broken: bool,
}

impl<'s> Batch<'s> {
    fn new(store: &'s DocStore, project: Uuid) -> Self {
        Self {
            store,
            project,
            writes: BTreeMap::new(),
            added: 0,
            followed: Vec::new(),
            broken: false,
        }
    }

    fn get(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self.writes.get(name) {
            Some(v) => Ok(v.clone()),
            None => self.store.get_meta(name),
        }
    }

    fn put(&mut self, name: String, value: Vec<u8>) {
        self.writes.insert(name, Some(value));
    }

    fn delete(&mut self, name: String) {
        self.writes.insert(name, None);
    }

    /// Merges commit records into the project's operations.
    fn add(&mut self, records: Vec<Record>) -> Result<(), StoreError> {
        let p = self.project;
        for (meta, at) in records {
            if let Some(target) = meta.undoes {
                let name = keys::op_undone(p, target.0);
                let by = match read_id_from(self.get(&name)?) {
                    Some(by) => by.min(meta.op.0),
                    None => meta.op.0,
                };
                self.put(name, by.to_string().into_bytes());
            }
            let at_name = keys::op_at(p, meta.op.0);
            let existing = match self.get(&at_name)? {
                Some(order) => {
                    let order = String::from_utf8_lossy(&order).into_owned();
                    let entry = keys::op_entry(p, &order);
                    match self
                        .get(&entry)?
                        .and_then(|b| serde_json::from_slice::<OperationInfo>(&b).ok())
                    {
                        Some(info) => Some((order, info)),
                        None => {
                            self.broken = true;
                            return Ok(());
                        }
                    }
                }
                None => None,
            };
            let (order, info) = match existing {
                Some((order, mut info)) => {
                    // A peer's record is not trusted to keep the sum in range.
                    info.count = info.count.saturating_add(meta.count);
                    if at < info.at {
                        self.delete(keys::op_entry(p, &order));
                        info.at = at;
                    }
                    (order_key(info.at, info.id), info)
                }
                None => {
                    self.added += 1;
                    (order_key(at, meta.op), OperationInfo::first(meta, at))
                }
            };
            self.put(at_name, order.clone().into_bytes());
            let json = serde_json::to_vec(&info).expect("an operation serializes");
            self.put(keys::op_entry(p, &order), json);
        }
        Ok(())
    }

    /// Records that `doc` is indexed up to `heads`.
    fn follow(&mut self, doc: Uuid, heads: &[ChangeHash]) {
        self.put(keys::oplog(doc), Followed::encode(heads));
        self.followed.push((doc, heads.to_vec()));
    }

    /// Stores the batch; returns the documents it followed to new heads.
    fn commit(mut self) -> Result<Vec<(Uuid, Vec<ChangeHash>)>, StoreError> {
        if self.writes.is_empty() {
            return Ok(self.followed);
        }
        if self.added > 0 {
            let name = keys::op_count(self.project);
            let count = read_count(self.store.get_meta(&name)?);
            self.put(name, (count + self.added).to_string().into_bytes());
        }
        let records: Vec<(String, Option<Vec<u8>>)> = std::mem::take(&mut self.writes).into_iter().collect();
        self.store.change_metas_relaxed(&records)?;
        Ok(self.followed)
    }
}

fn read_count(bytes: Option<Vec<u8>>) -> u64 {
    bytes
        .and_then(|b| String::from_utf8(b).ok()?.parse().ok())
        .unwrap_or(0)
}

fn read_id_from(bytes: Option<Vec<u8>>) -> Option<Uuid> {
    String::from_utf8(bytes?).ok()?.parse().ok()
}

fn read_id(store: &DocStore, name: &str) -> Result<Option<Uuid>, StoreError> {
    Ok(read_id_from(store.get_meta(name)?))
}

/// Where an operation sorts: newest first, then the larger id first (the
/// order the list has always had), as fixed-width hex.
fn order_key(at: Timestamp, op: OperationId) -> String {
    let at = (i64::MAX as i128 - i128::from(at.0)) as u64;
    let id = u128::MAX - op.0.as_u128();
    format!("{at:016x}{id:032x}")
}

/// What `oplog/<doc>` holds.
enum Followed {
    /// The heads the document's records are indexed up to.
    Heads(Vec<ChangeHash>),
    /// An earlier daemon's record: the heads and the records themselves.
    Legacy(Vec<ChangeHash>, Vec<Record>),
}

/// `oplog/<doc>` as stored: the heads as hex, and `v` 2 (an earlier
/// daemon's record has the records and no `v`).
#[derive(Serialize, Deserialize)]
struct Saved {
    #[serde(default)]
    v: u32,
    heads: Vec<String>,
    #[serde(default)]
    records: Vec<(OpMeta, i64)>,
}

impl Followed {
    fn encode(heads: &[ChangeHash]) -> Vec<u8> {
        let saved = Saved {
            v: 2,
            heads: heads.iter().map(ToString::to_string).collect(),
            records: Vec::new(),
        };
        serde_json::to_vec(&saved).expect("heads serialize")
    }

    /// `None` for a record that does not decode (damaged, or of another
    /// layout): the document is then indexed from its start.
    fn decode(bytes: &[u8]) -> Option<Self> {
        let saved: Saved = serde_json::from_slice(bytes).ok()?;
        let heads = saved
            .heads
            .iter()
            .map(|h| h.parse::<ChangeHash>().ok())
            .collect::<Option<Vec<_>>>()?;
        Some(if saved.v >= 2 {
            Self::Heads(heads)
        } else {
            let records = saved
                .records
                .into_iter()
                .map(|(m, at)| (m, Timestamp(at)))
                .collect();
            Self::Legacy(heads, records)
        })
    }
}

fn same_heads(a: &[ChangeHash], b: &[ChangeHash]) -> bool {
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    a.sort();
    b.sort();
    a == b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(n: u128) -> OpMeta {
        OpMeta {
            op: OperationId(Uuid::from_u128(n)),
            kind: sitesync_model::OperationKind::BulkUpdate,
            user: "ana".into(),
            device: sitesync_model::DeviceId::from_u128(3),
            reason: Some("daily report".into()),
            undoes: None,
            count: 12,
        }
    }

    /// A followed record reads back as written; an earlier daemon's record
    /// reads as its records; a damaged or foreign one is refused (the
    /// document is then indexed from its start), never trusted.
    #[test]
    fn followed_heads_read_back_and_a_damaged_record_is_refused() {
        let heads = vec![ChangeHash([9; 32]), ChangeHash([1; 32])];
        match Followed::decode(&Followed::encode(&heads)) {
            Some(Followed::Heads(back)) => assert_eq!(back, heads),
            _ => panic!("heads read back"),
        }
        let legacy = serde_json::to_vec(&serde_json::json!({
            "heads": [heads[0].to_string()],
            "records": [[meta(7), 1_700_000_000_000i64]],
        }))
        .unwrap();
        match Followed::decode(&legacy) {
            Some(Followed::Legacy(h, records)) => {
                assert_eq!(h, vec![heads[0]]);
                assert_eq!(records, vec![(meta(7), Timestamp(1_700_000_000_000))]);
            }
            _ => panic!("an earlier daemon's record reads as its records"),
        }
        for bad in [&b"not json"[..], br#"{"heads": ["zz"], "v": 2}"#, b""] {
            assert!(
                Followed::decode(bad).is_none(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// Entries sort newest first, then by the larger id, as the list
    /// always has.
    #[test]
    fn order_keys_sort_newest_first() {
        let op = |n| OperationId(Uuid::from_u128(n));
        let mut keys = [
            (order_key(Timestamp(10), op(1)), "old"),
            (order_key(Timestamp(20), op(1)), "new, small id"),
            (order_key(Timestamp(20), op(2)), "new, large id"),
        ];
        keys.sort();
        let order: Vec<&str> = keys.iter().map(|(_, what)| *what).collect();
        assert_eq!(order, ["new, large id", "new, small id", "old"]);
    }

    /// Notes are bounded by commits across documents as well as by notes
    /// per document; a document whose notes would pass either bound loses
    /// them all (it is read instead), and the count stays exact.
    #[test]
    fn pending_notes_are_bounded_by_commits_and_per_document() {
        let note = |doc: u128, commits: usize| Persisted {
            id: Uuid::from_u128(doc),
            before: Vec::new(),
            heads: Vec::new(),
            origin: sitesync_sync::Origin::Local,
            own_changes: 0,
            commits: Some(vec![
                sitesync_sync::repo::Commit {
                    message: None,
                    time: 0
                };
                commits
            ]),
        };
        let mut pending = Pending::default();
        pending.keep(&note(1, PENDING_COMMITS - 10));
        pending.keep(&note(2, 4));
        assert_eq!(pending.commits, PENDING_COMMITS - 6);
        // Document 2 would pass the bound: its notes go, document 1 stays.
        pending.keep(&note(2, 7));
        assert_eq!(pending.commits, PENDING_COMMITS - 10);
        assert!(pending.of(Uuid::from_u128(2), false).is_empty());
        assert_eq!(pending.of(Uuid::from_u128(1), true).len(), 1);
        assert_eq!(pending.commits, 0);
        for _ in 0..PENDING_PER_DOC {
            pending.keep(&note(3, 1));
        }
        assert_eq!(pending.commits, PENDING_PER_DOC);
        pending.keep(&note(3, 1));
        assert_eq!(pending.commits, 0, "one note too many drops them all");
        assert!(pending.notes.is_empty());
    }
}
