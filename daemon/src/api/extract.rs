//! Request extractors that turn every malformed input into a clear
//! [`ApiError`] naming what is wrong: JSON bodies (with the JSON path at
//! fault), ids in paths, the acting user, pagination.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use sitesync_model::{ComponentId, DrawingId, OperationId, ProjectId};

use crate::api::error::ApiError;
use crate::paging::{DEFAULT_LIMIT, MAX_LIMIT, Page};

/// A JSON body, parsed with errors that name the field.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    "request body is too large",
                )
            } else {
                ApiError::new(StatusCode::BAD_REQUEST, "bad_body", e.body_text())
            }
        })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Parses JSON, naming the path of the first field at fault.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            "the request body is empty; send JSON",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let code = if inner.is_syntax() || inner.is_eof() {
            "malformed_json"
        } else {
            "invalid_field"
        };
        let mut err = ApiError::new(StatusCode::BAD_REQUEST, code, format!("{path}: {inner}"));
        if path != "." {
            err.field = Some(path);
        }
        err
    })
}

/// Deserializes a field that may be absent (leave alone), null (clear) or a
/// value (set): `Option<Option<T>>` with `#[serde(default, deserialize_with)]`.
pub fn tri<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// The acting person: `X-User`, or the daemon's `--user`.
pub struct User(pub String);

/// The default user, stored in request extensions by the router.
#[derive(Clone)]
pub struct DefaultUser(pub String);

impl<S: Send + Sync> FromRequestParts<S> for User {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        match parts.headers.get("x-user") {
            Some(v) => {
                let v = v.to_str().map_err(|_| {
                    ApiError::bad_request("invalid_header", "X-User", "X-User must be plain text")
                })?;
                let v = v.trim();
                if v.is_empty() || v.chars().count() > 200 {
                    return Err(ApiError::bad_request(
                        "invalid_header",
                        "X-User",
                        "X-User must be 1 to 200 characters",
                    ));
                }
                Ok(User(v.to_owned()))
            }
            None => Ok(User(
                parts
                    .extensions
                    .get::<DefaultUser>()
                    .map(|d| d.0.clone())
                    .unwrap_or_else(|| "unknown".into()),
            )),
        }
    }
}

/// Parses an id from a path segment; a malformed id is "not found".
pub fn id<T: std::str::FromStr>(what: &str, raw: &str) -> Result<T, ApiError> {
    raw.parse().map_err(|_| ApiError::not_found(what, raw))
}

/// Declares the typed ids of a route's path: a struct whose fields are
/// named as the route's `{placeholders}` (so `params(ThePath)` documents
/// them), each parsed with [`id`] — a malformed id is "not found", like an
/// unknown one.
macro_rules! path_ids {
    ($(#[$doc:meta])* $name:ident { $($(#[$fdoc:meta])* $field:ident: $ty:ty = $what:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(utoipa::IntoParams)]
        #[into_params(parameter_in = Path)]
        pub struct $name {
            $($(#[$fdoc])* #[param(value_type = String)] pub $field: $ty),+
        }

        impl<S: Send + Sync> FromRequestParts<S> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
                let PathParams(raw) =
                    PathParams::<std::collections::HashMap<String, String>>::from_request_parts(parts, state).await?;
                Ok(Self {
                    $($field: id($what, raw.get(stringify!($field)).map_or("", String::as_str))?),+
                })
            }
        }
    };
}

path_ids!(
    /// `/v1/projects/{pid}/...`
    ProjectPath {
        /// project id
        pid: ProjectId = "project",
    }
);

path_ids!(
    /// `/v1/projects/{pid}/drawings/{did}/...`
    DrawingPath {
        /// project id
        pid: ProjectId = "project",
        /// drawing id
        did: DrawingId = "drawing",
    }
);

path_ids!(
    /// `/v1/projects/{pid}/components/{cid}/...`
    ComponentPath {
        /// project id
        pid: ProjectId = "project",
        /// component id
        cid: ComponentId = "component",
    }
);

path_ids!(
    /// `/v1/projects/{pid}/components/{cid}/milestones/{key}`
    MilestonePath {
        /// project id
        pid: ProjectId = "project",
        /// component id
        cid: ComponentId = "component",
        /// milestone key
        key: String = "milestone",
    }
);

path_ids!(
    /// `/v1/projects/{pid}/operations/{oid}/...`
    OperationPath {
        /// project id
        pid: ProjectId = "project",
        /// operation id
        oid: OperationId = "operation",
    }
);

path_ids!(
    /// `/v1/jobs/{id}/...`
    JobPath {
        /// job id
        id: uuid::Uuid = "job",
    }
);

/// `?limit=` (1..=1000, default 100) and `?cursor=` (the previous page's
/// `next_cursor`).
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    #[param(value_type = Option<usize>)]
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

impl PageQuery {
    pub fn page(&self) -> Result<Page, ApiError> {
        page(self.limit.as_deref(), self.cursor.as_deref())
    }
}

/// A query parameter's refusal, naming it.
pub fn query_error(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_query", field, message)
}

/// Reads `?limit=` and `?cursor=` into a [`Page`], refusing a limit out
/// of range or a cursor this daemon did not issue.
pub fn page(limit: Option<&str>, cursor: Option<&str>) -> Result<Page, ApiError> {
    let limit = match limit {
        None => DEFAULT_LIMIT,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_limit",
                    "limit",
                    format!("limit must be a whole number from 1 to {MAX_LIMIT}"),
                ));
            }
        },
    };
    let offset = match cursor {
        None | Some("") => 0,
        Some(c) => Page::decode_cursor(c).ok_or_else(|| {
            ApiError::bad_request("invalid_cursor", "cursor", "cursor is not one this daemon issued")
        })?,
    };
    Ok(Page { offset, limit })
}

/// `axum::extract::Query` with its refusal in the API's error shape.
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Self(q.0))
            .map_err(|e| ApiError::bad_request("invalid_query", "query", e.body_text()))
    }
}

/// `axum::extract::Path` with its refusal in the API's error shape.
pub struct PathParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Self(p.0))
            .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, "not_found", e.body_text()))
    }
}
