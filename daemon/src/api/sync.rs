//! Sync status and the peers this daemon dials.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::api::error::{ApiError, ApiResult};
use crate::api::extract::{JsonBody, PathParams};

use super::{App, ErrorResponse, Refusals};

/// This device's peers, their state and latency, and its pending changes.
#[utoipa::path(
    get,
    path = "/v1/sync/status",
    tag = "sync",
    responses((status = 200, description = "device_id, peers (state, latency, quality, reconnects, last error), pending changes per project, last_synced_at"), Refusals)
)]
pub(super) async fn sync_status(State(app): App) -> ApiResult<Json<serde_json::Value>> {
    let repl = app.replication.clone();
    let status = tokio::task::spawn_blocking(move || repl.status())
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("worker failed: {e}"),
            )
        })?;
    Ok(Json(status))
}

#[derive(utoipa::ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PeerBody {
    /// `ws://` or `wss://` URL of a relay or of another daemon's --peer-listen.
    url: String,
    /// The token to present (default: the daemon's own --token).
    #[serde(default)]
    token: Option<String>,
    /// "relay" (default: its certificate must be signed by a trusted CA)
    /// or "lan" (another daemon's --peer-listen, `wss://` only: its
    /// certificate is its own, and the handshake is bound to the TLS
    /// session). The status shows what the handshake found.
    #[serde(default)]
    kind: Option<String>,
}

/// Dials a relay or a LAN peer.
#[utoipa::path(
    post,
    path = "/v1/sync/peers",
    tag = "sync",
    request_body = PeerBody,
    responses((status = 201, body = crate::replication::PeerView), (status = 422, body = ErrorResponse), Refusals)
)]
pub(super) async fn add_peer(State(app): App, JsonBody(b): JsonBody<PeerBody>) -> ApiResult<Response> {
    let invalid = ApiError::invalid;
    let token = match b.token.as_deref().map(sitesync_sync::credentials::Token::parse) {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => return Err(invalid("token", e.to_string())),
    };
    let kind = match b.kind.as_deref() {
        None | Some("relay") => "relay",
        Some("lan") => "lan",
        Some(other) => {
            return Err(invalid(
                "kind",
                format!("kind {other:?} is not \"relay\" or \"lan\""),
            ));
        }
    };
    let view = app.replication.add_peer(&b.url, token, kind).map_err(|e| {
        let field = match e {
            crate::replication::PeerError::BadUrl { .. } | crate::replication::PeerError::PlainLan { .. } => {
                "url"
            }
            crate::replication::PeerError::NoToken => "token",
        };
        invalid(field, e.to_string())
    })?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// Stops and forgets a peer.
#[utoipa::path(
    delete,
    path = "/v1/sync/peers/{peer_id}",
    tag = "sync",
    params(("peer_id" = String, Path, description = "peer id from /v1/sync/status")),
    responses((status = 204, description = "removed and disconnected"), Refusals)
)]
pub(super) async fn remove_peer(
    State(app): App,
    PathParams(peer_id): PathParams<String>,
) -> ApiResult<StatusCode> {
    let id: uuid::Uuid = peer_id.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_id",
            format!("peer id {peer_id:?} is not a UUID"),
        )
    })?;
    if app.replication.remove_peer(id) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("peer {id} not found"),
        ))
    }
}
