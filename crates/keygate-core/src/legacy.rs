//! Keys issued by another system and imported into keygate: their shape and their stored hashes.
//!
//! djangorestframework-api-key issues `<prefix>.<secret>` keys — [`DRF_PREFIX_LEN`] and
//! [`DRF_SECRET_LEN`] characters of Django's `get_random_string` alphabet (a-z, A-Z, 0-9) —
//! and stores a hash of the whole key:
//!
//! - 3.x: `sha512$$<hex of SHA-512(key)>`;
//! - 1.x and 2.x: Django's password hasher, `pbkdf2_sha256$<iterations>$<salt>$<base64>`
//!   (slow by design: 600,000 iterations on Django 4.2).
//!
//! An imported key keeps that hash ([`LegacyHash`]) until it is first presented and checked;
//! from then on keygate stores its own SHA-256 index for it (the verifier's "lazy rehash").
//! Every check here is constant-time in the secret. Nothing here prints a key or a hash:
//! `Debug` shows the scheme only.

use std::fmt;
use std::num::NonZeroU32;

use base64::Engine;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

use crate::format::{KeyHash, Prefix};
use crate::record::{KeyRecord, KeySpec, RecordError, issue};
use crate::time::Timestamp;

/// Characters before the `.` of a drf-api-key key.
pub const DRF_PREFIX_LEN: usize = 8;
/// Characters after the `.` of a drf-api-key key.
pub const DRF_SECRET_LEN: usize = 32;
/// Length of a whole drf-api-key key.
pub const DRF_KEY_LEN: usize = DRF_PREFIX_LEN + 1 + DRF_SECRET_LEN;
/// The most PBKDF2 iterations an imported hash may name (Django 6.0 uses 1,200,000): each
/// check of such a key costs that many HMACs, so an absurd count is refused at import.
pub const MAX_PBKDF2_ITERATIONS: u32 = 2_000_000;
/// Longest stored hash accepted at import (a Django PBKDF2 hash is under 100 characters).
pub const MAX_LEGACY_HASH_LEN: usize = 256;

/// The prefix of `presented` if it has drf-api-key's shape (`<8 alnum>.<32 alnum>`), else
/// `None`. Cheap, and never panics.
pub fn drf_prefix(presented: &str) -> Option<&str> {
    let bytes = presented.as_bytes();
    if bytes.len() != DRF_KEY_LEN || bytes[DRF_PREFIX_LEN] != b'.' {
        return None;
    }
    let alnum = |part: &[u8]| part.iter().all(u8::is_ascii_alphanumeric);
    if alnum(&bytes[..DRF_PREFIX_LEN]) && alnum(&bytes[DRF_PREFIX_LEN + 1..]) {
        Some(&presented[..DRF_PREFIX_LEN])
    } else {
        None
    }
}

/// Whether `prefix` can be a drf-api-key prefix (8 of a-z, A-Z, 0-9).
pub fn is_drf_prefix(prefix: &str) -> bool {
    prefix.len() == DRF_PREFIX_LEN && prefix.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Why a stored hash cannot be imported. The reason never contains the hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LegacyHashError {
    /// Not `sha512$$…` or `pbkdf2_sha256$…`: the scheme (the text before the first `$`, if it
    /// looks like a scheme name) is named.
    UnsupportedScheme(String),
    /// The scheme is known but the text is not well-formed.
    Malformed(&'static str),
    /// A PBKDF2 hash with more iterations than [`MAX_PBKDF2_ITERATIONS`] (or none).
    Iterations(u64),
}

impl fmt::Display for LegacyHashError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnsupportedScheme(s) => write!(
                f,
                "unsupported hash scheme `{s}` (supported: sha512 from drf-api-key 3.x, pbkdf2_sha256 from Django)"
            ),
            Self::Malformed(why) => write!(f, "malformed stored hash: {why}"),
            Self::Iterations(n) => write!(
                f,
                "a PBKDF2 hash with {n} iterations (accepted: 1 to {MAX_PBKDF2_ITERATIONS})"
            ),
        }
    }
}

