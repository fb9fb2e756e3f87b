//! The usage chart: requests per hour as an SVG bar chart, rendered on the server (no script).
//!
//! [`usage_svg`] is a pure function from hour buckets to SVG text: one bar per hour, verified
//! requests at the bottom, refusals stacked on them, rate-limited requests on top; a rate limit
//! scaled to requests per hour drawn as a dashed line; axis labels (days along the bottom,
//! counts up the side); a `<title>` per bar with its numbers, and a `<title>`/`<desc>` for the
//! whole chart. Colours are presentation attributes, not `style`, so the admin UI's CSP
//! (`style-src 'self'`) lets them through. Every piece of text is escaped.

use std::fmt::Write;

use keygate::core::Timestamp;
use keygate::core::limits::RateLimits;
use keygate::core::usage::{DAY_MS, HOUR_MS, REFUSALS, UsageBucket, UsageCounts};

/// The chart's size in SVG units (it scales to its box).
const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 240.0;
const LEFT: f64 = 52.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 14.0;
const BOTTOM: f64 = 30.0;

/// The bars' colours: verified, refused, rate limited, and the limit line.
pub const VERIFIED: &str = "#2f855a";
/// Refusals other than rate limits.
pub const REFUSED: &str = "#c53030";
/// Rate-limited requests.
pub const RATE_LIMITED: &str = "#b7791f";
/// The rate limit's line.
pub const LIMIT: &str = "#2b6cb0";

/// A rate limit as requests per hour, for the chart's line.
#[derive(Debug, Clone, PartialEq)]
pub struct HourlyLimit {
    /// Requests per hour the limit allows on average.
    pub per_hour: f64,
    /// What the line is, e.g. `burst: 100 per 1m`.
    pub label: String,
}

/// The tightest of `limits` as requests per hour (`limit × 1 h / window`); `None` without
/// limits.
pub fn hourly_limit(limits: &RateLimits) -> Option<HourlyLimit> {
    limits
        .iter()
        .map(|l| HourlyLimit {
            per_hour: l.limit as f64 * HOUR_MS as f64 / l.window.as_ms() as f64,
            label: format!("{}: {} per {}", l.name.as_str(), l.limit, l.window),
        })
        .min_by(|a, b| a.per_hour.total_cmp(&b.per_hour))
}

/// Escapes text for SVG (XML) content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The smallest of 1, 2, 5 × 10ⁿ at or above `n` (at least 1).
fn nice_ceiling(n: f64) -> f64 {
    let mut step = 1.0;
    loop {
        for m in [1.0, 2.0, 5.0] {
            if m * step >= n {
                return m * step;
            }
        }
        step *= 10.0;
    }
}

/// A count as the axis shows it: `1200`, `1.5k`, `2M`.
fn short(n: f64) -> String {
    let (v, unit) = if n >= 1e6 {
        (n / 1e6, "M")
    } else if n >= 1e4 {
        (n / 1e3, "k")
    } else {
        (n, "")
    };
    if v.fract() == 0.0 {
        format!("{v:.0}{unit}")
    } else {
        format!("{v:.1}{unit}")
    }
}

/// `2027-01-31 12:00 UTC`.
fn hour_text(t: Timestamp) -> String {
    let text = t.to_rfc3339();
    format!("{} {} UTC", &text[..10], &text[11..16])
}

/// What one bar's `<title>` says.
fn bar_title(start: Timestamp, c: &UsageCounts) -> String {
    let mut text = format!(
        "{}: {} verified, {} refused",
        hour_text(start),
        c.verified(),
        c.refused()
    );
    let named: Vec<String> = REFUSALS
        .iter()
        .filter(|o| c.get(**o) > 0)
        .map(|o| format!("{} {}", o.code(), c.get(*o)))
        .collect();
    if !named.is_empty() {
        let _ = write!(text, " ({})", named.join(", "));
    }
    let _ = write!(text, ", {} rate limited", c.rate_limited());
    text
}

