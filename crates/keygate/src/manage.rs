//! [`Keygate`]: the verifier and the key manager over one store. Every change made through it
//! drops the key from this process's cache at once (other processes hear of it through the
//! store's change feed), and carries an [`Audit`] context that the store writes with it.

use std::sync::Arc;
use std::time::Duration;

use keygate_core::policy::IncidentFilter;
use keygate_core::switch::{SwitchOver, check_quiet, switch_over};
use keygate_core::{
    Audit, AuditEvent, Clock, KeyId, KeyPatch, KeyRecord, KeySpec, Lifetime, PlainKey, Prefix,
    Timestamp, generate, issue, plan_rotation,
};
use keygate_store::{AuditPage, AuditQuery, ListQuery, MAX_PAGE_SIZE, Page, StatusCounts, Store};

use crate::cache::{CacheConfig, CacheStats};
use crate::error::Error;
use crate::sealing::SealingKey;
use crate::verify::{Verification, Verifier, VerifierConfig};

/// Keys refilled per store call (and transaction batch) by [`Keygate::refill_due`].
const REFILL_BATCH: u32 = 500;

/// Verifies presented keys and manages keys, over a store and a clock. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Keygate {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    verifier: Verifier,
    store: Arc<dyn Store>,
    prefix: Prefix,
    sealing: Option<SealingKey>,
    allow_private_webhooks: bool,
    retire_when_switched: Option<Lifetime>,
}

/// Builds a [`Keygate`]: `Keygate::builder(store).prefix(..).clock(..).build()`.
#[derive(Debug)]
pub struct KeygateBuilder {
    store: Arc<dyn Store>,
    verifier: VerifierConfig,
    prefix: Prefix,
    sealing: Option<SealingKey>,
    allow_private_webhooks: bool,
    retire_when_switched: Option<Lifetime>,
    email_routing: Option<keygate_core::email::EmailRouting>,
}

impl KeygateBuilder {
    /// The policy default for rotations that do not say: retire the old key once its
    /// successor is in use and it has been unused this long (default: none — the old key works
    /// for its whole grace period). At least [`MIN_QUIET`](keygate_core::switch::MIN_QUIET).
    pub fn retire_when_switched(mut self, quiet: Option<Lifetime>) -> Result<Self, Error> {
        self.retire_when_switched = quiet.map(check_quiet).transpose()?;
        Ok(self)
    }

    /// The key that seals secrets resting in the database: new plaintext keys waiting in the
    /// webhook outbox (see [`Keygate::rotate_delivering`]; without a key such rotations are
    /// refused) and webhook signing secrets (stored in the clear without one).
    pub fn sealing_key(mut self, key: Option<SealingKey>) -> Self {
        self.sealing = key;
        self
    }

    /// Whether webhook endpoints may be loopback or private addresses (default: no, so that an
    /// admin key cannot make keygate probe the network it runs in).
    pub fn allow_private_webhooks(mut self, allow: bool) -> Self {
        self.allow_private_webhooks = allow;
        self
    }

    /// The verification cache (default: [`CacheConfig::default`]); `None` turns it off, so
    /// every verification asks the store (one-shot tools such as the CLI).
    pub fn cache(mut self, cache: Option<CacheConfig>) -> Self {
        self.verifier.cache = cache;
        self
    }

    /// The prefix of keys this instance issues (default `kg`). Keys of any well-formed prefix
    /// still verify, so changing it does not break keys already handed out.
    pub fn prefix(mut self, prefix: Prefix) -> Self {
        self.prefix = prefix;
        self
    }

    /// Where rate limits are counted (default: in this process; a
    /// [`RedisLimiter`](crate::limits::RedisLimiter) shares them between nodes).
    pub fn limiter(mut self, limiter: crate::limits::Limiter) -> Self {
        self.verifier.limiter = Arc::new(limiter);
        self
    }

    /// Proxies whose `X-Forwarded-For` entries are believed when the layer finds a client's
    /// address for an allowlist (default: none — the socket peer is the client).
    pub fn trusted_proxies(mut self, proxies: Option<keygate_core::limits::IpAllowlist>) -> Self {
        self.verifier.trusted_proxies = proxies;
        self
    }

    /// Where emails link to (the admin UI's public URL) and which operators get them besides
    /// key owners (default: no link, no operators). It applies to the store this builder is
    /// over, for every event written from then on.
    pub fn email_routing(mut self, routing: keygate_core::email::EmailRouting) -> Self {
        self.email_routing = Some(routing);
        self
    }

