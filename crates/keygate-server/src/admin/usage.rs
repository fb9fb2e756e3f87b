//! The usage section of the key and owner pages: the last 7 days of requests per hour as a
//! chart ([`chart`](super::chart)), beside it the credit balance and the headroom left in
//! each rate limit, and under it the same week by day as a table (readable without the chart).
//! An owner's section adds up all of its keys: their requests, and their credits.

use keygate::core::limits::{Decision, RateLimits};
use keygate::core::usage::{Bucket, UsageBucket, UsageCounts, UsageRange, roll_up};
use keygate::core::{KeyRecord, Status, Timestamp};
use keygate::limits::Subject;
use keygate::usage::UsageOf;
use maud::{Markup, PreEscaped, html};

use super::chart::{self, HourlyLimit};
use super::views;
use crate::api::AppState;

/// A colour swatch for the legend (a presentation attribute, allowed by the CSP).
fn swatch(colour: &str) -> Markup {
    html! {
        svg.swatch width="10" height="10" viewBox="0 0 10 10" aria-hidden="true" {
            rect width="10" height="10" fill=(colour) {}
        }
    }
}

/// The legend under a chart.
pub fn legend(limit: Option<&HourlyLimit>) -> Markup {
    html! {
        p.legend {
            (swatch(chart::VERIFIED)) " verified "
            (swatch(chart::REFUSED)) " refused "
            (swatch(chart::RATE_LIMITED)) " rate limited"
            @if let Some(l) = limit { " · " (swatch(chart::LIMIT)) " " (l.label) }
        }
    }
}

