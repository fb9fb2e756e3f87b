//! [`LocalLimiter`]: rate-limit counters in this process.

use keygate_core::Timestamp;
use keygate_core::limits::{
    Decision, Group, LimitScope, MAX_LIMITS, RateLimit, WindowState, check_groups,
};

use super::table::{SlotState, Table};
use super::{
    DEFAULT_MAX_SUBJECTS, LimiterStats, MAX_SUBJECTS, Subject, refuse_full, unique_subjects,
};

impl SlotState for WindowState {
    fn is_idle(&self, window: keygate_core::limits::Window, now: Timestamp) -> bool {
        WindowState::is_idle(self, window, now)
    }
}

/// Rate-limit counters in this process: exact, for one node (or per node).
///
/// A check takes the locks of the request's subjects (in a fixed order), decides with
/// [`check_groups`] and returns; it never blocks on I/O. Memory is bounded by `max_subjects`
/// (see [`LimiterStats`] for what happens when it is reached).
#[derive(Debug)]
pub struct LocalLimiter {
    table: Table<WindowState>,
}

impl Default for LocalLimiter {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_SUBJECTS)
    }
}

impl LocalLimiter {
    /// A limiter holding at most `max_subjects` subjects (keys and owners) at once.
    pub fn new(max_subjects: usize) -> Self {
        Self {
            table: Table::new(max_subjects),
        }
    }

    /// Checks a request of `cost` at `now` against every limit of every subject in `request`
    /// (e.g. the key's and its owner's), all together: allowed only if every limit allows it,
    /// and then counted in all of them; refused, counted in none.
    ///
    /// # Panics
    /// With more than [`MAX_SUBJECTS`](super::MAX_SUBJECTS) subjects, or one subject twice.
    pub fn check(
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
        let capacity = self.table.shard_capacity();
        let stats = &self.table.stats;
        if let [(subject, limits)] = request {
            let mut shard = self.table.lock_one(subject);
            let Some(entry) = shard.entry(subject, limits, now, capacity, stats) else {
                return refuse_full(request);
            };
            let group = Group {
                scope: subject.scope(),
                limits,
                states: &mut entry.states,
            };
            return check_groups(&mut [group], cost, now);
        }
        let mut locked = self.table.lock(request.iter().map(|(s, _)| *s));
        // Several subjects, several entries: decide over copies of their states, then write
        // the copies back, all under the locks.
        let total: usize = request.iter().map(|(_, l)| l.len()).sum();
        let mut buffer = [WindowState::default(); MAX_SUBJECTS * MAX_LIMITS];
        let mut spilled = Vec::new();
        let states: &mut [WindowState] = if total <= buffer.len() {
            &mut buffer[..total]
        } else {
            spilled.resize(total, WindowState::default());
            &mut spilled
        };
        let mut at = 0;
        for (i, (subject, limits)) in request.iter().enumerate() {
            if limits.is_empty() {
                continue;
            }
            let Some(entry) = locked.shard(i).entry(subject, limits, now, capacity, stats) else {
                return refuse_full(request);
            };
            states[at..at + limits.len()].copy_from_slice(&entry.states);
            at += limits.len();
        }
        let mut rest = &mut states[..];
        let mut groups = std::array::from_fn::<_, MAX_SUBJECTS, _>(|i| {
            let (scope, limits) = request
                .get(i)
                .map_or((LimitScope::Key, &[][..]), |(s, l)| (s.scope(), *l));
            let (head, tail) = std::mem::take(&mut rest).split_at_mut(limits.len());
            rest = tail;
            Group {
                scope,
                limits,
                states: head,
            }
        });
        let decision = check_groups(&mut groups[..request.len()], cost, now);
        for (i, (subject, limits)) in request.iter().enumerate() {
            if let Some(entry) = locked.shard(i).get(subject).filter(|_| !limits.is_empty()) {
                entry.states.copy_from_slice(groups[i].states);
            }
        }
        decision
    }

