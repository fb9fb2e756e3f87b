//! Lifecycle policies: which keys a sweep must act on, decided here so that the CLI's
//! `rotate-due` and the server's scheduler agree, and so that running a sweep twice acts once.

use crate::record::{KeyRecord, Status};
use crate::time::{Lifetime, Timestamp};

/// What to do with a key older than the maximum age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgeAction {
    /// Announce it (`key.max_age_exceeded`), once.
    Notify,
    /// Make it expire after a grace period (and announce it).
    Expire,
    /// Issue its successor, delivered sealed to the webhook endpoints that receive secrets,
    /// and let the old key work for the grace period.
    Rotate,
}

/// The maximum-age policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxAge {
    /// Keys older than this are due.
    pub max_age: Lifetime,
    /// With [`AgeAction::Expire`]: how long a due key keeps working.
    pub grace_ms: i64,
    /// What to do.
    pub action: AgeAction,
}

/// Whether `record` is older than allowed — its own `max_age` if it has one, else the
/// policy's — and still usable (not revoked, expired or rotated: those are handled already).
pub fn past_max_age(record: &KeyRecord, now: Timestamp, policy: &MaxAge) -> bool {
    let usable = matches!(record.status(now), Status::Active | Status::Disabled);
    let limit = record.max_age.unwrap_or(policy.max_age);
    usable
        && record.rotated_to.is_none()
        && now.unix_ms() - record.created_at.unix_ms() >= limit.as_ms()
}

/// With [`AgeAction::Expire`]: the expiry to set, or `None` if the key already expires at or
/// before `now + grace` (so a second sweep changes nothing, and a sweep never extends a key).
pub fn shortened_expiry(record: &KeyRecord, now: Timestamp, grace_ms: i64) -> Option<Timestamp> {
    let end = Timestamp::from_unix_ms(now.unix_ms().saturating_add(grace_ms))?;
    match record.expires_at {
        Some(existing) if existing <= end => None,
        _ => Some(end),
    }
}

/// Whether `record` expires within `warning` of `now` (and has not yet).
pub fn expiring_soon(record: &KeyRecord, now: Timestamp, warning: Lifetime) -> bool {
    record.status(now) == Status::Active
        && record
            .expires_at
            .is_some_and(|e| e.unix_ms() - now.unix_ms() <= warning.as_ms())
}

/// Which keys an incident concerns: every unrevoked key that matches all the filters given.
/// An empty filter matches nothing (revoking every key is not an incident response).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IncidentFilter {
    /// Keys of this owner.
    pub owner: Option<String>,
    /// Keys created before this time.
    pub created_before: Option<Timestamp>,
    /// Keys created at or after this time.
    pub created_after: Option<Timestamp>,
    /// Keys holding a scope that grants this one (`orders:*` matches `orders:write`).
    pub scope: Option<String>,
}

impl IncidentFilter {
    /// Whether no filter is set.
    pub fn is_empty(&self) -> bool {
        self.owner.is_none()
            && self.created_before.is_none()
            && self.created_after.is_none()
            && self.scope.is_none()
    }

    /// Whether `record` is concerned.
    pub fn matches(&self, record: &KeyRecord) -> bool {
        !self.is_empty()
            && record.revoked_at.is_none()
            && self
                .owner
                .as_deref()
                .is_none_or(|o| record.owner.as_deref() == Some(o))
            && self.created_before.is_none_or(|t| record.created_at < t)
            && self.created_after.is_none_or(|t| record.created_at >= t)
            && self.scope.as_deref().is_none_or(|wanted| {
                record
                    .scopes
                    .iter()
                    .any(|held| crate::scope::grants(held, wanted))
            })
    }
}

/// How far back a sweep looks for keys that expired: older expiries were announced by an
/// earlier sweep (or the scheduler was down for longer than this), and checking them again on
/// every sweep would cost an audit lookup per expired key, forever.
pub const EXPIRED_LOOKBACK: Lifetime = Lifetime(7 * 86_400_000);

