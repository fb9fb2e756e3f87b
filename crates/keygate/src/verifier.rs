//! [`Keygate`]: the verifier and key manager over a [`Store`] and a [`Clock`].
//!
//! Verify path: parse (length, alphabet, prefix, checksum) → SHA-256 → cache → store lookup by
//! hash → constant-time hash check → [`decide`]. Garbage is refused before any lookup. A
//! successful verification does not write: last-used times are kept in memory and written in
//! batches. Every change made through [`Keygate`] drops the key from this process's cache at
//! once; changes from other processes arrive through the store's change feed.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use keygate_core::{
    Audit, Clock, KeyHash, KeyId, KeyPatch, KeyRecord, KeySpec, Outcome, PlainKey, Prefix,
    Timestamp, decide, generate, issue, parse, plan_rotation, scope::first_missing,
};
use keygate_store::{AuditPage, AuditQuery, Change, ListQuery, Page, Store, StoreError};

use crate::cache::{Cache, CacheConfig, CacheStats, Lookup};
use crate::sealing::SealingKey;
use serde::Serialize;
use serde_json::{Map, Value};

/// The verified caller, as handlers see it: who holds the key and what it may do. Never the
/// secret or its hash. Cheap to clone: it shares the record the verifier (or its cache) holds.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(Arc<KeyRecord>);

impl ApiKey {
    /// Public key id.
    pub fn id(&self) -> &KeyId {
        &self.0.id
    }

    /// Key name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Owner id, if the key has one.
    pub fn owner(&self) -> Option<&str> {
        self.0.owner.as_deref()
    }

    /// Scopes the key holds.
    pub fn scopes(&self) -> &[String] {
        &self.0.scopes
    }

    /// The key's metadata object.
    pub fn metadata(&self) -> &Map<String, Value> {
        &self.0.metadata
    }

    /// When the key expires, if ever.
    pub fn expires_at(&self) -> Option<Timestamp> {
        self.0.expires_at
    }

    /// When the key was rotated and stops working: `Some((rotated_at, expires_at))` while it
    /// is in its grace period, so that clients can be told to switch (`Sunset`, `Deprecation`).
    pub fn sunset(&self) -> Option<(Timestamp, Timestamp)> {
        match (
            self.0.rotated_to.as_ref(),
            self.0.rotated_at,
            self.0.expires_at,
        ) {
            (Some(_), Some(rotated_at), Some(expires_at)) => Some((rotated_at, expires_at)),
            _ => None,
        }
    }

    /// The id of the key that replaces this one, if it was rotated.
    pub fn successor(&self) -> Option<&KeyId> {
        self.0.rotated_to.as_ref()
    }

    /// Whether the key holds a scope granting `scope` (`orders:*` grants `orders:read`).
    pub fn has_scope(&self, scope: &str) -> bool {
        first_missing(&self.0.scopes, &[scope]).is_none()
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey")
            .field("id", &self.0.id)
            .field("name", &self.0.name)
            .field("owner", &self.0.owner)
            .field("scopes", &self.0.scopes)
            .finish_non_exhaustive()
    }
}

/// As JSON: `id`, `name`, `owner`, `scopes`, `metadata`, `expires_at`, `rotated_to` (set while
/// the key is in the grace period of a rotation: its holder should switch before `expires_at`).
impl Serialize for ApiKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut out = s.serialize_struct("ApiKey", 7)?;
        out.serialize_field("id", &self.0.id)?;
        out.serialize_field("name", &self.0.name)?;
        out.serialize_field("owner", &self.0.owner)?;
        out.serialize_field("scopes", &self.0.scopes)?;
        out.serialize_field("metadata", &self.0.metadata)?;
        out.serialize_field("expires_at", &self.0.expires_at)?;
        out.serialize_field("rotated_to", &self.0.rotated_to)?;
        out.end()
    }
}

impl From<Arc<KeyRecord>> for ApiKey {
    fn from(record: Arc<KeyRecord>) -> Self {
        Self(record)
    }
}

/// What [`Keygate::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// The decision, with its stable code.
    pub outcome: Outcome,
    /// The key, whenever one was found (valid or not).
    pub key: Option<ApiKey>,
    /// A sentence saying why, safe to show the caller (it never repeats the key).
    pub detail: Cow<'static, str>,
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

