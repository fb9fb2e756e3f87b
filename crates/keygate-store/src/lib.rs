//! keygate-store: the one door to a database.
//!
//! [`Store`] is a handful of async methods over [`KeyRecord`]s; [`SqliteStore`] is the embedded
//! default (a file, zero set-up, migrations applied on open). [`open`] picks a backend from a
//! URL. Every backend must pass the shared [`conformance`] suite against a real database.
//!
//! [`PostgresStore`] is for many keygate nodes on one database; it tells every node about
//! key changes with `LISTEN/NOTIFY`.
//!
//! A store holds no rule of its own: changes go through keygate-core ([`KeyPatch::apply`],
//! [`KeyRecord::revoke`]) inside a transaction, and the status filter of [`Store::list`] is
//! checked against [`KeyRecord::status`] by the conformance suite.
//!
//! ```no_run
//! # async fn demo() -> Result<(), keygate_store::StoreError> {
//! use keygate_store::{ListQuery, Store};
//! let store = keygate_store::open("sqlite://keygate.db").await?;
//! # let now = keygate_core::Timestamp::from_unix_ms(0).unwrap();
//! let page = store.list(&ListQuery::new(now)).await?;
//! println!("{} keys", page.items.len());
//! # Ok(()) }
//! ```

use std::sync::Arc;

use async_trait::async_trait;
use keygate_core::webhook::{Delivery, Endpoint};
use keygate_core::{
    AdminSession, AdminUser, Audit, AuditEvent, EventKind, KeyHash, KeyId, KeyPatch, KeyRecord,
    RecordError, Status, Timestamp,
};

#[cfg(feature = "bench")]
pub mod bulk;
pub mod conformance;
mod postgres;
mod sessions;
mod sql;
mod sqlite;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// Default page size for [`Store::list`].
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// Largest page size [`Store::list`] returns.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// What can go wrong in a store. Messages never contain a key or a hash.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No key has that id.
    #[error("no key with that id")]
    NotFound,
    /// A key with that id or hash exists already.
    #[error("a key with that id or hash exists already")]
    Duplicate,
    /// The change breaks a key rule (bad field, or the key is revoked).
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The pagination cursor is not one this store handed out.
    #[error("invalid cursor")]
    InvalidCursor,
    /// The database URL or options are not usable.
    #[error("{0}")]
    Config(String),
    /// The database failed or could not be reached.
    #[error("database error: {0}")]
    Backend(String),
    /// A stored row cannot be read back as a key record.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// Filters and position for [`Store::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    /// Only keys with this owner.
    pub owner: Option<String>,
    /// Only keys with this status at [`ListQuery::now`]; `None` for all.
    pub status: Option<Status>,
    /// Only keys whose name contains this text (ASCII case-insensitive).
    pub name_contains: Option<String>,
    /// Only keys whose name, owner or display start contains this text (ASCII
    /// case-insensitive): the admin UI's search box.
    pub search: Option<String>,
    /// Page size, 1 to [`MAX_PAGE_SIZE`] (out-of-range values are clamped).
    pub limit: u32,
    /// Where the previous page ended ([`Page::next_cursor`]).
    pub cursor: Option<String>,
    /// The time the status filter is judged at.
    pub now: Timestamp,
    /// Only keys a lifecycle sweep may have to act on (a superset: keygate-core decides).
    pub sweep: Option<SweepFilter>,
}

/// Which keys a lifecycle sweep looks at, so that it reads those rather than every key. Any
/// key matching one of the set conditions (and not revoked) is listed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepFilter {
    /// Keys older than their own maximum age, or than this one (milliseconds), unrotated.
    pub max_age_ms: Option<i64>,
    /// Keys not yet expired that expire at or before this time.
    pub expiring_until: Option<Timestamp>,
    /// Keys expired at or after this time (and by [`ListQuery::now`]).
    pub expired_since: Option<Timestamp>,
}

impl ListQuery {
    /// All keys, first page, default size, status judged at `now`.
    pub fn new(now: Timestamp) -> Self {
        Self {
            owner: None,
            status: None,
            name_contains: None,
            search: None,
            limit: DEFAULT_PAGE_SIZE,
            cursor: None,
            now,
            sweep: None,
        }
    }

