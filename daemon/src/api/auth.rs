//! Who may talk to the daemon: the API token (created once, written
//! atomically with mode 0600 before the daemon listens) or a signed-in
//! browser's session cookie ([`crate::api::app`]), the Host check (DNS-rebinding
//! defence, first on every request) and the Origin check (browsers from
//! other sites). Only the app's page and assets, `GET /v1/health` and
//! `POST /v1/session` need neither token nor cookie ([`crate::api::app::is_public`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::api::error::ApiError;

/// The token file's name inside the data directory.
pub const TOKEN_FILE: &str = "api-token";

/// Reads the API token, creating it on first start. The file is written to a
/// temporary name with mode 0600, synced, then renamed, so a crash never
/// leaves a partial or world-readable token.
pub fn ensure_token(data_dir: &Path) -> std::io::Result<(String, PathBuf)> {
    let path = data_dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => {
            check_private(&path)?;
            return Ok((t.trim().to_owned(), path));
        }
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

/// Refuses a token file others may read: whoever read it holds the API.
/// The daemon writes it 0600; a wider mode is someone's change, and the
/// token may have leaked, so it is not quietly narrowed.
fn check_private(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "{} is readable by others (mode {mode:03o}): anyone who read it can use the API. \
                     Delete it for a new token, or `chmod 600` it if nobody else could read it",
                    path.display()
                ),
            ));
        }
    }
    Ok(())
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
    let mut cors = None;
    let own_origin = |origin: &str| {
        origin
            .strip_prefix("http://")
            .is_some_and(|h| app.allowed_hosts.iter().any(|a| a.eq_ignore_ascii_case(h)))
    };
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .map(|o| o.to_str().unwrap_or("").to_owned());
    if let Some(origin) = &origin
        && !own_origin(origin)
    {
        if !app.allowed_origins.iter().any(|o| o == origin) {
            return deny(
                StatusCode::FORBIDDEN,
                "forbidden_origin",
                format!(
                    "Origin {origin:?} is not allowed (start the daemon with --allow-origin to allow it)"
                ),
            );
        }
        cors = header::HeaderValue::from_str(origin).ok();
    }
    // A browser asks before a cross-origin request with a token (a
    // preflight carries none): an allowed origin is answered here.
    if let Some(origin) = &cors
        && req.method() == axum::http::Method::OPTIONS
        && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        let mut response = StatusCode::NO_CONTENT.into_response();
        allow_origin(&mut response, origin);
        let h = response.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            header::HeaderValue::from_static(CORS_METHODS),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            header::HeaderValue::from_static(CORS_HEADERS),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            header::HeaderValue::from_static("600"),
        );
        return response;
    }
    let public = crate::api::app::is_public(req.method(), req.uri().path());
    let mut response = match (public, authorized(&app, &req)) {
        (true, _) | (false, Some(Credential::Token)) => next.run(req).await,
        (false, Some(Credential::Cookie)) => {
            // A browser sends the cookie with any request to this host,
            // whichever page asked: a write must come from the app itself.
            let safe = matches!(req.method(), &Method::GET | &Method::HEAD);
            if safe || origin.as_deref().is_some_and(own_origin) {
                next.run(req).await
            } else {
                deny(
                    StatusCode::FORBIDDEN,
                    "forbidden_origin",
                    format!(
                        "a write signed in by cookie must come from this daemon's own page (Origin {:?})",
                        origin.unwrap_or_default()
                    ),
                )
            }
        }
        (false, None) => deny(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong API token: send `Authorization: Bearer <token>` (the token is in <data-dir>/api-token), or sign in to the app with the URL the daemon printed (`sitesync-daemon open` prints a new one)"
                .into(),
        ),
    };
    if let Some(origin) = &cors {
        allow_origin(&mut response, origin);
    }
    response
}

/// What a preflight allows an `--allow-origin` page: every method and
/// request header the API reads.
const CORS_METHODS: &str = "GET, POST, PUT, PATCH, DELETE";
const CORS_HEADERS: &str = "Authorization, Content-Type, X-User, Last-Event-ID";

/// Lets the page of `origin` (already checked) read the answer.
fn allow_origin(response: &mut Response, origin: &header::HeaderValue) {
    let h = response.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        header::HeaderValue::from_static("Location, Content-Disposition"),
    );
    h.append(header::VARY, header::HeaderValue::from_static("Origin"));
}

/// What a request proved itself with.
enum Credential {
    /// The API token: a program, or a page given the token.
    Token,
    /// A signed-in browser's session cookie.
    Cookie,
}

fn authorized(app: &AppState, req: &Request) -> Option<Credential> {
    let expected = app.token.as_bytes();
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let Some(given) = bearer {
        return bool::from(given.trim().as_bytes().ct_eq(expected)).then_some(Credential::Token);
    }
    // Browsers' EventSource cannot set headers, so event streams may pass
    // the token in the query.
    if req.uri().path() == "/v1/events" {
        let query = req.uri().query().unwrap_or("");
        if query
            .split('&')
            .filter_map(|kv| kv.strip_prefix("token="))
            .any(|t| t.as_bytes().ct_eq(expected).into())
        {
            return Some(Credential::Token);
        }
    }
    let session = crate::api::app::session_of(req.headers(), &app.cookie_name)?;
    let mut logins = app.logins.lock().unwrap_or_else(|p| p.into_inner());
    logins
        .touch(&session, sitesync_sync::link::now_ms())
        .then_some(Credential::Cookie)
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

    /// A token file others may read is refused, naming the file and the fix.
    #[cfg(unix)]
    #[test]
    fn a_token_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (_, path) = ensure_token(dir.path()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = ensure_token(dir.path()).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
        assert!(
            e.to_string().contains("mode 644") && e.to_string().contains("chmod 600"),
            "{e}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        ensure_token(dir.path()).unwrap();
    }
}
