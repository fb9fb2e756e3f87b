//! The SQLite backend against real database files in temp dirs: the shared conformance suite,
//! then what is particular to SQLite.

use std::sync::Arc;

use keygate_core::{Audit, KeySpec, Prefix, issue};
use keygate_store::{
    KeyStore, ListQuery, PostgresStore, SqliteStore, Store, StoreError, conformance::now, open,
};

async fn fresh() -> Arc<dyn Store> {
    let dir = tempfile::tempdir().expect("tempdir").keep();
    let url = format!("sqlite://{}", dir.join("keys.db").display());
    Arc::new(SqliteStore::connect(&url).await.expect("open"))
}

mod sqlite_conformance {
    keygate_store::conformance_suite!(super::fresh);
}

/// A fresh schema in the PostgreSQL named by `KEYGATE_TEST_POSTGRES` (`.ci/run` sets it), so
/// that parallel tests and runs never share tables.
async fn fresh_postgres() -> Arc<dyn Store> {
    let url = keygate_store::testing::fresh_postgres_url().await;
    Arc::new(
        PostgresStore::connect(&url)
            .await
            .expect("connect to PostgreSQL"),
    )
}

mod postgres_conformance {
    keygate_store::conformance_suite!(super::fresh_postgres;
        #[cfg_attr(not(keygate_test_postgres), ignore = "set KEYGATE_TEST_POSTGRES=postgres://USER@HOST:PORT/DB to run")]);
}

#[tokio::test]
async fn creates_the_file_in_wal_mode_and_reopens_without_remigrating() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.db");
    assert!(!path.exists());
    let store = SqliteStore::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    assert!(path.exists());
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    let (r, _) = issue(
        KeySpec {
            name: "k".into(),
            ..KeySpec::default()
        },
        &Prefix::default(),
        now(),
    )
    .unwrap();
    store.create(&r, &Audit::library()).await.unwrap();
    store.close().await;
    let again = SqliteStore::connect(&format!("sqlite:{}", path.display()))
        .await
        .unwrap();
    assert_eq!(again.get(&r.id).await.unwrap(), Some(r));
    let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations")
        .fetch_one(again.pool())
        .await
        .unwrap();
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"))
        .unwrap()
        .count();
    assert_eq!(applied, files as i64, "each migration applied once");
}

#[tokio::test]
async fn the_plaintext_key_is_nowhere_in_the_database_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret.db");
    let store = SqliteStore::connect(path.to_str().unwrap()).await.unwrap();
    let mut keys = Vec::new();
    for i in 0..20 {
        let (r, key) = issue(
            KeySpec {
                name: format!("k{i}"),
                ..KeySpec::default()
            },
            &Prefix::default(),
            now(),
        )
        .unwrap();
        store.create(&r, &Audit::library()).await.unwrap();
        keys.push(key);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        files.push(std::fs::read(entry.unwrap().path()).unwrap());
    }
    assert!(files.len() >= 2, "the db file and its WAL");
    for key in &keys {
        let secret = key.expose().as_bytes();
        let body = &secret[3..];
        for f in &files {
            assert!(!f.windows(secret.len()).any(|w| w == secret));
            assert!(!f.windows(body.len()).any(|w| w == body));
        }
    }
    // The hash is there, so the check above is looking at real content.
    let hash = keys[0].hash();
    assert!(
        files
            .iter()
            .any(|f| f.windows(32).any(|w| w == hash.as_bytes()))
    );
}

#[tokio::test]
async fn open_picks_a_backend_or_says_why_not() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain.db");
    let store = open(plain.to_str().unwrap()).await.unwrap();
    store.ping().await.unwrap();
    let memory = open("sqlite::memory:").await.unwrap();
    memory.ping().await.unwrap();
    let (r, _) = issue(
        KeySpec {
            name: "m".into(),
            ..KeySpec::default()
        },
        &Prefix::default(),
        now(),
    )
    .unwrap();
    memory.create(&r, &Audit::library()).await.unwrap();
    assert_eq!(
        memory
            .list(&ListQuery::new(now()))
            .await
            .unwrap()
            .items
            .len(),
        1
    );

    for (url, expect) in [
        ("", "empty"),
        (
            "mysql://localhost/db",
            "unsupported database URL scheme `mysql`; use sqlite://PATH or postgres://...",
        ),
        ("postgres://x y z/?", "invalid PostgreSQL URL"),
    ] {
        match open(url).await {
            Err(StoreError::Config(msg)) => assert!(msg.contains(expect), "{url}: {msg}"),
            other => panic!("{url}: {other:?}"),
        }
    }
    let missing_dir = dir.path().join("no/such/dir/k.db");
    assert!(matches!(
        open(missing_dir.to_str().unwrap()).await,
        Err(StoreError::Backend(_))
    ));
    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![b'x'; 8192]).unwrap();
    match open(garbage.to_str().unwrap()).await {
        Err(StoreError::Backend(msg)) => assert!(msg.contains("not a database"), "{msg}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        std::fs::read(&garbage).unwrap(),
        vec![b'x'; 8192],
        "nothing written"
    );
}

#[tokio::test]
async fn a_second_process_on_the_same_file_sees_changes() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("shared.db").display());
    let server = SqliteStore::connect(&url).await.unwrap();
    let cli = SqliteStore::connect(&url).await.unwrap();
    let mut changes = server.watch().await.unwrap();
    let (r, _) = issue(
        KeySpec {
            name: "k".into(),
            ..KeySpec::default()
        },
        &Prefix::default(),
        now(),
    )
    .unwrap();
    cli.create(&r, &Audit::library()).await.unwrap();
    cli.revoke(&r.id, now(), None, &Audit::library())
        .await
        .unwrap();
    for _ in 0..2 {
        let got = tokio::time::timeout(std::time::Duration::from_secs(2), changes.recv()).await;
        assert_eq!(got.unwrap(), Some(keygate_store::Change::Key(r.hash)));
    }
}

#[tokio::test]
async fn postgres_unreachable_is_a_backend_error() {
    // A closed port: nothing listens on port 1.
    match open("postgres://keygate@127.0.0.1:1/keygate").await {
        Err(StoreError::Backend(msg)) => assert!(msg.contains("cannot connect"), "{msg}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn the_audit_trail_is_append_only_in_the_database_itself() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::connect(dir.path().join("a.db").to_str().unwrap())
        .await
        .unwrap();
    let (r, _) = issue(
        KeySpec {
            name: "k".into(),
            ..KeySpec::default()
        },
        &Prefix::default(),
        now(),
    )
    .unwrap();
    store.create(&r, &Audit::library()).await.unwrap();
    for statement in [
        "UPDATE audit_events SET actor = 'nobody'",
        "DELETE FROM audit_events",
    ] {
        let err = sqlx::query(statement)
            .execute(store.pool())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("append-only"), "{err}");
    }
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_events")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(left, 1);
}
