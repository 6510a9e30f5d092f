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
//!
//! One file, over 700 lines, on purpose: loading, writing, persisting,
//! eviction and compaction all change the cache's private bookkeeping
//! (each slot's saved heads, weight and change records), and the
//! invariants that bookkeeping keeps — acknowledged means durable, memory
//! never holds what the store does not — are checked in one place.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use sitesync_model::ModelError;
use sitesync_model::automerge::{ActorId, Automerge, ChangeHash};
use uuid::Uuid;

use sitesync_model::Spread;

use crate::cache::{CacheBudget, Weighed, Weighted, weight};
use crate::store::{Append, Compaction, Damage, DocStore, Loaded, StoreError};
use crate::workers::Workers;

mod typed;
pub use typed::Doc;

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

/// What a repository holds for each document: its Automerge document,
/// read as its owner needs it. A relay never interprets documents and
/// holds them raw ([`Automerge`]); a daemon holds the model's documents
/// ([`Doc`]).
pub trait Document: Send + Sync + Sized + 'static {
    /// A document as loaded from the store.
    fn read(doc: Automerge) -> Result<Self, ModelError>;
    /// A document not read as anything (yet): what sync fills.
    fn raw(doc: Automerge) -> Self;
    /// Reads again, as [`Self::read`], a document that sync just changed
    /// while it was held raw.
    fn upgrade(self) -> Result<Self, ModelError>;
    fn automerge(&self) -> &Automerge;
    fn automerge_mut(&mut self) -> &mut Automerge;

    /// Gives back the memory a change left allocated but unused. Applying
    /// changes grows Automerge's columns by doubling: a drawing that takes
    /// ~100 KB loaded from its snapshot held ~1.5 MB after applying two
    /// bulk changes of ~7 KB, and a cache of 64 such documents was most of
    /// a daemon's memory. A clone allocates exactly what is used (~100 KB
    /// again) and costs ~0.05 ms (100,000-component bench store).
    fn shrink(&mut self) {
        let doc = self.automerge_mut();
        *doc = doc.clone();
    }
}

/// A relay's documents: bytes it stores and syncs, never interprets.
impl Document for Automerge {
    fn read(doc: Automerge) -> Result<Self, ModelError> {
        Ok(doc)
    }
    fn raw(doc: Automerge) -> Self {
        doc
    }
    fn upgrade(self) -> Result<Self, ModelError> {
        Ok(self)
    }
    fn automerge(&self) -> &Automerge {
        self
    }
    fn automerge_mut(&mut self) -> &mut Automerge {
        self
    }
}

/// Metadata record holding a document's durable heads, so summaries need
/// not load documents.
fn heads_meta(id: Uuid) -> String {
    crate::keys::heads(id)
}

/// Encodes change hashes as 32-byte runs.
pub fn encode_heads(heads: &[ChangeHash]) -> Vec<u8> {
    heads.iter().flat_map(|h| h.0).collect()
}

/// The inverse of [`encode_heads`]; `None` for a damaged record.
pub fn decode_heads(bytes: &[u8]) -> Option<Vec<ChangeHash>> {
    if !bytes.len().is_multiple_of(32) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(32)
            .map(|c| ChangeHash(c.try_into().expect("32 bytes")))
            .collect(),
    )
}

/// At most this many documents are compacted in one commit: one fsync for
/// many, while each saved snapshot waits in memory only that long.
const COMPACT_BATCH: usize = 16;

/// One document whose new changes just became durable: an entry of the
/// repository's change feed ([`Repo::subscribe`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Persisted {
    pub id: Uuid,
    /// Heads stored before this write (empty for a document new here).
    pub before: Vec<ChangeHash>,
    /// Heads stored now.
    pub heads: Vec<ChangeHash>,
    /// Whether this process wrote the changes or a peer sent them.
    pub origin: Origin,
    /// How many of the new changes this process made (its actor's): what
    /// an owner counting unacknowledged local changes adds without
    /// decoding the document again.
    pub own_changes: usize,
    /// The new changes' messages and times, oldest first, when the
    /// repository reports them ([`RepoConfig::report_commits`]): what an
    /// owner indexing commit metadata (the daemon's operations list, its
    /// clock, the origin of its events) takes without reading the
    /// document again.
    pub commits: Option<Vec<Commit>>,
}

/// Where the changes of a [`Persisted`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Written by this process ([`Repo::write`]).
    Local,
    /// Sent by a peer ([`Repo::sync_doc`]).
    Received(Sender),
}

/// The peer a document's changes came from, and the project it sent them
/// for: what a subscriber indexing received changes needs to place them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sender {
    /// The peer's key (its device id bound to its token).
    pub peer: Uuid,
    pub project: Uuid,
}

/// One change's message and time, as its author committed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    pub message: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub time: i64,
}

/// A document as its sender saved it (`Automerge::save`), arrived whole in
/// one sync message: what [`Repo::sync_doc`] may store as is.
pub struct Arrived {
    pub bytes: Vec<u8>,
    /// The heads the sender announced with it.
    pub heads: Vec<ChangeHash>,
}

/// Where the changes [`Repo::persist`] makes durable come from.
enum Source {
    /// Made here ([`Repo::write`]): the change feed is told how many are
    /// this process's own.
    Local,
    /// Received ([`Repo::sync_doc`]) from `from`. Never this process's own
    /// (its actor is fresh for every start), so not counted. `whole`: the
    /// bytes to store as the snapshot of the (single) document, when it
    /// arrived whole into nothing.
    Received { from: Sender, whole: Option<Vec<u8>> },
}

/// A subscriber to the repository's change feed, told about the documents
/// whose new changes just became durable: from inside the repository's
/// lock (so it must not read the repository, and must not wait), before
/// the write or sync step that made them returns, so a subscriber has
/// heard of a change before it is acknowledged. Its implementations are
/// the feed's subscribers: in a daemon the operations list, the index of
/// received changes and replication; in a relay, a space's connections.
pub trait Subscriber: Send + Sync {
    fn persisted(&self, changes: &[Persisted]);
}

/// Called when a document has enough change records to be compacted; the
/// owner then calls [`Repo::compact_due`] off the write path.
pub type CompactionHook = Box<dyn Fn() + Send + Sync>;

struct Slot<D> {
    doc: D,
    /// Heads already durable in the store.
    saved: Vec<ChangeHash>,
    next_seq: u64,
    /// Change records stored after the snapshot, and their bytes: what a
    /// load replays and compaction folds.
    change_records: usize,
    change_bytes: usize,
    /// The stored snapshot's bytes: what folding the change records would
    /// rewrite ([`RepoConfig::compaction_due`]).
    snapshot_bytes: usize,
    /// Bytes of changes stored since the document was last shrunk
    /// ([`shrink_due`]); such a document is also in `Cache::unshrunk`.
    unshrunk: usize,
    last_used: u64,
    /// The document's estimated heap ([`weight`]), as of its last load or
    /// persist; what the cache's budget counts.
    weight: usize,
}

impl<D> Weighed for Slot<D> {
    fn weight(&self) -> usize {
        self.weight
    }
}

