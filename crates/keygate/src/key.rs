//! How a key looks from outside: [`ApiKey`], the verified caller a handler sees, and
//! [`KeyView`], a stored key as shown by the API, the CLI and the UI — each with its JSON
//! written once here (and, with the `openapi` feature, its schema derived from that JSON).

use std::sync::Arc;

use keygate_core::limits::{IpAllowlist, Quota, RateLimits, Refill};
use keygate_core::scope::first_missing;
use keygate_core::switch::SwitchOver;
use keygate_core::{KeyGrant, KeyId, KeyRecord, Lifetime, Outcome, Status, Timestamp, lacks_scope};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::problem::Problem;

/// The verified caller, as handlers see it: who holds the key and what it may do. Never the
/// secret or its hash. Cheap to clone: it shares the grant the verifier (or its cache) holds.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(Arc<KeyGrant>);

impl ApiKey {
    /// Public key id.
    pub fn id(&self) -> &KeyId {
        &self.0.id
    }

    /// Whether `self` and `other` are the same verified record: not merely the same key id
    /// (a key reloaded after a change is a new record), so anything derived from one holds for
    /// the other.
    pub fn same_record(&self, other: &ApiKey) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Key name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Owner id, if the key has one.
    pub fn owner(&self) -> Option<&str> {
        self.0.owner.as_deref()
    }

    /// Scopes the key holds.
    pub fn scopes(&self) -> &[String] {
        &self.0.scopes
    }

    /// The key's metadata object.
    pub fn metadata(&self) -> &Map<String, Value> {
        self.0.metadata()
    }

    /// When the key expires, if ever.
    pub fn expires_at(&self) -> Option<Timestamp> {
        self.0.expires_at
    }

    /// `Some((rotated_at, expires_at))` while the key is in the grace period of a rotation, so
    /// that clients can be told to switch (`Sunset`, `Deprecation`).
    pub fn sunset(&self) -> Option<(Timestamp, Timestamp)> {
        self.0.sunset()
    }

    /// The id of the key that replaces this one, if it was rotated.
    pub fn successor(&self) -> Option<&KeyId> {
        self.0.rotated_to()
    }

    /// Whether the key holds a scope granting `scope` (`orders:*` grants `orders:read`).
    pub fn has_scope(&self, scope: &str) -> bool {
        first_missing(&self.0.scopes, &[scope]).is_none()
    }

    /// Refuses with 403 `INSUFFICIENT_SCOPE` unless the key grants `scope`: for checks that
    /// depend on the request (`key.require("orders:write")?` in a handler).
    pub fn require(&self, scope: &str) -> Result<(), Problem> {
        if self.has_scope(scope) {
            Ok(())
        } else {
            Err(Problem::from_outcome(
                Outcome::InsufficientScope,
                lacks_scope(scope),
            ))
        }
    }
}

impl From<Arc<KeyGrant>> for ApiKey {
    fn from(grant: Arc<KeyGrant>) -> Self {
        Self(grant)
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey")
            .field("id", &self.0.id)
            .field("name", &self.0.name)
            .field("owner", &self.0.owner)
            .field("scopes", &self.0.scopes)
            .finish_non_exhaustive()
    }
}

/// [`ApiKey`]'s JSON (and, with the `openapi` feature, its schema): what a verified key tells
/// the service that asked.
#[derive(Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = ApiKey))]
struct ApiKeyJson<'a> {
    /// Public id.
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "key_01JDZ8Q3K5V6W7X8Y9Z0ABCDEF"))]
    id: &'a KeyId,
    /// Name.
    name: &'a str,
    /// Owner id.
    owner: Option<&'a str>,
    /// Scopes it holds.
    scopes: &'a [String],
    /// Its metadata.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    metadata: &'a Map<String, Value>,
    /// When it expires, if ever.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    expires_at: Option<Timestamp>,
    /// Set while the key is in the grace period of a rotation: the successor's id. The holder
    /// should switch before `expires_at`.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    rotated_to: Option<&'a KeyId>,
}

