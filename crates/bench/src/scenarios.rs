//! The scenarios: each drives the real binaries over their real interfaces
//! (HTTP, the event stream, the relay's WebSocket and metrics) and returns
//! figures with their targets (the targets the product was specified with).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, ensure};
use serde_json::{Value, json};
use sitesync_tests::{Client, Daemon, Relay};

use crate::project::{Kind, Project, ok};
use crate::report::{Figure, Stat};

/// How many repetitions and how large, for a full or a quick run.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    pub components: usize,
    pub per_drawing: usize,
    pub single_writes: usize,
    /// Single writes again, one every [`PACE`] (information).
    pub paced_writes: usize,
    pub bulk50: usize,
    pub bulk10k: usize,
    pub queries: usize,
    pub propagations: usize,
    pub offline_drawings: usize,
    pub reconnects: usize,
    pub restarts: usize,
    /// Devices subscribed to the fan-out project, and updates timed.
    pub fanout_devices: usize,
    pub fanout_updates: usize,
    /// Connections held open for the idle-memory figure (fan-out's included).
    pub idle_connections: usize,
    /// Components of the project cloned last, on its own (0: not run).
    pub large_clone: usize,
    /// The field app in a browser: screens opened afresh, milestone taps.
    pub app_loads: usize,
    pub app_taps: usize,
}

impl Sizes {
    pub fn full(components: usize) -> Self {
        Self {
            components,
            per_drawing: 50,
            single_writes: 500,
            paced_writes: 250,
            bulk50: 100,
            bulk10k: 5,
            queries: 200,
            propagations: 200,
            offline_drawings: 500,
            reconnects: 5,
            restarts: 3,
            fanout_devices: 200,
            fanout_updates: 50,
            idle_connections: 1_000,
            large_clone: 500_000,
            app_loads: 10,
            app_taps: 50,
        }
    }

    pub fn quick() -> Self {
        Self {
            components: 2_000,
            per_drawing: 50,
            single_writes: 100,
            paced_writes: 25,
            bulk50: 20,
            bulk10k: 2,
            queries: 50,
            propagations: 30,
            offline_drawings: 20,
            reconnects: 3,
            restarts: 1,
            fanout_devices: 10,
            fanout_updates: 5,
            idle_connections: 30,
            large_clone: 4_000,
            app_loads: 3,
            app_taps: 10,
        }
    }
}

fn timed<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let start = Instant::now();
    let out = f();
    (start.elapsed(), out)
}

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Resident memory of a process, in MB.
pub fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn bulk(c: &Client, project: &str, updates: &[Value]) -> anyhow::Result<()> {
    let out = ok(
        "bulk",
        c.call(
            "POST",
            &format!("/v1/projects/{project}/milestones:bulk"),
            Some(&json!({"updates": updates})),
        ),
    )?;
    ensure!(out["failed"] == 0, "bulk failed: {}", out["results"]);
    Ok(())
}

/// The value of the `k`th write over a list of `n` components: true on the
/// first pass, false on the next, so every write changes something.
fn flip(k: usize, n: usize) -> bool {
    (k / n).is_multiple_of(2)
}

/// A discrete update that changes the value each time the list wraps.
fn toggle(ids: &[&str], k: usize, key: &str) -> Value {
    json!({"component_id": ids[k % ids.len()], "milestone": key, "completed": flip(k, ids.len())})
}

/// One milestone update over HTTP: [`toggle`]'s `k`th write, with PUT.
pub fn put_toggle(c: &Client, p: &Project, ids: &[&str], k: usize, key: &str) -> anyhow::Result<()> {
    let id = ids[k % ids.len()];
    let path = format!("/v1/projects/{}/components/{id}/milestones/{key}", p.id);
    ok(
        "milestone update",
        c.call("PUT", &path, Some(&json!({"completed": flip(k, ids.len())}))),
    )?;
    Ok(())
}

/// The interval of the paced single writes: a busy crew's rate many times
/// over, and time enough for the relay and B to take each write in before
/// the next.
pub const PACE: Duration = Duration::from_millis(20);

