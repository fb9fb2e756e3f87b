//! Admin-UI sessions, in the store (so that every node behind a load balancer knows them),
//! and the sign-in throttle, in this node's memory.
//!
//! A session is found by the SHA-256 of its cookie's random token (the token itself is not
//! stored), carries its own CSRF token, and ends after an idle timeout or twelve hours. It
//! holds one-time messages ("flashes"): a new key's plaintext waits there between the form
//! that issued it and the page that shows it, sealed (AES-256-GCM) under a key derived from
//! the session token, which only the browser holds — so the database never holds it
//! readably — and it is deleted as it is shown.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keygate::Keygate;
use keygate::accounts::AdminSession;
use keygate::core::Timestamp;
use keygate::sealing::SealingKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use keygate::accounts::Principal;

/// The session cookie's name.
pub const COOKIE: &str = "keygate_session";
/// The sign-in form's CSRF cookie (double-submit: there is no session yet).
pub const SIGNIN_COOKIE: &str = "keygate_signin";
/// The longest a session lives, however active.
pub const ABSOLUTE_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// A one-time message for the next page.
#[derive(Debug, Serialize, Deserialize)]
pub enum Flash {
    /// A secret to show exactly once (a new key, a webhook signing secret).
    Secret {
        /// What it is, e.g. "New key".
        title: String,
        /// The secret.
        value: Secret,
        /// The id of the key it is, if it is a key.
        key: Option<String>,
    },
    /// A confirmation such as "Key revoked".
    Notice(String),
}

/// Secret text, held only until shown; `Debug` never shows it.
#[derive(Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps `text`.
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// The secret text, to put in the page that shows it once.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// What a request learns of its session.
#[derive(Clone)]
pub struct SessionView {
    /// The session's id (the hash of its token).
    pub id: [u8; 32],
    /// Who signed in.
    pub principal: Principal,
    /// The token every state-changing form must carry.
    pub csrf: String,
    /// The cookie's token: the key to the session's sealed messages. Never stored.
    token: String,
}

impl std::fmt::Debug for SessionView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionView")
            .field("principal", &self.principal)
            .finish_non_exhaustive()
    }
}

/// Starts, finds and ends sessions in the store.
#[derive(Debug)]
pub struct Sessions {
    idle: Duration,
    last_purge: Mutex<Option<Timestamp>>,
}

/// A random 256-bit token, URL-safe base64.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    URL_SAFE_NO_PAD.encode(bytes)
}

