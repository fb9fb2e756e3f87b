//! The SQLite backend against real database files in temp dirs: the shared conformance suite,
//! then what is particular to SQLite.

use std::sync::Arc;

use keygate_core::{KeySpec, Prefix, issue};
use keygate_store::{ListQuery, SqliteStore, Store, StoreError, conformance::now, open};

async fn fresh() -> Arc<dyn Store> {
    let dir = tempfile::tempdir().expect("tempdir").keep();
    let url = format!("sqlite://{}", dir.join("keys.db").display());
    Arc::new(SqliteStore::connect(&url).await.expect("open"))
}

mod sqlite_conformance {
    keygate_store::conformance_suite!(super::fresh);
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
    store.create(&r).await.unwrap();
    store.close().await;
    let again = SqliteStore::connect(&format!("sqlite:{}", path.display()))
        .await
        .unwrap();
    assert_eq!(again.get(&r.id).await.unwrap(), Some(r));
    let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations")
        .fetch_one(again.pool())
        .await
        .unwrap();
    assert_eq!(applied, 1);
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
        store.create(&r).await.unwrap();
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
    memory.create(&r).await.unwrap();
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
            "unsupported database URL scheme `mysql`",
        ),
        ("postgres://localhost/db", "PostgreSQL"),
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
