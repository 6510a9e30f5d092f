//! The HTTP API of HTTP_API.md: routes, request bodies and handlers. Each
//! handler parses and checks its input, then runs the matching
//! [`Service`](crate::service::Service) operation on a blocking thread.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router, middleware};
use futures_util::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use serde_json::json;
use sitesync_model::bulk::BulkOutcome;
use sitesync_model::{
    BulkOptions, Component, ComponentId, ComponentPatch, DrawingId, DrawingPatch, GroupBy, MilestoneUpdate,
    MilestoneValue, NewComponent, NewDrawing, NewProject, NewTemplate, OperationId, OperationInfo, Progress,
    ProjectId, ProjectPatch, Status, Template,
};
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::export::Format as ExportFormat;
use crate::extract::Paged;
use crate::extract::{DefaultUser, JsonBody, Page, PathParams, QueryParams, User, id, tri};
use crate::import::Format as ImportFormat;
use crate::index::{ComponentQuery, Sort};
use crate::jobs::{Job, JobKind, JobState};
use crate::service::{DrawingView, ProjectView, Service, UndoView};
use sitesync_model::import::Mapping;

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

/// The API document's frame: title, version, bearer security.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "sitesync-daemon HTTP API", description = "The localhost API of the sitesync daemon (HTTP_API.md)."),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The error answer's shape, for the API document.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct ErrorResponse {
    error: ErrorDetail,
}

#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct ErrorDetail {
    /// snake_case, stable
    code: String,
    /// a sentence for a person
    message: String,
    /// JSON path of the field at fault, when one is
    field: Option<String>,
}

/// The refusals any endpoint may answer, named once for the document.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum Refusals {
    /// Malformed request: the error names the field.
    #[response(status = 400)]
    BadRequest(#[to_schema] ErrorResponse),
    /// Missing or wrong API token.
    #[response(status = 401)]
    Unauthorized(#[to_schema] ErrorResponse),
    /// Foreign Host or Origin.
    #[response(status = 403)]
    Forbidden(#[to_schema] ErrorResponse),
    /// Unknown id.
    #[response(status = 404)]
    NotFound(#[to_schema] ErrorResponse),
}

/// `{"items": [...]}` of a component's history.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct HistoryPage {
    items: Vec<sitesync_model::HistoryEntry>,
}

/// Every documented route, registered from its `#[utoipa::path]`, and the
/// API document built from the same annotations.
pub fn routes() -> (Router<Arc<AppState>>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health))
        .routes(routes!(crate::metrics::render))
        .routes(routes!(create_project, list_projects))
        .routes(routes!(get_project, patch_project, delete_project))
        .routes(routes!(create_template, list_templates))
        .routes(routes!(create_drawing, list_drawings))
        .routes(routes!(get_drawing, patch_drawing, delete_drawing))
        .routes(routes!(create_component))
        .routes(routes!(list_components))
        .routes(routes!(get_component, patch_component, delete_component))
        .routes(routes!(restore_component))
        .routes(routes!(history))
        .routes(routes!(put_milestone))
        .routes(routes!(bulk))
        .routes(routes!(list_operations))
        .routes(routes!(undo))
        .routes(routes!(progress))
        .routes(routes!(events))
        .routes(routes!(sync_status))
        .routes(routes!(add_peer))
        .routes(routes!(remove_peer))
        .routes(routes!(put_presence))
        .routes(routes!(get_presence))
        .routes(routes!(create_import))
        .routes(routes!(create_export))
        .routes(routes!(components_csv))
        .routes(routes!(list_jobs))
        .routes(routes!(get_job))
        .routes(routes!(download_job))
        .routes(routes!(crate::app::create_session, crate::app::end_session))
        .routes(routes!(crate::app::create_link))
        .split_for_parts()
}

pub fn router(state: Arc<AppState>) -> Router {
    let default_user = DefaultUser(state.default_user.clone());
    let (api, mut doc) = routes();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    // Rendered once: the document is fixed for the life of the process.
    let doc: Arc<str> = doc.to_json().expect("the API document serializes").into();
    let openapi = move || {
        let doc = doc.clone();
        async move {
            (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                doc.to_string(),
            )
        }
    };
    api.route("/v1/openapi.json", get(openapi))
        .route("/", get(crate::app::index))
        .route("/app/{file}", get(crate::app::asset))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no_route",
                "no such endpoint (see /v1/openapi.json)",
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

#[utoipa::path(
    get,
    path = "/v1/health",
    tag = "health",
    security(),
    responses((status = 200, description = "status, version, device id, storage damage report"))
)]
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

#[derive(utoipa::ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectBody {
    name: String,
    #[serde(default)]
    code: Option<String>,
}

#[utoipa::path(
    post,
    path = "/v1/projects",
    tag = "projects",
    request_body = ProjectBody,
    responses((status = 201, body = ProjectView), (status = 422, body = ErrorResponse), Refusals)
)]
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

/// `?limit=` (1..=1000, default 100) and `?cursor=` (the previous page's
/// `next_cursor`).
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct PageQuery {
    #[param(value_type = Option<usize>)]
    limit: Option<String>,
    cursor: Option<String>,
}

