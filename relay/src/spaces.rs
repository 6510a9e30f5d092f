//! One space per organisation: the relay keeps each organisation's
//! documents in a store of their own (`<data-dir>/spaces/<org>/`), with its
//! own repository, cache and change feed. Organisations share no namespace
//! of project or document ids, so one that learns another's ids (from a
//! screenshot, an export file) can neither claim them first nor learn
//! anything from the answer: the same id in its own space is simply its
//! own, empty document.
//!
//! A connection's space is opened once its Hello is admitted
//! ([`sitesync_sync::link::Documents::PerOrg`]); spaces open lazily and
//! stay open. At start every existing space is opened, so
//! `sitesync_relay_documents_held` counts them all.
//!
//! Stores written by earlier relays kept every organisation in one
//! `<data-dir>/store/`; [`migrate_shared_store`] splits it once, by the
//! organisation each project was bound to, and renames it
//! `store.before-spaces`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::gauge::Gauge;
use sitesync_sync::cache::CacheBudget;
use sitesync_sync::host::{RepoHost, binding_records, project_record};
use sitesync_sync::link::OrgDocuments;
use sitesync_sync::model::automerge::sync::{Message as SyncMessage, State as SyncState};
use sitesync_sync::model::automerge::{ActorId, Automerge, ChangeHash};
use sitesync_sync::rate::Rate;
use sitesync_sync::repo::Subscriber;
use sitesync_sync::session::{Host, HostError, Incoming};
use sitesync_sync::{
    Arrived, DocStore, Persisted, RedbBackend, Repo, RepoConfig, RepoError, Sender, StoreError,
};
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::orgs::valid_name;

/// Capacity of a space's change notification channel; a connection further
/// behind than this re-summarises instead of holding the others up.
const CHANGE_BACKLOG: usize = 4096;

/// Why a space could not be opened or the old store split.
#[derive(Debug, thiserror::Error)]
pub enum SpaceError {
    #[error("organization name {org:?} cannot name a space")]
    BadName { org: String },
    #[error("cannot open the store in {dir}: {source}")]
    Store { dir: String, source: StoreError },
    #[error("splitting {dir} by organisation: {detail}")]
    Migration { dir: String, detail: String },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// What one organisation may keep on the relay. Past either limit, a
/// device's change that would add a document (or any change, past the
/// bytes) is refused: its connection closes with `quota_exceeded`, and
/// nothing of the message is stored. Changes to documents already held go
/// on while only the document count is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    pub max_documents: usize,
    /// The organisation's store on disk, in bytes.
    pub max_bytes: u64,
    /// Frames a second the organisation's devices may send, together
    /// (bursts of twice as many). Past it the relay paces them: it waits
    /// before reading each next frame, so their sockets slow down and
    /// nothing is dropped.
    pub max_messages_per_second: u32,
}

impl Default for Quota {
    /// A hundred projects of 500,000 components (10,000 documents each),
    /// 64 GiB, and 10,000 frames a second (a 500,000-component clone
    /// sends under 1,000 a second).
    fn default() -> Self {
        Self {
            max_documents: 1_000_000,
            max_bytes: 64 << 30,
            max_messages_per_second: 10_000,
        }
    }
}

/// A space's subscription to its repository's change feed: every
/// durable change goes to every connection of the organisation (each
/// offers it to its device unless the device sent it), and a document new
/// here is counted.
struct Forward {
    changes: broadcast::Sender<Uuid>,
    /// `sitesync_relay_documents`, over every space.
    held: Gauge<i64, AtomicI64>,
    /// This space's documents.
    documents: Arc<AtomicUsize>,
}

impl Subscriber for Forward {
    fn persisted(&self, persisted: &[Persisted]) {
        for p in persisted {
            if p.before.is_empty() {
                self.held.inc();
                self.documents.fetch_add(1, Ordering::Relaxed);
            }
            let _ = self.changes.send(p.id);
        }
    }
}

/// One organisation's documents on the relay.
pub struct Space {
    pub host: RepoHost<Automerge>,
    /// Ids of this organisation's documents whose changes just became
    /// durable; every connection of the organisation listens.
    pub changes: broadcast::Sender<Uuid>,
    /// Documents held, for the quota.
    documents: Arc<AtomicUsize>,
    quota: Quota,
    /// The organisation's frames a second.
    rate: Mutex<Rate>,
}

