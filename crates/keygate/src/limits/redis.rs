//! [`RedisLimiter`]: rate limits shared by several nodes through Redis, counted locally.
//!
//! # Protocol: reserve in Redis, spend locally
//!
//! Each (subject, limit, fixed window) is one Redis hash,
//! `<prefix><name>:<window secs>:<window index>:<subject>` (e.g.
//! `keygate:rl:per_1m:60:30000000:key:key_01J…`), mapping each node's id to the units that node
//! has *reserved* in that window; it expires at the end of the next window (plus a minute).
//! The global count of a window is the sum over nodes.
//!
//! A node spends from a local **lease**: units it reserved ahead. While every limit of a
//! request has lease for its cost, the check is local (a mutex and some arithmetic, no I/O).
//! Otherwise the request makes **one round trip**: a Lua script (`reserve.lua`) that, over
//! every limit of the request at once, sums the hashes, applies the same weighted-window rule
//! as [`keygate_core::limits`] (the node passes the weight) and, if the request's cost fits
//! under every limit, adds a reservation of between `cost` and `want` units to this node's
//! field — atomically. Lease sizes double while demand lasts (`want = 2 × last grant`) and are
//! capped at `free / (2 × nodes)`, so that near the limit a lease shrinks to exactly the
//! request's cost and each request is decided in Redis: the "synchronous near the limit" mode.
//! When a lease falls to half its grant the node reserves more in the background (a
//! prefetch), so a steady stream rarely waits. A node that *knows* (from counts it has seen)
//! that a request cannot fit refuses it locally: counts within a window only grow, so such a
//! refusal is never wrong — and a client hammering a limit it has exhausted costs no round
//! trips. When a window ends, an unused lease is given back (`HINCRBY −unused` on the old
//! window) so that the previous window weighs what was really spent.
//!
//! # Overshoot bound
//!
//! **While Redis keeps its data: 0.** Every unit admitted anywhere was first reserved in Redis
//! by a script that checked it against all nodes' reservations, so the admitted count never
//! exceeds what one node counting every request would allow. The price is **undershoot**: units
//! reserved by one node but not (yet) spent can refuse a request on another node. At any
//! moment the units held so are `Σ over nodes of lease ≤ Σ min(2 × last grant, free_at_grant /
//! (2 × nodes))`, which tends to 0 near the limit; at the end of a window they are returned.
//!
//! Where the guarantee ends:
//! - **Redis unreachable** (errors or no reply within `timeout`): each node counts on its own,
//!   starting from the global counts it last saw: limits become per node, so `nodes × limit`
//!   in the worst case over a long outage. Callers never see an error.
//! - **Redis restarted without persistence**: the reservations of the current windows are gone.
//!   A node notices on its next script call (its own field is lower than it should be) or
//!   within one probe interval (Redis' `run_id` changed) and writes its own counts back.
//!   Until every node has, the others' lost reservations can be granted again: overshoot up to
//!   the lost counts, for at most one probe interval. Persistence (AOF) avoids this.
//!
//! # Redis loss and recovery
//!
//! The first failure marks the limiter degraded ([`RedisHealth::Degraded`], with the time and
//! error), logs one warning, and counts [`RedisStats::degraded`]; every request is then
//! decided locally (leases first, then local counting). A background task probes Redis every
//! `probe_interval`; when it answers and no old script call is still in flight, the node
//! writes its counts back — absolute values (`HSET`), so a retry or a write that did land
//! earlier cannot double count — and is healthy again (one info log line, and
//! [`RedisStats::recovered`]). Units spent locally during the write-back are added with the
//! subject's next script call.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::{Duration, Instant};

use keygate_core::limits::{Decision, LimitStatus, RateLimit, Window, WindowState};
use keygate_core::{Clock, Timestamp};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::mpsc;

use super::table::{SlotState, Table};
use super::{DEFAULT_MAX_SUBJECTS, LimiterStats, Subject, refuse_full, unique_subjects};
use crate::SystemClock;

static SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("reserve.lua")));
/// Gives back `ARGV[2]` units of node `ARGV[1]`'s reservation in hash `KEYS[1]`, if it holds
/// them (never creating the field, never going below zero).
static RELEASE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        "local held = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0') \
         if held > 0 then \
           redis.call('HINCRBY', KEYS[1], ARGV[1], string.format('%d', -math.min(held, tonumber(ARGV[2])))) \
         end \
         return held",
    )
});

/// Background jobs waiting at most: past this, a prefetch or release is skipped (a request
/// then reserves for itself; an unreleased lease only makes the previous window weigh more).
const JOB_QUEUE: usize = 4096;
/// Re-sync writes per pipeline.
const RESEED_BATCH: usize = 256;
/// Redis keys outlive the window that needs them by this much.
const KEY_SLACK_MS: i64 = 60_000;

/// Per (subject, limit): what this node knows and holds.
#[derive(Debug, Default)]
struct Synced {
    /// Units reserved by all nodes as last seen (ours included), for `view.window` and the one
    /// before.
    view: WindowState,
    /// Units this node reserved in `view.window` and has not spent.
    lease: u64,
    /// Units this node reserved or spent in `view.window`: what its Redis field should hold
    /// (plus `pending`' s units not yet sent).
    own: u64,
    /// The same for the window before, after giving back the unused lease.
    own_previous: u64,
    /// Units spent locally (Redis away) that are in `own` but not yet in Redis.
    pending: u64,
    /// The last reservation's size, for sizing the next.
    last_grant: u64,
    /// A background reservation is under way.
    prefetching: bool,
}

