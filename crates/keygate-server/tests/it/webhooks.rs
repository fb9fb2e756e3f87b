//! Webhooks against a real local HTTP receiver: signed deliveries, retries on the clock, the
//! rotation policy's sealed successor, and (as a process) a delivery that survives a restart.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{App, Http, Server, assert_not_stored, keygate_json, poll, printed_key};

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

    /// What arrived so far.
    fn got(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived (from another process).
    fn wait_for(&self, n: usize) -> Vec<Received> {
        poll("the deliveries", Duration::from_secs(15), || {
            let got = self.got();
            (got.len() >= n).then_some(got)
        })
    }
}

/// Runs the webhook sender once, as its loop would: every delivery due by the app's clock.
fn deliver(app: &App) -> usize {
    let client =
        keygate_server::jobs::deliver::client(app.keygate().allows_private_webhooks()).unwrap();
    app.block_on(keygate_server::jobs::deliver::deliver_due(
        app.keygate(),
        &client,
        50,
    ))
    .unwrap()
}

fn add_webhook(app: &App, body: Value) -> Value {
    app.json("POST", "/v1/webhooks", &app.admin, &body)
        .expect(201)
}

fn delivery_log(app: &App, hook: &Value) -> Value {
    let id = hook["id"].as_str().unwrap();
    app.get(&format!("/v1/webhooks/{id}/deliveries"), &app.admin)
        .expect(200)
}

