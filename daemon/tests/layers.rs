//! HTTP stays in the API (ARCHITECTURE.md, "HTTP stays in the API"): below
//! `daemon/src/api/`, only the edges that serve HTTP themselves may name
//! it. The service answers with `ServiceError`, never a status.

/// Files that serve HTTP themselves: the server's entry points, the
/// metrics endpoint and its request tracking, the `--peer-listen` server
/// (a WebSocket upgrade).
const EDGES: &[&str] = &["lib.rs", "main.rs", "metrics.rs", "replication/listen.rs"];

/// Names that mean HTTP.
const HTTP: &[&str] = &[
    "axum",
    "StatusCode",
    "ApiError",
    "ApiResult",
    "crate::api",
    "hyper",
];

#[test]
fn http_is_named_only_in_the_api_and_its_edges() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                if rel != "api" {
                    stack.push(path);
                }
                continue;
            }
            if EDGES.contains(&rel.as_str()) || path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for (n, line) in text.lines().enumerate() {
                if line.trim_start().starts_with("//") {
                    continue;
                }
                for name in HTTP {
                    if line.contains(name) {
                        found.push(format!("src/{rel}:{}: {name}: {}", n + 1, line.trim()));
                    }
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "HTTP below the API (return a ServiceError and map it in api::error):\n{}",
        found.join("\n")
    );
}
