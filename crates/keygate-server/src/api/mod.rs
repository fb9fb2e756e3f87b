//! The HTTP API of `keygate serve`: `/v1` (keys and verify, behind keygate's own layer),
//! operations endpoints, problem+json for every error, a request id and a log line per
//! request, and the OpenAPI document generated from the same route table.

pub mod audit;
pub mod auth;
pub mod contract;
pub mod emails;
pub mod error;
pub mod keys;
pub mod ops;
pub mod owners;
pub mod usage;
pub mod verify;
pub mod webhooks;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, Uri};
use std::sync::Mutex;

use keygate::core::{Actor, Audit, AuditEvent};
use keygate::{CredentialSource, Keygate, KeygateLayer, Problem, ProblemCode};
use serde::Serialize;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::metrics::Metrics;
use error::{ApiError, MAX_BODY_BYTES};

pub use crate::AppState;

/// An RFC 9457 problem, as documented.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Problem)]
pub struct ProblemDoc {
    /// `urn:keygate:problem:<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the kind of problem.
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// What went wrong this time; names the field for invalid input.
    pub detail: String,
    /// Stable machine-readable code, e.g. `BAD_REQUEST`, `MISSING`, `INSUFFICIENT_SCOPE`.
    pub code: String,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "keygate",
        description = "API-key authentication service: issue, list, change, revoke and verify API keys. \
                       Authenticate with an admin key: `Authorization: Api-Key <key>` or `Authorization: Bearer <key>`."
    ),
    modifiers(&SecuritySchemes),
    tags(
        (name = "keys", description = "Manage keys (keygate:admin; keygate:read may list and show)"),
        (name = "owners", description = "Rate limits shared by all of an owner's keys (keygate:admin; keygate:read may show)"),
        (name = "verify", description = "Check a key (keygate:verify or keygate:admin)"),
        (name = "audit", description = "The append-only audit trail (keygate:read or keygate:admin)"),
        (name = "webhooks", description = "Signed event deliveries (keygate:admin; keygate:read may list)"),
        (name = "emails", description = "The email log: notices to key owners and operators (keygate:read or keygate:admin)"),
        (name = "operations", description = "Health, readiness, metrics, this document"),
    )
)]
struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "`Api-Key <key>` with an admin key",
            ))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The layer that authenticates callers of `/v1`: an admin key, as `Api-Key` or `Bearer`.
fn admin_auth(keygate: &Keygate) -> KeygateLayer {
    keygate.layer().sources([
        CredentialSource::ApiKeyScheme,
        CredentialSource::BearerScheme,
    ])
}

/// The routes and their OpenAPI document, from one table.
fn routes(keygate: &Keygate) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let admin_auth = admin_auth(keygate);
    let v1 = OpenApiRouter::new()
        .routes(routes!(keys::create_key, keys::list_keys))
        .routes(routes!(keys::get_key, keys::update_key))
        .routes(routes!(keys::revoke_key))
        .routes(routes!(keys::rotate_key))
        .routes(routes!(keys::rotate_self))
        .routes(routes!(owners::get_owner, owners::set_owner))
        .routes(routes!(keys::retire_self))
        .routes(routes!(usage::key_usage))
        .routes(routes!(usage::owner_usage))
        .routes(routes!(verify::verify))
        .routes(routes!(audit::list_audit))
        .routes(routes!(webhooks::create_webhook, webhooks::list_webhooks))
        .routes(routes!(webhooks::update_webhook, webhooks::delete_webhook))
        .routes(routes!(webhooks::list_deliveries))
        .routes(routes!(emails::list_emails))
        .layer(admin_auth);
    let ops = OpenApiRouter::new()
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
        .routes(routes!(ops::openapi));
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(v1)
        .merge(ops)
        .split_for_parts()
}

/// The OpenAPI document of the routes [`router`] serves, as JSON.
pub fn document(keygate: &Keygate) -> String {
    let (_, doc) = routes(keygate);
    let mut doc = serde_json::to_value(&doc).expect("the document is JSON");
    contract::constrain(&mut doc);
    serde_json::to_string_pretty(&doc).expect("the document is JSON")
}

