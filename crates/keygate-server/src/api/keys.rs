//! `/v1/keys`: issue, list, show, change and revoke keys. Each handler is a call on
//! [`Keygate`](keygate::Keygate) between a checked request and a JSON view.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use keygate::ListQuery;
use keygate::core::limits::{IpAllowlist, Quota, RateLimits, Refill};
use keygate::core::scope::SELF_ROTATE;
use keygate::core::{
    Actor, Audit, DEFAULT_GRACE, Expiry, KeyId, KeyPatch, KeySpec, Lifetime, Status, Timestamp,
    parse_grace,
};
use keygate::{ApiKey, CreatedKey, KeyView};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use super::auth::{Caller, Manage, Read};
use super::error::{ApiError, ApiJson, ApiQuery, OptionalApiJson, page_limit};
use super::{AppState, RequestId};

/// `POST /v1/keys` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// Human name, 1–200 characters.
    pub name: String,
    /// Owner id (your user, team or customer id), 1–200 characters.
    #[serde(default)]
    pub owner: Option<String>,
    /// Scopes, e.g. `orders:read`, `orders:*`.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// A JSON object of at most 16 KiB.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
    /// Expiry time, RFC 3339. Not with `expires_in`.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Timestamp>,
    /// Lifetime such as `90d`, `12h`, `30m`, `2w`. Not with `expires_at`.
    #[serde(default)]
    #[schema(example = "90d")]
    pub expires_in: Option<String>,
    /// This key's own maximum age (e.g. `30d`), overriding the deployment's policy.
    #[serde(default)]
    #[schema(example = "30d")]
    pub max_age: Option<String>,
    /// Rate limits; a request must fit every one (429 `RATE_LIMITED` otherwise).
    #[serde(default)]
    #[schema(value_type = Vec<keygate::RateLimitDoc>)]
    pub rate_limits: RateLimits,
    /// Credits: each request spends its cost; at 0, 429 `USAGE_EXCEEDED` until a refill (with
    /// `Retry-After`: the seconds until the refill is due, when the quota has one).
    #[serde(default)]
    pub quota: Option<QuotaInput>,
    /// Networks (CIDR, or single addresses) the key may be used from; absent: anywhere.
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>, example = json!(["203.0.113.0/24", "2001:db8::/32"]))]
    pub allowed_ips: Option<IpAllowlist>,
}

/// A key's credits as set through the API.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaInput {
    /// The balance to start from.
    #[serde(deserialize_with = "keygate::core::limits::whole::u64")]
    pub remaining: u64,
    /// How the balance is refilled, if it is.
    #[serde(default)]
    #[schema(value_type = Option<keygate::RefillDoc>)]
    pub refill: Option<Refill>,
}

impl QuotaInput {
    fn at(self, now: Timestamp) -> Result<Quota, ApiError> {
        Quota::new(self.remaining, self.refill, now)
            .map_err(|e| ApiError::bad_request(format!("quota: {e}")))
    }
}

/// `PATCH /v1/keys/{id}` body: only the fields present change; `null` clears `owner` and
/// `expires_at`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateKey {
    /// New name.
    #[serde(default)]
    pub name: Option<String>,
    /// New owner, or `null` to clear.
    #[serde(default, deserialize_with = "present")]
    pub owner: Option<Option<String>>,
    /// New scopes (replaces the list).
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// New metadata (replaces the object).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
    /// New expiry, or `null` for none.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Option<Timestamp>>,
    /// Enable or disable. A revoked key cannot be enabled (409).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// New rate limits (replaces the list; `[]` removes them).
    #[serde(default)]
    #[schema(value_type = Option<Vec<keygate::RateLimitDoc>>)]
    pub rate_limits: Option<RateLimits>,
    /// New credits (balance and refill), or `null` to remove the quota.
    #[serde(default, deserialize_with = "present")]
    pub quota: Option<Option<QuotaInput>>,
    /// New allowlist, or `null` to allow any address.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<String>>)]
    pub allowed_ips: Option<Option<IpAllowlist>>,
    /// Its own maximum age (e.g. `30d`), or `null` to follow the deployment's policy.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub max_age: Option<Option<String>>,
}

