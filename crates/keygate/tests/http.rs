//! The library over real HTTP: the example app and custom layers served on port 0 with a
//! temp SQLite file, spoken to with raw HTTP/1.1 so that odd headers reach the server as sent.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::{Router, routing::get};
use keygate::core::{Audit, Expiry, KeySpec, Lifetime, Timestamp};
use keygate::store::{KeyStore, SqliteStore, Store};
use keygate::{ApiKey, CredentialSource, KeyPatch, Keygate, PlainKey};
use keygate_testkit::{Reply, raw_request};
use serde_json::json;

/// The example app itself, so that these tests check exactly what `cargo run --example` serves.
#[allow(dead_code)]
#[path = "../examples/public_api.rs"]
mod example;

/// Rate limits shared through Redis (`limits/mod.rs`).
mod limits;

struct Server {
    addr: SocketAddr,
    keygate: Keygate,
    store: Arc<SqliteStore>,
    _dir: tempfile::TempDir,
}

async fn serve(app: impl Fn(&Keygate) -> Router) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("keys.db").display());
    let store = Arc::new(SqliteStore::connect(&url).await.unwrap());
    let keygate = Keygate::builder(store.clone() as Arc<dyn Store>)
        .usage_flush_interval(None)
        .build();
    let router = app(&keygate);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    Server {
        addr,
        keygate,
        store,
        _dir: dir,
    }
}

async fn example() -> Server {
    serve(example::app).await
}

impl Server {
    async fn key(&self, scopes: &[&str]) -> PlainKey {
        self.key_with(KeySpec {
            name: "test".into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            ..KeySpec::default()
        })
        .await
    }

    async fn key_with(&self, spec: KeySpec) -> PlainKey {
        self.keygate.issue(spec, &Audit::library()).await.unwrap().1
    }

    async fn get(&self, path: &str, headers: &[(&str, &[u8])]) -> Reply {
        let headers: Vec<(String, Vec<u8>)> = headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.to_vec()))
            .collect();
        let request = raw_request("GET", path, &self.addr.to_string(), &headers, None);
        keygate_testkit::send(self.addr, &request).await
    }

    async fn with_key(&self, path: &str, key: &str) -> Reply {
        self.get(
            path,
            &[("Authorization", format!("Api-Key {key}").as_bytes())],
        )
        .await
    }
}

const MESSAGE: &str = "This is a public API that requires an API key.";

#[tokio::test]
async fn example_app_answers_each_outcome() {
    let s = example().await;
    let key = s.key(&[]).await;

    let ok = s.with_key("/api/public/", key.expose()).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json(), json!({"message": MESSAGE}));

    s.get("/api/public/", &[]).await.problem(401, "MISSING");

    let unknown = keygate::core::generate(&keygate::Prefix::default());
    let r = s.with_key("/api/public/", unknown.expose()).await;
    r.problem(401, "NOT_FOUND");
    r.assert_no_echo(unknown.expose());

    let mut typo = key.expose().to_owned();
    let last = typo.pop().unwrap();
    typo.push(if last == 'a' { 'b' } else { 'a' });
    let r = s.with_key("/api/public/", &typo).await;
    let p = r.problem(401, "MALFORMED");
    assert!(p["detail"].as_str().unwrap().contains("checksum"));
    r.assert_no_echo(&typo);

    let revoked = s.key(&[]).await;
    let id = s
        .store
        .find_by_hash(&revoked.hash())
        .await
        .unwrap()
        .unwrap()
        .id;
    s.keygate
        .revoke(&id, Some("leaked".into()), &Audit::library())
        .await
        .unwrap();
    s.with_key("/api/public/", revoked.expose())
        .await
        .problem(401, "REVOKED");

    let expired = s
        .key_with(KeySpec {
            name: "old".into(),
            expires: Some(Expiry::At(
                Timestamp::parse_rfc3339("2020-01-01T00:00:00Z").unwrap(),
            )),
            ..KeySpec::default()
        })
        .await;
    s.with_key("/api/public/", expired.expose())
        .await
        .problem(401, "EXPIRED");

    let disabled = s.key(&[]).await;
    let id = s
        .store
        .find_by_hash(&disabled.hash())
        .await
        .unwrap()
        .unwrap()
        .id;
    s.keygate
        .update(
            &id,
            KeyPatch {
                enabled: Some(false),
                ..KeyPatch::default()
            },
            &Audit::library(),
        )
        .await
        .unwrap();
    s.with_key("/api/public/", disabled.expose())
        .await
        .problem(401, "DISABLED");

    let r = s.with_key("/api/orders/", key.expose()).await;
    let p = r.problem(403, "INSUFFICIENT_SCOPE");
    assert!(p["detail"].as_str().unwrap().contains("orders:read"));
    assert_eq!(r.header("www-authenticate"), None);

    for scopes in [&["orders:read"][..], &["orders:*"], &["*"]] {
        let scoped = s.key(scopes).await;
        let r = s.with_key("/api/orders/", scoped.expose()).await;
        assert_eq!(r.status, 200, "{scopes:?}");
        assert_eq!(r.json()["orders"], json!([]));
        assert!(r.json()["key_id"].as_str().unwrap().starts_with("key_"));
        r.assert_no_echo(scoped.expose());
        assert_eq!(
            s.with_key("/api/public/", scoped.expose()).await.status,
            200
        );
    }

    // Unknown paths are behind the layer too: no key, no map of the API.
    s.get("/nope", &[]).await.problem(401, "MISSING");
    assert_eq!(s.with_key("/nope", key.expose()).await.status, 404);
}

