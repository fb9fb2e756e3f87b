//! Webhooks against a real local HTTP receiver: signed deliveries, retries, and a delivery
//! that survives a server restart.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Server, keygate_json, printed_key};

/// A request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    headers: Vec<(String, String)>,
    body: String,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

/// A minimal HTTP/1.1 receiver on 127.0.0.1 answering with queued statuses (then 200).
struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    fn start_on(port: u16, statuses: &[u16]) -> Receiver {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let queue = Arc::new(Mutex::new(
            statuses.iter().copied().collect::<VecDeque<u16>>(),
        ));
        let sink = got.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut headers = Vec::new();
                let mut line = String::new();
                reader.read_line(&mut line).unwrap_or(0);
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = line.trim_end().split_once(':') {
                        headers.push((k.to_ascii_lowercase(), v.trim().to_owned()));
                    }
                }
                let len: usize = headers
                    .iter()
                    .find(|(k, _)| k == "content-length")
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0u8; len];
                let _ = reader.read_exact(&mut body);
                sink.lock().unwrap().push(Received {
                    headers,
                    body: String::from_utf8_lossy(&body).into_owned(),
                });
                let status = queue.lock().unwrap().pop_front().unwrap_or(200);
                let mut stream = stream;
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
            }
        });
        Receiver { port, got }
    }

    fn start(statuses: &[u16]) -> Receiver {
        Self::start_on(0, statuses)
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// Waits until at least `n` requests arrived.
    fn wait_for(&self, n: usize) -> Vec<Received> {
        let started = Instant::now();
        loop {
            let got = self.got.lock().unwrap().clone();
            if got.len() >= n {
                return got;
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "only {} of {n} deliveries",
                got.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

struct Running {
    server: Server,
    admin: String,
    db: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn running() -> Running {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keys.db");
    let first = Server::start(&db, &[], &[]);
    let (_, stdout) = first.stop();
    let admin = printed_key(&stdout).unwrap();
    let server = Server::start(&db, &[], &[]);
    Running {
        server,
        admin,
        db,
        _dir: dir,
    }
}

fn add_webhook(r: &Running, body: Value) -> Value {
    r.server
        .json("POST", "/v1/webhooks", &r.admin, &body)
        .expect(201)
}

#[test]
fn rotation_reaches_the_receiver_signed() {
    let r = running();
    let receiver = Receiver::start(&[]);
    let hook = add_webhook(
        &r,
        json!({"url": receiver.url(), "events": ["key.rotated"]}),
    );
    let secret = hook["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    let listed = r.server.get("/v1/webhooks", &r.admin).expect(200);
    assert!(
        !listed.to_string().contains(&secret),
        "the secret is shown only once"
    );

    let created = r
        .server
        .json("POST", "/v1/keys", &r.admin, &json!({"name": "rotating"}))
        .expect(201);
    let old_id = created["id"].as_str().unwrap();
    let new = r
        .server
        .json(
            "POST",
            &format!("/v1/keys/{old_id}/rotate"),
            &r.admin,
            &json!({"grace_period": "2s"}),
        )
        .expect(201);
    let got = receiver.wait_for(1);
    assert_eq!(got.len(), 1, "only key.rotated was asked for");
    let delivery = &got[0];
    let body = delivery.json();
    assert_eq!(body["type"], "key.rotated");
    assert_eq!(body["data"]["key_id"], old_id);
    assert_eq!(body["data"]["details"]["rotated_to"]["to"], new["id"]);
    // The signature checks out with the secret, over id, timestamp and body.
    let id = delivery.header("webhook-id");
    let timestamp: i64 = delivery.header("webhook-timestamp").parse().unwrap();
    let expected =
        keygate_core::webhook::sign(&secret, id, timestamp, delivery.body.as_bytes()).unwrap();
    assert_eq!(delivery.header("webhook-signature"), expected);
    assert!(id.starts_with("msg_"));
    assert!(
        !delivery.body.contains(new["key"].as_str().unwrap()),
        "no plaintext key in events"
    );
    let log = r
        .server
        .get(
            &format!("/v1/webhooks/{}/deliveries", hook["id"].as_str().unwrap()),
            &r.admin,
        )
        .expect(200);
    let started = Instant::now();
    let mut log = log;
    while log["items"][0]["status"] != "delivered" {
        assert!(started.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(50));
        log = r
            .server
            .get(
                &format!("/v1/webhooks/{}/deliveries", hook["id"].as_str().unwrap()),
                &r.admin,
            )
            .expect(200);
    }
    assert_eq!(log["items"][0]["attempts"], 1);
    let audit = r
        .server
        .get("/v1/audit?type=webhook.created", &r.admin)
        .expect(200);
    assert_eq!(audit["items"][0]["details"]["url"], receiver.url());
    assert!(!audit.to_string().contains(&secret));
}

#[test]
fn a_failing_receiver_is_retried_and_slack_gets_text() {
    let r = running();
    let receiver = Receiver::start(&[500, 503]);
    let hook = add_webhook(
        &r,
        json!({"url": receiver.url(), "events": ["key.created"], "slack": true}),
    );
    r.server
        .json("POST", "/v1/keys", &r.admin, &json!({"name": "retried"}))
        .expect(201);
    let got = receiver.wait_for(3);
    assert!(
        got.iter()
            .all(|g| g.header("webhook-id") == got[0].header("webhook-id")),
        "the same message, retried"
    );
    assert!(
        got[0].json()["text"]
            .as_str()
            .unwrap()
            .contains("key.created")
    );
    let started = Instant::now();
    loop {
        let log = r
            .server
            .get(
                &format!("/v1/webhooks/{}/deliveries", hook["id"].as_str().unwrap()),
                &r.admin,
            )
            .expect(200);
        if log["items"][0]["status"] == "delivered" {
            assert_eq!(log["items"][0]["attempts"], 3);
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_pending_delivery_survives_a_restart() {
    let r = running();
    // A port with nobody listening: take one, then let it go.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let hook = keygate_json(
        r.db.to_str().unwrap(),
        &["webhooks", "add", &url, "--event", "key.revoked", "--json"],
    );
    let created = r
        .server
        .json("POST", "/v1/keys", &r.admin, &json!({"name": "doomed"}))
        .expect(201);
    r.server
        .send(
            "POST",
            &format!("/v1/keys/{}/revoke", created["id"].as_str().unwrap()),
            Some(&r.admin),
            None,
        )
        .expect(200);
    // The first attempt fails (connection refused) and the delivery waits for a retry.
    let hook_id = hook["id"].as_str().unwrap();
    let started = Instant::now();
    loop {
        let log = r
            .server
            .get(&format!("/v1/webhooks/{hook_id}/deliveries"), &r.admin)
            .expect(200);
        if log["items"][0]["attempts"].as_u64().unwrap_or(0) >= 1 {
            assert_eq!(log["items"][0]["status"], "pending");
            assert_eq!(log["items"][0]["last_error"], "could not connect");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(50));
    }
    let Running {
        server,
        admin,
        db,
        _dir,
    } = r;
    // Killed, not stopped: nothing gets a chance to flush.
    drop(server);

    // The receiver comes up; a new server process delivers what the old one could not.
    let receiver = Receiver::start_on(port, &[]);
    let server = Server::start(&db, &[], &[]);
    let got = receiver.wait_for(1);
    assert_eq!(got[0].json()["type"], "key.revoked");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args([
            "--database",
            db.to_str().unwrap(),
            "webhooks",
            "deliveries",
            hook_id,
            "--json",
        ])
        .output()
        .unwrap();
    let started = Instant::now();
    let mut log: Value = serde_json::from_slice(&out.stdout).unwrap();
    while log[0]["status"] != "delivered" {
        assert!(started.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(50));
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
            .args([
                "--database",
                db.to_str().unwrap(),
                "webhooks",
                "deliveries",
                hook_id,
                "--json",
            ])
            .output()
            .unwrap();
        log = serde_json::from_slice(&out.stdout).unwrap();
    }
    let listed = server.get("/v1/webhooks", &admin).expect(200);
    assert_eq!(listed["items"][0]["id"], hook_id);
}

#[test]
fn rotate_due_rotates_once_and_delivers_the_new_key_sealed_to_a_trusted_endpoint() {
    // base64 of 32 bytes, as `openssl rand -base64 32` would print.
    let secret_key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keys.db");
    let first = Server::start(&db, &[], &[]);
    let (_, stdout) = first.stop();
    let admin = printed_key(&stdout).unwrap();
    let server = Server::start(&db, &[], &[("KEYGATE_SECRET_KEY", secret_key)]);
    let receiver = Receiver::start(&[]);
    let hook = server
        .json(
            "POST",
            "/v1/webhooks",
            &admin,
            &json!({"url": receiver.url(), "events": ["key.rotated"], "receives_secrets": true}),
        )
        .expect(201);
    assert_eq!(hook["receives_secrets"], true);
    let created = server
        .json("POST", "/v1/keys", &admin, &json!({"name": "aging"}))
        .expect(201);
    let old_id = created["id"].as_str().unwrap().to_owned();
    std::thread::sleep(Duration::from_millis(1200));

    let rotate_due = |with_key: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"));
        cmd.args([
            "--database",
            db.to_str().unwrap(),
            "rotate-due",
            "--max-age",
            "1s",
            "--action",
            "rotate",
            "--grace",
            "1h",
            "--json",
        ])
        .env_remove("KEYGATE_SECRET_KEY");
        if with_key {
            cmd.env("KEYGATE_SECRET_KEY", secret_key);
        }
        cmd.output().unwrap()
    };
    // Without the sealing key it refuses, and rotates nothing.
    let out = rotate_due(false);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("KEYGATE_SECRET_KEY"));
    assert!(
        server
            .get(&format!("/v1/keys/{old_id}"), &admin)
            .expect(200)["rotated_to"]
            .is_null()
    );

    let out = rotate_due(true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["rotated"]
            .as_array()
            .unwrap()
            .iter()
            .any(|id| id == old_id.as_str())
    );
    let again: Value = serde_json::from_slice(&rotate_due(true).stdout).unwrap();
    assert_eq!(again["rotated"], json!([]), "twice in a row rotates once");

    // The trusted endpoint gets the successor's key (sealed at rest, opened to send), signed.
    let old = server
        .get(&format!("/v1/keys/{old_id}"), &admin)
        .expect(200);
    let successor_id = old["rotated_to"].as_str().unwrap().to_owned();
    let started = Instant::now();
    let message = loop {
        let got = receiver.got.lock().unwrap().clone();
        if let Some(m) = got.iter().find(|m| {
            let body = m.json();
            body["type"] == "key.successor" && body["data"]["key_id"] == old_id.as_str()
        }) {
            break m.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no successor delivered"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let body = message.json();
    assert_eq!(body["data"]["successor_id"], successor_id.as_str());
    let new_key = body["data"]["key"].as_str().unwrap();
    let verdict = server
        .json("POST", "/v1/verify", &admin, &json!({"key": new_key}))
        .expect(200);
    assert_eq!(
        (verdict["code"].as_str(), verdict["key"]["id"].as_str()),
        (Some("VALID"), Some(successor_id.as_str()))
    );
    let timestamp: i64 = message.header("webhook-timestamp").parse().unwrap();
    let expected = keygate_core::webhook::sign(
        hook["secret"].as_str().unwrap(),
        message.header("webhook-id"),
        timestamp,
        message.body.as_bytes(),
    )
    .unwrap();
    assert_eq!(message.header("webhook-signature"), expected);

    // At rest, the new key never appears in plain text.
    let files: Vec<u8> = std::fs::read_dir(dir.path())
        .unwrap()
        .flat_map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert!(
        !files
            .windows(new_key.len() - 3)
            .any(|w| w == &new_key.as_bytes()[3..])
    );
}
