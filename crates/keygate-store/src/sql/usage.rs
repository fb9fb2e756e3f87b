//! The [`UsageLog`] role: hourly usage rows, added to by one upsert per batch.

use std::collections::HashMap;

use async_trait::async_trait;
use keygate_core::usage::{COUNTED, UsageBucket, UsageCounts, UsageRange, roll_up};
use keygate_core::{KeyId, Timestamp};

use sqlx::{Database, Pool};

use super::{Backend, Row, SqlStore, backend, rows, usage};
use crate::roles::UsageLog;
use crate::{StoreError, UsageDelta};

/// The counter columns, in the order of [`COUNTED`].
const COUNTERS: [&str; COUNTED.len()] = [
    "verified",
    "revoked",
    "expired",
    "disabled",
    "insufficient_scope",
    "usage_exceeded",
    "ip_not_allowed",
    "rate_limited",
];

/// The most rows one statement adds (a batch larger than this is written in several
/// statements, in one transaction).
const ROWS_PER_STATEMENT: usize = 20_000;

/// One hour's sums as the queries return them.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct UsageRow {
    hour: i64,
    verified: i64,
    revoked: i64,
    expired: i64,
    disabled: i64,
    insufficient_scope: i64,
    usage_exceeded: i64,
    ip_not_allowed: i64,
    rate_limited: i64,
}

impl UsageRow {
    fn into_hour(self) -> Result<(Timestamp, UsageCounts), StoreError> {
        let hour = Timestamp::from_unix_ms(self.hour)
            .ok_or_else(|| StoreError::Corrupt("usage hour out of range".into()))?;
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        let counts = UsageCounts::from_array([
            n(self.verified),
            n(self.revoked),
            n(self.expired),
            n(self.disabled),
            n(self.insufficient_scope),
            n(self.usage_exceeded),
            n(self.ip_not_allowed),
            n(self.rate_limited),
        ]);
        Ok((hour, counts))
    }
}

/// The upsert adding a batch (rows from [`Backend::USAGE_ROWS`]) to the stored counters.
fn upsert<B: Backend>() -> String {
    let sums: Vec<String> = COUNTERS
        .iter()
        .map(|c| format!("{c} = key_usage.{c} + excluded.{c}"))
        .collect();
    format!(
        "INSERT INTO key_usage (key_id, hour, owner, {}) {} \
         ON CONFLICT (key_id, hour) DO UPDATE SET owner = excluded.owner, {}",
        COUNTERS.join(", "),
        B::USAGE_ROWS,
        sums.join(", "),
    )
}

/// The hourly sums of the rows matching `filter` (`$1`) in `[$2, $3)`.
fn select_sums(filter: &str) -> String {
    let sums: Vec<String> = COUNTERS
        .iter()
        .map(|c| format!("CAST(SUM({c}) AS BIGINT) AS {c}"))
        .collect();
    format!(
        "SELECT hour, {} FROM key_usage WHERE {filter} AND hour >= $2 AND hour < $3 \
         GROUP BY hour",
        sums.join(", ")
    )
}

/// A batch as the JSON array [`Backend::USAGE_ROWS`] reads, rows of the same (key, hour)
/// added together (an upsert may not touch a row twice), in (key, hour) order, split into
/// statements.
fn batch_json(batch: &[UsageDelta]) -> Vec<String> {
    let mut merged: HashMap<(&str, i64), (Option<&str>, UsageCounts)> = HashMap::new();
    for delta in batch {
        let entry = merged
            .entry((delta.key.as_str(), delta.hour.unix_ms()))
            .or_default();
        entry.0 = delta.owner.as_deref();
        entry.1.merge(&delta.counts);
    }
    // In one order, (key, hour), for every writer: PostgreSQL locks the rows an upsert touches
    // as it goes, so two batches taking them in different orders could deadlock.
    let mut merged: Vec<_> = merged.into_iter().collect();
    merged.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let rows: Vec<JsonRow<'_>> = merged
        .into_iter()
        .filter(|(_, (_, counts))| !counts.is_empty())
        .map(|((key, hour), (owner, counts))| JsonRow(key, hour, owner, counts))
        .collect();
    rows.chunks(ROWS_PER_STATEMENT)
        .map(|chunk| serde_json::to_string(chunk).expect("rows are JSON"))
        .collect()
}

/// One row of [`batch_json`]: `[key, hour, owner, count, ...]`, written straight to the JSON
/// text (no tree of values per row).
struct JsonRow<'a>(&'a str, i64, Option<&'a str>, UsageCounts);

impl serde::Serialize for JsonRow<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut row = serializer.serialize_seq(Some(3 + COUNTED.len()))?;
        row.serialize_element(self.0)?;
        row.serialize_element(&self.1)?;
        row.serialize_element(&self.2)?;
        // Counts are stored as BIGINT: one beyond that (never reached) is held at its top.
        for n in self.3.as_array() {
            row.serialize_element(&n.min(i64::MAX as u64))?;
        }
        row.end()
    }
}

sql_impl! {
    #[async_trait]
    impl UsageLog {
        async fn record_counts(&self, batch: &[UsageDelta]) -> Result<(), StoreError> {
            let statements = batch_json(batch);
            if statements.is_empty() {
                return Ok(());
            }
            let sql = upsert::<B>();
            in_write!(self, |tx| {
                for rows in statements {
                    self.exec(tx, sqlx::query(sqlx::AssertSqlSafe(sql.clone())).bind(rows))
                        .await?;
                }
                Ok(())
            })
        }

        async fn usage_for_key(
            &self,
            id: &KeyId,
            range: &UsageRange,
        ) -> Result<Vec<UsageBucket>, StoreError> {
            self.usage_where("key_id = $1", id.as_str(), range).await
        }

        async fn usage_for_owner(
            &self,
            owner: &str,
            range: &UsageRange,
        ) -> Result<Vec<UsageBucket>, StoreError> {
            self.usage_where("owner = $1", owner, range).await
        }

        async fn purge_usage(&self, before: Timestamp) -> Result<u64, StoreError> {
            // Counted first (in the same write transaction) rather than returned row by row:
            // a day's purge may remove a row per key per hour.
            in_write!(self, |tx| {
                let (n,): (i64,) =
                    sqlx::query_as("SELECT COUNT(*) FROM key_usage WHERE hour < $1")
                        .bind(before.unix_ms())
                        .fetch_one(tx.conn())
                        .await
                        .map_err(backend)?;
                self.exec(
                    tx,
                    sqlx::query("DELETE FROM key_usage WHERE hour < $1").bind(before.unix_ms()),
                )
                .await?;
                Ok(u64::try_from(n).unwrap_or(0))
            })
        }
    }
}

sql_impl! {
    impl {
        /// The buckets of `range` summed over the rows where `filter` holds for `value`.
        async fn usage_where(
            &self,
            filter: &str,
            value: &str,
            range: &UsageRange,
        ) -> Result<Vec<UsageBucket>, StoreError> {
            self.backend.check_identity()?;
            let rows: Vec<UsageRow> = sqlx::query_as(sqlx::AssertSqlSafe(select_sums(filter)))
                .bind(value.to_owned())
                .bind(range.since().unix_ms())
                .bind(range.until().unix_ms())
                .fetch_all(self.pool())
                .await
                .map_err(backend)?;
            let hours = rows
                .into_iter()
                .map(UsageRow::into_hour)
                .collect::<Result<Vec<_>, _>>()?;
            Ok(roll_up(range, &hours))
        }
    }
}