#[tokio::test]
async fn odd_headers_get_401_problem_json_never_500() {
    let s = example().await;
    let key = s.key(&[]).await;
    let k = key.expose().as_bytes();
    let long = vec![b'a'; 16 * 1024];
    let with_scheme = |v: &[u8]| [b"Api-Key ".as_slice(), v].concat();
    type Headers<'a> = Vec<(&'a str, Vec<u8>)>;
    let cases: Vec<(&str, Headers, &str)> = vec![
        (
            "empty value",
            vec![("Authorization", b"".to_vec())],
            "MALFORMED",
        ),
        (
            "16 KiB value",
            vec![("Authorization", with_scheme(&long))],
            "MALFORMED",
        ),
        (
            "16 KiB bare",
            vec![("Authorization", long.clone())],
            "MALFORMED",
        ),
        (
            "non-UTF-8",
            vec![("Authorization", b"Api-Key kg_\xff\xfe\xfd".to_vec())],
            "MALFORMED",
        ),
        (
            "non-UTF-8 scheme",
            vec![("Authorization", b"\xc3\x28 kg_x".to_vec())],
            "MALFORMED",
        ),
        (
            "unknown scheme",
            vec![("Authorization", [b"Basic ".as_slice(), k].concat())],
            "MISSING",
        ),
        (
            "bearer not enabled",
            vec![("Authorization", [b"Bearer ".as_slice(), k].concat())],
            "MISSING",
        ),
        (
            "x-api-key not enabled",
            vec![("X-Api-Key", k.to_vec())],
            "MISSING",
        ),
        (
            "scheme only",
            vec![("Authorization", b"Api-Key".to_vec())],
            "MALFORMED",
        ),
        (
            "two keys",
            vec![(
                "Authorization",
                [with_scheme(k), b" ".to_vec(), k.to_vec()].concat(),
            )],
            "MALFORMED",
        ),
        (
            "two Authorization headers",
            vec![
                ("Authorization", with_scheme(k)),
                ("Authorization", with_scheme(k)),
            ],
            "MALFORMED",
        ),
        (
            "garbage key",
            vec![("Authorization", with_scheme(b"hello"))],
            "MALFORMED",
        ),
        (
            "wrong length",
            vec![("Authorization", with_scheme(&k[..k.len() - 1]))],
            "MALFORMED",
        ),
    ];
    for (name, headers, code) in cases {
        let headers: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_slice())).collect();
        let r = s.get("/api/public/", &headers).await;
        assert_eq!(r.status, 401, "{name}: {}", String::from_utf8_lossy(&r.raw));
        r.problem(401, code);
        r.assert_no_echo(key.expose());
    }
    // The server is still fine afterwards.
    assert_eq!(s.with_key("/api/public/", key.expose()).await.status, 200);
}

