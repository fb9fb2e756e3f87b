//! Scopes: what a key may do, as strings such as `orders:read`.
//!
//! A scope is one or more segments of `a-z`, `0-9`, `_`, `-`, `.` joined by `:`. A key scope may
//! end in `:*` to grant everything under it (`orders:*` grants `orders:read` and
//! `orders:items:write`, not `orders`), and `*` alone grants every scope but keygate's own.
//!
//! Scopes under `keygate:` are reserved for managing keygate itself: `keygate:admin`
//! (everything), `keygate:read` (list and show keys), `keygate:verify` (only verify) and
//! `keygate:self-rotate` (the key may rotate itself). `*`
//! does not grant them — a client key with `*` for your API must not become a keygate admin —
//! only the exact scope or `keygate:*` does.

/// Reserved scope: every keygate management action.
pub const ADMIN: &str = "keygate:admin";
/// Reserved scope: list and show keys.
pub const READ: &str = "keygate:read";
/// Reserved scope: verify keys (`POST /v1/verify`) and nothing else.
pub const VERIFY: &str = "keygate:verify";
/// Reserved scope: the key may rotate itself (`POST /v1/self/rotate`), e.g. from the holder's
/// own cron job, with no admin in the loop. The successor inherits it.
pub const SELF_ROTATE: &str = "keygate:self-rotate";
/// The reserved namespace.
const RESERVED_PREFIX: &str = "keygate:";

/// What a caller of keygate's own API wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminAction {
    /// Create, update, revoke keys: needs `keygate:admin`.
    Manage,
    /// List and show keys: `keygate:read` or `keygate:admin`.
    Read,
    /// Verify keys: `keygate:verify` or `keygate:admin`.
    Verify,
}

impl AdminAction {
    /// The scopes that allow this action (any one of them).
    pub fn allowed_by(self) -> &'static [&'static str] {
        match self {
            Self::Manage => &[ADMIN],
            Self::Read => &[ADMIN, READ],
            Self::Verify => &[ADMIN, VERIFY],
        }
    }

    /// Whether a key holding `held` may do this.
    pub fn permitted<H: AsRef<str>>(self, held: &[H]) -> bool {
        self.allowed_by()
            .iter()
            .any(|needed| held.iter().any(|h| grants(h.as_ref(), needed)))
    }
}

/// Longest accepted scope.
pub const MAX_SCOPE_LEN: usize = 128;
/// Most scopes one key may hold.
pub const MAX_SCOPES: usize = 64;

/// Checks a scope's syntax; on failure, says why (without echoing it).
pub fn check_scope(scope: &str) -> Result<(), &'static str> {
    if scope.is_empty() {
        return Err("a scope must not be empty");
    }
    if scope.len() > MAX_SCOPE_LEN {
        return Err("a scope must be at most 128 characters");
    }
    if scope == "*" {
        return Ok(());
    }
    let body = scope.strip_suffix(":*").unwrap_or(scope);
    let segment_ok = |s: &str| {
        !s.is_empty()
            && s.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'.')
            })
    };
    if body.split(':').all(segment_ok) {
        Ok(())
    } else {
        Err(
            "a scope is segments of a-z, 0-9, `_`, `-`, `.` joined by `:`, optionally ending in `:*` (or `*` alone)",
        )
    }
}

/// Whether the key scope `held` grants the scope `required`.
pub fn grants(held: &str, required: &str) -> bool {
    if held == required {
        return true;
    }
    if held == "*" {
        return !required.starts_with(RESERVED_PREFIX);
    }
    match held.strip_suffix('*') {
        Some(stem) if stem.ends_with(':') => {
            required.len() > stem.len() && required.starts_with(stem)
        }
        _ => false,
    }
}

/// The first of `required` that none of `held` grants, if any.
pub fn first_missing<'r, H, R>(held: &[H], required: &'r [R]) -> Option<&'r str>
where
    H: AsRef<str>,
    R: AsRef<str>,
{
    required
        .iter()
        .map(AsRef::as_ref)
        .find(|r| !held.iter().any(|h| grants(h.as_ref(), r)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_and_exact_matches() {
        assert!(grants("orders:read", "orders:read"));
        assert!(!grants("orders:read", "orders:write"));
        assert!(grants("orders:*", "orders:read"));
        assert!(grants("orders:*", "orders:items:write"));
        assert!(!grants("orders:*", "orders"));
        assert!(!grants("orders:*", "ordersx:read"));
        assert!(!grants("orders:*", "orders:"));
        assert!(grants("*", "anything:at:all"));
        assert!(grants("*", "keygateway:read"));
        assert!(!grants("orders", "orders:read"));
        assert!(!grants("ord*", "orders"));
    }

    #[test]
    fn reserved_scopes_need_an_explicit_grant() {
        assert!(!grants("*", "keygate:admin"));
        assert!(!grants("*", "keygate:verify"));
        assert!(grants("keygate:*", "keygate:admin"));
        assert!(grants("keygate:admin", "keygate:admin"));
        assert!(AdminAction::Manage.permitted(&["keygate:admin"]));
        assert!(!AdminAction::Manage.permitted(&["keygate:read", "keygate:verify", "*"]));
        assert!(AdminAction::Read.permitted(&["keygate:read"]));
        assert!(AdminAction::Read.permitted(&["keygate:admin"]));
        assert!(!AdminAction::Read.permitted(&["keygate:verify"]));
        assert!(AdminAction::Verify.permitted(&["keygate:verify"]));
        assert!(AdminAction::Verify.permitted(&["keygate:*"]));
        assert!(!AdminAction::Verify.permitted(&["keygate:read", "*", "orders:*"]));
        assert!(!AdminAction::Verify.permitted::<&str>(&[]));
    }

    #[test]
    fn first_missing_names_the_gap() {
        let held = ["orders:read", "users:*"];
        assert_eq!(first_missing(&held, &["orders:read", "users:list"]), None);
        assert_eq!(
            first_missing(&held, &["orders:read", "orders:write"]),
            Some("orders:write")
        );
        assert_eq!(first_missing::<&str, &str>(&[], &[]), None);
        assert_eq!(first_missing::<&str, &str>(&[], &["a"]), Some("a"));
    }

    #[test]
    fn syntax() {
        for ok in [
            "orders:read",
            "*",
            "orders:*",
            "a",
            "keygate:admin",
            "v1.orders:read-all_x",
        ] {
            assert!(check_scope(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(129);
        for bad in [
            "",
            ":",
            "orders:",
            ":read",
            "Orders:read",
            "orders read",
            "*:read",
            "orders:*:x",
            "a::b",
            long.as_str(),
            "ördërs",
        ] {
            assert!(check_scope(bad).is_err(), "{bad}");
        }
    }
}
