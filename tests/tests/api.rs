//! The HTTP API end to end against the real daemon: the flows a local app
//! uses, the numbers it shows, and the event stream.

use std::time::Duration;

use serde_json::{Value, json};
use sitesync_tests::{Daemon, ok, seed};

#[test]
fn progress_bulk_undo_history_and_listing() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&dir.path().join("d"), &[]);
    let s = seed(&d);
    let p = &s.project;
    let comp = |id: &str| format!("/v1/projects/{p}/components/{id}");

    // One milestone, recorded as the X-User.
    let c = ok(
        d.call_with(
            "PUT",
            &format!("{}/milestones/erect", comp(&s.spool)),
            Some(
                json!({"completed": true, "reason": "walkdown"})
                    .to_string()
                    .into_bytes(),
            ),
            &[("X-User", "ana")],
        ),
        "erect",
    );
    assert_eq!(
        (c["completion_percent"].clone(), c["status"].clone()),
        (json!(40.0), json!("in_progress"))
    );
    assert_eq!(c["milestones"][0]["updated_by"], json!("ana"));

    // Bulk: validate_only writes nothing; a real one applies; both answer per item.
    let updates = json!([
        {"component_id": s.spool, "milestone": "weld", "completed": true},
        {"component_id": s.pipe, "milestone": "install", "quantity_delta": 250},
        {"component_id": s.pipe, "milestone": "install", "percent": 3}
    ]);
    let dry = ok(
        d.call(
            "POST",
            &format!("/v1/projects/{p}/milestones:bulk"),
            Some(&json!({"updates": updates, "options": {"validate_only": true}})),
        ),
        "dry bulk",
    );
    assert_eq!(
        (
            dry["applied"].clone(),
            dry["failed"].clone(),
            dry["operation_id"].clone()
        ),
        (json!(0), json!(1), Value::Null)
    );
    assert_eq!(
        ok(d.call("GET", &comp(&s.spool), None), "spool")["completion_percent"],
        json!(40.0)
    );
    let bulk = ok(
        d.call(
            "POST",
            &format!("/v1/projects/{p}/milestones:bulk"),
            Some(&json!({"updates": updates, "options": {"reason": "daily report"}})),
        ),
        "bulk",
    );
    assert_eq!(
        (bulk["applied"].clone(), bulk["failed"].clone()),
        (json!(2), json!(1))
    );
    assert_eq!(bulk["results"][2]["error"]["code"], json!("wrong_workflow"));
    assert_eq!(bulk["results"][1]["after"]["quantity"], json!(250.0));
    let op = bulk["operation_id"].as_str().unwrap().to_owned();

    // Progress weighted by budget hours: spool 10 h at 100 %, pipe 1 h at 0.25 %.
    let prog = ok(
        d.call("GET", &format!("/v1/projects/{p}/progress?group_by=area"), None),
        "progress",
    );
    assert_eq!(prog["budget_hours"], json!(11.0));
    assert_eq!(prog["completion_percent"], json!(90.931818));
    assert_eq!(
        prog["groups"][0]["key"],
        json!("A1"),
        "area falls back to the drawing's"
    );

    // Listing: filters, sort, pagination.
    let list = ok(
        d.call(
            "GET",
            &format!("/v1/projects/{p}/components?sort=-completion&limit=1"),
            None,
        ),
        "list",
    );
    assert_eq!(
        (list["total"].clone(), list["items"][0]["tag"].clone()),
        (json!(2), json!("SP-1"))
    );
    let next = list["next_cursor"].as_str().unwrap();
    let list2 = ok(
        d.call(
            "GET",
            &format!("/v1/projects/{p}/components?sort=-completion&limit=1&cursor={next}"),
            None,
        ),
        "page 2",
    );
    assert_eq!(
        (list2["items"][0]["tag"].clone(), list2["next_cursor"].clone()),
        (json!("PIPE-1"), Value::Null)
    );
    let done = ok(
        d.call(
            "GET",
            &format!("/v1/projects/{p}/components?status=completed&q=sp"),
            None,
        ),
        "filter",
    );
    assert_eq!(done["total"], json!(1));

    // Operations and undo: the bulk is listed, undo reverts it.
    let ops = ok(
        d.call("GET", &format!("/v1/projects/{p}/operations"), None),
        "operations",
    );
    assert_eq!(ops["items"][0]["id"], json!(op));
    assert_eq!(
        (ops["items"][0]["kind"].clone(), ops["items"][0]["count"].clone()),
        (json!("bulk_update"), json!(2))
    );
    let undo = ok(
        d.call("POST", &format!("/v1/projects/{p}/operations/{op}/undo"), None),
        "undo",
    );
    assert_eq!(
        (undo["reverted"].clone(), undo["skipped"].clone()),
        (json!(2), json!([]))
    );
    assert_eq!(
        ok(d.call("GET", &comp(&s.spool), None), "spool")["completion_percent"],
        json!(40.0)
    );
    assert_eq!(
        ok(d.call("GET", &comp(&s.pipe), None), "pipe")["milestones"][0]["quantity"],
        json!(0.0)
    );
    let ops = ok(
        d.call("GET", &format!("/v1/projects/{p}/operations"), None),
        "operations",
    );
    let bulk_op = ops["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["id"] == json!(op))
        .unwrap()
        .clone();
    assert_eq!(bulk_op["undone_by"], undo["operation_id"]);

    // History, newest first.
    let h = ok(
        d.call("GET", &format!("{}/history", comp(&s.spool)), None),
        "history",
    );
    let fields: Vec<_> = h["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["milestone"].clone(), r["new"].clone(), r["user"].clone()))
        .collect();
    assert_eq!(
        fields[0],
        (json!("weld"), json!(false), json!("tester")),
        "the undo"
    );
    assert_eq!(fields[2], (json!("erect"), json!(true), json!("ana")));
    assert_eq!(h["items"][2]["reason"], json!("walkdown"));

    // Delete, refuse edits, restore.
    assert_eq!(d.call("DELETE", &comp(&s.spool), None).0, 204);
    let (status, body) = d.call(
        "PUT",
        &format!("{}/milestones/weld", comp(&s.spool)),
        Some(&json!({"completed": true})),
    );
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (409, json!("component_deleted"))
    );
    assert_eq!(
        ok(
            d.call("GET", &format!("/v1/projects/{p}/components"), None),
            "list"
        )["total"],
        json!(1)
    );
    let restored = ok(
        d.call("POST", &format!("{}/restore", comp(&s.spool)), None),
        "restore",
    );
    assert_eq!(restored["deleted"], json!(false));

    // Project and drawing views carry their rollups.
    let proj = ok(d.call("GET", &format!("/v1/projects/{p}"), None), "project");
    assert_eq!(
        (proj["component_count"].clone(), proj["drawing_count"].clone()),
        (json!(2), json!(1))
    );
    let drawings = ok(
        d.call("GET", &format!("/v1/projects/{p}/drawings"), None),
        "drawings",
    );
    assert_eq!(drawings["items"][0]["component_count"], json!(2));
    let patched = ok(
        d.call(
            "PATCH",
            &comp(&s.pipe),
            Some(&json!({"tag": "PIPE-1A", "attributes": {"area": "B2"}})),
        ),
        "patch",
    );
    assert_eq!(
        (patched["tag"].clone(), patched["attributes"]["area"].clone()),
        (json!("PIPE-1A"), json!("B2"))
    );

    // Metrics: per-route counts and latencies, documents, store size; token required.
    let (status, text) = d.call("GET", "/metrics", None);
    assert_eq!(status, 200);
    let text = text.as_str().unwrap().to_owned();
    assert!(
        text.contains(r#"sitesync_http_requests_total{method="PUT",route="/v1/projects/{pid}/components/{cid}/milestones/{key}",status="200"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("sitesync_http_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(
        text.contains(r#"status="409""#),
        "the refused edit is counted: {text}"
    );
    for gauge in [
        "sitesync_documents_loaded",
        "sitesync_store_size_bytes",
        "sitesync_damaged_records 0",
    ] {
        assert!(text.contains(gauge), "{gauge} missing: {text}");
    }
    assert_eq!(
        d.call_with("GET", "/metrics", None, &[("Authorization", "Bearer no")])
            .0,
        401
    );

    // The API document is served, and it is the committed one.
    let doc = ok(d.call("GET", "/v1/openapi.json", None), "openapi");
    assert_eq!(doc["info"]["version"], json!(env!("CARGO_PKG_VERSION")));
    assert!(doc["paths"]["/v1/projects/{pid}/milestones:bulk"]["post"].is_object());
    let committed: Value =
        serde_json::from_str(&std::fs::read_to_string(committed_api_document()).unwrap()).unwrap();
    assert!(
        doc == committed,
        "the daemon serves another API document than docs/openapi.json"
    );

    // Everything survives a restart.
    drop(d);
    let d = Daemon::start(&dir.path().join("d"), &[]);
    let again = ok(d.call("GET", &comp(&s.pipe), None), "after restart");
    assert_eq!(again["tag"], json!("PIPE-1A"));
    assert_eq!(
        ok(d.call("GET", "/v1/health", None), "health")["status"],
        json!("ok")
    );
}

/// `docs/openapi.json`, the API document as committed.
fn committed_api_document() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json")
}

/// The committed API document is valid OpenAPI 3.1 by a standard validator
/// (Python's `openapi-spec-validator`, pinned in `tests/requirements.txt`),
/// so client generators take it.
#[test]
fn the_api_document_passes_a_real_validator() {
    let path = committed_api_document();
    let run = std::process::Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&path)
        .output();
    let out = match run {
        Ok(out) => out,
        Err(e) => panic!(
            "cannot run python3 ({e}): install Python 3 and `pip install -r tests/requirements.txt` (.ci/run does)"
        ),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains("No module named openapi_spec_validator"),
        "the validator is missing: `pip install -r tests/requirements.txt` (.ci/run does)"
    );
    assert!(out.status.success(), "docs/openapi.json is refused: {text}");
    assert!(text.contains(": OK"), "the validator said: {text}");
}

