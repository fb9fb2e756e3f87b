//! `/v1/owners/{owner}`: the rate limits all of an owner's keys share.

use axum::Json;
use axum::extract::{Path, State};
use keygate::core::Timestamp;
use keygate::core::limits::{OwnerLimits, RateLimits};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{Caller, Manage, Read};
use super::error::{ApiError, ApiJson};
use super::{AppState, RequestId};

/// An owner as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct OwnerView {
    /// The owner, as its keys name it.
    pub owner: String,
    /// Rate limits all of the owner's keys share (each request spends these as well as the
    /// key's own); empty: none.
    #[schema(value_type = Vec<keygate::RateLimitDoc>)]
    pub rate_limits: RateLimits,
    /// When they were last set; `null` for an owner that has none.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub updated_at: Option<Timestamp>,
}

impl OwnerView {
    fn of(owner: String, limits: Option<OwnerLimits>) -> Self {
        match limits {
            Some(l) => Self {
                owner,
                rate_limits: l.rate_limits,
                updated_at: Some(l.updated_at),
            },
            None => Self {
                owner,
                rate_limits: RateLimits::default(),
                updated_at: None,
            },
        }
    }
}

/// `PUT /v1/owners/{owner}` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetOwner {
    /// The shared rate limits (replaces them; `[]` removes them).
    #[schema(value_type = Vec<keygate::RateLimitDoc>)]
    pub rate_limits: RateLimits,
}

/// Show an owner's shared rate limits (an owner nobody set limits for has none).
#[utoipa::path(
    get, path = "/v1/owners/{owner}", tag = "owners",
    params(("owner" = String, Path, description = "The owner, as keys name it")),
    responses(
        (status = 200, description = "The owner", body = OwnerView),
        (status = 400, description = "Not an owner id", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid admin key", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Needs keygate:read or keygate:admin", body = super::ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn get_owner(
    State(app): State<AppState>,
    _caller: Caller<Read>,
    Path(owner): Path<String>,
) -> Result<Json<OwnerView>, ApiError> {
    let owner = checked(owner)?;
    let limits = app.keygate.owner(&owner).await?;
    Ok(Json(OwnerView::of(owner, limits)))
}

/// Set the rate limits all of an owner's keys share; they apply at once on every node.
#[utoipa::path(
    put, path = "/v1/owners/{owner}", tag = "owners",
    params(("owner" = String, Path, description = "The owner, as keys name it")),
    request_body = SetOwner,
    responses(
        (status = 200, description = "The owner", body = OwnerView),
        (status = 400, description = "Invalid field", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid admin key", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Needs keygate:admin", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 413, description = "Body over 64 KiB", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = super::ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn set_owner(
    State(app): State<AppState>,
    caller: Caller<Manage>,
    request_id: RequestId,
    Path(owner): Path<String>,
    ApiJson(body): ApiJson<SetOwner>,
) -> Result<Json<OwnerView>, ApiError> {
    let owner = checked(owner)?;
    let set = app
        .keygate
        .set_owner_limits(&owner, &body.rate_limits, &caller.audit(&request_id))
        .await?;
    tracing::info!(actor = %caller.0.id(), owner = %owner, request_id = %request_id.0, "owner limits set over the API");
    let shown = (!set.rate_limits.is_empty()).then_some(set);
    Ok(Json(OwnerView::of(owner, shown)))
}

/// The owner of a path, checked as a key's owner is.
fn checked(owner: String) -> Result<String, ApiError> {
    keygate::core::record::check_owner(owner)
        .map_err(|e| ApiError::bad_request(format!("owner: {e}")))
}