impl Space {
    /// Documents held.
    pub fn documents(&self) -> usize {
        self.documents.load(Ordering::Relaxed)
    }

    /// Counts one frame from a device of this organisation at `now_ms`;
    /// how long (ms) to wait before handling it, to keep within
    /// [`Quota::max_messages_per_second`] (0 within it).
    pub fn pace(&self, now_ms: i64) -> u64 {
        self.rate.lock().unwrap_or_else(|p| p.into_inner()).pace(now_ms)
    }
}

/// A connection's host: the space's documents, within its quota.
struct SpaceHost(Arc<Space>);

impl SpaceHost {
    fn within_quota(&self, doc: Uuid) -> Result<(), HostError> {
        let space = &self.0;
        let bytes = space.host.repo().store().size_on_disk();
        if bytes >= space.quota.max_bytes {
            return Err(HostError::Quota {
                detail: format!(
                    "the organisation's store holds {bytes} bytes on the relay, its quota of {}",
                    space.quota.max_bytes
                ),
            });
        }
        let held = space.documents();
        if held >= space.quota.max_documents && space.host.project_of(doc)?.is_none() {
            return Err(HostError::Quota {
                detail: format!(
                    "the organisation holds {held} documents on the relay, its quota of {}; document {doc} is not stored",
                    space.quota.max_documents
                ),
            });
        }
        Ok(())
    }
}

impl Host for SpaceHost {
    fn projects(&self) -> Result<Vec<Uuid>, HostError> {
        self.0.host.projects()
    }
    fn may_share(&self, org: &str, project: Uuid) -> Result<bool, HostError> {
        self.0.host.may_share(org, project)
    }
    fn holds(&self, org: &str, project: Uuid) -> Result<bool, HostError> {
        self.0.host.holds(org, project)
    }
    fn summary(&self, project: Uuid) -> Result<Vec<(Uuid, Vec<ChangeHash>)>, HostError> {
        self.0.host.summary(project)
    }
    fn project_of(&self, doc: Uuid) -> Result<Option<Uuid>, HostError> {
        self.0.host.project_of(doc)
    }
    fn heads(&self, doc: Uuid) -> Result<Vec<ChangeHash>, HostError> {
        self.0.host.heads(doc)
    }
    fn generate(&self, doc: Uuid, state: &mut SyncState) -> Result<Option<SyncMessage>, HostError> {
        self.0.host.generate(doc, state)
    }
    fn receive(
        &self,
        ctx: &Incoming<'_>,
        state: &mut SyncState,
        message: SyncMessage,
    ) -> Result<Option<Vec<ChangeHash>>, HostError> {
        // A message that brings no change (a bloom filter, heads) costs
        // nothing to keep, and must flow for devices to catch up.
        if !message.changes.is_empty() {
            self.within_quota(ctx.doc)?;
        }
        self.0.host.receive(ctx, state, message)
    }
    fn load_state(&self, peer: Uuid, doc: Uuid) -> Result<Option<Vec<u8>>, HostError> {
        self.0.host.load_state(peer, doc)
    }
}

/// Every organisation's space.
pub struct Spaces {
    dir: PathBuf,
    max_cached: usize,
    /// Shared by every space's repository: memory for decoded documents is
    /// bounded for the relay, not per organisation.
    budget: Arc<CacheBudget>,
    quota: Quota,
    open: Mutex<HashMap<String, Arc<Space>>>,
    /// Documents held over all spaces (`sitesync_relay_documents_held`).
    held: Gauge<i64, AtomicI64>,
}

