//! [`Verifier`]: checks presented keys over the store's keys role, a cache and a clock.
//!
//! Verify path: parse (length, alphabet, prefix, checksum) → SHA-256 → cache → store lookup by
//! hash → [`decide`]. Garbage is refused before any lookup. A successful verification does not
//! write: last-used times are kept in memory and written in batches. The cache follows the
//! store's change feed, so a change made by any process reaches it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue};

use keygate_core::limits::{
    Decision, IpAllowlist, LimitName, LimitScope, MAX_COST, RateLimit, retry_after_refill,
};
use keygate_core::scope::first_missing;
use keygate_core::switch::{Usage, Uses};
use keygate_core::{
    Clock, KeyGrant, KeyHash, KeyId, Outcome, Timestamp, decide, lacks_scope, parse,
};
use keygate_store::{Change, ImportedKinds, KeyStore, Spend, StoreError, UsageLog};

use crate::FastMap;
use crate::cache::{Cache, CacheConfig, CacheStats, Lookup};
use crate::error::Error;
use crate::key::ApiKey;
use crate::limits::{Limiter, LocalLimiter, Subject};
use crate::usage::UsageTally;

/// What [`Verifier::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// The decision, with its stable code.
    pub outcome: Outcome,
    /// The key, whenever one was found (valid or not).
    pub key: Option<ApiKey>,
    /// A sentence saying why, safe to show the caller (it never repeats the key).
    pub detail: Cow<'static, str>,
    /// The key's rate limits as this request left them (for the `RateLimit` headers), when
    /// it has any and they were checked.
    pub limits: Option<Decision>,
    /// The key's credits left after this request, when it has a quota and it was checked.
    pub credits: Option<u64>,
    /// Refused for its credits (`USAGE_EXCEEDED`) with a quota that refills: seconds until the
    /// refill is due (at least 1) — the client's `Retry-After`.
    pub credits_refill_in: Option<u64>,
}

/// Named once, so that each request does not parse the name from text.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// What a request asks of a key besides its scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Demand {
    /// Units it spends of the key's rate limits and credits (default 1; 0 checks without
    /// spending).
    pub cost: u64,
    /// The client's address, for the key's allowlist. A key with an allowlist refuses a
    /// request whose address is unknown.
    pub client: Option<IpAddr>,
}

impl Default for Demand {
    fn default() -> Self {
        Self {
            cost: 1,
            client: None,
        }
    }
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        Timestamp::from_unix_ms(ms).expect("the system clock is between years 1970 and 9999")
    }
}

/// How a [`Verifier`] behaves.
#[derive(Debug, Clone)]
pub struct VerifierConfig {
    /// Where "now" comes from (default: the system clock).
    pub clock: Arc<dyn Clock>,
    /// The cache (default: [`CacheConfig::default`]); `None` asks the store every time.
    pub cache: Option<CacheConfig>,
    /// How often last-used times are written (default 10 s); `None`: only when
    /// [`Verifier::flush_usage`] is called.
    pub usage_flush: Option<Duration>,
    /// Where rate limits are counted (default: in this process).
    pub limiter: Arc<Limiter>,
    /// Proxies whose `X-Forwarded-For` entries are believed when finding a client's address
    /// (default: none; the socket peer is the client).
    pub trusted_proxies: Option<IpAllowlist>,
    /// Where requests are counted per (key, hour) by outcome, written with the last-used
    /// times (default: nowhere — nothing is counted). [`Keygate`](crate::Keygate) sets its
    /// store.
    pub usage_log: Option<Arc<dyn UsageLog>>,
}

impl Default for VerifierConfig {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            cache: Some(CacheConfig::default()),
            usage_flush: Some(Duration::from_secs(10)),
            limiter: Arc::new(Limiter::Local(LocalLimiter::default())),
            trusted_proxies: None,
            usage_log: None,
        }
    }
}

