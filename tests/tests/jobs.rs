//! Jobs, import and export end to end, against the real daemon: a dry run
//! writes nothing; an import and its undo leave the project exactly as it
//! was; malformed files get per-row or per-file errors and write nothing
//! for rejected rows; exports round-trip through import unchanged; a job
//! killed by a restart shows `interrupted`; the event stream carries a job's
//! progress.

use std::time::Duration;

use serde_json::{Value, json};
use sitesync_tests::{Daemon, Seeded, ok, seed};

/// A field spreadsheet against the seeded project: one update (PIPE-1's
/// quantity and attributes), one unchanged (SP-1), one create on a drawing
/// the project lacks (ISO-2), one rejected (an unknown template).
const FIELD_CSV: &str = "DWG NO,TAG,TYPE,TEMPLATE,QTY,LOCATION,TEST PKG,Line Class
ISO-1,PIPE-1,pipe,Pipe,120,A1,TP-1,CS150
ISO-1,SP-1,spool,Spool,,,,
ISO-2,P-9,pipe,Pipe,5,A2,,
ISO-2,P-10,valve,Valve,,A2,,
";

fn import(d: &Daemon, project: &str, body: &[u8], content_type: &str, query: &str) -> Value {
    let (status, accepted) = d.upload(
        &format!("/v1/projects/{project}/imports{query}"),
        body,
        content_type,
    );
    assert_eq!(status, 202, "{accepted}");
    d.wait_job(accepted["job_id"].as_str().expect("job_id"))
}

