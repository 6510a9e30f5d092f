//! Replication end to end: real daemons and a real relay, with the
//! fault-injecting proxy between them where the test needs faults.

use std::time::Duration;

use rand::Rng;
use serde_json::{Value, json};
use sitesync_tests::proxy::{Mode, Proxy};
use sitesync_tests::{Daemon, Relay, Seeded, eventually, ok, seed};

const WAIT: Duration = Duration::from_secs(30);

use sitesync_tests::{acme_relay_dir as org, device, get_ok as get, milestone, start_syncing as start};

fn component(d: &Daemon, s: &Seeded, cid: &str) -> Option<Value> {
    get(d, &format!("/v1/projects/{}/components/{cid}", s.project))
}

fn put(d: &Daemon, s: &Seeded, cid: &str, key: &str, body: Value) -> Value {
    ok(
        d.call(
            "PUT",
            &format!("/v1/projects/{}/components/{cid}/milestones/{key}", s.project),
            Some(&body),
        ),
        "milestone write",
    )
}

/// Components without per-replica fields, for comparing replicas.
fn comparable(d: &Daemon, s: &Seeded) -> Value {
    let list = ok(
        d.call(
            "GET",
            &format!("/v1/projects/{}/components?limit=1000", s.project),
            None,
        ),
        "list",
    );
    list["items"].clone()
}