    /// The limit clamped to 1..=[`MAX_PAGE_SIZE`].
    pub fn page_size(&self) -> u32 {
        self.limit.clamp(1, MAX_PAGE_SIZE)
    }

    /// The cursor as a key id, if one was given.
    pub fn cursor_id(&self) -> Result<Option<KeyId>, StoreError> {
        self.cursor
            .as_deref()
            .map(|c| KeyId::parse(c).ok_or(StoreError::InvalidCursor))
            .transpose()
    }
}

/// One page of keys, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The keys on this page.
    pub items: Vec<KeyRecord>,
    /// Pass this as [`ListQuery::cursor`] for the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// How a rotation turns the stored record into (the old record as it must now be, its
/// successor); see [`Store::rotate`].
pub type RotationPlan<'a> =
    dyn Fn(&KeyRecord) -> Result<(KeyRecord, KeyRecord), RecordError> + Send + Sync + 'a;

/// The outcome of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// When it was made.
    pub at: Timestamp,
    /// The receiver answered 2xx.
    pub delivered: bool,
    /// The receiver's HTTP status, if it answered.
    pub status: Option<u16>,
    /// What went wrong, if anything.
    pub error: Option<String>,
    /// When to try again; `None` with `delivered == false` gives up.
    pub next_attempt_at: Option<Timestamp>,
}

/// Filters and position for [`Store::list_audit`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only events about this key.
    pub key_id: Option<KeyId>,
    /// Only events of this kind.
    pub kind: Option<EventKind>,
    /// Only events at or after this time.
    pub since: Option<Timestamp>,
    /// Page size, 1 to [`MAX_PAGE_SIZE`] (0 means the default).
    pub limit: u32,
    /// Where the previous page ended ([`AuditPage::next_cursor`]).
    pub cursor: Option<String>,
    /// Newest events first (the default is oldest first, the order to follow the trail in).
    pub newest_first: bool,
}

impl AuditQuery {
    /// The limit clamped to 1..=[`MAX_PAGE_SIZE`] (default [`DEFAULT_PAGE_SIZE`]).
    pub fn page_size(&self) -> u32 {
        if self.limit == 0 {
            DEFAULT_PAGE_SIZE
        } else {
            self.limit.min(MAX_PAGE_SIZE)
        }
    }

    /// The cursor as a position in the trail.
    pub fn cursor_seq(&self) -> Result<Option<i64>, StoreError> {
        self.cursor
            .as_deref()
            .map(|c| {
                c.parse::<i64>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or(StoreError::InvalidCursor)
            })
            .transpose()
    }
}

/// One page of audit events, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditPage {
    /// The events.
    pub items: Vec<AuditEvent>,
    /// Pass as [`AuditQuery::cursor`] for the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// How many keys have each [`Status`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusCounts {
    /// Usable keys.
    pub active: u64,
    /// Disabled keys.
    pub disabled: u64,
    /// Expired keys.
    pub expired: u64,
    /// Revoked keys.
    pub revoked: u64,
}

impl StatusCounts {
    /// The count for one status.
    pub fn get(&self, status: Status) -> u64 {
        match status {
            Status::Active => self.active,
            Status::Disabled => self.disabled,
            Status::Expired => self.expired,
            Status::Revoked => self.revoked,
        }
    }

    /// All keys.
    pub fn total(&self) -> u64 {
        self.active + self.disabled + self.expired + self.revoked
    }
}

/// A change to a stored key, made by any process, that caches must act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The key with this hash was created, changed or revoked.
    Key(KeyHash),
    /// Changes may have been missed (a lost connection): drop everything.
    Everything,
}

