//! The admin web UI's accounts, through [`Keygate::accounts`]: users who sign in with a
//! username and password (their records hold an argon2id hash, made by the server), their
//! sessions, and the sessions' one-time messages. The rules for usernames and passwords are
//! here.

use std::time::Duration;

use keygate_core::{Audit, Timestamp};
pub use keygate_store::{AdminSession, AdminUser, Principal, SignInAttempts};

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

/// Failed sign-ins a subject (an address, a username) may have before each attempt must wait.
pub const FREE_ATTEMPTS: u32 = 5;
/// The longest wait imposed.
pub const MAX_LOCKOUT: Duration = Duration::from_secs(15 * 60);
/// Failures older than this are forgotten.
pub const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);

/// The subject that counts the attempts from an address.
pub fn address_subject(address: std::net::IpAddr) -> String {
    format!("address:{address}")
}

/// The subject that counts the attempts at a username.
pub fn user_subject(username: &str) -> String {
    format!("user:{username}")
}

/// An attempt not finished within this long (its node went away mid-check) no longer holds
/// its subject's turn.
pub const PENDING_FOR: Duration = Duration::from_secs(60);

/// What a sign-in attempt may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Check it (then [`Accounts::finish_sign_in`] it); `failures` is the most failures in a
    /// row any of its subjects has.
    Check {
        /// Failures in a row so far.
        failures: u32,
    },
    /// Refused unchecked: a subject must wait this long.
    Wait(Duration),
}

/// The wait after `failures` failures in a row: none for the first [`FREE_ATTEMPTS`] − 1, then
/// 1 s, 2 s, 4 s … up to [`MAX_LOCKOUT`].
pub fn lockout(failures: u32) -> Option<Duration> {
    (failures >= FREE_ATTEMPTS).then(|| {
        let doublings = (failures - FREE_ATTEMPTS).min(20);
        Duration::from_secs(1u64 << doublings).min(MAX_LOCKOUT)
    })
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn after(at: Timestamp, wait: Duration) -> Option<Timestamp> {
    Timestamp::from_unix_ms(at.unix_ms().saturating_add(ms(wait)))
}

fn until(now: Timestamp, then: Timestamp) -> Duration {
    Duration::from_millis((then.unix_ms() - now.unix_ms()).unsigned_abs())
}

/// A subject's count as it stands at `now`: failures older than [`FORGET_AFTER`] forgotten,
/// pending attempts older than [`PENDING_FOR`] dropped.
fn current(stored: Option<SignInAttempts>, now: Timestamp) -> SignInAttempts {
    let mut a = stored.unwrap_or_default();
    if a.last_at
        .is_none_or(|t| now.unix_ms() - t.unix_ms() >= ms(FORGET_AFTER))
    {
        a.failures = 0;
    }
    if a.pending_since
        .is_none_or(|t| now.unix_ms() - t.unix_ms() >= ms(PENDING_FOR))
    {
        a.pending = 0;
        a.pending_since = None;
    }
    a
}

/// Admits an attempt at `now` against subjects whose counts are `read`, or refuses it
/// unchecked. A subject under a lock-out refuses; so does one whose failures and attempts
/// being checked reach [`FREE_ATTEMPTS`] while one is being checked (past the free attempts,
/// one at a time, each failure lengthening the lock-out). An admitted attempt is counted as
/// pending on each subject. Returns the counts to store and the answer.
pub fn admit(
    read: &[Option<SignInAttempts>],
    now: Timestamp,
) -> (Vec<Option<SignInAttempts>>, Admission) {
    let counts: Vec<SignInAttempts> = read.iter().map(|r| current(*r, now)).collect();
    let mut wait = Duration::ZERO;
    for a in &counts {
        if let Some(then) = a.locked_until.filter(|then| *then > now) {
            wait = wait.max(until(now, then));
        } else if a.pending > 0 && a.failures + a.pending >= FREE_ATTEMPTS {
            wait = wait.max(Duration::from_secs(1));
        }
    }
    if !wait.is_zero() {
        return (read.to_vec(), Admission::Wait(wait));
    }
    let failures = counts.iter().map(|a| a.failures).max().unwrap_or(0);
    let next = counts
        .into_iter()
        .map(|mut a| {
            a.pending += 1;
            a.pending_since.get_or_insert(now);
            Some(a)
        })
        .collect();
    (next, Admission::Check { failures })
}

/// How an admitted attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// The credential was wrong.
    Failed,
    /// The credential was right.
    Succeeded,
    /// It was not checked after all (the node was too busy): it counts for nothing.
    Unchecked,
}

