//! The HTTP API of docs/http.md: routes, request bodies and handlers. Each
//! handler parses and checks its input, then runs the matching
//! [`Service`](crate::service::Service) operation on a blocking thread.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router, middleware};
use serde_json::json;
use sitesync_model::GroupBy;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::api::error::{ApiError, ApiResult};
use crate::api::extract::DefaultUser;
use crate::service::Service;

pub mod app;
pub mod auth;
mod components;
mod drawings;
pub mod error;
mod events;
pub mod extract;
mod jobs;
mod operations;
mod projects;
mod sync;

/// Largest request body accepted (a 10,000-update bulk is ~1.5 MB).
pub const MAX_BODY: usize = 16 * 1024 * 1024;

type App = State<Arc<AppState>>;

/// Runs a service call on a blocking thread (Automerge work is CPU-bound);
/// its failure becomes the API's error answer.
async fn blocking<T: Send + 'static, E: Into<ApiError> + Send + 'static>(
    app: &Arc<AppState>,
    f: impl FnOnce(&Service) -> Result<T, E> + Send + 'static,
) -> ApiResult<T> {
    let svc = app.service.clone();
    let done = tokio::task::spawn_blocking(move || f(&svc)).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("worker failed: {e}"),
        )
    })?;
    done.map_err(Into::into)
}

/// The API document's frame: title, version, bearer security.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "sitesync-daemon HTTP API", description = "The localhost API of the sitesync daemon (docs/http.md)."),
    modifiers(&BearerAuth),
    // Named by a query parameter, which does not register its schema.
    components(schemas(GroupBy)),
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

/// Every documented route, registered from its `#[utoipa::path]`, and the
/// API document built from the same annotations.
pub fn routes() -> (Router<Arc<AppState>>, utoipa::openapi::OpenApi) {
    let (router, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health))
        .routes(routes!(crate::metrics::render))
        .routes(routes!(projects::create_project, projects::list_projects))
        .routes(routes!(
            projects::get_project,
            projects::patch_project,
            projects::delete_project
        ))
        .routes(routes!(projects::create_template, projects::list_templates))
        .routes(routes!(drawings::create_drawing, drawings::list_drawings))
        .routes(routes!(
            drawings::get_drawing,
            drawings::patch_drawing,
            drawings::delete_drawing
        ))
        .routes(routes!(components::create_component))
        .routes(routes!(components::list_components))
        .routes(routes!(
            components::get_component,
            components::patch_component,
            components::delete_component
        ))
        .routes(routes!(components::restore_component))
        .routes(routes!(components::history))
        .routes(routes!(components::put_milestone))
        .routes(routes!(operations::bulk))
        .routes(routes!(operations::list_operations))
        .routes(routes!(operations::undo))
        .routes(routes!(projects::progress))
        .routes(routes!(events::events))
        .routes(routes!(sync::sync_status))
        .routes(routes!(sync::add_peer))
        .routes(routes!(sync::remove_peer))
        .routes(routes!(events::put_presence))
        .routes(routes!(events::get_presence))
        .routes(routes!(jobs::create_import))
        .routes(routes!(jobs::create_export))
        .routes(routes!(jobs::components_csv))
        .routes(routes!(jobs::list_jobs))
        .routes(routes!(jobs::get_job))
        .routes(routes!(jobs::download_job))
        .routes(routes!(
            crate::api::app::create_session,
            crate::api::app::end_session
        ))
        .routes(routes!(crate::api::app::create_link))
        .split_for_parts();
    (router, finish(doc))
}

/// What the annotations leave out of the document: the crate's version,
/// and a description for every response, which OpenAPI 3.1 requires (a
/// validator, and so every client generator, refuses the document
/// without one). A response declared by status and body alone gets the
/// sentence its status means everywhere in this API.
fn finish(mut doc: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    for item in doc.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.patch,
            &mut item.delete,
        ];
        for op in operations.into_iter().flatten() {
            for (status, response) in &mut op.responses.responses {
                if let utoipa::openapi::RefOr::T(r) = response
                    && r.description.is_empty()
                {
                    r.description = describe(status).to_owned();
                }
            }
        }
    }
    doc
}

/// The meaning of a status in this API (docs/http.md, "Basics").
fn describe(status: &str) -> &'static str {
    match status {
        "200" => "The answer.",
        "201" => "Created: the answer is what was created.",
        "202" => "Accepted: a job was started; follow it at /v1/jobs/{id}.",
        "204" => "Done; no body.",
        "400" => "Malformed request: the error names the field.",
        "401" => "Missing or wrong API token.",
        "403" => "Foreign Host or Origin.",
        "404" => "Unknown id.",
        "409" => {
            "Refused by the current state (a deleted component, another workflow's value): the error says which."
        }
        "413" => "Too large: the error gives the limit.",
        "415" => "A body type this endpoint does not take.",
        "422" => "Well-formed but invalid: the error names the field.",
        _ => "See the error's code and message.",
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    let default_user = DefaultUser(state.default_user.clone());
    let (api, doc) = routes();
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
        .route("/", get(crate::api::app::index))
        .route("/app/{file}", get(crate::api::app::asset))
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
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::api::auth::guard,
        ))
        // Outside the guard, so refused requests are counted too.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::metrics::track,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::Extension(default_user))
        .with_state(state)
}

/// Whether the daemon is up: its version, device id and storage damage report.
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

#[cfg(test)]
mod tests {
    use super::routes;

    /// Where the committed API document lives, from this crate.
    const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");

    /// The API document as the daemon serves it (`/v1/openapi.json`).
    fn served() -> serde_json::Value {
        serde_json::from_str(&routes().1.to_json().unwrap()).unwrap()
    }

    /// `docs/openapi.json` is the document the daemon serves, so every
    /// change to the API shows in review as a diff of that file (routing is
    /// registered from the same annotations, so this pins the routes too).
    /// `SITESYNC_BLESS=1` rewrites the file from the code.
    #[test]
    fn the_committed_api_document_is_the_served_one() {
        let served = served();
        if std::env::var_os("SITESYNC_BLESS").is_some() {
            let text = serde_json::to_string_pretty(&served).unwrap() + "\n";
            std::fs::write(COMMITTED, text).unwrap();
            return;
        }
        let committed: serde_json::Value = std::fs::read_to_string(COMMITTED)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
            .unwrap_or_else(|e| panic!("cannot read {COMMITTED}: {e}"));
        assert!(
            committed == served,
            "docs/openapi.json is not the served API document. If the API change is meant, rewrite it \
             with `SITESYNC_BLESS=1 cargo test -p sitesync-daemon the_committed_api_document` and commit the diff"
        );
    }

    /// What a validator would refuse first, checked without one (the real
    /// validator runs in `tests/tests/api.rs`): every operation answers
    /// something, every answer is described, and every schema named is
    /// defined.
    #[test]
    fn the_api_document_is_complete() {
        let doc = served();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let responses = op["responses"].as_object().unwrap();
                assert!(!responses.is_empty(), "{method} {path} documents no response");
                for (status, r) in responses {
                    assert!(
                        r["description"].as_str().is_some_and(|d| !d.is_empty()),
                        "{method} {path} {status} has no description"
                    );
                }
            }
        }
        let text = doc.to_string();
        for part in text.split("\"#/components/schemas/").skip(1) {
            let name = &part[..part.find('"').unwrap()];
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "schema {name} is named but not defined"
            );
        }
    }
}