/// Verifies presented keys and manages keys, over a store and a clock. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Keygate {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    prefix: Prefix,
    usage: Mutex<HashMap<KeyId, Timestamp>>,
    /// Verifications by outcome, indexed like `Outcome::ALL`.
    counts: [AtomicU64; Outcome::ALL.len()],
    cache: Option<Cache>,
    sealing: Option<SealingKey>,
}

/// Builds a [`Keygate`]: `Keygate::builder(store).prefix(..).clock(..).build()`.
#[derive(Debug)]
pub struct KeygateBuilder {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    prefix: Prefix,
    usage_flush: Option<Duration>,
    cache: Option<CacheConfig>,
    sealing: Option<SealingKey>,
}

impl KeygateBuilder {
    /// The key that seals new plaintext keys waiting in the webhook outbox (see
    /// [`Keygate::rotate_delivering`]); without one, such rotations are refused.
    pub fn sealing_key(mut self, key: Option<SealingKey>) -> Self {
        self.sealing = key;
        self
    }

    /// The verification cache (default: [`CacheConfig::default`]); `None` turns it off, so
    /// every verification asks the store (one-shot tools such as the CLI).
    pub fn cache(mut self, cache: Option<CacheConfig>) -> Self {
        self.cache = cache;
        self
    }

    /// The prefix of keys this instance issues (default `kg`). Keys of any well-formed prefix
    /// still verify, so changing it does not break keys already handed out.
    pub fn prefix(mut self, prefix: Prefix) -> Self {
        self.prefix = prefix;
        self
    }

    /// Where "now" comes from (default: the system clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// How often last-used times are written (default 10 s); `None` writes them only when
    /// [`Keygate::flush_usage`] is called.
    pub fn usage_flush_interval(mut self, every: Option<Duration>) -> Self {
        self.usage_flush = every;
        self
    }

    /// Builds the verifier. Inside a Tokio runtime it also starts the background task that
    /// writes last-used times; the task ends when the last clone of the [`Keygate`] is dropped.
    pub fn build(self) -> Keygate {
        let keygate = Keygate {
            inner: Arc::new(Inner {
                store: self.store,
                clock: self.clock,
                prefix: self.prefix,
                usage: Mutex::new(HashMap::new()),
                counts: Default::default(),
                cache: self.cache.map(Cache::new),
                sealing: self.sealing,
            }),
        };
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            if let Some(every) = self.usage_flush {
                handle.spawn(flush_loop(Arc::downgrade(&keygate.inner), every));
            }
            if keygate.inner.cache.is_some() {
                let store = keygate.inner.store.clone();
                handle.spawn(follow_changes(Arc::downgrade(&keygate.inner), store));
            }
        }
        keygate
    }
}

/// Applies the store's change feed to the cache for as long as the [`Keygate`] lives. If the
/// feed cannot be had (the database is away), retries every second, and clears the cache on
/// each (re)subscription since changes may have been missed.
async fn follow_changes(inner: Weak<Inner>, store: Arc<dyn Store>) {
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
            Some(inner) => clear(&inner),
            None => return,
        }
        loop {
            let next = tokio::time::timeout(Duration::from_secs(1), changes.recv()).await;
            let Some(inner) = inner.upgrade() else { return };
            let Some(cache) = &inner.cache else { return };
            match next {
                Ok(Some(Change::Key(hash))) => cache.invalidate(&hash),
                Ok(Some(Change::Everything)) => cache.clear(),
                Ok(None) => break, // the feed ended: subscribe again
                Err(_) => {}       // quiet second: just check we are still wanted
            }
        }
    }
}

fn clear(inner: &Inner) {
    if let Some(cache) = &inner.cache {
        cache.clear();
    }
}

async fn flush_loop(inner: Weak<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let keygate = Keygate { inner };
        if let Err(e) = keygate.flush_usage().await {
            tracing::warn!(error = %e, "could not record key usage; will retry");
        }
    }
}

