//! People who sign in to the admin web UI with a username and password (rather than an admin
//! key): the rules for a username and a password, and the record kept. The password itself is
//! never kept; the record holds its argon2id hash (a PHC string), made by the server.

use crate::time::Timestamp;

/// Longest username, in bytes.
pub const MAX_USERNAME: usize = 64;
/// Shortest password, in characters.
pub const MIN_PASSWORD: usize = 12;
/// Longest password, in bytes (hashing is deliberately slow; bound the work).
pub const MAX_PASSWORD: usize = 1024;

/// An admin-UI user.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminUser {
    /// Sign-in name: 1–64 of `A–Z a–z 0–9 . _ @ -`.
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
    Key(crate::KeyId),
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
            return crate::KeyId::parse(id).map(Self::Key);
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

/// Checks a username; the error says what is wrong.
pub fn check_username(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_USERNAME {
        return Err(format!("a username has 1 to {MAX_USERNAME} characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'))
    {
        return Err("a username may hold only letters, digits and . _ @ -".into());
    }
    Ok(())
}

/// Checks a new password's length; the error says what is wrong.
pub fn check_password(password: &str) -> Result<(), String> {
    if password.chars().count() < MIN_PASSWORD {
        return Err(format!(
            "a password needs at least {MIN_PASSWORD} characters"
        ));
    }
    if password.len() > MAX_PASSWORD {
        return Err(format!("a password has at most {MAX_PASSWORD} bytes"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_and_passwords() {
        for ok in ["ada", "ops.team", "a_b-c@example.com", &"x".repeat(64)] {
            assert_eq!(check_username(ok), Ok(()), "{ok}");
        }
        for bad in ["", "with space", "ünï", "a/b", &"x".repeat(65), "a\nb"] {
            assert!(check_username(bad).is_err(), "{bad:?}");
        }
        assert!(check_password("short").is_err());
        assert!(check_password("twelve chars").is_ok());
        assert!(check_password(&"p".repeat(1025)).is_err());
    }

    #[test]
    fn principals_round_trip() {
        let t = Timestamp::from_unix_ms(1_767_225_600_000).unwrap();
        for p in [
            Principal::Key(crate::KeyId::generate(t)),
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