fn device_id(d: &Daemon) -> String {
    ok(d.call("GET", "/v1/health", None), "health")["device_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn wait_connected(d: &Daemon, n: usize) {
    eventually("peers connected", WAIT, || {
        let status = get(d, "/v1/sync/status")?;
        let up = status["peers"]
            .as_array()?
            .iter()
            .filter(|p| p["state"] == "connected")
            .count();
        (up >= n).then_some(())
    });
}

#[test]
fn a_change_on_one_daemon_reaches_the_other_through_the_relay() {
    let root = tempfile::tempdir().unwrap();
    let rdir = org(root.path());
    let relay = Relay::start(&rdir);
    let url = relay.ws_url();
    let a = device(root.path(), &rdir, "a", &["--relay", &url]);
    let b = device(root.path(), &rdir, "b", &["--relay", &url]);
    let s = seed(&a);
    let seen = eventually("the project on B", WAIT, || component(&b, &s, &s.spool));
    assert_eq!(seen["tag"], "SP-1");

    // B's event stream reports A's edit with A's device as its origin.
    let bc = b.client();
    let watcher = std::thread::spawn(move || bc.events("", None, 400, Duration::from_secs(6)));
    std::thread::sleep(Duration::from_millis(500));
    put(&a, &s, &s.spool, "erect", json!({"completed": true}));
    let c = eventually("the edit on B", WAIT, || {
        component(&b, &s, &s.spool).filter(|c| milestone(c, "erect")["completed"] == true)
    });
    assert_eq!(milestone(&c, "erect")["updated_by"], "tester");
    let events = watcher.join().unwrap();
    let a_id = device_id(&a);
    assert!(
        events
            .iter()
            .any(|(_, kind, data)| kind == "component.updated" && data["origin"] == a_id.as_str()),
        "no component.updated with origin {a_id} in {:?}",
        events.iter().map(|e| &e.1).collect::<Vec<_>>()
    );
    assert!(events.iter().any(|(_, kind, _)| kind == "progress.updated"));

    // Status: the relay connected, A's changes acknowledged.
    let status = ok(a.call("GET", "/v1/sync/status", None), "status");
    let relay_peer = &status["peers"][0];
    assert_eq!(relay_peer["kind"], "relay");
    assert_eq!(relay_peer["state"], "connected");
    assert_eq!(relay_peer["url"], url.as_str());
    eventually("nothing pending on A", WAIT, || {
        let st = get(&a, "/v1/sync/status")?;
        (st["pending"][&s.project] == 0).then_some(())
    });
    eventually("a latency sample", WAIT, || {
        let st = get(&a, "/v1/sync/status")?;
        st["peers"][0]["quality"].as_str().map(str::to_owned)
    });

    // Presence is relayed to the other device and expires on its own.
    let beat =
        json!({"project_id": s.project, "component_id": s.spool, "activity": "editing", "user": "ana"});
    assert_eq!(a.call("PUT", "/v1/presence", Some(&beat)).0, 204);
    let on_b = eventually("presence on B", WAIT, || {
        let p = get(&b, &format!("/v1/projects/{}/presence", s.project))?;
        p["items"].as_array().filter(|i| !i.is_empty()).cloned()
    });
    assert_eq!(on_b[0]["user"], "ana");
    assert_eq!(on_b[0]["activity"], "editing");
    assert_eq!(on_b[0]["device_id"], a_id.as_str());
    assert_eq!(on_b[0]["component_id"], s.spool.as_str());
    let bad = json!({"project_id": s.project, "activity": "dancing"});
    let (status, body) = a.call("PUT", "/v1/presence", Some(&bad));
    assert_eq!((status, body["error"]["field"].as_str()), (422, Some("activity")));

    // Removing the relay disconnects; the list is empty.
    let peer_id = relay_peer["peer_id"].as_str().unwrap().to_owned();
    assert_eq!(
        a.call("DELETE", &format!("/v1/sync/peers/{peer_id}"), None).0,
        204
    );
    assert_eq!(
        a.call("DELETE", &format!("/v1/sync/peers/{peer_id}"), None).0,
        404
    );
    let status = ok(a.call("GET", "/v1/sync/status", None), "status");
    assert_eq!(status["peers"], json!([]));
    // ...and a peer added at run time connects.
    let added = ok(
        a.call("POST", "/v1/sync/peers", Some(&json!({"url": url}))),
        "add peer",
    );
    assert_eq!(added["state"], "connecting");
    wait_connected(&a, 1);
    let (status, body) = a.call("POST", "/v1/sync/peers", Some(&json!({"url": "http://x"})));
    assert_eq!((status, body["error"]["field"].as_str()), (422, Some("url")));
    // A LAN peer's listener speaks only TLS: a plain URL is refused, saying so.
    let plain = json!({"url": "ws://10.0.0.7:7710", "kind": "lan"});
    let (status, body) = a.call("POST", "/v1/sync/peers", Some(&plain));
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("url")),
        "{body}"
    );
    assert!(
        body["error"]["message"].as_str().unwrap().contains("wss://"),
        "{body}"
    );
    let (status, body) = a.call(
        "POST",
        "/v1/sync/peers",
        Some(&json!({"url": url, "token": "nope"})),
    );
    assert_eq!((status, body["error"]["field"].as_str()), (422, Some("token")));
}

