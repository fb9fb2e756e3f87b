//! [`SqlStore`]: every role of the store, its SQL written once over sqlx with `$n`
//! placeholders, for any database a [`Backend`] describes.
//!
//! Every change goes through one write transaction ([`WriteTx`]) that holds a pooled
//! connection of its own: it is committed, or rolled back, or — if even that fails, or the
//! caller gave up half-way — the connection is closed instead of going back to the pool, so a
//! failed transaction (a full disk, a lost server) never poisons the next user of that
//! connection.

mod outbox;
mod rows;

use std::future::Future;

use async_trait::async_trait;
use keygate_core::email::{Contacts, EmailDelivery, EmailRouting};
use keygate_core::limits::{OwnerLimits, RateLimits};
use keygate_core::switch::Usage;
use keygate_core::webhook::{Delivery, Endpoint, EndpointPatch};
use keygate_core::{
    Audit, AuditEvent, EventKind, KeyHash, KeyId, KeyPatch, KeyRecord, Lifetime, Timestamp,
};
use sqlx::pool::PoolConnection;
use sqlx::{Database, Pool};
use tokio::sync::mpsc;

pub(crate) use rows::to_json;
use rows::{Row, select_where};

use crate::StoreError;
use crate::accounts::{AdminSession, AdminUser, AttemptsPlan, SignInAttempts};
use crate::query::{
    Attempt, AuditPage, AuditQuery, Change, EmailPage, EmailQuery, ImportedKey, ImportedKinds,
    LegacyCredential, ListQuery, Page, RetirePlan, RotationPlan, Spend, StatusCounts,
};
use crate::roles::{AdminAccounts, AuditLog, EmailOutbox, KeyStore, WebhookOutbox};

