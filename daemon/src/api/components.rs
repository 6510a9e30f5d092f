//! Components, their milestones and history: the single writes a crew
//! makes, each answered with the `Operation-Id` it made.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sitesync_model::{
    Component, ComponentPatch, MilestoneUpdate, MilestoneValue, NewComponent, OperationId, Status,
};

use crate::api::error::{ApiError, ApiResult};
use crate::api::extract::{
    ComponentPath, DrawingPath, JsonBody, MilestonePath, PageQuery, ProjectPath, QueryParams, User, page,
    query_error, tri,
};
use crate::index::{ComponentQuery, Sort};
use crate::paging::{Page, Paged};

use super::{App, ErrorResponse, Refusals, blocking};

#[derive(utoipa::ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ComponentBody {
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

/// Adds a component to a drawing.
#[utoipa::path(
    post,
    path = "/v1/projects/{pid}/drawings/{did}/components",
    tag = "components",
    params(DrawingPath),
    request_body = ComponentBody,
    responses((status = 201, body = Component), (status = 409, body = ErrorResponse), (status = 422, body = ErrorResponse), Refusals)
)]
pub(super) async fn create_component(
    State(app): App,
    User(user): User,
    DrawingPath { pid: p, did: d }: DrawingPath,
    JsonBody(b): JsonBody<ComponentBody>,
) -> ApiResult<Response> {
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
    Ok((q, page(limit, cursor)?))
}

/// Lists a project's components, filtered, sorted and paged.
#[utoipa::path(
    get,
    path = "/v1/projects/{pid}/components",
    tag = "components",
    params(ProjectPath, ("drawing_id" = Option<String>, Query), ("status" = Option<Status>, Query), ("kind" = Option<String>, Query), ("q" = Option<String>, Query, description = "tag substring"), ("min_completion" = Option<f64>, Query), ("max_completion" = Option<f64>, Query), ("include_deleted" = Option<bool>, Query), ("sort" = Option<String>, Query, description = "tag, -tag, completion, -completion, updated_at, -updated_at"), PageQuery),
    description = "Also filters by `attr.<name>=<value>`; `attr.area` and `attr.system` match the drawing's area or system when the component has none of its own, as the rollups group them.",
    responses((status = 200, body = Paged<Component>), Refusals)
)]
pub(super) async fn list_components(
    State(app): App,
    ProjectPath { pid: p }: ProjectPath,
    QueryParams(params): QueryParams<Vec<(String, String)>>,
) -> ApiResult<Response> {
    let (q, page) = component_query(&params)?;
    Ok(Json(blocking(&app, move |s| s.components(p, &q, page)).await?).into_response())
}

/// One component, with its milestones and their conflicts.
#[utoipa::path(
    get,
    path = "/v1/projects/{pid}/components/{cid}",
    tag = "components",
    params(ComponentPath),
    responses((status = 200, body = Component), Refusals)
)]
pub(super) async fn get_component(
    State(app): App,
    ComponentPath { pid: p, cid: c }: ComponentPath,
) -> ApiResult<Response> {
    Ok(Json(blocking(&app, move |s| s.component(p, c)).await?).into_response())
}

#[derive(utoipa::ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ComponentPatchBody {
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

/// Changes a component's fields; the operation is in `Operation-Id`.
#[utoipa::path(
    patch,
    path = "/v1/projects/{pid}/components/{cid}",
    tag = "components",
    params(ComponentPath),
    request_body = ComponentPatchBody,
    responses((status = 200, body = Component, headers(("Operation-Id" = String, description = "the operation this write made, for undo"))), (status = 409, body = ErrorResponse), (status = 422, body = ErrorResponse), Refusals)
)]
pub(super) async fn patch_component(
    State(app): App,
    User(user): User,
    ComponentPath { pid: p, cid: c }: ComponentPath,
    JsonBody(b): JsonBody<ComponentPatchBody>,
) -> ApiResult<Response> {
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

/// Deletes a component (soft; restore brings it back).
#[utoipa::path(
    delete,
    path = "/v1/projects/{pid}/components/{cid}",
    tag = "components",
    params(ComponentPath),
    responses((status = 204, description = "soft-deleted", headers(("Operation-Id" = String, description = "the operation this write made, for undo"))), Refusals)
)]
pub(super) async fn delete_component(
    State(app): App,
    User(user): User,
    ComponentPath { pid: p, cid: c }: ComponentPath,
) -> ApiResult<Response> {
    let (_, op) = blocking(&app, move |s| s.set_component_deleted(&user, p, c, true)).await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(OPERATION_ID, operation_header(op));
    Ok(response)
}

/// Restores a deleted component.
#[utoipa::path(
    post,
    path = "/v1/projects/{pid}/components/{cid}/restore",
    tag = "components",
    params(ComponentPath),
    responses((status = 200, body = Component, headers(("Operation-Id" = String, description = "the operation this write made, for undo"))), Refusals)
)]
pub(super) async fn restore_component(
    State(app): App,
    User(user): User,
    ComponentPath { pid: p, cid: c }: ComponentPath,
) -> ApiResult<Response> {
    Ok(written(
        blocking(&app, move |s| s.set_component_deleted(&user, p, c, false)).await?,
    ))
}

/// A page of a component's history, newest first, from every device.
#[utoipa::path(
    get,
    path = "/v1/projects/{pid}/components/{cid}/history",
    tag = "components",
    params(ComponentPath, PageQuery),
    responses((status = 200, body = Paged<sitesync_model::HistoryEntry>), Refusals)
)]
pub(super) async fn history(
    State(app): App,
    ComponentPath { pid: p, cid: c }: ComponentPath,
    QueryParams(q): QueryParams<PageQuery>,
) -> ApiResult<Response> {
    let page = q.page()?;
    Ok(Json(blocking(&app, move |s| s.history(p, c, page)).await?).into_response())
}

/// A milestone value as the API sends it: exactly one of four fields.
pub(super) fn one_value(
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
pub(super) struct MilestoneBody {
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

/// Records work on one milestone; the operation is in `Operation-Id`.
#[utoipa::path(
    put,
    path = "/v1/projects/{pid}/components/{cid}/milestones/{key}",
    tag = "milestones",
    params(MilestonePath),
    request_body = MilestoneBody,
    responses((status = 200, body = Component, headers(("Operation-Id" = String, description = "the operation this write made, for undo"))), (status = 409, body = ErrorResponse), (status = 422, body = ErrorResponse), Refusals)
)]
pub(super) async fn put_milestone(
    State(app): App,
    User(user): User,
    MilestonePath { pid: p, cid: c, key }: MilestonePath,
    JsonBody(b): JsonBody<MilestoneBody>,
) -> ApiResult<Response> {
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
