//! Admin-UI sessions, in the store (so that every node behind a load balancer knows them),
//! and the sign-in form's signed token.
//!
//! A session is found by the SHA-256 of its cookie's random token (the token itself is not
//! stored), carries its own CSRF token, and ends after an idle timeout or twelve hours. It
//! holds one-time messages ("flashes"): a new key's plaintext waits there between the form
//! that issued it and the page that shows it, sealed (AES-256-GCM) under a key derived from
//! the session token, which only the browser holds — so the database never holds it
//! readably — and it is deleted as it is shown.

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

/// The sign-in form's token (there is no session yet to tie a CSRF token to): a random nonce
/// and the time it was made, signed with a key every node shares (HMAC-SHA256), so that only
/// tokens keygate issued — recently — are taken; a cookie an attacker plants is not one.
#[derive(Debug)]
pub struct SignInToken;

/// How long a sign-in form's token is good for.
pub const SIGNIN_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

impl SignInToken {
    /// A new token, made at `now`.
    pub fn issue(key: &[u8; 32], now: Timestamp) -> String {
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).expect("the OS random source works");
        let body = format!("{}.{}", URL_SAFE_NO_PAD.encode(nonce), now.unix_ms() / 1000);
        let mac = Self::mac(key, &body);
        format!("{body}.{mac}")
    }

    /// Whether `token` is one issued with `key` less than [`SIGNIN_TOKEN_LIFETIME`] before
    /// `now`.
    pub fn valid(key: &[u8; 32], token: &str, now: Timestamp) -> bool {
        let Some((body, mac)) = token.rsplit_once('.') else {
            return false;
        };
        let Some(issued) = body
            .split_once('.')
            .and_then(|(_, secs)| secs.parse::<i64>().ok())
        else {
            return false;
        };
        let age = now.unix_ms() / 1000 - issued;
        (0..=SIGNIN_TOKEN_LIFETIME.as_secs() as i64).contains(&age)
            && tokens_match(mac, &Self::mac(key, body))
    }

    fn mac(key: &[u8; 32], body: &str) -> String {
        use hmac::{Hmac, KeyInit, Mac};
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("any key length");
        mac.update(body.as_bytes());
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
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
    fn sign_in_tokens_are_ours_recent_and_whole() {
        let key = [7u8; 32];
        let now = Timestamp::from_unix_ms(1_800_000_000_000).unwrap();
        let token = SignInToken::issue(&key, now);
        assert!(SignInToken::valid(&key, &token, now));
        let later = |secs: i64| Timestamp::from_unix_ms(now.unix_ms() + secs * 1000).unwrap();
        assert!(SignInToken::valid(&key, &token, later(3600)));
        assert!(!SignInToken::valid(&key, &token, later(3601)), "too old");
        assert!(
            !SignInToken::valid(&key, &token, later(-1)),
            "from the future"
        );
        assert!(!SignInToken::valid(&[8u8; 32], &token, now), "another key");
        assert!(!SignInToken::valid(&key, &token[..token.len() - 1], now));
        assert!(
            !SignInToken::valid(&key, &random_token(), now),
            "a planted one"
        );
        assert_ne!(
            token,
            SignInToken::issue(&key, now),
            "a fresh nonce each time"
        );
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