/// When a written document is shrunk ([`Document::shrink`], a copy that
/// drops the spare capacity its columns grew by): at once when it was
/// stored whole, or once the changes stored since its last shrink weigh
/// [`SHRINK_AFTER_BYTES`] and a quarter of its snapshot, whichever is
/// more; otherwise once it has been idle a while ([`Repo::shrink_idle`]).
///
/// Why both: a small change grows a document by far more than its bytes
/// (measured on the bench store's drawings, ~115 KB decoded: the first
/// toggle after a shrink added 1.5–3.5 KB, the next nineteen ~5 KB in all;
/// two bulk changes left one at 1.5 MB), so a document written once and
/// left must be shrunk, or a cache of them holds several times their
/// weight. But a shrink copies the whole document, so shrinking a hot
/// drawing every 4 KB of changes (~16 toggles) made each write pay for its
/// age: 13% of a write at 25,000 writes of history (`perf`). In proportion
/// to the snapshot, a byte written pays for a bounded number of copied
/// bytes, whatever the document's age; idle documents are shrunk off the
/// write path. (Shrinking every quarter snapshot alone, with no idle
/// sweep, left the aged benchmark's daemon at 4.1 GB with 2,048 drawings
/// decoded, 7× the fresh project's.)
fn shrink_due(unshrunk: usize, snapshot_bytes: usize) -> bool {
    unshrunk >= SHRINK_AFTER_BYTES.max(snapshot_bytes / 4)
}

/// The least change bytes that shrink a document on the write path
/// ([`shrink_due`]).
const SHRINK_AFTER_BYTES: usize = 4 * 1024;

struct Cache<D> {
    slots: Weighted<Slot<D>>,
    /// Cached documents written since their last shrink, for
    /// [`Repo::shrink_idle`] (so it never walks every slot).
    unshrunk: HashSet<Uuid>,
    /// The budget's clock at the last [`Repo::shrink_idle`]: a document
    /// not used since is idle.
    swept_at: u64,
    damaged: Vec<Damage>,
    /// This repository's last use, on its budget's clock.
    tick: u64,
    /// Documents due for compaction ([`RepoConfig::compact_at`],
    /// [`RepoConfig::compact_bytes`]), waiting for [`Repo::compact_due`]
    /// (when a compaction hook is installed). They stay due when evicted.
    due: HashSet<Uuid>,
    /// Documents evicted with change records worth folding
    /// ([`COMPACT_GROWTH`]), kept decoded until
    /// [`Repo::compact_due`] folds them (at most [`EVICTED_KEPT`]; they are
    /// also in `due`). Saving a document already in memory is the cheap
    /// moment to fold it: replaying its records on the next load cost
    /// twice its snapshot's load (`perf` of the offline catch-up's receiving
    /// daemon: a third of its CPU in applying stored change records). A
    /// document asked for meanwhile comes back from here, not the store.
    evicted: Weighted<Slot<D>>,
}

impl<D> Cache<D> {
    fn new(budget: Arc<CacheBudget>) -> Self {
        Self {
            slots: Weighted::new(budget.clone()),
            damaged: Vec::new(),
            tick: 0,
            due: HashSet::new(),
            evicted: Weighted::new(budget),
            unshrunk: HashSet::new(),
            swept_at: 0,
        }
    }

    /// Marks a use: later than every earlier use of any repository sharing
    /// the budget.
    fn advance(&mut self) -> u64 {
        self.tick = self.slots.budget().tick();
        self.tick
    }

    fn over_budget(&self) -> bool {
        self.slots.budget().over()
    }
}

/// A document's change records are folded into a new snapshot only once
/// they weigh at least 1/`COMPACT_GROWTH` of the snapshot they would
/// replace. Folding rewrites (and compresses) the whole document, so a
/// fixed trigger made every write pay for the project's age: `perf` of a
/// daemon toggling milestones on one drawing with 11,000 writes of history
/// had 75% of its CPU in `compact_due`'s save (zlib over the whole
/// history, every 16 writes), and a write took 12 ms against 5 ms on the
/// fresh drawing. With the snapshot growing by at least this share between
/// folds, a byte written is rewritten a bounded number of times whatever
/// the document's age, and a load replays at most about half a snapshot's
/// worth of change records.
const COMPACT_GROWTH: usize = 2;

/// At most this many evicted documents wait for compaction in memory
/// (~100–200 KB each); past it an evicted document is dropped as before.
const EVICTED_KEPT: usize = 64;

/// Tuning knobs; the defaults suit a laptop.
#[derive(Clone, Copy, Debug)]
pub struct RepoConfig {
    /// Fold a document's change records into a snapshot past this many.
    pub compact_at: usize,
    /// ... or once they hold this many bytes. Replaying changes costs more
    /// than loading a snapshot: on the 100,000-component bench store a
    /// drawing imported as ~90 KB of change records loaded in 3.2 ms, and
    /// from its 6 KB snapshot in 1.8 ms.
    pub compact_bytes: usize,
    /// Keep at most this many documents in memory.
    pub max_cached: usize,
    /// ... weighing at most this many bytes together (estimated,
    /// [`crate::cache::weight`]), unless the repository shares a budget
    /// ([`Repo::sharing`]).
    pub max_cached_bytes: usize,
    /// Threads that share a write's per-document work: loading what the
    /// cache lacks, encoding the new changes, shrinking, and
    /// [`Repo::read_drawings`]. One document is always done inline.
    pub workers: Workers,
    /// Fill [`Persisted::commits`] (a daemon indexes its commits' operation
    /// metadata; a relay has no use for it).
    pub report_commits: bool,
}

impl Default for RepoConfig {
    fn default() -> Self {
        Self {
            compact_at: 16,
            compact_bytes: 32 * 1024,
            // A decoded drawing of the benchmark's project (50 components,
            // ~850 ops) takes ~85 KB of heap once shrunk (`Doc::shrink`;
            // heaptrack of a daemon holding 512), ~100 KB of RSS. 2,048
            // hold a 100,000-component project whole in ~200 MB. At 512
            // every round of a bulk of 10,000 (500 drawings) reloaded what
            // the last round evicted, ~2 ms a drawing and a third of the
            // bulk; working memory after the benchmark's writes is 404 MB
            // at 512 and 589 MB at 2,048 (FINDINGS weighs the trade).
            max_cached: 2048,
            // 2,048 drawings of the benchmark's project weigh ~190 MB by
            // the estimate; with a year of history (~550 writes each),
            // ~730 MB. Not lower yet: at 256 MiB the aged benchmark's
            // daemon timed out requests, because the passes over every
            // document after a history arrives (the project index, 37 s;
            // the operations list's catch-up) reloaded each drawing from
            // the store, ~18 ms each (FINDINGS, session 26).
            max_cached_bytes: 1 << 30,
            workers: Workers::per_core(),
            report_commits: false,
        }
    }
}

impl RepoConfig {
    /// Whether a document's change records (`records` of them, `bytes`
    /// together) are due to be folded into a new snapshot, its stored one
    /// weighing `snapshot` bytes: past [`Self::compact_at`] or
    /// [`Self::compact_bytes`], and only once they are worth the rewrite
    /// ([`COMPACT_GROWTH`]).
    pub fn compaction_due(&self, records: usize, bytes: usize, snapshot: usize) -> bool {
        (records >= self.compact_at || bytes >= self.compact_bytes) && worth_folding(records, bytes, snapshot)
    }
}

/// Whether folding change records into a new snapshot is worth rewriting
/// the snapshot ([`COMPACT_GROWTH`]).
fn worth_folding(records: usize, bytes: usize, snapshot: usize) -> bool {
    records > 0 && bytes.saturating_mul(COMPACT_GROWTH) >= snapshot
}

/// How often [`compact_in_background`] shrinks idle documents
/// ([`Repo::shrink_idle`]): a document written and left keeps its spare
/// capacity for one to two periods.
pub const SHRINK_IDLE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs a repository's upkeep in the background from now on: installs its
/// compaction hook and a task that calls [`Repo::compact_due`] whenever the
/// hook fires, and [`Repo::shrink_idle`] every [`SHRINK_IDLE_EVERY`]. Call
/// from inside a tokio runtime; the task ends with the runtime or once the
/// repository is dropped.
pub fn compact_in_background<D: Document>(repo: &Arc<Repo<D>>) {
    let wake = Arc::new(tokio::sync::Notify::new());
    let notify = wake.clone();
    repo.set_compaction_hook(Box::new(move || notify.notify_one()));
    let repo = Arc::downgrade(repo);
    tokio::spawn(async move {
        let mut shrink = tokio::time::interval(SHRINK_IDLE_EVERY);
        shrink.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let compact = tokio::select! {
                _ = wake.notified() => true,
                _ = shrink.tick() => false,
            };
            let Some(repo) = repo.upgrade() else { return };
            if compact {
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || repo.compact_due()).await {
                    tracing::warn!(error = %e, "compaction failed; the change records stay and it is retried");
                }
            } else {
                let _ = tokio::task::spawn_blocking(move || repo.shrink_idle()).await;
            }
        }
    });
}

