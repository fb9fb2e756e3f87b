//! Request metrics kept in memory and written out in the Prometheus text format, with the
//! verifier's outcome counters and the store's key counts.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keygate::Keygate;
use keygate::StatusCounts;
use keygate::core::Status;

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Counters for HTTP requests.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests per bucket (not cumulative); the last slot is +Inf.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    /// Sum of latencies, in microseconds.
    sum_micros: AtomicU64,
    /// Requests by status code (100–599), without a lock.
    statuses: Statuses,
}

#[derive(Debug)]
struct Statuses([AtomicU64; 500]);

impl Default for Statuses {
    fn default() -> Self {
        Self(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl Metrics {
    /// Records one finished request.
    pub fn observe(&self, status: u16, took: Duration) {
        let secs = took.as_secs_f64();
        let slot = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        if let Some(slot) = status
            .checked_sub(100)
            .and_then(|i| self.statuses.0.get(usize::from(i)))
        {
            slot.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self, keygate: &Keygate, keys: &StatusCounts) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP keygate_verifications_total Key verifications by outcome code.\n\
             # TYPE keygate_verifications_total counter"
        );
        for (outcome, n) in keygate.verification_counts() {
            let _ = writeln!(
                out,
                "keygate_verifications_total{{code=\"{}\"}} {n}",
                outcome.code()
            );
        }
        if let Some(cache) = keygate.cache_stats() {
            let _ = writeln!(
                out,
                "# HELP keygate_cache_lookups_total Verification cache lookups by result.\n\
                 # TYPE keygate_cache_lookups_total counter\n\
                 keygate_cache_lookups_total{{result=\"hit\"}} {}\n\
                 keygate_cache_lookups_total{{result=\"miss\"}} {}\n\
                 # HELP keygate_cache_entries Entries in the verification cache.\n\
                 # TYPE keygate_cache_entries gauge\n\
                 keygate_cache_entries{{kind=\"record\"}} {}\n\
                 keygate_cache_entries{{kind=\"absent\"}} {}",
                cache.hits, cache.misses, cache.records, cache.negatives
            );
        }
        keygate.write_limit_metrics(&mut out);
        let (dropped, waiting) = keygate.verifier().usage_backlog();
        let _ = writeln!(
            out,
            "# HELP keygate_usage_rows_waiting Usage rows (key, hour) counted in memory, waiting for the next flush.\n\
             # TYPE keygate_usage_rows_waiting gauge\n\
             keygate_usage_rows_waiting {waiting}\n\
             # HELP keygate_usage_dropped_total Requests left out of the usage counts because too many rows waited for the store.\n\
             # TYPE keygate_usage_dropped_total counter\n\
             keygate_usage_dropped_total {dropped}"
        );
        let _ = writeln!(
            out,
            "# HELP keygate_keys Keys in the store by status.\n# TYPE keygate_keys gauge"
        );
        for status in [
            Status::Active,
            Status::Disabled,
            Status::Expired,
            Status::Revoked,
        ] {
            let _ = writeln!(
                out,
                "keygate_keys{{status=\"{status}\"}} {}",
                keys.get(status)
            );
        }
        let _ = writeln!(
            out,
            "# HELP keygate_http_requests_total HTTP requests by status code.\n\
             # TYPE keygate_http_requests_total counter"
        );
        for (i, slot) in self.statuses.0.iter().enumerate() {
            let n = slot.load(Ordering::Relaxed);
            if n > 0 {
                let status = i + 100;
                let _ = writeln!(
                    out,
                    "keygate_http_requests_total{{status=\"{status}\"}} {n}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP keygate_http_request_duration_seconds HTTP request latency.\n\
             # TYPE keygate_http_request_duration_seconds histogram"
        );
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "keygate_http_request_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += self.buckets[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "keygate_http_request_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
        );
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "keygate_http_request_duration_seconds_sum {sum}");
        let _ = writeln!(
            out,
            "keygate_http_request_duration_seconds_count {cumulative}"
        );
        out
    }
}
