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

/// The most (key, hour) rows held between flushes (about 100 bytes each).
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

type Pending = FastMap<(KeyId, Timestamp), (Option<Box<str>>, UsageCounts)>;

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
        if let Some((_, counts)) = pending.get_mut(&key) {
            counts.add(outcome, 1);
            return;
        }
        if pending.len() >= MAX_PENDING_ROWS {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut counts = UsageCounts::default();
        if counts.add(outcome, 1) {
            pending.insert(key, (grant.owner.clone(), counts));
        }
    }

    /// Writes the counts gathered since the previous flush, [`FLUSH_ROWS`] rows per store
    /// call; on failure the rows not written are kept (added to what came since) for the next
    /// try.
    pub(crate) async fn flush(&self) -> Result<(), StoreError> {
        let taken: Vec<_> = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::take(&mut *pending).into_iter().collect()
        };
        let mut written = 0;
        for chunk in taken.chunks(FLUSH_ROWS) {
            let batch: Vec<UsageDelta> = chunk
                .iter()
                .map(|((key, hour), (owner, counts))| UsageDelta {
                    key: key.clone(),
                    owner: owner.as_deref().map(str::to_owned),
                    hour: *hour,
                    counts: *counts,
                })
                .collect();
            if let Err(e) = self.log.record_counts(&batch).await {
                self.keep(taken.into_iter().skip(written));
                return Err(e);
            }
            written += chunk.len();
        }
        Ok(())
    }

    /// Puts rows a flush could not write back with the counts gathered since.
    fn keep(
        &self,
        rows: impl Iterator<Item = ((KeyId, Timestamp), (Option<Box<str>>, UsageCounts))>,
    ) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for (key, (owner, counts)) in rows {
            if let Some(entry) = pending.get_mut(&key) {
                entry.1.merge(&counts);
            } else if pending.len() < MAX_PENDING_ROWS {
                pending.insert(key, (owner, counts));
            } else {
                self.dropped.fetch_add(counts.total(), Ordering::Relaxed);
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

    #[tokio::test]
    async fn a_flush_that_fails_part_way_keeps_exactly_the_rows_it_did_not_write() {
        let log = Arc::new(Log::default());
        let tally = UsageTally::new(log.clone());
        let t0 = Timestamp::parse_rfc3339("2027-01-31T12:10:00Z").unwrap();
        let keys = FLUSH_ROWS + FLUSH_ROWS / 4;
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