/// Single milestone updates and bulk updates over HTTP, each acknowledged
/// only once durable. Each bulk of 10,000 starts once the previous one has
/// reached the relay and B: otherwise the sync of its 500 drawings (which
/// A's connection carries on while a bulk runs) shares the two cores with
/// the next round, and the figure times three processes on one machine
/// rather than a daemon's write.
pub fn writes(a: &Client, b: &Client, p: &Project, s: &Sizes) -> anyhow::Result<Vec<Figure>> {
    let spools = p.of_kind(Kind::Spool);
    let welds = p.of_kind(Kind::Weld);
    let mut single = Vec::with_capacity(s.single_writes);
    for k in 0..s.single_writes {
        let (t, r) = timed(|| put_toggle(a, p, &spools, k, "punch"));
        r?;
        single.push(t);
    }
    // The same writes at a steady pace: what one update costs when the
    // relay and B (on these two cores too) are not still taking in the last.
    let mut paced = Vec::with_capacity(s.paced_writes);
    let start = Instant::now();
    for (i, k) in (s.single_writes..s.single_writes + s.paced_writes).enumerate() {
        let due = start + PACE * i as u32;
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let (t, r) = timed(|| put_toggle(a, p, &spools, k, "punch"));
        r?;
        paced.push(t);
    }
    let mut b50 = Vec::with_capacity(s.bulk50);
    for round in 0..s.bulk50 {
        let updates: Vec<Value> = (round * 50..round * 50 + 50)
            .map(|k| toggle(&welds, k, "nde"))
            .collect();
        let (t, r) = timed(|| bulk(a, &p.id, &updates));
        r?;
        b50.push(t);
    }
    let n = welds.len().min(10_000);
    let mut b10k = Vec::with_capacity(s.bulk10k);
    for round in 0..s.bulk10k {
        let updates: Vec<Value> = (round * n..round * n + n)
            .map(|k| toggle(&welds, k, "pwht"))
            .collect();
        wait_pending_zero(a)?;
        quiet(b, Duration::from_millis(500))?;
        let (t, r) = timed(|| bulk(a, &p.id, &updates));
        r?;
        b10k.push(t);
    }
    Ok(vec![
        Figure::ms("HTTP write", "single milestone update, durable", &single)
            .target(Stat::P99, 5.0)
            .note("PUT .../milestones/{key}, a discrete toggle, back to back; round trip over loopback"),
        Figure::ms(
            "HTTP write",
            &format!("single milestone update, one every {} ms", PACE.as_millis()),
            &paced,
        )
        .note("the same writes paced (information; the target is judged back to back, above)"),
        Figure::ms("HTTP write", "bulk of 50 updates", &b50).target(Stat::P99, 20.0),
        Figure::ms("HTTP write", &format!("bulk of {n} updates"), &b10k)
            .target(Stat::P99, 1000.0)
            .note(if n < 10_000 {
                "quick run: fewer than 10,000 welds; each round from a quiet sync"
            } else {
                "each round starts once the previous one has synced to B"
            }),
    ])
}

/// A filtered, sorted component list.
pub fn queries(a: &Client, p: &Project, s: &Sizes) -> anyhow::Result<Figure> {
    let path = format!(
        "/v1/projects/{}/components?kind=spool&status=in_progress&attr.area=U03&sort=-completion&limit=100",
        p.id
    );
    let mut times = Vec::with_capacity(s.queries);
    for _ in 0..s.queries {
        let (t, r) = timed(|| a.call("GET", &path, None));
        ok("component query", r)?;
        times.push(t);
    }
    Ok(Figure::ms("daemon", "component list, filter + sort", &times)
        .target(Stat::P99, 50.0)
        .note("kind, status and attribute filters, sorted by completion, first page of 100"))
}

