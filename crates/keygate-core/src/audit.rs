//! The audit trail: who changed which key, when, in which request, and what changed — never a
//! secret. Events are built here, from the records before and after a change, and stored by the
//! store in the same transaction as the change itself.

use std::fmt;

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::id::KeyId;
use crate::record::KeyRecord;
use crate::time::Timestamp;

/// Who made a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// An admin key, over the API.
    Admin(KeyId),
    /// The `keygate` command line.
    Cli,
    /// keygate's own scheduler (expiry, policies).
    Scheduler,
    /// `keygate serve` acting on its own (the bootstrap admin key).
    Server,
    /// A key acting on itself (self-rotation).
    SelfService(KeyId),
    /// A program using the library directly.
    Library,
    /// A caller that did not (or could not) authenticate.
    Anonymous,
    /// A person signed in to the admin web UI with a username and password.
    User(String),
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Admin(id) => write!(f, "admin:{id}"),
            Self::Cli => f.write_str("cli"),
            Self::Scheduler => f.write_str("scheduler"),
            Self::Server => f.write_str("server"),
            Self::SelfService(id) => write!(f, "self:{id}"),
            Self::Library => f.write_str("library"),
            Self::Anonymous => f.write_str("anonymous"),
            Self::User(name) => write!(f, "user:{name}"),
        }
    }
}

/// The context of a change: who, and in which request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    /// Who.
    pub actor: Actor,
    /// The request id, when the change came over HTTP.
    pub request_id: Option<String>,
}

impl Audit {
    /// A change by `actor` outside any request.
    pub fn by(actor: Actor) -> Self {
        Self {
            actor,
            request_id: None,
        }
    }

    /// A change made by a program through the library.
    pub fn library() -> Self {
        Self::by(Actor::Library)
    }

    /// The same, in request `request_id`.
    pub fn in_request(mut self, request_id: impl Into<String>) -> Self {
        self.request_id = Some(request_id.into());
        self
    }
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A key was issued.
    KeyCreated,
    /// A key's name, owner, scopes, metadata, expiry or enabled flag changed.
    KeyUpdated,
    /// A key was revoked.
    KeyRevoked,
    /// A key was rotated: a successor was issued and the key's grace period began.
    KeyRotated,
    /// A key is older than the maximum age its policy allows (announced once per key).
    KeyMaxAgeExceeded,
    /// A key will expire soon (announced once per key).
    KeyExpiringSoon,
    /// A key passed its expiry time (announced once per key).
    KeyExpired,
    /// A key's credits were refilled (by the scheduler or `keygate refill`).
    KeyQuotaRefilled,
    /// An owner's record changed: its shared rate limits, or its contact addresses.
    OwnerUpdated,
    /// A key was imported from another system (`keygate import`); the details name its
    /// origin (the system and table), never its hash.
    KeyImported,
    /// An imported key was checked for the first time and keygate stored its own SHA-256
    /// index for it in place of the imported hash (once per key).
    KeyRehashed,
    /// A rotated key is still in use with more than half its grace period gone (announced
    /// once per key).
    KeyStillInUse,
    /// A rotated key's grace period was ended early: its holder switched to the successor
    /// (or asked for it, `POST /v1/self/retire`).
    KeyRetired,
    /// A request to keygate's own API was refused for its credentials (401 or 403).
    AdminAuthFailed,
    /// A webhook endpoint was added.
    WebhookCreated,
    /// A webhook endpoint's URL or event types changed.
    WebhookUpdated,
    /// A webhook endpoint was disabled: it gets no deliveries until enabled again.
    WebhookDisabled,
    /// A disabled webhook endpoint was enabled again.
    WebhookEnabled,
    /// A webhook endpoint was deleted (its undelivered deliveries with it, counted).
    WebhookDeleted,
    /// Someone signed in to the admin web UI.
    AdminSignedIn,
    /// A sign-in to the admin web UI was refused (wrong key or password, or throttled).
    AdminSignInFailed,
    /// An admin-UI user's password or role was set (`keygate admin set-password`).
    AdminPasswordSet,
    /// An admin-UI user was removed (`keygate admin remove-user`).
    AdminUserRemoved,
    /// A stored event this version cannot read (an unknown type, a broken field): readers show
    /// it with its raw stored fields in `details.raw` rather than fail. Never written.
    Undecodable,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [EventKind; 23] = [
        Self::KeyCreated,
        Self::KeyUpdated,
        Self::KeyRevoked,
        Self::KeyRotated,
        Self::KeyMaxAgeExceeded,
        Self::KeyExpiringSoon,
        Self::KeyExpired,
        Self::KeyQuotaRefilled,
        Self::OwnerUpdated,
        Self::KeyImported,
        Self::KeyRehashed,
        Self::KeyStillInUse,
        Self::KeyRetired,
        Self::AdminAuthFailed,
        Self::WebhookCreated,
        Self::WebhookUpdated,
        Self::WebhookDisabled,
        Self::WebhookEnabled,
        Self::WebhookDeleted,
        Self::AdminSignedIn,
        Self::AdminSignInFailed,
        Self::AdminPasswordSet,
        Self::AdminUserRemoved,
    ];

