//! The cache and many nodes: a change made anywhere reaches every server's cache within a
//! second; a database outage fails closed (503) and heals without a restart.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::admin::{Ui, audit_of, location};
use crate::support::{Http, Server, assert_not_stored, cli_create, postgres_url};

fn verify(server: &Server, admin: &str, key: &str) -> (u16, Value) {
    let r = server.json("POST", "/v1/verify", admin, &json!({"key": key}));
    let status = r.status;
    (status, r.json())
}

fn code(server: &Server, admin: &str, key: &str) -> String {
    let (status, body) = verify(server, admin, key);
    assert_eq!(status, 200, "{body}");
    body["code"].as_str().unwrap().to_owned()
}

/// Polls `server` until `key` verifies as `want`; returns how long that took.
fn time_until(server: &Server, admin: &str, key: &str, want: &str) -> Duration {
    let start = Instant::now();
    loop {
        if code(server, admin, key) == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never saw {want}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn cache_hits(server: &Server) -> u64 {
    let text = server.send("GET", "/metrics", None, None).text();
    text.lines()
        .find_map(|l| l.strip_prefix("keygate_cache_lookups_total{result=\"hit\"} "))
        .and_then(|n| n.parse().ok())
        .expect("cache metrics")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[test]
fn a_revoke_from_the_cli_reaches_the_running_servers_cache_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keys.db");
    let url = format!("sqlite://{}", db.display());
    let server = Server::start(&db, &[], &[]);
    let (_, admin) = cli_create(&url, &["--scope", "keygate:admin"]);
    let mut took = Vec::new();
    for _ in 0..5 {
        let (id, key) = cli_create(&url, &[]);
        assert_eq!(code(&server, &admin, &key), "VALID");
        let before = cache_hits(&server);
        assert_eq!(code(&server, &admin, &key), "VALID");
        assert!(
            cache_hits(&server) >= before + 2,
            "admin key and key both from the cache"
        );
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
            .args(["--database", &url, "keys", "revoke", &id])
            .output()
            .unwrap();
        assert!(out.status.success());
        took.push(time_until(&server, &admin, &key, "REVOKED"));
    }
    took.sort();
    eprintln!("sqlite cross-process revocation: {took:?}");
    assert!(took.iter().all(|t| *t < Duration::from_secs(1)), "{took:?}");

    // "No such key" answers are cached too (a create anywhere drops them: see the store tests).
    let stranger = dir.path().join("other.db");
    let (_, elsewhere) = cli_create(&format!("sqlite://{}", stranger.display()), &[]);
    assert_eq!(code(&server, &admin, &elsewhere), "NOT_FOUND");
    let before = cache_hits(&server);
    assert_eq!(code(&server, &admin, &elsewhere), "NOT_FOUND");
    assert!(
        cache_hits(&server) >= before + 2,
        "the negative answer came from the cache"
    );
}

#[test]
#[cfg_attr(
    not(keygate_test_postgres),
    ignore = "set KEYGATE_TEST_POSTGRES=postgres://USER@HOST:PORT/DB to run"
)]
fn two_nodes_on_postgres_revocation_reaches_the_other_within_a_second() {
    let url = postgres_url();
    let a = Server::start_url(&url, &[], &[]);
    let b = Server::start_url(&url, &[], &[]);
    let (_, admin) = cli_create(&url, &["--scope", "keygate:admin"]);
    let mut took = Vec::new();
    for i in 0..20 {
        let created = a
            .json(
                "POST",
                "/v1/keys",
                &admin,
                &json!({"name": format!("k{i}")}),
            )
            .expect(201);
        let id = created["id"].as_str().unwrap();
        let key = created["key"].as_str().unwrap();
        // Both nodes verify it, so both cache it.
        assert_eq!(code(&a, &admin, key), "VALID");
        assert_eq!(code(&b, &admin, key), "VALID");
        // The notice of the key's creation may reach node B after it cached
        // the key (that drops the entry, which is safe); so B gets a few tries.
        let from_cache = (0..5).any(|_| {
            let hits = cache_hits(&b);
            assert_eq!(code(&b, &admin, key), "VALID");
            cache_hits(&b) >= hits + 2
        });
        assert!(from_cache, "node B answers from its cache");
        a.send("POST", &format!("/v1/keys/{id}/revoke"), Some(&admin), None)
            .expect(200);
        took.push(time_until(&b, &admin, key, "REVOKED"));
        assert_eq!(code(&a, &admin, key), "REVOKED", "node A at once");
    }
    took.sort();
    let (p50, p99, max) = (
        percentile(&took, 0.5),
        percentile(&took, 0.99),
        took[took.len() - 1],
    );
    eprintln!(
        "postgres two-node revocation over {} revocations: p50 {p50:?}, p99 {p99:?}, max {max:?}",
        took.len()
    );
    assert!(max < Duration::from_secs(1), "{took:?}");

    // Other changes travel too: disable on B, seen on A.
    let created = b
        .json("POST", "/v1/keys", &admin, &json!({"name": "flip"}))
        .expect(201);
    let key = created["key"].as_str().unwrap();
    assert_eq!(code(&a, &admin, key), "VALID");
    b.json(
        "PATCH",
        &format!("/v1/keys/{}", created["id"].as_str().unwrap()),
        &admin,
        &json!({"enabled": false}),
    )
    .expect(200);
    assert!(time_until(&a, &admin, key, "DISABLED") < Duration::from_secs(1));
}