/// Opens a daemon's event stream and forwards each event's type and data,
/// stamped with its arrival time.
fn event_feed(c: &Client, query: &str) -> anyhow::Result<mpsc::Receiver<(Instant, String, Value)>> {
    let mut s = TcpStream::connect(c.addr)?;
    write!(
        s,
        "GET /v1/events{query} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nAccept: text/event-stream\r\n\r\n",
        c.addr, c.token
    )?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut kind, mut data) = (String::new(), String::new());
        for line in BufReader::new(s).lines().map_while(Result::ok) {
            let l = line.trim_end();
            if let Some(v) = l.strip_prefix("event:") {
                kind = v.trim().to_owned();
            } else if let Some(v) = l.strip_prefix("data:") {
                data.push_str(v.trim());
            } else if l.is_empty() && !kind.is_empty() {
                let value = serde_json::from_str(&data).unwrap_or(Value::Null);
                if tx
                    .send((Instant::now(), std::mem::take(&mut kind), value))
                    .is_err()
                {
                    return;
                }
                data.clear();
            }
        }
    });
    Ok(rx)
}

/// An update on A, seen on B's event stream through the relay.
pub fn propagation(a: &Client, b: &Client, p: &Project, s: &Sizes) -> anyhow::Result<Figure> {
    let feed = event_feed(b, &format!("?project_id={}", p.id))?;
    std::thread::sleep(Duration::from_millis(200));
    let spools = p.of_kind(Kind::Spool);
    let mut times = Vec::with_capacity(s.propagations);
    for k in 0..s.propagations {
        let id = spools[k % spools.len()];
        let start = Instant::now();
        put_toggle(a, p, &spools, k, "test")?;
        loop {
            let (at, kind, data) = feed
                .recv_timeout(Duration::from_secs(30))
                .context("B never saw the update")?;
            if kind == "component.updated" && data["component"]["id"] == id {
                times.push(at - start);
                break;
            }
        }
    }
    Ok(Figure::ms("sync", "propagation A → relay → B", &times)
        .target(Stat::P50, 10.0)
        .note("from A's PUT to B's component.updated event; the p99 target is 50 ms"))
}

/// Like [`propagation`]'s figure, judged on its p99.
pub fn propagation_p99(f: &Figure) -> Figure {
    Figure {
        metric: "propagation A → relay → B (p99)".into(),
        note: "the same samples, p99 target".into(),
        ..f.clone()
    }
    .target(Stat::P99, 50.0)
}

