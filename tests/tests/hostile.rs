//! Hostile peers and the topologies sites really run: a device with one
//! valid token playing by hand against the real relay, and loops of relay
//! and LAN links between real daemons.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use sitesync_sync::link::{self, FrameSocket as _};
use sitesync_sync::model::automerge::{ActorId, Automerge};
use sitesync_sync::protocol::{self, Message};
use sitesync_sync::session::{Output, Session};
use sitesync_sync::tls::{ClientTls, Trust};
use sitesync_sync::{DocStore, MemBackend, Repo, RepoConfig, host::RepoHost};
use sitesync_tests::{Daemon, Relay, Seeded, eventually, seed, sync_args};

const WAIT: Duration = Duration::from_secs(30);

use sitesync_tests::{acme_relay_dir as org, device, get_ok as get};

fn settled(d: &Daemon, s: &Seeded) -> Option<()> {
    let st = get(d, "/v1/sync/status")?;
    (st["pending"][&s.project] == 0).then_some(())
}

/// A counter's value in Prometheus text (summed over its label sets).
fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A WebSocket to the relay at `url`, as a device opens one.
async fn dial_relay(url: &str) -> link::ClientSocket {
    let tls = ClientTls::new(&[]).unwrap();
    link::connect(url, Duration::from_secs(5), &tls, Trust::Roots)
        .await
        .unwrap()
        .0
}

/// Connects to `url` as a device holding `token`, completes the handshake,
/// sends `frames`, and returns the first refusal the other side sends
/// (code, fatal), or `None` when the connection ends without one.
fn intrude(url: &str, token: &str, frames: Vec<Message>) -> Option<(String, bool)> {
    match intrude_until_answered(url, token, frames) {
        Some(Message::Error { code, fatal, .. }) => Some((code, fatal)),
        _ => None,
    }
}

/// [`intrude`], returning the first refusal, acknowledgement or pong the
/// other side sends.
fn intrude_until_answered(url: &str, token: &str, frames: Vec<Message>) -> Option<Message> {
    let token = sitesync_sync::credentials::Token::parse(token).unwrap();
    let url = url.to_owned();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            let host = RepoHost::new(Arc::new(Repo::<Automerge>::new(
                DocStore::new(MemBackend::default()),
                ActorId::random(),
                RepoConfig::default(),
            )));
            let mut socket = dial_relay(&url).await;
            let mut session = Session::client(uuid::Uuid::new_v4(), "intruder", token, [3; 32]);
            let mut outs = session.start();
            while session.peer().is_none() {
                for o in outs.drain(..) {
                    if let Output::Send(m) = o {
                        socket.send(protocol::encode(&m)).await.unwrap();
                    }
                }
                let frame = socket.recv().await.expect("open").expect("frame");
                outs = session.handle(&frame, 0, &host);
            }
            // The Auth that completes the handshake (and our empty summaries).
            for o in outs {
                if let Output::Send(m) = o {
                    socket.send(protocol::encode(&m)).await.unwrap();
                }
            }
            for m in frames {
                socket.send(protocol::encode(&m)).await.unwrap();
            }
            // Read until a refusal (summaries and syncs may come first).
            loop {
                match tokio::time::timeout(Duration::from_secs(10), socket.recv()).await {
                    Ok(Some(Ok(frame))) => {
                        if let Ok(m @ (Message::Error { .. } | Message::Ack { .. } | Message::Pong { .. })) =
                            protocol::decode(&frame)
                        {
                            return Some(m);
                        }
                    }
                    _ => return None,
                }
            }
        })
}

