//! SQLite: one file, WAL mode, migrations from `migrations/sqlite` applied on open. Changes
//! are logged in `key_changes` so that other processes on the same file can follow them.

use std::str::FromStr;
use std::time::Duration;

use keygate_core::KeyHash;
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use tokio::sync::mpsc;

use crate::dbfile::DbFile;
use crate::sql::{Backend, SqlStore, backend};
use crate::{Change, StoreError};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// How often a watcher looks for changes made by other processes.
const POLL_EVERY: Duration = Duration::from_millis(200);
/// How long entries stay in the change log (a watcher further behind than this resyncs).
const CHANGE_LOG_KEEP_MS: i64 = 10 * 60 * 1000;

/// SQLite's own clock in whole milliseconds, for the change log.
macro_rules! now_ms {
    () => {
        "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)"
    };
}

/// The store in a SQLite file.
pub type SqliteStore = SqlStore<Sqlite>;

/// The SQLite [`Backend`].
#[derive(Debug)]
pub struct Sqlite {
    /// The file as it was opened; `None` in memory.
    file: Option<DbFile>,
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
            DbFile::create_private(path)?;
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
        let file = path.map(DbFile::opened).transpose()?;
        Ok(Self::new(pool, Sqlite { file }))
    }
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

    const SIGNAL_CHANGE: &'static str = concat!(
        "INSERT INTO key_changes (hash, changed_at) VALUES ($1, ",
        now_ms!(),
        ")"
    );
    const SIGNAL_OWNER_CHANGE: &'static str = concat!(
        "INSERT INTO key_changes (hash, changed_at) SELECT hash, ",
        now_ms!(),
        " FROM keys WHERE owner = $1"
    );
    /// One statement for the batch (SQLite has no arrays: the pairs travel as JSON).
    const RECORD_USAGE: &'static str = "UPDATE keys SET \
        last_used_at = CASE WHEN keys.last_used_at IS NULL OR keys.last_used_at < u.last \
            THEN u.last ELSE keys.last_used_at END, \
        first_used_at = CASE WHEN keys.first_used_at IS NULL OR keys.first_used_at > u.first \
            THEN u.first ELSE keys.first_used_at END, \
        uses_since_rotation = keys.uses_since_rotation + u.n \
        FROM (SELECT value ->> 0 AS id, value ->> 1 AS first, value ->> 2 AS last, \
              value ->> 3 AS n FROM json_each($1)) AS u \
        WHERE keys.id = u.id";

    const USAGE_ROWS: &'static str = "SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, \
        value ->> 4, value ->> 5, value ->> 6, value ->> 7, value ->> 8, value ->> 9, value ->> 10 \
        FROM json_each($1) WHERE true";

    async fn watch(&self, pool: &SqlitePool) -> Result<mpsc::Receiver<Change>, StoreError> {
        let start: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM key_changes")
            .fetch_one(pool)
            .await
            .map_err(backend)?;
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(follow_changes(pool.clone(), start, tx));
        Ok(rx)
    }

    fn check_identity(&self) -> Result<(), StoreError> {
        self.file.as_ref().map_or(Ok(()), DbFile::check)
    }

    fn check_room(&self) -> Result<(), StoreError> {
        self.file.as_ref().map_or(Ok(()), DbFile::check_room)
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
            let trim = concat!(
                "DELETE FROM key_changes WHERE changed_at < ",
                now_ms!(),
                " - $1"
            );
            let _ = sqlx::query(trim)
                .bind(CHANGE_LOG_KEEP_MS)
                .execute(&pool)
                .await;
        }
    }
}
