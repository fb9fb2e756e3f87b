//! The stored record of a key, how one is issued from a [`KeySpec`], how a [`KeyPatch`] changes
//! it, how it is revoked, and its [`Status`] at a given time. Every input is checked here.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::format::{KeyHash, PlainKey, Prefix, generate};
use crate::id::KeyId;
use crate::limits::{IpAllowlist, Quota, RateLimits};
use crate::scope::{MAX_SCOPES, check_scope};
use crate::time::{Lifetime, Timestamp};

/// Longest key name, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Longest owner id, in characters.
pub const MAX_OWNER_CHARS: usize = 200;
/// Longest revocation reason, in characters.
pub const MAX_REASON_CHARS: usize = 500;
/// Largest metadata object, as compact JSON bytes.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
/// Deepest metadata nesting: the object itself is level 1. Events quote metadata a few levels
/// further in, and every reader (serde_json stops at 128) must be able to read them back.
pub const MAX_METADATA_DEPTH: usize = 16;

/// Everything stored about a key. It holds no secret: only the key's hash and display start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// Public id.
    pub id: KeyId,
    /// Human name, e.g. "billing service (prod)".
    pub name: String,
    /// Display form: prefix and first secret characters, e.g. `kg_4fT0`.
    pub start: String,
    /// SHA-256 of the whole key.
    pub hash: KeyHash,
    /// The API owner's id for whoever holds the key (a user, team or customer).
    pub owner: Option<String>,
    /// What the key may do.
    pub scopes: Vec<String>,
    /// Free-form JSON object the API owner attaches (plan, tenant, ...).
    pub metadata: Map<String, Value>,
    /// When it was issued.
    pub created_at: Timestamp,
    /// When it stops working, if ever.
    pub expires_at: Option<Timestamp>,
    /// When it was revoked, if it was. Revocation is final.
    pub revoked_at: Option<Timestamp>,
    /// Why it was revoked.
    pub revoked_reason: Option<String>,
    /// A disabled key is refused until enabled again.
    pub enabled: bool,
    /// Last successful verification (recorded in batches, so it may lag a little).
    pub last_used_at: Option<Timestamp>,
    /// The key this one replaced, if it was issued by a rotation.
    pub rotated_from: Option<KeyId>,
    /// The key that replaced this one, if it was rotated.
    pub rotated_to: Option<KeyId>,
    /// When it was rotated (its grace period runs from here to `expires_at`).
    pub rotated_at: Option<Timestamp>,
    /// This key's own maximum age, overriding the deployment's policy.
    pub max_age: Option<Lifetime>,
    /// First successful verification (recorded in batches).
    pub first_used_at: Option<Timestamp>,
    /// Successful verifications since it was rotated (recorded in batches; 0 if not rotated).
    pub uses_since_rotation: u64,
    /// After a rotation: end the grace period early once the successor has been used and this
    /// key has been unused for this long (see [`crate::switch::retire_due`]).
    pub retire_when_switched: Option<Lifetime>,
    /// Rate limits, credits and the addresses it may be used from.
    pub limits: KeyLimits,
}

/// What a key may spend and where from. The default: no limits, from anywhere.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyLimits {
    /// Rate limits, all checked together (a refused request spends nothing).
    pub rate: RateLimits,
    /// The credits this key holds: the balance (as last read) and its refill.
    pub quota: Option<Quota>,
    /// After a rotation, the key whose credits this one spends: its successor, which took the
    /// balance over (a rotation does not double the credit).
    pub quota_holder: Option<KeyId>,
    /// The addresses requests may come from; `None`: anywhere.
    pub allowed_ips: Option<IpAllowlist>,
    /// The owner's rate limits, shared by all of the owner's keys: set on the owner (see
    /// [`OwnerLimits`](crate::limits::OwnerLimits)) and read with the key, never stored on it.
    pub owner_rate: RateLimits,
}

