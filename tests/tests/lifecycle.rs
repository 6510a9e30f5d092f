//! Project and drawing lifecycles, templates, allowed origins and the demo
//! seed, against the real daemon.

use serde_json::{Value, json};
use sitesync_tests::{Daemon, ok, seed};

#[test]
fn projects_drawings_and_templates_change_and_soft_delete() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&dir.path().join("d"), &[]);
    let s = seed(&d);
    let p = &s.project;

    let templates = ok(
        d.call("GET", &format!("/v1/projects/{p}/templates"), None),
        "templates",
    );
    let names: Vec<_> = templates["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("Coating"), json!("Pipe"), json!("Spool")]);
    assert_eq!(templates["items"][2]["milestones"][1]["weight"], json!(60.0));

    let renamed = ok(
        d.call(
            "PATCH",
            &format!("/v1/projects/{p}"),
            Some(&json!({"name": "Plant B", "code": null})),
        ),
        "patch",
    );
    assert_eq!(
        (renamed["name"].clone(), renamed["code"].clone()),
        (json!("Plant B"), Value::Null)
    );

    let child = ok(
        d.call(
            "POST",
            &format!("/v1/projects/{p}/drawings"),
            Some(&json!({"number": "ISO-2", "parent_id": s.drawing})),
        ),
        "child drawing",
    );
    assert_eq!(child["parent_id"], json!(s.drawing));
    let did = child["id"].as_str().unwrap();
    let patched = ok(
        d.call(
            "PATCH",
            &format!("/v1/projects/{p}/drawings/{did}"),
            Some(&json!({"title": "Rack", "parent_id": null})),
        ),
        "patch drawing",
    );
    assert_eq!(
        (patched["title"].clone(), patched["parent_id"].clone()),
        (json!("Rack"), Value::Null)
    );
    assert_eq!(
        d.call("DELETE", &format!("/v1/projects/{p}/drawings/{did}"), None)
            .0,
        204
    );
    let drawings = ok(
        d.call("GET", &format!("/v1/projects/{p}/drawings"), None),
        "drawings",
    );
    assert_eq!(drawings["total"], json!(1), "a deleted drawing is not listed");
    let (status, body) = d.call(
        "PATCH",
        &format!("/v1/projects/{p}/drawings/{did}"),
        Some(&json!({"title": "x"})),
    );
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (409, json!("drawing_deleted"))
    );

    assert_eq!(d.call("DELETE", &format!("/v1/projects/{p}"), None).0, 204);
    let projects = ok(d.call("GET", "/v1/projects", None), "projects");
    assert_eq!(projects["total"], json!(0), "a deleted project is not listed");
    assert_eq!(
        ok(d.call("GET", &format!("/v1/projects/{p}"), None), "project")["deleted"],
        json!(true)
    );
}

#[test]
fn an_allowed_origin_is_served_and_others_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        &dir.path().join("d"),
        &["--allow-origin", "http://localhost:5173"],
    );
    let origin = |o: &str| d.call_with("GET", "/v1/projects", None, &[("Origin", o)]).0;
    assert_eq!(origin("http://localhost:5173"), 200);
    assert_eq!(origin("http://localhost:5174"), 403);

    // A browser's preflight (no token) is answered for the allowed origin,
    // and the answer to the real request lets that page read it.
    let host = format!("Host: {}\r\n", d.addr);
    let preflight = |o: &str| {
        d.raw_head(&format!(
            "OPTIONS /v1/projects HTTP/1.1\r\n{host}Origin: {o}\r\n\
             Access-Control-Request-Method: POST\r\n\
             Access-Control-Request-Headers: authorization, content-type\r\nConnection: close\r\n\r\n"
        ))
        .to_lowercase()
    };
    let head = preflight("http://localhost:5173");
    assert!(head.starts_with("http/1.1 204"), "{head}");
    assert!(
        head.contains("access-control-allow-origin: http://localhost:5173"),
        "{head}"
    );
    assert!(
        head.contains("access-control-allow-methods:") && head.contains("post"),
        "{head}"
    );
    assert!(
        head.contains("access-control-allow-headers:") && head.contains("authorization"),
        "{head}"
    );
    assert!(preflight("http://localhost:5174").starts_with("http/1.1 403"));
    let head = d
        .raw_head(&format!(
            "GET /v1/projects HTTP/1.1\r\n{host}Origin: http://localhost:5173\r\n\
             Authorization: Bearer {}\r\nConnection: close\r\n\r\n",
            d.token
        ))
        .to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("access-control-allow-origin: http://localhost:5173"),
        "{head}"
    );
}

#[test]
fn the_demo_project_is_seeded_once_with_progress() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let mut d = Daemon::start(&data, &["--demo"]);
    let projects = ok(d.call("GET", "/v1/projects", None), "projects");
    assert_eq!(projects["total"], json!(1));
    let demo = &projects["items"][0];
    assert_eq!(
        (demo["component_count"].clone(), demo["drawing_count"].clone()),
        (json!(150), json!(6))
    );
    let pct = demo["completion_percent"].as_f64().unwrap();
    assert!(pct > 10.0 && pct < 90.0, "some progress, not all: {pct}");
    let pid = demo["id"].as_str().unwrap().to_owned();
    let templates = ok(
        d.call("GET", &format!("/v1/projects/{pid}/templates"), None),
        "templates",
    );
    let spool = templates["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == json!("Spool"))
        .unwrap()
        .clone();
    let weights: Vec<f64> = spool["milestones"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["weight"].as_f64().unwrap())
        .collect();
    assert_eq!(weights, vec![5.0, 30.0, 30.0, 15.0, 5.0, 10.0, 5.0]);
    assert!(d.stop().success());
    let d = Daemon::start(&data, &["--demo"]);
    assert_eq!(
        ok(d.call("GET", "/v1/projects", None), "projects")["total"],
        json!(1),
        "seeded only once"
    );
}