/// The reproduction: relay R; A with `--relay R --peer-listen L`;
/// B with `--relay R --peer L`. One `PUT /v1/presence` on A used to circle
/// R → B → LAN → A → R forever (~11,000 relay messages a second, ~4,500
/// `presence.updated` a second on B). Now each device publishes it once and
/// the relay's traffic falls back to its pings.
#[test]
fn a_presence_heartbeat_crosses_a_loop_of_relay_and_lan_once() {
    let root = tempfile::tempdir().unwrap();
    let rdir = org(root.path());
    let relay = Relay::start(&rdir);
    let url = relay.ws_url();
    let a = device(
        root.path(),
        &rdir,
        "a",
        &["--relay", &url, "--peer-listen", "127.0.0.1:0"],
    );
    let lan = a.peer_url.clone().unwrap();
    let b = device(root.path(), &rdir, "b", &["--relay", &url, "--peer", &lan]);
    let s = seed(&a);
    eventually("A's project on B", WAIT, || {
        get(&b, &format!("/v1/projects/{}/components/{}", s.project, s.spool))
    });
    eventually("A settled", WAIT, || settled(&a, &s));

    let (bc, ac) = (b.client(), a.client());
    let on_b = std::thread::spawn(move || bc.events("", None, 10_000, Duration::from_secs(3)));
    let on_a = std::thread::spawn(move || ac.events("", None, 10_000, Duration::from_secs(3)));
    std::thread::sleep(Duration::from_millis(500));
    let beat = json!({"project_id": s.project, "activity": "viewing", "user": "ana"});
    assert_eq!(a.call("PUT", "/v1/presence", Some(&beat)).0, 204);
    eventually("presence on B", WAIT, || {
        let p = get(&b, &format!("/v1/projects/{}/presence", s.project))?;
        p["items"].as_array().filter(|i| i.len() == 1).cloned()
    });
    // The loop has had time to circle thousands of times.
    std::thread::sleep(Duration::from_secs(1));
    let (_, before) = relay.http_get("/metrics");
    std::thread::sleep(Duration::from_secs(1));
    let (_, after) = relay.http_get("/metrics");
    let name = "sitesync_relay_messages_in_total";
    let per_second = counter(&after, name) - counter(&before, name);
    // Pings and pongs of two links at 200 ms, both ways: ~20 a second.
    assert!(per_second < 200, "{per_second} frames a second reached the relay");

    let presence = |events: Vec<(Option<String>, String, Value)>| {
        events.into_iter().filter(|e| e.1 == "presence.updated").count()
    };
    assert_eq!(
        presence(on_a.join().unwrap()),
        1,
        "A publishes its heartbeat once"
    );
    assert_eq!(
        presence(on_b.join().unwrap()),
        1,
        "B publishes A's heartbeat once"
    );
}

/// A relay's memory for decoded documents is bounded for every
/// organisation together (`--max-cache-mb`), not per organisation: one
/// whose changes go over evicts its own least recently used documents,
/// and the relay empties the organisations idle longest. Sync goes on: a
/// new device clones everything afterwards.
#[test]
fn the_relay_keeps_every_organisations_documents_within_one_memory_budget() {
    const MIB: u64 = 1 << 20;
    let root = tempfile::tempdir().unwrap();
    let rdir = org(root.path());
    Relay::create_org(&rdir, "globex");
    let relay = Relay::start_with(&rdir, "127.0.0.1:0", &["--max-cache-mb", "1"]);
    let url = relay.ws_url();
    let metric = |name: &str| counter(&relay.http_get("/metrics").1, name);
    let cached = || metric("sitesync_relay_cache_bytes");
    // The budget, and the one document in use, whatever it weighs (a
    // drawing of 50 components: ~90 KB).
    let bound = MIB + MIB / 2;
    // 1,500 components: 30 drawings, ~2.7 MB decoded.
    let mut csv = String::from("DWG,TAG,TEMPLATE,QTY\n");
    for i in 0..1500 {
        csv.push_str(&format!("BIG-{:03},T-{i:05},Pipe,{}\n", i / 50, 1 + i % 90));
    }
    let fill = |d: &Daemon| {
        let s = seed(d);
        let (status, accepted) = d.upload(
            &format!("/v1/projects/{}/imports", s.project),
            csv.as_bytes(),
            "text/csv",
        );
        assert_eq!(status, 202, "{accepted}");
        let job = d.wait_job(accepted["job_id"].as_str().unwrap());
        assert_eq!(job["state"], "completed", "{}", job["message"]);
        eventually("the import stored on the relay", WAIT, || settled(d, &s));
        s
    };
    let a = sitesync_tests::start_syncing(
        &root.path().join("a"),
        &Relay::token(&rdir, "acme", &[]),
        &["--relay", &url],
    );
    let s = fill(&a);
    assert!(cached() <= bound, "{} bytes cached", cached());

    let g = sitesync_tests::start_syncing(
        &root.path().join("g"),
        &Relay::token(&rdir, "globex", &[]),
        &["--relay", &url],
    );
    fill(&g);
    eventually("the idle organisation shed", WAIT, || {
        (metric("sitesync_relay_spaces_shed_total") >= 1).then_some(())
    });
    assert!(cached() <= bound, "{} bytes cached", cached());

    // Nothing was lost: a new device of acme gets all of it.
    let b = device(root.path(), &rdir, "b", &["--relay", &url]);
    eventually("the whole project on B", WAIT, || {
        let p = get(&b, &format!("/v1/projects/{}", s.project))?;
        (p["component_count"].as_u64()? >= 1500).then_some(())
    });
}