impl SlotState for Synced {
    fn is_idle(&self, window: Window, now: Timestamp) -> bool {
        self.view.is_idle(window, now) && !self.prefetching
    }
}

impl Synced {
    /// Moves to `now`'s window. Returns the unused lease of the window that just ended, to give
    /// back: (that window's index, units).
    fn roll(&mut self, window: Window, now: Timestamp) -> Option<(i64, u64)> {
        let steps = window.index(now) - self.view.window;
        if steps <= 0 {
            return None;
        }
        let release = (steps == 1 && self.lease > 0).then_some((self.view.window, self.lease));
        let mut view = self.view.rolled(window, now);
        if steps == 1 {
            self.own_previous = self.own.saturating_sub(self.lease);
            view.previous = view.previous.saturating_sub(self.lease);
        } else {
            self.own_previous = 0;
        }
        self.view = view;
        self.own = 0;
        self.lease = 0;
        self.pending = 0;
        release
    }

    /// The counts with this node's unspent lease as free: what the next request can use.
    fn free_view(&self) -> WindowState {
        WindowState {
            current: self.view.current.saturating_sub(self.lease),
            ..self.view
        }
    }

    /// Spends `cost`: the lease first, then (Redis away) units counted locally.
    fn spend_locally(&mut self, cost: u64) {
        let from_lease = self.lease.min(cost);
        self.lease -= from_lease;
        let extra = cost - from_lease;
        if extra > 0 {
            self.view.spend(extra);
            self.own += extra;
            self.pending += extra;
        }
    }

    /// Half or less of the last reservation is left.
    fn low(&self) -> bool {
        self.last_grant > 0 && self.lease * 2 <= self.last_grant
    }

    fn wants_prefetch(&self) -> bool {
        !self.prefetching && self.low()
    }

    fn want(&self, need: u64, limit: &RateLimit) -> u64 {
        need.max(self.last_grant.max(1).saturating_mul(2).min(limit.limit))
    }
}

/// Whether the limiter shares its counts through Redis right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisHealth {
    /// Counts are shared.
    Ok,
    /// Redis could not be used since `since`; each node counts on its own until it can.
    Degraded {
        /// When the failure was first seen.
        since: Timestamp,
        /// The error then.
        error: String,
    },
}

/// Counters for metrics (monotonic, except `subjects`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RedisStats {
    /// The table: subjects, evictions, refusals when full.
    pub table: LimiterStats,
    /// Decisions made locally from a lease (no I/O).
    pub local_admits: u64,
    /// Refusals made locally from counts already seen (no I/O).
    pub local_refusals: u64,
    /// Requests that made a round trip to Redis.
    pub round_trips: u64,
    /// Background reservations made.
    pub prefetches: u64,
    /// Requests decided by local counting because Redis was away.
    pub degraded_decisions: u64,
    /// Redis calls that failed or timed out.
    pub redis_errors: u64,
    /// Times the limiter went from shared to degraded.
    pub degraded: u64,
    /// Times it came back.
    pub recovered: u64,
}

impl RedisStats {
    /// The counters in the Prometheus text format, named `keygate_ratelimit_*`.
    pub fn write_prometheus(&self, out: &mut String, healthy: bool) {
        use std::fmt::Write;
        let mut counter = |name: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP keygate_ratelimit_{name} {help}");
            let _ = writeln!(out, "# TYPE keygate_ratelimit_{name} counter");
            let _ = writeln!(out, "keygate_ratelimit_{name} {value}");
        };
        counter(
            "local_admits_total",
            "Requests admitted from a local lease.",
            self.local_admits,
        );
        counter(
            "local_refusals_total",
            "Requests refused from counts already seen.",
            self.local_refusals,
        );
        counter(
            "round_trips_total",
            "Requests decided by a Redis round trip.",
            self.round_trips,
        );
        counter(
            "prefetches_total",
            "Background lease reservations.",
            self.prefetches,
        );
        counter(
            "degraded_decisions_total",
            "Requests counted on this node alone because Redis was unreachable.",
            self.degraded_decisions,
        );
        counter(
            "redis_errors_total",
            "Redis calls that failed or timed out.",
            self.redis_errors,
        );
        counter(
            "redis_degraded_total",
            "Transitions to counting without Redis.",
            self.degraded,
        );
        counter(
            "redis_recovered_total",
            "Transitions back to shared counting.",
            self.recovered,
        );
        counter(
            "evicted_total",
            "Idle subjects dropped.",
            self.table.evicted,
        );
        counter(
            "refused_full_total",
            "Requests refused because the limiter was full.",
            self.table.refused_full,
        );
        let _ = writeln!(out, "# HELP keygate_ratelimit_subjects Subjects held.");
        let _ = writeln!(out, "# TYPE keygate_ratelimit_subjects gauge");
        let _ = writeln!(out, "keygate_ratelimit_subjects {}", self.table.subjects);
        let _ = writeln!(
            out,
            "# HELP keygate_ratelimit_redis_up Whether Redis is in use (1) or not (0)."
        );
        let _ = writeln!(out, "# TYPE keygate_ratelimit_redis_up gauge");
        let _ = writeln!(out, "keygate_ratelimit_redis_up {}", u8::from(healthy));
    }
}