/// A TCP relay to PostgreSQL that the test can cut and restore, to play a database outage.
struct Relay {
    port: u16,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let relay = Relay {
            port,
            up: Arc::new(AtomicBool::new(true)),
            conns: Arc::default(),
        };
        relay.serve(listener, target);
        relay
    }

    fn serve(&self, listener: TcpListener, target: SocketAddr) {
        let (up, conns) = (self.up.clone(), self.conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !up.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                conns
                    .lock()
                    .unwrap()
                    .extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
    }

    /// Drops every connection and refuses new ones.
    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for conn in self.conns.lock().unwrap().drain(..) {
            let _ = conn.shutdown(Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}

#[test]
#[cfg_attr(
    not(keygate_test_postgres),
    ignore = "set KEYGATE_TEST_POSTGRES=postgres://USER@HOST:PORT/DB to run"
)]
fn a_database_outage_fails_closed_and_heals_without_a_restart() {
    let url = postgres_url();
    let relay = Relay::start("127.0.0.1:5432".parse().unwrap());
    let relayed = url.replace("127.0.0.1:5432", &format!("127.0.0.1:{}", relay.port));
    assert_ne!(
        relayed, url,
        "KEYGATE_TEST_POSTGRES must point at 127.0.0.1:5432"
    );
    let server = Server::start_url(&relayed, &[], &[]);
    let (_, admin) = cli_create(&url, &["--scope", "keygate:admin"]);
    let (_, known) = cli_create(&url, &[]);
    assert_eq!(code(&server, &admin, &known), "VALID");
    assert_eq!(server.send("GET", "/readyz", None, None).status, 200);

    relay.cut();
    let (_, unseen) = cli_create(&url, &[]); // straight to PostgreSQL, not through the relay
    let (status, body) = verify(&server, &admin, &unseen);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "UNAVAILABLE");
    let r = server.send("GET", "/readyz", None, None);
    r.problem(503, "UNAVAILABLE");
    // Never a 200 or a 401 for a key we could not check, never a 500.
    for _ in 0..3 {
        let (status, _) = verify(&server, &admin, &unseen);
        assert_eq!(status, 503);
    }
    // A write that cannot be made is reported as failed.
    let r = server.json(
        "POST",
        "/v1/keys",
        &admin,
        &json!({"name": "during the outage"}),
    );
    assert_eq!(r.status, 503, "{}", r.text());

    relay.restore();
    let start = Instant::now();
    loop {
        let (status, body) = verify(&server, &admin, &unseen);
        if status == 200 {
            assert_eq!(body["code"], "VALID");
            break;
        }
        assert_eq!(status, 503);
        assert!(start.elapsed() < Duration::from_secs(20), "did not recover");
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "recovered {:?} after the database came back",
        start.elapsed()
    );
    assert_eq!(server.send("GET", "/readyz", None, None).status, 200);
    assert_eq!(code(&server, &admin, &known), "VALID");
    let listed = server
        .get("/v1/keys?q=during%20the%20outage", &admin)
        .expect(200);
    assert_eq!(
        listed["items"],
        json!([]),
        "the failed create left nothing behind"
    );
}