    /// Where "now" comes from (default: the system clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.verifier.clock = clock;
        self
    }

    /// How often last-used times are written (default 10 s); `None` writes them only when
    /// [`Keygate::flush_usage`] is called.
    pub fn usage_flush_interval(mut self, every: Option<Duration>) -> Self {
        self.verifier.usage_flush = every;
        self
    }

    /// Builds it. Inside a Tokio runtime this starts the verifier's background tasks (see
    /// [`Verifier::new`]).
    pub fn build(mut self) -> Keygate {
        if let Some(routing) = self.email_routing.take() {
            self.store.set_email_routing(routing);
        }
        let keys: Arc<dyn keygate_store::KeyStore> = self.store.clone();
        let usage: Arc<dyn keygate_store::UsageLog> = self.store.clone();
        self.verifier.usage_log = Some(usage);
        Keygate {
            inner: Arc::new(Inner {
                verifier: Verifier::new(keys, self.verifier),
                store: self.store,
                prefix: self.prefix,
                sealing: self.sealing,
                allow_private_webhooks: self.allow_private_webhooks,
                retire_when_switched: self.retire_when_switched,
            }),
        }
    }
}

impl Keygate {
    /// A builder over `store`.
    pub fn builder(store: Arc<dyn Store>) -> KeygateBuilder {
        KeygateBuilder {
            store,
            verifier: VerifierConfig::default(),
            prefix: Prefix::default(),
            sealing: None,
            allow_private_webhooks: false,
            retire_when_switched: None,
            email_routing: None,
        }
    }

