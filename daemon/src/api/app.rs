//! The field app: its assets, served from inside the binary at `/` (no
//! CDN, no network: it works on an air-gapped site), and signing in to it.
//!
//! Signing in never shows the API token. The daemon prints a one-time URL
//! (`http://127.0.0.1:7700/#login=<code>`; `sitesync-daemon open` asks the
//! running daemon for a new one). The code is in the fragment, so it never
//! reaches a server log or a `Referer`; the page posts it to
//! `POST /v1/session`, which answers with an `HttpOnly`, `SameSite=Strict`
//! session cookie ([`crate::login`] keeps codes and sessions). The guard
//! ([`crate::api::auth::guard`]) accepts that cookie like the bearer token, but a
//! write it authenticates must carry this daemon's own Origin, so no other
//! site's page can write through a signed-in browser.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::AppState;
use crate::api::ErrorResponse;
use crate::api::error::ApiError;
use crate::api::extract::JsonBody;
use crate::login::{CODE_TTL_MS, SESSION_IDLE_MS};

type App = State<Arc<AppState>>;

/// Each asset: (name under `/app/`, content type, bytes).
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../app/app.js"),
    ),
    (
        "ui.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../app/ui.js"),
    ),
    (
        "find.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../app/find.js"),
    ),
    (
        "projects.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../app/projects.js"),
    ),
    (
        "dashboard.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../app/dashboard.js"),
    ),
    (
        "component.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../app/component.js"),
    ),
    (
        "components.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../app/components.js"),
    ),
    (
        "operations.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../app/operations.js"),
    ),
    (
        "files.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../app/files.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("../../app/style.css"),
    ),
    ("icon.svg", "image/svg+xml", include_bytes!("../../app/icon.svg")),
];

const INDEX: &str = include_str!("../../app/index.html");

/// Only this daemon's own scripts, styles and API: an injected tag or a
/// tag name that looks like markup runs nothing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'self'; \
                   frame-ancestors 'none'";

fn with_headers(content_type: &'static str, body: impl IntoResponse) -> Response {
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // Assets change with the binary: the browser checks each time (cheap
    // on loopback) rather than keeping an old app after an upgrade.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `GET /`: the app's page. It holds no data; what it shows comes from the
/// API once signed in.
pub async fn index() -> Response {
    with_headers("text/html; charset=utf-8", INDEX)
}

/// `GET /app/{file}`: one of the app's assets.
pub async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, bytes)) => with_headers(content_type, *bytes),
        None => ApiError::not_found("asset", &file).into_response(),
    }
}

/// Whether `path` is served to anyone who passes the Host check: the app's
/// page and assets (they hold no data), health, and the sign-in itself.
pub fn is_public(method: &axum::http::Method, path: &str) -> bool {
    path == "/"
        || path.starts_with("/app/")
        || path == "/v1/health"
        || (method == axum::http::Method::POST && path == "/v1/session")
}

/// The session cookie's name. Cookies are not kept apart by port, so two
/// daemons on one machine (a foreman's and a test's) each use their own.
pub fn cookie_name(port: u16) -> String {
    format!("sitesync_session_{port}")
}

/// The session id a request's cookie carries, if any.
pub fn session_of(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// Sets the session cookie: script cannot read it, and no other site's
/// request carries it. `value` and `extra` are ours (hex, attributes).
fn set_cookie(response: &mut Response, name: &str, value: &str, extra: &str) {
    let cookie = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict{extra}");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
}

fn now_ms() -> i64 {
    sitesync_sync::link::now_ms()
}

#[derive(utoipa::ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionBody {
    /// The code from a sign-in URL (`#login=<code>`).
    code: String,
}

/// `POST /v1/session`: trades a one-time code for a session cookie.
#[utoipa::path(
    post,
    path = "/v1/session",
    tag = "app",
    security(),
    request_body = SessionBody,
    responses(
        (status = 201, description = "signed in; the session is in an HttpOnly cookie"),
        (status = 401, body = ErrorResponse, description = "login_code_used, login_code_expired or login_code_unknown")
    )
)]
pub async fn create_session(State(app): App, JsonBody(body): JsonBody<SessionBody>) -> Response {
    let redeemed = {
        let mut logins = app.logins.lock().unwrap_or_else(|p| p.into_inner());
        logins.redeem(body.code.trim(), now_ms(), &mut rand::rng())
    };
    match redeemed {
        Ok(session) => {
            let mut response = (
                StatusCode::CREATED,
                Json(json!({"signed_in": true, "idle_timeout_ms": SESSION_IDLE_MS})),
            )
                .into_response();
            set_cookie(&mut response, &app.cookie_name, &session, "");
            response
        }
        Err(e) => ApiError::new(StatusCode::UNAUTHORIZED, e.code(), e.to_string()).into_response(),
    }
}

/// `DELETE /v1/session`: signs this browser out.
#[utoipa::path(
    delete,
    path = "/v1/session",
    tag = "app",
    responses((status = 204, description = "signed out; the cookie is cleared"))
)]
pub async fn end_session(State(app): App, req: Request) -> Response {
    if let Some(session) = session_of(req.headers(), &app.cookie_name) {
        app.logins.lock().unwrap_or_else(|p| p.into_inner()).end(&session);
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    set_cookie(&mut response, &app.cookie_name, "", "; Max-Age=0");
    response
}

/// `POST /v1/session/links`: a new one-time sign-in URL (what
/// `sitesync-daemon open` prints and opens).
#[utoipa::path(
    post,
    path = "/v1/session/links",
    tag = "app",
    responses((status = 201, description = "`{\"url\", \"expires_in_ms\"}`"))
)]
pub async fn create_link(State(app): App, req: Request) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or(&app.allowed_hosts[0])
        .to_owned();
    (
        StatusCode::CREATED,
        Json(json!({
            "url": login_url(&app, &host),
            "expires_in_ms": CODE_TTL_MS,
        })),
    )
        .into_response()
}

/// A new one-time sign-in URL on `host` (an allowed Host value).
pub fn login_url(app: &AppState, host: &str) -> String {
    let code = app
        .logins
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .issue(now_ms(), &mut rand::rng());
    format!("http://{host}/#login={code}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; sitesync_session_7700=abc; sitesync_session_7701=def"),
        );
        assert_eq!(session_of(&h, "sitesync_session_7700").as_deref(), Some("abc"));
        assert_eq!(session_of(&h, "sitesync_session_7701").as_deref(), Some("def"));
        assert_eq!(session_of(&h, "sitesync_session_1"), None);
    }

    #[test]
    fn the_page_its_assets_health_and_sign_in_are_public_and_nothing_else() {
        use axum::http::Method;
        assert!(is_public(&Method::GET, "/"));
        assert!(is_public(&Method::GET, "/app/app.js"));
        assert!(is_public(&Method::POST, "/v1/session"));
        assert!(!is_public(&Method::DELETE, "/v1/session"));
        assert!(!is_public(&Method::POST, "/v1/session/links"));
        assert!(!is_public(&Method::GET, "/v1/projects"));
    }
}