/// The 15 bytes: a sync message whose `have` Bloom filter claims
/// 2³² probes. Automerge accepts it and the next sync message generated
/// for the document asks for 17 GB, aborting the relay. The relay refuses
/// it, closes only that connection, counts it, and syncs on.
#[test]
fn a_bloom_filter_bomb_closes_only_its_connection() {
    let root = tempfile::tempdir().unwrap();
    let rdir = org(root.path());
    let relay = Relay::start(&rdir);
    let url = relay.ws_url();
    let a = device(root.path(), &rdir, "a", &["--relay", &url]);
    let b = device(root.path(), &rdir, "b", &["--relay", &url]);
    let s = seed(&a);
    eventually("A settled", WAIT, || settled(&a, &s));
    let pid: uuid::Uuid = s.project.parse().unwrap();
    let bomb = vec![
        0x42, 0x00, 0x00, 0x01, 0x00, 0x08, 0x08, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F, 0x00, 0x00,
    ];
    let refusal = intrude(
        &url,
        &Relay::token(&rdir, "acme", &[]),
        vec![Message::Sync {
            project: pid.into(),
            doc: pid.into(),
            message: bomb,
        }],
    );
    assert_eq!(refusal, Some(("malformed_frame".to_owned(), true)));

    // The relay lives on, and everyone else's sync with it.
    s.erect_spool(&a);
    eventually("A's edit on B", WAIT, || {
        let c = get(&b, &format!("/v1/projects/{}/components/{}", s.project, s.spool))?;
        (c["completion_percent"].as_f64()? > 0.0).then_some(())
    });
    let (_, metrics) = relay.http_get("/metrics");
    assert!(
        metrics.contains("sitesync_relay_refused_total{reason=\"malformed_frame\"} 1"),
        "{metrics}"
    );
}

/// Plays a device whose token covers P1 only, sending changes to a P2
/// document: the relay refuses with `out_of_scope` and stores nothing.
#[test]
fn a_device_pushing_changes_outside_its_scope_is_refused_and_nothing_is_stored() {
    use sitesync_sync::RedbBackend;

    let root = tempfile::tempdir().unwrap();
    let rdir = org(root.path());
    let mut relay = Relay::start(&rdir);
    let a = device(root.path(), &rdir, "a", &["--relay", &relay.ws_url()]);
    let p1 = seed(&a);
    let p2 = seed(&a);
    eventually("both projects on the relay", WAIT, || {
        settled(&a, &p1)?;
        settled(&a, &p2)
    });
    let p2_id: uuid::Uuid = p2.project.parse().unwrap();

    let (push, intruder) = foreign_change(p2_id);
    let refusal = intrude(
        &relay.ws_url(),
        &Relay::token(&rdir, "acme", &[&p1.project]),
        vec![push],
    );
    assert_eq!(refusal, Some(("out_of_scope".to_owned(), true)));

    // Nothing of it is in the relay's store.
    relay.kill();
    let store = Repo::<Automerge>::new(
        DocStore::new(RedbBackend::open(&rdir.join("spaces").join("acme")).unwrap()),
        ActorId::random(),
        RepoConfig::default(),
    );
    let has = store
        .read_raw(p2_id, |am| am.get_change_meta_by_hash(&intruder).is_some())
        .unwrap()
        .expect("the relay holds P2");
    assert!(!has, "the out-of-scope change was stored");
}