impl KeyLimits {
    /// Whose credits a request with key `own` spends: its own, its successor's after a
    /// rotation, or nobody's (no quota).
    pub fn quota_payer<'a>(&'a self, own: &'a KeyId) -> Option<&'a KeyId> {
        match self.quota {
            Some(_) => Some(own),
            None => self.quota_holder.as_ref(),
        }
    }
}

/// Where a key stands at a given time. Precedence: revoked, then expired, then disabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Usable.
    Active,
    /// Switched off for now; can be enabled again.
    Disabled,
    /// Past its expiry time.
    Expired,
    /// Revoked for good.
    Revoked,
}

impl Status {
    /// The lowercase name used in filters and output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Disabled => "disabled",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
        }
    }

    /// Parses a lowercase status name.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "active" => Self::Active,
            "disabled" => Self::Disabled,
            "expired" => Self::Expired,
            "revoked" => Self::Revoked,
            _ => return None,
        })
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Status {
    /// The status at `now` of a key revoked or not, expiring at `expires_at`, enabled or not:
    /// revoked, then expired, then disabled. The one rule every view of a key uses.
    pub fn at(now: Timestamp, revoked: bool, expires_at: Option<Timestamp>, enabled: bool) -> Self {
        if revoked {
            Status::Revoked
        } else if expires_at.is_some_and(|e| now >= e) {
            Status::Expired
        } else if !enabled {
            Status::Disabled
        } else {
            Status::Active
        }
    }
}

impl KeyRecord {
    /// The key's status at `now`.
    pub fn status(&self, now: Timestamp) -> Status {
        Status::at(
            now,
            self.revoked_at.is_some(),
            self.expires_at,
            self.enabled,
        )
    }

    /// Revokes the key at `at`. Revocation is final: revoking twice is an error.
    pub fn revoke(&mut self, at: Timestamp, reason: Option<String>) -> Result<(), RecordError> {
        if self.revoked_at.is_some() {
            return Err(RecordError::AlreadyRevoked);
        }
        let reason = reason
            .map(|r| check_text("reason", r, MAX_REASON_CHARS))
            .transpose()?;
        self.revoked_at = Some(at);
        self.revoked_reason = reason;
        Ok(())
    }
}

/// When a new key expires: at a fixed time, or a lifetime after it is issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// At this time (may be in the past: the key is then born expired).
    At(Timestamp),
    /// This long after issue.
    In(Lifetime),
}

/// What the API owner asks for when issuing a key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeySpec {
    /// Required, 1–200 characters.
    pub name: String,
    /// Optional owner id, 1–200 characters.
    pub owner: Option<String>,
    /// Scopes; duplicates are dropped.
    pub scopes: Vec<String>,
    /// A JSON object of at most 16 KiB.
    pub metadata: Map<String, Value>,
    /// When the key expires, if ever.
    pub expires: Option<Expiry>,
    /// Its own maximum age, overriding the deployment's policy.
    pub max_age: Option<Lifetime>,
    /// Rate limits (checked when they were made).
    pub rate_limits: RateLimits,
    /// Credits and their refill.
    pub quota: Option<Quota>,
    /// The addresses it may be used from.
    pub allowed_ips: Option<IpAllowlist>,
}

/// A field that failed a check, and why. The message never repeats a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordError {
    /// The named field is not acceptable.
    Field {
        /// Field name as the API spells it (`name`, `scopes`, ...).
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The key is revoked already; revocation is final.
    AlreadyRevoked,
    /// The key was rotated already: rotate its successor instead.
    AlreadyRotated,
}

impl RecordError {
    pub(crate) fn field(field: &'static str, message: impl Into<String>) -> Self {
        Self::Field {
            field,
            message: message.into(),
        }
    }
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Field { field, message } => write!(f, "{field}: {message}"),
            Self::AlreadyRevoked => f.write_str("the key is revoked; revocation is final"),
            Self::AlreadyRotated => {
                f.write_str("the key was rotated already; rotate its successor instead")
            }
        }
    }
}