/// What a user sees of a project, leaving out when and by whom things
/// changed: every live component, the live drawings, the progress rollup.
fn snapshot(d: &Daemon, p: &str) -> Value {
    let mut components = ok(
        d.call("GET", &format!("/v1/projects/{p}/components?limit=1000"), None),
        "list",
    )["items"]
        .clone();
    for c in components.as_array_mut().unwrap() {
        let c = c.as_object_mut().unwrap();
        c.remove("updated_at");
        c.remove("updated_by");
    }
    let drawings: Vec<Value> = ok(
        d.call("GET", &format!("/v1/projects/{p}/drawings?limit=1000"), None),
        "drawings",
    )["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| json!([d["id"], d["number"], d["component_count"]]))
        .collect();
    let progress = ok(
        d.call(
            "GET",
            &format!("/v1/projects/{p}/progress?group_by=drawing"),
            None,
        ),
        "progress",
    );
    json!({"components": components, "drawings": drawings, "progress": progress})
}

fn operations(d: &Daemon, p: &str) -> Value {
    ok(
        d.call("GET", &format!("/v1/projects/{p}/operations"), None),
        "operations",
    )["items"]
        .clone()
}

fn rows(job: &Value) -> &Vec<Value> {
    job["result"]["rows"].as_array().expect("result.rows")
}

fn counts(job: &Value) -> [u64; 4] {
    let r = &job["result"];
    ["created", "updated", "unchanged", "rejected"]
        .map(|k| r[k].as_u64().unwrap_or_else(|| panic!("{k} in {r}")))
}

#[test]
fn a_dry_run_reports_every_row_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&dir.path().join("d"), &[]);
    let Seeded { project: p, .. } = seed(&d);
    let before = snapshot(&d, &p);
    let ops_before = operations(&d, &p);

    let job = import(&d, &p, FIELD_CSV.as_bytes(), "text/csv", "?dry_run=true");
    assert_eq!(job["state"], "completed", "{job}");
    assert_eq!(counts(&job), [1, 1, 1, 1]);
    assert_eq!(job["result"]["operation_id"], Value::Null);
    let actions: Vec<(u64, &str)> = rows(&job)
        .iter()
        .map(|r| (r["row"].as_u64().unwrap(), r["action"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        [(2, "update"), (3, "unchanged"), (4, "create"), (5, "rejected")]
    );
    let error = &rows(&job)[3]["errors"][0];
    assert_eq!(
        (error["column"].as_str(), error["code"].as_str()),
        (Some("TEMPLATE"), Some("unknown_template"))
    );
    assert!(error["message"].as_str().unwrap().contains("Valve"), "{error}");

    assert_eq!(snapshot(&d, &p), before, "a dry run changes nothing");
    assert_eq!(operations(&d, &p), ops_before, "a dry run records no operation");
}

#[test]
fn an_import_then_its_undo_leaves_the_project_exactly_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&dir.path().join("d"), &[]);
    let s = seed(&d);
    let p = &s.project;
    let before = snapshot(&d, p);

    let job = import(&d, p, FIELD_CSV.as_bytes(), "text/csv", "");
    assert_eq!(counts(&job), [1, 1, 1, 1], "{job}");
    let op = job["result"]["operation_id"]
        .as_str()
        .expect("a real import is an operation")
        .to_owned();
    let pipe = ok(
        d.call("GET", &format!("/v1/projects/{p}/components/{}", s.pipe), None),
        "pipe",
    );
    assert_eq!(pipe["quantity_total"], 120.0);
    assert_eq!(
        pipe["attributes"],
        json!({"area": "A1", "test_package": "TP-1", "Line Class": "CS150"})
    );
    // Progress rolls up by test package, as a pressure test is signed off.
    let by_package = ok(
        d.call(
            "GET",
            &format!("/v1/projects/{p}/progress?group_by=test_package"),
            None,
        ),
        "progress by test package",
    );
    let keys: Vec<&Value> = by_package["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| &g["key"])
        .collect();
    assert!(keys.contains(&&json!("TP-1")), "{by_package}");
    let list = ok(
        d.call("GET", &format!("/v1/projects/{p}/components?q=P-9"), None),
        "list",
    );
    assert_eq!(list["items"][0]["kind"], "pipe");
    assert!(
        snapshot(&d, p)["drawings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d[1] == "ISO-2"),
        "a drawing named in the file is created"
    );
    let listed = operations(&d, p);
    let entry = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["id"] == op.as_str())
        .expect("listed");
    assert_eq!(entry["kind"], "import");

    let undo = ok(
        d.call("POST", &format!("/v1/projects/{p}/operations/{op}/undo"), None),
        "undo",
    );
    assert!(undo["reverted"].as_u64().unwrap() > 0, "{undo}");
    assert_eq!(
        snapshot(&d, p),
        before,
        "undo removes what the import created and restores what it changed"
    );

    // The freed drawing number and tag import afresh.
    let again = import(&d, p, FIELD_CSV.as_bytes(), "text/csv", "");
    assert_eq!(counts(&again), [1, 1, 1, 1], "{again}");
}