/// The document repository, holding each document as `D`.
pub struct Repo<D: Document = Doc> {
    store: DocStore,
    actor: ActorId,
    config: RepoConfig,
    cache: Mutex<Cache<D>>,
    /// Told which documents changed after every durable batch (sync forwards them).
    subscribers: std::sync::RwLock<Vec<Arc<dyn Subscriber>>>,
    /// Told when a document is due for compaction. Without one, a write
    /// compacts inline, before it returns.
    on_compaction_due: std::sync::OnceLock<CompactionHook>,
    /// Held while compacting, so two compactions of one document never
    /// race (an older snapshot stored last would lose the records between).
    compacting: Mutex<()>,
}

impl<D: Document> Repo<D> {
    /// `actor` must be fresh for every process start, so a restored backup
    /// never reuses an actor's sequence numbers.
    pub fn new(store: DocStore, actor: ActorId, config: RepoConfig) -> Self {
        Self::sharing(store, actor, config, CacheBudget::new(config.max_cached_bytes))
    }

    /// [`Repo::new`] whose cache draws on `budget` together with other
    /// repositories' (a relay's organisations share one), instead of
    /// [`RepoConfig::max_cached_bytes`] of its own.
    pub fn sharing(store: DocStore, actor: ActorId, config: RepoConfig, budget: Arc<CacheBudget>) -> Self {
        Self {
            store,
            actor,
            config,
            cache: Mutex::new(Cache::new(budget)),
            subscribers: std::sync::RwLock::default(),
            on_compaction_due: std::sync::OnceLock::new(),
            compacting: Mutex::new(()),
        }
    }

    /// Moves compaction off the write path: when a document is due, `hook`
    /// is told, and the owner calls [`Repo::compact_due`] (from a background
    /// task). Saving a whole document and committing it added ~1.5 ms to one
    /// write in 16. Installed once; later calls are ignored.
    pub fn set_compaction_hook(&self, hook: CompactionHook) {
        let _ = self.on_compaction_due.set(hook);
    }

    /// Shrinks the cached documents written since their last shrink and not
    /// used since the previous call ([`shrink_due`]); returns how many. An
    /// owner calls it every so often ([`compact_in_background`]: every
    /// [`SHRINK_IDLE_EVERY`]). Holds the cache for one document's copy at
    /// a time, so a write waits at most one copy.
    pub fn shrink_idle(&self) -> usize {
        let idle: Vec<Uuid> = {
            let mut cache = self.lock();
            let now = cache.slots.budget().tick();
            let since = std::mem::replace(&mut cache.swept_at, now);
            let cache = &mut *cache;
            let slots = &cache.slots;
            // Evicted ones went with their spare capacity.
            cache.unshrunk.retain(|id| slots.contains_key(id));
            cache
                .unshrunk
                .iter()
                .filter(|id| slots.get(id).is_some_and(|s| s.last_used <= since))
                .copied()
                .collect()
        };
        let mut shrunk = 0;
        for id in idle {
            let mut cache = self.lock();
            if !cache.unshrunk.remove(&id) {
                continue; // shrunk by a write meanwhile
            }
            cache.slots.update(&id, |slot| {
                slot.doc.shrink();
                slot.unshrunk = 0;
            });
            shrunk += 1;
        }
        shrunk
    }

    /// Folds the change records of every document due for compaction into
    /// a snapshot; returns how many were compacted. Holds the cache only to
    /// copy each document, so writes wait at most one copy, never a save
    /// or a commit.
    /// A document evicted meanwhile is loaded from the store on its own
    /// (outside the cache, which it would churn) and compacted all the
    /// same: an import or a clone evicts most documents before their turn,
    /// and they would otherwise keep replaying their changes on every load.
    /// Failing loses nothing (the change records stay).
    pub fn compact_due(&self) -> Result<usize, RepoError> {
        let _one_at_a_time = self.compacting.lock().unwrap_or_else(|p| p.into_inner());
        let mut done = 0;
        loop {
            let ids: Vec<Uuid> = {
                let mut cache = self.lock();
                let ids: Vec<Uuid> = cache.due.iter().take(COMPACT_BATCH).copied().collect();
                for id in &ids {
                    cache.due.remove(id);
                }
                ids
            };
            if ids.is_empty() {
                return Ok(done);
            }
            // (document, change records and bytes folded, new snapshot's
            // bytes) per compaction.
            let mut batch = Vec::with_capacity(ids.len());
            let mut folded = Vec::with_capacity(ids.len());
            for id in ids {
                // Only what is durable goes into the snapshot: a write whose
                // records are not stored yet cannot be in the cache here
                // (writes persist before they release the cache).
                let cached = {
                    let mut cache = self.lock();
                    let fold = |doc: &Automerge, next_seq: u64, records: usize, bytes: usize| {
                        let c = Compaction {
                            id,
                            snapshot: doc.save(),
                            next_seq,
                        };
                        (c, records, bytes)
                    };
                    match cache.slots.get(&id) {
                        // Saved outside the lock, from a copy: a save
                        // compresses the whole history (~100 ms for a
                        // drawing with 25,000 writes) where a copy takes
                        // ~1 ms, and writes to any document wait for this
                        // lock. A write meanwhile appends at or above
                        // `next_seq`, which the compaction keeps.
                        Some(slot) => {
                            let (doc, seq) = (slot.doc.automerge().clone(), slot.next_seq);
                            let (records, bytes) = (slot.change_records, slot.change_bytes);
                            drop(cache);
                            Some(fold(&doc, seq, records, bytes))
                        }
                        // Saved outside the lock: it is out of the cache
                        // now, and a load meanwhile appends at or above
                        // its `next_seq`, as below.
                        None => cache.evicted.remove(&id).map(|slot| {
                            drop(cache);
                            let doc = slot.doc.automerge();
                            fold(doc, slot.next_seq, slot.change_records, slot.change_bytes)
                        }),
                    }
                };
                let (c, records, bytes) = match cached {
                    Some(c) => c,
                    // Every record below the loaded `next_seq` is in the
                    // loaded document, and a write meanwhile appends at or
                    // above it.
                    None => match self.store.load(id, self.actor.clone())? {
                        Some(l) => {
                            let c = Compaction {
                                id,
                                snapshot: l.doc.save(),
                                next_seq: l.next_seq,
                            };
                            (c, l.change_records, l.change_bytes)
                        }
                        None => continue,
                    },
                };
                folded.push((id, records, bytes, c.snapshot.len()));
                batch.push(c);
            }
            self.store.compact(&batch)?;
            let mut cache = self.lock();
            for (id, records, bytes, snapshot) in folded {
                if let Some(slot) = cache.slots.get_mut(&id) {
                    slot.change_records = slot.change_records.saturating_sub(records);
                    slot.change_bytes = slot.change_bytes.saturating_sub(bytes);
                    slot.snapshot_bytes = snapshot;
                }
            }
            done += batch.len();
        }
    }

    /// Adds a subscriber to the change feed: told about every durable
    /// change from now on (each subscriber, in the order added).
    pub fn subscribe(&self, subscriber: Arc<dyn Subscriber>) {
        self.subscribers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(subscriber);
    }