impl std::error::Error for RecordError {}

/// Issues a key: checks `spec`, generates a key with `prefix`, and returns the record to store
/// and the plaintext to hand over once.
pub fn issue(
    spec: KeySpec,
    prefix: &Prefix,
    now: Timestamp,
) -> Result<(KeyRecord, PlainKey), RecordError> {
    let name = check_text("name", spec.name, MAX_NAME_CHARS)?;
    let owner = spec
        .owner
        .map(|o| check_text("owner", o, MAX_OWNER_CHARS))
        .transpose()?;
    let scopes = check_scopes(spec.scopes)?;
    let metadata = check_metadata(spec.metadata)?;
    let expires_at = match spec.expires {
        None => None,
        Some(Expiry::At(at)) => Some(at),
        Some(Expiry::In(lifetime)) => Some(
            now.checked_add(lifetime)
                .ok_or_else(|| RecordError::field("expires_in", "ends after year 9999"))?,
        ),
    };
    let key = generate(prefix);
    let record = KeyRecord {
        id: KeyId::generate(now),
        name,
        start: key.start(),
        hash: key.hash(),
        owner,
        scopes,
        metadata,
        created_at: now,
        expires_at,
        revoked_at: None,
        revoked_reason: None,
        enabled: true,
        last_used_at: None,
        rotated_from: None,
        rotated_to: None,
        rotated_at: None,
        max_age: spec.max_age,
        first_used_at: None,
        uses_since_rotation: 0,
        retire_when_switched: None,
        limits: KeyLimits {
            rate: spec.rate_limits,
            quota: spec.quota,
            quota_holder: None,
            allowed_ips: spec.allowed_ips,
            owner_rate: RateLimits::default(),
        },
    };
    Ok((record, key))
}

/// Longest grace period a rotation may give the old key.
pub const MAX_GRACE: Lifetime = Lifetime::MAX;

/// The grace period of a rotation when none is given: a day.
pub const DEFAULT_GRACE: Lifetime = Lifetime(86_400_000);

/// Plans the rotation of `old` into a new key: the new record copies name, owner, scopes,
/// metadata, limits, the enabled flag and (if the old key had one) its lifetime; the two link
/// through `rotated_from` / `rotated_to`. The credits move to the new key, and the old key
/// spends from them during its grace period (the store points every key that spent the old
/// key's credits at the new one too). The old key keeps working until `now + grace` (never later
/// than it would have anyway) and then verifies `EXPIRED`; a zero grace ends it at once.
///
/// Returns (the old record as it must be stored now, the new record). `new_key` and `new_id`
/// come from [`generate`] and [`KeyId::generate`]; passing them in keeps this a pure function
/// the store can run inside its transaction.
pub fn plan_rotation(
    old: &KeyRecord,
    new_key: &PlainKey,
    new_id: KeyId,
    now: Timestamp,
    grace_ms: i64,
) -> Result<(KeyRecord, KeyRecord), RecordError> {
    if old.revoked_at.is_some() {
        return Err(RecordError::AlreadyRevoked);
    }
    if old.rotated_to.is_some() {
        return Err(RecordError::AlreadyRotated);
    }
    if !(0..=MAX_GRACE.as_ms()).contains(&grace_ms) {
        return Err(RecordError::field(
            "grace_period",
            "must be between 0 and 100 years",
        ));
    }
    let lifetime = old
        .expires_at
        .map(|e| e.unix_ms() - old.created_at.unix_ms())
        .and_then(Lifetime::from_ms);
    let new = KeyRecord {
        id: new_id,
        name: old.name.clone(),
        start: new_key.start(),
        hash: new_key.hash(),
        owner: old.owner.clone(),
        scopes: old.scopes.clone(),
        metadata: old.metadata.clone(),
        created_at: now,
        expires_at: lifetime.and_then(|l| now.checked_add(l)),
        revoked_at: None,
        revoked_reason: None,
        enabled: old.enabled,
        last_used_at: None,
        rotated_from: Some(old.id.clone()),
        rotated_to: None,
        rotated_at: None,
        max_age: old.max_age,
        first_used_at: None,
        uses_since_rotation: 0,
        retire_when_switched: None,
        limits: KeyLimits {
            rate: old.limits.rate.clone(),
            quota: old.limits.quota,
            quota_holder: None,
            allowed_ips: old.limits.allowed_ips.clone(),
            owner_rate: old.limits.owner_rate.clone(),
        },
    };
    let mut old_after = old.clone();
    if old.limits.quota_payer(&old.id).is_some() {
        old_after.limits.quota = None;
        old_after.limits.quota_holder = Some(new.id.clone());
    }
    let end = Timestamp::from_unix_ms(now.unix_ms().saturating_add(grace_ms)).unwrap_or(now);
    old_after.expires_at = Some(old.expires_at.map_or(end, |e| e.min(end)));
    old_after.rotated_to = Some(new.id.clone());
    old_after.rotated_at = Some(now);
    Ok((old_after, new))
}

