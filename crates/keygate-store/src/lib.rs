//! keygate-store: the one door to a database.
//!
//! The store is reached through role traits — [`KeyStore`] (keys, their change feed, health),
//! [`AuditLog`], [`WebhookOutbox`] and [`AdminAccounts`] — so that a caller depends on the role
//! it needs: verification needs [`KeyStore`] only. [`Store`] is all four together, what
//! [`open`] returns.
//!
//! There is one implementation, [`SqlStore`], whose SQL is written once over sqlx (`$n`
//! placeholders, which SQLite accepts as well as PostgreSQL). A small [`Backend`] per database
//! supplies only what truly differs: opening and migrating, how a write transaction starts and
//! locks, the change feed, and batched usage writes.
//!
//! - [`SqliteStore`] (feature `sqlite`): the embedded default, a file with zero set-up;
//!   other processes on the same file follow changes through a change log.
//! - [`PostgresStore`] (feature `postgres`): many keygate nodes on one database; every change
//!   reaches every node through `LISTEN/NOTIFY`.
//!
//! A store holds no rule of its own: changes go through keygate-core ([`KeyPatch::apply`],
//! [`KeyRecord::revoke`], [`plan_rotation`](keygate_core::plan_rotation)) inside a transaction,
//! and the status filter of [`KeyStore::list`] is checked against [`KeyRecord::status`] by the
//! conformance suite (feature `test-util`), which every backend passes against a real database.
//!
//! ```no_run
//! # async fn demo() -> Result<(), keygate_store::StoreError> {
//! use keygate_store::{KeyStore, ListQuery};
//! let store = keygate_store::open("sqlite://keygate.db").await?;
//! # let now = keygate_core::Timestamp::from_unix_ms(0).unwrap();
//! let page = store.list(&ListQuery::new(now)).await?;
//! println!("{} keys", page.items.len());
//! # Ok(()) }
//! ```
//!
//! [`KeyPatch::apply`]: keygate_core::KeyPatch::apply
//! [`KeyRecord::revoke`]: keygate_core::KeyRecord::revoke
//! [`KeyRecord::status`]: keygate_core::KeyRecord::status

use std::sync::Arc;

use keygate_core::RecordError;

pub mod accounts;
#[cfg(feature = "bench")]
pub mod bulk;
#[cfg(feature = "test-util")]
pub mod conformance;
#[cfg(feature = "sqlite")]
mod dbfile;
pub mod django;
#[cfg(feature = "postgres")]
mod postgres;
mod query;
mod roles;
mod sql;
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(feature = "test-util")]
pub mod testing;

pub use accounts::{AdminSession, AdminUser, AttemptsPlan, Principal, SignInAttempts};
#[cfg(feature = "postgres")]
pub use postgres::{Postgres, PostgresStore};
pub use query::{
    Attempt, AuditPage, AuditQuery, Change, DEFAULT_PAGE_SIZE, EmailPage, EmailQuery, ImportedKey,
    ImportedKinds, LegacyCredential, ListQuery, MAX_PAGE_SIZE, Page, RetirePlan, RotationPlan,
    Spend, StatusCounts, SweepFilter, UsageDelta,
};
pub use roles::{
    AdminAccounts, AuditLog, EmailOutbox, KeyStore, MAX_LEGACY_CANDIDATES, Store, UsageLog,
    WebhookOutbox,
};
pub use sql::{Backend, SqlStore};
#[cfg(feature = "sqlite")]
pub use sqlite::{Sqlite, SqliteStore};

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
    /// A stored row cannot be read back.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// The database failed (as opposed to refusing what was asked): `true` for
    /// [`StoreError::Backend`] and [`StoreError::Config`].
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Backend(_) | Self::Config(_))
    }
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
        #[cfg(feature = "postgres")]
        return Ok(Arc::new(PostgresStore::connect(url).await?));
        #[cfg(not(feature = "postgres"))]
        return Err(StoreError::Config(
            "this build has no PostgreSQL support (cargo feature `postgres`)".into(),
        ));
    }
    if url.starts_with("sqlite:") || !url.contains("://") {
        #[cfg(feature = "sqlite")]
        return Ok(Arc::new(SqliteStore::connect(url).await?));
        #[cfg(not(feature = "sqlite"))]
        return Err(StoreError::Config(
            "this build has no SQLite support (cargo feature `sqlite`)".into(),
        ));
    }
    let scheme = url.split("://").next().unwrap_or_default();
    Err(StoreError::Config(format!(
        "unsupported database URL scheme `{scheme}`; use sqlite://PATH or postgres://..."
    )))
}