/// Checks presented keys. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn KeyStore>,
    clock: Arc<dyn Clock>,
    /// Successful uses per key, waiting for the next flush.
    last_used: LastUsed,
    /// Verifications by outcome, indexed like `Outcome::ALL`.
    counts: [AtomicU64; Outcome::ALL.len()],
    cache: Option<Cache>,
    limiter: Arc<Limiter>,
    trusted_proxies: Option<IpAllowlist>,
    /// Requests refused by each rate limit, by whose limit and its name.
    rate_limited: Mutex<HashMap<(LimitScope, LimitName), u64>>,
    /// Slow imported-hash checks running ([`LEGACY_CHECKS`] permits) and waiting.
    legacy_checks: Arc<tokio::sync::Semaphore>,
    legacy_waiting: AtomicUsize,
    /// The imported kinds the store held, packed with the change generation they were read
    /// at (see [`pack_kinds`]); 0: not read yet.
    kinds: AtomicU64,
    /// Bumped by every change the feed reports.
    kinds_generation: AtomicU64,
    /// Requests per (key, hour) by outcome, waiting for the next flush.
    tally: Option<UsageTally>,
}

impl Verifier {
    /// A verifier over the keys role of a store. Inside a Tokio runtime it also starts the
    /// background tasks that write last-used times and follow the store's change feed; they
    /// end when the last clone of the verifier is dropped.
    pub fn new(store: Arc<dyn KeyStore>, config: VerifierConfig) -> Self {
        let verifier = Self {
            inner: Arc::new(Inner {
                store: store.clone(),
                cache: config.cache.map(|c| Cache::new(c, config.clock.clone())),
                clock: config.clock,
                last_used: LastUsed::default(),
                counts: Default::default(),
                limiter: config.limiter,
                trusted_proxies: config.trusted_proxies,
                rate_limited: Mutex::default(),
                legacy_checks: Arc::new(tokio::sync::Semaphore::new(LEGACY_CHECKS)),
                legacy_waiting: AtomicUsize::new(0),
                kinds: AtomicU64::new(0),
                kinds_generation: AtomicU64::new(0),
                tally: config.usage_log.map(UsageTally::new),
            }),
        };
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            if let Some(every) = config.usage_flush {
                handle.spawn(flush_loop(Arc::downgrade(&verifier.inner), every));
            }
            if verifier.inner.cache.is_some() {
                handle.spawn(follow_changes(Arc::downgrade(&verifier.inner), store));
            }
        }
        verifier
    }

    /// The current time by this verifier's clock.
    pub fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// Checks a presented key for the `required` scopes, as a request of cost 1 from an
    /// unknown address. `Err` only when the store fails.
    pub async fn verify<R: AsRef<str> + Sync>(
        &self,
        presented: &str,
        required: &[R],
    ) -> Result<Verification, Error> {
        self.verify_demand(presented, required, Demand::default())
            .await
    }

    /// Checks a presented key for the `required` scopes and for what the request demands:
    /// its address against the key's allowlist, its cost against the key's rate limits and
    /// credits. Order: the key's own rules ([`decide`]), then the allowlist, then the rate
    /// limits (all together: a refused request spends nothing of them), then the credits (one
    /// conditional decrement in the store). `Err` only when the store fails.
    pub async fn verify_demand<R: AsRef<str> + Sync>(
        &self,
        presented: &str,
        required: &[R],
        demand: Demand,
    ) -> Result<Verification, Error> {
        if presented.is_empty() {
            return Ok(self.refused(Outcome::Missing, Outcome::Missing.detail()));
        }
        let (found, now) = match parse(presented) {
            Ok(parsed) => self.lookup(parsed.hash()).await?,
            // Not keygate's format: an imported key of another system's, or garbage. The
            // common case first: no imported keys at all, known without asking.
            Err(e) if self.no_imported_keys() => {
                return Ok(self.refused(Outcome::Malformed, e.reason()));
            }
            // Boxed: a rare path whose state (a slow hash check) would otherwise be moved
            // around inside every verification's future.
            Err(e) => match Box::pin(self.imported(presented)).await? {
                Foreign::Malformed => {
                    return Ok(self.refused(Outcome::Malformed, e.reason()));
                }
                Foreign::Found(grant) => (Some(grant), self.now()),
                Foreign::Unknown => {
                    return Ok(self.refused(Outcome::NotFound, Outcome::NotFound.detail()));
                }
            },
        };
        let Some(grant) = found else {
            return Ok(self.refused(Outcome::NotFound, Outcome::NotFound.detail()));
        };
        let mut verification = Verification {
            outcome: decide(&grant, now, required),
            key: None,
            detail: Cow::Borrowed(""),
            limits: None,
            credits: None,
            credits_refill_in: None,
        };
        if verification.outcome.is_valid() {
            self.check_limits(&grant, demand, now, &mut verification)
                .await?;
        }
        let outcome = verification.outcome;
        verification.detail = match outcome {
            Outcome::Valid => {
                self.inner
                    .last_used
                    .note(&grant.id, grant.rotated_at(), now);
                Cow::Borrowed(outcome.detail())
            }
            Outcome::InsufficientScope => Cow::Owned(lacks_scope(
                first_missing(&grant.scopes, required).unwrap_or_default(),
            )),
            Outcome::RateLimited => Cow::Owned(rate_limited_detail(verification.limits.as_ref())),
            other => Cow::Borrowed(other.detail()),
        };
        tracing::debug!(key_id = %grant.id, outcome = outcome.code(), "verified API key");
        self.count(outcome);
        if let Some(tally) = &self.inner.tally {
            tally.note(&grant, outcome, now);
        }
        verification.key = Some(ApiKey::from(grant));
        Ok(verification)
    }

    /// The allowlist, the rate limits and the credits of a key that is otherwise valid; turns
    /// `verification` into the refusal if one of them says no.
    async fn check_limits(
        &self,
        grant: &KeyGrant,
        demand: Demand,
        now: Timestamp,
        verification: &mut Verification,
    ) -> Result<(), Error> {
        if let Some(allowed) = grant.allowed_ips()
            && !demand.client.is_some_and(|ip| allowed.contains(ip))
        {
            verification.outcome = Outcome::IpNotAllowed;
            return Ok(());
        }
        let cost = demand.cost.min(MAX_COST);
        let owner = grant
            .owner
            .as_deref()
            .filter(|_| !grant.owner_rate_limits().is_empty());
        if !grant.rate_limits().is_empty() || owner.is_some() {
            // The key's own limits and its owner's shared ones, checked together.
            let key = Subject::key(&grant.id);
            let owner = owner.map(Subject::owner);
            let both;
            let subjects: &[(&Subject, &[RateLimit])] = match &owner {
                None => &[(&key, grant.rate_limits())],
                Some(owner) if grant.rate_limits().is_empty() => {
                    &[(owner, grant.owner_rate_limits())]
                }
                Some(owner) => {
                    both = [
                        (&key, &grant.rate_limits()[..]),
                        (owner, &grant.owner_rate_limits()[..]),
                    ];
                    &both
                }
            };
            let decision = self.inner.limiter.check(subjects, cost, now).await;
            if !decision.allowed() {
                self.count_rate_limited(&decision);
                verification.outcome = Outcome::RateLimited;
                verification.limits = Some(decision);
                return Ok(());
            }
            verification.limits = Some(decision);
        }
        if let Some(payer) = grant.quota_payer() {
            let spent = self
                .inner
                .store
                .spend_quota(payer, cost)
                .await
                .map_err(Error::store("check the API key's credits"))?;
            match spent {
                Spend::Spent { remaining } => verification.credits = Some(remaining),
                Spend::Short {
                    remaining,
                    refill_due,
                } => {
                    verification.credits = Some(remaining);
                    verification.outcome = Outcome::UsageExceeded;
                    verification.credits_refill_in =
                        refill_due.map(|due| retry_after_refill(now, due));
                }
                // The quota was removed since this key was cached: nothing to count.
                Spend::NoQuota => {}
            }
        }
        Ok(())
    }

    /// The client's address of a request from `peer` with these `headers`: the socket peer,
    /// or behind the trusted proxies the first address from the right of `X-Forwarded-For`
    /// that is not one of them (see [`client_address`](keygate_core::limits::client_address)).
    pub fn client_address(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        // The header is looked up only if the walk reads it (behind a trusted proxy): a
        // custom header name's lookup costs a hash of its bytes on every request.
        let forwarded_for = std::iter::once(headers).flat_map(|headers| {
            headers
                .get_all(X_FORWARDED_FOR)
                .iter()
                .map(HeaderValue::as_bytes)
        });
        keygate_core::limits::client_address(
            peer,
            forwarded_for,
            self.inner.trusted_proxies.as_ref(),
        )
    }

    /// The rate limiter.
    pub fn limiter(&self) -> &Limiter {
        &self.inner.limiter
    }

    fn count_rate_limited(&self, decision: &Decision) {
        let mut counts = self
            .inner
            .rate_limited
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for status in decision.limits().iter().filter(|l| l.retry_after.is_some()) {
            *counts.entry((status.scope, status.name)).or_default() += 1;
        }
    }

    /// Requests refused by each rate limit since this verifier was built: (whose limit, the
    /// limit's name, count).
    pub fn rate_limited_counts(&self) -> Vec<(LimitScope, LimitName, u64)> {
        let counts = self
            .inner
            .rate_limited
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = counts.iter().map(|((s, n), c)| (*s, *n, *c)).collect();
        out.sort_by(|a, b| (a.1.as_str(), a.2).cmp(&(b.1.as_str(), b.2)));
        out
    }

    /// The grant of the key with this hash: from the cache, else from the store (and then
    /// cached); with the time it was found at (on a hit, one reading of the clock serves the
    /// cache's freshness and the key's rules).
    async fn lookup(&self, hash: KeyHash) -> Result<(Option<Arc<KeyGrant>>, Timestamp), Error> {
        let find = |hash| async move {
            let found = self.inner.store.find_by_hash(&hash).await;
            found
                .map(|r| r.map(|r| Arc::new(KeyGrant::from(r))))
                .map_err(Error::store("check the API key"))
        };
        let Some(cache) = &self.inner.cache else {
            let grant = find(hash).await?;
            return Ok((grant, self.now()));
        };
        let now = self.now();
        if let Lookup::Hit(grant) = cache.get_at(&hash, now) {
            return Ok((grant, now));
        }
        let epoch = cache.epoch();
        let grant = find(hash).await?;
        cache.insert(hash, grant.clone(), epoch);
        Ok((grant, self.now()))
    }

    /// A presented key that is not in keygate's format, while the store holds imported keys
    /// of its kind: found by its SHA-256 (a jsonl import, or a drf-api-key key already
    /// rehashed), else — in drf-api-key's shape — by its prefix and checked against the
    /// imported hash, then rehashed. Anything else is [`Foreign::Malformed`] (malformed),
    /// with no lookup. The caller has ruled out that no imported keys exist at all.
    async fn imported(&self, presented: &str) -> Result<Foreign, Error> {
        let drf = keygate_core::legacy::drf_prefix(presented);
        if drf.is_none() && !foreign_shape(presented) {
            return Ok(Foreign::Malformed);
        }
        let kinds = self.imported_kinds().await?;
        let legacy = drf.filter(|_| kinds.legacy);
        if legacy.is_none() && !(kinds.sha256 && foreign_shape(presented)) {
            return Ok(Foreign::Malformed);
        }
        let hash = KeyHash::of(presented);
        if let (Some(grant), _) = self.lookup(hash).await? {
            return Ok(Foreign::Found(grant));
        }
        let Some(prefix) = legacy else {
            return Ok(Foreign::Unknown);
        };
        let candidates = self
            .inner
            .store
            .find_by_legacy_prefix(prefix)
            .await
            .map_err(Error::store("check the API key"))?;
        for (record, credential) in candidates {
            let scheme = credential.hash.scheme();
            let matched = if credential.hash.is_slow() {
                self.slow_check(credential.hash, presented).await?
            } else {
                credential.hash.matches(presented)
            };
            if !matched {
                continue;
            }
            let now = self.now();
            let id = record.id.clone();
            let record = match self
                .inner
                .store
                .rehash(&id, &hash, now, &keygate_core::Audit::library())
                .await
            {
                Ok(Some(rehashed)) => {
                    tracing::info!(key_id = %id, from = scheme, "rehashed an imported API key");
                    rehashed
                }
                // Rehashed meanwhile by another check: the same key.
                Ok(None) => record,
                // The key matched: answer for it, and rehash at its next check.
                Err(e) => {
                    tracing::warn!(key_id = %id, error = %e, "could not rehash an imported API key");
                    record
                }
            };
            // The SHA-256 was just looked up and missed: drop that answer.
            self.forget(&hash);
            return Ok(Foreign::Found(Arc::new(KeyGrant::from(record))));
        }
        Ok(Foreign::Unknown)
    }

    /// Checks a presented key against a slow (PBKDF2) imported hash on the blocking threads,
    /// at most [`LEGACY_CHECKS`] at a time; with more than [`LEGACY_QUEUE`] waiting, answers
    /// that keygate is unavailable rather than queue without bound.
    async fn slow_check(
        &self,
        hash: keygate_core::legacy::LegacyHash,
        presented: &str,
    ) -> Result<bool, Error> {
        let busy = || Error::Unavailable {
            action: "check the imported API key",
            cause: "too many imported keys are being checked at once".into(),
        };
        let waiting = Waiting::enter(&self.inner.legacy_waiting);
        if waiting.ahead >= LEGACY_QUEUE {
            return Err(busy());
        }
        let permit = self
            .inner
            .legacy_checks
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| busy())?;
        drop(waiting);
        let presented = presented.to_owned();
        // The permit goes with the work: a caller that gives up does not free its slot
        // before the hash is done.
        tokio::task::spawn_blocking(move || {
            let matched = hash.matches(&presented);
            drop(permit);
            matched
        })
        .await
        .map_err(|_| busy())
    }

    /// Which kinds of imported key the store holds: asked again after each change to a key
    /// (or every time when there is no cache, and so no change feed).
    async fn imported_kinds(&self) -> Result<ImportedKinds, Error> {
        // Read before asking: a change reported meanwhile makes this answer stale at once.
        let generation = self.inner.kinds_generation.load(Ordering::Acquire);
        if let Some(kinds) = self.known_kinds() {
            return Ok(kinds);
        }
        let kinds = self
            .inner
            .store
            .imported_kinds()
            .await
            .map_err(Error::store("check the API key"))?;
        self.inner
            .kinds
            .store(pack_kinds(kinds, generation), Ordering::Release);
        Ok(kinds)
    }

    /// Whether it is known, without asking the store, that no imported keys exist.
    fn no_imported_keys(&self) -> bool {
        self.known_kinds()
            .is_some_and(|k| k == ImportedKinds::default())
    }

    /// The imported kinds as last read, if no change was reported since (and there is a
    /// change feed to report them: a cache).
    fn known_kinds(&self) -> Option<ImportedKinds> {
        self.inner.cache.as_ref()?;
        let generation = self.inner.kinds_generation.load(Ordering::Acquire);
        unpack_kinds(self.inner.kinds.load(Ordering::Acquire), generation)
    }

    /// Drops a key from this process's cache (after a change made here).
    pub(crate) fn forget(&self, hash: &KeyHash) {
        if let Some(cache) = &self.inner.cache {
            cache.invalidate(hash);
        }
    }

    /// Drops every cached key of `owner`, whose shared limits changed.
    pub(crate) fn forget_owner(&self, owner: &str) {
        if let Some(cache) = &self.inner.cache {
            cache.invalidate_owner(owner);
        }
    }

    /// Cache counters; `None` when the cache is off.
    pub fn cache_stats(&self) -> Option<CacheStats> {
        self.inner.cache.as_ref().map(Cache::stats)
    }

    fn refused(&self, outcome: Outcome, detail: &'static str) -> Verification {
        tracing::debug!(outcome = outcome.code(), "refused API key");
        self.count(outcome);
        Verification {
            outcome,
            key: None,
            detail: Cow::Borrowed(detail),
            limits: None,
            credits: None,
            credits_refill_in: None,
        }
    }

    /// Counts one verification with this outcome (the layer also counts the requests it
    /// refuses before a key could be read).
    pub(crate) fn count(&self, outcome: Outcome) {
        if let Some(i) = Outcome::ALL.iter().position(|o| *o == outcome) {
            self.inner.counts[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// How many verifications ended with each outcome since this verifier was built.
    pub fn verification_counts(&self) -> Vec<(Outcome, u64)> {
        Outcome::ALL
            .iter()
            .zip(&self.inner.counts)
            .map(|(o, c)| (*o, c.load(Ordering::Relaxed)))
            .collect()
    }

    /// Writes the last-used times and the usage counts gathered since the previous flush,
    /// each in one batch. On failure they are kept for the next try.
    pub async fn flush_usage(&self) -> Result<(), Error> {
        let last_used = self.flush_last_used().await;
        if let Some(tally) = &self.inner.tally {
            tally
                .flush()
                .await
                .map_err(Error::store("record usage counts"))?;
        }
        last_used
    }

    /// Requests not counted in the usage log because too many (key, hour) rows were waiting
    /// for the store, and how many rows wait now.
    pub fn usage_backlog(&self) -> (u64, usize) {
        self.inner
            .tally
            .as_ref()
            .map_or((0, 0), |t| (t.dropped(), t.pending_rows()))
    }

    async fn flush_last_used(&self) -> Result<(), Error> {
        self.inner
            .last_used
            .flush(&*self.inner.store)
            .await
            .map_err(Error::store("record key usage"))
    }
}

/// Successful verifications per key since the last flush — for `last_used_at`,
/// `first_used_at` and a rotated key's uses since its rotation — written in batches.
#[derive(Debug, Default)]
struct LastUsed {
    pending: Mutex<FastMap<KeyId, Uses>>,
}

impl LastUsed {
    /// Notes a successful use of key `id` (rotated at `rotated_at`, if it was) at `at`.
    fn note(&self, id: &KeyId, rotated_at: Option<Timestamp>, at: Timestamp) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        match pending.get_mut(id) {
            Some(uses) => uses.add(at, rotated_at),
            None => {
                pending.insert(id.clone(), Uses::one(at, rotated_at));
            }
        }
    }

    /// Writes the uses gathered since the previous flush to `log`,
    /// [`FLUSH_ROWS`](crate::usage::FLUSH_ROWS) keys per call; on failure the keys not
    /// written are kept (added to what came since) for the next try.
    async fn flush<L: UsesLog + ?Sized>(&self, log: &L) -> Result<(), StoreError> {
        // Take the map rather than drain it, so its memory goes back between bursts; its rows
        // are moved out a call's worth at a time (no copy of the whole batch beside it).
        let taken = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::take(&mut *pending)
        };
        let mut rows = taken.into_iter();
        loop {
            let chunk: Vec<(KeyId, Uses)> = rows.by_ref().take(crate::usage::FLUSH_ROWS).collect();
            if chunk.is_empty() {
                return Ok(());
            }
            let batch: Vec<Usage> = chunk.iter().map(|(id, uses)| uses.of(id.clone())).collect();
            if let Err(e) = log.record(&batch).await {
                self.keep(chunk.into_iter().chain(rows));
                return Err(e);
            }
        }
    }

    /// Puts uses a flush could not write back with the uses gathered since.
    fn keep(&self, rows: impl Iterator<Item = (KeyId, Uses)>) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for (id, kept) in rows {
            match pending.get_mut(&id) {
                Some(uses) => uses.merge(&kept),
                None => {
                    pending.insert(id, kept);
                }
            }
        }
    }
}

