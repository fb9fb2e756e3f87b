//! The key format: `<prefix>_<secret><checksum>`.
//!
//! - `prefix`: 1–32 lowercase ASCII letters, digits and `_`, starting with a letter and not
//!   ending with `_` (e.g. `kg`, `acme_live`). It tells keys of different services and
//!   environments apart, for people and for secret scanners.
//! - `secret`: [`SECRET_LEN`] base62 characters (0-9A-Za-z) drawn uniformly from the OS CSPRNG:
//!   about 190 bits.
//! - `checksum`: CRC32 of everything before it (`<prefix>_<secret>`), as [`CHECKSUM_LEN`]
//!   base62 characters, zero-padded. It catches typos, lets scanners find leaked keys without
//!   false positives, and lets a verifier reject garbage before any lookup.
//!
//! The body after the last `_` is always [`BODY_LEN`] characters long.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Base62 alphabet, in the order 0-9, A-Z, a-z.
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Number of base62 characters in the secret (32 × log2(62) ≈ 190.5 bits).
pub const SECRET_LEN: usize = 32;
/// Number of base62 characters in the checksum (62⁶ > 2³²).
pub const CHECKSUM_LEN: usize = 6;
/// Length of the body after the last `_`: secret plus checksum.
pub const BODY_LEN: usize = SECRET_LEN + CHECKSUM_LEN;
/// Longest accepted prefix.
pub const MAX_PREFIX_LEN: usize = 32;
/// Longest possible key: anything longer is rejected without further work.
pub const MAX_KEY_LEN: usize = MAX_PREFIX_LEN + 1 + BODY_LEN;
/// Secret characters shown in [`start`] (4 × 5.95 ≈ 24 bits, leaving ≈166 unknown).
pub const START_SECRET_CHARS: usize = 4;
/// The default prefix.
pub const DEFAULT_PREFIX: &str = "kg";

/// A validated key prefix such as `kg` or `acme_live`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Prefix(String);

impl Prefix {
    /// Validates a prefix: 1–32 of `a-z`, `0-9`, `_`; starts with a letter; does not end with `_`.
    pub fn new(prefix: &str) -> Result<Self, ParseError> {
        check_prefix(prefix.as_bytes())?;
        Ok(Self(prefix.to_owned()))
    }

    /// The prefix as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Prefix {
    fn default() -> Self {
        Self(DEFAULT_PREFIX.to_owned())
    }
}

impl fmt::Debug for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Prefix({:?})", self.0)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Prefix {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// Why a presented string is not a well-formed key. The reason never contains the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Nothing was presented.
    Empty,
    /// Longer than any key can be.
    TooLong,
    /// No `_` between prefix and body.
    NoSeparator,
    /// The prefix breaks the prefix rules.
    BadPrefix,
    /// The prefix is well-formed but not the one this deployment issues.
    WrongPrefix,
    /// The body after the last `_` is not [`BODY_LEN`] characters.
    WrongLength,
    /// The body holds a character outside base62.
    BadCharacter,
    /// The checksum does not match: a typo, a truncated copy or a made-up key.
    BadChecksum,
}

impl ParseError {
    /// A human sentence, safe to show to the caller.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Empty => "the key is empty",
            Self::TooLong => "the key is longer than any valid key",
            Self::NoSeparator => "the key has no `_` between prefix and body",
            Self::BadPrefix => {
                "the key prefix must be 1-32 of a-z, 0-9 and `_`, start with a letter and not end with `_`"
            }
            Self::WrongPrefix => "the key prefix is not one this service issues",
            Self::WrongLength => "the key body has the wrong length",
            Self::BadCharacter => "the key body has a character outside 0-9, A-Z, a-z",
            Self::BadChecksum => "the key checksum does not match",
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for ParseError {}

/// A plaintext key, as issued. `Debug` and `Display` show only [`start`]; call
/// [`PlainKey::expose`] to get the secret text, once, to hand it to its holder.
#[derive(Clone, PartialEq, Eq)]
pub struct PlainKey(String);

impl PlainKey {
    /// The full key text. The only way to see the secret.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The display form (prefix and first secret characters).
    pub fn start(&self) -> String {
        start_of(&self.0)
    }

    /// SHA-256 of the whole key, as stored.
    pub fn hash(&self) -> KeyHash {
        KeyHash::of(&self.0)
    }
}

impl fmt::Debug for PlainKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PlainKey({}…[redacted])", self.start())
    }
}