/// A Redis URL that could not be used.
#[derive(Debug)]
pub struct RedisConfigError(String);

impl fmt::Display for RedisConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad Redis URL: {}", self.0)
    }
}

impl std::error::Error for RedisConfigError {}

/// Settings for [`RedisLimiter`]; start from [`RedisLimiter::builder`].
pub struct RedisLimiterBuilder {
    url: String,
    prefix: String,
    node: Option<String>,
    timeout: Duration,
    probe_interval: Duration,
    max_subjects: usize,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for RedisLimiterBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLimiterBuilder")
            .field("url", &redacted(&self.url))
            .field("prefix", &self.prefix)
            .field("node", &self.node)
            .field("timeout", &self.timeout)
            .field("probe_interval", &self.probe_interval)
            .field("max_subjects", &self.max_subjects)
            .finish_non_exhaustive()
    }
}

/// A Redis URL without its credentials (`redis://***@host:6379/0`).
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "***".into();
    };
    match rest.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://***@{host}"),
        None => url.to_owned(),
    }
}

impl RedisLimiterBuilder {
    /// Prefix of every Redis key (default `keygate:rl:`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// This node's id in Redis (default: 16 random hex digits per process).
    pub fn node_id(mut self, node: impl Into<String>) -> Self {
        self.node = Some(node.into());
        self
    }

    /// How long a request waits for Redis before counting locally (default 100 ms).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How often Redis is probed: for recovery when degraded, for restarts when not (default
    /// 500 ms).
    pub fn probe_interval(mut self, every: Duration) -> Self {
        self.probe_interval = every;
        self
    }

    /// Most subjects held at once (default [`DEFAULT_MAX_SUBJECTS`]).
    pub fn max_subjects(mut self, n: usize) -> Self {
        self.max_subjects = n;
        self
    }

    /// Where "now" comes from for background work (default: the system clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Makes the limiter and tries Redis once. Fails only on a malformed URL: an unreachable
    /// Redis gives a degraded limiter that recovers by itself. Needs a Tokio runtime.
    pub async fn connect(self) -> Result<RedisLimiter, RedisConfigError> {
        // The parser's message may quote the URL, password and all: say only what kind of
        // problem it is.
        let client = redis::Client::open(self.url.as_str())
            .map_err(|e| RedisConfigError(format!("{:?} ({})", e.kind(), redacted(&self.url))))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(self.probe_interval);
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| RedisConfigError(e.to_string()))?;
        let node = self.node.unwrap_or_else(|| {
            let mut random = [0u8; 8];
            getrandom::fill(&mut random).expect("the OS random number generator failed");
            random.iter().map(|b| format!("{b:02x}")).collect()
        });
        let (jobs, queue) = mpsc::channel(JOB_QUEUE);
        let shared = Arc::new(Shared {
            table: Table::new(self.max_subjects),
            conn,
            prefix: self.prefix,
            node,
            timeout: self.timeout,
            clock: self.clock,
            healthy: AtomicBool::new(true),
            health: Mutex::new(HealthState::default()),
            in_flight: AtomicUsize::new(0),
            jobs,
            counters: Counters::default(),
        });
        match shared.redis_run_id().await {
            Ok(run_id) => lock(&shared.health).run_id = Some(run_id),
            Err(e) => shared.degrade(&e),
        }
        tokio::spawn(background(
            Arc::downgrade(&shared),
            queue,
            self.probe_interval,
        ));
        Ok(RedisLimiter { shared })
    }
}

/// Rate-limit counters shared by all nodes through Redis; see the [module docs](self) for the
/// protocol, the overshoot bound and what happens when Redis is away. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RedisLimiter {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct HealthState {
    degraded: Option<(Timestamp, String, Instant)>,
    run_id: Option<String>,
}

#[derive(Debug, Default)]
struct Counters {
    local_admits: AtomicU64,
    local_refusals: AtomicU64,
    round_trips: AtomicU64,
    prefetches: AtomicU64,
    degraded_decisions: AtomicU64,
    redis_errors: AtomicU64,
    degraded: AtomicU64,
    recovered: AtomicU64,
}