/// Signs in on node `a`, issues a key in a form posted to node `b`, and sees it shown once,
/// on `a`; signing out on `b` ends the session on `a`. Returns the key.
fn across_nodes(a: &Server, b: &Server, admin: &str) -> String {
    let mut on_a = Ui::new(a);
    assert_eq!(on_a.sign_in_key(admin).status, 303);
    // The same browser, its next requests sent to the other node.
    let mut on_b = Ui::new(b);
    on_b.cookies = on_a.cookies.clone();
    let page = on_b.get("/admin/keys/new");
    assert_eq!(page.status, 200, "node b knows the session");
    let created = on_b.post(
        "/admin/keys",
        &[("csrf", &Ui::csrf(&page)), ("name", "made on b")],
    );
    assert_eq!(created.status, 303, "{}", created.text());
    let shown = on_a.get(location(&created));
    assert!(
        shown.text().contains("data-secret"),
        "node a shows the key issued on b"
    );
    assert!(
        !on_b.get(location(&created)).text().contains("data-secret"),
        "once in all"
    );
    let key = shown
        .text()
        .split("data-secret>")
        .nth(1)
        .and_then(|r| r.split('<').next())
        .unwrap()
        .to_owned();
    let page = on_b.get("/admin/keys");
    assert_eq!(
        on_b.post("/admin/logout", &[("csrf", &Ui::csrf(&page))])
            .status,
        303
    );
    assert_eq!(on_a.get("/admin/keys").status, 303, "signed out everywhere");
    key
}

#[test]
fn sessions_and_the_one_time_key_work_across_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keygate.db");
    let url = format!("sqlite://{}", db.display());
    let a = Server::start(&db, &[], &[]);
    let b = Server::start(&db, &[], &[]);
    let (_, admin) = cli_create(&url, &["--scope", "keygate:admin"]);
    let key = across_nodes(&a, &b, &admin);
    // The sealed message never sat readable in the database.
    assert_not_stored(dir.path(), &key[3..]);
    assert_eq!(audit_of(&url, "admin.signed_in").len(), 1);
}

#[test]
#[cfg_attr(
    not(keygate_test_postgres),
    ignore = "set KEYGATE_TEST_POSTGRES=postgres://USER@HOST:PORT/DB to run"
)]
fn sessions_and_the_one_time_key_work_across_nodes_on_postgres() {
    let url = postgres_url();
    let a = Server::start_url(&url, &[], &[]);
    let b = Server::start_url(&url, &[], &[]);
    let (_, admin) = cli_create(&url, &["--scope", "keygate:admin"]);
    let key = across_nodes(&a, &b, &admin);
    // Dump the whole schema: the key is not in it, in any table.
    let (base, schema) = url.split_once("?options=-csearch_path%3D").unwrap();
    let dump = Command::new("pg_dump")
        .args(["--data-only", "--schema", schema, base])
        .output()
        .unwrap();
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(
        dump.contains("admin_sessions") && dump.contains("made on b"),
        "a real dump"
    );
    assert!(!dump.contains(&key[3..]), "the key is in the database");
}