impl Serialize for ApiKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let g = &self.0;
        ApiKeyJson {
            id: &g.id,
            name: &g.name,
            owner: g.owner.as_deref(),
            scopes: &g.scopes,
            metadata: g.metadata(),
            expires_at: g.expires_at,
            rotated_to: g.rotated_to(),
        }
        .serialize(s)
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for ApiKey {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        <ApiKeyJson<'static> as utoipa::PartialSchema>::schema()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for ApiKey {
    fn name() -> std::borrow::Cow<'static, str> {
        "ApiKey".into()
    }
}

/// A stored key as shown to people and programs that manage keys: everything but the secret
/// and its hash, with its status at the time of showing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyView {
    /// Public id, `key_` + ULID.
    #[cfg_attr(feature = "openapi", schema(value_type = String, pattern = "^key_[0-7][0-9A-HJKMNP-TV-Z]{25}$", example = "key_01JDZ8Q3K5V6W7X8Y9Z0ABCDEF"))]
    pub id: KeyId,
    /// Display form: prefix and the first four secret characters.
    #[cfg_attr(feature = "openapi", schema(example = "kg_4fT0"))]
    pub start: String,
    /// Human name.
    pub name: String,
    /// Owner id.
    pub owner: Option<String>,
    /// Scopes the key holds.
    pub scopes: Vec<String>,
    /// Free-form JSON object.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub metadata: Map<String, Value>,
    /// `active`, `disabled`, `expired` or `revoked`, now.
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "active"))]
    pub status: Status,
    /// Whether the key is enabled (a disabled key is refused until enabled again).
    pub enabled: bool,
    /// When it was issued (RFC 3339).
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: Timestamp,
    /// When it expires, if ever.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub expires_at: Option<Timestamp>,
    /// When it was revoked, if it was.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub revoked_at: Option<Timestamp>,
    /// Why it was revoked.
    pub revoked_reason: Option<String>,
    /// Last successful verification (written in batches, so it may lag a few seconds).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub last_used_at: Option<Timestamp>,
    /// The key this one replaced, if it came from a rotation.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub rotated_from: Option<KeyId>,
    /// The key that replaced this one, if it was rotated.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub rotated_to: Option<KeyId>,
    /// When it was rotated; it works until `expires_at`.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub rotated_at: Option<Timestamp>,
    /// Its own maximum age (e.g. `30d`), overriding the deployment's policy.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, example = "30d"))]
    pub max_age: Option<Lifetime>,
    /// Rate limits; a request must fit every one.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<RateLimitDoc>))]
    pub rate_limits: RateLimits,
    /// Its credits, if it has a quota.
    pub quota: Option<CreditsView>,
    /// During a rotation's grace period: the key (its successor) whose credits this one spends.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub quota_holder: Option<KeyId>,
    /// The networks it may be used from (CIDR); `null`: anywhere.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Vec<String>>, example = json!(["203.0.113.0/24", "2001:db8::/32"])))]
    pub allowed_ips: Option<IpAllowlist>,
    /// Its owner's rate limits, shared by all of the owner's keys (set on the owner).
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<RateLimitDoc>))]
    pub owner_rate_limits: RateLimits,
    /// First successful verification (written in batches).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub first_used_at: Option<Timestamp>,
    /// After a rotation: retire this key once the successor is in use and it has been unused
    /// this long.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, example = "1h"))]
    pub retire_when_switched: Option<Lifetime>,
    /// For a rotated key: how the switch to its successor is going — the successor's first
    /// use, this key's last use and its uses since the rotation. Shown where one key is shown
    /// (`GET /v1/keys/{id}`), not in lists.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<SwitchOverDoc>))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub switch_over: Option<SwitchOver>,
}

