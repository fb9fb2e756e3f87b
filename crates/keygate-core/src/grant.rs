//! [`KeyGrant`]: what verification needs of a stored key — who holds it, what it may do, and
//! when it works — and nothing else. Verifiers cache grants, not whole records, so a cache of
//! 100,000 keys does not carry display starts, hashes, reasons and times it never reads.
//!
//! What few keys have — a rotation, usage controls, metadata — is boxed and absent when
//! empty: an ordinary key's grant is 112 bytes (128 with the `Arc` a cache shares it by),
//! where every field inline made it 232 (248).

use std::sync::LazyLock;

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
    /// When it stops working, if ever.
    pub expires_at: Option<Timestamp>,
    /// Revoked (final).
    pub revoked: bool,
    /// A disabled key is refused until enabled again.
    pub enabled: bool,
    /// The API owner's metadata; `None` when there is none (read it with
    /// [`KeyGrant::metadata()`]).
    pub metadata: Option<Box<Map<String, Value>>>,
    /// Its rotation, if it was rotated (read it with [`KeyGrant::rotated_to`] and
    /// [`KeyGrant::rotated_at`]).
    pub rotation: Option<Box<Rotation>>,
    /// Its usage controls, if it has any (read them with [`KeyGrant::rate_limits`],
    /// [`KeyGrant::quota_payer`], [`KeyGrant::allowed_ips`] and
    /// [`KeyGrant::owner_rate_limits`]).
    pub controls: Option<Box<Controls>>,
}

/// A rotated key's side of its rotation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rotation {
    /// The key that replaced this one.
    pub rotated_to: Option<KeyId>,
    /// When it was rotated (its grace period runs from here to `expires_at`).
    pub rotated_at: Option<Timestamp>,
}

/// What limits a key's use besides its own rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Controls {
    /// Its rate limits.
    pub rate_limits: RateLimits,
    /// Whose credits it spends (its own, or its successor's after a rotation); `None`: no
    /// quota.
    pub quota_payer: Option<KeyId>,
    /// The addresses it may be used from; `None`: anywhere.
    pub allowed_ips: Option<IpAllowlist>,
    /// Its owner's rate limits, shared with the owner's other keys (empty: none).
    pub owner_rate_limits: RateLimits,
}

static NO_RATE_LIMITS: RateLimits = RateLimits::NONE;
static NO_METADATA: LazyLock<Map<String, Value>> = LazyLock::new(Map::new);

impl KeyGrant {
    /// The key's status at `now` (the same rule as [`KeyRecord::status`]).
    pub fn status(&self, now: Timestamp) -> Status {
        Status::at(now, self.revoked, self.expires_at, self.enabled)
    }

    /// `(rotated_at, expires_at)` while the key is in a rotation's grace period: its holder
    /// must switch to the successor before `expires_at`.
    pub fn sunset(&self) -> Option<(Timestamp, Timestamp)> {
        match (self.rotated_to(), self.rotated_at(), self.expires_at) {
            (Some(_), Some(rotated_at), Some(expires_at)) => Some((rotated_at, expires_at)),
            _ => None,
        }
    }

    /// The API owner's metadata (empty if none).
    pub fn metadata(&self) -> &Map<String, Value> {
        self.metadata.as_deref().unwrap_or(&NO_METADATA)
    }

    /// The key that replaced this one, if it was rotated.
    pub fn rotated_to(&self) -> Option<&KeyId> {
        self.rotation.as_ref()?.rotated_to.as_ref()
    }

    /// When it was rotated, if it was.
    pub fn rotated_at(&self) -> Option<Timestamp> {
        self.rotation.as_ref()?.rotated_at
    }

    /// Its rate limits (empty: none).
    pub fn rate_limits(&self) -> &RateLimits {
        self.controls
            .as_ref()
            .map_or(&NO_RATE_LIMITS, |c| &c.rate_limits)
    }

    /// Whose credits it spends (its own, or its successor's after a rotation); `None`: no
    /// quota.
    pub fn quota_payer(&self) -> Option<&KeyId> {
        self.controls.as_ref()?.quota_payer.as_ref()
    }

    /// The addresses it may be used from; `None`: anywhere.
    pub fn allowed_ips(&self) -> Option<&IpAllowlist> {
        self.controls.as_ref()?.allowed_ips.as_ref()
    }

    /// Its owner's rate limits, shared with the owner's other keys (empty: none).
    pub fn owner_rate_limits(&self) -> &RateLimits {
        self.controls
            .as_ref()
            .map_or(&NO_RATE_LIMITS, |c| &c.owner_rate_limits)
    }
}

