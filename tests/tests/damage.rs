//! A damaged stored record is reported — in the log and in `/v1/health` —
//! and the document is rebuilt from the records that remain: the daemon
//! starts anyway and serves, never panics.

use serde_json::json;
use sitesync_sync::store::{Backend, BatchOp, RedbBackend, describe_key};
use sitesync_tests::{Daemon, seed};

#[test]
fn a_damaged_record_is_reported_and_the_daemon_serves_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let mut d = Daemon::start(&data, &[]);
    let s = seed(&d);
    s.erect_spool(&d);
    assert!(d.stop().success());

    // Flip a byte in the newest change record of the drawing document: the
    // milestone update just made.
    let drawing = uuid::Uuid::parse_str(&s.drawing).unwrap();
    let damaged_key = {
        let backend = RedbBackend::open(&data.join("store")).unwrap();
        let mut prefix = vec![b'd'];
        prefix.extend_from_slice(drawing.as_bytes());
        prefix.push(b'c');
        let (key, mut value) = backend
            .scan_prefix(&prefix)
            .unwrap()
            .pop()
            .expect("a change record");
        let last = value.len() - 1;
        value[last] ^= 0xff;
        backend.apply(vec![BatchOp::Put(key.clone(), value)]).unwrap();
        describe_key(&key)
    };

    let d = Daemon::start(&data, &[]);
    let (status, c) = d.call(
        "GET",
        &format!("/v1/projects/{}/components/{}", s.project, s.spool),
        None,
    );
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["tag"], json!("SP-1"), "the component itself survives");
    assert_eq!(
        c["milestones"][0]["completed"],
        json!(false),
        "the damaged update is gone"
    );
    let (_, health) = d.call("GET", "/v1/health", None);
    let damaged = health["storage"]["damaged_records"].as_array().unwrap();
    assert_eq!(damaged.len(), 1, "{health}");
    assert_eq!(damaged[0]["record"], json!(damaged_key));
    assert!(
        damaged[0]["reason"].as_str().unwrap().contains("checksum"),
        "{health}"
    );
    // And it still takes writes.
    s.erect_spool(&d);
}
