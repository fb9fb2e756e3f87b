//! The records of the admin web UI's accounts, as stored: people who sign in with a username
//! and password, their sessions, and sign-in attempts. The rules about them (what a username
//! may be, how long a lock-out lasts) are the library's; the password itself is never kept
//! (the record holds its argon2id hash, a PHC string).

use keygate_core::{KeyId, Timestamp};

/// An admin-UI user.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminUser {
    /// Sign-in name.
    pub username: String,
    /// argon2id hash of the password, as a PHC string.
    pub password_hash: String,
    /// Sees everything, changes nothing (like a `keygate:read` key).
    pub read_only: bool,
    /// When the user was first set.
    pub created_at: Timestamp,
    /// When the password or role last changed (sessions signed in before are ended).
    pub updated_at: Timestamp,
}

impl std::fmt::Debug for AdminUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminUser")
            .field("username", &self.username)
            .field("password_hash", &"<redacted>")
            .field("read_only", &self.read_only)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .finish()
    }
}

/// Who an admin-UI session belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Signed in with an admin key (`keygate:admin`, or `keygate:read` for a read-only view).
    Key(KeyId),
    /// Signed in with a username and password; the session ends if the user changes after
    /// `since` (a new password or role).
    User {
        /// Username.
        name: String,
        /// The user's `updated_at` at sign-in.
        since: Timestamp,
    },
}

impl Principal {
    /// The stored form: `key:<key id>`, or `user:<updated_at ms>:<username>`.
    pub fn encode(&self) -> String {
        match self {
            Self::Key(id) => format!("key:{id}"),
            Self::User { name, since } => format!("user:{}:{name}", since.unix_ms()),
        }
    }

    /// Reads [`Principal::encode`]'s form.
    pub fn decode(text: &str) -> Option<Self> {
        if let Some(id) = text.strip_prefix("key:") {
            return KeyId::parse(id).map(Self::Key);
        }
        let (since, name) = text.strip_prefix("user:")?.split_once(':')?;
        Some(Self::User {
            name: name.to_owned(),
            since: Timestamp::from_unix_ms(since.parse().ok()?)?,
        })
    }
}

/// An admin-UI session as stored. The session's token lives only in the browser's cookie;
/// the store keeps its SHA-256 as `id`.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminSession {
    /// SHA-256 of the cookie's token.
    pub id: [u8; 32],
    /// Who signed in.
    pub principal: Principal,
    /// The token every state-changing form must carry.
    pub csrf: String,
    /// When the session began.
    pub created_at: Timestamp,
    /// The last request seen (updated at most every few seconds).
    pub last_seen_at: Timestamp,
}

impl std::fmt::Debug for AdminSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminSession")
            .field("principal", &self.principal)
            .field("created_at", &self.created_at)
            .field("last_seen_at", &self.last_seen_at)
            .finish_non_exhaustive()
    }
}

/// Sign-in attempts counted against one subject (an address or a username).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SignInAttempts {
    /// Failures in a row.
    pub failures: u32,
    /// When the last failure was counted.
    pub last_at: Option<Timestamp>,
    /// No attempt is checked before this time.
    pub locked_until: Option<Timestamp>,
    /// Attempts admitted and being checked now.
    pub pending: u32,
    /// When the oldest of them was admitted.
    pub pending_since: Option<Timestamp>,
}

/// How an attempt changes the counts of its subjects: given what is stored for each (in the
/// order asked), what to store for each (`None` removes it). A rule of the library's, run by
/// the store inside one write transaction.
pub type AttemptsPlan<'a> =
    dyn Fn(&[Option<SignInAttempts>]) -> Vec<Option<SignInAttempts>> + Send + Sync + 'a;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_round_trip() {
        let t = Timestamp::from_unix_ms(1_767_225_600_000).unwrap();
        for p in [
            Principal::Key(KeyId::generate(t)),
            Principal::User {
                name: "a:b@c".into(),
                since: t,
            },
        ] {
            assert_eq!(Principal::decode(&p.encode()), Some(p));
        }
        for bad in ["", "key:nope", "user:x:ada", "user:12", "admin:key_x"] {
            assert_eq!(Principal::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn debug_hides_the_hash() {
        let t = Timestamp::from_unix_ms(0).unwrap();
        let user = AdminUser {
            username: "ada".into(),
            password_hash: "$argon2id$v=19$secret".into(),
            read_only: false,
            created_at: t,
            updated_at: t,
        };
        assert!(!format!("{user:?}").contains("argon2id"));
    }
}