#[test]
fn malformed_files_get_clear_errors_and_rejected_rows_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&dir.path().join("d"), &[]);
    let Seeded { project: p, .. } = seed(&d);
    let tags = |d: &Daemon| -> Vec<String> {
        ok(
            d.call("GET", &format!("/v1/projects/{p}/components"), None),
            "list",
        )["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["tag"].as_str().unwrap().to_owned())
            .collect()
    };
    let mut file = b"DWG,TAG,TEMPLATE,QTY,ZONE\n".to_vec();
    file.extend_from_slice(b"ISO-1,BAD-ENC,Pipe,5,Zone \xe9\n"); // Latin-1, not UTF-8
    file.extend_from_slice(b"ISO-1,RAGGED,Pipe,5\n");
    file.extend_from_slice(b"ISO-1,NO-TPL,Gate valve,,A1\n");
    file.extend_from_slice(b"ISO-1,NEG,Pipe,-4,A1\n");
    file.extend_from_slice(b"ISO-1,NAN,Pipe,lots,A1\n");
    file.extend_from_slice(b"ISO-1,GOOD,Pipe,7.5,A1\n");
    let job = import(&d, &p, &file, "text/csv", "");
    assert_eq!(
        job["state"], "completed",
        "rejected rows leave the job completed: {job}"
    );
    assert_eq!(counts(&job), [1, 0, 0, 5]);
    let errors: Vec<(u64, Option<&str>, &str)> = rows(&job)
        .iter()
        .filter(|r| r["action"] == "rejected")
        .map(|r| {
            let e = &r["errors"][0];
            (
                r["row"].as_u64().unwrap(),
                e["column"].as_str(),
                e["code"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        errors,
        [
            (2, Some("ZONE"), "bad_encoding"),
            (3, None, "ragged_row"),
            (4, Some("TEMPLATE"), "unknown_template"),
            (5, Some("QTY"), "negative_quantity"),
            (6, Some("QTY"), "invalid_number"),
        ]
    );
    let now = tags(&d);
    assert!(now.contains(&"GOOD".to_owned()), "{now:?}");
    for rejected in ["BAD-ENC", "RAGGED", "NO-TPL", "NEG", "NAN"] {
        assert!(
            !now.contains(&rejected.to_owned()),
            "{rejected} was written: {now:?}"
        );
    }

    // Files that cannot be read at all: the job fails, nothing is written.
    let before = snapshot(&d, &p);
    let failures: [(&[u8], &str, &str); 5] = [
        (b"", "text/csv", "empty"),
        (b"DWG,QTY\nISO-1,5\n", "text/csv", "tag column"),
        (b"TAG,TAG\nA,B\n", "text/csv", "both mean tag"),
        (
            b"[{\"drawing\": \"ISO-1\", \"tag\": \"J-1\", \"template\": \"Pipe\", \"qty\": 1},\n {\"tag\": ",
            "application/json",
            "line 2",
        ),
        (b"{\"tag\": \"J-1\"}", "application/json", "array"),
    ];
    for (body, ct, says) in failures {
        let job = import(&d, &p, body, ct, "");
        assert_eq!(job["state"], "failed", "{job}");
        let message = job["message"].as_str().unwrap();
        assert!(message.contains(says), "{message:?} should mention {says:?}");
    }
    assert_eq!(
        snapshot(&d, &p),
        before,
        "a failed file writes nothing, not even its good rows"
    );

    // JSON rows: one good object, one that is not an object.
    let json_rows =
        br#"[{"DWG": "ISO-1", "TAG": "J-1", "TEMPLATE": "Spool", "attributes": {"paint": "red"}}, 42]"#;
    let job = import(&d, &p, json_rows, "application/json", "");
    assert_eq!(counts(&job), [1, 0, 0, 1], "{job}");
    assert_eq!(rows(&job)[1]["errors"][0]["code"], "not_an_object");

    // Refused before a job exists.
    let (status, body) = d.upload(&format!("/v1/projects/{p}/imports"), b"x", "application/pdf");
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (415, Some("unsupported_media_type"))
    );
    let (status, body) = d.upload(
        &format!("/v1/projects/{p}/imports?mapping=nope"),
        b"TAG\nA\n",
        "text/csv",
    );
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("mapping")));
    let (status, _) = d.upload(
        &format!("/v1/projects/{}/imports", uuid::Uuid::new_v4()),
        b"TAG\nA\n",
        "text/csv",
    );
    assert_eq!(status, 404);
}

#[test]
fn a_mapping_renames_spreadsheet_columns() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&dir.path().join("d"), &[]);
    let Seeded { project: p, .. } = seed(&d);
    let mapping = r#"{"Line No":"tag","Iso":"drawing","Remarks":null}"#;
    let encoded: String = mapping
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let query = format!("?mapping={encoded}");
    let csv = "Iso,Line No,TEMPLATE,Remarks,Insulation\nISO-1,L-100,Spool,ignore me,hot\n";
    let job = import(&d, &p, csv.as_bytes(), "text/csv", &query);
    assert_eq!(counts(&job), [1, 0, 0, 0], "{job}");
    let c = &ok(
        d.call("GET", &format!("/v1/projects/{p}/components?q=L-100"), None),
        "list",
    )["items"][0];
    assert_eq!(
        c["attributes"],
        json!({"Insulation": "hot"}),
        "Remarks is skipped, Insulation is an attribute"
    );
}

