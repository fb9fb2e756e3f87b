//! The verify path, piece by piece and whole: key rules, rejections (with a count of store
//! calls), cache hits, and cache misses against SQLite and PostgreSQL with 1 thousand and
//! 1 million keys stored.
//!
//! `cargo bench -p keygate --bench verify`. PostgreSQL cases run when `KEYGATE_TEST_POSTGRES`
//! names a server. The 1-million-key databases are kept between runs (SQLite under
//! `target/bench-data/`, PostgreSQL in schema `kgbench_1m`), since filling takes 20–40 s.
//! Results and method in docs/PERFORMANCE.md.

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use criterion::{Criterion, criterion_group, criterion_main};
use keygate::core::limits::{OwnerLimits, RateLimits};
use keygate::core::{
    Audit, KeyGrant, KeyHash, KeyId, KeyPatch, KeyRecord, KeySpec, Prefix, Timestamp, decide,
    generate, issue, parse,
};
use keygate::store::{Change, KeyStore, PostgresStore, SqliteStore, Store, StoreError};
use keygate::{Keygate, ListQuery, Page, PlainKey, StatusCounts, Verifier, VerifierConfig};
use keygate_store::bulk;

fn core(c: &mut Criterion) {
    let prefix = Prefix::default();
    let key = generate(&prefix);
    let text = key.expose().to_owned();
    let now = Timestamp::from_unix_ms(1_800_000_000_000).unwrap();
    let spec = KeySpec {
        name: "bench".into(),
        scopes: vec!["orders:*".into(), "users:read".into()],
        ..KeySpec::default()
    };
    let grant = KeyGrant::from(issue(spec, &prefix, now).unwrap().0);

    let mut g = c.benchmark_group("core");
    g.bench_function("generate", |b| b.iter(|| generate(black_box(&prefix))));
    g.bench_function("parse_valid", |b| {
        b.iter(|| parse(black_box(&text)).is_ok())
    });
    g.bench_function("hash", |b| b.iter(|| KeyHash::of(black_box(&text))));
    g.bench_function("parse_and_hash", |b| {
        b.iter(|| parse(black_box(&text)).unwrap().hash())
    });
    g.bench_function("decide_with_scope", |b| {
        b.iter(|| decide(black_box(&grant), now, &["orders:read"]))
    });
    g.finish();
}

/// The keys role of a store, counting lookups, to prove which paths never reach it. (The
/// verifier needs this role only, so this is all a wrapper has to forward.)
#[derive(Debug)]
struct Counting {
    inner: Arc<dyn Store>,
    lookups: AtomicU64,
    kinds: AtomicU64,
}

