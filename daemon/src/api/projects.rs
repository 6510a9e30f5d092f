//! Projects, their templates, and their progress rollups.

use std::collections::HashMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sitesync_model::{GroupBy, NewProject, NewTemplate, Progress, ProjectPatch, Template};

use crate::api::error::ApiResult;
use crate::api::extract::{JsonBody, PageQuery, ProjectPath, QueryParams, User, query_error, tri};
use crate::paging::Paged;
use crate::service::ProjectView;

use super::{App, ErrorResponse, Refusals, blocking};

#[derive(utoipa::ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ProjectBody {
    name: String,
    #[serde(default)]
    code: Option<String>,
}

/// Creates a project.
#[utoipa::path(
    post,
    path = "/v1/projects",
    tag = "projects",
    request_body = ProjectBody,
    responses((status = 201, body = ProjectView), (status = 422, body = ErrorResponse), Refusals)
)]
pub(super) async fn create_project(
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

/// Lists the projects held here, each with completion, status and counts.
#[utoipa::path(
    get,
    path = "/v1/projects",
    tag = "projects",
    params(PageQuery),
    responses((status = 200, body = Paged<ProjectView>), Refusals)
)]
pub(super) async fn list_projects(
    State(app): App,
    QueryParams(q): QueryParams<PageQuery>,
) -> ApiResult<Response> {
    let page = q.page()?;
    let all = blocking(&app, |s| s.projects()).await?;
    Ok(Json(page.of(all)).into_response())
}

/// One project, with completion, status and counts.
#[utoipa::path(
    get,
    path = "/v1/projects/{pid}",
    tag = "projects",
    params(ProjectPath),
    responses((status = 200, body = ProjectView), Refusals)
)]
pub(super) async fn get_project(State(app): App, ProjectPath { pid: p }: ProjectPath) -> ApiResult<Response> {
    Ok(Json(blocking(&app, move |s| s.project(p)).await?).into_response())
}

#[derive(utoipa::ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ProjectPatchBody {
    #[serde(default)]
    name: Option<String>,
    #[serde(default, deserialize_with = "tri")]
    #[schema(value_type = Option<String>)]
    code: Option<Option<String>>,
}

/// Renames a project or changes its code.
#[utoipa::path(
    patch,
    path = "/v1/projects/{pid}",
    tag = "projects",
    params(ProjectPath),
    request_body = ProjectPatchBody,
    responses((status = 200, body = ProjectView), (status = 422, body = ErrorResponse), Refusals)
)]
pub(super) async fn patch_project(
    State(app): App,
    User(user): User,
    ProjectPath { pid: p }: ProjectPath,
    JsonBody(b): JsonBody<ProjectPatchBody>,
) -> ApiResult<Response> {
    let patch = ProjectPatch {
        name: b.name,
        code: b.code,
    };
    Ok(Json(blocking(&app, move |s| s.update_project(&user, p, patch)).await?).into_response())
}

/// Deletes a project (soft: it stops listing).
#[utoipa::path(
    delete,
    path = "/v1/projects/{pid}",
    tag = "projects",
    params(ProjectPath),
    responses((status = 204, description = "soft-deleted"), Refusals)
)]
pub(super) async fn delete_project(
    State(app): App,
    User(user): User,
    ProjectPath { pid: p }: ProjectPath,
) -> ApiResult<Response> {
    blocking(&app, move |s| s.delete_project(&user, p)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---- templates ----

/// Adds a milestone template (rules of credit) to a project.
#[utoipa::path(
    post,
    path = "/v1/projects/{pid}/templates",
    tag = "templates",
    params(ProjectPath),
    request_body = NewTemplate,
    responses((status = 201, body = Template), (status = 422, body = ErrorResponse), Refusals)
)]
pub(super) async fn create_template(
    State(app): App,
    User(user): User,
    ProjectPath { pid: p }: ProjectPath,
    JsonBody(new): JsonBody<NewTemplate>,
) -> ApiResult<Response> {
    let t = blocking(&app, move |s| s.add_template(&user, p, new)).await?;
    Ok((StatusCode::CREATED, Json(t)).into_response())
}

/// Lists a project's templates.
#[utoipa::path(
    get,
    path = "/v1/projects/{pid}/templates",
    tag = "templates",
    params(ProjectPath, PageQuery),
    responses((status = 200, body = Paged<Template>), Refusals)
)]
pub(super) async fn list_templates(
    State(app): App,
    ProjectPath { pid: p }: ProjectPath,
    QueryParams(q): QueryParams<PageQuery>,
) -> ApiResult<Response> {
    let page = q.page()?;
    Ok(Json(page.of(blocking(&app, move |s| s.templates(p)).await?)).into_response())
}

/// A project's completion and earned hours, optionally grouped.
#[utoipa::path(
    get,
    path = "/v1/projects/{pid}/progress",
    tag = "progress",
    params(ProjectPath, ("group_by" = Option<GroupBy>, Query)),
    responses((status = 200, body = Progress), Refusals)
)]
pub(super) async fn progress(
    State(app): App,
    ProjectPath { pid: p }: ProjectPath,
    QueryParams(q): QueryParams<HashMap<String, String>>,
) -> ApiResult<Response> {
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