#[test]
fn exports_round_trip_through_import_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&dir.path().join("d"), &[]);
    let s = seed(&d);
    let p = &s.project;
    // Progress and attributes, so every kind of column has something in it.
    ok(
        d.call(
            "PUT",
            &format!("/v1/projects/{p}/components/{}/milestones/erect", s.spool),
            Some(&json!({"completed": true})),
        ),
        "erect",
    );
    ok(
        d.call(
            "PATCH",
            &format!("/v1/projects/{p}/components/{}", s.pipe),
            // And text a spreadsheet would run as a formula, in a value
            // and in an attribute's name.
            Some(
                &json!({"attributes": {"area": "A9", "status": "hold", "QTY": "odd",
                "note": "=HYPERLINK(\"http://evil.example\",\"open\")", "@risk": "-1+1"}}),
            ),
        ),
        "attributes",
    );
    let export = |body: Value| -> (Value, String, Vec<u8>) {
        let (status, accepted) = d.call("POST", &format!("/v1/projects/{p}/exports"), Some(&body));
        assert_eq!(status, 202, "{accepted}");
        let job = d.wait_job(accepted["job_id"].as_str().unwrap());
        assert_eq!(job["state"], "completed", "{job}");
        let (status, ct, bytes) = d.download(&format!("/v1/jobs/{}/download", job["id"].as_str().unwrap()));
        assert_eq!(status, 200);
        (job, ct, bytes)
    };

    let (job, ct, csv) = export(json!({"format": "csv"}));
    assert!(ct.starts_with("text/csv"), "{ct}");
    assert_eq!(job["result"]["rows"], 2);
    let text = String::from_utf8(csv.clone()).unwrap();
    let header = text.lines().next().unwrap();
    for column in [
        "drawing",
        "tag",
        "template",
        "milestone:erect",
        "milestone:weld",
        "completion_percent",
        "status",
        "attr:status",
        "attr:QTY",
        "area",
    ] {
        assert!(
            header.split(',').any(|h| h == column),
            "{column} missing from {header}"
        );
    }
    // Formulas are quoted so a spreadsheet shows them as text; the
    // import below takes the quotes off again (all rows unchanged).
    assert!(text.contains("'=HYPERLINK("), "{text}");
    assert!(header.split(',').any(|h| h == "'@risk"), "{header}");
    assert!(text.contains(",'-1+1"), "{text}");
    assert!(
        !text.contains(",=HYPERLINK") && !text.contains("\"=HYPERLINK"),
        "{text}"
    );
    let (status, _, streamed) = d.download(&format!("/v1/projects/{p}/components.csv"));
    assert_eq!(status, 200);
    assert_eq!(
        String::from_utf8(streamed).unwrap(),
        text,
        "the streamed list matches the export"
    );

    let before = snapshot(&d, p);
    let dry = import(&d, p, &csv, "text/csv", "?dry_run=true");
    assert_eq!(counts(&dry), [0, 0, 2, 0], "{dry}");
    let real = import(&d, p, &csv, "text/csv", "");
    assert_eq!(counts(&real), [0, 0, 2, 0], "{real}");
    assert_eq!(
        real["result"]["operation_id"],
        Value::Null,
        "nothing written, no operation"
    );
    assert_eq!(snapshot(&d, p), before);

    let (_, ct, json_file) = export(json!({"format": "json"}));
    assert_eq!(ct, "application/json");
    let parsed: Value = serde_json::from_slice(&json_file).unwrap();
    assert_eq!(parsed.as_array().unwrap().len(), 2);
    let again = import(&d, p, &json_file, "application/json", "?dry_run=true");
    assert_eq!(counts(&again), [0, 0, 2, 0], "{again}");

    let (job, ct, xlsx) = export(json!({"format": "xlsx"}));
    assert!(ct.contains("spreadsheetml"), "{ct}");
    assert!(xlsx.starts_with(b"PK\x03\x04"), "an XLSX is a zip");
    assert!(job["result"]["file_name"].as_str().unwrap().ends_with(".xlsx"));

    let (_, _, chosen) = export(json!({"format": "csv", "columns": ["tag", "milestone:erect", "status"]}));
    let chosen = String::from_utf8(chosen).unwrap();
    let mut lines = chosen.lines();
    assert_eq!(lines.next(), Some("tag,milestone:erect,status"));
    assert!(lines.any(|l| l == "SP-1,true,in_progress"), "{chosen}");

    let (status, body) = d.call(
        "POST",
        &format!("/v1/projects/{p}/exports"),
        Some(&json!({"format": "csv", "columns": ["tag", "colour"]})),
    );
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("columns[1]"))
    );
    let (status, _) = d.call(
        "POST",
        &format!("/v1/projects/{p}/exports"),
        Some(&json!({"format": "pdf"})),
    );
    assert_eq!(status, 400);
    let (status, _, body) = d.download(&format!("/v1/jobs/{}/download", dry["id"].as_str().unwrap()));
    assert_eq!(
        status,
        404,
        "an import has no file: {}",
        String::from_utf8_lossy(&body)
    );
}