fn relay_peer(c: &Client) -> anyhow::Result<(String, String)> {
    let status = ok("sync status", c.call("GET", "/v1/sync/status", None))?;
    let peer = status["peers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["kind"] == "relay"))
        .context("no relay peer")?;
    Ok((
        peer["peer_id"].as_str().context("peer id")?.to_owned(),
        peer["url"].as_str().context("peer url")?.to_owned(),
    ))
}

fn earned(c: &Client, project: &str) -> anyhow::Result<f64> {
    ok(
        "progress",
        patient_get(c, &format!("/v1/projects/{project}/progress"))?,
    )?["earned_hours"]
        .as_f64()
        .context("earned_hours")
}

/// A GET that waits out request timeouts for up to ten minutes: a daemon
/// applying a large sync backlog can leave its API unanswered for over a
/// minute (see FINDINGS.md), and a scenario measures through that.
fn patient_get(c: &Client, path: &str) -> anyhow::Result<(u16, Value)> {
    let started = Instant::now();
    loop {
        match c.try_call("GET", path, None, &[]) {
            Ok(answer) => return Ok(answer),
            Err(e) if started.elapsed() < Duration::from_secs(600) => {
                eprintln!("sitesync-bench: GET {path} unanswered ({e}); waiting");
            }
            Err(e) => anyhow::bail!("GET {path}: {e}"),
        }
    }
}

/// A goes offline, makes edits across many drawings, reconnects; the time
/// until B has all of them.
pub fn offline_catch_up(a: &Client, b: &Client, p: &Project, s: &Sizes) -> anyhow::Result<Figure> {
    let (peer, url) = relay_peer(a)?;
    ok(
        "A offline",
        a.call("DELETE", &format!("/v1/sync/peers/{peer}"), None),
    )?;
    let mut updates = Vec::new();
    for drawing in p.drawings.iter().take(s.offline_drawings) {
        for (id, kind) in drawing {
            let key = match kind {
                Kind::Spool => "support",
                Kind::Support => "install",
                _ => continue,
            };
            updates.push(json!({"component_id": id, "milestone": key, "completed": true}));
        }
    }
    for chunk in updates.chunks(10_000) {
        bulk(a, &p.id, chunk)?;
    }
    let want = earned(a, &p.id)?;
    let start = Instant::now();
    ok(
        "A back online",
        a.call(
            "POST",
            "/v1/sync/peers",
            Some(&json!({"url": url, "kind": "relay"})),
        ),
    )?;
    loop {
        if (earned(b, &p.id)? - want).abs() < 1e-6 {
            break;
        }
        ensure!(start.elapsed() < Duration::from_secs(600), "B never caught up");
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(Figure::ms(
        "sync",
        &format!("offline catch-up, {} edits", updates.len()),
        &[start.elapsed()],
    )
    .target(Stat::Value, 3000.0)
    .note(format!(
        "edits across {} drawings made while disconnected; from reconnect until B's earned hours match",
        s.offline_drawings.min(p.drawings.len())
    )))
}

fn relay_bytes(relay: &Relay) -> anyhow::Result<f64> {
    let (status, text) = relay.http_get("/metrics");
    ensure!(status == 200, "relay metrics: {status}");
    Ok(text
        .lines()
        .filter(|l| l.starts_with("sitesync_relay_bytes_in") || l.starts_with("sitesync_relay_bytes_out"))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum())
}

/// B reconnects with nothing changed: time until its summary round is done,
/// and the bytes on the wire.
pub fn reconnect(b: &Client, relay: &Relay, p: &Project, s: &Sizes) -> anyhow::Result<Vec<Figure>> {
    let mut times = Vec::new();
    let mut sizes = Vec::new();
    for _ in 0..s.reconnects {
        let (peer, url) = relay_peer(b)?;
        ok(
            "B offline",
            b.call("DELETE", &format!("/v1/sync/peers/{peer}"), None),
        )?;
        std::thread::sleep(Duration::from_millis(300));
        let before = relay_bytes(relay)?;
        let start = wall_ms();
        ok(
            "B back",
            b.call(
                "POST",
                "/v1/sync/peers",
                Some(&json!({"url": url, "kind": "relay"})),
            ),
        )?;
        let last = quiet(b, Duration::from_millis(500))?;
        let synced_ms = last.as_deref().and_then(chrono_ms).context("last_synced_at")?;
        times.push(Duration::from_millis((synced_ms - start).max(0) as u64));
        sizes.push((relay_bytes(relay)? - before) / 1000.0);
    }
    let docs = p.drawings.len() + 1;
    Ok(vec![
        Figure::ms(
            "sync",
            &format!("reconnect, nothing changed, {docs} documents"),
            &times,
        )
        .target(Stat::P99, 200.0)
        .note("from POST /v1/sync/peers to B's last summary acknowledgement (last_synced_at)"),
        Figure::new(
            "sync",
            &format!("reconnect bytes on the wire, {docs} documents"),
            "KB",
            sizes,
        )
        .target(Stat::P99, 200.0)
        .note("relay bytes in + out during the reconnect"),
    ])
}

/// RFC 3339 UTC with milliseconds (`2026-11-22T08:39:13.479Z`) to epoch ms.
/// Waits until `c` is connected and its last sync time has not moved for
/// `still`; returns that time. Scenarios that time one sync start from a
/// quiet daemon, so what an earlier scenario left running (a backlog of
/// bulk writes still reaching B) is not counted as their latency.
pub fn quiet(c: &Client, still: Duration) -> anyhow::Result<Option<String>> {
    let (mut last, mut still_since) = (None, Instant::now());
    let started = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let status = ok("sync status", patient_get(c, "/v1/sync/status")?)?;
        let connected = status["peers"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| p["state"] == "connected"));
        let synced = status["last_synced_at"].as_str().map(str::to_owned);
        if synced != last {
            last = synced;
            still_since = Instant::now();
        } else if connected && still_since.elapsed() > still {
            return Ok(last);
        }
        ensure!(
            started.elapsed() < Duration::from_secs(600),
            "sync never went quiet (last sync at {last:?})"
        );
    }
}

