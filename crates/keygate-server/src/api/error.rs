//! How the HTTP API says no: every error is an RFC 9457 problem, and request bodies and query
//! strings are read by extractors that turn every kind of bad input into a 400, 413 or 415
//! naming what is wrong — without repeating the values sent (a key may be among them).

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, StatusCode, header};
use keygate::Problem;
use serde::de::DeserializeOwned;

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// An API failure, rendered as `application/problem+json`.
#[derive(Debug)]
pub struct ApiError(pub Problem);

impl ApiError {
    /// 400 with a detail that names the field.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self(Problem::bad_request(detail.into()))
    }

    /// 404 for a key id.
    pub fn no_such_key() -> Self {
        Self(Problem::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "No such key",
            "no key with that id",
        ))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.0.into_response()
    }
}

impl From<Problem> for ApiError {
    fn from(p: Problem) -> Self {
        Self(p)
    }
}

impl From<keygate::Error> for ApiError {
    fn from(e: keygate::Error) -> Self {
        Self(Problem::from(e))
    }
}

/// A JSON request body: `Content-Type: application/json` (else 415), at most 64 KiB (else
/// 413), and a shape that deserializes into `T` with no unknown fields (else 400 naming the
/// field).
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        require_json(req.headers())?;
        let bytes = read_body(req, state).await?;
        parse_json(&bytes).map(Self)
    }
}

/// Like [`ApiJson`], but an empty body, or the JSON `null`, is `None` (for `POST .../revoke`
/// with no reason).
#[derive(Debug)]
pub struct OptionalApiJson<T>(pub Option<T>);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for OptionalApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = require_json(req.headers());
        let bytes = read_body(req, state).await?;
        if bytes.is_empty() {
            return Ok(Self(None));
        }
        json?;
        parse_json::<Option<T>>(&bytes).map(Self)
    }
}

/// 413: the body is over [`MAX_BODY_BYTES`].
pub fn too_large() -> ApiError {
    ApiError(Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "PAYLOAD_TOO_LARGE",
        "Request body too large",
        format!("the request body must be at most {MAX_BODY_BYTES} bytes"),
    ))
}

/// A request's whole body, as the tracking middleware received it (so that a handler takes
/// it as it is instead of collecting the body a second time).
#[derive(Debug, Clone)]
pub(crate) struct ReceivedBody(pub(crate) Bytes);

async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    if let Some(ReceivedBody(bytes)) = req.extensions().get::<ReceivedBody>() {
        return Ok(bytes.clone());
    }
    let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large()
        } else {
            ApiError::bad_request("the request body could not be read")
        }
    })?;
    Ok(bytes)
}

fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| {
            let mime = mime.trim().to_ascii_lowercase();
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        });
    if is_json {
        Ok(())
    } else {
        Err(ApiError(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            "Unsupported media type",
            "send the body as Content-Type: application/json",
        )))
    }
}

/// Parses a request body. It must be a JSON object (or, where a body is optional, `null`):
/// serde would otherwise read a struct from an array by position.
fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') && !bytes.trim_ascii().eq(b"null") {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    // The common case, a valid body, in one plain pass; the path-tracking pass below runs
    // only to word the error of a bad one.
    if let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Syntax => ApiError::bad_request(format!(
                "invalid JSON at line {} column {}",
                inner.line(),
                inner.column()
            )),
            serde_json::error::Category::Eof => {
                ApiError::bad_request("invalid JSON: the body ends too early")
            }
            _ => field_error(&path, &inner.to_string()),
        }
    })?;
    de.end()
        .map_err(|_| ApiError::bad_request("invalid JSON: unexpected data after the JSON body"))?;
    Ok(value)
}

/// 400 naming the field at `path` (redacted like the message: a client may send a key as a
/// field name).
fn field_error(path: &str, message: &str) -> ApiError {
    let why = redact(message);
    if path.is_empty() || path == "." || path == "?" {
        return ApiError::bad_request(why);
    }
    let path: Vec<String> = path
        .split('.')
        .map(|segment| {
            let name = segment.split('[').next().unwrap_or_default();
            if is_short_identifier(name) {
                segment.to_owned()
            } else {
                "…".to_owned()
            }
        })
        .collect();
    ApiError::bad_request(format!("{}: {why}", path.join(".")))
}

fn is_short_identifier(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 32
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == ':')
}

/// A page size from a query, checked against 1..=[`MAX_PAGE_SIZE`](keygate::MAX_PAGE_SIZE).
pub fn page_limit(limit: u32) -> Result<u32, ApiError> {
    let max = keygate::MAX_PAGE_SIZE;
    if (1..=max).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::bad_request(format!(
            "limit: must be between 1 and {max}"
        )))
    }
}

/// A query string deserialized into `T` (no unknown parameters; 400 naming the parameter).
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de).map(Self).map_err(|e| {
            let path = e.path().to_string();
            field_error(&path, &e.into_inner().to_string())
        })
    }
}

/// Removes values a client sent from a serde message: `string "..."` becomes `a string`, and
/// backquoted text that is not a short identifier becomes `…`. Field names stay.
pub fn redact(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("string \"") {
            // Skip the Debug-escaped string up to its closing quote.
            let mut escaped = false;
            let mut end = after.len();
            for (i, c) in after.char_indices() {
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '"') => {
                        end = i + 1;
                        break;
                    }
                    _ => {}
                }
            }
            out.push_str("a string");
            rest = &after[end.min(after.len())..];
        } else if let Some(after) = rest.strip_prefix('`') {
            let close = after.find('`').unwrap_or(after.len());
            let inner = &after[..close];
            out.push('`');
            out.push_str(if is_short_identifier(inner) {
                inner
            } else {
                "…"
            });
            out.push('`');
            rest = after.get(close + 1..).unwrap_or_default();
        } else {
            let c = rest.chars().next().unwrap_or_default();
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redact_keeps_field_names_and_drops_values() {
        assert_eq!(
            redact(r#"invalid type: string "kg_secret\"x", expected a sequence"#),
            "invalid type: a string, expected a sequence"
        );
        assert_eq!(
            redact("unknown field `nmae`, expected one of `name`, `owner`"),
            "unknown field `nmae`, expected one of `name`, `owner`"
        );
        assert_eq!(
            redact("unknown field `kg_aUAYsqo5FMjHkOZjYueMa1zk21Khm0h62KHQz5`"),
            "unknown field `…`"
        );
        assert_eq!(
            redact("invalid digit found in string"),
            "invalid digit found in string"
        );
    }
}
