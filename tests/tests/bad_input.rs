//! Every endpoint against bad input, as a table: malformed JSON, wrong types,
//! unknown fields and ids, out-of-range and wrong-workflow values, oversized
//! bodies, bad cursors and filters, missing or wrong token, a foreign Host or
//! Origin. Each must get the documented status and error code — never a 500 —
//! and leave the store exactly as it was.

use serde_json::{Value, json};
use sitesync_tests::{Daemon, seed};

struct Case {
    name: &'static str,
    method: &'static str,
    path: String,
    body: Option<String>,
    headers: Vec<(&'static str, String)>,
    status: u16,
    code: &'static str,
}

fn case(
    name: &'static str,
    method: &'static str,
    path: String,
    body: Option<Value>,
    status: u16,
    code: &'static str,
) -> Case {
    Case {
        name,
        method,
        path,
        body: body.map(|b| b.to_string()),
        headers: vec![],
        status,
        code,
    }
}

/// Everything a bad request could have changed.
fn fingerprint(d: &Daemon, project: &str) -> Value {
    let get = |p: String| d.call("GET", &p, None).1;
    json!({
        "projects": get("/v1/projects".into()),
        "components": get(format!("/v1/projects/{project}/components?include_deleted=true&limit=1000")),
        "drawings": get(format!("/v1/projects/{project}/drawings")),
        "templates": get(format!("/v1/projects/{project}/templates")),
        "operations": get(format!("/v1/projects/{project}/operations"))["total"],
    })
}

#[test]
fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&dir.path().join("d"), &[]);
    let s = seed(&d);
    let p = &s.project;
    let pipe_ms = format!("/v1/projects/{p}/components/{}/milestones/install", s.pipe);
    let spool_ms = format!("/v1/projects/{p}/components/{}/milestones/erect", s.spool);
    let comps = format!("/v1/projects/{p}/drawings/{}/components", s.drawing);
    let unknown = "00000000-0000-4000-8000-000000000000";
    let many: Vec<Value> = (0..10_001)
        .map(|_| json!({"component_id": s.pipe, "milestone": "install", "quantity_delta": 1}))
        .collect();

    let cases = vec![
        Case {
            body: Some("{\"name\":".into()),
            ..case(
                "malformed JSON",
                "POST",
                "/v1/projects".into(),
                None,
                400,
                "malformed_json",
            )
        },
        Case {
            body: Some(String::new()),
            ..case(
                "empty body",
                "POST",
                "/v1/projects".into(),
                None,
                400,
                "malformed_json",
            )
        },
        case(
            "wrong type",
            "POST",
            "/v1/projects".into(),
            Some(json!({"name": 5})),
            400,
            "invalid_field",
        ),
        case(
            "unknown field",
            "POST",
            "/v1/projects".into(),
            Some(json!({"name": "x", "colour": "red"})),
            400,
            "invalid_field",
        ),
        case(
            "blank name",
            "POST",
            "/v1/projects".into(),
            Some(json!({"name": " "})),
            422,
            "invalid",
        ),
        case(
            "unknown project",
            "GET",
            format!("/v1/projects/{unknown}"),
            None,
            404,
            "not_found",
        ),
        case(
            "malformed project id",
            "GET",
            "/v1/projects/not-a-uuid".into(),
            None,
            404,
            "not_found",
        ),
        case(
            "patch unknown project",
            "PATCH",
            format!("/v1/projects/{unknown}"),
            Some(json!({"name": "x"})),
            404,
            "not_found",
        ),
        case(
            "zero weight",
            "POST",
            format!("/v1/projects/{p}/templates"),
            Some(
                json!({"name": "T", "workflow_type": "discrete", "milestones": [{"key": "a", "name": "A", "weight": 0}]}),
            ),
            422,
            "non_positive_weight",
        ),
        case(
            "duplicate keys",
            "POST",
            format!("/v1/projects/{p}/templates"),
            Some(
                json!({"name": "T", "workflow_type": "discrete", "milestones": [{"key": "a", "name": "A", "weight": 1}, {"key": "a", "name": "B", "weight": 1}]}),
            ),
            422,
            "duplicate_milestone_key",
        ),
        case(
            "unknown workflow",
            "POST",
            format!("/v1/projects/{p}/templates"),
            Some(json!({"name": "T", "workflow_type": "vibes", "milestones": []})),
            400,
            "invalid_field",
        ),
        case(
            "drawing without number",
            "POST",
            format!("/v1/projects/{p}/drawings"),
            Some(json!({"title": "x"})),
            400,
            "invalid_field",
        ),
        case(
            "drawing with unknown parent",
            "POST",
            format!("/v1/projects/{p}/drawings"),
            Some(json!({"number": "X", "parent_id": unknown})),
            422,
            "invalid",
        ),
        case(
            "unknown drawing",
            "GET",
            format!("/v1/projects/{p}/drawings/{unknown}"),
            None,
            404,
            "not_found",
        ),
        case(
            "missing quantity total",
            "POST",
            comps.clone(),
            Some(json!({"tag": "P2", "kind": "pipe", "template_id": s.quantity})),
            422,
            "missing_quantity_total",
        ),
        case(
            "negative budget",
            "POST",
            comps.clone(),
            Some(json!({"tag": "S2", "kind": "spool", "template_id": s.discrete, "budget_hours": -1})),
            422,
            "out_of_range",
        ),
        case(
            "unknown template",
            "POST",
            comps.clone(),
            Some(json!({"tag": "S2", "kind": "spool", "template_id": unknown})),
            404,
            "template_not_found",
        ),
        case(
            "malformed template id",
            "POST",
            comps.clone(),
            Some(json!({"tag": "S2", "kind": "spool", "template_id": "nope"})),
            400,
            "invalid_id",
        ),
        case(
            "unknown component",
            "GET",
            format!("/v1/projects/{p}/components/{unknown}"),
            None,
            404,
            "not_found",
        ),
        case(
            "milestone of unknown component",
            "PUT",
            format!("/v1/projects/{p}/components/{unknown}/milestones/erect"),
            Some(json!({"completed": true})),
            404,
            "not_found",
        ),
        case(
            "unknown milestone key",
            "PUT",
            format!("/v1/projects/{p}/components/{}/milestones/paint", s.spool),
            Some(json!({"completed": true})),
            404,
            "unknown_milestone",
        ),
        case(
            "wrong workflow value",
            "PUT",
            spool_ms.clone(),
            Some(json!({"percent": 50})),
            409,
            "wrong_workflow",
        ),
        case(
            "two values",
            "PUT",
            spool_ms.clone(),
            Some(json!({"completed": true, "percent": 5})),
            400,
            "invalid_value",
        ),
        case(
            "no value",
            "PUT",
            spool_ms.clone(),
            Some(json!({"reason": "x"})),
            400,
            "invalid_value",
        ),
        case(
            "completed as string",
            "PUT",
            spool_ms.clone(),
            Some(json!({"completed": "yes"})),
            400,
            "invalid_field",
        ),
        case(
            "negative quantity",
            "PUT",
            pipe_ms.clone(),
            Some(json!({"quantity": -1})),
            422,
            "negative_quantity",
        ),
        case(
            "delta below zero",
            "PUT",
            pipe_ms.clone(),
            Some(json!({"quantity_delta": -1})),
            422,
            "negative_quantity",
        ),
        case(
            "future effective date",
            "PUT",
            spool_ms.clone(),
            Some(json!({"completed": true, "effective_date": "2999-01-01"})),
            422,
            "invalid",
        ),
        case(
            "bad cursor",
            "GET",
            format!("/v1/projects/{p}/components?cursor=zzz"),
            None,
            400,
            "invalid_cursor",
        ),
        case(
            "bad limit",
            "GET",
            format!("/v1/projects/{p}/components?limit=5000"),
            None,
            400,
            "invalid_limit",
        ),
        case(
            "bad sort",
            "GET",
            format!("/v1/projects/{p}/components?sort=colour"),
            None,
            400,
            "invalid_query",
        ),
        case(
            "bad status filter",
            "GET",
            format!("/v1/projects/{p}/components?status=done"),
            None,
            400,
            "invalid_query",
        ),
        case(
            "unknown filter",
            "GET",
            format!("/v1/projects/{p}/components?colour=red"),
            None,
            400,
            "invalid_query",
        ),
        case(
            "bad min_completion",
            "GET",
            format!("/v1/projects/{p}/components?min_completion=lots"),
            None,
            400,
            "invalid_query",
        ),
        case(
            "bad group_by",
            "GET",
            format!("/v1/projects/{p}/progress?group_by=colour"),
            None,
            400,
            "invalid_query",
        ),
        case(
            "bulk too large",
            "POST",
            format!("/v1/projects/{p}/milestones:bulk"),
            Some(json!({"updates": many})),
            413,
            "too_many",
        ),
        case(
            "bulk malformed id",
            "POST",
            format!("/v1/projects/{p}/milestones:bulk"),
            Some(json!({"updates": [{"component_id": "x", "milestone": "erect", "completed": true}]})),
            400,
            "invalid_id",
        ),
        case(
            "bulk atomic with an invalid update",
            "POST",
            format!("/v1/projects/{p}/milestones:bulk"),
            Some(
                json!({"updates": [{"component_id": s.spool, "milestone": "erect", "completed": true}, {"component_id": s.spool, "milestone": "erect", "percent": 3}], "options": {"atomic": true}}),
            ),
            422,
            "",
        ),
        case(
            "undo unknown operation",
            "POST",
            format!("/v1/projects/{p}/operations/{unknown}/undo"),
            None,
            404,
            "operation_not_found",
        ),
        case(
            "no such route",
            "GET",
            "/v1/nothing".into(),
            None,
            404,
            "no_route",
        ),
        Case {
            headers: vec![("Authorization", "Basic Zm9vOmJhcg==".into())],
            ..case(
                "no bearer token",
                "GET",
                "/v1/projects".into(),
                None,
                401,
                "unauthorized",
            )
        },
        Case {
            headers: vec![("Authorization", "Bearer nope".into())],
            ..case(
                "wrong token",
                "POST",
                "/v1/projects".into(),
                Some(json!({"name": "x"})),
                401,
                "unauthorized",
            )
        },
        Case {
            headers: vec![("Origin", "https://evil.example".into())],
            ..case(
                "foreign origin",
                "POST",
                "/v1/projects".into(),
                Some(json!({"name": "x"})),
                403,
                "forbidden_origin",
            )
        },
        Case {
            headers: vec![("X-User", "u".repeat(201))],
            ..case(
                "X-User too long",
                "POST",
                "/v1/projects".into(),
                Some(json!({"name": "x"})),
                400,
                "invalid_header",
            )
        },
        Case {
            body: Some("x".repeat(17 * 1024 * 1024)),
            ..case(
                "oversized body",
                "POST",
                "/v1/projects".into(),
                None,
                413,
                "too_large",
            )
        },
    ];
    let before = fingerprint(&d, p);
    for c in &cases {
        let headers: Vec<(&str, &str)> = c.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, body) = d.call_with(
            c.method,
            &c.path,
            c.body.clone().map(String::into_bytes),
            &headers,
        );
        assert_eq!(status, c.status, "{}: {body}", c.name);
        if !c.code.is_empty() {
            assert_eq!(body["error"]["code"], json!(c.code), "{}: {body}", c.name);
            assert!(
                body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{}",
                c.name
            );
        }
        assert_eq!(fingerprint(&d, p), before, "{} changed something", c.name);
    }
    // Field paths name the culprit.
    let (_, body) = d.call("POST", "/v1/projects", Some(&json!({"name": 5})));
    assert_eq!(body["error"]["field"], json!("name"));
    let (_, body) = d.call("PUT", &spool_ms, Some(&json!({"percent": 50})));
    assert_eq!(body["error"]["field"], json!("percent"));

    // A foreign Host header is refused before anything else, even health.
    let host = |h: &str| format!("GET /v1/health HTTP/1.1\r\nHost: {h}\r\nConnection: close\r\n\r\n");
    assert_eq!(d.raw_status(&host("evil.example")), 403);
    assert_eq!(
        d.raw_status(&host(&format!("attacker.example:{}", d.addr.port()))),
        403
    );
    assert_eq!(d.raw_status(&host("127.0.0.1:1")), 403);
    assert_eq!(d.raw_status(&host(&format!("localhost:{}", d.addr.port()))), 200);
    assert_eq!(fingerprint(&d, p), before);
    // No Authorization header at all.
    let raw = format!(
        "GET /v1/projects HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
        d.addr.port()
    );
    assert_eq!(d.raw_status(&raw), 401);
}