fn chrono_ms(t: &str) -> Option<i64> {
    let (date, time) = t.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut h = hms.split(':').map(|x| x.parse::<i64>().ok());
    let (hh, mm, ss) = (h.next()??, h.next()??, h.next()??);
    let ms: i64 = format!("{frac:0<3}")[..3].parse().ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + hh) * 60 + mm) * 60_000 + ss * 1000 + ms)
}

/// A fresh daemon receives the whole project from the relay; `target` is
/// the time it must take, if the issue sets one. Timed until the clone
/// has every component and its sync has settled.
pub fn cold_clone(
    dir: &std::path::Path,
    relay: &Relay,
    token: &str,
    p: &Project,
    target_ms: Option<f64>,
) -> anyhow::Result<Vec<Figure>> {
    let args = sync_flags(token, relay);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let start = Instant::now();
    let started_at = wall_ms();
    let c = Daemon::start(dir, &refs);
    loop {
        let (status, list) = c.call("GET", "/v1/projects", None);
        let count = list["items"]
            .as_array()
            .and_then(|ps| ps.iter().find(|x| x["id"] == p.id.as_str()))
            .and_then(|x| x["component_count"].as_u64());
        if status == 200 && count == Some(p.components as u64) {
            break;
        }
        ensure!(
            start.elapsed() < Duration::from_secs(1800),
            "the clone never completed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Every component is here; the history behind them may still be
    // arriving (an aged project's is most of what travels): done once the
    // clone's sync has been quiet a while, at its last applied change.
    let counted = start.elapsed();
    let last = quiet(&c, Duration::from_secs(3))?;
    let settled = last
        .as_deref()
        .and_then(chrono_ms)
        .map(|at| Duration::from_millis((at - started_at).max(0) as u64));
    let took = settled.map_or(counted, |s| s.max(counted));
    let rss = c.pid().map_or(f64::NAN, rss_mb);
    let time = Figure::ms(
        "sync",
        &format!("cold clone, {} components", p.components),
        &[took],
    );
    let until = "new daemon start until its component count matches and its sync has settled (its last applied change)";
    Ok(vec![
        match target_ms {
            Some(limit) => time.target(Stat::Value, limit).note(until),
            None => time.note(format!("must complete (no time target); {until}")),
        },
        Figure::new(
            "sync",
            &format!("cold clone, {} components: clone's resident memory", p.components),
            "MB",
            vec![rss],
        ),
    ])
}

/// The second clone target: a project of `components` (500,000 in
/// a full run) completes. A daemon of its own organisation (`org`, so the
/// other daemons never receive it) builds the project and hands it to the
/// relay, then stops; a fresh daemon clones it.
pub fn large_clone(
    dir: &std::path::Path,
    relay: &Relay,
    org: &str,
    components: usize,
    s: &Sizes,
    seed: u64,
) -> anyhow::Result<Vec<Figure>> {
    let token = Relay::token(&relay.data_dir, org, &[]);
    let args = sync_flags(&token, relay);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut source = Daemon::start(&dir.join("large-source"), &refs);
    let p = crate::project::generate(&source.client(), components, s.per_drawing, seed)?;
    wait_pending_zero(&source.client())?;
    source.stop();
    let import = Figure::ms(
        "sync",
        &format!("CSV import job, {} rows", p.components),
        &[p.import_time],
    )
    .note("builds the project the clone below receives (information; no target)");
    let mut out = vec![import];
    out.extend(cold_clone(&dir.join("large-clone"), relay, &token, &p, None)?);
    Ok(out)
}

/// Brings a daemon's derived state up to its documents before a timed
/// scenario: the project's index (a progress read) and its operations
/// index (a listing catches it up before it answers). A daemon keeps both
/// current write by write; only a store written behind its back (the aged
/// project's history) or a clone leaves a catch-up to do, a one-off that
/// would otherwise be timed as the first writes' cost.
pub fn settle(c: &Client, project: &str) -> anyhow::Result<()> {
    let c = c.patient(Duration::from_secs(600));
    ok(
        "progress",
        c.call("GET", &format!("/v1/projects/{project}/progress"), None),
    )?;
    ok(
        "operations",
        c.call("GET", &format!("/v1/projects/{project}/operations?limit=1"), None),
    )?;
    Ok(())
}

/// Waits until the daemon behind `a` is connected and has no change the relay has not acknowledged.
pub fn wait_pending_zero(a: &Client) -> anyhow::Result<()> {
    let start = Instant::now();
    // A daemon restarted with many unacknowledged documents decodes them
    // for its first count; give a status the time it takes rather than
    // fail the run.
    let a = a.patient(Duration::from_secs(600));
    loop {
        let status = ok("sync status", a.call("GET", "/v1/sync/status", None))?;
        let pending: u64 = status["pending"]
            .as_object()
            .map(|m| m.values().filter_map(|v| v.as_u64()).sum())
            .unwrap_or(0);
        let connected = status["peers"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| p["state"] == "connected"));
        if connected && pending == 0 {
            return Ok(());
        }
        ensure!(
            start.elapsed() < Duration::from_secs(1800),
            "the daemon still has {pending} changes pending"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The flags a daemon needs to sync through `relay`.
pub fn sync_flags(token: &str, relay: &Relay) -> Vec<String> {
    vec![
        "--token".into(),
        token.into(),
        "--relay".into(),
        relay.ws_url(),
        "--reconnect-min-ms".into(),
        "100".into(),
    ]
}

/// Daemon A's resident memory once the writes have decoded every drawing
/// they touched (the bulks of 10,000 alone cover 2,000): what the memory
/// figure after a start-up, taken with no document decoded, leaves out.
/// Information, no target; FINDINGS weighs it against the cache size.
/// Read after the memory trim's 2 s period, so freed pages count as the
/// daemon returns them.
pub fn working_memory(a: &Daemon) -> Figure {
    std::thread::sleep(Duration::from_millis(2500));
    Figure::new(
        "daemon",
        "resident memory after the writes and queries",
        "MB",
        vec![a.pid().map_or(f64::NAN, rss_mb)],
    )
    .note(format!(
        "daemon A after the import, the writes and the queries, which decode every drawing; the cache \
         keeps at most {} documents and {} MiB by estimate; information: the 300 MB target is the \
         start-up figure",
        sitesync_sync::RepoConfig::default().max_cached,
        sitesync_sync::RepoConfig::default().max_cached_bytes >> 20
    ))
}

/// The daemon restarts on its store: time until it serves, the first
/// component query (which builds the project index from its saved entries),
/// resident memory.
pub fn startup(
    data: &std::path::Path,
    args: &[String],
    p: &Project,
    s: &Sizes,
) -> anyhow::Result<Vec<Figure>> {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (mut serving, mut first, mut rss) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..s.restarts {
        let start = Instant::now();
        let mut d = Daemon::start(data, &refs);
        loop {
            if d.try_call("GET", "/v1/health", None, &[])
                .is_ok_and(|(s, _)| s == 200)
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        serving.push(start.elapsed());
        let path = format!(
            "/v1/projects/{}/components?status=in_progress&sort=-completion&limit=100",
            p.id
        );
        let patient = d.patient(Duration::from_secs(600));
        let (t, r) = timed(|| patient.call("GET", &path, None));
        ok("first query", r)?;
        first.push(t);
        rss.push(d.pid().map_or(f64::NAN, rss_mb));
        d.stop();
    }
    Ok(vec![
        Figure::ms(
            "daemon",
            &format!("start-up until serving, {} components", p.components),
            &serving,
        )
        .target(Stat::Value, 2000.0)
        .note("spawn until GET /v1/health answers"),
        Figure::ms("daemon", "first component query after start-up", &first)
            .note("builds the project index: saved entries, and documents changed since they were saved"),
        Figure::new("daemon", "resident memory after the first query", "MB", rss).target(Stat::Value, 300.0),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_millis_to_epoch() {
        assert_eq!(chrono_ms("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(chrono_ms("2024-11-22T02:40:00.123Z"), Some(1_732_243_200_123));
    }
}
