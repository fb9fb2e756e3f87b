//! Quotas (credits): a balance that each verified request spends by its cost, refilled daily or
//! monthly.
//!
//! A refill **resets** the balance to the refill amount (Unkey's meaning): unused credit does
//! not carry over, and a balance raised by hand above the amount drops back to it.
//! Refills fall at 00:00 UTC: every day, or every month on `on_day` (1–31, clamped to the
//! month's last day: `on_day` 31 refills on 30 April and 28/29 February).
//!
//! Refilling is idempotent: [`Quota::refill_due`] is true only while the last refill is older
//! than the current period's refill instant ([`Refill::period_start`]), so applying a refill
//! twice in one period changes nothing. A store applies it as one conditional update,
//! `SET remaining = amount, refilled_at = now WHERE refilled_at < period_start`, which is also
//! safe when several nodes (or the scheduler and `keygate refill` from cron) race.
//!
//! Spending is the store's conditional decrement (`remaining = remaining - cost WHERE remaining
//! >= cost`); the rule it applies is [`can_spend`].

use std::fmt;

use ::time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};
use serde::{Deserialize, Deserializer, Serialize};

use crate::time::Timestamp;

/// Largest balance or refill amount: 10¹².
pub const MAX_CREDITS: u64 = 1_000_000_000_000;

/// Why a quota was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaError {
    /// `remaining` is above [`MAX_CREDITS`].
    Remaining,
    /// The refill amount is not 1 to [`MAX_CREDITS`].
    Amount,
    /// `on_day` is not 1–31, or given for a daily refill.
    OnDay,
    /// The text is not `N`, `N/day`, `N/month` or `N/month@D`.
    Syntax,
}

impl fmt::Display for QuotaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Remaining => "remaining credit is at most 1000000000000",
            Self::Amount => "a refill amount is a whole number from 1 to 1000000000000",
            Self::OnDay => "on_day is a day of the month, 1-31, and only for monthly refills",
            Self::Syntax => {
                "write credits as N (no refill), N/day, N/month or N/month@D (refilled on day D)"
            }
        })
    }
}

impl std::error::Error for QuotaError {}

/// How often a quota is refilled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RefillPeriod {
    /// Every day at 00:00 UTC.
    Day,
    /// Every month on `on_day` at 00:00 UTC.
    Month,
}

/// A refill: the balance is set to `amount` every day, or every month on `on_day`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Refill {
    /// The balance after a refill.
    pub amount: u64,
    /// Daily or monthly.
    pub every: RefillPeriod,
    /// For monthly refills, the day of the month (1–31, clamped to the month's length);
    /// `None` is the 1st.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_day: Option<u8>,
}

impl Refill {
    /// Checks the parts.
    pub fn new(amount: u64, every: RefillPeriod, on_day: Option<u8>) -> Result<Self, QuotaError> {
        if !(1..=MAX_CREDITS).contains(&amount) {
            return Err(QuotaError::Amount);
        }
        match (every, on_day) {
            (RefillPeriod::Day, Some(_)) => return Err(QuotaError::OnDay),
            (RefillPeriod::Month, Some(day)) if !(1..=31).contains(&day) => {
                return Err(QuotaError::OnDay);
            }
            _ => {}
        }
        Ok(Self {
            amount,
            every,
            on_day,
        })
    }

    /// The latest refill instant at or before `now`: today 00:00 UTC, or this month's (else
    /// last month's) refill day 00:00 UTC. `None` before the first representable one.
    pub fn period_start(&self, now: Timestamp) -> Option<Timestamp> {
        let today = utc(now).date();
        match self.every {
            RefillPeriod::Day => midnight(today),
            RefillPeriod::Month => {
                let this = self.day_in(today.year(), today.month())?;
                if this <= today {
                    midnight(this)
                } else {
                    let (y, m) = previous_month(today.year(), today.month());
                    midnight(self.day_in(y, m)?)
                }
            }
        }
    }