#[async_trait]
impl KeyStore for Counting {
    async fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, StoreError> {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        self.inner.find_by_hash(hash).await
    }
    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.inner.get(id).await
    }
    async fn list(&self, q: &ListQuery) -> Result<Page, StoreError> {
        self.inner.list(q).await
    }
    async fn count_by_status(&self, now: Timestamp) -> Result<StatusCounts, StoreError> {
        self.inner.count_by_status(now).await
    }
    async fn create(&self, r: &KeyRecord, a: &Audit) -> Result<(), StoreError> {
        self.inner.create(r, a).await
    }
    async fn create_if_empty(&self, r: &KeyRecord, a: &Audit) -> Result<bool, StoreError> {
        self.inner.create_if_empty(r, a).await
    }
    async fn update(
        &self,
        id: &KeyId,
        p: KeyPatch,
        at: Timestamp,
        a: &Audit,
    ) -> Result<KeyRecord, StoreError> {
        self.inner.update(id, p, at, a).await
    }
    async fn revoke(
        &self,
        id: &KeyId,
        at: Timestamp,
        reason: Option<String>,
        a: &Audit,
    ) -> Result<KeyRecord, StoreError> {
        self.inner.revoke(id, at, reason, a).await
    }
    async fn rotate(
        &self,
        id: &KeyId,
        plan: &keygate::store::RotationPlan<'_>,
        at: Timestamp,
        a: &Audit,
        sealed: Option<&str>,
    ) -> Result<(KeyRecord, KeyRecord), StoreError> {
        self.inner.rotate(id, plan, at, a, sealed).await
    }
    async fn record_usage(&self, usage: &[keygate::core::switch::Usage]) -> Result<(), StoreError> {
        self.inner.record_usage(usage).await
    }
    async fn retire(
        &self,
        id: &KeyId,
        plan: &keygate::store::RetirePlan<'_>,
        at: Timestamp,
        a: &Audit,
    ) -> Result<Option<KeyRecord>, StoreError> {
        self.inner.retire(id, plan, at, a).await
    }
    async fn spend_quota(
        &self,
        payer: &KeyId,
        cost: u64,
    ) -> Result<keygate::store::Spend, StoreError> {
        self.inner.spend_quota(payer, cost).await
    }
    async fn refill_quotas(
        &self,
        now: Timestamp,
        limit: u32,
        a: &Audit,
    ) -> Result<u64, StoreError> {
        self.inner.refill_quotas(now, limit, a).await
    }
    async fn get_owner(&self, owner: &str) -> Result<Option<OwnerLimits>, StoreError> {
        self.inner.get_owner(owner).await
    }
    async fn set_owner_limits(
        &self,
        owner: &str,
        limits: &RateLimits,
        at: Timestamp,
        a: &Audit,
    ) -> Result<OwnerLimits, StoreError> {
        self.inner.set_owner_limits(owner, limits, at, a).await
    }
    async fn import(
        &self,
        key: &keygate::store::ImportedKey<'_>,
        a: &Audit,
    ) -> Result<bool, StoreError> {
        self.inner.import(key, a).await
    }
    async fn is_imported(&self, origin_id: &str) -> Result<bool, StoreError> {
        self.inner.is_imported(origin_id).await
    }
    async fn find_by_legacy_prefix(
        &self,
        prefix: &str,
    ) -> Result<Vec<(KeyRecord, keygate::store::LegacyCredential)>, StoreError> {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        self.inner.find_by_legacy_prefix(prefix).await
    }
    async fn rehash(
        &self,
        id: &KeyId,
        hash: &KeyHash,
        at: Timestamp,
        a: &Audit,
    ) -> Result<Option<KeyRecord>, StoreError> {
        self.inner.rehash(id, hash, at, a).await
    }
    async fn imported_kinds(&self) -> Result<keygate::store::ImportedKinds, StoreError> {
        self.kinds.fetch_add(1, Ordering::Relaxed);
        self.inner.imported_kinds().await
    }
    async fn watch(&self) -> Result<tokio::sync::mpsc::Receiver<Change>, StoreError> {
        self.inner.watch().await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
    async fn ping_write(&self, at: Timestamp) -> Result<(), StoreError> {
        self.inner.ping_write(at).await
    }
    async fn close(&self) {
        self.inner.close().await
    }
}

fn bench_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-data");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A SQLite file with `n` keys and up to 1,000 of their plaintexts, reused between runs.
async fn sqlite_with(n: usize) -> (Arc<dyn Store>, Vec<String>) {
    let dir = bench_dir();
    let db = dir.join(format!("sqlite-{n}.db"));
    let hot = dir.join(format!("sqlite-{n}.keys"));
    let url = format!("sqlite://{}", db.display());
    if !(db.exists() && hot.exists()) {
        let _ = std::fs::remove_file(&db);
        let store = SqliteStore::connect(&url).await.unwrap();
        let kept = bulk::fill_sqlite(&store, n, 1000).await.unwrap();
        write_keys(&hot, &kept);
        store.close().await;
    }
    let store = SqliteStore::connect(&url).await.unwrap();
    (Arc::new(store), read_keys(&hot))
}

/// A PostgreSQL schema with `n` keys, reused between runs; `None` without a server.
async fn postgres_with(n: usize) -> Option<(Arc<dyn Store>, Vec<String>)> {
    let base = std::env::var("KEYGATE_TEST_POSTGRES").ok()?;
    let schema = format!("kgbench_{n}");
    let hot = bench_dir().join(format!("postgres-{n}.keys"));
    let url = keygate_store::testing::with_search_path(&base, &schema);
    let admin = PostgresStore::connect(&base).await.unwrap();
    let exists: bool = sqlx_exists(&admin, &schema).await;
    if !(exists && hot.exists()) {
        for statement in [
            format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
            format!("CREATE SCHEMA {schema}"),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(statement))
                .execute(admin.pool())
                .await
                .unwrap();
        }
        let store = PostgresStore::connect(&url).await.unwrap();
        let kept = bulk::fill_postgres(&store, n, 1000).await.unwrap();
        write_keys(&hot, &kept);
    }
    let store = PostgresStore::connect(&url).await.unwrap();
    Some((Arc::new(store), read_keys(&hot)))
}

async fn sqlx_exists(store: &PostgresStore, schema: &str) -> bool {
    sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (SELECT 1 FROM information_schema.tables WHERE table_schema = $1 AND table_name = 'keys')",
    )
    .bind(schema)
    .fetch_one(store.pool())
    .await
    .unwrap()
}

