//! The API's error answer: `{"error": {"code", "message", "field"?}}` with
//! the status docs/http.md gives each kind of failure. Every failure a request
//! can cause maps here; bad input never becomes a 500.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sitesync_model::{ErrorKind, ModelError};
use sitesync_sync::{RepoError, StoreError};

use crate::service::ServiceError;

/// An error answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    /// A malformed request (400) naming the field at fault.
    pub fn bad_request(code: &'static str, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: Some(field.into()),
            ..Self::new(StatusCode::BAD_REQUEST, code, message)
        }
    }

    /// Well-formed but invalid (422), naming the field at fault.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: Some(field.into()),
            ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
        }
    }

    /// A file operation of the daemon's own failed (500): `doing` says
    /// what it was doing, e.g. "storing the upload".
    pub fn io(doing: &str, e: std::io::Error) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "io_error",
            format!("{doing} failed: {e}"),
        )
    }

    pub fn not_found(what: &str, id: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} {id} not found"),
        )
    }
}

impl From<ModelError> for ApiError {
    fn from(e: ModelError) -> Self {
        let status = match e.kind() {
            ErrorKind::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::Corrupt => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if e.kind() == ErrorKind::Corrupt {
            tracing::error!(error = %e, "damaged document");
        }
        Self {
            status,
            code: e.code(),
            field: e.field().map(str::to_owned),
            message: e.to_string(),
        }
    }
}

impl From<RepoError> for ApiError {
    fn from(e: RepoError) -> Self {
        ServiceError::from(e).into()
    }
}

/// The one place a service failure becomes an HTTP answer.
impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Model(e) => e.into(),
            ServiceError::NotFound { what, id } => Self::not_found(what, id),
            ServiceError::Missing { field } => {
                Self::bad_request("missing_field", field, format!("{field} is required"))
            }
            ServiceError::Invalid { field, message } => Self::invalid(field, message),
            ServiceError::Store(e @ StoreError::Corrupt { .. }) => {
                tracing::error!(error = %e, "damaged record");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "corrupt", e.to_string())
            }
            ServiceError::Store(e) => {
                tracing::error!(error = %e, "storage failure");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "storage_error", e.to_string())
            }
            ServiceError::Unavailable { detail } => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
            }
            ServiceError::Io { doing, source } => Self::io(doing, source),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(field) = self.field {
            error["field"] = json!(field);
        }
        (self.status, Json(json!({ "error": error }))).into_response()
    }
}

/// Shorthand for handlers.
pub type ApiResult<T> = Result<T, ApiError>;
