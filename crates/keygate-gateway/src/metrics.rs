//! The gateway's counters, kept with atomics (no lock on the request path) and written out in
//! the Prometheus text format on the admin listener.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keygate::{Keygate, Outcome};

use crate::accept::ConnectionStats;

/// Upper bounds of the upstream latency histogram, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Refusal codes counted per route: the verifier's (but `VALID`), then `UNAVAILABLE`; anything
/// else is counted as `OTHER`.
fn refusal_codes() -> impl Iterator<Item = &'static str> {
    Outcome::ALL
        .iter()
        .filter(|o| !o.is_valid())
        .map(|o| o.code())
        .chain(["UNAVAILABLE", "OTHER"])
}

const REFUSAL_SLOTS: usize = Outcome::ALL.len() + 1;

/// Why an upstream gave no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// Connecting or the response headers took too long (504).
    Timeout,
    /// Refused, reset or unintelligible (502).
    Unavailable,
}

/// Counters of one route.
#[derive(Debug)]
struct RouteMetrics {
    name: String,
    requests: AtomicU64,
    refusals: [AtomicU64; REFUSAL_SLOTS],
    /// Upstream responses by status (100–599).
    statuses: Box<[AtomicU64; 500]>,
    failures: [AtomicU64; 2],
    /// Upstream latency to response headers, per bucket (not cumulative); last is +Inf.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
    /// Response bodies from the upstream that broke off.
    body_errors: AtomicU64,
}

/// Everything the gateway counts.
#[derive(Debug)]
pub struct Metrics {
    routes: Vec<RouteMetrics>,
    not_found: AtomicU64,
    method_not_allowed: AtomicU64,
    bad_path: AtomicU64,
    /// Client connections (of the data plane).
    pub connections: Arc<ConnectionStats>,
}

/// Why a request had no route, for the counters.
#[derive(Debug, Clone, Copy)]
pub enum Unrouted {
    /// 404.
    NotFound,
    /// 405.
    MethodNotAllowed,
    /// 400.
    BadPath,
}

