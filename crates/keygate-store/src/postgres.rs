//! The PostgreSQL backend: many keygate nodes on one database. Migrations from
//! `migrations/postgres` are applied on open; every change to a key sends a `NOTIFY` in the
//! same transaction, which [`Store::watch`] turns into cache invalidations on every node. The
//! channel is named after the schema keygate lives in (`keygate_changes_<schema>`), so two
//! deployments in two schemas of one database do not hear each other.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use keygate_core::{
    AdminSession, AdminUser, Audit, AuditEvent, EventKind, KeyHash, KeyId, KeyPatch, KeyRecord,
    Lifetime, Timestamp,
};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};
use tokio::sync::mpsc;

use keygate_core::webhook::{Delivery, DeliveryStatus, Endpoint};

use crate::Attempt;
use crate::sessions::SessionTables;
use crate::sql::{self, Row, count_by_status_sql, select_where, to_json};
use crate::{
    AuditPage, AuditQuery, Change, ListQuery, Page, RotationPlan, StatusCounts, Store, StoreError,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// A [`Store`] in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// The notification channel; the payload is the changed key's hash in hex.
    channel: String,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user:password@host:port/database`, with any libpq-style
    /// parameters sqlx accepts, e.g. `?options=-csearch_path%3Dkeygate`) and applies pending
    /// migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Config(format!("invalid PostgreSQL URL: {e}")))?;
        // No ping before each use (it would double every lookup's round trips): a connection
        // that broke fails its query, which is reported as a failure, and the pool replaces it.
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(3))
            .connect_with(options)
            .await
            .map_err(|e| StoreError::Backend(format!("cannot connect to PostgreSQL: {e}")))?;
        MIGRATOR.run(&pool).await.map_err(|e| {
            StoreError::Backend(format!("cannot migrate the PostgreSQL database: {e}"))
        })?;
        let schema: String = sqlx::query_scalar("SELECT current_schema()")
            .fetch_one(&pool)
            .await
            .map_err(backend)?;
        let channel: String = format!("keygate_changes_{schema}")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(63)
            .collect();
        Ok(Self { pool, channel })
    }

    /// The underlying connection pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn modify(
        &self,
        id: &KeyId,
        event: (EventKind, Timestamp, &Audit),
        sealed: Option<&str>,
        change: impl FnOnce(&mut KeyRecord) -> Result<Option<KeyRecord>, StoreError> + Send,
    ) -> Result<(KeyRecord, Option<KeyRecord>), StoreError> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        // FOR UPDATE: concurrent changes to one key queue up instead of overwriting each other.
        let row: Row = sqlx::query_as(select_where!("id = $1 FOR UPDATE"))
            .bind(id.as_str().to_owned())
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?
            .ok_or(StoreError::NotFound)?;
        let before = KeyRecord::try_from(row)?;
        let mut record = before.clone();
        let successor = change(&mut record)?;
        sqlx::query(
            "UPDATE keys SET name = $1, owner = $2, scopes = $3, metadata = $4, expires_at = $5, \
             revoked_at = $6, revoked_reason = $7, enabled = $8, rotated_to = $9, rotated_at = $10, \
             max_age_ms = $11 WHERE id = $12",
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
        notify(&mut tx, &self.channel, &record.hash).await?;
        if let Some(successor) = &successor {
            insert(&mut tx, &self.channel, successor, audit).await?;
            if let Some(sealed) = sealed {
                // The successor's plaintext, sealed, for the endpoints trusted with secrets only.
                sqlx::query(
                    "INSERT INTO webhook_deliveries (endpoint_id, event_seq, payload, next_attempt_at) \
                     SELECT id, $1, $2, $3 FROM webhook_endpoints \
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

/// Inserts a new record and queues its change notification, inside the caller's transaction.
async fn insert(
    tx: &mut Transaction<'_, Postgres>,
    channel: &str,
    record: &KeyRecord,
    audit: &Audit,
) -> Result<(), StoreError> {
    let event = AuditEvent::created(record, audit, record.created_at);
    record_event(tx, &event).await?;
    sqlx::query(
        "INSERT INTO keys (id, name, start, hash, owner, scopes, metadata, created_at, \
             expires_at, revoked_at, revoked_reason, enabled, last_used_at, rotated_from, \
             rotated_to, rotated_at, max_age_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
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
    // A new key must drop "no such key" answers other nodes may have cached.
    notify(tx, channel, &record.hash).await
}

/// Queues the change notification; PostgreSQL delivers it when the transaction commits.
async fn notify(
    tx: &mut Transaction<'_, Postgres>,
    channel: &str,
    hash: &KeyHash,
) -> Result<(), StoreError> {
    let hex: String = hash.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel.to_owned())
        .bind(hex)
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
    Ok(())
}

#[async_trait]
impl Store for PostgresStore {
    async fn create(&self, record: &KeyRecord, audit: &Audit) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        insert(&mut tx, &self.channel, record, audit).await?;
        tx.commit().await.map_err(backend)
    }

    async fn create_if_empty(&self, record: &KeyRecord, audit: &Audit) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        // Self-conflicting lock mode: a second bootstrap waits here until the first commits,
        // then sees its key. Ordinary reads are not blocked.
        sqlx::query("LOCK TABLE keys IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let any: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM keys)")
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
        if any {
            return Ok(false);
        }
        insert(&mut tx, &self.channel, record, audit).await?;
        tx.commit().await.map_err(backend)?;
        Ok(true)
    }

    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        let row: Option<Row> = sqlx::query_as(select_where!("id = $1"))
            .bind(id.as_str().to_owned())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.map(KeyRecord::try_from).transpose()
    }

    async fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, StoreError> {
        let row: Option<Row> = sqlx::query_as(select_where!("hash = $1"))
            .bind(hash.as_bytes().to_vec())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.map(KeyRecord::try_from).transpose()
    }

    async fn list(&self, query: &ListQuery) -> Result<Page, StoreError> {
        let cursor = query.cursor_id()?;
        let mut sql = sql::list_query::<Postgres>(query, cursor.as_ref(), &sql::POSTGRES);
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
             receives_secrets) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
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
            "INSERT INTO admin_users ({}) VALUES ($1, $2, $3, $4, $5) \
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
            sqlx::query_as("DELETE FROM admin_users WHERE username = $1 RETURNING username")
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
            "SELECT {} WHERE d.status = 'pending' AND d.next_attempt_at <= $1 \
             ORDER BY d.id LIMIT $2",
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
            "UPDATE webhook_deliveries SET status = $1, attempts = attempts + 1, \
             last_status = $2, last_error = $3, \
             next_attempt_at = COALESCE($4, next_attempt_at), \
             delivered_at = $5 WHERE id = $6 AND status = 'pending'",
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
            "SELECT {} WHERE d.endpoint_id = $1 ORDER BY d.id DESC LIMIT $2",
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
        let mut sql = sql::audit_query::<Postgres>(query, cursor);
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
        let ids: Vec<String> = usage.iter().map(|(id, _)| id.as_str().to_owned()).collect();
        let times: Vec<i64> = usage.iter().map(|(_, at)| at.unix_ms()).collect();
        // One statement for the whole batch.
        sqlx::query(
            "UPDATE keys AS k SET last_used_at = u.at \
             FROM UNNEST($1::text[], $2::bigint[]) AS u(id, at) \
             WHERE k.id = u.id AND (k.last_used_at IS NULL OR k.last_used_at < u.at)",
        )
        .bind(ids)
        .bind(times)
        .execute(&self.pool)
        .await
        .map(drop)
        .map_err(backend)
    }

    async fn count_by_status(&self, now: Timestamp) -> Result<StatusCounts, StoreError> {
        let counts: sql::Counts = sqlx::query_as(count_by_status_sql!("$1"))
            .bind(now.unix_ms())
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        Ok(counts.into())
    }

    async fn watch(&self) -> Result<mpsc::Receiver<Change>, StoreError> {
        let mut listener = PgListener::connect_with(&self.pool)
            .await
            .map_err(backend)?;
        listener.listen(&self.channel).await.map_err(backend)?;
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(follow_notifications(listener, tx));
        Ok(rx)
    }

    async fn close(&self) {
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

/// Turns notifications into [`Change`]s. A lost connection may have lost notifications, so it
/// sends [`Change::Everything`]; the listener reconnects and resubscribes by itself.
async fn follow_notifications(mut listener: PgListener, tx: mpsc::Sender<Change>) {
    loop {
        let change = tokio::select! {
            () = tx.closed() => return,
            next = listener.try_recv() => match next {
                Ok(Some(n)) => parse_hex(n.payload()).map(Change::Key),
                Ok(None) => Some(Change::Everything),
                Err(sqlx::Error::PoolClosed) => return,
                Err(_) => {
                    // The database is away: say so, and try again shortly.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    Some(Change::Everything)
                }
            },
        };
        if let Some(change) = change
            && tx.send(change).await.is_err()
        {
            return;
        }
    }
}

fn parse_hex(text: &str) -> Option<KeyHash> {
    if text.len() != 64 {
        return None;
    }
    let mut bytes = [0u8; 32];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(KeyHash::from_bytes(bytes))
}

/// Writes an audit event and its webhook deliveries (the durable outbox), inside the caller's
/// transaction.
async fn record_event(
    tx: &mut Transaction<'_, Postgres>,
    event: &AuditEvent,
) -> Result<i64, StoreError> {
    let mut insert = sql::insert_event::<Postgres>(event);
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
        sql::deliveries_for::<Postgres>(event, seq, endpoints, event.at.unix_ms())
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