/// `Some(value)` for a field that is present, even as `null`; absent fields stay `None`.
fn present<'de, T: Deserialize<'de>, D: Deserializer<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// `POST /v1/keys/{id}/rotate` body (optional).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    /// How long the old key keeps working: `0` (not at all) or a lifetime such as `24h`.
    /// Default: one day.
    #[serde(default)]
    #[schema(example = "24h")]
    pub grace_period: Option<String>,
    /// End the grace period early once the successor has been used and the old key has been
    /// unused this long: minutes or longer (at least `1m`), e.g. `1h`. Default: the server's
    /// `retire_when_switched` policy, if set.
    #[serde(default)]
    #[schema(example = "1h")]
    pub retire_when_switched: Option<String>,
}

/// `POST /v1/keys/{id}/revoke` body (optional).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeKey {
    /// Why, kept in the record (at most 500 characters).
    #[serde(default)]
    pub reason: Option<String>,
}

/// `GET /v1/keys` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only keys of this owner.
    pub owner: Option<String>,
    /// `active`, `disabled`, `expired`, `revoked` or `all` (default).
    pub status: Option<String>,
    /// Only keys whose name contains this text (ASCII case-insensitive).
    pub q: Option<String>,
    /// Page size, 1–1000 (default 50).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// One page of keys, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyPage {
    /// The keys.
    pub items: Vec<KeyView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

fn parse_max_age(text: &str) -> Result<Lifetime, ApiError> {
    Lifetime::parse(text).map_err(|e| ApiError::bad_request(format!("max_age: {e}")))
}

fn key_id(raw: &str) -> Result<KeyId, ApiError> {
    KeyId::parse(raw).ok_or_else(ApiError::no_such_key)
}

/// Issue a key.
#[utoipa::path(
    post, path = "/v1/keys", tag = "keys",
    request_body = CreateKey,
    responses(
        (status = 201, description = "Issued; `key` is shown only here", body = CreatedKey,
         headers(("location" = String, description = "/v1/keys/{id}"))),
        (status = 400, description = "Invalid field", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid admin key", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Needs keygate:admin", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 413, description = "Body over 64 KiB", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = super::ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn create_key(
    State(app): State<AppState>,
    caller: Caller<Manage>,
    request_id: RequestId,
    ApiJson(body): ApiJson<CreateKey>,
) -> Result<Response, ApiError> {
    let expires = match (body.expires_at, body.expires_in) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "expires_at, expires_in: give one or the other, not both",
            ));
        }
        (Some(at), None) => Some(Expiry::At(at)),
        (None, Some(text)) => {
            Some(Expiry::In(Lifetime::parse(&text).map_err(|e| {
                ApiError::bad_request(format!("expires_in: {e}"))
            })?))
        }
        (None, None) => None,
    };
    let spec = KeySpec {
        name: body.name,
        owner: body.owner,
        scopes: body.scopes,
        metadata: body.metadata.unwrap_or_default(),
        expires,
        max_age: body.max_age.as_deref().map(parse_max_age).transpose()?,
        rate_limits: body.rate_limits,
        quota: body.quota.map(|q| q.at(app.keygate.now())).transpose()?,
        allowed_ips: body.allowed_ips,
    };
    let (record, key) = app.keygate.issue(spec, &caller.audit(&request_id)).await?;
    tracing::info!(actor = %caller.0.id(), key_id = %record.id, request_id = %request_id.0, "key issued over the API");
    let location = format!("/v1/keys/{}", record.id);
    let created = CreatedKey {
        key: key.expose().to_owned(),
        view: KeyView::of(record, app.keygate.now()),
    };
    let mut response = (StatusCode::CREATED, Json(created)).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

