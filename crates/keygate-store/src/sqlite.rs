//! SQLite: one file, WAL mode, migrations from `migrations/sqlite` applied on open. Changes
//! are logged in `key_changes` so that other processes on the same file can follow them.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use keygate_core::{KeyHash, KeyId, Timestamp};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{SqliteConnection, SqlitePool};
use tokio::sync::mpsc;

use crate::sql::{Backend, SqlStore, backend};
use crate::{Change, StoreError};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// How often a watcher looks for changes made by other processes.
const POLL_EVERY: Duration = Duration::from_millis(200);
/// How long entries stay in the change log (a watcher further behind than this resyncs).
const CHANGE_LOG_KEEP_MS: i64 = 10 * 60 * 1000;

/// The store in a SQLite file.
pub type SqliteStore = SqlStore<Sqlite>;

/// The SQLite [`Backend`].
#[derive(Debug)]
pub struct Sqlite {
    pool: SqlitePool,
    /// The file and its identity (device, inode) when it was opened; `None` in memory.
    file: Option<(PathBuf, (u64, u64))>,
}

impl SqlStore<Sqlite> {
    /// Opens (creating if needed, readable by its owner only) the database at `url`
    /// (`sqlite://path`, `sqlite:path`, a plain path, or `sqlite::memory:`), turns on WAL and
    /// applies pending migrations.
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
        let path = (!memory).then(|| options.get_filename().to_path_buf());
        if let Some(path) = &path {
            create_private(path)?;
        }
        // Each in-memory connection would be a separate database: keep exactly one. Files: no
        // ping before each use (a broken connection fails its query, which is reported).
        let pool_options = if memory {
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
        } else {
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
        let file = match path {
            Some(path) => {
                let identity = identity(&path).map_err(|e| {
                    StoreError::Backend(format!("cannot read {}: {e}", path.display()))
                })?;
                Some((path, identity))
            }
            None => None,
        };
        Ok(Self::new(Sqlite { pool, file }))
    }
}

/// Creates the database file empty with mode 0600 if it is missing, so that SQLite (which
/// gives `-wal` and `-shm` the database file's mode) never makes any of them world-readable.
fn create_private(path: &std::path::Path) -> Result<(), StoreError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Backend(format!(
            "cannot create {}: {e}",
            path.display()
        ))),
    }
}

/// The file's (device, inode): what tells the file at a path from one that replaced it.
fn identity(path: &std::path::Path) -> std::io::Result<(u64, u64)> {
    let meta = std::fs::metadata(path)?;
    #[cfg(unix)]
    let identity = {
        use std::os::unix::fs::MetadataExt;
        (meta.dev(), meta.ino())
    };
    // Elsewhere only a missing file is noticed.
    #[cfg(not(unix))]
    let identity = (0, u64::from(meta.is_file()));
    Ok(identity)
}

impl Backend for Sqlite {
    type Db = sqlx::Sqlite;
    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";
    const LOCK_ROW: &'static str = "";
    const LOCK_KEYS_TABLE: Option<&'static str> = None;
    const LIKE: &'static str = "LIKE";
    /// `+id` keeps the planner from walking the id index (a random row lookup per key:
    /// 300 ms at 100,000 keys) instead of scanning the table and sorting the few matches.
    const FILTERED_ORDER: &'static str = " ORDER BY +id DESC LIMIT ";

    fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    async fn signal_change(
        &self,
        conn: &mut SqliteConnection,
        hash: &KeyHash,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO key_changes (hash, changed_at) VALUES ($1, $2)")
            .bind(hash.as_bytes().to_vec())
            .bind(now_ms())
            .execute(conn)
            .await
            .map(drop)
            .map_err(backend)
    }

    async fn record_usage(
        &self,
        conn: &mut SqliteConnection,
        usage: &[(KeyId, Timestamp)],
    ) -> Result<(), StoreError> {
        // One short statement per key, in the caller's transaction: no array parameters here.
        for (id, at) in usage {
            sqlx::query(
                "UPDATE keys SET last_used_at = $1 WHERE id = $2 \
                 AND (last_used_at IS NULL OR last_used_at < $1)",
            )
            .bind(at.unix_ms())
            .bind(id.as_str().to_owned())
            .execute(&mut *conn)
            .await
            .map_err(backend)?;
        }
        Ok(())
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

    fn check_identity(&self) -> Result<(), StoreError> {
        let Some((path, opened)) = &self.file else {
            return Ok(());
        };
        match identity(path) {
            Ok(now) if now == *opened => Ok(()),
            _ => {
                tracing::error!(path = %path.display(), "the SQLite database file was deleted or replaced while open; refusing to write to it (restart keygate)");
                Err(StoreError::Backend(format!(
                    "the database file {} was deleted or replaced while keygate had it open; \
                     restart keygate",
                    path.display()
                )))
            }
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
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
            sqlx::query_as("SELECT seq, hash FROM key_changes WHERE seq > $1 ORDER BY seq")
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
            let _ = sqlx::query("DELETE FROM key_changes WHERE changed_at < $1")
                .bind(now_ms() - CHANGE_LOG_KEEP_MS)
                .execute(&pool)
                .await;
        }
    }
}