impl PageQuery {
    fn page(&self) -> ApiResult<Page> {
        Page::parse(self.limit.as_deref(), self.cursor.as_deref())
    }
}

#[utoipa::path(
    get,
    path = "/v1/projects",
    tag = "projects",
    params(PageQuery),
    responses((status = 200, body = Paged<ProjectView>), Refusals)
)]
async fn list_projects(State(app): App, QueryParams(q): QueryParams<PageQuery>) -> ApiResult<Response> {
    let page = q.page()?;
    let all = blocking(&app, |s| s.projects()).await?;
    Ok(Json(page.of(all)).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/projects/{pid}",
    tag = "projects",
    params(("pid" = String, Path, description = "project id")),
    responses((status = 200, body = ProjectView), Refusals)
)]
async fn get_project(State(app): App, PathParams(p): PathParams<String>) -> ApiResult<Response> {
    let p = pid(&p)?;
    Ok(Json(blocking(&app, move |s| s.project(p)).await?).into_response())
}

#[derive(utoipa::ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectPatchBody {
    #[serde(default)]
    name: Option<String>,
    #[serde(default, deserialize_with = "tri")]
    #[schema(value_type = Option<String>)]
    code: Option<Option<String>>,
}

#[utoipa::path(
    patch,
    path = "/v1/projects/{pid}",
    tag = "projects",
    params(("pid" = String, Path, description = "project id")),
    request_body = ProjectPatchBody,
    responses((status = 200, body = ProjectView), (status = 422, body = ErrorResponse), Refusals)
)]
async fn patch_project(
    State(app): App,
    User(user): User,
    PathParams(p): PathParams<String>,
    JsonBody(b): JsonBody<ProjectPatchBody>,
) -> ApiResult<Response> {
    let p = pid(&p)?;
    let patch = ProjectPatch {
        name: b.name,
        code: b.code,
    };
    Ok(Json(blocking(&app, move |s| s.update_project(&user, p, patch)).await?).into_response())
}

#[utoipa::path(
    delete,
    path = "/v1/projects/{pid}",
    tag = "projects",
    params(("pid" = String, Path, description = "project id")),
    responses((status = 204, description = "soft-deleted"), Refusals)
)]
async fn delete_project(
    State(app): App,
    User(user): User,
    PathParams(p): PathParams<String>,
) -> ApiResult<Response> {
    let p = pid(&p)?;
    blocking(&app, move |s| s.delete_project(&user, p)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---- templates ----

#[utoipa::path(
    post,
    path = "/v1/projects/{pid}/templates",
    tag = "templates",
    params(("pid" = String, Path, description = "project id")),
    request_body = NewTemplate,
    responses((status = 201, body = Template), (status = 422, body = ErrorResponse), Refusals)
)]
async fn create_template(
    State(app): App,
    User(user): User,
    PathParams(p): PathParams<String>,
    JsonBody(new): JsonBody<NewTemplate>,
) -> ApiResult<Response> {
    let p = pid(&p)?;
    let t = blocking(&app, move |s| s.add_template(&user, p, new)).await?;
    Ok((StatusCode::CREATED, Json(t)).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/projects/{pid}/templates",
    tag = "templates",
    params(("pid" = String, Path, description = "project id"), PageQuery),
    responses((status = 200, body = Paged<Template>), Refusals)
)]
async fn list_templates(
    State(app): App,
    PathParams(p): PathParams<String>,
    QueryParams(q): QueryParams<PageQuery>,
) -> ApiResult<Response> {
    let p = pid(&p)?;
    let page = q.page()?;
    Ok(Json(page.of(blocking(&app, move |s| s.templates(p)).await?)).into_response())
}

// ---- drawings ----

#[derive(utoipa::ToSchema, Deserialize)]
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

#[utoipa::path(
    post,
    path = "/v1/projects/{pid}/drawings",
    tag = "drawings",
    params(("pid" = String, Path, description = "project id")),
    request_body = DrawingBody,
    responses((status = 201, body = DrawingView), (status = 422, body = ErrorResponse), Refusals)
)]
async fn create_drawing(
    State(app): App,
    User(user): User,
    PathParams(p): PathParams<String>,
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

#[utoipa::path(
    get,
    path = "/v1/projects/{pid}/drawings",
    tag = "drawings",
    params(("pid" = String, Path, description = "project id"), PageQuery),
    responses((status = 200, body = Paged<DrawingView>), Refusals)
)]
async fn list_drawings(
    State(app): App,
    PathParams(p): PathParams<String>,
    QueryParams(q): QueryParams<PageQuery>,
) -> ApiResult<Response> {
    let p = pid(&p)?;
    let page = q.page()?;
    Ok(Json(page.of(blocking(&app, move |s| s.drawings(p)).await?)).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/projects/{pid}/drawings/{did}",
    tag = "drawings",
    params(("pid" = String, Path, description = "project id"), ("did" = String, Path, description = "drawing id")),
    responses((status = 200, body = DrawingView), Refusals)
)]
async fn get_drawing(
    State(app): App,
    PathParams((p, d)): PathParams<(String, String)>,
) -> ApiResult<Response> {
    let (p, d) = (pid(&p)?, id("drawing", &d)?);
    Ok(Json(blocking(&app, move |s| s.drawing(p, d)).await?).into_response())
}

