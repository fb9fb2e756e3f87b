//! The SQLite backend: one file, WAL mode, migrations from `migrations/sqlite` applied on open.
//! Changes are logged in `key_changes` so that other processes on the same file can follow.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use keygate_core::{
    AdminSession, AdminUser, Audit, AuditEvent, EventKind, KeyHash, KeyId, KeyPatch, KeyRecord,
    Lifetime, Timestamp,
};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};
use tokio::sync::mpsc;

use keygate_core::webhook::{Delivery, DeliveryStatus, Endpoint};

use crate::Attempt;
use crate::sessions::SessionTables;
use crate::sql::{self, Row, count_by_status_sql, select_where, to_json};
use crate::{
    AuditPage, AuditQuery, Change, ListQuery, Page, RotationPlan, StatusCounts, Store, StoreError,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// How often [`Store::watch`] looks for changes made by other processes.
const POLL_EVERY: Duration = Duration::from_millis(200);
/// How long entries stay in the change log (a watcher further behind than this resyncs).
const CHANGE_LOG_KEEP_MS: i64 = 10 * 60 * 1000;

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
            .foreign_keys(true)
            // 1 MiB of page cache per connection (SQLite's default is 2 MiB); the OS page
            // cache holds the rest of the file.
            .pragma("cache_size", "-1024");
        // Each in-memory connection would be a separate database: keep exactly one.
        let pool_options = if memory {
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
        } else {
            // No ping before each use: a broken connection fails its query, which is reported.
            SqlitePoolOptions::new()
                .max_connections(4)
                .test_before_acquire(false)
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
        event: (EventKind, Timestamp, &Audit),
        sealed: Option<&str>,
        change: impl FnOnce(&mut KeyRecord) -> Result<Option<KeyRecord>, StoreError> + Send,
    ) -> Result<(KeyRecord, Option<KeyRecord>), StoreError> {
        // IMMEDIATE takes the write lock up front, so read-modify-write cannot interleave.
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(backend)?;
        let row: Row = sqlx::query_as(select_where!("id = ?"))
            .bind(id.as_str().to_owned())
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?
            .ok_or(StoreError::NotFound)?;
        let before = KeyRecord::try_from(row)?;
        let mut record = before.clone();
        let successor = change(&mut record)?;
        sqlx::query(
            "UPDATE keys SET name = ?, owner = ?, scopes = ?, metadata = ?, expires_at = ?, \
             revoked_at = ?, revoked_reason = ?, enabled = ?, rotated_to = ?, rotated_at = ?, \
             max_age_ms = ? WHERE id = ?",
        )
        .bind(record.name.clone())
        .bind(record.owner.clone())
        .bind(to_json(&record.scopes))
        .bind(to_json(&record.metadata))
        .bind(record.expires_at.map(Timestamp::unix_ms))
        .bind(record.revoked_at.map(Timestamp::unix_ms))
        .bind(record.revoked_reason.clone())
        .bind(record.enabled)
        .bind(record.rotated_to.as_ref().map(|id| id.as_str().to_owned()))
        .bind(record.rotated_at.map(Timestamp::unix_ms))
        .bind(record.max_age.map(Lifetime::as_ms))
        .bind(record.id.as_str().to_owned())
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        let (kind, at, audit) = event;
        let event = AuditEvent::changed(kind, &before, &record, audit, at);
        let event_seq = record_event(&mut tx, &event).await?;
        log_change(&mut tx, &record.hash).await?;
        if let Some(successor) = &successor {
            insert(&mut tx, successor, audit).await?;
            if let Some(sealed) = sealed {
                // The successor's plaintext, sealed, for the endpoints trusted with secrets only.
                sqlx::query(
                    "INSERT INTO webhook_deliveries (endpoint_id, event_seq, payload, next_attempt_at) \
                     SELECT id, ?, ?, ? FROM webhook_endpoints \
                     WHERE enabled = TRUE AND receives_secrets = TRUE",
                )
                .bind(event_seq)
                .bind(sealed.to_owned())
                .bind(at.unix_ms())
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            }
        }
        tx.commit().await.map_err(backend)?;
        Ok((record, successor))
    }
}