/// The chart of `hours` (hour buckets, oldest first), with `limit`'s line if it has one. `id`
/// makes the chart's element ids unique on its page.
pub fn usage_svg(id: &str, hours: &[UsageBucket], limit: Option<&HourlyLimit>) -> String {
    let id = escape(id);
    let most = hours.iter().map(|b| b.counts.total()).max().unwrap_or(0) as f64;
    // The line sets the scale when it is near the bars; far above them it would flatten
    // them, so it is named instead of drawn.
    let line = limit.filter(|l| l.per_hour <= (most * 4.0).max(1.0));
    let top = nice_ceiling(most.max(line.map_or(0.0, |l| l.per_hour)).max(1.0));
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let y = |v: f64| TOP + plot_h - v / top * plot_h;
    let slot = plot_w / hours.len().max(1) as f64;
    let bar_w = if slot > 3.0 { slot - 1.0 } else { slot };
    let total: UsageCounts = hours.iter().fold(UsageCounts::default(), |mut t, b| {
        t.merge(&b.counts);
        t
    });
    let (from, to) = match (hours.first(), hours.last()) {
        (Some(f), Some(l)) => (hour_text(f.start), hour_text(l.start)),
        _ => (String::new(), String::new()),
    };
    let mut desc = format!(
        "{} hours from {from} to {to}: {} verified, {} refused, {} rate limited.",
        hours.len(),
        total.verified(),
        total.refused(),
        total.rate_limited()
    );
    match limit {
        Some(l) if line.is_some() => {
            let _ = write!(
                desc,
                " Rate limit {} (about {} per hour) drawn as a dashed line.",
                l.label,
                short(l.per_hour.round())
            );
        }
        Some(l) => {
            let _ = write!(
                desc,
                " Rate limit {} (about {} per hour) is far above the bars.",
                l.label,
                short(l.per_hour.round())
            );
        }
        None => {}
    }

    let mut svg = String::with_capacity(16 * 1024);
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="usage-chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" aria-labelledby="{id}-title {id}-desc" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(
        svg,
        r#"<title id="{id}-title">Requests per hour</title><desc id="{id}-desc">{}</desc>"#,
        escape(&desc)
    );
    // Grid lines and counts up the side: 0, half, top.
    for v in [0.0, top / 2.0, top] {
        let yy = y(v);
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#d0d7de" stroke-width="1"/><text x="{}" y="{:.1}" text-anchor="end" fill="#57606a">{}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            yy + 4.0,
            escape(&short(v))
        );
    }
    // Days along the bottom: a tick and a date at each midnight (UTC).
    for (i, b) in hours.iter().enumerate() {
        if b.start.unix_ms().rem_euclid(DAY_MS) == 0 {
            let x = LEFT + i as f64 * slot;
            let date = &b.start.to_rfc3339()[5..10];
            let _ = write!(
                svg,
                r##"<line x1="{x:.1}" x2="{x:.1}" y1="{}" y2="{}" stroke="#8c959f" stroke-width="1"/><text x="{x:.1}" y="{}" text-anchor="middle" fill="#57606a">{}</text>"##,
                TOP + plot_h,
                TOP + plot_h + 5.0,
                TOP + plot_h + 18.0,
                escape(date)
            );
        }
    }
    // The bars: verified, then refused, then rate limited, stacked.
    for (i, b) in hours.iter().enumerate() {
        let c = &b.counts;
        if c.is_empty() {
            continue;
        }
        let x = LEFT + i as f64 * slot;
        let _ = write!(svg, "<g><title>{}</title>", escape(&bar_title(b.start, c)));
        let mut base = 0.0;
        for (n, colour) in [
            (c.verified(), VERIFIED),
            (c.refused(), REFUSED),
            (c.rate_limited(), RATE_LIMITED),
        ] {
            if n == 0 {
                continue;
            }
            let upper = base + n as f64;
            let _ = write!(
                svg,
                r#"<rect x="{x:.2}" y="{:.2}" width="{bar_w:.2}" height="{:.2}" fill="{colour}"/>"#,
                y(upper),
                y(base) - y(upper)
            );
            base = upper;
        }
        svg.push_str("</g>");
    }
    if let Some(l) = line {
        let yy = y(l.per_hour);
        let _ = write!(
            svg,
            r#"<g><title>{}</title><line x1="{LEFT}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="{LIMIT}" stroke-width="2" stroke-dasharray="6 4"/></g>"#,
            escape(&format!(
                "Rate limit {} ≈ {} per hour",
                l.label,
                short(l.per_hour.round())
            )),
            WIDTH - RIGHT
        );
    }
    // The axes.
    let _ = write!(
        svg,
        r##"<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{}" stroke="#57606a" stroke-width="1"/><line x1="{LEFT}" x2="{}" y1="{}" y2="{}" stroke="#57606a" stroke-width="1"/>"##,
        TOP + plot_h,
        WIDTH - RIGHT,
        TOP + plot_h,
        TOP + plot_h
    );
    if total.is_empty() {
        let _ = write!(
            svg,
            r##"<text x="{}" y="{}" text-anchor="middle" fill="#57606a">No requests in this period</text>"##,
            LEFT + plot_w / 2.0,
            TOP + plot_h / 2.0
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use keygate::core::Outcome;
    use keygate::core::usage::{Bucket, UsageRange, roll_up};

    fn t(text: &str) -> Timestamp {
        Timestamp::parse_rfc3339(text).unwrap()
    }

    /// A week of hours ending with the hour of 2027-01-31T12:30Z, with `counts` at hours
    /// (index, outcome, n).
    fn week(counts: &[(usize, Outcome, u64)]) -> Vec<UsageBucket> {
        let range = UsageRange::new(None, None, Bucket::Hour, t("2027-01-31T12:30:00Z"));
        let mut hours = roll_up(&range, &[]);
        for (i, outcome, n) in counts {
            hours[*i].counts.add(*outcome, *n);
        }
        hours
    }

    /// Every `<rect>`'s (y, height, fill).
    fn rects(svg: &str) -> Vec<(f64, f64, String)> {
        svg.split("<rect ")
            .skip(1)
            .map(|r| {
                let attr = |name: &str| {
                    let at = r.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
                    r[at..at + r[at..].find('"').unwrap()].to_owned()
                };
                (
                    attr("y").parse().unwrap(),
                    attr("height").parse().unwrap(),
                    attr("fill"),
                )
            })
            .collect()
    }

    #[test]
    fn bars_stack_refusals_on_verified_with_a_title_each() {
        let hours = week(&[
            (167, Outcome::Valid, 30),
            (167, Outcome::Revoked, 10),
            (167, Outcome::RateLimited, 10),
            (100, Outcome::Valid, 5),
        ]);
        let svg = usage_svg("k", &hours, None);
        assert!(
            svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""),
            "{svg}"
        );
        assert!(svg.ends_with("</svg>"));
        // Two hours counted: two titled groups, four rectangles.
        assert_eq!(svg.matches("<g><title>").count(), 2);
        let bars = rects(&svg);
        assert_eq!(bars.len(), 4);
        // The last hour: 50 of a scale of 50, from the bottom (y = 196) up: green 30, red 10,
        // amber 10, each on the one below.
        let bottom = TOP + (HEIGHT - TOP - BOTTOM);
        let last = &bars[1..];
        assert_eq!(last[0].2, VERIFIED);
        assert_eq!(last[1].2, REFUSED);
        assert_eq!(last[2].2, RATE_LIMITED);
        let unit = (HEIGHT - TOP - BOTTOM) / 50.0;
        assert!((last[0].0 + last[0].1 - bottom).abs() < 0.02);
        assert!((last[0].1 - 30.0 * unit).abs() < 0.02);
        assert!((last[1].0 + last[1].1 - last[0].0).abs() < 0.02);
        assert!(
            (last[2].0 - TOP).abs() < 0.02,
            "the tallest bar reaches the top"
        );
        assert!(svg.contains(
            "<title>2027-01-31 12:00 UTC: 30 verified, 10 refused (REVOKED 10), 10 rate limited</title>"
        ));
        // Axis labels: counts and the days (midnights) of the week.
        assert!(
            svg.contains(">50</text>") && svg.contains(">25</text>") && svg.contains(">0</text>")
        );
        for day in ["01-25", "01-26", "01-31"] {
            assert!(svg.contains(&format!(">{day}</text>")), "{day}");
        }
        assert!(svg.contains("168 hours from 2027-01-24 13:00 UTC to 2027-01-31 12:00 UTC: 35 verified, 10 refused, 10 rate limited."));
        // No inline style or script for the CSP to refuse.
        assert!(!svg.contains("style=") && !svg.contains("<script"));
    }

    #[test]
    fn the_limit_is_drawn_per_hour_or_named_when_far_above() {
        let limits = keygate::core::limits::RateLimits::parse("burst=2/1m,daily=1000/1d").unwrap();
        let limit = hourly_limit(&limits).unwrap();
        // 2 per minute is 120 an hour; 1000 a day is about 41.7 an hour: the tighter wins.
        assert!((limit.per_hour - 1000.0 / 24.0).abs() < 1e-9, "{limit:?}");
        assert_eq!(limit.label, "daily: 1000 per 1d");
        let hours = week(&[(10, Outcome::Valid, 20)]);
        let svg = usage_svg("k", &hours, Some(&limit));
        assert!(svg.contains("stroke-dasharray"), "{svg}");
        // The scale reaches the line: 41.7 → 50.
        assert!(svg.contains(">50</text>"));
        assert!(
            svg.contains(
                "Rate limit daily: 1000 per 1d (about 42 per hour) drawn as a dashed line."
            )
        );
        // Far above the bars it is named, not drawn.
        let hours = week(&[(10, Outcome::Valid, 2)]);
        let svg = usage_svg("k", &hours, Some(&limit));
        assert!(!svg.contains("stroke-dasharray"));
        assert!(svg.contains("is far above the bars"));
        assert!(hourly_limit(&RateLimits::default()).is_none());
    }

    #[test]
    fn an_empty_week_says_so_and_text_is_escaped() {
        let svg = usage_svg("a\"<b>&", &week(&[]), None);
        assert!(svg.contains("No requests in this period"));
        assert_eq!(rects(&svg).len(), 0);
        assert!(
            svg.contains(r#"aria-labelledby="a&quot;&lt;b&gt;&amp;-title"#),
            "{svg}"
        );
        assert!(!svg.contains("<b>"));
        let limit = HourlyLimit {
            per_hour: 1.0,
            label: "<script>&".into(),
        };
        let svg = usage_svg("k", &week(&[(0, Outcome::Valid, 1)]), Some(&limit));
        assert!(!svg.contains("<script>"));
        assert!(svg.contains("&lt;script&gt;&amp;"));
        // An empty list of hours is still a chart.
        let svg = usage_svg("k", &[], None);
        assert!(svg.ends_with("</svg>"));
    }

    #[test]
    fn scales_are_round() {
        assert_eq!(nice_ceiling(0.5), 1.0);
        assert_eq!(nice_ceiling(3.0), 5.0);
        assert_eq!(nice_ceiling(41.7), 50.0);
        assert_eq!(nice_ceiling(101.0), 200.0);
        assert_eq!(short(25_000.0), "25k");
        assert_eq!(short(2_500_000.0), "2.5M");
        assert_eq!(short(2.5), "2.5");
    }
}
