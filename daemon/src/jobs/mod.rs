//! Long work — imports and exports — as jobs a user can watch live and that
//! survive a restart.
//!
//! A job's kind declares its stages up front. Progress (stage, current,
//! total, message) only moves forward: the stage never goes back and
//! 0 ≤ current ≤ total ([`Job::advance`] refuses anything else). A job is
//! persisted — metadata record `job/<id>` in the store, flushed — when it is
//! created, when its state or stage changes, and with its progress at most
//! once per `event_interval`; the same moments publish a `job.updated`
//! event, so a fast job cannot flood the stream while `GET /v1/jobs/{id}`
//! still shows live progress. At start, a job the previous run left queued
//! or running becomes `interrupted` with its last persisted progress.
//! Finished jobs and their files (`<data-dir>/jobs/<id>/`) are removed
//! `retention` after they finished.
//!
//! Jobs run one at a time on a blocking thread: the work is CPU- and
//! IO-bound and a field laptop has few cores.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sitesync_model::{ProjectId, Timestamp};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::paging::{Page, Paged};
use crate::service::Service;

/// Metadata record prefix of persisted jobs.
const JOB_META: &str = sitesync_sync::keys::JOB;

/// What a job does; each kind declares its stages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    Import,
    Export,
}

impl JobKind {
    /// The stages a job of this kind passes through, in order (a job may
    /// skip a stage, never go back).
    pub fn stages(self) -> &'static [&'static str] {
        match self {
            // reading: the whole file is parsed once (current/total in
            // bytes) so a malformed file fails before anything is written;
            // importing: rows planned and written in batches.
            Self::Import => &["reading", "importing"],
            // writing: rows streamed to the file; saving: an XLSX is
            // assembled from its parts.
            Self::Export => &["writing", "saving"],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Completed,
    /// The work as a whole could not be done (e.g. an unreadable file).
    Failed,
    /// The daemon stopped while the job was queued or running.
    Interrupted,
}

impl JobState {
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Interrupted)
    }
}

/// A job as `GET /v1/jobs/{id}` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Job {
    pub id: Uuid,
    pub kind: JobKind,
    pub project_id: Option<ProjectId>,
    pub state: JobState,
    /// The kind's declared stages, so a UI can draw them all up front.
    pub stages: Vec<String>,
    /// The current stage; null until the job starts its first.
    pub stage: Option<String>,
    pub current: u64,
    pub total: u64,
    pub message: Option<String>,
    /// The outcome; an import sets `operation_id` here as soon as it starts
    /// writing, so an interrupted import can still be undone.
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// Progress that would move a job backwards or past its total.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProgressError {
    #[error("{kind:?} jobs have no stage {stage:?} (their stages: {stages})")]
    UnknownStage {
        kind: JobKind,
        stage: String,
        stages: String,
    },
    #[error("stage {to:?} comes before the current stage {from:?}; stages only move forward")]
    Backwards { from: String, to: String },
    #[error("current {current} is more than total {total}")]
    OverTotal { current: u64, total: u64 },
    #[error("the job is {state:?}, not running")]
    NotRunning { state: JobState },
}

impl Job {
    fn new(id: Uuid, kind: JobKind, project_id: Option<ProjectId>, now: Timestamp) -> Self {
        Self {
            id,
            kind,
            project_id,
            state: JobState::Queued,
            stages: kind.stages().iter().map(|s| s.to_string()).collect(),
            stage: None,
            current: 0,
            total: 0,
            message: None,
            result: None,
            created_at: now,
            updated_at: now,
        }
    }

    /// Moves a running job's progress. Returns whether the stage changed.
    pub fn advance(
        &mut self,
        stage: &str,
        current: u64,
        total: u64,
        now: Timestamp,
    ) -> Result<bool, ProgressError> {
        if self.state != JobState::Running {
            return Err(ProgressError::NotRunning { state: self.state });
        }
        let stages = self.kind.stages();
        let Some(to) = stages.iter().position(|s| *s == stage) else {
            return Err(ProgressError::UnknownStage {
                kind: self.kind,
                stage: stage.to_owned(),
                stages: stages.join(", "),
            });
        };
        if let Some(from) = self.stage.as_deref()
            && stages.iter().position(|s| *s == from).is_some_and(|f| f > to)
        {
            return Err(ProgressError::Backwards {
                from: from.to_owned(),
                to: stage.to_owned(),
            });
        }
        if current > total {
            return Err(ProgressError::OverTotal { current, total });
        }
        let changed = self.stage.as_deref() != Some(stage);
        self.stage = Some(stage.to_owned());
        self.current = current;
        self.total = total;
        self.updated_at = now;
        Ok(changed)
    }
}