/// Where [`LastUsed::flush`] writes: the store's keys role.
#[async_trait::async_trait]
trait UsesLog: Send + Sync {
    async fn record(&self, batch: &[Usage]) -> Result<(), StoreError>;
}

#[async_trait::async_trait]
impl UsesLog for dyn KeyStore {
    async fn record(&self, batch: &[Usage]) -> Result<(), StoreError> {
        self.record_usage(batch).await
    }
}

/// Where a presented key that is not in keygate's format led.
enum Foreign {
    /// Not a key of any imported kind the store holds: malformed.
    Malformed,
    /// An imported key.
    Found(Arc<KeyGrant>),
    /// Of an imported kind, but no such key.
    Unknown,
}

/// Slow imported hashes (PBKDF2) checked at once; each takes a blocking thread for up to a
/// second or so.
pub const LEGACY_CHECKS: usize = 2;
/// Slow checks that may wait for their turn; beyond this, keygate answers it is unavailable.
pub const LEGACY_QUEUE: usize = 64;
/// Longest presented key looked up as a foreign (imported by SHA-256) key: the longest key
/// the credential extractors accept at all.
pub const MAX_FOREIGN_KEY_LEN: usize = keygate_core::format::MAX_KEY_LEN;

/// Whether a presented key can be a foreign one imported by its SHA-256: 8 to
/// [`MAX_FOREIGN_KEY_LEN`] visible ASCII characters.
fn foreign_shape(presented: &str) -> bool {
    (8..=MAX_FOREIGN_KEY_LEN).contains(&presented.len())
        && presented.bytes().all(|b| b.is_ascii_graphic())
}