#[test]
fn rotation_reaches_the_receiver_signed() {
    let app = App::new(&["--allow-private-webhooks"]);
    let receiver = Receiver::start(&[]);
    let hook = add_webhook(
        &app,
        json!({"url": receiver.url(), "events": ["key.rotated"]}),
    );
    let secret = hook["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    let listed = app.get("/v1/webhooks", &app.admin).expect(200);
    assert!(
        !listed.to_string().contains(&secret),
        "the secret is shown only once"
    );

    let created = app.create(json!({"name": "rotating"}));
    let old_id = created["id"].as_str().unwrap();
    let new = app
        .json(
            "POST",
            &format!("/v1/keys/{old_id}/rotate"),
            &app.admin,
            &json!({"grace_period": "2s"}),
        )
        .expect(201);
    assert_eq!(deliver(&app), 1, "only key.rotated was asked for");
    let got = receiver.got();
    let delivery = &got[0];
    let body = delivery.json();
    assert_eq!(body["type"], "key.rotated");
    assert_eq!(body["data"]["key_id"], old_id);
    assert_eq!(body["data"]["details"]["rotated_to"]["to"], new["id"]);
    // The signature checks out with the secret, over id, timestamp and body.
    let id = delivery.header("webhook-id");
    let timestamp: i64 = delivery.header("webhook-timestamp").parse().unwrap();
    assert_eq!(
        timestamp,
        app.now().unix_ms() / 1000,
        "signed at the app's time"
    );
    let expected =
        keygate::core::webhook::sign(&secret, id, timestamp, delivery.body.as_bytes()).unwrap();
    assert_eq!(delivery.header("webhook-signature"), expected);
    assert!(id.starts_with("msg_"));
    assert!(
        !delivery.body.contains(new["key"].as_str().unwrap()),
        "no plaintext key in events"
    );
    let log = delivery_log(&app, &hook);
    assert_eq!(log["items"][0]["status"], "delivered");
    assert_eq!(log["items"][0]["attempts"], 1);
    assert_eq!(deliver(&app), 0, "delivered once");
    let audit = app
        .get("/v1/audit?type=webhook.created", &app.admin)
        .expect(200);
    assert_eq!(audit["items"][0]["details"]["url"], receiver.url());
    assert!(!audit.to_string().contains(&secret));
}

#[test]
fn a_failing_receiver_is_retried_with_backoff_and_slack_gets_text() {
    let app = App::new(&["--allow-private-webhooks"]);
    let receiver = Receiver::start(&[500, 503]);
    let hook = add_webhook(
        &app,
        json!({"url": receiver.url(), "events": ["key.created"], "slack": true}),
    );
    app.create(json!({"name": "retried"}));
    assert_eq!(deliver(&app), 1);
    assert_eq!(delivery_log(&app, &hook)["items"][0]["last_status"], 500);
    // Not before its time: 1 s after the first failure, 2 s after the second.
    assert_eq!(deliver(&app), 0, "the retry waits");
    app.advance("1s");
    assert_eq!(deliver(&app), 1);
    app.advance("1s");
    assert_eq!(deliver(&app), 0, "the second retry waits 2 s");
    app.advance("1s");
    assert_eq!(deliver(&app), 1);
    let got = receiver.got();
    assert_eq!(got.len(), 3);
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
    let log = delivery_log(&app, &hook);
    assert_eq!(log["items"][0]["status"], "delivered");
    assert_eq!(log["items"][0]["attempts"], 3);
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
    let first = Server::start(&db, &["--allow-private-webhooks"], &[]);
    let (_, stdout) = first.stop();
    let admin = printed_key(&stdout).unwrap();
    let server = Server::start(&db, &["--allow-private-webhooks"], &[]);
    Running {
        server,
        admin,
        db,
        _dir: dir,
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
        &[
            "webhooks",
            "add",
            &url,
            "--event",
            "key.revoked",
            "--json",
            "--allow-private-webhooks",
        ],
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
    poll("a failed first attempt", Duration::from_secs(5), || {
        let log = r
            .server
            .get(&format!("/v1/webhooks/{hook_id}/deliveries"), &r.admin)
            .expect(200);
        let item = &log["items"][0];
        (item["attempts"].as_u64().unwrap_or(0) >= 1).then(|| {
            assert_eq!(item["status"], "pending");
            assert_eq!(item["last_error"], "could not connect");
        })
    });
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
    let server = Server::start(&db, &["--allow-private-webhooks"], &[]);
    let got = receiver.wait_for(1);
    assert_eq!(got[0].json()["type"], "key.revoked");
    poll(
        "the delivery marked delivered",
        Duration::from_secs(5),
        || {
            let log = keygate_json(
                db.to_str().unwrap(),
                &["webhooks", "deliveries", hook_id, "--json"],
            );
            (log[0]["status"] == "delivered").then_some(())
        },
    );
    let listed = server.get("/v1/webhooks", &admin).expect(200);
    assert_eq!(listed["items"][0]["id"], hook_id);
}

#[test]
fn rotate_due_rotates_once_and_delivers_the_new_key_sealed_to_a_trusted_endpoint() {
    // base64 of 32 bytes, as `openssl rand -base64 32` would print; in the config file here
    // (KEYGATE_SECRET_KEY is the usual way, but the environment is shared by parallel tests).
    let secret_key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keys.db");
    let config = dir.path().join("keygate.toml");
    std::fs::write(&config, format!("secret_key = \"{secret_key}\"\n")).unwrap();
    let app = App::on(
        &db,
        &[
            "--allow-private-webhooks",
            "--config",
            config.to_str().unwrap(),
        ],
    );
    let receiver = Receiver::start(&[]);
    let hook = add_webhook(
        &app,
        json!({"url": receiver.url(), "events": ["key.rotated"], "receives_secrets": true}),
    );
    assert_eq!(hook["receives_secrets"], true);
    let created = app.create(json!({"name": "aging"}));
    let old_id = created["id"].as_str().unwrap().to_owned();
    app.advance("2s");
    let rotate_due = [
        "rotate-due",
        "--max-age",
        "1s",
        "--action",
        "rotate",
        "--grace",
        "1h",
        "--json",
    ];

    // Without the sealing key it refuses, and rotates nothing.
    let unsealed = App::on(&db, &["--allow-private-webhooks"]);
    unsealed.advance("2s");
    let (code, err) = unsealed.cli(&rotate_due);
    assert_eq!(code, 2);
    assert!(err.contains("KEYGATE_SECRET_KEY"), "{err}");
    let old = app
        .get(&format!("/v1/keys/{old_id}"), &app.admin)
        .expect(200);
    assert!(old["rotated_to"].is_null());

    let (code, out) = app.cli(&rotate_due);
    assert_eq!(code, 0, "{out}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert!(
        report["rotated"]
            .as_array()
            .unwrap()
            .iter()
            .any(|id| id == old_id.as_str())
    );
    let again: Value = serde_json::from_str(&app.cli(&rotate_due).1).unwrap();
    assert_eq!(again["rotated"], json!([]), "twice in a row rotates once");

    // The trusted endpoint gets the successor's key (sealed at rest, opened to send), signed.
    let old = app
        .get(&format!("/v1/keys/{old_id}"), &app.admin)
        .expect(200);
    let successor_id = old["rotated_to"].as_str().unwrap().to_owned();
    deliver(&app);
    let message = receiver
        .got()
        .into_iter()
        .find(|m| {
            let body = m.json();
            body["type"] == "key.successor" && body["data"]["key_id"] == old_id.as_str()
        })
        .expect("the successor delivered");
    let body = message.json();
    assert_eq!(body["data"]["successor_id"], successor_id.as_str());
    let new_key = body["data"]["key"].as_str().unwrap();
    let verdict = app.verify(&app.admin, new_key, &[]);
    assert_eq!(
        (verdict["code"].as_str(), verdict["key"]["id"].as_str()),
        (Some("VALID"), Some(successor_id.as_str()))
    );
    let timestamp: i64 = message.header("webhook-timestamp").parse().unwrap();
    let expected = keygate::core::webhook::sign(
        hook["secret"].as_str().unwrap(),
        message.header("webhook-id"),
        timestamp,
        message.body.as_bytes(),
    )
    .unwrap();
    assert_eq!(message.header("webhook-signature"), expected);

    // At rest, the new key never appears in plain text.
    assert_not_stored(dir.path(), &new_key[3..]);
}

#[test]
fn webhook_urls_are_checked_when_added_and_again_when_sent() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keys.db");
    let strict = App::on(&db, &[]);
    let refuse = |url: &str, why: &str| {
        let reply = strict.json("POST", "/v1/webhooks", &strict.admin, &json!({"url": url}));
        let detail = reply.problem(400, "BAD_REQUEST")["detail"].to_string();
        assert!(
            detail.contains("url") && detail.contains(why),
            "{url}: {detail}"
        );
    };
    refuse("http://127.0.0.1:9/hook", "loopback or private");
    refuse("http://localhost/hook", "loopback or private");
    refuse(
        "http://169.254.169.254/latest/meta-data",
        "loopback or private",
    );
    refuse("http://[::ffff:10.0.0.1]/", "loopback or private");
    refuse("https://user:pw@hooks.example.com/", "credentials");
    refuse("gopher://hooks.example.com/", "https://");
    let (code, out) = strict.cli(&["webhooks", "add", "http://10.1.2.3/x"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("loopback or private"), "{out}");
    let admin = strict.admin.clone();
    drop(strict);

    // Added where private targets were allowed...
    let receiver = Receiver::start(&[]);
    let mut lenient = App::on(&db, &["--allow-private-webhooks"]);
    lenient.admin = admin.clone();
    let hook = add_webhook(
        &lenient,
        json!({"url": receiver.url(), "events": ["key.created"]}),
    );
    drop(lenient);
    // ...and sent where they are not: refused at the attempt, nothing reaches the receiver.
    let mut strict = App::on(&db, &[]);
    strict.admin = admin;
    strict.create(json!({"name": "announced"}));
    assert_eq!(deliver(&strict), 1);
    let log = delivery_log(&strict, &hook);
    assert_eq!(log["items"][0]["status"], "pending", "{log}");
    let error = log["items"][0]["last_error"].as_str().unwrap();
    assert!(error.contains("loopback or private"), "{error}");
    assert!(receiver.got().is_empty());
}

/// base64 of the 32 bytes `0123456789abcdef0123456789abcdef`.
const SECRET_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

#[test]
fn signing_secrets_rest_sealed_under_the_secret_key() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keys.db");
    let config = dir.path().join("keygate.toml");
    std::fs::write(&config, format!("secret_key = \"{SECRET_KEY}\"\n")).unwrap();
    let config = config.to_str().unwrap();
    let receiver = Receiver::start(&[]);
    let app = App::on(&db, &["--allow-private-webhooks", "--config", config]);
    let hook = add_webhook(
        &app,
        json!({"url": receiver.url(), "events": ["key.created"]}),
    );
    let secret = hook["secret"].as_str().unwrap().to_owned();
    app.create(json!({"name": "announced"}));
    assert_eq!(deliver(&app), 1);
    let got = receiver.got();
    let expected = keygate::core::webhook::sign(
        &secret,
        got[0].header("webhook-id"),
        got[0].header("webhook-timestamp").parse().unwrap(),
        got[0].body.as_bytes(),
    )
    .unwrap();
    assert_eq!(
        got[0].header("webhook-signature"),
        expected,
        "signed with the secret"
    );
    app.block_on(app.keygate().flush_usage()).unwrap();
    let admin = app.admin.clone();
    drop(app);
    std::fs::remove_file(dir.path().join("keygate.toml")).unwrap();
    assert_not_stored(dir.path(), &secret);
    assert_not_stored(dir.path(), &secret["whsec_".len()..]);

    // Without the key the secret cannot be opened: the attempt says so, and nothing is sent
    // unsigned.
    let mut keyless = App::on(&db, &["--allow-private-webhooks"]);
    keyless.admin = admin;
    keyless.create(json!({"name": "announced again"}));
    assert_eq!(deliver(&keyless), 1);
    let log = delivery_log(&keyless, &hook);
    let error = log["items"][0]["last_error"].as_str().unwrap();
    assert!(
        error.contains("cannot unseal the signing secret"),
        "{error}"
    );
    assert_eq!(receiver.got().len(), 1);
}

#[test]
fn slack_urls_are_shown_whole_only_to_admins() {
    let app = App::new(&["--allow-private-webhooks"]);
    let receiver = Receiver::start(&[]);
    let slack_url = format!("{}/T000/B000/XXXXXXXX", receiver.url());
    add_webhook(&app, json!({"url": slack_url, "slack": true}));
    add_webhook(&app, json!({"url": receiver.url()}));
    let reader = app.create(json!({"name": "reader", "scopes": ["keygate:read"]}))["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let as_reader = app.get("/v1/webhooks", &reader).expect(200).to_string();
    assert!(!as_reader.contains("XXXXXXXX"), "{as_reader}");
    assert!(as_reader.contains(&format!("http://127.0.0.1:{}/…", receiver.port)));
    assert!(as_reader.contains(&receiver.url()), "other endpoints whole");
    let as_admin = app.get("/v1/webhooks", &app.admin).expect(200).to_string();
    assert!(as_admin.contains("XXXXXXXX"));
    // The audit trail, which keygate:read may read, never had it.
    let trail = app.get("/v1/audit", &reader).expect(200).to_string();
    assert!(!trail.contains("XXXXXXXX"), "{trail}");
    // Nor the admin UI, signed in read-only.
    let mut ui = crate::admin::Ui::new(&app);
    assert_eq!(ui.sign_in_key(&reader).status, 303);
    let page = ui.get("/admin/webhooks").text();
    assert!(!page.contains("XXXXXXXX"));
}

/// An endpoint changed over the API: a new URL and events take effect; disabled, it gets no
/// new deliveries and its pending one waits; enabled, that one goes; deleted, its pending
/// deliveries are dropped and counted; each change audited with its request. Bad changes are
/// 400 and change nothing; an unknown id is 404; a read-only key is refused.
#[test]
fn endpoints_are_changed_paused_resumed_and_deleted_over_the_api() {
    let app = App::new(&["--allow-private-webhooks"]);
    let first = Receiver::start(&[]);
    let second = Receiver::start(&[]);
    let hook = add_webhook(&app, json!({"url": first.url(), "events": ["key.created"]}));
    let id = hook["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/webhooks/{id}");

    app.create(json!({"name": "queued"}));
    let off = app
        .json("PATCH", &path, &app.admin, &json!({"enabled": false}))
        .expect(200);
    assert_eq!(off["enabled"], false);
    assert!(off.get("secret").is_none());
    assert_eq!(
        deliver(&app),
        0,
        "a disabled endpoint's pending delivery waits"
    );
    app.create(json!({"name": "while disabled"}));
    assert_eq!(
        delivery_log(&app, &hook)["items"].as_array().unwrap().len(),
        1,
        "no new delivery while disabled"
    );
    app.json("PATCH", &path, &app.admin, &json!({"enabled": true}))
        .expect(200);
    assert_eq!(deliver(&app), 1, "the waiting one goes once enabled");
    assert_eq!(first.got().len(), 1);
    assert_eq!(first.got()[0].json()["data"]["details"]["name"], "queued");

    // A new URL and events.
    let moved = app
        .json(
            "PATCH",
            &path,
            &app.admin,
            &json!({"url": second.url(), "events": ["key.revoked"]}),
        )
        .expect(200);
    assert_eq!(moved["url"], second.url());
    assert_eq!(moved["events"], json!(["key.revoked"]));
    let key = app.create(json!({"name": "revoked later"}));
    assert_eq!(deliver(&app), 0, "key.created no longer wanted");
    app.json(
        "POST",
        &format!("/v1/keys/{}/revoke", key["id"].as_str().unwrap()),
        &app.admin,
        &json!({}),
    )
    .expect(200);
    assert_eq!(deliver(&app), 1);
    assert_eq!(second.got()[0].json()["type"], "key.revoked");
    assert_eq!(first.got().len(), 1, "nothing more to the old URL");

    // Bad changes: 400, nothing changed.
    for (body, field) in [
        (json!({"url": "ftp://example.com/x"}), "url"),
        (json!({"events": []}), "events"),
        (json!({"events": ["key.nope"]}), "events"),
        (json!({}), "nothing to change"),
        (json!({"secret": "whsec_x"}), "secret"),
        (json!({"url": null, "enabled": false}), "url"),
    ] {
        let problem = app
            .json("PATCH", &path, &app.admin, &body)
            .problem(400, "BAD_REQUEST");
        assert!(
            problem["detail"].as_str().unwrap().contains(field),
            "{body}: {problem}"
        );
    }
    let strict = App::new(&[]);
    let strict_hook = strict
        .json(
            "POST",
            "/v1/webhooks",
            &strict.admin,
            &json!({"url": "https://hooks.example.com/x"}),
        )
        .expect(201);
    strict
        .json(
            "PATCH",
            &format!("/v1/webhooks/{}", strict_hook["id"].as_str().unwrap()),
            &strict.admin,
            &json!({"url": "http://127.0.0.1:9/x"}),
        )
        .problem(400, "BAD_REQUEST");
    let listed = app.get("/v1/webhooks", &app.admin).expect(200);
    assert_eq!(listed["items"][0]["url"], second.url());
    assert_eq!(listed["items"][0]["enabled"], true);
    let missing = app
        .json(
            "PATCH",
            "/v1/webhooks/whk_nope",
            &app.admin,
            &json!({"enabled": false}),
        )
        .problem(404, "NOT_FOUND");
    assert!(missing["detail"].as_str().unwrap().contains("webhook"));
    app.send("DELETE", "/v1/webhooks/whk_nope", Some(&app.admin), None)
        .problem(404, "NOT_FOUND");
    let reader = app.create(json!({"name": "reader", "scopes": ["keygate:read"]}));
    let reader = reader["key"].as_str().unwrap();
    app.json("PATCH", &path, reader, &json!({"enabled": false}))
        .problem(403, "INSUFFICIENT_SCOPE");
    app.send("DELETE", &path, Some(reader), None)
        .problem(403, "INSUFFICIENT_SCOPE");

    // Deleting with a pending delivery drops it, and says so.
    let pending = app.create(json!({"name": "pending"}));
    app.json(
        "POST",
        &format!("/v1/keys/{}/revoke", pending["id"].as_str().unwrap()),
        &app.admin,
        &json!({}),
    )
    .expect(200);
    let deleted = app
        .send("DELETE", &path, Some(&app.admin), None)
        .expect(200);
    assert_eq!(deleted, json!({"id": id, "dropped_deliveries": 1}));
    assert_eq!(deliver(&app), 0);
    assert_eq!(
        app.get("/v1/webhooks", &app.admin).expect(200)["items"],
        json!([])
    );
    let trail = app.get("/v1/audit?limit=200", &app.admin).expect(200);
    let of = |kind: &str| -> Vec<Value> {
        trail["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == kind)
            .cloned()
            .collect()
    };
    assert_eq!(of("webhook.disabled").len(), 1);
    assert_eq!(of("webhook.enabled").len(), 1);
    let updated = of("webhook.updated");
    assert_eq!(updated.len(), 1, "refused changes are not audited");
    assert_eq!(updated[0]["details"]["url"]["to"], second.url());
    assert!(updated[0]["request_id"].is_string());
    assert!(updated[0]["actor"].as_str().unwrap().starts_with("admin:"));
    let gone = of("webhook.deleted");
    assert_eq!(gone[0]["details"]["dropped_pending"], 1);
    assert!(!trail.to_string().contains(hook["secret"].as_str().unwrap()));
}

/// The same through `keygate webhooks update|disable|enable|delete` and the admin UI's forms
/// (key-admins only, with the session's CSRF token).
#[test]
fn endpoints_are_changed_from_the_cli_and_the_admin_ui() {
    use crate::admin::Ui;
    let app = App::new(&["--allow-private-webhooks"]);
    let receiver = Receiver::start(&[]);
    let hook = add_webhook(&app, json!({"url": receiver.url()}));
    let id = hook["id"].as_str().unwrap();

    let (code, out) = app.cli(&["webhooks", "disable", id]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("disabled"), "{out}");
    let (code, out) = app.cli(&["webhooks", "enable", id]);
    assert_eq!((code, out.contains("enabled")), (0, true), "{out}");
    let (code, out) = app.cli(&[
        "webhooks",
        "update",
        id,
        "--event",
        "key.revoked",
        "--event",
        "key.rotated",
        "--json",
    ]);
    assert_eq!(code, 0, "{out}");
    let updated: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(updated["events"], json!(["key.revoked", "key.rotated"]));
    let (code, out) = app.cli(&["webhooks", "update", id, "--url", "ftp://x/"]);
    assert_eq!(code, 2);
    assert!(out.contains("url"), "{out}");
    let (code, out) = app.cli(&["webhooks", "update", id]);
    assert_eq!(code, 2, "nothing to change: {out}");
    let (code, out) = app.cli(&["webhooks", "delete", "whk_nope"]);
    assert_eq!(
        (code, out.as_str()),
        (2, "no webhook endpoint with that id")
    );

    // The admin UI: a key-admin changes, disables, enables and deletes it.
    let mut ui = Ui::new(&app);
    assert_eq!(ui.sign_in_key(&app.admin).status, 303);
    let page = ui.get(&format!("/admin/webhooks/{id}"));
    let text = page.text();
    assert!(text.contains("id=\"disable-webhook\"") && text.contains("id=\"delete-webhook\""));
    let csrf = Ui::csrf(&page);
    let refused = ui.post(
        &format!("/admin/webhooks/{id}/enabled"),
        &[("csrf", "wrong"), ("enabled", "false")],
    );
    assert_eq!(refused.status, 403);
    let other = Receiver::start(&[]);
    let saved = ui.post(
        &format!("/admin/webhooks/{id}/edit"),
        &[
            ("csrf", &csrf),
            ("url", &other.url()),
            ("events", "key.created"),
        ],
    );
    assert_eq!(saved.status, 303);
    let bad = ui.post(
        &format!("/admin/webhooks/{id}/edit"),
        &[("csrf", &csrf), ("url", "nope"), ("events", "*")],
    );
    assert_eq!(bad.status, 400);
    let off = ui.post(
        &format!("/admin/webhooks/{id}/enabled"),
        &[("csrf", &csrf), ("enabled", "false")],
    );
    assert_eq!(off.status, 303);
    let page = ui.get(&format!("/admin/webhooks/{id}")).text();
    assert!(page.contains("disabled") && page.contains("id=\"enable-webhook\""));
    let listed = app.get("/v1/webhooks", &app.admin).expect(200);
    assert_eq!(listed["items"][0]["url"], other.url());
    assert_eq!(listed["items"][0]["events"], json!(["key.created"]));
    assert_eq!(listed["items"][0]["enabled"], false);

    // A read-only admin sees no buttons and is refused.
    let reader = app.create(json!({"name": "reader", "scopes": ["keygate:read"]}));
    let mut read_only = Ui::new(&app);
    assert_eq!(
        read_only
            .sign_in_key(reader["key"].as_str().unwrap())
            .status,
        303
    );
    let page = read_only.get(&format!("/admin/webhooks/{id}"));
    assert!(!page.text().contains("delete-webhook"));
    let refused = read_only.post(
        &format!("/admin/webhooks/{id}/delete"),
        &[("csrf", &Ui::csrf(&page))],
    );
    assert_eq!(refused.status, 403);

    let gone = ui.post(&format!("/admin/webhooks/{id}/delete"), &[("csrf", &csrf)]);
    assert_eq!(gone.status, 303);
    assert_eq!(
        app.get("/v1/webhooks", &app.admin).expect(200)["items"],
        json!([])
    );
    let trail = app.get("/v1/audit?limit=200", &app.admin).expect(200);
    let actors: Vec<(String, String)> = trail["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"].as_str().unwrap().starts_with("webhook."))
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_owned(),
                e["actor"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for (kind, actor) in [
        ("webhook.disabled", "cli"),
        ("webhook.enabled", "cli"),
        ("webhook.updated", "cli"),
        ("webhook.deleted", "admin:"),
    ] {
        assert!(
            actors
                .iter()
                .any(|(k, a)| k == kind && a.starts_with(actor)),
            "{kind} by {actor} in {actors:?}"
        );
    }
}
