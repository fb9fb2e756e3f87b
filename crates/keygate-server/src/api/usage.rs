//! `GET /v1/keys/{id}/usage` and `GET /v1/owners/{owner}/usage`: requests counted by hour or
//! by day (UTC) — verified, refused by code, rate limited.

use axum::Json;
use axum::extract::{Path, State};
use keygate::core::Timestamp;
use keygate::core::usage::{Bucket, UsageBucket, UsageRange, check_owner};
use keygate::usage::UsageOf;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::auth::{Caller, Read};
use super::error::{ApiError, ApiQuery};

/// The query of a usage request.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    /// Start of the range (RFC 3339), rounded down to its bucket. Default: 7 days (hours) or
    /// 30 days (days) before `until`. A range longer than the most buckets allowed keeps its
    /// last ones: the answer's `since` says where it starts. At or after `until`: no buckets.
    pub since: Option<String>,
    /// End of the range (RFC 3339, exclusive), rounded up to a bucket boundary. Default: the
    /// end of the current bucket.
    pub until: Option<String>,
    /// `hour` (default; at most 744 buckets, 31 days) or `day` (at most 400 buckets).
    pub bucket: Option<String>,
}

/// Requests refused for a reason other than a rate limit, by code.
#[derive(Debug, Serialize, ToSchema)]
#[allow(non_snake_case)]
pub struct RefusedDoc {
    /// The key was revoked.
    pub REVOKED: u64,
    /// The key had expired.
    pub EXPIRED: u64,
    /// The key was disabled.
    pub DISABLED: u64,
    /// The key lacked a scope.
    pub INSUFFICIENT_SCOPE: u64,
    /// The key's credits were spent.
    pub USAGE_EXCEEDED: u64,
    /// The request came from an address the key's allowlist does not name.
    pub IP_NOT_ALLOWED: u64,
}

/// One bucket's requests.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageBucketDoc {
    /// The bucket's first instant (a whole hour or day, UTC).
    #[schema(format = DateTime)]
    pub start: String,
    /// Requests verified (`VALID`).
    pub verified: u64,
    /// Requests refused, by code (rate-limited ones are counted apart).
    pub refused: RefusedDoc,
    /// Requests refused by a rate limit (`RATE_LIMITED`).
    pub rate_limited: u64,
}

/// Usage over a range, every bucket of it in order (empty ones included). Counts reach the
/// store in batches (every `usage_flush`, default 10 s), so the last seconds may be missing.
/// Only requests that name an existing key are counted.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageReport {
    /// `hour` or `day`.
    #[schema(value_type = String)]
    pub bucket: Bucket,
    /// The range's first instant (later than the `since` asked for when that range was longer
    /// than the most buckets allowed: 744 hours or 400 days).
    #[schema(value_type = String, format = DateTime)]
    pub since: Timestamp,
    /// The first instant after the range.
    #[schema(value_type = String, format = DateTime)]
    pub until: Timestamp,
    /// The buckets, oldest first.
    #[schema(value_type = Vec<UsageBucketDoc>)]
    pub items: Vec<UsageBucket>,
}

impl UsageParams {
    fn range(&self, now: Timestamp) -> Result<UsageRange, ApiError> {
        let time = |name: &str, text: &Option<String>| {
            text.as_deref()
                .map(|t| {
                    Timestamp::parse_rfc3339(t)
                        .map_err(|e| ApiError::bad_request(format!("{name}: {e}")))
                })
                .transpose()
        };
        let bucket = match self.bucket.as_deref() {
            None => Bucket::Hour,
            Some(b) => {
                Bucket::parse(b).map_err(|e| ApiError::bad_request(format!("bucket: {e}")))?
            }
        };
        Ok(UsageRange::new(
            time("since", &self.since)?,
            time("until", &self.until)?,
            bucket,
            now,
        ))
    }
}

/// One key's requests by hour or by day.
#[utoipa::path(
    get, path = "/v1/keys/{id}/usage", tag = "keys",
    params(("id" = String, Path, description = "Key id"), UsageParams),
    responses(
        (status = 200, description = "The key's usage, bucket by bucket", body = UsageReport),
        (status = 400, description = "Invalid time or bucket", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid admin key", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Needs keygate:read or keygate:admin", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such key", body = super::ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn key_usage(
    State(app): State<AppState>,
    _caller: Caller<Read>,
    Path(id): Path<String>,
    ApiQuery(params): ApiQuery<UsageParams>,
) -> Result<Json<UsageReport>, ApiError> {
    let id = keygate::KeyId::parse(&id).ok_or_else(ApiError::no_such_key)?;
    let range = params.range(app.keygate.now())?;
    let items = app.keygate.usage(UsageOf::Key(&id), &range).await?;
    Ok(Json(report(&range, items)))
}

/// The requests of every key of an owner, added together, by hour or by day. An owner with no
/// keys has empty buckets.
#[utoipa::path(
    get, path = "/v1/owners/{owner}/usage", tag = "keys",
    params(("owner" = String, Path, description = "Owner id"), UsageParams),
    responses(
        (status = 200, description = "The owner's usage, bucket by bucket", body = UsageReport),
        (status = 400, description = "Invalid owner, time or bucket", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid admin key", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Needs keygate:read or keygate:admin", body = super::ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn owner_usage(
    State(app): State<AppState>,
    _caller: Caller<Read>,
    Path(owner): Path<String>,
    ApiQuery(params): ApiQuery<UsageParams>,
) -> Result<Json<UsageReport>, ApiError> {
    check_owner(&owner).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let range = params.range(app.keygate.now())?;
    let items = app.keygate.usage(UsageOf::Owner(&owner), &range).await?;
    Ok(Json(report(&range, items)))
}

fn report(range: &UsageRange, items: Vec<UsageBucket>) -> UsageReport {
    UsageReport {
        bucket: range.bucket(),
        since: range.since(),
        until: range.until(),
        items,
    }
}
