//! The usage section of the key page: the last 7 days of requests per hour as a chart
//! ([`chart`](super::chart)), beside it the key's credit balance and the headroom left in each
//! of its rate limits, and under it the same week by day as a table (readable without the
//! chart).

use keygate::core::usage::{Bucket, UsageBucket, UsageCounts, UsageRange, roll_up};
use keygate::core::{KeyRecord, Timestamp};
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

/// The usage section of `record`'s page; if the usage cannot be read, the section says so
/// (the rest of the page still shows).
pub async fn key_section(app: &AppState, record: &KeyRecord) -> Markup {
    let now = app.keygate.now();
    let range = UsageRange::new(None, None, Bucket::Hour, now);
    let hours = match app.keygate.usage(UsageOf::Key(&record.id), &range).await {
        Ok(hours) => hours,
        Err(e) => {
            tracing::warn!(error = %e, "could not read usage for the key page");
            return html! {
                section.card #key-usage aria-labelledby="usage" {
                    h2 #usage { "Usage, last 7 days" }
                    p.error role="alert" { "Usage cannot be read right now: the key store is unavailable." }
                }
            };
        }
    };
    let limit = chart::hourly_limit(&record.limits.rate);
    let svg = chart::usage_svg("usage-chart", &hours, limit.as_ref());
    let mut total = UsageCounts::default();
    for b in &hours {
        total.merge(&b.counts);
    }
    // Headroom: a check of cost 0 spends nothing and says what is left.
    let headroom = if record.limits.rate.is_empty() {
        None
    } else {
        let subject = Subject::key(&record.id);
        let limiter = app.keygate.verifier().limiter();
        Some(
            limiter
                .check(&[(&subject, &record.limits.rate)], 0, now)
                .await,
        )
    };
    html! {
        section.card #key-usage aria-labelledby="usage" {
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
                    dt { "Credits" } dd #usage-credits {
                        @if let Some(q) = &record.limits.quota {
                            (q.remaining) " left"
                            @if let Some(next) = q.next_refill(now) { " · refill " (views::time(Some(next), "")) }
                        } @else if record.limits.quota_holder.is_some() { "see the key holding them" }
                        @else { span.muted { "unlimited" } }
                    }
                    @if let Some(decision) = &headroom {
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
            (days_table(&hours, now))
        }
    }
}
