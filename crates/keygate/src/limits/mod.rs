//! Rate-limit counters at run time: in this process ([`LocalLimiter`]) or shared by several
//! nodes through Redis ([`RedisLimiter`]). The arithmetic — what a limit is, when a request
//! fits, what the headers say — is [`keygate_core::limits`]; this module only keeps the
//! counts.
//!
//! ```
//! use keygate::core::limits::{RateLimit, ratelimit_header};
//! use keygate::core::{KeyId, Timestamp};
//! use keygate::limits::{LocalLimiter, Subject};
//!
//! let limiter = LocalLimiter::default();
//! let now = Timestamp::from_unix_ms(1_800_000_000_000).unwrap();
//! let key = Subject::key(&KeyId::generate(now));
//! let owner = Subject::owner("acme");
//! let key_limits = [RateLimit::parse("2/1s").unwrap()];
//! let owner_limits = [RateLimit::parse("1000/1h").unwrap()];
//! let request = [(&key, &key_limits[..]), (&owner, &owner_limits[..])];
//!
//! assert!(limiter.check(&request, 1, now).allowed());
//! let d = limiter.check(&request, 1, now);
//! assert_eq!(ratelimit_header(&d).unwrap(), r#""per_1s";r=0;t=2, "owner:per_1h";r=998;t=5400"#);
//! assert!(!limiter.check(&request, 1, now).allowed());
//! ```
//!
//! A subject is a key (`key:<id>`) or an owner (`owner:<owner>`): all of an owner's keys share
//! the owner's limits. One check covers every limit of every subject of a request at once.

mod local;
mod redis;
mod table;

use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, LazyLock};

use keygate_core::limits::{Decision, LimitScope, LimitStatus, RateLimit};
use keygate_core::{KeyId, Timestamp};

pub use local::LocalLimiter;
pub use redis::{RedisConfigError, RedisHealth, RedisLimiter, RedisLimiterBuilder, RedisStats};

/// Most subjects in one check (a key and its owner need two).
pub const MAX_SUBJECTS: usize = 4;
/// Subjects a limiter holds at most, unless told otherwise.
pub const DEFAULT_MAX_SUBJECTS: usize = 200_000;

/// Whose counters: a key or an owner. Cheap to make and to clone: it shares the key id's text
/// (or holds the owner's) rather than copying it, and hashes once, when made, so that a check
/// finds the counters without hashing again. Written as `key:<id>` or `owner:<owner>`.
#[derive(Clone)]
pub struct Subject {
    name: Name,
    hash: u64,
}

#[derive(Clone, PartialEq, Eq)]
enum Name {
    Key(KeyId),
    Owner(Arc<str>),
}

/// Subjects hash with one random seed per process (foldhash: a subject is made per request
/// of a limited key).
static SEED: LazyLock<foldhash::fast::RandomState> =
    LazyLock::new(foldhash::fast::RandomState::default);

impl Subject {
    /// The subject for a key's own limits.
    pub fn key(id: &KeyId) -> Self {
        Self {
            hash: SEED.hash_one((LimitScope::Key as u8, id.as_str())),
            name: Name::Key(id.clone()),
        }
    }

    /// The subject for an owner's limits, shared by all its keys.
    pub fn owner(owner: &str) -> Self {
        Self {
            hash: SEED.hash_one((LimitScope::Owner as u8, owner)),
            name: Name::Owner(owner.into()),
        }
    }

    /// Whose limits these are.
    pub fn scope(&self) -> LimitScope {
        match self.name {
            Name::Key(_) => LimitScope::Key,
            Name::Owner(_) => LimitScope::Owner,
        }
    }

    fn precomputed_hash(&self) -> u64 {
        self.hash
    }
}

impl PartialEq for Subject {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.name == other.name
    }
}

impl Eq for Subject {}

impl Hash for Subject {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl fmt::Debug for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Name::Key(id) => write!(f, "key:{}", id.as_str()),
            Name::Owner(owner) => write!(f, "owner:{owner}"),
        }
    }
}

/// How many subjects a limiter holds and what its bound made it do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimiterStats {
    /// Subjects held now.
    pub subjects: usize,
    /// Idle subjects dropped so far (their counts no longer mattered).
    pub evicted: u64,
    /// Requests refused because the table was full of active subjects and theirs was new.
    /// The limiter fails closed: such a request gets `RATE_LIMITED` with `Retry-After: 1`.
    pub refused_full: u64,
}

impl LimiterStats {
    fn of<S: table::SlotState>(table: &table::Table<S>) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        Self {
            subjects: table.len(),
            evicted: table.stats.evicted.load(Relaxed),
            refused_full: table.stats.refused_full.load(Relaxed),
        }
    }
}

/// Either limiter, for a verifier that is configured with one or the other.
#[derive(Debug)]
pub enum Limiter {
    /// Counters in this process.
    Local(LocalLimiter),
    /// Counters shared through Redis.
    Redis(RedisLimiter),
}

impl Limiter {
    /// Checks a request; see [`LocalLimiter::check`] and [`RedisLimiter::check`]. Never fails:
    /// with Redis unreachable it counts locally.
    pub async fn check(
        &self,
        request: &[(&Subject, &[RateLimit])],
        cost: u64,
        now: Timestamp,
    ) -> Decision {
        match self {
            Self::Local(l) => l.check(request, cost, now),
            // Boxed: the Redis check's state is large, and inline it would be moved around
            // with every local check's future too.
            Self::Redis(r) => Box::pin(r.check(request, cost, now)).await,
        }
    }
}

/// The refusal when a new subject finds the table full: every limit at 0, retry in a second.
fn refuse_full(request: &[(&Subject, &[RateLimit])]) -> Decision {
    Decision::new(
        request
            .iter()
            .flat_map(|(subject, limits)| {
                limits.iter().map(|l| LimitStatus {
                    scope: subject.scope(),
                    name: l.name,
                    limit: l.limit,
                    window: l.window,
                    remaining: 0,
                    reset: 1,
                    retry_after: Some(1),
                })
            })
            .collect(),
    )
}

fn unique_subjects(request: &[(&Subject, &[RateLimit])]) -> bool {
    request
        .iter()
        .enumerate()
        .all(|(i, (a, _))| request[..i].iter().all(|(b, _)| a != b))
}
