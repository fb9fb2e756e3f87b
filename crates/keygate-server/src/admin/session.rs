//! Admin-UI sessions and sign-in throttling, kept in this node's memory.
//!
//! A session is found by the SHA-256 of its cookie's random token (the token itself is not
//! kept), carries its own CSRF token, ends after an idle timeout or twelve hours, and holds
//! one-time messages ("flashes"): a new key's plaintext waits there between the form that
//! issued it and the page that shows it, and is gone once shown.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keygate::core::{KeyId, PlainKey, Timestamp};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The session cookie's name.
pub const COOKIE: &str = "keygate_session";
/// The sign-in form's CSRF cookie (double-submit: there is no session yet).
pub const SIGNIN_COOKIE: &str = "keygate_signin";
/// The longest a session lives, however active.
pub const ABSOLUTE_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// Who signed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// With an admin key (`keygate:admin`, or `keygate:read` for a read-only view).
    Key(KeyId),
    /// With a username and password; the session ends if the user changes after `since`.
    User {
        /// Username.
        name: String,
        /// The user's `updated_at` at sign-in.
        since: Timestamp,
    },
}

/// A one-time message for the next page.
pub enum Flash {
    /// A secret to show exactly once (a new key, a webhook signing secret).
    Secret {
        /// What it is, e.g. "New key".
        title: String,
        /// The secret.
        value: PlainSecret,
        /// The key it belongs to, if it is a key.
        key: Option<KeyId>,
    },
    /// A confirmation such as "Key revoked".
    Notice(String),
}

/// A secret held only until shown; `Debug` never shows it.
pub enum PlainSecret {
    /// An API key.
    Key(PlainKey),
    /// Any other secret text.
    Text(String),
}

impl PlainSecret {
    /// The secret text, to put in the page that shows it once.
    pub fn expose(&self) -> &str {
        match self {
            Self::Key(key) => key.expose(),
            Self::Text(text) => text,
        }
    }
}

impl std::fmt::Debug for Flash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Secret { title, key, .. } => f
                .debug_struct("Secret")
                .field("title", title)
                .field("key", key)
                .field("value", &"<redacted>")
                .finish(),
            Self::Notice(text) => f.debug_tuple("Notice").field(text).finish(),
        }
    }
}

#[derive(Debug)]
struct Session {
    principal: Principal,
    csrf: String,
    created: Instant,
    last_seen: Instant,
    flashes: Vec<Flash>,
}

/// What a request learns of its session.
#[derive(Debug, Clone)]
pub struct SessionView {
    /// The session's id (the hash of its token).
    pub id: [u8; 32],
    /// Who signed in.
    pub principal: Principal,
    /// The token every state-changing form must carry.
    pub csrf: String,
}

