//! The counters' table, shared by both limiters: per subject, one state per rate limit, in
//! shards behind plain mutexes (a check is a few hundred nanoseconds of work at most and never
//! awaits while holding one).
//!
//! Bounded: at most `max_subjects` subjects (split evenly over the shards). A shard that is
//! full first drops its idle subjects (every window two windows old: dropping them changes no
//! decision), at most once a second; if it is still full, a new subject is not admitted and
//! the caller refuses its request (fail closed, counted in [`TableStats::refused_full`]).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use keygate_core::Timestamp;
use keygate_core::limits::{LimitName, RateLimit, Window};

use super::{MAX_SUBJECTS, Subject};

/// Number of shards (a power of two).
const SHARDS: usize = 64;
/// A full shard sweeps its idle entries at most this often.
const SWEEP_EVERY_MS: i64 = 1_000;

/// The state a table keeps per limit.
pub(crate) trait SlotState: Default {
    /// Whether nothing in this state matters any more at `now`.
    fn is_idle(&self, window: Window, now: Timestamp) -> bool;
}

/// One subject's limits (by name and window) and their states, aligned.
#[derive(Debug)]
pub(crate) struct Entry<S> {
    keys: Box<[(LimitName, Window)]>,
    pub(crate) states: Box<[S]>,
}

impl<S: SlotState> Entry<S> {
    fn new(limits: &[RateLimit]) -> Self {
        Self {
            keys: limits.iter().map(|l| (l.name, l.window)).collect(),
            states: limits.iter().map(|_| S::default()).collect(),
        }
    }

    /// Lines the states up with `limits`: a limit keeps its state while its name and window
    /// stay the same (a changed `limit` keeps the count); others start empty.
    fn align(&mut self, limits: &[RateLimit]) {
        let same = self.keys.len() == limits.len()
            && self
                .keys
                .iter()
                .zip(limits)
                .all(|(k, l)| *k == (l.name, l.window));
        if same {
            return;
        }
        let mut old: Vec<_> = std::mem::take(&mut self.keys)
            .into_vec()
            .into_iter()
            .zip(std::mem::take(&mut self.states).into_vec())
            .collect();
        let states = limits
            .iter()
            .map(|l| {
                old.iter()
                    .position(|(k, _)| *k == (l.name, l.window))
                    .map_or_else(S::default, |i| old.swap_remove(i).1)
            })
            .collect();
        self.keys = limits.iter().map(|l| (l.name, l.window)).collect();
        self.states = states;
    }

    fn is_idle(&self, now: Timestamp) -> bool {
        self.keys
            .iter()
            .zip(self.states.iter())
            .all(|((_, window), state)| state.is_idle(*window, now))
    }

    /// The limits (name and window) with their states, for walking all of a table.
    pub(crate) fn slots(&mut self) -> impl Iterator<Item = (LimitName, Window, &mut S)> {
        self.keys
            .iter()
            .zip(self.states.iter_mut())
            .map(|((name, window), state)| (*name, *window, state))
    }
}

/// Subjects hash once, when made; the map only passes that hash on.
#[derive(Default)]
pub(crate) struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[derive(Debug)]
pub(crate) struct Shard<S> {
    map: HashMap<Subject, Entry<S>, BuildHasherDefault<PassThrough>>,
    swept_at: Option<i64>,
}