/// The whole HTTP application over `state`: the API, the operations endpoints and the admin UI.
pub fn router(state: AppState) -> Application {
    let (router, _) = routes(&state.keygate);
    let tracking = Arc::new(Tracking {
        access_log: state.access_log.clone(),
        metrics: state.metrics.clone(),
        keygate: state.keygate.clone(),
        failures: Mutex::new(FailureWindow::default()),
        body_read_timeout: state.body_read_timeout,
    });
    let verify = Arc::new(VerifyRoute {
        tracking: tracking.clone(),
        admin_auth: admin_auth(&state.keygate),
        state: state.clone(),
    });
    let router = router
        .merge(crate::admin::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(from_fn_with_state(tracking, track))
        .with_state(state);
    Application { router, verify }
}

/// The HTTP application: the router, with `POST /v1/verify` — a key service's hot path —
/// answered in front of it. That route runs the same steps the router would give it, in the
/// same order, with the same functions: the request's tracking (id, body, log line,
/// metrics), the admin-key layer's check, the caller's scope, the JSON body, the handler. It
/// skips only the router's generic machinery (route lookup, a boxed future and a copy of the
/// request per layer), which cost as much as the verification itself.
#[derive(Debug, Clone)]
pub struct Application {
    router: Router,
    verify: Arc<VerifyRoute>,
}

impl Application {
    /// The router alone, without the `/v1/verify` shortcut (tests compare the two).
    pub fn router_alone(&self) -> &Router {
        &self.router
    }
}

/// What `POST /v1/verify` needs in front of the router.
#[derive(Debug)]
struct VerifyRoute {
    tracking: Arc<Tracking>,
    admin_auth: KeygateLayer,
    state: AppState,
}

/// The route [`Application`] answers itself.
const VERIFY_ROUTE: &str = "/v1/verify";

impl VerifyRoute {
    /// As the router serves the route: tracked, then [`VerifyRoute::answer`]; with its length
    /// stated, as a route's answer is.
    async fn serve(&self, request: Request) -> Response {
        let mut response = self
            .tracking
            .run(request, Some(VERIFY_ROUTE), |request| self.answer(request))
            .await;
        if let Some(length) = http_body::Body::size_hint(response.body()).exact() {
            response
                .headers_mut()
                .entry(http::header::CONTENT_LENGTH)
                .or_insert_with(|| HeaderValue::from(length));
        }
        response
    }

    /// The admin-key layer, the handler's extractors in their order, and the handler.
    async fn answer(&self, request: Request) -> Response {
        use axum::extract::FromRequest;
        let peer = request
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0);
        let admitted = match self
            .admin_auth
            .check(request.headers(), request.uri().query(), peer)
            .await
        {
            Ok(admitted) => admitted,
            Err(refusal) => return refusal,
        };
        let caller = match auth::Caller::<auth::Verify>::permit(admitted.key) {
            Ok(caller) => caller,
            Err(refusal) => return refusal.into_response(),
        };
        let body = match error::ApiJson::from_request(request, &self.state).await {
            Ok(body) => body,
            Err(refusal) => return refusal.into_response(),
        };
        let mut response = verify::verify(State(self.state.clone()), caller, body)
            .await
            .into_response();
        response.headers_mut().extend(admitted.response_headers);
        response
    }
}

impl<B> tower::Service<http::Request<B>> for Application
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response, Self::Error>> + Send + 'static>,
    >;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let request = request.map(axum::body::Body::new);
        if request.method() == http::Method::POST && request.uri().path() == VERIFY_ROUTE {
            let verify = self.verify.clone();
            Box::pin(async move { Ok(verify.serve(request).await) })
        } else {
            use tower::ServiceExt;
            Box::pin(self.router.clone().oneshot(request))
        }
    }
}