impl std::error::Error for LegacyHashError {}

/// A stored hash of an imported key.
#[derive(Clone, PartialEq, Eq)]
pub enum LegacyHash {
    /// drf-api-key 3.x: SHA-512 of the whole key.
    Sha512([u8; 64]),
    /// Django's `pbkdf2_sha256`: PBKDF2-HMAC-SHA256 of the whole key.
    Pbkdf2Sha256 {
        /// Iterations (1 to [`MAX_PBKDF2_ITERATIONS`]).
        iterations: NonZeroU32,
        /// The salt, as Django stores it (text, used as its UTF-8 bytes).
        salt: String,
        /// The derived bytes.
        derived: Vec<u8>,
    },
}

impl LegacyHash {
    /// Parses a stored hash as drf-api-key wrote it.
    pub fn parse(text: &str) -> Result<Self, LegacyHashError> {
        if text.len() > MAX_LEGACY_HASH_LEN {
            return Err(LegacyHashError::Malformed("longer than any supported hash"));
        }
        if let Some(hex) = text.strip_prefix("sha512$$") {
            let mut digest = [0u8; 64];
            if hex.len() != 128 || !decode_hex(hex, &mut digest) {
                return Err(LegacyHashError::Malformed(
                    "sha512 hash is not 128 hex digits",
                ));
            }
            return Ok(Self::Sha512(digest));
        }
        if let Some(rest) = text.strip_prefix("pbkdf2_sha256$") {
            let mut parts = rest.split('$');
            let (Some(iterations), Some(salt), Some(encoded), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(LegacyHashError::Malformed(
                    "pbkdf2_sha256 hash is not pbkdf2_sha256$<iterations>$<salt>$<hash>",
                ));
            };
            if iterations.is_empty() || !iterations.bytes().all(|b| b.is_ascii_digit()) {
                return Err(LegacyHashError::Malformed(
                    "pbkdf2_sha256 iterations are not a number",
                ));
            }
            let count: u64 = iterations.parse().unwrap_or(u64::MAX);
            let iterations = u32::try_from(count)
                .ok()
                .filter(|n| *n <= MAX_PBKDF2_ITERATIONS)
                .and_then(NonZeroU32::new)
                .ok_or(LegacyHashError::Iterations(count))?;
            if salt.is_empty() {
                return Err(LegacyHashError::Malformed("pbkdf2_sha256 salt is empty"));
            }
            let derived = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|_| LegacyHashError::Malformed("pbkdf2_sha256 hash is not base64"))?;
            if !(16..=64).contains(&derived.len()) {
                return Err(LegacyHashError::Malformed(
                    "pbkdf2_sha256 hash is not 16 to 64 bytes",
                ));
            }
            return Ok(Self::Pbkdf2Sha256 {
                iterations,
                salt: salt.to_owned(),
                derived,
            });
        }
        let scheme = text.split('$').next().unwrap_or_default();
        let named = !scheme.is_empty()
            && scheme.len() <= 32
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        Err(LegacyHashError::UnsupportedScheme(if named {
            scheme.to_owned()
        } else {
            "?".to_owned()
        }))
    }

    /// The scheme's name: `sha512` or `pbkdf2_sha256`.
    pub fn scheme(&self) -> &'static str {
        match self {
            Self::Sha512(_) => "sha512",
            Self::Pbkdf2Sha256 { .. } => "pbkdf2_sha256",
        }
    }

    /// Whether checking a key against this hash is slow by design (PBKDF2): the caller runs
    /// it off its async threads, a few at a time.
    pub fn is_slow(&self) -> bool {
        matches!(self, Self::Pbkdf2Sha256 { .. })
    }

    /// Whether `presented` is the key this hash was made from, in constant time.
    pub fn matches(&self, presented: &str) -> bool {
        match self {
            Self::Sha512(digest) => {
                let computed: [u8; 64] = Sha512::digest(presented.as_bytes()).into();
                computed.ct_eq(digest).into()
            }
            Self::Pbkdf2Sha256 {
                iterations,
                salt,
                derived,
            } => ring::pbkdf2::verify(
                ring::pbkdf2::PBKDF2_HMAC_SHA256,
                *iterations,
                salt.as_bytes(),
                presented.as_bytes(),
                derived,
            )
            .is_ok(),
        }
    }

    /// The text form, as drf-api-key stored it (what keygate stores until the rehash).
    pub fn to_stored(&self) -> String {
        match self {
            Self::Sha512(digest) => {
                let mut text = String::with_capacity(8 + 128);
                text.push_str("sha512$$");
                for b in digest {
                    text.push_str(&format!("{b:02x}"));
                }
                text
            }
            Self::Pbkdf2Sha256 {
                iterations,
                salt,
                derived,
            } => format!(
                "pbkdf2_sha256${iterations}${salt}${}",
                base64::engine::general_purpose::STANDARD.encode(derived)
            ),
        }
    }
}

