//! The verification decision: [`decide`] holds every rule that turns a stored record, the time
//! and the scopes a route needs into an [`Outcome`].

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::grant::KeyGrant;
use crate::record::Status;
use crate::scope::first_missing;
use crate::time::Timestamp;

/// The result of checking a presented key. Each variant has a stable string [`code`](Outcome::code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Outcome {
    /// The key is good for the requested scopes.
    Valid,
    /// No key was presented.
    Missing,
    /// What was presented is not a well-formed key (length, alphabet, prefix or checksum).
    Malformed,
    /// Well-formed, but no such key exists.
    NotFound,
    /// The key was revoked.
    Revoked,
    /// The key is past its expiry time.
    Expired,
    /// The key is disabled.
    Disabled,
    /// The key is good but lacks a required scope.
    InsufficientScope,
    /// The key (or its owner) is over a rate limit: retry after the time the answer gives.
    RateLimited,
    /// The key's credits are spent until its next refill.
    UsageExceeded,
    /// The request comes from an address the key's allowlist does not name.
    IpNotAllowed,
}

impl Outcome {
    /// Every outcome, in a fixed order.
    pub const ALL: [Outcome; 11] = [
        Self::Valid,
        Self::Missing,
        Self::Malformed,
        Self::NotFound,
        Self::Revoked,
        Self::Expired,
        Self::Disabled,
        Self::InsufficientScope,
        Self::RateLimited,
        Self::UsageExceeded,
        Self::IpNotAllowed,
    ];

    /// The stable code: `VALID`, `MISSING`, `MALFORMED`, `NOT_FOUND`, `REVOKED`, `EXPIRED`,
    /// `DISABLED`, `INSUFFICIENT_SCOPE`, `RATE_LIMITED`, `USAGE_EXCEEDED` or `IP_NOT_ALLOWED`.
    pub fn code(self) -> &'static str {
        match self {
            Self::Valid => "VALID",
            Self::Missing => "MISSING",
            Self::Malformed => "MALFORMED",
            Self::NotFound => "NOT_FOUND",
            Self::Revoked => "REVOKED",
            Self::Expired => "EXPIRED",
            Self::Disabled => "DISABLED",
            Self::InsufficientScope => "INSUFFICIENT_SCOPE",
            Self::RateLimited => "RATE_LIMITED",
            Self::UsageExceeded => "USAGE_EXCEEDED",
            Self::IpNotAllowed => "IP_NOT_ALLOWED",
        }
    }

    /// Whether the key may be used.
    pub fn is_valid(self) -> bool {
        self == Self::Valid
    }

    /// A sentence saying why, safe to show the caller: it never repeats the key. For
    /// `INSUFFICIENT_SCOPE` the scope is named by [`lacks_scope`] instead where it is known.
    pub fn detail(self) -> &'static str {
        match self {
            Self::Valid => "the API key is valid",
            Self::Missing => "no API key was presented",
            Self::Malformed => "the API key is not well-formed",
            Self::NotFound => "no such API key",
            Self::Revoked => "the API key has been revoked",
            Self::Expired => "the API key has expired",
            Self::Disabled => "the API key is disabled",
            Self::InsufficientScope => "the API key lacks a required scope",
            Self::RateLimited => "the API key is over its rate limit; retry later",
            Self::UsageExceeded => "the API key has used up its credits until its next refill",
            Self::IpNotAllowed => "the API key may not be used from this address",
        }
    }

    /// A short human title for the outcome.
    pub fn title(self) -> &'static str {
        match self {
            Self::Valid => "Valid API key",
            Self::Missing => "API key missing",
            Self::Malformed => "Malformed API key",
            Self::NotFound => "Unknown API key",
            Self::Revoked => "API key revoked",
            Self::Expired => "API key expired",
            Self::Disabled => "API key disabled",
            Self::InsufficientScope => "Insufficient scope",
            Self::RateLimited => "Rate limit exceeded",
            Self::UsageExceeded => "Usage exceeded",
            Self::IpNotAllowed => "Address not allowed",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// The detail of an `INSUFFICIENT_SCOPE` refusal that names the missing scope.
pub fn lacks_scope(scope: &str) -> String {
    format!("the API key lacks the scope `{scope}`")
}

/// Decides whether the key `grant` may be used at `now` for `required` scopes.
///
/// Order: revoked, expired, disabled, then scopes. Expiry is checked here and only here, so
/// no path can forget it.
pub fn decide<R: AsRef<str>>(grant: &KeyGrant, now: Timestamp, required: &[R]) -> Outcome {
    match grant.status(now) {
        Status::Revoked => Outcome::Revoked,
        Status::Expired => Outcome::Expired,
        Status::Disabled => Outcome::Disabled,
        Status::Active => match first_missing(&grant.scopes, required) {
            Some(_) => Outcome::InsufficientScope,
            None => Outcome::Valid,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Prefix;
    use crate::record::{KeySpec, issue};

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_unix_ms(ms).unwrap()
    }

    fn record(scopes: &[&str]) -> KeyGrant {
        let spec = KeySpec {
            name: "k".into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            ..KeySpec::default()
        };
        KeyGrant::from(issue(spec, &Prefix::default(), t(0)).unwrap().0)
    }

    const NONE: [&str; 0] = [];

    #[test]
    fn valid_and_scopes() {
        let r = record(&["orders:*"]);
        assert_eq!(decide(&r, t(1), &NONE), Outcome::Valid);
        assert_eq!(decide(&r, t(1), &["orders:read"]), Outcome::Valid);
        assert_eq!(
            decide(&r, t(1), &["users:read"]),
            Outcome::InsufficientScope
        );
        assert_eq!(
            decide(&record(&["*"]), t(1), &["users:read"]),
            Outcome::Valid
        );
        assert_eq!(
            decide(&record(&[]), t(1), &["a"]),
            Outcome::InsufficientScope
        );
    }

    #[test]
    fn expiry_is_exact_to_the_millisecond() {
        let mut r = record(&[]);
        r.expires_at = Some(t(1000));
        assert_eq!(decide(&r, t(999), &NONE), Outcome::Valid);
        assert_eq!(decide(&r, t(1000), &NONE), Outcome::Expired);
        assert_eq!(decide(&r, t(5000), &["x"]), Outcome::Expired);
    }

    #[test]
    fn revoked_beats_expired_beats_disabled_beats_scope() {
        let mut r = record(&[]);
        r.enabled = false;
        assert_eq!(decide(&r, t(1), &["x"]), Outcome::Disabled);
        r.expires_at = Some(t(1));
        assert_eq!(decide(&r, t(1), &["x"]), Outcome::Expired);
        r.revoked = true;
        assert_eq!(decide(&r, t(1), &["x"]), Outcome::Revoked);
    }

    #[test]
    fn codes_are_stable() {
        let codes: Vec<&str> = Outcome::ALL.iter().map(|o| o.code()).collect();
        assert_eq!(
            codes,
            [
                "VALID",
                "MISSING",
                "MALFORMED",
                "NOT_FOUND",
                "REVOKED",
                "EXPIRED",
                "DISABLED",
                "INSUFFICIENT_SCOPE",
                "RATE_LIMITED",
                "USAGE_EXCEEDED",
                "IP_NOT_ALLOWED"
            ]
        );
        for o in Outcome::ALL {
            assert_eq!(
                serde_json::to_string(&o).unwrap(),
                format!("\"{}\"", o.code())
            );
        }
    }
}
