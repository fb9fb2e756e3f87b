//! `/v1/webhooks`: endpoints that receive key events, signed, and their delivery logs.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use keygate::core::scope::AdminAction;
use keygate::core::webhook::{Delivery, Endpoint};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{Caller, Manage, Read};
use super::error::{ApiError, ApiJson};
use super::{AppState, RequestId};

/// `POST /v1/webhooks` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// Where deliveries are POSTed (https://, or http:// for local receivers).
    pub url: String,
    /// Event types to receive, e.g. `key.rotated`; `*` or absent for all.
    #[serde(default)]
    pub events: Vec<String>,
    /// Send `{"text": ...}` (Slack incoming webhooks) instead of the event object.
    #[serde(default)]
    pub slack: bool,
    /// Also receive the new keys the rotation policy issues (a vault you trust).
    #[serde(default)]
    pub receives_secrets: bool,
}

/// `PATCH /v1/webhooks/{id}` body: each field given replaces the stored one.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhook {
    /// Where deliveries are POSTed from now on (checked as on creation).
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false)]
    pub url: Option<String>,
    /// Event types to receive from now on (at least one; `*` for all).
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false)]
    pub events: Option<Vec<String>>,
    /// `false`: no new deliveries, pending ones wait; `true`: deliveries resume.
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false)]
    pub enabled: Option<bool>,
}

/// A field that may be left out but not given as `null` (the document says so).
fn not_null<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// A deleted endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeletedWebhook {
    /// The endpoint that was deleted.
    pub id: String,
    /// How many of its deliveries were still pending and were dropped with it (recorded in
    /// its `webhook.deleted` event).
    pub dropped_deliveries: u64,
}

/// An endpoint, as listed (never its secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookDoc {
    /// `whk_` + ULID.
    pub id: String,
    /// Where deliveries go.
    pub url: String,
    /// Event types it receives.
    pub events: Vec<String>,
    /// Slack-compatible payloads.
    pub slack: bool,
    /// Whether it receives anything.
    pub enabled: bool,
    /// Whether it receives the new keys the rotation policy issues.
    pub receives_secrets: bool,
    /// When it was added.
    #[schema(format = DateTime)]
    pub created_at: String,
}

/// A new endpoint and, this once, its signing secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedWebhook {
    /// The Standard Webhooks signing secret (`whsec_...`): verify `webhook-signature` with it.
    pub secret: String,
    /// The endpoint.
    #[serde(flatten)]
    #[schema(inline, value_type = WebhookDoc)]
    pub endpoint: Endpoint,
}

/// Endpoints.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookList {
    /// Every endpoint.
    #[schema(value_type = Vec<WebhookDoc>)]
    pub items: Vec<Endpoint>,
}

/// One delivery attempt record.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryDoc {
    /// Outbox position (the `webhook-id` is `msg_<id>`).
    pub id: i64,
    /// The endpoint.
    pub endpoint_id: String,
    /// The audit event carried.
    pub event_seq: i64,
    /// The JSON body sent.
    pub payload: String,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    /// Attempts made.
    pub attempts: u32,
    /// When the next attempt is due.
    #[schema(format = DateTime)]
    pub next_attempt_at: String,
    /// The receiver's last HTTP status.
    pub last_status: Option<u16>,
    /// The last error.
    pub last_error: Option<String>,
    /// When it was delivered.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub delivered_at: Option<String>,
}

/// An endpoint's delivery log.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryList {
    /// The latest deliveries, newest first.
    #[schema(value_type = Vec<DeliveryDoc>)]
    pub items: Vec<Delivery>,
}