#[test]
fn partitioned_edits_merge_with_nothing_lost_after_healing() {
    let root = tempfile::tempdir().unwrap();
    let rdir = org(root.path());
    let relay = Relay::start(&rdir);
    let pa = Proxy::start(relay.addr);
    let pb = Proxy::start(relay.addr);
    let a = device(root.path(), &rdir, "a", &["--relay", &pa.ws_url()]);
    let b = device(root.path(), &rdir, "b", &["--relay", &pb.ws_url()]);
    let s = seed(&a);
    let comps = format!("/v1/projects/{}/drawings/{}/components", s.project, s.drawing);
    let coat = ok(
        a.call(
            "POST",
            &comps,
            Some(&json!({"tag": "CT-1", "kind": "coating", "template_id": s.percentage})),
        ),
        "coating",
    )["id"]
        .as_str()
        .unwrap()
        .to_owned();
    eventually("B has everything", WAIT, || component(&b, &s, &coat));

    pa.set_mode(Mode::Down);
    pb.set_mode(Mode::Down);
    eventually("A offline", WAIT, || {
        let st = get(&a, "/v1/sync/status")?;
        (st["peers"][0]["state"] != "connected").then_some(())
    });
    // Concurrent edits on both sides of the partition.
    put(&a, &s, &s.pipe, "install", json!({"quantity_delta": 5}));
    put(&a, &s, &s.pipe, "install", json!({"quantity_delta": 2}));
    put(&b, &s, &s.pipe, "install", json!({"quantity_delta": 7}));
    put(&a, &s, &s.spool, "erect", json!({"completed": true}));
    put(
        &b,
        &s,
        &s.spool,
        "erect",
        json!({"completed": false, "reason": "rework"}),
    );
    put(&b, &s, &coat, "paint", json!({"percent": 30}));
    put(&a, &s, &coat, "paint", json!({"percent": 60}));
    let pending = ok(a.call("GET", "/v1/sync/status", None), "status")["pending"][&s.project]
        .as_u64()
        .unwrap();
    assert!(pending >= 4, "A's offline writes are pending: {pending}");

    pa.set_mode(Mode::Pass);
    pb.set_mode(Mode::Pass);
    let merged = eventually("replicas converge", WAIT, || {
        let (ca, cb) = (comparable(&a, &s), comparable(&b, &s));
        let pipe = ca
            .as_array()?
            .iter()
            .find(|c| c["id"] == s.pipe.as_str())?
            .clone();
        (ca == cb && milestone(&pipe, "install")["quantity"] == json!(14.0)).then_some(ca)
    });
    // The same winner everywhere, the loser kept in conflicts.
    let spool = merged
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == s.spool.as_str())
        .unwrap();
    let erect = milestone(spool, "erect");
    assert_eq!(erect["conflicts"].as_array().unwrap().len(), 1, "{erect}");
    assert_ne!(erect["conflicts"][0]["value"], erect["completed"]);
    let coat_c = merged
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == coat.as_str())
        .unwrap();
    let paint = milestone(coat_c, "paint");
    assert_eq!(paint["conflicts"].as_array().unwrap().len(), 1, "{paint}");
    // Each device's history lists the other's edits.
    let (a_id, b_id) = (device_id(&a), device_id(&b));
    for (d, other) in [(&a, &b_id), (&b, &a_id)] {
        let h = ok(
            d.call(
                "GET",
                &format!("/v1/projects/{}/components/{}/history", s.project, s.pipe),
                None,
            ),
            "history",
        );
        assert!(
            h["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["device_id"] == other.as_str()),
            "history lacks the other device's edits: {h}"
        );
    }
    eventually("nothing pending after healing", WAIT, || {
        let st = get(&a, "/v1/sync/status")?;
        (st["pending"][&s.project] == 0).then_some(())
    });
}

#[test]
fn the_relay_stores_and_forwards_between_devices_never_online_together() {
    let root = tempfile::tempdir().unwrap();
    let rdir = org(root.path());
    let relay = Relay::start(&rdir);
    let url = relay.ws_url();
    let mut a = device(root.path(), &rdir, "a", &["--relay", &url]);
    let s = seed(&a);
    put(&a, &s, &s.pipe, "install", json!({"quantity_delta": 3}));
    eventually("A's changes acknowledged by the relay", WAIT, || {
        let st = get(&a, "/v1/sync/status")?;
        (st["pending"][&s.project] == 0).then_some(())
    });
    a.stop();
    let b = device(root.path(), &rdir, "b", &["--relay", &url]);
    let pipe = eventually("A's edit on B", WAIT, || {
        component(&b, &s, &s.pipe).filter(|c| milestone(c, "install")["quantity"] == json!(3.0))
    });
    assert_eq!(pipe["tag"], "PIPE-1");
}

