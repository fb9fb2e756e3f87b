//! The verification cache: what verification needs of stored keys ([`KeyGrant`]s, not whole
//! records) and "no such key" answers, by key hash, so that a hit costs no database round trip.
//!
//! - Grants are cached, not decisions: expiry and scopes are decided afresh on every hit.
//! - Bounded: at most `capacity` records and `capacity / 4` negative entries (a flood of
//!   made-up keys cannot push real keys out); full maps drop expired entries, then a tenth.
//! - Every change invalidates: locally at once, and from other processes through the store's
//!   change feed ([`Store::watch`](keygate_store::Store::watch)); the TTL bounds staleness if
//!   a change notice is ever lost.
//! - An epoch counter makes "fetch then insert" safe against an invalidation that lands while
//!   the fetch is in flight: the stale result is not inserted.
//! - Ages are read from the verifier's [`Clock`], so tests move time instead of waiting.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use keygate_core::{Clock, KeyGrant, KeyHash, Timestamp};

use crate::FastMap;

/// How the verification cache behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    /// How long a stored record is trusted without a change notice (the safety net).
    pub ttl: Duration,
    /// How long "no such key" is trusted.
    pub negative_ttl: Duration,
    /// Most records kept (negative entries: a quarter of this).
    pub capacity: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(30),
            negative_ttl: Duration::from_secs(10),
            capacity: 100_000,
        }
    }
}

/// What the cache knows about a hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// Known: the grant, or `None` for "no such key".
    Hit(Option<Arc<KeyGrant>>),
    /// Not known (or too old): ask the store.
    Miss,
}

#[derive(Debug)]
pub(crate) struct Cache {
    config: CacheConfig,
    clock: Arc<dyn Clock>,
    maps: RwLock<Maps>,
    epoch: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
}

#[derive(Debug, Default)]
struct Maps {
    found: FastMap<KeyHash, (Arc<KeyGrant>, Timestamp)>,
    absent: FastMap<KeyHash, Timestamp>,
}

/// Whether an entry cached at `at` is still fresh at `now`.
fn fresh(now: Timestamp, at: Timestamp, ttl: Duration) -> bool {
    u128::try_from(now.unix_ms() - at.unix_ms()).is_ok_and(|age| age < ttl.as_millis())
}

impl Cache {
    pub(crate) fn new(config: CacheConfig, clock: Arc<dyn Clock>) -> Self {
        Self {
            config,
            clock,
            maps: RwLock::new(Maps::default()),
            epoch: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    #[cfg(test)]
    fn get(&self, hash: &KeyHash) -> Lookup {
        self.get_at(hash, self.clock.now())
    }

    /// What is known about `hash` at `now` (the caller's reading of this cache's clock).
    pub(crate) fn get_at(&self, hash: &KeyHash, now: Timestamp) -> Lookup {
        let lookup = {
            let maps = self.maps.read().unwrap_or_else(|p| p.into_inner());
            if let Some((grant, at)) = maps.found.get(hash) {
                if fresh(now, *at, self.config.ttl) {
                    Lookup::Hit(Some(grant.clone()))
                } else {
                    Lookup::Miss
                }
            } else if let Some(at) = maps.absent.get(hash) {
                if fresh(now, *at, self.config.negative_ttl) {
                    Lookup::Hit(None)
                } else {
                    Lookup::Miss
                }
            } else {
                Lookup::Miss
            }
        };
        let counter = if lookup == Lookup::Miss {
            &self.misses
        } else {
            &self.hits
        };
        counter.fetch_add(1, Ordering::Relaxed);
        lookup
    }

    /// The current epoch: read it before asking the store, pass it to [`Cache::insert`].
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Caches what the store said, unless something was invalidated since `epoch`.
    pub(crate) fn insert(&self, hash: KeyHash, grant: Option<Arc<KeyGrant>>, epoch: u64) {
        let mut maps = self.maps.write().unwrap_or_else(|p| p.into_inner());
        // Checked under the write lock: invalidations bump the epoch under it too.
        if self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        let now = self.clock.now();
        match grant {
            Some(grant) => {
                if maps.found.len() >= self.config.capacity {
                    let ttl = self.config.ttl;
                    make_room(&mut maps.found, self.config.capacity, |(_, at)| {
                        fresh(now, *at, ttl)
                    });
                }
                maps.absent.remove(&hash);
                maps.found.insert(hash, (grant, now));
            }
            None => {
                let capacity = (self.config.capacity / 4).max(1);
                if maps.absent.len() >= capacity {
                    let ttl = self.config.negative_ttl;
                    make_room(&mut maps.absent, capacity, |at| fresh(now, *at, ttl));
                }
                maps.found.remove(&hash);
                maps.absent.insert(hash, now);
            }
        }
    }

    /// Forgets one key.
    pub(crate) fn invalidate(&self, hash: &KeyHash) {
        let mut maps = self.maps.write().unwrap_or_else(|p| p.into_inner());
        self.epoch.fetch_add(1, Ordering::AcqRel);
        maps.found.remove(hash);
        maps.absent.remove(hash);
    }

    /// Forgets every key of `owner` (its shared limits changed).
    pub(crate) fn invalidate_owner(&self, owner: &str) {
        let mut maps = self.maps.write().unwrap_or_else(|p| p.into_inner());
        self.epoch.fetch_add(1, Ordering::AcqRel);
        maps.found
            .retain(|_, (grant, _)| grant.owner.as_deref() != Some(owner));
    }

    /// Forgets everything.
    pub(crate) fn clear(&self) {
        let mut maps = self.maps.write().unwrap_or_else(|p| p.into_inner());
        self.epoch.fetch_add(1, Ordering::AcqRel);
        maps.found.clear();
        maps.absent.clear();
    }

    /// (hits, misses, records cached, negative entries cached).
    pub(crate) fn stats(&self) -> CacheStats {
        let maps = self.maps.read().unwrap_or_else(|p| p.into_inner());
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            records: maps.found.len(),
            negatives: maps.absent.len(),
        }
    }
}

/// Cache counters, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that went to the store.
    pub misses: u64,
    /// Keys held.
    pub records: usize,
    /// "No such key" answers held.
    pub negatives: usize,
}