/// Add a webhook endpoint.
#[utoipa::path(
    post, path = "/v1/webhooks", tag = "webhooks",
    request_body = CreateWebhook,
    responses(
        (status = 201, description = "Added; `secret` is shown only here", body = CreatedWebhook),
        (status = 400, description = "Invalid field", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid admin key", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Needs keygate:admin", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = super::ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn create_webhook(
    State(app): State<AppState>,
    caller: Caller<Manage>,
    request_id: RequestId,
    ApiJson(body): ApiJson<CreateWebhook>,
) -> Result<Response, ApiError> {
    let endpoint = app
        .keygate
        .add_webhook(
            &body.url,
            body.events,
            body.slack,
            body.receives_secrets,
            &caller.audit(&request_id),
        )
        .await?;
    let created = CreatedWebhook {
        secret: endpoint.secret.clone(),
        endpoint,
    };
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

fn no_such_webhook(e: keygate::Error) -> ApiError {
    match e {
        keygate::Error::NotFound => ApiError(keygate::Problem::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "No such webhook",
            "no webhook endpoint with that id",
        )),
        e => e.into(),
    }
}

/// Change a webhook endpoint: its URL, its event types, or whether it is enabled. A disabled
/// endpoint gets no new deliveries; its pending ones wait until it is enabled again. Audited
/// as `webhook.updated`, or `webhook.disabled` / `webhook.enabled`.
#[utoipa::path(
    patch, path = "/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "Endpoint id")),
    request_body = UpdateWebhook,
    responses(
        (status = 200, description = "The endpoint as it now is", body = WebhookDoc),
        (status = 400, description = "Invalid field, or nothing to change", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid admin key", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Needs keygate:admin", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = super::ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn update_webhook(
    State(app): State<AppState>,
    caller: Caller<Manage>,
    request_id: RequestId,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateWebhook>,
) -> Result<Response, ApiError> {
    let endpoint = app
        .keygate
        .update_webhook(
            &id,
            body.url.as_deref(),
            body.events,
            body.enabled,
            &caller.audit(&request_id),
        )
        .await
        .map_err(no_such_webhook)?;
    Ok((StatusCode::OK, Json(endpoint)).into_response())
}

/// Delete a webhook endpoint with its delivery log. Deliveries still pending are dropped:
/// how many is answered and recorded in its `webhook.deleted` event.
#[utoipa::path(
    delete, path = "/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "Endpoint id")),
    responses(
        (status = 200, description = "Deleted", body = DeletedWebhook),
        (status = 401, description = "Missing or invalid admin key", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Needs keygate:admin", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint", body = super::ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn delete_webhook(
    State(app): State<AppState>,
    caller: Caller<Manage>,
    request_id: RequestId,
    Path(id): Path<String>,
) -> Result<Json<DeletedWebhook>, ApiError> {
    let (endpoint, dropped) = app
        .keygate
        .delete_webhook(&id, &caller.audit(&request_id))
        .await
        .map_err(no_such_webhook)?;
    Ok(Json(DeletedWebhook {
        id: endpoint.id,
        dropped_deliveries: dropped,
    }))
}

/// List webhook endpoints. To a caller with only `keygate:read`, a Slack endpoint's URL (a
/// secret: whoever holds it can post) shows only its scheme and host.
#[utoipa::path(
    get, path = "/v1/webhooks", tag = "webhooks",
    responses(
        (status = 200, description = "Every endpoint", body = WebhookList),
        (status = 401, description = "Missing or invalid admin key", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Needs keygate:read or keygate:admin", body = super::ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn list_webhooks(
    State(app): State<AppState>,
    caller: Caller<Read>,
) -> Result<Json<WebhookList>, ApiError> {
    let may_manage = AdminAction::Manage.permitted(caller.0.scopes());
    let items = app
        .keygate
        .webhooks()
        .await?
        .into_iter()
        .map(|e| Endpoint {
            url: e.shown_url(may_manage),
            ..e
        })
        .collect();
    Ok(Json(WebhookList { items }))
}

/// An endpoint's delivery log (latest 100).
#[utoipa::path(
    get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = String, Path, description = "Endpoint id")),
    responses(
        (status = 200, description = "Latest deliveries, newest first", body = DeliveryList),
        (status = 401, description = "Missing or invalid admin key", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Needs keygate:read or keygate:admin", body = super::ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn list_deliveries(
    State(app): State<AppState>,
    _caller: Caller<Read>,
    Path(id): Path<String>,
) -> Result<Json<DeliveryList>, ApiError> {
    Ok(Json(DeliveryList {
        items: app.keygate.webhook_deliveries(&id, 100).await?,
    }))
}