#[test]
fn lan_peers_sync_without_a_relay_and_refuse_another_organisation() {
    let root = tempfile::tempdir().unwrap();
    let rdir = org(root.path());
    let a = device(root.path(), &rdir, "a", &["--peer-listen", "127.0.0.1:0"]);
    let lan = a.peer_url.clone().unwrap();
    let b = device(root.path(), &rdir, "b", &["--peer", &lan]);
    let s = seed(&a);
    eventually("A's project on B", WAIT, || component(&b, &s, &s.spool));
    put(&b, &s, &s.spool, "weld", json!({"completed": true}));
    eventually("B's edit on A", WAIT, || {
        component(&a, &s, &s.spool).filter(|c| milestone(c, "weld")["completed"] == true)
    });
    let st = ok(b.call("GET", "/v1/sync/status", None), "status");
    assert_eq!(st["peers"][0]["kind"], "lan");
    assert_eq!(st["peers"][0]["found"], "configured");
    let st = ok(a.call("GET", "/v1/sync/status", None), "status");
    assert_eq!(st["peers"][0]["state"], "connected", "{st}");
    assert_eq!(st["peers"][0]["outbound"], false);
    assert_eq!(st["peers"][0]["found"], "inbound");
    // Each side sees the other holding everything of the project: its
    // document and its drawings, none differing.
    for d in [&a, &b] {
        let shared = eventually("the peer compared as holding everything", WAIT, || {
            let st = get(d, "/v1/sync/status")?;
            let shared = st["peers"][0]["shared_projects"].as_array()?.clone();
            (shared.len() == 1 && shared[0]["documents_differing"] == 0).then_some(shared)
        });
        assert_eq!(shared[0]["project_id"], s.project.as_str());
        assert!(shared[0]["documents"].as_u64().unwrap() >= 2, "{shared:?}");
    }

    // A device of another organisation is refused and receives nothing.
    let other = root.path().join("other-relay");
    Relay::create_org(&other, "globex");
    let c = start(
        &root.path().join("c"),
        &Relay::token(&other, "globex", &[]),
        &["--peer", &lan],
    );
    let err = eventually("C refused", WAIT, || {
        let st = get(&c, "/v1/sync/status")?;
        let peer = &st["peers"][0];
        (peer["state"] == "error").then(|| peer["last_error"].as_str().unwrap_or("").to_owned())
    });
    assert!(err.contains("unauthorized"), "{err}");
    std::thread::sleep(Duration::from_millis(500));
    let projects = ok(c.call("GET", "/v1/projects", None), "projects");
    assert_eq!(projects["total"], 0, "{projects}");
}

#[test]
fn a_token_limited_to_one_project_never_receives_another() {
    let root = tempfile::tempdir().unwrap();
    let rdir = org(root.path());
    let relay = Relay::start(&rdir);
    let url = relay.ws_url();
    let a = device(root.path(), &rdir, "a", &["--relay", &url]);
    let p1 = seed(&a);
    let p2 = seed(&a);
    let b = start(
        &root.path().join("b"),
        &Relay::token(&rdir, "acme", &[&p1.project]),
        &["--relay", &url],
    );
    eventually("P1 on B", WAIT, || component(&b, &p1, &p1.spool));
    // A later edit to P2 still never reaches B.
    put(&a, &p2, &p2.spool, "erect", json!({"completed": true}));
    put(&a, &p1, &p1.spool, "erect", json!({"completed": true}));
    eventually("the later P1 edit on B", WAIT, || {
        component(&b, &p1, &p1.spool).filter(|c| milestone(c, "erect")["completed"] == true)
    });
    let projects = ok(b.call("GET", "/v1/projects", None), "projects");
    assert_eq!(projects["total"], 1, "{projects}");
    assert_eq!(
        b.call("GET", &format!("/v1/projects/{}", p2.project), None).0,
        404
    );
}

