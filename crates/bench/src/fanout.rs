//! Many devices on one relay: the fan-out and idle-connection scenarios.
//!
//! Running hundreds of daemons on a 2-core machine would measure the
//! machine, not the relay, so each extra device here is the sync engine
//! itself without the HTTP layer: `sitesync_sync`'s client [`Session`] over
//! a real WebSocket (`link::connect` + `link::drive`, exactly what the
//! daemon runs), with an in-memory repository, and its own token from
//! `sitesync-relay token create`. The relay cannot tell these from daemons.
//! They all live on one tokio runtime in this process, so the figures
//! include their own CPU on the same 2 cores.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use sitesync_sync::credentials::Token;
use sitesync_sync::host::RepoHost;
use sitesync_sync::link::{self, Feeds, LinkTiming, Observer};
use sitesync_sync::model::automerge::{ActorId, Automerge};
use sitesync_sync::session::{Event, Session};
use sitesync_sync::{DocStore, MemBackend, Repo, RepoConfig};
use sitesync_tests::{Client, Relay};
use uuid::Uuid;

use crate::project::{Kind, Project, ok};
use crate::report::{Figure, Stat};
use crate::scenarios::{Sizes, put_toggle, rss_mb};

/// What a device tells the scenario.
#[derive(Debug)]
enum Note {
    /// The handshake completed.
    Ready(usize),
    /// The relay's changes to `doc` are applied on device `usize`.
    Applied(usize, Uuid, Instant),
    /// The connection ended (it should not, during a run).
    Ended(usize, String),
}

struct DeviceObserver {
    n: usize,
    notes: mpsc::Sender<Note>,
}

impl Observer for DeviceObserver {
    fn events(&self, events: &[Event]) {
        for event in events {
            let note = match event {
                Event::Ready(_) => Note::Ready(self.n),
                Event::Applied { doc, .. } => Note::Applied(self.n, *doc, Instant::now()),
                _ => continue,
            };
            let _ = self.notes.send(note);
        }
    }
}

/// Devices connected to the relay, each on its own task.
pub struct Fleet {
    runtime: tokio::runtime::Runtime,
    notes: mpsc::Receiver<Note>,
    sender: mpsc::Sender<Note>,
    size: usize,
    /// Devices whose handshake completed.
    ready: HashSet<usize>,
    /// (device, document) pairs that arrived at least once.
    have: HashSet<(usize, Uuid)>,
    /// Arrivals since the last update was sent.
    applied: Vec<(usize, Uuid, Instant)>,
}