impl fmt::Display for PlainKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}…[redacted]", self.start())
    }
}

/// A presented key that passed [`parse`]: well-formed with a good checksum.
/// `Debug` redacts the secret.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ParsedKey<'a> {
    text: &'a str,
    prefix_len: usize,
}

impl<'a> ParsedKey<'a> {
    /// The prefix (before the last `_`).
    pub fn prefix(&self) -> &'a str {
        &self.text[..self.prefix_len]
    }

    /// SHA-256 of the whole key: what the store is searched by.
    pub fn hash(&self) -> KeyHash {
        KeyHash::of(self.text)
    }

    /// The display form (prefix and first secret characters).
    pub fn start(&self) -> String {
        start_of(self.text)
    }
}

impl fmt::Debug for ParsedKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ParsedKey({}…[redacted])", self.start())
    }
}

/// SHA-256 of a whole key. The only form in which a key is stored.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    /// Hashes a key's full text.
    pub fn of(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }

    /// Wraps 32 stored bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Wraps a stored byte slice; `None` unless it is exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Compares two hashes in constant time.
    pub fn ct_eq(&self, other: &KeyHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash(")?;
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

/// Generates a new key with `prefix`: a uniform random secret from the OS CSPRNG plus checksum.
///
/// # Panics
/// Only if the operating system's random source fails, which leaves no safe way to go on.
pub fn generate(prefix: &Prefix) -> PlainKey {
    let mut text = String::with_capacity(prefix.0.len() + 1 + BODY_LEN);
    text.push_str(&prefix.0);
    text.push('_');
    let mut filled = 0;
    let mut buf = [0u8; 64];
    while filled < SECRET_LEN {
        getrandom::fill(&mut buf).expect("the OS random number generator failed");
        for &b in &buf {
            // 6 bits give 0..64; dropping 62 and 63 keeps the choice uniform (no modulo bias).
            let v = b & 0x3f;
            if v < 62 {
                text.push(ALPHABET[v as usize] as char);
                filled += 1;
                if filled == SECRET_LEN {
                    break;
                }
            }
        }
    }
    let checksum = encode_checksum(crc32fast::hash(text.as_bytes()));
    text.extend(checksum.iter().map(|&b| b as char));
    PlainKey(text)
}

/// Parses a presented key: any well-formed prefix, right body length, base62 body, good checksum.
/// Cheap, allocation-free, and never panics, whatever the input.
pub fn parse(text: &str) -> Result<ParsedKey<'_>, ParseError> {
    let bytes = text.as_bytes();
    if bytes.is_empty() {
        return Err(ParseError::Empty);
    }
    if bytes.len() > MAX_KEY_LEN {
        return Err(ParseError::TooLong);
    }
    let sep = bytes
        .iter()
        .rposition(|&b| b == b'_')
        .ok_or(ParseError::NoSeparator)?;
    check_prefix(&bytes[..sep])?;
    let body = &bytes[sep + 1..];
    if body.len() != BODY_LEN {
        return Err(ParseError::WrongLength);
    }
    if !body.iter().all(u8::is_ascii_alphanumeric) {
        return Err(ParseError::BadCharacter);
    }
    let (signed, checksum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
    if encode_checksum(crc32fast::hash(signed)) != checksum {
        return Err(ParseError::BadChecksum);
    }
    // Every byte checked above is ASCII, so `sep` is a char boundary.
    Ok(ParsedKey {
        text,
        prefix_len: sep,
    })
}

/// [`parse`], and also require the key to carry `expected` as its prefix.
pub fn parse_with_prefix<'a>(
    text: &'a str,
    expected: &Prefix,
) -> Result<ParsedKey<'a>, ParseError> {
    let parsed = parse(text)?;
    if parsed.prefix() != expected.as_str() {
        return Err(ParseError::WrongPrefix);
    }
    Ok(parsed)
}

/// The display form of a key: its prefix, `_` and the first [`START_SECRET_CHARS`] secret
/// characters (e.g. `kg_4fT0`). Safe to store and show: it leaves ≈166 bits unknown.
pub fn start(key: &ParsedKey<'_>) -> String {
    key.start()
}