#[test]
fn killing_the_relay_or_a_daemon_mid_sync_loses_nothing_acknowledged() {
    let root = tempfile::tempdir().unwrap();
    let rdir = org(root.path());
    let mut relay = Relay::start(&rdir);
    let proxy = Proxy::start(relay.addr);
    let ta = Relay::token(&rdir, "acme", &[]);
    let tb = Relay::token(&rdir, "acme", &[]);
    let a = start(&root.path().join("a"), &ta, &["--relay", &proxy.ws_url()]);
    let mut b = start(&root.path().join("b"), &tb, &["--relay", &proxy.ws_url()]);
    let s = seed(&a);
    eventually("B has the project", WAIT, || component(&b, &s, &s.pipe));
    let mut acknowledged = 0;
    for round in 0..6 {
        for _ in 0..5 {
            put(&a, &s, &s.pipe, "install", json!({"quantity_delta": 1}));
            acknowledged += 1;
        }
        if round % 2 == 0 {
            // The relay dies mid-sync and comes back (on a new port).
            relay.kill();
            relay = Relay::start(&rdir);
            proxy.retarget(relay.addr);
        } else {
            // B dies mid-sync and comes back.
            b.kill();
            b = start(&root.path().join("b"), &tb, &["--relay", &proxy.ws_url()]);
        }
    }
    let want = json!(acknowledged as f64);
    for d in [&a, &b] {
        eventually("every acknowledged delta everywhere", WAIT, || {
            component(d, &s, &s.pipe).filter(|c| milestone(c, "install")["quantity"] == want)
        });
    }
}

