//! Operations endpoints, unauthenticated: liveness, readiness, Prometheus metrics, OpenAPI.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, header};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::error::ApiError;

/// `{"status": "..."}`
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok` or `ready`.
    pub status: &'static str,
    /// With `redis` set: `shared`, or why rate limits are counted on each node alone for now
    /// (Redis unreachable; still ready, and it recovers by itself).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<String>,
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok",
        rate_limits: None,
    })
}

/// The database answers and takes writes (a write to its health-probe row: a full disk, a
/// read-only file or a deleted SQLite file makes this 503).
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "The database does not answer or cannot write", body = super::ProblemDoc, content_type = "application/problem+json"),
    ))]
pub async fn readyz(State(app): State<AppState>) -> Result<Json<Health>, ApiError> {
    app.keygate.ping().await?;
    app.keygate.ping_write().await?;
    let rate_limits = app
        .keygate
        .shared_limits_health()
        .map(|health| health.map_or_else(|degraded| degraded, |()| "shared".to_owned()));
    Ok(Json(Health {
        status: "ready",
        rate_limits,
    }))
}

/// Who may read `/metrics` on the main listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsAccess {
    /// Anyone (the default: keep the listener private, or choose another).
    Public,
    /// A key with `keygate:read` or `keygate:admin` (`metrics_require_key`).
    Key,
    /// Nobody here: `/metrics` is served on `metrics_listen` instead.
    Elsewhere,
}

/// Prometheus text: verifications by outcome, request latency, keys by status, connections.
/// Open to anyone unless `metrics_require_key` is set (then a key with `keygate:read` or
/// `keygate:admin`) or `metrics_listen` moves it to its own listener (then 404 here).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "Prometheus text exposition format", body = String, content_type = "text/plain"),
        (status = 401, description = "With metrics_require_key: missing or invalid key", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "With metrics_require_key: needs keygate:read or keygate:admin", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "With metrics_listen: served on that listener instead", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 503, description = "The database does not answer", body = super::ProblemDoc, content_type = "application/problem+json"),
    ))]
pub async fn metrics(State(app): State<AppState>, headers: http::HeaderMap) -> Response {
    match app.metrics_access {
        MetricsAccess::Public => {}
        MetricsAccess::Key => {
            if let Err(refusal) = super::auth::admit::<super::auth::Read>(&app, &headers).await {
                return refusal;
            }
        }
        MetricsAccess::Elsewhere => return super::no_such_endpoint().into_response(),
    }
    metrics_text(&app).await.into_response()
}

/// The Prometheus text of `app`, for `/metrics` here or on `metrics_listen`.
pub async fn metrics_text(app: &AppState) -> Result<Response, ApiError> {
    let counts = app.keygate.count_by_status().await?;
    let mut text = app.metrics.render(&app.keygate, &counts);
    app.connections.render("keygate", &mut text);
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3.1 document", body = Object)))]
pub async fn openapi(State(app): State<AppState>) -> Response {
    let mut response = app.openapi.as_str().to_owned().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