/// Storage for key records. Implementations hold no key rules: they store, find and apply
/// keygate-core's changes atomically.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Stores a new record, and its `key.created` event. [`StoreError::Duplicate`] if its id or
    /// hash is taken.
    async fn create(&self, record: &KeyRecord, audit: &Audit) -> Result<(), StoreError>;

    /// Stores `record` only if the store holds no key at all, atomically (for the bootstrap
    /// admin key: several nodes starting on one empty database must issue one key, not one
    /// each). `Ok(false)` if there were keys already.
    async fn create_if_empty(&self, record: &KeyRecord, audit: &Audit) -> Result<bool, StoreError>;

    /// The record with this id.
    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError>;

    /// The record with this hash: the verify path's lookup.
    async fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, StoreError>;

    /// Keys matching `query`, newest first, one page at a time.
    async fn list(&self, query: &ListQuery) -> Result<Page, StoreError>;

    /// Applies `patch` atomically, with its `key.updated` event (time `at`), and returns the
    /// updated record.
    async fn update(
        &self,
        id: &KeyId,
        patch: KeyPatch,
        at: Timestamp,
        audit: &Audit,
    ) -> Result<KeyRecord, StoreError>;

    /// Revokes the key at `at` atomically, with its `key.revoked` event, and returns the updated
    /// record. [`RecordError::AlreadyRevoked`] if it was revoked before.
    async fn revoke(
        &self,
        id: &KeyId,
        at: Timestamp,
        reason: Option<String>,
        audit: &Audit,
    ) -> Result<KeyRecord, StoreError>;

    /// Rotates the key `id` in one transaction: `plan` (keygate-core's
    /// [`plan_rotation`](keygate_core::plan_rotation)) turns the stored record into the old
    /// record as it must now be and its successor; both are written, with `key.rotated` and
    /// `key.created` events. With `sealed` (the successor's plaintext, sealed by the caller),
    /// also queues it for every enabled endpoint that receives secrets. Returns (old,
    /// successor).
    async fn rotate(
        &self,
        id: &KeyId,
        plan: &RotationPlan<'_>,
        at: Timestamp,
        audit: &Audit,
        sealed: Option<&str>,
    ) -> Result<(KeyRecord, KeyRecord), StoreError>;

    /// Appends a notice that changes no key (`key.expiring_soon`, `key.expired`,
    /// `key.max_age_exceeded`) to the audit trail.
    async fn append_event(&self, event: &AuditEvent) -> Result<(), StoreError>;

    /// Adds a webhook endpoint, with its `webhook.created` event.
    async fn create_endpoint(&self, endpoint: &Endpoint, audit: &Audit) -> Result<(), StoreError>;

    /// Every webhook endpoint.
    async fn list_endpoints(&self) -> Result<Vec<Endpoint>, StoreError>;

    /// Adds an admin-UI user, or replaces the password and role of an existing one (keeping
    /// its creation time), with an `admin.password_set` event, in one transaction.
    async fn set_admin_user(&self, user: &AdminUser, audit: &Audit) -> Result<(), StoreError>;

    /// The admin-UI user called `username`.
    async fn get_admin_user(&self, username: &str) -> Result<Option<AdminUser>, StoreError>;

    /// Every admin-UI user, by name.
    async fn list_admin_users(&self) -> Result<Vec<AdminUser>, StoreError>;

    /// Removes admin-UI user `username`, with an `admin.user_removed` event, in one
    /// transaction; `false` (and nothing written) if there is no such user. Their sessions end
    /// at their next request.
    async fn remove_admin_user(
        &self,
        username: &str,
        at: Timestamp,
        audit: &Audit,
    ) -> Result<bool, StoreError>;

    /// Stores a new admin-UI session.
    async fn create_session(&self, session: &AdminSession) -> Result<(), StoreError>;

    /// The session whose token hashes to `id`.
    async fn get_session(&self, id: &[u8; 32]) -> Result<Option<AdminSession>, StoreError>;

    /// Records a request in session `id` at `at`.
    async fn touch_session(&self, id: &[u8; 32], at: Timestamp) -> Result<(), StoreError>;

    /// Ends session `id` (and drops its messages).
    async fn end_session(&self, id: &[u8; 32]) -> Result<(), StoreError>;

    /// Ends every session idle since before `idle_before` or begun before `begun_before`;
    /// returns how many.
    async fn purge_sessions(
        &self,
        idle_before: Timestamp,
        begun_before: Timestamp,
    ) -> Result<u64, StoreError>;

    /// Queues a (sealed) one-time message for session `id`'s next page.
    async fn push_flash(&self, id: &[u8; 32], sealed: &str) -> Result<(), StoreError>;

    /// Takes session `id`'s messages, oldest first: a message is returned once, to one caller.
    async fn take_flashes(&self, id: &[u8; 32]) -> Result<Vec<String>, StoreError>;

    /// Pending deliveries whose next attempt is due at `now`, oldest first.
    async fn due_deliveries(&self, now: Timestamp, limit: u32)
    -> Result<Vec<Delivery>, StoreError>;

    /// Records the outcome of an attempt at delivery `id` (a no-op if it is no longer pending).
    async fn finish_attempt(&self, id: i64, attempt: &Attempt) -> Result<(), StoreError>;

    /// The latest deliveries to an endpoint, newest first: its delivery log.
    async fn list_deliveries(
        &self,
        endpoint_id: &str,
        limit: u32,
    ) -> Result<Vec<Delivery>, StoreError>;

    /// Audit events matching `query`, oldest first, one page at a time. The trail is
    /// append-only: no method changes or removes an event.
    async fn list_audit(&self, query: &AuditQuery) -> Result<AuditPage, StoreError>;

    /// Records last-used times in one batch; a time never moves backwards; unknown ids are
    /// ignored.
    async fn record_usage(&self, usage: &[(KeyId, Timestamp)]) -> Result<(), StoreError>;

    /// How many keys have each status at `now`.
    async fn count_by_status(&self, now: Timestamp) -> Result<StatusCounts, StoreError>;

    /// Checks that the database answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Follows changes to keys made by any process on this database, this one included,
    /// until the receiver is dropped. A backend without a change feed returns a receiver that
    /// never yields (caches then rely on their TTL).
    async fn watch(&self) -> Result<tokio::sync::mpsc::Receiver<Change>, StoreError> {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        // Keep the sender alive for as long as anyone listens, so the stream stays open.
        tokio::spawn(async move { tx.closed().await });
        Ok(rx)
    }

    /// Closes the store's connections (for a clean shutdown); later calls fail.
    async fn close(&self) {}
}