/// Finishes an admitted attempt at `now`: it is no longer pending; a failure counts on every
/// subject and sets its lock-out; a success clears the username's count but leaves the
/// address's failures standing (a valid credential buys no more guesses at another). `read`
/// is (address, then username if any).
pub fn finish(
    read: &[Option<SignInAttempts>],
    now: Timestamp,
    how: Finished,
) -> Vec<Option<SignInAttempts>> {
    read.iter()
        .enumerate()
        .map(|(i, r)| {
            let mut a = current(*r, now);
            a.pending = a.pending.saturating_sub(1);
            if a.pending == 0 {
                a.pending_since = None;
            }
            if how == Finished::Succeeded && i > 0 {
                return None;
            }
            if how == Finished::Failed {
                a.failures += 1;
                a.last_at = Some(now);
                a.locked_until = lockout(a.failures).and_then(|w| after(now, w));
            }
            (a != SignInAttempts::default()).then_some(a)
        })
        .collect()
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

    /// Admits a sign-in attempt against `subjects` (the address first, then the username if
    /// any; see [`admit`]), on every node at once, before the credential is checked.
    pub async fn admit_sign_in(&self, subjects: &[String]) -> Result<Admission, Error> {
        let now = self.0.now();
        let read = self
            .0
            .store()
            .count_sign_in(subjects, &|read: &[Option<SignInAttempts>]| {
                admit(read, now).0
            })
            .await
            .map_err(Error::store("count the sign-in attempt"))?;
        Ok(admit(&read, now).1)
    }

    /// Finishes an admitted attempt against `subjects` (see [`finish`]); returns the lock-out
    /// a failure imposed, if any.
    pub async fn finish_sign_in(
        &self,
        subjects: &[String],
        how: Finished,
    ) -> Result<Option<Duration>, Error> {
        let now = self.0.now();
        let read = self
            .0
            .store()
            .count_sign_in(subjects, &|read: &[Option<SignInAttempts>]| {
                finish(read, now, how)
            })
            .await
            .map_err(Error::store("count the sign-in attempt"))?;
        let locked = finish(&read, now, how)
            .iter()
            .flatten()
            .filter_map(|a| a.locked_until)
            .max();
        Ok(locked.map(|then| until(now, then)))
    }

    /// Forgets sign-in counts that are older than [`FORGET_AFTER`] and lock nothing.
    pub async fn purge_sign_in_counts(&self) -> Result<u64, Error> {
        let now = self.0.now();
        let before =
            Timestamp::from_unix_ms(now.unix_ms() - FORGET_AFTER.as_millis() as i64).unwrap_or(now);
        self.0
            .store()
            .purge_sign_in_counts(before)
            .await
            .map_err(Error::store("forget old sign-in counts"))
    }

    /// The secret called `name` that every node shares: made once, from the OS's random
    /// source, by the first node that asks.
    pub async fn server_secret(&self, name: &str) -> Result<[u8; 32], Error> {
        let mut fresh = [0u8; 32];
        getrandom::fill(&mut fresh).expect("the OS random source works");
        self.0
            .store()
            .server_secret(name, &fresh)
            .await
            .map_err(Error::store("read a server secret"))
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

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_unix_ms(1_800_000_000_000 + ms).unwrap()
    }

    /// One attempt, admitted and finished; the admission.
    fn attempt(stored: &mut Vec<Option<SignInAttempts>>, at: i64, ok: bool) -> Admission {
        let (next, admission) = admit(stored, t(at));
        *stored = next;
        if let Admission::Check { .. } = admission {
            let how = if ok {
                Finished::Succeeded
            } else {
                Finished::Failed
            };
            *stored = finish(stored, t(at), how);
        }
        admission
    }

    #[test]
    fn failures_lock_out_growing_and_are_forgotten() {
        let mut stored = vec![None, None];
        for i in 0..5 {
            let admitted = attempt(&mut stored, i, false);
            assert_eq!(admitted, Admission::Check { failures: i as u32 });
        }
        // Five failures: locked for a second after the fifth, refused unchecked and uncounted.
        assert_eq!(stored[0].unwrap().locked_until, Some(t(4 + 1000)));
        let before = stored.clone();
        let refused = attempt(&mut stored, 500, false);
        assert_eq!(refused, Admission::Wait(Duration::from_millis(504)));
        assert_eq!(stored, before);
        // After the wait one more is checked; failing, it doubles the wait.
        assert_eq!(
            attempt(&mut stored, 1004, false),
            Admission::Check { failures: 5 }
        );
        assert_eq!(stored[1].unwrap().locked_until, Some(t(1004 + 2000)));
        assert_eq!(lockout(100), Some(MAX_LOCKOUT));
        // Forgotten after a quiet spell.
        let quiet = 1004 + ms(FORGET_AFTER);
        assert_eq!(
            attempt(&mut stored, quiet, false),
            Admission::Check { failures: 0 }
        );
    }

    #[test]
    fn a_burst_gets_the_free_attempts_and_no_more() {
        let mut stored = vec![None];
        let mut checked = 0;
        for _ in 0..60 {
            // Sixty at once: each admitted (or not) before any is finished.
            let (next, admission) = admit(&stored, t(0));
            stored = next;
            if let Admission::Check { .. } = admission {
                checked += 1;
            }
        }
        assert_eq!(checked, FREE_ATTEMPTS, "the rest refused unchecked");
        // An attempt not checked after all gives its turn back, counting for nothing.
        let (held, _) = admit(&[None], t(0));
        assert_eq!(finish(&held, t(0), Finished::Unchecked), vec![None]);
        // A node that died mid-check does not hold the subject's turns for ever.
        let (_, later) = admit(&stored, t(ms(PENDING_FOR)));
        assert_eq!(later, Admission::Check { failures: 0 });
    }

    #[test]
    fn a_success_clears_the_user_not_the_address() {
        let mut stored = vec![None, None];
        for i in 0..3 {
            attempt(&mut stored, i, false);
        }
        assert_eq!(
            attempt(&mut stored, 3, true),
            Admission::Check { failures: 3 }
        );
        assert_eq!(
            stored[0].map(|a| a.failures),
            Some(3),
            "the address keeps its failures"
        );
        assert_eq!(stored[1], None, "the user's count is cleared");
        // With a fresh address, a success leaves nothing behind.
        let mut fresh = vec![None];
        attempt(&mut fresh, 0, true);
        assert_eq!(fresh, vec![None]);
    }

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