#[test]
fn event_stream_reports_changes_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&dir.path().join("d"), &[]);
    let s = seed(&d);
    let p = s.project.clone();
    let path = format!("/v1/projects/{p}/components/{}/milestones/install", s.pipe);

    // A live subscriber sees the change with its origin, then progress.
    let client = d.client();
    let query = format!("?project_id={p}");
    let live = std::thread::spawn({
        let client = client.clone();
        let query = query.clone();
        move || client.events(&query, None, 2, Duration::from_secs(20))
    });
    std::thread::sleep(Duration::from_millis(300));
    ok(
        d.call("PUT", &path, Some(&json!({"quantity_delta": 5}))),
        "write 1",
    );
    let events = live.join().unwrap();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].1, "component.updated");
    assert_eq!(events[0].2["origin"], json!("local"));
    assert_eq!(events[0].2["component"]["milestones"][0]["quantity"], json!(5.0));
    assert_eq!(events[1].1, "progress.updated");
    let last = events[1].0.clone().unwrap();

    // Missed events are replayed after Last-Event-ID.
    ok(
        d.call("PUT", &path, Some(&json!({"quantity_delta": 2}))),
        "write 2",
    );
    let resumed = client.events(&query, Some(&last), 1, Duration::from_secs(10));
    assert_eq!(resumed[0].1, "component.updated");
    assert_eq!(resumed[0].2["component"]["milestones"][0]["quantity"], json!(7.0));
    assert!(resumed[0].0.as_deref().unwrap().parse::<u64>().unwrap() > last.parse::<u64>().unwrap());

    // Creation and deletion have their own event types.
    let last = resumed[0].0.clone().unwrap();
    let new = json!({"tag": "SP-9", "kind": "spool", "template_id": s.discrete});
    let created = ok(
        d.call(
            "POST",
            &format!("/v1/projects/{p}/drawings/{}/components", s.drawing),
            Some(&new),
        ),
        "create",
    );
    let cid = created["id"].as_str().unwrap();
    assert_eq!(
        d.call("DELETE", &format!("/v1/projects/{p}/components/{cid}"), None)
            .0,
        204
    );
    let kinds: Vec<String> = client
        .events(&query, Some(&last), 5, Duration::from_secs(10))
        .into_iter()
        .map(|e| e.1)
        .filter(|k| k.starts_with("component."))
        .collect();
    assert_eq!(kinds, vec!["component.created", "component.deleted"]);

    // An id the daemon no longer holds (or never issued) asks for a resync.
    let stale = client.events(&query, Some("1"), 1, Duration::from_secs(10));
    assert_eq!(stale[0].1, "resync.required");
    // The token may come in the query, for browsers' EventSource.
    let token_query = format!("?project_id={p}&token={}", d.token);
    let mut browser = client.clone();
    browser.token = String::new();
    let via_query = browser.events(&token_query, Some("1"), 1, Duration::from_secs(10));
    assert_eq!(via_query[0].1, "resync.required");
    let refused = browser.events(
        &format!("?project_id={p}&token=wrong"),
        Some("1"),
        1,
        Duration::from_secs(1),
    );
    assert!(
        refused.is_empty(),
        "a wrong query token gets no events: {refused:?}"
    );
}