    /// The first refill instant after `now`; `None` past year 9999.
    pub fn next_after(&self, now: Timestamp) -> Option<Timestamp> {
        let today = utc(now).date();
        match self.every {
            RefillPeriod::Day => midnight(today.next_day()?),
            RefillPeriod::Month => {
                let this = self.day_in(today.year(), today.month())?;
                if this > today {
                    midnight(this)
                } else {
                    let (y, m) = next_month(today.year(), today.month());
                    midnight(self.day_in(y, m)?)
                }
            }
        }
    }

    /// This refill's day in a month: `on_day` (default 1) clamped to the month's length;
    /// `None` outside the calendar's range.
    fn day_in(&self, year: i32, month: Month) -> Option<Date> {
        let day = self.on_day.unwrap_or(1).min(month.length(year));
        Date::from_calendar_date(year, month, day).ok()
    }
}

impl<'de> Deserialize<'de> for Refill {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Wire {
            #[serde(deserialize_with = "super::whole::u64")]
            amount: u64,
            every: RefillPeriod,
            #[serde(default, deserialize_with = "super::whole::option_u8")]
            on_day: Option<u8>,
        }
        let w = Wire::deserialize(d)?;
        Self::new(w.amount, w.every, w.on_day).map_err(serde::de::Error::custom)
    }
}

/// A key's credit: the balance, how it is refilled, and when it was last set (at creation or
/// by a refill).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Quota {
    /// Credits left.
    pub remaining: u64,
    /// The refill, if any.
    pub refill: Option<Refill>,
    /// When the balance was last set: creation, an update, or a refill.
    pub refilled_at: Timestamp,
}

impl Quota {
    /// A quota set at `now`.
    pub fn new(remaining: u64, refill: Option<Refill>, now: Timestamp) -> Result<Self, QuotaError> {
        if remaining > MAX_CREDITS {
            return Err(QuotaError::Remaining);
        }
        Ok(Self {
            remaining,
            refill,
            refilled_at: now,
        })
    }

    /// Whether a refill is due at `now`: the last one is older than this period's instant.
    pub fn refill_due(&self, now: Timestamp) -> bool {
        self.refill
            .and_then(|r| r.period_start(now))
            .is_some_and(|start| self.refilled_at < start)
    }

    /// The quota after refilling at `now`, or `None` when no refill is due (so that applying
    /// it twice in one period changes nothing).
    pub fn refilled(&self, now: Timestamp) -> Option<Quota> {
        let refill = self.refill?;
        self.refill_due(now).then_some(Quota {
            remaining: refill.amount,
            refill: Some(refill),
            refilled_at: now,
        })
    }

    /// When the next refill falls after `now`.
    pub fn next_refill(&self, now: Timestamp) -> Option<Timestamp> {
        self.refill?.next_after(now)
    }
}

impl<'de> Deserialize<'de> for Quota {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Wire {
            remaining: u64,
            refill: Option<Refill>,
            refilled_at: Timestamp,
        }
        let w = Wire::deserialize(d)?;
        Self::new(w.remaining, w.refill, w.refilled_at).map_err(serde::de::Error::custom)
    }
}

/// Parses the short form of a quota: `N` (N credits, never refilled), `N/day` (N, refilled to
/// N every day), `N/month` (on the 1st) or `N/month@D` (on day D). Returns the balance to
/// start from and the refill.
pub fn parse_quota(text: &str) -> Result<(u64, Option<Refill>), QuotaError> {
    let text = text.trim();
    let (amount, refill) = match text.split_once('/') {
        None => (text, None),
        Some((amount, every)) => (amount, Some(every)),
    };
    let amount: u64 = amount.trim().parse().map_err(|_| QuotaError::Syntax)?;
    let Some(every) = refill else {
        if amount > MAX_CREDITS {
            return Err(QuotaError::Remaining);
        }
        return Ok((amount, None));
    };
    let (period, on_day) = match every.trim().split_once('@') {
        None => (every.trim(), None),
        Some((period, day)) => (
            period,
            Some(day.trim().parse::<u8>().map_err(|_| QuotaError::OnDay)?),
        ),
    };
    let period = match period {
        "day" => RefillPeriod::Day,
        "month" => RefillPeriod::Month,
        _ => return Err(QuotaError::Syntax),
    };
    Ok((amount, Some(Refill::new(amount, period, on_day)?)))
}