#[derive(utoipa::ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
struct DrawingPatchBody {
    #[serde(default)]
    number: Option<String>,
    #[serde(default, deserialize_with = "tri")]
    #[schema(value_type = Option<String>)]
    title: Option<Option<String>>,
    #[serde(default, deserialize_with = "tri")]
    #[schema(value_type = Option<String>)]
    revision: Option<Option<String>>,
    #[serde(default, deserialize_with = "tri")]
    #[schema(value_type = Option<String>)]
    parent_id: Option<Option<String>>,
    #[serde(default, deserialize_with = "tri")]
    #[schema(value_type = Option<String>)]
    area: Option<Option<String>>,
    #[serde(default, deserialize_with = "tri")]
    #[schema(value_type = Option<String>)]
    system: Option<Option<String>>,
}

#[utoipa::path(
    patch,
    path = "/v1/projects/{pid}/drawings/{did}",
    tag = "drawings",
    params(("pid" = String, Path, description = "project id"), ("did" = String, Path, description = "drawing id")),
    request_body = DrawingPatchBody,
    responses((status = 200, body = DrawingView), (status = 409, body = ErrorResponse), (status = 422, body = ErrorResponse), Refusals)
)]
async fn patch_drawing(
    State(app): App,
    User(user): User,
    PathParams((p, d)): PathParams<(String, String)>,
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

#[utoipa::path(
    delete,
    path = "/v1/projects/{pid}/drawings/{did}",
    tag = "drawings",
    params(("pid" = String, Path, description = "project id"), ("did" = String, Path, description = "drawing id")),
    responses((status = 204, description = "soft-deleted"), Refusals)
)]
async fn delete_drawing(
    State(app): App,
    User(user): User,
    PathParams((p, d)): PathParams<(String, String)>,
) -> ApiResult<Response> {
    let (p, d) = (pid(&p)?, id("drawing", &d)?);
    blocking(&app, move |s| s.delete_drawing(&user, p, d)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---- components ----

#[derive(utoipa::ToSchema, Deserialize)]
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

#[utoipa::path(
    post,
    path = "/v1/projects/{pid}/drawings/{did}/components",
    tag = "components",
    params(("pid" = String, Path, description = "project id"), ("did" = String, Path, description = "drawing id")),
    request_body = ComponentBody,
    responses((status = 201, body = Component), (status = 409, body = ErrorResponse), (status = 422, body = ErrorResponse), Refusals)
)]
async fn create_component(
    State(app): App,
    User(user): User,
    PathParams((p, d)): PathParams<(String, String)>,
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

#[utoipa::path(
    get,
    path = "/v1/projects/{pid}/components",
    tag = "components",
    params(("pid" = String, Path, description = "project id"), ("drawing_id" = Option<String>, Query), ("status" = Option<Status>, Query), ("kind" = Option<String>, Query), ("q" = Option<String>, Query, description = "tag substring"), ("min_completion" = Option<f64>, Query), ("max_completion" = Option<f64>, Query), ("include_deleted" = Option<bool>, Query), ("sort" = Option<String>, Query, description = "tag, -tag, completion, -completion, updated_at, -updated_at"), PageQuery),
    description = "Also filters by `attr.<name>=<value>`; `attr.area` and `attr.system` match the drawing's area or system when the component has none of its own, as the rollups group them.",
    responses((status = 200, body = Paged<Component>), Refusals)
)]
async fn list_components(
    State(app): App,
    PathParams(p): PathParams<String>,
    QueryParams(params): QueryParams<Vec<(String, String)>>,
) -> ApiResult<Response> {
    let p = pid(&p)?;
    let (q, page) = component_query(&params)?;
    Ok(Json(blocking(&app, move |s| s.components(p, &q, page)).await?).into_response())
}

fn cid(raw: &str) -> ApiResult<ComponentId> {
    id("component", raw)
}

#[utoipa::path(
    get,
    path = "/v1/projects/{pid}/components/{cid}",
    tag = "components",
    params(("pid" = String, Path, description = "project id"), ("cid" = String, Path, description = "component id")),
    responses((status = 200, body = Component), Refusals)
)]
async fn get_component(
    State(app): App,
    PathParams((p, c)): PathParams<(String, String)>,
) -> ApiResult<Response> {
    let (p, c) = (pid(&p)?, cid(&c)?);
    Ok(Json(blocking(&app, move |s| s.component(p, c)).await?).into_response())
}

#[derive(utoipa::ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
struct ComponentPatchBody {
    #[serde(default)]
    tag: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default, deserialize_with = "tri")]
    #[schema(value_type = Option<f64>)]
    quantity_total: Option<Option<f64>>,
    #[serde(default, deserialize_with = "tri")]
    #[schema(value_type = Option<String>)]
    unit: Option<Option<String>>,
    #[serde(default, deserialize_with = "tri")]
    #[schema(value_type = Option<f64>)]
    budget_hours: Option<Option<f64>>,
    #[serde(default)]
    attributes: Option<std::collections::BTreeMap<String, Option<String>>>,
}

