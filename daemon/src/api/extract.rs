//! Request extractors that turn every malformed input into a clear
//! [`ApiError`] naming what is wrong: JSON bodies (with the JSON path at
//! fault), ids in paths, the acting user, pagination.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::ApiError;

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

/// Default and maximum page sizes.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

/// `?limit=` and `?cursor=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page {
    pub offset: usize,
    pub limit: usize,
}

impl Page {
    pub fn parse(limit: Option<&str>, cursor: Option<&str>) -> Result<Self, ApiError> {
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
            Some(c) => decode_cursor(c).ok_or_else(|| {
                ApiError::bad_request("invalid_cursor", "cursor", "cursor is not one this daemon issued")
            })?,
        };
        Ok(Self { offset, limit })
    }

    /// One page of `items`, as `{"items", "next_cursor", "total"}`.
    pub fn of<T: Serialize>(self, items: Vec<T>) -> Paged<T> {
        let (total, next_cursor) = self.bounds(items.len());
        Paged {
            items: items.into_iter().skip(self.offset).take(self.limit).collect(),
            next_cursor,
            total,
        }
    }

    /// [`Self::of`] over references, cloning only the page's items (a
    /// listing sorts references to a large index, then copies 100).
    pub fn of_cloned<T: Serialize + Clone>(self, items: &[&T]) -> Paged<T> {
        self.of_mapped(items, |t| (*t).clone())
    }

    /// [`Self::of`] over any items, making only the page's into `T` (a
    /// listing sorts compact index entries, then decodes 100).
    pub fn of_mapped<I, T: Serialize>(self, items: &[I], f: impl Fn(&I) -> T) -> Paged<T> {
        let (total, next_cursor) = self.bounds(items.len());
        Paged {
            items: items.iter().skip(self.offset).take(self.limit).map(f).collect(),
            next_cursor,
            total,
        }
    }

    fn bounds(self, total: usize) -> (usize, Option<String>) {
        let end = (self.offset + self.limit).min(total);
        (total, (end < total).then(|| encode_cursor(end)))
    }
}

/// A page of a list.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Paged<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
    pub total: usize,
}

// Cursors are opaque to clients: "o" and the offset in base 36.
fn encode_cursor(offset: usize) -> String {
    let mut n = offset;
    let mut digits = Vec::new();
    loop {
        digits.push(std::char::from_digit((n % 36) as u32, 36).expect("digit"));
        n /= 36;
        if n == 0 {
            break;
        }
    }
    digits.push('o');
    digits.iter().rev().collect()
}

fn decode_cursor(c: &str) -> Option<usize> {
    let digits = c.strip_prefix('o')?;
    if digits.is_empty() || digits.len() > 12 {
        return None;
    }
    usize::from_str_radix(digits, 36).ok()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        for n in [0, 1, 35, 36, 99_999] {
            assert_eq!(decode_cursor(&encode_cursor(n)), Some(n));
        }
        for bad in ["", "o", "x12", "o!!", "o1234567890123"] {
            assert_eq!(decode_cursor(bad), None, "{bad}");
        }
        let page = Page::parse(Some("2"), None).unwrap().of(vec![1, 2, 3]);
        assert_eq!((page.items, page.total), (vec![1, 2], 3));
        let next = page.next_cursor.unwrap();
        let page = Page::parse(Some("2"), Some(&next)).unwrap().of(vec![1, 2, 3]);
        assert_eq!((page.items, page.next_cursor), (vec![3], None));
        assert!(Page::parse(Some("0"), None).is_err());
        assert!(Page::parse(Some("1001"), None).is_err());
    }
}
