//! The aged project: the benchmark's project given a year of history, so
//! every scenario can be measured again on a project as it stands after
//! years of use ("a write costs the same on day 700 as on day 1").
//!
//! The history is written straight into daemon A's store while A is
//! stopped, as Automerge changes made through the model's own writes
//! (`DrawingDoc::update_milestone`, `undo`, and concurrent writes merged),
//! each its own change with its own operation metadata, author, device
//! (Automerge actor) and time — what the daemon would have stored had the
//! writes come over HTTP, where they would take hours (~4 ms a write). A
//! drawing's new changes are stored as one change record, then folded
//! into its snapshot by the repository's own compaction rule; the daemon
//! finds its saved index and operation records behind the documents'
//! heads when it restarts, and reads on from them, as after any restart.
//!
//! Per drawing, the writes are spread evenly over the year before today,
//! by several users on several devices: discrete toggles, percentages and
//! quantity entries (with the odd correction), some recorded late with an
//! effective date, some undone, some made concurrently on two devices and
//! merged (a conflict). A few "hot" drawings take many more writes each:
//! a pipe-footage drawing logged every shift for years.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use sitesync_sync::model::automerge::ActorId;
use sitesync_sync::model::{
    Component, DeviceId, DrawingDoc, DrawingId, MilestoneUpdate, MilestoneValue, OperationId, OperationKind,
    ProjectId, Timestamp, WorkflowType, WriteCtx,
};
use sitesync_sync::{DocStore, RedbBackend, Repo, RepoConfig, RepoError};
use sitesync_tests::Client;
use uuid::Uuid;

use crate::project::{Kind, Project, ok};
use crate::report::{Figure, Stat};

/// How much history to add.
#[derive(Clone, Copy, Debug)]
pub struct AgeSizes {
    /// Milestone writes spread over every drawing (hot ones excepted).
    pub writes: usize,
    /// Drawings given `hot_writes` each on top.
    pub hot_drawings: usize,
    pub hot_writes: usize,
}

/// What aging did, for the report and the scenarios that follow.
pub struct Aged {
    /// Writes made in all (undos and both sides of a concurrent pair each
    /// count as one).
    pub writes: usize,
    /// The hot drawings' components and their kinds, a list per drawing.
    pub hot: Vec<Vec<(String, Kind)>>,
    pub took: Duration,
}

/// Devices (each its own Automerge actor) and the people using them.
const DEVICES: u128 = 6;
const USERS: [&str; 8] = ["ana", "ben", "chen", "dara", "eli", "fatima", "goran", "hana"];
/// A year of history, ending a day before today.
const SPAN_MS: i64 = 365 * 24 * 3600 * 1000;
/// Drawings written per durable batch: one flush for many, and the
/// repository's cache holds a batch at a time.
const BATCH: usize = 32;

/// Adds history to `project` in the (stopped) daemon's store in
/// `data_dir`. Deterministic for a seed, but for the times (the year
/// before today).
pub fn age(data_dir: &Path, project: &Project, sizes: AgeSizes, seed: u64) -> anyhow::Result<Aged> {
    let started = Instant::now();
    let store_dir = data_dir.join("store");
    let backend =
        RedbBackend::open(&store_dir).with_context(|| format!("opening {}", store_dir.display()))?;
    let repo: Repo = Repo::new(
        DocStore::new(backend),
        ActorId::random(),
        RepoConfig {
            max_cached: 2 * BATCH,
            ..RepoConfig::default()
        },
    );
    let pid = ProjectId(project.id.parse().context("project id")?);
    let kinds: HashMap<&str, Kind> = project
        .drawings
        .iter()
        .flatten()
        .map(|(id, kind)| (id.as_str(), *kind))
        .collect();
    let drawings: Vec<DrawingId> = repo
        .read_project(pid, |p| p.drawings())??
        .into_iter()
        .filter(|d| !d.deleted)
        .map(|d| d.id)
        .collect();
    anyhow::ensure!(!drawings.is_empty(), "project {} has no drawings", project.id);
    let hot_count = sizes.hot_drawings.min(drawings.len());
    let (hot, rest) = drawings.split_at(hot_count);
    let per_drawing = sizes.writes / rest.len().max(1);
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
    let start = now - SPAN_MS - 24 * 3600 * 1000;
    let mut writes = 0;
    let mut hot_ids = Vec::new();
    // Hot drawings, two at a time: each is a long sequence on one document.
    for pair in hot.chunks(2) {
        writes += write_batch(&repo, pair, sizes.hot_writes, start, seed)?;
        for did in pair {
            let ids = repo.read_drawing(*did, |d| d.component_ids())??;
            let with_kinds = ids
                .iter()
                .map(|c| c.0.to_string())
                .filter_map(|id| Some((id.clone(), *kinds.get(id.as_str())?)))
                .collect();
            hot_ids.push(with_kinds);
        }
    }
    for (n, chunk) in rest.chunks(BATCH).enumerate() {
        writes += write_batch(&repo, chunk, per_drawing, start, seed)?;
        if n % 16 == 15 {
            eprintln!(
                "  aged {} of {} drawings ({writes} writes)",
                (n + 1) * BATCH,
                rest.len()
            );
        }
    }
    repo.flush()?;
    Ok(Aged {
        writes,
        hot: hot_ids,
        took: started.elapsed(),
    })
}

