//! The HTTP API of HTTP_API.md: routes, request bodies and handlers. Each
//! handler parses and checks its input, then runs the matching
//! [`Service`](crate::service::Service) operation on a blocking thread.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router, middleware};
use futures_util::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use serde_json::json;
use sitesync_model::{
    BulkOptions, ComponentId, ComponentPatch, DrawingId, DrawingPatch, GroupBy, MilestoneUpdate,
    MilestoneValue, NewComponent, NewDrawing, NewProject, NewTemplate, OperationId, ProjectId, ProjectPatch,
    Status,
};
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{DefaultUser, JsonBody, Page, User, id, tri};
use crate::service::{ComponentQuery, Service, Sort};

/// Largest request body accepted (a 10,000-update bulk is ~1.5 MB).
pub const MAX_BODY: usize = 16 * 1024 * 1024;

type App = State<Arc<AppState>>;

/// Runs a service call on a blocking thread (Automerge work is CPU-bound).
async fn blocking<T: Send + 'static>(
    app: &Arc<AppState>,
    f: impl FnOnce(&Service) -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    let svc = app.service.clone();
    tokio::task::spawn_blocking(move || f(&svc)).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("worker failed: {e}"),
        )
    })?
}

pub fn router(state: Arc<AppState>) -> Router {
    let default_user = DefaultUser(state.default_user.clone());
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/projects", post(create_project).get(list_projects))
        .route(
            "/v1/projects/{pid}",
            get(get_project).patch(patch_project).delete(delete_project),
        )
        .route(
            "/v1/projects/{pid}/templates",
            post(create_template).get(list_templates),
        )
        .route(
            "/v1/projects/{pid}/drawings",
            post(create_drawing).get(list_drawings),
        )
        .route(
            "/v1/projects/{pid}/drawings/{did}",
            get(get_drawing).patch(patch_drawing).delete(delete_drawing),
        )
        .route(
            "/v1/projects/{pid}/drawings/{did}/components",
            post(create_component),
        )
        .route("/v1/projects/{pid}/components", get(list_components))
        .route(
            "/v1/projects/{pid}/components/{cid}",
            get(get_component).patch(patch_component).delete(delete_component),
        )
        .route(
            "/v1/projects/{pid}/components/{cid}/restore",
            post(restore_component),
        )
        .route("/v1/projects/{pid}/components/{cid}/history", get(history))
        .route(
            "/v1/projects/{pid}/components/{cid}/milestones/{key}",
            put(put_milestone),
        )
        .route("/v1/projects/{pid}/milestones:bulk", post(bulk))
        .route("/v1/projects/{pid}/operations", get(list_operations))
        .route("/v1/projects/{pid}/operations/{oid}/undo", post(undo))
        .route("/v1/projects/{pid}/progress", get(progress))
        .route("/v1/events", get(events))
        .route("/metrics", get(crate::metrics::render))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no_route",
                "no such endpoint (see /v1 in HTTP_API.md)",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method",
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), crate::auth::guard))
        // Outside the guard, so refused requests are counted too.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::metrics::track,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::Extension(default_user))
        .with_state(state)
}

async fn health(State(app): App) -> Json<serde_json::Value> {
    let damaged = app.service.repo().damaged();
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "device_id": app.service.device(),
        "device_name": app.device_name,
        "documents_loaded": app.service.documents_loaded(),
        "storage": {"damaged_records": damaged},
    }))
}

fn pid(raw: &str) -> ApiResult<ProjectId> {
    id("project", raw)
}

// ---- projects ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectBody {
    name: String,
    #[serde(default)]
    code: Option<String>,
}