/// Imported kinds and the change generation they were read at, in one word (lock-free on the
/// rejection path): `(generation + 1) << 2 | sha256 << 1 | legacy`.
fn pack_kinds(kinds: ImportedKinds, generation: u64) -> u64 {
    (generation.wrapping_add(1) << 2) | (u64::from(kinds.sha256) << 1) | u64::from(kinds.legacy)
}

/// The kinds packed in `packed` if they were read at `generation`.
fn unpack_kinds(packed: u64, generation: u64) -> Option<ImportedKinds> {
    (packed != 0 && packed >> 2 == generation.wrapping_add(1) & (u64::MAX >> 2)).then_some(
        ImportedKinds {
            legacy: packed & 1 == 1,
            sha256: packed & 2 == 2,
        },
    )
}

/// Counts a waiting slow check for as long as it lives.
struct Waiting<'a> {
    count: &'a AtomicUsize,
    ahead: usize,
}

impl<'a> Waiting<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        let ahead = count.fetch_add(1, Ordering::AcqRel);
        Self { count, ahead }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The detail of a `RATE_LIMITED` refusal: which limit, and when to retry.
fn rate_limited_detail(decision: Option<&Decision>) -> String {
    let Some(decision) = decision else {
        return Outcome::RateLimited.detail().to_owned();
    };
    let over: Vec<String> = decision
        .limits()
        .iter()
        .filter(|l| l.retry_after.is_some())
        .map(|l| format!("`{}` ({} per {})", l.name.as_str(), l.limit, l.window))
        .collect();
    let retry = decision.retry_after().unwrap_or(1);
    format!(
        "the API key is over its rate limit {}; retry in {retry} s",
        over.join(", ")
    )
}