/// Every session of this node.
#[derive(Debug)]
pub struct Sessions {
    map: Mutex<HashMap<[u8; 32], Session>>,
    idle: Duration,
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

/// Whether two tokens are equal, in time independent of where they differ.
pub fn tokens_match(given: &str, expected: &str) -> bool {
    !expected.is_empty() && bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

impl Sessions {
    /// No sessions; each ends after `idle` without a request.
    pub fn new(idle: Duration) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            idle,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn alive(&self, session: &Session, now: Instant) -> bool {
        now.duration_since(session.last_seen) < self.idle
            && now.duration_since(session.created) < ABSOLUTE_LIFETIME
    }

    /// Starts a session for `principal` and returns its cookie token (a fresh one: a token
    /// planted before sign-in is never promoted).
    pub fn start(&self, principal: Principal) -> String {
        let token = random_token();
        let now = Instant::now();
        let mut map = self.lock();
        map.retain(|_, s| self.alive(s, now));
        map.insert(
            id_of(&token),
            Session {
                principal,
                csrf: random_token(),
                created: now,
                last_seen: now,
                flashes: Vec::new(),
            },
        );
        token
    }

    /// The live session of `token`, marked as used now; an expired one is removed.
    pub fn find(&self, token: &str) -> Option<SessionView> {
        let id = id_of(token);
        let now = Instant::now();
        let mut map = self.lock();
        let session = map.get_mut(&id)?;
        if !self.alive(session, now) {
            map.remove(&id);
            return None;
        }
        session.last_seen = now;
        Some(SessionView {
            id,
            principal: session.principal.clone(),
            csrf: session.csrf.clone(),
        })
    }

    /// Ends a session (sign-out, or its principal lost its rights).
    pub fn end(&self, id: &[u8; 32]) {
        self.lock().remove(id);
    }

    /// Queues a message for the session's next page.
    pub fn flash(&self, id: &[u8; 32], flash: Flash) {
        if let Some(session) = self.lock().get_mut(id) {
            session.flashes.push(flash);
        }
    }

    /// Takes the session's messages: each is shown once.
    pub fn take_flashes(&self, id: &[u8; 32]) -> Vec<Flash> {
        self.lock()
            .get_mut(id)
            .map(|s| std::mem::take(&mut s.flashes))
            .unwrap_or_default()
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
    last: Instant,
    locked_until: Option<Instant>,
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
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        match self.lock().get(&ip).and_then(|f| f.locked_until) {
            Some(until) if until > now => Err(until - now),
            _ => Ok(()),
        }
    }

    /// Counts a failure from `ip`; returns how many in a row and the wait now imposed.
    pub fn failed(&self, ip: IpAddr) -> (u32, Option<Duration>) {
        let now = Instant::now();
        let mut map = self.lock();
        if map.len() > 100_000 {
            map.retain(|_, f| now.duration_since(f.last) < FORGET_AFTER);
        }
        let entry = map.entry(ip).or_insert(Failures {
            count: 0,
            last: now,
            locked_until: None,
        });
        if now.duration_since(entry.last) >= FORGET_AFTER {
            entry.count = 0;
        }
        entry.count += 1;
        entry.last = now;
        let wait = (entry.count >= FREE_ATTEMPTS).then(|| {
            let doublings = (entry.count - FREE_ATTEMPTS).min(20);
            Duration::from_secs(1u64 << doublings).min(MAX_LOCKOUT)
        });
        entry.locked_until = wait.map(|w| now + w);
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
    fn sessions_are_found_by_token_and_ended() {
        let sessions = Sessions::new(Duration::from_secs(60));
        let t = Timestamp::from_unix_ms(0).unwrap();
        let token = sessions.start(Principal::User {
            name: "ada".into(),
            since: t,
        });
        let view = sessions.find(&token).expect("live");
        assert!(sessions.find("not-a-token").is_none());
        assert_eq!(view.csrf.len(), 43);
        sessions.flash(&view.id, Flash::Notice("hello".into()));
        assert_eq!(sessions.take_flashes(&view.id).len(), 1);
        assert!(sessions.take_flashes(&view.id).is_empty(), "shown once");
        sessions.end(&view.id);
        assert!(sessions.find(&token).is_none());
    }

    #[test]
    fn idle_sessions_end() {
        let sessions = Sessions::new(Duration::from_millis(1));
        let token = sessions.start(Principal::Key(KeyId::generate(
            Timestamp::from_unix_ms(0).unwrap(),
        )));
        std::thread::sleep(Duration::from_millis(5));
        assert!(sessions.find(&token).is_none());
    }

    #[test]
    fn throttle_imposes_growing_waits_after_free_attempts() {
        let throttle = Throttle::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for n in 1..FREE_ATTEMPTS {
            assert_eq!(throttle.failed(ip), (n, None));
            assert!(throttle.check(ip).is_ok());
        }
        assert_eq!(
            throttle.failed(ip),
            (FREE_ATTEMPTS, Some(Duration::from_secs(1)))
        );
        assert!(throttle.check(ip).is_err());
        assert_eq!(throttle.failed(ip).1, Some(Duration::from_secs(2)));
        assert_eq!(throttle.failed(ip).1, Some(Duration::from_secs(4)));
        for _ in 0..30 {
            throttle.failed(ip);
        }
        assert_eq!(throttle.failed(ip).1, Some(MAX_LOCKOUT));
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(throttle.check(other).is_ok(), "per address");
        throttle.succeeded(ip);
        assert!(throttle.check(ip).is_ok());
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
            value: PlainSecret::Text("whsec_supersecret".into()),
            key: None,
        };
        assert!(!format!("{flash:?}").contains("supersecret"));
    }
}