    fn subscribers(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<dyn Subscriber>>> {
        self.subscribers.read().unwrap_or_else(|p| p.into_inner())
    }

    /// A document's durable heads without loading it when possible; `None`
    /// for a document not held here.
    pub fn heads(&self, id: Uuid) -> Result<Option<Vec<ChangeHash>>, RepoError> {
        if let Some(slot) = self.lock().slots.get(&id) {
            return Ok(Some(slot.saved.clone()));
        }
        if let Some(bytes) = self.store.get_meta(&heads_meta(id))?
            && let Some(heads) = decode_heads(&bytes)
        {
            return Ok(Some(heads));
        }
        // Stored before heads were recorded, or the record is damaged.
        let mut cache = self.lock();
        match self.slot(&mut cache, id) {
            Ok(slot) => {
                let heads = slot.saved.clone();
                self.trim(&mut cache);
                Ok(Some(heads))
            }
            Err(RepoError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Runs `f` over the raw Automerge document `id` (an empty one when not
    /// held here: sync fills it). When its heads changed, makes the new
    /// changes and the metadata records `f` returns durable in one batch.
    /// Returns `f`'s result and the durable heads.
    ///
    /// `arrived`: the document as its sender saved it, when the message
    /// carried it whole. If this side held nothing of it and `f` leaves it
    /// with exactly those heads, those bytes are stored as its snapshot,
    /// instead of saving the document again (a clone spent 14% of its time
    /// in that save).
    pub fn sync_doc<T>(
        &self,
        id: Uuid,
        from: Sender,
        arrived: Option<Arrived>,
        f: impl FnOnce(&mut Automerge) -> (T, Vec<(String, Vec<u8>)>),
    ) -> Result<(T, Vec<ChangeHash>), RepoError> {
        let mut cache = self.lock();
        match self.slot(&mut cache, id) {
            Ok(_) => {}
            Err(RepoError::NotFound { .. }) => {
                let tick = cache.advance();
                cache.slots.insert(
                    id,
                    Slot {
                        doc: D::raw(Automerge::new().with_actor(self.actor.clone())),
                        saved: Vec::new(),
                        next_seq: 0,
                        change_records: 0,
                        change_bytes: 0,
                        snapshot_bytes: 0,
                        unshrunk: 0,
                        last_used: tick,
                        weight: 0,
                    },
                );
            }
            Err(e) => return Err(e),
        }
        let slot = cache.slots.get_mut(&id).expect("just loaded");
        let (out, metas) = f(slot.doc.automerge_mut());
        if slot.doc.automerge().get_heads() == slot.saved {
            let heads = slot.saved.clone();
            if heads.is_empty() {
                // An empty document sync brought nothing to is not kept.
                cache.slots.remove(&id);
            }
            self.trim(&mut cache);
            return Ok((out, heads));
        }
        let doc = std::mem::replace(&mut slot.doc, D::raw(Automerge::new()));
        slot.doc = match doc.upgrade() {
            Ok(doc) => doc,
            Err(e) => {
                cache.slots.remove(&id);
                return Err(e.into());
            }
        };
        let whole = arrived
            .filter(|a| {
                let slot = &cache.slots[&id];
                let (mut theirs, mut ours) = (a.heads.clone(), slot.doc.automerge().get_heads());
                theirs.sort_unstable();
                ours.sort_unstable();
                slot.saved.is_empty() && theirs == ours
            })
            .map(|a| a.bytes);
        let touched = HashSet::from([id]);
        if let Err(e) = self.persist(&mut cache, &touched, &metas, Source::Received { from, whole }) {
            cache.slots.remove(&id);
            return Err(e.into());
        }
        let heads = cache.slots[&id].saved.clone();
        self.trim(&mut cache);
        Ok((out, heads))
    }

    /// Reads the raw Automerge document, if held here.
    pub fn read_raw<T>(&self, id: Uuid, f: impl FnOnce(&Automerge) -> T) -> Result<Option<T>, RepoError> {
        match self.read(id, |d| f(d.automerge())) {
            Ok(v) => Ok(Some(v)),
            Err(RepoError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The Automerge actor this process writes as.
    pub fn actor(&self) -> &ActorId {
        &self.actor
    }

    pub fn store(&self) -> &DocStore {
        &self.store
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache<D>> {
        // A panic while holding the lock leaves only durable state behind
        // (writes persist before the cache is updated), so recover the guard.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads any document, then trims the cache (reads bound memory too).
    fn read<T>(&self, id: Uuid, f: impl FnOnce(&D) -> T) -> Result<T, RepoError> {
        let mut cache = self.lock();
        let out = f(&self.slot(&mut cache, id)?.doc);
        self.trim(&mut cache);
        Ok(out)
    }

    /// Runs `f` over the documents it touches, then makes every new change
    /// durable in one batch before returning.
    pub fn write<T>(&self, f: impl FnOnce(&mut Tx<'_, D>) -> Result<T, RepoError>) -> Result<T, RepoError> {
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
        if let Err(e) = self.persist(&mut cache, &touched, &metas, Source::Local) {
            for id in &touched {
                cache.slots.remove(id);
            }
            return Err(e.into());
        }
        self.trim(&mut cache);
        Ok(out)
    }

    /// Stores the new changes of the `touched` documents and `metas` in one
    /// durable batch, then tells the change feed ([`Subscriber`]).
    fn persist(
        &self,
        cache: &mut Cache<D>,
        touched: &HashSet<Uuid>,
        metas: &[(String, Vec<u8>)],
        mut source: Source,
    ) -> Result<(), StoreError> {
        let mut metas = metas.to_vec();
        let count_own = !self.subscribers().is_empty() && matches!(source, Source::Local);
        let report = self.config.report_commits;
        // The sender's bytes stand for one document only (`sync_doc`).
        let sent_whole = touched.len() == 1 && matches!(source, Source::Received { whole: Some(_), .. });
        let origin = match &source {
            Source::Local => Origin::Local,
            Source::Received { from, .. } => Origin::Received(*from),
        };
        // Encoding each document's new changes is independent work (a bulk
        // of 10,000 encodes ~500 documents).
        let work: Vec<(Uuid, &Slot<D>)> = touched
            .iter()
            .map(|id| (*id, cache.slots.get(id).expect("touched documents are cached")))
            .collect();
        let encoded = self.config.workers.map(work, |(id, slot)| {
            let doc = slot.doc.automerge();
            let heads = doc.get_heads();
            if heads == slot.saved {
                return None;
            }
            // Reading the new changes' metadata walks the document's
            // change graph: done once here for every subscriber (the
            // daemon's clock, index and operations list all need it).
            let new_changes = if count_own || report {
                doc.get_changes_meta(&slot.saved)
            } else {
                Vec::new()
            };
            let own_changes = if count_own {
                new_changes.iter().filter(|c| *c.actor == self.actor).count()
            } else {
                0
            };
            let commits = report.then(|| {
                new_changes
                    .iter()
                    .map(|c| Commit {
                        message: c.message.as_deref().map(str::to_owned),
                        time: c.timestamp,
                    })
                    .collect()
            });
            // Nothing of it stored yet (a new document, or one arriving by
            // sync): store it whole, as a snapshot; as its sender saved it
            // when it came that way.
            let whole = slot.saved.is_empty();
            let bytes = match (whole, sent_whole) {
                (true, true) => None,
                (true, false) => Some(doc.save()),
                (false, _) => Some(doc.save_after(&slot.saved)),
            };
            let persisted = Persisted {
                id,
                before: slot.saved.clone(),
                heads,
                origin,
                own_changes,
                commits,
            };
            Some((persisted, bytes, slot.next_seq))
        });
        let mut appends = Vec::new();
        let mut persisted = Vec::new();
        for (p, bytes, seq) in encoded.into_iter().flatten() {
            let whole = p.before.is_empty();
            let bytes = bytes.unwrap_or_else(|| match &mut source {
                Source::Received {
                    whole: Some(saved), ..
                } => std::mem::take(saved),
                _ => unreachable!("only a document sent whole is stored without encoding"),
            });
            appends.push(Append {
                id: p.id,
                seq,
                bytes,
                whole,
            });
            metas.push((heads_meta(p.id), encode_heads(&p.heads)));
            persisted.push(p);
        }
        self.store.append(&appends, &metas)?;
        let mut grown = Vec::new();
        for (p, a) in persisted.iter().zip(&appends) {
            let shrink = cache.slots.update(&p.id, |slot| {
                slot.saved = p.heads.clone();
                // Changed documents are weighed again: the cache's budget
                // follows history as it grows.
                slot.weight = weight(slot.doc.automerge());
                slot.unshrunk += a.bytes.len();
                if a.whole {
                    slot.snapshot_bytes = a.bytes.len();
                }
                let shrink = a.whole || shrink_due(slot.unshrunk, slot.snapshot_bytes);
                if shrink {
                    slot.unshrunk = 0;
                }
                shrink
            });
            if shrink.expect("cached") {
                cache.unshrunk.remove(&p.id);
                grown.push(p.id);
            } else {
                cache.unshrunk.insert(p.id);
            }
        }
        // Out of the cache while they shrink side by side, and back: the
        // stored documents only, never a walk over every cached slot.
        let grown: Vec<(Uuid, Slot<D>)> = grown
            .into_iter()
            .map(|id| (id, cache.slots.remove(&id).expect("cached")))
            .collect();
        let shrunk = self.config.workers.map(grown, |(id, mut slot)| {
            slot.doc.shrink();
            (id, slot)
        });
        cache.slots.extend(shrunk);
        for a in &appends {
            let slot = cache.slots.get_mut(&a.id).expect("cached");
            if a.whole {
                continue;
            }
            slot.next_seq += 1;
            slot.change_records += 1;
            slot.change_bytes += a.bytes.len();
            let due = self
                .config
                .compaction_due(slot.change_records, slot.change_bytes, slot.snapshot_bytes);
            if due && self.on_compaction_due.get().is_some() {
                cache.due.insert(a.id);
            } else if due {
                // Compaction failing loses nothing: the change records stay.
                let c = Compaction {
                    id: a.id,
                    snapshot: slot.doc.automerge().save(),
                    next_seq: slot.next_seq,
                };
                let snapshot = c.snapshot.len();
                match self.store.compact(&[c]) {
                    Ok(()) => {
                        (slot.change_records, slot.change_bytes, slot.snapshot_bytes) = (0, 0, snapshot)
                    }
                    Err(e) => tracing::warn!(doc = %a.id, error = %e, "compaction failed; will retry"),
                }
            }
        }
        if !persisted.is_empty() {
            for subscriber in self.subscribers().iter() {
                subscriber.persisted(&persisted);
            }
        }
        if !cache.due.is_empty()
            && let Some(hook) = self.on_compaction_due.get()
        {
            hook();
        }
        Ok(())
    }

    fn slot<'c>(&self, cache: &'c mut Cache<D>, id: Uuid) -> Result<&'c mut Slot<D>, RepoError> {
        let tick = cache.advance();
        if !cache.slots.contains_key(&id)
            && let Some(slot) = cache.evicted.remove(&id)
        {
            // Still durable as evicted: every write goes through a slot.
            // It stays due; compaction then folds it from here.
            cache.slots.insert(id, slot);
        }
        if !cache.slots.contains_key(&id) {
            let loaded = self
                .store
                .load(id, self.actor.clone())?
                .ok_or(RepoError::NotFound { what: "document", id })?;
            let slot = self.slot_from(cache, loaded, tick)?;
            cache.slots.insert(id, slot);
        }
        let slot = cache.slots.get_mut(&id).expect("just inserted");
        slot.last_used = tick;
        Ok(slot)
    }

    /// A loaded document as the cache holds it; its damage is recorded.
    fn slot_from(&self, cache: &mut Cache<D>, loaded: Loaded, tick: u64) -> Result<Slot<D>, RepoError> {
        cache.damaged.extend(loaded.damaged);
        let saved = loaded.doc.get_heads();
        let weight = weight(&loaded.doc);
        Ok(Slot {
            weight,
            doc: D::read(loaded.doc)?,
            saved,
            next_seq: loaded.next_seq,
            change_records: loaded.change_records,
            change_bytes: loaded.change_bytes,
            snapshot_bytes: loaded.snapshot_bytes,
            unshrunk: 0,
            last_used: tick,
        })
    }

    /// Loads those of `ids` the cache lacks, several at a time
    /// ([`RepoConfig::workers`]); the cache's lock is held throughout, as
    /// for one load. `perf` of a bulk of 10,000 (500 drawings): 27% of it
    /// loading drawings one after another. A document that fails to load is
    /// left out: [`Self::slot`] meets the failure again and reports it, in
    /// the caller's order.
    fn load_missing(&self, cache: &mut Cache<D>, ids: &[Uuid]) {
        let mut missing = Vec::new();
        for id in ids {
            if cache.slots.contains_key(id) {
                continue;
            }
            if let Some(slot) = cache.evicted.remove(id) {
                cache.slots.insert(*id, slot);
                continue;
            }
            missing.push(*id);
        }
        missing.sort_unstable();
        missing.dedup();
        if missing.len() < 2 {
            return;
        }
        let loaded = self
            .config
            .workers
            .map(missing, |id| (id, self.store.load(id, self.actor.clone())));
        for (id, loaded) in loaded {
            if let Ok(Some(loaded)) = loaded
                && let Ok(slot) = self.slot_from(cache, loaded, cache.tick)
            {
                cache.slots.insert(id, slot);
            }
        }
    }

    /// The threads a write's per-document work is shared between, for
    /// callers with per-document work of their own (the model's bulk).
    pub fn workers(&self) -> Workers {
        self.config.workers
    }

    /// Evicts the least recently used documents beyond the cache size, and
    /// while the budget's bytes are exceeded (this repository's, or the
    /// one it shares): first documents waiting for compaction, then the
    /// least recently used, down to the one used last, whatever it weighs.
    /// Safe between operations, when every cached change is durable — never
    /// call it inside a write, whose touched documents are not yet stored.
    fn trim(&self, cache: &mut Cache<D>) {
        let excess = cache.slots.len().saturating_sub(self.config.max_cached);
        let over = cache.over_budget();
        if excess == 0 && !over {
            return;
        }
        if over {
            // Due ones are compacted from the store instead.
            cache.evicted.clear();
        }
        let mut by_age: Vec<(u64, Uuid)> = cache.slots.iter().map(|(id, s)| (s.last_used, *id)).collect();
        by_age.sort_unstable();
        by_age.pop(); // the one used last stays
        let compacting_later = self.on_compaction_due.get();
        let mut queued = false;
        for (n, (_, id)) in by_age.into_iter().enumerate() {
            if n >= excess && !cache.over_budget() {
                break;
            }
            let Some(slot) = cache.slots.remove(&id) else {
                continue;
            };
            if worth_folding(slot.change_records, slot.change_bytes, slot.snapshot_bytes)
                && compacting_later.is_some()
                && cache.evicted.len() < EVICTED_KEPT
                && !cache.over_budget()
            {
                cache.due.insert(id);
                cache.evicted.insert(id, slot);
                queued = true;
            }
        }
        if queued && let Some(hook) = compacting_later {
            hook();
        }
    }

    /// This repository's last use, on its budget's clock
    /// ([`CacheBudget::tick`]): an owner of several repositories sharing a
    /// budget sheds the one idle longest first.
    pub fn last_used(&self) -> u64 {
        self.lock().tick
    }

    /// What this repository's decoded documents weigh (estimated).
    pub fn cached_bytes(&self) -> usize {
        let cache = self.lock();
        cache.slots.bytes() + cache.evicted.bytes()
    }

    /// Drops every cached document (e.g. when idle), and those waiting for
    /// compaction; they reload on demand, and due ones are compacted from
    /// the store.
    pub fn evict_all(&self) {
        let mut cache = self.lock();
        cache.slots.clear();
        cache.evicted.clear();
    }

    /// How many documents the cache holds decoded now (not counting the
    /// at most 64 evicted ones waiting for compaction, `EVICTED_KEPT`).
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
pub struct Tx<'a, D: Document = Doc> {
    repo: &'a Repo<D>,
    cache: &'a mut Cache<D>,
    touched: HashSet<Uuid>,
    metas: Vec<(String, Vec<u8>)>,
}

impl<D: Document> Tx<'_, D> {
    /// Adds a newly created document; it is stored with the write.
    pub fn insert(&mut self, id: Uuid, doc: D) {
        let tick = self.cache.advance();
        self.touched.insert(id);
        self.cache.slots.insert(
            id,
            Slot {
                weight: weight(doc.automerge()),
                doc,
                saved: Vec::new(),
                next_seq: 0,
                change_records: 0,
                change_bytes: 0,
                snapshot_bytes: 0,
                unshrunk: 0,
                last_used: tick,
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
    use crate::store::{MemBackend, RedbBackend};
    use sitesync_model::{DrawingDoc, DrawingId, ProjectDoc, ProjectId};

    /// The sender of changes these tests receive.
    const SOMEONE: Sender = Sender {
        peer: Uuid::nil(),
        project: Uuid::nil(),
    };
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

    /// A document that arrives whole into nothing is stored as its sender
    /// saved it (here uncompressed, which this side's own save would not
    /// be); one whose heads do not match what arrived is saved here.
    #[test]
    fn a_document_arriving_whole_is_stored_as_sent() {
        use sitesync_model::automerge::transaction::Transactable as _;
        let mut sender = Automerge::new();
        sender
            .transact::<_, _, sitesync_model::automerge::AutomergeError>(|tx| {
                for n in 0..200 {
                    tx.put(
                        sitesync_model::automerge::ROOT,
                        format!("key {n}"),
                        "a value long enough to compress",
                    )?;
                }
                Ok(())
            })
            .unwrap();
        let sent = sender.save_nocompress();
        let stored = |repo: &Repo, id: Uuid| -> Vec<u8> {
            let records = repo
                .store()
                .backend()
                .scan_prefix(&crate::store::doc_prefix(id))
                .unwrap();
            assert_eq!(records.len(), 1, "one snapshot");
            crate::store::decode_record(&records[0].0, &records[0].1)
                .unwrap()
                .to_vec()
        };
        let receive = |repo: &Repo, id: Uuid, heads: Vec<ChangeHash>| {
            let arrived = Arrived {
                bytes: sent.clone(),
                heads,
            };
            repo.sync_doc(id, SOMEONE, Some(arrived), |am| {
                am.load_incremental(&sent).unwrap();
                ((), Vec::new())
            })
            .unwrap();
        };
        let repo = Repo::new(
            DocStore::new(MemBackend::default()),
            ActorId::random(),
            RepoConfig::default(),
        );
        receive(&repo, Uuid::from_u128(7), sender.get_heads());
        assert_eq!(stored(&repo, Uuid::from_u128(7)), sent, "stored as sent");
        receive(&repo, Uuid::from_u128(8), Vec::new());
        let saved = stored(&repo, Uuid::from_u128(8));
        assert_ne!(saved, sent, "heads that do not match: saved here");
        assert_eq!(saved, sender.save(), "saved here, compressed");
        repo.evict_all();
        let back = repo.read_raw(Uuid::from_u128(7), |am| am.get_heads()).unwrap();
        assert_eq!(back, Some(sender.get_heads()), "the stored bytes load");
    }

    fn create(repo: &Repo) {
        create_project(repo, P, "Plant", 1);
    }

    /// A second project, to push P out of a one-document cache.
    const OTHER: ProjectId = ProjectId::from_u128(2);

    fn create_project(repo: &Repo, id: ProjectId, name: &str, n: u128) {
        repo.write(|tx| {
            let new = NewProject {
                name: name.into(),
                code: None,
            };
            let doc = ProjectDoc::create(id, &new, &ctx(n), tx.actor())?;
            tx.insert(id.0, Doc::Project(doc));
            Ok(())
        })
        .unwrap();
    }

    /// A repository in memory with a compaction hook that counts its calls.
    fn with_counting_hook(config: RepoConfig) -> (Repo, Arc<std::sync::atomic::AtomicUsize>) {
        let repo = Repo::new(DocStore::new(MemBackend::default()), ActorId::random(), config);
        let told = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = told.clone();
        repo.set_compaction_hook(Box::new(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }));
        (repo, told)
    }

    /// Change records stored after `id`'s snapshot.
    fn records(repo: &Repo, id: ProjectId) -> usize {
        repo.store
            .load(id.0, ActorId::random())
            .unwrap()
            .unwrap()
            .change_records
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

    /// A document written a little (less than shrinks it on the write
    /// path) is shrunk once it has been idle for a sweep, never while in
    /// use, and only once; it reads the same afterwards.
    #[test]
    fn written_documents_are_shrunk_once_idle() {
        let repo = Repo::new(
            DocStore::new(MemBackend::default()),
            ActorId::random(),
            RepoConfig::default(),
        );
        create_projects(&repo, &[P]);
        assert_eq!(repo.shrink_idle(), 0, "stored whole: shrunk as it was stored");
        rename(&repo, 2);
        assert_eq!(repo.shrink_idle(), 0, "used since the last sweep");
        assert_eq!(repo.shrink_idle(), 1, "idle for a whole sweep");
        assert_eq!(repo.shrink_idle(), 0, "shrunk already");
        rename(&repo, 3);
        assert_eq!(repo.shrink_idle(), 0);
        repo.read_project(P, |_| ()).unwrap();
        assert_eq!(repo.shrink_idle(), 0, "read since the last sweep: in use");
        assert_eq!(repo.shrink_idle(), 1);
        let name = repo.read_project(P, |p| p.info().unwrap().name).unwrap();
        assert_eq!(name, "Plant 3");
    }

    #[test]
    fn writes_survive_reopening_through_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let config = RepoConfig {
            compact_at: 4,
            max_cached: 1,
            ..RepoConfig::default()
        };
        {
            let repo = Repo::new(
                DocStore::new(RedbBackend::open(dir.path()).unwrap()),
                ActorId::random(),
                config,
            );
            create(&repo);
            for n in 2..=11 {
                rename(&repo, n);
            }
        }
        let repo = Repo::new(
            DocStore::new(RedbBackend::open(dir.path()).unwrap()),
            ActorId::random(),
            config,
        );
        let name = repo.read_project(P, |p| p.info().unwrap().name).unwrap();
        assert_eq!(name, "Plant 11");
        rename(&repo, 12);
        assert!(repo.damaged().is_empty());
    }

    /// With a compaction hook, a write never compacts: the hook is told,
    /// and `compact_due` folds the records later, keeping writes made after
    /// the document became due.
    #[test]
    fn compaction_waits_for_compact_due_and_keeps_later_writes() {
        let config = RepoConfig {
            compact_at: 4,
            max_cached: 8,
            ..RepoConfig::default()
        };
        let (repo, told) = with_counting_hook(config);
        create(&repo);
        for n in 2..=6 {
            rename(&repo, n);
        }
        assert_eq!(
            records(&repo, P),
            5,
            "no write compacted inline (the creation is the snapshot)"
        );
        assert!(
            told.load(std::sync::atomic::Ordering::SeqCst) >= 1,
            "the hook was told"
        );
        assert_eq!(repo.compact_due().unwrap(), 1);
        assert_eq!(records(&repo, P), 0, "folded into the snapshot");
        assert_eq!(repo.compact_due().unwrap(), 0, "nothing is due twice");
        rename(&repo, 7);
        assert_eq!(records(&repo, P), 1);
        repo.lock().slots.clear(); // read back from the store
        let name = repo.read_project(P, |p| p.info().unwrap().name).unwrap();
        assert_eq!(name, "Plant 7", "the snapshot and the later record load together");
    }

    /// A new document is stored whole; a document whose change records are
    /// large is due however few they are, and one dropped from memory
    /// before `compact_due` runs is compacted from the store (an import or a
    /// clone evicts documents faster than the background task folds them).
    #[test]
    fn large_records_are_due_and_a_dropped_document_is_still_compacted() {
        let config = RepoConfig {
            compact_at: 1000,
            compact_bytes: 1,
            max_cached: 1,
            ..RepoConfig::default()
        };
        let (repo, told) = with_counting_hook(config);
        create(&repo);
        assert_eq!(
            records(&repo, P),
            0,
            "a new document is stored whole, as its snapshot"
        );
        rename(&repo, 2);
        assert_eq!(records(&repo, P), 1, "due, not compacted inline");
        assert!(
            told.load(std::sync::atomic::Ordering::SeqCst) >= 1,
            "the hook was told"
        );
        // Another document pushes P out of the one-document cache.
        create_project(&repo, OTHER, "Other", 3);
        assert_eq!(repo.loaded(), 1);
        repo.evict_all();
        assert_eq!(repo.compact_due().unwrap(), 1, "P, from the store");
        assert_eq!(records(&repo, P), 0, "the dropped document was compacted");
        rename(&repo, 4);
        repo.lock().slots.clear();
        let name = repo.read_project(P, |p| p.info().unwrap().name).unwrap();
        assert_eq!(
            name, "Plant 4",
            "nothing lost through the compaction from the store"
        );
    }

    /// Folding rewrites a document's whole snapshot, so a document with a
    /// long history waits until its change records weigh half its snapshot,
    /// however many there are: otherwise every write pays for the
    /// document's age. A small document is still folded at `compact_at`.
    #[test]
    fn a_large_document_is_folded_only_once_its_records_weigh_half_its_snapshot() {
        use sitesync_model::automerge::transaction::Transactable as _;
        use sitesync_model::automerge::{AutomergeError, ROOT};
        let config = RepoConfig {
            compact_at: 4,
            compact_bytes: 1 << 30,
            ..RepoConfig::default()
        };
        let repo: Repo<Automerge> =
            Repo::new(DocStore::new(MemBackend::default()), ActorId::random(), config);
        repo.set_compaction_hook(Box::new(|| {}));
        let (big, small) = (Uuid::from_u128(1), Uuid::from_u128(2));
        // Values that do not compress: the snapshot weighs what they do.
        let mut seed = 1u64;
        let mut noise = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            format!("{:016x}", seed)
        };
        let mut doc = Automerge::new();
        doc.transact::<_, _, AutomergeError>(|tx| {
            for n in 0..2000 {
                tx.put(ROOT, format!("k{n}"), noise())?;
            }
            Ok(())
        })
        .unwrap();
        repo.write(|tx| {
            tx.insert(big, doc);
            tx.insert(small, Automerge::new());
            Ok(())
        })
        .unwrap();
        let toggle = |id: Uuid, n: usize| {
            repo.sync_doc(id, SOMEONE, None, |am| {
                am.transact::<_, _, AutomergeError>(|tx| tx.put(ROOT, "hot", n as i64))
                    .unwrap();
                ((), Vec::new())
            })
            .unwrap();
        };
        let stored = |id: Uuid| repo.store.load(id, ActorId::random()).unwrap().unwrap();
        let snapshot = stored(big).snapshot_bytes;
        assert!(snapshot > 20_000, "a large snapshot: {snapshot} bytes");
        // Its first write is stored whole (the snapshot), then 4 records.
        for n in 0..5 {
            toggle(small, n);
        }
        assert_eq!(
            repo.compact_due().unwrap(),
            1,
            "the small document, at compact_at"
        );
        let mut writes = 0;
        while stored(big).change_bytes * 2 < snapshot {
            assert_eq!(
                repo.compact_due().unwrap(),
                0,
                "not folded after {writes} writes ({} of {snapshot} bytes)",
                stored(big).change_bytes
            );
            toggle(big, writes);
            writes += 1;
        }
        assert!(writes > 40, "many writes between folds: {writes}");
        assert_eq!(repo.compact_due().unwrap(), 1, "folded once worth it");
        let after = stored(big);
        assert_eq!(after.change_records, 0);
        assert!(
            after.snapshot_bytes >= snapshot,
            "the new snapshot holds the writes"
        );
        repo.evict_all();
        let hot = repo
            .read_raw(big, |am| {
                use sitesync_model::automerge::ReadDoc as _;
                am.get(ROOT, "hot").unwrap().and_then(|(v, _)| v.as_i64())
            })
            .unwrap();
        assert_eq!(
            hot,
            Some(Some(writes as i64 - 1)),
            "the last write survives the fold"
        );
    }

    /// A document evicted with a change record, far below both compaction
    /// thresholds, is due: it waits decoded, comes back from there when
    /// asked for, and is folded with whatever was written to it since.
    #[test]
    fn an_evicted_document_with_change_records_is_folded_from_memory() {
        let config = RepoConfig {
            compact_at: 1000,
            compact_bytes: 1 << 30,
            max_cached: 1,
            ..RepoConfig::default()
        };
        let (repo, told) = with_counting_hook(config);
        create(&repo);
        rename(&repo, 2);
        assert_eq!(records(&repo, P), 1);
        assert_eq!(
            told.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "not due by size or count"
        );
        create_project(&repo, OTHER, "Other", 3);
        assert!(repo.lock().evicted.contains_key(&P.0), "P waits, decoded");
        assert_eq!(
            told.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "the hook was told"
        );

        // Asked for while waiting: back from memory, still due.
        rename(&repo, 4);
        assert!(repo.lock().slots.contains_key(&P.0));
        assert!(repo.lock().due.contains(&P.0));
        assert_eq!(records(&repo, P), 2);
        assert_eq!(repo.compact_due().unwrap(), 1);
        assert_eq!(records(&repo, P), 0, "both records folded");

        // Evicted (by reading the other document) and folded from the
        // queue; the other, with no change records, is not queued.
        rename(&repo, 5);
        repo.read_project(OTHER, |_| ()).unwrap();
        assert_eq!(repo.lock().evicted.keys().collect::<Vec<_>>(), [&P.0]);
        assert_eq!(repo.compact_due().unwrap(), 1);
        assert!(repo.lock().evicted.is_empty());
        assert_eq!(records(&repo, P), 0);
        repo.evict_all();
        let name = repo.read_project(P, |p| p.info().unwrap().name).unwrap();
        assert_eq!(name, "Plant 5", "nothing lost through the folds");
    }

    #[test]
    fn memory_holds_at_most_max_cached_documents() {
        let config = RepoConfig {
            compact_at: 64,
            max_cached: 2,
            ..RepoConfig::default()
        };
        let repo = Repo::new(DocStore::new(MemBackend::default()), ActorId::random(), config);
        let ids: Vec<ProjectId> = (10..15).map(ProjectId::from_u128).collect();
        create_projects(&repo, &ids);
        assert_eq!(repo.loaded(), 2, "least recently used documents were evicted");
        for id in &ids {
            let name = repo.read_project(*id, |p| p.info().unwrap().name).unwrap();
            assert_eq!(name, format!("P{id}"), "evicted documents reload from the store");
        }
        assert_eq!(repo.loaded(), 2, "reads are bounded too");
        for id in &ids {
            // A sync message that brings nothing new.
            let (_, heads) = repo.sync_doc(id.0, SOMEONE, None, |_| ((), Vec::new())).unwrap();
            assert!(!heads.is_empty());
        }
        assert_eq!(repo.loaded(), 2, "so are sync steps that change nothing");
        let (_, heads) = repo
            .sync_doc(Uuid::from_u128(999), SOMEONE, None, |_| ((), Vec::new()))
            .unwrap();
        assert!(heads.is_empty());
        assert!(
            repo.doc_ids().unwrap().len() == ids.len(),
            "an empty document is not stored"
        );
    }

    /// Creates projects `ids` in `repo`, one write each.
    fn create_projects(repo: &Repo, ids: &[ProjectId]) {
        for id in ids {
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
    }

    /// Memory is bounded by bytes as well as by count: documents beyond
    /// the budget are evicted, least recently used first, and one heavier
    /// than the whole budget is still served (it is the one in use).
    #[test]
    fn memory_holds_at_most_max_cached_bytes() {
        let probe = Repo::new(
            DocStore::new(MemBackend::default()),
            ActorId::random(),
            RepoConfig::default(),
        );
        create_projects(&probe, &[ProjectId::from_u128(1)]);
        let one = probe.cached_bytes();
        assert!(one > 0, "a cached document weighs something");

        let config = RepoConfig {
            max_cached_bytes: one * 5 / 2,
            ..RepoConfig::default()
        };
        let repo = Repo::new(DocStore::new(MemBackend::default()), ActorId::random(), config);
        let ids: Vec<ProjectId> = (10..15).map(ProjectId::from_u128).collect();
        create_projects(&repo, &ids);
        assert_eq!(repo.loaded(), 2, "two fit in two and a half documents' bytes");
        assert!(repo.cached_bytes() <= config.max_cached_bytes);
        for id in &ids {
            let name = repo.read_project(*id, |p| p.info().unwrap().name).unwrap();
            assert_eq!(name, format!("P{id}"), "evicted documents reload from the store");
        }
        assert_eq!(repo.loaded(), 2, "reads are bounded too");

        let tiny = Repo::new(
            DocStore::new(MemBackend::default()),
            ActorId::random(),
            RepoConfig {
                max_cached_bytes: 1,
                ..RepoConfig::default()
            },
        );
        create_projects(&tiny, &ids);
        assert_eq!(tiny.loaded(), 1, "the document used last stays");
        let name = tiny.read_project(ids[0], |p| p.info().unwrap().name).unwrap();
        assert_eq!(name, format!("P{}", ids[0]));
    }

    /// Repositories sharing a budget bound memory together: the one whose
    /// use goes over sheds its own least recently used documents, and the
    /// budget's clock tells which repository was used last.
    #[test]
    fn repositories_sharing_a_budget_bound_memory_together() {
        let probe = Repo::new(
            DocStore::new(MemBackend::default()),
            ActorId::random(),
            RepoConfig::default(),
        );
        create_projects(&probe, &[ProjectId::from_u128(1)]);
        let one = probe.cached_bytes();
        let budget = CacheBudget::new(one * 9 / 2);
        let open = || {
            Repo::sharing(
                DocStore::new(MemBackend::default()),
                ActorId::random(),
                RepoConfig::default(),
                budget.clone(),
            )
        };
        let (a, b) = (open(), open());
        create_projects(&a, &(10..13).map(ProjectId::from_u128).collect::<Vec<_>>());
        assert_eq!((a.loaded(), budget.used()), (3, a.cached_bytes()));
        create_projects(&b, &(20..23).map(ProjectId::from_u128).collect::<Vec<_>>());
        assert_eq!(a.loaded(), 3, "an idle repository keeps what it holds");
        assert_eq!(b.loaded(), 1, "the one that went over shed its own");
        assert!(budget.used() <= budget.max_bytes());
        assert_eq!(budget.used(), a.cached_bytes() + b.cached_bytes());
        assert!(a.last_used() < b.last_used());

        // Its owner sheds the idle one; the other then keeps more.
        a.evict_all();
        assert_eq!(budget.used(), b.cached_bytes());
        for n in 20..23 {
            b.read_project(ProjectId::from_u128(n), |_| ()).unwrap();
        }
        assert_eq!(b.loaded(), 3);
        drop(b);
        assert_eq!(budget.used(), 0, "a dropped repository gives its share back");
    }

    /// A write or a read over many documents loads those the cache lacks
    /// on several threads, hands them out in the order asked, and stores
    /// every change in one batch: a reopened store has them all.
    #[test]
    fn many_drawings_load_side_by_side_and_come_back_in_the_order_asked() {
        use sitesync_model::automerge::{ROOT, ReadDoc, transaction::Transactable};
        let dir = tempfile::tempdir().unwrap();
        let config = RepoConfig {
            max_cached: 2,
            workers: Workers::new(3),
            ..RepoConfig::default()
        };
        let open = || {
            Repo::new(
                DocStore::new(RedbBackend::open(dir.path()).unwrap()),
                ActorId::random(),
                config,
            )
        };
        let ids: Vec<DrawingId> = (20..28).map(DrawingId::from_u128).collect();
        let asked: Vec<DrawingId> = [5, 0, 7, 3, 3, 1].iter().map(|&i| ids[i]).collect();
        let once: Vec<DrawingId> = [5, 0, 7, 3, 1].iter().map(|&i| ids[i]).collect();
        let mark = |d: &DrawingDoc| match d.automerge().get(ROOT, "mark").unwrap() {
            Some((v, _)) => v.as_i64(),
            None => None,
        };
        {
            let repo = open();
            for (n, id) in ids.iter().enumerate() {
                repo.write(|tx| {
                    let doc = DrawingDoc::create(P, *id, &ctx(n as u128), tx.actor())?;
                    tx.insert(id.0, Doc::Drawing(doc));
                    Ok(())
                })
                .unwrap();
            }
            assert_eq!(repo.loaded(), 2, "the rest were evicted");
            let got = repo
                .write(|tx| {
                    let docs = tx.drawings(&asked)?;
                    let mut got = Vec::new();
                    for (k, d) in docs.into_iter().enumerate() {
                        got.push(d.drawing_id()?);
                        let mut t = d.automerge_mut().transaction();
                        t.put(ROOT, "mark", k as i64).unwrap();
                        t.commit();
                    }
                    Ok(got)
                })
                .unwrap();
            assert_eq!(got, once, "in the order asked, each once");
            let missing = repo.read_drawings(vec![(ids[0], ()), (DrawingId::from_u128(99), ())], |_, ()| ());
            assert!(
                matches!(missing, Err(RepoError::NotFound { .. })),
                "{:?}",
                missing.err()
            );
            assert_eq!(repo.loaded(), 2, "reads trim too");
        }
        let repo = open();
        let items: Vec<(DrawingId, usize)> = once.iter().copied().zip(0..).collect();
        let read = repo
            .read_drawings(items, |d, k| (d.drawing_id().unwrap(), k, mark(d)))
            .unwrap();
        let marks: Vec<(DrawingId, usize, Option<i64>)> = once
            .iter()
            .copied()
            .zip(0..)
            .map(|(d, k)| (d, k, Some(k as i64)))
            .collect();
        assert_eq!(read, marks, "every change durable, read back in order");
        let untouched = repo.read_drawings(vec![(ids[2], ())], |d, ()| mark(d)).unwrap();
        assert_eq!(untouched, [None]);
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
