//! [`KeyGrant`]: what verification needs of a stored key — who holds it, what it may do, and
//! when it works — and nothing else. Verifiers cache grants, not whole records, so a cache of
//! 100,000 keys does not carry display starts, hashes, reasons and times it never reads.

use serde_json::{Map, Value};

use crate::id::KeyId;
use crate::limits::{IpAllowlist, RateLimits};
use crate::record::{KeyRecord, Status};
use crate::time::Timestamp;

/// A key as verification sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyGrant {
    /// Public id.
    pub id: KeyId,
    /// Human name.
    pub name: Box<str>,
    /// The owner's id, if any.
    pub owner: Option<Box<str>>,
    /// What the key may do.
    pub scopes: Box<[String]>,
    /// The API owner's metadata.
    pub metadata: Map<String, Value>,
    /// When it stops working, if ever.
    pub expires_at: Option<Timestamp>,
    /// Revoked (final).
    pub revoked: bool,
    /// A disabled key is refused until enabled again.
    pub enabled: bool,
    /// The key that replaced this one, if it was rotated.
    pub rotated_to: Option<KeyId>,
    /// When it was rotated (its grace period runs from here to `expires_at`).
    pub rotated_at: Option<Timestamp>,
    /// Its rate limits.
    pub rate_limits: RateLimits,
    /// Whose credits it spends (its own, or its successor's after a rotation); `None`: no quota.
    pub quota_payer: Option<KeyId>,
    /// The addresses it may be used from; `None`: anywhere.
    pub allowed_ips: Option<IpAllowlist>,
    /// Its owner's rate limits, shared with the owner's other keys (empty: none).
    pub owner_rate_limits: RateLimits,
}

impl KeyGrant {
    /// The key's status at `now` (the same rule as [`KeyRecord::status`]).
    pub fn status(&self, now: Timestamp) -> Status {
        Status::at(now, self.revoked, self.expires_at, self.enabled)
    }

    /// `(rotated_at, expires_at)` while the key is in a rotation's grace period: its holder
    /// must switch to the successor before `expires_at`.
    pub fn sunset(&self) -> Option<(Timestamp, Timestamp)> {
        match (&self.rotated_to, self.rotated_at, self.expires_at) {
            (Some(_), Some(rotated_at), Some(expires_at)) => Some((rotated_at, expires_at)),
            _ => None,
        }
    }
}

impl From<KeyRecord> for KeyGrant {
    fn from(r: KeyRecord) -> Self {
        let quota_payer = r.limits.quota_payer(&r.id).cloned();
        Self {
            quota_payer,
            rate_limits: r.limits.rate,
            allowed_ips: r.limits.allowed_ips,
            owner_rate_limits: r.limits.owner_rate,
            id: r.id,
            name: r.name.into_boxed_str(),
            owner: r.owner.map(String::into_boxed_str),
            scopes: r.scopes.into_boxed_slice(),
            metadata: r.metadata,
            expires_at: r.expires_at,
            revoked: r.revoked_at.is_some(),
            enabled: r.enabled,
            rotated_to: r.rotated_to,
            rotated_at: r.rotated_at,
        }
    }
}

impl From<&KeyRecord> for KeyGrant {
    fn from(r: &KeyRecord) -> Self {
        Self::from(r.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Prefix;
    use crate::record::{KeySpec, issue};

    #[test]
    fn a_grant_has_its_records_status_at_every_time() {
        let t = |ms| Timestamp::from_unix_ms(ms).unwrap();
        let spec = KeySpec {
            name: "k".into(),
            ..KeySpec::default()
        };
        let (mut record, _) = issue(spec, &Prefix::default(), t(0)).unwrap();
        record.expires_at = Some(t(10));
        for (enabled, revoked) in [(true, false), (false, false), (true, true), (false, true)] {
            record.enabled = enabled;
            record.revoked_at = revoked.then(|| t(1));
            let grant = KeyGrant::from(&record);
            for now in [0, 9, 10, 11] {
                assert_eq!(grant.status(t(now)), record.status(t(now)));
            }
        }
    }
}