#[utoipa::path(
    patch,
    path = "/v1/projects/{pid}/components/{cid}",
    tag = "components",
    params(("pid" = String, Path, description = "project id"), ("cid" = String, Path, description = "component id")),
    request_body = ComponentPatchBody,
    responses((status = 200, body = Component, headers(("Operation-Id" = String, description = "the operation this write made, for undo"))), (status = 409, body = ErrorResponse), (status = 422, body = ErrorResponse), Refusals)
)]
async fn patch_component(
    State(app): App,
    User(user): User,
    PathParams((p, c)): PathParams<(String, String)>,
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
    Ok(written(
        blocking(&app, move |s| s.update_component(&user, p, c, patch)).await?,
    ))
}

#[utoipa::path(
    delete,
    path = "/v1/projects/{pid}/components/{cid}",
    tag = "components",
    params(("pid" = String, Path, description = "project id"), ("cid" = String, Path, description = "component id")),
    responses((status = 204, description = "soft-deleted", headers(("Operation-Id" = String, description = "the operation this write made, for undo"))), Refusals)
)]
async fn delete_component(
    State(app): App,
    User(user): User,
    PathParams((p, c)): PathParams<(String, String)>,
) -> ApiResult<Response> {
    let (p, c) = (pid(&p)?, cid(&c)?);
    let (_, op) = blocking(&app, move |s| s.set_component_deleted(&user, p, c, true)).await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(OPERATION_ID, operation_header(op));
    Ok(response)
}

#[utoipa::path(
    post,
    path = "/v1/projects/{pid}/components/{cid}/restore",
    tag = "components",
    params(("pid" = String, Path, description = "project id"), ("cid" = String, Path, description = "component id")),
    responses((status = 200, body = Component, headers(("Operation-Id" = String, description = "the operation this write made, for undo"))), Refusals)
)]
async fn restore_component(
    State(app): App,
    User(user): User,
    PathParams((p, c)): PathParams<(String, String)>,
) -> ApiResult<Response> {
    let (p, c) = (pid(&p)?, cid(&c)?);
    Ok(written(
        blocking(&app, move |s| s.set_component_deleted(&user, p, c, false)).await?,
    ))
}

#[utoipa::path(
    get,
    path = "/v1/projects/{pid}/components/{cid}/history",
    tag = "components",
    params(("pid" = String, Path, description = "project id"), ("cid" = String, Path, description = "component id")),
    responses((status = 200, body = HistoryPage), Refusals)
)]
async fn history(State(app): App, PathParams((p, c)): PathParams<(String, String)>) -> ApiResult<Response> {
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
#[derive(utoipa::ToSchema, Deserialize)]
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

#[utoipa::path(
    put,
    path = "/v1/projects/{pid}/components/{cid}/milestones/{key}",
    tag = "milestones",
    params(("pid" = String, Path, description = "project id"), ("cid" = String, Path, description = "component id"), ("key" = String, Path, description = "milestone key")),
    request_body = MilestoneBody,
    responses((status = 200, body = Component, headers(("Operation-Id" = String, description = "the operation this write made, for undo"))), (status = 409, body = ErrorResponse), (status = 422, body = ErrorResponse), Refusals)
)]
async fn put_milestone(
    State(app): App,
    User(user): User,
    PathParams((p, c, key)): PathParams<(String, String, String)>,
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
    Ok(written(
        blocking(&app, move |s| s.update_milestone(&user, p, update, reason)).await?,
    ))
}

/// The header naming the operation a single-component write made, so a
/// caller (the field app's "Undo" toast) can undo exactly that write.
const OPERATION_ID: &str = "operation-id";

fn operation_header(op: OperationId) -> axum::http::HeaderValue {
    axum::http::HeaderValue::from_str(&op.to_string()).expect("an operation id is a UUID")
}

/// A single-component write's answer: the component, and its operation
/// in the `Operation-Id` header.
fn written((component, op): (Component, OperationId)) -> Response {
    let mut response = Json(component).into_response();
    response.headers_mut().insert(OPERATION_ID, operation_header(op));
    response
}

#[derive(utoipa::ToSchema, Deserialize)]
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

#[derive(utoipa::ToSchema, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BulkOptionsBody {
    #[serde(default)]
    validate_only: bool,
    #[serde(default)]
    atomic: bool,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(utoipa::ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkBody {
    updates: Vec<BulkItem>,
    #[serde(default)]
    options: BulkOptionsBody,
}

#[utoipa::path(
    post,
    path = "/v1/projects/{pid}/milestones:bulk",
    tag = "milestones",
    params(("pid" = String, Path, description = "project id")),
    request_body = BulkBody,
    responses((status = 200, body = BulkOutcome), (status = 413, body = ErrorResponse), (status = 422, body = BulkOutcome, description = "atomic and some update invalid: nothing written"), Refusals)
)]
async fn bulk(
    State(app): App,
    User(user): User,
    PathParams(p): PathParams<String>,
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

#[utoipa::path(
    get,
    path = "/v1/projects/{pid}/operations",
    tag = "operations",
    params(("pid" = String, Path, description = "project id"), PageQuery),
    responses((status = 200, body = Paged<OperationInfo>), Refusals)
)]
async fn list_operations(
    State(app): App,
    PathParams(p): PathParams<String>,
    QueryParams(q): QueryParams<PageQuery>,
) -> ApiResult<Response> {
    let p = pid(&p)?;
    let page = q.page()?;
    let ops = blocking(&app, move |s| s.operations(p, usize::MAX)).await?;
    Ok(Json(page.of(ops)).into_response())
}