fn write_keys(path: &std::path::Path, keys: &[PlainKey]) {
    let text: Vec<&str> = keys.iter().map(PlainKey::expose).collect();
    std::fs::write(path, text.join("\n")).unwrap();
}

fn read_keys(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn verify(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let scopes = ["orders:read"];

    // Rejections and cache hits, over a small SQLite store that counts lookups.
    let (counting, key) = rt.block_on(async {
        let (inner, keys) = sqlite_with(1000).await;
        let counting = Arc::new(Counting {
            inner,
            lookups: AtomicU64::new(0),
            kinds: AtomicU64::new(0),
        });
        (counting, keys[0].clone())
    });
    let cached = Verifier::new(counting.clone(), VerifierConfig::default());
    let malformed = "kg_definitely_not_a_key";
    let mut bad_checksum = key.clone();
    let last = bad_checksum.pop().unwrap();
    bad_checksum.push(if last == 'A' { 'B' } else { 'A' });
    let unknown = generate(&Prefix::default());

    let mut g = c.benchmark_group("verify");
    let before = counting.lookups.load(Ordering::Relaxed);
    g.bench_function("reject_malformed", |b| {
        b.to_async(&rt)
            .iter(|| async { cached.verify(malformed, &scopes).await.unwrap() })
    });
    g.bench_function("reject_bad_checksum", |b| {
        b.to_async(&rt)
            .iter(|| async { cached.verify(&bad_checksum, &scopes).await.unwrap() })
    });
    let rejected_lookups = counting.lookups.load(Ordering::Relaxed) - before;
    println!("store lookups during the rejection benchmarks: {rejected_lookups}");
    // A credential not in keygate's format asks once (per change) which kinds of imported key
    // exist; with none, it is refused without a lookup.
    println!(
        "imported-kinds queries during the rejection benchmarks: {}",
        counting.kinds.load(Ordering::Relaxed)
    );
    assert!(counting.kinds.load(Ordering::Relaxed) <= 1);
    assert_eq!(rejected_lookups, 0, "a rejection reached the store");
    g.bench_function("cache_hit_valid", |b| {
        b.to_async(&rt)
            .iter(|| async { cached.verify(&key, &scopes).await.unwrap() })
    });
    // The same with usage counted per (key, hour) in memory, as Keygate's verifier does.
    let usage_log: Arc<dyn keygate::store::UsageLog> = counting.inner.clone();
    let counted = Verifier::new(
        counting.clone(),
        VerifierConfig {
            usage_log: Some(usage_log),
            usage_flush: None,
            ..VerifierConfig::default()
        },
    );
    g.bench_function("cache_hit_valid_usage_counted", |b| {
        b.to_async(&rt)
            .iter(|| async { counted.verify(&key, &scopes).await.unwrap() })
    });
    g.bench_function("cache_hit_not_found", |b| {
        b.to_async(&rt)
            .iter(|| async { cached.verify(unknown.expose(), &scopes).await.unwrap() })
    });
    g.finish();

    // Cache misses: the cache is off, and each iteration checks the next of 1,000 real keys.
    let mut g = c.benchmark_group("verify_cache_miss");
    for (backend, n) in [
        ("sqlite", 1_000),
        ("sqlite", 1_000_000),
        ("postgres", 1_000),
        ("postgres", 1_000_000),
    ] {
        let setup = rt.block_on(async {
            match backend {
                "sqlite" => Some(sqlite_with(n).await),
                _ => postgres_with(n).await,
            }
        });
        let Some((store, keys)) = setup else {
            println!("skipped verify_cache_miss/{backend}: KEYGATE_TEST_POSTGRES is not set");
            continue;
        };
        let uncached = Keygate::builder(store)
            .cache(None)
            .usage_flush_interval(None)
            .build();
        let next = AtomicU64::new(0);
        g.bench_function(format!("{backend}_{n}_keys"), |b| {
            b.to_async(&rt).iter(|| async {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize % keys.len();
                let v = uncached.verify(&keys[i], &scopes).await.unwrap();
                assert!(v.outcome.is_valid());
            })
        });
    }
    g.finish();
}

/// The layer's own cost, without sockets: the same handler called through the router with
/// and without `KeygateLayer` (valid key, unknown key, bad checksum), request to response.
fn layer(c: &mut Criterion) {
    use axum::body::Body;
    use axum::routing::get;
    use http::Request;
    use tower::ServiceExt;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (store, keys) = rt.block_on(sqlite_with(1000));
    let keygate = Keygate::new(store);
    let app = rt.block_on(async {
        axum::Router::new()
            .route("/protected", get(|| async { "hello" }))
            .route_layer(keygate.layer())
            .route("/open", get(|| async { "hello" }))
    });
    let valid = keys[0].clone();
    let unknown = generate(&Prefix::default()).expose().to_owned();
    let mut bad = valid.clone();
    let last = bad.pop().unwrap();
    bad.push(if last == 'A' { 'B' } else { 'A' });
    let request = |path: &str, key: &str| {
        Request::get(path)
            .header("authorization", format!("Api-Key {key}"))
            .body(Body::empty())
            .unwrap()
    };
    let mut g = c.benchmark_group("layer");
    for (name, path, key, status) in [
        ("open", "/open", &valid, 200),
        ("protected_valid", "/protected", &valid, 200),
        ("protected_unknown", "/protected", &unknown, 401),
        ("protected_bad_checksum", "/protected", &bad, 401),
    ] {
        g.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                let response = app.clone().oneshot(request(path, key)).await.unwrap();
                assert_eq!(response.status(), status);
                response
            })
        });
    }
    g.finish();
}