impl fmt::Debug for LegacyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LegacyHash({}, [redacted])", self.scheme())
    }
}

/// The record of a key imported from another system: `spec` checked by the same rules as an
/// issued key's (name, owner, scopes, metadata), created at `created_at`, revoked at
/// `revoked_at` if it was, shown as `start`, found by `hash` — the key's SHA-256 when the other
/// system stored it (jsonl), else `None`: a random placeholder that no key hashes to, until
/// the key's first successful check replaces it.
pub fn imported_record(
    spec: KeySpec,
    start: String,
    hash: Option<KeyHash>,
    created_at: Timestamp,
    revoked_at: Option<Timestamp>,
) -> Result<KeyRecord, RecordError> {
    let (mut record, _) = issue(spec, &Prefix::default(), created_at)?;
    record.start = start;
    record.hash = hash.unwrap_or_else(placeholder_hash);
    record.revoked_at = revoked_at;
    Ok(record)
}

/// 32 random bytes: a hash no key has (a match would need a SHA-256 preimage).
///
/// # Panics
/// Only if the operating system's random source fails.
pub fn placeholder_hash() -> KeyHash {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random number generator failed");
    KeyHash::from_bytes(bytes)
}

/// A time as Django's databases hold it: `YYYY-MM-DD HH:MM:SS[.ffffff]` in UTC (SQLite, with
/// `USE_TZ`), or RFC 3339 with an offset (PostgreSQL's `timestamptz` as JSON).
pub fn parse_django_time(text: &str) -> Option<Timestamp> {
    let text = text.trim();
    if text.len() < 19 || !text.is_ascii() {
        return None;
    }
    let mut normal = String::with_capacity(text.len() + 1);
    normal.push_str(&text[..10]);
    normal.push('T');
    normal.push_str(&text[11..]);
    let rest = &normal[19..];
    if !(rest.ends_with('Z') || rest.contains('+') || rest.contains('-')) {
        normal.push('Z');
    }
    Timestamp::parse_rfc3339(&normal).ok()
}

fn decode_hex(hex: &str, out: &mut [u8]) -> bool {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let bytes = hex.as_bytes();
    if bytes.len() != out.len() * 2 {
        return false;
    }
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        match (digit(pair[0]), digit(pair[1])) {
            (Some(hi), Some(lo)) => out[i] = hi << 4 | lo,
            _ => return false,
        }
    }
    true
}