/// Applies the store's change feed to the cache for as long as the verifier lives. If the
/// feed cannot be had (the database is away), retries every second, and clears the cache on
/// each (re)subscription since changes may have been missed.
async fn follow_changes(inner: Weak<Inner>, store: Arc<dyn KeyStore>) {
    loop {
        let mut changes = loop {
            match store.watch().await {
                Ok(rx) => break rx,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot follow key changes; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if inner.strong_count() == 0 {
                        return;
                    }
                }
            }
        };
        match inner.upgrade() {
            Some(inner) => {
                inner.kinds_generation.fetch_add(1, Ordering::AcqRel);
                if let Some(cache) = &inner.cache {
                    cache.clear();
                }
            }
            None => return,
        }
        loop {
            let next = tokio::time::timeout(Duration::from_secs(1), changes.recv()).await;
            let Some(inner) = inner.upgrade() else { return };
            let Some(cache) = &inner.cache else { return };
            if let Ok(Some(_)) = next {
                inner.kinds_generation.fetch_add(1, Ordering::AcqRel);
            }
            match next {
                Ok(Some(Change::Key(hash))) => cache.invalidate(&hash),
                Ok(Some(Change::Everything)) => cache.clear(),
                Ok(None) => break, // the feed ended: subscribe again
                Err(_) => {}       // quiet second: just check we are still wanted
            }
        }
    }
}

