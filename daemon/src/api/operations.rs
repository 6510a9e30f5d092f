//! Many writes as one operation (bulk), the operations list, and undo.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sitesync_model::bulk::BulkOutcome;
use sitesync_model::{BulkOptions, MilestoneUpdate, OperationInfo};

use crate::api::error::{ApiError, ApiResult};
use crate::api::extract::{JsonBody, OperationPath, PageQuery, ProjectPath, QueryParams, User};
use crate::paging::Paged;
use crate::service::UndoView;

use super::components::one_value;
use super::{App, ErrorResponse, Refusals, blocking};

#[derive(utoipa::ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BulkItem {
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
pub(super) struct BulkOptionsBody {
    #[serde(default)]
    validate_only: bool,
    #[serde(default)]
    atomic: bool,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(utoipa::ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BulkBody {
    updates: Vec<BulkItem>,
    #[serde(default)]
    options: BulkOptionsBody,
}

/// Many milestone updates as one operation, with per-item results (or a preview).
#[utoipa::path(
    post,
    path = "/v1/projects/{pid}/milestones:bulk",
    tag = "milestones",
    params(ProjectPath),
    request_body = BulkBody,
    responses((status = 200, body = BulkOutcome), (status = 413, body = ErrorResponse), (status = 422, body = BulkOutcome, description = "atomic and some update invalid: nothing written"), Refusals)
)]
pub(super) async fn bulk(
    State(app): App,
    User(user): User,
    ProjectPath { pid: p }: ProjectPath,
    JsonBody(b): JsonBody<BulkBody>,
) -> ApiResult<Response> {
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

/// A project's operations, newest first.
#[utoipa::path(
    get,
    path = "/v1/projects/{pid}/operations",
    tag = "operations",
    params(ProjectPath, PageQuery),
    responses((status = 200, body = Paged<OperationInfo>), Refusals)
)]
pub(super) async fn list_operations(
    State(app): App,
    ProjectPath { pid: p }: ProjectPath,
    QueryParams(q): QueryParams<PageQuery>,
) -> ApiResult<Response> {
    let page = q.page()?;
    Ok(Json(blocking(&app, move |s| s.operations(p, page)).await?).into_response())
}

/// Undoes an operation; what changed since is skipped and reported.
#[utoipa::path(
    post,
    path = "/v1/projects/{pid}/operations/{oid}/undo",
    tag = "operations",
    params(OperationPath),
    responses((status = 200, body = UndoView), (status = 409, body = ErrorResponse), Refusals)
)]
pub(super) async fn undo(
    State(app): App,
    User(user): User,
    OperationPath { pid: p, oid: o }: OperationPath,
) -> ApiResult<Response> {
    Ok(Json(blocking(&app, move |s| s.undo(&user, p, o)).await?).into_response())
}