/// Rows spread over drawings of 50, as a large field list is.
fn big_csv(rows: usize) -> Vec<u8> {
    let mut csv = String::from("DWG,TAG,TEMPLATE,QTY\n");
    for i in 0..rows {
        csv.push_str(&format!("BIG-{:04},T-{i:06},Pipe,{}\n", i / 50, 1 + i % 90));
    }
    csv.into_bytes()
}

#[test]
fn a_job_killed_by_a_restart_shows_interrupted_and_can_be_undone() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let fast = ["--job-event-interval-ms", "20"];
    let mut d = Daemon::start(&data, &fast);
    let s = seed(&d);
    let p = &s.project;
    let before = snapshot(&d, p);
    let (status, accepted) = d.upload(&format!("/v1/projects/{p}/imports"), &big_csv(20_000), "text/csv");
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["job_id"].as_str().unwrap().to_owned();
    let seen = sitesync_tests::eventually("the import to be part-way", Duration::from_secs(60), || {
        let job = ok(d.call("GET", &format!("/v1/jobs/{id}"), None), "job");
        assert!(
            job["state"] == "queued" || job["state"] == "running",
            "finished before the kill: make the file bigger: {job}"
        );
        (job["stage"] == "importing" && job["current"].as_u64() >= Some(1000)).then_some(job)
    });
    // Several event intervals, so the progress seen is persisted.
    std::thread::sleep(Duration::from_millis(200));
    d.kill();

    let d = Daemon::start(&data, &fast);
    let job = ok(
        d.call("GET", &format!("/v1/jobs/{id}"), None),
        "job after restart",
    );
    assert_eq!(job["state"], "interrupted", "{job}");
    assert_eq!(job["stage"], "importing");
    assert!(
        job["current"].as_u64() >= seen["current"].as_u64(),
        "last progress kept: {job}"
    );
    assert!(job["current"].as_u64() < Some(20_000));
    assert!(
        job["message"].as_str().unwrap().contains("daemon stopped"),
        "{job}"
    );
    let op = job["result"]["operation_id"]
        .as_str()
        .expect("an interrupted import names its operation");

    // What it wrote before the kill is one operation, and undoing it
    // returns the project to where it was.
    ok(
        d.call("POST", &format!("/v1/projects/{p}/operations/{op}/undo"), None),
        "undo",
    );
    assert_eq!(snapshot(&d, p), before);
}