/// A change of an intruder's own making, dressed as an update of document
/// (and project) `id`: the Sync frame, and the change's hash.
fn foreign_change(id: uuid::Uuid) -> (Message, sitesync_sync::model::automerge::ChangeHash) {
    use sitesync_sync::model::automerge::sync::{State as SyncState, SyncDoc as _};
    use sitesync_sync::model::automerge::transaction::Transactable as _;
    use sitesync_sync::model::automerge::{Automerge, AutomergeError, ROOT};
    let mut doc = Automerge::new();
    doc.transact::<_, _, AutomergeError>(|tx| {
        tx.put(ROOT, "intruder", true)?;
        Ok(())
    })
    .unwrap();
    let hash = doc.get_heads()[0];
    let mut message = doc.generate_sync_message(&mut SyncState::new()).unwrap();
    message.changes = vec![doc.save()].into();
    let push = Message::Sync {
        project: id.into(),
        doc: id.into(),
        message: message.encode(),
    };
    (push, hash)
}

/// Item 4: organisations share no namespace of ids on the relay. A device
/// of another organisation that learnt acme's project id pushes a change
/// under it before acme's device ever brought the project there (the
/// relay accepts it, into that organisation's own space). Acme's device
/// then syncs as if nobody had: no `out_of_scope`, its other device gets
/// the project, and the intruder's change reaches neither.
#[test]
fn another_organisation_cannot_claim_a_project_id_first() {
    let root = tempfile::tempdir().unwrap();
    let rdir = org(root.path());
    Relay::create_org(&rdir, "evil");
    let mut relay = Relay::start(&rdir);
    let token = Relay::token(&rdir, "acme", &[]);
    let a_dir = root.path().join("a");
    let a = sitesync_tests::start_syncing(&a_dir, &token, &[]);
    let s = seed(&a);
    let pid: uuid::Uuid = s.project.parse().unwrap();
    drop(a);

    let (push, intruder) = foreign_change(pid);
    let answer = intrude_until_answered(&relay.ws_url(), &Relay::token(&rdir, "evil", &[]), vec![push]);
    assert!(matches!(answer, Some(Message::Ack { .. })), "{answer:?}");

    let a = sitesync_tests::start_syncing(&a_dir, &token, &["--relay", &relay.ws_url()]);
    let b = device(root.path(), &rdir, "b", &["--relay", &relay.ws_url()]);
    eventually("A's project on B through the relay", WAIT, || {
        get(&b, &format!("/v1/projects/{}/components/{}", s.project, s.spool))
    });
    eventually("A settled", WAIT, || settled(&a, &s));
    for d in [&a, &b] {
        let st = get(d, "/v1/sync/status").unwrap();
        assert_eq!(st["peers"][0]["state"], "connected", "{st}");
    }
    let project = get(&b, &format!("/v1/projects/{}", s.project)).unwrap();
    assert_eq!(project["name"], "Plant", "{project}");

    // On the relay, the intruder's change is in its organisation's space
    // only; acme's document of the same id never saw it.
    relay.kill();
    let holds = |org: &str| {
        let repo = Repo::<Automerge>::new(
            DocStore::new(sitesync_sync::RedbBackend::open(&rdir.join("spaces").join(org)).unwrap()),
            ActorId::random(),
            RepoConfig::default(),
        );
        repo.read_raw(pid, |am| am.get_change_meta_by_hash(&intruder).is_some())
            .unwrap()
    };
    assert_eq!(holds("evil"), Some(true));
    assert_eq!(holds("acme"), Some(false));
}

