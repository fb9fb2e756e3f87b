//! Webhooks: endpoint rules, the payloads, and Standard Webhooks signatures
//! (<https://www.standardwebhooks.com>): `webhook-id`, `webhook-timestamp` and
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, keyed by the
//! endpoint's secret `whsec_<base64>`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::audit::{AuditEvent, EventKind};

/// Prefix of a signing secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// A new signing secret: `whsec_` + base64 of 24 random bytes.
///
/// # Panics
/// Only if the operating system's random source fails.
pub fn generate_secret() -> String {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).expect("the OS random number generator failed");
    format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes))
}

/// Checks a signing secret's form; the key bytes on success.
pub fn secret_bytes(secret: &str) -> Option<Vec<u8>> {
    let encoded = secret.strip_prefix(SECRET_PREFIX)?;
    STANDARD.decode(encoded).ok().filter(|b| b.len() >= 16)
}

/// The `webhook-signature` header value for a message, or `None` for a malformed secret.
pub fn sign(secret: &str, message_id: &str, timestamp_s: i64, body: &[u8]) -> Option<String> {
    let key = secret_bytes(secret)?;
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).ok()?;
    mac.update(message_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp_s.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// Checks an endpoint URL: absolute `http` or `https`, at most 2,000 characters.
pub fn check_url(url: &str) -> Result<(), &'static str> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or("the URL must start with https:// (or http://)")?;
    if url.len() > 2000 || rest.is_empty() || rest.starts_with('/') {
        return Err("the URL must name a host, in at most 2,000 characters");
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("the URL must not contain spaces or control characters");
    }
    Ok(())
}

/// Whether an endpoint subscribed to `filter` (event types, or `*`) wants `kind`.
pub fn wants(filter: &[String], kind: EventKind) -> bool {
    filter.iter().any(|f| f == "*" || f == kind.as_str())
}

/// The JSON body for an event: `{"type", "timestamp", "data"}`, or for a Slack-compatible
/// endpoint `{"text": "..."}`.
pub fn payload(event: &AuditEvent, slack: bool) -> Value {
    if slack {
        let key = event.key_id.as_ref().map_or("-", |id| id.as_str());
        json!({"text": format!("keygate: {} {key} by {}", event.kind, event.actor)})
    } else {
        json!({"type": event.kind, "timestamp": event.at, "data": event})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_like_the_standard_webhooks_reference() {
        // The example from the Standard Webhooks specification.
        let signature = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(
            signature.as_deref(),
            Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        );
        assert_eq!(sign("nope", "m", 1, b""), None);
    }

    #[test]
    fn retries_back_off_from_a_second_to_an_hour_and_stop() {
        let waits: Vec<Option<i64>> = (1..=13).map(retry_after_ms).collect();
        assert_eq!(
            &waits[..4],
            [Some(1_000), Some(2_000), Some(4_000), Some(8_000)]
        );
        assert_eq!(waits[10], Some(1_024_000));
        assert_eq!(waits[11], None, "12 attempts in all");
        assert_eq!(retry_after_ms(12), None);
        assert_eq!(retry_after_ms(11), Some(1_024_000));
        assert!(waits.iter().flatten().all(|w| *w <= 3_600_000));
    }

    #[test]
    fn secrets_urls_and_filters() {
        let secret = generate_secret();
        assert!(secret.starts_with("whsec_"));
        assert_eq!(secret_bytes(&secret).map(|b| b.len()), Some(24));
        assert_ne!(secret, generate_secret());
        for ok in [
            "https://hooks.example.com/keygate",
            "http://127.0.0.1:9000/x",
        ] {
            assert!(check_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ftp://x",
            "https://",
            "https:///path",
            "example.com",
            "https://a b",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
        let filter = vec!["key.rotated".to_string()];
        assert!(wants(&filter, EventKind::KeyRotated));
        assert!(!wants(&filter, EventKind::KeyCreated));
        assert!(wants(&["*".to_string()], EventKind::KeyCreated));
    }
}

/// A webhook endpoint: where events go. `Debug` hides the secret.
#[derive(Clone, PartialEq, Eq, serde::Serialize)]
pub struct Endpoint {
    /// `whk_` + ULID.
    pub id: String,
    /// Where deliveries are POSTed.
    pub url: String,
    /// Event types it receives (`*` for all).
    pub events: Vec<String>,
    /// The signing secret (shown once at creation).
    #[serde(skip)]
    pub secret: String,
    /// Send `{"text": ...}` for Slack incoming webhooks instead of the event object.
    pub slack: bool,
    /// A disabled endpoint gets nothing.
    pub enabled: bool,
    /// It also receives the new plaintext keys the rotation policy issues.
    pub receives_secrets: bool,
    /// When it was added.
    pub created_at: crate::Timestamp,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("id", &self.id)
            .field("url", &self.url)
            .field("events", &self.events)
            .field("slack", &self.slack)
            .finish_non_exhaustive()
    }
}

/// Most attempts before a delivery is given up.
pub const MAX_ATTEMPTS: u32 = 12;

/// How long to wait after `attempts` failed attempts (1 or more): 1 s, 2 s, 4 s, … capped at
/// one hour; `None` once [`MAX_ATTEMPTS`] are spent.
pub fn retry_after_ms(attempts: u32) -> Option<i64> {
    (attempts < MAX_ATTEMPTS)
        .then(|| (1_000i64 << attempts.saturating_sub(1).min(22)).min(3_600_000))
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Waiting for its (next) attempt.
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// Given up after [`MAX_ATTEMPTS`].
    Failed,
}

impl DeliveryStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    /// Parses a stored name.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Pending, Self::Delivered, Self::Failed]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// One event on its way to one endpoint (the durable outbox row), with its log.
#[derive(Clone, PartialEq, Eq, serde::Serialize)]
pub struct Delivery {
    /// Outbox position; also the `webhook-id` (`msg_<id>`).
    pub id: i64,
    /// The endpoint.
    pub endpoint_id: String,
    /// The audit event it carries.
    pub event_seq: i64,
    /// The JSON body to POST.
    pub payload: String,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// Attempts made.
    pub attempts: u32,
    /// When the next attempt is due.
    pub next_attempt_at: crate::Timestamp,
    /// The receiver's last HTTP status.
    pub last_status: Option<u16>,
    /// The last error (connection refused, timeout, ...).
    pub last_error: Option<String>,
    /// When it was delivered.
    pub delivered_at: Option<crate::Timestamp>,
    /// The endpoint's URL (for the sender).
    #[serde(skip)]
    pub url: String,
    /// The endpoint's secret (for the sender).
    #[serde(skip)]
    pub secret: String,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("id", &self.id)
            .field("endpoint_id", &self.endpoint_id)
            .field("status", &self.status)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}