/// Inserts a new record and logs the change, inside the caller's transaction.
async fn insert(
    tx: &mut Transaction<'_, Sqlite>,
    record: &KeyRecord,
    audit: &Audit,
) -> Result<(), StoreError> {
    let event = AuditEvent::created(record, audit, record.created_at);
    record_event(tx, &event).await?;
    sqlx::query(
        "INSERT INTO keys (id, name, start, hash, owner, scopes, metadata, created_at, \
             expires_at, revoked_at, revoked_reason, enabled, last_used_at, rotated_from, \
             rotated_to, rotated_at, max_age_ms) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
    .bind(
        record
            .rotated_from
            .as_ref()
            .map(|id| id.as_str().to_owned()),
    )
    .bind(record.rotated_to.as_ref().map(|id| id.as_str().to_owned()))
    .bind(record.rotated_at.map(Timestamp::unix_ms))
    .bind(record.max_age.map(Lifetime::as_ms))
    .execute(&mut **tx)
    .await
    .map_err(|e| match e.as_database_error() {
        Some(db) if db.is_unique_violation() => StoreError::Duplicate,
        _ => backend(e),
    })?;
    // A new key must drop "no such key" answers other processes may have cached.
    log_change(tx, &record.hash).await
}

/// Adds the change to `key_changes`, inside the caller's transaction.
async fn log_change(tx: &mut Transaction<'_, Sqlite>, hash: &KeyHash) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO key_changes (hash, changed_at) VALUES (?, ?)")
        .bind(hash.as_bytes().to_vec())
        .bind(now_ms())
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[async_trait]
impl Store for SqliteStore {
    async fn create(&self, record: &KeyRecord, audit: &Audit) -> Result<(), StoreError> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(backend)?;
        insert(&mut tx, record, audit).await?;
        tx.commit().await.map_err(backend)
    }

    async fn create_if_empty(&self, record: &KeyRecord, audit: &Audit) -> Result<bool, StoreError> {
        // IMMEDIATE: the write lock is held from the check to the insert.
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(backend)?;
        let any: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM keys)")
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
        if any {
            return Ok(false);
        }
        insert(&mut tx, record, audit).await?;
        tx.commit().await.map_err(backend)?;
        Ok(true)
    }

    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        let row: Option<Row> = sqlx::query_as(select_where!("id = ?"))
            .bind(id.as_str().to_owned())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.map(KeyRecord::try_from).transpose()
    }

    async fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, StoreError> {
        let row: Option<Row> = sqlx::query_as(select_where!("hash = ?"))
            .bind(hash.as_bytes().to_vec())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.map(KeyRecord::try_from).transpose()
    }

    async fn list(&self, query: &ListQuery) -> Result<Page, StoreError> {
        let cursor = query.cursor_id()?;
        let mut sql = sql::list_query::<Sqlite>(query, cursor.as_ref(), &sql::SQLITE);
        let rows: Vec<Row> = sql
            .build_query_as()
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        Ok(sql::page(sql::records(rows)?, query.page_size()))
    }

    async fn update(
        &self,
        id: &KeyId,
        patch: KeyPatch,
        at: Timestamp,
        audit: &Audit,
    ) -> Result<KeyRecord, StoreError> {
        self.modify(id, (EventKind::KeyUpdated, at, audit), None, |record| {
            patch.apply(record)?;
            Ok(None)
        })
        .await
        .map(|(record, _)| record)
    }

    async fn revoke(
        &self,
        id: &KeyId,
        at: Timestamp,
        reason: Option<String>,
        audit: &Audit,
    ) -> Result<KeyRecord, StoreError> {
        self.modify(id, (EventKind::KeyRevoked, at, audit), None, |record| {
            record.revoke(at, reason)?;
            Ok(None)
        })
        .await
        .map(|(record, _)| record)
    }

    async fn rotate(
        &self,
        id: &KeyId,
        plan: &RotationPlan<'_>,
        at: Timestamp,
        audit: &Audit,
        sealed: Option<&str>,
    ) -> Result<(KeyRecord, KeyRecord), StoreError> {
        let (old, new) = self
            .modify(id, (EventKind::KeyRotated, at, audit), sealed, |record| {
                let (old_after, new) = plan(record)?;
                *record = old_after;
                Ok(Some(new))
            })
            .await?;
        let new = new.ok_or_else(|| StoreError::Corrupt("rotation made no successor".into()))?;
        Ok((old, new))
    }

    async fn append_event(&self, event: &AuditEvent) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        record_event(&mut tx, event).await?;
        tx.commit().await.map_err(backend)
    }

    async fn create_endpoint(&self, endpoint: &Endpoint, audit: &Audit) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        sqlx::query(
            "INSERT INTO webhook_endpoints (id, url, events, secret, slack, enabled, created_at, \
             receives_secrets) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(endpoint.id.clone())
        .bind(endpoint.url.clone())
        .bind(to_json(&endpoint.events))
        .bind(endpoint.secret.clone())
        .bind(endpoint.slack)
        .bind(endpoint.enabled)
        .bind(endpoint.created_at.unix_ms())
        .bind(endpoint.receives_secrets)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        let event = AuditEvent::webhook_created(endpoint, audit, endpoint.created_at);
        record_event(&mut tx, &event).await?;
        tx.commit().await.map_err(backend)
    }

    async fn list_endpoints(&self) -> Result<Vec<Endpoint>, StoreError> {
        let rows: Vec<sql::EndpointRow> = sqlx::query_as(
            "SELECT id, url, events, secret, slack, enabled, created_at, receives_secrets \
             FROM webhook_endpoints ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.into_iter().map(Endpoint::try_from).collect()
    }

    async fn set_admin_user(&self, user: &AdminUser, audit: &Audit) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO admin_users ({}) VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (username) DO UPDATE SET password_hash = excluded.password_hash, \
             read_only = excluded.read_only, updated_at = excluded.updated_at",
            sql::ADMIN_USER_COLUMNS
        )))
        .bind(user.username.clone())
        .bind(user.password_hash.clone())
        .bind(user.read_only)
        .bind(user.created_at.unix_ms())
        .bind(user.updated_at.unix_ms())
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        record_event(&mut tx, &sql::password_set_event(user, audit)).await?;
        tx.commit().await.map_err(backend)
    }

    async fn get_admin_user(&self, username: &str) -> Result<Option<AdminUser>, StoreError> {
        SessionTables(&self.pool).get_admin_user(username).await
    }

    async fn list_admin_users(&self) -> Result<Vec<AdminUser>, StoreError> {
        SessionTables(&self.pool).list_admin_users().await
    }

    async fn remove_admin_user(
        &self,
        username: &str,
        at: Timestamp,
        audit: &Audit,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let removed: Option<(String,)> =
            sqlx::query_as("DELETE FROM admin_users WHERE username = ? RETURNING username")
                .bind(username.to_owned())
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?;
        if removed.is_none() {
            return Ok(false);
        }
        record_event(&mut tx, &sql::user_removed_event(username, audit, at)).await?;
        tx.commit().await.map_err(backend)?;
        Ok(true)
    }

    async fn create_session(&self, session: &AdminSession) -> Result<(), StoreError> {
        SessionTables(&self.pool).create(session).await
    }

    async fn get_session(&self, id: &[u8; 32]) -> Result<Option<AdminSession>, StoreError> {
        SessionTables(&self.pool).get(id).await
    }

    async fn touch_session(&self, id: &[u8; 32], at: Timestamp) -> Result<(), StoreError> {
        SessionTables(&self.pool).touch(id, at).await
    }

    async fn end_session(&self, id: &[u8; 32]) -> Result<(), StoreError> {
        SessionTables(&self.pool).end(id).await
    }

    async fn purge_sessions(
        &self,
        idle_before: Timestamp,
        begun_before: Timestamp,
    ) -> Result<u64, StoreError> {
        SessionTables(&self.pool)
            .purge(idle_before, begun_before)
            .await
    }

    async fn push_flash(&self, id: &[u8; 32], sealed: &str) -> Result<(), StoreError> {
        SessionTables(&self.pool).push_flash(id, sealed).await
    }

    async fn take_flashes(&self, id: &[u8; 32]) -> Result<Vec<String>, StoreError> {
        SessionTables(&self.pool).take_flashes(id).await
    }

    async fn due_deliveries(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<Delivery>, StoreError> {
        let rows: Vec<sql::DeliveryRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {} WHERE d.status = 'pending' AND d.next_attempt_at <= ? \
             ORDER BY d.id LIMIT ?",
            sql::DELIVERY_COLUMNS
        )))
        .bind(now.unix_ms())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.into_iter().map(Delivery::try_from).collect()
    }

    async fn finish_attempt(&self, id: i64, attempt: &Attempt) -> Result<(), StoreError> {
        let status = if attempt.delivered {
            DeliveryStatus::Delivered
        } else if attempt.next_attempt_at.is_some() {
            DeliveryStatus::Pending
        } else {
            DeliveryStatus::Failed
        };
        sqlx::query(
            "UPDATE webhook_deliveries SET status = ?, attempts = attempts + 1, \
             last_status = ?, last_error = ?, \
             next_attempt_at = COALESCE(?, next_attempt_at), \
             delivered_at = ? WHERE id = ? AND status = 'pending'",
        )
        .bind(status.as_str().to_owned())
        .bind(attempt.status.map(i32::from))
        .bind(attempt.error.clone())
        .bind(attempt.next_attempt_at.map(Timestamp::unix_ms))
        .bind(attempt.delivered.then(|| attempt.at.unix_ms()))
        .bind(id)
        .execute(&self.pool)
        .await
        .map(drop)
        .map_err(backend)
    }

    async fn list_deliveries(
        &self,
        endpoint_id: &str,
        limit: u32,
    ) -> Result<Vec<Delivery>, StoreError> {
        let rows: Vec<sql::DeliveryRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {} WHERE d.endpoint_id = ? ORDER BY d.id DESC LIMIT ?",
            sql::DELIVERY_COLUMNS
        )))
        .bind(endpoint_id.to_owned())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.into_iter().map(Delivery::try_from).collect()
    }

    async fn list_audit(&self, query: &AuditQuery) -> Result<AuditPage, StoreError> {
        let cursor = query.cursor_seq()?;
        let mut sql = sql::audit_query::<Sqlite>(query, cursor);
        let rows: Vec<sql::AuditRow> = sql
            .build_query_as()
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        sql::audit_page(rows, query.page_size())
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
        let counts: sql::Counts = sqlx::query_as(count_by_status_sql!("?1"))
            .bind(now.unix_ms())
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        Ok(counts.into())
    }

    async fn watch(&self) -> Result<mpsc::Receiver<Change>, StoreError> {
        let start: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM key_changes")
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(follow_changes(self.pool.clone(), start, tx));
        Ok(rx)
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

/// Polls `key_changes` for rows after `seen` and sends their hashes, until the receiver is
/// dropped or the pool closes. Also trims the log now and then.
async fn follow_changes(pool: SqlitePool, mut seen: i64, tx: mpsc::Sender<Change>) {
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut polls: u64 = 0;
    loop {
        tick.tick().await;
        if tx.is_closed() || pool.is_closed() {
            return;
        }
        polls += 1;
        let rows: Result<Vec<(i64, Vec<u8>)>, _> =
            sqlx::query_as("SELECT seq, hash FROM key_changes WHERE seq > ? ORDER BY seq")
                .bind(seen)
                .fetch_all(&pool)
                .await;
        let Ok(rows) = rows else { continue };
        if let Some(&(first, _)) = rows.first() {
            // A gap means the log was trimmed past what we saw: start over.
            if first > seen + 1 && seen > 0 && tx.send(Change::Everything).await.is_err() {
                return;
            }
        }
        for (seq, hash) in rows {
            seen = seq;
            if let Some(hash) = KeyHash::from_slice(&hash)
                && tx.send(Change::Key(hash)).await.is_err()
            {
                return;
            }
        }
        if polls.is_multiple_of(300) {
            let _ = sqlx::query("DELETE FROM key_changes WHERE changed_at < ?")
                .bind(now_ms() - CHANGE_LOG_KEEP_MS)
                .execute(&pool)
                .await;
        }
    }
}

/// Writes an audit event and its webhook deliveries (the durable outbox), inside the caller's
/// transaction.
async fn record_event(
    tx: &mut Transaction<'_, Sqlite>,
    event: &AuditEvent,
) -> Result<i64, StoreError> {
    let mut insert = sql::insert_event::<Sqlite>(event);
    insert.push(" RETURNING seq");
    let seq: i64 = insert
        .build_query_scalar()
        .fetch_one(&mut **tx)
        .await
        .map_err(backend)?;
    let endpoints: Vec<(String, String, bool)> =
        sqlx::query_as("SELECT id, events, slack FROM webhook_endpoints WHERE enabled = TRUE")
            .fetch_all(&mut **tx)
            .await
            .map_err(backend)?;
    if let Some(mut deliveries) =
        sql::deliveries_for::<Sqlite>(event, seq, endpoints, event.at.unix_ms())
    {
        deliveries
            .build()
            .execute(&mut **tx)
            .await
            .map_err(backend)?;
    }
    Ok(seq)
}

fn backend(e: sqlx::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}