#[tokio::test]
async fn other_credential_sources_when_configured() {
    async fn who(key: ApiKey) -> String {
        key.name().to_owned()
    }
    let s = serve(|kg| {
        Router::new().route("/", get(who)).layer(
            kg.layer()
                .sources([
                    CredentialSource::ApiKeyScheme,
                    CredentialSource::BearerScheme,
                    CredentialSource::x_api_key(),
                    CredentialSource::Query("api_key".into()),
                ])
                .realm("orders \"api\""),
        )
    })
    .await;
    let key = s.key(&[]).await;
    let k = key.expose();
    for headers in [
        vec![("Authorization", format!("Bearer {k}"))],
        vec![("authorization", format!("bearer {k}"))],
        vec![("X-Api-Key", k.to_owned())],
        vec![
            ("Authorization", format!("Api-Key {k}")),
            ("X-Api-Key", k.to_owned()),
        ],
    ] {
        let headers: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
        let r = s.get("/", &headers).await;
        assert_eq!((r.status, r.body.as_slice()), (200, b"test".as_slice()));
    }
    assert_eq!(s.get(&format!("/?api_key={k}"), &[]).await.status, 200);
    let other = s.key(&[]).await;
    let r = s
        .get(
            &format!("/?api_key={}", other.expose()),
            &[("X-Api-Key", k.as_bytes())],
        )
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["code"], "MALFORMED");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Api-Key realm=\"orders \\\"api\\\"\", Bearer realm=\"orders \\\"api\\\"\"")
    );
}

#[tokio::test]
async fn a_store_outage_is_503_not_500() {
    let s = example().await;
    let key = s.key(&[]).await;
    s.store.close().await;
    let r = s.with_key("/api/public/", key.expose()).await;
    r.problem(503, "UNAVAILABLE");
    assert_eq!(r.header("retry-after"), Some("1"));
    // Garbage is still refused without touching the store.
    s.with_key("/api/public/", "kg_nope")
        .await
        .problem(401, "MALFORMED");
}

#[tokio::test]
async fn last_used_is_written_in_batches_not_per_request() {
    let s = example().await;
    let key = s.key(&[]).await;
    let id = s.store.find_by_hash(&key.hash()).await.unwrap().unwrap().id;
    for _ in 0..5 {
        assert_eq!(s.with_key("/api/public/", key.expose()).await.status, 200);
    }
    assert_eq!(
        s.keygate.get(&id).await.unwrap().unwrap().last_used_at,
        None
    );
    s.keygate.flush_usage().await.unwrap();
    let used = s
        .keygate
        .get(&id)
        .await
        .unwrap()
        .unwrap()
        .last_used_at
        .unwrap();
    assert!(used <= s.keygate.now());
    // Refused keys do not count as use.
    let revoked = s.key(&[]).await;
    let rid = s
        .store
        .find_by_hash(&revoked.hash())
        .await
        .unwrap()
        .unwrap()
        .id;
    s.keygate
        .revoke(&rid, None, &Audit::library())
        .await
        .unwrap();
    s.with_key("/api/public/", revoked.expose())
        .await
        .problem(401, "REVOKED");
    s.keygate.flush_usage().await.unwrap();
    assert_eq!(
        s.keygate.get(&rid).await.unwrap().unwrap().last_used_at,
        None
    );
}

#[tokio::test]
async fn usage_is_flushed_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let store = keygate::open(dir.path().join("k.db").to_str().unwrap())
        .await
        .unwrap();
    let keygate = Keygate::builder(store)
        .usage_flush_interval(Some(std::time::Duration::from_millis(50)))
        .build();
    let (record, key) = keygate
        .issue(
            KeySpec {
                name: "bg".into(),
                expires: Some(Expiry::In(Lifetime::parse("1h").unwrap())),
                ..KeySpec::default()
            },
            &Audit::library(),
        )
        .await
        .unwrap();
    assert!(
        keygate
            .verify(key.expose(), &[] as &[&str])
            .await
            .unwrap()
            .outcome
            .is_valid()
    );
    for _ in 0..100 {
        if keygate
            .get(&record.id)
            .await
            .unwrap()
            .unwrap()
            .last_used_at
            .is_some()
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("last_used_at was never written");
}

/// Every log line of this test binary, captured by one global TRACE-level subscriber (scoped
/// subscribers miss events from tasks on other threads).
fn captured_logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: std::sync::OnceLock<&'static Mutex<Vec<u8>>> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs: &'static Mutex<Vec<u8>> = Box::leak(Box::default());
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || Captured(logs))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        logs
    })
}

