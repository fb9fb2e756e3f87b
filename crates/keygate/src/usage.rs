//! Usage you can see: requests counted per (key, hour) by outcome in memory, written in one
//! batch per flush (no write per request), and read back per key or per owner.
//!
//! Only requests that name a real key are counted (`MISSING`, `MALFORMED` and `NOT_FOUND` have
//! no key). A flush that fails keeps its counts for the next one. While the store stays away,
//! at most [`MAX_PENDING_ROWS`] (key, hour) rows are held; counts for further rows are dropped
//! and counted in [`UsageTally::dropped`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use keygate_core::usage::{UsageCounts, hour_of};
use keygate_core::{KeyGrant, KeyId, Outcome, Timestamp};
use keygate_store::{StoreError, UsageDelta, UsageLog};

pub use keygate_core::usage::{Bucket, UsageBucket, UsageRange};

/// The most (key, hour) rows held between flushes (about 100 bytes each).
pub const MAX_PENDING_ROWS: usize = 200_000;

/// Whose usage to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageOf<'a> {
    /// One key.
    Key(&'a KeyId),
    /// Every key of an owner, added together.
    Owner(&'a str),
}

type Pending = HashMap<(KeyId, Timestamp), (Option<Box<str>>, UsageCounts)>;

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
            pending: Mutex::new(HashMap::new()),
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

    /// Writes the counts gathered since the previous flush, in one batch; on failure they are
    /// kept (added to what came since) for the next try.
    pub(crate) async fn flush(&self) -> Result<(), StoreError> {
        let taken = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::take(&mut *pending)
        };
        if taken.is_empty() {
            return Ok(());
        }
        let batch: Vec<UsageDelta> = taken
            .iter()
            .map(|((key, hour), (owner, counts))| UsageDelta {
                key: key.clone(),
                owner: owner.as_deref().map(str::to_owned),
                hour: *hour,
                counts: *counts,
            })
            .collect();
        if let Err(e) = self.log.record_counts(&batch).await {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            for (key, (owner, counts)) in taken {
                if let Some(entry) = pending.get_mut(&key) {
                    entry.1.merge(&counts);
                } else if pending.len() < MAX_PENDING_ROWS {
                    pending.insert(key, (owner, counts));
                } else {
                    self.dropped.fetch_add(counts.total(), Ordering::Relaxed);
                }
            }
            return Err(e);
        }
        Ok(())
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