struct Shared {
    table: Table<Synced>,
    conn: ConnectionManager,
    prefix: String,
    node: String,
    timeout: Duration,
    clock: Arc<dyn Clock>,
    /// `health.degraded.is_none()`, readable without a lock.
    healthy: AtomicBool,
    health: Mutex<HealthState>,
    /// Script calls sent and not yet answered or timed out.
    in_flight: AtomicUsize,
    jobs: mpsc::Sender<Job>,
    counters: Counters,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("prefix", &self.prefix)
            .field("node", &self.node)
            .field("healthy", &self.healthy.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
enum Job {
    /// Reserve more for a subject whose lease runs low.
    Prefetch(Subject, Box<[RateLimit]>),
    /// Give back an unused lease of a window that ended.
    Release { key: String, units: u64 },
}

/// One limit of a request that needs a reservation.
#[derive(Debug)]
struct Sent {
    /// Position among all the request's limits.
    at: usize,
    window: i64,
    need: u64,
    add: u64,
}

/// A request that needs a round trip: what was held from leases, and the script call.
struct Ask {
    /// Per limit of the request (flattened): units taken from the lease, and the window.
    held: Vec<(u64, i64)>,
    sent: Vec<Sent>,
    invocation: redis::ScriptInvocation<'static>,
}

/// The script's answer for one limit.
#[derive(Debug, Clone, Copy)]
struct Granted {
    current: u64,
    previous: u64,
    granted: u64,
    fits: bool,
}

#[derive(Debug)]
struct Reply {
    ok: bool,
    lost: bool,
    limits: Vec<Granted>,
}

impl RedisLimiter {
    /// Settings for a limiter on the Redis at `url` (`redis://host:port/db`).
    pub fn builder(url: impl Into<String>) -> RedisLimiterBuilder {
        RedisLimiterBuilder {
            url: url.into(),
            prefix: "keygate:rl:".into(),
            node: None,
            timeout: Duration::from_millis(100),
            probe_interval: Duration::from_millis(500),
            max_subjects: DEFAULT_MAX_SUBJECTS,
            clock: Arc::new(SystemClock),
        }
    }

    /// Checks a request of `cost` at `now` against every limit of every subject in `request`,
    /// all together, as [`LocalLimiter::check`](super::LocalLimiter::check) does — shared with
    /// every node on the same Redis. Usually decided locally; near a limit, one Redis round
    /// trip. Never an error: with Redis away it counts locally.
    ///
    /// # Panics
    /// With more than [`MAX_SUBJECTS`](super::MAX_SUBJECTS) subjects, or one subject twice.
    pub async fn check(
        &self,
        request: &[(&Subject, &[RateLimit])],
        cost: u64,
        now: Timestamp,
    ) -> Decision {
        if request.iter().all(|(_, limits)| limits.is_empty()) {
            return Decision::unlimited();
        }
        assert!(
            unique_subjects(request),
            "a subject appears twice in one check"
        );
        let shared = &self.shared;
        let ask = match shared.plan(request, cost, now) {
            Ok(decision) => return decision,
            Err(ask) => ask,
        };
        shared.counters.round_trips.fetch_add(1, Ordering::Relaxed);
        let reply = shared.call(&ask.invocation, ask.sent.len()).await;
        shared.finish(request, cost, now, ask, reply)
    }

    /// Whether counts are shared right now.
    pub fn health(&self) -> RedisHealth {
        match &lock(&self.shared.health).degraded {
            None => RedisHealth::Ok,
            Some((since, error, _)) => RedisHealth::Degraded {
                since: *since,
                error: error.clone(),
            },
        }
    }

    /// Counters for metrics.
    pub fn stats(&self) -> RedisStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RedisStats {
            table: LimiterStats::of(&self.shared.table),
            local_admits: get(&c.local_admits),
            local_refusals: get(&c.local_refusals),
            round_trips: get(&c.round_trips),
            prefetches: get(&c.prefetches),
            degraded_decisions: get(&c.degraded_decisions),
            redis_errors: get(&c.redis_errors),
            degraded: get(&c.degraded),
            recovered: get(&c.recovered),
        }
    }

    /// Units this node holds reserved and unspent for `subject`'s `limit` (what it would give
    /// back at the end of the window). For tests and diagnostics.
    pub fn lease(&self, subject: &Subject, limit: &RateLimit) -> u64 {
        let mut locked = self.shared.table.lock(std::iter::once(subject));
        let Some(entry) = locked.shard(0).get(subject) else {
            return 0;
        };
        entry
            .slots()
            .find(|(name, window, _)| (*name, *window) == (limit.name, limit.window))
            .map_or(0, |(_, _, slot)| slot.lease)
    }

    /// The Redis key of `subject`'s `limit` for the fixed window holding `at`.
    pub fn redis_key(&self, subject: &Subject, limit: &RateLimit, at: Timestamp) -> String {
        self.shared.key(
            subject,
            limit.name.as_str(),
            limit.window,
            limit.window.index(at),
        )
    }

    /// This node's field in the Redis hashes.
    pub fn node_id(&self) -> &str {
        &self.shared.node
    }

    /// Drops every subject whose counts no longer matter at `now`; returns how many. The
    /// background task does this every minute.
    pub fn sweep(&self, now: Timestamp) -> usize {
        self.shared.table.sweep(now)
    }
}

impl Shared {
    fn key(&self, subject: &Subject, name: &str, window: Window, index: i64) -> String {
        format!(
            "{}{name}:{}:{index}:{subject}",
            self.prefix,
            window.as_secs()
        )
    }

    fn ttl_ms(window: Window, index: i64, now: Timestamp) -> i64 {
        let w = window.as_ms() as i64;
        ((index + 2) * w - now.unix_ms() + KEY_SLACK_MS).max(1_000)
    }