    /// The stable name, e.g. `key.created`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KeyCreated => "key.created",
            Self::KeyUpdated => "key.updated",
            Self::KeyRevoked => "key.revoked",
            Self::KeyRotated => "key.rotated",
            Self::KeyMaxAgeExceeded => "key.max_age_exceeded",
            Self::KeyExpiringSoon => "key.expiring_soon",
            Self::KeyExpired => "key.expired",
            Self::KeyQuotaRefilled => "key.quota_refilled",
            Self::OwnerUpdated => "owner.updated",
            Self::KeyImported => "key.imported",
            Self::KeyRehashed => "key.rehashed",
            Self::KeyStillInUse => "key.still_in_use",
            Self::KeyRetired => "key.retired",
            Self::AdminAuthFailed => "admin.auth_failed",
            Self::WebhookCreated => "webhook.created",
            Self::WebhookUpdated => "webhook.updated",
            Self::WebhookDisabled => "webhook.disabled",
            Self::WebhookEnabled => "webhook.enabled",
            Self::WebhookDeleted => "webhook.deleted",
            Self::AdminSignedIn => "admin.signed_in",
            Self::AdminSignInFailed => "admin.sign_in_failed",
            Self::AdminPasswordSet => "admin.password_set",
            Self::AdminUserRemoved => "admin.user_removed",
            Self::Undecodable => "undecodable",
        }
    }

    /// Parses a stable name (of an event that is written: not [`EventKind::Undecodable`]).
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for EventKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One entry of the audit trail.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEvent {
    /// Position in the trail, assigned by the store (0 until stored).
    pub seq: i64,
    /// When.
    pub at: Timestamp,
    /// What happened.
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// Who: `admin:<key id>`, `cli`, `scheduler`, `self:<key id>` or `library`.
    pub actor: String,
    /// The key concerned.
    pub key_id: Option<KeyId>,
    /// The request that made the change, if it came over HTTP.
    pub request_id: Option<String>,
    /// What changed: for a new key its fields, for a change `{"field": {"from": .., "to": ..}}`.
    pub details: Map<String, Value>,
}