    /// Drops every subject whose counts no longer matter at `now`; returns how many. Optional:
    /// a full shard does this by itself.
    pub fn sweep(&self, now: Timestamp) -> usize {
        self.table.sweep(now)
    }

    /// Counters for metrics.
    pub fn stats(&self) -> LimiterStats {
        LimiterStats::of(&self.table)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use keygate_core::limits::{LimitScope, ratelimit_header};
    use keygate_core::{Clock, FixedClock, KeyId, Lifetime};

    use super::*;

    fn t0() -> Timestamp {
        Timestamp::from_unix_ms(1_800_000_000_000).unwrap()
    }

    fn limit(text: &str) -> RateLimit {
        RateLimit::parse(text).unwrap()
    }

    fn key() -> Subject {
        Subject::key(&KeyId::generate(t0()))
    }

    #[test]
    fn exact_at_n_in_one_process() {
        let limiter = LocalLimiter::default();
        let clock = FixedClock::new(t0());
        let (k, limits) = (key(), [limit("100/1m")]);
        let admitted = (0..250)
            .filter(|_| limiter.check(&[(&k, &limits)], 1, clock.now()).allowed())
            .count();
        assert_eq!(admitted, 100);
        clock.advance(Lifetime::parse("59s").unwrap());
        assert!(!limiter.check(&[(&k, &limits)], 1, clock.now()).allowed());
    }

    #[test]
    fn windows_roll_over_by_the_clock() {
        let limiter = LocalLimiter::default();
        let clock = FixedClock::new(t0());
        let (k, limits) = (key(), [limit("10/1m")]);
        for _ in 0..10 {
            assert!(limiter.check(&[(&k, &limits)], 1, clock.now()).allowed());
        }
        let refused = limiter.check(&[(&k, &limits)], 1, clock.now());
        assert_eq!(refused.retry_after(), Some(67));
        clock.advance(Lifetime::parse("66s").unwrap());
        assert!(!limiter.check(&[(&k, &limits)], 1, clock.now()).allowed());
        clock.set(Timestamp::from_unix_ms(t0().unix_ms() + 66_001).unwrap());
        assert!(limiter.check(&[(&k, &limits)], 1, clock.now()).allowed());
        // Two windows on, all ten are forgotten.
        clock.set(Timestamp::from_unix_ms(t0().unix_ms() + 180_000).unwrap());
        let admitted = (0..20)
            .filter(|_| limiter.check(&[(&k, &limits)], 1, clock.now()).allowed())
            .count();
        assert_eq!(admitted, 10);
    }

    #[test]
    fn costs_are_counted_and_refusals_spend_nothing() {
        let limiter = LocalLimiter::default();
        let (k, limits) = (key(), [limit("10/1m"), limit("burst=4/1s")]);
        assert!(limiter.check(&[(&k, &limits)], 4, t0()).allowed());
        let refused = limiter.check(&[(&k, &limits)], 3, t0());
        assert!(!refused.allowed());
        assert_eq!(
            refused.limits()[0].remaining,
            6,
            "the minute limit counted nothing"
        );
        assert_eq!(refused.limits()[0].retry_after, None);
        assert!(refused.limits()[1].retry_after.is_some());
        let later = Timestamp::from_unix_ms(t0().unix_ms() + 2_000).unwrap();
        assert!(limiter.check(&[(&k, &limits)], 4, later).allowed());
        let d = limiter.check(&[(&k, &limits)], 0, later);
        assert_eq!(d.limits()[0].remaining, 2);
    }

    #[test]
    fn two_keys_share_their_owners_limit() {
        let limiter = LocalLimiter::default();
        let (a, b, owner) = (key(), key(), Subject::owner("acme"));
        let key_limits = [limit("10/1m")];
        let owner_limits = [limit("15/1m")];
        let request =
            |k: &Subject| limiter.check(&[(k, &key_limits), (&owner, &owner_limits)], 1, t0());
        let from_a = (0..12).filter(|_| request(&a).allowed()).count();
        let from_b = (0..12).filter(|_| request(&b).allowed()).count();
        assert_eq!((from_a, from_b), (10, 5));
        let d = request(&b);
        assert_eq!(d.limits()[1].scope, LimitScope::Owner);
        assert_eq!(
            ratelimit_header(&d).unwrap(),
            r#""per_1m";r=5;t=73, "owner:per_1m";r=0;t=65"#
        );
        // The owner's subject alone sees all fifteen.
        let d = limiter.check(&[(&owner, &owner_limits)], 0, t0());
        assert_eq!(d.limits()[0].remaining, 0);
    }

    #[test]
    fn exact_under_threads() {
        let limiter = Arc::new(LocalLimiter::default());
        let (owner, limits) = (Subject::owner("o"), [limit("1000/1m")]);
        let keys: Vec<Subject> = (0..4).map(|_| key()).collect();
        let admitted = Arc::new(AtomicU64::new(0));
        std::thread::scope(|s| {
            for k in &keys {
                let (limiter, admitted, owner) = (&limiter, &admitted, &owner);
                let key_limits = [limit("600/1m")];
                s.spawn(move || {
                    for _ in 0..1000 {
                        let request = [(k, &key_limits[..]), (owner, &limits[..])];
                        if limiter.check(&request, 1, t0()).allowed() {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.load(Ordering::Relaxed), 1000);
    }

    #[test]
    fn memory_is_bounded_and_idle_subjects_go() {
        // 64 shards of one subject each; 2,000 new subjects hit every shard.
        let limiter = LocalLimiter::new(64);
        let limits = [limit("5/1s")];
        let fill = |now| {
            let mut admitted = 0;
            for _ in 0..2_000 {
                let d = limiter.check(&[(&key(), &limits)], 1, now);
                if d.allowed() {
                    admitted += 1;
                } else {
                    assert_eq!(d.retry_after(), Some(1), "refused because full");
                }
            }
            admitted
        };
        assert_eq!(fill(t0()), 64);
        let stats = limiter.stats();
        assert_eq!(
            (stats.subjects, stats.refused_full, stats.evicted),
            (64, 2_000 - 64, 0)
        );
        // Two seconds later every subject is idle: each full shard drops its idle subject
        // for the first newcomer.
        let later = Timestamp::from_unix_ms(t0().unix_ms() + 2_000).unwrap();
        assert_eq!(fill(later), 64);
        let stats = limiter.stats();
        assert_eq!((stats.subjects, stats.evicted), (64, 64));
        let much_later = Timestamp::from_unix_ms(t0().unix_ms() + 10_000).unwrap();
        assert_eq!(limiter.sweep(much_later), 64);
        assert_eq!(limiter.stats().subjects, 0);
    }

    #[test]
    fn no_limits_is_no_work() {
        let limiter = LocalLimiter::default();
        let d = limiter.check(&[(&key(), &[])], 1, t0());
        assert!(d.allowed());
        assert!(d.limits().is_empty());
        assert_eq!(limiter.stats().subjects, 0);
    }

    #[test]
    fn changed_limits_keep_the_counts_of_the_same_name_and_window() {
        let limiter = LocalLimiter::default();
        let k = key();
        for _ in 0..5 {
            assert!(limiter.check(&[(&k, &[limit("5/1m")])], 1, t0()).allowed());
        }
        assert!(!limiter.check(&[(&k, &[limit("5/1m")])], 1, t0()).allowed());
        // Raised to 8: three more. A new limit starts empty; a changed window starts over.
        let raised = [limit("burst=100/1s"), limit("8/1m")];
        let d = limiter.check(&[(&k, &raised)], 0, t0());
        assert_eq!((d.limits()[0].remaining, d.limits()[1].remaining), (100, 3));
        let d = limiter.check(&[(&k, &[limit("per_1m=8/2m")])], 0, t0());
        assert_eq!(d.limits()[0].remaining, 8);
    }
}
