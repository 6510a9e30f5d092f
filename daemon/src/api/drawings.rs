//! A project's drawings.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sitesync_model::{DrawingId, DrawingPatch, NewDrawing};

use crate::api::error::{ApiError, ApiResult};
use crate::api::extract::{DrawingPath, JsonBody, PageQuery, ProjectPath, QueryParams, User, tri};
use crate::paging::Paged;
use crate::service::DrawingView;

use super::{App, ErrorResponse, Refusals, blocking};

#[derive(utoipa::ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DrawingBody {
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

/// Adds a drawing to a project.
#[utoipa::path(
    post,
    path = "/v1/projects/{pid}/drawings",
    tag = "drawings",
    params(ProjectPath),
    request_body = DrawingBody,
    responses((status = 201, body = DrawingView), (status = 422, body = ErrorResponse), Refusals)
)]
pub(super) async fn create_drawing(
    State(app): App,
    User(user): User,
    ProjectPath { pid: p }: ProjectPath,
    JsonBody(b): JsonBody<DrawingBody>,
) -> ApiResult<Response> {
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

/// Lists a project's drawings, each with its completion.
#[utoipa::path(
    get,
    path = "/v1/projects/{pid}/drawings",
    tag = "drawings",
    params(ProjectPath, PageQuery),
    responses((status = 200, body = Paged<DrawingView>), Refusals)
)]
pub(super) async fn list_drawings(
    State(app): App,
    ProjectPath { pid: p }: ProjectPath,
    QueryParams(q): QueryParams<PageQuery>,
) -> ApiResult<Response> {
    let page = q.page()?;
    Ok(Json(page.of(blocking(&app, move |s| s.drawings(p)).await?)).into_response())
}

/// One drawing, with its completion.
#[utoipa::path(
    get,
    path = "/v1/projects/{pid}/drawings/{did}",
    tag = "drawings",
    params(DrawingPath),
    responses((status = 200, body = DrawingView), Refusals)
)]
pub(super) async fn get_drawing(
    State(app): App,
    DrawingPath { pid: p, did: d }: DrawingPath,
) -> ApiResult<Response> {
    Ok(Json(blocking(&app, move |s| s.drawing(p, d)).await?).into_response())
}

#[derive(utoipa::ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DrawingPatchBody {
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

/// Changes a drawing's number, title, revision, parent, area or system.
#[utoipa::path(
    patch,
    path = "/v1/projects/{pid}/drawings/{did}",
    tag = "drawings",
    params(DrawingPath),
    request_body = DrawingPatchBody,
    responses((status = 200, body = DrawingView), (status = 409, body = ErrorResponse), (status = 422, body = ErrorResponse), Refusals)
)]
pub(super) async fn patch_drawing(
    State(app): App,
    User(user): User,
    DrawingPath { pid: p, did: d }: DrawingPath,
    JsonBody(b): JsonBody<DrawingPatchBody>,
) -> ApiResult<Response> {
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

/// Deletes a drawing (soft).
#[utoipa::path(
    delete,
    path = "/v1/projects/{pid}/drawings/{did}",
    tag = "drawings",
    params(DrawingPath),
    responses((status = 204, description = "soft-deleted"), Refusals)
)]
pub(super) async fn delete_drawing(
    State(app): App,
    User(user): User,
    DrawingPath { pid: p, did: d }: DrawingPath,
) -> ApiResult<Response> {
    blocking(&app, move |s| s.delete_drawing(&user, p, d)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