impl From<KeyRecord> for KeyGrant {
    fn from(r: KeyRecord) -> Self {
        let rotation = Rotation {
            rotated_to: r.rotated_to,
            rotated_at: r.rotated_at,
        };
        let controls = Controls {
            quota_payer: r.limits.quota_payer(&r.id).cloned(),
            rate_limits: r.limits.rate,
            allowed_ips: r.limits.allowed_ips,
            owner_rate_limits: r.limits.owner_rate,
        };
        Self {
            id: r.id,
            name: r.name.into_boxed_str(),
            owner: r.owner.map(String::into_boxed_str),
            scopes: r.scopes.into_boxed_slice(),
            expires_at: r.expires_at,
            revoked: r.revoked_at.is_some(),
            enabled: r.enabled,
            metadata: (!r.metadata.is_empty()).then(|| Box::new(r.metadata)),
            rotation: (rotation != Rotation::default()).then(|| Box::new(rotation)),
            controls: (controls != Controls::default()).then(|| Box::new(controls)),
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
    use crate::limits::Quota;
    use crate::record::{KeySpec, issue};

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_unix_ms(ms).unwrap()
    }

    fn record() -> KeyRecord {
        let spec = KeySpec {
            name: "k".into(),
            ..KeySpec::default()
        };
        issue(spec, &Prefix::default(), t(0)).unwrap().0
    }

    #[test]
    fn a_grant_has_its_records_status_at_every_time() {
        let mut record = record();
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

    type Answers<'a> = (
        (&'a Map<String, Value>, Option<&'a KeyId>, Option<Timestamp>),
        (&'a RateLimits, Option<&'a KeyId>, Option<&'a IpAllowlist>),
        &'a RateLimits,
    );

    /// What a grant answers.
    fn answers(g: &KeyGrant) -> Answers<'_> {
        (
            (g.metadata(), g.rotated_to(), g.rotated_at()),
            (g.rate_limits(), g.quota_payer(), g.allowed_ips()),
            g.owner_rate_limits(),
        )
    }

    /// The same, read from the record.
    fn expected(r: &KeyRecord) -> Answers<'_> {
        (
            (&r.metadata, r.rotated_to.as_ref(), r.rotated_at),
            (
                &r.limits.rate,
                r.limits.quota_payer(&r.id),
                r.limits.allowed_ips.as_ref(),
            ),
            &r.limits.owner_rate,
        )
    }

    /// Which of a grant's parts are held apart: (metadata, rotation, controls).
    fn apart(g: &KeyGrant) -> (bool, bool, bool) {
        (
            g.metadata.is_some(),
            g.rotation.is_some(),
            g.controls.is_some(),
        )
    }

    #[test]
    fn a_grant_answers_as_its_record_and_holds_apart_only_what_the_key_has() {
        let plain = record();
        let grant = KeyGrant::from(&plain);
        assert_eq!(answers(&grant), expected(&plain));
        assert_eq!(apart(&grant), (false, false, false), "an ordinary key");
        assert!(grant.metadata().is_empty() && grant.rate_limits().is_empty());
        assert_eq!(grant.sunset(), None);

        // Each uncommon part on its own, then all of them together.
        let successor = KeyId::generate(t(0));
        let metadata = |r: &mut KeyRecord| {
            r.metadata.insert("plan".into(), Value::from("pro"));
        };
        let rotated = |r: &mut KeyRecord| {
            r.rotated_to = Some(successor.clone());
            r.rotated_at = Some(t(5));
            r.expires_at = Some(t(50));
        };
        let rate = |r: &mut KeyRecord| r.limits.rate = RateLimits::parse("3/1m").unwrap();
        let quota = |r: &mut KeyRecord| r.limits.quota = Some(Quota::new(7, None, t(0)).unwrap());
        let holder = |r: &mut KeyRecord| r.limits.quota_holder = Some(successor.clone());
        let ips = |r: &mut KeyRecord| {
            r.limits.allowed_ips = Some(IpAllowlist::parse(["10.0.0.0/8"]).unwrap());
        };
        let owner = |r: &mut KeyRecord| r.limits.owner_rate = RateLimits::parse("9/1h").unwrap();
        let controls = (false, false, true);
        type Part<'a> = &'a dyn Fn(&mut KeyRecord);
        let parts: [(Part<'_>, _); 7] = [
            (&metadata, (true, false, false)),
            (&rotated, (false, true, false)),
            (&rate, controls),
            (&quota, controls),
            (&holder, controls),
            (&ips, controls),
            (&owner, controls),
        ];
        let mut all = record();
        for (part, held_apart) in parts {
            let mut one = record();
            part(&mut one);
            part(&mut all);
            let grant = KeyGrant::from(&one);
            assert_eq!(answers(&grant), expected(&one));
            assert_eq!(apart(&grant), held_apart);
            let grant = KeyGrant::from(&all);
            assert_eq!(answers(&grant), expected(&all));
        }
        let grant = KeyGrant::from(&all);
        assert_eq!(apart(&grant), (true, true, true));
        assert_eq!(grant.sunset(), Some((t(5), t(50))));
        assert_eq!(grant.quota_payer(), Some(&all.id), "its own quota first");
        assert_eq!(grant.metadata()["plan"], "pro");
    }

    #[test]
    fn an_ordinary_keys_grant_stays_small() {
        // A cache holds one per key in use (100,000 or more), behind an `Arc` (16 bytes
        // more): 128 bytes is one of the allocator's size classes; 129 would take 160.
        assert!(
            std::mem::size_of::<KeyGrant>() <= 112,
            "{}",
            std::mem::size_of::<KeyGrant>()
        );
    }
}