/// What a finished job reports.
pub struct Done {
    pub result: Value,
    pub message: Option<String>,
    /// The file the job produced, inside its directory (an export's).
    pub file: Option<String>,
}

/// Why a job failed as a whole.
pub struct Failure {
    pub message: String,
    pub result: Option<Value>,
}

impl Failure {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            result: None,
        }
    }
}

/// A job's work, run once on a blocking thread.
pub type Work = Box<dyn FnOnce(&JobCtx<'_>) -> Result<Done, Failure> + Send>;

/// How jobs report and how long they are kept.
#[derive(Clone, Copy, Debug)]
pub struct JobsConfig {
    /// Least time between two progress events (and persists) of one job.
    pub event_interval: Duration,
    /// How long a finished job and its files are kept.
    pub retention: Duration,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            event_interval: Duration::from_millis(250),
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// The job as stored: the public view plus where its file is.
#[derive(Clone, Serialize, Deserialize)]
struct Record {
    #[serde(flatten)]
    job: Job,
    #[serde(default)]
    file: Option<String>,
}

struct Entry {
    /// The record, less a finished job's result (see `result_stored`).
    record: Record,
    /// When progress was last persisted and published (ms).
    published_at: i64,
    /// The finished job's result lives only in its stored record, read back
    /// on request: an import's per-row report of a 100,000-row file parses
    /// to ~60 MB, and the table holds every job for the retention period.
    result_stored: bool,
}

/// Failures opening the job table.
#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error("cannot read the job records: {0}")]
    Store(#[from] sitesync_sync::StoreError),
    #[error("cannot prepare the jobs directory {dir}: {source}")]
    Dir { dir: String, source: std::io::Error },
}

/// Every job of this daemon, and the worker that runs them.
pub struct Jobs {
    service: Arc<Service>,
    /// `<data-dir>/jobs`: one directory per job for its files.
    dir: PathBuf,
    config: JobsConfig,
    table: Mutex<HashMap<Uuid, Entry>>,
    queue: mpsc::UnboundedSender<(Uuid, Work)>,
}

impl Jobs {
    /// Loads the job records, marks what the last run left unfinished as
    /// interrupted, removes job directories no record owns, and starts the
    /// worker and the retention sweep (so it must run inside a tokio
    /// runtime).
    pub fn open(service: Arc<Service>, dir: &Path, config: JobsConfig) -> Result<Arc<Self>, JobsError> {
        std::fs::create_dir_all(dir).map_err(|source| JobsError::Dir {
            dir: dir.display().to_string(),
            source,
        })?;
        let store = service.repo().store();
        let now = service.now();
        let mut table = HashMap::new();
        for name in store.meta_names(JOB_META)? {
            let key = format!("{JOB_META}{name}");
            let Some(bytes) = store.get_meta(&key)? else {
                continue;
            };
            let mut record: Record = match serde_json::from_slice(&bytes) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(job = %name, error = %e, "unreadable job record dropped");
                    store.delete_meta(&key)?;
                    continue;
                }
            };
            if !record.job.state.is_finished() {
                record.job.state = JobState::Interrupted;
                record.job.message = Some(interrupted_message(&record.job));
                record.job.updated_at = now;
                store.put_meta(&key, &serde_json::to_vec(&record).expect("jobs serialize"))?;
            }
            let mut entry = Entry {
                record,
                published_at: 0,
                result_stored: false,
            };
            entry.shed_result();
            table.insert(entry.record.job.id, entry);
        }
        // Directories of uploads that never became jobs (a crash mid-upload).
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let owned = e
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<Uuid>().ok())
                    .is_some_and(|id| table.contains_key(&id));
                if !owned {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let (queue, mut rx) = mpsc::unbounded_channel::<(Uuid, Work)>();
        let jobs = Arc::new(Self {
            service,
            dir: dir.to_owned(),
            config,
            table: Mutex::new(table),
            queue,
        });
        jobs.sweep();
        let worker = jobs.clone();
        tokio::spawn(async move {
            while let Some((id, work)) = rx.recv().await {
                let jobs = worker.clone();
                if let Err(e) = tokio::task::spawn_blocking(move || jobs.execute(id, work)).await {
                    tracing::error!(%id, error = %e, "job worker failed");
                }
            }
        });
        let sweeper = Arc::downgrade(&jobs);
        let every = (config.retention / 2).clamp(Duration::from_millis(100), Duration::from_secs(60));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(jobs) = sweeper.upgrade() else { break };
                let _ = tokio::task::spawn_blocking(move || jobs.sweep()).await;
            }
        });
        Ok(jobs)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Entry>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the record and publishes `job.updated` (the table lock is
    /// held, so one job's records land in order).
    fn persist(&self, entry: &mut Entry) {
        if entry.result_stored {
            entry.record.job.result = self.stored(entry.record.job.id).and_then(|r| r.job.result);
            entry.result_stored = false;
        }
        let job = &entry.record.job;
        let bytes = serde_json::to_vec(&entry.record).expect("jobs serialize");
        if let Err(e) = self
            .service
            .repo()
            .store()
            .put_meta(&sitesync_sync::keys::job(job.id), &bytes)
        {
            tracing::error!(job = %job.id, error = %e, "persisting a job failed");
        }
        entry.published_at = job.updated_at.millis();
        let mut data = serde_json::to_value(job).expect("jobs serialize");
        // An import's per-row report can be megabytes: the event says the
        // job changed, GET /v1/jobs/{id} has the whole result.
        if let Some(result) = data.get_mut("result").and_then(Value::as_object_mut)
            && result.remove("rows").is_some()
        {
            result.insert("rows_at".into(), Value::String(format!("/v1/jobs/{}", job.id)));
        }
        self.service.events.publish("job.updated", job.project_id, data);
        entry.shed_result();
    }

    /// The job's stored record.
    fn stored(&self, id: Uuid) -> Option<Record> {
        match self
            .service
            .repo()
            .store()
            .get_meta(&sitesync_sync::keys::job(id))
        {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes)
                .inspect_err(|e| tracing::error!(job = %id, error = %e, "unreadable job record"))
                .ok(),
            Ok(None) => None,
            Err(e) => {
                tracing::error!(job = %id, error = %e, "reading a job record failed");
                None
            }
        }
    }

    /// Completes a job copied out of the table (the lock released, so a
    /// large result is read without holding up progress): its result is
    /// read back if it was shed.
    fn view(&self, (mut job, shed): (Job, bool)) -> Job {
        if shed {
            job.result = self.stored(job.id).and_then(|r| r.job.result);
        }
        job
    }

    /// A fresh job id and its (empty) directory, for work that stores a
    /// file before the job is submitted (an upload).
    pub fn prepare(&self) -> std::io::Result<(Uuid, PathBuf)> {
        let id = Uuid::new_v4();
        let dir = self.dir.join(id.to_string());
        std::fs::create_dir_all(&dir)?;
        Ok((id, dir))
    }

    /// Drops a prepared directory that will not become a job.
    pub fn discard(&self, id: Uuid) {
        let _ = std::fs::remove_dir_all(self.dir.join(id.to_string()));
    }

    /// Queues work as job `id` (from [`Self::prepare`]); it is persisted as
    /// queued before this returns.
    pub fn submit(&self, id: Uuid, kind: JobKind, project: Option<ProjectId>, work: Work) -> Job {
        let _ = std::fs::create_dir_all(self.dir.join(id.to_string()));
        let job = Job::new(id, kind, project, self.service.now());
        let mut entry = Entry {
            record: Record {
                job: job.clone(),
                file: None,
            },
            published_at: 0,
            result_stored: false,
        };
        let mut table = self.lock();
        self.persist(&mut entry);
        table.insert(id, entry);
        drop(table);
        if self.queue.send((id, work)).is_err() {
            // The worker is gone (shutting down): the job stays queued and
            // shows interrupted after the restart.
            tracing::warn!(%id, "job queued while the worker is stopping");
        }
        job
    }

    pub fn get(&self, id: Uuid) -> Option<Job> {
        let copied = self.lock().get(&id).map(Entry::copied);
        copied.map(|c| self.view(c))
    }

    /// One page of the jobs, newest first; only one project's when given.
    /// Shed results are read back for the page's jobs only.
    pub fn list(&self, project: Option<ProjectId>, page: Page) -> Paged<Job> {
        let mut copied: Vec<(Job, bool)> = self
            .lock()
            .values()
            .filter(|e| project.is_none_or(|p| e.record.job.project_id == Some(p)))
            .map(Entry::copied)
            .collect();
        copied.sort_by_key(|(j, _)| std::cmp::Reverse((j.created_at, j.id)));
        page.of_mapped(&copied, |c| self.view(c.clone()))
    }

    /// The job and the path of the file it produced, if it produced one.
    pub fn file(&self, id: Uuid) -> Option<(Job, Option<PathBuf>)> {
        let (copied, path) = {
            let table = self.lock();
            let e = table.get(&id)?;
            let path = e
                .record
                .file
                .as_ref()
                .map(|f| self.dir.join(id.to_string()).join(f));
            (e.copied(), path)
        };
        Some((self.view(copied), path))
    }

    /// Applies `f` to a job and persists/publishes when `f` says so or the
    /// event interval has passed.
    fn update(&self, id: Uuid, f: impl FnOnce(&mut Record, Timestamp) -> bool) {
        let now = self.service.now();
        let mut table = self.lock();
        let Some(entry) = table.get_mut(&id) else { return };
        let forced = f(&mut entry.record, now);
        let due = now.millis() - entry.published_at >= self.config.event_interval.as_millis() as i64;
        if forced || due {
            self.persist(entry);
        }
    }

    fn execute(&self, id: Uuid, work: Work) {
        self.update(id, |r, now| {
            r.job.state = JobState::Running;
            r.job.updated_at = now;
            true
        });
        let ctx = JobCtx {
            jobs: self,
            id,
            dir: self.dir.join(id.to_string()),
        };
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&ctx))).unwrap_or_else(|_| {
                Err(Failure::new(
                    "the job stopped on an internal error; see the daemon's log",
                ))
            });
        self.update(id, |r, now| {
            match outcome {
                Ok(done) => {
                    r.job.state = JobState::Completed;
                    r.job.result = Some(done.result);
                    r.job.message = done.message;
                    r.file = done.file;
                    // A finished stage shows as complete.
                    r.job.current = r.job.total;
                }
                Err(failure) => {
                    r.job.state = JobState::Failed;
                    r.job.message = Some(failure.message);
                    if failure.result.is_some() {
                        r.job.result = failure.result;
                    }
                }
            }
            r.job.updated_at = now;
            true
        });
    }

    /// Removes finished jobs older than the retention, and their files.
    pub fn sweep(&self) {
        let cutoff = self.service.now().millis() - self.config.retention.as_millis() as i64;
        let mut table = self.lock();
        let expired: Vec<Uuid> = table
            .values()
            .filter(|e| e.record.job.state.is_finished() && e.record.job.updated_at.millis() <= cutoff)
            .map(|e| e.record.job.id)
            .collect();
        for id in expired {
            if let Err(e) = self
                .service
                .repo()
                .store()
                .delete_meta(&sitesync_sync::keys::job(id))
            {
                tracing::error!(%id, error = %e, "removing an expired job failed");
                continue;
            }
            let _ = std::fs::remove_dir_all(self.dir.join(id.to_string()));
            table.remove(&id);
        }
    }
}