/// Drops entries that are no longer fresh; if that frees less than a tenth, drops a tenth.
fn make_room<V>(map: &mut FastMap<KeyHash, V>, capacity: usize, fresh: impl Fn(&V) -> bool) {
    map.retain(|_, v| fresh(v));
    let target = capacity - capacity / 10;
    if map.len() > target {
        let excess = map.len() - target;
        let doomed: Vec<KeyHash> = map.keys().take(excess).copied().collect();
        for hash in doomed {
            map.remove(&hash);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keygate_core::{FixedClock, KeyRecord, KeySpec, Prefix, issue};

    fn record() -> (KeyHash, Arc<KeyGrant>) {
        let spec = KeySpec {
            name: "k".into(),
            ..KeySpec::default()
        };
        let record: KeyRecord = issue(spec, &Prefix::default(), t(0)).unwrap().0;
        (record.hash, Arc::new(KeyGrant::from(record)))
    }

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_unix_ms(ms).unwrap()
    }

    fn clock() -> Arc<FixedClock> {
        Arc::new(FixedClock::new(t(1_000_000)))
    }

    fn config(capacity: usize) -> CacheConfig {
        CacheConfig {
            ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(60),
            capacity,
        }
    }

    #[test]
    fn hits_misses_and_invalidation() {
        let cache = Cache::new(config(10), clock());
        let (hash, grant) = record();
        assert_eq!(cache.get(&hash), Lookup::Miss);
        cache.insert(hash, Some(grant.clone()), cache.epoch());
        assert_eq!(cache.get(&hash), Lookup::Hit(Some(grant.clone())));
        cache.invalidate(&hash);
        assert_eq!(cache.get(&hash), Lookup::Miss);
        let unknown = KeyHash::of("nope");
        cache.insert(unknown, None, cache.epoch());
        assert_eq!(cache.get(&unknown), Lookup::Hit(None));
        cache.clear();
        assert_eq!(cache.get(&unknown), Lookup::Miss);
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses), (2, 3));
    }

    #[test]
    fn a_fetch_that_raced_an_invalidation_is_not_cached() {
        let cache = Cache::new(config(10), clock());
        let (hash, grant) = record();
        let epoch = cache.epoch();
        cache.invalidate(&hash); // e.g. a revoke lands while the store answers
        cache.insert(hash, Some(grant), epoch);
        assert_eq!(cache.get(&hash), Lookup::Miss);
    }

    #[test]
    fn entries_expire_by_the_clock() {
        let clock = clock();
        let cache = Cache::new(
            CacheConfig {
                ttl: Duration::from_millis(30_000),
                negative_ttl: Duration::from_millis(10_000),
                capacity: 10,
            },
            clock.clone(),
        );
        let (hash, grant) = record();
        let unknown = KeyHash::of("nope");
        cache.insert(hash, Some(grant.clone()), cache.epoch());
        cache.insert(unknown, None, cache.epoch());
        clock.advance(keygate_core::Lifetime::from_ms(9_999).unwrap());
        assert_eq!(cache.get(&unknown), Lookup::Hit(None));
        clock.advance(keygate_core::Lifetime::from_ms(1).unwrap());
        assert_eq!(cache.get(&unknown), Lookup::Miss, "negative TTL is shorter");
        assert_eq!(cache.get(&hash), Lookup::Hit(Some(grant)));
        clock.advance(keygate_core::Lifetime::from_ms(20_000).unwrap());
        assert_eq!(cache.get(&hash), Lookup::Miss);
    }

    #[test]
    fn bounded_and_negatives_cannot_crowd_out_records() {
        let cache = Cache::new(config(100), clock());
        let (kept, grant) = record();
        cache.insert(kept, Some(grant.clone()), cache.epoch());
        for i in 0..10_000 {
            cache.insert(KeyHash::of(&format!("junk {i}")), None, cache.epoch());
        }
        let stats = cache.stats();
        assert!(stats.negatives <= 25, "{stats:?}");
        assert_eq!(cache.get(&kept), Lookup::Hit(Some(grant)));
        for _ in 0..500 {
            let (hash, grant) = record();
            cache.insert(hash, Some(grant), cache.epoch());
        }
        assert!(cache.stats().records <= 100);
    }
}
