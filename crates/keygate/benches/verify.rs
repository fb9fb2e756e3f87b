//! The verify path, piece by piece and whole, over a real SQLite file of 10,000 keys.
//!
//! `cargo bench -p keygate --bench verify`; results and method in docs/PERFORMANCE.md.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use keygate::core::{KeyRecord, KeySpec, Prefix, Timestamp, decide, generate, issue, parse};
use keygate::store::{SqliteStore, Store};
use keygate::{Keygate, PlainKey};

fn core(c: &mut Criterion) {
    let prefix = Prefix::default();
    let key = generate(&prefix);
    let text = key.expose().to_owned();
    let mut typo = text.clone();
    typo.pop();
    typo.push('x');
    let now = Timestamp::from_unix_ms(1_800_000_000_000).unwrap();
    let spec = KeySpec {
        name: "bench".into(),
        scopes: vec!["orders:*".into(), "users:read".into()],
        ..KeySpec::default()
    };
    let record: KeyRecord = issue(spec, &prefix, now).unwrap().0;

    let mut g = c.benchmark_group("core");
    g.bench_function("parse_valid", |b| {
        b.iter(|| parse(black_box(&text)).is_ok())
    });
    g.bench_function("parse_bad_checksum", |b| {
        b.iter(|| parse(black_box(&typo)).is_err())
    });
    g.bench_function("parse_and_hash", |b| {
        b.iter(|| parse(black_box(&text)).unwrap().hash())
    });
    g.bench_function("generate", |b| b.iter(|| generate(black_box(&prefix))));
    g.bench_function("decide_with_scope", |b| {
        b.iter(|| decide(black_box(&record), now, &["orders:read"]))
    });
    g.finish();
}

fn verify(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cached, uncached, key): (Keygate, Keygate, PlainKey) = rt.block_on(async {
        let url = format!("sqlite://{}", dir.path().join("bench.db").display());
        let store: Arc<dyn Store> = Arc::new(SqliteStore::connect(&url).await.unwrap());
        let cached = Keygate::new(store.clone());
        let uncached = Keygate::builder(store).cache(None).build();
        let mut last = None;
        for i in 0..10_000 {
            let spec = KeySpec {
                name: format!("key {i}"),
                scopes: vec!["orders:read".into()],
                ..KeySpec::default()
            };
            last = Some(uncached.issue(spec).await.unwrap().1);
        }
        (cached, uncached, last.unwrap())
    });
    let unknown = generate(&Prefix::default());
    let scopes = ["orders:read"];

    let mut g = c.benchmark_group("verify_sqlite_10k_keys");
    g.bench_function("valid_cache_hit", |b| {
        b.to_async(&rt)
            .iter(|| async { cached.verify(key.expose(), &scopes).await.unwrap() })
    });
    g.bench_function("not_found_cache_hit", |b| {
        b.to_async(&rt)
            .iter(|| async { cached.verify(unknown.expose(), &scopes).await.unwrap() })
    });
    g.bench_function("valid_no_cache", |b| {
        b.to_async(&rt)
            .iter(|| async { uncached.verify(key.expose(), &scopes).await.unwrap() })
    });
    g.bench_function("not_found_no_cache", |b| {
        b.to_async(&rt)
            .iter(|| async { uncached.verify(unknown.expose(), &scopes).await.unwrap() })
    });
    g.bench_function("malformed", |b| {
        b.to_async(&rt).iter(|| async {
            cached
                .verify("kg_definitely_not_a_key", &scopes)
                .await
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, core, verify);
criterion_main!(benches);
