//! Bulk loading, for benchmarks and scale runs only (feature `bench`): issues `n` real keys
//! (generated and hashed as keygate-core always does) and inserts their records in batches,
//! far faster than one `Store::create` each.

use keygate_core::{KeyRecord, KeySpec, PlainKey, Prefix, Timestamp, issue};
use sqlx::{Database, Encode, QueryBuilder, Type};

use crate::sql::to_json;
use crate::{PostgresStore, SqliteStore, StoreError};

/// Rows per INSERT statement (17 parameters each, under SQLite's and PostgreSQL's limits).
const BATCH: usize = 1000;

/// Issues `n` keys into `store`; returns the plaintexts of the first `keep` of them.
pub async fn fill_sqlite(
    store: &SqliteStore,
    n: usize,
    keep: usize,
) -> Result<Vec<PlainKey>, StoreError> {
    let mut kept = Vec::with_capacity(keep.min(n));
    use sqlx::Connection;
    let mut conn = store.pool().acquire().await.map_err(backend)?;
    // A bulk load for benchmarks: durability of each commit does not matter here.
    sqlx::query("PRAGMA synchronous = OFF")
        .execute(&mut *conn)
        .await
        .map_err(backend)?;
    // A page cache big enough that dirty index pages are not spilled mid-transaction.
    sqlx::query("PRAGMA cache_size = -262144")
        .execute(&mut *conn)
        .await
        .map_err(backend)?;
    let mut done = 0;
    while done < n {
        // Commit every 50,000 rows: one huge transaction makes an equally huge WAL.
        let mut tx = conn.begin().await.map_err(backend)?;
        for _ in 0..50 {
            if done >= n {
                break;
            }
            let batch = records(done, (n - done).min(BATCH), keep, &mut kept);
            insert::<sqlx::Sqlite>(&batch)
                .build()
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            done += batch.len();
        }
        tx.commit().await.map_err(backend)?;
    }
    sqlx::query("PRAGMA synchronous = NORMAL")
        .execute(&mut *conn)
        .await
        .map_err(backend)?;
    Ok(kept)
}

/// Issues `n` keys into `store`; returns the plaintexts of the first `keep` of them.
pub async fn fill_postgres(
    store: &PostgresStore,
    n: usize,
    keep: usize,
) -> Result<Vec<PlainKey>, StoreError> {
    let mut kept = Vec::with_capacity(keep.min(n));
    let mut tx = store.pool().begin().await.map_err(backend)?;
    let mut done = 0;
    while done < n {
        let batch = records(done, (n - done).min(BATCH), keep, &mut kept);
        insert::<sqlx::Postgres>(&batch)
            .build()
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        done += batch.len();
    }
    tx.commit().await.map_err(backend)?;
    Ok(kept)
}

fn records(first: usize, count: usize, keep: usize, kept: &mut Vec<PlainKey>) -> Vec<KeyRecord> {
    let now = Timestamp::from_unix_ms(1_800_000_000_000).expect("in range");
    let prefix = Prefix::default();
    (first..first + count)
        .map(|i| {
            let spec = KeySpec {
                name: format!("bulk key {i}"),
                owner: Some(format!("acct_{}", i % 1000)),
                scopes: vec!["orders:read".into()],
                ..KeySpec::default()
            };
            let (record, key) = issue(spec, &prefix, now).expect("valid spec");
            if i < keep {
                kept.push(key);
            }
            record
        })
        .collect()
}

fn insert<DB>(batch: &[KeyRecord]) -> QueryBuilder<DB>
where
    DB: Database,
    DB::Arguments: Default,
    String: for<'q> Encode<'q, DB> + Type<DB>,
    Option<String>: for<'q> Encode<'q, DB> + Type<DB>,
    Vec<u8>: for<'q> Encode<'q, DB> + Type<DB>,
    i64: for<'q> Encode<'q, DB> + Type<DB>,
    Option<i64>: for<'q> Encode<'q, DB> + Type<DB>,
    bool: for<'q> Encode<'q, DB> + Type<DB>,
{
    let mut sql = QueryBuilder::<DB>::new(
        "INSERT INTO keys (id, name, start, hash, owner, scopes, metadata, created_at, \
         expires_at, revoked_at, revoked_reason, enabled, last_used_at, rotated_from, \
         rotated_to, rotated_at, max_age_ms) ",
    );
    sql.push_values(batch, |mut row, r| {
        row.push_bind(r.id.as_str().to_owned())
            .push_bind(r.name.clone())
            .push_bind(r.start.clone())
            .push_bind(r.hash.as_bytes().to_vec())
            .push_bind(r.owner.clone())
            .push_bind(to_json(&r.scopes))
            .push_bind(to_json(&r.metadata))
            .push_bind(r.created_at.unix_ms())
            .push_bind(r.expires_at.map(Timestamp::unix_ms))
            .push_bind(r.revoked_at.map(Timestamp::unix_ms))
            .push_bind(r.revoked_reason.clone())
            .push_bind(r.enabled)
            .push_bind(r.last_used_at.map(Timestamp::unix_ms))
            .push_bind(r.rotated_from.as_ref().map(|id| id.as_str().to_owned()))
            .push_bind(r.rotated_to.as_ref().map(|id| id.as_str().to_owned()))
            .push_bind(r.rotated_at.map(Timestamp::unix_ms))
            .push_bind(r.max_age.map(keygate_core::Lifetime::as_ms));
    });
    sql
}

fn backend(e: sqlx::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}