#[test]
fn the_event_stream_carries_a_jobs_progress() {
    let dir = tempfile::tempdir().unwrap();
    // Every progress report becomes an event (throttling has its own unit
    // test), and a dry run, so no component events crowd the stream.
    let d = Daemon::start(&dir.path().join("d"), &["--job-event-interval-ms", "0"]);
    let Seeded { project: p, .. } = seed(&d);
    let client = d.client();
    let query = format!("?project_id={p}");
    let reader = std::thread::spawn(move || {
        client.events_until(&query, None, Duration::from_secs(60), |seen| {
            seen.iter()
                .any(|(_, kind, data)| kind == "job.updated" && data["state"] == "completed")
        })
    });
    std::thread::sleep(Duration::from_millis(300)); // the stream is open
    let (status, accepted) = d.upload(
        &format!("/v1/projects/{p}/imports?dry_run=true"),
        &big_csv(6_000),
        "text/csv",
    );
    assert_eq!(status, 202);
    let id = accepted["job_id"].as_str().unwrap();
    let events: Vec<Value> = reader
        .join()
        .unwrap()
        .into_iter()
        .filter(|(_, kind, data)| kind == "job.updated" && data["id"] == id)
        .map(|(_, _, data)| data)
        .collect();
    let states: Vec<&str> = events.iter().map(|e| e["state"].as_str().unwrap()).collect();
    assert_eq!(states.first(), Some(&"queued"), "{states:?}");
    assert_eq!(states.last(), Some(&"completed"), "{states:?}");
    let progress: Vec<(String, u64)> = events
        .iter()
        .filter(|e| e["state"] == "running" && e["stage"].is_string())
        .map(|e| {
            (
                e["stage"].as_str().unwrap().to_owned(),
                e["current"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(
        progress
            .iter()
            .filter(|(s, c)| s == "importing" && *c > 0 && *c < 6000)
            .count()
            >= 2,
        "progress part-way through: {progress:?}"
    );
    let stage_order: Vec<&str> = progress.iter().map(|(s, _)| s.as_str()).collect();
    let first_import = stage_order.iter().position(|s| *s == "importing").unwrap();
    assert!(
        stage_order[first_import..].iter().all(|s| *s == "importing"),
        "stages only move forward: {stage_order:?}"
    );
    for pair in progress.windows(2) {
        if pair[0].0 == pair[1].0 {
            assert!(pair[0].1 <= pair[1].1, "progress never goes back: {progress:?}");
        }
    }
    let last = events.last().unwrap();
    assert_eq!(last["result"]["created"], 6000);
    assert!(
        last["result"].get("rows").is_none(),
        "events leave the per-row report to GET /v1/jobs/{{id}}"
    );
}

#[test]
fn uploads_are_sniffed_size_limited_and_refused_for_a_deleted_project() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&dir.path().join("d"), &["--max-import-mb", "1"]);
    let Seeded { project: p, .. } = seed(&d);
    // No usable Content-Type: a leading '[' (after a byte-order mark) is JSON, anything else CSV.
    let json = "\u{feff} [{\"DWG\": \"ISO-1\", \"TAG\": \"S-1\", \"TEMPLATE\": \"Spool\"}]";
    let job = import(
        &d,
        &p,
        json.as_bytes(),
        "application/octet-stream",
        "?dry_run=true",
    );
    assert_eq!(counts(&job), [1, 0, 0, 0], "{job}");
    let job = import(
        &d,
        &p,
        b"DWG,TAG,TEMPLATE\nISO-1,S-2,Spool\n",
        "application/octet-stream",
        "?dry_run=true",
    );
    assert_eq!(counts(&job), [1, 0, 0, 0], "{job}");

    let mut big = b"DWG,TAG,TEMPLATE\n".to_vec();
    while big.len() <= 1024 * 1024 {
        big.extend_from_slice(b"ISO-1,FILLER-ROW-WITH-A-LONG-TAG,Spool\n");
    }
    let (status, body) = d.upload(&format!("/v1/projects/{p}/imports"), &big, "text/csv");
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("too_large")),
        "{body}"
    );
    let jobs = ok(d.call("GET", &format!("/v1/jobs?project_id={p}"), None), "jobs");
    assert_eq!(jobs["total"], 2, "a refused upload leaves no job: {jobs}");
    let kept: Vec<_> = std::fs::read_dir(d.data_dir.join("jobs")).unwrap().collect();
    assert_eq!(kept.len(), 2, "nor its file");

    ok(
        d.call("DELETE", &format!("/v1/projects/{p}"), None),
        "delete project",
    );
    let (status, body) = d.upload(&format!("/v1/projects/{p}/imports"), b"TAG\nA\n", "text/csv");
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("project_deleted"))
    );
}