/// Gives each of `drawings` `count` writes, the drawings shared between
/// two threads, and stores them in one durable batch. Returns the writes
/// made.
fn write_batch(
    repo: &Repo,
    drawings: &[DrawingId],
    count: usize,
    start: i64,
    seed: u64,
) -> anyhow::Result<usize> {
    let made = repo.write(|tx| {
        let docs = tx.drawings(drawings)?;
        let mut jobs: Vec<(DrawingId, &mut DrawingDoc)> = drawings.iter().copied().zip(docs).collect();
        let half = jobs.len().div_ceil(2);
        let (left, right) = jobs.split_at_mut(half);
        let run = |jobs: &mut [(DrawingId, &mut DrawingDoc)]| -> Result<usize, RepoError> {
            let mut made = 0;
            for (did, doc) in jobs.iter_mut() {
                let rng = StdRng::seed_from_u64(seed ^ (did.0.as_u128() as u64));
                made += History::new(rng, start, count).write(doc)?;
            }
            Ok(made)
        };
        let (a, b) = std::thread::scope(|s| {
            let other = s.spawn(|| run(right));
            (run(left), other.join().expect("aging thread"))
        });
        Ok(a? + b?)
    })?;
    Ok(made)
}

/// One drawing's history as it is written: its clock and its recent
/// operations (what an undo picks from).
struct History {
    rng: StdRng,
    /// When the next write happens, and the step between writes.
    at: i64,
    step: i64,
    count: usize,
    recent: Vec<OperationId>,
}

impl History {
    fn new(rng: StdRng, start: i64, count: usize) -> Self {
        Self {
            rng,
            at: start,
            step: SPAN_MS / count.max(1) as i64,
            count,
            recent: Vec::new(),
        }
    }

    fn device(&mut self) -> (DeviceId, ActorId) {
        let d = self.rng.random_range(0..DEVICES);
        let id = Uuid::from_u128(0xA6ED_0000_0000_0000_0000_0000_0000_0000 | d);
        (DeviceId(id), ActorId::from(id.as_bytes().as_slice()))
    }

    fn ctx(&mut self, kind: OperationKind) -> (WriteCtx, ActorId) {
        let (device, actor) = self.device();
        let user = USERS[self.rng.random_range(0..USERS.len())];
        // Within its slot of the year, never two writes at one time.
        let jitter = self.rng.random_range(0..self.step.max(2) / 2);
        let op = OperationId(Uuid::from_u128(self.rng.random()));
        let ctx = WriteCtx::new(user, device, op, kind, Timestamp(self.at + jitter));
        (ctx, actor)
    }

    /// A plausible next value for one of `c`'s milestones.
    fn update(&mut self, c: &Component, at: i64) -> MilestoneUpdate {
        let m = &c.milestones[self.rng.random_range(0..c.milestones.len())];
        let value = match c.workflow_type {
            WorkflowType::Discrete => MilestoneValue::Completed(!m.completed.unwrap_or(false)),
            WorkflowType::Percentage => {
                MilestoneValue::Percent(f64::from(self.rng.random_range(0..=20u8)) * 5.0)
            }
            WorkflowType::Quantity => {
                let have = m.quantity.unwrap_or(0.0);
                // One entry in twenty corrects a miscount downwards.
                if have > 1.0 && self.rng.random_ratio(1, 20) {
                    MilestoneValue::QuantityDelta(-1.0)
                } else {
                    MilestoneValue::QuantityDelta(f64::from(self.rng.random_range(1..=40u8)) / 4.0)
                }
            }
        };
        // One write in ten recorded a day or two late.
        let effective_date = self.rng.random_ratio(1, 10).then(|| {
            let days = self.rng.random_range(1..=2);
            day(at - days * 24 * 3600 * 1000)
        });
        MilestoneUpdate {
            component_id: c.id,
            milestone: m.key.clone(),
            value,
            effective_date,
        }
    }