struct Captured(&'static Mutex<Vec<u8>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn logs_never_contain_the_key() {
    let captured = captured_logs();
    let s = example().await;
    let key = s.key(&["orders:read"]).await;
    let k = key.expose();
    let typo = format!("{}x", &k[..k.len() - 1]);
    for presented in [k, typo.as_str(), &k[..20]] {
        s.with_key("/api/public/", presented).await;
        s.with_key("/api/orders/", presented).await;
    }
    let id = s.store.find_by_hash(&key.hash()).await.unwrap().unwrap().id;
    s.keygate
        .revoke(&id, None, &Audit::library())
        .await
        .unwrap();
    s.with_key("/api/public/", k).await;

    let logs = String::from_utf8(captured.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("verified API key"),
        "logs were captured: {logs}"
    );
    assert!(logs.contains(id.as_str()));
    assert!(!logs.contains(&k[3..]), "a key reached the logs");
    assert!(!logs.contains(&typo[3..]));
    let debug = format!("{key:?} {:?}", s.keygate.get(&id).await.unwrap());
    assert!(!debug.contains(&k[8..]));
}

#[tokio::test]
async fn extractors_without_a_layer() {
    async fn must(key: ApiKey) -> String {
        key.name().to_owned()
    }
    async fn maybe(key: Option<ApiKey>) -> String {
        key.map_or("anonymous".into(), |k| k.name().to_owned())
    }
    let s = serve(|_| {
        Router::new()
            .route("/must", get(must))
            .route("/maybe", get(maybe))
    })
    .await;
    s.get("/must", &[]).await.problem(500, "INTERNAL");
    let r = s.get("/maybe", &[]).await;
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, b"anonymous".as_slice())
    );
}

#[tokio::test]
async fn many_requests_at_once() {
    let s = Arc::new(example().await);
    let key = s.key(&["orders:read"]).await;
    let mut tasks = Vec::new();
    for i in 0..64 {
        let s = s.clone();
        let k = key.expose().to_owned();
        tasks.push(tokio::spawn(async move {
            let path = if i % 2 == 0 {
                "/api/public/"
            } else {
                "/api/orders/"
            };
            s.with_key(path, &k).await.status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
}

#[tokio::test]
async fn a_rotated_key_works_through_its_grace_period_and_says_so() {
    use keygate::core::FixedClock;
    let dir = tempfile::tempdir().unwrap();
    let store = keygate::open(dir.path().join("k.db").to_str().unwrap())
        .await
        .unwrap();
    let clock = Arc::new(FixedClock::new(
        Timestamp::parse_rfc3339("2027-03-01T12:00:00Z").unwrap(),
    ));
    let keygate = Keygate::builder(store).clock(clock.clone()).build();
    let router = example::app(&keygate);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let unused = Arc::new(
        SqliteStore::connect(dir.path().join("unused.db").to_str().unwrap())
            .await
            .unwrap(),
    );
    let s = Server {
        addr,
        keygate: keygate.clone(),
        store: unused,
        _dir: dir,
    };

    let (old, old_key) = keygate
        .issue(
            KeySpec {
                name: "rotating".into(),
                scopes: vec!["orders:read".into()],
                ..KeySpec::default()
            },
            &Audit::library(),
        )
        .await
        .unwrap();
    let (old_after, new, new_key) = keygate
        .rotate(&old.id, 2_000, &Audit::library())
        .await
        .unwrap();
    assert_eq!(new.rotated_from.as_ref(), Some(&old.id));
    assert_eq!(old_after.rotated_to.as_ref(), Some(&new.id));

    // Both work during the grace period; only the old one is told to move.
    let r = s.with_key("/api/orders/", old_key.expose()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("sunset"), Some("Mon, 01 Mar 2027 12:00:02 GMT"));
    assert_eq!(r.header("deprecation"), Some("@1803902400"));
    let r = s.with_key("/api/orders/", new_key.expose()).await;
    assert_eq!((r.status, r.header("sunset")), (200, None));

    // After it: the old key is expired, the new one still valid.
    clock.advance(Lifetime::parse("2s").unwrap());
    s.with_key("/api/orders/", old_key.expose())
        .await
        .problem(401, "EXPIRED");
    assert_eq!(
        s.with_key("/api/orders/", new_key.expose()).await.status,
        200
    );

    // Rotating again, or rotating a revoked key, is refused.
    assert!(matches!(
        keygate.rotate(&old.id, 0, &Audit::library()).await,
        Err(keygate::Error::AlreadyRotated)
    ));
    keygate
        .revoke(&new.id, None, &Audit::library())
        .await
        .unwrap();
    assert!(matches!(
        keygate.rotate(&new.id, 0, &Audit::library()).await,
        Err(keygate::Error::AlreadyRevoked)
    ));
}