impl Metrics {
    /// Counters for routes with these names (in route order).
    pub fn new<'a>(route_names: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            routes: route_names
                .into_iter()
                .map(|name| RouteMetrics {
                    name: name.to_owned(),
                    requests: AtomicU64::new(0),
                    refusals: Default::default(),
                    statuses: Box::new(std::array::from_fn(|_| AtomicU64::new(0))),
                    failures: Default::default(),
                    buckets: Default::default(),
                    sum_micros: AtomicU64::new(0),
                    body_errors: AtomicU64::new(0),
                })
                .collect(),
            not_found: AtomicU64::new(0),
            method_not_allowed: AtomicU64::new(0),
            bad_path: AtomicU64::new(0),
            connections: Arc::default(),
        }
    }

    /// A request matched route `route`.
    pub fn request(&self, route: usize) {
        self.routes[route].requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Route `route` refused a request with this problem code.
    pub fn refused(&self, route: usize, code: &str) {
        let slot = refusal_codes()
            .position(|c| c == code)
            .unwrap_or(REFUSAL_SLOTS - 1);
        self.routes[route].refusals[slot].fetch_add(1, Ordering::Relaxed);
    }

    /// A request matched no route.
    pub fn unrouted(&self, why: Unrouted) {
        let counter = match why {
            Unrouted::NotFound => &self.not_found,
            Unrouted::MethodNotAllowed => &self.method_not_allowed,
            Unrouted::BadPath => &self.bad_path,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The upstream of `route` answered with `status` after `took`.
    pub fn upstream(&self, route: usize, status: u16, took: Duration) {
        let r = &self.routes[route];
        if let Some(slot) = status
            .checked_sub(100)
            .and_then(|i| r.statuses.get(usize::from(i)))
        {
            slot.fetch_add(1, Ordering::Relaxed);
        }
        let secs = took.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        r.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        r.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// The upstream of `route` gave no response.
    pub fn upstream_failed(&self, route: usize, why: UpstreamFailure) {
        let slot = match why {
            UpstreamFailure::Timeout => 0,
            UpstreamFailure::Unavailable => 1,
        };
        self.routes[route].failures[slot].fetch_add(1, Ordering::Relaxed);
    }

    /// A response body from the upstream of `route` broke off.
    pub fn body_error(&self, route: usize) {
        self.routes[route]
            .body_errors
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition, with the verifier's own counters.
    pub fn render(&self, keygate: &Keygate) -> String {
        let mut out = String::with_capacity(4096);
        let family = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        family(
            &mut out,
            "keygate_gateway_requests_total",
            "counter",
            "Requests that matched a route.",
        );
        for r in &self.routes {
            let _ = writeln!(
                out,
                "keygate_gateway_requests_total{{route=\"{}\"}} {}",
                label(&r.name),
                r.requests.load(Ordering::Relaxed)
            );
        }
        family(
            &mut out,
            "keygate_gateway_refusals_total",
            "counter",
            "Requests a route refused, by problem code.",
        );
        for r in &self.routes {
            for (code, n) in refusal_codes().zip(&r.refusals) {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "keygate_gateway_refusals_total{{route=\"{}\",code=\"{code}\"}} {n}",
                        label(&r.name)
                    );
                }
            }
        }
        family(
            &mut out,
            "keygate_gateway_unrouted_total",
            "counter",
            "Requests that matched no route, by why.",
        );
        for (why, n) in [
            ("no_route", &self.not_found),
            ("method_not_allowed", &self.method_not_allowed),
            ("bad_path", &self.bad_path),
        ] {
            let _ = writeln!(
                out,
                "keygate_gateway_unrouted_total{{reason=\"{why}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        family(
            &mut out,
            "keygate_gateway_upstream_responses_total",
            "counter",
            "Upstream responses, by status.",
        );
        for r in &self.routes {
            for (i, n) in r.statuses.iter().enumerate() {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "keygate_gateway_upstream_responses_total{{route=\"{}\",status=\"{}\"}} {n}",
                        label(&r.name),
                        i + 100
                    );
                }
            }
        }
        family(
            &mut out,
            "keygate_gateway_upstream_failures_total",
            "counter",
            "Requests the upstream gave no response to (timeout: 504, unavailable: 502), and response bodies that broke off (body).",
        );
        for r in &self.routes {
            for (why, n) in [
                ("timeout", &r.failures[0]),
                ("unavailable", &r.failures[1]),
                ("body", &r.body_errors),
            ] {
                let _ = writeln!(
                    out,
                    "keygate_gateway_upstream_failures_total{{route=\"{}\",reason=\"{why}\"}} {}",
                    label(&r.name),
                    n.load(Ordering::Relaxed)
                );
            }
        }
        family(
            &mut out,
            "keygate_gateway_upstream_duration_seconds",
            "histogram",
            "Time from sending a request upstream to its response headers.",
        );
        for r in &self.routes {
            let name = label(&r.name);
            let mut cumulative = 0;
            for (i, n) in r.buckets.iter().enumerate() {
                cumulative += n.load(Ordering::Relaxed);
                let le = BUCKETS
                    .get(i)
                    .map_or_else(|| "+Inf".to_owned(), f64::to_string);
                let _ = writeln!(
                    out,
                    "keygate_gateway_upstream_duration_seconds_bucket{{route=\"{name}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let sum = r.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(
                out,
                "keygate_gateway_upstream_duration_seconds_sum{{route=\"{name}\"}} {sum}\n\
                 keygate_gateway_upstream_duration_seconds_count{{route=\"{name}\"}} {cumulative}"
            );
        }
        self.connections.render("keygate_gateway", &mut out);
        keygate.write_limit_metrics(&mut out);
        family(
            &mut out,
            "keygate_verifications_total",
            "counter",
            "Key verifications by outcome.",
        );
        for (outcome, n) in keygate.verification_counts() {
            let _ = writeln!(
                out,
                "keygate_verifications_total{{code=\"{}\"}} {n}",
                outcome.code()
            );
        }
        if let Some(stats) = keygate.cache_stats() {
            family(
                &mut out,
                "keygate_cache_lookups_total",
                "counter",
                "Verification cache lookups.",
            );
            let _ = writeln!(
                out,
                "keygate_cache_lookups_total{{result=\"hit\"}} {}\nkeygate_cache_lookups_total{{result=\"miss\"}} {}",
                stats.hits, stats.misses
            );
        }
        out
    }
}

/// A Prometheus label value: `\`, `"` and newlines escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