fn id_of(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The key sealing a session's messages: derived from its token, so the store cannot open
/// them.
fn flash_key(token: &str) -> SealingKey {
    let mut hash = Sha256::new();
    hash.update(b"keygate admin flash v1\0");
    hash.update(token.as_bytes());
    SealingKey::from_bytes(hash.finalize().into())
}

/// Whether two tokens are equal, in time independent of where they differ.
pub fn tokens_match(given: &str, expected: &str) -> bool {
    !expected.is_empty() && bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Sessions {
    /// Sessions ending after `idle` without a request.
    pub fn new(idle: Duration) -> Self {
        Self {
            idle,
            last_purge: Mutex::new(None),
        }
    }

    fn alive(&self, session: &AdminSession, now: Timestamp) -> bool {
        now.unix_ms() - session.last_seen_at.unix_ms() < ms(self.idle)
            && now.unix_ms() - session.created_at.unix_ms() < ms(ABSOLUTE_LIFETIME)
    }

    /// Starts a session for `principal` and returns its cookie token (a fresh one: a token
    /// planted before sign-in is never promoted). Clears out dead sessions now and then.
    pub async fn start(
        &self,
        keygate: &Keygate,
        principal: Principal,
    ) -> Result<String, keygate::Error> {
        let now = keygate.now();
        let purge = {
            let mut last = self.last_purge.lock().unwrap_or_else(|p| p.into_inner());
            let due = last.is_none_or(|at| now.unix_ms() - at.unix_ms() >= 60_000);
            if due {
                *last = Some(now);
            }
            due
        };
        let accounts = keygate.accounts();
        if purge {
            let before =
                |d: Duration| Timestamp::from_unix_ms(now.unix_ms() - ms(d)).unwrap_or(now);
            accounts
                .purge_sessions(before(self.idle), before(ABSOLUTE_LIFETIME))
                .await?;
        }
        let token = random_token();
        accounts
            .create_session(&AdminSession {
                id: id_of(&token),
                principal,
                csrf: random_token(),
                created_at: now,
                last_seen_at: now,
            })
            .await?;
        Ok(token)
    }

    /// The live session of `token`, marked as used; an expired one is ended.
    pub async fn find(
        &self,
        keygate: &Keygate,
        token: &str,
    ) -> Result<Option<SessionView>, keygate::Error> {
        let now = keygate.now();
        let accounts = keygate.accounts();
        let id = id_of(token);
        let Some(session) = accounts.session(&id).await? else {
            return Ok(None);
        };
        if !self.alive(&session, now) {
            accounts.end_session(&id).await?;
            return Ok(None);
        }
        // Written at most every quarter of the idle time (and every 30 s), not per request.
        let every = ms(self.idle / 4).min(30_000);
        if now.unix_ms() - session.last_seen_at.unix_ms() >= every {
            accounts.touch_session(&id, now).await?;
        }
        Ok(Some(SessionView {
            id,
            principal: session.principal,
            csrf: session.csrf,
            token: token.to_owned(),
        }))
    }

    /// Ends a session (sign-out, or its principal lost its rights).
    pub async fn end(&self, keygate: &Keygate, id: &[u8; 32]) -> Result<(), keygate::Error> {
        keygate.accounts().end_session(id).await
    }

    /// Queues a message for the session's next page, sealed.
    pub async fn flash(
        &self,
        keygate: &Keygate,
        session: &SessionView,
        flash: &Flash,
    ) -> Result<(), keygate::Error> {
        let text = serde_json::to_string(flash).unwrap_or_default();
        let sealed = flash_key(&session.token).seal(&text);
        keygate.accounts().push_flash(&session.id, &sealed).await
    }

    /// Takes the session's messages: each is shown once. A message that cannot be opened
    /// (it cannot happen without tampering) is dropped.
    pub async fn take_flashes(
        &self,
        keygate: &Keygate,
        session: &SessionView,
    ) -> Result<Vec<Flash>, keygate::Error> {
        let key = flash_key(&session.token);
        Ok(keygate
            .accounts()
            .take_flashes(&session.id)
            .await?
            .iter()
            .filter_map(|sealed| key.open(sealed))
            .filter_map(|text| serde_json::from_str(&text).ok())
            .collect())
    }
}

/// Failed sign-ins allowed from one address before it must wait.
pub const FREE_ATTEMPTS: u32 = 5;
/// The longest wait imposed.
pub const MAX_LOCKOUT: Duration = Duration::from_secs(15 * 60);
/// Failures older than this are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);

#[derive(Debug)]
struct Failures {
    count: u32,
    last: Timestamp,
    locked_until: Option<Timestamp>,
}

/// Slows down guessing: after [`FREE_ATTEMPTS`] failed sign-ins from one address, each
/// further attempt must wait 1 s, then 2 s, 4 s … up to [`MAX_LOCKOUT`]; attempts during the
/// wait are refused without being checked.
#[derive(Debug, Default)]
pub struct Throttle {
    map: Mutex<HashMap<IpAddr, Failures>>,
}

impl Throttle {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Failures>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Err(wait)` while `ip` must wait before trying again.
    pub fn check(&self, ip: IpAddr, now: Timestamp) -> Result<(), Duration> {
        match self.lock().get(&ip).and_then(|f| f.locked_until) {
            Some(until) if until > now => Err(Duration::from_millis(
                (until.unix_ms() - now.unix_ms()).unsigned_abs(),
            )),
            _ => Ok(()),
        }
    }

    /// Counts a failure from `ip`; returns how many in a row and the wait now imposed.
    pub fn failed(&self, ip: IpAddr, now: Timestamp) -> (u32, Option<Duration>) {
        let forget = |last: Timestamp| now.unix_ms() - last.unix_ms() >= ms(FORGET_AFTER);
        let mut map = self.lock();
        if map.len() > 100_000 {
            map.retain(|_, f| !forget(f.last));
        }
        let entry = map.entry(ip).or_insert(Failures {
            count: 0,
            last: now,
            locked_until: None,
        });
        if forget(entry.last) {
            entry.count = 0;
        }
        entry.count += 1;
        entry.last = now;
        let wait = (entry.count >= FREE_ATTEMPTS).then(|| {
            let doublings = (entry.count - FREE_ATTEMPTS).min(20);
            Duration::from_secs(1u64 << doublings).min(MAX_LOCKOUT)
        });
        entry.locked_until = wait.and_then(|w| Timestamp::from_unix_ms(now.unix_ms() + ms(w)));
        (entry.count, wait)
    }

    /// A successful sign-in from `ip` clears its failures.
    pub fn succeeded(&self, ip: IpAddr) {
        self.lock().remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flashes_are_sealed_under_the_session_token() {
        let flash = Flash::Secret {
            title: "New key".into(),
            value: Secret::new("kg_supersecret"),
            key: None,
        };
        let text = serde_json::to_string(&flash).unwrap();
        let sealed = flash_key("token-a").seal(&text);
        assert!(!sealed.contains("supersecret"));
        assert_eq!(
            flash_key("token-a").open(&sealed).as_deref(),
            Some(text.as_str())
        );
        assert_eq!(flash_key("token-b").open(&sealed), None);
    }

    #[test]
    fn throttle_imposes_growing_waits_after_free_attempts() {
        let throttle = Throttle::default();
        let now = Timestamp::from_unix_ms(1_800_000_000_000).unwrap();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for n in 1..FREE_ATTEMPTS {
            assert_eq!(throttle.failed(ip, now), (n, None));
            assert!(throttle.check(ip, now).is_ok());
        }
        assert_eq!(
            throttle.failed(ip, now),
            (FREE_ATTEMPTS, Some(Duration::from_secs(1)))
        );
        assert!(throttle.check(ip, now).is_err());
        assert_eq!(throttle.failed(ip, now).1, Some(Duration::from_secs(2)));
        assert_eq!(throttle.failed(ip, now).1, Some(Duration::from_secs(4)));
        for _ in 0..30 {
            throttle.failed(ip, now);
        }
        assert_eq!(throttle.failed(ip, now).1, Some(MAX_LOCKOUT));
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(throttle.check(other, now).is_ok(), "per address");
        throttle.succeeded(ip);
        assert!(throttle.check(ip, now).is_ok());
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(tokens_match("abc", "abc"));
        assert!(!tokens_match("abd", "abc"));
        assert!(!tokens_match("ab", "abc"));
        assert!(!tokens_match("", ""));
    }

    #[test]
    fn flash_debug_hides_the_secret() {
        let flash = Flash::Secret {
            title: "Webhook secret".into(),
            value: Secret::new("whsec_supersecret"),
            key: None,
        };
        assert!(!format!("{flash:?}").contains("supersecret"));
    }
}
