//! The admin web UI's accounts, through [`Keygate::accounts`]: users who sign in with a
//! username and password (their records hold an argon2id hash, made by the server), their
//! sessions, and the sessions' one-time messages. The rules for usernames and passwords are
//! here.

use keygate_core::{Audit, Timestamp};
pub use keygate_store::{AdminSession, AdminUser, Principal};

use crate::Keygate;
use crate::error::Error;

/// Longest username, in bytes.
pub const MAX_USERNAME: usize = 64;
/// Shortest password, in characters.
pub const MIN_PASSWORD: usize = 12;
/// Longest password, in bytes (hashing is deliberately slow; bound the work).
pub const MAX_PASSWORD: usize = 1024;

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

/// The admin UI's accounts in a [`Keygate`]'s store.
#[derive(Debug, Clone, Copy)]
pub struct Accounts<'a>(&'a Keygate);

impl Keygate {
    /// The admin UI's accounts.
    pub fn accounts(&self) -> Accounts<'_> {
        Accounts(self)
    }
}

impl Accounts<'_> {
    /// Adds a user, or replaces the password hash and role of an existing one (keeping its
    /// creation time), with an `admin.password_set` event. The username must pass
    /// [`check_username`].
    pub async fn set_user(&self, user: &AdminUser, audit: &Audit) -> Result<(), Error> {
        check_username(&user.username).map_err(|message| Error::Invalid {
            field: "username",
            message,
        })?;
        self.0
            .store()
            .set_admin_user(user, audit)
            .await
            .map_err(Error::store("set the admin user"))
    }

    /// The user called `username`.
    pub async fn user(&self, username: &str) -> Result<Option<AdminUser>, Error> {
        self.0
            .store()
            .get_admin_user(username)
            .await
            .map_err(Error::store("read the admin user"))
    }

    /// Every user, by name.
    pub async fn users(&self) -> Result<Vec<AdminUser>, Error> {
        self.0
            .store()
            .list_admin_users()
            .await
            .map_err(Error::store("list the admin users"))
    }

    /// Removes user `username` (their sessions end at their next request), with an
    /// `admin.user_removed` event; `false` if there is no such user.
    pub async fn remove_user(&self, username: &str, audit: &Audit) -> Result<bool, Error> {
        self.0
            .store()
            .remove_admin_user(username, self.0.now(), audit)
            .await
            .map_err(Error::store("remove the admin user"))
    }

    /// Stores a new session.
    pub async fn create_session(&self, session: &AdminSession) -> Result<(), Error> {
        self.0
            .store()
            .create_session(session)
            .await
            .map_err(Error::store("start the session"))
    }

    /// The session whose token hashes to `id`.
    pub async fn session(&self, id: &[u8; 32]) -> Result<Option<AdminSession>, Error> {
        self.0
            .store()
            .get_session(id)
            .await
            .map_err(Error::store("read the session"))
    }

    /// Records a request in session `id` at `at`.
    pub async fn touch_session(&self, id: &[u8; 32], at: Timestamp) -> Result<(), Error> {
        self.0
            .store()
            .touch_session(id, at)
            .await
            .map_err(Error::store("record the session's activity"))
    }

    /// Ends session `id` and drops its messages.
    pub async fn end_session(&self, id: &[u8; 32]) -> Result<(), Error> {
        self.0
            .store()
            .end_session(id)
            .await
            .map_err(Error::store("end the session"))
    }

    /// Ends every session idle since before `idle_before` or begun before `begun_before`.
    pub async fn purge_sessions(
        &self,
        idle_before: Timestamp,
        begun_before: Timestamp,
    ) -> Result<u64, Error> {
        self.0
            .store()
            .purge_sessions(idle_before, begun_before)
            .await
            .map_err(Error::store("end old sessions"))
    }

    /// Queues a (sealed) one-time message for session `id`'s next page.
    pub async fn push_flash(&self, id: &[u8; 32], sealed: &str) -> Result<(), Error> {
        self.0
            .store()
            .push_flash(id, sealed)
            .await
            .map_err(Error::store("keep the message"))
    }

    /// Takes session `id`'s messages, oldest first (each is returned once).
    pub async fn take_flashes(&self, id: &[u8; 32]) -> Result<Vec<String>, Error> {
        self.0
            .store()
            .take_flashes(id)
            .await
            .map_err(Error::store("read the messages"))
    }
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
            assert!(
                check_username(bad).is_err_and(|e| e.contains("username")),
                "{bad:?}"
            );
        }
        assert_eq!(
            check_password("short"),
            Err("a password needs at least 12 characters".into())
        );
        assert!(check_password("twelve chars").is_ok());
        assert_eq!(
            check_password(&"p".repeat(1025)),
            Err("a password has at most 1024 bytes".into())
        );
    }
}