/// A flood of presence from one connection: past its budget (a burst of
/// twice `presence::PER_SECOND`), entries are dropped and counted; the
/// connection stays and answers.
#[test]
fn presence_past_a_connections_budget_is_dropped_and_counted() {
    use sitesync_sync::protocol::{PresenceEntry, WireId};

    let root = tempfile::tempdir().unwrap();
    let rdir = org(root.path());
    let relay = Relay::start(&rdir);
    let a = device(root.path(), &rdir, "a", &["--relay", &relay.ws_url()]);
    let s = seed(&a);
    eventually("A settled", WAIT, || settled(&a, &s));
    let pid: uuid::Uuid = s.project.parse().unwrap();
    let flood = (1..=300).map(|seq| {
        Message::Presence(PresenceEntry {
            project: pid.into(),
            component: None,
            user: "flood".into(),
            device: WireId([9; 16]),
            activity: 0,
            seq,
        })
    });
    let frames: Vec<Message> = flood.chain([Message::Ping { nonce: 77 }]).collect();
    let answer = intrude_until_answered(&relay.ws_url(), &Relay::token(&rdir, "acme", &[]), frames);
    assert_eq!(answer, Some(Message::Pong { nonce: 77 }));
    let (_, metrics) = relay.http_get("/metrics");
    let limited = metrics
        .lines()
        .find(|l| l.starts_with("sitesync_relay_refused_total{reason=\"presence_rate\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(limited >= 100.0, "{metrics}");
}

/// Reads until the other side closes; how long that took (at most `limit`).
fn closed_within(stream: &mut std::net::TcpStream, limit: Duration) -> Option<Duration> {
    use std::io::Read as _;
    let started = std::time::Instant::now();
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Some(started.elapsed()),
            Err(_) => return None,
        }
    }
}

/// Slow and idle sockets give their slots back: a request whose headers
/// never finish is closed after the header-read timeout (relay, API, LAN
/// listener alike), a WebSocket that never says Hello after the handshake
/// timeout, and sockets past a listener's cap are closed as they arrive,
/// upgraded or not, and counted.
#[test]
fn slow_and_idle_sockets_give_their_slots_back() {
    use std::io::Write as _;
    use std::net::TcpStream;
    let root = tempfile::tempdir().unwrap();
    let rdir = org(root.path());
    // Short header timeouts on one pair, tight caps on the other, so idle
    // sockets held against a cap are not closed by the timeout meanwhile.
    let relay = Relay::start_with(&rdir, "127.0.0.1:0", &["--header-timeout-ms", "300"]);
    let capped_relay = Relay::start_with(
        &rdir.with_file_name("relay2"),
        "127.0.0.1:0",
        &["--max-connections", "1"],
    );
    let a = device(
        root.path(),
        &rdir,
        "a",
        &["--peer-listen", "127.0.0.1:0", "--header-timeout-ms", "300"],
    );
    let b = device(
        root.path(),
        &rdir,
        "b",
        &[
            "--peer-listen",
            "127.0.0.1:0",
            "--max-peers",
            "2",
            "--max-connections",
            "4",
        ],
    );
    let lan = a.lan_addr().unwrap();

    // Headers that never finish: closed after the timeout, on every listener.
    for addr in [relay.addr, a.addr, lan] {
        let mut slow = TcpStream::connect(addr).unwrap();
        slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").unwrap();
        let took = closed_within(&mut slow, Duration::from_secs(20));
        assert!(took.is_some(), "{addr}: a trickling socket was never closed");
    }

    // A WebSocket that never sends its Hello: closed after the handshake
    // timeout (two pings of 200 ms, at least 2 s).
    let url = relay.ws_url();
    let ended = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            let mut ws = dial_relay(&url).await;
            tokio::time::timeout(Duration::from_secs(20), async {
                while let Some(Ok(_)) = ws.recv().await {}
            })
            .await
            .is_ok()
        });
    assert!(ended, "a silent WebSocket kept its slot");

    // Caps: the LAN listener takes 2 sockets, the API 4; the next is closed
    // at once, and the API counts it.
    for (addr, cap) in [(b.lan_addr().unwrap(), 2), (b.addr, 4)] {
        let held: Vec<TcpStream> = (0..cap).map(|_| TcpStream::connect(addr).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(200));
        let mut extra = TcpStream::connect(addr).unwrap();
        let took = closed_within(&mut extra, Duration::from_secs(5));
        assert!(took.is_some(), "{addr}: a socket past the cap of {cap} was kept");
        drop(held);
    }
    let metrics = eventually("the API answers again", WAIT, || {
        match b.try_call("GET", "/metrics", None, &[]) {
            Ok((200, Value::String(text))) => Some(text),
            _ => None,
        }
    });
    for refused in [
        "sitesync_connections_refused_total",
        "sitesync_peers_refused_total",
    ] {
        assert!(counter(&metrics, refused) >= 1, "{refused}: {metrics}");
    }

    // The relay caps open sockets at its device limit plus 64.
    let held: Vec<TcpStream> = (0..65)
        .map(|_| TcpStream::connect(capped_relay.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut extra = TcpStream::connect(capped_relay.addr).unwrap();
    assert!(closed_within(&mut extra, Duration::from_secs(5)).is_some());
    drop(held);
    let metrics = eventually("the relay answers again", WAIT, || {
        let (status, text) = capped_relay.http_get("/metrics");
        (status == 200).then_some(text)
    });
    assert!(
        metrics.contains("sitesync_relay_refused_total{reason=\"connection_limit\"}"),
        "{metrics}"
    );
}

/// One daemon of the mixed topology: how to start it again after a stop
/// or a kill, and the proxy other daemons dial its LAN listener through.
struct Node {
    dir: std::path::PathBuf,
    args: Vec<String>,
    daemon: Option<Daemon>,
    /// Index of the proxy in front of its `--peer-listen`, if it has one.
    lan: Option<usize>,
}

impl Node {
    fn d(&self) -> &Daemon {
        self.daemon.as_ref().expect("running")
    }

    fn start(&mut self, proxies: &[sitesync_tests::proxy::Proxy]) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let d = Daemon::start(&self.dir, &args);
        if let (Some(i), Some(lan)) = (self.lan, d.lan_addr()) {
            proxies[i].retarget(lan);
        }
        self.daemon = Some(d);
    }
}

