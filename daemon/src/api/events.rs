//! The live side: the event stream and presence heartbeats.

use std::collections::HashMap;
use std::convert::Infallible;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use serde_json::json;
use sitesync_model::ProjectId;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use crate::api::error::{ApiError, ApiResult};
use crate::api::extract::{JsonBody, ProjectPath, QueryParams, User, id};

use super::{App, ErrorResponse, Refusals, blocking};

/// The event stream: every change, progress, sync status, presence and job progress.
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "events",
    params(("project_id" = Option<String>, Query), ("token" = Option<String>, Query, description = "the API token, for EventSource"), ("Last-Event-ID" = Option<u64>, Header)),
    responses((status = 200, content_type = "text/event-stream", description = "component.created, component.updated, component.deleted, progress.updated, resync.required, ..."), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse))
)]
pub(super) async fn events(
    State(app): App,
    headers: HeaderMap,
    QueryParams(q): QueryParams<HashMap<String, String>>,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let project = match q.get("project_id") {
        Some(raw) => Some(id::<ProjectId>("project", raw)?),
        None => None,
    };
    let last = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request("invalid_header", "Last-Event-ID", "must be an event id")
                })?,
        ),
    };
    let resume = app.service.events.subscribe(last);
    let wanted = move |e: &crate::events::Event| {
        project.is_none() || e.project_id.is_none() || e.project_id == project
    };
    let to_sse = |e: crate::events::Event| {
        Ok(SseEvent::default()
            .id(e.id.to_string())
            .event(e.kind)
            .data(&*e.data))
    };
    let first = resume.resync_required.then(|| {
        Ok(SseEvent::default().event("resync.required").data(
            json!({"reason": "the daemon no longer holds the events after Last-Event-ID; reload state"})
                .to_string(),
        ))
    });
    let backlog: Vec<_> = resume
        .backlog
        .into_iter()
        .filter(|e| wanted(e))
        .map(to_sse)
        .collect();
    let live = BroadcastStream::new(resume.live).filter_map(move |r| {
        let out = match r {
            Ok(e) if wanted(&e) => Some(to_sse(e)),
            Ok(_) => None,
            // A subscriber too slow for the channel must resync.
            Err(BroadcastStreamRecvError::Lagged(_)) => Some(Ok(SseEvent::default()
                .event("resync.required")
                .data(json!({"reason": "this stream fell behind"}).to_string()))),
        };
        std::future::ready(out)
    });
    let stream = stream::iter(first.into_iter().chain(backlog)).chain(live);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

#[derive(utoipa::ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PresenceBody {
    project_id: String,
    #[serde(default)]
    component_id: Option<String>,
    /// "viewing" or "editing".
    activity: String,
    /// Default: the X-User header, else the daemon's --user.
    #[serde(default)]
    user: Option<String>,
}

/// A presence heartbeat: who is viewing or editing what.
#[utoipa::path(
    put,
    path = "/v1/presence",
    tag = "presence",
    request_body = PresenceBody,
    responses((status = 204, description = "heartbeat recorded and relayed; expires 30 s after the last one"), (status = 422, body = ErrorResponse), Refusals)
)]
pub(super) async fn put_presence(
    State(app): App,
    User(user): User,
    JsonBody(b): JsonBody<PresenceBody>,
) -> ApiResult<StatusCode> {
    let uuid = |field: &str, raw: &str| {
        raw.parse::<uuid::Uuid>()
            .map_err(|_| ApiError::invalid(field, format!("{field} {raw:?} is not a UUID")))
    };
    let project = ProjectId(uuid("project_id", &b.project_id)?);
    let component = b
        .component_id
        .as_deref()
        .map(|raw| uuid("component_id", raw))
        .transpose()?;
    let activity = match b.activity.as_str() {
        "viewing" => 0,
        "editing" => 1,
        other => {
            return Err(ApiError::invalid(
                "activity",
                format!("activity {other:?} is not \"viewing\" or \"editing\""),
            ));
        }
    };
    let user = b.user.filter(|u| !u.trim().is_empty()).unwrap_or(user);
    // What peers will check of it (a peer closes a link that sends worse).
    let chars = user.chars().count();
    if chars > sitesync_sync::presence::MAX_USER_CHARS || user.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "user",
            format!(
                "user must be 1 to {} characters of plain text",
                sitesync_sync::presence::MAX_USER_CHARS
            ),
        ));
    }
    blocking(&app, move |s| s.project(project).map(|_| ())).await?;
    app.replication.heartbeat(project, component, activity, &user);
    Ok(StatusCode::NO_CONTENT)
}

/// Who is here on a project, from this and every connected device.
#[utoipa::path(
    get,
    path = "/v1/projects/{pid}/presence",
    tag = "presence",
    params(ProjectPath),
    responses((status = 200, description = "{items: [{user, device_id, component_id, activity, last_seen}]} from this and every connected device"), Refusals)
)]
pub(super) async fn get_presence(
    State(app): App,
    ProjectPath { pid: project }: ProjectPath,
) -> ApiResult<Json<serde_json::Value>> {
    blocking(&app, move |s| s.project(project).map(|_| ())).await?;
    Ok(Json(json!({"items": app.replication.presence(project)})))
}