/// List keys, newest first, one page at a time.
#[utoipa::path(
    get, path = "/v1/keys", tag = "keys",
    params(ListParams),
    responses(
        (status = 200, description = "A page of keys", body = KeyPage),
        (status = 400, description = "Invalid parameter", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid admin key", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Needs keygate:read or keygate:admin", body = super::ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn list_keys(
    State(app): State<AppState>,
    _caller: Caller<Read>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<KeyPage>, ApiError> {
    let mut query = ListQuery::new(app.keygate.now());
    query.status = match params.status.as_deref() {
        None | Some("all") => None,
        Some(text) => Some(Status::parse(text).ok_or_else(|| {
            ApiError::bad_request("status: expected active, disabled, expired, revoked or all")
        })?),
    };
    if let Some(limit) = params.limit {
        query.limit = page_limit(limit)?;
    }
    query.owner = params
        .owner
        .map(|owner| {
            keygate::core::record::check_owner(owner)
                .map_err(|e| ApiError::from(keygate::Error::from(e)))
        })
        .transpose()?;
    query.name_contains = params.q;
    query.cursor = params.cursor;
    let page = app.keygate.list(query).await?;
    let now = app.keygate.now();
    Ok(Json(KeyPage {
        items: page
            .items
            .into_iter()
            .map(|r| KeyView::of(r, now))
            .collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Show one key.
#[utoipa::path(
    get, path = "/v1/keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "Key id")),
    responses(
        (status = 200, description = "The key", body = KeyView),
        (status = 401, description = "Missing or invalid admin key", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Needs keygate:read or keygate:admin", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such key", body = super::ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn get_key(
    State(app): State<AppState>,
    _caller: Caller<Read>,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    let id = key_id(&id)?;
    let record = app
        .keygate
        .get(&id)
        .await?
        .ok_or_else(ApiError::no_such_key)?;
    Ok(Json(app.keygate.view(record).await?))
}

/// Change a key's name, owner, scopes, metadata, expiry or enabled flag.
#[utoipa::path(
    patch, path = "/v1/keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "Key id")),
    request_body = UpdateKey,
    responses(
        (status = 200, description = "The updated key", body = KeyView),
        (status = 400, description = "Invalid field", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid admin key", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Needs keygate:admin", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such key", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "Enabling a revoked key", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 413, description = "Body over 64 KiB", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = super::ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn update_key(
    State(app): State<AppState>,
    caller: Caller<Manage>,
    request_id: RequestId,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateKey>,
) -> Result<Json<KeyView>, ApiError> {
    let id = key_id(&id)?;
    let patch = KeyPatch {
        name: body.name,
        owner: body.owner,
        scopes: body.scopes,
        metadata: body.metadata,
        expires_at: body.expires_at,
        enabled: body.enabled,
        max_age: body
            .max_age
            .map(|m| m.as_deref().map(parse_max_age).transpose())
            .transpose()?,
        rate_limits: body.rate_limits,
        quota: body
            .quota
            .map(|q| q.map(|q| q.at(app.keygate.now())).transpose())
            .transpose()?,
        allowed_ips: body.allowed_ips,
    };
    let record = app
        .keygate
        .update(&id, patch, &caller.audit(&request_id))
        .await?;
    tracing::info!(actor = %caller.0.id(), key_id = %record.id, request_id = %request_id.0, "key updated over the API");
    Ok(Json(KeyView::of(record, app.keygate.now())))
}

/// Revoke a key, for good.
#[utoipa::path(
    post, path = "/v1/keys/{id}/revoke", tag = "keys",
    params(("id" = String, Path, description = "Key id")),
    request_body(content = Option<RevokeKey>, description = "Optional reason"),
    responses(
        (status = 200, description = "The revoked key", body = KeyView),
        (status = 400, description = "Invalid field", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid admin key", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Needs keygate:admin", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such key", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "Already revoked", body = super::ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn revoke_key(
    State(app): State<AppState>,
    caller: Caller<Manage>,
    request_id: RequestId,
    Path(id): Path<String>,
    OptionalApiJson(body): OptionalApiJson<RevokeKey>,
) -> Result<Json<KeyView>, ApiError> {
    let id = key_id(&id)?;
    let reason = body.and_then(|b| b.reason);
    let record = app
        .keygate
        .revoke(&id, reason, &caller.audit(&request_id))
        .await?;
    tracing::info!(actor = %caller.0.id(), key_id = %record.id, request_id = %request_id.0, "key revoked over the API");
    Ok(Json(KeyView::of(record, app.keygate.now())))
}

/// Rotate a key: issue its successor (same name, owner, scopes, metadata and lifetime) and let
/// the old key work for a grace period, during which responses to it carry `Sunset` and
/// `Deprecation` headers; then it verifies `EXPIRED`.
#[utoipa::path(
    post, path = "/v1/keys/{id}/rotate", tag = "keys",
    params(("id" = String, Path, description = "Key id")),
    request_body(content = Option<RotateKey>, description = "Optional grace period (default one day)"),
    responses(
        (status = 201, description = "The successor; `key` is shown only here", body = CreatedKey,
         headers(("location" = String, description = "/v1/keys/{successor id}"))),
        (status = 400, description = "Invalid field", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid admin key", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Needs keygate:admin", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such key", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "Revoked, or rotated already", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = super::ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn rotate_key(
    State(app): State<AppState>,
    caller: Caller<Manage>,
    request_id: RequestId,
    Path(id): Path<String>,
    OptionalApiJson(body): OptionalApiJson<RotateKey>,
) -> Result<Response, ApiError> {
    let id = key_id(&id)?;
    rotation(&app, &id, body, &caller.audit(&request_id)).await
}

/// Rotates `id` with the grace period of `body` (default 24h) and answers 201 with the
/// successor, its key and its location.
async fn rotation(
    app: &AppState,
    id: &KeyId,
    body: Option<RotateKey>,
    audit: &Audit,
) -> Result<Response, ApiError> {
    let (grace, retire) = body.map_or((None, None), |b| (b.grace_period, b.retire_when_switched));
    let retire = retire
        .map(|text| keygate::core::switch::parse_quiet(&text))
        .transpose()
        .map_err(keygate::Error::from)?;
    let grace_ms = match grace {
        None => DEFAULT_GRACE.as_ms(),
        Some(text) => parse_grace(&text).map_err(|e| {
            ApiError::bad_request(format!(
                "grace_period: expected 0 or a duration such as 24h; {e}"
            ))
        })?,
    };
    let (old, new, key) = app
        .keygate
        .rotate_retiring(id, grace_ms, retire, audit)
        .await?;
    tracing::info!(actor = %audit.actor, key_id = %old.id, successor = %new.id, request_id = audit.request_id.as_deref().unwrap_or("-"), "key rotated over the API");
    let location = format!("/v1/keys/{}", new.id);
    let created = CreatedKey {
        key: key.expose().to_owned(),
        view: KeyView::of(new, app.keygate.now()),
    };
    let mut response = (StatusCode::CREATED, Json(created)).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

/// Rotate the key that authenticates this request (it must hold `keygate:self-rotate`): the
/// holder's own job can replace its credentials with no admin in the loop. Same rules as an
/// admin rotation; audited with the actor `self:<key id>`.
#[utoipa::path(
    post, path = "/v1/self/rotate", tag = "keys",
    request_body(content = Option<RotateKey>, description = "Optional grace period (default one day)"),
    responses(
        (status = 201, description = "The successor; `key` is shown only here", body = CreatedKey,
         headers(("location" = String, description = "/v1/keys/{successor id}"))),
        (status = 400, description = "Invalid field", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid key", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks keygate:self-rotate", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "Rotated already", body = super::ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn rotate_self(
    State(app): State<AppState>,
    key: ApiKey,
    request_id: RequestId,
    OptionalApiJson(body): OptionalApiJson<RotateKey>,
) -> Result<Response, ApiError> {
    key.require(SELF_ROTATE)?;
    let audit = Audit::by(Actor::SelfService(key.id().clone())).in_request(request_id.0.as_ref());
    rotation(&app, key.id(), body, &audit).await
}

/// End the grace period of the key this one replaced, now: the holder has switched to this
/// key (it must hold `keygate:self-rotate`, as the key it replaced did). Audited as
/// `key.retired` with the actor `self:<key id>`. Answers the old key, now expired.
#[utoipa::path(
    post, path = "/v1/self/retire", tag = "keys",
    responses(
        (status = 200, description = "The old key, its grace period ended", body = KeyView),
        (status = 401, description = "Missing or invalid key", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks keygate:self-rotate", body = super::ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "The key has no predecessor in its grace period", body = super::ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn retire_self(
    State(app): State<AppState>,
    key: ApiKey,
    request_id: RequestId,
) -> Result<Json<KeyView>, ApiError> {
    key.require(SELF_ROTATE)?;
    let audit = Audit::by(Actor::SelfService(key.id().clone())).in_request(request_id.0.as_ref());
    let old = app.keygate.retire_predecessor(key.id(), &audit).await?;
    tracing::info!(key_id = %old.id, successor = %key.id(), "old key retired by its successor");
    Ok(Json(KeyView::of(old, app.keygate.now())))
}
