//! Hostile peers and the topologies sites really run: a device with one
//! valid token playing by hand against the real relay, and loops of relay
//! and LAN links between real daemons.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sitesync_sync::link::{self, FrameSocket as _};
use sitesync_sync::model::automerge::ActorId;
use sitesync_sync::protocol::{self, Message};
use sitesync_sync::session::{Output, Session};
use sitesync_sync::{DocStore, MemBackend, Repo, RepoConfig, host::RepoHost};
use sitesync_tests::{Daemon, Relay, Seeded, eventually, seed, sync_args};

const WAIT: Duration = Duration::from_secs(30);

fn device(root: &Path, rdir: &Path, name: &str, extra: &[&str]) -> Daemon {
    let mut args = sync_args(&Relay::token(rdir, "acme", &[]));
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Daemon::start(&root.join(name), &args)
}

fn org(root: &Path) -> std::path::PathBuf {
    let dir = root.join("relay");
    Relay::create_org(&dir, "acme");
    dir
}

fn get(d: &Daemon, path: &str) -> Option<Value> {
    match d.call("GET", path, None) {
        (200, v) => Some(v),
        _ => None,
    }
}

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

/// Connects to `url` as a device holding `token`, completes the handshake,
/// sends `frames`, and returns the first refusal the other side sends
/// (code, fatal), or `None` when the connection ends without one.
fn intrude(url: &str, token: &str, frames: Vec<Message>) -> Option<(String, bool)> {
    let token = sitesync_sync::credentials::Token::parse(token).unwrap();
    let url = url.to_owned();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            let host = RepoHost::new(Arc::new(Repo::new(
                DocStore::new(MemBackend::default()),
                ActorId::random(),
                RepoConfig::default(),
            )));
            let mut socket = link::connect(&url, Duration::from_secs(5), &link::client_tls(&[]).unwrap())
                .await
                .unwrap();
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
                        if let Ok(Message::Error { code, fatal, .. }) = protocol::decode(&frame) {
                            return Some((code, fatal));
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
    use sitesync_sync::model::automerge::sync::{State as SyncState, SyncDoc as _};
    use sitesync_sync::model::automerge::transaction::Transactable as _;
    use sitesync_sync::model::automerge::{Automerge, AutomergeError, ROOT};

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

    // A change of our own making, dressed as an update of P2's document.
    let mut doc = Automerge::new();
    doc.transact::<_, _, AutomergeError>(|tx| {
        tx.put(ROOT, "intruder", true)?;
        Ok(())
    })
    .unwrap();
    let intruder = doc.get_heads()[0];
    let mut message = doc.generate_sync_message(&mut SyncState::new()).unwrap();
    message.changes = vec![doc.save()].into();
    let push = Message::Sync {
        project: p2_id.into(),
        doc: p2_id.into(),
        message: message.encode(),
    };
    let refusal = intrude(
        &relay.ws_url(),
        &Relay::token(&rdir, "acme", &[&p1.project]),
        vec![push],
    );
    assert_eq!(refusal, Some(("out_of_scope".to_owned(), true)));

    // Nothing of it is in the relay's store.
    relay.kill();
    let store = Repo::new(
        DocStore::new(RedbBackend::open(&rdir.join("store")).unwrap()),
        ActorId::random(),
        RepoConfig {
            typed: false,
            ..RepoConfig::default()
        },
    );
    let has = store
        .read_raw(p2_id, |am| am.get_change_meta_by_hash(&intruder).is_some())
        .unwrap()
        .expect("the relay holds P2");
    assert!(!has, "the out-of-scope change was stored");
}
