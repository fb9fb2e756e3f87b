//! Usage counts: how many requests each key made, by hour, by outcome.
//!
//! A request that names a real key is counted in the hour (UTC) it was checked in: one
//! [`UsageCounts`] per (key, hour). Hours roll up into days (UTC) by [`roll_up`]. A
//! [`UsageRange`] is what a reader gets: `since`/`until` aligned to the bucket, at most
//! [`MAX_HOUR_BUCKETS`] hours or [`MAX_DAY_BUCKETS`] days (a longer range keeps its last ones).
//!
//! ```
//! use keygate_core::usage::{Bucket, UsageCounts, UsageRange, hour_of};
//! use keygate_core::{Outcome, Timestamp};
//!
//! let now = Timestamp::parse_rfc3339("2027-01-31T12:34:56Z").unwrap();
//! assert_eq!(hour_of(now).to_rfc3339(), "2027-01-31T12:00:00.000Z");
//! let mut counts = UsageCounts::default();
//! counts.add(Outcome::Valid, 1);
//! counts.add(Outcome::Revoked, 2);
//! assert_eq!((counts.verified(), counts.refused()), (1, 2));
//! let range = UsageRange::new(None, None, Bucket::Day, now);
//! assert_eq!(range.buckets(), 30);
//! ```

use std::fmt;

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use crate::outcome::Outcome;
use crate::time::Timestamp;

/// One hour, in milliseconds.
pub const HOUR_MS: i64 = 3_600_000;
/// One day, in milliseconds.
pub const DAY_MS: i64 = 24 * HOUR_MS;
/// The most hour buckets one query may span: 31 days.
pub const MAX_HOUR_BUCKETS: i64 = 31 * 24;
/// The most day buckets one query may span: 400 days.
pub const MAX_DAY_BUCKETS: i64 = 400;
/// Hour buckets a query spans when it names no `since`: 7 days.
pub const DEFAULT_HOUR_BUCKETS: i64 = 7 * 24;
/// Day buckets a query spans when it names no `since`: 30 days.
pub const DEFAULT_DAY_BUCKETS: i64 = 30;

/// The outcomes that are counted (those of requests that name a real key), in the order of
/// [`UsageCounts::as_array`]: verified first, rate-limited last, the other refusals between.
pub const COUNTED: [Outcome; 8] = [
    Outcome::Valid,
    Outcome::Revoked,
    Outcome::Expired,
    Outcome::Disabled,
    Outcome::InsufficientScope,
    Outcome::UsageExceeded,
    Outcome::IpNotAllowed,
    Outcome::RateLimited,
];

/// The refusals counted under `refused` (every counted outcome but `VALID` and
/// `RATE_LIMITED`, which have counts of their own).
pub const REFUSALS: [Outcome; 6] = [
    Outcome::Revoked,
    Outcome::Expired,
    Outcome::Disabled,
    Outcome::InsufficientScope,
    Outcome::UsageExceeded,
    Outcome::IpNotAllowed,
];

/// The start of the hour (UTC) that `t` falls in.
pub fn hour_of(t: Timestamp) -> Timestamp {
    floor(t, HOUR_MS)
}

/// The start of the day (UTC) that `t` falls in.
pub fn day_of(t: Timestamp) -> Timestamp {
    floor(t, DAY_MS)
}

fn floor(t: Timestamp, unit: i64) -> Timestamp {
    let ms = t.unix_ms();
    // Rounding down stays within years 1-9999: year 1 starts on a day boundary.
    Timestamp::from_unix_ms(ms - ms.rem_euclid(unit)).expect("a whole hour or day in range")
}

/// Requests in one bucket, by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageCounts([u64; COUNTED.len()]);

impl UsageCounts {
    /// Counts from an array in the order of [`COUNTED`].
    pub fn from_array(counts: [u64; COUNTED.len()]) -> Self {
        Self(counts)
    }

    /// The counts in the order of [`COUNTED`].
    pub fn as_array(&self) -> [u64; COUNTED.len()] {
        self.0
    }

