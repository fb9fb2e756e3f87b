//! Usage you can see: requests counted per (key, hour) by outcome in memory, written in one
//! batch per flush (no write per request), and read back per key or per owner.
//!
//! Only requests that name a real key are counted (`MISSING`, `MALFORMED` and `NOT_FOUND` have
//! no key). A flush that fails keeps its counts for the next one. While the store stays away,
//! at most [`MAX_PENDING_ROWS`] (key, hour) rows are held; counts for further rows are dropped
//! and counted in [`UsageTally::dropped`].

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use keygate_core::usage::{UsageCounts, hour_of};
use keygate_core::{KeyGrant, KeyId, Outcome, Timestamp};
use keygate_store::{StoreError, UsageDelta, UsageLog};

use crate::FastMap;

pub use keygate_core::usage::{Bucket, UsageBucket, UsageRange};

/// The most (key, hour) rows held between flushes (about 60 bytes each, plus the owner's id;
/// a row that counted a refusal holds its eight counts apart, another 64).
pub const MAX_PENDING_ROWS: usize = 200_000;

/// Rows written per store call by a flush (of counts, and of last-used times): a flush of
/// many keys holds one call's statement in memory at a time, not all of them.
pub(crate) const FLUSH_ROWS: usize = 2_000;

/// Whose usage to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageOf<'a> {
    /// One key.
    Key(&'a KeyId),
    /// Every key of an owner, added together.
    Owner(&'a str),
}

type Pending = FastMap<(KeyId, Timestamp), Row>;

/// One (key, hour) row waiting for the next flush.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    /// The key's owner, written with the counts.
    owner: Option<Box<str>>,
    counts: Counts,
}

/// A row's counts as held in memory: almost every row counts only verified requests, so that
/// case is one number; a row that also counted another outcome holds all eight counts, boxed.
/// Either way it stands for a [`UsageCounts`], which holds the rules (what is counted, and how
/// counts add up).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Counts {
    /// This many `VALID` requests and nothing else.
    Verified(u64),
    /// Any other counts.
    Mixed(Box<UsageCounts>),
}

impl Counts {
    /// The compact form of `counts`.
    fn of(counts: UsageCounts) -> Self {
        let verified = Self::Verified(counts.verified());
        if verified.counts() == counts {
            verified
        } else {
            Self::Mixed(Box::new(counts))
        }
    }

    /// The counts this stands for.
    fn counts(&self) -> UsageCounts {
        match self {
            Self::Verified(n) => {
                let mut counts = UsageCounts::default();
                counts.add(Outcome::Valid, *n);
                counts
            }
            Self::Mixed(counts) => **counts,
        }
    }

    /// Counts one more request with `outcome` (nothing if it is not one that is counted).
    fn add(&mut self, outcome: Outcome) {
        match self {
            Self::Verified(n) if outcome == Outcome::Valid => *n = n.saturating_add(1),
            Self::Verified(_) => {
                let mut counts = self.counts();
                if counts.add(outcome, 1) {
                    *self = Self::Mixed(Box::new(counts));
                }
            }
            Self::Mixed(counts) => {
                counts.add(outcome, 1);
            }
        }
    }

    /// Adds every count of `other`.
    fn merge(&mut self, other: &Counts) {
        let mut counts = self.counts();
        counts.merge(&other.counts());
        *self = Self::of(counts);
    }
}

/// The counts gathered since the last flush.
#[derive(Debug)]
pub(crate) struct UsageTally {
    log: Arc<dyn UsageLog>,
    pending: Mutex<Pending>,
    dropped: AtomicU64,
}

impl UsageTally {
    pub(crate) fn new(log: Arc<dyn UsageLog>) -> Self {
        Self {
            log,
            pending: Mutex::new(Pending::default()),
            dropped: AtomicU64::new(0),
        }
    }

    /// Counts one request of key `grant` with `outcome` at `at`.
    pub(crate) fn note(&self, grant: &KeyGrant, outcome: Outcome, at: Timestamp) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let key = (grant.id.clone(), hour_of(at));
        if let Some(row) = pending.get_mut(&key) {
            row.counts.add(outcome);
            return;
        }
        let mut counts = UsageCounts::default();
        if !counts.add(outcome, 1) {
            return; // names no key: not counted
        }
        if pending.len() >= MAX_PENDING_ROWS {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let owner = grant.owner.clone();
        pending.insert(
            key,
            Row {
                owner,
                counts: Counts::of(counts),
            },
        );
    }