impl Keygate {
    /// A builder over `store`.
    pub fn builder(store: Arc<dyn Store>) -> KeygateBuilder {
        KeygateBuilder {
            store,
            clock: Arc::new(SystemClock),
            prefix: Prefix::default(),
            usage_flush: Some(Duration::from_secs(10)),
            cache: Some(CacheConfig::default()),
            sealing: None,
        }
    }

    /// A verifier over `store` with the defaults.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self::builder(store).build()
    }

    /// The store behind this verifier.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The current time by this verifier's clock.
    pub fn now(&self) -> Timestamp {
        self.inner.clock.now()
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
    ) -> Result<Verification, StoreError> {
        if presented.is_empty() {
            return Ok(self.refused(Outcome::Missing, "no API key was presented"));
        }
        let parsed = match parse(presented) {
            Ok(p) => p,
            Err(e) => return Ok(self.refused(Outcome::Malformed, e.reason())),
        };
        let hash = parsed.hash();
        let Some(record) = self.lookup(hash).await? else {
            return Ok(self.refused(Outcome::NotFound, "no such API key"));
        };
        if !record.hash.ct_eq(&hash) {
            return Ok(self.refused(Outcome::NotFound, "no such API key"));
        }
        let now = self.now();
        let outcome = decide(&record, now, required);
        let detail: Cow<'static, str> = match outcome {
            Outcome::Valid => {
                self.note_usage(&record.id, now);
                Cow::Borrowed("the API key is valid")
            }
            Outcome::InsufficientScope => Cow::Owned(format!(
                "the API key lacks the scope `{}`",
                first_missing(&record.scopes, required).unwrap_or_default()
            )),
            Outcome::Revoked => Cow::Borrowed("the API key has been revoked"),
            Outcome::Expired => Cow::Borrowed("the API key has expired"),
            Outcome::Disabled => Cow::Borrowed("the API key is disabled"),
            other => Cow::Borrowed(other.title()),
        };
        tracing::debug!(key_id = %record.id, outcome = outcome.code(), "verified API key");
        self.count(outcome);
        Ok(Verification {
            outcome,
            key: Some(ApiKey::from(record)),
            detail,
        })
    }

    /// The record with this hash: from the cache, else from the store (and then cached).
    async fn lookup(&self, hash: KeyHash) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        let Some(cache) = &self.inner.cache else {
            return Ok(self.inner.store.find_by_hash(&hash).await?.map(Arc::new));
        };
        if let Lookup::Hit(record) = cache.get(&hash) {
            return Ok(record);
        }
        let epoch = cache.epoch();
        let record = self.inner.store.find_by_hash(&hash).await?.map(Arc::new);
        cache.insert(hash, record.clone(), epoch);
        Ok(record)
    }

    /// Drops a key from this process's cache (after a change made here).
    fn forget(&self, hash: &KeyHash) {
        if let Some(cache) = &self.inner.cache {
            cache.invalidate(hash);
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

    fn note_usage(&self, id: &KeyId, at: Timestamp) {
        let mut usage = self.inner.usage.lock().unwrap_or_else(|p| p.into_inner());
        match usage.get_mut(id) {
            Some(t) => *t = (*t).max(at),
            None => {
                usage.insert(id.clone(), at);
            }
        }
    }

    /// Writes the last-used times gathered since the previous flush, in one batch.
    /// On failure they are kept for the next try.
    pub async fn flush_usage(&self) -> Result<(), StoreError> {
        let batch: Vec<(KeyId, Timestamp)> = {
            let mut usage = self.inner.usage.lock().unwrap_or_else(|p| p.into_inner());
            // Take the map rather than drain it, so its memory goes back between bursts.
            std::mem::take(&mut *usage).into_iter().collect()
        };
        if batch.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.inner.store.record_usage(&batch).await {
            let mut usage = self.inner.usage.lock().unwrap_or_else(|p| p.into_inner());
            for (id, at) in batch {
                let t = usage.entry(id).or_insert(at);
                *t = (*t).max(at);
            }
            return Err(e);
        }
        Ok(())
    }

    /// Issues a key from `spec` and stores its record. The [`PlainKey`] is the only copy of
    /// the secret: hand it over and drop it.
    pub async fn issue(
        &self,
        spec: KeySpec,
        audit: &Audit,
    ) -> Result<(KeyRecord, PlainKey), StoreError> {
        let (record, key) = issue(spec, &self.inner.prefix, self.now())?;
        self.inner.store.create(&record, audit).await?;
        self.forget(&record.hash);
        tracing::info!(key_id = %record.id, "issued API key");
        Ok((record, key))
    }

    /// Issues a key only if the store holds none at all (the bootstrap admin key), atomically:
    /// `None` if there were keys already.
    pub async fn issue_first(
        &self,
        spec: KeySpec,
        audit: &Audit,
    ) -> Result<Option<(KeyRecord, PlainKey)>, StoreError> {
        let (record, key) = issue(spec, &self.inner.prefix, self.now())?;
        if !self.inner.store.create_if_empty(&record, audit).await? {
            return Ok(None);
        }
        self.forget(&record.hash);
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
    ) -> Result<(KeyRecord, KeyRecord, PlainKey), StoreError> {
        self.rotate_sealing(id, grace_ms, audit, None).await
    }

    /// The rotation both entry points share: a new key and id, core's plan inside the store's
    /// transaction, and — with `seal` — the successor's plaintext sealed into the outbox for
    /// secret-receiving endpoints. Both keys leave this process's cache.
    async fn rotate_sealing(
        &self,
        id: &KeyId,
        grace_ms: i64,
        audit: &Audit,
        seal: Option<&SealingKey>,
    ) -> Result<(KeyRecord, KeyRecord, PlainKey), StoreError> {
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
        let plan = |old: &KeyRecord| plan_rotation(old, &new_key, new_id.clone(), now, grace_ms);
        let (old, new) = self
            .inner
            .store
            .rotate(id, &plan, now, audit, sealed.as_deref())
            .await?;
        self.forget(&old.hash);
        self.forget(&new.hash);
        tracing::info!(key_id = %old.id, successor = %new.id, sealed = seal.is_some(), "rotated API key");
        Ok((old, new, new_key))
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
    ) -> Result<(KeyRecord, KeyRecord), StoreError> {
        let sealing = self.inner.sealing.as_ref().ok_or_else(|| {
            StoreError::Config(
                "rotating for the policy needs KEYGATE_SECRET_KEY (to seal the new keys)".into(),
            )
        })?;
        let trusted = self
            .inner
            .store
            .list_endpoints()
            .await?
            .iter()
            .any(|e| e.enabled && e.receives_secrets);
        if !trusted {
            return Err(StoreError::Config(
                "rotating for the policy needs a webhook endpoint that receives secrets".into(),
            ));
        }
        let (old, new, _shown_to_nobody) = self
            .rotate_sealing(id, grace_ms, audit, Some(sealing))
            .await?;
        Ok((old, new))
    }

    /// Opens a sealed outbox payload with this instance's sealing key.
    pub fn unseal(&self, sealed: &str) -> Option<String> {
        self.inner.sealing.as_ref()?.open(sealed)
    }

    /// The key with this id.
    pub async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.inner.store.get(id).await
    }

    /// A page of the audit trail, oldest first.
    pub async fn audit_trail(&self, query: &AuditQuery) -> Result<AuditPage, StoreError> {
        self.inner.store.list_audit(query).await
    }

    /// A page of keys; the status filter is judged now.
    pub async fn list(&self, mut query: ListQuery) -> Result<Page, StoreError> {
        query.now = self.now();
        self.inner.store.list(&query).await
    }

    /// Changes a key's editable fields.
    pub async fn update(
        &self,
        id: &KeyId,
        patch: KeyPatch,
        audit: &Audit,
    ) -> Result<KeyRecord, StoreError> {
        let record = self
            .inner
            .store
            .update(id, patch, self.now(), audit)
            .await?;
        self.forget(&record.hash);
        tracing::info!(key_id = %id, "updated API key");
        Ok(record)
    }

    /// Revokes a key now, for good.
    pub async fn revoke(
        &self,
        id: &KeyId,
        reason: Option<String>,
        audit: &Audit,
    ) -> Result<KeyRecord, StoreError> {
        let record = self
            .inner
            .store
            .revoke(id, self.now(), reason, audit)
            .await?;
        self.forget(&record.hash);
        tracing::info!(key_id = %id, "revoked API key");
        Ok(record)
    }
}