/// What differs between the databases [`SqlStore`] runs on. Everything else — every query,
/// every transaction's content — is written once, in this module.
pub trait Backend: Send + Sync + std::fmt::Debug + Sized + 'static {
    /// The sqlx database.
    type Db: Database;

    /// The statement that opens a write transaction (`BEGIN IMMEDIATE` takes SQLite's write
    /// lock at once, so that read-modify-write cannot interleave).
    const BEGIN_WRITE: &'static str;
    /// Appended to the `SELECT` of a read-modify-write to lock the row (PostgreSQL's
    /// `FOR UPDATE`; nothing where the transaction holds the lock already).
    const LOCK_ROW: &'static str;
    /// Run first in `create_if_empty`'s transaction, so that two nodes bootstrapping at once
    /// issue one key between them (`None` where [`Backend::BEGIN_WRITE`] suffices).
    const LOCK_KEYS_TABLE: Option<&'static str>;
    /// The case-insensitive match operator.
    const LIKE: &'static str;
    /// The order clause of a list filtered by text (where a filter reads every row anyway).
    const FILTERED_ORDER: &'static str;
    /// The statement, run in a change's transaction, that tells every process on this
    /// database that the key whose hash is `$1` changed.
    const SIGNAL_CHANGE: &'static str;
    /// Like [`Backend::SIGNAL_CHANGE`], for every key of the owner `$1`.
    const SIGNAL_OWNER_CHANGE: &'static str;
    /// The statement writing a batch of uses, `$1` being a JSON array of `[key id, first use,
    /// last use, uses since rotation]`: `last_used_at` never moves backwards, `first_used_at`
    /// never forwards, and the uses since rotation are added.
    const RECORD_USAGE: &'static str;
    /// A `SELECT` of the rows of a usage batch, `$1` being a JSON array of `[key id, hour,
    /// owner, verified, revoked, expired, disabled, insufficient_scope, usage_exceeded,
    /// ip_not_allowed, rate_limited]` arrays, as columns of those types in that order, rows in
    /// the array's order (the order writers lock rows in; SQLite needs a `WHERE` before the
    /// upsert's `ON CONFLICT`).
    const USAGE_ROWS: &'static str;

    /// Follows changes made by any process, until the receiver is dropped.
    fn watch(
        &self,
        pool: &Pool<Self::Db>,
    ) -> impl Future<Output = Result<mpsc::Receiver<Change>, StoreError>> + Send;

    /// Whether the database is still the one that was opened (a SQLite file deleted or
    /// replaced under a running server is not); checked before every write and by pings.
    fn check_identity(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Whether the database has room for writes, where that can be told without writing (the
    /// free space under a SQLite file); checked by [`KeyStore::ping_write`].
    fn check_room(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// The store: every role, over one [`Backend`].
#[derive(Debug)]
pub struct SqlStore<B: Backend> {
    pool: Pool<B::Db>,
    backend: B,
    /// Where emails link to and which operators get them (see
    /// [`EmailOutbox::set_email_routing`]).
    email_routing: std::sync::RwLock<std::sync::Arc<EmailRouting>>,
}

impl<B: Backend> SqlStore<B> {
    /// A store over an opened, migrated database.
    pub fn new(pool: Pool<B::Db>, backend: B) -> Self {
        Self {
            pool,
            backend,
            email_routing: std::sync::RwLock::default(),
        }
    }

    /// The email routing in force (a snapshot: a change applies to later events).
    fn email_routing(&self) -> std::sync::Arc<EmailRouting> {
        self.email_routing
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The connection pool.
    pub fn pool(&self) -> &Pool<B::Db> {
        &self.pool
    }
}

/// A write transaction on a pooled connection of its own; see the module docs.
pub(crate) struct WriteTx<DB: Database> {
    conn: PoolConnection<DB>,
    open: bool,
}

impl<DB: Database> WriteTx<DB> {
    fn conn(&mut self) -> &mut DB::Connection {
        &mut self.conn
    }
}

impl<DB: Database> Drop for WriteTx<DB> {
    fn drop(&mut self) {
        if self.open {
            // Neither committed nor rolled back (a failure, or a cancelled request): the
            // connection's state is unknown, so it must not serve anyone else.
            self.conn.close_on_drop();
        }
    }
}

/// A database error as a [`StoreError`]: a unique constraint is [`StoreError::Duplicate`],
/// anything else the database failing.
/// Runs `$body` (an expression giving a `Result`, with `$tx` the open [`WriteTx`]) in a write
/// transaction of `$store`, committing it on success and rolling it back otherwise.
macro_rules! in_write {
    ($store:expr, |$tx:ident| $body:expr) => {{
        let mut tx = $store.begin_write().await?;
        let result = async {
            let $tx = &mut tx;
            $body
        }
        .await;
        $store.finish(tx, result).await
    }};
}

pub(crate) fn backend(e: sqlx::Error) -> StoreError {
    match e.as_database_error() {
        Some(db) if db.is_unique_violation() => StoreError::Duplicate,
        _ => StoreError::Backend(e.to_string()),
    }
}

fn time(ms: Option<Timestamp>) -> Option<i64> {
    ms.map(Timestamp::unix_ms)
}

fn owner_from_row(row: rows::OwnerRow) -> Result<OwnerLimits, StoreError> {
    let rows::OwnerRow {
        owner,
        rate_limits,
        updated_at,
    } = row;
    Ok(OwnerLimits {
        owner,
        rate_limits: serde_json::from_str(&rate_limits)
            .map_err(|e| StoreError::Corrupt(format!("owner rate limits: {e}")))?,
        updated_at: Timestamp::from_unix_ms(updated_at)
            .ok_or_else(|| StoreError::Corrupt("time out of range".into()))?,
    })
}

/// A key's limits as the `keys` table's columns hold them.
struct LimitColumns {
    rate_limits: String,
    allowed_ips: Option<String>,
    quota_remaining: Option<i64>,
    quota_refill: Option<String>,
    quota_refilled_at: Option<i64>,
    quota_holder: Option<String>,
    quota_refill_due_at: Option<i64>,
}

impl LimitColumns {
    fn of(record: &KeyRecord) -> Self {
        let limits = &record.limits;
        let quota = limits.quota.as_ref();
        Self {
            rate_limits: to_json(&limits.rate),
            allowed_ips: limits.allowed_ips.as_ref().map(to_json),
            // At most 10¹² (MAX_CREDITS): always an i64.
            quota_remaining: quota.map(|q| i64::try_from(q.remaining).unwrap_or(i64::MAX)),
            quota_refill: quota.and_then(|q| q.refill.as_ref()).map(to_json),
            quota_refilled_at: quota.map(|q| q.refilled_at.unix_ms()),
            quota_holder: id_text(limits.quota_holder.as_ref()),
            quota_refill_due_at: quota
                .and_then(|q| q.next_refill(q.refilled_at))
                .map(Timestamp::unix_ms),
        }
    }
}

fn id_text(id: Option<&KeyId>) -> Option<String> {
    id.map(|id| id.as_str().to_owned())
}

/// Wraps an `impl` block of [`SqlStore`] in the one list of what the SQL needs of the
/// database's types, so the list is written once.
macro_rules! sql_impl {
    ($(#[$attr:meta])* impl $($role:ident)? { $($body:tt)* }) => {
        $(#[$attr])*
        // The row types are this module's own; the impls are used through the roles.
        #[allow(private_bounds)]
        impl<B: Backend> $($role for)? SqlStore<B>
        where
            for<'c> &'c mut <B::Db as Database>::Connection: sqlx::Executor<'c, Database = B::Db>,
            for<'c> &'c Pool<B::Db>: sqlx::Executor<'c, Database = B::Db>,
            <B::Db as Database>::Arguments: sqlx::IntoArguments<B::Db> + Default,
            for<'q> i64: sqlx::Encode<'q, B::Db> + sqlx::Decode<'q, B::Db> + sqlx::Type<B::Db>,
            for<'q> i32: sqlx::Encode<'q, B::Db> + sqlx::Decode<'q, B::Db> + sqlx::Type<B::Db>,
            for<'q> bool: sqlx::Encode<'q, B::Db> + sqlx::Decode<'q, B::Db> + sqlx::Type<B::Db>,
            for<'q> String: sqlx::Encode<'q, B::Db> + sqlx::Decode<'q, B::Db> + sqlx::Type<B::Db>,
            for<'q> Vec<u8>: sqlx::Encode<'q, B::Db> + sqlx::Decode<'q, B::Db> + sqlx::Type<B::Db>,
            for<'q> Option<i64>: sqlx::Encode<'q, B::Db>,
            for<'q> Option<i32>: sqlx::Encode<'q, B::Db>,
            for<'q> Option<String>: sqlx::Encode<'q, B::Db>,
            for<'r> Row: sqlx::FromRow<'r, <B::Db as Database>::Row>,
            for<'r> rows::Counts: sqlx::FromRow<'r, <B::Db as Database>::Row>,
            for<'r> rows::AuditRow: sqlx::FromRow<'r, <B::Db as Database>::Row>,
            for<'r> rows::DeliveryRow: sqlx::FromRow<'r, <B::Db as Database>::Row>,
            for<'r> rows::EndpointRow: sqlx::FromRow<'r, <B::Db as Database>::Row>,
            for<'r> rows::EmailRow: sqlx::FromRow<'r, <B::Db as Database>::Row>,
            for<'r> rows::EmailTargetRow: sqlx::FromRow<'r, <B::Db as Database>::Row>,
            for<'q> Option<bool>: sqlx::Decode<'q, B::Db> + sqlx::Type<B::Db>,
            for<'r> (String, String): sqlx::FromRow<'r, <B::Db as Database>::Row>,
            for<'r> (String, bool): sqlx::FromRow<'r, <B::Db as Database>::Row>,
            for<'r> rows::AdminUserRow: sqlx::FromRow<'r, <B::Db as Database>::Row>,
            for<'r> rows::SessionRow: sqlx::FromRow<'r, <B::Db as Database>::Row>,
            for<'r> (i64,): sqlx::FromRow<'r, <B::Db as Database>::Row>,
            for<'r> (bool,): sqlx::FromRow<'r, <B::Db as Database>::Row>,
            for<'r> (String,): sqlx::FromRow<'r, <B::Db as Database>::Row>,
            for<'r> (Vec<u8>,): sqlx::FromRow<'r, <B::Db as Database>::Row>,
            for<'r> (i64, String): sqlx::FromRow<'r, <B::Db as Database>::Row>,
            for<'r> (i64, Option<i64>): sqlx::FromRow<'r, <B::Db as Database>::Row>,
            for<'r> (String, String): sqlx::FromRow<'r, <B::Db as Database>::Row>,
            for<'r> (Option<String>, Vec<u8>): sqlx::FromRow<'r, <B::Db as Database>::Row>,
            for<'r> (String, String, bool): sqlx::FromRow<'r, <B::Db as Database>::Row>,
            for<'r> rows::AttemptsRow: sqlx::FromRow<'r, <B::Db as Database>::Row>,
            for<'r> rows::OwnerRow: sqlx::FromRow<'r, <B::Db as Database>::Row>,
            for<'r> usage::UsageRow: sqlx::FromRow<'r, <B::Db as Database>::Row>,
        {
            $($body)*
        }
    };
}

sql_impl! {
    impl {
        /// Opens a write transaction (after checking the database is still the one opened).
        async fn begin_write(&self) -> Result<WriteTx<B::Db>, StoreError> {
            self.backend.check_identity()?;
            let conn = self.pool().acquire().await.map_err(backend)?;
            let mut tx = WriteTx { conn, open: true };
            sqlx::raw_sql(B::BEGIN_WRITE)
                .execute(tx.conn())
                .await
                .map_err(backend)?;
            Ok(tx)
        }

        /// Commits `tx` if `result` is a success, else rolls it back; returns `result` (or the
        /// commit's failure).
        async fn finish<T>(
            &self,
            mut tx: WriteTx<B::Db>,
            result: Result<T, StoreError>,
        ) -> Result<T, StoreError> {
            let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
            let ended = sqlx::raw_sql(end).execute(tx.conn()).await;
            if ended.is_ok() {
                tx.open = false;
            }
            match (result, ended) {
                (Ok(value), Ok(_)) => Ok(value),
                (Ok(_), Err(e)) => Err(backend(e)),
                (Err(e), _) => Err(e),
            }
        }

        /// Runs one statement in `tx`.
        async fn exec(
            &self,
            tx: &mut WriteTx<B::Db>,
            query: sqlx::query::Query<'_, B::Db, <B::Db as Database>::Arguments>,
        ) -> Result<(), StoreError> {
            query.execute(tx.conn()).await.map(drop).map_err(backend)
        }

        /// Runs a claim (an update of at most one row, returning its id) in `tx`: whether it
        /// changed the row.
        async fn claimed(
            &self,
            tx: &mut WriteTx<B::Db>,
            query: sqlx::query::Query<'_, B::Db, <B::Db as Database>::Arguments>,
        ) -> Result<bool, StoreError> {
            let row = query.fetch_optional(tx.conn()).await.map_err(backend)?;
            Ok(row.is_some())
        }

        /// Tells every process that the key with `hash` changed, inside `tx`.
        async fn signal_change(
            &self,
            tx: &mut WriteTx<B::Db>,
            hash: &KeyHash,
        ) -> Result<(), StoreError> {
            self.exec(tx, sqlx::query(B::SIGNAL_CHANGE).bind(hash.as_bytes().to_vec()))
                .await
        }

        /// Writes an audit event and its webhook deliveries (the durable outbox) inside `tx`;
        /// returns the event's position in the trail.
        async fn record_event(
            &self,
            tx: &mut WriteTx<B::Db>,
            event: &AuditEvent,
        ) -> Result<i64, StoreError> {
            let mut insert = rows::insert_event::<B::Db>(event);
            insert.push(" RETURNING seq");
            let (seq,): (i64,) = insert
                .build_query_as()
                .fetch_one(tx.conn())
                .await
                .map_err(backend)?;
            let endpoints: Vec<(String, String, bool)> = sqlx::query_as(
                "SELECT id, events, slack FROM webhook_endpoints WHERE enabled = TRUE",
            )
            .fetch_all(tx.conn())
            .await
            .map_err(backend)?;
            if let Some(mut deliveries) =
                rows::deliveries_for::<B::Db>(event, seq, endpoints, event.at.unix_ms())
            {
                deliveries
                    .build()
                    .execute(tx.conn())
                    .await
                    .map_err(backend)?;
            }
            if keygate_core::email::emailed(event.kind)
                && let Some(key_id) = &event.key_id
            {
                self.queue_emails(tx, event, seq, key_id).await?;
            }
            Ok(seq)
        }

        /// Queues event `seq`'s email, inside `tx`, for each contact of the owner of key
        /// `key_id` and each operator of the event's type (an address in both roles once;
        /// see [`keygate_core::email::recipients`]).
        async fn queue_emails(
            &self,
            tx: &mut WriteTx<B::Db>,
            event: &AuditEvent,
            seq: i64,
            key_id: &KeyId,
        ) -> Result<(), StoreError> {
            let routing = self.email_routing();
            let found: Option<rows::EmailTargetRow> = sqlx::query_as(
                "SELECT k.name, k.owner, o.emails, o.digest FROM keys k \
                 LEFT JOIN owners o ON o.owner = k.owner WHERE k.id = $1",
            )
            .bind(key_id.as_str().to_owned())
            .fetch_optional(tx.conn())
            .await
            .map_err(backend)?;
            let (name, owner, contacts) = match found {
                Some(row) => {
                    let contacts = Contacts {
                        emails: match &row.emails {
                            Some(text) => serde_json::from_str(text)
                                .map_err(|_| StoreError::Corrupt("owner emails".into()))?,
                            None => Vec::new(),
                        },
                        digest: row.digest.unwrap_or(false),
                    };
                    (row.name, row.owner, contacts)
                }
                None => (key_id.as_str().to_owned(), None, Contacts::default()),
            };
            let recipients =
                keygate_core::email::recipients(event.kind, &contacts, &routing.operators);
            if recipients.is_empty() {
                return Ok(());
            }
            let mut stored = event.clone();
            stored.seq = seq;
            let email =
                keygate_core::email::message(&stored, &name, routing.public_url.as_deref());
            for recipient in recipients {
                // A digest notice waits for the next 00:00 UTC.
                let due = if recipient.digest {
                    keygate_core::email::digest_due(event.at)
                } else {
                    event.at
                };
                self.exec(tx, sqlx::query(
                    "INSERT INTO email_deliveries (event_seq, event, key_id, owner, recipient, \
                     subject, body_text, body_html, next_attempt_at, digest) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                )
                .bind(seq)
                .bind(event.kind.as_str().to_owned())
                .bind(key_id.as_str().to_owned())
                .bind(owner.clone())
                .bind(recipient.address)
                .bind(email.subject.clone())
                .bind(email.text.clone())
                .bind(email.html.clone())
                .bind(due.unix_ms())
                .bind(recipient.digest))
                .await?;
            }
            Ok(())
        }

        /// Inserts a new key with its `key.created` event and change signal, inside `tx`.
        async fn insert_key(
            &self,
            tx: &mut WriteTx<B::Db>,
            record: &KeyRecord,
            audit: &Audit,
        ) -> Result<(), StoreError> {
            let event = AuditEvent::created(record, audit, record.created_at);
            self.insert_record(tx, record, &event).await
        }

        /// Inserts a new key with `event` (its `key.created` or `key.imported`) and its change
        /// signal, inside `tx`.
        async fn insert_record(
            &self,
            tx: &mut WriteTx<B::Db>,
            record: &KeyRecord,
            event: &AuditEvent,
        ) -> Result<(), StoreError> {
            self.record_event(tx, event).await?;
            let limits = LimitColumns::of(record);
            sqlx::query(
                "INSERT INTO keys (id, name, start, hash, owner, scopes, metadata, created_at, \
                 expires_at, revoked_at, revoked_reason, enabled, last_used_at, rotated_from, \
                 rotated_to, rotated_at, max_age_ms, rate_limits, allowed_ips, quota_remaining, \
                 quota_refill, quota_refilled_at, quota_holder, quota_refill_due_at, \
                 first_used_at, uses_since_rotation, retire_when_switched_ms) VALUES ($1, \
                 $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, \
                 $19, $20, $21, $22, $23, $24, $25, $26, $27)",
            )
            .bind(record.id.as_str().to_owned())
            .bind(record.name.clone())
            .bind(record.start.clone())
            .bind(record.hash.as_bytes().to_vec())
            .bind(record.owner.clone())
            .bind(to_json(&record.scopes))
            .bind(to_json(&record.metadata))
            .bind(record.created_at.unix_ms())
            .bind(time(record.expires_at))
            .bind(time(record.revoked_at))
            .bind(record.revoked_reason.clone())
            .bind(record.enabled)
            .bind(time(record.last_used_at))
            .bind(id_text(record.rotated_from.as_ref()))
            .bind(id_text(record.rotated_to.as_ref()))
            .bind(time(record.rotated_at))
            .bind(record.max_age.map(Lifetime::as_ms))
            .bind(limits.rate_limits)
            .bind(limits.allowed_ips)
            .bind(limits.quota_remaining)
            .bind(limits.quota_refill)
            .bind(limits.quota_refilled_at)
            .bind(limits.quota_holder)
            .bind(limits.quota_refill_due_at)
            .bind(time(record.first_used_at))
            .bind(i64::try_from(record.uses_since_rotation).unwrap_or(i64::MAX))
            .bind(record.retire_when_switched.map(Lifetime::as_ms))
            .execute(tx.conn())
            .await
            .map_err(backend)?;
            // A new key must drop "no such key" answers other processes may have cached.
            self.signal_change(tx, &record.hash).await
        }

        /// Read-modify-write of one key in one transaction: `change` (a rule of keygate-core)
        /// edits the record and may return a successor to insert; the change's event (`kind`,
        /// at `at`) and signal are written with it. With `sealed`, the successor's sealed
        /// plaintext is queued for the endpoints trusted with secrets.
        async fn modify(
            &self,
            id: &KeyId,
            (kind, at, audit): (EventKind, Timestamp, &Audit),
            sealed: Option<&str>,
            change: impl FnOnce(&mut KeyRecord) -> Result<Option<KeyRecord>, StoreError> + Send,
        ) -> Result<(KeyRecord, Option<KeyRecord>), StoreError> {
            in_write!(self, |tx| {
                let select = format!("{}{}", select_where!("id = $1"), B::LOCK_ROW);
                let row: Row = sqlx::query_as(sqlx::AssertSqlSafe(select))
                    .bind(id.as_str().to_owned())
                    .fetch_optional(tx.conn())
                    .await
                    .map_err(backend)?
                    .ok_or(StoreError::NotFound)?;
                let before = KeyRecord::try_from(row)?;
                let mut record = before.clone();
                let successor = change(&mut record)?;
                let limits = LimitColumns::of(&record);
                sqlx::query(
                    "UPDATE keys SET name = $1, owner = $2, scopes = $3, metadata = $4, \
                     expires_at = $5, revoked_at = $6, revoked_reason = $7, enabled = $8, \
                     rotated_to = $9, rotated_at = $10, max_age_ms = $11, rate_limits = $12, \
                     allowed_ips = $13, quota_remaining = $14, quota_refill = $15, \
                     quota_refilled_at = $16, quota_holder = $17, quota_refill_due_at = $18, \
                     retire_when_switched_ms = $19 WHERE id = $20",
                )
                .bind(record.name.clone())
                .bind(record.owner.clone())
                .bind(to_json(&record.scopes))
                .bind(to_json(&record.metadata))
                .bind(time(record.expires_at))
                .bind(time(record.revoked_at))
                .bind(record.revoked_reason.clone())
                .bind(record.enabled)
                .bind(id_text(record.rotated_to.as_ref()))
                .bind(time(record.rotated_at))
                .bind(record.max_age.map(Lifetime::as_ms))
                .bind(limits.rate_limits)
                .bind(limits.allowed_ips)
                .bind(limits.quota_remaining)
                .bind(limits.quota_refill)
                .bind(limits.quota_refilled_at)
                .bind(limits.quota_holder)
                .bind(limits.quota_refill_due_at)
                .bind(record.retire_when_switched.map(Lifetime::as_ms))
                .bind(record.id.as_str().to_owned())
                .execute(tx.conn())
                .await
                .map_err(backend)?;
                let event = AuditEvent::changed(kind, &before, &record, audit, at);
                let event_seq = self.record_event(tx, &event).await?;
                self.signal_change(tx, &record.hash).await?;
                if let Some(successor) = &successor {
                    self.insert_key(tx, successor, audit).await?;
                    // Keys that spent the old key's credits (its own predecessors, still in
                    // their grace periods) spend the successor's now.
                    let moved: Vec<(Vec<u8>,)> = sqlx::query_as(
                        "UPDATE keys SET quota_holder = $1 WHERE quota_holder = $2 RETURNING hash",
                    )
                    .bind(successor.id.as_str().to_owned())
                    .bind(record.id.as_str().to_owned())
                    .fetch_all(tx.conn())
                    .await
                    .map_err(backend)?;
                    for (hash,) in moved {
                        if let Some(hash) = KeyHash::from_slice(&hash) {
                            self.signal_change(tx, &hash).await?;
                        }
                    }
                    if let Some(sealed) = sealed {
                        // The successor's plaintext, sealed, for the endpoints trusted with
                        // secrets only.
                        sqlx::query(
                            "INSERT INTO webhook_deliveries (endpoint_id, event_seq, payload, \
                             next_attempt_at) SELECT id, $1, $2, $3 FROM webhook_endpoints \
                             WHERE enabled = TRUE AND receives_secrets = TRUE",
                        )
                        .bind(event_seq)
                        .bind(sealed.to_owned())
                        .bind(at.unix_ms())
                        .execute(tx.conn())
                        .await
                        .map_err(backend)?;
                    }
                }
                Ok((record, successor))
            })
        }
    }
}

sql_impl! {
    #[async_trait]
    impl KeyStore {
        async fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, StoreError> {
            let row: Option<Row> = sqlx::query_as(select_where!("hash = $1"))
                .bind(hash.as_bytes().to_vec())
                .fetch_optional(self.pool())
                .await
                .map_err(backend)?;
            row.map(KeyRecord::try_from).transpose()
        }

        async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
            let row: Option<Row> = sqlx::query_as(select_where!("id = $1"))
                .bind(id.as_str().to_owned())
                .fetch_optional(self.pool())
                .await
                .map_err(backend)?;
            row.map(KeyRecord::try_from).transpose()
        }

        async fn list(&self, query: &ListQuery) -> Result<Page, StoreError> {
            let cursor = query.cursor_id()?;
            let mut sql =
                rows::list_query::<B::Db>(query, cursor.as_ref(), B::LIKE, B::FILTERED_ORDER);
            let found: Vec<Row> = sql
                .build_query_as()
                .fetch_all(self.pool())
                .await
                .map_err(backend)?;
            Ok(rows::page(rows::records(found)?, query.page_size()))
        }

        async fn count_by_status(&self, now: Timestamp) -> Result<StatusCounts, StoreError> {
            let counts: rows::Counts = sqlx::query_as(rows::COUNT_BY_STATUS)
                .bind(now.unix_ms())
                .fetch_one(self.pool())
                .await
                .map_err(backend)?;
            Ok(counts.into())
        }

        async fn create(&self, record: &KeyRecord, audit: &Audit) -> Result<(), StoreError> {
            let mut tx = self.begin_write().await?;
            let result = self.insert_key(&mut tx, record, audit).await;
            self.finish(tx, result).await
        }

        async fn create_if_empty(
            &self,
            record: &KeyRecord,
            audit: &Audit,
        ) -> Result<bool, StoreError> {
            in_write!(self, |tx| {
                if let Some(lock) = B::LOCK_KEYS_TABLE {
                    sqlx::raw_sql(lock).execute(tx.conn()).await.map_err(backend)?;
                }
                let (any,): (bool,) = sqlx::query_as("SELECT EXISTS (SELECT 1 FROM keys)")
                    .fetch_one(tx.conn())
                    .await
                    .map_err(backend)?;
                if any {
                    return Ok(false);
                }
                self.insert_key(tx, record, audit).await?;
                Ok(true)
            })
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
            let new =
                new.ok_or_else(|| StoreError::Corrupt("rotation made no successor".into()))?;
            Ok((old, new))
        }

        async fn retire(
            &self,
            id: &KeyId,
            plan: &RetirePlan<'_>,
            at: Timestamp,
            audit: &Audit,
        ) -> Result<Option<KeyRecord>, StoreError> {
            in_write!(self, |tx| {
                let select = format!("{}{}", select_where!("id = $1"), B::LOCK_ROW);
                let row: Row = sqlx::query_as(sqlx::AssertSqlSafe(select))
                    .bind(id.as_str().to_owned())
                    .fetch_optional(tx.conn())
                    .await
                    .map_err(backend)?
                    .ok_or(StoreError::NotFound)?;
                let before = KeyRecord::try_from(row)?;
                let Some(evidence) = plan(&before) else {
                    return Ok(None);
                };
                let mut after = before.clone();
                after.expires_at = Some(before.expires_at.map_or(at, |e| e.min(at)));
                self.exec(tx, sqlx::query("UPDATE keys SET expires_at = $1 WHERE id = $2")
                    .bind(time(after.expires_at))
                    .bind(id.as_str().to_owned()))
                    .await?;
                let mut event = AuditEvent::changed(EventKind::KeyRetired, &before, &after, audit, at);
                event.details.extend(evidence);
                self.record_event(tx, &event).await?;
                self.signal_change(tx, &after.hash).await?;
                Ok(Some(after))
            })
        }

        async fn record_usage(&self, usage: &[Usage]) -> Result<(), StoreError> {
            if usage.is_empty() {
                return Ok(());
            }
            let rows: Vec<(&str, i64, i64, i64)> = usage
                .iter()
                .map(|u| {
                    (
                        u.id.as_str(),
                        u.first_at.unix_ms(),
                        u.last_at.unix_ms(),
                        i64::try_from(u.since_rotation).unwrap_or(i64::MAX),
                    )
                })
                .collect();
            let rows = serde_json::to_string(&rows).expect("usage rows are JSON");
            let mut tx = self.begin_write().await?;
            let result = self.exec(&mut tx, sqlx::query(B::RECORD_USAGE).bind(rows)).await;
            self.finish(tx, result).await
        }

        async fn spend_quota(&self, payer: &KeyId, cost: u64) -> Result<Spend, StoreError> {
            self.backend.check_identity()?;
            let cost = i64::try_from(cost).unwrap_or(i64::MAX);
            let spent: Option<(i64,)> = sqlx::query_as(
                "UPDATE keys SET quota_remaining = quota_remaining - $2 \
                 WHERE id = $1 AND quota_remaining >= $2 RETURNING quota_remaining",
            )
            .bind(payer.as_str().to_owned())
            .bind(cost)
            .fetch_optional(self.pool())
            .await
            .map_err(backend)?;
            let credits = |n: i64| u64::try_from(n).unwrap_or(0);
            if let Some((remaining,)) = spent {
                return Ok(Spend::Spent { remaining: credits(remaining) });
            }
            // -1: the key has no quota (or no longer exists).
            let balance: Option<(i64, Option<i64>)> = sqlx::query_as(
                "SELECT COALESCE(quota_remaining, -1), quota_refill_due_at FROM keys WHERE id = $1",
            )
            .bind(payer.as_str().to_owned())
            .fetch_optional(self.pool())
            .await
            .map_err(backend)?;
            Ok(match balance {
                Some((remaining, refill_due)) if remaining >= 0 => Spend::Short {
                    remaining: credits(remaining),
                    refill_due: refill_due.and_then(Timestamp::from_unix_ms),
                },
                _ => Spend::NoQuota,
            })
        }

        async fn get_owner(&self, owner: &str) -> Result<Option<OwnerLimits>, StoreError> {
            let row: Option<rows::OwnerRow> = sqlx::query_as(
                "SELECT owner, rate_limits, updated_at FROM owners WHERE owner = $1",
            )
            .bind(owner.to_owned())
            .fetch_optional(self.pool())
            .await
            .map_err(backend)?;
            // An owner whose row holds only contacts has no shared limits.
            Ok(row
                .map(owner_from_row)
                .transpose()?
                .filter(|o| !o.rate_limits.is_empty()))
        }

        async fn set_owner_limits(
            &self,
            owner: &str,
            rate_limits: &RateLimits,
            at: Timestamp,
            audit: &Audit,
        ) -> Result<OwnerLimits, StoreError> {
            in_write!(self, |tx| {
                let select = format!(
                    "SELECT owner, rate_limits, updated_at FROM owners WHERE owner = $1{}",
                    B::LOCK_ROW
                );
                let before: Option<rows::OwnerRow> =
                    sqlx::query_as(sqlx::AssertSqlSafe(select))
                        .bind(owner.to_owned())
                        .fetch_optional(tx.conn())
                        .await
                        .map_err(backend)?;
                let before = before
                    .map(owner_from_row)
                    .transpose()?
                    .map(|o| o.rate_limits)
                    .unwrap_or_default();
                // The row stays when the limits go: it may hold the owner's contacts.
                {
                    let text = serde_json::to_string(rate_limits)
                        .map_err(|e| StoreError::Backend(e.to_string()))?;
                    self.exec(tx, sqlx::query(
                        "INSERT INTO owners (owner, rate_limits, updated_at) VALUES ($1, $2, $3) \
                         ON CONFLICT (owner) DO UPDATE SET rate_limits = excluded.rate_limits, \
                         updated_at = excluded.updated_at",
                    )
                    .bind(owner.to_owned())
                    .bind(text)
                    .bind(at.unix_ms()))
                    .await?;
                }
                // Every node's cache holds the owner's limits with each of its keys.
                self.exec(tx, sqlx::query(B::SIGNAL_OWNER_CHANGE).bind(owner.to_owned()))
                    .await?;
                let event = AuditEvent::owner_updated(owner, &before, rate_limits, audit, at);
                self.record_event(tx, &event).await?;
                Ok(OwnerLimits {
                    owner: owner.to_owned(),
                    rate_limits: rate_limits.clone(),
                    updated_at: at,
                })
            })
        }

        async fn refill_quotas(
            &self,
            now: Timestamp,
            limit: u32,
            audit: &Audit,
        ) -> Result<u64, StoreError> {
            let due: Vec<(String,)> = sqlx::query_as(
                "SELECT id FROM keys WHERE quota_refill_due_at <= $1 AND revoked_at IS NULL \
                 ORDER BY quota_refill_due_at LIMIT $2",
            )
            .bind(now.unix_ms())
            .bind(i64::from(limit))
            .fetch_all(self.pool())
            .await
            .map_err(backend)?;
            let mut refilled = 0;
            for (id,) in due {
                let Some(id) = KeyId::parse(&id) else { continue };
                // Read, refill by core's rule, write back: in one transaction, so a refill
                // made meanwhile by another node is seen and not repeated.
                let done = in_write!(self, |tx| {
                    let select = format!("{}{}", select_where!("id = $1"), B::LOCK_ROW);
                    let Some(row) = sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(select))
                        .bind(id.as_str().to_owned())
                        .fetch_optional(tx.conn())
                        .await
                        .map_err(backend)?
                    else {
                        return Ok(false);
                    };
                    let before = KeyRecord::try_from(row)?;
                    let Some(quota) = before.limits.quota.and_then(|q| q.refilled(now)) else {
                        return Ok(false);
                    };
                    let mut after = before.clone();
                    after.limits.quota = Some(quota);
                    let columns = LimitColumns::of(&after);
                    sqlx::query(
                        "UPDATE keys SET quota_remaining = $1, quota_refilled_at = $2, \
                         quota_refill_due_at = $3 WHERE id = $4",
                    )
                    .bind(columns.quota_remaining)
                    .bind(columns.quota_refilled_at)
                    .bind(columns.quota_refill_due_at)
                    .bind(id.as_str().to_owned())
                    .execute(tx.conn())
                    .await
                    .map_err(backend)?;
                    let event =
                        AuditEvent::changed(EventKind::KeyQuotaRefilled, &before, &after, audit, now);
                    self.record_event(tx, &event).await?;
                    Ok(true)
                });
                if done? {
                    refilled += 1;
                }
            }
            Ok(refilled)
        }

        async fn watch(&self) -> Result<mpsc::Receiver<Change>, StoreError> {
            self.backend.watch(&self.pool).await
        }

        async fn import(&self, key: &ImportedKey<'_>, audit: &Audit) -> Result<bool, StoreError> {
            in_write!(self, |tx| {
                let seen: Option<(i64,)> =
                    sqlx::query_as("SELECT CAST(1 AS BIGINT) FROM keys WHERE import_origin = $1")
                        .bind(key.origin_id.clone())
                        .fetch_optional(tx.conn())
                        .await
                        .map_err(backend)?;
                if seen.is_some() {
                    return Ok(false);
                }
                let event = AuditEvent::imported(
                    key.record,
                    key.origin.clone(),
                    audit,
                    key.record.created_at,
                );
                self.insert_record(tx, key.record, &event).await?;
                let legacy = key.legacy.as_ref();
                self.exec(
                    tx,
                    sqlx::query(
                        "UPDATE keys SET import_origin = $1, legacy_prefix = $2, \
                         legacy_hash = $3 WHERE id = $4",
                    )
                    .bind(key.origin_id.clone())
                    .bind(legacy.map(|l| l.prefix.clone()))
                    .bind(legacy.map(|l| l.hash.to_stored()))
                    .bind(key.record.id.as_str().to_owned()),
                )
                .await?;
                Ok(true)
            })
        }

        async fn is_imported(&self, origin_id: &str) -> Result<bool, StoreError> {
            let seen: Option<(i64,)> =
                sqlx::query_as("SELECT CAST(1 AS BIGINT) FROM keys WHERE import_origin = $1")
                    .bind(origin_id.to_owned())
                    .fetch_optional(self.pool())
                    .await
                    .map_err(backend)?;
            Ok(seen.is_some())
        }

        async fn find_by_legacy_prefix(
            &self,
            prefix: &str,
        ) -> Result<Vec<(KeyRecord, LegacyCredential)>, StoreError> {
            let found: Vec<(String, String)> = sqlx::query_as(
                "SELECT id, legacy_hash FROM keys WHERE legacy_prefix = $1 \
                 AND legacy_hash IS NOT NULL ORDER BY id LIMIT $2",
            )
            .bind(prefix.to_owned())
            .bind(i64::from(crate::MAX_LEGACY_CANDIDATES))
            .fetch_all(self.pool())
            .await
            .map_err(backend)?;
            let mut out = Vec::with_capacity(found.len());
            for (id, stored) in found {
                let hash = keygate_core::legacy::LegacyHash::parse(&stored)
                    .map_err(|e| StoreError::Corrupt(format!("imported hash: {e}")))?;
                let id = KeyId::parse(&id).ok_or_else(|| StoreError::Corrupt("bad key id".into()))?;
                // Rehashed or removed between the two reads: no longer a candidate.
                if let Some(record) = self.get(&id).await? {
                    out.push((
                        record,
                        LegacyCredential {
                            prefix: prefix.to_owned(),
                            hash,
                        },
                    ));
                }
            }
            Ok(out)
        }

        async fn rehash(
            &self,
            id: &KeyId,
            hash: &KeyHash,
            at: Timestamp,
            audit: &Audit,
        ) -> Result<Option<KeyRecord>, StoreError> {
            in_write!(self, |tx| {
                let select = format!(
                    "SELECT legacy_hash, hash FROM keys WHERE id = $1{}",
                    B::LOCK_ROW
                );
                let found: Option<(Option<String>, Vec<u8>)> =
                    sqlx::query_as(sqlx::AssertSqlSafe(select))
                        .bind(id.as_str().to_owned())
                        .fetch_optional(tx.conn())
                        .await
                        .map_err(backend)?;
                let Some((Some(stored), placeholder)) = found else {
                    return Ok(None);
                };
                let scheme = keygate_core::legacy::LegacyHash::parse(&stored)
                    .map_or("unknown", |h| h.scheme());
                self.exec(
                    tx,
                    sqlx::query("UPDATE keys SET hash = $1, legacy_hash = NULL WHERE id = $2")
                        .bind(hash.as_bytes().to_vec())
                        .bind(id.as_str().to_owned()),
                )
                .await?;
                let row: Row = sqlx::query_as(select_where!("id = $1"))
                    .bind(id.as_str().to_owned())
                    .fetch_one(tx.conn())
                    .await
                    .map_err(backend)?;
                let record = KeyRecord::try_from(row)?;
                self.record_event(tx, &AuditEvent::rehashed(&record, scheme, audit, at))
                    .await?;
                // Caches hold the key under neither hash any more: drop both.
                if let Some(old) = KeyHash::from_slice(&placeholder) {
                    self.signal_change(tx, &old).await?;
                }
                self.signal_change(tx, hash).await?;
                Ok(Some(record))
            })
        }

        async fn imported_kinds(&self) -> Result<ImportedKinds, StoreError> {
            let (legacy,): (bool,) = sqlx::query_as(
                "SELECT EXISTS (SELECT 1 FROM keys WHERE legacy_prefix IS NOT NULL)",
            )
            .fetch_one(self.pool())
            .await
            .map_err(backend)?;
            let (sha256,): (bool,) = sqlx::query_as(
                "SELECT EXISTS (SELECT 1 FROM keys WHERE import_origin IS NOT NULL \
                 AND legacy_prefix IS NULL)",
            )
            .fetch_one(self.pool())
            .await
            .map_err(backend)?;
            Ok(ImportedKinds { legacy, sha256 })
        }

        async fn ping(&self) -> Result<(), StoreError> {
            self.backend.check_identity()?;
            sqlx::query("SELECT 1")
                .execute(self.pool())
                .await
                .map(drop)
                .map_err(backend)
        }

        async fn ping_write(&self, at: Timestamp) -> Result<(), StoreError> {
            self.backend.check_room()?;
            in_write!(self, |tx| {
                self.exec(tx, sqlx::query(
                    "INSERT INTO health_probe (id, at) VALUES (1, $1) \
                     ON CONFLICT (id) DO UPDATE SET at = excluded.at",
                )
                .bind(at.unix_ms()))
                .await
            })
        }

        async fn close(&self) {
            // On SQLite, closing the last connection checkpoints the WAL into the file.
            self.pool().close().await;
        }
    }
}

sql_impl! {
    #[async_trait]
    impl AuditLog {
        async fn append_event(&self, event: &AuditEvent) -> Result<(), StoreError> {
            let mut tx = self.begin_write().await?;
            let result = self.record_event(&mut tx, event).await.map(drop);
            self.finish(tx, result).await
        }

        async fn list_audit(&self, query: &AuditQuery) -> Result<AuditPage, StoreError> {
            let cursor = query.cursor_seq()?;
            let mut sql = rows::audit_query::<B::Db>(query, cursor);
            let found: Vec<rows::AuditRow> = sql
                .build_query_as()
                .fetch_all(self.pool())
                .await
                .map_err(backend)?;
            rows::audit_page(found, query.page_size())
        }
    }
}

sql_impl! {
    #[async_trait]
    impl WebhookOutbox {
        async fn create_endpoint(&self, endpoint: &Endpoint, audit: &Audit) -> Result<(), StoreError> {
            in_write!(self, |tx| {
                sqlx::query(
                    "INSERT INTO webhook_endpoints (id, url, events, secret, slack, enabled, \
                     created_at, receives_secrets) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(endpoint.id.clone())
                .bind(endpoint.url.clone())
                .bind(to_json(&endpoint.events))
                .bind(endpoint.secret.clone())
                .bind(endpoint.slack)
                .bind(endpoint.enabled)
                .bind(endpoint.created_at.unix_ms())
                .bind(endpoint.receives_secrets)
                .execute(tx.conn())
                .await
                .map_err(backend)?;
                let event = AuditEvent::webhook_created(endpoint, audit, endpoint.created_at);
                self.record_event(tx, &event).await.map(drop)
            })
        }

        async fn list_endpoints(&self) -> Result<Vec<Endpoint>, StoreError> {
            let found: Vec<rows::EndpointRow> = sqlx::query_as(
                "SELECT id, url, events, secret, slack, enabled, created_at, receives_secrets \
                 FROM webhook_endpoints ORDER BY id",
            )
            .fetch_all(self.pool())
            .await
            .map_err(backend)?;
            found.into_iter().map(Endpoint::try_from).collect()
        }

        async fn update_endpoint(
            &self,
            id: &str,
            patch: &EndpointPatch,
            at: Timestamp,
            audit: &Audit,
        ) -> Result<Endpoint, StoreError> {
            in_write!(self, |tx| {
                let select = format!(
                    "SELECT id, url, events, secret, slack, enabled, created_at, \
                     receives_secrets FROM webhook_endpoints WHERE id = $1{}",
                    B::LOCK_ROW
                );
                let row: rows::EndpointRow = sqlx::query_as(sqlx::AssertSqlSafe(select))
                    .bind(id.to_owned())
                    .fetch_optional(tx.conn())
                    .await
                    .map_err(backend)?
                    .ok_or(StoreError::NotFound)?;
                let before = Endpoint::try_from(row)?;
                let mut after = before.clone();
                patch.apply(&mut after);
                self.exec(tx, sqlx::query(
                    "UPDATE webhook_endpoints SET url = $1, events = $2, enabled = $3 WHERE id = $4",
                )
                .bind(after.url.clone())
                .bind(to_json(&after.events))
                .bind(after.enabled)
                .bind(after.id.clone()))
                .await?;
                let event = AuditEvent::webhook_changed(&before, &after, audit, at);
                self.record_event(tx, &event).await?;
                Ok(after)
            })
        }

        async fn delete_endpoint(
            &self,
            id: &str,
            at: Timestamp,
            audit: &Audit,
        ) -> Result<(Endpoint, u64), StoreError> {
            in_write!(self, |tx| {
                let select = format!(
                    "SELECT id, url, events, secret, slack, enabled, created_at, \
                     receives_secrets FROM webhook_endpoints WHERE id = $1{}",
                    B::LOCK_ROW
                );
                let row: rows::EndpointRow = sqlx::query_as(sqlx::AssertSqlSafe(select))
                    .bind(id.to_owned())
                    .fetch_optional(tx.conn())
                    .await
                    .map_err(backend)?
                    .ok_or(StoreError::NotFound)?;
                let endpoint = Endpoint::try_from(row)?;
                let (pending,): (i64,) = sqlx::query_as(
                    "SELECT COUNT(*) FROM webhook_deliveries \
                     WHERE endpoint_id = $1 AND status = 'pending'",
                )
                .bind(id.to_owned())
                .fetch_one(tx.conn())
                .await
                .map_err(backend)?;
                self.exec(tx, sqlx::query("DELETE FROM webhook_deliveries WHERE endpoint_id = $1")
                    .bind(id.to_owned()))
                    .await?;
                self.exec(tx, sqlx::query("DELETE FROM webhook_endpoints WHERE id = $1")
                    .bind(id.to_owned()))
                    .await?;
                let dropped = u64::try_from(pending).unwrap_or(0);
                let event = AuditEvent::webhook_deleted(&endpoint, dropped, audit, at);
                self.record_event(tx, &event).await?;
                Ok((endpoint, dropped))
            })
        }

        async fn due_deliveries(
            &self,
            now: Timestamp,
            limit: u32,
        ) -> Result<Vec<Delivery>, StoreError> {
            let found: Vec<rows::DeliveryRow> = outbox::WEBHOOKS
                .due::<B::Db>(now, " AND e.enabled = TRUE", "d.id", limit)
                .build_query_as()
                .fetch_all(self.pool())
                .await
                .map_err(backend)?;
            found.into_iter().map(Delivery::try_from).collect()
        }

        async fn claim_delivery(
            &self,
            id: i64,
            now: Timestamp,
            until: Timestamp,
        ) -> Result<bool, StoreError> {
            let mut claim = outbox::WEBHOOKS.claim::<B::Db>(id, now, until);
            in_write!(self, |tx| self.claimed(tx, claim.build()).await)
        }

        async fn finish_attempt(&self, id: i64, attempt: &Attempt) -> Result<(), StoreError> {
            let mut update = outbox::WEBHOOKS.finish::<B::Db>(id, attempt);
            in_write!(self, |tx| self.exec(tx, update.build()).await)
        }

        async fn list_deliveries(
            &self,
            endpoint_id: &str,
            limit: u32,
        ) -> Result<Vec<Delivery>, StoreError> {
            let found: Vec<rows::DeliveryRow> = outbox::WEBHOOKS
                .page::<B::Db>(vec![("d.endpoint_id", endpoint_id.to_owned())], None, limit)
                .build_query_as()
                .fetch_all(self.pool())
                .await
                .map_err(backend)?;
            found.into_iter().map(Delivery::try_from).collect()
        }
    }
}

sql_impl! {
    #[async_trait]
    impl EmailOutbox {
        fn set_email_routing(&self, routing: EmailRouting) {
            *self
                .email_routing
                .write()
                .unwrap_or_else(|p| p.into_inner()) = std::sync::Arc::new(routing);
        }

        async fn set_owner(
            &self,
            owner: &str,
            contacts: &Contacts,
            at: Timestamp,
            audit: &Audit,
        ) -> Result<(), StoreError> {
            in_write!(self, |tx| {
                // The row stays when the addresses go: it may hold the owner's rate limits.
                {
                    self.exec(tx, sqlx::query(
                        "INSERT INTO owners (owner, emails, digest, updated_at) \
                         VALUES ($1, $2, $3, $4) \
                         ON CONFLICT (owner) DO UPDATE SET emails = excluded.emails, \
                         digest = excluded.digest, updated_at = excluded.updated_at",
                    )
                    .bind(owner.to_owned())
                    .bind(to_json(&contacts.emails))
                    .bind(contacts.digest)
                    .bind(at.unix_ms()))
                    .await?;
                }
                let details = serde_json::json!({
                    "owner": owner, "emails": contacts.emails, "digest": contacts.digest,
                });
                let event = AuditEvent::about_admin(
                    EventKind::OwnerUpdated,
                    audit,
                    at,
                    details.as_object().cloned().unwrap_or_default(),
                );
                self.record_event(tx, &event).await.map(drop)
            })
        }

        async fn owner_contacts(&self, owner: &str) -> Result<Contacts, StoreError> {
            let found: Option<(String, bool)> =
                sqlx::query_as("SELECT emails, digest FROM owners WHERE owner = $1")
                    .bind(owner.to_owned())
                    .fetch_optional(self.pool())
                    .await
                    .map_err(backend)?;
            match found {
                Some((emails, digest)) => Ok(Contacts {
                    emails: serde_json::from_str(&emails)
                        .map_err(|_| StoreError::Corrupt("owner emails".into()))?,
                    digest,
                }),
                None => Ok(Contacts::default()),
            }
        }

        async fn due_emails(&self, now: Timestamp, limit: u32) -> Result<Vec<EmailDelivery>, StoreError> {
            let found: Vec<rows::EmailRow> = outbox::EMAILS
                .due::<B::Db>(now, " AND digest = FALSE", "id", limit)
                .build_query_as()
                .fetch_all(self.pool())
                .await
                .map_err(backend)?;
            found.into_iter().map(EmailDelivery::try_from).collect()
        }

        async fn due_digest_notices(
            &self,
            now: Timestamp,
            limit: u32,
        ) -> Result<Vec<EmailDelivery>, StoreError> {
            let found: Vec<rows::EmailRow> = outbox::EMAILS
                .due::<B::Db>(now, " AND digest = TRUE", "recipient, id", limit)
                .build_query_as()
                .fetch_all(self.pool())
                .await
                .map_err(backend)?;
            found.into_iter().map(EmailDelivery::try_from).collect()
        }

        async fn claim_email(
            &self,
            id: i64,
            now: Timestamp,
            until: Timestamp,
        ) -> Result<bool, StoreError> {
            let mut claim = outbox::EMAILS.claim::<B::Db>(id, now, until);
            in_write!(self, |tx| self.claimed(tx, claim.build()).await)
        }

        async fn finish_email(&self, id: i64, attempt: &Attempt) -> Result<(), StoreError> {
            let mut update = outbox::EMAILS.finish::<B::Db>(id, attempt);
            in_write!(self, |tx| self.exec(tx, update.build()).await)
        }

        async fn list_emails(&self, query: &EmailQuery) -> Result<EmailPage, StoreError> {
            let size = query.page_size();
            let mut filters = Vec::new();
            if let Some(status) = query.status {
                filters.push(("status", status.as_str().to_owned()));
            }
            if let Some(recipient) = &query.recipient {
                filters.push(("LOWER(recipient)", recipient.trim().to_ascii_lowercase()));
            }
            if let Some(owner) = &query.owner {
                filters.push(("owner", owner.clone()));
            }
            let found: Vec<rows::EmailRow> = outbox::EMAILS
                .page::<B::Db>(filters, query.cursor_id()?, size + 1)
                .build_query_as()
                .fetch_all(self.pool())
                .await
                .map_err(backend)?;
            let mut items = found
                .into_iter()
                .map(EmailDelivery::try_from)
                .collect::<Result<Vec<_>, _>>()?;
            let next_cursor = if items.len() > size as usize {
                items.truncate(size as usize);
                items.last().map(|e| e.id.to_string())
            } else {
                None
            };
            Ok(EmailPage { items, next_cursor })
        }
    }
}

sql_impl! {
    #[async_trait]
    impl AdminAccounts {
        async fn set_admin_user(&self, user: &AdminUser, audit: &Audit) -> Result<(), StoreError> {
            in_write!(self, |tx| {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO admin_users ({}) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (username) DO UPDATE SET password_hash = excluded.password_hash, \
                     read_only = excluded.read_only, updated_at = excluded.updated_at",
                    rows::ADMIN_USER_COLUMNS
                )))
                .bind(user.username.clone())
                .bind(user.password_hash.clone())
                .bind(user.read_only)
                .bind(user.created_at.unix_ms())
                .bind(user.updated_at.unix_ms())
                .execute(tx.conn())
                .await
                .map_err(backend)?;
                self.record_event(tx, &rows::password_set_event(user, audit))
                    .await
                    .map(drop)
            })
        }

        async fn get_admin_user(&self, username: &str) -> Result<Option<AdminUser>, StoreError> {
            let row: Option<rows::AdminUserRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {} FROM admin_users WHERE username = $1",
                rows::ADMIN_USER_COLUMNS
            )))
            .bind(username.to_owned())
            .fetch_optional(self.pool())
            .await
            .map_err(backend)?;
            row.map(AdminUser::try_from).transpose()
        }

        async fn list_admin_users(&self) -> Result<Vec<AdminUser>, StoreError> {
            let found: Vec<rows::AdminUserRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {} FROM admin_users ORDER BY username",
                rows::ADMIN_USER_COLUMNS
            )))
            .fetch_all(self.pool())
            .await
            .map_err(backend)?;
            found.into_iter().map(AdminUser::try_from).collect()
        }

        async fn remove_admin_user(
            &self,
            username: &str,
            at: Timestamp,
            audit: &Audit,
        ) -> Result<bool, StoreError> {
            in_write!(self, |tx| {
                let removed: Option<(String,)> =
                    sqlx::query_as("DELETE FROM admin_users WHERE username = $1 RETURNING username")
                        .bind(username.to_owned())
                        .fetch_optional(tx.conn())
                        .await
                        .map_err(backend)?;
                if removed.is_none() {
                    return Ok(false);
                }
                self.record_event(tx, &rows::user_removed_event(username, audit, at))
                    .await?;
                Ok(true)
            })
        }

        async fn create_session(&self, session: &AdminSession) -> Result<(), StoreError> {
            in_write!(self, |tx| {
                self.exec(tx, sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO admin_sessions ({}) VALUES ($1, $2, $3, $4, $5)",
                    rows::SESSION_COLUMNS
                )))
                .bind(session.id.to_vec())
                .bind(session.principal.encode())
                .bind(session.csrf.clone())
                .bind(session.created_at.unix_ms())
                .bind(session.last_seen_at.unix_ms()))
                .await
            })
        }

        async fn get_session(&self, id: &[u8; 32]) -> Result<Option<AdminSession>, StoreError> {
            let row: Option<rows::SessionRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {} FROM admin_sessions WHERE id = $1",
                rows::SESSION_COLUMNS
            )))
            .bind(id.to_vec())
            .fetch_optional(self.pool())
            .await
            .map_err(backend)?;
            row.map(AdminSession::try_from).transpose()
        }

        async fn touch_session(&self, id: &[u8; 32], at: Timestamp) -> Result<(), StoreError> {
            in_write!(self, |tx| {
                self.exec(tx, sqlx::query(
                    "UPDATE admin_sessions SET last_seen_at = $1 WHERE id = $2 AND last_seen_at < $1",
                )
                .bind(at.unix_ms())
                .bind(id.to_vec()))
                .await
            })
        }

        async fn end_session(&self, id: &[u8; 32]) -> Result<(), StoreError> {
            // Its messages go with it (`ON DELETE CASCADE`).
            in_write!(self, |tx| {
                self.exec(tx, sqlx::query("DELETE FROM admin_sessions WHERE id = $1")
                    .bind(id.to_vec()))
                    .await
            })
        }

        async fn purge_sessions(
            &self,
            idle_before: Timestamp,
            begun_before: Timestamp,
        ) -> Result<u64, StoreError> {
            in_write!(self, |tx| {
                let ended: Vec<(Vec<u8>,)> = sqlx::query_as(
                    "DELETE FROM admin_sessions WHERE last_seen_at < $1 OR created_at < $2 \
                     RETURNING id",
                )
                .bind(idle_before.unix_ms())
                .bind(begun_before.unix_ms())
                .fetch_all(tx.conn())
                .await
                .map_err(backend)?;
                Ok(ended.len() as u64)
            })
        }

        async fn push_flash(&self, id: &[u8; 32], sealed: &str) -> Result<(), StoreError> {
            in_write!(self, |tx| {
                self.exec(tx, sqlx::query("INSERT INTO admin_flashes (session_id, sealed) VALUES ($1, $2)")
                    .bind(id.to_vec())
                    .bind(sealed.to_owned()))
                    .await
            })
        }

        async fn take_flashes(&self, id: &[u8; 32]) -> Result<Vec<String>, StoreError> {
            let mut tx = self.begin_write().await?;
            let result = sqlx::query_as(
                "DELETE FROM admin_flashes WHERE session_id = $1 RETURNING id, sealed",
            )
            .bind(id.to_vec())
            .fetch_all(tx.conn())
            .await
            .map_err(backend);
            let mut taken: Vec<(i64, String)> = self.finish(tx, result).await?;
            taken.sort_by_key(|(n, _)| *n);
            Ok(taken.into_iter().map(|(_, sealed)| sealed).collect())
        }

        async fn count_sign_in(
            &self,
            subjects: &[String],
            plan: &AttemptsPlan<'_>,
        ) -> Result<Vec<Option<SignInAttempts>>, StoreError> {
            in_write!(self, |tx| {
                let mut read = Vec::with_capacity(subjects.len());
                for subject in subjects {
                    let select = format!(
                        "SELECT failures, last_at, locked_until, pending, pending_since \
                         FROM sign_in_attempts WHERE subject = $1{}",
                        B::LOCK_ROW
                    );
                    let row: Option<rows::AttemptsRow> =
                        sqlx::query_as(sqlx::AssertSqlSafe(select))
                            .bind(subject.clone())
                            .fetch_optional(tx.conn())
                            .await
                            .map_err(backend)?;
                    read.push(row.map(SignInAttempts::try_from).transpose()?);
                }
                for (subject, next) in subjects.iter().zip(plan(&read)) {
                    let query = match next {
                        Some(a) => sqlx::query(
                            "INSERT INTO sign_in_attempts (subject, failures, last_at, \
                             locked_until, pending, pending_since) VALUES ($1, $2, $3, $4, $5, $6) \
                             ON CONFLICT (subject) DO UPDATE SET failures = excluded.failures, \
                             last_at = excluded.last_at, locked_until = excluded.locked_until, \
                             pending = excluded.pending, pending_since = excluded.pending_since",
                        )
                        .bind(subject.clone())
                        .bind(i32::try_from(a.failures).unwrap_or(i32::MAX))
                        .bind(time(a.last_at))
                        .bind(time(a.locked_until))
                        .bind(i32::try_from(a.pending).unwrap_or(i32::MAX))
                        .bind(time(a.pending_since)),
                        None => sqlx::query("DELETE FROM sign_in_attempts WHERE subject = $1")
                            .bind(subject.clone()),
                    };
                    self.exec(tx, query).await?;
                }
                Ok(read)
            })
        }

        async fn purge_sign_in_counts(&self, before: Timestamp) -> Result<u64, StoreError> {
            in_write!(self, |tx| {
                let purged: Vec<(String,)> = sqlx::query_as(
                    "DELETE FROM sign_in_attempts WHERE (last_at IS NULL OR last_at < $1) \
                     AND (locked_until IS NULL OR locked_until < $1) \
                     AND (pending_since IS NULL OR pending_since < $1) RETURNING subject",
                )
                .bind(before.unix_ms())
                .fetch_all(tx.conn())
                .await
                .map_err(backend)?;
                Ok(purged.len() as u64)
            })
        }

        async fn server_secret(&self, name: &str, fresh: &[u8; 32]) -> Result<[u8; 32], StoreError> {
            in_write!(self, |tx| {
                self.exec(
                    tx,
                    sqlx::query(
                        "INSERT INTO server_secrets (name, value) VALUES ($1, $2) \
                         ON CONFLICT (name) DO NOTHING",
                    )
                    .bind(name.to_owned())
                    .bind(fresh.to_vec()),
                )
                .await?;
                let (stored,): (Vec<u8>,) =
                    sqlx::query_as("SELECT value FROM server_secrets WHERE name = $1")
                        .bind(name.to_owned())
                        .fetch_one(tx.conn())
                        .await
                        .map_err(backend)?;
                stored
                    .try_into()
                    .map_err(|_| StoreError::Corrupt(format!("server secret {name}")))
            })
        }
    }
}

mod usage;