    /// Counts `n` requests with `outcome`; `false` (nothing counted) if it is not one that is
    /// counted (`MISSING`, `MALFORMED` and `NOT_FOUND` name no key).
    pub fn add(&mut self, outcome: Outcome, n: u64) -> bool {
        match COUNTED.iter().position(|o| *o == outcome) {
            Some(i) => {
                self.0[i] = self.0[i].saturating_add(n);
                true
            }
            None => false,
        }
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &UsageCounts) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a = a.saturating_add(b);
        }
    }

    /// Requests with this outcome (0 for one that is not counted).
    pub fn get(&self, outcome: Outcome) -> u64 {
        COUNTED
            .iter()
            .position(|o| *o == outcome)
            .map_or(0, |i| self.0[i])
    }

    /// Requests verified (`VALID`).
    pub fn verified(&self) -> u64 {
        self.0[0]
    }

    /// Requests refused by a rate limit.
    pub fn rate_limited(&self) -> u64 {
        self.0[COUNTED.len() - 1]
    }

    /// Requests refused for any reason but a rate limit.
    pub fn refused(&self) -> u64 {
        REFUSALS
            .iter()
            .fold(0, |sum, o| sum.saturating_add(self.get(*o)))
    }

    /// Every request counted (saturating, as each count does: counts near `u64::MAX` must
    /// not overflow the sum).
    pub fn total(&self) -> u64 {
        self.0.iter().fold(0, |sum, n| sum.saturating_add(*n))
    }

    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|n| *n == 0)
    }
}

/// One bucket of usage: its start and its counts. Serialized as
/// `{"start": …, "verified": n, "refused": {"REVOKED": n, …}, "rate_limited": n}`, every
/// refusal code of [`REFUSALS`] always present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageBucket {
    /// The bucket's first instant (a whole hour or day, UTC).
    pub start: Timestamp,
    /// What was counted in it.
    pub counts: UsageCounts,
}

impl Serialize for UsageBucket {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Refused<'a>(&'a UsageCounts);
        impl Serialize for Refused<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut map = s.serialize_map(Some(REFUSALS.len()))?;
                for o in REFUSALS {
                    map.serialize_entry(o.code(), &self.0.get(o))?;
                }
                map.end()
            }
        }
        let mut map = s.serialize_map(Some(4))?;
        map.serialize_entry("start", &self.start)?;
        map.serialize_entry("verified", &self.counts.verified())?;
        map.serialize_entry("refused", &Refused(&self.counts))?;
        map.serialize_entry("rate_limited", &self.counts.rate_limited())?;
        map.end()
    }
}

/// How wide a bucket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Bucket {
    /// An hour (UTC).
    Hour,
    /// A day (UTC).
    Day,
}

impl Bucket {
    /// `hour` or `day`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hour => "hour",
            Self::Day => "day",
        }
    }

    /// Parses `hour` or `day`.
    pub fn parse(text: &str) -> Result<Self, UsageError> {
        match text {
            "hour" => Ok(Self::Hour),
            "day" => Ok(Self::Day),
            _ => Err(UsageError::BadBucket),
        }
    }

    /// The width in milliseconds.
    pub fn width_ms(self) -> i64 {
        match self {
            Self::Hour => HOUR_MS,
            Self::Day => DAY_MS,
        }
    }

    /// The most buckets one query may span.
    pub fn max_buckets(self) -> i64 {
        match self {
            Self::Hour => MAX_HOUR_BUCKETS,
            Self::Day => MAX_DAY_BUCKETS,
        }
    }

    fn default_buckets(self) -> i64 {
        match self {
            Self::Hour => DEFAULT_HOUR_BUCKETS,
            Self::Day => DEFAULT_DAY_BUCKETS,
        }
    }

    /// The start of the bucket `t` falls in.
    pub fn start_of(self, t: Timestamp) -> Timestamp {
        floor(t, self.width_ms())
    }
}

impl fmt::Display for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a usage query was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageError {
    /// `bucket` is neither `hour` nor `day`.
    BadBucket,
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadBucket => f.write_str("must be `hour` or `day`"),
        }
    }
}

impl std::error::Error for UsageError {}

/// A range of buckets to read: `[since, until)`, both on bucket boundaries, at most
/// [`Bucket::max_buckets`] buckets long (possibly none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageRange {
    since: Timestamp,
    until: Timestamp,
    bucket: Bucket,
}