#[test]
fn random_edits_and_cuts_converge_and_keep_the_sum() {
    let (seed_value, mut rng) = sitesync_tests::seeded_rng();
    let root = tempfile::tempdir().unwrap();
    let rdir = org(root.path());
    let relay = Relay::start(&rdir);
    let mut daemons = Vec::new();
    let mut proxies = Vec::new();
    for name in ["a", "b", "c"] {
        let proxy = Proxy::start(relay.addr);
        let d = device(root.path(), &rdir, name, &["--relay", &proxy.ws_url()]);
        daemons.push(d);
        proxies.push(proxy);
    }
    let s = seed(&daemons[0]);
    for d in &daemons {
        // Both components: a drawing's changes may arrive over several rounds.
        eventually("everyone has the project", WAIT, || {
            component(d, &s, &s.pipe)?;
            component(d, &s, &s.spool)
        });
    }
    let mut sum = 0i64;
    let deadline = std::time::Instant::now() + Duration::from_secs(6);
    while std::time::Instant::now() < deadline {
        let i = rng.random_range(0..3);
        match rng.random_range(0..11) {
            // Connections stay open but nothing arrives: only the idle
            // timeout notices.
            10 => proxies[i].set_mode(Mode::Blackhole),
            0 => proxies[i].set_mode(Mode::Down),
            1 => proxies[i].set_mode(Mode::Pass),
            2 => proxies[i].cut(),
            3 => proxies[i].set_mode(Mode::Delay(Duration::from_millis(rng.random_range(1..50)))),
            4 | 5 => {
                let done = rng.random_bool(0.5);
                put(&daemons[i], &s, &s.spool, "erect", json!({"completed": done}));
            }
            _ => {
                let delta = rng.random_range(1..20);
                put(
                    &daemons[i],
                    &s,
                    &s.pipe,
                    "install",
                    json!({"quantity_delta": delta}),
                );
                sum += delta;
            }
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..60)));
    }
    for p in &proxies {
        p.set_mode(Mode::Pass);
    }
    let want = json!(sum as f64);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let views: Vec<Value> = daemons.iter().map(|d| comparable(d, &s)).collect();
        let pipe = component(&daemons[0], &s, &s.pipe).unwrap();
        if views.windows(2).all(|w| w[0] == w[1]) && milestone(&pipe, "install")["quantity"] == want {
            break;
        }
        if std::time::Instant::now() > deadline {
            // Say what each replica holds, so a failure can be diagnosed.
            for (n, d) in daemons.iter().enumerate() {
                let pipe = component(d, &s, &s.pipe).unwrap();
                let spool = component(d, &s, &s.spool).unwrap();
                let status = get(d, "/v1/sync/status").unwrap();
                eprintln!(
                    "replica {n}: quantity {} (want {want}), erect {}, status {status}",
                    milestone(&pipe, "install")["quantity"],
                    milestone(&spool, "erect"),
                );
            }
            panic!("no convergence within 60 s (SITESYNC_RANDOM_SEED={seed_value})");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_revoked_token_is_dropped_and_refused_and_the_relay_reports_it() {
    let root = tempfile::tempdir().unwrap();
    let rdir = org(root.path());
    let relay = Relay::start(&rdir);
    let (id, token) = Relay::issue(&rdir, "acme", &[]);
    let a = start(&root.path().join("a"), &token, &["--relay", &relay.ws_url()]);
    let s = seed(&a);
    wait_connected(&a, 1);
    let (status, health) = relay.http_get("/healthz");
    assert_eq!(status, 200);
    let health: Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["connections"], 1);
    eventually("documents held by the relay", WAIT, || {
        let (_, metrics) = relay.http_get("/metrics");
        let held = metrics
            .lines()
            .find(|l| l.starts_with("sitesync_relay_documents_held "))?
            .split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()?;
        (held >= 2).then_some(())
    });

    sitesync_tests::relay_cmd(&[
        "token",
        "revoke",
        &id,
        "--org",
        "acme",
        "--data-dir",
        rdir.to_str().unwrap(),
    ]);
    let err = eventually("A dropped and refused", WAIT, || {
        let st = get(&a, "/v1/sync/status")?;
        let peer = &st["peers"][0];
        let err = peer["last_error"].as_str()?.to_owned();
        (peer["state"] == "error" && err.contains("revoked")).then_some(err)
    });
    assert!(err.contains(&id), "{err}");
    // Nothing A writes now reaches the relay.
    put(&a, &s, &s.spool, "erect", json!({"completed": true}));
    let (_, metrics) = relay.http_get("/metrics");
    let failures = metrics
        .lines()
        .find(|l| l.starts_with("sitesync_relay_auth_failures_total "))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(failures >= 1, "{metrics}");
    for name in [
        "sitesync_relay_bytes_in_total",
        "sitesync_relay_messages_out_total",
        "sitesync_relay_sync_latency_seconds_bucket",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
}

#[test]
fn daemons_sync_through_a_tls_relay_and_refuse_an_untrusted_certificate() {
    let root = tempfile::tempdir().unwrap();
    let rdir = org(root.path());
    let relay = Relay::start_tls(&rdir);
    let url = format!("wss://localhost:{}", relay.addr.port());
    let ca = sitesync_tests::fixture("tls/ca.pem");
    let ca = ca.to_str().unwrap();
    let a = device(root.path(), &rdir, "a", &["--relay", &url, "--relay-ca", ca]);
    let b = device(root.path(), &rdir, "b", &["--relay", &url, "--relay-ca", ca]);
    let s = seed(&a);
    put(&a, &s, &s.spool, "erect", json!({"completed": true}));
    eventually("A's edit on B over wss://", WAIT, || {
        component(&b, &s, &s.spool).filter(|c| milestone(c, "erect")["completed"] == true)
    });
    // Without the CA the relay's certificate is not trusted: no connection.
    let c = device(root.path(), &rdir, "c", &["--relay", &url]);
    let err = eventually("C's TLS failure reported", WAIT, || {
        let st = get(&c, "/v1/sync/status")?;
        st["peers"][0]["last_error"].as_str().map(str::to_owned)
    });
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert_eq!(ok(c.call("GET", "/v1/projects", None), "projects")["total"], 0);
}

/// Whether `d` has a peer that ended refused for `token_id`'s revocation.
fn refused_as_revoked(d: &Daemon, token_id: &str) -> Option<()> {
    let st = get(d, "/v1/sync/status")?;
    st["peers"]
        .as_array()?
        .iter()
        .any(|p| {
            p["state"] != "connected"
                && p["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("revoked") && e.contains(token_id))
        })
        .then_some(())
}

/// A revocation reaches LAN peers that never meet the relay (item 6): A
/// has the relay and a LAN listener; B (to be revoked) and C are on the
/// LAN only, B dialling A and C, C dialling A. Revoking B at the relay
/// drops B's links to A (which heard it from the relay) and to C (which
/// heard it from A); nothing B writes afterwards reaches them; and C,
/// restarted with A and the relay gone, still refuses B (the list is kept).
#[test]
fn a_revocation_crosses_the_lan_and_outlives_a_restart() {
    let root = tempfile::tempdir().unwrap();
    let rdir = org(root.path());
    let relay = Relay::start(&rdir);
    let listen = ["--peer-listen", "127.0.0.1:0"];
    let a = device(
        root.path(),
        &rdir,
        "a",
        &["--relay", &relay.ws_url(), listen[0], listen[1]],
    );
    let a_lan = a.peer_url.clone().unwrap();
    let c_token = Relay::token(&rdir, "acme", &[]);
    let c_dir = root.path().join("c");
    let c_args = ["--peer", &a_lan, listen[0], listen[1]];
    let mut c = start(&c_dir, &c_token, &c_args);
    // B reaches C through a proxy, so C can come back on another port.
    let to_c = Proxy::start(c.lan_addr().unwrap());
    let (b_id, b_token) = Relay::issue(&rdir, "acme", &[]);
    let b = start(
        &root.path().join("b"),
        &b_token,
        &["--peer", &a_lan, "--peer", &to_c.wss_url()],
    );
    let s = seed(&a);
    for d in [&b, &c] {
        eventually("A's project on the LAN", WAIT, || component(d, &s, &s.spool));
    }
    wait_connected(&b, 2);

    sitesync_tests::relay_cmd(&[
        "token",
        "revoke",
        &b_id,
        "--org",
        "acme",
        "--data-dir",
        rdir.to_str().unwrap(),
    ]);
    eventually("B dropped by A and by C", WAIT, || {
        let st = get(&b, "/v1/sync/status")?;
        let peers = st["peers"].as_array()?;
        let refused = peers
            .iter()
            .filter(|p| {
                p["state"] != "connected" && p["last_error"].as_str().is_some_and(|e| e.contains("revoked"))
            })
            .count();
        (refused == 2).then_some(())
    });
    assert!(refused_as_revoked(&b, &b_id).is_some());

    // What B writes now stays on B; what A writes still reaches C.
    put(&b, &s, &s.spool, "weld", json!({"completed": true}));
    put(&a, &s, &s.spool, "erect", json!({"completed": true}));
    eventually("A's edit on C", WAIT, || {
        component(&c, &s, &s.spool).filter(|x| milestone(x, "erect")["completed"] == true)
    });
    std::thread::sleep(Duration::from_secs(1));
    for d in [&a, &c] {
        let spool = component(d, &s, &s.spool).unwrap();
        assert_eq!(
            milestone(&spool, "weld")["completed"],
            false,
            "B's write got through"
        );
    }

    // C alone, restarted: it kept the list, and still refuses B.
    drop(a);
    drop(relay);
    c.stop();
    let c = start(&c_dir, &c_token, &c_args);
    to_c.retarget(c.lan_addr().unwrap());
    put(&b, &s, &s.spool, "erect", json!({"completed": false}));
    std::thread::sleep(Duration::from_secs(2));
    let spool = component(&c, &s, &s.spool).unwrap();
    assert_eq!(
        milestone(&spool, "erect")["completed"],
        true,
        "B's write reached C after its restart"
    );
    assert_eq!(milestone(&spool, "weld")["completed"], false);
}