/// The sync frames a process has received, from its `/metrics`.
fn frames_in(node: &Node) -> u64 {
    match node.d().try_call("GET", "/metrics", None, &[]) {
        Ok((200, Value::String(text))) => counter(&text, "sitesync_sync_frames_in_total"),
        other => panic!("metrics: {other:?}"),
    }
}

/// The topology sites run, misbehaving: four daemons on one relay, each
/// through a fault-injecting proxy, and LAN links that make loops (A–B
/// over the LAN and through the relay; A–B–C a triangle). For a bounded
/// time: random edits (quantity entries, a discrete toggle), presence,
/// cuts, partitions, delays, restarts and SIGKILLs. Then everything heals
/// and must converge, with every acknowledged quantity entry counted (the
/// sum rule), and traffic must settle: after the last edit, frame counters
/// grow only by pings. The seed is printed; `SITESYNC_RANDOM_SEED` replays.
#[test]
fn a_mixed_topology_with_loops_converges_and_settles() {
    use rand::Rng;
    use sitesync_tests::proxy::{Mode, Proxy};

    let (seed_value, mut rng) = sitesync_tests::seeded_rng();
    let root = tempfile::tempdir().unwrap();
    let rdir = org(root.path());
    let relay = Relay::start(&rdir);

    // Proxies 0..4: each daemon's relay link. 4 and 5: A's and B's LAN
    // listeners (aimed at them once they listen, and again whenever they
    // restart on a new port).
    let proxies: Vec<Proxy> = (0..6).map(|_| Proxy::start(relay.addr)).collect();
    let mut nodes: Vec<Node> = Vec::new();
    for (i, name) in ["a", "b", "c", "d"].into_iter().enumerate() {
        let mut args = sync_args(&Relay::token(&rdir, "acme", &[]));
        args.extend(["--relay".into(), proxies[i].ws_url()]);
        if i < 2 {
            args.extend(["--peer-listen".into(), "127.0.0.1:0".into()]);
        }
        // B dials A; C dials A and B (loops over the LAN and through the
        // relay); D has the relay only.
        let dials = match i {
            1 => 1,
            2 => 2,
            _ => 0,
        };
        for lan in [4, 5].into_iter().take(dials) {
            args.extend(["--peer".into(), proxies[lan].wss_url()]);
        }
        let mut node = Node {
            dir: root.path().join(name),
            args,
            daemon: None,
            lan: (i < 2).then_some(4 + i),
        };
        node.start(&proxies);
        nodes.push(node);
    }
    let s = seed(nodes[0].d());
    let p = s.project.clone();
    for n in &nodes {
        eventually("everyone has the project", WAIT, || {
            get(n.d(), &format!("/v1/projects/{p}/components/{}", s.pipe))?;
            get(n.d(), &format!("/v1/projects/{p}/components/{}", s.spool))
        });
    }

    let mut sum = 0i64;
    let (mut restarts, mut kills) = (0, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    while std::time::Instant::now() < deadline {
        let i = rng.random_range(0..nodes.len());
        let proxy = rng.random_range(0..proxies.len());
        match rng.random_range(0..40) {
            0..=2 => proxies[proxy].set_mode(Mode::Down),
            3..=5 => proxies[proxy].set_mode(Mode::Pass),
            6 | 7 => proxies[proxy].cut(),
            8 => proxies[proxy].set_mode(Mode::Blackhole),
            9 => proxies[proxy].set_mode(Mode::Delay(Duration::from_millis(rng.random_range(1..40)))),
            10 if restarts < 2 => {
                restarts += 1;
                nodes[i].daemon.take().unwrap().stop();
                nodes[i].start(&proxies);
            }
            11 if kills < 2 => {
                kills += 1;
                nodes[i].daemon.take().unwrap().kill();
                nodes[i].start(&proxies);
            }
            12..=17 => {
                let user = ["ana", "bo", "cy"][rng.random_range(0..3)];
                let beat = json!({"project_id": p, "activity": "viewing", "user": user});
                assert_eq!(nodes[i].d().call("PUT", "/v1/presence", Some(&beat)).0, 204);
            }
            18..=23 => {
                let done = rng.random_bool(0.5);
                let path = format!("/v1/projects/{p}/components/{}/milestones/erect", s.spool);
                let (status, body) = nodes[i].d().call("PUT", &path, Some(&json!({"completed": done})));
                assert_eq!(status, 200, "{body}");
            }
            _ => {
                let delta = rng.random_range(1..20);
                let path = format!("/v1/projects/{p}/components/{}/milestones/install", s.pipe);
                let (status, body) = nodes[i]
                    .d()
                    .call("PUT", &path, Some(&json!({"quantity_delta": delta})));
                assert_eq!(status, 200, "{body}");
                // Acknowledged: it must be counted everywhere in the end.
                sum += delta;
            }
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..50)));
    }
    eprintln!("random phase done: {restarts} restarts, {kills} kills, quantity {sum}");
    for proxy in &proxies {
        proxy.set_mode(Mode::Pass);
    }

    let view = |n: &Node| -> Option<(Value, Value)> {
        let list = get(n.d(), &format!("/v1/projects/{p}/components?limit=1000"))?;
        let pipe = get(n.d(), &format!("/v1/projects/{p}/components/{}", s.pipe))?;
        let quantity = pipe["milestones"]
            .as_array()?
            .iter()
            .find(|m| m["key"] == "install")?["quantity"]
            .clone();
        Some((list["items"].clone(), quantity))
    };
    let converged = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let views: Vec<Option<(Value, Value)>> = nodes.iter().map(view).collect();
        let same = views.windows(2).all(|w| w[0] == w[1]);
        if same && views[0].as_ref().is_some_and(|(_, q)| *q == json!(sum as f64)) {
            break;
        }
        if std::time::Instant::now() > converged {
            for (n, v) in nodes.iter().zip(&views) {
                let status = get(n.d(), "/v1/sync/status");
                eprintln!(
                    "{}: quantity {:?} (want {sum}); status {status:?}",
                    n.dir.display(),
                    v.as_ref().map(|v| &v.1)
                );
            }
            panic!("no convergence within 90 s (SITESYNC_RANDOM_SEED={seed_value})");
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    // Traffic settles: presence expired or not, nothing circles. Each
    // process's frames grow by pings only (5 a second each way per link at
    // 200 ms; A has three links).
    std::thread::sleep(Duration::from_secs(2));
    let relay_in = || counter(&relay.http_get("/metrics").1, "sitesync_relay_messages_in_total");
    let before: Vec<u64> = nodes.iter().map(frames_in).collect();
    let relay_before = relay_in();
    std::thread::sleep(Duration::from_secs(3));
    let after: Vec<u64> = nodes.iter().map(frames_in).collect();
    for ((n, b), a) in nodes.iter().zip(&before).zip(&after) {
        let per_second = (a - b) / 3;
        assert!(
            per_second < 100,
            "{}: {per_second} frames a second after the last edit (SITESYNC_RANDOM_SEED={seed_value})",
            n.dir.display()
        );
    }
    let relay_per_second = (relay_in() - relay_before) / 3;
    assert!(
        relay_per_second < 150,
        "relay: {relay_per_second} frames a second"
    );
}