/// Whether `record` expired (unrevoked) within [`EXPIRED_LOOKBACK`] of `now`.
pub fn expired_recently(record: &KeyRecord, now: Timestamp) -> bool {
    record.status(now) == Status::Expired
        && record
            .expires_at
            .is_some_and(|e| now.unix_ms() - e.unix_ms() <= EXPIRED_LOOKBACK.as_ms())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Prefix;
    use crate::record::{KeySpec, issue};

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_unix_ms(ms).unwrap()
    }

    const DAY: i64 = 86_400_000;

    #[test]
    fn incidents_match_every_filter_given_and_never_all_keys() {
        let spec = KeySpec {
            name: "k".into(),
            owner: Some("acct_1".into()),
            scopes: vec!["orders:*".into()],
            ..KeySpec::default()
        };
        let (mut r, _) = issue(spec, &Prefix::default(), t(1000)).unwrap();
        assert!(
            !IncidentFilter::default().matches(&r),
            "no filter, no match"
        );
        let by = |f: IncidentFilter| f.matches(&r);
        assert!(by(IncidentFilter {
            owner: Some("acct_1".into()),
            ..Default::default()
        }));
        assert!(!by(IncidentFilter {
            owner: Some("acct_2".into()),
            ..Default::default()
        }));
        assert!(by(IncidentFilter {
            scope: Some("orders:write".into()),
            ..Default::default()
        }));
        assert!(!by(IncidentFilter {
            scope: Some("users:read".into()),
            ..Default::default()
        }));
        assert!(by(IncidentFilter {
            created_before: Some(t(1001)),
            ..Default::default()
        }));
        assert!(!by(IncidentFilter {
            created_before: Some(t(1000)),
            ..Default::default()
        }));
        assert!(by(IncidentFilter {
            created_after: Some(t(1000)),
            ..Default::default()
        }));
        assert!(!by(IncidentFilter {
            owner: Some("acct_1".into()),
            created_after: Some(t(1001)),
            ..Default::default()
        }));
        r.revoke(t(2000), None).unwrap();
        assert!(
            !IncidentFilter {
                owner: Some("acct_1".into()),
                ..Default::default()
            }
            .matches(&r)
        );
    }

    #[test]
    fn age_expiry_and_warnings() {
        let spec = KeySpec {
            name: "k".into(),
            ..KeySpec::default()
        };
        let (mut r, _) = issue(spec, &Prefix::default(), t(0)).unwrap();
        let policy = MaxAge {
            max_age: Lifetime::parse("90d").unwrap(),
            grace_ms: 7 * DAY,
            action: AgeAction::Expire,
        };
        assert!(!past_max_age(&r, t(89 * DAY), &policy));
        assert!(past_max_age(&r, t(90 * DAY), &policy));
        let end = shortened_expiry(&r, t(90 * DAY), policy.grace_ms).unwrap();
        assert_eq!(end, t(97 * DAY));
        r.expires_at = Some(end);
        assert_eq!(
            shortened_expiry(&r, t(91 * DAY), policy.grace_ms),
            None,
            "idempotent"
        );
        assert!(expiring_soon(
            &r,
            t(91 * DAY),
            Lifetime::parse("7d").unwrap()
        ));
        assert!(!expiring_soon(
            &r,
            t(80 * DAY),
            Lifetime::parse("7d").unwrap()
        ));
        assert!(
            !past_max_age(&r, t(98 * DAY), &policy),
            "expired keys are done"
        );
        assert!(expired_recently(&r, t(98 * DAY)));
        assert!(
            !expired_recently(&r, t(105 * DAY)),
            "long expired: announced before"
        );
        assert!(!expired_recently(&r, t(96 * DAY)), "not expired yet");
        r.revoke(t(91 * DAY), None).unwrap();
        assert!(!past_max_age(&r, t(92 * DAY), &policy));
        // A key's own maximum age wins over the policy's, either way.
        let spec = KeySpec {
            name: "short".into(),
            max_age: Some(Lifetime::parse("30d").unwrap()),
            ..KeySpec::default()
        };
        let (short, _) = issue(spec, &Prefix::default(), t(0)).unwrap();
        assert!(past_max_age(&short, t(30 * DAY), &policy));
        let spec = KeySpec {
            name: "long".into(),
            max_age: Some(Lifetime::parse("365d").unwrap()),
            ..KeySpec::default()
        };
        let (long, _) = issue(spec, &Prefix::default(), t(0)).unwrap();
        assert!(!past_max_age(&long, t(100 * DAY), &policy));
    }
}