/// A change to a key's editable fields; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyPatch {
    /// New name.
    pub name: Option<String>,
    /// New owner; `Some(None)` clears it.
    pub owner: Option<Option<String>>,
    /// New scopes (replaces the list).
    pub scopes: Option<Vec<String>>,
    /// New metadata (replaces the object).
    pub metadata: Option<Map<String, Value>>,
    /// New expiry; `Some(None)` removes it.
    pub expires_at: Option<Option<Timestamp>>,
    /// Enable or disable. A revoked key cannot be enabled.
    pub enabled: Option<bool>,
    /// New maximum age; `Some(None)` returns the key to the deployment's policy.
    pub max_age: Option<Option<Lifetime>>,
    /// New rate limits (replaces the list; empty removes them).
    pub rate_limits: Option<RateLimits>,
    /// New credits (balance and refill); `Some(None)` removes the quota.
    pub quota: Option<Option<Quota>>,
    /// New allowlist; `Some(None)` lets the key be used from anywhere.
    pub allowed_ips: Option<Option<IpAllowlist>>,
}

impl KeyPatch {
    /// Applies the patch to `record`, checking every field first; on error `record` is untouched.
    pub fn apply(self, record: &mut KeyRecord) -> Result<(), RecordError> {
        if record.revoked_at.is_some() && self.enabled == Some(true) {
            return Err(RecordError::AlreadyRevoked);
        }
        let name = self
            .name
            .map(|n| check_text("name", n, MAX_NAME_CHARS))
            .transpose()?;
        let owner = self
            .owner
            .map(|o| {
                o.map(|o| check_text("owner", o, MAX_OWNER_CHARS))
                    .transpose()
            })
            .transpose()?;
        let scopes = self.scopes.map(check_scopes).transpose()?;
        let metadata = self.metadata.map(check_metadata).transpose()?;
        if let Some(v) = name {
            record.name = v;
        }
        if let Some(v) = owner {
            record.owner = v;
        }
        if let Some(v) = scopes {
            record.scopes = v;
        }
        if let Some(v) = metadata {
            record.metadata = v;
        }
        if let Some(v) = self.expires_at {
            record.expires_at = v;
        }
        if let Some(v) = self.enabled {
            record.enabled = v;
        }
        if let Some(v) = self.max_age {
            record.max_age = v;
        }
        if let Some(v) = self.rate_limits {
            record.limits.rate = v;
        }
        if let Some(v) = self.quota {
            // A key given credits of its own spends them, not a successor's.
            record.limits.quota_holder = None;
            record.limits.quota = v;
        }
        if let Some(v) = self.allowed_ips {
            record.limits.allowed_ips = v;
        }
        Ok(())
    }
}

/// Checks an owner id (as a filter, say): 1–200 characters, not blank, no control characters.
pub fn check_owner(owner: String) -> Result<String, RecordError> {
    check_text("owner", owner, MAX_OWNER_CHARS)
}

