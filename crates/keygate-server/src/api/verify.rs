//! `POST /v1/verify`: the key check, for services in any language.

use axum::Json;
use axum::extract::State;
use keygate::ApiKey;
use keygate::core::Outcome;
use keygate::core::scope::check_scope;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};

use super::AppState;
use super::auth::{Caller, Verify};
use super::error::{ApiError, ApiJson};

/// `POST /v1/verify` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// The key the client presented.
    pub key: String,
    /// Scopes the key must hold for this request.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Units the request spends of the key's rate limits and credits (default 1; 0 checks
    /// without spending).
    #[serde(
        default = "one",
        deserialize_with = "keygate::core::limits::whole::u64"
    )]
    #[schema(minimum = 0, default = 1)]
    pub cost: u64,
    /// The client's IP address, checked against the key's allowlist. A key with an allowlist
    /// is refused (`IP_NOT_ALLOWED`) when it is not given.
    #[serde(default)]
    pub ip: Option<String>,
}

fn one() -> u64 {
    1
}

/// One rate limit of the key after this request, as the `RateLimit` headers tell it.
#[derive(Debug, Serialize, ToSchema)]
pub struct LimitDoc {
    /// Whose limit: `key` or `owner`.
    pub scope: &'static str,
    /// The limit's name, e.g. `per_1m`.
    pub name: String,
    /// Units allowed per window.
    pub limit: u64,
    /// The window, e.g. `1m`.
    pub window: String,
    /// Units left now.
    pub remaining: u64,
    /// Seconds until more become available.
    pub reset: u64,
    /// When refused: seconds to wait before retrying.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

/// The outcome code, documented with the codes keygate-core defines (one list, in core).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutcomeCode(pub Outcome);

impl Serialize for OutcomeCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.code())
    }
}

impl utoipa::PartialSchema for OutcomeCode {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(Outcome::ALL.iter().map(|o| o.code())))
            .description(Some("Stable outcome code"))
            .into()
    }
}

impl ToSchema for OutcomeCode {}

/// `POST /v1/verify` answer. Always 200: a refused key is an answer, not an error.
#[derive(Debug, Serialize, ToSchema)]
pub struct VerifyResponse {
    /// `true` only for `VALID`.
    pub valid: bool,
    /// The outcome.
    pub code: OutcomeCode,
    /// Why, in a sentence (never the key).
    pub detail: String,
    /// The key, when one was found (even if refused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<ApiKey>,
    /// The key's rate limits after this request (when it has any and they were checked).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<LimitDoc>,
    /// The key's credits left after this request (when it has a quota and it was checked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credits_remaining: Option<u64>,
    /// Refused for its credits (`USAGE_EXCEEDED`) with a quota that refills: seconds until
    /// the refill is due (at least 1), the `Retry-After` to give the client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credits_refill_in: Option<u64>,
}

/// Verify a key for the given scopes.
#[utoipa::path(
    post, path = "/v1/verify", tag = "verify",
    request_body = VerifyRequest,
    responses(
        (status = 200, description = "The decision", body = VerifyResponse),
        (status = 400, description = "Invalid field", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid admin key", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Needs keygate:verify or keygate:admin", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 413, description = "Body over 64 KiB", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = super::ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn verify(
    State(app): State<AppState>,
    _caller: Caller<Verify>,
    ApiJson(body): ApiJson<VerifyRequest>,
) -> Result<Json<VerifyResponse>, ApiError> {
    let most = super::contract::MAX_VERIFY_SCOPES;
    if body.scopes.len() > most {
        return Err(ApiError::bad_request(format!(
            "scopes: at most {most} scopes"
        )));
    }
    for (i, scope) in body.scopes.iter().enumerate() {
        check_scope(scope).map_err(|why| ApiError::bad_request(format!("scopes[{i}]: {why}")))?;
    }
    if body.cost > keygate::MAX_COST {
        return Err(ApiError::bad_request(format!(
            "cost: at most {}",
            keygate::MAX_COST
        )));
    }
    let client = body
        .ip
        .as_deref()
        .map(|ip| {
            ip.trim()
                .parse::<std::net::IpAddr>()
                .map_err(|_| ApiError::bad_request("ip: must be an IPv4 or IPv6 address"))
        })
        .transpose()?;
    let demand = keygate::Demand {
        cost: body.cost,
        client,
    };
    let v = app
        .keygate
        .verify_demand(&body.key, &body.scopes, demand)
        .await?;
    let limits = v
        .limits
        .as_ref()
        .map(|d| {
            d.limits()
                .iter()
                .map(|l| LimitDoc {
                    scope: l.scope.as_str(),
                    name: l.name.as_str().to_owned(),
                    limit: l.limit,
                    window: l.window.to_string(),
                    remaining: l.remaining,
                    reset: l.reset,
                    retry_after: l.retry_after,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Json(VerifyResponse {
        valid: v.outcome.is_valid(),
        code: OutcomeCode(v.outcome),
        detail: v.detail.into_owned(),
        key: v.key,
        limits,
        credits_remaining: v.credits,
        credits_refill_in: v.credits_refill_in,
    }))
}