impl Spaces {
    /// Opens every space under `<data_dir>/spaces`, splitting a store of
    /// an earlier relay first. `max_cached`: documents kept decoded, per
    /// space; `budget`: the bytes they may take, all spaces together.
    pub fn open(
        data_dir: &Path,
        max_cached: usize,
        budget: Arc<CacheBudget>,
        quota: Quota,
        held: Gauge<i64, AtomicI64>,
    ) -> Result<Self, SpaceError> {
        let spaces = Self {
            dir: data_dir.join("spaces"),
            max_cached,
            budget,
            quota,
            open: Mutex::new(HashMap::new()),
            held,
        };
        std::fs::create_dir_all(&spaces.dir).map_err(|source| SpaceError::Io {
            path: spaces.dir.display().to_string(),
            source,
        })?;
        migrate_shared_store(data_dir, &spaces)?;
        let entries = std::fs::read_dir(&spaces.dir).map_err(|source| SpaceError::Io {
            path: spaces.dir.display().to_string(),
            source,
        })?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if valid_name(&name) {
                spaces.get(&name)?;
            }
        }
        Ok(spaces)
    }

    /// `org`'s space, opened (and created) on first use.
    pub fn get(&self, org: &str) -> Result<Arc<Space>, SpaceError> {
        if !valid_name(org) {
            return Err(SpaceError::BadName { org: org.into() });
        }
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(space) = open.get(org) {
            return Ok(space.clone());
        }
        let dir = self.dir.join(org);
        let store_err = |source| SpaceError::Store {
            dir: dir.display().to_string(),
            source,
        };
        let store = DocStore::new(RedbBackend::open(&dir).map_err(store_err)?);
        let held_now = store
            .meta_names(sitesync_sync::keys::BINDING)
            .map_err(store_err)?
            .len();
        let repo = Arc::new(Repo::sharing(
            store,
            ActorId::random(),
            RepoConfig {
                max_cached: self.max_cached,
                ..RepoConfig::default()
            },
            self.budget.clone(),
        ));
        let (changes, _) = broadcast::channel(CHANGE_BACKLOG);
        // Counted once here, then followed write by write: a scrape of
        // `/metrics` reads no store record.
        self.held.inc_by(held_now as i64);
        let documents = Arc::new(AtomicUsize::new(held_now));
        repo.subscribe(Arc::new(Forward {
            changes: changes.clone(),
            held: self.held.clone(),
            documents: documents.clone(),
        }));
        // Compaction runs as a task on the relay's runtime; a space opened
        // outside one (unit tests) compacts inline, on the write path.
        if tokio::runtime::Handle::try_current().is_ok() {
            sitesync_sync::repo::compact_in_background(&repo);
        }
        let space = Arc::new(Space {
            host: RepoHost::new(repo),
            changes,
            documents,
            quota: self.quota,
            rate: Mutex::new(Rate::new(
                self.quota.max_messages_per_second,
                self.quota.max_messages_per_second.saturating_mul(2),
                sitesync_sync::link::now_ms(),
            )),
        });
        open.insert(org.to_owned(), space.clone());
        Ok(space)
    }

    /// The memory budget every space's documents share.
    pub fn budget(&self) -> &CacheBudget {
        &self.budget
    }

    /// While the spaces' documents weigh more than their budget, empties
    /// the space used longest ago, then the next; never the one used last
    /// (it sheds its own documents as it goes over). Returns how many
    /// were emptied. A space whose write went over evicts only its own
    /// documents, so without this an idle organisation would keep its
    /// share while active ones reload theirs on every change.
    pub fn shed_idle(&self) -> usize {
        if !self.budget.over() {
            return 0;
        }
        let mut by_use: Vec<(u64, Arc<Space>)> = self
            .all()
            .into_iter()
            .map(|(_, space)| (space.host.repo().last_used(), space))
            .collect();
        by_use.sort_by_key(|(used, _)| *used);
        by_use.pop();
        let mut shed = 0;
        for (_, space) in by_use {
            if !self.budget.over() {
                break;
            }
            if space.host.repo().cached_bytes() > 0 {
                space.host.repo().evict_all();
                shed += 1;
            }
        }
        shed
    }

    /// Every open space, for flushing at shutdown.
    pub fn all(&self) -> Vec<(String, Arc<Space>)> {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

impl OrgDocuments for Spaces {
    fn open(&self, org: &str) -> Result<(Arc<dyn Host + Send + Sync>, broadcast::Receiver<Uuid>), String> {
        let space = self.get(org).map_err(|e| {
            tracing::error!(error = %e, org, "cannot open the organisation's documents");
            format!("the relay cannot open organisation {org:?}'s documents; retry later")
        })?;
        let changes = space.changes.subscribe();
        Ok((Arc::new(SpaceHost(space)), changes))
    }
}

/// Splits `<data_dir>/store` (every organisation in one store, as relays
/// before spaces kept it) into one space per organisation: each project
/// bound to an organisation goes, with its documents and their bindings,
/// into that organisation's space. Sync states are not carried over (a
/// device's next connection re-syncs what differs). Projects no
/// organisation claimed stay behind. The old store is then renamed
/// `store.before-spaces`, so this runs once, and can be deleted.
pub fn migrate_shared_store(data_dir: &Path, spaces: &Spaces) -> Result<(), SpaceError> {
    let old_dir = data_dir.join("store");
    if !old_dir.exists() {
        return Ok(());
    }
    let failed = |detail: String| SpaceError::Migration {
        dir: old_dir.display().to_string(),
        detail,
    };
    let store = DocStore::new(RedbBackend::open(&old_dir).map_err(|e| failed(e.to_string()))?);
    let old: Repo<Automerge> = Repo::new(store, ActorId::random(), RepoConfig::default());
    let old_host = RepoHost::new(Arc::new(old));
    let projects = old_host.projects().map_err(|e| failed(e.to_string()))?;
    let mut moved = (0usize, 0usize);
    for project in projects {
        let org = old_host
            .project_org(project)
            .map_err(|e| failed(e.to_string()))?
            .unwrap_or_default();
        if org.is_empty() || !valid_name(&org) {
            tracing::warn!(%project, "project claimed by no organisation; left in the old store");
            continue;
        }
        let space = spaces.get(&org)?;
        let docs = old_host.summary(project).map_err(|e| failed(e.to_string()))?;
        for (doc, _) in docs {
            copy_doc(old_host.repo(), space.host.repo(), project, doc, &org)
                .map_err(|e| failed(e.to_string()))?;
            moved.1 += 1;
        }
        moved.0 += 1;
    }
    old_host.repo().flush().map_err(|e| failed(e.to_string()))?;
    drop(old_host);
    let kept = data_dir.join("store.before-spaces");
    std::fs::rename(&old_dir, &kept).map_err(|source| SpaceError::Io {
        path: old_dir.display().to_string(),
        source,
    })?;
    tracing::info!(
        projects = moved.0,
        documents = moved.1,
        kept = %kept.display(),
        "split the relay's store into one space per organisation"
    );
    Ok(())
}

/// Copies `doc` of `project` from `from` into `to` (organisation `org`'s
/// space), whole, with its bindings.
fn copy_doc(
    from: &Repo<Automerge>,
    to: &Repo<Automerge>,
    project: Uuid,
    doc: Uuid,
    org: &str,
) -> Result<(), RepoError> {
    let Some((bytes, heads)) = from.read_raw(doc, |am| (am.save(), am.get_heads()))? else {
        return Ok(());
    };
    let mut records = binding_records(project, doc);
    records.push(project_record(project, org));
    let arrived = Arrived {
        bytes: bytes.clone(),
        heads,
    };
    // Copied, not sent: no peer sent it.
    let from = Sender {
        peer: Uuid::nil(),
        project,
    };
    let ((), _) = to.sync_doc(doc, from, Some(arrived), |am| {
        if let Err(e) = am.load_incremental(&bytes) {
            tracing::error!(%doc, error = %e, "a document of the old store does not load");
        }
        ((), records)
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use sitesync_sync::model::automerge::transaction::Transactable as _;
    use sitesync_sync::model::automerge::{ChangeHash, ROOT, ReadDoc as _};

    use super::*;
    use crate::{Relay, RelayConfig};

    /// Writes a document of `project` bound as a relay before spaces
    /// bound it (to `org`), in the one shared store; returns its heads.
    fn old_doc(repo: &Repo<Automerge>, project: Uuid, doc: Uuid, org: &str) -> Vec<ChangeHash> {
        let mut records = binding_records(project, doc);
        records.push(project_record(project, org));
        let ((), heads) = repo
            .sync_doc(
                doc,
                Sender {
                    peer: Uuid::nil(),
                    project,
                },
                None,
                |am| {
                    let mut tx = am.transaction();
                    tx.put(ROOT, "org", org).unwrap();
                    tx.commit();
                    ((), records)
                },
            )
            .unwrap();
        heads
    }

    fn heads(relay: &Relay, org: &str, doc: Uuid) -> Option<Vec<ChangeHash>> {
        relay.spaces().get(org).unwrap().host.repo().heads(doc).unwrap()
    }

    /// A store of a relay from before spaces is split once, by the
    /// organisation each project was bound to; the relay keeps its id.
    #[test]
    fn a_shared_store_is_split_by_organisation_once() {
        let dir = tempfile::tempdir().unwrap();
        let (p1, p2) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let (d1, d2) = (Uuid::from_u128(11), Uuid::from_u128(22));
        let (device, expected) = {
            let store = DocStore::new(RedbBackend::open(&dir.path().join("store")).unwrap());
            let device = store.device_id().unwrap();
            let repo = Repo::new(store, ActorId::random(), RepoConfig::default());
            let expected = [
                (p1, old_doc(&repo, p1, p1, "acme")),
                (d1, old_doc(&repo, p1, d1, "acme")),
                (p2, old_doc(&repo, p2, p2, "globex")),
                (d2, old_doc(&repo, p2, d2, "globex")),
            ];
            repo.flush().unwrap();
            (device, expected)
        };
        for _ in 0..2 {
            let relay = Relay::open(dir.path(), RelayConfig::default()).unwrap();
            assert_eq!(relay.device, device);
            for (doc, want) in &expected {
                let (owner, other) = if [p1, d1].contains(doc) {
                    ("acme", "globex")
                } else {
                    ("globex", "acme")
                };
                assert_eq!(
                    heads(&relay, owner, *doc).as_ref(),
                    Some(want),
                    "{doc} in {owner}"
                );
                assert_eq!(heads(&relay, other, *doc), None, "{doc} in {other}");
            }
            let acme = relay.spaces().get("acme").unwrap();
            assert_eq!(acme.host.project_of(d1).unwrap(), Some(p1));
            assert_eq!(acme.host.project_org(p1).unwrap().as_deref(), Some("acme"));
            assert_eq!(relay.metrics.documents.get(), 4);
            assert!(!dir.path().join("store").exists());
            assert!(dir.path().join("store.before-spaces").exists());
        }
    }

    /// A change of its own making for `doc`, as one sync message.
    fn change_for(doc: u128) -> SyncMessage {
        use sitesync_sync::model::automerge::Automerge;
        use sitesync_sync::model::automerge::sync::SyncDoc as _;
        let mut am = Automerge::new();
        let mut tx = am.transaction();
        tx.put(ROOT, "n", doc as i64).unwrap();
        tx.commit();
        let mut message = am.generate_sync_message(&mut SyncState::new()).unwrap();
        message.changes = vec![am.save()].into();
        message
    }

    fn receive(host: &dyn Host, doc: u128) -> Result<Option<Vec<ChangeHash>>, HostError> {
        let ctx = Incoming {
            org: "acme",
            peer: Uuid::from_u128(99),
            project: Uuid::from_u128(1),
            doc: Uuid::from_u128(doc),
        };
        host.receive(&ctx, &mut SyncState::new(), change_for(doc))
    }

    /// The spaces' documents share one memory budget: the organisation
    /// whose change goes over evicts its own, and the relay then empties
    /// the organisations idle longest until the total is back under.
    #[test]
    fn idle_organisations_give_their_memory_back_first() {
        let dir = tempfile::tempdir().unwrap();
        let open = |name: &str, budget| {
            Spaces::open(
                &dir.path().join(name),
                16,
                budget,
                Quota::default(),
                Gauge::default(),
            )
            .unwrap()
        };
        let probe = open("probe", CacheBudget::new(1 << 30));
        let (host, _) = OrgDocuments::open(&probe, "acme").unwrap();
        receive(host.as_ref(), 1).unwrap();
        let one = probe.budget().used();
        assert!(one > 0);

        let spaces = open("relay", CacheBudget::new(one * 5 / 2));
        let (acme, _) = OrgDocuments::open(&spaces, "acme").unwrap();
        let (globex, _) = OrgDocuments::open(&spaces, "globex").unwrap();
        receive(acme.as_ref(), 1).unwrap();
        receive(acme.as_ref(), 2).unwrap();
        assert_eq!(spaces.shed_idle(), 0, "within the budget nothing is shed");
        receive(globex.as_ref(), 3).unwrap();
        assert!(spaces.budget().over(), "acme's two and globex's one");
        let repo = |org: &str| spaces.get(org).unwrap().host.repo().clone();
        assert_eq!(repo("globex").loaded(), 1, "the one in use stays");

        assert_eq!(spaces.shed_idle(), 1);
        assert_eq!(repo("acme").cached_bytes(), 0, "the idle one was emptied");
        assert_eq!(spaces.budget().used(), repo("globex").cached_bytes());
        assert!(!spaces.budget().over());
        // What was shed reloads on use.
        assert!(repo("acme").heads(Uuid::from_u128(2)).unwrap().is_some());
    }

    /// Past its document quota an organisation keeps no new document, but
    /// its documents still take changes; past its bytes, nothing does.
    #[test]
    fn an_organisation_keeps_within_its_quota() {
        let dir = tempfile::tempdir().unwrap();
        let quota = Quota {
            max_documents: 2,
            max_bytes: u64::MAX,
            ..Quota::default()
        };
        let spaces =
            Spaces::open(dir.path(), 16, CacheBudget::new(1 << 30), quota, Gauge::default()).unwrap();
        let (host, _) = OrgDocuments::open(&spaces, "acme").unwrap();
        receive(host.as_ref(), 1).unwrap();
        receive(host.as_ref(), 2).unwrap();
        let refused = receive(host.as_ref(), 3).unwrap_err();
        assert!(matches!(refused, HostError::Quota { .. }), "{refused}");
        assert!(refused.to_string().contains("quota of 2"), "{refused}");
        assert_eq!(
            host.heads(Uuid::from_u128(3)).unwrap(),
            Vec::new(),
            "stored past the quota"
        );
        assert!(receive(host.as_ref(), 2).is_ok(), "a held document takes changes");
        // Another organisation has its own count.
        let (other, _) = OrgDocuments::open(&spaces, "globex").unwrap();
        let ctx = Incoming {
            org: "globex",
            peer: Uuid::from_u128(99),
            project: Uuid::from_u128(1),
            doc: Uuid::from_u128(3),
        };
        other.receive(&ctx, &mut SyncState::new(), change_for(3)).unwrap();

        let tiny = Quota {
            max_documents: 100,
            max_bytes: 1,
            ..Quota::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let spaces = Spaces::open(dir.path(), 16, CacheBudget::new(1 << 30), tiny, Gauge::default()).unwrap();
        let (host, _) = OrgDocuments::open(&spaces, "acme").unwrap();
        let refused = receive(host.as_ref(), 1).unwrap_err();
        assert!(refused.to_string().contains("bytes"), "{refused}");
    }

    /// An organisation's devices together get their burst, then are
    /// paced to the rate; another organisation is not slowed.
    #[test]
    fn an_organisations_frames_are_paced_to_its_rate() {
        let dir = tempfile::tempdir().unwrap();
        let quota = Quota {
            max_messages_per_second: 100,
            ..Quota::default()
        };
        let spaces =
            Spaces::open(dir.path(), 16, CacheBudget::new(1 << 30), quota, Gauge::default()).unwrap();
        let (acme, globex) = (spaces.get("acme").unwrap(), spaces.get("globex").unwrap());
        let t = sitesync_sync::link::now_ms();
        assert!((0..200).all(|_| acme.pace(t) == 0), "the burst is twice the rate");
        assert_eq!(acme.pace(t), 10, "then a hundredth of a second a frame");
        assert_eq!(globex.pace(t), 0);
    }

    /// Two organisations may hold the same ids: each its own document.
    #[test]
    fn organisations_share_no_ids() {
        let dir = tempfile::tempdir().unwrap();
        let relay = Relay::open(dir.path(), RelayConfig::default()).unwrap();
        let id = Uuid::from_u128(5);
        for org in ["acme", "globex"] {
            let space = relay.spaces().get(org).unwrap();
            old_doc(space.host.repo(), id, id, org);
        }
        for org in ["acme", "globex"] {
            let space = relay.spaces().get(org).unwrap();
            let owner = space.host.repo().read_raw(id, |am| {
                am.get(ROOT, "org")
                    .unwrap()
                    .unwrap()
                    .0
                    .as_str()
                    .map(str::to_owned)
            });
            assert_eq!(owner.unwrap().flatten().as_deref(), Some(org));
        }
        assert!(matches!(
            relay.spaces().get("../x"),
            Err(SpaceError::BadName { .. })
        ));
    }
}