pub(crate) fn check_text(
    field: &'static str,
    text: String,
    max_chars: usize,
) -> Result<String, RecordError> {
    if text.trim().is_empty() {
        return Err(RecordError::field(field, "must not be empty"));
    }
    if text.chars().count() > max_chars {
        return Err(RecordError::field(
            field,
            format!("must be at most {max_chars} characters"),
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(RecordError::field(
            field,
            "must not contain control characters",
        ));
    }
    Ok(text)
}

fn check_scopes(scopes: Vec<String>) -> Result<Vec<String>, RecordError> {
    let mut out: Vec<String> = Vec::with_capacity(scopes.len());
    for scope in scopes {
        check_scope(&scope).map_err(|why| RecordError::field("scopes", why))?;
        if !out.contains(&scope) {
            out.push(scope);
        }
    }
    if out.len() > MAX_SCOPES {
        return Err(RecordError::field(
            "scopes",
            format!("a key may hold at most {MAX_SCOPES} scopes"),
        ));
    }
    Ok(out)
}

fn check_metadata(metadata: Map<String, Value>) -> Result<Map<String, Value>, RecordError> {
    if 1 + metadata.values().map(depth).max().unwrap_or(0) > MAX_METADATA_DEPTH {
        return Err(RecordError::field(
            "metadata",
            format!("must be nested at most {MAX_METADATA_DEPTH} levels deep"),
        ));
    }
    let size = serde_json::to_vec(&metadata).map_or(usize::MAX, |v| v.len());
    if size > MAX_METADATA_BYTES {
        return Err(RecordError::field(
            "metadata",
            format!("must be at most {MAX_METADATA_BYTES} bytes of JSON"),
        ));
    }
    Ok(metadata)
}

/// How deeply a JSON value nests: 0 for a scalar, 1 for a flat array or object. Without
/// recursion, so any input is safe to measure.
fn depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((value, level)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(fields) => Box::new(fields.values()),
            _ => continue,
        };
        deepest = deepest.max(level + 1);
        stack.extend(children.map(|child| (child, level + 1)));
    }
    deepest
}

#[cfg(test)]
mod depth_tests {
    use super::*;

    /// A metadata object nested `levels` deep (the object itself is level 1).
    pub(super) fn nested(levels: usize) -> Map<String, Value> {
        let mut value = Value::Bool(true);
        for _ in 1..levels {
            value = Value::Object([("a".to_string(), value)].into_iter().collect());
        }
        [("a".to_string(), value)].into_iter().collect()
    }