    /// Makes `self.count` writes on `doc`; returns how many it made.
    fn write(mut self, doc: &mut DrawingDoc) -> Result<usize, RepoError> {
        let components = doc.components()?;
        let live: Vec<&Component> = components
            .iter()
            .filter(|c| !c.deleted && !c.milestones.is_empty())
            .collect();
        if live.is_empty() {
            return Ok(0);
        }
        let mut made = 0;
        while made < self.count {
            let roll = self.rng.random_range(0..100);
            if roll < 2 && !self.recent.is_empty() {
                // An undo of one of the last few operations.
                let target = self.recent[self.rng.random_range(0..self.recent.len())];
                let (ctx, actor) = self.ctx(OperationKind::Undo);
                doc.automerge_mut().set_actor(actor);
                doc.undo(&ctx, target)?;
                self.recent.retain(|op| *op != target);
            } else if roll < 5 {
                // Two devices write one milestone concurrently; merged.
                let c = live[self.rng.random_range(0..live.len())];
                let (ctx, actor) = self.ctx(OperationKind::MilestoneUpdate);
                // Another device: one actor writing on both sides would
                // make two changes with one sequence number.
                let (mut other_ctx, mut other_actor) = self.ctx(OperationKind::MilestoneUpdate);
                while other_actor == actor {
                    (other_ctx, other_actor) = self.ctx(OperationKind::MilestoneUpdate);
                }
                let current = doc.component(c.id)?;
                let update = self.update(&current, ctx.now.0);
                let mut other = DrawingDoc::from_automerge(doc.automerge().fork().with_actor(other_actor))?;
                // The other device saw the same state and chose otherwise.
                let mut theirs = update.clone();
                if let MilestoneValue::Completed(done) = update.value {
                    theirs.value = MilestoneValue::Completed(!done);
                }
                doc.automerge_mut().set_actor(actor);
                doc.update_milestone(&ctx, &update)?;
                other.update_milestone(&other_ctx, &theirs)?;
                doc.automerge_mut()
                    .merge(other.automerge_mut())
                    .map_err(sitesync_sync::model::ModelError::from)?;
                made += 1;
                self.recent.push(ctx.op);
            } else {
                let c = live[self.rng.random_range(0..live.len())];
                let (ctx, actor) = self.ctx(OperationKind::MilestoneUpdate);
                let current = doc.component(c.id)?;
                let update = self.update(&current, ctx.now.0);
                doc.automerge_mut().set_actor(actor);
                doc.update_milestone(&ctx, &update)?;
                self.recent.push(ctx.op);
            }
            if self.recent.len() > 8 {
                self.recent.remove(0);
            }
            made += 1;
            self.at += self.step;
        }
        Ok(made)
    }
}

/// One drawing written again and again, as a crew logs a pipe run every
/// shift: back-to-back writes alternating a discrete toggle on a spool and
/// a quantity entry on a pipe, and every fifth write, the history of the
/// pipe and the project's operations list read, as the app does after a
/// write. On the fresh project, its first drawing; on the aged one, a hot
/// drawing. `drawing`: its components and their kinds.
pub fn one_drawing(
    a: &Client,
    project: &str,
    drawing: &[(String, Kind)],
    writes: usize,
) -> anyhow::Result<Vec<Figure>> {
    let of = |kind: Kind| {
        drawing
            .iter()
            .filter(move |(_, k)| *k == kind)
            .map(|(id, _)| id.as_str())
    };
    let spools: Vec<&str> = of(Kind::Spool).collect();
    let pipes: Vec<&str> = of(Kind::Pipe).collect();
    anyhow::ensure!(
        !spools.is_empty() && !pipes.is_empty(),
        "the drawing has no spool or no pipe"
    );
    let (mut times, mut history, mut operations) = (Vec::new(), Vec::new(), Vec::new());
    for k in 0..writes {
        let (path, body) = if k.is_multiple_of(2) {
            let id = spools[(k / 2) % spools.len()];
            let done = (k / 2 / spools.len()).is_multiple_of(2);
            (
                format!("/v1/projects/{project}/components/{id}/milestones/erect"),
                json!({"completed": done}),
            )
        } else {
            let id = pipes[(k / 2) % pipes.len()];
            (
                format!("/v1/projects/{project}/components/{id}/milestones/install"),
                json!({"quantity_delta": 0.5}),
            )
        };
        let start = Instant::now();
        ok("write to one drawing", a.call("PUT", &path, Some(&body)))?;
        times.push(start.elapsed());
        if k % 5 == 4 {
            let path = format!("/v1/projects/{project}/components/{}/history?limit=50", pipes[0]);
            let start = Instant::now();
            ok("history", a.call("GET", &path, None))?;
            history.push(start.elapsed());
            let path = format!("/v1/projects/{project}/operations?limit=50");
            let start = Instant::now();
            ok("operations", a.call("GET", &path, None))?;
            operations.push(start.elapsed());
        }
    }
    Ok(vec![
        Figure::ms("HTTP write", "one drawing: toggles and quantity entries, durable", &times)
            .note("PUT .../milestones/{key} back to back on one drawing, a spool toggle and a pipe quantity entry in turn"),
        Figure::ms("daemon", "one drawing: a pipe's history", &history)
            .target(Stat::P99, 50.0)
            .note("GET .../components/{cid}/history?limit=50 (the field app's page) after every fifth write"),
        Figure::ms("daemon", "one drawing: the operations list", &operations)
            .target(Stat::P99, 50.0)
            .note("GET .../operations?limit=50 after every fifth write"),
    ])
}

/// `YYYY-MM-DD` of a time in milliseconds (UTC).
fn day(ms: i64) -> String {
    Timestamp(ms).to_rfc3339()[..10].to_owned()
}