/// How the switch from a rotated key to its successor is going.
#[cfg(feature = "openapi")]
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct SwitchOverDoc {
    /// The successor's id.
    successor_id: String,
    /// When the key was rotated.
    #[schema(format = DateTime)]
    rotated_at: String,
    /// When its grace period ends (or ended).
    #[schema(format = DateTime)]
    grace_ends_at: Option<String>,
    /// Whether the old key still works.
    in_grace: bool,
    /// The successor's first successful use, if it has been used.
    #[schema(format = DateTime)]
    successor_first_used_at: Option<String>,
    /// The old key's last successful use.
    #[schema(format = DateTime)]
    old_last_used_at: Option<String>,
    /// The old key's successful uses since the rotation.
    old_uses_since_rotation: u64,
    /// The quiet period after which it is retired once the successor is in use.
    #[schema(example = "1h")]
    retire_when_switched: Option<String>,
}

/// A key's credits, as shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreditsView {
    /// Credits left when this was read.
    pub remaining: u64,
    /// How they are refilled, if they are.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<RefillDoc>))]
    pub refill: Option<Refill>,
    /// When the balance was last set (issue, change or refill).
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub refilled_at: Timestamp,
    /// When the next refill is due.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub next_refill_at: Option<Timestamp>,
}

impl CreditsView {
    /// The view of `quota` at `now`.
    pub fn of(quota: &Quota, now: Timestamp) -> Self {
        Self {
            remaining: quota.remaining,
            refill: quota.refill,
            refilled_at: quota.refilled_at,
            next_refill_at: quota.next_refill(now),
        }
    }
}

/// A rate limit, as the API writes it: `{"name": "per_1m", "limit": 100, "window": "1m"}`
/// (`name` optional on input: it defaults to `per_<window>`).
#[cfg(feature = "openapi")]
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct RateLimitDoc {
    /// 1–32 of `a-z 0-9 _ -`, unique among the key's limits.
    name: Option<String>,
    /// Units allowed per window.
    limit: u64,
    /// The window: whole seconds from `1s` to `31d` (`30s`, `1m`, `1h`, `1d`, `1w`).
    window: String,
}

/// A refill: the balance is set to `amount` every day (00:00 UTC) or every month on `on_day`.
#[cfg(feature = "openapi")]
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct RefillDoc {
    /// The balance after a refill.
    amount: u64,
    /// `day` or `month`.
    #[schema(example = "month")]
    every: String,
    /// For monthly refills, the day of the month (1–31, clamped to the month's length; default 1).
    on_day: Option<u8>,
}

impl KeyView {
    /// The view of `record` at `now`.
    pub fn of(record: KeyRecord, now: Timestamp) -> Self {
        Self {
            status: record.status(now),
            id: record.id,
            start: record.start,
            name: record.name,
            owner: record.owner,
            scopes: record.scopes,
            metadata: record.metadata,
            enabled: record.enabled,
            created_at: record.created_at,
            expires_at: record.expires_at,
            revoked_at: record.revoked_at,
            revoked_reason: record.revoked_reason,
            last_used_at: record.last_used_at,
            rotated_from: record.rotated_from,
            rotated_to: record.rotated_to,
            rotated_at: record.rotated_at,
            max_age: record.max_age,
            quota: record
                .limits
                .quota
                .as_ref()
                .map(|q| CreditsView::of(q, now)),
            rate_limits: record.limits.rate,
            owner_rate_limits: record.limits.owner_rate,
            quota_holder: record.limits.quota_holder,
            allowed_ips: record.limits.allowed_ips,
            first_used_at: record.first_used_at,
            retire_when_switched: record.retire_when_switched,
            switch_over: None,
        }
    }
}

/// A key just issued: its view and, in this value only, the key itself (`Debug` hides it).
#[derive(Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedKey {
    /// The key. Shown only here: keygate keeps only its hash.
    #[cfg_attr(
        feature = "openapi",
        schema(example = "kg_4fT0yQm7cLw2Rk9sZ1xV8nB3hJ6dF5aP0q2Zb81Qe")
    )]
    pub key: String,
    /// Everything else about the key.
    #[serde(flatten)]
    pub view: KeyView,
}

impl std::fmt::Debug for CreatedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedKey")
            .field("key", &"<redacted>")
            .field("view", &self.view)
            .finish()
    }
}