/// The fields an event may mention. Never the hash; never anything secret.
fn visible_fields(r: &KeyRecord) -> [(&'static str, Value); 14] {
    [
        ("name", json!(r.name)),
        ("owner", json!(r.owner)),
        ("scopes", json!(r.scopes)),
        ("metadata", Value::Object(r.metadata.clone())),
        ("expires_at", json!(r.expires_at)),
        ("enabled", json!(r.enabled)),
        ("revoked_at", json!(r.revoked_at)),
        ("revoked_reason", json!(r.revoked_reason)),
        ("rotated_from", json!(r.rotated_from)),
        ("rotated_to", json!(r.rotated_to)),
        ("retire_when_switched", json!(r.retire_when_switched)),
        // No limits read as absent (a key without any says nothing about them).
        (
            "rate_limits",
            if r.limits.rate.is_empty() {
                Value::Null
            } else {
                json!(r.limits.rate)
            },
        ),
        ("quota", json!(r.limits.quota)),
        ("allowed_ips", json!(r.limits.allowed_ips)),
    ]
}

impl AuditEvent {
    fn new(kind: EventKind, key: &KeyRecord, audit: &Audit, at: Timestamp) -> Self {
        Self {
            seq: 0,
            at,
            kind,
            actor: audit.actor.to_string(),
            key_id: Some(key.id.clone()),
            request_id: audit.request_id.clone(),
            details: Map::new(),
        }
    }

    /// `key.created`, listing the new key's fields and display start.
    pub fn created(record: &KeyRecord, audit: &Audit, at: Timestamp) -> Self {
        let mut event = Self::new(EventKind::KeyCreated, record, audit, at);
        event.details.insert("start".into(), json!(record.start));
        for (field, value) in visible_fields(record) {
            if !value.is_null() {
                event.details.insert(field.into(), value);
            }
        }
        event
    }

    /// `key.imported`: the imported key's fields and display start, like `key.created`, and
    /// `origin` (which system and table it came from; the caller puts nothing secret in it).
    pub fn imported(
        record: &KeyRecord,
        origin: Map<String, Value>,
        audit: &Audit,
        at: Timestamp,
    ) -> Self {
        let mut event = Self::created(record, audit, at);
        event.kind = EventKind::KeyImported;
        event.details.insert("origin".into(), Value::Object(origin));
        event
    }

    /// `key.rehashed`: an imported key's stored hash (of `scheme`, e.g. `pbkdf2_sha256`) was
    /// replaced by keygate's own SHA-256 index on its first successful check.
    pub fn rehashed(record: &KeyRecord, scheme: &str, audit: &Audit, at: Timestamp) -> Self {
        let mut event = Self::new(EventKind::KeyRehashed, record, audit, at);
        event.details.insert("from".into(), json!(scheme));
        event
    }

    /// A notice about `record` that changes nothing (`key.expiring_soon`, `key.expired`,
    /// `key.max_age_exceeded`), with `details`.
    pub fn notice(
        kind: EventKind,
        record: &KeyRecord,
        audit: &Audit,
        at: Timestamp,
        details: Map<String, Value>,
    ) -> Self {
        let mut event = Self::new(kind, record, audit, at);
        event.details = details;
        event
    }

    /// `admin.auth_failed`: a refused request to keygate's own API; no key, no secret.
    pub fn auth_failure(audit: &Audit, at: Timestamp, details: Map<String, Value>) -> Self {
        Self::about_admin(EventKind::AdminAuthFailed, audit, at, details)
    }

    /// An event about keygate's own administration (`admin.*`), about no key: `details` must
    /// hold nothing secret.
    pub fn about_admin(
        kind: EventKind,
        audit: &Audit,
        at: Timestamp,
        details: Map<String, Value>,
    ) -> Self {
        Self {
            seq: 0,
            at,
            kind,
            actor: audit.actor.to_string(),
            key_id: None,
            request_id: audit.request_id.clone(),
            details,
        }
    }

    /// `owner.updated`: the owner and its rate limits before and after.
    pub fn owner_updated(
        owner: &str,
        before: &crate::limits::RateLimits,
        after: &crate::limits::RateLimits,
        audit: &Audit,
        at: Timestamp,
    ) -> Self {
        let details = json!({"owner": owner, "rate_limits": {"from": before, "to": after}});
        Self::about_admin(
            EventKind::OwnerUpdated,
            audit,
            at,
            details.as_object().cloned().unwrap_or_default(),
        )
    }

    /// `webhook.created`: id, URL, event filter and format; never the signing secret.
    pub fn webhook_created(
        endpoint: &crate::webhook::Endpoint,
        audit: &Audit,
        at: Timestamp,
    ) -> Self {
        // A Slack URL is itself a secret (whoever holds it can post): the trail names its host.
        let details = json!({"webhook_id": endpoint.id, "url": endpoint.shown_url(false), "events": endpoint.events, "slack": endpoint.slack});
        Self {
            seq: 0,
            at,
            kind: EventKind::WebhookCreated,
            actor: audit.actor.to_string(),
            key_id: None,
            request_id: audit.request_id.clone(),
            details: details.as_object().cloned().unwrap_or_default(),
        }
    }

    /// The event for a change to a webhook endpoint from `before` to `after`
    /// (`webhook.disabled` / `webhook.enabled` when only that flag changed, else
    /// `webhook.updated`), listing each changed field's old and new value; never the signing
    /// secret, and a Slack URL only by its host.
    pub fn webhook_changed(
        before: &crate::webhook::Endpoint,
        after: &crate::webhook::Endpoint,
        audit: &Audit,
        at: Timestamp,
    ) -> Self {
        let mut details = Map::new();
        details.insert("webhook_id".into(), json!(after.id));
        let (old_url, new_url) = (before.shown_url(false), after.shown_url(false));
        if before.url != after.url {
            details.insert("url".into(), json!({"from": old_url, "to": new_url}));
        }
        if before.events != after.events {
            details.insert(
                "events".into(),
                json!({"from": before.events, "to": after.events}),
            );
        }
        if before.enabled != after.enabled {
            details.insert(
                "enabled".into(),
                json!({"from": before.enabled, "to": after.enabled}),
            );
        }
        let only_enabled = before.url == after.url && before.events == after.events;
        let kind = match (only_enabled, before.enabled != after.enabled, after.enabled) {
            (true, true, false) => EventKind::WebhookDisabled,
            (true, true, true) => EventKind::WebhookEnabled,
            _ => EventKind::WebhookUpdated,
        };
        Self::about_admin(kind, audit, at, details)
    }

    /// `webhook.deleted`: the endpoint's id and (shown) URL, and how many of its deliveries
    /// were still pending and so were dropped with it.
    pub fn webhook_deleted(
        endpoint: &crate::webhook::Endpoint,
        dropped_pending: u64,
        audit: &Audit,
        at: Timestamp,
    ) -> Self {
        let details = json!({"webhook_id": endpoint.id, "url": endpoint.shown_url(false),
                             "events": endpoint.events, "dropped_pending": dropped_pending});
        Self::about_admin(
            EventKind::WebhookDeleted,
            audit,
            at,
            details.as_object().cloned().unwrap_or_default(),
        )
    }

    /// `kind` for a change from `before` to `after`, listing each changed field's old and new
    /// value.
    pub fn changed(
        kind: EventKind,
        before: &KeyRecord,
        after: &KeyRecord,
        audit: &Audit,
        at: Timestamp,
    ) -> Self {
        let mut event = Self::new(kind, after, audit, at);
        for ((field, old), (_, new)) in visible_fields(before)
            .into_iter()
            .zip(visible_fields(after))
        {
            if old != new {
                event
                    .details
                    .insert(field.into(), json!({"from": old, "to": new}));
            }
        }
        event
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Prefix;
    use crate::record::{KeyPatch, KeySpec, issue};

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_unix_ms(ms).unwrap()
    }

    #[test]
    fn events_name_actor_request_and_changes_never_the_hash() {
        let spec = KeySpec {
            name: "billing".into(),
            scopes: vec!["orders:read".into()],
            ..KeySpec::default()
        };
        let (before, key) = issue(spec, &Prefix::default(), t(0)).unwrap();
        let admin = KeyId::generate(t(0));
        let audit = Audit::by(Actor::Admin(admin.clone())).in_request("req-1");
        let created = AuditEvent::created(&before, &audit, t(1));
        assert_eq!(created.kind.as_str(), "key.created");
        assert_eq!(created.actor, format!("admin:{admin}"));
        assert_eq!(created.request_id.as_deref(), Some("req-1"));
        assert_eq!(created.details["name"], "billing");
        assert!(!created.details.contains_key("owner"), "nulls are left out");

        let mut after = before.clone();
        KeyPatch {
            name: Some("billing v2".into()),
            enabled: Some(false),
            ..KeyPatch::default()
        }
        .apply(&mut after)
        .unwrap();
        let changed = AuditEvent::changed(
            EventKind::KeyUpdated,
            &before,
            &after,
            &Audit::by(Actor::Cli),
            t(2),
        );
        assert_eq!(changed.actor, "cli");
        assert_eq!(changed.details.len(), 2);
        assert_eq!(
            changed.details["name"],
            json!({"from": "billing", "to": "billing v2"})
        );
        assert_eq!(
            changed.details["enabled"],
            json!({"from": true, "to": false})
        );

        for event in [&created, &changed] {
            let text = serde_json::to_string(event).unwrap();
            assert!(!text.contains(&key.expose()[3..]));
            let hex: String = before
                .hash
                .as_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert!(!text.contains(&hex));
            assert!(text.contains("\"type\":\"key."));
        }
    }

    #[test]
    fn kinds_round_trip() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(EventKind::parse("key.deleted"), None);
        assert_eq!(
            Actor::SelfService(KeyId::generate(t(0)))
                .to_string()
                .split(':')
                .next(),
            Some("self")
        );
    }
}