/// Whether `needle` occurs anywhere in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A device in the middle of a LAN link: it terminates the dialler's TLS
/// with a certificate of its own, opens its own TLS session to `target`,
/// and passes the plaintext both ways. Sets the flag once it has read a
/// plaintext request (it really is in the middle). Runs until the test
/// process ends.
fn tls_in_the_middle(target: std::net::SocketAddr) -> (std::net::SocketAddr, Arc<AtomicBool>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let saw = Arc::new(AtomicBool::new(false));
    let seen = saw.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(sitesync_sync::tls::self_signed_config().unwrap());
            let dial = ClientTls::new(&[]).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, seen) = (acceptor.clone(), seen.clone());
                let config = dial.config(Trust::Binding);
                tokio::spawn(async move {
                    let Ok(mut inner) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(up) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let name = rustls::pki_types::ServerName::try_from("sitesync-peer").unwrap();
                    let Ok(mut outer) = tokio_rustls::TlsConnector::from(config).connect(name, up).await
                    else {
                        return;
                    };
                    let mut first = vec![0u8; 4096];
                    let Ok(n) = inner.read(&mut first).await else {
                        return;
                    };
                    if first[..n].starts_with(b"GET ") {
                        seen.store(true, Ordering::SeqCst);
                    }
                    if outer.write_all(&first[..n]).await.is_err() {
                        return;
                    }
                    let _ = tokio::io::copy_bidirectional(&mut inner, &mut outer).await;
                });
            }
        });
    });
    (addr, saw)
}