    /// Decides locally if it can (`Ok`), else holds what leases cover and prepares the script
    /// call (`Err`).
    fn plan(
        &self,
        request: &[(&Subject, &[RateLimit])],
        cost: u64,
        now: Timestamp,
    ) -> Result<Decision, Ask> {
        let healthy = self.healthy.load(Ordering::Acquire);
        let capacity = self.table.shard_capacity();
        let mut releases = Vec::new();
        let mut prefetches = Vec::new();
        let mut locked = self.table.lock(request.iter().map(|(s, _)| *s));
        let mut all_leased = true;
        let mut surely_refused = false;
        let mut at = 0;
        for (i, (subject, limits)) in request.iter().enumerate() {
            if limits.is_empty() {
                continue;
            }
            let Some(entry) =
                locked
                    .shard(i)
                    .entry(subject, limits, now, capacity, &self.table.stats)
            else {
                return Ok(refuse_full(request));
            };
            for (slot, limit) in entry.states.iter_mut().zip(*limits) {
                if let Some((index, units)) = slot.roll(limit.window, now)
                    && healthy
                {
                    let key = self.key(subject, limit.name.as_str(), limit.window, index);
                    releases.push((at, Job::Release { key, units }));
                }
                at += 1;
                if slot.lease < cost {
                    all_leased = false;
                    surely_refused |= !slot.free_view().fits(limit, cost, now);
                }
            }
        }
        if all_leased || surely_refused || !healthy {
            let allowed = !surely_refused;
            let mut statuses = Decision::with_capacity(request.iter().map(|(_, l)| l.len()).sum());
            for (i, (subject, limits)) in request.iter().enumerate() {
                let Some(entry) = locked.shard(i).get(subject).filter(|_| !limits.is_empty())
                else {
                    continue;
                };
                let mut low = false;
                for (slot, limit) in entry.states.iter_mut().zip(*limits) {
                    let free = slot.free_view();
                    let refused = (!allowed && !free.fits(limit, cost, now)).then_some(cost);
                    if allowed {
                        slot.spend_locally(cost);
                    }
                    statuses.push(
                        slot.free_view()
                            .status(subject.scope(), limit, now, refused),
                    );
                    low |= allowed && healthy && slot.wants_prefetch();
                }
                if low {
                    entry.states.iter_mut().for_each(|s| s.prefetching = true);
                    prefetches.push(Job::Prefetch((*subject).clone(), (*limits).into()));
                }
            }
            drop(locked);
            let counter = if surely_refused {
                &self.counters.local_refusals
            } else if all_leased {
                &self.counters.local_admits
            } else {
                &self.counters.degraded_decisions
            };
            counter.fetch_add(1, Ordering::Relaxed);
            self.enqueue(releases.into_iter().map(|(_, job)| job).chain(prefetches));
            return Ok(statuses);
        }
        // Hold what the leases cover; reserve the rest in Redis.
        let mut held = Vec::new();
        let mut sent = Vec::new();
        let mut invocation = SCRIPT.prepare_invoke();
        let mut args = Vec::new();
        for (i, (subject, limits)) in request.iter().enumerate() {
            let Some(entry) = locked.shard(i).get(subject).filter(|_| !limits.is_empty()) else {
                continue;
            };
            for (slot, limit) in entry.states.iter_mut().zip(*limits) {
                let take = slot.lease.min(cost);
                slot.lease -= take;
                held.push((take, slot.view.window));
                let need = cost - take;
                if need == 0 {
                    continue;
                }
                let index = slot.view.window;
                invocation
                    .key(self.key(subject, limit.name.as_str(), limit.window, index))
                    .key(self.key(subject, limit.name.as_str(), limit.window, index - 1));
                // A lease to give back from the window that just ended goes with this call, so
                // that the sums it reads are already without it.
                let flat = held.len() - 1;
                let release = match releases.iter().position(|(at, _)| *at == flat) {
                    Some(r) => match releases.swap_remove(r).1 {
                        Job::Release { units, .. } => units,
                        Job::Prefetch(..) => 0,
                    },
                    None => 0,
                };
                args.push([
                    limit.limit,
                    slot.view.previous_weight(limit.window, now),
                    need,
                    slot.want(need, limit),
                    slot.pending,
                    slot.own.saturating_sub(slot.pending),
                    Self::ttl_ms(limit.window, index, now) as u64,
                    release,
                ]);
                sent.push(Sent {
                    at: held.len() - 1,
                    window: index,
                    need,
                    add: slot.pending,
                });
                slot.pending = 0;
            }
        }
        drop(locked);
        invocation.arg(&self.node).arg(sent.len());
        for a in &args {
            for v in a {
                invocation.arg(*v);
            }
        }
        self.enqueue(releases.into_iter().map(|(_, job)| job));
        Err(Ask {
            held,
            sent,
            invocation,
        })
    }