fn start_of(text: &str) -> String {
    let cut = text
        .rfind('_')
        .map_or(0, |sep| sep + 1 + START_SECRET_CHARS)
        .min(text.len());
    // Only called on generated or parsed keys, which are ASCII.
    text.get(..cut).unwrap_or_default().to_owned()
}

fn check_prefix(prefix: &[u8]) -> Result<(), ParseError> {
    let ok = !prefix.is_empty()
        && prefix.len() <= MAX_PREFIX_LEN
        && prefix[0].is_ascii_lowercase()
        && prefix[prefix.len() - 1] != b'_'
        && prefix
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ParseError::BadPrefix)
    }
}

fn encode_checksum(mut crc: u32) -> [u8; CHECKSUM_LEN] {
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(crc % 62) as usize];
        crc /= 62;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> PlainKey {
        generate(&Prefix::default())
    }

    #[test]
    fn generated_key_has_the_documented_shape() {
        let k = key();
        let text = k.expose();
        assert!(text.starts_with("kg_"));
        assert_eq!(text.len(), 3 + BODY_LEN);
        assert!(text[3..].bytes().all(|b| b.is_ascii_alphanumeric()));
        assert!(parse(text).is_ok());
    }

    #[test]
    fn checksum_is_crc32_of_everything_before_it_in_base62() {
        // CRC32("kg_" + 32 zeros) computed independently, encoded as 6 base62 digits.
        let signed = format!("kg_{}", "0".repeat(SECRET_LEN));
        let crc = crc32fast::hash(signed.as_bytes());
        let mut n = crc as u64;
        let mut digits = Vec::new();
        for _ in 0..CHECKSUM_LEN {
            digits.push(ALPHABET[(n % 62) as usize] as char);
            n /= 62;
        }
        let expected: String = digits.into_iter().rev().collect();
        let key = format!("{signed}{expected}");
        assert!(parse(&key).is_ok());
        assert_eq!(&encode_checksum(0), b"000000");
        assert_eq!(&encode_checksum(61), b"00000z");
        assert_eq!(&encode_checksum(62), b"000010");
        assert_eq!(&encode_checksum(u32::MAX), b"4gfFC3");
    }

    #[test]
    fn keys_are_different_each_time() {
        assert_ne!(key(), key());
    }

    #[test]
    fn secret_characters_are_roughly_uniform() {
        // 2,000 keys × 32 chars = 64,000 draws over 62 symbols: ≈1,032 each.
        let mut counts = [0u32; 62];
        for _ in 0..2000 {
            let k = key();
            for b in k.expose()[3..3 + SECRET_LEN].bytes() {
                let i = ALPHABET.iter().position(|&a| a == b).unwrap();
                counts[i] += 1;
            }
        }
        let expected = 64_000.0 / 62.0;
        let chi2: f64 = counts
            .iter()
            .map(|&c| (c as f64 - expected).powi(2) / expected)
            .sum();
        // 61 degrees of freedom: p = 1e-6 is at about chi² ≈ 125.
        assert!(chi2 < 125.0, "chi² = {chi2}, counts = {counts:?}");
    }

    #[test]
    fn parse_reports_each_reason() {
        let k = key();
        let t = k.expose();
        assert_eq!(parse(""), Err(ParseError::Empty));
        assert_eq!(parse(&"a".repeat(500)), Err(ParseError::TooLong));
        assert_eq!(parse("kgabc"), Err(ParseError::NoSeparator));
        assert_eq!(
            parse(&t.replacen("kg", "KG", 1)),
            Err(ParseError::BadPrefix)
        );
        assert_eq!(parse(&format!("_{}", &t[3..])), Err(ParseError::BadPrefix));
        assert_eq!(
            parse(&format!("9kg_{}", &t[3..])),
            Err(ParseError::BadPrefix)
        );
        assert_eq!(parse(&t[..t.len() - 1]), Err(ParseError::WrongLength));
        assert_eq!(parse(&format!("{t}A")), Err(ParseError::WrongLength));
        let mut bad = t.to_owned();
        bad.replace_range(5..6, "-");
        assert_eq!(parse(&bad), Err(ParseError::BadCharacter));
        let mut bad = t.to_owned();
        bad.replace_range(5..6, "é");
        assert_eq!(parse(&bad), Err(ParseError::WrongLength), "é is two bytes");
        let flipped = flip(t, 10);
        assert_eq!(parse(&flipped), Err(ParseError::BadChecksum));
    }

    #[test]
    fn prefix_rules() {
        for ok in ["kg", "acme_live", "a", "a1_b2", &"a".repeat(32)] {
            assert!(Prefix::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Kg",
            "1kg",
            "_kg",
            "kg_",
            "k-g",
            "kg ",
            &"a".repeat(33),
            "ké",
        ] {
            assert_eq!(Prefix::new(bad), Err(ParseError::BadPrefix), "{bad:?}");
        }
        let p = Prefix::new("acme_live").unwrap();
        let k = generate(&p);
        let parsed = parse(k.expose()).unwrap();
        assert_eq!(parsed.prefix(), "acme_live");
        assert!(parse_with_prefix(k.expose(), &p).is_ok());
        assert_eq!(
            parse_with_prefix(k.expose(), &Prefix::default()),
            Err(ParseError::WrongPrefix)
        );
    }

    #[test]
    fn start_shows_prefix_and_four_secret_chars() {
        let k = generate(&Prefix::new("acme_live").unwrap());
        let s = k.start();
        assert_eq!(s.len(), "acme_live_".len() + START_SECRET_CHARS);
        assert!(k.expose().starts_with(&s));
        assert_eq!(parse(k.expose()).unwrap().start(), s);
    }

    #[test]
    fn debug_and_display_never_show_the_secret() {
        let k = key();
        let secret_tail = &k.expose()[3 + START_SECRET_CHARS..];
        for shown in [
            format!("{k:?}"),
            format!("{k}"),
            format!("{:?}", parse(k.expose()).unwrap()),
            format!("{:?}", k.hash()),
        ] {
            assert!(!shown.contains(secret_tail), "{shown}");
            assert!(!shown.contains(&secret_tail[..8]), "{shown}");
        }
    }

    #[test]
    fn hash_is_sha256_of_the_whole_key() {
        let h = KeyHash::of("abc");
        let hex: String = h.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let k = key();
        assert_eq!(k.hash(), parse(k.expose()).unwrap().hash());
        assert!(k.hash().ct_eq(&k.hash()));
        assert!(!k.hash().ct_eq(&key().hash()));
        assert_eq!(KeyHash::from_slice(&[0u8; 31]), None);
    }

    fn flip(text: &str, i: usize) -> String {
        let mut bytes = text.as_bytes().to_vec();
        let pos = ALPHABET.iter().position(|&a| a == bytes[i]).unwrap();
        bytes[i] = ALPHABET[(pos + 1) % 62];
        String::from_utf8(bytes).unwrap()
    }

    proptest! {
        #[test]
        fn every_generated_key_parses(prefix in "[a-z][a-z0-9_]{0,30}[a-z0-9]") {
            let prefix = Prefix::new(&prefix).unwrap();
            let k = generate(&prefix);
            let parsed = parse(k.expose()).unwrap();
            prop_assert_eq!(parsed.prefix(), prefix.as_str());
            prop_assert_eq!(parsed.hash(), k.hash());
        }

        #[test]
        fn any_single_character_change_fails(pos in 0usize..(3 + BODY_LEN), by in 1usize..62) {
            let k = key();
            let mut bytes = k.expose().as_bytes().to_vec();
            if pos < 2 {
                // Changing the prefix to another valid prefix breaks the checksum too.
                bytes[pos] = b'a' + ((bytes[pos] - b'a') as usize + by) as u8 % 26;
                prop_assume!(bytes[pos] != k.expose().as_bytes()[pos]);
            } else if pos == 2 {
                bytes[pos] = b'x';
            } else {
                let p = ALPHABET.iter().position(|&a| a == bytes[pos]).unwrap();
                bytes[pos] = ALPHABET[(p + by) % 62];
            }
            let changed = String::from_utf8(bytes).unwrap();
            prop_assert!(
                matches!(
                    parse(&changed),
                    Err(ParseError::BadChecksum | ParseError::BadPrefix | ParseError::NoSeparator)
                ),
                "{} still parses",
                changed
            );
        }

        #[test]
        fn parse_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            let text = String::from_utf8_lossy(&bytes);
            let _ = parse(&text);
        }

        #[test]
        fn parse_never_panics_on_near_keys(s in "[a-z_]{0,5}_[0-9A-Za-z\u{80}-\u{10ffff}]{30,45}") {
            let _ = parse(&s);
        }
    }
}