#[utoipa::path(
    post,
    path = "/v1/projects/{pid}/operations/{oid}/undo",
    tag = "operations",
    params(("pid" = String, Path, description = "project id"), ("oid" = String, Path, description = "operation id")),
    responses((status = 200, body = UndoView), (status = 409, body = ErrorResponse), Refusals)
)]
async fn undo(
    State(app): App,
    User(user): User,
    PathParams((p, o)): PathParams<(String, String)>,
) -> ApiResult<Response> {
    let (p, o): (ProjectId, OperationId) = (pid(&p)?, id("operation", &o)?);
    Ok(Json(blocking(&app, move |s| s.undo(&user, p, o)).await?).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/projects/{pid}/progress",
    tag = "progress",
    params(("pid" = String, Path, description = "project id"), ("group_by" = Option<GroupBy>, Query)),
    responses((status = 200, body = Progress), Refusals)
)]
async fn progress(
    State(app): App,
    PathParams(p): PathParams<String>,
    QueryParams(q): QueryParams<HashMap<String, String>>,
) -> ApiResult<Response> {
    let p = pid(&p)?;
    let group_by = match q.get("group_by") {
        None => None,
        Some(g) => Some(GroupBy::parse(g).ok_or_else(|| {
            query_error(
                "group_by",
                "group_by must be drawing, area, system, test_package, kind or template",
            )
        })?),
    };
    Ok(Json(blocking(&app, move |s| s.progress(p, group_by)).await?).into_response())
}

// ---- events ----

#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "events",
    params(("project_id" = Option<String>, Query), ("token" = Option<String>, Query, description = "the API token, for EventSource"), ("Last-Event-ID" = Option<u64>, Header)),
    responses((status = 200, content_type = "text/event-stream", description = "component.created, component.updated, component.deleted, progress.updated, resync.required, ..."), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse))
)]
async fn events(
    State(app): App,
    headers: HeaderMap,
    QueryParams(q): QueryParams<HashMap<String, String>>,
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

// ---- sync and presence ----

#[utoipa::path(
    get,
    path = "/v1/sync/status",
    tag = "sync",
    responses((status = 200, description = "device_id, peers (state, latency, quality, reconnects, last error), pending changes per project, last_synced_at"), Refusals)
)]
async fn sync_status(State(app): App) -> ApiResult<Json<serde_json::Value>> {
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
struct PeerBody {
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

#[utoipa::path(
    post,
    path = "/v1/sync/peers",
    tag = "sync",
    request_body = PeerBody,
    responses((status = 201, body = crate::replication::PeerView), (status = 422, body = ErrorResponse), Refusals)
)]
async fn add_peer(State(app): App, JsonBody(b): JsonBody<PeerBody>) -> ApiResult<Response> {
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

#[utoipa::path(
    delete,
    path = "/v1/sync/peers/{peer_id}",
    tag = "sync",
    params(("peer_id" = String, Path, description = "peer id from /v1/sync/status")),
    responses((status = 204, description = "removed and disconnected"), Refusals)
)]
async fn remove_peer(State(app): App, PathParams(peer_id): PathParams<String>) -> ApiResult<StatusCode> {
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

#[derive(utoipa::ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
struct PresenceBody {
    project_id: String,
    #[serde(default)]
    component_id: Option<String>,
    /// "viewing" or "editing".
    activity: String,
    /// Default: the X-User header, else the daemon's --user.
    #[serde(default)]
    user: Option<String>,
}

#[utoipa::path(
    put,
    path = "/v1/presence",
    tag = "presence",
    request_body = PresenceBody,
    responses((status = 204, description = "heartbeat recorded and relayed; expires 30 s after the last one"), (status = 422, body = ErrorResponse), Refusals)
)]
async fn put_presence(
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

#[utoipa::path(
    get,
    path = "/v1/projects/{pid}/presence",
    tag = "presence",
    params(("pid" = String, Path)),
    responses((status = 200, description = "{items: [{user, device_id, component_id, activity, last_seen}]} from this and every connected device"), Refusals)
)]
async fn get_presence(
    State(app): App,
    PathParams(raw): PathParams<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let project = pid(&raw)?;
    blocking(&app, move |s| s.project(project).map(|_| ())).await?;
    Ok(Json(json!({"items": app.replication.presence(project)})))
}

// ---- jobs, import, export ----

/// `?dry_run=`, `?mapping=` and `?format=` of an import.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ImportQuery {
    /// `true`: report per row what would happen, write nothing.
    #[param(value_type = Option<bool>)]
    dry_run: Option<String>,
    /// A JSON object renaming columns: `{"Line No": "tag", "Remarks": null}`
    /// (null skips a column).
    mapping: Option<String>,
    /// `csv` or `json`; default from Content-Type, else from the content.
    format: Option<String>,
}

