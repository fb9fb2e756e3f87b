//! `GET /v1/audit`: the append-only audit trail, oldest first.

use axum::Json;
use axum::extract::State;
use keygate::AuditQuery;
use keygate::core::{AuditEvent, EventKind, KeyId, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::auth::{Caller, Read};
use super::error::{ApiError, ApiQuery, page_limit};

/// `GET /v1/audit` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Only events about this key.
    pub key_id: Option<String>,
    /// Only events of this type: `key.created`, `key.updated`, `key.rotated`, `key.revoked`.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub kind: Option<String>,
    /// Only events at or after this time (RFC 3339).
    pub since: Option<String>,
    /// Page size, 1–1000 (default 50).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// One audit event, as documented.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEventDoc {
    /// Position in the trail (increasing).
    pub seq: i64,
    /// When (RFC 3339).
    #[schema(format = DateTime)]
    pub at: String,
    /// `key.created`, `key.updated`, `key.rotated` or `key.revoked`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `admin:<key id>`, `cli`, `server`, `scheduler`, `self:<key id>` or `library`.
    pub actor: String,
    /// The key concerned.
    pub key_id: Option<String>,
    /// The request that made the change, when it came over HTTP.
    pub request_id: Option<String>,
    /// What changed: a new key's fields, or `{"field": {"from": .., "to": ..}}`. Never a secret.
    #[schema(value_type = Object)]
    pub details: Map<String, Value>,
}

/// One page of the audit trail.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPageDoc {
    /// The events, oldest first.
    #[schema(value_type = Vec<AuditEventDoc>)]
    pub items: Vec<AuditEvent>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// Read the audit trail.
#[utoipa::path(
    get, path = "/v1/audit", tag = "audit",
    params(AuditParams),
    responses(
        (status = 200, description = "A page of events, oldest first", body = AuditPageDoc),
        (status = 400, description = "Invalid parameter", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid admin key", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Needs keygate:read or keygate:admin", body = super::ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn list_audit(
    State(app): State<AppState>,
    _caller: Caller<Read>,
    ApiQuery(params): ApiQuery<AuditParams>,
) -> Result<Json<AuditPageDoc>, ApiError> {
    let mut query = AuditQuery {
        key_id: params
            .key_id
            .map(|id| {
                KeyId::parse(&id).ok_or_else(|| ApiError::bad_request("key_id: not a key id"))
            })
            .transpose()?,
        kind: params
            .kind
            .map(|k| {
                EventKind::parse(&k).ok_or_else(|| {
                    ApiError::bad_request(
                        "type: expected key.created, key.updated, key.rotated or key.revoked",
                    )
                })
            })
            .transpose()?,
        since: params
            .since
            .map(|t| {
                Timestamp::parse_rfc3339(&t)
                    .map_err(|e| ApiError::bad_request(format!("since: {e}")))
            })
            .transpose()?,
        cursor: params.cursor,
        ..AuditQuery::default()
    };
    if let Some(limit) = params.limit {
        query.limit = page_limit(limit)?;
    }
    let page = app.keygate.audit_trail(&query).await?;
    Ok(Json(AuditPageDoc {
        items: page.items,
        next_cursor: page.next_cursor,
    }))
}
