//! The `RateLimit-Policy` and `RateLimit` response headers of draft-ietf-httpapi-ratelimit-headers
//! (the current text, which made them Structured Field lists of named items), and
//! `Retry-After`:
//!
//! ```text
//! RateLimit-Policy: "per_1m";q=100;w=60, "owner:per_1h";q=5000;w=3600
//! RateLimit: "per_1m";r=42;t=17, "owner:per_1h";r=4711;t=1800
//! Retry-After: 17
//! ```
//!
//! An item's name is the limit's name, prefixed `owner:` for an owner's limit (limit names
//! cannot contain `:`, so the two never collide). `q` is the limit, `w` the window in seconds,
//! `r` the units left, `t` the seconds until more are available. They go on every response
//! that went through a limit check, refused or not; `Retry-After` only on a refusal, and it is
//! never earlier than the `t` of a limit that refused.

use super::rate::{Decision, LimitScope, LimitStatus};

/// `RateLimit-Policy`, or `None` when no limit applied.
pub fn ratelimit_policy_header(decision: &Decision) -> Option<String> {
    list(decision, |out, l| {
        out.push_str(";q=");
        push_u64(out, l.limit);
        out.push_str(";w=");
        push_u64(out, l.window.as_secs().into());
    })
}

/// `RateLimit`, or `None` when no limit applied.
pub fn ratelimit_header(decision: &Decision) -> Option<String> {
    list(decision, |out, l| {
        out.push_str(";r=");
        push_u64(out, l.remaining);
        out.push_str(";t=");
        push_u64(out, l.reset);
    })
}

/// `Retry-After` (delay-seconds) when the request was refused.
pub fn retry_after_header(decision: &Decision) -> Option<String> {
    decision.retry_after().map(|s| s.to_string())
}

/// Appends `n` in decimal (what `write!` does, without the formatting machinery: these
/// headers are written on every request of a limited key).
fn push_u64(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

fn list(decision: &Decision, params: impl Fn(&mut String, &LimitStatus)) -> Option<String> {
    if decision.limits().is_empty() {
        return None;
    }
    let mut out = String::with_capacity(32 * decision.limits().len());
    for (i, l) in decision.limits().iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        // Names are [a-z0-9_-]: nothing to escape in a Structured Field string.
        out.push('"');
        if l.scope == LimitScope::Owner {
            out.push_str("owner:");
        }
        out.push_str(l.name.as_str());
        out.push('"');
        params(&mut out, l);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Timestamp;
    use crate::limits::{Group, RateLimit, WindowState, check_groups};

    #[test]
    fn numbers_are_written_as_write_would() {
        for n in [0, 1, 9, 10, 99, 100, 12_345, u64::from(u32::MAX), u64::MAX] {
            let mut out = String::new();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string());
        }
    }

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_unix_ms(1_800_000_000_000 + ms).unwrap()
    }

    #[test]
    fn headers_list_every_limit_of_key_and_owner() {
        let key = [
            RateLimit::parse("100/1m").unwrap(),
            RateLimit::parse("burst=2/1s").unwrap(),
        ];
        let owner = [RateLimit::parse("5000/1h").unwrap()];
        let mut key_states = [WindowState::default(); 2];
        let mut owner_states = [WindowState::default()];
        let mut request = |ms| {
            check_groups(
                &mut [
                    Group {
                        scope: LimitScope::Key,
                        limits: &key,
                        states: &mut key_states,
                    },
                    Group {
                        scope: LimitScope::Owner,
                        limits: &owner,
                        states: &mut owner_states,
                    },
                ],
                1,
                at(ms),
            )
        };
        let d = request(15_000);
        assert_eq!(
            ratelimit_policy_header(&d).unwrap(),
            r#""per_1m";q=100;w=60, "burst";q=2;w=1, "owner:per_1h";q=5000;w=3600"#
        );
        assert_eq!(
            ratelimit_header(&d).unwrap(),
            // One unit used: one more is free only once it has faded out completely, at the
            // end of the next window.
            r#""per_1m";r=99;t=105, "burst";r=1;t=2, "owner:per_1h";r=4999;t=7185"#
        );
        assert_eq!(retry_after_header(&d), None);
        request(15_000);
        let refused = request(15_500);
        assert!(!refused.allowed());
        assert_eq!(retry_after_header(&refused).as_deref(), Some("1"));
        assert_eq!(
            ratelimit_header(&refused).unwrap(),
            // Two used: one more once they weigh one, half-way through the next window.
            r#""per_1m";r=98;t=75, "burst";r=0;t=1, "owner:per_1h";r=4998;t=5385"#
        );
        let burst = &refused.limits()[1];
        assert!(refused.retry_after().unwrap() >= burst.reset);
    }

    #[test]
    fn no_limits_no_headers() {
        let d = Decision::unlimited();
        assert!(d.allowed());
        assert_eq!(ratelimit_policy_header(&d), None);
        assert_eq!(ratelimit_header(&d), None);
        assert_eq!(retry_after_header(&d), None);
    }
}