    /// A verifier and manager over `store` with the defaults.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self::builder(store).build()
    }

    /// The store, for this crate's own modules.
    pub(crate) fn store(&self) -> &dyn Store {
        self.inner.store.as_ref()
    }

    /// The verifier (what the layer uses).
    pub fn verifier(&self) -> &Verifier {
        &self.inner.verifier
    }

    /// The current time by this instance's clock.
    pub fn now(&self) -> Timestamp {
        self.inner.verifier.now()
    }

    /// The prefix new keys get.
    pub fn prefix(&self) -> &Prefix {
        &self.inner.prefix
    }

    /// Checks a presented key for the `required` scopes. `Err` only when the store fails.
    pub async fn verify<R: AsRef<str> + Sync>(
        &self,
        presented: &str,
        required: &[R],
    ) -> Result<Verification, Error> {
        self.inner.verifier.verify(presented, required).await
    }

    /// Checks a presented key for the `required` scopes and what the request demands (cost,
    /// client address); see [`Verifier::verify_demand`]. `Err` only when the store fails.
    pub async fn verify_demand<R: AsRef<str> + Sync>(
        &self,
        presented: &str,
        required: &[R],
        demand: crate::Demand,
    ) -> Result<Verification, Error> {
        self.inner
            .verifier
            .verify_demand(presented, required, demand)
            .await
    }

    /// Refills the credits of every key whose refill is due now, each with its
    /// `key.quota_refilled` event; returns how many. Idempotent within a refill period.
    pub async fn refill_due(&self, audit: &Audit) -> Result<u64, Error> {
        let mut total = 0;
        loop {
            let refilled = self
                .store()
                .refill_quotas(self.now(), REFILL_BATCH, audit)
                .await
                .map_err(Error::store("refill credits"))?;
            total += refilled;
            if refilled < u64::from(REFILL_BATCH) {
                return Ok(total);
            }
        }
    }

    /// Writes the last-used times and usage counts gathered since the previous flush, each
    /// in one batch.
    pub async fn flush_usage(&self) -> Result<(), Error> {
        self.inner.verifier.flush_usage().await
    }

    /// Usage over `range`, bucket by bucket (every bucket, empty ones included): of one key
    /// ([`Error::NotFound`] if there is no such key) or of every key of an owner. Counts not
    /// yet flushed are not included.
    pub async fn usage(
        &self,
        of: crate::usage::UsageOf<'_>,
        range: &crate::usage::UsageRange,
    ) -> Result<Vec<crate::usage::UsageBucket>, Error> {
        use crate::usage::UsageOf;
        let store = self.store();
        match of {
            UsageOf::Key(id) => {
                if self.get(id).await?.is_none() {
                    return Err(Error::NotFound);
                }
                store.usage_for_key(id, range).await
            }
            UsageOf::Owner(owner) => store.usage_for_owner(owner, range).await,
        }
        .map_err(Error::store("read usage"))
    }

    /// Removes usage older than `retention` before now (whole hours); returns how many
    /// (key, hour) rows.
    pub async fn purge_usage(&self, retention: Duration) -> Result<u64, Error> {
        let ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let cut = self.now().unix_ms().saturating_sub(ms);
        let before = Timestamp::from_unix_ms(cut)
            .unwrap_or_else(|| Timestamp::from_unix_ms(0).expect("the epoch is in range"));
        let before = keygate_core::usage::hour_of(before);
        self.store()
            .purge_usage(before)
            .await
            .map_err(Error::store("purge usage"))
    }

    /// Cache counters; `None` when the cache is off.
    pub fn cache_stats(&self) -> Option<CacheStats> {
        self.inner.verifier.cache_stats()
    }

    /// How many verifications ended with each outcome since this instance was built.
    pub fn verification_counts(&self) -> Vec<(keygate_core::Outcome, u64)> {
        self.inner.verifier.verification_counts()
    }

    /// Writes the usage-control metrics in the Prometheus text format:
    /// `keygate_rate_limited_total{scope,limit}`, `keygate_quota_exhausted_total`, and with
    /// Redis the shared limiter's counters (`keygate_ratelimit_*`).
    pub fn write_limit_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let verifier = &self.inner.verifier;
        let _ = writeln!(
            out,
            "# HELP keygate_rate_limited_total Requests refused by a rate limit, by whose limit and its name.\n\
             # TYPE keygate_rate_limited_total counter"
        );
        for (scope, name, n) in verifier.rate_limited_counts() {
            let _ = writeln!(
                out,
                "keygate_rate_limited_total{{scope=\"{}\",limit=\"{}\"}} {n}",
                scope.as_str(),
                name.as_str()
            );
        }
        let exhausted = verifier
            .verification_counts()
            .into_iter()
            .find(|(o, _)| *o == keygate_core::Outcome::UsageExceeded)
            .map_or(0, |(_, n)| n);
        let _ = writeln!(
            out,
            "# HELP keygate_quota_exhausted_total Requests refused because the key's credits ran out.\n\
             # TYPE keygate_quota_exhausted_total counter\n\
             keygate_quota_exhausted_total {exhausted}"
        );
        if let crate::limits::Limiter::Redis(redis) = verifier.limiter() {
            let healthy = redis.health() == crate::limits::RedisHealth::Ok;
            redis.stats().write_prometheus(out, healthy);
        }
    }

    /// How rate limits are counted right now, for `/readyz`: `None` in this process, else
    /// `Ok(())` while shared through Redis, or `Err(why)` while Redis is unreachable and each
    /// node counts on its own (it recovers by itself).
    pub fn shared_limits_health(&self) -> Option<Result<(), String>> {
        match self.inner.verifier.limiter() {
            crate::limits::Limiter::Local(_) => None,
            crate::limits::Limiter::Redis(redis) => Some(match redis.health() {
                crate::limits::RedisHealth::Ok => Ok(()),
                crate::limits::RedisHealth::Degraded { since, error } => Err(format!(
                    "Redis unreachable since {since} ({error}); rate limits are counted on each node alone"
                )),
            }),
        }
    }

    /// Checks that the store answers (and, on SQLite, is still the file it opened).
    pub async fn ping(&self) -> Result<(), Error> {
        self.store()
            .ping()
            .await
            .map_err(Error::store("reach the key store"))
    }

    /// Checks that the store takes writes (a probe row is written).
    pub async fn ping_write(&self) -> Result<(), Error> {
        self.store()
            .ping_write(self.now())
            .await
            .map_err(Error::store("write to the key store"))
    }

    /// Closes the store's connections (for a clean shutdown).
    pub async fn close(&self) {
        self.store().close().await;
    }

    /// Issues a key from `spec` and stores its record. The [`PlainKey`] is the only copy of
    /// the secret: hand it over and drop it.
    pub async fn issue(
        &self,
        spec: KeySpec,
        audit: &Audit,
    ) -> Result<(KeyRecord, PlainKey), Error> {
        let (record, key) = issue(spec, &self.inner.prefix, self.now())?;
        self.store()
            .create(&record, audit)
            .await
            .map_err(Error::store("issue the key"))?;
        self.inner.verifier.forget(&record.hash);
        tracing::info!(key_id = %record.id, "issued API key");
        Ok((record, key))
    }

    /// Issues a key only if the store holds none at all (the bootstrap admin key), atomically:
    /// `None` if there were keys already.
    pub async fn issue_first(
        &self,
        spec: KeySpec,
        audit: &Audit,
    ) -> Result<Option<(KeyRecord, PlainKey)>, Error> {
        let (record, key) = issue(spec, &self.inner.prefix, self.now())?;
        let issued = self
            .store()
            .create_if_empty(&record, audit)
            .await
            .map_err(Error::store("issue the first key"))?;
        if !issued {
            return Ok(None);
        }
        self.inner.verifier.forget(&record.hash);
        tracing::info!(key_id = %record.id, "issued the first API key");
        Ok(Some((record, key)))
    }

    /// Rotates a key: issues its successor (same name, owner, scopes, metadata and lifetime)
    /// and lets the old key work for `grace_ms` more milliseconds (0: not at all), after which
    /// it verifies `EXPIRED`. Returns (the old record, the successor, the successor's key,
    /// shown once). Refused for a revoked key, or one rotated already.
    pub async fn rotate(
        &self,
        id: &KeyId,
        grace_ms: i64,
        audit: &Audit,
    ) -> Result<(KeyRecord, KeyRecord, PlainKey), Error> {
        self.rotate_sealing(id, grace_ms, None, audit, None).await
    }

    /// [`Keygate::rotate`], and retire the old key early once its successor is in use and it
    /// has been unused for `retire_when_switched` (at least 1m; `None`: the policy default,
    /// see [`KeygateBuilder::retire_when_switched`]). The scheduler's sweep does the retiring.
    pub async fn rotate_retiring(
        &self,
        id: &KeyId,
        grace_ms: i64,
        retire_when_switched: Option<Lifetime>,
        audit: &Audit,
    ) -> Result<(KeyRecord, KeyRecord, PlainKey), Error> {
        let quiet = retire_when_switched.map(check_quiet).transpose()?;
        self.rotate_sealing(id, grace_ms, quiet, audit, None).await
    }

    /// The rotation both entry points share: a new key and id, core's plan inside the store's
    /// transaction, and — with `seal` — the successor's plaintext sealed into the outbox for
    /// secret-receiving endpoints. Both keys leave this process's cache.
    async fn rotate_sealing(
        &self,
        id: &KeyId,
        grace_ms: i64,
        retire_when_switched: Option<Lifetime>,
        audit: &Audit,
        seal: Option<&SealingKey>,
    ) -> Result<(KeyRecord, KeyRecord, PlainKey), Error> {
        let now = self.now();
        let new_key = generate(&self.inner.prefix);
        let new_id = KeyId::generate(now);
        let sealed = seal.map(|sealing| {
            let message = serde_json::json!({
                "type": "key.successor",
                "timestamp": now,
                "data": {"key_id": id, "successor_id": new_id, "key": new_key.expose()},
            });
            sealing.seal(&message.to_string())
        });
        let quiet = retire_when_switched.or(self.inner.retire_when_switched);
        let plan = |old: &KeyRecord| {
            let (mut old, new) = plan_rotation(old, &new_key, new_id.clone(), now, grace_ms)?;
            old.retire_when_switched = quiet;
            Ok((old, new))
        };
        let (old, new) = self
            .store()
            .rotate(id, &plan, now, audit, sealed.as_deref())
            .await
            .map_err(Error::store("rotate the key"))?;
        self.inner.verifier.forget(&old.hash);
        self.inner.verifier.forget(&new.hash);
        tracing::info!(key_id = %old.id, successor = %new.id, sealed = seal.is_some(), "rotated API key");
        Ok((old, new, new_key))
    }

    /// How the switch from rotated key `record` to its successor is going (`None` for a key
    /// that was not rotated): the successor's first use, the old key's last use and its uses
    /// since the rotation.
    pub async fn switch_over(&self, record: &KeyRecord) -> Result<Option<SwitchOver>, Error> {
        let Some(successor_id) = &record.rotated_to else {
            return Ok(None);
        };
        let successor = self.get(successor_id).await?;
        Ok(switch_over(record, successor.as_ref(), self.now()))
    }

    /// Ends the grace period of the key that `successor_id` replaced, now: its holder has
    /// switched (`POST /v1/self/retire`). Audited as `key.retired` with the evidence (the
    /// request, the successor's first use as recorded so far, the old key's last use).
    /// [`Error::NothingToRetire`] unless `successor_id` came from a rotation whose old key is
    /// still in its grace period.
    pub async fn retire_predecessor(
        &self,
        successor_id: &KeyId,
        audit: &Audit,
    ) -> Result<KeyRecord, Error> {
        let successor = self.get(successor_id).await?.ok_or(Error::NotFound)?;
        let old_id = successor.rotated_from.ok_or(Error::NothingToRetire)?;
        let now = self.now();
        let plan = |old: &KeyRecord| {
            (keygate_core::switch::in_grace(old, now)
                && old.rotated_to.as_ref() == Some(successor_id))
            .then(|| {
                let evidence = serde_json::json!({
                    "requested_by": successor_id,
                    "successor_first_used_at": successor.first_used_at,
                    "old_last_used_at": old.last_used_at,
                });
                evidence.as_object().cloned().unwrap_or_default()
            })
        };
        match self.retire(&old_id, &plan, audit).await {
            Ok(Some(old)) => Ok(old),
            Ok(None) | Err(Error::NotFound) => Err(Error::NothingToRetire),
            Err(e) => Err(e),
        }
    }

    /// The view of one key, as shown on its own: with, for a rotated key, how the switch to
    /// its successor is going.
    pub async fn view(&self, record: KeyRecord) -> Result<crate::KeyView, Error> {
        let switch = self.switch_over(&record).await?;
        let mut view = crate::KeyView::of(record, self.now());
        view.switch_over = switch;
        Ok(view)
    }

    /// Ends the grace period of rotated key `id` now if `plan` says so (it is given the key as
    /// stored, inside the transaction): `key.retired`, with the plan's evidence. `Ok(None)`
    /// if the plan said no.
    pub async fn retire(
        &self,
        id: &KeyId,
        plan: &keygate_store::RetirePlan<'_>,
        audit: &Audit,
    ) -> Result<Option<KeyRecord>, Error> {
        let retired = self
            .store()
            .retire(id, plan, self.now(), audit)
            .await
            .map_err(Error::store("retire the key"))?;
        if let Some(record) = &retired {
            self.inner.verifier.forget(&record.hash);
            tracing::info!(key_id = %record.id, "retired rotated API key");
        }
        Ok(retired)
    }

    /// Rotates a key for the rotation policy, when no person is there to receive the new key:
    /// the successor's plaintext is sealed (see [`crate::sealing`]) and queued, in the same
    /// transaction as the rotation, for every webhook endpoint that receives secrets — and
    /// shown to nobody else. Refused without a sealing key or such an endpoint.
    pub async fn rotate_delivering(
        &self,
        id: &KeyId,
        grace_ms: i64,
        audit: &Audit,
    ) -> Result<(KeyRecord, KeyRecord), Error> {
        let sealing = self.inner.sealing.as_ref().ok_or_else(|| {
            Error::NotConfigured(
                "rotating for the policy needs KEYGATE_SECRET_KEY (to seal the new keys)".into(),
            )
        })?;
        let trusted = self
            .webhooks()
            .await?
            .iter()
            .any(|e| e.enabled && e.receives_secrets);
        if !trusted {
            return Err(Error::NotConfigured(
                "rotating for the policy needs a webhook endpoint that receives secrets".into(),
            ));
        }
        let (old, new, _shown_to_nobody) = self
            .rotate_sealing(id, grace_ms, None, audit, Some(sealing))
            .await?;
        Ok((old, new))
    }

    /// Opens a sealed outbox payload with this instance's sealing key.
    pub fn unseal(&self, sealed: &str) -> Option<String> {
        self.inner.sealing.as_ref()?.open(sealed)
    }

    /// Seals `secret` for storage with this instance's sealing key; as it is without one.
    pub(crate) fn seal_at_rest(&self, secret: &str) -> String {
        match &self.inner.sealing {
            Some(key) => key.seal(secret),
            None => secret.to_owned(),
        }
    }

    /// Whether webhook endpoints may be loopback or private addresses.
    pub fn allows_private_webhooks(&self) -> bool {
        self.inner.allow_private_webhooks
    }

    /// The key with this id.
    pub async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, Error> {
        self.store()
            .get(id)
            .await
            .map_err(Error::store("read the key"))
    }

    /// A page of keys; the status filter is judged now.
    pub async fn list(&self, mut query: ListQuery) -> Result<Page, Error> {
        query.now = self.now();
        self.store()
            .list(&query)
            .await
            .map_err(Error::store("list keys"))
    }

    /// How many keys have each status now.
    pub async fn count_by_status(&self) -> Result<StatusCounts, Error> {
        self.store()
            .count_by_status(self.now())
            .await
            .map_err(Error::store("count keys"))
    }

    /// A page of the audit trail.
    pub async fn audit_trail(&self, query: &AuditQuery) -> Result<AuditPage, Error> {
        self.store()
            .list_audit(query)
            .await
            .map_err(Error::store("read the audit trail"))
    }

    /// Appends an event that changes no key (a notice, a sign-in, a refused request) to the
    /// audit trail, with its webhook deliveries.
    pub async fn record_event(&self, event: &AuditEvent) -> Result<(), Error> {
        self.store()
            .append_event(event)
            .await
            .map_err(Error::store("write to the audit trail"))
    }

    /// Changes a key's editable fields.
    pub async fn update(
        &self,
        id: &KeyId,
        patch: KeyPatch,
        audit: &Audit,
    ) -> Result<KeyRecord, Error> {
        let record = self
            .store()
            .update(id, patch, self.now(), audit)
            .await
            .map_err(Error::store("change the key"))?;
        self.inner.verifier.forget(&record.hash);
        tracing::info!(key_id = %id, "updated API key");
        Ok(record)
    }

    /// The rate limits all of `owner`'s keys share, if it has any.
    pub async fn owner(
        &self,
        owner: &str,
    ) -> Result<Option<keygate_core::limits::OwnerLimits>, Error> {
        self.store()
            .get_owner(owner)
            .await
            .map_err(Error::store("read the owner"))
    }

    /// Sets the rate limits all of `owner`'s keys share (empty: none), audited; every node's
    /// cache learns it through the change feed, this one's at once.
    pub async fn set_owner_limits(
        &self,
        owner: &str,
        rate_limits: &keygate_core::limits::RateLimits,
        audit: &Audit,
    ) -> Result<keygate_core::limits::OwnerLimits, Error> {
        let owner = keygate_core::record::check_owner(owner.to_owned()).map_err(Error::from)?;
        let set = self
            .store()
            .set_owner_limits(&owner, rate_limits, self.now(), audit)
            .await
            .map_err(Error::store("set the owner's limits"))?;
        self.inner.verifier.forget_owner(&owner);
        tracing::info!(owner = %owner, limits = %rate_limits, "set the owner's rate limits");
        Ok(set)
    }

    /// Revokes a key now, for good.
    pub async fn revoke(
        &self,
        id: &KeyId,
        reason: Option<String>,
        audit: &Audit,
    ) -> Result<KeyRecord, Error> {
        let record = self
            .store()
            .revoke(id, self.now(), reason, audit)
            .await
            .map_err(Error::store("revoke the key"))?;
        self.inner.verifier.forget(&record.hash);
        tracing::info!(key_id = %id, "revoked API key");
        Ok(record)
    }

    /// Incident response: every unrevoked key `filter` matches (an empty filter matches
    /// nothing). Unless `dry_run`, revokes each with `reason`; a key revoked by someone else
    /// meanwhile counts as done. Returns (matched, revoked by this call).
    pub async fn revoke_matching(
        &self,
        filter: &IncidentFilter,
        reason: &str,
        dry_run: bool,
        audit: &Audit,
    ) -> Result<(Vec<KeyRecord>, Vec<KeyId>), Error> {
        let mut query = ListQuery::new(self.now());
        query.owner = filter.owner.clone();
        query.limit = MAX_PAGE_SIZE;
        let mut matched = Vec::new();
        loop {
            let page = self.list(query.clone()).await?;
            matched.extend(page.items.into_iter().filter(|r| filter.matches(r)));
            match page.next_cursor {
                Some(cursor) => query.cursor = Some(cursor),
                None => break,
            }
        }
        let mut revoked = Vec::new();
        if !dry_run {
            for record in &matched {
                match self
                    .revoke(&record.id, Some(reason.to_owned()), audit)
                    .await
                {
                    Ok(_) => revoked.push(record.id.clone()),
                    Err(Error::AlreadyRevoked) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok((matched, revoked))
    }
}