async fn flush_loop(inner: Weak<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        if let Err(e) = (Verifier { inner }).flush_usage().await {
            tracing::warn!(error = %e, "could not record key usage; will retry");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::FLUSH_ROWS;

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_unix_ms(1_800_000_000_000 + ms).unwrap()
    }

    /// Keeps every batch, except that call number `fail_call` (from 0) fails — after the
    /// keys of its batch were used again meanwhile (at `meanwhile`, noted in `last_used`).
    struct Flaky<'a> {
        fail_call: usize,
        last_used: &'a LastUsed,
        meanwhile: Timestamp,
        calls: AtomicUsize,
        written: Mutex<Vec<Usage>>,
        failed: Mutex<Vec<KeyId>>,
    }

    #[async_trait::async_trait]
    impl UsesLog for Flaky<'_> {
        async fn record(&self, batch: &[Usage]) -> Result<(), StoreError> {
            if self.calls.fetch_add(1, Ordering::SeqCst) == self.fail_call {
                for row in batch {
                    self.last_used.note(&row.id, rotated(), self.meanwhile);
                    self.failed.lock().unwrap().push(row.id.clone());
                }
                return Err(StoreError::Backend("down".into()));
            }
            self.written.lock().unwrap().extend_from_slice(batch);
            Ok(())
        }
    }

    /// When the keys of these tests were rotated.
    fn rotated() -> Option<Timestamp> {
        Some(t(15))
    }

    #[tokio::test]
    async fn a_flush_of_uses_that_fails_part_way_keeps_exactly_the_keys_it_did_not_write() {
        let last_used = LastUsed::default();
        // Three calls' worth: the second fails, so both the keys of the failed call and the
        // keys after it are kept.
        let keys: Vec<KeyId> = (0..2 * FLUSH_ROWS + FLUSH_ROWS / 4)
            .map(|_| KeyId::generate(t(0)))
            .collect();
        for id in &keys {
            last_used.note(id, rotated(), t(20));
            last_used.note(id, rotated(), t(10));
        }
        let log = Flaky {
            fail_call: 1,
            last_used: &last_used,
            meanwhile: t(25),
            calls: AtomicUsize::new(0),
            written: Mutex::default(),
            failed: Mutex::default(),
        };
        assert!(last_used.flush(&log).await.is_err());
        assert_eq!(
            log.written.lock().unwrap().len(),
            FLUSH_ROWS,
            "one call's keys"
        );
        let kept = last_used.pending.lock().unwrap().len();
        assert_eq!(kept, keys.len() - FLUSH_ROWS, "the rest are kept");

        // More uses come before the next flush.
        for id in &keys {
            last_used.note(id, rotated(), t(30));
        }
        last_used.flush(&log).await.unwrap();
        last_used.flush(&log).await.unwrap(); // nothing left: no call
        assert_eq!(
            log.calls.load(Ordering::SeqCst),
            2 + keys.len().div_ceil(FLUSH_ROWS)
        );
        let failed: std::collections::HashSet<KeyId> =
            log.failed.lock().unwrap().iter().cloned().collect();
        assert_eq!(failed.len(), FLUSH_ROWS);
        let mut by_key: HashMap<KeyId, Vec<Usage>> = HashMap::new();
        for row in log.written.into_inner().unwrap() {
            by_key.entry(row.id.clone()).or_default().push(row);
        }
        assert_eq!(by_key.len(), keys.len(), "every key written");
        let summary = |u: &Usage| (u.first_at, u.last_at, u.since_rotation);
        let (mut twice, mut failed_once, mut rest_once) = (0, 0, 0);
        for (id, rows) in &by_key {
            match rows.as_slice() {
                // Written by the first flush, then its later use by the last one.
                [first, later] => {
                    assert_eq!(summary(first), (t(10), t(20), 1));
                    assert_eq!(summary(later), (t(30), t(30), 1));
                    twice += 1;
                }
                // In the failed call: kept, added to what came during that call and after.
                [kept] if failed.contains(id) => {
                    assert_eq!(summary(kept), (t(10), t(30), 3));
                    failed_once += 1;
                }
                // After the failed call: kept, added to what came after.
                [kept] => {
                    assert_eq!(summary(kept), (t(10), t(30), 2));
                    rest_once += 1;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            (twice, failed_once, rest_once),
            (FLUSH_ROWS, FLUSH_ROWS, keys.len() - 2 * FLUSH_ROWS)
        );
    }
}