async fn create_project(
    State(app): App,
    User(user): User,
    JsonBody(b): JsonBody<ProjectBody>,
) -> ApiResult<Response> {
    let new = NewProject {
        name: b.name,
        code: b.code,
    };
    let view = blocking(&app, move |s| s.create_project(&user, new)).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

#[derive(Deserialize)]
struct PageQuery {
    limit: Option<String>,
    cursor: Option<String>,
}

async fn list_projects(State(app): App, Query(q): Query<PageQuery>) -> ApiResult<Response> {
    let page = Page::parse(q.limit.as_deref(), q.cursor.as_deref())?;
    let all = blocking(&app, |s| s.projects()).await?;
    Ok(Json(page.of(all)).into_response())
}

async fn get_project(State(app): App, Path(p): Path<String>) -> ApiResult<Response> {
    let p = pid(&p)?;
    Ok(Json(blocking(&app, move |s| s.project(p)).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectPatchBody {
    #[serde(default)]
    name: Option<String>,
    #[serde(default, deserialize_with = "tri")]
    code: Option<Option<String>>,
}

async fn patch_project(
    State(app): App,
    User(user): User,
    Path(p): Path<String>,
    JsonBody(b): JsonBody<ProjectPatchBody>,
) -> ApiResult<Response> {
    let p = pid(&p)?;
    let patch = ProjectPatch {
        name: b.name,
        code: b.code,
    };
    Ok(Json(blocking(&app, move |s| s.update_project(&user, p, patch)).await?).into_response())
}

async fn delete_project(State(app): App, User(user): User, Path(p): Path<String>) -> ApiResult<Response> {
    let p = pid(&p)?;
    blocking(&app, move |s| s.delete_project(&user, p)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---- templates ----

async fn create_template(
    State(app): App,
    User(user): User,
    Path(p): Path<String>,
    JsonBody(new): JsonBody<NewTemplate>,
) -> ApiResult<Response> {
    let p = pid(&p)?;
    let t = blocking(&app, move |s| s.add_template(&user, p, new)).await?;
    Ok((StatusCode::CREATED, Json(t)).into_response())
}

async fn list_templates(
    State(app): App,
    Path(p): Path<String>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Response> {
    let p = pid(&p)?;
    let page = Page::parse(q.limit.as_deref(), q.cursor.as_deref())?;
    Ok(Json(page.of(blocking(&app, move |s| s.templates(p)).await?)).into_response())
}

// ---- drawings ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DrawingBody {
    number: String,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    revision: Option<String>,
    #[serde(default)]
    parent_id: Option<String>,
    #[serde(default)]
    area: Option<String>,
    #[serde(default)]
    system: Option<String>,
}

fn parent(raw: Option<String>) -> ApiResult<Option<DrawingId>> {
    raw.map(|r| {
        r.parse().map_err(|_| {
            ApiError::bad_request("invalid_id", "parent_id", format!("{r:?} is not a drawing id"))
        })
    })
    .transpose()
}

async fn create_drawing(
    State(app): App,
    User(user): User,
    Path(p): Path<String>,
    JsonBody(b): JsonBody<DrawingBody>,
) -> ApiResult<Response> {
    let p = pid(&p)?;
    let new = NewDrawing {
        number: b.number,
        title: b.title,
        revision: b.revision,
        parent_id: parent(b.parent_id)?,
        area: b.area,
        system: b.system,
    };
    let d = blocking(&app, move |s| s.add_drawing(&user, p, new)).await?;
    Ok((StatusCode::CREATED, Json(d)).into_response())
}

async fn list_drawings(
    State(app): App,
    Path(p): Path<String>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Response> {
    let p = pid(&p)?;
    let page = Page::parse(q.limit.as_deref(), q.cursor.as_deref())?;
    Ok(Json(page.of(blocking(&app, move |s| s.drawings(p)).await?)).into_response())
}

async fn get_drawing(State(app): App, Path((p, d)): Path<(String, String)>) -> ApiResult<Response> {
    let (p, d) = (pid(&p)?, id("drawing", &d)?);
    Ok(Json(blocking(&app, move |s| s.drawing(p, d)).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DrawingPatchBody {
    #[serde(default)]
    number: Option<String>,
    #[serde(default, deserialize_with = "tri")]
    title: Option<Option<String>>,
    #[serde(default, deserialize_with = "tri")]
    revision: Option<Option<String>>,
    #[serde(default, deserialize_with = "tri")]
    parent_id: Option<Option<String>>,
    #[serde(default, deserialize_with = "tri")]
    area: Option<Option<String>>,
    #[serde(default, deserialize_with = "tri")]
    system: Option<Option<String>>,
}

async fn patch_drawing(
    State(app): App,
    User(user): User,
    Path((p, d)): Path<(String, String)>,
    JsonBody(b): JsonBody<DrawingPatchBody>,
) -> ApiResult<Response> {
    let (p, d) = (pid(&p)?, id("drawing", &d)?);
    let patch = DrawingPatch {
        number: b.number,
        title: b.title,
        revision: b.revision,
        parent_id: b.parent_id.map(parent).transpose()?,
        area: b.area,
        system: b.system,
    };
    Ok(Json(blocking(&app, move |s| s.update_drawing(&user, p, d, patch)).await?).into_response())
}

async fn delete_drawing(
    State(app): App,
    User(user): User,
    Path((p, d)): Path<(String, String)>,
) -> ApiResult<Response> {
    let (p, d) = (pid(&p)?, id("drawing", &d)?);
    blocking(&app, move |s| s.delete_drawing(&user, p, d)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---- components ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ComponentBody {
    tag: String,
    kind: String,
    template_id: String,
    #[serde(default)]
    quantity_total: Option<f64>,
    #[serde(default)]
    unit: Option<String>,
    #[serde(default)]
    budget_hours: Option<f64>,
    #[serde(default)]
    attributes: std::collections::BTreeMap<String, String>,
}

async fn create_component(
    State(app): App,
    User(user): User,
    Path((p, d)): Path<(String, String)>,
    JsonBody(b): JsonBody<ComponentBody>,
) -> ApiResult<Response> {
    let (p, d) = (pid(&p)?, id("drawing", &d)?);
    let template_id = b.template_id.parse().map_err(|_| {
        ApiError::bad_request(
            "invalid_id",
            "template_id",
            format!("{:?} is not a template id", b.template_id),
        )
    })?;
    let new = NewComponent {
        tag: b.tag,
        kind: b.kind,
        template_id: Some(template_id),
        quantity_total: b.quantity_total,
        unit: b.unit,
        budget_hours: b.budget_hours,
        attributes: b.attributes,
    };
    let c = blocking(&app, move |s| s.add_component(&user, p, d, new)).await?;
    Ok((StatusCode::CREATED, Json(c)).into_response())
}

fn query_error(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_query", field, message)
}

fn parse_number(field: &str, raw: &str) -> ApiResult<f64> {
    raw.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| query_error(field, format!("{field} must be a number, got {raw:?}")))
}

/// Parses the component list's query string (filters are open-ended:
/// `attr.<name>=<value>`).
fn component_query(params: &[(String, String)]) -> ApiResult<(ComponentQuery, Page)> {
    let mut q = ComponentQuery::default();
    let (mut limit, mut cursor) = (None, None);
    for (k, v) in params {
        match k.as_str() {
            "drawing_id" => q.drawing_id = Some(v.parse().map_err(|_| query_error(k, "not a drawing id"))?),
            "status" => {
                q.status = Some(match v.as_str() {
                    "not_started" => Status::NotStarted,
                    "in_progress" => Status::InProgress,
                    "completed" => Status::Completed,
                    _ => {
                        return Err(query_error(
                            k,
                            "status must be not_started, in_progress or completed",
                        ));
                    }
                })
            }
            "kind" => q.kind = Some(v.clone()),
            "q" => q.q = Some(v.clone()),
            "min_completion" => q.min_completion = Some(parse_number(k, v)?),
            "max_completion" => q.max_completion = Some(parse_number(k, v)?),
            "include_deleted" => {
                q.include_deleted = match v.as_str() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(query_error(k, "include_deleted must be true or false")),
                }
            }
            "sort" => {
                q.sort = Sort::parse(v).ok_or_else(|| {
                    query_error(
                        k,
                        "sort must be tag, -tag, completion, -completion, updated_at or -updated_at",
                    )
                })?
            }
            "limit" => limit = Some(v.as_str()),
            "cursor" => cursor = Some(v.as_str()),
            other => match other.strip_prefix("attr.") {
                Some(name) if !name.is_empty() => q.attributes.push((name.to_owned(), v.clone())),
                _ => return Err(query_error(other, format!("unknown filter {other:?}"))),
            },
        }
    }
    Ok((q, Page::parse(limit, cursor)?))
}

async fn list_components(
    State(app): App,
    Path(p): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
) -> ApiResult<Response> {
    let p = pid(&p)?;
    let (q, page) = component_query(&params)?;
    let all = blocking(&app, move |s| s.components(p, &q)).await?;
    Ok(Json(page.of(all)).into_response())
}

fn cid(raw: &str) -> ApiResult<ComponentId> {
    id("component", raw)
}

async fn get_component(State(app): App, Path((p, c)): Path<(String, String)>) -> ApiResult<Response> {
    let (p, c) = (pid(&p)?, cid(&c)?);
    Ok(Json(blocking(&app, move |s| s.component(p, c)).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ComponentPatchBody {
    #[serde(default)]
    tag: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default, deserialize_with = "tri")]
    quantity_total: Option<Option<f64>>,
    #[serde(default, deserialize_with = "tri")]
    unit: Option<Option<String>>,
    #[serde(default, deserialize_with = "tri")]
    budget_hours: Option<Option<f64>>,
    #[serde(default)]
    attributes: Option<std::collections::BTreeMap<String, Option<String>>>,
}

async fn patch_component(
    State(app): App,
    User(user): User,
    Path((p, c)): Path<(String, String)>,
    JsonBody(b): JsonBody<ComponentPatchBody>,
) -> ApiResult<Response> {
    let (p, c) = (pid(&p)?, cid(&c)?);
    let patch = ComponentPatch {
        tag: b.tag,
        kind: b.kind,
        quantity_total: b.quantity_total,
        unit: b.unit,
        budget_hours: b.budget_hours,
        attributes: b.attributes,
    };
    Ok(Json(blocking(&app, move |s| s.update_component(&user, p, c, patch)).await?).into_response())
}

async fn delete_component(
    State(app): App,
    User(user): User,
    Path((p, c)): Path<(String, String)>,
) -> ApiResult<Response> {
    let (p, c) = (pid(&p)?, cid(&c)?);
    blocking(&app, move |s| s.set_component_deleted(&user, p, c, true)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn restore_component(
    State(app): App,
    User(user): User,
    Path((p, c)): Path<(String, String)>,
) -> ApiResult<Response> {
    let (p, c) = (pid(&p)?, cid(&c)?);
    Ok(Json(blocking(&app, move |s| s.set_component_deleted(&user, p, c, false)).await?).into_response())
}

async fn history(State(app): App, Path((p, c)): Path<(String, String)>) -> ApiResult<Response> {
    let (p, c) = (pid(&p)?, cid(&c)?);
    let items = blocking(&app, move |s| s.history(p, c)).await?;
    Ok(Json(json!({ "items": items })).into_response())
}

/// A milestone value as the API sends it: exactly one of four fields.
fn one_value(
    completed: Option<bool>,
    percent: Option<f64>,
    quantity: Option<f64>,
    quantity_delta: Option<f64>,
    at: &str,
) -> ApiResult<MilestoneValue> {
    let given: Vec<MilestoneValue> = [
        completed.map(MilestoneValue::Completed),
        percent.map(MilestoneValue::Percent),
        quantity.map(MilestoneValue::Quantity),
        quantity_delta.map(MilestoneValue::QuantityDelta),
    ]
    .into_iter()
    .flatten()
    .collect();
    match given.as_slice() {
        [one] => Ok(*one),
        _ => Err(ApiError::bad_request(
            "invalid_value",
            at,
            "give exactly one of completed, percent, quantity, quantity_delta",
        )),
    }
}

// Not `#[serde(flatten)]`: it silently disables deny_unknown_fields.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MilestoneBody {
    #[serde(default)]
    completed: Option<bool>,
    #[serde(default)]
    percent: Option<f64>,
    #[serde(default)]
    quantity: Option<f64>,
    #[serde(default)]
    quantity_delta: Option<f64>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    effective_date: Option<String>,
}

async fn put_milestone(
    State(app): App,
    User(user): User,
    Path((p, c, key)): Path<(String, String, String)>,
    JsonBody(b): JsonBody<MilestoneBody>,
) -> ApiResult<Response> {
    let (p, c) = (pid(&p)?, cid(&c)?);
    let update = MilestoneUpdate {
        component_id: c,
        milestone: key,
        value: one_value(b.completed, b.percent, b.quantity, b.quantity_delta, "value")?,
        effective_date: b.effective_date,
    };
    let reason = b.reason;
    Ok(Json(blocking(&app, move |s| s.update_milestone(&user, p, update, reason)).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkItem {
    component_id: String,
    milestone: String,
    #[serde(default)]
    completed: Option<bool>,
    #[serde(default)]
    percent: Option<f64>,
    #[serde(default)]
    quantity: Option<f64>,
    #[serde(default)]
    quantity_delta: Option<f64>,
    #[serde(default)]
    effective_date: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BulkOptionsBody {
    #[serde(default)]
    validate_only: bool,
    #[serde(default)]
    atomic: bool,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkBody {
    updates: Vec<BulkItem>,
    #[serde(default)]
    options: BulkOptionsBody,
}

async fn bulk(
    State(app): App,
    User(user): User,
    Path(p): Path<String>,
    JsonBody(b): JsonBody<BulkBody>,
) -> ApiResult<Response> {
    let p = pid(&p)?;
    let mut updates = Vec::with_capacity(b.updates.len());
    for (i, u) in b.updates.into_iter().enumerate() {
        let component_id = u.component_id.parse().map_err(|_| {
            ApiError::bad_request(
                "invalid_id",
                format!("updates[{i}].component_id"),
                "not a component id",
            )
        })?;
        updates.push(MilestoneUpdate {
            component_id,
            milestone: u.milestone,
            value: one_value(
                u.completed,
                u.percent,
                u.quantity,
                u.quantity_delta,
                &format!("updates[{i}]"),
            )?,
            effective_date: u.effective_date,
        });
    }
    let options = BulkOptions {
        validate_only: b.options.validate_only,
        atomic: b.options.atomic,
    };
    let reason = b.options.reason;
    let out = blocking(&app, move |s| s.bulk(&user, p, updates, options, reason)).await?;
    let status = if out.refused_atomic(&options) {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    Ok((status, Json(out)).into_response())
}

// ---- operations, undo, progress ----

async fn list_operations(
    State(app): App,
    Path(p): Path<String>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Response> {
    let p = pid(&p)?;
    let page = Page::parse(q.limit.as_deref(), q.cursor.as_deref())?;
    let ops = blocking(&app, move |s| s.operations(p, usize::MAX)).await?;
    Ok(Json(page.of(ops)).into_response())
}

async fn undo(
    State(app): App,
    User(user): User,
    Path((p, o)): Path<(String, String)>,
) -> ApiResult<Response> {
    let (p, o): (ProjectId, OperationId) = (pid(&p)?, id("operation", &o)?);
    Ok(Json(blocking(&app, move |s| s.undo(&user, p, o)).await?).into_response())
}

async fn progress(
    State(app): App,
    Path(p): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let p = pid(&p)?;
    let group_by = match q.get("group_by") {
        None => None,
        Some(g) => Some(GroupBy::parse(g).ok_or_else(|| {
            query_error(
                "group_by",
                "group_by must be drawing, area, system, kind or template",
            )
        })?),
    };
    Ok(Json(blocking(&app, move |s| s.progress(p, group_by)).await?).into_response())
}

// ---- events ----

async fn events(
    State(app): App,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let project = match q.get("project_id") {
        Some(raw) => Some(pid(raw)?),
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
            .data(e.data.to_string()))
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
