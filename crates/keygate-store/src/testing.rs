//! Helpers for tests that need a database of their own (feature `test-util`).

/// Creates a uniquely named, empty schema in the PostgreSQL at `base_url` and returns its name:
/// for tests that must not share tables (see [`with_search_path`]).
///
/// # Panics
/// If the database cannot be reached: a test that asked for PostgreSQL must not pass without it.
#[cfg(feature = "postgres")]
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

/// The PostgreSQL server tests run against: `KEYGATE_TEST_POSTGRES`.
///
/// # Panics
/// If it is not set. PostgreSQL tests are compiled in only when it was set at build time
/// (otherwise they are reported as ignored); a run without it must fail, not pass silently.
pub fn postgres_url() -> String {
    std::env::var("KEYGATE_TEST_POSTGRES").unwrap_or_else(|_| {
        panic!(
            "this PostgreSQL test was built with KEYGATE_TEST_POSTGRES set but runs without it; \
             set KEYGATE_TEST_POSTGRES=postgres://USER@HOST:PORT/DB"
        )
    })
}

/// A fresh schema on [`postgres_url`]'s server, as a database URL whose `search_path` is it.
#[cfg(feature = "postgres")]
pub async fn fresh_postgres_url() -> String {
    let base = postgres_url();
    let schema = test_schema(&base).await;
    with_search_path(&base, &schema)
}