    /// Writes the counts gathered since the previous flush, [`FLUSH_ROWS`] rows per store
    /// call; on failure the rows not written are kept (added to what came since) for the next
    /// try.
    pub(crate) async fn flush(&self) -> Result<(), StoreError> {
        let taken = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::take(&mut *pending)
        };
        // Rows are moved out of the taken map a call's worth at a time (no copy of the whole
        // batch beside it).
        let mut rows = taken.into_iter();
        loop {
            let chunk: Vec<_> = rows.by_ref().take(FLUSH_ROWS).collect();
            if chunk.is_empty() {
                return Ok(());
            }
            let batch: Vec<UsageDelta> = chunk
                .iter()
                .map(|((key, hour), row)| UsageDelta {
                    key: key.clone(),
                    owner: row.owner.as_deref().map(str::to_owned),
                    hour: *hour,
                    counts: row.counts.counts(),
                })
                .collect();
            if let Err(e) = self.log.record_counts(&batch).await {
                self.keep(chunk.into_iter().chain(rows));
                return Err(e);
            }
        }
    }

    /// Puts rows a flush could not write back with the counts gathered since.
    fn keep(&self, rows: impl Iterator<Item = ((KeyId, Timestamp), Row)>) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for (key, row) in rows {
            if let Some(entry) = pending.get_mut(&key) {
                entry.counts.merge(&row.counts);
            } else if pending.len() < MAX_PENDING_ROWS {
                pending.insert(key, row);
            } else {
                self.dropped
                    .fetch_add(row.counts.counts().total(), Ordering::Relaxed);
            }
        }
    }

    /// Requests not counted because too many rows were waiting for the store.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// How many (key, hour) rows wait for the next flush.
    pub(crate) fn pending_rows(&self) -> usize {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use async_trait::async_trait;
    use keygate_core::usage::{UsageBucket, UsageRange};
    use keygate_core::{KeyRecord, KeySpec, Prefix, issue};

    use super::*;

    /// A usage log that fails while `down` is set and otherwise keeps every batch.
    #[derive(Debug, Default)]
    struct Log {
        down: AtomicBool,
        /// Calls answered before going down (0: no such plan).
        down_after: std::sync::atomic::AtomicUsize,
        batches: Mutex<Vec<Vec<UsageDelta>>>,
    }

    #[async_trait]
    impl UsageLog for Log {
        async fn record_counts(&self, batch: &[UsageDelta]) -> Result<(), StoreError> {
            let mut batches = self.batches.lock().unwrap();
            let after = self.down_after.load(Ordering::SeqCst);
            if self.down.load(Ordering::SeqCst) || (after > 0 && batches.len() >= after) {
                return Err(StoreError::Backend("down".into()));
            }
            batches.push(batch.to_vec());
            Ok(())
        }
        async fn usage_for_key(
            &self,
            _: &KeyId,
            _: &UsageRange,
        ) -> Result<Vec<UsageBucket>, StoreError> {
            unreachable!()
        }
        async fn usage_for_owner(
            &self,
            _: &str,
            _: &UsageRange,
        ) -> Result<Vec<UsageBucket>, StoreError> {
            unreachable!()
        }
        async fn purge_usage(&self, _: Timestamp) -> Result<u64, StoreError> {
            unreachable!()
        }
    }

    fn grant(owner: &str, at: Timestamp) -> KeyGrant {
        let spec = KeySpec {
            name: "k".into(),
            owner: Some(owner.into()),
            ..KeySpec::default()
        };
        let record: KeyRecord = issue(spec, &Prefix::default(), at).unwrap().0;
        KeyGrant::from(record)
    }

    #[tokio::test]
    async fn counts_wait_in_memory_survive_a_failed_flush_and_are_written_once() {
        let log = Arc::new(Log::default());
        let tally = UsageTally::new(log.clone());
        let t0 = Timestamp::parse_rfc3339("2027-01-31T12:10:00Z").unwrap();
        let t1 = Timestamp::parse_rfc3339("2027-01-31T13:05:00Z").unwrap();
        let a = grant("acme", t0);
        tally.note(&a, Outcome::Valid, t0);
        tally.note(&a, Outcome::Valid, t0);
        tally.note(&a, Outcome::Revoked, t0);
        tally.note(&a, Outcome::NotFound, t0); // names no key: never counted
        assert_eq!(tally.pending_rows(), 1);
        log.down.store(true, Ordering::SeqCst);
        assert!(tally.flush().await.is_err());
        // Kept, and added to by what comes meanwhile.
        tally.note(&a, Outcome::Valid, t0);
        tally.note(&a, Outcome::RateLimited, t1);
        assert_eq!(tally.pending_rows(), 2);
        log.down.store(false, Ordering::SeqCst);
        tally.flush().await.unwrap();
        tally.flush().await.unwrap(); // nothing left: no second batch
        let batches = log.batches.lock().unwrap();
        assert_eq!(batches.len(), 1);
        let mut rows = batches[0].clone();
        rows.sort_by_key(|d| d.hour);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].hour, hour_of(t0));
        assert_eq!(rows[0].owner.as_deref(), Some("acme"));
        assert_eq!(rows[0].counts.verified(), 3);
        assert_eq!(rows[0].counts.get(Outcome::Revoked), 1);
        assert_eq!(rows[0].counts.total(), 4);
        assert_eq!(rows[1].hour, hour_of(t1));
        assert_eq!(rows[1].counts.rate_limited(), 1);
        assert_eq!(tally.pending_rows(), 0);
        assert_eq!(tally.dropped(), 0);
    }

    /// Every counted outcome, in an order that starts with verified requests and mixes in
    /// each refusal (the usual life of a row: verified until something else happens).
    const SEQUENCE: [Outcome; 12] = [
        Outcome::Valid,
        Outcome::Valid,
        Outcome::Revoked,
        Outcome::Valid,
        Outcome::Expired,
        Outcome::Disabled,
        Outcome::InsufficientScope,
        Outcome::UsageExceeded,
        Outcome::IpNotAllowed,
        Outcome::RateLimited,
        Outcome::RateLimited,
        Outcome::Valid,
    ];

    #[test]
    fn a_rows_compact_counts_stand_for_exactly_the_counts_added() {
        let mut expected = UsageCounts::default();
        let mut row: Option<Counts> = None;
        for (i, outcome) in SEQUENCE.into_iter().enumerate() {
            assert!(expected.add(outcome, 1), "{outcome:?} is counted");
            match &mut row {
                None => {
                    let mut first = UsageCounts::default();
                    first.add(outcome, 1);
                    row = Some(Counts::of(first));
                }
                Some(row) => row.add(outcome),
            }
            let row = row.as_ref().unwrap();
            assert_eq!(row.counts(), expected, "after {} requests", i + 1);
            // Verified requests alone are one number; the first other outcome boxes them.
            let only_verified = SEQUENCE[..=i].iter().all(|o| *o == Outcome::Valid);
            assert_eq!(matches!(row, Counts::Verified(_)), only_verified);
        }
        for start in [Counts::Verified(u64::MAX), Counts::of(expected)] {
            let mut row = start.clone();
            row.merge(&Counts::Verified(u64::MAX));
            let mut sum = start.counts();
            sum.merge(&Counts::Verified(u64::MAX).counts());
            assert_eq!(
                row.counts(),
                sum,
                "merging adds (saturating) like UsageCounts"
            );
            assert_eq!(row, Counts::of(sum));
        }
        let mut two = Counts::Verified(2);
        two.merge(&Counts::Verified(3));
        assert_eq!(two, Counts::Verified(5), "verified rows stay one number");
        for uncounted in [Outcome::Missing, Outcome::Malformed, Outcome::NotFound] {
            two.add(uncounted);
            assert_eq!(two, Counts::Verified(5), "{uncounted:?} is not counted");
        }
    }

    #[test]
    fn a_waiting_row_stays_small() {
        // The tally holds one of these per (key, hour) used since the last flush: 100,000 of
        // them when 100,000 keys are in use. (The owner's text and a refusal's counts are
        // apart.)
        assert!(
            std::mem::size_of::<((KeyId, Timestamp), Row)>() <= 56,
            "{}",
            std::mem::size_of::<((KeyId, Timestamp), Row)>()
        );
    }

    #[test]
    fn at_most_max_pending_rows_wait_and_further_rows_are_counted_as_dropped() {
        let tally = UsageTally::new(Arc::new(Log::default()));
        let t0 = Timestamp::parse_rfc3339("2027-01-31T12:10:00Z").unwrap();
        let hour = |i: usize| {
            Timestamp::from_unix_ms(t0.unix_ms() + 3_600_000 * i64::try_from(i).unwrap()).unwrap()
        };
        let a = grant("acme", t0);
        for i in 0..MAX_PENDING_ROWS {
            tally.note(&a, Outcome::Valid, hour(i)); // one row per hour
        }
        assert_eq!(
            (tally.pending_rows(), tally.dropped()),
            (MAX_PENDING_ROWS, 0)
        );
        tally.note(&a, Outcome::Valid, hour(MAX_PENDING_ROWS));
        tally.note(&a, Outcome::Revoked, hour(MAX_PENDING_ROWS + 1));
        assert_eq!(
            (tally.pending_rows(), tally.dropped()),
            (MAX_PENDING_ROWS, 2)
        );
        tally.note(&a, Outcome::Revoked, hour(0)); // a waiting row still counts
        assert_eq!(
            (tally.pending_rows(), tally.dropped()),
            (MAX_PENDING_ROWS, 2)
        );

        // Rows a failed flush hands back: added to the row waiting for the same key and hour,
        // else (no room) dropped with every request they counted.
        let mut three = UsageCounts::default();
        three.add(Outcome::Valid, 2);
        three.add(Outcome::RateLimited, 1);
        let back = |id: &KeyId, at| {
            let row = Row {
                owner: Some("acme".into()),
                counts: Counts::of(three),
            };
            ((id.clone(), hour_of(at)), row)
        };
        let b = grant("acme", t0);
        tally.keep([back(&a.id, hour(0)), back(&b.id, t0)].into_iter());
        assert_eq!(
            (tally.pending_rows(), tally.dropped()),
            (MAX_PENDING_ROWS, 2 + 3)
        );
        let pending = tally.pending.lock().unwrap();
        let row = &pending[&(a.id.clone(), hour_of(hour(0)))];
        let counts = row.counts.counts();
        assert_eq!(
            (
                counts.verified(),
                counts.get(Outcome::Revoked),
                counts.rate_limited()
            ),
            (3, 1, 1)
        );
    }

    #[tokio::test]
    async fn a_flush_that_fails_part_way_keeps_exactly_the_rows_it_did_not_write() {
        let log = Arc::new(Log::default());
        let tally = UsageTally::new(log.clone());
        let t0 = Timestamp::parse_rfc3339("2027-01-31T12:10:00Z").unwrap();
        // Three calls' worth: the second fails, so both the rows of the failed call and the
        // rows after it are kept.
        let keys = 2 * FLUSH_ROWS + FLUSH_ROWS / 4;
        for _ in 0..keys {
            tally.note(&grant("acme", t0), Outcome::Valid, t0);
        }
        log.down_after.store(1, Ordering::SeqCst); // the second call fails
        assert!(tally.flush().await.is_err());
        assert_eq!(
            log.batches.lock().unwrap()[0].len(),
            FLUSH_ROWS,
            "one call's rows"
        );
        assert_eq!(tally.pending_rows(), keys - FLUSH_ROWS, "the rest are kept");
        log.down_after.store(0, Ordering::SeqCst);
        tally.flush().await.unwrap();
        let batches = log.batches.lock().unwrap();
        let written: Vec<&UsageDelta> = batches.iter().flatten().collect();
        assert_eq!(written.len(), keys, "every row once");
        let ids: std::collections::HashSet<&KeyId> = written.iter().map(|d| &d.key).collect();
        assert_eq!(ids.len(), keys, "no row twice");
        assert!(written.iter().all(|d| d.counts.verified() == 1));
    }
}