impl Fleet {
    pub fn new() -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let (sender, notes) = mpsc::channel();
        Ok(Self {
            runtime,
            notes,
            sender,
            size: 0,
            ready: HashSet::new(),
            have: HashSet::new(),
            applied: Vec::new(),
        })
    }

    /// Connects `count` more devices with these tokens (one each) and waits
    /// until every one has completed its handshake.
    pub fn connect(&mut self, relay: &Relay, tokens: Vec<String>, limit: Duration) -> anyhow::Result<()> {
        let tls = sitesync_sync::tls::ClientTls::new(&[])?;
        let first = self.size;
        let count = tokens.len();
        for (i, token) in tokens.into_iter().enumerate() {
            let n = first + i;
            let token = Token::parse(&token).context("a token from `token create`")?;
            let (url, tls, notes) = (relay.ws_url(), tls.clone(), self.sender.clone());
            self.runtime.spawn(async move {
                let socket = match link::connect(
                    &url,
                    Duration::from_secs(30),
                    &tls,
                    sitesync_sync::tls::Trust::Roots,
                )
                .await
                {
                    Ok((s, _)) => s,
                    Err(e) => {
                        let _ = notes.send(Note::Ended(n, e));
                        return;
                    }
                };
                // Never compacts: compaction only speeds up loading a
                // document from its store, and this store is memory that
                // is never reloaded. Compacting anyway made every device
                // fold its copy on the same update (the 16th, 32nd and
                // 48th), 200 saves at once on the 2 cores the relay needs:
                // those three updates were the run's p95 and p99. A real
                // device folds its own copy, on its own CPU.
                let repo: Repo<Automerge> = Repo::new(
                    DocStore::new(MemBackend::default()),
                    ActorId::random(),
                    RepoConfig {
                        compact_at: usize::MAX,
                        compact_bytes: usize::MAX,
                        ..RepoConfig::default()
                    },
                );
                let host = Arc::new(RepoHost::new(Arc::new(repo)));
                // These devices never write: no change feed.
                let presence = link::PresenceHub::new();
                let feeds = Feeds {
                    changes: None,
                    presence: presence.subscribe(),
                    id: n as u64,
                };
                let session = Session::client(
                    Uuid::new_v4(),
                    &format!("bench-device-{n}"),
                    token,
                    rand::random(),
                );
                let observer = Arc::new(DeviceObserver {
                    n,
                    notes: notes.clone(),
                });
                let ended = link::drive(
                    socket,
                    session,
                    link::Documents::One(host),
                    feeds,
                    observer,
                    presence.clone(),
                    LinkTiming::default(),
                )
                .await;
                let _ = notes.send(Note::Ended(n, ended.reason));
            });
        }
        self.size = first + self.wait_ready(first, count, limit)?;
        Ok(())
    }

    /// Takes the next note into what the fleet knows; an ended connection
    /// or the deadline is an error naming `waiting_for`.
    fn take_note(&mut self, deadline: Instant, waiting_for: &dyn Fn(&Self) -> String) -> anyhow::Result<()> {
        match self
            .notes
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Ok(Note::Ready(n)) => {
                self.ready.insert(n);
            }
            Ok(Note::Applied(n, doc, at)) => {
                self.have.insert((n, doc));
                self.applied.push((n, doc, at));
            }
            Ok(Note::Ended(n, reason)) => anyhow::bail!("device {n} disconnected: {reason}"),
            Err(_) => anyhow::bail!("timed out: {}", waiting_for(self)),
        }
        Ok(())
    }

    fn wait_ready(&mut self, first: usize, want: usize, limit: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + limit;
        let count = |f: &Self| f.ready.iter().filter(|n| **n >= first).count();
        while count(self) < want {
            self.take_note(deadline, &|f| {
                format!("only {} of {want} devices connected in {limit:?}", count(f))
            })?;
        }
        Ok(want)
    }

    /// Waits until every device from number `first` on has `doc` (its first
    /// copy arrived), then lets the dust settle.
    fn wait_all_have(&mut self, first: usize, doc: Uuid, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        let count = |f: &Self| (first..f.size).filter(|n| f.have.contains(&(*n, doc))).count();
        while count(self) < self.size - first {
            self.take_note(deadline, &|f| {
                format!(
                    "only {} of {} devices received the project in {limit:?}",
                    count(f),
                    f.size - first
                )
            })?;
        }
        std::thread::sleep(Duration::from_millis(500));
        while let Ok(note) = self.notes.try_recv() {
            if let Note::Ended(n, reason) = note {
                anyhow::bail!("device {n} disconnected: {reason}");
            }
        }
        Ok(())
    }

    /// After an update sent at `sent`: how long until each device applied
    /// `doc` (one figure per device, in ms).
    fn reached(&mut self, doc: Uuid, sent: Instant, limit: Duration) -> anyhow::Result<Vec<f64>> {
        let deadline = sent + limit;
        self.applied.clear();
        let firsts = |f: &Self| {
            let mut seen = HashSet::new();
            f.applied
                .iter()
                .filter(|(n, d, at)| *d == doc && *at >= sent && seen.insert(*n))
                .map(|(_, _, at)| at.duration_since(sent).as_secs_f64() * 1000.0)
                .collect::<Vec<f64>>()
        };
        while firsts(self).len() < self.size {
            self.take_note(deadline, &|f| {
                format!(
                    "the update reached {} of {} devices in {limit:?}",
                    firsts(f).len(),
                    f.size
                )
            })?;
        }
        Ok(firsts(self))
    }
}