impl Entry {
    /// The job as held, and whether its result was shed (for [`Jobs::view`]).
    fn copied(&self) -> (Job, bool) {
        (self.record.job.clone(), self.result_stored)
    }

    /// Drops a finished job's result from memory once it is stored.
    fn shed_result(&mut self) {
        if self.record.job.state.is_finished() && self.record.job.result.is_some() {
            self.record.job.result = None;
            self.result_stored = true;
        }
    }
}

fn interrupted_message(job: &Job) -> String {
    let at = match &job.stage {
        Some(stage) => format!(" during {stage} ({} of {})", job.current, job.total),
        None => " before it started".to_owned(),
    };
    let undo = job
        .result
        .as_ref()
        .and_then(|r| r.get("operation_id"))
        .and_then(Value::as_str)
        .map(|op| format!("; what it wrote is operation {op} (undo it, or run the import again: rows already imported show as unchanged)"))
        .unwrap_or_default();
    format!("the daemon stopped{at}{undo}")
}

/// What running work sees of its job.
pub struct JobCtx<'a> {
    jobs: &'a Jobs,
    pub id: Uuid,
    /// The job's own directory, for its input and output files.
    pub dir: PathBuf,
}

impl JobCtx<'_> {
    /// Reports progress. A report that would move the job backwards is a
    /// bug in the work: it is logged and ignored, never shown.
    pub fn progress(&self, stage: &str, current: u64, total: u64) {
        self.jobs.update(self.id, |r, now| {
            match r.job.advance(stage, current, total, now) {
                Ok(changed) => changed,
                Err(e) => {
                    tracing::error!(job = %self.id, error = %e, "bad job progress ignored");
                    false
                }
            }
        });
    }

    /// Sets the message shown with the progress.
    pub fn note(&self, message: impl Into<String>) {
        let message = message.into();
        self.jobs.update(self.id, |r, now| {
            r.job.message = Some(message);
            r.job.updated_at = now;
            false
        });
    }

    /// Records part of the result now, durably (e.g. an import's operation
    /// id before it writes anything).
    pub fn partial_result(&self, result: Value) {
        self.jobs.update(self.id, |r, now| {
            r.job.result = Some(result);
            r.job.updated_at = now;
            true
        });
    }
}

#[cfg(test)]
mod tests;