    /// Applies the script's answer (or its failure) and decides.
    fn finish(
        &self,
        request: &[(&Subject, &[RateLimit])],
        cost: u64,
        now: Timestamp,
        ask: Ask,
        reply: Result<Reply, String>,
    ) -> Decision {
        let reply = match reply {
            Ok(reply) if reply.lost => {
                self.degrade(&"Redis lost this node's counts (restarted without persistence?)");
                None
            }
            Ok(reply) => Some(reply),
            Err(e) => {
                self.degrade(&e);
                None
            }
        };
        let capacity = self.table.shard_capacity();
        let mut locked = self.table.lock(request.iter().map(|(s, _)| *s));
        let mut at = 0;
        let mut sent = ask
            .sent
            .iter()
            .zip(reply.iter().flat_map(|r| &r.limits))
            .peekable();
        let admitted = reply.as_ref().map(|r| r.ok);
        // First: put what came back (or what was held) where it belongs.
        let mut surely_refused = false;
        let mut late_releases = Vec::new();
        for (i, (subject, limits)) in request.iter().enumerate() {
            if limits.is_empty() {
                continue;
            }
            let Some(entry) =
                locked
                    .shard(i)
                    .entry(subject, limits, now, capacity, &self.table.stats)
            else {
                return refuse_full(request);
            };
            for (slot, limit) in entry.states.iter_mut().zip(*limits) {
                let (held, window) = ask.held[at];
                if let Some((index, units)) = slot.roll(limit.window, now) {
                    let key = self.key(subject, limit.name.as_str(), limit.window, index);
                    late_releases.push(Job::Release { key, units });
                }
                let same_window = slot.view.window == window;
                let answer = sent.next_if(|(s, _)| s.at == at);
                if let Some((s, g)) = answer {
                    if same_window {
                        slot.view.current = slot.view.current.max(g.current);
                        slot.view.previous = g.previous;
                        slot.own += g.granted;
                        slot.lease += g.granted.saturating_sub(s.need);
                    } else if slot.view.window == window + 1 {
                        slot.own_previous += g.granted;
                    }
                    if g.granted > 0 {
                        slot.last_grant = g.granted;
                    }
                } else if let Some(s) = ask
                    .sent
                    .iter()
                    .find(|s| s.at == at)
                    .filter(|_| reply.is_none())
                {
                    // Not sent through: its locally spent units are still to be sent.
                    if same_window {
                        slot.pending += s.add;
                    }
                }
                match admitted {
                    Some(true) => {}
                    // Refused by Redis, or decided locally below: the held units go back.
                    _ => {
                        if same_window {
                            slot.lease += held;
                        }
                    }
                }
                if admitted.is_none() {
                    surely_refused |= slot.lease < cost && !slot.free_view().fits(limit, cost, now);
                }
                at += 1;
            }
        }
        // Then decide, and build the statuses.
        let allowed = match admitted {
            Some(ok) => ok,
            None => !surely_refused,
        };
        if admitted.is_none() {
            self.counters
                .degraded_decisions
                .fetch_add(1, Ordering::Relaxed);
        }
        let fits_in_redis: Vec<Option<bool>> = {
            let mut v = vec![None; at];
            if let Some(r) = &reply {
                for (s, g) in ask.sent.iter().zip(&r.limits) {
                    v[s.at] = Some(g.fits);
                }
            }
            v
        };
        let mut decision = Decision::with_capacity(at);
        let mut at = 0;
        for (i, (subject, limits)) in request.iter().enumerate() {
            let Some(entry) = locked.shard(i).get(subject).filter(|_| !limits.is_empty()) else {
                continue;
            };
            for (slot, limit) in entry.states.iter_mut().zip(*limits) {
                let refused = match (allowed, admitted, fits_in_redis[at]) {
                    (true, _, _) => None,
                    (false, Some(false), Some(fits)) => (!fits).then_some(cost),
                    (false, _, _) => (!slot.free_view().fits(limit, cost, now)).then_some(cost),
                };
                if allowed && admitted.is_none() {
                    slot.spend_locally(cost);
                }
                decision.push(
                    slot.free_view()
                        .status(subject.scope(), limit, now, refused),
                );
                at += 1;
            }
        }
        drop(locked);
        self.enqueue(late_releases);
        if !allowed && decision.allowed() {
            // Redis refused on counts newer than ours: say which limits, from its sums.
            decision = Decision::new(
                decision
                    .limits()
                    .iter()
                    .map(|l| LimitStatus {
                        retry_after: Some(l.retry_after.unwrap_or(1)),
                        remaining: 0,
                        ..*l
                    })
                    .collect(),
            );
        }
        decision
    }

    /// Runs a script call with the timeout; counts it in flight meanwhile.
    async fn call(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
        limits: usize,
    ) -> Result<Reply, String> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let mut conn = self.conn.clone();
        let result =
            tokio::time::timeout(self.timeout, invocation.invoke_async::<Vec<i64>>(&mut conn))
                .await;
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        let values = match result {
            Ok(Ok(values)) => values,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(format!("no answer within {} ms", self.timeout.as_millis())),
        };
        parse_reply(&values, limits)
            .ok_or_else(|| "unexpected reply from the rate-limit script".into())
    }

    fn enqueue(&self, jobs: impl IntoIterator<Item = Job>) {
        for job in jobs {
            if let Err(mpsc::error::TrySendError::Full(Job::Prefetch(subject, limits))) =
                self.jobs.try_send(job)
            {
                // Not prefetched: a later request reserves for itself.
                let _ = limits;
                self.clear_prefetching(&subject);
            }
        }
    }

    fn clear_prefetching(&self, subject: &Subject) {
        let mut locked = self.table.lock(std::iter::once(subject));
        if let Some(entry) = locked.shard(0).get(subject) {
            entry.states.iter_mut().for_each(|s| s.prefetching = false);
        }
    }