/// A job was accepted: watch it at `/v1/jobs/{job_id}` or on the event
/// stream (`job.updated`).
#[derive(utoipa::ToSchema, serde::Serialize)]
struct JobAccepted {
    job_id: uuid::Uuid,
    job: Job,
}

fn accepted(job: Job) -> Response {
    (
        StatusCode::ACCEPTED,
        [(axum::http::header::LOCATION, format!("/v1/jobs/{}", job.id))],
        Json(JobAccepted { job_id: job.id, job }),
    )
        .into_response()
}

/// The import format from `?format=`, else Content-Type; `None` means
/// "look at the content".
fn import_format(query: Option<&str>, content_type: Option<&str>) -> ApiResult<Option<ImportFormat>> {
    if let Some(f) = query {
        return match f.trim().to_ascii_lowercase().as_str() {
            "csv" => Ok(Some(ImportFormat::Csv)),
            "json" => Ok(Some(ImportFormat::Json)),
            _ => Err(ApiError::bad_request(
                "invalid_query",
                "format",
                "format must be csv or json",
            )),
        };
    }
    let Some(ct) = content_type else { return Ok(None) };
    let mime = ct
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "text/csv" | "application/csv" | "text/plain" | "text/comma-separated-values" => {
            Ok(Some(ImportFormat::Csv))
        }
        "application/json" => Ok(Some(ImportFormat::Json)),
        "" | "application/octet-stream" => Ok(None),
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "cannot import {other}: send text/csv or application/json (a spreadsheet: save it as CSV UTF-8)"
            ),
        )),
    }
}

/// A file whose first meaningful byte opens an array is JSON; anything else
/// is read as CSV. `head` is the start of the upload.
fn sniff(head: &[u8]) -> ImportFormat {
    let text = head.strip_prefix("\u{feff}".as_bytes()).unwrap_or(head);
    match text.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => ImportFormat::Json,
        _ => ImportFormat::Csv,
    }
}

/// Streams a request body to `path`, refusing more than `limit` bytes.
/// Returns the first bytes (up to 512), for [`sniff`].
async fn store_upload(body: axum::body::Body, path: &std::path::Path, limit: u64) -> ApiResult<Vec<u8>> {
    use tokio::io::AsyncWriteExt as _;
    let io_err = |e| ApiError::io("storing the upload", e);
    let mut file = tokio::io::BufWriter::new(tokio::fs::File::create(path).await.map_err(io_err)?);
    let mut stream = body.into_data_stream();
    let mut size = 0u64;
    let mut head = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "upload_failed",
                format!("the upload broke off: {e}"),
            )
        })?;
        size += chunk.len() as u64;
        if size > limit {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the file is larger than the import limit of {limit} bytes (--max-import-mb)"),
            ));
        }
        let room = 512usize.saturating_sub(head.len());
        head.extend_from_slice(&chunk[..room.min(chunk.len())]);
        file.write_all(&chunk).await.map_err(io_err)?;
    }
    file.flush().await.map_err(io_err)?;
    Ok(head)
}

fn mapping_of(raw: Option<&str>) -> ApiResult<Mapping> {
    let Some(raw) = raw else { return Ok(Mapping::new()) };
    let mapping: Mapping = serde_json::from_str(raw).map_err(|e| {
        ApiError::bad_request(
            "invalid_query",
            "mapping",
            format!("mapping must be a JSON object of file column → field name (or null): {e}"),
        )
    })?;
    if let Some((k, _)) = mapping.iter().find(|(k, _)| k.trim().is_empty()) {
        return Err(ApiError::bad_request(
            "invalid_query",
            "mapping",
            format!("mapping names an empty column {k:?}"),
        ));
    }
    Ok(mapping)
}

#[utoipa::path(
    post,
    path = "/v1/projects/{pid}/imports",
    tag = "jobs",
    params(("pid" = String, Path, description = "project id"), ImportQuery),
    request_body(content = String, content_type = "text/csv", description = "CSV with a header row, or (application/json) an array of objects. Columns: drawing, tag, kind, template, quantity_total, unit, budget_hours, area, system, test_package and their spreadsheet synonyms; others become attributes."),
    responses((status = 202, body = JobAccepted), (status = 413, body = ErrorResponse), (status = 415, body = ErrorResponse), Refusals)
)]
async fn create_import(
    State(app): App,
    User(user): User,
    PathParams(p): PathParams<String>,
    QueryParams(q): QueryParams<ImportQuery>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> ApiResult<Response> {
    let p = pid(&p)?;
    let dry_run = match q.dry_run.as_deref().map(str::trim) {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") | Some("") => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                "dry_run",
                format!("dry_run must be true or false, not {other:?}"),
            ));
        }
    };
    let mapping = mapping_of(q.mapping.as_deref())?;
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let format = import_format(q.format.as_deref(), content_type)?;
    let project = blocking(&app, move |s| s.project(p)).await?;
    if project.deleted {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "project_deleted",
            format!("project {p} is deleted"),
        ));
    }
    let (id, dir) = app
        .jobs
        .prepare()
        .map_err(|e| ApiError::io("preparing the job", e))?;
    let path = dir.join("upload");
    let head = match store_upload(body, &path, app.max_import_bytes).await {
        Ok(head) => head,
        Err(e) => {
            app.jobs.discard(id);
            return Err(e);
        }
    };
    let format = format.unwrap_or_else(|| sniff(&head));
    let request = crate::import::Request {
        project: p,
        user,
        dry_run,
        mapping,
        format,
        path,
    };
    let svc = app.service.clone();
    let job = app.jobs.submit(
        id,
        JobKind::Import,
        Some(p),
        Box::new(move |ctx| crate::import::run(&svc, ctx, request)),
    );
    Ok(accepted(job))
}