impl UsageRange {
    /// The range asked for, made one that can be answered — any two times can:
    ///
    /// - `until` (exclusive; default: `now`) is rounded up to a bucket boundary (down, at the
    ///   end of year 9999);
    /// - `since` (default: [`DEFAULT_HOUR_BUCKETS`] or [`DEFAULT_DAY_BUCKETS`] buckets before
    ///   `until`) is rounded down to its bucket;
    /// - a range longer than [`Bucket::max_buckets`] keeps its last buckets (those before
    ///   `until`): `since` moves forward;
    /// - `since` at or after `until` is an empty range (no buckets).
    ///
    /// The range's own [`since`](Self::since) and [`until`](Self::until) say what was taken.
    pub fn new(
        since: Option<Timestamp>,
        until: Option<Timestamp>,
        bucket: Bucket,
        now: Timestamp,
    ) -> Self {
        let width = bucket.width_ms();
        let at = |ms: i64| Timestamp::from_unix_ms(ms);
        let until = until.unwrap_or(now);
        let until = match until.unix_ms().rem_euclid(width) {
            0 => until,
            r => at(until.unix_ms() + (width - r)).unwrap_or_else(|| bucket.start_of(until)),
        };
        let earliest = |buckets: i64| {
            // Year 1 begins on a day boundary: the earliest instant is a bucket start.
            let ms = until.unix_ms().saturating_sub(buckets * width);
            at(ms.max(crate::time::MIN_MS)).expect("within years 1-9999")
        };
        let since = match since {
            Some(s) => bucket.start_of(s).max(earliest(bucket.max_buckets())),
            None => earliest(bucket.default_buckets()),
        };
        Self {
            since: since.min(until),
            until,
            bucket,
        }
    }

    /// The first instant in the range.
    pub fn since(&self) -> Timestamp {
        self.since
    }

    /// The first instant after the range.
    pub fn until(&self) -> Timestamp {
        self.until
    }

    /// The bucket width.
    pub fn bucket(&self) -> Bucket {
        self.bucket
    }

    /// How many buckets the range spans.
    pub fn buckets(&self) -> i64 {
        (self.until.unix_ms() - self.since.unix_ms()) / self.bucket.width_ms()
    }
}

/// Checks an owner id asked about (the rule a key's `owner` follows: 1–200 characters, not
/// only white space, no control characters).
pub fn check_owner(owner: &str) -> Result<(), crate::RecordError> {
    crate::record::check_text("owner", owner.to_owned(), crate::record::MAX_OWNER_CHARS).map(drop)
}