/// Receives a request's whole body before any handler runs: at most [`MAX_BODY_BYTES`] (else
/// 413) within the body read timeout (else 408, and the connection is closed). A client that
/// sends its body a byte at a time holds a connection for that long at most. `Err`: the
/// refusal to send.
async fn receive_body(request: Request, timeout: std::time::Duration) -> Result<Request, Response> {
    use http_body::Body as _;
    if request.body().is_end_stream() {
        return Ok(request);
    }
    let declared = request
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(error::too_large().into_response());
    }
    let (parts, body) = request.into_parts();
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, MAX_BODY_BYTES)).await {
        Ok(Ok(bytes)) => {
            let mut parts = parts;
            parts.extensions.insert(error::ReceivedBody(bytes.clone()));
            Ok(Request::from_parts(parts, axum::body::Body::from(bytes)))
        }
        Ok(Err(e)) if is_too_large(&e) => Err(error::too_large().into_response()),
        Ok(Err(_)) => {
            Err(ApiError::bad_request("the request body could not be read").into_response())
        }
        Err(_) => {
            let mut response = Problem::new(
                StatusCode::REQUEST_TIMEOUT,
                "REQUEST_TIMEOUT",
                "Request body too slow",
                format!(
                    "the request body must arrive within {} s",
                    timeout.as_secs_f64()
                ),
            )
            .into_response();
            response
                .headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            Err(response)
        }
    }
}

/// Whether reading a body failed because it was longer than the limit.
fn is_too_large(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// 404 for a path no route serves.
pub(crate) fn no_such_endpoint() -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "Not found",
        "no such endpoint; see /openapi.json",
    )
}

async fn not_found(State(app): State<AppState>, uri: Uri, headers: HeaderMap) -> Response {
    if let Some(refusal) = unauthenticated_v1(&app, &uri, &headers).await {
        return refusal;
    }
    no_such_endpoint().into_response()
}

async fn method_not_allowed(State(app): State<AppState>, uri: Uri, headers: HeaderMap) -> Response {
    if let Some(refusal) = unauthenticated_v1(&app, &uri, &headers).await {
        return refusal;
    }
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        "Method not allowed",
        "this endpoint does not take that method; see /openapi.json",
    )
    .into_response()
}

/// Under `/v1`, a request without a valid key is refused (401) before anything else is said
/// about it: no route or method is confirmed or denied to an unauthenticated caller.
async fn unauthenticated_v1(app: &AppState, uri: &Uri, headers: &HeaderMap) -> Option<Response> {
    let path = uri.path();
    if path != "/v1" && !path.starts_with("/v1/") {
        return None;
    }
    auth::authenticate(app, headers).await.err()
}

/// Gives each request an id (the caller's `X-Request-Id` if sane), available to handlers as
/// [`RequestId`], receives its body ([`receive_body`]; one middleware rather than two, as
/// each costs a boxed future and a clone of the stack per request), and one log line when it
/// ends — id, method, route template (never the raw path or query: they may hold a key),
/// status and latency — and its latency in the metrics.
/// One event rather than a span per request: a span's fields are formatted and stored for
/// every request, which cost more than the rest of a `/v1/verify` call.
async fn track(State(tracking): State<Arc<Tracking>>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().cloned();
    tracking
        .run(
            request,
            route.as_ref().map(MatchedPath::as_str),
            |request| next.run(request),
        )
        .await
}

/// Most `admin.auth_failed` events written per minute (per node): a flood of bad keys must
/// not flood the audit trail. The rest are counted, and the next event says how many.
const AUTH_FAILURES_PER_MINUTE: u32 = 20;

/// What the per-request middleware needs.
#[derive(Debug)]
struct Tracking {
    access_log: crate::logging::AccessLog,
    metrics: Arc<Metrics>,
    keygate: Keygate,
    failures: Mutex<FailureWindow>,
    /// Most time to receive a request's whole body.
    body_read_timeout: std::time::Duration,
}

#[derive(Debug, Default)]
struct FailureWindow {
    started: Option<keygate::core::Timestamp>,
    written: u32,
    suppressed: u64,
}

