//! Reading a table of another system's database for `keygate import`: a Django database (a
//! SQLite file or PostgreSQL), opened read-only, never written.
//!
//! Each row comes back as a JSON object keyed by column name, with the database's own types
//! (`row_to_json` on PostgreSQL, `json_object` on SQLite), so that any extra column a custom
//! model adds can be carried into metadata without knowing its type.

#[cfg(any(feature = "sqlite", feature = "postgres"))]
use std::str::FromStr;

use serde_json::{Map, Value};
#[cfg(any(feature = "sqlite", feature = "postgres"))]
use sqlx::{Connection, Row as _};

use crate::StoreError;

/// Most rows one import reads.
pub const MAX_ROWS: usize = 500_000;

/// A table as read: its columns, in order, and its rows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SourceTable {
    /// Column names, in the table's order.
    pub columns: Vec<String>,
    /// Rows, each a JSON object keyed by column name.
    pub rows: Vec<Map<String, Value>>,
}

/// Whether `name` is a plain SQL identifier (letters, digits, `_`, not starting with a digit,
/// at most 63 characters): the only table and column names read.
pub fn is_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.as_bytes()[0].is_ascii_digit()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn config(message: impl Into<String>) -> StoreError {
    StoreError::Config(message.into())
}

/// Reads every row of `table` from the database `from` names — `postgres://…`
/// (`postgresql://`), `sqlite://PATH`, `sqlite:PATH` or a plain path — read-only. A missing
/// file, an unreachable server or a missing table is a [`StoreError::Config`] saying so.
pub async fn read_table(from: &str, table: &str) -> Result<SourceTable, StoreError> {
    if !is_identifier(table) {
        return Err(config(format!(
            "`{}` is not a table name (letters, digits and _, at most 63)",
            table.chars().take(80).collect::<String>()
        )));
    }
    let from = from.trim();
    if from.starts_with("postgres:") || from.starts_with("postgresql:") {
        #[cfg(feature = "postgres")]
        return read_postgres(from, table).await;
        #[cfg(not(feature = "postgres"))]
        return Err(config("this build has no PostgreSQL support"));
    }
    if from.starts_with("sqlite:") || !from.contains("://") {
        #[cfg(feature = "sqlite")]
        return read_sqlite(from, table).await;
        #[cfg(not(feature = "sqlite"))]
        return Err(config("this build has no SQLite support"));
    }
    Err(config(
        "--from must be a SQLite file (a path or sqlite://PATH) or a postgres:// URL",
    ))
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn check_rows(count: usize, table: &str) -> Result<(), StoreError> {
    if count > MAX_ROWS {
        return Err(config(format!(
            "table `{table}` has more than {MAX_ROWS} rows; import it in parts"
        )));
    }
    Ok(())
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn parse_rows(texts: Vec<String>) -> Result<Vec<Map<String, Value>>, StoreError> {
    texts
        .into_iter()
        .map(|text| match serde_json::from_str(&text) {
            Ok(Value::Object(map)) => Ok(map),
            _ => Err(StoreError::Backend(
                "a row did not read as a JSON object".into(),
            )),
        })
        .collect()
}

#[cfg(feature = "sqlite")]
async fn read_sqlite(from: &str, table: &str) -> Result<SourceTable, StoreError> {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};

    let path = from
        .strip_prefix("sqlite://")
        .or_else(|| from.strip_prefix("sqlite:"))
        .unwrap_or(from);
    if !std::path::Path::new(path).is_file() {
        return Err(config(format!("no SQLite database file at {path}")));
    }
    let options = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .create_if_missing(false);
    let mut conn = SqliteConnection::connect_with(&options)
        .await
        .map_err(|e| config(format!("cannot open the SQLite database {path}: {e}")))?;
    let result = async {
        let columns: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(format!(
            "PRAGMA table_info(\"{table}\")"
        )))
        .fetch_all(&mut conn)
        .await
        .map_err(|e| config(format!("cannot read the SQLite database {path}: {e}")))?
        .iter()
        .map(|row| row.try_get::<String, _>("name"))
        .collect::<Result<_, _>>()
        .map_err(|e| StoreError::Backend(e.to_string()))?;
        if columns.is_empty() {
            return Err(config(format!("no table `{table}` in {path}")));
        }
        let (count,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM \"{table}\""
        )))
        .fetch_one(&mut conn)
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))?;
        check_rows(usize::try_from(count).unwrap_or(usize::MAX), table)?;
        let pairs: Vec<String> = columns
            .iter()
            .filter(|c| is_identifier(c))
            .map(|c| format!("'{c}', \"{c}\""))
            .collect();
        let select = format!(
            "SELECT json_object({}) FROM \"{table}\" LIMIT {}",
            pairs.join(", "),
            MAX_ROWS
        );
        let texts: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(select))
            .fetch_all(&mut conn)
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        Ok(SourceTable {
            columns,
            rows: parse_rows(texts.into_iter().map(|(t,)| t).collect())?,
        })
    }
    .await;
    let _ = conn.close().await;
    result
}

#[cfg(feature = "postgres")]
async fn read_postgres(from: &str, table: &str) -> Result<SourceTable, StoreError> {
    use sqlx::postgres::{PgConnectOptions, PgConnection};

    let options =
        PgConnectOptions::from_str(from).map_err(|_| config("the PostgreSQL URL is not valid"))?;
    let mut conn = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        PgConnection::connect_with(&options),
    )
    .await
    .map_err(|_| config("cannot reach the PostgreSQL database (timed out)"))?
    .map_err(|e| config(format!("cannot reach the PostgreSQL database: {e}")))?;
    let result = async {
        // Read-only: whatever the statements below, nothing can be written.
        sqlx::raw_sql("BEGIN READ ONLY")
            .execute(&mut conn)
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        let columns: Vec<(String,)> = sqlx::query_as(
            "SELECT column_name::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
        )
        .bind(table.to_owned())
        .fetch_all(&mut conn)
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))?;
        let columns: Vec<String> = columns.into_iter().map(|(c,)| c).collect();
        if columns.is_empty() {
            return Err(config(format!(
                "no table `{table}` in the PostgreSQL database's schema"
            )));
        }
        let (count,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM \"{table}\""
        )))
        .fetch_one(&mut conn)
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))?;
        check_rows(usize::try_from(count).unwrap_or(usize::MAX), table)?;
        let select = format!(
            "SELECT row_to_json(t)::text FROM \"{table}\" AS t LIMIT {}",
            MAX_ROWS
        );
        let texts: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(select))
            .fetch_all(&mut conn)
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        let _ = sqlx::raw_sql("ROLLBACK").execute(&mut conn).await;
        Ok(SourceTable {
            columns,
            rows: parse_rows(texts.into_iter().map(|(t,)| t).collect())?,
        })
    }
    .await;
    let _ = conn.close().await;
    result
}