impl<S: SlotState> Shard<S> {
    /// The subject's entry lined up with `limits`, inserted if new; `None` when the shard is
    /// full of subjects that are not idle.
    pub(crate) fn entry(
        &mut self,
        subject: &Subject,
        limits: &[RateLimit],
        now: Timestamp,
        capacity: usize,
        stats: &TableStats,
    ) -> Option<&mut Entry<S>> {
        if !self.map.contains_key(subject) {
            if self.map.len() >= capacity {
                let due = self
                    .swept_at
                    .is_none_or(|at| now.unix_ms() - at >= SWEEP_EVERY_MS);
                if due {
                    self.swept_at = Some(now.unix_ms());
                    let before = self.map.len();
                    self.map.retain(|_, entry| !entry.is_idle(now));
                    stats.evict((before - self.map.len()) as u64);
                }
                if self.map.len() >= capacity {
                    stats.refused_full.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
            }
            self.map.insert(subject.clone(), Entry::new(limits));
        }
        let entry = self.map.get_mut(subject).expect("present or just inserted");
        entry.align(limits);
        Some(entry)
    }

    /// The subject's entry if there is one (not lined up with anything).
    pub(crate) fn get(&mut self, subject: &Subject) -> Option<&mut Entry<S>> {
        self.map.get_mut(subject)
    }

    /// Every subject and its entry.
    pub(crate) fn entries(&mut self) -> impl Iterator<Item = (&Subject, &mut Entry<S>)> {
        self.map.iter_mut()
    }
}

/// How full a table is and what it had to do about it.
#[derive(Debug, Default)]
pub(crate) struct TableStats {
    pub(crate) evicted: AtomicU64,
    pub(crate) refused_full: AtomicU64,
}

impl TableStats {
    fn evict(&self, n: u64) {
        self.evicted.fetch_add(n, Ordering::Relaxed);
    }
}

/// Subjects' counters in shards.
#[derive(Debug)]
pub(crate) struct Table<S> {
    shards: Box<[Mutex<Shard<S>>]>,
    capacity: usize,
    pub(crate) stats: TableStats,
}

/// The shards a request needs, locked in ascending order (so two requests never wait on each
/// other's locks in a cycle).
pub(crate) struct Locked<'t, S> {
    guards: [Option<MutexGuard<'t, Shard<S>>>; MAX_SUBJECTS],
    /// `slot[i]`: which guard holds the shard of the request's i-th subject.
    slot: [usize; MAX_SUBJECTS],
}

impl<S> Locked<'_, S> {
    /// The shard of the request's `i`-th subject.
    pub(crate) fn shard(&mut self, i: usize) -> &mut Shard<S> {
        self.guards[self.slot[i]]
            .as_mut()
            .expect("a guard for every subject")
    }
}

impl<S: SlotState> Table<S> {
    /// A table for at most `max_subjects` subjects.
    pub(crate) fn new(max_subjects: usize) -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashMap::default(),
                        swept_at: None,
                    })
                })
                .collect(),
            capacity: max_subjects.div_ceil(SHARDS).max(1),
            stats: TableStats::default(),
        }
    }

    /// Most subjects one shard holds.
    pub(crate) fn shard_capacity(&self) -> usize {
        self.capacity
    }

    fn shard_of(subject: &Subject) -> usize {
        // The map uses the low bits and the top seven; take the shard from the middle.
        (subject.precomputed_hash() >> 40) as usize & (SHARDS - 1)
    }

    /// Locks the shard of one subject.
    pub(crate) fn lock_one(&self, subject: &Subject) -> MutexGuard<'_, Shard<S>> {
        lock(&self.shards[Self::shard_of(subject)])
    }

    /// Locks the shards of `subjects` (at most [`MAX_SUBJECTS`]).
    pub(crate) fn lock<'t>(&'t self, subjects: impl Iterator<Item = &'t Subject>) -> Locked<'t, S> {
        let mut shards = [usize::MAX; MAX_SUBJECTS];
        let mut n = 0;
        for subject in subjects {
            assert!(
                n < MAX_SUBJECTS,
                "at most {MAX_SUBJECTS} subjects per check"
            );
            shards[n] = Self::shard_of(subject);
            n += 1;
        }
        let mut order = shards;
        order[..n].sort_unstable();
        let mut guards: [Option<MutexGuard<'t, Shard<S>>>; MAX_SUBJECTS] = Default::default();
        let mut held = [usize::MAX; MAX_SUBJECTS];
        let mut taken = 0;
        for (i, shard) in order[..n].iter().enumerate() {
            if i > 0 && order[i - 1] == *shard {
                continue;
            }
            guards[taken] = Some(lock(&self.shards[*shard]));
            held[taken] = *shard;
            taken += 1;
        }
        let mut slot = [0; MAX_SUBJECTS];
        for (i, shard) in shards[..n].iter().enumerate() {
            slot[i] = held[..taken]
                .iter()
                .position(|h| h == shard)
                .expect("every subject's shard is locked");
        }
        Locked { guards, slot }
    }

    /// Each shard in turn (for sweeps and re-syncs; one lock at a time).
    pub(crate) fn for_each_shard(&self, mut f: impl FnMut(&mut Shard<S>)) {
        for shard in self.shards.iter() {
            f(&mut lock(shard));
        }
    }

    /// Drops every idle subject; returns how many.
    pub(crate) fn sweep(&self, now: Timestamp) -> usize {
        let mut dropped = 0;
        self.for_each_shard(|shard| {
            let before = shard.map.len();
            shard.map.retain(|_, entry| !entry.is_idle(now));
            shard.swept_at = Some(now.unix_ms());
            dropped += before - shard.map.len();
        });
        self.stats.evict(dropped as u64);
        dropped
    }

    /// Subjects held.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).map.len()).sum()
    }
}

/// A poisoned lock (a panic while it was held) still guards consistent counters: every update
/// is a few plain assignments. Keep serving.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