/// Opens the store a URL names, creating and migrating it as needed.
///
/// - `sqlite://path/to/file.db`, `sqlite:file.db` or a plain path: SQLite (created on first use);
/// - `sqlite::memory:`: an in-memory SQLite database (gone when the process ends);
/// - `postgres://user@host:5432/db` (or `postgresql://`): PostgreSQL, migrated on open.
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    let url = url.trim();
    if url.is_empty() {
        return Err(StoreError::Config("the database URL is empty".into()));
    }
    if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        return Ok(Arc::new(PostgresStore::connect(url).await?));
    }
    if url.starts_with("sqlite:") || !url.contains("://") {
        return Ok(Arc::new(SqliteStore::connect(url).await?));
    }
    let scheme = url.split("://").next().unwrap_or_default();
    Err(StoreError::Config(format!(
        "unsupported database URL scheme `{scheme}`; use sqlite://PATH or postgres://..."
    )))
}

/// Creates a uniquely named, empty schema in the PostgreSQL at `base_url` and returns its name:
/// for tests that must not share tables (see [`with_search_path`]).
///
/// # Panics
/// If the database cannot be reached: a test that asked for PostgreSQL must not pass without it.
pub async fn test_schema(base_url: &str) -> String {
    use sqlx::Connection;
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).expect("random");
    let name: String = std::iter::once("kgtest_".to_owned())
        .chain(random.iter().map(|b| format!("{b:02x}")))
        .collect();
    let mut conn = sqlx::PgConnection::connect(base_url)
        .await
        .unwrap_or_else(|e| panic!("KEYGATE_TEST_POSTGRES: cannot connect: {e}"));
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {name}")))
        .execute(&mut conn)
        .await
        .expect("create schema");
    name
}

/// `base_url` with `search_path` set to `schema`, so that everything keygate creates and reads
/// lives there.
pub fn with_search_path(base_url: &str, schema: &str) -> String {
    let separator = if base_url.contains('?') { '&' } else { '?' };
    format!("{base_url}{separator}options=-csearch_path%3D{schema}")
}