#[derive(utoipa::ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportBody {
    format: ExportFormat,
    /// Columns in order: id, drawing, tag, kind, template, quantity_total,
    /// unit, budget_hours, completion_percent, status, updated_at,
    /// updated_by, an attribute name (or `attr:<name>`), `milestone:<key>`,
    /// or `attributes` / `milestones` for all of them. Default: all.
    #[serde(default)]
    columns: Option<Vec<String>>,
}

#[utoipa::path(
    post,
    path = "/v1/projects/{pid}/exports",
    tag = "jobs",
    params(("pid" = String, Path, description = "project id")),
    request_body = ExportBody,
    responses((status = 202, body = JobAccepted), (status = 422, body = ErrorResponse), Refusals)
)]
async fn create_export(
    State(app): App,
    PathParams(p): PathParams<String>,
    JsonBody(b): JsonBody<ExportBody>,
) -> ApiResult<Response> {
    let p = pid(&p)?;
    let format = b.format;
    let requested = b.columns;
    // The columns are checked now, so a bad name is a 422, not a failed job.
    let (outline, columns, name) = blocking(&app, move |s| {
        let project = s.project(p)?;
        let outline = s.export_outline(p)?;
        let columns = outline.columns(requested.as_deref())?;
        Ok((outline, columns, crate::export::file_name(&project.name, format)))
    })
    .await?;
    let (id, _) = app
        .jobs
        .prepare()
        .map_err(|e| ApiError::io("preparing the job", e))?;
    let request = crate::export::Request {
        outline,
        columns,
        format,
        file_name: name,
    };
    let svc = app.service.clone();
    let job = app.jobs.submit(
        id,
        JobKind::Export,
        Some(p),
        Box::new(move |ctx| crate::export::run(&svc, ctx, request)),
    );
    Ok(accepted(job))
}

/// `?project_id=` and paging of the job list.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct JobsQuery {
    project_id: Option<String>,
    #[param(value_type = Option<usize>)]
    limit: Option<String>,
    cursor: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/jobs",
    tag = "jobs",
    params(JobsQuery),
    responses((status = 200, body = Paged<Job>), Refusals)
)]
async fn list_jobs(State(app): App, QueryParams(q): QueryParams<JobsQuery>) -> ApiResult<Response> {
    let page = Page::parse(q.limit.as_deref(), q.cursor.as_deref())?;
    let project = q.project_id.as_deref().map(pid).transpose()?;
    Ok(Json(app.jobs.list(project, page)).into_response())
}

fn job_id(raw: &str) -> ApiResult<uuid::Uuid> {
    id("job", raw)
}

#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    tag = "jobs",
    params(("id" = String, Path, description = "job id")),
    responses((status = 200, body = Job), Refusals)
)]
async fn get_job(State(app): App, PathParams(raw): PathParams<String>) -> ApiResult<Json<Job>> {
    let id = job_id(&raw)?;
    app.jobs
        .get(id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found("job", id))
}

#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/download",
    tag = "jobs",
    params(("id" = String, Path, description = "job id")),
    responses((status = 200, description = "the export file (CSV, JSON or XLSX)"), (status = 409, body = ErrorResponse, description = "the job has not completed"), Refusals)
)]
async fn download_job(State(app): App, PathParams(raw): PathParams<String>) -> ApiResult<Response> {
    let id = job_id(&raw)?;
    let (job, path) = app.jobs.file(id).ok_or_else(|| ApiError::not_found("job", id))?;
    if job.kind != JobKind::Export {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_file",
            format!("job {id} is an import; it has no file to download (its result is at /v1/jobs/{id})"),
        ));
    }
    let Some(path) = path.filter(|_| job.state == JobState::Completed) else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "job_not_completed",
            format!(
                "job {id} is {:?}; its file can be downloaded once it is completed",
                job.state
            )
            .to_lowercase(),
        ));
    };
    let file = tokio::fs::File::open(&path).await.map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no_file",
            format!("the file of job {id} is gone"),
        )
    })?;
    let len = file.metadata().await.map(|m| m.len()).ok();
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("export")
        .to_owned();
    let format = match path.extension().and_then(|e| e.to_str()) {
        Some("xlsx") => ExportFormat::Xlsx,
        Some("json") => ExportFormat::Json,
        _ => ExportFormat::Csv,
    };
    let mut response = attachment(
        axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file)),
        format,
        &name,
    );
    if let Some(len) = len {
        response
            .headers_mut()
            .insert(axum::http::header::CONTENT_LENGTH, len.into());
    }
    Ok(response)
}