/// The short form [`parse_quota`] reads: `N/day`, `N/month`, `N/month@D` for a refilled
/// quota (N the refill's amount), else the balance `N`.
pub fn quota_short_form(quota: &Quota) -> String {
    match quota.refill {
        None => quota.remaining.to_string(),
        Some(Refill {
            amount,
            every: RefillPeriod::Day,
            ..
        }) => format!("{amount}/day"),
        Some(Refill {
            amount,
            every: RefillPeriod::Month,
            on_day: None,
        }) => format!("{amount}/month"),
        Some(Refill {
            amount,
            every: RefillPeriod::Month,
            on_day: Some(day),
        }) => format!("{amount}/month@{day}"),
    }
}

/// Seconds a client refused for its credits is told to wait (`Retry-After`): until the
/// refill `due`, rounded up, and at least 1 (a refill already due waits for the scheduler
/// that applies it).
pub fn retry_after_refill(now: Timestamp, due: Timestamp) -> u64 {
    let ms = due.unix_ms().saturating_sub(now.unix_ms());
    u64::try_from(ms).unwrap_or(0).div_ceil(1000).max(1)
}

/// Whether a balance of `remaining` covers a request of `cost` (cost 0 always does).
pub fn can_spend(remaining: u64, cost: u64) -> bool {
    remaining >= cost
}

fn utc(t: Timestamp) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.unix_ms()) * 1_000_000)
        .expect("a Timestamp is within years 1-9999")
}

fn midnight(day: Date) -> Option<Timestamp> {
    let t = PrimitiveDateTime::new(day, Time::MIDNIGHT).assume_utc();
    Timestamp::from_unix_ms(i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()?)
}

fn previous_month(year: i32, month: Month) -> (i32, Month) {
    match month {
        Month::January => (year - 1, Month::December),
        m => (year, m.previous()),
    }
}