    /// Reserves more for a subject whose lease ran low.
    async fn prefetch(&self, subject: Subject, limits: Box<[RateLimit]>) {
        let now = self.clock.now();
        let healthy = self.healthy.load(Ordering::Acquire);
        let capacity = self.table.shard_capacity();
        let mut invocation = SCRIPT.prepare_invoke();
        let mut args = Vec::new();
        let mut sent = Vec::new();
        let mut unsent = Vec::new();
        {
            let mut locked = self.table.lock(std::iter::once(&subject));
            let Some(entry) =
                locked
                    .shard(0)
                    .entry(&subject, &limits, now, capacity, &self.table.stats)
            else {
                return;
            };
            if healthy {
                for (at, (slot, limit)) in entry.states.iter_mut().zip(limits.iter()).enumerate() {
                    let release = slot.roll(limit.window, now).map_or(0, |(_, units)| units);
                    if !slot.low() {
                        if release > 0 {
                            let index = slot.view.window - 1;
                            let key = self.key(&subject, limit.name.as_str(), limit.window, index);
                            unsent.push(Job::Release {
                                key,
                                units: release,
                            });
                        }
                        continue;
                    }
                    let index = slot.view.window;
                    invocation
                        .key(self.key(&subject, limit.name.as_str(), limit.window, index))
                        .key(self.key(&subject, limit.name.as_str(), limit.window, index - 1));
                    args.push([
                        limit.limit,
                        slot.view.previous_weight(limit.window, now),
                        0,
                        slot.want(1, limit),
                        slot.pending,
                        slot.own.saturating_sub(slot.pending),
                        Self::ttl_ms(limit.window, index, now) as u64,
                        release,
                    ]);
                    sent.push(Sent {
                        at,
                        window: index,
                        need: 0,
                        add: slot.pending,
                    });
                    slot.pending = 0;
                }
            }
            if sent.is_empty() {
                entry.states.iter_mut().for_each(|s| s.prefetching = false);
            }
        }
        for job in unsent {
            if let Job::Release { key, units } = job {
                self.release(key, units).await;
            }
        }
        if sent.is_empty() {
            return;
        }
        invocation.arg(&self.node).arg(sent.len());
        for a in &args {
            for v in a {
                invocation.arg(*v);
            }
        }
        self.counters.prefetches.fetch_add(1, Ordering::Relaxed);
        let reply = self.call(&invocation, sent.len()).await;
        let reply = match reply {
            Ok(r) if r.lost => {
                self.degrade(&"Redis lost this node's counts (restarted without persistence?)");
                None
            }
            Ok(r) => Some(r),
            Err(e) => {
                self.degrade(&e);
                None
            }
        };
        let mut locked = self.table.lock(std::iter::once(&subject));
        let Some(entry) =
            locked
                .shard(0)
                .entry(&subject, &limits, now, capacity, &self.table.stats)
        else {
            return;
        };
        entry.states.iter_mut().for_each(|s| s.prefetching = false);
        for (k, s) in sent.iter().enumerate() {
            let Some(slot) = entry.states.get_mut(s.at) else {
                continue;
            };
            if slot.view.window != s.window {
                continue;
            }
            match reply.as_ref().map(|r| r.limits[k]) {
                Some(g) => {
                    slot.view.current = slot.view.current.max(g.current);
                    slot.view.previous = g.previous;
                    slot.own += g.granted;
                    slot.lease += g.granted;
                    if g.granted > 0 {
                        slot.last_grant = g.granted;
                    }
                }
                None => slot.pending += s.add,
            }
        }
    }

    async fn release(&self, key: String, units: u64) {
        if !self.healthy.load(Ordering::Acquire) {
            return; // the write-back on recovery sets the right value
        }
        let mut conn = self.conn.clone();
        let mut release = RELEASE.key(&key);
        release.arg(&self.node).arg(units);
        match tokio::time::timeout(self.timeout, release.invoke_async::<i64>(&mut conn)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => self.degrade(&e),
            Err(_) => self.degrade(&format!("no answer within {} ms", self.timeout.as_millis())),
        }
    }

    async fn redis_run_id(&self) -> Result<String, String> {
        let mut conn = self.conn.clone();
        let info = redis::cmd("INFO").arg("server").to_owned();
        let text =
            match tokio::time::timeout(self.timeout, info.query_async::<String>(&mut conn)).await {
                Ok(Ok(text)) => text,
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => return Err(format!("no answer within {} ms", self.timeout.as_millis())),
            };
        text.lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .map(|id| id.trim().to_owned())
            .ok_or_else(|| "INFO server has no run_id".into())
    }

