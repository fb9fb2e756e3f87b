//! Points in time (whole milliseconds since the Unix epoch, UTC), lifetimes such as `90d`, and
//! the [`Clock`] that the rest of keygate asks for "now" so that tests can fix it.

use std::fmt;

use ::time::OffsetDateTime;
use ::time::format_description::well_known::Rfc3339;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A point in time, in whole milliseconds since 1970-01-01T00:00:00Z.
///
/// Whole milliseconds so that every store keeps it exactly. Shown and read as RFC 3339.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

/// Earliest accepted time (0001-01-01T00:00:00Z), so that every timestamp has an RFC 3339 form.
pub(crate) const MIN_MS: i64 = -62_135_596_800_000;
/// Latest accepted time (9999-12-31T23:59:59.999Z).
const MAX_MS: i64 = 253_402_300_799_999;

impl Timestamp {
    /// From milliseconds since the epoch; `None` outside years 1–9999.
    pub fn from_unix_ms(ms: i64) -> Option<Self> {
        (MIN_MS..=MAX_MS).contains(&ms).then_some(Self(ms))
    }

    /// Milliseconds since the epoch.
    pub fn unix_ms(self) -> i64 {
        self.0
    }

    /// Parses RFC 3339 (e.g. `2027-01-31T12:00:00Z`, any offset); sub-millisecond digits are cut.
    pub fn parse_rfc3339(text: &str) -> Result<Self, TimeError> {
        let t = OffsetDateTime::parse(text, &Rfc3339).map_err(|_| TimeError::BadTimestamp)?;
        let ms = t.unix_timestamp_nanos().div_euclid(1_000_000);
        i64::try_from(ms)
            .ok()
            .and_then(Self::from_unix_ms)
            .ok_or(TimeError::OutOfRange)
    }

    /// `self + lifetime`, or `None` past year 9999.
    pub fn checked_add(self, lifetime: Lifetime) -> Option<Self> {
        self.0.checked_add(lifetime.0).and_then(Self::from_unix_ms)
    }

    /// HTTP-date (RFC 9110), e.g. `Sun, 06 Nov 1994 08:49:37 GMT`, for headers such as
    /// `Sunset`.
    pub fn to_http_date(self) -> String {
        let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000_000)
            .expect("range checked at construction");
        const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        format!(
            "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
            DAYS[t.weekday().number_days_from_monday() as usize],
            t.day(),
            MONTHS[u8::from(t.month()) as usize - 1],
            t.year(),
            t.hour(),
            t.minute(),
            t.second()
        )
    }

    /// RFC 3339 in UTC with millisecond precision, e.g. `2026-11-29T03:06:31.123Z`.
    pub fn to_rfc3339(self) -> String {
        let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000_000)
            .expect("range checked at construction");
        let ms = self.0.rem_euclid(1000);
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            ms
        )
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse_rfc3339(&text).map_err(serde::de::Error::custom)
    }
}

/// A length of time such as a key's lifetime, in whole milliseconds; written `90d`, `12h`,
/// `30m`, `45s` or `2w`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Lifetime(pub(crate) i64);

impl Lifetime {
    /// Longest lifetime accepted: 100 years.
    pub const MAX: Lifetime = Lifetime(100 * 365 * 86_400_000);

    /// From milliseconds (must be positive and at most [`Lifetime::MAX`]).
    pub fn from_ms(ms: i64) -> Option<Self> {
        (1..=Self::MAX.0).contains(&ms).then_some(Self(ms))
    }

    /// Milliseconds.
    pub fn as_ms(self) -> i64 {
        self.0
    }

    /// Parses `<positive integer><unit>`, unit one of `s`, `m`, `h`, `d`, `w`.
    pub fn parse(text: &str) -> Result<Self, TimeError> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .ok_or(TimeError::BadLifetime)?;
        let (digits, unit) = text.split_at(split);
        if digits.is_empty() || digits.len() > 12 {
            return Err(TimeError::BadLifetime);
        }
        let n: i64 = digits.parse().map_err(|_| TimeError::BadLifetime)?;
        let unit_ms: i64 = match unit {
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            _ => return Err(TimeError::BadLifetime),
        };
        let ms = n.checked_mul(unit_ms).ok_or(TimeError::OutOfRange)?;
        if n == 0 {
            return Err(TimeError::BadLifetime);
        }
        Self::from_ms(ms).ok_or(TimeError::OutOfRange)
    }
}

/// Parses a grace period: `0` (none) or a lifetime such as `24h`; milliseconds.
pub fn parse_grace(text: &str) -> Result<i64, TimeError> {
    match text.trim() {
        "0" | "0s" | "0m" | "0h" | "0d" | "0w" => Ok(0),
        other => Lifetime::parse(other).map(Lifetime::as_ms),
    }
}

/// The largest whole unit: `90d`, `2w`, `12h`, `45s` (or `<n>ms`).
impl fmt::Display for Lifetime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, ms) in [
            ("w", 7 * 86_400_000),
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1_000),
        ] {
            if self.0 % ms == 0 {
                return write!(f, "{}{unit}", self.0 / ms);
            }
        }
        write!(f, "{}ms", self.0)
    }
}