fn next_month(year: i32, month: Month) -> (i32, Month) {
    match month {
        Month::December => (year + 1, Month::January),
        m => (year, m.next()),
    }
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    #[test]
    fn the_short_form_says_balance_and_refill() {
        assert_eq!(parse_quota("500"), Ok((500, None)));
        let monthly = Refill::new(10_000, RefillPeriod::Month, None).unwrap();
        assert_eq!(parse_quota("10000/month"), Ok((10_000, Some(monthly))));
        let fifteenth = Refill::new(10, RefillPeriod::Month, Some(15)).unwrap();
        assert_eq!(parse_quota(" 10/month@15 "), Ok((10, Some(fifteenth))));
        let daily = Refill::new(7, RefillPeriod::Day, None).unwrap();
        assert_eq!(parse_quota("7/day"), Ok((7, Some(daily))));
        let at = Timestamp::from_unix_ms(0).unwrap();
        for text in ["500", "10000/month", "10/month@15", "7/day"] {
            let (remaining, refill) = parse_quota(text).unwrap();
            let quota = Quota::new(remaining, refill, at).unwrap();
            assert_eq!(quota_short_form(&quota), text, "round trip");
        }
        for (bad, why) in [
            ("", QuotaError::Syntax),
            ("-1", QuotaError::Syntax),
            ("10/week", QuotaError::Syntax),
            ("10/day@3", QuotaError::OnDay),
            ("10/month@32", QuotaError::OnDay),
            ("10/month@x", QuotaError::OnDay),
            ("0/day", QuotaError::Amount),
            ("2000000000000", QuotaError::Remaining),
        ] {
            assert_eq!(parse_quota(bad), Err(why), "{bad}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(text: &str) -> Timestamp {
        Timestamp::parse_rfc3339(text).unwrap()
    }

    fn monthly(on_day: u8) -> Refill {
        Refill::new(1000, RefillPeriod::Month, Some(on_day)).unwrap()
    }

    #[test]
    fn a_refused_client_waits_until_the_refill_rounded_up_and_at_least_a_second() {
        let now = t("2027-03-14T23:59:58.500Z");
        assert_eq!(retry_after_refill(now, t("2027-03-15T00:00:00Z")), 2);
        assert_eq!(retry_after_refill(now, t("2027-03-15T00:00:00.500Z")), 2);
        assert_eq!(retry_after_refill(now, t("2027-03-16T00:00:00Z")), 86_402);
        // Due already (the scheduler has not applied it yet): retry in a second.
        assert_eq!(retry_after_refill(now, now), 1);
        assert_eq!(retry_after_refill(now, t("2027-03-14T00:00:00Z")), 1);
    }

    #[test]
    fn daily_refills_at_utc_midnight() {
        let daily = Refill::new(50, RefillPeriod::Day, None).unwrap();
        let now = t("2027-03-14T17:30:00Z");
        assert_eq!(daily.period_start(now), Some(t("2027-03-14T00:00:00Z")));
        assert_eq!(daily.next_after(now), Some(t("2027-03-15T00:00:00Z")));
        let midnight = t("2027-03-14T00:00:00Z");
        assert_eq!(daily.period_start(midnight), Some(midnight));
        assert_eq!(daily.next_after(midnight), Some(t("2027-03-15T00:00:00Z")));
        assert_eq!(
            daily.next_after(t("2027-12-31T23:59:59.999Z")),
            Some(t("2028-01-01T00:00:00Z"))
        );
    }

    #[test]
    fn monthly_refills_clamp_to_the_months_last_day() {
        let r = monthly(31);
        assert_eq!(
            r.next_after(t("2027-04-02T00:00:00Z")),
            Some(t("2027-04-30T00:00:00Z"))
        );
        assert_eq!(
            r.next_after(t("2027-02-01T00:00:00Z")),
            Some(t("2027-02-28T00:00:00Z"))
        );
        assert_eq!(
            r.next_after(t("2028-02-01T00:00:00Z")),
            Some(t("2028-02-29T00:00:00Z"))
        );
        assert_eq!(
            r.period_start(t("2027-03-15T00:00:00Z")),
            Some(t("2027-02-28T00:00:00Z"))
        );
        assert_eq!(
            r.period_start(t("2027-03-31T00:00:00Z")),
            Some(t("2027-03-31T00:00:00Z"))
        );
        assert_eq!(
            r.next_after(t("2027-03-31T00:00:00Z")),
            Some(t("2027-04-30T00:00:00Z"))
        );
        let first = Refill::new(10, RefillPeriod::Month, None).unwrap();
        assert_eq!(
            first.period_start(t("2027-01-15T08:00:00Z")),
            Some(t("2027-01-01T00:00:00Z"))
        );
        assert_eq!(
            first.next_after(t("2027-12-15T08:00:00Z")),
            Some(t("2028-01-01T00:00:00Z"))
        );
        let fifteenth = monthly(15);
        assert_eq!(
            fifteenth.period_start(t("2027-01-10T00:00:00Z")),
            Some(t("2026-12-15T00:00:00Z"))
        );
        assert_eq!(first.next_after(t("9999-12-15T00:00:00Z")), None);
        assert_eq!(fifteenth.period_start(t("0001-01-10T00:00:00Z")), None);
    }

    #[test]
    fn a_refill_resets_once_per_period() {
        let created = t("2027-01-20T10:00:00Z");
        let q = Quota::new(1000, Some(monthly(1)), created).unwrap();
        assert!(!q.refill_due(t("2027-01-31T23:59:59Z")));
        assert_eq!(q.refilled(t("2027-01-31T23:59:59Z")), None);
        let spent = Quota { remaining: 3, ..q };
        let feb = t("2027-02-01T00:00:00Z");
        assert!(spent.refill_due(feb));
        let refilled = spent.refilled(feb).unwrap();
        assert_eq!(refilled.remaining, 1000);
        assert_eq!(refilled.refilled_at, feb);
        // Idempotent: again in the same period, nothing.
        let after_use = Quota {
            remaining: 10,
            ..refilled
        };
        assert_eq!(after_use.refilled(t("2027-02-27T12:00:00Z")), None);
        // A reset, not a top-up: a balance above the amount drops back to it.
        let high = Quota {
            remaining: 5000,
            ..spent
        };
        assert_eq!(high.refilled(feb).unwrap().remaining, 1000);
        // Missed periods (a node down for months) refill once, not once per missed period.
        let late = spent.refilled(t("2027-06-10T00:00:00Z")).unwrap();
        assert_eq!(late.remaining, 1000);
        assert_eq!(late.refilled(t("2027-06-30T00:00:00Z")), None);
        assert_eq!(q.next_refill(feb), Some(t("2027-03-01T00:00:00Z")));
        let none = Quota::new(5, None, created).unwrap();
        assert!(!none.refill_due(feb));
        assert_eq!(none.refilled(feb), None);
        assert_eq!(none.next_refill(feb), None);
    }

    #[test]
    fn spending_needs_enough_credit() {
        assert!(can_spend(5, 5));
        assert!(!can_spend(5, 6));
        assert!(can_spend(0, 0));
        assert!(!can_spend(0, 1));
    }

    #[test]
    fn quotas_in_json() {
        let q = Quota::new(7, Some(monthly(15)), t("2027-01-20T10:00:00Z")).unwrap();
        let json = serde_json::to_value(q).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "remaining": 7,
                "refill": {"amount": 1000, "every": "month", "on_day": 15},
                "refilled_at": "2027-01-20T10:00:00.000Z"
            })
        );
        assert_eq!(serde_json::from_value::<Quota>(json).unwrap(), q);
        let daily: Refill = serde_json::from_str(r#"{"amount": 5, "every": "day"}"#).unwrap();
        assert_eq!(daily, Refill::new(5, RefillPeriod::Day, None).unwrap());
        for bad in [
            r#"{"amount": 0, "every": "day"}"#,
            r#"{"amount": 5, "every": "week"}"#,
            r#"{"amount": 5, "every": "day", "on_day": 1}"#,
            r#"{"amount": 5, "every": "month", "on_day": 0}"#,
            r#"{"amount": 5, "every": "month", "on_day": 32}"#,
            r#"{"amount": 1000000000001, "every": "month"}"#,
            r#"{"amount": 5, "every": "month", "at": 1}"#,
        ] {
            assert!(serde_json::from_str::<Refill>(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Refill::new(5, RefillPeriod::Day, Some(1)),
            Err(QuotaError::OnDay)
        );
        assert_eq!(
            Quota::new(MAX_CREDITS + 1, None, t("2027-01-20T10:00:00Z")),
            Err(QuotaError::Remaining)
        );
    }

    proptest! {
        #[test]
        fn period_start_and_next_bracket_now(
            ms in 0i64..4_102_444_800_000, // 1970..2100
            day in 1u8..=31,
            daily in any::<bool>(),
        ) {
            let refill = if daily {
                Refill::new(1, RefillPeriod::Day, None).unwrap()
            } else {
                monthly(day)
            };
            let now = Timestamp::from_unix_ms(ms).unwrap();
            let start = refill.period_start(now).unwrap();
            let next = refill.next_after(now).unwrap();
            prop_assert!(start <= now && now < next);
            // No refill instant between them: the next after `start` is `next`.
            prop_assert_eq!(refill.next_after(start), Some(next));
            prop_assert_eq!(refill.period_start(next), Some(next));
            // Refilling at `now` is due iff the last refill predates `start`, and once.
            let q = Quota { remaining: 0, refill: Some(refill), refilled_at: Timestamp::from_unix_ms(ms - 1).unwrap_or(now) };
            let once = q.refilled(now);
            prop_assert_eq!(once.is_some(), q.refilled_at < start);
            if let Some(once) = once {
                prop_assert_eq!(once.refilled(now), None);
                prop_assert_eq!(once.refilled(next).map(|q| q.remaining), Some(refill.amount));
            }
        }
    }
}
