//! RFC 9457 problem details (`application/problem+json`): how keygate says no over HTTP.

use std::borrow::Cow;

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use keygate_core::Outcome;
use serde::Serialize;

/// The media type of every keygate error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An error response: `type`, `title`, `status`, `detail` and a stable `code`.
///
/// The detail never contains the presented key.
///
/// Its `type` is `urn:keygate:problem:<code in kebab case>`, e.g.
/// `urn:keygate:problem:insufficient-scope`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Short, human, the same for every instance of the code.
    pub title: &'static str,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong this time.
    pub detail: Cow<'static, str>,
    /// Stable machine-readable code, e.g. `MISSING` or `INSUFFICIENT_SCOPE`.
    pub code: &'static str,
    /// `WWW-Authenticate` challenge to send with a 401.
    pub challenge: Option<HeaderValue>,
}

impl Serialize for Problem {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut p = s.serialize_struct("Problem", 5)?;
        p.serialize_field("type", &KindUri(self.code))?;
        p.serialize_field("title", self.title)?;
        p.serialize_field("status", &self.status)?;
        p.serialize_field("detail", &self.detail)?;
        p.serialize_field("code", self.code)?;
        p.end()
    }
}

impl Problem {
    /// A problem with the given status, code, title and detail.
    pub fn new(
        status: StatusCode,
        code: &'static str,
        title: &'static str,
        detail: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            title,
            status: status.as_u16(),
            detail: detail.into(),
            code,
            challenge: None,
        }
    }

    /// The problem type URI, `urn:keygate:problem:<code in kebab case>`.
    pub fn kind(&self) -> String {
        KindUri(self.code).to_string()
    }

    /// The rejection for a verification outcome: 403 for `INSUFFICIENT_SCOPE` and
    /// `IP_NOT_ALLOWED`, 429 for `RATE_LIMITED` and `USAGE_EXCEEDED`, else 401.
    pub fn from_outcome(outcome: Outcome, detail: impl Into<Cow<'static, str>>) -> Self {
        let status = match outcome {
            Outcome::InsufficientScope | Outcome::IpNotAllowed => StatusCode::FORBIDDEN,
            Outcome::RateLimited | Outcome::UsageExceeded => StatusCode::TOO_MANY_REQUESTS,
            Outcome::Valid => StatusCode::OK,
            _ => StatusCode::UNAUTHORIZED,
        };
        Self::new(status, outcome.code(), outcome.title(), detail)
    }

    /// 400 with a detail that names the field.
    pub fn bad_request(detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            "Invalid request",
            detail,
        )
    }

    /// 503: the key store could not be asked to `action` (e.g. "issue the key").
    pub fn unavailable_to(action: &str) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "Key store unavailable",
            format!(
                "could not {action} right now: the key store is unavailable; try again shortly"
            ),
        )
    }

    /// 503: the key store could not be asked whether a key is valid.
    pub fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "Key store unavailable",
            "the API key could not be checked right now; try again shortly",
        )
    }

    /// Adds the `WWW-Authenticate` challenge.
    pub fn with_challenge(mut self, challenge: HeaderValue) -> Self {
        self.challenge = Some(challenge);
        self
    }
}

/// `urn:keygate:problem:<code in kebab case>`, written without allocating.
struct KindUri(&'static str);

impl std::fmt::Display for KindUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("urn:keygate:problem:")?;
        for c in self.0.chars() {
            let c = if c == '_' {
                '-'
            } else {
                c.to_ascii_lowercase()
            };
            std::fmt::Write::write_char(f, c)?;
        }
        Ok(())
    }
}

impl Serialize for KindUri {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.detail)
    }
}

impl std::error::Error for Problem {}

/// Put in every problem response's extensions, so middleware can see the code without
/// parsing the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProblemCode(pub &'static str);

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(challenge) = self.challenge {
            headers.insert(header::WWW_AUTHENTICATE, challenge);
        }
        if self.status == 503 {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response.extensions_mut().insert(ProblemCode(self.code));
        response
    }
}
