//! The SQLite backend: one file, WAL mode, migrations from `migrations/sqlite` applied on open.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use keygate_core::{KeyHash, KeyId, KeyPatch, KeyRecord, Status, Timestamp};
use serde_json::{Map, Value};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};

use crate::{ListQuery, Page, StatusCounts, Store, StoreError};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// `SELECT <every column> FROM keys WHERE <condition>`, as one static string.
macro_rules! select_where {
    ($condition:literal) => {
        concat!(
            "SELECT id, name, start, hash, owner, scopes, metadata, created_at, expires_at, ",
            "revoked_at, revoked_reason, enabled, last_used_at FROM keys WHERE ",
            $condition
        )
    };
}

/// A [`Store`] in a SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `url` (`sqlite://path`, `sqlite:path`, a plain
    /// path, or `sqlite::memory:`), turns on WAL and applies pending migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let memory = url.contains(":memory:");
        let url = if url.starts_with("sqlite:") {
            url.to_owned()
        } else {
            format!("sqlite://{url}")
        };
        let options = SqliteConnectOptions::from_str(&url)
            .map_err(|e| StoreError::Config(format!("invalid SQLite URL: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        // Each in-memory connection would be a separate database: keep exactly one.
        let pool_options = if memory {
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
        } else {
            SqlitePoolOptions::new().max_connections(8)
        };
        let pool = pool_options
            .connect_with(options)
            .await
            .map_err(|e| StoreError::Backend(format!("cannot open the SQLite database: {e}")))?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::Backend(format!("cannot migrate the SQLite database: {e}")))?;
        Ok(Self { pool })
    }

    /// The underlying connection pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    async fn modify(
        &self,
        id: &KeyId,
        change: impl FnOnce(&mut KeyRecord) -> Result<(), StoreError> + Send,
    ) -> Result<KeyRecord, StoreError> {
        // IMMEDIATE takes the write lock up front, so read-modify-write cannot interleave.
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(backend)?;
        let row = sqlx::query(select_where!("id = ?"))
            .bind(id.as_str().to_owned())
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?
            .ok_or(StoreError::NotFound)?;
        let mut record = from_row(&row)?;
        change(&mut record)?;
        sqlx::query(
            "UPDATE keys SET name = ?, owner = ?, scopes = ?, metadata = ?, expires_at = ?, \
             revoked_at = ?, revoked_reason = ?, enabled = ? WHERE id = ?",
        )
        .bind(record.name.clone())
        .bind(record.owner.clone())
        .bind(to_json(&record.scopes))
        .bind(to_json(&record.metadata))
        .bind(record.expires_at.map(Timestamp::unix_ms))
        .bind(record.revoked_at.map(Timestamp::unix_ms))
        .bind(record.revoked_reason.clone())
        .bind(record.enabled)
        .bind(record.id.as_str().to_owned())
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(record)
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn create(&self, record: &KeyRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO keys (id, name, start, hash, owner, scopes, metadata, created_at, \
             expires_at, revoked_at, revoked_reason, enabled, last_used_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(record.id.as_str().to_owned())
        .bind(record.name.clone())
        .bind(record.start.clone())
        .bind(record.hash.as_bytes().to_vec())
        .bind(record.owner.clone())
        .bind(to_json(&record.scopes))
        .bind(to_json(&record.metadata))
        .bind(record.created_at.unix_ms())
        .bind(record.expires_at.map(Timestamp::unix_ms))
        .bind(record.revoked_at.map(Timestamp::unix_ms))
        .bind(record.revoked_reason.clone())
        .bind(record.enabled)
        .bind(record.last_used_at.map(Timestamp::unix_ms))
        .execute(&self.pool)
        .await
        .map_err(|e| match e.as_database_error() {
            Some(db) if db.is_unique_violation() => StoreError::Duplicate,
            _ => backend(e),
        })?;
        Ok(())
    }

    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        sqlx::query(select_where!("id = ?"))
            .bind(id.as_str().to_owned())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?
            .map(|row| from_row(&row))
            .transpose()
    }

    async fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, StoreError> {
        sqlx::query(select_where!("hash = ?"))
            .bind(hash.as_bytes().to_vec())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?
            .map(|row| from_row(&row))
            .transpose()
    }

    async fn list(&self, query: &ListQuery) -> Result<Page, StoreError> {
        let cursor = query.cursor_id()?;
        let size = query.page_size();
        let now = query.now.unix_ms();
        let mut sql = QueryBuilder::<Sqlite>::new(select_where!("1 = 1"));
        if let Some(owner) = &query.owner {
            sql.push(" AND owner = ").push_bind(owner.clone());
        }
        if let Some(text) = &query.name_contains {
            sql.push(" AND name LIKE ")
                .push_bind(format!("%{}%", escape_like(text)))
                .push(" ESCAPE '\\'");
        }
        if let Some(cursor) = cursor {
            sql.push(" AND id < ").push_bind(cursor.as_str().to_owned());
        }
        // The same precedence as `KeyRecord::status`: revoked, expired, disabled, active.
        match query.status {
            None => {}
            Some(Status::Revoked) => {
                sql.push(" AND revoked_at IS NOT NULL");
            }
            Some(Status::Expired) => {
                sql.push(" AND revoked_at IS NULL AND expires_at IS NOT NULL AND expires_at <= ")
                    .push_bind(now);
            }
            Some(Status::Disabled) => {
                sql.push(" AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ")
                    .push_bind(now)
                    .push(") AND enabled = 0");
            }
            Some(Status::Active) => {
                sql.push(" AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ")
                    .push_bind(now)
                    .push(") AND enabled = 1");
            }
        }
        sql.push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::from(size) + 1);
        let rows = sql.build().fetch_all(&self.pool).await.map_err(backend)?;
        let mut items = rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()?;
        let next_cursor = if items.len() > size as usize {
            items.truncate(size as usize);
            items.last().map(|r| r.id.as_str().to_owned())
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    async fn update(&self, id: &KeyId, patch: KeyPatch) -> Result<KeyRecord, StoreError> {
        self.modify(id, |record| Ok(patch.apply(record)?)).await
    }

    async fn revoke(
        &self,
        id: &KeyId,
        at: Timestamp,
        reason: Option<String>,
    ) -> Result<KeyRecord, StoreError> {
        self.modify(id, |record| Ok(record.revoke(at, reason)?))
            .await
    }

    async fn record_usage(&self, usage: &[(KeyId, Timestamp)]) -> Result<(), StoreError> {
        if usage.is_empty() {
            return Ok(());
        }
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(backend)?;
        for (id, at) in usage {
            sqlx::query(
                "UPDATE keys SET last_used_at = ? WHERE id = ? \
                 AND (last_used_at IS NULL OR last_used_at < ?)",
            )
            .bind(at.unix_ms())
            .bind(id.as_str().to_owned())
            .bind(at.unix_ms())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn count_by_status(&self, now: Timestamp) -> Result<StatusCounts, StoreError> {
        // The same precedence as `KeyRecord::status`: revoked, expired, disabled, active.
        let row = sqlx::query(
            "SELECT \
               COALESCE(SUM(revoked_at IS NOT NULL), 0) AS revoked, \
               COALESCE(SUM(revoked_at IS NULL AND expires_at IS NOT NULL AND expires_at <= ?1), 0) AS expired, \
               COALESCE(SUM(revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?1) AND enabled = 0), 0) AS disabled, \
               COALESCE(SUM(revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?1) AND enabled = 1), 0) AS active \
             FROM keys",
        )
        .bind(now.unix_ms())
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?;
        let count = |name: &str| -> Result<u64, StoreError> {
            let n: i64 = row
                .try_get(name)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            Ok(u64::try_from(n).unwrap_or(0))
        };
        Ok(StatusCounts {
            active: count("active")?,
            disabled: count("disabled")?,
            expired: count("expired")?,
            revoked: count("revoked")?,
        })
    }

    async fn close(&self) {
        // Closing the last connection checkpoints the WAL into the database file.
        self.pool.close().await;
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(drop)
            .map_err(backend)
    }
}

fn backend(e: sqlx::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn to_json<T: serde::Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).expect("scopes and metadata always serialize")
}

fn escape_like(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '\\' | '%' | '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn from_row(row: &SqliteRow) -> Result<KeyRecord, StoreError> {
    let get = |e: sqlx::Error| StoreError::Corrupt(e.to_string());
    let time = |ms: i64| {
        Timestamp::from_unix_ms(ms).ok_or_else(|| StoreError::Corrupt("time out of range".into()))
    };
    let id: String = row.try_get("id").map_err(get)?;
    let hash: Vec<u8> = row.try_get("hash").map_err(get)?;
    let scopes: String = row.try_get("scopes").map_err(get)?;
    let metadata: String = row.try_get("metadata").map_err(get)?;
    Ok(KeyRecord {
        id: KeyId::parse(&id).ok_or_else(|| StoreError::Corrupt("bad key id".into()))?,
        name: row.try_get("name").map_err(get)?,
        start: row.try_get("start").map_err(get)?,
        hash: KeyHash::from_slice(&hash)
            .ok_or_else(|| StoreError::Corrupt("hash is not 32 bytes".into()))?,
        owner: row.try_get("owner").map_err(get)?,
        scopes: serde_json::from_str::<Vec<String>>(&scopes)
            .map_err(|e| StoreError::Corrupt(format!("scopes: {e}")))?,
        metadata: serde_json::from_str::<Map<String, Value>>(&metadata)
            .map_err(|e| StoreError::Corrupt(format!("metadata: {e}")))?,
        created_at: time(row.try_get("created_at").map_err(get)?)?,
        expires_at: row
            .try_get::<Option<i64>, _>("expires_at")
            .map_err(get)?
            .map(time)
            .transpose()?,
        revoked_at: row
            .try_get::<Option<i64>, _>("revoked_at")
            .map_err(get)?
            .map(time)
            .transpose()?,
        revoked_reason: row.try_get("revoked_reason").map_err(get)?,
        enabled: row.try_get("enabled").map_err(get)?,
        last_used_at: row
            .try_get::<Option<i64>, _>("last_used_at")
            .map_err(get)?
            .map(time)
            .transpose()?,
    })
}
