//! PostgreSQL: many keygate nodes on one database. Migrations from `migrations/postgres` are
//! applied on open; every change to a key sends a `NOTIFY` in the same transaction, which
//! [`KeyStore::watch`](crate::KeyStore::watch) turns into cache invalidations on every node.
//! The channel is named after the schema keygate lives in (`keygate_changes_<schema>`), so two
//! deployments in two schemas of one database do not hear each other.

use std::str::FromStr;
use std::time::Duration;

use keygate_core::KeyHash;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use tokio::sync::mpsc;

use crate::sql::{Backend, SqlStore, backend};
use crate::{Change, StoreError};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The store in PostgreSQL.
pub type PostgresStore = SqlStore<Postgres>;

/// The PostgreSQL [`Backend`].
#[derive(Debug)]
pub struct Postgres {
    /// The notification channel (see migration `0010_change_signal.sql`).
    channel: String,
}

impl SqlStore<Postgres> {
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
        let channel: String = sqlx::query_scalar("SELECT keygate_channel()")
            .fetch_one(&pool)
            .await
            .map_err(backend)?;
        Ok(Self::new(pool, Postgres { channel }))
    }
}

impl Backend for Postgres {
    type Db = sqlx::Postgres;
    const BEGIN_WRITE: &'static str = "BEGIN";
    /// Concurrent changes to one key queue up instead of overwriting each other.
    const LOCK_ROW: &'static str = " FOR UPDATE";
    /// Self-conflicting: a second bootstrap waits until the first commits, then sees its key.
    /// Ordinary reads are not blocked.
    const LOCK_KEYS_TABLE: Option<&'static str> =
        Some("LOCK TABLE keys IN SHARE ROW EXCLUSIVE MODE");
    const LIKE: &'static str = "ILIKE";
    /// The planner weighs a filter's selectivity itself.
    const FILTERED_ORDER: &'static str = " ORDER BY id DESC LIMIT ";
    /// `NOTIFY`, delivered by PostgreSQL when the transaction commits.
    const SIGNAL_CHANGE: &'static str = "SELECT keygate_key_changed($1)";
    const SIGNAL_OWNER_CHANGE: &'static str =
        "SELECT keygate_key_changed(hash) FROM keys WHERE owner = $1";
    const RECORD_USAGE: &'static str = "UPDATE keys AS k SET \
        last_used_at = GREATEST(k.last_used_at, u.last), \
        first_used_at = LEAST(k.first_used_at, u.first), \
        uses_since_rotation = k.uses_since_rotation + u.n \
        FROM (SELECT e ->> 0 AS id, (e ->> 1)::bigint AS first, (e ->> 2)::bigint AS last, \
              (e ->> 3)::bigint AS n FROM jsonb_array_elements($1::text::jsonb) AS e) AS u \
        WHERE k.id = u.id";

    const USAGE_ROWS: &'static str = "SELECT r ->> 0, (r ->> 1)::bigint, r ->> 2, \
        (r ->> 3)::bigint, (r ->> 4)::bigint, (r ->> 5)::bigint, (r ->> 6)::bigint, \
        (r ->> 7)::bigint, (r ->> 8)::bigint, (r ->> 9)::bigint, (r ->> 10)::bigint \
        FROM jsonb_array_elements($1::text::jsonb) WITH ORDINALITY AS u(r, i) ORDER BY i";

    async fn watch(&self, pool: &PgPool) -> Result<mpsc::Receiver<Change>, StoreError> {
        let mut listener = PgListener::connect_with(pool).await.map_err(backend)?;
        listener.listen(&self.channel).await.map_err(backend)?;
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(follow_notifications(listener, tx));
        Ok(rx)
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
