//! Public key ids: `key_` followed by a ULID (26 Crockford base32 characters).
//!
//! The id names a key in URLs, the UI, logs and the audit trail; it reveals nothing of the
//! secret. ULIDs sort by creation time, which gives lists a stable newest-first order and
//! makes them a natural pagination cursor.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Timestamp;

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const ID_PREFIX: &str = "key_";
const ULID_LEN: usize = 26;

/// A key's public id, e.g. `key_01JDZ8Q3K5V6W7X8Y9Z0ABCDEF`. Cheap to clone (shared text).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(Arc<str>);

impl KeyId {
    /// A new id for a key created at `at`: 48 bits of time, 80 bits from the OS CSPRNG.
    ///
    /// # Panics
    /// Only if the operating system's random source fails.
    pub fn generate(at: Timestamp) -> Self {
        let mut random = [0u8; 10];
        getrandom::fill(&mut random).expect("the OS random number generator failed");
        let ms = (at.unix_ms().max(0) as u128) & ((1 << 48) - 1);
        let mut value = ms << 80;
        for (i, b) in random.iter().enumerate() {
            value |= u128::from(*b) << (8 * (9 - i));
        }
        let mut text = String::with_capacity(ID_PREFIX.len() + ULID_LEN);
        text.push_str(ID_PREFIX);
        for i in (0..ULID_LEN).rev() {
            text.push(CROCKFORD[((value >> (5 * i)) & 0x1f) as usize] as char);
        }
        Self(text.into())
    }

    /// Parses an id as shown by keygate; `None` if it is not one.
    pub fn parse(text: &str) -> Option<Self> {
        let ulid = text.strip_prefix(ID_PREFIX)?;
        let ok = ulid.len() == ULID_LEN
            // The first character carries only 3 bits (a ULID is 128 bits in 130).
            && matches!(ulid.as_bytes()[0], b'0'..=b'7')
            && ulid.bytes().all(|b| CROCKFORD.contains(&b));
        ok.then(|| Self(text.into()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for KeyId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for KeyId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&text).ok_or_else(|| serde::de::Error::custom("not a key id (key_ + ULID)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_sort_by_time_and_differ() {
        let t1 = Timestamp::from_unix_ms(1_700_000_000_000).unwrap();
        let t2 = Timestamp::from_unix_ms(1_700_000_000_001).unwrap();
        let a = KeyId::generate(t1);
        let b = KeyId::generate(t2);
        assert_eq!(KeyId::parse(a.as_str()), Some(a.clone()));
        assert!(a < b);
        assert_ne!(KeyId::generate(t1), KeyId::generate(t1));
        assert_eq!(a.as_str().len(), 30);
    }

    #[test]
    fn bad_ids_are_rejected() {
        let good = KeyId::generate(Timestamp::from_unix_ms(0).unwrap());
        let text = good.as_str();
        for bad in [
            "",
            "key_",
            &text[4..],
            &text.replace("key_", "kex_"),
            &format!("{text}0"),
            &format!("key_8{}", &text[5..]),
            &format!("key_0{}", &text[5..].replace(|_c: char| true, "I")),
            "key_01JDZ8Q3K5V6W7X8Y9Z0ABCDé",
        ] {
            assert!(KeyId::parse(bad).is_none(), "{bad}");
        }
    }
}
