//! Sealing secrets that must rest in the database for a while: a new key that the rotation
//! policy delivers to a webhook waits in the outbox encrypted (AES-256-GCM) under a key kept
//! outside the database (`KEYGATE_SECRET_KEY`), and is opened only by the sender.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

/// Prefix of a sealed payload.
pub const SEALED_PREFIX: &str = "sealed:v1:";

/// The 32-byte sealing key. `Debug` never shows it.
#[derive(Clone)]
pub struct SealingKey([u8; 32]);

impl SealingKey {
    /// From base64 of exactly 32 bytes (e.g. `openssl rand -base64 32`).
    pub fn from_base64(text: &str) -> Result<Self, &'static str> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|_| "the secret key must be base64")?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "the secret key must be 32 bytes (base64 of 32 random bytes)")?;
        Ok(Self(bytes))
    }

    /// From 32 bytes already random (or derived from a random secret).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    fn key(&self) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &self.0).expect("32-byte AES-256 key"))
    }

    /// Encrypts `plaintext`: `sealed:v1:` + base64(nonce ‖ ciphertext ‖ tag).
    ///
    /// # Panics
    /// Only if the operating system's random source fails.
    pub fn seal(&self, plaintext: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("the OS random number generator failed");
        let mut data = plaintext.as_bytes().to_vec();
        self.key()
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut data)
            .expect("AES-GCM sealing of a short message");
        let mut out = nonce.to_vec();
        out.extend(data);
        format!("{SEALED_PREFIX}{}", STANDARD.encode(out))
    }

    /// Decrypts what [`SealingKey::seal`] made; `None` if it is not sealed, or not with this key.
    pub fn open(&self, sealed: &str) -> Option<String> {
        let bytes = STANDARD.decode(sealed.strip_prefix(SEALED_PREFIX)?).ok()?;
        if bytes.len() < NONCE_LEN {
            return None;
        }
        let (nonce, data) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut data = data.to_vec();
        let plain = self
            .key()
            .open_in_place(nonce, Aad::empty(), &mut data)
            .ok()?;
        String::from_utf8(plain.to_vec()).ok()
    }
}

impl fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealingKey([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_only_with_the_same_key() {
        let key = SealingKey::from_base64(&STANDARD.encode([7u8; 32])).unwrap();
        let other = SealingKey::from_base64(&STANDARD.encode([8u8; 32])).unwrap();
        let sealed = key.seal(r#"{"key":"kg_secret"}"#);
        assert!(sealed.starts_with(SEALED_PREFIX));
        assert!(!sealed.contains("kg_secret"));
        assert_ne!(
            sealed,
            key.seal(r#"{"key":"kg_secret"}"#),
            "a fresh nonce each time"
        );
        assert_eq!(key.open(&sealed).as_deref(), Some(r#"{"key":"kg_secret"}"#));
        assert_eq!(other.open(&sealed), None);
        assert_eq!(key.open("plain text"), None);
        assert_eq!(
            SealingKey::from_base64("short").err(),
            Some("the secret key must be base64")
        );
        assert_eq!(
            SealingKey::from_base64("c2hvcnQ=").err(),
            Some("the secret key must be 32 bytes (base64 of 32 random bytes)")
        );
        assert_eq!(format!("{key:?}"), "SealingKey([redacted])");
    }
}
