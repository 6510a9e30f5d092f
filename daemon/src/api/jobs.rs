//! Long work as jobs: imports, exports, their downloads, and the
//! streamed `components.csv`.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::stream::StreamExt;
use serde::Deserialize;
use sitesync_model::ProjectId;

use crate::api::error::{ApiError, ApiResult};
use crate::api::extract::{JobPath, JsonBody, ProjectPath, QueryParams, User, id, page};
use crate::export::Format as ExportFormat;
use crate::import::Format as ImportFormat;
use crate::jobs::{Job, JobKind, JobState};
use crate::paging::Paged;
use crate::service::ServiceError;
use sitesync_model::import::Mapping;

use super::{App, ErrorResponse, Refusals, blocking};

/// `?dry_run=`, `?mapping=` and `?format=` of an import.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ImportQuery {
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
pub(super) struct JobAccepted {
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
pub(super) async fn store_upload(
    body: axum::body::Body,
    path: &std::path::Path,
    limit: u64,
) -> ApiResult<Vec<u8>> {
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

/// Starts an import job (CSV or JSON), or a dry run of one.
#[utoipa::path(
    post,
    path = "/v1/projects/{pid}/imports",
    tag = "jobs",
    params(ProjectPath, ImportQuery),
    request_body(content = String, content_type = "text/csv", description = "CSV with a header row, or (application/json) an array of objects. Columns: drawing, tag, kind, template, quantity_total, unit, budget_hours, area, system, test_package and their spreadsheet synonyms; others become attributes."),
    responses((status = 202, body = JobAccepted), (status = 413, body = ErrorResponse), (status = 415, body = ErrorResponse), Refusals)
)]
pub(super) async fn create_import(
    State(app): App,
    User(user): User,
    ProjectPath { pid: p }: ProjectPath,
    QueryParams(q): QueryParams<ImportQuery>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> ApiResult<Response> {
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
pub(super) struct ExportBody {
    format: ExportFormat,
    /// Columns in order: id, drawing, tag, kind, template, quantity_total,
    /// unit, budget_hours, completion_percent, status, updated_at,
    /// updated_by, an attribute name (or `attr:<name>`), `milestone:<key>`,
    /// or `attributes` / `milestones` for all of them. Default: all.
    #[serde(default)]
    columns: Option<Vec<String>>,
}

/// Starts an export job (CSV, JSON or XLSX).
#[utoipa::path(
    post,
    path = "/v1/projects/{pid}/exports",
    tag = "jobs",
    params(ProjectPath),
    request_body = ExportBody,
    responses((status = 202, body = JobAccepted), (status = 422, body = ErrorResponse), Refusals)
)]
pub(super) async fn create_export(
    State(app): App,
    ProjectPath { pid: p }: ProjectPath,
    JsonBody(b): JsonBody<ExportBody>,
) -> ApiResult<Response> {
    let format = b.format;
    let requested = b.columns;
    // The columns are checked now, so a bad name is a 422, not a failed job.
    let (outline, columns, name) = blocking(&app, move |s| {
        let project = s.project(p)?;
        let outline = crate::export::Outline::of(s, p)?;
        let columns = outline.columns(requested.as_deref())?;
        Ok::<_, ServiceError>((outline, columns, crate::export::file_name(&project.name, format)))
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
pub(super) struct JobsQuery {
    project_id: Option<String>,
    #[param(value_type = Option<usize>)]
    limit: Option<String>,
    cursor: Option<String>,
}

/// Lists jobs, newest first.
#[utoipa::path(
    get,
    path = "/v1/jobs",
    tag = "jobs",
    params(JobsQuery),
    responses((status = 200, body = Paged<Job>), Refusals)
)]
pub(super) async fn list_jobs(
    State(app): App,
    QueryParams(q): QueryParams<JobsQuery>,
) -> ApiResult<Response> {
    let page = page(q.limit.as_deref(), q.cursor.as_deref())?;
    let project = q
        .project_id
        .as_deref()
        .map(|raw| id::<ProjectId>("project", raw))
        .transpose()?;
    Ok(Json(app.jobs.list(project, page)).into_response())
}

/// One job's state and progress.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    tag = "jobs",
    params(JobPath),
    responses((status = 200, body = Job), Refusals)
)]
pub(super) async fn get_job(State(app): App, JobPath { id }: JobPath) -> ApiResult<Json<Job>> {
    app.jobs
        .get(id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found("job", id))
}

/// A finished export's file.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/download",
    tag = "jobs",
    params(JobPath),
    responses((status = 200, description = "the export file (CSV, JSON or XLSX)"), (status = 409, body = ErrorResponse, description = "the job has not completed"), Refusals)
)]
pub(super) async fn download_job(State(app): App, JobPath { id }: JobPath) -> ApiResult<Response> {
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

/// Every live component as CSV, streamed.
#[utoipa::path(
    get,
    path = "/v1/projects/{pid}/components.csv",
    tag = "jobs",
    params(ProjectPath),
    responses((status = 200, content_type = "text/csv", description = "every live component, one column per milestone, streamed"), Refusals)
)]
pub(super) async fn components_csv(
    State(app): App,
    ProjectPath { pid: p }: ProjectPath,
) -> ApiResult<Response> {
    let (outline, name) = blocking(&app, move |s| {
        let project = s.project(p)?;
        Ok::<_, ServiceError>((
            crate::export::Outline::of(s, p)?,
            crate::export::file_name(&project.name, ExportFormat::Csv),
        ))
    })
    .await?;
    let body = axum::body::Body::from_stream(crate::export::stream_csv(app.service.clone(), outline)?);
    Ok(attachment(body, ExportFormat::Csv, &name))
}