/// A file download: its Content-Type and an attachment file name.
fn attachment(body: axum::body::Body, format: ExportFormat, name: &str) -> Response {
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static(format.content_type()),
    );
    if let Ok(v) = axum::http::HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        h.insert(axum::http::header::CONTENT_DISPOSITION, v);
    }
    response
}

#[utoipa::path(
    get,
    path = "/v1/projects/{pid}/components.csv",
    tag = "jobs",
    params(("pid" = String, Path, description = "project id")),
    responses((status = 200, content_type = "text/csv", description = "every live component, one column per milestone, streamed"), Refusals)
)]
async fn components_csv(State(app): App, PathParams(p): PathParams<String>) -> ApiResult<Response> {
    let p = pid(&p)?;
    let (outline, name) = blocking(&app, move |s| {
        let project = s.project(p)?;
        Ok((
            s.export_outline(p)?,
            crate::export::file_name(&project.name, ExportFormat::Csv),
        ))
    })
    .await?;
    let body = crate::export::stream_csv(app.service.clone(), outline)?;
    Ok(attachment(body, ExportFormat::Csv, &name))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::routes;

    /// HTTP_API.md's routes this daemon serves. Routing is registered from the
    /// same annotations as the document, so this also pins the router.
    const CONTRACT: &[(&str, &str)] = &[
        ("GET", "/v1/health"),
        ("GET", "/metrics"),
        ("POST", "/v1/projects"),
        ("GET", "/v1/projects"),
        ("GET", "/v1/projects/{pid}"),
        ("PATCH", "/v1/projects/{pid}"),
        ("DELETE", "/v1/projects/{pid}"),
        ("POST", "/v1/projects/{pid}/templates"),
        ("GET", "/v1/projects/{pid}/templates"),
        ("POST", "/v1/projects/{pid}/drawings"),
        ("GET", "/v1/projects/{pid}/drawings"),
        ("GET", "/v1/projects/{pid}/drawings/{did}"),
        ("PATCH", "/v1/projects/{pid}/drawings/{did}"),
        ("DELETE", "/v1/projects/{pid}/drawings/{did}"),
        ("POST", "/v1/projects/{pid}/drawings/{did}/components"),
        ("GET", "/v1/projects/{pid}/components"),
        ("GET", "/v1/projects/{pid}/components/{cid}"),
        ("PATCH", "/v1/projects/{pid}/components/{cid}"),
        ("DELETE", "/v1/projects/{pid}/components/{cid}"),
        ("POST", "/v1/projects/{pid}/components/{cid}/restore"),
        ("GET", "/v1/projects/{pid}/components/{cid}/history"),
        ("PUT", "/v1/projects/{pid}/components/{cid}/milestones/{key}"),
        ("POST", "/v1/projects/{pid}/milestones:bulk"),
        ("GET", "/v1/projects/{pid}/operations"),
        ("POST", "/v1/projects/{pid}/operations/{oid}/undo"),
        ("GET", "/v1/projects/{pid}/progress"),
        ("GET", "/v1/events"),
        ("GET", "/v1/sync/status"),
        ("POST", "/v1/sync/peers"),
        ("DELETE", "/v1/sync/peers/{peer_id}"),
        ("PUT", "/v1/presence"),
        ("GET", "/v1/projects/{pid}/presence"),
        ("POST", "/v1/projects/{pid}/imports"),
        ("POST", "/v1/projects/{pid}/exports"),
        ("GET", "/v1/jobs/{id}"),
        ("GET", "/v1/jobs/{id}/download"),
        ("GET", "/v1/projects/{pid}/components.csv"),
        // Added beyond the contract: the job list.
        ("GET", "/v1/jobs"),
        // ...and the field app's sign-in (the field app issue).
        ("POST", "/v1/session"),
        ("DELETE", "/v1/session"),
        ("POST", "/v1/session/links"),
    ];

    #[test]
    fn the_api_document_lists_exactly_the_contract_routes() {
        let (_, doc) = routes();
        let mut documented = BTreeSet::new();
        for (path, item) in &doc.paths.paths {
            let methods = [
                ("GET", &item.get),
                ("POST", &item.post),
                ("PUT", &item.put),
                ("PATCH", &item.patch),
                ("DELETE", &item.delete),
            ];
            for (method, op) in methods {
                if let Some(op) = op {
                    assert!(
                        !op.responses.responses.is_empty(),
                        "{method} {path} documents no response"
                    );
                    documented.insert((method.to_owned(), path.clone()));
                }
            }
        }
        let contract: BTreeSet<_> = CONTRACT
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        assert_eq!(documented, contract);
        let json = doc.to_json().unwrap();
        for schema in [
            "Component",
            "MilestoneView",
            "BulkOutcome",
            "ErrorResponse",
            "Progress",
            "HistoryEntry",
        ] {
            assert!(json.contains(&format!("\"{schema}\"")), "schema {schema} missing");
        }
    }
}