/// Item 7: a LAN link is TLS end to end (a device on the path sees no
/// HTTP, no WebSocket and no project data), and its handshake is bound to
/// the TLS session, so a device in the middle that terminates TLS on both
/// sides and relays every frame gets the handshake refused and nothing
/// synced.
#[test]
fn lan_links_are_encrypted_and_a_device_in_the_middle_gets_nothing() {
    use sitesync_tests::proxy::Proxy;

    let root = tempfile::tempdir().unwrap();
    let rdir = org(root.path());
    let a = device(root.path(), &rdir, "a", &["--peer-listen", "127.0.0.1:0"]);
    let url = a.peer_url.clone().unwrap();
    assert!(url.starts_with("wss://"), "{url}");
    let lan = a.lan_addr().unwrap();
    let canary = "Cleartext canary 7731";
    let made = a.call(
        "POST",
        "/v1/projects",
        Some(&json!({"name": canary, "code": "CAN"})),
    );
    assert_eq!(made.0, 201, "{}", made.1);

    // On the path: B dials A through a proxy that keeps every byte.
    let tap = Proxy::start(lan);
    let b = device(root.path(), &rdir, "b", &["--peer", &tap.wss_url()]);
    eventually("A's project on B over the LAN", WAIT, || {
        let list = get(&b, "/v1/projects")?;
        list["items"]
            .as_array()?
            .iter()
            .any(|p| p["name"] == canary)
            .then_some(())
    });
    let seen = tap.recorded();
    assert_eq!(
        seen.first(),
        Some(&0x16),
        "the link does not open with a TLS handshake"
    );
    for plain in [b"Upgrade: websocket".as_slice(), canary.as_bytes()] {
        assert!(
            !contains(&seen, plain),
            "{:?} crossed the LAN in clear",
            String::from_utf8_lossy(plain)
        );
    }

    // In the middle: C dials A through a device that terminates TLS.
    let (mitm, in_the_middle) = tls_in_the_middle(lan);
    let c = device(root.path(), &rdir, "c", &["--peer", &format!("wss://{mitm}")]);
    let refused = eventually("C refuses the handshake", WAIT, || {
        let status = get(&c, "/v1/sync/status")?;
        let peer = status["peers"].as_array()?.first()?.clone();
        (peer["state"] == "error").then_some(peer)
    });
    assert!(
        in_the_middle.load(Ordering::SeqCst),
        "the test's device was not in the middle"
    );
    assert!(
        refused["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("unauthorized"),
        "{refused}"
    );
    let list = get(&c, "/v1/projects").unwrap();
    assert_eq!(list["items"].as_array().map(Vec::len), Some(0), "{list}");
}