    #[test]
    fn metadata_may_nest_sixteen_levels_and_no_more() {
        assert_eq!(depth(&Value::Null), 0);
        assert_eq!(depth(&serde_json::json!([])), 1);
        assert_eq!(depth(&serde_json::json!({"a": [1, {"b": []}]})), 4);
        assert_eq!(
            depth(&Value::Object(nested(MAX_METADATA_DEPTH))),
            MAX_METADATA_DEPTH
        );
        assert!(check_metadata(nested(MAX_METADATA_DEPTH)).is_ok());
        match check_metadata(nested(MAX_METADATA_DEPTH + 1)) {
            Err(RecordError::Field { field, message }) => {
                assert_eq!(field, "metadata");
                assert!(message.contains("16 levels"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::depth_tests::nested;
    use super::*;
    use crate::format::{generate, parse};

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_unix_ms(ms).unwrap()
    }

    fn spec() -> KeySpec {
        KeySpec {
            name: "billing".into(),
            scopes: vec!["orders:read".into(), "orders:read".into(), "users:*".into()],
            ..KeySpec::default()
        }
    }

    #[test]
    fn issue_builds_a_record_that_matches_the_key() {
        let (record, key) = issue(spec(), &Prefix::default(), t(1_000)).unwrap();
        assert_eq!(record.hash, parse(key.expose()).unwrap().hash());
        assert_eq!(record.start, key.start());
        assert_eq!(record.scopes, ["orders:read", "users:*"]);
        assert_eq!(record.created_at, t(1_000));
        assert!(record.enabled);
        assert_eq!(record.status(t(1_000)), Status::Active);
        let debug = format!("{record:?}");
        assert!(!debug.contains(&key.expose()[8..]));
    }

    #[test]
    fn expiry_in_and_at() {
        let mut s = spec();
        s.expires = Some(Expiry::In(Lifetime::parse("1h").unwrap()));
        let (r, _) = issue(s, &Prefix::default(), t(0)).unwrap();
        assert_eq!(r.expires_at, Some(t(3_600_000)));
        assert_eq!(r.status(t(3_599_999)), Status::Active);
        assert_eq!(r.status(t(3_600_000)), Status::Expired);
        let mut s = spec();
        s.expires = Some(Expiry::At(t(-5)));
        let (r, _) = issue(s, &Prefix::default(), t(0)).unwrap();
        assert_eq!(r.status(t(0)), Status::Expired);
    }

    #[test]
    fn bad_specs_name_the_field() {
        let cases: Vec<(KeySpec, &str)> = vec![
            (
                KeySpec {
                    name: "".into(),
                    ..spec()
                },
                "name",
            ),
            (
                KeySpec {
                    name: "  ".into(),
                    ..spec()
                },
                "name",
            ),
            (
                KeySpec {
                    name: "x".repeat(201),
                    ..spec()
                },
                "name",
            ),
            (
                KeySpec {
                    name: "a\nb".into(),
                    ..spec()
                },
                "name",
            ),
            (
                KeySpec {
                    owner: Some("".into()),
                    ..spec()
                },
                "owner",
            ),
            (
                KeySpec {
                    scopes: vec!["Bad Scope".into()],
                    ..spec()
                },
                "scopes",
            ),
            (
                KeySpec {
                    scopes: (0..65).map(|i| format!("s{i}")).collect(),
                    ..spec()
                },
                "scopes",
            ),
            (
                KeySpec {
                    metadata: [("k".to_string(), Value::String("x".repeat(17_000)))]
                        .into_iter()
                        .collect(),
                    ..spec()
                },
                "metadata",
            ),
            (
                KeySpec {
                    metadata: nested(MAX_METADATA_DEPTH + 1),
                    ..spec()
                },
                "metadata",
            ),
        ];
        for (s, field) in cases {
            match issue(s, &Prefix::default(), t(0)) {
                Err(RecordError::Field { field: f, .. }) => assert_eq!(f, field),
                other => panic!("expected a {field} error, got {other:?}"),
            }
        }
        assert!(
            issue(
                KeySpec {
                    name: "é".repeat(200),
                    ..spec()
                },
                &Prefix::default(),
                t(0)
            )
            .is_ok()
        );
    }

    #[test]
    fn status_precedence() {
        let (mut r, _) = issue(spec(), &Prefix::default(), t(0)).unwrap();
        r.enabled = false;
        assert_eq!(r.status(t(0)), Status::Disabled);
        r.expires_at = Some(t(10));
        assert_eq!(r.status(t(10)), Status::Expired);
        r.revoke(t(5), Some("leaked".into())).unwrap();
        assert_eq!(r.status(t(10)), Status::Revoked);
        assert_eq!(r.revoke(t(6), None), Err(RecordError::AlreadyRevoked));
        assert_eq!(r.revoked_at, Some(t(5)));
        assert_eq!(r.revoked_reason.as_deref(), Some("leaked"));
    }

    #[test]
    fn patch_applies_all_or_nothing_and_revocation_is_final() {
        let (mut r, _) = issue(spec(), &Prefix::default(), t(0)).unwrap();
        let before = r.clone();
        let bad = KeyPatch {
            name: Some("new".into()),
            scopes: Some(vec!["NOPE".into()]),
            ..KeyPatch::default()
        };
        assert!(matches!(
            bad.apply(&mut r),
            Err(RecordError::Field {
                field: "scopes",
                ..
            })
        ));
        assert_eq!(r, before);
        KeyPatch {
            name: Some("new".into()),
            owner: Some(Some("acct_1".into())),
            enabled: Some(false),
            expires_at: Some(Some(t(99))),
            ..KeyPatch::default()
        }
        .apply(&mut r)
        .unwrap();
        assert_eq!(
            (r.name.as_str(), r.owner.as_deref(), r.enabled),
            ("new", Some("acct_1"), false)
        );
        KeyPatch {
            owner: Some(None),
            expires_at: Some(None),
            ..KeyPatch::default()
        }
        .apply(&mut r)
        .unwrap();
        assert_eq!((r.owner.as_deref(), r.expires_at), (None, None));
        r.revoke(t(1), None).unwrap();
        let enable = KeyPatch {
            enabled: Some(true),
            ..KeyPatch::default()
        };
        assert_eq!(enable.apply(&mut r), Err(RecordError::AlreadyRevoked));
        assert_eq!(r.status(t(2)), Status::Revoked);
    }

    #[test]
    fn rotation_links_copies_and_bounds_the_grace() {
        let mut s = spec();
        s.owner = Some("acct".into());
        s.expires = Some(Expiry::In(Lifetime::parse("90d").unwrap()));
        let (old, _) = issue(s, &Prefix::default(), t(0)).unwrap();
        let new_key = generate(&Prefix::default());
        let new_id = KeyId::generate(t(1000));
        let (old_after, new) =
            plan_rotation(&old, &new_key, new_id.clone(), t(1000), 2_000).unwrap();
        assert_eq!(new.id, new_id);
        assert_eq!(new.hash, new_key.hash());
        assert_eq!(
            (new.name.as_str(), new.owner.as_deref()),
            (old.name.as_str(), Some("acct"))
        );
        assert_eq!(new.scopes, old.scopes);
        assert_eq!(new.rotated_from.as_ref(), Some(&old.id));
        assert_eq!(
            new.expires_at,
            Some(t(1000 + 90 * 86_400_000)),
            "same lifetime"
        );
        assert_eq!(old_after.rotated_to.as_ref(), Some(&new.id));
        assert_eq!(old_after.rotated_at, Some(t(1000)));
        assert_eq!(old_after.expires_at, Some(t(3000)));
        assert_eq!(old_after.status(t(2999)), Status::Active);
        assert_eq!(old_after.status(t(3000)), Status::Expired);
        // Zero grace: over at once. A grace past the old expiry never extends it.
        let (now_over, _) =
            plan_rotation(&old, &new_key, KeyId::generate(t(0)), t(1000), 0).unwrap();
        assert_eq!(now_over.status(t(1000)), Status::Expired);
        let far = 365 * 86_400_000;
        let (capped, _) =
            plan_rotation(&old, &new_key, KeyId::generate(t(0)), t(1000), far).unwrap();
        assert_eq!(capped.expires_at, old.expires_at);
        // Twice, revoked, or a negative grace: refused.
        assert_eq!(
            plan_rotation(&old_after, &new_key, KeyId::generate(t(0)), t(2000), 0),
            Err(RecordError::AlreadyRotated)
        );
        let mut revoked = old.clone();
        revoked.revoke(t(5), None).unwrap();
        assert_eq!(
            plan_rotation(&revoked, &new_key, KeyId::generate(t(0)), t(6), 0),
            Err(RecordError::AlreadyRevoked)
        );
        assert!(matches!(
            plan_rotation(&old, &new_key, KeyId::generate(t(0)), t(6), -1),
            Err(RecordError::Field {
                field: "grace_period",
                ..
            })
        ));
    }

    #[test]
    fn status_names_round_trip() {
        for s in [
            Status::Active,
            Status::Disabled,
            Status::Expired,
            Status::Revoked,
        ] {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
        assert_eq!(Status::parse("Active"), None);
    }
}