/// The week of `hours` by day (UTC), as a table: the chart's text form.
pub fn days_table(hours: &[UsageBucket], now: Timestamp) -> Markup {
    let (Some(first), Some(last)) = (hours.first(), hours.last()) else {
        return html! {};
    };
    let until = Timestamp::from_unix_ms(last.start.unix_ms() + 1).unwrap_or(last.start);
    let range = UsageRange::new(Some(first.start), Some(until), Bucket::Day, now);
    let rows: Vec<(Timestamp, UsageCounts)> = hours.iter().map(|b| (b.start, b.counts)).collect();
    let days = roll_up(&range, &rows);
    html! {
        details.usage-days {
            summary { "By day (UTC)" }
            div.table-wrap {
                table {
                    thead { tr {
                        th scope="col" { "Day" } th scope="col" { "Verified" }
                        th scope="col" { "Refused" } th scope="col" { "Rate limited" }
                    } }
                    tbody {
                        @for day in &days {
                            tr {
                                td { (&day.start.to_rfc3339()[..10]) }
                                td { (day.counts.verified()) }
                                td { (day.counts.refused()) }
                                td { (day.counts.rate_limited()) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The week of hours of `of`, or the section saying they cannot be read.
async fn week(app: &AppState, of: UsageOf<'_>, section: &str) -> Result<Vec<UsageBucket>, Markup> {
    let range = UsageRange::new(None, None, Bucket::Hour, app.keygate.now());
    app.keygate.usage(of, &range).await.map_err(|e| {
        tracing::warn!(error = %e, "could not read usage for an admin page");
        html! {
            section.card #(section) aria-labelledby="usage" {
                h2 #usage { "Usage, last 7 days" }
                p.error role="alert" { "Usage cannot be read right now: the key store is unavailable." }
            }
        }
    })
}

/// What is left of `limits` for `subject` on this node, spending nothing (a check of cost 0:
/// from the counts this node holds, no round trip); `None` without limits.
async fn headroom(app: &AppState, subject: &Subject, limits: &RateLimits) -> Option<Decision> {
    if limits.is_empty() {
        return None;
    }
    let limiter = app.keygate.verifier().limiter();
    Some(
        limiter
            .check(&[(subject, limits)], 0, app.keygate.now())
            .await,
    )
}

/// The section: chart, totals, `credits`, headroom, the table by day.
fn section(
    section_id: &str,
    hours: &[UsageBucket],
    limits: &RateLimits,
    credits: Markup,
    headroom: Option<&Decision>,
    now: Timestamp,
) -> Markup {
    let limit = chart::hourly_limit(limits);
    let svg = chart::usage_svg("usage-chart", hours, limit.as_ref());
    let mut total = UsageCounts::default();
    for b in hours {
        total.merge(&b.counts);
    }
    html! {
        section.card #(section_id) aria-labelledby="usage" {
            h2 #usage { "Usage, last 7 days" }
            div.usage-grid {
                figure.usage-figure {
                    (PreEscaped(svg))
                    figcaption { (legend(limit.as_ref())) }
                }
                dl.fields #usage-headroom {
                    dt { "Requests" } dd #usage-total {
                        (total.verified()) " verified · " (total.refused()) " refused · "
                        (total.rate_limited()) " rate limited"
                    }
                    dt { "Credits" } dd #usage-credits { (credits) }
                    @if let Some(decision) = headroom {
                        @for status in decision.limits() {
                            dt { "Headroom " code { (status.name.as_str()) } }
                            dd.headroom {
                                (status.remaining) " of " (status.limit) " left per " (status.window)
                                @if status.reset > 0 { " · full in " (status.reset) " s" }
                            }
                        }
                    } @else {
                        dt { "Rate limits" } dd { span.muted { "none" } }
                    }
                }
            }
            p.help { "Counts reach the chart with each usage flush (every few seconds); hours are UTC." }
            (days_table(hours, now))
        }
    }
}

/// The usage section of `record`'s page; if the usage cannot be read, the section says so
/// (the rest of the page still shows).
pub async fn key_section(app: &AppState, record: &KeyRecord) -> Markup {
    let now = app.keygate.now();
    let hours = match week(app, UsageOf::Key(&record.id), "key-usage").await {
        Ok(hours) => hours,
        Err(unreadable) => return unreadable,
    };
    let rate = &record.limits.rate;
    let headroom = headroom(app, &Subject::key(&record.id), rate).await;
    let credits = html! {
        @if let Some(q) = &record.limits.quota {
            (q.remaining) " left"
            @if let Some(next) = q.next_refill(now) { " · refill " (views::time(Some(next), "")) }
        } @else if record.limits.quota_holder.is_some() { "see the key holding them" }
        @else { span.muted { "unlimited" } }
    };
    section("key-usage", &hours, rate, credits, headroom.as_ref(), now)
}

/// An owner's credits: the balances of its keys that can still spend (neither revoked nor
/// expired) and hold credits of their own, added up. A key spending another key's credits
/// (after a rotation) adds nothing, so no balance counts twice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OwnerCredits {
    /// Credits left, summed.
    pub remaining: u64,
    /// Keys holding credits.
    pub holders: usize,
    /// Keys without credits: nothing limits how much they spend.
    pub unlimited: usize,
}

impl OwnerCredits {
    /// The credits of `keys` at `now`.
    pub fn of(keys: &[KeyRecord], now: Timestamp) -> Self {
        let mut credits = Self::default();
        for key in keys {
            if matches!(key.status(now), Status::Revoked | Status::Expired) {
                continue;
            }
            match (&key.limits.quota, &key.limits.quota_holder) {
                (Some(q), _) => {
                    credits.remaining = credits.remaining.saturating_add(q.remaining);
                    credits.holders += 1;
                }
                (None, Some(_)) => {}
                (None, None) => credits.unlimited += 1,
            }
        }
        credits
    }
}

fn keys_text(n: usize) -> String {
    if n == 1 {
        "1 key".into()
    } else {
        format!("{n} keys")
    }
}

/// The usage section of an owner's page: the requests of all its `keys` (read up to a bound:
/// `complete` says whether they are all there), its shared `limits` with their headroom on
/// this node, and its keys' credits added up.
pub async fn owner_section(
    app: &AppState,
    owner: &str,
    limits: &RateLimits,
    keys: &[KeyRecord],
    complete: bool,
) -> Markup {
    let now = app.keygate.now();
    let hours = match week(app, UsageOf::Owner(owner), "owner-usage").await {
        Ok(hours) => hours,
        Err(unreadable) => return unreadable,
    };
    let headroom = headroom(app, &Subject::owner(owner), limits).await;
    let c = OwnerCredits::of(keys, now);
    let credits = html! {
        @if c.holders == 0 { span.muted { "unlimited" } " (no key holds credits)" }
        @else {
            (c.remaining) " left across " (keys_text(c.holders))
            @if c.unlimited > 0 { " · " (keys_text(c.unlimited)) " unlimited" }
        }
        @if !complete { " · of the first " (keys.len()) " keys" }
    };
    section(
        "owner-usage",
        &hours,
        limits,
        credits,
        headroom.as_ref(),
        now,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use keygate::core::limits::Quota;
    use keygate::core::{KeySpec, Prefix, issue};

    #[test]
    fn an_owners_credits_add_up_the_keys_that_can_spend_their_own() {
        let now = Timestamp::parse_rfc3339("2027-01-31T12:00:00Z").unwrap();
        let key = |credits: Option<u64>| {
            let spec = KeySpec {
                name: "k".into(),
                ..KeySpec::default()
            };
            let mut record = issue(spec, &Prefix::default(), now).unwrap().0;
            record.limits.quota = credits.map(|n| Quota::new(n, None, now).unwrap());
            record
        };
        let mut revoked = key(Some(1000));
        revoked.revoked_at = Some(now);
        let mut expired = key(Some(1000));
        expired.expires_at = Some(now);
        let mut disabled = key(Some(5));
        disabled.enabled = false;
        let mut old = key(None);
        old.limits.quota_holder = Some(key(None).id);
        let keys = [
            key(Some(100)),
            key(Some(40)),
            disabled,
            key(None),
            revoked,
            expired,
            old,
        ];
        assert_eq!(
            OwnerCredits::of(&keys, now),
            OwnerCredits {
                remaining: 145,
                holders: 3,
                unlimited: 1
            }
        );
        assert_eq!(OwnerCredits::of(&[], now), OwnerCredits::default());
    }
}