impl Serialize for Lifetime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl std::str::FromStr for Lifetime {
    type Err = TimeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Why a time or lifetime was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeError {
    /// Not an RFC 3339 date-time.
    BadTimestamp,
    /// Not `<positive integer><s|m|h|d|w>`.
    BadLifetime,
    /// Outside the supported range (years 1–9999, lifetimes up to 100 years).
    OutOfRange,
}

impl fmt::Display for TimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::BadTimestamp => "expected an RFC 3339 date-time such as 2027-01-31T12:00:00Z",
            Self::BadLifetime => {
                "expected a positive whole number and a unit (s, m, h, d, w), such as 90d or 12h"
            }
            Self::OutOfRange => "out of range (years 1-9999, lifetimes up to 100 years)",
        })
    }
}

impl std::error::Error for TimeError {}

/// Where "now" comes from. The library's system clock reads the OS; tests use [`FixedClock`].
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// A clock that says what it is told: for tests.
#[derive(Debug)]
pub struct FixedClock(std::sync::atomic::AtomicI64);

impl FixedClock {
    /// A clock stopped at `at`.
    pub fn new(at: Timestamp) -> Self {
        Self(std::sync::atomic::AtomicI64::new(at.0))
    }

    /// Moves the clock to `at`.
    pub fn set(&self, at: Timestamp) {
        self.0.store(at.0, std::sync::atomic::Ordering::SeqCst);
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Lifetime) {
        self.0.fetch_add(by.0, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for FixedClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(std::sync::atomic::Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip_with_milliseconds() {
        let t = Timestamp::parse_rfc3339("2026-11-29T03:06:31.123456+01:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-29T02:06:31.123Z");
        assert_eq!(Timestamp::parse_rfc3339(&t.to_rfc3339()).unwrap(), t);
        let epoch = Timestamp::from_unix_ms(0).unwrap();
        assert_eq!(epoch.to_string(), "1970-01-01T00:00:00.000Z");
        let before = Timestamp::from_unix_ms(-1).unwrap();
        assert_eq!(before.to_string(), "1969-12-31T23:59:59.999Z");
        assert_eq!(
            serde_json::to_string(&epoch).unwrap(),
            "\"1970-01-01T00:00:00.000Z\""
        );
        let back: Timestamp = serde_json::from_str("\"1970-01-01T00:00:00Z\"").unwrap();
        assert_eq!(back, epoch);
    }

    #[test]
    fn http_dates() {
        let t = Timestamp::parse_rfc3339("1994-11-06T08:49:37Z").unwrap();
        assert_eq!(t.to_http_date(), "Sun, 06 Nov 1994 08:49:37 GMT");
    }

    #[test]
    fn bad_timestamps_are_rejected() {
        for bad in [
            "",
            "yesterday",
            "2026-13-01T00:00:00Z",
            "2026-11-29",
            "2026-11-29 03:00:00",
        ] {
            assert_eq!(
                Timestamp::parse_rfc3339(bad),
                Err(TimeError::BadTimestamp),
                "{bad}"
            );
        }
        assert!(Timestamp::from_unix_ms(i64::MAX).is_none());
        assert!(
            serde_json::from_str::<Timestamp>("12")
                .is_err_and(|e| e.to_string().contains("invalid type: integer")),
            "a number is not a time"
        );
    }

    #[test]
    fn lifetimes() {
        assert_eq!(Lifetime::parse("90d").unwrap().as_ms(), 90 * 86_400_000);
        assert_eq!(Lifetime::parse("12h").unwrap().as_ms(), 12 * 3_600_000);
        assert_eq!(Lifetime::parse("30m").unwrap().as_ms(), 1_800_000);
        assert_eq!(Lifetime::parse("45s").unwrap().as_ms(), 45_000);
        assert_eq!(Lifetime::parse("2w").unwrap().as_ms(), 14 * 86_400_000);
        for bad in [
            "", "d", "90", "0d", "-1d", "1.5d", "90 days", "9y", "d90", "１d",
        ] {
            assert_eq!(Lifetime::parse(bad), Err(TimeError::BadLifetime), "{bad}");
        }
        assert_eq!(Lifetime::parse("99999999999d"), Err(TimeError::OutOfRange));
        assert_eq!(Lifetime::parse("36501d"), Err(TimeError::OutOfRange));
        let t = Timestamp::from_unix_ms(MAX_MS - 10).unwrap();
        assert!(t.checked_add(Lifetime::parse("1s").unwrap()).is_none());
    }

    #[test]
    fn lifetimes_print_in_their_largest_unit() {
        for text in ["2w", "90d", "12h", "30m", "45s"] {
            assert_eq!(Lifetime::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(Lifetime::parse("14d").unwrap().to_string(), "2w");
        assert_eq!(Lifetime::from_ms(1500).unwrap().to_string(), "1500ms");
    }

    #[test]
    fn grace_periods() {
        assert_eq!(parse_grace("0"), Ok(0));
        assert_eq!(parse_grace("0h"), Ok(0));
        assert_eq!(parse_grace("24h"), Ok(86_400_000));
        assert_eq!(parse_grace("-1h"), Err(TimeError::BadLifetime));
        assert_eq!(parse_grace("soon"), Err(TimeError::BadLifetime));
    }

    #[test]
    fn fixed_clock_moves_only_when_told() {
        let c = FixedClock::new(Timestamp::from_unix_ms(1000).unwrap());
        assert_eq!(c.now().unix_ms(), 1000);
        c.advance(Lifetime::parse("1s").unwrap());
        assert_eq!(c.now().unix_ms(), 2000);
        c.set(Timestamp::from_unix_ms(5).unwrap());
        assert_eq!(c.now().unix_ms(), 5);
    }
}