impl Tracking {
    /// What [`track`] does around `serve`, for a request to `route` (its template).
    async fn run<F, Fut>(&self, mut request: Request, route: Option<&str>, serve: F) -> Response
    where
        F: FnOnce(Request) -> Fut,
        Fut: std::future::Future<Output = Response>,
    {
        let metrics = &self.metrics;
        let started = Instant::now();
        let id = RequestId(request_id(request.headers()));
        let method = request.method().clone();
        request.extensions_mut().insert(id.clone());
        let mut response = match receive_body(request, self.body_read_timeout).await {
            Ok(request) => serve(request).await,
            Err(refusal) => refusal,
        };
        let took = started.elapsed();
        let status = response.status().as_u16();
        metrics.observe(status, took);
        self.access_log
            .record(&id.0, method.as_str(), route.unwrap_or("-"), status, took);
        if (status == 401 || status == 403)
            && route.is_some_and(|r| r.starts_with("/v1/") && r != "/v1/self/rotate")
        {
            let code = response
                .extensions()
                .get::<ProblemCode>()
                .map_or("-", |c| c.0);
            self.auth_failed(&id, method.as_str(), route.unwrap_or("-"), status, code);
        }
        if let Ok(value) = HeaderValue::from_str(&id.0) {
            response.headers_mut().insert("x-request-id", value);
        }
        response
    }

    /// Records a refused request to keygate's own API in the audit trail, rate-limited, off
    /// the request's path.
    fn auth_failed(&self, id: &RequestId, method: &str, route: &str, status: u16, code: &str) {
        let suppressed = {
            let mut window = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            let now = self.keygate.now();
            if window
                .started
                .is_none_or(|s| now.unix_ms() - s.unix_ms() >= 60_000)
            {
                window.started = Some(now);
                window.written = 0;
            }
            if window.written >= AUTH_FAILURES_PER_MINUTE {
                window.suppressed += 1;
                return;
            }
            window.written += 1;
            std::mem::take(&mut window.suppressed)
        };
        let mut details = serde_json::Map::new();
        details.insert("method".into(), method.into());
        details.insert("route".into(), route.into());
        details.insert("status".into(), status.into());
        details.insert("code".into(), code.into());
        if suppressed > 0 {
            details.insert("suppressed_before".into(), suppressed.into());
        }
        let audit = Audit::by(Actor::Anonymous).in_request(id.0.as_ref());
        let event = AuditEvent::auth_failure(&audit, self.keygate.now(), details);
        let keygate = self.keygate.clone();
        tokio::spawn(async move {
            if let Err(e) = keygate.record_event(&event).await {
                tracing::warn!(error = %e, "could not record an admin authentication failure");
            }
        });
    }
}

/// The id of the request being served, for log lines (and later the audit log).
#[derive(Debug, Clone)]
pub struct RequestId(pub Arc<str>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(|| RequestId("-".into())))
    }
}

/// The caller's `X-Request-Id` if it is a short token of safe characters, else a new one. At
/// most 36 characters (a UUID) — shorter than any API key — and never one shaped like a key:
/// a client that sends its key there must not get it logged.
fn request_id(headers: &HeaderMap) -> Arc<str> {
    let given = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            (1..=MAX_REQUEST_ID).contains(&v.len())
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                && keygate::core::parse(v).is_err()
        });
    match given {
        Some(id) => id.into(),
        None => next_request_id(),
    }
}

/// Longest `X-Request-Id` taken from a caller.
const MAX_REQUEST_ID: usize = 36;

/// A fresh id: 32 random bits chosen at start-up, then a counter — unique within and (with
/// overwhelming likelihood) across processes, without a system call per request.
fn next_request_id() -> Arc<str> {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU32, Ordering};
    static PROCESS: OnceLock<u32> = OnceLock::new();
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let process = *PROCESS.get_or_init(|| {
        let mut bytes = [0u8; 4];
        let _ = getrandom::fill(&mut bytes);
        u32::from_le_bytes(bytes)
    });
    let id = (u64::from(process) << 32) | u64::from(COUNTER.fetch_add(1, Ordering::Relaxed));
    // Hex digits are ASCII: always UTF-8.
    std::str::from_utf8(&hex16(id)).unwrap_or("-").into()
}

/// `n` as 16 lowercase hex digits (`format!("{n:016x}")` without the formatting machinery).
fn hex16(n: u64) -> [u8; 16] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    std::array::from_fn(|i| DIGITS[((n >> ((15 - i) * 4)) & 0xf) as usize])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_sixteen_hex_digits_as_format_writes_them() {
        for n in [0, 1, 0xabc, u64::from(u32::MAX), u64::MAX] {
            assert_eq!(hex16(n), format!("{n:016x}").as_bytes());
        }
        let (a, b) = (next_request_id(), next_request_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
    }
}