/// Turns hour rows (`(hour start, counts)`, in any order, hours possibly repeated) into every
/// bucket of `range`, in order, empty buckets included: hours are added into the bucket they
/// fall in; rows outside the range are ignored.
pub fn roll_up(range: &UsageRange, hours: &[(Timestamp, UsageCounts)]) -> Vec<UsageBucket> {
    let width = range.bucket.width_ms();
    let since = range.since.unix_ms();
    let mut out: Vec<UsageBucket> = (0..range.buckets())
        .map(|i| UsageBucket {
            start: Timestamp::from_unix_ms(since + i * width).expect("inside the range"),
            counts: UsageCounts::default(),
        })
        .collect();
    for (hour, counts) in hours {
        if *hour < range.since || *hour >= range.until {
            continue;
        }
        let i = usize::try_from((hour.unix_ms() - since) / width).expect("inside the range");
        out[i].counts.merge(counts);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::{Clock, FixedClock, Lifetime};

    fn t(text: &str) -> Timestamp {
        Timestamp::parse_rfc3339(text).unwrap()
    }

    #[test]
    fn sums_of_counts_near_the_maximum_saturate() {
        let mut c = counts(u64::MAX - 1, 5, 0);
        c.add(Outcome::Expired, u64::MAX);
        assert_eq!(c.total(), u64::MAX);
        assert_eq!(c.refused(), u64::MAX);
        assert_eq!(counts(1, 2, 3).total(), 6);
        assert_eq!(counts(1, 2, 3).refused(), 2);
    }

    fn counts(verified: u64, revoked: u64, limited: u64) -> UsageCounts {
        let mut c = UsageCounts::default();
        c.add(Outcome::Valid, verified);
        c.add(Outcome::Revoked, revoked);
        c.add(Outcome::RateLimited, limited);
        c
    }

    #[test]
    fn hours_and_days_are_utc_boundaries() {
        assert_eq!(
            hour_of(t("2027-01-31T12:59:59.999Z")),
            t("2027-01-31T12:00:00Z")
        );
        assert_eq!(
            hour_of(t("2027-01-31T13:00:00Z")),
            t("2027-01-31T13:00:00Z")
        );
        assert_eq!(
            day_of(t("2027-01-31T23:59:59.999+00:00")),
            t("2027-01-31T00:00:00Z")
        );
        // An offset is only a way of writing the instant.
        assert_eq!(
            day_of(t("2027-02-01T00:30:00+01:00")),
            t("2027-01-31T00:00:00Z")
        );
        // Before the epoch, too.
        assert_eq!(
            hour_of(t("1969-12-31T23:30:00Z")),
            t("1969-12-31T23:00:00Z")
        );
        assert_eq!(day_of(t("0001-01-01T05:00:00Z")), t("0001-01-01T00:00:00Z"));
    }

    #[test]
    fn only_requests_naming_a_key_are_counted() {
        let mut c = UsageCounts::default();
        for o in Outcome::ALL {
            c.add(o, 1);
        }
        assert_eq!(c.total(), 8);
        assert_eq!(c.verified(), 1);
        assert_eq!(c.rate_limited(), 1);
        assert_eq!(c.refused(), 6);
        assert_eq!(c.get(Outcome::NotFound), 0);
        assert!(!c.add(Outcome::Malformed, 5));
        assert_eq!(c.total(), 8);
        c.add(Outcome::Valid, u64::MAX);
        assert_eq!(c.verified(), u64::MAX, "saturates, never wraps");
    }

    #[test]
    fn serializes_every_refusal_code() {
        let b = UsageBucket {
            start: t("2027-01-31T12:00:00Z"),
            counts: counts(3, 1, 2),
        };
        let json = serde_json::to_value(b).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "start": "2027-01-31T12:00:00.000Z",
                "verified": 3,
                "refused": {"REVOKED": 1, "EXPIRED": 0, "DISABLED": 0, "INSUFFICIENT_SCOPE": 0,
                            "USAGE_EXCEEDED": 0, "IP_NOT_ALLOWED": 0},
                "rate_limited": 2,
            })
        );
    }

    #[test]
    fn default_ranges_end_with_the_current_bucket() {
        let clock = FixedClock::new(t("2027-01-31T12:34:56Z"));
        let hours = UsageRange::new(None, None, Bucket::Hour, clock.now());
        assert_eq!(hours.until(), t("2027-01-31T13:00:00Z"));
        assert_eq!(hours.since(), t("2027-01-24T13:00:00Z"));
        assert_eq!(hours.buckets(), 168);
        let days = UsageRange::new(None, None, Bucket::Day, clock.now());
        assert_eq!(days.until(), t("2027-02-01T00:00:00Z"));
        assert_eq!(days.since(), t("2027-01-02T00:00:00Z"));
        assert_eq!(days.buckets(), 30);
        // On a boundary, `until` stays where it is.
        clock.set(t("2027-01-31T12:00:00Z"));
        let r = UsageRange::new(None, None, Bucket::Hour, clock.now());
        assert_eq!(r.until(), t("2027-01-31T12:00:00Z"));
        clock.advance(Lifetime::parse("1h").unwrap());
        let r = UsageRange::new(None, None, Bucket::Hour, clock.now());
        assert_eq!(r.until(), t("2027-01-31T13:00:00Z"));
    }

    #[test]
    fn ranges_are_aligned_and_cut_to_their_last_buckets() {
        let now = t("2027-01-31T12:34:56Z");
        let range = |since: &str, until: &str, bucket| {
            UsageRange::new(Some(t(since)), Some(t(until)), bucket, now)
        };
        let r = range("2027-01-01T10:20:00Z", "2027-01-01T12:00:01Z", Bucket::Hour);
        assert_eq!(
            (r.since(), r.until()),
            (t("2027-01-01T10:00:00Z"), t("2027-01-01T13:00:00Z"))
        );
        assert_eq!(r.buckets(), 3);
        // Exactly the most hours allowed; one more moves `since` forward, keeping the end.
        let r = range("2027-01-01T00:00:00Z", "2027-02-01T00:00:00Z", Bucket::Hour);
        assert_eq!(
            (r.since(), r.buckets()),
            (t("2027-01-01T00:00:00Z"), MAX_HOUR_BUCKETS)
        );
        let r = range("2027-01-01T00:00:00Z", "2027-02-01T00:00:01Z", Bucket::Hour);
        assert_eq!(
            (r.since(), r.until()),
            (t("2027-01-01T01:00:00Z"), t("2027-02-01T01:00:00Z"))
        );
        assert_eq!(r.buckets(), MAX_HOUR_BUCKETS);
        let r = range("2027-01-01T00:00:00Z", "2028-02-05T00:00:00Z", Bucket::Day);
        assert_eq!((r.since(), r.buckets()), (t("2027-01-01T00:00:00Z"), 400));
        let r = range("2000-01-01T00:00:00Z", "2028-02-05T00:00:01Z", Bucket::Day);
        assert_eq!((r.since(), r.buckets()), (t("2027-01-02T00:00:00Z"), 400));
        // A since alone, long ago: the last 31 days of hours up to now.
        let r = UsageRange::new(Some(t("2000-01-01T00:00:00Z")), None, Bucket::Hour, now);
        assert_eq!(
            (r.until(), r.buckets()),
            (t("2027-01-31T13:00:00Z"), MAX_HOUR_BUCKETS)
        );
        // Empty and backwards ranges have no buckets.
        let r = range("2027-01-01T00:00:00Z", "2027-01-01T00:00:00Z", Bucket::Hour);
        assert_eq!(r.buckets(), 0);
        let r = range("2027-01-31T12:34:56Z", "2027-01-01T00:00:00Z", Bucket::Day);
        assert_eq!(
            (r.since(), r.until(), r.buckets()),
            (r.until(), t("2027-01-01T00:00:00Z"), 0)
        );
        assert!(roll_up(&r, &[]).is_empty());
        // At the ends of time.
        let r = UsageRange::new(None, Some(t("9999-12-31T23:30:00Z")), Bucket::Hour, now);
        assert_eq!((r.until(), r.buckets()), (t("9999-12-31T23:00:00Z"), 168));
        let r = UsageRange::new(None, Some(t("0001-01-01T01:00:00Z")), Bucket::Day, now);
        assert_eq!(
            (r.since(), r.until()),
            (t("0001-01-01T00:00:00Z"), t("0001-01-02T00:00:00Z"))
        );
        let r = range("0001-01-01T00:00:00Z", "0001-01-01T00:00:00Z", Bucket::Day);
        assert_eq!(r.buckets(), 0);
        assert_eq!(Bucket::parse("week"), Err(UsageError::BadBucket));
        assert_eq!(Bucket::parse("day"), Ok(Bucket::Day));
    }

    #[test]
    fn hours_roll_up_into_days() {
        let now = t("2027-01-31T12:00:00Z");
        let range = UsageRange::new(
            Some(t("2027-01-30T00:00:00Z")),
            Some(t("2027-02-01T00:00:00Z")),
            Bucket::Day,
            now,
        );
        let rows = [
            (t("2027-01-30T00:00:00Z"), counts(1, 0, 0)),
            (t("2027-01-30T23:00:00Z"), counts(2, 1, 0)),
            (t("2027-01-31T05:00:00Z"), counts(4, 0, 3)),
            (t("2027-01-31T05:00:00Z"), counts(8, 0, 0)), // another key's row for that hour
            (t("2027-01-29T23:00:00Z"), counts(100, 0, 0)), // before the range
            (t("2027-02-01T00:00:00Z"), counts(100, 0, 0)), // after it
        ];
        let days = roll_up(&range, &rows);
        assert_eq!(days.len(), 2);
        assert_eq!(days[0].start, t("2027-01-30T00:00:00Z"));
        assert_eq!(
            (days[0].counts.verified(), days[0].counts.refused()),
            (3, 1)
        );
        assert_eq!(days[1].start, t("2027-01-31T00:00:00Z"));
        assert_eq!(
            (days[1].counts.verified(), days[1].counts.rate_limited()),
            (12, 3)
        );

        let hours = UsageRange::new(
            Some(t("2027-01-31T04:00:00Z")),
            Some(t("2027-01-31T07:00:00Z")),
            Bucket::Hour,
            now,
        );
        let hours = roll_up(&hours, &rows);
        let verified: Vec<u64> = hours.iter().map(|b| b.counts.verified()).collect();
        assert_eq!(verified, [0, 12, 0]);
    }
}