fn alnum(n: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).unwrap();
    bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

/// Imported drf-api-key keys hashed with Django's PBKDF2 (600,000 iterations, Django 4.2's
/// count): the first check of each (PBKDF2 on a blocking thread, then the rehash write) timed
/// once per key, against checks after the rehash (criterion: cache hit, and cache off).
fn imported(c: &mut Criterion) {
    use keygate::core::legacy::{LegacyHash, imported_record};
    use keygate::store::{ImportedKey, LegacyCredential};

    const KEYS: usize = 5;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("imported.db").display());
    let now = Timestamp::from_unix_ms(1_800_000_000_000).unwrap();
    let store: Arc<dyn Store> =
        rt.block_on(async { Arc::new(SqliteStore::connect(&url).await.unwrap()) });
    let mut keys = Vec::new();
    for i in 0..KEYS {
        let key = format!("{}.{}", alnum(8), alnum(32));
        let salt = alnum(22);
        let mut derived = [0u8; 32];
        ring::pbkdf2::derive(
            ring::pbkdf2::PBKDF2_HMAC_SHA256,
            std::num::NonZeroU32::new(600_000).unwrap(),
            salt.as_bytes(),
            key.as_bytes(),
            &mut derived,
        );
        use base64::Engine;
        let stored = format!(
            "pbkdf2_sha256$600000${salt}${}",
            base64::engine::general_purpose::STANDARD.encode(derived)
        );
        let spec = KeySpec {
            name: format!("legacy {i}"),
            ..KeySpec::default()
        };
        let record = imported_record(spec, key[..8].to_owned(), None, now, None).unwrap();
        let imported = ImportedKey {
            record: &record,
            origin_id: format!("bench:{i}"),
            origin: serde_json::Map::new(),
            legacy: Some(LegacyCredential {
                prefix: key[..8].to_owned(),
                hash: LegacyHash::parse(&stored).unwrap(),
            }),
        };
        rt.block_on(store.import(&imported, &Audit::library()))
            .unwrap();
        keys.push(key);
    }
    let cached = Verifier::new(store.clone(), VerifierConfig::default());
    let mut first = Vec::new();
    for key in &keys {
        let start = std::time::Instant::now();
        let done = rt.block_on(cached.verify(key, &[] as &[&str])).unwrap();
        first.push(start.elapsed());
        if !done.outcome.is_valid() {
            println!(
                "imported key: {} (a verifier without imports?)",
                done.outcome.code()
            );
            return;
        }
    }
    first.sort();
    println!(
        "imported PBKDF2 key (600,000 iterations), first check incl. rehash: median {:.1} ms (min {:.1}, max {:.1}, {KEYS} keys)",
        first[KEYS / 2].as_secs_f64() * 1e3,
        first[0].as_secs_f64() * 1e3,
        first[KEYS - 1].as_secs_f64() * 1e3
    );
    let uncached = Verifier::new(
        store.clone(),
        VerifierConfig {
            cache: None,
            ..VerifierConfig::default()
        },
    );
    let mut g = c.benchmark_group("imported");
    g.bench_function("pbkdf2_after_rehash_cache_hit", |b| {
        b.to_async(&rt)
            .iter(|| async { cached.verify(&keys[0], &[] as &[&str]).await.unwrap() })
    });
    g.bench_function("pbkdf2_after_rehash_cache_off", |b| {
        b.to_async(&rt)
            .iter(|| async { uncached.verify(&keys[1], &[] as &[&str]).await.unwrap() })
    });
    g.finish();
}

criterion_group!(benches, core, verify, layer, imported);
criterion_main!(benches);