/// Parses 64 hex digits (a SHA-256 given in hex, as Unkey-style services export it).
pub fn parse_sha256_hex(hex: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    decode_hex(hex, &mut out).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The vectors below were computed by real Django 5.2.19 and djangorestframework-api-key
    // 3.1.0 (clients/python/.venv), with:
    //
    //   from django.contrib.auth.hashers import PBKDF2PasswordHasher
    //   from rest_framework_api_key.crypto import Sha512ApiKeyHasher
    //   PBKDF2PasswordHasher().encode(KEY, "sQ2mT4pLx9ZbVw1c8KdR0e", 600000)
    //   PBKDF2PasswordHasher().encode(KEY, "seasalt", 1000)
    //   Sha512ApiKeyHasher().encode(KEY, "")
    const KEY: &str = "Ab12Cd34.Ef56Gh78Ij90Kl12Mn34Op56Qr78St90";
    const PBKDF2_600K: &str =
        "pbkdf2_sha256$600000$sQ2mT4pLx9ZbVw1c8KdR0e$nlc8NRuONbyMQKQ3MZfOL099wMdoCtiiA5n9akIUa18=";
    const PBKDF2_1K: &str =
        "pbkdf2_sha256$1000$seasalt$iXA+/rW0MJhJGcM2ZYtMGPxQYoSHzXB278352lZaqvo=";
    const SHA512: &str = "sha512$$5e15f4249a2744c5d25131684e99ba33ad786128576bf542c1eb2fc2491e61ea6004101fd5a781c62afe2c8c23e1f91d687979ff424e74ef171917cb1aa72f53";

    #[test]
    fn drf_shape() {
        assert_eq!(drf_prefix(KEY), Some("Ab12Cd34"));
        for not in [
            "",
            "Ab12Cd34",
            "Ab12Cd34.Ef56Gh78Ij90Kl12Mn34Op56Qr78St9",
            "Ab12Cd34.Ef56Gh78Ij90Kl12Mn34Op56Qr78St901",
            "Ab12Cd3.4Ef56Gh78Ij90Kl12Mn34Op56Qr78St90",
            "Ab12Cd34_Ef56Gh78Ij90Kl12Mn34Op56Qr78St90",
            "Ab12Cd34.Ef56Gh78Ij90Kl12Mn34Op56Qr78St9-",
            "Ab12Cd3é.Ef56Gh78Ij90Kl12Mn34Op56Qr78St9",
            "kg_0123456789012345678901234567890123456789",
        ] {
            assert_eq!(drf_prefix(not), None, "{not:?}");
        }
        assert!(is_drf_prefix("Ab12Cd34"));
        assert!(!is_drf_prefix("Ab12Cd3"));
        assert!(!is_drf_prefix("Ab12Cd3."));
    }

    #[test]
    fn django_vectors_verify_and_wrong_keys_do_not() {
        let wrong = "Ab12Cd34.Ef56Gh78Ij90Kl12Mn34Op56Qr78St91";
        for (stored, scheme, slow) in [
            (PBKDF2_600K, "pbkdf2_sha256", true),
            (PBKDF2_1K, "pbkdf2_sha256", true),
            (SHA512, "sha512", false),
        ] {
            let hash = LegacyHash::parse(stored).unwrap();
            assert_eq!(hash.scheme(), scheme);
            assert_eq!(hash.is_slow(), slow);
            assert!(hash.matches(KEY), "{stored}");
            assert!(!hash.matches(wrong));
            assert!(!hash.matches(""));
            assert_eq!(hash.to_stored(), stored, "round trip");
            let debug = format!("{hash:?}");
            assert!(!debug.contains(&stored[stored.len() - 20..]), "{debug}");
        }
    }

    #[test]
    fn bad_hashes_are_refused_with_reasons_that_never_repeat_them() {
        let cases = [
            (
                "argon2$argon2id$v=19$m=102400,t=2,p=8$c2FsdA$aGFzaA",
                "argon2",
            ),
            ("bcrypt_sha256$$2b$12$abc", "bcrypt_sha256"),
            ("sha512$$abc", "128 hex"),
            ("sha512$$", "128 hex"),
            (
                "pbkdf2_sha256$0$salt$iXA+/rW0MJhJGcM2ZYtMGPxQYoSHzXB278352lZaqvo=",
                "0 iterations",
            ),
            (
                "pbkdf2_sha256$99999999999$salt$iXA+/rW0MJhJGcM2ZYtMGPxQYoSHzXB278352lZaqvo=",
                "99999999999 iterations",
            ),
            (
                "pbkdf2_sha256$2000001$salt$iXA+/rW0MJhJGcM2ZYtMGPxQYoSHzXB278352lZaqvo=",
                "2000001 iterations",
            ),
            ("pbkdf2_sha256$-5$salt$iXA+", "not a number"),
            (
                "pbkdf2_sha256$1000$$iXA+/rW0MJhJGcM2ZYtMGPxQYoSHzXB278352lZaqvo=",
                "salt is empty",
            ),
            ("pbkdf2_sha256$1000$salt$***", "not base64"),
            ("pbkdf2_sha256$1000$salt$aGFzaA==", "16 to 64 bytes"),
            ("pbkdf2_sha256$1000$salt", "pbkdf2_sha256$<iterations>"),
            ("pbkdf2_sha256$1000$a$b$c", "pbkdf2_sha256$<iterations>"),
            ("", "`?`"),
            ("Ab12Cd34.secret", "`?`"),
        ];
        for (text, reason) in cases {
            let error = LegacyHash::parse(text).unwrap_err().to_string();
            assert!(error.contains(reason), "{text:?}: {error}");
            if text.len() > 12 {
                assert!(!error.contains(&text[text.len() - 8..]), "{error}");
            }
        }
        assert!(LegacyHash::parse(&"x".repeat(300)).is_err());
    }

    #[test]
    fn django_times() {
        let t = |s| parse_django_time(s).map(Timestamp::unix_ms);
        assert_eq!(t("2026-01-01 00:00:00"), Some(1_767_225_600_000));
        assert_eq!(t("2026-01-01 00:00:00.123456"), Some(1_767_225_600_123));
        assert_eq!(t("2026-01-01T01:00:00.5+01:00"), Some(1_767_225_600_500));
        assert_eq!(t("2026-01-01T00:00:00Z"), Some(1_767_225_600_000));
        assert_eq!(t("2025-12-31T19:00:00-05:00"), Some(1_767_225_600_000));
        for bad in [
            "",
            "2026-01-01",
            "yesterday",
            "2026-13-01 00:00:00",
            "2026-01-01 00:00:00é",
        ] {
            assert_eq!(t(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn imported_records_follow_the_issue_rules() {
        let at = Timestamp::from_unix_ms(1_767_225_600_000).unwrap();
        let spec = KeySpec {
            name: "legacy".into(),
            ..KeySpec::default()
        };
        let a = imported_record(spec.clone(), "Ab12Cd34".into(), None, at, Some(at)).unwrap();
        let b = imported_record(spec, "Ab12Cd34".into(), None, at, None).unwrap();
        assert_eq!(
            (a.created_at, a.revoked_at, a.start.as_str()),
            (at, Some(at), "Ab12Cd34")
        );
        assert_ne!(a.hash, b.hash, "placeholders are random");
        let known = KeyHash::of("sk_live_abc");
        let c = imported_record(
            KeySpec {
                name: "jsonl".into(),
                ..KeySpec::default()
            },
            "sk_live".into(),
            Some(known),
            at,
            None,
        )
        .unwrap();
        assert_eq!(c.hash, known);
        assert!(imported_record(KeySpec::default(), String::new(), None, at, None).is_err());
    }

    #[test]
    fn sha256_hex() {
        let hex = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        let bytes = parse_sha256_hex(hex).unwrap();
        assert_eq!(bytes[0], 0x9f);
        assert_eq!(bytes[31], 0x08);
        assert!(parse_sha256_hex(&hex[1..]).is_none());
        assert!(parse_sha256_hex(&hex.replace('9', "g")).is_none());
    }
}