    /// Healthy: checks that Redis is there and is the same server. Degraded: tries to recover.
    async fn probe(&self) {
        let run_id = self.redis_run_id().await;
        if self.healthy.load(Ordering::Acquire) {
            match run_id {
                Ok(id) => {
                    let previous = lock(&self.health).run_id.replace(id.clone());
                    if previous.is_some_and(|p| p != id) {
                        self.degrade(&"Redis restarted (its run_id changed): writing counts back");
                    }
                }
                Err(e) => self.degrade(&e),
            }
            return;
        }
        let Ok(id) = run_id else {
            self.counters.redis_errors.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return; // an old call may still land; write back once it has settled
        }
        match self.write_back().await {
            Ok(written) => {
                let mut health = lock(&self.health);
                health.run_id = Some(id);
                if let Some((_, _, since)) = health.degraded.take() {
                    self.healthy.store(true, Ordering::Release);
                    self.counters.recovered.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        node = %self.node,
                        after_ms = since.elapsed().as_millis() as u64,
                        counters_written = written,
                        "Redis is reachable again: rate limits are shared across nodes again"
                    );
                }
            }
            Err(e) => {
                self.counters.redis_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "rate-limit write-back to Redis failed; will retry");
            }
        }
    }

    /// Writes this node's counts for every live window back, as absolute values.
    async fn write_back(&self) -> Result<usize, String> {
        let now = self.clock.now();
        let mut writes: Vec<(String, u64, i64)> = Vec::new();
        self.table.for_each_shard(|shard| {
            for (subject, entry) in shard.entries() {
                for (name, window, slot) in entry.slots() {
                    slot.roll(window, now);
                    let index = slot.view.window;
                    if slot.own > 0 {
                        let key = self.key(subject, name.as_str(), window, index);
                        writes.push((key, slot.own, Self::ttl_ms(window, index, now)));
                    }
                    if slot.own_previous > 0 {
                        let key = self.key(subject, name.as_str(), window, index - 1);
                        writes.push((key, slot.own_previous, Self::ttl_ms(window, index - 1, now)));
                    }
                    slot.pending = 0;
                }
            }
        });
        let mut conn = self.conn.clone();
        for batch in writes.chunks(RESEED_BATCH) {
            let mut pipe = redis::pipe();
            for (key, units, ttl) in batch {
                pipe.cmd("HSET")
                    .arg(key)
                    .arg(&self.node)
                    .arg(*units)
                    .ignore();
                pipe.cmd("PEXPIRE").arg(key).arg(*ttl).ignore();
            }
            match tokio::time::timeout(self.timeout * 4, pipe.query_async::<()>(&mut conn)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => return Err("write-back timed out".into()),
            }
        }
        Ok(writes.len())
    }

    /// Marks the limiter degraded (once per outage: one log line, one count).
    fn degrade(&self, error: &dyn fmt::Display) {
        self.counters.redis_errors.fetch_add(1, Ordering::Relaxed);
        let mut health = lock(&self.health);
        if health.degraded.is_some() {
            return;
        }
        let error = error.to_string();
        tracing::warn!(
            node = %self.node,
            error = %error,
            "Redis is unreachable: rate limits are counted on this node alone until it is back"
        );
        health.degraded = Some((self.clock.now(), error, Instant::now()));
        self.healthy.store(false, Ordering::Release);
        self.counters.degraded.fetch_add(1, Ordering::Relaxed);
    }
}

fn parse_reply(values: &[i64], limits: usize) -> Option<Reply> {
    if values.len() != 2 + 4 * limits {
        return None;
    }
    let count = |v: i64| u64::try_from(v).unwrap_or(0);
    Some(Reply {
        ok: values[0] == 1,
        lost: values[1] == 1,
        limits: values[2..]
            .chunks_exact(4)
            .map(|c| Granted {
                current: count(c[0]),
                previous: count(c[1]),
                granted: count(c[2]),
                fits: c[3] == 1,
            })
            .collect(),
    })
}

/// The background task: prefetches and releases as they come, probes Redis every `every`,
/// sweeps idle subjects every minute. Ends when the limiter is dropped.
async fn background(shared: Weak<Shared>, mut jobs: mpsc::Receiver<Job>, every: Duration) {
    let mut probe = tokio::time::interval(every);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sweep = tokio::time::interval(Duration::from_secs(60));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            job = jobs.recv() => {
                let (Some(job), Some(shared)) = (job, shared.upgrade()) else { return };
                match job {
                    Job::Prefetch(subject, limits) => shared.prefetch(subject, limits).await,
                    Job::Release { key, units } => shared.release(key, units).await,
                }
            }
            _ = probe.tick() => {
                let Some(shared) = shared.upgrade() else { return };
                shared.probe().await;
            }
            _ = sweep.tick() => {
                let Some(shared) = shared.upgrade() else { return };
                shared.table.sweep(shared.clock.now());
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_credentials() {
        assert_eq!(
            redacted("redis://:s3cret@cache:6379/0"),
            "redis://***@cache:6379/0"
        );
        assert_eq!(redacted("redis://user:p@ss@cache"), "redis://***@cache");
        assert_eq!(redacted("redis://cache:6379"), "redis://cache:6379");
        assert_eq!(redacted("s3cret"), "***");
        let builder = RedisLimiter::builder("redis://:s3cret@cache:6379/0");
        assert!(!format!("{builder:?}").contains("s3cret"));
    }

    #[tokio::test]
    async fn a_malformed_url_is_refused_without_echoing_it() {
        let err = RedisLimiter::builder("rediss//:s3cret@cache")
            .connect()
            .await
            .unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
        assert_eq!(err.to_string(), "bad Redis URL: InvalidClientConfig (***)");
    }
}
