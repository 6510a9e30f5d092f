//! Who may talk to the daemon: the API token (created once, written
//! atomically with mode 0600 before the daemon listens), the Host check
//! (DNS-rebinding defence, first on every request) and the Origin check
//! (browsers from other sites). Only `GET /v1/health` needs no token.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::error::ApiError;

/// The token file's name inside the data directory.
pub const TOKEN_FILE: &str = "api-token";

/// Reads the API token, creating it on first start. The file is written to a
/// temporary name with mode 0600, synced, then renamed, so a crash never
/// leaves a partial or world-readable token.
pub fn ensure_token(data_dir: &Path) -> std::io::Result<(String, PathBuf)> {
    let path = data_dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok((t.trim().to_owned(), path)),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let token: String = {
        use rand::Rng;
        let bytes: [u8; 32] = rand::rng().random();
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    };
    let tmp = data_dir.join(format!(".{TOKEN_FILE}.tmp"));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp)?;
    f.write_all(token.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok((token, path))
}

/// The Host values a request may carry: loopback names at our port (plus the
/// listen address itself when remote access is allowed).
pub fn allowed_hosts(port: u16, extra: Option<String>) -> Vec<String> {
    let mut hosts = vec![
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
    ];
    hosts.extend(extra);
    hosts
}

fn deny(status: StatusCode, code: &'static str, message: String) -> Response {
    ApiError::new(status, code, message).into_response()
}

/// The guard every request passes, in order: Host, Origin, token.
pub async fn guard(State(app): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    match host {
        Some(h) if app.allowed_hosts.iter().any(|a| a.eq_ignore_ascii_case(&h)) => {}
        other => {
            return deny(
                StatusCode::FORBIDDEN,
                "forbidden_host",
                format!(
                    "Host {:?} is not this daemon's loopback address (expected one of {})",
                    other.unwrap_or_default(),
                    app.allowed_hosts.join(", ")
                ),
            );
        }
    }
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        if !app.allowed_origins.iter().any(|o| o == origin) {
            return deny(
                StatusCode::FORBIDDEN,
                "forbidden_origin",
                format!(
                    "Origin {origin:?} is not allowed (start the daemon with --allow-origin to allow it)"
                ),
            );
        }
    }
    if req.uri().path() != "/v1/health" && !authorized(&app.token, &req) {
        return deny(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong API token: send `Authorization: Bearer <token>` (the token is in <data-dir>/api-token)"
                .into(),
        );
    }
    next.run(req).await
}

fn authorized(token: &str, req: &Request) -> bool {
    let expected = token.as_bytes();
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let Some(given) = bearer {
        return given.trim().as_bytes().ct_eq(expected).into();
    }
    // Browsers' EventSource cannot set headers, so event streams may pass
    // the token in the query.
    if req.uri().path() == "/v1/events" {
        let query = req.uri().query().unwrap_or("");
        return query
            .split('&')
            .filter_map(|kv| kv.strip_prefix("token="))
            .any(|t| t.as_bytes().ct_eq(expected).into());
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let (t1, path) = ensure_token(dir.path()).unwrap();
        let (t2, _) = ensure_token(dir.path()).unwrap();
        assert_eq!(t1, t2);
        assert_eq!(t1.len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