/// Issues `count` device tokens scoped to `project`.
fn tokens(relay_dir: &std::path::Path, project: &str, count: usize) -> Vec<String> {
    (0..count)
        .map(|_| Relay::token(relay_dir, "bench", &[project]))
        .collect()
}

/// Fan-out: `sizes.fanout_devices` devices subscribed to a small project of
/// A's; each update A makes is timed until the last device has applied it.
/// Then idle connections: more devices up to `sizes.idle_connections`, and
/// the relay's resident memory while they are connected and idle.
pub fn fanout(
    a: &Client,
    relay: &Relay,
    relay_dir: &std::path::Path,
    project: &Project,
    sizes: &Sizes,
) -> anyhow::Result<Vec<Figure>> {
    let drawings = ok(
        "drawings",
        a.call("GET", &format!("/v1/projects/{}/drawings", project.id), None),
    )?;
    let drawing: Uuid = drawings["items"][0]["id"]
        .as_str()
        .context("the fan-out project has a drawing")?
        .parse()?;
    let spools = project.of_kind(Kind::Spool);
    let mut fleet = Fleet::new()?;
    let relay_before = relay.pid().map_or(f64::NAN, rss_mb);
    fleet.connect(
        relay,
        tokens(relay_dir, &project.id, sizes.fanout_devices),
        Duration::from_secs(120),
    )?;
    fleet.wait_all_have(0, drawing, Duration::from_secs(120))?;
    eprintln!(
        "         {} devices connected; timing {} updates",
        fleet.size, sizes.fanout_updates
    );

    let mut last = Vec::with_capacity(sizes.fanout_updates);
    let mut each = Vec::with_capacity(sizes.fanout_updates * sizes.fanout_devices);
    for k in 0..sizes.fanout_updates {
        let sent = Instant::now();
        put_toggle(a, project, &spools, k, "punch")?;
        let reached = fleet.reached(drawing, sent, Duration::from_secs(30))?;
        last.push(reached.iter().copied().fold(0.0, f64::max));
        each.extend(reached);
        // Updates a few apart, as people make them: each is timed alone.
        std::thread::sleep(Duration::from_millis(50));
    }
    let devices = sizes.fanout_devices;
    let mut figures = vec![
        Figure::new(
            "relay",
            &format!("fan-out: one update reaches all {devices} devices"),
            "ms",
            last,
        )
        .target(Stat::P99, 200.0)
        .note("from A's PUT until the last subscribed device has applied it; one sample per update"),
        Figure::new(
            "relay",
            &format!("fan-out: one update reaches one device (of {devices})"),
            "ms",
            each,
        )
        .note("the same updates, one sample per device (information)"),
    ];

    let (first, more) = (fleet.size, sizes.idle_connections.saturating_sub(fleet.size));
    fleet.connect(
        relay,
        tokens(relay_dir, &project.id, more),
        Duration::from_secs(300),
    )?;
    fleet.wait_all_have(first, drawing, Duration::from_secs(300))?;
    // Idle: nothing but pings for a few seconds, then the relay's memory.
    std::thread::sleep(Duration::from_secs(3));
    let held = relay.pid().map_or(f64::NAN, rss_mb);
    let (_, health) = relay.http_get("/healthz");
    let connections = serde_json::from_str::<serde_json::Value>(&health)
        .ok()
        .and_then(|h| h["connections"].as_i64())
        .unwrap_or(-1);
    ensure!(
        connections >= fleet.size as i64,
        "the relay reports {connections} connections, expected at least {}",
        fleet.size
    );
    figures.push(
        Figure::new(
            "relay",
            &format!("{} idle connections: relay resident memory", fleet.size),
            "MB",
            vec![held],
        )
        .target(Stat::Value, 500.0)
        .note(format!(
            "relay RSS with every device connected and idle (it held {relay_before:.0} MB before they connected, \
             the large project's documents included); the relay counted {connections} connections"
        )),
    );
    Ok(figures)
}
